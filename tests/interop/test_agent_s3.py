"""The edge agent with an S3 output, against a real S3-compatible server (Garage) that lives
in the same private network namespace as the agent and the DDS publisher (only loopback).

Faults a robot meets: the agent killed (SIGKILL) at random moments while it uploads, and the
object store gone for longer than `/health`'s patience while capture goes on, with
`keep_local` dropping uploaded chunks from the small local disk. After each, every committed
chunk is in S3 exactly once, with the bytes committed locally, and the chain in S3 verifies
and decrypts with the reference.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from s3server import GARAGE, REGION, Garage
from test_agent import (KEYD_DEV, accepted_sequences, agent_cmd, bought, needs_root, private_dir, publish_cmd,  # noqa: F401
                        remove_private_dirs,
                        wait_subscribed, write_map)

pytestmark = [
    pytest.mark.skipif(not Path(GARAGE).is_file(), reason="Garage not built (scripts/setup builds it)"),
    needs_root,
]

BUCKET = "robots"
NETNS_UP = "ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo"


class NetNs:
    """A network namespace with only loopback, kept by a sleeping process; commands enter it."""

    def __init__(self):
        self.proc = subprocess.Popen(["unshare", "-n", "bash", "-c", f"{NETNS_UP}; exec sleep infinity"])
        self.enter = ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net"]
        for _ in range(100):
            routes = subprocess.run([*self.enter, "ip", "route", "show"], capture_output=True, text=True)
            if "224.0.0.0/4" in routes.stdout:
                return
            time.sleep(0.05)
        raise AssertionError("the network namespace did not come up")

    def script(self, script: str) -> subprocess.Popen:
        """A bash script in the namespace; everything it started dies with it."""
        return subprocess.Popen([*self.enter, "bash", "-c", "set -euo pipefail\n"
                                 "trap 'kill -KILL $(jobs -p) 2>/dev/null || true' EXIT\n" + script],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(self, url: str) -> tuple[int, str]:
        proc = subprocess.run([*self.enter, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", url],
                              capture_output=True, text=True, timeout=10)
        body, _, code = proc.stdout.rpartition("\n")
        return int(code or 0), body

    def close(self):
        self.proc.kill()
        self.proc.wait()


def finish(proc: subprocess.Popen, timeout: float) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"


@pytest.fixture(scope="module")
def netns():
    ns = NetNs()
    yield ns
    ns.close()


@pytest.fixture(scope="module")
def s3(netns):
    server = Garage(private_dir("gar"), netns=netns.proc.pid)
    server.start()
    server.setup([BUCKET])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyd():
    directory = private_dir("kds")
    start = subprocess.run([KEYD_DEV, "start", "--backend", "software", "--dir", str(directory), "--agent-user",
                            "nobody"], capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    identity = json.loads((directory / "identity.json").read_text())
    yield {"socket": start.stdout.strip().splitlines()[-1], "dir": directory, "keys": directory / "keys",
           "identity": identity, "backend": "software"}
    subprocess.run([KEYD_DEV, "stop", "--dir", str(directory)], check=False)


def credentials_file(work: Path, s3: Garage) -> Path:
    """The S3 key in a file only the agent's user can read, as on a robot."""
    path = work / "s3.yaml"
    path.write_text(f"access_key_id: {s3.key_id}\nsecret_access_key: {s3.secret}\n")
    os.chown(path, 65534, 65534)
    path.chmod(0o600)
    return path


def s3_map(work: Path, keyd: dict, s3: Garage, prefix: str, keep_local: str = "") -> Path:
    extra = (f"metrics:\n  listen: 127.0.0.1:9464\n"
             f"outputs:\n  - s3:\n      bucket: {BUCKET}\n      prefix: {prefix}\n"
             f"      endpoint: \"{s3.endpoint}\"\n      region: {REGION}\n"
             f"      credentials_file: {credentials_file(work, s3)}\n{keep_local}")
    return write_map(work, keyd["socket"], """\
  - topic: /count
    type: std_msgs/msg/String
    schema_version: "1"
    chunk: { max_bytes: 40000, max_age_ms: 500 }
""", extra=extra)


def s3_chain(s3: Garage, prefix: str, work: Path) -> tuple[dict[str, bytes], Path]:
    """The topic's objects in S3, and a local copy of them to verify."""
    objects = s3.objects(BUCKET, f"{prefix}/count/")
    copy = work / "count-from-s3"
    copy.mkdir()
    for key, body in objects.items():
        (copy / key.rsplit("/", 1)[1]).write_bytes(body)
    return objects, copy


