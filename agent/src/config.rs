//! The Data Event Map, as the agent reads it (YAML; snake_case keys, camelCase accepted).
//!
//! Every section rejects unknown keys, and every error names the file, the line and the key:
//! a typo must stop the agent, not silently capture the wrong thing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use stream::mapfile::{self, line_of, MapError, Spanned};
use stream::rules::{FieldRules, FieldRulesDoc};

use crate::msg::{MsgType, Registry};

/// A map that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read map {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Names the file, the line (0 when there is no single one) and the key.
    #[error(transparent)]
    Invalid(#[from] MapError),
}

/// Reliability and history of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QosProfile {
    /// ROS 2's default: reliable, volatile, keep last `depth` (10).
    Default,
    /// Sensor data: best effort, keep last `depth` (5).
    SensorData,
    /// Reliable, like `default`, with a receive cache four times deeper, for topics that
    /// must not lose samples when the agent is briefly starved of CPU (not for types with
    /// byte blobs, whose cache stays at `depth`: it is held in memory at all times).
    Reliable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qos {
    #[serde(default = "default_profile")]
    pub profile: QosProfile,
    #[serde(default)]
    pub depth: Option<u16>,
}

fn default_profile() -> QosProfile {
    QosProfile::Default
}

impl Default for Qos {
    fn default() -> Self {
        Qos {
            profile: QosProfile::Default,
            depth: None,
        }
    }
}

impl Qos {
    pub fn depth(&self) -> u16 {
        self.depth.unwrap_or(match self.profile {
            QosProfile::SensorData => 5,
            _ => 10,
        })
    }
}

/// When an open chunk is closed: whichever bound is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkBounds {
    #[serde(default = "default_max_bytes", alias = "maxBytes")]
    pub max_bytes: u64,
    #[serde(default, alias = "maxMessages")]
    pub max_messages: Option<u64>,
    #[serde(default, alias = "maxAgeMs")]
    pub max_age_ms: Option<u64>,
}

fn default_max_bytes() -> u64 {
    262_144
}

impl Default for ChunkBounds {
    fn default() -> Self {
        ChunkBounds {
            max_bytes: default_max_bytes(),
            max_messages: None,
            max_age_ms: None,
        }
    }
}

/// A topic's own dataset listings: every `every`, the chunks committed since the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSchedule {
    pub every: std::time::Duration,
    pub title: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetsDoc {
    /// A duration: `1h`, `30min`, `90s`, `500ms`.
    every: Spanned<String>,
    #[serde(default)]
    title: Option<String>,
}

/// When the spool is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFsync {
    /// After every signed batch, before it counts as accepted (the default).
    Batch,
    /// Never explicitly: survives a crash of the agent, not a power cut.
    None,
}

/// What happens when the queue in front of keyd is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Stop reading from DDS until there is room (the publisher's QoS decides what is lost).
    Pause,
    /// Drop the oldest queued messages to make room, counting every drop.
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Bytes of decoded messages held in memory before they go to the disk queue.
    #[serde(default = "default_memory_bytes", alias = "memoryBytes")]
    pub memory_bytes: u64,
    /// Bytes of the disk queue before the overflow policy applies.
    #[serde(default = "default_disk_bytes", alias = "diskBytes")]
    pub disk_bytes: u64,
    #[serde(default = "default_overflow")]
    pub overflow: Overflow,
}

