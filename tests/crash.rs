//! The crash test: the real `bcss-hub serve` binary, under a steady load of submissions from
//! several clients, is killed with SIGKILL at random moments (20 times by default;
//! `BCSS_CRASH_KILLS=N` for more) and restarted. At the end every ticket that was answered has
//! reached each of its recipients exactly once after deduplication by delivery id, in order per
//! person, and nothing arrived that was not answered. Every client call has a deadline, so a
//! call lost with a killed hub's connection is retried, and a hub that stops answering fails
//! the test instead of hanging it. A data file damaged after a kill keeps the hub from
//! starting, and is left as it was.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bcss_domain::Niss;
use bcss_gateway::pki::Pki;
use bcss_policy::{Policy, Settings};
use bcss_proto::hub::v1::gateway_client::GatewayClient;
use bcss_sim::institution::Network;
use common::{a052_envelope, fresh_niss};
use rand::RngExt;
use tonic::transport::Channel;

const RECIPIENTS: [&str; 2] = ["cpas-liege", "cpas-ghent"];
const CLIENTS: usize = 4;
const PERSONS_PER_CLIENT: u16 = 5;

/// What a client saw answered: (message id, person, ticket, delivery ids).
type Answered = Vec<(String, Niss, String, Vec<String>)>;

fn hub_toml(listen: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
shutdown_grace_ms = 2000
[files]
institutions = "institutions.toml"
quality_codes = "quality_codes.toml"
deliberations = "deliberations"
directory = "directory.csv"
[tls]
pki = "../pki"
hub_name = "hub.bcss.test"
[delivery]
timeout_ms = 2000
reply_wait_ms = 0
backoff_initial_ms = 20
backoff_max_ms = 500
circuit_open_ms = 200
[limits]
max_message_bytes = 1048576
rate_per_second = 100000
rate_burst = 100000
[storage]
data = "../data"
[logs]
person_key = "../person-log.key"
"#
    )
}

/// The folder the hub runs from: the shipped policy, a small directory, endpoints pointing at
/// this test's institution servers.
fn write_config(root: &Path, listen: &str, persons: &[Niss]) -> Settings {
    let config = root.join("config");
    std::fs::create_dir_all(config.join("deliberations")).unwrap();
    for name in ["institutions.toml", "quality_codes.toml"] {
        std::fs::copy(common::shipped_config().join(name), config.join(name)).unwrap();
    }
    for entry in std::fs::read_dir(common::shipped_config().join("deliberations")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            config.join("deliberations").join(entry.file_name()),
        )
        .unwrap();
    }
    let mut csv = format!("{}\n", bcss_directory::csv::HEADER);
    for niss in persons {
        for recipient in RECIPIENTS {
            csv.push_str(&format!("{},{recipient},001,2024-01-01,\n", niss.digits()));
        }
    }
    std::fs::write(config.join("directory.csv"), csv).unwrap();
    std::fs::write(config.join("hub.toml"), hub_toml(listen)).unwrap();
    Settings::load(&config.join("hub.toml")).unwrap()
}

/// Points institutions.toml's endpoints at the network's servers.
fn point_at(network: &Network, file: &Path) {
    let mut table: toml::Table = std::fs::read_to_string(file).unwrap().parse().unwrap();
    if let Some(toml::Value::Array(institutions)) = table.get_mut("institution") {
        for institution in institutions {
            let id = institution["id"].as_str().unwrap().to_owned();
            institution["endpoint"] = toml::Value::String(network.addresses[&id].to_string());
        }
    }
    std::fs::write(file, toml::to_string(&table).unwrap()).unwrap();
}

fn spawn_hub(root: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("hub.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_bcss-hub"))
        .args(["serve", "--config"])
        .arg(root.join("config/hub.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the bcss-hub binary starts")
}

/// A hub's folder for `persons` with its institutions' servers running; the hub's port is held
/// by the listener returned, to be dropped just before the hub is spawned.
struct Site {
    root: tempfile::TempDir,
    address: std::net::SocketAddr,
    pki: Arc<Pki>,
    network: Network,
}

