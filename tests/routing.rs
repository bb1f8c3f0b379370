//! End to end over mutual TLS: the four deliberations, refusals, relays, bad input, Explain,
//! Track, idempotency and the Directory service, each against the real server on loopback.

mod common;

use std::time::Duration;

use bcss_domain::Niss;
use bcss_gateway::journal::Retention;
use bcss_proto::flows::v1 as f;
use bcss_proto::hub::v1::ByTicketRequest;
use bcss_proto::hub::v1::journal_client::JournalClient;
use bcss_proto::hub::v1::{
    Decision, Envelope, IntegrateRequest, RefusalReason, SubmitReply, TrackRequest,
};
use bcss_proto::institution::v1::{Delivery, delivery};
use bcss_sim::envelope::{FlowMessage, envelope};
use bcss_sim::payloads;
use common::{Harness, a052_envelope, dmfa_envelope, fresh_niss, integrate, rng, submit, track};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use time::macros::date;
use tonic::Code;

fn outcome<'a>(
    reply: &'a SubmitReply,
    institution: &str,
) -> &'a bcss_proto::hub::v1::RecipientOutcome {
    reply
        .recipients
        .iter()
        .find(|r| r.institution == institution)
        .unwrap_or_else(|| panic!("{institution} is not a candidate: {reply:#?}"))
}

fn dimona_envelope(id: &str, niss: Niss) -> Envelope {
    let message = payloads::dimona(
        &mut rng(9),
        niss,
        date!(2025 - 05 - 02),
        Some(date!(2025 - 08 - 31)),
    );
    envelope(
        id,
        niss,
        date!(2025 - 05 - 02),
        Some(date!(2025 - 08 - 31)),
        FlowMessage::Dimona(message),
    )
}

/// The reference filter: decode with prost-reflect, clear every field the deliberation does not
/// list (dropping blocks left empty), re-encode. What the wire-level filter must equal.
fn reference_filter(message: &mut DynamicMessage, prefix: &str, allowed: &[String]) {
    let fields: Vec<_> = message.fields().map(|(field, _)| field).collect();
    for field in fields {
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        if allowed.contains(&path) {
            continue;
        }
        if !allowed.iter().any(|a| a.starts_with(&format!("{path}."))) {
            message.clear_field(&field);
            continue;
        }
        let mut value = message.get_field(&field).into_owned();
        match &mut value {
            Value::Message(inner) => {
                reference_filter(inner, &path, allowed);
                if inner.fields().next().is_none() {
                    message.clear_field(&field);
                    continue;
                }
            }
            Value::List(items) => {
                for item in items.iter_mut() {
                    if let Value::Message(inner) = item {
                        reference_filter(inner, &path, allowed);
                    }
                }
                items.retain(
                    |item| !matches!(item, Value::Message(m) if m.fields().next().is_none()),
                );
            }
            _ => {}
        }
        message.set_field(&field, value);
    }
}

fn descriptor(message: &str) -> MessageDescriptor {
    let pool = DescriptorPool::decode(bcss_proto::FILE_DESCRIPTOR_SET).unwrap();
    pool.get_message_by_name(&format!("bcss.flows.v1.{message}"))
        .unwrap()
}

