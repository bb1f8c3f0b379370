//! The hub's durable storage: accepted tickets and their deliveries (the outbox), in one redb
//! file, written by one thread with group commit.
//!
//! Every change goes through [`Store`]'s writer thread: it takes whatever changes are waiting
//! (up to [`MAX_GROUP`]), applies them in one write transaction and commits once — one fsync for
//! the whole group — then answers each caller. A caller's change is durable when its future
//! resolves `Ok`. If the disk fails (full, read-only, gone), the commit fails, every change of
//! the group is answered [`StoreError::Unavailable`], nothing of it is kept, and the next group
//! reopens the file first; what was committed before stays intact (redb's commits are atomic).
//!
//! # Layout
//!
//! - [`rows`]: the stored records (prost messages).
//! - this file: [`Store`], the tables, the writer thread.

pub mod journal;
pub mod rows;

use std::path::{Path, PathBuf};

use prost::Message;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

pub use journal::{Checkpoint, EntryKind, JournalEntry, Tamper, Verified};
pub use rows::{DeliveryRow, DeliveryState, OutcomeRow, TicketRow};

/// Ticket → `TicketRow`.
const TICKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("tickets");
/// `<sender>\0<message id>` → ticket: a message id is answered with its first ticket until
/// [`Store::forget_tickets`] removes both.
const MESSAGE_IDS: TableDefinition<&str, &str> = TableDefinition::new("message_ids");
/// (ticket, a ticket that relays it): the relays of a ticket, for the chain `Track` shows.
const RELAYS: TableDefinition<(&str, &str), ()> = TableDefinition::new("relays");
/// Delivery sequence number → `DeliveryRow`, for the deliveries still to make and the dead
/// letters: a delivery's row goes when its recipient acknowledges it (the journal keeps the
/// delivery, the ticket its outcome), so a restart finds exactly what is left to do.
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// Sequence number of the first delivery sharing it → what follows the delivery id in the
/// encoded `Delivery`, kept once for deliveries of one ticket that carry the same filtered
/// message (see `DeliveryRow::payload_seq`); it goes with the last of them.
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
/// The dead letters (sequence numbers).
const DEAD: TableDefinition<u64, ()> = TableDefinition::new("dead_letters");
/// Journal entry number → `JournalEntry` (a stub once retention removed it).
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// (NISS, entry) for the citizen's view: a ticket's submission and entries without a ticket
/// (see [`Rows`]).
const JOURNAL_BY_PERSON: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("journal_by_person");
/// (ticket, entry): every entry of a ticket.
const JOURNAL_BY_TICKET: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("journal_by_ticket");
/// (institution, time, entry): the sender at the submission, each recipient at its admission
/// or refusal (see [`Rows`]).
const JOURNAL_BY_PARTY: TableDefinition<(&str, i64, u64), ()> =
    TableDefinition::new("journal_by_party");
/// (keep until, entry): what retention removes next; an admission's later entries go with it.
const JOURNAL_EXPIRY: TableDefinition<(i64, u64), ()> = TableDefinition::new("journal_expiry");
/// Checkpoint entry number → `Checkpoint`.
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("journal_checkpoints");
/// Contact-file id → the journal entry that registered it.
const CONTACT_FILES: TableDefinition<&str, u64> = TableDefinition::new("contact_files");
/// "next_seq" → the next delivery's sequence number. The deliveries table alone cannot say: an
/// acknowledged delivery's row goes, and a number must never be given twice (tickets keep the
/// numbers of their deliveries).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// "probe" → 1 MiB written by a health probe, removed by the next: see [`Store::probe`].
const HEALTH: TableDefinition<&str, &[u8]> = TableDefinition::new("health");
/// What a health probe must be able to commit for the store to count as writable again.
const PROBE_BYTES: usize = 1 << 20;

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
    #[error("stored record is damaged: {0}")]
    Damaged(String),
    #[error(
        "the data folder {0} is in use by another hub process (its hub.lock is held); stop that \
         hub first"
    )]
    InUse(PathBuf),
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
    /// A dead letter goes back to pending, with its attempts reset.
    Replay { seq: u64 },
}

enum Op {
    Accept {
        ticket: Box<TicketRow>,
        deliveries: Vec<DeliveryRow>,
        journal: Vec<JournalEntry>,
        reply: oneshot::Sender<Result<Accepted, StoreError>>,
    },
    Change {
        change: Change,
        reply: oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>,
    },
    DeadLetters {
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<DeliveryRow>, StoreError>>,
    },
    Delivery {
        seq: u64,
        reply: oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>,
    },
    Ticket {
        ticket: String,
        reply: oneshot::Sender<Result<Option<StoredTicket>, StoreError>>,
    },
    Journal {
        query: JournalQuery,
        reply: oneshot::Sender<Result<Vec<JournalEntry>, StoreError>>,
    },
    Append {
        entry: Box<JournalEntry>,
        reply: oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>,
    },
    Sweep {
        sweep: Sweep,
        limit: usize,
        reply: oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>,
        removed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    },
    Verify {
        reply: oneshot::Sender<Result<Verified, StoreError>>,
    },
    Size {
        reply: oneshot::Sender<Result<Size, StoreError>>,
    },
    Probe {
        /// Write the probe's 1 MiB (true) or remove it (false).
        write: bool,
        reply: oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>,
    },
}

/// What a retention pass removes.
#[derive(Clone, Copy, Debug)]
enum Sweep {
    /// Journal entries whose retention ended before this time (ms): stubs remain.
    Journal { now_ms: i64 },
    /// Tickets accepted before this time (ms), with their message ids.
    Tickets { before_ms: i64 },
}

/// Which journal entries to read.
#[derive(Clone, Debug)]
pub enum JournalQuery {
    /// Every entry about a person.
    Person { niss: u64 },
    /// Every entry of these tickets.
    Tickets { tickets: Vec<String> },
    /// Entries where the institution is sender or recipient, in a time range (ms, inclusive).
    Party {
        institution: String,
        from_ms: i64,
        to_ms: i64,
    },
    /// Every entry in a time range (ms, inclusive), at most `limit`.
    Range { from_ms: i64, to_ms: i64 },
    /// The contact-file registration with this id, if any.
    ContactFile { id: String },
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
    }
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Op")
    }
}

impl Store {
    /// Opens (or creates) `hub.redb` in `dir` and reads back what it holds, every ticket
    /// included.
    pub fn open(dir: &Path) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(dir, true, i64::MIN)
    }

    /// [`Store::open`]; with `journal` false nothing is journalled (benchmarks of its cost).
    /// The tickets read back are those with a delivery not made yet and those accepted at
    /// `hold_since_ms` or later: the others stay on disk, for [`Store::ticket`].
    pub fn open_with(
        dir: &Path,
        journal: bool,
        hold_since_ms: i64,
    ) -> Result<(Store, Recovered), StoreError> {
        let lock = lock_data_folder(dir)?;
        let path = dir.join("hub.redb");
        let db = Database::create(&path).map_err(|e| unavailable(&path, e))?;
        init_tables(&db).map_err(|e| unavailable(&path, e))?;
        let recovered = recover(&db, hold_since_ms)?;
        let next_seq = next_seq(&db)?;
        let journal_key = journal_key(dir)?;
        let journal_head = journal_head(&db)?;
        let (ops, rx) = mpsc::channel(4 * MAX_GROUP);
        let writable = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = Writer {
            writable: writable.clone(),
            db: Some(db),
            path: path.clone(),
            next_seq,
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

    /// Applies a change to a delivery, durably; returns the row as it now is.
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

    /// Appends one entry (a contact-file registration, say) durably.
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

/// redb's errors, as the store reports them: the data folder cannot be used right now.
trait OrUnavailable<T> {
    fn or_unavailable(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrUnavailable<T> for Result<T, E> {
    fn or_unavailable(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Unavailable(e.into().to_string()))
    }
}

fn unavailable(path: &Path, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {error}", path.display()))
}

fn init_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    drop(Tables::open(&txn)?);
    txn.commit()?;
    Ok(())
}

/// Every table, opened once per write group: opening a table looks it up in redb's table tree
/// and closing it stages its new root, which, done per operation and per journal entry, was an
/// eighth of the writer thread's time (see docs/BENCHMARKS.md).
struct Tables<'txn> {
    tickets: redb::Table<'txn, &'static str, &'static [u8]>,
    message_ids: redb::Table<'txn, &'static str, &'static str>,
    relays: redb::Table<'txn, (&'static str, &'static str), ()>,
    deliveries: redb::Table<'txn, u64, &'static [u8]>,
    payloads: redb::Table<'txn, u64, &'static [u8]>,
    dead: redb::Table<'txn, u64, ()>,
    journal: redb::Table<'txn, u64, &'static [u8]>,
    by_person: redb::Table<'txn, (u64, u64), ()>,
    by_ticket: redb::Table<'txn, (&'static str, u64), ()>,
    by_party: redb::Table<'txn, (&'static str, i64, u64), ()>,
    expiry: redb::Table<'txn, (i64, u64), ()>,
    checkpoints: redb::Table<'txn, u64, &'static [u8]>,
    contact_files: redb::Table<'txn, &'static str, u64>,
    counters: redb::Table<'txn, &'static str, u64>,
    health: redb::Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, redb::TableError> {
        Ok(Tables {
            tickets: txn.open_table(TICKETS)?,
            message_ids: txn.open_table(MESSAGE_IDS)?,
            relays: txn.open_table(RELAYS)?,
            deliveries: txn.open_table(DELIVERIES)?,
            payloads: txn.open_table(PAYLOADS)?,
            dead: txn.open_table(DEAD)?,
            journal: txn.open_table(JOURNAL)?,
            by_person: txn.open_table(JOURNAL_BY_PERSON)?,
            by_ticket: txn.open_table(JOURNAL_BY_TICKET)?,
            by_party: txn.open_table(JOURNAL_BY_PARTY)?,
            expiry: txn.open_table(JOURNAL_EXPIRY)?,
            checkpoints: txn.open_table(CHECKPOINTS)?,
            contact_files: txn.open_table(CONTACT_FILES)?,
            counters: txn.open_table(COUNTERS)?,
            health: txn.open_table(HEALTH)?,
        })
    }
}

