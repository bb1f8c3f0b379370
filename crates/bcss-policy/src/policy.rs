//! The compiled policy: institutions, quality codes and deliberations, validated together and
//! indexed for the data path.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bcss_domain::deliberation::{CheckMode, Consultation, Deliberation, PartySet, Route};
use bcss_domain::{Flow, InstitutionIndex, Party, QualityCode, SectorIndex, SectorQuality};
use bcss_wire::{FieldTree, WireError};
use time::Date;

use crate::error::{ConfigError, Problem, read_toml};
use crate::files::{DeliberationFile, InstitutionsFile, QualityCodesFile};
use crate::schema::{FieldNames, Schema};
use crate::settings::Settings;

/// A sector of the network.
#[derive(Clone, Debug)]
pub struct Sector {
    pub index: SectorIndex,
    pub id: String,
    pub name: String,
}

/// An institution of the network.
#[derive(Clone, Debug)]
pub struct Institution {
    pub index: InstitutionIndex,
    pub id: Arc<str>,
    pub name: String,
    pub sector: SectorIndex,
    /// `host:port` of its `Institution` service.
    pub endpoint: String,
    /// The DNS name its certificate carries.
    pub certificate_name: String,
}

impl Institution {
    pub fn party(&self) -> Party {
        Party {
            institution: self.index,
            sector: self.sector,
        }
    }
}

/// A role of the hub's staff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs the hub: reloads the policy, handles dead letters.
    Operator,
    /// Reads every exchange (tracks, journal), for the security adviser and the citizen's view.
    Auditor,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A member of the hub's staff, known by its certificate. Not an institution: it sends and
/// receives no flow messages.
#[derive(Clone, Debug)]
pub struct Operator {
    pub id: Arc<str>,
    pub name: String,
    pub roles: Vec<Role>,
    /// The DNS name its certificate carries.
    pub certificate_name: String,
}

impl Operator {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// What a deliberation grants for one flow: its field list, as written and compiled, and the
/// name of every field its filter can drop.
#[derive(Clone, Debug)]
pub struct Grant {
    pub paths: Vec<String>,
    pub tree: FieldTree,
    pub names: FieldNames,
}

impl Grant {
    /// The paths of the fields present in `payload` that this grant drops: the names a
    /// recipient loses, never the values, each once, in the payload's order. Found by walking
    /// the wire format with the grant's tree, like the filter; fields the schema does not know
    /// are dropped unnamed.
    pub fn removed_fields(&self, payload: &[u8]) -> Result<Vec<String>, WireError> {
        let mut removed: Vec<String> = Vec::new();
        bcss_wire::for_each_dropped(&self.tree, payload, |node, number| {
            if let Some(name) = self.names.name(node, number)
                && !removed.iter().any(|seen| seen == name)
            {
                removed.push(name.to_owned());
            }
        })?;
        Ok(removed)
    }
}

/// The policy's maps: filled from the configuration files, then only read, by the data path on
/// every message. foldhash: faster than SipHash, and no request can add a key.
type LookupMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The immutable policy snapshot the data path reads.
#[derive(Debug)]
pub struct Policy {
    sectors: Vec<Sector>,
    institutions: Vec<Institution>,
    by_id: LookupMap<Arc<str>, InstitutionIndex>,
    by_certificate: LookupMap<String, InstitutionIndex>,
    operators: Vec<Operator>,
    qualities: LookupMap<SectorQuality, String>,
    deliberations: Vec<Deliberation>,
    /// Per deliberation (same order), the grant of each flow it covers.
    grants: Vec<LookupMap<Flow, Grant>>,
    /// Per deliberation (same order), the file it came from.
    sources: Vec<PathBuf>,
    /// Deliberations whose routes reach an institution, per flow: indexed by the institution's
    /// index, then the flow's position in `Flow::ALL` (no hashing on the data path: the
    /// integration check asks this for every candidate).
    by_recipient: Vec<[Vec<usize>; Flow::ALL.len()]>,
    schema: Schema,
}

/// A flow's position in `Flow::ALL`.
fn flow_position(flow: Flow) -> usize {
    match flow {
        Flow::A052 => 0,
        Flow::Dmfa => 1,
        Flow::Dimona => 2,
    }
}

/// Collects problems while loading, so that one run reports all of them.
/// Whether `endpoint` is `host:port`: an IP socket address, or a host name (letters, digits,
/// dashes and dots) and a port from 1 to 65535.
fn host_and_port(endpoint: &str) -> bool {
    if endpoint.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    host_ok && port.parse::<u16>().is_ok_and(|port| port > 0)
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, file: &Path, entry: impl Into<String>, problem: impl Into<String>) {
        self.0.push(Problem {
            file: file.to_owned(),
            entry: entry.into(),
            problem: problem.into(),
        });
    }
}

