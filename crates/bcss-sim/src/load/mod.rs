//! `bcss-hub load`: a load generator for the hub (`Submit`, `SubmitStream`) and, for baselines,
//! for a reference institution server (`Institution.Deliver` with the same message bytes).
//!
//! Closed loop (`--in-flight C`: C calls always open, spread over `--connections N` HTTP/2
//! connections) or open loop (`--rate R` calls per second, latency measured from the time each
//! call was due, so a slow server cannot hide its queue). Latencies go into an HDR histogram;
//! the report gives throughput, p50/p90/p99/p99.9, errors by status, deliveries and the
//! recipients' outcomes per deliberation, as text, JSON (`--json`) and a self-contained HTML
//! page with SVG plots (`--report`). The mix weighs flows, each optionally under a named
//! deliberation (`dmfa@10/059=1`: addressed to a recipient that deliberation reaches, about a
//! person it admits there).
//!
//! It can start what it measures: the hub in-process on the shipped configuration
//! (`--start-hub durable|memory`, with a fresh data folder) and a network of reference
//! institutions that count what they receive (`--start-network`); `--serve-only` keeps them
//! running for a load generator in another process (benches/compare.sh).
//!
//! Files: this one (the arguments, the clients, the run), `mix` (the messages of the run and
//! who may receive them), `report` (what the run recorded and how it is shown).

mod mix;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bcss_gateway::pki::Pki;
use bcss_gateway::startup;
use bcss_policy::{Policy, Settings};
use bcss_proto::flows::v1 as f;
use bcss_proto::gateway_view::gateway_client::GatewayClient;
use bcss_proto::hub::v1::directory_client::DirectoryClient;
use bcss_proto::hub::v1::{Flow, IntegrateRequest};
use bcss_proto::hub::view::v1::EnvelopeView;
use bcss_proto::institution_view::institution_client::InstitutionClient;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::institution::Network;
use mix::{
    SENDERS, Template, a052_recipients, deliberation_recipients, load_person, parse_mix, templates,
};
use report::Answer;
pub use report::{Percentiles, Recorder, Report, Second, UnderDeliberation, WarmUp};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the load is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `bcss.hub.v1.Gateway.Submit` (or `SubmitStream`).
    Hub,
    /// `bcss.institution.v1.Institution.Deliver` straight to an institution server (or through
    /// a proxy in front of it): the baseline, with the same payload bytes.
    Institution,
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// How the in-process hub keeps what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HubMode {
    /// The durable outbox and the journal (the shipped configuration).
    Durable,
    /// `storage.durable = false`: memory only, no journal.
    Memory,
}

/// `bcss-hub load`.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    /// The hub's configuration (persons, institutions, PKI).
    #[arg(long, default_value = "config/hub.toml")]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = Target::Hub)]
    pub target: Target,
    /// Where to send: the hub (default: the started hub, else `server.listen`) or the
    /// institution server or proxy (default: the recipient's configured endpoint).
    #[arg(long)]
    pub address: Option<SocketAddr>,
    /// TLS to `--address`. The hub is always mutual TLS; `off` is plain HTTP/2 (h2c) for the
    /// direct and proxied baselines of `--target institution`.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub tls: OnOff,
    /// The name to verify in the server's certificate (default: the hub's name, or the
    /// recipient's certificate name for `--target institution`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// The sending institution of A052s (a health-insurance fund); DmfA and Dimona come from
    /// ONSS.
    #[arg(long = "as", default_value = "solidaris")]
    pub sender: String,
    /// The CPAS single-recipient A052s are addressed to.
    #[arg(long, default_value = "cpas-liege")]
    pub recipient: String,
    /// HTTP/2 connections to open per sender (each unary call goes to the one with the fewest
    /// calls open; `--stream` opens one stream on each).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Calls kept open at once (closed loop); with `--rate`, the most that may be open.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Calls per second (open loop) instead of a closed loop: call n is due n / RATE seconds
    /// after the start, and its latency counts from then.
    #[arg(long, value_parser = calls_per_second)]
    pub rate: Option<f64>,
    /// Seconds to run (ignored when `--messages` is given). With `--rate`, every call due before
    /// the end is sent, even when a full `--in-flight` makes it leave after the end.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Send exactly this many messages.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds of load before the measured `--duration`: their calls (due before it ends) are
    /// counted apart in the report, so that opening connections and filling caches is not
    /// measured. Goes with `--duration`, not `--messages`.
    #[arg(long, default_value_t = 0.0, value_parser = warm_up_seconds, conflicts_with = "messages")]
    pub warm_up: f64,
    /// Flows and deliberations, by weight: `FLOW[@DELIBERATION]=WEIGHT,…`, e.g.
    /// `a052=2,dmfa@10/059=1,dmfa@19/010=1,dimona@19/010=1`. A052s go from `--as` to
    /// `--recipient` (or to every CPAS of `--fan-out`) about persons this run integrates there.
    /// DmfA and Dimona go from ONSS: with a deliberation, addressed to an institution it lets
    /// receive them, about a person that institution integrated in a way the deliberation
    /// admits; without one, broadcast about persons of the shipped directory (every
    /// institution that integrated them is a candidate). The report counts outcomes per
    /// deliberation.
    #[arg(long, default_value = "a052=1")]
    pub mix: String,
    /// Submit over `SubmitStream` (one stream per connection) instead of unary `Submit`.
    #[arg(long)]
    pub stream: bool,
    /// A052s are broadcasts (no addressee) to this many CPAS, which integrate every person of
    /// the run first (`Directory.Integrate` as each CPAS).
    #[arg(long, num_args = 0..=1, default_missing_value = "10")]
    pub fan_out: Option<usize>,
    /// Distinct persons the A052s are about (the hub keeps one person's deliveries in order).
    #[arg(long, default_value_t = 512)]
    pub persons: u32,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Writes the report as a self-contained HTML page with plots.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Writes the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run in the reports.
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Start a reference institution server per institution (counting deliveries) in this
    /// process; the started hub delivers to them.
    #[arg(long)]
    pub start_network: bool,
    /// Start the hub in this process on `--config` with a fresh data folder, no rate limit and
    /// no metrics endpoint unless `--hub-metrics` gives one.
    #[arg(long, value_enum)]
    pub start_hub: Option<HubMode>,
    /// Where the started hub listens (default: a free loopback port).
    #[arg(long)]
    pub hub_listen: Option<SocketAddr>,
    /// Where the started hub serves its Prometheus metrics, as `serve` does on `[metrics]
    /// listen` (default: no endpoint, and no metrics recorded). A hub in production records
    /// them: give this to measure it as it runs there.
    #[arg(long)]
    pub hub_metrics: Option<SocketAddr>,
    /// `ID=HOST:PORT`: the started hub delivers to this institution there (repeatable).
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// The started hub's `delivery.tls` (off: plain HTTP/2 to institutions, baselines only).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub delivery_tls: OnOff,
    /// The started hub's `delivery.connections_per_recipient`.
    #[arg(long)]
    pub pool: Option<usize>,
    /// The started hub's `delivery.stream` (off: one `Deliver` call per delivery).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub delivery_stream: OnOff,
    /// The started hub's `delivery.lanes_per_recipient`.
    #[arg(long)]
    pub lanes: Option<usize>,
    /// The started hub's `delivery.reply_wait_ms`.
    #[arg(long)]
    pub reply_wait_ms: Option<u64>,
    /// The PKI folder instead of the configuration's `tls.pki`.
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// Start what `--start-hub` / `--start-network` ask for, send nothing, run until SIGTERM.
    #[arg(long)]
    pub serve_only: bool,
}

