//! The hub's record of tickets: what was decided for each exchange, the chain of relays, and
//! the sender's message ids (for idempotent resubmission).
//!
//! With a store (`bcss-store`), a cache of what the store holds: every ticket is recorded there
//! before `Submit` answers; the ledger holds the tickets with deliveries still to make and
//! those settled in the last minutes ([`Ledger::evict_settled`]), and `Hub::recall` reads the
//! others back from the store when they are asked for. Memory follows the load, not the days
//! tickets are kept. Without a store the ledger is all there is. Either way a ticket is
//! forgotten `storage.ticket_days` after it was accepted (`journal::spawn_retention`). It never
//! holds a payload.

use std::sync::{Arc, Mutex};

use bcss_domain::{Flow, InstitutionIndex, Niss, RefusalReason};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use time::OffsetDateTime;

/// What happened for one candidate recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Passed every check; recorded and waiting for delivery (or, for Explain, would be).
    Accepted,
    Delivered,
    Refused(RefusalReason),
    /// Recorded; the last attempt failed and the hub keeps retrying.
    DeliveryFailed,
    /// Recorded; the hub gave up retrying (see `bcss-hub deadletters`).
    DeadLetter,
}

/// The outcome for one candidate recipient of a ticket.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub institution: Arc<str>,
    pub deliberation: Option<Arc<str>>,
    pub decision: Decision,
    pub delivery_id: Option<String>,
    /// The delivery's sequence number in the store, once recorded.
    pub delivery_seq: Option<u64>,
    pub a_posteriori: bool,
    pub removed_fields: u32,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl Outcome {
    /// An outcome with no delivery behind it (a refusal, say).
    pub fn without_delivery(
        institution: Arc<str>,
        deliberation: Option<Arc<str>>,
        decision: Decision,
    ) -> Outcome {
        Outcome {
            institution,
            deliberation,
            decision,
            delivery_id: None,
            delivery_seq: None,
            a_posteriori: false,
            removed_fields: 0,
            attempts: 0,
            last_error: None,
        }
    }
}

/// One exchange.
#[derive(Debug)]
pub struct TicketRecord {
    pub ticket: Arc<str>,
    pub sender: Arc<str>,
    pub sender_index: InstitutionIndex,
    pub message_id: String,
    pub flow: Flow,
    pub niss: Niss,
    pub relay_of: Option<Arc<str>>,
    pub contact_file: Option<String>,
    pub accepted_at: OffsetDateTime,
    /// Fingerprint of the envelope, to tell a resubmission from a reused id.
    pub fingerprint: u64,
    pub outcomes: Mutex<Vec<Outcome>>,
    /// Tickets that relay this one.
    pub relays: Mutex<Vec<Arc<str>>>,
    /// Whether the ticket is recorded (in the store, or numbered without one): a resubmission
    /// that finds the record while its first submission is still being committed waits for it.
    pub recording: Recording,
}

/// Whether a ticket's first submission got it recorded: under way, recorded, or not (the
/// commit failed, or the store already had the message id, and the record left the ledger).
#[derive(Debug, Default)]
pub struct Recording {
    /// 0 under way, 1 recorded, 2 not recorded.
    state: std::sync::atomic::AtomicU8,
    settled: tokio::sync::Notify,
}

impl Recording {
    const UNDER_WAY: u8 = 0;
    const RECORDED: u8 = 1;
    const NOT_RECORDED: u8 = 2;

    /// A ticket that is recorded already (read back from the store).
    pub fn recorded() -> Recording {
        Recording {
            state: std::sync::atomic::AtomicU8::new(Self::RECORDED),
            settled: tokio::sync::Notify::new(),
        }
    }

    /// Says how the first submission ended, and wakes whoever waits for it. Only the first
    /// call counts (later ones wake nobody).
    pub fn finish(&self, recorded: bool) {
        let state = if recorded {
            Self::RECORDED
        } else {
            Self::NOT_RECORDED
        };
        use std::sync::atomic::Ordering;
        let first = self
            .state
            .compare_exchange(Self::UNDER_WAY, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.settled.notify_waiters();
        }
    }

