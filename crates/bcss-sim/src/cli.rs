//! The `bcss-hub` command line: serve, check-config, demo, certs, generate-directory,
//! directory, institution, deadletters, journal, load.

use std::path::PathBuf;

use bcss_gateway::startup;
use bcss_policy::{Policy, Settings};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bcss-hub",
    version,
    about = "A message-routing gateway playing the Crossroads Bank for Social Security."
)]
pub struct Cli {
    /// Log lines as text for people (the default) or as one JSON object per line for
    /// collectors. Levels come from RUST_LOG (e.g. `RUST_LOG=bcss_gateway=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the hub on a configuration folder.
    Serve {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
    },
    /// Validates the whole configuration folder and says what it loaded.
    CheckConfig {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
    },
    /// Starts the hub and the simulated institutions on loopback, plays a realistic mix of
    /// flows, and reports per flow and deliberation.
    Demo {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
        /// How many first-hop messages to submit (CAPELO relays come on top).
        #[arg(long, default_value_t = 600)]
        messages: usize,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Leave the hub and the institutions running after the report.
        #[arg(long)]
        keep_running: bool,
    },
    /// Creates the development CA and a key and certificate for the hub and every institution.
    Certs {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
    },
    /// Writes a reproducible persons directory for the sample network to standard output.
    GenerateDirectory {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        persons: usize,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// Exports or imports the hub's persons directory (its snapshot in the data folder);
    /// generates and measures national-scale snapshots.
    Directory {
        #[command(subcommand)]
        action: crate::directory_tool::DirectoryAction,
    },
    /// Lists, shows or replays the dead letters of the running hub, with an operator's
    /// certificate.
    Deadletters {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
        /// The `[[operator]]` (with the operator role) whose certificate to present.
        #[arg(long = "as", default_value = "hub-operations")]
        operator: String,
        /// The hub's address; `server.listen` of the configuration when absent.
        #[arg(long)]
        hub: Option<std::net::SocketAddr>,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Reads and audits the journal of the running hub, with an auditor's certificate (or an
    /// institution's, for its own exchanges).
    Journal {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
        /// Whose certificate to present: an `[[operator]]` with the auditor role, or an
        /// institution.
        #[arg(long = "as", default_value = "security-adviser")]
        party: String,
        /// The hub's address; `server.listen` of the configuration when absent.
        #[arg(long)]
        hub: Option<std::net::SocketAddr>,
        #[command(subcommand)]
        action: JournalAction,
    },
    /// Runs one reference institution server and prints every delivery it receives.
    Institution {
        #[arg(long, default_value = "config/hub.toml")]
        config: PathBuf,
        /// The institution's id in institutions.toml.
        #[arg(long)]
        id: String,
        /// Listen here instead of the institution's configured endpoint.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Plain HTTP/2 without TLS, accepting any caller: load baselines only.
        #[arg(long)]
        plain: bool,
        /// Count deliveries instead of printing them (load runs); the count is printed on exit.
        #[arg(long)]
        quiet: bool,
    },
    /// Drives Submit (or Institution.Deliver, for baselines) with a mix of flows and reports
    /// throughput, latency percentiles, errors and deliveries.
    Load(Box<crate::load::LoadArgs>),
}

/// What to do with dead letters.
#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// The dead letters, oldest first.
    List {
        /// Only those after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One dead letter (never its payload).
    Show { seq: u64 },
    /// Puts a dead letter back in its recipient's queue.
    Replay { seq: u64 },
}

/// What to read from the journal.
#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Entries by person (`--niss`), by ticket (`--ticket`, the whole chain), or by institution
    /// and time range (`--institution`, `--from`, `--to`).
    Query {
        #[arg(long)]
        niss: Option<String>,
        #[arg(long)]
        ticket: Option<String>,
        #[arg(long)]
        institution: Option<String>,
        /// YYYY-MM-DD or RFC 3339.
        #[arg(long, default_value = "")]
        from: String,
        #[arg(long, default_value = "")]
        to: String,
    },
    /// Walks the hash chain and the sealed checkpoints; names the first entry changed, removed
    /// or reordered.
    Verify,
    /// Consultations without a prior integration check whose contact file does not justify
    /// them (16/046).
    AuditPosteriori {
        #[arg(long, default_value = "")]
        from: String,
        #[arg(long, default_value = "")]
        to: String,
    },
    /// A reproducible random sample of deliveries per receiving institution.
    Sample {
        #[arg(long, default_value_t = 5)]
        per_institution: u32,
        #[arg(long, default_value = "")]
        from: String,
        #[arg(long, default_value = "")]
        to: String,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn init_logs(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// SIGHUP reloads the policy, as `Admin.ReloadPolicy` does; a refused reload is logged and the
/// running policy stays.
fn reload_on_sighup(hub: std::sync::Arc<bcss_gateway::Hub>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!(message = "SIGHUP cannot be watched; reload with Admin.ReloadPolicy.");
            return;
        };
        while hangups.recv().await.is_some() {
            if let Err(error) = hub.reload().await {
                tracing::warn!(message = "Policy reload refused; the running policy stays.", %error);
            }
        }
    });
    #[cfg(not(unix))]
    let _ = hub;
}

/// Runs the command line; the binary's `main` only calls this.
pub async fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            init_logs("info", cli.log_format);
            let assembled = startup::assemble(&config, |_| {})?;
            let listener = tokio::net::TcpListener::bind(assembled.settings.server.listen).await?;
            tracing::info!(message = "Hub listening.", address = %listener.local_addr()?);
            reload_on_sighup(assembled.hub.clone());
            if let Some(listen) = assembled.settings.metrics.listen {
                bcss_gateway::telemetry::serve(listen, assembled.hub.clone())?;
            }
            let hub = assembled.hub.clone();
            let grace =
                std::time::Duration::from_millis(assembled.settings.server.shutdown_grace_ms);
            let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
            let signal = stopping.clone();
            let server = bcss_gateway::server::run(
                assembled.hub,
                listener,
                assembled.options,
                async move {
                    stop_signal().await;
                    tracing::info!(
                        message = "Stopping: health says NOT_SERVING; calls are taken for the drain notice, then only the ones in flight finish.",
                        drain_notice_ms = assembled.settings.server.drain_notice_ms,
                        grace_ms = grace.as_millis() as u64
                    );
                    signal.notify_one();
                },
            );
            tokio::select! {
                served = server => served?,
                _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
                    tracing::warn!(message = "Grace period over; stopping with calls still in flight (nothing they were answered is lost).");
                }
            }
            if let Some(snapshots) = assembled.snapshots {
                match tokio::task::spawn_blocking(move || snapshots.save_if_changed()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::error!(
                        message = "The directory snapshot could not be written: run-time changes since the last one are lost.",
                        %error
                    ),
                    Err(_) => tracing::error!(message = "The directory snapshot task failed."),
                }
            }
            tracing::info!(
                message = "Hub stopped.",
                pending_deliveries = hub.outbox().pending(),
            );
        }
        Command::CheckConfig { config } => {
            init_logs("warn", cli.log_format);
            let settings = Settings::load(&config)?;
            let policy = Policy::load(&settings)?;
            let directory = startup::load_directory(&settings.files.directory, &policy)?;
            println!("Configuration {} is valid:", config.display());
            println!(
                "  {} sectors, {} institutions",
                policy.sectors().len(),
                policy.institutions().len()
            );
            for deliberation in policy.deliberations() {
                let flows: Vec<String> = deliberation
                    .flows
                    .iter()
                    .map(|flow| {
                        format!(
                            "{flow} ({} fields)",
                            policy
                                .grant(deliberation, *flow)
                                .map_or(0, |g| g.paths.len())
                        )
                    })
                    .collect();
                println!(
                    "  deliberation {}: {}; {}",
                    deliberation.id,
                    deliberation.title,
                    flows.join(", ")
                );
            }
            println!(
                "  directory: {} persons, {} integrations",
                directory.persons(),
                directory.integration_count()
            );
        }
        Command::Demo {
            config,
            messages,
            seed,
            keep_running,
        } => {
            init_logs("warn", cli.log_format);
            let options = crate::demo::DemoOptions {
                messages,
                seed,
                keep_running,
                ephemeral_ports: false,
                progress: true,
                metrics: true,
            };
            crate::demo::run(&config, options).await?;
        }
        Command::Certs { config } => {
            init_logs("info", cli.log_format);
            let settings = Settings::load(&config)?;
            let policy = Policy::load(&settings)?;
            startup::ensure_pki(&settings, &policy)?;
            println!("Development PKI in {}", settings.tls.pki.display());
        }
        Command::GenerateDirectory {
            config,
            persons,
            seed,
        } => {
            let settings = Settings::load(&config)?;
            let policy = Policy::load(&settings)?;
            let rows = crate::network::generate(&policy, persons, seed);
            print!("{}", crate::network::to_csv(&rows, persons, seed));
        }
        Command::Directory { action } => {
            init_logs("warn", cli.log_format);
            crate::directory_tool::run(action)?;
        }
        Command::Deadletters {
            config,
            operator,
            hub,
            action,
        } => {
            init_logs("warn", cli.log_format);
            dead_letters(&config, &operator, hub, action).await?;
        }
        Command::Journal {
            config,
            party,
            hub,
            action,
        } => {
            init_logs("warn", cli.log_format);
            journal(&config, &party, hub, action).await?;
        }
        Command::Load(args) => {
            init_logs("warn", cli.log_format);
            crate::load::run(*args).await?;
        }
        Command::Institution {
            config,
            id,
            listen,
            plain,
            quiet,
        } => {
            init_logs("info", cli.log_format);
            let settings = Settings::load(&config)?;
            let policy = Policy::load(&settings)?;
            let pki = startup::ensure_pki(&settings, &policy)?;
            let institution = policy
                .institution_by_id(&id)
                .ok_or_else(|| format!("no institution \"{id}\" in the configuration"))?;
            let listener = match listen {
                Some(address) => tokio::net::TcpListener::bind(address).await?,
                None => tokio::net::TcpListener::bind(&institution.endpoint).await?,
            };
            let inbox = if quiet {
                crate::institution::Inbox::counting()
            } else {
                crate::institution::Inbox::default()
            };
            let server = crate::institution::ReferenceInstitution::new(
                id.clone(),
                inbox.clone(),
                settings.tls.hub_name.clone(),
            );
            println!(
                "Institution {id} listening on {} ({}); deliveries are {}.",
                listener.local_addr()?,
                if plain { "plain HTTP/2" } else { "mutual TLS" },
                if quiet {
                    "counted"
                } else {
                    "printed as they arrive"
                }
            );
            if plain {
                crate::institution::serve_plain(server, listener, stop_signal()).await?;
                println!(
                    "Institution {id} received {} deliveries ({} duplicates).",
                    inbox.len(),
                    inbox.duplicates()
                );
                return Ok(());
            }
            let pair = pki.party(&id)?;
            let shown_inbox = inbox.clone();
            let printer = tokio::spawn(async move {
                if quiet {
                    std::future::pending::<()>().await;
                }
                let mut shown = 0;
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    for delivery in inbox.deliveries().into_iter().skip(shown) {
                        shown += 1;
                        println!("{delivery:#?}");
                    }
                }
            });
            crate::institution::serve(
                server,
                listener,
                tonic::transport::Identity::from_pem(pair.cert, pair.key),
                tonic::transport::Certificate::from_pem(pki.ca_cert()?),
                stop_signal(),
            )
            .await?;
            printer.abort();
            println!(
                "Institution {id} received {} deliveries ({} duplicates).",
                shown_inbox.len(),
                shown_inbox.duplicates()
            );
        }
    }
    Ok(())
}