/// `--warm-up`: seconds, from 0 to an hour.
fn warm_up_seconds(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(seconds) if (0.0..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "\"{value}\" is not a number of seconds from 0 to 3600 to warm up for"
        )),
    }
}

/// `--rate`: a finite number of calls per second above 0 (at 0 no call would ever be due).
fn calls_per_second(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("\"{value}\" is not a number of calls per second"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(format!(
            "{value} calls per second: the rate must be a finite number above 0"
        ))
    }
}

/// One connection's client.
#[derive(Clone)]
enum Client {
    Hub(Vec<GatewayClient<Channel>>),
    Institution(InstitutionClient<Channel>, String),
}

async fn channel(
    address: SocketAddr,
    tls: Option<(Identity, Certificate, String)>,
) -> Result<Channel, Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    if let Some((identity, ca, name)) = tls {
        endpoint = endpoint.tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(identity)
                .domain_name(name),
        )?;
    }
    Ok(endpoint.connect().await?)
}

/// The hub this process started.
struct StartedHub {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    _data: tempfile::TempDir,
}

async fn start_hub(
    args: &LoadArgs,
    mode: HubMode,
    settings: &Settings,
    network: Option<&Network>,
) -> Result<StartedHub, Error> {
    let data = tempfile::tempdir()?;
    let mut settings = settings.clone();
    settings.storage.data = data.path().join("data");
    settings.storage.durable = mode == HubMode::Durable;
    settings.storage.journal = mode == HubMode::Durable;
    settings.storage.directory_snapshot_s = 0;
    settings.logs.person_key = data.path().join("person-log.key");
    settings.limits.rate_per_second = 0;
    settings.delivery.tls = args.delivery_tls == OnOff::On;
    settings.delivery.stream = args.delivery_stream == OnOff::On;
    if let Some(pool) = args.pool {
        settings.delivery.connections_per_recipient = pool;
    }
    if let Some(lanes) = args.lanes {
        settings.delivery.lanes_per_recipient = lanes;
    }
    if let Some(wait) = args.reply_wait_ms {
        settings.delivery.reply_wait_ms = wait;
    }
    let mut overrides: Vec<(String, String)> = network
        .map(|n| {
            n.addresses
                .iter()
                .map(|(id, a)| (id.clone(), a.to_string()))
                .collect()
        })
        .unwrap_or_default();
    for endpoint in &args.endpoints {
        let (id, address) = endpoint
            .split_once('=')
            .ok_or_else(|| format!("--endpoint: \"{endpoint}\" is not ID=HOST:PORT"))?;
        overrides.push((id.to_owned(), address.to_owned()));
    }
    let assembled = startup::assemble_settings(settings, move |policy: &mut Policy| {
        for (id, address) in &overrides {
            policy.set_endpoint(id, address.clone());
        }
    })?;
    if let Some(listen) = args.hub_metrics {
        bcss_gateway::telemetry::serve(listen, assembled.hub.clone())?;
    }
    let listener =
        tokio::net::TcpListener::bind(args.hub_listen.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bcss_gateway::server::run(
        assembled.hub,
        listener,
        assembled.options,
        async {
            let _ = stopped.await;
        },
    ));
    Ok(StartedHub {
        address,
        stop: Some(stop),
        task,
        _data: data,
    })
}

/// Integrates every A052 person of the run at the recipient (or the fan-out CPAS), as each of
/// them, through the hub's Directory service.
async fn integrate_persons(
    args: &LoadArgs,
    policy: &Policy,
    pki: &Pki,
    hub: SocketAddr,
    hub_name: &str,
) -> Result<Vec<String>, Error> {
    let recipients = a052_recipients(args, policy)?;
    for recipient in &recipients {
        let channel = crate::client::connect(hub, pki, recipient, hub_name).await?;
        let directory = DirectoryClient::new(channel);
        let calls = (0..args.persons).map(|n| {
            let mut directory = directory.clone();
            async move {
                directory
                    .integrate(IntegrateRequest {
                        niss: load_person(n).digits(),
                        quality_code: 1,
                        period: Some(f::Period {
                            start: "2020-01-01".into(),
                            end: String::new(),
                        }),
                    })
                    .await
            }
        });
        let results: Vec<_> = futures_util::stream::iter(calls)
            .buffer_unordered(32)
            .collect()
            .await;
        for result in results {
            result?;
        }
    }
    Ok(recipients)
}

use futures_util::StreamExt;

/// Runs `bcss-hub load`.
pub async fn run(args: LoadArgs) -> Result<Report, Error> {
    let mut settings = Settings::load(&args.config)?;
    if let Some(pki) = &args.pki {
        settings.tls.pki = pki.clone();
    }
    let policy = Policy::load(&settings)?;
    // A mix the configuration cannot carry is refused before anything starts.
    for entry in parse_mix(&args.mix)? {
        deliberation_recipients(&args, &policy, &entry)?;
    }
    let pki = startup::ensure_pki(&settings, &policy)?;
    let network = if args.start_network {
        Some(
            Network::start_with(
                &policy,
                &pki,
                &settings.tls.hub_name,
                args.start_hub.is_some(),
                true,
            )
            .await?,
        )
    } else {
        None
    };
    let mut started = match args.start_hub {
        Some(mode) => Some(start_hub(&args, mode, &settings, network.as_ref()).await?),
        None => None,
    };
    if args.serve_only {
        if let Some(hub) = &started {
            println!("Hub listening on {} (mutual TLS).", hub.address);
        }
        if let Some(network) = &network {
            println!(
                "{} reference institutions running (counting).",
                network.addresses.len()
            );
        }
        println!("Serving until SIGTERM or Ctrl-C.");
        stop_signal().await;
        if let Some(network) = &network {
            println!("Institutions received {} deliveries.", network.received());
        }
        return Ok(Report::build(
            "serve-only".into(),
            "none".into(),
            1.0,
            &Recorder::new(Instant::now(), Vec::new()),
        ));
    }
    let result = drive(&args, &settings, &policy, &pki, &started, network.as_ref()).await;
    if let Some(hub) = started.as_mut() {
        if let Some(stop) = hub.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut hub.task).await;
    }
    let report = result?;
    println!("{}", report.text());
    if let Some(file) = &args.json {
        std::fs::write(file, serde_json::to_string_pretty(&report.json())?)?;
    }
    if let Some(file) = &args.report {
        std::fs::write(file, report.html())?;
        println!("HTML report: {}", file.display());
    }
    Ok(report)
}

