//! Who may do what: every request is authorized by the caller's Unix credentials
//! (SO_PEERCRED, and the supplementary groups of SO_PEERGROUPS) or, on the TCP listener,
//! its client certificate, against a policy file. Default deny.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// The operations a policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Identity,
    SignPackages,
    SignChunkHashes,
    NewChunkKeys,
    Grant,
    EncryptFields,
    SignDataset,
}

impl Operation {
    /// Every operation, in the API's order.
    pub const ALL: [Operation; 7] = [
        Operation::Identity,
        Operation::SignPackages,
        Operation::SignChunkHashes,
        Operation::NewChunkKeys,
        Operation::Grant,
        Operation::EncryptFields,
        Operation::SignDataset,
    ];

    /// The operation a gRPC method of `keyd.v1.Keyd` performs (`None` for other services:
    /// health checking and reflection).
    pub fn of_grpc_path(path: &str) -> Option<Operation> {
        let method = path.strip_prefix("/keyd.v1.Keyd/")?;
        Some(match method {
            "Identity" => Operation::Identity,
            "SignPackages" | "SignPackagesStream" => Operation::SignPackages,
            "SignChunkHashes" => Operation::SignChunkHashes,
            "NewChunkKeys" => Operation::NewChunkKeys,
            "Grant" => Operation::Grant,
            "EncryptFields" => Operation::EncryptFields,
            "SignDataset" => Operation::SignDataset,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Identity => "identity",
            Operation::SignPackages => "sign_packages",
            Operation::SignChunkHashes => "sign_chunk_hashes",
            Operation::NewChunkKeys => "new_chunk_keys",
            Operation::Grant => "grant",
            Operation::EncryptFields => "encrypt_fields",
            Operation::SignDataset => "sign_dataset",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    groups: Vec<String>,
    /// TCP callers: SHA-256 (hex) of their client certificate (DER).
    #[serde(default)]
    client_certs: Vec<String>,
    operations: Vec<Operation>,
}

/// One resolved grant: callers matching any uid or gid may perform the operations.
#[derive(Debug, Clone)]
struct Grant {
    uids: HashSet<u32>,
    gids: HashSet<u32>,
    certs: HashSet<String>,
    operations: HashSet<Operation>,
}

/// The loaded policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    grants: Vec<Grant>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("policy {path}: {message}")]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let error = |message: String| PolicyError {
            path: path.display().to_string(),
            message,
        };
        crate::files::check_trusted(path).map_err(|e| error(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let file: PolicyFile = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        let mut grants = Vec::new();
        for (i, rule) in file.allow.into_iter().enumerate() {
            let mut uids: HashSet<u32> = rule.uids.into_iter().collect();
            for user in &rule.users {
                uids.insert(
                    lookup_user(user)
                        .ok_or_else(|| error(format!("allow[{i}]: no such user {user:?}")))?,
                );
            }
            let mut gids: HashSet<u32> = rule.gids.into_iter().collect();
            for group in &rule.groups {
                gids.insert(
                    lookup_group(group)
                        .ok_or_else(|| error(format!("allow[{i}]: no such group {group:?}")))?,
                );
            }
            let mut certs = HashSet::new();
            for cert in &rule.client_certs {
                let hex = cert
                    .strip_prefix("sha256:")
                    .unwrap_or(cert)
                    .to_ascii_lowercase();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(error(format!(
                        "allow[{i}]: client_certs entry {cert:?} is not a SHA-256 fingerprint (64 hex digits)"
                    )));
                }
                certs.insert(hex);
            }
            if uids.is_empty() && gids.is_empty() && certs.is_empty() {
                return Err(error(format!(
                    "allow[{i}]: names no uid, user, gid, group or client certificate"
                )));
            }
            grants.push(Grant {
                uids,
                gids,
                certs,
                operations: rule.operations.into_iter().collect(),
            });
        }
        Ok(Policy { grants })
    }

    /// Whether the TCP caller whose certificate has this SHA-256 (lowercase hex) may
    /// perform `operation`.
    pub fn allows_cert(&self, fingerprint: &str, operation: Operation) -> bool {
        self.grants
            .iter()
            .any(|g| g.certs.contains(fingerprint) && g.operations.contains(&operation))
    }

    /// Whether a caller with these credentials (uid, primary gid, supplementary groups) may
    /// perform `operation`.
    pub fn allows(&self, uid: u32, gid: u32, groups: &[u32], operation: Operation) -> bool {
        self.grants
            .iter()
            .any(|g| g.operations.contains(&operation) && Self::matches(g, uid, gid, groups))
    }

    /// Whether the policy allows these credentials anything at all (callers it allows
    /// nothing are turned away when they connect).
    pub fn allows_anything(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        self.grants
            .iter()
            .any(|g| !g.operations.is_empty() && Self::matches(g, uid, gid, groups))
    }

    fn matches(grant: &Grant, uid: u32, gid: u32, groups: &[u32]) -> bool {
        grant.uids.contains(&uid)
            || grant.gids.contains(&gid)
            || groups.iter().any(|g| grant.gids.contains(g))
    }
}

fn lookup_user(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we read one field at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    (!entry.is_null()).then(|| unsafe { (*entry).pw_uid })
}

/// The gid of a group name.
pub(crate) fn lookup_group(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer to static storage or null; we read one field at once.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    (!entry.is_null()).then(|| unsafe { (*entry).gr_gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_deny_and_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[[allow]]\nuids = [1000]\noperations = [\"sign_packages\", \"identity\"]\n[[allow]]\nusers = [\"root\"]\noperations = [\"grant\"]\n").unwrap();
        let policy = Policy::load(&path).unwrap();
        assert!(policy.allows(1000, 5, &[], Operation::SignPackages));
        assert!(!policy.allows(1000, 5, &[], Operation::Grant));
        assert!(policy.allows(0, 0, &[], Operation::Grant));
        assert!(!policy.allows(1001, 1001, &[], Operation::Identity));
        assert!(!policy.allows_anything(1001, 1001, &[5, 6]));
        std::fs::write(
            &path,
            "[[allow]]\nuids = [1]\noperations = [\"sign_everything\"]\n",
        )
        .unwrap();
        let err = Policy::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("sign_everything") && err.contains("p.toml"),
            "{err}"
        );
        std::fs::write(&path, "[[allow]]\noperations = [\"identity\"]\n").unwrap();
        assert!(Policy::load(&path)
            .unwrap_err()
            .to_string()
            .contains("names no uid"));
        assert!(Policy::load(&dir.path().join("missing.toml")).is_err());
        std::fs::write(&path, "").unwrap();
        assert!(!Policy::load(&path)
            .unwrap()
            .allows(0, 0, &[], Operation::Identity));
    }

    /// A group in the policy matches a caller who has it as a supplementary group, not only
    /// as its primary group.
    #[test]
    fn supplementary_groups_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[[allow]]\ngids = [4242]\noperations = [\"grant\"]\n",
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        assert!(policy.allows(1000, 4242, &[], Operation::Grant));
        assert!(policy.allows(1000, 1000, &[27, 4242], Operation::Grant));
        assert!(!policy.allows(1000, 1000, &[27], Operation::Grant));
        assert!(policy.allows_anything(1000, 1000, &[4242]));
    }

    #[test]
    fn grpc_paths_name_operations() {
        assert_eq!(
            Operation::of_grpc_path("/keyd.v1.Keyd/SignPackagesStream"),
            Some(Operation::SignPackages)
        );
        assert_eq!(
            Operation::of_grpc_path("/grpc.health.v1.Health/Check"),
            None
        );
        assert_eq!(Operation::of_grpc_path("/keyd.v1.Keyd/SignAnything"), None);
        for (method, op) in [
            ("Identity", Operation::Identity),
            ("SignPackages", Operation::SignPackages),
            ("SignChunkHashes", Operation::SignChunkHashes),
            ("NewChunkKeys", Operation::NewChunkKeys),
            ("Grant", Operation::Grant),
            ("EncryptFields", Operation::EncryptFields),
        ] {
            assert_eq!(
                Operation::of_grpc_path(&format!("/keyd.v1.Keyd/{method}")),
                Some(op)
            );
        }
    }
}
