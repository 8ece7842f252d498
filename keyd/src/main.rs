//! keyd: the key daemon.
//!
//!   keyd init --config FILE [--force]    provision keys, print the DID and public keys
//!   keyd run --config FILE               serve on the configured Unix socket
//!   keyd identity --socket PATH [--json] ask a running keyd who it is
//!   keyd audit verify FILE               check an audit log's hash chain

use keyd::{audit, backend, config, harden, server};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Provision the configured backend's keys; prints the DID and public keys.
    Init {
        #[arg(long)]
        config: PathBuf,
        /// Replace existing keys (the old identity is lost).
        #[arg(long)]
        force: bool,
    },
    /// Serve until SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
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
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain; names the first bad line.
    Verify { file: PathBuf },
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
    let result = match cli.command {
        Command::Init { config, force } => init(&config, force),
        Command::Run { config } => run(&config),
        Command::Status { config } => status(&config),
        Command::Identity { socket, json } => identity(&socket, json),
        Command::Audit(AuditCommand::Verify { file }) => match audit::verify(&file) {
            Ok(lines) => {
                eprintln!(
                    "\u{2713} {}: {lines} lines, hash chain intact",
                    file.display()
                );
                Ok(())
            }
            Err(e) => Err((1, format!("{}: {e}", file.display()))),
        },
    };
    if let Err((code, message)) = result {
        eprintln!("error: {message}");
        std::process::exit(code);
    }
}

type CmdResult = Result<(), (i32, String)>;

fn input(message: impl std::fmt::Display) -> (i32, String) {
    (2, message.to_string())
}

fn init(path: &std::path::Path, force: bool) -> CmdResult {
    let config = config::Config::load(path).map_err(input)?;
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
    let address = stream::package::address_of(&backend.identity_public());
    let summary = serde_json::json!({
        "did": stream::package::did_of_address(&address),
        "identityPublicKeyHex": hex::encode(backend.identity_public().to_encoded_point(false).as_bytes()),
        "chainPublicKeyHex": hex::encode(backend.chain_public()),
        "machineBoxPublicKeyHex": hex::encode(backend.box_public()),
        "backend": backend.info().detail,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(())
}

fn status(path: &std::path::Path) -> CmdResult {
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

fn run(path: &std::path::Path) -> CmdResult {
    harden::harden_process().map_err(|e| (1, e))?;
    let config = config::Config::load(path).map_err(input)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keyd")
        .build()
        .map_err(|e| (1, e.to_string()))?;
    runtime.block_on(server::serve(config)).map_err(|e| (1, e))
}

fn identity(socket: &std::path::Path, json: bool) -> CmdResult {
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
