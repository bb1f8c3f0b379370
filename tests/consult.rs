//! Consultations end to end (issue 8): the ONVA inspection service under 19/010 and the contact
//! centres under 16/046 consult data ONSS holds, through the real hub over mutual TLS; the
//! answer is filtered, refusals say why, slow or absent sources give nothing partial, and every
//! consultation is journalled (the a-posteriori audit finds the contact centres').

mod common;

use std::time::Duration;

use bcss_domain::Niss;
use bcss_proto::flows::v1 as f;
use bcss_proto::hub::v1::consult_reply::Payload;
use bcss_proto::hub::v1::journal_client::JournalClient;
use bcss_proto::hub::v1::{
    AuditPosterioriRequest, ByPersonRequest, ConsultReply, ConsultRequest, Flow, JournalRecord,
    RegisterContactFileRequest,
};
use bcss_proto::institution::v1::{AnswerRequest, answer_reply};
use common::{Harness, fresh_niss, integrate};
use tonic::Code;

const QUARTER: (&str, &str) = ("2025-04-01", "2025-06-30");

fn request(flow: Flow, niss: Niss, agent: &str, contact_file: Option<&str>) -> ConsultRequest {
    ConsultRequest {
        flow: flow as i32,
        niss: niss.digits(),
        period: Some(f::Period {
            start: QUARTER.0.into(),
            end: QUARTER.1.into(),
        }),
        purpose: "holiday-pay-control".into(),
        agent_id: agent.into(),
        contact_file: contact_file.map(str::to_owned),
    }
}

async fn consult(
    h: &Harness,
    consulter: &str,
    request: ConsultRequest,
) -> Result<tonic::Response<ConsultReply>, tonic::Status> {
    h.gateway(consulter).await.consult(request).await
}