/// The field list of `flow` in the deliberation's file, read as plain TOML: what the text of the
/// deliberation allows, independent of the policy loader and the compiled field trees.
fn fields_in_the_file(h: &Harness, deliberation: &str, flow: bcss_domain::Flow) -> Vec<String> {
    let file = h
        .config_dir
        .join("deliberations")
        .join(format!("{}.toml", deliberation.replace('/', "-")));
    let table: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    let flows = table["flow"].as_array().expect("[[flow]] entries");
    let entry = flows
        .iter()
        .find(|entry| entry["flow"].as_str() == Some(flow.name()))
        .unwrap_or_else(|| panic!("{deliberation} lists no {flow}"));
    let fields: Vec<String> = entry["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field.as_str().unwrap().to_owned())
        .collect();
    assert!(!fields.is_empty(), "{deliberation} {flow}");
    fields
}

/// Checks that `received` holds exactly the fields of `deliberation` present in `original`.
fn assert_exactly_the_allowed_fields(
    h: &Harness,
    deliberation: &str,
    flow: bcss_domain::Flow,
    original: &[u8],
    received: &[u8],
    descriptor: MessageDescriptor,
) {
    let policy = h.hub.policy();
    let grant = policy
        .grant(policy.deliberation(deliberation).unwrap(), flow)
        .unwrap();
    let listed = fields_in_the_file(h, deliberation, flow);
    let mut expected = DynamicMessage::decode(descriptor.clone(), original).unwrap();
    reference_filter(&mut expected, "", &listed);
    let got = DynamicMessage::decode(descriptor, received).unwrap();
    assert_eq!(
        got, expected,
        "{deliberation} {flow}: the received payload differs from the reference filter"
    );
    // And field by field: every leaf present is listed by the deliberation.
    let removed = policy
        .schema()
        .removed_fields(flow, &grant.paths, received)
        .unwrap();
    assert!(
        removed.is_empty(),
        "{deliberation}: fields outside the deliberation reached the recipient: {removed:?}"
    );
}

fn payload_bytes(delivery: &Delivery) -> (bcss_domain::Flow, Vec<u8>) {
    match delivery.payload.as_ref().unwrap() {
        delivery::Payload::A052(m) => (bcss_domain::Flow::A052, m.encode_to_vec()),
        delivery::Payload::Dmfa(m) => (bcss_domain::Flow::Dmfa, m.encode_to_vec()),
        delivery::Payload::Dimona(m) => (bcss_domain::Flow::Dimona, m.encode_to_vec()),
    }
}

fn original_bytes(envelope: &Envelope) -> Vec<u8> {
    use bcss_proto::hub::v1::envelope::Payload;
    match envelope.payload.as_ref().unwrap() {
        Payload::A052(m) => m.encode_to_vec(),
        Payload::Dmfa(m) => m.encode_to_vec(),
        Payload::Dimona(m) => m.encode_to_vec(),
    }
}

#[tokio::test]
async fn a052_under_20_130_reaches_every_integrated_cpas_with_all_fields() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(1);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await; // aid applicant
    integrate(&h, "cpas-namur", niss, 2, "2024-06-01", "").await; // maintenance debtor
    integrate(&h, "spp-is", niss, 3, "2024-06-01", "").await; // cohabiting partner
    let envelope = a052_envelope("a052-1", niss, 1);
    let reply = submit(&h, "mc", envelope.clone()).await.unwrap();
    for recipient in ["cpas-liege", "cpas-namur", "spp-is"] {
        let o = outcome(&reply, recipient);
        assert_eq!(o.decision, Decision::Delivered as i32, "{recipient}: {o:?}");
        assert_eq!(o.deliberation, "20/130");
        let inbox = h.network.inbox(recipient).deliveries();
        assert_eq!(inbox.len(), 1, "{recipient}");
        let delivery = &inbox[0];
        assert_eq!(
            (
                delivery.ticket.as_str(),
                delivery.deliberation.as_str(),
                delivery.sender.as_str()
            ),
            (reply.ticket.as_str(), "20/130", "mc")
        );
        assert_eq!(delivery.delivery_id, o.delivery_id);
        let (flow, received) = payload_bytes(delivery);
        assert_eq!(
            received,
            original_bytes(&envelope),
            "20/130 grants all of A052: byte for byte"
        );
        assert_exactly_the_allowed_fields(
            &h,
            "20/130",
            flow,
            &original_bytes(&envelope),
            &received,
            descriptor("A052"),
        );
    }
    assert_eq!(h.received(), 3);
}

