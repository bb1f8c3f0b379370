//! Measures redb and fjall on the hub's durable-outbox workload: group commit of accepted messages and their deliveries, delivery-done deletes, restart scan and disk size.
//!
//! - Group commit: C = 1, 8, 64 producer threads submit messages (600-byte record + 1..=10
//!   ~104-byte per-recipient delivery records); one writer drains up to 256 pending messages,
//!   writes them in ONE atomic commit made durable (redb `Durability::Immediate`, fjall
//!   `PersistMode::SyncAll`/`SyncData`), then acks each producer. Reports durable msg/s and
//!   submit-to-ack latency p50/p99.
//! - Fill 100k messages, measure the on-disk size, delete ("delivery done") the oldest
//!   deliveries in durable batches of 16 and 256 until 100k remain pending, simulate a crash,
//!   then time reopen + scan of the pending deliveries after the crash and after a clean close.
//!
//! Run from `benches/storage-compare/`: `cargo run --release -- --runs 3`.
//! `--help` lists the knobs. Every configuration gets a fresh temporary directory
//! under `--dir` (default: the system temp dir), which must be on a real disk.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// Bytes of payload per accepted message; with the 36-byte ticket key the record is 600 bytes.
const PAYLOAD_LEN: usize = 564;
/// Delivery key: 16-byte recipient id + 8-byte big-endian sequence.
const DELIVERY_KEY_LEN: usize = 24;
/// Delivery value: state, ticket, enqueue time, attempts, padding; with the key about 104 bytes.
const DELIVERY_VALUE_LEN: usize = 80;
/// Distinct recipients the deliveries are spread over.
const RECIPIENTS: u64 = 10_000;
/// The writer drains at most this many pending submissions into one commit.
const MAX_BATCH: usize = 256;
/// Pending deliveries left in the database for the restart scan.
const PENDING_AFTER_DONE: usize = 100_000;
/// "Delivery done" deletes done in small batches before the rest go in batches of `MAX_BATCH`.
const SMALL_DONE_BATCH: usize = 16;
const SMALL_DONE_TOTAL: usize = 32_000;

type DeliveryKey = [u8; DELIVERY_KEY_LEN];
type DeliveryValue = [u8; DELIVERY_VALUE_LEN];

// ---------------------------------------------------------------------------
// Workload records
// ---------------------------------------------------------------------------

struct Message {
    /// Ticket uuid (v7) in its 36-character string form: the message key.
    ticket: String,
    payload: Vec<u8>,
    deliveries: Vec<(DeliveryKey, DeliveryValue)>,
}

/// splitmix64: small deterministic generator, good enough for payload bytes and fan-out.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Builds one accepted message with 1..=10 deliveries. Payload bytes are random, i.e.
/// incompressible, like the end-to-end-encrypted payloads the hub routes.
fn make_message(rng: &mut Rng, seq: &AtomicU64) -> Message {
    let ticket = uuid::Uuid::now_v7();
    let mut payload = vec![0u8; PAYLOAD_LEN];
    rng.fill(&mut payload);
    let fan_out = 1 + (rng.next() % 10) as usize;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let deliveries = (0..fan_out)
        .map(|_| {
            let recipient = rng.next() % RECIPIENTS;
            let mut key = [0u8; DELIVERY_KEY_LEN];
            let id = format!("rcpt-{recipient:011}");
            key[..16].copy_from_slice(id.as_bytes());
            key[16..].copy_from_slice(&seq.fetch_add(1, Ordering::Relaxed).to_be_bytes());
            let mut value = [0u8; DELIVERY_VALUE_LEN];
            value[0] = 0; // state: pending
            value[1..17].copy_from_slice(ticket.as_bytes());
            value[17..25].copy_from_slice(&now_ms.to_be_bytes());
            value[25] = 0; // attempts
            rng.fill(&mut value[26..]); // stands in for routing metadata
            (key, value)
        })
        .collect();
    Message {
        ticket: ticket.to_string(),
        payload,
        deliveries,
    }
}

