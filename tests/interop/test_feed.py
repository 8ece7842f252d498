"""The live feed: the edge agent publishing a live topic to NATS JetStream (a real
nats-server, one node and a three-node cluster with a replicated stream), and
`peaqos stream follow` writing what it verified. Every DDS participant and every server is
in a private network namespace with only loopback.

Faults: the agent killed (SIGKILL) while it publishes, the server stopped for a while under
load, a cluster node killed, the follower killed (and started again while no server answers); a forged chunk, a chunk of another machine
and a gap, each refused and named. After each run the follower's directory equals the
agent's local output byte for byte, verifies and decrypts with the reference, and a fresh
replay of the stream finds no chunk twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from conftest import OURS
from natsserver import NATS_SERVER, Nats, cluster
from test_agent import (accepted_sequences, agent_cmd, bought, needs_root, private_dir, publish_cmd,  # noqa: F401
                        remove_private_dirs, wait_subscribed, write_map)
from test_agent_s3 import NetNs, finish, keyd  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not Path(NATS_SERVER).is_file(), reason="nats-server not installed (scripts/setup installs it)"),
    needs_root,
]

NATSPUB = str(Path(__file__).parent / "natsserver.py")


@pytest.fixture(scope="module")
def netns():
    ns = NetNs()
    yield ns
    ns.close()


TOKEN = "feed-token-that-must-never-show"


def token_file(work: Path, owner: int) -> Path:
    """The server's token in a file only its user can read, as on a robot."""
    path = work / f"nats-{owner}.token"
    path.write_text(TOKEN + "\n")
    os.chown(path, owner, owner)
    path.chmod(0o600)
    return path


def feed_map(work: Path, keyd: dict, url: str, replicas: int = 1, max_age_ms: int = 500,
             credentials: Path | None = None) -> Path:
    extra = (f"metrics:\n  listen: 127.0.0.1:9464\n"
             f"outputs:\n  - nats:\n      url: \"{url}\"\n      stream: PEAQ_STREAM\n"
             f"      subject_prefix: peaq.stream\n      replicas: {replicas}\n")
    if credentials:
        extra += f"      credentials: {credentials}\n"
    return write_map(work, keyd["socket"], f"""\
  - topic: /count
    type: std_msgs/msg/String
    schema_version: "1"
    chunk: {{ max_bytes: 40000, max_age_ms: {max_age_ms} }}
""", extra=extra)


class Follower:
    """`peaqos stream follow` in the namespace, its JSON lines and messages in files."""

    def __init__(self, netns: NetNs, url: str, keyd: dict, out: Path, log: Path, durable: str | None = "buyer",
                 pinned: bool = True, skip_forged: bool = False, follow_all: bool = False,
                 credentials: Path | None = None):
        self.netns, self.url, self.keyd, self.out, self.log = netns, url, keyd, out, log
        self.durable, self.pinned, self.skip_forged, self.follow_all = durable, pinned, skip_forged, follow_all
        self.credentials = credentials
        # The chain's directory: with --follow-all, <address>/<topic> under the output.
        address = keyd["identity"]["did"].split(":")[-1][2:].lower()
        self.chain = out / address / "count" if follow_all else out
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [*self.netns.enter, OURS, "stream", "follow", "--nats", self.url, "--output-dir", str(self.out),
               "--from-start", "--json"]
        if self.follow_all:
            cmd.append("--follow-all")
        else:
            cmd += ["--did", self.keyd["identity"]["did"], "--topic", "/count"]
        if self.credentials:
            cmd += ["--credentials", str(self.credentials)]
        if self.durable:
            cmd += ["--durable", self.durable]
        if self.pinned:
            cmd += ["--expect-public-key", self.keyd["identity"]["chainPublicKeyHex"]]
        if self.skip_forged:
            cmd.append("--skip-forged")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)

    def kill(self) -> None:
        assert self.proc and self.proc.poll() is None, self.log.read_text()
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        assert self.proc and self.proc.poll() is None, self.log.read_text()
        self.proc.terminate()
        assert self.proc.wait(timeout=30) == 0, self.log.read_text()

    def wait_exit(self, timeout: float) -> int:
        assert self.proc
        return self.proc.wait(timeout=timeout)

    def wait_for(self, total: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            manifest = self.chain / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text())["totalChunks"] == total:
                return
            assert self.proc and self.proc.poll() is None, self.log.read_text()
            time.sleep(0.2)
        raise AssertionError(f"the follower did not reach {total} chunks:\n{self.log.read_text()[-3000:]}")

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


def wait_file(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def chain_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name.startswith("chunk-") or p.name == "manifest.json"}


