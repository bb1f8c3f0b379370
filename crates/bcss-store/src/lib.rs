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

pub mod rows;

use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

pub use rows::{DeliveryRow, DeliveryState, OutcomeRow, TicketRow};

/// Ticket → `TicketRow`.
const TICKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("tickets");
/// `<sender>\0<message id>` → ticket: a message id is answered with its first ticket forever.
const MESSAGE_IDS: TableDefinition<&str, &str> = TableDefinition::new("message_ids");
/// Delivery sequence number → `DeliveryRow`.
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// The deliveries still to make (sequence numbers), so that a restart finds them directly.
const PENDING: TableDefinition<u64, ()> = TableDefinition::new("pending");
/// The dead letters (sequence numbers).
const DEAD: TableDefinition<u64, ()> = TableDefinition::new("dead_letters");

/// Most changes committed together.
pub const MAX_GROUP: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data folder cannot be written (full, read-only, missing). Nothing of the change was
    /// kept; retrying later is safe.
    #[error("the hub cannot write its data folder ({0}); nothing was recorded, retry later")]
    Unavailable(String),
    #[error("the hub's store has stopped")]
    Stopped,
    #[error("stored record is damaged: {0}")]
    Damaged(String),
}

/// The answer to [`Store::accept`].
#[derive(Debug)]
pub enum Accepted {
    /// Recorded; the sequence numbers of the deliveries, in the order given.
    New { seqs: Vec<u64> },
    /// The sender already used this message id: here is what was recorded then.
    Existing(TicketRow),
}

/// What the store holds at start: every ticket, and the deliveries still to make.
#[derive(Debug, Default)]
pub struct Recovered {
    pub tickets: Vec<TicketRow>,
    pub pending: Vec<DeliveryRow>,
    /// Sequence numbers of the dead letters.
    pub dead: Vec<u64>,
}

/// A change to a delivery.
#[derive(Debug)]
pub enum Change {
    /// Acknowledged: keep the row (for tracking), drop its payload.
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
}

/// The store. Cheap to share behind an `Arc`; dropping the last handle stops the writer after
/// it committed what it had.
#[derive(Debug)]
pub struct Store {
    ops: mpsc::Sender<Op>,
    path: PathBuf,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Op")
    }
}

impl Store {
    /// Opens (or creates) `hub.redb` in `dir` and reads back what it holds.
    pub fn open(dir: &Path) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable(dir, e))?;
        let path = dir.join("hub.redb");
        let db = Database::create(&path).map_err(|e| unavailable(&path, e))?;
        init_tables(&db).map_err(|e| unavailable(&path, e))?;
        let recovered = recover(&db)?;
        let next_seq = last_seq(&db)? + 1;
        let (ops, rx) = mpsc::channel(4 * MAX_GROUP);
        let writer = Writer {
            db: Some(db),
            path: path.clone(),
            next_seq,
        };
        std::thread::Builder::new()
            .name("bcss-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok((Store { ops, path }, recovered))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a ticket and its deliveries (their `seq` is assigned here), durably, unless the
    /// sender already used the message id.
    pub async fn accept(
        &self,
        ticket: TicketRow,
        deliveries: Vec<DeliveryRow>,
    ) -> Result<Accepted, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Accept {
            ticket: Box::new(ticket),
            deliveries,
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

    async fn send(&self, op: Op) -> Result<(), StoreError> {
        self.ops.send(op).await.map_err(|_| StoreError::Stopped)
    }
}

fn unavailable(path: &Path, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {error}", path.display()))
}

fn init_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(TICKETS)?;
    txn.open_table(MESSAGE_IDS)?;
    txn.open_table(DELIVERIES)?;
    txn.open_table(PENDING)?;
    txn.open_table(DEAD)?;
    txn.commit()?;
    Ok(())
}

fn recover(db: &Database) -> Result<Recovered, StoreError> {
    let read = |e: redb::Error| StoreError::Unavailable(e.to_string());
    let txn = db.begin_read().map_err(|e| read(e.into()))?;
    let tickets_table = txn.open_table(TICKETS).map_err(|e| read(e.into()))?;
    let mut tickets = Vec::new();
    for entry in tickets_table.iter().map_err(|e| read(e.into()))? {
        let (_, value) = entry.map_err(|e| read(e.into()))?;
        tickets.push(decode::<TicketRow>(value.value())?);
    }
    tickets.sort_by_key(|t| t.accepted_at_ms);
    let pending_table = txn.open_table(PENDING).map_err(|e| read(e.into()))?;
    let deliveries = txn.open_table(DELIVERIES).map_err(|e| read(e.into()))?;
    let mut pending = Vec::new();
    for entry in pending_table.iter().map_err(|e| read(e.into()))? {
        let (seq, _) = entry.map_err(|e| read(e.into()))?;
        if let Some(row) = deliveries.get(seq.value()).map_err(|e| read(e.into()))? {
            pending.push(decode::<DeliveryRow>(row.value())?);
        }
    }
    let dead_table = txn.open_table(DEAD).map_err(|e| read(e.into()))?;
    let mut dead = Vec::new();
    for entry in dead_table.iter().map_err(|e| read(e.into()))? {
        dead.push(entry.map_err(|e| read(e.into()))?.0.value());
    }
    Ok(Recovered {
        tickets,
        pending,
        dead,
    })
}

