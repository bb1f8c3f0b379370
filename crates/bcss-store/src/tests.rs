//! The store's tests: durability of groups, recovery, shared payloads, the journal's
//! indexes, retention and tampering.

use prost::Message;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::*;
use crate::tables::{
    CHECKPOINTS, DELIVERIES, JOURNAL, JOURNAL_BY_PARTY, JOURNAL_BY_PERSON, JOURNAL_BY_TICKET,
    JOURNAL_EXPIRY, PAYLOADS, TICKETS,
};

/// The change that makes delivery `seq` a dead letter after three unanswered attempts.
fn given_up(seq: u64) -> Change {
    Change::DeadLetter {
        seq,
        attempts: 3,
        last_error: "no answer".into(),
        reason: "too many attempts".into(),
    }
}

/// The store opened as the hub opens it, holding tickets accepted from `ms` on.
fn hold_since(ms: i64) -> StoreOptions {
    StoreOptions {
        hold_since_ms: ms,
        ..StoreOptions::default()
    }
}

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

/// A page cache much smaller than the file changes what is kept in memory, never what is
/// stored: every ticket, delivery and payload written through a 256 kB cache reads back whole,
/// through the same cache and through the default one.
#[tokio::test]
async fn a_cache_smaller_than_the_file_keeps_everything_written() {
    let dir = tempfile::tempdir().unwrap();
    let small = StoreOptions {
        cache_bytes: 256 << 10,
        ..StoreOptions::default()
    };
    // About 3 MB of payloads: twelve times the cache.
    let payload = |n: usize| bytes::Bytes::from(vec![u8::try_from(n % 251).unwrap(); 1_500]);
    let count = 2_000;
    {
        let (store, _) = Store::open_with(dir.path(), small).unwrap();
        let store = std::sync::Arc::new(store);
        let accepts: Vec<_> = (0..count)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (t, mut d) = ticket(&format!("t{n:05}"), &format!("m{n}"), &["a"]);
                    d[0].request = payload(n);
                    store.accept(t, d, Vec::new()).await.unwrap()
                })
            })
            .collect();
        for accepted in accepts {
            assert!(matches!(accepted.await.unwrap(), Accepted::New { .. }));
        }
        // Every other delivery is made: its row goes.
        for seq in (1..=count as u64).step_by(2) {
            store
                .change(Change::Delivered { seq, at_ms: 1 })
                .await
                .unwrap()
                .expect("a pending delivery");
        }
    }
    for options in [small, StoreOptions::default()] {
        let (store, recovered) = Store::open_with(dir.path(), options).unwrap();
        assert_eq!(recovered.tickets.len(), count, "{options:?}");
        assert_eq!(recovered.pending.len(), count / 2, "{options:?}");
        for delivery in &recovered.pending {
            assert_eq!(delivery.seq % 2, 0, "delivery {} was made", delivery.seq);
            let n: usize = delivery.ticket[1..].parse().unwrap();
            assert_eq!(delivery.request, payload(n), "delivery {}", delivery.seq);
        }
        drop(store);
    }
}

