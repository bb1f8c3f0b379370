//! The shipped sample network is what its generator makes, and the demo runs on it.

mod common;

use bcss_policy::{Policy, Settings};
use bcss_sim::demo::{DemoOptions, run_with};

#[test]
fn the_shipped_directory_is_reproducible_from_its_seed() {
    let settings = Settings::load(&common::shipped_config().join("hub.toml")).unwrap();
    let policy = Policy::load(&settings).unwrap();
    let rows = bcss_sim::network::generate(&policy, 10_000, 2026);
    let generated = bcss_sim::network::to_csv(&rows, 10_000, 2026);
    let shipped = std::fs::read_to_string(&settings.files.directory).unwrap();
    assert!(
        generated == shipped,
        "config/directory.csv differs from `bcss-hub generate-directory --persons 10000 --seed 2026`"
    );
    let cpas = rows
        .iter()
        .filter(|r| r.institution.starts_with("cpas-"))
        .map(|r| &r.institution)
        .collect::<std::collections::HashSet<_>>();
    assert!(cpas.len() >= 10, "{} CPAS have clients", cpas.len());
}

#[tokio::test]
async fn the_demo_delivers_what_it_reports_and_refuses_some() {
    let pki = tempfile::tempdir().unwrap();
    let mut settings = Settings::load(&common::shipped_config().join("hub.toml")).unwrap();
    settings.tls.pki = pki.path().to_owned();
    // Not the source tree's var/: a demo run at the same time shares it.
    settings.logs.person_key = pki.path().join("person-log.key");
    // Consultations answered or not by policy alone, never by how busy the machine is.
    settings.delivery.consult_timeout_ms = 30_000;
    let options = DemoOptions {
        messages: 150,
        seed: 7,
        keep_running: false,
        ephemeral_ports: true,
        progress: false,
        metrics: false,
    };
    let report = run_with(settings.clone(), options.clone()).await.unwrap();
    assert!(report.submitted >= 150);
    assert!(report.delivered > 50, "{report:?}");
    assert!(report.refused > 0, "{report:?}");
    assert!(report.rejected > 0, "{report:?}");
    assert_eq!(report.received, report.delivered);
    // Consultations of both kinds, answered and refused.
    assert!(
        report.answered > 0 && report.consultations_refused > 0,
        "{report:?}"
    );
    for needle in [
        "answered under 19/010",
        "answered under 16/046",
        "agent_not_allowed",
        "contact_file_missing",
    ] {
        assert!(
            report.consult_table.contains(needle),
            "{needle} missing from the consultations:\n{}",
            report.consult_table
        );
    }
    // The same seed gives the same run, even when Submit answers before any delivery: the
    // demo then waits for each delivery to settle instead of counting only the quick ones.
    settings.delivery.reply_wait_ms = 0;
    let again = run_with(settings, options).await.unwrap();
    assert_eq!(
        (
            again.submitted,
            again.delivered,
            again.refused,
            again.rejected,
            again.consultations,
            again.answered,
            again.consultations_refused
        ),
        (
            report.submitted,
            report.delivered,
            report.refused,
            report.rejected,
            report.consultations,
            report.answered,
            report.consultations_refused
        )
    );
    for deliberation in ["20/130", "10/059", "19/010", "16/046"] {
        assert!(
            report.table.contains(deliberation),
            "{deliberation} missing from the report:\n{}",
            report.table
        );
    }
}
