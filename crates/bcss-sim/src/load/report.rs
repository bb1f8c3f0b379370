//! What a load run recorded (latencies, errors, the recipients' outcomes per deliberation) and
//! its report: text, JSON and a self-contained HTML page with SVG plots.

use std::collections::BTreeMap;
use std::time::Instant;

use bcss_proto::hub::v1::{Decision, SubmitReply};
use hdrhistogram::Histogram;

/// What one answered call said about deliveries.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Outcome {
    pub(super) delivered: u64,
    pub(super) pending: u64,
    pub(super) failed: u64,
    pub(super) refused: u64,
}

impl Outcome {
    pub(super) fn count(&mut self, decision: i32) {
        match Decision::try_from(decision).unwrap_or(Decision::Unspecified) {
            Decision::Delivered => self.delivered += 1,
            Decision::Accepted => self.pending += 1,
            Decision::Refused => self.refused += 1,
            _ => self.failed += 1,
        }
    }

    pub(super) fn add(&mut self, other: Outcome) {
        self.delivered += other.delivered;
        self.pending += other.pending;
        self.failed += other.failed;
        self.refused += other.refused;
    }
}

/// What an answered call said: the hub's reply, or an institution's acknowledgement.
pub(super) enum Answer {
    Reply(SubmitReply),
    Acknowledged,
}

/// Latencies and counts, shared by the callers.
#[derive(Debug)]
pub struct Recorder {
    pub(super) started: Instant,
    /// Every latency, in microseconds.
    pub overall: Histogram<u64>,
    /// Per second of the run: latencies (µs, 2 significant figures).
    pub per_second: Vec<Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    pub errors_per_second: Vec<u64>,
    pub(super) outcome: Outcome,
    /// The configuration's deliberations, and the outcomes under each (one more at the end:
    /// refusals under no deliberation).
    pub(super) deliberations: Vec<String>,
    pub(super) by_deliberation: Vec<Outcome>,
    /// Open loop: calls that were due while `--in-flight` calls were open, and so left late
    /// (their latency still runs from when they were due).
    pub(super) waited_for_slot: u64,
    /// Open loop: how long after it was due each call left, in microseconds. The generator's
    /// own lag (tokio's timer wakes on the millisecond, a busy core later still) is inside the
    /// latencies, which count from when a call was due; this says how much of them it is.
    pub(super) send_lag: Option<Histogram<u64>>,
    /// Calls due before `started` (`--warm-up`), counted apart from every figure above.
    pub(super) warm_up: WarmUp,
}

/// The seconds before the measured ones (`--warm-up`): connections opened, caches and
/// allocators filled. Their calls are answered and counted here only, so that nothing they
/// hide goes unsaid (an error while warming up is still an error).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WarmUp {
    pub seconds: f64,
    /// Calls answered or failed.
    pub calls: u64,
    pub errors: u64,
    /// Deliveries the answers made or left pending: the recipients see these too.
    pub deliveries: u64,
}

/// A histogram of latencies in microseconds that grows to hold the longest one of the run: an
/// open loop against a server that falls behind can keep calls waiting for minutes, and a fixed
/// upper bound would pile them up at the bound and understate the tail without saying so.
fn latencies(significant_figures: u8) -> Histogram<u64> {
    let mut histogram =
        Histogram::new_with_bounds(1, 60_000_000, significant_figures).expect("valid bounds");
    histogram.auto(true);
    histogram
}

/// Records one latency exactly. Growing, the histogram takes anything up to 2^62 µs; only
/// beyond that (far longer than any run) would it keep the value at its bound.
fn record_latency(histogram: &mut Histogram<u64>, micros: u64) {
    if histogram.record(micros).is_err() {
        histogram.saturating_record(micros);
    }
}

impl Recorder {
    pub fn new(started: Instant, deliberations: Vec<String>) -> Recorder {
        Recorder {
            started,
            overall: latencies(3),
            per_second: Vec::new(),
            errors: BTreeMap::new(),
            errors_per_second: Vec::new(),
            outcome: Outcome::default(),
            by_deliberation: vec![Outcome::default(); deliberations.len() + 1],
            deliberations,
            waited_for_slot: 0,
            send_lag: None,
            warm_up: WarmUp::default(),
        }
    }

    /// A recorder whose measured seconds start at `started`, after `seconds` of warm-up.
    pub fn after_warm_up(started: Instant, seconds: f64, deliberations: Vec<String>) -> Recorder {
        let mut recorder = Recorder::new(started, deliberations);
        recorder.warm_up.seconds = seconds;
        recorder
    }

