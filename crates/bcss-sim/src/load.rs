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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bcss_domain::{CheckMode, Deliberation, Integration, Niss};
use bcss_gateway::pki::Pki;
use bcss_gateway::startup;
use bcss_policy::{Institution, Policy, Settings};
use bcss_proto::flows::v1 as f;
use bcss_proto::gateway_view::gateway_client::GatewayClient;
use bcss_proto::hub::v1::directory_client::DirectoryClient;
use bcss_proto::hub::v1::{Decision, Flow, IntegrateRequest, SubmitReply};
use bcss_proto::hub::view::v1::{DeliveryView, EnvelopeView, delivery_view, envelope_view};
use bcss_proto::institution_view::institution_client::InstitutionClient;
use bcss_proto::stored::StoredDelivery;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::macros::date;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::institution::Network;
use crate::payloads;

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
    /// HTTP/2 connections to open (calls are spread over them in turn).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Calls kept open at once (closed loop); with `--rate`, the most that may be open.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Calls per second (open loop) instead of a closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds to run (ignored when `--messages` is given).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Send exactly this many messages.
    #[arg(long)]
    pub messages: Option<u64>,
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
    /// no metrics endpoint.
    #[arg(long, value_enum)]
    pub start_hub: Option<HubMode>,
    /// Where the started hub listens (default: a free loopback port).
    #[arg(long)]
    pub hub_listen: Option<SocketAddr>,
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

/// One message of the run, ready to send but for its ids.
#[derive(Clone, Debug)]
struct Template {
    flow: Flow,
    sender: usize,
    niss: String,
    period: f::Period,
    addressee: Option<String>,
    payload: Bytes,
}

impl Template {
    fn envelope(&self, id: String) -> EnvelopeView {
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

    fn delivery(&self, id: String, sender: &str) -> StoredDelivery {
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

/// What one answered call said about deliveries.
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    delivered: u64,
    pending: u64,
    failed: u64,
    refused: u64,
}

impl Outcome {
    fn count(&mut self, decision: i32) {
        match Decision::try_from(decision).unwrap_or(Decision::Unspecified) {
            Decision::Delivered => self.delivered += 1,
            Decision::Accepted => self.pending += 1,
            Decision::Refused => self.refused += 1,
            _ => self.failed += 1,
        }
    }

    fn add(&mut self, other: Outcome) {
        self.delivered += other.delivered;
        self.pending += other.pending;
        self.failed += other.failed;
        self.refused += other.refused;
    }
}

/// What an answered call said: the hub's reply, or an institution's acknowledgement.
enum Answer {
    Reply(SubmitReply),
    Acknowledged,
}

/// Latencies and counts, shared by the callers.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    /// Every latency, in microseconds.
    pub overall: Histogram<u64>,
    /// Per second of the run: latencies (µs, 2 significant figures).
    pub per_second: Vec<Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    pub errors_per_second: Vec<u64>,
    outcome: Outcome,
    /// The configuration's deliberations, and the outcomes under each (one more at the end:
    /// refusals under no deliberation).
    deliberations: Vec<String>,
    by_deliberation: Vec<Outcome>,
}

impl Recorder {
    pub fn new(started: Instant, deliberations: Vec<String>) -> Recorder {
        Recorder {
            started,
            overall: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            per_second: Vec::new(),
            errors: BTreeMap::new(),
            errors_per_second: Vec::new(),
            outcome: Outcome::default(),
            by_deliberation: vec![Outcome::default(); deliberations.len() + 1],
            deliberations,
        }
    }

    fn second(&mut self, at: Instant) -> usize {
        let second = at.saturating_duration_since(self.started).as_secs() as usize;
        while self.per_second.len() <= second {
            self.per_second
                .push(Histogram::new_with_bounds(1, 120_000_000, 2).expect("valid bounds"));
            self.errors_per_second.push(0);
        }
        second
    }

