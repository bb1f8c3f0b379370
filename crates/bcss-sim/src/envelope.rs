//! Building envelopes as a sending institution does.

use bcss_domain::Niss;
use bcss_proto::flows::v1 as f;
use bcss_proto::hub::v1::{Envelope, Flow, envelope::Payload};
use time::Date;

/// A flow message ready to put in an envelope. Short-lived (built, then moved into the
/// envelope), so the size difference between variants does not matter.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum FlowMessage {
    A052(f::A052),
    Dmfa(f::Dmfa),
    Dimona(f::Dimona),
}

impl FlowMessage {
    pub fn flow(&self) -> Flow {
        match self {
            FlowMessage::A052(_) => Flow::A052,
            FlowMessage::Dmfa(_) => Flow::Dmfa,
            FlowMessage::Dimona(_) => Flow::Dimona,
        }
    }
}

/// An envelope about `niss` for the period `from`-`to`.
pub fn envelope(
    message_id: impl Into<String>,
    niss: Niss,
    from: Date,
    to: Option<Date>,
    message: FlowMessage,
) -> Envelope {
    let date = bcss_domain::iso_date;
    Envelope {
        message_id: message_id.into(),
        flow: message.flow() as i32,
        niss: niss.digits(),
        period: Some(f::Period {
            start: date(from),
            end: to.map(date).unwrap_or_default(),
        }),
        addressee: None,
        relay_of: None,
        contact_file: None,
        payload: Some(match message {
            FlowMessage::A052(m) => Payload::A052(m),
            FlowMessage::Dmfa(m) => Payload::Dmfa(m),
            FlowMessage::Dimona(m) => Payload::Dimona(m),
        }),
    }
}
