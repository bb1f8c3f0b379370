//! Sectors, institutions and quality codes: the parties of an exchange, as compact indices.
//!
//! Names (`cpas-brussels`, `health_insurance`) live in the policy; the hot path and the
//! directory use the dense indices the policy assigns, so that an integration fits in a few
//! bytes and a lookup compares integers.

use std::fmt;

/// Whether `id` has the form of a sector or institution id: lowercase ASCII letters, digits and
/// `-`, with at least one letter. Only such an id is ever quoted back in an error, so the
/// letter matters: a column of digits (a NISS in the wrong place) is never an id.
pub fn valid_id(id: &str) -> bool {
    id.bytes().any(|b| b.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Index of a sector in the policy's sector table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SectorIndex(pub u16);

/// Index of an institution in the policy's institution table. Stable across reloads: the
/// policy keeps the index of every institution it already knew.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstitutionIndex(pub u16);

/// A quality code: the capacity in which an institution knows a person, meaningful within the
/// institution's sector. `000` is a definitive registration, `902` a provisional one, `001`-`900`
/// are the sector's specific qualities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualityCode(pub u16);

impl QualityCode {
    /// Definitive registration, without a specific quality.
    pub const DEFINITIVE: QualityCode = QualityCode(0);
    /// Provisional registration.
    pub const PROVISIONAL: QualityCode = QualityCode(902);

    /// A code in the real layout: 000-999.
    pub fn new(code: u16) -> Option<QualityCode> {
        (code <= 999).then_some(QualityCode(code))
    }

    /// True for 001-900, the codes a sector defines for itself.
    pub fn is_specific(self) -> bool {
        (1..=900).contains(&self.0)
    }
}

impl fmt::Display for QualityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.0)
    }
}

/// A quality code qualified by the sector it belongs to, as deliberations accept them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SectorQuality {
    pub sector: SectorIndex,
    pub code: QualityCode,
}

/// An institution together with its sector: what routing needs to know of a sender or
/// recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Party {
    pub institution: InstitutionIndex,
    pub sector: SectorIndex,
}