fn recover(db: &Database, hold_since_ms: i64) -> Result<Recovered, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let payloads = txn.open_table(PAYLOADS).or_unavailable()?;
    let mut pending = Vec::new();
    // Tickets whose deliveries are not all made: pending ones and dead letters.
    let mut unsettled = std::collections::BTreeSet::new();
    for entry in deliveries.iter().or_unavailable()? {
        let row = decode::<DeliveryRow>(entry.or_unavailable()?.1.value())?;
        unsettled.insert(row.ticket.clone());
        // Dead letters wait for an operator (files written before delivered rows were
        // removed also hold delivered ones).
        if row.state() == DeliveryState::Pending {
            pending.push(whole(row, &payloads)?);
        }
    }
    let dead_table = txn.open_table(DEAD).or_unavailable()?;
    let mut dead = Vec::new();
    for entry in dead_table.iter().or_unavailable()? {
        dead.push(entry.or_unavailable()?.0.value());
    }
    let tickets_table = txn.open_table(TICKETS).or_unavailable()?;
    let mut tickets = Vec::new();
    // The recent ones, newest first (UUIDv7 keys sort in the order they were made): the scan
    // stops at the first one accepted before `hold_since_ms`.
    for entry in tickets_table.iter().or_unavailable()?.rev() {
        let (key, value) = entry.or_unavailable()?;
        let row = decode::<TicketRow>(value.value())?;
        if row.accepted_at_ms < hold_since_ms {
            break;
        }
        unsettled.remove(key.value());
        tickets.push(row);
    }
    for ticket in unsettled {
        if let Some(value) = tickets_table.get(ticket.as_str()).or_unavailable()? {
            tickets.push(decode::<TicketRow>(value.value())?);
        }
    }
    tickets.sort_by_key(|t| t.accepted_at_ms);
    Ok(Recovered {
        tickets,
        pending,
        dead,
    })
}

/// `ticket` read from `tickets`, with its deliveries' rows and its relays.
fn stored_ticket(
    tickets: &impl ReadableTable<&'static str, &'static [u8]>,
    deliveries: &impl ReadableTable<u64, &'static [u8]>,
    payloads: &impl ReadableTable<u64, &'static [u8]>,
    relays: &impl ReadableTable<(&'static str, &'static str), ()>,
    ticket: &str,
) -> Result<Option<StoredTicket>, StoreError> {
    let Some(value) = tickets.get(ticket).or_unavailable()? else {
        return Ok(None);
    };
    let row: TicketRow = decode(value.value())?;
    let mut left = Vec::new();
    for outcome in row.outcomes.iter().filter(|o| o.delivery_seq > 0) {
        if let Some(delivery) = deliveries.get(outcome.delivery_seq).or_unavailable()? {
            let delivery: DeliveryRow = decode(delivery.value())?;
            // A number is never given twice, but check the row is this ticket's.
            if delivery.ticket == row.ticket {
                left.push(whole(delivery, payloads)?);
            }
        }
    }
    let mut relayed_by = Vec::new();
    for entry in relays.range((ticket, "")..).or_unavailable()? {
        let (key, _) = entry.or_unavailable()?;
        let (parent, relay) = key.value();
        if parent != ticket {
            break;
        }
        relayed_by.push(relay.to_owned());
    }
    Ok(Some(StoredTicket {
        row,
        deliveries: left,
        relays: relayed_by,
    }))
}

fn ticket(db: &Database, ticket: &str) -> Result<Option<StoredTicket>, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let tickets = txn.open_table(TICKETS).or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let payloads = txn.open_table(PAYLOADS).or_unavailable()?;
    let relays = txn.open_table(RELAYS).or_unavailable()?;
    stored_ticket(&tickets, &deliveries, &payloads, &relays, ticket)
}

fn size(db: &Database, path: &Path) -> Result<Size, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let journal_entries = txn
        .open_table(JOURNAL)
        .or_unavailable()?
        .len()
        .or_unavailable()?;
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| unavailable(path, e))?
        .len();
    Ok(Size {
        journal_entries,
        file_bytes,
    })
}

/// The next delivery's sequence number: the one recorded, or past the last row (files written
/// before the counter was kept).
fn next_seq(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let last = deliveries.last().or_unavailable()?;
    let past_rows = last.map_or(0, |(seq, _)| seq.value()) + 1;
    let counters = txn.open_table(COUNTERS).or_unavailable()?;
    let recorded = counters.get("next_seq").or_unavailable()?;
    Ok(recorded.map_or(past_rows, |n| n.value().max(past_rows)))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Damaged(e.to_string()))
}

/// The one thread that writes.
struct Writer {
    writable: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `None` after a failed commit: reopened before the next group.
    db: Option<Database>,
    path: PathBuf,
    next_seq: u64,
    journal_key: [u8; 32],
    /// The last entry's number and hash.
    journal_head: (u64, [u8; 32]),
    journal: bool,
}

/// What a group's operation answers once the commit is known.
enum Pending {
    Accept(oneshot::Sender<Result<Accepted, StoreError>>, Accepted),
    Change(
        oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>,
        Option<DeliveryRow>,
    ),
    Failed(FailedReply, StoreError),
}

