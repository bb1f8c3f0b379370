//! `hub.toml`: where the hub listens, where its files are, its TLS material and its limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ConfigError, Problem, read_toml};

/// The hub's settings, with every path resolved against the folder of `hub.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub files: FileSettings,
    pub tls: TlsSettings,
    pub delivery: DeliverySettings,
    pub limits: LimitSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    #[serde(default)]
    pub logs: LogSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where `/metrics` is served (plain HTTP, for the scraper on the operators' network);
    /// absent: no endpoint.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// On SIGTERM: how long calls in flight may take to finish before the hub exits anyway.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// On SIGTERM, first: how long health answers NOT_SERVING while calls are still taken, so
    /// that a load balancer polling it moves traffic away before the listener closes (part of
    /// `shutdown_grace_ms`).
    #[serde(default = "default_drain_notice_ms")]
    pub drain_notice_ms: u64,
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}

fn default_drain_notice_ms() -> u64 {
    1_000
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub institutions: PathBuf,
    pub quality_codes: PathBuf,
    pub deliberations: PathBuf,
    pub directory: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub pki: PathBuf,
    pub hub_name: String,
}

/// How deliveries are made, retried and bounded.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// How long one Deliver call may take before it counts as failed.
    pub timeout_ms: u64,
    /// How long `Submit` waits for the first delivery attempts before answering (0: answer as
    /// soon as the message is recorded).
    #[serde(default = "default_reply_wait_ms")]
    pub reply_wait_ms: u64,
    /// Attempts before a delivery becomes a dead letter.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Age (since acceptance) at which a delivery still failing becomes a dead letter.
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u64,
    /// Wait before the second attempt; doubles with every attempt (with jitter) up to
    /// `backoff_max_ms`.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Deliveries to one recipient in flight at once (each about different persons).
    #[serde(default = "default_lanes")]
    pub lanes_per_recipient: usize,
    /// Failures in a row after which a recipient is left alone for `circuit_open_ms`.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    #[serde(default = "default_circuit_open_ms")]
    pub circuit_open_ms: u64,
    /// Deliveries accepted and not yet delivered, at most; beyond, `Submit` is refused.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// How long the hub waits for a source institution's `Answer` to a consultation before
    /// answering the consulting institution `DEADLINE_EXCEEDED` (nothing partial is returned).
    #[serde(default = "default_consult_timeout_ms")]
    pub consult_timeout_ms: u64,
    /// HTTP/2 connections kept to each institution endpoint; deliveries to it are spread over
    /// them in turn (one HTTP/2 connection is served by one task at each end and serialises
    /// under load).
    #[serde(default = "default_connections_per_recipient")]
    pub connections_per_recipient: usize,
    /// `true` sends deliveries over one long-lived `Institution.DeliverStream` call per
    /// connection (an institution that answers UNIMPLEMENTED gets `Deliver` calls instead);
    /// `false`, one `Deliver` call per delivery.
    #[serde(default = "default_delivery_stream")]
    pub stream: bool,
    /// `false` delivers over plain HTTP/2 without TLS: for benchmarks against plain baselines
    /// only, never for service (institutions could not tell the hub from anyone else).
    #[serde(default = "default_delivery_tls")]
    pub tls: bool,
}

fn default_connections_per_recipient() -> usize {
    4
}
fn default_delivery_tls() -> bool {
    true
}
fn default_delivery_stream() -> bool {
    true
}

