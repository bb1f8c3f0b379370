//! The Belgian calendar day: deliberations are valid from and until days in Brussels.
//!
//! A deliberation "valid until 31 December" stops at midnight in Brussels, which is 23:00 or
//! 22:00 UTC: judged on the UTC date, the hub would let its last hour or two through and refuse
//! the first ones of a deliberation starting the next day. The zone's rules come from the
//! time-zone database bundled into the binary (so the hub does not depend on the host's
//! tzdata).

use std::sync::LazyLock;

use jiff::tz::TimeZone;
use time::{Date, Month, OffsetDateTime};

static BRUSSELS: LazyLock<TimeZone> = LazyLock::new(|| {
    TimeZone::get("Europe/Brussels").expect("the bundled time-zone database has Europe/Brussels")
});

/// Today in Brussels.
pub fn belgian_today() -> Date {
    belgian_date(OffsetDateTime::now_utc())
}

/// The Brussels calendar day of an instant.
pub fn belgian_date(at: OffsetDateTime) -> Date {
    let seconds = at.unix_timestamp();
    let day = jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_zoned(BRUSSELS.clone()).date())
        .ok()
        .and_then(|d| {
            let month = Month::try_from(u8::try_from(d.month()).ok()?).ok()?;
            Date::from_calendar_date(i32::from(d.year()), month, u8::try_from(d.day()).ok()?).ok()
        });
    // Outside jiff's range (years beyond ±9999): the UTC day, which no deliberation reaches.
    day.unwrap_or_else(|| at.date())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    /// (instant in UTC, its day in Brussels): winter (UTC+1), summer (UTC+2), the switches.
    #[test]
    fn days_turn_at_midnight_in_brussels() {
        let cases = [
            (datetime!(2026-12-31 22:59:59 UTC), date!(2026 - 12 - 31)),
            (datetime!(2026-12-31 23:00:00 UTC), date!(2027 - 01 - 01)),
            (datetime!(2026-06-30 21:59:59 UTC), date!(2026 - 06 - 30)),
            (datetime!(2026-06-30 22:00:00 UTC), date!(2026 - 07 - 01)),
            (datetime!(2026-07-01 12:00:00 UTC), date!(2026 - 07 - 01)),
            // Summer time starts on 29 March 2026 at 01:00 UTC; ends on 25 October at 01:00 UTC.
            (datetime!(2026-03-28 22:59:59 UTC), date!(2026 - 03 - 28)),
            (datetime!(2026-03-28 23:00:00 UTC), date!(2026 - 03 - 29)),
            (datetime!(2026-10-24 21:59:59 UTC), date!(2026 - 10 - 24)),
            (datetime!(2026-10-24 22:00:00 UTC), date!(2026 - 10 - 25)),
            (datetime!(2026-10-25 22:59:59 UTC), date!(2026 - 10 - 25)),
            (datetime!(2026-10-25 23:00:00 UTC), date!(2026 - 10 - 26)),
        ];
        for (at, day) in cases {
            assert_eq!(belgian_date(at), day, "{at}");
        }
    }
}
