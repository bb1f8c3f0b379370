//! The development PKI: a network CA, the hub's certificate, and one key and certificate per
//! institution, created with rcgen into the folder the configuration names.
//!
//! In the real network certificates come from a CA the operator runs; the hub only needs the
//! CA certificate (to verify institutions), its own key and certificate, and the DNS name each
//! institution's certificate carries (`config/institutions.toml`). [`Pki::ensure`] creates
//! whatever is missing and keeps what exists, so a re-run after adding an institution adds its
//! files; a folder holding `ca.pem` without `ca.key` is such an operator's CA, from which the
//! hub issues nothing. A new CA (neither file there) re-issues every certificate, since none
//! issued by the old one would chain to it. Half a pair (a certificate without its key, or the
//! reverse) is refused rather than replaced. Keys are written readable by their owner only.

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
    /// The folder holds half of what belongs together; nothing was changed.
    #[error("{0}")]
    Incomplete(String),
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
    /// `(id, dns name)` party, keeping every pair that already exists (see the module's
    /// documentation for a new CA, an operator's CA and half pairs). Returns how many
    /// certificates were created.
    pub fn ensure(
        &self,
        hub_names: &[String],
        parties: &[(String, String)],
    ) -> Result<usize, PkiError> {
        create_dir(&self.dir.join("parties"))?;
        let mut created = 0;
        let ca_key_path = self.dir.join("ca.key");
        let (issuer, new_ca) = match (self.ca_cert_path().exists(), ca_key_path.exists()) {
            (true, true) => {
                keep_private(&ca_key_path)?;
                let key = KeyPair::from_pem(&read(&ca_key_path)?)?;
                (Issuer::from_ca_cert_pem(&self.ca_cert()?, key)?, false)
            }
            (false, false) => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(Vec::<String>::new())?;
                params
                    .distinguished_name
                    .push(DnType::CommonName, "bcss-hub development network CA");
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                validity(&mut params, 3650);
                let cert = params.self_signed(&key)?;
                write_private(&ca_key_path, &key.serialize_pem())?;
                write(&self.ca_cert_path(), &cert.pem())?;
                created += 1;
                (Issuer::new(params, key), true)
            }
            (true, false) => {
                // An operator's CA: the hub verifies with its certificate and issues nothing.
                let (cert, key) = (self.dir.join("hub.pem"), self.dir.join("hub.key"));
                if cert.exists() && key.exists() {
                    keep_private(&key)?;
                    return Ok(0);
                }
                return Err(PkiError::Incomplete(format!(
                    "{} holds ca.pem without ca.key, and no hub.pem and hub.key: put the hub's \
                     certificate and key, issued by that CA, beside it (or remove ca.pem to \
                     create a development CA)",
                    self.dir.display()
                )));
            }
            (false, true) => {
                return Err(PkiError::Incomplete(format!(
                    "{} holds ca.key without ca.pem: restore ca.pem, or remove ca.key to create \
                     a new development CA (which re-issues every certificate)",
                    self.dir.display()
                )));
            }
        };
        let mut issue = |stem: &str, names: &[String], common_name: &str| -> Result<(), PkiError> {
            let cert_path = self.dir.join(format!("{stem}.pem"));
            let key_path = self.dir.join(format!("{stem}.key"));
            if !new_ca {
                match (cert_path.exists(), key_path.exists()) {
                    (true, true) => return keep_private(&key_path),
                    (false, false) => {}
                    _ => {
                        return Err(PkiError::Incomplete(format!(
                            "{}: {stem}.pem and {stem}.key go together, and one is missing: \
                             restore it, or remove the other to have both made anew",
                            self.dir.display()
                        )));
                    }
                }
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
            write_private(&key_path, &key.serialize_pem())?;
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

/// Writes `text` whole or not at all (a `.partial` file renamed over the target).
fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    write_with_mode(path, text, 0o644)
}

/// [`write`], readable and writable by the owner only: a key.
fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    write_with_mode(path, text, 0o600)
}

fn write_with_mode(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&partial)
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&partial, path).map_err(fail)
}

/// Makes a key written by an earlier version, or restored readable by others, the owner's only.
fn keep_private(path: &Path) -> Result<(), PkiError> {
    bcss_store::keep_secret_file(path)
        .map(drop)
        .map_err(|source| PkiError::Io {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn ensure(pki: &Pki) -> Result<usize, PkiError> {
        pki.ensure(
            &["hub.bcss.test".into()],
            &[("a".into(), "a.institutions.bcss.test".into())],
        )
    }

    #[test]
    fn keys_are_private_pairs_are_kept_and_half_pairs_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        assert_eq!(ensure(&pki).unwrap(), 3, "CA, hub, one party");
        for key in ["ca.key", "hub.key", "parties/a.key"] {
            assert_eq!(mode(&dir.path().join(key)), 0o600, "{key}");
        }
        assert_eq!(ensure(&pki).unwrap(), 0, "everything kept");

        // A key left readable by an earlier version is made private.
        let hub_key = dir.path().join("hub.key");
        std::fs::set_permissions(&hub_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        ensure(&pki).unwrap();
        assert_eq!(mode(&hub_key), 0o600);

        // Half a pair is refused, and nothing is replaced.
        let ca = std::fs::read(pki.ca_cert_path()).unwrap();
        let ca_key = std::fs::read(dir.path().join("ca.key")).unwrap();
        std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
        assert!(matches!(ensure(&pki), Err(PkiError::Incomplete(_))));
        std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
        let party = dir.path().join("parties/a.pem");
        let party_cert = std::fs::read(&party).unwrap();
        std::fs::remove_file(dir.path().join("parties/a.key")).unwrap();
        let refused = ensure(&pki).unwrap_err().to_string();
        assert!(
            refused.contains("parties/a.pem and parties/a.key go together"),
            "{refused}"
        );
        assert_eq!(std::fs::read(&party).unwrap(), party_cert);
        std::fs::remove_file(&party).unwrap();
        assert_eq!(ensure(&pki).unwrap(), 1, "the pair made anew");

        // An operator's CA (no key): nothing is issued, nothing replaced.
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        assert_eq!(ensure(&pki).unwrap(), 0);
        assert_eq!(std::fs::read(pki.ca_cert_path()).unwrap(), ca);
        std::fs::write(dir.path().join("ca.key"), &ca_key).unwrap();

        // A new CA re-issues every certificate: none issued by the old one would chain to it.
        let hub_cert = std::fs::read(dir.path().join("hub.pem")).unwrap();
        std::fs::remove_file(pki.ca_cert_path()).unwrap();
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        assert_eq!(ensure(&pki).unwrap(), 3);
        assert_ne!(std::fs::read(dir.path().join("hub.pem")).unwrap(), hub_cert);
        assert_ne!(std::fs::read(pki.ca_cert_path()).unwrap(), ca);
    }
}
