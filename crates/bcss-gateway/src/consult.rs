//! Consultations (`Gateway.Consult`): an institution asks for data another institution holds.
//!
//! The data path of a consultation, each step a function named after it:
//!
//! ```text
//! Consult ─► authenticate   identity::institution       the consulting institution's certificate
//!         ─► admit          limits::Limits::admit       its rate
//!         ─► validate       consult::validate           flow, NISS, period, purpose, agent, contact file
//!         ─► decide         bcss_domain::check_consultation  deliberation allowing consultation,
//!                                                      named agent, integration check or contact file
//!         ─► journal        Store::append               the decision, before anything is asked
//!         ─► ask            delivery::Deliverer::answer Institution.Answer on the source, within
//!                                                      delivery.consult_timeout_ms
//!         ─► check          consult::check_answer       the flow asked, well formed, about the person
//!         ─► filter         Filtered::from_answer       bcss_wire::filter with the deliberation's tree
//!         ─► journal        Store::append               answered, with the removed field names
//!         ─► reply          ConsultReplyView            built only from a `Filtered`
//! ```
//!
//! The source's answer stays bytes from the socket to the filter; the only way to put a payload
//! in a reply is a [`Filtered`], which only [`Filtered::from_answer`] makes. A source that does
//! not answer in time, fails, or answers something else than asked gives the consulting
//! institution an error status and no data at all.

use std::sync::Arc;

use bcss_domain::{Consult, Flow, Niss, Period, check_consultation};
use bcss_policy::{Institution, Policy};
use bcss_proto::flows::v1::Period as WirePeriod;
use bcss_proto::hub::v1::ConsultRequest;
use bcss_proto::hub::view::v1::{
    AnswerReplyView, ConsultReplyView, answer_reply_view, consult_reply_view,
};
use bcss_proto::institution::v1::AnswerRequest;
use bcss_store::{EntryKind, JournalEntry};
use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::delivery::AnswerError;
use crate::error::{ConsultError, InputError};
use crate::identity::institution;
use crate::pipeline::{Hub, flow_label, flow_number, keep_until, printable_token};

/// The response header that marks an answer for viewing only (19/010, 003 §37).
pub const VIEW_ONLY_HEADER: &str = "bcss-view-only";

/// A validated consultation request.
#[derive(Debug)]
pub struct Validated {
    pub flow: Flow,
    pub niss: Niss,
    pub period: Period,
    pub wire_period: WirePeriod,
    pub purpose: String,
    pub agent_id: String,
    pub contact_file: Option<String>,
}

/// The source's answer after filtering under the admitting deliberation: the only thing a
/// reply's payload is made from.
#[derive(Debug)]
pub struct Filtered {
    payload: Bytes,
    removed: u32,
}

impl Filtered {
    /// Filters a source's encoded answer with the deliberation's compiled tree.
    pub fn from_answer(
        tree: &bcss_wire::FieldTree,
        answer: &[u8],
    ) -> Result<Filtered, bcss_wire::WireError> {
        let (payload, stats) = bcss_wire::filter(tree, answer)?;
        Ok(Filtered {
            payload,
            removed: stats.removed,
        })
    }
}

/// `Gateway.Consult`, from the request to the response (called by the Gateway service).
pub async fn serve(
    hub: &Hub,
    request: Request<ConsultRequest>,
) -> Result<Response<ConsultReplyView>, Status> {
    let _slot = hub.open_stream(&request)?;
    let policy = hub.policy();
    let consulter = institution(&policy, &request)?.clone();
    let request = request.into_inner();
    let flow = flow_label(request.flow);
    let result = consult(hub, &policy, &consulter, request).await;
    let outcome = match &result {
        Ok(_) => "answered",
        Err(ConsultError::Input(_)) => "rejected",
        Err(ConsultError::Refused { .. }) => "refused",
        Err(ConsultError::SourceDeadline { .. }) => "deadline_exceeded",
        Err(ConsultError::NotFound { .. }) => "not_found",
        Err(ConsultError::SourceUnavailable { .. } | ConsultError::JournalUnavailable) => {
            "unavailable"
        }
    };
    metrics::counter!(crate::telemetry::CONSULTATIONS, "flow" => flow, "outcome" => outcome)
        .increment(1);
    let reply = result?;
    let view_only = reply.view_only;
    let mut response = Response::new(reply);
    if view_only {
        response
            .metadata_mut()
            .insert(VIEW_ONLY_HEADER, "true".parse().expect("ASCII"));
    }
    Ok(response)
}

