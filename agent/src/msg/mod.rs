//! ROS 2 message types at run time: `.msg` definitions, their registry, and the CDR decoder.

pub mod decode;
pub mod parse;
pub mod registry;

pub use decode::{Decoded, MessageSeed};
pub use registry::{MsgType, Registry, RegistryError};
