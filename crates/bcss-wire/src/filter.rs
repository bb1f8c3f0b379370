//! The wire-level field filter: keeps exactly the fields of a [`FieldTree`], byte for byte.
//!
//! Kept fields are copied as byte ranges (adjacent kept fields in one copy); a partially kept
//! sub-message is filtered recursively into the output behind a one-byte length that is widened
//! in place if the filtered content needs more; a sub-message left empty by the filter is
//! removed altogether. Recursion follows the tree, not the input, so hostile nesting cannot
//! exhaust the stack.

use bytes::Bytes;

use crate::tree::{FieldTree, NodeId, Slot, WireType};
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

fn filter_node(
    tree: &FieldTree,
    node: NodeId,
    input: &[u8],
    out: &mut Vec<u8>,
    stats: &mut FilterStats,
) -> Result<(), WireError> {
    let node = tree.node(node);
    // Start of a run of kept fields not yet copied.
    let mut run: Option<usize> = None;
    let mut pos = 0;
    while pos < input.len() {
        let field = read_field(input, pos)?;
        match node.slot(field.number) {
            Slot::Keep(accepted) => {
                if !accepted.contains(field.wire_type) {
                    return Err(WireError::WrongWireType {
                        field: field.number,
                        found: field.wire_type as u8,
                    });
                }
                run.get_or_insert(field.start);
            }
            Slot::Drop => {
                if let Some(start) = run.take() {
                    out.extend_from_slice(&input[start..field.start]);
                }
                stats.removed += 1;
            }
            Slot::Descend(child) => {
                if field.wire_type != WireType::Len {
                    return Err(WireError::WrongWireType {
                        field: field.number,
                        found: field.wire_type as u8,
                    });
                }
                if let Some(start) = run.take() {
                    out.extend_from_slice(&input[start..field.start]);
                }
                // The key is written afresh: an input key may be validly over-long, so its
                // length cannot be assumed.
                let block_start = out.len();
                varint::encode(u64::from(field.number) << 3 | 2, out);
                let len_at = out.len();
                out.push(0);
                let removed_before = stats.removed;
                filter_node(
                    tree,
                    child,
                    &input[field.value_start..field.end],
                    out,
                    stats,
                )?;
                let len = out.len() - len_at - 1;
                if len == 0 {
                    out.truncate(block_start);
                    stats.removed = removed_before + 1;
                } else {
                    let width = varint::encoded_len(len as u64);
                    if width > 1 {
                        out.resize(out.len() + width - 1, 0);
                        out.copy_within(len_at + 1..len_at + 1 + len, len_at + width);
                    }
                    varint::encode_into(len as u64, &mut out[len_at..len_at + width]);
                }
            }
        }
        pos = field.end;
    }
    if let Some(start) = run {
        out.extend_from_slice(&input[start..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{FieldTreeBuilder, WireTypes};

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
