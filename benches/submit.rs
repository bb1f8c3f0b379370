//! End-to-end `Submit` over loopback with mutual TLS: the real hub and a real reference
//! institution, 64 submissions in flight, with the durable outbox and the journal, with the
//! outbox but no journal, and with neither (memory only) — the journal's cost, measured.
//!
//! `cargo bench --bench submit`. Each sample sends batches of 64 concurrent submissions of an
//! A052 addressed to one CPAS and waits for every answer (the hub answers once the message is
//! recorded; `reply_wait_ms = 0`, so the delivery itself is not waited for).

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

const IN_FLIGHT: usize = 64;

struct Running {
    client: GatewayClient<Channel>,
    niss: Niss,
    _network: Network,
    _dirs: tempfile::TempDir,
}

async fn start(durable: bool, journal: bool) -> Running {
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
    let niss = Niss::compose(700_101, 991, true).unwrap();
    let liege = assembled
        .hub
        .policy()
        .institution_by_id("cpas-liege")
        .unwrap()
        .index;
    assembled.hub.directory().integrate(
        niss,
        Integration {
            institution: liege,
            quality: QualityCode::new(1).unwrap(),
            period: Period::new(date!(2020 - 01 - 01), None).unwrap(),
        },
    );
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
        niss,
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
        let running = runtime.block_on(start(durable, journal));
        let window = (date!(2025 - 01 - 01), date!(2025 - 06 - 30));
        let payload = bcss_sim::payloads::a052(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
            running.niss,
            "100",
            window,
        );
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let calls = (0..IN_FLIGHT).map(|_| {
                            let mut client = running.client.clone();
                            let id = counter.fetch_add(1, Ordering::Relaxed);
                            let mut message = envelope(
                                format!("bench-{id}"),
                                running.niss,
                                window.0,
                                Some(window.1),
                                FlowMessage::A052(payload.clone()),
                            );
                            message.addressee = Some("cpas-liege".into());
                            async move { client.submit(message).await.unwrap() }
                        });
                        futures_util::future::join_all(calls).await;
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, submit_end_to_end);
criterion_main!(benches);
