//! Fuzzes what the hub does with a received `Submit` body: decode it as an `EnvelopeView`, then
//! the pure checks of `pipeline::Hub::validate` (ids, flow, NISS, period) and `bcss_wire::scan`
//! of the payload against its flow's full schema tree, comparing every NISS found.
#![no_main]

use bcss_domain::{Flow, Niss, Period};
use bcss_hub_fuzz::schema;
use bcss_proto::hub::v1::Envelope;
use bcss_proto::hub::view::v1::EnvelopeView;
use bcss_proto::hub::view::v1::envelope_view::Payload;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use time::Date;
use time::macros::format_description;

/// As `pipeline::printable_token`.
fn printable_token(text: &str) -> bool {
    (1..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

/// As `pipeline::parse_date`.
fn parse_date(text: &str) -> Option<Date> {
    Date::parse(text, format_description!("[year]-[month]-[day]")).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = EnvelopeView::decode(data) else {
        // The view must accept everything the typed envelope accepts (same numbers and wire
        // types; the view only leaves the payload undecoded).
        assert!(
            Envelope::decode(data).is_err(),
            "a typed Envelope decodes but the EnvelopeView does not"
        );
        return;
    };
    if let Ok(typed) = Envelope::decode(data) {
        assert_eq!(typed.message_id, envelope.message_id);
        assert_eq!(typed.flow, envelope.flow);
        assert_eq!(typed.niss, envelope.niss);
        assert_eq!(typed.period, envelope.period);
        assert_eq!(typed.addressee, envelope.addressee);
        assert_eq!(typed.relay_of, envelope.relay_of);
        assert_eq!(typed.contact_file, envelope.contact_file);
        use bcss_proto::hub::v1::envelope::Payload as Typed;
        let same_variant = matches!(
            (&typed.payload, &envelope.payload),
            (None, None)
                | (Some(Typed::A052(_)), Some(Payload::A052(_)))
                | (Some(Typed::Dmfa(_)), Some(Payload::Dmfa(_)))
                | (Some(Typed::Dimona(_)), Some(Payload::Dimona(_)))
        );
        assert!(
            same_variant,
            "the view and the typed envelope disagree on the payload"
        );
    }

    // `validate`, in its order, without the policy and the ledger.
    let _ = printable_token(&envelope.message_id);
    let _announced = match envelope.flow {
        1 => Some(Flow::A052),
        2 => Some(Flow::Dmfa),
        3 => Some(Flow::Dimona),
        _ => None,
    };
    let (carried, payload) = match &envelope.payload {
        Some(Payload::A052(bytes)) => (Flow::A052, bytes),
        Some(Payload::Dmfa(bytes)) => (Flow::Dmfa, bytes),
        Some(Payload::Dimona(bytes)) => (Flow::Dimona, bytes),
        None => return,
    };
    let niss = Niss::parse(&envelope.niss);
    if let Some(period) = &envelope.period {
        if let Some(start) = parse_date(&period.start) {
            let end = match period.end.as_str() {
                "" => None,
                text => parse_date(text),
            };
            let _ = Period::new(start, end);
        }
    }
    if let Some(contact_file) = &envelope.contact_file {
        let _ = printable_token(contact_file);
    }
    // The hub scans against the announced flow once it equals the carried one; scanning against
    // the carried flow reaches the same code whatever the flow field says.
    let flow_schema = schema().flow(carried);
    let Ok(found) = bcss_wire::scan(&flow_schema.tree, &flow_schema.niss_path, payload) else {
        return;
    };
    let accepted = !found.is_empty()
        && found
            .iter()
            .all(|value| niss.is_ok() && Niss::parse_bytes(value) == niss);
    if accepted {
        // A payload the hub accepts decodes at the recipient, and every occurrence equals the
        // envelope's NISS, so whichever one the decoder ends up with (protobuf merges) is it.
        let decoded = bcss_hub_fuzz::decoded_niss(carried, payload)
            .expect("an accepted payload decodes as its flow message");
        assert_eq!(
            Niss::parse(&decoded),
            niss,
            "recipient would read another NISS"
        );
    }
});
