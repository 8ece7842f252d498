//! Region, endpoint and credentials for S3, resolved as the reference resolves them: a flag
//! first, then `PEAQOS_S3_*`, then the standard AWS variables. Instance metadata is never
//! asked (a robot is no EC2 instance, and a test must not reach a link-local address).

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::StoreError;

/// An access key: the secret is wiped on drop and never shown by `Debug`.
#[derive(Clone)]
pub struct Credentials {
    /// The access key id (not secret).
    pub access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// An access key pair (and an optional session token).
    pub fn new(access_key_id: String, secret: String, session_token: Option<String>) -> Self {
        Credentials {
            access_key_id,
            secret_access_key: Zeroizing::new(secret),
            session_token: session_token.map(Zeroizing::new),
        }
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret_access_key
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.session_token.as_deref().map(String::as_str)
    }

    /// `PEAQOS_S3_ACCESS_KEY_ID` + `PEAQOS_S3_SECRET_ACCESS_KEY` (both or neither), else
    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), else `None`.
    pub fn from_env() -> Result<Option<Credentials>, StoreError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (
            var("PEAQOS_S3_ACCESS_KEY_ID"),
            var("PEAQOS_S3_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => return Ok(Some(Credentials::new(id, secret, None))),
            (None, Some(_)) => {
                return Err(StoreError::Credentials(
                    "PEAQOS_S3_ACCESS_KEY_ID is required when PEAQOS_S3_SECRET_ACCESS_KEY is set"
                        .into(),
                ))
            }
            (Some(_), None) => {
                return Err(StoreError::Credentials(
                    "PEAQOS_S3_SECRET_ACCESS_KEY is required when PEAQOS_S3_ACCESS_KEY_ID is set"
                        .into(),
                ))
            }
            (None, None) => {}
        }
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                Ok(Some(Credentials::new(id, secret, var("AWS_SESSION_TOKEN"))))
            }
            (None, None) => Ok(None),
            _ => Err(StoreError::Credentials(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set one without the other".into(),
            )),
        }
    }

    /// A credentials file (YAML or JSON: `access_key_id`, `secret_access_key`, optional
    /// `session_token`) that only its owner, the user reading it, may read.
    pub fn from_file(path: &Path) -> Result<Credentials, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let shown = path.display().to_string();
        let bad = |reason: String| StoreError::CredentialsFile {
            path: shown.clone(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        let me = effective_uid();
        if meta.uid() != me {
            return Err(bad(format!(
                "owned by uid {}, not by the user reading it (uid {me})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o}: others may read it (chmod 600)",
                meta.mode() & 0o777
            )));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            access_key_id: String,
            secret_access_key: String,
            #[serde(default)]
            session_token: Option<String>,
        }
        // Errors name the line and the key, never a value (a parser's message may quote one).
        let file: File = stream::mapfile::from_text(&text, &shown).map_err(|e| {
            let at = match (e.line, e.key.is_empty()) {
                (0, true) => String::new(),
                (0, false) => format!("{}: ", e.key),
                (line, true) => format!("line {line}: "),
                (line, false) => format!("line {line}: {}: ", e.key),
            };
            bad(format!(
                "{at}not a credentials file (access_key_id, secret_access_key and an optional session_token, as strings)"
            ))
        })?;
        Ok(Credentials::new(
            file.access_key_id,
            file.secret_access_key,
            file.session_token,
        ))
    }
}

#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// How to reach an S3-compatible service.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// The region (`--s3-region`, `PEAQOS_S3_REGION`, `AWS_REGION`, `AWS_DEFAULT_REGION`,
    /// else `us-east-1`).
    pub region: Option<String>,
    /// A custom endpoint (`--s3-endpoint`, `PEAQOS_S3_ENDPOINT`, `AWS_ENDPOINT_URL_S3`,
    /// `AWS_ENDPOINT_URL`): path-style addressing; without one, AWS with virtual hosts.
    pub endpoint: Option<String>,
    /// The access key.
    pub credentials: Option<Credentials>,
}

impl S3Settings {
    /// The reference's resolution: flags, then `PEAQOS_S3_*`, then AWS's variables.
    pub fn resolve(region: Option<&str>, endpoint: Option<&str>) -> Result<S3Settings, StoreError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let region = region
            .map(str::to_string)
            .or_else(|| var("PEAQOS_S3_REGION"))
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"));
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| var("PEAQOS_S3_ENDPOINT"))
            .or_else(|| var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| var("AWS_ENDPOINT_URL"));
        Ok(S3Settings {
            region,
            endpoint,
            credentials: Credentials::from_env()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credentials::new(
            "AKID".into(),
            "very-secret-value".into(),
            Some("tok".into()),
        );
        let shown = format!("{c:?}");
        assert!(shown.contains("AKID") && !shown.contains("very-secret") && !shown.contains("tok"));
    }

    #[test]
    fn credentials_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.yaml");
        std::fs::write(&path, "access_key_id: AK\nsecret_access_key: s3cr3t\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::from_file(&path).unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret()), ("AK", "s3cr3t"));
        std::fs::write(&path, "access_key_id: AK\nsecret: s3cr3t\n").unwrap();
        let e = Credentials::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("line ") && !e.contains("s3cr3t"), "{e}");
    }
}