/// Consults until answered, at most `tries` times 100 ms apart (a source back from an outage or
/// a delay, on a loaded machine); each failure must have one of the codes `failing`.
async fn answered_within(
    h: &Harness,
    consulter: &str,
    request: ConsultRequest,
    tries: usize,
    failing: &[Code],
) -> ConsultReply {
    let mut last = None;
    for _ in 0..tries {
        match consult(h, consulter, request.clone()).await {
            Ok(reply) => return reply.into_inner(),
            Err(status) => {
                assert!(failing.contains(&status.code()), "{status:?}");
                last = Some(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not answered in {tries} tries: {last:?}");
}

/// What ONSS holds about the person for the flow and the quarter: the answer before filtering.
fn held(h: &Harness, flow: Flow, niss: Niss) -> answer_reply::Payload {
    h.network
        .source("onss")
        .data(&AnswerRequest {
            flow: flow as i32,
            niss: niss.digits(),
            period: Some(f::Period {
                start: QUARTER.0.into(),
                end: QUARTER.1.into(),
            }),
            ..Default::default()
        })
        .unwrap()
        .payload
        .unwrap()
}

async fn journal_of(h: &Harness, niss: Niss) -> Vec<JournalRecord> {
    JournalClient::new(h.channel("security-adviser").await)
        .by_person(ByPersonRequest {
            niss: niss.digits(),
        })
        .await
        .unwrap()
        .into_inner()
        .records
}

/// The DmfA ONSS holds, with every field 19/010 (003 §16-22) does not list cleared by hand: what
/// the ONVA inspection service may see.
fn dmfa_as_19_010_allows(mut dmfa: f::Dmfa) -> f::Dmfa {
    let declaration = dmfa.employer_declaration.as_mut().unwrap();
    declaration.previous_registration_number.clear();
    declaration.source = 0;
    let person = declaration.natural_person.as_mut().unwrap();
    person.previous_niss.clear();
    for line in &mut person.worker_lines {
        line.local_unit_id.clear();
        for occupation in &mut line.occupations {
            occupation.internal_occupation_number.clear();
            occupation.flying_personnel_class.clear();
            occupation.public_sector_data = None;
            occupation.scale_salaries.clear();
            occupation.salary_supplements.clear();
        }
    }
    dmfa
}

#[tokio::test]
async fn an_onva_agent_sees_the_dmfa_blocks_of_19_010_only_and_for_viewing_only() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(100);
    integrate(&h, "onva-inspection", niss, 1, "2020-01-01", "").await;
    let response = consult(
        &h,
        "onva-inspection",
        request(Flow::Dmfa, niss, "onva-insp-07", None),
    )
    .await
    .unwrap();
    assert_eq!(
        response
            .metadata()
            .get("bcss-view-only")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "19/010 answers are for viewing only (003 §37)"
    );
    let reply = response.into_inner();
    assert_eq!(
        (
            reply.source.as_str(),
            reply.deliberation.as_str(),
            reply.view_only,
            reply.a_posteriori
        ),
        ("onss", "19/010", true, false)
    );
    let answer_reply::Payload::Dmfa(original) = held(&h, Flow::Dmfa, niss) else {
        panic!("ONSS holds a DmfA")
    };
    let declaration = original.employer_declaration.as_ref().unwrap();
    assert!(
        !declaration.previous_registration_number.is_empty() && declaration.source != 0,
        "the source's answer carries fields outside 19/010, so that filtering is observable"
    );
    let Some(Payload::Dmfa(received)) = reply.payload else {
        panic!("a DmfA answer: {:?}", reply.payload)
    };
    assert_eq!(received, dmfa_as_19_010_allows(original));
    assert!(
        reply.removed_field_count >= 2,
        "{}",
        reply.removed_field_count
    );
    assert!(!reply.ticket.is_empty());
}

#[tokio::test]
async fn a_contact_centre_sees_a_career_without_integration_and_without_amounts() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(101);
    let mut journal = JournalClient::new(h.channel("mycareer-contact-centre").await);
    journal
        .register_contact_file(RegisterContactFileRequest {
            contact_file: "CF-101".into(),
            niss: niss.digits(),
            opened_at: String::new(),
        })
        .await
        .unwrap();
    // Two flows, one table: what 16/046 keeps and drops of each.
    for flow in [Flow::Dmfa, Flow::Dimona] {
        let response = consult(
            &h,
            "mycareer-contact-centre",
            request(flow, niss, "agent-314", Some("CF-101")),
        )
        .await
        .unwrap();
        assert!(
            response.metadata().get("bcss-view-only").is_none(),
            "16/046 does not say view only"
        );
        let reply = response.into_inner();
        assert_eq!(
            (reply.deliberation.as_str(), reply.a_posteriori),
            ("16/046", true)
        );
        assert!(reply.removed_field_count > 0);
        match (reply.payload.unwrap(), held(&h, flow, niss)) {
            (Payload::Dmfa(got), answer_reply::Payload::Dmfa(held)) => {
                let got_person = got
                    .employer_declaration
                    .as_ref()
                    .unwrap()
                    .natural_person
                    .as_ref()
                    .unwrap();
                let held_declaration = held.employer_declaration.as_ref().unwrap();
                let held_person = held_declaration.natural_person.as_ref().unwrap();
                assert_eq!(got_person.last_name, held_person.last_name);
                assert_eq!(
                    got.employer_declaration
                        .as_ref()
                        .unwrap()
                        .net_amount_due_cents,
                    0
                );
                assert!(held_declaration.net_amount_due_cents > 0);
                for occupation in &got_person.worker_lines[0].occupations {
                    assert!(
                        occupation.remunerations.is_empty(),
                        "no amounts under 16/046"
                    );
                    assert_eq!(occupation.worker_average_weekly_hours_hundredths, 0);
                }
                assert_eq!(
                    got_person.worker_lines[0].occupations.len(),
                    held_person.worker_lines[0].occupations.len()
                );
            }
            (Payload::Dimona(got), answer_reply::Payload::Dimona(held)) => {
                assert_eq!(
                    got.worker.as_ref().unwrap().last_name,
                    held.worker.as_ref().unwrap().last_name
                );
                assert!(got.dimona_number.is_empty() && !held.dimona_number.is_empty());
                assert!(got.employer.as_ref().unwrap().address.is_none());
                assert!(got.occupation.as_ref().unwrap().place_of_work.is_none());
                assert_eq!(
                    got.occupation.as_ref().unwrap().entry_date,
                    held.occupation.as_ref().unwrap().entry_date
                );
            }
            (got, _) => panic!("the flow asked: {got:?}"),
        }
    }
}

#[tokio::test]
async fn refusals_say_why_ask_nothing_of_the_source_and_are_journalled() {
    let h = Harness::start(&[]).await;
    let manual = fresh_niss(110);
    let white_collar = fresh_niss(111);
    let stranger = fresh_niss(112);
    let old_file = fresh_niss(113);
    integrate(&h, "onva-inspection", manual, 1, "2020-01-01", "").await;
    integrate(&h, "onva-inspection", white_collar, 3, "2020-01-01", "").await;
    integrate(
        &h,
        "onva-inspection",
        old_file,
        2,
        "2015-01-01",
        "2019-12-31",
    )
    .await;
    integrate(&h, "cpas-liege", manual, 1, "2020-01-01", "").await;
    // (case, consulter, request, refusal reason)
    let cases = [
        (
            "a 13th agent",
            "onva-inspection",
            request(Flow::Dmfa, manual, "onva-insp-13", None),
            "agent_not_allowed",
        ),
        (
            "an agent the deliberation does not name",
            "onva-inspection",
            request(Flow::Dimona, manual, "someone-else", None),
            "agent_not_allowed",
        ),
        (
            "a person the ONVA never integrated",
            "onva-inspection",
            request(Flow::Dmfa, stranger, "onva-insp-01", None),
            "not_integrated",
        ),
        (
            "a white-collar worker",
            "onva-inspection",
            request(Flow::Dimona, white_collar, "onva-insp-02", None),
            "quality_code_not_accepted",
        ),
        (
            "an artist whose file closed before the quarter",
            "onva-inspection",
            request(Flow::Dmfa, old_file, "onva-insp-03", None),
            "period_outside_integration",
        ),
        (
            "a contact centre without a contact file",
            "mypension-contact-centre",
            request(Flow::Dmfa, stranger, "agent-1", None),
            "contact_file_missing",
        ),
        (
            "a CPAS, which no deliberation lets consult",
            "cpas-liege",
            request(Flow::Dmfa, manual, "agent-1", None),
            "no_deliberation",
        ),
    ];
    for (case, consulter, request, reason) in cases {
        let status = consult(&h, consulter, request.clone())
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
        assert_eq!(
            status
                .metadata()
                .get("bcss-refusal-reason")
                .map(|v| v.to_str().unwrap()),
            Some(reason),
            "{case}"
        );
        assert!(
            status.message().contains(reason) && !status.message().contains(&request.niss),
            "{case}: the message says why, without the person: {}",
            status.message()
        );
        let niss = Niss::parse(&request.niss).unwrap();
        let refusal = journal_of(&h, niss)
            .await
            .into_iter()
            .find(|r| r.kind == "refusal" && r.agent_id == request.agent_id)
            .unwrap_or_else(|| panic!("{case}: journalled"));
        assert_eq!(
            (
                refusal.reason.as_str(),
                refusal.recipient.as_str(),
                refusal.sender.as_str(),
                refusal.consultation
            ),
            (reason, consulter, "", true),
            "{case}: the source, not asked, is not a party to the refusal"
        );
    }
    assert_eq!(
        h.network.source("onss").answered(),
        0,
        "a refused consultation asks the source nothing"
    );
}

#[tokio::test]
async fn the_journal_records_the_onva_agent_and_the_removed_field_names_never_values() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(120);
    integrate(&h, "onva-inspection", niss, 2, "2020-01-01", "").await;
    let reply = consult(
        &h,
        "onva-inspection",
        request(Flow::Dmfa, niss, "onva-insp-11", None),
    )
    .await
    .unwrap()
    .into_inner();
    let records = journal_of(&h, niss).await;
    let mine: Vec<&JournalRecord> = records
        .iter()
        .filter(|r| r.ticket == reply.ticket)
        .collect();
    let kinds: Vec<(&str, &str)> = mine
        .iter()
        .map(|r| (r.kind.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(kinds, [("admission", "admitted"), ("delivery", "answered")]);
    for record in &mine {
        assert_eq!(
            (
                record.agent_id.as_str(),
                record.consultation_purpose.as_str(),
                record.sender.as_str(),
                record.recipient.as_str(),
                record.deliberation.as_str(),
                record.consultation,
            ),
            (
                "onva-insp-11",
                "holiday-pay-control",
                "onss",
                "onva-inspection",
                "19/010",
                true
            )
        );
    }
    let answered = mine[1];
    assert!(
        answered
            .removed_fields
            .iter()
            .any(|f| f == "employer_declaration.previous_registration_number"),
        "{:?}",
        answered.removed_fields
    );
    let answer_reply::Payload::Dmfa(held) = held(&h, Flow::Dmfa, niss) else {
        panic!()
    };
    let person = held.employer_declaration.unwrap().natural_person.unwrap();
    let text = format!("{records:?}");
    assert!(!text.contains(&person.last_name) && !text.contains(&person.first_name));
    // The chain still verifies with consultation entries in it.
    let verified = JournalClient::new(h.channel("security-adviser").await)
        .verify(bcss_proto::hub::v1::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{}", verified.problem);
}

#[tokio::test]
async fn the_a_posteriori_audit_finds_contact_centre_consultations_a_file_does_not_justify() {
    let h = Harness::start(&[]).await;
    let justified = fresh_niss(130);
    let unknown_file = fresh_niss(131);
    let other_person = fresh_niss(132);
    let mut journal = JournalClient::new(h.channel("mycareer-contact-centre").await);
    for (file, niss) in [("CF-130", justified), ("CF-132", justified)] {
        journal
            .register_contact_file(RegisterContactFileRequest {
                contact_file: file.into(),
                niss: niss.digits(),
                opened_at: String::new(),
            })
            .await
            .unwrap();
    }
    // (person, contact file, the audit's finding)
    let cases = [
        (justified, "CF-130", None),
        (
            unknown_file,
            "CF-NEVER-OPENED",
            Some("contact_file_unknown"),
        ),
        (other_person, "CF-132", Some("other_person")),
    ];
    let mut tickets = Vec::new();
    for (niss, file, _) in cases {
        let reply = consult(
            &h,
            "mycareer-contact-centre",
            request(Flow::Dimona, niss, "agent-42", Some(file)),
        )
        .await
        .unwrap()
        .into_inner();
        assert!(reply.a_posteriori);
        tickets.push(reply.ticket);
    }
    let audit = JournalClient::new(h.channel("security-adviser").await)
        .audit_posteriori(AuditPosterioriRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        audit.examined, 3,
        "every contact-centre consultation is examined"
    );
    for ((_, _, finding), ticket) in cases.iter().zip(&tickets) {
        let found = audit
            .findings
            .iter()
            .find(|f| f.consultation.as_ref().unwrap().ticket == *ticket);
        assert_eq!(found.map(|f| f.problem.as_str()), *finding, "{ticket}");
        if let Some(found) = found {
            let record = found.consultation.as_ref().unwrap();
            assert_eq!(
                (record.agent_id.as_str(), record.consultation),
                ("agent-42", true)
            );
        }
    }
}

#[tokio::test]
async fn a_slow_source_gives_deadline_exceeded_and_nothing_partial() {
    let h = Harness::start_with(&[], |settings| settings.delivery.consult_timeout_ms = 1000).await;
    let niss = fresh_niss(140);
    integrate(&h, "onva-inspection", niss, 1, "2020-01-01", "").await;
    h.network.source("onss").set_delay(Duration::from_secs(120));
    let started = std::time::Instant::now();
    let status = consult(
        &h,
        "onva-inspection",
        request(Flow::Dmfa, niss, "onva-insp-01", None),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The hub gave up at its deadline, long before the source would have answered (the
    // margin is wide: the CI's two cores are shared with other test binaries).
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(
        status.message().contains("consult_timeout_ms"),
        "{}",
        status.message()
    );
    let records = journal_of(&h, niss).await;
    assert!(
        records
            .iter()
            .any(|r| r.kind == "attempt" && r.reason == "source_deadline_exceeded"),
        "{records:?}"
    );
    assert!(!records.iter().any(|r| r.reason == "answered"));
    // Back to normal speed, the same consultation is answered (within a few tries: a loaded
    // machine may take longer than the 1 s deadline once).
    h.network.source("onss").set_delay(Duration::ZERO);
    let request = request(Flow::Dmfa, niss, "onva-insp-01", None);
    let reply = answered_within(&h, "onva-inspection", request, 5, &[Code::DeadlineExceeded]).await;
    assert!(reply.payload.is_some());
}

#[tokio::test]
async fn a_source_that_is_down_or_answers_about_someone_else_gives_unavailable() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(150);
    integrate(&h, "onva-inspection", niss, 1, "2020-01-01", "").await;
    h.network.stop_institution("onss").await;
    let status = consult(
        &h,
        "onva-inspection",
        request(Flow::Dimona, niss, "onva-insp-05", None),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    h.network.start_institution("onss").await.unwrap();

    h.network.source("onss").set_wrong_person(true);
    let status = consult(
        &h,
        "onva-inspection",
        request(Flow::Dimona, niss, "onva-insp-05", None),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("not about the person asked"),
        "{}",
        status.message()
    );
    h.network.source("onss").set_wrong_person(false);

    // Up again and honest: answered (once the hub's connection to it is back).
    let request = request(Flow::Dimona, niss, "onva-insp-05", None);
    let failing = [Code::Unavailable, Code::DeadlineExceeded];
    let reply = answered_within(&h, "onva-inspection", request, 50, &failing).await;
    let Some(Payload::Dimona(dimona)) = reply.payload else {
        panic!()
    };
    assert_eq!(dimona.worker.unwrap().niss, niss.digits());
}

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(160);
    integrate(&h, "onva-inspection", niss, 1, "2020-01-01", "").await;
    let good = request(Flow::Dmfa, niss, "onva-insp-01", None);
    // (case, change, a word the message must contain)
    type Change = fn(&mut ConsultRequest);
    let cases: [(&str, Change, &str); 7] = [
        ("no flow", |r| r.flow = 0, "flow"),
        ("check digits", |r| r.niss.replace_range(9.., "00"), "niss"),
        ("no period", |r| r.period = None, "period"),
        (
            "a bad date",
            |r| r.period.as_mut().unwrap().start = "2025-13-01".into(),
            "period.start",
        ),
        ("no agent", |r| r.agent_id.clear(), "agent_id"),
        ("no purpose", |r| r.purpose.clear(), "purpose"),
        (
            "a contact file with a space",
            |r| r.contact_file = Some("CF 1".into()),
            "contact_file",
        ),
    ];
    for (case, change, field) in cases {
        let mut bad = good.clone();
        change(&mut bad);
        let status = consult(&h, "onva-inspection", bad).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().contains(field),
            "{case}: {}",
            status.message()
        );
        assert!(!status.message().contains(&niss.digits()[..9]), "{case}");
    }
    assert!(journal_of(&h, niss).await.is_empty(), "nothing journalled");
    assert_eq!(h.network.source("onss").answered(), 0, "nothing asked");
}

#[test]
fn a_13th_named_agent_in_19_010_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::shipped_config();
    std::fs::create_dir_all(dir.path().join("deliberations")).unwrap();
    for entry in std::fs::read_dir(config.join("deliberations")).unwrap() {
        let entry = entry.unwrap();
        let mut text = std::fs::read_to_string(entry.path()).unwrap();
        if text.contains("\"onva-insp-12\",") {
            text = text.replace("\"onva-insp-12\",", "\"onva-insp-12\", \"onva-insp-13\",");
        }
        std::fs::write(
            dir.path().join("deliberations").join(entry.file_name()),
            text,
        )
        .unwrap();
    }
    let error = bcss_policy::Policy::load_files(
        &config.join("institutions.toml"),
        &config.join("quality_codes.toml"),
        &dir.path().join("deliberations"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("deliberation 19/010, consultation")
            && error.contains("names 13 agents but max_agents = 12"),
        "{error}"
    );
}
