//! The receive path: one ROS 2 node (ros2-client over RustDDS), one subscription per topic
//! of the map, each sample decoded by its runtime type and queued. Nothing here waits for
//! keyd: the DDS reader cache is small, so the only wait is the `pause` overflow policy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use ros2_client::{
    qos::{Durability, History, Reliability, WhenFull},
    Context, MessageTypeName, Name, NodeName, NodeOptions, QosProfile,
};

use crate::backlog::{item_size, Backlog, Captured, Pushed};
use crate::config::{AgentConfig, Overflow, Qos, QosProfile as MapQos, TopicConfig};
use crate::metrics::{self, Metrics};
use crate::msg::{Decoded, MessageSeed, MsgType};

/// The DDS side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("DDS: {0}")]
    Dds(String),
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

/// The least number of samples the agent's DDS reader cache holds, whatever the map's
/// `depth` (RustDDS keeps 64 by default, and drops beyond that if the agent falls behind
/// for a moment), for types without byte blobs. Types with a `uint8[]` (images, point
/// clouds) keep the map's `depth`, so the cache stays bounded in bytes too.
pub const MIN_RECEIVE_CACHE: usize = 1024;

/// Whether a message type carries a byte sequence (an image, a point cloud…).
fn has_blob(ty: &MsgType) -> bool {
    use crate::msg::parse::{Arity, Primitive};
    use crate::msg::registry::Element;
    ty.fields.iter().any(|f| match &f.element {
        Element::Primitive(Primitive::Octet) => matches!(f.arity, Arity::Sequence { .. }),
        Element::Primitive(_) => false,
        Element::Message(inner) => has_blob(inner),
    })
}

/// The ROS 2 QoS of a map entry (reliability and history as asked; the receive cache at
/// least [`MIN_RECEIVE_CACHE`] deep for small messages, and `reliable` four times deeper
/// for them; for types with byte blobs, the map's depth whatever the profile).
pub fn ros_qos(qos: &Qos, ty: &MsgType) -> QosProfile {
    let depth = usize::from(qos.depth());
    let depth = if has_blob(ty) {
        depth
    } else {
        depth.max(MIN_RECEIVE_CACHE)
    };
    let base = QosProfile::subscription_default().durability(Durability::Volatile);
    match qos.profile {
        MapQos::Default => base
            .reliability(Reliability::Reliable {
                when_full: WhenFull::DEFAULT,
            })
            .history(History::KeepLast { depth }),
        MapQos::SensorData => base
            .reliability(Reliability::BestEffort)
            .history(History::KeepLast { depth }),
        // Keep-all would fall back to RustDDS's 64-sample limit: a deep keep-last instead,
        // but not for byte blobs: RustDDS keeps that many samples in memory at all times.
        MapQos::Reliable => base
            .reliability(Reliability::Reliable {
                when_full: WhenFull::DEFAULT,
            })
            .history(History::KeepLast {
                depth: if has_blob(ty) { depth } else { 4 * depth },
            }),
    }
}

/// The receive buffer asked for each DDS socket: enough for a burst of the map's largest
/// samples while the DDS event loop is busy (a 1 MiB point cloud is ~16 datagrams of 64 KiB;
/// the kernel counts its bookkeeping too). The kernel caps it at `net.core.rmem_max`.
pub fn receive_buffer_bytes(config: &AgentConfig) -> usize {
    if config.topics.iter().any(|t| has_blob(&t.msg_type)) {
        BLOB_RECEIVE_BUFFER
    } else {
        SMALL_RECEIVE_BUFFER
    }
}

/// The receive buffer for maps of small messages only (RustDDS's own default).
pub const SMALL_RECEIVE_BUFFER: usize = 8 << 20;
/// The receive buffer for maps with images or point clouds.
pub const BLOB_RECEIVE_BUFFER: usize = 32 << 20;

