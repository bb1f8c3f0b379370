//! From `hub.toml` to the parts of a running hub: settings, policy, directory, PKI, TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bcss_directory::Directory;
use bcss_directory::csv::Resolver;
use bcss_domain::{InstitutionIndex, QualityCode, SectorQuality};
use bcss_policy::settings::StorageSettings;
use bcss_policy::{Policy, Settings};
use tonic::transport::{Certificate, Identity};

use crate::delivery::{ClientTls, Deliverer};
use crate::limits::Limits;
use crate::outbox::RetryPolicy;
use crate::pipeline::{HubParts, PolicySource};
use crate::pki::Pki;
use crate::privacy::PersonKey;
use crate::server::{ServeOptions, ServerTls};
use bcss_store::{Recovered, Store, StoreOptions};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] bcss_policy::ConfigError),
    #[error("{}: {source}", file.display())]
    Directory {
        file: std::path::PathBuf,
        source: DirectoryFileError,
    },
    #[error("PKI: {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("store: {0}")]
    Store(#[from] bcss_store::StoreError),
    /// The data folder could not be created, locked or opened (the store's `Unavailable` at
    /// start, where "retry later" is not the advice).
    #[error(
        "the data folder {} cannot be used ({detail}): storage.data must name a folder the \
         hub's user can create and write",
        folder.display()
    )]
    DataFolder {
        folder: std::path::PathBuf,
        detail: String,
    },
    #[error("{}: the key of the person hash in logs: {source}", file.display())]
    PersonKey {
        file: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryFileError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Line(#[from] bcss_directory::csv::LineError),
    #[error(transparent)]
    Snapshot(#[from] bcss_directory::snapshot::SnapshotError),
}

/// Resolves directory rows against a policy.
pub struct PolicyResolver<'a>(pub &'a Policy);

impl Resolver for PolicyResolver<'_> {
    fn institution(&self, id: &str) -> Option<InstitutionIndex> {
        self.0.institution_by_id(id).map(|i| i.index)
    }
    fn quality_exists(&self, institution: InstitutionIndex, code: QualityCode) -> bool {
        let sector = self.0.institution(institution).sector;
        self.0
            .quality_name(SectorQuality { sector, code })
            .is_some()
    }
}