#[tokio::test]
async fn rows_that_do_not_decode_are_named_and_the_rest_resumes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        for (id, recipients) in [("t1", &["a", "b"][..]), ("t2", &["c"]), ("t3", &["d"])] {
            let (t, d) = ticket(id, &format!("m-{id}"), recipients);
            store.accept(t, d, Vec::new()).await.unwrap();
        }
    }
    let garbage: &[u8] = b"\xff\xff";
    tamper_table(dir.path(), DELIVERIES, |rows| {
        rows.insert(2, garbage).unwrap();
    });
    tamper_table(dir.path(), TICKETS, |rows| {
        rows.insert("t2", garbage).unwrap();
    });
    let (store, recovered) = Store::open(dir.path()).unwrap();
    drop(store);
    let pending: Vec<u64> = recovered.pending.iter().map(|d| d.seq).collect();
    assert_eq!(pending, [1, 3, 4], "every readable delivery resumes");
    let mut tickets: Vec<&str> = recovered
        .tickets
        .iter()
        .map(|t| t.ticket.as_str())
        .collect();
    tickets.sort_unstable();
    assert_eq!(tickets, ["t1", "t3"]);
    assert_eq!(
        recovered.damaged,
        [DamagedRow::Delivery(2), DamagedRow::Ticket("t2".into())]
    );
    // Left on disk as they were, for an operator.
    let db = Database::create(dir.path().join("hub.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let rows = txn.open_table(DELIVERIES).unwrap();
    assert_eq!(rows.get(2).unwrap().unwrap().value(), garbage);
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
    store.change(given_up(3)).await.unwrap();
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
    let (store, recovered) = Store::open_with(dir.path(), hold_since(3_500)).unwrap();
    let held: Vec<&str> = recovered
        .tickets
        .iter()
        .map(|t| t.ticket.as_str())
        .collect();
    assert_eq!(held, ["t4"]);
    drop(store);
    let (_, recovered) = Store::open_with(dir.path(), hold_since(3_000)).unwrap();
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

/// (ticket, kind, recipient) of each entry, in order.
type Shape = Vec<(String, i32, String)>;

fn shape(entries: Vec<JournalEntry>) -> Shape {
    entries
        .into_iter()
        .map(|e| (e.ticket, e.kind, e.recipient))
        .collect()
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
    let person = |niss| store.journal(JournalQuery::Person { niss });
    let party = |institution: &str, to_ms| JournalQuery::Party {
        institution: institution.into(),
        from_ms: 0,
        to_ms,
        limit: usize::MAX,
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
    // A query's limit counts the entries reached through their tickets, not only the index's
    // hits: the sender's two submissions reach seven entries.
    for (limit, found) in [(2, None), (6, None), (7, Some(7))] {
        let query = JournalQuery::Party {
            institution: "s".into(),
            from_ms: 0,
            to_ms: i64::MAX,
            limit,
        };
        match (store.journal(query).await, found) {
            (Ok(entries), Some(found)) => assert_eq!(entries.len(), found, "limit {limit}"),
            (Err(StoreError::TooMany(at)), None) => assert_eq!(at, limit),
            (other, _) => panic!("limit {limit}: {other:?}"),
        }
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
    // Index rows: one person, one sender, one expiry and one by_ticket row per submission,
    // one recipient row per candidate; by_ticket rows for the follow-ups (the attempt to b),
    // none for the candidates their submission names; an expiry row for a candidate only if
    // it goes before its submission (the one to a, gone); and one for the attempt to b, which
    // this test's clock writes after b's retention (t=9,000 ms) ended.
    assert_eq!(index_rows(dir.path()), [2, 2 + 1, 2 + 2, 2 + 1]);
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

/// Which candidates a submission names, and the rows each entry of an accepted message gets:
/// a submission names the admissions and refusals right after it, up to the first that it
/// would not outlive (a candidate kept longer, or for ever, keeps rows of its own).
#[test]
fn a_submission_names_the_candidates_it_outlives() {
    use crate::writer::{Rows, candidates_of_submission};
    let (sub, adm, refusal, att) = (
        EntryKind::Submission,
        EntryKind::Admission,
        EntryKind::Refusal,
        EntryKind::Attempt,
    );
    let entry = |kind: EntryKind, keep_until_ms: i64| JournalEntry {
        kind: kind as i32,
        keep_until_ms,
        ..Default::default()
    };
    let named = |keep| Rows::Candidate {
        submission_keep_until_ms: keep,
    };
    let cases: Vec<(&str, Vec<JournalEntry>, u32, Vec<Rows>)> = vec![
        (
            "admissions and refusals kept as long or less",
            vec![entry(sub, 9), entry(adm, 9), entry(refusal, 5)],
            2,
            vec![Rows::All, named(9), named(9)],
        ),
        (
            "a submission kept for ever outlives every candidate",
            vec![entry(sub, 0), entry(adm, 5), entry(adm, 0)],
            2,
            vec![Rows::All, named(0), named(0)],
        ),
        (
            "the first candidate kept longer ends the names",
            vec![entry(sub, 9), entry(adm, 9), entry(adm, 12), entry(adm, 9)],
            1,
            vec![
                Rows::All,
                named(9),
                Rows::LoneCandidate,
                Rows::LoneCandidate,
            ],
        ),
        (
            "a candidate kept for ever outlives a submission that is not",
            vec![entry(sub, 9), entry(refusal, 0)],
            0,
            vec![Rows::All, Rows::LoneCandidate],
        ),
        (
            "an entry of another kind is not a candidate",
            vec![entry(sub, 9), entry(att, 9)],
            0,
            vec![Rows::All, Rows::All],
        ),
        (
            "candidates without their submission",
            vec![entry(adm, 9)],
            0,
            vec![Rows::LoneCandidate],
        ),
    ];
    for (name, journal, candidates, rows) in cases {
        let written: Vec<(JournalEntry, Rows)> = candidates_of_submission(journal).collect();
        let named_count = written
            .first()
            .filter(|(e, _)| e.kind == sub as i32)
            .map_or(0, |(e, _)| e.candidates);
        assert_eq!(named_count, candidates, "{name}");
        assert_eq!(
            written.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            rows,
            "{name}"
        );
    }
}

/// Candidates their submission names have no ticket row and, when they go with it, no expiry
/// row: every query still finds them, and retention still removes them, with their
/// deliveries. A candidate kept longer than its submission keeps rows of its own (as every
/// candidate had in files written before submissions named them) and stays after it.
#[tokio::test]
async fn candidates_are_found_and_expired_through_their_submission() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    // t1: a submission naming three admissions; t2: an admission kept past its submission.
    let (t, d, j) = journalled("t1", 42, &[("a", 9_000), ("b", 9_000), ("c", 9_000)]);
    store.accept(t, d, j).await.unwrap();
    let (t, d, mut j) = journalled("t2", 43, &[("a", 12_000)]);
    j[0].keep_until_ms = 9_000;
    store.accept(t, d, j).await.unwrap();
    for seq in [1, 2, 4] {
        let delivered = Change::Delivered { seq, at_ms: 2_000 };
        store.change(delivered).await.unwrap();
    }
    let entries = |query| async { store.journal(query).await.unwrap() };
    let tickets = |names: &[&str]| JournalQuery::Tickets {
        tickets: names.iter().map(|t| (*t).to_owned()).collect(),
    };
    let party = |institution: &str| JournalQuery::Party {
        institution: institution.into(),
        from_ms: 0,
        to_ms: i64::MAX,
        limit: usize::MAX,
    };
    let (sub, adm, del) = (0, 2, 4);
    let e = |t: &str, kind: i32, r: &str| (t.to_owned(), kind, r.to_owned());
    let t1 = vec![
        e("t1", sub, ""),
        e("t1", adm, "a"),
        e("t1", adm, "b"),
        e("t1", adm, "c"),
        e("t1", del, "a"),
        e("t1", del, "b"),
    ];
    let submission = entries(tickets(&["t1"])).await.remove(0);
    assert_eq!(submission.candidates, 3, "t1's submission names its three");
    let cases: Vec<(&str, JournalQuery, Shape)> = vec![
        ("the ticket", tickets(&["t1"]), t1.clone()),
        ("the person", JournalQuery::Person { niss: 42 }, t1.clone()),
        (
            "a recipient: its admissions and their deliveries",
            party("b"),
            vec![e("t1", adm, "b"), e("t1", del, "b")],
        ),
        (
            "the lone candidate, through its own rows",
            tickets(&["t2"]),
            vec![e("t2", sub, ""), e("t2", adm, "a"), e("t2", del, "a")],
        ),
    ];
    for (name, query, expected) in cases {
        assert_eq!(shape(entries(query).await), expected, "{name}");
    }
    // At t=9,000 both submissions go, t1's candidates and deliveries with it; t2's admission
    // is kept until t=12,000, with its delivery.
    assert_eq!(store.expire(9_000, 100).await.unwrap(), 2 + 3 + 2);
    assert!(
        entries(tickets(&["t1"])).await.is_empty(),
        "nothing of t1 is left"
    );
    assert_eq!(
        shape(entries(party("a")).await),
        vec![e("t2", adm, "a"), e("t2", del, "a")]
    );
    assert_eq!(store.expire(12_000, 100).await.unwrap(), 2);
    assert_eq!(store.verify().await.unwrap().first_problem, None);
    drop(store);
    assert_eq!(index_rows(dir.path()), [0; 4], "no row outlives retention");
}

/// Retention over many tickets of mixed retention, drawn at random (fixed seed): after each
/// pass, a ticket's entries are exactly those whose retention has not ended, the chain
/// verifies, and once every retention has ended no index row is left.
#[tokio::test]
async fn retention_removes_exactly_what_has_ended_over_mixed_tickets() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    // Retention ends after the follow-ups are written, so they go with their admission.
    let base = now_ms() + 3_600_000;
    let ends = [base + 1_000, base + 2_000, base + 3_000];
    /// (kind, recipient, keep until) of every entry a ticket wrote.
    type Written = Vec<(i32, String, i64)>;
    let mut written: Vec<(String, Written)> = Vec::new();
    let mut seq = 0;
    for t in 0..40 {
        let id = format!("t{t:02}");
        let names = ["a", "b", "c", "d"];
        let recipients: Vec<(&str, i64)> = names[..rng.random_range(1..=4)]
            .iter()
            .map(|r| (*r, ends[rng.random_range(0..3)]))
            .collect();
        let (ticket, deliveries, journal) = journalled(&id, 40 + t, &recipients);
        let mut entries: Vec<(i32, String, i64)> = journal
            .iter()
            .map(|e| (e.kind, e.recipient.clone(), e.keep_until_ms))
            .collect();
        store.accept(ticket, deliveries, journal).await.unwrap();
        for (recipient, keep) in &recipients {
            seq += 1;
            let (change, kind) = match rng.random_range(0..3) {
                0 => (Change::Delivered { seq, at_ms: 2_000 }, EntryKind::Delivery),
                1 => (
                    Change::Attempted {
                        seq,
                        attempts: 1,
                        last_error: "unavailable".into(),
                        next_attempt_ms: 0,
                    },
                    EntryKind::Attempt,
                ),
                _ => continue,
            };
            store.change(change).await.unwrap();
            entries.push((kind as i32, (*recipient).to_owned(), *keep));
        }
        written.push((id, entries));
    }
    for now in ends {
        store.expire(now, usize::MAX).await.unwrap();
        for (id, entries) in &written {
            let mut expected: Vec<(i32, String)> = entries
                .iter()
                .filter(|(_, _, keep)| *keep > now)
                .map(|(kind, recipient, _)| (*kind, recipient.clone()))
                .collect();
            let query = JournalQuery::Tickets {
                tickets: vec![id.clone()],
            };
            let mut found: Vec<(i32, String)> = store
                .journal(query)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.kind, e.recipient))
                .collect();
            expected.sort();
            found.sort();
            assert_eq!(found, expected, "ticket {id} after retention at {now}");
        }
        assert_eq!(store.verify().await.unwrap().first_problem, None);
    }
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
    store.change(given_up(2)).await.unwrap();
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
        store.change(given_up(seq)).await.unwrap();
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
    tamper_table(dir, JOURNAL, edit);
}

/// Changes one table of a closed store's file directly.
fn tamper_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    dir: &Path,
    table: redb::TableDefinition<K, V>,
    edit: impl FnOnce(&mut redb::Table<K, V>),
) {
    let db = Database::create(dir.join("hub.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(table).unwrap();
        edit(&mut table);
    }
    txn.commit().unwrap();
}

fn read(journal: &redb::Table<u64, &[u8]>, n: u64) -> JournalEntry {
    JournalEntry::decode(journal.get(n).unwrap().unwrap().value()).unwrap()
}

/// Rewrites entries `from..=to` with another sender and their hashes recomputed, so that the
/// chain itself stays whole: only a seal can tell.
fn forge_from(journal: &mut redb::Table<u64, &[u8]>, from: u64, to: u64) {
    let mut prev = read(journal, from - 1).hash;
    for number in from..=to {
        let mut e = read(journal, number);
        e.sender = "forged".into();
        e.prev_hash = prev.clone();
        e.hash = e.compute_hash(&prev).to_vec();
        prev = e.hash.clone();
        journal
            .insert(number, e.encode_to_vec().as_slice())
            .unwrap();
    }
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
            Box::new(move |journal| forge_from(journal, 5, n)),
            Tamper::BadSeal {
                checkpoint: journal::CHECKPOINT_EVERY,
            },
        ),
        (
            // A stub made without the journal key: content removed by hand, not by retention.
            "turned into a stub by hand",
            Box::new(|journal| {
                let stub = read(journal, 7).stub(&[0; 32]);
                journal.insert(7, stub.encode_to_vec().as_slice()).unwrap();
            }),
            Tamper::Changed { number: 7 },
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
    // The same, with the checkpoint that would have told removed too: every entry numbered a
    // multiple of `CHECKPOINT_EVERY` must have its seal, and the index rows of entries cut off
    // the end are left behind.
    let sealed = journal::CHECKPOINT_EVERY;
    let cases: Vec<(&str, Edit, Tamper)> = vec![
        (
            "rewritten from entry 5 on, hashes recomputed, its checkpoint removed",
            Box::new(move |journal| forge_from(journal, 5, n)),
            Tamper::MissingCheckpoint { number: sealed },
        ),
        (
            "cut off from entry 100 on, its checkpoint removed",
            Box::new(move |journal| {
                for number in 100..=n {
                    journal.remove(number).unwrap();
                }
            }),
            Tamper::Removed {
                after: 99,
                next: n + 1,
            },
        ),
    ];
    for (case, edit, expected) in cases {
        let dir = journal_of(n, |_| 0).await;
        tamper(dir.path(), edit);
        tamper_table(dir.path(), CHECKPOINTS, |checkpoints| {
            checkpoints.remove(sealed).unwrap().expect("a checkpoint");
        });
        let report = verify_folder(dir.path()).unwrap();
        assert_eq!(report.first_problem, Some(expected), "{case}");
    }
}

/// A submission names its candidates, so candidates cut off the end of the journal are seen
/// even with their index rows removed too.
#[tokio::test]
async fn candidates_cut_off_the_end_are_seen_through_their_submission() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        let (t, d, j) = journalled("t1", 42, &[("a", 0), ("b", 0), ("c", 0)]);
        store.accept(t, d, j).await.unwrap();
    }
    // Entries 1 (the submission, naming three) to 4: 3 and 4 cut, with their recipients' rows.
    tamper(dir.path(), |journal| {
        journal.remove(3).unwrap().expect("entry 3");
        journal.remove(4).unwrap().expect("entry 4");
    });
    tamper_table(dir.path(), JOURNAL_BY_PARTY, |party| {
        party.remove(("b", 1_000, 3)).unwrap().expect("b's row");
        party.remove(("c", 1_000, 4)).unwrap().expect("c's row");
    });
    let report = verify_folder(dir.path()).unwrap();
    assert_eq!(
        report.first_problem,
        Some(Tamper::Removed { after: 2, next: 5 })
    );
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
    // A stub edited afterwards is caught too, at the stub itself: its seal no longer matches
    // its hash.
    tamper(dir.path(), |journal| {
        let mut stub = read(journal, 3);
        stub.hash = vec![1; 32];
        journal.insert(3, stub.encode_to_vec().as_slice()).unwrap();
    });
    assert_eq!(
        verify_folder(dir.path()).unwrap().first_problem,
        Some(Tamper::Changed { number: 3 })
    );
}

