//! Property tests of the hub's decoding path on hostile bytes: for random byte strings, random
//! mutations of valid envelopes and payloads that are well formed on the wire but carry anything,
//! decoding never panics and always ends in a value or a typed error.
//!
//! What is exercised is what the Gateway does with a request, without the network: the envelope
//! decoded as an `EnvelopeView` (prost, as tonic does), then `Hub::explain` (validate → route →
//! check → filter, and the removed-field names from the wire walk) against the shipped
//! configuration and directory; and, on every payload whatever its envelope, the wire calls
//! directly: `bcss_wire::scan` against each flow's schema tree, `bcss_wire::filter` with every
//! grant, `Schema::removed_fields`. Beyond "no panic", two invariants of the data path are
//! checked: a payload that `scan` accepts is one every grant's filter accepts, and what the
//! filter outputs for it (and what `explain` would deliver) is again a payload `scan` accepts.
//!
//! And a payload the hub accepts decodes as the flow's generated message type, as recipients
//! decode it (this found `scan` letting invalid UTF-8 through in string fields).

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bcss_domain::Flow;
use bcss_gateway::Hub;
use bcss_gateway::delivery::Deliverer;
use bcss_gateway::error::InputError;
use bcss_gateway::limits::Limits;
use bcss_gateway::outbox::RetryPolicy;
use bcss_gateway::pipeline::{HubParts, Planned};
use bcss_gateway::privacy::PersonKey;
use bcss_gateway::startup::load_directory;
use bcss_policy::{Institution, Policy, Settings};
use bcss_proto::flows::v1::Period as WirePeriod;
use bcss_proto::hub::view::v1::EnvelopeView;
use bcss_proto::hub::view::v1::envelope_view::Payload;
use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};

/// The hub on the shipped configuration and directory, without rate limits (the cases call it
/// thousands of times a second). Its deliverer is never used: `explain` decides without
/// delivering.
static HUB: LazyLock<Hub> = LazyLock::new(|| {
    let hub_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/hub.toml");
    let settings = Settings::load(&hub_toml).expect("config/hub.toml loads");
    let policy = Policy::load(&settings).expect("the shipped policy loads");
    let directory =
        load_directory(&settings.files.directory, &policy).expect("the shipped directory loads");
    let deliverer = Deliverer::new(None, Duration::from_secs(1));
    let parts = HubParts {
        limits: Limits::unlimited(),
        person_key: PersonKey::new([7; 32]),
        policy_source: None,
        store: None,
        recovered: Default::default(),
        retry: RetryPolicy::from_settings(&Default::default()),
    };
    Hub::new(policy, Arc::new(directory), deliverer, parts)
});

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with the shrunk input; no regression file is written into the
        // source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ----- Valid envelopes -----

/// A submission the shipped configuration admits for at least one recipient, so that mutated
/// copies reach the filter and not only validation.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    sender: &'static str,
    flow: Flow,
    /// A person of `config/directory.csv` integrated by the recipients.
    niss: &'static str,
    addressee: Option<&'static str>,
    contact_file: Option<&'static str>,
}

const SCENARIOS: [Scenario; 4] = [
    // 20/130: a health-insurance fund to the CPAS and the SPP IS that integrated the person.
    Scenario {
        sender: "mc",
        flow: Flow::A052,
        niss: "55042302184",
        addressee: None,
        contact_file: None,
    },
    // 10/059 to SIGeDIS and 19/010 to the ONVA inspection.
    Scenario {
        sender: "onss",
        flow: Flow::Dmfa,
        niss: "68111115847",
        addressee: None,
        contact_file: None,
    },
    // 19/010 to the ONVA inspection.
    Scenario {
        sender: "onss",
        flow: Flow::Dimona,
        niss: "68111115847",
        addressee: None,
        contact_file: None,
    },
    // 16/046, a posteriori: addressed to a contact centre, citing a contact file.
    Scenario {
        sender: "onss",
        flow: Flow::Dmfa,
        niss: "68111115847",
        addressee: Some("mycareer-contact-centre"),
        contact_file: Some("CF-2024-0001"),
    },
];

/// A payload of `flow` with every field set (`repeats` elements per repeated field, strings
/// `text` followed by the field number) and the person's NISS on the NISS path.
fn full_payload(flow: Flow, niss: &str, repeats: usize, text: &str) -> Vec<u8> {
    let policy = HUB.policy();
    let schema = policy.schema().flow(flow);
    let mut message = filled(&schema.message, repeats, text);
    set_path(&mut message, &schema.niss_path, niss);
    message.encode_to_vec()
}

