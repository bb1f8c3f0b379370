//! `bcss-hub directory …`: export and import the hub's persons directory (its snapshot in the
//! data folder), generate a national-scale snapshot, and measure one: load time, resident
//! memory, integration-check latency, and lookups while integrations and removals run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bcss_directory::Directory;
use bcss_directory::snapshot::SnapshotWriter;
use bcss_domain::decision::{Message, check_recipient};
use bcss_domain::{Flow, InstitutionIndex, Integration, Niss, Party, Period, QualityCode};
use bcss_domain::{SectorQuality, deliberation::CheckMode};
use bcss_gateway::snapshot;
use bcss_policy::{Policy, Settings};
use clap::Subcommand;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::Date;
use time::macros::date;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What to do with the persons directory.
#[derive(Debug, Subcommand)]
pub enum DirectoryAction {
    /// Writes the directory the hub loads at start (the data folder's snapshot, else
    /// `files.directory`): as CSV text to standard output or `--out`, or as a snapshot.
    /// Safe while the hub runs (snapshots are replaced atomically); it is as recent as the last
    /// snapshot (`storage.directory_snapshot_s`, and every shutdown).
    Export {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// Where to write; standard output when absent (CSV only).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Checks FILE (CSV or snapshot) against the policy and makes it the data folder's
    /// snapshot, which the hub loads at its next start. Refused while a hub runs on the folder.
    Import {
        file: PathBuf,
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
    },
    /// Writes a national-scale snapshot: `--persons` valid NISS over the policy's institutions,
    /// most in 3-6 of them, some in many (about 5 integrations per person on average).
    Generate {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 20_000_000)]
        persons: u64,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Loads a snapshot and measures the load time, resident memory, the integration check's
    /// latency on random NISS, and the same while another thread integrates and removes.
    Measure {
        file: PathBuf,
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
        /// The `--persons` and `--seed` the snapshot was generated with (to draw known NISS).
        #[arg(long, default_value_t = 20_000_000)]
        persons: u64,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Integration checks to time, per phase.
        #[arg(long, default_value_t = 2_000_000)]
        checks: usize,
    },
}

/// A directory file's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Snapshot,
}

