//! The hostile-input table: every way in that should be closed, each expecting its specific
//! status, and nothing delivered. The table and its results are in docs/SECURITY.md.

mod common;

use std::time::Duration;

use bcss_domain::Niss;
use bcss_gateway::pki::Pki;
use bcss_proto::hub::v1::admin_client::AdminClient;
use bcss_proto::hub::v1::gateway_client::GatewayClient;
use bcss_proto::hub::v1::{
    IntegrateRequest, ReloadPolicyReply, ReloadPolicyRequest, SubmitReply, TrackRequest,
};
use common::{Harness, a052_envelope, fresh_niss, integrate, raw_call, submit};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use rcgen::{CertificateParams, Issuer, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const SUBMIT: &str = "/bcss.hub.v1.Gateway/Submit";

/// An A052 envelope for `niss` addressed to cpas-liege, encoded.
fn valid_envelope(id: &str, niss: Niss) -> Vec<u8> {
    let mut envelope = a052_envelope(id, niss, 1);
    envelope.addressee = Some("cpas-liege".into());
    envelope.encode_to_vec()
}

fn field_key(field: u32, wire_type: WireType) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(field, wire_type, &mut out);
    out
}

/// `depth` length-delimited fields, each the only content of the one around it.
fn nested(field: u32, depth: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    for _ in 0..depth {
        let mut outer = field_key(field, WireType::LengthDelimited);
        encode_varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    inner
}

fn with_a052_payload(id: &str, niss: Niss, payload: &[u8]) -> Vec<u8> {
    let mut envelope = a052_envelope(id, niss, 1);
    envelope.addressee = Some("cpas-liege".into());
    envelope.payload = None;
    let mut bytes = envelope.encode_to_vec();
    bytes.extend(field_key(10, WireType::LengthDelimited));
    encode_varint(payload.len() as u64, &mut bytes);
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test]
async fn hostile_messages_get_their_specific_status_and_deliver_nothing() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(40);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    // A first message, whose id a later row reuses with another payload.
    let first = raw_call::<SubmitReply>(
        h.channel("solidaris").await,
        SUBMIT,
        valid_envelope("dup-1", niss),
    )
    .await
    .expect("a valid message is accepted");
    assert_eq!(first.recipients.len(), 1);
    let delivered_before = h.received();
    assert_eq!(delivered_before, 1);

    let valid = valid_envelope("hostile", niss);
    let mut wrong_wire_type = field_key(1, WireType::Varint);
    encode_varint(5, &mut wrong_wire_type);
    wrong_wire_type.extend_from_slice(&valid);
    let mut past_the_end = valid.clone();
    past_the_end.extend(field_key(7, WireType::LengthDelimited));
    encode_varint(1000, &mut past_the_end);
    past_the_end.extend_from_slice(b"short");
    let mut nested_groups = valid.clone();
    for _ in 0..10_000 {
        nested_groups.extend(field_key(20, WireType::StartGroup));
    }
    // cpas-liege may not send A052s; solidaris may. The message claims to be solidaris's.
    let mut spoofed = {
        let mut envelope = a052_envelope("spoofed", niss, 2);
        envelope.addressee = Some("cpas-liege".into());
        envelope.encode_to_vec()
    };
    // A field no contract defines, naming another institution as the sender.
    spoofed.extend(field_key(15, WireType::LengthDelimited));
    encode_varint(9, &mut spoofed);
    spoofed.extend_from_slice(b"solidaris");
    let payload_twice = {
        let mut envelope = a052_envelope("twice", niss, 5);
        envelope.addressee = Some("cpas-liege".into());
        let mut bytes = envelope.encode_to_vec();
        let mut second = a052_envelope("twice", niss, 6);
        second.addressee = Some("cpas-liege".into());
        let encoded = second.encode_to_vec();
        // prost writes fields in number order, the payload (field 10) last: what follows the
        // rest of the envelope is the payload field, appended here as a second copy.
        second.payload = None;
        bytes.extend_from_slice(&encoded[second.encoded_len()..]);
        bytes
    };
    let unreachable = {
        let mut envelope = a052_envelope("unreachable", niss, 4);
        envelope.addressee = Some("onva-inspection".into());
        envelope.encode_to_vec()
    };
    let duplicate = {
        let mut envelope = a052_envelope("dup-1", niss, 99);
        envelope.addressee = Some("cpas-liege".into());
        envelope.encode_to_vec()
    };

    // (case, sender, body, expected status, words the message must contain)
    let cases: Vec<(&str, &str, Vec<u8>, Code, &str)> = vec![
        (
            "truncated protobuf",
            "solidaris",
            valid[..valid.len() / 2].to_vec(),
            Code::InvalidArgument,
            "not a well-formed protobuf",
        ),
        (
            "wrong wire type for a field",
            "solidaris",
            wrong_wire_type,
            Code::InvalidArgument,
            "wire type",
        ),
        (
            "length prefix past the end",
            "solidaris",
            past_the_end,
            Code::InvalidArgument,
            "not a well-formed protobuf",
        ),
        (
            "10,000 nested groups in the envelope",
            "solidaris",
            nested_groups,
            Code::InvalidArgument,
            "not a well-formed protobuf",
        ),
        (
            "10,000 nested messages in the payload",
            "solidaris",
            with_a052_payload("deep", niss, &nested(5, 10_000)),
            Code::InvalidArgument,
            "the A052 payload",
        ),
        (
            "garbage payload",
            "solidaris",
            with_a052_payload("garbage", niss, &[0xff; 64]),
            Code::InvalidArgument,
            "A052 payload is not a well-formed message",
        ),
        (
            "sender spoofed in the message",
            "cpas-liege",
            spoofed,
            Code::InvalidArgument,
            "a field the contract does not define",
        ),
        (
            "the payload field twice (a second copy the hub would not check)",
            "solidaris",
            payload_twice,
            Code::InvalidArgument,
            "repeats a field",
        ),
        (
            "addressee the sender may not reach",
            "solidaris",
            unreachable,
            Code::PermissionDenied,
            "may not send flow A052 to \"onva-inspection\"",
        ),
        (
            "duplicate message id, different payload",
            "solidaris",
            duplicate,
            Code::AlreadyExists,
            "already used for a different message",
        ),
        (
            "a 100 MB body",
            "solidaris",
            with_a052_payload("huge", niss, &vec![0u8; 100 * 1024 * 1024]),
            Code::ResourceExhausted,
            "limits.max_message_bytes = 1048576",
        ),
    ];
    for (case, sender, body, code, words) in cases {
        let status = raw_call::<SubmitReply>(h.channel(sender).await, SUBMIT, body)
            .await
            .expect_err(case);
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert!(
            status.message().contains(words),
            "{case}: \"{}\" does not say \"{words}\"",
            status.message()
        );
        assert!(
            !status.message().contains(&niss.digits()),
            "{case}: the error names the person"
        );
    }
    // The other services hold their requests to the same limit.
    let mut oversized = vec![0x0a]; // field 1, length-delimited: 2 MiB of it
    oversized.extend([0x80, 0x80, 0x80, 0x01]);
    oversized.resize(oversized.len() + 2 * 1024 * 1024, b'x');
    for (party, method) in [
        ("cpas-liege", "/bcss.hub.v1.Directory/Integrate"),
        ("cpas-liege", "/bcss.hub.v1.Journal/ByTicket"),
        ("hub-operations", "/bcss.hub.v1.Admin/ShowDeadLetter"),
    ] {
        let status = raw_call::<()>(h.channel(party).await, method, oversized.clone())
            .await
            .expect_err(method);
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{method}: {status:?}"
        );
        assert!(
            status.message().contains("limits.max_message_bytes"),
            "{method}: {}",
            status.message()
        );
    }
    // The hub is still up and nothing more was delivered.
    let again = raw_call::<SubmitReply>(
        h.channel("solidaris").await,
        SUBMIT,
        valid_envelope("after", niss),
    )
    .await
    .expect("the hub still serves");
    assert_eq!(again.recipients[0].decision, 2, "delivered");
    common::settled_without_duplicates(&h).await;
    assert_eq!(h.received(), delivered_before + 1);
}

