//! CDR samples as they come off DDS: any bytes decode or fail, for the shipped types with
//! strings, sequences, nested messages and byte arrays; never a panic, and memory bounded
//! by the input (lengths on the wire are not trusted).
#![no_main]

use std::sync::{Arc, OnceLock};

use edge_agent::msg::registry::{MsgType, Registry};
use libfuzzer_sys::fuzz_target;

fn types() -> &'static Vec<Arc<MsgType>> {
    static TYPES: OnceLock<Vec<Arc<MsgType>>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let registry = Registry::shipped();
        ["std_msgs/msg/String", "sensor_msgs/msg/Imu", "sensor_msgs/msg/NavSatFix", "sensor_msgs/msg/PointCloud2", "nav_msgs/msg/Odometry", "std_msgs/msg/Empty"]
            .iter()
            .map(|t| registry.resolve(t).expect("a shipped type"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let ty = &types()[pick as usize % types().len()];
    let _ = edge_agent::msg::decode::decode_cdr_le(ty, body);
});