/// Every second: the kernel's drops on the agent's UDP sockets into a counter (and a
/// warning), the receive buffer the kernel gave them into a gauge; once, a warning if the
/// kernel gave less than `wanted`.
async fn watch_udp_sockets(metrics: Arc<Metrics>, wanted: usize) {
    let mut counted = 0u64;
    let mut checked_buffer = false;
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let stats = match crate::udp_sockets::stats() {
            Ok(stats) => stats,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kernel's UDP counters: kernel drops are not counted");
                return;
            }
        };
        if let Some(reported) = stats.receive_buffer {
            metrics.udp_receive_buffer.set(reported as i64);
            // Linux reports twice what it granted to the data.
            if !checked_buffer && reported / 2 < wanted as u64 {
                tracing::warn!(granted = reported / 2, wanted, "the DDS sockets' receive buffers are smaller than this map wants: a burst can overflow them (raise the sysctl net.core.rmem_max; the package's /usr/lib/sysctl.d/60-edge-agent.conf does)");
            }
            checked_buffer = true;
        }
        if stats.drops > counted {
            let new = stats.drops - counted;
            metrics.udp_receive_drops.inc_by(new);
            tracing::warn!(dropped = new, total = stats.drops, "the kernel dropped datagrams on the agent's DDS sockets (a receive buffer was full)");
        }
        counted = counted.max(stats.drops);
    }
}

/// The DDS QoS of a topic: its ROS 2 profile, and resource limits equal to its history
/// depth. Without them RustDDS keeps 64 samples per topic in its cache after the reader
/// took them (its default limit), which for 1 MiB point clouds is 64 MiB of memory holding
/// nothing anyone will read again.
pub fn dds_topic_qos(qos: &QosProfile) -> rustdds::QosPolicies {
    let depth = match qos.history {
        History::KeepLast { depth } => i32::try_from(depth).unwrap_or(i32::MAX),
        History::KeepAll => MIN_RECEIVE_CACHE as i32,
    };
    rustdds::QosPolicies::from(qos).modify_by(
        &rustdds::QosPolicyBuilder::new()
            .resource_limits(rustdds::policy::ResourceLimits {
                max_samples: depth,
                max_instances: 1,
                max_samples_per_instance: depth,
            })
            .build(),
    )
}

/// `/robot/imu` → namespace `/robot`, base name `imu`.
fn ros_name(topic: &str) -> Result<Name, String> {
    let (namespace, base) = topic.rsplit_once('/').ok_or("not an absolute name")?;
    let namespace = if namespace.is_empty() { "/" } else { namespace };
    Name::new(namespace, base).map_err(|e| format!("{e:?}"))
}

/// `pkg/msg/Name` → the ROS 2 message type name.
fn ros_type(type_name: &str) -> Result<MessageTypeName, String> {
    let normalized = crate::msg::registry::normalize(type_name).ok_or("not pkg/msg/Name")?;
    let (package, name) = normalized.split_once('/').ok_or("not pkg/msg/Name")?;
    Ok(MessageTypeName::new(package, name))
}

