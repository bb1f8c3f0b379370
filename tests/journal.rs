//! The journal end to end: the citizen's view, tickets, institutions, roles, the a-posteriori
//! audit of contact-centre consultations, reproducible samples, verification and retention.

mod common;

use std::time::Duration;

use bcss_proto::hub::v1::journal_client::JournalClient;
use bcss_proto::hub::v1::{
    AuditPosterioriRequest, ByInstitutionRequest, ByPersonRequest, ByTicketRequest, JournalRecord,
    RegisterContactFileRequest, SampleRequest, VerifyRequest,
};
use bcss_store::{EntryKind, JournalQuery};
use common::{Harness, a052_envelope, dmfa_envelope, eventually, fresh_niss, integrate, submit};
use tonic::Code;
use tonic::transport::Channel;

async fn journal(h: &Harness, party: &str) -> JournalClient<Channel> {
    JournalClient::new(h.channel(party).await)
}

fn kinds(records: &[JournalRecord]) -> Vec<(String, String, String)> {
    records
        .iter()
        .map(|r| (r.kind.clone(), r.recipient.clone(), r.reason.clone()))
        .collect()
}

#[tokio::test]
async fn the_citizens_view_names_every_recipient_when_and_why_and_no_value() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(80);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    integrate(&h, "cpas-ghent", niss, 0, "2024-01-01", "").await; // quality 000: refused
    let reply = submit(&h, "solidaris", a052_envelope("j-1", niss, 1))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), || {
        h.network.inbox("cpas-liege").len() == 1
    })
    .await;
    // The delivery's entry is written after the acknowledgement: wait for it.
    let mut auditor = journal(&h, "security-adviser").await;
    let mut records = Vec::new();
    for _ in 0..500 {
        records = auditor
            .by_person(ByPersonRequest {
                niss: niss.digits(),
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        if records.iter().any(|r| r.kind == "delivery") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = kinds(&records);
    assert!(seen.contains(&("submission".into(), String::new(), "accepted".into())));
    assert!(seen.contains(&("admission".into(), "cpas-liege".into(), "admitted".into())));
    assert!(seen.contains(&(
        "refusal".into(),
        "cpas-ghent".into(),
        "quality_code_not_accepted".into()
    )));
    assert!(seen.contains(&("delivery".into(), "cpas-liege".into(), "delivered".into())));
    let delivery = records.iter().find(|r| r.kind == "delivery").unwrap();
    assert_eq!(
        (delivery.ticket.as_str(), delivery.deliberation.as_str()),
        (reply.ticket.as_str(), "20/130")
    );
    assert!(!delivery.purpose.is_empty() && !delivery.at.is_empty());
    // The recipient sees its own part, not the refused one's.
    let mine = journal(&h, "cpas-liege")
        .await
        .by_person(ByPersonRequest {
            niss: niss.digits(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(mine.iter().all(|r| r.recipient == "cpas-liege"));
    assert!(!mine.is_empty());

    // A DmfA under 10/059: the removed fields are named, never their values.
    let other = fresh_niss(81);
    integrate(&h, "sigedis", other, 1, "2020-01-01", "").await;
    let dmfa = dmfa_envelope("j-2", other, true);
    submit(&h, "onss", dmfa.clone()).await.unwrap();
    let records = auditor
        .by_person(ByPersonRequest {
            niss: other.digits(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let admitted: Vec<&JournalRecord> = records.iter().filter(|r| r.kind == "admission").collect();
    assert!(!admitted.is_empty(), "{records:?}");
    let removed: Vec<&String> = admitted.iter().flat_map(|r| &r.removed_fields).collect();
    assert!(!removed.is_empty(), "10/059 removes fields: {records:?}");
    let text = format!("{records:?}");
    if let Some(bcss_proto::hub::v1::envelope::Payload::Dmfa(payload)) = &dmfa.payload {
        let declaration = payload.employer_declaration.as_ref().unwrap();
        let person = declaration.natural_person.as_ref().unwrap();
        assert!(!text.contains(&person.last_name), "no name in the journal");
    }
}

#[tokio::test]
async fn a_query_matching_more_than_the_limit_asks_for_a_narrower_range() {
    let h = Harness::start_with(&[], |settings| settings.limits.journal_entries = 2).await;
    for i in 0..3u16 {
        let niss = fresh_niss(85 + i);
        integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
        submit(&h, "solidaris", a052_envelope(&format!("lim-{i}"), niss, 1))
            .await
            .unwrap();
    }
    let of_liege = |from: &str| ByInstitutionRequest {
        institution: "cpas-liege".into(),
        from: from.into(),
        to: String::new(),
    };
    // Three admissions name cpas-liege (their deliveries are reached through them).
    let status = journal(&h, "cpas-liege")
        .await
        .by_institution(of_liege(""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("more than 2 journal entries")
            && status.message().contains("limits.journal_entries")
            && status.message().contains("narrow it"),
        "{status:?}"
    );
    let audit = journal(&h, "security-adviser")
        .await
        .audit_posteriori(AuditPosterioriRequest::default())
        .await
        .unwrap_err();
    assert_eq!(audit.code(), Code::ResourceExhausted, "{audit:?}");
    // A narrower range is answered.
    let later = journal(&h, "cpas-liege")
        .await
        .by_institution(of_liege("2099-01-01"))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(later.is_empty());
}

#[tokio::test]
async fn tickets_and_institutions_are_read_by_those_involved_and_auditors_only() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(82);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let ticket = submit(&h, "solidaris", a052_envelope("j-3", niss, 1))
        .await
        .unwrap()
        .ticket;
    let by_ticket = |party: &'static str| {
        let ticket = ticket.clone();
        let h = &h;
        async move {
            journal(h, party)
                .await
                .by_ticket(ByTicketRequest { ticket })
                .await
                .map(|r| r.into_inner().records)
        }
    };
    assert!(!by_ticket("security-adviser").await.unwrap().is_empty());
    assert!(!by_ticket("solidaris").await.unwrap().is_empty());
    assert_eq!(
        by_ticket("onss").await.unwrap_err().code(),
        Code::NotFound,
        "its existence is not revealed"
    );
    assert_eq!(
        by_ticket("hub-operations").await.unwrap_err().code(),
        Code::PermissionDenied,
        "an operator without the auditor role"
    );
    let own = journal(&h, "cpas-liege")
        .await
        .by_institution(ByInstitutionRequest {
            institution: "cpas-liege".into(),
            from: "2020-01-01".into(),
            to: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(own.iter().any(|r| r.ticket == ticket));
    let status = journal(&h, "cpas-liege")
        .await
        .by_institution(ByInstitutionRequest {
            institution: "solidaris".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Nothing before the exchange.
    let earlier = journal(&h, "security-adviser")
        .await
        .by_institution(ByInstitutionRequest {
            institution: "cpas-liege".into(),
            from: "2020-01-01".into(),
            to: "2020-12-31".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(earlier.is_empty());
}

#[tokio::test]
async fn the_a_posteriori_audit_finds_each_unjustified_consultation() {
    let h = Harness::start(&[]).await;
    let (person, stranger) = (fresh_niss(83), fresh_niss(84));
    let mut centre = journal(&h, "mycareer-contact-centre").await;
    let register =
        |id: &str, niss: bcss_domain::Niss, opened_at: &str| RegisterContactFileRequest {
            contact_file: id.into(),
            niss: niss.digits(),
            opened_at: opened_at.into(),
        };
    centre
        .register_contact_file(register("CF-OK", person, "2025-01-01T09:00:00Z"))
        .await
        .unwrap();
    centre
        .register_contact_file(register("CF-STRANGER", stranger, "2025-01-01T09:00:00Z"))
        .await
        .unwrap();
    centre
        .register_contact_file(register("CF-LATER", person, "2099-01-01T09:00:00Z"))
        .await
        .unwrap();
    // Another centre's file of the same reference is its own (here about the stranger): it
    // neither collides with mycareer's nor stands for it in the audit below.
    journal(&h, "mypension-contact-centre")
        .await
        .register_contact_file(register("CF-OK", stranger, "2025-01-01T09:00:00Z"))
        .await
        .expect("contact-file ids are per centre");
    // Registering twice, or as an institution with no a-posteriori consultations, is refused.
    assert_eq!(
        centre
            .register_contact_file(register("CF-OK", person, ""))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        journal(&h, "cpas-liege")
            .await
            .register_contact_file(register("CF-CPAS", person, ""))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    for (i, file) in [
        "CF-OK",
        "CF-STRANGER",
        "CF-LATER",
        "CF-NEVER-REGISTERED",
        "CF-REGISTERED-LATE",
    ]
    .into_iter()
    .enumerate()
    {
        let mut envelope = dmfa_envelope(&format!("cc-{i}"), person, false);
        envelope.addressee = Some("mycareer-contact-centre".into());
        envelope.contact_file = Some(file.into());
        submit(&h, "onss", envelope).await.unwrap();
    }
    // Registered after the consultation that cited it, with an opening date before it.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    centre
        .register_contact_file(register(
            "CF-REGISTERED-LATE",
            person,
            "2025-01-01T09:00:00Z",
        ))
        .await
        .unwrap();
    let audit = journal(&h, "security-adviser")
        .await
        .audit_posteriori(AuditPosterioriRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audit.examined, 5);
    let mut found: Vec<(String, String)> = audit
        .findings
        .iter()
        .map(|f| {
            (
                f.consultation.as_ref().unwrap().contact_file.clone(),
                f.problem.clone(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("CF-LATER".to_owned(), "opened_after".to_owned()),
            (
                "CF-NEVER-REGISTERED".to_owned(),
                "contact_file_unknown".to_owned()
            ),
            (
                "CF-REGISTERED-LATE".to_owned(),
                "registered_after".to_owned()
            ),
            ("CF-STRANGER".to_owned(), "other_person".to_owned()),
        ]
    );
    assert_eq!(
        journal(&h, "onss")
            .await
            .audit_posteriori(AuditPosterioriRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn samples_are_reproducible_the_chain_verifies_and_retention_keeps_it_verifiable() {
    let h = Harness::start(&[]).await;
    for i in 0..12u16 {
        let niss = fresh_niss(90 + i);
        integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
        integrate(&h, "cpas-mons", niss, 1, "2024-01-01", "").await;
        submit(
            &h,
            "solidaris",
            a052_envelope(&format!("s-{i}"), niss, u64::from(i)),
        )
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(10), || h.received() == 24).await;
    // A delivery's entry is written after its acknowledgement: wait for all 24, so that the
    // samples below are drawn from a journal that no longer grows.
    let store = h.hub.outbox().store().unwrap().clone();
    let everything = JournalQuery::Range {
        from_ms: 0,
        to_ms: i64::MAX,
        limit: usize::MAX,
    };
    for round in 0.. {
        let entries = store.journal(everything.clone()).await.unwrap();
        let deliveries = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Delivery as i32);
        if deliveries.count() == 24 {
            break;
        }
        assert!(
            round < 500,
            "the 24 delivery entries were not journaled in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut auditor = journal(&h, "security-adviser").await;
    let sample = |seed: u64| SampleRequest {
        per_institution: 3,
        seed,
        ..Default::default()
    };
    let first = auditor
        .sample(sample(7))
        .await
        .unwrap()
        .into_inner()
        .records;
    let again = auditor
        .sample(sample(7))
        .await
        .unwrap()
        .into_inner()
        .records;
    let other = auditor
        .sample(sample(8))
        .await
        .unwrap()
        .into_inner()
        .records;
    let numbers = |r: &[JournalRecord]| r.iter().map(|e| e.number).collect::<Vec<_>>();
    assert_eq!(first.len(), 6, "3 per receiving institution");
    assert_eq!(numbers(&first), numbers(&again), "same seed, same sample");
    assert_ne!(
        numbers(&first),
        numbers(&other),
        "another seed, another sample"
    );

    let verified = auditor.verify(VerifyRequest {}).await.unwrap().into_inner();
    assert!(verified.intact, "{verified:?}");
    assert!(verified.entries > 24 * 2);

    // Eleven years later: the 5-year (20/130) entries are gone, the chain still verifies.
    let eleven_years = 11 * 31_557_600_000i64;
    let removed = store
        .expire(bcss_store::now_ms() + eleven_years, 100_000)
        .await
        .unwrap();
    assert!(removed > 0);
    let verified = auditor.verify(VerifyRequest {}).await.unwrap().into_inner();
    assert!(verified.intact, "{verified:?}");
    assert_eq!(verified.removed_by_retention, removed);
    let left = auditor
        .by_institution(ByInstitutionRequest {
            institution: "cpas-liege".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(left.is_empty(), "entries past retention are gone: {left:?}");
}