impl Policy {
    /// Loads and validates the policy files named by `settings`.
    pub fn load(settings: &Settings) -> Result<Policy, ConfigError> {
        Policy::load_files(
            &settings.files.institutions,
            &settings.files.quality_codes,
            &settings.files.deliberations,
        )
    }

    /// Loads and validates the three parts of the policy.
    pub fn load_files(
        institutions: &Path,
        quality_codes: &Path,
        deliberations: &Path,
    ) -> Result<Policy, ConfigError> {
        let institutions_file: InstitutionsFile = read_toml(institutions)?;
        let codes_file: QualityCodesFile = read_toml(quality_codes)?;
        let mut deliberation_files = Vec::new();
        for file in deliberation_paths(deliberations)? {
            let parsed: DeliberationFile = read_toml(&file)?;
            deliberation_files.push((file, parsed));
        }
        let mut problems = Problems(Vec::new());
        let mut policy = Policy {
            sectors: Vec::new(),
            institutions: Vec::new(),
            by_id: LookupMap::default(),
            by_certificate: LookupMap::default(),
            operators: Vec::new(),
            qualities: LookupMap::default(),
            deliberations: Vec::new(),
            grants: Vec::new(),
            sources: Vec::new(),
            by_recipient: Vec::new(),
            schema: Schema::load(),
        };
        policy.add_institutions(institutions, institutions_file, &mut problems);
        policy.add_quality_codes(quality_codes, codes_file, &mut problems);
        for (file, parsed) in deliberation_files {
            policy.add_deliberation(&file, parsed, &mut problems);
        }
        policy.check_overlaps(&mut problems);
        if problems.0.is_empty() {
            Ok(policy)
        } else {
            Err(ConfigError::Invalid(problems.0))
        }
    }

