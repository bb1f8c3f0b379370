//! The hub's Prometheus metrics: their names in one place, the exporter, and the periodic
//! gauges. Labels are flows, reasons, stages, outcomes, deliberation ids and institution ids —
//! all bounded by the policy — never a NISS, a ticket or anything a sender chooses freely.
//! Each metric is described in docs/METRICS.md.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::pipeline::Hub;

pub const SUBMISSIONS: &str = "bcss_submissions_total";
pub const REFUSALS: &str = "bcss_refusals_total";
pub const INTEGRATION_CHECKS: &str = "bcss_integration_checks_total";
pub const DELIVERIES: &str = "bcss_deliveries_total";
pub const DELIVERY_RETRIES: &str = "bcss_delivery_retries_total";
pub const DELIVERY_STREAMS: &str = "bcss_delivery_streams_total";
pub const DEAD_LETTERS: &str = "bcss_dead_letters_total";
pub const OUTBOX_PENDING: &str = "bcss_outbox_pending";
pub const QUEUE_DEPTH: &str = "bcss_delivery_queue_depth";
pub const QUEUE_OLDEST: &str = "bcss_delivery_queue_oldest_seconds";
pub const STAGE_SECONDS: &str = "bcss_stage_seconds";
pub const SUBMIT_SECONDS: &str = "bcss_submit_seconds";
pub const BYTES_IN: &str = "bcss_payload_bytes_in_total";
pub const BYTES_OUT: &str = "bcss_payload_bytes_out_total";
pub const FIELDS_REMOVED: &str = "bcss_fields_removed_total";
pub const DIRECTORY_PERSONS: &str = "bcss_directory_persons";
pub const DIRECTORY_INTEGRATIONS: &str = "bcss_directory_integrations";
pub const POLICY_GENERATION: &str = "bcss_policy_generation";
pub const POLICY_RELOADS: &str = "bcss_policy_reloads_total";
pub const POLICY_LAST_RELOAD_SUCCESS: &str = "bcss_policy_last_reload_success";
pub const POLICY_LAST_RELOAD_TIME: &str = "bcss_policy_last_reload_timestamp_seconds";
pub const JOURNAL_ENTRIES: &str = "bcss_journal_entries";
pub const STORE_FILE_BYTES: &str = "bcss_store_file_bytes";
pub const JOURNAL_REMOVED: &str = "bcss_journal_entries_removed_total";
pub const TICKETS_FORGOTTEN: &str = "bcss_tickets_forgotten_total";
pub const TICKETS_HELD: &str = "bcss_tickets_held";
pub const CONSULTATIONS: &str = "bcss_consultations_total";

/// Installs the Prometheus exporter, serving `/metrics` on `listen`, and the task that keeps
/// the gauges current. Call once per process, inside the runtime.
pub fn serve(listen: SocketAddr, hub: Arc<Hub>) -> Result<(), String> {
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets(&buckets)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("metrics on {listen}: {e}"))?;
    describe();
    // A second `serve` in one process fails to install above, so this runs once.
    let _ = SUBMIT_METRICS.set(SubmitMetrics::register());
    // The policy loaded at start counts as the first successful load.
    metrics::gauge!(POLICY_LAST_RELOAD_SUCCESS).set(1.0);
    metrics::gauge!(POLICY_LAST_RELOAD_TIME).set(unix_seconds());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticker.tick().await;
            gauges(&hub);
            store_gauges(&hub).await;
        }
    });
    tracing::info!(message = "Metrics served.", address = %listen, path = "/metrics");
    Ok(())
}

fn gauges(hub: &Hub) {
    metrics::gauge!(DIRECTORY_PERSONS).set(hub.directory().persons() as f64);
    metrics::gauge!(DIRECTORY_INTEGRATIONS).set(hub.directory().integration_count() as f64);
    metrics::gauge!(POLICY_GENERATION).set(hub.generation() as f64);
    metrics::gauge!(OUTBOX_PENDING).set(hub.outbox().pending() as f64);
}

/// The journal's size and the data file's, asked of the store's writer (a table length and a
/// file's metadata: nothing is scanned). Left as they were when the store cannot answer.
async fn store_gauges(hub: &Hub) {
    let Some(store) = hub.outbox().store() else {
        return;
    };
    match store.size().await {
        Ok(size) => {
            metrics::gauge!(JOURNAL_ENTRIES).set(size.journal_entries as f64);
            metrics::gauge!(STORE_FILE_BYTES).set(size.file_bytes as f64);
        }
        Err(error) => tracing::debug!(message = "Store size not read.", %error),
    }
}

