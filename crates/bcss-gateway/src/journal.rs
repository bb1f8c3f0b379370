//! `bcss.hub.v1.Journal`: the citizen's view, tickets, institutions, contact files, the
//! a-posteriori audit, samples for the security adviser, and chain verification.
//!
//! Auditors see every entry; an institution sees only entries of exchanges it sent or
//! received, and registers contact files only if it receives under an a-posteriori deliberation.

use std::collections::BTreeMap;
use std::sync::Arc;

use bcss_domain::Niss;
use bcss_domain::deliberation::CheckMode;
use bcss_policy::{Policy, Role};
use bcss_proto::hub::v1 as pb;
use bcss_store::{EntryKind, JournalEntry, JournalQuery, Store};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Request, Response, Status};

use crate::error::store_status;
use crate::identity::{Caller, caller};
use crate::pipeline::Hub;

/// `bcss.hub.v1.Journal`.
#[derive(Clone, Debug)]
pub struct JournalService {
    pub hub: Arc<Hub>,
}

/// Who may see which entries.
enum Viewer {
    Auditor,
    Institution(Arc<str>),
}

impl Viewer {
    fn sees(&self, entry: &JournalEntry) -> bool {
        match self {
            Viewer::Auditor => true,
            Viewer::Institution(id) => entry.sender == **id || entry.recipient == **id,
        }
    }
}

impl JournalService {
    fn store(&self) -> Result<&Arc<Store>, Status> {
        self.hub.outbox().store().ok_or_else(|| {
            Status::failed_precondition("this hub keeps no journal (storage.durable = false)")
        })
    }

    fn viewer<T>(&self, policy: &Policy, request: &Request<T>) -> Result<Viewer, Status> {
        match caller(policy, request)? {
            Caller::Institution(institution) => Ok(Viewer::Institution(institution.id.clone())),
            Caller::Operator(operator) if operator.has(Role::Auditor) => Ok(Viewer::Auditor),
            Caller::Operator(operator) => Err(Status::permission_denied(format!(
                "operator \"{}\" lacks the auditor role the journal needs",
                operator.id
            ))),
        }
    }

    fn auditor<T>(&self, policy: &Policy, request: &Request<T>) -> Result<(), Status> {
        match self.viewer(policy, request)? {
            Viewer::Auditor => Ok(()),
            Viewer::Institution(id) => Err(Status::permission_denied(format!(
                "institution \"{id}\" may not call this: it needs an auditor certificate"
            ))),
        }
    }

    async fn query(&self, query: JournalQuery) -> Result<Vec<JournalEntry>, Status> {
        self.store()?
            .journal(query)
            .await
            .map_err(|error| match error {
                bcss_store::StoreError::TooMany(limit) => Status::resource_exhausted(format!(
                    "more than {limit} journal entries fall in this range (limits.journal_entries): \
                     narrow it with from and to (RFC 3339 times narrow it to the second)"
                )),
                other => store_status(other),
            })
    }

    /// `limits.journal_entries`.
    fn most_entries(&self) -> usize {
        self.hub.limits().journal_entries
    }

