//! keyd, the key daemon: backends, purpose checks, the sequence guard, the policy, the
//! audit log, the chunk ledger and the gRPC server. The `keyd` binary is a thin command
//! line over this.
//!
//! Data flow (the modules in order): [`server::listener`] accepts and identifies a
//! connection → [`server::gate`] authorizes each request against the [`policy`] before it
//! is decoded and bounds its size → [`service::api`] decodes it → [`service`] runs it
//! (purpose checks, then the [`backend`]; the [`guard`] for sequence numbers, the
//! [`ledger`] for signed chunks) and writes the [`audit`] record before the answer leaves.

pub mod audit;
pub mod backend;
pub mod config;
pub mod error;
pub mod files;
pub mod guard;
pub mod harden;
pub mod ledger;
pub mod policy;
pub mod server;
pub mod service;
