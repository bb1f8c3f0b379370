//! The reference institution server: a real `bcss.institution.v1.Institution` gRPC server over
//! mutual TLS that accepts deliveries only from the hub (one `Deliver` call each, or as messages
//! of a `DeliverStream` call, acknowledged by id), drops duplicates by delivery id, and
//! keeps what it received so it can be printed or checked; and, as a *source*, answers the
//! consultations the hub forwards (`Answer`) from generated Dimona and DmfA data. The simulated
//! network is made of these. For load baselines it also runs without TLS ([`serve_plain`]) and
//! counting only ([`Inbox::counting`]). Deliveries arrive as `DeliveryView`s (the payload as
//! bytes), decoded into `Delivery`s only when they are kept.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bcss_gateway::pki::Pki;
use bcss_gateway::server::accepted;
use bcss_policy::Policy;
use bcss_proto::hub::view::v1::DeliveryView;
use bcss_proto::institution::v1::{AnswerReply, AnswerRequest, Delivery, DeliveryAck};
use bcss_proto::institution_receiving::institution_server::{Institution, InstitutionServer};
use futures_util::{Stream, StreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// Delivery ids in one generation of an inbox's memory of what it has seen.
#[cfg(not(test))]
const SEEN_GENERATION: usize = 1 << 20;
#[cfg(test)]
const SEEN_GENERATION: usize = 4;

/// What one institution received.
#[derive(Clone, Debug, Default)]
pub struct Inbox {
    inner: Arc<Mutex<InboxState>>,
    /// Counting only: the deliveries themselves are not kept (load runs).
    counting: bool,
    /// What each delivery waits for before it is recorded (tests).
    gate: Arc<Mutex<Gate>>,
}

/// What each delivery waits for before it is recorded.
#[derive(Debug, Default)]
struct Gate {
    /// Acknowledged only once this many wait together, or after the duration.
    together: Option<(Arc<tokio::sync::Barrier>, std::time::Duration)>,
    /// Recorded only after this long (a slow institution).
    delay: std::time::Duration,
    /// Each delivery answered with this status instead of being recorded (an institution whose
    /// own gateway turns deliveries away, in words of its own).
    refusal: Option<Status>,
}

#[derive(Debug, Default)]
struct InboxState {
    deliveries: Vec<Delivery>,
    /// Delivery ids seen, in two generations of at most [`SEEN_GENERATION`] each: a duplicate
    /// (a delivery sent again after a lost acknowledgement) comes within seconds, so the last
    /// million ids or more are enough, and a long load run does not grow the set without end
    /// (nor stall deliveries while it rehashes millions of ids).
    seen: HashSet<String>,
    seen_before: HashSet<String>,
    duplicates: u64,
    received: usize,
    /// Deliveries (duplicates included) that came as messages of a `DeliverStream` call.
    streamed: usize,
    /// Answers `DeliverStream` UNIMPLEMENTED, as an institution that implements `Deliver` only.
    refuse_streams: bool,
}

impl Inbox {
    /// An inbox that counts deliveries (duplicates still dropped by id) without keeping them.
    pub fn counting() -> Inbox {
        Inbox {
            counting: true,
            ..Inbox::default()
        }
    }

    /// From now on, holds each delivery's acknowledgement until `together` deliveries are
    /// waiting at once (or `at_most` has passed): shows whether the hub delivers concurrently.
    pub fn hold_until_together(&self, together: usize, at_most: std::time::Duration) {
        self.gate.lock().expect("inbox gate").together =
            Some((Arc::new(tokio::sync::Barrier::new(together)), at_most));
    }

    /// From now on, records (and acknowledges) each delivery only after `delay`; a delivery
    /// whose call or stream is dropped meanwhile is not recorded. Zero: at once again.
    pub fn delay_each(&self, delay: std::time::Duration) {
        self.gate.lock().expect("inbox gate").delay = delay;
    }

    /// From now on, answers each delivery with `refusal` instead of recording it (`None`:
    /// records them again). The hub must take only the status's code from it: an institution's
    /// words may quote anything.
    pub fn refuse_each(&self, refusal: Option<Status>) {
        self.gate.lock().expect("inbox gate").refusal = refusal;
    }

    /// Waits at the gate, if there is one; the refusal it answers with, if any.
    async fn pass_gate(&self) -> Result<(), Status> {
        let (together, delay, refusal) = {
            let gate = self.gate.lock().expect("inbox gate");
            (gate.together.clone(), gate.delay, gate.refusal.clone())
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some((barrier, at_most)) = together {
            let _ = tokio::time::timeout(at_most, barrier.wait()).await;
        }
        refusal.map_or(Ok(()), Err)
    }

    /// The deliveries received, duplicates excluded, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().expect("inbox lock").deliveries.clone()
    }

    /// Deliveries received, duplicates excluded (also when counting only).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("inbox lock").received
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// From now on, answers `DeliverStream` UNIMPLEMENTED (an institution that takes
    /// `Deliver` calls only).
    pub fn refuse_streams(&self) {
        self.inner.lock().expect("inbox lock").refuse_streams = true;
    }

    fn refuses_streams(&self) -> bool {
        self.inner.lock().expect("inbox lock").refuse_streams
    }

    /// Deliveries (duplicates included) that came as messages of a `DeliverStream` call.
    pub fn streamed(&self) -> usize {
        self.inner.lock().expect("inbox lock").streamed
    }

    /// Deliveries dropped because their delivery id was seen before (among the last million
    /// or more: [`SEEN_GENERATION`]).
    pub fn duplicates(&self) -> u64 {
        self.inner.lock().expect("inbox lock").duplicates
    }

    /// Passes the gate, records a delivery and says whether it was a duplicate.
    async fn receive(&self, delivery: DeliveryView, streamed: bool) -> Result<DeliveryAck, Status> {
        self.pass_gate().await?;
        let fresh = self.record(&delivery, streamed)?;
        Ok(DeliveryAck {
            duplicate: !fresh,
            delivery_id: delivery.delivery_id,
        })
    }

    /// Records a delivery; false when its id was already seen. The payload arrives as bytes
    /// and is decoded only when the delivery is kept: an inbox that counts (load runs) reads
    /// the delivery id and acknowledges, as an institution's gateway that stores what it
    /// receives before it reads it.
    fn record(&self, delivery: &DeliveryView, streamed: bool) -> Result<bool, Status> {
        // Decoded before the lock is taken: the inbox's other callers do not wait for it.
        let kept = (!self.counting).then(|| Delivery::decode(delivery.encode_to_vec().as_slice()));
        let mut state = self.inner.lock().expect("inbox lock");
        state.streamed += usize::from(streamed);
        let kept = kept.transpose().map_err(|e| {
            Status::invalid_argument(format!("the delivery's payload does not decode: {e}"))
        })?;
        if state.seen_before.contains(&delivery.delivery_id)
            || !state.seen.insert(delivery.delivery_id.clone())
        {
            state.duplicates += 1;
            return Ok(false);
        }
        if state.seen.len() >= SEEN_GENERATION {
            state.seen_before = std::mem::take(&mut state.seen);
        }
        state.received += 1;
        state.deliveries.extend(kept);
        Ok(true)
    }
}

/// One institution's `Institution` service.
#[derive(Clone, Debug)]
pub struct ReferenceInstitution {
    pub id: String,
    pub inbox: Inbox,
    /// The DNS name the hub's certificate must carry.
    pub hub_name: String,
    /// How it answers consultations as a source.
    pub source: Source,
    /// Refuse callers that are not the hub (always, over TLS; off for plain baselines, where
    /// there is no certificate to look at).
    pub require_hub: bool,
    /// Becomes true when the server begins to stop: open delivery streams end then, so the
    /// stop is not held up by them (the hub opens new ones, elsewhere or later).
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Deliveries of one `DeliverStream` being recorded at once.
pub const STREAM_IN_PROGRESS: usize = 64;

/// The acknowledgements of a `DeliverStream` call.
pub type DeliveryAcks = Pin<Box<dyn Stream<Item = Result<DeliveryAck, Status>> + Send>>;

impl ReferenceInstitution {
    pub fn new(id: impl Into<String>, inbox: Inbox, hub_name: impl Into<String>) -> Self {
        ReferenceInstitution {
            id: id.into(),
            inbox,
            hub_name: hub_name.into(),
            source: Source::default(),
            require_hub: true,
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    fn check_caller_is_hub<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let from_hub = request
            .peer_certs()
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|c| bcss_gateway::identity::dns_names(c.as_ref()).ok())
            })
            .is_some_and(|names| names.contains(&self.hub_name));
        if self.require_hub && !from_hub {
            Err(Status::permission_denied(
                "only the hub calls this endpoint",
            ))
        } else {
            Ok(())
        }
    }
}

