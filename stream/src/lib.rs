//! peaq Stream formats, byte-compatible with the reference implementation
//! (`peaq-os-sdk` 0.12.1, `peaq_os_sdk.stream`).
//!
//! Pure: no sockets, no ROS, no tokens. Anyone can verify or decrypt with it. Signing
//! and key wrapping sit behind the narrow, batch-friendly traits of [`signer`], with
//! in-process implementations over key files in [`local`]; keyd implements the same
//! traits over gRPC.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod chain;
pub mod dataset;
pub mod devkeys;
pub mod fsio;
pub mod hexenc;
pub mod json;
pub mod keys;
pub mod layout;
pub mod local;
pub mod mapfile;
pub mod package;
pub mod provider;
pub mod rules;
pub mod sealed;
pub mod sign;
pub mod signer;
