//! The ROS 2 edge agent: captures topics, applies field rules, signs every message through
//! keyd, and writes signed, encrypted, chained chunks.

pub mod msg;
pub mod config;
pub mod source_hash;
pub mod spool;
pub mod backlog;
pub mod metrics;
pub mod pipeline;
pub mod capture;
