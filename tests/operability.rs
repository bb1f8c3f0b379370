//! Operability: gRPC health per service, server reflection, and live policy reloads, as
//! standard tools and operators use them (the Prometheus metrics are in tests/metrics.rs).

mod common;

use std::time::Duration;

use common::Harness;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_reports_each_service_and_reflection_lists_them() {
    let h = Harness::start(&[]).await;
    let mut health = HealthClient::new(h.channel("cpas-liege").await);
    for service in bcss_gateway::server::SERVICES {
        let status = status_reaches(&mut health, service, ServingStatus::Serving).await;
        assert_eq!(status, ServingStatus::Serving, "service \"{service}\"");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(h.channel("cpas-liege").await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("a list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "bcss.hub.v1.Gateway",
        "bcss.hub.v1.Directory",
        "bcss.hub.v1.Admin",
        "bcss.hub.v1.Journal",
        "bcss.institution.v1.Institution",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

/// The status `service` reaches within two seconds (or the last one read).
async fn status_reaches(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    wanted: ServingStatus,
) -> ServingStatus {
    let mut status = ServingStatus::Unknown;
    for _ in 0..100 {
        status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    status
}

/// On shutdown (SIGTERM for `bcss-hub serve`) health says NOT_SERVING for every service at
/// once, while the listener still takes connections and calls for `server.drain_notice_ms`, so
/// that a load balancer polling health moves traffic away first; then the listener closes.
#[tokio::test]
async fn shutdown_is_announced_by_health_before_the_listener_closes() {
    let mut h = Harness::start_with(&[], |s| s.server.drain_notice_ms = 5_000).await;
    let mut health = HealthClient::new(h.channel("cpas-liege").await);
    let serving = status_reaches(&mut health, "", ServingStatus::Serving).await;
    assert_eq!(serving, ServingStatus::Serving);
    h.begin_shutdown();
    for service in bcss_gateway::server::SERVICES {
        let status = status_reaches(&mut health, service, ServingStatus::NotServing).await;
        assert_eq!(status, ServingStatus::NotServing, "service \"{service}\"");
    }
    // During the notice a new connection is still taken, and answered.
    let mut late = HealthClient::new(h.channel("cpas-liege").await);
    let status = status_reaches(&mut late, "", ServingStatus::NotServing).await;
    assert_eq!(status, ServingStatus::NotServing);
    // Then the listener closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let connected =
            bcss_sim::client::connect(h.address, &h.pki, "cpas-liege", &h.hub_name).await;
        if connected.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener still takes connections 30 s after the shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A live reload under load: four clients submit without pause while an operator reloads the
/// policy by RPC again and again, with a broken configuration refused in between. No
/// submission fails or is decided differently because of it, and the generation counts only
/// the reloads that took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_under_load_fails_no_submission() {
    use bcss_proto::hub::v1::ReloadPolicyRequest;
    use bcss_proto::hub::v1::admin_client::AdminClient;

    const CLIENTS: u16 = 4;
    const MESSAGES: usize = 60;
    let shipped = std::fs::read_to_string(common::shipped_config().join("hub.toml")).unwrap();
    let h = std::sync::Arc::new(Harness::start(&[("hub.toml", &shipped)]).await);
    let persons: Vec<_> = (0..CLIENTS).map(|i| common::fresh_niss(70 + i)).collect();
    for person in &persons {
        common::integrate(&h, "cpas-liege", *person, 1, "2024-01-01", "").await;
    }
    let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(CLIENTS as usize));
    let mut clients = Vec::new();
    for (number, person) in persons.iter().copied().enumerate() {
        let (h, running) = (h.clone(), running.clone());
        clients.push(tokio::spawn(async move {
            let mut gateway = h.gateway("solidaris").await;
            let mut answers = Vec::new();
            for n in 0..MESSAGES {
                let envelope = common::a052_envelope(&format!("reload-{number}-{n}"), person, 1);
                answers.push(gateway.submit(envelope).await.map(|r| r.into_inner()));
            }
            running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            answers
        }));
    }
    let mut admin = AdminClient::new(h.channel("hub-operations").await);
    let broken = h.config_dir.join("deliberations/zz-broken.toml");
    let (mut taken, mut refused, mut under_load) = (0u64, 0u64, 0u64);
    // Reloads go on until the clients are done and at least three took and one was refused.
    loop {
        let clients_running = running.load(std::sync::atomic::Ordering::SeqCst) > 0;
        if !clients_running && taken >= 3 && refused >= 1 {
            break;
        }
        under_load += u64::from(clients_running);
        if (taken + refused) % 3 == 2 {
            std::fs::write(&broken, "id = \"99/999\"\n").unwrap();
            let status = admin
                .reload_policy(ReloadPolicyRequest {})
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            std::fs::remove_file(&broken).unwrap();
            refused += 1;
        } else {
            admin.reload_policy(ReloadPolicyRequest {}).await.unwrap();
            taken += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut delivered = 0;
    for client in clients {
        for answer in client.await.unwrap() {
            let reply = answer.expect("no submission fails during reloads");
            let admitted: Vec<_> = reply
                .recipients
                .iter()
                .filter(|r| !r.delivery_id.is_empty())
                .collect();
            assert_eq!(admitted.len(), 1, "decided as before: {reply:?}");
            assert_eq!(admitted[0].institution, "cpas-liege");
            delivered += 1;
        }
    }
    assert!(
        under_load >= 2,
        "{under_load} reloads began while clients were submitting"
    );
    assert_eq!(h.hub.generation(), 1 + taken, "only the valid reloads took");
    common::eventually(Duration::from_secs(30), || h.received() >= delivered).await;
    assert_eq!(h.received(), delivered);
}

/// A reload that re-points an institution's certificate name cuts that certificate off (the
/// way to do so while the hub runs), on a `SubmitStream` already open too: its next envelope is
/// answered `UNAUTHENTICATED` and nothing of it is delivered.
#[tokio::test]
async fn a_reload_that_cuts_a_certificate_off_stops_its_open_stream() {
    use bcss_proto::hub::v1::submit_stream_reply::Result as Answer;
    let h = Harness::start(&[]).await;
    assert_ne!(
        h.config_dir,
        common::shipped_config(),
        "the harness's own copy is edited"
    );
    let niss = common::fresh_niss(77);
    common::integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let addressed = |id: &str| {
        let mut envelope = common::a052_envelope(id, niss, 1);
        envelope.addressee = Some("cpas-liege".into());
        envelope
    };
    let (envelopes, sent) = tokio::sync::mpsc::channel(4);
    let mut replies = h
        .gateway("solidaris")
        .await
        .submit_stream(tokio_stream::wrappers::ReceiverStream::new(sent))
        .await
        .unwrap()
        .into_inner();
    envelopes.send(addressed("cut-1")).await.unwrap();
    let first = replies.message().await.unwrap().unwrap();
    assert!(matches!(first.result, Some(Answer::Reply(_))), "{first:?}");
    common::eventually(Duration::from_secs(10), || h.received() == 1).await;

    let institutions = h.config_dir.join("institutions.toml");
    let text = std::fs::read_to_string(&institutions).unwrap();
    let retired = text.replacen(
        "id = \"solidaris\"\n",
        "id = \"solidaris\"\ncertificate_name = \"retired.institutions.bcss.test\"\n",
        1,
    );
    assert_ne!(retired, text);
    std::fs::write(&institutions, retired).unwrap();
    h.hub.reload().await.unwrap();

    envelopes.send(addressed("cut-2")).await.unwrap();
    let second = replies.message().await.unwrap().unwrap();
    match &second.result {
        Some(Answer::Error(error)) => {
            assert_eq!(error.code, tonic::Code::Unauthenticated as i32, "{error:?}")
        }
        other => panic!("the cut-off certificate's envelope was answered {other:?}"),
    }
    // Nothing of it was accepted: nothing left to deliver, and nothing more delivered.
    common::settled_without_duplicates(&h).await;
    assert_eq!(
        h.received(),
        1,
        "nothing of the second envelope is delivered"
    );
}

/// A reload that re-points a recipient's certificate name is honoured by the next delivery: the
/// connections made under the old name are let go, and a server whose certificate does not carry
/// the new name is not delivered to.
#[tokio::test]
async fn a_reload_that_renames_a_recipients_certificate_checks_its_server_against_the_new_name() {
    let h = Harness::start(&[]).await;
    let niss = common::fresh_niss(78);
    common::integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let addressed = |id: &str| {
        let mut envelope = common::a052_envelope(id, niss, 1);
        envelope.addressee = Some("cpas-liege".into());
        envelope
    };
    let first = common::submit(&h, "solidaris", addressed("renamed-1"))
        .await
        .unwrap();
    assert_eq!(
        first.recipients[0].decision,
        bcss_proto::hub::v1::Decision::Delivered as i32
    );

    let institutions = h.config_dir.join("institutions.toml");
    let text = std::fs::read_to_string(&institutions).unwrap();
    let renamed = text.replacen(
        "id = \"cpas-liege\"\n",
        "id = \"cpas-liege\"\ncertificate_name = \"renamed.institutions.bcss.test\"\n",
        1,
    );
    assert_ne!(renamed, text);
    std::fs::write(&institutions, renamed).unwrap();
    h.hub.reload().await.unwrap();

    let second = common::submit(&h, "solidaris", addressed("renamed-2"))
        .await
        .unwrap();
    assert_ne!(
        second.recipients[0].decision,
        bcss_proto::hub::v1::Decision::Delivered as i32,
        "a server without the new name is not delivered to"
    );
    // Tried again (a retry makes a new connection, checked against the new name too) and
    // still not delivered.
    common::eventually(Duration::from_secs(30), || {
        h.hub
            .ledger()
            .get(&second.ticket)
            .is_some_and(|record| record.outcomes.lock().unwrap()[0].attempts >= 2)
    })
    .await;
    assert_eq!(h.received(), 1, "only the delivery made before the rename");
}
