//! The submission pipeline: validate → route → check integration → filter → record → deliver.
//!
//! Each step is a method named after it. The policy snapshot is taken once per submission, so
//! a reload never changes the rules half-way through a message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bcss_directory::Directory;
use bcss_domain::decision::{Message, check_recipient};
use bcss_domain::{Flow, InstitutionIndex, Niss, Period, RefusalReason};
use bcss_policy::{Grant, Institution, Policy};
use bcss_proto::flows::v1::Period as WirePeriod;
use bcss_proto::hub::view::v1::envelope_view::Payload;
use bcss_proto::hub::view::v1::{DeliveryView, EnvelopeView, delivery_view};
use bytes::Bytes;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::delivery::Deliverer;
use crate::error::{InputError, quoted};
use crate::ledger::{Decision, Ledger, Outcome, Recording, Reservation, TicketRecord};
use crate::limits::Limits;
use crate::outbox::{Job, Outbox, RetryPolicy};
use crate::privacy::PersonKey;
use crate::telemetry::{self, Stage};
use bcss_store::{
    Accepted, DamagedRow, DeliveryRow, DeliveryState, EntryKind, JournalEntry, OutcomeRow,
    Recovered, Store, StoreError, StoredTicket, TicketRow,
};
use prost::Message as _;

/// A validated envelope.
#[derive(Debug)]
pub struct Validated {
    pub message_id: String,
    pub flow: Flow,
    pub niss: Niss,
    pub period: Period,
    pub wire_period: WirePeriod,
    pub addressee: Option<InstitutionIndex>,
    pub relay_of: Option<Arc<TicketRecord>>,
    pub contact_file: Option<String>,
    pub payload: Bytes,
    pub fingerprint: u64,
}

/// The plan for one candidate recipient.
#[derive(Debug)]
pub struct Planned {
    pub institution: InstitutionIndex,
    pub institution_id: Arc<str>,
    pub result: Result<Admitted, (RefusalReason, Option<Arc<str>>)>,
}

/// An admitted recipient and what it will receive.
#[derive(Debug)]
pub struct Admitted {
    pub deliberation: Arc<str>,
    pub a_posteriori: bool,
    pub payload: Bytes,
    pub removed_fields: u32,
    /// Explain only: the paths removed.
    pub removed_paths: Vec<String>,
}

/// Where a reload reads the policy from: the files of `hub.toml`, plus what the caller adjusts
/// (the demo and tests point institutions at ephemeral ports).
pub type PolicySource = Box<dyn Fn() -> Result<Policy, bcss_policy::ConfigError> + Send + Sync>;

/// What the hub needs besides policy, directory and deliverer.
pub struct HubParts {
    pub limits: Limits,
    pub person_key: PersonKey,
    /// `None`: the policy cannot be reloaded (it was not read from files).
    pub policy_source: Option<PolicySource>,
    /// `None`: deliveries are not durable (benchmarks of the rest of the path).
    pub store: Option<Arc<Store>>,
    /// What the store held at start.
    pub recovered: Recovered,
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for HubParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubParts")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The policy in force after a reload.
#[derive(Clone, Copy, Debug)]
pub struct Reloaded {
    pub generation: u64,
    pub institutions: usize,
    pub deliberations: usize,
}

/// Why a reload was refused; the running policy stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this hub's policy was not read from files, so it cannot be reloaded")]
    NoSource,
    #[error(transparent)]
    Invalid(#[from] bcss_policy::ConfigError),
    #[error("{0}")]
    Incompatible(String),
}

/// The hub: policy, directory, ledger and outbox.
#[derive(Debug)]
pub struct Hub {
    policy: Arc<ArcSwap<Policy>>,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    directory: Arc<Directory>,
    ledger: Ledger,
    outbox: Arc<Outbox>,
    parts: HubParts,
}

impl Hub {
    /// Builds the hub and resumes what the store held: its tickets back in the ledger, its
    /// pending deliveries back in the outbox. Needs a tokio runtime (it starts the workers).
    pub fn new(
        policy: Policy,
        directory: Arc<Directory>,
        deliverer: Deliverer,
        mut parts: HubParts,
    ) -> Hub {
        let recovered = std::mem::take(&mut parts.recovered);
        let policy = Arc::new(ArcSwap::from_pointee(policy));
        let outbox = Arc::new(Outbox::new(
            parts.store.clone(),
            deliverer,
            policy.clone(),
            directory.clone(),
            parts.retry.clone(),
        ));
        let hub = Hub {
            policy,
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
            directory,
            ledger: Ledger::default(),
            outbox,
            parts,
        };
        hub.resume(recovered);
        hub
    }

