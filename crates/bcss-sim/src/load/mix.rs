//! The messages of a load run: the mix of flows and deliberations, and for each entry the
//! senders, recipients and persons that make its messages admissible.

use std::collections::BTreeMap;

use bcss_domain::{CheckMode, Deliberation, Integration, Niss};
use bcss_policy::{Institution, Policy};
use bcss_proto::flows::v1 as f;
use bcss_proto::hub::v1::Flow;
use bcss_proto::hub::view::v1::{DeliveryView, EnvelopeView, delivery_view, envelope_view};
use bcss_proto::stored::StoredDelivery;
use bytes::Bytes;
use prost::Message;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::macros::date;

use super::{Error, LoadArgs};
use crate::payloads;

/// One message of the run, ready to send but for its ids.
#[derive(Clone, Debug)]
pub(super) struct Template {
    pub(super) flow: Flow,
    pub(super) sender: usize,
    pub(super) niss: String,
    pub(super) period: f::Period,
    pub(super) addressee: Option<String>,
    pub(super) payload: Bytes,
}

impl Template {
    pub(super) fn envelope(&self, id: String) -> EnvelopeView {
        EnvelopeView {
            message_id: id,
            flow: self.flow as i32,
            niss: self.niss.clone(),
            period: Some(self.period.clone()),
            addressee: self.addressee.clone(),
            relay_of: None,
            contact_file: None,
            payload: Some(match self.flow {
                Flow::A052 => envelope_view::Payload::A052(self.payload.clone()),
                Flow::Dmfa => envelope_view::Payload::Dmfa(self.payload.clone()),
                _ => envelope_view::Payload::Dimona(self.payload.clone()),
            }),
        }
    }

    pub(super) fn delivery(&self, id: String, sender: &str) -> StoredDelivery {
        let view = DeliveryView {
            ticket: id.clone(),
            delivery_id: id,
            relay_of: String::new(),
            deliberation: "20/130".into(),
            sender: sender.to_owned(),
            flow: self.flow as i32,
            niss: self.niss.clone(),
            period: Some(self.period.clone()),
            contact_file: None,
            payload: Some(match self.flow {
                Flow::A052 => delivery_view::Payload::A052(self.payload.clone()),
                Flow::Dmfa => delivery_view::Payload::Dmfa(self.payload.clone()),
                _ => delivery_view::Payload::Dimona(self.payload.clone()),
            }),
            attempt: 1,
        };
        StoredDelivery {
            encoded: view.encode_to_vec().into(),
            attempt: 0,
        }
    }
}

/// One entry of `--mix`: a flow, the deliberation it is sent under if one is named, a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MixEntry {
    pub(super) flow: Flow,
    pub(super) deliberation: Option<String>,
    pub(super) weight: u32,
}

/// Parses `a052=3,dmfa@10/059=1` into weighted entries.
pub(super) fn parse_mix(mix: &str) -> Result<Vec<MixEntry>, Error> {
    let mut entries = Vec::new();
    for part in mix.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = part.split_once('=').ok_or_else(|| {
            format!("--mix: \"{part}\" is not flow=weight or flow@deliberation=weight")
        })?;
        let (flow, deliberation) = match name.split_once('@') {
            Some((flow, deliberation)) => (flow, Some(deliberation.trim().to_owned())),
            None => (name, None),
        };
        let flow = match flow.trim().to_ascii_lowercase().as_str() {
            "a052" => Flow::A052,
            "dmfa" => Flow::Dmfa,
            "dimona" => Flow::Dimona,
            other => return Err(format!("--mix: unknown flow \"{other}\"").into()),
        };
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("--mix: \"{weight}\" is not a whole number"))?;
        if weight > 0 {
            entries.push(MixEntry {
                flow,
                deliberation,
                weight,
            });
        }
    }
    if entries.is_empty() {
        return Err("--mix names no flow with a weight above 0".into());
    }
    Ok(entries)
}

