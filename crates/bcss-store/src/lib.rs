//! The hub's durable storage: accepted tickets and their deliveries (the outbox), in one redb
//! file, written by one thread with group commit.
//!
//! Every change goes through [`Store`]'s writer thread: it takes whatever changes are waiting
//! (up to [`MAX_GROUP`]), applies them in one write transaction and commits once — one fsync for
//! the whole group — then answers each caller. A caller's change is durable when its future
//! resolves `Ok`. If the disk fails (full, read-only, gone), the commit fails and the writer
//! reopens the file, which says whether the group reached it after all (a commit can report an
//! error once its data is written: each group raises a `commits` counter): if so, the group is
//! answered as committed; if not, every change of it is answered [`StoreError::Unavailable`]
//! and nothing of it is kept. What was committed before stays intact (redb's commits are
//! atomic). Only when the file cannot even be reopened is the group answered `Unavailable`
//! without knowing; the next start reads what the file holds.
//!
//! # Layout
//!
//! - [`rows`]: the stored records (prost messages); [`journal`]: the journal's entries, chain
//!   and checkpoints.
//! - this file: [`Store`], the handle callers use, and what it answers.
//! - `tables`: the redb tables and what each holds.
//! - `writer`: the writer thread: group commit, accepting a ticket, changes to deliveries,
//!   journal appends and their index rows, retention.
//! - `read`: recovery at start and the reads the writer thread answers between groups.

pub mod journal;
mod read;
pub mod rows;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};

use redb::Database;
use tokio::sync::{mpsc, oneshot};

pub use journal::{Checkpoint, EntryKind, JournalEntry, Tamper, Verified};
pub use rows::{DeliveryRow, DeliveryState, OutcomeRow, TicketRow};

use read::{commits, journal_head, journal_key, journal_key_file, next_seq, recover, verify_db};
use tables::{OrUnavailable, init_tables, unavailable};
use writer::{Op, Sweep, Writer};

/// Most changes committed together.
pub const MAX_GROUP: usize = 1024;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The data folder cannot be written (full, read-only, missing). Nothing of the change was
    /// kept; retrying later is safe.
    #[error("the hub cannot write its data folder ({0}); nothing was recorded, retry later")]
    Unavailable(String),
    #[error("the hub's store has stopped")]
    Stopped,
    /// A journal query matched more entries than it may (its `limit`): nothing was read.
    #[error("more than {0} journal entries match")]
    TooMany(usize),
    #[error("stored record is damaged: {0}")]
    Damaged(String),
    /// The entry would register again what is registered once (a contact file): nothing of it
    /// was written.
    #[error("already registered: {0}")]
    AlreadyRegistered(String),
    #[error(
        "the data folder {0} is in use by another hub process (its hub.lock is held); stop that \
         hub first"
    )]
    InUse(PathBuf),
    /// The data file is not one the store can read back whole (not a redb file, cut short, or
    /// no commit in it that passes its checksums): it is not opened, and is left as it is. The
    /// hub does not start on it.
    #[error(
        "the data file {file} is damaged ({reason}): it was not opened and nothing in it was \
         changed; restore the data folder from its backup, or move the file aside to start with \
         an empty outbox and journal"
    )]
    DamagedFile { file: PathBuf, reason: String },
}

/// Takes the data folder's `hub.lock` (an exclusive advisory lock, released when the file is
/// closed or the process dies): one hub per data folder, and no offline change
/// (`bcss-hub directory import`) while a hub runs on it. Creates the folder if needed.
pub fn lock_data_folder(dir: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| unavailable(dir, e))?;
    let path = dir.join("hub.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| unavailable(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(unavailable(&path, e)),
    }
}

/// Why the data file did not open: damaged, or (the disk, the folder) unavailable.
fn open_failed(path: &Path, error: redb::DatabaseError) -> StoreError {
    use redb::{DatabaseError, StorageError};
    // Not a redb file (an I/O error of kind InvalidData), or cut short, or no commit in it that
    // passes its checksums: retrying cannot help, and it must not be taken for an empty one.
    let damaged = match &error {
        DatabaseError::Storage(StorageError::Corrupted(_)) => true,
        DatabaseError::Storage(StorageError::Io(e)) => e.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    };
    if !damaged {
        return unavailable(path, error);
    }
    StoreError::DamagedFile {
        file: path.to_owned(),
        reason: error.to_string(),
    }
}