/// A reference institution as a source of consultations: the data it holds is generated, the
/// same for the same person, flow, period and seed, and it includes every field of the flow (so
/// the hub's filtering is observable). Tests make it slow or make it misbehave.
#[derive(Clone, Debug)]
pub struct Source {
    inner: Arc<SourceState>,
}

#[derive(Debug)]
struct SourceState {
    seed: u64,
    /// Milliseconds to wait before answering (a slow source).
    delay_ms: std::sync::atomic::AtomicU64,
    /// Answer about another person than asked (a faulty source).
    wrong_person: std::sync::atomic::AtomicBool,
    /// Consultations answered.
    answered: std::sync::atomic::AtomicU64,
}

impl Default for Source {
    fn default() -> Source {
        Source {
            inner: Arc::new(SourceState {
                seed: SOURCE_SEED,
                delay_ms: Default::default(),
                wrong_person: Default::default(),
                answered: Default::default(),
            }),
        }
    }
}

/// The seed of the sample network's generated source data.
pub const SOURCE_SEED: u64 = 2026;

impl Source {
    /// Waits `delay` before every answer from now on.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.inner.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Answers about another person than asked, from now on (or not).
    pub fn set_wrong_person(&self, wrong: bool) {
        self.inner
            .wrong_person
            .store(wrong, std::sync::atomic::Ordering::Relaxed);
    }