    /// Whether the first submission has recorded the ticket (false while under way).
    pub fn is_recorded(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::Acquire) == Self::RECORDED
    }

    /// Waits until the first submission ended: true if the ticket is recorded.
    pub async fn wait(&self) -> bool {
        use std::sync::atomic::Ordering;
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the state is read, so a `finish` in between is not missed.
            settled.as_mut().enable();
            match self.state.load(Ordering::Acquire) {
                Self::UNDER_WAY => settled.await,
                state => return state == Self::RECORDED,
            }
        }
    }
}

impl TicketRecord {
    /// When it was accepted, in milliseconds since the Unix epoch (as the store keeps times).
    pub fn accepted_at_ms(&self) -> i64 {
        unix_ms(self.accepted_at)
    }

    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().expect("outcomes lock").clone()
    }

    /// True when nothing is left to do for it: every candidate was delivered, refused or given
    /// up on (a dead letter changes only by an operator's replay, which the store handles).
    pub fn is_settled(&self) -> bool {
        self.outcomes
            .lock()
            .expect("outcomes lock")
            .iter()
            .all(|o| {
                matches!(
                    o.decision,
                    Decision::Delivered | Decision::Refused(_) | Decision::DeadLetter
                )
            })
    }

    /// True when `institution` acknowledged this exchange's delivery (the hub holds the
    /// acknowledgement; a delivery still being made, or whose acknowledgement was lost and is
    /// being retried, is not delivered yet).
    pub fn was_delivered_to(&self, institution: &str) -> bool {
        self.outcomes()
            .iter()
            .any(|o| &*o.institution == institution && o.decision == Decision::Delivered)
    }

    /// True when `institution` took part: sent it or was a candidate recipient.
    pub fn involves(&self, institution: &str) -> bool {
        &*self.sender == institution
            || self
                .outcomes()
                .iter()
                .any(|o| &*o.institution == institution)
    }
}

/// Now, to the millisecond (the store's precision).
pub(crate) fn now_to_the_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).unwrap_or(now)
}

