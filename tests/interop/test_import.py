"""`edge-agent import`: ROS 2 bags written by rosbags (PyPI, an implementation we did not
write), in MCAP and sqlite3, imported through keyd into chains the reference verifies;
a killed import resumes with nothing twice and nothing lost."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from peaq_os_sdk.stream import verify_data_package
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from test_agent import (AS_AGENT, KEYD_DEV, accepted_sequences, agent_binary, agent_cmd, as_json, bought,
                        check_exactly_once, in_netns, needs_root, private_dir, publish_cmd, wait_subscribed)
from test_agent import remove_private_dirs  # noqa: F401  (autouse here too: this module's directories)
from test_packages import package_from_line

import rospub

TYPES = get_typestore(Stores.ROS2_HUMBLE)
T0 = 1_764_547_200_000_000_000  # 2025-12-01T00:00:00Z, in ns


def as_rosbags(kind: str, n: int):
    """rospub's message n, as a rosbags object (the same values)."""
    m = rospub.make(kind, n)
    if kind == "string":
        return TYPES.types["std_msgs/msg/String"](data=m.data)
    t = TYPES.types
    return t["sensor_msgs/msg/Imu"](
        header=t["std_msgs/msg/Header"](
            stamp=t["builtin_interfaces/msg/Time"](sec=m.header.stamp.sec, nanosec=m.header.stamp.nanosec),
            frame_id=m.header.frame_id),
        orientation=t["geometry_msgs/msg/Quaternion"](x=m.orientation.x, y=m.orientation.y, z=m.orientation.z, w=m.orientation.w),
        orientation_covariance=np.array(m.orientation_covariance, dtype=np.float64),
        angular_velocity=t["geometry_msgs/msg/Vector3"](x=m.angular_velocity.x, y=m.angular_velocity.y, z=m.angular_velocity.z),
        angular_velocity_covariance=np.array(m.angular_velocity_covariance, dtype=np.float64),
        linear_acceleration=t["geometry_msgs/msg/Vector3"](
            x=m.linear_acceleration.x, y=m.linear_acceleration.y, z=m.linear_acceleration.z),
        linear_acceleration_covariance=np.array(m.linear_acceleration_covariance, dtype=np.float64),
    )


TYPE_NAMES = {"string": "std_msgs/msg/String", "imu": "sensor_msgs/msg/Imu"}


