//! A real hub and a real simulated network on loopback, for end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bcss_domain::Niss;
use bcss_gateway::pki::Pki;
use bcss_gateway::startup;
use bcss_policy::{Policy, Settings};
use bcss_proto::flows::v1 as f;
use bcss_proto::hub::v1::directory_client::DirectoryClient;
use bcss_proto::hub::v1::gateway_client::GatewayClient;
use bcss_proto::hub::v1::{Envelope, IntegrateRequest, SubmitReply};
use bcss_sim::envelope::{FlowMessage, envelope};
use bcss_sim::institution::Network;
use bcss_sim::payloads;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use time::macros::date;
use tonic::transport::Channel;

pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// A free port below the kernel's ephemeral range (32768 and up on Linux), and the listener
/// that holds it until the caller lets go, just before the server that is to listen there
/// starts. No socket bound to port 0 and no client connection can be given it, even while its
/// server is down between two runs (a port picked by binding port 0 can be).
pub fn port_below_ephemeral_range() -> (u16, std::net::TcpListener) {
    // Each call of a process starts elsewhere: a port one test lets go of between two runs of
    // its server is not the first another test of the same process tries.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = (std::process::id() as u16).wrapping_add(call.wrapping_mul(101));
    (0..12_000u16)
        .map(|i| 20_000 + (seed.wrapping_add(i.wrapping_mul(7919))) % 12_000)
        .find_map(|port| {
            std::net::TcpListener::bind(("127.0.0.1", port))
                .ok()
                .map(|held| (port, held))
        })
        .expect("a free port between 20000 and 32000")
}

/// A running hub with its network.
pub struct Harness {
    pub hub: Arc<bcss_gateway::Hub>,
    pub network: Network,
    pub address: std::net::SocketAddr,
    pub pki: Pki,
    pub hub_name: String,
    /// The configuration folder the hub reads (a copy when `extra` files were given).
    pub config_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dirs: Vec<tempfile::TempDir>,
}

/// How long Submit waits for a first delivery in tests that keep the shipped hub.toml's other
/// settings.
pub const TEST_REPLY_WAIT_MS: u64 = 30_000;

/// Extra deliberation files to add to a copy of the shipped configuration.
pub type ExtraFiles<'a> = &'a [(&'a str, &'a str)];

impl Harness {
    /// Starts the hub on the shipped configuration (plus `extra` files), a fresh PKI, and one
    /// reference institution per institution, all on free loopback ports.
    pub async fn start(extra: ExtraFiles<'_>) -> Harness {
        Harness::start_with(extra, |_| {}).await
    }