    /// Puts what the store held back in the ledger and the outbox.
    fn resume(&self, recovered: Recovered) {
        let policy = self.policy();
        let pending: std::collections::HashMap<u64, &DeliveryRow> =
            recovered.pending.iter().map(|d| (d.seq, d)).collect();
        let dead: std::collections::HashSet<u64> = recovered.dead.iter().copied().collect();
        let mut unreadable = std::collections::HashSet::new();
        for row in &recovered.damaged {
            tracing::error!(message = "A stored row could not be read back: it stays on disk as it is, and the rest resumed.", row = %row);
            if let DamagedRow::Delivery(seq) = row {
                unreadable.insert(*seq);
            }
        }
        let mut records = std::collections::HashMap::new();
        for row in recovered.tickets {
            match restore_record(&policy, row, &pending, &dead, &unreadable) {
                Some(record) => {
                    let (_, record) = self.ledger.insert(record);
                    records.insert(record.ticket.clone(), record);
                }
                None => tracing::warn!(message = "A stored ticket could not be read back."),
            }
        }
        let resumed = recovered.pending.len();
        if resumed > 0 {
            self.outbox.reserve_unchecked(resumed);
        }
        for row in recovered.pending {
            let record = records.get(row.ticket.as_str()).cloned();
            let age_from_ms = row.age_from_ms();
            self.outbox.enqueue(Job {
                seq: row.seq,
                recipient: row.recipient.as_str().into(),
                niss: row.niss,
                request: row.request,
                attempts: row.attempts,
                accepted_at_ms: age_from_ms,
                next_attempt_ms: row.next_attempt_ms,
                checked: false,
                record,
                notify: None,
            });
        }
        if !records.is_empty() || resumed > 0 {
            tracing::info!(
                message = "Resumed from the store.",
                tickets = records.len(),
                pending_deliveries = resumed,
            );
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Re-reads the policy, validates it in full and swaps it in. Submissions in flight keep
    /// the snapshot they took; an invalid policy changes nothing.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let result = self.reload_policy().await;
        telemetry::reloaded(result.is_ok(), self.generation());
        result
    }

    async fn reload_policy(&self) -> Result<Reloaded, ReloadError> {
        let source = self
            .parts
            .policy_source
            .as_ref()
            .ok_or(ReloadError::NoSource)?;
        let _one_at_a_time = self.reload_lock.lock().await;
        let next = source()?;
        self.policy()
            .check_successor(&next)
            .map_err(ReloadError::Incompatible)?;
        let reloaded = Reloaded {
            generation: self.generation.load(Ordering::Relaxed) + 1,
            institutions: next.institutions().len(),
            deliberations: next.deliberations().len(),
        };
        self.policy.store(Arc::new(next));
        self.generation
            .store(reloaded.generation, Ordering::Relaxed);
        tracing::info!(
            message = "Policy reloaded.",
            generation = reloaded.generation,
            institutions = reloaded.institutions,
            deliberations = reloaded.deliberations,
        );
        Ok(reloaded)
    }

    /// 1 for the policy loaded at start, one more per successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Opens one call on the caller's connection, within `limits.max_concurrent_streams`.
    pub fn open_stream<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<crate::limits::StreamSlot, InputError> {
        self.parts.limits.open_stream(request.remote_addr())
    }

    /// What one caller may ask (the rate per institution, fan-out, calls per connection).
    pub fn limits(&self) -> &Limits {
        &self.parts.limits
    }

    /// The keyed hash that stands for a person in logs.
    pub fn person_key(&self) -> &PersonKey {
        &self.parts.person_key
    }

    /// The current policy snapshot.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// [`Hub::submit`], run to its end even if the caller stops waiting. A call is dropped
    /// when its client resets it or its `grpc-timeout` passes; a submission dropped while the
    /// store commits it would leave a ticket on disk whose deliveries wait for the next
    /// restart, its outbox reservation never released, and a resubmission answered from the
    /// stranded ticket. With a store it therefore runs in a task of its own; without one
    /// nothing is awaited between the ledger entry and the outbox, and it runs in place. The
    /// gRPC services submit through this.
    /// `slot` is the caller's open-call slot (`limits.max_concurrent_streams`): held until the
    /// submission ends, not until the call does, so that calls cancelled at once cannot have
    /// more submissions running than the limit allows.
    pub async fn submit_detached(
        self: &Arc<Self>,
        policy: Arc<Policy>,
        sender: Arc<Institution>,
        envelope: EnvelopeView,
        slot: Arc<crate::limits::StreamSlot>,
    ) -> Result<Arc<TicketRecord>, InputError> {
        if self.outbox.store().is_none() {
            return self.submit(&policy, &sender, envelope).await;
        }
        let hub = self.clone();
        let task = tokio::spawn(async move {
            let _slot = slot;
            hub.submit(&policy, &sender, envelope).await
        });
        match task.await {
            Ok(result) => result,
            Err(failed) => {
                // A panic in the pipeline is a bug; the submission's state is whatever the
                // store committed, and the sender may resubmit under the same message id.
                tracing::error!(message = "Submission task failed.", error = %failed);
                Err(InputError::Internal)
            }
        }
    }

    /// Submits an envelope from `sender`: decides, records durably, hands the deliveries to
    /// the outbox, and returns the ticket record with every recipient's outcome (waiting a
    /// little for the first attempts, so that a quick recipient is reported delivered).
    pub async fn submit(
        &self,
        policy: &Policy,
        sender: &Institution,
        envelope: EnvelopeView,
    ) -> Result<Arc<TicketRecord>, InputError> {
        let started = std::time::Instant::now();
        let flow = flow_label(envelope.flow);
        // One span per submission; it carries the ticket once there is one, never the person.
        let span = tracing::info_span!(
            "submit",
            sender = %sender.id,
            flow,
            ticket = tracing::field::Empty
        );
        let result =
            tracing::Instrument::instrument(self.submit_inner(policy, sender, envelope), span)
                .await;
        // An index into telemetry::SUBMIT_OUTCOMES.
        let outcome = match &result {
            Ok((_, true)) => 0,
            Ok((_, false)) => 1,
            Err(_) => 2,
        };
        telemetry::submit_metrics().submitted(flow, outcome, started.elapsed().as_secs_f64());
        result.map(|(record, _)| record)
    }

    /// [`Hub::submit`]; the flag says whether the record is new (false: a resubmission).
    async fn submit_inner(
        &self,
        policy: &Policy,
        sender: &Institution,
        envelope: EnvelopeView,
    ) -> Result<(Arc<TicketRecord>, bool), InputError> {
        self.parts.limits.admit(sender)?;
        let stage = std::time::Instant::now();
        self.recall_relayed(&envelope).await?;
        let message = self.validate(policy, sender, envelope)?;
        // The person's directory slot comes into cache while the ticket and the route are made.
        self.directory.prefetch(message.niss);
        stage_done(Stage::Validate, stage);
        let ticket: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        tracing::Span::current().record("ticket", tracing::field::display(&ticket));
        // The journal names the fields filtering removed; without a journal, nobody needs them.
        let name_removed = self.outbox.store().is_some_and(|store| store.journals());
        let mut times = PlanTimes::default();
        let plans = self.plan(policy, sender, &message, name_removed, &mut times)?;
        times.record();
        // At most a few turns: another submission of the same message waits for the first.
        let mut turns = 0;
        let record = loop {
            turns += 1;
            let record = TicketRecord {
                ticket: ticket.clone(),
                sender: sender.id.clone(),
                sender_index: sender.index,
                message_id: message.message_id.clone(),
                flow: message.flow,
                niss: message.niss,
                relay_of: message.relay_of.as_ref().map(|r| r.ticket.clone()),
                contact_file: message.contact_file.clone(),
                // To the millisecond, as the store keeps it: a ticket read back says the same.
                accepted_at: crate::ledger::now_to_the_ms(),
                fingerprint: message.fingerprint,
                outcomes: Mutex::new(plans.iter().map(|p| initial_outcome(p, &ticket)).collect()),
                relays: Mutex::new(Vec::new()),
                recording: Recording::default(),
            };
            match self.ledger.insert(record) {
                (Reservation::New, record) => break record,
                (Reservation::Resubmitted(original), _) => {
                    // Answered with the original's ticket only once that ticket is recorded.
                    if original.recording.wait().await {
                        return Ok((original, false));
                    }
                    // The first submission ended without recording a ticket: its commit
                    // failed, the outbox was full, or the store already had this message id
                    // from before (its ticket no longer held). Submitted again on its own,
                    // this one gets that ticket, or that refusal, itself.
                    if turns >= 3 {
                        return Err(InputError::StoreUnavailable);
                    }
                }
                (Reservation::Conflict, _) => {
                    return Err(InputError::DuplicateMessageId(message.message_id));
                }
            }
        };
        // Without a journal (or a store), nobody reads journal entries: none are made.
        let journal = if name_removed {
            journal_entries(policy, &message, &record, &plans)
        } else {
            Vec::new()
        };
        // Whatever way this ends, whoever waits on the record hears of it.
        let recording = FinishRecording {
            record: record.clone(),
            ledger: &self.ledger,
        };
        let deliveries = self.deliveries(policy, sender, &message, &record, &plans);
        // From here, a record that is not recorded leaves the ledger as `recording` drops.
        if let Err(full) = self.outbox.reserve(deliveries.len()) {
            return Err(InputError::OutboxFull {
                limit: full.limit,
                retry_after_ms: 1000,
            });
        }
        let stage = std::time::Instant::now();
        let stored = match self.outbox.store() {
            Some(store) => {
                let rows: Vec<DeliveryRow> =
                    deliveries.iter().map(|(_, row)| row.clone()).collect();
                store.accept(ticket_row(&record), rows, journal).await
            }
            None => Ok(self.outbox.number(deliveries.len())),
        };
        stage_done(Stage::Persist, stage);
        let seqs = match stored {
            Ok(Accepted::New { seqs }) => {
                recording.recorded();
                // Counted once accepted: a resubmission or a refusal for lack of room is not.
                count_plans(&message, &plans);
                seqs
            }
            Ok(Accepted::Existing(stored)) => {
                // Recorded under the same message id, and no longer (or not yet) held. Let go
                // of here, before the stored record takes the message id's place.
                self.outbox.release(deliveries.len());
                self.ledger.forget(&record);
                if stored.row.fingerprint != record.fingerprint {
                    return Err(InputError::DuplicateMessageId(message.message_id));
                }
                return stored_record(policy, stored)
                    .map(|r| (self.ledger.hold_recalled(r), false))
                    .ok_or(InputError::StoreUnavailable);
            }
            Err(error) => {
                tracing::error!(message = "Submission not recorded: the store refused it.", ticket = %record.ticket, %error);
                self.outbox.release(deliveries.len());
                return Err(InputError::StoreUnavailable);
            }
        };
        tracing::info!(
            message = "Message accepted.",
            ticket = %record.ticket,
            sender = %sender.id,
            flow = %message.flow,
            person = %self.parts.person_key.person(message.niss),
            recipients = deliveries.len(),
            refused = record.outcomes().len() - deliveries.len(),
        );
        let mut first_attempts = Vec::with_capacity(deliveries.len());
        {
            let mut outcomes = record.outcomes.lock().expect("outcomes lock");
            for ((slot, _), seq) in deliveries.iter().zip(&seqs) {
                outcomes[*slot].delivery_seq = Some(*seq);
            }
        }
        for ((_, row), seq) in deliveries.into_iter().zip(seqs) {
            let (notify, done) = tokio::sync::oneshot::channel();
            first_attempts.push(done);
            self.outbox.enqueue(Job {
                seq,
                recipient: row.recipient.as_str().into(),
                niss: row.niss,
                request: row.request,
                attempts: 0,
                accepted_at_ms: row.accepted_at_ms,
                next_attempt_ms: 0,
                checked: true,
                record: Some(record.clone()),
                notify: Some(notify),
            });
        }
        let wait = self.outbox.retry_policy().reply_wait;
        if !wait.is_zero() && !first_attempts.is_empty() {
            let _ =
                tokio::time::timeout(wait, futures_util::future::join_all(first_attempts)).await;
        }
        Ok((record, true))
    }

    /// The decision `submit` would take, without recording or delivering.
    pub async fn explain(
        &self,
        policy: &Policy,
        sender: &Institution,
        envelope: EnvelopeView,
    ) -> Result<Vec<Planned>, InputError> {
        self.parts.limits.admit(sender)?;
        self.recall_relayed(&envelope).await?;
        let message = self.validate(policy, sender, envelope)?;
        self.plan(policy, sender, &message, true, &mut PlanTimes::default())
    }

    /// The ticket `envelope` relays, held in the ledger for `validate` (read back from the
    /// store if it was let go).
    async fn recall_relayed(&self, envelope: &EnvelopeView) -> Result<(), InputError> {
        // A relay_of that is no ticket costs no store read: `validate` refuses it.
        if let Some(ticket) = envelope.relay_of.as_deref().filter(|t| printable_token(t)) {
            self.recall(ticket).await.map_err(|error| {
                tracing::error!(message = "A relayed ticket could not be read from the store.", %error);
                InputError::StoreUnavailable
            })?;
        }
        Ok(())
    }

    /// The ticket's record: the ledger's, or read back from the store (and held until the
    /// next eviction). `None` if it is unknown or forgotten.
    pub async fn recall(&self, ticket: &str) -> Result<Option<Arc<TicketRecord>>, StoreError> {
        if let Some(record) = self.ledger.get(ticket) {
            return Ok(Some(record));
        }
        let Some(store) = self.outbox.store() else {
            return Ok(None);
        };
        Ok(self
            .recall_stored(store, ticket)
            .await?
            .map(|(record, _)| record))
    }

    /// The ticket's record and its relays, from the store (the record held in the ledger if
    /// there is one: its outcomes are the freshest).
    async fn recall_stored(
        &self,
        store: &Store,
        ticket: &str,
    ) -> Result<Option<(Arc<TicketRecord>, Vec<String>)>, StoreError> {
        // Tickets are UUIDs: anything else is unknown without asking the store's thread.
        if uuid::Uuid::try_parse(ticket).is_err() {
            return Ok(None);
        }
        let Some(mut stored) = store.ticket(ticket).await? else {
            return Ok(None);
        };
        let relays = std::mem::take(&mut stored.relays);
        let record = match self.ledger.get(ticket) {
            Some(record) => record,
            None => match stored_record(&self.policy(), stored) {
                Some(record) => self.ledger.hold_recalled(record),
                None => {
                    tracing::warn!(message = "A stored ticket could not be read back.");
                    return Ok(None);
                }
            },
        };
        Ok(Some((record, relays)))
    }

    /// The whole chain `ticket` belongs to, first hop first. With a store the chain is read
    /// from it (the ledger holds only some of its tickets); without, from the ledger.
    pub async fn chain(&self, ticket: &str) -> Result<Vec<Arc<TicketRecord>>, StoreError> {
        let Some(store) = self.outbox.store() else {
            return Ok(self.ledger.chain(ticket));
        };
        let Some(mut root) = self.recall_stored(store, ticket).await? else {
            return Ok(Vec::new());
        };
        // Walk up; a chain is short, but bound the walk in case of a cycle.
        for _ in 0..64 {
            let Some(parent) = root.0.relay_of.clone() else {
                break;
            };
            match self.recall_stored(store, &parent).await? {
                Some(hop) => root = hop,
                None => break,
            }
        }
        let (record, relays) = root;
        let mut chain = vec![record];
        let mut waiting = std::collections::VecDeque::from(relays);
        while let Some(ticket) = waiting.pop_front() {
            if chain.len() >= 1024 {
                break;
            }
            if let Some((record, relays)) = self.recall_stored(store, &ticket).await? {
                chain.push(record);
                waiting.extend(relays);
            }
        }
        Ok(chain)
    }

    /// Step 1: everything about the envelope that does not depend on the recipients.
    pub fn validate(
        &self,
        policy: &Policy,
        sender: &Institution,
        envelope: EnvelopeView,
    ) -> Result<Validated, InputError> {
        let fingerprint = fingerprint(&envelope);
        let EnvelopeView {
            message_id,
            flow,
            niss,
            period,
            addressee,
            relay_of,
            contact_file,
            payload,
        } = envelope;
        if message_id.is_empty() {
            return Err(InputError::MissingMessageId);
        }
        if !printable_token(&message_id) {
            return Err(InputError::BadMessageId);
        }
        let flow = flow_of(flow).ok_or(InputError::UnknownFlow(flow))?;
        let (carried, payload) = match payload {
            Some(Payload::A052(bytes)) => (Flow::A052, bytes),
            Some(Payload::Dmfa(bytes)) => (Flow::Dmfa, bytes),
            Some(Payload::Dimona(bytes)) => (Flow::Dimona, bytes),
            None => return Err(InputError::MissingPayload),
        };
        if carried != flow {
            return Err(InputError::PayloadFlowMismatch {
                announced: flow,
                carried,
            });
        }
        if !policy.may_send(sender.party(), flow) {
            return Err(InputError::FlowNotAllowed {
                sender: sender.id.to_string(),
                flow,
            });
        }
        let niss = Niss::parse(&niss).map_err(InputError::Niss)?;
        let wire_period = period.ok_or(InputError::MissingPeriod)?;
        let start = parse_date(&wire_period.start).ok_or(InputError::BadDate { field: "start" })?;
        let end = match wire_period.end.as_str() {
            "" => None,
            text => Some(parse_date(text).ok_or(InputError::BadDate { field: "end" })?),
        };
        let period = Period::new(start, end).map_err(InputError::Period)?;
        let schema = policy.schema().flow(flow);
        let found = bcss_wire::scan(&schema.tree, &schema.niss_path, &payload)
            .map_err(|error| InputError::MalformedPayload { flow, error })?;
        if found.is_empty() {
            return Err(InputError::PayloadNissMissing { flow });
        }
        if found
            .iter()
            .any(|value| Niss::parse_bytes(value) != Ok(niss))
        {
            return Err(InputError::PayloadNissMismatch { flow });
        }
        let addressee = match addressee {
            Some(id) => {
                let recipient = policy
                    .institution_by_id(&id)
                    .ok_or_else(|| InputError::UnknownAddressee(quoted(&id)))?;
                if !policy.has_route(sender.party(), recipient.party(), flow) {
                    return Err(InputError::AddresseeNotAllowed {
                        sender: sender.id.to_string(),
                        addressee: id,
                        flow,
                    });
                }
                Some(recipient.index)
            }
            None => None,
        };
        let relay_of = match relay_of {
            Some(ticket) => {
                let parent = self
                    .ledger
                    .get(&ticket)
                    .ok_or_else(|| InputError::UnknownRelayTicket(quoted(&ticket)))?;
                if !parent.was_delivered_to(&sender.id) {
                    return Err(InputError::RelayNotReceived(quoted(&ticket)));
                }
                if parent.niss != niss || parent.flow != flow {
                    return Err(InputError::RelayMismatch(quoted(&ticket)));
                }
                Some(parent)
            }
            None => None,
        };
        if let Some(reference) = &contact_file
            && !printable_token(reference)
        {
            return Err(InputError::BadContactFile);
        }
        Ok(Validated {
            message_id,
            flow,
            niss,
            period,
            wire_period,
            addressee,
            relay_of,
            contact_file,
            payload,
            fingerprint,
        })
    }

    /// Steps 2-4: route (who are the candidates), check each one's integration, filter; the
    /// time each step took, over all candidates, is added to `times`.
    pub fn plan(
        &self,
        policy: &Policy,
        sender: &Institution,
        message: &Validated,
        name_removed: bool,
        times: &mut PlanTimes,
    ) -> Result<Vec<Planned>, InputError> {
        let mut mark = std::time::Instant::now();
        let candidates = self.route(policy, sender, message);
        self.parts.limits.check_fan_out(candidates.len())?;
        lap(&mut mark, &mut times.route);
        let facts = Message {
            sender: sender.party(),
            flow: message.flow,
            period: message.period,
            relays: message.relay_of.is_some(),
            cites_contact_file: message.contact_file.is_some(),
            today: crate::calendar::belgian_today(),
        };
        let mut plans = Vec::with_capacity(candidates.len());
        // Recipients under the same grant (ten CPAS under one deliberation) get the same
        // filtered bytes and the same removed fields: filtered and named once per grant.
        let mut filtered: Vec<Filtered> = Vec::new();
        for recipient in candidates {
            // The recipient's rows only, read where the directory keeps them: not copied, the
            // person's other rows not even decoded (the check looks at no other).
            let decision = self.directory.with_integrations_of(
                message.niss,
                recipient.index,
                |integrations| {
                    check_recipient(
                        &facts,
                        recipient.party(),
                        policy.deliberations_reaching(recipient.index, message.flow),
                        integrations,
                    )
                },
            );
            lap(&mut mark, &mut times.check);
            let result = match decision {
                Ok(admission) => {
                    let grant = policy
                        .grant(admission.deliberation, message.flow)
                        .expect("a deliberation covering a flow grants it");
                    let done = filtered_once(&mut filtered, grant, message, name_removed)?;
                    Ok(Admitted {
                        deliberation: admission.deliberation.id.clone(),
                        a_posteriori: admission.a_posteriori,
                        payload: done.payload.clone(),
                        removed_fields: done.removed_fields,
                        removed_paths: done.removed_paths.clone(),
                    })
                }
                Err(refusal) => Err((refusal.reason, refusal.deliberation.map(|d| d.id.clone()))),
            };
            lap(&mut mark, &mut times.filter);
            plans.push(Planned {
                institution: recipient.index,
                institution_id: recipient.id.clone(),
                result,
            });
        }
        Ok(plans)
    }

    /// Step 2: the addressee, or every institution integrated for the person that some
    /// deliberation lets this sender reach with this flow. Sorted by institution id.
    fn route<'p>(
        &self,
        policy: &'p Policy,
        sender: &Institution,
        message: &Validated,
    ) -> Vec<&'p Institution> {
        let mut candidates: Vec<&Institution> = match message.addressee {
            Some(addressee) => vec![policy.institution(addressee)],
            None => {
                let mut indices: Vec<InstitutionIndex> =
                    self.directory
                        .with_integrations(message.niss, |integrations| {
                            integrations
                                .iter()
                                .map(|i| i.institution)
                                .filter(|i| *i != sender.index)
                                .collect()
                        });
                indices.sort_unstable();
                indices.dedup();
                indices
                    .into_iter()
                    .filter_map(|i| policy.get_institution(i))
                    .filter(|recipient| {
                        policy.has_route(sender.party(), recipient.party(), message.flow)
                    })
                    .collect()
            }
        };
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        candidates
    }

