"""Shared fixtures: our binary, the reference CLI, and a set of development keys."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = os.environ.get("PEAQOS_BIN") or str(ROOT / "target" / "release" / "peaqos")
REF_CLI = os.environ.get("PEAQOS_REF_CLI") or "peaqos"

# Never let the reference send telemetry.
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PEAQOS_TELEMETRY"] = "0"


def run(cmd: list[str], cwd: Path | None = None, check: bool = True, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Runs a command, returning its output; on an unexpected failure shows it. `env` adds
    to (or, with a None value, removes from) this process's environment."""
    full = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def ours(*args: str, cwd: Path | None = None, check: bool = True, env: dict[str, str] | None = None,
         timeout: float | None = None) -> subprocess.CompletedProcess:
    return run([OURS, *args], cwd=cwd, check=check, env=env, timeout=timeout)


def ref(*args: str, cwd: Path | None = None, check: bool = True, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    return run([REF_CLI, *args], cwd=cwd, check=check, env=env, timeout=timeout)


class Keys:
    """Development keys written by `peaqos keys generate`."""

    def __init__(self, directory: Path):
        self.dir = directory

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def text(self, name: str) -> str:
        return (self.dir / name).read_text().strip()

    @property
    def did(self) -> str:
        return self.text("identity.did")

    @property
    def key_id(self) -> str:
        return f"{self.did}#keys-1"


def sign_sample_through_keyd(keyd_bin: str, socket: str, directory: Path) -> tuple[Path, dict]:
    """Signs the sample messages through keyd with `peaqos stream sign --keyd`, numbered
    where keyd says its sequence continues (as the agent does). Returns the package file
    and keyd's identity (`keyd identity --json`)."""
    identity = json.loads(run([keyd_bin, "identity", "--socket", socket, "--json"]).stdout)
    messages = [json.loads(l) for l in (ROOT / "scripts" / "sample" / "messages.jsonl").read_text().splitlines()]
    for i, m in enumerate(messages):
        m["sequenceNumber"] = identity["nextSequenceNumber"] + i
    (directory / "msgs.jsonl").write_text("".join(json.dumps(m) + "\n" for m in messages))
    ours("-q", "stream", "sign", "--keyd", socket, "--map", str(ROOT / "policies" / "example-map.yaml"),
         "--input", str(directory / "msgs.jsonl"), "--output", str(directory / "pkgs.jsonl"))
    return directory / "pkgs.jsonl", identity


def make_keys(directory: Path) -> Keys:
    ours("-q", "keys", "generate", "--out", str(directory))
    return Keys(directory)


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys") / "k")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys2") / "k")


def publish_args(keys: Keys, input_path: Path, out_dir: Path, chunk_size: int | None = None) -> list[str]:
    args = [
        "stream", "publish",
        "--input", str(input_path),
        "--output-dir", str(out_dir),
        "--owner-public-key", keys.text("owner.pub"),
        "--operator-public-key", keys.text("operator.pub"),
        "--machine-public-key", keys.text("machine.pub"),
        "--signing-key-file", keys.path("chain.key"),
        "--machine-did", keys.did,
        "--machine-key-id", keys.key_id,
    ]
    if chunk_size is not None:
        args += ["--chunk-size", str(chunk_size)]
    return args


def grant_args(keys: Keys, chunk_dir: Path, out_dir: Path, buyer_id: str = "buyer-1", max_size: int | None = None) -> list[str]:
    args = [
        "stream", "grant",
        "--chunk-dir", str(chunk_dir),
        "--buyer-public-key", keys.text("buyer.pub"),
        "--buyer-id", buyer_id,
        "--owner-private-key-file", keys.path("owner.key"),
        "--output-dir", str(out_dir),
    ]
    if max_size is not None:
        args += ["--max-file-size", str(max_size)]
    return args


def consume_args(keys: Keys, chunk_dir: Path, access_dir: Path, output: Path, buyer_id: str = "buyer-1") -> list[str]:
    return [
        "stream", "consume",
        "--chunk-dir", str(chunk_dir),
        "--access-dir", str(access_dir),
        "--data-dir", str(chunk_dir),
        "--buyer-private-key-file", keys.path("buyer.key"),
        "--buyer-id", buyer_id,
        "--output", str(output),
    ]
