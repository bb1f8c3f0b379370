//! The hub server: the gRPC services, the submission pipeline, delivery, TLS identities.
//!
//! # Layout
//!
//! - [`pipeline`]: [`Hub`] and the data path: validate → route → check → filter → record → deliver.
//! - [`service`]: the `Gateway` and `Directory` gRPC services; authentication and conversion.
//! - [`calendar`]: the Belgian calendar day deliberations are judged on (Brussels, not UTC).
//! - [`consult`]: consultations (`Gateway.Consult`): decide, journal, ask the source
//!   (`Institution.Answer`), filter its answer, reply.
//! - [`identity`]: the calling institution or operator, from its client certificate.
//! - [`error`]: bad input and its gRPC status codes.
//! - [`journal`]: the `Journal` service (queries, contact files, audit, sample, verify) and
//!   the retention task (journal entries past their retention, tickets past
//!   `storage.ticket_days`).
//! - [`ledger`]: tickets, outcomes, relay chains, message ids.
//! - [`limits`]: fan-out and the per-institution rate.
//! - [`privacy`]: the keyed hash that stands for a person in logs.
//! - [`outbox`]: durable delivery: per-recipient workers, retries, circuit, dead letters.
//! - [`delivery`]: calls to institutions' `Deliver`, over pooled, verified TLS connections.
//! - [`pki`]: the development CA and certificates.
//! - [`server`]: `run(hub, listener, options, shutdown)`.
//! - [`snapshot`]: the directory's snapshots in the data folder (shutdown, periodic, start).
//! - [`startup`]: from `hub.toml` to a running hub.
//! - [`telemetry`]: the Prometheus metrics and their exporter.

pub mod calendar;
pub mod consult;
pub mod delivery;
pub mod error;
pub mod identity;
pub mod journal;
pub mod ledger;
pub mod limits;
pub mod outbox;
pub mod pipeline;
pub mod pki;
pub mod privacy;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod startup;
pub mod telemetry;

pub use pipeline::Hub;
