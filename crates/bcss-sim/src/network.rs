//! The sample network's persons directory, generated reproducibly from a seed.
//!
//! `bcss-hub generate-directory --persons 10000 --seed 2026 > config/directory.csv` rebuilds the
//! shipped file byte for byte (a test checks it). The spread follows the seeds' actors: almost
//! everyone has a health-insurance fund; workers are known to ONSS and SIGeDIS; some are manual
//! workers, artists or white-collar workers for ONVA; about one in eight is a CPAS client (aid
//! applicant, maintenance debtor or cohabiting partner), a few only under a definitive
//! registration or with a file closed in the past; some are future public-sector pensioners.

use bcss_directory::csv::HEADER;
use bcss_domain::Niss;
use bcss_policy::Policy;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::Date;
use time::macros::date;

/// One generated row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub niss: Niss,
    pub institution: String,
    pub quality: u16,
    pub start: Date,
    pub end: Option<Date>,
}

/// Generates a random valid NISS (about 3 % BIS numbers, births 1940-2009).
pub fn random_niss(rng: &mut impl rand::Rng) -> Niss {
    let year = rng.random_range(1940..2010u32);
    let month = rng.random_range(1..=12u32);
    let day = rng.random_range(1..=28u32);
    let bis = rng.random_bool(0.03);
    let month_part = if bis { month + 40 } else { month };
    let serial = rng.random_range(1..998u16);
    Niss::compose(
        (year % 100) * 10_000 + month_part * 100 + day,
        serial,
        year >= 2000,
    )
    .expect("composed NISS is valid")
}

/// Generates the rows of `persons` persons over the institutions of `policy`.
pub fn generate(policy: &Policy, persons: usize, seed: u64) -> Vec<Row> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let of_sector = |sector: &str| -> Vec<String> {
        policy
            .institutions()
            .iter()
            .filter(|i| policy.sector(i.sector).id == sector)
            .map(|i| i.id.to_string())
            .collect()
    };
    let funds = of_sector("health_insurance");
    let cpas = of_sector("cpas");
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    let since = |rng: &mut ChaCha8Rng| {
        date!(2012 - 01 - 01) + time::Duration::days(rng.random_range(0..4_000))
    };
    while seen.len() < persons {
        let niss = random_niss(&mut rng);
        if !seen.insert(niss) {
            continue;
        }
        let mut add = |institution: &str, quality: u16, start: Date, end: Option<Date>| {
            rows.push(Row {
                niss,
                institution: institution.to_owned(),
                quality,
                start,
                end,
            });
        };
        if rng.random_bool(0.95) {
            let fund = funds.choose(&mut rng).expect("funds");
            let start = since(&mut rng);
            add(fund, [1, 1, 1, 2, 3][rng.random_range(0..5)], start, None);
        }
        let worker = rng.random_bool(0.65);
        if worker {
            let start = since(&mut rng);
            add("onss", 1, start, None);
            add("sigedis", 1, start, None);
            let holiday = rng.random_range(0..100);
            if holiday < 30 {
                add("onva-inspection", 1, start, None);
            } else if holiday < 33 {
                add("onva-inspection", 2, start, None);
            } else if holiday < 70 {
                add("onva-inspection", 3, start, None);
            }
            if rng.random_bool(0.12) {
                add("sdpsp", 1, start, None);
            }
        }
        let social = rng.random_range(0..1000);
        if social < 125 {
            let centre = cpas.choose(&mut rng).expect("cpas");
            let start = since(&mut rng);
            match social {
                0..=89 => {
                    let quality = [1, 1, 1, 2, 3][rng.random_range(0..5)];
                    add(centre, quality, start, None);
                    if rng.random_bool(0.5) {
                        add("spp-is", quality, start, None);
                    }
                }
                90..=104 => add(centre, 0, start, None),
                _ => {
                    let end = start + time::Duration::days(rng.random_range(30..700));
                    add(centre, 1, start, Some(end.min(date!(2023 - 12 - 31))));
                }
            }
        }
        if rng.random_bool(0.1) {
            add(
                "onem",
                [1, 2][rng.random_range(0..2)],
                since(&mut rng),
                None,
            );
        }
        if rng.random_bool(0.01) {
            add("mycareer-contact-centre", 1, date!(2025 - 01 - 01), None);
        }
    }
    rows
}

/// The rows as the text of `config/directory.csv`.
pub fn to_csv(rows: &[Row], persons: usize, seed: u64) -> String {
    let date = bcss_domain::iso_date;
    let integrated: std::collections::HashSet<_> = rows.iter().map(|row| row.niss).collect();
    let mut out = format!(
        "# The persons directory of the sample network: {} persons (of {persons} NISS drawn), {} integrations.\n\
         # Generated by `bcss-hub generate-directory --persons {persons} --seed {seed}`; do not edit by hand.\n{HEADER}\n",
        integrated.len(),
        rows.len()
    );
    for row in rows {
        out.push_str(&format!(
            "{},{},{:03},{},{}\n",
            row.niss.digits(),
            row.institution,
            row.quality,
            date(row.start),
            row.end.map(date).unwrap_or_default()
        ));
    }
    out
}
