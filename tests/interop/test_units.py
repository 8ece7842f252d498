"""The shipped systemd units, judged by systemd itself, and against what the programs do.

- `systemd-analyze verify` finds nothing wrong with either unit;
- `systemd-analyze security --offline` scores keyd at most 1.0 and the agent at most 2.0;
- keyd (software and pkcs11 backends, socket group set) and the edge agent run under strace
  while they do their work, and every system call they make is one their unit's
  SystemCallFilter allows: a filter that forbids what the configuration needs (as the keyd
  unit once forbade chown, which socket_group needs) fails here, not on a robot.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import OURS, ROOT, ours, sign_sample_through_keyd
from test_agent import AS_AGENT, COUNT_TOPIC, in_netns, needs_root, private_dir, write_map

UNITS = ROOT / "policies" / "systemd"
KEYD = str(Path(OURS).with_name("keyd"))
AGENT = str(Path(OURS).with_name("edge-agent"))
KEYD_DEV = str(ROOT / "scripts" / "keyd-dev")

needs_tools = pytest.mark.skipif(
    not shutil.which("systemd-analyze") or not shutil.which("strace"),
    reason="needs systemd-analyze and strace (scripts/setup installs them)")


def unit_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at the built binary (verify checks it exists)."""
    text = (UNITS / name).read_text()
    text = text.replace("/usr/bin/keyd", KEYD).replace("/usr/bin/edge-agent", AGENT)
    path = tmp_path / name
    path.write_text(text)
    return path


@needs_tools
@pytest.mark.parametrize("name", ["keyd.service", "edge-agent.service"])
def test_units_verify(tmp_path, name):
    proc = subprocess.run(["systemd-analyze", "verify", str(unit_copy(tmp_path, name))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    complaints = [l for l in proc.stderr.splitlines() if name in l]
    assert not complaints, complaints


@needs_tools
@pytest.mark.parametrize("name,limit", [("keyd.service", 1.0), ("edge-agent.service", 2.0)])
def test_units_expose_little(tmp_path, name, limit):
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_copy(tmp_path, name))],
                          capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= limit, proc.stdout


@lru_cache(maxsize=None)
def group_members(group: str) -> frozenset[str]:
    """A syscall group (`@system-service`), expanded through its nested groups."""
    proc = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True)
    members: set[str] = set()
    for line in proc.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        members |= group_members(item) if item.startswith("@") else {item}
    return frozenset(members)


def allowed_syscalls(unit: Path) -> set[str]:
    """What the unit's SystemCallFilter= lines allow, in systemd's order: the first line is
    an allow list, later plain lines add to it and `~` lines take away."""
    allowed: set[str] = set()
    lines = [l.split("=", 1)[1] for l in unit.read_text().splitlines() if l.startswith("SystemCallFilter=")]
    assert lines and not lines[0].startswith("~"), "the filter must start with an allow list"
    for value in lines:
        deny = value.startswith("~")
        names = set()
        for item in value.lstrip("~").split():
            names |= group_members(item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


SYSCALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]")


def syscalls_in(trace: Path) -> set[str]:
    names = {m.group(1) for line in trace.read_text().splitlines() if (m := SYSCALL.match(line))}
    names.discard("exit")  # strace's own notation for the process's end ("+++ exited")
    return names


def forbidden(unit: Path, trace: Path) -> list[str]:
    # execve is made by strace to start the program, before the unit's filter would apply.
    return sorted(syscalls_in(trace) - allowed_syscalls(unit) - {"execve"})


def judge_after_exec(trace: Path, program: str) -> None:
    """Keeps only what `program` did: setpriv's own (privileged) calls come before it execs."""
    text = trace.read_text()
    at = text.find(f'execve("{program}"')
    assert at >= 0, f"{program} was not started"
    trace.write_text(text[text.find("\n", at) + 1:])


def stop_traced_keyd(directory: Path) -> None:
    """SIGTERM to keyd itself (its pid is in the state lock), then wait for strace to end."""
    pid = int((directory / "state" / "keyd.lock").read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # strace writes its last lines


@needs_tools
@needs_root
@pytest.mark.parametrize("backend", ["software", "pkcs11"])
def test_keyd_makes_only_the_calls_its_unit_allows(tmp_path, backend):
    directory = private_dir("kdu")
    trace = tmp_path / "keyd.strace"
    env = dict(os.environ, KEYD_DEV_WRAP=f"strace -f -qq -o {trace}")
    start = subprocess.run([KEYD_DEV, "start", "--backend", backend, "--dir", str(directory), "--agent-user", "nobody"],
                           capture_output=True, text=True, env=env)
    assert start.returncode == 0, start.stderr
    socket = start.stdout.strip().splitlines()[-1]
    try:
        keys = directory / "keys"
        sign_sample_through_keyd(KEYD, socket, tmp_path)
        (tmp_path / "data.bin").write_bytes(os.urandom(300_000))
        ours("-q", "stream", "publish", "--keyd", socket, "--input", str(tmp_path / "data.bin"),
             "--output-dir", str(tmp_path / "pub"), "--chunk-size", "100000")
        ours("-q", "stream", "grant", "--keyd", socket, "--chunk-dir", str(tmp_path / "pub"),
             "--buyer-public-key", (keys / "buyer.pub").read_text().strip(), "--buyer-id", "buyer-1",
             "--output-dir", str(tmp_path / "access"))
        stop_traced_keyd(directory)
    finally:
        subprocess.run([KEYD_DEV, "stop", "--dir", str(directory)], check=False)
    assert "chown" in syscalls_in(trace) or "fchownat" in syscalls_in(trace), "socket_group was not exercised"
    bad = forbidden(UNITS / "keyd.service", trace)
    assert not bad, f"keyd.service's SystemCallFilter forbids what keyd does: {bad}"


@needs_tools
@needs_root
def test_the_agent_makes_only_the_calls_its_unit_allows(tmp_path):
    directory = private_dir("kdv")
    start = subprocess.run([KEYD_DEV, "start", "--backend", "software", "--dir", str(directory), "--agent-user", "nobody"],
                           capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    socket = start.stdout.strip().splitlines()[-1]
    work = private_dir("eau")
    try:
        map_path = write_map(work, socket, COUNT_TOPIC)
        trace = work / "agent.strace"
        log = work / "agent.log"
        # A copy the agent's user can execute (the build may be in root's home).
        binary = str(work / "edge-agent")
        subprocess.run(["install", "-m", "0755", AGENT, binary], check=True)
        agent = shlex.quote(binary)
        # ExecStartPre (check), then ExecStart (run) until SIGTERM, as the agent's user.
        script = (f"strace -f -qq -o {trace}.pre {AS_AGENT} {agent} check {shlex.quote(str(map_path))} >/dev/null\n"
                  f"strace -f -qq -o {trace} {AS_AGENT} {agent} run {shlex.quote(str(map_path))} 2>{log} &\n"
                  "tracer=$!\nsleep 3\npkill -TERM -x edge-agent || true\nwait $tracer || true\n")
        in_netns(script, timeout=60)
        for path in (Path(f"{trace}.pre"), trace):
            judge_after_exec(path, binary)
            bad = forbidden(UNITS / "edge-agent.service", path)
            assert not bad, f"edge-agent.service's SystemCallFilter forbids what the agent does: {bad}"
    finally:
        subprocess.run([KEYD_DEV, "stop", "--dir", str(directory)], check=False)