/// `time` in milliseconds since the Unix epoch, as the store keeps times.
pub(crate) fn unix_ms(time: OffsetDateTime) -> i64 {
    (time.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A resubmitted message id.
pub enum Reservation {
    /// First time: go on.
    New,
    /// Same sender, same id, same content: answer with the original.
    Resubmitted(Arc<TicketRecord>),
    /// Same sender, same id, different content.
    Conflict,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// Keyed by tickets the hub numbers itself: foldhash, faster than SipHash on every accept.
    tickets: DashMap<Arc<str>, Arc<TicketRecord>, foldhash::fast::RandomState>,
    /// Keyed by the ids senders choose: the standard library's SipHash, which a sender cannot
    /// steer into one bucket.
    by_message: DashMap<(InstitutionIndex, String), Arc<TicketRecord>>,
}

impl Ledger {
    pub fn get(&self, ticket: &str) -> Option<Arc<TicketRecord>> {
        self.tickets.get(ticket).map(|r| r.clone())
    }

    /// Takes back a record `insert` made, when it could not be stored after all.
    pub fn forget(&self, record: &Arc<TicketRecord>) {
        self.by_message
            .remove_if(&(record.sender_index, record.message_id.clone()), |_, r| {
                Arc::ptr_eq(r, record)
            });
        self.tickets
            .remove_if(&record.ticket, |_, r| Arc::ptr_eq(r, record));
        if let Some(parent) = record.relay_of.as_ref().and_then(|t| self.get(t)) {
            parent
                .relays
                .lock()
                .expect("relays lock")
                .retain(|t| *t != record.ticket);
        }
    }

    /// Forgets the tickets accepted before `cutoff`, and their message ids (a later message
    /// with one of those ids is a new message); returns how many tickets went. Deliveries in
    /// flight keep their own reference to their ticket.
    pub fn forget_accepted_before(&self, cutoff: OffsetDateTime) -> usize {
        let mut forgotten = 0;
        self.tickets.retain(|_, record| {
            let keep = record.accepted_at >= cutoff;
            forgotten += usize::from(!keep);
            keep
        });
        self.by_message
            .retain(|_, record| record.accepted_at >= cutoff);
        forgotten
    }

    /// Lets go of the settled tickets accepted before `before` (the store keeps them, and
    /// `Hub::recall` reads them back); returns how many went.
    pub fn evict_settled(&self, before: OffsetDateTime) -> usize {
        let mut evicted = Vec::new();
        self.tickets.retain(|_, record| {
            let keep = record.accepted_at >= before || !record.is_settled();
            if !keep {
                evicted.push(record.clone());
            }
            keep
        });
        // Not inside `retain`: `insert` locks `by_message` first, then `tickets`.
        for record in &evicted {
            self.by_message
                .remove_if(&(record.sender_index, record.message_id.clone()), |_, r| {
                    Arc::ptr_eq(r, record)
                });
        }
        evicted.len()
    }

    /// Holds `record`, read back from the store, unless the ticket is held already: returns
    /// the record held.
    pub fn hold_recalled(&self, record: TicketRecord) -> Arc<TicketRecord> {
        let record = Arc::new(record);
        // `by_message`, then `tickets`, as `insert` locks them.
        let _message = self
            .by_message
            .entry((record.sender_index, record.message_id.clone()))
            .or_insert_with(|| record.clone());
        self.tickets
            .entry(record.ticket.clone())
            .or_insert_with(|| record.clone())
            .clone()
    }

    /// Number of tickets held.
    pub fn len(&self) -> usize {
        self.tickets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// Records a new exchange unless the sender already used the message id.
    pub fn insert(&self, record: TicketRecord) -> (Reservation, Arc<TicketRecord>) {
        let record = Arc::new(record);
        match self
            .by_message
            .entry((record.sender_index, record.message_id.clone()))
        {
            Entry::Occupied(existing) => {
                let existing = existing.get().clone();
                let reservation = if existing.fingerprint == record.fingerprint {
                    Reservation::Resubmitted(existing.clone())
                } else {
                    Reservation::Conflict
                };
                (reservation, existing)
            }
            Entry::Vacant(slot) => {
                slot.insert(record.clone());
                self.tickets.insert(record.ticket.clone(), record.clone());
                if let Some(parent) = record.relay_of.as_ref().and_then(|t| self.get(t)) {
                    parent
                        .relays
                        .lock()
                        .expect("relays lock")
                        .push(record.ticket.clone());
                }
                (Reservation::New, record)
            }
        }
    }

    /// The whole chain `ticket` belongs to, first hop first.
    pub fn chain(&self, ticket: &str) -> Vec<Arc<TicketRecord>> {
        let Some(mut root) = self.get(ticket) else {
            return Vec::new();
        };
        // Walk up; a chain is short, but bound the walk in case of a cycle.
        for _ in 0..64 {
            match root.relay_of.as_ref().and_then(|t| self.get(t)) {
                Some(parent) => root = parent,
                None => break,
            }
        }
        let mut chain = vec![root];
        let mut next = 0;
        while next < chain.len() && chain.len() < 1024 {
            let relays = chain[next].relays.lock().expect("relays lock").clone();
            chain.extend(relays.iter().filter_map(|t| self.get(t)));
            next += 1;
        }
        chain
    }
}

/// What `institution` may see of a chain of relays (`Ledger::chain`'s order kept): each hop it
/// sent or was a candidate of, the hops its data came through (their ancestors) and the hops its
/// own messages went on to (descendants of a hop it sent). Of a hop it sent, or that descends from
/// one it sent, it sees every candidate's outcome; of any other hop, only its own outcome and
/// those of the institutions that sent a hop it sees. So a candidate of a broadcast never learns
/// which other institutions were candidates, which would tell it who has the person integrated.
pub fn seen_by(
    chain: &[Arc<TicketRecord>],
    institution: &str,
) -> Vec<(Arc<TicketRecord>, Vec<Outcome>)> {
    // Each hop's parent in the chain, found once (a chain may hold up to 1,024 hops).
    let at: std::collections::HashMap<&str, usize> = chain
        .iter()
        .enumerate()
        .map(|(i, h)| (&*h.ticket, i))
        .collect();
    let parent: Vec<Option<usize>> = chain
        .iter()
        .map(|h| h.relay_of.as_deref().and_then(|of| at.get(of).copied()))
        .collect();
    // Walks from `hop` up through its ancestors (bounded: a chain may loop).
    let lineage = |hop: usize| std::iter::successors(Some(hop), |&h| parent[h]).take(chain.len());
    let own: Vec<bool> = chain.iter().map(|h| h.involves(institution)).collect();
    let mut visible = own.clone();
    let mut from_own_message = vec![false; chain.len()];
    for (i, &is_own) in own.iter().enumerate() {
        if is_own {
            lineage(i).for_each(|h| visible[h] = true);
        }
        if lineage(i).any(|h| &*chain[h].sender == institution) {
            from_own_message[i] = true;
            visible[i] = true;
        }
    }
    let links: Vec<&str> = chain
        .iter()
        .zip(&visible)
        .filter(|(_, v)| **v)
        .map(|(h, _)| &*h.sender)
        .collect();
    chain
        .iter()
        .enumerate()
        .filter(|(i, _)| visible[*i])
        .map(|(i, hop)| {
            let outcomes = hop
                .outcomes()
                .into_iter()
                .filter(|o| {
                    from_own_message[i]
                        || &*o.institution == institution
                        || links.contains(&&*o.institution)
                })
                .collect();
            (hop.clone(), outcomes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ticket: &str, message_id: &str, accepted_at: OffsetDateTime) -> TicketRecord {
        TicketRecord {
            ticket: ticket.into(),
            sender: "cpas-liege".into(),
            sender_index: InstitutionIndex(0),
            message_id: message_id.into(),
            flow: Flow::A052,
            niss: Niss::compose(850_730, 33, false).expect("valid NISS"),
            relay_of: None,
            contact_file: None,
            accepted_at,
            fingerprint: 7,
            outcomes: Mutex::new(Vec::new()),
            relays: Mutex::new(Vec::new()),
            recording: Recording::recorded(),
        }
    }

    fn decided(record: TicketRecord, decisions: &[Decision]) -> TicketRecord {
        *record.outcomes.lock().unwrap() = decisions
            .iter()
            .map(|&decision| Outcome::without_delivery("cpas-namur".into(), None, decision))
            .collect();
        record
    }

    #[test]
    fn a_chain_shows_each_institution_its_part_only() {
        let now = OffsetDateTime::now_utc();
        // (ticket, relay of, sender, candidates): x broadcasts to a, b and c; b and a relay on.
        let hops: [(&str, Option<&str>, &str, &[&str]); 3] = [
            ("t1", None, "x", &["a", "b", "c"]),
            ("t2", Some("t1"), "b", &["w"]),
            ("t3", Some("t1"), "a", &["z"]),
        ];
        let chain: Vec<Arc<TicketRecord>> = hops
            .iter()
            .map(|&(ticket, relay_of, sender, candidates)| {
                let record = TicketRecord {
                    sender: sender.into(),
                    relay_of: relay_of.map(Into::into),
                    ..record(ticket, ticket, now)
                };
                *record.outcomes.lock().unwrap() = candidates
                    .iter()
                    .map(|&c| Outcome::without_delivery(c.into(), None, Decision::Delivered))
                    .collect();
                Arc::new(record)
            })
            .collect();
        // (who asks, the hops and outcomes it sees)
        type Seen<'a> = &'a [(&'a str, &'a [&'a str])];
        let table: [(&str, Seen); 6] = [
            (
                "x",
                &[("t1", &["a", "b", "c"]), ("t2", &["w"]), ("t3", &["z"])],
            ),
            ("a", &[("t1", &["a"]), ("t3", &["z"])]),
            ("b", &[("t1", &["b"]), ("t2", &["w"])]),
            ("c", &[("t1", &["c"])]),
            ("w", &[("t1", &["b"]), ("t2", &["w"])]),
            ("nobody", &[]),
        ];
        for (who, expected) in table {
            let seen: Vec<(String, Vec<String>)> = seen_by(&chain, who)
                .into_iter()
                .map(|(hop, outcomes)| {
                    let names = outcomes.iter().map(|o| o.institution.to_string());
                    (hop.ticket.to_string(), names.collect())
                })
                .collect();
            let expected: Vec<(String, Vec<String>)> = expected
                .iter()
                .map(|(t, o)| (t.to_string(), o.iter().map(|s| s.to_string()).collect()))
                .collect();
            assert_eq!(seen, expected, "{who}");
        }
    }

    #[test]
    fn settled_tickets_are_evicted_and_can_be_held_again() {
        let now = OffsetDateTime::now_utc();
        let minute = time::Duration::minutes(1);
        let ledger = Ledger::default();
        let refused = Decision::Refused(RefusalReason::NotIntegrated);
        // (ticket, accepted minutes ago, decisions, evicted?)
        let table: [(&str, i32, &[Decision], bool); 6] = [
            ("delivered-old", 10, &[Decision::Delivered], true),
            (
                "mixed-old",
                10,
                &[Decision::Delivered, refused, Decision::DeadLetter],
                true,
            ),
            (
                "pending-old",
                10,
                &[Decision::Delivered, Decision::Accepted],
                false,
            ),
            ("failing-old", 10, &[Decision::DeliveryFailed], false),
            ("delivered-new", 1, &[Decision::Delivered], false),
            ("nothing-old", 10, &[], true),
        ];
        for (ticket, ago, decisions, _) in table {
            let record = decided(record(ticket, ticket, now - minute * ago), decisions);
            assert!(matches!(ledger.insert(record).0, Reservation::New));
        }
        assert_eq!(ledger.evict_settled(now - minute * 5), 3);
        for (ticket, _, _, evicted) in table {
            assert_eq!(ledger.get(ticket).is_none(), evicted, "{ticket}");
        }
        // An evicted message id is no longer answered from memory (the store answers it).
        let (reservation, _) = ledger.insert(record("again", "delivered-old", now));
        assert!(matches!(reservation, Reservation::New));
        // Held again from the store: one record per ticket, whoever holds it first.
        let first = ledger.hold_recalled(record("mixed-old", "mixed-old", now - minute * 10));
        let second = ledger.hold_recalled(record("mixed-old", "mixed-old", now - minute * 10));
        assert!(Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&ledger.get("mixed-old").unwrap(), &first));
        let (reservation, _) = ledger.insert(record("other", "mixed-old", now));
        assert!(matches!(reservation, Reservation::Resubmitted(_)));
    }

    #[test]
    fn tickets_accepted_before_the_cutoff_are_forgotten_with_their_message_ids() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let ledger = Ledger::default();
        // (ticket, message id, accepted days ago)
        for (ticket, message_id, days_ago) in [("t1", "m1", 40), ("t2", "m2", 31), ("t3", "m3", 29)]
        {
            let (reservation, _) = ledger.insert(record(ticket, message_id, now - day * days_ago));
            assert!(matches!(reservation, Reservation::New));
        }
        assert_eq!(ledger.forget_accepted_before(now - day * 30), 2);
        assert_eq!(ledger.forget_accepted_before(now - day * 30), 0);
        assert!(ledger.get("t1").is_none() && ledger.get("t2").is_none());
        assert!(ledger.get("t3").is_some());
        assert_eq!(ledger.len(), 1);
        // A forgotten message id is new again; a kept one is still a resubmission.
        let (reservation, _) = ledger.insert(record("t4", "m1", now));
        assert!(matches!(reservation, Reservation::New));
        let (reservation, existing) = ledger.insert(record("t5", "m3", now));
        assert!(matches!(reservation, Reservation::Resubmitted(_)));
        assert_eq!(&*existing.ticket, "t3");
    }
}