async fn dead_letters(
    config: &std::path::Path,
    operator: &str,
    hub: Option<std::net::SocketAddr>,
    action: DeadLetterAction,
) -> Result<(), Error> {
    use bcss_proto::hub::v1::admin_client::AdminClient;
    use bcss_proto::hub::v1::{DeadLetter, DeadLetterRequest, ListDeadLettersRequest};
    let settings = Settings::load(config)?;
    let pki = bcss_gateway::pki::Pki::new(&settings.tls.pki);
    let address = hub.unwrap_or(settings.server.listen);
    let channel = crate::client::connect(address, &pki, operator, &settings.tls.hub_name).await?;
    let mut admin = AdminClient::new(channel);
    let show = |d: &DeadLetter| {
        println!("dead letter {}", d.seq);
        println!("  delivery id   {}", d.delivery_id);
        println!("  ticket        {}", d.ticket);
        println!("  recipient     {}", d.recipient);
        println!("  state         {}", d.state);
        println!("  accepted at   {}", d.accepted_at);
        println!("  attempts      {}", d.attempts);
        println!("  last error    {}", d.last_error);
        println!("  given up      {}", d.reason);
        println!(
            "  payload       {} bytes (kept for replay, not shown)",
            d.payload_bytes
        );
    };
    match action {
        DeadLetterAction::List { after, limit } => {
            let reply = admin
                .list_dead_letters(ListDeadLettersRequest { after, limit })
                .await?
                .into_inner();
            let mut table = comfy_table::Table::new();
            table.set_header([
                "seq",
                "recipient",
                "ticket",
                "attempts",
                "accepted at",
                "why",
            ]);
            for d in &reply.dead_letters {
                table.add_row([
                    d.seq.to_string(),
                    d.recipient.clone(),
                    d.ticket.clone(),
                    d.attempts.to_string(),
                    d.accepted_at.clone(),
                    d.reason.clone(),
                ]);
            }
            println!("{table}");
            println!("{} dead letters", reply.dead_letters.len());
        }
        DeadLetterAction::Show { seq } => {
            show(
                &admin
                    .show_dead_letter(DeadLetterRequest { seq })
                    .await?
                    .into_inner(),
            );
        }
        DeadLetterAction::Replay { seq } => {
            let reply = admin
                .replay_dead_letter(DeadLetterRequest { seq })
                .await?
                .into_inner();
            if let Some(d) = &reply.dead_letter {
                show(d);
            }
            println!(
                "{}",
                if reply.requeued {
                    "Requeued for delivery."
                } else {
                    "Not a dead letter any more: nothing to replay."
                }
            );
        }
    }
    Ok(())
}

