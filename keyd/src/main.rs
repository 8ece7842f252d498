//! keyd: the key daemon.
//!
//!   keyd init --config FILE [--force]         provision keys and the sequence state
//!   keyd run --config FILE [--sequence-floor N]  serve on the configured Unix socket
//!   keyd status --config FILE                 how the backend protects each key
//!   keyd identity --socket PATH [--json]      ask a running keyd who it is
//!   keyd audit verify --config FILE [--log F] check the audit log's keyed chain
//!   keyd dev up|restart|down [--dir DIR]      a throw-away development keyd

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use keyd::{audit, backend, config, guard, harden, ledger, server};

mod dev;

#[derive(Parser)]
#[command(
    name = "keyd",
    version,
    about = "The key daemon: keeps the machine's keys and uses each for its one purpose"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Provision the configured backend's keys and the sequence state; prints the DID and
    /// public keys.
    Init {
        #[arg(long)]
        config: PathBuf,
        /// Replace existing keys (the old identity is lost; its audit log and chunk ledger
        /// are moved aside).
        #[arg(long)]
        force: bool,
    },
    /// Serve until SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Continue the sequence above N when the sequence state is missing or was written
        /// for other keys (a wiped state directory while the token or TPM kept the keys).
        /// N must be at or above the last sequence number this machine signed.
        #[arg(long, value_name = "N")]
        sequence_floor: Option<u64>,
    },
    /// Report how the configured backend protects each key.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask a running keyd for its identity.
    Identity {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// A throw-away keyd for development and CI (SoftHSM, swtpm or a key file).
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Subcommand)]
enum DevCommand {
    /// Make development keys, a policy allowing you, a configuration and the backend's store
    /// (a fresh SoftHSM token, a fresh swtpm, or a key file) in DIR; provision and start
    /// keyd. Prints the socket's path as the last line.
    Up {
        #[arg(long, value_enum, default_value = "software")]
        backend: dev::DevBackend,
        /// Default: $KEYD_DEV_DIR, else ~/.cache/keyd-dev. Replaced if `keyd dev up` made it.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also allow this account (the edge agent's) everything but grant; the socket is
        /// given its primary group.
        #[arg(long, value_name = "USER")]
        agent_user: Option<String>,
        /// The PKCS#11 module of the pkcs11 backend.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/usr/lib/softhsm/libsofthsm2.so"
        )]
        pkcs11_module: PathBuf,
    },
    /// Stop keyd and start it again on the same keys and state.
    Restart {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Stay down this long in between.
        #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
        down_seconds: f64,
    },
    /// Stop keyd (and swtpm) and remove the directory.
    Down {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the keyed chain and the checkpoint: names the first bad line, a cut tail or a
    /// rewritten log. Needs the backend (the MAC key never leaves keyd).
    Verify {
        #[arg(long)]
        config: PathBuf,
        /// The log (default: the configured audit_log).
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYD_LOG")
                .unwrap_or_else(|_| "info,tss_esapi=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Every subcommand may hold key material (init makes keys; status, audit verify and run
    // load them): no core dumps, not dumpable, from the start.
    let result = harden::harden_process()
        .map_err(|e| (1, e))
        .and_then(|()| match cli.command {
            Command::Init { config, force } => init(&config, force),
            Command::Dev(DevCommand::Up {
                backend,
                dir,
                agent_user,
                pkcs11_module,
            }) => dev::up(dev::UpOptions {
                backend,
                dir: dir.unwrap_or_else(dev::default_dir),
                agent_user,
                pkcs11_module,
            }),
            Command::Dev(DevCommand::Restart { dir, down_seconds }) => {
                match std::time::Duration::try_from_secs_f64(down_seconds) {
                    Ok(down_for) => dev::restart(&dir.unwrap_or_else(dev::default_dir), down_for),
                    Err(_) => Err(input(format!(
                        "--down-seconds {down_seconds}: not a duration"
                    ))),
                }
            }
            Command::Dev(DevCommand::Down { dir }) => {
                dev::down(&dir.unwrap_or_else(dev::default_dir))
            }
            Command::Run {
                config,
                sequence_floor,
            } => run(&config, sequence_floor),
            Command::Status { config } => status(&config),
            Command::Identity { socket, json } => identity(&socket, json),
            Command::Audit(AuditCommand::Verify { config, log }) => audit_verify(&config, log),
        });
    if let Err((code, message)) = result {
        eprintln!("error: {message}");
        std::process::exit(code);
    }
}

type CmdResult<T = ()> = Result<T, (i32, String)>;

fn input(message: impl std::fmt::Display) -> (i32, String) {
    (2, message.to_string())
}

/// Moves `path` aside as `path.replaced-{time}` if it exists; returns where it went.
fn move_aside(path: &Path) -> Result<Option<PathBuf>, (i32, String)> {
    if !path.exists() {
        return Ok(None);
    }
    let stamp = stream::layout::utc_now_iso8601().replace(':', "");
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".replaced-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(|e| (1, format!("{}: {e}", path.display())))?;
    Ok(Some(aside))
}

fn init(path: &Path, force: bool) -> CmdResult {
    let summary = provision(path, force)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(())
}

/// Provisions the configured backend's keys and the sequence state; the DID and public keys.
fn provision(path: &Path, force: bool) -> CmdResult<serde_json::Value> {
    let config = config::Config::load(path).map_err(input)?;
    // Nothing may serve the old keys' state while it is replaced.
    let _lock =
        keyd::files::StateLock::acquire(&config.state_dir).map_err(|e| (1, e.to_string()))?;
    match config.backend {
        config::BackendKind::Software => {
            let software = config
                .software
                .as_ref()
                .ok_or_else(|| input("[software] key_file is missing"))?;
            backend::software::SoftwareBackend::generate(&software.key_file, force)
                .map_err(input)?;
        }
        config::BackendKind::Pkcs11 => {
            let pkcs11 = config
                .pkcs11
                .as_ref()
                .ok_or_else(|| input("[pkcs11] is missing"))?;
            backend::pkcs11::generate(pkcs11, force).map_err(input)?;
        }
        config::BackendKind::Tpm => {
            let tpm = config
                .tpm
                .as_ref()
                .ok_or_else(|| input("[tpm] is missing"))?;
            backend::tpm::generate(tpm, force).map_err(input)?;
        }
    }
    let backend = server::load_backend(&config).map_err(input)?;
    let did = server::did_of(backend.as_ref());
    // The state of the keys that were replaced (or of none) no longer applies.
    if guard::recorded_did(&config.state_dir).as_deref() != Some(did.as_str()) {
        let mut moved = Vec::new();
        for old in [
            config.audit_log.clone(),
            audit::checkpoint_path(&config.state_dir),
            ledger::ledger_path(&config.state_dir),
        ] {
            if let Some(to) = move_aside(&old)? {
                moved.push(to.display().to_string());
            }
        }
        if !moved.is_empty() {
            eprintln!(
                "keyd init: the old keys' audit log and ledger were moved aside: {}",
                moved.join(", ")
            );
        }
        guard::create(&config.state_dir, &did).map_err(|e| (1, e.to_string()))?;
    }
    let summary = serde_json::json!({
        "did": did,
        "identityPublicKeyHex": hex::encode(backend.identity_public().to_encoded_point(false).as_bytes()),
        "chainPublicKeyHex": hex::encode(backend.chain_public()),
        "machineBoxPublicKeyHex": backend.box_public().to_hex(),
        "backend": backend.info().detail,
    });
    Ok(summary)
}

fn status(path: &Path) -> CmdResult {
    let config = config::Config::load(path).map_err(input)?;
    let keys: Vec<serde_json::Value> = match config.backend {
        config::BackendKind::Pkcs11 => {
            let pkcs11 = config.pkcs11.as_ref().ok_or_else(|| input("[pkcs11] is missing"))?;
            backend::pkcs11::key_protection(pkcs11)
                .map_err(|e| (1, e.to_string()))?
                .into_iter()
                .map(|(key, protected)| {
                    serde_json::json!({"key": key, "inToken": true, "sensitive": protected, "extractable": !protected})
                })
                .collect()
        }
        config::BackendKind::Software => ["identity", "chain", "box", "field"]
            .iter()
            .map(|key| serde_json::json!({"key": key, "inToken": false, "sensitive": false, "extractable": true}))
            .collect(),
        // Sealed to the TPM, unsealed into keyd's locked memory: not extractable from the
        // TPM blob without the TPM (and its PCRs), but held in RAM while keyd runs.
        config::BackendKind::Tpm => ["identity", "chain", "box", "field"]
            .iter()
            .map(|key| serde_json::json!({"key": key, "inToken": false, "sealedToTpm": true, "sensitive": true, "extractable": false}))
            .collect(),
    };
    let protected = keys
        .iter()
        .all(|k| k["sensitive"] == true && k["extractable"] == false);
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({"backend": format!("{:?}", config.backend).to_lowercase(), "keys": keys})).unwrap_or_default());
    if protected {
        Ok(())
    } else {
        Err((1, "not every key is sensitive and non-extractable".into()))
    }
}