def write_bag(path: Path, storage: StoragePlugin, topics: dict[str, tuple[str, int]]) -> list[tuple[str, int, int]]:
    """A bag of topics {name: (kind, count)}, interleaved, 1 ms apart; returns (topic, n, ns)."""
    written = []
    with Writer(path, version=8, storage_plugin=storage) as writer:
        connections = {name: writer.add_connection(name, TYPE_NAMES[kind], typestore=TYPES) for name, (kind, _) in topics.items()}
        # A topic the map does not have: skipped, counted.
        other = writer.add_connection("/other", "std_msgs/msg/String", typestore=TYPES)
        counters = {name: 0 for name in topics}
        i = 0
        while any(counters[name] < count for name, (_, count) in topics.items()):
            for name, (kind, count) in topics.items():
                n = counters[name]
                if n < count:
                    ns = T0 + i * 1_000_000
                    writer.write(connections[name], ns, TYPES.serialize_cdr(as_rosbags(kind, n), TYPE_NAMES[kind]))
                    written.append((name, n, ns))
                    counters[name] += 1
                    i += 1
            if i % 97 == 0:
                writer.write(other, T0 + i * 1_000_000, TYPES.serialize_cdr(TYPES.types["std_msgs/msg/String"](data="x"), "std_msgs/msg/String"))
    return written


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{(ns // 1000) % 1_000_000:06d}Z"


@pytest.fixture(scope="module")
def keyd():
    directory = private_dir("kdi")
    start = subprocess.run([KEYD_DEV, "start", "--backend", "software", "--dir", str(directory), "--agent-user", "nobody"],
                           capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    identity = json.loads((directory / "identity.json").read_text())
    yield {"socket": start.stdout.strip().splitlines()[-1], "dir": directory, "keys": directory / "keys",
           "identity": identity, "backend": "software"}
    subprocess.run([KEYD_DEV, "stop", "--dir", str(directory)], check=False)


def write_map(work: Path, socket: str) -> Path:
    agent_dir = work / "agent"
    agent_dir.mkdir(exist_ok=True)  # (a mount point, in the full-disk test)
    subprocess.run(["chown", "nobody:nogroup", str(agent_dir)], check=True)
    path = work / "map.yaml"
    path.write_text(f"keyd:\n  socket: {socket}\nspool_dir: {agent_dir}/spool\noutput_dir: {agent_dir}/out\n"
                    "batch:\n  max_messages: 64\ntopics:\n"
                    "  - topic: /count\n    type: std_msgs/msg/String\n    schema_version: \"1\"\n    chunk: { max_bytes: 6000 }\n"
                    "  - topic: /imu\n    type: sensor_msgs/msg/Imu\n    schema_version: \"imu-1\"\n    chunk: { max_messages: 50 }\n")
    return path


def import_shell(map_path: Path, bag: Path, log: Path) -> str:
    return (f"{AS_AGENT} {shlex.quote(agent_binary())} import --map {shlex.quote(str(map_path))} "
            f"{shlex.quote(str(bag))} 2>>{shlex.quote(str(log))}")


def import_cmd(map_path: Path, bag: Path, log: Path) -> list[str]:
    return ["bash", "-c", import_shell(map_path, bag, log)]


def check_chain(keyd: dict, chain: Path, work: Path, kind: str, expected: list[tuple[str, int, int]]):
    packages = bought(keyd, chain, work)
    assert len(packages) == len(expected), (chain, len(packages), len(expected))
    sequences = [p["sequenceNumber"] for p in packages]
    assert sequences == sorted(set(sequences)), "sequence numbers not strictly increasing"
    for doc, (_, n, ns) in zip(packages, expected):
        assert doc["payload"] == as_json(kind, n), (chain, n)
        assert doc["timestamp"] == iso(ns), (doc["timestamp"], iso(ns))
    for doc in packages[:: max(1, len(packages) // 40)]:
        assert verify_data_package(package_from_line(doc)).valid
    return packages


@needs_root
@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=["mcap", "sqlite3"])
def test_bags_become_verified_chains(keyd, storage):
    work = private_dir("eai")
    bag = work / f"run-{storage.name.lower()}"
    written = write_bag(bag, storage, {"/count": ("string", 700), "/imu": ("imu", 300)})
    map_path = write_map(work, keyd["socket"])
    log = work / "import.log"
    done = subprocess.run(import_cmd(map_path, bag, log), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, log.read_text()[-3000:]
    assert "1000 messages into" in done.stdout and "of other topics" in done.stdout, done.stdout
    chains = work / "agent" / "out" / "imports" / bag.name
    check_chain(keyd, chains / "count", work, "string", [w for w in written if w[0] == "/count"])
    check_chain(keyd, chains / "imu", work, "imu", [w for w in written if w[0] == "/imu"])
    # Again: nothing to do, nothing written twice.
    chunks = sorted(p.name for p in chains.rglob("chunk-*.json"))
    again = subprocess.run(import_cmd(map_path, bag, log), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already imported" in again.stdout, (again.stdout, log.read_text()[-2000:])
    assert sorted(p.name for p in chains.rglob("chunk-*.json")) == chunks


@needs_root
def test_killed_import_resumes_with_nothing_twice(keyd):
    work = private_dir("eaj")
    bag = work / "long"
    count = 12000
    written = write_bag(bag, StoragePlugin.MCAP, {"/count": ("string", count), "/imu": ("imu", 600)})
    map_path = write_map(work, keyd["socket"])
    log = work / "import.log"
    rng = random.Random(20261202)
    kills = 0
    for _ in range(40):
        proc = subprocess.Popen(import_cmd(map_path, bag, log), stdout=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(rng.uniform(0.2, 0.9))
        if proc.poll() is not None:
            break
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
        proc.wait()
        kills += 1
    done = subprocess.run(import_cmd(map_path, bag, log), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, log.read_text()[-3000:]
    assert kills >= 5, f"only {kills} kills before the import finished: the test proves little"
    assert "resuming the import" in log.read_text()
    chains = work / "agent" / "out" / "imports" / "long"
    packages = check_chain(keyd, chains / "count", work, "string", [w for w in written if w[0] == "/count"])
    numbers = [int(re.match(r"n=(\d+)", p["payload"]["data"]).group(1)) for p in packages]
    assert numbers == list(range(count))
    check_chain(keyd, chains / "imu", work, "imu", [w for w in written if w[0] == "/imu"])


def wait_for(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


@needs_root
def test_import_on_a_full_disk_pauses_and_finishes(keyd):
    """The import's spool and chains on a tmpfs with 2 MiB left: the import stops where the
    disk is full, says so, retries, and finishes by itself once space returns, with every
    message in the chain once."""
    work = private_dir("eak")
    bag = work / "full"
    count = 12000
    written = write_bag(bag, StoragePlugin.MCAP, {"/count": ("string", count), "/imu": ("imu", 600)})
    agent_dir = work / "agent"
    agent_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(agent_dir)], check=True)
    try:
        map_path = write_map(work, keyd["socket"])
        fill = agent_dir / "fill"
        st = os.statvfs(agent_dir)
        with open(fill, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - 2 * 1024 * 1024)
        log = work / "import.log"
        proc = subprocess.Popen(import_cmd(map_path, bag, log), stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert wait_for(log, "the disk is full: not accepting", 120), log.read_text()[-3000:]
            time.sleep(2)
            assert proc.poll() is None, f"the import exited on a full disk:\n{log.read_text()[-3000:]}"
            fill.unlink()
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
                proc.wait()
        text = log.read_text()
        assert proc.returncode == 0, text[-3000:]
        assert "the disk takes writes again" in text, text[-3000:]
        assert f"{count + 600} messages into" in out, out
        chains = agent_dir / "out" / "imports" / "full"
        packages = check_chain(keyd, chains / "count", work, "string", [w for w in written if w[0] == "/count"])
        numbers = [int(re.match(r"n=(\d+)", p["payload"]["data"]).group(1)) for p in packages]
        assert numbers == list(range(count))
        check_chain(keyd, chains / "imu", work, "imu", [w for w in written if w[0] == "/imu"])
    finally:
        subprocess.run(["umount", "-l", str(agent_dir)], check=False)


@needs_root
def test_import_beside_a_live_agent(keyd):
    """A bag imported while the live agent captures, with one map and one keyd: the two share
    the DID's one sequence (each renumbers where the other took numbers), a second live agent
    on the same spool is refused, and every chain, live and imported, is exact."""
    work = private_dir("eal")
    bag = work / "beside"
    written = write_bag(bag, StoragePlugin.MCAP, {"/count": ("string", 6000), "/imu": ("imu", 300)})
    map_path = write_map(work, keyd["socket"])
    log, import_log = work / "agent.log", work / "import.log"
    second = f"{AS_AGENT} {shlex.quote(agent_binary())} run {shlex.quote(str(map_path))}"
    script = (f"cd {shlex.quote(str(work))}\n{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 2)}"
              f"if {second} 2> second.err; then echo 'a second agent ran on the same spool'; exit 1; fi\n"
              f"{publish_cmd('/count', 'string', 3000, rate=1000, linger=1)} &\npub=$!\n"
              f"sleep 0.5\n{import_shell(map_path, bag, import_log)} > import.out\n"
              "wait $pub\nsleep 1.5\nkill -TERM $agent; wait $agent\n")
    in_netns(script, timeout=240)
    assert "another edge-agent run is using it" in (work / "second.err").read_text()
    assert "6300 messages into" in (work / "import.out").read_text(), import_log.read_text()[-3000:]
    check_exactly_once(keyd, work, accepted_sequences(log), published=3000)
    chains = work / "agent" / "out" / "imports" / "beside"
    imported = check_chain(keyd, chains / "count", work, "string", [w for w in written if w[0] == "/count"])
    imported += check_chain(keyd, chains / "imu", work, "imu", [w for w in written if w[0] == "/imu"])
    live = bought(keyd, work / "agent" / "out" / "count", work)
    # One sequence for the DID: no number in two chains.
    numbers = [p["sequenceNumber"] for p in [*imported, *live]]
    assert len(set(numbers)) == len(numbers)
