//! Hostile inputs for `scan` and `filter`, next to the cargo-fuzz targets in `fuzz/`: each one
//! must come back as the precise error (or the precise result) the wire walker promises, never
//! as a panic, and every input a fuzz target ever crashed on stays here as a replayed file.

use std::path::Path;

use bcss_wire::{
    FieldTree, FieldTreeBuilder, NodeId, WireError, WireType, WireTypes, filter, scan,
};

/// A small schema shaped like the flows:
/// `Root { 1: Person { 1: niss string, 2: age varint, 3: repeated codes varint }, 2: note string }`.
fn schema() -> FieldTree {
    let mut b = FieldTreeBuilder::default();
    let person = b.descend(NodeId(0), 1).unwrap();
    b.keep(person, 1, WireTypes::string());
    b.keep(person, 2, WireTypes::of(WireType::Varint));
    b.keep(person, 3, WireTypes::packable(WireType::Varint));
    b.keep(NodeId(0), 2, WireTypes::string());
    b.build()
}

/// Where the NISS sits in [`schema`].
const NISS_PATH: &[u32] = &[1, 1];

/// A grant of that schema keeping the person's NISS and age only.
fn grant() -> FieldTree {
    let mut b = FieldTreeBuilder::default();
    let person = b.descend(NodeId(0), 1).unwrap();
    b.keep(person, 1, WireTypes::string());
    b.keep(person, 2, WireTypes::of(WireType::Varint));
    b.build()
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `field` as a length-delimited value holding `body`.
fn len_field(field: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field) << 3 | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// `depth` levels of `field { field { ... } }` around `core`.
fn nested(field: u32, depth: usize, core: &[u8]) -> Vec<u8> {
    (0..depth).fold(core.to_vec(), |inner, _| len_field(field, &inner))
}

/// Inputs both `scan` and `filter` must refuse, with the error each must give.
fn refused() -> Vec<(&'static str, Vec<u8>, WireError)> {
    vec![
        ("truncated key varint", vec![0x80], WireError::Truncated),
        (
            "truncated value varint (unknown field 9)",
            vec![0x48, 0x96],
            WireError::Truncated,
        ),
        (
            "varint longer than 10 bytes",
            vec![0xff; 11],
            WireError::VarintOverflow,
        ),
        (
            "field number above 2^29 - 1",
            {
                let mut key = Vec::new();
                varint(1 << 32, &mut key);
                key
            },
            WireError::FieldNumberTooLarge,
        ),
        ("field number zero", vec![0x02, 0x00], WireError::FieldZero),
        ("wire type 7", vec![0x0f], WireError::UnknownWireType(7)),
        (
            "start group (unknown field 9)",
            vec![0x4b],
            WireError::Group,
        ),
        (
            "length prefix past the end",
            vec![0x12, 0x05, b'a'],
            WireError::LengthPastEnd,
        ),
        (
            "length prefix past the end inside the sub-message",
            len_field(1, &[0x0a, 0x7f, b'8']),
            WireError::LengthPastEnd,
        ),
        (
            "fixed64 running past the end",
            vec![0x49, 1, 2, 3],
            WireError::Truncated,
        ),
        (
            "sub-message sent as a varint",
            vec![0x08, 0x01],
            WireError::WrongWireType { field: 1, found: 0 },
        ),
        (
            "sub-message sent as a fixed32",
            vec![0x0d, 1, 2, 3, 4],
            WireError::WrongWireType { field: 1, found: 5 },
        ),
        (
            "kept varint sent as a fixed64, inside the sub-message",
            len_field(1, &[0x11, 1, 2, 3, 4, 5, 6, 7, 8]),
            WireError::WrongWireType { field: 2, found: 1 },
        ),
    ]
}

#[test]
fn hostile_inputs_are_errors_not_panics() {
    let schema = schema();
    let grant = grant();
    for (name, input, expected) in refused() {
        assert_eq!(
            scan(&schema, NISS_PATH, &input),
            Err(expected),
            "scan: {name}"
        );
        // Every case sits where the grant's walk goes too: the filter gives the same error.
        assert_eq!(
            filter(&grant, &input).map(|_| ()),
            Err(expected),
            "filter: {name}"
        );
    }
}

#[test]
fn zero_length_input_is_an_empty_message() {
    // Zero bytes are a valid empty message: scan finds no NISS (the hub then refuses the
    // message for a missing NISS), the filter keeps nothing and removes nothing.
    assert_eq!(scan(&schema(), NISS_PATH, &[]), Ok(vec![]));
    let (out, stats) = filter(&grant(), &[]).unwrap();
    assert!(out.is_empty());
    assert_eq!(stats.removed, 0);
}

#[test]
fn deep_nesting_in_unknown_fields_is_skipped_without_recursion() {
    // 10,000 levels under an unknown field number: neither walker descends into it.
    let input = nested(9, 10_000, b"x");
    assert_eq!(scan(&schema(), NISS_PATH, &input), Ok(vec![]));
    let (out, stats) = filter(&grant(), &input).unwrap();
    assert!(out.is_empty());
    assert_eq!(stats.removed, 1);
}

#[test]
fn deep_nesting_under_a_known_field_stops_where_the_tree_does() {
    // 10,000 levels of field 1, cut short at the very bottom. Both walkers recurse along the
    // tree (two levels here), never along the input. scan then reads the person's field 1 as a
    // string: nested lengths of 128 bytes and more put continuation bytes where UTF-8 needs a
    // lead byte. The filter keeps that field whole and copies it without reading it.
    let mut input = nested(1, 10_000, b"");
    let last = input.len() - 1;
    input[last] = 0x80;
    assert_eq!(
        scan(&schema(), NISS_PATH, &input),
        Err(WireError::InvalidUtf8 { field: 1 })
    );
    let (out, stats) = filter(&grant(), &input).unwrap();
    assert_eq!(&out[..], &input[..]);
    assert_eq!(stats.removed, 0);
}

#[test]
fn values_scan_checks_and_the_filter_copies_unread() {
    let schema = schema();
    let grant = grant();
    // A NISS that is not UTF-8: scan refuses it, the filter (which never reads kept values)
    // copies it; the hub scans before it filters.
    let bad_string = len_field(1, &len_field(1, &[0xff, 0xfe]));
    assert_eq!(
        scan(&schema, NISS_PATH, &bad_string),
        Err(WireError::InvalidUtf8 { field: 1 })
    );
    assert_eq!(&filter(&grant, &bad_string).unwrap().0[..], &bad_string[..]);
    // Packed codes whose last varint is cut short.
    let ragged = len_field(1, &[0x1a, 0x02, 0x01, 0x80]);
    assert_eq!(
        scan(&schema, NISS_PATH, &ragged),
        Err(WireError::BadPacked { field: 3 })
    );
}

#[test]
fn an_over_long_key_of_a_kept_sub_message_is_written_afresh() {
    // Field 1 (the person) with its key spelled in two bytes (0x8a 0x00), valid protobuf. The
    // filter used to copy only the first key byte, producing bytes no decoder reads.
    let person = [0x10, 0x29]; // age 41
    let mut input = vec![0x8a, 0x00, person.len() as u8];
    input.extend_from_slice(&person);
    assert_eq!(scan(&schema(), NISS_PATH, &input), Ok(vec![]));
    let (out, _) = filter(&grant(), &input).unwrap();
    assert_eq!(&out[..], &len_field(1, &person)[..]);
    // Idempotent, and still valid.
    assert_eq!(&filter(&grant(), &out).unwrap().0[..], &out[..]);
    assert_eq!(scan(&schema(), NISS_PATH, &out), Ok(vec![]));
}

#[test]
fn the_niss_is_found_at_every_occurrence() {
    // Two person blocks, each with a NISS: a decoder merges them, so both are reported.
    let mut input = len_field(1, &len_field(1, b"85073003328"));
    input.extend(len_field(1, &len_field(1, b"05031512367")));
    assert_eq!(
        scan(&schema(), NISS_PATH, &input),
        Ok(vec![&b"85073003328"[..], &b"05031512367"[..]])
    );
}

/// Inputs a fuzz target or a property test failed on, kept as files under
/// `tests/fuzz-regressions/<target>/` (the target's selector byte first). Each one replays
/// through `scan` and `filter` with this file's schema and grant: no panic, and a filtered
/// output that is no longer than its input, filters to itself again, and scans as valid when
/// the input did.
#[test]
fn fuzz_regression_files_replay_without_panics() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let targets =
        std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    let schema = schema();
    let grant = grant();
    let mut replayed = 0;
    for target in targets {
        let target = target.unwrap().path();
        if !target.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&target).unwrap() {
            let file = file.unwrap().path();
            let data = std::fs::read(&file).unwrap();
            let input = data.get(1..).unwrap_or_default();
            let scanned = scan(&schema, NISS_PATH, input);
            if let Ok((out, _)) = filter(&grant, input) {
                assert!(out.len() <= input.len(), "{}", file.display());
                assert_eq!(
                    filter(&grant, &out).map(|(again, _)| again),
                    Ok(out.clone()),
                    "{}",
                    file.display()
                );
                if scanned.is_ok() {
                    assert!(scan(&schema, NISS_PATH, &out).is_ok(), "{}", file.display());
                }
            }
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no file under {}", folder.display());
}
