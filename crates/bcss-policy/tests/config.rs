//! The shipped configuration loads; broken ones are refused with the file, entry and problem.

use std::path::{Path, PathBuf};

use bcss_domain::Flow;
use bcss_policy::{ConfigError, Policy};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

fn load(dir: &Path) -> Result<Policy, ConfigError> {
    Policy::load_files(
        &dir.join("institutions.toml"),
        &dir.join("quality_codes.toml"),
        &dir.join("deliberations"),
    )
}

#[test]
fn the_shipped_configuration_loads() {
    let policy = load(&shipped()).unwrap();
    let ids: Vec<&str> = policy.deliberations().iter().map(|d| &*d.id).collect();
    assert_eq!(ids, ["10/059", "16/046", "19/010", "20/130"]);
    let cpas = policy
        .institutions()
        .iter()
        .filter(|i| i.id.starts_with("cpas-"))
        .count();
    assert!(cpas >= 10, "{cpas} CPAS");
    let funds = policy
        .institutions()
        .iter()
        .filter(|i| policy.sector(i.sector).id == "health_insurance")
        .count();
    assert!(funds >= 3, "{funds} funds");
    for (id, flow) in [
        ("20/130", Flow::A052),
        ("10/059", Flow::Dmfa),
        ("19/010", Flow::Dimona),
        ("19/010", Flow::Dmfa),
    ] {
        let d = policy.deliberation(id).unwrap();
        assert!(policy.grant(d, flow).is_some(), "{id} grants {flow}");
    }
}

