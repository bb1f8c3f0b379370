//! The integration check and the decision for one candidate recipient.
//!
//! Given the deliberations that name a recipient for a flow, the recipient's integrations for
//! the person, and the facts of the message, [`check_recipient`] either admits the recipient
//! under exactly one deliberation or refuses it with a specific [`RefusalReason`].

use std::fmt;

use time::Date;

use crate::deliberation::{CheckMode, Deliberation, Validity};
use crate::flow::Flow;
use crate::party::{InstitutionIndex, Party, QualityCode};
use crate::period::Period;

/// One row of the persons directory: an institution manages a file on the person under a
/// quality code, for a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Integration {
    pub institution: InstitutionIndex,
    pub quality: QualityCode,
    pub period: Period,
}

/// The facts of a message that the decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Message {
    pub sender: Party,
    pub flow: Flow,
    /// The period the data is about.
    pub period: Period,
    /// The message relays an earlier ticket (already checked to exist and concern the sender).
    pub relays: bool,
    /// The message cites a contact file (a-posteriori control).
    pub cites_contact_file: bool,
    /// The day the decision is taken, for deliberation validity.
    pub today: Date,
}

/// Why a candidate recipient does not receive the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// No deliberation authorises this sender to send this flow to this recipient.
    NoDeliberation,
    /// The deliberation's validity has not started.
    DeliberationNotYetValid,
    /// The deliberation's validity has ended.
    DeliberationExpired,
    /// The route is the second hop of a chain and the message relays nothing.
    RelayRequired,
    /// An a-posteriori deliberation, and the message cites no contact file.
    ContactFileMissing,
    /// The recipient has not integrated the person.
    NotIntegrated,
    /// The recipient integrated the person, but under no quality code the deliberation accepts.
    QualityCodeNotAccepted,
    /// The accepted integrations do not overlap the period the message is about.
    PeriodOutsideIntegration,
    /// A consultation by an agent the deliberation does not name (003 §36).
    AgentNotAllowed,
}

impl RefusalReason {
    /// Every reason. The store keeps a refusal as its 1-based position here
    /// (`OutcomeRow.refusal`), so this order never changes: a new reason goes at the end. (The
    /// contract's `RefusalReason` numbers are another order, mapped by name in the gateway.)
    pub const ALL: [RefusalReason; 9] = [
        RefusalReason::NoDeliberation,
        RefusalReason::DeliberationNotYetValid,
        RefusalReason::DeliberationExpired,
        RefusalReason::RelayRequired,
        RefusalReason::ContactFileMissing,
        RefusalReason::NotIntegrated,
        RefusalReason::QualityCodeNotAccepted,
        RefusalReason::PeriodOutsideIntegration,
        RefusalReason::AgentNotAllowed,
    ];

    /// A stable snake-case name, for metrics labels and reports.
    pub fn name(self) -> &'static str {
        match self {
            RefusalReason::NoDeliberation => "no_deliberation",
            RefusalReason::DeliberationNotYetValid => "deliberation_not_yet_valid",
            RefusalReason::DeliberationExpired => "deliberation_expired",
            RefusalReason::RelayRequired => "relay_required",
            RefusalReason::ContactFileMissing => "contact_file_missing",
            RefusalReason::NotIntegrated => "not_integrated",
            RefusalReason::QualityCodeNotAccepted => "quality_code_not_accepted",
            RefusalReason::PeriodOutsideIntegration => "period_outside_integration",
            RefusalReason::AgentNotAllowed => "agent_not_allowed",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalReason::NoDeliberation => "no deliberation authorises this sender to send this flow to this recipient",
            RefusalReason::DeliberationNotYetValid => "the deliberation is not yet valid",
            RefusalReason::DeliberationExpired => "the deliberation is no longer valid",
            RefusalReason::RelayRequired => "this route is a relay and the message does not relay an earlier ticket",
            RefusalReason::ContactFileMissing => "this deliberation has no prior integration check and requires a contact-file reference",
            RefusalReason::NotIntegrated => "the recipient has not integrated this person",
            RefusalReason::QualityCodeNotAccepted => "the recipient's integrations for this person are under quality codes the deliberation does not accept",
            RefusalReason::PeriodOutsideIntegration => "the recipient's accepted integrations do not cover the message's period",
            RefusalReason::AgentNotAllowed => "the agent is not one of those the deliberation names",
        })
    }
}

