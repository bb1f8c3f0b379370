//! The redb tables of `hub.redb`, what each holds, and the errors redb's calls turn into.

use std::path::Path;

use prost::Message;
use redb::{Database, TableDefinition, WriteTransaction};

use crate::StoreError;

/// Ticket → `TicketRow`.
pub(crate) const TICKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("tickets");
/// `<sender>\0<message id>` → ticket: a message id is answered with its first ticket until
/// [`Store::forget_tickets`](crate::Store::forget_tickets) removes both.
pub(crate) const MESSAGE_IDS: TableDefinition<&str, &str> = TableDefinition::new("message_ids");
/// (ticket, a ticket that relays it): the relays of a ticket, for the chain `Track` shows.
pub(crate) const RELAYS: TableDefinition<(&str, &str), ()> = TableDefinition::new("relays");
/// Delivery sequence number → `DeliveryRow`, for the deliveries still to make and the dead
/// letters: a delivery's row goes when its recipient acknowledges it (the journal keeps the
/// delivery, the ticket its outcome), so a restart finds exactly what is left to do.
pub(crate) const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// Sequence number of the first delivery sharing it → what follows the delivery id in the
/// encoded `Delivery`, kept once for deliveries of one ticket that carry the same filtered
/// message (see `DeliveryRow::payload_seq`); it goes with the last of them.
pub(crate) const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
/// The dead letters (sequence numbers).
pub(crate) const DEAD: TableDefinition<u64, ()> = TableDefinition::new("dead_letters");
/// Journal entry number → `JournalEntry` (a stub once retention removed it).
pub(crate) const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// (NISS, entry) for the citizen's view: a ticket's submission and entries without a ticket
/// (see [`Rows`](crate::writer::Rows)).
pub(crate) const JOURNAL_BY_PERSON: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("journal_by_person");
/// (ticket, entry): a ticket's submission and the later entries of its deliveries; its
/// candidates are found through the submission (`JournalEntry::candidates`).
pub(crate) const JOURNAL_BY_TICKET: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("journal_by_ticket");
/// (institution, time, entry): the sender at the submission, each recipient at its admission
/// or refusal (see [`Rows`](crate::writer::Rows)).
pub(crate) const JOURNAL_BY_PARTY: TableDefinition<(&str, i64, u64), ()> =
    TableDefinition::new("journal_by_party");
/// (keep until, entry): what retention removes next; a submission's named candidates, and an
/// admission's later entries, go with it.
pub(crate) const JOURNAL_EXPIRY: TableDefinition<(i64, u64), ()> =
    TableDefinition::new("journal_expiry");
/// Checkpoint entry number → `Checkpoint`.
pub(crate) const CHECKPOINTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("journal_checkpoints");
/// `<institution>\0<contact-file id>` → the journal entry that registered it: an id is the
/// contact centre's own reference, unique for that centre only.
pub(crate) const CONTACT_FILES: TableDefinition<&str, u64> = TableDefinition::new("contact_files");

/// A `CONTACT_FILES` key.
pub(crate) fn contact_file_key(institution: &str, id: &str) -> String {
    format!("{institution}\0{id}")
}
/// "next_seq" → the next delivery's sequence number. The deliveries table alone cannot say: an
/// acknowledged delivery's row goes, and a number must never be given twice (tickets keep the
/// numbers of their deliveries).
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// "probe" → 1 MiB written by a health probe, removed by the next: see [`Store::probe`](crate::Store::probe).
pub(crate) const HEALTH: TableDefinition<&str, &[u8]> = TableDefinition::new("health");
/// redb's errors, as the store reports them: the data folder cannot be used right now.
pub(crate) trait OrUnavailable<T> {
    fn or_unavailable(self) -> Result<T, StoreError>;
}

pub(crate) fn unavailable(path: &Path, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {error}", path.display()))
}

pub(crate) fn init_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    drop(Tables::open(&txn)?);
    txn.commit()?;
    Ok(())
}

/// Every table, opened once per write group: opening a table looks it up in redb's table tree
/// and closing it stages its new root, which, done per operation and per journal entry, was an
/// eighth of the writer thread's time (docs/BENCHMARKS-HISTORY.md, "Profile, third round").
pub(crate) struct Tables<'txn> {
    pub(crate) tickets: redb::Table<'txn, &'static str, &'static [u8]>,
    pub(crate) message_ids: redb::Table<'txn, &'static str, &'static str>,
    pub(crate) relays: redb::Table<'txn, (&'static str, &'static str), ()>,
    pub(crate) deliveries: redb::Table<'txn, u64, &'static [u8]>,
    pub(crate) payloads: redb::Table<'txn, u64, &'static [u8]>,
    pub(crate) dead: redb::Table<'txn, u64, ()>,
    pub(crate) journal: redb::Table<'txn, u64, &'static [u8]>,
    pub(crate) by_person: redb::Table<'txn, (u64, u64), ()>,
    pub(crate) by_ticket: redb::Table<'txn, (&'static str, u64), ()>,
    pub(crate) by_party: redb::Table<'txn, (&'static str, i64, u64), ()>,
    pub(crate) expiry: redb::Table<'txn, (i64, u64), ()>,
    pub(crate) checkpoints: redb::Table<'txn, u64, &'static [u8]>,
    pub(crate) contact_files: redb::Table<'txn, &'static str, u64>,
    pub(crate) counters: redb::Table<'txn, &'static str, u64>,
    pub(crate) health: redb::Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, redb::TableError> {
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

pub(crate) fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Damaged(e.to_string()))
}