#[tokio::test]
async fn dmfa_under_10_059_is_filtered_and_relayed_to_sdpsp_with_a_chain() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(2);
    integrate(&h, "sigedis", niss, 1, "2020-01-01", "").await;
    integrate(&h, "sdpsp", niss, 1, "2020-01-01", "").await;
    let first = dmfa_envelope("dmfa-1", niss, true);
    let reply = submit(&h, "onss", first.clone()).await.unwrap();
    let o = outcome(&reply, "sigedis");
    assert_eq!(
        (o.decision, o.deliberation.as_str()),
        (Decision::Delivered as i32, "10/059")
    );
    assert!(
        o.removed_field_count > 0,
        "10/059 removes the person's address, birth data, ..."
    );
    let received = h.network.inbox("sigedis").deliveries();
    let (flow, bytes) = payload_bytes(&received[0]);
    assert_exactly_the_allowed_fields(
        &h,
        "10/059",
        flow,
        &original_bytes(&first),
        &bytes,
        descriptor("Dmfa"),
    );
    let person = match received[0].payload.as_ref().unwrap() {
        delivery::Payload::Dmfa(d) => d
            .employer_declaration
            .as_ref()
            .unwrap()
            .natural_person
            .clone()
            .unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(
        person.address.is_none() && person.birth_date.is_empty(),
        "not in 004 §13"
    );
    assert!(!person.last_name.is_empty(), "in 004 §13");

    // SIGeDIS relays what it received; without relay_of the relay route refuses.
    let mut relay = first.clone();
    relay.message_id = "relay-1".into();
    relay.addressee = Some("sdpsp".into());
    let refused = submit(&h, "sigedis", relay.clone()).await.unwrap();
    assert_eq!(
        outcome(&refused, "sdpsp").reason,
        RefusalReason::RelayRequired as i32
    );
    relay.message_id = "relay-2".into();
    relay.relay_of = Some(reply.ticket.clone());
    let second = submit(&h, "sigedis", relay.clone()).await.unwrap();
    assert_eq!(
        outcome(&second, "sdpsp").decision,
        Decision::Delivered as i32
    );
    let at_sdpsp = h.network.inbox("sdpsp").deliveries();
    assert_eq!(at_sdpsp.len(), 1);
    assert_eq!(at_sdpsp[0].relay_of, reply.ticket);
    let (flow, bytes) = payload_bytes(&at_sdpsp[0]);
    assert_exactly_the_allowed_fields(
        &h,
        "10/059",
        flow,
        &original_bytes(&relay),
        &bytes,
        descriptor("Dmfa"),
    );

    // Track shows both hops, to the sender of either.
    for (party, ticket) in [
        ("onss", &second.ticket),
        ("sigedis", &reply.ticket),
        ("sdpsp", &reply.ticket),
    ] {
        let tracked = track(&h, party, ticket).await;
        let hops: Vec<(&str, &str)> = tracked
            .hops
            .iter()
            .map(|hop| (hop.sender.as_str(), hop.recipients[0].institution.as_str()))
            .collect();
        assert_eq!(hops, [("onss", "sigedis"), ("sigedis", "sdpsp")], "{party}");
        assert_eq!(tracked.hops[1].relay_of, reply.ticket);
    }
    // Someone with no part in the chain cannot see it.
    let err = track_refused(&h, "cpas-liege", &reply.ticket).await;
    assert_eq!(err.code(), Code::NotFound);

    // Only an institution that received the first ticket can relay it.
    let mut stolen = relay.clone();
    stolen.message_id = "relay-3".into();
    let err = submit(&h, "onssapl", stolen).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test]
async fn dimona_and_dmfa_under_19_010_reach_onva_for_manual_workers_only() {
    let h = Harness::start(&[]).await;
    let manual = fresh_niss(3);
    let white_collar = fresh_niss(4);
    integrate(&h, "onva-inspection", manual, 1, "2015-01-01", "").await;
    integrate(&h, "onva-inspection", white_collar, 3, "2015-01-01", "").await;
    for (envelope, descriptor, flow) in [
        (
            dimona_envelope("dimona-1", manual),
            descriptor("Dimona"),
            bcss_domain::Flow::Dimona,
        ),
        (
            dmfa_envelope("dmfa-19", manual, false),
            descriptor("Dmfa"),
            bcss_domain::Flow::Dmfa,
        ),
    ] {
        let before = h.network.inbox("onva-inspection").len();
        let reply = submit(&h, "onss", envelope.clone()).await.unwrap();
        assert_eq!(outcome(&reply, "onva-inspection").deliberation, "19/010");
        assert_eq!(
            outcome(&reply, "onva-inspection").decision,
            Decision::Delivered as i32
        );
        let inbox = h.network.inbox("onva-inspection").deliveries();
        assert_eq!(inbox.len(), before + 1);
        let (_, bytes) = payload_bytes(inbox.last().unwrap());
        assert_exactly_the_allowed_fields(
            &h,
            "19/010",
            flow,
            &original_bytes(&envelope),
            &bytes,
            descriptor,
        );
    }
    let reply = submit(&h, "onss", dimona_envelope("dimona-2", white_collar))
        .await
        .unwrap();
    assert_eq!(
        outcome(&reply, "onva-inspection").reason,
        RefusalReason::QualityCodeNotAccepted as i32
    );
    assert_eq!(h.network.inbox("onva-inspection").len(), 2);
}

#[tokio::test]
async fn contact_centre_consultation_under_16_046_needs_a_contact_file_not_an_integration() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(5);
    let mut with_file = dmfa_envelope("cc-1", niss, false);
    with_file.addressee = Some("mycareer-contact-centre".into());
    with_file.contact_file = Some("CF-2025-000042".into());
    let reply = submit(&h, "onss", with_file.clone()).await.unwrap();
    let o = outcome(&reply, "mycareer-contact-centre");
    assert_eq!(
        (o.decision, o.deliberation.as_str(), o.a_posteriori),
        (Decision::Delivered as i32, "16/046", true)
    );
    let inbox = h.network.inbox("mycareer-contact-centre").deliveries();
    assert_eq!(inbox[0].contact_file.as_deref(), Some("CF-2025-000042"));
    let (flow, bytes) = payload_bytes(&inbox[0]);
    assert_exactly_the_allowed_fields(
        &h,
        "16/046",
        flow,
        &original_bytes(&with_file),
        &bytes,
        descriptor("Dmfa"),
    );

    let mut without = with_file.clone();
    without.message_id = "cc-2".into();
    without.contact_file = None;
    let reply = submit(&h, "onss", without).await.unwrap();
    assert_eq!(
        outcome(&reply, "mycareer-contact-centre").reason,
        RefusalReason::ContactFileMissing as i32
    );
    assert_eq!(h.network.inbox("mycareer-contact-centre").len(), 1);
}

