//! Starting keyd: backend, policy, guard, audit, the Unix socket, and the gRPC server
//! (keyd.v1, health checking, reflection), until SIGTERM or SIGINT.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyd_proto::v1;
use keyd_proto::v1::keyd_server::KeydServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::audit::AuditLog;
use crate::backend::software::SoftwareBackend;
use crate::backend::Backend;
use crate::config::{BackendKind, Config};
use crate::guard::SequenceGuard;
use crate::policy::Policy;
use crate::service::{KeydApi, KeydService, Recipient, ServiceConfig};

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

/// Builds the service from the configuration.
pub fn build_service(config: &Config, backend: Arc<dyn Backend>) -> Result<KeydService, String> {
    let policy = Policy::load(&config.policy).map_err(|e| e.to_string())?;
    let did =
        stream::package::did_of_address(&stream::package::address_of(&backend.identity_public()));
    let guard = SequenceGuard::open(
        &config.state_dir,
        &did,
        config.sequence_reserve,
        config.max_sequence_jump,
    )
    .map_err(|e| e.to_string())?;
    let audit = AuditLog::open(&config.audit_log)
        .map_err(|e| format!("audit log {}: {e}", config.audit_log.display()))?;
    let recipients = config
        .recipients
        .iter()
        .map(|r| {
            Ok(Recipient {
                id: r.id.clone(),
                recipient_type: r.recipient_type.clone(),
                public_key_hex: r.public_key_hex.clone(),
                public_key: stream::keys::parse_x25519_public_hex(
                    "public_key_hex",
                    &r.public_key_hex,
                )
                .map_err(|e| e.to_string())?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(KeydService::new(
        backend,
        ServiceConfig {
            policy,
            guard,
            audit,
            identity_key_id: config.identity_key_id.clone(),
            chain_key_id: config.chain_key_id.clone(),
            recipients,
            max_batch: config.max_batch,
        },
    ))
}

fn chown_group(path: &Path, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, None, Some(gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))
}

/// Binds the socket: its directory 0750, the socket 0660, a stale socket replaced.
fn bind_socket(config: &Config) -> Result<UnixListener, String> {
    let socket = &config.socket;
    let dir = socket.parent().ok_or("socket path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(socket).map_err(|e| format!("{}: {e}", socket.display()))?
        }
        Ok(_) => return Err(format!("{} exists and is not a socket", socket.display())),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("bind {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    if let Some(group) = &config.socket_group {
        let gid = crate::policy::lookup_group(group)
            .ok_or_else(|| format!("socket_group: no such group {group:?}"))?;
        chown_group(dir, gid)?;
        chown_group(socket, gid)?;
    }
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Serves until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> Result<(), String> {
    let backend = load_backend(&config)?;
    let info = backend.info();
    if config.backend == BackendKind::Software {
        tracing::warn!("SOFTWARE BACKEND: the keys are in a file on disk ({}). For development only; production keys belong in a TPM or a PKCS#11 token.",
            config.software.as_ref().map(|s| s.key_file.display().to_string()).unwrap_or_default());
    }
    if !info.memory_locked {
        tracing::warn!("key memory could not be locked (mlock); raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)");
    }
    let service = Arc::new(build_service(&config, backend)?);
    let listener = bind_socket(&config)?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KeydServer<KeydApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    let keyd = KeydServer::new(KeydApi(Arc::clone(&service)))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);

    tracing::info!(did = service.did(), socket = %config.socket.display(), backend = info.detail, "keyd serving");
    // One shutdown signal for both listeners.
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
    };
    let unix = builder()
        .add_service(health_service.clone())
        .add_service(reflection)
        .add_service(keyd.clone())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped(stop_rx.clone()));
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
    service.sync_audit();
    let _ = std::fs::remove_file(&config.socket);
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