/// Records a reload's result: the counter by result, the last result (1 ok, 0 refused), when
/// it happened and the generation now in force (at once, not at the next 5 s refresh).
pub fn reloaded(ok: bool, generation: u64) {
    metrics::gauge!(POLICY_GENERATION).set(generation as f64);
    metrics::counter!(POLICY_RELOADS, "result" => if ok { "ok" } else { "refused" }).increment(1);
    metrics::gauge!(POLICY_LAST_RELOAD_SUCCESS).set(if ok { 1.0 } else { 0.0 });
    metrics::gauge!(POLICY_LAST_RELOAD_TIME).set(unix_seconds());
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        SUBMISSIONS,
        "Submissions by flow and outcome (accepted, resubmitted, rejected)."
    );
    describe_counter!(
        REFUSALS,
        "Candidate recipients refused by policy, by flow and reason."
    );
    describe_counter!(
        INTEGRATION_CHECKS,
        "Integration checks by result (admitted, refused)."
    );
    describe_counter!(
        DELIVERY_STREAMS,
        "Delivery streams (Institution.DeliverStream) by recipient and event: opened, failed, ended, late, not_taken."
    );
    describe_counter!(
        DELIVERIES,
        "Delivery attempts by recipient institution and outcome."
    );
    describe_counter!(
        DELIVERY_RETRIES,
        "Failed delivery attempts that will be retried, by recipient."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Deliveries given up (dead letters), by recipient."
    );
    describe_gauge!(
        OUTBOX_PENDING,
        "Deliveries accepted and not yet delivered or dead."
    );
    describe_gauge!(QUEUE_DEPTH, "Deliveries waiting per recipient institution.");
    describe_gauge!(
        QUEUE_OLDEST,
        "Age of the oldest waiting delivery per recipient, in seconds."
    );
    describe_histogram!(
        STAGE_SECONDS,
        metrics::Unit::Seconds,
        "Time per submission stage (validate, route, check, filter, persist, deliver)."
    );
    describe_histogram!(
        SUBMIT_SECONDS,
        metrics::Unit::Seconds,
        "Submit, end to end, by flow."
    );
    describe_counter!(
        BYTES_IN,
        metrics::Unit::Bytes,
        "Payload bytes received, by flow."
    );
    describe_counter!(
        BYTES_OUT,
        metrics::Unit::Bytes,
        "Filtered payload bytes accepted for delivery, by flow."
    );
    describe_counter!(
        FIELDS_REMOVED,
        "Field occurrences removed by filtering, by deliberation."
    );
    describe_gauge!(DIRECTORY_PERSONS, "Persons in the reference directory.");
    describe_gauge!(
        DIRECTORY_INTEGRATIONS,
        "Integrations in the reference directory."
    );
    describe_gauge!(
        POLICY_GENERATION,
        "The policy generation in force (1 at start, +1 per reload)."
    );
    describe_counter!(POLICY_RELOADS, "Policy reloads by result (ok, refused).");
    describe_gauge!(
        POLICY_LAST_RELOAD_SUCCESS,
        "1 if the last policy load (start or reload) succeeded, 0 if it was refused."
    );
    describe_gauge!(
        POLICY_LAST_RELOAD_TIME,
        metrics::Unit::Seconds,
        "When the last policy load (start or reload) was attempted, in Unix seconds."
    );
    describe_gauge!(
        JOURNAL_ENTRIES,
        "Journal entries held in the store, stubs of expired entries included."
    );
    describe_gauge!(
        STORE_FILE_BYTES,
        metrics::Unit::Bytes,
        "Size of the data file hub.redb (outbox, tickets, journal), in bytes."
    );
    describe_counter!(
        JOURNAL_REMOVED,
        "Journal entries whose retention ended (content removed, hash kept)."
    );
    describe_counter!(
        TICKETS_FORGOTTEN,
        "Tickets forgotten storage.ticket_days after they were accepted (with their message ids)."
    );
    describe_gauge!(
        TICKETS_HELD,
        "Tickets the ledger holds in memory: with a store, those with deliveries left and those settled in the last minutes."
    );
    describe_counter!(
        CONSULTATIONS,
        "Consultations by flow and outcome (answered, refused, rejected, deadline_exceeded, unavailable, not_found)."
    );
}

/// The flow labels, in the order of `flow_index`.
const FLOWS: [&str; 4] = ["A052", "DMFA", "DIMONA", "unknown"];
/// What a submission's call came to, the `outcome` label of [`SUBMISSIONS`].
pub(crate) const SUBMIT_OUTCOMES: [&str; 3] = ["accepted", "resubmitted", "rejected"];

/// A submission's stages, the `stage` label of [`STAGE_SECONDS`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stage {
    Validate,
    Route,
    Check,
    Filter,
    Persist,
}

