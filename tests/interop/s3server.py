"""A real S3-compatible object store for the tests: Garage (Rust, AGPL; built once by
scripts/setup into ~/.cache/peaqos/tools), single node on 127.0.0.1, its data in a
temporary directory. Stop and start it again to make an outage; the data stays. Given a
network namespace (a process's pid), it lives there, for agents that run in one."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

GARAGE = os.environ.get("PEAQOS_GARAGE") or str(
    Path(os.environ.get("PEAQOS_CACHE", Path.home() / ".cache" / "peaqos")) / "tools" / "bin" / "garage"
)
REGION = "garage"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Garage:
    """One Garage node; `endpoint`, `key_id`, `secret` and `env()` once started."""

    def __init__(self, directory: Path, netns: int | None = None, nice: int = 0):
        self.dir = directory
        # Every command of ours that talks to it runs in its namespace.
        self.wrap = ["nsenter", f"--net=/proc/{netns}/ns/net"] if netns else []
        # A lower CPU priority for the server (benchmarks: a stand-in for a remote one).
        self.nice = nice
        self.dir.mkdir(parents=True, exist_ok=True)
        self.s3_port = free_port()
        self.rpc_port = free_port()
        self.admin_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.config = self.dir / "garage.toml"
        self.config.write_text(
            f"""metadata_dir = "{self.dir}/meta"
data_dir = "{self.dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{self.rpc_port}"
rpc_public_addr = "127.0.0.1:{self.rpc_port}"
rpc_secret = "{secrets.token_hex(32)}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{self.s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{self.admin_port}"
"""
        )
        self.proc: subprocess.Popen | None = None
        self.key_id = ""
        self.secret = ""

    def cli(self, *args: str) -> str:
        proc = subprocess.run([*self.wrap, GARAGE, "-c", str(self.config), *args], capture_output=True, text=True,
                              timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"garage {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def start(self) -> None:
        log = open(self.dir / "garage.log", "ab")
        niced = ["nice", "-n", str(self.nice)] if self.nice else []
        self.proc = subprocess.Popen([*self.wrap, *niced, GARAGE, "-c", str(self.config), "server"], stdout=log,
                                     stderr=log,
                                     env={**os.environ, "RUST_LOG": "garage=warn"})
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"garage exited: {(self.dir / 'garage.log').read_text()[-2000:]}")
            try:
                self.cli("status")
                if not self.wrap:
                    with socket.create_connection(("127.0.0.1", self.s3_port), timeout=0.5):
                        pass
                return
            except (OSError, AssertionError):
                time.sleep(0.2)
        raise AssertionError("garage did not start in 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def setup(self, buckets: list[str]) -> None:
        """Layout of one node, a key, and the buckets (readable and writable by the key)."""
        node = self.cli("node", "id", "-q").strip().split("@")[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "1G", node)
        self.cli("layout", "apply", "--version", "1")
        created = self.cli("key", "create", "peaqos-tests")
        self.key_id = re.search(r"Key ID:\s*(GK[0-9a-f]+)", created).group(1)
        self.secret = re.search(r"Secret key:\s*([0-9a-f]+)", created).group(1)
        for bucket in buckets:
            self.cli("bucket", "create", bucket)
            self.cli("bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "peaqos-tests")

    def env(self) -> dict[str, str]:
        """What our CLI and the reference's read (PEAQOS_S3_*), and boto3's own names."""
        return {
            "PEAQOS_S3_ACCESS_KEY_ID": self.key_id,
            "PEAQOS_S3_SECRET_ACCESS_KEY": self.secret,
            "PEAQOS_S3_REGION": REGION,
            "PEAQOS_S3_ENDPOINT": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, config=Config(s3={"addressing_style": "path"}))

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix`, by key."""
        if self.wrap:
            # Listed from inside the namespace, by this same module.
            script = (f"import sys, json, base64; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                      "from s3server import Garage; g = Garage.__new__(Garage); "
                      f"g.endpoint, g.key_id, g.secret, g.wrap = {self.endpoint!r}, {self.key_id!r}, "
                      f"{self.secret!r}, []; "
                      f"print(json.dumps({{k: base64.b64encode(v).decode() for k, v in "
                      f"g.objects({bucket!r}, {prefix!r}).items()}}))")
            proc = subprocess.run([*self.wrap, sys.executable, "-c", script], capture_output=True, text=True,
                                  timeout=120)
            if proc.returncode != 0:
                raise AssertionError(f"listing s3://{bucket}/{prefix} failed:\n{proc.stderr}")
            import base64
            import json
            return {k: base64.b64decode(v) for k, v in json.loads(proc.stdout).items()}
        c = self.client()
        out: dict[str, bytes] = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"]] = c.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out


def main() -> None:
    """`s3server.py start DIR [--bucket B]...` starts a node whose data lives in DIR (in the
    caller's network namespace), prints the environment our CLI and the reference read, as
    JSON, and leaves it running; `s3server.py stop DIR` stops it. For scripts/demo."""
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start")
    start.add_argument("dir", type=Path)
    start.add_argument("--bucket", action="append", default=[])
    stop = sub.add_parser("stop")
    stop.add_argument("dir", type=Path)
    args = parser.parse_args()
    pid_file = args.dir / "garage.pid"
    if args.command == "start":
        server = Garage(args.dir)
        server.start()
        server.setup(args.bucket)
        pid_file.write_text(f"{server.proc.pid}\n")
        print(json.dumps(server.env()))
    elif pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
        pid_file.unlink()


if __name__ == "__main__":
    main()