const EXPIRED: &str = r#"
id = "99/001"
title = "A test authorisation that ended"
decided_on = 2015-01-01
purpose = "Test of an expired deliberation."
valid_from = 2015-01-01
valid_until = 2020-12-31
retention_years = 1

[[route]]
senders = ["sector:health_insurance"]
recipients = ["onem"]

[check]
mode = "prior_integration"
quality_codes = ["unemployment:001"]

[[flow]]
flow = "A052"
fields = ["niss"]
"#;

#[tokio::test]
async fn refusals_by_policy_are_decisions_and_deliver_nothing() {
    let h = Harness::start(&[("deliberations/99-001.toml", EXPIRED)]).await;
    let niss = fresh_niss(6);
    integrate(&h, "cpas-ghent", niss, 0, "2020-01-01", "").await; // definitive registration only
    integrate(&h, "cpas-mons", niss, 1, "2019-01-01", "2021-12-31").await; // ended before 2025
    integrate(&h, "onem", niss, 1, "2019-01-01", "").await;
    let cases: Vec<(&str, Option<&str>, RefusalReason)> = vec![
        (
            "not integrated",
            Some("cpas-bruges"),
            RefusalReason::NotIntegrated,
        ),
        (
            "quality code not accepted",
            Some("cpas-ghent"),
            RefusalReason::QualityCodeNotAccepted,
        ),
        (
            "period outside the integration",
            Some("cpas-mons"),
            RefusalReason::PeriodOutsideIntegration,
        ),
        (
            "deliberation expired",
            Some("onem"),
            RefusalReason::DeliberationExpired,
        ),
    ];
    for (i, (name, addressee, reason)) in cases.into_iter().enumerate() {
        let mut envelope = a052_envelope(&format!("refused-{i}"), niss, i as u64);
        envelope.addressee = addressee.map(String::from);
        let reply = submit(&h, "solidaris", envelope).await.unwrap();
        assert_eq!(reply.recipients.len(), 1, "{name}");
        let o = &reply.recipients[0];
        assert_eq!(
            (o.decision, o.reason),
            (Decision::Refused as i32, reason as i32),
            "{name}: {o:?}"
        );
        assert!(
            !o.detail.is_empty() && !o.detail.contains(&niss.digits()),
            "{name}"
        );
    }
    // Unaddressed: the two CPAS are candidates, both refused, for their own reasons.
    let reply = submit(&h, "solidaris", a052_envelope("refused-all", niss, 9))
        .await
        .unwrap();
    let reasons: Vec<(String, i32)> = reply
        .recipients
        .iter()
        .map(|r| (r.institution.clone(), r.reason))
        .collect();
    assert!(
        reasons.contains(&(
            "cpas-ghent".into(),
            RefusalReason::QualityCodeNotAccepted as i32
        )),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(
            "cpas-mons".into(),
            RefusalReason::PeriodOutsideIntegration as i32
        )),
        "{reasons:?}"
    );
    // An addressee no deliberation lets this sender reach with this flow is refused outright.
    let mut envelope = a052_envelope("no-route", niss, 3);
    envelope.addressee = Some("onva-inspection".into());
    let err = submit(&h, "solidaris", envelope).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("may not send flow A052 to \"onva-inspection\""),
        "{}",
        err.message()
    );
    // A sender no deliberation allows for the flow is refused outright.
    let err = submit(&h, "cpas-liege", a052_envelope("not-a-sender", niss, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("may not send flow A052"),
        "{}",
        err.message()
    );
    assert_eq!(h.received(), 0, "nothing was delivered");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_specific_status_and_changes_nothing() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(7);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let good = a052_envelope("good", niss, 3);
    let other = fresh_niss(8);
    let wrong_check = {
        let mut d = niss.digits().into_bytes();
        d[10] = if d[10] == b'9' { b'0' } else { d[10] + 1 };
        String::from_utf8(d).unwrap()
    };
    let edit = |f: &dyn Fn(&mut Envelope)| {
        let mut e = good.clone();
        f(&mut e);
        e
    };
    let cases: Vec<(&str, Envelope, Code, &str)> = vec![
        (
            "malformed NISS",
            edit(&|e| e.niss = "8507300A328".into()),
            Code::InvalidArgument,
            "only the digits",
        ),
        (
            "NISS of the wrong length",
            edit(&|e| e.niss = "850730033".into()),
            Code::InvalidArgument,
            "exactly 11 digits",
        ),
        (
            "wrong check digits",
            edit(&|e| e.niss = wrong_check.clone()),
            Code::InvalidArgument,
            "check number",
        ),
        (
            "unknown flow",
            edit(&|e| e.flow = 9),
            Code::InvalidArgument,
            "flow 9 is not a known flow",
        ),
        (
            "flow of another payload",
            edit(&|e| e.flow = bcss_proto::hub::v1::Flow::Dimona as i32),
            Code::InvalidArgument,
            "announces flow DIMONA but its payload is A052",
        ),
        (
            "payload of another flow than announced",
            edit(&|e| e.payload = dmfa_envelope("x", niss, false).payload),
            Code::InvalidArgument,
            "announces flow A052 but its payload is DMFA",
        ),
        (
            "envelope NISS differs from the payload's",
            edit(&|e| e.niss = other.digits()),
            Code::InvalidArgument,
            "differs from the envelope's niss",
        ),
        (
            "period ending before it starts",
            edit(&|e| {
                e.period = Some(f::Period {
                    start: "2025-06-30".into(),
                    end: "2025-01-01".into(),
                })
            }),
            Code::InvalidArgument,
            "ends before it starts",
        ),
        (
            "missing message id",
            edit(&|e| e.message_id.clear()),
            Code::InvalidArgument,
            "message_id is required",
        ),
        (
            "missing period",
            edit(&|e| e.period = None),
            Code::InvalidArgument,
            "period is required",
        ),
        (
            "unknown addressee",
            edit(&|e| e.addressee = Some("cpas-atlantis".into())),
            Code::InvalidArgument,
            "not an institution",
        ),
        (
            "unknown relay ticket",
            edit(&|e| e.relay_of = Some("no-such-ticket".into())),
            Code::NotFound,
            "not known to the hub",
        ),
        (
            "missing payload",
            edit(&|e| e.payload = None),
            Code::InvalidArgument,
            "no payload",
        ),
        (
            "oversized message",
            edit(&|e| {
                if let Some(bcss_proto::hub::v1::envelope::Payload::A052(a)) = &mut e.payload {
                    a.message_reference = "x".repeat(2 * 1024 * 1024);
                }
            }),
            Code::ResourceExhausted,
            "limits.max_message_bytes",
        ),
    ];
    for (name, envelope, code, text) in cases {
        let err = submit(&h, "mc", envelope).await.unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(err.message().contains(text), "{name}: {}", err.message());
        assert!(
            !err.message().contains(&niss.digits()) && !err.message().contains(&other.digits()),
            "{name}: leaks the NISS"
        );
    }
    assert_eq!(h.received(), 0, "nothing was forwarded");
    // The well-formed original still goes through.
    let reply = submit(&h, "mc", good).await.unwrap();
    assert_eq!(
        outcome(&reply, "cpas-liege").decision,
        Decision::Delivered as i32
    );
}

