"""Selling and delivering against a real S3-compatible server (Garage on 127.0.0.1) and the
real reference CLI: `publish --s3` object for object as the reference's, chains in S3 read
by every command, `distribute` polling a confirmation endpoint and delivering a bundle that
the reference's `consume --download-url` decrypts, by S3 and by our own HTTP endpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import OURS, ROOT, consume_args, grant_args, ours, publish_args, ref, run
from s3server import GARAGE, Garage

pytestmark = pytest.mark.skipif(not Path(GARAGE).is_file(), reason="Garage not built (scripts/setup builds it)")

BUCKET = "chains"
ORDERS = "orders"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = Garage(tmp_path_factory.mktemp("garage"))
    server.start()
    server.setup([BUCKET, ORDERS])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "data.bin"
    path.write_bytes(os.urandom(700_000))
    return path


def strip_random(doc: dict) -> dict:
    """A chunk envelope without what differs between two publishes of the same input (the
    fresh chunk key, its wraps, the nonce and what hashes them)."""
    doc = json.loads(json.dumps(doc))
    for key in ("chunkId", "previousChunkId", "encryptedDataHash"):
        doc[key] = bool(doc.get(key))
    enc = doc["encryption"]
    enc["nonce"] = enc["keyCommitment"] = True
    for r in enc["keyRecipients"]:
        r["wrappedKeyHex"] = True
    doc["signature"]["value"] = True
    return doc


def test_publish_s3_names_objects_as_the_reference_does(s3, keys, source, tmp_path):
    env = s3.env()
    ours_out = ours("-q", *publish_args(keys, source, tmp_path / "ours", 100_000), "--s3", f"s3://{BUCKET}/ours/run",
                    "--json", env=env)
    ref_out = ref("-q", *publish_args(keys, source, tmp_path / "ref", 100_000), "--s3", f"s3://{BUCKET}/ref/run",
                  "--json", env=env, cwd=tmp_path)
    ours_json, ref_json = json.loads(ours_out.stdout), json.loads(ref_out.stdout)
    assert list(ours_json) == list(ref_json)
    assert ours_json["s3Prefix"] == "ours/run/" and ref_json["s3Prefix"] == "ref/run/"
    assert [c["storageRef"].replace("/ours/", "/x/") for c in ours_json["chunks"]] == \
           [c["storageRef"].replace("/ref/", "/x/") for c in ref_json["chunks"]]

    ours_objects = s3.objects(BUCKET, "ours/run/")
    ref_objects = s3.objects(BUCKET, "ref/run/")
    names = sorted(k.removeprefix("ours/run/") for k in ours_objects)
    assert names == sorted(k.removeprefix("ref/run/") for k in ref_objects)
    assert len(names) == 2 * 7 + 1
    for name in names:
        ours_body, ref_body = ours_objects["ours/run/" + name], ref_objects["ref/run/" + name]
        if name == "manifest.json":
            a, b = json.loads(ours_body), json.loads(ref_body)
            assert list(a) == list(b) == ["schemaVersion", "sourceHash", "totalChunks", "chunkSize", "machineDid",
                                          "createdAt", "s3Bucket", "s3Prefix"]
            assert a["sourceHash"] == b["sourceHash"] and a["s3Bucket"] == b["s3Bucket"] == BUCKET
        elif name.endswith(".json"):
            a, b = json.loads(ours_body), json.loads(ref_body)
            assert a["storageRef"] == f"s3://{BUCKET}/ours/run/{name[:-5]}.bin"
            assert b["storageRef"] == f"s3://{BUCKET}/ref/run/{name[:-5]}.bin"
            a["storageRef"] = b["storageRef"] = None
            assert strip_random(a) == strip_random(b)
            # The layout too: json.dumps(indent=2) + "\n", byte for byte in shape.
            assert ours_body.decode().count("\n") == ref_body.decode().count("\n")
        else:
            assert len(ours_body) == len(ref_body)
        # What is in the bucket is what is in the local directory.
        assert (tmp_path / "ours" / name).read_bytes() == ours_body


def test_chains_in_s3_work_wherever_a_chunk_dir_does(s3, keys, source, tmp_path):
    env = s3.env()
    ref("-q", *publish_args(keys, source, tmp_path / "ref", 64_000), "--s3", f"s3://{BUCKET}/both/ref", env=env,
        cwd=tmp_path)
    ours("-q", *publish_args(keys, source, tmp_path / "ours", 64_000), "--s3", f"s3://{BUCKET}/both/ours", env=env)
    for prefix in ("both/ref", "both/ours"):
        url = f"s3://{BUCKET}/{prefix}"
        report = json.loads(ours("stream", "verify", "--chunk-dir", url, "--recipient-key-file", keys.path("owner.key"),
                                 "--expect-public-key", keys.text("chain.pub"), "--json", env=env).stdout)
        assert report["valid"] and report["decrypted"]
        access = tmp_path / f"access-{prefix.replace('/', '-')}"
        ours("-q", *grant_args(keys, url, access), env=env)
        out = tmp_path / f"out-{prefix.replace('/', '-')}"
        ours("-q", "stream", "consume", "--chunk-dir", url, "--data-dir", url, "--access-dir", str(access),
             "--buyer-private-key-file", keys.path("buyer.key"), "--buyer-id", "buyer-1", "--output", str(out), env=env)
        assert out.read_bytes() == source.read_bytes()
        # The reference reads the same chain brought down from S3.
        local = tmp_path / f"dl-{prefix.replace('/', '-')}"
        local.mkdir()
        for key, body in s3.objects(BUCKET, prefix + "/").items():
            (local / key.rsplit("/", 1)[1]).write_bytes(body)
        ref("-q", *consume_args(keys, local, access, tmp_path / "ref-out"), cwd=tmp_path)
        assert (tmp_path / "ref-out").read_bytes() == source.read_bytes()


def test_publish_s3_errors_name_what_is_wrong(s3, keys, source, tmp_path):
    bad = ours(*publish_args(keys, source, tmp_path / "o"), "--s3", "bucket/x", check=False)
    assert bad.returncode == 2 and "--s3" in bad.stderr
    half = ours(*publish_args(keys, source, tmp_path / "o"), "--s3", f"s3://{BUCKET}/x", check=False,
                env={**s3.env(), "PEAQOS_S3_SECRET_ACCESS_KEY": None})
    assert half.returncode == 2 and "PEAQOS_S3_SECRET_ACCESS_KEY is required" in half.stderr
    wrong = ours(*publish_args(keys, source, tmp_path / "o"), "--s3", f"s3://{BUCKET}/x", check=False,
                 env={**s3.env(), "PEAQOS_S3_SECRET_ACCESS_KEY": "00" * 32})
    assert wrong.returncode != 0 and "00" * 32 not in wrong.stderr + wrong.stdout


class Confirmations:
    """A payment confirmation endpoint that answers from a script, one answer per GET."""

    def __init__(self, answers: list[tuple[int, object]]):
        self.answers = list(answers)
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                status, body = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/purchases/o-1/status"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def confirmed(keys, order="o-1", **extra) -> dict:
    doc = {"status": "confirmed", "order_id": order, "buyer_id": "buyer-1",
           "buyer_public_key_hex": keys.text("buyer.pub"), "tx_hash": "0x" + "ab" * 32,
           "confirmed_at": "2026-12-01T00:00:00Z"}
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


def distribute_args(keys, chunk_dir, endpoint, *more) -> list[str]:
    return ["stream", "distribute", "--chunk-dir", str(chunk_dir), "--owner-private-key-file", keys.path("owner.key"),
            "--confirmation-url", endpoint.url, "--order-id", "o-1", "--poll-interval", "1", "--timeout", "20", *more]


@pytest.fixture(scope="module")
def chain(keys, source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chain") / "pub"
    ours("-q", *publish_args(keys, source, out, 100_000))
    return out


def buyer_consumes(tool, keys, url, tmp_path, name) -> Path:
    out = tmp_path / f"{name}.bin"
    tool("-q", "stream", "consume", "--download-url", url, "--buyer-private-key-file", keys.path("buyer.key"),
         "--buyer-id", "buyer-1", "--output", str(out), "--work-dir", str(tmp_path / f"work-{name}"), cwd=tmp_path)
    return out


def test_distribute_s3_after_pending_then_confirmed(s3, keys, chain, source, tmp_path):
    endpoint = Confirmations([(200, {"status": "pending", "order_id": "o-1"}), (503, {"error": "busy"}),
                              (200, {"status": "pending", "order_id": "o-1"}), (200, confirmed(keys))])
    try:
        result = json.loads(ours("-q", *distribute_args(keys, chain, endpoint, "--delivery", "s3", "--s3",
                                                        f"s3://{ORDERS}/shop", "--json"), env=s3.env()).stdout)
    finally:
        endpoint.close()
    assert endpoint.requests == ["/purchases/o-1/status"] * 4
    assert list(result) == ["order_id", "buyer_id", "tx_hash", "chunks_distributed", "access_files_count", "delivery"]
    assert result["chunks_distributed"] == 7 and result["delivery"]["channel"] == "s3"
    url = result["delivery"]["download_url"]
    assert buyer_consumes(ref, keys, url, tmp_path, "ref").read_bytes() == source.read_bytes()
    assert buyer_consumes(ours, keys, url, tmp_path, "ours").read_bytes() == source.read_bytes()
    assert list(s3.objects(ORDERS, "shop/orders/")) == ["shop/orders/o-1.zip"]


def test_distribute_http_serves_the_reference_buyer(keys, chain, source, tmp_path):
    endpoint = Confirmations([(200, confirmed(keys))])
    result_file = tmp_path / "result.json"
    with open(result_file, "w") as out:
        seller = subprocess.Popen([OURS, *distribute_args(keys, chain, endpoint, "--delivery", "http",
                                                          "--listen", "127.0.0.1:0", "--json")],
                                  stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not result_file.read_text().strip().endswith("}"):
            time.sleep(0.1)
        result = json.loads(result_file.read_text())
        url = result["delivery"]["download_url"]
        assert result["delivery"]["channel"] == "http" and "token=" in url
        # A wrong token and no token are refused.
        for bad in (re.sub(r"token=[0-9a-f]+", "token=" + "0" * 64, url), url.split("?")[0]):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(bad.replace("?", "/manifest.json?", 1) if "?" in bad else bad + "/manifest.json")
            assert refused.value.code == 403
        assert buyer_consumes(ref, keys, url, tmp_path, "ref").read_bytes() == source.read_bytes()
        # Once every file has been sent the seller stops, and says so.
        assert seller.wait(timeout=20) == 0
        log = seller.stderr.read()
        assert "order o-1: delivered" in log
        # The log line per order never holds the link (a bearer credential).
        assert url.split("token=")[1] not in log
    finally:
        endpoint.close()
        if seller.poll() is None:
            seller.kill()


def test_distribute_http_link_expires(keys, chain, tmp_path):
    endpoint = Confirmations([(200, confirmed(keys))])
    result_file = tmp_path / "result.json"
    with open(result_file, "w") as out:
        seller = subprocess.Popen([OURS, "-q", *distribute_args(keys, chain, endpoint, "--delivery", "http",
                                                                "--listen", "127.0.0.1:0", "--presign-expiry", "2",
                                                                "--json")],
                                  stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        assert seller.wait(timeout=20) == 1
        assert "expired before the buyer had every file" in seller.stderr.read()
        url = json.loads(result_file.read_text())["delivery"]["download_url"]
        assert "token=" in url
    finally:
        endpoint.close()


@pytest.mark.parametrize("answers,code,message", [
    ([(404, {"error": "no such order"})], 1, "HTTP 404"),
    ([(200, b"<html>not json</html>")], 2, "not JSON"),
    ([(200, b"{\"status\": \"" + b"x" * (1 << 20) + b"\"}")], 2, "larger than 64 KiB"),
    ([(200, {"status": "confirmed", "order_id": "o-1", "buyer_id": "buyer-1", "tx_hash": "0x1"})], 1,
     "buyer_public_key_hex"),
    ([(200, {"status": "pending", "order_id": "o-1"}), (200, {"status": "failed", "order_id": "o-1",
                                                              "reason": "payment reverted"})], 1, "payment reverted"),
    ([(200, {"status": "confirmed", "order_id": "o-2", "buyer_id": "b", "buyer_public_key_hex": "aa",
             "tx_hash": "0x1"})], 2, "timed out after 3s"),
    ([(500, {"error": "down"})], 2, "timed out after 3s"),
])
def test_distribute_polling_contract(keys, chain, tmp_path, answers, code, message):
    endpoint = Confirmations(answers)
    try:
        started = time.time()
        proc = ours("-q", "stream", "distribute", "--chunk-dir", str(chain), "--owner-private-key-file",
                    keys.path("owner.key"), "--confirmation-url", endpoint.url, "--order-id", "o-1",
                    "--poll-interval", "1", "--timeout", "3", "--delivery", "http", "--listen", "127.0.0.1:0",
                    check=False, timeout=30)
    finally:
        endpoint.close()
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    if message == "payment reverted":
        # "failed" ends the wait at once, not at the timeout.
        assert time.time() - started < 3 and len(endpoint.requests) == 2


def test_distribute_checks_before_waiting(keys, chain, tmp_path):
    for args, message in [
        (["--delivery", "s3"], "--s3 is required"),
        (["--delivery", "s3", "--s3", "bucket"], "--s3"),
        (["--delivery", "http"], "--listen is required"),
        (["--delivery", "http", "--listen", "127.0.0.1:0", "--order-id", "../x"], "--order-id"),
    ]:
        proc = ours("stream", "distribute", "--chunk-dir", str(chain), "--owner-private-key-file",
                    keys.path("owner.key"), "--confirmation-url", "http://127.0.0.1:9/never", "--order-id", "o-1",
                    *args, check=False, timeout=10)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_distribute_grants_through_keyd_on_softhsm(s3, source, tmp_path):
    directory = Path(subprocess.run(["mktemp", "-d", "/tmp/kdsaleXXXX"], capture_output=True, text=True,
                                    check=True).stdout.strip())
    keyd_dev = str(ROOT / "scripts" / "keyd-dev")
    start = subprocess.run([keyd_dev, "start", "--backend", "pkcs11", "--dir", str(directory)], capture_output=True,
                           text=True)
    assert start.returncode == 0, start.stderr
    try:
        socket = start.stdout.strip().splitlines()[-1]
        pub = tmp_path / "pub"
        ours("-q", "stream", "publish", "--keyd", socket, "--input", str(source), "--output-dir", str(pub),
             "--chunk-size", "100000", "--s3", f"s3://{BUCKET}/keyd", env=s3.env())
        run([OURS, "-q", "keys", "generate", "--out", str(tmp_path / "buyer")])
        buyer_pub = (tmp_path / "buyer" / "buyer.pub").read_text().strip()
        doc = {"status": "confirmed", "order_id": "o-1", "buyer_id": "buyer-1", "buyer_public_key_hex": buyer_pub,
               "tx_hash": "0x" + "cd" * 32}
        endpoint = Confirmations([(200, doc)])
        try:
            # The chain read from S3, the grant made by keyd with the machine's key.
            result = json.loads(ours("-q", "stream", "distribute", "--chunk-dir", f"s3://{BUCKET}/keyd", "--keyd",
                                     socket, "--confirmation-url", endpoint.url, "--order-id", "o-1",
                                     "--poll-interval", "1", "--timeout", "20", "--delivery", "s3", "--s3",
                                     f"s3://{ORDERS}/keyd", "--json", env=s3.env()).stdout)
        finally:
            endpoint.close()
        out = tmp_path / "bought.bin"
        ref("-q", "stream", "consume", "--download-url", result["delivery"]["download_url"],
            "--buyer-private-key-file", str(tmp_path / "buyer" / "buyer.key"), "--buyer-id", "buyer-1",
            "--output", str(out), cwd=tmp_path)
        assert out.read_bytes() == source.read_bytes()
    finally:
        subprocess.run([keyd_dev, "stop", "--dir", str(directory)], check=False)


class StaticFiles:
    """A plain web server over a directory (what a seller's CDN or bucket would be), recording
    every path asked for; a missing file is a 404."""

    def __init__(self, root: Path):
        import functools
        from http.server import SimpleHTTPRequestHandler

        self.requests: list[str] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def reference_bundle(keys, source, root: Path) -> list[str]:
    """A chain published and granted by the reference's own CLI, flattened into `root` as a
    bundle: the chain's files and the access files. Returns the file names."""
    pub, access = root.parent / "ref-pub", root.parent / "ref-access"
    ref("-q", *publish_args(keys, source, pub, 100_000), cwd=root.parent)
    ref("-q", *grant_args(keys, pub, access), cwd=root.parent)
    root.mkdir()
    names = []
    for path in sorted([*pub.iterdir(), *access.iterdir()]):
        (root / path.name).write_bytes(path.read_bytes())
        names.append(path.name)
    return names


def test_consume_reads_bundles_made_by_the_reference_tools(keys, source, tmp_path):
    import zipfile

    site = tmp_path / "site"
    site.mkdir()
    names = reference_bundle(keys, source, site / "order-a")
    listing = json.loads((site / "order-a" / "manifest.json").read_text())
    listing["files"] = names
    (site / "order-a" / "manifest.json").write_text(json.dumps(listing))
    # The ZIP form, members under a folder (consume takes flat names wherever they sit).
    with zipfile.ZipFile(site / "order-b.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name in names:
            z.write(site / "order-a" / name, f"bundle/{name}")
    server = StaticFiles(site)
    try:
        for url in (f"{server.url}/order-a?sig=abc", f"{server.url}/order-b.zip"):
            for tool, who in ((ours, "ours"), (ref, "ref")):
                out = tmp_path / f"{who}-{url.rsplit('/', 1)[1].split('?')[0]}.bin"
                tool("-q", "stream", "consume", "--download-url", url, "--buyer-private-key-file",
                     keys.path("buyer.key"), "--buyer-id", "buyer-1", "--output", str(out), "--work-dir",
                     str(tmp_path / f"work-{who}"), cwd=tmp_path)
                assert out.read_bytes() == source.read_bytes(), (who, url)
    finally:
        server.close()
    # The query went along on every fetch of the listed form.
    listed = [r for r in server.requests if r.startswith("/order-a/")]
    assert listed and all(r.endswith("?sig=abc") for r in listed)
    # Nothing is left behind in the work directory after a successful run.
    work = tmp_path / "work-ours"
    assert not work.exists() or not list(work.iterdir())


def test_consume_refuses_unsafe_bundles(keys, source, tmp_path):
    import zipfile

    site = tmp_path / "site"
    site.mkdir()
    names = reference_bundle(keys, source, site / "good")
    bad_listing = site / "listing"
    bad_listing.mkdir()
    (bad_listing / "manifest.json").write_text(json.dumps({"files": ["../escape.json"]}))
    with zipfile.ZipFile(site / "escape.zip", "w") as z:
        z.writestr("../../evil.json", "{}")
    with zipfile.ZipFile(site / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name in names:
            z.write(site / "good" / name, name)
        z.writestr("chunk-99.bin", b"\0" * (600 * 1024 * 1024))
    server = StaticFiles(site)
    try:
        for path, message in [("listing", "unsafe file name"), ("escape.zip", "escapes the work directory"),
                              ("bomb.zip", "per-file limit"), ("missing", "HTTP 404")]:
            output = tmp_path / "out.bin"
            proc = ours("stream", "consume", "--download-url", f"{server.url}/{path}", "--buyer-private-key-file",
                        keys.path("buyer.key"), "--buyer-id", "buyer-1", "--output", str(output), check=False,
                        cwd=tmp_path)
            assert proc.returncode == 2 and message in proc.stderr, (path, proc.stderr)
            assert not output.exists(), path
    finally:
        server.close()


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=peaqos test CA", "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                       "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days",
            "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def test_distribute_http_over_tls_streams_from_an_s3_chain(s3, keys, source, tmp_path):
    ours("-q", *publish_args(keys, source, tmp_path / "pub", 100_000), "--s3", f"s3://{BUCKET}/tls/run",
         env=s3.env())
    ca, cert, key = make_tls(tmp_path)
    endpoint = Confirmations([(200, confirmed(keys))])
    result_file = tmp_path / "result.json"
    with open(result_file, "w") as out:
        seller = subprocess.Popen([OURS, *distribute_args(keys, f"s3://{BUCKET}/tls/run", endpoint, "--delivery",
                                                          "http", "--listen", "127.0.0.1:0", "--tls-cert", str(cert),
                                                          "--tls-key", str(key), "--serve-until", "expiry",
                                                          "--presign-expiry", "30", "--json")],
                                  stdout=out, stderr=subprocess.PIPE, text=True, env={**os.environ, **s3.env()})
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not result_file.read_text().strip().endswith("}"):
            time.sleep(0.1)
        url = json.loads(result_file.read_text())["delivery"]["download_url"]
        assert url.startswith("https://127.0.0.1:")
        trust = {"SSL_CERT_FILE": str(ca)}
        # Both buyers, each trusting the seller's CA; the .bin files stream from S3.
        for tool, who in ((ref, "ref"), (ours, "ours")):
            got = tmp_path / f"{who}.bin"
            tool("-q", "stream", "consume", "--download-url", url, "--buyer-private-key-file",
                 keys.path("buyer.key"), "--buyer-id", "buyer-1", "--output", str(got), env=trust, cwd=tmp_path)
            assert got.read_bytes() == source.read_bytes(), who
        # A buyer that does not trust the certificate gets nothing.
        untrusted = ours("stream", "consume", "--download-url", url, "--buyer-private-key-file",
                         keys.path("buyer.key"), "--buyer-id", "buyer-1", "--output", str(tmp_path / "x.bin"),
                         check=False, cwd=tmp_path)
        assert untrusted.returncode == 2 and not (tmp_path / "x.bin").exists()
        # No ciphertext was copied for this buyer: the seller read them from S3 as it served.
        assert not list(tmp_path.glob("**/peaqos-bundle-*"))
    finally:
        endpoint.close()
        seller.kill()
        seller.wait()


def test_large_objects_go_up_in_parts(s3, keys, tmp_path):
    """Chunks and an order's ZIP above 8 MiB take the multipart path; what lands is what was
    written, and the reference consumes the delivered order."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    ours("-q", *publish_args(keys, big, tmp_path / "pub", 12 * 1024 * 1024), "--s3", f"s3://{BUCKET}/big/run",
         env=s3.env())
    objects = s3.objects(BUCKET, "big/run/")
    assert objects["big/run/chunk-0.bin"] == (tmp_path / "pub" / "chunk-0.bin").read_bytes()
    assert len(objects["big/run/chunk-0.bin"]) > 12 * 1024 * 1024
    endpoint = Confirmations([(200, confirmed(keys))])
    try:
        result = json.loads(ours("-q", *distribute_args(keys, f"s3://{BUCKET}/big/run", endpoint, "--delivery", "s3",
                                                        "--s3", f"s3://{ORDERS}/big", "--json"), env=s3.env()).stdout)
    finally:
        endpoint.close()
    assert result["delivery"]["bytes"] > 20 * 1024 * 1024
    assert buyer_consumes(ref, keys, result["delivery"]["download_url"], tmp_path, "ref").read_bytes() == \
        big.read_bytes()


def test_datasets_of_a_chain_in_s3(s3, keys, source, tmp_path):
    """A chain published by the reference into S3 is listed, verified, proven and sampled
    from s3:// without a local copy; the root is the one of the same chain read locally."""
    env = s3.env()
    where = f"s3://{BUCKET}/datasets/ref"
    ref("-q", *publish_args(keys, source, tmp_path / "ref", 50_000), "--s3", where, env=env, cwd=tmp_path)
    signer = ["--signing-key-file", keys.path("identity.key"), "--did", keys.did]
    ours("-q", "dataset", "build", "--chunk-dir", where, "--topic", "file", "--from-index", "2", "--to-index", "9",
         *signer, "--output", str(tmp_path / "ds.json"), env=env)
    ours("-q", "dataset", "build", "--chunk-dir", str(tmp_path / "ref"), "--topic", "file", "--from-index", "2",
         "--to-index", "9", *signer, "--output", str(tmp_path / "local.json"))
    doc = json.loads((tmp_path / "ds.json").read_text())
    assert doc["merkleRoot"] == json.loads((tmp_path / "local.json").read_text())["merkleRoot"]
    assert "timeRange" not in doc  # a file's bytes, not packages
    for extra in ([], ["--envelopes-only"]):
        ours("-q", "dataset", "verify", "--dataset", str(tmp_path / "ds.json"), "--chunk-dir", where, *extra, env=env)
    ours("-q", "dataset", "prove", "--dataset", str(tmp_path / "ds.json"), "--chunk-dir", where, "--index", "4",
         "--output", str(tmp_path / "proof.json"), env=env)
    ours("-q", "dataset", "verify-proof", "--dataset", str(tmp_path / "ds.json"), "--proof", str(tmp_path / "proof.json"),
         "--chunk", str(tmp_path / "ref" / "chunk-4.json"))
    ours("-q", "dataset", "sample", "--dataset", str(tmp_path / "ds.json"), "--chunk-dir", where, "--index", "4",
         "--buyer-public-key", keys.text("buyer.pub"), "--buyer-id", "b-1", "--owner-private-key-file",
         keys.path("owner.key"), "--output-dir", str(tmp_path / "sample"), env=env)
    ours("-q", "dataset", "verify-sample", "--sample-dir", str(tmp_path / "sample"), "--buyer-key-file",
         keys.path("buyer.key"), "--buyer-id", "b-1", "--output", str(tmp_path / "sample.bin"))
    assert (tmp_path / "sample.bin").read_bytes() == source.read_bytes()[4 * 50_000:5 * 50_000]
