//! Prometheus metrics, scraped as Prometheus does. In a test binary of its own: the metrics
//! recorder is installed once per process, and every hub of the process reports to it, so a
//! test that reloads policy beside this one would change the series it reads.

mod common;

use std::time::Duration;

use common::Harness;

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

/// Scrapes every 100 ms until `holds` says yes of a scrape, for `tries` scrapes at most; the
/// last scrape either way (the caller asserts on it).
async fn scrape_until(
    address: std::net::SocketAddr,
    tries: u32,
    holds: impl Fn(&str) -> bool,
) -> String {
    let mut text = scrape(address).await;
    for _ in 1..tries {
        if holds(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape(address).await;
    }
    text
}

#[tokio::test]
async fn metrics_cover_every_stage_the_last_reload_and_the_journal() {
    // (The harness runs on a copy of the configuration, so a broken deliberation can be dropped
    // in.) Once cpas-ghent is back (below), its circuit lets deliveries through within a
    // fraction of a second, not after the shipped 5 s, doubled by each failed probe.
    let h = Harness::start_with(&[], |settings| {
        settings.delivery.circuit_open_ms = 100;
        settings.delivery.backoff_max_ms = 200;
    })
    .await;
    let metrics = {
        let (port, held) = common::port_below_ephemeral_range();
        drop(held);
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    };
    bcss_gateway::telemetry::serve(metrics, h.hub.clone()).unwrap();

    // Traffic: one message admitted and delivered, one refused (the person is not integrated),
    // and the first resubmitted (answered with its ticket, and counted as nothing more).
    let integrated = common::fresh_niss(60);
    let stranger = common::fresh_niss(61);
    common::integrate(&h, "cpas-liege", integrated, 1, "2024-01-01", "").await;
    for (id, niss) in [
        ("metrics-1", integrated),
        ("metrics-2", stranger),
        ("metrics-1", integrated),
    ] {
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
    // Set with the reload's result, not at the next 5 s refresh: a refused reload that took
    // effect would show here.
    assert_eq!(sample(&text, "bcss_policy_generation"), Some(1.0));

    std::fs::remove_file(&broken).unwrap();
    h.hub.reload().await.unwrap();
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "bcss_policy_last_reload_success"), Some(1.0));
    assert_eq!(
        sample(&text, "bcss_policy_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "bcss_policy_generation"), Some(2.0));

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

    // The submissions' own series (recorded through handles registered when `serve` installed
    // the recorder): two calls accepted and one resubmitted, one recipient admitted and one
    // refused.
    let series = [
        (
            "bcss_submissions_total{flow=\"A052\",outcome=\"accepted\"}",
            2.0,
        ),
        (
            "bcss_submissions_total{flow=\"A052\",outcome=\"resubmitted\"}",
            1.0,
        ),
        ("bcss_submit_seconds_count{flow=\"A052\"}", 3.0),
        ("bcss_integration_checks_total{result=\"admitted\"}", 1.0),
        ("bcss_integration_checks_total{result=\"refused\"}", 1.0),
        (
            "bcss_refusals_total{flow=\"A052\",reason=\"not_integrated\"}",
            1.0,
        ),
    ];
    for (name, expected) in series {
        assert_eq!(sample(&text, name), Some(expected), "{name}");
    }
    let bytes_in = sample(&text, "bcss_payload_bytes_in_total{flow=\"A052\"}").unwrap();
    let bytes_out = sample(&text, "bcss_payload_bytes_out_total{flow=\"A052\"}").unwrap();
    assert!(
        bytes_out > 0.0 && bytes_out <= bytes_in,
        "in {bytes_in}, out {bytes_out}"
    );
    assert!(
        sample(&text, "bcss_fields_removed_total{deliberation=\"20/130\"}").is_some(),
        "the admitted message's deliberation has its series"
    );

    // The journal's size and the file's are refreshed every 5 s, like the outbox gauge. redb
    // grows and trims its file as it commits, so the gauge is compared with the file's length
    // once the hub is idle: the next refresh must report exactly that length.
    let store_file = h.hub.outbox().store().unwrap().path().to_path_buf();
    let file_len = || store_file.metadata().unwrap().len() as f64;
    let text = scrape_until(metrics, 150, |text| {
        let entries_seen = sample(text, "bcss_journal_entries").is_some_and(|n| n >= 2.0);
        entries_seen && sample(text, "bcss_store_file_bytes") == Some(file_len())
    })
    .await;
    let entries = sample(&text, "bcss_journal_entries").unwrap();
    assert!(
        entries >= 2.0,
        "a submission and a delivery at least: {entries}"
    );
    let bytes = sample(&text, "bcss_store_file_bytes").unwrap();
    let data = file_len();
    assert!(bytes > 0.0 && bytes == data, "gauge {bytes}, file {data}");

    // The outbox's gauges per recipient: three deliveries wait while cpas-ghent is down, the
    // oldest for longer and longer (the first retry is 100 to 200 ms after the first attempt);
    // none once it is back.
    let depth = "bcss_delivery_queue_depth{recipient=\"cpas-ghent\"}";
    let oldest = "bcss_delivery_queue_oldest_seconds{recipient=\"cpas-ghent\"}";
    let persons = [65, 66, 67].map(common::fresh_niss);
    for niss in persons {
        common::integrate(&h, "cpas-ghent", niss, 1, "2024-01-01", "").await;
    }
    h.network.stop_institution("cpas-ghent").await;
    for (i, niss) in persons.into_iter().enumerate() {
        let mut envelope = common::a052_envelope(&format!("metrics-down-{i}"), niss, 1);
        envelope.addressee = Some("cpas-ghent".into());
        common::submit(&h, "solidaris", envelope).await.unwrap();
    }
    // (queue depth, oldest wait) as the scrape reports them.
    let gauges = |text: &str| (sample(text, depth), sample(text, oldest));
    let waited = |(depth, oldest): (Option<f64>, Option<f64>)| {
        depth == Some(3.0) && oldest.is_some_and(|s| s >= 0.1)
    };
    let text = scrape_until(metrics, 100, |text| waited(gauges(text))).await;
    assert!(waited(gauges(&text)), "{:?}", gauges(&text));
    assert_eq!(h.network.inbox("cpas-ghent").len(), 0);

    h.network.start_institution("cpas-ghent").await.unwrap();
    let drained = |text: &str| gauges(text) == (Some(0.0), Some(0.0));
    let text = scrape_until(metrics, 300, drained).await;
    assert!(drained(&text), "{:?}", gauges(&text));
    assert_eq!(h.network.inbox("cpas-ghent").len(), 3);
}
