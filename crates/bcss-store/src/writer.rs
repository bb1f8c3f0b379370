//! The store's writer thread: every change, applied in groups with one commit (one fsync)
//! per group; journal appends with their index rows; retention.

use std::path::PathBuf;
use std::sync::Arc;

use prost::Message;
use redb::{Database, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use crate::journal::{self, Checkpoint, EntryKind, JournalEntry, Verified};
use crate::read::{
    commits, dead_letters, delivery, journal_head, journal_query, next_seq, size, stored_ticket,
    ticket, verify_db, whole,
};
use crate::rows::{self, DeliveryRow, DeliveryState, TicketRow};
use crate::tables::{OrUnavailable, Tables, decode, unavailable};
use crate::{Accepted, Change, JournalQuery, MAX_GROUP, Size, StoreError, StoredTicket, now_ms};

/// What a health probe must be able to commit for the store to count as writable again.
pub(crate) const PROBE_BYTES: usize = 1 << 20;

/// A request to the writer thread: a change, applied in the next group and answered once it is
/// committed, or a read, answered after that group's commit.
pub(crate) enum Op {
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

/// A read that may walk the whole journal, for the reader thread.
pub(crate) enum LongRead {
    Journal {
        query: JournalQuery,
        reply: oneshot::Sender<Result<Vec<JournalEntry>, StoreError>>,
    },
    Verify {
        reply: oneshot::Sender<Result<Verified, StoreError>>,
    },
}

impl LongRead {
    /// Answers it with `error`.
    fn refuse(self, error: StoreError) {
        match self {
            LongRead::Journal { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            LongRead::Verify { reply } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// The reader thread: the reads handed to it, in turn, each on the database as it was when
/// handed over. An error is answered, and the writer reopens the database at its next use if
/// redb refuses it from then on.
pub(crate) fn serve_reads(
    reads: std::sync::mpsc::Receiver<(Arc<Database>, u64, LongRead)>,
    key: [u8; 32],
    handles: Arc<std::sync::atomic::AtomicU64>,
) {
    for (db, handle, read) in reads {
        // Called off once the writer let go of the handle this read was given (a write
        // failed): the file cannot be opened again while a read holds the old one.
        let called_off = || handles.load(std::sync::atomic::Ordering::Relaxed) != handle;
        #[cfg(test)]
        while crate::tests::READS_HELD.load(std::sync::atomic::Ordering::SeqCst) && !called_off() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if called_off() {
            drop(db);
            read.refuse(StoreError::Unavailable(CALLED_OFF.into()));
            continue;
        }
        // The database is let go of before answering: whoever waits may then close the store
        // and open the file again.
        match read {
            LongRead::Journal { query, reply } => {
                let result = journal_query(&db, &query, &called_off);
                drop(db);
                let _ = reply.send(result);
            }
            LongRead::Verify { reply } => {
                let result = verify_db(&db, &key, &called_off);
                drop(db);
                let _ = reply.send(result);
            }
        }
    }
}

/// What a long read called off by a failed write answers.
pub(crate) const CALLED_OFF: &str =
    "a write to the data folder failed and the store was reopened during the read: ask again";

/// How long the writer waits for the reader to let go of the old handle before it gives up
/// reopening the file (the next operation tries again).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a retention pass removes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sweep {
    /// Journal entries whose retention ended before this time (ms): stubs remain.
    Journal { now_ms: i64 },
    /// Tickets accepted before this time (ms), with their message ids.
    Tickets { before_ms: i64 },
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Op")
    }
}

/// The one thread that writes.
pub(crate) struct Writer {
    pub(crate) writable: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `None` after a failure (redb refuses every transaction once an I/O error happened):
    /// reopened before the next group or read.
    pub(crate) db: Option<Arc<Database>>,
    pub(crate) open: crate::OpenDatabase,
    /// The reader thread, for the reads that may walk the whole journal (verification, a
    /// time range): they take a read transaction of their own, begun after the last commit,
    /// so the commits go on meanwhile.
    pub(crate) reader: std::sync::mpsc::Sender<(Arc<Database>, u64, LongRead)>,
    /// Which handle of the file `db` is (counted up each time it is let go of): a long read
    /// given an older one is called off.
    pub(crate) handles: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) path: PathBuf,
    pub(crate) next_seq: u64,
    /// Groups committed to the file (its `commits` counter).
    pub(crate) commits: u64,
    pub(crate) journal_key: [u8; 32],
    /// The last entry's number and hash.
    pub(crate) journal_head: (u64, [u8; 32]),
    pub(crate) journal: bool,
}

/// The vectors a group is gathered, sorted and answered in, kept from one group to the next
/// (each is left empty, its capacity kept). A fresh vector of answers per group, a few hundred
/// of about 300 bytes each, was where this thread most often took fresh memory, which the
/// kernel zeroed in 2 MiB pages: 8 % of its samples in a fan-out run
/// (docs/BENCHMARKS-HISTORY.md, "Profile, ninth round").
#[derive(Default)]
pub(crate) struct GroupBuffers {
    group: Vec<Op>,
    writes: Vec<Op>,
    answers: Vec<Pending>,
}

/// What a group's operation answers once the commit is known.
pub(crate) enum Pending {
    Accept(oneshot::Sender<Result<Accepted, StoreError>>, Accepted),
    Change(
        oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>,
        Option<DeliveryRow>,
    ),
    Failed(FailedReply, StoreError),
}

pub(crate) enum FailedReply {
    Accept(oneshot::Sender<Result<Accepted, StoreError>>),
    Change(oneshot::Sender<Result<Option<DeliveryRow>, StoreError>>),
}

impl Writer {
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut buffers = GroupBuffers::default();
        while let Some(first) = rx.blocking_recv() {
            buffers.group.push(first);
            while buffers.group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => buffers.group.push(op),
                    Err(_) => break,
                }
            }
            self.apply(&mut buffers);
        }
    }

    fn database(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            // A long read given the old handle lets go of it within an entry or so (it is
            // called off): until then redb refuses to open the file a second time.
            let waited = std::time::Instant::now();
            let db = loop {
                match (self.open)(&self.path) {
                    Err(redb::DatabaseError::DatabaseAlreadyOpen)
                        if waited.elapsed() < REOPEN_WAIT =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    opened => break opened.map_err(|e| unavailable(&self.path, e))?,
                }
            };
            // What the file holds, not what this thread last believed: a commit that reported
            // an error may still have reached the disk (redb writes the header, then syncs),
            // and numbers it used must not be given again.
            self.next_seq = next_seq(&db)?;
            self.journal_head = journal_head(&db)?;
            self.commits = commits(&db)?;
            self.db = Some(Arc::new(db));
            tracing::info!(message = "Store reopened.");
        }
        Ok(self.db.as_ref().expect("just opened"))
    }

    /// After an error from redb: the database is closed and reopened before its next use
    /// (once an I/O error happened, redb refuses every later transaction).
    fn close_after(&mut self, error: &StoreError) {
        if matches!(error, StoreError::Unavailable(_)) {
            self.let_go();
        }
    }

    /// Closes the database, to be reopened at its next use, and calls off the long reads
    /// given its handle (redb opens the file again only once they let go of it).
    fn let_go(&mut self) {
        if self.db.take().is_some() {
            self.handles
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A write group failed before its commit: nothing can be accepted until one succeeds.
    fn write_failed(&mut self, error: &StoreError) {
        self.close_after(error);
        self.writable
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hands a long read to the reader thread, with the database as it is after the last
    /// commit.
    fn read_long(&mut self, read: LongRead) {
        if let Err(error) = self.database() {
            return read.refuse(error);
        }
        let db = self.db.clone().expect("just opened");
        let handle = self.handles.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(refused) = self.reader.send((db, handle, read)) {
            refused.0.2.refuse(StoreError::Stopped);
        }
    }

    /// A read, on the database as it is after the last commit.
    fn reading<T>(
        &mut self,
        read: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self.database().and_then(read);
        if let Err(error) = &result {
            self.close_after(error);
        }
        result
    }

    fn apply(&mut self, buffers: &mut GroupBuffers) {
        // Reads are rare on the data path: this vector seldom allocates.
        let mut reads = Vec::new();
        for op in buffers.group.drain(..) {
            match op {
                Op::Accept { .. }
                | Op::Change { .. }
                | Op::Append { .. }
                | Op::Sweep { .. }
                | Op::Probe { .. } => buffers.writes.push(op),
                _ => reads.push(op),
            }
        }
        if !buffers.writes.is_empty() {
            self.write_group(&mut buffers.writes, &mut buffers.answers);
        }
        for op in reads {
            self.read(op);
        }
    }

    /// Applies `writes` in one transaction and answers each once the commit is known; leaves
    /// both vectors empty.
    fn write_group(&mut self, writes: &mut Vec<Op>, answers: &mut Vec<Pending>) {
        let seq_before = self.next_seq;
        let outcome = self.database().and_then(|db| {
            db.begin_write()
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        });
        let txn = match outcome {
            Ok(txn) => txn,
            Err(error) => {
                self.write_failed(&error);
                return fail_all(writes.drain(..), &error);
            }
        };
        let mut tables = match Tables::open(&txn) {
            Ok(tables) => tables,
            Err(error) => {
                let error = StoreError::Unavailable(error.to_string());
                self.write_failed(&error);
                return fail_all(writes.drain(..), &error);
            }
        };
        for op in writes.drain(..) {
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
        }
        .and_then(|()| {
            tables
                .counters
                .insert("commits", self.commits + 1)
                .map(drop)
                .or_unavailable()
        });
        drop(tables);
        if let Err(error) = counted {
            // Dropping the transaction aborts it: nothing of the group is kept.
            drop(txn);
            // Closed: reopening reads the numbers back from the file (`database`).
            self.write_failed(&error);
            return fail_answers(answers.drain(..), &error);
        }
        let committed = match txn.commit() {
            Ok(()) => {
                self.commits += 1;
                Ok(())
            }
            Err(error) => {
                tracing::error!(message = "Store commit reported a failure; reading the file back.", %error);
                // A commit that reported an error may still have reached the disk (redb writes
                // its header, then syncs). Reopened (which reads the numbers back from the
                // file, `database`), the file says which: the group's `commits` value is there
                // or not. Answered as it is on disk, a caller is never told "nothing was
                // recorded" of a message the hub will deliver.
                let expected = self.commits + 1;
                self.let_go();
                let reopened = self.database().is_ok();
                if reopened && self.commits == expected {
                    tracing::info!(message = "The group reached the file after all.");
                    Ok(())
                } else {
                    Err(error)
                }
            }
        };
        self.writable
            .store(committed.is_ok(), std::sync::atomic::Ordering::Relaxed);
        match committed {
            Ok(()) => {
                for answer in answers.drain(..) {
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
                tracing::error!(message = "Store commit failed; the group is answered as not recorded.", %error);
                fail_answers(
                    answers.drain(..),
                    &StoreError::Unavailable(error.to_string()),
                );
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
                    Sweep::Journal { now_ms } => expire(tables, &self.journal_key, now_ms, limit),
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
        // Checked in the commit that would register it, so two registrations at once cannot
        // both succeed; before anything of the entry is written.
        if entry.kind == EntryKind::ContactFile as i32 {
            let key = crate::tables::contact_file_key(&entry.sender, &entry.contact_file);
            if tables
                .contact_files
                .get(key.as_str())
                .or_unavailable()?
                .is_some()
            {
                return Err(StoreError::AlreadyRegistered("the contact file".into()));
            }
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
        for (entry, rows) in candidates_of_submission(journal) {
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
                let _ = reply.send(self.reading(|db| dead_letters(db, after, limit)));
            }
            Op::Delivery { seq, reply } => {
                let _ = reply.send(self.reading(|db| delivery(db, seq)));
            }
            Op::Ticket { ticket: id, reply } => {
                let _ = reply.send(self.reading(|db| ticket(db, &id)));
            }
            Op::Journal { query, reply } => self.read_long(LongRead::Journal { query, reply }),
            Op::Verify { reply } => self.read_long(LongRead::Verify { reply }),
            Op::Size { reply } => {
                let path = self.path.clone();
                let _ = reply.send(self.reading(|db| size(db, &path)));
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
pub(crate) fn fail_answers(answers: impl IntoIterator<Item = Pending>, error: &StoreError) {
    for answer in answers {
        let reply = match answer {
            Pending::Accept(reply, _) => FailedReply::Accept(reply),
            Pending::Change(reply, _) => FailedReply::Change(reply),
            Pending::Failed(reply, _) => reply,
        };
        reply.send(error.clone());
    }
}

pub(crate) fn fail_all(writes: impl IntoIterator<Item = Op>, error: &StoreError) {
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

/// Applies `change` to its delivery's row. Every read that can fail (the row, whether its shared
/// payload is still needed, the payload that makes it whole) comes before the first write: a
/// change that fails changes nothing, while the rest of its group is still committed.
pub(crate) fn change_one(
    tables: &mut Tables,
    change: Change,
) -> Result<Option<DeliveryRow>, StoreError> {
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
    let stored = deliveries
        .get(seq)
        .or_unavailable()?
        .map(|row| decode::<DeliveryRow>(row.value()))
        .transpose()?;
    let Some(mut row) = stored else {
        return Ok(None);
    };
    // Whether the row joins the dead letters (true) or leaves them (false).
    let mut dead_letter = None;
    match change {
        Change::Delivered { at_ms, .. } => {
            // A delivered row goes: the journal entry is made from what it held. The shared
            // payload goes with the last delivery that may need it.
            let mut last_sharer = row.payload_seq != 0;
            if last_sharer {
                for item in deliveries
                    .range(row.payload_seq..=row.payload_last)
                    .or_unavailable()?
                {
                    if item.or_unavailable()?.0.value() != seq {
                        last_sharer = false;
                        break;
                    }
                }
            }
            deliveries.remove(seq).or_unavailable()?;
            if row.state() == DeliveryState::DeadLetter {
                // Acknowledged after all (an attempt under way when it was given up on).
                dead.remove(seq).or_unavailable()?;
            }
            if last_sharer {
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
            dead_letter = Some(true);
        }
        Change::Replay { .. } => {
            if row.state() != DeliveryState::DeadLetter {
                return Ok(None);
            }
            row.state = DeliveryState::Pending as i32;
            row.attempts = 0;
            row.next_attempt_ms = 0;
            row.replayed_at_ms = now_ms();
            row.dead_reason.clear();
            dead_letter = Some(false);
        }
    }
    // Whole before anything is written: a row whose payload is missing fails the change with
    // the row and the dead letters as they were.
    let answer = whole(row.clone(), payloads)?;
    match dead_letter {
        Some(true) => {
            dead.insert(seq, ()).or_unavailable()?;
        }
        Some(false) => {
            dead.remove(seq).or_unavailable()?;
        }
        None => {}
    }
    deliveries
        .insert(seq, row.encode_to_vec().as_slice())
        .or_unavailable()?;
    Ok(Some(answer))
}

/// Keeps once what deliveries of one ticket carry after their delivery ids when it is the
/// same (a broadcast under one deliberation), and cuts their requests down to the delivery id
/// (see [`DeliveryRow::payload_seq`]). `deliveries` have their sequence numbers.
pub(crate) fn share_payloads(
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

/// The journal entry for a change to a delivery.
pub(crate) fn delivery_entry(row: &DeliveryRow, kind: EntryKind) -> JournalEntry {
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

/// Which index rows an entry gets. What an earlier entry of the same ticket already indexes is
/// not indexed again, and the queries reach it through the ticket: its entries are in
/// `journal_by_ticket`, and its submission names the candidates that follow it. This halves
/// the rows a delivery writes (docs/BENCHMARKS-HISTORY.md, "Profile, sixth round"), and a
/// candidate's are a third of what they were (docs/BENCHMARKS.md, "The journal's rows per
/// candidate").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rows {
    /// A ticket's submission, and entries of their own (consultations, contact files): person,
    /// ticket, sender and recipient, retention.
    All,
    /// An admission or a refusal its submission names ([`JournalEntry::candidates`]): recipient
    /// only, and retention when it ends before the submission's (otherwise it goes with the
    /// submission). Its person, sender and ticket are its submission's.
    Candidate { submission_keep_until_ms: i64 },
    /// An admission or a refusal its submission does not name (written before submissions
    /// named them, or kept longer than its submission): ticket, recipient, retention.
    LoneCandidate,
    /// A later event of an admitted delivery (attempt, delivery, dead letter, replay): ticket
    /// only. Its person, parties and retention are its admission's.
    FollowUp,
}

/// The entries an accepted message writes, with their rows: a submission names the candidates
/// right after it ([`JournalEntry::candidates`]) as long as none is kept longer than it is (the
/// gateway keeps a submission as long as its longest-kept candidate), so that retention never
/// leaves a candidate its submission no longer names.
pub(crate) fn candidates_of_submission(
    mut journal: Vec<JournalEntry>,
) -> impl Iterator<Item = (JournalEntry, Rows)> {
    let submission_keep_until_ms = journal.first().map_or(0, |e| e.keep_until_ms);
    let mut named = 0;
    if let Some((submission, rest)) = journal.split_first_mut()
        && submission.kind == EntryKind::Submission as i32
    {
        named = rest
            .iter()
            .take_while(|e| {
                e.is_candidate() && outlived_by(e.keep_until_ms, submission_keep_until_ms)
            })
            .count();
        submission.candidates = named as u32;
    }
    journal.into_iter().enumerate().map(move |(i, entry)| {
        let rows = match i {
            0 if entry.kind == EntryKind::Submission as i32 => Rows::All,
            i if (1..=named).contains(&i) => Rows::Candidate {
                submission_keep_until_ms,
            },
            _ if entry.is_candidate() => Rows::LoneCandidate,
            _ => Rows::All,
        };
        (entry, rows)
    })
}

/// Whether an entry kept until `keep_until_ms` goes no later than one kept until `other_ms`
/// (0: kept for ever).
fn outlived_by(keep_until_ms: i64, other_ms: i64) -> bool {
    other_ms == 0 || (keep_until_ms != 0 && keep_until_ms <= other_ms)
}

/// Adds (or, with `add` false, removes) an entry's index rows.
pub(crate) fn index(
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
    let keep = entry.keep_until_ms;
    // (person, ticket, sender, recipient, retention)
    let (by_person, by_ticket, by_sender, by_recipient, expires) = match rows {
        Rows::All => (true, true, true, true, keep > 0),
        // A named candidate goes with its submission at retention, unless it goes before.
        Rows::Candidate {
            submission_keep_until_ms,
        } => (
            false,
            false,
            false,
            true,
            keep > 0 && keep != submission_keep_until_ms,
        ),
        Rows::LoneCandidate => (false, true, false, true, keep > 0),
        // A follow-up goes with its admission at retention, unless it comes after that (a dead
        // letter replayed past its retention): then it has a row of its own, or it would stay.
        Rows::FollowUp => (false, true, false, false, keep > 0 && keep <= entry.at_ms),
    };
    if by_person && entry.niss != 0 {
        apply!(person, (entry.niss, n));
    }
    if by_ticket && !entry.ticket.is_empty() {
        apply!(ticket, (entry.ticket.as_str(), n));
    }
    if by_sender && !entry.sender.is_empty() {
        apply!(party, (entry.sender.as_str(), entry.at_ms, n));
    }
    if by_recipient && !entry.recipient.is_empty() {
        apply!(party, (entry.recipient.as_str(), entry.at_ms, n));
    }
    if expires {
        apply!(expiry, (keep, n));
    }
    if entry.kind == EntryKind::ContactFile as i32 && !entry.contact_file.is_empty() {
        let key = crate::tables::contact_file_key(&entry.sender, &entry.contact_file);
        if add {
            contact.insert(key.as_str(), n).or_unavailable()?;
        } else {
            contact.remove(key.as_str()).or_unavailable()?;
        }
    }
    Ok(())
}

/// The numbers of a ticket's entries, in order: those in `journal_by_ticket`, and the
/// candidates its submission (the first) names.
pub(crate) fn ticket_entries(
    by_ticket: &impl ReadableTable<(&'static str, u64), ()>,
    journal: &impl ReadableTable<u64, &'static [u8]>,
    ticket: &str,
) -> Result<Vec<u64>, StoreError> {
    let mut numbers = indexed_ticket_entries(by_ticket, ticket)?;
    if let Some(&first) = numbers.first() {
        let candidates = named_candidates(journal, first)?;
        if candidates > 0 {
            numbers.extend(first + 1..=first + candidates);
            numbers.sort_unstable();
            numbers.dedup();
        }
    }
    Ok(numbers)
}

/// The numbers of a ticket's entries in `journal_by_ticket`, in order: its submission and the
/// later entries of its deliveries, not the candidates the submission names.
fn indexed_ticket_entries(
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

/// How many candidates entry `number` names (entries `number + 1` on), if it is a submission
/// that does ([`JournalEntry::candidates`]); 0 for a stub, or an entry that does not decode
/// (verification reports it).
fn named_candidates(
    journal: &impl ReadableTable<u64, &'static [u8]>,
    number: u64,
) -> Result<u64, StoreError> {
    let Some(bytes) = journal.get(number).or_unavailable()? else {
        return Ok(0);
    };
    Ok(match decode::<JournalEntry>(bytes.value()) {
        Ok(entry) if entry.kind == EntryKind::Submission as i32 => u64::from(entry.candidates),
        _ => 0,
    })
}

/// Replaces the content of entries past their retention by stubs, and removes their index
/// rows. A submission takes the candidates it names with it, and an admission its later entries
/// (attempts, delivery, dead letter): they share its retention and have no expiry row of their
/// own unless theirs ends first or, for a later entry, after it was written.
pub(crate) fn expire(
    tables: &mut Tables,
    key: &[u8; 32],
    now_ms: i64,
    limit: usize,
) -> Result<u64, StoreError> {
    let due: Vec<(i64, u64)> = {
        let mut due = Vec::new();
        for item in tables
            .expiry
            .range((i64::MIN, 0)..=(now_ms, u64::MAX))
            .or_unavailable()?
        {
            if due.len() >= limit {
                break;
            }
            due.push(item.or_unavailable()?.0.value());
        }
        due
    };
    let mut removed = 0;
    for (keep_until, number) in due {
        match retire(tables, key, number, now_ms) {
            Ok(count) => removed += count,
            Err(StoreError::Damaged(_)) => {
                // An entry that no longer decodes (verification reports it) must not stop
                // retention for every entry after it: its row goes, the entry stays as it is.
                tracing::warn!(
                    message =
                        "A journal entry due for retention does not decode; left for verification.",
                    entry = number
                );
                tables
                    .expiry
                    .remove((keep_until, number))
                    .or_unavailable()?;
                removed += retire_candidates_after(tables, key, number, now_ms)?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

/// After entry `number` failed to decode at retention: if it was a submission, the candidates
/// it named follow it and have no expiry row, so they are found the way it was written (the
/// admissions and refusals of one ticket right after it) and leave their stubs if their own
/// retention has ended too. How many entries it removed.
fn retire_candidates_after(
    tables: &mut Tables,
    key: &[u8; 32],
    number: u64,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    let mut ticket: Option<String> = None;
    for later in number + 1.. {
        let entry = {
            let Some(bytes) = tables.journal.get(later).or_unavailable()? else {
                break;
            };
            let Ok(entry) = decode::<JournalEntry>(bytes.value()) else {
                break;
            };
            entry
        };
        if !entry.is_candidate() {
            break;
        }
        if entry.removed {
            // A candidate whose retention ended first (a stub keeps its kind).
            continue;
        }
        if entry.consultation || *ticket.get_or_insert_with(|| entry.ticket.clone()) != entry.ticket
        {
            break;
        }
        if entry.keep_until_ms <= now_ms {
            removed += retire(tables, key, later, now_ms)?;
        }
    }
    Ok(removed)
}

/// Leaves the stub of entry `number` (due at `now_ms`) and of the entries that go with it;
/// how many it removed. Only `number` failing to decode is an error.
fn retire(
    tables: &mut Tables,
    key: &[u8; 32],
    number: u64,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let Some(entry) = stub(tables, key, number)? else {
        return Ok(0);
    };
    let mut removed = 1;
    // The entries that go with it, if their retention has ended too (by construction it has).
    let mut with_it = Vec::new();
    if entry.kind == EntryKind::Submission as i32 {
        with_it.extend(number + 1..=number + u64::from(entry.candidates));
    }
    if entry.kind == EntryKind::Admission as i32 && !entry.delivery_id.is_empty() {
        // Its later entries all have a ticket row; the candidates its submission names are
        // not among them.
        with_it.extend(indexed_ticket_entries(&tables.by_ticket, &entry.ticket)?);
    }
    for later in with_it {
        let goes = {
            let Some(bytes) = tables.journal.get(later).or_unavailable()? else {
                continue;
            };
            let Ok(e) = decode::<JournalEntry>(bytes.value()) else {
                // The entry's stub is kept with this pass, and what goes with it has no expiry
                // row that would bring it back to a later one: another entry of the ticket that
                // does not decode (verification reports it) must not keep them.
                tracing::warn!(
                    message = "A journal entry of a ticket due for retention does not decode; left for verification.",
                    entry = later
                );
                continue;
            };
            let candidate = e.is_candidate();
            let belongs = if entry.kind == EntryKind::Submission as i32 {
                candidate && e.ticket == entry.ticket
            } else {
                e.delivery_id == entry.delivery_id && !candidate
            };
            !e.removed && belongs && e.keep_until_ms <= now_ms
        };
        if goes {
            // A named admission takes its own later entries with it.
            removed += retire(tables, key, later, now_ms)?;
        }
    }
    Ok(removed)
}

/// The `message_ids` key of a ticket: its sender and message id.
pub(crate) fn message_key(ticket: &TicketRow) -> String {
    format!("{}\0{}", ticket.sender, ticket.message_id)
}

/// Removes at most `limit` tickets accepted before `before_ms`, oldest first, with their
/// message ids. Tickets are UUIDv7 strings, so their order is the order they were made in: the
/// scan stops at the first one accepted since.
pub(crate) fn forget_tickets(
    tables: &mut Tables,
    before_ms: i64,
    limit: usize,
) -> Result<u64, StoreError> {
    let old: Vec<TicketRow> = {
        let mut old = Vec::new();
        for item in tables.tickets.iter().or_unavailable()? {
            let (key, value) = item.or_unavailable()?;
            let Ok(row) = decode::<TicketRow>(value.value()) else {
                // Its time cannot be told, so it stays; one damaged row must not stop ticket
                // retention for good.
                tracing::warn!(
                    message = "A ticket row does not decode; left as it is.",
                    ticket = key.value()
                );
                continue;
            };
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
pub(crate) fn stub(
    tables: &mut Tables,
    key: &[u8; 32],
    number: u64,
) -> Result<Option<JournalEntry>, StoreError> {
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
        .insert(number, entry.stub(key).encode_to_vec().as_slice())
        .or_unavailable()?;
    Ok(Some(entry))
}