pub(super) fn domain_flow(flow: Flow) -> bcss_domain::Flow {
    match flow {
        Flow::A052 => bcss_domain::Flow::A052,
        Flow::Dmfa => bcss_domain::Flow::Dmfa,
        _ => bcss_domain::Flow::Dimona,
    }
}

pub(super) fn flow_name(flow: Flow) -> &'static str {
    match flow {
        Flow::A052 => "A052",
        Flow::Dmfa => "DmfA",
        _ => "Dimona",
    }
}

/// The institution each flow of the run is sent by: A052s by `--as`, DmfA and Dimona by ONSS.
pub(super) fn sender_of<'p>(
    args: &LoadArgs,
    policy: &'p Policy,
    flow: Flow,
) -> Result<&'p Institution, Error> {
    let id = if flow == Flow::A052 {
        args.sender.as_str()
    } else {
        SENDERS[0]
    };
    policy
        .institution_by_id(id)
        .ok_or_else(|| format!("no institution \"{id}\" in the configuration").into())
}

/// The recipients of the run's A052s: `--recipient`, or the first `--fan-out` CPAS.
pub(super) fn a052_recipients(args: &LoadArgs, policy: &Policy) -> Result<Vec<String>, Error> {
    match args.fan_out {
        None => Ok(vec![args.recipient.clone()]),
        Some(n) => {
            let cpas: Vec<String> = policy
                .institutions()
                .iter()
                .filter(|i| policy.sector(i.sector).id == "cpas")
                .map(|i| i.id.to_string())
                .take(n)
                .collect();
            if cpas.len() < n {
                return Err(format!(
                    "--fan-out {n}: the configuration has only {} CPAS",
                    cpas.len()
                )
                .into());
            }
            Ok(cpas)
        }
    }
}

/// The institutions an entry's messages may be addressed to under its deliberation, or an error
/// a user can act on when the deliberation cannot carry them: unknown, not covering the flow,
/// checked a posteriori (each message would have to cite a contact file), or not letting the
/// run's sender reach the run's A052 recipients. `None` for an entry without a deliberation.
pub(super) fn deliberation_recipients<'p>(
    args: &LoadArgs,
    policy: &'p Policy,
    entry: &MixEntry,
) -> Result<Option<(&'p Deliberation, Vec<&'p Institution>)>, Error> {
    let Some(id) = &entry.deliberation else {
        return Ok(None);
    };
    let flow = flow_name(entry.flow);
    let deliberation = policy.deliberation(id).ok_or_else(|| {
        let known: Vec<&str> = policy.deliberations().iter().map(|d| &*d.id).collect();
        format!(
            "--mix: no deliberation \"{id}\" in the configuration (it has {})",
            known.join(", ")
        )
    })?;
    if !deliberation.flows.contains(&domain_flow(entry.flow)) {
        return Err(format!("--mix: deliberation {id} does not cover {flow}").into());
    }
    if matches!(deliberation.check, CheckMode::APosteriori) {
        return Err(format!(
            "--mix: deliberation {id} is checked a posteriori (each message must cite a contact \
             file); load sends messages checked against the directory"
        )
        .into());
    }
    let sender = sender_of(args, policy, entry.flow)?;
    let routed = |r: &Institution| deliberation.route(sender.party(), r.party()).is_some();
    let recipients: Vec<&Institution> = if entry.flow == Flow::A052 {
        let mut recipients = Vec::new();
        for id in a052_recipients(args, policy)? {
            let recipient = policy
                .institution_by_id(&id)
                .ok_or_else(|| format!("--recipient: no institution \"{id}\""))?;
            if !routed(recipient) {
                return Err(format!(
                    "--mix: deliberation {} does not let {} send A052 to {id}",
                    deliberation.id, sender.id
                )
                .into());
            }
            recipients.push(recipient);
        }
        recipients
    } else {
        policy.institutions().iter().filter(|r| routed(r)).collect()
    };
    if recipients.is_empty() {
        return Err(format!(
            "--mix: deliberation {id} does not let {} send {flow} to anyone",
            sender.id
        )
        .into());
    }
    Ok(Some((deliberation, recipients)))
}

