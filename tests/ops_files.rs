//! The operations files stay in step with docs/METRICS.md: every metric listed there is on the
//! Grafana dashboard, and the dashboard, the alert rules and the code use only metrics listed
//! there. The list in docs/METRICS.md drives the checks.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The metrics documented: the first column of the tables of docs/METRICS.md.
fn documented() -> BTreeSet<String> {
    let names: BTreeSet<String> = read("docs/METRICS.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `bcss_"))
        .map(|rest| format!("bcss_{}", rest.split('`').next().unwrap()))
        .collect();
    assert!(names.len() >= 20, "the table of docs/METRICS.md: {names:?}");
    names
}

/// Every `bcss_…` metric name in `text`, a histogram's `_bucket`, `_sum` and `_count` series
/// named after the histogram.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("bcss_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("ops/grafana-dashboard.json")).expect("the dashboard is JSON")
}

/// (panel title, query) of every panel target, rows' nested panels included.
fn panel_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("every target has an expr");
                out.push((title.to_owned(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn every_documented_metric_is_on_the_dashboard() {
    let on_panels: BTreeSet<String> = panel_queries(&dashboard())
        .iter()
        .flat_map(|(_, expr)| names_in(expr))
        .collect();
    let missing: Vec<String> = documented()
        .into_iter()
        .filter(|m| !on_panels.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "documented in docs/METRICS.md, on no panel of ops/grafana-dashboard.json: {missing:?}"
    );
}

#[test]
fn the_dashboard_the_rules_and_the_code_use_only_documented_metrics() {
    let documented = documented();
    let dashboard = read("ops/grafana-dashboard.json");
    for (file, text) in [
        ("ops/grafana-dashboard.json", dashboard.as_str()),
        ("ops/alerts.yml", &read("ops/alerts.yml")),
        ("ops/alerts.test.yml", &read("ops/alerts.test.yml")),
        ("ops/prometheus.yml", &read("ops/prometheus.yml")),
    ] {
        let unknown: Vec<String> = names_in(text)
            .into_iter()
            .filter(|m| !documented.contains(m))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses undocumented metrics: {unknown:?}"
        );
    }
    // The code's names (telemetry.rs holds them all) and the documentation's are the same set.
    let in_code = names_in(&read("crates/bcss-gateway/src/telemetry.rs"));
    assert_eq!(
        in_code, documented,
        "crates/bcss-gateway/src/telemetry.rs against docs/METRICS.md"
    );
}

#[test]
fn the_dashboard_is_importable_and_parameterised() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a `{name}` variable"))
    };
    assert_eq!(variable("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(variable("DS_PROMETHEUS")["query"], "prometheus");
    let recipient = variable("recipient")["definition"].as_str().unwrap();
    assert!(recipient.starts_with("label_values("), "{recipient}");
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel id of {title}"
        );
        if panel["type"] == "row" {
            panels.extend(panel["panels"].as_array().into_iter().flatten());
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        }
    }
    // The per-recipient panels follow the `recipient` variable.
    for (title, expr) in panel_queries(&dashboard) {
        if expr.contains("recipient)") || expr.contains("{{recipient}}") {
            assert!(
                expr.contains("recipient=~\"$recipient\""),
                "{title}: {expr}"
            );
        }
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_a_delay_and_a_unit_test() {
    let rules = read("ops/alerts.yml");
    let tests = read("ops/alerts.test.yml");
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 4, "{} alerts", blocks.len());
    for block in blocks {
        let name = block.lines().next().unwrap().trim();
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(block.contains(key), "alert {name} has no {key}");
        }
        assert!(
            !block.contains("niss") && !block.contains("ticket"),
            "alert {name} names personal data"
        );
        // Each case is `alertname: X` followed by `exp_alerts: []` (silent) or `exp_alerts:` and
        // the alerts expected (fires).
        let tested = format!("alertname: {name}\n");
        let (mut fires, mut silent) = (0, 0);
        for (at, _) in tests.match_indices(&tested) {
            let expected = tests[at + tested.len()..].trim_start();
            if expected.starts_with("exp_alerts: []") {
                silent += 1;
            } else if expected.starts_with("exp_alerts:") {
                fires += 1;
            }
        }
        assert!(
            fires >= 1 && silent >= 1,
            "alert {name}: {fires} case(s) where it fires and {silent} where it does not, in \
             ops/alerts.test.yml (one of each at least)"
        );
    }
    for expected in [
        "BcssRecipientDown",
        "BcssDeadLettersGrowing",
        "BcssRefusalRatioJump",
        "BcssSubmitLatencyHigh",
    ] {
        assert!(
            rules.contains(&format!("- alert: {expected}\n")),
            "{expected}"
        );
    }
}
