//! `bcss-hub demo`: the hub and the simulated institutions on loopback, a realistic mix of the
//! three flows under the four deliberations (refusals included), and a report.
//!
//! Every institution is a real gRPC server with its own certificate; every sender connects to
//! the hub with its own certificate. After the pushed messages come consultations: the ONVA
//! inspection service's named agents consult Dimona and DmfA under 19/010 and contact-centre
//! agents consult careers under 16/046 with a contact file (refusals included), each answered by
//! ONSS through the hub and filtered. At the end the report compares what the hub says it
//! delivered with what the institutions received, and the demo fails if they differ.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bcss_domain::Niss;
use bcss_gateway::pki::Pki;
use bcss_gateway::startup;
use bcss_policy::{Policy, Settings};
use bcss_proto::hub::v1::gateway_client::GatewayClient;
use bcss_proto::hub::v1::{Decision, RefusalReason, SubmitReply};
use comfy_table::Table;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::macros::date;
use tonic::transport::Channel;

use crate::envelope::{FlowMessage, envelope};
use crate::institution::Network;
use crate::payloads;

/// Options of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub messages: usize,
    pub seed: u64,
    pub keep_running: bool,
    /// Bind free ports instead of the configured ones (tests).
    pub ephemeral_ports: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Serve Prometheus metrics on `metrics.listen` while it runs (the command line; not tests,
    /// which cannot install a process-wide recorder twice).
    pub metrics: bool,
}

/// The outcome of one submission, for the report.
#[derive(Debug)]
enum Submitted {
    Reply {
        flow: &'static str,
        reply: SubmitReply,
    },
    Rejected {
        flow: &'static str,
        code: tonic::Code,
    },
}

/// What the demo measured.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub submitted: usize,
    pub delivered: usize,
    pub refused: usize,
    pub rejected: usize,
    pub received: usize,
    pub table: String,
    /// Consultations made, answered, and refused by policy.
    pub consultations: usize,
    pub answered: usize,
    pub consultations_refused: usize,
    pub consult_table: String,
}

/// Persons of the directory, by what the scenario needs of them.
#[derive(Debug, Default)]
struct Population {
    cpas_clients: Vec<Niss>,
    workers: Vec<Niss>,
    public_sector: Vec<Niss>,
    everyone: Vec<Niss>,
    cpas_of: HashMap<Niss, String>,
    /// Persons the ONVA inspection service integrated, with the quality code.
    holiday: Vec<(Niss, u16)>,
}

fn population(policy: &Policy, hub: &bcss_gateway::Hub) -> Population {
    let mut population = Population::default();
    let mut everyone = std::collections::BTreeSet::new();
    for institution in policy.institutions() {
        let (rows, _) = hub
            .directory()
            .list(institution.index, None, None, usize::MAX);
        let sector = policy.sector(institution.sector).id.as_str();
        for (niss, row) in &rows {
            everyone.insert(*niss);
            match sector {
                "cpas" => {
                    population.cpas_of.insert(*niss, institution.id.to_string());
                }
                "career" => population.workers.push(*niss),
                "public_pensions" => population.public_sector.push(*niss),
                "holiday_pay" => population.holiday.push((*niss, row.quality.0)),
                _ => {}
            }
        }
    }
    population.cpas_clients = population.cpas_of.keys().copied().collect();
    population.cpas_clients.sort();
    population.workers.sort();
    population.workers.dedup();
    population.public_sector.sort();
    population.public_sector.dedup();
    population.holiday.sort();
    population.holiday.dedup_by_key(|(niss, _)| *niss);
    population.everyone = everyone.into_iter().collect();
    population
}

/// Runs the demo on the configuration at `config` (a `hub.toml`).
pub async fn run(
    config: &Path,
    options: DemoOptions,
) -> Result<DemoReport, Box<dyn std::error::Error + Send + Sync>> {
    run_with(Settings::load(config)?, options).await
}

