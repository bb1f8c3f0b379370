//! The wire-level field filter: keeps exactly the fields of a [`FieldTree`], byte for byte.
//!
//! One pass, no allocation besides the output. Each field's key is looked up in its node's key
//! table (field number and wire type, wire-type check included, one load for keys of one or two
//! bytes); lengths and varints of one byte, and varints of up to eight bytes, are skipped on a
//! fast path; anything rarer (longer keys, field 0, groups, refused wire types) goes through the
//! generic [`read_field`], which gives the precise error. Kept fields are copied as byte ranges
//! (adjacent kept fields in one copy); a partially kept sub-message is filtered recursively into
//! the output behind a length placeholder as wide as the input's length (the filtered content is
//! never longer), narrowed in place if the filtered content needs fewer bytes; a sub-message
//! left empty by the filter is removed altogether. Recursion follows the tree, not the input,
//! so hostile nesting cannot exhaust the stack.

use bytes::Bytes;

use crate::tree::{Action, FieldTree, NodeId};
use crate::varint;
use crate::walk::{WireError, read_field};

/// What the filter did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Field occurrences removed (a removed block counts once, its contents not at all).
    pub removed: u32,
}

/// Filters `input` into a new buffer.
pub fn filter(tree: &FieldTree, input: &[u8]) -> Result<(Bytes, FilterStats), WireError> {
    let mut out = Vec::with_capacity(input.len());
    let stats = filter_to_vec(tree, input, &mut out)?;
    Ok((Bytes::from(out), stats))
}

