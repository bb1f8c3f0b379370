//! The reference directory (persons part): for each NISS, the institutions that manage a file
//! on the person, under which quality code, for which period.
//!
//! An integration check reads one person's rows on a random NISS, millions of times a second
//! over 20 million persons: the storage is laid out so that a check costs about one cache miss
//! and readers take no lock — and a caller that knows the person early asks for that line
//! ahead ([`Directory::prefetch`]) so that the miss is over by the check. The crate does no
//! I/O of its own: [`csv`] parses text handed to
//! it, [`snapshot`] reads and writes through the `Read`/`Write` it is given.
//!
//! # Storage
//!
//! - **Base table**: a fixed array of 64-byte slots (one cache line each), open addressing with
//!   linear probing from a slot chosen by a per-process-seeded foldhash of the NISS (senders
//!   choose NISS: the placement must not be predictable), reduced by multiply-shift. A slot is
//!   a header word — the NISS (37 bits; 0 = empty), the number of inline rows (0-7), the flags
//!   LARGE and SPILLED, and a version — and seven words, each one row encoded in a `u64`
//!   (`row`: institution < 4096, quality code < 1024, years 1900-2155). A person with at
//!   most seven encodable rows has them all in its slot: the check reads one line.
//!   [`Directory::with_capacity`] makes `persons × 8/5` slots (fill 0.625 once loaded: a known
//!   NISS is found after 1.8 consecutive slots on average, an unknown one after 4; at 0.75,
//!   2.5 and 8.5, and lookups were 20-40 ns slower);
//!   new persons get a slot while at most 85 % of the slots are taken, so every probe meets an
//!   empty slot and ends.
//! - **Arena**: persons loaded in bulk ([`Directory::insert_rows`], `&mut self`) with more than
//!   seven rows, or with a row that has no encoding, have their rows in one `Vec` of
//!   [`Integration`]s (decoded: no limit on their number, no decoding), appended to only while
//!   loading; their slot is LARGE and holds the offset, the length and a mask of the person's
//!   institutions (index mod 64), so that most checks on a large person need not read the
//!   arena. A run-time change to such a person moves them out (the old rows stay, unused,
//!   until the directory is dropped).
//! - **Spill map**: a `DashMap<NISS, Box<[Integration]>>` for what does not fit: a person who
//!   grows past seven rows or gets an unencodable row at run time (their slot is SPILLED and
//!   stays so until they have no row left), and persons who found no free slot (a full table,
//!   or [`Directory::new`]'s table of zero slots: then everything lives here). A person is in
//!   exactly one place.
//!
//! # Reading and writing
//!
//! A lookup probes the base: an inline slot is read under its seqlock (header with Acquire,
//! words, `fence(Acquire)`, header again; a changed or odd version retries), a LARGE one in
//! the arena (immutable), a SPILLED one in the spill map; a NISS with no slot is looked up in
//! the spill map only when that map is not empty (an atomic count), so most unknown persons
//! cost the probe alone. [`Directory::with_integrations`] decodes inline rows into an array on
//! the stack: no allocation.
//!
//! The integration check for a recipient reads [`Directory::with_integrations_of`]: that
//! institution's rows only, the others not even decoded. This matters more than it seems.
//! One miss into a 2 GiB table costs 250-500 ns on the reference machine; a check is fast
//! only when the processor starts the next check's miss before this one's completes, which it
//! does only if the instructions in between fit its reorder window. Decoding every row of the
//! person (dates through `time::Date`) did not fit: in one run the check cost 550 ns that way
//! against 300 ns reading the recipient's rows only (docs/BENCHMARKS-HISTORY.md, "After: the
//! slot table").
//!
//! Run-time changes ([`Directory::integrate`], [`Directory::remove`]) are rare next to
//! lookups; one mutex serialises them, so claiming a slot needs no compare-and-swap. A change
//! rewrites the person's slot in place: odd version, `fence(Release)`, the words, then the
//! next even version with Release. Moving a person to the spill map inserts there first and
//! then marks the slot; a slot never moves and a key never leaves its slot: a person who loses
//! their last row leaves a tombstone (count 0) that keeps probe chains intact and that a new
//! integration reuses. A SPILLED person does not come back inline (a reader that saw SPILLED
//! must find the rows in the map), except through a tombstone. The version has 22 bits: a
//! reader would need to sleep through exactly 2^21 changes of one person between its two reads
//! of the header to take a torn copy for a whole one.
//!
//! # Keeping integrations current
//!
//! An institution has at most one integration of a person per quality code and start day:
//! that triple names the integration. [`Directory::integrate`] with a triple the institution
//! already holds and another end *updates* it (closes an open file, reopens, extends or
//! shortens it) rather than adding a second row beside it, which would keep the old period
//! passing the integration check. An update is one change like any other: the person's slot
//! is rewritten once under its seqlock (or their spill-map entry replaced whole), so a
//! concurrent check sees the old end or the new one, never both rows or neither.
//! [`Directory::remove_matching`] withdraws one period (by its start) without touching the
//! institution's other periods under the same code. Loading keeps a file's rows as they are;
//! should one hold several rows with the same triple (written before updates existed), the
//! next `integrate` of that triple replaces them all with the one declared.
//!
//! Loading (`snapshot::read`) inserts on a thread that owns the directory; before each batch
//! of 4096 persons it reads their slots in a loop nothing waits on, so their misses overlap
//! and the inserts find them in the cache.
//!
//! Huge pages: the table is one allocation from the global allocator (no `unsafe` here to
//! `madvise` it). With the system's transparent huge pages in `madvise` mode, starting the
//! process with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc 2.35 and later) makes it
//! 2 MiB pages, which spares most page walks (docs/BENCHMARKS-HISTORY.md has the figures).
//!
//! # Layout
//!
//! - [`Directory`]: lookups and run-time changes.
//! - [`csv`]: the text form of the persons directory (`config/directory.csv`).
//! - [`snapshot`]: the binary form the hub loads at start and writes while it runs.
//! - `row`: one integration in one `u64`.

pub mod csv;
mod row;
pub mod snapshot;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, PoisonError};

use bcss_domain::{InstitutionIndex, Integration, Niss, Period, QualityCode};
use dashmap::DashMap;
use time::Date;

pub use bcss_domain::Integration as Row;

/// Rows a slot holds inline.
const INLINE: usize = 7;
/// Header: the NISS (a valid NISS is below 10^11 < 2^37, and never 0).
const KEY_MASK: u64 = (1 << 37) - 1;
/// Header: the number of inline rows.
const COUNT_SHIFT: u32 = 37;
const COUNT_MASK: u64 = 0b111 << COUNT_SHIFT;
/// Header: the rows are in the arena (words 0 and 1: offset and length).
const LARGE: u64 = 1 << 40;
/// Header: the rows are in the spill map.
const SPILLED: u64 = 1 << 41;
/// Header: the version's lowest bit; the version is odd while a writer changes the slot.
const WRITING: u64 = 1 << 42;
const VERSION_MASK: u64 = !(WRITING - 1);
/// Slots per person that [`Directory::with_capacity`] makes: 8/5, a fill of 0.625 once that
/// many persons are in (a lookup then reads 1.8 consecutive slots on average).
const SLOTS_PER_PERSON: (usize, usize) = (8, 5);
/// Most slots that may hold a person, in percent of the table.
const MAX_FILL_PERCENT: usize = 85;

/// A filler for the unused part of the stack array inline rows are decoded into.
const NO_ROW: Integration = Integration {
    institution: InstitutionIndex(0),
    quality: QualityCode(0),
    period: Period {
        start: Date::MIN,
        end: None,
    },
};

/// One person in the base table: one cache line.
#[repr(C, align(64))]
#[derive(Default)]
struct Slot {
    header: AtomicU64,
    words: [AtomicU64; INLINE],
}

/// Where a NISS is, or would go, in the base table.
#[derive(Clone, Copy)]
enum Place {
    /// The person's slot (possibly a tombstone).
    Slot(usize),
    /// No slot: the first empty slot of the probe.
    Vacant(usize),
    /// The table has no slot at all.
    NoTable,
}

