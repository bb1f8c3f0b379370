//! The journal: every decision about every exchange, hash-chained, sealed, queryable, and
//! removed when its deliberation's retention has passed.
//!
//! Entry `n` carries `hash(n) = BLAKE3(hash(n-1) ‖ entry n encoded without its hash)`, so
//! changing, removing or reordering an entry breaks the chain from there on. Every
//! [`CHECKPOINT_EVERY`] entries the writer seals the head with a keyed BLAKE3 MAC under the
//! hub's journal key: someone who rewrites the chain from some point on and recomputes every
//! hash still cannot produce the seals. Retention removes an entry's content but keeps a
//! stub (its number, time and hash), so the chain stays verifiable across removals.
//!
//! The journal records decisions, never payload values: ticket, parties, flow, NISS (so a citizen
//! can ask who received data about them), deliberation, decision, reason, the names of removed
//! fields, timestamps and attempt counts.

use prost::Message;

/// How often the head is sealed.
pub const CHECKPOINT_EVERY: u64 = 256;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EntryKind {
    /// A message was accepted (one entry per ticket).
    Submission = 0,
    /// A candidate recipient was refused by policy.
    Refusal = 1,
    /// A candidate recipient was admitted: a delivery was decided.
    Admission = 2,
    /// A delivery attempt failed.
    Attempt = 3,
    /// A delivery was acknowledged by its recipient.
    Delivery = 4,
    /// A delivery was given up: a dead letter.
    DeadLetter = 5,
    /// A dead letter was put back in its queue.
    Replay = 6,
    /// A contact centre registered a contact file (16/046).
    ContactFile = 7,
}

/// One journal entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalEntry {
    #[prost(uint64, tag = "1")]
    pub number: u64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
    #[prost(enumeration = "EntryKind", tag = "3")]
    pub kind: i32,
    #[prost(string, tag = "4")]
    pub ticket: String,
    #[prost(string, tag = "5")]
    pub relay_of: String,
    #[prost(string, tag = "6")]
    pub sender: String,
    #[prost(string, tag = "7")]
    pub recipient: String,
    /// 1 A052, 2 DmfA, 3 Dimona (0 for contact files).
    #[prost(uint32, tag = "8")]
    pub flow: u32,
    #[prost(uint64, tag = "9")]
    pub niss: u64,
    #[prost(string, tag = "10")]
    pub deliberation: String,
    /// The decision's or reason's stable name (e.g. `delivered`, `not_integrated`).
    #[prost(string, tag = "11")]
    pub reason: String,
    /// Field paths removed by filtering (names, never values).
    #[prost(string, repeated, tag = "12")]
    pub removed_fields: Vec<String>,
    #[prost(uint32, tag = "13")]
    pub attempt: u32,
    /// The contact file cited (16/046), or registered.
    #[prost(string, tag = "14")]
    pub contact_file: String,
    #[prost(bool, tag = "15")]
    pub a_posteriori: bool,
    /// When this entry may be removed (the deliberation's retention), ms since the epoch; 0:
    /// never.
    #[prost(int64, tag = "16")]
    pub keep_until_ms: i64,
    /// The message id the sender chose.
    #[prost(string, tag = "17")]
    pub message_id: String,
    /// For a contact file: when it was opened, ms since the epoch.
    #[prost(int64, tag = "18")]
    pub opened_at_ms: i64,
    /// The delivery's id, for attempts, deliveries and dead letters.
    #[prost(string, tag = "19")]
    pub delivery_id: String,
    /// For a consultation: the agent who consulted, as the consulting institution names them.
    #[prost(string, tag = "20")]
    pub agent_id: String,
    /// For a consultation: the purpose code the consulting institution gave.
    #[prost(string, tag = "21")]
    pub purpose: String,
    /// The entry is about a consultation (`Gateway.Consult`): `sender` is the source that holds
    /// the data, `recipient` the consulting institution. Added fields keep older entries' hashes
    /// (a field at its default value is not encoded).
    #[prost(bool, tag = "22")]
    pub consultation: bool,
    /// For a submission: how many entries directly after it are its candidates (admissions and
    /// refusals), written in the same commit. They are found through it (numbers `number + 1`
    /// to `number + candidates`) and have no ticket index row of their own; 0 in entries
    /// written before this field was kept, whose candidates have one.
    #[prost(uint32, tag = "23")]
    pub candidates: u32,
    #[prost(bytes = "vec", tag = "30")]
    pub prev_hash: Vec<u8>,
    #[prost(bytes = "vec", tag = "31")]
    pub hash: Vec<u8>,
    /// True once retention removed the content: only number, time and hashes remain.
    #[prost(bool, tag = "32")]
    pub removed: bool,
    /// A stub's seal ([`stub_seal`]): only the holder of the journal key can turn an entry
    /// into a stub, so removing an entry's content by hand is caught like changing it.
    #[prost(bytes = "vec", tag = "33")]
    pub stub_seal: Vec<u8>,
}

