//! Deliberations: the authorisations that say who may send which flow to whom, under which
//! integration check, with which fields, for how long.
//!
//! The field lists are not here: they are a wire-level concern, compiled by the policy next to
//! each deliberation. This module holds what the routing decision needs.

use time::Date;

use crate::flow::Flow;
use crate::party::{InstitutionIndex, Party, SectorIndex, SectorQuality};

/// A deliberation's number, as the committee writes it (`20/130`).
pub type DeliberationId = std::sync::Arc<str>;

/// One deliberation of the Information Security Committee, as the hub enforces it.
#[derive(Clone, Debug)]
pub struct Deliberation {
    pub id: DeliberationId,
    pub title: String,
    /// The day the committee decided it.
    pub decided_on: Date,
    /// The purpose ("finalité") the recipients may use the data for.
    pub purpose: String,
    /// First day the authorisation holds.
    pub valid_from: Date,
    /// Last day it holds; `None` for an authorisation of indefinite duration.
    pub valid_until: Option<Date>,
    /// How many years the exchange may be kept (recipients' data and the hub's journal).
    pub retention_years: u16,
    /// Who may send to whom under it.
    pub routes: Vec<Route>,
    /// What must hold before a recipient receives anything.
    pub check: CheckMode,
    /// The flows it covers.
    pub flows: Vec<Flow>,
    /// A cap on the number of named agents who may consult under it (003 §36), if any.
    pub max_agents: Option<u16>,
    /// What it allows of consultations through the hub (`Gateway.Consult`), if it allows them.
    pub consultation: Option<Consultation>,
}

/// How a deliberation lets its routes' recipients *consult* data its routes' senders hold: the
/// recipient asks the hub, the hub asks the source and returns the answer filtered down to the
/// deliberation's fields (003 §3, 000 §9).
#[derive(Clone, Debug, Default)]
pub struct Consultation {
    /// The institution that holds each consultable flow's data: the source the hub asks.
    pub sources: Vec<(Flow, InstitutionIndex)>,
    /// The agents who may consult, when the deliberation limits them (003 §36: at most 12,
    /// named by the consulting institution). `None`: any agent of an authorised institution,
    /// each identified in the journal.
    pub agents: Option<Vec<String>>,
    /// The answer is for viewing only: the consulting institution may not store it (003 §37).
    pub view_only: bool,
}

impl Consultation {
    /// The source of `flow`'s data, if the flow may be consulted.
    pub fn source(&self, flow: Flow) -> Option<InstitutionIndex> {
        self.sources
            .iter()
            .find(|(f, _)| *f == flow)
            .map(|(_, source)| *source)
    }

    /// True when `agent` may consult: any agent when none are named, otherwise a named one.
    pub fn allows_agent(&self, agent: &str) -> bool {
        self.agents
            .as_ref()
            .is_none_or(|named| named.iter().any(|a| a == agent))
    }
}

/// One leg authorised by a deliberation: these senders to these recipients.
#[derive(Clone, Debug)]
pub struct Route {
    pub senders: PartySet,
    pub recipients: PartySet,
    /// The leg is the second hop of a chain (CAPELO: SIGeDIS → SdPSP) and must carry the
    /// ticket of the message it relays.
    pub relay: bool,
}

/// A set of institutions named one by one or by sector, or every institution.
#[derive(Clone, Debug, Default)]
pub struct PartySet {
    pub any: bool,
    pub sectors: Vec<SectorIndex>,
    pub institutions: Vec<InstitutionIndex>,
}

impl PartySet {
    pub fn contains(&self, party: Party) -> bool {
        self.any
            || self.sectors.contains(&party.sector)
            || self.institutions.contains(&party.institution)
    }

    /// True when the two sets may name a common institution (used to find overlapping
    /// deliberations); `sector_of` tells the sector of a named institution.
    pub fn may_intersect(
        &self,
        other: &PartySet,
        sector_of: impl Fn(InstitutionIndex) -> SectorIndex,
    ) -> bool {
        if self.any || other.any {
            return true;
        }
        let in_other = |i: &InstitutionIndex| {
            other.institutions.contains(i) || other.sectors.contains(&sector_of(*i))
        };
        let in_self = |i: &InstitutionIndex| self.sectors.contains(&sector_of(*i));
        self.sectors.iter().any(|s| other.sectors.contains(s))
            || self.institutions.iter().any(in_other)
            || other.institutions.iter().any(in_self)
    }
}

/// What the hub checks before delivering under a deliberation.
#[derive(Clone, Debug)]
pub enum CheckMode {
    /// The recipient must have integrated the person beforehand under one of these qualities,
    /// for a period overlapping the message's (001 §13).
    PriorIntegration { accepted: Vec<SectorQuality> },
    /// No prior check is possible; the delivery must cite a contact file and is audited
    /// afterwards against it (000 §9, §15).
    APosteriori,
}

/// Where a date stands against a deliberation's validity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    NotYetValid,
    Valid,
    Expired,
}

impl Deliberation {
    /// The route that lets `sender` send to `recipient`, if any.
    pub fn route(&self, sender: Party, recipient: Party) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.senders.contains(sender) && route.recipients.contains(recipient))
    }

    /// True when some route lets `sender` send under this deliberation.
    pub fn has_sender(&self, sender: Party) -> bool {
        self.routes
            .iter()
            .any(|route| route.senders.contains(sender))
    }

    pub fn validity(&self, day: Date) -> Validity {
        if day < self.valid_from {
            Validity::NotYetValid
        } else if self.valid_until.is_some_and(|until| day > until) {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// True when the two deliberations' validity periods share a day.
    pub fn validity_overlaps(&self, other: &Deliberation) -> bool {
        let a = crate::Period {
            start: self.valid_from,
            end: self.valid_until,
        };
        let b = crate::Period {
            start: other.valid_from,
            end: other.valid_until,
        };
        a.overlaps(&b)
    }
}
