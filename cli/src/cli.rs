//! Command-line syntax. `stream publish|grant|consume` take the reference CLI's flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "peaqos",
    version,
    about = "Publish, grant, consume, verify and sign peaq Stream data"
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
    /// Development keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
pub enum StreamCommand {
    /// Chunk, encrypt and sign a file into a published directory.
    Publish(PublishArgs),
    /// Grant a buyer access to a published chain (re-wraps chunk keys; nothing is re-encrypted).
    Grant(GrantArgs),
    /// Verify, decrypt and reassemble a purchased chain.
    Consume(ConsumeArgs),
    /// Verify a published chain: the reference's checks and the ones it misses.
    Verify(VerifyArgs),
    /// Apply field rules to captured messages and sign them as data packages.
    Sign(SignArgs),
    /// Verify signed data packages (one JSON document per line).
    VerifyPackages(VerifyPackagesArgs),
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
    /// S3 upload (reference flag; not supported by this build).
    #[arg(long = "s3", hide = true)]
    pub s3: Option<String>,
    #[arg(long = "s3-region", hide = true)]
    pub s3_region: Option<String>,
    #[arg(long = "s3-endpoint", hide = true)]
    pub s3_endpoint: Option<String>,
}

#[derive(Args)]
pub struct GrantArgs {
    /// Directory with chunk-*.json envelopes.
    #[arg(long)]
    pub chunk_dir: PathBuf,
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
    /// Directory with chunk-*.json envelopes (and manifest.json).
    #[arg(long)]
    pub chunk_dir: Option<PathBuf>,
    /// Directory with buyer access files.
    #[arg(long)]
    pub access_dir: Option<PathBuf>,
    /// Directory with chunk-*.bin ciphertexts.
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
    /// Release package URL (reference flag; not supported by this build).
    #[arg(long, hide = true)]
    pub download_url: Option<String>,
    #[arg(long, hide = true)]
    pub work_dir: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub keep_files: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Directory with chunk-*.json envelopes and manifest.json, or a directory of such
    /// directories (the edge agent's output, one per topic): each is verified.
    #[arg(long)]
    pub chunk_dir: PathBuf,
    /// Directory with chunk-*.bin ciphertexts (default: the chunk directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
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