def check_followed(netns: NetNs, url: str, keyd: dict, work: Path, followed: Path, log: Path,
                   forged: int = 0, credentials: Path | None = None) -> list[dict]:
    """The followed directory equals the agent's output and is bought with the reference;
    a fresh replay of the whole stream (an ephemeral consumer, --follow-all) has every chunk
    once, and refuses the `forged` messages others put there."""
    local = work / "agent" / "out" / "count"
    total = json.loads((local / "manifest.json").read_text())["totalChunks"]
    assert total > 10, "too few chunks to test anything"
    assert chain_files(followed) == chain_files(local)
    packages = bought(keyd, followed, work)
    sequences = [p["sequenceNumber"] for p in packages]
    assert sequences == sorted(set(sequences))
    assert not accepted_sequences(log) - set(sequences)
    replay = Follower(netns, url, keyd, work / "replay", work / "replay.log", durable=None, pinned=False,
                      skip_forged=True, follow_all=True, credentials=credentials)
    replay.start()
    replay.wait_for(total, timeout=60)
    replay.stop()
    assert replay.log.read_text().count("refused and skipped") == forged, replay.log.read_text()
    events = replay.events()
    written = [e["index"] for e in events if e["event"] == "written"]
    assert written == list(range(total)), "the stream holds every chunk, in order"
    assert not [e for e in events if e["event"] == "duplicate"], "no chunk is in the stream twice"
    assert chain_files(replay.chain) == chain_files(local)
    return packages


def test_agent_to_follower_through_kills_and_an_outage(netns, keyd):
    work = private_dir("fek")
    # A server that wants a token: the agent's is in a file only it can read.
    server = Nats(private_dir("fns"), netns.proc.pid, extra=f'authorization {{ token: "{TOKEN}" }}')
    server.start()
    try:
        map_path = feed_map(work, keyd, server.url, credentials=token_file(work, 65534))
        ours_token = token_file(work, 0)
        log = work / "agent.log"
        rng = random.Random(20261202)
        delays = " ".join(f"{rng.uniform(0.4, 1.2):.3f}" for _ in range(4))
        # ~30 s of a live topic; the agent killed four times in its first seconds.
        proc = netns.script(f"{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
                            f"{publish_cmd('/count', 'string', 9000, rate=300, linger=2)} &\npub=$!\n"
                            f"for d in {delays}; do\n"
                            "  sleep $d; kill -KILL $agent; wait $agent || true\n"
                            f"  {agent_cmd(map_path, log)} &\n  agent=$!\n"
                            "done\n"
                            "wait $pub\nsleep 1\nkill -TERM $agent; wait $agent\n")
        wait_file(work / "agent" / "out" / "count" / "chunk-0.json")
        time.sleep(1)
        followed = work / "followed"
        follower = Follower(netns, server.url, keyd, followed, work / "follower.log", credentials=ours_token)
        follower.start()
        time.sleep(2.5)
        follower.kill()  # after some chunks; it resumes where its directory ends
        follower.start()
        time.sleep(3)
        server.stop()  # under load, longer than /health's patience
        deadline = time.time() + 20
        health = (200, "")
        while time.time() < deadline and health[0] == 200:
            time.sleep(1)
            health = netns.get("http://127.0.0.1:9464/health")
        # A follower (re)started while no server answers waits for one.
        follower.kill()
        follower.start()
        time.sleep(1)
        server.start()
        reconnects: list[str] = []
        deadline = time.time() + 12
        while time.time() < deadline and not (reconnects and float(reconnects[0].split()[-1]) >= 1):
            time.sleep(0.5)
            metrics = netns.get("http://127.0.0.1:9464/metrics")[1]
            reconnects = [line for line in metrics.splitlines() if line.startswith("edge_agent_feed_reconnects{")]
        finish(proc, timeout=180)
        assert health[0] == 503 and "/count" in health[1] and "nats" in health[1], health
        assert reconnects and float(reconnects[0].split()[-1]) >= 1, metrics
        total = json.loads((work / "agent" / "out" / "count" / "manifest.json").read_text())["totalChunks"]
        follower.wait_for(total, timeout=60)
        follower.stop()
        events = follower.events()
        assert [e for e in events if e["event"] == "written"], "the follower wrote chunks"
        check_followed(netns, server.url, keyd, work, followed, log, credentials=ours_token)
        text = log.read_text()
        assert "holds another chain" not in text
        # The token is never shown, in any log or the metrics.
        for shown in (text, follower.log.read_text(), (work / "replay.log").read_text(), metrics):
            assert TOKEN not in shown
    finally:
        server.kill()