pub fn run(action: DirectoryAction) -> Result<(), Error> {
    match action {
        DirectoryAction::Export {
            config,
            format,
            out,
        } => export(&config, format, out.as_deref()),
        DirectoryAction::Import { file, config } => import(&config, &file),
        DirectoryAction::Generate {
            config,
            persons,
            seed,
            out,
        } => {
            let policy = Policy::load(&Settings::load(&config)?)?;
            let started = Instant::now();
            let file = std::fs::File::create(&out)?;
            let counts = generate_national(&policy, persons, seed, file)?;
            eprintln!(
                "{}: {} persons, {} integrations, {:.1} MiB, in {:.1} s",
                out.display(),
                counts.persons,
                counts.integrations,
                std::fs::metadata(&out)?.len() as f64 / (1 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        DirectoryAction::Measure {
            file,
            config,
            persons,
            seed,
            checks,
        } => measure(&config, &file, persons, seed, checks),
    }
}

fn export(config: &Path, format: Format, out: Option<&Path>) -> Result<(), Error> {
    let settings = Settings::load(config)?;
    let policy = Policy::load(&settings)?;
    let snapshot_file = snapshot::file(&settings.storage.data);
    let source = if snapshot_file.exists() {
        snapshot_file
    } else {
        settings.files.directory.clone()
    };
    let directory = snapshot::load(&source, &policy)?;
    match (format, out) {
        (Format::Csv, None) => {
            snapshot::export_csv(&directory, &policy, std::io::stdout().lock())?;
        }
        (Format::Csv, Some(out)) => {
            snapshot::export_csv(&directory, &policy, std::fs::File::create(out)?)?;
        }
        (Format::Snapshot, Some(out)) => {
            snapshot::save(&directory, &policy, out)?;
        }
        (Format::Snapshot, None) => {
            return Err("a snapshot is binary: name the file with --out".into());
        }
    }
    eprintln!(
        "Exported {} persons, {} integrations (from {}).",
        directory.persons(),
        directory.integration_count(),
        source.display()
    );
    Ok(())
}

fn import(config: &Path, file: &Path) -> Result<(), Error> {
    let settings = Settings::load(config)?;
    let policy = Policy::load(&settings)?;
    let _no_hub_meanwhile = bcss_store::lock_data_folder(&settings.storage.data)?;
    let directory = snapshot::load(file, &policy)?;
    let target = snapshot::file(&settings.storage.data);
    let counts = snapshot::save(&directory, &policy, &target)?;
    eprintln!(
        "Imported {} persons, {} integrations into {}; the hub loads them at its next start.",
        counts.persons,
        counts.integrations,
        target.display()
    );
    Ok(())
}

/// The `i`-th person of a national directory: distinct for distinct `i` below 34 million
/// (births 1930-2025, serials 1-997).
pub fn national_niss(i: u64) -> Niss {
    const DAYS: u64 = 96 * 12 * 28;
    let day = i % DAYS;
    let serial = (i / DAYS % 997 + 1) as u16;
    let year = 1930 + day / (12 * 28);
    let month = day / 28 % 12 + 1;
    let dd = day % 28 + 1;
    let yymmdd = ((year % 100) * 10_000 + month * 100 + dd) as u32;
    Niss::compose(yymmdd, serial, year >= 2000).expect("composed NISS is valid")
}

/// How many institutions a person of the national directory is integrated with: mostly 3-6,
/// some 1-2, a tail up to 13 (mean about 5).
fn institutions_per_person(rng: &mut ChaCha8Rng) -> usize {
    match rng.random_range(0..100u32) {
        0..3 => 1,
        3..12 => 2,
        12..28 => 3,
        28..48 => 4,
        48..68 => 5,
        68..85 => 6,
        _ => rng.random_range(7..=13),
    }
}

/// Streams a national-scale snapshot of `persons` persons to `out`.
pub fn generate_national(
    policy: &Policy,
    persons: u64,
    seed: u64,
    out: impl Write,
) -> std::io::Result<bcss_directory::snapshot::Counts> {
    let institutions = policy.institutions();
    let qualities: Vec<Vec<QualityCode>> = institutions
        .iter()
        .map(|institution| {
            (0..1000)
                .filter_map(QualityCode::new)
                .filter(|code| {
                    policy
                        .quality_name(SectorQuality {
                            sector: institution.sector,
                            code: *code,
                        })
                        .is_some()
                })
                .collect()
        })
        .collect();
    let ids: Vec<&str> = institutions.iter().map(|i| &*i.id).collect();
    let mut writer = SnapshotWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, out),
        &ids,
        persons,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<u16> = (0..institutions.len() as u16).collect();
    let mut rows = Vec::with_capacity(16);
    for i in 0..persons {
        let niss = national_niss(i);
        let count = institutions_per_person(&mut rng).min(order.len());
        rows.clear();
        for k in 0..count {
            let pick = rng.random_range(k..order.len());
            order.swap(k, pick);
            let institution = order[k] as usize;
            let Some(quality) = pick_one(&mut rng, &qualities[institution]) else {
                continue;
            };
            let start = date!(1990 - 01 - 01) + time::Duration::days(rng.random_range(0..13_000));
            let end = rng
                .random_bool(0.25)
                .then(|| start + time::Duration::days(rng.random_range(30..3_000)));
            rows.push(Integration {
                institution: InstitutionIndex(institution as u16),
                quality,
                period: Period { start, end },
            });
        }
        writer.person(niss.as_u64(), &rows)?;
    }
    writer.finish()
}

fn pick_one<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())])
}