    /// Records an answered call that took `micros`.
    pub fn answered(&mut self, micros: u64, now: Instant) {
        let micros = micros.clamp(1, 120_000_000);
        self.overall.saturating_record(micros);
        let second = self.second(now);
        self.per_second[second].saturating_record(micros);
    }

    fn record(&mut self, due: Instant, result: Result<Answer, tonic::Code>) {
        let now = Instant::now();
        match result {
            Ok(answer) => {
                self.answered(now.saturating_duration_since(due).as_micros() as u64, now);
                match answer {
                    Answer::Reply(reply) => {
                        for recipient in &reply.recipients {
                            let under = self
                                .deliberations
                                .iter()
                                .position(|d| *d == recipient.deliberation)
                                .unwrap_or(self.deliberations.len());
                            self.by_deliberation[under].count(recipient.decision);
                            self.outcome.count(recipient.decision);
                        }
                    }
                    Answer::Acknowledged => self.outcome.add(Outcome {
                        delivered: 1,
                        ..Outcome::default()
                    }),
                }
            }
            Err(code) => {
                *self.errors.entry(format!("{code:?}")).or_default() += 1;
                let second = self.second(now);
                self.errors_per_second[second] += 1;
            }
        }
    }
}

/// Latency percentiles of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// One second of a run: (second, calls answered, p50 ms, p99 ms, errors).
pub type Second = (usize, u64, f64, f64, u64);

/// The result of a run.
#[derive(Debug)]
pub struct Report {
    pub label: String,
    pub target: String,
    pub seconds: f64,
    pub answered: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput: f64,
    pub latency: Percentiles,
    /// Deliveries the replies reported made (for `--target institution`: acknowledged calls).
    pub deliveries_reported: u64,
    /// Deliveries the replies reported accepted and not yet made.
    pub deliveries_pending: u64,
    /// Recipients refused by policy.
    pub refused: u64,
    /// Deliveries expected: every recipient not refused.
    pub deliveries_expected: u64,
    /// Deliveries counted by the recipients (only with `--start-network`).
    pub deliveries_seen: Option<u64>,
    pub deliveries_per_second: f64,
    /// The recipients' outcomes per deliberation, for the deliberations that had any ("none":
    /// refused under no deliberation).
    pub by_deliberation: Vec<UnderDeliberation>,
    pub timeline: Vec<Second>,
    /// (upper bound ms, count) over log-spaced buckets.
    pub buckets: Vec<(f64, u64)>,
}

/// What the replies said of the recipients under one deliberation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnderDeliberation {
    pub deliberation: String,
    pub delivered: u64,
    pub pending: u64,
    pub refused: u64,
    pub failed: u64,
}

