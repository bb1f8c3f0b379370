//! Connecting to the hub as an institution: mutual TLS with the institution's certificate.

use std::net::SocketAddr;

use bcss_gateway::pki::Pki;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A channel to the hub at `hub`, authenticated as `party` (an institution id in the PKI).
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
        .domain_name(hub_name);
    let channel = Endpoint::from_shared(format!("https://{hub}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(channel)
}