impl JournalEntry {
    /// The hash this entry must carry, given the previous entry's.
    pub fn compute_hash(&self, prev_hash: &[u8]) -> [u8; 32] {
        let mut unsealed = self.clone();
        unsealed.hash.clear();
        chain_hash(prev_hash, &unsealed.encode_to_vec())
    }

    /// Chains this new entry after the entry whose hash is `prev_hash`: sets `prev_hash` and
    /// `hash`, and returns the entry's encoding and hash. The entry is encoded once: prost writes
    /// fields in tag order, so the encoding is the hashed one (without the hash) followed by the
    /// hash's field (`removed`, after it, is false in a new entry and not written).
    pub fn chain(&mut self, prev_hash: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
        debug_assert!(self.hash.is_empty() && !self.removed, "a new entry");
        self.prev_hash = prev_hash.to_vec();
        let mut bytes = self.encode_to_vec();
        let hash = chain_hash(prev_hash, &bytes);
        self.hash = hash.to_vec();
        prost::encoding::bytes::encode(31, &self.hash, &mut bytes);
        debug_assert_eq!(
            bytes,
            self.encode_to_vec(),
            "the hash field is written last"
        );
        (bytes, hash)
    }

    /// Whether this is the decision about one candidate recipient: an admission or a refusal
    /// (a stub keeps its kind).
    pub fn is_candidate(&self) -> bool {
        self.kind == EntryKind::Admission as i32 || self.kind == EntryKind::Refusal as i32
    }

    /// The stub retention leaves: number, time, hashes, sealed with the journal key.
    pub fn stub(&self, key: &[u8; 32]) -> JournalEntry {
        JournalEntry {
            number: self.number,
            at_ms: self.at_ms,
            kind: self.kind,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
            removed: true,
            stub_seal: stub_seal(key, self.number, &self.hash).to_vec(),
            ..Default::default()
        }
    }
}

/// `hash(n) = BLAKE3(hash(n-1) ‖ entry n encoded without its hash)`.
fn chain_hash(prev_hash: &[u8], unsealed: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev_hash);
    hasher.update(unsealed);
    *hasher.finalize().as_bytes()
}

/// A sealed head of the chain.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Checkpoint {
    #[prost(uint64, tag = "1")]
    pub number: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub at_ms: i64,
    /// Keyed BLAKE3 of (number, hash) under the journal key.
    #[prost(bytes = "vec", tag = "4")]
    pub seal: Vec<u8>,
}

/// The seal of a checkpoint.
pub fn seal(key: &[u8; 32], number: u64, hash: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(&number.to_le_bytes());
    hasher.update(hash);
    *hasher.finalize().as_bytes()
}

/// A stub's seal: a keyed BLAKE3 MAC of the entry's number and hash, apart from checkpoint
/// seals by its first bytes.
pub fn stub_seal(key: &[u8; 32], number: u64, hash: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(b"stub");
    hasher.update(&number.to_le_bytes());
    hasher.update(hash);
    *hasher.finalize().as_bytes()
}

/// The first problem `verify` found, naming the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// The entry's content does not match its hash, or its hash does not follow the previous.
    Changed { number: u64 },
    /// Entries are missing before this one (and no stub stands for them).
    Removed { after: u64, next: u64 },
    /// The entry stored under `position` says it is entry `claims`.
    Reordered { position: u64, claims: u64 },
    /// A checkpoint's seal does not match, or the entry it seals has another hash.
    BadSeal { checkpoint: u64 },
    /// Entry `number` (a multiple of [`CHECKPOINT_EVERY`]) is in the journal but its checkpoint
    /// is not: the writer seals every such entry in the commit that adds it, so the seal was
    /// removed, which is what someone who rewrote the chain past it would have to do.
    MissingCheckpoint { number: u64 },
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tamper::Changed { number } => write!(f, "entry {number} was changed"),
            Tamper::Removed { after, next } if *next == after + 2 => {
                write!(f, "entry {} was removed", after + 1)
            }
            Tamper::Removed { after, next } => {
                write!(f, "entries {} to {} were removed", after + 1, next - 1)
            }
            Tamper::Reordered { position, claims } => write!(
                f,
                "entries were reordered: position {position} holds entry {claims}"
            ),
            Tamper::BadSeal { checkpoint } => {
                write!(f, "the checkpoint at entry {checkpoint} does not match")
            }
            Tamper::MissingCheckpoint { number } => {
                write!(f, "the checkpoint at entry {number} was removed")
            }
        }
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub stubs: u64,
    pub checkpoints: u64,
    pub first_problem: Option<Tamper>,
}

