//! The reference directory (persons part): for each NISS, the institutions that manage a file
//! on the person, under which quality code, for which period.
//!
//! It lives in memory in a [`DashMap`] keyed by the NISS as a `u64`, each person's integrations
//! in one boxed slice of 12-byte [`Integration`]s. Lookups take a shard read lock for the time
//! of a copy; a change replaces the person's slice (copy on write), so readers never see a
//! half-made change. The crate does no I/O of its own: [`csv`] parses text handed to it.
//!
//! # Layout
//!
//! - [`Directory`]: lookups and run-time changes.
//! - [`csv`]: the text form of the persons directory (`config/directory.csv`).

pub mod csv;
pub mod snapshot;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bcss_domain::{InstitutionIndex, Integration, Niss, QualityCode};
use dashmap::DashMap;

pub use bcss_domain::Integration as Row;

/// The persons directory.
///
/// Keys are hashed with foldhash (seeded per process): NISS are chosen by senders, so the hash
/// must not be predictable, and SipHash would cost a third of a lookup.
#[derive(Debug, Default)]
pub struct Directory {
    persons: DashMap<u64, Box<[Integration]>, foldhash::fast::RandomState>,
    integrations: AtomicUsize,
    /// Run-time changes so far (integrations added, removals), to know when to snapshot.
    changes: AtomicU64,
}

impl Directory {
    pub fn new() -> Directory {
        Directory::default()
    }

    /// A directory sized for `persons` persons up front (loading a national snapshot).
    pub fn with_capacity(persons: usize) -> Directory {
        Directory {
            persons: DashMap::with_capacity_and_hasher(persons, Default::default()),
            integrations: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
        }
    }

    /// The person's integrations, all institutions mixed (empty when unknown).
    pub fn integrations(&self, niss: Niss) -> Vec<Integration> {
        self.persons
            .get(&niss.as_u64())
            .map(|rows| rows.to_vec())
            .unwrap_or_default()
    }

    /// Runs `f` on the person's integrations without copying them. Keep `f` short: it holds a
    /// shard read lock.
    pub fn with_integrations<R>(&self, niss: Niss, f: impl FnOnce(&[Integration]) -> R) -> R {
        match self.persons.get(&niss.as_u64()) {
            Some(rows) => f(&rows),
            None => f(&[]),
        }
    }