    /// Whether a call due at `due` belongs to the warm-up.
    pub(super) fn warming_up(&self, due: Instant) -> bool {
        due < self.started
    }

    /// Open loop: a call due at `due` leaves now, after waiting for a free slot if `waited`.
    pub(super) fn left(&mut self, due: Instant, waited: bool) {
        if self.warming_up(due) {
            return;
        }
        self.waited_for_slot += u64::from(waited);
        let lag = self.send_lag.get_or_insert_with(|| latencies(3));
        record_latency(
            lag,
            Instant::now().saturating_duration_since(due).as_micros() as u64,
        );
    }

    pub(super) fn second(&mut self, at: Instant) -> usize {
        let second = at.saturating_duration_since(self.started).as_secs() as usize;
        while self.per_second.len() <= second {
            self.per_second.push(latencies(2));
            self.errors_per_second.push(0);
        }
        second
    }

    /// Records an answered call that took `micros`.
    pub fn answered(&mut self, micros: u64, now: Instant) {
        let micros = micros.max(1);
        record_latency(&mut self.overall, micros);
        let second = self.second(now);
        record_latency(&mut self.per_second[second], micros);
    }

    pub(super) fn record(&mut self, due: Instant, result: Result<Answer, tonic::Code>) {
        if self.warming_up(due) {
            self.warm_up.calls += 1;
            match result {
                Ok(Answer::Reply(reply)) => {
                    let mut outcome = Outcome::default();
                    for recipient in &reply.recipients {
                        outcome.count(recipient.decision);
                    }
                    self.warm_up.deliveries += outcome.delivered + outcome.pending + outcome.failed;
                }
                Ok(Answer::Acknowledged) => self.warm_up.deliveries += 1,
                Err(_) => self.warm_up.errors += 1,
            }
            return;
        }
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
    /// Deliveries the recipients received again under a delivery id they had seen (only with
    /// `--start-network`): the hub sent them twice.
    pub deliveries_duplicated: Option<u64>,
    pub deliveries_per_second: f64,
    /// The recipients' outcomes per deliberation, for the deliberations that had any ("none":
    /// refused under no deliberation).
    pub by_deliberation: Vec<UnderDeliberation>,
    pub timeline: Vec<Second>,
    /// (upper bound ms, count) over log-spaced buckets.
    pub buckets: Vec<(f64, u64)>,
    /// Open loop: calls that left after they were due because `--in-flight` calls were open.
    pub waited_for_slot: u64,
    /// Open loop: how long after they were due the calls left (part of their latencies).
    pub send_lag: Option<Percentiles>,
    /// What the warm-up before the measured seconds did (nothing without `--warm-up`).
    pub warm_up: WarmUp,
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
    pub(super) fn build(
        label: String,
        target: String,
        seconds: f64,
        recorder: &Recorder,
    ) -> Report {
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
            deliveries_duplicated: None,
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
            waited_for_slot: recorder.waited_for_slot,
            send_lag: recorder.send_lag.as_ref().map(Percentiles::of),
            warm_up: recorder.warm_up,
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
        let seen = match (self.deliveries_seen, self.deliveries_duplicated) {
            (Some(seen), Some(again)) => format!("{seen} (and {again} received twice)"),
            (Some(seen), None) => seen.to_string(),
            (None, _) => "not counted".to_owned(),
        };
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
        // An open loop sends every call that fell due, late if it must: say how many were, as
        // they are why the run can last longer than `--duration`.
        let late = if self.waited_for_slot > 0 {
            format!(
                "\n  late       {} calls left after they were due, every --in-flight slot being \
                 taken (their latency counts from when they were due)",
                self.waited_for_slot
            )
        } else {
            String::new()
        };
        let lag = self.send_lag.map_or_else(String::new, |lag| {
            format!(
                "\n  sent       p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms after due (the \
                 generator's timer and scheduling; part of the latencies above)",
                lag.p50, lag.p99, lag.max
            )
        });
        let w = &self.warm_up;
        let warm_up = if w.seconds > 0.0 {
            format!(
                "\n  warm-up    {:.1} s before these: {} calls, {} errors, {} deliveries (counted \
                 nowhere else)",
                w.seconds, w.calls, w.errors, w.deliveries
            )
        } else {
            String::new()
        };
        format!(
            "{label}: {target}{warm_up}\n  answered   {answered} in {secs:.1} s = {tput:.0} msg/s\n  \
             latency    p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms (mean {mean:.2} ms){late}{lag}\n  \
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
            "waited_for_slot": self.waited_for_slot,
            "send_lag_ms": self.send_lag.map(|l| serde_json::json!({"p50": l.p50, "p99": l.p99, "max": l.max})),
            "warm_up": {"seconds": self.warm_up.seconds, "calls": self.warm_up.calls, "errors": self.warm_up.errors, "deliveries": self.warm_up.deliveries},
            "deliveries": {
                "reported": self.deliveries_reported,
                "pending": self.deliveries_pending,
                "expected": self.deliveries_expected,
                "refused": self.refused,
                "seen": self.deliveries_seen,
                "duplicated": self.deliveries_duplicated,
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
        page.push_str("<h2>Answers and errors over time</h2>\n");
        page.push_str(&self.svg_throughput());
        page.push_str("<h2>Latency histogram</h2>\n");
        page.push_str(&self.svg_histogram());
        page.push_str("</body></html>\n");
        page
    }

    /// p50 and p99 per second of the run. A second with no answer breaks the lines (a stall
    /// shows as a gap, not as a straight line across it).
    pub(super) fn svg_timeline(&self) -> String {
        let top = self
            .timeline
            .iter()
            .map(|t| t.3)
            .fold(0.0f64, f64::max)
            .max(0.001)
            * 1.1;
        let mut plot = TimePlot::new("latency-over-time", self.timeline.len(), top);
        plot.value_ticks(|ms| format!("{ms:.1} ms"));
        let p50 = self.timeline.iter().map(|t| (t.1 > 0).then_some(t.2));
        plot.lines("p50", "#1f77b4", p50);
        let p99 = self.timeline.iter().map(|t| (t.1 > 0).then_some(t.3));
        plot.lines("p99", "#d62728", p99);
        plot.finish(&[("p50", "#1f77b4"), ("p99", "#d62728")])
    }

    /// Answers and errors per second of the run.
    pub(super) fn svg_throughput(&self) -> String {
        let top = self
            .timeline
            .iter()
            .map(|t| t.1.max(t.4) as f64)
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.1;
        let mut plot = TimePlot::new("answers-over-time", self.timeline.len(), top);
        plot.value_ticks(|n| format!("{n:.0}/s"));
        plot.lines(
            "answers",
            "#2ca02c",
            self.timeline.iter().map(|t| Some(t.1 as f64)),
        );
        plot.lines(
            "errors",
            "#d62728",
            self.timeline.iter().map(|t| Some(t.4 as f64)),
        );
        plot.finish(&[("answers", "#2ca02c"), ("errors", "#d62728")])
    }

    /// The latency histogram: log-spaced buckets, each labelled by its upper bound at its right
    /// edge, with a count axis.
    pub(super) fn svg_histogram(&self) -> String {
        let (w, h, left, bottom) = (TimePlot::W, TimePlot::H, TimePlot::LEFT, TimePlot::BOTTOM);
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
        let mut svg = open_svg("latency-histogram");
        for i in 0..=2 {
            let count = most * f64::from(i) / 2.0;
            svg.push_str(&format!(
                "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"end\">{count:.0}</text>\n",
                left - 4.0,
                (h - bottom) - (h - bottom - 10.0) * count / most + 4.0
            ));
        }
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
                    // The last bound stays inside the picture.
                    (x + bar).min(w - 25.0),
                    h - bottom + 14.0
                ));
            }
        }
        svg.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">calls per bucket; latency, ms (log-spaced buckets, each marked at its upper bound)</text>\n",
            (w + left) / 2.0,
            h - 4.0
        ));
        svg.push_str("</svg>\n");
        svg
    }
}

