"""The edge agent against real parts: a Cyclone DDS publisher we did not write (rospub.py),
keyd on the software and pkcs11 (SoftHSM) backends, and the reference SDK and CLI as judges.

Every DDS participant runs inside a private network namespace that has only loopback
(`unshare -n`), so no discovery traffic reaches the host's network. The agent runs as
`nobody`, as it refuses root.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from peaq_os_sdk.stream import verify_data_package

from conftest import OURS, ROOT, ours, ref
from datasets import check_datasets
from test_packages import package_from_line

sys.path.insert(0, str(Path(__file__).parent))
import rospub  # noqa: E402

AGENT = str(Path(OURS).with_name("edge-agent"))
PYTHON = sys.executable
PUBLISHER = str(Path(__file__).parent / "rospub.py")
KEYD_DEV = str(ROOT / "scripts" / "keyd-dev")
AS_AGENT = "setpriv --reuid=nobody --regid=nogroup --clear-groups"
NETNS_SETUP = ("ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo\n"
               # Whatever happens, leave nothing running.
               "trap 'kill -KILL $(jobs -p) 2>/dev/null || true' EXIT\n")


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: a private network namespace, and the agent run as nobody")


_made: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def remove_private_dirs():
    """The directories below are outside pytest's tmp_path (they must be short and reachable
    by the agent's user): remove them when the module is done (PEAQOS_KEEP=1 keeps them)."""
    yield
    if os.environ.get("PEAQOS_KEEP"):
        return
    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)


def private_dir(prefix: str) -> Path:
    """A short directory the agent's user can reach (Unix socket paths are short)."""
    d = Path(subprocess.run(["mktemp", "-d", f"/tmp/{prefix}XXXX"], capture_output=True, text=True, check=True).stdout.strip())
    d.chmod(0o755)
    _made.append(d)
    return d


