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
    #[serde(default)]
    pub logs: LogSettings,
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

/// What one caller may ask of the hub. A breach is answered `RESOURCE_EXHAUSTED` naming the
/// limit, and changes nothing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest encoded envelope the hub accepts.
    pub max_message_bytes: usize,
    /// Most candidate recipients one message may have (a broadcast to every institution
    /// integrated for the person).
    #[serde(default = "default_max_fan_out")]
    pub max_fan_out: usize,
    /// HTTP/2 streams (calls) one connection may have open at once; a client opening more
    /// waits for one to finish.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Messages per second one institution may submit or explain, over all its connections.
    #[serde(default = "default_rate_per_second")]
    pub rate_per_second: u32,
    /// How many messages above the steady rate an institution may send in a burst.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
}

fn default_max_fan_out() -> usize {
    64
}
fn default_max_concurrent_streams() -> u32 {
    256
}
fn default_rate_per_second() -> u32 {
    5_000
}
fn default_rate_burst() -> u32 {
    10_000
}

/// Logs: a person is referred to only by a keyed hash of the NISS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// The secret key of the hash (32 random bytes, hex); created on first start when missing.
    /// Whoever holds it can tell which NISS a log line is about; nobody else can.
    #[serde(default = "default_person_key")]
    pub person_key: PathBuf,
}

fn default_person_key() -> PathBuf {
    PathBuf::from("../var/person-log.key")
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            person_key: default_person_key(),
        }
    }
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
            &mut settings.logs.person_key,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(settings)
    }
}