fn filled(descriptor: &MessageDescriptor, repeats: usize, text: &str) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for field in descriptor.fields() {
        let number = field.number();
        let one = match field.kind() {
            Kind::Message(inner) => Value::Message(filled(&inner, repeats, text)),
            Kind::String => Value::String(format!("{text}{number}")),
            Kind::Bytes => Value::Bytes(Bytes::from(format!("{text}{number}"))),
            Kind::Bool => Value::Bool(true),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(-(number as i32)),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                Value::I64(-1_000_000 * i64::from(number))
            }
            Kind::Uint32 | Kind::Fixed32 => Value::U32(300 * number),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(u64::from(number) << 40),
            Kind::Float => Value::F32(number as f32),
            Kind::Double => Value::F64(f64::from(number)),
            Kind::Enum(e) => Value::EnumNumber(e.values().last().map_or(0, |v| v.number())),
        };
        let value = if field.is_list() {
            Value::List(vec![one; repeats])
        } else {
            one
        };
        message.set_field(&field, value);
    }
    message
}

fn set_path(message: &mut DynamicMessage, path: &[u32], niss: &str) {
    match path {
        [] => {}
        [last] => message.set_field_by_number(*last, Value::String(niss.to_owned())),
        [first, rest @ ..] => {
            if let Some(Value::Message(inner)) = message.get_field_by_number_mut(*first) {
                set_path(inner, rest, niss);
            }
        }
    }
}

fn envelope(scenario: &Scenario, payload: Bytes) -> EnvelopeView {
    EnvelopeView {
        message_id: "property-test-1".to_owned(),
        flow: flow_number(scenario.flow),
        niss: scenario.niss.to_owned(),
        period: Some(WirePeriod {
            start: "2024-01-01".to_owned(),
            end: String::new(),
        }),
        addressee: scenario.addressee.map(str::to_owned),
        relay_of: None,
        contact_file: scenario.contact_file.map(str::to_owned),
        payload: Some(match scenario.flow {
            Flow::A052 => Payload::A052(payload),
            Flow::Dmfa => Payload::Dmfa(payload),
            Flow::Dimona => Payload::Dimona(payload),
        }),
    }
}

fn flow_number(flow: Flow) -> i32 {
    match flow {
        Flow::A052 => 1,
        Flow::Dmfa => 2,
        Flow::Dimona => 3,
    }
}

fn sender(id: &str) -> Institution {
    HUB.policy()
        .institution_by_id(id)
        .expect("the scenario's sender exists")
        .clone()
}

/// Bytes that print as hex when proptest reports a failing case.
#[derive(Clone)]
struct Hex(Vec<u8>);

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes: ", self.0.len())?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

// ----- Well-formed but hostile payloads -----

/// A field as it goes on the wire, with any content of its wire type. (Groups, which the hub
/// refuses, come with the random bytes and the mutations.)
#[derive(Clone, Debug)]
enum Wire {
    Varint(u32, u64),
    I64(u32, u64),
    I32(u32, u32),
    Len(u32, Vec<u8>),
    Message(u32, Vec<Wire>),
}