fn default_memory_bytes() -> u64 {
    4 << 20
}
fn default_disk_bytes() -> u64 {
    1 << 30
}
fn default_overflow() -> Overflow {
    Overflow::Pause
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            memory_bytes: default_memory_bytes(),
            disk_bytes: default_disk_bytes(),
            overflow: default_overflow(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most packages signed in one keyd call.
    #[serde(default = "default_batch_messages", alias = "maxMessages")]
    pub max_messages: usize,
    /// Most bytes (decoded messages, approximately) in one batch, so large messages
    /// (point clouds) make small batches and memory stays bounded.
    #[serde(default = "default_batch_bytes", alias = "maxBytes")]
    pub max_bytes: usize,
    /// Longest a message waits for its batch to fill.
    #[serde(default = "default_batch_delay", alias = "maxDelayMs")]
    pub max_delay_ms: u64,
}

fn default_batch_bytes() -> usize {
    2 << 20
}

fn default_batch_messages() -> usize {
    512
}
fn default_batch_delay() -> u64 {
    20
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_messages: default_batch_messages(),
            max_bytes: default_batch_bytes(),
            max_delay_ms: default_batch_delay(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeydDoc {
    socket: PathBuf,
    #[serde(default, alias = "backoffMaxMs")]
    backoff_max_ms: Option<u64>,
}

/// An S3-compatible bucket a topic's chain is uploaded to, after each chunk is committed
/// locally. The chain goes to `{prefix}{topic slug}/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Doc {
    bucket: Spanned<String>,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    region: Option<String>,
    /// YAML with `access_key_id` and `secret_access_key`, readable only by the agent's
    /// user; else the environment (`PEAQOS_S3_*`, `AWS_*`).
    #[serde(default, alias = "credentialsFile")]
    credentials_file: Option<PathBuf>,
}

/// A NATS JetStream live feed a topic's chain is published to, chunk by chunk, once each
/// is committed locally: subject `<subject_prefix>.<DID address>.<topic, "/" → ".">`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NatsDoc {
    /// `nats://host:port` (or `tls://`), several comma-separated.
    url: Spanned<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default, alias = "subjectPrefix")]
    subject_prefix: Option<String>,
    /// A `.creds` file, an nkey seed or a token, readable only by the agent's user.
    #[serde(default)]
    credentials: Option<PathBuf>,
    /// Copies of a stream the agent creates, in a cluster (default 1).
    #[serde(default)]
    replicas: Option<usize>,
}

/// One of `s3:` or `nats:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputDoc {
    #[serde(default)]
    s3: Option<S3Doc>,
    #[serde(default)]
    nats: Option<NatsDoc>,
}

/// One NATS JetStream output of a topic, resolved (its Debug hides a secret in the URL).
#[derive(Clone, PartialEq, Eq)]
pub struct NatsOutput {
    /// `outputs[i].nats` or `topics[j].outputs[i].nats`: names it in logs and metrics.
    pub name: String,
    /// The servers, comma-separated.
    pub url: String,
    /// The stream, its subjects and replicas.
    pub stream: feed::StreamSpec,
    pub credentials: Option<PathBuf>,
}

/// How much of an uploaded chain stays on the local disk: chunks uploaded to every S3
/// output are deleted, oldest first, beyond `max_bytes` or once older than `max_age_s`
/// (the newest chunk always stays: the spool resumes from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepLocal {
    #[serde(default, alias = "maxBytes")]
    pub max_bytes: Option<u64>,
    #[serde(default, alias = "maxAgeS")]
    pub max_age_s: Option<u64>,
}

/// One S3 output of a topic, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Output {
    /// `outputs[i]` or `topics[j].outputs[i]`: names it in logs and metrics.
    pub name: String,
    /// Bucket and the topic's prefix (`{prefix}{slug}/`).
    pub path: store::S3Path,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials_file: Option<PathBuf>,
}

impl std::fmt::Debug for NatsOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOutput")
            .field("name", &self.name)
            .field("url", &feed::connect::shown_urls(&self.url))
            .field("stream", &self.stream)
            .field("credentials", &self.credentials)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsDoc {
    listen: Spanned<String>,
}

// Values checked after parsing are `Spanned`, so that an error names their line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicDoc {
    topic: Spanned<String>,
    #[serde(rename = "type")]
    type_name: Spanned<String>,
    #[serde(default)]
    qos: Option<Spanned<Qos>>,
    #[serde(alias = "schemaVersion")]
    schema_version: Spanned<String>,
    #[serde(default, alias = "fieldRules")]
    field_rules: Option<FieldRulesDoc>,
    #[serde(default)]
    chunk: Option<Spanned<ChunkBounds>>,
    #[serde(default)]
    output: Option<PathBuf>,
    #[serde(default)]
    outputs: Option<Spanned<Vec<OutputDoc>>>,
    #[serde(default, alias = "keepLocal")]
    keep_local: Option<Spanned<KeepLocal>>,
    #[serde(default)]
    datasets: Option<DatasetsDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapDoc {
    keyd: KeydDoc,
    #[serde(alias = "spoolDir")]
    spool_dir: PathBuf,
    #[serde(default, alias = "outputDir")]
    output_dir: Option<PathBuf>,
    #[serde(default, alias = "msgDirs")]
    msg_dirs: Vec<Spanned<PathBuf>>,
    #[serde(default, alias = "nodeName")]
    node_name: Option<String>,
    #[serde(default, alias = "domainId")]
    domain_id: Option<u16>,
    #[serde(default, alias = "spoolFsync")]
    spool_fsync: Option<SpoolFsync>,
    #[serde(default)]
    batch: Option<Spanned<BatchConfig>>,
    #[serde(default)]
    queue: QueueConfig,
    #[serde(default)]
    metrics: Option<MetricsDoc>,
    /// S3 outputs of every topic that names none of its own.
    #[serde(default)]
    outputs: Option<Spanned<Vec<OutputDoc>>>,
    #[serde(default, alias = "keepLocal")]
    keep_local: Option<Spanned<KeepLocal>>,
    topics: Spanned<Vec<TopicDoc>>,
}