impl Report {
    fn build(label: String, target: String, seconds: f64, recorder: &Recorder) -> Report {
        let answered = recorder.overall.len();
        let o = recorder.outcome;
        let timeline = recorder
            .per_second
            .iter()
            .zip(&recorder.errors_per_second)
            .enumerate()
            .map(|(second, (h, errors))| {
                let p = Percentiles::of(h);
                (second, h.len(), p.p50, p.p99, *errors)
            })
            .collect();
        let mut buckets = Vec::new();
        if !recorder.overall.is_empty() {
            for step in recorder.overall.iter_log(10, 1.25) {
                buckets.push((
                    step.value_iterated_to() as f64 / 1000.0,
                    step.count_since_last_iteration(),
                ));
            }
        }
        Report {
            label,
            target,
            seconds,
            answered,
            errors: recorder.errors.clone(),
            throughput: answered as f64 / seconds,
            latency: Percentiles::of(&recorder.overall),
            deliveries_reported: o.delivered,
            deliveries_pending: o.pending,
            refused: o.refused,
            deliveries_expected: o.delivered + o.pending + o.failed,
            deliveries_seen: None,
            deliveries_per_second: o.delivered as f64 / seconds,
            by_deliberation: recorder
                .deliberations
                .iter()
                .map(String::as_str)
                .chain(["none"])
                .zip(&recorder.by_deliberation)
                .filter(|(_, o)| o.delivered + o.pending + o.refused + o.failed > 0)
                .map(|(deliberation, o)| UnderDeliberation {
                    deliberation: deliberation.to_owned(),
                    delivered: o.delivered,
                    pending: o.pending,
                    refused: o.refused,
                    failed: o.failed,
                })
                .collect(),
            timeline,
            buckets,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let l = &self.latency;
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let seen = self
            .deliveries_seen
            .map_or_else(|| "not counted".to_owned(), |n| n.to_string());
        let under: String = self
            .by_deliberation
            .iter()
            .map(|u| {
                format!(
                    "\n  under {:<10} {} delivered, {} pending, {} refused, {} failed",
                    u.deliberation, u.delivered, u.pending, u.refused, u.failed
                )
            })
            .collect();
        format!(
            "{label}: {target}\n  answered   {answered} in {secs:.1} s = {tput:.0} msg/s\n  \
             latency    p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms (mean {mean:.2} ms)\n  \
             errors     {errors}\n  \
             deliveries {rep} made ({dps:.0}/s), {pend} pending, {exp} expected, {refused} refused by policy; seen by recipients: {seen}{under}",
            label = self.label,
            target = self.target,
            answered = self.answered,
            secs = self.seconds,
            tput = self.throughput,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            mean = l.mean,
            rep = self.deliveries_reported,
            dps = self.deliveries_per_second,
            pend = self.deliveries_pending,
            exp = self.deliveries_expected,
            refused = self.refused,
        )
    }

    /// The report for scripts.
    pub fn json(&self) -> serde_json::Value {
        let l = &self.latency;
        serde_json::json!({
            "label": self.label,
            "target": self.target,
            "seconds": self.seconds,
            "answered": self.answered,
            "errors": self.errors,
            "throughput": self.throughput,
            "latency_ms": {"p50": l.p50, "p90": l.p90, "p99": l.p99, "p99_9": l.p999, "max": l.max, "mean": l.mean},
            "deliveries": {
                "reported": self.deliveries_reported,
                "pending": self.deliveries_pending,
                "expected": self.deliveries_expected,
                "refused": self.refused,
                "seen": self.deliveries_seen,
                "per_second": self.deliveries_per_second,
            },
            "by_deliberation": self.by_deliberation.iter().map(|u| (u.deliberation.clone(), serde_json::json!({"delivered": u.delivered, "pending": u.pending, "refused": u.refused, "failed": u.failed}))).collect::<serde_json::Map<_, _>>(),
            "timeline": self.timeline.iter().map(|(s, n, p50, p99, e)| serde_json::json!({"second": s, "answered": n, "p50_ms": p50, "p99_ms": p99, "errors": e})).collect::<Vec<_>>(),
        })
    }

    /// A self-contained HTML page: the figures, latency over time and the latency histogram as
    /// inline SVG (no script, nothing fetched).
    pub fn html(&self) -> String {
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut page = String::new();
        page.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>bcss-hub load report</title>\n<style>body{font-family:sans-serif;margin:2em;max-width:960px}td,th{padding:2px 10px;text-align:right}th{text-align:left}svg{background:#fafafa;border:1px solid #ddd}</style></head><body>\n");
        page.push_str(&format!(
            "<h1>bcss-hub load report</h1>\n<pre>{}</pre>\n",
            escape(&self.text())
        ));
        page.push_str("<h2>Latency over time</h2>\n");
        page.push_str(&self.svg_timeline());
        page.push_str("<h2>Latency histogram</h2>\n");
        page.push_str(&self.svg_histogram());
        page.push_str("</body></html>\n");
        page
    }

    fn svg_timeline(&self) -> String {
        let (w, h, left, bottom) = (900.0, 300.0, 60.0, 30.0);
        let seconds = self.timeline.len().max(1) as f64;
        let top = self
            .timeline
            .iter()
            .map(|t| t.3)
            .fold(0.0f64, f64::max)
            .max(0.001)
            * 1.1;
        let x = |s: f64| left + (w - left - 10.0) * (s + 0.5) / seconds;
        let y = |ms: f64| (h - bottom) - (h - bottom - 10.0) * ms / top;
        let line = |pick: &dyn Fn(&Second) -> f64| {
            self.timeline
                .iter()
                .filter(|t| t.1 > 0)
                .map(|t| format!("{:.1},{:.1}", x(t.0 as f64), y(pick(t))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut svg = format!(
            "<svg id=\"latency-over-time\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n"
        );
        svg.push_str(&axes(w, h, left, bottom));
        for i in 0..=4 {
            let ms = top * f64::from(i) / 4.0;
            svg.push_str(&format!(
                "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"end\">{ms:.1} ms</text>\n",
                left - 4.0,
                y(ms) + 4.0
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">seconds ({} s)</text>\n",
            (w + left) / 2.0,
            h - 8.0,
            self.timeline.len()
        ));
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"><title>p50</title></polyline>\n",
            line(&|t| t.2)
        ));
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{}\"><title>p99</title></polyline>\n",
            line(&|t| t.3)
        ));
        svg.push_str(&format!(
            "<text x=\"{:.0}\" y=\"20\" font-size=\"12\" fill=\"#1f77b4\">p50</text><text x=\"{:.0}\" y=\"20\" font-size=\"12\" fill=\"#d62728\">p99</text>\n",
            w - 90.0,
            w - 50.0
        ));
        svg.push_str("</svg>\n");
        svg
    }

    fn svg_histogram(&self) -> String {
        let (w, h, left, bottom) = (900.0, 300.0, 60.0, 30.0);
        let buckets: Vec<&(f64, u64)> = {
            let first = self.buckets.iter().position(|b| b.1 > 0).unwrap_or(0);
            let last = self.buckets.iter().rposition(|b| b.1 > 0).unwrap_or(0);
            self.buckets
                .get(first..=last)
                .map(|s| s.iter().collect())
                .unwrap_or_default()
        };
        let most = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
        let n = buckets.len().max(1) as f64;
        let bar = (w - left - 10.0) / n;
        let mut svg = format!(
            "<svg id=\"latency-histogram\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n"
        );
        svg.push_str(&axes(w, h, left, bottom));
        for (i, (upper, count)) in buckets.iter().enumerate() {
            let height = (h - bottom - 10.0) * *count as f64 / most;
            let x = left + bar * i as f64;
            svg.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"#1f77b4\"><title>≤ {upper:.3} ms: {count}</title></rect>\n",
                h - bottom - height,
                (bar - 1.0).max(0.5)
            ));
            if i % (buckets.len() / 8).max(1) == 0 {
                svg.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">{upper:.2}</text>\n",
                    x + bar / 2.0,
                    h - bottom + 14.0
                ));
            }
        }
        svg.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">latency, ms (log-spaced buckets)</text>\n",
            (w + left) / 2.0,
            h - 4.0
        ));
        svg.push_str("</svg>\n");
        svg
    }
}