    fn add_institutions(&mut self, file: &Path, parsed: InstitutionsFile, problems: &mut Problems) {
        for entry in parsed.sectors {
            // Named in deliberations as `sector:<id>` and `<id>:<code>`: no `*`, no `:`.
            let valid = entry.id.bytes().any(|b| b.is_ascii_lowercase())
                && entry.id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid {
                problems.add(
                    file,
                    format!("sector \"{}\"", entry.id),
                    "a sector id is lower-case letters, digits, dashes and underscores",
                );
                continue;
            }
            if self.sector_by_id(&entry.id).is_some() {
                problems.add(file, format!("sector \"{}\"", entry.id), "defined twice");
                continue;
            }
            let index = SectorIndex(self.sectors.len() as u16);
            self.sectors.push(Sector {
                index,
                id: entry.id,
                name: entry.name,
            });
        }
        for entry in parsed.institutions {
            let what = format!("institution \"{}\"", entry.id);
            if !bcss_domain::valid_id(&entry.id) {
                problems.add(
                    file,
                    &what,
                    "an id is lower-case letters, digits and dashes",
                );
                continue;
            }
            if self.by_id.contains_key(entry.id.as_str()) {
                problems.add(file, &what, "defined twice");
                continue;
            }
            let Some(sector) = self.sector_by_id(&entry.sector).map(|s| s.index) else {
                problems.add(file, &what, format!("unknown sector \"{}\"", entry.sector));
                continue;
            };
            if !host_and_port(&entry.endpoint) {
                problems.add(
                    file,
                    &what,
                    format!(
                        "endpoint \"{}\" is not host:port (a host name or IP address, a port \
                         1-65535, no scheme: the hub chooses https)",
                        entry.endpoint
                    ),
                );
                continue;
            }
            let certificate_name = entry
                .certificate_name
                .unwrap_or_else(|| format!("{}.institutions.bcss.test", entry.id));
            if let Some(other) = self.by_certificate.get(&certificate_name) {
                let other = &self.institutions[other.0 as usize].id;
                problems.add(file, &what, format!("certificate name \"{certificate_name}\" is already institution \"{other}\"'s"));
                continue;
            }
            let index = InstitutionIndex(self.institutions.len() as u16);
            let id: Arc<str> = entry.id.into();
            self.by_id.insert(id.clone(), index);
            self.by_certificate.insert(certificate_name.clone(), index);
            self.institutions.push(Institution {
                index,
                id,
                name: entry.name,
                sector,
                endpoint: entry.endpoint,
                certificate_name,
            });
        }
        for entry in parsed.operators {
            let what = format!("operator \"{}\"", entry.id);
            if !bcss_domain::valid_id(&entry.id) {
                problems.add(
                    file,
                    &what,
                    "an id is lower-case letters, digits and dashes",
                );
                continue;
            }
            if self.by_id.contains_key(entry.id.as_str())
                || self.operators.iter().any(|o| *o.id == entry.id)
            {
                problems.add(
                    file,
                    &what,
                    "the id is already an institution's or another operator's",
                );
                continue;
            }
            let mut roles = Vec::new();
            for role in &entry.roles {
                match role.as_str() {
                    "operator" => roles.push(Role::Operator),
                    "auditor" => roles.push(Role::Auditor),
                    other => problems.add(
                        file,
                        &what,
                        format!(
                            "unknown role \"{other}\": the roles are \"operator\" and \"auditor\""
                        ),
                    ),
                }
            }
            if roles.is_empty() {
                problems.add(file, &what, "needs at least one role");
                continue;
            }
            let certificate_name = entry
                .certificate_name
                .unwrap_or_else(|| format!("{}.operators.bcss.test", entry.id));
            if self.by_certificate.contains_key(&certificate_name)
                || self
                    .operators
                    .iter()
                    .any(|o| o.certificate_name == certificate_name)
            {
                problems.add(
                    file,
                    &what,
                    format!("certificate name \"{certificate_name}\" is already someone else's"),
                );
                continue;
            }
            self.operators.push(Operator {
                id: entry.id.into(),
                name: entry.name,
                roles,
                certificate_name,
            });
        }
    }

    fn add_quality_codes(
        &mut self,
        file: &Path,
        parsed: QualityCodesFile,
        problems: &mut Problems,
    ) {
        for sector_codes in parsed.sectors {
            let Some(sector) = self.sector_by_id(&sector_codes.sector).map(|s| s.index) else {
                problems.add(
                    file,
                    format!("sector \"{}\"", sector_codes.sector),
                    "unknown sector (not in institutions.toml)",
                );
                continue;
            };
            for entry in sector_codes.codes {
                let what = format!("sector \"{}\", code {:03}", sector_codes.sector, entry.code);
                let code = match QualityCode::new(entry.code) {
                    Some(code)
                        if code.is_specific()
                            || code == QualityCode::DEFINITIVE
                            || code == QualityCode::PROVISIONAL =>
                    {
                        code
                    }
                    _ => {
                        problems.add(file, &what, "a quality code is 000 (definitive), 902 (provisional) or 001-900 (specific)");
                        continue;
                    }
                };
                if self
                    .qualities
                    .insert(SectorQuality { sector, code }, entry.name)
                    .is_some()
                {
                    problems.add(file, &what, "defined twice");
                }
            }
        }
    }

