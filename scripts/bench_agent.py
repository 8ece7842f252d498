"""The edge agent's benchmark, behind scripts/bench-agent (run as root with the reference
virtualenv's Python; it re-runs itself inside a private network namespace with only
loopback, so no DDS traffic leaves the machine).

For each scenario: a fresh agent (as `nobody`) with keyd's software backend, one topic, a
publisher sending N messages at a target rate; we poll the agent's metrics until every
received message is spooled (accepted), and report the end-to-end rate, loss, the agent's and
keyd's CPU, and the agent's peak RSS. The reference SDK's rate for the same work (rules,
envelope, EIP-191 signature per message) is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release"
PYTHON = sys.executable
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def scenario(work: Path, socket: str, keyd_pid: int, agent: str, publisher: list[str], kind: str, type_name: str,
             count: int, rate: float, size: int, chunk_bytes: int, extra_map: str = "", inspect=None) -> dict:
    """One run; `extra_map` adds top-level map keys (e.g. S3 `outputs`); `inspect(run_dir)`,
    if given, looks at what the stopped agent left before it is removed."""
    d = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    d.chmod(0o755)
    (d / "agent").mkdir()
    os.chown(d / "agent", 65534, 65534)
    map_path = d / "map.yaml"
    map_path.write_text(f"keyd:\n  socket: {socket}\nspool_dir: {d}/agent/spool\noutput_dir: {d}/agent/out\n"
                        f"metrics:\n  listen: 127.0.0.1:9464\n{extra_map}"
                        f"topics:\n  - topic: /bench\n    type: {type_name}\n    qos: {{ profile: reliable }}\n"
                        f"    schema_version: \"1\"\n    chunk: {{ max_bytes: {chunk_bytes} }}\n")
    log = open(d / "agent.log", "w")
    proc = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", agent, "run", str(map_path)],
                            stderr=log, env={**os.environ, "EDGE_AGENT_LOG": "warn"})
    deadline = time.time() + 20
    while "edge_agent_received" not in scrape(9464):
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit(f"bench: the agent did not start; see {d / 'agent.log'}")
        time.sleep(0.05)
    cpu_agent0, cpu_keyd0 = cpu_seconds(proc.pid), cpu_seconds(keyd_pid)
    start = time.perf_counter()
    pub = subprocess.Popen([*publisher, "--topic", "/bench", "--type", kind, "--count", str(count), "--rate", str(rate),
                            "--size", str(size), "--linger", "0.5"], stderr=subprocess.PIPE, text=True)
    last_spooled, last_change, received = 0.0, time.perf_counter(), 0.0
    first_received = None
    while True:
        time.sleep(0.05)
        text = scrape(9464)
        spooled, received = metric(text, "edge_agent_spooled_total"), metric(text, "edge_agent_received_total")
        now = time.perf_counter()
        if first_received is None and received > 0:
            first_received, start = now, now
            cpu_agent0, cpu_keyd0 = cpu_seconds(proc.pid), cpu_seconds(keyd_pid)
        if spooled != last_spooled:
            last_spooled, last_change = spooled, now
        if spooled >= count:
            break
        if pub.poll() is not None and now - last_change > 5:
            break
    end = last_change
    cpu_agent, cpu_keyd = cpu_seconds(proc.pid) - cpu_agent0, cpu_seconds(keyd_pid) - cpu_keyd0
    rss = peak_rss_mib(proc.pid)
    # With uploads: how long after the last accepted message the outputs caught up.
    upload_lag = None
    if extra_map:
        while time.perf_counter() - end < 120:
            text = scrape(9464)
            if "edge_agent_upload_backlog_chunks" in text and metric(text, "edge_agent_upload_backlog_chunks") == 0:
                upload_lag = time.perf_counter() - end
                break
            time.sleep(0.05)
    pub.wait()
    pub_line = (pub.stderr.read() if pub.stderr else "").strip().splitlines()[-1:] or [""]
    m = re.search(r"in ([0-9.]+) s", pub_line[0])
    pub_seconds = float(m.group(1)) if m else float("nan")
    proc.terminate()
    proc.wait(timeout=60)
    elapsed = end - start
    inspected = inspect(d) if inspect else None
    shutil.rmtree(d, ignore_errors=True)
    return {
        "inspect": inspected,
        "kind": kind, "count": count, "target_rate": rate, "size": size,
        "published_rate": count / pub_seconds if pub_seconds == pub_seconds and pub_seconds > 0 else None,
        "received": int(received), "spooled": int(last_spooled), "lost": count - int(last_spooled),
        "rate": last_spooled / elapsed if elapsed > 0 else 0.0,
        "mb_per_s": last_spooled * size / elapsed / 1e6 if elapsed > 0 else 0.0,
        "agent_cpu": cpu_agent / elapsed, "keyd_cpu": cpu_keyd / elapsed, "rss_mib": rss,
        "upload_lag_s": upload_lag,
    }


def import_scenario(work: Path, socket: str, keyd_pid: int, agent: str, kind: str, type_name: str, count: int) -> dict:
    """`edge-agent import` of an MCAP bag of `count` messages written by rosbags: messages
    accepted per second over the whole command, the agent's CPU (from wait4) and peak RSS
    (VmHWM, polled: wait4's maxrss would count the forked Python before the exec)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from test_import import TYPES, as_rosbags
    d = Path(tempfile.mkdtemp(prefix="import-", dir=work))
    d.chmod(0o755)
    (d / "agent").mkdir()
    os.chown(d / "agent", 65534, 65534)
    bag = d / "bag"
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        c = writer.add_connection("/bench", type_name, typestore=TYPES)
        for n in range(count):
            writer.write(c, 1_764_547_200_000_000_000 + n * 100_000, TYPES.serialize_cdr(as_rosbags(kind, n), type_name))
    map_path = d / "map.yaml"
    map_path.write_text(f"keyd:\n  socket: {socket}\nspool_dir: {d}/agent/spool\noutput_dir: {d}/agent/out\n"
                        f"topics:\n  - topic: /bench\n    type: {type_name}\n    schema_version: \"1\"\n")
    keyd_before = cpu_seconds(keyd_pid)
    started = time.perf_counter()
    proc = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", agent, "import",
                             "--map", str(map_path), "--no-progress", str(bag)],
                            stdout=subprocess.DEVNULL, stderr=open(d / "import.log", "w"), env={**os.environ, "EDGE_AGENT_LOG": "warn"})
    rss = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            rss = max(rss, peak_rss_mib(proc.pid))
        except (OSError, ValueError, StopIteration):
            pass
        time.sleep(0.02)
    proc.returncode = status
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"bench-agent: import failed: {(d / 'import.log').read_text()[-2000:]}")
    spooled = sum(1 for chunk in (d / "agent" / "out" / "imports" / "bag" / "bench").glob("chunk-*.json"))
    shutil.rmtree(d, ignore_errors=True)
    return {"kind": kind, "count": count, "rate": count / wall, "agent_cpu": (usage.ru_utime + usage.ru_stime) / wall,
            "keyd_cpu": (cpu_seconds(keyd_pid) - keyd_before) / wall, "rss_mib": rss, "chunks": spooled}