fn axes(w: f64, h: f64, left: f64, bottom: f64) -> String {
    format!(
        "<line x1=\"{left}\" y1=\"10\" x2=\"{left}\" y2=\"{b}\" stroke=\"#333\"/><line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#333\"/>\n",
        b = h - bottom,
        r = w - 10.0
    )
}

/// One entry of `--mix`: a flow, the deliberation it is sent under if one is named, a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MixEntry {
    flow: Flow,
    deliberation: Option<String>,
    weight: u32,
}

/// Parses `a052=3,dmfa@10/059=1` into weighted entries.
fn parse_mix(mix: &str) -> Result<Vec<MixEntry>, Error> {
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

fn domain_flow(flow: Flow) -> bcss_domain::Flow {
    match flow {
        Flow::A052 => bcss_domain::Flow::A052,
        Flow::Dmfa => bcss_domain::Flow::Dmfa,
        _ => bcss_domain::Flow::Dimona,
    }
}

fn flow_name(flow: Flow) -> &'static str {
    match flow {
        Flow::A052 => "A052",
        Flow::Dmfa => "DmfA",
        _ => "Dimona",
    }
}

/// The institution each flow of the run is sent by: A052s by `--as`, DmfA and Dimona by ONSS.
fn sender_of<'p>(
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
fn a052_recipients(args: &LoadArgs, policy: &Policy) -> Result<Vec<String>, Error> {
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
fn deliberation_recipients<'p>(
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
type Admitted<'p> = Vec<(&'p Institution, Vec<(Niss, Vec<Integration>)>)>;