/// A plot of values per second of the run, as inline SVG: axes, ticks on both, and lines that
/// break where a value is missing.
struct TimePlot {
    svg: String,
    seconds: usize,
    top: f64,
}

impl TimePlot {
    const W: f64 = 900.0;
    const H: f64 = 300.0;
    const LEFT: f64 = 60.0;
    const BOTTOM: f64 = 30.0;

    fn new(id: &str, seconds: usize, top: f64) -> TimePlot {
        let h = TimePlot::H;
        let svg = open_svg(id);
        let mut plot = TimePlot { svg, seconds, top };
        // Seconds along the bottom, about ten ticks.
        let step = seconds.div_ceil(10).max(1);
        for second in (0..seconds).step_by(step) {
            let tick = format!(
                "<text x=\"{:.1}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">{second}</text>\n",
                plot.x(second),
                h - TimePlot::BOTTOM + 14.0
            );
            plot.svg.push_str(&tick);
        }
        plot
    }

    fn x(&self, second: usize) -> f64 {
        let width = TimePlot::W - TimePlot::LEFT - 10.0;
        TimePlot::LEFT + width * (second as f64 + 0.5) / self.seconds.max(1) as f64
    }

    fn y(&self, value: f64) -> f64 {
        let height = TimePlot::H - TimePlot::BOTTOM;
        height - (height - 10.0) * value / self.top
    }

