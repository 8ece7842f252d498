//! Command-line syntax. `stream publish|grant|consume` take the reference CLI's flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "peaqos",
    version,
    about = "Publish, grant, consume, verify and sign peaq Stream data; list it as datasets"
)]
pub struct Cli {
    /// Suppress progress and summaries on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum Command {
    /// Data streams: chunk chains, buyer access, signed packages.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Datasets: Merkle roots over chain ranges, signed listings, proofs and samples.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Development keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Build and sign a dataset over a range of a published chain.
    Build(DatasetBuildArgs),
    /// Verify a dataset: its signature, its chunks and root, and (with access) every package.
    Verify(DatasetVerifyArgs),
    /// Write the inclusion proof of one chunk of a dataset.
    Prove(DatasetProveArgs),
    /// Verify an inclusion proof against a dataset and a chunk envelope.
    VerifyProof(DatasetVerifyProofArgs),
    /// Write the consistency proof between a dataset and a later, longer one of the chain.
    Consistency(DatasetConsistencyArgs),
    /// Verify a consistency proof between two datasets.
    VerifyConsistency(DatasetVerifyConsistencyArgs),
    /// Give a buyer one chunk of a dataset to inspect before paying: the chunk, its data,
    /// access to it alone, and its inclusion proof.
    Sample(DatasetSampleArgs),
    /// Verify and decrypt a sample.
    VerifySample(DatasetVerifySampleArgs),
}