/// A channel to the hub with the given client identity (or none), trusting `ca`.
async fn channel_with(
    h: &Harness,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(h.hub_name.clone());
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{}", h.address))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A certificate for `dns_names` (comma-separated) signed by the network CA, valid from/until
/// `days` from now.
fn issued_by_network_ca(pki: &Pki, dns_names: &str, from: i64, until: i64) -> (String, String) {
    let ca_key = std::fs::read_to_string(pki.dir().join("ca.key")).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&pki.ca_cert().unwrap(), KeyPair::from_pem(&ca_key).unwrap())
            .unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = dns_names.split(',').map(str::to_owned).collect();
    let mut params = CertificateParams::new(names).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(until);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A call that failed because the TLS handshake did: a transport error, never an answer from
/// the hub's services. Under TLS 1.3 the client finishes its side of the handshake before the
/// hub checks its certificate, so the refusal reaches it as a TLS alert, or, when its first
/// write meets the closed socket before it reads the alert, as a reset connection.
fn is_tls_refusal(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

#[tokio::test]
async fn a_connection_that_never_starts_its_handshake_is_closed() {
    use tokio::io::AsyncReadExt;
    let h = Harness::start(&[]).await;
    // No certificate, no ClientHello: only a socket held open.
    let mut socket = tokio::net::TcpStream::connect(h.address).await.unwrap();
    let mut byte = [0u8; 1];
    let limit = bcss_gateway::server::HANDSHAKE_TIMEOUT + Duration::from_secs(10);
    let read = tokio::time::timeout(limit, socket.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the hub still holds the connection after {limit:?}: {read:?}"
    );
}

#[tokio::test]
async fn only_certificates_of_the_network_ca_naming_a_party_get_in() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(41);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let ca = h.pki.ca_cert().unwrap();
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Pki::new(foreign_dir.path());
    foreign
        .ensure(
            &["hub.bcss.test".into()],
            &[(
                "solidaris".into(),
                "solidaris.institutions.bcss.test".into(),
            )],
        )
        .unwrap();
    let foreign_pair = foreign.party("solidaris").unwrap();
    // Refused by TLS: the handshake fails (an alert), so no call is ever carried; the client
    // sees a connection error or a transport error, never an answer.
    type PemPair = (String, String);
    let cases: Vec<(&str, Option<PemPair>, Option<Code>)> = vec![
        (
            "a certificate from another CA",
            Some((foreign_pair.cert, foreign_pair.key)),
            None,
        ),
        (
            "an expired certificate",
            Some(issued_by_network_ca(
                &h.pki,
                "solidaris.institutions.bcss.test",
                -30,
                -1,
            )),
            None,
        ),
        ("no certificate", None, None),
        (
            "a network certificate naming no institution",
            Some(issued_by_network_ca(&h.pki, "stranger.bcss.test", -1, 30)),
            Some(Code::Unauthenticated),
        ),
        (
            "a network certificate naming two institutions",
            Some(issued_by_network_ca(
                &h.pki,
                "solidaris.institutions.bcss.test,cpas-liege.institutions.bcss.test",
                -1,
                30,
            )),
            Some(Code::Unauthenticated),
        ),
    ];
    for (case, identity, expected) in cases {
        let outcome = match channel_with(&h, &ca, identity).await {
            Err(_) => None,
            Ok(channel) => {
                match raw_call::<SubmitReply>(channel, SUBMIT, valid_envelope(case, niss)).await {
                    Ok(_) => panic!("{case}: accepted"),
                    Err(status) if is_tls_refusal(&status) => None,
                    Err(status) => Some(status.code()),
                }
            }
        };
        assert_eq!(outcome, expected, "{case}");
    }
    assert_eq!(h.received(), 0, "nothing was delivered");
}

#[tokio::test]
async fn operations_need_the_role_and_institutions_keep_to_their_own() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(42);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let mut envelope = a052_envelope("roles-1", niss, 1);
    envelope.addressee = Some("cpas-liege".into());
    let ticket = submit(&h, "solidaris", envelope).await.unwrap().ticket;
    let track = |party: &'static str| {
        let ticket = ticket.clone();
        let h = &h;
        async move {
            h.gateway(party)
                .await
                .track(TrackRequest { ticket })
                .await
                .map(|_| ())
        }
    };
    let reload = |party: &'static str| {
        let h = &h;
        async move {
            AdminClient::new(h.channel(party).await)
                .reload_policy(ReloadPolicyRequest {})
                .await
                .map(|r| r.into_inner())
        }
    };
    let cases: Vec<(&str, Result<(), tonic::Status>, Code)> = vec![
        (
            "an institution reloads the policy",
            reload("cpas-liege").await.map(|_| ()),
            Code::PermissionDenied,
        ),
        (
            "an auditor reloads the policy",
            reload("security-adviser").await.map(|_| ()),
            Code::PermissionDenied,
        ),
        (
            "an operator reloads the policy",
            reload("hub-operations").await.map(|_| ()),
            Code::Ok,
        ),
        (
            "an operator submits a message",
            submit(&h, "hub-operations", a052_envelope("roles-2", niss, 2))
                .await
                .map(|_| ()),
            Code::PermissionDenied,
        ),
        (
            "an operator declares an integration",
            h.directory("hub-operations")
                .await
                .integrate(IntegrateRequest {
                    niss: niss.digits(),
                    quality_code: 1,
                    period: None,
                })
                .await
                .map(|_| ()),
            Code::PermissionDenied,
        ),
        (
            "an operator without the auditor role tracks an exchange",
            track("hub-operations").await,
            Code::PermissionDenied,
        ),
        (
            "an auditor tracks anyone's exchange",
            track("security-adviser").await,
            Code::Ok,
        ),
        (
            "the recipient tracks its exchange",
            track("cpas-liege").await,
            Code::Ok,
        ),
        (
            "an institution tracks an exchange it had no part in",
            track("onss").await,
            Code::NotFound,
        ),
    ];
    for (case, result, code) in cases {
        let got = result.err().map_or(Code::Ok, |s| s.code());
        assert_eq!(got, code, "{case}");
    }
    assert_eq!(h.received(), 1, "only the one message was delivered");
}

