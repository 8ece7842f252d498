//! Prometheus metrics and a health endpoint, served on a loopback address only.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric the agent keeps.
pub struct Metrics {
    registry: Registry,
    pub received: Family<Labels, Counter>,
    pub decode_errors: Family<Labels, Counter>,
    pub signed: Counter,
    pub rejected: Family<Labels, Counter>,
    pub spooled: Family<Labels, Counter>,
    pub chunks: Family<Labels, Counter>,
    pub chunk_bytes: Family<Labels, Counter>,
    pub dropped: Family<Labels, Counter>,
    pub paused: Family<Labels, Counter>,
    pub samples_lost: Family<Labels, Counter>,
    pub udp_receive_drops: Counter,
    pub udp_receive_buffer: Gauge,
    pub keyd_errors: Family<Labels, Counter>,
    pub keyd_refusals: Family<Labels, Counter>,
    pub keyd_latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub queue_messages: Gauge,
    pub queue_memory_bytes: Gauge,
    pub queue_disk_bytes: Gauge,
    pub spool_packages: Family<Labels, Gauge>,
    pub upload_backlog: Family<Labels, Gauge>,
    pub upload_backlog_bytes: Family<Labels, Gauge>,
    pub uploaded_chunks: Family<Labels, Counter>,
    pub uploaded_bytes: Family<Labels, Counter>,
    pub upload_failures: Family<Labels, Counter>,
    pub upload_last_success: Family<Labels, Gauge>,
    pub feed_duplicates: Family<Labels, Counter>,
    pub feed_via_object_store: Family<Labels, Counter>,
    pub feed_reconnects: Family<Labels, Gauge>,
    pub feed_connected: Family<Labels, Gauge>,
    pub disk_full_retries: Counter,
    pub disk_full: Gauge,
    /// Why writes are paused, if they are (the disk is full).
    disk_full_reason: std::sync::Mutex<Option<String>>,
    /// Why uploads are degraded, if they are (a backlog that does not move).
    uploads_behind: std::sync::Mutex<Option<String>>,
    /// How keyd answered the last call: [`KEYD_UP`], [`KEYD_UNREACHABLE`], [`KEYD_REFUSES`].
    keyd: AtomicU8,
    /// False once the pipeline has stopped on an error.
    pub pipeline_up: AtomicBool,
}

/// keyd answered the last call.
const KEYD_UP: u8 = 0;
/// keyd could not be reached or failed (retried with backoff).
const KEYD_UNREACHABLE: u8 = 1;
/// keyd refused (its policy denies the agent, or a request does not fit a key's purpose):
/// retried at the longest backoff, until the operator mends it.
const KEYD_REFUSES: u8 = 2;

/// How a keyd call ended, for the metrics and the health endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeydOutcome {
    Ok,
    /// May succeed if sent again.
    Unreachable,
    /// keyd said no; the same request will not succeed until something changes.
    Refused,
}

impl KeydOutcome {
    pub fn of<T>(result: &Result<T, stream::signer::SignerError>) -> Self {
        match result {
            Ok(_) => KeydOutcome::Ok,
            Err(e) => Self::of_error(e),
        }
    }
    pub fn of_error(error: &stream::signer::SignerError) -> Self {
        if error.is_retryable() {
            KeydOutcome::Unreachable
        } else {
            KeydOutcome::Refused
        }
    }
}

pub fn topic(name: &str) -> Labels {
    vec![("topic", name.to_string())]
}

pub fn call(name: &'static str) -> Labels {
    vec![("call", name.to_string())]
}

