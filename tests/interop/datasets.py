"""Datasets over a chain the edge agent wrote, checked by an implementation of RFC 6962
written here (independent of ours) and by eth_account's EIP-191 recovery (the reference
SDK's own dependency for EIP-191), and refused when tampered with."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_defunct

from conftest import ours


def leaf(chunk: dict) -> bytes:
    data = {k: chunk[k] for k in ("chunkId", "encryptedDataHash", "index", "plaintextHash")}
    data["keyCommitment"] = chunk["encryption"]["keyCommitment"]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"\x00" + text.encode()).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1, as written there."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def inclusion_ok(leaf_hash: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def signer_of(doc: dict) -> str:
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    return Account.recover_message(encode_defunct(primitive=canonical), signature=doc["signature"]["value"])


def refused(args: list[str], check: str, cwd: Path) -> None:
    result = ours(*args, "--json", check=False, cwd=cwd)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    assert json.loads(result.stdout)["check"] == check, (args, result.stdout)
    assert f"[{check}]" in result.stderr, result.stderr


def check_datasets(keyd: dict, chain: Path, work: Path) -> None:
    keys, socket, did = keyd["keys"], keyd["socket"], keyd["identity"]["did"]
    index = [json.loads(line) for line in (chain / "index.jsonl").read_text().splitlines()]
    chunks = [json.loads((chain / f"chunk-{i}.json").read_text()) for i in range(len(index))]
    assert len(index) >= 4, "the test needs a chain of at least 4 chunks"
    assert [e["chunkId"] for e in index] == [c["chunkId"] for c in chunks]

    # By time, from the agent's index: the chunks from the second to the last but one.
    d = work / "datasets"
    d.mkdir()
    (d / "terms.json").write_text('{"price": "12.5", "token": "PEAQ", "chain": "peaq"}')
    ours("-q", "dataset", "build", "--chunk-dir", str(chain), "--topic", "/chatter", "--from-time", index[1]["firstTimestamp"],
         "--to-time", index[-2]["lastTimestamp"], "--keyd", socket, "--title", "chatter", "--terms", str(d / "terms.json"),
         "--output", str(d / "ds.json"))
    doc = json.loads((d / "ds.json").read_text())
    first, last = 1, len(index) - 2
    assert (doc["firstIndex"], doc["lastIndex"], doc["treeSize"]) == (first, last, last - first + 1)
    assert doc["timeRange"] == {"from": index[1]["firstTimestamp"], "to": index[-2]["lastTimestamp"]}
    assert doc["machineDid"] == did and doc["chainPublicKeyHex"] == keyd["identity"]["chainPublicKeyHex"]
    # The same range by decrypting as the owner instead of reading index.jsonl.
    ours("-q", "dataset", "build", "--chunk-dir", str(chain), "--topic", "/chatter", "--from-time", index[1]["firstTimestamp"],
         "--to-time", index[-2]["lastTimestamp"], "--keyd", socket, "--recipient-key-file", str(keys / "owner.key"),
         "--output", str(d / "by-decrypting.json"))
    again = json.loads((d / "by-decrypting.json").read_text())
    assert (again["firstIndex"], again["lastIndex"], again["merkleRoot"], again["timeRange"]) == \
        (doc["firstIndex"], doc["lastIndex"], doc["merkleRoot"], doc["timeRange"]), again
    # The root and the signature, checked independently.
    leaves = [leaf(c) for c in chunks[first:last + 1]]
    assert doc["merkleRoot"] == "0x" + mth(leaves).hex()
    assert "did:peaq:" + signer_of(doc).lower() == did.lower()

    # The buyer: envelopes before paying, then every package with the access granted.
    ours("-q", "dataset", "verify", "--dataset", str(d / "ds.json"), "--chunk-dir", str(chain), "--envelopes-only")
    buyer = ["--buyer-public-key", (keys / "buyer.pub").read_text().strip(), "--buyer-id", "buyer-9"]
    ours("-q", "stream", "grant", "--chunk-dir", str(chain), *buyer, "--keyd", socket, "--output-dir", str(d / "access"))
    result = json.loads(ours("dataset", "verify", "--dataset", str(d / "ds.json"), "--chunk-dir", str(chain),
                             "--access-dir", str(d / "access"), "--buyer-key-file", str(keys / "buyer.key"),
                             "--buyer-id", "buyer-9", "--json").stdout)
    assert result["valid"] and result["packages"] == sum(e["packages"] for e in index[first:last + 1]), result

    # Proofs: inclusion (checked here too) and consistency with a shorter dataset.
    k = first + 1
    ours("-q", "dataset", "prove", "--dataset", str(d / "ds.json"), "--chunk-dir", str(chain), "--index", str(k),
         "--output", str(d / "proof.json"))
    proof = json.loads((d / "proof.json").read_text())
    path = [bytes.fromhex(h[2:]) for h in proof["auditPath"]]
    assert inclusion_ok(leaf(chunks[k]), k - first, doc["treeSize"], path, bytes.fromhex(doc["merkleRoot"][2:]))
    ours("-q", "dataset", "verify-proof", "--dataset", str(d / "ds.json"), "--proof", str(d / "proof.json"),
         "--chunk", str(chain / f"chunk-{k}.json"))
    refused(["dataset", "verify-proof", "--dataset", str(d / "ds.json"), "--proof", str(d / "proof.json"),
             "--chunk", str(chain / f"chunk-{k + 1}.json")], "proof", work)
    ours("-q", "dataset", "build", "--chunk-dir", str(chain), "--topic", "/chatter", "--from-index", str(first),
         "--to-index", str(first + 1), "--keyd", socket, "--output", str(d / "old.json"))
    ours("-q", "dataset", "consistency", "--old", str(d / "old.json"), "--new", str(d / "ds.json"), "--chunk-dir", str(chain),
         "--output", str(d / "consistency.json"))
    ours("-q", "dataset", "verify-consistency", "--old", str(d / "old.json"), "--new", str(d / "ds.json"),
         "--proof", str(d / "consistency.json"))

    # A sample: one chunk, granted through keyd, checked and decrypted by the buyer.
    ours("-q", "dataset", "sample", "--dataset", str(d / "ds.json"), "--chunk-dir", str(chain), "--index", str(k), *buyer,
         "--keyd", socket, "--output-dir", str(d / "sample"))
    result = json.loads(ours("dataset", "verify-sample", "--sample-dir", str(d / "sample"), "--buyer-key-file",
                             str(keys / "buyer.key"), "--buyer-id", "buyer-9", "--output", str(d / "sample.jsonl"),
                             "--json").stdout)
    assert result["packages"] == index[k]["packages"], result
    lines = (d / "sample.jsonl").read_text().splitlines()
    assert len(lines) == index[k]["packages"] and all(json.loads(line)["did"] == did for line in lines)

    # Tampering, each refused and named.
    def tampered(name: str, change) -> Path:
        copy = d / name
        shutil.copytree(chain, copy)
        change(copy)
        return copy

    def edit(copy: Path, i: int, change) -> None:
        chunk = json.loads((copy / f"chunk-{i}.json").read_text())
        change(chunk)
        (copy / f"chunk-{i}.json").write_text(json.dumps(chunk, indent=2) + "\n")

    verify = ["dataset", "verify", "--dataset", str(d / "ds.json"), "--chunk-dir"]
    key_swap = tampered("key-swap", lambda c: edit(c, k, lambda e: e["encryption"].update(
        keyCommitment=chunks[k + 1]["encryption"]["keyCommitment"])))
    refused([*verify, str(key_swap)], "merkleRoot", work)
    dropped = tampered("dropped", lambda c: (c / f"chunk-{k}.json").unlink())
    refused([*verify, str(dropped)], "missing", work)

    def swap(c: Path) -> None:
        (c / f"chunk-{k}.json").rename(c / "x")
        (c / f"chunk-{k + 1}.json").rename(c / f"chunk-{k}.json")
        (c / "x").rename(c / f"chunk-{k + 1}.json")
    refused([*verify, str(tampered("reordered", swap))], "index", work)
    # One bit flipped (writing a fixed byte would change nothing when the ciphertext starts with it).
    edited = tampered("edited", lambda c: (c / f"chunk-{k}.bin").write_bytes(
        bytes([(c / f"chunk-{k}.bin").read_bytes()[0] ^ 1]) + (c / f"chunk-{k}.bin").read_bytes()[1:]))
    refused([*verify, str(edited)], "encryptedDataHash", work)
    garbled = tampered("garbled", lambda c: (c / f"chunk-{k}.json").write_text("{not json"))
    result = ours(*verify, str(garbled), check=False, cwd=work)
    assert result.returncode == 1 and "[envelope]" in result.stderr, result.stderr
    for name, change in [("range", lambda x: x.update(lastIndex=x["lastIndex"] - 1, treeSize=x["treeSize"] - 1)),
                         ("root", lambda x: x.update(merkleRoot="0x" + "00" * 32))]:
        bad = dict(doc)
        change(bad)
        (d / f"{name}.json").write_text(json.dumps(bad, indent=2))
        refused(["dataset", "verify", "--dataset", str(d / f"{name}.json"), "--chunk-dir", str(chain)], "datasetSignature", work)
    foreign = dict(doc)
    unsigned = {k2: v for k2, v in doc.items() if k2 != "signature"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    signed = Account.sign_message(encode_defunct(primitive=canonical), private_key="0x" + "42" * 32)
    foreign["signature"] = dict(doc["signature"], value="0x" + signed.signature.hex().removeprefix("0x"))
    (d / "foreign.json").write_text(json.dumps(foreign, indent=2))
    refused(["dataset", "verify", "--dataset", str(d / "foreign.json"), "--chunk-dir", str(chain)], "datasetSignature", work)
