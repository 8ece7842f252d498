#!/usr/bin/env node
// Calling keyd from Node.js: identity, package signatures and chunk-hash signatures over
// keyd's Unix socket, with @grpc/grpc-js and @grpc/proto-loader (stubs loaded from
// keyd.proto at run time, no code generation).
//
//   npm ci
//   node keyd-client.js /run/keyd/keyd.sock [--proto PATH] [--count N]
//
// Prints one JSON document: keyd's identity, N signed data packages (the reference's
// DataPackage JSON, verifiable by anyone with the DID) and N chunk-hash signatures.
// The caller's Unix account must be allowed identity, sign_packages and sign_chunk_hashes
// by keyd's policy, and be in keyd's socket group.
"use strict";

const crypto = require("node:crypto");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function usage(message) {
  if (message) console.error(`keyd-client: ${message}`);
  console.error("usage: node keyd-client.js SOCKET [--proto PATH] [--count N]");
  process.exit(2);
}

function parseArgs(argv) {
  const args = { proto: path.join(__dirname, "..", "..", "proto", "proto", "keyd.proto"), count: 3 };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--proto") args.proto = argv[++i];
    else if (argv[i] === "--count") args.count = Number.parseInt(argv[++i], 10);
    else if (argv[i].startsWith("--")) usage(`unknown option ${argv[i]}`);
    else rest.push(argv[i]);
  }
  if (rest.length !== 1) usage("give keyd's socket path");
  if (!Number.isInteger(args.count) || args.count < 1 || args.count > 4096) usage("--count: 1 to 4096");
  args.socket = rest[0];
  return args;
}

// The package envelope keyd signs: canonical JSON (keys sorted at every level, no
// whitespace, UTF-8) of {did, timestamp, schemaVersion, sequenceNumber, payload}. Numbers
// here are integers; a float needs the format's shortest round-trip form.
function canonicalJson(value) {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "bigint") return value.toString();
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync(args.proto, { keepCase: true, longs: String, enums: String, defaults: true });
  const { Keyd } = grpc.loadPackageDefinition(definition).keyd.v1;
  // keyd authorizes by the peer's Unix credentials: no TLS on the socket.
  const client = new Keyd(`unix://${path.resolve(args.socket)}`, grpc.credentials.createInsecure());

  const identity = await call(client, "Identity", {});
  const first = BigInt(identity.next_sequence_number);
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const documents = [];
  for (let i = 0n; i < BigInt(args.count); i++) {
    documents.push({
      did: identity.did,
      timestamp: now,
      schemaVersion: "1",
      sequenceNumber: first + i,
      payload: { source: "node", reading: Number(i), unit: "mm" },
    });
  }
  const envelopes = documents.map((doc) => Buffer.from(canonicalJson(doc), "utf8"));
  const signed = await call(client, "SignPackages", { envelopes });
  const packages = documents.map((doc, i) => ({
    ...doc,
    sequenceNumber: Number(doc.sequenceNumber),
    signature: `0x${signed.signatures[i].toString("hex")}`,
    signingKeyId: identity.identity_key_id,
  }));

  // Chunk hashes: what a chunk writer signs, each with its chunk key's commitment.
  const hashes = [];
  const keyCommitments = [];
  for (let i = 0; i < args.count; i++) {
    hashes.push(`0x${crypto.randomBytes(32).toString("hex")}`);
    keyCommitments.push(`sha256:${crypto.randomBytes(32).toString("hex")}`);
  }
  const chunkSigned = await call(client, "SignChunkHashes", { hashes, key_commitments: keyCommitments });
  const chunkSignatures = hashes.map((hash, i) => ({
    hash,
    keyCommitment: keyCommitments[i],
    signature: chunkSigned.signatures[i].toString("hex"),
  }));

  process.stdout.write(`${JSON.stringify({ identity, packages, chunkSignatures }, null, 2)}\n`);
  client.close();
}

main().catch((error) => {
  // gRPC errors carry keyd's reason in `details` (never key material).
  console.error(`keyd-client: ${error.details || error.message} (${grpc.status[error.code] || "error"})`);
  process.exit(1);
});
