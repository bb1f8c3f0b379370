//! Fuzzes `bcss_wire::filter` with the shipped deliberations' field trees: the first byte picks
//! one (deliberation, flow) grant from `config/`, the rest is the payload. Besides never
//! panicking, the filter must give exactly what the untuned reference filter gives (bytes,
//! statistics, error), only shrink, be idempotent, keep a valid payload valid (and decodable),
//! and never bring out a NISS value that was not in the input.
#![no_main]

use bcss_hub_fuzz::{decodes, grants, schema};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let grants = grants();
    let grant = &grants[usize::from(selector) % grants.len()];
    let flow_schema = schema().flow(grant.flow);
    let scanned = bcss_wire::scan(&flow_schema.tree, &flow_schema.niss_path, input);

    // The tuned filter (key tables, fast paths, guessed length widths) must do exactly what
    // the untuned one did: same bytes, same statistics, same error.
    let filtered = bcss_wire::filter(grant.tree, input);
    let reference = bcss_wire::reference::filter(grant.tree, input);
    assert_eq!(
        filtered.as_ref().map(|(out, stats)| (&out[..], *stats)),
        reference.as_ref().map(|(out, stats)| (&out[..], *stats)),
        "{} {}: the tuned filter and the reference filter disagree",
        grant.deliberation,
        grant.flow
    );

    let Ok((output, _stats)) = filtered else {
        // The grant's tree is part of the flow's schema: what scan accepts, filter accepts.
        assert!(
            scanned.is_err(),
            "{} {}: scan accepts a payload that filter refuses",
            grant.deliberation,
            grant.flow
        );
        return;
    };

    assert!(
        output.len() <= input.len(),
        "{} {}: the filter grew the payload from {} to {} bytes",
        grant.deliberation,
        grant.flow,
        input.len(),
        output.len()
    );

    let again = bcss_wire::filter(grant.tree, &output);
    match &again {
        Ok((twice, _)) => assert_eq!(
            &twice[..],
            &output[..],
            "{} {}: filtering twice changes the bytes",
            grant.deliberation,
            grant.flow
        ),
        Err(error) => panic!(
            "{} {}: the filter's own output is refused: {error}",
            grant.deliberation, grant.flow
        ),
    }

    if let Ok(found_in) = &scanned {
        match bcss_wire::scan(&flow_schema.tree, &flow_schema.niss_path, &output) {
            Ok(found_out) => {
                for value in &found_out {
                    assert!(
                        found_in.contains(value),
                        "{} {}: the output carries a NISS value the input did not",
                        grant.deliberation,
                        grant.flow
                    );
                }
            }
            Err(error) => panic!(
                "{} {}: a valid payload filters into an invalid one: {error}",
                grant.deliberation, grant.flow
            ),
        }
    }

    if decodes(grant.flow, input) {
        assert!(
            decodes(grant.flow, &output),
            "{} {}: the input decodes as the flow message, the filtered output does not",
            grant.deliberation,
            grant.flow
        );
    }
});