/// Filters `input`, appending to `out` (which the caller may reuse across calls).
pub fn filter_to_vec(
    tree: &FieldTree,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<FilterStats, WireError> {
    let mut stats = FilterStats::default();
    filter_node(tree, tree.root(), input, out, &mut stats)?;
    Ok(stats)
}

/// The length of the varint at `at`, without decoding it: the first byte below 0x80 ends it.
/// Up to 8 bytes are found with one load; longer ones (and the last bytes of the buffer) go
/// through the decoder, which gives the precise error.
#[inline]
fn varint_len(input: &[u8], at: usize) -> Result<usize, WireError> {
    if let Some(bytes) = input.get(at..at + 8) {
        let word = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        let stops = !word & 0x8080_8080_8080_8080;
        if stops != 0 {
            return Ok(stops.trailing_zeros() as usize / 8 + 1);
        }
    } else if let Some(&byte) = input.get(at)
        && byte < 0x80
    {
        return Ok(1);
    }
    Ok(varint::decode(&input[at..])?.1)
}

/// No run of kept fields is pending.
const NO_RUN: usize = usize::MAX;

fn filter_node(
    tree: &FieldTree,
    id: NodeId,
    input: &[u8],
    out: &mut Vec<u8>,
    stats: &mut FilterStats,
) -> Result<(), WireError> {
    let keys = tree.keys(id);
    // Start of a run of kept fields not yet copied, or NO_RUN.
    let mut run = NO_RUN;
    let mut pos = 0;
    let len = input.len();
    while pos < len {
        let start = pos;
        // The key: one or two bytes on the fast path; anything else (longer keys, field 0,
        // groups, wire types the node refuses) goes through the generic reader.
        let b0 = input[pos];
        let mut key = usize::from(b0);
        let mut after_key = pos + 1;
        if b0 >= 0x80 {
            match input.get(pos + 1) {
                Some(&b1) if b1 < 0x80 => {
                    key = key & 0x7f | usize::from(b1) << 7;
                    after_key = pos + 2;
                }
                _ => key = usize::MAX,
            }
        }
        let mut action = if key == usize::MAX {
            Action(Action::SLOW)
        } else {
            keys.get(key)
        };
        let value_start;
        let end;
        if action.kind() != Action::SLOW {
            match key & 7 {
                0 => {
                    value_start = after_key;
                    end = after_key + varint_len(input, after_key)?;
                }
                1 => {
                    value_start = after_key;
                    end = after_key + 8;
                    if end > len {
                        return Err(WireError::Truncated);
                    }
                }
                5 => {
                    value_start = after_key;
                    end = after_key + 4;
                    if end > len {
                        return Err(WireError::Truncated);
                    }
                }
                _ => {
                    let value_len;
                    (value_len, value_start) = match input.get(after_key) {
                        Some(&b) if b < 0x80 => (usize::from(b), after_key + 1),
                        _ => {
                            let (value_len, used) = varint::decode(&input[after_key..])?;
                            let value_start = after_key + used;
                            if value_len > (len - value_start) as u64 {
                                return Err(WireError::LengthPastEnd);
                            }
                            (value_len as usize, value_start)
                        }
                    };
                    end = value_start + value_len;
                    if end > len {
                        return Err(WireError::LengthPastEnd);
                    }
                }
            }
        } else {
            let field = read_field(input, pos)?;
            action = Action::of(tree.node(id).slot(field.number), field.wire_type);
            if action.kind() == Action::SLOW {
                return Err(WireError::WrongWireType {
                    field: field.number,
                    found: field.wire_type as u8,
                });
            }
            key = (field.number as usize) << 3 | field.wire_type as usize;
            value_start = field.value_start;
            end = field.end;
        }
        match action.kind() {
            Action::KEEP => {
                if run == NO_RUN {
                    run = start;
                }
            }
            Action::DROP => {
                if run != NO_RUN {
                    out.extend_from_slice(&input[run..start]);
                    run = NO_RUN;
                }
                stats.removed += 1;
            }
            _ => {
                if run != NO_RUN {
                    out.extend_from_slice(&input[run..start]);
                    run = NO_RUN;
                }
                // The key is written afresh: an input key may be validly over-long, so its
                // length cannot be assumed. The length gets the width of the input's length
                // (the filtered content is never longer) and is narrowed if that is too wide.
                let block_start = out.len();
                varint::encode((key | 2) as u64, out);
                let len_at = out.len();
                let guess = varint::encoded_len((end - value_start) as u64);
                if guess == 1 {
                    out.push(0);
                } else {
                    out.extend_from_slice(&[0; 10][..guess]);
                }
                let removed_before = stats.removed;
                filter_node(tree, action.child(), &input[value_start..end], out, stats)?;
                let content = out.len() - len_at - guess;
                if content == 0 {
                    out.truncate(block_start);
                    stats.removed = removed_before + 1;
                } else {
                    let width = varint::encoded_len(content as u64);
                    if width < guess {
                        out.copy_within(len_at + guess.., len_at + width);
                        out.truncate(len_at + width + content);
                    }
                    varint::encode_into(content as u64, &mut out[len_at..len_at + width]);
                }
            }
        }
        pos = end;
    }
    if run != NO_RUN {
        out.extend_from_slice(&input[run..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{FieldTreeBuilder, WireType, WireTypes};

    /// Hand-encoding helpers: (field, wire type) keys and values.
    fn key(field: u32, wt: u8, out: &mut Vec<u8>) {
        varint::encode(u64::from(field) << 3 | u64::from(wt), out);
    }
    fn string(field: u32, s: &[u8], out: &mut Vec<u8>) {
        key(field, 2, out);
        varint::encode(s.len() as u64, out);
        out.extend_from_slice(s);
    }
    fn uint(field: u32, v: u64, out: &mut Vec<u8>) {
        key(field, 0, out);
        varint::encode(v, out);
    }
    fn msg(field: u32, body: Vec<u8>, out: &mut Vec<u8>) {
        string(field, &body, out);
    }

    const LEN: WireTypes = WireTypes::of(WireType::Len);
    const VARINT: WireTypes = WireTypes::packable(WireType::Varint);

    /// Person { 1: niss, 2: name, 3: repeated Job { 1: code, 2: amount, 3: note } , 4: age }
    fn person(jobs: usize, note_len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        string(1, b"85073003328", &mut p);
        string(2, b"Dupont", &mut p);
        for i in 0..jobs {
            let mut job = Vec::new();
            uint(1, 100 + i as u64, &mut job);
            uint(2, 123_456, &mut job);
            string(3, &vec![b'x'; note_len], &mut job);
            msg(3, job, &mut p);
        }
        uint(4, 41, &mut p);
        p
    }

    fn tree(paths: &[&[u32]]) -> FieldTree {
        let mut b = FieldTreeBuilder::default();
        for path in paths {
            let mut node = b.build_root();
            for &f in &path[..path.len() - 1] {
                node = b.descend(node, f).unwrap();
            }
            let last = *path.last().unwrap();
            b.keep(
                node,
                last,
                if last == 1 || last == 4 || (path.len() == 2 && last == 2) {
                    VARINT
                } else {
                    LEN
                },
            );
        }
        b.build()
    }

    impl FieldTreeBuilder {
        fn build_root(&self) -> NodeId {
            NodeId(0)
        }
    }

    #[test]
    fn keeps_exactly_the_listed_fields() {
        // name kept (LEN), niss dropped, jobs partially: code only.
        let mut b = FieldTreeBuilder::default();
        b.keep(NodeId(0), 2, LEN);
        let job = b.descend(NodeId(0), 3).unwrap();
        b.keep(job, 1, VARINT);
        let t = b.build();
        let (out, stats) = filter(&t, &person(2, 5)).unwrap();
        let mut expected = Vec::new();
        string(2, b"Dupont", &mut expected);
        for i in 0..2 {
            let mut job = Vec::new();
            uint(1, 100 + i, &mut job);
            msg(3, job, &mut expected);
        }
        assert_eq!(&out[..], &expected[..]);
        // niss, age, and per job: amount and note.
        assert_eq!(stats.removed, 2 + 2 * 2);
    }

    #[test]
    fn widens_lengths_of_large_sub_messages() {
        // Keep job code and note; a 300-byte note makes the filtered job need a 2-byte length.
        let mut b = FieldTreeBuilder::default();
        let job = b.descend(NodeId(0), 3).unwrap();
        b.keep(job, 1, VARINT);
        b.keep(job, 3, LEN);
        let t = b.build();
        let (out, _) = filter(&t, &person(3, 300)).unwrap();
        let mut expected = Vec::new();
        for i in 0..3 {
            let mut job = Vec::new();
            uint(1, 100 + i, &mut job);
            string(3, &[b'x'; 300], &mut job);
            msg(3, job, &mut expected);
        }
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn drops_sub_messages_left_empty() {
        let mut b = FieldTreeBuilder::default();
        let job = b.descend(NodeId(0), 3).unwrap();
        b.keep(job, 9, VARINT);
        let t = b.build();
        let (out, stats) = filter(&t, &person(2, 1)).unwrap();
        assert!(out.is_empty());
        // niss, name, two emptied jobs, age.
        assert_eq!(stats.removed, 5);
    }

    #[test]
    fn keep_everything_is_identity() {
        let t = tree(&[&[1], &[2], &[3], &[4]]);
        let input = person(4, 200);
        assert_eq!(&filter(&t, &input).unwrap().0[..], &input[..]);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let mut b = FieldTreeBuilder::default();
        b.keep(NodeId(0), 2, LEN);
        let job = b.descend(NodeId(0), 3).unwrap();
        b.keep(job, 1, VARINT);
        let t = b.build();
        let good = person(1, 3);
        let mut wrong_type = Vec::new();
        uint(2, 7, &mut wrong_type);
        let mut descend_not_len = Vec::new();
        uint(3, 7, &mut descend_not_len);
        let mut group = Vec::new();
        key(5, 3, &mut group);
        // A job whose last varint (or length) would end past the job, inside the bytes of
        // the fields that follow it.
        let mut varint_past_job = Vec::new();
        msg(3, vec![0x08, 0x80], &mut varint_past_job);
        uint(4, 41, &mut varint_past_job);
        string(2, b"Dupont", &mut varint_past_job);
        let mut length_past_job = Vec::new();
        msg(3, vec![0x1a, 0x03, b'x'], &mut length_past_job);
        string(2, b"Dupont", &mut length_past_job);
        let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
            (
                "truncated",
                good[..good.len() - 1].to_vec(),
                WireError::Truncated,
            ),
            (
                "length past end",
                vec![0x12, 0x05, b'a'],
                WireError::LengthPastEnd,
            ),
            ("field zero", vec![0x00, 0x01], WireError::FieldZero),
            ("wire type 7", vec![0x0f], WireError::UnknownWireType(7)),
            ("group", group, WireError::Group),
            (
                "varint running past its sub-message",
                varint_past_job,
                WireError::Truncated,
            ),
            (
                "length running past its sub-message",
                length_past_job,
                WireError::LengthPastEnd,
            ),
            (
                "kept field with wrong wire type",
                wrong_type,
                WireError::WrongWireType { field: 2, found: 0 },
            ),
            (
                "sub-message with wrong wire type",
                descend_not_len,
                WireError::WrongWireType { field: 3, found: 0 },
            ),
        ];
        for (name, input, expected) in cases {
            assert_eq!(filter(&t, &input).map(|_| ()), Err(expected), "{name}");
        }
    }
}
