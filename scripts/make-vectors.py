"""Makes the known-answer vectors in tests/vectors/ with the reference implementation
(peaq-os-sdk 0.12.1, peaq-os-cli 0.1.1), once; the Rust tests (stream/tests/vectors.rs)
read them, so byte compatibility is checked without Python too.

    scripts/setup && ~/.cache/peaqos/venv/bin/python scripts/make-vectors.py

Rewrites tests/vectors/. The keys in tests/vectors/keys/ are test keys, made for this and
used for nothing else.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "vectors"
REF_CLI = os.environ.get("PEAQOS_REF_CLI") or str(Path(sys.executable).with_name("peaqos"))

from peaq_os_sdk.stream import build_signed_data_package  # noqa: E402
from peaq_os_sdk.stream._internal.canonical_json import canonical_json_stringify  # noqa: E402
from peaq_os_sdk.stream.types import EncryptionContext, SigningContext  # noqa: E402
from peaq_os_sdk.stream.types.data_package import UnsignedDataPayload  # noqa: E402
from peaq_os_sdk.stream.types.field_rule import FieldRule, TopicFieldRules  # noqa: E402

# Fixed test keys (hex). Not secrets: vectors.
KEYS = {
    "identity": "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
    "chain": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "owner": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "operator": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "machine": "a8abababababababababababababababababababababababababababababab6b",
    "buyer": "c8a9d5a91091ad851c668b0736c1c9a02936c0d3ad62670858088047ba057475",
    "field": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
}


def canonical_cases() -> list:
    ties = [1700000000123456.25, 1700000000123456.75, -233891771783429.62, 2.9802322387695312e-08]
    return [
        {"b": [True, False, None], "a": {"d": "\b\f\n\r\t\"\\", "c": {}}},
        "é😀\x7f\u2028/",
        {"😀": 2, "～": 1},
        [2**64, 10**30, -(10**25), 0],
        [1e2, 0.0001, 1e-5, 1e-7, 1e15, 1e16, 12345678901234567.0, 1.23e-18, -0.0, 1, 1.0, 5e-324, 1.7976931348623157e308],
        ties,
        {"payload": {"x": ties[0], "nested": [ties[1], {"k": ties[2]}]}},
        [math.ldexp(1, e) for e in range(-60, 60, 7)],
    ]


def public_x25519(secret_hex: str) -> str:
    from nacl.public import PrivateKey  # the reference depends on PyNaCl
    return bytes(PrivateKey(bytes.fromhex(secret_hex)).public_key).hex()


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "keys").mkdir(parents=True)
    for name, hexkey in KEYS.items():
        (OUT / "keys" / f"{name}.key").write_text(hexkey + "\n")
    for name in ("owner", "operator", "machine", "buyer"):
        (OUT / "keys" / f"{name}.pub").write_text(public_x25519(KEYS[name]) + "\n")

    # 1. Canonical JSON: each value as Python's json.dumps writes it, and as canonical.
    cases = [{"json": json.dumps(v), "canonical": canonical_json_stringify(v)} for v in canonical_cases()]
    (OUT / "canonical.json").write_text(json.dumps(cases, indent=1) + "\n")

    # 2. Packages: field rules without encryption (deterministic, RFC 6979), so the very same
    #    bytes must come out of ours.
    from eth_account import Account
    did = "did:peaq:" + Account.from_key(bytes.fromhex(KEYS["identity"])).address.lower()
    (OUT / "keys" / "identity.did").write_text(did + "\n")
    rules = TopicFieldRules(topic="/gps", rules=(
        FieldRule("lat", "anonymize", "generalize"),
        FieldRule("name", "anonymize", "hash"),
        FieldRule("secret", "exclude", None),
        FieldRule("note", "anonymize", "redact"),
    ), default_action="include")
    map_doc = {"topics": [{"topic": "/gps", "field_rules": {"default_action": "include", "rules": [
        {"field_path": "lat", "action": "anonymize", "anonymize_strategy": "generalize"},
        {"field_path": "name", "action": "anonymize", "anonymize_strategy": "hash"},
        {"field_path": "secret", "action": "exclude"},
        {"field_path": "note", "action": "anonymize", "anonymize_strategy": "redact"},
    ]}}]}
    (OUT / "map.json").write_text(json.dumps(map_doc, indent=1) + "\n")
    signing = SigningContext(private_key=KEYS["identity"], backend="software", did=did, key_id=did + "#keys-1")
    encryption = EncryptionContext(encryption_key=KEYS["field"], algorithm="AES-256-GCM")
    messages, packages = [], []
    fields_list = [
        {"lat": 48.137154, "lon": 11.576124, "name": "rover-7", "secret": "x", "note": "hello"},
        {"lat": 0.042, "lon": -5, "name": "é😀", "t": 1700000000123456.25, "nested": {"a": [1, 2.5, None]}},
        {"lat": 37, "lon": 1e23, "name": "", "note": None, "big": 2**70},
    ]
    for i, fields in enumerate(fields_list):
        message = {"topic": "/gps", "fields": fields, "capturedAt": f"2026-12-01T10:00:0{i}Z",
                   "sequenceNumber": i + 1, "schemaVersion": "1"}
        p = build_signed_data_package(
            unsigned_payload=UnsignedDataPayload(topic="/gps", fields=fields, captured_at=message["capturedAt"]),
            topic_rules=rules, signing_ctx=signing, encryption_ctx=encryption,
            schema_version="1", sequence_number=i + 1)
        messages.append(message)
        packages.append({"did": p.did, "timestamp": p.timestamp, "schemaVersion": p.schema_version,
                         "sequenceNumber": p.sequence_number, "payload": p.payload,
                         "signature": p.signature, "signingKeyId": p.signing_key_id})
    (OUT / "messages.jsonl").write_text("".join(json.dumps(m) + "\n" for m in messages))
    (OUT / "packages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in packages))

    # 3. A chain published by the reference CLI, and a grant of it to the buyer.
    data = bytes((i * 31 + 7) % 256 for i in range(2500))
    (OUT / "chain-input.bin").write_bytes(data)
    pub = lambda n: (OUT / "keys" / f"{n}.pub").read_text().strip()
    subprocess.run([REF_CLI, "stream", "publish", "--input", str(OUT / "chain-input.bin"), "--output-dir", str(OUT / "chain"),
                    "--owner-public-key", pub("owner"), "--operator-public-key", pub("operator"),
                    "--machine-public-key", pub("machine"), "--signing-key-file", str(OUT / "keys" / "chain.key"),
                    "--machine-did", did, "--machine-key-id", did + "#keys-1", "--chunk-size", "1000"],
                   check=True, capture_output=True)
    subprocess.run([REF_CLI, "stream", "grant", "--chunk-dir", str(OUT / "chain"), "--buyer-public-key", pub("buyer"),
                    "--buyer-id", "buyer-1", "--owner-private-key-file", str(OUT / "keys" / "owner.key"),
                    "--output-dir", str(OUT / "access"), "--max-file-size", "1200"],
                   check=True, capture_output=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