    /// Consultations answered so far.
    pub fn answered(&self) -> u64 {
        self.inner
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The data this source holds about the question's person, flow and period; `found: false`
    /// for a flow it does not hold (A052). Errors name fields, never values.
    pub fn data(&self, question: &AnswerRequest) -> Result<AnswerReply, Status> {
        use bcss_proto::institution::v1::answer_reply::Payload;
        use rand::{RngExt, SeedableRng};
        let mut niss = bcss_domain::Niss::parse(&question.niss)
            .map_err(|e| Status::invalid_argument(format!("niss: {e}")))?;
        let period = question
            .period
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("period is required"))?;
        let day = |text: &str| {
            time::Date::parse(
                text,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .ok()
        };
        let start = day(&period.start)
            .ok_or_else(|| Status::invalid_argument("period.start is not a date"))?;
        let end = day(&period.end);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.inner.seed ^ niss.as_u64().rotate_left(17) ^ u64::from(question.flow as u32),
        );
        if self
            .inner
            .wrong_person
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            niss = crate::network::random_niss(&mut rng);
        }
        let payload = match question.flow {
            2 => {
                let quarter = (u32::from(start.month() as u8) - 1) / 3 + 1;
                let public = rng.random_bool(0.3);
                Payload::Dmfa(crate::payloads::dmfa(
                    &mut rng,
                    niss,
                    start.year().clamp(2000, 2100) as u32,
                    quarter,
                    public,
                ))
            }
            3 => Payload::Dimona(crate::payloads::dimona(&mut rng, niss, start, end)),
            _ => {
                return Ok(AnswerReply {
                    found: false,
                    payload: None,
                });
            }
        };
        Ok(AnswerReply {
            found: true,
            payload: Some(payload),
        })
    }
}

#[tonic::async_trait]
impl Institution for ReferenceInstitution {
    async fn deliver(
        &self,
        request: Request<DeliveryView>,
    ) -> Result<Response<DeliveryAck>, Status> {
        self.check_caller_is_hub(&request)?;
        Ok(Response::new(
            self.inbox.receive(request.into_inner(), false).await?,
        ))
    }

    type DeliverStreamStream = DeliveryAcks;