/// Two replays of one dead letter (an operator's retry, two operators) queue it once and
/// journal one replay; a delivery acknowledged after it was given up on leaves no dead letter
/// behind, in the table or after a reopen.
#[tokio::test]
async fn a_dead_letter_is_replayed_once_and_a_late_delivery_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let (t, d) = ticket("t1", "m1", &["a"]);
    store.accept(t, d, Vec::new()).await.unwrap();
    store.change(given_up(1)).await.unwrap();
    let before = now_ms();
    let first = store
        .change(Change::Replay { seq: 1 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.state(), DeliveryState::Pending);
    // Its age limit counts from the replay, on disk too (a restart resumes it so).
    assert!(first.replayed_at_ms >= before && first.age_from_ms() >= before);
    let on_disk = store.delivery(1).await.unwrap().unwrap();
    assert_eq!(on_disk.replayed_at_ms, first.replayed_at_ms);
    let second = store.change(Change::Replay { seq: 1 }).await.unwrap();
    assert!(
        second.is_none(),
        "a pending row is not replayed: {second:?}"
    );
    let replays = store
        .journal(JournalQuery::Tickets {
            tickets: vec!["t1".into()],
        })
        .await
        .unwrap()
        .iter()
        .filter(|entry| entry.kind == journal::EntryKind::Replay as i32)
        .count();
    assert_eq!(replays, 1);
    // Given up on again while an attempt was under way, which then is acknowledged.
    store.change(given_up(1)).await.unwrap();
    store
        .change(Change::Delivered { seq: 1, at_ms: 9 })
        .await
        .unwrap();
    assert!(store.dead_letters(0, 10).await.unwrap().is_empty());
    drop(store);
    let (_store, recovered) = Store::open(dir.path()).unwrap();
    assert_eq!((recovered.dead.len(), recovered.pending.len()), (0, 0));
}

