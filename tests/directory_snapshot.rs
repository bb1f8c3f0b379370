//! Directory snapshots with the real `bcss-hub` binary: an integration declared at run time
//! survives a graceful restart (snapshot on SIGTERM, loaded at start), `directory export` shows
//! it, `directory import` is refused while the hub runs and replaces the directory when it is
//! stopped, and a file that does not fit the policy is refused with the reason and changes
//! nothing.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bcss_domain::Niss;
use bcss_gateway::pki::Pki;
use bcss_proto::flows::v1 as f;
use bcss_proto::hub::v1::directory_client::DirectoryClient;
use bcss_proto::hub::v1::{IntegrateRequest, ListRequest};
use common::fresh_niss;

const BIN: &str = env!("CARGO_BIN_EXE_bcss-hub");

struct Site {
    root: tempfile::TempDir,
    address: SocketAddr,
}

impl Site {
    /// The shipped configuration in a fresh folder, on a free port, without a metrics listener.
    fn new() -> Site {
        let root = tempfile::tempdir().unwrap();
        common::copy_dir(&common::shipped_config(), &root.path().join("config"));
        // The hub is stopped and started again several times on this port.
        let (port, _) = common::port_below_ephemeral_range();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let hub_toml = root.path().join("config/hub.toml");
        let mut table: toml::Table = std::fs::read_to_string(&hub_toml).unwrap().parse().unwrap();
        table.remove("metrics");
        table["server"]["listen"] = toml::Value::String(address.to_string());
        table["tls"]["pki"] = "../pki".into();
        table["storage"]["data"] = "../data".into();
        table["logs"]["person_key"] = "../person-log.key".into();
        std::fs::write(&hub_toml, toml::to_string(&table).unwrap()).unwrap();
        Site { root, address }
    }

    fn config(&self) -> PathBuf {
        self.root.path().join("config/hub.toml")
    }

    fn snapshot(&self) -> PathBuf {
        self.root.path().join("data/directory.snapshot")
    }

    fn command(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .unwrap()
    }

    async fn start(&self) -> Child {
        let hub = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.config())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while self.directory().await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the hub did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hub
    }

    async fn directory(&self) -> Option<DirectoryClient<tonic::transport::Channel>> {
        let pki = Pki::new(self.root.path().join("pki"));
        bcss_sim::client::connect(self.address, &pki, "cpas-liege", "hub.bcss.test")
            .await
            .ok()
            .map(DirectoryClient::new)
    }

    async fn rows_of(&self, niss: Niss) -> usize {
        let mut directory = self.directory().await.unwrap();
        let reply = directory
            .list(ListRequest {
                niss: Some(niss.digits()),
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .unwrap();
        reply.into_inner().integrations.len()
    }
}

/// SIGTERM, then waits for a clean exit.
fn stop(mut hub: Child) {
    let pid = hub.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    loop {
        if let Some(status) = hub.try_wait().unwrap() {
            assert!(status.success(), "the hub stopped with {status}");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the hub did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_integrations_survive_a_restart_and_import_export_round_trip() {
    let site = Site::new();
    let person = fresh_niss(500);

    // 1. Declared at run time; the hub stops gracefully and writes its snapshot.
    let hub = site.start().await;
    assert_eq!(site.rows_of(person).await, 0);
    let created = site
        .directory()
        .await
        .unwrap()
        .integrate(IntegrateRequest {
            niss: person.digits(),
            quality_code: 1,
            period: Some(f::Period {
                start: "2025-01-01".into(),
                end: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .created;
    assert!(created);
    let refused = site.command(&[
        "directory",
        "import",
        common::shipped_config()
            .join("directory.csv")
            .to_str()
            .unwrap(),
    ]);
    assert!(!refused.status.success(), "import while the hub runs");
    assert!(
        stderr(&refused).contains("in use by another hub"),
        "{}",
        stderr(&refused)
    );
    stop(hub);
    assert!(
        site.snapshot().exists(),
        "a snapshot is written on shutdown"
    );
    // It says who holds a file on every person, and the keys prove parties: the owner's only.
    let private = |path: PathBuf| {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
    };
    private(site.snapshot());
    for key in ["ca.key", "hub.key", "parties/cpas-liege.key"] {
        private(site.root.path().join("pki").join(key));
    }

    // 2. Export shows the run-time row.
    let exported = site.command(&["directory", "export"]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let text = String::from_utf8(exported.stdout).unwrap();
    let line = format!("{},cpas-liege,001,2025-01-01,", person.digits());
    assert!(
        text.lines().any(|l| l == line),
        "export lists the run-time row"
    );
    let shipped = std::fs::read_to_string(common::shipped_config().join("directory.csv")).unwrap();
    let data_lines = |text: &str| text.lines().filter(|l| !l.starts_with(['#', 'n'])).count();
    assert_eq!(data_lines(&text), data_lines(&shipped) + 1);

    // 3. After a restart the hub has it (loaded from the snapshot, not directory.csv).
    let hub = site.start().await;
    assert_eq!(
        site.rows_of(person).await,
        1,
        "the integration survived the restart"
    );
    stop(hub);

    // 4. A file naming an institution the policy does not know is refused; nothing changes.
    let before = std::fs::read(site.snapshot()).unwrap();
    let bad = site.root.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "{}\n{},no-such-fund,001,2025-01-01,\n",
            bcss_directory::csv::HEADER,
            person.digits()
        ),
    )
    .unwrap();
    let refused = site.command(&["directory", "import", bad.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unknown institution \"no-such-fund\""),
        "{}",
        stderr(&refused)
    );
    assert!(
        !stderr(&refused).contains(&person.digits()),
        "errors never name the person"
    );
    assert_eq!(std::fs::read(site.snapshot()).unwrap(), before);

    // 5. Importing the shipped CSV replaces the directory: the run-time row is gone.
    let exported_snapshot = site.root.path().join("copy.snapshot");
    let saved = site.command(&[
        "directory",
        "export",
        "--format",
        "snapshot",
        "--out",
        exported_snapshot.to_str().unwrap(),
    ]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    let imported = site.command(&[
        "directory",
        "import",
        common::shipped_config()
            .join("directory.csv")
            .to_str()
            .unwrap(),
    ]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let hub = site.start().await;
    assert_eq!(
        site.rows_of(person).await,
        0,
        "the imported directory replaced the old one"
    );
    stop(hub);

    // 6. ...and importing the exported snapshot brings it back.
    let imported = site.command(&["directory", "import", exported_snapshot.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let hub = site.start().await;
    assert_eq!(
        site.rows_of(person).await,
        1,
        "a snapshot imports as well as a CSV"
    );
    stop(hub);

    // 7. A snapshot emptied by a bad copy is refused, not read as an empty directory (which
    // would refuse every delivery).
    std::fs::write(site.snapshot(), b"").unwrap();
    let refused = site.command(&["directory", "export"]);
    assert!(!refused.status.success(), "an empty snapshot was read");
    assert!(
        stderr(&refused).contains("not a directory snapshot"),
        "{}",
        stderr(&refused)
    );
}