fn last_seq(db: &Database) -> Result<u64, StoreError> {
    let read = |e: redb::Error| StoreError::Unavailable(e.to_string());
    let txn = db.begin_read().map_err(|e| read(e.into()))?;
    let deliveries = txn.open_table(DELIVERIES).map_err(|e| read(e.into()))?;
    let last = deliveries.last().map_err(|e| read(e.into()))?;
    Ok(last.map_or(0, |(seq, _)| seq.value()))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Damaged(e.to_string()))
}

/// The one thread that writes.
struct Writer {
    /// `None` after a failed commit: reopened before the next group.
    db: Option<Database>,
    path: PathBuf,
    next_seq: u64,
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
                Op::Accept { .. } | Op::Change { .. } => writes.push(op),
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
        let outcome = self.database().and_then(|db| {
            db.begin_write()
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        });
        let txn = match outcome {
            Ok(txn) => txn,
            Err(error) => return fail_all(writes, &error),
        };
        let mut answers = Vec::with_capacity(writes.len());
        for op in writes {
            answers.push(self.write_one(&txn, op));
        }
        match txn.commit() {
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
                let error = StoreError::Unavailable(error.to_string());
                for answer in answers {
                    let reply = match answer {
                        Pending::Accept(reply, _) => FailedReply::Accept(reply),
                        Pending::Change(reply, _) => FailedReply::Change(reply),
                        Pending::Failed(reply, _) => reply,
                    };
                    reply.send(StoreError::Unavailable(error.to_string()));
                }
            }
        }
    }

    fn write_one(&mut self, txn: &WriteTransaction, op: Op) -> Pending {
        match op {
            Op::Accept {
                ticket,
                deliveries,
                reply,
            } => match self.accept(txn, *ticket, deliveries) {
                Ok(accepted) => Pending::Accept(reply, accepted),
                Err(error) => Pending::Failed(FailedReply::Accept(reply), error),
            },
            Op::Change { change, reply } => match change_one(txn, change) {
                Ok(row) => Pending::Change(reply, row),
                Err(error) => Pending::Failed(FailedReply::Change(reply), error),
            },
            _ => unreachable!("reads are not written"),
        }
    }

    fn accept(
        &mut self,
        txn: &WriteTransaction,
        mut ticket: TicketRow,
        mut deliveries: Vec<DeliveryRow>,
    ) -> Result<Accepted, StoreError> {
        let fail = |e: redb::Error| StoreError::Unavailable(e.to_string());
        let key = format!("{}\0{}", ticket.sender, ticket.message_id);
        let mut ids = txn.open_table(MESSAGE_IDS).map_err(|e| fail(e.into()))?;
        let mut tickets = txn.open_table(TICKETS).map_err(|e| fail(e.into()))?;
        if let Some(existing) = ids.get(key.as_str()).map_err(|e| fail(e.into()))? {
            let row = tickets
                .get(existing.value())
                .map_err(|e| fail(e.into()))?
                .ok_or_else(|| StoreError::Damaged("a message id without its ticket".into()))?;
            return Ok(Accepted::Existing(decode(row.value())?));
        }
        let mut table = txn.open_table(DELIVERIES).map_err(|e| fail(e.into()))?;
        let mut pending = txn.open_table(PENDING).map_err(|e| fail(e.into()))?;
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
            table
                .insert(delivery.seq, delivery.encode_to_vec().as_slice())
                .map_err(|e| fail(e.into()))?;
            pending
                .insert(delivery.seq, ())
                .map_err(|e| fail(e.into()))?;
        }
        ids.insert(key.as_str(), ticket.ticket.as_str())
            .map_err(|e| fail(e.into()))?;
        tickets
            .insert(ticket.ticket.as_str(), ticket.encode_to_vec().as_slice())
            .map_err(|e| fail(e.into()))?;
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

fn fail_all(writes: Vec<Op>, error: &StoreError) {
    for op in writes {
        let message = StoreError::Unavailable(error.to_string());
        match op {
            Op::Accept { reply, .. } => FailedReply::Accept(reply).send(message),
            Op::Change { reply, .. } => FailedReply::Change(reply).send(message),
            _ => {}
        }
    }
}