    /// Step 5: the delivery of every admitted recipient, encoded once, with its outcome slot.
    fn deliveries(
        &self,
        policy: &Policy,
        sender: &Institution,
        message: &Validated,
        record: &TicketRecord,
        plans: &[Planned],
    ) -> Vec<(usize, DeliveryRow)> {
        let accepted_at_ms = record.accepted_at_ms();
        plans
            .iter()
            .enumerate()
            .filter_map(|(slot, plan)| {
                let admitted = plan.result.as_ref().ok()?;
                let delivery_id = delivery_id(&record.ticket, &plan.institution_id);
                let view = DeliveryView {
                    delivery_id: delivery_id.clone(),
                    ticket: record.ticket.to_string(),
                    relay_of: record.relay_of.as_deref().unwrap_or_default().to_owned(),
                    deliberation: admitted.deliberation.to_string(),
                    sender: sender.id.to_string(),
                    flow: flow_number(message.flow),
                    niss: message.niss.digits(),
                    period: Some(message.wire_period.clone()),
                    contact_file: message.contact_file.clone(),
                    payload: Some(match message.flow {
                        Flow::A052 => delivery_view::Payload::A052(admitted.payload.clone()),
                        Flow::Dmfa => delivery_view::Payload::Dmfa(admitted.payload.clone()),
                        Flow::Dimona => delivery_view::Payload::Dimona(admitted.payload.clone()),
                    }),
                    attempt: 1,
                };
                Some((
                    slot,
                    DeliveryRow {
                        delivery_id,
                        ticket: record.ticket.to_string(),
                        recipient: plan.institution_id.to_string(),
                        niss: message.niss.as_u64(),
                        accepted_at_ms,
                        request: Bytes::from(view.encode_to_vec()),
                        sender: sender.id.to_string(),
                        flow: flow_number(message.flow) as u32,
                        keep_until_ms: keep_until(
                            policy,
                            Some(&admitted.deliberation),
                            accepted_at_ms,
                        ),
                        deliberation: admitted.deliberation.to_string(),
                        a_posteriori: admitted.a_posteriori,
                        ..Default::default()
                    },
                ))
            })
            .collect()
    }
}

