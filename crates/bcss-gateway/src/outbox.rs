//! Durable delivery: one worker per recipient takes the accepted deliveries from the store and
//! delivers them until each is acknowledged or becomes a dead letter.
//!
//! - **Order.** A recipient's deliveries are spread over lanes by the person's NISS; a lane
//!   delivers one at a time, in the order the store accepted them (a Dimona entry before its
//!   exit), while different persons' deliveries proceed in parallel.
//! - **Retries.** A failed attempt stays at the head of its lane and is retried after an
//!   exponential backoff with jitter; every attempt has a deadline (`delivery.timeout_ms`).
//! - **Circuit.** After `circuit_failures` failures in a row, the recipient is left alone for
//!   `circuit_open_ms` (doubling with each failed probe, up to a minute), then probed with one
//!   delivery.
//! - **Checked again.** An attempt that does not follow its acceptance's integration check (a
//!   retry, a delivery resumed at start, a replayed dead letter) runs the check again first:
//!   an institution that no longer has the person integrated, or a deliberation no longer
//!   valid, gets nothing, and the delivery becomes a dead letter saying why.
//! - **Dead letters.** After `max_attempts` attempts or `max_age_s`, a delivery becomes a dead
//!   letter in the store, to be listed, inspected and replayed; it is never dropped.
//! - **Bounded.** At most `max_pending` deliveries wait, in memory and on disk together; beyond
//!   that `Submit` is refused with a retry hint.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bcss_directory::Directory;
use bcss_policy::Policy;
use bcss_policy::settings::DeliverySettings;
use bcss_store::{Accepted, Change, DeliveryRow, Store, StoreError, now_ms};
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rand::RngExt;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::Deliverer;
use crate::ledger::{Decision, TicketRecord};
use crate::pipeline::still_admitted;
use crate::telemetry;

/// How deliveries are retried and bounded (`[delivery]` in `hub.toml`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_age: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub lanes: usize,
    pub circuit_failures: u32,
    pub circuit_open: Duration,
    pub max_pending: usize,
    /// How long `Submit` waits for first attempts before answering.
    pub reply_wait: Duration,
}

impl RetryPolicy {
    pub fn from_settings(settings: &DeliverySettings) -> RetryPolicy {
        RetryPolicy {
            max_attempts: settings.max_attempts.max(1),
            max_age: Duration::from_secs(settings.max_age_s),
            backoff_initial: Duration::from_millis(settings.backoff_initial_ms.max(1)),
            backoff_max: Duration::from_millis(settings.backoff_max_ms.max(1)),
            lanes: settings.lanes_per_recipient.max(1),
            circuit_failures: settings.circuit_failures.max(1),
            circuit_open: Duration::from_millis(settings.circuit_open_ms.max(1)),
            max_pending: settings.max_pending,
            reply_wait: Duration::from_millis(settings.reply_wait_ms),
        }
    }
}

/// How long the integration check made at acceptance stands for a delivery's first attempt.
/// A first attempt that waited longer (behind a failing delivery to the same recipient, or an
/// open circuit) is checked again: the recipient may have withdrawn the integration, or the
/// deliberation may have expired, meanwhile. The integration is checked before every delivery.
const CHECK_STANDS_MS: i64 = 1_000;

/// One delivery on its way.
#[derive(Debug)]
pub struct Job {
    pub seq: u64,
    pub recipient: Arc<str>,
    pub niss: u64,
    /// The encoded, filtered `Delivery`.
    pub request: Bytes,
    pub attempts: u32,
    /// Where its age limit (`delivery.max_age_s`) counts from: its acceptance, or its last
    /// replay (`DeliveryRow::age_from_ms`).
    pub accepted_at_ms: i64,
    pub next_attempt_ms: i64,
    /// The integration check ran just before it was queued (at its acceptance), so a first
    /// attempt that starts within `CHECK_STANDS_MS` of it needs no other. False for a delivery
    /// resumed at start or replayed, and after any attempt.
    pub checked: bool,
    /// The ticket, to keep its outcome current for `Track`.
    pub record: Option<Arc<TicketRecord>>,
    /// Told when the first attempt ends (either way), so `Submit` can report it.
    pub notify: Option<oneshot::Sender<()>>,
}

