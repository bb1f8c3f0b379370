//! The binary snapshot of the persons directory: what the hub writes on shutdown (and
//! periodically) and loads on start, and what `bcss-hub directory export|import` move around.
//!
//! ```text
//! "BCSSDIR1"                                           magic and version
//! u64 persons expected (a hint, to size the table before loading)
//! u32 institutions, then per institution: u8 length, id (UTF-8)
//! per person: u64 NISS, u16 rows, then per row:
//!     u16 institution (position in the list above), u16 quality code,
//!     i32 start (Julian day), i32 end (Julian day, i32::MIN = open)
//! u64::MAX (no NISS has it: the end of the persons), u64 persons, u64 integrations
//! BLAKE3 of everything above (32 bytes)
//! ```
//!
//! Little-endian throughout. Institutions are named by id, not by index, so a snapshot stays
//! valid when institutions are added to the policy; a row of an institution or quality code the
//! policy no longer knows is refused at load with the institution's id, never the person's.
//! Reading and writing go through 1 MiB chunks (the checksum is computed per chunk); the crate
//! opens no file: the caller hands it a reader or a writer.

use std::io::{self, Read, Write};

use bcss_domain::{Integration, Niss, Period, QualityCode};
use time::Date;

use crate::Directory;
use crate::csv::Resolver;

/// The first eight bytes of a snapshot.
pub const MAGIC: &[u8; 8] = b"BCSSDIR1";
const OPEN_END: i32 = i32::MIN;
const CHUNK: usize = 1 << 20;
const ROW_BYTES: usize = 12;

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub persons: u64,
    pub integrations: u64,
}

/// A snapshot that cannot be loaded. Never names a person.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the snapshot failed: {0}")]
    Io(#[from] io::Error),
    #[error("not a directory snapshot (the file does not start with {MAGIC:?})")]
    NotASnapshot,
    #[error("the snapshot is damaged: {0}")]
    Damaged(&'static str),
    #[error("the snapshot's checksum does not match its content (truncated or altered)")]
    Checksum,
    #[error(
        "the snapshot names institution \"{0}\", which the policy does not define; \
         add it back or import a directory without it"
    )]
    UnknownInstitution(String),
    #[error(
        "the snapshot has rows of institution \"{institution}\" under quality code {quality}, \
         which its sector does not define"
    )]
    UnknownQuality {
        institution: String,
        quality: QualityCode,
    },
}

/// Writes `directory` to `out`. `institution_ids[i]` is the id of `InstitutionIndex(i)`.
/// Persons come in the directory's own order (not sorted): writing is one pass.
pub fn write(
    directory: &Directory,
    institution_ids: &[&str],
    out: impl Write,
) -> io::Result<Counts> {
    let mut writer = SnapshotWriter::new(out, institution_ids, directory.persons() as u64)?;
    let mut failure = None;
    directory.for_each_person(|niss, rows| {
        if failure.is_none()
            && let Err(e) = writer.person(niss, rows)
        {
            failure = Some(e);
        }
    });
    match failure {
        Some(e) => Err(e),
        None => writer.finish(),
    }
}

/// Writes a snapshot person by person (a generator need not hold the directory in memory).
pub struct SnapshotWriter<W: Write> {
    out: ChunkWriter<W>,
    counts: Counts,
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes the header. `institution_ids[i]` is the id of `InstitutionIndex(i)`;
    /// `persons_hint` is how many persons are about to come (the reader sizes its table by it).
    pub fn new(out: W, institution_ids: &[&str], persons_hint: u64) -> io::Result<Self> {
        let mut out = ChunkWriter::new(out);
        out.put(MAGIC)?;
        out.put(&persons_hint.to_le_bytes())?;
        let count = u32::try_from(institution_ids.len())
            .ok()
            .filter(|&count| count as usize <= MAX_INSTITUTIONS)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many institutions"))?;
        out.put(&count.to_le_bytes())?;
        for id in institution_ids {
            let len = u8::try_from(id.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "institution id too long")
            })?;
            out.put(&[len])?;
            out.put(id.as_bytes())?;
        }
        Ok(SnapshotWriter {
            out,
            counts: Counts::default(),
        })
    }

    /// One person (the NISS as a number) and their integrations.
    pub fn person(&mut self, niss: u64, rows: &[Integration]) -> io::Result<()> {
        let len = u16::try_from(rows.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "a person has over 65,535 rows")
        })?;
        self.out.put(&niss.to_le_bytes())?;
        self.out.put(&len.to_le_bytes())?;
        for row in rows {
            self.out.put(&encode_row(row))?;
        }
        self.counts.persons += 1;
        self.counts.integrations += rows.len() as u64;
        Ok(())
    }

    /// The end marker, the counts (those of this pass: the directory may change during it) and
    /// the checksum.
    pub fn finish(mut self) -> io::Result<Counts> {
        self.out.put(&u64::MAX.to_le_bytes())?;
        self.out.put(&self.counts.persons.to_le_bytes())?;
        self.out.put(&self.counts.integrations.to_le_bytes())?;
        self.out.finish()?;
        Ok(self.counts)
    }
}