/// A metric label for a flow number as received (bounded: unknown numbers are "unknown").
pub(crate) fn flow_label(flow: i32) -> &'static str {
    match flow {
        1 => "A052",
        2 => "DMFA",
        3 => "DIMONA",
        _ => "unknown",
    }
}

/// Time spent in route, check and filter for one message (check and filter summed over its
/// candidate recipients).
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanTimes {
    pub route: std::time::Duration,
    pub check: std::time::Duration,
    pub filter: std::time::Duration,
}

impl PlanTimes {
    fn record(&self) {
        let metrics = telemetry::submit_metrics();
        for (stage, time) in [
            (Stage::Route, self.route),
            (Stage::Check, self.check),
            (Stage::Filter, self.filter),
        ] {
            metrics.stage(stage, time.as_secs_f64());
        }
    }
}

/// Adds the time since `mark` to `into` and moves `mark` to now: one clock read per boundary.
fn lap(mark: &mut std::time::Instant, into: &mut std::time::Duration) {
    let now = std::time::Instant::now();
    *into += now - *mark;
    *mark = now;
}

/// The message's payload filtered for one grant, and what the filter removed.
struct Filtered<'p> {
    grant: &'p Grant,
    payload: Bytes,
    removed_fields: u32,
    removed_paths: Vec<String>,
}

