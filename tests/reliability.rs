//! Durable delivery end to end: a recipient's outage, a recipient that falls silent, dead
//! letters and their replay, a full disk. (Crashes of the hub itself: tests/crash.rs.)

mod common;

use std::time::Duration;

use bcss_domain::Niss;
use bcss_proto::hub::v1::admin_client::AdminClient;
use bcss_proto::hub::v1::{DeadLetterRequest, Decision, ListDeadLettersRequest, TrackRequest};
use common::{Harness, a052_envelope, eventually, fresh_niss, integrate, submit};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The shipped hub.toml with quick retries, for tests that wait for them.
fn quick_retries(max_attempts: u32, circuit_failures: u32) -> String {
    let shipped = std::fs::read_to_string(common::shipped_config().join("hub.toml")).unwrap();
    let mut text = String::new();
    for line in shipped.lines() {
        let replaced = match line.split('=').next().map(str::trim) {
            Some("reply_wait_ms") => "reply_wait_ms = 500".to_owned(),
            Some("max_attempts") => format!("max_attempts = {max_attempts}"),
            Some("backoff_initial_ms") => "backoff_initial_ms = 20".to_owned(),
            Some("backoff_max_ms") => "backoff_max_ms = 200".to_owned(),
            Some("circuit_failures") => format!("circuit_failures = {circuit_failures}"),
            Some("circuit_open_ms") => "circuit_open_ms = 100".to_owned(),
            _ => line.to_owned(),
        };
        text.push_str(&replaced);
        text.push('\n');
    }
    text
}

fn addressed(id: &str, niss: Niss, to: &str, seed: u64) -> bcss_proto::hub::v1::Envelope {
    let mut envelope = a052_envelope(id, niss, seed);
    envelope.addressee = Some(to.into());
    envelope
}

async fn track(h: &Harness, party: &str, ticket: &str) -> bcss_proto::hub::v1::RecipientOutcome {
    let reply = h
        .gateway(party)
        .await
        .track(TrackRequest {
            ticket: ticket.into(),
        })
        .await
        .unwrap()
        .into_inner();
    reply.hops[0].recipients[0].clone()
}