fn default_reply_wait_ms() -> u64 {
    2_000
}
fn default_max_attempts() -> u32 {
    25
}
fn default_max_age_s() -> u64 {
    48 * 3600
}
fn default_backoff_initial_ms() -> u64 {
    200
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_lanes() -> usize {
    64
}
fn default_circuit_failures() -> u32 {
    5
}
fn default_circuit_open_ms() -> u64 {
    5_000
}
fn default_max_pending() -> usize {
    200_000
}
fn default_consult_timeout_ms() -> u64 {
    3_000
}

impl Default for DeliverySettings {
    fn default() -> DeliverySettings {
        DeliverySettings {
            timeout_ms: 5_000,
            reply_wait_ms: default_reply_wait_ms(),
            max_attempts: default_max_attempts(),
            max_age_s: default_max_age_s(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            lanes_per_recipient: default_lanes(),
            circuit_failures: default_circuit_failures(),
            circuit_open_ms: default_circuit_open_ms(),
            max_pending: default_max_pending(),
            consult_timeout_ms: default_consult_timeout_ms(),
            connections_per_recipient: default_connections_per_recipient(),
            stream: default_delivery_stream(),
            tls: default_delivery_tls(),
        }
    }
}

/// Where the hub keeps what it accepted.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// The data folder (the outbox and tickets, in `hub.redb`).
    pub data: PathBuf,
    /// `false` keeps deliveries in memory only: for benchmarks of the rest of the path, never
    /// for service (an accepted message would be lost with the process).
    #[serde(default = "default_durable")]
    pub durable: bool,
    /// `false` keeps no journal: only to measure what the journal costs, never for service.
    #[serde(default = "default_durable")]
    pub journal: bool,
    /// Seconds between snapshots of the persons directory (`directory.snapshot` in the data
    /// folder) while it changes; one is always written on shutdown, and loaded at start instead
    /// of `files.directory` when present. 0: on shutdown only.
    #[serde(default = "default_snapshot_interval")]
    pub directory_snapshot_s: u64,
    /// Days a ticket is kept after it was accepted, for `Track` and relays and to answer a
    /// resubmitted message id with it; then it leaves the ledger and the store (the journal
    /// keeps the exchange for its deliberation's retention). At least `delivery.max_age_s`, so
    /// no ticket goes while one of its deliveries is still tried.
    #[serde(default = "default_ticket_days")]
    pub ticket_days: u32,
    /// MiB of memory redb may keep pages of `hub.redb` in; unset, the store's own choice
    /// (`bcss_store::DEFAULT_CACHE_BYTES`, 64 MiB).
    #[serde(default)]
    pub cache_mib: Option<u32>,
}

/// `delivery.max_age_s`'s two days and one more. With a store, memory holds only the tickets
/// with deliveries left and those settled in the last minutes; without one (benchmarks), every
/// ticket of those days, about 0.7 kB each (see ARCHITECTURE.md, "Not yet there").
fn default_ticket_days() -> u32 {
    3
}

fn default_snapshot_interval() -> u64 {
    60
}

fn default_durable() -> bool {
    true
}

impl Default for StorageSettings {
    fn default() -> StorageSettings {
        StorageSettings {
            data: PathBuf::from("../var/data"),
            durable: true,
            journal: true,
            directory_snapshot_s: default_snapshot_interval(),
            ticket_days: default_ticket_days(),
            cache_mib: None,
        }
    }
}

/// What one caller may ask of the hub. A breach is answered `RESOURCE_EXHAUSTED` naming the
/// limit, and changes nothing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest encoded request the hub accepts, on any of its services (an envelope, a
    /// consultation, a journal query…); a larger one is answered `RESOURCE_EXHAUSTED`.
    pub max_message_bytes: usize,
    /// Most candidate recipients one message may have (a broadcast to every institution
    /// integrated for the person).
    #[serde(default = "default_max_fan_out")]
    pub max_fan_out: usize,
    /// Calls one connection may have open at once; one more is answered `RESOURCE_EXHAUSTED`
    /// (HTTP/2 itself makes a client wait only at twice this, `server::run`).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Envelopes of one `SubmitStream` handled at once; the hub reads the next as earlier ones
    /// finish, and the replies keep the envelopes' order.
    #[serde(default = "default_stream_in_flight")]
    pub stream_in_flight: usize,
    /// Messages per second one institution may submit, explain or consult, over all its
    /// connections
    /// (0: no rate limit, for load tests).
    #[serde(default = "default_rate_per_second")]
    pub rate_per_second: u32,
    /// How many messages above the steady rate an institution may send in a burst.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Most journal entries one query may match (an institution's exchanges in a time range;
    /// an auditor's range for the a-posteriori audit or the sample): one more is answered
    /// `RESOURCE_EXHAUSTED` asking for a narrower range, before anything larger is read into
    /// memory or sent.
    #[serde(default = "default_journal_entries")]
    pub journal_entries: usize,
    /// Most integrations one institution may hold for one person (`Directory.Integrate`): one
    /// more is refused, as every check about the person walks the person's rows. Updating the
    /// end of a held one is always allowed.
    #[serde(default = "default_integrations_per_person")]
    pub integrations_per_person: usize,
}

