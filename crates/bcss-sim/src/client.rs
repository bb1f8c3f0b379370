//! Connecting to the hub as an institution: mutual TLS with the institution's certificate.

use std::net::SocketAddr;
use std::time::Duration;

use bcss_gateway::pki::Pki;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long the TCP connect, and then the TLS handshake, may each take before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel to the hub at `hub`, authenticated as `party` (an institution id in the PKI).
/// Fails after [`CONNECT_TIMEOUT`] rather than wait on a hub that accepts and never answers.
pub async fn connect(
    hub: SocketAddr,
    pki: &Pki,
    party: &str,
    hub_name: &str,
) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
    let pair = pki.party(party)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_cert()?))
        .identity(Identity::from_pem(pair.cert, pair.key))
        .domain_name(hub_name)
        .timeout(CONNECT_TIMEOUT);
    let channel = Endpoint::from_shared(format!("https://{hub}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await?;
    Ok(channel)
}