/// A refused recipient: the reason, and the deliberation it was judged under when there was one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal<'a> {
    pub reason: RefusalReason,
    pub deliberation: Option<&'a Deliberation>,
}

/// An admitted recipient: the deliberation it receives under, and how it was checked.
#[derive(Clone, Copy, Debug)]
pub struct Admission<'a> {
    pub deliberation: &'a Deliberation,
    /// Delivered without a prior integration check (a-posteriori control).
    pub a_posteriori: bool,
}

impl PartialEq for Deliberation {
    fn eq(&self, other: &Deliberation) -> bool {
        self.id == other.id
    }
}
impl Eq for Deliberation {}

/// Decides whether `recipient` may receive `message`.
///
/// `deliberations` are those covering the message's flow (the policy indexes them by flow and
/// recipient; this function still checks the routes). `integrations` are the person's rows in
/// the directory, all institutions mixed or the recipient's only: no other row counts.
pub fn check_recipient<'a>(
    message: &Message,
    recipient: Party,
    deliberations: impl IntoIterator<Item = &'a Deliberation>,
    integrations: &[Integration],
) -> Result<Admission<'a>, Refusal<'a>> {
    let mut not_valid: Option<Refusal<'a>> = None;
    let mut chosen = None;
    for deliberation in deliberations {
        if !deliberation.flows.contains(&message.flow) {
            continue;
        }
        let Some(route) = deliberation.route(message.sender, recipient) else {
            continue;
        };
        let reason = match deliberation.validity(message.today) {
            Validity::Valid => {
                chosen = Some((deliberation, route));
                break;
            }
            Validity::NotYetValid => RefusalReason::DeliberationNotYetValid,
            Validity::Expired => RefusalReason::DeliberationExpired,
        };
        not_valid.get_or_insert(Refusal {
            reason,
            deliberation: Some(deliberation),
        });
    }
    let Some((deliberation, route)) = chosen else {
        return Err(not_valid.unwrap_or(Refusal {
            reason: RefusalReason::NoDeliberation,
            deliberation: None,
        }));
    };
    let refuse = |reason| {
        Err(Refusal {
            reason,
            deliberation: Some(deliberation),
        })
    };
    if route.relay && !message.relays {
        return refuse(RefusalReason::RelayRequired);
    }
    match &deliberation.check {
        CheckMode::APosteriori if message.cites_contact_file => Ok(Admission {
            deliberation,
            a_posteriori: true,
        }),
        CheckMode::APosteriori => refuse(RefusalReason::ContactFileMissing),
        CheckMode::PriorIntegration { accepted } => {
            let mut held = integrations
                .iter()
                .filter(|i| i.institution == recipient.institution)
                .peekable();
            if held.peek().is_none() {
                return refuse(RefusalReason::NotIntegrated);
            }
            let mut accepted_held = held
                .filter(|i| {
                    accepted
                        .iter()
                        .any(|q| q.sector == recipient.sector && q.code == i.quality)
                })
                .peekable();
            if accepted_held.peek().is_none() {
                return refuse(RefusalReason::QualityCodeNotAccepted);
            }
            if accepted_held.any(|i| i.period.overlaps(&message.period)) {
                Ok(Admission {
                    deliberation,
                    a_posteriori: false,
                })
            } else {
                refuse(RefusalReason::PeriodOutsideIntegration)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored tickets keep refusals by position in `ALL`: the order is pinned here.
    #[test]
    fn the_stored_numbering_of_refusals_does_not_change() {
        let names: Vec<&str> = RefusalReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            [
                "no_deliberation",
                "deliberation_not_yet_valid",
                "deliberation_expired",
                "relay_required",
                "contact_file_missing",
                "not_integrated",
                "quality_code_not_accepted",
                "period_outside_integration",
                "agent_not_allowed",
            ]
        );
    }
    use crate::deliberation::{PartySet, Route};
    use crate::party::{SectorIndex, SectorQuality};
    use time::macros::date;

    const FUND: Party = Party {
        institution: InstitutionIndex(1),
        sector: SectorIndex(1),
    };
    const CPAS: Party = Party {
        institution: InstitutionIndex(2),
        sector: SectorIndex(2),
    };
    const OTHER_CPAS: Party = Party {
        institution: InstitutionIndex(3),
        sector: SectorIndex(2),
    };
    const ONVA: Party = Party {
        institution: InstitutionIndex(4),
        sector: SectorIndex(3),
    };
    const SIGEDIS: Party = Party {
        institution: InstitutionIndex(5),
        sector: SectorIndex(4),
    };
    const SDPSP: Party = Party {
        institution: InstitutionIndex(6),
        sector: SectorIndex(5),
    };
    const CONTACT: Party = Party {
        institution: InstitutionIndex(7),
        sector: SectorIndex(6),
    };

    fn deliberation(
        id: &str,
        check: CheckMode,
        routes: Vec<Route>,
        until: Option<Date>,
    ) -> Deliberation {
        Deliberation {
            id: id.into(),
            title: String::new(),
            decided_on: date!(2020 - 05 - 05),
            purpose: String::new(),
            valid_from: date!(2020 - 05 - 05),
            valid_until: until,
            retention_years: 5,
            routes,
            check,
            flows: vec![Flow::A052],
            max_agents: None,
            consultation: None,
        }
    }

    fn route(sender: SectorIndex, recipient: SectorIndex, relay: bool) -> Route {
        Route {
            senders: PartySet {
                sectors: vec![sender],
                ..PartySet::default()
            },
            recipients: PartySet {
                sectors: vec![recipient],
                ..PartySet::default()
            },
            relay,
        }
    }

    fn a052() -> Deliberation {
        let accepted = (1..=3)
            .map(|c| SectorQuality {
                sector: CPAS.sector,
                code: QualityCode(c),
            })
            .collect();
        deliberation(
            "20/130",
            CheckMode::PriorIntegration { accepted },
            vec![route(FUND.sector, CPAS.sector, false)],
            None,
        )
    }

    fn integration(party: Party, quality: u16, start: Date, end: Option<Date>) -> Integration {
        Integration {
            institution: party.institution,
            quality: QualityCode(quality),
            period: Period { start, end },
        }
    }

    fn message(sender: Party, relays: bool, cites_contact_file: bool) -> Message {
        Message {
            sender,
            flow: Flow::A052,
            period: Period {
                start: date!(2024 - 01 - 01),
                end: Some(date!(2024 - 03 - 31)),
            },
            relays,
            cites_contact_file,
            today: date!(2026 - 11 - 22),
        }
    }

    #[test]
    fn decision_table() {
        let current = a052();
        let expired = deliberation(
            "old",
            CheckMode::PriorIntegration {
                accepted: vec![SectorQuality {
                    sector: ONVA.sector,
                    code: QualityCode(1),
                }],
            },
            vec![route(FUND.sector, ONVA.sector, false)],
            Some(date!(2021 - 12 - 31)),
        );
        let future = Deliberation {
            valid_from: date!(2030 - 01 - 01),
            id: "future".into(),
            ..expired.clone()
        };
        let relay = deliberation(
            "10/059",
            CheckMode::PriorIntegration {
                accepted: vec![SectorQuality {
                    sector: SDPSP.sector,
                    code: QualityCode(1),
                }],
            },
            vec![route(SIGEDIS.sector, SDPSP.sector, true)],
            None,
        );
        let posteriori = deliberation(
            "16/046",
            CheckMode::APosteriori,
            vec![route(FUND.sector, CONTACT.sector, false)],
            None,
        );
        let all = [&current, &expired, &relay, &posteriori];
        let open = |p, q| integration(p, q, date!(2023 - 06 - 01), None);
        /// (case, message, recipient, deliberations, integrations, expected deliberation or refusal)
        type Case<'a> = (
            &'a str,
            Message,
            Party,
            Vec<&'a Deliberation>,
            Vec<Integration>,
            Result<&'a str, RefusalReason>,
        );
        let cases: Vec<Case> = vec![
            (
                "aid applicant, open integration",
                message(FUND, false, false),
                CPAS,
                all.to_vec(),
                vec![open(CPAS, 1)],
                Ok("20/130"),
            ),
            (
                "cohabiting partner",
                message(FUND, false, false),
                CPAS,
                all.to_vec(),
                vec![open(CPAS, 3)],
                Ok("20/130"),
            ),
            (
                "integrated elsewhere only",
                message(FUND, false, false),
                CPAS,
                all.to_vec(),
                vec![open(OTHER_CPAS, 1)],
                Err(RefusalReason::NotIntegrated),
            ),
            (
                "definitive code not accepted",
                message(FUND, false, false),
                CPAS,
                all.to_vec(),
                vec![open(CPAS, 0)],
                Err(RefusalReason::QualityCodeNotAccepted),
            ),
            (
                "accepted code, period ended before the message",
                message(FUND, false, false),
                CPAS,
                all.to_vec(),
                vec![
                    integration(CPAS, 1, date!(2020 - 01 - 01), Some(date!(2023 - 12 - 31))),
                    open(CPAS, 0),
                ],
                Err(RefusalReason::PeriodOutsideIntegration),
            ),
            (
                "one of two accepted integrations overlaps",
                message(FUND, false, false),
                CPAS,
                all.to_vec(),
                vec![
                    integration(CPAS, 1, date!(2020 - 01 - 01), Some(date!(2023 - 12 - 31))),
                    integration(CPAS, 2, date!(2024 - 03 - 31), None),
                ],
                Ok("20/130"),
            ),
            (
                "sender not in any route",
                message(CPAS, false, false),
                CPAS,
                all.to_vec(),
                vec![open(CPAS, 1)],
                Err(RefusalReason::NoDeliberation),
            ),
            (
                "expired deliberation",
                message(FUND, false, false),
                ONVA,
                all.to_vec(),
                vec![open(ONVA, 1)],
                Err(RefusalReason::DeliberationExpired),
            ),
            (
                "not yet valid",
                message(FUND, false, false),
                ONVA,
                vec![&future],
                vec![open(ONVA, 1)],
                Err(RefusalReason::DeliberationNotYetValid),
            ),
            (
                "relay hop without relay",
                message(SIGEDIS, false, false),
                SDPSP,
                all.to_vec(),
                vec![open(SDPSP, 1)],
                Err(RefusalReason::RelayRequired),
            ),
            (
                "relay hop",
                message(SIGEDIS, true, false),
                SDPSP,
                all.to_vec(),
                vec![open(SDPSP, 1)],
                Ok("10/059"),
            ),
            (
                "a posteriori without contact file",
                message(FUND, false, false),
                CONTACT,
                all.to_vec(),
                vec![],
                Err(RefusalReason::ContactFileMissing),
            ),
            (
                "a posteriori with contact file, not integrated",
                message(FUND, false, true),
                CONTACT,
                all.to_vec(),
                vec![],
                Ok("16/046"),
            ),
        ];
        for (name, message, recipient, deliberations, integrations, expected) in cases {
            let got = check_recipient(&message, recipient, deliberations, &integrations)
                .map(|a| &*a.deliberation.id)
                .map_err(|r| r.reason);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn an_a052_for_another_flow_finds_no_deliberation() {
        let d = a052();
        let mut m = message(FUND, false, false);
        m.flow = Flow::Dimona;
        let got = check_recipient(
            &m,
            CPAS,
            [&d],
            &[integration(CPAS, 1, date!(2020 - 01 - 01), None)],
        );
        assert_eq!(
            got.map(|_| ()).map_err(|r| r.reason),
            Err(RefusalReason::NoDeliberation)
        );
    }

    #[test]
    fn integration_is_compact() {
        assert!(
            std::mem::size_of::<Integration>() <= 12,
            "{}",
            std::mem::size_of::<Integration>()
        );
    }
}