/// The payload filtered for `grant`: from `done` when an earlier recipient of the message had
/// the same grant, else filtered (and its removed fields named, when `name_removed`) and kept.
fn filtered_once<'d, 'p>(
    done: &'d mut Vec<Filtered<'p>>,
    grant: &'p Grant,
    message: &Validated,
    name_removed: bool,
) -> Result<&'d Filtered<'p>, InputError> {
    if let Some(at) = done.iter().position(|f| std::ptr::eq(f.grant, grant)) {
        return Ok(&done[at]);
    }
    let (payload, stats) = bcss_wire::filter(&grant.tree, &message.payload).map_err(|error| {
        InputError::MalformedPayload {
            flow: message.flow,
            error,
        }
    })?;
    let removed_paths = if name_removed {
        grant.removed_fields(&message.payload).unwrap_or_default()
    } else {
        Vec::new()
    };
    done.push(Filtered {
        grant,
        payload,
        removed_fields: stats.removed,
        removed_paths,
    });
    Ok(done.last().expect("just pushed"))
}

fn stage_done(stage: Stage, started: std::time::Instant) {
    telemetry::submit_metrics().stage(stage, started.elapsed().as_secs_f64());
}

/// Integration checks, refusals, bytes and removed fields of one planned submission.
fn count_plans(message: &Validated, plans: &[Planned]) {
    let flow = flow_label(flow_number(message.flow));
    let metrics = telemetry::submit_metrics();
    metrics.bytes_in(flow, message.payload.len() as u64);
    for plan in plans {
        match &plan.result {
            Ok(admitted) => metrics.admitted(
                flow,
                admitted.payload.len() as u64,
                &admitted.deliberation,
                u64::from(admitted.removed_fields),
            ),
            Err((reason, _)) => {
                metrics.refused();
                metrics::counter!(telemetry::REFUSALS, "flow" => flow, "reason" => reason.name())
                    .increment(1);
            }
        }
    }
}