def sequences_of(packages: list[dict]) -> list[int]:
    return [p["sequenceNumber"] for p in packages]


def test_sigkill_during_uploads_leaves_every_chunk_in_s3_once(netns, s3, keyd):
    work = private_dir("eau")
    prefix = "kill/r1"
    map_path = s3_map(work, keyd, s3, prefix)
    log = work / "agent.log"
    rng = random.Random(20261201)
    delays = " ".join(f"{rng.uniform(0.2, 1.0):.3f}" for _ in range(12))
    proc = netns.script(f"{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
                        f"{publish_cmd('/count', 'string', 8000, rate=1000, linger=2)} &\npub=$!\n"
                        f"for d in {delays}; do\n"
                        "  sleep $d; kill -KILL $agent; wait $agent || true\n"
                        f"  {agent_cmd(map_path, log)} &\n  agent=$!\n"
                        "done\n"
                        "wait $pub\nsleep 1\nkill -TERM $agent; wait $agent\n")
    finish(proc, timeout=240)

    local = work / "agent" / "out" / "count"
    manifest = json.loads((local / "manifest.json").read_text())
    total = manifest["totalChunks"]
    assert total > 10, "too few chunks to test anything"
    objects, copy = s3_chain(s3, prefix, work)
    names = {f"chunk-{i}.{ext}" for i in range(total) for ext in ("bin", "json")} | {"manifest.json"}
    # Exactly the committed chunks, each once, with the bytes committed locally.
    assert set(objects) == {f"{prefix}/count/{n}" for n in names}
    for name in names:
        assert (copy / name).read_bytes() == (local / name).read_bytes(), name
    # Restarts resumed uploads: some objects were found already there, none conflicted.
    text = log.read_text()
    assert "conflict" not in text.lower()
    # The chain in S3 verifies and decrypts with the reference; every package accepted into
    # the spool is in it, none twice.
    packages = bought(keyd, copy, work)
    sequences = sequences_of(packages)
    assert sequences == sorted(set(sequences))
    assert not accepted_sequences(log) - set(sequences)


def test_s3_outage_under_load_with_keep_local(netns, s3, keyd):
    work = private_dir("eao")
    prefix = "outage/r1"
    map_path = s3_map(work, keyd, s3, prefix, keep_local="keep_local: { max_bytes: 150000 }\n")
    log = work / "agent.log"
    proc = netns.script(f"{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
                        f"{publish_cmd('/count', 'string', 7000, rate=350, linger=2)} &\npub=$!\n"
                        "wait $pub\nsleep 1\nkill -TERM $agent; wait $agent\n")
    try:
        time.sleep(3)
        s3.stop()
        # Longer than /health's patience (10 s of failing uploads with a backlog).
        deadline = time.time() + 20
        health = (200, "")
        while time.time() < deadline and health[0] == 200:
            time.sleep(1)
            health = netns.get("http://127.0.0.1:9464/health")
        metrics = netns.get("http://127.0.0.1:9464/metrics")[1]
        s3.start()
    finally:
        if s3.proc is None:
            s3.start()
    finish(proc, timeout=120)
    assert health[0] == 503 and "uploads of /count" in health[1], health
    failures = [line for line in metrics.splitlines() if line.startswith("edge_agent_upload_failures_total")]
    assert failures and float(failures[0].split()[-1]) > 0, metrics
    backlog = [line for line in metrics.splitlines() if line.startswith("edge_agent_upload_backlog_chunks")]
    assert backlog and float(backlog[0].split()[-1]) > 0, metrics

    # Capture never waited for the store: all 7000 messages are in the chain.
    objects, copy = s3_chain(s3, prefix, work)
    total = json.loads((copy / "manifest.json").read_text())["totalChunks"]
    assert len(objects) == 2 * total + 1
    packages = bought(keyd, copy, work)
    assert len(packages) == 7000
    assert sequences_of(packages) == sorted(set(sequences_of(packages)))
    # keep_local dropped what was uploaded: the local directory is small, its newest chunk kept.
    local = work / "agent" / "out" / "count"
    kept = sorted(int(p.stem.split("-")[1]) for p in local.glob("chunk-*.bin"))
    assert kept and kept[-1] == total - 1 and len(kept) < total
    assert sum(p.stat().st_size for p in local.glob("chunk-*")) <= 150000 + 2 * 40000
