"""The README's main job, `scripts/demo`, as a newcomer runs it: it must keep working and
saying true things (a sale delivered to a buyer included)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from s3server import GARAGE


@pytest.mark.skipif(os.geteuid() != 0 or not Path(GARAGE).is_file(), reason="needs root and Garage")
def test_demo_runs_end_to_end():
    # Where the agent's user (nobody) can reach, as the demo says it must be.
    parent = Path(subprocess.run(["mktemp", "-d", "/tmp/demoXXXX"], capture_output=True, text=True,
                                 check=True).stdout.strip())
    parent.chmod(0o755)
    try:
        check_demo(parent / "demo")
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def check_demo(out: Path):
    proc = subprocess.run([str(ROOT / "scripts" / "demo"), str(out), "--seconds", "2"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "agent" / "out")
    for topic in ("imu", "gps", "status", "lidar"):
        assert (out / "agent" / "out" / topic / "manifest.json").is_file(), topic
    sale = json.loads((out / "sale.json").read_text())
    assert sale["order_id"] == "demo-1" and sale["chunks_distributed"] >= 1
    bought = (out / "gps-bought.jsonl").read_text().splitlines()
    assert len(bought) == 10  # 2 s of /gps at 5/s
    # The live feed: every topic followed from JetStream (the /imu one compared byte for byte
    # by the demo itself).
    for topic in ("imu", "gps", "status", "lidar"):
        assert list((out / "live").glob(f"*/{topic}/manifest.json")), topic
    # Nothing of the demo keeps running: keyd, Garage, the marketplace, nats-server.
    assert not (out / "garage" / "garage.pid").exists()
    assert subprocess.run(["pgrep", "-f", str(out / "nats" / "nats.conf")]).returncode == 1
    # The link is a bearer credential: stderr shows none.
    assert sale["delivery"]["download_url"].split("?")[1] not in proc.stderr