/// Persons a deliberation admits at one of its recipients: (recipient, candidates with their
/// rows there).
pub(super) type Admitted<'p> = Vec<(&'p Institution, Vec<(Niss, Vec<Integration>)>)>;

pub(super) fn admitted_candidates<'p>(
    directory: &bcss_directory::Directory,
    recipients: &[&'p Institution],
) -> Admitted<'p> {
    recipients
        .iter()
        .map(|recipient| {
            let mut persons: BTreeMap<Niss, Vec<Integration>> = BTreeMap::new();
            for (niss, row) in directory.list(recipient.index, None, None, usize::MAX).0 {
                persons.entry(niss).or_default().push(row);
            }
            (*recipient, persons.into_iter().collect())
        })
        .filter(|(_, persons): &(_, Vec<_>)| !persons.is_empty())
        .collect()
}

/// The persons this run's A052s are about: BIS numbers with the month + 20 (which the sample
/// directory never uses), born in 2008.
pub(super) fn load_person(n: u32) -> Niss {
    let day = 1 + (n / 997) % 28;
    let serial = 1 + (n % 997) as u16;
    Niss::compose(82_800 + day, serial, true).expect("composed NISS is valid")
}

pub(super) const SENDERS: [&str; 1] = ["onss"];

/// A person `deliberation` admits at one of its recipients for `message` (sender, flow,
/// period), drawn at random from `candidates`: (recipient, person).
pub(super) fn draw_admitted<'p>(
    rng: &mut ChaCha8Rng,
    deliberation: &Deliberation,
    candidates: &Admitted<'p>,
    message: &bcss_domain::decision::Message,
) -> Option<(&'p Institution, Niss)> {
    for _ in 0..256 {
        let (recipient, persons) = candidates.choose(rng)?;
        let (niss, rows) = persons.choose(rng)?;
        if bcss_domain::check_recipient(message, recipient.party(), [deliberation], rows).is_ok() {
            return Some((*recipient, *niss));
        }
    }
    None
}

