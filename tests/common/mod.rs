//! A real hub and a real simulated network on loopback, for end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bcss_domain::Niss;
use bcss_gateway::pki::Pki;
use bcss_gateway::startup;
use bcss_policy::{Policy, Settings};
use bcss_proto::hub::v1::directory_client::DirectoryClient;
use bcss_proto::hub::v1::gateway_client::GatewayClient;
use bcss_sim::institution::Network;
use tonic::transport::Channel;

pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// A running hub with its network.
pub struct Harness {
    pub hub: Arc<bcss_gateway::Hub>,
    pub network: Network,
    pub address: std::net::SocketAddr,
    pub pki: Pki,
    pub hub_name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Extra deliberation files to add to a copy of the shipped configuration.
pub type ExtraFiles<'a> = &'a [(&'a str, &'a str)];

impl Harness {
    /// Starts the hub on the shipped configuration (plus `extra` files), a fresh PKI, and one
    /// reference institution per institution, all on free loopback ports.
    pub async fn start(extra: ExtraFiles<'_>) -> Harness {
        let pki_dir = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        let config_dir = if extra.is_empty() {
            shipped_config()
        } else {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(&shipped_config(), dir.path());
            for (name, text) in extra {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            let path = dir.path().to_owned();
            dirs.push(dir);
            path
        };
        let mut settings = Settings::load(&config_dir.join("hub.toml")).unwrap();
        settings.tls.pki = pki_dir.path().to_owned();
        settings.logs.person_key = pki_dir.path().join("person-log.key");
        dirs.push(pki_dir);
        let policy = Policy::load(&settings).unwrap();
        let pki = startup::ensure_pki(&settings, &policy).unwrap();
        let network = Network::start(&policy, &pki, &settings.tls.hub_name, true)
            .await
            .unwrap();
        let assembled =
            startup::assemble_settings(settings.clone(), network.endpoint_overrides()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bcss_gateway::server::run(
            assembled.hub.clone(),
            listener,
            assembled.options,
            async {
                let _ = stopped.await;
            },
        ));
        Harness {
            hub: assembled.hub,
            network,
            address,
            pki,
            hub_name: settings.tls.hub_name,
            stop: Some(stop),
            _dirs: dirs,
        }
    }

    pub async fn channel(&self, party: &str) -> Channel {
        bcss_sim::client::connect(self.address, &self.pki, party, &self.hub_name)
            .await
            .unwrap()
    }

    pub async fn gateway(&self, party: &str) -> GatewayClient<Channel> {
        GatewayClient::new(self.channel(party).await)
    }

    pub async fn directory(&self, party: &str) -> DirectoryClient<Channel> {
        DirectoryClient::new(self.channel(party).await)
    }

    /// Total deliveries received by all institutions.
    pub fn received(&self) -> usize {
        self.network.received()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A NISS no row of the sample directory uses (BIS numbers with the month + 20, which the generator never makes).
pub fn fresh_niss(n: u16) -> Niss {
    Niss::compose(62_707, 998 - n, true).unwrap()
}