    fn add_deliberation(&mut self, file: &Path, parsed: DeliberationFile, problems: &mut Problems) {
        let start = problems.0.len();
        let id = format!("deliberation {}", parsed.id);
        if let Some(other) = self.deliberations.iter().position(|d| *d.id == *parsed.id) {
            problems.add(
                file,
                &id,
                format!(
                    "{} already defines a deliberation with this number",
                    self.sources[other].display()
                ),
            );
        }
        let mut date = |value: &toml::value::Datetime, key: &str| match parse_date(value) {
            Some(date) => date,
            None => {
                problems.add(
                    file,
                    format!("{id}, {key}"),
                    "expected a date like 2020-05-05",
                );
                Date::MIN
            }
        };
        let decided_on = date(&parsed.decided_on, "decided_on");
        let valid_from = date(&parsed.valid_from, "valid_from");
        let valid_until = parsed.valid_until.as_ref().map(|d| date(d, "valid_until"));
        if valid_until.is_some_and(|until| until < valid_from) {
            problems.add(file, &id, "valid_until is before valid_from");
        }
        let mut routes = Vec::new();
        for (i, route) in parsed.routes.iter().enumerate() {
            let entry = format!("{id}, route {}", i + 1);
            let senders = self.party_set(file, &entry, "senders", &route.senders, problems);
            let recipients =
                self.party_set(file, &entry, "recipients", &route.recipients, problems);
            routes.push(Route {
                senders,
                recipients,
                relay: route.relay,
            });
        }
        if routes.is_empty() {
            problems.add(
                file,
                &id,
                "no [[route]]: a deliberation names its senders and recipients",
            );
        }
        let check = match parsed.check.mode.as_str() {
            "prior_integration" => {
                let mut accepted = Vec::new();
                for code in &parsed.check.quality_codes {
                    match self.sector_quality(code) {
                        Ok(quality) => {
                            let reached = routes.iter().any(|r| {
                                r.recipients.any
                                    || r.recipients.sectors.contains(&quality.sector)
                                    || r.recipients.institutions.iter().any(|i| {
                                        self.institutions[i.0 as usize].sector == quality.sector
                                    })
                            });
                            if !reached {
                                problems.add(file, format!("{id}, check"), format!("quality code \"{code}\" belongs to a sector no route reaches"));
                            }
                            accepted.push(quality);
                        }
                        Err(problem) => problems.add(file, format!("{id}, check"), problem),
                    }
                }
                // The other way round: a recipient whose sector has no accepted code would be
                // refused every delivery (quality_code_not_accepted), which is a mistake in the
                // file, not a policy.
                let uncovered: std::collections::BTreeSet<u16> = routes
                    .iter()
                    .flat_map(|route| {
                        let listed = route.recipients.sectors.iter().copied();
                        let of_institutions = route
                            .recipients
                            .institutions
                            .iter()
                            .map(|i| self.institutions[i.0 as usize].sector);
                        listed.chain(of_institutions)
                    })
                    .filter(|sector| !accepted.iter().any(|q| q.sector == *sector))
                    .map(|sector| sector.0)
                    .collect();
                if !accepted.is_empty() {
                    for sector in uncovered {
                        let name = &self.sectors[usize::from(sector)].id;
                        problems.add(file, format!("{id}, check"), format!("no accepted quality code of sector \"{name}\", which a route reaches: its institutions would be refused every delivery"));
                    }
                }
                if accepted.is_empty() && parsed.check.quality_codes.is_empty() {
                    problems.add(
                        file,
                        format!("{id}, check"),
                        "prior_integration needs at least one accepted quality code",
                    );
                }
                CheckMode::PriorIntegration { accepted }
            }
            "a_posteriori" => {
                if !parsed.check.quality_codes.is_empty() {
                    problems.add(
                        file,
                        format!("{id}, check"),
                        "a_posteriori takes no quality codes: nothing is checked beforehand",
                    );
                }
                CheckMode::APosteriori
            }
            other => {
                problems.add(
                    file,
                    format!("{id}, check"),
                    format!("unknown mode \"{other}\": expected prior_integration or a_posteriori"),
                );
                CheckMode::APosteriori
            }
        };
        let mut flows = Vec::new();
        let mut grants = LookupMap::default();
        for entry in &parsed.flows {
            let what = format!("{id}, flow {}", entry.flow);
            let Ok(flow) = entry.flow.parse::<Flow>() else {
                problems.add(file, &what, "unknown flow: expected A052, DMFA or DIMONA");
                continue;
            };
            if flows.contains(&flow) {
                problems.add(file, &what, "listed twice");
                continue;
            }
            let mut seen = HashSet::new();
            for path in &entry.fields {
                if !seen.insert(path) {
                    problems.add(file, &what, format!("field path `{path}` is listed twice"));
                }
            }
            match self.schema.compile(flow, &entry.fields) {
                Ok(tree) if tree.is_empty() => problems.add(file, &what, "the field list is empty"),
                Ok(tree) => {
                    let names = self.schema.field_names(flow, &tree);
                    grants.insert(
                        flow,
                        Grant {
                            paths: entry.fields.clone(),
                            tree,
                            names,
                        },
                    );
                }
                Err(paths) => {
                    for problem in paths {
                        problems.add(file, &what, problem);
                    }
                }
            }
            flows.push(flow);
        }
        let consultation = self.consultation(file, &id, &parsed, &routes, &flows, problems);
        if problems.0.len() > start {
            return;
        }
        let index = self.deliberations.len();
        for flow in &flows {
            for institution in &self.institutions {
                if routes
                    .iter()
                    .any(|r| r.recipients.contains(institution.party()))
                {
                    let at = usize::from(institution.index.0);
                    if self.by_recipient.len() <= at {
                        self.by_recipient.resize_with(at + 1, Default::default);
                    }
                    self.by_recipient[at][flow_position(*flow)].push(index);
                }
            }
        }
        self.deliberations.push(Deliberation {
            id: parsed.id.into(),
            title: parsed.title,
            decided_on,
            purpose: parsed.purpose,
            valid_from,
            valid_until,
            retention_years: parsed.retention_years,
            routes,
            check,
            flows,
            max_agents: parsed.max_agents,
            consultation,
        });
        self.grants.push(grants);
        self.sources.push(file.to_owned());
    }