#[derive(Args)]
pub struct DatasetBuildArgs {
    /// The published chain's directory (chunk-*.json; index.jsonl when the agent wrote it),
    /// or s3://bucket/prefix.
    #[arg(long)]
    pub chunk_dir: PathBuf,
    #[command(flatten)]
    pub s3_options: S3Options,
    /// The topic the dataset is of (or a name for a chain of a file).
    #[arg(long)]
    pub topic: String,
    /// First chunk index (default 0).
    #[arg(long, conflicts_with_all = ["from_time", "to_time"])]
    pub from_index: Option<u64>,
    /// Last chunk index (default: the chain's last).
    #[arg(long, conflicts_with_all = ["from_time", "to_time"])]
    pub to_index: Option<u64>,
    /// The chunks whose packages all lie at or after this time (RFC 3339).
    #[arg(long, requires = "to_time")]
    pub from_time: Option<String>,
    /// ... and at or before this time (RFC 3339).
    #[arg(long, requires = "from_time")]
    pub to_time: Option<String>,
    /// A recipient's X25519 private key (hex): read the packages' times by decrypting
    /// (else from index.jsonl).
    #[arg(long)]
    pub recipient_key_file: Option<PathBuf>,
    /// Sign through keyd at this socket, with the machine's identity key.
    #[arg(long, value_name = "SOCKET")]
    pub keyd: Option<PathBuf>,
    /// File holding the secp256k1 identity key (hex). Required without --keyd.
    #[arg(long)]
    pub signing_key_file: Option<PathBuf>,
    /// The machine's DID; must be the identity key's. Required without --keyd.
    #[arg(long)]
    pub did: Option<String>,
    /// signature.keyId without --keyd (default {did}#keys-1).
    #[arg(long)]
    pub key_id: Option<String>,
    /// A title for the listing.
    #[arg(long)]
    pub title: Option<String>,
    /// A description for the listing.
    #[arg(long)]
    pub description: Option<String>,
    /// A JSON file with the seller's terms (an object: price, token, chain…).
    #[arg(long)]
    pub terms: Option<PathBuf>,
    /// Where to write the signed dataset document (atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// Print the document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DatasetVerifyArgs {
    /// The dataset document.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Directory (or s3://bucket/prefix) with the chunk-*.json envelopes.
    #[arg(long)]
    pub chunk_dir: PathBuf,
    /// Directory (or s3://bucket/prefix) with the chunk-*.bin ciphertexts (default: the
    /// chunk directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3_options: S3Options,
    /// Check the envelopes only (no ciphertexts: before buying).
    #[arg(long, conflicts_with_all = ["data_dir", "access_dir"])]
    pub envelopes_only: bool,
    /// Directory with buyer access files: decrypt every chunk and check every package.
    #[arg(long, requires_all = ["buyer_key_file", "buyer_id"])]
    pub access_dir: Option<PathBuf>,
    /// File holding the buyer's X25519 private key (hex).
    #[arg(long, requires = "access_dir")]
    pub buyer_key_file: Option<PathBuf>,
    /// Buyer recipient id, as in the access files.
    #[arg(long, requires = "access_dir")]
    pub buyer_id: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DatasetProveArgs {
    /// The dataset document.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Directory (or s3://bucket/prefix) with the chunk-*.json envelopes.
    #[arg(long)]
    pub chunk_dir: PathBuf,
    #[command(flatten)]
    pub s3_options: S3Options,
    /// The chunk's index in the chain.
    #[arg(long)]
    pub index: u64,
    /// Where to write the proof (default: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct DatasetVerifyProofArgs {
    /// The dataset document.
    #[arg(long)]
    pub dataset: PathBuf,
    /// The inclusion proof.
    #[arg(long)]
    pub proof: PathBuf,
    /// The chunk's envelope (chunk-N.json).
    #[arg(long)]
    pub chunk: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DatasetConsistencyArgs {
    /// The older dataset document.
    #[arg(long)]
    pub old: PathBuf,
    /// The newer dataset document (same chain, same first chunk, at least as long).
    #[arg(long)]
    pub new: PathBuf,
    /// Directory (or s3://bucket/prefix) with the chunk-*.json envelopes of the newer dataset.
    #[arg(long)]
    pub chunk_dir: PathBuf,
    #[command(flatten)]
    pub s3_options: S3Options,
    /// Where to write the proof (default: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct DatasetVerifyConsistencyArgs {
    /// The older dataset document.
    #[arg(long)]
    pub old: PathBuf,
    /// The newer dataset document.
    #[arg(long)]
    pub new: PathBuf,
    /// The consistency proof.
    #[arg(long)]
    pub proof: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DatasetSampleArgs {
    /// The dataset document.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Directory (or s3://bucket/prefix) with the chain (chunk-*.json and chunk-*.bin).
    #[arg(long)]
    pub chunk_dir: PathBuf,
    #[command(flatten)]
    pub s3_options: S3Options,
    /// The sample chunk's index in the chain.
    #[arg(long)]
    pub index: u64,
    /// Buyer's X25519 public key (hex).
    #[arg(long)]
    pub buyer_public_key: String,
    /// Buyer recipient id.
    #[arg(long)]
    pub buyer_id: String,
    /// Grant through keyd at this socket, with the machine's box key.
    #[arg(long, value_name = "SOCKET")]
    pub keyd: Option<PathBuf>,
    /// File holding the owner's X25519 private key (hex). Required without --keyd.
    #[arg(long)]
    pub owner_private_key_file: Option<PathBuf>,
    /// Directory for the sample (created): dataset.json, proof.json, chunks/, data/, access/.
    #[arg(long)]
    pub output_dir: PathBuf,
}

#[derive(Args)]
pub struct DatasetVerifySampleArgs {
    /// The sample's directory, as `dataset sample` wrote it.
    #[arg(long)]
    pub sample_dir: PathBuf,
    /// File holding the buyer's X25519 private key (hex).
    #[arg(long)]
    pub buyer_key_file: PathBuf,
    /// Buyer recipient id, as in the access file.
    #[arg(long)]
    pub buyer_id: String,
    /// Where to write the sample's decrypted data (atomically).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum StreamCommand {
    /// Chunk, encrypt and sign a file into a published directory.
    Publish(PublishArgs),
    /// Grant a buyer access to a published chain (re-wraps chunk keys; nothing is re-encrypted).
    Grant(GrantArgs),
    /// Verify, decrypt and reassemble a purchased chain.
    Consume(ConsumeArgs),
    /// Wait for a buyer's payment, grant the buyer every chunk, and deliver the bundle.
    Distribute(DistributeArgs),
    /// Verify a published chain: the reference's checks and the ones it misses.
    Verify(VerifyArgs),
    /// Apply field rules to captured messages and sign them as data packages.
    Sign(SignArgs),
    /// Verify signed data packages (one JSON document per line).
    VerifyPackages(VerifyPackagesArgs),
    /// Follow a machine's topic live on NATS JetStream: every chunk verified, then written
    /// into the published layout, then acknowledged.
    Follow(FollowArgs),
}

#[derive(Args)]
pub struct FollowArgs {
    /// The NATS servers: nats://host:port or tls://host:port, comma-separated.
    #[arg(long, value_name = "URL")]
    pub nats: String,
    /// The machine whose chain to follow (did:peaq:0x…). With --follow-all: only its topics.
    #[arg(long, required_unless_present = "follow_all")]
    pub did: Option<String>,
    /// The topic to follow (/robot/imu).
    #[arg(
        long,
        required_unless_present = "follow_all",
        conflicts_with = "follow_all"
    )]
    pub topic: Option<String>,
    /// Where to write the chain (chunk-N.json, chunk-N.bin, manifest.json); with
    /// --follow-all, one directory per machine and topic under it: <address>/<topic>.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Every chunk must be signed by this Ed25519 public key (hex); without it, by the
    /// signer of the first chunk written.
    #[arg(long, conflicts_with = "follow_all")]
    pub expect_public_key: Option<String>,
    /// A durable consumer of this name: the server remembers what was acknowledged, and a
    /// restart resumes there (else an ephemeral consumer reads the stream again and skips
    /// what the directory has).
    #[arg(long, value_name = "NAME")]
    pub durable: Option<String>,
    /// An empty directory starts at chunk 0 (the whole retained chain); without it, at the
    /// newest chunk (live).
    #[arg(long)]
    pub from_start: bool,
    /// Follow every machine and topic under the subject prefix (or every topic of --did).
    #[arg(long)]
    pub follow_all: bool,
    /// The JetStream stream.
    #[arg(long, default_value = "PEAQ_STREAM")]
    pub stream: String,
    /// The subjects' prefix.
    #[arg(long, default_value = "peaq.stream")]
    pub subject_prefix: String,
    /// A NATS .creds file, nkey seed file or token file (readable only by you).
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// A forged or unreadable message (a foreign signer, another machine, a damaged chunk)
    /// is named on stderr and skipped, instead of stopping the follower; nothing of it is
    /// written either way. A gap or a fork always stops it.
    #[arg(long)]
    pub skip_forged: bool,
    /// One JSON line per chunk written on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Write a fresh set of development keys as hex files.
    Generate(KeysGenerateArgs),
}

#[derive(Args)]
pub struct PublishArgs {
    /// File to publish.
    #[arg(long = "input")]
    pub input: PathBuf,
    /// Directory for chunk-N.json, chunk-N.bin and manifest.json (created if missing).
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Sign and make chunk keys through keyd at this socket (no key files or key flags).
    #[arg(long, value_name = "SOCKET")]
    pub keyd: Option<PathBuf>,
    /// Owner's X25519 public key (hex). Required without --keyd.
    #[arg(long)]
    pub owner_public_key: Option<String>,
    /// Operator's X25519 public key (hex). Required without --keyd.
    #[arg(long)]
    pub operator_public_key: Option<String>,
    /// Machine's X25519 public key (hex). Required without --keyd.
    #[arg(long)]
    pub machine_public_key: Option<String>,
    /// File holding the Ed25519 chain signing key (hex). Required without --keyd.
    #[arg(long)]
    pub signing_key_file: Option<PathBuf>,
    /// Machine DID (did:peaq:0x…). Required without --keyd.
    #[arg(long)]
    pub machine_did: Option<String>,
    /// DID key reference (e.g. did:peaq:0x…#keys-1). Required without --keyd.
    #[arg(long)]
    pub machine_key_id: Option<String>,
    /// Bytes per chunk.
    #[arg(long, default_value_t = stream::chain::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: usize,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Worker threads (default: every core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// fsync every file before it is renamed into place.
    #[arg(long)]
    pub fsync: bool,
    /// Also upload the chain to s3://bucket/prefix (objects named as the reference names
    /// them; envelopes get their storageRef, the manifest s3Bucket and s3Prefix).
    #[arg(long = "s3", value_name = "S3_PATH")]
    pub s3: Option<String>,
    #[command(flatten)]
    pub s3_options: S3Options,
}

/// How to reach an S3-compatible service. Credentials: PEAQOS_S3_ACCESS_KEY_ID and
/// PEAQOS_S3_SECRET_ACCESS_KEY, else AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
#[derive(Args, Clone, Default)]
pub struct S3Options {
    /// Region of the S3-compatible service (else PEAQOS_S3_REGION, AWS_REGION, us-east-1).
    #[arg(long = "s3-region")]
    pub s3_region: Option<String>,
    /// Custom endpoint URL (MinIO, Garage, R2…; path-style addressing), else PEAQOS_S3_ENDPOINT.
    #[arg(long = "s3-endpoint")]
    pub s3_endpoint: Option<String>,
}

#[derive(Args)]
pub struct GrantArgs {
    /// Directory with chunk-*.json envelopes, or s3://bucket/prefix.
    #[arg(long)]
    pub chunk_dir: PathBuf,
    #[command(flatten)]
    pub s3_options: S3Options,
    /// Buyer's X25519 public key (hex).
    #[arg(long)]
    pub buyer_public_key: String,
    /// Buyer recipient id (e.g. did:peaq:0x…).
    #[arg(long)]
    pub buyer_id: String,
    /// File holding the owner's X25519 private key (hex). Required without --keyd.
    #[arg(long)]
    pub owner_private_key_file: Option<PathBuf>,
    /// Grant through keyd at this socket, with the machine's box key (which never leaves keyd).
    #[arg(long, value_name = "SOCKET")]
    pub keyd: Option<PathBuf>,
    /// Directory for the buyer access files (created if missing).
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Size bound of one access file, in the reference's measure.
    #[arg(long, default_value_t = stream::access::DEFAULT_MAX_FILE_SIZE)]
    pub max_file_size: usize,
    /// Print a summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ConsumeArgs {
    /// Directory (or s3://bucket/prefix) with chunk-*.json envelopes (and manifest.json).
    #[arg(long)]
    pub chunk_dir: Option<PathBuf>,
    /// Directory with buyer access files.
    #[arg(long)]
    pub access_dir: Option<PathBuf>,
    /// Directory (or s3://bucket/prefix) with chunk-*.bin ciphertexts.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// File holding the buyer's X25519 private key (hex).
    #[arg(long)]
    pub buyer_private_key_file: PathBuf,
    /// Buyer recipient id, as in the access files.
    #[arg(long)]
    pub buyer_id: String,
    /// Where to write the reassembled data (written atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// Skip chain verification (debugging only).
    #[arg(long)]
    pub skip_verify: bool,
    /// Print a summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only accept chunks whose signature names this DID.
    #[arg(long)]
    pub expect_did: Option<String>,
    /// Only accept chunks signed by this Ed25519 public key (hex).
    #[arg(long)]
    pub expect_public_key: Option<String>,
    /// A bundle's URL (as `distribute` prints it): fetched, verified and decrypted; instead
    /// of --chunk-dir, --access-dir and --data-dir.
    #[arg(long, conflicts_with_all = ["chunk_dir", "access_dir", "data_dir"])]
    pub download_url: Option<String>,
    /// Where a downloaded bundle goes (default: a temporary directory).
    #[arg(long, requires = "download_url")]
    pub work_dir: Option<PathBuf>,
    /// Keep the downloaded bundle after a successful run.
    #[arg(long, requires = "download_url")]
    pub keep_files: bool,
    #[command(flatten)]
    pub s3_options: S3Options,
}

/// How an order's bundle reaches the buyer.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    /// One ZIP object per order in S3 behind a presigned GET URL.
    S3,
    /// This process serves the bundle (HTTP, or HTTPS with --tls-cert/--tls-key).
    Http,
}