/// Resident and peak resident memory of this process, in bytes (Linux; zero elsewhere).
fn resident_memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One integration check the data path makes: a recipient, a sender and a flow that a
/// prior-integration deliberation connects.
struct CheckCase {
    facts: Message,
    recipient: Party,
    flow: Flow,
}

fn check_case(policy: &Policy) -> Result<CheckCase, Error> {
    for flow in Flow::ALL {
        for recipient in policy.institutions() {
            for deliberation in policy.deliberations_reaching(recipient.index, flow) {
                if !matches!(deliberation.check, CheckMode::PriorIntegration { .. }) {
                    continue;
                }
                let Some(sender) = policy
                    .institutions()
                    .iter()
                    .find(|s| deliberation.route(s.party(), recipient.party()).is_some())
                else {
                    continue;
                };
                let facts = Message {
                    sender: sender.party(),
                    flow,
                    period: Period {
                        start: date!(2025 - 01 - 01),
                        end: Some(date!(2025 - 03 - 31)),
                    },
                    relays: false,
                    cites_contact_file: false,
                    today: deliberation.valid_from.max(date!(2026 - 01 - 01)),
                };
                return Ok(CheckCase {
                    facts,
                    recipient: recipient.party(),
                    flow,
                });
            }
        }
    }
    Err("the policy has no prior-integration deliberation to measure".into())
}

/// p50 and p99 of per-item times measured as the means of batches of 64 (nanoseconds).
fn batch_percentiles<T>(items: &[T], mut one: impl FnMut(&T) -> usize) -> (f64, f64, usize) {
    const BATCH: usize = 64;
    let mut means = Vec::with_capacity(items.len() / BATCH + 1);
    let mut total = 0;
    for batch in items.chunks(BATCH) {
        let started = Instant::now();
        for item in batch {
            total += std::hint::black_box(one(item));
        }
        means.push(started.elapsed().as_nanos() as f64 / batch.len() as f64);
    }
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((means.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), total)
}

/// Latency of checks over `niss` (in batches of 64, the batch mean as each check's time):
/// (p50, p99) in nanoseconds, and how many were admitted. The check reads the recipient's
/// rows only (`Directory::with_integrations_of`), as the data path does.
fn time_checks(
    directory: &Directory,
    policy: &Policy,
    case: &CheckCase,
    niss: &[Niss],
) -> (f64, f64, usize) {
    batch_percentiles(niss, |person| {
        directory.with_integrations_of(*person, case.recipient.institution, |rows| {
            check(policy, case, rows)
        })
    })
}

/// One integration check on `rows`: 1 when admitted.
fn check(policy: &Policy, case: &CheckCase, rows: &[Integration]) -> usize {
    usize::from(
        check_recipient(
            &case.facts,
            case.recipient,
            policy.deliberations_reaching(case.recipient.institution, case.flow),
            rows,
        )
        .is_ok(),
    )
}

