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

/// Parses `text` into `directory`. Stops at the first bad line. Each line is declared as
/// [`Directory::integrate`] declares it: a line with the person, institution, quality code and
/// start of an earlier line updates that one's end (the later line wins).
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
    // A value is quoted back only when it has the form expected there: a wrong file (a name
    // in the institution column, say) must not put a person's data into an error.
    let institution = resolver.institution(id).ok_or_else(|| {
        if bcss_domain::valid_id(id) {
            format!("unknown institution \"{id}\"")
        } else {
            "the institution column does not hold an institution id".to_owned()
        }
    })?;
    let code = next("quality_code")?;
    let quality = code
        .parse::<u16>()
        .ok()
        .and_then(QualityCode::new)
        .ok_or_else(|| {
            if code.len() <= 4 && code.bytes().all(|b| b.is_ascii_digit()) {
                format!("quality code \"{code}\" is not 000-999")
            } else {
                "the quality_code column does not hold a code 000-999".to_owned()
            }
        })?;
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
    // A column more is not dropped unread: it may be a column this file format does not have
    // (a date of last change, say), or the sign of shifted columns.
    if parts.next().is_some() {
        return Err(format!("more columns than expected ({HEADER})"));
    }
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
    Date::parse(text, format_description!("[year]-[month]-[day]")).map_err(|_| {
        // Quoted only when it looks like a date (a wrong column could hold anything).
        if text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            format!("\"{text}\" is not a date YYYY-MM-DD")
        } else {
            "a date column does not hold a date YYYY-MM-DD".to_owned()
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    struct OneInstitution;
    impl Resolver for OneInstitution {
        fn institution(&self, id: &str) -> Option<InstitutionIndex> {
            (id == "cpas-liege").then_some(InstitutionIndex(0))
        }
        fn quality_exists(&self, _: InstitutionIndex, code: QualityCode) -> bool {
            code.0 < 900
        }
    }

    /// Each bad line's error: it names the line and the problem, and quotes a value only when
    /// it has the form that column expects (a wrong file must not put a person's data, a name
    /// or a NISS, into an error and the logs).
    #[test]
    fn bad_lines_are_named_without_quoting_what_could_be_personal() {
        // (line, what the error says, what it must not say)
        let table: [(&str, &str, &[&str]); 8] = [
            (
                "85073003328,cpas-namur,001,2024-01-01,",
                "unknown institution \"cpas-namur\"",
                &[],
            ),
            (
                // A second NISS where the institution should be (columns shifted).
                "85073003328,17012500130,001,2024-01-01,",
                "the institution column does not hold an institution id",
                &["17012500130"],
            ),
            (
                "85073003328,Dupont Jean,001,2024-01-01,",
                "the institution column does not hold an institution id",
                &["Dupont", "Jean"],
            ),
            (
                "85073003328,cpas-liege,1200,2024-01-01,",
                "quality code \"1200\" is not 000-999",
                &[],
            ),
            (
                "85073003328,cpas-liege,Dupont,2024-01-01,",
                "the quality_code column does not hold a code 000-999",
                &["Dupont"],
            ),
            (
                "85073003328,cpas-liege,001,2024-13-01,",
                "\"2024-13-01\" is not a date YYYY-MM-DD",
                &[],
            ),
            (
                "85073003328,cpas-liege,001,17012500130,",
                "a date column does not hold a date YYYY-MM-DD",
                &["17012500130"],
            ),
            (
                "85073003328,cpas-liege,001,2024-01-01,2024-12-31,Dupont",
                "more columns than expected",
                &["Dupont"],
            ),
        ];
        for (line, says, never) in table {
            let error = load(&Directory::new(), line, &OneInstitution).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(says), "{line}: {text}");
            assert!(text.contains("line 1"), "{line}: {text}");
            for value in never {
                assert!(!text.contains(value), "{line}: {text} quotes {value}");
            }
        }
    }
}