    /// [`Harness::start`], with a last word on the settings (after the harness chose its
    /// folders).
    pub async fn start_with(extra: ExtraFiles<'_>, adjust: impl FnOnce(&mut Settings)) -> Harness {
        let pki_dir = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        // Always a copy: a test that edits its configuration (a reload) never touches the
        // shipped one.
        let config_dir = {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(&shipped_config(), dir.path());
            for (name, text) in extra {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            let path = dir.path().to_owned();
            dirs.push(dir);
            path
        };
        let mut settings = Settings::load(&config_dir.join("hub.toml")).unwrap();
        // Submit waits up to 30 s (not the shipped 2 s) for a first delivery, so that a test
        // reading a reply's Delivered, or an inbox right after Submit, is made slower by a
        // loaded machine, not wrong. A test that brings its own hub.toml gets it as written.
        if !extra.iter().any(|(name, _)| *name == "hub.toml") {
            settings.delivery.reply_wait_ms = TEST_REPLY_WAIT_MS;
        }
        settings.tls.pki = pki_dir.path().to_owned();
        settings.logs.person_key = pki_dir.path().join("person-log.key");
        settings.storage.data = pki_dir.path().join("data");
        adjust(&mut settings);
        dirs.push(pki_dir);
        let policy = Policy::load(&settings).unwrap();
        let pki = startup::ensure_pki(&settings, &policy).unwrap();
        let network = Network::start(&policy, &pki, &settings.tls.hub_name, true)
            .await
            .unwrap();
        let assembled =
            startup::assemble_settings(settings.clone(), network.endpoint_overrides()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bcss_gateway::server::run(
            assembled.hub.clone(),
            listener,
            assembled.options,
            async {
                let _ = stopped.await;
            },
        ));
        Harness {
            hub: assembled.hub,
            network,
            address,
            pki,
            hub_name: settings.tls.hub_name,
            config_dir,
            stop: Some(stop),
            _dirs: dirs,
        }
    }

    pub async fn channel(&self, party: &str) -> Channel {
        bcss_sim::client::connect(self.address, &self.pki, party, &self.hub_name)
            .await
            .unwrap()
    }

    pub async fn gateway(&self, party: &str) -> GatewayClient<Channel> {
        GatewayClient::new(self.channel(party).await)
    }

    pub async fn directory(&self, party: &str) -> DirectoryClient<Channel> {
        DirectoryClient::new(self.channel(party).await)
    }

    /// Starts the server's shutdown, as SIGTERM does for `bcss-hub serve`.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Total deliveries received by all institutions.
    pub fn received(&self) -> usize {
        self.network.received()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Copies a folder tree into `to` (created if missing).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
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

/// A NISS no row of the sample directory uses (BIS numbers with the month + 20, which the generator never makes).
pub fn fresh_niss(n: u16) -> Niss {
    Niss::compose(62_707, 998 - n, true).unwrap()
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `Track` of `ticket` as `party`, which must succeed.
pub async fn track(h: &Harness, party: &str, ticket: &str) -> bcss_proto::hub::v1::TrackReply {
    h.gateway(party)
        .await
        .track(bcss_proto::hub::v1::TrackRequest {
            ticket: ticket.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Declares an integration as `institution`, which must create it.
pub async fn integrate(
    h: &Harness,
    institution: &str,
    niss: Niss,
    quality: u32,
    start: &str,
    end: &str,
) {
    let reply = declare(h, institution, niss, quality, start, end).await;
    assert!(reply.created);
}

/// Declares an integration as `institution`; what the hub answered (created, updated or
/// neither).
pub async fn declare(
    h: &Harness,
    institution: &str,
    niss: Niss,
    quality: u32,
    start: &str,
    end: &str,
) -> bcss_proto::hub::v1::IntegrateReply {
    h.directory(institution)
        .await
        .integrate(IntegrateRequest {
            niss: niss.digits(),
            quality_code: quality,
            period: Some(f::Period {
                start: start.into(),
                end: end.into(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The integrations of the person `institution` may see (its own), first page.
pub async fn integrations_of(
    h: &Harness,
    institution: &str,
    niss: Niss,
) -> Vec<bcss_proto::hub::v1::IntegrationEntry> {
    h.directory(institution)
        .await
        .list(bcss_proto::hub::v1::ListRequest {
            niss: Some(niss.digits()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .integrations
}

/// Withdraws every integration `institution` holds of the person; how many there were.
pub async fn remove_all(h: &Harness, institution: &str, niss: Niss) -> u32 {
    h.directory(institution)
        .await
        .remove(bcss_proto::hub::v1::RemoveRequest {
            niss: niss.digits(),
            quality_code: None,
            start: None,
        })
        .await
        .unwrap()
        .into_inner()
        .removed
}

pub async fn submit(
    h: &Harness,
    sender: &str,
    envelope: Envelope,
) -> Result<SubmitReply, tonic::Status> {
    h.gateway(sender)
        .await
        .submit(envelope)
        .await
        .map(|r| r.into_inner())
}

pub fn a052_envelope(id: &str, niss: Niss, seed: u64) -> Envelope {
    let window = (date!(2025 - 01 - 01), date!(2025 - 06 - 30));
    envelope(
        id,
        niss,
        window.0,
        Some(window.1),
        FlowMessage::A052(payloads::a052(&mut rng(seed), niss, "100", window)),
    )
}

/// Sends `body` as the raw request message of `method` (e.g. "/bcss.hub.v1.Gateway/Submit"),
/// byte for byte, and decodes the reply as `R`: for requests no well-behaved client can build.
pub async fn raw_call<R: prost::Message + Default + Send + 'static>(
    channel: Channel,
    method: &'static str,
    body: Vec<u8>,
) -> Result<R, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(method),
        RawCodec::<R>(std::marker::PhantomData),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Encodes a `Vec<u8>` as it is; decodes replies with prost.
struct RawCodec<R>(std::marker::PhantomData<R>);

impl<R: prost::Message + Default + Send + 'static> tonic::codec::Codec for RawCodec<R> {
    type Encode = Vec<u8>;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = ReplyDecoder<R>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ReplyDecoder<R> {
        ReplyDecoder(std::marker::PhantomData)
    }
}

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

struct ReplyDecoder<R>(std::marker::PhantomData<R>);

impl<R: prost::Message + Default> tonic::codec::Decoder for ReplyDecoder<R> {
    type Item = R;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<R>, tonic::Status> {
        R::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// Waits until `condition` holds, polling, for at most `limit`; panics if it never does.
pub async fn eventually(limit: std::time::Duration, condition: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until the outbox has nothing left to deliver, then checks that no institution got a
/// delivery twice: "nothing new was delivered" then holds for what might have come late too.
pub async fn settled_without_duplicates(h: &Harness) {
    eventually(std::time::Duration::from_secs(30), || {
        h.hub.outbox().pending() == 0
    })
    .await;
    assert_eq!(h.network.duplicates(), 0, "a delivery was made twice");
}

/// A DmfA for one quarter of 2025 about `niss`, public-sector blocks when `public`.
pub fn dmfa_envelope(id: &str, niss: Niss, public: bool) -> Envelope {
    let message = payloads::dmfa(&mut rng(7), niss, 2025, 2, public);
    envelope(
        id,
        niss,
        date!(2025 - 04 - 01),
        Some(date!(2025 - 06 - 30)),
        FlowMessage::Dmfa(message),
    )
}