#[tokio::test]
async fn malformed_payload_bytes_are_refused() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(9);
    // Hand-made envelope bytes: valid header, then an A052 payload whose inner length points
    // past its end. Sent through a raw codec so the client does not re-encode it.
    let mut envelope = a052_envelope("raw", niss, 4);
    envelope.payload = None;
    let mut bytes = envelope.encode_to_vec();
    // field 10 (a052), wire type 2, length 3: [0x0a (niss), 0x09 (len 9), 'x'] → truncated.
    bytes.extend_from_slice(&[0x52, 0x03, 0x0a, 0x09, b'x']);
    let view = bcss_proto::hub::view::v1::EnvelopeView::decode(&bytes[..]).unwrap();
    let mut client =
        bcss_proto::gateway_view::gateway_client::GatewayClient::new(h.channel("mc").await);
    let err = client.submit(view).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not a well-formed message"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn explain_names_the_fields_each_recipient_would_lose_and_delivers_nothing() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(10);
    integrate(&h, "sigedis", niss, 1, "2020-01-01", "").await;
    integrate(&h, "onva-inspection", niss, 1, "2020-01-01", "").await;
    let reply = h
        .gateway("onss")
        .await
        .explain(dmfa_envelope("explain-1", niss, true))
        .await
        .unwrap()
        .into_inner();
    let sigedis = reply
        .recipients
        .iter()
        .find(|r| r.institution == "sigedis")
        .unwrap();
    assert_eq!(sigedis.decision, Decision::Accepted as i32);
    assert!(
        sigedis
            .removed_fields
            .contains(&"employer_declaration.natural_person.address".to_owned()),
        "{:?}",
        sigedis.removed_fields
    );
    assert!(
        sigedis
            .removed_fields
            .contains(&"employer_declaration.net_amount_due_cents".to_owned())
    );
    let onva = reply
        .recipients
        .iter()
        .find(|r| r.institution == "onva-inspection")
        .unwrap();
    assert!(
        onva.removed_fields
            .iter()
            .any(|p| p.contains("public_sector_data")),
        "19/010 does not grant the CAPELO blocks: {:?}",
        onva.removed_fields
    );
    assert!(reply.recipients.iter().all(|r| {
        r.removed_fields
            .iter()
            .all(|p| !p.chars().any(|c| c.is_ascii_digit()))
    }));
    assert_eq!(h.received(), 0);
}

