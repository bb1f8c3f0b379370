//! The submission pipeline: validate → route → check integration → filter → record → deliver.
//!
//! Each step is a method named after it. The policy snapshot is taken once per submission, so
//! a reload never changes the rules half-way through a message.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bcss_directory::Directory;
use bcss_domain::decision::{Message, check_recipient};
use bcss_domain::{Flow, InstitutionIndex, Integration, Niss, Period, RefusalReason};
use bcss_policy::{Institution, Policy};
use bcss_proto::flows::v1::Period as WirePeriod;
use bcss_proto::hub::view::v1::envelope_view::Payload;
use bcss_proto::hub::view::v1::{DeliveryView, EnvelopeView, delivery_view};
use bytes::Bytes;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::delivery::Deliverer;
use crate::error::InputError;
use crate::ledger::{Decision, Ledger, Outcome, Reservation, TicketRecord};
use crate::limits::Limits;
use crate::privacy::PersonKey;

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

/// The hub: policy, directory, ledger and deliverer.
#[derive(Debug)]
pub struct Hub {
    policy: ArcSwap<Policy>,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    directory: Arc<Directory>,
    ledger: Ledger,
    deliverer: Deliverer,
    parts: HubParts,
}

impl Hub {
    pub fn new(
        policy: Policy,
        directory: Arc<Directory>,
        deliverer: Deliverer,
        parts: HubParts,
    ) -> Hub {
        Hub {
            policy: ArcSwap::from_pointee(policy),
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
            directory,
            ledger: Ledger::default(),
            deliverer,
            parts,
        }
    }

    /// Re-reads the policy, validates it in full and swaps it in. Submissions in flight keep
    /// the snapshot they took; an invalid policy changes nothing.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
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

    /// Submits an envelope from `sender`: decides, records, delivers, and returns the ticket
    /// record with every recipient's outcome.
    pub async fn submit(
        &self,
        policy: &Policy,
        sender: &Institution,
        envelope: EnvelopeView,
    ) -> Result<Arc<TicketRecord>, InputError> {
        self.parts.limits.admit(sender)?;
        let message = self.validate(policy, sender, envelope)?;
        let ticket: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        let plans = self.plan(policy, sender, &message, false)?;
        let record = TicketRecord {
            ticket: ticket.clone(),
            sender: sender.id.clone(),
            sender_index: sender.index,
            message_id: message.message_id.clone(),
            flow: message.flow,
            niss: message.niss,
            relay_of: message.relay_of.as_ref().map(|r| r.ticket.clone()),
            contact_file: message.contact_file.clone(),
            accepted_at: OffsetDateTime::now_utc(),
            fingerprint: message.fingerprint,
            outcomes: Mutex::new(plans.iter().map(|p| initial_outcome(p, &ticket)).collect()),
            relays: Mutex::new(Vec::new()),
        };
        let record = match self.ledger.insert(record) {
            (Reservation::New, record) => record,
            (Reservation::Resubmitted(original), _) => return Ok(original),
            (Reservation::Conflict, _) => {
                return Err(InputError::DuplicateMessageId(message.message_id));
            }
        };
        tracing::info!(
            message = "Message accepted.",
            ticket = %record.ticket,
            sender = %sender.id,
            flow = %message.flow,
            person = %self.parts.person_key.person(message.niss),
            recipients = plans.iter().filter(|p| p.result.is_ok()).count(),
            refused = plans.iter().filter(|p| p.result.is_err()).count(),
        );
        self.deliver(policy, sender, &message, &record, plans).await;
        Ok(record)
    }

