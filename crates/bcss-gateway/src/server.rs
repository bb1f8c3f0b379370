//! Serving the hub: `run` takes a bound listener and a shutdown future, so tests start the real
//! server on loopback exactly as the binary does.

use std::future::Future;
use std::sync::Arc;

use bcss_proto::gateway_view::gateway_server::GatewayServer;
use bcss_proto::hub::v1::admin_server::AdminServer;
use bcss_proto::hub::v1::directory_server::DirectoryServer;
use bcss_proto::hub::v1::journal_server::JournalServer;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tower::util::MapResponseLayer;

use crate::journal::JournalService;
use crate::pipeline::Hub;
use crate::service::{AdminService, DirectoryService, GatewayService};

/// The hub's TLS material for its listener.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub identity: Identity,
    /// The network CA that institutions' client certificates must chain to.
    pub client_ca: Certificate,
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub tls: ServerTls,
    /// Largest request message; larger ones get `RESOURCE_EXHAUSTED` naming the limit.
    pub max_message_bytes: usize,
    /// HTTP/2 streams one connection may have open at once (the client waits for more).
    pub max_concurrent_streams: u32,
    /// Envelopes of one `SubmitStream` handled at once.
    pub stream_in_flight: usize,
    /// Once `shutdown` completes: how long health says NOT_SERVING while calls are still
    /// taken, before the listener closes.
    pub drain_notice: std::time::Duration,
}

/// Serves the hub's services on `listener` until `shutdown` completes.
pub async fn run(
    hub: Arc<Hub>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let gateway = GatewayServer::new(GatewayService {
        hub: hub.clone(),
        max_message_bytes: options.max_message_bytes,
        stream_in_flight: options.stream_in_flight.max(1),
    })
    .max_decoding_message_size(options.max_message_bytes);
    // Every service's requests are held to the same limit (theirs are small).
    let directory = DirectoryServer::new(DirectoryService { hub: hub.clone() })
        .max_decoding_message_size(options.max_message_bytes);
    let store_watch = hub.outbox().store().cloned();
    let admin = AdminServer::new(AdminService { hub: hub.clone() })
        .max_decoding_message_size(options.max_message_bytes);
    let journal = JournalServer::new(JournalService { hub })
        .max_decoding_message_size(options.max_message_bytes);
    let tls = ServerTlsConfig::new()
        .identity(options.tls.identity)
        .client_ca_root(options.tls.client_ca)
        // A connection that does not finish its handshake in time is closed: without it, anyone
        // could hold sockets open with no certificate at all and never send a ClientHello,
        // until the hub ran out of file descriptors.
        .timeout(HANDSHAKE_TIMEOUT);
    let limit = options.max_message_bytes;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health_reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let (draining, noticed) = tokio::sync::watch::channel(false);
    let (told, drain_told) = tokio::sync::oneshot::channel();
    tokio::spawn(report_health(health_reporter, store_watch, noticed, told));
    let drain_notice = options.drain_notice;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(bcss_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor sets compiled into the binary are valid");
    Server::builder()
        .tls_config(tls)?
        // HTTP/2's own ceiling; the hub answers RESOURCE_EXHAUSTED from half of it.
        .max_concurrent_streams(options.max_concurrent_streams.saturating_mul(2))
        // A peer that vanished (no FIN: a crashed host, a dropped NAT entry) stops answering
        // pings, and its connection is closed instead of held for ever.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(MapResponseLayer::new(move |response| {
            size_limit_status(response, limit)
        }))
        .add_service(gateway)
        .add_service(directory)
        .add_service(admin)
        .add_service(journal)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(accepted(listener), async move {
            shutdown.await;
            // Health turns NOT_SERVING at once, and calls are still taken for the notice:
            // a load balancer polling health moves traffic away before the listener closes.
            let _ = draining.send(true);
            let _ = drain_told.await;
            tokio::time::sleep(drain_notice).await;
        })
        .await
}

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// HTTP/2 pings on idle connections, and how long an answer may take.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The services health reports on; "" is the server as a whole.
pub const SERVICES: [&str; 5] = [
    "",
    "bcss.hub.v1.Gateway",
    "bcss.hub.v1.Directory",
    "bcss.hub.v1.Admin",
    "bcss.hub.v1.Journal",
];

/// SERVING once started, NOT_SERVING while the store refuses writes (the Gateway and the
/// Journal, which record) or, for good, once `draining` says so (all; then `told` is sent).
/// The only writer of the statuses, so a late tick cannot undo the draining.
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    store: Option<Arc<bcss_store::Store>>,
    mut draining: tokio::sync::watch::Receiver<bool>,
    told: tokio::sync::oneshot::Sender<()>,
) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = draining.changed() => {
                if changed.is_err() {
                    // The server is gone, and its health service with it.
                    return;
                }
            }
        }
        if *draining.borrow() {
            for service in SERVICES {
                reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
            let _ = told.send(());
            return;
        }
        if let Some(store) = store.as_ref().filter(|s| !s.writable()) {
            // Nothing else may write while health sends traffic elsewhere: find out whether
            // the data folder takes writes again (a success flips `writable`).
            let _ = store.probe().await;
        }
        let writable = store.as_ref().is_none_or(|s| s.writable());
        for service in SERVICES {
            let records = matches!(service, "" | "bcss.hub.v1.Gateway" | "bcss.hub.v1.Journal");
            let status = if records && !writable {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            reporter.set_service_status(service, status).await;
        }
    }
}

/// tonic answers a message over the decoding limit with `OUT_OF_RANGE` and its own wording; the
/// hub's contract is `RESOURCE_EXHAUSTED` naming the setting. The status travels in the
/// response's headers (trailers-only) or in its trailers, so both are rewritten.
fn size_limit_status(
    response: http::Response<tonic::body::Body>,
    limit: usize,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    rewrite_too_large(&mut parts.headers, limit);
    let body = body.map_frame(move |frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            rewrite_too_large(&mut trailers, limit);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

fn rewrite_too_large(headers: &mut http::HeaderMap, limit: usize) {
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers.get("grpc-message").is_some_and(|v| {
            v.as_bytes()
                .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
                || v.as_bytes()
                    .starts_with(b"Error, decoded message length too large")
        });
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        let message = too_large_message(limit).replace(' ', "%20");
        if let Ok(value) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
    }
}

/// What a sender is told when its message is too large.
pub fn too_large_message(limit: usize) -> String {
    format!(
        "the message is larger than limits.max_message_bytes = {limit} bytes: send a smaller one"
    )
}

/// The connections `listener` accepts, with `TCP_NODELAY` set on each: tonic's
/// `Server::tcp_nodelay` applies only to listeners it binds itself, and with Nagle's algorithm a
/// reply written in more than one piece can wait for the peer's delayed acknowledgement (up to
/// 40 ms on Linux) whenever the connection is not busy.
pub fn accepted(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    /// Every accepted connection has Nagle's algorithm off (the servers' `serve_with_incoming`
    /// ignores tonic's own `tcp_nodelay`).
    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acknowledgements() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = super::accepted(listener);
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let connection = incoming.next().await.unwrap().unwrap();
        assert!(connection.nodelay().unwrap());
    }
}