/// Starts the node and one receive task per topic on the current tokio runtime. Returns the
/// context, which must be kept alive as long as capture should run.
pub fn start(
    config: &AgentConfig,
    backlog: Arc<Backlog>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> Result<Context, CaptureError> {
    let wanted = receive_buffer_bytes(config);
    let participant = rustdds::DomainParticipantBuilder::new(config.domain_id)
        .socket_receive_buffer_size(wanted)
        .build()
        .map_err(|e| CaptureError::Dds(format!("{e:?}")))?;
    let context = Context::from_domain_participant(participant)
        .map_err(|e| CaptureError::Dds(format!("{e:?}")))?;
    tokio::spawn(watch_udp_sockets(metrics.clone(), wanted));
    let node_name = NodeName::new("/", &config.node_name)
        .map_err(|e| CaptureError::Dds(format!("node name {:?}: {e:?}", config.node_name)))?;
    let mut node = context
        .new_node(node_name.clone(), NodeOptions::new().enable_rosout(false))
        .map_err(|e| CaptureError::Dds(format!("{e:?}")))?;
    for (index, topic) in config.topics.iter().enumerate() {
        let fail = |reason: String| CaptureError::Topic {
            topic: topic.topic.clone(),
            reason,
        };
        let qos = ros_qos(&topic.qos, &topic.msg_type);
        // The topic made here, not by ros2-client: its QoS also bounds RustDDS's topic cache
        // to the history depth (see `dds_topic_qos`); the subscription inherits it.
        let dds_topic = context
            .domain_participant()
            .create_topic(
                ros_name(&topic.topic)
                    .map_err(fail)?
                    .to_dds_name("rt", &node_name, ""),
                ros_type(&topic.type_name).map_err(fail)?.dds_msg_type(),
                &dds_topic_qos(&qos),
                rustdds::TopicKind::NoKey,
            )
            .map_err(|e| fail(format!("{e:?}")))?;
        let subscription = node
            .create_subscription::<Decoded>(&dds_topic, Some(qos))
            .map_err(|e| fail(format!("{e:?}")))?;
        let labels = metrics::topic(&topic.topic);
        let task = Receiver {
            index,
            topic: topic.clone(),
            overflow: config.queue.overflow,
            backlog: backlog.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            received: metrics.received.get_or_create(&labels).clone(),
            decode_errors: metrics.decode_errors.get_or_create(&labels).clone(),
            dropped: metrics.dropped.get_or_create(&labels).clone(),
            paused: metrics.paused.get_or_create(&labels).clone(),
            lost: metrics.samples_lost.get_or_create(&labels).clone(),
        };
        tokio::spawn(async move {
            let stream = subscription.async_stream_seed(MessageSeed(task.topic.msg_type.clone()));
            futures::pin_mut!(stream);
            let mut gaps = Gaps::default();
            while let Some(sample) = stream.next().await {
                if task.stop.load(Ordering::Relaxed) {
                    break;
                }
                let sample = match sample {
                    Ok((decoded, info)) => {
                        gaps.seen(info.publisher_gid(), info.sequence_number(), &task);
                        Ok(decoded)
                    }
                    Err(e) => {
                        gaps.undecoded += 1;
                        Err(e)
                    }
                };
                task.receive(sample).await;
            }
        });
        tracing::info!(topic = %topic.topic, r#type = %topic.type_name, qos = ?topic.qos.profile, depth = topic.qos.depth(), "subscribed");
    }
    let spinner = node
        .spinner()
        .map_err(|e| CaptureError::Dds(format!("{e:?}")))?;
    tokio::spawn(async move {
        // Keep the node (its readers) alive with the spinner, which answers ROS graph queries.
        let _node = node;
        if let Err(e) = spinner.spin().await {
            tracing::warn!(error = ?e, "ROS 2 spinner stopped");
        }
    });
    Ok(context)
}

/// Samples a publisher sent that never reached the agent, from the gaps in each publisher's
/// sequence numbers (RustDDS does not report sample-lost status): the reader cache overwrote
/// them while the agent was not reading, the publisher's history dropped them before they
/// were delivered, or the network lost them (best effort). The first sample seen from a
/// publisher starts its count. A sample that arrived but did not decode carries no sequence
/// number; it is counted as a decode error, not as lost.
#[derive(Default)]
struct Gaps {
    last: std::collections::HashMap<ros2_client::Gid, i64>,
    /// Samples that failed to decode since the last gap (each leaves a gap of one).
    undecoded: u64,
    /// Lost samples counted but not yet in a log line, and when the last line was written:
    /// at most one a second, however often samples are lost (the counter has every one).
    unlogged: u64,
    logged_at: Option<std::time::Instant>,
}

impl Gaps {
    fn seen(&mut self, publisher: ros2_client::Gid, sequence: i64, task: &Receiver) {
        let previous = self.last.insert(publisher, sequence);
        let Some(previous) = previous.filter(|p| sequence > p + 1) else {
            return;
        };
        let gap = (sequence - previous - 1) as u64;
        let explained = gap.min(self.undecoded);
        self.undecoded -= explained;
        let lost = gap - explained;
        if lost == 0 {
            return;
        }
        task.lost.inc_by(lost);
        self.unlogged += lost;
        let now = std::time::Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::warn!(topic = %task.topic.topic, lost = self.unlogged, after_sequence = previous, "samples lost before the agent read them (the reader cache overflowed, the publisher's history dropped them, or the network did)");
            self.unlogged = 0;
            self.logged_at = Some(now);
        }
    }
}

struct Receiver {
    index: usize,
    topic: TopicConfig,
    overflow: Overflow,
    backlog: Arc<Backlog>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    received: Counter,
    decode_errors: Counter,
    dropped: Counter,
    paused: Counter,
    lost: Counter,
}

impl Receiver {
    async fn receive<E: std::fmt::Debug>(&self, sample: Result<Decoded, E>) {
        let fields = match sample {
            Ok(Decoded(fields)) => fields,
            Err(e) => {
                let count = self.decode_errors.inc() + 1;
                if count.is_power_of_two() {
                    tracing::warn!(topic = %self.topic.topic, r#type = %self.topic.type_name, error = ?e, count, "a sample did not decode as the map's type");
                }
                return;
            }
        };
        self.received.inc();
        let mut item = Captured {
            topic: self.index,
            captured_at: stream::layout::utc_iso8601(SystemTime::now(), true),
            size: item_size(&fields),
            fields,
            origin: None,
        };
        let mut paused = false;
        loop {
            match self.backlog.push(item) {
                Ok(Pushed::Queued) => return,
                Ok(Pushed::QueuedDropping(n) | Pushed::Dropped(n)) => {
                    self.dropped.inc_by(n as u64);
                    return;
                }
                Ok(Pushed::Full(back)) if self.overflow == Overflow::DropOldest => {
                    // Larger than the whole disk queue: it cannot be kept.
                    drop(back);
                    self.dropped.inc();
                    return;
                }
                Ok(Pushed::Full(back)) => {
                    if !paused {
                        paused = true;
                        self.paused.inc();
                        tracing::warn!(topic = %self.topic.topic, "queue full: pausing this topic");
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    item = *back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    tracing::error!(topic = %self.topic.topic, error = %e, "cannot queue: stopping");
                    self.metrics.pipeline_up.store(false, Ordering::Relaxed);
                    self.stop.store(true, Ordering::Relaxed);
                    self.backlog.close();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_cache_is_bounded_to_the_history_depth() {
        let qos = QosProfile::subscription_default().history(History::KeepLast { depth: 5 });
        let dds = dds_topic_qos(&qos);
        let limits = dds.resource_limits().expect("resource limits set");
        assert_eq!(limits.max_samples, 5);
        assert_eq!(limits.max_samples_per_instance, 5);
        // The rest of the profile is kept.
        assert!(!dds.is_reliable());
    }

    #[test]
    fn reliable_deepens_the_cache_of_small_messages_only() {
        use crate::msg::registry::Registry;
        let registry = Registry::shipped();
        let string = registry.resolve("std_msgs/msg/String").unwrap();
        let cloud = registry.resolve("sensor_msgs/msg/PointCloud2").unwrap();
        let reliable = Qos {
            profile: MapQos::Reliable,
            depth: Some(10),
        };
        let depth = |ty| match ros_qos(&reliable, ty).history {
            History::KeepLast { depth } => depth,
            History::KeepAll => usize::MAX,
        };
        assert_eq!(depth(&string), 4 * MIN_RECEIVE_CACHE);
        assert_eq!(depth(&cloud), 10);
    }
}