/// Fails the next `sync_data` when [`SYNC_FAILS`] is set, after the file was synced: a commit
/// that reports an error though the file holds it (redb writes its header, then syncs). Fails
/// the next read when [`READ_FAILS`] is set.
#[derive(Debug)]
struct FailsOnCue {
    file: redb::backends::FileBackend,
    /// Held for the database's life: dropped with it, it takes the file out of `OPEN_FILES`.
    _open: OpenFile,
}

/// The files a `FailsOnCue` database has open. `Database::create` refuses a file the process
/// already has open (`DatabaseAlreadyOpen`), a backend of one's own does not: this keeps
/// the tests' backend as strict.
static OPEN_FILES: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A file in `OPEN_FILES` until the database that opened it is dropped.
#[derive(Debug)]
struct OpenFile(std::path::PathBuf);

impl Drop for OpenFile {
    fn drop(&mut self) {
        OPEN_FILES.lock().unwrap().retain(|open| *open != self.0);
    }
}

static SYNC_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static READ_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Fails every page write while set: a commit that never reaches the file.
static WRITE_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Fails the next write of the file's header (offset 0): a commit whose pages were written and
/// that never took effect.
static HEADER_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Refuses to open the file while set: the writer cannot reopen it after a failed write.
static OPEN_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Held by each test that sets the flags above or [`READS_HELD`] (tests run in parallel, and
/// one clearing a flag another has set would end the other's window early).
static ON_CUE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl redb::StorageBackend for FailsOnCue {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        if READ_FAILS.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: a read failed"));
        }
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.file.sync_data()?;
        if SYNC_FAILS.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "injected: the sync reported a failure",
            ));
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if offset == 0 && HEADER_FAILS.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: the header's write failed"));
        }
        if WRITE_FAILS.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: a write failed"));
        }
        self.file.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }
}

/// A store on a backend that fails on cue, with the lock that keeps the other such tests out
/// while this one sets the flags (held to the end of the test; the store is dropped first).
async fn store_on_cue() -> (
    tokio::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    Store,
) {
    let alone = ON_CUE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        Store::open_through(dir.path(), true, i64::MIN, Box::new(open_fails_on_cue)).unwrap();
    (alone, dir, store)
}