async fn new_site(persons: &[Niss]) -> (Site, std::net::TcpListener) {
    let root = tempfile::tempdir().unwrap();
    let (port, held) = common::port_below_ephemeral_range();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let settings = write_config(root.path(), &address.to_string(), persons);
    let policy = Policy::load(&settings).unwrap();
    let pki = Arc::new(bcss_gateway::startup::ensure_pki(&settings, &policy).unwrap());
    let network = Network::start(&policy, &pki, "hub.bcss.test", true)
        .await
        .unwrap();
    point_at(&network, &root.path().join("config/institutions.toml"));
    let site = Site {
        root,
        address,
        pki,
        network,
    };
    (site, held)
}

/// A call's deadline. The hub answers in milliseconds (one group commit): a call this old
/// across a kill was lost with the killed hub's connection (the client library does not always
/// notice) and is made again; one this old while the same hub ran throughout fails the test.
/// Wide, because a shared CI disk can stall an fsync for seconds.
const CALL_DEADLINE: Duration = Duration::from_secs(15);
/// How long a client may go on retrying its last message once the load has stopped.
const FINISH_DEADLINE: Duration = Duration::from_secs(60);

async fn connect(address: std::net::SocketAddr, pki: &Pki) -> Option<Channel> {
    bcss_sim::client::connect(address, pki, "solidaris", "hub.bcss.test")
        .await
        .ok()
}