fn measure(
    config: &Path,
    file: &Path,
    persons: u64,
    seed: u64,
    checks: usize,
) -> Result<(), Error> {
    let policy = Policy::load(&Settings::load(config)?)?;
    let case = check_case(&policy)?;
    let (rss_before, _) = resident_memory();
    let started = Instant::now();
    let directory = Arc::new(snapshot::load(file, &policy)?);
    let load = started.elapsed();
    let (rss_after, peak) = resident_memory();
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    println!("snapshot: {}", file.display());
    println!(
        "loaded: {} persons, {} integrations in {:.2} s",
        directory.persons(),
        directory.integration_count(),
        load.as_secs_f64()
    );
    println!(
        "resident memory: {:.2} GiB after load ({:.2} GiB for the directory), peak {:.2} GiB",
        gib(rss_after),
        gib(rss_after.saturating_sub(rss_before)),
        gib(peak)
    );
    // Random persons: 9 in 10 known, 1 in 10 not in the directory.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let sample: Vec<Niss> = (0..checks)
        .map(|_| {
            if rng.random_bool(0.9) {
                national_niss(rng.random_range(0..persons))
            } else {
                national_niss(persons + rng.random_range(0..1_000_000))
            }
        })
        .collect();
    let (p50, p99, found) = batch_percentiles(&sample, |person| {
        directory.with_integrations(*person, |rows| rows.len())
    });
    println!("lookup only (the person's rows): p50 {p50:.0} ns, p99 {p99:.0} ns ({found} rows)");
    let (p50, p99, admitted) = time_checks(&directory, &policy, &case, &sample);
    println!(
        "integration check, quiet: p50 {p50:.0} ns, p99 {p99:.0} ns ({admitted} of {checks} admitted)"
    );
    // As the hub does: the slot is asked for early (`Directory::prefetch` once the NISS is
    // valid), other work follows, then the check. Here the other work is the checks of the
    // persons before: the slot is asked for AHEAD checks earlier (about 200 ns, where the hub
    // has microseconds of other work between validation and the check).
    const AHEAD: usize = 8;
    for person in sample.iter().take(AHEAD) {
        directory.prefetch(*person);
    }
    let indices: Vec<usize> = (0..sample.len()).collect();
    let (p50_p, p99_p, admitted_p) = batch_percentiles(&indices, |&i| {
        if let Some(next) = sample.get(i + AHEAD) {
            directory.prefetch(*next);
        }
        directory.with_integrations_of(sample[i], case.recipient.institution, |rows| {
            check(&policy, &case, rows)
        })
    });
    assert_eq!(admitted_p, admitted, "the same checks, the same answers");
    println!(
        "integration check, the person's slot asked for {AHEAD} checks ahead: p50 {p50_p:.0} ns, p99 {p99_p:.0} ns"
    );
    // The check's own work: the same 64 persons over and over (their slots stay in cache).
    let hot: Vec<Niss> = sample
        .iter()
        .copied()
        .take(64)
        .cycle()
        .take(64 * 2_000)
        .collect();
    let (hot_p50, _, _) = time_checks(&directory, &policy, &case, &hot);
    println!(
        "integration check on persons in cache (the same 64 again and again): p50 {hot_p50:.0} ns"
    );
    // The same check handed all the person's rows (decoded), as before the data path read
    // only the recipient's.
    let (all_p50, all_p99, _) = batch_percentiles(&sample, |person| {
        directory.with_integrations(*person, |rows| check(&policy, &case, rows))
    });
    println!(
        "integration check on all the person's rows (with_integrations): \
         p50 {all_p50:.0} ns, p99 {all_p99:.0} ns"
    );
    // The same while another thread integrates and removes as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (directory, stop, changes) = (directory.clone(), stop.clone(), changes.clone());
        std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc4a9);
            let row = |rng: &mut ChaCha8Rng| Integration {
                institution: InstitutionIndex(rng.random_range(0..4)),
                quality: QualityCode(1),
                period: Period {
                    start: Date::from_calendar_date(2026, time::Month::January, 1)
                        .expect("valid date"),
                    end: None,
                },
            };
            while !stop.load(Ordering::Relaxed) {
                let person = national_niss(rng.random_range(0..persons));
                let row = row(&mut rng);
                directory.integrate(person, row);
                directory.remove(person, row.institution, Some(row.quality));
                changes.fetch_add(2, Ordering::Relaxed);
            }
        })
    };
    let busy = Instant::now();
    let (p50_w, p99_w, _) = time_checks(&directory, &policy, &case, &sample);
    let busy = busy.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| "the writer thread panicked")?;
    let rate = changes.load(Ordering::Relaxed) as f64 / busy.as_secs_f64();
    println!(
        "integration check, with {rate:.0} integrations+removals/s on another thread: \
         p50 {p50_w:.0} ns, p99 {p99_w:.0} ns"
    );
    println!(
        "ratios under changes / quiet: p50 {:.2}, p99 {:.2}",
        p50_w / p50,
        p99_w / p99
    );
    Ok(())
}
