//! Calendar periods with inclusive bounds and an optional open end, and their overlap.

use time::Date;

/// A period from `start` to `end`, both days included; `end: None` means still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    pub start: Date,
    pub end: Option<Date>,
}

/// Why two dates do not make a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("the period ends before it starts")]
    EndsBeforeStart,
}

impl Period {
    /// A period, refusing one that ends before it starts.
    pub fn new(start: Date, end: Option<Date>) -> Result<Period, PeriodError> {
        match end {
            Some(end) if end < start => Err(PeriodError::EndsBeforeStart),
            _ => Ok(Period { start, end }),
        }
    }

    /// True when the two periods share at least one day.
    pub fn overlaps(&self, other: &Period) -> bool {
        let self_ends_before = self.end.is_some_and(|end| end < other.start);
        let other_ends_before = other.end.is_some_and(|end| end < self.start);
        !self_ends_before && !other_ends_before
    }

    /// True when `day` falls within the period.
    pub fn contains(&self, day: Date) -> bool {
        self.start <= day && self.end.is_none_or(|end| day <= end)
    }
}

/// A date as the contracts and files write it: ISO 8601, `YYYY-MM-DD`.
pub fn iso_date(day: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn p(start: Date, end: Option<Date>) -> Period {
        Period::new(start, end).unwrap()
    }

    #[test]
    fn overlap_table() {
        let cases = [
            // (a, b, overlaps)
            (
                p(date!(2024 - 01 - 01), Some(date!(2024 - 03 - 31))),
                p(date!(2024 - 03 - 31), None),
                true,
            ),
            (
                p(date!(2024 - 01 - 01), Some(date!(2024 - 03 - 31))),
                p(date!(2024 - 04 - 01), None),
                false,
            ),
            (
                p(date!(2024 - 01 - 01), None),
                p(date!(1990 - 01 - 01), Some(date!(2023 - 12 - 31))),
                false,
            ),
            (
                p(date!(2024 - 01 - 01), None),
                p(date!(1990 - 01 - 01), Some(date!(2024 - 01 - 01))),
                true,
            ),
            (
                p(date!(2024 - 01 - 01), None),
                p(date!(2030 - 01 - 01), None),
                true,
            ),
            (
                p(date!(2024 - 02 - 10), Some(date!(2024 - 02 - 10))),
                p(date!(2024 - 01 - 01), Some(date!(2024 - 12 - 31))),
                true,
            ),
            (
                p(date!(2024 - 01 - 01), Some(date!(2024 - 01 - 31))),
                p(date!(2024 - 02 - 01), Some(date!(2024 - 02 - 28))),
                false,
            ),
        ];
        for (a, b, expected) in cases {
            assert_eq!(a.overlaps(&b), expected, "{a:?} vs {b:?}");
            assert_eq!(
                b.overlaps(&a),
                expected,
                "overlap is symmetric: {b:?} vs {a:?}"
            );
        }
    }

    #[test]
    fn a_period_cannot_end_before_it_starts() {
        assert_eq!(
            Period::new(date!(2024 - 02 - 01), Some(date!(2024 - 01 - 31))),
            Err(PeriodError::EndsBeforeStart)
        );
        assert!(Period::new(date!(2024 - 02 - 01), Some(date!(2024 - 02 - 01))).is_ok());
    }

    #[test]
    fn iso_dates_are_zero_padded() {
        assert_eq!(iso_date(date!(2025 - 01 - 05)), "2025-01-05");
    }

    #[test]
    fn contains_is_inclusive() {
        let q = p(date!(2024 - 01 - 01), Some(date!(2024 - 03 - 31)));
        assert!(q.contains(date!(2024 - 01 - 01)));
        assert!(q.contains(date!(2024 - 03 - 31)));
        assert!(!q.contains(date!(2024 - 04 - 01)));
    }
}