enum FailedReply {
    Accept(oneshot::Sender<Result<Accepted, StoreError>>),
    Change(oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>),
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            self.apply(group);
        }
    }

    fn database(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            let db = Database::create(&self.path).map_err(|e| unavailable(&self.path, e))?;
            self.db = Some(db);
            tracing::info!(message = "Store reopened.");
        }
        Ok(self.db.as_ref().expect("just opened"))
    }

    fn apply(&mut self, group: Vec<Op>) {
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for op in group {
            match op {
                Op::Accept { .. }
                | Op::Change { .. }
                | Op::Append { .. }
                | Op::Sweep { .. }
                | Op::Probe { .. } => writes.push(op),
                _ => reads.push(op),
            }
        }
        if !writes.is_empty() {
            self.write_group(writes);
        }
        for op in reads {
            self.read(op);
        }
    }

    fn write_group(&mut self, writes: Vec<Op>) {
        let seq_before = self.next_seq;
        let head_before = self.journal_head;
        let outcome = self.database().and_then(|db| {
            db.begin_write()
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        });
        let txn = match outcome {
            Ok(txn) => txn,
            Err(error) => {
                self.writable
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                return fail_all(writes, &error);
            }
        };
        let mut tables = match Tables::open(&txn) {
            Ok(tables) => tables,
            Err(error) => return fail_all(writes, &StoreError::Unavailable(error.to_string())),
        };
        let mut answers = Vec::with_capacity(writes.len());
        for op in writes {
            answers.push(self.write_one(&mut tables, op));
        }
        let counted = if self.next_seq == seq_before {
            Ok(())
        } else {
            tables
                .counters
                .insert("next_seq", self.next_seq)
                .map(drop)
                .or_unavailable()
        };
        drop(tables);
        if let Err(error) = counted {
            // Dropping the transaction aborts it: nothing of the group is kept.
            drop(txn);
            self.next_seq = seq_before;
            self.journal_head = head_before;
            return fail_answers(answers, &error);
        }
        let committed = txn.commit();
        self.writable
            .store(committed.is_ok(), std::sync::atomic::Ordering::Relaxed);
        match committed {
            Ok(()) => {
                for answer in answers {
                    match answer {
                        Pending::Accept(reply, accepted) => {
                            let _ = reply.send(Ok(accepted));
                        }
                        Pending::Change(reply, row) => {
                            let _ = reply.send(Ok(row));
                        }
                        Pending::Failed(reply, error) => reply.send(error),
                    }
                }
            }
            Err(error) => {
                tracing::error!(message = "Store commit failed; nothing of this group was kept.", %error);
                self.db = None;
                self.next_seq = seq_before;
                self.journal_head = head_before;
                fail_answers(answers, &StoreError::Unavailable(error.to_string()));
            }
        }
    }

    fn write_one(&mut self, tables: &mut Tables, op: Op) -> Pending {
        match op {
            Op::Accept {
                ticket,
                deliveries,
                journal,
                reply,
            } => match self.accept(tables, *ticket, deliveries, journal) {
                Ok(accepted) => Pending::Accept(reply, accepted),
                Err(error) => Pending::Failed(FailedReply::Accept(reply), error),
            },
            Op::Change { change, reply } => {
                let kind = match &change {
                    Change::Delivered { .. } => EntryKind::Delivery,
                    Change::Attempted { .. } => EntryKind::Attempt,
                    Change::DeadLetter { .. } => EntryKind::DeadLetter,
                    Change::Replay { .. } => EntryKind::Replay,
                };
                let result = change_one(tables, change).and_then(|row| {
                    if let Some(row) = &row {
                        self.append(tables, delivery_entry(row, kind), Rows::FollowUp)?;
                    }
                    Ok(row)
                });
                match result {
                    Ok(row) => Pending::Change(reply, row),
                    Err(error) => Pending::Failed(FailedReply::Change(reply), error),
                }
            }
            Op::Append { entry, reply } => match self.append(tables, *entry, Rows::All) {
                Ok(_) => Pending::Change(reply, None),
                Err(error) => Pending::Failed(FailedReply::Change(reply), error),
            },
            Op::Sweep {
                sweep,
                limit,
                reply,
                removed,
            } => {
                let swept = match sweep {
                    Sweep::Journal { now_ms } => expire(tables, now_ms, limit),
                    Sweep::Tickets { before_ms } => forget_tickets(tables, before_ms, limit),
                };
                match swept {
                    Ok(count) => {
                        removed.store(count, std::sync::atomic::Ordering::Relaxed);
                        Pending::Change(reply, None)
                    }
                    Err(error) => Pending::Failed(FailedReply::Change(reply), error),
                }
            }
            Op::Probe { write, reply } => {
                let written = if write {
                    let room = vec![0u8; PROBE_BYTES];
                    tables.health.insert("probe", room.as_slice()).map(|_| ())
                } else {
                    tables.health.remove("probe").map(|_| ())
                }
                .or_unavailable();
                match written {
                    Ok(()) => Pending::Change(reply, None),
                    Err(error) => Pending::Failed(FailedReply::Change(reply), error),
                }
            }
            _ => unreachable!("reads are not written"),
        }
    }

    /// Appends one entry to the chain, with its indexes, and seals the head when due.
    fn append(
        &mut self,
        tables: &mut Tables,
        mut entry: JournalEntry,
        rows: Rows,
    ) -> Result<u64, StoreError> {
        if !self.journal {
            return Ok(0);
        }
        let (last, prev_hash) = self.journal_head;
        entry.number = last + 1;
        let (bytes, hash) = entry.chain(&prev_hash);
        tables
            .journal
            .insert(entry.number, bytes.as_slice())
            .or_unavailable()?;
        index(tables, &entry, rows, true)?;
        if entry.number.is_multiple_of(journal::CHECKPOINT_EVERY) {
            let checkpoint = Checkpoint {
                number: entry.number,
                hash: hash.to_vec(),
                at_ms: entry.at_ms,
                seal: journal::seal(&self.journal_key, entry.number, &hash).to_vec(),
            };
            tables
                .checkpoints
                .insert(entry.number, checkpoint.encode_to_vec().as_slice())
                .or_unavailable()?;
        }
        self.journal_head = (entry.number, hash);
        Ok(entry.number)
    }

    fn accept(
        &mut self,
        tables: &mut Tables,
        mut ticket: TicketRow,
        mut deliveries: Vec<DeliveryRow>,
        journal: Vec<JournalEntry>,
    ) -> Result<Accepted, StoreError> {
        let key = message_key(&ticket);
        let existing = tables
            .message_ids
            .get(key.as_str())
            .or_unavailable()?
            .map(|ticket| ticket.value().to_owned());
        if let Some(existing) = existing {
            let stored = stored_ticket(
                &tables.tickets,
                &tables.deliveries,
                &tables.payloads,
                &tables.relays,
                &existing,
            )?
            .ok_or_else(|| StoreError::Damaged("a message id without its ticket".into()))?;
            return Ok(Accepted::Existing(stored));
        }
        let mut seqs = Vec::with_capacity(deliveries.len());
        for delivery in &mut deliveries {
            delivery.seq = self.next_seq;
            self.next_seq += 1;
            seqs.push(delivery.seq);
            if let Some(outcome) = ticket
                .outcomes
                .iter_mut()
                .find(|o| o.institution == delivery.recipient && o.refusal == 0)
            {
                outcome.delivery_seq = delivery.seq;
            }
        }
        share_payloads(&mut tables.payloads, &mut deliveries)?;
        for delivery in &deliveries {
            tables
                .deliveries
                .insert(delivery.seq, delivery.encode_to_vec().as_slice())
                .or_unavailable()?;
        }
        tables
            .message_ids
            .insert(key.as_str(), ticket.ticket.as_str())
            .or_unavailable()?;
        if let Some(parent) = &ticket.relay_of {
            tables
                .relays
                .insert((parent.as_str(), ticket.ticket.as_str()), ())
                .or_unavailable()?;
        }
        tables
            .tickets
            .insert(ticket.ticket.as_str(), ticket.encode_to_vec().as_slice())
            .or_unavailable()?;
        for entry in journal {
            let rows = if entry.kind == EntryKind::Submission as i32 {
                Rows::All
            } else {
                Rows::Candidate
            };
            self.append(tables, entry, rows)?;
        }
        Ok(Accepted::New { seqs })
    }

    fn read(&mut self, op: Op) {
        match op {
            Op::DeadLetters {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(
                    self.database()
                        .and_then(|db| dead_letters(db, after, limit)),
                );
            }
            Op::Delivery { seq, reply } => {
                let _ = reply.send(self.database().and_then(|db| delivery(db, seq)));
            }
            Op::Ticket { ticket: id, reply } => {
                let _ = reply.send(self.database().and_then(|db| ticket(db, &id)));
            }
            Op::Journal { query, reply } => {
                let _ = reply.send(self.database().and_then(|db| journal_query(db, &query)));
            }
            Op::Verify { reply } => {
                let key = self.journal_key;
                let _ = reply.send(self.database().and_then(|db| verify_db(db, &key)));
            }
            Op::Size { reply } => {
                let path = self.path.clone();
                let _ = reply.send(self.database().and_then(|db| size(db, &path)));
            }
            _ => unreachable!("writes are not read"),
        }
    }
}