#[tokio::test]
async fn resubmission_returns_the_original_ticket_and_delivers_nothing_new() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(11);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let envelope = a052_envelope("once", niss, 5);
    let first = submit(&h, "mc", envelope.clone()).await.unwrap();
    let again = submit(&h, "mc", envelope.clone()).await.unwrap();
    assert_eq!(first.ticket, again.ticket);
    common::settled_without_duplicates(&h).await;
    assert_eq!(h.received(), 1);
    let changed = a052_envelope("once", niss, 6);
    let err = submit(&h, "mc", changed).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Another sender may use the same message id.
    assert_ne!(
        submit(&h, "solidaris", envelope).await.unwrap().ticket,
        first.ticket
    );
}

#[tokio::test]
async fn tickets_and_their_message_ids_are_forgotten_after_storage_ticket_days() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(12);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let envelope = a052_envelope("forgotten-later", niss, 5);
    let first = submit(&h, "mc", envelope.clone()).await.unwrap();
    assert_eq!(h.received(), 1);
    // As in service: the settled ticket leaves the ledger's memory long before its days are
    // over (the store keeps it)…
    let pass = |tickets, settled_held| Retention {
        tickets,
        settled_held,
        every: Duration::from_millis(50),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !h.hub.ledger().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the settled ticket stayed"
        );
        let kept_a_day = pass(Duration::from_secs(86_400), Duration::ZERO);
        let removed = bcss_gateway::journal::retention_pass(&h.hub, &kept_a_day).await;
        assert_eq!(removed.tickets_forgotten, 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …then a pass that keeps tickets for no time at all forgets it, and counts it once.
    let no_time = pass(Duration::ZERO, bcss_gateway::journal::SETTLED_HELD);
    let removed = bcss_gateway::journal::retention_pass(&h.hub, &no_time).await;
    assert_eq!(removed.tickets_forgotten, 1);
    let removed = bcss_gateway::journal::retention_pass(&h.hub, &no_time).await;
    assert_eq!(removed.tickets_forgotten, 0);
    let err = track_refused(&h, "mc", &first.ticket).await;
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("storage.ticket_days"),
        "{}",
        err.message()
    );
    // The store forgot the message id too (its pass runs before the ledger's): the same
    // message is new again, gets a new ticket and is delivered again.
    let again = submit(&h, "mc", envelope).await.unwrap();
    assert_ne!(again.ticket, first.ticket);
    common::eventually(std::time::Duration::from_secs(10), || h.received() == 2).await;
}

