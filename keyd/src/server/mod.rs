//! Starting keyd: the state lock, backend, guard, audit log and ledger, the Unix socket, and
//! the gRPC server (keyd.v1, health checking, reflection) behind the gate, until SIGTERM or
//! SIGINT.

pub mod gate;
pub mod listener;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyd_proto::v1;
use keyd_proto::v1::keyd_server::KeydServer;
use stream::local::RecipientSpec;

use crate::audit::{self, AuditLog};
use crate::backend::software::SoftwareBackend;
use crate::backend::Backend;
use crate::config::{BackendKind, Config};
use crate::files::StateLock;
use crate::guard::{GuardOptions, SequenceGuard};
use crate::ledger::{self, Ledger};
use crate::policy::Policy;
use crate::service::api::KeydApi;
use crate::service::{KeydService, ServiceConfig};

/// Loads the configured backend.
pub fn load_backend(config: &Config) -> Result<Arc<dyn Backend>, String> {
    match config.backend {
        BackendKind::Software => {
            let software = config
                .software
                .as_ref()
                .ok_or("backend = \"software\" needs [software] key_file")?;
            Ok(Arc::new(
                SoftwareBackend::load(&software.key_file).map_err(|e| e.to_string())?,
            ))
        }
        BackendKind::Pkcs11 => {
            let pkcs11 = config
                .pkcs11
                .as_ref()
                .ok_or("backend = \"pkcs11\" needs [pkcs11]")?;
            Ok(Arc::new(
                crate::backend::pkcs11::Pkcs11Backend::load(pkcs11).map_err(|e| e.to_string())?,
            ))
        }
        BackendKind::Tpm => {
            let tpm = config.tpm.as_ref().ok_or("backend = \"tpm\" needs [tpm]")?;
            Ok(Arc::new(
                crate::backend::tpm::TpmBackend::load(tpm).map_err(|e| e.to_string())?,
            ))
        }
    }
}

/// The DID of a backend's identity key.
pub fn did_of(backend: &dyn Backend) -> String {
    stream::package::did_of_address(&stream::package::address_of(&backend.identity_public()))
}

/// The configured recipients, each key checked (never a low-order point).
pub fn recipients(config: &Config) -> Result<Vec<RecipientSpec>, String> {
    config
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            RecipientSpec::new(&r.id, &r.recipient_type, &r.public_key_hex)
                .map_err(|e| format!("recipients[{i}] ({}): public_key_hex: {}", r.id, e.reason))
        })
        .collect()
}

