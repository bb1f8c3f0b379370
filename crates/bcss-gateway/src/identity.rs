//! Who is calling: the institution the client certificate proves.
//!
//! TLS has already verified the chain against the network CA; here the leaf certificate's DNS
//! subject alternative names are matched against the institutions' certificate names. Nothing
//! in a message can name its sender.

use bcss_policy::{Institution, Policy};
use tonic::Status;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The institution behind the request's client certificate, or `UNAUTHENTICATED`.
pub fn caller<'p, T>(
    policy: &'p Policy,
    request: &tonic::Request<T>,
) -> Result<&'p Institution, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: connect with mutual TLS and your institution's certificate",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("the client certificate chain is empty"))?;
    let names = dns_names(leaf.as_ref())
        .map_err(|_| Status::unauthenticated("the client certificate cannot be parsed"))?;
    names
        .iter()
        .find_map(|name| policy.institution_by_certificate(name))
        .ok_or_else(|| {
            Status::unauthenticated("the client certificate names no institution of this network")
        })
}

/// The DNS subject alternative names of a DER certificate.
pub fn dns_names(
    der: &[u8],
) -> Result<Vec<String>, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    let (_, cert) = X509Certificate::from_der(der)?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    Ok(names)
}
