//! The fields a filter drops, found without filtering: to name what a recipient does not get.
//!
//! Walks the payload exactly as [`crate::filter`] does (same tree, same recursion into
//! partially kept sub-messages, same errors for a malformed payload) but writes nothing: it
//! reports each dropped field occurrence as its node and field number. Speed matters less than
//! in the filter (it runs only when the journal records removed fields), so it reads fields
//! with the generic [`read_field`].

use crate::tree::{Action, FieldTree, NodeId};
use crate::walk::{WireError, read_field};

/// Calls `each(node, field number)` for every field occurrence the filter would drop, in the
/// payload's order; fields inside a dropped block are not visited.
pub fn for_each_dropped(
    tree: &FieldTree,
    input: &[u8],
    mut each: impl FnMut(NodeId, u32),
) -> Result<(), WireError> {
    walk(tree, tree.root(), input, &mut each)
}

fn walk(
    tree: &FieldTree,
    id: NodeId,
    input: &[u8],
    each: &mut impl FnMut(NodeId, u32),
) -> Result<(), WireError> {
    let mut pos = 0;
    while pos < input.len() {
        let field = read_field(input, pos)?;
        let action = Action::of(tree.node(id).slot(field.number), field.wire_type);
        match action.kind() {
            Action::DROP => each(id, field.number),
            Action::KEEP => {}
            Action::DESCEND => walk(
                tree,
                action.child(),
                &input[field.value_start..field.end],
                each,
            )?,
            _ => {
                return Err(WireError::WrongWireType {
                    field: field.number,
                    found: field.wire_type as u8,
                });
            }
        }
        pos = field.end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{FieldTreeBuilder, WireType, WireTypes};
    use crate::varint;

    fn field(number: u32, wire_type: u8, value: &[u8], out: &mut Vec<u8>) {
        varint::encode(u64::from(number) << 3 | u64::from(wire_type), out);
        if wire_type == 2 {
            varint::encode(value.len() as u64, out);
        }
        out.extend_from_slice(value);
    }

    #[test]
    fn reports_the_occurrences_the_filter_drops() {
        // Root keeps 1, descends into 3 (keeping its field 1); 2, 4 and 3.2 are dropped.
        let mut b = FieldTreeBuilder::default();
        b.keep(NodeId(0), 1, WireTypes::of(WireType::Varint));
        let job = b.descend(NodeId(0), 3).unwrap();
        b.keep(job, 1, WireTypes::of(WireType::Varint));
        let tree = b.build();
        let mut payload = Vec::new();
        field(1, 0, &[7], &mut payload);
        field(2, 2, b"Dupont", &mut payload);
        for _ in 0..2 {
            let mut inner = Vec::new();
            field(1, 0, &[1], &mut inner);
            field(2, 0, &[0x96, 0x01], &mut inner);
            field(3, 2, &inner, &mut payload);
        }
        field(4, 2, &[], &mut payload);
        let mut dropped = Vec::new();
        for_each_dropped(&tree, &payload, |node, number| dropped.push((node, number))).unwrap();
        assert_eq!(
            dropped,
            vec![(NodeId(0), 2), (job, 2), (job, 2), (NodeId(0), 4)]
        );
        // The filter agrees on how many occurrences go.
        let (_, stats) = crate::filter(&tree, &payload).unwrap();
        assert_eq!(stats.removed as usize, dropped.len());
    }

    #[test]
    fn malformed_payloads_give_the_filters_error() {
        let mut b = FieldTreeBuilder::default();
        let job = b.descend(NodeId(0), 3).unwrap();
        b.keep(job, 1, WireTypes::of(WireType::Varint));
        let tree = b.build();
        for input in [
            vec![0x1a, 0x05, 0x08], // length past the end
            vec![0x1a, 0x01, 0x0a], // inside the job: a key with no value
            vec![0x18, 0x01],       // the job as a varint
            vec![0x00, 0x01],       // field 0
        ] {
            let expected = crate::filter(&tree, &input).map(|_| ());
            assert!(expected.is_err(), "{input:?}");
            assert_eq!(
                for_each_dropped(&tree, &input, |_, _| {}),
                expected,
                "{input:?}"
            );
        }
    }
}