/// Builds the service from the configuration: every piece of durable state opened and
/// checked, or an error naming the one that is not right.
pub fn build_service(
    config: &Config,
    backend: Arc<dyn Backend>,
    sequence_floor: Option<u64>,
) -> Result<KeydService, String> {
    let policy = Policy::load(&config.policy).map_err(|e| e.to_string())?;
    let did = did_of(backend.as_ref());
    let guard = SequenceGuard::open(
        &config.state_dir,
        &did,
        GuardOptions {
            reserve: config.sequence_reserve,
            max_jump: config.max_sequence_jump,
            floor_override: sequence_floor,
            store: Arc::clone(&backend).ceiling_store(),
        },
    )
    .map_err(|e| e.to_string())?;
    let audit = AuditLog::open(
        &config.audit_log,
        &audit::checkpoint_path(&config.state_dir),
        backend.audit_key(),
    )
    .map_err(|e| format!("audit log: {e}"))?;
    let address = stream::package::address_of(&backend.identity_public());
    let ledger = Ledger::open(&ledger::ledger_path(&config.state_dir), &address)
        .map_err(|e| format!("chunk ledger: {e}"))?;
    Ok(KeydService::new(
        backend,
        ServiceConfig {
            policy,
            guard,
            audit,
            ledger,
            identity_key_id: config.identity_key_id.clone(),
            chain_key_id: config.chain_key_id.clone(),
            recipients: recipients(config)?,
            max_batch: config.max_batch,
            sync_each_request: config.audit_fsync_ms == 0,
        },
    ))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install the SIGTERM/SIGINT handlers; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit now.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Serves until SIGTERM/SIGINT. `sequence_floor`: the operator's `--sequence-floor`.
pub async fn serve(config: Config, sequence_floor: Option<u64>) -> Result<(), String> {
    // One keyd per state directory, for the process's life.
    let lock = StateLock::acquire(&config.state_dir).map_err(|e| e.to_string())?;
    let backend = load_backend(&config)?;
    let info = backend.info();
    if config.backend == BackendKind::Software {
        tracing::warn!("SOFTWARE BACKEND: the keys are in a file on disk ({}). For development only; production keys belong in a TPM or a PKCS#11 token.",
            config.software.as_ref().map(|s| s.key_file.display().to_string()).unwrap_or_default());
    }
    if !info.memory_locked {
        tracing::warn!("key memory could not be locked (mlock); raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)");
    }
    let service = Arc::new(build_service(&config, backend, sequence_floor)?);
    let flusher = (config.audit_fsync_ms > 0)
        .then(|| service.spawn_flusher(Duration::from_millis(config.audit_fsync_ms)));

    let nofile = raise_nofile();
    // Room for the state files, the token or TPM, and the TCP listener: no EMFILE at accept.
    let reserve = (nofile / 4).min(64);
    let max_connections = config
        .max_connections
        .min(nofile.saturating_sub(reserve).max(1) as usize);
    let socket_gid = match &config.socket_group {
        Some(group) => Some(
            crate::policy::lookup_group(group)
                .ok_or_else(|| format!("socket_group: no such group {group:?}"))?,
        ),
        None => None,
    };
    let listener = listener::bind(&config.socket, socket_gid)?;
    let limits = listener::Limits {
        max_connections,
        max_connections_per_uid: config.max_connections_per_uid,
        header_timeout: Duration::from_millis(config.header_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
    };
    let incoming = listener::incoming(listener, limits, service.policy().clone());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KeydServer<KeydApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| e.to_string())?;
    let keyd = KeydServer::new(KeydApi(Arc::clone(&service)))
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(config.max_request_bytes.max(64 << 20));
    let gate = gate::GateLayer::new(
        Arc::clone(&service),
        gate::BodyLimits::new(config.max_request_bytes, config.max_batch),
    );

    tracing::info!(did = service.did(), socket = %config.socket.display(), backend = info.detail, lock = %lock.path().display(), "keyd serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let builder = || {
        tonic::transport::Server::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .concurrency_limit_per_connection(config.max_concurrent_requests)
            .max_concurrent_streams(config.max_concurrent_requests as u32)
            .http2_max_header_list_size(16 * 1024)
            .layer(gate.clone())
    };
    let unix = builder()
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(keyd.clone())
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let result = match &config.tcp {
        None => unix.await.map_err(|e| e.to_string()),
        Some(tcp) => {
            let tls = tls_config(tcp)?;
            tracing::info!(listen = %tcp.listen, "keyd serving TCP with TLS; client certificates required");
            let tcp_server = builder()
                .tls_config(tls)
                .map_err(|e| format!("tcp: {e}"))?
                .add_service(health_service)
                .add_service(keyd)
                .serve_with_shutdown(tcp.listen, stopped(stop_rx));
            let (a, b) = tokio::join!(unix, tcp_server);
            a.map_err(|e| e.to_string())
                .and(b.map_err(|e| format!("tcp {}: {e}", tcp.listen)))
        }
    };
    drop(flusher);
    if let Err(e) = service.sync_durable() {
        tracing::error!("at shutdown: {e}");
    }
    let _ = std::fs::remove_file(&config.socket);
    drop(lock);
    result
}

/// rustls with a server identity and *required* client certificates from `client_ca`.
fn tls_config(tcp: &crate::config::TcpConfig) -> Result<tonic::transport::ServerTlsConfig, String> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| format!("tcp: {}: {e}", path.display()));
    let identity = tonic::transport::Identity::from_pem(read(&tcp.cert)?, read(&tcp.key)?);
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(tonic::transport::Certificate::from_pem(read(
            &tcp.client_ca,
        )?))
        .client_auth_optional(false))
}