    /// Each delivery of the stream recorded as `Deliver` records it, up to
    /// [`STREAM_IN_PROGRESS`] at once, each acknowledged by id as soon as it is recorded.
    async fn deliver_stream(
        &self,
        request: Request<Streaming<DeliveryView>>,
    ) -> Result<Response<DeliveryAcks>, Status> {
        self.check_caller_is_hub(&request)?;
        if self.inbox.refuses_streams() {
            return Err(Status::unimplemented(
                "this institution takes deliveries with Deliver only",
            ));
        }
        let inbox = self.inbox.clone();
        let mut stopping = self.stopping.clone();
        let acks = request
            .into_inner()
            .map(move |delivery| {
                let inbox = inbox.clone();
                async move { inbox.receive(delivery?, true).await }
            })
            .buffer_unordered(STREAM_IN_PROGRESS)
            .take_until(async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn answer(
        &self,
        request: Request<AnswerRequest>,
    ) -> Result<Response<AnswerReply>, Status> {
        self.check_caller_is_hub(&request)?;
        let delay = self
            .source
            .inner
            .delay_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let reply = self.source.data(request.get_ref())?;
        self.source
            .inner
            .answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(reply))
    }
}

/// Serves one reference institution on `listener` until `shutdown`.
pub async fn serve(
    institution: ReferenceInstitution,
    listener: TcpListener,
    identity: Identity,
    ca: Certificate,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (institution, shutdown) = ending_streams_at(institution, shutdown);
    Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity).client_ca_root(ca))?
        .add_service(InstitutionServer::new(institution))
        .serve_with_incoming_shutdown(accepted(listener), shutdown)
        .await
}

/// The institution with its delivery streams ended when `shutdown` comes: a server stops only
/// once its calls have ended, and a delivery stream does not end by itself.
fn ending_streams_at(
    mut institution: ReferenceInstitution,
    shutdown: impl Future<Output = ()>,
) -> (ReferenceInstitution, impl Future<Output = ()>) {
    let (stop_streams, stopping) = tokio::sync::watch::channel(false);
    institution.stopping = stopping;
    let shutdown = async move {
        shutdown.await;
        let _ = stop_streams.send(true);
    };
    (institution, shutdown)
}

/// Serves one reference institution on `listener` over plain HTTP/2 (h2c), without TLS: the
/// direct and proxied baselines of load comparisons only.
pub async fn serve_plain(
    mut institution: ReferenceInstitution,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    institution.require_hub = false;
    let (institution, shutdown) = ending_streams_at(institution, shutdown);
    Server::builder()
        .add_service(InstitutionServer::new(institution))
        .serve_with_incoming_shutdown(accepted(listener), shutdown)
        .await
}

/// Every institution of a policy, served on loopback.
#[derive(Debug)]
pub struct Network {
    pub inboxes: HashMap<String, Inbox>,
    pub addresses: HashMap<String, SocketAddr>,
    members: HashMap<String, Member>,
}

/// One running reference institution, which can be stopped and started again on its address.
#[derive(Debug)]
struct Member {
    server: ReferenceInstitution,
    identity: Identity,
    ca: Certificate,
    running: Mutex<Option<Running>>,
    /// While stopped by [`Network::stop_institution`]: its address, bound but not listening,
    /// so that connections to it are refused and no other socket of the process is given it.
    reserved: Mutex<Option<tokio::net::TcpSocket>>,
}

#[derive(Debug)]
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    fn spawn(&self, listener: TcpListener) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = self.server.clone();
        let (identity, ca) = (self.identity.clone(), self.ca.clone());
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(error) = serve(server, listener, identity, ca, shutdown).await {
                tracing::error!(message = "Reference institution stopped.", %error);
            }
        });
        *self.running.lock().expect("member lock") = Some(Running { stop, task });
    }

    async fn stop(&self) {
        let running = self.running.lock().expect("member lock").take();
        if let Some(running) = running {
            let _ = running.stop.send(());
            // Connections in flight are cut rather than drained: an outage, not a goodbye.
            running.task.abort();
            let _ = running.task.await;
        }
    }
}

/// A TCP socket bound to `address` with `SO_REUSEADDR`, not yet listening: several may be
/// bound to one address as long as at most one listens (how a stopped institution keeps its
/// address).
fn bound_reusable(address: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    Ok(socket)
}

impl Network {
    /// Starts one reference institution per institution of `policy`. With `ephemeral`, each
    /// binds a free loopback port; otherwise its configured endpoint, falling back to a free
    /// port when that one is taken.
    pub async fn start(
        policy: &Policy,
        pki: &Pki,
        hub_name: &str,
        ephemeral: bool,
    ) -> std::io::Result<Network> {
        Network::start_with(policy, pki, hub_name, ephemeral, false).await
    }

