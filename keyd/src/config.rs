//! keyd's configuration file (TOML). Unknown keys are errors naming the file and key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which backend holds the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A 0600 key file: development only.
    Software,
    /// A PKCS#11 token (SoftHSM in tests, an HSM or tpm2-pkcs11 in the field).
    Pkcs11,
    /// Keys sealed to a TPM 2.0.
    Tpm,
}

/// A recipient every chunk key is sealed to (besides the machine itself).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientConfig {
    pub id: String,
    #[serde(rename = "type")]
    pub recipient_type: String,
    pub public_key_hex: String,
}

/// The optional TCP listener: TLS (rustls), client certificates required, each caller
/// authorized by its certificate's SHA-256 in the policy (`client_certs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    pub listen: std::net::SocketAddr,
    /// Server certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that issues client certificates (PEM); the policy still names each one allowed.
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareConfig {
    /// The key file (mode 0600, owned by keyd's user).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub backend: BackendKind,
    /// Unix socket keyd listens on (its directory is made 0750, the socket 0660).
    pub socket: PathBuf,
    /// Group that owns the socket and its directory (default: keyd's own group).
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Authorization policy (default deny).
    pub policy: PathBuf,
    /// Where the sequence guard's state lives.
    pub state_dir: PathBuf,
    /// The audit log (one hash-chained JSON line per request).
    pub audit_log: PathBuf,
    /// `signingKeyId` of packages; default `{did}#keys-1`.
    #[serde(default)]
    pub identity_key_id: Option<String>,
    /// `keyId` of chunk signatures; default `{did}#keys-1` (as the reference CLI's examples).
    #[serde(default)]
    pub chain_key_id: Option<String>,
    /// Recipients of every chunk key besides the machine (`machine-1`, keyd's own box key).
    #[serde(default)]
    pub recipients: Vec<RecipientConfig>,
    /// Largest batch a request may carry.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Largest step one batch may move the sequence above the last number signed.
    #[serde(default = "default_max_sequence_jump")]
    pub max_sequence_jump: u64,
    /// How many sequence numbers to reserve per write of the guard's state.
    #[serde(default = "default_sequence_reserve")]
    pub sequence_reserve: u64,
    /// Requests (and streams) served at once on one connection.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// Per-request timeout, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest request body (signing packages, encrypting fields, granting), checked
    /// before it is decoded; smaller operations have smaller fixed bounds.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Connections open at once, in all (bounded further by the descriptor limit).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one uid.
    #[serde(default = "default_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
    /// A new connection that sends nothing for this long is closed, milliseconds.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed, milliseconds.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// The audit log (and the chunk ledger) are fsynced this often, milliseconds; records
    /// are written before every answer either way. 0: fsync before every answer.
    #[serde(default = "default_audit_fsync_ms")]
    pub audit_fsync_ms: u64,
    #[serde(default)]
    pub software: Option<SoftwareConfig>,
    #[serde(default)]
    pub pkcs11: Option<crate::backend::pkcs11::Pkcs11Config>,
    #[serde(default)]
    pub tpm: Option<crate::backend::tpm::TpmConfig>,
    #[serde(default)]
    pub tcp: Option<TcpConfig>,
}

fn default_max_batch() -> usize {
    4096
}
fn default_max_sequence_jump() -> u64 {
    1_000_000
}
fn default_sequence_reserve() -> u64 {
    4096
}
fn default_max_concurrent() -> usize {
    64
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_request_bytes() -> usize {
    32 << 20
}
fn default_max_connections() -> usize {
    256
}
fn default_max_connections_per_uid() -> usize {
    32
}
fn default_header_timeout_ms() -> u64 {
    5_000
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_audit_fsync_ms() -> u64 {
    100
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        crate::files::check_trusted(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let config: Config = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        for (name, value) in [
            ("max_batch", config.max_batch as u64),
            ("sequence_reserve", config.sequence_reserve),
            ("max_sequence_jump", config.max_sequence_jump),
            (
                "max_concurrent_requests",
                config.max_concurrent_requests as u64,
            ),
            ("max_request_bytes", config.max_request_bytes as u64),
            ("max_connections", config.max_connections as u64),
            (
                "max_connections_per_uid",
                config.max_connections_per_uid as u64,
            ),
            ("header_timeout_ms", config.header_timeout_ms),
            ("idle_timeout_ms", config.idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(format!("{name} must be positive")));
            }
        }
        crate::server::recipients(&config).map_err(invalid)?;
        if config.backend == BackendKind::Tpm && config.tpm.is_none() {
            return Err(invalid(
                "backend = \"tpm\" needs a [tpm] table with tcti and blob_dir".into(),
            ));
        }
        if config.backend == BackendKind::Pkcs11 && config.pkcs11.is_none() {
            return Err(invalid("backend = \"pkcs11\" needs a [pkcs11] table with token_label and pin_file or pin_env".into()));
        }
        if config.backend == BackendKind::Software && config.software.is_none() {
            return Err(invalid(
                "backend = \"software\" needs a [software] table with key_file".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example is a configuration keyd takes (and holds no placeholder keys).
    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/keyd.conf.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.backend, BackendKind::Software);
        assert!(config.recipients.is_empty());
        assert_eq!(config.max_sequence_jump, 1_000_000);
    }

    #[test]
    fn a_low_order_recipient_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.toml");
        std::fs::write(
            &path,
            format!(
                "backend = \"software\"\nsocket = \"/tmp/s\"\npolicy = \"/tmp/p\"\nstate_dir = \"/tmp/d\"\naudit_log = \"/tmp/a\"\n[software]\nkey_file = \"/tmp/k\"\n[[recipients]]\nid = \"owner-1\"\ntype = \"owner\"\npublic_key_hex = \"{}\"\n",
                "00".repeat(32)
            ),
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("recipients[0] (owner-1)") && err.contains("low-order"),
            "{err}"
        );
    }
}
