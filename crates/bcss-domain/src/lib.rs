//! The hub's domain: who may receive what about whom, decided without I/O.
//!
//! # Layout
//!
//! - [`niss`]: the person's identification number, with its check digits.
//! - [`period`]: calendar periods and their overlap.
//! - [`party`]: sectors, institutions and quality codes, as compact indices.
//! - [`flow`]: the flow messages the hub carries.
//! - [`deliberation`]: authorisations of the Information Security Committee.
//! - [`decision`]: the integration check and the routing decision for one recipient.
//! - [`consultation`]: the decision for a consultation (who may consult which source's data).
//!
//! Nothing here does I/O, knows protobuf, or is async: the edge converts into these types.

pub mod consultation;
pub mod decision;
pub mod deliberation;
pub mod flow;
pub mod niss;
pub mod party;
pub mod period;

pub use consultation::{Consult, ConsultAdmission, check_consultation};
pub use decision::{Admission, Integration, Refusal, RefusalReason, check_recipient};
pub use deliberation::{CheckMode, Consultation, Deliberation, DeliberationId, PartySet, Route};
pub use flow::Flow;
pub use niss::{Niss, NissError, NissKind};
pub use party::{InstitutionIndex, Party, QualityCode, SectorIndex, SectorQuality, valid_id};
pub use period::{Period, PeriodError, iso_date};
