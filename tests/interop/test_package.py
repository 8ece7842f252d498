"""The Debian packages, installed on this machine as a robot maker would install them.

- `scripts/package` made keyd, edge-agent and peaqos packages for amd64 and arm64, each
  holding what it should with the right modes, conffiles and architecture;
- the amd64 ones install with `dpkg -i`: the accounts and groups exist, the configuration is
  root's and readable by the daemon's group only, the directories are the daemon's;
- the installed units pass `systemd-analyze verify` and score as the shipped ones;
- each installed unit's ExecStart runs as the unit's User=, Group= and
  SupplementaryGroups=, with its UMask= and the directories its RuntimeDirectory=,
  StateDirectory= and LogsDirectory= make (keyd in a network namespace of its own, as
  PrivateNetwork= gives it): keyd serves the agent's account and refuses others, the agent
  captures a real DDS publisher's messages into chains the reference verifies and buys;
- `keyd dev up` from the package alone gives an unprivileged user a SoftHSM-backed keyd.

Everything the install made is purged at the end.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, ref, run
from test_agent import in_netns, needs_root, private_dir, publish_cmd, wait_subscribed

PACKAGES = Path(os.environ.get("PEAQOS_PACKAGES") or Path(os.environ.get("PEAQOS_CACHE", Path.home() / ".cache" / "peaqos")) / "packages")
NAMES = ("keyd", "edge-agent", "peaqos")
ELF_MACHINE = {"amd64": 0x3E, "arm64": 0xB7}

needs_dpkg = pytest.mark.skipif(not shutil.which("dpkg"), reason="needs dpkg (a Debian or Ubuntu machine)")


def deb(name: str, arch: str) -> Path:
    """The newest package NAME for ARCH; built by scripts/package if there is none."""
    found = sorted(PACKAGES.glob(f"{name}_*_{arch}.deb"))
    if not found:
        run([str(ROOT / "scripts" / "package"), "--arch", arch, "--out", str(PACKAGES)], timeout=3600)
        found = sorted(PACKAGES.glob(f"{name}_*_{arch}.deb"))
    assert found, f"scripts/package made no {name} package for {arch} in {PACKAGES}"
    return found[-1]


def contents(package: Path) -> dict[str, str]:
    """Path → mode string (e.g. -rwxr-xr-x) of every entry in the package."""
    listing = run(["dpkg-deb", "--contents", str(package)]).stdout
    entries = {}
    for line in listing.splitlines():
        fields = line.split()
        entries[fields[5].removeprefix(".")] = fields[0]
    return entries


def field(package: Path, name: str) -> str:
    return run(["dpkg-deb", "--field", str(package), name]).stdout.strip()


def member(package: Path, path: str) -> bytes:
    """One file's bytes from the package."""
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], capture_output=True, check=True).stdout
    return subprocess.run(["tar", "-xO", f".{path}"], input=tar, capture_output=True, check=True).stdout


