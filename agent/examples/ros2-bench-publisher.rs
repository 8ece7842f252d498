//! A fast ROS 2 publisher for the agent's benchmark (scripts/bench-agent), where the Python
//! Cyclone DDS publisher of the interop tests would be the limit. Same arguments and same
//! messages as `tests/interop/rospub.py` (string, imu, pointcloud2), and camera frames
//! (image: `--size` bytes of `rgb8`, 1,920 pixels a row; 6,220,800 is 1080p). Reliable, keep-all,
//! blocking when the reader falls behind: what it publishes, the subscriber gets.
//!
//!   ros2-bench-publisher --topic /bench --type string --count N [--rate R] [--size B]

use std::time::{Duration, Instant};

use ros2_client::{
    qos::{History, Reliability, WhenFull},
    Context, MessageTypeName, Name, NodeName, NodeOptions, QosProfile,
};
use serde::Serialize;

#[derive(Serialize)]
struct Time {
    sec: i32,
    nanosec: u32,
}
#[derive(Serialize)]
struct Header {
    stamp: Time,
    frame_id: String,
}
#[derive(Serialize)]
struct StringMsg {
    data: String,
}
#[derive(Serialize)]
struct Xyzw(f64, f64, f64, f64);
#[derive(Serialize)]
struct Xyz(f64, f64, f64);
#[derive(Serialize)]
struct Imu {
    header: Header,
    orientation: Xyzw,
    orientation_covariance: [f64; 9],
    angular_velocity: Xyz,
    angular_velocity_covariance: [f64; 9],
    linear_acceleration: Xyz,
    linear_acceleration_covariance: [f64; 9],
}
#[derive(Serialize)]
struct PointField {
    name: String,
    offset: u32,
    datatype: u8,
    count: u32,
}
#[derive(Serialize)]
struct PointCloud2 {
    header: Header,
    height: u32,
    width: u32,
    fields: Vec<PointField>,
    is_bigendian: bool,
    point_step: u32,
    row_step: u32,
    #[serde(serialize_with = "as_bytes")]
    data: Vec<u8>,
    is_dense: bool,
}

/// `sensor_msgs/Image`: a camera frame (`rgb8` rows of 1,920 pixels in the benchmark).
#[derive(Serialize)]
struct Image {
    header: Header,
    height: u32,
    width: u32,
    encoding: String,
    is_bigendian: u8,
    step: u32,
    #[serde(serialize_with = "as_bytes")]
    data: Vec<u8>,
}

fn as_bytes<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

fn header(n: u64, frame: &str) -> Header {
    Header {
        stamp: Time {
            sec: 1_700_000_000 + n as i32,
            nanosec: ((n * 7919) % 1_000_000_000) as u32,
        },
        frame_id: frame.into(),
    }
}

struct Args {
    topic: String,
    kind: String,
    count: u64,
    rate: f64,
    size: usize,
    linger: f64,
}

fn parse_args() -> Args {
    let mut a = Args {
        topic: String::new(),
        kind: String::new(),
        count: 0,
        rate: 0.0,
        size: 100,
        linger: 1.0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = argv[i + 1].clone();
        let bad = |what: &str| -> ! {
            eprintln!("ros2-bench-publisher: bad {what}: {v}");
            std::process::exit(2)
        };
        match argv[i].as_str() {
            "--topic" => a.topic = v.clone(),
            "--type" => a.kind = v.clone(),
            "--count" => a.count = v.parse().unwrap_or_else(|_| bad("--count")),
            "--rate" => a.rate = v.parse().unwrap_or_else(|_| bad("--rate")),
            "--size" => a.size = v.parse().unwrap_or_else(|_| bad("--size")),
            "--linger" => a.linger = v.parse().unwrap_or_else(|_| bad("--linger")),
            "--start" | "--wait-subscribers" => {}
            other => bad(other),
        }
        i += 2;
    }
    if a.topic.is_empty() || a.kind.is_empty() {
        eprintln!("usage: ros2-bench-publisher --topic T --type string|imu|pointcloud2|image --count N [--rate R] [--size B]");
        std::process::exit(2);
    }
    a
}