def in_netns(script: str, timeout: float) -> subprocess.CompletedProcess:
    """Runs a bash script in a new network namespace with only loopback (multicast on)."""
    proc = subprocess.run(["unshare", "-n", "bash", "-c", "set -euo pipefail\n" + NETNS_SETUP + script],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def publish_cmd(topic: str, kind: str, count: int, rate: float = 0, start: int = 0, size: int = 100, linger: float = 1.0) -> str:
    return (f"{shlex.quote(PYTHON)} {shlex.quote(PUBLISHER)} --topic {topic} --type {kind} --count {count} "
            f"--rate {rate} --start {start} --size {size} --linger {linger}")


_agent_copy: list[str] = []


def agent_binary() -> str:
    """The agent, copied where its unprivileged user can surely execute it (the build may
    live in root's home)."""
    if not _agent_copy or not Path(_agent_copy[0]).exists():
        # (again when a module's directories were removed at its end: other modules use it)
        _agent_copy.clear()
        d = private_dir("eab")
        subprocess.run(["install", "-m", "0755", AGENT, str(d / "edge-agent")], check=True)
        _agent_copy.append(str(d / "edge-agent"))
    return _agent_copy[0]


def agent_cmd(map_path: Path, log: Path) -> str:
    return (f"EDGE_AGENT_LOG=info,edge_agent=debug,rustdds=error {AS_AGENT} {shlex.quote(agent_binary())} "
            f"run {shlex.quote(str(map_path))} 2>>{shlex.quote(str(log))}")


def wait_subscribed(log: Path, topics: int) -> str:
    return (f"for _ in $(seq 200); do [ \"$(grep -c '\"subscribed\"' {shlex.quote(str(log))} 2>/dev/null || true)\" -ge {topics} ] && break; sleep 0.05; done\n")


@pytest.fixture(scope="module", params=["software", "pkcs11"])
def keyd(request):
    directory = private_dir("kda")
    start = subprocess.run([KEYD_DEV, "start", "--backend", request.param, "--dir", str(directory), "--agent-user", "nobody"],
                           capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    identity = json.loads((directory / "identity.json").read_text())
    yield {"socket": start.stdout.strip().splitlines()[-1], "dir": directory, "keys": directory / "keys",
           "identity": identity, "backend": request.param}
    subprocess.run([KEYD_DEV, "stop", "--dir", str(directory)], check=False)


def write_map(work: Path, socket: str, topics: str, extra: str = "") -> Path:
    agent_dir = work / "agent"
    agent_dir.mkdir()
    os.chown(agent_dir, 65534, 65534)
    path = work / "map.yaml"
    path.write_text(f"keyd:\n  socket: {socket}\n  backoff_max_ms: 500\nspool_dir: {agent_dir}/spool\n"
                    f"output_dir: {agent_dir}/out\n{extra}topics:\n{topics}")
    return path


def bought(keyd: dict, chunk_dir: Path, work: Path) -> list[dict]:
    """The reference CLI grants and consumes the chain (verifying it); returns its packages."""
    keys = keyd["keys"]
    name = chunk_dir.name
    buyer = ["--buyer-public-key", (keys / "buyer.pub").read_text().strip(), "--buyer-id", "buyer-1"]
    ref("-q", "stream", "grant", "--chunk-dir", str(chunk_dir), *buyer, "--owner-private-key-file", str(keys / "owner.key"),
        "--output-dir", str(work / f"access-{name}"), cwd=work)
    ref("-q", "stream", "consume", "--chunk-dir", str(chunk_dir), "--data-dir", str(chunk_dir), "--access-dir", str(work / f"access-{name}"),
        "--buyer-private-key-file", str(keys / "buyer.key"), "--buyer-id", "buyer-1", "--output", str(work / f"{name}.jsonl"), cwd=work)
    # Our verifier too, with the machine's chain key pinned and the sourceHash checked.
    ours("-q", "stream", "verify", "--chunk-dir", str(chunk_dir), "--recipient-key-file", str(keys / "owner.key"),
         "--expect-public-key", keyd["identity"]["chainPublicKeyHex"], "--expect-did", keyd["identity"]["did"])
    return [json.loads(line) for line in (work / f"{name}.jsonl").read_text().splitlines()]


def as_json(kind: str, n: int, size: int = 100):
    """What the publisher sent, as the agent's JSON (floats are Python floats either way)."""
    return json.loads(json.dumps(dataclasses.asdict(rospub.make(kind, n, size))))


@needs_root
def test_topics_become_verified_chains(keyd):
    work = private_dir("eat")
    counts = {"chatter": 300, "imu": 120, "gps": 80}
    map_path = write_map(work, keyd["socket"], """\
  - topic: /chatter
    type: std_msgs/msg/String
    schema_version: "1"
    chunk: { max_bytes: 8192 }
  - topic: /imu
    type: sensor_msgs/msg/Imu
    schema_version: "imu-1"
    chunk: { max_messages: 50 }
    datasets: { every: 200ms, title: IMU }
  - topic: /gps
    type: sensor_msgs/msg/NavSatFix
    schema_version: "1"
    field_rules:
      default_action: include
      rules:
        - field_path: latitude
          action: encrypt
        - field_path: position_covariance
          action: exclude
""", extra="metrics:\n  listen: 127.0.0.1:9464\n")
    log = work / "agent.log"
    script = (f"{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 3)}"
              f"{publish_cmd('/chatter', 'string', counts['chatter'], rate=1500)} &\np1=$!\n"
              f"{publish_cmd('/imu', 'imu', counts['imu'], rate=600)} &\np2=$!\n"
              f"{publish_cmd('/gps', 'navsatfix', counts['gps'], rate=400)}\n"
              "wait $p1 $p2\n"
              "curl -sf 127.0.0.1:9464/health\ncurl -sf 127.0.0.1:9464/metrics > metrics.txt || true\n"
              "kill -TERM $agent; wait $agent\n")
    in_netns(f"cd {shlex.quote(str(work))}\n" + script, timeout=180)
    metrics = (work / "metrics.txt").read_text()
    assert 'edge_agent_received_total{topic="/chatter"} 300' in metrics, metrics

    out = work / "agent" / "out"
    sequences = []
    for name, kind in [("chatter", "string"), ("imu", "imu"), ("gps", "navsatfix")]:
        packages = bought(keyd, out / name, work)
        assert len(packages) == counts[name], name
        for n, doc in enumerate(packages):
            assert doc["did"] == keyd["identity"]["did"]
            assert verify_data_package(package_from_line(doc)).valid, (name, n)
            expected = as_json(kind, n)
            payload = doc["payload"]
            if name == "gps":
                assert "position_covariance" not in payload
                assert isinstance(payload.pop("latitude"), dict)  # the encrypted wrapper
                expected.pop("latitude")
                expected.pop("position_covariance")
            assert payload == expected, (name, n)
            sequences.append(doc["sequenceNumber"])
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["machineDid"] == keyd["identity"]["did"]
    # A dataset of the chatter chain, listed through keyd and checked by the buyer.
    check_datasets(keyd, out / "chatter", work)
    # The agent lists /imu on its own: consecutive datasets from chunk 0, each verifying.
    listed = sorted((out / "imu").glob("dataset-*.json"), key=lambda p: int(p.name.split("-")[1]))
    assert listed, "the agent listed no dataset of /imu"
    expected_first = 0
    for path in listed:
        doc = json.loads(path.read_text())
        assert doc["firstIndex"] == expected_first and doc["title"] == "IMU" and doc["timeRange"], doc
        expected_first = doc["lastIndex"] + 1
        ours("-q", "dataset", "verify", "--dataset", str(path), "--chunk-dir", str(out / "imu"))
    # The encrypted field is nowhere in clear: not in the spool, the chunks, or the logs.
    # Message 0's latitude is plain 48.1, which a log's timestamp or duration can contain by
    # chance; from message 1 on the values have seven or more digits and cannot.
    secrets = [json.dumps(rospub.make("navsatfix", n).latitude) for n in range(1, counts["gps"], 7)]
    assert all(len(s) >= 8 for s in secrets), secrets
    for path in [*sorted((work / "agent").rglob("*")), log]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), f"a latitude in clear in {path}"
    # One sequence for the DID, across topics: no number twice.
    assert len(set(sequences)) == len(sequences)
    imu_chunks = json.loads((out / "imu" / "manifest.json").read_text())["totalChunks"]
    assert imu_chunks == 3  # 120 messages, 50 per chunk


def accepted_sequences(log: Path) -> set[int]:
    """Every sequence number the agent logged as durable in its spool."""
    accepted = set()
    for line in log.read_text(errors="replace").splitlines():
        if '"spooled"' not in line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by SIGKILL
        first, last, count = event["first_sequence"], event["last_sequence"], event["count"]
        assert last - first + 1 == count
        accepted.update(range(first, last + 1))
    return accepted


def check_exactly_once(keyd: dict, work: Path, accepted: set[int], published: int | None = None):
    packages = bought(keyd, work / "agent" / "out" / "count", work)
    numbers = [int(re.match(r"n=(\d+)", p["payload"]["data"]).group(1)) for p in packages]
    sequences = [p["sequenceNumber"] for p in packages]
    assert numbers == sorted(set(numbers)), "a message twice or out of order"
    assert sequences == sorted(set(sequences)), "sequence numbers not strictly increasing"
    missing = accepted - set(sequences)
    assert not missing, f"{len(missing)} accepted packages lost, e.g. {sorted(missing)[:5]}"
    if published is not None:
        assert numbers == list(range(published))
    for doc in packages[:: max(1, len(packages) // 50)]:
        assert verify_data_package(package_from_line(doc)).valid
    return numbers


COUNT_TOPIC = """\
  - topic: /count
    type: std_msgs/msg/String
    schema_version: "1"
    chunk: { max_bytes: 3000, max_age_ms: 300 }
"""


@needs_root
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(keyd):
    if keyd["backend"] != "software":
        pytest.skip("one backend is enough for the crash test")
    work = private_dir("eak")
    map_path = write_map(work, keyd["socket"], COUNT_TOPIC, extra="batch:\n  max_messages: 64\n  max_delay_ms: 5\n")
    log = work / "agent.log"
    rng = random.Random(20261122)
    kills = 30
    delays = " ".join(f"{rng.uniform(0.05, 0.6):.3f}" for _ in range(kills))
    script = (f"{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
              f"{publish_cmd('/count', 'string', 40000, rate=2500, linger=2)} &\npub=$!\n"
              f"for d in {delays}; do\n"
              "  sleep $d; kill -KILL $agent; wait $agent || true\n"
              f"  {agent_cmd(map_path, log)} &\n  agent=$!\n"
              "done\n"
              "wait $pub\nsleep 1\nkill -TERM $agent; wait $agent\n")
    in_netns(script, timeout=240)
    accepted = accepted_sequences(log)
    assert len(accepted) > 1000, "the agent accepted too little to test anything"
    numbers = check_exactly_once(keyd, work, accepted)
    assert len(numbers) >= len(accepted)


@needs_root
def test_keyd_restart_under_load_loses_nothing(keyd):
    work = private_dir("ear")
    map_path = write_map(work, keyd["socket"], COUNT_TOPIC)
    log = work / "agent.log"
    script = (f"{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
              f"{publish_cmd('/count', 'string', 6000, rate=1500, linger=1)} &\npub=$!\n"
              f"sleep 1.5\nKEYD_DEV_DOWN_SECONDS=1.5 {KEYD_DEV} restart --dir {keyd['dir']} >/dev/null\n"
              "wait $pub\nsleep 2\nkill -TERM $agent; wait $agent\n")
    in_netns(script, timeout=120)
    assert "keyd could not sign; retrying" in log.read_text() or "keyd could not close" in log.read_text()
    check_exactly_once(keyd, work, accepted_sequences(log), published=6000)


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a Prometheus text exposition (0 if absent)."""
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"))


@needs_root
def test_full_disk_pauses_and_resumes_by_itself(keyd):
    """Spool, queue and chain on a 16 MiB tmpfs that fills up under load: the agent stops
    accepting (drop_oldest counts what it refused), says so on /health, retries, and resumes
    when space returns; every accepted package is published exactly once, and what it
    received is either published or counted as dropped."""
    if keyd["backend"] != "software":
        pytest.skip("one backend is enough for the disk test")
    work = private_dir("ead")
    agent_dir = work / "agent"
    agent_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(agent_dir)], check=True)
    try:
        os.chown(agent_dir, 65534, 65534)
        path = work / "map.yaml"
        path.write_text(f"keyd:\n  socket: {keyd['socket']}\n  backoff_max_ms: 500\nspool_dir: {agent_dir}/spool\n"
                        f"output_dir: {agent_dir}/out\nmetrics:\n  listen: 127.0.0.1:9464\n"
                        "queue:\n  memory_bytes: 65536\n  disk_bytes: 4194304\n  overflow: drop_oldest\n"
                        f"topics:\n{COUNT_TOPIC}")
        log = work / "agent.log"
        fill = agent_dir / "fill"
        script = (f"{agent_cmd(path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
                  f"{publish_cmd('/count', 'string', 8000, rate=1000, linger=1)} &\npub=$!\n"
                  f"sleep 1.5\ndd if=/dev/zero of={fill} bs=64k 2>/dev/null || true\n"
                  "for _ in $(seq 100); do curl -s 127.0.0.1:9464/health > health-full.txt || true;"
                  " grep -q 'disk is full' health-full.txt && break; sleep 0.1; done\n"
                  "curl -s 127.0.0.1:9464/metrics > metrics-full.txt\n"
                  f"sleep 2\nrm -f {fill}\n"
                  "for _ in $(seq 100); do curl -sf 127.0.0.1:9464/health > health-after.txt && break; sleep 0.1; done\n"
                  "wait $pub\nsleep 1.5\ncurl -s 127.0.0.1:9464/metrics > metrics.txt\n"
                  "kill -TERM $agent; wait $agent\n")
        in_netns(f"cd {shlex.quote(str(work))}\n" + script, timeout=120)
        text = log.read_text()
        assert "the disk is full: not accepting" in text, text[-3000:]
        assert "the disk takes writes again" in text, text[-3000:]
        assert "disk is full" in (work / "health-full.txt").read_text()
        assert (work / "health-after.txt").read_text().strip() == "ok"
        full = (work / "metrics-full.txt").read_text()
        assert metric(full, "edge_agent_disk_full") == 1, full
        metrics = (work / "metrics.txt").read_text()
        assert metric(metrics, "edge_agent_disk_full") == 0
        assert metric(metrics, "edge_agent_disk_full_retries_total") > 0
        numbers = check_exactly_once(keyd, work, accepted_sequences(log))
        received = metric(metrics, "edge_agent_received_total")
        dropped = metric(metrics, "edge_agent_dropped_total")
        assert received == len(numbers) + dropped, (received, len(numbers), dropped)
        assert numbers[-1] == 7999, "capture did not resume after the disk had room again"
    finally:
        subprocess.run(["umount", "-l", str(agent_dir)], check=False)


@needs_root
def test_samples_the_reader_cache_lost_are_counted(keyd):
    """With the queue nearly nothing and `pause`, a keyd outage stops the agent reading from
    DDS; the reader cache then overwrites samples. Each is counted as lost, from the gaps in
    the publisher's sequence numbers: received + lost = published, and every received
    message is published once."""
    if keyd["backend"] != "software":
        pytest.skip("one backend is enough")
    work = private_dir("eal")
    map_path = write_map(work, keyd["socket"], COUNT_TOPIC,
                         extra="metrics:\n  listen: 127.0.0.1:9464\n"
                               "queue:\n  memory_bytes: 4096\n  disk_bytes: 0\n  overflow: pause\n")
    log = work / "agent.log"
    # The outage is in the middle: a sample lost after the last one received leaves no gap
    # to see (RustDDS reports no sample-lost status of its own).
    published = 14000
    script = (f"cd {shlex.quote(str(work))}\n{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
              f"{publish_cmd('/count', 'string', published, rate=2000, linger=1)} &\npub=$!\n"
              f"sleep 1\nKEYD_DEV_DOWN_SECONDS=2.5 {KEYD_DEV} restart --dir {keyd['dir']} >/dev/null\n"
              "wait $pub\nsleep 2\ncurl -s 127.0.0.1:9464/metrics > metrics.txt\n"
              "kill -TERM $agent; wait $agent\n")
    in_netns(script, timeout=120)
    metrics = (work / "metrics.txt").read_text()
    received = metric(metrics, "edge_agent_received_total")
    lost = metric(metrics, "edge_agent_samples_lost_total")
    assert lost > 0, "the outage lost nothing: the test proves nothing"
    assert received + lost == published, (received, lost, metrics)
    assert "samples lost before the agent read them" in log.read_text()
    numbers = check_exactly_once(keyd, work, accepted_sequences(log))
    assert len(numbers) == received


def test_check_names_file_line_and_key(tmp_path):
    bad = tmp_path / "map.yaml"
    bad.write_text("keyd:\n  socket: /run/keyd.sock\nspool_dir: s\noutput_dir: o\ntopics:\n"
                   "  - topic: /imu\n    type: sensor_msgs/msg/Imu\n    schema_version: \"1\"\n    qos: { profile: fast }\n")
    proc = subprocess.run([AGENT, "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{bad}:9: topics[0].qos.profile: unknown variant `fast`" in proc.stderr, proc.stderr
    good = subprocess.run([AGENT, "check", str(ROOT / "policies" / "edge-agent-map.yaml")], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr


@needs_root
def test_refuses_root():
    proc = subprocess.run([AGENT, "run", str(ROOT / "policies" / "edge-agent-map.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2 and "refusing to run as root" in proc.stderr


def test_shipped_definitions_match_rosbags():
    """Our .msg files, read by rosbags' own parser, equal rosbags' Humble type store."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    root = ROOT / "agent" / "interfaces"
    checked = 0
    for path in sorted(root.glob("*/msg/*.msg")):
        name = f"{path.parts[-3]}/msg/{path.stem}"
        if name not in store.fielddefs:
            continue
        fields = get_types_from_msg(path.read_text(), name)[name][1]
        if not fields:  # an empty message: one placeholder octet on the wire, as we decode it
            fields = [("structure_needs_at_least_one_member", store.fielddefs[name][1][0][1])]
        assert fields == store.fielddefs[name][1], name
        checked += 1
    assert checked >= 80, checked
