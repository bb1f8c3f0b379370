//! The filter as it was before it was tuned (one generic field reader, a one-byte length
//! placeholder widened in place): the oracle the tuned filter is compared with, for every input
//! including malformed ones, in the differential tests.

use crate::filter::FilterStats;
use crate::tree::{FieldTree, NodeId, Slot, WireType};
use crate::varint;
use crate::walk::{WireError, read_field};

/// Filters `input` as the untuned filter did.
pub fn filter(tree: &FieldTree, input: &[u8]) -> Result<(Vec<u8>, FilterStats), WireError> {
    let mut out = Vec::new();
    let mut stats = FilterStats::default();
    filter_node(tree, tree.root(), input, &mut out, &mut stats)?;
    Ok((out, stats))
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
