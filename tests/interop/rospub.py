"""A ROS 2 publisher we did not write: Cyclone DDS (PyPI `cyclonedds`) with ROS 2's DDS type
and topic names, default QoS (reliable, volatile, keep last 10), XCDR1 as ROS 2 uses.

    python rospub.py --topic /chatter --type string --count 100 [--rate 1000] [--start 0]
                     [--size 100] [--wait-subscribers 1]

Message n is a pure function of n (`expected(kind, n)`), so a test can compare what the agent
captured with what was published without a side channel.
"""

import argparse
import math
import sys
import time
from dataclasses import dataclass

from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.annotations import final
from cyclonedds.idl.types import array, float64, int8, int32, uint8, uint16, uint32, sequence
from cyclonedds.pub import DataWriter
from cyclonedds.topic import Topic
from cyclonedds.util import duration


@dataclass
@final
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32
    nanosec: uint32


@dataclass
@final
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time
    frame_id: str


@dataclass
@final
class String(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


@dataclass
@final
class Quaternion(IdlStruct, typename="geometry_msgs::msg::dds_::Quaternion_"):
    x: float64
    y: float64
    z: float64
    w: float64


@dataclass
@final
class Vector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: float64
    y: float64
    z: float64


@dataclass
@final
class Imu(IdlStruct, typename="sensor_msgs::msg::dds_::Imu_"):
    header: Header
    orientation: Quaternion
    orientation_covariance: array[float64, 9]
    angular_velocity: Vector3
    angular_velocity_covariance: array[float64, 9]
    linear_acceleration: Vector3
    linear_acceleration_covariance: array[float64, 9]


@dataclass
@final
class NavSatStatus(IdlStruct, typename="sensor_msgs::msg::dds_::NavSatStatus_"):
    status: int8
    service: uint16


@dataclass
@final
class NavSatFix(IdlStruct, typename="sensor_msgs::msg::dds_::NavSatFix_"):
    header: Header
    status: NavSatStatus
    latitude: float64
    longitude: float64
    altitude: float64
    position_covariance: array[float64, 9]
    position_covariance_type: uint8


@dataclass
@final
class PointField(IdlStruct, typename="sensor_msgs::msg::dds_::PointField_"):
    name: str
    offset: uint32
    datatype: uint8
    count: uint32


@dataclass
@final
class PointCloud2(IdlStruct, typename="sensor_msgs::msg::dds_::PointCloud2_"):
    header: Header
    height: uint32
    width: uint32
    fields: sequence[PointField]
    is_bigendian: bool
    point_step: uint32
    row_step: uint32
    data: sequence[uint8]
    is_dense: bool


KINDS = {"string": String, "imu": Imu, "navsatfix": NavSatFix, "pointcloud2": PointCloud2}


def header(n, frame):
    return Header(stamp=Time(sec=1_700_000_000 + n, nanosec=(n * 7919) % 1_000_000_000), frame_id=frame)


def make(kind, n, size=100):
    """Message number n of a kind, as the publisher's object."""
    if kind == "string":
        text = f"n={n:010d} "
        return String(data=(text + "x" * max(0, size - len(text)))[: max(size, len(text))])
    if kind == "imu":
        a = n * 0.001
        return Imu(
            header=header(n, "imu_link"),
            orientation=Quaternion(x=math.sin(a), y=0.0, z=math.cos(a), w=1.0),
            orientation_covariance=[0.01 * i for i in range(9)],
            # A microsecond timestamp as a double: .25 and .75 are exact ties between two
            # shortest digit strings, which Python's repr breaks to the even digit.
            angular_velocity=Vector3(x=a, y=-a, z=1700000000123456.25 + 0.5 * n),
            angular_velocity_covariance=[0.0] * 9,
            linear_acceleration=Vector3(x=0.1, y=9.81, z=-n / 3),
            linear_acceleration_covariance=[1e-3] * 9,
        )
    if kind == "navsatfix":
        return NavSatFix(
            header=header(n, "gps"),
            status=NavSatStatus(status=n % 3 - 1, service=1),
            latitude=48.1 + n * 1e-6,
            longitude=11.5 - n * 1e-6,
            altitude=520.25 + n,
            position_covariance=[float(i) for i in range(9)],
            position_covariance_type=2,
        )
    if kind == "pointcloud2":
        points = max(1, size // 16)
        data = bytes((n + i) % 256 for i in range(16)) * points
        return PointCloud2(
            header=header(n, "lidar"),
            height=1,
            width=points,
            fields=[PointField(name=c, offset=4 * i, datatype=7, count=1) for i, c in enumerate("xyzi")],
            is_bigendian=False,
            point_step=16,
            row_step=16 * points,
            data=data,
            is_dense=True,
        )
    raise ValueError(kind)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--topic", required=True)
    p.add_argument("--type", dest="kind", choices=sorted(KINDS), required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--rate", type=float, default=0, help="messages per second, 0 = as fast as possible")
    p.add_argument("--size", type=int, default=100, help="string length / point cloud bytes")
    p.add_argument("--wait-subscribers", type=int, default=1)
    p.add_argument("--linger", type=float, default=1.0, help="seconds to stay after the last message")
    args = p.parse_args()

    qos = Qos(
        Policy.Reliability.Reliable(max_blocking_time=duration(seconds=1)),
        Policy.Durability.Volatile,
        Policy.History.KeepLast(10),
        Policy.DataRepresentation(use_cdrv0_representation=True),
    )
    participant = DomainParticipant(0)
    topic = Topic(participant, "rt" + args.topic, KINDS[args.kind], qos=qos)
    writer = DataWriter(participant, topic, qos=qos)
    deadline = time.time() + 30
    while len(writer.get_matched_subscriptions()) < args.wait_subscribers:
        if time.time() > deadline:
            sys.exit(f"rospub: no subscriber on {args.topic} after 30 s")
        time.sleep(0.05)
    time.sleep(0.2)  # let the reader's reliable state settle
    start = time.perf_counter()
    for i in range(args.count):
        n = args.start + i
        writer.write(make(args.kind, n, args.size))
        if args.rate:
            ahead = start + (i + 1) / args.rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.perf_counter() - start
    print(f"rospub: {args.count} {args.kind} on {args.topic} in {elapsed:.2f} s", file=sys.stderr, flush=True)
    time.sleep(args.linger)


if __name__ == "__main__":
    main()