    /// Every entry from `from` to `to` (an auditor's range), at most `limits.journal_entries`.
    async fn entries_between(&self, from: &str, to: &str) -> Result<Vec<JournalEntry>, Status> {
        let (from_ms, to_ms) = range(from, to)?;
        self.query(JournalQuery::Range {
            from_ms,
            to_ms,
            limit: self.most_entries(),
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::journal_server::Journal for JournalService {
    async fn by_person(
        &self,
        request: Request<pb::ByPersonRequest>,
    ) -> Result<Response<pb::JournalReply>, Status> {
        let policy = self.hub.policy();
        let viewer = self.viewer(&policy, &request)?;
        let niss = Niss::parse(&request.into_inner().niss)
            .map_err(|e| Status::invalid_argument(format!("niss: {e}")))?;
        let entries = self
            .query(JournalQuery::Person {
                niss: niss.as_u64(),
            })
            .await?;
        Ok(reply(&policy, entries.iter().filter(|e| viewer.sees(e))))
    }

    async fn by_ticket(
        &self,
        request: Request<pb::ByTicketRequest>,
    ) -> Result<Response<pb::JournalReply>, Status> {
        let policy = self.hub.policy();
        let viewer = self.viewer(&policy, &request)?;
        let ticket = request.into_inner().ticket;
        let chain = self.hub.chain(&ticket).await.map_err(store_status)?;
        let mut tickets: Vec<String> = chain.iter().map(|r| r.ticket.to_string()).collect();
        if tickets.is_empty() {
            tickets.push(ticket.clone());
        }
        let entries = self.query(JournalQuery::Tickets { tickets }).await?;
        let visible: Vec<&JournalEntry> = entries.iter().filter(|e| viewer.sees(e)).collect();
        if visible.is_empty() {
            return Err(Status::not_found(format!(
                "no journal entries for ticket {} among yours",
                crate::error::quoted(&ticket)
            )));
        }
        Ok(reply(&policy, visible.into_iter()))
    }

    async fn by_institution(
        &self,
        request: Request<pb::ByInstitutionRequest>,
    ) -> Result<Response<pb::JournalReply>, Status> {
        let policy = self.hub.policy();
        let viewer = self.viewer(&policy, &request)?;
        let request = request.into_inner();
        if let Viewer::Institution(me) = &viewer
            && *request.institution != **me
        {
            return Err(Status::permission_denied(
                "an institution may read only its own exchanges",
            ));
        }
        let (from_ms, to_ms) = range(&request.from, &request.to)?;
        let entries = self
            .query(JournalQuery::Party {
                institution: request.institution,
                from_ms,
                to_ms,
                limit: self.most_entries(),
            })
            .await?;
        Ok(reply(&policy, entries.iter()))
    }

    async fn register_contact_file(
        &self,
        request: Request<pb::RegisterContactFileRequest>,
    ) -> Result<Response<pb::RegisterContactFileReply>, Status> {
        let policy = self.hub.policy();
        let me = crate::identity::institution(&policy, &request)?.clone();
        let receives_a_posteriori = policy.deliberations().iter().any(|d| {
            matches!(d.check, CheckMode::APosteriori)
                && d.routes.iter().any(|r| r.recipients.contains(me.party()))
        });
        if !receives_a_posteriori {
            return Err(Status::permission_denied(format!(
                "institution \"{}\" consults under no a-posteriori deliberation, so it keeps no contact files",
                me.id
            )));
        }
        let request = request.into_inner();
        if !(1..=128).contains(&request.contact_file.len())
            || !request.contact_file.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Status::invalid_argument(
                "contact_file must be 1-128 printable ASCII characters without spaces",
            ));
        }
        let niss = Niss::parse(&request.niss)
            .map_err(|e| Status::invalid_argument(format!("niss: {e}")))?;
        let opened_at_ms = match request.opened_at.as_str() {
            "" => bcss_store::now_ms(),
            text => parse_time(text, "opened_at")?,
        };
        let store = self.store()?;
        let existing = store
            .journal(JournalQuery::ContactFile {
                institution: me.id.to_string(),
                id: request.contact_file.clone(),
            })
            .await
            .map_err(store_status)?;
        if !existing.is_empty() {
            return Err(Status::already_exists(format!(
                "contact file \"{}\" is already registered",
                request.contact_file
            )));
        }
        let at_ms = bcss_store::now_ms();
        store
            .append(JournalEntry {
                at_ms,
                kind: EntryKind::ContactFile as i32,
                sender: me.id.to_string(),
                niss: niss.as_u64(),
                contact_file: request.contact_file.clone(),
                opened_at_ms,
                reason: "registered".into(),
                keep_until_ms: at_ms
                    + i64::from(crate::pipeline::DEFAULT_RETENTION_YEARS) * 31_557_600_000,
                ..Default::default()
            })
            .await
            .map_err(|error| match error {
                // Registered by a call that overtook this one since the check above.
                bcss_store::StoreError::AlreadyRegistered(_) => Status::already_exists(format!(
                    "contact file \"{}\" is already registered",
                    request.contact_file
                )),
                other => store_status(other),
            })?;
        let number = store
            .journal(JournalQuery::ContactFile {
                institution: me.id.to_string(),
                id: request.contact_file,
            })
            .await
            .map_err(store_status)?
            .first()
            .map_or(0, |e| e.number);
        Ok(Response::new(pb::RegisterContactFileReply { number }))
    }

    async fn audit_posteriori(
        &self,
        request: Request<pb::AuditPosterioriRequest>,
    ) -> Result<Response<pb::AuditPosterioriReply>, Status> {
        let policy = self.hub.policy();
        self.auditor(&policy, &request)?;
        let request = request.into_inner();
        let entries = self.entries_between(&request.from, &request.to).await?;
        let mut findings = Vec::new();
        let mut examined = 0;
        for consultation in entries
            .iter()
            .filter(|e| e.kind == EntryKind::Admission as i32 && e.a_posteriori)
        {
            examined += 1;
            let problem = if consultation.contact_file.is_empty() {
                Some("no_contact_file")
            } else {
                // The consulting centre's own file: the same id may be another centre's.
                let files = self
                    .query(JournalQuery::ContactFile {
                        institution: consultation.recipient.clone(),
                        id: consultation.contact_file.clone(),
                    })
                    .await?;
                match files.first() {
                    None => Some("contact_file_unknown"),
                    Some(file) if file.niss != consultation.niss => Some("other_person"),
                    // When the hub registered it, not when the centre says it opened it: a file
                    // registered after the consultation did not exist for the hub then
                    // (000 §15: a file "that existed before"), whatever date it claims.
                    Some(file) if file.at_ms > consultation.at_ms => Some("registered_after"),
                    Some(file) if file.opened_at_ms > consultation.at_ms => Some("opened_after"),
                    Some(_) => None,
                }
            };
            if let Some(problem) = problem {
                findings.push(pb::Finding {
                    consultation: Some(record(&policy, consultation)),
                    problem: problem.into(),
                });
            }
        }
        Ok(Response::new(pb::AuditPosterioriReply {
            findings,
            examined,
        }))
    }

    async fn sample(
        &self,
        request: Request<pb::SampleRequest>,
    ) -> Result<Response<pb::JournalReply>, Status> {
        let policy = self.hub.policy();
        self.auditor(&policy, &request)?;
        let request = request.into_inner();
        let entries = self.entries_between(&request.from, &request.to).await?;
        // Exchanges per receiving institution, in chain order, then a seeded shuffle of each.
        let mut by_recipient: BTreeMap<&str, Vec<&JournalEntry>> = BTreeMap::new();
        for entry in entries
            .iter()
            .filter(|e| e.kind == EntryKind::Delivery as i32)
        {
            by_recipient
                .entry(&entry.recipient)
                .or_default()
                .push(entry);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(request.seed);
        let mut chosen = Vec::new();
        for (_, mut exchanges) in by_recipient {
            exchanges.shuffle(&mut rng);
            exchanges.truncate(request.per_institution as usize);
            exchanges.sort_by_key(|e| e.number);
            chosen.extend(exchanges);
        }
        Ok(reply(&policy, chosen.into_iter()))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        let policy = self.hub.policy();
        self.auditor(&policy, &request)?;
        let report = self.store()?.verify().await.map_err(store_status)?;
        Ok(Response::new(pb::VerifyReply {
            entries: report.entries,
            removed_by_retention: report.stubs,
            checkpoints: report.checkpoints,
            intact: report.first_problem.is_none(),
            problem: report
                .first_problem
                .map(|p| p.to_string())
                .unwrap_or_default(),
        }))
    }
}

fn reply<'a>(
    policy: &Policy,
    entries: impl Iterator<Item = &'a JournalEntry>,
) -> Response<pb::JournalReply> {
    Response::new(pb::JournalReply {
        records: entries.map(|e| record(policy, e)).collect(),
    })
}

fn kind_name(kind: i32) -> &'static str {
    match EntryKind::try_from(kind) {
        Ok(EntryKind::Submission) => "submission",
        Ok(EntryKind::Refusal) => "refusal",
        Ok(EntryKind::Admission) => "admission",
        Ok(EntryKind::Attempt) => "attempt",
        Ok(EntryKind::Delivery) => "delivery",
        Ok(EntryKind::DeadLetter) => "dead_letter",
        Ok(EntryKind::Replay) => "replay",
        Ok(EntryKind::ContactFile) => "contact_file",
        Err(_) => "unknown",
    }
}

/// A store time (ms since the Unix epoch) as RFC 3339; empty if out of range.
pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn record(policy: &Policy, entry: &JournalEntry) -> pb::JournalRecord {
    let purpose = policy
        .deliberation(&entry.deliberation)
        .map(|d| d.purpose.clone())
        .unwrap_or_default();
    pb::JournalRecord {
        number: entry.number,
        at: rfc3339(entry.at_ms),
        kind: kind_name(entry.kind).into(),
        ticket: entry.ticket.clone(),
        relay_of: entry.relay_of.clone(),
        sender: entry.sender.clone(),
        recipient: entry.recipient.clone(),
        flow: entry.flow as i32,
        niss: Niss::from_number(entry.niss)
            .map(|n| n.digits())
            .unwrap_or_default(),
        deliberation: entry.deliberation.clone(),
        purpose,
        reason: entry.reason.clone(),
        removed_fields: entry.removed_fields.clone(),
        attempt: entry.attempt,
        contact_file: entry.contact_file.clone(),
        a_posteriori: entry.a_posteriori,
        delivery_id: entry.delivery_id.clone(),
        message_id: entry.message_id.clone(),
        opened_at: if entry.opened_at_ms > 0 {
            rfc3339(entry.opened_at_ms)
        } else {
            String::new()
        },
        agent_id: entry.agent_id.clone(),
        consultation_purpose: entry.purpose.clone(),
        consultation: entry.consultation,
    }
}

/// `from`..=`to` in ms; a bare date means its whole day (UTC).
fn range(from: &str, to: &str) -> Result<(i64, i64), Status> {
    let from_ms = match from {
        "" => i64::MIN,
        text => parse_time(text, "from")?,
    };
    let to_ms = match to {
        "" => i64::MAX,
        text if text.len() == 10 => parse_time(text, "to")? + 86_400_000 - 1,
        text => parse_time(text, "to")?,
    };
    Ok((from_ms, to_ms))
}

fn parse_time(text: &str, field: &str) -> Result<i64, Status> {
    let parsed = if text.len() == 10 {
        time::Date::parse(
            text,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map(|d| d.midnight().assume_utc())
        .ok()
    } else {
        OffsetDateTime::parse(text, &Rfc3339).ok()
    };
    parsed.map(crate::ledger::unix_ms).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{field} is not a date (YYYY-MM-DD) or an RFC 3339 time"
        ))
    })
}

