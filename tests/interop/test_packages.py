"""Signed data packages, both ways, on generated messages, against the reference SDK."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from Crypto.Cipher import AES
from peaq_os_sdk.stream import build_signed_data_package, verify_data_package
from peaq_os_sdk.stream._internal.canonical_json import canonical_json_stringify
from peaq_os_sdk.stream.types import DataPackage, EncryptionContext, SigningContext
from peaq_os_sdk.stream.types.data_package import UnsignedDataPayload
from peaq_os_sdk.stream.types.field_rule import FieldRule, TopicFieldRules

from conftest import ours
from gen import generate, is_repr_tie, snake_rules

COUNT = 1500


def topic_rules(map_doc: dict) -> dict[str, TopicFieldRules]:
    out = {}
    for doc in map_doc["topics"]:
        rules = snake_rules(doc)
        out[doc["topic"]] = TopicFieldRules(
            topic=doc["topic"],
            rules=tuple(FieldRule(r["field_path"], r["action"], r["anonymize_strategy"]) for r in rules["rules"]),
            default_action=rules["default_action"],
        )
    return out


def decrypt_fields(value, key: bytes):
    """Replaces every encrypted wrapper by its decrypted plaintext (so random IVs compare)."""
    if isinstance(value, dict):
        if value.get("__encrypted") is True and set(value) == {"__encrypted", "ciphertext", "algorithm"}:
            assert value["algorithm"] == "AES-256-GCM"
            packed = base64.b64decode(value["ciphertext"])
            iv, body, tag = packed[:12], packed[12:-16], packed[-16:]
            plaintext = AES.new(key, AES.MODE_GCM, nonce=iv).decrypt_and_verify(body, tag)
            return {"__decrypted": plaintext.decode("utf-8")}
        return {k: decrypt_fields(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [decrypt_fields(v, key) for v in value]
    return value


def has_encrypted(value) -> bool:
    if isinstance(value, dict):
        return value.get("__encrypted") is True or any(has_encrypted(v) for v in value.values())
    if isinstance(value, list):
        return any(has_encrypted(v) for v in value)
    return False


def package_from_line(doc: dict) -> DataPackage:
    return DataPackage(
        did=doc["did"],
        timestamp=doc["timestamp"],
        schema_version=doc["schemaVersion"],
        sequence_number=doc["sequenceNumber"],
        payload=doc["payload"],
        signature=doc["signature"],
        signing_key_id=doc["signingKeyId"],
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, keys):
    """Generated messages signed by us (`peaqos stream sign`) and by the reference SDK."""
    work = tmp_path_factory.mktemp("packages")
    map_doc, messages = generate(seed=20261122, count=COUNT)
    (work / "map.json").write_text(json.dumps(map_doc))
    (work / "messages.jsonl").write_text("".join(json.dumps(m) + "\n" for m in messages))
    proc = ours(
        "stream", "sign",
        "--map", str(work / "map.json"),
        "--input", str(work / "messages.jsonl"),
        "--output", str(work / "packages.jsonl"),
        "--signing-key-file", keys.path("identity.key"),
        "--field-key-file", keys.path("field.key"),
        "--did", keys.did,
        "--key-id", keys.key_id,
        "--keep-going",
        check=False,
    )
    ours_lines = [json.loads(line) for line in (work / "packages.jsonl").read_text().splitlines()]
    assert len(ours_lines) == COUNT

    rules = topic_rules(map_doc)
    signing = SigningContext(private_key=keys.text("identity.key"), backend="software", did=keys.did, key_id=keys.key_id)
    encryption = EncryptionContext(encryption_key=keys.text("field.key"), algorithm="AES-256-GCM")
    theirs = []
    for m in messages:
        try:
            theirs.append(
                build_signed_data_package(
                    unsigned_payload=UnsignedDataPayload(topic=m["topic"], fields=m["fields"], captured_at=m["capturedAt"]),
                    topic_rules=rules.get(m["topic"], TopicFieldRules(topic=m["topic"], rules=())),
                    signing_ctx=signing,
                    encryption_ctx=encryption,
                    schema_version=m["schemaVersion"],
                    sequence_number=m["sequenceNumber"],
                )
            )
        except Exception as error:  # the reference refuses this message
            theirs.append(error)
    return work, messages, ours_lines, theirs, proc


def test_corpus_reaches_every_corner(corpus):
    work, messages, ours_lines, theirs, _ = corpus
    failures = sum(isinstance(t, Exception) for t in theirs)
    encrypted = sum(1 for o in ours_lines if "payload" in o and has_encrypted(o["payload"]))
    texts = (work / "packages.jsonl").read_text()
    assert 0 < failures < COUNT // 5, failures
    assert encrypted > COUNT // 10
    for marker in ['"__anonymized":true', '"strategy":"hash"', '"strategy":"generalize"', '"strategy":"redact"', "e+", "e-", "\\ud83d", "\\u2028", "18446744073709551616"]:
        assert marker in texts, marker


def test_same_messages_fail_with_a_named_line(corpus):
    _, _, ours_lines, theirs, proc = corpus
    assert proc.returncode == 1  # --keep-going: the run goes on, exit 1 at the end
    for number, (mine, their) in enumerate(zip(ours_lines, theirs), start=1):
        if isinstance(their, Exception):
            assert mine.get("line") == number and mine.get("error"), (number, their, mine)
        else:
            assert "error" not in mine, (number, mine)


def test_our_packages_verify_with_the_reference(corpus):
    _, _, ours_lines, _, _ = corpus
    for number, doc in enumerate(ours_lines, start=1):
        if "error" in doc:
            continue
        result = verify_data_package(package_from_line(doc))
        assert result.valid, (number, result.reason)


def test_field_rule_outputs_and_signatures_match_the_reference(corpus, keys):
    _, _, ours_lines, theirs, _ = corpus
    field_key = bytes.fromhex(keys.text("field.key"))
    identical_signatures = 0
    for number, (mine, their) in enumerate(zip(ours_lines, theirs), start=1):
        if isinstance(their, Exception):
            continue
        assert mine["did"] == their.did
        assert mine["timestamp"] == their.timestamp
        assert mine["schemaVersion"] == their.schema_version
        assert mine["sequenceNumber"] == their.sequence_number
        assert mine["signingKeyId"] == their.signing_key_id
        assert canonical_json_stringify(decrypt_fields(mine["payload"], field_key)) == canonical_json_stringify(
            decrypt_fields(dict(their.payload), field_key)
        ), number
        if not has_encrypted(mine["payload"]):
            # Deterministic (RFC 6979), low-s, v = 27/28: the very same bytes.
            assert mine["signature"] == their.signature, number
            identical_signatures += 1
    assert identical_signatures > COUNT // 3


def test_reference_packages_verify_with_ours(corpus, tmp_path):
    _, _, _, theirs, _ = corpus
    lines = []
    for p in theirs:
        if isinstance(p, Exception):
            continue
        lines.append(
            json.dumps(
                {
                    "did": p.did,
                    "timestamp": p.timestamp,
                    "schemaVersion": p.schema_version,
                    "sequenceNumber": p.sequence_number,
                    "payload": p.payload,
                    "signature": p.signature,
                    "signingKeyId": p.signing_key_id,
                }
            )
        )
    path = tmp_path / "reference.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ours("stream", "verify-packages", "--input", str(path))

    # One edited payload value and one edited sequence number: exit 1 naming both lines.
    tampered = list(lines)
    doc = json.loads(tampered[4])
    doc["sequenceNumber"] += 1
    tampered[4] = json.dumps(doc)
    doc = json.loads(tampered[9])
    doc["payload"]["injected"] = 1
    tampered[9] = json.dumps(doc)
    path.write_text("\n".join(tampered) + "\n")
    proc = ours("stream", "verify-packages", "--input", str(path), check=False)
    assert proc.returncode == 1
    assert "lines 5, 10" in proc.stderr, proc.stderr


def test_sign_stops_at_the_first_bad_line_without_keep_going(tmp_path, keys):
    (tmp_path / "map.yaml").write_text(
        "topics:\n  - topic: /gps\n    field_rules:\n      rules:\n        - field_path: lat\n          action: anonymize\n"
    )
    good = {"topic": "/gps", "fields": {"lon": 1.5}, "capturedAt": "t", "sequenceNumber": 1, "schemaVersion": "1"}
    bad = dict(good, fields={"lat": 2.5}, sequenceNumber=2)
    (tmp_path / "in.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n{not json\n")
    args = [
        "stream", "sign", "--map", str(tmp_path / "map.yaml"), "--input", str(tmp_path / "in.jsonl"),
        "--output", str(tmp_path / "out.jsonl"), "--signing-key-file", keys.path("identity.key"),
        "--field-key-file", keys.path("field.key"), "--did", keys.did, "--key-id", keys.key_id,
    ]
    proc = ours(*args, check=False)
    assert proc.returncode == 1
    assert "line 2" in proc.stderr and "anonymize_strategy" in proc.stderr, proc.stderr
    assert not (tmp_path / "out.jsonl").exists(), "no half-written output"
    proc = ours(*args, "--keep-going", check=False)
    assert proc.returncode == 1
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out[0]["sequenceNumber"] == 1 and out[1]["line"] == 2 and out[2]["line"] == 3
    assert "invalid JSON" in out[2]["error"]


def test_tie_floats_included_hashed_and_encrypted(tmp_path, keys):
    """Doubles exactly halfway between two shortest digit strings (a microsecond timestamp
    ending in .25 or .75): Python's repr takes the even digit. Ours must too, or the reference
    re-canonicalizes the payload to other bytes and rejects the signature."""
    ties = [1700000000123456.25, 1700000000123456.75, -233891771783429.62, 2.9802322387695312e-08]
    for x in ties[:2]:
        assert is_repr_tie(x), x
    (tmp_path / "map.yaml").write_text(
        "topics:\n  - topic: /clock\n    field_rules:\n      rules:\n"
        "        - field_path: hashed\n          action: anonymize\n          anonymize_strategy: hash\n"
        "        - field_path: secret\n          action: encrypt\n"
    )
    messages = [
        {"topic": "/clock", "fields": {"t": x, "hashed": x, "secret": {"at": x}, "list": [x, -x]},
         "capturedAt": "t", "sequenceNumber": i + 1, "schemaVersion": "1"}
        for i, x in enumerate(ties)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(m) + "\n" for m in messages))
    ours(
        "stream", "sign", "--map", str(tmp_path / "map.yaml"), "--input", str(tmp_path / "in.jsonl"),
        "--output", str(tmp_path / "out.jsonl"), "--signing-key-file", keys.path("identity.key"),
        "--field-key-file", keys.path("field.key"), "--did", keys.did, "--key-id", keys.key_id,
    )
    field_key = bytes.fromhex(keys.text("field.key"))
    text = (tmp_path / "out.jsonl").read_text()
    assert "1700000000123456.2," in text and "1700000000123456.8," in text, text
    for m, line in zip(messages, text.splitlines()):
        doc = json.loads(line)
        x = m["fields"]["t"]
        result = verify_data_package(package_from_line(doc))
        assert result.valid, (x, result.reason)
        # The hash is the reference's hash of the same value, the ciphertext opens to its text.
        assert doc["payload"]["hashed"]["value"] == "0x" + hashlib.sha256(canonical_json_stringify(x).encode()).hexdigest()
        assert decrypt_fields(doc["payload"]["secret"], field_key) == {"__decrypted": canonical_json_stringify({"at": x})}
        assert json.loads(canonical_json_stringify({"at": x}))["at"] == x
