//! Development keys: a fresh identity, chain key, field key and the X25519 keys of the
//! roles (owner, operator, machine, buyer), written as hex files. `peaqos keys generate` and
//! `keyd dev up` both make them here; production keys live in keyd's backend.

use std::path::Path;

use crate::keys::{write_secret_file, BoxKey, ChainKey, IdentityKey, KeyError, Secret32};

/// The roles that get an X25519 (sealed box) key pair, in the order they are written.
pub const BOX_ROLES: [&str; 4] = ["owner", "operator", "machine", "buyer"];

/// The public halves of what [`write_development_keys`] wrote.
#[derive(Debug, Clone)]
pub struct DevelopmentKeys {
    /// The identity's DID (`did:peaq:0x…`).
    pub did: String,
    /// The secp256k1 identity public key, hex.
    pub identity_public_hex: String,
    /// The Ed25519 chain public key, hex.
    pub chain_public_hex: String,
    /// Each role of [`BOX_ROLES`] with its X25519 public key, hex.
    pub box_public_hex: Vec<(&'static str, String)>,
}

/// Writes new development keys into `dir` (created if missing): `identity.key` (0x-prefixed),
/// `chain.key`, `field.key` and `{role}.key` for each role (all 0600, never overwritten),
/// with `identity.did`, `identity.pub`, `chain.pub` and `{role}.pub` beside them.
pub fn write_development_keys(dir: &Path) -> Result<DevelopmentKeys, KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let write_public = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{text}\n")).map_err(|source| KeyError::Write {
            path: path.display().to_string(),
            source,
        })
    };

    // The identity key must be a valid secp256k1 scalar; retry on the (negligible) odd draw.
    let (identity_secret, identity) = loop {
        let secret = Secret32::random()?;
        if let Ok(key) = IdentityKey::from_secret(&secret) {
            break (secret, key);
        }
    };
    write_secret_file(&dir.join("identity.key"), &identity_secret, true)?;
    let did = identity.did();
    write_public("identity.did", &did)?;
    write_public("identity.pub", &identity.public_key_hex())?;

    let chain_secret = Secret32::random()?;
    let chain = ChainKey::from_secret(&chain_secret);
    write_secret_file(&dir.join("chain.key"), &chain_secret, false)?;
    write_public("chain.pub", &chain.public_key_hex())?;

    let mut box_public_hex = Vec::with_capacity(BOX_ROLES.len());
    for role in BOX_ROLES {
        let secret = Secret32::random()?;
        let public = BoxKey::from_secret(&secret).public_key_hex();
        write_secret_file(&dir.join(format!("{role}.key")), &secret, false)?;
        write_public(&format!("{role}.pub"), &public)?;
        box_public_hex.push((role, public));
    }
    write_secret_file(&dir.join("field.key"), &Secret32::random()?, false)?;

    Ok(DevelopmentKeys {
        did,
        identity_public_hex: identity.public_key_hex(),
        chain_public_hex: chain.public_key_hex(),
        box_public_hex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::read_secret_file;

    #[test]
    fn writes_every_file_once_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let keys = write_development_keys(dir.path()).unwrap();
        assert!(keys.did.starts_with("did:peaq:0x"));
        let owner = read_secret_file(&dir.path().join("owner.key"), "owner key").unwrap();
        assert_eq!(
            BoxKey::from_secret(&owner).public_key_hex(),
            keys.box_public_hex[0].1
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("chain.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = write_development_keys(dir.path()).unwrap_err().to_string();
        assert!(again.contains("identity.key"), "{again}");
    }
}