async fn journal(
    config: &std::path::Path,
    party: &str,
    hub: Option<std::net::SocketAddr>,
    action: JournalAction,
) -> Result<(), Error> {
    use bcss_proto::hub::v1::journal_client::JournalClient;
    use bcss_proto::hub::v1::{
        AuditPosterioriRequest, ByInstitutionRequest, ByPersonRequest, ByTicketRequest,
        JournalRecord, SampleRequest, VerifyRequest,
    };
    let settings = Settings::load(config)?;
    let pki = bcss_gateway::pki::Pki::new(&settings.tls.pki);
    let address = hub.unwrap_or(settings.server.listen);
    let channel = crate::client::connect(address, &pki, party, &settings.tls.hub_name).await?;
    let mut journal = JournalClient::new(channel);
    let print = |records: &[JournalRecord]| {
        let mut table = comfy_table::Table::new();
        table.set_header([
            "#",
            "at",
            "kind",
            "ticket",
            "sender",
            "recipient",
            "deliberation",
            "reason",
        ]);
        for r in records {
            table.add_row([
                r.number.to_string(),
                r.at.clone(),
                r.kind.clone(),
                r.ticket.clone(),
                r.sender.clone(),
                r.recipient.clone(),
                r.deliberation.clone(),
                r.reason.clone(),
            ]);
        }
        println!("{table}");
        println!("{} entries", records.len());
    };
    match action {
        JournalAction::Query {
            niss,
            ticket,
            institution,
            from,
            to,
        } => {
            let records = match (niss, ticket, institution) {
                (Some(niss), None, None) => {
                    journal
                        .by_person(ByPersonRequest { niss })
                        .await?
                        .into_inner()
                        .records
                }
                (None, Some(ticket), None) => {
                    journal
                        .by_ticket(ByTicketRequest { ticket })
                        .await?
                        .into_inner()
                        .records
                }
                (None, None, Some(institution)) => {
                    journal
                        .by_institution(ByInstitutionRequest {
                            institution,
                            from,
                            to,
                        })
                        .await?
                        .into_inner()
                        .records
                }
                _ => return Err("give exactly one of --niss, --ticket, --institution".into()),
            };
            print(&records);
        }
        JournalAction::Verify => {
            let report = journal.verify(VerifyRequest {}).await?.into_inner();
            println!(
                "{} entries ({} removed by retention, hashes kept), {} sealed checkpoints",
                report.entries, report.removed_by_retention, report.checkpoints
            );
            if report.intact {
                println!("The chain is intact.");
            } else {
                return Err(format!("The chain is broken: {}", report.problem).into());
            }
        }
        JournalAction::AuditPosteriori { from, to } => {
            let audit = journal
                .audit_posteriori(AuditPosterioriRequest { from, to })
                .await?
                .into_inner();
            let mut table = comfy_table::Table::new();
            table.set_header([
                "#",
                "at",
                "ticket",
                "consulted by",
                "contact file",
                "problem",
            ]);
            for finding in &audit.findings {
                let c = finding.consultation.clone().unwrap_or_default();
                table.add_row([
                    c.number.to_string(),
                    c.at,
                    c.ticket,
                    c.recipient,
                    c.contact_file,
                    finding.problem.clone(),
                ]);
            }
            println!("{table}");
            println!(
                "{} consultations without a prior check examined, {} unjustified",
                audit.examined,
                audit.findings.len()
            );
        }
        JournalAction::Sample {
            per_institution,
            from,
            to,
            seed,
        } => {
            let records = journal
                .sample(SampleRequest {
                    per_institution,
                    from,
                    to,
                    seed,
                })
                .await?
                .into_inner()
                .records;
            print(&records);
        }
    }
    Ok(())
}