async fn drive(
    args: &LoadArgs,
    settings: &Settings,
    policy: &Policy,
    pki: &Pki,
    started: &Option<StartedHub>,
    network: Option<&Network>,
) -> Result<Report, Error> {
    let mix = parse_mix(&args.mix)?;
    let needs_directory = mix.iter().any(|m| m.flow != Flow::A052);
    let directory = if needs_directory {
        Some(startup::load_directory(&settings.files.directory, policy)?)
    } else {
        None
    };
    let templates = Arc::new(templates(args, policy, directory.as_ref(), &mix)?);
    let ca = Certificate::from_pem(pki.ca_cert()?);
    let tls_on = args.tls == OnOff::On;
    let connections = args.connections.max(1);
    let client = match args.target {
        Target::Hub => {
            let address = args
                .address
                .or(started.as_ref().map(|s| s.address))
                .unwrap_or(settings.server.listen);
            if !tls_on {
                return Err(
                    "the hub is always mutual TLS: --tls off is for --target institution".into(),
                );
            }
            let hub_name = args
                .server_name
                .as_deref()
                .unwrap_or(&settings.tls.hub_name);
            if mix.iter().any(|m| m.flow == Flow::A052) {
                integrate_persons(args, policy, pki, address, hub_name).await?;
            }
            let mut per_sender = Vec::new();
            for sender in std::iter::once(args.sender.as_str()).chain(SENDERS) {
                let pair = pki.party(sender)?;
                for _ in 0..connections {
                    let tls = (
                        Identity::from_pem(&pair.cert, &pair.key),
                        ca.clone(),
                        hub_name.to_owned(),
                    );
                    per_sender.push(GatewayClient::new(channel(address, Some(tls)).await?));
                }
            }
            vec![Client::Hub(per_sender)]
        }
        Target::Institution => {
            let recipient = policy
                .institution_by_id(&args.recipient)
                .ok_or_else(|| format!("--recipient: no institution \"{}\"", args.recipient))?;
            let address = match args.address {
                Some(a) => a,
                None => recipient.endpoint.parse()?,
            };
            let name = args
                .server_name
                .clone()
                .unwrap_or_else(|| recipient.certificate_name.clone());
            let hub_pair = pki.hub()?;
            let mut clients = Vec::new();
            for _ in 0..connections {
                let tls = tls_on.then(|| {
                    (
                        Identity::from_pem(&hub_pair.cert, &hub_pair.key),
                        ca.clone(),
                        name.clone(),
                    )
                });
                clients.push(Client::Institution(
                    InstitutionClient::new(channel(address, tls).await?),
                    args.sender.clone(),
                ));
            }
            clients
        }
    };
    let target = match args.target {
        Target::Hub => format!(
            "hub {}{}{}",
            if args.stream {
                "SubmitStream"
            } else {
                "Submit"
            },
            args.fan_out
                .map(|n| format!(", A052 fan-out to {n} CPAS"))
                .unwrap_or_default(),
            args.start_hub
                .map(|m| format!(" (started in-process: {m:?})"))
                .unwrap_or_default()
        ),
        Target::Institution => format!(
            "Institution.Deliver ({})",
            if tls_on { "TLS" } else { "plain h2c" }
        ),
    };
    let label = args.label.clone().unwrap_or_else(|| "load".into());
    let target = format!(
        "{target}; mix {}; {} connections, {}",
        args.mix,
        connections,
        match args.rate {
            Some(r) => format!("{r} calls/s (open loop, at most {} open)", args.in_flight),
            None => format!("{} in flight", args.in_flight),
        }
    );

    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ args.seed
    );
    let limit = args.messages.unwrap_or(u64::MAX);
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let warm_up = Duration::from_secs_f64(args.warm_up);
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        match args.messages {
            Some(m) => ProgressBar::new(m),
            None => ProgressBar::new((warm_up + duration).as_secs().max(1)),
        }
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {wide_bar} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let start = Instant::now();
    // The measured seconds start after the warm-up.
    let measured_from = start + warm_up;
    let deadline = if args.messages.is_some() {
        None
    } else {
        Some(measured_from + duration)
    };
    let shared = Arc::new(Shared {
        templates,
        next: AtomicU64::new(0),
        limit,
        deadline,
        run_id,
        recorder: Mutex::new(Recorder::after_warm_up(
            measured_from,
            args.warm_up,
            policy
                .deliberations()
                .iter()
                .map(|d| d.id.to_string())
                .collect(),
        )),
        open: open_per_connection(&client),
        client,
        call_timeout: CALL_TIMEOUT,
    });
    let ticker = {
        let shared = shared.clone();
        let progress = progress.clone();
        let counted = args.messages.is_some();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = shared.recorder.lock().expect("recorder").overall.len();
                if counted {
                    progress.set_position(done);
                } else {
                    progress.set_position(start.elapsed().as_secs());
                }
                let now = Instant::now();
                if now < measured_from {
                    progress.set_message(format!(
                        "warming up, {:.0} s to go",
                        (measured_from - now).as_secs_f64()
                    ));
                } else {
                    let secs = (now - measured_from).as_secs_f64();
                    progress
                        .set_message(format!("{done} answered, {:.0} msg/s", done as f64 / secs));
                }
            }
        })
    };
    if args.stream {
        if args.target != Target::Hub || args.rate.is_some() {
            return Err(
                "--stream drives the hub in a closed loop (no --rate, --target hub)".into(),
            );
        }
        run_streams(&shared, connections, args.in_flight).await;
    } else if let Some(rate) = args.rate {
        run_open(&shared, rate, args.in_flight).await;
    } else {
        let workers: Vec<_> = (0..args.in_flight.max(1))
            .map(|w| {
                let shared = shared.clone();
                tokio::spawn(async move { shared.closed_loop(w).await })
            })
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
    }
    let seconds = measured_from.elapsed().as_secs_f64();
    ticker.abort();
    progress.finish_and_clear();
    let mut report = {
        let recorder = shared.recorder.lock().expect("recorder");
        Report::build(label, target, seconds, &recorder)
    };
    if args.target == Target::Institution {
        report.deliveries_reported = report.answered;
        report.deliveries_expected = report.answered;
        report.deliveries_per_second = report.throughput;
    }
    if let Some(network) = network {
        // Deliveries still in flight (reply_wait_ms = 0, retries) land shortly. The recipients
        // count the warm-up's too.
        let warm_up_deliveries = report.warm_up.deliveries;
        let seen = || (network.received() as u64).saturating_sub(warm_up_deliveries);
        let wait_until = Instant::now() + Duration::from_secs(10);
        while seen() < report.deliveries_expected && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.deliveries_seen = Some(seen());
        report.deliveries_duplicated = Some(network.duplicates());
    }
    Ok(report)
}

/// What the callers share.
struct Shared {
    templates: Arc<Vec<Template>>,
    next: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
    run_id: String,
    recorder: Mutex<Recorder>,
    /// One `Client::Hub` with every connection, or one `Client::Institution` per connection.
    client: Vec<Client>,
    /// Unary calls open on each connection, in the order of `client`'s connections.
    open: Vec<AtomicUsize>,
    /// How long a unary call may take ([`CALL_TIMEOUT`]).
    call_timeout: Duration,
}