/// With no page cache, so that every read reaches the backend.
fn open_fails_on_cue(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    if OPEN_FAILS.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(std::io::Error::other("injected: the file cannot be opened").into());
    }
    let open = {
        let mut open_files = OPEN_FILES.lock().unwrap();
        if open_files.iter().any(|open| open == path) {
            return Err(redb::DatabaseError::DatabaseAlreadyOpen);
        }
        open_files.push(path.to_owned());
        OpenFile(path.to_owned())
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    redb::Database::builder()
        .set_cache_size(0)
        .create_with_backend(FailsOnCue {
            file: redb::backends::FileBackend::new(file)?,
            _open: open,
        })
}

/// A commit that reports a failure may still be on disk. The writer reopens the file and
/// takes its sequence numbers and journal head from it, not from before the group: the next
/// ticket's deliveries get numbers of their own (they once overwrote the first ticket's rows)
/// and the journal's chain stays whole.
#[tokio::test]
async fn a_commit_that_reported_a_failure_is_answered_as_the_file_has_it() {
    let (_alone, _dir, store) = store_on_cue().await;
    let entry = |ticket: &str| JournalEntry {
        kind: journal::EntryKind::Submission as i32,
        ticket: ticket.into(),
        niss: 1000,
        ..Default::default()
    };
    let (t, d) = ticket("t1", "m1", &["a", "b"]);
    SYNC_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    // The commit reports a failure but reached the file: the caller is told it is recorded
    // (told otherwise, it would not queue deliveries the hub holds, and a resubmission would
    // find the message id taken).
    let Accepted::New { seqs: first_seqs } = store.accept(t, d, vec![entry("t1")]).await.unwrap()
    else {
        panic!("t1 is new");
    };
    assert!(store.writable());
    let (t, d) = ticket("t2", "m2", &["a", "b"]);
    let Accepted::New { seqs } = store.accept(t, d, vec![entry("t2")]).await.unwrap() else {
        panic!("t2 is new");
    };
    let first = store.ticket("t1").await.unwrap().expect("t1 is on disk");
    assert_eq!(
        first.deliveries.iter().map(|d| d.seq).collect::<Vec<_>>(),
        first_seqs
    );
    assert_eq!(first_seqs.len(), 2);
    assert!(
        seqs.iter().all(|seq| !first_seqs.contains(seq)),
        "t2 got {seqs:?}, t1 holds {first_seqs:?}"
    );
    for seq in first_seqs {
        assert_eq!(store.delivery(seq).await.unwrap().unwrap().ticket, "t1");
    }
    let report = store.verify().await.unwrap();
    assert_eq!(report.first_problem, None);
}

/// After a failed write the writer lets go of the file and opens it again; a long read under
/// way (a journal verification) held the old handle, and until it ended the file could not be
/// reopened, so every message was refused. The read is called off — answered UNAVAILABLE, ask
/// again — and the next message is taken.
#[tokio::test]
async fn a_long_read_is_called_off_when_a_failed_write_reopens_the_file() {
    let (_alone, _dir, store) = store_on_cue().await;
    let store = std::sync::Arc::new(store);
    READS_HELD.store(true, std::sync::atomic::Ordering::SeqCst);
    let verifying = tokio::spawn({
        let store = store.clone();
        async move { store.verify().await }
    });
    // Let the verification reach the reader before the write fails.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (t, d) = ticket("t1", "m1", &["a"]);
    WRITE_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = store.accept(t, d, Vec::new()).await;
    WRITE_FAILS.store(false, std::sync::atomic::Ordering::SeqCst);
    let (t, d) = ticket("t1", "m1", &["a"]);
    let accepted = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.accept(t, d, Vec::new()),
    )
    .await;
    let verified = tokio::time::timeout(std::time::Duration::from_secs(5), verifying).await;
    READS_HELD.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(
        matches!(accepted, Ok(Ok(Accepted::New { .. }))),
        "taken again while a verification held the old handle: {accepted:?}"
    );
    let verified = verified.expect("the verification was called off").unwrap();
    assert!(
        matches!(&verified, Err(StoreError::Unavailable(m)) if m.contains("ask again")),
        "{verified:?}"
    );
    // Asked again, it runs on the file as it is now.
    assert_eq!(store.verify().await.unwrap().first_problem, None);
}

/// A commit that fails before it reaches the file is answered as not recorded, and nothing of
/// it is there: the message id is free for the resubmission.
#[tokio::test]
async fn a_commit_that_never_reached_the_file_is_answered_as_not_recorded() {
    let (_alone, _dir, store) = store_on_cue().await;
    let (t, d) = ticket("t1", "m1", &["a"]);
    store.accept(t, d, Vec::new()).await.unwrap();
    let (t, d) = ticket("t2", "m2", &["a", "b"]);
    WRITE_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = store.accept(t, d, Vec::new()).await;
    WRITE_FAILS.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(store.ticket("t2").await.unwrap().is_none());
    let (t, d) = ticket("t2", "m2", &["a", "b"]);
    assert!(matches!(
        store.accept(t, d, Vec::new()).await.unwrap(),
        Accepted::New { .. }
    ));
    assert!(store.ticket("t1").await.unwrap().is_some());
}