/// Copies the shipped configuration, applies `edit` to one file, loads it and returns the error.
fn broken(file: &str, edit: impl Fn(String) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped(), dir.path());
    let target = dir.path().join(file);
    let text = std::fs::read_to_string(&target).unwrap_or_default();
    std::fs::write(&target, edit(text)).unwrap();
    match load(dir.path()) {
        Ok(_) => panic!("{file}: the broken configuration loaded"),
        Err(e) => e.to_string(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn broken_configurations_are_refused_with_file_entry_and_problem() {
    /// (case, file to edit, the edit, what the error must say)
    type Case = (
        &'static str,
        &'static str,
        Box<dyn Fn(String) -> String>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "field path not in the proto",
            "deliberations/10-059.toml",
            Box::new(|t| {
                t.replace(
                    "\"employer_declaration.year\"",
                    "\"employer_declaration.yaer\"",
                )
            }),
            &[
                "10-059.toml",
                "deliberation 10/059, flow DMFA",
                "`yaer` is not a field of bcss.flows.v1.EmployerDeclaration",
            ],
        ),
        (
            "two routes that may join the same parties, one a relay",
            "deliberations/10-059.toml",
            Box::new(|t| {
                t.replace(
                    "senders = [\"sigedis\"]\nrecipients = [\"sdpsp\"]\nrelay = true",
                    "senders = [\"sigedis\"]\nrecipients = [\"sdpsp\"]\nrelay = true\n\n\
                     [[route]]\nsenders = [\"sector:*\"]\nrecipients = [\"sdpsp\"]",
                )
            }),
            &[
                "10-059.toml",
                "deliberation 10/059",
                "routes 2 and 3 may both join the same sender and recipient",
            ],
        ),
        (
            "path through a scalar",
            "deliberations/20-130.toml",
            Box::new(|t| t.replace("\"niss\"", "\"niss.digits\"")),
            &[
                "20-130.toml",
                "deliberation 20/130, flow A052",
                "`niss` is not a message",
            ],
        ),
        (
            "an endpoint with a scheme",
            "institutions.toml",
            Box::new(|t| {
                t.replace(
                    "endpoint = \"127.0.0.1:51001\"",
                    "endpoint = \"https://onss:443\"",
                )
            }),
            &[
                "institutions.toml",
                "institution \"onss\"",
                "endpoint \"https://onss:443\" is not host:port",
            ],
        ),
        (
            "an endpoint without a port",
            "institutions.toml",
            Box::new(|t| {
                t.replace(
                    "endpoint = \"127.0.0.1:51001\"",
                    "endpoint = \"onss.example:\"",
                )
            }),
            &["institution \"onss\"", "is not host:port"],
        ),
        (
            "a sector id that a route's sector:* could not tell apart",
            "institutions.toml",
            Box::new(|t| {
                t.replace("id = \"career\"", "id = \"*\"")
                    .replace("sector = \"career\"", "sector = \"*\"")
            }),
            &[
                "institutions.toml",
                "sector \"*\"",
                "a sector id is lower-case letters, digits, dashes and underscores",
            ],
        ),
        (
            "unknown quality code",
            "deliberations/20-130.toml",
            Box::new(|t| t.replace("\"cpas:003\"", "\"cpas:004\"")),
            &[
                "20-130.toml",
                "deliberation 20/130, check",
                "unknown quality code \"cpas:004\"",
            ],
        ),
        (
            "unknown institution",
            "deliberations/19-010.toml",
            Box::new(|t| {
                t.replace(
                    "recipients = [\"onva-inspection\"]",
                    "recipients = [\"onva-inspectoin\"]",
                )
            }),
            &[
                "19-010.toml",
                "deliberation 19/010, route 1",
                "unknown institution \"onva-inspectoin\"",
            ],
        ),
        (
            "overlapping duplicate deliberation",
            "deliberations/20-130-bis.toml",
            Box::new(|_| {
                std::fs::read_to_string(shipped().join("deliberations/20-130.toml"))
                    .unwrap()
                    .replace("id = \"20/130\"", "id = \"20/999\"")
            }),
            &[
                "deliberation 20/130",
                "overlaps deliberation 20/999",
                "20-130-bis.toml",
                "same senders and recipients for flow A052",
            ],
        ),
        (
            "same number twice",
            "deliberations/20-130-copy.toml",
            Box::new(|_| {
                std::fs::read_to_string(shipped().join("deliberations/20-130.toml")).unwrap()
            }),
            &[
                "20-130-copy.toml",
                "already defines a deliberation with this number",
            ],
        ),
        (
            "unknown sector of an institution",
            "institutions.toml",
            Box::new(|t| t.replacen("sector = \"cpas\"", "sector = \"cpass\"", 1)),
            &[
                "institutions.toml",
                "institution \"cpas-brussels\"",
                "unknown sector \"cpass\"",
            ],
        ),
        (
            "reserved quality code",
            "quality_codes.toml",
            Box::new(|t| t.replacen("{ code = 902,", "{ code = 950,", 1)),
            &["quality_codes.toml", "code 950", "001-900 (specific)"],
        ),
        (
            "a recipient sector no accepted quality code covers",
            "deliberations/20-130.toml",
            Box::new(|t| {
                t.replace(
                    ", \"social_integration:001\", \"social_integration:002\", \"social_integration:003\"",
                    "",
                )
            }),
            &[
                "20-130.toml",
                "deliberation 20/130, check",
                "no accepted quality code of sector \"social_integration\"",
            ],
        ),
        (
            "typo in a key",
            "deliberations/16-046.toml",
            Box::new(|t| t.replace("retention_years", "retention_yaers")),
            &["16-046.toml", "unknown field `retention_yaers`"],
        ),
    ];
    for (name, file, edit, expected) in cases {
        let error = broken(file, edit);
        for part in expected {
            assert!(
                error.contains(part),
                "{name}: `{part}` missing from:\n{error}"
            );
        }
    }
}

#[test]
fn consultation_sections_are_checked_at_load() {
    let policy = load(&shipped()).unwrap();
    let dolsis = policy.deliberation("19/010").unwrap();
    let consultation = dolsis
        .consultation
        .as_ref()
        .expect("19/010 allows consulting");
    assert_eq!(consultation.agents.as_ref().map(Vec::len), Some(12));
    assert!(consultation.view_only);
    let onss = policy.institution_by_id("onss").unwrap().index;
    assert_eq!(consultation.source(Flow::Dmfa), Some(onss));
    assert_eq!(consultation.source(Flow::Dimona), Some(onss));
    let career = policy.deliberation("16/046").unwrap();
    let consultation = career
        .consultation
        .as_ref()
        .expect("16/046 allows consulting");
    assert!(consultation.agents.is_none() && !consultation.view_only);
    assert!(
        policy
            .deliberation("20/130")
            .unwrap()
            .consultation
            .is_none()
    );

    const FILE: &str = "deliberations/19-010.toml";
    /// (case, the edit of 19-010.toml, what the error must say)
    type Case = (&'static str, Box<dyn Fn(String) -> String>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "a 13th agent",
            Box::new(|t| t.replace("\"onva-insp-12\",", "\"onva-insp-12\", \"onva-insp-13\",")),
            "names 13 agents but max_agents = 12",
        ),
        (
            "an agent twice",
            Box::new(|t| t.replace("\"onva-insp-12\",", "\"onva-insp-11\",")),
            "agent \"onva-insp-11\" is listed twice",
        ),
        (
            "max_agents without named agents",
            Box::new(|t| {
                let start = t.find("agents = [").unwrap();
                let end = start + t[start..].find(']').unwrap() + 1;
                format!("{}{}", &t[..start], &t[end..])
            }),
            "max_agents is set: list the named agents",
        ),
        (
            "an unknown source",
            Box::new(|t| t.replace("DMFA = \"onss\"", "DMFA = \"nobody\"")),
            "sources: unknown institution \"nobody\"",
        ),
        (
            "a source that does not send under the deliberation",
            Box::new(|t| t.replace("DMFA = \"onss\"", "DMFA = \"onem\"")),
            "\"onem\" is not among the senders of any route",
        ),
        (
            "a flow without a field list",
            Box::new(|t| t.replace("DMFA = \"onss\"", "DMFA = \"onss\", A052 = \"onss\"")),
            "sources: flow A052 has no [[flow]] entry",
        ),
        (
            "a flow given two sources (flow names are read in any case)",
            Box::new(|t| t.replace("DMFA = \"onss\"", "DMFA = \"onss\", dmfa = \"onss\"")),
            "listed twice: a flow has one source",
        ),
        (
            "an unknown key",
            Box::new(|t| t.replace("view_only = true", "view_only = true\nsave = false")),
            "unknown field `save`",
        ),
        (
            "max_agents without a consultation section",
            Box::new(|t| {
                let start = t.find("[consultation]").unwrap();
                let end = start + t[start..].find("view_only = true").unwrap() + 16;
                format!("{}{}", &t[..start], &t[end..])
            }),
            "max_agents limits who consults",
        ),
    ];
    for (case, edit, expected) in cases {
        let error = broken(FILE, edit);
        assert!(error.contains(expected), "{case}: {error}");
        if !expected.starts_with("unknown field") {
            assert!(
                error.contains("19-010.toml"),
                "{case} names the file: {error}"
            );
        }
    }
}