/// How long the journal keeps entries that no deliberation governs (refusals without one, the
/// submission itself when nothing was admitted), in years.
pub const DEFAULT_RETENTION_YEARS: u16 = 10;

/// When an entry under `deliberation` may be removed: its retention after `at_ms`.
pub(crate) fn keep_until(policy: &Policy, deliberation: Option<&str>, at_ms: i64) -> i64 {
    // A deliberation without a retention period (0: its recipients may keep nothing) still
    // leaves the journal of its exchanges for the default period: accountability outlives data.
    let years = deliberation
        .and_then(|id| policy.deliberation(id))
        .map(|d| d.retention_years)
        .filter(|years| *years > 0)
        .unwrap_or(DEFAULT_RETENTION_YEARS);
    at_ms + i64::from(years) * 31_557_600_000
}

/// The journal entries of an accepted submission: the submission, then one per candidate
/// (admission or refusal), with the names of the fields filtering removed. Never a value.
fn journal_entries(
    policy: &Policy,
    message: &Validated,
    record: &TicketRecord,
    plans: &[Planned],
) -> Vec<JournalEntry> {
    let at_ms = record.accepted_at_ms();
    let base = JournalEntry {
        at_ms,
        ticket: record.ticket.to_string(),
        relay_of: record.relay_of.as_deref().unwrap_or_default().to_owned(),
        sender: record.sender.to_string(),
        flow: flow_number(message.flow) as u32,
        niss: message.niss.as_u64(),
        message_id: record.message_id.clone(),
        contact_file: message.contact_file.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut entries = vec![JournalEntry {
        kind: EntryKind::Submission as i32,
        reason: "accepted".into(),
        ..base.clone()
    }];
    for plan in plans {
        entries.push(match &plan.result {
            Ok(admitted) => JournalEntry {
                kind: EntryKind::Admission as i32,
                recipient: plan.institution_id.to_string(),
                deliberation: admitted.deliberation.to_string(),
                reason: "admitted".into(),
                removed_fields: admitted.removed_paths.clone(),
                a_posteriori: admitted.a_posteriori,
                delivery_id: delivery_id(&record.ticket, &plan.institution_id),
                keep_until_ms: keep_until(policy, Some(&admitted.deliberation), at_ms),
                ..base.clone()
            },
            Err((reason, deliberation)) => JournalEntry {
                kind: EntryKind::Refusal as i32,
                recipient: plan.institution_id.to_string(),
                deliberation: deliberation.as_deref().unwrap_or_default().to_owned(),
                reason: reason.name().to_owned(),
                keep_until_ms: keep_until(policy, deliberation.as_deref(), at_ms),
                ..base.clone()
            },
        });
    }
    // The submission is kept as long as the longest-kept entry of its ticket: the journal finds
    // a ticket's entries by person and by sender through it.
    entries[0].keep_until_ms = entries[1..]
        .iter()
        .map(|e| e.keep_until_ms)
        .max()
        .unwrap_or_else(|| keep_until(policy, None, at_ms));
    entries
}

/// The stored form of a ticket.
fn ticket_row(record: &TicketRecord) -> TicketRow {
    TicketRow {
        ticket: record.ticket.to_string(),
        sender: record.sender.to_string(),
        message_id: record.message_id.clone(),
        flow: flow_number(record.flow) as u32,
        niss: record.niss.as_u64(),
        relay_of: record.relay_of.as_deref().map(str::to_owned),
        contact_file: record.contact_file.clone(),
        accepted_at_ms: record.accepted_at_ms(),
        fingerprint: record.fingerprint,
        outcomes: record
            .outcomes()
            .iter()
            .map(|o| OutcomeRow {
                institution: o.institution.to_string(),
                deliberation: o.deliberation.as_deref().map(str::to_owned),
                refusal: match o.decision {
                    Decision::Refused(reason) => refusal_number(reason),
                    _ => 0,
                },
                delivery_seq: 0,
                a_posteriori: o.a_posteriori,
                removed_fields: o.removed_fields,
            })
            .collect(),
    }
}

/// A ticket read back from the store, its outcomes from where its deliveries stand.
fn stored_record(policy: &Policy, stored: StoredTicket) -> Option<TicketRecord> {
    let pending = stored
        .deliveries
        .iter()
        .filter(|d| d.state() == DeliveryState::Pending)
        .map(|d| (d.seq, d))
        .collect();
    let dead = stored
        .deliveries
        .iter()
        .filter(|d| d.state() == DeliveryState::DeadLetter)
        .map(|d| d.seq)
        .collect();
    restore_record(policy, stored.row, &pending, &dead, &Default::default())
}

/// A ticket read back from the store, given its deliveries still pending (by sequence number),
/// its dead letters and its deliveries whose rows could not be read; the others were delivered.
fn restore_record(
    policy: &Policy,
    row: TicketRow,
    pending: &std::collections::HashMap<u64, &DeliveryRow>,
    dead: &std::collections::HashSet<u64>,
    unreadable: &std::collections::HashSet<u64>,
) -> Option<TicketRecord> {
    let flow = match row.flow {
        1 => Flow::A052,
        2 => Flow::Dmfa,
        3 => Flow::Dimona,
        _ => return None,
    };
    let niss = Niss::from_number(row.niss).ok()?;
    let sender_index = policy
        .institution_by_id(&row.sender)
        .map_or(InstitutionIndex(u16::MAX), |i| i.index);
    let outcomes = row
        .outcomes
        .iter()
        .map(|o| {
            let seq = (o.refusal == 0).then_some(o.delivery_seq);
            let (decision, attempts, last_error) = match seq {
                None => (Decision::Refused(refusal_from_number(o.refusal)?), 0, None),
                Some(seq) if dead.contains(&seq) => (Decision::DeadLetter, 0, None),
                // Not made, and not to be made without an operator: not "delivered".
                Some(seq) if unreadable.contains(&seq) => (
                    Decision::DeadLetter,
                    0,
                    Some("the stored delivery could not be read back".to_owned()),
                ),
                Some(seq) => match pending.get(&seq) {
                    Some(d) if d.attempts > 0 => (
                        Decision::DeliveryFailed,
                        d.attempts,
                        Some(d.last_error.clone()),
                    ),
                    Some(_) => (Decision::Accepted, 0, None),
                    None => (Decision::Delivered, 1, None),
                },
            };
            Some(Outcome {
                institution: o.institution.as_str().into(),
                deliberation: o.deliberation.as_deref().map(Into::into),
                decision,
                delivery_id: seq.map(|_| delivery_id(&row.ticket, &o.institution)),
                delivery_seq: seq,
                a_posteriori: o.a_posteriori,
                removed_fields: o.removed_fields,
                attempts,
                last_error,
            })
        })
        .collect::<Option<Vec<Outcome>>>()?;
    Some(TicketRecord {
        ticket: row.ticket.as_str().into(),
        sender: row.sender.as_str().into(),
        sender_index,
        message_id: row.message_id,
        flow,
        niss,
        relay_of: row.relay_of.map(Into::into),
        contact_file: row.contact_file,
        accepted_at: OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(row.accepted_at_ms) * 1_000_000,
        )
        .ok()?,
        fingerprint: row.fingerprint,
        outcomes: Mutex::new(outcomes),
        relays: Mutex::new(Vec::new()),
        recording: Recording::recorded(),
    })
}

