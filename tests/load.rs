//! `bcss-hub load` end to end: the real binary starts the hub and the reference institutions on
//! loopback, drives a mix of flows and deliberations, and its reports say every message was
//! answered, nothing failed, and the recipients saw every delivery the hub reported.

use std::path::Path;
use std::process::Command;

fn load(dir: &Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml");
    let json = dir.join(format!("{name}.json"));
    let html = dir.join(format!("{name}.html"));
    let output = Command::new(env!("CARGO_BIN_EXE_bcss-hub"))
        .arg("load")
        .arg("--config")
        .arg(&config)
        .arg("--pki")
        .arg(dir.join("pki"))
        .args(["--start-hub", "durable", "--start-network", "--quiet"])
        .args(["--connections", "2", "--in-flight", "16"])
        .arg("--json")
        .arg(&json)
        .arg("--report")
        .arg(&html)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bcss-hub load failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg id=\"latency-over-time\""), "{page}");
    assert!(page.contains("<svg id=\"latency-histogram\""), "{page}");
    assert!(page.contains("<polyline") && page.contains("<rect"));
    assert!(!page.contains("<script") && !page.contains("https://"));
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn check(report: &serde_json::Value, messages: u64) {
    assert_eq!(report["answered"], messages, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    let deliveries = &report["deliveries"];
    let expected = deliveries["expected"].as_u64().unwrap();
    assert!(expected >= messages / 2, "{report:#}");
    assert_eq!(deliveries["reported"], expected, "{report:#}");
    assert_eq!(deliveries["seen"], expected, "{report:#}");
    assert_eq!(deliveries["duplicated"], 0, "{report:#}");
    let p = &report["latency_ms"];
    let (p50, p99, max) = (
        p["p50"].as_f64().unwrap(),
        p["p99"].as_f64().unwrap(),
        p["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report:#}");
}

#[test]
fn load_mix_unary_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let report = load(
        dir.path(),
        "unary",
        &["--messages", "300", "--mix", "a052=2,dmfa=1,dimona=1"],
    );
    check(&report, 300);
    let report = load(dir.path(), "stream", &["--messages", "200", "--stream"]);
    check(&report, 200);
}

#[test]
fn load_with_a_warm_up_measures_only_the_seconds_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let report = load(
        dir.path(),
        "warm-up",
        &["--warm-up", "1", "--duration", "1", "--fan-out", "2"],
    );
    let warm_up = &report["warm_up"];
    assert_eq!(warm_up["seconds"], 1.0, "{report:#}");
    assert_eq!(warm_up["errors"], 0, "{report:#}");
    let calls = warm_up["calls"].as_u64().unwrap();
    assert!(calls > 0, "{report:#}");
    // Every warm-up call went to both CPAS; the recipients saw those deliveries too, and they
    // are not in the measured figures.
    assert_eq!(warm_up["deliveries"], 2 * calls, "{report:#}");
    let answered = report["answered"].as_u64().unwrap();
    check(&report, answered);
    assert!(answered > 0, "{report:#}");
    assert_eq!(report["deliveries"]["expected"], 2 * answered, "{report:#}");
    // The measured seconds are the duration's (and the last calls' answers), not the warm-up's.
    let seconds = report["seconds"].as_f64().unwrap();
    assert!((1.0..2.0).contains(&seconds), "{report:#}");
}

#[test]
fn load_fan_out_reaches_every_cpas() {
    let dir = tempfile::tempdir().unwrap();
    let report = load(
        dir.path(),
        "fanout",
        &["--messages", "100", "--fan-out", "10", "--persons", "20"],
    );
    check(&report, 100);
    assert_eq!(report["deliveries"]["expected"], 1000, "{report:#}");
}

#[test]
fn load_mix_of_deliberations_is_addressed_and_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let report = load(
        dir.path(),
        "deliberations",
        &[
            "--messages",
            "300",
            "--mix",
            "a052=1,dmfa@10/059=1,dmfa@19/010=1,dimona@19/010=1",
        ],
    );
    check(&report, 300);
    // Addressed under the deliberation named: one recipient each, every one admitted.
    assert_eq!(report["deliveries"]["expected"], 300, "{report:#}");
    assert_eq!(report["deliveries"]["refused"], 0, "{report:#}");
    let under = report["by_deliberation"].as_object().unwrap();
    let names: Vec<&str> = under.keys().map(String::as_str).collect();
    assert_eq!(names, ["10/059", "19/010", "20/130"], "{report:#}");
    let delivered: u64 = under
        .values()
        .map(|u| u["delivered"].as_u64().unwrap())
        .sum();
    assert_eq!(delivered, 300, "{report:#}");
    // About a quarter of the messages under 10/059 and 20/130, half under 19/010.
    for (name, share) in [("10/059", 0.25), ("19/010", 0.5), ("20/130", 0.25)] {
        let got = under[name]["delivered"].as_u64().unwrap() as f64 / 300.0;
        assert!((got - share).abs() < 0.12, "{name}: {got} of the messages");
    }
}

#[test]
fn load_refuses_a_mix_the_configuration_cannot_carry() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hub.toml");
    for (mix, error) in [
        ("dmfa@16/046=1", "16/046 is checked a posteriori"),
        ("dimona@10/059=1", "10/059 does not cover Dimona"),
        ("a052@42/000=1", "no deliberation \"42/000\""),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_bcss-hub"))
            .args(["load", "--config"])
            .arg(&config)
            .args(["--quiet", "--mix", mix])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{mix} was accepted");
        assert!(stderr.contains(error), "{mix}: {stderr}");
    }
}