fn change_one(txn: &WriteTransaction, change: Change) -> Result<Option<DeliveryRow>, StoreError> {
    let fail = |e: redb::Error| StoreError::Unavailable(e.to_string());
    let seq = match &change {
        Change::Delivered { seq, .. }
        | Change::Attempted { seq, .. }
        | Change::DeadLetter { seq, .. }
        | Change::Replay { seq } => *seq,
    };
    let mut table = txn.open_table(DELIVERIES).map_err(|e| fail(e.into()))?;
    let Some(current) = table.get(seq).map_err(|e| fail(e.into()))? else {
        return Ok(None);
    };
    let mut row: DeliveryRow = decode(current.value())?;
    drop(current);
    let mut pending = txn.open_table(PENDING).map_err(|e| fail(e.into()))?;
    let mut dead = txn.open_table(DEAD).map_err(|e| fail(e.into()))?;
    match change {
        Change::Delivered { at_ms, .. } => {
            row.state = DeliveryState::Delivered as i32;
            row.delivered_at_ms = at_ms;
            row.request = bytes::Bytes::new();
            row.attempts += 1;
            pending.remove(seq).map_err(|e| fail(e.into()))?;
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
            pending.remove(seq).map_err(|e| fail(e.into()))?;
            dead.insert(seq, ()).map_err(|e| fail(e.into()))?;
        }
        Change::Replay { .. } => {
            if row.state() != DeliveryState::DeadLetter {
                return Ok(Some(row));
            }
            row.state = DeliveryState::Pending as i32;
            row.attempts = 0;
            row.next_attempt_ms = 0;
            row.dead_reason.clear();
            dead.remove(seq).map_err(|e| fail(e.into()))?;
            pending.insert(seq, ()).map_err(|e| fail(e.into()))?;
        }
    }
    table
        .insert(seq, row.encode_to_vec().as_slice())
        .map_err(|e| fail(e.into()))?;
    Ok(Some(row))
}

fn dead_letters(db: &Database, after: u64, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
    let fail = |e: redb::Error| StoreError::Unavailable(e.to_string());
    let txn = db.begin_read().map_err(|e| fail(e.into()))?;
    let dead = txn.open_table(DEAD).map_err(|e| fail(e.into()))?;
    let deliveries = txn.open_table(DELIVERIES).map_err(|e| fail(e.into()))?;
    let mut rows = Vec::new();
    for entry in dead
        .range(after.saturating_add(1)..)
        .map_err(|e| fail(e.into()))?
    {
        if rows.len() >= limit {
            break;
        }
        let (seq, _) = entry.map_err(|e| fail(e.into()))?;
        if let Some(row) = deliveries.get(seq.value()).map_err(|e| fail(e.into()))? {
            rows.push(decode(row.value())?);
        }
    }
    Ok(rows)
}

fn delivery(db: &Database, seq: u64) -> Result<Option<DeliveryRow>, StoreError> {
    let fail = |e: redb::Error| StoreError::Unavailable(e.to_string());
    let txn = db.begin_read().map_err(|e| fail(e.into()))?;
    let deliveries = txn.open_table(DELIVERIES).map_err(|e| fail(e.into()))?;
    deliveries
        .get(seq)
        .map_err(|e| fail(e.into()))?
        .map(|row| decode(row.value()))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            let Accepted::New { seqs } = store.accept(t, d).await.unwrap() else {
                panic!("new")
            };
            assert_eq!(seqs, vec![1, 2]);
            store
                .change(Change::Delivered { seq: 1, at_ms: 5 })
                .await
                .unwrap();
        }
        // The writer thread ends when the store is dropped; give it a moment to release.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (store, recovered) = Store::open(dir.path()).unwrap();
        assert_eq!(recovered.tickets.len(), 1);
        assert_eq!(recovered.tickets[0].outcomes[1].delivery_seq, 2);
        let pending: Vec<u64> = recovered.pending.iter().map(|d| d.seq).collect();
        assert_eq!(pending, vec![2]);
        // The same message id is answered with the original ticket.
        let (t, d) = ticket("t2", "m1", &["a"]);
        match store.accept(t, d).await.unwrap() {
            Accepted::Existing(row) => assert_eq!(row.ticket, "t1"),
            Accepted::New { .. } => panic!("a reused message id must not be recorded"),
        }
        // Sequence numbers continue after the last one.
        let (t, d) = ticket("t3", "m3", &["a"]);
        let Accepted::New { seqs } = store.accept(t, d).await.unwrap() else {
            panic!("new")
        };
        assert_eq!(seqs, vec![3]);
    }

    #[tokio::test]
    async fn dead_letters_are_listed_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let (t, d) = ticket("t1", "m1", &["a", "b", "c"]);
        store.accept(t, d).await.unwrap();
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
                    store.accept(t, d).await.unwrap()
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
}
