//! The NISS (INSZ): `YYMMDDSSSCC`, eleven digits with a modulo-97 check number.
//!
//! The check number is `97 - (first nine digits mod 97)`; for people born in 2000 or later the
//! nine digits are prefixed with a `2` first. BIS numbers (people not in the national register)
//! add 20 (sex unknown) or 40 (sex known) to the month. A month or day of `00` means the birth
//! date is not (fully) known, which the national register allows. The serial `SSS` runs from
//! 001 to 997 for men (odd) and 002 to 998 for women (even): 000 and 999 are never given.
//!
//! A [`Niss`] is personal data: its `Debug` output is redacted, and nothing in this crate prints
//! its digits except [`Niss::digits`], which callers use only to put it on the wire.

use std::fmt;

/// A validated NISS, stored as the number it spells (fits in a `u64`, used as directory key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Niss(u64);

/// Which register a NISS belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NissKind {
    /// National register number, born before 2000.
    Register1900s,
    /// National register number, born in 2000 or later.
    Register2000s,
    /// BIS number (Crossroads Bank registers), born before 2000.
    Bis1900s,
    /// BIS number, born in 2000 or later.
    Bis2000s,
}

/// Why a string is not a NISS. Messages never repeat the digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NissError {
    #[error("a NISS has exactly 11 digits")]
    Length,
    #[error("a NISS contains only the digits 0-9, without separators")]
    NotDigits,
    #[error("the month part of the NISS is not 00-12, or 20-32 / 40-52 for a BIS number")]
    Month,
    #[error("the day part of the NISS is not 00-31")]
    Day,
    #[error("the serial part of the NISS is not 001-998")]
    Serial,
    #[error("the check number of the NISS does not match its first nine digits")]
    CheckNumber,
}

impl Niss {
    /// Parses and validates eleven ASCII digits.
    pub fn parse(text: &str) -> Result<Niss, NissError> {
        Niss::parse_bytes(text.as_bytes())
    }

    /// Same as [`Niss::parse`], on bytes (as they come off the wire).
    pub fn parse_bytes(text: &[u8]) -> Result<Niss, NissError> {
        if text.len() != 11 {
            return Err(NissError::Length);
        }
        let mut number = 0u64;
        for &b in text {
            if !b.is_ascii_digit() {
                return Err(NissError::NotDigits);
            }
            number = number * 10 + u64::from(b - b'0');
        }
        Niss::from_number(number)
    }

    /// Validates a NISS given as its numeric value.
    pub fn from_number(number: u64) -> Result<Niss, NissError> {
        if number >= 100_000_000_000 {
            return Err(NissError::Length);
        }
        let month = (number / 10_000_000) % 100;
        let day = (number / 100_000) % 100;
        if !matches!(month, 0..=12 | 20..=32 | 40..=52) {
            return Err(NissError::Month);
        }
        if day > 31 {
            return Err(NissError::Day);
        }
        if matches!((number / 100) % 1000, 0 | 999) {
            return Err(NissError::Serial);
        }
        let niss = Niss(number);
        if niss.century().is_none() {
            return Err(NissError::CheckNumber);
        }
        Ok(niss)
    }

    /// Builds the valid NISS for a birth date part `yymmdd` and serial `sss`, choosing the check
    /// number for the given century. Used by generators and tests.
    pub fn compose(yymmdd: u32, serial: u16, born_2000s: bool) -> Result<Niss, NissError> {
        let first9 = u64::from(yymmdd) * 1000 + u64::from(serial);
        let check = 97
            - (if born_2000s {
                2_000_000_000 + first9
            } else {
                first9
            } % 97);
        Niss::from_number(first9 * 100 + check)
    }

    /// `Some(true)` if the check number is the one for births from 2000, `Some(false)` for
    /// births before 2000, `None` if it matches neither.
    fn century(self) -> Option<bool> {
        let first9 = self.0 / 100;
        let check = self.0 % 100;
        if 97 - first9 % 97 == check {
            Some(false)
        } else if 97 - (2_000_000_000 + first9) % 97 == check {
            Some(true)
        } else {
            None
        }
    }

    /// The register and century this NISS belongs to.
    pub fn kind(self) -> NissKind {
        let bis = (self.0 / 10_000_000) % 100 >= 20;
        match (bis, self.century() == Some(true)) {
            (false, false) => NissKind::Register1900s,
            (false, true) => NissKind::Register2000s,
            (true, false) => NissKind::Bis1900s,
            (true, true) => NissKind::Bis2000s,
        }
    }

    /// The number the NISS spells, for compact storage.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The eleven digits, for putting on the wire. Never log this.
    pub fn digits(self) -> String {
        format!("{:011}", self.0)
    }
}

impl fmt::Debug for Niss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Niss(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<NissKind, NissError>) {
        assert_eq!(Niss::parse(text).map(Niss::kind), expected, "{text}");
    }

    #[test]
    fn valid_and_invalid_numbers() {
        use NissKind::*;
        // 850730 033 → 97 - (850730033 mod 97) = 28.
        check("85073003328", Ok(Register1900s));
        // 170125 001 → born 2017: 97 - (2170125001 mod 97) = 30.
        check("17012500130", Ok(Register2000s));
        // The same digits with the 1900s check number: valid, but for someone born in 1917.
        check("17012500101", Ok(Register1900s));
        // BIS, sex known (+40 on the month), born 1990.
        check("90422012306", Ok(Bis1900s));
        // BIS, sex unknown (+20 on the month), born 2003.
        check("03250500119", Ok(Bis2000s));
        // Unknown birth date (month and day 00) is allowed.
        check("40000000163", Ok(Register1900s));
        // Serials run 001-998: the first and last are valid, 000 and 999 never given (even
        // with a check number that matches).
        check("85073000160", Ok(Register1900s));
        check("85073099833", Ok(Register1900s));
        check("85073000061", Err(NissError::Serial));
        check("85073099932", Err(NissError::Serial));
        check("17012599902", Err(NissError::Serial));
        check("85073003329", Err(NissError::CheckNumber));
        check("8507300336", Err(NissError::Length));
        check("850730033610", Err(NissError::Length));
        check("85.07.30-03", Err(NissError::NotDigits));
        check("8507300336a", Err(NissError::NotDigits));
        check("85133003328", Err(NissError::Month));
        check("85603003328", Err(NissError::Month));
        check("85073203328", Err(NissError::Day));
        check("", Err(NissError::Length));
    }

    #[test]
    fn compose_gives_valid_numbers_in_both_centuries() {
        for (yymmdd, serial, born_2000s) in
            [(850730, 33, false), (170125, 1, true), (904220, 123, false)]
        {
            let niss = Niss::compose(yymmdd, serial, born_2000s).unwrap();
            assert_eq!(Niss::parse(&niss.digits()), Ok(niss));
            assert_eq!(
                matches!(niss.kind(), NissKind::Register2000s | NissKind::Bis2000s),
                born_2000s
            );
        }
    }

    #[test]
    fn debug_does_not_print_the_digits() {
        let niss = Niss::parse("85073003328").unwrap();
        assert!(!format!("{niss:?}").contains("850730"));
    }
}