#[tokio::test]
async fn settled_tickets_leave_memory_and_are_read_back_from_the_store() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(13);
    integrate(&h, "sigedis", niss, 1, "2020-01-01", "").await;
    integrate(&h, "sdpsp", niss, 1, "2020-01-01", "").await;
    let first = dmfa_envelope("held-1", niss, true);
    let reply = submit(&h, "onss", first.clone()).await.unwrap();
    assert_eq!(
        outcome(&reply, "sigedis").decision,
        Decision::Delivered as i32
    );
    let tracked = track(&h, "onss", &reply.ticket).await;
    // Tickets kept a day, but let go of in memory as soon as they are settled.
    bcss_gateway::journal::spawn_retention(
        h.hub.clone(),
        Retention {
            tickets: Duration::from_secs(86_400),
            settled_held: Duration::ZERO,
            every: Duration::from_millis(50),
        },
    );
    common::eventually(Duration::from_secs(10), || h.hub.ledger().is_empty()).await;

    // Track reads it back from the store: the same answer, to the same parties only.
    assert_eq!(track(&h, "onss", &reply.ticket).await, tracked);
    h.hub
        .ledger()
        .evict_settled(time::OffsetDateTime::now_utc());
    let err = track_refused(&h, "cpas-liege", &reply.ticket).await;
    assert_eq!(err.code(), Code::NotFound);

    // SIGeDIS can still relay it: that it received it is read from the store.
    let mut relay = first.clone();
    relay.message_id = "held-relay".into();
    relay.addressee = Some("sdpsp".into());
    relay.relay_of = Some(reply.ticket.clone());
    let second = submit(&h, "sigedis", relay).await.unwrap();
    assert_eq!(
        outcome(&second, "sdpsp").decision,
        Decision::Delivered as i32
    );
    common::eventually(Duration::from_secs(10), || h.hub.ledger().is_empty()).await;
    // The chain, both hops, from either end.
    for ticket in [&reply.ticket, &second.ticket] {
        let hops: Vec<(String, String)> = track(&h, "sigedis", ticket)
            .await
            .hops
            .into_iter()
            .map(|hop| (hop.ticket, hop.relay_of))
            .collect();
        assert_eq!(
            hops,
            [
                (reply.ticket.clone(), String::new()),
                (second.ticket.clone(), reply.ticket.clone())
            ]
        );
    }

    // The journal's view of a ticket covers its whole chain too.
    h.hub
        .ledger()
        .evict_settled(time::OffsetDateTime::now_utc());
    let records = JournalClient::new(h.channel("security-adviser").await)
        .by_ticket(ByTicketRequest {
            ticket: second.ticket.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let tickets: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.ticket.as_str()).collect();
    assert_eq!(
        tickets,
        [reply.ticket.as_str(), second.ticket.as_str()].into()
    );

    // A resubmission is answered with the original ticket and outcomes; nothing goes again.
    h.hub
        .ledger()
        .evict_settled(time::OffsetDateTime::now_utc());
    let again = submit(&h, "onss", first.clone()).await.unwrap();
    assert_eq!(again, reply);
    // Several at once: the first reads the ticket back from the store, the others wait for
    // it and get the same answer (not "nothing was recorded").
    h.hub
        .ledger()
        .evict_settled(time::OffsetDateTime::now_utc());
    let gateway = h.gateway("onss").await;
    let together = futures_util::future::join_all((0..8).map(|_| {
        let mut gateway = gateway.clone();
        let envelope = first.clone();
        async move { gateway.submit(envelope).await.map(|r| r.into_inner()) }
    }))
    .await;
    for answer in together {
        assert_eq!(answer.expect("answered with the original ticket"), reply);
    }
    // The same message id with other content is still a conflict.
    h.hub
        .ledger()
        .evict_settled(time::OffsetDateTime::now_utc());
    let mut changed = first;
    changed.addressee = Some("sigedis".into());
    let err = submit(&h, "onss", changed).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    common::settled_without_duplicates(&h).await;
    assert_eq!(h.received(), 2);
}

/// `Track` of `ticket` as `party`, which must be refused: the status.
async fn track_refused(h: &Harness, party: &str, ticket: &str) -> tonic::Status {
    h.gateway(party)
        .await
        .track(TrackRequest {
            ticket: ticket.into(),
        })
        .await
        .expect_err("Track must be refused")
}

/// Sends `envelopes` on one `SubmitStream` as `party` and collects every reply.
async fn stream_replies(
    h: &Harness,
    party: &str,
    envelopes: Vec<Envelope>,
) -> Vec<bcss_proto::hub::v1::SubmitStreamReply> {
    let mut replies = h
        .gateway(party)
        .await
        .submit_stream(tokio_stream::iter(envelopes))
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        all.push(reply);
    }
    all
}

#[tokio::test]
async fn submit_stream_answers_each_envelope_in_order() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(12);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let mut bad = a052_envelope("s-2", niss, 2);
    bad.niss = "123".into();
    let envelopes = vec![
        a052_envelope("s-1", niss, 1),
        bad,
        a052_envelope("s-3", niss, 3),
    ];
    let mut got = Vec::new();
    for reply in stream_replies(&h, "mc", envelopes).await {
        got.push((
            reply.message_id.clone(),
            matches!(
                reply.result,
                Some(bcss_proto::hub::v1::submit_stream_reply::Result::Reply(_))
            ),
        ));
    }
    assert_eq!(
        got,
        [
            ("s-1".into(), true),
            ("s-2".into(), false),
            ("s-3".into(), true)
        ]
    );
    assert_eq!(h.network.inbox("cpas-liege").len(), 2);
}