/// Reads a snapshot held in memory into a new directory, resolving institutions and quality
/// codes against the policy. The whole content is checked (checksum, NISS, periods) before it
/// is returned. (A file: [`read_sized`] with its length, so that a damaged header cannot size
/// the table beyond what the file could hold.)
pub fn read(bytes: &[u8], resolver: &impl Resolver) -> Result<Directory, SnapshotError> {
    read_sized(bytes, bytes.len() as u64, resolver)
}

/// Institutions a snapshot may list: rows name them by a 16-bit position.
const MAX_INSTITUTIONS: usize = 1 << 16;

/// Bytes of the smallest person in a snapshot: the NISS, the row count, one row.
const SMALLEST_PERSON: u64 = 8 + 2 + 12;

/// [`read`], for an input of `size` bytes: the header's persons hint sizes the table (which is
/// written in full when created), so a damaged hint is capped by what the file could hold.
pub fn read_sized(
    input: impl Read,
    size: u64,
    resolver: &impl Resolver,
) -> Result<Directory, SnapshotError> {
    let mut input = ChunkReader::new(input);
    if input.take(8)? != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    // A hint only: a damaged one costs memory, not correctness (capped by the file's size and
    // at 100 million).
    let persons_hint = u64::from_le_bytes(input.array()?)
        .min(size / SMALLEST_PERSON)
        .min(100_000_000) as usize;
    let institutions = u32::from_le_bytes(input.array()?) as usize;
    // A row names its institution by a 16-bit position; a larger count is damage (and would
    // size the quality table below by it before the checksum is read).
    if institutions > MAX_INSTITUTIONS {
        return Err(SnapshotError::Damaged(
            "more institutions than a row can name",
        ));
    }
    let mut ids = Vec::with_capacity(institutions);
    let mut indices = Vec::with_capacity(institutions);
    for _ in 0..institutions {
        let len = input.take(1)?[0] as usize;
        let id = std::str::from_utf8(input.take(len)?)
            .ok()
            .filter(|id| bcss_domain::valid_id(id))
            // Not quoted: damaged bytes here could be anything, a person's included.
            .ok_or(SnapshotError::Damaged("an institution id is not an id"))?
            .to_owned();
        indices.push(resolver.institution(&id));
        ids.push(id);
    }
    let mut directory = Directory::with_capacity(persons_hint);
    // Parsing and checking on this thread, inserting on another (which owns the directory
    // meanwhile): the table's cache misses overlap the parsing (two cores load a national
    // snapshot about twice as fast).
    let refused = std::thread::scope(|scope| {
        let (batches, received) =
            std::sync::mpsc::sync_channel::<Vec<(Niss, Box<[Integration]>)>>(4);
        let directory = &mut directory;
        let inserter = scope.spawn(move || {
            for batch in received {
                let persons: Vec<Niss> = batch.iter().map(|(niss, _)| *niss).collect();
                directory.warm(&persons);
                for (niss, rows) in batch {
                    directory.insert_rows(niss, rows);
                }
            }
        });
        let parsed = parse_persons(&mut input, &ids, &indices, resolver, batches);
        inserter
            .join()
            .expect("the inserting thread does not panic");
        parsed
    })?;
    let persons = u64::from_le_bytes(input.array()?);
    let integrations = u64::from_le_bytes(input.array()?);
    input.verify_checksum()?;
    // Only a file that is whole is judged against the policy: a damaged byte in an id must
    // not send the operator to edit the policy.
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    if persons != directory.persons() as u64 || integrations != directory.integration_count() as u64
    {
        return Err(SnapshotError::Damaged(
            "the counts at the end do not match the persons read",
        ));
    }
    Ok(directory)
}