/// Loads the persons directory file.
pub fn load_directory(file: &Path, policy: &Policy) -> Result<Directory, StartupError> {
    let fail = |source: DirectoryFileError| StartupError::Directory {
        file: file.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(file).map_err(|e| fail(e.into()))?;
    // A base table for at least twice the file's lines (a line per integration, so at least
    // one per person), with room for persons integrated at run time; beyond it, persons go to
    // the directory's spill map.
    let directory = Directory::with_capacity((text.lines().count() * 2).max(4096));
    bcss_directory::csv::load(&directory, &text, &PolicyResolver(policy))
        .map_err(|e| fail(e.into()))?;
    Ok(directory)
}

/// Creates whatever is missing of the development PKI for the hub and every institution.
pub fn ensure_pki(settings: &Settings, policy: &Policy) -> Result<Pki, StartupError> {
    let pki = Pki::new(&settings.tls.pki);
    let hub_names = vec![
        settings.tls.hub_name.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let parties: Vec<(String, String)> = policy
        .institutions()
        .iter()
        .map(|i| (i.id.to_string(), i.certificate_name.clone()))
        .chain(
            policy
                .operators()
                .iter()
                .map(|o| (o.id.to_string(), o.certificate_name.clone())),
        )
        .collect();
    let created = pki.ensure(&hub_names, &parties)?;
    if created > 0 {
        tracing::info!(message = "Development certificates created.", created, folder = %settings.tls.pki.display());
    }
    Ok(pki)
}

/// Everything `serve` and `demo` need, built from `hub.toml`.
pub struct Assembled {
    pub settings: Settings,
    pub hub: Arc<crate::Hub>,
    pub options: ServeOptions,
    pub pki: Pki,
    /// The directory's snapshots in the data folder (`None` when `storage.durable` is off).
    /// `serve` writes one on shutdown.
    pub snapshots: Option<Arc<crate::snapshot::Snapshots>>,
}

/// Loads the configuration, the directory and the PKI, and builds the hub. `adjust` may change
/// the policy before the hub takes it, at start and at every reload (the demo and tests point
/// institutions at their servers).
pub fn assemble(
    config: &Path,
    adjust: impl Fn(&mut Policy) + Send + Sync + 'static,
) -> Result<Assembled, StartupError> {
    assemble_settings(Settings::load(config)?, adjust)
}

/// [`assemble`] from settings already loaded (tests change the PKI folder, say).
pub fn assemble_settings(
    settings: Settings,
    adjust: impl Fn(&mut Policy) + Send + Sync + 'static,
) -> Result<Assembled, StartupError> {
    let source_settings = settings.clone();
    let policy_source: PolicySource = Box::new(move || {
        let mut policy = Policy::load(&source_settings)?;
        adjust(&mut policy);
        Ok(policy)
    });
    let policy = policy_source()?;
    let snapshot_file = crate::snapshot::file(&settings.storage.data);
    let directory = if settings.storage.durable && snapshot_file.exists() {
        let started = std::time::Instant::now();
        let directory = crate::snapshot::load(&snapshot_file, &policy)?;
        tracing::info!(
            message = "Directory loaded from the data folder's snapshot.",
            file = %snapshot_file.display(),
            ms = started.elapsed().as_millis() as u64,
        );
        directory
    } else {
        load_directory(&settings.files.directory, &policy)?
    };
    let pki = ensure_pki(&settings, &policy)?;
    let hub_pair = pki.hub()?;
    let ca = Certificate::from_pem(pki.ca_cert()?);
    let identity = Identity::from_pem(&hub_pair.cert, &hub_pair.key);
    if !settings.delivery.tls {
        tracing::warn!(
            message = "delivery.tls = false: deliveries travel without TLS (benchmarks only)."
        );
    }
    let deliverer = Deliverer::with_connections(
        settings.delivery.tls.then(|| ClientTls {
            ca: ca.clone(),
            identity: identity.clone(),
        }),
        Duration::from_millis(settings.delivery.timeout_ms),
        settings.delivery.connections_per_recipient,
    )
    .with_consult_timeout(Duration::from_millis(settings.delivery.consult_timeout_ms))
    .with_stream(settings.delivery.stream);
    tracing::info!(
        message = "Configuration loaded.",
        institutions = policy.institutions().len(),
        deliberations = policy.deliberations().len(),
        persons = directory.persons(),
        integrations = directory.integration_count(),
    );
    let person_key = PersonKey::load_or_create(&settings.logs.person_key).map_err(|source| {
        StartupError::PersonKey {
            file: settings.logs.person_key.clone(),
            source,
        }
    })?;
    let (store, recovered) = if settings.storage.durable {
        // The ledger holds settled tickets for a while only: older ones stay on disk.
        let hold_since = OffsetDateTime::now_utc() - crate::journal::SETTLED_HELD;
        let options = store_options(&settings.storage, crate::ledger::unix_ms(hold_since));
        let (store, recovered) =
            Store::open_with(&settings.storage.data, options).map_err(|error| match error {
                bcss_store::StoreError::Unavailable(detail) => StartupError::DataFolder {
                    folder: settings.storage.data.clone(),
                    detail,
                },
                other => StartupError::Store(other),
            })?;
        if !settings.storage.journal {
            tracing::warn!(
                message =
                    "storage.journal = false: exchanges are not journalled (benchmarks only)."
            );
        }
        (Some(Arc::new(store)), recovered)
    } else {
        tracing::warn!(
            message = "storage.durable = false: accepted messages are kept in memory only and lost if the hub stops."
        );
        (None, Recovered::default())
    };
    let parts = HubParts {
        limits: Limits::new(&settings.limits),
        person_key,
        policy_source: Some(policy_source),
        store,
        recovered,
        retry: RetryPolicy::from_settings(&settings.delivery),
    };
    let hub = Arc::new(crate::Hub::new(
        policy,
        Arc::new(directory),
        deliverer,
        parts,
    ));
    crate::journal::spawn_retention(
        hub.clone(),
        crate::journal::Retention {
            tickets: settings.ticket_retention(),
            settled_held: crate::journal::SETTLED_HELD,
            every: Duration::from_secs(60),
        },
    );
    let snapshots = hub.outbox().store().is_some().then(|| {
        let snapshots = Arc::new(crate::snapshot::Snapshots::new(hub.clone(), snapshot_file));
        snapshots.spawn_periodic(Duration::from_secs(settings.storage.directory_snapshot_s));
        snapshots
    });
    let options = ServeOptions {
        tls: ServerTls {
            identity,
            client_ca: ca,
        },
        max_message_bytes: settings.limits.max_message_bytes,
        max_concurrent_streams: settings.limits.max_concurrent_streams,
        stream_in_flight: settings.limits.stream_in_flight,
        drain_notice: Duration::from_millis(settings.server.drain_notice_ms),
    };
    Ok(Assembled {
        settings,
        hub,
        options,
        pki,
        snapshots,
    })
}

/// How the store is opened: as `storage` says, holding the tickets accepted from
/// `hold_since_ms` on.
fn store_options(storage: &StorageSettings, hold_since_ms: i64) -> StoreOptions {
    let mut options = StoreOptions {
        journal: storage.journal,
        hold_since_ms,
        ..StoreOptions::default()
    };
    if let Some(mib) = storage.cache_mib {
        options.cache_bytes = usize::try_from(mib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1 << 20);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_opened_as_the_storage_settings_say() {
        // (storage.journal, storage.cache_mib, journal, cache bytes)
        let cases = [
            (true, None, true, bcss_store::DEFAULT_CACHE_BYTES),
            (false, None, false, bcss_store::DEFAULT_CACHE_BYTES),
            (true, Some(16), true, 16 << 20),
            (true, Some(2048), true, 2048 << 20),
            (true, Some(0), true, 0),
        ];
        for (journal, cache_mib, expect_journal, expect_cache) in cases {
            let storage = StorageSettings {
                journal,
                cache_mib,
                ..StorageSettings::default()
            };
            let options = store_options(&storage, 42);
            let case = format!("journal {journal}, cache_mib {cache_mib:?}");
            assert_eq!(options.journal, expect_journal, "{case}");
            assert_eq!(options.cache_bytes, expect_cache, "{case}");
            assert_eq!(options.hold_since_ms, 42, "{case}");
        }
    }

    /// A data folder that cannot be made (a file in its place) is named with the setting to
    /// fix, not answered as a store that may work if asked again.
    #[tokio::test]
    async fn a_data_folder_that_cannot_be_used_is_named_with_its_setting() {
        let dir = tempfile::tempdir().unwrap();
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/hub.toml");
        let mut settings = Settings::load(&config).unwrap();
        settings.tls.pki = dir.path().join("pki");
        settings.logs.person_key = dir.path().join("person-log.key");
        settings.storage.data = dir.path().join("data");
        std::fs::write(&settings.storage.data, b"a file, not a folder").unwrap();
        let Err(error) = assemble_settings(settings.clone(), |_| {}) else {
            panic!("the hub started on a file as its data folder")
        };
        let StartupError::DataFolder { folder, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(folder, &settings.storage.data);
        let said = error.to_string();
        assert!(said.contains("storage.data must name a folder"), "{said}");
        assert!(!said.contains("retry later"), "{said}");
    }
}