const HUB_TOML_LIMITS: &str = r#"
[server]
listen = "127.0.0.1:0"
[files]
institutions = "institutions.toml"
quality_codes = "quality_codes.toml"
deliberations = "deliberations"
directory = "directory.csv"
[tls]
pki = "pki"
hub_name = "hub.bcss.test"
[delivery]
timeout_ms = 5000
[limits]
max_message_bytes = 1048576
max_fan_out = 2
max_concurrent_streams = 64
rate_per_second = 500
rate_burst = 1000
"#;

#[tokio::test]
async fn a_broadcast_over_the_fan_out_limit_is_refused_whole() {
    let h = Harness::start(&[("hub.toml", HUB_TOML_LIMITS)]).await;
    let niss = fresh_niss(43);
    for cpas in ["cpas-liege", "cpas-ghent", "cpas-mons"] {
        integrate(&h, cpas, niss, 1, "2024-01-01", "").await;
    }
    let status = submit(&h, "solidaris", a052_envelope("wide", niss, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_fan_out = 2"),
        "{status:?}"
    );
    assert_eq!(h.received(), 0);
    // Addressed one by one, the same person's message goes through.
    let mut envelope = a052_envelope("narrow", niss, 1);
    envelope.addressee = Some("cpas-mons".into());
    submit(&h, "solidaris", envelope).await.unwrap();
    common::eventually(Duration::from_secs(10), || h.received() >= 1).await;
    assert_eq!(h.received(), 1);
}

#[tokio::test]
async fn a_cancelled_call_keeps_its_slot_until_its_submission_ends() {
    // One call open per connection; a submission that waits up to 6 s for its first attempt,
    // which a recipient that accepts connections and never answers keeps waiting.
    let h = Harness::start_with(&[], |settings| {
        settings.limits.max_concurrent_streams = 1;
        settings.delivery.reply_wait_ms = 6_000;
        settings.delivery.timeout_ms = 60_000;
    })
    .await;
    let niss = fresh_niss(45);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    h.network.stop_institution("cpas-liege").await;
    let silent = tokio::net::TcpListener::bind(h.network.addresses["cpas-liege"])
        .await
        .unwrap();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let channel = h.channel("solidaris").await;
    let addressed = |id: &str| {
        let mut envelope = a052_envelope(id, niss, 1);
        envelope.addressee = Some("cpas-liege".into());
        envelope
    };
    // The first call is given up on by its client (a reset) once its submission is recorded
    // and waiting for its first attempt.
    let first = tokio::spawn({
        let mut client = GatewayClient::new(channel.clone());
        let envelope = addressed("given-up");
        async move { client.submit(envelope).await }
    });
    common::eventually(Duration::from_secs(30), || h.hub.outbox().pending() == 1).await;
    assert!(!first.is_finished(), "the first call was still waiting");
    first.abort();
    let _ = first.await;
    // Its submission still runs: the connection's one slot is still taken.
    let status = GatewayClient::new(channel.clone())
        .submit(addressed("second"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("limits.max_concurrent_streams = 1"),
        "{status:?}"
    );
    // Once it ends (its reply wait is over), the connection is served again.
    let mut served = false;
    for _ in 0..300 {
        match GatewayClient::new(channel.clone())
            .submit(addressed("third"))
            .await
        {
            Ok(_) => {
                served = true;
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the slot was never given back");
    holding.abort();
}

#[tokio::test]
async fn ten_thousand_concurrent_calls_from_one_client_are_answered_and_rate_limited() {
    let h = Harness::start(&[("hub.toml", HUB_TOML_LIMITS)]).await;
    let niss = fresh_niss(44);
    integrate(&h, "cpas-liege", niss, 1, "2024-01-01", "").await;
    let channel = h.channel("solidaris").await;
    // One call first, so that the client has the hub's HTTP/2 settings before the flood.
    raw_call::<SubmitReply>(channel.clone(), SUBMIT, valid_envelope("warm-up", niss))
        .await
        .unwrap();
    let calls = (0..10_000).map(|i| {
        let channel = channel.clone();
        let body = valid_envelope(&format!("flood-{i}"), niss);
        tokio::spawn(async move { raw_call::<SubmitReply>(channel, SUBMIT, body).await })
    });
    let results = futures_util::future::join_all(calls).await;
    let mut accepted = 0;
    let mut limited = 0;
    let mut over_streams = 0;
    for result in results {
        match result.expect("no call panicked") {
            Ok(reply) => {
                // Recorded; delivered already, or on its way (one person's deliveries go one
                // at a time, in order).
                assert!([1, 2].contains(&reply.recipients[0].decision), "{reply:?}");
                accepted += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                if status.message().contains("limits.rate_per_second = 500") {
                    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
                    limited += 1;
                } else {
                    assert!(
                        status
                            .message()
                            .contains("limits.max_concurrent_streams = 64"),
                        "{status:?}"
                    );
                    over_streams += 1;
                }
            }
        }
    }
    assert_eq!(
        accepted + limited + over_streams,
        10_000,
        "every call was answered"
    );
    assert!(
        accepted > 0 && limited + over_streams > 0,
        "limits were enforced: {accepted} accepted, {limited} over the rate, {over_streams} over the streams"
    );
    common::eventually(Duration::from_secs(60), || h.received() > accepted).await;
    assert_eq!(
        h.received(),
        accepted + 1,
        "exactly the accepted ones were delivered"
    );
    // Once the allowance refills, the same client is served again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw_call::<SubmitReply>(channel, SUBMIT, valid_envelope("after-flood", niss))
        .await
        .expect("served again");
}

#[tokio::test]
async fn an_invalid_policy_reload_is_refused_and_the_running_policy_stays() {
    let shipped = std::fs::read_to_string(common::shipped_config().join("hub.toml")).unwrap();
    let h = Harness::start(&[("hub.toml", &shipped)]).await;
    let mut admin = AdminClient::new(h.channel("hub-operations").await);
    std::fs::write(
        h.config_dir.join("deliberations/zz-broken.toml"),
        "id = \"99/999\"\ntitle = \"missing everything else\"\n",
    )
    .unwrap();
    let status = admin
        .reload_policy(ReloadPolicyRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("zz-broken.toml"), "{status:?}");
    assert_eq!(h.hub.generation(), 1, "the running policy stays");
    std::fs::remove_file(h.config_dir.join("deliberations/zz-broken.toml")).unwrap();
    let reply: ReloadPolicyReply = admin
        .reload_policy(ReloadPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.generation, 2);
    assert_eq!(
        reply.deliberations as usize,
        h.hub.policy().deliberations().len()
    );
}

/// An institution that declares period after period for one person is stopped at
/// `limits.integrations_per_person`: the refusal names the limit, adds nothing, and the held
/// rows can still be closed; other institutions are not affected.
#[tokio::test]
async fn integrations_of_one_person_stop_at_the_limit() {
    let h = Harness::start_with(&[], |settings| {
        settings.limits.integrations_per_person = 3;
    })
    .await;
    let niss = fresh_niss(46);
    for year in 2021..2024 {
        integrate(&h, "cpas-liege", niss, 1, &format!("{year}-01-01"), "").await;
    }
    let status = h
        .directory("cpas-liege")
        .await
        .integrate(bcss_proto::hub::v1::IntegrateRequest {
            niss: niss.digits(),
            quality_code: 1,
            period: Some(bcss_proto::flows::v1::Period {
                start: "2024-01-01".into(),
                end: String::new(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(
            "already holds 3 integrations of this person (limits.integrations_per_person = 3)"
        ),
        "{status:?}"
    );
    assert!(!status.message().contains(&niss.digits()), "{status:?}");
    assert_eq!(
        common::integrations_of(&h, "cpas-liege", niss).await.len(),
        3,
        "nothing was added"
    );
    // Closing a held one is still allowed, and another institution has its own allowance.
    let closed = common::declare(&h, "cpas-liege", niss, 1, "2023-01-01", "2023-12-31").await;
    assert!(closed.updated, "{closed:?}");
    integrate(&h, "cpas-ghent", niss, 1, "2024-01-01", "").await;
}

/// A broadcast's candidates each see their own outcome when they track it, never the others':
/// which other institutions were candidates would tell who has the person integrated. The
/// sender and an auditor see every candidate.
#[tokio::test]
async fn a_broadcasts_candidates_track_their_own_outcome_only() {
    let h = Harness::start(&[]).await;
    let niss = fresh_niss(47);
    let candidates = ["cpas-liege", "cpas-ghent", "cpas-mons"];
    for cpas in candidates {
        integrate(&h, cpas, niss, 1, "2024-01-01", "").await;
    }
    let ticket = submit(&h, "solidaris", a052_envelope("broadcast", niss, 1))
        .await
        .unwrap()
        .ticket;
    let mut everyone: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
    everyone.sort();
    // (who tracks, the candidates it sees)
    let mut table: Vec<(&str, Vec<String>)> = vec![
        ("solidaris", everyone.clone()),
        ("security-adviser", everyone),
    ];
    table.extend(candidates.map(|c| (c, vec![c.to_owned()])));
    for (party, expected) in table {
        let reply = common::track(&h, party, &ticket).await;
        assert_eq!(reply.hops.len(), 1, "{party}");
        let mut seen: Vec<String> = reply.hops[0]
            .recipients
            .iter()
            .map(|r| r.institution.clone())
            .collect();
        seen.sort();
        assert_eq!(seen, expected, "{party}");
    }
}