#[tokio::test]
async fn submit_stream_handles_envelopes_concurrently() {
    // The recipient acknowledges only once 4 deliveries wait together (or after 30 s). A hub
    // that handled a stream's envelopes one at a time would have one delivery waiting: each
    // reply would come after reply_wait_ms (15 s) with the delivery still in progress, not
    // delivered. Four persons on four different delivery lanes (a lane is the NISS modulo the
    // recipient's 64 lanes, and keeps one person's deliveries in order).
    let h = Harness::start_with(&[], |settings| settings.delivery.reply_wait_ms = 15_000).await;
    let mut lanes = std::collections::HashSet::new();
    let persons: Vec<Niss> = (100..)
        .map(fresh_niss)
        .filter(|niss| lanes.insert(niss.as_u64() % 64))
        .take(4)
        .collect();
    for niss in &persons {
        integrate(&h, "cpas-liege", *niss, 1, "2024-01-01", "").await;
    }
    h.network
        .inbox("cpas-liege")
        .hold_until_together(4, Duration::from_secs(30));
    let envelopes: Vec<_> = persons
        .iter()
        .enumerate()
        .map(|(i, niss)| a052_envelope(&format!("c-{i}"), *niss, 20 + i as u64))
        .collect();
    let mut got = Vec::new();
    for reply in stream_replies(&h, "mc", envelopes).await {
        let Some(bcss_proto::hub::v1::submit_stream_reply::Result::Reply(submitted)) = reply.result
        else {
            panic!("an error entry: {reply:?}");
        };
        got.push((
            reply.message_id,
            outcome(&submitted, "cpas-liege").decision(),
        ));
    }
    let expected: Vec<_> = (0..4)
        .map(|i| (format!("c-{i}"), Decision::Delivered))
        .collect();
    assert_eq!(got, expected, "in order, and delivered together");
    assert_eq!(h.network.inbox("cpas-liege").len(), 4);
}

#[tokio::test]
async fn institutions_change_and_list_only_their_own_integrations() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(13);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    integrate(&h, "cpas-namur", niss, 2, "2024-01-01", "").await;
    // Namur removing "its" integrations of the person leaves Liège's alone.
    assert_eq!(common::remove_all(&h, "cpas-namur", niss).await, 1);
    assert!(
        common::integrations_of(&h, "cpas-namur", niss)
            .await
            .is_empty()
    );
    let liege = common::integrations_of(&h, "cpas-liege", niss).await;
    assert_eq!(liege.len(), 1);
    assert_eq!(liege[0].quality_name, "aid applicant (demandeur d'aide)");
    // A quality code the caller's sector does not define is refused.
    let err = h
        .directory("cpas-liege")
        .await
        .integrate(IntegrateRequest {
            niss: niss.digits(),
            quality_code: 77,
            period: Some(f::Period {
                start: "2024-01-01".into(),
                end: String::new(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not defined for sector \"cpas\""),
        "{}",
        err.message()
    );
}

/// `Directory.List` pages through an institution's integrations with the tokens it returns:
/// every row once, in pages no larger than asked; a token it did not make is `INVALID_ARGUMENT`.
#[tokio::test]
async fn directory_list_pages_through_every_row_once() {
    use bcss_proto::hub::v1::ListRequest;
    let h = Harness::start(&[]).await;
    let mut directory = h.directory("cpas-namur").await;
    let list = |token: String| ListRequest {
        niss: None,
        page_size: 7,
        page_token: token,
    };
    let mut rows = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let reply = directory.list(list(token)).await.unwrap().into_inner();
        assert!(reply.integrations.len() <= 7);
        pages += 1;
        rows.extend(
            reply
                .integrations
                .into_iter()
                .map(|row| (row.niss, row.quality_code, row.period.unwrap().start)),
        );
        if reply.next_page_token.is_empty() {
            break;
        }
        token = reply.next_page_token;
    }
    let everything = directory
        .list(ListRequest {
            niss: None,
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pages > 2, "{pages} pages of {} rows", rows.len());
    let all: Vec<_> = everything
        .integrations
        .into_iter()
        .map(|row| (row.niss, row.quality_code, row.period.unwrap().start))
        .collect();
    assert_eq!(rows, all, "the pages, end to end, are the whole list");
    assert!(everything.next_page_token.is_empty(), "one page holds all");
    // The whole list is the shipped directory's rows for cpas-namur, read from the file.
    let csv = std::fs::read_to_string(common::shipped_config().join("directory.csv")).unwrap();
    let mut shipped: Vec<(String, u32, String)> = csv
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|fields| fields[1] == "cpas-namur")
        .map(|fields| {
            (
                fields[0].into(),
                fields[2].parse().unwrap(),
                fields[3].into(),
            )
        })
        .collect();
    let mut listed = all;
    shipped.sort();
    listed.sort();
    assert!(shipped.len() > 50, "{} rows", shipped.len());
    assert_eq!(
        listed, shipped,
        "the list is the directory's rows, no more, no less"
    );
    for token in ["12", "not-a-token", "1.2.3.4.5"] {
        let status = directory.list(list(token.into())).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{token}");
    }
}