fn default_max_fan_out() -> usize {
    64
}
fn default_max_concurrent_streams() -> u32 {
    256
}
fn default_stream_in_flight() -> usize {
    64
}
fn default_rate_per_second() -> u32 {
    5_000
}
fn default_rate_burst() -> u32 {
    10_000
}
fn default_journal_entries() -> usize {
    10_000
}
fn default_integrations_per_person() -> usize {
    32
}

/// Logs: a person is referred to only by a keyed hash of the NISS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// The secret key of the hash (32 random bytes, hex); created on first start when missing.
    /// Whoever holds it can tell which NISS a log line is about; nobody else can.
    #[serde(default = "default_person_key")]
    pub person_key: PathBuf,
}

fn default_person_key() -> PathBuf {
    PathBuf::from("../var/person-log.key")
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            person_key: default_person_key(),
        }
    }
}

impl Settings {
    /// Reads `hub.toml` and resolves its relative paths against its folder.
    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let mut settings: Settings = read_toml(file)?;
        let base = file.parent().unwrap_or(Path::new("."));
        for path in [
            &mut settings.files.institutions,
            &mut settings.files.quality_codes,
            &mut settings.files.deliberations,
            &mut settings.files.directory,
            &mut settings.tls.pki,
            &mut settings.logs.person_key,
            &mut settings.storage.data,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        settings.check(file)?;
        Ok(settings)
    }

    /// The counts and durations that 0 would turn into a hub that does nothing: (setting, its
    /// value, what 0 would do).
    fn must_not_be_zero(&self) -> [(&'static str, u64, &'static str); 14] {
        let (d, l) = (&self.delivery, &self.limits);
        [
            (
                "delivery.timeout_ms",
                d.timeout_ms,
                "every delivery would time out",
            ),
            (
                "delivery.max_age_s",
                d.max_age_s,
                "every delivery that fails once would be a dead letter",
            ),
            (
                "delivery.max_attempts",
                u64::from(d.max_attempts),
                "nothing would be tried",
            ),
            (
                "delivery.lanes_per_recipient",
                d.lanes_per_recipient as u64,
                "nothing would be delivered",
            ),
            (
                "delivery.circuit_failures",
                u64::from(d.circuit_failures),
                "no failure could open the circuit",
            ),
            (
                "delivery.max_pending",
                d.max_pending as u64,
                "every message would be refused",
            ),
            (
                "delivery.consult_timeout_ms",
                d.consult_timeout_ms,
                "every consultation would time out",
            ),
            (
                "delivery.connections_per_recipient",
                d.connections_per_recipient as u64,
                "nothing would be delivered",
            ),
            (
                "limits.max_message_bytes",
                l.max_message_bytes as u64,
                "every message would be refused",
            ),
            (
                "limits.max_fan_out",
                l.max_fan_out as u64,
                "every message would be refused",
            ),
            (
                "limits.max_concurrent_streams",
                u64::from(l.max_concurrent_streams),
                "every call would be refused",
            ),
            (
                "limits.stream_in_flight",
                l.stream_in_flight as u64,
                "no SubmitStream could go on",
            ),
            (
                "limits.journal_entries",
                l.journal_entries as u64,
                "every journal query would be refused",
            ),
            (
                "limits.integrations_per_person",
                l.integrations_per_person as u64,
                "every integration would be refused",
            ),
        ]
    }

