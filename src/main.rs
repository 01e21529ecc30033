//! The `tollgate` command line. No logic here: parse, configure, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::config::Config;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A supply-chain gate: serves only allowlisted, hash-pinned packages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gate.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and every allowlist file.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Exit 0 when the gate at URL answers /healthz (a container's health check, with no
    /// shell or curl in the image).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Allowlist tools.
    Allowlist {
        #[command(subcommand)]
        command: AllowlistCommand,
    },
    /// Image tools.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Admin API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The verified cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Sigstore tools.
    Sigstore {
        #[command(subcommand)]
        command: SigstoreCommand,
    },
    /// The offline OSV vulnerability database.
    Osv {
        #[command(subcommand)]
        command: OsvCommand,
    },
}

#[derive(Subcommand)]
enum OsvCommand {
    /// Replace the [vulnerabilities] database with FILE_OR_URL (a zip or directory of OSV
    /// records, e.g. the OSV project's PyPI/all.zip), checked whole first.
    Update {
        source: String,
        /// Accept a database with fewer than half the PyPI advisories of the one it replaces.
        #[arg(long)]
        allow_shrink: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Hash every cached file against its name; exit 1 naming each that does not match.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SigstoreCommand {
    /// Verify a Sigstore bundle for an artifact, offline (the sigstore-conformance client
    /// protocol); exit 0 only when it verifies for that identity or key.
    VerifyBundle {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, requires = "certificate_oidc_issuer", conflicts_with = "key")]
        certificate_identity: Option<String>,
        #[arg(long, requires = "certificate_identity")]
        certificate_oidc_issuer: Option<String>,
        /// A PEM public key (instead of an identity).
        #[arg(long, required_unless_present = "certificate_identity")]
        key: Option<PathBuf>,
        /// A trusted_root.json; without it, the Sigstore root embedded at build time.
        #[arg(long)]
        trusted_root: Option<PathBuf>,
        /// The embedded staging root instead of production.
        #[arg(long, conflicts_with = "trusted_root")]
        staging: bool,
        /// The artifact's file, or sha256:<hex> of it.
        artifact: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint an admin API token (shown once, stored only as its SHA-256).
    Create {
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: Option<String>,
        /// e.g. 90d; without it the token does not expire.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's chain against its signed checkpoints; exit 1 naming what was
    /// rewritten, removed or forged.
    Verify {
        /// A file holding checkpoints kept outside the store (a log file of the gate, or
        /// checkpoint JSON lines); may be given more than once.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// A checkpoint key's public half (PEM), beside the configured key (an auditor's copy,
        /// or a key used before a rotation); may be given more than once.
        #[arg(long)]
        public_key: Vec<PathBuf>,
        /// Where the archive is, when it was moved from data_dir/audit-archive.
        #[arg(long)]
        archive: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the entries of a time range (archive and store), as JSON lines with the
    /// checkpoints that cover them.
    Export {
        /// Unix seconds, 2026-12-01 or 2026-12-01T10:00:00Z.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write witness_file from the store's newest signed checkpoint, after verifying the log
    /// (once, when witness_file is newly configured; with the gate stopped).
    WitnessInit {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the checkpoint key's public key (PEM), for auditors.
    PublicKey {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Resolve REF through the configured registry and print the decision with every reason.
    Verify {
        reference: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AllowlistCommand {
    /// Print [[package]] rules for a hash-pinned requirements.txt or pylock.toml.
    Import {
        file: PathBuf,
        /// Fill each rule's publisher from its files' verified PEP 740 provenance (fetched
        /// from the config's default index, verified under its trusted_root).
        #[arg(long)]
        publisher_from_provenance: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Tell, line by line, whether a requirements.txt or pylock.toml would install through the gate.
    Check {
        file: PathBuf,
        #[arg(long, conflicts_with = "gate")]
        config: Option<PathBuf>,
        /// Ask this running gate (its base URL, e.g. https://tollgate.internal) instead of
        /// reading the allowlists: no config file or store needed.
        #[arg(long)]
        gate: Option<String>,
    },
}

fn config(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    Config::locate(path.map(|p| p.as_path())).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}

fn main() -> ExitCode {
    // Before any TLS configuration or HTTP client exists (each also installs it, as a backstop).
    tollgate::fetch::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config: path } => {
            let cfg = match config(path.as_ref()) {
                Ok(c) => c,
                Err(e) => return e,
            };
            init_tracing();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(async move {
                let state = match tollgate::AppState::open(cfg) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(1);
                    }
                };
                match tollgate::server::serve(state).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(1)
                    }
                }
            })
        }
        Command::Health { url } => code(tollgate::cli::health(&url)),
        Command::Check { config: path } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::check(&c)),
            Err(e) => e,
        },
        Command::Image {
            command:
                ImageCommand::Verify {
                    reference,
                    config: path,
                },
        } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::image_verify(&c, &reference)),
            Err(e) => e,
        },
        Command::Token {
            command:
                TokenCommand::Create {
                    role,
                    name,
                    expires,
                    config: path,
                },
        } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::token_create(
                &c,
                &role,
                name.as_deref(),
                expires.as_deref(),
            )),
            Err(e) => e,
        },
        Command::Audit {
            command:
                AuditCommand::Verify {
                    checkpoint,
                    public_key,
                    archive,
                    config: path,
                },
        } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::audit_verify(
                &c,
                &checkpoint,
                &public_key,
                archive.as_deref(),
            )),
            Err(e) => e,
        },
        Command::Audit {
            command:
                AuditCommand::Export {
                    since,
                    until,
                    config: path,
                },
        } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::audit_export(
                &c,
                since.as_deref(),
                until.as_deref(),
            )),
            Err(e) => e,
        },
        Command::Audit {
            command: AuditCommand::PublicKey { config: path },
        } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::audit_public_key(&c)),
            Err(e) => e,
        },
        Command::Audit {
            command: AuditCommand::WitnessInit { config: path },
        } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::audit_witness_init(&c)),
            Err(e) => e,
        },
        Command::Cache {
            command: CacheCommand::Verify { config: path },
        } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::cache_verify(&c)),
            Err(e) => e,
        },
        Command::Sigstore {
            command:
                SigstoreCommand::VerifyBundle {
                    bundle,
                    certificate_identity,
                    certificate_oidc_issuer,
                    key,
                    trusted_root,
                    staging,
                    artifact,
                },
        } => code(tollgate::cli::sigstore_verify_bundle(
            &tollgate::cli::VerifyBundle {
                bundle,
                identity: certificate_identity,
                issuer: certificate_oidc_issuer,
                key,
                trusted_root,
                staging,
                artifact,
            },
        )),
        Command::Osv {
            command:
                OsvCommand::Update {
                    source,
                    allow_shrink,
                    config: path,
                },
        } => match config(path.as_ref()) {
            Ok(c) => code(tollgate::cli::osv_update(&c, &source, allow_shrink)),
            Err(e) => e,
        },
        Command::Allowlist { command } => match command {
            AllowlistCommand::Import {
                file,
                publisher_from_provenance: true,
                config: path,
            } => match config(path.as_ref()) {
                Ok(c) => code(tollgate::cli::import_with_publishers(&c, &file)),
                Err(e) => e,
            },
            AllowlistCommand::Import { file, .. } => code(tollgate::cli::import(&file)),
            AllowlistCommand::Check {
                file,
                gate: Some(gate),
                ..
            } => code(tollgate::cli::allowlist_check_gate(&gate, &file)),
            AllowlistCommand::Check {
                file, config: path, ..
            } => match config(path.as_ref()) {
                Ok(c) => code(tollgate::cli::allowlist_check(&c, &file)),
                Err(e) => e,
            },
        },
    }
}

/// Logs to stderr; `TOLLGATE_LOG=json` for JSON lines, `RUST_LOG` to filter.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal, and never with NO_COLOR (no-color.org): a log file or a
    // collector gets plain text it can search.
    let json = std::env::var("TOLLGATE_LOG").is_ok_and(|v| v == "json");
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(move || tollgate::logs::OneLine {
            out: std::io::stderr(),
            clip: !json,
        });
    if json {
        b.json().init();
    } else {
        b.init();
    }
}