/// Decides, journals, asks the source, filters, journals, and builds the reply.
pub async fn consult(
    hub: &Hub,
    policy: &Policy,
    consulter: &Institution,
    request: ConsultRequest,
) -> Result<ConsultReplyView, ConsultError> {
    hub.limits().admit(consulter)?;
    let consultation = validate(request)?;
    let ticket: Arc<str> = uuid::Uuid::now_v7().to_string().into();
    let at_ms = bcss_store::now_ms();
    let facts = Consult {
        consulter: consulter.party(),
        flow: consultation.flow,
        period: consultation.period,
        agent: &consultation.agent_id,
        cites_contact_file: consultation.contact_file.is_some(),
        today: crate::calendar::belgian_today(),
    };
    let decision = hub
        .directory()
        .with_integrations(consultation.niss, |integrations| {
            check_consultation(
                &facts,
                policy.deliberations_reaching(consulter.index, consultation.flow),
                integrations,
                |i| policy.institution(i).sector,
            )
        });
    let base = JournalEntry {
        at_ms,
        ticket: ticket.to_string(),
        recipient: consulter.id.to_string(),
        flow: flow_number(consultation.flow) as u32,
        niss: consultation.niss.as_u64(),
        contact_file: consultation.contact_file.clone().unwrap_or_default(),
        agent_id: consultation.agent_id.clone(),
        purpose: consultation.purpose.clone(),
        consultation: true,
        ..Default::default()
    };
    let person = hub.person_key().person(consultation.niss);
    let admission = match decision {
        Ok(admission) => admission,
        Err(refusal) => {
            let deliberation = refusal.deliberation.map(|d| d.id.to_string());
            // No sender: the source was not asked, and does not learn through its journal whom
            // another institution consulted about (the deliberation names the source).
            journal(
                hub,
                JournalEntry {
                    kind: EntryKind::Refusal as i32,
                    deliberation: deliberation.clone().unwrap_or_default(),
                    reason: refusal.reason.name().to_owned(),
                    keep_until_ms: keep_until(policy, deliberation.as_deref(), at_ms),
                    ..base
                },
            )
            .await?;
            tracing::info!(
                message = "Consultation refused.",
                %ticket,
                consulter = %consulter.id,
                flow = %consultation.flow,
                %person,
                reason = refusal.reason.name(),
            );
            return Err(ConsultError::Refused {
                reason: refusal.reason,
                consulter: consulter.id.to_string(),
                deliberation,
            });
        }
    };
    let deliberation = admission.deliberation.id.clone();
    let source = policy.institution(admission.source);
    let keep = keep_until(policy, Some(&deliberation), at_ms);
    let delivery_id = crate::pipeline::delivery_id(&ticket, &consulter.id);
    let admitted = JournalEntry {
        sender: source.id.to_string(),
        deliberation: deliberation.to_string(),
        a_posteriori: admission.a_posteriori,
        delivery_id: delivery_id.clone(),
        keep_until_ms: keep,
        ..base
    };
    // The decision is on disk before the source is asked anything.
    journal(
        hub,
        JournalEntry {
            kind: EntryKind::Admission as i32,
            reason: "admitted".into(),
            ..admitted.clone()
        },
    )
    .await?;
    let question = AnswerRequest {
        ticket: ticket.to_string(),
        deliberation: deliberation.to_string(),
        consulter: consulter.id.to_string(),
        flow: flow_number(consultation.flow),
        niss: consultation.niss.digits(),
        period: Some(consultation.wire_period.clone()),
    };
    let started = std::time::Instant::now();
    let asked = hub.outbox().deliverer().answer(source, question).await;
    metrics::histogram!(crate::telemetry::STAGE_SECONDS, "stage" => "consult_source")
        .record(started.elapsed().as_secs_f64());
    let failed = |reason: &'static str| JournalEntry {
        kind: EntryKind::Attempt as i32,
        reason: reason.into(),
        attempt: 1,
        at_ms: bcss_store::now_ms(),
        ..admitted.clone()
    };
    let answer = match asked.map_err(|error| source_error(source, consultation.flow, error)) {
        Ok(answer) => check_answer(policy, source, &consultation, answer),
        Err(error) => Err(error),
    };
    let raw = match answer {
        Ok(raw) => raw,
        Err(error) => {
            let reason = match &error {
                ConsultError::SourceDeadline { .. } => "source_deadline_exceeded",
                ConsultError::NotFound { .. } => "source_not_found",
                _ => "source_unavailable",
            };
            if let Err(journal_error) = journal(hub, failed(reason)).await {
                tracing::warn!(message = "A failed consultation could not be journalled.", %ticket, error = %journal_error);
            }
            tracing::warn!(
                message = "Consultation not answered.",
                %ticket,
                consulter = %consulter.id,
                source = %source.id,
                flow = %consultation.flow,
                reason,
            );
            return Err(error);
        }
    };
    let grant = policy
        .grant(admission.deliberation, consultation.flow)
        .expect("a deliberation that lets a flow be consulted grants its fields");
    let filtered =
        Filtered::from_answer(&grant.tree, &raw).map_err(|_| ConsultError::SourceUnavailable {
            source_id: source.id.to_string(),
            why: format!(
                "its answer is not a well-formed {} message",
                consultation.flow
            ),
        })?;
    let journals = hub.outbox().store().is_some_and(|s| s.journals());
    let removed_fields = if journals {
        grant.removed_fields(&raw).unwrap_or_default()
    } else {
        Vec::new()
    };
    // The answer leaves only once its journal entry is on disk.
    journal(
        hub,
        JournalEntry {
            kind: EntryKind::Delivery as i32,
            reason: "answered".into(),
            removed_fields,
            attempt: 1,
            at_ms: bcss_store::now_ms(),
            ..admitted
        },
    )
    .await?;
    metrics::counter!(crate::telemetry::FIELDS_REMOVED, "deliberation" => deliberation.to_string())
        .increment(u64::from(filtered.removed));
    tracing::info!(
        message = "Consultation answered.",
        %ticket,
        consulter = %consulter.id,
        source = %source.id,
        flow = %consultation.flow,
        deliberation = %deliberation,
        %person,
        removed_fields = filtered.removed,
        a_posteriori = admission.a_posteriori,
    );
    Ok(reply(
        &ticket,
        source,
        &deliberation,
        admission.a_posteriori,
        admission.view_only,
        consultation.flow,
        filtered,
    ))
}

