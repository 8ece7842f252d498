"""keyd from other languages and against the reference: a Python gRPC client with stubs
generated from proto/ at test time, and the conformance suite, on every backend built
(software; pkcs11 on a fresh SoftHSM token; tpm on a fresh swtpm, keys bound to PCR 7)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from peaq_os_sdk.stream import verify_data_package
from peaq_os_sdk.stream._internal.canonical_json import canonical_json_bytes
from peaq_os_sdk.stream.types import DataPackage

from conftest import OURS, ROOT, ours, ref, run, sign_sample_through_keyd
from test_packages import package_from_line


@pytest.fixture(scope="module", params=["software", "pkcs11", "tpm"])
def keyd(request, tmp_path_factory):
    """A throw-away keyd started by scripts/keyd-dev, on each backend."""
    work = tmp_path_factory.mktemp("keyd")
    # Short, private directory: Unix socket paths are limited to 107 bytes.
    directory = Path(subprocess.run(["mktemp", "-d", "/tmp/kdpyXXXX"], capture_output=True, text=True, check=True).stdout.strip())
    start = subprocess.run([str(ROOT / "scripts" / "keyd-dev"), "start", "--backend", request.param, "--dir", str(directory)],
                           capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    socket = start.stdout.strip().splitlines()[-1]
    yield {"socket": socket, "dir": directory, "keys": directory / "keys", "work": work, "backend": request.param}
    subprocess.run([str(ROOT / "scripts" / "keyd-dev"), "stop", "--dir", str(directory)], check=False)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """keyd.v1 stubs generated from proto/keyd.proto with grpcio-tools, now."""
    out = tmp_path_factory.mktemp("stubs")
    from grpc_tools import protoc

    status = protoc.main(["protoc", f"-I{ROOT / 'proto' / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}", "keyd.proto"])
    assert status == 0
    sys.path.insert(0, str(out))
    return importlib.import_module("keyd_pb2"), importlib.import_module("keyd_pb2_grpc")


@pytest.fixture()
def channel(keyd):
    # grpcio puts the socket path into :authority, which HTTP/2 servers reject as an
    # authority; any host name works (README: "Calling keyd from other languages").
    options = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(f"unix://{keyd['socket']}", options=options) as ch:
        yield ch


def test_python_client_identity_and_package_signatures(stubs, channel, keyd):
    pb, pb_grpc = stubs
    client = pb_grpc.KeydStub(channel)
    identity = client.Identity(pb.IdentityRequest())
    assert identity.did.startswith("did:peaq:0x")
    assert (identity.backend, identity.backend_detail) == ({"software": "software", "pkcs11": "tee", "tpm": "tee"}[keyd["backend"]], keyd["backend"])
    start = identity.next_sequence_number
    envelopes, packages = [], []
    for i in range(10):
        doc = {
            "did": identity.did,
            "timestamp": f"2026-11-22T10:00:0{i}Z",
            "schemaVersion": "1",
            "sequenceNumber": start + i,
            "payload": {"temp": 21.5 + i, "unit": "°C", "big": 2**70},
        }
        envelopes.append(canonical_json_bytes(doc))
        packages.append(doc)
    response = client.SignPackages(pb.SignPackagesRequest(envelopes=envelopes))
    assert len(response.signatures) == 10
    for doc, signature in zip(packages, response.signatures):
        package = DataPackage(
            did=doc["did"], timestamp=doc["timestamp"], schema_version=doc["schemaVersion"],
            sequence_number=doc["sequenceNumber"], payload=doc["payload"],
            signature="0x" + signature.hex(), signing_key_id=identity.identity_key_id,
        )
        assert verify_data_package(package).valid
    # The same sequence numbers again: refused, with the reason.
    with pytest.raises(grpc.RpcError) as error:
        client.SignPackages(pb.SignPackagesRequest(envelopes=envelopes[:1]))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not above" in error.value.details()


def test_python_client_chunk_hash_signatures(stubs, channel):
    pb, pb_grpc = stubs
    client = pb_grpc.KeydStub(channel)
    identity = client.Identity(pb.IdentityRequest())
    hashes = ["0x" + bytes([i]).hex() * 32 for i in range(5)]
    commitments = ["sha256:" + bytes([100 + i]).hex() * 32 for i in range(5)]
    response = client.SignChunkHashes(pb.SignChunkHashesRequest(hashes=hashes, key_commitments=commitments))
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(identity.chain_public_key_hex))
    for h, signature in zip(hashes, response.signatures):
        key.verify(signature, h.encode())
    with pytest.raises(grpc.RpcError) as error:
        client.SignChunkHashes(pb.SignChunkHashesRequest(hashes=["0xABC"], key_commitments=commitments[:1]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Each hash comes with its chunk's key commitment (keyd records the pair for grants).
    with pytest.raises(grpc.RpcError) as error:
        client.SignChunkHashes(pb.SignChunkHashesRequest(hashes=hashes))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "key_commitments" in error.value.details()


def test_health_and_reflection(channel):
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    assert check(b"") == b"\x08\x01"  # status: SERVING
    # Both reflection versions: many tools (Python's grpcio-reflection) still ask v1alpha.
    for version in ("v1", "v1alpha"):
        reflect = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
        replies = list(reflect(iter([b"\x3a\x00"])))  # list_services
        assert b"keyd.v1.Keyd" in replies[0] and b"grpc.health.v1.Health" in replies[0], version


def test_conformance_packages_chains_and_grants(keyd, tmp_path):
    socket, keys = keyd["socket"], keyd["keys"]
    # Packages signed through keyd verify with the reference SDK. Like the agent, continue
    # the sequence where keyd says it continues.
    keyd_bin = Path(OURS).with_name("keyd")
    packages, identity = sign_sample_through_keyd(str(keyd_bin), socket, tmp_path)
    lines = [json.loads(l) for l in packages.read_text().splitlines()]
    assert len(lines) == 5
    for doc in lines:
        assert verify_data_package(package_from_line(doc)).valid
    # A chain published through keyd verifies and decrypts with the reference CLI...
    source = tmp_path / "data.bin"
    source.write_bytes(bytes(range(256)) * 40)
    pub = tmp_path / "pub"
    ours("-q", "stream", "publish", "--keyd", socket, "--input", str(source), "--output-dir", str(pub), "--chunk-size", "1000")
    manifest = json.loads((pub / "manifest.json").read_text())
    verified = json.loads(ours("stream", "verify", "--chunk-dir", str(pub), "--recipient-key-file", str(keys / "owner.key"),
                               "--expect-public-key", identity["chainPublicKeyHex"], "--json").stdout)
    assert verified["valid"] and manifest["totalChunks"] == 11
    buyer_args = ["--buyer-public-key", (keys / "buyer.pub").read_text().strip(), "--buyer-id", "buyer-1"]
    ref("-q", "stream", "grant", "--chunk-dir", str(pub), *buyer_args, "--owner-private-key-file", str(keys / "owner.key"),
        "--output-dir", str(tmp_path / "access-ref"), cwd=tmp_path)
    consume = ["stream", "consume", "--chunk-dir", str(pub), "--data-dir", str(pub),
               "--buyer-private-key-file", str(keys / "buyer.key"), "--buyer-id", "buyer-1"]
    ref("-q", *consume, "--access-dir", str(tmp_path / "access-ref"), "--output", str(tmp_path / "out1.bin"), cwd=tmp_path)
    assert (tmp_path / "out1.bin").read_bytes() == source.read_bytes()
    # ... and grants made by keyd (with the machine's key) work with the reference consume.
    ours("-q", "stream", "grant", "--keyd", socket, "--chunk-dir", str(pub), *buyer_args, "--output-dir", str(tmp_path / "access-keyd"))
    ref("-q", *consume, "--access-dir", str(tmp_path / "access-keyd"), "--output", str(tmp_path / "out2.bin"), cwd=tmp_path)
    assert (tmp_path / "out2.bin").read_bytes() == source.read_bytes()


NODE_CLIENT = ROOT / "examples" / "node" / "keyd-client.js"


def node_env() -> dict[str, str]:
    """The example's dependencies, as `scripts/setup` installed them from its lock file."""
    modules = Path(os.environ.get("PEAQOS_CACHE", Path.home() / ".cache" / "peaqos")) / "node-client" / "node_modules"
    assert (modules / "@grpc" / "grpc-js").is_dir(), f"{modules}: run scripts/setup (npm ci of examples/node)"
    return {"NODE_PATH": str(modules)}