/// A count of open calls for each connection of `client`.
fn open_per_connection(client: &[Client]) -> Vec<AtomicUsize> {
    let connections = match client.first() {
        Some(Client::Hub(connections)) => connections.len(),
        _ => client.len(),
    };
    (0..connections).map(|_| AtomicUsize::new(0)).collect()
}

/// A call counted open on one connection until it is dropped.
struct OpenCall<'a> {
    connection: usize,
    open: &'a AtomicUsize,
}

impl Drop for OpenCall<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// The next message number, or `None` when the run is over.
    fn take(&self) -> Option<u64> {
        self.take_due(Instant::now())
    }

    /// The next message number for a call due at `due`, or `None` when that is past the end of
    /// the run or every message is taken. The open loop asks with the time a call was due, not
    /// the time it leaves: a call that waited for a free slot was due within the run all the
    /// same.
    fn take_due(&self, due: Instant) -> Option<u64> {
        if self.deadline.is_some_and(|d| due >= d) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.limit).then_some(n)
    }

    /// Call `n`; one not answered within [`CALL_TIMEOUT`] counts as `DeadlineExceeded` (a call
    /// that never ends would otherwise hold the run, and the comparison, for ever).
    async fn call(&self, n: u64) -> Result<Answer, tonic::Code> {
        tokio::time::timeout(self.call_timeout, self.call_untimed(n))
            .await
            .unwrap_or(Err(tonic::Code::DeadlineExceeded))
    }

    /// Of the connections `first..first + count`, the one with the fewest calls open (among
    /// equals, call `n`'s turn or the next), counted with one more until the result drops. In
    /// turn regardless of load, a connection whose calls are answered more slowly piles up
    /// calls and can go over the server's streams per connection (the hub's
    /// `limits.max_concurrent_streams`), which then turns calls away.
    fn least_busy(&self, first: usize, count: usize, n: u64) -> OpenCall<'_> {
        let turn = n as usize % count;
        let connection = (0..count)
            .map(|k| first + (turn + k) % count)
            .min_by_key(|&c| self.open[c].load(Ordering::Relaxed))
            .expect("at least one connection");
        let open = &self.open[connection];
        open.fetch_add(1, Ordering::Relaxed);
        OpenCall { connection, open }
    }

    async fn call_untimed(&self, n: u64) -> Result<Answer, tonic::Code> {
        let template = &self.templates[(n % self.templates.len() as u64) as usize];
        let id = format!("load-{}-{n}", self.run_id);
        match &self.client[0] {
            Client::Hub(clients) => {
                let per_sender = clients.len() / (1 + SENDERS.len());
                let on = self.least_busy(template.sender * per_sender, per_sender, n);
                let mut client = clients[on.connection].clone();
                client
                    .submit(template.envelope(id))
                    .await
                    .map(|r| Answer::Reply(r.into_inner()))
                    .map_err(|s| s.code())
            }
            Client::Institution(..) => {
                let on = self.least_busy(0, self.client.len(), n);
                let Client::Institution(client, sender) = &self.client[on.connection] else {
                    unreachable!("institution clients only")
                };
                let mut client = client.clone();
                client
                    .deliver(template.delivery(id, sender))
                    .await
                    .map(|_| Answer::Acknowledged)
                    .map_err(|s| s.code())
            }
        }
    }

    async fn closed_loop(&self, _worker: usize) {
        while let Some(n) = self.take() {
            let due = Instant::now();
            let result = self.call(n).await;
            self.recorder.lock().expect("recorder").record(due, result);
        }
    }
}