/// Tells a ticket's [`Recording`] how its first submission ended: recorded if
/// [`FinishRecording::recorded`] was called, not recorded otherwise (an error, a refusal by
/// the store, a panic). A record not recorded leaves the ledger, so that the message id is
/// free for a resubmission (which, if the store did commit before a panic, the store answers).
struct FinishRecording<'a> {
    record: Arc<TicketRecord>,
    ledger: &'a Ledger,
}

impl FinishRecording<'_> {
    fn recorded(&self) {
        self.record.recording.finish(true);
    }
}

impl Drop for FinishRecording<'_> {
    fn drop(&mut self) {
        if !self.record.recording.is_recorded() {
            self.ledger.forget(&self.record);
        }
        // A no-op after `recorded`: only the first finish counts.
        self.record.recording.finish(false);
    }
}

fn refusal_number(reason: RefusalReason) -> u32 {
    RefusalReason::ALL
        .iter()
        .position(|r| *r == reason)
        .map_or(0, |i| i as u32 + 1)
}

fn refusal_from_number(number: u32) -> Option<RefusalReason> {
    RefusalReason::ALL
        .get((number as usize).checked_sub(1)?)
        .copied()
}

fn initial_outcome(plan: &Planned, ticket: &str) -> Outcome {
    match &plan.result {
        Ok(admitted) => Outcome {
            institution: plan.institution_id.clone(),
            deliberation: Some(admitted.deliberation.clone()),
            decision: Decision::Accepted,
            delivery_id: Some(delivery_id(ticket, &plan.institution_id)),
            delivery_seq: None,
            a_posteriori: admitted.a_posteriori,
            removed_fields: admitted.removed_fields,
            attempts: 0,
            last_error: None,
        },
        Err((reason, deliberation)) => Outcome::without_delivery(
            plan.institution_id.clone(),
            deliberation.clone(),
            Decision::Refused(*reason),
        ),
    }
}

/// The delivery id: stable across retries of the same delivery.
pub fn delivery_id(ticket: &str, recipient: &str) -> String {
    format!("{ticket}/{recipient}")
}