/// While the file cannot be opened again after a failed write, a message is answered as not
/// recorded at once, and is not recorded later with another message's group either: the
/// writer keeps its group's vectors from one group to the next, and a group that fails must
/// leave them empty.
#[tokio::test]
async fn while_the_file_cannot_be_reopened_a_message_is_refused_and_not_kept_for_later() {
    let (_alone, _dir, store) = store_on_cue().await;
    let within = |what| tokio::time::timeout(std::time::Duration::from_secs(5), what);
    OPEN_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    WRITE_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    let (t, d) = ticket("t1", "m1", &["a"]);
    let failed = within(store.accept(t, d, Vec::new())).await;
    WRITE_FAILS.store(false, std::sync::atomic::Ordering::SeqCst);
    // The file was let go of and cannot be opened: this group fails before it begins.
    let (t, d) = ticket("t2", "m2", &["a"]);
    let refused = within(store.accept(t, d, Vec::new())).await;
    OPEN_FAILS.store(false, std::sync::atomic::Ordering::SeqCst);
    let (t, d) = ticket("t3", "m3", &["b"]);
    let taken = within(store.accept(t, d, Vec::new())).await;
    assert!(
        matches!(failed, Ok(Err(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    assert!(
        matches!(refused, Ok(Err(StoreError::Unavailable(_)))),
        "refused at once: {refused:?}"
    );
    assert!(matches!(taken, Ok(Ok(Accepted::New { .. }))), "{taken:?}");
    for (ticket, recorded) in [("t1", false), ("t2", false), ("t3", true)] {
        assert_eq!(
            store.ticket(ticket).await.unwrap().is_some(),
            recorded,
            "{ticket}"
        );
    }
}

/// A commit whose pages were written and whose header was not: the file holds the group before
/// it, so the group's messages are answered as not recorded, and the next group's are answered
/// for themselves.
#[tokio::test]
async fn a_commit_whose_header_was_not_written_is_answered_as_not_recorded() {
    let (_alone, _dir, store) = store_on_cue().await;
    let within = |what| tokio::time::timeout(std::time::Duration::from_secs(5), what);
    HEADER_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    let (t, d) = ticket("t1", "m1", &["a"]);
    let failed = within(store.accept(t, d, Vec::new())).await;
    let injected = HEADER_FAILS.swap(false, std::sync::atomic::Ordering::SeqCst);
    let (t, d) = ticket("t2", "m2", &["b"]);
    let taken = within(store.accept(t, d, Vec::new())).await;
    assert!(
        !injected,
        "no header write failed: the test did not reach the path it names"
    );
    assert!(
        matches!(failed, Ok(Err(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    let Ok(Ok(Accepted::New { seqs })) = taken else {
        panic!("t2: {taken:?}");
    };
    assert_eq!(seqs.len(), 1);
    assert!(store.ticket("t1").await.unwrap().is_none());
    assert!(store.ticket("t2").await.unwrap().is_some());
}

/// Once an I/O error happened, redb refuses every later transaction. A read that failed (not
/// only a commit) makes the writer reopen the file, so the store takes messages again instead
/// of refusing them until a restart.
#[tokio::test]
async fn after_a_failed_read_the_store_reopens_and_accepts_again() {
    let (_alone, _dir, store) = store_on_cue().await;
    let (t, d) = ticket("t1", "m1", &["a"]);
    store.accept(t, d, Vec::new()).await.unwrap();
    READ_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = store.ticket("t1").await;
    assert!(failed.is_err(), "the injected read failure: {failed:?}");
    let (t, d) = ticket("t2", "m2", &["a"]);
    store.accept(t, d, Vec::new()).await.unwrap();
    assert!(store.ticket("t1").await.unwrap().is_some());
    assert!(store.writable());
}

/// `journal.key` is created whole, for the owner only, and made the owner's only again if it
/// was restored readable by others; checking a folder writes nothing, and
/// without the key it says what is missing instead of making a new key (which would have
/// reported every sealed checkpoint as tampered with).
#[tokio::test]
async fn the_journal_key_is_private_and_checking_never_makes_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    drop(store);
    let key = dir.path().join("journal.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // A key restored readable by others is made the owner's only at the next open.
    let written = std::fs::read(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Store::open(dir.path()).unwrap());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(std::fs::read(&key).unwrap(), written);
    assert!(verify_folder(dir.path()).is_ok());
    std::fs::remove_file(&key).unwrap();
    let error = verify_folder(dir.path()).unwrap_err().to_string();
    assert!(error.contains("journal.key is missing"), "{error}");
    assert!(!key.exists(), "checking made a key");
    assert!(create_secret_file(&key, b"x").is_ok());
    assert!(
        create_secret_file(&key, b"y").is_err(),
        "an existing key is never replaced"
    );
    assert_eq!(std::fs::read(&key).unwrap(), b"x");
}

/// Held while set: the reader thread of every store waits before each read it is handed. Set
/// only under [`ON_CUE`].
pub(crate) static READS_HELD: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A verification (which reads the whole journal, millions of entries on a real hub) or a
/// journal query runs beside the commits, not between them: while one is under way, messages
/// are still accepted.
#[tokio::test]
async fn messages_are_accepted_while_the_journal_is_being_verified() {
    let _alone = ON_CUE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let store = std::sync::Arc::new(store);
    READS_HELD.store(true, std::sync::atomic::Ordering::SeqCst);
    let verifying = tokio::spawn({
        let store = store.clone();
        async move { store.verify().await }
    });
    let querying = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .journal(JournalQuery::Range {
                    from_ms: i64::MIN,
                    to_ms: i64::MAX,
                    limit: usize::MAX,
                })
                .await
        }
    });
    // Let both reach the store before the message does.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (t, d) = ticket("t1", "m1", &["a"]);
    let accepted = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.accept(t, d, Vec::new()),
    )
    .await;
    let still_reading = !verifying.is_finished() && !querying.is_finished();
    READS_HELD.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        matches!(accepted, Ok(Ok(Accepted::New { .. }))),
        "accepted while a verification was under way: {accepted:?}"
    );
    assert!(still_reading, "the reads were held");
    assert_eq!(verifying.await.unwrap().unwrap().first_problem, None);
    querying.await.unwrap().unwrap();
}

/// Entries added to a delivery after its admission's retention ended (a dead letter replayed
/// late) expire too: they have an expiry row of their own, since the admission that would have
/// taken them along is a stub already.
#[tokio::test]
async fn entries_added_after_retention_ended_expire_too() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let (t, d, j) = journalled("t1", 42, &[("a", 5_000)]);
    store.accept(t, d, j).await.unwrap();
    // The submission and the admission.
    assert_eq!(store.expire(5_000, 100).await.unwrap(), 2);
    store.change(given_up(1)).await.unwrap();
    store.change(Change::Replay { seq: 1 }).await.unwrap();
    store
        .change(Change::Delivered {
            seq: 1,
            at_ms: 6_000,
        })
        .await
        .unwrap();
    assert_eq!(store.expire(6_000, 100).await.unwrap(), 3);
    let report = store.verify().await.unwrap();
    assert_eq!((report.entries, report.stubs), (5, 5));
    assert_eq!(report.first_problem, None);
}

/// A change that fails changes nothing: a delivery row that does not decode stays as it was
/// (it was once removed with no journal entry). And an entry due for retention that does not
/// decode does not stop retention of the others.
#[test]
fn damaged_rows_fail_their_change_and_do_not_stop_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("hub.redb")).unwrap();
    crate::tables::init_tables(&db).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut tables = crate::tables::Tables::open(&txn).unwrap();
        tables.deliveries.insert(1, &[0xff, 0xff][..]).unwrap();
        let failed = crate::writer::change_one(&mut tables, Change::Delivered { seq: 1, at_ms: 5 });
        assert!(matches!(failed, Err(StoreError::Damaged(_))), "{failed:?}");
        assert_eq!(
            tables.deliveries.get(1).unwrap().unwrap().value(),
            &[0xff, 0xff]
        );
        // Retention: entry 1 does not decode, entry 2 does; both are due.
        tables.journal.insert(1, &[0xff, 0xff][..]).unwrap();
        tables.expiry.insert((10, 1), ()).unwrap();
        let good = JournalEntry {
            number: 2,
            keep_until_ms: 10,
            ..Default::default()
        };
        tables
            .journal
            .insert(2, good.encode_to_vec().as_slice())
            .unwrap();
        tables.expiry.insert((10, 2), ()).unwrap();
        assert_eq!(
            crate::writer::expire(&mut tables, &[7; 32], 10, 100).unwrap(),
            1
        );
        assert!(tables.expiry.is_empty().unwrap());
        assert!(read(&tables.journal, 2).removed);
    }
    txn.commit().unwrap();
}

