"""The arm64 build (what most robots run), cross-compiled by scripts/package and run here
under qemu-user:

- `peaqos` publishes a chain the reference buys, and verifies one the reference published;
- `edge-agent check` accepts the shipped map and names a bad one's line;
- keyd runs on the software backend and on the pkcs11 backend with SoftHSM's own arm64
  build (`keyd dev up`, itself under qemu), serving the amd64 and the arm64 `peaqos` alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import OURS, ROOT, ours, publish_args, ref, run, grant_args, consume_args
from test_agent import private_dir

TARGET = "aarch64-unknown-linux-gnu"
ARM64 = Path(OURS).parents[1] / TARGET / "release"
QEMU = shutil.which("qemu-aarch64")
CACHE = Path(os.environ.get("PEAQOS_CACHE", Path.home() / ".cache" / "peaqos"))
SOFTHSM = CACHE / "arm64" / "softhsm" / "usr" / "lib" / "aarch64-linux-gnu" / "softhsm" / "libsofthsm2.so"

pytestmark = pytest.mark.skipif(not QEMU, reason="needs qemu-user (scripts/setup installs it)")


@pytest.fixture(scope="module")
def arm64() -> Path:
    """The arm64 binaries, cross-built by scripts/package if they are not there yet."""
    if not all((ARM64 / name).exists() for name in ("keyd", "edge-agent", "peaqos")):
        run([str(ROOT / "scripts" / "package"), "--arch", "arm64"], timeout=3600)
    return ARM64


def arm(arm64: Path, binary: str, *args: str, env: dict[str, str] | None = None, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run([QEMU, str(arm64 / binary), *args], env=env, check=check, cwd=cwd)


def test_they_are_arm64_binaries(arm64):
    for name in ("keyd", "edge-agent", "peaqos"):
        header = (arm64 / name).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 0xB7, name
    assert arm(arm64, "peaqos", "--version").stdout.startswith("peaqos ")


def test_arm64_peaqos_publishes_and_verifies_with_the_reference(arm64, tmp_path):
    keys_dir = tmp_path / "k"
    arm(arm64, "peaqos", "-q", "keys", "generate", "--out", str(keys_dir))
    from conftest import Keys

    keys = Keys(keys_dir)
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(150_000))
    pub = tmp_path / "pub"
    arm(arm64, "peaqos", "-q", *publish_args(keys, source, pub, 40_000))
    ref("-q", *grant_args(keys, pub, tmp_path / "access"), cwd=tmp_path)
    ref("-q", *consume_args(keys, pub, tmp_path / "access", tmp_path / "out.bin"), cwd=tmp_path)
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    # The reference's chain, verified and bought by the arm64 build.
    theirs = tmp_path / "theirs"
    ref("-q", *publish_args(keys, source, theirs, 50_000), cwd=tmp_path)
    arm(arm64, "peaqos", "stream", "verify", "--chunk-dir", str(theirs), "--expect-did", keys.did,
        "--expect-public-key", keys.text("chain.pub"), "--recipient-key-file", keys.path("owner.key"))
    arm(arm64, "peaqos", "-q", *grant_args(keys, theirs, tmp_path / "access2"))
    arm(arm64, "peaqos", "-q", *consume_args(keys, theirs, tmp_path / "access2", tmp_path / "out2.bin"))
    assert (tmp_path / "out2.bin").read_bytes() == source.read_bytes()


def test_arm64_edge_agent_check(arm64, tmp_path):
    arm(arm64, "edge-agent", "check", str(ROOT / "policies" / "edge-agent-map.yaml"))
    bad = tmp_path / "map.yaml"
    bad.write_text((ROOT / "policies" / "edge-agent-map.yaml").read_text().replace("max_messages: 512", "max_messages: many"))
    proc = arm(arm64, "edge-agent", "check", str(bad), check=False)
    line = 1 + next(i for i, l in enumerate(bad.read_text().splitlines()) if "max_messages: many" in l)
    assert proc.returncode == 2 and f"map.yaml:{line}: batch.max_messages" in proc.stderr, proc.stderr


@pytest.mark.parametrize("backend", ["software", "pkcs11"])
def test_arm64_keyd_serves_both_architectures(arm64, tmp_path, backend):
    if backend == "pkcs11" and not SOFTHSM.exists():
        pytest.fail(f"{SOFTHSM}: SoftHSM's arm64 build is missing (scripts/setup unpacks it)")
    directory = private_dir("kdq")
    directory.rmdir()
    # keyd dev up under qemu starts `keyd run` under qemu too (KEYD_DEV_WRAP).
    env = {"KEYD_DEV_WRAP": QEMU}
    args = ["dev", "up", "--backend", backend, "--dir", str(directory)]
    if backend == "pkcs11":
        args += ["--pkcs11-module", str(SOFTHSM)]
    up = arm(arm64, "keyd", *args, env=env)
    socket = up.stdout.strip().splitlines()[-1]
    try:
        identity = json.loads((directory / "identity.json").read_text())
        assert identity["backend"] == backend
        keys = directory / "keys"
        source = tmp_path / "in.bin"
        source.write_bytes(os.urandom(120_000))
        for name, publish in (("amd64", lambda *a: ours(*a)), ("arm64", lambda *a: arm(arm64, "peaqos", *a))):
            pub = tmp_path / f"pub-{name}"
            publish("-q", "stream", "publish", "--keyd", socket, "--input", str(source), "--output-dir", str(pub),
                    "--chunk-size", "50000")
            buyer = ["--buyer-public-key", (keys / "buyer.pub").read_text().strip(), "--buyer-id", "buyer-1"]
            # keyd (arm64) re-wraps the chunk keys for the buyer; the reference consumes.
            publish("-q", "stream", "grant", "--keyd", socket, "--chunk-dir", str(pub), *buyer,
                    "--output-dir", str(tmp_path / f"access-{name}"))
            ref("-q", "stream", "consume", "--chunk-dir", str(pub), "--data-dir", str(pub),
                "--access-dir", str(tmp_path / f"access-{name}"), "--buyer-private-key-file", str(keys / "buyer.key"),
                "--buyer-id", "buyer-1", "--output", str(tmp_path / f"out-{name}.bin"), cwd=tmp_path)
            assert (tmp_path / f"out-{name}.bin").read_bytes() == source.read_bytes()
            chunk = json.loads((pub / "chunk-0.json").read_text())
            assert chunk["signature"]["publicKeyHex"] == identity["chainPublicKeyHex"]
    finally:
        arm(arm64, "keyd", "dev", "down", "--dir", str(directory), env=env, check=False)
    assert not directory.exists()