def reference_rate(n: int, keys_dir: Path) -> float:
    """The reference SDK building and signing the same String packages (software key)."""
    from bench import reference_sign_rate
    messages = [{"topic": "/bench", "fields": {"data": f"n={i:010d} " + "x" * 86}, "capturedAt": "2026-11-22T00:00:00.000000Z",
                 "schemaVersion": "1", "sequenceNumber": i} for i in range(n)]
    return reference_sign_rate(messages, {"topics": []}, keys_dir)


def inside(args) -> None:
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "lo", "multicast", "on"],
                ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
        subprocess.run(cmd, check=True)
    work = Path(tempfile.mkdtemp(prefix="peaqos-bench-agent-", dir="/tmp"))
    work.chmod(0o755)
    agent = str(work / "edge-agent")
    shutil.copy(TARGET / "edge-agent", agent)
    os.chmod(agent, 0o755)
    keyd_dir = work / "keyd"
    socket = subprocess.run([str(ROOT / "scripts" / "keyd-dev"), "start", "--dir", str(keyd_dir), "--agent-user", "nobody"],
                            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    keyd_pid = int((keyd_dir / "keyd.pid").read_text())
    python_pub = [PYTHON, str(ROOT / "tests" / "interop" / "rospub.py")]
    rust_pub = [str(TARGET / "examples" / "ros2-bench-publisher")]
    results = []
    try:
        plan = [
            ("python", python_pub, "string", "std_msgs/msg/String", 10_000, 2_000, 100, 262_144),
            ("python", python_pub, "string", "std_msgs/msg/String", 50_000, 10_000, 100, 262_144),
            ("python", python_pub, "string", "std_msgs/msg/String", 200_000, 20_000, 100, 262_144),
            ("python", python_pub, "string", "std_msgs/msg/String", 200_000, 0, 100, 262_144),
            ("rust", rust_pub, "string", "std_msgs/msg/String", 100_000, 10_000, 100, 262_144),
            ("rust", rust_pub, "string", "std_msgs/msg/String", 200_000, 20_000, 100, 262_144),
            ("python", python_pub, "imu", "sensor_msgs/msg/Imu", 10_000, 2_000, 0, 262_144),
            ("python", python_pub, "imu", "sensor_msgs/msg/Imu", 50_000, 10_000, 0, 262_144),
            ("python", python_pub, "imu", "sensor_msgs/msg/Imu", 100_000, 0, 0, 262_144),
            ("python", python_pub, "pointcloud2", "sensor_msgs/msg/PointCloud2", 100, 10, 1 << 20, 4 << 20),
            ("rust", rust_pub, "pointcloud2", "sensor_msgs/msg/PointCloud2", 200, 20, 1 << 20, 4 << 20),
            ("rust", rust_pub, "pointcloud2", "sensor_msgs/msg/PointCloud2", 400, 40, 1 << 20, 4 << 20),
            ("rust", rust_pub, "image", "sensor_msgs/msg/Image", 100, 10, 6_220_800, 32 << 20),
        ]
        if args.quick:
            plan = [p for p in plan if p[4] <= 20_000 or p[2] in ("pointcloud2", "image")][:4]
        if args.only:
            plan = [p for p in plan if args.only in f"{p[0]}:{p[2]}:{p[5]}"]
        for who, publisher, kind, type_name, count, rate, size, chunk in plan:
            print(f"bench-agent: {kind} x {count} at {rate or 'max'}/s from the {who} publisher", file=sys.stderr, flush=True)
            r = scenario(work, socket, keyd_pid, agent, publisher, kind, type_name, count, rate, size, chunk)
            r["publisher"] = who
            results.append(r)
        imports = []
        if not args.only or "import" in args.only:
            for kind, type_name, count in [("string", "std_msgs/msg/String", 20_000 if args.quick else 200_000),
                                           ("imu", "sensor_msgs/msg/Imu", 10_000 if args.quick else 100_000)]:
                print(f"bench-agent: import of {kind} x {count} from an MCAP bag", file=sys.stderr, flush=True)
                imports.append(import_scenario(work, socket, keyd_pid, agent, kind, type_name, count))
        ref = reference_rate(args.reference_messages, keyd_dir / "keys")
    finally:
        subprocess.run([str(ROOT / "scripts" / "keyd-dev"), "stop", "--dir", str(keyd_dir)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"results": results, "imports": imports, "reference_rate": ref}))