pub fn upload(topic: &str, output: &str) -> Labels {
    vec![("topic", topic.to_string()), ("output", output.to_string())]
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edge_agent");
        macro_rules! metric {
            ($name:literal, $help:literal, $value:expr) => {{
                let m = $value;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        let metrics = Metrics {
            received: metric!("received", "Messages received from DDS", Family::default()),
            decode_errors: metric!(
                "decode_errors",
                "Samples that did not decode as the map's type",
                Family::default()
            ),
            signed: metric!("signed", "Packages signed by keyd", Counter::default()),
            rejected: metric!(
                "rejected",
                "Messages the field rules could not process",
                Family::default()
            ),
            spooled: metric!(
                "spooled",
                "Signed packages made durable in the spool (accepted)",
                Family::default()
            ),
            chunks: metric!("chunks", "Chunks published", Family::default()),
            chunk_bytes: metric!(
                "chunk_plaintext_bytes",
                "Plaintext bytes published in chunks",
                Family::default()
            ),
            dropped: metric!(
                "dropped",
                "Messages dropped by the drop_oldest overflow policy",
                Family::default()
            ),
            paused: metric!(
                "paused",
                "Times a topic stopped reading from DDS because the queue was full",
                Family::default()
            ),
            disk_full_retries: metric!(
                "disk_full_retries",
                "Spool and chain writes that found the disk full (each retried with backoff)",
                Counter::default()
            ),
            disk_full: metric!(
                "disk_full",
                "1 while the agent has stopped accepting because the disk is full",
                Gauge::default()
            ),
            samples_lost: metric!(
                "samples_lost",
                "Samples publishers sent that never reached the agent (gaps in their sequence numbers)",
                Family::default()
            ),
            udp_receive_drops: metric!(
                "udp_receive_drops",
                "Datagrams the kernel dropped on the agent's DDS sockets because a receive buffer was full",
                Counter::default()
            ),
            udp_receive_buffer: metric!(
                "udp_receive_buffer_bytes",
                "The receive buffer the kernel gave the agent's DDS listeners (SO_RCVBUF: twice the data's share on Linux)",
                Gauge::default()
            ),
            keyd_errors: metric!(
                "keyd_errors",
                "keyd calls that failed and may succeed later (retried with backoff)",
                Family::default()
            ),
            keyd_refusals: metric!(
                "keyd_refusals",
                "keyd calls keyd refused (policy or purpose; retried at the longest backoff)",
                Family::default()
            ),
            keyd_latency: metric!(
                "keyd_latency_seconds",
                "keyd call latency",
                Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
                    latency_histogram
                )
            ),
            queue_messages: metric!(
                "queue_messages",
                "Messages waiting to be signed",
                Gauge::default()
            ),
            queue_memory_bytes: metric!(
                "queue_memory_bytes",
                "Bytes of the queue held in memory",
                Gauge::default()
            ),
            queue_disk_bytes: metric!(
                "queue_disk_bytes",
                "Bytes of the queue on disk",
                Gauge::default()
            ),
            spool_packages: metric!(
                "spool_packages",
                "Packages in the open chunk",
                Family::default()
            ),
            upload_backlog: metric!(
                "upload_backlog_chunks",
                "Committed chunks not yet sent to an output (S3 or NATS: the outbox depth)",
                Family::default()
            ),
            upload_backlog_bytes: metric!(
                "upload_backlog_bytes",
                "Bytes of committed chunks not yet sent to an output",
                Family::default()
            ),
            uploaded_chunks: metric!(
                "uploaded_chunks",
                "Chunks sent to an output and acknowledged (stored in S3, or acked by JetStream)",
                Family::default()
            ),
            uploaded_bytes: metric!(
                "uploaded_bytes",
                "Bytes sent to an output (ciphertexts and envelopes)",
                Family::default()
            ),
            upload_failures: metric!(
                "upload_failures",
                "Attempts to send to an output that failed (retried with backoff)",
                Family::default()
            ),
            upload_last_success: metric!(
                "upload_last_success_timestamp_seconds",
                "When a chunk was last sent to an output (Unix time)",
                Family::default()
            ),
            feed_duplicates: metric!(
                "feed_duplicates",
                "Chunks JetStream already had (a re-send after a restart, dropped by Nats-Msg-Id)",
                Family::default()
            ),
            feed_via_object_store: metric!(
                "feed_object_store_chunks",
                "Chunks larger than the server's max_payload, sent through the JetStream object store",
                Family::default()
            ),
            feed_reconnects: metric!(
                "feed_reconnects",
                "Reconnections to a NATS output since the agent started",
                Family::default()
            ),
            feed_connected: metric!(
                "feed_connected",
                "1 while a NATS output is connected",
                Family::default()
            ),
            disk_full_reason: std::sync::Mutex::new(None),
            uploads_behind: std::sync::Mutex::new(None),
            keyd: AtomicU8::new(KEYD_UNREACHABLE),
            pipeline_up: AtomicBool::new(true),
            registry: Registry::default(),
        };
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// `Ok` when keyd answers, the pipeline runs, the disk takes writes and uploads keep up;
    /// otherwise the reason (a full disk and uploads that fall behind say `degraded: …`: the
    /// agent goes on by itself once they mend).
    pub fn health(&self) -> Result<(), String> {
        if !self.pipeline_up.load(Ordering::Relaxed) {
            return Err("pipeline stopped".into());
        }
        match self.disk_full_reason.lock() {
            Ok(full) => {
                if let Some(why) = full.as_ref() {
                    return Err(format!(
                        "degraded: the disk is full, not accepting until writes succeed again ({why})"
                    ));
                }
            }
            Err(_) => return Err("disk: state unavailable".into()),
        }
        match self.keyd.load(Ordering::Relaxed) {
            KEYD_UP => {}
            KEYD_REFUSES => return Err(
                "keyd refuses the agent's requests (its policy, or a key's purpose: see the log)"
                    .into(),
            ),
            _ => return Err("keyd unreachable".into()),
        }
        match self.uploads_behind.lock() {
            Ok(behind) => behind.clone().map_or(Ok(()), Err),
            Err(_) => Err("uploads: state unavailable".into()),
        }
    }

    /// Sets (or clears) why writes are paused.
    pub fn set_disk_full(&self, why: Option<String>) {
        self.disk_full.set(why.is_some() as i64);
        if let Ok(mut full) = self.disk_full_reason.lock() {
            *full = why;
        }
    }

    /// Sets (or clears) why uploads are degraded.
    pub fn set_uploads_behind(&self, why: Option<String>) {
        if let Ok(mut behind) = self.uploads_behind.lock() {
            *behind = why;
        }
    }

    pub fn observe_keyd(&self, name: &'static str, elapsed: Duration, outcome: KeydOutcome) {
        self.keyd_latency
            .get_or_create(&call(name))
            .observe(elapsed.as_secs_f64());
        let state = match outcome {
            KeydOutcome::Ok => KEYD_UP,
            KeydOutcome::Unreachable => {
                self.keyd_errors.get_or_create(&call(name)).inc();
                KEYD_UNREACHABLE
            }
            KeydOutcome::Refused => {
                self.keyd_refusals.get_or_create(&call(name)).inc();
                KEYD_REFUSES
            }
        };
        self.keyd.store(state, Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` and `/health` on `listener` until the runtime stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m1 = metrics.clone();
    let m2 = metrics;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let m = m2.clone();
                async move {
                    match m.health() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}