    /// [`Network::start`]; with `counting`, the inboxes count deliveries without keeping them
    /// (load runs).
    pub async fn start_with(
        policy: &Policy,
        pki: &Pki,
        hub_name: &str,
        ephemeral: bool,
        counting: bool,
    ) -> std::io::Result<Network> {
        let ca = Certificate::from_pem(pki.ca_cert().map_err(std::io::Error::other)?);
        let mut network = Network {
            inboxes: HashMap::new(),
            addresses: HashMap::new(),
            members: HashMap::new(),
        };
        for institution in policy.institutions() {
            let listener = if ephemeral {
                TcpListener::bind("127.0.0.1:0").await?
            } else {
                match TcpListener::bind(&institution.endpoint).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(message = "Configured endpoint unavailable; using a free port.", institution = %institution.id, %error);
                        TcpListener::bind("127.0.0.1:0").await?
                    }
                }
            };
            let pair = pki.party(&institution.id).map_err(std::io::Error::other)?;
            let inbox = if counting {
                Inbox::counting()
            } else {
                Inbox::default()
            };
            network
                .addresses
                .insert(institution.id.to_string(), listener.local_addr()?);
            network
                .inboxes
                .insert(institution.id.to_string(), inbox.clone());
            let member = Member {
                server: ReferenceInstitution::new(institution.id.to_string(), inbox, hub_name),
                identity: Identity::from_pem(pair.cert, pair.key),
                ca: ca.clone(),
                running: Mutex::new(None),
                reserved: Mutex::new(None),
            };
            member.spawn(listener);
            network.members.insert(institution.id.to_string(), member);
        }
        Ok(network)
    }

    /// Stops one institution's server (an outage): its port refuses connections until
    /// [`Network::start_institution`].
    pub async fn stop_institution(&self, id: &str) {
        if let Some(member) = self.members.get(id) {
            member.stop().await;
            *member.reserved.lock().expect("member lock") = bound_reusable(self.addresses[id]).ok();
        }
    }

    /// Starts a stopped institution's server again, on the same address, with the same inbox.
    pub async fn start_institution(&self, id: &str) -> std::io::Result<()> {
        let member = &self.members[id];
        let listener = bound_reusable(self.addresses[id])?.listen(1024)?;
        member.reserved.lock().expect("member lock").take();
        member.spawn(listener);
        Ok(())
    }

    /// Points every institution of `policy` at the address its server listens on.
    pub fn apply_endpoints(&self, policy: &mut Policy) {
        self.endpoint_overrides()(policy)
    }

    /// A function pointing a policy's institutions at this network's servers, to give the hub
    /// as the policy adjustment it applies at start and at every reload.
    pub fn endpoint_overrides(&self) -> impl Fn(&mut Policy) + Send + Sync + 'static {
        let addresses = self.addresses.clone();
        move |policy: &mut Policy| {
            for (id, address) in &addresses {
                policy.set_endpoint(id, address.to_string());
            }
        }
    }

    pub fn inbox(&self, id: &str) -> &Inbox {
        &self.inboxes[id]
    }

    /// The institution as a source of consultations (to make it slow or faulty in tests).
    pub fn source(&self, id: &str) -> &Source {
        &self.members[id].server.source
    }

    /// Total deliveries received across the network (duplicates excluded).
    pub fn received(&self) -> usize {
        self.inboxes.values().map(Inbox::len).sum()
    }

    /// Deliveries dropped across the network because their delivery id was seen before.
    pub fn duplicates(&self) -> u64 {
        self.inboxes.values().map(Inbox::duplicates).sum()
    }

    /// Stops every server (without waiting for them).
    pub fn stop(&self) {
        for member in self.members.values() {
            if let Some(running) = member.running.lock().expect("member lock").take() {
                let _ = running.stop.send(());
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str) -> DeliveryView {
        DeliveryView {
            delivery_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn duplicates_are_recognised_across_a_generation_and_memory_stays_bounded() {
        let inbox = Inbox::counting();
        let fresh = |id: &str| inbox.record(&delivery(id), false).unwrap();
        for i in 0..4 {
            assert!(fresh(&format!("d{i}")), "d{i}");
        }
        // The first generation is full and kept as the one before: d0 is still known.
        assert!(!fresh("d0"));
        for i in 4..8 {
            assert!(fresh(&format!("d{i}")), "d{i}");
        }
        assert!(!fresh("d5"));
        // Two generations on, d0 is forgotten (counted again), and the memory holds two
        // generations at most.
        assert!(fresh("d0"));
        let state = inbox.inner.lock().unwrap();
        assert!(state.seen.len() + state.seen_before.len() <= 2 * SEEN_GENERATION);
        assert_eq!((state.received, state.duplicates), (9, 2));
    }
}
