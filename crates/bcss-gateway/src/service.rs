//! The gRPC services: `Gateway` (over envelope views) and `Directory`. They authenticate the
//! caller, call the pipeline, and convert between the contracts and the domain.

use std::pin::Pin;
use std::sync::Arc;

use bcss_domain::{Niss, Period, QualityCode, RefusalReason, SectorQuality};
use bcss_proto::flows::v1::Period as WirePeriod;
use bcss_proto::gateway_view::gateway_server::Gateway;
use bcss_proto::hub::v1 as pb;
use bcss_proto::hub::view::v1::EnvelopeView;
use time::format_description::well_known::Rfc3339;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use bcss_policy::Role;

use crate::error::store_status;
use crate::identity::{Caller, caller, institution, operator};
use crate::ledger::{Decision, Outcome, TicketRecord};
use crate::pipeline::{Hub, Planned, flow_number};

/// `bcss.hub.v1.Gateway`.
#[derive(Clone, Debug)]
pub struct GatewayService {
    pub hub: Arc<Hub>,
    /// For the stream's too-large status (unary calls get it from the server's layer).
    pub max_message_bytes: usize,
    /// Envelopes of one `SubmitStream` handled at once (at least 1).
    pub stream_in_flight: usize,
}

/// Who sends on a `SubmitStream`: the certificate's names, and the institution they named
/// under the last policy looked at. A reload can re-point or remove a certificate name (the
/// way to cut a certificate off while the hub runs), so each envelope is authenticated against
/// the policy in force for it; the institution is looked up again only when the policy changed.
struct StreamSender {
    names: Arc<[String]>,
    last: std::sync::Mutex<(Arc<bcss_policy::Policy>, Arc<bcss_policy::Institution>)>,
}

impl StreamSender {
    /// The policy in force and the sender under it, or the status a new call would get.
    fn now(
        &self,
        hub: &Hub,
    ) -> Result<(Arc<bcss_policy::Policy>, Arc<bcss_policy::Institution>), Status> {
        let policy = hub.policy();
        let mut last = self.last.lock().expect("stream sender lock");
        if !Arc::ptr_eq(&last.0, &policy) {
            let sender =
                Arc::new(crate::identity::institution_named(&policy, &self.names)?.clone());
            *last = (policy.clone(), sender);
        }
        Ok((policy, last.1.clone()))
    }
}

