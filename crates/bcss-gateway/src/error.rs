//! Bad input, typed, and its mapping to gRPC status codes: the one place where that happens.
//!
//! Messages tell the sender what to fix and never carry a person's data: a NISS, a name or an
//! amount is never echoed back, only which field was wrong.

use bcss_domain::{Flow, NissError, PeriodError, RefusalReason};
use bcss_wire::WireError;
use tonic::{Code, Status};

/// Why an envelope is refused. Nothing is forwarded, and nothing is recorded: most are refused
/// before any routing decision; `DuplicateMessageId`, `OutboxFull` and `StoreUnavailable` after
/// it, when the ticket could not be recorded; `Internal` is the one that may follow a record.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("message_id is required: choose a unique id per message (it makes resubmission safe)")]
    MissingMessageId,
    #[error("message_id must be 1-128 printable ASCII characters without spaces")]
    BadMessageId,
    #[error("flow {0} is not a known flow: use FLOW_A052, FLOW_DMFA or FLOW_DIMONA")]
    UnknownFlow(i32),
    #[error(
        "the envelope carries no payload: set the a052, dmfa or dimona field matching the flow"
    )]
    MissingPayload,
    #[error("the envelope announces flow {announced} but its payload is {carried}")]
    PayloadFlowMismatch { announced: Flow, carried: Flow },
    #[error("envelope niss: {0}")]
    Niss(NissError),
    #[error("period is required: set at least period.start (YYYY-MM-DD)")]
    MissingPeriod,
    #[error("period.{field} is not a date YYYY-MM-DD")]
    BadDate { field: &'static str },
    #[error("period: {0}")]
    Period(PeriodError),
    #[error("the {flow} payload is not a well-formed message: {error}")]
    MalformedPayload { flow: Flow, error: WireError },
    #[error("the {flow} payload carries no NISS of the person")]
    PayloadNissMissing { flow: Flow },
    #[error("the NISS in the {flow} payload differs from the envelope's niss")]
    PayloadNissMismatch { flow: Flow },
    /// The addressee, [`quoted`].
    #[error("addressee {0} is not an institution of this network")]
    UnknownAddressee(String),
    /// The ticket, [`quoted`] (so are the next two).
    #[error("relay_of: ticket {0} is not known to the hub (or older than storage.ticket_days)")]
    UnknownRelayTicket(String),
    #[error("relay_of: ticket {0} was not delivered to you, so you cannot relay it")]
    RelayNotReceived(String),
    #[error("relay_of: ticket {0} is about another person or another flow than this message")]
    RelayMismatch(String),
    #[error("contact_file must be 1-128 printable ASCII characters without spaces")]
    BadContactFile,
    #[error(
        "purpose is required: 1-128 printable ASCII characters without spaces saying why the agent consults (e.g. holiday-pay-control)"
    )]
    BadPurpose,
    #[error(
        "agent_id is required: 1-64 printable ASCII characters without spaces identifying the agent who consults"
    )]
    BadAgentId,
    #[error(
        "institution \"{sender}\" may not send flow {flow}: no deliberation names it as a sender"
    )]
    FlowNotAllowed { sender: String, flow: Flow },
    #[error(
        "institution \"{sender}\" may not send flow {flow} to \"{addressee}\": no deliberation routes it there"
    )]
    AddresseeNotAllowed {
        sender: String,
        addressee: String,
        flow: Flow,
    },
    #[error("message_id \"{0}\" was already used for a different message: choose a new id")]
    DuplicateMessageId(String),
    #[error(
        "the message would have more than limits.max_fan_out = {limit} candidate recipients: \
         address it to each recipient instead"
    )]
    FanOutLimit { limit: usize },
    #[error(
        "this connection already has limits.max_concurrent_streams = {limit} calls open: \
         wait for one to finish, or open another connection"
    )]
    TooManyStreams { limit: usize },
    #[error(
        "the hub holds delivery.max_pending = {limit} deliveries not yet made: nothing was \
         accepted; retry in {retry_after_ms} ms"
    )]
    OutboxFull { limit: usize, retry_after_ms: u64 },
    #[error(
        "the hub cannot record messages right now (its data folder refuses writes): nothing was accepted; retry later"
    )]
    StoreUnavailable,
    #[error(
        "the hub failed while handling this message (a fault of the hub, logged): it may have \
         been accepted; resubmit it under the same message id to learn its ticket"
    )]
    Internal,
    #[error(
        "institution \"{institution}\" is over limits.rate_per_second = {rate} messages per second \
         (burst {burst}): retry in {retry_after_ms} ms"
    )]
    RateLimited {
        institution: String,
        rate: u32,
        burst: u32,
        retry_after_ms: u64,
    },
}

/// A string the client sent, fit to quote back in an error: itself in quotes when it is a token
/// (1-128 printable ASCII characters, as ids and tickets are), else only what it is not. A
/// client's string is never echoed whole: it may be megabytes, or carry what it should not.
pub(crate) fn quoted(text: &str) -> String {
    if crate::pipeline::printable_token(text) {
        format!("\"{text}\"")
    } else {
        format!(
            "(a value of {} bytes, not 1-128 printable ASCII characters)",
            text.len()
        )
    }
}

impl InputError {
    pub fn code(&self) -> Code {
        match self {
            InputError::UnknownRelayTicket(_) => Code::NotFound,
            InputError::RelayNotReceived(_)
            | InputError::FlowNotAllowed { .. }
            | InputError::AddresseeNotAllowed { .. } => Code::PermissionDenied,
            InputError::DuplicateMessageId(_) => Code::AlreadyExists,
            InputError::FanOutLimit { .. }
            | InputError::RateLimited { .. }
            | InputError::TooManyStreams { .. }
            | InputError::OutboxFull { .. } => Code::ResourceExhausted,
            InputError::StoreUnavailable => Code::Unavailable,
            InputError::Internal => Code::Internal,
            _ => Code::InvalidArgument,
        }
    }
}

