"""The S3 benchmarks behind scripts/bench-s3 (run as root with the reference virtualenv's
Python; it re-runs itself in a private network namespace with only loopback, where a Garage
node, the agent, keyd and the DDS publisher all live).

1. `peaqos stream publish` of the same file to a local directory, and with `--s3` (local
   directory and upload), median of N runs each: the upload's cost.
2. The edge agent on the same topics with and without an S3 output: accepted messages/s
   (the capture path must not slow down), and how long after the last message the uploads
   caught up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import median_run, publish_cmd, write_block  # noqa: E402
from bench_agent import PYTHON, TARGET, cpu_model, cpu_seconds, message_label, rate_text, scenario  # noqa: E402
from s3server import REGION, Garage  # noqa: E402

OURS = os.environ["PEAQOS_BIN"]


def children_cpu() -> float:
    """CPU seconds (user + system) of every child this process has waited for."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def inside(args) -> None:
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "lo", "multicast", "on"],
                ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
        subprocess.run(cmd, check=True)
    work = Path(tempfile.mkdtemp(prefix="peaqos-bench-s3-", dir="/tmp"))
    work.chmod(0o755)
    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and shutil.disk_usage(shm).free > args.size_mib * 1024 * 1024 * 3
    data = Path(tempfile.mkdtemp(prefix="peaqos-bench-s3-", dir=shm if on_tmpfs else "/tmp"))
    # Niced: it shares the 2 cores with what is measured, standing in for a remote server;
    # its CPU time is measured and reported.
    garage = Garage(work / "garage", nice=10)
    garage.start()
    garage.setup(["bench"])
    os.environ.update(garage.env())
    keyd_dir = work / "keyd"
    out: dict = {"size_mib": args.size_mib, "runs": args.runs, "tmpfs": on_tmpfs}
    try:
        # 1. publish
        subprocess.run([OURS, "-q", "keys", "generate", "--out", str(data / "keys")], check=True)
        source = data / "input.bin"
        with open(source, "wb") as f:
            block = os.urandom(16 * 1024 * 1024)
            for _ in range(args.size_mib // 16):
                f.write(block)
        local_cmd = publish_cmd(OURS, data / "keys", source, data / "pub")
        print(f"bench-s3: publish {args.size_mib} MiB to a directory x{args.runs}", file=sys.stderr, flush=True)
        cpu0 = children_cpu()
        out["local_s"], out["local_rss"] = median_run(local_cmd, data, args.runs, data / "pub")
        out["local_cpu"] = (children_cpu() - cpu0) / args.runs
        print(f"bench-s3: publish {args.size_mib} MiB with --s3 x{args.runs}", file=sys.stderr, flush=True)
        cpu0, server0 = children_cpu(), cpu_seconds(garage.proc.pid)
        out["s3_s"], out["s3_rss"] = median_run([*local_cmd, "--s3", "s3://bench/publish"], data, args.runs,
                                                data / "pub")
        out["s3_cpu"] = (children_cpu() - cpu0) / args.runs
        out["server_cpu"] = (cpu_seconds(garage.proc.pid) - server0) / args.runs
        shutil.rmtree(data / "pub", ignore_errors=True)
        source.unlink()

        # 2. the agent, with and without an S3 output
        agent = str(work / "edge-agent")
        shutil.copy(TARGET / "edge-agent", agent)
        os.chmod(agent, 0o755)
        creds = work / "s3.yaml"
        creds.write_text(f"access_key_id: {garage.key_id}\nsecret_access_key: {garage.secret}\n")
        os.chown(creds, 65534, 65534)
        creds.chmod(0o600)
        socket = subprocess.run([str(ROOT / "scripts" / "keyd-dev"), "start", "--dir", str(keyd_dir), "--agent-user",
                                 "nobody"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        keyd_pid = int((keyd_dir / "keyd.pid").read_text())
        rust_pub = [str(TARGET / "examples" / "ros2-bench-publisher")]
        plan = [
            ("string", "std_msgs/msg/String", 100_000, 10_000, 100, 262_144),
            ("imu", "sensor_msgs/msg/Imu", 50_000, 10_000, 0, 262_144),
            ("pointcloud2", "sensor_msgs/msg/PointCloud2", 200, 20, 1 << 20, 4 << 20),
        ]
        runs = []
        for n, (kind, type_name, count, rate, size, chunk) in enumerate(plan):
            outputs = (f"outputs:\n  - s3: {{ bucket: bench, prefix: agent/{n}, endpoint: \"{garage.endpoint}\", "
                       f"region: {REGION}, credentials_file: {creds} }}\n")
            for label, extra in (("local", ""), ("s3", outputs)):
                print(f"bench-s3: agent, {kind} x {count} at {rate}/s, {label}", file=sys.stderr, flush=True)
                r = scenario(work, socket, keyd_pid, agent, rust_pub, kind, type_name, count, rate, size, chunk,
                             extra_map=extra)
                r["output"] = label
                runs.append(r)
        out["agent"] = runs
    finally:
        subprocess.run([str(ROOT / "scripts" / "keyd-dev"), "stop", "--dir", str(keyd_dir)], check=False,
                       capture_output=True)
        garage.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(out))


def report(d: dict, command: str) -> str:
    model = cpu_model()
    mib = d["size_mib"] * 1024 * 1024 / 1e6
    overhead = d["s3_s"] / d["local_s"] - 1
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {model} ({os.cpu_count()} cores); `{command}`.",
        f"A Garage 2.5 node on loopback (same 2 cores, nice 10), data on {'tmpfs' if d['tmpfs'] else 'disk'}; "
        f"median of {d['runs']} runs.",
        "",
        "| publish | wall | throughput | peak RSS |",
        "|---|---|---|---|",
        f"| {d['size_mib']} MiB to a directory | {d['local_s']:.2f} s | {mib / d['local_s']:.0f} MB/s | "
        f"{d['local_rss']:.1f} MiB |",
        f"| {d['size_mib']} MiB to a directory and `--s3` | {d['s3_s']:.2f} s | {mib / d['s3_s']:.0f} MB/s | "
        f"{d['s3_rss']:.1f} MiB |",
        "",
        "| agent (Rust publisher) | output | accepted/s | lost | agent CPU | uploads caught up after |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["agent"]:
        what, rate = message_label(r["kind"]), rate_text(r)
        lag = "" if r["output"] == "local" else ("not in 120 s" if r["upload_lag_s"] is None
                                                 else f"{r['upload_lag_s']:.1f} s")
        lines.append(f"| {what} at {r['target_rate']:,}/s | {r['output']} | {rate} | {r['lost']:,} | "
                     f"{r['agent_cpu']:.0%} | {lag} |")
    cores = os.cpu_count() or 1
    floor = (d["s3_cpu"] + d["server_cpu"]) / cores
    lines += [
        "",
        f"CPU per publish: {d['local_cpu']:.2f} s to a directory, {d['s3_cpu']:.2f} s with `--s3` "
        f"(the client's upload work: {d['s3_cpu'] - d['local_cpu']:+.2f} s), and the S3 server's own "
        f"{d['server_cpu']:.2f} s ({mib / d['server_cpu']:.0f} MB per CPU-second) on the same cores: "
        f"no schedule on {cores} cores finishes under {floor:.2f} s.",
        "",
        "| ratio | measured | goal |", "|---|---|---|",
        f"| `publish --s3` cost over a local publish (wall) | {overhead:+.0%} | < 20% |",
        f"| `publish --s3` client CPU over a local publish | {d['s3_cpu'] / d['local_cpu'] - 1:+.0%} | |",
        f"| `publish --s3` wall vs the 2-core floor (client + server CPU / cores) | "
        f"{d['s3_s'] / floor:.0%} | |",
    ]
    by = {(r["kind"], r["output"]): r for r in d["agent"]}
    for kind in ("string", "imu", "pointcloud2"):
        if (kind, "local") in by and (kind, "s3") in by:
            ratio = by[(kind, "s3")]["rate"] / by[(kind, "local")]["rate"]
            lines.append(f"| agent rate with an S3 output vs without ({kind}) | {ratio:.0%} | no drop |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench-s3: run as root: it makes a private network namespace and runs the agent as nobody")
    cmd = ["unshare", "-n", PYTHON, __file__, "--inside", "--size-mib", str(args.size_mib), "--runs", str(args.runs)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    (Path(tempfile.gettempdir()) / "peaqos-bench-s3.json").write_text(json.dumps(data))
    text = report(data, "scripts/bench-s3")
    print(text)
    if not args.no_write:
        print(f"bench-s3: wrote {write_block('bench-s3', text)}", file=sys.stderr)


if __name__ == "__main__":
    main()