fn admitted_candidates<'p>(
    directory: &bcss_directory::Directory,
    recipients: &[&'p Institution],
) -> Admitted<'p> {
    recipients
        .iter()
        .map(|recipient| {
            let mut persons: BTreeMap<Niss, Vec<Integration>> = BTreeMap::new();
            for (niss, row) in directory.list(recipient.index, None, 0, usize::MAX).0 {
                persons.entry(niss).or_default().push(row);
            }
            (*recipient, persons.into_iter().collect())
        })
        .filter(|(_, persons): &(_, Vec<_>)| !persons.is_empty())
        .collect()
}

/// The persons this run's A052s are about: BIS numbers with the month + 20 (which the sample
/// directory never uses), born in 2008.
fn load_person(n: u32) -> Niss {
    let day = 1 + (n / 997) % 28;
    let serial = 1 + (n % 997) as u16;
    Niss::compose(82_800 + day, serial, true).expect("composed NISS is valid")
}

const SENDERS: [&str; 1] = ["onss"];

/// A person `deliberation` admits at one of its recipients for `message` (sender, flow,
/// period), drawn at random from `candidates`: (recipient, person).
fn draw_admitted<'p>(
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

fn templates(
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
            .list(institution.index, None, 0, usize::MAX)
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
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        match args.messages {
            Some(m) => ProgressBar::new(m),
            None => ProgressBar::new(duration.as_secs().max(1)),
        }
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {wide_bar} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let start = Instant::now();
    let deadline = if args.messages.is_some() {
        None
    } else {
        Some(start + duration)
    };
    let shared = Arc::new(Shared {
        templates,
        next: AtomicU64::new(0),
        limit,
        deadline,
        run_id,
        recorder: Mutex::new(Recorder::new(
            start,
            policy
                .deliberations()
                .iter()
                .map(|d| d.id.to_string())
                .collect(),
        )),
        client,
    });
    let ticker = {
        let shared = shared.clone();
        let progress = progress.clone();
        let counted = args.messages.is_some();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = shared.recorder.lock().expect("recorder").overall.len();
                let secs = start.elapsed().as_secs_f64();
                if counted {
                    progress.set_position(done);
                } else {
                    progress.set_position(secs as u64);
                }
                progress.set_message(format!("{done} answered, {:.0} msg/s", done as f64 / secs));
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
    let seconds = start.elapsed().as_secs_f64();
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
        // Deliveries still in flight (reply_wait_ms = 0, retries) land shortly.
        let wait_until = Instant::now() + Duration::from_secs(10);
        while (network.received() as u64) < report.deliveries_expected
            && Instant::now() < wait_until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.deliveries_seen = Some(network.received() as u64);
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
}

impl Shared {
    /// The next message number, or `None` when the run is over.
    fn take(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.limit).then_some(n)
    }

    async fn call(&self, n: u64) -> Result<Answer, tonic::Code> {
        let template = &self.templates[(n % self.templates.len() as u64) as usize];
        let id = format!("load-{}-{n}", self.run_id);
        match &self.client[0] {
            Client::Hub(clients) => {
                let per_sender = clients.len() / (1 + SENDERS.len());
                let index = template.sender * per_sender + (n as usize % per_sender);
                let mut client = clients[index].clone();
                client
                    .submit(template.envelope(id))
                    .await
                    .map(|r| Answer::Reply(r.into_inner()))
                    .map_err(|s| s.code())
            }
            Client::Institution(..) => {
                let Client::Institution(client, sender) =
                    &self.client[n as usize % self.client.len()]
                else {
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

/// Open loop: call number n is due at start + n / rate; at most `in_flight` open.
async fn run_open(shared: &Arc<Shared>, rate: f64, in_flight: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    loop {
        let due_count = (start.elapsed().as_secs_f64() * rate) as u64;
        let mut over = false;
        while sent < due_count {
            let Some(n) = shared.take() else {
                over = true;
                break;
            };
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            sent += 1;
            let Ok(permit) = permits.clone().acquire_owned().await else {
                over = true;
                break;
            };
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
        }
        if over {
            break;
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
}

/// `SubmitStream`: one stream per connection of each sender that has messages in the mix,
/// `in_flight` messages open over all of them; each stream sends its own sender's messages.
async fn run_streams(shared: &Arc<Shared>, connections: usize, in_flight: usize) {
    let Client::Hub(clients) = &shared.client[0] else {
        return;
    };
    // Template indexes per sender.
    let mut by_sender: Vec<Vec<usize>> = vec![Vec::new(); 1 + SENDERS.len()];
    for (index, template) in shared.templates.iter().enumerate() {
        by_sender[template.sender].push(index);
    }
    let by_sender = Arc::new(by_sender);
    let used: Vec<usize> = (0..clients.len())
        .filter(|index| !by_sender[index / connections].is_empty())
        .collect();
    let per_stream = (in_flight / used.len().max(1)).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for index in used {
        let sender = index / connections;
        let mut client = clients[index].clone();
        let shared = shared.clone();
        let by_sender = by_sender.clone();
        tasks.spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<EnvelopeView>(per_stream);
            let permits = Arc::new(tokio::sync::Semaphore::new(per_stream));
            let open: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
            // The sending side runs on its own, so the call's headers never wait for it.
            let producer = {
                let shared = shared.clone();
                let permits = permits.clone();
                let open = open.clone();
                tokio::spawn(async move {
                    let mine = &by_sender[sender];
                    loop {
                        let Ok(permit) = permits.acquire().await else {
                            break;
                        };
                        permit.forget();
                        let Some(n) = shared.take() else {
                            permits.add_permits(1);
                            break;
                        };
                        let template = &shared.templates[mine[n as usize % mine.len()]];
                        let id = format!("load-{}-{n}", shared.run_id);
                        open.lock()
                            .expect("open")
                            .insert(id.clone(), Instant::now());
                        if tx.send(template.envelope(id)).await.is_err() {
                            break;
                        }
                    }
                    // Wait for the answers to what was sent, then close the stream.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        permits.acquire_many(per_stream as u32),
                    )
                    .await;
                })
            };
            let mut replies = match client
                .submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    producer.abort();
                    shared
                        .recorder
                        .lock()
                        .expect("recorder")
                        .record(Instant::now(), Err(status.code()));
                    return;
                }
            };
            while let Ok(Some(reply)) = replies.message().await {
                let due = open.lock().expect("open").remove(&reply.message_id);
                let result = match reply.result {
                    Some(bcss_proto::hub::v1::submit_stream_reply::Result::Reply(r)) => {
                        Ok(Answer::Reply(r))
                    }
                    Some(bcss_proto::hub::v1::submit_stream_reply::Result::Error(e)) => {
                        Err(tonic::Code::from_i32(e.code))
                    }
                    None => Err(tonic::Code::Unknown),
                };
                shared
                    .recorder
                    .lock()
                    .expect("recorder")
                    .record(due.unwrap_or_else(Instant::now), result);
                permits.add_permits(1);
            }
            let _ = producer.await;
            // Whatever was sent and never answered counts as an error.
            let unanswered = open.lock().expect("open").len();
            let mut recorder = shared.recorder.lock().expect("recorder");
            for _ in 0..unanswered {
                recorder.record(Instant::now(), Err(tonic::Code::Unavailable));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
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
}