/// A live reload may add institutions and codes, and change deliberations; it may not change
/// what the directory's rows mean. (edited file, edit, what the refusal says; None: accepted)
#[test]
fn a_reload_may_not_change_what_directory_rows_mean() {
    type Edit = fn(String) -> String;
    let table: [(&str, Edit, Option<&str>); 4] = [
        ("institutions.toml", |text| text, None),
        (
            "institutions.toml",
            |text| text.replacen("sector = \"cpas\"", "sector = \"health_insurance\"", 1),
            Some("moved from sector \"cpas\" to \"health_insurance\""),
        ),
        (
            "quality_codes.toml",
            |text| {
                text.replacen(
                    "  { code = 902, name = \"provisional registration\" },\n",
                    "",
                    1,
                )
            },
            Some("quality code 902 of sector \"national_social_security\" was removed"),
        ),
        (
            "quality_codes.toml",
            |text| {
                text.replacen(
                    "  { code = 902, name = \"provisional registration\" },\n",
                    "  { code = 902, name = \"provisional registration\" },\n  { code = 777, name = \"added\" },\n",
                    1,
                )
            },
            None,
        ),
    ];
    let shipped_policy = load(&shipped()).unwrap();
    for (file, edit, refusal) in table {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&shipped(), dir.path());
        let target = dir.path().join(file);
        std::fs::write(&target, edit(std::fs::read_to_string(&target).unwrap())).unwrap();
        let next = load(dir.path()).unwrap();
        match (shipped_policy.check_successor(&next), refusal) {
            (Ok(()), None) => {}
            (Err(error), Some(says)) => assert!(error.contains(says), "{file}: {error}"),
            (result, expected) => panic!("{file}: {result:?}, expected {expected:?}"),
        }
    }
}