def test_node_client_signs_what_the_reference_verifies(keyd):
    """examples/node/keyd-client.js (@grpc/grpc-js, @grpc/proto-loader) over the Unix socket:
    its identity, packages and chunk-hash signatures, checked by the reference and the chain key."""
    proc = run(["node", str(NODE_CLIENT), keyd["socket"], "--count", "5"], env=node_env())
    out = json.loads(proc.stdout)
    identity = out["identity"]
    expected = json.loads(run([str(Path(OURS).with_name("keyd")), "identity", "--socket", keyd["socket"], "--json"]).stdout)
    assert identity["did"] == expected["did"]
    assert identity["chain_public_key_hex"] == expected["chainPublicKeyHex"]
    assert len(out["packages"]) == 5
    for doc in out["packages"]:
        package = DataPackage(
            did=doc["did"], timestamp=doc["timestamp"], schema_version=doc["schemaVersion"],
            sequence_number=doc["sequenceNumber"], payload=doc["payload"],
            signature=doc["signature"], signing_key_id=doc["signingKeyId"],
        )
        assert verify_data_package(package).valid, doc
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(identity["chain_public_key_hex"]))
    for entry in out["chunkSignatures"]:
        key.verify(bytes.fromhex(entry["signature"]), entry["hash"].encode())
    # An error is keyd's reason on stderr and exit 1, not a stack trace.
    again = run(["node", str(NODE_CLIENT), "/nonexistent/keyd.sock"], env=node_env(), check=False)
    assert again.returncode == 1 and again.stderr.startswith("keyd-client: "), again.stderr


def test_reflection_alone_is_enough_to_call_keyd(keyd):
    """A client that knows nothing but the socket: grpcio-reflection (which asks v1alpha)
    finds keyd.v1.Keyd, gets its descriptors from keyd, and calls Identity and
    SignChunkHashes with message classes built from them."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"unix://{keyd['socket']}", options=[("grpc.default_authority", "localhost")]) as ch:
        database = ProtoReflectionDescriptorDatabase(ch)
        assert "keyd.v1.Keyd" in database.get_services()
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("keyd.v1.Keyd")
        assert {"Identity", "SignPackages", "SignChunkHashes", "Grant"} <= {m.name for m in service.methods}

        def method(name: str):
            found = service.FindMethodByName(name)
            request = message_factory.GetMessageClass(found.input_type)
            response = message_factory.GetMessageClass(found.output_type)
            call = ch.unary_unary(f"/{service.full_name}/{name}", request_serializer=request.SerializeToString,
                                  response_deserializer=response.FromString)
            return request, call

        identity_request, identity = method("Identity")
        me = identity(identity_request())
        assert me.did.startswith("did:peaq:0x")
        sign_request, sign = method("SignChunkHashes")
        hashes = ["0x" + "ab" * 32]
        signed = sign(sign_request(hashes=hashes, key_commitments=["sha256:" + "cd" * 32]))
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(me.chain_public_key_hex)).verify(signed.signatures[0], hashes[0].encode())