    /// What the types cannot say: counts and durations that must not be zero, and what no
    /// single setting can say on its own.
    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let zeros: Vec<Problem> = self
            .must_not_be_zero()
            .iter()
            .filter(|(_, value, _)| *value == 0)
            .map(|(entry, _, effect)| Problem {
                file: file.to_owned(),
                entry: (*entry).into(),
                problem: format!("0 is not allowed: {effect}; give at least 1"),
            })
            .collect();
        if !zeros.is_empty() {
            return Err(ConfigError::Invalid(zeros));
        }
        if self.ticket_retention().as_secs() < self.delivery.max_age_s {
            return Err(ConfigError::Invalid(vec![Problem {
                file: file.to_owned(),
                entry: "storage.ticket_days".into(),
                problem: format!(
                    "{} days is less than delivery.max_age_s ({} s): a ticket would go while its \
                     deliveries are still tried; keep tickets at least {} days",
                    self.storage.ticket_days,
                    self.delivery.max_age_s,
                    self.delivery.max_age_s.div_ceil(86_400)
                ),
            }]));
        }
        if self.server.drain_notice_ms >= self.server.shutdown_grace_ms {
            return Err(ConfigError::Invalid(vec![Problem {
                file: file.to_owned(),
                entry: "server.drain_notice_ms".into(),
                problem: format!(
                    "{} ms is not less than server.shutdown_grace_ms ({} ms): the notice is the \
                     start of the grace period, and calls in flight would get none of it",
                    self.server.drain_notice_ms, self.server.shutdown_grace_ms
                ),
            }]));
        }
        Ok(())
    }

    /// How long a ticket is kept after it was accepted (`storage.ticket_days`).
    pub fn ticket_retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.storage.ticket_days) * 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_kept_at_least_as_long_as_deliveries_are_tried() {
        // (ticket_days, delivery.max_age_s, accepted)
        let cases = [
            (30, 172_800, true),
            (2, 172_800, true),
            (1, 172_800, false),
            (0, 1, false),
        ];
        for (days, max_age_s, accepted) in cases {
            let checked = shipped_checked(|settings| {
                settings.storage.ticket_days = days;
                settings.delivery.max_age_s = max_age_s;
            });
            assert_eq!(
                checked.is_ok(),
                accepted,
                "{days} days, max_age_s {max_age_s}"
            );
            if let Err(error) = checked {
                let text = error.to_string();
                assert!(text.contains("storage.ticket_days"), "{text}");
                assert!(
                    text.contains("keep tickets at least 2 days") || days == 0,
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn counts_and_durations_that_would_stop_the_hub_are_refused_at_zero() {
        assert!(shipped_checked(|_| {}).is_ok(), "the shipped settings pass");
        let shipped: Settings = toml::from_str(SHIPPED).expect("config/hub.toml");
        // Each setting of the list set to 0 in the file's text, as an operator would.
        for (entry, _, _) in shipped.must_not_be_zero() {
            let (section, key) = entry.split_once('.').expect("section.key");
            let mut table: toml::Table = SHIPPED.parse().expect("config/hub.toml");
            let section = table[section].as_table_mut().expect("a section");
            section.insert(key.to_owned(), toml::Value::Integer(0));
            let settings: Settings = table.try_into().expect(entry);
            let error = settings
                .check(Path::new("hub.toml"))
                .expect_err(entry)
                .to_string();
            assert!(
                error.contains(entry) && error.contains("0 is not allowed"),
                "{entry}: {error}"
            );
        }
        // The rate's 0 means no limit.
        assert!(shipped_checked(|s| s.limits.rate_per_second = 0).is_ok());
    }

    #[test]
    fn the_drain_notice_leaves_part_of_the_grace_period() {
        // (drain_notice_ms, shutdown_grace_ms, accepted)
        let cases = [
            (1_000, 10_000, true),
            (0, 10_000, true),
            (9_999, 10_000, true),
            (10_000, 10_000, false),
            (20_000, 10_000, false),
        ];
        for (notice, grace, accepted) in cases {
            let checked = shipped_checked(|settings| {
                settings.server.drain_notice_ms = notice;
                settings.server.shutdown_grace_ms = grace;
            });
            assert_eq!(checked.is_ok(), accepted, "notice {notice}, grace {grace}");
            if let Err(error) = checked {
                assert!(
                    error.to_string().contains("server.drain_notice_ms"),
                    "{error}"
                );
            }
        }
    }

    /// The shipped configuration.
    const SHIPPED: &str = include_str!("../../../config/hub.toml");

    /// The shipped configuration, changed by `adjust`, checked as if read from `hub.toml`.
    fn shipped_checked(adjust: impl FnOnce(&mut Settings)) -> Result<(), ConfigError> {
        let mut settings: Settings = toml::from_str(SHIPPED).expect("config/hub.toml");
        adjust(&mut settings);
        settings.check(Path::new("hub.toml"))
    }
}
