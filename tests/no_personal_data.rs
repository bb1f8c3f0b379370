//! No personal data in logs or errors: an end-to-end run with known personal values (a NISS, a
//! name, an amount) captures every log line of every component at TRACE level and every error
//! message returned (of submissions, the directory, consultations, a recipient that turns
//! deliveries away in words quoting the person, and the dead letter that leaves), and fails if
//! any of those values appears. The person appears in logs only as the keyed hash.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bcss_proto::hub::v1::admin_client::AdminClient;
use bcss_proto::hub::v1::{
    ConsultRequest, Envelope, Flow, IntegrateRequest, ListDeadLettersRequest, ListRequest,
    TrackRequest,
};
use bcss_sim::envelope::{FlowMessage, envelope};
use common::{Harness, a052_envelope, eventually, fresh_niss, integrate, rng, submit};
use time::macros::date;

/// Everything written by the tracing subscriber of this test process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const LAST_NAME: &str = "Vandervelde-Zwanepoel";
const FIRST_NAME: &str = "Griselda";
const AMOUNT_CENTS: i64 = 987_654_321;

#[tokio::test]
async fn an_end_to_end_run_logs_no_personal_data() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    // Three attempts, close together, make a dead letter of a delivery that keeps failing.
    let h = Harness::start_with(&[], |settings| {
        settings.delivery.max_attempts = 3;
        settings.delivery.backoff_initial_ms = 20;
        settings.delivery.backoff_max_ms = 50;
    })
    .await;
    let niss = fresh_niss(60);
    let other = fresh_niss(61);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    integrate(&h, "onva-inspection", niss, 1, "2024-01-01", "").await;

    let mut errors: Vec<String> = Vec::new();
    // An A052 with a known amount, delivered.
    let mut a052 = a052_envelope("pd-1", niss, 1);
    if let Some(bcss_proto::hub::v1::envelope::Payload::A052(payload)) = &mut a052.payload {
        for risk in &mut payload.risks {
            for payment in &mut risk.payments {
                payment.amount_cents = AMOUNT_CENTS;
            }
        }
    }
    let reply = submit(&h, "solidaris", a052.clone()).await.unwrap();
    eventually(Duration::from_secs(10), || h.received() >= 1).await;
    // A Dimona with a known name.
    let mut dimona = bcss_sim::payloads::dimona(&mut rng(5), niss, date!(2025 - 05 - 02), None);
    if let Some(worker) = &mut dimona.worker {
        worker.last_name = LAST_NAME.into();
        worker.first_name = FIRST_NAME.into();
    }
    let dimona_envelope = envelope(
        "pd-2",
        niss,
        date!(2025 - 05 - 02),
        None,
        FlowMessage::Dimona(dimona),
    );
    // Accepted and delivered, so that the name goes through the delivery path too.
    let delivered_before = h.received();
    submit(&h, "onss", dimona_envelope.clone()).await.unwrap();
    eventually(Duration::from_secs(10), || h.received() > delivered_before).await;

    // A recipient whose gateway turns deliveries away in words quoting the person: the hub
    // keeps the status's code only, in its logs, Track's last error and the dead letter.
    let words = format!(
        "refused: {} {FIRST_NAME} {LAST_NAME} owes {AMOUNT_CENTS}",
        niss.digits()
    );
    let cpas = h.network.inbox("cpas-liege");
    cpas.refuse_each(Some(tonic::Status::failed_precondition(words)));
    let turned_away = submit(&h, "solidaris", a052_envelope("pd-6", niss, 2))
        .await
        .unwrap()
        .ticket;
    let mut gateway = h.gateway("solidaris").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let reply = gateway
            .track(TrackRequest {
                ticket: turned_away.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let outcome = reply.hops[0].recipients[0].clone();
        if outcome.decision == bcss_proto::hub::v1::Decision::DeadLetter as i32 {
            break outcome;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(outcome.attempts, 3);
    assert!(
        outcome.last_error.contains("FailedPrecondition"),
        "the code is kept: {}",
        outcome.last_error
    );
    errors.push(outcome.last_error);
    let letters = AdminClient::new(h.channel("hub-operations").await)
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(letters.len(), 1);
    for letter in letters {
        errors.extend([letter.last_error, letter.reason]);
    }
    cpas.refuse_each(None);

    // Bad input of every kind, each of which could tempt an error message to quote a value.
    let mut mismatch = a052.clone();
    mismatch.message_id = "pd-3".into();
    mismatch.niss = other.digits();
    let mut bad_check_digits = a052.clone();
    bad_check_digits.message_id = "pd-4".into();
    bad_check_digits.niss = format!("{}00", &niss.digits()[..9]);
    let mut duplicate = a052.clone();
    duplicate.period.as_mut().unwrap().end = "2025-06-29".into();
    let mut bad_date = a052.clone();
    bad_date.message_id = "pd-5".into();
    bad_date.period.as_mut().unwrap().start = niss.digits();
    let bad: Vec<(&str, Envelope)> = vec![
        ("NISS of another person", mismatch),
        ("bad check digits", bad_check_digits),
        ("duplicate id", duplicate),
        ("a NISS as a date", bad_date),
    ];
    for (case, envelope) in bad {
        let status = submit(&h, "solidaris", envelope).await.expect_err(case);
        errors.push(status.message().to_owned());
    }
    let mut directory = h.directory("cpas-liege").await;
    for request in [
        IntegrateRequest {
            niss: niss.digits(),
            quality_code: 999,
            period: None,
        },
        IntegrateRequest {
            niss: format!("{}00", &niss.digits()[..9]),
            quality_code: 1,
            period: None,
        },
    ] {
        errors.push(
            directory
                .integrate(request)
                .await
                .unwrap_err()
                .message()
                .to_owned(),
        );
    }
    let listed = directory
        .list(ListRequest {
            niss: Some(niss.digits()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.into_inner().integrations.len(), 1);
    let mut gateway = h.gateway("solidaris").await;
    gateway.explain(a052.clone()).await.unwrap();
    gateway
        .track(TrackRequest {
            ticket: reply.ticket.clone(),
        })
        .await
        .unwrap();

    // Consultations: answered, refused (an unnamed agent, no contact file), bad input.
    let consult = |agent: &str, contact_file: Option<&str>, niss: String| ConsultRequest {
        flow: Flow::Dmfa as i32,
        niss,
        period: Some(bcss_proto::flows::v1::Period {
            start: "2025-04-01".into(),
            end: "2025-06-30".into(),
        }),
        purpose: "holiday-pay-control".into(),
        agent_id: agent.into(),
        contact_file: contact_file.map(str::to_owned),
    };
    let mut onva = h.gateway("onva-inspection").await;
    onva.consult(consult("onva-insp-01", None, niss.digits()))
        .await
        .unwrap();
    for (party, request) in [
        (
            "onva-inspection",
            consult("onva-insp-13", None, niss.digits()),
        ),
        (
            "onva-inspection",
            consult("onva-insp-01", None, other.digits()),
        ),
        (
            "onva-inspection",
            consult("onva-insp-01", None, format!("{}00", &niss.digits()[..9])),
        ),
        (
            "mycareer-contact-centre",
            consult("agent-9", None, niss.digits()),
        ),
    ] {
        let status = h
            .gateway(party)
            .await
            .consult(request)
            .await
            .expect_err(party);
        errors.push(status.message().to_owned());
    }

    // A source that answers about another person: refused, naming neither person.
    h.network.source("onss").set_wrong_person(true);
    let status = onva
        .consult(consult("onva-insp-01", None, niss.digits()))
        .await
        .expect_err("an answer about another person");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    errors.push(status.message().to_owned());
    h.network.source("onss").set_wrong_person(false);

    let person = h.hub.person_key().person(niss).to_string();
    // Stop the hub (its workers and delivery streams log as they end) before reading the logs.
    drop(h);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("Message accepted.") && logs.contains(&reply.ticket),
        "the capture works: the acceptance was logged"
    );
    assert!(
        logs.contains("Consultation answered.") && logs.contains("Consultation refused."),
        "the consultations were logged"
    );
    assert!(
        logs.contains(&format!("person={person}")),
        "the person is referred to by its keyed hash"
    );

    let formatted = {
        let d = niss.digits();
        format!(
            "{}.{}.{}-{}.{}",
            &d[0..2],
            &d[2..4],
            &d[4..6],
            &d[6..9],
            &d[9..11]
        )
    };
    let euros = (AMOUNT_CENTS / 100, AMOUNT_CENTS % 100);
    let forbidden = [
        // The NISS's first nine digits: the invalid NISS made from it (other check digits)
        // and the NISS itself, in any form.
        niss.digits()[..9].to_owned(),
        formatted,
        other.digits()[..9].to_owned(),
        LAST_NAME.to_owned(),
        FIRST_NAME.to_owned(),
        AMOUNT_CENTS.to_string(),
        format!("{}.{:02}", euros.0, euros.1),
        format!("{},{:02}", euros.0, euros.1),
    ];
    for value in &forbidden {
        assert!(
            !logs.contains(value.as_str()),
            "a personal value appears in the logs ({} bytes captured)",
            logs.len()
        );
        for error in &errors {
            assert!(
                !error.contains(value.as_str()),
                "a personal value appears in an error: {error}"
            );
        }
    }
    assert!(
        logs.lines().count() > 100,
        "TRACE captured the libraries too"
    );
}
