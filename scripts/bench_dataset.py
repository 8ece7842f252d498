"""The dataset benchmarks behind scripts/bench-dataset.

1. A chain of N chunks (16-byte chunks, so that the envelopes are the work) made once with
   `peaqos stream publish`, on tmpfs when there is room.
2. `dataset build` over all of it, `dataset verify --envelopes-only`, `dataset prove` (which
   reads every envelope of the range to rebuild the tree) and `dataset verify-proof`, median
   wall time and peak RSS of N runs; the baseline is `cat` of the same envelope files (the
   reading itself) in the same run. The build's RSS is also measured on a tenth of the
   chain: the root is built in O(log n) memory, so it should not grow with the chain.
3. `cargo bench --bench dataset` (leaf, root, inclusion and consistency checks against
   SHA-256 alone).
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
sys.path.insert(0, str(ROOT / "scripts"))

from bench import median_run, publish_cmd, write_block  # noqa: E402
from bench_agent import cpu_model  # noqa: E402

OURS = os.environ["PEAQOS_BIN"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    n = args.chunks
    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and shutil.disk_usage(shm).free > n * 8192
    work = Path(tempfile.mkdtemp(prefix="peaqos-bench-dataset-", dir=shm if on_tmpfs else "/tmp"))
    try:
        keys = work / "keys"
        subprocess.run([OURS, "-q", "keys", "generate", "--out", str(keys)], check=True)
        did = (keys / "identity.did").read_text().strip()
        source = work / "source.bin"
        source.write_bytes(os.urandom(16 * n))
        chain = work / "chain"
        started = time.perf_counter()
        subprocess.run(publish_cmd(OURS, keys, source, chain) + ["--chunk-size", "16"], check=True)
        made = time.perf_counter() - started
        envelopes = sorted(str(p) for p in chain.glob("chunk-*.json"))
        assert len(envelopes) == n, len(envelopes)
        env_bytes = sum(os.path.getsize(p) for p in envelopes)
        listing = work / "envelopes.txt"
        listing.write_text("\n".join(envelopes) + "\n")

        def build(to: int, out: Path) -> list[str]:
            return [OURS, "-q", "dataset", "build", "--chunk-dir", str(chain), "--topic", "bench", "--from-index", "0",
                    "--to-index", str(to), "--signing-key-file", str(keys / "identity.key"), "--did", did,
                    "--output", str(out)]

        ds = work / "ds.json"
        cat = ["sh", "-c", f"xargs cat < {listing} > /dev/null"]
        results = {}
        results["cat"] = median_run(cat, work, args.runs, work / "nothing")
        results["build"] = median_run(build(n - 1, ds), work, args.runs, work / "nothing")
        results["build_tenth"] = median_run(build(n // 10 - 1, work / "ds10.json"), work, args.runs, work / "nothing")
        results["verify"] = median_run([OURS, "-q", "dataset", "verify", "--dataset", str(ds), "--chunk-dir", str(chain),
                                        "--envelopes-only"], work, args.runs, work / "nothing")
        proof = work / "proof.json"
        k = n // 2 + 1
        results["prove"] = median_run([OURS, "-q", "dataset", "prove", "--dataset", str(ds), "--chunk-dir", str(chain),
                                       "--index", str(k), "--output", str(proof)], work, args.runs, work / "nothing")
        results["verify_proof"] = median_run([OURS, "-q", "dataset", "verify-proof", "--dataset", str(ds), "--proof",
                                              str(proof), "--chunk", str(chain / f"chunk-{k}.json")], work, args.runs,
                                             work / "nothing")
        results["true"] = median_run(["true"], work, args.runs, work / "nothing")
        proof_bytes = proof.stat().st_size
        path_len = len(json.loads(proof.read_text())["auditPath"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bench = subprocess.run(["cargo", "bench", "--quiet", "-p", "stream", "--bench", "dataset"], cwd=ROOT,
                           capture_output=True, text=True, check=True)
    inproc = json.loads(bench.stdout.strip().splitlines()[-1])

    wall = lambda name: results[name][0]
    rss = lambda name: results[name][1]
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_model()} ({os.cpu_count()} cores); "
        f"`scripts/bench-dataset --chunks {n} --runs {args.runs}`; chain on {'tmpfs' if on_tmpfs else 'disk'} "
        f"({n:,} chunks, {env_bytes / 1e6:.0f} MB of envelopes, made in {made:.0f} s).",
        "",
        "| command | wall (median) | vs reading the envelopes (`cat`) | peak RSS |",
        "|---|---|---|---|",
        f"| `cat` of every `chunk-N.json` (baseline) | {wall('cat'):.2f} s | 1.00 | {rss('cat'):.1f} MiB |",
        f"| `dataset build`, {n:,} chunks | {wall('build'):.2f} s ({wall('build') / n * 1e6:.1f} µs/chunk) | {wall('build') / wall('cat'):.2f} | {rss('build'):.1f} MiB |",
        f"| `dataset build`, {n // 10:,} chunks | {wall('build_tenth'):.2f} s | | {rss('build_tenth'):.1f} MiB |",
        f"| `dataset verify --envelopes-only`, {n:,} chunks | {wall('verify'):.2f} s | {wall('verify') / wall('cat'):.2f} | {rss('verify'):.1f} MiB |",
        f"| `dataset prove` (reads the range to rebuild the tree) | {wall('prove'):.2f} s | {wall('prove') / wall('cat'):.2f} | {rss('prove'):.1f} MiB |",
        f"| `dataset verify-proof` (whole process; `true`: {wall('true') * 1e3:.1f} ms) | {wall('verify_proof') * 1e3:.1f} ms | | {rss('verify_proof'):.1f} MiB |",
        "",
        f"Inclusion proof at {n:,} leaves: {path_len} hashes, {proof_bytes:,} bytes as JSON.",
        "",
        "In process (`cargo bench -p stream --bench dataset`, one core):",
        "",
        "| what | ours | baseline (SHA-256 alone) | ratio |",
        "|---|---|---|---|",
        f"| leaf of an envelope (canonical leaf data + hash) | {inproc['leaves_per_s'] / 1e3:.0f} k/s | {inproc['sha256_leaf_per_s'] / 1e3:.0f} k/s | {inproc['sha256_leaf_per_s'] / inproc['leaves_per_s']:.1f}× slower |",
        f"| root over {inproc['leaves']:,} leaf hashes (stack of ≤ {inproc['root_builder_stack']}) | {inproc['root_100k_ms']:.1f} ms | {inproc['sha256_100k_nodes_ms']:.1f} ms | {inproc['root_100k_ms'] / inproc['sha256_100k_nodes_ms']:.2f} |",
        f"| inclusion check ({inproc['inclusion_path_hashes']} hashes) | {inproc['inclusion_check_us']:.1f} µs | {inproc['sha256_path_us']:.1f} µs | {inproc['inclusion_check_us'] / inproc['sha256_path_us']:.2f} |",
        f"| consistency check (≤ {inproc['consistency_proof_hashes_max']} hashes) | {inproc['consistency_check_us']:.1f} µs | | |",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        print(f"wrote {write_block('bench-dataset', report)}", file=sys.stderr)


if __name__ == "__main__":
    main()