/// The persons directory.
pub struct Directory {
    slots: Box<[Slot]>,
    /// Seeded per process: NISS are chosen by senders, so the placement must not be predictable
    /// (and SipHash would cost a third of a lookup).
    hasher: foldhash::fast::RandomState,
    /// Slots that may hold a person; the others stay empty so that every probe ends.
    max_claimed: usize,
    /// Rows of the LARGE slots; appended to only with `&mut self`.
    arena: Vec<Integration>,
    spill: DashMap<u64, Box<[Integration]>, foldhash::fast::RandomState>,
    /// Entries in `spill`.
    spilled: AtomicUsize,
    /// Serialises run-time changes; holds the number of slots taken.
    writer: Mutex<usize>,
    /// Persons with at least one integration.
    persons: AtomicUsize,
    integrations: AtomicUsize,
    /// Run-time changes so far (integrations added or updated, removals), to know when to
    /// snapshot.
    changes: AtomicU64,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("persons", &self.persons())
            .field("integrations", &self.integration_count())
            .field("slots", &self.slots.len())
            .field("arena_rows", &self.arena.len())
            .field("spilled", &self.spilled.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Directory {
    fn default() -> Directory {
        Directory::with_capacity(0)
    }
}

/// What [`Directory::integrate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrated {
    /// The institution had no integration of the person under this quality code starting on
    /// this day: the row was added.
    Created,
    /// The institution had one (or, from an old file, several) with another end: the
    /// integration now ends as declared.
    Updated,
    /// The identical integration was already there: nothing changed (idempotent).
    Unchanged,
}

/// [`Directory::integrate_at_most`] refused a new row: the institution already holds `held`
/// integrations of the person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyIntegrations {
    pub held: usize,
}

/// A place in [`Directory::list`]'s order: by person, then quality code, then period. A page
/// continues after the cursor of the previous one's last row (its token, for a client, is
/// [`ListCursor::token`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListCursor {
    niss: u64,
    quality: u16,
    start: i32,
    end: i32,
}

impl ListCursor {
    fn of(niss: Niss, row: &Integration) -> ListCursor {
        ListCursor {
            niss: niss.as_u64(),
            quality: row.quality.0,
            start: row.period.start.to_julian_day(),
            end: row.period.end.map_or(i32::MAX, |end| end.to_julian_day()),
        }
    }

    /// The cursor as a page token: opaque to clients (hex digits).
    pub fn token(self) -> String {
        format!(
            "{:x}.{:x}.{:x}.{:x}",
            self.niss, self.quality, self.start as u32, self.end as u32
        )
    }

    /// A token [`ListCursor::token`] made, or `None`.
    pub fn from_token(token: &str) -> Option<ListCursor> {
        let mut parts = token.split('.');
        let mut next = || u64::from_str_radix(parts.next()?, 16).ok();
        let cursor = ListCursor {
            niss: next()?,
            quality: u16::try_from(next()?).ok()?,
            start: u32::try_from(next()?).ok()? as i32,
            end: u32::try_from(next()?).ok()? as i32,
        };
        parts.next().is_none().then_some(cursor)
    }
}

impl Directory {
    /// An empty directory without a base table: everything goes to the spill map (small
    /// directories, tests, the CSV form).
    pub fn new() -> Directory {
        Directory::default()
    }

    /// A directory whose base table holds `persons` persons at fill 0.625 (loading a national
    /// snapshot: `SLOTS_PER_PERSON`), and up to 0.85 with persons added at run time.
    pub fn with_capacity(persons: usize) -> Directory {
        let slots = if persons == 0 {
            0
        } else {
            persons * SLOTS_PER_PERSON.0 / SLOTS_PER_PERSON.1 + 1
        };
        Directory {
            slots: (0..slots).map(|_| Slot::default()).collect(),
            hasher: Default::default(),
            max_claimed: slots * MAX_FILL_PERCENT / 100,
            arena: Vec::new(),
            spill: DashMap::with_hasher(Default::default()),
            spilled: AtomicUsize::new(0),
            writer: Mutex::new(0),
            persons: AtomicUsize::new(0),
            integrations: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
        }
    }

    /// The person's integrations, all institutions mixed (empty when unknown).
    pub fn integrations(&self, niss: Niss) -> Vec<Integration> {
        self.with_integrations(niss, <[Integration]>::to_vec)
    }

    /// Runs `f` on the person's integrations without allocating. Keep `f` short: for a person
    /// in the spill map it holds a shard's read lock.
    pub fn with_integrations<R>(&self, niss: Niss, f: impl FnOnce(&[Integration]) -> R) -> R {
        let key = niss.as_u64();
        match self.find(key) {
            Some(slot) => self.read_slot(key, slot, f),
            None => self.read_slotless(key, f),
        }
    }

    /// Runs `f` on the person's integrations with `institution` only, without allocating
    /// (unless that institution has more than seven rows for the person). This is what the
    /// integration check for a recipient reads: the other rows are not even decoded, which
    /// keeps a check short enough for the processor to start the next one's cache miss
    /// before this one's completes.
    pub fn with_integrations_of<R>(
        &self,
        niss: Niss,
        institution: InstitutionIndex,
        f: impl FnOnce(&[Integration]) -> R,
    ) -> R {
        let key = niss.as_u64();
        let Some(slot) = self.find(key) else {
            return self.read_slotless(key, |rows| only(rows, institution, f));
        };
        let (header, words) = Self::read_words(slot);
        if header & LARGE != 0 {
            // Most large persons have no row of a given institution: the slot says so
            // without a second cache miss into the arena.
            if words[2] & institution_bit(institution) == 0 {
                return f(&[]);
            }
            let (start, len) = (words[0] as usize, words[1] as usize);
            return only(&self.arena[start..start + len], institution, f);
        }
        if header & SPILLED != 0 {
            return self.read_slot(key, slot, |rows| only(rows, institution, f));
        }
        let count = ((header & COUNT_MASK) >> COUNT_SHIFT) as u32;
        let mut matching = 0u32;
        for (i, word) in words.iter().enumerate() {
            matching |= u32::from(row::institution(*word) == institution.0) << i;
        }
        matching &= (1 << count) - 1;
        // Few instructions for the usual cases, none or one row.
        if matching == 0 {
            return f(&[]);
        }
        let first = row::decode(words[matching.trailing_zeros() as usize]);
        matching &= matching - 1;
        if matching == 0 {
            return f(std::slice::from_ref(&first));
        }
        let mut rows = [first; INLINE];
        let mut found = 1;
        while matching != 0 {
            rows[found] = row::decode(words[matching.trailing_zeros() as usize]);
            found += 1;
            matching &= matching - 1;
        }
        f(&rows[..found])
    }

    /// Declares an integration: adds it, or updates the end of the institution's integration
    /// of the person under the same quality code and start (see the module docs, "Keeping
    /// integrations current"). An updated row keeps its place among the person's rows, so an
    /// inline person's slot is rewritten word for word.
    pub fn integrate(&self, niss: Niss, row: Integration) -> Integrated {
        self.integrate_at_most(niss, row, usize::MAX)
            .unwrap_or_else(|_| unreachable!("no institution holds usize::MAX rows"))
    }

    /// [`Directory::integrate`], unless it would add a row beside the `limit` the institution
    /// already holds for the person: then nothing changes, and the error says how many it
    /// holds. What an institution declares at run time goes through here, so that no client
    /// makes one person's rows, which every check about the person walks, grow without bound.
    pub fn integrate_at_most(
        &self,
        niss: Niss,
        row: Integration,
        limit: usize,
    ) -> Result<Integrated, TooManyIntegrations> {
        let same = |held: &Integration| {
            held.institution == row.institution
                && held.quality == row.quality
                && held.period.start == row.period.start
        };
        self.change(niss, |rows| {
            let held = rows.iter().filter(|held| same(held)).count();
            if held == 0 {
                let own = rows
                    .iter()
                    .filter(|held| held.institution == row.institution)
                    .count();
                if own >= limit {
                    return (Err(TooManyIntegrations { held: own }), false);
                }
                rows.push(row);
                return (Ok(Integrated::Created), true);
            }
            if held == 1 && rows.contains(&row) {
                return (Ok(Integrated::Unchanged), false);
            }
            // The first row with the triple takes the declared end; any other (an old file's
            // duplicate) goes, or it would keep its own period passing the check.
            let mut kept = false;
            rows.retain_mut(|held| {
                if !same(held) {
                    return true;
                }
                let keep = !kept;
                *held = row;
                kept = true;
                keep
            });
            (Ok(Integrated::Updated), true)
        })
    }

