"""The benchmark driver behind scripts/bench (run with the reference virtualenv's Python)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
OURS = os.environ["PEAQOS_BIN"]
REF = os.environ["PEAQOS_REF_CLI"]


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of the process's own address space (ru_maxrss would also count the Python
    parent's memory, which a forked child carries until it execs)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measure(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one run of cmd; RSS sampled every 5 ms."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        sample = peak_rss_kib(proc.pid)
        if sample is not None:
            peak = max(peak, sample)
        time.sleep(0.005)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, peak / 1024


def median_run(cmd: list[str], cwd: Path, runs: int, cleanup: Path) -> tuple[float, float]:
    walls, rss = [], []
    for _ in range(runs):
        shutil.rmtree(cleanup, ignore_errors=True)
        w, r = measure(cmd, cwd)
        walls.append(w)
        rss.append(r)
    return statistics.median(walls), max(rss)


def publish_cmd(binary: str, keys_dir: Path, source: Path, out: Path) -> list[str]:
    text = lambda n: (keys_dir / n).read_text().strip()
    return [
        binary, "-q", "stream", "publish", "--input", str(source), "--output-dir", str(out),
        "--owner-public-key", text("owner.pub"), "--operator-public-key", text("operator.pub"),
        "--machine-public-key", text("machine.pub"), "--signing-key-file", str(keys_dir / "chain.key"),
        "--machine-did", text("identity.did"), "--machine-key-id", text("identity.did") + "#keys-1",
    ]


def reference_sign_rate(messages: list[dict], map_doc: dict, keys_dir: Path) -> float:
    from peaq_os_sdk.stream import build_signed_data_package
    from peaq_os_sdk.stream.types import EncryptionContext, SigningContext
    from peaq_os_sdk.stream.types.data_package import UnsignedDataPayload
    from test_packages import topic_rules

    text = lambda n: (keys_dir / n).read_text().strip()
    rules = topic_rules(map_doc)
    signing = SigningContext(private_key=text("identity.key"), backend="software", did=text("identity.did"), key_id="k")
    encryption = EncryptionContext(encryption_key=text("field.key"), algorithm="AES-256-GCM")
    from peaq_os_sdk.stream.types.field_rule import TopicFieldRules

    done = 0
    start = time.perf_counter()
    for m in messages:
        try:
            build_signed_data_package(
                unsigned_payload=UnsignedDataPayload(topic=m["topic"], fields=m["fields"], captured_at=m["capturedAt"]),
                topic_rules=rules.get(m["topic"], TopicFieldRules(topic=m["topic"], rules=())),
                signing_ctx=signing, encryption_ctx=encryption,
                schema_version=m["schemaVersion"], sequence_number=m["sequenceNumber"],
            )
            done += 1
        except Exception:
            pass
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--primitives", required=True)
    parser.add_argument("--keyd", required=True, help="JSON printed by keyd's socket bench")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sign-messages", type=int, default=100_000)
    parser.add_argument("--reference-messages", type=int, default=1_000)
    parser.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = parser.parse_args()
    prim = json.loads(args.primitives)
    kd = json.loads(args.keyd)
    cores = os.cpu_count() or 1
    from gen import generate

    # Publish is measured on tmpfs when there is room, so that the comparison with the
    # primitive is about our work, not this machine's disk; a disk run is reported too.
    shm = Path("/dev/shm")
    need = args.size_mib * 1024 * 1024 * 4
    on_tmpfs = shm.is_dir() and shutil.disk_usage(shm).free > need
    disk_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    with tempfile.TemporaryDirectory(prefix="peaqos-bench-", dir=shm if on_tmpfs else None) as tmp, \
            tempfile.TemporaryDirectory(prefix="peaqos-bench-disk-", dir=disk_dir) as disk_tmp:
        work = Path(tmp)
        disk = Path(disk_tmp)
        subprocess.run([OURS, "-q", "keys", "generate", "--out", str(work / "keys")], check=True)
        keys_dir = work / "keys"
        size = args.size_mib * 1024 * 1024
        source = work / "input.bin"
        with open(source, "wb") as f:
            block = os.urandom(16 * 1024 * 1024)
            for _ in range(args.size_mib // 16):
                f.write(block[: min(len(block), size)])
        print(f"bench: publish {args.size_mib} MiB, ours x{args.runs}", file=sys.stderr)
        ours_wall, ours_rss = median_run(publish_cmd(OURS, keys_dir, source, work / "ours"), work, args.runs, work / "ours")
        shutil.rmtree(work / "ours", ignore_errors=True)
        print("bench: publish, reference x2", file=sys.stderr)
        ref_wall, ref_rss = median_run(publish_cmd(REF, keys_dir, source, work / "ref"), work, 2, work / "ref")
        shutil.rmtree(work / "ref", ignore_errors=True)
        print(f"bench: publish to disk ({disk_dir}), ours and reference x1", file=sys.stderr)
        disk_wall, _ = measure(publish_cmd(OURS, keys_dir, source, disk / "ours"), work)
        shutil.rmtree(disk / "ours", ignore_errors=True)
        ref_disk_wall, _ = measure(publish_cmd(REF, keys_dir, source, disk / "ref"), work)
        shutil.rmtree(disk / "ref", ignore_errors=True)
        # Memory does not grow with the input: publish 4x the size, once.
        big = work / "big.bin"
        with open(big, "wb") as out, open(source, "rb") as src:
            for _ in range(4):
                src.seek(0)
                shutil.copyfileobj(src, out, 16 * 1024 * 1024)
        print(f"bench: publish {4 * args.size_mib} MiB, ours x1 (memory bound)", file=sys.stderr)
        shutil.rmtree(work / "ours", ignore_errors=True)
        big_wall, big_rss = measure(publish_cmd(OURS, keys_dir, big, work / "ours"), work)
        shutil.rmtree(work / "ours", ignore_errors=True)
        big.unlink()

        print(f"bench: sign {args.sign_messages} messages (ours) and {args.reference_messages} (reference SDK)", file=sys.stderr)
        map_doc, messages = generate(seed=1, count=args.sign_messages)
        (work / "map.json").write_text(json.dumps(map_doc))
        (work / "in.jsonl").write_text("".join(json.dumps(m) + "\n" for m in messages))
        sign = [
            OURS, "-q", "stream", "sign", "--map", str(work / "map.json"), "--input", str(work / "in.jsonl"),
            "--output", str(work / "out.jsonl"), "--signing-key-file", str(keys_dir / "identity.key"),
            "--field-key-file", str(keys_dir / "field.key"), "--did", (keys_dir / "identity.did").read_text().strip(),
            "--key-id", "k", "--keep-going",
        ]
        walls = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(sign, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # exit 1: refused lines
            walls.append(time.perf_counter() - start)
        ok_lines = sum(1 for line in (work / "out.jsonl").read_text().splitlines() if '"signature"' in line)
        ours_sign = ok_lines / statistics.median(walls)
        ref_sign = reference_sign_rate(messages[: args.reference_messages], map_doc, keys_dir)

    mib = size / 1e6
    where = "tmpfs" if on_tmpfs else "disk"
    ours_mbps = mib / ours_wall
    ref_mbps = mib / ref_wall
    limit = prim["aead_sha_mbps"] * cores
    rows = [
        (f"publish {args.size_mib} MiB, ours ({where})", f"{ours_wall:.2f} s", f"{ours_mbps:.0f} MB/s", f"{ours_rss:.1f} MiB"),
        (f"publish {args.size_mib} MiB, reference CLI ({where})", f"{ref_wall:.2f} s", f"{ref_mbps:.0f} MB/s", f"{ref_rss:.0f} MiB"),
        (f"publish {4 * args.size_mib} MiB, ours ({where})", f"{big_wall:.2f} s", f"{4 * mib / big_wall:.0f} MB/s", f"{big_rss:.1f} MiB"),
        (f"publish {args.size_mib} MiB, ours (disk)", f"{disk_wall:.2f} s", f"{mib / disk_wall:.0f} MB/s", ""),
        (f"publish {args.size_mib} MiB, reference CLI (disk)", f"{ref_disk_wall:.2f} s", f"{mib / ref_disk_wall:.0f} MB/s", ""),
        ("primitive limit (1 core)", "", f"{prim['aead_sha_mbps']:.0f} MB/s", ""),
    ]
    ratios = [
        (f"publish vs reference (speed, {where})", f"{ref_wall / ours_wall:.1f}x", ">= 10x"),
        ("publish vs reference (speed, disk)", f"{ref_disk_wall / disk_wall:.1f}x", ""),
        ("publish vs reference (peak RSS)", f"{ref_rss / ours_rss:.0f}x less", "< 64 MiB"),
        (f"publish vs primitive limit x {cores} cores ({where})", f"{ours_mbps / limit:.0%}", ">= 85%"),
        ("our per-chunk work vs primitive (1 core)", f"{prim['seal_chunk_mbps'] / (1 / (1 / prim['aead_mbps'] + 2 / prim['sha256_mbps'])):.0%}", ""),
        ("sign vs reference SDK", f"{ours_sign / ref_sign:.0f}x ({ours_sign:,.0f}/s vs {ref_sign:,.0f}/s)", ">= 100x"),
        ("sign vs in-process k256 x cores", f"{ours_sign / (prim['eip191_signs_per_s'] * cores):.0%}", ""),
    ]
    machine = f"{platform.machine()}, {cores} cores, {platform.system()} {platform.release()}"
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu} ({machine}); "
        f"`scripts/bench --runs {args.runs}` (median of runs; input {args.size_mib} MiB of random bytes, chunk size 262144).",
        "",
        "| what | time | throughput | peak RSS |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        "| ratio | measured | goal |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in ratios],
        "",
        "Primitives in the same run, one core: "
        f"XChaCha20-Poly1305 {prim['aead_mbps']:.0f} MB/s, SHA-256 {prim['sha256_mbps']:.0f} MB/s, "
        f"AEAD + the 3 SHA-256 passes the format needs per byte {prim['aead_sha_mbps']:.0f} MB/s, "
        f"our whole per-chunk seal (key, 3 sealed boxes, AEAD, 2 hashes, Ed25519) {prim['seal_chunk_mbps']:.0f} MB/s, "
        f"k256 EIP-191 {prim['eip191_signs_per_s']:,.0f} signatures/s.",
    ]
    lines += [
        "",
        "keyd, software backend, EIP-191 package signatures over the Unix socket "
        f"(`cargo bench -p keyd --bench socket`, same run), next to in-process k256: "
        f"{kd['in_process_per_s']:,.0f}/s on one core, {kd['in_process_all_cores_per_s']:,.0f}/s on {kd['cores']} cores.",
        "",
        "| keyd | signatures/s | vs in-process k256 (all cores) | p50 | p99 | goal |",
        "|---|---|---|---|---|---|",
        f"| unbatched, blocking client (`KeydClient`) | {kd['unbatched_per_s']:,.0f} | {kd['unbatched_per_s'] / kd['in_process_all_cores_per_s']:.0%} | {kd['unbatched_p50_us']:.0f} µs | {kd['unbatched_p99_us']:.0f} µs | p99 < 250 µs |",
        f"| unbatched, async client | {kd['unbatched_async_per_s']:,.0f} | {kd['unbatched_async_per_s'] / kd['in_process_all_cores_per_s']:.0%} | {kd['unbatched_async_p50_us']:.0f} µs | {kd['unbatched_async_p99_us']:.0f} µs | p99 < 250 µs |",
        f"| batched ({kd['batch_size']} per call) | {kd['batched_per_s']:,.0f} | {kd['batched_per_s'] / kd['in_process_all_cores_per_s']:.0%} | {kd['batched_p50_us'] / 1000:.1f} ms | {kd['batched_p99_us'] / 1000:.1f} ms | >= 90% |",
        f"| streamed ({kd['batch_size']} per message, pipelined) | {kd['streamed_per_s']:,.0f} | {kd['streamed_per_s'] / kd['in_process_all_cores_per_s']:.0%} | | | |",
    ]
    if kd.get("tpm_batched_per_s"):
        lines.append(
            f"| tpm backend (swtpm, keys unsealed into locked memory), batched | {kd['tpm_batched_per_s']:,.0f} | "
            f"{kd['tpm_batched_per_s'] / kd['in_process_all_cores_per_s']:.0%} | | | >= 90% |"
        )
    if kd.get("pkcs11_direct_two_sessions_per_s"):
        lines += [
            "",
            "| keyd, pkcs11 backend (SoftHSM) | signatures/s | baseline in the same run | ratio | goal |",
            "|---|---|---|---|---|",
            f"| batched ({kd['batch_size']} per call), 2 sessions | {kd['pkcs11_batched_per_s']:,.0f} | "
            f"the token directly, CKM_ECDSA, 2 sessions: {kd['pkcs11_direct_two_sessions_per_s']:,.0f} | "
            f"{kd['pkcs11_batched_per_s'] / kd['pkcs11_direct_two_sessions_per_s']:.0%} | >= 85% |",
        ]
    if "audit_append_us" in kd:
        lines += [
            "",
            "What keyd's fail-closed records cost a request (same run): the audit record, HMAC-chained "
            f"and written before every answer, {kd['audit_append_us']:.1f} µs; its fsync with the "
            f"checkpoint, {kd['audit_sync_us']:,.0f} µs, paid once per `audit_fsync_ms` (100 ms) in the "
            f"background; a signed chunk's ledger record, {kd['ledger_record_us']:.1f} µs.",
            "",
            "| keyd, one item per call (async client) | per s | p50 | p99 |",
            "|---|---|---|---|",
            f"| package signature (default: audit fsynced in the background) | {kd['unbatched_async_per_s']:,.0f} | {kd['unbatched_async_p50_us']:.0f} µs | {kd['unbatched_async_p99_us']:.0f} µs |",
            f"| package signature, `audit_fsync_ms = 0` (fsync before every answer) | {kd['fsync_each_unbatched_per_s']:,.0f} | {kd['fsync_each_p50_us']:.0f} µs | {kd['fsync_each_p99_us']:.0f} µs |",
            f"| chunk hash signature (pair recorded in the ledger first) | {kd['chunk_hash_unbatched_per_s']:,.0f} | {kd['chunk_hash_p50_us']:.0f} µs | {kd['chunk_hash_p99_us']:.0f} µs |",
        ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        print(f"bench: wrote {write_block('bench', report)}", file=sys.stderr)


def write_block(name: str, report: str) -> Path:
    """Replaces the `<!-- NAME:begin -->`…`<!-- NAME:end -->` block of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{report}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    path.write_text(text)
    return path


if __name__ == "__main__":
    main()
