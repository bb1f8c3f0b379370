//! End to end: an institution keeps its integrations current. Declaring an end for an open
//! integration (same quality code, same start) updates it, so that messages about later
//! periods are refused while those within it are still delivered, and the run-time snapshot
//! holds the updated row; withdrawing one period by its start leaves the institution's other
//! periods under the same code in place.

mod common;

use bcss_domain::Niss;
use bcss_proto::hub::v1::{Decision, IntegrateReply, RefusalReason, RemoveRequest};
use bcss_sim::envelope::{FlowMessage, envelope};
use bcss_sim::payloads;
use common::{Harness, fresh_niss, integrate, rng, submit};
use time::Date;
use time::macros::date;
use tonic::Code;

const CPAS: &str = "cpas-liege";
/// Aid applicant: a quality code 20/130 accepts for A052.
const AID_APPLICANT: u32 = 1;

/// An A052 from a health-insurance fund to [`CPAS`] about `from..=to`; the decision for it.
async fn a052_decision(h: &Harness, id: &str, niss: Niss, from: Date, to: Date) -> (i32, i32) {
    let message = payloads::a052(&mut rng(id.len() as u64), niss, "100", (from, to));
    let mut envelope = envelope(id, niss, from, Some(to), FlowMessage::A052(message));
    envelope.addressee = Some(CPAS.into());
    let reply = submit(h, "mc", envelope).await.unwrap();
    assert_eq!(reply.recipients.len(), 1, "{reply:?}");
    let outcome = &reply.recipients[0];
    assert_eq!(outcome.institution, CPAS);
    (outcome.decision, outcome.reason)
}

const DELIVERED: (i32, i32) = (
    Decision::Delivered as i32,
    RefusalReason::Unspecified as i32,
);
const OUTSIDE: (i32, i32) = (
    Decision::Refused as i32,
    RefusalReason::PeriodOutsideIntegration as i32,
);

async fn declare(h: &Harness, niss: Niss, start: &str, end: &str) -> IntegrateReply {
    common::declare(h, CPAS, niss, AID_APPLICANT, start, end).await
}

/// The caller's integrations of the person, as (start, end).
async fn periods(h: &Harness, niss: Niss) -> Vec<(String, String)> {
    let mut periods: Vec<(String, String)> = common::integrations_of(h, CPAS, niss)
        .await
        .into_iter()
        .map(|entry| {
            let period = entry.period.unwrap();
            (period.start, period.end)
        })
        .collect();
    periods.sort();
    periods
}

fn pair(start: &str, end: &str) -> (String, String) {
    (start.to_owned(), end.to_owned())
}

#[tokio::test]
async fn closing_an_open_integration_stops_later_deliveries_and_one_period_can_be_withdrawn() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(40);
    integrate(&h, CPAS, niss, AID_APPLICANT, "2023-01-01", "").await;
    let first_half_2025 = (date!(2025 - 01 - 01), date!(2025 - 06 - 30));
    let first_quarter_2024 = (date!(2024 - 01 - 01), date!(2024 - 03 - 31));
    assert_eq!(
        a052_decision(&h, "open-2025", niss, first_half_2025.0, first_half_2025.1).await,
        DELIVERED,
        "open: a later period is delivered"
    );

    // The run-time snapshot, taken now, then again after the update.
    let folder = tempfile::tempdir().unwrap();
    let target = folder.path().join("directory.snapshot");
    let snapshots = bcss_gateway::snapshot::Snapshots::new(h.hub.clone(), target.clone());
    assert!(snapshots.save_if_changed().unwrap().is_some());

    // The CPAS closes its file: same code, same start, now an end.
    let reply = declare(&h, niss, "2023-01-01", "2024-06-30").await;
    assert_eq!(
        (reply.created, reply.updated),
        (false, true),
        "an update, not a second integration"
    );
    assert_eq!(periods(&h, niss).await, [pair("2023-01-01", "2024-06-30")]);
    assert_eq!(
        a052_decision(
            &h,
            "closed-2025",
            niss,
            first_half_2025.0,
            first_half_2025.1
        )
        .await,
        OUTSIDE,
        "closed: a period after the end is refused"
    );
    assert_eq!(
        a052_decision(
            &h,
            "closed-2024",
            niss,
            first_quarter_2024.0,
            first_quarter_2024.1
        )
        .await,
        DELIVERED,
        "closed: a period within it is still delivered"
    );
    // Declaring it again as it is now changes nothing.
    let reply = declare(&h, niss, "2023-01-01", "2024-06-30").await;
    assert_eq!((reply.created, reply.updated), (false, false), "idempotent");

    // The update is a change the snapshot writer sees, and the snapshot holds the closed row
    // only; an idempotent declaration is no change.
    assert!(snapshots.save_if_changed().unwrap().is_some());
    assert!(snapshots.save_if_changed().unwrap().is_none());
    let saved = bcss_gateway::snapshot::load(&target, &h.hub.policy()).unwrap();
    let rows = saved.integrations(niss);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].period.end, Some(date!(2024 - 06 - 30)));

    // An earlier period under the same code; then the 2023 one is withdrawn by its start.
    integrate(&h, CPAS, niss, AID_APPLICANT, "2019-01-01", "2019-12-31").await;
    let bad = h
        .directory(CPAS)
        .await
        .remove(RemoveRequest {
            niss: niss.digits(),
            quality_code: Some(AID_APPLICANT),
            start: Some(niss.digits()),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("start"), "{}", bad.message());
    assert!(!bad.message().contains(&niss.digits()), "{}", bad.message());
    let removed = h
        .directory(CPAS)
        .await
        .remove(RemoveRequest {
            niss: niss.digits(),
            quality_code: Some(AID_APPLICANT),
            start: Some("2023-01-01".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 1);
    assert_eq!(
        periods(&h, niss).await,
        [pair("2019-01-01", "2019-12-31")],
        "the other period under the code stays"
    );
    assert_eq!(
        a052_decision(
            &h,
            "withdrawn-2024",
            niss,
            first_quarter_2024.0,
            first_quarter_2024.1
        )
        .await,
        OUTSIDE,
        "the withdrawn period no longer passes"
    );
    assert_eq!(
        a052_decision(
            &h,
            "kept-2019",
            niss,
            date!(2019 - 03 - 01),
            date!(2019 - 05 - 31)
        )
        .await,
        DELIVERED,
        "the period that stayed still passes"
    );
}