/// How long the ledger holds a ticket once nothing is left to do for it, when there is a
/// store to read it back from: the time a sender usually takes to track or relay it.
pub const SETTLED_HELD: std::time::Duration = std::time::Duration::from_secs(300);

/// How long the retention task keeps what.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Tickets and their message ids (`storage.ticket_days`).
    pub tickets: std::time::Duration,
    /// Settled tickets in the ledger's memory, when there is a store ([`SETTLED_HELD`]).
    pub settled_held: std::time::Duration,
    /// Time between passes.
    pub every: std::time::Duration,
}

/// Every `retention.every`, a [`retention_pass`].
pub fn spawn_retention(hub: Arc<Hub>, retention: Retention) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(retention.every);
        loop {
            ticker.tick().await;
            retention_pass(&hub, &retention).await;
        }
    });
}

/// What one [`retention_pass`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPass {
    /// Journal entries whose retention had passed.
    pub journal_entries: u64,
    /// Tickets accepted more than `retention.tickets` ago, each counted once (with a store,
    /// as the store forgot them; without one, as the ledger did).
    pub tickets_forgotten: u64,
}

/// Removes the journal entries whose retention has passed (counted in
/// `bcss_journal_entries_removed_total`), then forgets the tickets accepted more than
/// `retention.tickets` ago, in the store first (so that a restart does not bring them back) and
/// then in the ledger (counted in `bcss_tickets_forgotten_total`); with a store, the ledger
/// then lets go of the tickets settled and older than `retention.settled_held`
/// (`bcss_tickets_held` is what it still holds).
pub async fn retention_pass(hub: &Hub, retention: &Retention) -> RetentionPass {
    let now = OffsetDateTime::now_utc();
    let cutoff = now - retention.tickets;
    let mut pass = RetentionPass::default();
    let stored = match hub.outbox().store() {
        Some(store) => {
            pass.journal_entries = expire_journal(store).await;
            let forgotten = forget_stored_tickets(store, crate::ledger::unix_ms(cutoff)).await;
            hub.ledger().evict_settled(now - retention.settled_held);
            Some(forgotten)
        }
        None => None,
    };
    // With a store, every ticket the ledger still holds from before the cutoff is one the store
    // just forgot and counted.
    let in_ledger = hub.ledger().forget_accepted_before(cutoff) as u64;
    pass.tickets_forgotten = stored.unwrap_or(in_ledger);
    metrics::gauge!(crate::telemetry::TICKETS_HELD).set(hub.ledger().len() as f64);
    if pass.tickets_forgotten > 0 {
        metrics::counter!(crate::telemetry::TICKETS_FORGOTTEN).increment(pass.tickets_forgotten);
        tracing::info!(
            message = "Tickets past storage.ticket_days forgotten.",
            forgotten = pass.tickets_forgotten
        );
    }
    pass
}

/// Most entries or tickets one store operation of the retention task removes.
const RETENTION_PASS: usize = 10_000;

async fn expire_journal(store: &Store) -> u64 {
    match store.expire(bcss_store::now_ms(), RETENTION_PASS).await {
        Ok(0) => 0,
        Ok(removed) => {
            metrics::counter!(crate::telemetry::JOURNAL_REMOVED).increment(removed);
            tracing::info!(
                message = "Journal entries past their retention removed.",
                removed
            );
            removed
        }
        Err(error) => {
            tracing::warn!(message = "Journal retention pass failed.", %error);
            0
        }
    }
}

/// Forgets every stored ticket accepted before `before_ms`, a bounded pass at a time; returns
/// how many went.
async fn forget_stored_tickets(store: &Store, before_ms: i64) -> u64 {
    let mut forgotten = 0;
    loop {
        match store.forget_tickets(before_ms, RETENTION_PASS).await {
            Ok(n) => {
                forgotten += n;
                if n < RETENTION_PASS as u64 {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(message = "Ticket retention pass failed.", %error);
                break;
            }
        }
    }
    forgotten
}