    /// Adds an integration. Returns false when the identical row already existed.
    pub fn integrate(&self, niss: Niss, row: Integration) -> bool {
        let mut created = false;
        self.persons
            .entry(niss.as_u64())
            .and_modify(|rows| {
                if !rows.contains(&row) {
                    let mut grown = Vec::with_capacity(rows.len() + 1);
                    grown.extend_from_slice(rows);
                    grown.push(row);
                    *rows = grown.into_boxed_slice();
                    created = true;
                }
            })
            .or_insert_with(|| {
                created = true;
                Box::new([row])
            });
        if created {
            self.integrations.fetch_add(1, Ordering::Relaxed);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        created
    }

    /// Removes `institution`'s integrations of the person, all or those under `quality`.
    /// Returns how many were removed.
    pub fn remove(
        &self,
        niss: Niss,
        institution: InstitutionIndex,
        quality: Option<QualityCode>,
    ) -> usize {
        let matches = |row: &Integration| {
            row.institution == institution && quality.is_none_or(|q| row.quality == q)
        };
        let (removed, emptied) = {
            let Some(mut rows) = self.persons.get_mut(&niss.as_u64()) else {
                return 0;
            };
            let kept: Vec<Integration> = rows.iter().filter(|r| !matches(r)).copied().collect();
            let removed = rows.len() - kept.len();
            if removed > 0 {
                *rows = kept.into_boxed_slice();
            }
            (removed, rows.is_empty())
        };
        if emptied {
            self.persons
                .remove_if(&niss.as_u64(), |_, rows| rows.is_empty());
        }
        if removed > 0 {
            self.integrations.fetch_sub(removed, Ordering::Relaxed);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    /// `institution`'s integrations, of one person or of everyone, skipping the first `skip`
    /// and returning at most `limit`, with whether more remain. Listing everyone scans the
    /// whole directory.
    pub fn list(
        &self,
        institution: InstitutionIndex,
        niss: Option<Niss>,
        skip: usize,
        limit: usize,
    ) -> (Vec<(Niss, Integration)>, bool) {
        let mine = |(key, rows): (u64, &[Integration])| {
            let niss = Niss::from_number(key).ok()?;
            Some(
                rows.iter()
                    .filter(|r| r.institution == institution)
                    .map(move |r| (niss, *r))
                    .collect::<Vec<_>>(),
            )
        };
        let mut found: Vec<(Niss, Integration)> = match niss {
            Some(niss) => self
                .with_integrations(niss, |rows| mine((niss.as_u64(), rows)))
                .unwrap_or_default(),
            None => self
                .persons
                .iter()
                .filter_map(|e| mine((*e.key(), e.value())))
                .flatten()
                .collect(),
        };
        found.sort_by_key(|(niss, row)| (*niss, row.quality, row.period.start));
        let more = found.len() > skip + limit;
        let page = found.into_iter().skip(skip).take(limit).collect();
        (page, more)
    }

    /// Sets a person's integrations at load time (`rows` without duplicates), merging with
    /// any already there (a file that lists the person twice).
    pub fn insert_rows(&self, niss: Niss, rows: Box<[Integration]>) {
        if rows.is_empty() {
            return;
        }
        match self.persons.entry(niss.as_u64()) {
            dashmap::Entry::Vacant(entry) => {
                self.integrations.fetch_add(rows.len(), Ordering::Relaxed);
                entry.insert(rows);
            }
            dashmap::Entry::Occupied(entry) => {
                drop(entry);
                for row in rows {
                    self.integrate(niss, row);
                }
            }
        }
    }

    /// Calls `f` on every person (as the NISS's number) and their integrations, in no
    /// particular order. Holds one shard's read lock at a time: changes to that shard wait.
    pub fn for_each_person(&self, mut f: impl FnMut(u64, &[Integration])) {
        for entry in self.persons.iter() {
            f(*entry.key(), entry.value());
        }
    }

    /// How many changes (integrations created, removals) the directory has seen: a snapshot
    /// taken at `n` is current while this is still `n`.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Number of persons with at least one integration.
    pub fn persons(&self) -> usize {
        self.persons.len()
    }

    /// Number of integrations.
    pub fn integration_count(&self) -> usize {
        self.integrations.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bcss_domain::Period;
    use time::macros::date;

    fn row(institution: u16, quality: u16) -> Integration {
        Integration {
            institution: InstitutionIndex(institution),
            quality: QualityCode(quality),
            period: Period {
                start: date!(2024 - 01 - 01),
                end: None,
            },
        }
    }

    #[test]
    fn integrate_remove_and_list_own_rows() {
        let directory = Directory::new();
        let a = Niss::parse("85073003328").unwrap();
        let b = Niss::parse("17012500130").unwrap();
        assert!(directory.integrate(a, row(1, 1)));
        assert!(!directory.integrate(a, row(1, 1)), "idempotent");
        assert!(directory.integrate(a, row(1, 2)));
        assert!(directory.integrate(a, row(2, 1)));
        assert!(directory.integrate(b, row(1, 3)));
        assert_eq!(directory.integration_count(), 4);
        assert_eq!(directory.list(InstitutionIndex(1), None, 0, 10).0.len(), 3);
        assert_eq!(
            directory.list(InstitutionIndex(1), Some(a), 0, 10).0.len(),
            2
        );
        assert_eq!(
            directory.list(InstitutionIndex(1), None, 0, 2),
            (directory.list(InstitutionIndex(1), None, 0, 2).0, true)
        );
        assert_eq!(
            directory.remove(a, InstitutionIndex(1), Some(QualityCode(2))),
            1
        );
        assert_eq!(directory.remove(a, InstitutionIndex(1), None), 1);
        assert_eq!(
            directory.integrations(a),
            vec![row(2, 1)],
            "another institution's row stays"
        );
        assert_eq!(directory.remove(b, InstitutionIndex(1), None), 1);
        assert_eq!(
            directory.persons(),
            1,
            "a person without integrations leaves the directory"
        );
        assert_eq!(directory.integration_count(), 1);
    }
}
