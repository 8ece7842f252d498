//! The connection to NATS: one or more servers (`nats://`, `tls://` through rustls),
//! optional credentials, reconnects with backoff counted for metrics.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use zeroize::Zeroizing;

use crate::FeedError;

/// Backoff between reconnect attempts: doubling from this ...
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// ... up to this.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Where the servers are and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSettings {
    /// The servers, as given: `nats://host:port` or `tls://…`, comma-separated.
    pub urls: String,
    /// A NATS `.creds` file (JWT and nkey seed), a file holding an nkey seed (`SU…`), or
    /// one holding a token; readable only by the user running the program.
    pub credentials: Option<PathBuf>,
    /// The connection's name, shown by the server (`edge-agent`, `peaqos follow`).
    pub name: String,
}

/// A connected client (it reconnects on its own after a disconnection).
pub struct Connection {
    /// The client.
    pub client: Client,
    /// Connections after the first.
    pub reconnects: Arc<AtomicU64>,
}

impl Connection {
    /// Whether the client is connected now (while it is not, a publisher should not hand it
    /// messages: the client would hold them until it reconnects).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// A comma-separated server list as it may be shown: a password or token written into a
/// URL (`nats://user:secret@host`) becomes `***`.
pub fn shown_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            match url.split_once("://") {
                Some((scheme, rest)) => match rest.split('/').next().and_then(|a| a.rfind('@')) {
                    Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                    None => url.to_string(),
                },
                None => url.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The servers of a comma-separated list, each checked.
pub fn server_addrs(what: &str, urls: &str) -> Result<Vec<ServerAddr>, FeedError> {
    let mut addrs = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        if !["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            return Err(FeedError::Setting {
                what: what.to_string(),
                reason: format!("{:?} is not a nats:// or tls:// URL", shown_urls(url)),
            });
        }
        addrs.push(url.parse::<ServerAddr>().map_err(|e| FeedError::Setting {
            what: what.to_string(),
            reason: format!("{:?}: {e}", shown_urls(url)),
        })?);
    }
    if addrs.is_empty() {
        return Err(FeedError::Setting {
            what: what.to_string(),
            reason: "names no server".into(),
        });
    }
    Ok(addrs)
}

/// How a credentials file logs in, read without ever showing its content.
async fn with_credentials(
    options: ConnectOptions,
    path: &Path,
) -> Result<ConnectOptions, FeedError> {
    let fail = |reason: String| FeedError::Credentials {
        path: path.display().to_string(),
        reason,
    };
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| fail(e.kind().to_string()))?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| fail(e.kind().to_string()))?
            .mode();
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "is readable by others (mode {:o}): chmod 600 it",
                mode & 0o777
            )));
        }
    }
    if text.contains("-----BEGIN NATS USER JWT-----") {
        return options
            .credentials_file(path)
            .await
            .map_err(|_| fail("is not a valid NATS .creds file".into()));
    }
    let secret = text.trim();
    if secret.is_empty() {
        return Err(fail("is empty".into()));
    }
    if secret.starts_with("SU") && !secret.contains(char::is_whitespace) {
        return Ok(options.nkey(secret.to_string()));
    }
    if secret.contains(char::is_whitespace) {
        return Err(fail(
            "is neither a .creds file, an nkey seed nor a token (it has several words)".into(),
        ));
    }
    Ok(options.token(secret.to_string()))
}

/// Connects; fails when no server answers (the caller retries), and reconnects with
/// backoff on its own after every disconnection.
pub async fn connect(settings: &FeedSettings, what: &str) -> Result<Connection, FeedError> {
    let addrs = server_addrs(what, &settings.urls)?;
    let reconnects = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicBool::new(false));
    let counter = reconnects.clone();
    let mut options = ConnectOptions::new()
        .name(&settings.name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            let shift = attempts.min(16) as u32;
            (RECONNECT_MIN * 2u32.saturating_pow(shift)).min(RECONNECT_MAX)
        })
        .event_callback(move |event| {
            let (seen, counter) = (seen.clone(), counter.clone());
            async move {
                if matches!(event, Event::Connected) && seen.swap(true, Ordering::Relaxed) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    if let Some(path) = &settings.credentials {
        options = with_credentials(options, path).await?;
    }
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| FeedError::nats(format!("connect to {}", shown_urls(&settings.urls)), e))?;
    Ok(Connection { client, reconnects })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_are_checked() {
        assert_eq!(
            server_addrs("url", "nats://127.0.0.1:4222, nats://127.0.0.1:4223")
                .unwrap()
                .len(),
            2
        );
        let e = server_addrs("outputs[0].nats.url", "http://x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outputs[0].nats.url") && e.contains("nats://"),
            "{e}"
        );
        assert!(server_addrs("url", " , ").is_err());
        let e = server_addrs("url", "http://alice:hunter2@h:1")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && e.contains("***@h:1"), "{e}");
        assert_eq!(
            shown_urls("nats://h:1, tls://tok3n@h:2/x"),
            "nats://h:1,tls://***@h:2/x"
        );
    }

    #[tokio::test]
    async fn a_credentials_file_is_never_shown() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hunter2-secret-token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = with_credentials(ConnectOptions::new(), &path)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("readable by others") && !e.contains("hunter2"),
            "{e}"
        );
        std::fs::write(&path, "two words hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = with_credentials(ConnectOptions::new(), &path)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither") && !e.contains("hunter2"), "{e}");
        std::fs::write(&path, "hunter2\n").unwrap();
        assert!(with_credentials(ConnectOptions::new(), &path).await.is_ok());
    }
}
