//! The text form of the persons directory: one integration per line,
//! `niss,institution,quality_code,start,end` (ISO dates, empty end = open), with a header line
//! and `#` comments. Errors name the line, never the NISS on it.

use bcss_domain::{InstitutionIndex, Integration, Niss, Period, QualityCode};
use time::Date;
use time::macros::format_description;

use crate::Directory;

/// The header line of the file.
pub const HEADER: &str = "niss,institution,quality_code,start,end";

/// A line that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct LineError {
    pub line: usize,
    pub problem: String,
}

/// What the loader needs to know of the policy: an institution's index by id, and whether a
/// quality code exists in that institution's sector.
pub trait Resolver {
    fn institution(&self, id: &str) -> Option<InstitutionIndex>;
    fn quality_exists(&self, institution: InstitutionIndex, code: QualityCode) -> bool;
}

/// Parses `text` into `directory`. Stops at the first bad line.
pub fn load(
    directory: &Directory,
    text: &str,
    resolver: &impl Resolver,
) -> Result<usize, LineError> {
    let mut loaded = 0;
    for (number, line) in text.lines().enumerate() {
        let line_no = number + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == HEADER {
            continue;
        }
        let (niss, row) = parse_line(line, resolver).map_err(|problem| LineError {
            line: line_no,
            problem,
        })?;
        directory.integrate(niss, row);
        loaded += 1;
    }
    Ok(loaded)
}

fn parse_line(line: &str, resolver: &impl Resolver) -> Result<(Niss, Integration), String> {
    let mut parts = line.split(',');
    let mut next = |what: &str| {
        parts
            .next()
            .map(str::trim)
            .ok_or_else(|| format!("missing {what} (expected {HEADER})"))
    };
    let niss = Niss::parse(next("niss")?).map_err(|e| e.to_string())?;
    let id = next("institution")?;
    let institution = resolver
        .institution(id)
        .ok_or_else(|| format!("unknown institution \"{id}\""))?;
    let code = next("quality_code")?;
    let quality = code
        .parse::<u16>()
        .ok()
        .and_then(QualityCode::new)
        .ok_or_else(|| format!("quality code \"{code}\" is not 000-999"))?;
    if !resolver.quality_exists(institution, quality) {
        return Err(format!(
            "quality code {quality} is not defined for the sector of \"{id}\""
        ));
    }
    let start = parse_date(next("start")?)?;
    let end = match next("end")? {
        "" => None,
        text => Some(parse_date(text)?),
    };
    let period = Period::new(start, end).map_err(|e| e.to_string())?;
    Ok((
        niss,
        Integration {
            institution,
            quality,
            period,
        },
    ))
}

fn parse_date(text: &str) -> Result<Date, String> {
    Date::parse(text, format_description!("[year]-[month]-[day]"))
        .map_err(|_| format!("\"{text}\" is not a date YYYY-MM-DD"))
}

/// Formats one row as a line of the file.
pub fn line(niss: Niss, institution_id: &str, row: &Integration) -> String {
    let date = bcss_domain::iso_date;
    format!(
        "{},{},{},{},{}",
        niss.digits(),
        institution_id,
        row.quality,
        date(row.period.start),
        row.period.end.map(date).unwrap_or_default()
    )
}
