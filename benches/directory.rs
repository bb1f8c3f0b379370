//! The decisions before filtering: NISS validation, the integration check against the
//! directory (the sample network's 10,000 persons, and a national-scale directory when
//! `BCSS_BENCH_NATIONAL_PERSONS` is set, e.g. 20000000), and the routing decision (validate →
//! route → check → filter, `Hub::validate` + `Hub::plan`) for an addressed message and a
//! broadcast. Run with `cargo bench --bench directory`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bcss_directory::Directory;
use bcss_domain::decision::{Message, check_recipient};
use bcss_domain::{Flow, Niss, Period};
use bcss_gateway::Hub;
use bcss_gateway::delivery::Deliverer;
use bcss_gateway::limits::Limits;
use bcss_gateway::outbox::RetryPolicy;
use bcss_gateway::pipeline::{HubParts, PlanTimes};
use bcss_gateway::privacy::PersonKey;
use bcss_policy::{Policy, Settings};
use bcss_proto::hub::view::v1::EnvelopeView;
use bcss_sim::directory_tool::{generate_national, national_niss};
use bcss_sim::envelope::{FlowMessage, envelope};
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message as _;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::macros::date;

/// The hub's allocator (`src/main.rs`): the benches measure what the binary runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn settings() -> Settings {
    Settings::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml")).unwrap()
}

/// What the data path checks for an A052 from the health-insurance fund `mc` to `cpas-liege`
/// (20/130, prior integration).
fn a052_check(policy: &Policy) -> (Message, bcss_domain::Party) {
    let sender = policy.institution_by_id("mc").unwrap().party();
    let recipient = policy.institution_by_id("cpas-liege").unwrap().party();
    let facts = Message {
        sender,
        flow: Flow::A052,
        period: Period {
            start: date!(2025 - 01 - 01),
            end: Some(date!(2025 - 06 - 30)),
        },
        relays: false,
        cites_contact_file: false,
        today: date!(2026 - 06 - 01),
    };
    (facts, recipient)
}

fn bench_checks(
    c: &mut Criterion,
    name: &str,
    policy: &Policy,
    directory: &Directory,
    people: &[Niss],
) {
    let (facts, recipient) = a052_check(policy);
    let mut next = 0usize;
    c.bench_function(name, |b| {
        b.iter(|| {
            next = (next + 1) % people.len();
            // As the data path: the recipient's rows only.
            directory.with_integrations_of(people[next], recipient.institution, |rows| {
                black_box(
                    check_recipient(
                        &facts,
                        recipient,
                        policy.deliberations_reaching(recipient.institution, Flow::A052),
                        rows,
                    )
                    .is_ok(),
                )
            })
        })
    });
}

fn niss(c: &mut Criterion) {
    let mut group = c.benchmark_group("niss");
    group.bench_function("parse valid", |b| {
        b.iter(|| Niss::parse(black_box("85073003328")).is_ok())
    });
    group.bench_function("parse bad check digits", |b| {
        b.iter(|| Niss::parse(black_box("85073003329")).is_err())
    });
    group.finish();
}

fn directory_checks(c: &mut Criterion) {
    let settings = settings();
    let policy = Policy::load(&settings).unwrap();
    let directory =
        bcss_gateway::startup::load_directory(&settings.files.directory, &policy).unwrap();
    // Random persons of the sample directory, one in ten unknown.
    let mut known = Vec::new();
    directory.for_each_person(|number, _| known.push(Niss::from_number(number).unwrap()));
    known.sort_by_key(|n| n.as_u64());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let people: Vec<Niss> = (0..100_000)
        .map(|_| {
            if rng.random_bool(0.9) {
                known[rng.random_range(0..known.len())]
            } else {
                national_niss(30_000_000 + rng.random_range(0..1_000_000))
            }
        })
        .collect();
    bench_checks(
        c,
        "directory_check/sample network (10k persons)",
        &policy,
        &directory,
        &people,
    );

    let Some(persons) = std::env::var("BCSS_BENCH_NATIONAL_PERSONS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    generate_national(&policy, persons, 2026, file.reopen().unwrap()).unwrap();
    let national = bcss_gateway::snapshot::load(file.path(), &policy).unwrap();
    let people: Vec<Niss> = (0..1_000_000)
        .map(|_| national_niss(rng.random_range(0..persons + persons / 9)))
        .collect();
    bench_checks(
        c,
        &format!("directory_check/national ({persons} persons)"),
        &policy,
        &national,
        &people,
    );
}

fn routing(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _inside = runtime.enter();
    let settings = settings();
    let policy = Policy::load(&settings).unwrap();
    let directory =
        bcss_gateway::startup::load_directory(&settings.files.directory, &policy).unwrap();
    let hub = Hub::new(
        policy,
        Arc::new(directory),
        Deliverer::new(None, Duration::from_secs(1)),
        HubParts {
            limits: Limits::unlimited(),
            person_key: PersonKey::new([7; 32]),
            policy_source: None,
            store: None,
            recovered: Default::default(),
            retry: RetryPolicy::from_settings(&Default::default()),
        },
    );
    let policy = hub.policy();
    let sender = policy.institution_by_id("mc").unwrap();
    // A person of the sample directory whom a CPAS and the SPP IS integrated (see
    // crates/bcss-gateway/tests/decode_never_panics.rs).
    let person = Niss::parse("55042302184").unwrap();
    let window = (date!(2025 - 01 - 01), date!(2025 - 06 - 30));
    let payload =
        bcss_sim::payloads::a052(&mut ChaCha8Rng::seed_from_u64(1), person, "100", window);
    let broadcast = envelope(
        "m-1",
        person,
        window.0,
        Some(window.1),
        FlowMessage::A052(payload),
    );
    let mut addressed = broadcast.clone();
    addressed.addressee = Some("cpas-liege".into());
    let mut group = c.benchmark_group("routing");
    for (name, message) in [("A052 addressed", addressed), ("A052 broadcast", broadcast)] {
        let bytes = bytes::Bytes::from(message.encode_to_vec());
        group.bench_function(format!("validate+route+check+filter/{name}"), |b| {
            b.iter(|| {
                let view = EnvelopeView::decode(bytes.clone()).unwrap();
                let validated = hub.validate(&policy, sender, view).unwrap();
                let mut times = PlanTimes::default();
                black_box(
                    hub.plan(&policy, sender, &validated, false, &mut times)
                        .unwrap()
                        .len(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, niss, directory_checks, routing);
criterion_main!(benches);