/// Walks `entries` (in key order, with their keys) and `checkpoints` (in order), and reports
/// the first problem. `indexed_up_to` is the highest entry number the journal's index rows name
/// (0 if none): an index row is written with its entry and removed only with its content, so
/// one past the last entry tells that entries were cut off the end, even when the checkpoints
/// that would tell were removed too.
///
/// What no check of the file alone can catch: the newest entries cut off together with every
/// checkpoint past the new end and every index row that named them. Only a number kept
/// elsewhere (the last sealed checkpoint's, say) tells how long the journal was.
pub fn verify(
    key: &[u8; 32],
    entries: impl IntoIterator<Item = (u64, JournalEntry)>,
    checkpoints: &[Checkpoint],
    indexed_up_to: u64,
) -> Verified {
    let mut report = Verified {
        entries: 0,
        stubs: 0,
        checkpoints: checkpoints.len() as u64,
        first_problem: None,
    };
    // Entry 1 follows the genesis hash (32 zero bytes).
    let mut previous: (u64, Vec<u8>) = (0, vec![0; 32]);
    // Only the hashes the checkpoints name are kept: memory follows the checkpoints (one per
    // `CHECKPOINT_EVERY` entries), not the journal.
    let sealed: std::collections::HashSet<u64> = checkpoints.iter().map(|c| c.number).collect();
    let mut hashes = std::collections::HashMap::new();
    // The last entry a submission names as its candidate: they were written with it.
    let mut named_up_to = 0;
    for (position, entry) in entries {
        report.entries += 1;
        let problem = (|| {
            if entry.number != position {
                return Some(Tamper::Reordered {
                    position,
                    claims: entry.number,
                });
            }
            if position != previous.0 + 1 {
                return Some(Tamper::Removed {
                    after: previous.0,
                    next: position,
                });
            }
            let prev_hash = previous.1.clone();
            if entry.prev_hash != prev_hash {
                return Some(Tamper::Changed { number: position });
            }
            if entry.removed {
                if entry.stub_seal[..] != stub_seal(key, position, &entry.hash)[..] {
                    return Some(Tamper::Changed { number: position });
                }
                report.stubs += 1;
            } else if entry.compute_hash(&prev_hash)[..] != entry.hash[..] {
                return Some(Tamper::Changed { number: position });
            }
            None
        })();
        if let Some(problem) = problem {
            report.first_problem = Some(problem);
            return report;
        }
        if sealed.contains(&position) {
            hashes.insert(position, entry.hash.clone());
        }
        if entry.kind == EntryKind::Submission as i32 && !entry.removed {
            named_up_to = named_up_to.max(position + u64::from(entry.candidates));
        }
        previous = (position, entry.hash);
    }
    let last = previous.0;
    // Every entry numbered a multiple of `CHECKPOINT_EVERY` was sealed when it was added: a
    // seal missing is a seal removed (the chain past it may have been rewritten), and only the
    // first is reported, in entry order with the checkpoints' own problems.
    let missing = (1..=last / CHECKPOINT_EVERY)
        .map(|k| k * CHECKPOINT_EVERY)
        .find(|number| !sealed.contains(number));
    for checkpoint in checkpoints {
        if missing.is_some_and(|number| number < checkpoint.number) {
            break;
        }
        if checkpoint.number > last {
            report.first_problem = Some(Tamper::Removed {
                after: last,
                next: checkpoint.number + 1,
            });
            return report;
        }
        let sealed = seal(key, checkpoint.number, &checkpoint.hash);
        let matches_entry = hashes
            .get(&checkpoint.number)
            .is_some_and(|hash| *hash == checkpoint.hash);
        if sealed[..] != checkpoint.seal[..] || !matches_entry {
            report.first_problem = Some(Tamper::BadSeal {
                checkpoint: checkpoint.number,
            });
            return report;
        }
    }
    if let Some(number) = missing {
        report.first_problem = Some(Tamper::MissingCheckpoint { number });
    } else if indexed_up_to.max(named_up_to) > last {
        report.first_problem = Some(Tamper::Removed {
            after: last,
            next: indexed_up_to.max(named_up_to) + 1,
        });
    }
    report
}