def forge(local: Path, index: int, did: str | None = None) -> tuple[dict, bytes]:
    """Chunk `index` after the agent's last, linked right, signed by a key that is not the
    machine's (and naming another machine's DID if `did` is given)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    last = json.loads((local / f"chunk-{index - 1}.json").read_text())
    envelope = json.loads(json.dumps(last))
    ciphertext = bytes(random.Random(f"{index} {did}").randrange(256) for _ in range(64))
    envelope["index"] = index
    envelope["previousChunkId"] = last["chunkId"]
    envelope["encryptedDataHash"] = "0x" + hashlib.sha256(ciphertext).hexdigest()
    envelope["chunkId"] = "0x" + hashlib.sha256(f"{last['chunkId']}|{envelope['encryptedDataHash']}|{index}".encode()).hexdigest()
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    envelope["signature"]["publicKeyHex"] = public.hex()
    envelope["signature"]["value"] = key.sign(envelope["encryptedDataHash"].encode()).hex()
    if did:
        envelope["signature"]["machineDid"] = did
    body = json.dumps(envelope, indent=2).encode() + b"\n"
    headers = {"Nats-Msg-Id": envelope["chunkId"], "Peaq-Kind": "chunk", "Peaq-Chunk-Index": str(index),
               "Peaq-Envelope-Bytes": str(len(body))}
    return headers, body + ciphertext


def publish_raw(netns: NetNs, work: Path, subject: str, headers: dict, body: bytes) -> None:
    message = work / "forged.msg"
    message.write_bytes(json.dumps(headers).encode() + b"\n\n" + body)
    subprocess.run([*netns.enter, "python3", NATSPUB, "hpub", "4222", subject, str(message)], check=True, timeout=30)


def test_forged_chunks_and_a_gap_are_refused_and_named(netns, keyd):
    work = private_dir("fef")
    server = Nats(private_dir("fnf"), netns.proc.pid)
    server.start()
    try:
        map_path = feed_map(work, keyd, server.url)
        log = work / "agent.log"
        local = work / "agent" / "out" / "count"
        address = keyd["identity"]["did"].split(":")[-1][2:].lower()
        subject = f"peaq.stream.{address}.count"

        def run_agent(count: int, start: int) -> None:
            finish(netns.script(f"{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
                                f"{publish_cmd('/count', 'string', count, rate=500, start=start, linger=2)}\n"
                                "sleep 1\nkill -TERM $agent; wait $agent\n"), timeout=120)

        run_agent(1500, 0)
        total = json.loads((local / "manifest.json").read_text())["totalChunks"]
        followed = work / "followed"
        follower = Follower(netns, server.url, keyd, followed, work / "follower.log")
        follower.start()
        follower.wait_for(total, timeout=60)

        # Another client publishes the next chunk, signed by its own key: refused, named,
        # nothing written.
        publish_raw(netns, work, subject, *forge(local, total))
        assert follower.wait_exit(timeout=30) == 1
        text = (work / "follower.log").read_text()
        assert f"chunk {total} refused (signerKey)" in text, text
        assert not (followed / f"chunk-{total}.json").exists()
        # Restarted, it moves past the refused message (terminated for its consumer); one
        # claiming another machine is refused too.
        other = "did:peaq:0x" + "ab" * 20
        publish_raw(netns, work, subject, *forge(local, total, did=other))
        follower.start()
        assert follower.wait_exit(timeout=30) == 1
        text = (work / "follower.log").read_text()
        assert f"chunk {total} refused (machineDid)" in text and other in text, text
        # The agent goes on; the follower takes the real chunk at that index.
        follower.start()
        run_agent(1000, 1500)
        total = json.loads((local / "manifest.json").read_text())["totalChunks"]
        follower.wait_for(total, timeout=60)
        follower.stop()
        check_followed(netns, server.url, keyd, work, followed, log, forged=2)

        # A directory that lost its newest chunk: the next one is a gap, named.
        for name in (f"chunk-{total - 1}.json", f"chunk-{total - 1}.bin", "manifest.json"):
            (followed / name).unlink()
        follower.start()
        time.sleep(1)
        run_agent(300, 2500)
        assert follower.wait_exit(timeout=30) == 1
        text = (work / "follower.log").read_text()
        assert f"gap: chunk {total} arrived, but chunk {total - 1} is missing" in text, text
    finally:
        server.kill()


def test_a_three_node_cluster_loses_nothing_when_a_node_dies(netns, keyd):
    work = private_dir("fec")
    nodes = cluster(private_dir("fnc"), netns.proc.pid)
    urls = ",".join(n.url for n in nodes)
    try:
        map_path = feed_map(work, keyd, urls, replicas=3)
        log = work / "agent.log"
        proc = netns.script(f"{agent_cmd(map_path, log)} &\nagent=$!\n{wait_subscribed(log, 1)}"
                            f"{publish_cmd('/count', 'string', 5000, rate=400, linger=2)} &\npub=$!\n"
                            "wait $pub\nsleep 2\nkill -TERM $agent; wait $agent\n")
        wait_file(work / "agent" / "out" / "count" / "chunk-0.json")
        time.sleep(1)
        followed = work / "followed"
        follower = Follower(netns, urls, keyd, followed, work / "follower.log")
        follower.start()
        time.sleep(3)
        nodes[0].kill()  # under load; the stream has two copies left
        finish(proc, timeout=180)
        total = json.loads((work / "agent" / "out" / "count" / "manifest.json").read_text())["totalChunks"]
        follower.wait_for(total, timeout=90)
        follower.stop()
        check_followed(netns, urls, keyd, work, followed, log)
    finally:
        for node in nodes:
            node.kill()
