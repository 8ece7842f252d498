"""nats-server with JetStream for the live feed's tests: one node or a three-node cluster,
on loopback ports inside the tests' private network namespace; and a bare NATS publisher
(the protocol's HPUB) for messages no agent would send.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


class Nats:
    """One nats-server, its config and store in `directory`, inside the namespace `netns`."""

    def __init__(self, directory: Path, netns: int, port: int = 4222, name: str = "n1",
                 cluster: list[int] | None = None, cluster_port: int | None = None, extra: str = ""):
        self.directory = directory
        self.enter = ["nsenter", f"--net=/proc/{netns}/ns/net"]
        self.port = port
        self.url = f"nats://127.0.0.1:{port}"
        conf = [f"server_name: {name}", f"listen: 127.0.0.1:{port}", f"http: 127.0.0.1:{port + 4000}",
                f'jetstream {{ store_dir: "{directory / "js"}" }}', extra]
        if cluster:
            routes = ", ".join(f"nats://127.0.0.1:{p}" for p in cluster if p != cluster_port)
            conf.append(f"cluster {{ name: c1, listen: 127.0.0.1:{cluster_port}, routes: [{routes}] }}")
        self.conf = directory / "nats.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.directory / "nats.log", "a")
        self.proc = subprocess.Popen([*self.enter, NATS_SERVER, "-c", str(self.conf)], stdout=log, stderr=log)
        for _ in range(200):
            probe = subprocess.run([*self.enter, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{self.port}"],
                                   capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"nats-server on {self.port} did not start: {(self.directory / 'nats.log').read_text()}")

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def cluster(directory: Path, netns: int) -> list[Nats]:
    """Three JetStream nodes on 4222-4224 (routes 6222-6224), started."""
    routes = [6222, 6223, 6224]
    nodes = []
    for i, (port, route) in enumerate(zip([4222, 4223, 4224], routes)):
        d = directory / f"n{i + 1}"
        d.mkdir()
        nodes.append(Nats(d, netns, port=port, name=f"n{i + 1}", cluster=routes, cluster_port=route))
    for node in nodes:
        node.start()
    return nodes


def hpub(port: int, subject: str, headers: dict[str, str], payload: bytes) -> None:
    """Publishes one message with headers, as any client may (no JetStream ack awaited)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.recv(4096)  # INFO
        head = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        hb = head.encode()
        s.sendall(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n'
                  + f"HPUB {subject} {len(hb)} {len(hb) + len(payload)}\r\n".encode() + hb + payload
                  + b"\r\nPING\r\n")
        answer = b""
        while b"PONG" not in answer and b"-ERR" not in answer:
            answer += s.recv(4096)
        assert b"-ERR" not in answer, answer


if __name__ == "__main__":
    # python natsserver.py hpub PORT SUBJECT MESSAGE_FILE (headers as JSON lines, then the body)
    import json
    _, command, port, subject, message = sys.argv
    assert command == "hpub"
    data = Path(message).read_bytes()
    head, _, body = data.partition(b"\n\n")
    hpub(int(port), subject, json.loads(head), body)