/// Deliveries refused for lack of room.
#[derive(Debug)]
pub struct Full {
    pub pending: usize,
    pub limit: usize,
}

/// The outbox: the store, one worker per recipient, the pending count.
#[derive(Debug)]
pub struct Outbox {
    store: Option<Arc<Store>>,
    deliverer: Deliverer,
    policy: Arc<ArcSwap<Policy>>,
    /// For the integration check before attempts that do not follow acceptance.
    directory: Arc<Directory>,
    retry: RetryPolicy,
    workers: DashMap<Arc<str>, mpsc::UnboundedSender<Job>, foldhash::fast::RandomState>,
    pending: AtomicUsize,
    /// Sequence numbers when there is no store (durability off).
    next_seq: std::sync::atomic::AtomicU64,
}

impl Outbox {
    /// `store: None` runs without durability (benchmarks of the rest of the path).
    pub fn new(
        store: Option<Arc<Store>>,
        deliverer: Deliverer,
        policy: Arc<ArcSwap<Policy>>,
        directory: Arc<Directory>,
        retry: RetryPolicy,
    ) -> Outbox {
        Outbox {
            store,
            deliverer,
            policy,
            directory,
            retry,
            workers: DashMap::default(),
            pending: AtomicUsize::new(0),
            next_seq: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The channels to institutions (consultations ask sources over them).
    pub fn deliverer(&self) -> &Deliverer {
        &self.deliverer
    }

    /// Deliveries accepted and not yet delivered or dead.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Makes room for `count` deliveries, or says the outbox is full.
    pub fn reserve(&self, count: usize) -> Result<(), Full> {
        let limit = self.retry.max_pending;
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now + count <= limit).then_some(now + count)
            })
            .map(|_| ())
            .map_err(|pending| Full { pending, limit })
    }

    /// Counts deliveries found pending in the store at start, whatever the limit.
    pub fn reserve_unchecked(&self, count: usize) {
        self.pending.fetch_add(count, Ordering::AcqRel);
    }

    /// Gives back room reserved for deliveries that were not accepted after all.
    pub fn release(&self, count: usize) {
        self.pending.fetch_sub(count, Ordering::AcqRel);
    }

    /// Numbers `count` deliveries without recording them (durability off).
    pub fn number(&self, count: usize) -> Accepted {
        let first = self.next_seq.fetch_add(count as u64, Ordering::Relaxed);
        Accepted::New {
            seqs: (first..first + count as u64).collect(),
        }
    }

    /// Hands a delivery to its recipient's worker (started on first use).
    pub fn enqueue(self: &Arc<Self>, job: Job) {
        let sender = self
            .workers
            .entry(job.recipient.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(worker(self.clone(), job.recipient.clone(), rx));
                tx
            })
            .clone();
        let _ = sender.send(job);
    }

    /// A dead letter goes back to its recipient's queue; `record`, its ticket's record in the
    /// ledger, follows its attempts from now on. `None` when `seq` is not a dead letter (any
    /// more): nothing is queued.
    pub async fn replay(
        self: &Arc<Self>,
        seq: u64,
        record: Option<Arc<TicketRecord>>,
    ) -> Result<Option<DeliveryRow>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let row = store.change(Change::Replay { seq }).await?;
        if let Some(row) = &row {
            self.pending.fetch_add(1, Ordering::AcqRel);
            let job = Job {
                seq: row.seq,
                recipient: row.recipient.as_str().into(),
                niss: row.niss,
                request: row.request.clone(),
                attempts: 0,
                accepted_at_ms: row.age_from_ms(),
                next_attempt_ms: 0,
                checked: false,
                record,
                notify: None,
            };
            update_outcome(&job, Decision::Accepted, None);
            self.enqueue(job);
        }
        Ok(row)
    }

    /// Records a change of a delivery; false if the store refused it.
    async fn record(&self, change: Change) -> bool {
        if let Some(store) = &self.store
            && let Err(error) = store.change(change).await
        {
            // The delivery stays pending on disk: after a restart it is made again, and the
            // recipient drops the duplicate by its delivery id.
            tracing::warn!(message = "Delivery state not recorded.", %error);
            return false;
        }
        true
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(20);
        let full = self
            .retry
            .backoff_initial
            .saturating_mul(1 << exponent)
            .min(self.retry.backoff_max);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Whether a recipient is being left alone.
#[derive(Debug)]
struct Circuit {
    failures: u32,
    threshold: u32,
    open_until_ms: i64,
    open_for: Duration,
    initial: Duration,
}

impl Circuit {
    fn allows(&self, now: i64, in_flight: usize) -> bool {
        self.failures < self.threshold || (now >= self.open_until_ms && in_flight == 0)
    }
    /// When the loop must next look at a lane whose head is due at `due`: then while the
    /// circuit is closed, at the end of the window once it is open; not at all while an attempt
    /// is in flight with the circuit open (the probe), since nothing starts until it ends and its
    /// end wakes the loop (a timer already due would turn it every millisecond until then).
    fn wake(&self, due: i64, in_flight: usize) -> Option<i64> {
        if self.failures < self.threshold {
            Some(due)
        } else if in_flight == 0 {
            Some(due.max(self.open_until_ms))
        } else {
            None
        }
    }
    fn success(&mut self) {
        self.failures = 0;
        self.open_until_ms = 0;
        self.open_for = self.initial;
    }
    fn failure(&mut self, now: i64) {
        self.failures += 1;
        // Attempts in flight when the circuit opens fail one after another (up to a lane's
        // worth at once when an endpoint restarts): only the failure that opens it, and a
        // failed probe after the window, move the window and double the next one.
        if self.failures >= self.threshold && now >= self.open_until_ms {
            self.open_until_ms = now + self.open_for.as_millis() as i64;
            self.open_for = (self.open_for * 2).min(Duration::from_secs(60));
        }
    }
}

async fn worker(outbox: Arc<Outbox>, recipient: Arc<str>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let lanes_count = outbox.retry.lanes;
    let mut lanes: Vec<VecDeque<Job>> = (0..lanes_count).map(|_| VecDeque::new()).collect();
    let mut busy = vec![false; lanes_count];
    // Attempts and "delivered" records are futures polled by this task, not tasks of their own:
    // over a delivery stream an attempt is a message out and an acknowledgement back, and a
    // task spawned, scheduled and joined per delivery cost more than that.
    let mut in_flight = FuturesUnordered::new();
    // "Delivered" state changes on their way to the store. The lane is free as soon as the
    // recipient acknowledged: waiting for the commit here made every recipient wait one fsync
    // per delivery (one lane at a time), and kept the store's group commit from grouping them.
    // Not yet recorded when the process dies = delivered again at the next start, which the
    // recipient drops by its delivery id (as when recording fails).
    let mut recording = FuturesUnordered::new();
    // The recipient's gauges, looked up once (the loop turns several times per delivery).
    let queue_depth = metrics::gauge!(telemetry::QUEUE_DEPTH, "recipient" => recipient.to_string());
    let queue_oldest =
        metrics::gauge!(telemetry::QUEUE_OLDEST, "recipient" => recipient.to_string());
    let delivered_count = metrics::counter!(telemetry::DELIVERIES, "recipient" => recipient.to_string(), "outcome" => "delivered");
    let deliver_seconds = metrics::histogram!(telemetry::STAGE_SECONDS, "stage" => "deliver");
    let mut circuit = Circuit {
        failures: 0,
        threshold: outbox.retry.circuit_failures,
        open_until_ms: 0,
        open_for: outbox.retry.circuit_open,
        initial: outbox.retry.circuit_open,
    };
    // Jobs waiting in the lanes (not in flight): the lanes are walked only when there are some.
    let mut queued = 0usize;
    loop {
        let now = now_ms();
        // One walk over the lanes: start what is due, and note when the next waiting head is
        // due (or the circuit's probe) and how long the oldest has waited. Under load the loop
        // turns several times per delivery; with three walks over 64 lanes per turn it took
        // 3.6 % of the hub's samples (docs/BENCHMARKS-HISTORY.md, "Profile, eighth round").
        let mut wake: Option<i64> = None;
        let mut oldest_at: Option<i64> = None;
        if queued > 0 {
            for (lane, queue) in lanes.iter_mut().enumerate() {
                if !busy[lane]
                    && circuit.allows(now, in_flight.len())
                    && queue.front().is_some_and(|j| j.next_attempt_ms <= now)
                {
                    let job = queue.pop_front().expect("checked");
                    queued -= 1;
                    busy[lane] = true;
                    in_flight.push(attempt(outbox.clone(), lane, job, deliver_seconds.clone()));
                }
                let Some(head) = queue.front() else {
                    continue;
                };
                oldest_at =
                    Some(oldest_at.map_or(head.accepted_at_ms, |at| at.min(head.accepted_at_ms)));
                if !busy[lane] {
                    wake = Some(
                        wake.map_or(head.next_attempt_ms, |due| due.min(head.next_attempt_ms)),
                    );
                }
            }
        }
        let wake = wake.and_then(|due| circuit.wake(due, in_flight.len()));
        let sleep = wake.map(|due| Duration::from_millis((due - now).max(1) as u64));
        let waiting = queued + in_flight.len();
        let oldest = oldest_at.map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
        queue_depth.set(waiting as f64);
        queue_oldest.set(oldest);
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) => {
                    let lane = (job.niss % lanes_count as u64) as usize;
                    lanes[lane].push_back(job);
                    queued += 1;
                }
                None => {
                    if in_flight.is_empty() {
                        while recording.next().await.is_some() {}
                        return;
                    }
                }
            },
            Some(()) = recording.next(), if !recording.is_empty() => {}
            Some((lane, job, result)) = in_flight.next(), if !in_flight.is_empty() => {
                busy[lane] = false;
                let now = now_ms();
                match result {
                    Ok(()) => {
                        circuit.success();
                        delivered_count.increment(1);
                        let change = delivered(&outbox, job, now);
                        if outbox.store.is_some() {
                            let outbox = outbox.clone();
                            recording.push(async move {
                                outbox.record(change).await;
                            });
                        }
                    }
                    Err(Failure::Attempt(error)) => {
                        circuit.failure(now);
                        if let Some(job) = failed(&outbox, &recipient, job, error, now).await {
                            lanes[lane].push_front(job);
                            queued += 1;
                        }
                    }
                    Err(Failure::NoLongerAdmitted(reason)) => {
                        if let Some(job) = withdrawn(&outbox, &recipient, job, reason, now).await {
                            lanes[lane].push_front(job);
                            queued += 1;
                        }
                    }
                }
            },
            _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() => {}
        }
    }
}

