//! Fuzzes `bcss_wire::scan`, the hub's payload validation: the first byte picks the flow (A052,
//! DmfA, Dimona), the rest is the payload, scanned against that flow's full schema tree. It
//! must never panic; it must agree with prost on which payloads are well formed (except groups,
//! which it refuses); and the NISS occurrences it reports must be in-bounds, in order, and agree
//! with what a protobuf decoder reads.
#![no_main]

use bcss_hub_fuzz::{decoded_niss, flow_of, schema};
use bcss_wire::WireError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let flow = flow_of(selector);
    let flow_schema = schema().flow(flow);
    let decoded = decoded_niss(flow, payload);
    let found = match bcss_wire::scan(&flow_schema.tree, &flow_schema.niss_path, payload) {
        Ok(found) => found,
        Err(error) => {
            // scan is only stricter than a protobuf decoder where it refuses groups (deprecated,
            // and skipped by decoders when unknown).
            assert!(
                decoded.is_none() || error == WireError::Group,
                "prost decodes a payload that scan refuses: {error}"
            );
            return;
        }
    };
    // "A payload the hub accepts is one every recipient can decode."
    let Some(decoded) = decoded else {
        panic!("scan accepts a payload that prost cannot decode as the flow message");
    };

    // Every occurrence is a sub-slice of the payload, in order of appearance, not overlapping.
    let base = payload.as_ptr() as usize;
    let mut previous_end = 0;
    for value in &found {
        let start = (value.as_ptr() as usize).wrapping_sub(base);
        let end = start.saturating_add(value.len());
        assert!(
            start <= payload.len() && end <= payload.len(),
            "a NISS occurrence lies outside the payload"
        );
        assert!(
            start >= previous_end,
            "NISS occurrences overlap or are out of order"
        );
        previous_end = end;
        // The value follows its key and length prefix: the byte before it ends a varint.
        assert!(
            start >= 2 && payload[start - 1] < 0x80,
            "a NISS occurrence does not follow a length prefix"
        );
    }

    // What a recipient's decoder reads as the NISS (the last occurrence, by protobuf's merge
    // rules) is the last occurrence scan reported, or empty when there is none.
    let last = found.last().copied().unwrap_or_default();
    assert_eq!(
        decoded.as_bytes(),
        last,
        "scan and prost disagree on the NISS"
    );
});
