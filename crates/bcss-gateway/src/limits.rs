//! What one caller may ask of the hub: fan-out and a per-institution rate (`limits` in
//! `hub.toml`). The message size and the streams per connection are enforced by the server.

use std::num::NonZeroU32;

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
    rate: Option<Rate>,
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
            rate,
        }
    }

    /// No limit at all (tests of other things).
    pub fn unlimited() -> Limits {
        Limits {
            max_fan_out: usize::MAX,
            rate: None,
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
}