#[tokio::test]
async fn a_recipient_down_gets_everything_in_order_once_back_and_others_are_not_slowed() {
    // The circuit stays closed (this test is not about it: an open circuit's window doubles
    // with the outage's length, which would make the wait after the restart depend on how
    // slow the machine was); cpas-ghent's deliveries must each be acknowledged within the
    // reply's 1 s wait while cpas-liege is down (each submission to cpas-liege waits that
    // long, so it is not longer).
    let h = Harness::start_with(&[("hub.toml", &quick_retries(1000, 1000))], |settings| {
        settings.delivery.reply_wait_ms = 1000;
    })
    .await;
    let (first, second, other) = (fresh_niss(70), fresh_niss(71), fresh_niss(72));
    for niss in [first, second] {
        integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    }
    integrate(&h, "cpas-ghent", other, 1, "2024-01-01", "").await;
    h.network.stop_institution("cpas-liege").await;

    let mut sent = Vec::new();
    for i in 0..20u64 {
        let niss = if i % 2 == 0 { first } else { second };
        let reply = submit(
            &h,
            "solidaris",
            addressed(&format!("down-{i}"), niss, "cpas-liege", i),
        )
        .await
        .expect("accepted while the recipient is down");
        let decision = reply.recipients[0].decision;
        assert!(
            decision == Decision::Accepted as i32 || decision == Decision::DeliveryFailed as i32,
            "recorded, not delivered: {decision}"
        );
        sent.push((niss, reply.ticket));
        // The other recipient is served at once all the while.
        let reply = submit(
            &h,
            "solidaris",
            addressed(&format!("up-{i}"), other, "cpas-ghent", i),
        )
        .await
        .unwrap();
        assert_eq!(
            reply.recipients[0].decision,
            Decision::Delivered as i32,
            "cpas-ghent is not slowed by cpas-liege's outage"
        );
    }
    let outcome = track(&h, "solidaris", &sent[0].1).await;
    assert_eq!(outcome.decision, Decision::DeliveryFailed as i32);
    assert!(
        outcome.attempts >= 1 && !outcome.last_error.is_empty(),
        "{outcome:?}"
    );
    assert_eq!(h.network.inbox("cpas-liege").len(), 0);

    h.network.start_institution("cpas-liege").await.unwrap();
    eventually(Duration::from_secs(30), || {
        h.network.inbox("cpas-liege").len() == sent.len()
    })
    .await;
    // Each person's messages arrived in the order they were accepted.
    let received = h.network.inbox("cpas-liege").deliveries();
    for niss in [first, second] {
        let expected: Vec<&str> = sent
            .iter()
            .filter(|(n, _)| *n == niss)
            .map(|(_, t)| t.as_str())
            .collect();
        let arrived: Vec<&str> = received
            .iter()
            .filter(|d| d.niss == niss.digits())
            .map(|d| d.ticket.as_str())
            .collect();
        assert_eq!(arrived, expected, "in order per person");
    }
    assert!(tracked_until(&h, &sent[0].1, Decision::Delivered).await);
    assert_eq!(h.network.inbox("cpas-ghent").len(), 20);
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_becomes_a_dead_letter_and_is_replayed() {
    let h = Harness::start(&[("hub.toml", &quick_retries(3, 100))]).await;
    let niss = fresh_niss(73);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    h.network.stop_institution("cpas-liege").await;
    let ticket = submit(&h, "solidaris", addressed("dead-1", niss, "cpas-liege", 1))
        .await
        .unwrap()
        .ticket;
    assert!(
        tracked_until(&h, &ticket, Decision::DeadLetter).await,
        "three failed attempts make a dead letter"
    );
    assert_eq!(track(&h, "solidaris", &ticket).await.attempts, 3);

    let mut admin = AdminClient::new(h.channel("hub-operations").await);
    let listed = admin
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(listed.len(), 1);
    let letter = &listed[0];
    assert_eq!(
        (
            letter.recipient.as_str(),
            letter.ticket.as_str(),
            letter.attempts
        ),
        ("cpas-liege", ticket.as_str(), 3)
    );
    assert!(letter.reason.contains("too many attempts") && letter.payload_bytes > 0);
    let shown = admin
        .show_dead_letter(DeadLetterRequest { seq: letter.seq })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.delivery_id, letter.delivery_id);
    // Institutions do not handle dead letters.
    let status = AdminClient::new(h.channel("cpas-liege").await)
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    h.network.start_institution("cpas-liege").await.unwrap();
    let replayed = admin
        .replay_dead_letter(DeadLetterRequest { seq: letter.seq })
        .await
        .unwrap()
        .into_inner();
    assert!(replayed.requeued);
    eventually(Duration::from_secs(10), || {
        h.network.inbox("cpas-liege").len() == 1
    })
    .await;
    assert_eq!(
        h.network.inbox("cpas-liege").deliveries()[0].delivery_id,
        letter.delivery_id,
        "the replay keeps the delivery id"
    );
    assert!(
        tracked_until(&h, &ticket, Decision::Delivered).await,
        "Track follows the replayed letter to its delivery"
    );
    assert!(
        admin
            .list_dead_letters(ListDeadLettersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .dead_letters
            .is_empty()
    );
    // Until its delivery is recorded the letter is a pending delivery, which a replay leaves
    // alone; then its row is gone, and a replay finds nothing to replay.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match admin
            .replay_dead_letter(DeadLetterRequest { seq: letter.seq })
            .await
        {
            Ok(again) => assert!(
                !again.into_inner().requeued,
                "a delivered letter is not replayed twice"
            ),
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_retry_or_replay_is_checked_again_and_goes_nowhere_once_the_integration_is_gone() {
    // The circuit stays closed and attempts never run out: only the check can stop delivery.
    let h = Harness::start_with(&[("hub.toml", &quick_retries(1000, 1000))], |settings| {
        settings.delivery.reply_wait_ms = 500;
    })
    .await;
    let niss = fresh_niss(74);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    h.network.stop_institution("cpas-liege").await;
    let ticket = submit(&h, "solidaris", addressed("gone-1", niss, "cpas-liege", 1))
        .await
        .unwrap()
        .ticket;
    assert!(tracked_until(&h, &ticket, Decision::DeliveryFailed).await);

    // The CPAS closes its file on the person while its endpoint is down.
    assert_eq!(common::remove_all(&h, "cpas-liege", niss).await, 1);
    h.network.start_institution("cpas-liege").await.unwrap();
    assert!(
        tracked_until(&h, &ticket, Decision::DeadLetter).await,
        "the retry is refused by the check, not delivered"
    );
    let outcome = track(&h, "solidaris", &ticket).await;
    assert!(
        outcome
            .last_error
            .contains("no longer admitted under 20/130: not_integrated"),
        "{outcome:?}"
    );
    let mut admin = AdminClient::new(h.channel("hub-operations").await);
    let letter = admin
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters
        .into_iter()
        .find(|letter| letter.ticket == ticket)
        .expect("listed as a dead letter");
    assert!(letter.reason.contains("not_integrated"), "{letter:?}");

    // Replayed while the person is still not integrated: checked again, withdrawn again.
    assert!(
        replayed(&mut admin, letter.seq).await,
        "the dead letter is replayed"
    );
    assert!(tracked_until(&h, &ticket, Decision::DeadLetter).await);
    assert_eq!(
        h.network.inbox("cpas-liege").len(),
        0,
        "nothing reached the CPAS"
    );

    // Integrated again, the replay delivers.
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    assert!(replayed(&mut admin, letter.seq).await);
    eventually(Duration::from_secs(10), || {
        h.network.inbox("cpas-liege").len() == 1
    })
    .await;
    assert!(tracked_until(&h, &ticket, Decision::Delivered).await);
}

/// Replays dead letter `seq` once the store has it as one (a withdrawal or a give-up is
/// recorded a moment after Track shows it): true once requeued, false if not within 10 s.
async fn replayed(admin: &mut AdminClient<tonic::transport::Channel>, seq: u64) -> bool {
    for _ in 0..200 {
        let requeued = admin
            .replay_dead_letter(DeadLetterRequest { seq })
            .await
            .unwrap()
            .into_inner()
            .requeued;
        if requeued {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Tracks `ticket` as solidaris until it shows `decision` (true), for at most 10 s (false).
async fn tracked_until(h: &Harness, ticket: &str, decision: Decision) -> bool {
    for _ in 0..500 {
        if track(h, "solidaris", ticket).await.decision == decision as i32 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A small tmpfs mounted for the test's life (the hub's data folder on a disk that fills up).
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::create_dir_all(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_submissions_keeps_what_was_accepted_and_recovers() {
    let Some(disk) = SmallDisk::mount("4m") else {
        // Mounting needs root (the CI machine and the development machines have it). Skipping
        // is a choice made by name, never a silent pass.
        if std::env::var_os("BCSS_TEST_SKIP_FULL_DISK").is_some() {
            eprintln!("SKIPPED (BCSS_TEST_SKIP_FULL_DISK is set): no tmpfs mounted");
            return;
        }
        panic!(
            "this test mounts a 4 MiB tmpfs and needs root for it; run the tests as root, or set \
             BCSS_TEST_SKIP_FULL_DISK=1 to skip it knowingly"
        );
    };
    let data = disk.path.clone();
    let h = Harness::start_with(&[], |settings| settings.storage.data = data.clone()).await;
    let niss = fresh_niss(74);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    // Fill the disk, leaving little room for the store to grow.
    let filler = disk.path.join("filler");
    let free = fs_free_bytes(&disk.path);
    std::fs::write(&filler, vec![0u8; free.saturating_sub(96 * 1024) as usize]).unwrap();

    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..2000u64 {
        match submit(
            &h,
            "solidaris",
            addressed(&format!("full-{i}"), niss, "cpas-liege", i),
        )
        .await
        {
            Ok(reply) => accepted.push(reply.ticket),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let status = refusal.expect("the disk filled up");
    println!(
        "full disk: {} accepted before the store ran out of room, then: {}",
        accepted.len(),
        status.message()
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("cannot record messages"),
        "{status:?}"
    );
    assert!(
        !accepted.is_empty(),
        "some were accepted before the disk filled"
    );
    // Health tells load balancers the Gateway cannot take messages now.
    let mut health = HealthClient::new(h.channel("cpas-liege").await);
    let gateway_status = |health: &mut HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "bcss.hub.v1.Gateway".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    let mut serving = ServingStatus::Unknown;
    for _ in 0..100 {
        serving = gateway_status(&mut health).await;
        if serving == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(serving, ServingStatus::NotServing, "unwritable store");
    // Still full: still refused, and nothing of the refused message is delivered.
    let status = submit(
        &h,
        "solidaris",
        addressed("full-again", niss, "cpas-liege", 1),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // A sender that sends a message again while its first call is still being committed is
    // not told "accepted" when that commit fails: 20 messages, each sent twice at once.
    let gateway = h.gateway("solidaris").await;
    let twice = (0..20u64).map(|i| {
        let envelope = addressed(&format!("twice-{i}"), niss, "cpas-liege", i);
        let (mut first, mut second) = (gateway.clone(), gateway.clone());
        async move {
            let (a, b) = tokio::join!(first.submit(envelope.clone()), second.submit(envelope));
            [a.map(drop), b.map(drop)]
        }
    });
    for (i, answers) in futures_util::future::join_all(twice)
        .await
        .iter()
        .enumerate()
    {
        for answer in answers {
            assert_eq!(
                answer.as_ref().map_err(|status| status.code()),
                Err(Code::Unavailable),
                "twice-{i}: {answer:?}"
            );
        }
    }

    // Room again: health says so by itself (its probe writes), before any message arrives.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..200 {
        serving = gateway_status(&mut health).await;
        if serving == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        serving,
        ServingStatus::Serving,
        "writable again, no submission needed"
    );
    let reply = submit(
        &h,
        "solidaris",
        addressed("after-space", niss, "cpas-liege", 2),
    )
    .await
    .expect("accepted again once there is room");
    accepted.push(reply.ticket);
    eventually(Duration::from_secs(20), || {
        h.network.inbox("cpas-liege").len() == accepted.len()
    })
    .await;
    let tickets: Vec<String> = h
        .network
        .inbox("cpas-liege")
        .deliveries()
        .into_iter()
        .map(|d| d.ticket)
        .collect();
    assert_eq!(
        tickets, accepted,
        "every accepted message, in order, nothing else"
    );
    assert!(tracked_until(&h, &accepted[0], Decision::Delivered).await);
}

fn fs_free_bytes(path: &std::path::Path) -> u64 {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_full_outbox_refuses_with_a_retry_hint_and_accepts_again_once_drained() {
    let h = Harness::start_with(&[("hub.toml", &quick_retries(1000, 5))], |settings| {
        settings.delivery.max_pending = 3;
    })
    .await;
    let niss = fresh_niss(75);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    h.network.stop_institution("cpas-liege").await;
    for i in 0..3 {
        submit(
            &h,
            "solidaris",
            addressed(&format!("bp-{i}"), niss, "cpas-liege", i),
        )
        .await
        .expect("room for three");
    }
    let status = submit(&h, "solidaris", addressed("bp-3", niss, "cpas-liege", 3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("delivery.max_pending = 3"),
        "{status:?}"
    );
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    h.network.start_institution("cpas-liege").await.unwrap();
    eventually(Duration::from_secs(20), || {
        h.network.inbox("cpas-liege").len() == 3
    })
    .await;
    eventually(Duration::from_secs(5), || h.hub.outbox().pending() == 0).await;
    submit(&h, "solidaris", addressed("bp-3", niss, "cpas-liege", 3))
        .await
        .expect("room again once delivered");
}

/// A recipient address that accepts connections and then says nothing (a wedged peer: the TLS
/// handshake never completes) must not wedge the hub's connection to that recipient for good:
/// after a delivery deadline the hub connects afresh, and delivers as soon as the institution
/// answers on that address again, while the silent connections are still open.
#[tokio::test]
async fn a_connection_that_never_answers_is_replaced_after_the_delivery_deadline() {
    let h = Harness::start_with(&[("hub.toml", &quick_retries(1000, 1000))], |settings| {
        settings.delivery.timeout_ms = 300;
        // One connection, so that a second one can only mean the first was given up.
        settings.delivery.connections_per_recipient = 1;
    })
    .await;
    let niss = fresh_niss(75);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    h.network.stop_institution("cpas-liege").await;
    let silent = tokio::net::TcpListener::bind(h.network.addresses["cpas-liege"])
        .await
        .unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holding = held.clone();
    let accepting = tokio::spawn(async move {
        while let Ok((connection, _)) = silent.accept().await {
            holding.lock().unwrap().push(connection);
        }
    });

    let reply = submit(
        &h,
        "solidaris",
        addressed("silent-1", niss, "cpas-liege", 1),
    )
    .await
    .expect("accepted while the recipient is silent");
    assert_ne!(reply.recipients[0].decision, Decision::Delivered as i32);
    // A second connection means the first, never answered, was given up.
    eventually(Duration::from_secs(10), || held.lock().unwrap().len() >= 2).await;

    accepting.abort();
    let _ = accepting.await;
    h.network.start_institution("cpas-liege").await.unwrap();
    eventually(Duration::from_secs(15), || {
        h.network.inbox("cpas-liege").len() == 1
    })
    .await;
    // The outcome is set once the hub has the acknowledgement, a moment after the inbox has it.
    assert!(
        tracked_until(&h, &reply.ticket, Decision::Delivered).await,
        "Track says delivered"
    );
    // The silent connections were never closed by their end: the hub moved on by itself.
    assert!(held.lock().unwrap().len() >= 2);
}

/// Deliveries travel as messages of one `DeliverStream` call per connection; an institution
/// that answers `DeliverStream` UNIMPLEMENTED gets `Deliver` calls instead, at once and losing
/// nothing; `delivery.stream = false` makes `Deliver` calls from the start. Each case: every
/// message answered delivered in `Submit`'s reply, and received once.
#[tokio::test]
async fn deliveries_go_over_a_stream_or_as_calls_to_institutions_without_one() {
    // (delivery.stream, the institution refuses streams, deliveries expected over a stream)
    let cases = [
        (true, false, true),
        (true, true, false),
        (false, false, false),
    ];
    for (stream, refuses, over_stream) in cases {
        let h = Harness::start_with(&[], |settings| settings.delivery.stream = stream).await;
        let inbox = h.network.inbox("cpas-liege");
        if refuses {
            inbox.refuse_streams();
        }
        let persons = [fresh_niss(80), fresh_niss(81)];
        for niss in persons {
            integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
        }
        let mut gateway = h.gateway("solidaris").await;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..24u64 {
            let niss = persons[(i % 2) as usize];
            let envelope = addressed(&format!("stream-{i}"), niss, "cpas-liege", i);
            let mut gateway = gateway.clone();
            calls.spawn(async move { gateway.submit(envelope).await.map(|r| r.into_inner()) });
        }
        while let Some(reply) = calls.join_next().await {
            let reply = reply.unwrap().expect("accepted");
            assert_eq!(
                reply.recipients[0].decision,
                Decision::Delivered as i32,
                "case stream={stream} refuses={refuses}: {:?}",
                reply.recipients[0]
            );
        }
        assert_eq!(inbox.len(), 24, "case stream={stream} refuses={refuses}");
        assert_eq!(
            inbox.duplicates(),
            0,
            "case stream={stream} refuses={refuses}"
        );
        assert_eq!(
            inbox.streamed(),
            if over_stream { 24 } else { 0 },
            "case stream={stream} refuses={refuses}"
        );
        // Still delivered after the first ones (a second round on the same connections).
        let reply = gateway
            .submit(addressed("stream-last", persons[0], "cpas-liege", 99))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.recipients[0].decision, Decision::Delivered as i32);
        assert_eq!(inbox.len(), 25);
    }
}

/// An institution that takes a delivery on its stream and does not acknowledge it within the
/// delivery deadline: the attempt fails with the deadline named (the stream is dropped, not
/// waited on for good), and once the institution answers in time again the retry, on a new
/// stream, delivers it once.
#[tokio::test]
async fn a_stream_that_does_not_acknowledge_in_time_is_replaced() {
    let h = Harness::start_with(&[("hub.toml", &quick_retries(1000, 1000))], |settings| {
        settings.delivery.timeout_ms = 1000;
        settings.delivery.reply_wait_ms = 4000;
        settings.delivery.connections_per_recipient = 1;
    })
    .await;
    let niss = fresh_niss(85);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let inbox = h.network.inbox("cpas-liege");
    inbox.delay_each(Duration::from_secs(6));
    let reply = submit(
        &h,
        "solidaris",
        addressed("late-ack", niss, "cpas-liege", 1),
    )
    .await
    .unwrap();
    let outcome = &reply.recipients[0];
    assert_eq!(
        outcome.decision,
        Decision::DeliveryFailed as i32,
        "{outcome:?}"
    );
    assert_eq!(outcome.last_error, "no answer within 1000 ms");
    assert_eq!(inbox.len(), 0, "not recorded: its stream was dropped");

    inbox.delay_each(Duration::ZERO);
    eventually(Duration::from_secs(10), || inbox.len() == 1).await;
    // The inbox records a delivery before it acknowledges it: Delivered follows shortly.
    assert!(tracked_until(&h, &reply.ticket, Decision::Delivered).await);
    assert_eq!(inbox.streamed(), 1, "delivered over a stream");
    assert_eq!(inbox.duplicates(), 0);
}

/// A sender that gives up on its calls (a `grpc-timeout` shorter than the store's commit) must
/// not strand what the hub was in the middle of: every message is delivered once, the outbox's
/// reservations are all released, and resubmitting under the same message ids answers each
/// with its ticket. (Before submissions ran in their own task, a call dropped while waiting on
/// the commit left its ticket on disk undelivered until a restart and its reservation held.)
#[tokio::test]
async fn calls_the_sender_gives_up_on_are_still_recorded_and_delivered_once() {
    let h = Harness::start_with(&[], |settings| settings.delivery.max_pending = 8).await;
    let niss = fresh_niss(76);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    const MESSAGES: u64 = 30;
    let mut gateway = h.gateway("solidaris").await;
    let mut cut_short = 0;
    for i in 0..MESSAGES {
        let mut request =
            tonic::Request::new(addressed(&format!("gone-{i}"), niss, "cpas-liege", i));
        request.set_timeout(Duration::from_micros(500));
        if gateway.submit(request).await.is_err() {
            cut_short += 1;
        }
    }
    assert!(
        cut_short > 0,
        "no call was cut short: the test proves nothing"
    );
    // What the hub took in goes out, and its reservations with it (a call cut short before the
    // hub read it is simply not there).
    eventually(Duration::from_secs(10), || h.hub.outbox().pending() == 0).await;
    let delivered_before = h.network.inbox("cpas-liege").len();
    // The sender retries each message under its id; each is answered with a ticket (its first
    // one if the hub had it) and delivered, none twice.
    for i in 0..MESSAGES {
        submit(
            &h,
            "solidaris",
            addressed(&format!("gone-{i}"), niss, "cpas-liege", i),
        )
        .await
        .unwrap_or_else(|status| panic!("gone-{i}: {status:?}"));
    }
    eventually(Duration::from_secs(20), || {
        h.network.inbox("cpas-liege").len() as u64 == MESSAGES
    })
    .await;
    eventually(Duration::from_secs(5), || h.hub.outbox().pending() == 0).await;
    assert_eq!(h.network.inbox("cpas-liege").duplicates(), 0);
    eprintln!("{cut_short} calls cut short, {delivered_before} delivered before the retries");
}

/// A delivery that waits long behind another (one lane: the other is retried first) is checked
/// again at its first attempt: the check made when it was accepted no longer stands.
#[tokio::test]
async fn a_first_attempt_that_waited_long_is_checked_again() {
    let h = Harness::start_with(&[("hub.toml", &quick_retries(1000, 1000))], |settings| {
        settings.delivery.reply_wait_ms = 100;
        settings.delivery.lanes_per_recipient = 1;
    })
    .await;
    let (ahead, behind) = (fresh_niss(75), fresh_niss(76));
    for niss in [ahead, behind] {
        integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    }
    h.network.stop_institution("cpas-liege").await;
    let first = submit(&h, "solidaris", addressed("ahead", ahead, "cpas-liege", 1))
        .await
        .unwrap()
        .ticket;
    assert!(tracked_until(&h, &first, Decision::DeliveryFailed).await);
    let queued = submit(
        &h,
        "solidaris",
        addressed("behind", behind, "cpas-liege", 2),
    )
    .await
    .unwrap()
    .ticket;
    // Longer than the check at acceptance stands for; then the CPAS closes its file on the
    // second person, and its endpoint comes back.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        track(&h, "solidaris", &queued).await.attempts,
        0,
        "never tried"
    );
    assert_eq!(common::remove_all(&h, "cpas-liege", behind).await, 1);
    h.network.start_institution("cpas-liege").await.unwrap();
    assert!(tracked_until(&h, &first, Decision::Delivered).await);
    assert!(
        tracked_until(&h, &queued, Decision::DeadLetter).await,
        "the late first attempt is refused by the check, not delivered"
    );
    let outcome = track(&h, "solidaris", &queued).await;
    assert!(outcome.last_error.contains("not_integrated"), "{outcome:?}");
    let received = h.network.inbox("cpas-liege").deliveries();
    assert_eq!(received.len(), 1, "only the first person's message");
    assert_eq!(received[0].ticket, first);
}