    fn value_ticks(&mut self, label: impl Fn(f64) -> String) {
        for i in 0..=4 {
            let value = self.top * f64::from(i) / 4.0;
            let tick = format!(
                "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n",
                TimePlot::LEFT - 4.0,
                self.y(value) + 4.0,
                label(value)
            );
            self.svg.push_str(&tick);
        }
    }

    /// One polyline per run of seconds that have a value.
    fn lines(&mut self, name: &str, colour: &str, values: impl Iterator<Item = Option<f64>>) {
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, svg: &mut String| {
            if !run.is_empty() {
                svg.push_str(&format!(
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{name}</title></polyline>\n",
                    run.join(" ")
                ));
                run.clear();
            }
        };
        for (second, value) in values.enumerate() {
            match value {
                Some(value) => run.push(format!("{:.1},{:.1}", self.x(second), self.y(value))),
                None => flush(&mut run, &mut self.svg),
            }
        }
        flush(&mut run, &mut self.svg);
    }

    fn finish(mut self, legend: &[(&str, &str)]) -> String {
        let (w, h) = (TimePlot::W, TimePlot::H);
        self.svg.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">second of the run (the last one may be partial)</text>\n",
            (w + TimePlot::LEFT) / 2.0,
            h - 2.0
        ));
        for (i, (name, colour)) in legend.iter().enumerate() {
            self.svg.push_str(&format!(
                "<text x=\"{:.0}\" y=\"20\" font-size=\"12\" fill=\"{colour}\">{name}</text>",
                w - 150.0 + 60.0 * i as f64
            ));
        }
        self.svg.push_str("\n</svg>\n");
        self.svg
    }
}

/// The opening of a plot of the report's size, with its two axes.
fn open_svg(id: &str) -> String {
    let (w, h, left) = (TimePlot::W, TimePlot::H, TimePlot::LEFT);
    format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n\
         <line x1=\"{left}\" y1=\"10\" x2=\"{left}\" y2=\"{b}\" stroke=\"#333\"/><line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#333\"/>\n",
        b = h - TimePlot::BOTTOM,
        r = w - 10.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The `<svg id="…">` element of `page`.
    fn plot<'a>(page: &'a str, id: &str) -> &'a str {
        let start = page.find(&format!("<svg id=\"{id}\"")).expect(id);
        let end = start + page[start..].find("</svg>").unwrap();
        &page[start..end]
    }

    #[test]
    fn a_second_without_answers_breaks_the_latency_lines_and_shows_in_the_answers() {
        // Answers in seconds 0 and 2, an error in second 1, nothing answered in second 1.
        let start = Instant::now();
        let mut recorder = Recorder::new(start, Vec::new());
        recorder.answered(2_000, start + Duration::from_millis(200));
        recorder.answered(3_000, start + Duration::from_millis(400));
        let second = recorder.second(start + Duration::from_millis(1_500));
        *recorder.errors.entry("Unavailable".into()).or_default() += 1;
        recorder.errors_per_second[second] += 1;
        recorder.answered(9_000, start + Duration::from_millis(2_300));
        let report = Report::build("t".into(), "t".into(), 2.5, &recorder);
        assert_eq!(
            report
                .timeline
                .iter()
                .map(|t| (t.1, t.4))
                .collect::<Vec<_>>(),
            [(2, 0), (0, 1), (1, 0)]
        );
        let page = report.html();
        let latency = plot(&page, "latency-over-time");
        // p50 and p99, each in two pieces around the empty second.
        assert_eq!(latency.matches("<polyline").count(), 4, "{latency}");
        assert_eq!(latency.matches("<title>p99</title>").count(), 2);
        let answers = plot(&page, "answers-over-time");
        assert_eq!(answers.matches("<polyline").count(), 2, "{answers}");
        // Three seconds on the time axis, ticked 0, 1, 2.
        for tick in [">0</text>", ">1</text>", ">2</text>"] {
            assert!(answers.contains(tick), "{tick}: {answers}");
        }
        let histogram = plot(&page, "latency-histogram");
        assert_eq!(
            histogram.matches("<rect").count(),
            report.buckets.iter().skip_while(|b| b.1 == 0).count()
                - report.buckets.iter().rev().take_while(|b| b.1 == 0).count(),
            "one bar per bucket from the first to the last with calls"
        );
    }
}
