//! keyd, the key daemon: backends, purpose checks, the sequence guard, the policy, the
//! audit log and the gRPC server. The `keyd` binary is a thin command line over this.

pub mod audit;
pub mod backend;
pub mod config;
pub mod guard;
pub mod harden;
pub mod policy;
pub mod server;
pub mod service;