/// The store failed: logged with its cause here, answered `UNAVAILABLE` without it (a cause
/// names files of the hub's machine).
pub fn store_status(error: bcss_store::StoreError) -> Status {
    tracing::error!(message = "Store operation failed.", %error);
    Status::unavailable("the hub's data folder cannot be read or written right now; retry later")
}

impl From<InputError> for Status {
    fn from(error: InputError) -> Status {
        let mut status = Status::new(error.code(), error.to_string());
        if let InputError::RateLimited { retry_after_ms, .. }
        | InputError::OutboxFull { retry_after_ms, .. } = error
        {
            // gRPC's retry pushback: a client library that honours it waits this long.
            if let Ok(value) = retry_after_ms.to_string().parse() {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", value);
            }
        }
        status
    }
}

/// Why a consultation (`Gateway.Consult`) got no answer. Messages name institutions, flows,
/// deliberations and fields, never the person.
#[derive(Debug, thiserror::Error)]
pub enum ConsultError {
    /// Bad input: nothing was asked or journalled.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Refused by policy (journalled).
    #[error("consultation refused ({}): {}", reason.name(), consult_refusal(*reason, consulter, deliberation.as_deref()))]
    Refused {
        reason: RefusalReason,
        consulter: String,
        deliberation: Option<String>,
    },
    /// The source did not answer within `delivery.consult_timeout_ms`.
    #[error(
        "the source \"{source_id}\" did not answer within delivery.consult_timeout_ms = {ms} ms; nothing was returned: retry later"
    )]
    SourceDeadline { source_id: String, ms: u128 },
    /// The source could not be reached, failed, or answered something the hub does not pass on.
    #[error(
        "the source \"{source_id}\" could not answer ({why}); nothing was returned: retry later"
    )]
    SourceUnavailable { source_id: String, why: String },
    /// The source holds no data about the person for the period.
    #[error("the source \"{source_id}\" holds no {flow} data about this person for this period")]
    NotFound { source_id: String, flow: Flow },
    /// The consultation could not be journalled, so it was not made.
    #[error(
        "the hub cannot journal consultations right now (its data folder refuses writes): nothing was asked or returned; retry later"
    )]
    JournalUnavailable,
}

/// What a consulting institution can do about a refusal, in a sentence.
fn consult_refusal(reason: RefusalReason, consulter: &str, deliberation: Option<&str>) -> String {
    let under = deliberation.map_or(String::new(), |d| format!(" under deliberation {d}"));
    match reason {
        RefusalReason::NoDeliberation => {
            format!("no deliberation lets institution \"{consulter}\" consult this flow")
        }
        RefusalReason::NotIntegrated => format!(
            "institution \"{consulter}\" has not integrated this person in the reference directory; integrate them first (Directory.Integrate){under}"
        ),
        RefusalReason::QualityCodeNotAccepted => format!(
            "institution \"{consulter}\" integrated this person under no quality code the deliberation accepts{under} (19/010: manual worker or artist only)"
        ),
        RefusalReason::PeriodOutsideIntegration => format!(
            "institution \"{consulter}\"'s accepted integrations of this person do not cover the period asked{under}"
        ),
        RefusalReason::AgentNotAllowed => format!(
            "the agent is not one of those the deliberation names{under}; only the named agents may consult"
        ),
        RefusalReason::ContactFileMissing => format!(
            "consultations{under} have no prior integration check and must cite the contact file that justifies them: set contact_file"
        ),
        other => format!("{other}{under}"),
    }
}

impl ConsultError {
    pub fn code(&self) -> Code {
        match self {
            ConsultError::Input(error) => error.code(),
            ConsultError::Refused { .. } => Code::PermissionDenied,
            ConsultError::SourceDeadline { .. } => Code::DeadlineExceeded,
            ConsultError::SourceUnavailable { .. } | ConsultError::JournalUnavailable => {
                Code::Unavailable
            }
            ConsultError::NotFound { .. } => Code::NotFound,
        }
    }
}

impl From<ConsultError> for Status {
    fn from(error: ConsultError) -> Status {
        let (code, message) = (error.code(), error.to_string());
        match error {
            ConsultError::Input(input) => input.into(),
            ConsultError::Refused { reason, .. } => {
                let mut status = Status::new(code, message);
                // The reason's stable name, for programs: `bcss-refusal-reason: not_integrated`.
                if let Ok(value) = reason.name().parse() {
                    status.metadata_mut().insert("bcss-refusal-reason", value);
                }
                status
            }
            _ => Status::new(code, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn only_short_printable_values_are_quoted_back() {
        let long = "x".repeat(129);
        // (what the client sent, what an error says of it)
        let table = [
            ("cpas-liege", "\"cpas-liege\""),
            (&long[..128], &*format!("\"{}\"", &long[..128])),
            (
                &long,
                "(a value of 129 bytes, not 1-128 printable ASCII characters)",
            ),
            (
                "",
                "(a value of 0 bytes, not 1-128 printable ASCII characters)",
            ),
            (
                "two words",
                "(a value of 9 bytes, not 1-128 printable ASCII characters)",
            ),
            (
                "line\nbreak",
                "(a value of 10 bytes, not 1-128 printable ASCII characters)",
            ),
            (
                "café",
                "(a value of 5 bytes, not 1-128 printable ASCII characters)",
            ),
        ];
        for (sent, said) in table {
            assert_eq!(quoted(sent), said, "{sent:?}");
        }
    }
}
