//! Delivery of filtered messages to institutions, over HTTP/2 connections kept per institution
//! and verified with TLS.
//!
//! A small pool of lazily connected channels per institution endpoint
//! (`delivery.connections_per_recipient`), used in turn by the deliveries to it: one HTTP/2
//! connection is driven by one task at each end, so a single one serialises a busy recipient.
//! On each connection the deliveries travel as messages of one long-lived
//! `Institution.DeliverStream` call ([`DeliveryStream`]), acknowledged by delivery id: no HTTP/2
//! stream, headers or trailers per delivery. `delivery.stream = false`, or an institution that
//! answers the stream UNIMPLEMENTED, gets one `Institution.Deliver` call per delivery instead.
//! Deliveries are sent as stored ([`StoredDelivery`]), never decoded here.
//!
//! The hub presents its own certificate (institutions verify they are called by the hub) and
//! verifies the institution's certificate against the network CA and its configured name.
//! The TLS handshake has the delivery deadline too (tonic bounds only the TCP connect unless
//! told): a peer that accepts a connection and falls silent fails the connection, and the
//! next call connects afresh instead of waiting on it for good.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bcss_policy::Institution;
use bcss_proto::hub::view::v1::AnswerReplyView;
use bcss_proto::institution::v1::{AnswerRequest, DeliveryAck};
use bcss_proto::institution_view::institution_client::InstitutionClient;
use bcss_proto::stored::StoredDelivery;
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::telemetry;

/// How the hub authenticates to institutions and verifies them.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca: Certificate,
    pub identity: Identity,
}

/// Delivers to institutions.
#[derive(Debug)]
pub struct Deliverer {
    tls: Option<ClientTls>,
    timeout: Duration,
    /// How long a source may take to answer a consultation (`delivery.consult_timeout_ms`).
    consult_timeout: Duration,
    /// Connections kept per institution endpoint.
    connections: usize,
    /// Deliveries over `DeliverStream` (`delivery.stream`).
    stream: bool,
    /// Per institution id: the endpoint the channels were made for, and the channels.
    channels: DashMap<Arc<str>, Pool, foldhash::fast::RandomState>,
}

/// The connections to one endpoint, each with its delivery stream, and the turn.
#[derive(Debug)]
struct Pool {
    endpoint: String,
    /// The name the institution's server certificate must carry (TLS only).
    certificate_name: String,
    links: Box<[Link]>,
    next: AtomicUsize,
    /// The institution answered `DeliverStream` UNIMPLEMENTED: `Deliver` calls from now on.
    unary_only: Arc<AtomicBool>,
}

/// One HTTP/2 connection and the delivery stream on it (started on first use).
#[derive(Debug)]
struct Link {
    channel: Channel,
    stream: std::sync::OnceLock<DeliveryStream>,
}

impl Pool {
    /// Whether this pool reaches `institution` as the policy now describes it.
    fn serves(&self, institution: &Institution) -> bool {
        self.endpoint == institution.endpoint
            && self.certificate_name == institution.certificate_name
    }

    fn pick(&self) -> &Link {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.links[turn % self.links.len()]
    }
}

impl Deliverer {
    /// A deliverer keeping one connection per endpoint; see [`Deliverer::with_connections`].
    pub fn new(tls: Option<ClientTls>, timeout: Duration) -> Deliverer {
        Deliverer::with_connections(tls, timeout, 1)
    }

    /// A deliverer keeping `connections` HTTP/2 connections (at least one) per endpoint,
    /// delivering over `DeliverStream`.
    pub fn with_connections(
        tls: Option<ClientTls>,
        timeout: Duration,
        connections: usize,
    ) -> Deliverer {
        Deliverer {
            tls,
            timeout,
            consult_timeout: timeout,
            connections: connections.max(1),
            stream: true,
            channels: DashMap::default(),
        }
    }

    /// The same, with `timeout` as the deadline of a source's answer to a consultation.
    pub fn with_consult_timeout(mut self, timeout: Duration) -> Deliverer {
        self.consult_timeout = timeout;
        self
    }

