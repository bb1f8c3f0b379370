//! `hub.toml`: where the hub listens, where its files are, its TLS material and its limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ConfigError, read_toml};

/// The hub's settings, with every path resolved against the folder of `hub.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub files: FileSettings,
    pub tls: TlsSettings,
    pub delivery: DeliverySettings,
    pub limits: LimitSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub institutions: PathBuf,
    pub quality_codes: PathBuf,
    pub deliberations: PathBuf,
    pub directory: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub pki: PathBuf,
    pub hub_name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_message_bytes: usize,
}

impl Settings {
    /// Reads `hub.toml` and resolves its relative paths against its folder.
    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let mut settings: Settings = read_toml(file)?;
        let base = file.parent().unwrap_or(Path::new("."));
        for path in [
            &mut settings.files.institutions,
            &mut settings.files.quality_codes,
            &mut settings.files.deliberations,
            &mut settings.files.directory,
            &mut settings.tls.pki,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(settings)
    }
}