    /// `[consultation]` of a deliberation: each source an institution its routes send from, for
    /// a flow it covers; named agents valid, distinct, and no more than `max_agents`.
    fn consultation(
        &self,
        file: &Path,
        id: &str,
        parsed: &DeliberationFile,
        routes: &[Route],
        flows: &[Flow],
        problems: &mut Problems,
    ) -> Option<Consultation> {
        let what = format!("{id}, consultation");
        let Some(entry) = &parsed.consultation else {
            if parsed.max_agents.is_some() {
                problems.add(
                    file,
                    id,
                    "max_agents limits who consults: add a [consultation] section naming the agents",
                );
            }
            return None;
        };
        let mut sources = Vec::new();
        for (flow_name, source) in &entry.sources {
            let Ok(flow) = flow_name.parse::<Flow>() else {
                problems.add(
                    file,
                    &what,
                    format!("sources: unknown flow \"{flow_name}\": expected A052, DMFA or DIMONA"),
                );
                continue;
            };
            if !flows.contains(&flow) {
                problems.add(file, &what, format!("sources: flow {flow} has no [[flow]] entry (no field list) in this deliberation"));
                continue;
            }
            // Flow names are read in any case, so "DMFA" and "dmfa" are two keys of the table
            // but one flow: a second source would be silently ignored.
            if sources.iter().any(|(listed, _)| *listed == flow) {
                problems.add(
                    file,
                    &what,
                    format!("sources: flow {flow} listed twice: a flow has one source"),
                );
                continue;
            }
            let Some(institution) = self.institution_by_id(source) else {
                problems.add(
                    file,
                    &what,
                    format!("sources: unknown institution \"{source}\""),
                );
                continue;
            };
            if !routes
                .iter()
                .any(|r| r.senders.contains(institution.party()))
            {
                problems.add(file, &what, format!("sources: \"{source}\" is not among the senders of any route, so it may not provide {flow} data under this deliberation"));
                continue;
            }
            sources.push((flow, institution.index));
        }
        if entry.sources.is_empty() {
            problems.add(
                file,
                &what,
                "sources: empty: name the institution that holds each consultable flow's data",
            );
        }
        let agents = match &entry.agents {
            None if parsed.max_agents.is_some() => {
                problems.add(
                    file,
                    &what,
                    "max_agents is set: list the named agents in agents",
                );
                None
            }
            None => None,
            Some(agents) => {
                let mut seen = HashSet::new();
                for agent in agents {
                    if !valid_agent_id(agent) {
                        problems.add(file, &what, format!("agent \"{agent}\": an agent id is 1-64 printable ASCII characters without spaces"));
                    } else if !seen.insert(agent) {
                        problems.add(file, &what, format!("agent \"{agent}\" is listed twice"));
                    }
                }
                if agents.is_empty() {
                    problems.add(file, &what, "agents: empty: name at least one agent, or remove the list to allow any agent");
                }
                if let Some(max) = parsed.max_agents
                    && agents.len() > usize::from(max)
                {
                    problems.add(
                        file,
                        &what,
                        format!(
                            "names {} agents but max_agents = {max}: the deliberation lets at most {max} agents consult",
                            agents.len()
                        ),
                    );
                }
                Some(agents.clone())
            }
        };
        Some(Consultation {
            sources,
            agents,
            view_only: entry.view_only,
        })
    }

