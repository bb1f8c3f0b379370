//! What one caller may ask of the hub (`limits` in `hub.toml`): fan-out, a per-institution
//! rate, calls open per connection, journal entries per query and integrations per person. The message size is enforced by the server's codec.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use dashmap::DashMap;

use bcss_domain::InstitutionIndex;
use bcss_policy::Institution;
use bcss_policy::settings::LimitSettings;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::InputError;

/// The limits the pipeline enforces, built once from the settings.
#[derive(Debug)]
pub struct Limits {
    pub max_fan_out: usize,
    /// `limits.journal_entries`: most entries one journal query may match.
    pub journal_entries: usize,
    /// `limits.integrations_per_person`: most integrations one institution holds for a person.
    pub integrations_per_person: usize,
    rate: Option<Rate>,
    streams: Arc<OpenStreams>,
}

/// Calls open per connection (a connection is its peer address).
#[derive(Debug)]
struct OpenStreams {
    limit: usize,
    open: DashMap<SocketAddr, usize>,
}

/// One open call; closes it when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<OpenStreams>,
    peer: Option<SocketAddr>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(peer) = self.peer {
            self.streams.open.remove_if_mut(&peer, |_, open| {
                *open -= 1;
                *open == 0
            });
        }
    }
}

#[derive(Debug)]
struct Rate {
    limiter: DefaultKeyedRateLimiter<InstitutionIndex>,
    per_second: u32,
    burst: u32,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Limits {
        let rate = NonZeroU32::new(settings.rate_per_second).map(|per_second| {
            let burst = NonZeroU32::new(settings.rate_burst).unwrap_or(per_second);
            Rate {
                limiter: RateLimiter::dashmap(Quota::per_second(per_second).allow_burst(burst)),
                per_second: per_second.get(),
                burst: burst.get(),
            }
        });
        Limits {
            max_fan_out: settings.max_fan_out,
            journal_entries: settings.journal_entries,
            integrations_per_person: settings.integrations_per_person,
            rate,
            streams: Arc::new(OpenStreams {
                limit: settings.max_concurrent_streams as usize,
                open: DashMap::new(),
            }),
        }
    }

    /// No limit at all (tests of other things).
    pub fn unlimited() -> Limits {
        Limits {
            max_fan_out: usize::MAX,
            journal_entries: usize::MAX,
            integrations_per_person: usize::MAX,
            rate: None,
            streams: Arc::new(OpenStreams {
                limit: usize::MAX,
                open: DashMap::new(),
            }),
        }
    }

    /// Takes one message from `sender`'s allowance, or says how long to wait.
    pub fn admit(&self, sender: &Institution) -> Result<(), InputError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        rate.limiter.check_key(&sender.index).map_err(|not_until| {
            let wait = not_until.wait_time_from(rate.limiter.clock().now());
            InputError::RateLimited {
                institution: sender.id.to_string(),
                rate: rate.per_second,
                burst: rate.burst,
                retry_after_ms: wait.as_millis().max(1) as u64,
            }
        })
    }

    /// Refuses a message with more candidate recipients than allowed.
    pub fn check_fan_out(&self, candidates: usize) -> Result<(), InputError> {
        if candidates > self.max_fan_out {
            return Err(InputError::FanOutLimit {
                limit: self.max_fan_out,
            });
        }
        Ok(())
    }

    /// Opens one call on the connection from `peer`, or refuses it when the connection already
    /// has `max_concurrent_streams` open. (HTTP/2 itself stops a client at twice that.)
    pub fn open_stream(&self, peer: Option<SocketAddr>) -> Result<StreamSlot, InputError> {
        let streams = &self.streams;
        if let Some(peer) = peer {
            let mut open = streams.open.entry(peer).or_insert(0);
            if *open >= streams.limit {
                return Err(InputError::TooManyStreams {
                    limit: streams.limit,
                });
            }
            *open += 1;
        }
        Ok(StreamSlot {
            streams: streams.clone(),
            peer,
        })
    }
}
