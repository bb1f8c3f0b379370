//! The decision for a consultation: may this institution, through this agent, consult this
//! flow's data about this person, and which source holds it.
//!
//! A consultation is a delivery the other way round: the consulting institution is the
//! recipient of a deliberation's route and the source that holds the data is its sender. So the
//! decision reuses [`check_recipient`] (validity, integration check or a-posteriori mode) with
//! the source as sender, and adds what only consultations have: the deliberation must allow
//! consulting the flow, and, when it names its agents (003 §36), the agent must be one of them.

use time::Date;

use crate::decision::{Integration, Message, Refusal, RefusalReason, check_recipient};
use crate::deliberation::{Deliberation, Validity};
use crate::flow::Flow;
use crate::party::{InstitutionIndex, Party, SectorIndex};
use crate::period::Period;

/// The facts of a consultation that the decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Consult<'a> {
    /// The consulting institution.
    pub consulter: Party,
    pub flow: Flow,
    /// The period the consultation is about.
    pub period: Period,
    /// The agent who consults, as the consulting institution identifies them.
    pub agent: &'a str,
    /// The consultation cites a contact file (a-posteriori control).
    pub cites_contact_file: bool,
    /// The day the decision is taken, for deliberation validity.
    pub today: Date,
}

/// An admitted consultation: the deliberation, the source to ask, and how it was checked.
#[derive(Clone, Copy, Debug)]
pub struct ConsultAdmission<'a> {
    pub deliberation: &'a Deliberation,
    /// The institution that holds the data.
    pub source: InstitutionIndex,
    /// Admitted without a prior integration check (a-posteriori control).
    pub a_posteriori: bool,
    /// The answer may be viewed, not stored.
    pub view_only: bool,
}

