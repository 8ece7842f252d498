//! One module per command.

pub mod consume;
pub mod dataset;
pub mod distribute;
pub mod follow;
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

/// Who grants a buyer the chunk keys: keyd with the machine's box key (`--keyd`), or the
/// owner's key file.
pub fn granter(
    keyd: &Option<std::path::PathBuf>,
    owner_key_file: &Option<std::path::PathBuf>,
) -> Result<Box<dyn stream::signer::ChunkKeyGranter>, CliError> {
    match (keyd, owner_key_file) {
        (Some(_), Some(_)) => Err(CliError::Input(
            "--owner-private-key-file cannot be used with --keyd: keyd grants with the machine's key".into(),
        )),
        (Some(socket), None) => Ok(Box::new(connect_keyd(socket)?)),
        (None, file) => {
            let file = required(file, "--owner-private-key-file")?;
            Ok(Box::new(stream::local::LocalGranter::new(read_box_key(
                &file,
                "an X25519 private key",
            )?)))
        }
    }
}

/// Parses an Ed25519 public key given as hex.
pub fn parse_ed25519_public(flag: &str, text: &str) -> Result<[u8; 32], CliError> {
    stream::hexenc::decode_array::<32>(flag, text.trim()).map_err(input)
}
