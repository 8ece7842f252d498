//! The service: what keyd does with a request once it is decoded.
//!
//! Every request takes one path: authorize (the caller against the policy; done by
//! [`crate::server::gate`] before the request is even decoded, and again here) → limit
//! (batch size) → run (the purpose checks and the backend's operation, in [`ops`]) → audit.
//! The audit record is written before the answer leaves: a request whose record cannot be
//! written gets no result.
//!
//! [`api`] is the tonic adapter, one line per method; [`purpose`] holds what each key may
//! sign; [`parallel`] the thread helpers.

pub mod api;
mod ops;
mod parallel;
pub mod purpose;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use stream::local::{LocalChunkKeys, RecipientSpec};
use stream::package;

use crate::audit::{AuditLog, Detail, Record};
use crate::backend::provider::Provider;
use crate::backend::Backend;
use crate::error::RequestError;
use crate::guard::SequenceGuard;
use crate::ledger::Ledger;
use crate::policy::{Operation, Policy};

/// Who is asking: the socket's peer credentials, or a TCP caller's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups (SO_PEERGROUPS).
    pub groups: Arc<[u32]>,
    pub pid: Option<i32>,
    /// TCP callers: SHA-256 of their client certificate (DER).
    pub cert: Option<[u8; 32]>,
}

impl Caller {
    fn describe(&self) -> String {
        match (self.uid, self.gid, self.cert) {
            (Some(uid), Some(gid), _) => format!("uid {uid} gid {gid}"),
            (_, _, Some(cert)) => format!("client certificate sha256:{}", hex::encode(cert)),
            _ => "an unidentified caller".into(),
        }
    }
}

/// Everything the service needs; shared by all connections.
pub struct KeydService {
    backend: Arc<dyn Backend>,
    policy: Policy,
    guard: Mutex<SequenceGuard>,
    audit: Mutex<AuditLog>,
    ledger: Mutex<Ledger>,
    did: String,
    address: String,
    identity_key_id: String,
    chain_key_id: String,
    /// The backend as stream's provider (key agreement, field cipher, randomness).
    provider: Provider,
    /// Chunk keys from the backend's randomness, sealed to the configured recipients, then
    /// the machine itself.
    chunk_keys: LocalChunkKeys<Provider>,
    max_batch: usize,
    /// fsync the audit log (and ledger) before every answer instead of in the background.
    sync_each_request: bool,
}

/// What the service is built from.
pub struct ServiceConfig {
    pub policy: Policy,
    pub guard: SequenceGuard,
    pub audit: AuditLog,
    pub ledger: Ledger,
    pub identity_key_id: Option<String>,
    pub chain_key_id: Option<String>,
    pub recipients: Vec<RecipientSpec>,
    pub max_batch: usize,
    pub sync_each_request: bool,
}

/// Locks a mutex; a poisoned one (a panic while it was held) stays unusable: the state it
/// guards may be half updated, so keyd answers nothing that depends on it.
fn lock<'a, T>(mutex: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>, RequestError> {
    mutex.lock().map_err(|_| {
        RequestError::Internal(format!(
            "the {what} is unusable after a panic; restart keyd"
        ))
    })
}

impl KeydService {
    pub fn new(backend: Arc<dyn Backend>, config: ServiceConfig) -> Self {
        let address = package::address_of(&backend.identity_public());
        let did = package::did_of_address(&address);
        let mut recipients = config.recipients;
        let machine = backend.box_public();
        recipients.push(RecipientSpec {
            recipient_id: "machine-1".into(),
            recipient_type: "machine".into(),
            public_key_hex: machine.to_hex(),
            public_key: machine,
        });
        KeydService {
            identity_key_id: config
                .identity_key_id
                .unwrap_or_else(|| format!("{did}#keys-1")),
            chain_key_id: config
                .chain_key_id
                .unwrap_or_else(|| format!("{did}#keys-1")),
            provider: Provider(Arc::clone(&backend)),
            chunk_keys: LocalChunkKeys::with_randomness(recipients, Provider(Arc::clone(&backend))),
            backend,
            policy: config.policy,
            guard: Mutex::new(config.guard),
            audit: Mutex::new(config.audit),
            ledger: Mutex::new(config.ledger),
            address: format!("0x{}", hex::encode(address)),
            did,
            max_batch: config.max_batch,
            sync_each_request: config.sync_each_request,
        }
    }

