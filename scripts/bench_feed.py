"""The live feed's benchmark behind scripts/bench-feed (run as root with the reference
virtualenv's Python; it re-runs itself in a private network namespace with only loopback,
where nats-server, the agent, keyd, the DDS publisher and the follower all live).

Per message kind, two agent runs on the same publisher: the local output alone, then with a
NATS output and `peaqos stream follow` running. Reported: accepted messages/s of both (the
feed must not slow capture), the follower's chunks/s and MB/s while the agent runs, its lag
from a chunk's commit (the agent's `chunk-N.json` written) to the follower's verified,
durable copy (p50, p99), and a fresh follower replaying the whole stream against `cp -r` +
`sync` of the same directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import write_block  # noqa: E402
from bench_agent import PYTHON, TARGET, cpu_model, message_label, rate_text, scenario  # noqa: E402
from natsserver import NATS_SERVER  # noqa: E402

OURS = os.environ["PEAQOS_BIN"]


def follow(url: str, did: str, prefix: str, stream: str, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([OURS, "stream", "follow", "--nats", url, "--did", did, "--topic", "/bench",
                             "--output-dir", str(out), "--from-start", "--json", "--stream", stream,
                             "--subject-prefix", prefix], stdout=open(log, "w"), stderr=subprocess.DEVNULL)


def wait_total(out: Path, total: int, proc: subprocess.Popen, timeout: float) -> float | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        manifest = out / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text())["totalChunks"] == total:
            return time.perf_counter()
        if proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def chain_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("chunk-*"))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def inside(args) -> None:
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "lo", "multicast", "on"],
                ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
        subprocess.run(cmd, check=True)
    work = Path(tempfile.mkdtemp(prefix="peaqos-bench-feed-", dir="/tmp"))
    work.chmod(0o755)
    (work / "nats.conf").write_text(f'listen: 127.0.0.1:4222\njetstream {{ store_dir: "{work / "js"}" }}\n')
    # Niced: it shares the 2 cores with what is measured, standing in for a remote server.
    server = subprocess.Popen(["nice", "-n", "10", NATS_SERVER, "-c", str(work / "nats.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    keyd_dir = work / "keyd"
    out: dict = {"runs": []}
    try:
        time.sleep(0.5)
        agent = str(work / "edge-agent")
        shutil.copy(TARGET / "edge-agent", agent)
        os.chmod(agent, 0o755)
        socket = subprocess.run([str(ROOT / "scripts" / "keyd-dev"), "start", "--dir", str(keyd_dir), "--agent-user",
                                 "nobody"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        keyd_pid = int((keyd_dir / "keyd.pid").read_text())
        did = json.loads((keyd_dir / "identity.json").read_text())["did"]
        rust_pub = [str(TARGET / "examples" / "ros2-bench-publisher")]
        plan = [
            ("string", "std_msgs/msg/String", 100_000, 10_000, 100, 262_144),
            ("pointcloud2", "sensor_msgs/msg/PointCloud2", 200, 20, 1 << 20, 4 << 20),
        ]
        for n, (kind, type_name, count, rate, size, chunk) in enumerate(plan):
            print(f"bench-feed: agent, {kind} x {count} at {rate}/s, local", file=sys.stderr, flush=True)
            local = scenario(work, socket, keyd_pid, agent, rust_pub, kind, type_name, count, rate, size, chunk)
            local["output"] = "local"
            out["runs"].append(local)
            prefix, stream = f"bench{n}", f"BENCH{n}"
            outputs = (f"outputs:\n  - nats: {{ url: \"nats://127.0.0.1:4222\", stream: {stream}, "
                       f"subject_prefix: {prefix} }}\n")
            followed = work / f"followed-{n}"
            log = work / f"follow-{n}.jsonl"
            follower = follow("nats://127.0.0.1:4222", did, prefix, stream, followed, log)

            def inspect(run: Path, follower=follower, followed=followed, log=log, n=n, prefix=prefix, stream=stream):
                local_dir = run / "agent" / "out" / "bench"
                total = json.loads((local_dir / "manifest.json").read_text())["totalChunks"]
                if wait_total(followed, total, follower, 120) is None:
                    raise SystemExit(f"bench-feed: the follower did not reach {total} chunks")
                follower.terminate()
                follower.wait(timeout=30)
                events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
                written = {e["index"]: e["atMicros"] / 1e6 for e in events if e["event"] == "written"}
                lags = [written[i] - (local_dir / f"chunk-{i}.json").stat().st_mtime for i in sorted(written)]
                span = max(written.values()) - min(written.values())
                nbytes = chain_bytes(followed)
                # A fresh follower over the whole stream, against copying the directory.
                t0 = time.perf_counter()
                subprocess.run(["cp", "-r", str(local_dir), str(work / f"copy-{n}")], check=True)
                os.sync()
                copy_s = time.perf_counter() - t0
                replay_dir = work / f"replay-{n}"
                t0 = time.perf_counter()
                replay = follow("nats://127.0.0.1:4222", did, prefix, stream, replay_dir, work / f"replay-{n}.jsonl")
                done = wait_total(replay_dir, total, replay, 300)
                replay.terminate()
                replay.wait(timeout=30)
                if done is None:
                    raise SystemExit("bench-feed: the replay did not finish")
                return {"chunks": total, "bytes": nbytes, "live_span_s": span,
                        "lag_p50": percentile(lags, 0.5), "lag_p99": percentile(lags, 0.99),
                        "lag_max": max(lags), "replay_s": done - t0, "copy_s": copy_s}

            print(f"bench-feed: agent, {kind} x {count} at {rate}/s, nats + follower", file=sys.stderr, flush=True)
            r = scenario(work, socket, keyd_pid, agent, rust_pub, kind, type_name, count, rate, size, chunk,
                         extra_map=outputs, inspect=inspect)
            r["output"] = "nats"
            out["runs"].append(r)
    finally:
        subprocess.run([str(ROOT / "scripts" / "keyd-dev"), "stop", "--dir", str(keyd_dir)], check=False,
                       capture_output=True)
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


def report(d: dict, command: str) -> str:
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_model()} ({os.cpu_count()} cores); `{command}`.",
        "nats-server 2.9 (JetStream, file storage) on loopback, nice 10, on the same 2 cores as the publisher "
        "(Rust), the agent, keyd and the follower.",
        "",
        "| agent | output | accepted/s | lost | agent CPU | follower chunks/s | follower MB/s | lag p50 | lag p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["runs"]:
        what = f"{message_label(r['kind'])} at {r['target_rate']:,}/s"
        f = r.get("inspect")
        follower = ("| | | | |" if not f else
                    f"| {f['chunks'] / f['live_span_s']:.1f} | {f['bytes'] / f['live_span_s'] / 1e6:.1f} | "
                    f"{f['lag_p50'] * 1000:.0f} ms | {f['lag_p99'] * 1000:.0f} ms |")
        lines.append(f"| {what} | {r['output']} | {rate_text(r)} | {r['lost']:,} | {r['agent_cpu']:.0%} {follower}")
    lines += ["", "| replay of the whole stream by a fresh follower | chunks | MB | follower | `cp -r` + `sync` | ratio |",
              "|---|---|---|---|---|---|"]
    for r in d["runs"]:
        f = r.get("inspect")
        if f:
            lines.append(f"| {message_label(r['kind'])} | {f['chunks']} | {f['bytes'] / 1e6:.1f} | {f['replay_s']:.2f} s "
                         f"({f['bytes'] / f['replay_s'] / 1e6:.0f} MB/s) | {f['copy_s']:.2f} s | "
                         f"{f['replay_s'] / f['copy_s']:.1f}x |")
    by = {(r["kind"], r["output"]): r for r in d["runs"]}
    lines += ["", "| ratio | measured |", "|---|---|"]
    for kind in ("string", "pointcloud2"):
        if (kind, "local") in by and (kind, "nats") in by:
            ratio = by[(kind, "nats")]["rate"] / by[(kind, "local")]["rate"]
            lines.append(f"| agent rate with a NATS output vs the local output alone ({kind}) | {ratio:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench-feed: run as root: it makes a private network namespace and runs the agent as nobody")
    out = subprocess.run(["unshare", "-n", PYTHON, __file__, "--inside"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    (Path(tempfile.gettempdir()) / "peaqos-bench-feed.json").write_text(json.dumps(data))
    text = report(data, "scripts/bench-feed")
    print(text)
    if not args.no_write:
        print(f"bench-feed: wrote {write_block('bench-feed', text)}", file=sys.stderr)


if __name__ == "__main__":
    main()