/// Decides whether `consult` may go ahead.
///
/// `deliberations` are those whose routes reach the consulting institution for the flow (the
/// policy indexes them); only those that allow consulting the flow count. `integrations` are the
/// person's rows in the directory; `sector_of` tells a source's sector. The first deliberation
/// that admits wins; otherwise the refusal of the first one that applies.
pub fn check_consultation<'a>(
    consult: &Consult<'_>,
    deliberations: impl IntoIterator<Item = &'a Deliberation>,
    integrations: &[Integration],
    sector_of: impl Fn(InstitutionIndex) -> SectorIndex,
) -> Result<ConsultAdmission<'a>, Refusal<'a>> {
    let mut first_refusal: Option<Refusal<'a>> = None;
    for deliberation in deliberations {
        let Some(consultation) = &deliberation.consultation else {
            continue;
        };
        let Some(source) = consultation.source(consult.flow) else {
            continue;
        };
        let message = Message {
            sender: Party {
                institution: source,
                sector: sector_of(source),
            },
            flow: consult.flow,
            period: consult.period,
            relays: false,
            cites_contact_file: consult.cites_contact_file,
            today: consult.today,
        };
        let verdict = check_recipient(
            &message,
            consult.consulter,
            std::iter::once(deliberation),
            integrations,
        );
        // Who asks comes before what they ask about: an agent the deliberation does not name is
        // refused as such, whatever the directory says (but a deliberation that does not hold
        // today refuses first).
        let valid = deliberation.validity(consult.today) == Validity::Valid;
        let applies = deliberation
            .route(message.sender, consult.consulter)
            .is_some();
        let verdict = if valid && applies && !consultation.allows_agent(consult.agent) {
            Err(Refusal {
                reason: RefusalReason::AgentNotAllowed,
                deliberation: Some(deliberation),
            })
        } else {
            verdict
        };
        match verdict {
            Ok(admission) => {
                return Ok(ConsultAdmission {
                    deliberation: admission.deliberation,
                    source,
                    a_posteriori: admission.a_posteriori,
                    view_only: consultation.view_only,
                });
            }
            Err(refusal) => {
                // A deliberation whose routes do not join this source to this consulter is
                // not a refusal under it; keep the first one that is.
                if refusal.reason != RefusalReason::NoDeliberation {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
    }
    Err(first_refusal.unwrap_or(Refusal {
        reason: RefusalReason::NoDeliberation,
        deliberation: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliberation::{CheckMode, Consultation, PartySet, Route};
    use crate::party::{QualityCode, SectorQuality};
    use time::macros::date;

    const ONSS: Party = Party {
        institution: InstitutionIndex(0),
        sector: SectorIndex(0),
    };
    const ONVA: Party = Party {
        institution: InstitutionIndex(1),
        sector: SectorIndex(1),
    };
    const CONTACT: Party = Party {
        institution: InstitutionIndex(2),
        sector: SectorIndex(2),
    };
    const CPAS: Party = Party {
        institution: InstitutionIndex(3),
        sector: SectorIndex(3),
    };

    fn sector_of(i: InstitutionIndex) -> SectorIndex {
        SectorIndex(i.0)
    }

    fn deliberation(
        id: &str,
        recipient: Party,
        check: CheckMode,
        agents: Option<Vec<String>>,
        view_only: bool,
    ) -> Deliberation {
        Deliberation {
            id: id.into(),
            title: String::new(),
            decided_on: date!(2019 - 01 - 15),
            purpose: String::new(),
            valid_from: date!(2019 - 01 - 15),
            valid_until: None,
            retention_years: 0,
            routes: vec![Route {
                senders: PartySet {
                    institutions: vec![ONSS.institution],
                    ..PartySet::default()
                },
                recipients: PartySet {
                    institutions: vec![recipient.institution],
                    ..PartySet::default()
                },
                relay: false,
            }],
            check,
            flows: vec![Flow::Dmfa, Flow::Dimona],
            max_agents: agents.as_ref().map(|a| a.len() as u16),
            consultation: Some(Consultation {
                sources: vec![
                    (Flow::Dmfa, ONSS.institution),
                    (Flow::Dimona, ONSS.institution),
                ],
                agents,
                view_only,
            }),
        }
    }

    fn consult(consulter: Party, agent: &str, contact_file: bool) -> Consult<'_> {
        Consult {
            consulter,
            flow: Flow::Dmfa,
            period: Period {
                start: date!(2025 - 04 - 01),
                end: Some(date!(2025 - 06 - 30)),
            },
            agent,
            cites_contact_file: contact_file,
            today: date!(2026 - 03 - 01),
        }
    }

    fn integration(party: Party, quality: u16) -> Integration {
        Integration {
            institution: party.institution,
            quality: QualityCode(quality),
            period: Period {
                start: date!(2020 - 01 - 01),
                end: None,
            },
        }
    }

    #[test]
    fn consultation_table() {
        let agents: Vec<String> = (1..=12).map(|n| format!("agent-{n:02}")).collect();
        let dolsis = deliberation(
            "19/010",
            ONVA,
            CheckMode::PriorIntegration {
                accepted: [1, 2]
                    .map(|c| SectorQuality {
                        sector: ONVA.sector,
                        code: QualityCode(c),
                    })
                    .to_vec(),
            },
            Some(agents),
            true,
        );
        let career = deliberation("16/046", CONTACT, CheckMode::APosteriori, None, false);
        let mut push_only = deliberation("push", CPAS, CheckMode::APosteriori, None, false);
        push_only.consultation = None;
        let all = [&dolsis, &career, &push_only];
        /// (case, consultation, integrations, expected deliberation or refusal)
        type Case<'a> = (
            &'a str,
            Consult<'a>,
            Vec<Integration>,
            Result<(&'a str, bool, bool), RefusalReason>,
        );
        let cases: Vec<Case> = vec![
            (
                "named agent, manual worker",
                consult(ONVA, "agent-01", false),
                vec![integration(ONVA, 1)],
                Ok(("19/010", false, true)),
            ),
            (
                "named agent, artist",
                consult(ONVA, "agent-12", false),
                vec![integration(ONVA, 2)],
                Ok(("19/010", false, true)),
            ),
            (
                "a 13th agent",
                consult(ONVA, "agent-13", false),
                vec![integration(ONVA, 1)],
                Err(RefusalReason::AgentNotAllowed),
            ),
            (
                "an unnamed agent, even for a person not integrated",
                consult(ONVA, "someone", false),
                vec![],
                Err(RefusalReason::AgentNotAllowed),
            ),
            (
                "white-collar worker",
                consult(ONVA, "agent-01", false),
                vec![integration(ONVA, 3)],
                Err(RefusalReason::QualityCodeNotAccepted),
            ),
            (
                "not integrated",
                consult(ONVA, "agent-01", false),
                vec![integration(CONTACT, 1)],
                Err(RefusalReason::NotIntegrated),
            ),
            (
                "contact centre with a contact file, nobody integrated",
                consult(CONTACT, "any-agent", true),
                vec![],
                Ok(("16/046", true, false)),
            ),
            (
                "contact centre without a contact file",
                consult(CONTACT, "any-agent", false),
                vec![],
                Err(RefusalReason::ContactFileMissing),
            ),
            (
                "a deliberation that allows no consultation",
                consult(CPAS, "any-agent", true),
                vec![integration(CPAS, 1)],
                Err(RefusalReason::NoDeliberation),
            ),
        ];
        for (name, consult, integrations, expected) in cases {
            let got = check_consultation(&consult, all, &integrations, sector_of)
                .map(|a| (&*a.deliberation.id, a.a_posteriori, a.view_only))
                .map_err(|r| r.reason);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn a_flow_without_a_source_cannot_be_consulted() {
        let career = deliberation("16/046", CONTACT, CheckMode::APosteriori, None, false);
        let mut c = consult(CONTACT, "a", true);
        c.flow = Flow::A052;
        let got = check_consultation(&c, [&career], &[], sector_of);
        assert_eq!(
            got.map(|_| ()).map_err(|r| r.reason),
            Err(RefusalReason::NoDeliberation)
        );
    }

    #[test]
    fn an_expired_deliberation_refuses_before_the_agent_is_checked() {
        let mut old = deliberation(
            "19/010",
            ONVA,
            CheckMode::APosteriori,
            Some(vec!["a".into()]),
            true,
        );
        old.valid_until = Some(date!(2020 - 01 - 01));
        let got = check_consultation(&consult(ONVA, "b", true), [&old], &[], sector_of);
        assert_eq!(
            got.map(|_| ()).map_err(|r| r.reason),
            Err(RefusalReason::DeliberationExpired)
        );
    }
}