/// Why an attempt did not deliver.
enum Failure {
    /// The recipient did not acknowledge (or could not be reached): tried again later.
    Attempt(String),
    /// The integration check, run again, refused: nothing was sent, and nothing will be.
    NoLongerAdmitted(String),
}

async fn attempt(
    outbox: Arc<Outbox>,
    lane: usize,
    job: Job,
    seconds: metrics::Histogram,
) -> (usize, Job, Result<(), Failure>) {
    let started = std::time::Instant::now();
    let result = async {
        let policy = outbox.policy.load();
        let institution = policy
            .institution_by_id(&job.recipient)
            .ok_or_else(|| Failure::Attempt("the recipient is no longer in the policy".into()))?;
        if !job.checked || now_ms() - job.accepted_at_ms > CHECK_STANDS_MS {
            still_admitted(&policy, &outbox.directory, institution, &job.request)
                .map_err(Failure::NoLongerAdmitted)?;
        }
        outbox
            .deliverer
            .deliver(institution, job.request.clone(), job.attempts + 1)
            .await
            .map(|_| ())
            .map_err(Failure::Attempt)
    }
    .await;
    seconds.record(started.elapsed().as_secs_f64());
    (lane, job, result)
}

/// Sets an acknowledged delivery's outcome and wakes the waiting `Submit` (the caller counts
/// it); returns the state change for the store (the caller records it off the worker's loop).
fn delivered(outbox: &Outbox, mut job: Job, now: i64) -> Change {
    job.attempts += 1;
    update_outcome(&job, Decision::Delivered, None);
    outbox.pending.fetch_sub(1, Ordering::AcqRel);
    if let Some(notify) = job.notify.take() {
        let _ = notify.send(());
    }
    Change::Delivered {
        seq: job.seq,
        at_ms: now,
    }
}