async fn wait_ready(address: std::net::SocketAddr, pki: &Pki, root: &Path) {
    let start = Instant::now();
    while connect(address, pki).await.is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(root.join("hub.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "the hub did not come up; the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the clients counted besides their answers.
#[derive(Default)]
struct Calls {
    /// Every call made, retries included.
    attempts: AtomicUsize,
    /// Calls that reached their deadline, with no answer nor error, across a kill of the hub:
    /// the client library lost the killed connection's end; the call is made again.
    stalled: AtomicUsize,
    /// Calls that reached their deadline while the same hub ran throughout: the hub's fault.
    unanswered_by_live_hub: AtomicUsize,
    /// Bumped as each kill begins and again once the restarted hub is ready: a call that sees it
    /// unchanged from start to deadline had one live hub throughout.
    hub_changes: AtomicUsize,
}

/// One client: sends messages about its persons one after another, retrying each (same
/// message id) until it is answered, as a real sender does. Each call has a deadline; once the
/// load has stopped, the message in hand must be answered within [`FINISH_DEADLINE`].
async fn client(
    number: usize,
    persons: Vec<Niss>,
    address: std::net::SocketAddr,
    pki: Arc<Pki>,
    stop: Arc<AtomicBool>,
    calls: Arc<Calls>,
) -> Answered {
    let mut answered = Answered::new();
    let mut channel: Option<Channel> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let niss = persons[n as usize % persons.len()];
        let id = format!("client{number}-{n}");
        let envelope = a052_envelope(&id, niss, n);
        let mut stopped_at: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < FINISH_DEADLINE,
                    "message {id} still unanswered {} s after the load stopped",
                    FINISH_DEADLINE.as_secs()
                );
            }
            calls.attempts.fetch_add(1, Ordering::Relaxed);
            if channel.is_none() {
                channel = connect(address, &pki).await;
            }
            let Some(open) = channel.clone() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let request = tonic::Request::new(envelope.clone());
            let hub_before = calls.hub_changes.load(Ordering::SeqCst);
            let mut gateway = GatewayClient::new(open);
            match tokio::time::timeout(CALL_DEADLINE, gateway.submit(request)).await {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    let ids = reply
                        .recipients
                        .iter()
                        .filter(|r| !r.delivery_id.is_empty())
                        .map(|r| r.delivery_id.clone())
                        .collect();
                    answered.push((id, niss, reply.ticket, ids));
                    break;
                }
                // Codes only the hub's judgement of the message gives: a recovery that
                // misreads what it recorded (the message id taken by "another" message, say),
                // not a connection cut by a kill.
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        tonic::Code::InvalidArgument
                            | tonic::Code::AlreadyExists
                            | tonic::Code::NotFound
                            | tonic::Code::PermissionDenied
                            | tonic::Code::FailedPrecondition
                            | tonic::Code::Unauthenticated
                    ) =>
                {
                    panic!("message {id} refused across a restart: {status:?}");
                }
                Ok(Err(_)) => {
                    channel = None;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                Err(_) => {
                    let counter = match calls.hub_changes.load(Ordering::SeqCst) == hub_before {
                        true => &calls.unanswered_by_live_hub,
                        false => &calls.stalled,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    channel = None;
                }
            }
        }
        n += 1;
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_ticket_is_delivered_exactly_once_in_order_across_sigkills() {
    let kills: usize = std::env::var("BCSS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let persons: Vec<Niss> = (0..CLIENTS as u16 * PERSONS_PER_CLIENT)
        .map(|i| fresh_niss(100 + i))
        .collect();
    let (site, held) = new_site(&persons).await;
    let Site {
        root,
        address,
        pki,
        network,
    } = site;
    drop(held);
    let mut hub = spawn_hub(root.path());
    wait_ready(address, &pki, root.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Calls::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mine =
                persons[c * PERSONS_PER_CLIENT as usize..][..PERSONS_PER_CLIENT as usize].to_vec();
            tokio::spawn(client(
                c,
                mine,
                address,
                pki.clone(),
                stop.clone(),
                calls.clone(),
            ))
        })
        .collect();
    // The pauses between kills, drawn from a seed that a failure report names
    // (BCSS_CRASH_SEED=… replays them; the clients' timing is the machine's).
    let seed: u64 = std::env::var("BCSS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("BCSS_CRASH_SEED={seed}");
    let mut pauses = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..kills {
        let pause = pauses.random_range(150..700);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        calls.hub_changes.fetch_add(1, Ordering::SeqCst);
        hub.kill().expect("SIGKILL");
        hub.wait().unwrap();
        hub = spawn_hub(root.path());
        wait_ready(address, &pki, root.path()).await;
        calls.hub_changes.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = Answered::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }

    let expected: HashSet<String> = answered
        .iter()
        .flat_map(|(_, _, _, ids)| ids.iter().cloned())
        .collect();
    let arrived = || {
        RECIPIENTS
            .iter()
            .map(|r| network.inbox(r).len())
            .sum::<usize>()
    };
    let waiting = Instant::now();
    while arrived() < expected.len() && waiting.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any stray late delivery arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The last stop is graceful: SIGTERM, and the hub exits cleanly within its grace period.
    let terminated = Command::new("kill")
        .args(["-TERM", &hub.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let asked = Instant::now();
    let exit = loop {
        if let Some(status) = hub.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the hub did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "a clean exit on SIGTERM: {exit:?}");

    let mut received = HashSet::new();
    let mut duplicates = 0;
    let mut out_of_order = 0;
    let order: HashMap<&str, usize> = answered
        .iter()
        .enumerate()
        .map(|(i, (_, _, ticket, _))| (ticket.as_str(), i))
        .collect();
    for recipient in RECIPIENTS {
        let inbox = network.inbox(recipient);
        duplicates += inbox.duplicates();
        let mut last_per_person: HashMap<String, usize> = HashMap::new();
        for delivery in inbox.deliveries() {
            received.insert(delivery.delivery_id.clone());
            if let Some(position) = order.get(delivery.ticket.as_str()) {
                let last = last_per_person.entry(delivery.niss.clone()).or_insert(0);
                if *position < *last {
                    out_of_order += 1;
                }
                *last = (*last).max(*position);
            }
        }
    }
    let lost = expected.difference(&received).count();
    let unanswered = received.difference(&expected).count();
    let ids: HashSet<&str> = answered.iter().map(|(id, ..)| id.as_str()).collect();
    println!(
        "crash test: {kills} SIGKILLs, {} calls ({} stalled to their deadline), {} answered \
         tickets, {} deliveries expected, {} delivered, {duplicates} duplicates dropped by recipients, {lost} lost, \
         {unanswered} delivered but never answered, {out_of_order} out of order",
        calls.attempts.load(Ordering::Relaxed),
        calls.stalled.load(Ordering::Relaxed),
        answered.len(),
        expected.len(),
        received.len(),
    );
    assert_eq!(
        calls.unanswered_by_live_hub.load(Ordering::Relaxed),
        0,
        "calls a running hub left unanswered for {} s",
        CALL_DEADLINE.as_secs()
    );
    assert_eq!(ids.len(), answered.len(), "one ticket per message id");
    assert!(answered.len() > kills, "the load went on across the kills");
    if lost > 0 {
        let kept = root.keep();
        panic!(
            "{lost} deliveries lost; the hub's folder is kept in {}",
            kept.display()
        );
    }
    assert_eq!(unanswered, 0, "deliveries of tickets never answered");
    assert_eq!(out_of_order, 0, "deliveries out of order for a person");
}

/// A hub killed, then its data file damaged as a disk that lost its last writes would leave it
/// (both commit slots failing their checksums; redb's header: the god byte at 9, bit 2 set
/// while a hub has the file open, the slots at 64 and 192, each ending with a 16-byte
/// checksum): the next start is refused, naming the file and what to do, and changes nothing
/// in it. Put back as it was, the file opens and the accepted ticket is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_file_keeps_the_hub_from_starting_and_is_left_as_it_was() {
    let person = fresh_niss(90);
    let (site, held) = new_site(&[person]).await;
    let (root, address, pki) = (&site.root, site.address, &site.pki);
    drop(held);

    let mut hub = spawn_hub(root.path());
    wait_ready(address, pki, root.path()).await;
    let mut gateway = GatewayClient::new(connect(address, pki).await.unwrap());
    let ticket = gateway
        .submit(a052_envelope("damaged-file-1", person, 1))
        .await
        .unwrap()
        .into_inner()
        .ticket;
    hub.kill().expect("SIGKILL");
    hub.wait().unwrap();

    let file = root.path().join("data/hub.redb");
    let intact = std::fs::read(&file).unwrap();
    assert_ne!(
        intact[9] & 2,
        0,
        "a killed hub leaves the file marked for repair"
    );
    let mut damaged = intact.clone();
    damaged[64 + 112] ^= 0xff;
    damaged[192 + 112] ^= 0xff;
    std::fs::write(&file, &damaged).unwrap();

    let log_before = std::fs::read_to_string(root.path().join("hub.log")).unwrap();
    let mut refused = spawn_hub(root.path());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            refused.kill().unwrap();
            panic!("the hub started on a damaged data file");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{status}");
    let log = std::fs::read_to_string(root.path().join("hub.log")).unwrap();
    let said = &log[log_before.len()..];
    assert!(
        said.contains("data/hub.redb is damaged")
            && said.contains("restore the data folder from its backup"),
        "{said}"
    );
    assert!(!said.contains(&person.digits()), "{said}");
    assert!(
        std::fs::read(&file).unwrap() == damaged,
        "the refused start changed the file"
    );

    std::fs::write(&file, &intact).unwrap();
    let mut hub = spawn_hub(root.path());
    wait_ready(address, pki, root.path()).await;
    let mut gateway = GatewayClient::new(connect(address, pki).await.unwrap());
    let tracked = gateway
        .track(bcss_proto::hub::v1::TrackRequest {
            ticket: ticket.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let hops: Vec<&str> = tracked.hops.iter().map(|h| h.ticket.as_str()).collect();
    assert_eq!(hops, [ticket.as_str()]);
    hub.kill().expect("SIGKILL");
    hub.wait().unwrap();
}