def cpu_model() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except StopIteration:
        return platform.processor() or platform.machine()


def message_label(kind: str) -> str:
    return {"string": "String, 100 B", "imu": "Imu", "pointcloud2": "PointCloud2, 1 MiB",
            "image": "Image, 1080p rgb8 (6.2 MB)"}[kind]


def rate_text(r: dict) -> str:
    """Accepted messages/s of a run, with MB/s for the large samples."""
    return f"{r['rate']:,.0f}" + (f" ({r['mb_per_s']:.0f} MB/s)" if r["kind"] in ("pointcloud2", "image") else "")


def report(data: dict, command: str) -> str:
    model = cpu_model()
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {model} ({os.cpu_count()} cores); `{command}`.",
        "One topic, keyd software backend, publisher, agent and keyd on the same 2 cores; "
        "rate = messages accepted (signed, spooled, fsynced) per second, from the first received to the last accepted; "
        "CPU = share of one core over that time.",
        "",
        "| publisher | message | target rate | published | accepted/s | lost | agent CPU | keyd CPU | agent peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        what, rate = message_label(r["kind"]), rate_text(r)
        published = f"{r['published_rate']:,.0f}/s" if r["published_rate"] else "?"
        target = f"{r['target_rate']:,}" if r["target_rate"] else "max"
        lines.append(f"| {r['publisher']} | {what} | {target} | {r['count']:,} at {published} | {rate} | "
                     f"{r['lost']:,} | {r['agent_cpu']:.0%} | {r['keyd_cpu']:.0%} | {r['rss_mib']:.1f} MiB |")
    best_of = {kind: max((r["rate"] for r in data["results"] if r["kind"] == kind and r["lost"] == 0), default=0)
               for kind in ("string", "imu")}
    if data.get("imports"):
        lines += ["", "`edge-agent import` of an MCAP bag written by rosbags (same keyd, whole command timed):", "",
                  "| message | messages | imported/s | vs best lossless live rate, same run | agent CPU | keyd CPU | agent peak RSS |",
                  "|---|---|---|---|---|---|---|"]
        for r in data["imports"]:
            live = best_of.get(r["kind"], 0)
            ratio = f"{r['rate'] / live:.2f}x ({live:,.0f}/s live)" if live else "no live run"
            lines.append(f"| {message_label(r['kind'])} | {r['count']:,} | {r['rate']:,.0f} | {ratio} | "
                         f"{r['agent_cpu']:.0%} | {r['keyd_cpu']:.0%} | {r['rss_mib']:.1f} MiB |")
    best = best_of["string"]
    peak = max((r["rss_mib"] for r in [*data["results"], *data.get("imports", [])]), default=0)
    lines += [
        "",
        "| ratio | measured | goal |",
        "|---|---|---|",
        f"| reference SDK, same packages (String, in process, 1 core) | {data['reference_rate']:,.0f} packages/s | |",
        f"| best lossless String rate vs the reference SDK | {best / data['reference_rate']:.0f}x | |",
        f"| best lossless String rate | {best:,.0f} msg/s | >= 20,000 |",
        f"| agent peak RSS, all runs | {peak:.1f} MiB | < 64 MiB |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a few small runs")
    parser.add_argument("--only", help="runs whose publisher:type:rate contains this, e.g. rust:string")
    parser.add_argument("--reference-messages", type=int, default=500)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--report", help=argparse.SUPPRESS)  # re-render a saved run
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    if args.report:
        print(report(json.loads(Path(args.report).read_text()), "scripts/bench-agent"))
        return
    if os.geteuid() != 0:
        raise SystemExit("bench-agent: run as root: it makes a private network namespace and runs the agent as nobody")
    cmd = ["unshare", "-n", PYTHON, __file__, "--inside", "--reference-messages", str(args.reference_messages)]
    if args.quick:
        cmd.append("--quick")
    if args.only:
        cmd += ["--only", args.only]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    (Path(tempfile.gettempdir()) / "peaqos-bench-agent.json").write_text(json.dumps(data))
    command = "scripts/bench-agent" + (" --quick" if args.quick else "")
    text = report(data, command)
    print(text)
    if not args.no_write and not args.quick and not args.only:
        from bench import write_block
        print(f"bench-agent: wrote {write_block('bench-agent', text)}", file=sys.stderr)


if __name__ == "__main__":
    main()