/// Reads the persons section, checking every row, and hands them on in batches. A file that
/// is not well formed is an error at once; the first row the policy does not know (an
/// institution or a quality code) is returned once the whole section is read, for the caller
/// to report after the checksum.
fn parse_persons<R: Read>(
    input: &mut ChunkReader<R>,
    ids: &[String],
    indices: &[Option<bcss_domain::InstitutionIndex>],
    resolver: &impl Resolver,
    batches: std::sync::mpsc::SyncSender<Vec<(Niss, Box<[Integration]>)>>,
) -> Result<Option<SnapshotError>, SnapshotError> {
    let mut refused = None;
    const BATCH: usize = 4096;
    let mut batch = Vec::with_capacity(BATCH);
    // Whether (position, quality code) exists in the policy, asked once per pair.
    let mut quality_known: Vec<Option<bool>> = vec![None; ids.len() * 1000];
    loop {
        let key = u64::from_le_bytes(input.array()?);
        if key == u64::MAX {
            break;
        }
        let niss = Niss::from_number(key)
            .map_err(|_| SnapshotError::Damaged("a person number is not a valid NISS"))?;
        let count = u16::from_le_bytes(input.array()?) as usize;
        let bytes = input.take(count * ROW_BYTES)?;
        let mut rows = Vec::with_capacity(count);
        for raw in bytes.chunks_exact(ROW_BYTES) {
            let (position, quality, period) = decode_row(raw)?;
            let id = ids
                .get(position)
                .ok_or(SnapshotError::Damaged("a row names no listed institution"))?;
            let Some(institution) = indices[position] else {
                refused.get_or_insert_with(|| SnapshotError::UnknownInstitution(id.clone()));
                continue;
            };
            let exists = *quality_known[position * 1000 + quality.0 as usize]
                .get_or_insert_with(|| resolver.quality_exists(institution, quality));
            if !exists {
                refused.get_or_insert_with(|| SnapshotError::UnknownQuality {
                    institution: id.clone(),
                    quality,
                });
                continue;
            }
            let row = Integration {
                institution,
                quality,
                period,
            };
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
        if !rows.is_empty() {
            batch.push((niss, rows.into_boxed_slice()));
        }
        if batch.len() == BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if batches.send(full).is_err() {
                break;
            }
        }
    }
    let _ = batches.send(batch);
    Ok(refused)
}

fn encode_row(row: &Integration) -> [u8; ROW_BYTES] {
    let mut raw = [0u8; ROW_BYTES];
    raw[0..2].copy_from_slice(&row.institution.0.to_le_bytes());
    raw[2..4].copy_from_slice(&row.quality.0.to_le_bytes());
    raw[4..8].copy_from_slice(&row.period.start.to_julian_day().to_le_bytes());
    let end = row.period.end.map_or(OPEN_END, Date::to_julian_day);
    raw[8..12].copy_from_slice(&end.to_le_bytes());
    raw
}

fn decode_row(raw: &[u8]) -> Result<(usize, QualityCode, Period), SnapshotError> {
    let field = |at: usize| [raw[at], raw[at + 1], raw[at + 2], raw[at + 3]];
    let institution = u16::from_le_bytes([raw[0], raw[1]]) as usize;
    let quality = QualityCode::new(u16::from_le_bytes([raw[2], raw[3]]))
        .ok_or(SnapshotError::Damaged("a quality code is not 000-999"))?;
    let date = |day: i32| {
        Date::from_julian_day(day).map_err(|_| SnapshotError::Damaged("a date is out of range"))
    };
    let start = date(i32::from_le_bytes(field(4)))?;
    let end = match i32::from_le_bytes(field(8)) {
        OPEN_END => None,
        day => Some(date(day)?),
    };
    let period = Period::new(start, end)
        .map_err(|_| SnapshotError::Damaged("a period ends before it starts"))?;
    Ok((institution, quality, period))
}