@needs_dpkg
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_packages_hold_what_they_should(arch):
    keyd, agent, cli = (deb(name, arch) for name in NAMES)
    for package, name in zip((keyd, agent, cli), NAMES):
        assert field(package, "Package") == name
        assert field(package, "Architecture") == arch
    files = contents(keyd)
    assert files["/usr/bin/keyd"] == "-rwxr-xr-x"
    for path in ("/usr/lib/systemd/system/keyd.service", "/usr/lib/sysusers.d/keyd.conf", "/usr/lib/tmpfiles.d/keyd.conf",
                 "/usr/share/keyd/keyd.proto", "/usr/share/doc/keyd/install.md", "/usr/share/doc/keyd/clients.md"):
        assert path in files, path
    # Not world-readable even before postinst hands them to keyd's group.
    assert files["/etc/keyd/keyd.toml"] == "-rw-r-----" and files["/etc/keyd/policy.toml"] == "-rw-r-----"
    conffiles = run(["dpkg-deb", "--info", str(keyd), "conffiles"]).stdout.split()
    assert conffiles == ["/etc/keyd/keyd.toml", "/etc/keyd/policy.toml"]
    # Linked against libtss2 (dpkg-shlibdeps found it for this architecture).
    assert "libtss2-esys" in field(keyd, "Depends"), field(keyd, "Depends")
    files = contents(agent)
    assert files["/usr/bin/edge-agent"] == "-rwxr-xr-x" and files["/etc/edge-agent/map.yaml"] == "-rw-r-----"
    assert "/usr/lib/systemd/system/edge-agent.service" in files and "/usr/lib/sysusers.d/edge-agent.conf" in files
    # The receive buffers the DDS sockets ask for (point clouds in a burst).
    assert "net.core.rmem_max" in member(agent, "/usr/lib/sysctl.d/60-edge-agent.conf").decode()
    assert "keyd" in field(agent, "Recommends")
    assert contents(cli)["/usr/bin/peaqos"] == "-rwxr-xr-x"
    # The binaries are of the package's architecture.
    for package, binary in ((keyd, "/usr/bin/keyd"), (agent, "/usr/bin/edge-agent"), (cli, "/usr/bin/peaqos")):
        header = member(package, binary)[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == ELF_MACHINE[arch], binary
    # The shipped units are the ones the unit tests judge.
    assert member(keyd, "/usr/lib/systemd/system/keyd.service") == (ROOT / "policies" / "systemd" / "keyd.service").read_bytes()


def purge() -> None:
    subprocess.run(["dpkg", "--purge", *NAMES], capture_output=True)
    # Purging keeps the keys, the logs and the spool on purpose (postrm): these are the tests'.
    for leftover in ("/var/lib/keyd", "/var/log/keyd", "/run/keyd", "/var/lib/edge-agent", "/etc/keyd", "/etc/edge-agent"):
        shutil.rmtree(leftover, ignore_errors=True)


@pytest.fixture(scope="module")
def installed():
    if os.geteuid() != 0:
        pytest.skip("installing packages needs root")
    purge()
    packages = [str(deb(name, "amd64")) for name in NAMES]
    proc = subprocess.run(["dpkg", "-i", "--force-confnew", *packages], capture_output=True, text=True,
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    purge()


def owner(path: str) -> tuple[str, str, int]:
    st = os.stat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


@needs_dpkg
@needs_root
def test_install_makes_the_accounts_and_safe_modes(installed):
    for user in ("keyd", "edge-agent"):
        entry = pwd.getpwnam(user)
        assert entry.pw_uid < 1000 and entry.pw_shell.endswith("nologin"), entry
        assert grp.getgrgid(entry.pw_gid).gr_name == user
    assert set(grp.getgrnam("keyd-clients").gr_mem) >= {"keyd", "edge-agent"}
    grp.getgrnam("peaq-owner")
    assert owner("/etc/keyd") == ("root", "keyd", 0o750)
    assert owner("/etc/keyd/keyd.toml") == ("root", "keyd", 0o640)
    assert owner("/etc/keyd/policy.toml") == ("root", "keyd", 0o640)
    assert owner("/var/lib/keyd") == ("keyd", "keyd", 0o700)
    assert owner("/var/log/keyd") == ("keyd", "keyd", 0o750)
    assert owner("/etc/edge-agent/map.yaml") == ("root", "edge-agent", 0o640)
    assert owner("/var/lib/edge-agent") == ("edge-agent", "edge-agent", 0o750)
    assert run(["/usr/bin/peaqos", "--version"]).stdout.startswith("peaqos ")
    # The shipped example configuration is valid as it is (only the recipients are to fill).
    run(["setpriv", "--reuid=edge-agent", "--regid=edge-agent", "--init-groups", "/usr/bin/edge-agent", "check",
         "/etc/edge-agent/map.yaml"])


@needs_dpkg
@needs_root
@pytest.mark.parametrize("name,limit", [("keyd.service", 1.0), ("edge-agent.service", 2.0)])
def test_installed_units_verify_and_score(installed, name, limit):
    unit = f"/usr/lib/systemd/system/{name}"
    proc = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True)
    assert proc.returncode == 0 and name not in proc.stderr, proc.stderr
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", unit], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert found and float(found.group(1)) <= limit, proc.stdout + proc.stderr


def unit_settings(name: str) -> dict[str, list[str]]:
    """The [Service] settings of an installed unit, each with its values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in Path(f"/usr/lib/systemd/system/{name}").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def as_unit(name: str, command: str | None = None) -> str:
    """A shell command line that runs the unit's ExecStart (or `command`) as the unit does:
    its user, group and supplementary groups, no capabilities, no new privileges, its umask,
    after making the directories it names as systemd would (owned by its user, its modes)."""
    unit = unit_settings(name)
    user, group = unit["User"][0], unit["Group"][0]
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    for kind, base in (("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib"), ("LogsDirectory", "/var/log")):
        for value in unit.get(kind, []):
            mode = int(unit.get(f"{kind}Mode", ["0755"])[0], 8)
            path = Path(base) / value
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, uid, gid)
            path.chmod(mode)
    groups = ",".join(g for value in unit.get("SupplementaryGroups", []) for g in value.split())
    setpriv = ["setpriv", f"--reuid={user}", f"--regid={group}", f"--groups={groups}" if groups else "--clear-groups",
               "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    umask = unit.get("UMask", ["0022"])[0]
    inner = command or unit["ExecStart"][0]
    return f"{shlex.join(setpriv)} sh -c {shlex.quote(f'umask {umask}; exec {inner}')}"


ONE_TOPIC_MAP = """\
keyd:
  socket: /run/keyd/keyd.sock
  backoff_max_ms: 500
spool_dir: /var/lib/edge-agent/spool
output_dir: /var/lib/edge-agent/out
node_name: edge_agent
metrics:
  listen: 127.0.0.1:9464
topics:
  - topic: /chatter
    type: std_msgs/msg/String
    schema_version: "1"
    chunk: { max_messages: 40, max_age_ms: 300 }
"""


@needs_dpkg
@needs_root
def test_installed_units_run_as_their_users(installed, tmp_path):
    keys = tmp_path / "keys"
    run(["/usr/bin/peaqos", "-q", "keys", "generate", "--out", str(keys)])
    read = lambda name: (keys / name).read_text().strip()  # noqa: E731
    # What a robot maker edits: the recipients to seal every chunk key to.
    with open("/etc/keyd/keyd.toml", "a") as config:
        config.write(f'\n[[recipients]]\nid = "owner-1"\ntype = "owner"\npublic_key_hex = "{read("owner.pub")}"\n'
                     f'\n[[recipients]]\nid = "operator-1"\ntype = "operator"\npublic_key_hex = "{read("operator.pub")}"\n')
    assert owner("/etc/keyd/keyd.toml") == ("root", "keyd", 0o640)
    init = run(["setpriv", "--reuid=keyd", "--regid=keyd", "--init-groups", "/usr/bin/keyd", "init", "--config", "/etc/keyd/keyd.toml"])
    identity = json.loads(init.stdout)
    assert owner("/var/lib/keyd/keys.json")[0] == "keyd"

    keyd_log = tmp_path / "keyd.log"
    keyd = subprocess.Popen(["unshare", "-n", "sh", "-c", as_unit("keyd.service")], stdout=subprocess.DEVNULL,
                            stderr=open(keyd_log, "w"), start_new_session=True)
    try:
        socket = Path("/run/keyd/keyd.sock")
        for _ in range(200):
            if socket.is_socket() or keyd.poll() is not None:
                break
            time.sleep(0.05)
        assert socket.is_socket(), keyd_log.read_text()
        assert owner(str(socket)) == ("keyd", "keyd-clients", 0o660)
        assert owner("/run/keyd") == ("keyd", "keyd-clients", 0o750)  # keyd hands its directory to the socket group
        # The agent's account may; an account outside keyd's socket group may not even connect.
        as_agent = ["setpriv", "--reuid=edge-agent", "--regid=edge-agent", "--init-groups"]
        assert json.loads(run([*as_agent, "/usr/bin/keyd", "identity", "--socket", str(socket), "--json"]).stdout)["did"] == identity["did"]
        denied = run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/keyd", "identity",
                      "--socket", str(socket)], check=False)
        assert denied.returncode != 0

        # The agent: the unit's ExecStartPre, then its ExecStart until SIGTERM, beside a real
        # DDS publisher (Cyclone DDS) in a network namespace with only loopback.
        Path("/etc/edge-agent/map.yaml").write_text(ONE_TOPIC_MAP)
        agent_log = tmp_path / "agent.log"
        pre = as_unit("edge-agent.service", unit_settings("edge-agent.service")["ExecStartPre"][0])
        script = (f"{pre} >/dev/null\n"
                  f"EDGE_AGENT_LOG=info {as_unit('edge-agent.service')} 2>{agent_log} &\n"
                  f"{wait_subscribed(agent_log, 1)}"
                  f"{publish_cmd('/chatter', 'string', 100, rate=200)}\n"
                  "sleep 1.5\npkill -TERM -x edge-agent\nwait\n")
        in_netns(script, timeout=120)
        assert owner("/var/lib/edge-agent") == ("edge-agent", "edge-agent", 0o750)
        chain = Path("/var/lib/edge-agent/out/chatter")
        manifest = json.loads((chain / "manifest.json").read_text())
        assert manifest["totalChunks"] >= 3, manifest
        # Written under the unit's UMask=0027: nothing the agent made is readable by others.
        assert stat.S_IMODE((chain / "chunk-0.bin").stat().st_mode) & 0o007 == 0
        # The reference buys the chain (grant with the owner's key, consume as the buyer).
        work = tmp_path / "ref"
        work.mkdir()
        buyer = ["--buyer-public-key", read("buyer.pub"), "--buyer-id", "buyer-1"]
        ref("-q", "stream", "grant", "--chunk-dir", str(chain), *buyer, "--owner-private-key-file", str(keys / "owner.key"),
            "--output-dir", str(work / "access"), cwd=work)
        ref("-q", "stream", "consume", "--chunk-dir", str(chain), "--data-dir", str(chain), "--access-dir", str(work / "access"),
            "--buyer-private-key-file", str(keys / "buyer.key"), "--buyer-id", "buyer-1", "--output", str(work / "bought.jsonl"), cwd=work)
        bought = [json.loads(line) for line in (work / "bought.jsonl").read_text().splitlines()]
        assert len(bought) == 100 and {p["did"] for p in bought} == {identity["did"]}
        run(["/usr/bin/peaqos", "-q", "stream", "verify", "--chunk-dir", str(chain), "--expect-did", identity["did"],
             "--expect-public-key", identity["chainPublicKeyHex"], "--recipient-key-file", str(keys / "owner.key")])
    finally:
        os.killpg(keyd.pid, 15)
        keyd.wait(timeout=20)
    assert "error" not in keyd_log.read_text().lower(), keyd_log.read_text()


@needs_dpkg
@needs_root
@pytest.mark.parametrize("backend", ["pkcs11", "software"])
def test_keyd_dev_up_from_the_package_alone(installed, tmp_path, backend):
    """A user's CI: the installed keyd and SoftHSM, an unprivileged account, nothing of ours."""
    home = private_dir("kdh")
    os.chown(home, 65534, 65534)
    as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", f"HOME={home}"]
    up = run([*as_user, "/usr/bin/keyd", "dev", "up", "--backend", backend])
    socket = up.stdout.strip().splitlines()[-1]
    directory = home / ".cache" / "keyd-dev"
    try:
        assert socket == str(directory / "run" / "keyd.sock")
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        if backend == "pkcs11":
            assert stat.S_IMODE((directory / "softhsm" / "pin").stat().st_mode) == 0o600
            status = json.loads(run([*as_user, "SOFTHSM2_CONF=" + str(directory / "softhsm" / "softhsm2.conf"), "/usr/bin/keyd",
                                     "status", "--config", str(directory / "keyd.toml")]).stdout)
            assert all(k["sensitive"] and not k["extractable"] for k in status["keys"]), status
        data = home / "data.bin"
        data.write_bytes(os.urandom(200_000))
        data.chmod(0o644)
        out = home / "pub"
        run([*as_user, "/usr/bin/peaqos", "-q", "stream", "publish", "--keyd", socket, "--input", str(data),
             "--output-dir", str(out), "--chunk-size", "65536"])
        keys = directory / "keys"
        identity = json.loads((directory / "identity.json").read_text())
        ref("-q", "stream", "grant", "--chunk-dir", str(out), "--buyer-public-key", (keys / "buyer.pub").read_text().strip(),
            "--buyer-id", "buyer-1", "--owner-private-key-file", str(keys / "owner.key"), "--output-dir", str(tmp_path / "access"),
            cwd=tmp_path)
        ref("-q", "stream", "consume", "--chunk-dir", str(out), "--data-dir", str(out), "--access-dir", str(tmp_path / "access"),
            "--buyer-private-key-file", str(keys / "buyer.key"), "--buyer-id", "buyer-1", "--output", str(tmp_path / "out.bin"),
            cwd=tmp_path)
        assert (tmp_path / "out.bin").read_bytes() == data.read_bytes()
        assert json.loads((out / "chunk-0.json").read_text())["signature"]["publicKeyHex"] == identity["chainPublicKeyHex"]
        # Again: the old one is replaced, not doubled.
        again = run([*as_user, "/usr/bin/keyd", "dev", "up", "--backend", backend])
        assert again.stdout.strip().splitlines()[-1] == socket
    finally:
        run([*as_user, "/usr/bin/keyd", "dev", "down"], check=False)
    assert not directory.exists()
    # A directory it did not make is left alone.
    (home / "mine").mkdir()
    (home / "mine" / "file").write_text("x")
    refused = run(["/usr/bin/keyd", "dev", "down", "--dir", str(home / "mine")], check=False)
    assert refused.returncode == 1 and "not made by `keyd dev up`" in refused.stderr
    assert (home / "mine" / "file").exists()