    /// Two deliberations may not both govern the same sender, recipient and flow on the same day:
    /// the hub could not tell which field list applies.
    fn check_overlaps(&self, problems: &mut Problems) {
        let sector_of = |i: InstitutionIndex| self.institutions[i.0 as usize].sector;
        // Within one deliberation, the first route that matches decides; two that may match
        // the same sender and recipient must then agree on whether the leg is a relay, or
        // the second's rule would be silently ignored.
        for (d, deliberation) in self.deliberations.iter().enumerate() {
            for (i, a) in deliberation.routes.iter().enumerate() {
                for (j, b) in deliberation.routes.iter().enumerate().skip(i + 1) {
                    if a.relay != b.relay
                        && a.senders.may_intersect(&b.senders, sector_of)
                        && a.recipients.may_intersect(&b.recipients, sector_of)
                    {
                        problems.add(
                            &self.sources[d],
                            format!("deliberation {}", deliberation.id),
                            format!(
                                "routes {} and {} may both join the same sender and recipient, one as \
                                 a relay and one not: make them disjoint or give them the same `relay`",
                                i + 1,
                                j + 1
                            ),
                        );
                    }
                }
            }
        }
        for (i, a) in self.deliberations.iter().enumerate() {
            for (j, b) in self.deliberations.iter().enumerate().skip(i + 1) {
                let common_flow = a.flows.iter().find(|f| b.flows.contains(f));
                let Some(flow) = common_flow else { continue };
                if !a.validity_overlaps(b) {
                    continue;
                }
                let clash = a.routes.iter().any(|ra| {
                    b.routes.iter().any(|rb| {
                        ra.senders.may_intersect(&rb.senders, sector_of)
                            && ra.recipients.may_intersect(&rb.recipients, sector_of)
                    })
                });
                if clash {
                    problems.add(
                        &self.sources[j],
                        format!("deliberation {}", b.id),
                        format!(
                            "overlaps deliberation {} ({}): both authorise the same senders and recipients for flow {flow} \
                             during overlapping validity periods",
                            a.id,
                            self.sources[i].display()
                        ),
                    );
                }
            }
        }
    }

    fn party_set(
        &self,
        file: &Path,
        entry: &str,
        key: &str,
        names: &[String],
        problems: &mut Problems,
    ) -> PartySet {
        let mut set = PartySet::default();
        for name in names {
            if let Some(sector) = name.strip_prefix("sector:") {
                if sector == "*" {
                    set.any = true;
                } else if let Some(sector) = self.sector_by_id(sector) {
                    set.sectors.push(sector.index);
                } else {
                    problems.add(file, entry, format!("{key}: unknown sector \"{sector}\""));
                }
            } else if let Some(index) = self.by_id.get(name.as_str()) {
                set.institutions.push(*index);
            } else {
                problems.add(
                    file,
                    entry,
                    format!("{key}: unknown institution \"{name}\""),
                );
            }
        }
        if names.is_empty() {
            problems.add(file, entry, format!("{key}: empty"));
        }
        set
    }

