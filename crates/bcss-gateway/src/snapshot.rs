//! Directory snapshots on disk: `directory.snapshot` in the data folder, written atomically
//! (temporary file, fsync, rename, fsync of the folder) on shutdown and every
//! `storage.directory_snapshot_s` while the directory changes, and loaded at start instead of
//! `files.directory` when present, so run-time integrations survive a restart. Also the files
//! of `bcss-hub directory export|import` (a snapshot, or the CSV text form).
//!
//! A crash (SIGKILL, power loss) loses the run-time changes made since the last snapshot: at
//! most `directory_snapshot_s` seconds of them. Institutions re-declare what they miss.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bcss_directory::Directory;
use bcss_directory::snapshot::{self, Counts};
use bcss_domain::Niss;
use bcss_policy::Policy;

use crate::Hub;
use crate::startup::{DirectoryFileError, PolicyResolver, StartupError};

/// The snapshot's name in the data folder.
pub const FILE_NAME: &str = "directory.snapshot";

/// Where the snapshot of the hub with data folder `data` lives.
pub fn file(data: &Path) -> PathBuf {
    data.join(FILE_NAME)
}

/// The policy's institution ids in index order (a snapshot's institution list).
fn institution_ids(policy: &Policy) -> Vec<&str> {
    policy
        .institutions()
        .iter()
        .map(|institution| &*institution.id)
        .collect()
}

/// Writes `directory` to `target` atomically: readers of `target` see the old snapshot or the
/// new one, never a part. Readable by the hub's user only: it tells, for every person, which
/// institutions hold a file on them.
pub fn save(directory: &Directory, policy: &Policy, target: &Path) -> io::Result<Counts> {
    use std::os::unix::fs::OpenOptionsExt;
    let folder = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let partial = target.with_extension("snapshot.partial");
    let _ = std::fs::remove_file(&partial);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let counts = snapshot::write(directory, &institution_ids(policy), &mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&partial, target)?;
    std::fs::File::open(folder)?.sync_all()?;
    Ok(counts)
}

/// Reads a directory file: a snapshot (recognised by its first bytes) or the CSV text form. A
/// file named `*.snapshot` must be a snapshot: one emptied or overwritten by a bad copy is
/// refused, not read as an empty CSV directory (which would refuse every delivery).
pub fn load(file: &Path, policy: &Policy) -> Result<Directory, StartupError> {
    let fail = |source: DirectoryFileError| StartupError::Directory {
        file: file.to_owned(),
        source,
    };
    let mut input = std::fs::File::open(file).map_err(|e| fail(e.into()))?;
    let mut magic = [0u8; 8];
    let is_snapshot = input.read_exact(&mut magic).is_ok() && &magic == snapshot::MAGIC;
    if !is_snapshot && file.extension().is_some_and(|e| e == "snapshot") {
        return Err(fail(snapshot::SnapshotError::NotASnapshot.into()));
    }
    if is_snapshot {
        let input = std::fs::File::open(file).map_err(|e| fail(e.into()))?;
        let size = input.metadata().map_err(|e| fail(e.into()))?.len();
        snapshot::read_sized(input, size, &PolicyResolver(policy)).map_err(|e| fail(e.into()))
    } else {
        crate::startup::load_directory(file, policy)
    }
}

/// Writes `directory` as CSV text (`config/directory.csv`'s form), sorted by NISS, institution,
/// quality code and start: the same directory always gives the same text.
pub fn export_csv(directory: &Directory, policy: &Policy, out: impl Write) -> io::Result<usize> {
    let mut persons = Vec::with_capacity(directory.persons());
    directory.for_each_person(|niss, rows| {
        let mut rows = rows.to_vec();
        rows.sort_by_key(|r| (r.institution.0, r.quality.0, r.period.start));
        persons.push((niss, rows));
    });
    persons.sort_unstable_by_key(|(niss, _)| *niss);
    let ids = institution_ids(policy);
    let mut out = BufWriter::new(out);
    writeln!(out, "{}", bcss_directory::csv::HEADER)?;
    let mut lines = 0;
    for (number, rows) in persons {
        let niss = Niss::from_number(number)
            .map_err(|_| io::Error::other("the directory holds an invalid NISS"))?;
        for row in rows {
            let id = ids.get(row.institution.0 as usize).copied().unwrap_or("?");
            writeln!(out, "{}", bcss_directory::csv::line(niss, id, &row))?;
            lines += 1;
        }
    }
    out.flush()?;
    Ok(lines)
}

/// Snapshots a running hub's directory when it changed since the last snapshot.
#[derive(Debug)]
pub struct Snapshots {
    hub: Arc<Hub>,
    target: PathBuf,
    /// `Directory::changes` at the last snapshot written (or loaded).
    saved_at: AtomicU64,
    writing: std::sync::Mutex<()>,
}

impl Snapshots {
    pub fn new(hub: Arc<Hub>, target: PathBuf) -> Snapshots {
        let saved_at = AtomicU64::new(hub.directory().changes());
        Snapshots {
            hub,
            target,
            saved_at,
            writing: std::sync::Mutex::new(()),
        }
    }

    /// Writes a snapshot if the directory changed since the last one; `None` when it did not.
    /// Blocking: call it from a blocking thread.
    pub fn save_if_changed(&self) -> io::Result<Option<Counts>> {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let changes = self.hub.directory().changes();
        if changes == self.saved_at.load(Ordering::Relaxed) && self.target.exists() {
            return Ok(None);
        }
        let started = Instant::now();
        let counts = save(self.hub.directory(), &self.hub.policy(), &self.target)?;
        self.saved_at.store(changes, Ordering::Relaxed);
        tracing::info!(
            message = "Directory snapshot written.",
            persons = counts.persons,
            integrations = counts.integrations,
            ms = started.elapsed().as_millis() as u64,
        );
        Ok(Some(counts))
    }

    /// Snapshots every `every` while the directory changes (a failure is logged and retried at
    /// the next tick).
    pub fn spawn_periodic(self: &Arc<Self>, every: Duration) {
        if every.is_zero() {
            return;
        }
        let snapshots = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let job = snapshots.clone();
                match tokio::task::spawn_blocking(move || job.save_if_changed()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(
                        message = "Directory snapshot failed; the previous one stays.",
                        %error
                    ),
                    Err(_) => return,
                }
            }
        });
    }
}