/// The answer to [`Store::accept`].
#[derive(Debug)]
pub enum Accepted {
    /// Recorded; the sequence numbers of the deliveries, in the order given.
    New { seqs: Vec<u64> },
    /// The sender already used this message id: here is what was recorded then.
    Existing(StoredTicket),
}

/// A ticket as the store holds it, with what a reader needs to tell where its deliveries
/// stand: the rows of those not delivered yet (pending or dead letters; an acknowledged
/// delivery has no row), and the tickets that relay it.
#[derive(Debug, Default)]
pub struct StoredTicket {
    pub row: TicketRow,
    pub deliveries: Vec<DeliveryRow>,
    pub relays: Vec<String>,
}

/// What the store holds at start: the tickets to hold in memory (those with a delivery not
/// made yet, and those accepted since the time given to [`Store::open_with`]), and the
/// deliveries still to make.
#[derive(Debug, Default)]
pub struct Recovered {
    pub tickets: Vec<TicketRow>,
    pub pending: Vec<DeliveryRow>,
    /// Sequence numbers of the dead letters.
    pub dead: Vec<u64>,
    /// Rows that did not decode: skipped, so that the rest resumes, and left on disk as they
    /// are for an operator (the hub logs each at start).
    pub damaged: Vec<DamagedRow>,
}

/// A row recovery could not read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DamagedRow {
    /// A delivery row (its sequence number), or the payload it shares with its ticket's others.
    Delivery(u64),
    /// A ticket row (its ticket).
    Ticket(String),
}

impl std::fmt::Display for DamagedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DamagedRow::Delivery(seq) => write!(f, "delivery {seq}"),
            DamagedRow::Ticket(ticket) => write!(f, "ticket {ticket}"),
        }
    }
}

/// How big the store is, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    /// Journal entries held, stubs of expired entries included.
    pub journal_entries: u64,
    /// The size of `hub.redb` on disk, in bytes.
    pub file_bytes: u64,
}

/// A change to a delivery.
#[derive(Debug)]
pub enum Change {
    /// Acknowledged: the row is removed (nothing is left to do); the journal keeps the delivery.
    Delivered { seq: u64, at_ms: i64 },
    /// An attempt failed; the next is due at `next_attempt_ms`.
    Attempted {
        seq: u64,
        attempts: u32,
        last_error: String,
        next_attempt_ms: i64,
    },
    /// Given up after `attempts`: a dead letter.
    DeadLetter {
        seq: u64,
        attempts: u32,
        last_error: String,
        reason: String,
    },
    /// A dead letter goes back to pending, with its attempts reset. A row that is not a dead
    /// letter (replayed already, still being retried) is left alone: `None`, nothing
    /// journalled, so that nothing is queued twice.
    Replay { seq: u64 },
}

/// Which journal entries to read.
#[derive(Clone, Debug)]
pub enum JournalQuery {
    /// Every entry about a person.
    Person { niss: u64 },
    /// Every entry of these tickets.
    Tickets { tickets: Vec<String> },
    /// Entries where the institution is sender or recipient, in a time range (ms, inclusive);
    /// more than `limit` found in its index: [`StoreError::TooMany`], before they are read.
    Party {
        institution: String,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    },
    /// Every entry in a time range (ms, inclusive); more than `limit`: [`StoreError::TooMany`].
    /// Read, like a verification, on the store's reader thread: a wide range costs time, never
    /// the commits.
    Range {
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    },
    /// The registration of contact file `id` by `institution` (a contact centre's own
    /// reference: two centres may use the same one), if any.
    ContactFile { institution: String, id: String },
}

/// The store. Cheap to share behind an `Arc`; dropping the last handle stops the writer after
/// it committed what it had.
#[derive(Debug)]
pub struct Store {
    journal: bool,
    /// False from a failed commit until the next successful one (health reports it).
    writable: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    reader: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    /// Held for the store's life: see [`lock_data_folder`].
    _lock: std::fs::File,
}

