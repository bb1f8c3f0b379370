//! Who is calling: the institution the client certificate proves.
//!
//! TLS has already verified the chain against the network CA; here the leaf certificate's DNS
//! subject alternative names are matched against the institutions' certificate names. Nothing
//! in a message can name its sender.
//!
//! Parsing a certificate costs more than the rest of authenticating a call (6 % of the hub's
//! CPU under load, docs/BENCHMARKS.md), so the names of each leaf certificate seen are kept,
//! keyed by the certificate's bytes: the same bytes always give the same names.

use std::sync::{Arc, LazyLock};

use bcss_policy::{Institution, Operator, Policy, Role};
use dashmap::DashMap;
use tonic::Status;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Who a verified certificate proves the caller to be.
#[derive(Clone, Copy, Debug)]
pub enum Caller<'p> {
    /// An institution of the network: sends and receives flow messages, keeps its integrations.
    Institution(&'p Institution),
    /// A member of the hub's staff, with the roles the configuration gives it.
    Operator(&'p Operator),
}

/// The party behind the request's client certificate, or `UNAUTHENTICATED`.
pub fn caller<'p, T>(
    policy: &'p Policy,
    request: &tonic::Request<T>,
) -> Result<Caller<'p>, Status> {
    caller_named(policy, &certificate_names(request)?)
}

/// The DNS names of the request's (verified) client certificate.
pub fn certificate_names<T>(request: &tonic::Request<T>) -> Result<Arc<[String]>, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: connect with mutual TLS and your institution's certificate",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("the client certificate chain is empty"))?;
    known_dns_names(leaf.as_ref())
        .ok_or_else(|| Status::unauthenticated("the client certificate cannot be parsed"))
}

/// The party a certificate with these names proves under `policy`, or `UNAUTHENTICATED`. A
/// certificate whose names prove two parties proves neither: it would otherwise be whichever
/// its first name maps to, and a reload that removes that name would silently make it the
/// other instead of cutting it off.
pub fn caller_named<'p>(policy: &'p Policy, names: &[String]) -> Result<Caller<'p>, Status> {
    let mut proven = names.iter().filter_map(|name| {
        policy
            .institution_by_certificate(name)
            .map(Caller::Institution)
            .or_else(|| policy.operator_by_certificate(name).map(Caller::Operator))
    });
    let first = proven.next().ok_or_else(|| {
        Status::unauthenticated(
            "the client certificate names no institution or operator of this network",
        )
    })?;
    if proven.any(|other| !first.same_party(&other)) {
        return Err(Status::unauthenticated(
            "the client certificate names more than one institution or operator of this \
             network: a certificate proves one party",
        ));
    }
    Ok(first)
}

impl Caller<'_> {
    fn same_party(&self, other: &Caller<'_>) -> bool {
        match (self, other) {
            (Caller::Institution(a), Caller::Institution(b)) => a.index == b.index,
            (Caller::Operator(a), Caller::Operator(b)) => a.id == b.id,
            _ => false,
        }
    }
}

/// The institution behind the request: operators' certificates exchange no data
/// (`PERMISSION_DENIED`).
pub fn institution<'p, T>(
    policy: &'p Policy,
    request: &tonic::Request<T>,
) -> Result<&'p Institution, Status> {
    institution_named(policy, &certificate_names(request)?)
}

/// [`institution`], for a certificate's names read earlier (a stream's envelopes are
/// authenticated against the policy in force for each, not the one of the stream's opening).
pub fn institution_named<'p>(
    policy: &'p Policy,
    names: &[String],
) -> Result<&'p Institution, Status> {
    match caller_named(policy, names)? {
        Caller::Institution(institution) => Ok(institution),
        Caller::Operator(operator) => Err(Status::permission_denied(format!(
            "\"{}\" is an operator certificate: only an institution's certificate may call this",
            operator.id
        ))),
    }
}

/// The operator behind the request, if it holds `role`; otherwise `PERMISSION_DENIED`.
pub fn operator<'p, T>(
    policy: &'p Policy,
    request: &tonic::Request<T>,
    role: Role,
) -> Result<&'p Operator, Status> {
    match caller(policy, request)? {
        Caller::Operator(operator) if operator.has(role) => Ok(operator),
        Caller::Operator(operator) => Err(Status::permission_denied(format!(
            "operator \"{}\" lacks the {role} role this operation needs",
            operator.id
        ))),
        Caller::Institution(institution) => Err(Status::permission_denied(format!(
            "institution \"{}\" may not call this: it needs an operator certificate with the {role} role",
            institution.id
        ))),
    }
}

/// Certificates whose names were read, by their DER bytes (verified client certificates only:
/// TLS checked the chain before any call reaches the services).
static NAMES_BY_CERTIFICATE: LazyLock<NamesByCertificate> = LazyLock::new(DashMap::default);

type NamesByCertificate = DashMap<Box<[u8]>, Arc<[String]>, foldhash::fast::RandomState>;

/// At most this many certificates are remembered (a network has a few thousand institutions);
/// past it the memory starts again from empty.
const REMEMBERED_CERTIFICATES: usize = 16_384;

/// [`dns_names`], remembered per certificate; `None` when the certificate cannot be parsed.
fn known_dns_names(der: &[u8]) -> Option<Arc<[String]>> {
    if let Some(names) = NAMES_BY_CERTIFICATE.get(der) {
        return Some(names.clone());
    }
    let names: Arc<[String]> = dns_names(der).ok()?.into();
    if NAMES_BY_CERTIFICATE.len() >= REMEMBERED_CERTIFICATES {
        NAMES_BY_CERTIFICATE.clear();
    }
    NAMES_BY_CERTIFICATE.insert(der.into(), names.clone());
    Some(names)
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
