//! One integration in one `u64`, as the base table's slots hold them.
//!
//! ```text
//! bits  0-11  institution index (0-4095)
//! bits 12-21  quality code (0-1023)
//! bits 22-38  start: (year - 1900) << 9 | ordinal day (1-366)
//! bits 39-55  end, the same way; 0 = open (no date has ordinal 0)
//! bits 56-63  zero
//! ```
//!
//! Years 1900-2155 fit. A row outside these ranges has no encoding ([`encode`] answers `None`)
//! and its person's rows live elsewhere (the arena or the spill map). Decoding is a few shifts
//! and `Date::from_ordinal_date`: no table.

use bcss_domain::{InstitutionIndex, Integration, Period, QualityCode};
use time::Date;

const INSTITUTION_BITS: u32 = 12;
const QUALITY_BITS: u32 = 10;
const DAY_BITS: u32 = 17;
const START_SHIFT: u32 = INSTITUTION_BITS + QUALITY_BITS;
const END_SHIFT: u32 = START_SHIFT + DAY_BITS;
const DAY_MASK: u64 = (1 << DAY_BITS) - 1;
const FIRST_YEAR: i32 = 1900;

/// The row as one word, or `None` when a field is outside the encodable range.
pub(crate) fn encode(row: &Integration) -> Option<u64> {
    let institution = u64::from(row.institution.0);
    let quality = u64::from(row.quality.0);
    if institution >> INSTITUTION_BITS != 0 || quality >> QUALITY_BITS != 0 {
        return None;
    }
    let start = day(row.period.start)?;
    let end = match row.period.end {
        None => 0,
        Some(end) => day(end)?,
    };
    Some(institution | quality << INSTITUTION_BITS | start << START_SHIFT | end << END_SHIFT)
}

/// The row [`encode`] made `word` from.
#[inline]
pub(crate) fn decode(word: u64) -> Integration {
    let end = (word >> END_SHIFT) & DAY_MASK;
    Integration {
        institution: InstitutionIndex((word & ((1 << INSTITUTION_BITS) - 1)) as u16),
        quality: QualityCode(((word >> INSTITUTION_BITS) & ((1 << QUALITY_BITS) - 1)) as u16),
        period: Period {
            start: date((word >> START_SHIFT) & DAY_MASK),
            end: (end != 0).then(|| date(end)),
        },
    }
}

/// The institution index of the row [`encode`] made `word` from.
#[inline]
pub(crate) fn institution(word: u64) -> u16 {
    (word & ((1 << INSTITUTION_BITS) - 1)) as u16
}

fn day(date: Date) -> Option<u64> {
    let year = u64::try_from(date.year() - FIRST_YEAR).ok()?;
    (year < 256).then(|| year << 9 | u64::from(date.ordinal()))
}

#[inline]
fn date(bits: u64) -> Date {
    YEARS[(bits >> 9) as usize & 0xff]
        .replace_ordinal((bits & 0x1ff) as u16)
        .expect("only encode writes rows, from valid dates")
}

/// The first day of each encodable year (1 KiB): a day is its year's with the ordinal
/// replaced, which saves computing whether the year is a leap year.
const YEARS: [Date; 256] = {
    let mut years = [Date::MIN; 256];
    let mut i = 0;
    while i < 256 {
        years[i] = match Date::from_ordinal_date(FIRST_YEAR + i as i32, 1) {
            Ok(day) => day,
            Err(_) => panic!("1900-2155 are valid years"),
        };
        i += 1;
    }
    years
};

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn row(institution: u16, quality: u16, start: Date, end: Option<Date>) -> Integration {
        Integration {
            institution: InstitutionIndex(institution),
            quality: QualityCode(quality),
            period: Period { start, end },
        }
    }

    #[test]
    fn every_field_survives_at_the_edges_of_its_range() {
        let rows = [
            row(0, 0, date!(1900 - 01 - 01), None),
            row(
                4095,
                1023,
                date!(2155 - 12 - 31),
                Some(date!(2155 - 12 - 31)),
            ),
            row(27, 902, date!(2024 - 12 - 31), Some(date!(2025 - 01 - 01))),
            row(3, 0, date!(2000 - 02 - 29), Some(date!(2096 - 12 - 31))),
            row(1, 1, date!(1999 - 03 - 01), Some(date!(1900 - 01 - 01))),
        ];
        for original in rows {
            let word = encode(&original).expect("encodable");
            assert_eq!(word >> 56, 0);
            assert_eq!(decode(word), original);
        }
    }

    #[test]
    fn what_does_not_fit_has_no_encoding() {
        let day = date!(2024 - 01 - 01);
        let rows = [
            row(4096, 0, day, None),
            row(0, 1024, day, None),
            row(0, 0, date!(1899 - 12 - 31), None),
            row(0, 0, date!(2156 - 01 - 01), None),
            row(0, 0, day, Some(date!(2156 - 01 - 01))),
            row(0, 0, date!(1850 - 06 - 01), Some(day)),
        ];
        for original in rows {
            assert_eq!(encode(&original), None, "{original:?}");
        }
    }

    #[test]
    fn distinct_rows_have_distinct_words() {
        let base = row(5, 7, date!(2020 - 03 - 01), Some(date!(2021 - 03 - 01)));
        let changed = [
            row(6, 7, date!(2020 - 03 - 01), Some(date!(2021 - 03 - 01))),
            row(5, 8, date!(2020 - 03 - 01), Some(date!(2021 - 03 - 01))),
            row(5, 7, date!(2020 - 03 - 02), Some(date!(2021 - 03 - 01))),
            row(5, 7, date!(2020 - 03 - 01), Some(date!(2021 - 03 - 02))),
            row(5, 7, date!(2020 - 03 - 01), None),
        ];
        let word = encode(&base).unwrap();
        for other in changed {
            assert_ne!(encode(&other).unwrap(), word, "{other:?}");
        }
    }
}
