//! One module per command.

pub mod consume;
pub mod grant;
pub mod keys;
pub mod publish;
pub mod sign;
pub mod verify;
pub mod verify_packages;

use std::path::Path;

use stream::keys::{self as k, BoxKey, Secret32};

use crate::output::{input, CliError};

/// Reads a hex secret key file, naming the file (never the content) on failure.
pub fn read_key(path: &Path, what: &'static str) -> Result<Secret32, CliError> {
    k::read_secret_file(path, what).map_err(input)
}

/// Reads an X25519 private key file.
pub fn read_box_key(path: &Path, what: &'static str) -> Result<BoxKey, CliError> {
    Ok(BoxKey::from_secret(&read_key(path, what)?))
}

/// The value of a flag that is required unless `--keyd` is given.
pub fn required<T: Clone>(value: &Option<T>, flag: &str) -> Result<T, CliError> {
    value
        .clone()
        .ok_or_else(|| CliError::Input(format!("{flag} is required (or use --keyd SOCKET)")))
}

/// Connects to keyd.
pub fn connect_keyd(socket: &Path) -> Result<keyd_proto::client::KeydClient, CliError> {
    keyd_proto::client::KeydClient::connect(socket).map_err(input)
}

/// Parses an Ed25519 public key given as hex.
pub fn parse_ed25519_public(flag: &str, text: &str) -> Result<[u8; 32], CliError> {
    stream::hexenc::decode_array::<32>(flag, text.trim()).map_err(input)
}
