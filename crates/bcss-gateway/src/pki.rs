//! The development PKI: a network CA, the hub's certificate, and one key and certificate per
//! institution, created with rcgen into the folder the configuration names.
//!
//! In the real network certificates come from a CA the operator runs; the hub only needs the
//! CA certificate (to verify institutions), its own key and certificate, and the DNS name each
//! institution's certificate carries (`config/institutions.toml`). [`ensure`] creates whatever
//! is missing and keeps what exists, so a re-run after adding an institution adds its files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Where the files of the PKI are.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
}

/// A certificate and its key, in PEM.
#[derive(Clone, Debug)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Pki {
        Pki { dir: dir.into() }
    }

    /// The folder holding the PKI.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA certificate in PEM.
    pub fn ca_cert(&self) -> Result<String, PkiError> {
        read(&self.ca_cert_path())
    }

    /// The hub's certificate and key.
    pub fn hub(&self) -> Result<PemPair, PkiError> {
        self.pair("hub")
    }

    /// An institution's (or operator's) certificate and key, by id.
    pub fn party(&self, id: &str) -> Result<PemPair, PkiError> {
        self.pair(&format!("parties/{id}"))
    }

    fn pair(&self, stem: &str) -> Result<PemPair, PkiError> {
        Ok(PemPair {
            cert: read(&self.dir.join(format!("{stem}.pem")))?,
            key: read(&self.dir.join(format!("{stem}.key")))?,
        })
    }

    /// Creates the CA, the hub's certificate for `hub_names`, and a certificate for each
    /// `(id, dns name)` party, keeping every file that already exists. Returns how many
    /// certificates were created.
    pub fn ensure(
        &self,
        hub_names: &[String],
        parties: &[(String, String)],
    ) -> Result<usize, PkiError> {
        create_dir(&self.dir.join("parties"))?;
        let mut created = 0;
        let ca_key_path = self.dir.join("ca.key");
        let issuer = if self.ca_cert_path().exists() && ca_key_path.exists() {
            let key = KeyPair::from_pem(&read(&ca_key_path)?)?;
            Issuer::from_ca_cert_pem(&self.ca_cert()?, key)?
        } else {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, "bcss-hub development network CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            validity(&mut params, 3650);
            let cert = params.self_signed(&key)?;
            write(&self.ca_cert_path(), &cert.pem())?;
            write(&ca_key_path, &key.serialize_pem())?;
            created += 1;
            Issuer::new(params, key)
        };
        let mut issue = |stem: &str, names: &[String], common_name: &str| -> Result<(), PkiError> {
            let cert_path = self.dir.join(format!("{stem}.pem"));
            if cert_path.exists() {
                return Ok(());
            }
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names.to_vec())?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            validity(&mut params, 825);
            let cert = params.signed_by(&key, &issuer)?;
            write(&self.dir.join(format!("{stem}.key")), &key.serialize_pem())?;
            write(&cert_path, &cert.pem())?;
            created += 1;
            Ok(())
        };
        issue("hub", hub_names, "bcss-hub")?;
        for (id, name) in parties {
            issue(&format!("parties/{id}"), std::slice::from_ref(name), id)?;
        }
        Ok(created)
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    std::fs::write(path, text).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}
