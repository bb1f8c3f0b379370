//! Validation of a whole payload against its flow's schema tree, finding the person's NISS.
//!
//! [`scan`] walks every field the schema knows (descending into every sub-message) and checks
//! wire types and bounds, so that a payload the hub accepts is one every recipient can decode.
//! Fields the schema does not know are skipped (protobuf's forward compatibility) and never
//! pass a filter. Every occurrence of the NISS field along the NISS path is returned: with
//! protobuf's merge semantics any of them could be the value a decoder ends up with, so the
//! caller requires them all to match the envelope.

use crate::tree::{FieldTree, NodeId, Slot, WireType, WireTypes};
use crate::varint;
use crate::walk::{WireError, read_field};

/// Validates `input` against `schema` and returns the values of the field at `niss_path`
/// (field numbers from the root), in order of appearance.
pub fn scan<'a>(
    schema: &FieldTree,
    niss_path: &[u32],
    input: &'a [u8],
) -> Result<Vec<&'a [u8]>, WireError> {
    let mut found = Vec::new();
    scan_node(schema, schema.root(), Some(niss_path), input, &mut found)?;
    Ok(found)
}

fn scan_node<'a>(
    schema: &FieldTree,
    node: NodeId,
    path: Option<&[u32]>,
    input: &'a [u8],
    found: &mut Vec<&'a [u8]>,
) -> Result<(), WireError> {
    let node_ref = schema.node(node);
    let mut pos = 0;
    while pos < input.len() {
        let field = read_field(input, pos)?;
        let on_path = path
            .and_then(|p| p.split_first())
            .filter(|(first, _)| **first == field.number);
        match node_ref.slot(field.number) {
            Slot::Drop => {}
            Slot::Keep(accepted) => {
                if !accepted.contains(field.wire_type) {
                    return Err(WireError::WrongWireType {
                        field: field.number,
                        found: field.wire_type as u8,
                    });
                }
                if field.wire_type == WireType::Len {
                    check_value(accepted, field.number, &input[field.value_start..field.end])?;
                }
                if let Some((_, [])) = on_path {
                    found.push(&input[field.value_start..field.end]);
                }
            }
            Slot::Descend(child) => {
                if field.wire_type != WireType::Len {
                    return Err(WireError::WrongWireType {
                        field: field.number,
                        found: field.wire_type as u8,
                    });
                }
                let rest = on_path
                    .map(|(_, rest)| rest)
                    .filter(|rest| !rest.is_empty());
                scan_node(
                    schema,
                    child,
                    rest,
                    &input[field.value_start..field.end],
                    found,
                )?;
            }
        }
        pos = field.end;
    }
    Ok(())
}

/// A `Len` value of a kept field: a string must be UTF-8, packed scalars must be whole.
fn check_value(accepted: WireTypes, field: u32, value: &[u8]) -> Result<(), WireError> {
    if accepted.is_string() {
        return std::str::from_utf8(value)
            .map(|_| ())
            .map_err(|_| WireError::InvalidUtf8 { field });
    }
    let whole = match accepted.packed_scalar() {
        None => true,
        Some(WireType::I64) => value.len().is_multiple_of(8),
        Some(WireType::I32) => value.len().is_multiple_of(4),
        Some(_) => {
            let mut pos = 0;
            while pos < value.len() {
                match varint::decode(&value[pos..]) {
                    Ok((_, used)) => pos += used,
                    Err(_) => return Err(WireError::BadPacked { field }),
                }
            }
            true
        }
    };
    if whole {
        Ok(())
    } else {
        Err(WireError::BadPacked { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::FieldTreeBuilder;

    fn schema() -> FieldTree {
        // Root { 1: Declaration { 1: Person { 1: niss string, 2: age varint } } , 2: note string }
        let mut b = FieldTreeBuilder::default();
        let decl = b.descend(NodeId(0), 1).unwrap();
        let person = b.descend(decl, 1).unwrap();
        b.keep(person, 1, WireTypes::of(WireType::Len));
        b.keep(person, 2, WireTypes::packable(WireType::Varint));
        b.keep(NodeId(0), 2, WireTypes::of(WireType::Len));
        b.build()
    }

    #[test]
    fn finds_every_occurrence_of_the_niss() {
        // decl{person{niss=A, age=3}} decl{person{niss=B}} note="x" unknown 9=1
        let input = [
            0x0a, 0x0f, 0x0a, 0x0d, 0x0a, 0x0b, b'1', b'1', b'1', b'1', b'1', b'1', b'1', b'1',
            b'1', b'1', b'A', 0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, b'B', 0x12, 0x01, b'x', 0x48,
            0x01,
        ];
        let found = scan(&schema(), &[1, 1, 1], &input).unwrap();
        assert_eq!(found, vec![&b"1111111111A"[..], &b"B"[..]]);
    }

    #[test]
    fn wrong_wire_types_deep_inside_are_refused() {
        // decl{person{age as a fixed32}}
        let input = [0x0a, 0x07, 0x0a, 0x05, 0x15, 1, 2, 3, 4];
        assert_eq!(
            scan(&schema(), &[1, 1, 1], &input),
            Err(WireError::WrongWireType { field: 2, found: 5 })
        );
    }
}
