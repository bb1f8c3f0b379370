//! End-to-end `Submit` over loopback with mutual TLS: the real hub and a real reference
//! institution, 64 submissions in flight, with the durable outbox and the journal, with the
//! outbox but no journal, and with neither (memory only) — the journal's cost, measured.
//!
//! `cargo bench --bench submit`. Each sample sends batches of 64 concurrent submissions of an
//! A052 addressed to one CPAS and waits for every answer (the hub answers once the message is
//! recorded; `reply_wait_ms = 0`, so the delivery itself is not waited for). A second group
//! sends the A052 as a broadcast to the 10 CPAS that integrated the person (10 recipients per
//! message: 10 filtered copies, 10 outbox rows, 10 journal entries), everything on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bcss_domain::{Integration, Niss, Period, QualityCode};
use bcss_gateway::startup;
use bcss_policy::{Policy, Settings};
use bcss_proto::hub::v1::gateway_client::GatewayClient;
use bcss_sim::envelope::{FlowMessage, envelope};
use bcss_sim::institution::Network;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use time::macros::date;
use tonic::transport::Channel;

/// The hub's allocator (`src/main.rs`): the benches measure what the binary runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IN_FLIGHT: usize = 64;

struct Running {
    client: GatewayClient<Channel>,
    persons: Vec<Niss>,
    _network: Network,
    _dirs: tempfile::TempDir,
}

/// Persons of the fan-out run (the outbox keeps one person's deliveries in order, so spread).
const PERSONS: u16 = 16;

async fn start(durable: bool, journal: bool, recipients: usize) -> Running {
    let dirs = tempfile::tempdir().unwrap();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml");
    let mut settings = Settings::load(&config).unwrap();
    settings.tls.pki = dirs.path().join("pki");
    settings.storage.data = dirs.path().join("data");
    settings.storage.durable = durable;
    settings.storage.journal = journal;
    settings.logs.person_key = dirs.path().join("key");
    settings.delivery.reply_wait_ms = 0;
    settings.limits.rate_per_second = 0;
    let policy = Policy::load(&settings).unwrap();
    let pki = startup::ensure_pki(&settings, &policy).unwrap();
    let network = Network::start(&policy, &pki, &settings.tls.hub_name, true)
        .await
        .unwrap();
    let assembled =
        startup::assemble_settings(settings.clone(), network.endpoint_overrides()).unwrap();
    let hub_policy = assembled.hub.policy();
    let cpas: Vec<_> = if recipients == 1 {
        vec![hub_policy.institution_by_id("cpas-liege").unwrap().index]
    } else {
        hub_policy
            .institutions()
            .iter()
            .filter(|i| hub_policy.sector(i.sector).id == "cpas")
            .map(|i| i.index)
            .take(recipients)
            .collect()
    };
    assert_eq!(cpas.len(), recipients);
    let persons: Vec<Niss> = (0..PERSONS)
        .map(|n| Niss::compose(700_101, 991 - n, true).unwrap())
        .collect();
    for niss in &persons {
        for institution in &cpas {
            assembled.hub.directory().integrate(
                *niss,
                Integration {
                    institution: *institution,
                    quality: QualityCode::new(1).unwrap(),
                    period: Period::new(date!(2020 - 01 - 01), None).unwrap(),
                },
            );
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(bcss_gateway::server::run(
        assembled.hub,
        listener,
        assembled.options,
        std::future::pending(),
    ));
    let channel = bcss_sim::client::connect(address, &pki, "solidaris", &settings.tls.hub_name)
        .await
        .unwrap();
    Running {
        client: GatewayClient::new(channel),
        persons,
        _network: network,
        _dirs: dirs,
    }
}

fn submit_end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("submit_64_in_flight");
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for (name, durable, journal) in [
        ("outbox+journal", true, true),
        ("outbox, no journal", true, false),
        ("memory only", false, false),
    ] {
        let running = runtime.block_on(start(durable, journal, 1));
        bench_batches(&runtime, &mut group, name, &running, &counter, true);
    }
    group.finish();

    // The same, as a broadcast to the 10 CPAS that integrated the person: 10 recipients.
    let mut group = c.benchmark_group("submit_64_in_flight_10_recipients");
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    let running = runtime.block_on(start(true, true, 10));
    bench_batches(
        &runtime,
        &mut group,
        "outbox+journal",
        &running,
        &counter,
        false,
    );
    group.finish();
}

fn bench_batches(
    runtime: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    running: &Running,
    counter: &Arc<AtomicU64>,
    addressed: bool,
) {
    let window = (date!(2025 - 01 - 01), date!(2025 - 06 - 30));
    let payloads: Vec<_> = running
        .persons
        .iter()
        .map(|niss| {
            bcss_sim::payloads::a052(
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
                *niss,
                "100",
                window,
            )
        })
        .collect();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let calls = (0..IN_FLIGHT).map(|_| {
                        let mut client = running.client.clone();
                        let id = counter.fetch_add(1, Ordering::Relaxed);
                        let person = id as usize % running.persons.len();
                        let mut message = envelope(
                            format!("bench-{id}"),
                            running.persons[person],
                            window.0,
                            Some(window.1),
                            FlowMessage::A052(payloads[person].clone()),
                        );
                        if addressed {
                            message.addressee = Some("cpas-liege".into());
                        }
                        async move {
                            let reply = client.submit(message).await.unwrap().into_inner();
                            assert_eq!(reply.recipients.len(), if addressed { 1 } else { 10 });
                        }
                    });
                    futures_util::future::join_all(calls).await;
                }
                started.elapsed()
            })
        })
    });
}

criterion_group!(benches, submit_end_to_end);
criterion_main!(benches);