/// [`run`] with settings already loaded.
pub async fn run_with(
    mut settings: Settings,
    options: DemoOptions,
) -> Result<DemoReport, Box<dyn std::error::Error + Send + Sync>> {
    // Every run starts from an empty outbox, so that a seed always gives the same run.
    let data = tempfile::tempdir()?;
    settings.storage.data = data.path().to_owned();
    let policy = Policy::load(&settings)?;
    let pki: Pki = startup::ensure_pki(&settings, &policy)?;
    let network = Network::start(
        &policy,
        &pki,
        &settings.tls.hub_name,
        options.ephemeral_ports,
    )
    .await?;
    let assembled = startup::assemble_settings(settings.clone(), network.endpoint_overrides())?;
    let listener = match options.ephemeral_ports {
        true => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        false => match tokio::net::TcpListener::bind(settings.server.listen).await {
            Ok(listener) => listener,
            Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        },
    };
    let hub_addr = listener.local_addr()?;
    if options.metrics
        && let Some(listen) = settings.metrics.listen
        && let Err(error) = bcss_gateway::telemetry::serve(listen, assembled.hub.clone())
    {
        tracing::warn!(message = "No metrics endpoint for this demo.", %error);
    }
    let (stop_hub, hub_stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = assembled.hub.clone();
    let server = tokio::spawn(bcss_gateway::server::run(
        hub.clone(),
        listener,
        assembled.options.clone(),
        async {
            let _ = hub_stopped.await;
        },
    ));
    println!(
        "Hub listening on {hub_addr} (mutual TLS); {} reference institutions running.",
        network.addresses.len()
    );

    let policy = hub.policy();
    let population = population(&policy, &hub);
    let mut channels: HashMap<String, Channel> = HashMap::new();
    for institution in policy.institutions() {
        let channel =
            crate::client::connect(hub_addr, &pki, &institution.id, &settings.tls.hub_name).await?;
        channels.insert(institution.id.to_string(), channel);
    }
    let plan = scenario(&policy, &population, options.messages, options.seed);
    let progress = if options.progress {
        ProgressBar::new(plan.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {wide_bar} {pos}/{len} messages {msg}")
            .expect("valid template"),
    );
    // In flight concurrently, answers kept in submission order, so that the relays drawn from
    // them (and so the whole run) are the same for the same seed.
    let mut first_hops = futures_util::stream::iter(plan.into_iter().map(|step| {
        let client = GatewayClient::new(channels[&step.sender].clone());
        let progress = progress.clone();
        async move {
            let result = submit(client, &step).await;
            progress.inc(1);
            (step, result)
        }
    }))
    .buffered(16)
    .collect::<Vec<_>>()
    .await;
    for (step, result) in &mut first_hops {
        settle(&channels[&step.sender], result).await;
    }

    // Second hop of the CAPELO chain: SIGeDIS relays to SdPSP what it received.
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5eed);
    let mut relays = Vec::new();
    for (step, result) in &first_hops {
        let Submitted::Reply { reply, .. } = result else {
            continue;
        };
        let to_sigedis = reply
            .recipients
            .iter()
            .any(|r| r.institution == "sigedis" && r.decision == Decision::Delivered as i32);
        // SIGeDIS passes public-sector careers on; now and then it tries another one, which the
        // SdPSP has not integrated.
        let niss = Niss::parse(&step.envelope.niss).expect("a delivered message has a valid NISS");
        if !to_sigedis
            || (population.public_sector.binary_search(&niss).is_err() && !rng.random_bool(0.1))
        {
            continue;
        }
        let mut relay = step.clone();
        relay.sender = "sigedis".into();
        relay.envelope.message_id = format!("{}-relay", step.envelope.message_id);
        relay.envelope.addressee = Some("sdpsp".into());
        // One relay in ten forgets relay_of, which the 10/059 route refuses.
        relay.envelope.relay_of = (!rng.random_bool(0.1)).then(|| reply.ticket.clone());
        relays.push(relay);
    }
    progress.inc_length(relays.len() as u64);
    let mut outcomes: Vec<Submitted> = first_hops.into_iter().map(|(_, r)| r).collect();
    for step in relays {
        let channel = &channels[&step.sender];
        let mut result = submit(GatewayClient::new(channel.clone()), &step).await;
        settle(channel, &mut result).await;
        outcomes.push(result);
        progress.inc(1);
    }
    progress.finish_and_clear();

    let consulted = consultations(&channels, &population, options.seed).await;

    // Every delivery was settled above: the institutions have received all they will.
    let mut report = report(&outcomes, network.received());
    consult_report(&consulted, &mut report);
    println!("{}", report.table);
    println!(
        "Submitted {} messages: {} deliveries, {} refusals by policy, {} rejected as bad input. Institutions received {} deliveries.",
        report.submitted, report.delivered, report.refused, report.rejected, report.received
    );
    println!("{}", report.consult_table);
    println!(
        "Consultations: {} made, {} answered (filtered), {} refused by policy.",
        report.consultations, report.answered, report.consultations_refused
    );
    if options.keep_running {
        println!("Hub on {hub_addr}; institutions keep running. Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop_hub.send(());
    server.await??;
    network.stop();
    if report.received != report.delivered {
        return Err(format!(
            "the hub reported {} deliveries but the institutions received {}",
            report.delivered, report.received
        )
        .into());
    }
    Ok(report)
}

/// How long [`settle`] waits for a delivery still in progress.
const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until no recipient of an accepted message is still being delivered, and puts the
/// outcomes `Track` then gives into the reply. Submit answers after `delivery.reply_wait_ms`
/// even when a first delivery takes longer (a loaded machine, a connection still opening), so
/// without this the report would count deliveries by how fast they were, and a same-seed run
/// would not be the same run. A delivery still pending after [`SETTLE_WITHIN`] stays as the
/// hub last reported it, and the final comparison with what the institutions received fails.
async fn settle(channel: &Channel, result: &mut Submitted) {
    use bcss_proto::hub::v1::{RecipientOutcome, TrackRequest};
    let Submitted::Reply { reply, .. } = result else {
        return;
    };
    let pending = |recipients: &[RecipientOutcome]| {
        recipients.iter().any(|r| {
            r.decision == Decision::Accepted as i32 || r.decision == Decision::DeliveryFailed as i32
        })
    };
    let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
    let mut client = GatewayClient::new(channel.clone());
    while pending(&reply.recipients) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let Ok(tracked) = client
            .track(TrackRequest {
                ticket: reply.ticket.clone(),
            })
            .await
        else {
            continue;
        };
        if let Some(hop) = tracked
            .into_inner()
            .hops
            .into_iter()
            .find(|hop| hop.ticket == reply.ticket)
        {
            reply.recipients = hop.recipients;
        }
    }
}

/// One message to submit, and who submits it.
#[derive(Clone, Debug)]
struct Step {
    sender: String,
    envelope: bcss_proto::hub::v1::Envelope,
}

async fn submit(mut client: GatewayClient<Channel>, step: &Step) -> Submitted {
    let flow = match step.envelope.flow {
        1 => "A052",
        2 => "DMFA",
        3 => "DIMONA",
        _ => "?",
    };
    match client.submit(step.envelope.clone()).await {
        Ok(reply) => Submitted::Reply {
            flow,
            reply: reply.into_inner(),
        },
        Err(status) => Submitted::Rejected {
            flow,
            code: status.code(),
        },
    }
}

/// The first-hop messages of the demo, in a reproducible mix.
fn scenario(policy: &Policy, population: &Population, messages: usize, seed: u64) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let funds: Vec<&str> = policy
        .institutions()
        .iter()
        .filter(|i| policy.sector(i.sector).id == "health_insurance")
        .map(|i| &*i.id)
        .collect();
    let cpas: Vec<&str> = policy
        .institutions()
        .iter()
        .filter(|i| policy.sector(i.sector).id == "cpas")
        .map(|i| &*i.id)
        .collect();
    let half_year = (date!(2025 - 01 - 01), date!(2025 - 06 - 30));
    // An envelope carrying an A052 about the first half of 2025.
    let a052 = |rng: &mut ChaCha8Rng, id: String, niss: Niss, fund: &str| {
        let message = payloads::a052(rng, niss, fund, half_year);
        envelope(
            id,
            niss,
            half_year.0,
            Some(half_year.1),
            FlowMessage::A052(message),
        )
    };
    let mut steps = Vec::with_capacity(messages);
    for n in 0..messages {
        let id = format!("demo-{seed}-{n:05}");
        let roll = rng.random_range(0..100);
        let step = match roll {
            // A052 from a fund, distributed to the CPAS (and SPP IS) that integrated the person.
            0..=34 => {
                let niss = if rng.random_bool(0.8) {
                    *population
                        .cpas_clients
                        .choose(&mut rng)
                        .expect("CPAS clients")
                } else {
                    *population.everyone.choose(&mut rng).expect("persons")
                };
                let fund = *funds.choose(&mut rng).expect("funds");
                Step {
                    sender: fund.into(),
                    envelope: a052(&mut rng, id, niss, fund),
                }
            }
            // A052 addressed to a CPAS that does not know the person.
            35..=39 => {
                let niss = *population
                    .cpas_clients
                    .choose(&mut rng)
                    .expect("CPAS clients");
                let own = population.cpas_of.get(&niss).cloned().unwrap_or_default();
                let other = cpas.iter().find(|c| **c != own).expect("several CPAS");
                let fund = *funds.choose(&mut rng).expect("funds");
                let mut envelope = a052(&mut rng, id, niss, fund);
                envelope.addressee = Some((*other).into());
                Step {
                    sender: fund.into(),
                    envelope,
                }
            }
            // DmfA from ONSS: SIGeDIS (10/059) and ONVA (19/010) when they integrated the person.
            40..=64 => {
                let public = rng.random_bool(0.4);
                let pool = if public {
                    &population.public_sector
                } else {
                    &population.workers
                };
                let niss = *pool.choose(&mut rng).expect("workers");
                let message = payloads::dmfa(&mut rng, niss, 2025, 2, public);
                Step {
                    sender: "onss".into(),
                    envelope: envelope(
                        id,
                        niss,
                        date!(2025 - 04 - 01),
                        Some(date!(2025 - 06 - 30)),
                        FlowMessage::Dmfa(message),
                    ),
                }
            }
            // Dimona from ONSS: ONVA for manual workers and artists.
            65..=84 => {
                let niss = *population.workers.choose(&mut rng).expect("workers");
                let entry = date!(2025 - 03 - 01) + time::Duration::days(rng.random_range(0..120));
                let message = payloads::dimona(&mut rng, niss, entry, None);
                Step {
                    sender: "onss".into(),
                    envelope: envelope(id, niss, entry, None, FlowMessage::Dimona(message)),
                }
            }
            // Career data to the mycareer.be contact centre under 16/046, mostly with a contact file.
            85..=94 => {
                let niss = *population.everyone.choose(&mut rng).expect("persons");
                let message = if rng.random_bool(0.5) {
                    FlowMessage::Dmfa(payloads::dmfa(&mut rng, niss, 2025, 1, false))
                } else {
                    FlowMessage::Dimona(payloads::dimona(
                        &mut rng,
                        niss,
                        date!(2025 - 02 - 01),
                        Some(date!(2025 - 03 - 31)),
                    ))
                };
                let mut envelope = envelope(
                    id,
                    niss,
                    date!(2025 - 01 - 01),
                    Some(date!(2025 - 03 - 31)),
                    message,
                );
                envelope.addressee = Some("mycareer-contact-centre".into());
                envelope.contact_file = rng
                    .random_bool(0.85)
                    .then(|| format!("CF-2025-{:06}", rng.random_range(0..1_000_000)));
                Step {
                    sender: "onss".into(),
                    envelope,
                }
            }
            // Bad input: a NISS with a wrong check number.
            95..=97 => {
                let niss = *population.everyone.choose(&mut rng).expect("persons");
                let fund = *funds.choose(&mut rng).expect("funds");
                let mut envelope = a052(&mut rng, id, niss, fund);
                let mut digits = envelope.niss.into_bytes();
                digits[10] = if digits[10] == b'9' {
                    b'0'
                } else {
                    digits[10] + 1
                };
                envelope.niss = String::from_utf8(digits).expect("digits");
                Step {
                    sender: fund.into(),
                    envelope,
                }
            }
            // A CPAS trying to send an A052, which no deliberation allows.
            _ => {
                let niss = *population
                    .cpas_clients
                    .choose(&mut rng)
                    .expect("CPAS clients");
                let envelope = a052(&mut rng, id, niss, "000");
                let sender = *cpas.choose(&mut rng).expect("cpas");
                Step {
                    sender: sender.into(),
                    envelope,
                }
            }
        };
        steps.push(step);
    }
    steps
}

#[derive(Default)]
struct Row {
    messages: usize,
    delivered: usize,
    failed: usize,
    refused: BTreeMap<&'static str, usize>,
    removed_fields: u64,
}

fn report(outcomes: &[Submitted], received: usize) -> DemoReport {
    let mut rows: BTreeMap<(&'static str, String), Row> = BTreeMap::new();
    let mut rejected: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    let mut summary = DemoReport {
        received,
        ..DemoReport::default()
    };
    for outcome in outcomes {
        summary.submitted += 1;
        match outcome {
            Submitted::Rejected { flow, code } => {
                summary.rejected += 1;
                *rejected.entry((flow, format!("{code:?}"))).or_default() += 1;
            }
            Submitted::Reply { flow, reply } => {
                let mut counted = std::collections::HashSet::new();
                for r in &reply.recipients {
                    let deliberation = if r.deliberation.is_empty() {
                        "(none)".to_owned()
                    } else {
                        r.deliberation.clone()
                    };
                    let row = rows.entry((flow, deliberation.clone())).or_default();
                    if counted.insert(deliberation) {
                        row.messages += 1;
                    }
                    if r.decision == Decision::Delivered as i32 {
                        row.delivered += 1;
                        row.removed_fields += u64::from(r.removed_field_count);
                        summary.delivered += 1;
                    } else if r.decision == Decision::DeliveryFailed as i32 {
                        row.failed += 1;
                    } else if r.decision == Decision::Refused as i32 {
                        summary.refused += 1;
                        *row.refused.entry(reason_name(r.reason)).or_default() += 1;
                    }
                }
                if reply.recipients.is_empty() {
                    rows.entry((flow, "(no recipient)".to_owned()))
                        .or_default()
                        .messages += 1;
                }
            }
        }
    }
    let mut table = Table::new();
    table.set_header([
        "flow",
        "deliberation",
        "messages",
        "delivered",
        "failed",
        "refused by reason",
        "fields removed",
    ]);
    for ((flow, deliberation), row) in &rows {
        let refused = row
            .refused
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        table.add_row([
            flow.to_string(),
            deliberation.clone(),
            row.messages.to_string(),
            row.delivered.to_string(),
            row.failed.to_string(),
            refused,
            row.removed_fields.to_string(),
        ]);
    }
    for ((flow, code), count) in &rejected {
        table.add_row([
            flow.to_string(),
            "(bad input)".into(),
            count.to_string(),
            "0".into(),
            "0".into(),
            format!("rejected: {code}"),
            "0".into(),
        ]);
    }
    summary.table = table.to_string();
    summary
}

fn reason_name(reason: i32) -> &'static str {
    match RefusalReason::try_from(reason).unwrap_or(RefusalReason::Unspecified) {
        RefusalReason::NoDeliberation => "no deliberation",
        RefusalReason::NotIntegrated => "not integrated",
        RefusalReason::QualityCodeNotAccepted => "quality code not accepted",
        RefusalReason::PeriodOutsideIntegration => "period outside integration",
        RefusalReason::DeliberationNotYetValid => "deliberation not yet valid",
        RefusalReason::DeliberationExpired => "deliberation expired",
        RefusalReason::ContactFileMissing => "contact file missing",
        RefusalReason::RelayRequired => "relay required",
        RefusalReason::AgentNotAllowed => "agent not allowed",
        RefusalReason::Unspecified => "unspecified",
    }
}

/// One consultation of the demo and what came of it.
#[derive(Debug)]
struct Consulted {
    consulter: &'static str,
    flow: &'static str,
    /// The deliberation it was answered under, or the refusal reason / error code.
    outcome: Result<(String, u32), String>,
}

/// The consultations of the demo: ONVA inspection agents (19/010) on the persons the service
/// integrated, a 13th agent and persons outside its qualities included; contact-centre agents
/// (16/046) with a registered contact file, and some without one.
async fn consultations(
    channels: &HashMap<String, Channel>,
    population: &Population,
    seed: u64,
) -> Vec<Consulted> {
    use bcss_proto::flows::v1::Period;
    use bcss_proto::hub::v1::journal_client::JournalClient;
    use bcss_proto::hub::v1::{ConsultRequest, Flow, RegisterContactFileRequest};
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc0_5017);
    // Every consultation asks about the second quarter of 2025.
    let consult_request =
        |flow: Flow, niss, purpose: &str, agent_id, contact_file| ConsultRequest {
            flow: flow as i32,
            niss,
            period: Some(Period {
                start: "2025-04-01".into(),
                end: "2025-06-30".into(),
            }),
            purpose: purpose.into(),
            agent_id,
            contact_file,
        };
    let mut done = Vec::new();
    let ask = |consulter: &'static str, request: ConsultRequest| {
        let mut client = GatewayClient::new(channels[consulter].clone());
        let flow = if request.flow == Flow::Dmfa as i32 {
            "DMFA"
        } else {
            "DIMONA"
        };
        async move {
            let outcome = match client.consult(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    Ok((reply.deliberation, reply.removed_field_count))
                }
                Err(status) => Err(status
                    .metadata()
                    .get("bcss-refusal-reason")
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| format!("{:?}", status.code()), str::to_owned)),
            };
            Consulted {
                consulter,
                flow,
                outcome,
            }
        }
    };
    for n in 0..24 {
        let Some((niss, _)) = population.holiday.choose(&mut rng).copied() else {
            break;
        };
        // Agents 1-12 are named in 19/010; now and then a 13th tries.
        let agent = if n % 8 == 7 {
            13
        } else {
            rng.random_range(1..=12)
        };
        let flow = if rng.random_bool(0.5) {
            Flow::Dmfa
        } else {
            Flow::Dimona
        };
        let request = consult_request(
            flow,
            niss.digits(),
            "holiday-pay-control",
            format!("onva-insp-{agent:02}"),
            None,
        );
        done.push(ask("onva-inspection", request).await);
    }
    // A worker the ONVA inspection service never integrated.
    if let Some(niss) = population.workers.iter().find(|n| {
        population
            .holiday
            .binary_search_by_key(&**n, |(h, _)| *h)
            .is_err()
    }) {
        let request = consult_request(
            Flow::Dmfa,
            niss.digits(),
            "holiday-pay-control",
            "onva-insp-01".into(),
            None,
        );
        done.push(ask("onva-inspection", request).await);
    }
    for n in 0..16 {
        let centre = if n % 2 == 0 {
            "mycareer-contact-centre"
        } else {
            "mypension-contact-centre"
        };
        let niss = *population.everyone.choose(&mut rng).expect("persons");
        // Most calls open a contact file first; one in eight forgets to cite it.
        let contact_file = (n % 8 != 5).then(|| format!("CF-{seed}-{centre}-{n:03}"));
        if let Some(reference) = &contact_file {
            let mut journal = JournalClient::new(channels[centre].clone());
            let _ = journal
                .register_contact_file(RegisterContactFileRequest {
                    contact_file: reference.clone(),
                    niss: niss.digits(),
                    opened_at: String::new(),
                })
                .await;
        }
        let flow = if rng.random_bool(0.5) {
            Flow::Dmfa
        } else {
            Flow::Dimona
        };
        let request = consult_request(
            flow,
            niss.digits(),
            "career-question",
            format!("agent-{}", rng.random_range(100..200)),
            contact_file,
        );
        done.push(ask(centre, request).await);
    }
    done
}

fn consult_report(consulted: &[Consulted], report: &mut DemoReport) {
    let mut rows: BTreeMap<(&str, &str, String), (usize, u64)> = BTreeMap::new();
    for c in consulted {
        report.consultations += 1;
        let outcome = match &c.outcome {
            Ok((deliberation, removed)) => {
                report.answered += 1;
                let row = rows
                    .entry((
                        c.consulter,
                        c.flow,
                        format!("answered under {deliberation}"),
                    ))
                    .or_default();
                row.0 += 1;
                row.1 += u64::from(*removed);
                continue;
            }
            Err(reason) => {
                if !reason.chars().next().is_some_and(char::is_uppercase) {
                    report.consultations_refused += 1;
                }
                format!("refused: {reason}")
            }
        };
        rows.entry((c.consulter, c.flow, outcome)).or_default().0 += 1;
    }
    let mut table = Table::new();
    table.set_header([
        "consulting institution",
        "flow",
        "outcome",
        "consultations",
        "fields removed",
    ]);
    for ((consulter, flow, outcome), (count, removed)) in rows {
        table.add_row([
            consulter.to_string(),
            flow.to_string(),
            outcome,
            count.to_string(),
            removed.to_string(),
        ]);
    }
    report.consult_table = table.to_string();
}