/// Records a failed attempt; returns the job when it is to be tried again.
async fn failed(
    outbox: &Outbox,
    recipient: &str,
    mut job: Job,
    error: String,
    now: i64,
) -> Option<Job> {
    job.attempts += 1;
    job.checked = false;
    metrics::counter!(telemetry::DELIVERIES, "recipient" => recipient.to_owned(), "outcome" => "failed")
        .increment(1);
    // The waiting `Submit` is told once the outcome says what happened.
    let notify = job.notify.take();
    let tell = move || {
        if let Some(notify) = notify {
            let _ = notify.send(());
        }
    };
    let too_old = now - job.accepted_at_ms >= outbox.retry.max_age.as_millis() as i64;
    if job.attempts >= outbox.retry.max_attempts || too_old {
        let reason = format!(
            "{} after {} attempts: {error}",
            if too_old {
                "too old"
            } else {
                "too many attempts"
            },
            job.attempts
        );
        if give_up(outbox, recipient, &job, error.clone(), reason).await {
            tracing::warn!(message = "Delivery became a dead letter.", recipient, seq = job.seq, attempts = job.attempts, %error);
            tell();
            return None;
        }
    }
    metrics::counter!(telemetry::DELIVERY_RETRIES, "recipient" => recipient.to_owned())
        .increment(1);
    job.next_attempt_ms = now + outbox.backoff(job.attempts).as_millis() as i64;
    tracing::info!(message = "Delivery attempt failed; will retry.", recipient, seq = job.seq, attempts = job.attempts, %error);
    update_outcome(&job, Decision::DeliveryFailed, Some(error.clone()));
    tell();
    outbox
        .record(Change::Attempted {
            seq: job.seq,
            attempts: job.attempts,
            last_error: error,
            next_attempt_ms: job.next_attempt_ms,
        })
        .await;
    Some(job)
}