/// The reply to one envelope of a `SubmitStream`: what `Submit` would have answered, an error
/// entry instead of an error status.
async fn stream_reply(
    hub: &Arc<Hub>,
    sender: &StreamSender,
    envelope: EnvelopeView,
    slot: Arc<crate::limits::StreamSlot>,
) -> pb::SubmitStreamReply {
    let message_id = envelope.message_id.clone();
    let error = |code: tonic::Code, message: String| {
        pb::submit_stream_reply::Result::Error(pb::StreamError {
            code: code as i32,
            message,
        })
    };
    let result = match sender.now(hub) {
        Err(status) => error(status.code(), status.message().to_owned()),
        Ok((policy, sender)) => match hub.submit_detached(policy, sender, envelope, slot).await {
            Ok(record) => pb::submit_stream_reply::Result::Reply(submit_reply(&record)),
            Err(failed) => error(failed.code(), failed.to_string()),
        },
    };
    pb::SubmitStreamReply {
        message_id,
        result: Some(result),
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn submit(
        &self,
        request: Request<EnvelopeView>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let slot = Arc::new(self.hub.open_stream(&request)?);
        let policy = self.hub.policy();
        let sender = Arc::new(institution(&policy, &request)?.clone());
        let record = self
            .hub
            .submit_detached(policy, sender, request.into_inner(), slot)
            .await?;
        Ok(Response::new(submit_reply(&record)))
    }

    type SubmitStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::SubmitStreamReply, Status>> + Send + 'static>>;

    async fn submit_stream(
        &self,
        request: Request<Streaming<EnvelopeView>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        // Shared with each envelope's submission: the stream counts as open until its last
        // reply and its last submission, whichever ends later.
        let slot = Arc::new(self.hub.open_stream(&request)?);
        let policy = self.hub.policy();
        let names = crate::identity::certificate_names(&request)?;
        let opened_by = Arc::new(crate::identity::institution_named(&policy, &names)?.clone());
        let sender = Arc::new(StreamSender {
            names,
            last: std::sync::Mutex::new((policy, opened_by)),
        });
        let hub = self.hub.clone();
        let limit = self.max_message_bytes;
        // Up to `stream_in_flight` envelopes go through the pipeline at once; `buffered` reads
        // the next envelope as earlier ones finish and yields the replies in the envelopes'
        // order, as the contract promises.
        let held = slot.clone();
        let replies = futures_util::StreamExt::buffered(
            request.into_inner().map(move |item| {
                let (hub, sender, slot) = (hub.clone(), sender.clone(), held.clone());
                async move {
                    match item {
                        Ok(envelope) => Ok(stream_reply(&hub, &sender, envelope, slot).await),
                        Err(status) if status.code() == tonic::Code::OutOfRange => Err(
                            Status::resource_exhausted(crate::server::too_large_message(limit)),
                        ),
                        Err(status) => Err(status),
                    }
                }
            }),
            self.stream_in_flight,
        );
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let _slot = slot; // the stream counts as open until its last reply
            tokio::pin!(replies);
            while let Some(reply) = replies.next().await {
                let stop = reply.is_err();
                if tx.send(reply).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn explain(
        &self,
        request: Request<EnvelopeView>,
    ) -> Result<Response<pb::ExplainReply>, Status> {
        let _slot = self.hub.open_stream(&request)?;
        let policy = self.hub.policy();
        let sender = institution(&policy, &request)?.clone();
        let plans = self
            .hub
            .explain(&policy, &sender, request.into_inner())
            .await?;
        Ok(Response::new(pb::ExplainReply {
            recipients: plans.iter().map(explained).collect(),
        }))
    }

    async fn track(
        &self,
        request: Request<pb::TrackRequest>,
    ) -> Result<Response<pb::TrackReply>, Status> {
        let _slot = self.hub.open_stream(&request)?;
        let policy = self.hub.policy();
        // An institution sees the exchanges it took part in; an auditor sees every exchange.
        let party: Option<Arc<str>> = match caller(&policy, &request)? {
            Caller::Institution(institution) => Some(institution.id.clone()),
            Caller::Operator(operator) if operator.has(Role::Auditor) => None,
            Caller::Operator(operator) => {
                return Err(Status::permission_denied(format!(
                    "operator \"{}\" lacks the auditor role needed to track others' exchanges",
                    operator.id
                )));
            }
        };
        let ticket = request.into_inner().ticket;
        let chain = self.hub.chain(&ticket).await.map_err(store_status)?;
        // A ticket the caller has no part in is answered as unknown: its existence is not
        // revealed. Of one it sees, it sees its part only (`ledger::seen_by`).
        let seen = match &party {
            Some(id) => crate::ledger::seen_by(&chain, id),
            None => chain
                .iter()
                .map(|hop| (hop.clone(), hop.outcomes()))
                .collect(),
        };
        if !seen.iter().any(|(hop, _)| *hop.ticket == *ticket) {
            return Err(Status::not_found(format!(
                "no exchange with ticket {} among yours (tickets are kept \
                 storage.ticket_days after they were accepted; the journal keeps the exchange)",
                crate::error::quoted(&ticket)
            )));
        }
        let hops = seen
            .iter()
            .map(|(hop, outcomes)| pb::Hop {
                ticket: hop.ticket.to_string(),
                relay_of: hop.relay_of.as_deref().unwrap_or_default().to_owned(),
                sender: hop.sender.to_string(),
                flow: flow_number(hop.flow),
                accepted_at: hop.accepted_at.format(&Rfc3339).unwrap_or_default(),
                recipients: outcomes.iter().map(outcome).collect(),
            })
            .collect();
        Ok(Response::new(pb::TrackReply { hops }))
    }

    async fn consult(
        &self,
        request: Request<pb::ConsultRequest>,
    ) -> Result<Response<bcss_proto::hub::view::v1::ConsultReplyView>, Status> {
        crate::consult::serve(&self.hub, request).await
    }
}

pub(crate) fn submit_reply(record: &TicketRecord) -> pb::SubmitReply {
    pb::SubmitReply {
        ticket: record.ticket.to_string(),
        message_id: record.message_id.clone(),
        recipients: record.outcomes().iter().map(outcome).collect(),
    }
}

fn outcome(o: &Outcome) -> pb::RecipientOutcome {
    let (decision, reason) = match o.decision {
        Decision::Accepted => (pb::Decision::Accepted, None),
        Decision::Delivered => (pb::Decision::Delivered, None),
        Decision::Refused(reason) => (pb::Decision::Refused, Some(reason)),
        Decision::DeliveryFailed => (pb::Decision::DeliveryFailed, None),
        Decision::DeadLetter => (pb::Decision::DeadLetter, None),
    };
    pb::RecipientOutcome {
        institution: o.institution.to_string(),
        deliberation: o.deliberation.as_deref().unwrap_or_default().to_owned(),
        decision: decision as i32,
        reason: reason
            .map(refusal_reason)
            .unwrap_or(pb::RefusalReason::Unspecified) as i32,
        detail: match (o.decision, reason) {
            (_, Some(reason)) => reason.to_string(),
            (Decision::Delivered, _) => "delivered and acknowledged".into(),
            (Decision::DeliveryFailed, _) => {
                "recorded; the recipient has not acknowledged yet and the hub keeps retrying".into()
            }
            (Decision::DeadLetter, _) => {
                "recorded, but the hub gave up retrying: a dead letter for the operators".into()
            }
            _ => "recorded; delivery in progress".into(),
        },
        delivery_id: o.delivery_id.clone().unwrap_or_default(),
        a_posteriori: o.a_posteriori,
        removed_field_count: o.removed_fields,
        removed_fields: Vec::new(),
        attempts: o.attempts,
        last_error: o.last_error.clone().unwrap_or_default(),
    }
}

fn explained(plan: &Planned) -> pb::RecipientOutcome {
    match &plan.result {
        Ok(admitted) => pb::RecipientOutcome {
            institution: plan.institution_id.to_string(),
            deliberation: admitted.deliberation.to_string(),
            decision: pb::Decision::Accepted as i32,
            detail: "would be delivered".into(),
            a_posteriori: admitted.a_posteriori,
            removed_field_count: admitted.removed_fields,
            removed_fields: admitted.removed_paths.clone(),
            ..Default::default()
        },
        Err((reason, deliberation)) => pb::RecipientOutcome {
            institution: plan.institution_id.to_string(),
            deliberation: deliberation.as_deref().unwrap_or_default().to_owned(),
            decision: pb::Decision::Refused as i32,
            reason: refusal_reason(*reason) as i32,
            detail: reason.to_string(),
            ..Default::default()
        },
    }
}

pub fn refusal_reason(reason: RefusalReason) -> pb::RefusalReason {
    match reason {
        RefusalReason::NoDeliberation => pb::RefusalReason::NoDeliberation,
        RefusalReason::DeliberationNotYetValid => pb::RefusalReason::DeliberationNotYetValid,
        RefusalReason::DeliberationExpired => pb::RefusalReason::DeliberationExpired,
        RefusalReason::RelayRequired => pb::RefusalReason::RelayRequired,
        RefusalReason::ContactFileMissing => pb::RefusalReason::ContactFileMissing,
        RefusalReason::NotIntegrated => pb::RefusalReason::NotIntegrated,
        RefusalReason::QualityCodeNotAccepted => pb::RefusalReason::QualityCodeNotAccepted,
        RefusalReason::PeriodOutsideIntegration => pb::RefusalReason::PeriodOutsideIntegration,
        RefusalReason::AgentNotAllowed => pb::RefusalReason::AgentNotAllowed,
    }
}

/// `bcss.hub.v1.Directory`: each institution changes and lists its own integrations only.
#[derive(Clone, Debug)]
pub struct DirectoryService {
    pub hub: Arc<Hub>,
}

const MAX_PAGE: usize = 1000;

#[tonic::async_trait]
impl pb::directory_server::Directory for DirectoryService {
    async fn integrate(
        &self,
        request: Request<pb::IntegrateRequest>,
    ) -> Result<Response<pb::IntegrateReply>, Status> {
        let _slot = self.hub.open_stream(&request)?;
        let policy = self.hub.policy();
        let me = institution(&policy, &request)?.clone();
        let request = request.into_inner();
        let niss = parse_niss(&request.niss)?;
        let code = u16::try_from(request.quality_code)
            .ok()
            .and_then(QualityCode::new);
        let quality = code
            .map(|code| SectorQuality { sector: me.sector, code })
            .filter(|q| policy.quality_name(*q).is_some())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "quality_code {:03} is not defined for sector \"{}\" (see the quality-code table)",
                    request.quality_code,
                    policy.sector(me.sector).id
                ))
            })?;
        let period = parse_period(request.period.as_ref())?;
        // The same code and start as a held integration: its end is updated (closing an open
        // file), not a second row added beside it that would keep the old period passing.
        let limit = self.hub.limits().integrations_per_person;
        let integrated = self
            .hub
            .directory()
            .integrate_at_most(
                niss,
                bcss_domain::Integration {
                    institution: me.index,
                    quality: quality.code,
                    period,
                },
                limit,
            )
            .map_err(|full| {
                Status::resource_exhausted(format!(
                    "institution \"{}\" already holds {} integrations of this person \
                     (limits.integrations_per_person = {limit}): close or remove one first",
                    me.id, full.held
                ))
            })?;
        let created = integrated == bcss_directory::Integrated::Created;
        let updated = integrated == bcss_directory::Integrated::Updated;
        tracing::info!(message = "Integration declared.", institution = %me.id, quality = %quality.code, created, updated);
        Ok(Response::new(pb::IntegrateReply { created, updated }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveReply>, Status> {
        let _slot = self.hub.open_stream(&request)?;
        let policy = self.hub.policy();
        let me = institution(&policy, &request)?.clone();
        let request = request.into_inner();
        let niss = parse_niss(&request.niss)?;
        let quality = match request.quality_code {
            Some(code) => Some(
                u16::try_from(code)
                    .ok()
                    .and_then(QualityCode::new)
                    .ok_or_else(|| Status::invalid_argument("quality_code must be 000-999"))?,
            ),
            None => None,
        };
        // One period by its start, so that withdrawing it leaves the caller's other periods
        // under the same code in place.
        let start = request
            .start
            .as_deref()
            .map(|text| parse_date(text, "start"))
            .transpose()?;
        let removed = self
            .hub
            .directory()
            .remove_matching(niss, me.index, quality, start);
        tracing::info!(message = "Integrations withdrawn.", institution = %me.id, removed);
        Ok(Response::new(pb::RemoveReply {
            removed: removed as u32,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        let _slot = self.hub.open_stream(&request)?;
        let policy = self.hub.policy();
        let me = institution(&policy, &request)?.clone();
        let request = request.into_inner();
        let niss = request.niss.as_deref().map(parse_niss).transpose()?;
        let limit = match request.page_size as usize {
            0 => MAX_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(
                bcss_directory::ListCursor::from_token(token).ok_or_else(|| {
                    Status::invalid_argument("page_token is not one this service returned")
                })?,
            ),
        };
        let (rows, next) = self.hub.directory().list(me.index, niss, after, limit);
        let integrations = rows
            .iter()
            .map(|(niss, row)| pb::IntegrationEntry {
                niss: niss.digits(),
                quality_code: u32::from(row.quality.0),
                quality_name: policy
                    .quality_name(SectorQuality {
                        sector: me.sector,
                        code: row.quality,
                    })
                    .unwrap_or_default()
                    .to_owned(),
                period: Some(wire_period(&row.period)),
            })
            .collect();
        let next_page_token = next.map(|at| at.token()).unwrap_or_default();
        Ok(Response::new(pb::ListReply {
            integrations,
            next_page_token,
        }))
    }
}

fn parse_niss(text: &str) -> Result<Niss, Status> {
    Niss::parse(text).map_err(|e| Status::invalid_argument(format!("niss: {e}")))
}

fn parse_period(period: Option<&WirePeriod>) -> Result<Period, Status> {
    let period = period.ok_or_else(|| {
        Status::invalid_argument("period is required: set at least period.start (YYYY-MM-DD)")
    })?;
    let start = parse_date(&period.start, "period.start")?;
    let end = if period.end.is_empty() {
        None
    } else {
        Some(parse_date(&period.end, "period.end")?)
    };
    Period::new(start, end).map_err(|e| Status::invalid_argument(format!("period: {e}")))
}

/// A date field of a request. The error names the field, never the value (a client that puts
/// a NISS or a name in the wrong field must not see it in errors and logs).
fn parse_date(text: &str, field: &str) -> Result<time::Date, Status> {
    time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| Status::invalid_argument(format!("{field} is not a date YYYY-MM-DD")))
}

fn wire_period(period: &Period) -> WirePeriod {
    let date = bcss_domain::iso_date;
    WirePeriod {
        start: date(period.start),
        end: period.end.map(date).unwrap_or_default(),
    }
}

/// `bcss.hub.v1.Admin`: the hub's own operations, for operator certificates.
#[derive(Clone, Debug)]
pub struct AdminService {
    pub hub: Arc<Hub>,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn reload_policy(
        &self,
        request: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyReply>, Status> {
        let who = operator(&self.hub.policy(), &request, Role::Operator)?
            .id
            .clone();
        match self.hub.reload().await {
            Ok(reloaded) => Ok(Response::new(pb::ReloadPolicyReply {
                generation: reloaded.generation,
                institutions: reloaded.institutions as u32,
                deliberations: reloaded.deliberations as u32,
            })),
            Err(error) => {
                tracing::warn!(message = "Policy reload refused; the running policy stays.", operator = %who, %error);
                Err(Status::failed_precondition(format!(
                    "the new policy was refused and the running one stays: {error}"
                )))
            }
        }
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersReply>, Status> {
        operator(&self.hub.policy(), &request, Role::Operator)?;
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let store = self.store()?;
        let rows = store
            .dead_letters(request.after, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListDeadLettersReply {
            dead_letters: rows.iter().map(dead_letter).collect(),
        }))
    }

    async fn show_dead_letter(
        &self,
        request: Request<pb::DeadLetterRequest>,
    ) -> Result<Response<pb::DeadLetter>, Status> {
        operator(&self.hub.policy(), &request, Role::Operator)?;
        let seq = request.into_inner().seq;
        let row = self
            .store()?
            .delivery(seq)
            .await
            .map_err(store_status)?
            .filter(|row| row.state() == bcss_store::DeliveryState::DeadLetter)
            .ok_or_else(|| Status::not_found(format!("no dead letter {seq}")))?;
        Ok(Response::new(dead_letter(&row)))
    }

    async fn replay_dead_letter(
        &self,
        request: Request<pb::DeadLetterRequest>,
    ) -> Result<Response<pb::ReplayDeadLetterReply>, Status> {
        let who = operator(&self.hub.policy(), &request, Role::Operator)?
            .id
            .clone();
        let seq = request.into_inner().seq;
        self.store()?;
        let before = self
            .hub
            .outbox()
            .store()
            .expect("checked")
            .delivery(seq)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no dead letter {seq}: it was delivered (delivered letters are not kept) or never existed"
                ))
            })?;
        // Its ticket's record (read back and held if the ledger had let go of it) follows the
        // new attempts, so that `Track` shows them.
        let record = self
            .hub
            .recall(&before.ticket)
            .await
            .map_err(store_status)?;
        // The store decides, in its commit, whether the row was a dead letter: two replays at
        // once queue it once.
        let replayed = self
            .hub
            .outbox()
            .replay(seq, record)
            .await
            .map_err(store_status)?;
        let requeued = replayed.is_some();
        let row = replayed.unwrap_or(before);
        if requeued {
            tracing::info!(message = "Dead letter replayed.", operator = %who, seq, recipient = %row.recipient);
        }
        Ok(Response::new(pb::ReplayDeadLetterReply {
            dead_letter: Some(dead_letter(&row)),
            requeued,
        }))
    }
}

impl AdminService {
    fn store(&self) -> Result<&Arc<bcss_store::Store>, Status> {
        self.hub.outbox().store().ok_or_else(|| {
            Status::failed_precondition("this hub runs without a store (storage.durable = false)")
        })
    }
}

fn dead_letter(row: &bcss_store::DeliveryRow) -> pb::DeadLetter {
    let accepted_at = crate::journal::rfc3339(row.accepted_at_ms);
    pb::DeadLetter {
        seq: row.seq,
        delivery_id: row.delivery_id.clone(),
        ticket: row.ticket.clone(),
        recipient: row.recipient.clone(),
        attempts: row.attempts,
        last_error: row.last_error.clone(),
        reason: row.dead_reason.clone(),
        accepted_at,
        payload_bytes: row.request.len() as u32,
        state: match row.state() {
            bcss_store::DeliveryState::Pending => "pending",
            bcss_store::DeliveryState::Delivered => "delivered",
            bcss_store::DeliveryState::DeadLetter => "dead letter",
        }
        .into(),
    }
}