/// The flow's number in the contracts (`bcss.hub.v1.Flow`).
pub(crate) fn flow_number(flow: Flow) -> i32 {
    use bcss_proto::hub::v1::Flow as Wire;
    match flow {
        Flow::A052 => Wire::A052 as i32,
        Flow::Dmfa => Wire::Dmfa as i32,
        Flow::Dimona => Wire::Dimona as i32,
    }
}

/// The flow of a `bcss.hub.v1.Flow` code.
fn flow_of(code: i32) -> Option<Flow> {
    match code {
        1 => Some(Flow::A052),
        2 => Some(Flow::Dmfa),
        3 => Some(Flow::Dimona),
        _ => None,
    }
}

/// The integration check (step 3) again, for a delivery whose attempt does not follow its
/// acceptance's check: a retry, a delivery resumed at start, a replayed dead letter. The data
/// goes only to an institution that still has the person integrated (001 §13: "qui font
/// (toujours) partie de leurs clients"), under the deliberation it was filtered for, valid
/// today. `request` is the stored `Delivery`, which carries the envelope's facts. `Err` says
/// why not, in words that carry no personal data.
pub(crate) fn still_admitted(
    policy: &Policy,
    directory: &Directory,
    recipient: &Institution,
    request: &Bytes,
) -> Result<(), String> {
    let delivery = DeliveryView::decode(request.clone())
        .map_err(|_| "the stored delivery does not decode".to_owned())?;
    let flow = flow_of(delivery.flow).ok_or("the stored delivery names no known flow")?;
    let sender = policy
        .institution_by_id(&delivery.sender)
        .ok_or("the sender is no longer in the policy")?;
    let niss = Niss::parse(&delivery.niss).map_err(|_| "the stored delivery's NISS is invalid")?;
    let period = delivery
        .period
        .as_ref()
        .and_then(|period| {
            let start = parse_date(&period.start)?;
            let end = match period.end.as_str() {
                "" => None,
                text => Some(parse_date(text)?),
            };
            Period::new(start, end).ok()
        })
        .ok_or("the stored delivery's period is invalid")?;
    let facts = Message {
        sender: sender.party(),
        flow,
        period,
        relays: !delivery.relay_of.is_empty(),
        cites_contact_file: delivery.contact_file.is_some(),
        today: crate::calendar::belgian_today(),
    };
    let decision = directory.with_integrations_of(niss, recipient.index, |integrations| {
        check_recipient(
            &facts,
            recipient.party(),
            policy.deliberations_reaching(recipient.index, flow),
            integrations,
        )
        .map(|admission| admission.deliberation.id.clone())
        .map_err(|refusal| refusal.reason)
    });
    match decision {
        Ok(governing) if *governing == *delivery.deliberation => Ok(()),
        Ok(governing) => Err(format!(
            "no longer admitted under {}: {governing} governs it now",
            delivery.deliberation
        )),
        Err(reason) => Err(format!(
            "no longer admitted under {}: {}",
            delivery.deliberation,
            reason.name()
        )),
    }
}

fn parse_date(text: &str) -> Option<Date> {
    Date::parse(text, format_description!("[year]-[month]-[day]")).ok()
}

/// 1-128 printable ASCII characters, no space: the form of ids, tickets and references.
pub(crate) fn printable_token(text: &str) -> bool {
    (1..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

/// A fingerprint of everything the sender chose, to recognise a resubmission. Stored with the
/// ticket, so it must not change between runs or versions: a BLAKE3 hash of the fields in a
/// fixed layout (each prefixed with its length).
fn fingerprint(envelope: &EnvelopeView) -> u64 {
    let mut hasher = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(&envelope.flow.to_le_bytes());
    field(envelope.niss.as_bytes());
    let (start, end) = envelope
        .period
        .as_ref()
        .map_or(("", ""), |p| (p.start.as_str(), p.end.as_str()));
    field(start.as_bytes());
    field(end.as_bytes());
    for optional in [
        &envelope.addressee,
        &envelope.relay_of,
        &envelope.contact_file,
    ] {
        match optional {
            Some(text) => field(format!("+{text}").as_bytes()),
            None => field(b"-"),
        }
    }
    let (kind, payload): (u8, &[u8]) = match &envelope.payload {
        Some(Payload::A052(b)) => (1, b),
        Some(Payload::Dmfa(b)) => (2, b),
        Some(Payload::Dimona(b)) => (3, b),
        None => (0, &[]),
    };
    field(&[kind]);
    field(payload);
    let hash = hasher.finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticket's outcomes as read back at start: pending, a dead letter, a row that did not
    /// decode, and none of those (delivered).
    #[test]
    fn outcomes_read_back_say_where_each_delivery_stands() {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/hub.toml");
        let policy = Policy::load(&bcss_policy::Settings::load(&config).unwrap()).unwrap();
        let niss = Niss::compose(850_730, 33, false).unwrap();
        let row = TicketRow {
            ticket: "t".into(),
            sender: "solidaris".into(),
            flow: 1,
            niss: niss.as_u64(),
            accepted_at_ms: 1_700_000_000_000,
            outcomes: (1..=4)
                .map(|seq| OutcomeRow {
                    institution: format!("cpas-{seq}"),
                    delivery_seq: seq,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let waiting = DeliveryRow {
            seq: 1,
            ..Default::default()
        };
        let pending = [(1, &waiting)].into_iter().collect();
        let dead = [2].into_iter().collect();
        let unreadable = [3].into_iter().collect();
        let record = restore_record(&policy, row, &pending, &dead, &unreadable).unwrap();
        let outcomes = record.outcomes.lock().unwrap();
        let read: Vec<(Decision, Option<&str>)> = outcomes
            .iter()
            .map(|o| (o.decision, o.last_error.as_deref()))
            .collect();
        assert_eq!(
            read,
            [
                (Decision::Accepted, None),
                (Decision::DeadLetter, None),
                (
                    Decision::DeadLetter,
                    Some("the stored delivery could not be read back")
                ),
                (Decision::Delivered, None),
            ]
        );
    }
}
