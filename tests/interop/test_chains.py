"""Chunk chains both ways with the reference CLI, and tampered chains our verify rejects."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import consume_args, grant_args, ours, publish_args, ref


def data(size: int, seed: int = 7) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size] if seed == 0 else os.urandom(size)


@pytest.mark.parametrize("size,chunk_size", [(0, None), (1, None), (262144, None), (262145 + 1000, None), (10_000, 1000), (4097, 4096)])
def test_our_publish_reference_grant_and_consume(tmp_path, keys, size, chunk_size):
    source = tmp_path / "in.bin"
    source.write_bytes(data(size))
    pub = tmp_path / "pub"
    ours("-q", *publish_args(keys, source, pub, chunk_size))
    ref("-q", *grant_args(keys, pub, tmp_path / "access"), cwd=tmp_path)
    ref("-q", *consume_args(keys, pub, tmp_path / "access", tmp_path / "out.bin"), cwd=tmp_path)
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    manifest = json.loads((pub / "manifest.json").read_text())
    expected_chunks = max(1, -(-size // (chunk_size or 262144)))
    assert manifest["totalChunks"] == expected_chunks
    if size == 0:
        assert (pub / "chunk-0.bin").stat().st_size == 16  # only the tag


def test_reference_publish_our_verify_grant_consume(tmp_path, keys):
    source = tmp_path / "in.bin"
    source.write_bytes(data(9_500))
    pub = tmp_path / "pub"
    ref("-q", *publish_args(keys, source, pub, 1000), cwd=tmp_path)
    ours(
        "stream", "verify", "--chunk-dir", str(pub),
        "--expect-did", keys.did, "--expect-public-key", keys.text("chain.pub"),
        "--recipient-key-file", keys.path("machine.key"),
    )
    for role in ("owner", "operator"):
        ours("stream", "verify", "--chunk-dir", str(pub), "--recipient-key-file", keys.path(f"{role}.key"))
    ours("-q", *grant_args(keys, pub, tmp_path / "access"))
    ours("-q", *consume_args(keys, pub, tmp_path / "access", tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    # Mixed: the reference's chain, our grant, the reference's consume.
    ref("-q", *consume_args(keys, pub, tmp_path / "access", tmp_path / "out2.bin"), cwd=tmp_path)
    assert (tmp_path / "out2.bin").read_bytes() == source.read_bytes()


def test_documents_are_laid_out_like_the_reference(tmp_path, keys):
    source = tmp_path / "in.bin"
    source.write_bytes(data(2500))
    ours("-q", *publish_args(keys, source, tmp_path / "ours", 1000))
    ref("-q", *publish_args(keys, source, tmp_path / "theirs", 1000), cwd=tmp_path)
    names = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "theirs").iterdir())

    def shape(value):
        if isinstance(value, dict):
            return [(k, shape(v)) for k, v in value.items()]
        if isinstance(value, list):
            return [shape(v) for v in value]
        return type(value).__name__

    for name in names:
        if not name.endswith(".json"):
            continue
        mine = (tmp_path / "ours" / name).read_text()
        theirs = (tmp_path / "theirs" / name).read_text()
        # Same keys in the same order, same types, and the reference's own formatting.
        assert shape(json.loads(mine)) == shape(json.loads(theirs)), name
        assert mine == json.dumps(json.loads(mine), indent=2) + "\n", name
        if name != "manifest.json":
            a, b = json.loads(mine), json.loads(theirs)
            assert a["plaintextHash"] == b["plaintextHash"] and a["index"] == b["index"]
            assert a["signature"]["publicKeyHex"] == b["signature"]["publicKeyHex"]
            assert [r["publicKeyHex"] for r in a["encryption"]["keyRecipients"]] == [
                r["publicKeyHex"] for r in b["encryption"]["keyRecipients"]
            ]
    assert json.loads((tmp_path / "ours" / "manifest.json").read_text())["sourceHash"] == json.loads(
        (tmp_path / "theirs" / "manifest.json").read_text()
    )["sourceHash"]


@pytest.mark.parametrize("max_size", [None, 2000, 1200, 1])
def test_access_files_split_like_the_reference(tmp_path, keys, max_size):
    source = tmp_path / "in.bin"
    source.write_bytes(data(30_000))
    pub = tmp_path / "pub"
    ref("-q", *publish_args(keys, source, pub, 1000), cwd=tmp_path)
    ours("-q", *grant_args(keys, pub, tmp_path / "ours", max_size=max_size))
    ref("-q", *grant_args(keys, pub, tmp_path / "theirs", max_size=max_size), cwd=tmp_path)
    mine = sorted((tmp_path / "ours").iterdir())
    theirs = sorted((tmp_path / "theirs").iterdir())
    assert [p.name for p in mine] == [p.name for p in theirs]
    for a, b in zip(mine, theirs):
        # Wrapped keys are random; everything else, and so the sizes, must be equal.
        assert a.stat().st_size == b.stat().st_size, a.name
        da, db = json.loads(a.read_text()), json.loads(b.read_text())
        for entry in da["entries"] + db["entries"]:
            entry["buyer"]["wrappedKeyHex"] = "…"
        assert da == db
        # The reference's compact formatting, byte for byte.
        assert a.read_text() == json.dumps(json.loads(a.read_text()), separators=(",", ":"))


# ---- tampering -----------------------------------------------------------------------

@pytest.fixture()
def chain(tmp_path, keys):
    """A 5-chunk chain published by the reference."""
    source = tmp_path / "in.bin"
    source.write_bytes(data(4_500))
    pub = tmp_path / "pub"
    ref("-q", *publish_args(keys, source, pub, 1000), cwd=tmp_path)
    return pub


def edit(pub: Path, index: int, change) -> None:
    path = pub / f"chunk-{index}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def flip_hex(text: str) -> str:
    last = text[-1]
    return text[:-1] + ("0" if last != "0" else "1")


def verify(pub: Path, keys, *extra: str):
    return ours("stream", "verify", "--chunk-dir", str(pub), "--expect-public-key", keys.text("chain.pub"),
                "--recipient-key-file", keys.path("machine.key"), *extra, check=False)


def assert_rejected(proc, check: str, index: int | None):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    assert f"[{check}]" in line, line
    if index is not None:
        assert f"chunk {index}" in line, line


def test_untampered_chain_verifies(chain, keys):
    assert verify(chain, keys).returncode == 0


def test_bit_flip_in_ciphertext(chain, keys):
    path = chain / "chunk-2.bin"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0x01
    path.write_bytes(bytes(raw))
    assert_rejected(verify(chain, keys), "encryptedDataHash", 2)


def test_swapped_chunk_files(chain, keys):
    for ext in ("json", "bin"):
        a, b = chain / f"chunk-1.{ext}", chain / f"chunk-2.{ext}"
        tmp = chain / "swap"
        a.rename(tmp), b.rename(a), tmp.rename(b)
    assert_rejected(verify(chain, keys), "encryptedDataHash", 1)


def test_swapped_chunks_with_renumbered_indices(chain, keys):
    edit(chain, 1, lambda d: d.update(index=2))
    edit(chain, 2, lambda d: d.update(index=1))
    for ext in ("bin",):
        a, b = chain / f"chunk-1.{ext}", chain / f"chunk-2.{ext}"
        tmp = chain / "swap"
        a.rename(tmp), b.rename(a), tmp.rename(b)
    assert_rejected(verify(chain, keys), "previousChunkId", 1)


def test_dropped_middle_chunk(chain, keys):
    (chain / "chunk-2.json").unlink()
    (chain / "chunk-2.bin").unlink()
    assert_rejected(verify(chain, keys), "index", 2)


def test_dropped_last_chunk(chain, keys):
    (chain / "chunk-4.json").unlink()
    (chain / "chunk-4.bin").unlink()
    # The reference's own check passes this chain: only the manifest tells.
    assert_rejected(verify(chain, keys), "totalChunks", 4)
    proc = ours("stream", "verify", "--chunk-dir", str(chain), check=False)
    assert_rejected(proc, "totalChunks", 4)


def test_edited_fields(chain, keys, tmp_path):
    cases = [
        (1, lambda d: d.update(encryptedDataHash=flip_hex(d["encryptedDataHash"])), "encryptedDataHash"),
        (1, lambda d: d.update(chunkId=flip_hex(d["chunkId"])), "chunkId"),
        (3, lambda d: d.update(previousChunkId=flip_hex(d["previousChunkId"])), "previousChunkId"),
        (2, lambda d: d["encryption"].update(nonce=flip_hex(d["encryption"]["nonce"])), "decrypt"),
        (2, lambda d: d["encryption"].update(keyCommitment=flip_hex(d["encryption"]["keyCommitment"])), "keyCommitment"),
        (2, lambda d: d["encryption"]["keyRecipients"][2].update(wrappedKeyHex=flip_hex(d["encryption"]["keyRecipients"][2]["wrappedKeyHex"])), "wrappedKey"),
        (2, lambda d: d.update(plaintextHash=flip_hex(d["plaintextHash"])), "plaintextHash"),
        (4, lambda d: d["signature"].update(value=flip_hex(d["signature"]["value"])), "signature"),
        (0, lambda d: d["signature"].update(keyId="  "), "signature"),
        (3, lambda d: d["signature"].update(machineDid="did:peaq:0x" + "ab" * 20), "expectedDid"),
    ]
    for index, change, check in cases:
        copy = tmp_path / f"copy-{check}-{index}"
        shutil.copytree(chain, copy)
        edit(copy, index, change)
        assert_rejected(verify(copy, keys, "--expect-did", keys.did), check, index)


def test_edited_source_hash(chain, keys):
    path = chain / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sourceHash"] = flip_hex(manifest["sourceHash"])
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    assert_rejected(verify(chain, keys), "sourceHash", None)


def test_chain_resigned_with_another_key(tmp_path, keys, other_keys):
    source = tmp_path / "in.bin"
    source.write_bytes(data(3_000))
    pub = tmp_path / "pub"
    # Someone re-publishes the data under their chain key, claiming our DID.
    args = publish_args(other_keys, source, pub, 1000)
    args[args.index("--machine-did") + 1] = keys.did
    args[args.index("--machine-key-id") + 1] = keys.key_id
    ref("-q", *args, cwd=tmp_path)
    # What the reference checks (and our verify without a pin) passes...
    assert ours("stream", "verify", "--chunk-dir", str(pub), "--expect-did", keys.did).returncode == 0
    # ... the pinned key does not.
    proc = ours("stream", "verify", "--chunk-dir", str(pub), "--expect-public-key", keys.text("chain.pub"), check=False)
    assert_rejected(proc, "signerKey", 0)


def test_json_output_names_check_and_index(chain, keys):
    (chain / "chunk-4.json").unlink()
    proc = ours("stream", "verify", "--chunk-dir", str(chain), "--json", check=False)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["valid"] is False and doc["check"] == "totalChunks" and doc["index"] == 4