    /// Removes `institution`'s integrations of the person, all or those under `quality`.
    /// Returns how many were removed.
    pub fn remove(
        &self,
        niss: Niss,
        institution: InstitutionIndex,
        quality: Option<QualityCode>,
    ) -> usize {
        self.remove_matching(niss, institution, quality, None)
    }

    /// Removes `institution`'s integrations of the person that are under `quality` and start
    /// on `start`, each condition applying only when given (neither: all of them). Returns how
    /// many were removed.
    pub fn remove_matching(
        &self,
        niss: Niss,
        institution: InstitutionIndex,
        quality: Option<QualityCode>,
        start: Option<Date>,
    ) -> usize {
        self.change(niss, |rows| {
            let before = rows.len();
            rows.retain(|row| {
                row.institution != institution
                    || quality.is_some_and(|q| row.quality != q)
                    || start.is_some_and(|day| row.period.start != day)
            });
            let removed = before - rows.len();
            (removed, removed > 0)
        })
    }

    /// `institution`'s integrations, of one person or of everyone, in the order of
    /// [`ListCursor`]: at most `limit` after `after`, and the cursor of the last one returned
    /// when more remain. Listing everyone scans the whole directory; what it holds meanwhile is
    /// about a page (twice `limit`), not every row of the institution.
    pub fn list(
        &self,
        institution: InstitutionIndex,
        niss: Option<Niss>,
        after: Option<ListCursor>,
        limit: usize,
    ) -> (Vec<(Niss, Integration)>, Option<ListCursor>) {
        // One more than the page, to know whether more remain.
        let keep = limit.saturating_add(1);
        let mut found: Vec<(ListCursor, Niss, Integration)> = Vec::new();
        let mut mine = |key: u64, rows: &[Integration]| {
            let Ok(niss) = Niss::from_number(key) else {
                return;
            };
            for row in rows.iter().filter(|r| r.institution == institution) {
                let at = ListCursor::of(niss, row);
                if after.is_none_or(|after| at > after) {
                    found.push((at, niss, *row));
                }
            }
            // Only the first `keep` in order can be on the page: the rest goes as it grows.
            if found.len() >= keep.saturating_mul(2) {
                found.select_nth_unstable_by_key(keep - 1, |(at, ..)| *at);
                found.truncate(keep);
            }
        };
        match niss {
            Some(niss) => self.with_integrations(niss, |rows| mine(niss.as_u64(), rows)),
            None => self.for_each_person(mine),
        }
        found.sort_unstable_by_key(|(at, ..)| *at);
        let more = found.len() > limit;
        found.truncate(limit);
        let next = if more {
            found.last().map(|(at, ..)| *at)
        } else {
            None
        };
        let page = found
            .into_iter()
            .map(|(_, niss, row)| (niss, row))
            .collect();
        (page, next)
    }

    /// Sets a person's integrations at load time (`rows` without duplicates), merging with
    /// any already there (a file that lists the person twice) row by row through
    /// [`Directory::integrate`], so a row with the same institution, quality code and start as
    /// one already there updates its end. Setting a new person does not count as a change.
    pub fn insert_rows(&mut self, niss: Niss, rows: Box<[Integration]>) {
        if rows.is_empty() {
            return;
        }
        let key = niss.as_u64();
        let place = self.locate(key);
        let known = match place {
            Place::Slot(i) => *self.slots[i].header.get_mut() & (COUNT_MASK | LARGE | SPILLED) != 0,
            Place::Vacant(_) | Place::NoTable => {
                *self.spilled.get_mut() > 0 && self.spill.contains_key(&key)
            }
        };
        if known {
            for row in rows {
                self.integrate(niss, row);
            }
            return;
        }
        *self.persons.get_mut() += 1;
        *self.integrations.get_mut() += rows.len();
        let claimed = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let slot = match place {
            Place::Slot(i) => i,
            Place::Vacant(i) if *claimed < self.max_claimed => {
                *claimed += 1;
                i
            }
            Place::Vacant(_) | Place::NoTable => {
                *self.spilled.get_mut() += 1;
                self.spill.insert(key, rows);
                return;
            }
        };
        let slot = &mut self.slots[slot];
        let version = *slot.header.get_mut() & VERSION_MASK;
        let header = match encode_inline(&rows) {
            Some(words) => {
                for (word, value) in slot.words.iter_mut().zip(words) {
                    *word.get_mut() = value;
                }
                key | (rows.len() as u64) << COUNT_SHIFT
            }
            None => {
                *slot.words[0].get_mut() = self.arena.len() as u64;
                *slot.words[1].get_mut() = rows.len() as u64;
                *slot.words[2].get_mut() = rows
                    .iter()
                    .fold(0, |bits, row| bits | institution_bit(row.institution));
                self.arena.extend_from_slice(&rows);
                key | LARGE
            }
        };
        *slot.header.get_mut() = header | version;
    }

    /// Reads the first slot of each of `persons`' probes, so that inserting them next finds
    /// their slots in the cache. A loop whose loads nothing waits on: the processor has many
    /// cache misses in flight at once, where inserting one person after the other waits for
    /// each (a batch of 4096 persons' slots is 256 KiB: it stays in the L2 cache).
    pub(crate) fn warm(&self, persons: &[Niss]) {
        if self.slots.is_empty() {
            return;
        }
        let seen = persons.iter().fold(0, |seen, niss| {
            seen ^ self.slots[self.home(niss.as_u64())]
                .header
                .load(Ordering::Relaxed)
        });
        std::hint::black_box(seen);
    }

    /// Calls `f` on every person (as the NISS's number) and their integrations, in no
    /// particular order. Takes no lock but a spill-map shard's read lock for a spilled person:
    /// changes go on meanwhile, and each person is seen once, in one state.
    pub fn for_each_person(&self, mut f: impl FnMut(u64, &[Integration])) {
        for slot in &self.slots {
            let key = slot.header.load(Ordering::Acquire) & KEY_MASK;
            if key != 0 {
                self.read_slot(key, slot, |rows| {
                    if !rows.is_empty() {
                        f(key, rows);
                    }
                });
            }
        }
        // Then the persons without a slot (those with one were seen above). A person never
        // loses a slot, and one without a slot gets one only after leaving the spill map.
        if self.spilled.load(Ordering::Acquire) > 0 {
            for entry in self.spill.iter() {
                if self.find(*entry.key()).is_none() {
                    f(*entry.key(), entry.value());
                }
            }
        }
    }

    /// How many changes (integrations created or updated, removals) the directory has seen: a
    /// snapshot taken at `n` is current while this is still `n`.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// How many persons the base table was sized for (0: everything in the spill map).
    pub fn base_capacity(&self) -> usize {
        self.slots.len() * SLOTS_PER_PERSON.1 / SLOTS_PER_PERSON.0
    }

    /// Number of persons with at least one integration.
    pub fn persons(&self) -> usize {
        self.persons.load(Ordering::Relaxed)
    }

    /// Number of integrations.
    pub fn integration_count(&self) -> usize {
        self.integrations.load(Ordering::Relaxed)
    }

    /// Starts bringing the person's slot into cache: a caller that knows the person early (the
    /// hub, as soon as the NISS is validated) calls this, does other work, and finds the slot
    /// in cache at the check instead of waiting for memory then (docs/BENCHMARKS.md,
    /// "National-scale directory"). On x86_64 a prefetch instruction (the crate's one `unsafe`,
    /// measured in that section: an ordinary load in its place did less); elsewhere a plain
    /// load whose value is not needed, which the processor completes while it goes on.
    #[inline]
    pub fn prefetch(&self, niss: Niss) {
        if !self.slots.is_empty() {
            let slot = &self.slots[self.home(niss.as_u64())];
            #[cfg(target_arch = "x86_64")]
            prefetch_x86(slot);
            #[cfg(not(target_arch = "x86_64"))]
            std::hint::black_box(slot.header.load(Ordering::Relaxed));
        }
    }