/// Buffers writes in chunks and hashes each chunk as it goes out.
struct ChunkWriter<W> {
    out: W,
    chunk: Vec<u8>,
    hasher: blake3::Hasher,
}

impl<W: Write> ChunkWriter<W> {
    fn new(out: W) -> Self {
        ChunkWriter {
            out,
            chunk: Vec::with_capacity(CHUNK),
            hasher: blake3::Hasher::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.chunk.len() + bytes.len() > CHUNK {
            self.flush_chunk()?;
        }
        self.chunk.extend_from_slice(bytes);
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        self.hasher.update(&self.chunk);
        self.out.write_all(&self.chunk)?;
        self.chunk.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush_chunk()?;
        let checksum = *self.hasher.finalize().as_bytes();
        self.out.write_all(&checksum)?;
        self.out.flush()
    }
}

/// Reads in chunks; hashes what has been consumed, one large slice at a time.
struct ChunkReader<R> {
    input: R,
    chunk: Vec<u8>,
    /// Next byte to hand out.
    at: usize,
    /// Bytes of `chunk` before this are already in the hash.
    hashed: usize,
    hasher: blake3::Hasher,
}

impl<R: Read> ChunkReader<R> {
    fn new(input: R) -> Self {
        ChunkReader {
            input,
            chunk: Vec::with_capacity(CHUNK),
            at: 0,
            hashed: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&[u8], SnapshotError> {
        if self.chunk.len() - self.at < n {
            self.refill(n)?;
        }
        let start = self.at;
        self.at += n;
        Ok(&self.chunk[start..self.at])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    /// Keeps the unread tail, then reads until at least `n` bytes are unread.
    fn refill(&mut self, n: usize) -> Result<(), SnapshotError> {
        self.hasher.update(&self.chunk[self.hashed..self.at]);
        self.chunk.drain(..self.at);
        self.at = 0;
        self.hashed = 0;
        let want = n.max(CHUNK);
        while self.chunk.len() < n {
            let filled = self.chunk.len();
            self.chunk.resize(want, 0);
            let read = self.input.read(&mut self.chunk[filled..])?;
            self.chunk.truncate(filled + read);
            if read == 0 {
                return Err(SnapshotError::Damaged("the snapshot ends too early"));
            }
        }
        Ok(())
    }

    fn verify_checksum(mut self) -> Result<(), SnapshotError> {
        self.hasher.update(&self.chunk[self.hashed..self.at]);
        self.hashed = self.at;
        let computed = *self.hasher.finalize().as_bytes();
        let stored: [u8; 32] = self.array()?;
        let mut extra = [0u8; 1];
        if stored != computed {
            return Err(SnapshotError::Checksum);
        }
        let trailing = self.chunk.len() > self.at || self.input.read(&mut extra)? > 0;
        if trailing {
            return Err(SnapshotError::Damaged("bytes follow the checksum"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bcss_domain::InstitutionIndex;
    use time::macros::date;

    struct Policy;
    impl Resolver for Policy {
        fn institution(&self, id: &str) -> Option<InstitutionIndex> {
            // The order the snapshot below is written in.
            ["onss", "cpas-liege", "mut-100"]
                .iter()
                .position(|known| *known == id)
                .map(|i| InstitutionIndex(i as u16))
        }
        fn quality_exists(&self, _: InstitutionIndex, code: QualityCode) -> bool {
            code.0 < 900
        }
    }

    fn sample() -> Directory {
        let directory = Directory::new();
        let rows = [
            ("85073003328", 0, 1, date!(2024 - 01 - 01), None),
            (
                "85073003328",
                2,
                0,
                date!(2020 - 05 - 01),
                Some(date!(2025 - 12 - 31)),
            ),
            ("17012500130", 1, 12, date!(1999 - 01 - 01), None),
        ];
        for (niss, institution, quality, start, end) in rows {
            directory.integrate(
                Niss::parse(niss).unwrap(),
                Integration {
                    institution: InstitutionIndex(institution),
                    quality: QualityCode(quality),
                    period: Period { start, end },
                },
            );
        }
        directory
    }

    /// Snapshot order of institutions: the reverse of the policy's.
    const SNAPSHOT_IDS: [&str; 3] = ["mut-100", "cpas-liege", "onss"];

    fn snapshot(directory: &Directory) -> Vec<u8> {
        // The writer's institution ids are the policy's (index order)...
        let mut bytes = Vec::new();
        write(directory, &["onss", "cpas-liege", "mut-100"], &mut bytes).unwrap();
        bytes
    }

    fn sorted(directory: &Directory) -> Vec<(u64, Vec<Integration>)> {
        let mut all = Vec::new();
        directory.for_each_person(|niss, rows| {
            let mut rows = rows.to_vec();
            rows.sort_by_key(|r| (r.institution.0, r.quality.0, r.period.start));
            all.push((niss, rows));
        });
        all.sort_by_key(|(niss, _)| *niss);
        all
    }

    #[test]
    fn a_snapshot_reads_back_the_same_directory() {
        let directory = sample();
        let bytes = snapshot(&directory);
        let back = read(bytes.as_slice(), &Policy).unwrap();
        assert_eq!(sorted(&back), sorted(&directory));
        assert_eq!(back.integration_count(), 3);
        assert_eq!(back.persons(), 2);
    }

    #[test]
    fn institutions_are_matched_by_id_not_by_index() {
        // A policy whose indices differ from the writer's: rows follow the ids.
        struct Reordered;
        impl Resolver for Reordered {
            fn institution(&self, id: &str) -> Option<InstitutionIndex> {
                SNAPSHOT_IDS
                    .iter()
                    .position(|known| *known == id)
                    .map(|i| InstitutionIndex(i as u16))
            }
            fn quality_exists(&self, _: InstitutionIndex, _: QualityCode) -> bool {
                true
            }
        }
        let back = read(snapshot(&sample()).as_slice(), &Reordered).unwrap();
        // Written as onss 0, cpas-liege 1, mut-100 2; read back under mut-100 0, cpas-liege 1,
        // onss 2: every row keeps its institution's id, so onss's and mut-100's indices swap.
        let renumbered = |index: u16| match index {
            0 => 2,
            2 => 0,
            other => other,
        };
        let mut expected = sorted(&sample());
        for (_, rows) in &mut expected {
            for row in rows.iter_mut() {
                row.institution = InstitutionIndex(renumbered(row.institution.0));
            }
            rows.sort_by_key(|r| (r.institution.0, r.quality.0, r.period.start));
        }
        assert_eq!(sorted(&back), expected);
        assert_ne!(
            sorted(&back),
            sorted(&sample()),
            "the two orders must differ"
        );
    }

    /// A snapshot's start: the magic, a persons hint, `count` institutions and these ids.
    fn header(count: u32, ids: &[&[u8]]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(count.to_le_bytes());
        for id in ids {
            bytes.push(id.len() as u8);
            bytes.extend_from_slice(id);
        }
        bytes
    }

    #[test]
    fn every_damage_is_refused_without_naming_a_person() {
        let good = snapshot(&sample());
        let last = good.len() - 1;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "ends too early"),
            (
                "other file",
                b"niss,institution\n".repeat(4),
                "not a directory snapshot",
            ),
            (
                "truncated",
                good[..good.len() - 40].to_vec(),
                "ends too early",
            ),
            (
                "flipped byte in a row",
                {
                    let mut b = good.clone();
                    b[60] ^= 0x01;
                    b
                },
                "",
            ),
            (
                // Still an id, but one the policy does not know: the checksum tells the
                // damage, rather than the operator being sent to add "onsr" to the policy.
                "flipped byte in an institution id",
                {
                    let mut b = good.clone();
                    let at = b
                        .windows(4)
                        .position(|w| w == b"onss")
                        .expect("onss listed");
                    b[at + 3] = b'r';
                    b
                },
                "checksum",
            ),
            (
                "flipped checksum",
                {
                    let mut b = good.clone();
                    b[last] ^= 0x01;
                    b
                },
                "checksum",
            ),
            (
                "trailing bytes",
                [good.as_slice(), b"x"].concat(),
                "follow the checksum",
            ),
            (
                // Refused before anything is sized by the count (a table of 1,000 quality
                // codes per institution).
                "more institutions than a row can name",
                header(70_000, &[]),
                "more institutions than a row can name",
            ),
            (
                // Sized by the bytes there are, not by the hint (before: a table for 100
                // million persons, about 10 GB, written in full).
                "a persons hint far past what the bytes hold",
                {
                    let mut b = MAGIC.to_vec();
                    b.extend(u64::MAX.to_le_bytes());
                    b.extend(0u32.to_le_bytes());
                    b
                },
                "ends too early",
            ),
            (
                "an institution id that is not an id",
                header(1, &[b"Dupont Jean"]),
                "an institution id is not an id",
            ),
        ];
        for (case, bytes, expected) in cases {
            let error = read(bytes.as_slice(), &Policy).expect_err(case).to_string();
            assert!(error.contains(expected), "{case}: {error}");
            assert!(
                !error.contains("85073003328")
                    && !error.contains("17012500130")
                    && !error.contains("Dupont"),
                "{case}: {error}"
            );
        }
    }

    #[test]
    fn a_damaged_persons_hint_is_capped_by_the_file_size() {
        let directory = sample();
        let mut bytes = Vec::new();
        let mut writer =
            SnapshotWriter::new(&mut bytes, &["onss", "cpas-liege", "mut-100"], 100_000_000)
                .unwrap();
        directory.for_each_person(|niss, rows| writer.person(niss, rows).unwrap());
        writer.finish().unwrap();
        let size = bytes.len() as u64;
        let back = read_sized(bytes.as_slice(), size, &Policy).unwrap();
        assert_eq!(sorted(&back), sorted(&directory));
        assert!(
            back.base_capacity() <= (size / SMALLEST_PERSON) as usize + 1,
            "a table for {} persons from a {size}-byte file",
            back.base_capacity()
        );
    }

    #[test]
    fn a_policy_without_an_institution_of_the_snapshot_is_named() {
        struct Smaller;
        impl Resolver for Smaller {
            fn institution(&self, id: &str) -> Option<InstitutionIndex> {
                (id != "mut-100").then_some(InstitutionIndex(0))
            }
            fn quality_exists(&self, _: InstitutionIndex, _: QualityCode) -> bool {
                true
            }
        }
        let error = read(snapshot(&sample()).as_slice(), &Smaller).unwrap_err();
        assert!(error.to_string().contains("\"mut-100\""), "{error}");
        struct NoQuality;
        impl Resolver for NoQuality {
            fn institution(&self, _: &str) -> Option<InstitutionIndex> {
                Some(InstitutionIndex(0))
            }
            fn quality_exists(&self, _: InstitutionIndex, code: QualityCode) -> bool {
                code.0 != 12
            }
        }
        let error = read(snapshot(&sample()).as_slice(), &NoQuality).unwrap_err();
        assert!(error.to_string().contains("quality code 012"), "{error}");
    }

    #[test]
    fn large_directories_cross_chunk_boundaries() {
        let directory = Directory::new();
        let persons = (0..100u32).flat_map(|d| (1..=997u16).map(move |s| (d, s)));
        for (n, (day, serial)) in persons.take(100_000).enumerate() {
            let yymmdd = 800_101 + (day / 28) * 100 + day % 28;
            let niss = Niss::compose(yymmdd, serial, false).unwrap();
            for i in 0..(n % 7 + 1) as u16 {
                directory.integrate(
                    niss,
                    Integration {
                        institution: InstitutionIndex(i % 3),
                        quality: QualityCode(i),
                        period: Period {
                            start: date!(2020 - 01 - 01),
                            end: None,
                        },
                    },
                );
            }
        }
        let bytes = snapshot(&directory);
        assert!(bytes.len() > 2 * CHUNK);
        let back = read(bytes.as_slice(), &Policy).unwrap();
        assert_eq!(back.persons(), directory.persons());
        assert_eq!(back.integration_count(), directory.integration_count());
        assert_eq!(sorted(&back), sorted(&directory));
    }
}