impl Drop for Store {
    /// Lets the writer finish its last group and close the file.
    fn drop(&mut self) {
        self.ops.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        // The writer's end closes the reader's queue; the reader ends after its current read.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// How the store opens `hub.redb` (tests hand in a storage backend that fails on cue).
pub(crate) type OpenDatabase =
    Box<dyn Fn(&Path) -> Result<Database, redb::DatabaseError> + Send + 'static>;

/// What [`Store::open_with`] is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Whether exchanges are journalled (`false`: benchmarks of the journal's cost).
    pub journal: bool,
    /// The tickets read back at start are those with a delivery not made yet and those
    /// accepted at this time (milliseconds since the Unix epoch) or later: the others stay on
    /// disk, for [`Store::ticket`].
    pub hold_since_ms: i64,
    /// The memory redb keeps pages of `hub.redb` in, bytes.
    pub cache_bytes: usize,
}

/// redb's page cache unless told otherwise: 64 MiB. The hub writes at the right edge of its
/// tables and takes rows back soon after (deliveries acknowledged, tickets settled), so its
/// working set is small. A cache of redb's default size, a gigabyte, is fresh memory for every
/// page a commit writes until it is full: the kernel zeroing it was 9 % of the writer thread's
/// time in a fan-out run, and the process spent a tenth more CPU per fan-out message
/// (docs/BENCHMARKS.md, "Profile, tenth round").
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            journal: true,
            hold_since_ms: i64::MIN,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl Store {
    /// Opens (or creates) `hub.redb` in `dir` and reads back what it holds, every ticket
    /// included.
    pub fn open(dir: &Path) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// [`Store::open`], as `options` say.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<(Store, Recovered), StoreError> {
        let cache = options.cache_bytes;
        let open = move |path: &Path| Database::builder().set_cache_size(cache).create(path);
        Store::open_through(dir, options.journal, options.hold_since_ms, Box::new(open))
    }