impl Stage {
    const LABELS: [&'static str; 5] = ["validate", "route", "check", "filter", "persist"];
}

/// Handles of the metrics every submission records, registered once with the recorder
/// [`serve`] installs. A `counter!` or `histogram!` call looks its series up in the recorder's
/// registry each time (its labels hashed under a lock, an owned label allocated); a handle goes
/// straight to the series. Without a recorder (no metrics endpoint) the handles do nothing, as
/// the calls did.
pub(crate) struct SubmitMetrics {
    /// By flow, then outcome.
    submissions: [[Counter; 3]; 4],
    submit_seconds: [Histogram; 4],
    stage_seconds: [Histogram; 5],
    bytes_in: [Counter; 4],
    bytes_out: [Counter; 4],
    checks_admitted: Counter,
    checks_refused: Counter,
    /// By deliberation id, registered on first use (a policy reload may bring new ones).
    fields_removed: DashMap<Arc<str>, Counter, foldhash::fast::RandomState>,
    /// Whether a recorder stands behind the handles (no registration without one).
    recorded: bool,
}

static SUBMIT_METRICS: OnceLock<SubmitMetrics> = OnceLock::new();
static NO_METRICS: LazyLock<SubmitMetrics> = LazyLock::new(SubmitMetrics::noop);

/// The submission metrics: the registered handles once [`serve`] has run, else handles that do
/// nothing.
pub(crate) fn submit_metrics() -> &'static SubmitMetrics {
    SUBMIT_METRICS.get().unwrap_or(&NO_METRICS)
}

/// The index of a flow label in the handles' arrays.
fn flow_index(flow: &str) -> usize {
    FLOWS.iter().position(|f| *f == flow).unwrap_or(3)
}

impl SubmitMetrics {
    fn register() -> SubmitMetrics {
        SubmitMetrics {
            submissions: FLOWS.map(|flow| {
                SUBMIT_OUTCOMES.map(
                    |outcome| metrics::counter!(SUBMISSIONS, "flow" => flow, "outcome" => outcome),
                )
            }),
            submit_seconds: FLOWS.map(|flow| metrics::histogram!(SUBMIT_SECONDS, "flow" => flow)),
            stage_seconds: Stage::LABELS
                .map(|stage| metrics::histogram!(STAGE_SECONDS, "stage" => stage)),
            bytes_in: FLOWS.map(|flow| metrics::counter!(BYTES_IN, "flow" => flow)),
            bytes_out: FLOWS.map(|flow| metrics::counter!(BYTES_OUT, "flow" => flow)),
            checks_admitted: metrics::counter!(INTEGRATION_CHECKS, "result" => "admitted"),
            checks_refused: metrics::counter!(INTEGRATION_CHECKS, "result" => "refused"),
            fields_removed: DashMap::default(),
            recorded: true,
        }
    }

    fn noop() -> SubmitMetrics {
        SubmitMetrics {
            submissions: FLOWS.map(|_| SUBMIT_OUTCOMES.map(|_| Counter::noop())),
            submit_seconds: FLOWS.map(|_| Histogram::noop()),
            stage_seconds: Stage::LABELS.map(|_| Histogram::noop()),
            bytes_in: FLOWS.map(|_| Counter::noop()),
            bytes_out: FLOWS.map(|_| Counter::noop()),
            checks_admitted: Counter::noop(),
            checks_refused: Counter::noop(),
            fields_removed: DashMap::default(),
            recorded: false,
        }
    }

    /// A submission's call ended with `outcome` (one of [`SUBMIT_OUTCOMES`]) after `seconds`.
    pub(crate) fn submitted(&self, flow: &str, outcome: usize, seconds: f64) {
        let flow = flow_index(flow);
        self.submissions[flow][outcome].increment(1);
        self.submit_seconds[flow].record(seconds);
    }

    pub(crate) fn stage(&self, stage: Stage, seconds: f64) {
        self.stage_seconds[stage as usize].record(seconds);
    }

    pub(crate) fn bytes_in(&self, flow: &str, bytes: u64) {
        self.bytes_in[flow_index(flow)].increment(bytes);
    }

    /// A recipient admitted: the check passed, `bytes` go out, `removed` fields were filtered.
    pub(crate) fn admitted(&self, flow: &str, bytes: u64, deliberation: &Arc<str>, removed: u64) {
        self.checks_admitted.increment(1);
        self.bytes_out[flow_index(flow)].increment(bytes);
        if !self.recorded {
            return;
        }
        if let Some(counter) = self.fields_removed.get(deliberation) {
            counter.increment(removed);
            return;
        }
        let counter = metrics::counter!(FIELDS_REMOVED, "deliberation" => deliberation.to_string());
        counter.increment(removed);
        self.fields_removed.insert(deliberation.clone(), counter);
    }

    pub(crate) fn refused(&self) {
        self.checks_refused.increment(1);
    }
}
