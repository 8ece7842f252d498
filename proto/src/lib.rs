//! keyd's gRPC API (`keyd.v1`): generated messages, client and server, and
//! [`client::KeydClient`], a typed client over a Unix socket that implements the
//! `stream` signing traits, so the CLI and the agent sign through keyd exactly as they
//! would with in-process keys.

#![forbid(unsafe_code)]

pub mod client;

/// Generated from `proto/keyd.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("keyd.v1");

    /// The plaintext chunk key is wiped when the message is dropped (prost and tonic's own
    /// encode and decode buffers are not ours to wipe).
    impl Drop for ChunkKey {
        fn drop(&mut self) {
            zeroize::Zeroize::zeroize(&mut self.key);
        }
    }

    impl std::fmt::Debug for ChunkKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ChunkKey")
                .field("key", &"<redacted>")
                .field("key_commitment", &self.key_commitment)
                .field("recipients", &self.recipients)
                .finish()
        }
    }

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keyd_descriptor");
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_keys_are_redacted_in_debug() {
        let key = super::v1::ChunkKey {
            key: vec![0xab; 32],
            key_commitment: "sha256:00".into(),
            recipients: vec![],
        };
        let response = super::v1::NewChunkKeysResponse { keys: vec![key] };
        let shown = format!("{response:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("171"),
            "{shown}"
        );
    }
}