/// A payload shaped like `message` on the wire: each field 0 to 2 times (singular fields too),
/// strings of any text (with `raw_strings`, half of them any bytes), varints of any width,
/// unknown fields, in any order. The fields along `niss_path` are present and carry `niss`, so
/// that the payload can pass validation and reach the filter.
fn hostile(
    message: &MessageDescriptor,
    niss_path: &[u32],
    niss: &'static str,
    raw_strings: bool,
) -> BoxedStrategy<Vec<Wire>> {
    let mut parts: Vec<BoxedStrategy<Vec<Wire>>> = Vec::new();
    for field in message.fields() {
        let number = field.number();
        let on_path = niss_path.first() == Some(&number);
        let rest = if on_path { &niss_path[1..] } else { &[][..] };
        let one: BoxedStrategy<Wire> = match field.kind() {
            Kind::Message(inner) => hostile(&inner, rest, niss, raw_strings)
                .prop_map(move |fields| Wire::Message(number, fields))
                .boxed(),
            Kind::String | Kind::Bytes if on_path && rest.is_empty() => {
                Just(Wire::Len(number, niss.as_bytes().to_vec())).boxed()
            }
            // Any text; in a payload with raw strings, half of them any bytes (most not UTF-8,
            // which `scan` refuses: one is enough to keep the whole payload from the filter).
            Kind::String | Kind::Bytes if raw_strings => prop_oneof![
                ".{0,16}".prop_map(String::into_bytes),
                vec(any::<u8>(), 0..16),
            ]
            .prop_map(move |bytes| Wire::Len(number, bytes))
            .boxed(),
            Kind::String | Kind::Bytes => ".{0,16}"
                .prop_map(move |text| Wire::Len(number, text.into_bytes()))
                .boxed(),
            Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => {
                any::<u32>().prop_map(move |v| Wire::I32(number, v)).boxed()
            }
            Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => {
                any::<u64>().prop_map(move |v| Wire::I64(number, v)).boxed()
            }
            _ => prop_oneof![any::<u64>(), 0..300u64]
                .prop_map(move |v| Wire::Varint(number, v))
                .boxed(),
        };
        let count = if on_path { 1..3 } else { 0..3 };
        parts.push(vec(one, count).boxed());
    }
    parts.push(vec(unknown_field(), 0..3).boxed());
    parts
        .prop_map(|parts| parts.into_iter().flatten().collect::<Vec<Wire>>())
        .prop_shuffle()
        .boxed()
}

fn unknown_field() -> impl Strategy<Value = Wire> {
    let number = prop_oneof![1000..1100u32, 1..536_870_912u32];
    prop_oneof![
        4 => (number.clone(), any::<u64>()).prop_map(|(n, v)| Wire::Varint(n, v)),
        2 => (number.clone(), any::<u64>()).prop_map(|(n, v)| Wire::I64(n, v)),
        2 => (number.clone(), any::<u32>()).prop_map(|(n, v)| Wire::I32(n, v)),
        4 => (number, vec(any::<u8>(), 0..16)).prop_map(|(n, b)| Wire::Len(n, b)),
    ]
}

fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn encode_wire(fields: &[Wire], out: &mut Vec<u8>) {
    for field in fields {
        match field {
            Wire::Varint(n, v) => {
                put_varint(u64::from(*n) << 3, out);
                put_varint(*v, out);
            }
            Wire::I64(n, v) => {
                put_varint(u64::from(*n) << 3 | 1, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Wire::I32(n, v) => {
                put_varint(u64::from(*n) << 3 | 5, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Wire::Len(n, bytes) => {
                put_varint(u64::from(*n) << 3 | 2, out);
                put_varint(bytes.len() as u64, out);
                out.extend_from_slice(bytes);
            }
            Wire::Message(n, inner) => {
                let mut content = Vec::new();
                encode_wire(inner, &mut content);
                put_varint(u64::from(*n) << 3 | 2, out);
                put_varint(content.len() as u64, out);
                out.extend_from_slice(&content);
            }
        }
    }
}

/// A scenario and a hostile payload for its flow and person; one payload in four has raw bytes
/// in its strings.
fn hostile_case() -> impl Strategy<Value = (usize, Hex)> {
    (0..SCENARIOS.len(), prop::bool::weighted(0.25)).prop_flat_map(|(which, raw_strings)| {
        let scenario = SCENARIOS[which];
        let policy = HUB.policy();
        let schema = policy.schema().flow(scenario.flow);
        let fields = hostile(
            &schema.message,
            &schema.niss_path,
            scenario.niss,
            raw_strings,
        );
        fields.prop_map(move |fields| {
            let mut payload = Vec::new();
            encode_wire(&fields, &mut payload);
            (which, Hex(payload))
        })
    })
}

// ----- Mutations -----

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<Index>(), vec(any::<u8>(), 1..12)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<Index>(), 1..16usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::Flip(at, bit) if len > 0 => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Set(at, byte) if len > 0 => bytes[at.index(len)] = *byte,
        Mutation::Insert(at, inserted) => {
            let at = at.index(len + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Remove(at, count) if len > 0 => {
            let at = at.index(len);
            bytes.drain(at..(at + count).min(len));
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
        _ => {}
    }
}

// ----- What the hub does with bytes -----

/// `Hub::explain`, which without a store never waits (a relayed ticket is looked up in the
/// ledger only).
fn explain(
    policy: &Policy,
    sender: &Institution,
    envelope: EnvelopeView,
) -> Result<Vec<Planned>, InputError> {
    futures_util::FutureExt::now_or_never(HUB.explain(policy, sender, envelope))
        .expect("without a store, explain does not wait")
}

/// The envelope as the Gateway receives it: decoded as a view, then explained for `sender`.
fn exercise_envelope(bytes: &[u8], sender: &Institution) -> Result<(), TestCaseError> {
    let Ok(envelope) = EnvelopeView::decode(bytes) else {
        return Ok(());
    };
    let carried = match &envelope.payload {
        Some(Payload::A052(b) | Payload::Dmfa(b) | Payload::Dimona(b)) => Some(b.clone()),
        None => None,
    };
    if let Some(payload) = carried {
        exercise_payload(&payload)?;
    }
    let policy = HUB.policy();
    let flow = match envelope.flow {
        1 => Some(Flow::A052),
        2 => Some(Flow::Dmfa),
        3 => Some(Flow::Dimona),
        _ => None,
    };
    match explain(&policy, sender, envelope) {
        Ok(plans) => {
            let flow = flow.expect("an explained envelope has a known flow");
            let schema = policy.schema().flow(flow);
            for plan in plans {
                if let Ok(admitted) = plan.result {
                    prop_assert!(
                        bcss_wire::scan(&schema.tree, &schema.niss_path, &admitted.payload).is_ok(),
                        "{flow}: the payload delivered to {} is not well formed",
                        plan.institution_id
                    );
                }
            }
        }
        Err(error) => {
            // A typed refusal, with a message and a status code.
            let _ = (error.to_string(), error.code());
        }
    }
    Ok(())
}

/// A payload, whatever its envelope, through every flow's scan, every grant's filter and the
/// removed-field names.
fn exercise_payload(payload: &[u8]) -> Result<(), TestCaseError> {
    let policy = HUB.policy();
    for flow in Flow::ALL {
        let schema = policy.schema().flow(flow);
        let scanned = bcss_wire::scan(&schema.tree, &schema.niss_path, payload);
        for deliberation in policy.deliberations() {
            let Some(grant) = policy.grant(deliberation, flow) else {
                continue;
            };
            let filtered = bcss_wire::filter(&grant.tree, payload);
            let _ = policy.schema().removed_fields(flow, &grant.paths, payload);
            let named = grant.removed_fields(payload);
            // Naming removed fields refuses exactly what the filter refuses.
            prop_assert_eq!(
                named.is_ok(),
                filtered.is_ok(),
                "removed-field names vs filter"
            );
            if scanned.is_err() {
                continue;
            }
            let at = format!("deliberation {}, flow {flow}", deliberation.id);
            match filtered {
                Ok((output, _)) => prop_assert!(
                    bcss_wire::scan(&schema.tree, &schema.niss_path, &output).is_ok(),
                    "{at}: the filter's output of a payload scan accepts is not well formed"
                ),
                Err(error) => {
                    return Err(TestCaseError::fail(format!(
                        "{at}: scan accepts the payload but the filter refuses it: {error}"
                    )));
                }
            }
        }
    }
    Ok(())
}

// ----- The properties -----

/// The valid envelopes reach the filter: without this, the mutation test would only exercise
/// validation.
#[test]
fn the_scenarios_are_admitted_unmutated() {
    let policy = HUB.policy();
    for scenario in &SCENARIOS {
        let payload = full_payload(scenario.flow, scenario.niss, 2, "text-");
        let plans = explain(
            &policy,
            &sender(scenario.sender),
            envelope(scenario, payload.into()),
        )
        .unwrap_or_else(|e| panic!("{scenario:?}: {e}"));
        assert!(
            plans.iter().any(|p| p.result.is_ok()),
            "{scenario:?}: no recipient admitted: {plans:?}"
        );
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Random bytes as an envelope (from any institution), and as the payload of each valid
    /// envelope.
    #[test]
    fn random_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..4096).prop_map(Hex),
        from in any::<Index>(),
    ) {
        let bytes = bytes.0;
        let policy = HUB.policy();
        let institution = policy.institutions()[from.index(policy.institutions().len())].clone();
        exercise_envelope(&bytes, &institution)?;
        exercise_payload(&bytes)?;
        for scenario in &SCENARIOS {
            let wrapped = envelope(scenario, Bytes::copy_from_slice(&bytes)).encode_to_vec();
            exercise_envelope(&wrapped, &sender(scenario.sender))?;
        }
    }

    /// Valid envelopes with a few random mutations, either anywhere in the encoded envelope or
    /// in the payload only (which then travels in a well-formed envelope and so reaches the
    /// payload checks and the filter).
    #[test]
    fn mutated_envelopes_never_panic(
        which in 0..SCENARIOS.len(),
        repeats in 0..4usize,
        text in "[a-z]{0,40}",
        mutations in vec(mutation(), 1..8),
        payload_only in any::<bool>(),
    ) {
        let scenario = &SCENARIOS[which];
        let from = sender(scenario.sender);
        let mut payload = full_payload(scenario.flow, scenario.niss, repeats, &text);
        let bytes = if payload_only {
            for m in &mutations {
                apply(&mut payload, m);
            }
            envelope(scenario, payload.into()).encode_to_vec()
        } else {
            let mut bytes = envelope(scenario, payload.into()).encode_to_vec();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            bytes
        };
        exercise_envelope(&bytes, &from)?;
    }
}

/// The hostile payloads do reach the filter: without this, a generator whose payloads `scan`
/// always refused (as one that put random bytes in half the string fields did) would leave the
/// two properties below exercising validation only. Counted over a fixed sample.
#[test]
fn hostile_payloads_reach_the_filter() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let policy = HUB.policy();
    let strategy = hostile_case();
    let mut runner = TestRunner::deterministic();
    let (mut admitted, mut refused_by_scan) = (0, 0);
    const CASES: usize = 300;
    for _ in 0..CASES {
        let (which, payload) = strategy.new_tree(&mut runner).unwrap().current();
        let scenario = &SCENARIOS[which];
        let schema = policy.schema().flow(scenario.flow);
        if bcss_wire::scan(&schema.tree, &schema.niss_path, &payload.0).is_err() {
            refused_by_scan += 1;
            continue;
        }
        let envelope = envelope(scenario, payload.0.into());
        if explain(&policy, &sender(scenario.sender), envelope)
            .is_ok_and(|plans| plans.iter().any(|plan| plan.result.is_ok()))
        {
            admitted += 1;
        }
    }
    // Both outcomes are exercised in earnest: most cases reach a recipient's filter, and some
    // are refused for their bytes.
    assert!(
        admitted * 2 > CASES && refused_by_scan > 0,
        "{admitted} of {CASES} hostile payloads admitted, {refused_by_scan} refused by scan"
    );
}

proptest! {
    #![proptest_config(config(256))]

    /// Payloads well formed on the wire but with any content: most pass `scan` and reach the
    /// filter of every admitted recipient and the removed-field names (see
    /// `hostile_payloads_reach_the_filter`).
    #[test]
    fn hostile_well_formed_payloads_never_panic((which, payload) in hostile_case()) {
        let scenario = &SCENARIOS[which];
        let bytes = envelope(scenario, payload.0.into()).encode_to_vec();
        exercise_envelope(&bytes, &sender(scenario.sender))?;
    }

    /// Regression: `scan` once checked wire types but not the UTF-8 of `string` fields, so the
    /// hub accepted payloads recipients' decoders refuse (`InvalidString`). Minimal case: the
    /// A052 `0a 0b 3535303432333032313834 12 01 80` (message_reference the byte 0x80).
    #[test]
    fn accepted_payloads_decode_as_the_flow_message((which, payload) in hostile_case()) {
        let scenario = &SCENARIOS[which];
        let policy = HUB.policy();
        let payload = payload.0;
        let envelope = envelope(scenario, payload.clone().into());
        let Ok(plans) = explain(&policy, &sender(scenario.sender), envelope) else {
            return Ok(());
        };
        prop_assert!(
            decodes_as_flow(scenario.flow, &payload),
            "{}: the hub accepts a payload its contract's decoder refuses",
            scenario.flow
        );
        for plan in plans {
            if let Ok(admitted) = plan.result {
                prop_assert!(
                    decodes_as_flow(scenario.flow, &admitted.payload),
                    "{}: the payload delivered to {} does not decode",
                    scenario.flow,
                    plan.institution_id
                );
            }
        }
    }
}

/// The payload decodes as the flow's generated message type, as a recipient decodes it.
fn decodes_as_flow(flow: Flow, payload: &[u8]) -> bool {
    use bcss_proto::flows::v1::{A052, Dimona, Dmfa};
    match flow {
        Flow::A052 => A052::decode(payload).is_ok(),
        Flow::Dmfa => Dmfa::decode(payload).is_ok(),
        Flow::Dimona => Dimona::decode(payload).is_ok(),
    }
}