/// Everything about the request that does not depend on policy.
pub fn validate(request: ConsultRequest) -> Result<Validated, InputError> {
    let ConsultRequest {
        flow,
        niss,
        period,
        purpose,
        agent_id,
        contact_file,
    } = request;
    let flow = match flow {
        1 => Flow::A052,
        2 => Flow::Dmfa,
        3 => Flow::Dimona,
        other => return Err(InputError::UnknownFlow(other)),
    };
    let niss = Niss::parse(&niss).map_err(InputError::Niss)?;
    let wire_period = period.ok_or(InputError::MissingPeriod)?;
    let date = |text: &str, field: &'static str| {
        time::Date::parse(
            text,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map_err(|_| InputError::BadDate { field })
    };
    let start = date(&wire_period.start, "start")?;
    let end = match wire_period.end.as_str() {
        "" => None,
        text => Some(date(text, "end")?),
    };
    let period = Period::new(start, end).map_err(InputError::Period)?;
    if !printable_token(&purpose) {
        return Err(InputError::BadPurpose);
    }
    if !bcss_policy::policy::valid_agent_id(&agent_id) {
        return Err(InputError::BadAgentId);
    }
    if let Some(reference) = &contact_file
        && !printable_token(reference)
    {
        return Err(InputError::BadContactFile);
    }
    Ok(Validated {
        flow,
        niss,
        period,
        wire_period,
        purpose,
        agent_id,
        contact_file,
    })
}