/// One captured topic, resolved.
#[derive(Debug, Clone)]
pub struct TopicConfig {
    pub topic: String,
    /// As written, `pkg/msg/Name`.
    pub type_name: String,
    pub msg_type: Arc<MsgType>,
    pub qos: Qos,
    pub schema_version: String,
    pub rules: FieldRules,
    pub chunk: ChunkBounds,
    /// The published directory of this topic.
    pub output: PathBuf,
    /// Where the chain is uploaded once committed locally (the first is its `storageRef`).
    pub uploads: Vec<S3Output>,
    /// The live feeds the chain is published to once committed locally.
    pub feeds: Vec<NatsOutput>,
    /// How much of the uploaded chain stays local (`None`: all of it).
    pub keep_local: Option<KeepLocal>,
    /// The spool directory of this topic.
    pub spool: PathBuf,
    /// Datasets the agent lists on its own, if any.
    pub datasets: Option<DatasetSchedule>,
}

/// A validated map.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: PathBuf,
    pub keyd_socket: PathBuf,
    pub keyd_backoff_max_ms: u64,
    pub spool_dir: PathBuf,
    pub node_name: String,
    pub domain_id: u16,
    pub spool_fsync: SpoolFsync,
    pub batch: BatchConfig,
    pub queue: QueueConfig,
    pub metrics: Option<SocketAddr>,
    pub topics: Vec<TopicConfig>,
}

/// A directory name for a topic: `/robot/imu` → `robot_imu`.
pub fn topic_slug(topic: &str) -> String {
    let slug: String = topic
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if slug.is_empty() {
        "root".into()
    } else {
        slug
    }
}