fn run(path: &Path, sequence_floor: Option<u64>) -> CmdResult {
    let config = config::Config::load(path).map_err(input)?;
    // Bounded threads (the unit's TasksMax): large batches go to the blocking pool.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keyd")
        .max_blocking_threads((4 * cores).max(8))
        .build()
        .map_err(|e| (1, e.to_string()))?;
    runtime
        .block_on(server::serve(config, sequence_floor))
        .map_err(|e| (1, e))
}

fn audit_verify(path: &Path, log: Option<PathBuf>) -> CmdResult {
    let config = config::Config::load(path).map_err(input)?;
    let backend = server::load_backend(&config).map_err(input)?;
    let log = log.unwrap_or_else(|| config.audit_log.clone());
    let checkpoint = audit::checkpoint_path(&config.state_dir);
    match audit::verify(&log, &checkpoint, backend.audit_key()) {
        Ok(verified) => {
            let covered = match verified.checkpointed {
                Some(n) => format!("the checkpoint covers {n}"),
                None => "no checkpoint: a cut tail cannot be detected".into(),
            };
            eprintln!(
                "\u{2713} {}: {} lines, keyed chain intact; {covered}",
                log.display(),
                verified.lines
            );
            Ok(())
        }
        Err(e) => Err((1, e.to_string())),
    }
}

fn identity(socket: &Path, json: bool) -> CmdResult {
    let client = keyd_proto::client::KeydClient::connect(socket).map_err(|e| (1, e.to_string()))?;
    let id = client.identity();
    let value = serde_json::json!({
        "did": id.did,
        "address": id.address,
        "identityPublicKeyHex": id.identity_public_key_hex,
        "identityKeyId": id.identity_key_id,
        "chainPublicKeyHex": id.chain_public_key_hex,
        "chainKeyId": id.chain_key_id,
        "machineBoxPublicKeyHex": id.machine_box_public_key_hex,
        "backend": id.backend,
        "backendDetail": id.backend_detail,
        "recipients": id.recipients.iter().map(|r| serde_json::json!({"recipientId": r.recipient_id, "recipientType": r.recipient_type, "publicKeyHex": r.public_key_hex})).collect::<Vec<_>>(),
        "nextSequenceNumber": id.next_sequence_number,
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!("{}", id.did);
        eprintln!(
            "backend {} ({}), next sequence number {}",
            id.backend, id.backend_detail, id.next_sequence_number
        );
    }
    Ok(())
}
