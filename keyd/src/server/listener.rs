//! The Unix socket: binding it, and accepting connections within bounds.
//!
//! - A socket that still answers is never replaced (another keyd is serving it).
//! - Each connection is identified once, at accept: SO_PEERCRED (uid, gid, pid) and
//!   SO_PEERGROUPS (supplementary groups). A uid over its connection cap, or any caller
//!   over the global cap, is closed at once; a caller the policy allows nothing may hold
//!   one connection (to be told why each request is denied).
//! - A connection that sends nothing for `header_timeout` after connecting, or nothing for
//!   `idle_timeout` later, is closed.
//! - Accept errors (EMFILE at the descriptor limit) back off instead of spinning.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::policy::Policy;
use crate::service::Caller;

/// Bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Binds the socket: its directory 0750, the socket 0660 (group `socket_gid` if given). A
/// stale socket (nothing answers) is replaced; a live one is refused.
pub fn bind(socket: &Path, socket_gid: Option<u32>) -> Result<UnixListener, String> {
    let dir = socket.parent().ok_or("socket path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(format!(
                    "{} is served by another process (another keyd?): refusing to take it over",
                    socket.display()
                ));
            }
            std::fs::remove_file(socket).map_err(|e| format!("{}: {e}", socket.display()))?
        }
        Ok(_) => return Err(format!("{} exists and is not a socket", socket.display())),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("bind {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    if let Some(gid) = socket_gid {
        for path in [dir, socket] {
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
    }
    Ok(listener)
}

/// The supplementary groups of the peer (SO_PEERGROUPS, Linux 4.13+): those it had when it
/// connected.
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let fd = stream.as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(error);
    }
}

/// Open connections per uid.
#[derive(Debug, Default)]
struct Counts(Mutex<HashMap<u32, usize>>);

/// Holds a uid's place in the counts while its connection lives.
#[derive(Debug)]
struct Slot {
    counts: Arc<Counts>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// An accepted connection: the stream, who is on the other end, and its place in the caps.
pub struct Connection {
    stream: UnixStream,
    caller: Caller,
    _slot: Slot,
    _permit: tokio::sync::OwnedSemaphorePermit,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    /// Until the peer sends something, only `header_timeout` applies (keyd's own first
    /// writes do not extend it).
    heard: bool,
}

impl Connected for Connection {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl Connection {
    fn touch(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.heard = true;
                    self.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        if self.heard && matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` within `limits`, forever, as a stream for tonic.
pub fn incoming(
    listener: UnixListener,
    limits: Limits,
    policy: Policy,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let global = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let counts = Arc::new(Counts::default());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    stream
                }
                Err(e) => {
                    // EMFILE/ENFILE (descriptor limit), ENOBUFS, ENOMEM: wait, do not spin.
                    tracing::warn!("accept on keyd's socket failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(connection) = admit(stream, &limits, &policy, &global, &counts) else {
                continue;
            };
            if tx.send(Ok(connection)).await.is_err() {
                return; // the server stopped
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Identifies an accepted stream and takes its places in the caps; `None` closes it.
fn admit(
    stream: UnixStream,
    limits: &Limits,
    policy: &Policy,
    global: &Arc<tokio::sync::Semaphore>,
    counts: &Arc<Counts>,
) -> Option<Connection> {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::warn!("no peer credentials on a connection ({e}): closed");
            return None;
        }
    };
    let (uid, gid) = (cred.uid(), cred.gid());
    let groups = match peer_groups(&stream) {
        Ok(groups) => groups,
        Err(e) => {
            tracing::warn!(uid, "no peer groups on a connection ({e}): closed");
            return None;
        }
    };
    // A caller the policy allows nothing keeps one connection, to hear why it is denied.
    let cap = if policy.allows_anything(uid, gid, &groups) {
        limits.max_connections_per_uid
    } else {
        1
    };
    let Ok(permit) = Arc::clone(global).try_acquire_owned() else {
        tracing::warn!(
            uid,
            max = limits.max_connections,
            "too many connections to keyd: closed"
        );
        return None;
    };
    {
        let mut open = counts.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(uid).or_insert(0);
        if *n >= cap {
            tracing::warn!(uid, max = cap, "too many connections from one uid: closed");
            return None;
        }
        *n += 1;
    }
    Some(Connection {
        stream,
        caller: Caller {
            uid: Some(uid),
            gid: Some(gid),
            groups: groups.into(),
            pid: cred.pid(),
            cert: None,
        },
        _slot: Slot {
            counts: Arc::clone(counts),
            uid,
        },
        _permit: permit,
        deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
        idle: limits.idle_timeout,
        heard: false,
    })
}