    fn sector_quality(&self, text: &str) -> Result<SectorQuality, String> {
        let Some((sector, code)) = text.split_once(':') else {
            return Err(format!("quality code \"{text}\" is not <sector>:<code>"));
        };
        let Some(sector) = self.sector_by_id(sector) else {
            return Err(format!(
                "quality code \"{text}\": unknown sector \"{sector}\""
            ));
        };
        let code = code
            .parse::<u16>()
            .ok()
            .and_then(QualityCode::new)
            .ok_or_else(|| format!("quality code \"{text}\": not a number 000-999"))?;
        let quality = SectorQuality {
            sector: sector.index,
            code,
        };
        if !self.qualities.contains_key(&quality) {
            return Err(format!(
                "unknown quality code \"{text}\" (not in quality_codes.toml)"
            ));
        }
        Ok(quality)
    }

    fn sector_by_id(&self, id: &str) -> Option<&Sector> {
        self.sectors.iter().find(|s| s.id == id)
    }

    /// Points an institution at another endpoint (tests and the demo bind ephemeral ports).
    /// Returns false when the id is unknown.
    pub fn set_endpoint(&mut self, id: &str, endpoint: String) -> bool {
        let Some(index) = self.by_id.get(id) else {
            return false;
        };
        self.institutions[index.0 as usize].endpoint = endpoint;
        true
    }

    // ----- What the data path reads -----

    pub fn sectors(&self) -> &[Sector] {
        &self.sectors
    }

    pub fn sector(&self, index: SectorIndex) -> &Sector {
        &self.sectors[index.0 as usize]
    }

    pub fn institutions(&self) -> &[Institution] {
        &self.institutions
    }

    pub fn institution(&self, index: InstitutionIndex) -> &Institution {
        &self.institutions[index.0 as usize]
    }

    /// The institution at `index`, if the policy has one (a directory row may outlive a reload
    /// that removed its institution).
    pub fn get_institution(&self, index: InstitutionIndex) -> Option<&Institution> {
        self.institutions.get(index.0 as usize)
    }

    pub fn institution_by_id(&self, id: &str) -> Option<&Institution> {
        self.by_id.get(id).map(|i| self.institution(*i))
    }

    /// The institution whose certificate carries this DNS name.
    pub fn institution_by_certificate(&self, name: &str) -> Option<&Institution> {
        self.by_certificate.get(name).map(|i| self.institution(*i))
    }

    /// The hub's staff.
    pub fn operators(&self) -> &[Operator] {
        &self.operators
    }

    /// The operator whose certificate carries this DNS name.
    pub fn operator_by_certificate(&self, name: &str) -> Option<&Operator> {
        self.operators.iter().find(|o| o.certificate_name == name)
    }

