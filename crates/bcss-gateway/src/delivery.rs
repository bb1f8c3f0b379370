//! Delivery of filtered messages to institutions' `Institution.Deliver` endpoints, over
//! HTTP/2 connections kept per institution and verified with TLS.
//!
//! A small pool of lazily connected channels per institution endpoint
//! (`delivery.connections_per_recipient`), used in turn by the deliveries to it: one HTTP/2
//! connection is driven by one task at each end, so a single one serialises a busy recipient.
//! The hub presents its own certificate (institutions verify they are called by the hub) and
//! verifies the institution's certificate against the network CA and its configured name.
//! The TLS handshake has the delivery deadline too (tonic bounds only the TCP connect unless
//! told): a peer that accepts a connection and falls silent fails the connection, and the
//! next call connects afresh instead of waiting on it for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bcss_policy::Institution;
use bcss_proto::hub::view::v1::{AnswerReplyView, DeliveryView};
use bcss_proto::institution::v1::{AnswerRequest, DeliveryAck};
use bcss_proto::institution_view::institution_client::InstitutionClient;
use dashmap::DashMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
    /// Per institution id: the endpoint the channels were made for, and the channels.
    channels: DashMap<Arc<str>, Pool>,
}

/// The channels to one endpoint and the turn.
#[derive(Debug)]
struct Pool {
    endpoint: String,
    channels: Box<[Channel]>,
    next: AtomicUsize,
}

impl Pool {
    fn pick(&self) -> Channel {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.channels[turn % self.channels.len()].clone()
    }
}

impl Deliverer {
    /// A deliverer keeping one connection per endpoint; see [`Deliverer::with_connections`].
    pub fn new(tls: Option<ClientTls>, timeout: Duration) -> Deliverer {
        Deliverer::with_connections(tls, timeout, 1)
    }

    /// A deliverer keeping `connections` HTTP/2 connections (at least one) per endpoint.
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
            channels: DashMap::new(),
        }
    }

    /// The same, with `timeout` as the deadline of a source's answer to a consultation.
    pub fn with_consult_timeout(mut self, timeout: Duration) -> Deliverer {
        self.consult_timeout = timeout;
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
        let channel = self.channel(source).map_err(AnswerError::Unreachable)?;
        let mut client = InstitutionClient::new(channel);
        let mut request = tonic::Request::new(question);
        request.set_timeout(self.consult_timeout);
        match tokio::time::timeout(self.consult_timeout, client.answer(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
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

    /// Delivers one message. The error is a sentence without personal data.
    pub async fn deliver(
        &self,
        institution: &Institution,
        delivery: DeliveryView,
    ) -> Result<DeliveryAck, String> {
        let channel = self.channel(institution)?;
        let mut client = InstitutionClient::new(channel);
        let mut request = tonic::Request::new(delivery);
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, client.deliver(request)).await {
            Ok(Ok(ack)) => Ok(ack.into_inner()),
            Ok(Err(status)) => Err(format!("the endpoint answered {:?}", status.code())),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    fn channel(&self, institution: &Institution) -> Result<Channel, String> {
        if let Some(pool) = self.channels.get(&institution.id)
            && pool.endpoint == institution.endpoint
        {
            return Ok(pool.pick());
        }
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
        let pool = Pool {
            endpoint: institution.endpoint.clone(),
            channels: (0..self.connections)
                .map(|_| endpoint.connect_lazy())
                .collect(),
            next: AtomicUsize::new(0),
        };
        let channel = pool.pick();
        self.channels.insert(institution.id.clone(), pool);
        Ok(channel)
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