/// A delivery the integration check, run again, refuses: a dead letter saying why (an operator
/// may replay it once the recipient integrates the person again; the replay checks again).
/// Returns the job, to be checked again later, if the store could not record it.
async fn withdrawn(
    outbox: &Outbox,
    recipient: &str,
    mut job: Job,
    reason: String,
    now: i64,
) -> Option<Job> {
    if !give_up(outbox, recipient, &job, reason.clone(), reason.clone()).await {
        job.next_attempt_ms = now + outbox.backoff(job.attempts.max(1)).as_millis() as i64;
        return Some(job);
    }
    tracing::warn!(message = "Delivery withdrawn: the integration check, run again, refused it.", recipient, seq = job.seq, %reason);
    if let Some(notify) = job.notify.take() {
        let _ = notify.send(());
    }
    None
}

/// Makes `job` a dead letter, once the store has it as one (true): until then the delivery
/// stays queued and is tried again (it would otherwise be neither retried nor listed).
async fn give_up(
    outbox: &Outbox,
    recipient: &str,
    job: &Job,
    last_error: String,
    reason: String,
) -> bool {
    let recorded = outbox
        .record(Change::DeadLetter {
            seq: job.seq,
            attempts: job.attempts,
            last_error,
            reason: reason.clone(),
        })
        .await;
    if recorded {
        metrics::counter!(telemetry::DEAD_LETTERS, "recipient" => recipient.to_owned())
            .increment(1);
        update_outcome(job, Decision::DeadLetter, Some(reason));
        outbox.pending.fetch_sub(1, Ordering::AcqRel);
    }
    recorded
}