    /// Refuses a successor policy that would change what the directory's institution indices
    /// mean: institutions may be added at the end of the file, not removed or reordered, while
    /// the hub runs (restart it for that).
    pub fn check_successor(&self, next: &Policy) -> Result<(), String> {
        for institution in &self.institutions {
            match next.institutions.get(institution.index.0 as usize) {
                Some(same) if same.id == institution.id => {
                    // A directory row holds (institution, quality code), and a code means
                    // something only in the institution's sector.
                    let (was, is) = (
                        &self.sector(institution.sector).id,
                        &next.sector(same.sector).id,
                    );
                    if was != is {
                        return Err(format!(
                            "institution \"{}\" moved from sector \"{was}\" to \"{is}\": the quality \
                             codes of its integrations would change meaning (restart the hub to \
                             change an institution's sector)",
                            institution.id
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "institution \"{}\" was removed or moved in the file; while the hub runs, \
                         institutions may only be added at the end (restart the hub to remove one)",
                        institution.id
                    ));
                }
            }
        }
        // Integrations may hold any code defined now; a snapshot holding a removed one would
        // not load at the next start.
        let mut defined: Vec<(&str, u16)> = self
            .qualities
            .keys()
            .map(|q| (self.sector(q.sector).id.as_str(), q.code.0))
            .collect();
        defined.sort_unstable();
        for (sector, code) in defined {
            let kept = next
                .sectors
                .iter()
                .find(|s| s.id == sector)
                .is_some_and(|s| {
                    next.qualities.contains_key(&SectorQuality {
                        sector: s.index,
                        code: QualityCode(code),
                    })
                });
            if !kept {
                return Err(format!(
                    "quality code {code:03} of sector \"{sector}\" was removed: integrations may \
                     hold it (restart the hub, with a directory that no longer uses it, to remove \
                     a code)"
                ));
            }
        }
        Ok(())
    }

    /// The name of a quality code in a sector, if the table defines it.
    pub fn quality_name(&self, quality: SectorQuality) -> Option<&str> {
        self.qualities.get(&quality).map(String::as_str)
    }

    pub fn deliberations(&self) -> &[Deliberation] {
        &self.deliberations
    }

    pub fn deliberation(&self, id: &str) -> Option<&Deliberation> {
        self.deliberations.iter().find(|d| &*d.id == id)
    }

    /// The deliberations whose routes reach `recipient` for `flow` (the sender is not checked).
    pub fn deliberations_reaching(
        &self,
        recipient: InstitutionIndex,
        flow: Flow,
    ) -> impl Iterator<Item = &Deliberation> + '_ {
        self.by_recipient
            .get(usize::from(recipient.0))
            .map_or(&[][..], |per_flow| &per_flow[flow_position(flow)])
            .iter()
            .map(|i| &self.deliberations[*i])
    }

    /// True when some deliberation lets `sender` send `flow` to `recipient`.
    pub fn has_route(&self, sender: Party, recipient: Party, flow: Flow) -> bool {
        self.deliberations_reaching(recipient.institution, flow)
            .any(|d| d.route(sender, recipient).is_some())
    }

    /// True when some deliberation lets `sender` send `flow` at all.
    pub fn may_send(&self, sender: Party, flow: Flow) -> bool {
        self.deliberations
            .iter()
            .any(|d| d.flows.contains(&flow) && d.has_sender(sender))
    }

    /// What `deliberation` grants for `flow`.
    pub fn grant(&self, deliberation: &Deliberation, flow: Flow) -> Option<&Grant> {
        let index = self
            .deliberations
            .iter()
            .position(|d| std::ptr::eq(d, deliberation))?;
        self.grants[index].get(&flow)
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }
}

/// An agent id as consulting institutions send it: 1-64 printable ASCII characters.
pub fn valid_agent_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_date(value: &toml::value::Datetime) -> Option<Date> {
    match (value.date, value.time, value.offset) {
        (Some(d), None, None) => {
            let month = time::Month::try_from(d.month).ok()?;
            Date::from_calendar_date(i32::from(d.year), month, d.day).ok()
        }
        _ => None,
    }
}

/// The `*.toml` files of the deliberations folder, sorted by name.
fn deliberation_paths(folder: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read = |source| ConfigError::Read {
        file: folder.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_position_is_its_place_in_all() {
        for (position, flow) in Flow::ALL.into_iter().enumerate() {
            assert_eq!(flow_position(flow), position, "{flow:?}");
        }
    }

    #[test]
    fn an_endpoint_is_a_host_and_a_port() {
        // (endpoint, accepted)
        let table = [
            ("127.0.0.1:51001", true),
            ("[::1]:8443", true),
            ("cpas-liege.example.be:8443", true),
            ("localhost:1", true),
            ("localhost", false),
            ("localhost:0", false),
            ("localhost:65536", false),
            ("https://cpas:443", false),
            ("cpas:", false),
            (":443", false),
            (":", false),
            ("cpas liege:443", false),
            ("cpas/x:443", false),
        ];
        for (endpoint, accepted) in table {
            assert_eq!(host_and_port(endpoint), accepted, "{endpoint}");
        }
    }
}