    pub fn did(&self) -> &str {
        &self.did
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Makes the audit log and the chunk ledger durable (the background flusher, and at
    /// shutdown). An error breaks them: no request is answered any more.
    pub fn sync_durable(&self) -> Result<(), String> {
        let ledger = lock(&self.ledger, "chunk ledger")
            .map_err(|e| e.to_string())?
            .sync();
        let audit = lock(&self.audit, "audit log")
            .map_err(|e| e.to_string())?
            .sync();
        ledger.and(audit)
    }

    /// Syncs every `interval` on a thread of its own until the returned handle is dropped.
    pub fn spawn_flusher(self: &Arc<Self>, interval: Duration) -> Flusher {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let service = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name("keyd-flusher".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = service.sync_durable() {
                            tracing::error!("{e}; keyd answers no more requests");
                        }
                    }
                    _ => return,
                }
            })
            .ok();
        Flusher {
            stop: Some(stop),
            thread,
        }
    }

    /// Writes one audit record; fails closed.
    fn audit(
        &self,
        caller: &Caller,
        op: Operation,
        batch: usize,
        result: &str,
        started: Instant,
        detail: Option<Detail<'_>>,
    ) -> Result<(), RequestError> {
        let cert = caller.cert.map(hex::encode);
        let line = Record {
            time: stream::layout::utc_iso8601(std::time::SystemTime::now(), true),
            uid: caller.uid,
            gid: caller.gid,
            pid: caller.pid,
            client_cert: cert.as_deref(),
            op: op.name(),
            key: ops::key_of(op),
            batch,
            result,
            latency_us: started.elapsed().as_micros() as u64,
            detail,
        }
        .to_json();
        let written = {
            let mut log = lock(&self.audit, "audit log")?;
            log.append(&line).and_then(|()| {
                if self.sync_each_request {
                    log.sync()
                } else {
                    Ok(())
                }
            })
        };
        written.map_err(|reason| {
            tracing::error!("{reason}");
            RequestError::Unrecorded(reason)
        })
    }

    /// Whether the policy lets `caller` perform `op`; a refusal is audited.
    pub fn authorize(&self, caller: &Caller, op: Operation) -> Result<(), RequestError> {
        let allowed = match (caller.uid, caller.gid, caller.cert) {
            (Some(uid), Some(gid), _) => self.policy.allows(uid, gid, &caller.groups, op),
            (_, _, Some(cert)) => self.policy.allows_cert(&hex::encode(cert), op),
            _ => false,
        };
        if allowed {
            return Ok(());
        }
        self.audit(caller, op, 0, "denied", Instant::now(), None)?;
        Err(RequestError::Denied {
            who: caller.describe(),
            operation: op.name(),
        })
    }

    /// The one path of every request: authorize → limit → run → audit. The result leaves
    /// only once its audit record is written.
    fn handle<T>(
        &self,
        caller: &Caller,
        op: Operation,
        batch: usize,
        work: impl FnOnce() -> Result<(T, Option<ops::Granted>), RequestError>,
    ) -> Result<T, RequestError> {
        let started = Instant::now();
        self.authorize(caller, op)?;
        let result = if batch > self.max_batch {
            Err(RequestError::TooLarge(format!(
                "batch of {batch} is larger than max_batch {}",
                self.max_batch
            )))
        } else {
            work()
        };
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.audit_result(),
        };
        let detail = match &result {
            Ok((_, Some(g))) => Some(g.record()),
            _ => None,
        };
        self.audit(caller, op, batch, &outcome, started, detail)?;
        result.map(|(value, _)| value)
    }
}

/// The background flusher; stops (after one last sync by its owner) when dropped.
pub struct Flusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