fn main() {
    let args = parse_args();
    let context = Context::new().expect("DDS participant");
    let mut node = context
        .new_node(
            NodeName::new("/", "bench_publisher").expect("name"),
            NodeOptions::new().enable_rosout(false),
        )
        .expect("node");
    let qos = QosProfile::subscription_default()
        .reliability(Reliability::Reliable {
            when_full: WhenFull::Block,
        })
        .history(History::KeepAll);
    let (package, name) = match args.kind.as_str() {
        "string" => ("std_msgs", "String"),
        "imu" => ("sensor_msgs", "Imu"),
        "pointcloud2" => ("sensor_msgs", "PointCloud2"),
        "image" => ("sensor_msgs", "Image"),
        other => {
            eprintln!("ros2-bench-publisher: unknown type {other}");
            std::process::exit(2)
        }
    };
    let (ns, base) = args.topic.rsplit_once('/').expect("absolute topic");
    let topic = node
        .create_topic(
            &Name::new(if ns.is_empty() { "/" } else { ns }, base).expect("topic name"),
            MessageTypeName::new(package, name),
            &qos,
        )
        .expect("topic");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spinner = node.spinner().expect("spinner");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _ = rt.block_on(spinner.spin());
    });
    macro_rules! run {
        ($ty:ty, $make:expr) => {{
            let publisher = node
                .create_publisher::<$ty>(&topic, Some(qos.clone()))
                .expect("publisher");
            runtime.block_on(async {
                let wait = publisher.wait_for_subscription(&node);
                if tokio::time::timeout(Duration::from_secs(30), wait)
                    .await
                    .is_err()
                {
                    eprintln!("ros2-bench-publisher: no subscriber after 30 s");
                    std::process::exit(1);
                }
            });
            std::thread::sleep(Duration::from_millis(300));
            let start = Instant::now();
            for i in 0..args.count {
                let message: $ty = $make(i);
                if let Err(e) = publisher.publish(message) {
                    eprintln!("ros2-bench-publisher: publish {i}: {e}");
                    std::process::exit(1);
                }
                if args.rate > 0.0 {
                    let due = start + Duration::from_secs_f64((i + 1) as f64 / args.rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            eprintln!(
                "rospub: {} {} on {} in {elapsed:.2} s",
                args.count, args.kind, args.topic
            );
            std::thread::sleep(Duration::from_secs_f64(args.linger));
        }};
    }
    match args.kind.as_str() {
        "string" => run!(StringMsg, |n: u64| {
            let text = format!("n={n:010} ");
            StringMsg {
                data: format!("{text}{}", "x".repeat(args.size.saturating_sub(text.len()))),
            }
        }),
        "imu" => run!(Imu, |n: u64| {
            let a = n as f64 * 0.001;
            Imu {
                header: header(n, "imu_link"),
                orientation: Xyzw(a.sin(), 0.0, a.cos(), 1.0),
                orientation_covariance: std::array::from_fn(|i| 0.01 * i as f64),
                angular_velocity: Xyz(a, -a, 0.5),
                angular_velocity_covariance: [0.0; 9],
                linear_acceleration: Xyz(0.1, 9.81, -(n as f64) / 3.0),
                linear_acceleration_covariance: [1e-3; 9],
            }
        }),
        "image" => run!(Image, |n: u64| {
            const WIDTH: usize = 1920;
            let step = 3 * WIDTH;
            let rows = (args.size / step).max(1);
            let row: Vec<u8> = (0..step).map(|i| ((n as usize + i) % 256) as u8).collect();
            Image {
                header: header(n, "camera"),
                height: rows as u32,
                width: WIDTH as u32,
                encoding: "rgb8".into(),
                is_bigendian: 0,
                step: step as u32,
                data: row.repeat(rows),
            }
        }),
        _ => run!(PointCloud2, |n: u64| {
            let points = (args.size / 16).max(1);
            let block: Vec<u8> = (0..16).map(|i| ((n + i) % 256) as u8).collect();
            PointCloud2 {
                header: header(n, "lidar"),
                height: 1,
                width: points as u32,
                fields: ["x", "y", "z", "i"]
                    .iter()
                    .enumerate()
                    .map(|(i, c)| PointField {
                        name: c.to_string(),
                        offset: 4 * i as u32,
                        datatype: 7,
                        count: 1,
                    })
                    .collect(),
                is_bigendian: false,
                point_step: 16,
                row_step: 16 * points as u32,
                data: block.repeat(points),
                is_dense: true,
            }
        }),
    }
}
