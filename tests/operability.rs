//! Operability: gRPC health per service, server reflection, and the Prometheus metrics, as
//! standard tools use them.

mod common;

use std::time::Duration;

use common::Harness;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_reports_each_service_and_reflection_lists_them() {
    let h = Harness::start(&[]).await;
    let mut health = HealthClient::new(h.channel("cpas-liege").await);
    for service in bcss_gateway::server::SERVICES {
        let mut status = ServingStatus::Unknown;
        for _ in 0..100 {
            status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status();
            if status == ServingStatus::Serving {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, ServingStatus::Serving, "service \"{service}\"");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(h.channel("cpas-liege").await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("a list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "bcss.hub.v1.Gateway",
        "bcss.hub.v1.Directory",
        "bcss.hub.v1.Admin",
        "bcss.hub.v1.Journal",
        "bcss.institution.v1.Institution",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

/// `GET /metrics` over plain HTTP/1.0 (no chunking), the body only.
async fn scrape(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The value of one series, named as the exposition prints it (`name` or `name{labels}`).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

#[tokio::test]
async fn metrics_cover_every_stage_the_last_reload_and_the_journal() {
    // A copy of the configuration, so that a broken deliberation can be dropped in.
    let shipped = std::fs::read_to_string(common::shipped_config().join("hub.toml")).unwrap();
    let h = Harness::start(&[("hub.toml", &shipped)]).await;
    let metrics = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap()
    };
    bcss_gateway::telemetry::serve(metrics, h.hub.clone()).unwrap();

    // Traffic: one message admitted and delivered, one refused (the person is not integrated).
    let integrated = common::fresh_niss(60);
    let stranger = common::fresh_niss(61);
    common::integrate(&h, "cpas-liege", integrated, 1, "2024-01-01", "").await;
    for (id, niss) in [("metrics-1", integrated), ("metrics-2", stranger)] {
        let mut envelope = common::a052_envelope(id, niss, 1);
        envelope.addressee = Some("cpas-liege".into());
        common::submit(&h, "solidaris", envelope).await.unwrap();
    }
    common::eventually(Duration::from_secs(10), || h.received() >= 1).await;

    // The start counts as a good load.
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "bcss_policy_last_reload_success"), Some(1.0));
    let started = sample(&text, "bcss_policy_last_reload_timestamp_seconds").unwrap();
    assert!(started > 1.7e9, "a Unix time: {started}");

    let broken = h.config_dir.join("deliberations/zz-broken.toml");
    std::fs::write(
        &broken,
        "id = \"99/999\"\ntitle = \"missing everything else\"\n",
    )
    .unwrap();
    h.hub.reload().await.unwrap_err();
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "bcss_policy_last_reload_success"), Some(0.0));
    assert_eq!(
        sample(&text, "bcss_policy_reloads_total{result=\"refused\"}"),
        Some(1.0)
    );
    assert!(sample(&text, "bcss_policy_last_reload_timestamp_seconds").unwrap() >= started);
    assert_eq!(sample(&text, "bcss_policy_generation"), Some(1.0));

    std::fs::remove_file(&broken).unwrap();
    h.hub.reload().await.unwrap();
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "bcss_policy_last_reload_success"), Some(1.0));
    assert_eq!(
        sample(&text, "bcss_policy_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );

    // Every stage has a histogram with observations.
    for stage in ["validate", "route", "check", "filter", "persist", "deliver"] {
        let count = sample(
            &text,
            &format!("bcss_stage_seconds_count{{stage=\"{stage}\"}}"),
        );
        assert!(count.is_some_and(|c| c >= 1.0), "stage {stage}: {count:?}");
        let le = format!("bcss_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}}");
        assert_eq!(sample(&text, &le), count, "stage {stage}");
    }
    assert!(!text.contains("stage=\"plan\""), "plan is split in three");

    // The journal's size is refreshed every 5 s, like the outbox gauge.
    let mut text = text;
    for _ in 0..150 {
        if sample(&text, "bcss_journal_entries").is_some_and(|n| n >= 2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape(metrics).await;
    }
    let entries = sample(&text, "bcss_journal_entries").unwrap();
    assert!(
        entries >= 2.0,
        "a submission and a delivery at least: {entries}"
    );
    let data = h
        .hub
        .outbox()
        .store()
        .unwrap()
        .path()
        .metadata()
        .unwrap()
        .len();
    let bytes = sample(&text, "bcss_store_file_bytes").unwrap();
    assert!(bytes > 0.0 && bytes <= data as f64, "{bytes} of {data}");
}
