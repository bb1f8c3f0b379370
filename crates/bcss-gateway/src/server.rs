//! Serving the hub: `run` takes a bound listener and a shutdown future, so tests start the real
//! server on loopback exactly as the binary does.

use std::future::Future;
use std::sync::Arc;

use bcss_proto::gateway_view::gateway_server::GatewayServer;
use bcss_proto::hub::v1::directory_server::DirectoryServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::pipeline::Hub;
use crate::service::{DirectoryService, GatewayService};

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
    pub max_message_bytes: usize,
}

/// Serves the hub's services on `listener` until `shutdown` completes.
pub async fn run(
    hub: Arc<Hub>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let gateway = GatewayServer::new(GatewayService { hub: hub.clone() })
        .max_decoding_message_size(options.max_message_bytes);
    let directory = DirectoryServer::new(DirectoryService { hub });
    let tls = ServerTlsConfig::new()
        .identity(options.tls.identity)
        .client_ca_root(options.tls.client_ca);
    Server::builder()
        .tls_config(tls)?
        .tcp_nodelay(true)
        .add_service(gateway)
        .add_service(directory)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