/// How long a unary call may take before it counts as `DeadlineExceeded`; the same bound as a
/// `SubmitStream` still open after its last envelope.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Open loop: call number n is due at start + n / rate and leaves then, or as soon as one of the
/// `in_flight` slots is free; its latency runs from when it was due, so a server that falls
/// behind shows its queue in the latencies instead of slowing the load down (coordinated
/// omission). With a deadline, every call due before it is sent, and the loop lasts until it
/// even when the next call is due later (a low rate's throughput counts over the whole run).
async fn run_open(shared: &Arc<Shared>, rate: f64, in_flight: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for sent in 0u64.. {
        // A due time too far ahead to represent is never reached.
        let due = Duration::try_from_secs_f64(sent as f64 / rate)
            .ok()
            .and_then(|after| start.checked_add(after));
        let due = match (due, shared.deadline) {
            (Some(due), Some(deadline)) if due < deadline => due,
            (Some(due), None) => due,
            (_, deadline) => {
                if let Some(deadline) = deadline {
                    tokio::time::sleep_until(deadline.into()).await;
                }
                break;
            }
        };
        tokio::time::sleep_until(due.into()).await;
        let (permit, waited) = match permits.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => match permits.clone().acquire_owned().await {
                Ok(permit) => (permit, true),
                Err(_) => break,
            },
        };
        let Some(n) = shared.take_due(due) else {
            break;
        };
        {
            let mut recorder = shared.recorder.lock().expect("recorder");
            recorder.left(due, waited);
        }
        let shared = shared.clone();
        tasks.spawn(async move {
            let result = shared.call(n).await;
            shared
                .recorder
                .lock()
                .expect("recorder")
                .record(due, result);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// One `SubmitStream` of the run: the messages sent on it and not answered yet, with when each
/// was sent, and once it has ended, how (nothing more is sent on it then).
#[derive(Default)]
struct OnStream {
    open: std::collections::HashMap<String, Instant>,
    ended: Option<tonic::Code>,
}

/// Ends a stream: what it left unanswered counts as errors with `code` (the stream's status, or
/// `Unavailable` when it ended without one), and their slots go to the other streams, which
/// would otherwise wait for answers that will never come.
fn end_stream(
    shared: &Shared,
    stream: &Mutex<OnStream>,
    permits: &tokio::sync::Semaphore,
    code: tonic::Code,
) {
    let unanswered = {
        let mut stream = stream.lock().expect("stream");
        stream.ended.get_or_insert(code);
        std::mem::take(&mut stream.open).len()
    };
    if unanswered > 0 {
        let now = Instant::now();
        let mut recorder = shared.recorder.lock().expect("recorder");
        for _ in 0..unanswered {
            recorder.record(now, Err(code));
        }
        drop(recorder);
        permits.add_permits(unanswered);
    }
}

/// Records one stream's answers as they come, until it ends; returns how it ended.
async fn stream_answers(
    shared: &Shared,
    stream: &Mutex<OnStream>,
    permits: &tokio::sync::Semaphore,
    mut replies: tonic::Streaming<bcss_proto::hub::v1::SubmitStreamReply>,
) -> tonic::Code {
    use bcss_proto::hub::v1::submit_stream_reply::Result as Outcome;
    loop {
        let reply = match replies.message().await {
            Ok(Some(reply)) => reply,
            // The hub ends a stream with OK after its last answer; anything still open then was
            // dropped, and counts as `Unavailable`.
            Ok(None) => return tonic::Code::Unavailable,
            Err(status) => return status.code(),
        };
        // An answer to nothing open here (an id this stream did not carry) frees no slot.
        let Some(sent) = stream
            .lock()
            .expect("stream")
            .open
            .remove(&reply.message_id)
        else {
            continue;
        };
        let result = match reply.result {
            Some(Outcome::Reply(r)) => Ok(Answer::Reply(r)),
            Some(Outcome::Error(e)) => Err(tonic::Code::from_i32(e.code)),
            None => Err(tonic::Code::Unknown),
        };
        shared
            .recorder
            .lock()
            .expect("recorder")
            .record(sent, result);
        permits.add_permits(1);
    }
}

/// `SubmitStream`: one stream per connection of each sender that has messages in the mix, and
/// `in_flight` messages open over all of them. Message n is template n of the mix, as with
/// `Submit`, sent on one of its sender's streams, so the flows go out as the mix weighs them
/// however fast each sender's streams are answered.
async fn run_streams(shared: &Arc<Shared>, connections: usize, in_flight: usize) {
    let Client::Hub(clients) = &shared.client[0] else {
        return;
    };
    let in_flight = in_flight.max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let sends: Vec<bool> = (0..=SENDERS.len())
        .map(|sender| shared.templates.iter().any(|t| t.sender == sender))
        .collect();
    // Per sender, its streams (indexes into `streams` and `outgoing`).
    let mut of_sender: Vec<Vec<usize>> = vec![Vec::new(); sends.len()];
    let mut streams: Vec<Arc<Mutex<OnStream>>> = Vec::new();
    let mut outgoing = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, client) in clients.iter().enumerate() {
        let sender = index / connections.max(1);
        if !sends.get(sender).copied().unwrap_or(false) {
            continue;
        }
        // Room for every message that may be open, so sending never waits on a stream.
        let (tx, rx) = tokio::sync::mpsc::channel::<EnvelopeView>(in_flight);
        let stream = Arc::new(Mutex::new(OnStream::default()));
        of_sender[sender].push(streams.len());
        streams.push(stream.clone());
        outgoing.push(tx);
        let (mut client, shared, permits) = (client.clone(), shared.clone(), permits.clone());
        // Each call runs on its own, so its headers never wait for the sending side.
        tasks.spawn(async move {
            let code = match client
                .submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(replies) => {
                    stream_answers(&shared, &stream, &permits, replies.into_inner()).await
                }
                // Refused at the start: what was already sent on it counts with this status.
                Err(status) => status.code(),
            };
            end_stream(&shared, &stream, &permits, code);
        });
    }
    'messages: loop {
        // A slot frees when an answer comes or a stream ends; a run with a deadline stops
        // waiting for one at the deadline, so a stream the hub neither answers nor ends cannot
        // hold the run.
        let permit = match shared.deadline {
            Some(deadline) => tokio::select! {
                permit = permits.acquire() => permit,
                () = tokio::time::sleep_until(deadline.into()) => break,
            },
            None => permits.acquire().await,
        };
        let Ok(permit) = permit else {
            break;
        };
        permit.forget();
        let Some(n) = shared.take() else {
            break;
        };
        let template = &shared.templates[(n % shared.templates.len() as u64) as usize];
        let id = format!("load-{}-{n}", shared.run_id);
        let mine = &of_sender[template.sender];
        let mut ended = tonic::Code::Unavailable;
        for k in 0..mine.len() {
            let s = mine[(n as usize % mine.len() + k) % mine.len()];
            {
                let mut stream = streams[s].lock().expect("stream");
                if let Some(code) = stream.ended {
                    ended = code;
                    continue;
                }
                stream.open.insert(id.clone(), Instant::now());
            }
            // A stream that ends from now on counts this message with its other open ones.
            let _ = outgoing[s].send(template.envelope(id)).await;
            continue 'messages;
        }
        // Every stream of this sender has ended: the mix can no longer be sent as weighed, so
        // the run stops; the message in hand counts as an error with the status its sender's
        // streams ended with.
        shared
            .recorder
            .lock()
            .expect("recorder")
            .record(Instant::now(), Err(ended));
        break;
    }
    // Closing the streams' sending sides: the hub answers what it has and ends each stream.
    drop(outgoing);
    let answered = tokio::time::timeout(CALL_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if answered.is_err() {
        // A stream still open 30 s after the last message: what it holds counts as errors.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        for stream in &streams {
            end_stream(shared, stream, &permits, tonic::Code::DeadlineExceeded);
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use bcss_domain::Niss;

    use super::mix::MixEntry;
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut recorder = Recorder::new(Instant::now(), Vec::new());
        let now = Instant::now();
        for micros in 1..=10_000u64 {
            recorder.answered(micros, now);
        }
        let p = Percentiles::of(&recorder.overall);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.001;
        assert!(close(p.p50, 5.0), "p50 {}", p.p50);
        assert!(close(p.p90, 9.0), "p90 {}", p.p90);
        assert!(close(p.p99, 9.9), "p99 {}", p.p99);
        assert!(close(p.p999, 9.99), "p99.9 {}", p.p999);
        assert!(close(p.max, 10.0), "max {}", p.max);
        assert!(close(p.mean, 5.0005), "mean {}", p.mean);
        let report = Report::build("t".into(), "t".into(), 2.0, &recorder);
        assert_eq!(report.answered, 10_000);
        assert_eq!(report.throughput, 5_000.0);
        assert_eq!(report.buckets.iter().map(|b| b.1).sum::<u64>(), 10_000);
        let html = report.html();
        assert!(
            html.contains("id=\"latency-over-time\"") && html.contains("id=\"latency-histogram\"")
        );
        assert!(!html.contains("<script"));
    }

    #[test]
    fn percentiles_of_nothing_are_zero() {
        let recorder = Recorder::new(Instant::now(), Vec::new());
        assert_eq!(Percentiles::of(&recorder.overall), Percentiles::default());
    }

    #[test]
    fn mix_parses_and_refuses() {
        let entry = |flow, deliberation: Option<&str>, weight| MixEntry {
            flow,
            deliberation: deliberation.map(str::to_owned),
            weight,
        };
        assert_eq!(
            parse_mix("a052=3,dmfa=1").unwrap(),
            [entry(Flow::A052, None, 3), entry(Flow::Dmfa, None, 1)]
        );
        assert_eq!(
            parse_mix("DmfA@10/059=2, dimona@19/010=1,a052@20/130=0").unwrap(),
            [
                entry(Flow::Dmfa, Some("10/059"), 2),
                entry(Flow::Dimona, Some("19/010"), 1)
            ]
        );
        for (mix, error) in [
            ("a052=x", "is not a whole number"),
            ("foo=1", "unknown flow"),
            ("foo@10/059=1", "unknown flow"),
            ("a052", "is not flow=weight"),
            ("a052=0", "no flow with a weight above 0"),
        ] {
            let refused = parse_mix(mix).unwrap_err().to_string();
            assert!(refused.contains(error), "{mix}: {refused}");
        }
    }

    /// The shipped configuration, and `bcss-hub load` arguments.
    fn shipped(args: &[&str]) -> (LoadArgs, Policy) {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            load: LoadArgs,
        }
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/hub.toml");
        let policy = Policy::load(&Settings::load(&config).unwrap()).unwrap();
        let args =
            <Cli as clap::Parser>::parse_from(std::iter::once("load").chain(args.iter().copied()));
        (args.load, policy)
    }

    #[test]
    fn a_deliberation_in_the_mix_names_where_its_messages_may_go_or_why_not() {
        let ok: [(&[&str], &[&str]); 5] = [
            (&["--mix", "dmfa@10/059=1"], &["sigedis"]),
            (&["--mix", "dmfa@19/010=1"], &["onva-inspection"]),
            (&["--mix", "dimona@19/010=1"], &["onva-inspection"]),
            (&["--mix", "a052@20/130=1"], &["cpas-liege"]),
            (
                &["--mix", "a052@20/130=1", "--recipient", "spp-is"],
                &["spp-is"],
            ),
        ];
        for (args, expected) in ok {
            let (args, policy) = shipped(args);
            let entry = &parse_mix(&args.mix).unwrap()[0];
            let (_, recipients) = deliberation_recipients(&args, &policy, entry)
                .unwrap()
                .expect("a deliberation was named");
            let ids: Vec<&str> = recipients.iter().map(|r| &*r.id).collect();
            assert_eq!(ids, expected, "{args:?}");
        }
        let (args, policy) = shipped(&["--mix", "dmfa=1"]);
        let entry = &parse_mix(&args.mix).unwrap()[0];
        assert!(
            deliberation_recipients(&args, &policy, entry)
                .unwrap()
                .is_none()
        );
        let refused: [(&[&str], &str); 5] = [
            (
                &["--mix", "dimona@10/059=1"],
                "deliberation 10/059 does not cover Dimona",
            ),
            (
                &["--mix", "dmfa@16/046=1"],
                "16/046 is checked a posteriori",
            ),
            (
                &["--mix", "dmfa@99/999=1"],
                "no deliberation \"99/999\" in the configuration (it has 10/059, 16/046, 19/010, 20/130)",
            ),
            (
                &["--mix", "a052@20/130=1", "--recipient", "sigedis"],
                "deliberation 20/130 does not let solidaris send A052 to sigedis",
            ),
            (
                &["--mix", "a052@19/010=1"],
                "deliberation 19/010 does not cover A052",
            ),
        ];
        for (args, error) in refused {
            let (args, policy) = shipped(args);
            let entry = &parse_mix(&args.mix).unwrap()[0];
            let refusal = deliberation_recipients(&args, &policy, entry)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"))
                .to_string();
            assert!(refusal.contains(error), "{args:?}: {refusal}");
        }
    }

    #[test]
    fn load_persons_are_valid_and_distinct() {
        let persons: std::collections::HashSet<Niss> = (0..5000).map(load_person).collect();
        assert_eq!(persons.len(), 5000);
    }

    #[test]
    fn a_rate_must_be_a_finite_number_of_calls_per_second_above_zero() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            load: LoadArgs,
        }
        let parse = |rate: &str| {
            <Cli as clap::Parser>::try_parse_from(["load".to_owned(), format!("--rate={rate}")])
                .map(|cli| cli.load.rate)
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse("0.5").unwrap(), Some(0.5));
        assert_eq!(parse("500").unwrap(), Some(500.0));
        for rate in ["0", "-1", "NaN", "inf"] {
            let refused = parse(rate).expect_err(rate);
            assert!(
                refused.contains("a finite number above 0"),
                "{rate}: {refused}"
            );
        }
        let refused = parse("fast").unwrap_err();
        assert!(
            refused.contains("is not a number of calls per second"),
            "{refused}"
        );
    }

    #[test]
    fn a_warm_up_is_seconds_from_zero_to_an_hour_and_goes_with_a_duration() {
        let (args, _) = shipped(&["--warm-up", "2.5"]);
        assert_eq!(args.warm_up, 2.5);
        assert_eq!(shipped(&[]).0.warm_up, 0.0);
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            load: LoadArgs,
        }
        for seconds in ["-1", "NaN", "inf", "3601", "soon"] {
            let refused = <Cli as clap::Parser>::try_parse_from([
                "load".to_owned(),
                format!("--warm-up={seconds}"),
            ])
            .map(|_| ())
            .expect_err(seconds)
            .to_string();
            assert!(
                refused.contains("is not a number of seconds from 0 to 3600"),
                "{seconds}: {refused}"
            );
        }
        // With --messages every message counts.
        let parse = |args: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(
                std::iter::once("load").chain(args.iter().copied()),
            )
            .map(|cli| (cli.load.warm_up, cli.load.messages))
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse(&["--messages", "5"]).unwrap(), (0.0, Some(5)));
        let refused = parse(&["--warm-up", "1", "--messages", "5"]).unwrap_err();
        assert!(refused.contains("cannot be used with"), "{refused}");
    }

    #[test]
    fn calls_due_in_the_warm_up_are_counted_apart_from_every_figure() {
        let start = Instant::now();
        let measured_from = start + Duration::from_secs(5);
        let mut recorder = Recorder::after_warm_up(measured_from, 5.0, vec!["20/130".into()]);
        let delivered_to = |n: usize| {
            Ok(Answer::Reply(SubmitReply {
                recipients: (0..n)
                    .map(|_| bcss_proto::hub::v1::RecipientOutcome {
                        deliberation: "20/130".into(),
                        decision: Decision::Delivered as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }))
        };
        // Two calls due in the warm-up (one to 3 recipients, one failed), one after it.
        recorder.record(start, delivered_to(3));
        recorder.record(
            start + Duration::from_secs(1),
            Err(tonic::Code::Unavailable),
        );
        recorder.left(start, true);
        recorder.record(Instant::now().max(measured_from), delivered_to(1));
        let report = Report::build("t".into(), "t".into(), 1.0, &recorder);
        assert_eq!(
            report.warm_up,
            WarmUp {
                seconds: 5.0,
                calls: 2,
                errors: 1,
                deliveries: 3
            }
        );
        assert_eq!(report.answered, 1, "{}", report.text());
        assert!(report.errors.is_empty(), "{}", report.text());
        assert_eq!(report.deliveries_reported, 1);
        assert_eq!(report.deliveries_expected, 1);
        assert!(
            report.send_lag.is_none(),
            "a warm-up call's lag is not measured"
        );
        assert_eq!(report.waited_for_slot, 0, "nor its wait for a slot");
        assert_eq!(report.by_deliberation[0].delivered, 1);
        let text = report.text();
        assert!(
            text.contains("warm-up    5.0 s before these: 2 calls, 1 errors, 3 deliveries"),
            "{text}"
        );
        assert_eq!(report.json()["warm_up"]["errors"], 1);
        // Without a warm-up the report says nothing of one.
        let none = Report::build(
            "t".into(),
            "t".into(),
            1.0,
            &Recorder::new(start, Vec::new()),
        );
        assert!(!none.text().contains("warm-up"), "{}", none.text());
    }

    #[test]
    fn latencies_beyond_two_minutes_are_kept_as_they_are() {
        let start = Instant::now();
        let mut recorder = Recorder::new(start, Vec::new());
        recorder.answered(1_000, start);
        recorder.answered(200_000_000, start);
        let report = Report::build("t".into(), "t".into(), 1.0, &recorder);
        assert!(
            report.latency.max >= 199_000.0,
            "max {}",
            report.latency.max
        );
        assert!(
            report.timeline[0].3 >= 199_000.0,
            "p99 {}",
            report.timeline[0].3
        );
        let last = report
            .buckets
            .iter()
            .rposition(|b| b.1 > 0)
            .expect("a bucket");
        assert!(
            report.buckets[last].0 >= 199_000.0,
            "{:?}",
            report.buckets[last]
        );
    }

    use bcss_proto::gateway_view::gateway_server::{Gateway, GatewayServer};
    use bcss_proto::hub::v1::{
        ConsultRequest, Decision, ExplainReply, SubmitReply, SubmitStreamReply, TrackReply,
        TrackRequest, submit_stream_reply,
    };
    use bcss_proto::hub::view::v1::ConsultReplyView;
    use tonic::{Request, Response, Status, Streaming};

    /// A stand-in for the hub, in plain HTTP/2: `Submit` answers after `delay`; `SubmitStream`
    /// answers every envelope, or `answers` of them and then breaks the stream off, or is
    /// refused outright. It keeps the flow of every envelope it receives.
    #[derive(Clone, Default)]
    struct FakeHub {
        delay: Duration,
        answers: Option<usize>,
        refuse: bool,
        received: Arc<Mutex<Vec<i32>>>,
    }

    #[tonic::async_trait]
    impl Gateway for FakeHub {
        async fn submit(
            &self,
            request: Request<EnvelopeView>,
        ) -> Result<Response<SubmitReply>, Status> {
            self.received.lock().unwrap().push(request.get_ref().flow);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            Ok(Response::new(SubmitReply::default()))
        }

        type SubmitStreamStream =
            tokio_stream::wrappers::ReceiverStream<Result<SubmitStreamReply, Status>>;

        async fn submit_stream(
            &self,
            request: Request<Streaming<EnvelopeView>>,
        ) -> Result<Response<Self::SubmitStreamStream>, Status> {
            if self.refuse {
                return Err(Status::permission_denied("no stream for this sender"));
            }
            let mut envelopes = request.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            let (received, answers) = (self.received.clone(), self.answers);
            tokio::spawn(async move {
                let mut answered = 0;
                while let Ok(Some(envelope)) = envelopes.message().await {
                    received.lock().unwrap().push(envelope.flow);
                    let reply = if answers.is_some_and(|a| answered >= a) {
                        Err(Status::aborted("stream broken off"))
                    } else {
                        answered += 1;
                        Ok(SubmitStreamReply {
                            message_id: envelope.message_id,
                            result: Some(
                                submit_stream_reply::Result::Reply(SubmitReply::default()),
                            ),
                        })
                    };
                    let stop = reply.is_err();
                    if tx.send(reply).await.is_err() || stop {
                        break;
                    }
                }
            });
            Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
                rx,
            )))
        }

        async fn explain(
            &self,
            _: Request<EnvelopeView>,
        ) -> Result<Response<ExplainReply>, Status> {
            Err(Status::unimplemented("not in the stand-in"))
        }

        async fn track(&self, _: Request<TrackRequest>) -> Result<Response<TrackReply>, Status> {
            Err(Status::unimplemented("not in the stand-in"))
        }

        async fn consult(
            &self,
            _: Request<ConsultRequest>,
        ) -> Result<Response<ConsultReplyView>, Status> {
            Err(Status::unimplemented("not in the stand-in"))
        }
    }

    /// Serves `fake` on a loopback port and connects to it.
    async fn serve(fake: FakeHub) -> GatewayClient<Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        GatewayClient::new(channel(address, None).await.unwrap())
    }

    fn template(flow: Flow, sender: usize) -> Template {
        Template {
            flow,
            sender,
            niss: String::new(),
            period: f::Period::default(),
            addressee: None,
            payload: bytes::Bytes::new(),
        }
    }

    /// A run over `clients` (`connections` per sender, in sender order).
    fn run_over(
        templates: Vec<Template>,
        clients: Vec<GatewayClient<Channel>>,
        messages: Option<u64>,
        duration: Option<Duration>,
    ) -> Arc<Shared> {
        let start = Instant::now();
        let client = vec![Client::Hub(clients)];
        Arc::new(Shared {
            templates: Arc::new(templates),
            next: AtomicU64::new(0),
            limit: messages.unwrap_or(u64::MAX),
            deadline: duration.map(|d| start + d),
            run_id: "test".into(),
            recorder: Mutex::new(Recorder::new(start, Vec::new())),
            open: open_per_connection(&client),
            client,
            call_timeout: CALL_TIMEOUT,
        })
    }

    fn report_of(shared: &Shared, seconds: f64) -> Report {
        Report::build(
            "t".into(),
            "t".into(),
            seconds,
            &shared.recorder.lock().unwrap(),
        )
    }

    /// A run of up to 1,000 A052s over two streams to `fake`, `in_flight` open at once; it
    /// must end within 20 s whatever `fake` does to the streams.
    async fn streams_to(fake: FakeHub, in_flight: usize) -> Arc<Shared> {
        let hub = serve(fake).await;
        let shared = run_over(
            vec![template(Flow::A052, 0)],
            vec![hub.clone(), hub.clone(), hub.clone(), hub],
            Some(1000),
            None,
        );
        tokio::time::timeout(Duration::from_secs(20), run_streams(&shared, 2, in_flight))
            .await
            .expect("the run ends when its streams are broken off or refused");
        shared
    }

    /// `workers` closed loops over `shared`, run to their end.
    async fn closed_loops(shared: &Arc<Shared>, workers: usize) {
        let workers: Vec<_> = (0..workers)
            .map(|w| {
                let shared = shared.clone();
                tokio::spawn(async move { shared.closed_loop(w).await })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
    }

    /// Messages the run took: answered and errors must add up to this.
    fn taken(shared: &Shared) -> u64 {
        shared.next.load(Ordering::Relaxed).min(shared.limit)
    }

    #[tokio::test]
    async fn a_call_not_answered_in_time_counts_as_deadline_exceeded_and_the_run_ends() {
        // A hub that answers after 10 s, and calls given 100 ms: the run does not wait for it.
        let hub = serve(FakeHub {
            delay: Duration::from_secs(10),
            ..FakeHub::default()
        })
        .await;
        let clients = vec![hub.clone(), hub];
        let mut shared = run_over(vec![template(Flow::A052, 0)], clients, Some(3), None);
        Arc::get_mut(&mut shared).unwrap().call_timeout = Duration::from_millis(100);
        let start = Instant::now();
        shared.closed_loop(0).await;
        let report = report_of(&shared, start.elapsed().as_secs_f64());
        assert_eq!(report.answered, 0, "{}", report.text());
        assert_eq!(
            report.errors.get("DeadlineExceeded"),
            Some(&3),
            "{}",
            report.text()
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_go_to_the_connection_with_the_fewest_open() {
        // Two connections of one sender, to a stand-in that answers at once and to one that
        // takes 100 ms: in turn, each would get half of the calls; by load, the slow one only
        // gets a call when it has fewer open than the fast one.
        let slow = FakeHub {
            delay: Duration::from_millis(100),
            ..FakeHub::default()
        };
        let fast = FakeHub::default();
        // The sender's two connections, then ONSS's (unused: the templates are an A052's).
        let unused = serve(FakeHub::default()).await;
        let clients = vec![
            serve(slow.clone()).await,
            serve(fast.clone()).await,
            unused.clone(),
            unused,
        ];
        let shared = run_over(vec![template(Flow::A052, 0)], clients, Some(400), None);
        closed_loops(&shared, 8).await;
        let (to_slow, to_fast) = (
            slow.received.lock().unwrap().len(),
            fast.received.lock().unwrap().len(),
        );
        assert_eq!(to_slow + to_fast, 400);
        assert!(
            to_slow < 100,
            "{to_slow} calls to the slow connection, {to_fast} to the fast"
        );
        // Every call's count was given back.
        assert!(shared.open.iter().all(|o| o.load(Ordering::Relaxed) == 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_loop_measures_only_the_calls_due_after_its_warm_up() {
        let hub = serve(FakeHub {
            delay: Duration::from_millis(20),
            ..FakeHub::default()
        })
        .await;
        let mut shared = run_over(
            vec![template(Flow::A052, 0)],
            vec![hub.clone(), hub],
            None,
            None,
        );
        let start = Instant::now();
        let measured_from = start + Duration::from_millis(300);
        {
            let shared = Arc::get_mut(&mut shared).unwrap();
            shared.deadline = Some(measured_from + Duration::from_millis(300));
            shared.recorder = Mutex::new(Recorder::after_warm_up(measured_from, 0.3, Vec::new()));
        }
        closed_loops(&shared, 4).await;
        let report = report_of(&shared, measured_from.elapsed().as_secs_f64());
        // About 15 calls per worker in each 300 ms: both parts have some, and every call
        // taken is in exactly one of them.
        assert!(report.warm_up.calls >= 8, "{:?}", report.warm_up);
        assert!(report.answered >= 8, "{}", report.text());
        assert_eq!(report.warm_up.errors, 0);
        assert_eq!(report.warm_up.calls + report.answered, taken(&shared));
        // The latencies are the measured calls' alone: each about the stand-in's 20 ms.
        assert!(report.latency.p50 >= 19.0, "{}", report.text());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_loop_call_leaves_when_due_and_its_latency_counts_from_then() {
        let hub = serve(FakeHub::default()).await;
        let shared = run_over(
            vec![template(Flow::A052, 0)],
            vec![hub.clone(), hub],
            Some(10),
            None,
        );
        let start = Instant::now();
        run_open(&shared, 20.0, 4).await;
        let elapsed = start.elapsed();
        let report = report_of(&shared, elapsed.as_secs_f64());
        assert_eq!(report.answered, 10, "{}", report.text());
        // Call 9 is due 450 ms after the start: none leaves before its time.
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        // A call every 50 ms, each answered at once: the tool's own wait (a whole interval
        // when a call left one interval after it was due) must not show.
        assert!(report.latency.p50 < 25.0, "{}", report.text());
        assert_eq!(report.waited_for_slot, 0);
        // How late each call left is measured, and is part of its latency.
        let lag = report.send_lag.expect("an open loop measures its send lag");
        assert!(lag.max <= report.latency.max, "{}", report.text());
        assert!(report.text().contains("after due"), "{}", report.text());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_loop_sends_every_call_due_before_the_deadline_late_if_it_must() {
        // 200 calls/s for 200 ms, one at a time to a hub that takes 20 ms: 40 calls are due,
        // most of them wait for the slot, and the last leaves some 600 ms after it was due.
        let hub = serve(FakeHub {
            delay: Duration::from_millis(20),
            ..FakeHub::default()
        })
        .await;
        let shared = run_over(
            vec![template(Flow::A052, 0)],
            vec![hub.clone(), hub],
            None,
            Some(Duration::from_millis(200)),
        );
        let start = Instant::now();
        run_open(&shared, 200.0, 1).await;
        let report = report_of(&shared, start.elapsed().as_secs_f64());
        assert_eq!(report.answered, 40, "{}", report.text());
        assert_eq!(report.error_count(), 0, "{}", report.text());
        assert!(report.waited_for_slot >= 30, "{}", report.text());
        assert!(report.latency.max >= 400.0, "{}", report.text());
        assert!(
            report.text().contains("calls left after they were due"),
            "{}",
            report.text()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_loop_at_a_tiny_rate_ends_at_the_deadline() {
        let hub = serve(FakeHub::default()).await;
        let shared = run_over(
            vec![template(Flow::A052, 0)],
            vec![hub.clone(), hub],
            None,
            Some(Duration::from_millis(300)),
        );
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), run_open(&shared, 0.01, 4))
            .await
            .expect("the run ends at its deadline");
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
        // Call 0 is due at the start; call 1 only after 100 s.
        assert_eq!(report_of(&shared, elapsed.as_secs_f64()).answered, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_send_the_flows_as_the_mix_weighs_them() {
        // Mix a052=1,dmfa=3: the A052s go from the first sender, the DmfAs from ONSS, each to
        // its own stand-in.
        let (a052s, dmfas) = (FakeHub::default(), FakeHub::default());
        let (from_sender, from_onss) = (a052s.received.clone(), dmfas.received.clone());
        let clients = vec![serve(a052s).await, serve(dmfas).await];
        let templates = vec![
            template(Flow::A052, 0),
            template(Flow::Dmfa, 1),
            template(Flow::Dmfa, 1),
            template(Flow::Dmfa, 1),
        ];
        let shared = run_over(templates, clients, Some(400), None);
        tokio::time::timeout(Duration::from_secs(20), run_streams(&shared, 1, 8))
            .await
            .expect("the run ends");
        let report = report_of(&shared, 1.0);
        assert_eq!(report.answered, 400, "{}", report.text());
        let from_sender = from_sender.lock().unwrap().clone();
        let from_onss = from_onss.lock().unwrap().clone();
        assert_eq!(from_sender.len(), 100);
        assert!(from_sender.iter().all(|f| *f == Flow::A052 as i32));
        assert_eq!(from_onss.len(), 300);
        assert!(from_onss.iter().all(|f| *f == Flow::Dmfa as i32));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_broken_off_ends_the_run_and_what_it_left_open_counts_as_errors() {
        // Two streams, each answering 5 envelopes and then breaking off.
        let shared = streams_to(
            FakeHub {
                answers: Some(5),
                ..FakeHub::default()
            },
            8,
        )
        .await;
        let report = report_of(&shared, 1.0);
        assert_eq!(report.answered, 10, "{}", report.text());
        assert!(report.error_count() > 0, "{}", report.text());
        assert_eq!(
            report.answered + report.error_count(),
            taken(&shared),
            "{}",
            report.text()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_refused_at_the_start_counts_every_message_sent_on_it() {
        let shared = streams_to(
            FakeHub {
                refuse: true,
                ..FakeHub::default()
            },
            16,
        )
        .await;
        let report = report_of(&shared, 1.0);
        assert_eq!(report.answered, 0, "{}", report.text());
        assert!(taken(&shared) > 2, "{}", taken(&shared));
        assert_eq!(
            report.errors.get("PermissionDenied").copied(),
            Some(taken(&shared)),
            "{}",
            report.text()
        );
    }
}