// ---------------------------------------------------------------------------
// Engines
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Engine {
    /// redb, default `Durability::Immediate` (1-phase commit, one fdatasync per commit).
    Redb,
    /// redb as above, but the delivery key is sequence first (8-byte big-endian seq + recipient
    /// id), so new deliveries append to the right edge of the B-tree. Not in the default set.
    RedbSeqKey,
    /// fjall, write batch persisted with `PersistMode::SyncAll` (fsync).
    Fjall,
    /// fjall, write batch persisted with `PersistMode::SyncData` (fdatasync), for parity with redb.
    FjallSyncData,
    /// fjall as `Fjall`, with the sequence-first delivery key of `RedbSeqKey`. Not in the
    /// default set.
    FjallSeqKey,
    /// fjall with `PersistMode::SyncAll` and 8 MiB memtables (default 64 MiB), which bounds
    /// the journal that a reopen has to replay.
    FjallSmallMemtable,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::RedbSeqKey => "redb-seqkey",
            Engine::Fjall => "fjall",
            Engine::FjallSyncData => "fjall-syncdata",
            Engine::FjallSmallMemtable => "fjall-mt8",
            Engine::FjallSeqKey => "fjall-seqkey",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "redb" => Ok(Engine::Redb),
            "redb-seqkey" => Ok(Engine::RedbSeqKey),
            "fjall" => Ok(Engine::Fjall),
            "fjall-syncdata" => Ok(Engine::FjallSyncData),
            "fjall-mt8" => Ok(Engine::FjallSmallMemtable),
            "fjall-seqkey" => Ok(Engine::FjallSeqKey),
            other => Err(format!("unknown engine {other:?}").into()),
        }
    }
}

/// What the outbox needs from a store. Every write method is ONE atomic commit that is
/// durable when it returns.
trait Store: Send {
    fn write_batch(&mut self, msgs: &[&Message]) -> Result<()>;
    fn remove_deliveries(&mut self, keys: &[DeliveryKey]) -> Result<()>;
    /// Iterates every pending delivery; returns (count, key+value bytes).
    fn scan_deliveries(&self) -> Result<(u64, u64)>;
}

fn open_store(engine: Engine, dir: &Path) -> Result<Box<dyn Store>> {
    use fjall::PersistMode::{SyncAll, SyncData};
    const MT8: Option<u64> = Some(8 * 1024 * 1024);
    Ok(match engine {
        Engine::Redb => Box::new(RedbStore::open(dir, false)?),
        Engine::RedbSeqKey => Box::new(RedbStore::open(dir, true)?),
        Engine::Fjall => Box::new(FjallStore::open(dir, SyncAll, None, false)?),
        Engine::FjallSeqKey => Box::new(FjallStore::open(dir, SyncAll, None, true)?),
        Engine::FjallSyncData => Box::new(FjallStore::open(dir, SyncData, None, false)?),
        Engine::FjallSmallMemtable => Box::new(FjallStore::open(dir, SyncAll, MT8, false)?),
    })
}

const MESSAGES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("messages");
const DELIVERIES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("deliveries");

struct RedbStore {
    db: redb::Database,
    seq_first: bool,
}

impl RedbStore {
    fn open(dir: &Path, seq_first: bool) -> Result<Self> {
        // `create` opens the file if it exists; after a crash it runs redb's repair.
        let db = redb::Database::create(dir.join("outbox.redb"))?;
        // Make sure both tables exist so a read transaction can open them.
        let tx = db.begin_write()?;
        tx.open_table(MESSAGES)?;
        tx.open_table(DELIVERIES)?;
        tx.commit()?;
        Ok(Self { db, seq_first })
    }

    fn key(&self, k: &DeliveryKey) -> DeliveryKey {
        stored_key(k, self.seq_first)
    }
}

/// The stored delivery key: as generated (recipient, seq) or reordered to (seq, recipient).
fn stored_key(k: &DeliveryKey, seq_first: bool) -> DeliveryKey {
    if !seq_first {
        return *k;
    }
    let mut out = [0u8; DELIVERY_KEY_LEN];
    out[..8].copy_from_slice(&k[16..]);
    out[8..].copy_from_slice(&k[..16]);
    out
}

