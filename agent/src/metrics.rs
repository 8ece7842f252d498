//! Prometheus metrics and a health endpoint, served on a loopback address only.

use std::sync::atomic::{AtomicBool, Ordering};
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
    pub keyd_errors: Family<Labels, Counter>,
    pub keyd_latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub queue_messages: Gauge,
    pub queue_memory_bytes: Gauge,
    pub queue_disk_bytes: Gauge,
    pub spool_packages: Family<Labels, Gauge>,
    /// False while keyd cannot be reached.
    pub keyd_up: AtomicBool,
    /// False once the pipeline has stopped on an error.
    pub pipeline_up: AtomicBool,
}

pub fn topic(name: &str) -> Labels {
    vec![("topic", name.to_string())]
}

pub fn call(name: &'static str) -> Labels {
    vec![("call", name.to_string())]
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
            keyd_errors: metric!(
                "keyd_errors",
                "Failed keyd calls (retried with backoff)",
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
            keyd_up: AtomicBool::new(false),
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

    /// `Ok` when keyd answers and the pipeline runs; otherwise the reason.
    pub fn health(&self) -> Result<(), &'static str> {
        if !self.pipeline_up.load(Ordering::Relaxed) {
            Err("pipeline stopped")
        } else if !self.keyd_up.load(Ordering::Relaxed) {
            Err("keyd unreachable")
        } else {
            Ok(())
        }
    }

    pub fn observe_keyd(&self, name: &'static str, elapsed: Duration, ok: bool) {
        self.keyd_latency
            .get_or_create(&call(name))
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.keyd_errors.get_or_create(&call(name)).inc();
        }
        self.keyd_up.store(ok, Ordering::Relaxed);
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