impl FailedReply {
    fn send(self, error: StoreError) {
        match self {
            FailedReply::Accept(reply) => {
                let _ = reply.send(Err(error));
            }
            FailedReply::Change(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Answers a whole group's operations with `error`: nothing of the group was kept.
fn fail_answers(answers: Vec<Pending>, error: &StoreError) {
    for answer in answers {
        let reply = match answer {
            Pending::Accept(reply, _) => FailedReply::Accept(reply),
            Pending::Change(reply, _) => FailedReply::Change(reply),
            Pending::Failed(reply, _) => reply,
        };
        reply.send(error.clone());
    }
}

fn fail_all(writes: Vec<Op>, error: &StoreError) {
    for op in writes {
        let message = error.clone();
        match op {
            Op::Accept { reply, .. } => FailedReply::Accept(reply).send(message),
            Op::Change { reply, .. }
            | Op::Append { reply, .. }
            | Op::Sweep { reply, .. }
            | Op::Probe { reply, .. } => FailedReply::Change(reply).send(message),
            _ => {}
        }
    }
}

fn change_one(tables: &mut Tables, change: Change) -> Result<Option<DeliveryRow>, StoreError> {
    let seq = match &change {
        Change::Delivered { seq, .. }
        | Change::Attempted { seq, .. }
        | Change::DeadLetter { seq, .. }
        | Change::Replay { seq } => *seq,
    };
    let Tables {
        deliveries,
        payloads,
        dead,
        ..
    } = tables;
    // A delivered row goes: the journal entry is made from what it held.
    let stored = if matches!(change, Change::Delivered { .. }) {
        deliveries
            .remove(seq)
            .or_unavailable()?
            .map(|row| decode::<DeliveryRow>(row.value()))
    } else {
        deliveries
            .get(seq)
            .or_unavailable()?
            .map(|row| decode::<DeliveryRow>(row.value()))
    };
    let Some(mut row) = stored.transpose()? else {
        return Ok(None);
    };
    match change {
        Change::Delivered { at_ms, .. } => {
            // The shared payload goes with the last delivery that may need it.
            if row.payload_seq != 0
                && deliveries
                    .range(row.payload_seq..=row.payload_last)
                    .or_unavailable()?
                    .next()
                    .is_none()
            {
                payloads.remove(row.payload_seq).or_unavailable()?;
            }
            row.payload_seq = 0;
            row.payload_last = 0;
            row.state = DeliveryState::Delivered as i32;
            row.delivered_at_ms = at_ms;
            row.request = bytes::Bytes::new();
            row.attempts += 1;
            return Ok(Some(row));
        }
        Change::Attempted {
            attempts,
            last_error,
            next_attempt_ms,
            ..
        } => {
            row.attempts = attempts;
            row.last_error = last_error;
            row.next_attempt_ms = next_attempt_ms;
        }
        Change::DeadLetter {
            attempts,
            last_error,
            reason,
            ..
        } => {
            row.state = DeliveryState::DeadLetter as i32;
            row.attempts = attempts;
            row.last_error = last_error;
            row.dead_reason = reason;
            dead.insert(seq, ()).or_unavailable()?;
        }
        Change::Replay { .. } => {
            if row.state() != DeliveryState::DeadLetter {
                return whole(row, payloads).map(Some);
            }
            row.state = DeliveryState::Pending as i32;
            row.attempts = 0;
            row.next_attempt_ms = 0;
            row.dead_reason.clear();
            dead.remove(seq).or_unavailable()?;
        }
    }
    deliveries
        .insert(seq, row.encode_to_vec().as_slice())
        .or_unavailable()?;
    whole(row, payloads).map(Some)
}

/// Keeps once what deliveries of one ticket carry after their delivery ids when it is the
/// same (a broadcast under one deliberation), and cuts their requests down to the delivery id
/// (see [`DeliveryRow::payload_seq`]). `deliveries` have their sequence numbers.
fn share_payloads(
    payloads: &mut redb::Table<u64, &'static [u8]>,
    deliveries: &mut [DeliveryRow],
) -> Result<(), StoreError> {
    if deliveries.len() < 2 {
        return Ok(());
    }
    // (what follows the delivery id, the deliveries that carry it)
    let mut groups: Vec<(bytes::Bytes, Vec<usize>)> = Vec::new();
    for (i, delivery) in deliveries.iter().enumerate() {
        let Some(head) = rows::delivery_id_field_len(&delivery.request) else {
            continue;
        };
        let rest = &delivery.request[head..];
        match groups
            .iter_mut()
            .find(|(shared, _)| shared.as_ref() == rest)
        {
            Some((_, members)) => members.push(i),
            None => groups.push((delivery.request.slice(head..), vec![i])),
        }
    }
    for (shared, members) in groups {
        let (Some(&first), Some(&last)) = (members.first(), members.last()) else {
            continue;
        };
        if members.len() < 2 || shared.is_empty() {
            continue;
        }
        let (first, last) = (deliveries[first].seq, deliveries[last].seq);
        payloads.insert(first, shared.as_ref()).or_unavailable()?;
        for i in members {
            let delivery = &mut deliveries[i];
            let head = delivery.request.len() - shared.len();
            delivery.request.truncate(head);
            delivery.payload_seq = first;
            delivery.payload_last = last;
        }
    }
    Ok(())
}

/// `row` with its request whole again, from the payload it shares if it does.
fn whole(
    mut row: DeliveryRow,
    payloads: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<DeliveryRow, StoreError> {
    if row.payload_seq == 0 {
        return Ok(row);
    }
    let shared = payloads
        .get(row.payload_seq)
        .or_unavailable()?
        .ok_or_else(|| StoreError::Damaged("a delivery without its payload".into()))?;
    let mut request = bytes::BytesMut::with_capacity(row.request.len() + shared.value().len());
    request.extend_from_slice(&row.request);
    request.extend_from_slice(shared.value());
    row.request = request.freeze();
    row.payload_seq = 0;
    row.payload_last = 0;
    Ok(row)
}

fn dead_letters(db: &Database, after: u64, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let dead = txn.open_table(DEAD).or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let payloads = txn.open_table(PAYLOADS).or_unavailable()?;
    let mut rows = Vec::new();
    for entry in dead.range(after.saturating_add(1)..).or_unavailable()? {
        if rows.len() >= limit {
            break;
        }
        let (seq, _) = entry.or_unavailable()?;
        if let Some(row) = deliveries.get(seq.value()).or_unavailable()? {
            rows.push(whole(decode(row.value())?, &payloads)?);
        }
    }
    Ok(rows)
}

fn delivery(db: &Database, seq: u64) -> Result<Option<DeliveryRow>, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let payloads = txn.open_table(PAYLOADS).or_unavailable()?;
    deliveries
        .get(seq)
        .or_unavailable()?
        .map(|row| whole(decode(row.value())?, &payloads))
        .transpose()
}

/// The journal entry for a change to a delivery.
fn delivery_entry(row: &DeliveryRow, kind: EntryKind) -> JournalEntry {
    JournalEntry {
        at_ms: now_ms(),
        kind: kind as i32,
        ticket: row.ticket.clone(),
        sender: row.sender.clone(),
        recipient: row.recipient.clone(),
        flow: row.flow,
        niss: row.niss,
        deliberation: row.deliberation.clone(),
        reason: match kind {
            EntryKind::Delivery => "delivered".into(),
            EntryKind::Attempt => row.last_error.clone(),
            EntryKind::DeadLetter => row.dead_reason.clone(),
            EntryKind::Replay => "replayed".into(),
            _ => String::new(),
        },
        attempt: row.attempts,
        a_posteriori: row.a_posteriori,
        keep_until_ms: row.keep_until_ms,
        delivery_id: row.delivery_id.clone(),
        ..Default::default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Which index rows an entry gets. Every entry of a ticket is in `journal_by_ticket`; what an
/// earlier entry of the same ticket already indexes is not indexed again, and the queries reach
/// it through the ticket. This halves the rows a delivery writes (docs/BENCHMARKS.md, "Profile,
/// sixth round").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rows {
    /// A ticket's submission, and entries of their own (consultations, contact files): person,
    /// ticket, sender and recipient, retention.
    All,
    /// An admission or a refusal of an accepted message: ticket, recipient, retention. Its person
    /// and its sender are its submission's.
    Candidate,
    /// A later event of an admitted delivery (attempt, delivery, dead letter, replay): ticket
    /// only. Its person, parties and retention are its admission's.
    FollowUp,
}

/// Adds (or, with `add` false, removes) an entry's index rows.
fn index(
    tables: &mut Tables,
    entry: &JournalEntry,
    rows: Rows,
    add: bool,
) -> Result<(), StoreError> {
    let Tables {
        by_person: person,
        by_ticket: ticket,
        by_party: party,
        expiry,
        contact_files: contact,
        ..
    } = tables;
    let n = entry.number;
    macro_rules! apply {
        ($table:expr, $key:expr) => {
            if add {
                $table.insert($key, ()).or_unavailable()?;
            } else {
                $table.remove($key).or_unavailable()?;
            }
        };
    }
    if rows == Rows::All && entry.niss != 0 {
        apply!(person, (entry.niss, n));
    }
    if !entry.ticket.is_empty() {
        apply!(ticket, (entry.ticket.as_str(), n));
    }
    if rows == Rows::All && !entry.sender.is_empty() {
        apply!(party, (entry.sender.as_str(), entry.at_ms, n));
    }
    if rows != Rows::FollowUp && !entry.recipient.is_empty() {
        apply!(party, (entry.recipient.as_str(), entry.at_ms, n));
    }
    if rows != Rows::FollowUp && entry.keep_until_ms > 0 {
        apply!(expiry, (entry.keep_until_ms, n));
    }
    if entry.kind == EntryKind::ContactFile as i32 && !entry.contact_file.is_empty() {
        if add {
            contact
                .insert(entry.contact_file.as_str(), n)
                .or_unavailable()?;
        } else {
            contact
                .remove(entry.contact_file.as_str())
                .or_unavailable()?;
        }
    }
    Ok(())
}

/// The numbers of a ticket's entries.
fn ticket_entries(
    by_ticket: &impl ReadableTable<(&'static str, u64), ()>,
    ticket: &str,
) -> Result<Vec<u64>, StoreError> {
    let mut numbers = Vec::new();
    for item in by_ticket
        .range((ticket, 0)..=(ticket, u64::MAX))
        .or_unavailable()?
    {
        numbers.push(item.or_unavailable()?.0.value().1);
    }
    Ok(numbers)
}

/// Replaces the content of entries past their retention by stubs, and removes their index
/// rows. An admission takes its later entries (attempts, delivery, dead letter), which share its
/// retention and have no expiry row of their own, with it.
fn expire(tables: &mut Tables, now_ms: i64, limit: usize) -> Result<u64, StoreError> {
    let due: Vec<u64> = {
        let mut due = Vec::new();
        for item in tables
            .expiry
            .range((i64::MIN, 0)..=(now_ms, u64::MAX))
            .or_unavailable()?
        {
            if due.len() >= limit {
                break;
            }
            due.push(item.or_unavailable()?.0.value().1);
        }
        due
    };
    let mut removed = 0;
    for number in due {
        let Some(entry) = stub(tables, number)? else {
            continue;
        };
        removed += 1;
        if entry.kind == EntryKind::Admission as i32 && !entry.delivery_id.is_empty() {
            for later in ticket_entries(&tables.by_ticket, &entry.ticket)? {
                let follows = {
                    let Some(bytes) = tables.journal.get(later).or_unavailable()? else {
                        continue;
                    };
                    let e: JournalEntry = decode(bytes.value())?;
                    e.delivery_id == entry.delivery_id
                        && e.kind != EntryKind::Admission as i32
                        && e.keep_until_ms <= now_ms
                };
                if follows && stub(tables, later)?.is_some() {
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// The `message_ids` key of a ticket: its sender and message id.
fn message_key(ticket: &TicketRow) -> String {
    format!("{}\0{}", ticket.sender, ticket.message_id)
}

/// Removes at most `limit` tickets accepted before `before_ms`, oldest first, with their
/// message ids. Tickets are UUIDv7 strings, so their order is the order they were made in: the
/// scan stops at the first one accepted since.
fn forget_tickets(tables: &mut Tables, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
    let old: Vec<TicketRow> = {
        let mut old = Vec::new();
        for item in tables.tickets.iter().or_unavailable()? {
            let row: TicketRow = decode(item.or_unavailable()?.1.value())?;
            if row.accepted_at_ms >= before_ms || old.len() >= limit {
                break;
            }
            old.push(row);
        }
        old
    };
    for row in &old {
        tables
            .tickets
            .remove(row.ticket.as_str())
            .or_unavailable()?;
        tables
            .message_ids
            .remove(message_key(row).as_str())
            .or_unavailable()?;
        if let Some(parent) = &row.relay_of {
            tables
                .relays
                .remove((parent.as_str(), row.ticket.as_str()))
                .or_unavailable()?;
        }
    }
    Ok(old.len() as u64)
}

/// Replaces entry `number` by its stub and removes its index rows; returns what it held, or
/// `None` if it is missing or already a stub.
fn stub(tables: &mut Tables, number: u64) -> Result<Option<JournalEntry>, StoreError> {
    let entry: JournalEntry = {
        let Some(bytes) = tables.journal.get(number).or_unavailable()? else {
            return Ok(None);
        };
        decode(bytes.value())?
    };
    if entry.removed {
        return Ok(None);
    }
    // Removing a row an entry never had is a no-op, so `All` covers every kind of entry.
    index(tables, &entry, Rows::All, false)?;
    tables
        .journal
        .insert(number, entry.stub().encode_to_vec().as_slice())
        .or_unavailable()?;
    Ok(Some(entry))
}

fn journal_query(db: &Database, query: &JournalQuery) -> Result<Vec<JournalEntry>, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let journal = txn.open_table(JOURNAL).or_unavailable()?;
    let mut numbers: Vec<u64> = Vec::new();
    match query {
        JournalQuery::Person { niss } => {
            let table = txn.open_table(JOURNAL_BY_PERSON).or_unavailable()?;
            for item in table
                .range((*niss, 0)..=(*niss, u64::MAX))
                .or_unavailable()?
            {
                numbers.push(item.or_unavailable()?.0.value().1);
            }
        }
        JournalQuery::Tickets { tickets } => {
            let table = txn.open_table(JOURNAL_BY_TICKET).or_unavailable()?;
            for ticket in tickets {
                numbers.extend(ticket_entries(&table, ticket)?);
            }
        }
        JournalQuery::Party {
            institution,
            from_ms,
            to_ms,
        } => {
            let table = txn.open_table(JOURNAL_BY_PARTY).or_unavailable()?;
            for item in table
                .range(
                    (institution.as_str(), *from_ms, 0)..=(institution.as_str(), *to_ms, u64::MAX),
                )
                .or_unavailable()?
            {
                numbers.push(item.or_unavailable()?.0.value().2);
            }
        }
        JournalQuery::Range { from_ms, to_ms } => {
            for item in journal.iter().or_unavailable()? {
                let (_, bytes) = item.or_unavailable()?;
                let entry: JournalEntry = decode(bytes.value())?;
                if !entry.removed && entry.at_ms >= *from_ms && entry.at_ms <= *to_ms {
                    numbers.push(entry.number);
                }
            }
        }
        JournalQuery::ContactFile { id } => {
            let table = txn.open_table(CONTACT_FILES).or_unavailable()?;
            if let Some(number) = table.get(id.as_str()).or_unavailable()? {
                numbers.push(number.value());
            }
        }
    }
    let mut entries = read_entries(&journal, &mut numbers)?;
    // Entries indexed only through their ticket (see `Rows`).
    if matches!(
        query,
        JournalQuery::Person { .. } | JournalQuery::Party { .. }
    ) {
        let by_ticket = txn.open_table(JOURNAL_BY_TICKET).or_unavailable()?;
        let mut more = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for hit in entries
            .iter()
            .filter(|e| !e.ticket.is_empty() && !e.consultation)
        {
            if !seen.insert((hit.ticket.as_str(), hit.kind, hit.delivery_id.as_str())) {
                continue;
            }
            for number in ticket_entries(&by_ticket, &hit.ticket)? {
                if numbers.binary_search(&number).is_ok() {
                    continue;
                }
                if let Some(bytes) = journal.get(number).or_unavailable()? {
                    let entry: JournalEntry = decode(bytes.value())?;
                    if reached_through(query, hit, &entry) {
                        more.push(entry);
                    }
                }
            }
        }
        if !more.is_empty() {
            entries.extend(more);
            entries.sort_unstable_by_key(|e| e.number);
            entries.dedup_by_key(|e| e.number);
        }
    }
    Ok(entries)
}

/// Whether `entry`, of the same ticket as `hit` (an entry the query's index found), answers
/// the query too: a person's are every entry of their tickets; a sender's, every entry of its
/// tickets; a recipient's, its admission's later entries.
fn reached_through(query: &JournalQuery, hit: &JournalEntry, entry: &JournalEntry) -> bool {
    match query {
        JournalQuery::Person { niss } => entry.niss == *niss,
        JournalQuery::Party { institution, .. } => {
            (hit.kind == EntryKind::Submission as i32 && entry.sender == *institution)
                || (hit.kind == EntryKind::Admission as i32
                    && entry.recipient == *institution
                    && entry.delivery_id == hit.delivery_id)
        }
        _ => false,
    }
}

/// The entries with these numbers (sorted and deduplicated first), in order.
fn read_entries(
    journal: &impl ReadableTable<u64, &'static [u8]>,
    numbers: &mut Vec<u64>,
) -> Result<Vec<JournalEntry>, StoreError> {
    numbers.sort_unstable();
    numbers.dedup();
    let mut entries = Vec::with_capacity(numbers.len());
    for &number in numbers.iter() {
        if let Some(bytes) = journal.get(number).or_unavailable()? {
            entries.push(decode(bytes.value())?);
        }
    }
    Ok(entries)
}

fn verify_db(db: &Database, key: &[u8; 32]) -> Result<Verified, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let journal = txn.open_table(JOURNAL).or_unavailable()?;
    let mut entries = Vec::new();
    for item in journal.iter().or_unavailable()? {
        let (number, bytes) = item.or_unavailable()?;
        let entry = JournalEntry::decode(bytes.value()).unwrap_or_else(|_| JournalEntry {
            // An entry that no longer decodes was changed.
            number: u64::MAX,
            ..Default::default()
        });
        let entry = if entry.number == u64::MAX {
            JournalEntry {
                number: number.value(),
                hash: vec![0xff],
                ..Default::default()
            }
        } else {
            entry
        };
        entries.push((number.value(), entry));
    }
    let table = txn.open_table(CHECKPOINTS).or_unavailable()?;
    let mut checkpoints = Vec::new();
    for item in table.iter().or_unavailable()? {
        let (_, bytes) = item.or_unavailable()?;
        checkpoints.push(decode(bytes.value())?);
    }
    Ok(journal::verify(key, entries, &checkpoints))
}

/// Verifies the journal of a store that is not open (the hub stopped): `bcss-hub journal
/// verify --offline`, and tests that tamper with the file.
pub fn verify_folder(dir: &Path) -> Result<Verified, StoreError> {
    let path = dir.join("hub.redb");
    let db = Database::open(&path).map_err(|e| unavailable(&path, e))?;
    verify_db(&db, &journal_key(dir)?)
}

/// The key that seals checkpoints: `journal.key` in the data folder, created on first start.
fn journal_key(dir: &Path) -> Result<[u8; 32], StoreError> {
    let file = dir.join("journal.key");
    match std::fs::read(&file) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes.try_into().expect("32 bytes")),
        Ok(_) => Err(StoreError::Damaged(format!(
            "{} is not a 32-byte key",
            file.display()
        ))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            std::fs::write(&file, key).map_err(|e| unavailable(&file, e))?;
            Ok(key)
        }
        Err(error) => Err(unavailable(&file, error)),
    }
}

fn journal_head(db: &Database) -> Result<(u64, [u8; 32]), StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let journal = txn.open_table(JOURNAL).or_unavailable()?;
    match journal.last().or_unavailable()? {
        None => Ok((0, [0; 32])),
        Some((number, bytes)) => {
            let entry: JournalEntry = decode(bytes.value())?;
            let hash: [u8; 32] = entry
                .hash
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Damaged("a journal entry without its hash".into()))?;
            Ok((number.value(), hash))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: &str, message_id: &str, recipients: &[&str]) -> (TicketRow, Vec<DeliveryRow>) {
        let outcomes = recipients
            .iter()
            .map(|r| OutcomeRow {
                institution: (*r).into(),
                ..Default::default()
            })
            .collect();
        let deliveries = recipients
            .iter()
            .map(|r| DeliveryRow {
                delivery_id: format!("{id}/{r}"),
                ticket: id.into(),
                recipient: (*r).into(),
                request: bytes::Bytes::from_static(b"payload"),
                ..Default::default()
            })
            .collect();
        (
            TicketRow {
                ticket: id.into(),
                sender: "s".into(),
                message_id: message_id.into(),
                outcomes,
                ..Default::default()
            },
            deliveries,
        )
    }

    #[tokio::test]
    async fn accepted_deliveries_survive_a_reopen_until_delivered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, recovered) = Store::open(dir.path()).unwrap();
            assert!(recovered.pending.is_empty());
            let (t, d) = ticket("t1", "m1", &["a", "b"]);
            let Accepted::New { seqs } = store.accept(t, d, Vec::new()).await.unwrap() else {
                panic!("new")
            };
            assert_eq!(seqs, vec![1, 2]);
            store
                .change(Change::Delivered { seq: 1, at_ms: 5 })
                .await
                .unwrap();
        }
        let (store, recovered) = Store::open(dir.path()).unwrap();
        assert_eq!(recovered.tickets.len(), 1);
        assert_eq!(recovered.tickets[0].outcomes[1].delivery_seq, 2);
        let pending: Vec<u64> = recovered.pending.iter().map(|d| d.seq).collect();
        assert_eq!(pending, vec![2]);
        // The same message id is answered with the original ticket.
        let (t, d) = ticket("t2", "m1", &["a"]);
        match store.accept(t, d, Vec::new()).await.unwrap() {
            Accepted::Existing(stored) => {
                assert_eq!(stored.row.ticket, "t1");
                // Where its deliveries stand: 1 was delivered (no row), 2 is pending.
                let left: Vec<u64> = stored.deliveries.iter().map(|d| d.seq).collect();
                assert_eq!(left, [2]);
            }
            Accepted::New { .. } => panic!("a reused message id must not be recorded"),
        }
        // Sequence numbers continue after the last one.
        let (t, d) = ticket("t3", "m3", &["a"]);
        let Accepted::New { seqs } = store.accept(t, d, Vec::new()).await.unwrap() else {
            panic!("new")
        };
        assert_eq!(seqs, vec![3]);
    }

    /// An encoded `Delivery` as the gateway makes it: the delivery id field, then the rest.
    fn request(delivery_id: &str, rest: &[u8]) -> bytes::Bytes {
        let mut bytes = vec![0x0a, delivery_id.len() as u8];
        bytes.extend_from_slice(delivery_id.as_bytes());
        bytes.extend_from_slice(rest);
        bytes.into()
    }

    /// (payload rows, bytes of every delivery row) of a closed store.
    fn payload_rows(dir: &Path) -> (u64, usize) {
        let db = Database::create(dir.join("hub.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let deliveries = txn.open_table(DELIVERIES).unwrap();
        let bytes = deliveries
            .iter()
            .unwrap()
            .map(|row| row.unwrap().1.value().len())
            .sum();
        (txn.open_table(PAYLOADS).unwrap().len().unwrap(), bytes)
    }

    #[tokio::test]
    async fn deliveries_that_carry_the_same_message_share_one_payload_row() {
        let dir = tempfile::tempdir().unwrap();
        // a, b and c get the same filtered message, d another (another deliberation).
        let shared = [0x12u8; 300];
        let (t, mut d) = ticket("t1", "m1", &["a", "b", "c", "d"]);
        for delivery in &mut d {
            let rest: &[u8] = if delivery.recipient == "d" {
                b"\x12\x01x"
            } else {
                &shared
            };
            delivery.request = request(&delivery.delivery_id, rest);
        }
        let sent: Vec<bytes::Bytes> = d.iter().map(|d| d.request.clone()).collect();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.accept(t, d, Vec::new()).await.unwrap();
            // A single delivery keeps its request whole.
            let (t, mut d) = ticket("t2", "m2", &["a"]);
            d[0].request = request(&d[0].delivery_id, &shared);
            store.accept(t, d, Vec::new()).await.unwrap();
        }
        let (payloads, bytes) = payload_rows(dir.path());
        assert_eq!(payloads, 1, "one row for what a, b and c share");
        assert!(bytes < 2 * shared.len(), "{bytes} bytes of delivery rows");
        // Every row the store hands out is whole: after a restart, listed, read, replayed.
        let (store, recovered) = Store::open(dir.path()).unwrap();
        let mut pending = recovered.pending.clone();
        pending.sort_by_key(|d| d.seq);
        let read_back: Vec<bytes::Bytes> = pending[..4].iter().map(|d| d.request.clone()).collect();
        assert_eq!(read_back, sent);
        assert!(pending.iter().all(|d| d.payload_seq == 0));
        assert_eq!(pending[4].request.len(), 2 + "t2/a".len() + shared.len());
        for seq in [1, 2] {
            store
                .change(Change::Delivered { seq, at_ms: 5 })
                .await
                .unwrap();
        }
        assert_eq!(store.delivery(3).await.unwrap().unwrap().request, sent[2]);
        store
            .change(Change::DeadLetter {
                seq: 3,
                attempts: 3,
                last_error: "no answer".into(),
                reason: "too many attempts".into(),
            })
            .await
            .unwrap();
        assert_eq!(store.dead_letters(0, 10).await.unwrap()[0].request, sent[2]);
        let replayed = store.change(Change::Replay { seq: 3 }).await.unwrap();
        assert_eq!(replayed.unwrap().request, sent[2]);
        let stored = store.ticket("t1").await.unwrap().unwrap();
        let left: Vec<_> = stored
            .deliveries
            .iter()
            .map(|d| (d.seq, d.request.clone()))
            .collect();
        assert_eq!(left, [(3, sent[2].clone()), (4, sent[3].clone())]);
        // The payload row goes with the last delivery that shares it.
        store
            .change(Change::Delivered { seq: 3, at_ms: 6 })
            .await
            .unwrap();
        drop(store);
        assert_eq!(payload_rows(dir.path()).0, 0);
        let (_store, recovered) = Store::open(dir.path()).unwrap();
        let left: Vec<u64> = recovered.pending.iter().map(|d| d.seq).collect();
        assert_eq!(left, [4, 5]);
    }

    #[tokio::test]
    async fn sequence_numbers_are_never_given_twice_even_once_every_delivery_went() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            let (t, d) = ticket("t1", "m1", &["a", "b"]);
            store.accept(t, d, Vec::new()).await.unwrap();
            for seq in [1, 2] {
                store
                    .change(Change::Delivered { seq, at_ms: 5 })
                    .await
                    .unwrap();
            }
        }
        // No delivery row is left, but t1's outcomes still name 1 and 2.
        for expected in [3, 4] {
            let (store, recovered) = Store::open(dir.path()).unwrap();
            assert!(recovered.pending.is_empty());
            let (t, d) = ticket(&format!("t{expected}"), &format!("m{expected}"), &["a"]);
            let Accepted::New { seqs } = store.accept(t, d, Vec::new()).await.unwrap() else {
                panic!("new")
            };
            assert_eq!(seqs, vec![expected]);
            store
                .change(Change::Delivered {
                    seq: expected,
                    at_ms: 6,
                })
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_ticket_is_read_back_with_its_deliveries_left_and_its_relays() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            // (ticket, relay of, accepted at, recipients)
            for (id, relay_of, at_ms, recipients) in [
                ("t1", None, 1_000, &["a", "b", "c"][..]),
                ("t2", Some("t1"), 2_000, &["d"][..]),
                ("t3", Some("t1"), 3_000, &["e"][..]),
                ("t4", None, 4_000, &["f"][..]),
            ] {
                let (mut t, d) = ticket(id, &format!("m-{id}"), recipients);
                t.relay_of = relay_of.map(str::to_owned);
                t.accepted_at_ms = at_ms;
                store.accept(t, d, Vec::new()).await.unwrap();
            }
            // t1: a delivered, b a dead letter, c pending; t2 and t3 delivered; t4 pending.
            for change in [
                Change::Delivered { seq: 1, at_ms: 5 },
                Change::DeadLetter {
                    seq: 2,
                    attempts: 3,
                    last_error: "UNAVAILABLE".into(),
                    reason: "too many attempts".into(),
                },
                Change::Delivered { seq: 4, at_ms: 5 },
                Change::Delivered { seq: 5, at_ms: 5 },
            ] {
                store.change(change).await.unwrap();
            }
            let t1 = store.ticket("t1").await.unwrap().expect("t1 is kept");
            let left: Vec<(u64, DeliveryState)> =
                t1.deliveries.iter().map(|d| (d.seq, d.state())).collect();
            assert_eq!(
                left,
                [(2, DeliveryState::DeadLetter), (3, DeliveryState::Pending)]
            );
            assert_eq!(t1.relays, ["t2", "t3"]);
            let t2 = store.ticket("t2").await.unwrap().expect("t2 is kept");
            assert!(t2.deliveries.is_empty() && t2.relays.is_empty());
            assert_eq!(t2.row.relay_of.as_deref(), Some("t1"));
            assert!(store.ticket("t9").await.unwrap().is_none());
            // A forgotten relay leaves its ticket's list.
            assert_eq!(store.forget_tickets(2_500, 100).await.unwrap(), 2);
            assert!(store.ticket("t1").await.unwrap().is_none());
        }
        // At start, only what must be held comes back: t3 has nothing left to do and was
        // accepted before the time given; t4 is pending.
        let (store, recovered) = Store::open_with(dir.path(), true, 3_500).unwrap();
        let held: Vec<&str> = recovered
            .tickets
            .iter()
            .map(|t| t.ticket.as_str())
            .collect();
        assert_eq!(held, ["t4"]);
        drop(store);
        let (_, recovered) = Store::open_with(dir.path(), true, 3_000).unwrap();
        let held: Vec<&str> = recovered
            .tickets
            .iter()
            .map(|t| t.ticket.as_str())
            .collect();
        assert_eq!(held, ["t3", "t4"]);
    }

    #[tokio::test]
    async fn tickets_are_forgotten_oldest_first_with_their_message_ids() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            // (ticket, message id, accepted at): ticket ids sort in the order they were made.
            for (id, message_id, at_ms) in [
                ("t1", "m1", 1_000),
                ("t2", "m2", 2_000),
                ("t3", "m3", 3_000),
            ] {
                let (mut t, d) = ticket(id, message_id, &["a"]);
                t.accepted_at_ms = at_ms;
                store.accept(t, d, Vec::new()).await.unwrap();
            }
            assert_eq!(store.forget_tickets(1_000, 100).await.unwrap(), 0);
            // The limit bounds one pass; the next goes on where it stopped.
            assert_eq!(store.forget_tickets(2_500, 1).await.unwrap(), 1);
            assert_eq!(store.forget_tickets(2_500, 100).await.unwrap(), 1);
            assert_eq!(store.forget_tickets(2_500, 100).await.unwrap(), 0);
        }
        let (store, recovered) = Store::open(dir.path()).unwrap();
        let kept: Vec<&str> = recovered
            .tickets
            .iter()
            .map(|t| t.ticket.as_str())
            .collect();
        assert_eq!(kept, ["t3"]);
        // Deliveries are not the tickets': what is left to do stays.
        assert_eq!(recovered.pending.len(), 3);
        // A forgotten message id is a new message; a kept one is answered with its ticket.
        let (t, d) = ticket("t4", "m1", &["a"]);
        assert!(matches!(
            store.accept(t, d, Vec::new()).await.unwrap(),
            Accepted::New { .. }
        ));
        let (t, d) = ticket("t5", "m3", &["a"]);
        match store.accept(t, d, Vec::new()).await.unwrap() {
            Accepted::Existing(stored) => assert_eq!(stored.row.ticket, "t3"),
            Accepted::New { .. } => panic!("a kept message id must be answered with its ticket"),
        }
    }