    /// [`Store::open_with`], opening `hub.redb` (at start, and again after a failure) with
    /// `open`.
    pub(crate) fn open_through(
        dir: &Path,
        journal: bool,
        hold_since_ms: i64,
        open: OpenDatabase,
    ) -> Result<(Store, Recovered), StoreError> {
        let lock = lock_data_folder(dir)?;
        let path = dir.join("hub.redb");
        let db = open(&path).map_err(|e| open_failed(&path, e))?;
        init_tables(&db).map_err(|e| unavailable(&path, e))?;
        let recovered = recover(&db, hold_since_ms)?;
        let next_seq = next_seq(&db)?;
        let commits = commits(&db)?;
        let journal_head = journal_head(&db)?;
        // A new key only for an empty journal: one made for a journal that holds entries would
        // report every seal in it as not the hub's, for good. Without its key, the hub does not
        // start; the key is restored from where the data folder is backed up.
        let journal_key = journal_key(dir, journal_head.0 == 0)?;
        let key_file = journal_key_file(dir);
        if keep_secret_file(&key_file).map_err(|e| unavailable(&key_file, e))? {
            tracing::warn!(
                message = "The journal key was readable by others: now by its owner only.",
                file = %key_file.display(),
            );
        }
        let (ops, rx) = mpsc::channel(4 * MAX_GROUP);
        let (reads, to_read) = std::sync::mpsc::channel();
        let handles = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = std::thread::Builder::new()
            .name("bcss-store-reader".into())
            .spawn({
                let handles = handles.clone();
                move || writer::serve_reads(to_read, journal_key, handles)
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let writable = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = Writer {
            writable: writable.clone(),
            db: Some(std::sync::Arc::new(db)),
            open,
            reader: reads,
            handles,
            path: path.clone(),
            next_seq,
            commits,
            journal_key,
            journal_head,
            journal,
        };
        let writer = std::thread::Builder::new()
            .name("bcss-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok((
            Store {
                journal,
                writable,
                ops: Some(ops),
                writer: Some(writer),
                reader: Some(reader),
                path,
                _lock: lock,
            },
            recovered,
        ))
    }

    /// False when the last commit failed (disk full, read-only): nothing can be accepted.
    pub fn writable(&self) -> bool {
        self.writable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether exchanges are journalled.
    pub fn journals(&self) -> bool {
        self.journal
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a ticket, its deliveries (their `seq` is assigned here) and its journal entries,
    /// durably, unless the sender already used the message id.
    pub async fn accept(
        &self,
        ticket: TicketRow,
        deliveries: Vec<DeliveryRow>,
        journal: Vec<JournalEntry>,
    ) -> Result<Accepted, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Accept {
            ticket: Box::new(ticket),
            deliveries,
            journal,
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Applies a change to a delivery, durably; returns the row as it now is, or `None` when
    /// there is no such row or (a replay) it was not a dead letter.
    pub async fn change(&self, change: Change) -> Result<Option<DeliveryRow>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Change { change, reply }).await?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Dead letters with a sequence number above `after`, oldest first.
    pub async fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::DeadLetters {
            after,
            limit,
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// One delivery, by sequence number.
    pub async fn delivery(&self, seq: u64) -> Result<Option<DeliveryRow>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Delivery { seq, reply }).await?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// A ticket, where its deliveries stand and its relays; `None` if it is unknown or was
    /// forgotten (`storage.ticket_days`).
    pub async fn ticket(&self, ticket: &str) -> Result<Option<StoredTicket>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Ticket {
            ticket: ticket.to_owned(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Journal entries matching `query`, in order.
    pub async fn journal(&self, query: JournalQuery) -> Result<Vec<JournalEntry>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Journal { query, reply }).await?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// After a failed commit nothing else may write for a while (health sends traffic
    /// elsewhere), so the health task probes: it commits 1 MiB (room for a group of messages,
    /// so that a few free bytes do not make health flap), then removes it. A success makes
    /// [`Store::writable`] true again.
    pub async fn probe(&self) -> Result<(), StoreError> {
        for write in [true, false] {
            let (reply, answer) = oneshot::channel();
            self.send(Op::Probe { write, reply }).await?;
            answer.await.map_err(|_| StoreError::Stopped)??;
        }
        Ok(())
    }

    /// Appends one entry (a contact-file registration, say) durably.
    pub async fn append(&self, entry: JournalEntry) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Append {
            entry: Box::new(entry),
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Stopped)?.map(|_| ())
    }

    /// Removes the content of at most `limit` entries whose retention ended before `now_ms`,
    /// leaving stubs; returns how many.
    pub async fn expire(&self, now_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.sweep(Sweep::Journal { now_ms }, limit).await
    }

    /// Removes at most `limit` tickets accepted before `before_ms` (oldest first) and their
    /// message ids: a later message with one of those ids is a new message. Returns how many.
    /// The journal keeps their exchanges; their deliveries' rows, if any are left (dead
    /// letters), keep what a replay needs.
    pub async fn forget_tickets(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.sweep(Sweep::Tickets { before_ms }, limit).await
    }

    async fn sweep(&self, sweep: Sweep, limit: usize) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let removed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.send(Op::Sweep {
            sweep,
            limit,
            reply,
            removed: removed.clone(),
        })
        .await?;
        answer.await.map_err(|_| StoreError::Stopped)??;
        Ok(removed.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Walks the whole chain and its checkpoints.
    pub async fn verify(&self) -> Result<Verified, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Verify { reply }).await?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// The journal's entry count (a table length: no scan) and the file's size.
    pub async fn size(&self) -> Result<Size, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Size { reply }).await?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    async fn send(&self, op: Op) -> Result<(), StoreError> {
        let ops = self.ops.as_ref().ok_or(StoreError::Stopped)?;
        ops.send(op).await.map_err(|_| StoreError::Stopped)
    }
}

impl<T, E: Into<redb::Error>> OrUnavailable<T> for Result<T, E> {
    fn or_unavailable(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Unavailable(e.into().to_string()))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Verifies the journal of a store that is not open (the hub stopped), for the tests that
/// tamper with the file (a running hub's journal is verified through its `Verify` call).
pub fn verify_folder(dir: &Path) -> Result<Verified, StoreError> {
    let path = dir.join("hub.redb");
    let db = Database::open(&path).map_err(|e| open_failed(&path, e))?;
    // Checking writes nothing: without its key the journal cannot be checked.
    verify_db(&db, &journal_key(dir, false)?, &|| false)
}

/// Makes an existing key file readable and writable by its owner only, as
/// [`create_secret_file`] makes new ones (a key restored from a backup, or written by an
/// earlier version, may be readable by others); true if it had to.
pub fn keep_secret_file(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    Ok(true)
}

/// Creates a key file of the data folder (`journal.key`, the logs' person key): whole or not
/// at all (written to a temporary file, synced, renamed, the folder synced), readable and
/// writable by the owner only. Fails if `path` exists.
pub fn create_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let partial = path.with_extension("partial");
    // A partial file left by a crash is not a key: start it afresh.
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    if path.exists() {
        let _ = std::fs::remove_file(&partial);
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists", path.display()),
        ));
    }
    std::fs::rename(&partial, path)?;
    std::fs::File::open(folder)?.sync_all()
}