/// A change that fails on the row's missing payload changes nothing: it once listed (or
/// unlisted) the dead letter before failing, inside a group that is still committed.
#[test]
fn a_change_that_fails_on_a_missing_payload_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("hub.redb")).unwrap();
    crate::tables::init_tables(&db).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut tables = crate::tables::Tables::open(&txn).unwrap();
        // Rows 1 and 2 share a payload (row 1) that is missing.
        let pending = DeliveryRow {
            seq: 1,
            ticket: "t1".into(),
            request: request("t1/a", b""),
            payload_seq: 1,
            payload_last: 2,
            ..Default::default()
        };
        let dead = DeliveryRow {
            seq: 2,
            state: DeliveryState::DeadLetter as i32,
            ..pending.clone()
        };
        for row in [&pending, &dead] {
            tables
                .deliveries
                .insert(row.seq, row.encode_to_vec().as_slice())
                .unwrap();
        }
        tables.dead.insert(2, ()).unwrap();
        for (change, row) in [(given_up(1), &pending), (Change::Replay { seq: 2 }, &dead)] {
            let failed = crate::writer::change_one(&mut tables, change);
            assert!(matches!(failed, Err(StoreError::Damaged(_))), "{failed:?}");
            let stored = tables.deliveries.get(row.seq).unwrap().unwrap();
            assert_eq!(stored.value(), row.encode_to_vec().as_slice());
        }
        let listed: Vec<u64> = tables
            .dead
            .iter()
            .unwrap()
            .map(|item| item.unwrap().0.value())
            .collect();
        assert_eq!(listed, [2], "the dead letters as they were");
    }
    txn.commit().unwrap();
}

/// A submission takes the candidates it names, and an admission its follow-ups (none of which
/// has an expiry row of its own), with it at retention, even when another entry of its ticket
/// no longer decodes: that entry once failed the pass after the admission's stub was made, and
/// the follow-ups then stayed for good. Here the submission itself does not decode: its
/// admission is found after it, as the store writes them, and still goes.
#[tokio::test]
async fn follow_ups_expire_with_their_admission_past_a_damaged_entry() {
    let dir = tempfile::tempdir().unwrap();
    // Retention ends after the follow-ups are written: they go with their admission.
    let keep = now_ms() + 3_600_000;
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        // Entries 1 (the submission) and 2 (the admission), then 3 and 4.
        let (t, d, j) = journalled("t1", 42, &[("a", keep)]);
        store.accept(t, d, j).await.unwrap();
        let attempt = Change::Attempted {
            seq: 1,
            attempts: 1,
            last_error: "unavailable".into(),
            next_attempt_ms: 0,
        };
        store.change(attempt).await.unwrap();
        store
            .change(Change::Delivered { seq: 1, at_ms: 5 })
            .await
            .unwrap();
    }
    tamper(dir.path(), |journal| {
        journal.insert(1, &[0xff, 0xff][..]).unwrap();
    });
    let passes = {
        let (store, _) = Store::open(dir.path()).unwrap();
        [store.expire(keep, 100).await, store.expire(keep, 100).await]
    };
    let db = Database::create(dir.path().join("hub.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let journal = txn.open_table(JOURNAL).unwrap();
    let stubs: Vec<(i32, bool)> = (2..=4)
        .map(|n| {
            let e = JournalEntry::decode(journal.get(n).unwrap().unwrap().value()).unwrap();
            (e.kind, e.removed)
        })
        .collect();
    let (adm, att, del) = (
        EntryKind::Admission as i32,
        EntryKind::Attempt as i32,
        EntryKind::Delivery as i32,
    );
    assert_eq!(stubs, [(adm, true), (att, true), (del, true)]);
    assert!(
        matches!(passes, [Ok(3), Ok(0)]),
        "the damaged entry does not stop retention: {passes:?}"
    );
}

/// A ticket row that does not decode stays, and the older tickets after it are still forgotten.
#[test]
fn a_damaged_ticket_row_does_not_stop_ticket_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("hub.redb")).unwrap();
    crate::tables::init_tables(&db).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut tables = crate::tables::Tables::open(&txn).unwrap();
        tables.tickets.insert("t1", &[0xff, 0xff][..]).unwrap();
        for (id, at_ms) in [("t2", 1_000), ("t3", 5_000)] {
            let (mut row, _) = ticket(id, &format!("m-{id}"), &["a"]);
            row.accepted_at_ms = at_ms;
            tables
                .tickets
                .insert(id, row.encode_to_vec().as_slice())
                .unwrap();
            let key = crate::writer::message_key(&row);
            tables.message_ids.insert(key.as_str(), id).unwrap();
        }
        let forgotten = crate::writer::forget_tickets(&mut tables, 2_000, 100);
        assert!(matches!(forgotten, Ok(1)), "{forgotten:?}");
        let left: Vec<String> = tables
            .tickets
            .iter()
            .unwrap()
            .map(|item| item.unwrap().0.value().to_owned())
            .collect();
        assert_eq!(left, ["t1", "t3"], "the damaged row stays, t2 goes");
        assert!(tables.message_ids.get("s\0m-t2").unwrap().is_none());
        assert!(tables.message_ids.get("s\0m-t3").unwrap().is_some());
    }
    txn.commit().unwrap();
}