    /// A ticket from `s` about `niss` for `recipients` (each with its retention), with its
    /// journal entries as the pipeline makes them: the submission, then one admission each.
    fn journalled(
        id: &str,
        niss: u64,
        recipients: &[(&str, i64)],
    ) -> (TicketRow, Vec<DeliveryRow>, Vec<JournalEntry>) {
        let names: Vec<&str> = recipients.iter().map(|(r, _)| *r).collect();
        let (mut t, mut d) = ticket(id, &format!("m-{id}"), &names);
        t.niss = niss;
        for (row, (_, keep)) in d.iter_mut().zip(recipients) {
            (row.niss, row.sender, row.keep_until_ms) = (niss, "s".into(), *keep);
        }
        let base = JournalEntry {
            at_ms: 1_000,
            ticket: id.into(),
            sender: "s".into(),
            niss,
            ..Default::default()
        };
        let mut journal = vec![JournalEntry {
            kind: EntryKind::Submission as i32,
            keep_until_ms: recipients.iter().map(|(_, k)| *k).max().unwrap(),
            ..base.clone()
        }];
        for row in &d {
            journal.push(JournalEntry {
                kind: EntryKind::Admission as i32,
                recipient: row.recipient.clone(),
                delivery_id: row.delivery_id.clone(),
                keep_until_ms: row.keep_until_ms,
                ..base.clone()
            });
        }
        (t, d, journal)
    }