pub(super) fn templates(
    args: &LoadArgs,
    policy: &Policy,
    directory: Option<&bcss_directory::Directory>,
    mix: &[MixEntry],
) -> Result<Vec<Template>, Error> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let half_year = (date!(2025 - 01 - 01), date!(2025 - 06 - 30));
    let iso = bcss_domain::iso_date;
    let integrated_at = |id: &str| -> Vec<Niss> {
        let (Some(directory), Some(institution)) = (directory, policy.institution_by_id(id)) else {
            return Vec::new();
        };
        directory
            .list(institution.index, None, None, usize::MAX)
            .0
            .into_iter()
            .map(|(niss, _)| niss)
            .collect()
    };
    let workers = integrated_at("sigedis");
    let holiday = integrated_at("onva-inspection");
    let fund_number = match policy.institution_by_id(&args.sender) {
        Some(_) => "300",
        None => return Err(format!("--as: no institution \"{}\"", args.sender).into()),
    };
    // Per entry: the deliberation it names, and for DmfA and Dimona the persons it admits.
    let mut under = Vec::with_capacity(mix.len());
    for entry in mix {
        let resolved = deliberation_recipients(args, policy, entry)?;
        let candidates = match (&resolved, directory) {
            (Some((_, recipients)), Some(directory)) if entry.flow != Flow::A052 => {
                admitted_candidates(directory, recipients)
            }
            _ => Vec::new(),
        };
        under.push((resolved.map(|(deliberation, _)| deliberation), candidates));
    }
    let onss = sender_of(args, policy, Flow::Dmfa)?.party();
    let today = time::OffsetDateTime::now_utc().date();
    // A person the entry's deliberation admits for a message about `period`, and where to
    // address it; `None` without a deliberation (a broadcast).
    let addressed = |rng: &mut ChaCha8Rng,
                     entry: usize,
                     period: bcss_domain::Period|
     -> Result<Option<(String, Niss)>, Error> {
        let (Some(deliberation), candidates) = &under[entry] else {
            return Ok(None);
        };
        let message = bcss_domain::decision::Message {
            sender: onss,
            flow: domain_flow(mix[entry].flow),
            period,
            relays: false,
            cites_contact_file: false,
            today,
        };
        let (recipient, niss) =
            draw_admitted(rng, deliberation, candidates, &message).ok_or_else(|| {
                format!(
                    "--mix: the directory has no person that deliberation {} admits for {} at \
                     the institutions it lets ONSS reach",
                    deliberation.id,
                    flow_name(mix[entry].flow)
                )
            })?;
        Ok(Some((recipient.id.to_string(), niss)))
    };
    let total: u32 = mix.iter().map(|m| m.weight).sum();
    let count = 1024;
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let mut roll = rng.random_range(0..total);
        let entry = mix
            .iter()
            .position(|m| {
                if roll < m.weight {
                    true
                } else {
                    roll -= m.weight;
                    false
                }
            })
            .unwrap_or(0);
        let flow = mix[entry].flow;
        let template = match flow {
            Flow::A052 => {
                let niss = load_person(n as u32 % args.persons.max(1));
                let message = payloads::a052(&mut rng, niss, fund_number, half_year);
                Template {
                    flow,
                    sender: 0,
                    niss: niss.digits(),
                    period: f::Period {
                        start: iso(half_year.0),
                        end: iso(half_year.1),
                    },
                    addressee: args.fan_out.is_none().then(|| args.recipient.clone()),
                    payload: message.encode_to_vec().into(),
                }
            }
            Flow::Dmfa => {
                let quarter = (date!(2025 - 04 - 01), date!(2025 - 06 - 30));
                let period = bcss_domain::Period::new(quarter.0, Some(quarter.1))?;
                let (addressee, niss) = match addressed(&mut rng, entry, period)? {
                    Some((recipient, niss)) => (Some(recipient), niss),
                    None => (
                        None,
                        *workers
                            .choose(&mut rng)
                            .ok_or("no worker in the directory for DmfA")?,
                    ),
                };
                let public = rng.random_bool(0.4);
                let message = payloads::dmfa(&mut rng, niss, 2025, 2, public);
                Template {
                    flow,
                    sender: 1,
                    niss: niss.digits(),
                    period: f::Period {
                        start: iso(quarter.0),
                        end: iso(quarter.1),
                    },
                    addressee,
                    payload: message.encode_to_vec().into(),
                }
            }
            _ => {
                // Under a deliberation the day comes first (the person must be admitted for
                // it); a broadcast draws the person first, as it always did, so that a seed
                // gives the same messages as before.
                let (addressee, niss, entry_day) = if under[entry].0.is_some() {
                    let day =
                        date!(2025 - 03 - 01) + time::Duration::days(rng.random_range(0..120));
                    let period = bcss_domain::Period::new(day, None)?;
                    let (recipient, niss) =
                        addressed(&mut rng, entry, period)?.expect("a deliberation was named");
                    (Some(recipient), niss, day)
                } else {
                    let niss = *holiday
                        .choose(&mut rng)
                        .ok_or("no ONVA person in the directory for Dimona")?;
                    let day =
                        date!(2025 - 03 - 01) + time::Duration::days(rng.random_range(0..120));
                    (None, niss, day)
                };
                let message = payloads::dimona(&mut rng, niss, entry_day, None);
                Template {
                    flow,
                    sender: 1,
                    niss: niss.digits(),
                    period: f::Period {
                        start: iso(entry_day),
                        end: String::new(),
                    },
                    addressee,
                    payload: message.encode_to_vec().into(),
                }
            }
        };
        out.push(template);
    }
    Ok(out)
}
