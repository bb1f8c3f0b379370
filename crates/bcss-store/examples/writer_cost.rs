//! What the store spends per accepted message, with its journal and without, for a
//! single-recipient A052 and an A052 broadcast to 10 CPAS: the wall time and the process's CPU
//! time per message, each message accepted then acknowledged by every recipient, and the bytes
//! its tables then hold per message (redb's stored bytes: what the journal keeps).
//!
//! `cargo run --release -p bcss-store --example writer_cost -- [MESSAGES] [ROUNDS] [IN_FLIGHT]`
//! (10,000 messages a run, 3 rounds, 256 messages in flight; a temporary folder on the default
//! disk). Fewer in flight make smaller groups: each commit's cost is shared by fewer messages.
//! Runs alternate shape and journal round by round; the medians close the report. Messages and
//! their entries are shaped as the gateway makes them (`journal_entries` in its pipeline): a
//! submission, one admission per recipient with the names of the removed fields, and on
//! acknowledgement a delivery entry.

use std::time::Instant;

use bcss_store::{
    Accepted, Change, DeliveryRow, EntryKind, JournalEntry, OutcomeRow, Store, StoreOptions,
    TicketRow,
};

/// The hub's allocator (`src/main.rs`), so that the store's allocations cost what they cost
/// in the hub: under glibc's malloc they were a fifth of this example's CPU samples.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages accepted concurrently unless told otherwise, so that they share group commits as
/// the hub's do.
const IN_FLIGHT: usize = 256;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().map_or(Ok(10_000), |n| n.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |n| n.parse())?;
    let in_flight: usize = args.next().map_or(Ok(IN_FLIGHT), |n| n.parse())?;
    if in_flight == 0 {
        return Err("IN_FLIGHT: at least 1 message in flight".into());
    }
    println!("{messages} messages a run, {in_flight} in flight");
    let runs = [(1, true), (10, true), (1, false), (10, false)];
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); runs.len()];
    for round in 1..=rounds {
        for (i, &(recipients, journal)) in runs.iter().enumerate() {
            let (wall, cpu, bytes) = run(messages, recipients, journal, in_flight).await?;
            println!(
                "round {round}: {recipients:>2} recipient(s), journal {:<3}: {wall:7.1} µs wall, \
                 {cpu:7.1} µs CPU, {bytes:6.0} stored bytes per message",
                if journal { "on" } else { "off" },
            );
            results[i].push((wall, cpu, bytes));
        }
    }
    println!("medians of {rounds} rounds, per message (per delivery)");
    for (&(recipients, journal), runs) in std::iter::zip(&runs, &mut results) {
        let wall = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        let bytes = median(runs.iter().map(|r| r.2).collect());
        println!(
            "{recipients:>2} recipient(s), journal {:<3}: {wall:7.1} µs wall ({:5.1}), \
             {cpu:7.1} µs CPU ({:5.1}), {bytes:6.0} stored bytes",
            if journal { "on" } else { "off" },
            wall / recipients as f64,
            cpu / recipients as f64,
        );
    }
    Ok(())
}