fn update_outcome(job: &Job, decision: Decision, error: Option<String>) {
    let Some(record) = &job.record else { return };
    let mut outcomes = record.outcomes.lock().expect("outcomes lock");
    if let Some(outcome) = outcomes
        .iter_mut()
        .find(|o| o.institution == job.recipient && o.delivery_seq == Some(job.seq))
    {
        outcome.decision = decision;
        outcome.attempts = job.attempts;
        if error.is_some() {
            outcome.last_error = error;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(threshold: u32, open_ms: u64) -> Circuit {
        Circuit {
            failures: 0,
            threshold,
            open_until_ms: 0,
            open_for: Duration::from_millis(open_ms),
            initial: Duration::from_millis(open_ms),
        }
    }

    /// (failures at `now`, then what `allows` says at given times, with nothing in flight).
    #[test]
    fn the_window_doubles_per_failed_probe_not_per_failure_in_flight() {
        let now = 1_000_000;
        let mut c = circuit(5, 5_000);
        for _ in 0..4 {
            c.failure(now);
        }
        assert!(c.allows(now, 3), "under the threshold, still closed");
        // Ten attempts in flight fail together: the circuit opens once, for 5 s.
        for _ in 0..10 {
            c.failure(now);
        }
        assert_eq!(c.open_until_ms, now + 5_000);
        assert!(!c.allows(now + 4_999, 0));
        assert!(!c.allows(now + 5_000, 1), "one probe at a time");
        assert!(c.allows(now + 5_000, 0), "probed after the window");
        // The probe fails: the next window is twice as long, and capped at a minute.
        c.failure(now + 5_000);
        assert_eq!(c.open_until_ms, now + 5_000 + 10_000);
        let mut at = now + 15_000;
        for _ in 0..10 {
            c.failure(at);
            at = c.open_until_ms;
        }
        assert_eq!(c.open_for, Duration::from_secs(60));
        // A success closes it and starts again from the first window.
        c.success();
        assert!(c.allows(at, 50));
        for _ in 0..5 {
            c.failure(at);
        }
        assert_eq!(c.open_until_ms, at + 5_000);
    }

    /// (failures, attempts in flight, a head due at, the loop's timer): the timer is never set
    /// for a time at which `allows` would still refuse, and not at all while the probe is out.
    #[test]
    fn the_loop_wakes_when_a_head_may_start() {
        let open_until = 1_005_000;
        for (failures, in_flight, due, wake) in [
            (0, 0, 1_000_000, Some(1_000_000)),
            (4, 7, 1_000_000, Some(1_000_000)),
            (5, 0, 1_000_000, Some(open_until)),
            (5, 0, 1_009_000, Some(1_009_000)),
            (5, 1, 1_000_000, None),
            (9, 3, 1_009_000, None),
        ] {
            let mut c = circuit(5, 5_000);
            c.failures = failures;
            c.open_until_ms = open_until;
            assert_eq!(
                c.wake(due, in_flight),
                wake,
                "{failures} failures, {in_flight} in flight"
            );
            if let Some(at) = wake {
                assert!(c.allows(at, in_flight), "woken at {at} for nothing");
            }
        }
    }
}