/// The source's answer, checked: the flow asked, well formed, about the person asked and no
/// one else. Returns the encoded, still unfiltered payload.
fn check_answer(
    policy: &Policy,
    source: &Institution,
    consultation: &Validated,
    answer: AnswerReplyView,
) -> Result<Bytes, ConsultError> {
    let unavailable = |why: String| ConsultError::SourceUnavailable {
        source_id: source.id.to_string(),
        why,
    };
    let (carried, raw) = match answer.payload {
        Some(answer_reply_view::Payload::A052(b)) => (Flow::A052, b),
        Some(answer_reply_view::Payload::Dmfa(b)) => (Flow::Dmfa, b),
        Some(answer_reply_view::Payload::Dimona(b)) => (Flow::Dimona, b),
        None => {
            return Err(ConsultError::NotFound {
                source_id: source.id.to_string(),
                flow: consultation.flow,
            });
        }
    };
    if !answer.found {
        return Err(ConsultError::NotFound {
            source_id: source.id.to_string(),
            flow: consultation.flow,
        });
    }
    if carried != consultation.flow {
        return Err(unavailable(format!(
            "it answered {carried} data to a {} consultation",
            consultation.flow
        )));
    }
    let schema = policy.schema().flow(consultation.flow);
    let found = bcss_wire::scan(&schema.tree, &schema.niss_path, &raw).map_err(|_| {
        unavailable(format!(
            "its answer is not a well-formed {} message",
            consultation.flow
        ))
    })?;
    if found.is_empty()
        || found
            .iter()
            .any(|value| Niss::parse_bytes(value) != Ok(consultation.niss))
    {
        return Err(unavailable(
            "its answer is not about the person asked".into(),
        ));
    }
    Ok(raw)
}

fn source_error(source: &Institution, flow: Flow, error: AnswerError) -> ConsultError {
    match error {
        AnswerError::Deadline(timeout) => ConsultError::SourceDeadline {
            source_id: source.id.to_string(),
            ms: timeout.as_millis(),
        },
        AnswerError::NotFound => ConsultError::NotFound {
            source_id: source.id.to_string(),
            flow,
        },
        AnswerError::Unreachable(why) => ConsultError::SourceUnavailable {
            source_id: source.id.to_string(),
            why,
        },
    }
}

/// The reply, from a filtered answer (and from nothing else).
fn reply(
    ticket: &str,
    source: &Institution,
    deliberation: &str,
    a_posteriori: bool,
    view_only: bool,
    flow: Flow,
    filtered: Filtered,
) -> ConsultReplyView {
    ConsultReplyView {
        ticket: ticket.to_owned(),
        source: source.id.to_string(),
        deliberation: deliberation.to_owned(),
        view_only,
        a_posteriori,
        removed_field_count: filtered.removed,
        payload: Some(match flow {
            Flow::A052 => consult_reply_view::Payload::A052(filtered.payload),
            Flow::Dmfa => consult_reply_view::Payload::Dmfa(filtered.payload),
            Flow::Dimona => consult_reply_view::Payload::Dimona(filtered.payload),
        }),
    }
}

/// Appends one entry to the journal, when the hub keeps one.
async fn journal(hub: &Hub, entry: JournalEntry) -> Result<(), ConsultError> {
    let Some(store) = hub.outbox().store().filter(|s| s.journals()) else {
        return Ok(());
    };
    store.append(entry).await.map_err(|error| {
        tracing::error!(message = "Consultation not journalled: the store refused it.", %error);
        ConsultError::JournalUnavailable
    })
}