/// Wall and CPU microseconds, and stored bytes, per message: `messages` accepted and
/// delivered to `recipients` each, in a fresh store, `in_flight` at a time.
async fn run(
    messages: usize,
    recipients: usize,
    journal: bool,
    in_flight: usize,
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let temporary = tempfile::tempdir()?;
    let (store, _) = Store::open_with(
        temporary.path(),
        StoreOptions {
            journal,
            ..StoreOptions::default()
        },
    )?;
    let store = std::sync::Arc::new(store);
    let at_ms = bcss_store::now_ms();
    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..in_flight {
        let store = store.clone();
        tasks.spawn(async move {
            for n in (worker..messages).step_by(in_flight) {
                let (ticket, deliveries, entries) = message(n, recipients, at_ms);
                let Accepted::New { seqs } = store.accept(ticket, deliveries, entries).await?
                else {
                    unreachable!("every message id is new");
                };
                for seq in seqs {
                    let at_ms = bcss_store::now_ms();
                    store.change(Change::Delivered { seq, at_ms }).await?;
                }
            }
            Ok::<_, bcss_store::StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_before;
    drop(store);
    let bytes = stored_bytes(&temporary.path().join("hub.redb"))? as f64;
    let per_message = |amount: f64| amount / messages as f64;
    Ok((
        per_message(wall * 1e6),
        per_message(cpu * 1e6),
        per_message(bytes),
    ))
}

/// Message `n`: an A052 from a mutuality to `recipients` CPAS under 20/130, as the gateway
/// records it.
fn message(
    n: usize,
    recipients: usize,
    at_ms: i64,
) -> (TicketRow, Vec<DeliveryRow>, Vec<JournalEntry>) {
    // Time-ordered like the hub's UUIDv7 tickets; a NISS spread over the index like real ones.
    let ticket = format!("{at_ms:012x}-{n:023}");
    let niss = 10_000_000_000 + (n as u64).wrapping_mul(2_654_435_761) % 89_999_999_999;
    let keep_until_ms = at_ms + 10 * 31_557_600_000;
    let cpas: Vec<String> = (0..recipients).map(|r| format!("cpas-{r:03}")).collect();
    let row = TicketRow {
        ticket: ticket.clone(),
        sender: "mc-solidaris".into(),
        message_id: format!("message-{n}"),
        flow: 1,
        niss,
        accepted_at_ms: at_ms,
        fingerprint: n as u64,
        outcomes: cpas
            .iter()
            .map(|institution| OutcomeRow {
                institution: institution.clone(),
                deliberation: Some("20/130".into()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    // The encoded `Delivery`: its id, then the filtered A052 the recipients share.
    let deliveries = cpas
        .iter()
        .map(|institution| {
            let delivery_id = format!("{ticket}/{institution}");
            let mut request = vec![0x0a, delivery_id.len() as u8];
            request.extend_from_slice(delivery_id.as_bytes());
            request.extend_from_slice(&[7u8; 340]);
            DeliveryRow {
                delivery_id,
                ticket: ticket.clone(),
                recipient: institution.clone(),
                niss,
                accepted_at_ms: at_ms,
                request: request.into(),
                sender: "mc-solidaris".into(),
                flow: 1,
                deliberation: "20/130".into(),
                keep_until_ms,
                ..Default::default()
            }
        })
        .collect();
    let base = JournalEntry {
        at_ms,
        ticket: ticket.clone(),
        sender: "mc-solidaris".into(),
        flow: 1,
        niss,
        message_id: format!("message-{n}"),
        keep_until_ms,
        ..Default::default()
    };
    let mut entries = vec![JournalEntry {
        kind: EntryKind::Submission as i32,
        reason: "accepted".into(),
        ..base.clone()
    }];
    entries.extend(cpas.iter().map(|institution| JournalEntry {
        kind: EntryKind::Admission as i32,
        recipient: institution.clone(),
        deliberation: "20/130".into(),
        reason: "admitted".into(),
        removed_fields: vec!["employer".into(), "remark".into()],
        delivery_id: format!("{ticket}/{institution}"),
        ..base.clone()
    }));
    (row, deliveries, entries)
}

/// User and system CPU time of this process so far (`/proc/self/stat`, in clock ticks of
/// 1/100 s, Linux's `USER_HZ`).
fn cpu_seconds() -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat
        .rfind(')')
        .ok_or("no command name in /proc/self/stat")?
        + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// The bytes of rows every table of a closed store holds (what `examples/table_sizes.rs` shows
/// table by table).
fn stored_bytes(path: &std::path::Path) -> Result<u64, Box<dyn std::error::Error>> {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let db = redb::Database::open(path)?;
    let txn = db.begin_read()?;
    let mut bytes = 0;
    for handle in txn.list_tables()? {
        bytes += txn.open_untyped_table(handle)?.stats()?.stored_bytes();
    }
    Ok(bytes)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