    /// The first slot of `key`'s probe.
    #[inline]
    fn home(&self, key: u64) -> usize {
        let hash = self.hasher.hash_one(key);
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    /// The person's slot, for a reader.
    #[inline]
    fn find(&self, key: u64) -> Option<&Slot> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(key);
        loop {
            let slot = &self.slots[i];
            let found = slot.header.load(Ordering::Acquire) & KEY_MASK;
            if found == key {
                return Some(slot);
            }
            if found == 0 {
                return None;
            }
            i += 1;
            if i == self.slots.len() {
                i = 0;
            }
        }
    }

    /// Where the person is or would go, for a writer (which holds the writer lock or
    /// `&mut self`, so slots do not change under it).
    fn locate(&self, key: u64) -> Place {
        if self.slots.is_empty() {
            return Place::NoTable;
        }
        let mut i = self.home(key);
        loop {
            let found = self.slots[i].header.load(Ordering::Relaxed) & KEY_MASK;
            if found == key {
                return Place::Slot(i);
            }
            if found == 0 {
                return Place::Vacant(i);
            }
            i += 1;
            if i == self.slots.len() {
                i = 0;
            }
        }
    }

    /// A consistent copy of a slot (its header and words), whatever writers do meanwhile.
    #[inline]
    fn read_words(slot: &Slot) -> (u64, [u64; INLINE]) {
        loop {
            let header = slot.header.load(Ordering::Acquire);
            if header & WRITING == 0 {
                let words = std::array::from_fn(|i| slot.words[i].load(Ordering::Relaxed));
                fence(Ordering::Acquire);
                if slot.header.load(Ordering::Relaxed) == header {
                    return (header, words);
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Reads `key`'s rows from its slot (or where the slot says they are).
    fn read_slot<R>(&self, key: u64, slot: &Slot, f: impl FnOnce(&[Integration]) -> R) -> R {
        let (header, words) = Self::read_words(slot);
        if header & (LARGE | SPILLED) == 0 {
            let count = ((header & COUNT_MASK) >> COUNT_SHIFT) as usize;
            let mut rows = [NO_ROW; INLINE];
            for (row, word) in rows.iter_mut().zip(&words[..count]) {
                *row = row::decode(*word);
            }
            f(&rows[..count])
        } else if header & LARGE != 0 {
            let (start, len) = (words[0] as usize, words[1] as usize);
            f(&self.arena[start..start + len])
        } else {
            // SPILLED: the map holds the person's rows for as long as the flag is set.
            match self.spill.get(&key) {
                Some(rows) => f(&rows),
                None => f(&[]),
            }
        }
    }

    /// Reads the rows of a person without a slot.
    fn read_slotless<R>(&self, key: u64, f: impl FnOnce(&[Integration]) -> R) -> R {
        if self.spilled.load(Ordering::Acquire) > 0
            && let Some(rows) = self.spill.get(&key)
        {
            return f(&rows);
        }
        f(&[])
    }

    /// A run-time change: `edit` changes the person's rows and says whether it changed them
    /// (an update keeps their number, so the number cannot tell), then they are stored back
    /// where they fit.
    fn change<R>(&self, niss: Niss, edit: impl FnOnce(&mut Vec<Integration>) -> (R, bool)) -> R {
        let mut claimed = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let key = niss.as_u64();
        let place = self.locate(key);
        let mut rows = match place {
            Place::Slot(i) => self.slot_rows(key, &self.slots[i]),
            Place::Vacant(_) | Place::NoTable => self
                .spill
                .get(&key)
                .map(|rows| rows.to_vec())
                .unwrap_or_default(),
        };
        let before = rows.len();
        let (result, changed) = edit(&mut rows);
        if !changed {
            return result;
        }
        let after = rows.len();
        debug_assert!(
            before > 0 || after > 0,
            "no rows before or after is no change"
        );
        match place {
            // Whatever the count, the slot is rewritten whole (or the spill entry replaced):
            // an update of one row is as atomic for readers as an added or removed one.
            Place::Slot(i) => self.store(&self.slots[i], key, rows),
            Place::Vacant(i) if before == 0 && *claimed < self.max_claimed => {
                *claimed += 1;
                self.store(&self.slots[i], key, rows);
            }
            _ if after == 0 => {
                self.spill.remove(&key);
                self.spilled.fetch_sub(1, Ordering::Release);
            }
            _ => {
                if before == 0 {
                    self.spilled.fetch_add(1, Ordering::Release);
                }
                self.spill.insert(key, rows.into_boxed_slice());
            }
        }
        drop(claimed);
        match (before, after) {
            (0, _) => self.persons.fetch_add(1, Ordering::Relaxed),
            (_, 0) => self.persons.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
        if after > before {
            self.integrations
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.integrations
                .fetch_sub(before - after, Ordering::Relaxed);
        }
        self.changes.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// The rows of a slot, for the writer (nothing changes them meanwhile).
    fn slot_rows(&self, key: u64, slot: &Slot) -> Vec<Integration> {
        let header = slot.header.load(Ordering::Relaxed);
        if header & SPILLED != 0 {
            self.spill
                .get(&key)
                .map(|rows| rows.to_vec())
                .unwrap_or_default()
        } else if header & LARGE != 0 {
            let start = slot.words[0].load(Ordering::Relaxed) as usize;
            let len = slot.words[1].load(Ordering::Relaxed) as usize;
            self.arena[start..start + len].to_vec()
        } else {
            let count = ((header & COUNT_MASK) >> COUNT_SHIFT) as usize;
            slot.words[..count]
                .iter()
                .map(|word| row::decode(word.load(Ordering::Relaxed)))
                .collect()
        }
    }

    /// Stores a person's new rows in their slot (or the slot they are claiming), inline when
    /// they fit and the person is not spilled already, else in the spill map.
    fn store(&self, slot: &Slot, key: u64, rows: Vec<Integration>) {
        let spilled = slot.header.load(Ordering::Relaxed) & SPILLED != 0;
        if rows.is_empty() {
            // A tombstone first: a reader that still finds SPILLED and then no entry reads
            // "no rows", which the person has had since.
            self.publish(slot, key, &[]);
            if spilled {
                self.spill.remove(&key);
                self.spilled.fetch_sub(1, Ordering::Release);
            }
        } else if spilled {
            self.spill.insert(key, rows.into_boxed_slice());
        } else if let Some(words) = encode_inline(&rows) {
            self.publish(
                slot,
                key | (rows.len() as u64) << COUNT_SHIFT,
                &words[..rows.len()],
            );
        } else {
            // Into the map first: a reader that sees SPILLED finds the rows there.
            self.spilled.fetch_add(1, Ordering::Release);
            self.spill.insert(key, rows.into_boxed_slice());
            self.publish(slot, key | SPILLED, &[]);
        }
    }

    /// Rewrites a slot under its seqlock: readers retry rather than see a part of it.
    fn publish(&self, slot: &Slot, header: u64, words: &[u64]) {
        let old = slot.header.load(Ordering::Relaxed);
        let version = old & VERSION_MASK;
        slot.header.store(old | WRITING, Ordering::Relaxed);
        fence(Ordering::Release);
        for (word, value) in slot.words.iter().zip(words) {
            word.store(*value, Ordering::Relaxed);
        }
        slot.header.store(
            header | version.wrapping_add(2 * WRITING),
            Ordering::Release,
        );
    }
}

/// A LARGE slot's word 2 has this bit set when the person has rows of `institution` (or of
/// another institution with the same index modulo 64).
#[inline]
fn institution_bit(institution: InstitutionIndex) -> u64 {
    1 << (institution.0 % 64)
}

/// Runs `f` on those of `rows` that are `institution`'s.
fn only<R>(
    rows: &[Integration],
    institution: InstitutionIndex,
    f: impl FnOnce(&[Integration]) -> R,
) -> R {
    let mut kept = [NO_ROW; INLINE];
    let mut found = 0;
    for row in rows.iter().filter(|row| row.institution == institution) {
        if found == INLINE {
            let all: Vec<Integration> = rows
                .iter()
                .filter(|row| row.institution == institution)
                .copied()
                .collect();
            return f(&all);
        }
        kept[found] = *row;
        found += 1;
    }
    f(&kept[..found])
}

/// The rows as a slot's words, when there are at most [`INLINE`] and each has an encoding.
fn encode_inline(rows: &[Integration]) -> Option<[u64; INLINE]> {
    if rows.len() > INLINE {
        return None;
    }
    let mut words = [0; INLINE];
    for (word, row) in words.iter_mut().zip(rows) {
        *word = row::encode(row)?;
    }
    Some(words)
}

/// A prefetch instruction for `slot`'s cache line.
#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
fn prefetch_x86(slot: &Slot) {
    let line: *const Slot = slot;
    // SAFETY: `prefetch` only hints the cache; it reads nothing the program sees and cannot
    // fault, and `line` points into a live slot. SSE is in every x86_64 processor.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
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

    /// The `i`-th test person (distinct for distinct `i` below 900).
    fn person(i: u64) -> Niss {
        Niss::compose(850_101, i as u16 + 1, false).unwrap()
    }

    #[test]
    fn an_institution_adds_no_row_beyond_its_limit_for_a_person() {
        let directory = Directory::with_capacity(10);
        let a = person(1);
        let limit = 2;
        // (institution, quality, end, expected)
        let closed = Some(date!(2024 - 06 - 30));
        let full = Err(TooManyIntegrations { held: 2 });
        let table = [
            (1, 1, None, Ok(Integrated::Created)),
            (1, 2, None, Ok(Integrated::Created)),
            (1, 3, None, full),
            (1, 1, closed, Ok(Integrated::Updated)),
            (1, 1, closed, Ok(Integrated::Unchanged)),
            (2, 1, None, Ok(Integrated::Created)),
            (1, 4, None, full),
        ];
        for (step, (institution, quality, end, expected)) in table.into_iter().enumerate() {
            let mut new = row(institution, quality);
            new.period.end = end;
            assert_eq!(
                directory.integrate_at_most(a, new, limit),
                expected,
                "step {step}"
            );
        }
        assert_eq!(directory.integration_count(), 3);
    }

    #[test]
    fn integrate_remove_and_list_own_rows() {
        for directory in [Directory::new(), Directory::with_capacity(10)] {
            let a = Niss::parse("85073003328").unwrap();
            let b = Niss::parse("17012500130").unwrap();
            assert_eq!(directory.integrate(a, row(1, 1)), Integrated::Created);
            assert_eq!(
                directory.integrate(a, row(1, 1)),
                Integrated::Unchanged,
                "idempotent"
            );
            assert_eq!(directory.integrate(a, row(1, 2)), Integrated::Created);
            assert_eq!(directory.integrate(a, row(2, 1)), Integrated::Created);
            assert_eq!(directory.integrate(b, row(1, 3)), Integrated::Created);
            assert_eq!(directory.integration_count(), 4);
            assert_eq!(
                directory.list(InstitutionIndex(1), None, None, 10).0.len(),
                3
            );
            assert_eq!(
                directory
                    .list(InstitutionIndex(1), Some(a), None, 10)
                    .0
                    .len(),
                2
            );
            let (page, next) = directory.list(InstitutionIndex(1), None, None, 2);
            assert_eq!(page.len(), 2);
            let next = ListCursor::from_token(&next.expect("more").token()).unwrap();
            let (rest, last) = directory.list(InstitutionIndex(1), None, Some(next), 2);
            assert_eq!((rest.len(), last), (1, None));
            assert!(
                page.iter().all(|row| !rest.contains(row)),
                "pages do not overlap"
            );
            // A page past the end (the cursor comes from a client's page token).
            let end = ListCursor::from_token("ffffffffffffffff.ffff.ffffffff.ffffffff").unwrap();
            let (none, more) = directory.list(InstitutionIndex(1), None, Some(end), 10);
            assert_eq!((none.len(), more), (0, None));
            for bad in ["", "1.2.3", "1.2.3.4.5", "x.1.1.1", "1.10000.1.1"] {
                assert_eq!(ListCursor::from_token(bad), None, "{bad}");
            }
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
            assert_eq!(directory.changes(), 7);
        }
    }

    #[test]
    fn each_kind_of_person_lands_where_it_fits() {
        let mut directory = Directory::with_capacity(4);
        let small: Box<[Integration]> = (0..7).map(|i| row(i, 1)).collect();
        let large: Box<[Integration]> = (0..8).map(|i| row(i, 1)).collect();
        let odd: Box<[Integration]> = Box::new([row(4096, 1)]);
        directory.insert_rows(person(0), small.clone());
        directory.insert_rows(person(1), large.clone());
        directory.insert_rows(person(2), odd.clone());
        assert_eq!(
            directory.arena.len(),
            9,
            "the large and the unencodable person"
        );
        assert_eq!(directory.spilled.load(Ordering::Relaxed), 0);
        // Run time: growing past seven rows spills; so does an unencodable row.
        directory.integrate(person(0), row(9, 1));
        directory.integrate(person(3), row(1, 1));
        directory.integrate(person(3), row(5000, 1));
        assert_eq!(directory.spilled.load(Ordering::Relaxed), 2);
        assert_eq!(directory.integrations(person(0)).len(), 8);
        assert_eq!(directory.integrations(person(1)), large.to_vec());
        assert_eq!(directory.integrations(person(2)), odd.to_vec());
        // A large person shrunk to seven encodable rows goes inline.
        directory.remove(person(1), InstitutionIndex(7), None);
        assert_eq!(directory.integrations(person(1)), large[..7].to_vec());
        assert_eq!(directory.spilled.load(Ordering::Relaxed), 2);
        // The last row out leaves a tombstone, which a new row reuses inline.
        for i in 0..10 {
            directory.remove(person(0), InstitutionIndex(i), None);
        }
        assert_eq!(directory.spilled.load(Ordering::Relaxed), 1);
        assert_eq!(
            directory.integrate(person(0), row(3, 3)),
            Integrated::Created
        );
        assert_eq!(directory.spilled.load(Ordering::Relaxed), 1);
        assert_eq!(directory.integrations(person(0)), vec![row(3, 3)]);
        assert_eq!(directory.persons(), 4);
        assert_eq!(directory.integration_count(), 1 + 7 + 1 + 2);
        // One institution's rows only, wherever they are.
        fn of(directory: &Directory, niss: Niss, institution: u16) -> Vec<Integration> {
            directory.with_integrations_of(
                niss,
                InstitutionIndex(institution),
                <[Integration]>::to_vec,
            )
        }
        assert_eq!(of(&directory, person(1), 3), vec![row(3, 1)], "inline");
        assert_eq!(of(&directory, person(2), 4096), vec![row(4096, 1)], "arena");
        assert_eq!(
            of(&directory, person(2), 0),
            vec![],
            "arena, institution mask hit, no row"
        );
        assert_eq!(
            of(&directory, person(3), 5000),
            vec![row(5000, 1)],
            "spilled"
        );
        assert_eq!(of(&directory, person(4), 1), vec![], "unknown");
        // More than seven rows of one institution.
        let many: Box<[Integration]> = (0..9).map(|q| row(2, q)).collect();
        directory.insert_rows(person(5), many.clone());
        assert_eq!(of(&directory, person(5), 2), many.to_vec());
        assert_eq!(of(&directory, person(5), 1), vec![]);
    }

    /// `institution`'s row under `quality` from `start` to `end`.
    fn period_row(institution: u16, quality: u16, start: Date, end: Option<Date>) -> Integration {
        Integration {
            institution: InstitutionIndex(institution),
            quality: QualityCode(quality),
            period: Period { start, end },
        }
    }

    /// Where the person's rows are.
    fn storage(directory: &Directory, niss: Niss) -> &'static str {
        match directory.locate(niss.as_u64()) {
            Place::Slot(i) => {
                let header = directory.slots[i].header.load(Ordering::Relaxed);
                if header & LARGE != 0 {
                    "large"
                } else if header & SPILLED != 0 {
                    "spilled"
                } else {
                    "inline"
                }
            }
            Place::Vacant(_) | Place::NoTable => "slotless",
        }
    }

    /// Closing, shortening, extending and reopening an integration (same institution, quality
    /// code and start) update its one row, wherever the person's rows are: inline, in the
    /// arena, spilled at run time, without a slot; also to an end that has no slot encoding.
    #[test]
    fn a_declared_end_updates_the_integration_wherever_the_person_lives() {
        let start = date!(2024 - 01 - 01);
        let open = period_row(1, 1, start, None);
        let mut table = Directory::with_capacity(4);
        table.insert_rows(person(0), Box::new([open, row(2, 1)]));
        table.insert_rows(person(1), (0..8).map(|i| row(i, 1)).collect());
        for i in 0..8 {
            table.integrate(person(2), row(i, 1));
        }
        let no_table = Directory::new();
        no_table.integrate(person(3), open);
        no_table.integrate(person(3), row(2, 1));
        let cases = [
            ("inline", &table, person(0), "inline"),
            ("large", &table, person(1), "spilled"),
            ("spilled", &table, person(2), "spilled"),
            ("slotless", &no_table, person(3), "slotless"),
        ];
        let closed = Some(date!(2024 - 06 - 30));
        // (end declared, what integrate answers)
        let steps = [
            (closed, Integrated::Updated),
            (closed, Integrated::Unchanged),
            (Some(date!(2025 - 12 - 31)), Integrated::Updated),
            (Some(date!(2024 - 03 - 31)), Integrated::Updated),
            (None, Integrated::Updated),
            (Some(date!(2200 - 01 - 01)), Integrated::Updated),
            (closed, Integrated::Updated),
        ];
        for (name, directory, niss, after) in cases {
            assert_eq!(storage(directory, niss), name, "{name}: before");
            let others: Vec<Integration> = directory
                .integrations(niss)
                .into_iter()
                .filter(|r| r.institution != InstitutionIndex(1))
                .collect();
            let (count, changes) = (directory.integration_count(), directory.changes());
            let mut updates = 0;
            for (step, (end, expected)) in steps.into_iter().enumerate() {
                let declared = period_row(1, 1, start, end);
                assert_eq!(
                    directory.integrate(niss, declared),
                    expected,
                    "{name}: {end:?}"
                );
                updates += u64::from(expected == Integrated::Updated);
                if step == 0 {
                    assert_eq!(storage(directory, niss), after, "{name}: after an update");
                }
                let mine = directory.with_integrations_of(
                    niss,
                    InstitutionIndex(1),
                    <[Integration]>::to_vec,
                );
                assert_eq!(
                    mine,
                    vec![declared],
                    "{name}: one row, with the end declared"
                );
                let rest: Vec<Integration> = directory
                    .integrations(niss)
                    .into_iter()
                    .filter(|r| r.institution != InstitutionIndex(1))
                    .collect();
                assert_eq!(rest, others, "{name}: the other rows stay as they were");
            }
            assert_eq!(directory.integration_count(), count, "{name}: no row added");
            assert_eq!(
                directory.changes(),
                changes + updates,
                "{name}: each update is a change (a snapshot follows)"
            );
            // Another start is another integration.
            let later = period_row(1, 1, date!(2026 - 01 - 01), None);
            assert_eq!(directory.integrate(niss, later), Integrated::Created);
            assert_eq!(directory.integration_count(), count + 1, "{name}");
        }
        assert_eq!(table.persons(), 3);
        assert_eq!(no_table.persons(), 1);
    }

    /// An old file may hold the same integration twice (open, and closed beside it, as
    /// `integrate` made them before updates): the next declaration of it leaves one row.
    #[test]
    fn a_declaration_replaces_every_row_an_old_file_held_for_the_period() {
        for capacity in [0, 4] {
            let mut directory = Directory::with_capacity(capacity);
            let start = date!(2024 - 01 - 01);
            let open = period_row(1, 1, start, None);
            let closed = period_row(1, 1, start, Some(date!(2024 - 06 - 30)));
            let earlier = period_row(1, 1, date!(2020 - 01 - 01), Some(date!(2020 - 12 - 31)));
            directory.insert_rows(person(0), Box::new([open, closed, earlier]));
            assert_eq!(
                directory.integration_count(),
                3,
                "loaded as the file has it"
            );
            assert_eq!(
                directory.integrate(person(0), closed),
                Integrated::Updated,
                "capacity {capacity}"
            );
            assert_eq!(
                sorted(&directory.integrations(person(0))),
                sorted(&[closed, earlier]),
                "capacity {capacity}"
            );
            assert_eq!(directory.integration_count(), 2);
            assert_eq!(directory.changes(), 1);
        }
    }

    /// A removal with a start takes that period only: not the institution's other periods
    /// under the code, not its other codes' (unless no code is given), not other institutions'.
    #[test]
    fn a_removal_by_start_takes_that_period_only() {
        let earlier = period_row(1, 1, date!(2020 - 01 - 01), Some(date!(2020 - 12 - 31)));
        let current = period_row(1, 1, date!(2024 - 01 - 01), None);
        let other_code = period_row(1, 2, date!(2024 - 01 - 01), None);
        let other_institution = period_row(2, 1, date!(2024 - 01 - 01), None);
        let mut large = Directory::with_capacity(10);
        // A large person: the same rows, and more periods under code 1 (in the arena).
        let mut rows = vec![earlier, current, other_code, other_institution];
        rows.extend((0..6).map(|year| {
            let start = Date::from_calendar_date(2010 + year, time::Month::March, 1).unwrap();
            period_row(1, 1, start, Some(start + time::Duration::days(100)))
        }));
        large.insert_rows(person(0), rows.clone().into_boxed_slice());
        assert_eq!(storage(&large, person(0)), "large");
        let small = Directory::with_capacity(10);
        let none = Directory::new();
        for directory in [&small, &none] {
            for row in &rows[..4] {
                directory.integrate(person(0), *row);
            }
        }
        for (name, directory) in [("inline", &small), ("slotless", &none), ("large", &large)] {
            let a = person(0);
            let one = InstitutionIndex(1);
            let mut left = sorted(&directory.integrations(a));
            assert_eq!(
                directory.remove_matching(a, one, Some(QualityCode(1)), Some(earlier.period.start)),
                1,
                "{name}"
            );
            left.retain(|r| *r != earlier);
            assert_eq!(sorted(&directory.integrations(a)), left, "{name}");
            // A start no period of the code has: nothing removed, no change to snapshot.
            let changes = directory.changes();
            let none_then =
                directory.remove_matching(a, one, Some(QualityCode(2)), Some(earlier.period.start));
            assert_eq!((none_then, directory.changes()), (0, changes), "{name}");
            // A start without a code: each of the caller's codes' period starting that day.
            assert_eq!(
                directory.remove_matching(a, one, None, Some(current.period.start)),
                2,
                "{name}"
            );
            left.retain(|r| *r != current && *r != other_code);
            assert_eq!(sorted(&directory.integrations(a)), left, "{name}");
            assert!(left.contains(&other_institution), "{name}");
            assert_eq!(directory.integration_count(), left.len(), "{name}");
        }
    }

    /// While an integration is closed and reopened over and over, a reader sees it once, with
    /// one end or the other: never two rows, never none, and the person's other rows intact.
    #[test]
    fn readers_see_an_updated_integration_once() {
        let start = date!(2024 - 01 - 01);
        let mut table = Directory::with_capacity(4);
        table.insert_rows(
            person(0),
            Box::new([period_row(1, 1, start, None), row(2, 1)]),
        );
        let mut large: Vec<Integration> = (2..10).map(|i| row(i, 1)).collect();
        large.push(period_row(1, 1, start, None));
        table.insert_rows(person(1), large.into_boxed_slice());
        let no_table = Directory::new();
        no_table.integrate(person(2), period_row(1, 1, start, None));
        no_table.integrate(person(2), row(2, 1));
        let watched = [
            (&table, person(0), 2),
            (&table, person(1), 9),
            (&no_table, person(2), 2),
        ];
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    // At least one pass, however fast the writer.
                    let mut last = false;
                    while !last {
                        last = done.load(Ordering::Acquire);
                        for (directory, niss, count) in watched {
                            let mine = directory.with_integrations_of(
                                niss,
                                InstitutionIndex(1),
                                <[Integration]>::to_vec,
                            );
                            assert_eq!(mine.len(), 1, "{mine:?}");
                            assert_eq!(mine[0].period.start, start);
                            assert_eq!(directory.integrations(niss).len(), count);
                        }
                    }
                });
            }
            scope.spawn(|| {
                // Set however the writer ends: a writer that panics must not leave the
                // readers waiting forever.
                struct Done<'a>(&'a AtomicBool);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::Release);
                    }
                }
                let _done = Done(&done);
                for k in 0..3000u16 {
                    let end = (k % 2 == 0).then(|| start + time::Duration::days(i64::from(k)));
                    for (directory, niss, _) in watched {
                        let updated = directory.integrate(niss, period_row(1, 1, start, end));
                        assert_eq!(updated, Integrated::Updated);
                    }
                }
            });
        });
        assert_eq!(table.integration_count(), 11);
    }

    /// The model test's reproducible draws (ChaCha8 from a seed).
    struct Draw(rand_chacha::ChaCha8Rng);

    impl Draw {
        fn below(&mut self, n: u64) -> u64 {
            rand::RngExt::random_range(&mut self.0, 0..n)
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }

        /// A row, one in five of them with a field outside the slot encoding.
        fn row(&mut self) -> Integration {
            let odd = self.below(5) == 0;
            let institution = if odd && self.below(3) == 0 {
                self.pick(&[4095, 4096, 9000])
            } else {
                self.below(5) as u16
            };
            let quality = if odd && self.below(2) == 0 {
                self.pick(&[1023, 1024, 2000])
            } else {
                self.pick(&[0, 1, 2, 902])
            };
            let year = if odd {
                self.pick(&[1850, 1899, 1900, 2155, 2156])
            } else {
                self.pick(&[1990, 2024])
            };
            let start = Date::from_ordinal_date(year, self.below(365) as u16 + 1).unwrap();
            Integration {
                institution: InstitutionIndex(institution),
                quality: QualityCode(quality),
                period: Period {
                    start,
                    end: self.end(start),
                },
            }
        }

        /// An end for a period from `start`: open one time in three (some past 2155, which
        /// has no slot encoding).
        fn end(&mut self, start: Date) -> Option<Date> {
            match self.below(3) {
                0 => None,
                _ => Some(start + time::Duration::days(self.below(500) as i64)),
            }
        }
    }

    /// What `integrate` does, on the model: a row with a held (institution, quality, start)
    /// replaces every row with that triple.
    fn model_integrate(rows: &mut Vec<Integration>, new: Integration) -> Integrated {
        let triple = |r: &Integration| (r.institution, r.quality, r.period.start);
        let held: Vec<Integration> = rows
            .iter()
            .filter(|r| triple(r) == triple(&new))
            .copied()
            .collect();
        if held.is_empty() {
            rows.push(new);
            return Integrated::Created;
        }
        if held == [new] {
            return Integrated::Unchanged;
        }
        rows.retain(|r| triple(r) != triple(&new));
        rows.push(new);
        Integrated::Updated
    }

    type Model = HashMap<u64, Vec<Integration>>;

    fn sort_key(row: &Integration) -> (u16, u16, Date, Option<Date>) {
        (
            row.institution.0,
            row.quality.0,
            row.period.start,
            row.period.end,
        )
    }

    fn sorted(rows: &[Integration]) -> Vec<Integration> {
        let mut rows = rows.to_vec();
        rows.sort_by_key(sort_key);
        rows
    }

    fn assert_matches(directory: &Directory, model: &Model, changes: u64, pool: &[Niss], at: &str) {
        for niss in pool {
            let expected = sorted(model.get(&niss.as_u64()).map_or(&[], |r| r.as_slice()));
            let found = directory.with_integrations(*niss, sorted);
            assert_eq!(found, expected, "{at}: person {}", niss.as_u64() % 1000);
            // 4096 and 0 share a bit of a large person's institution mask, so do 9000 and 40.
            for institution in [0, 1, 2, 3, 4, 40, 4095, 4096, 9000] {
                let institution = InstitutionIndex(institution);
                let mine: Vec<Integration> = expected
                    .iter()
                    .filter(|row| row.institution == institution)
                    .copied()
                    .collect();
                let found = directory.with_integrations_of(*niss, institution, sorted);
                assert_eq!(
                    found,
                    mine,
                    "{at}: person {}, {institution:?}",
                    niss.as_u64() % 1000
                );
            }
        }
        let persons = model.values().filter(|rows| !rows.is_empty()).count();
        let integrations: usize = model.values().map(Vec::len).sum();
        assert_eq!(directory.persons(), persons, "{at}: persons");
        assert_eq!(directory.integration_count(), integrations, "{at}: rows");
        assert_eq!(directory.changes(), changes, "{at}: changes");
        let mut seen = HashMap::new();
        directory.for_each_person(|key, rows| {
            assert!(!rows.is_empty(), "{at}: a person without rows");
            assert!(
                seen.insert(key, sorted(rows)).is_none(),
                "{at}: a person seen twice"
            );
        });
        let expected: HashMap<u64, Vec<Integration>> = model
            .iter()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(key, rows)| (*key, sorted(rows)))
            .collect();
        assert_eq!(seen, expected, "{at}: for_each_person");
        for institution in [1, 4096] {
            let institution = InstitutionIndex(institution);
            let mut expected: Vec<(u64, Integration)> = model
                .iter()
                .flat_map(|(key, rows)| rows.iter().map(move |row| (*key, *row)))
                .filter(|(_, row)| row.institution == institution)
                .collect();
            expected.sort_by_key(|(key, row)| (*key, sort_key(row)));
            let (page, more) = directory.list(institution, None, None, usize::MAX / 2);
            let mut listed: Vec<(u64, Integration)> = page
                .into_iter()
                .map(|(niss, row)| (niss.as_u64(), row))
                .collect();
            listed.sort_by_key(|(key, row)| (*key, sort_key(row)));
            assert_eq!(listed, expected, "{at}: list");
            assert!(more.is_none());
            // Page by page, three at a time (held in memory meanwhile: about six), the same
            // rows in the same order.
            let mut paged = Vec::new();
            let mut after = None;
            loop {
                let (page, next) = directory.list(institution, None, after, 3);
                assert!(page.len() <= 3, "{at}: a page");
                paged.extend(page.into_iter().map(|(niss, row)| (niss.as_u64(), row)));
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let mut in_list_order = expected.clone();
            in_list_order.sort_by_key(|(key, row)| {
                let niss = Niss::from_number(*key).unwrap();
                ListCursor::of(niss, row)
            });
            assert_eq!(paged, in_list_order, "{at}: pages");
        }
    }

    /// Random integrations, removals and bulk inserts against a plain map, checked after every
    /// step: no table, a table that fills up, a roomy table.
    #[test]
    fn behaves_like_a_map_whatever_the_storage() {
        for (capacity, seed) in [(0, 1), (6, 2), (6, 3), (40, 4), (40, 5)] {
            let mut directory = Directory::with_capacity(capacity);
            let mut model = Model::new();
            let mut changes = 0;
            let mut draw = Draw(rand::SeedableRng::seed_from_u64(seed));
            let pool: Vec<Niss> = (0..40).map(person).collect();
            for step in 0..1000 {
                let niss = draw.pick(&pool);
                let key = niss.as_u64();
                let at = format!("capacity {capacity}, seed {seed}, step {step}");
                match draw.below(20) {
                    0..9 => {
                        let rows = model.entry(key).or_default();
                        // Half the time a held row with a new end (often the same end: then
                        // nothing changes): an update.
                        let new = match rows.len() {
                            0 => draw.row(),
                            n if draw.below(2) == 0 => {
                                let mut held = rows[draw.below(n as u64) as usize];
                                held.period.end = draw.end(held.period.start);
                                held
                            }
                            _ => draw.row(),
                        };
                        let expected = model_integrate(rows, new);
                        changes += u64::from(expected != Integrated::Unchanged);
                        assert_eq!(directory.integrate(niss, new), expected, "{at}");
                    }
                    9..14 => {
                        let rows = model.entry(key).or_default();
                        let (institution, quality, start) = match rows.first() {
                            Some(_) if draw.below(4) > 0 => {
                                let row = rows[draw.below(rows.len() as u64) as usize];
                                (row.institution, row.quality, row.period.start)
                            }
                            _ => (
                                InstitutionIndex(draw.below(5) as u16),
                                QualityCode(1),
                                date!(2024 - 01 - 01),
                            ),
                        };
                        let quality = (draw.below(2) == 0).then_some(quality);
                        let start = (draw.below(2) == 0).then_some(start);
                        let before = rows.len();
                        rows.retain(|r| {
                            r.institution != institution
                                || quality.is_some_and(|q| r.quality != q)
                                || start.is_some_and(|day| r.period.start != day)
                        });
                        let removed = before - rows.len();
                        if removed > 0 {
                            changes += 1;
                        }
                        let found = directory.remove_matching(niss, institution, quality, start);
                        assert_eq!(found, removed, "{at}");
                    }
                    14..16 => {
                        // Everything the person has, institution by institution: a tombstone.
                        for institution in 0..5 {
                            let rows = model.entry(key).or_default();
                            let before = rows.len();
                            rows.retain(|r| r.institution.0 != institution);
                            changes += u64::from(rows.len() < before);
                            directory.remove(niss, InstitutionIndex(institution), None);
                        }
                    }
                    _ => {
                        let count = draw.below(20) + 1;
                        let mut new: Vec<Integration> = Vec::new();
                        for _ in 0..count {
                            let row = draw.row();
                            if !new.contains(&row) {
                                new.push(row);
                            }
                        }
                        let rows = model.entry(key).or_default();
                        // A new person's rows are stored as given (two may share a start);
                        // merging into a known person goes through `integrate`: changes.
                        if rows.is_empty() {
                            rows.extend_from_slice(&new);
                        } else {
                            for row in &new {
                                let done = model_integrate(rows, *row);
                                changes += u64::from(done != Integrated::Unchanged);
                            }
                        }
                        directory.insert_rows(niss, new.into_boxed_slice());
                    }
                }
                assert_matches(&directory, &model, changes, &pool, &at);
            }
            if capacity == 6 {
                assert!(
                    directory.spilled.load(Ordering::Relaxed) > 0,
                    "the table filled up"
                );
            }
            if capacity == 40 {
                assert!(!directory.arena.is_empty(), "some persons were large");
            }
        }
    }

    /// A row of the concurrency test's round `tag`: quality `tag`, dates that depend on the
    /// tag and the institution.
    fn round_row(tag: u16, institution: u16) -> Integration {
        let start = date!(2000 - 01 - 01) + time::Duration::days(i64::from(tag * 13 + institution));
        Integration {
            institution: InstitutionIndex(institution),
            quality: QualityCode(tag),
            period: Period {
                start,
                end: (institution % 2 == 1).then(|| start + time::Duration::days(400)),
            },
        }
    }

    /// Steps a round's window slides by while it holds three rows.
    const SLIDES: u16 = 20;
    /// Rows a round grows to at its end (past the seven a slot holds).
    const GROWN: u16 = 10;

    /// One round of the concurrency test's writer on `niss`: every state it publishes holds
    /// the rows of institutions `a..b` of the round's tag, and `a` and `b` never go back.
    /// Three rows slide (each removal shifts every inline word), grow to [`GROWN`] (spilled),
    /// then leave one by one (a tombstone at the end).
    fn writer_round(directory: &Directory, niss: Niss, tag: u16) {
        let add = |institution| {
            let integrated = directory.integrate(niss, round_row(tag, institution));
            assert_eq!(integrated, Integrated::Created);
        };
        let remove = |institution| {
            let removed =
                directory.remove(niss, InstitutionIndex(institution), Some(QualityCode(tag)));
            assert_eq!(removed, 1);
        };
        (0..3).for_each(add);
        for k in 0..SLIDES {
            remove(k);
            add(k + 3);
        }
        (SLIDES + 3..SLIDES + GROWN).for_each(add);
        (SLIDES..SLIDES + GROWN).for_each(remove);
    }

    /// Checks that `rows` is a state the writer published — institutions `a..b` of one tag —
    /// and not older than `last`, the (tag, a, b) this reader saw before. Returns the number
    /// of rows.
    fn assert_published(rows: &[Integration], last: &mut (u16, u16, u16)) -> usize {
        let Some(first) = rows.first() else {
            return 0;
        };
        let tag = first.quality.0;
        for row in rows {
            assert_eq!(*row, round_row(tag, row.institution.0), "a torn row");
        }
        let mut institutions: Vec<u16> = rows.iter().map(|r| r.institution.0).collect();
        institutions.sort_unstable();
        let (a, b) = (institutions[0], institutions[0] + rows.len() as u16);
        assert!(
            institutions.iter().copied().eq(a..b),
            "a state the writer never published: tag {tag}, institutions {institutions:?}"
        );
        assert!(
            last.0 != tag || (last.1 <= a && last.2 <= b),
            "an older state after a newer one: tag {tag}, {last:?} then {a}..{b}"
        );
        *last = (tag, a, b);
        rows.len()
    }

    #[test]
    fn readers_see_only_published_states() {
        // A table of 4 slots with room for 3: `moving` and two fillers take them, so
        // `homeless` lives in the spill map without a slot.
        let mut directory = Directory::with_capacity(2);
        let moving = person(0);
        let homeless = person(3);
        for niss in [moving, person(1), person(2)] {
            directory.insert_rows(niss, Box::new([round_row(998, 0)]));
        }
        directory.remove(moving, InstitutionIndex(0), None);
        directory.insert_rows(homeless, Box::new([round_row(998, 0)]));
        directory.remove(homeless, InstitutionIndex(0), None);
        assert_eq!(*directory.writer.lock().unwrap(), 3);
        let stop = AtomicBool::new(false);
        // What the readers saw: states of 1 to 7 rows (inline), of 8 or more (spilled),
        // and full scans; the test runs until each was seen, not for a fixed time, so that
        // a slow or busy machine only makes it longer.
        let (small, large, scans, rounds) = (
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        );
        let directory = &directory;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for tag in (0..997u16).cycle() {
                    writer_round(directory, moving, tag);
                    writer_round(directory, homeless, tag);
                    rounds.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            });
            for _ in 0..2 {
                scope.spawn(|| {
                    let (mut last_moving, mut last_homeless) = ((0, 0, 0), (0, 0, 0));
                    let mut scan = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Copies, checked outside: a spilled person's read holds a shard
                        // lock that the writer waits for.
                        let rows = directory.integrations(homeless);
                        assert_published(&rows, &mut last_homeless);
                        for _ in 0..100 {
                            let rows = directory.integrations(moving);
                            match assert_published(&rows, &mut last_moving) {
                                0 => {}
                                1..=7 => _ = small.fetch_add(1, Ordering::Relaxed),
                                8.. => _ = large.fetch_add(1, Ordering::Relaxed),
                            }
                            // One institution's rows: at most one, never torn.
                            let institution = (scan % u64::from(SLIDES + GROWN)) as u16;
                            let of = |rows: &[Integration]| rows.to_vec();
                            let mine = directory.with_integrations_of(
                                moving,
                                InstitutionIndex(institution),
                                of,
                            );
                            assert!(mine.len() <= 1, "{mine:?}");
                            for row in mine {
                                assert_eq!(row, round_row(row.quality.0, institution));
                            }
                        }
                        let mut seen = HashMap::new();
                        directory.for_each_person(|key, rows| {
                            assert!(seen.insert(key, rows.to_vec()).is_none(), "seen twice");
                        });
                        for rows in seen.values() {
                            assert_published(rows, &mut (0, 0, 0));
                        }
                        scan += 1;
                        scans.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let seen_all = || {
                rounds.load(Ordering::Relaxed) > 2
                    && small.load(Ordering::Relaxed) > 0
                    && large.load(Ordering::Relaxed) > 0
                    && scans.load(Ordering::Relaxed) > 2
            };
            let started = std::time::Instant::now();
            while !seen_all() && started.elapsed() < std::time::Duration::from_secs(60) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(
            rounds.load(Ordering::Relaxed) > 2
                && small.load(Ordering::Relaxed) > 0
                && large.load(Ordering::Relaxed) > 0,
            "in 60 s, {rounds:?} rounds, and the readers saw inline and spilled states: \
             {small:?}, {large:?}"
        );
        assert_eq!(directory.persons(), 2, "only the fillers are left");
        assert_eq!(directory.integration_count(), 2);
    }
}