    /// The same, delivering over `DeliverStream` (`true`) or with one `Deliver` call each.
    pub fn with_stream(mut self, stream: bool) -> Deliverer {
        self.stream = stream;
        self
    }

    /// The deadline of a source's answer to a consultation.
    pub fn consult_timeout(&self) -> Duration {
        self.consult_timeout
    }

    /// Asks `source` for its data (`Institution.Answer`), over the same channel deliveries
    /// use, within the consultation deadline. The answer's payload stays bytes: the caller
    /// filters it. The error says whether the deadline passed; it carries no personal data.
    pub async fn answer(
        &self,
        source: &Institution,
        question: AnswerRequest,
    ) -> Result<AnswerReplyView, AnswerError> {
        let channel = self
            .with_link(source, |_, link| link.channel.clone())
            .map_err(AnswerError::Unreachable)?;
        let mut client = InstitutionClient::new(channel);
        let mut request = tonic::Request::new(question);
        request.set_timeout(self.consult_timeout);
        let asked = tokio::time::Instant::now();
        match tokio::time::timeout(self.consult_timeout, client.answer(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            // The source's server enforces the same deadline (the call's `grpc-timeout`) and
            // answers CANCELLED when it passes; on a busy machine that answer can arrive before
            // the hub's own timer fires. Either way the deadline passed.
            Ok(Err(status))
                if status.code() == tonic::Code::DeadlineExceeded
                    || (status.code() == tonic::Code::Cancelled
                        && asked.elapsed() >= self.consult_timeout) =>
            {
                Err(AnswerError::Deadline(self.consult_timeout))
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Err(AnswerError::NotFound),
            Ok(Err(status)) => Err(AnswerError::Unreachable(format!(
                "the source answered {:?}",
                status.code()
            ))),
            Err(_) => Err(AnswerError::Deadline(self.consult_timeout)),
        }
    }

    /// Delivers one message (an encoded `Delivery`, sent as `attempt`). The error is a
    /// sentence without personal data.
    pub async fn deliver(
        &self,
        institution: &Institution,
        encoded: Bytes,
        attempt: u32,
    ) -> Result<DeliveryAck, String> {
        let delivery = StoredDelivery { encoded, attempt };
        let (channel, stream) = self.with_link(institution, |pool, link| {
            let stream = (self.stream && !pool.unary_only.load(Ordering::Relaxed)).then(|| {
                link.stream
                    .get_or_init(|| {
                        DeliveryStream::start(
                            link.channel.clone(),
                            self.timeout,
                            pool.unary_only.clone(),
                            institution.id.clone(),
                        )
                    })
                    .clone()
            });
            (link.channel.clone(), stream)
        })?;
        if let Some(stream) = stream {
            match stream.deliver(delivery.clone()).await {
                Ok(ack) => return Ok(ack),
                Err(StreamFailure::Failed(error)) => return Err(error),
                // The institution does not take streams: this delivery goes as a call.
                Err(StreamFailure::NotTaken) => {}
            }
        }
        self.call(channel, delivery).await
    }

    /// One `Deliver` call.
    async fn call(
        &self,
        channel: Channel,
        delivery: StoredDelivery,
    ) -> Result<DeliveryAck, String> {
        let mut client = InstitutionClient::new(channel);
        let mut request = tonic::Request::new(delivery);
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, client.deliver(request)).await {
            Ok(Ok(ack)) => Ok(ack.into_inner()),
            Ok(Err(status)) => Err(answered(&status)),
            Err(_) => Err(no_answer_within(self.timeout)),
        }
    }

    /// Runs `use_link` on the institution's next connection, making its pool first if the
    /// institution is new, or its endpoint or certificate name changed (a reload).
    fn with_link<T>(
        &self,
        institution: &Institution,
        use_link: impl FnOnce(&Pool, &Link) -> T,
    ) -> Result<T, String> {
        if let Some(pool) = self.channels.get(&institution.id)
            && pool.serves(institution)
        {
            return Ok(use_link(&pool, pool.pick()));
        }
        // New, moved or renamed: one pool made under the map's lock, so concurrent first
        // deliveries share it.
        let pool = match self.channels.entry(institution.id.clone()) {
            Entry::Occupied(pool) if pool.get().serves(institution) => pool.into_ref(),
            Entry::Occupied(mut pool) => {
                pool.insert(self.pool(institution)?);
                pool.into_ref()
            }
            Entry::Vacant(place) => place.insert(self.pool(institution)?),
        };
        Ok(use_link(&pool, pool.pick()))
    }

    fn pool(&self, institution: &Institution) -> Result<Pool, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", institution.endpoint))
            .map_err(|_| {
                format!(
                    "endpoint \"{}\" is not a valid address",
                    institution.endpoint
                )
            })?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(tls.ca.clone())
                .identity(tls.identity.clone())
                .domain_name(institution.certificate_name.clone())
                .timeout(self.timeout);
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| format!("TLS configuration: {e}"))?;
        }
        // Each connect_lazy is its own HTTP/2 connection.
        Ok(Pool {
            endpoint: institution.endpoint.clone(),
            certificate_name: institution.certificate_name.clone(),
            links: (0..self.connections)
                .map(|_| Link {
                    channel: endpoint.connect_lazy(),
                    stream: std::sync::OnceLock::new(),
                })
                .collect(),
            next: AtomicUsize::new(0),
            unary_only: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Why a delivery sent on a stream was not acknowledged.
#[derive(Debug)]
enum StreamFailure {
    /// The institution answered `DeliverStream` UNIMPLEMENTED: send it with `Deliver`.
    NotTaken,
    /// The call failed or ended, or the acknowledgement was late; a sentence without personal
    /// data.
    Failed(String),
}

type Answer = oneshot::Sender<Result<DeliveryAck, StreamFailure>>;

fn answered(status: &tonic::Status) -> String {
    format!("the endpoint answered {:?}", status.code())
}

fn no_answer_within(timeout: Duration) -> String {
    format!("no answer within {} ms", timeout.as_millis())
}

/// The deliveries of one connection, sent on one `DeliverStream` call by a task of its own.
///
/// The task opens the call with the first delivery and keeps it open; each delivery waits for
/// the acknowledgement naming its delivery id. Every delivery sent gets an answer: its
/// acknowledgement, or a failure when the call ends (an error status, the institution closing
/// it, a connection lost) or when an acknowledgement is later than the delivery deadline, which
/// also drops the call (a wedged stream is not reused). The next delivery opens a new call.
#[derive(Clone, Debug)]
pub struct DeliveryStream {
    queue: mpsc::UnboundedSender<Outgoing>,
}

/// A delivery handed to the stream's task, with where its answer goes.
#[derive(Debug)]
struct Outgoing {
    delivery: StoredDelivery,
    answer: Answer,
}

/// Deliveries sent on the open call and not yet acknowledged.
#[derive(Default)]
struct Unacknowledged {
    /// foldhash: the ids are the hub's own (`ticket/recipient`), and SipHash on each send,
    /// acknowledgement and deadline check was the largest hash cost of a delivery.
    by_id: HashMap<Bytes, Answer, foldhash::fast::RandomState>,
    /// Delivery ids in the order sent, with their deadlines (acknowledged ones are skipped).
    deadlines: VecDeque<(Instant, Bytes)>,
}

impl Unacknowledged {
    fn fail_all(&mut self, error: &str) {
        self.answer_all(|| StreamFailure::Failed(error.to_owned()));
    }

    fn answer_all(&mut self, failure: impl Fn() -> StreamFailure) {
        for (_, answer) in self.by_id.drain() {
            let _ = answer.send(Err(failure()));
        }
        self.deadlines.clear();
    }

    /// The earliest deadline of a delivery still waiting.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some((deadline, id)) = self.deadlines.front() {
            if self.by_id.contains_key(id) {
                return Some(*deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }
}

impl DeliveryStream {
    /// Starts the task that owns the connection's delivery stream.
    fn start(
        channel: Channel,
        timeout: Duration,
        unary_only: Arc<AtomicBool>,
        recipient: Arc<str>,
    ) -> DeliveryStream {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run_stream(channel, timeout, waiting, unary_only, recipient));
        DeliveryStream { queue }
    }

    /// Sends one delivery and waits for its acknowledgement (or the failure of the call).
    async fn deliver(&self, delivery: StoredDelivery) -> Result<DeliveryAck, StreamFailure> {
        let stopped = || StreamFailure::Failed("the delivery stream has stopped".to_owned());
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Outgoing { delivery, answer })
            .map_err(|_| stopped())?;
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The stream's task: one `DeliverStream` call after another, each opened by the first
/// delivery waiting, until the deliverer is dropped.
async fn run_stream(
    channel: Channel,
    timeout: Duration,
    mut waiting: mpsc::UnboundedReceiver<Outgoing>,
    unary_only: Arc<AtomicBool>,
    recipient: Arc<str>,
) {
    // Streams opened, and how each ended (`bcss_delivery_streams_total`).
    let count = |event: &'static str| {
        metrics::counter!(telemetry::DELIVERY_STREAMS, "recipient" => recipient.to_string(), "event" => event)
            .increment(1);
    };
    let mut unacknowledged = Unacknowledged::default();
    while let Some(first) = waiting.recv().await {
        let (send, outgoing) = mpsc::unbounded_channel::<StoredDelivery>();
        let send_one = |item: Outgoing, unacknowledged: &mut Unacknowledged| {
            let id = item.delivery.delivery_id();
            unacknowledged
                .deadlines
                .push_back((Instant::now() + timeout, id.clone()));
            unacknowledged.by_id.insert(id, item.answer);
            // The receiving half lives as long as the call; a failed send shows in the acks.
            let _ = send.send(item.delivery);
        };
        send_one(first, &mut unacknowledged);
        let mut client = InstitutionClient::new(channel.clone());
        let opened = tokio::time::timeout(
            timeout,
            client.deliver_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(
                outgoing,
            )),
        )
        .await;
        let mut acks = match opened {
            Ok(Ok(response)) => {
                count("opened");
                response.into_inner()
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                count("not_taken");
                tracing::info!(
                    message =
                        "The institution does not take DeliverStream: Deliver calls from now on."
                );
                unary_only.store(true, Ordering::Relaxed);
                unacknowledged.answer_all(|| StreamFailure::NotTaken);
                continue;
            }
            Ok(Err(status)) => {
                count("failed");
                unacknowledged.fail_all(&answered(&status));
                continue;
            }
            Err(_) => {
                count("late");
                unacknowledged.fail_all(&no_answer_within(timeout));
                continue;
            }
        };
        let overdue = tokio::time::sleep(timeout);
        tokio::pin!(overdue);
        loop {
            let deadline = unacknowledged.next_deadline();
            if let Some(deadline) = deadline
                && overdue.deadline() != deadline
            {
                overdue.as_mut().reset(deadline);
            }
            tokio::select! {
                item = waiting.recv() => match item {
                    Some(item) => send_one(item, &mut unacknowledged),
                    None => {
                        unacknowledged.fail_all("the hub is stopping");
                        return;
                    }
                },
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        if let Some(answer) = unacknowledged.by_id.remove(ack.delivery_id.as_bytes()) {
                            let _ = answer.send(Ok(ack));
                        }
                    }
                    Ok(None) => {
                        count("ended");
                        unacknowledged.fail_all("the institution ended the delivery stream");
                        break;
                    }
                    Err(status) => {
                        count("failed");
                        unacknowledged.fail_all(&answered(&status));
                        break;
                    }
                },
                () = &mut overdue, if deadline.is_some() => {
                    if unacknowledged.next_deadline().is_some_and(|d| d <= Instant::now()) {
                        count("late");
                        unacknowledged.fail_all(&no_answer_within(timeout));
                        break;
                    }
                }
            }
        }
    }
}

/// Why a source gave no answer to a consultation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerError {
    /// No answer within the consultation deadline.
    Deadline(Duration),
    /// The source holds no data about the person for the period.
    NotFound,
    /// The source could not be reached, or failed; a sentence without personal data.
    Unreachable(String),
}
