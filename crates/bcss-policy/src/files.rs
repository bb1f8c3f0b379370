//! The shapes of the configuration files, as serde reads them. Unknown keys are errors, so a
//! typo in a key is caught at start-up rather than silently ignored.

use serde::Deserialize;
use toml::value::Datetime;

/// `institutions.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstitutionsFile {
    #[serde(rename = "sector", default)]
    pub sectors: Vec<SectorEntry>,
    #[serde(rename = "institution", default)]
    pub institutions: Vec<InstitutionEntry>,
    #[serde(rename = "operator", default)]
    pub operators: Vec<OperatorEntry>,
}

/// A person or service of the hub's own staff, who calls the hub's operations (reload, the
/// journal of others, dead letters) rather than exchanging data.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorEntry {
    pub id: String,
    pub name: String,
    /// `operator` (reload, dead letters) and/or `auditor` (every exchange's track and journal).
    pub roles: Vec<String>,
    /// The DNS name in its certificate; `<id>.operators.bcss.test` when absent.
    pub certificate_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectorEntry {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstitutionEntry {
    pub id: String,
    pub name: String,
    pub sector: String,
    /// `host:port` of the institution's `Institution` service.
    pub endpoint: String,
    /// The DNS name in its certificate; `<id>.institutions.bcss.test` when absent.
    pub certificate_name: Option<String>,
}

/// `quality_codes.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityCodesFile {
    #[serde(rename = "sector", default)]
    pub sectors: Vec<SectorCodes>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectorCodes {
    pub sector: String,
    pub codes: Vec<QualityEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityEntry {
    pub code: u16,
    pub name: String,
}

/// One file of `deliberations/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliberationFile {
    pub id: String,
    pub title: String,
    pub decided_on: Datetime,
    pub purpose: String,
    pub valid_from: Datetime,
    pub valid_until: Option<Datetime>,
    pub retention_years: u16,
    /// At most this many named agents may consult under it (003 §36); needs
    /// `[consultation] agents`.
    pub max_agents: Option<u16>,
    /// Present when the deliberation allows consultations through `Gateway.Consult`.
    pub consultation: Option<ConsultationEntry>,
    #[serde(rename = "route")]
    pub routes: Vec<RouteEntry>,
    pub check: CheckEntry,
    #[serde(rename = "flow")]
    pub flows: Vec<FlowEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// Institution ids, `sector:<id>`, or `sector:*` for every institution.
    pub senders: Vec<String>,
    pub recipients: Vec<String>,
    #[serde(default)]
    pub relay: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckEntry {
    /// `prior_integration` or `a_posteriori`.
    pub mode: String,
    /// `<sector>:<code>`, for `prior_integration`.
    #[serde(default)]
    pub quality_codes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowEntry {
    pub flow: String,
    /// Dot-separated field paths relative to the flow message.
    pub fields: Vec<String>,
}

/// `[consultation]` of a deliberation: its routes' recipients may consult data its routes'
/// senders hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsultationEntry {
    /// Per flow name (`DMFA`, `DIMONA`), the id of the institution that holds the data: the
    /// source the hub asks (`Institution.Answer`).
    pub sources: std::collections::BTreeMap<String, String>,
    /// The agents who may consult (at most `max_agents`); absent: any agent, each journalled.
    pub agents: Option<Vec<String>>,
    /// The answer may be viewed but not stored by the consulting institution.
    #[serde(default)]
    pub view_only: bool,
}
