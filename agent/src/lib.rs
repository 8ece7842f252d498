//! The ROS 2 edge agent: captures topics, applies field rules, signs every message through
//! keyd, and writes signed, encrypted, chained chunks.

pub mod backlog;
pub mod capture;
pub mod config;
pub mod import;
pub mod listing;
pub mod metrics;
pub mod msg;
pub mod outbox;
pub mod pipeline;
pub mod spool;
pub mod udp_sockets;