impl AgentConfig {
    /// Reads and validates a map file; relative paths are taken from the map's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let invalid = |line: u64, key: &str, message: String| {
            ConfigError::Invalid(MapError::at(&origin, line, key, message))
        };
        let doc: MapDoc = mapfile::from_yaml(text, &origin)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let absolute = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let nats_output = |here: &str, nats: &NatsDoc| -> Result<NatsOutput, ConfigError> {
            let line = line_of(&nats.url);
            let fail = |e: feed::FeedError| invalid(line, here, e.to_string());
            feed::connect::server_addrs(&format!("{here}.url"), &nats.url.value).map_err(fail)?;
            let stream = feed::StreamSpec {
                name: nats.stream.clone().unwrap_or_else(|| "PEAQ_STREAM".into()),
                subject_prefix: nats
                    .subject_prefix
                    .clone()
                    .unwrap_or_else(|| "peaq.stream".into()),
                replicas: nats.replicas.unwrap_or(1),
            };
            feed::publish::check_stream_name(&format!("{here}.stream"), &stream.name)
                .map_err(fail)?;
            feed::subject::check_prefix(&format!("{here}.subject_prefix"), &stream.subject_prefix)
                .map_err(fail)?;
            if !(1..=5).contains(&stream.replicas) {
                return Err(invalid(
                    line,
                    &format!("{here}.replicas"),
                    format!(
                        "{} is not 1 to 5 (JetStream keeps at most 5 copies)",
                        stream.replicas
                    ),
                ));
            }
            Ok(NatsOutput {
                name: here.to_string(),
                url: nats.url.value.clone(),
                stream,
                credentials: nats.credentials.as_deref().map(absolute),
            })
        };

        let mut registry = Registry::shipped();
        for (i, dir) in doc.msg_dirs.iter().enumerate() {
            registry
                .add_dir(&absolute(&dir.value))
                .map_err(|e| invalid(line_of(dir), &format!("msg_dirs[{i}]"), e.to_string()))?;
        }

        let metrics = match &doc.metrics {
            None => None,
            Some(m) => {
                let line = line_of(&m.listen);
                let addr: SocketAddr = m.listen.value.parse().map_err(|_| {
                    invalid(
                        line,
                        "metrics.listen",
                        format!("{:?} is not an address:port", m.listen.value),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        line,
                        "metrics.listen",
                        format!(
                            "{addr} is not a loopback address: metrics are served on loopback only"
                        ),
                    ));
                }
                Some(addr)
            }
        };
        let batch = doc
            .batch
            .as_ref()
            .map_or_else(BatchConfig::default, |b| b.value);
        if batch.max_messages == 0 {
            return Err(invalid(
                doc.batch.as_ref().map_or(0, line_of),
                "batch.max_messages",
                "must be at least 1".into(),
            ));
        }
        if doc.topics.value.is_empty() {
            return Err(invalid(
                line_of(&doc.topics),
                "topics",
                "names no topic".into(),
            ));
        }

        let spool_dir = absolute(&doc.spool_dir);
        let mut topics: Vec<TopicConfig> = Vec::new();
        for (i, t) in doc.topics.value.into_iter().enumerate() {
            let key = |k: &str| format!("topics[{i}].{k}");
            let topic_line = line_of(&t.topic);
            let name = t.topic.value;
            if !name.starts_with('/') || name.len() < 2 || name.contains("//") {
                return Err(invalid(
                    topic_line,
                    &key("topic"),
                    format!("{name:?} is not an absolute ROS 2 topic name like /imu"),
                ));
            }
            if topics.iter().any(|o| o.topic == name) {
                return Err(invalid(
                    topic_line,
                    &key("topic"),
                    format!("{name:?} appears twice"),
                ));
            }
            let msg_type = registry
                .resolve(&t.type_name.value)
                .map_err(|e| invalid(line_of(&t.type_name), &key("type"), e.to_string()))?;
            if t.schema_version.value.trim().is_empty() {
                return Err(invalid(
                    line_of(&t.schema_version),
                    &key("schema_version"),
                    "must not be empty".into(),
                ));
            }
            let chunk = t
                .chunk
                .as_ref()
                .map_or_else(ChunkBounds::default, |c| c.value);
            if chunk.max_bytes == 0 || chunk.max_messages == Some(0) || chunk.max_age_ms == Some(0)
            {
                return Err(invalid(
                    t.chunk.as_ref().map_or(topic_line, line_of),
                    &key("chunk"),
                    "bounds must be at least 1".into(),
                ));
            }
            let datasets = match &t.datasets {
                None => None,
                Some(d) => {
                    let every = humantime::parse_duration(d.every.value.trim()).map_err(|e| {
                        invalid(
                            line_of(&d.every),
                            &key("datasets.every"),
                            format!(
                                "{:?}: {e} (a duration such as 1h, 30min or 90s)",
                                d.every.value
                            ),
                        )
                    })?;
                    if every < std::time::Duration::from_millis(100) {
                        return Err(invalid(
                            line_of(&d.every),
                            &key("datasets.every"),
                            "must be at least 100ms".into(),
                        ));
                    }
                    Some(DatasetSchedule {
                        every,
                        title: d.title.clone(),
                    })
                }
            };
            let qos = t.qos.as_ref().map_or_else(Qos::default, |q| q.value);
            if qos.depth == Some(0) {
                return Err(invalid(
                    t.qos.as_ref().map_or(topic_line, line_of),
                    &key("qos.depth"),
                    "must be at least 1".into(),
                ));
            }
            let slug = topic_slug(&name);
            if topics.iter().any(|o| topic_slug(&o.topic) == slug) {
                return Err(invalid(
                    topic_line,
                    &key("topic"),
                    format!("{name:?} maps to the same directory name {slug:?} as another topic"),
                ));
            }
            let output = match (&t.output, &doc.output_dir) {
                (Some(dir), _) => absolute(dir),
                (None, Some(root)) => absolute(root).join(&slug),
                (None, None) => {
                    return Err(invalid(
                        topic_line,
                        &key("output"),
                        "has no output: set `output` here or `output_dir` for all topics".into(),
                    ))
                }
            };
            let (outputs, outputs_key) = match (&t.outputs, &doc.outputs) {
                (Some(own), _) => (Some(own), key("outputs")),
                (None, Some(all)) => (Some(all), "outputs".to_string()),
                (None, None) => (None, String::new()),
            };
            let mut uploads = Vec::new();
            let mut feeds = Vec::new();
            let outputs_line = outputs.map_or(topic_line, line_of);
            for (n, o) in outputs.map_or(&[][..], |o| &o.value[..]).iter().enumerate() {
                let s3 = match (&o.s3, &o.nats) {
                    (Some(s3), None) => s3,
                    (None, Some(nats)) => {
                        let here = format!("{outputs_key}[{n}].nats");
                        let output = nats_output(&here, nats)?;
                        if feeds.iter().any(|f: &NatsOutput| {
                            f.url == output.url && f.stream.name == output.stream.name
                        }) {
                            return Err(invalid(line_of(&nats.url), &here, "appears twice".into()));
                        }
                        feeds.push(output);
                        continue;
                    }
                    _ => {
                        return Err(invalid(
                            outputs_line,
                            &format!("{outputs_key}[{n}]"),
                            "must be exactly one of `s3:` or `nats:`".into(),
                        ))
                    }
                };
                let here = format!("{outputs_key}[{n}].s3");
                let line = line_of(&s3.bucket);
                let mut prefix = s3.prefix.trim_start_matches('/').to_string();
                if !prefix.is_empty() && !prefix.ends_with('/') {
                    prefix.push('/');
                }
                let text = format!("s3://{}/{prefix}{slug}", s3.bucket.value);
                let path = store::S3Path::parse(&format!("{here}.bucket/prefix"), &text)
                    .map_err(|e| invalid(line, &here, e.to_string()))?;
                if let Some(endpoint) = &s3.endpoint {
                    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                        return Err(invalid(
                            line,
                            &format!("{here}.endpoint"),
                            format!("{endpoint:?} is not an http:// or https:// URL"),
                        ));
                    }
                }
                if uploads.iter().any(|u: &S3Output| u.path == path) {
                    return Err(invalid(line, &here, format!("{path} appears twice")));
                }
                uploads.push(S3Output {
                    name: here,
                    path,
                    endpoint: s3.endpoint.clone(),
                    region: s3.region.clone(),
                    credentials_file: s3.credentials_file.as_deref().map(absolute),
                });
            }
            let keep_local = t.keep_local.as_ref().or(doc.keep_local.as_ref());
            if let Some(k) = keep_local {
                if uploads.is_empty() && feeds.is_empty() {
                    return Err(invalid(
                        line_of(k),
                        &key("keep_local"),
                        "drops local chunks once every output has them, but this topic has no output".into(),
                    ));
                }
            }
            topics.push(TopicConfig {
                uploads,
                feeds,
                keep_local: keep_local.map(|k| k.value),
                topic: name,
                type_name: t.type_name.value,
                msg_type,
                qos,
                schema_version: t.schema_version.value,
                rules: t
                    .field_rules
                    .map(FieldRulesDoc::into_rules)
                    .unwrap_or_default(),
                chunk,
                output,
                spool: spool_dir.join(&slug),
                datasets,
            });
        }

        Ok(AgentConfig {
            source: path.to_path_buf(),
            keyd_socket: absolute(&doc.keyd.socket),
            keyd_backoff_max_ms: doc.keyd.backoff_max_ms.unwrap_or(5_000).max(10),
            spool_dir,
            node_name: doc.node_name.unwrap_or_else(|| "edge_agent".into()),
            domain_id: doc.domain_id.unwrap_or(0),
            spool_fsync: doc.spool_fsync.unwrap_or(SpoolFsync::Batch),
            batch,
            queue: doc.queue,
            metrics,
            topics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
keyd:
  socket: /run/keyd/keyd.sock
spool_dir: spool
output_dir: /data/out
metrics:
  listen: 127.0.0.1:9464
queue:
  overflow: drop_oldest
topics:
  - topic: /imu
    type: sensor_msgs/msg/Imu
    qos: { profile: sensor_data }
    schema_version: \"1\"
    chunk: { max_bytes: 65536, maxAgeMs: 500 }
  - topic: /robot/status
    type: std_msgs/String
    schemaVersion: \"2\"
    field_rules:
      rules:
        - field_path: data
          action: encrypt
";

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("/etc/edge-agent/map.yaml"))
    }

    #[test]
    fn s3_outputs_per_topic_or_for_all() {
        let map = GOOD.replace(
            "queue:\n",
            "outputs:\n  - s3: { bucket: fleet, prefix: robots/r1, endpoint: \"http://127.0.0.1:3900\", region: garage }\nkeep_local: { max_bytes: 1000000 }\nqueue:\n",
        );
        let c = parse(&map).unwrap();
        let up = &c.topics[1].uploads[0];
        assert_eq!(
            up.path.uri("chunk-0.bin"),
            "s3://fleet/robots/r1/robot_status/chunk-0.bin"
        );
        assert_eq!(up.name, "outputs[0].s3");
        assert_eq!(c.topics[0].keep_local.unwrap().max_bytes, Some(1_000_000));
        let bad = GOOD.replace(
            "    chunk: { max_bytes: 65536, maxAgeMs: 500 }\n",
            "    chunk: { max_bytes: 65536, maxAgeMs: 500 }\n    outputs:\n      - s3: { bucket: Bad_Bucket }\n",
        );
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains(":16: topics[0].outputs[0].s3"), "{e}");
        let lonely = GOOD.replace("queue:\n", "keep_local: { max_age_s: 60 }\nqueue:\n");
        let e = parse(&lonely).unwrap_err().to_string();
        assert!(e.contains("keep_local") && e.contains("no output"), "{e}");
    }

    #[test]
    fn nats_outputs_beside_s3_with_their_defaults_and_errors_named() {
        let map = GOOD.replace(
            "queue:\n",
            "outputs:\n  - s3: { bucket: fleet }\n  - nats:\n      url: \"nats://127.0.0.1:4222, nats://127.0.0.1:4223\"\n      credentials: nats.creds\nkeep_local: { max_bytes: 1000000 }\nqueue:\n",
        );
        let c = parse(&map).unwrap();
        let feed = &c.topics[1].feeds[0];
        assert_eq!(feed.name, "outputs[1].nats");
        assert_eq!(feed.stream.name, "PEAQ_STREAM");
        assert_eq!(feed.stream.subject_prefix, "peaq.stream");
        assert_eq!(feed.stream.replicas, 1);
        assert!(feed.credentials.as_ref().unwrap().is_absolute());
        assert_eq!(c.topics[1].uploads.len(), 1);
        let with =
            |output: &str| GOOD.replace("queue:\n", &format!("outputs:\n  - {output}\nqueue:\n"));
        for (output, named) in [
            (
                "nats: { url: \"http://127.0.0.1:4222\" }",
                "outputs[0].nats.url",
            ),
            (
                "nats: { url: \"nats://h:1\", stream: \"A.B\" }",
                "outputs[0].nats.stream",
            ),
            (
                "nats: { url: \"nats://h:1\", subject_prefix: \"a.*\" }",
                "outputs[0].nats.subject_prefix",
            ),
            (
                "nats: { url: \"nats://h:1\", replicas: 7 }",
                "outputs[0].nats.replicas",
            ),
            ("nats: { url: \"nats://h:1\", subjects: x }", "subjects"),
            (
                "{ s3: { bucket: fleet }, nats: { url: \"nats://h:1\" } }",
                "exactly one of",
            ),
        ] {
            let e = parse(&with(output)).unwrap_err().to_string();
            assert!(e.contains(named), "{output}: {e}");
        }
        // A NATS output alone lets keep_local drop what it has.
        let alone = GOOD.replace(
            "queue:\n",
            "outputs:\n  - nats: { url: \"nats://127.0.0.1:4222\", stream: FLEET, replicas: 3 }\nkeep_local: { max_age_s: 60 }\nqueue:\n",
        );
        let c = parse(&alone).unwrap();
        assert_eq!(c.topics[0].feeds[0].stream.replicas, 3);
        assert!(c.topics[0].uploads.is_empty());
    }

    #[test]
    fn dataset_schedules_per_topic() {
        let map = GOOD.replace(
            "    chunk: { max_bytes: 65536, maxAgeMs: 500 }\n",
            "    chunk: { max_bytes: 65536, maxAgeMs: 500 }\n    datasets: { every: 1h, title: IMU }\n",
        );
        let c = parse(&map).unwrap();
        let d = c.topics[0].datasets.as_ref().unwrap();
        assert_eq!(d.every, std::time::Duration::from_secs(3600));
        assert_eq!(d.title.as_deref(), Some("IMU"));
        assert!(c.topics[1].datasets.is_none());
        let e = parse(&map.replace("every: 1h", "every: hourly"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":15: topics[0].datasets.every:"), "{e}");
        let e = parse(&map.replace("every: 1h", "every: 1ms"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 100ms"), "{e}");
    }

    #[test]
    fn a_good_map() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.spool_dir, Path::new("/etc/edge-agent/spool"));
        assert_eq!(c.topics[0].qos.depth(), 5);
        assert_eq!(c.topics[0].chunk.max_bytes, 65536);
        assert_eq!(c.topics[0].chunk.max_age_ms, Some(500));
        assert_eq!(c.topics[1].output, Path::new("/data/out/robot_status"));
        assert_eq!(c.topics[1].chunk.max_bytes, 262_144);
        assert_eq!(c.topics[1].rules.rules.len(), 1);
        assert_eq!(c.queue.overflow, Overflow::DropOldest);
        assert_eq!(c.spool_fsync, SpoolFsync::Batch);
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = error(&GOOD.replace(
            "schema_version: \"1\"",
            "schema_version: \"1\"\n    qos_depth: 3",
        ));
        assert!(e.starts_with("/etc/edge-agent/map.yaml:14:"), "{e}");
        assert!(e.contains("unknown field `qos_depth`"), "{e}");

        let e = error(&GOOD.replace("sensor_msgs/msg/Imu", "sensor_msgs/msg/Imuu"));
        assert!(
            e.starts_with("/etc/edge-agent/map.yaml:11: topics[0].type:"),
            "{e}"
        );

        let e = error(&GOOD.replace("sensor_data", "sensors"));
        assert!(
            e.contains(":12:") && e.contains("unknown variant `sensors`"),
            "{e}"
        );

        let e = error(&GOOD.replace("127.0.0.1", "0.0.0.0"));
        assert!(
            e.contains(":6: metrics.listen:") && e.contains("loopback"),
            "{e}"
        );

        let e = error(&GOOD.replace("action: encrypt", "action: encrpyt"));
        assert!(
            e.starts_with("/etc/edge-agent/map.yaml:21: topics[1].field_rules.rules[0].action: unknown action"),
            "{e}"
        );

        let e = error(&GOOD.replace("/robot/status", "/imu"));
        assert!(
            e.starts_with("/etc/edge-agent/map.yaml:15: topics[1].topic:") && e.contains("twice"),
            "{e}"
        );

        let e = error(&GOOD.replace("max_bytes: 65536", "max_bytes: 0"));
        assert!(
            e.starts_with("/etc/edge-agent/map.yaml:14: topics[0].chunk:"),
            "{e}"
        );

        // The second topic's errors name the second topic's lines, camelCase keys too.
        let e = error(&GOOD.replace("std_msgs/String", "std_msgs/Nope"));
        assert!(
            e.starts_with("/etc/edge-agent/map.yaml:16: topics[1].type:"),
            "{e}"
        );
        let e = error(&GOOD.replace("schemaVersion: \"2\"", "schemaVersion: \" \""));
        assert!(
            e.starts_with("/etc/edge-agent/map.yaml:17: topics[1].schema_version:"),
            "{e}"
        );
        let e = error(&GOOD.replace(
            "          action: encrypt",
            "          action: encrypt\n          bogus: 1",
        ));
        assert!(
            e.starts_with("/etc/edge-agent/map.yaml:22: topics[1].field_rules.rules[0].bogus:"),
            "{e}"
        );

        let e = error(&GOOD.replace("output_dir: /data/out\n", ""));
        assert!(e.contains("topics[0].output"), "{e}");

        let e = error(&GOOD.replace("keyd:\n  socket: /run/keyd/keyd.sock\n", ""));
        assert!(e.contains("missing field `keyd`"), "{e}");
    }
}