impl Store for RedbStore {
    fn write_batch(&mut self, msgs: &[&Message]) -> Result<()> {
        let tx = self.db.begin_write()?; // durability defaults to Durability::Immediate
        {
            let mut messages = tx.open_table(MESSAGES)?;
            let mut deliveries = tx.open_table(DELIVERIES)?;
            for m in msgs {
                messages.insert(m.ticket.as_str(), m.payload.as_slice())?;
                for (k, v) in &m.deliveries {
                    deliveries.insert(self.key(k).as_slice(), v.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn remove_deliveries(&mut self, keys: &[DeliveryKey]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut deliveries = tx.open_table(DELIVERIES)?;
            for k in keys {
                deliveries.remove(self.key(k).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn scan_deliveries(&self) -> Result<(u64, u64)> {
        use redb::{ReadableDatabase as _, ReadableTable as _};
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DELIVERIES)?;
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in table.iter()? {
            let (k, v) = entry?;
            count += 1;
            bytes += (k.value().len() + v.value().len()) as u64;
        }
        Ok((count, bytes))
    }
}

struct FjallStore {
    db: fjall::Database,
    messages: fjall::Keyspace,
    deliveries: fjall::Keyspace,
    mode: fjall::PersistMode,
    seq_first: bool,
}

impl FjallStore {
    fn open(
        dir: &Path,
        mode: fjall::PersistMode,
        memtable: Option<u64>,
        seq_first: bool,
    ) -> Result<Self> {
        // Opens or recovers (journal replay) the database in `dir/fjall`.
        let db = fjall::Database::builder(dir.join("fjall")).open()?;
        let opts = || match memtable {
            Some(bytes) => fjall::KeyspaceCreateOptions::default().max_memtable_size(bytes),
            None => fjall::KeyspaceCreateOptions::default(),
        };
        let messages = db.keyspace("messages", opts)?;
        let deliveries = db.keyspace("deliveries", opts)?;
        Ok(Self {
            db,
            messages,
            deliveries,
            mode,
            seq_first,
        })
    }
}

impl Store for FjallStore {
    fn write_batch(&mut self, msgs: &[&Message]) -> Result<()> {
        // The batch is written to the journal and the journal fsynced inside `commit`,
        // under the journal lock: one fsync per batch.
        let mut batch = self.db.batch().durability(Some(self.mode));
        for m in msgs {
            batch.insert(&self.messages, m.ticket.as_bytes(), m.payload.as_slice());
            for (k, v) in &m.deliveries {
                let k = stored_key(k, self.seq_first);
                batch.insert(&self.deliveries, k.as_slice(), v.as_slice());
            }
        }
        batch.commit()?;
        Ok(())
    }

    fn remove_deliveries(&mut self, keys: &[DeliveryKey]) -> Result<()> {
        let mut batch = self.db.batch().durability(Some(self.mode));
        for k in keys {
            batch.remove(&self.deliveries, stored_key(k, self.seq_first).as_slice());
        }
        batch.commit()?;
        Ok(())
    }

    fn scan_deliveries(&self) -> Result<(u64, u64)> {
        let (mut count, mut bytes) = (0u64, 0u64);
        for guard in self.deliveries.iter() {
            let (k, v) = guard.into_inner()?;
            count += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok((count, bytes))
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// (apparent bytes, allocated bytes) of everything under `dir`.
fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let mut apparent = 0;
    let mut allocated = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                let (a, b) = dir_size(&entry.path());
                apparent += a;
                allocated += b;
            } else {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

/// Filesystem type of the mount holding `path`, from /proc/self/mounts.
fn fs_type(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "?".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "?".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(mnt), Some(ty)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mnt = mnt.replace("\\040", " ");
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|(len, _)| mnt.len() >= *len) {
            best = Some((mnt.len(), ty.to_string()));
        }
    }
    best.map(|(_, t)| t).unwrap_or_else(|| "?".into())
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------
// Group commit: C producers, one writer, one durable commit per drained batch
// ---------------------------------------------------------------------------

struct Submission {
    msg: Message,
    ack: Sender<()>,
}

#[derive(Debug, Default, Clone)]
struct GroupResult {
    /// Messages acknowledged (durable) inside the measuring window, per second.
    msgs_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    /// Durable commits (= fsyncs) per second inside the window.
    commits_per_s: f64,
    avg_batch: f64,
    /// Median time of one write+commit(+fsync), seen by the writer.
    commit_p50_us: u64,
}

fn writer_loop(
    mut store: Box<dyn Store>,
    rx: Receiver<Submission>,
    start: Instant,
    end: Instant,
) -> Result<(u64, u64, Vec<u64>)> {
    let (mut msgs_in_window, mut commits_in_window) = (0u64, 0u64);
    let mut commit_us = Vec::new();
    let mut batch: Vec<Submission> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let refs: Vec<&Message> = batch.iter().map(|s| &s.msg).collect();
        let t0 = Instant::now();
        store.write_batch(&refs)?;
        let t1 = Instant::now();
        if t1 >= start && t1 < end {
            msgs_in_window += batch.len() as u64;
            commits_in_window += 1;
            commit_us.push((t1 - t0).as_micros() as u64);
        }
        for s in batch.drain(..) {
            let _ = s.ack.send(());
        }
    }
    Ok((msgs_in_window, commits_in_window, commit_us))
}

fn group_commit(
    engine: Engine,
    base: &Path,
    producers: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<GroupResult> {
    let dir = tempfile::Builder::new()
        .prefix("storage-compare-")
        .tempdir_in(base)?;
    let store = open_store(engine, dir.path())?;
    let (tx, rx) = crossbeam_channel::unbounded::<Submission>();
    let start = Instant::now() + warmup;
    let end = start + measure;
    let writer = std::thread::spawn(move || writer_loop(store, rx, start, end));
    let seq = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..producers)
        .map(|i| {
            let tx = tx.clone();
            let seq = Arc::clone(&seq);
            std::thread::spawn(move || -> Vec<u64> {
                let mut rng = Rng(0x5EED ^ (i as u64).wrapping_mul(0x1234_5678_9ABC_DEF1));
                let (ack_tx, ack_rx) = crossbeam_channel::bounded::<()>(1);
                let mut lat = Vec::new();
                loop {
                    let msg = make_message(&mut rng, &seq);
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let ack = ack_tx.clone();
                    if tx.send(Submission { msg, ack }).is_err() || ack_rx.recv().is_err() {
                        break; // writer failed; its error is reported on join
                    }
                    if t0 >= start {
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                }
                lat
            })
        })
        .collect();
    drop(tx);
    let mut lat: Vec<u64> = Vec::new();
    for h in handles {
        lat.extend(h.join().map_err(|_| "producer panicked")?);
    }
    let (msgs, commits, mut commit_us) = writer.join().map_err(|_| "writer panicked")??;
    lat.sort_unstable();
    commit_us.sort_unstable();
    let secs = measure.as_secs_f64();
    Ok(GroupResult {
        msgs_per_s: msgs as f64 / secs,
        p50_us: pct(&lat, 0.50),
        p99_us: pct(&lat, 0.99),
        commits_per_s: commits as f64 / secs,
        avg_batch: if commits == 0 {
            0.0
        } else {
            msgs as f64 / commits as f64
        },
        commit_p50_us: pct(&commit_us, 0.50),
    })
}

// ---------------------------------------------------------------------------
// Fill, delivery-done, crash, restart scan
// ---------------------------------------------------------------------------

/// Child process: fills `fill` messages in durable batches of `MAX_BATCH`, measures size,
/// deletes ("delivery done") the oldest deliveries in durable batches until
/// `PENDING_AFTER_DONE` remain, prints `STAT key value` lines, then exits WITHOUT closing
/// the database (destructors skipped), so the parent reopens it as after a crash.
fn child_prepare(engine: Engine, dir: &Path, fill: usize) -> Result<()> {
    let mut store = open_store(engine, dir)?;
    let mut out = std::io::stdout().lock();
    let seq = AtomicU64::new(0);
    let mut rng = Rng(0xF111);
    let mut keys: Vec<DeliveryKey> = Vec::new();
    let t0 = Instant::now();
    let mut done = 0;
    while done < fill {
        let n = MAX_BATCH.min(fill - done);
        let batch: Vec<Message> = (0..n).map(|_| make_message(&mut rng, &seq)).collect();
        keys.extend(batch.iter().flat_map(|m| m.deliveries.iter().map(|d| d.0)));
        let refs: Vec<&Message> = batch.iter().collect();
        store.write_batch(&refs)?;
        done += n;
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let (apparent, allocated) = dir_size(dir);
    writeln!(out, "STAT fill_msgs_per_s {}", fill as f64 / fill_s)?;
    writeln!(out, "STAT deliveries_written {}", keys.len())?;
    writeln!(out, "STAT size_after_fill_apparent {apparent}")?;
    writeln!(out, "STAT size_after_fill_allocated {allocated}")?;

    // "Delivery done": oldest first, as acknowledgements arrive roughly in submission order.
    let to_delete = keys.len().saturating_sub(PENDING_AFTER_DONE);
    let small = SMALL_DONE_TOTAL.min(to_delete);
    for (label, range, batch) in [
        ("done16", 0..small, SMALL_DONE_BATCH),
        ("done256", small..to_delete, MAX_BATCH),
    ] {
        let mut commit_us = Vec::new();
        let t0 = Instant::now();
        for chunk in keys[range.clone()].chunks(batch) {
            let c0 = Instant::now();
            store.remove_deliveries(chunk)?;
            commit_us.push(c0.elapsed().as_micros() as u64);
        }
        let secs = t0.elapsed().as_secs_f64();
        commit_us.sort_unstable();
        writeln!(out, "STAT {label}_per_s {}", range.len() as f64 / secs)?;
        writeln!(out, "STAT {label}_commit_p50_us {}", pct(&commit_us, 0.5))?;
        writeln!(out, "STAT {label}_commit_p99_us {}", pct(&commit_us, 0.99))?;
    }
    let (apparent, allocated) = dir_size(dir);
    writeln!(out, "STAT pending_expected {}", keys.len() - to_delete)?;
    writeln!(out, "STAT size_after_done_apparent {apparent}")?;
    writeln!(out, "STAT size_after_done_allocated {allocated}")?;
    out.flush()?;
    drop(out);
    // Simulated crash: no Drop for the store, no clean shutdown. Every commit above was
    // durable, so the parent must find all of it.
    std::mem::forget(store);
    std::process::exit(0);
}

#[derive(Debug, Default, Clone)]
struct RestartResult {
    stats: HashMap<String, f64>,
}

fn restart(engine: Engine, base: &Path, fill: usize) -> Result<RestartResult> {
    let dir = tempfile::Builder::new()
        .prefix("storage-compare-")
        .tempdir_in(base)?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["--child-prepare", engine.name()])
        .arg(dir.path())
        .arg(fill.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stats = HashMap::new();
    let stdout = child.stdout.ok_or("no child stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let mut f = line.split_whitespace();
        if let (Some("STAT"), Some(k), Some(v)) = (f.next(), f.next(), f.next()) {
            stats.insert(k.to_string(), v.parse::<f64>()?);
        }
    }
    let expected = *stats.get("pending_expected").ok_or("child failed")? as u64;

    // Reopen after the simulated crash, then scan all pending deliveries.
    let t0 = Instant::now();
    let store = open_store(engine, dir.path())?;
    let t1 = Instant::now();
    let (count, _) = store.scan_deliveries()?;
    let t2 = Instant::now();
    if count != expected {
        return Err(format!(
            "{}: after crash found {count} pending, expected {expected}",
            engine.name()
        )
        .into());
    }
    stats.insert("crash_open_ms".into(), (t1 - t0).as_secs_f64() * 1e3);
    stats.insert("crash_scan_ms".into(), (t2 - t1).as_secs_f64() * 1e3);
    drop(store); // clean close

    let (apparent, allocated) = dir_size(dir.path());
    stats.insert("size_after_close_apparent".into(), apparent as f64);
    stats.insert("size_after_close_allocated".into(), allocated as f64);

    // Reopen after a clean close.
    let t0 = Instant::now();
    let store = open_store(engine, dir.path())?;
    let t1 = Instant::now();
    let (count, _) = store.scan_deliveries()?;
    let t2 = Instant::now();
    if count != expected {
        return Err(format!(
            "{}: after close found {count} pending, expected {expected}",
            engine.name()
        )
        .into());
    }
    stats.insert("clean_open_ms".into(), (t1 - t0).as_secs_f64() * 1e3);
    stats.insert("clean_scan_ms".into(), (t2 - t1).as_secs_f64() * 1e3);
    drop(store);
    Ok(RestartResult { stats })
}

// ---------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------

struct Args {
    runs: usize,
    engines: Vec<Engine>,
    producers: Vec<usize>,
    warmup: Duration,
    measure: Duration,
    fill: usize,
    dir: PathBuf,
}

const USAGE: &str = "usage: storage-compare [--runs N] [--engines redb,redb-seqkey,fjall,fjall-seqkey,fjall-syncdata,fjall-mt8] \
[--producers 1,8,64|none] [--warmup SECS] [--secs SECS] [--fill MESSAGES] [--dir PATH]";

fn parse_args() -> Result<Args> {
    let mut a = Args {
        runs: 3,
        engines: vec![
            Engine::Redb,
            Engine::Fjall,
            Engine::FjallSyncData,
            Engine::FjallSmallMemtable,
        ],
        producers: vec![1, 8, 64],
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(5),
        fill: 100_000,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let val = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--runs" => a.runs = val.parse()?,
            "--engines" => {
                a.engines = val.split(',').map(Engine::parse).collect::<Result<_>>()?;
            }
            "--producers" => {
                a.producers = if val == "none" {
                    Vec::new()
                } else {
                    val.split(',')
                        .map(|s| s.parse::<usize>())
                        .collect::<Result<_, _>>()?
                };
            }
            "--warmup" => a.warmup = Duration::from_secs_f64(val.parse()?),
            "--secs" => a.measure = Duration::from_secs_f64(val.parse()?),
            "--fill" => a.fill = val.parse()?,
            "--dir" => a.dir = PathBuf::from(val),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}").into()),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child-prepare") {
        let engine = Engine::parse(argv.get(2).ok_or("engine")?)?;
        let dir = PathBuf::from(argv.get(3).ok_or("dir")?);
        let fill: usize = argv.get(4).ok_or("fill")?.parse()?;
        return child_prepare(engine, &dir, fill);
    }
    let args = parse_args()?;
    let fs = fs_type(&args.dir);
    println!(
        "storage-compare: runs={} warmup={:?} measure={:?} fill={} temp base filesystem={fs}",
        args.runs, args.warmup, args.measure, args.fill
    );
    if fs == "tmpfs" || fs == "ramfs" {
        return Err("the temp dir is in memory; pass --dir on a real disk".into());
    }

    let mut group: HashMap<(Engine, usize), Vec<GroupResult>> = HashMap::new();
    let mut restarts: HashMap<Engine, Vec<RestartResult>> = HashMap::new();
    for run in 1..=args.runs {
        for &engine in &args.engines {
            for &c in &args.producers {
                let r = group_commit(engine, &args.dir, c, args.warmup, args.measure)?;
                println!(
                    "run {run} {:<14} C={c:<3} {:>8.0} msg/s  p50 {:>7.2} ms  p99 {:>7.2} ms  \
                     {:>6.0} commits/s  avg batch {:>5.1}  commit p50 {:>6.2} ms",
                    engine.name(),
                    r.msgs_per_s,
                    r.p50_us as f64 / 1e3,
                    r.p99_us as f64 / 1e3,
                    r.commits_per_s,
                    r.avg_batch,
                    r.commit_p50_us as f64 / 1e3,
                );
                group.entry((engine, c)).or_default().push(r);
            }
            let r = restart(engine, &args.dir, args.fill)?;
            let s = &r.stats;
            let g = |k: &str| s.get(k).copied().unwrap_or(f64::NAN);
            println!(
                "run {run} {:<14} fill {:.0} msg/s ({} deliveries), done16 {:.0}/s, done256 {:.0}/s, \
                 crash reopen {:.1} ms + scan {:.1} ms, clean reopen {:.1} ms + scan {:.1} ms, \
                 size after fill {:.1} MiB (alloc {:.1})",
                engine.name(),
                g("fill_msgs_per_s"),
                g("deliveries_written"),
                g("done16_per_s"),
                g("done256_per_s"),
                g("crash_open_ms"),
                g("crash_scan_ms"),
                g("clean_open_ms"),
                g("clean_scan_ms"),
                mib(g("size_after_fill_apparent")),
                mib(g("size_after_fill_allocated")),
            );
            restarts.entry(engine).or_default().push(r);
        }
    }

    // Medians over the runs, as Markdown.
    let mut md = String::new();
    writeln!(md, "\n## Medians of {} runs\n", args.runs)?;
    writeln!(
        md,
        "| engine | producers | durable msg/s | p50 ms | p99 ms | commits/s | avg batch | commit p50 ms |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for &engine in &args.engines {
        for &c in &args.producers {
            let v = &group[&(engine, c)];
            let m = |f: fn(&GroupResult) -> f64| median(v.iter().map(f).collect());
            writeln!(
                md,
                "| {} | {c} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} | {:.2} |",
                engine.name(),
                m(|r| r.msgs_per_s),
                m(|r| r.p50_us as f64) / 1e3,
                m(|r| r.p99_us as f64) / 1e3,
                m(|r| r.commits_per_s),
                m(|r| r.avg_batch),
                m(|r| r.commit_p50_us as f64) / 1e3,
            )?;
        }
    }
    writeln!(md)?;
    const MIB: f64 = 1.0 / 1_048_576.0;
    let keys: [(&str, &str, f64); 18] = [
        (
            "fill_msgs_per_s",
            "fill 100k msgs, msg/s (durable batches of 256)",
            1.0,
        ),
        ("deliveries_written", "deliveries written", 1.0),
        (
            "size_after_fill_apparent",
            "size after fill, MiB (apparent)",
            MIB,
        ),
        (
            "size_after_fill_allocated",
            "size after fill, MiB (allocated)",
            MIB,
        ),
        (
            "done16_per_s",
            "delivery done, deletes/s (batches of 16)",
            1.0,
        ),
        (
            "done16_commit_p50_us",
            "delivery done, commit p50 ms (batches of 16)",
            1e-3,
        ),
        (
            "done16_commit_p99_us",
            "delivery done, commit p99 ms (batches of 16)",
            1e-3,
        ),
        (
            "done256_per_s",
            "delivery done, deletes/s (batches of 256)",
            1.0,
        ),
        (
            "done256_commit_p50_us",
            "delivery done, commit p50 ms (batches of 256)",
            1e-3,
        ),
        (
            "done256_commit_p99_us",
            "delivery done, commit p99 ms (batches of 256)",
            1e-3,
        ),
        (
            "size_after_done_allocated",
            "size with 100k pending, MiB (allocated)",
            MIB,
        ),
        ("crash_open_ms", "reopen after crash, ms", 1.0),
        (
            "crash_scan_ms",
            "scan 100k pending after crash reopen, ms",
            1.0,
        ),
        (
            "size_after_close_allocated",
            "size after clean close, MiB (allocated)",
            MIB,
        ),
        ("clean_open_ms", "reopen after clean close, ms", 1.0),
        (
            "clean_scan_ms",
            "scan 100k pending after clean reopen, ms",
            1.0,
        ),
        (
            "pending_expected",
            "pending deliveries found (checked)",
            1.0,
        ),
        (
            "size_after_close_apparent",
            "size after clean close, MiB (apparent)",
            MIB,
        ),
    ];
    write!(md, "| metric |")?;
    for &engine in &args.engines {
        write!(md, " {} |", engine.name())?;
    }
    writeln!(md)?;
    write!(md, "|---|")?;
    for _ in &args.engines {
        write!(md, "---:|")?;
    }
    writeln!(md)?;
    for (key, label, scale) in keys {
        write!(md, "| {label} |")?;
        for &engine in &args.engines {
            let v = median(
                restarts[&engine]
                    .iter()
                    .map(|r| r.stats.get(key).copied().unwrap_or(f64::NAN) * scale)
                    .collect(),
            );
            if v.abs() >= 100.0 {
                write!(md, " {v:.0} |")?;
            } else {
                write!(md, " {v:.1} |")?;
            }
        }
        writeln!(md)?;
    }
    print!("{md}");
    Ok(())
}