/// A journal that holds entries is never given a new key: every seal in it would then fail
/// verification for good. Without its key the store does not open and names the file; an empty
/// journal gets its key at the first start.
#[tokio::test]
async fn a_journal_with_entries_is_not_given_a_new_key() {
    let dir = journal_of(300, |_| 0).await;
    let key = dir.path().join("journal.key");
    std::fs::remove_file(&key).unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::Damaged(error)) => {
            assert!(error.contains("journal.key is missing"), "{error}");
        }
        other => panic!("opened without the journal's key: {other:?}"),
    }
    assert!(
        !key.exists(),
        "a new key was made for a journal with entries"
    );
    let fresh = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(fresh.path()).unwrap();
    drop(store);
    assert_eq!(
        std::fs::read(fresh.path().join("journal.key"))
            .unwrap()
            .len(),
        32
    );
}

/// A contact file is registered once per contact centre, checked in the commit itself: two
/// registrations sent at once cannot both succeed; another centre's file of the same id can.
#[tokio::test]
async fn a_contact_file_is_registered_once_per_centre_even_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let file = |centre: &str, niss: u64| JournalEntry {
        kind: journal::EntryKind::ContactFile as i32,
        sender: centre.into(),
        contact_file: "CF-1".into(),
        niss,
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        store.append(file("centre-a", 1000)),
        store.append(file("centre-a", 1000))
    );
    assert!(
        matches!(
            (&a, &b),
            (Ok(()), Err(StoreError::AlreadyRegistered(_)))
                | (Err(StoreError::AlreadyRegistered(_)), Ok(()))
        ),
        "{a:?} {b:?}"
    );
    store.append(file("centre-b", 2000)).await.unwrap();
    let found = store
        .journal(JournalQuery::ContactFile {
            institution: "centre-b".into(),
            id: "CF-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(found.iter().map(|e| e.niss).collect::<Vec<_>>(), [2000]);
    assert_eq!(store.verify().await.unwrap().first_problem, None);
}

/// A data file the store cannot read back is refused at start, named, and left byte for byte
/// as it was; the same file undamaged opens with everything in it. Each damage is made to the
/// file as a killed hub leaves it (copied while the store has it open). redb's header: the
/// magic number at 0, the god byte at 9 (bit 0: which commit slot is the latest; bit 1: a
/// repair is needed, set while the file is open), two 128-byte commit slots at 64 and 192,
/// each opening with its format version and ending with a 16-byte checksum.
#[tokio::test]
async fn a_damaged_data_file_is_refused_at_start_and_left_as_it_was() {
    let intact = {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let (t, d) = ticket("t1", "m1", &["a", "b"]);
        store.accept(t, d, Vec::new()).await.unwrap();
        std::fs::read(dir.path().join("hub.redb")).unwrap()
    };
    assert_ne!(intact[9] & 2, 0, "an open file is marked for repair");
    type Damage = fn(&mut Vec<u8>);
    let cases: [(&str, Damage); 4] = [
        ("not a redb file", |file| {
            file[..16].copy_from_slice(b"not a redb file!")
        }),
        ("cut short to its header page", |file| file.truncate(4096)),
        ("both commit slots fail their checksums", |file| {
            file[64 + 112] ^= 0xff;
            file[192 + 112] ^= 0xff;
        }),
        // redb 4.5 fell back to the blank slot, whose checksum fails, and opened an empty
        // outbox: every accepted delivery gone without a word.
        (
            "the last commit's pages damaged and the slot before it blank",
            |file| {
                let before = 64 + 128 * usize::from(1 - (file[9] & 1));
                file[before + 1..before + 128].fill(0);
                for page in (4096..file.len()).step_by(4096) {
                    file[page + 100] ^= 0xff;
                }
            },
        ),
    ];
    for (case, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let mut damaged = intact.clone();
        damage(&mut damaged);
        std::fs::write(&path, &damaged).unwrap();
        let Err(error) = Store::open(dir.path()) else {
            panic!("{case}: opened as if it were whole")
        };
        let StoreError::DamagedFile { file, .. } = &error else {
            panic!("{case}: {error}")
        };
        assert_eq!(file, &path, "{case}");
        assert!(error.to_string().contains("backup"), "{case}: {error}");
        assert!(
            std::fs::read(&path).unwrap() == damaged,
            "{case}: the refused open changed the file"
        );
        std::fs::write(&path, &intact).unwrap();
        let (_, recovered) = Store::open(dir.path()).unwrap();
        let pending: Vec<u64> = recovered.pending.iter().map(|d| d.seq).collect();
        assert_eq!(pending, [1, 2], "{case}");
    }
}