    /// Rows per index table, read from the closed store's file.
    fn index_rows(dir: &Path) -> [u64; 4] {
        let db = Database::create(dir.join("hub.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        [
            txn.open_table(JOURNAL_BY_PERSON).unwrap().len().unwrap(),
            txn.open_table(JOURNAL_BY_TICKET).unwrap().len().unwrap(),
            txn.open_table(JOURNAL_BY_PARTY).unwrap().len().unwrap(),
            txn.open_table(JOURNAL_EXPIRY).unwrap().len().unwrap(),
        ]
    }

    #[tokio::test]
    async fn later_entries_are_found_and_expired_through_their_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let (t, d, j) = journalled("t1", 42, &[("a", 5_000), ("b", 9_000)]);
        store.accept(t, d, j).await.unwrap();
        let (t, d, j) = journalled("t2", 43, &[("a", 9_000)]);
        store.accept(t, d, j).await.unwrap();
        store
            .change(Change::Delivered {
                seq: 1,
                at_ms: 2_000,
            })
            .await
            .unwrap();
        let attempt = Change::Attempted {
            seq: 2,
            attempts: 1,
            last_error: "unavailable".into(),
            next_attempt_ms: 3_000,
        };
        store.change(attempt).await.unwrap();
        // (ticket, kind, recipient) of each entry, in order.
        type Shape = Vec<(String, i32, String)>;
        let shape = |entries: Vec<JournalEntry>| -> Shape {
            entries
                .into_iter()
                .map(|e| (e.ticket, e.kind, e.recipient))
                .collect()
        };
        let person = |niss| store.journal(JournalQuery::Person { niss });
        let party = |institution: &str, to_ms| JournalQuery::Party {
            institution: institution.into(),
            from_ms: 0,
            to_ms,
        };
        let (sub, adm, del, att) = (0, 2, 4, 3);
        let e = |t: &str, kind: i32, r: &str| (t.to_owned(), kind, r.to_owned());
        let cases: Vec<(&str, JournalQuery, Shape)> = vec![
            (
                "the person: every entry of their ticket, none of another's",
                JournalQuery::Person { niss: 42 },
                vec![
                    e("t1", sub, ""),
                    e("t1", adm, "a"),
                    e("t1", adm, "b"),
                    e("t1", del, "a"),
                    e("t1", att, "b"),
                ],
            ),
            (
                "a recipient: its admissions and what became of them, not the others'",
                party("a", i64::MAX),
                vec![e("t1", adm, "a"), e("t2", adm, "a"), e("t1", del, "a")],
            ),
            (
                "the sender: everything it sent",
                party("s", i64::MAX),
                vec![
                    e("t1", sub, ""),
                    e("t1", adm, "a"),
                    e("t1", adm, "b"),
                    e("t2", sub, ""),
                    e("t2", adm, "a"),
                    e("t1", del, "a"),
                    e("t1", att, "b"),
                ],
            ),
            (
                "an exchange accepted after the range is not in it",
                party("a", 999),
                vec![],
            ),
        ];
        for (name, query, expected) in cases {
            assert_eq!(
                shape(store.journal(query).await.unwrap()),
                expected,
                "{name}"
            );
        }
        // Retention at t=5,000: the admission to "a" and its delivery go, nothing else.
        assert_eq!(store.expire(5_000, 100).await.unwrap(), 2);
        assert_eq!(
            shape(person(42).await.unwrap()),
            vec![e("t1", sub, ""), e("t1", adm, "b"), e("t1", att, "b")]
        );
        assert_eq!(
            shape(store.journal(party("a", i64::MAX)).await.unwrap()),
            vec![e("t2", adm, "a")]
        );
        drop(store);
        // Index rows: one person and one sender row per ticket, one recipient and one expiry
        // row per candidate (and the submission's), every entry in by_ticket.
        assert_eq!(index_rows(dir.path()), [2, 5, 3 + 1, 2 + 2]);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.expire(9_000, 100).await.unwrap(), 5);
        assert!(
            store
                .journal(JournalQuery::Person { niss: 42 })
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.verify().await.unwrap().first_problem, None);
        drop(store);
        assert_eq!(index_rows(dir.path()), [0; 4], "no row outlives retention");
    }

    #[tokio::test]
    async fn size_counts_journal_entries_and_file_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let empty = store.size().await.unwrap();
        assert_eq!(empty.journal_entries, 0);
        assert_eq!(
            empty.file_bytes,
            std::fs::metadata(dir.path().join("hub.redb"))
                .unwrap()
                .len()
        );
        let (t, d) = ticket("t1", "m1", &["a", "b"]);
        store.accept(t, d, Vec::new()).await.unwrap();
        store
            .change(Change::Delivered { seq: 1, at_ms: 5 })
            .await
            .unwrap();
        assert_eq!(store.size().await.unwrap().journal_entries, 1);
        store
            .change(Change::DeadLetter {
                seq: 2,
                attempts: 3,
                last_error: "no answer".into(),
                reason: "too many attempts".into(),
            })
            .await
            .unwrap();
        let size = store.size().await.unwrap();
        assert_eq!(size.journal_entries, 2);
        assert!(size.file_bytes > 0);
    }

    #[tokio::test]
    async fn dead_letters_are_listed_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let (t, d) = ticket("t1", "m1", &["a", "b", "c"]);
        store.accept(t, d, Vec::new()).await.unwrap();
        for seq in [1, 3] {
            store
                .change(Change::DeadLetter {
                    seq,
                    attempts: 3,
                    last_error: "no answer".into(),
                    reason: "too many attempts".into(),
                })
                .await
                .unwrap();
        }
        let dead: Vec<u64> = store
            .dead_letters(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|d| d.seq)
            .collect();
        assert_eq!(dead, vec![1, 3]);
        assert_eq!(store.dead_letters(1, 10).await.unwrap().len(), 1);
        let row = store
            .change(Change::Replay { seq: 3 })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state(), DeliveryState::Pending);
        assert_eq!(store.dead_letters(0, 10).await.unwrap().len(), 1);
        assert_eq!(store.delivery(3).await.unwrap().unwrap().attempts, 0);
    }

    #[tokio::test]
    async fn concurrent_accepts_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let store = std::sync::Arc::new(store);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (t, d) = ticket(&format!("t{i}"), &format!("m{i}"), &["a"]);
                    store.accept(t, d, Vec::new()).await.unwrap()
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            if let Accepted::New { seqs: s } = task.await.unwrap() {
                seqs.extend(s);
            }
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    }

    fn entry(ticket: &str, niss: u64, keep_until_ms: i64) -> JournalEntry {
        JournalEntry {
            at_ms: 1_000,
            kind: EntryKind::Admission as i32,
            ticket: ticket.into(),
            sender: "s".into(),
            recipient: "r".into(),
            niss,
            keep_until_ms,
            ..Default::default()
        }
    }

    /// A store with `n` journal entries (closed), and its folder.
    async fn journal_of(n: u64, keep_until_ms: impl Fn(u64) -> i64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        for i in 1..=n {
            store
                .append(entry(&format!("t{i}"), 1000 + i % 3, keep_until_ms(i)))
                .await
                .unwrap();
        }
        assert_eq!(store.verify().await.unwrap().first_problem, None);
        drop(store);
        dir
    }

    /// Changes the stored journal directly, as someone with access to the file would.
    fn tamper(dir: &Path, edit: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
        let db = Database::create(dir.join("hub.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut journal = txn.open_table(JOURNAL).unwrap();
            edit(&mut journal);
        }
        txn.commit().unwrap();
    }

    fn read(journal: &redb::Table<u64, &[u8]>, n: u64) -> JournalEntry {
        JournalEntry::decode(journal.get(n).unwrap().unwrap().value()).unwrap()
    }

    #[tokio::test]
    async fn verify_names_the_entry_that_was_changed_removed_or_reordered() {
        let n = journal::CHECKPOINT_EVERY + 10;
        type Edit = Box<dyn FnOnce(&mut redb::Table<u64, &[u8]>)>;
        let cases: Vec<(&str, Edit, Tamper)> = vec![
            (
                "changed",
                Box::new(|journal| {
                    let mut e = read(journal, 7);
                    e.recipient = "someone-else".into();
                    journal.insert(7, e.encode_to_vec().as_slice()).unwrap();
                }),
                Tamper::Changed { number: 7 },
            ),
            (
                "removed",
                Box::new(|journal| {
                    journal.remove(9).unwrap();
                }),
                Tamper::Removed { after: 8, next: 10 },
            ),
            (
                "reordered",
                Box::new(|journal| {
                    let (a, b) = (read(journal, 3), read(journal, 4));
                    journal.insert(3, b.encode_to_vec().as_slice()).unwrap();
                    journal.insert(4, a.encode_to_vec().as_slice()).unwrap();
                }),
                Tamper::Reordered {
                    position: 3,
                    claims: 4,
                },
            ),
            (
                "rewritten from entry 5 on, hashes recomputed",
                Box::new(move |journal| {
                    let mut prev = read(journal, 4).hash;
                    for number in 5..=n {
                        let mut e = read(journal, number);
                        e.sender = "forged".into();
                        e.prev_hash = prev.clone();
                        e.hash = e.compute_hash(&prev).to_vec();
                        prev = e.hash.clone();
                        journal
                            .insert(number, e.encode_to_vec().as_slice())
                            .unwrap();
                    }
                }),
                Tamper::BadSeal {
                    checkpoint: journal::CHECKPOINT_EVERY,
                },
            ),
            (
                "the newest entries cut off",
                Box::new(move |journal| {
                    for number in journal::CHECKPOINT_EVERY..=n {
                        journal.remove(number).unwrap();
                    }
                }),
                Tamper::Removed {
                    after: journal::CHECKPOINT_EVERY - 1,
                    next: journal::CHECKPOINT_EVERY + 1,
                },
            ),
        ];
        for (case, edit, expected) in cases {
            let dir = journal_of(n, |_| 0).await;
            tamper(dir.path(), edit);
            let report = verify_folder(dir.path()).unwrap();
            assert_eq!(report.first_problem, Some(expected), "{case}");
        }
    }

    #[tokio::test]
    async fn retention_leaves_stubs_and_the_chain_still_verifies() {
        // Odd entries are kept until t=5,000 ms, even ones forever.
        let dir = journal_of(20, |i| if i % 2 == 1 { 5_000 } else { 0 }).await;
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.expire(4_999, 100).await.unwrap(), 0);
        assert_eq!(store.expire(5_000, 100).await.unwrap(), 10);
        let report = store.verify().await.unwrap();
        assert_eq!((report.first_problem, report.stubs), (None, 10));
        // Expired entries are gone from the queries, the others stay.
        let person = store
            .journal(JournalQuery::Person { niss: 1000 })
            .await
            .unwrap();
        assert!(person.iter().all(|e| e.number % 2 == 0 && !e.removed));
        assert!(!person.is_empty());
        let gone = store
            .journal(JournalQuery::Tickets {
                tickets: vec!["t3".into()],
            })
            .await
            .unwrap();
        assert!(gone.is_empty());
        drop(store);
        // A stub edited afterwards is caught too.
        tamper(dir.path(), |journal| {
            let mut stub = read(journal, 3);
            stub.hash = vec![1; 32];
            journal.insert(3, stub.encode_to_vec().as_slice()).unwrap();
        });
        assert_eq!(
            verify_folder(dir.path()).unwrap().first_problem,
            Some(Tamper::Changed { number: 4 })
        );
    }
}
