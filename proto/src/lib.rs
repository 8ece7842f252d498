//! keyd's gRPC API (`keyd.v1`): generated messages, client and server, and
//! [`client::KeydClient`], a typed client over a Unix socket that implements the
//! `stream` signing traits, so the CLI and the agent sign through keyd exactly as they
//! would with in-process keys.

pub mod client;

/// Generated from `proto/keyd.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("keyd.v1");

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keyd_descriptor");
}