    /// The decision `submit` would take, without recording or delivering.
    pub fn explain(
        &self,
        policy: &Policy,
        sender: &Institution,
        envelope: EnvelopeView,
    ) -> Result<Vec<Planned>, InputError> {
        self.parts.limits.admit(sender)?;
        let message = self.validate(policy, sender, envelope)?;
        self.plan(policy, sender, &message, true)
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
        let flow = match flow {
            1 => Flow::A052,
            2 => Flow::Dmfa,
            3 => Flow::Dimona,
            other => return Err(InputError::UnknownFlow(other)),
        };
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
                    .ok_or_else(|| InputError::UnknownAddressee(id.clone()))?;
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
                    .ok_or_else(|| InputError::UnknownRelayTicket(ticket.clone()))?;
                if !parent.was_delivered_to(&sender.id) {
                    return Err(InputError::RelayNotReceived(ticket));
                }
                if parent.niss != niss || parent.flow != flow {
                    return Err(InputError::RelayMismatch(ticket));
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

    /// Steps 2-4: route (who are the candidates), check each one's integration, filter.
    pub fn plan(
        &self,
        policy: &Policy,
        sender: &Institution,
        message: &Validated,
        explain: bool,
    ) -> Result<Vec<Planned>, InputError> {
        let integrations = self.directory.integrations(message.niss);
        let candidates = self.route(policy, sender, message, &integrations);
        self.parts.limits.check_fan_out(candidates.len())?;
        let facts = Message {
            sender: sender.party(),
            flow: message.flow,
            period: message.period,
            relays: message.relay_of.is_some(),
            cites_contact_file: message.contact_file.is_some(),
            today: OffsetDateTime::now_utc().date(),
        };
        let mut plans = Vec::with_capacity(candidates.len());
        for recipient in candidates {
            let decision = check_recipient(
                &facts,
                recipient.party(),
                policy.deliberations_reaching(recipient.index, message.flow),
                &integrations,
            );
            let result = match decision {
                Ok(admission) => {
                    let grant = policy
                        .grant(admission.deliberation, message.flow)
                        .expect("a deliberation covering a flow grants it");
                    let (payload, stats) = bcss_wire::filter(&grant.tree, &message.payload)
                        .map_err(|error| InputError::MalformedPayload {
                            flow: message.flow,
                            error,
                        })?;
                    let removed_paths = if explain {
                        policy
                            .schema()
                            .removed_fields(message.flow, &grant.paths, &message.payload)
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    Ok(Admitted {
                        deliberation: admission.deliberation.id.clone(),
                        a_posteriori: admission.a_posteriori,
                        payload,
                        removed_fields: stats.removed,
                        removed_paths,
                    })
                }
                Err(refusal) => Err((refusal.reason, refusal.deliberation.map(|d| d.id.clone()))),
            };
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
        integrations: &[Integration],
    ) -> Vec<&'p Institution> {
        let mut candidates: Vec<&Institution> = match message.addressee {
            Some(addressee) => vec![policy.institution(addressee)],
            None => {
                let mut indices: Vec<InstitutionIndex> = integrations
                    .iter()
                    .map(|i| i.institution)
                    .filter(|i| *i != sender.index)
                    .collect();
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

    /// Step 5: deliver to every admitted recipient, concurrently, and record the outcomes.
    async fn deliver(
        &self,
        policy: &Policy,
        sender: &Institution,
        message: &Validated,
        record: &TicketRecord,
        plans: Vec<Planned>,
    ) {
        let deliveries = plans.into_iter().enumerate().filter_map(|(slot, plan)| {
            let admitted = plan.result.ok()?;
            let recipient = policy.institution(plan.institution).clone();
            let delivery = DeliveryView {
                delivery_id: delivery_id(&record.ticket, &recipient.id),
                ticket: record.ticket.to_string(),
                relay_of: record.relay_of.as_deref().unwrap_or_default().to_owned(),
                deliberation: admitted.deliberation.to_string(),
                sender: sender.id.to_string(),
                flow: message_flow_number(message.flow),
                niss: message.niss.digits(),
                period: Some(message.wire_period.clone()),
                contact_file: message.contact_file.clone(),
                payload: Some(match message.flow {
                    Flow::A052 => delivery_view::Payload::A052(admitted.payload),
                    Flow::Dmfa => delivery_view::Payload::Dmfa(admitted.payload),
                    Flow::Dimona => delivery_view::Payload::Dimona(admitted.payload),
                }),
                attempt: 1,
            };
            Some(async move {
                (
                    slot,
                    recipient.id.clone(),
                    self.deliverer.deliver(&recipient, delivery).await,
                )
            })
        });
        let results = futures_util::future::join_all(deliveries).await;
        let mut outcomes = record.outcomes.lock().expect("outcomes lock");
        for (slot, recipient, result) in results {
            let outcome = &mut outcomes[slot];
            outcome.attempts += 1;
            match result {
                Ok(_) => outcome.decision = Decision::Delivered,
                Err(error) => {
                    tracing::warn!(message = "Delivery failed.", ticket = %record.ticket, recipient = %recipient, %error);
                    outcome.decision = Decision::DeliveryFailed;
                    outcome.last_error = Some(error);
                }
            }
        }
    }
}

fn initial_outcome(plan: &Planned, ticket: &str) -> Outcome {
    match &plan.result {
        Ok(admitted) => Outcome {
            institution: plan.institution_id.clone(),
            deliberation: Some(admitted.deliberation.clone()),
            decision: Decision::Accepted,
            delivery_id: Some(delivery_id(ticket, &plan.institution_id)),
            a_posteriori: admitted.a_posteriori,
            removed_fields: admitted.removed_fields,
            attempts: 0,
            last_error: None,
        },
        Err((reason, deliberation)) => Outcome {
            institution: plan.institution_id.clone(),
            deliberation: deliberation.clone(),
            decision: Decision::Refused(*reason),
            delivery_id: None,
            a_posteriori: false,
            removed_fields: 0,
            attempts: 0,
            last_error: None,
        },
    }
}

/// The delivery id: stable across retries of the same delivery.
pub fn delivery_id(ticket: &str, recipient: &str) -> String {
    format!("{ticket}/{recipient}")
}

fn message_flow_number(flow: Flow) -> i32 {
    match flow {
        Flow::A052 => 1,
        Flow::Dmfa => 2,
        Flow::Dimona => 3,
    }
}

fn parse_date(text: &str) -> Option<Date> {
    Date::parse(text, format_description!("[year]-[month]-[day]")).ok()
}

fn printable_token(text: &str) -> bool {
    (1..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

/// A fingerprint of everything the sender chose, to recognise a resubmission.
fn fingerprint(envelope: &EnvelopeView) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    envelope.flow.hash(&mut hasher);
    envelope.niss.hash(&mut hasher);
    envelope
        .period
        .as_ref()
        .map(|p| (&p.start, &p.end))
        .hash(&mut hasher);
    envelope.addressee.hash(&mut hasher);
    envelope.relay_of.hash(&mut hasher);
    envelope.contact_file.hash(&mut hasher);
    match &envelope.payload {
        Some(Payload::A052(b)) => (1u8, &b[..]).hash(&mut hasher),
        Some(Payload::Dmfa(b)) => (2u8, &b[..]).hash(&mut hasher),
        Some(Payload::Dimona(b)) => (3u8, &b[..]).hash(&mut hasher),
        None => 0u8.hash(&mut hasher),
    }
    hasher.finish()
}
