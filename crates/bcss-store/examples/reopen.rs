//! How long a hub's start takes to read its store back, with every ticket or only those it
//! must hold, and what reading one old ticket back costs (`Track`): fills a store with settled
//! tickets, times both ways of opening it, then 10,000 reads of tickets picked at random.
//!
//! `cargo run --release -p bcss-store --example reopen -- [TICKETS] [FOLDER]` (500,000 and a
//! temporary folder by default; the folder must be on a real disk). Each ticket has one
//! delivery, acknowledged, and one journal entry, as a single-recipient A052 leaves them.
//! `BCSS_BENCH_CACHE_MIB` sets the store's page cache (`StoreOptions::cache_bytes`; unset, the
//! store's default).

use std::time::Instant;

use bcss_store::{
    Accepted, Change, DeliveryRow, EntryKind, JournalEntry, OutcomeRow, Store, StoreOptions,
    TicketRow,
};

/// Tickets accepted concurrently, so that they share group commits as the hub's do.
const IN_FLIGHT: usize = 256;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tickets: usize = args.next().map_or(Ok(500_000), |n| n.parse())?;
    let folder = args.next().map(std::path::PathBuf::from);
    let temporary = match &folder {
        Some(folder) => tempfile::tempdir_in(folder)?,
        None => tempfile::tempdir()?,
    };
    let dir = temporary.path();
    let cache_bytes = match std::env::var("BCSS_BENCH_CACHE_MIB") {
        Ok(mib) => mib.parse::<usize>()? << 20,
        Err(_) => bcss_store::DEFAULT_CACHE_BYTES,
    };
    let options = StoreOptions {
        cache_bytes,
        ..StoreOptions::default()
    };
    println!("store page cache: {} MiB", cache_bytes >> 20);
    let an_hour_ago = bcss_store::now_ms() - 3_600_000;

    let started = Instant::now();
    {
        let (store, _) = Store::open_with(dir, options)?;
        let store = std::sync::Arc::new(store);
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..IN_FLIGHT {
            let store = store.clone();
            tasks.spawn(async move {
                for n in (worker..tickets).step_by(IN_FLIGHT) {
                    let (ticket, delivery, entry) = exchange(n, an_hour_ago);
                    let Accepted::New { seqs } = store.accept(ticket, delivery, entry).await?
                    else {
                        unreachable!("every message id is new");
                    };
                    store
                        .change(Change::Delivered {
                            seq: seqs[0],
                            at_ms: bcss_store::now_ms(),
                        })
                        .await?;
                }
                Ok::<_, bcss_store::StoreError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
    }
    let bytes = std::fs::metadata(dir.join("hub.redb"))?.len();
    println!(
        "filled: {tickets} settled tickets in {:.1} s, hub.redb {} MiB",
        started.elapsed().as_secs_f64(),
        bytes >> 20
    );

    // Alternately, three times each: what a start reads back.
    for round in 1..=3 {
        for (how, hold_since_ms) in [
            ("every ticket (before)", i64::MIN),
            ("tickets to hold (now)", bcss_store::now_ms() - HELD_MS),
        ] {
            let started = Instant::now();
            let (store, recovered) = Store::open_with(
                dir,
                StoreOptions {
                    hold_since_ms,
                    ..options
                },
            )?;
            let took = started.elapsed();
            drop(store);
            println!(
                "round {round}: {how}: {} tickets read back in {:.3} s",
                recovered.tickets.len(),
                took.as_secs_f64()
            );
        }
    }

    // `Track` of an old ticket: read back from the file, one at a time, as a hub started an
    // hour later does (the ledger holds none of them).
    let (store, _) = Store::open_with(
        dir,
        StoreOptions {
            hold_since_ms: bcss_store::now_ms() - HELD_MS,
            ..options
        },
    )?;
    let mut took = Vec::with_capacity(READS);
    // A fixed sequence of tickets spread over the whole store (a linear congruential one).
    let mut n: usize = 12_345;
    for _ in 0..READS {
        n = (n.wrapping_mul(1_103_515_245).wrapping_add(12_345)) % tickets;
        let ticket = exchange(n, an_hour_ago).0.ticket;
        let started = Instant::now();
        let stored = store.ticket(&ticket).await?;
        took.push(started.elapsed());
        assert!(stored.is_some(), "ticket {n} was stored");
    }
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{READS} old tickets read back one at a time: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
        at(0.5),
        at(0.9),
        at(0.99)
    );
    Ok(())
}

/// Tickets read back at random after the start.
const READS: usize = 10_000;

/// The hub holds the tickets accepted in the last five minutes at start (`journal::SETTLED_HELD`
/// in the gateway); the example's tickets are an hour old.
const HELD_MS: i64 = 300_000;

/// Ticket `n`, accepted at `accepted_at_ms` (an hour ago, so not held at start): one
/// recipient, one journal entry.
fn exchange(n: usize, accepted_at_ms: i64) -> (TicketRow, Vec<DeliveryRow>, Vec<JournalEntry>) {
    // Time-ordered like the hub's UUIDv7 tickets.
    let ticket = format!("{:012x}-{n:023}", accepted_at_ms);
    let row = TicketRow {
        ticket: ticket.clone(),
        sender: "mc".into(),
        message_id: format!("message-{n}"),
        flow: 1,
        niss: 85_073_003_328,
        accepted_at_ms,
        fingerprint: n as u64,
        outcomes: vec![OutcomeRow {
            institution: "cpas-liege".into(),
            deliberation: Some("20/130".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let delivery = DeliveryRow {
        delivery_id: format!("{ticket}/cpas-liege"),
        ticket: ticket.clone(),
        recipient: "cpas-liege".into(),
        niss: 85_073_003_328,
        accepted_at_ms,
        request: bytes::Bytes::from(vec![7u8; 340]),
        sender: "mc".into(),
        flow: 1,
        deliberation: "20/130".into(),
        ..Default::default()
    };
    let entry = JournalEntry {
        kind: EntryKind::Submission as i32,
        keep_until_ms: i64::MAX,
        ticket,
        sender: "mc".into(),
        niss: 85_073_003_328,
        at_ms: accepted_at_ms,
        ..Default::default()
    };
    (row, vec![delivery], vec![entry])
}