#[derive(Args)]
pub struct DistributeArgs {
    /// The published chain: a directory or s3://bucket/prefix.
    #[arg(long)]
    pub chunk_dir: PathBuf,
    /// File holding the owner's X25519 private key (hex). Required without --keyd.
    #[arg(long)]
    pub owner_private_key_file: Option<PathBuf>,
    /// Grant through keyd at this socket, with the machine's box key (which never leaves keyd).
    #[arg(long, value_name = "SOCKET")]
    pub keyd: Option<PathBuf>,
    /// The endpoint polled for the payment confirmation (GET, exactly this URL).
    #[arg(long)]
    pub confirmation_url: String,
    /// The order (purchase) id the confirmation must name.
    #[arg(long)]
    pub order_id: String,
    /// Seconds between polls.
    #[arg(long, default_value_t = 30)]
    pub poll_interval: u64,
    /// Seconds to wait for the confirmation in all.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// How the bundle is delivered.
    #[arg(long, value_enum)]
    pub delivery: Delivery,
    /// Where --delivery s3 puts the order's ZIP (s3://bucket/prefix; the object is
    /// {prefix}orders/{order-id}.zip).
    #[arg(long = "s3", value_name = "S3_PATH")]
    pub s3: Option<String>,
    #[command(flatten)]
    pub s3_options: S3Options,
    /// Seconds the download URL (presigned, or the order's token) stays valid.
    #[arg(long, default_value_t = 3600)]
    pub presign_expiry: u64,
    /// Size bound of one access file, in the reference's measure.
    #[arg(long, default_value_t = stream::access::DEFAULT_MAX_FILE_SIZE)]
    pub max_file_size: usize,
    /// --delivery http: the address to serve on (e.g. 127.0.0.1:8443).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// --delivery http: the base URL buyers reach the server at (default: from --listen).
    #[arg(long)]
    pub public_url: Option<String>,
    /// --delivery http: PEM certificate chain, to serve HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// --delivery http: PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// --delivery http: stop once the buyer has every file, or only when the link expires.
    #[arg(long, value_enum, default_value = "complete")]
    pub serve_until: crate::deliver::serve::Until,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Directory with chunk-*.json envelopes and manifest.json, or a directory of such
    /// directories (the edge agent's output, one per topic): each is verified. Or
    /// s3://bucket/prefix.
    #[arg(long)]
    pub chunk_dir: PathBuf,
    /// Directory (or s3://bucket/prefix) with chunk-*.bin ciphertexts (default: the chunk
    /// directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3_options: S3Options,
    /// Every chunk's signature must name this DID (a claim, not a key: see --expect-public-key).
    #[arg(long)]
    pub expect_did: Option<String>,
    /// Every chunk must be signed by this Ed25519 public key (hex): catches re-signed chains.
    #[arg(long)]
    pub expect_public_key: Option<String>,
    /// A recipient's X25519 private key (hex): decrypt and check every chunk and sourceHash.
    #[arg(long)]
    pub recipient_key_file: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SignArgs {
    /// Data Event Map (YAML or JSON): topics[].topic and topics[].field_rules are used.
    #[arg(long)]
    pub map: PathBuf,
    /// Captured messages, one JSON object per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Signed packages, one per line (written atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// Sign and encrypt fields through keyd at this socket (no key files needed).
    #[arg(long, value_name = "SOCKET")]
    pub keyd: Option<PathBuf>,
    /// File holding the secp256k1 identity key (hex). Required without --keyd.
    #[arg(long)]
    pub signing_key_file: Option<PathBuf>,
    /// File holding the AES-256 field key (hex). Required without --keyd.
    #[arg(long)]
    pub field_key_file: Option<PathBuf>,
    /// The signer's DID; must be the identity key's (keyd's, with --keyd).
    #[arg(long)]
    pub did: Option<String>,
    /// signingKeyId written into every package (default with --keyd: keyd's identity key id).
    #[arg(long)]
    pub key_id: Option<String>,
    /// On a bad line, write {"line": N, "error": …} and go on (exit 1 at the end).
    #[arg(long)]
    pub keep_going: bool,
    /// Worker threads (default: every core).
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(Args)]
pub struct VerifyPackagesArgs {
    /// Signed packages, one per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Every package must carry this DID.
    #[arg(long)]
    pub expect_did: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct KeysGenerateArgs {
    /// Directory for the key files (created; existing key files are never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the public parts as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
