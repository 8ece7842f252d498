//! keyd fails closed: each test here is an attack or a fault that keyd once let through.
//! Real processes, real sockets; root-only parts (another uid, a private mount namespace)
//! skip without root.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{uid, Daemon, KEYD};
use keyd_proto::v1;
use stream::json::{self, Value};
use stream::package;
use stream::signer::*;

fn envelope(did: &str, seq: u64) -> Vec<u8> {
    json::canonical_bytes(&package::envelope(
        did,
        &"t".into(),
        &"1".into(),
        &Value::from(seq),
        &json::parse(r#"{"x":1}"#).unwrap(),
    ))
    .unwrap()
}

fn is_root() -> bool {
    uid() == 0
}

/// Output of a finished `keyd` command: (success, stderr).
fn outcome(out: std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of a binary that other users can execute (the build may live in root's home).
fn public_copy(from: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("kdbin")
        .tempdir_in("/tmp")
        .unwrap();
    let to = dir.path().join(Path::new(from).file_name().unwrap());
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, to)
}

// 1. Low-order X25519 keys.

#[test]
fn low_order_recipient_and_buyer_keys_are_refused() {
    let mut daemon = Daemon::prepare_software(&Daemon::allow_all(), "");
    let config = std::fs::read_to_string(daemon.path("keyd.toml")).unwrap();
    let zero = config
        .lines()
        .map(|l| {
            if l.starts_with("public_key_hex") {
                format!("public_key_hex = \"{}\"", "00".repeat(32))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(daemon.path("keyd.toml"), &zero).unwrap();
    let (ok, stderr) = outcome(daemon.keyd("init"));
    assert!(!ok);
    assert!(
        stderr.contains("recipients[0] (owner-1)") && stderr.contains("low-order"),
        "{stderr}"
    );
    std::fs::write(daemon.path("keyd.toml"), &config).unwrap();
    daemon.init();
    daemon.spawn();
    // A buyer key of all zeros: keyd itself refuses it (the typed client would too).
    let (runtime, mut raw) = daemon.raw();
    let status = runtime
        .block_on(raw.grant(v1::GrantRequest {
            chunk_envelopes: vec![],
            buyer_recipient_id: "b".into(),
            buyer_public_key_hex: "00".repeat(32),
        }))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("low-order"),
        "{}",
        status.message()
    );
}

// 2. The sequence guard without its state.

#[test]
fn no_sequence_state_no_start_unless_the_operator_names_a_floor() {
    let mut daemon = Daemon::start();
    let client = daemon.client();
    let did = client.did().to_string();
    client
        .sign_envelopes(&[&envelope(&did, 1), &envelope(&did, 2)])
        .unwrap();
    drop(client);
    daemon.stop();
    std::fs::remove_file(daemon.path("state/sequence.json")).unwrap();
    let (ok, stderr) = outcome(daemon.keyd("run"));
    assert!(!ok);
    assert!(
        stderr.contains("sequence.json is missing") && stderr.contains("--sequence-floor"),
        "{stderr}"
    );
    daemon.spawn_with(&[], &["--sequence-floor", "1000"]);
    let client = daemon.client();
    assert_eq!(client.next_sequence_number().unwrap(), 1001);
    drop(client);
    daemon.stop();
    // Written for other keys: refused too.
    std::fs::write(
        daemon.path("state/sequence.json"),
        r#"{"did":"did:peaq:0x00000000000000000000000000000000000000aa","ceiling":5}"#,
    )
    .unwrap();
    let (ok, stderr) = outcome(daemon.keyd("run"));
    assert!(!ok);
    assert!(
        stderr.contains("was written for did:peaq:0x0000"),
        "{stderr}"
    );
}

/// On a token, the ceiling is kept in a token object too: a wiped state continues above it.
#[test]
fn a_token_keeps_the_sequence_ceiling_when_the_state_is_wiped() {
    let Some(mut daemon) = Daemon::start_pkcs11() else {
        return;
    };
    wiped_state_continues_above_the_backend(&mut daemon);
}

/// On a TPM, in an NV counter.
#[test]
fn a_tpm_keeps_the_sequence_ceiling_when_the_state_is_wiped() {
    let Some(mut daemon) = Daemon::start_tpm() else {
        return;
    };
    wiped_state_continues_above_the_backend(&mut daemon);
}

fn wiped_state_continues_above_the_backend(daemon: &mut Daemon) {
    let client = daemon.client();
    let did = client.did().to_string();
    client.sign_envelopes(&[&envelope(&did, 900_000)]).unwrap();
    // A second raise of the backend's ceiling (a token may not let a value change).
    client
        .sign_envelopes(&[&envelope(&did, 1_800_000)])
        .unwrap();
    drop(client);
    daemon.stop();
    std::fs::remove_dir_all(daemon.path("state")).unwrap();
    std::fs::create_dir(daemon.path("state")).unwrap();
    let (ok, stderr) = outcome(daemon.keyd("run"));
    assert!(!ok);
    assert!(stderr.contains("the backend says up to"), "{stderr}");
    daemon.spawn_with(&[], &["--sequence-floor", "0"]);
    let next = daemon.client().next_sequence_number().unwrap();
    assert!(next > 1_800_000, "continued at {next}");
}

// 3. An audit record that cannot be written: no result.

#[test]
fn no_audit_record_no_result() {
    if !is_root() {
        eprintln!("skipped: needs root for a small filesystem in a private mount namespace");
        return;
    }
    let mut daemon = Daemon::prepare_software(&Daemon::allow_all(), "");
    let auditfs = daemon.path("auditfs");
    std::fs::create_dir(&auditfs).unwrap();
    let config = std::fs::read_to_string(daemon.path("keyd.toml")).unwrap();
    let config = config.replace(
        &format!(
            "audit_log = \"{}\"",
            daemon.path("state/audit.jsonl").display()
        ),
        &format!("audit_log = \"{}/audit.jsonl\"", auditfs.display()),
    );
    std::fs::write(daemon.path("keyd.toml"), config).unwrap();
    daemon.init();
    // keyd in a mount namespace of its own, its audit log on an 8 KiB filesystem.
    let mount = format!(
        "mount -t tmpfs -o size=8k tmpfs {} && exec \"$0\" \"$@\"",
        auditfs.display()
    );
    daemon.spawn_with(&["unshare", "-m", "sh", "-c", &mount], &[]);
    let client = daemon.client();
    let did = client.did().to_string();
    let mut signed = 0;
    let mut failure = None;
    for seq in 1..=200 {
        match client.sign_envelopes(&[&envelope(&did, seq)]) {
            Ok(_) => signed += 1,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let failure = failure.expect("the audit filesystem filled up");
    assert!(signed > 3 && signed < 200, "{signed} signed");
    assert!(failure.contains("audit log"), "{failure}");
    // And nothing after that either, not even what needs no new sequence number.
    let hash = stream::hexenc::sha256_0x(b"x");
    let commitment = stream::hexenc::key_commitment(&[1; 32]);
    assert!(client
        .sign_chunks(&[ChunkToSign {
            encrypted_data_hash: &hash,
            key_commitment: &commitment
        }])
        .is_err());
}

// 5. Two keyds on one state.

#[test]
fn a_second_keyd_on_the_same_state_or_socket_is_refused() {
    let daemon = Daemon::start();
    let (ok, stderr) = outcome(daemon.keyd("run"));
    assert!(!ok);
    assert!(stderr.contains("in use by another keyd (pid"), "{stderr}");
    // Another state directory, the same socket: the live socket is not taken over.
    let config = std::fs::read_to_string(daemon.path("keyd.toml")).unwrap();
    let other = config.replace(
        &format!("state_dir = \"{}\"", daemon.path("state").display()),
        &format!("state_dir = \"{}\"", daemon.path("state2").display()),
    );
    std::fs::create_dir_all(daemon.path("state2")).unwrap();
    std::fs::copy(
        daemon.path("state/sequence.json"),
        daemon.path("state2/sequence.json"),
    )
    .unwrap();
    std::fs::write(daemon.path("other.toml"), other).unwrap();
    let out = Command::new(KEYD)
        .args(["run", "--config"])
        .arg(daemon.path("other.toml"))
        .output()
        .unwrap();
    let (ok, stderr) = outcome(out);
    assert!(!ok);
    assert!(stderr.contains("served by another process"), "{stderr}");
    // The first one still serves.
    daemon.client();
}

// 6. Grants bind a key to the chunk it was made for.

#[test]
fn a_chunk_key_is_granted_only_for_its_own_chunk() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let mut chunks = Vec::new();
    let mut linker = stream::chain::ChainLinker::new();
    for (i, text) in [b"chunk A".as_slice(), b"chunk B"].iter().enumerate() {
        let key = client.new_chunk_keys(1).unwrap().pop().unwrap();
        let sealed = stream::chain::seal_chunk(text.to_vec(), key, &client, i as u64).unwrap();
        chunks.push(linker.link(sealed).0);
    }
    let buyer = stream::keys::BoxKey::from_secret(&stream::keys::Secret32::from_bytes([42; 32]));
    let identity = stream::access::BuyerIdentity::new("buyer-1", &buyer.public_key_hex()).unwrap();
    // Chunk A's envelope carrying chunk B's key: refused.
    let mut forged = chunks[0].clone();
    forged.encryption = chunks[1].encryption.clone();
    match client.grant(&[forged], &identity) {
        Err(SignerError::Refused(m)) => {
            assert!(m.contains("never signed") && m.contains("chunk 0"), "{m}")
        }
        other => panic!("granted: {other:?}"),
    }
    // The real ones: granted, each to its own key.
    let entries = client.grant(&chunks, &identity).unwrap();
    assert_eq!(entries.len(), 2);
    let audit = std::fs::read_to_string(daemon.path("state/audit.jsonl")).unwrap();
    let grant_line = audit
        .lines()
        .rfind(|l| l.contains("\"op\":\"grant\""))
        .unwrap();
    assert!(
        grant_line.contains("\"buyer_id\":\"buyer-1\"")
            && grant_line.contains(&buyer.public_key_hex())
            && grant_line.contains(&chunks[1].chunk_id),
        "{grant_line}"
    );
}

// 7. Resource limits.

#[test]
fn a_denied_caller_cannot_make_keyd_decode_a_large_request() {
    let daemon = Daemon::start_with(
        &format!(
            "[[allow]]\nuids = [{}]\noperations = [\"identity\"]\n",
            uid()
        ),
        "",
    );
    let before = daemon.peak_rss_kib();
    let (runtime, mut raw) = daemon.raw();
    let status = runtime
        .block_on(raw.sign_packages(v1::SignPackagesRequest {
            envelopes: vec![vec![b'x'; 30 << 20]],
        }))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let after = daemon.peak_rss_kib();
    assert!(
        after < before + 10 * 1024,
        "keyd's peak memory grew from {before} to {after} KiB"
    );
}

#[test]
fn a_request_over_its_operation_s_size_is_refused() {
    let daemon = Daemon::start();
    let (runtime, mut raw) = daemon.raw();
    let status = runtime
        .block_on(raw.sign_chunk_hashes(v1::SignChunkHashesRequest {
            hashes: vec!["0".repeat(2 << 20)],
            key_commitments: vec![],
        }))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("sign_chunk_hashes"), "{status:?}");
}

#[test]
fn a_silent_connection_is_closed() {
    let daemon = Daemon::start_with(&Daemon::allow_all(), "header_timeout_ms = 300");
    let mut stream = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    // keyd may send its HTTP/2 settings first; then it closes.
    while stream.read(&mut buffer).unwrap_or(0) > 0 {}
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

/// Hundreds of idle connections from other users neither lock out a real client nor make
/// keyd spin at its descriptor limit.
#[test]
fn idle_connections_from_others_lock_nobody_out() {
    if !is_root()
        || !Path::new("/usr/bin/python3").exists()
        || !Path::new("/usr/bin/setpriv").exists()
    {
        eprintln!("skipped: needs root, setpriv and /usr/bin/python3 to connect as other users");
        return;
    }
    let policy = format!(
        "[[allow]]\nuids = [{}]\noperations = [\"identity\", \"sign_packages\"]\n[[allow]]\nuids = [65534]\noperations = [\"identity\"]\n",
        uid()
    );
    let mut daemon = Daemon::prepare_software(
        &policy,
        "socket_group = \"nogroup\"\nmax_connections_per_uid = 8",
    );
    daemon.init();
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Few descriptors: without caps, 300 connections would exhaust them.
    daemon.spawn_with(&["prlimit", "--nofile=128:128"], &[]);
    let hold = format!(
        "import socket, time\nheld = []\nfor _ in range(300):\n    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect({:?}); held.append(s)\n    except OSError:\n        pass\nprint('connected', flush=True)\ntime.sleep(4)\n",
        daemon.socket().display().to_string()
    );
    let spawn_as = |user: &str| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                &hold,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let ticks_before = daemon.cpu_ticks();
    let mut allowed = spawn_as("65534");
    let mut denied = spawn_as("65533");
    for helper in [&mut allowed, &mut denied] {
        let mut line = [0u8; 10];
        let _ = helper.stdout.as_mut().unwrap().read(&mut line);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let client = daemon.client();
    let did = client.did().to_string();
    client.sign_envelopes(&[&envelope(&did, 1)]).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let ticks = daemon.cpu_ticks() - ticks_before;
    for mut helper in [allowed, denied] {
        let _ = helper.kill();
        let _ = helper.wait();
    }
    assert!(
        ticks < 100,
        "keyd used {ticks} ticks of CPU while the connections were held"
    );
    assert!(daemon.log().contains("too many connections from one uid"));
}

// 8. max_sequence_jump bounds a batch.

#[test]
fn one_batch_cannot_move_the_sequence_further_than_max_sequence_jump() {
    let daemon = Daemon::start_with(&Daemon::allow_all(), "max_sequence_jump = 100");
    let client = daemon.client();
    let did = client.did().to_string();
    let stairs: Vec<Vec<u8>> = (1..=150).map(|s| envelope(&did, s)).collect();
    let refs: Vec<&[u8]> = stairs.iter().map(Vec::as_slice).collect();
    match client.sign_envelopes(&refs) {
        Err(SignerError::Sequence(m)) => assert!(m.contains("max_sequence_jump 100"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.next_sequence_number().unwrap(), 0);
    client.sign_envelopes(&refs[..100]).unwrap();
}

// 10. Authorization details.

#[test]
fn a_policy_group_matches_a_supplementary_group() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to run a client as another uid");
        return;
    }
    let policy = format!(
        "[[allow]]\nuids = [{}]\noperations = [\"identity\"]\n[[allow]]\ngids = [4242]\noperations = [\"identity\"]\n",
        uid()
    );
    let mut daemon = Daemon::prepare_software(&policy, "socket_group = \"nogroup\"");
    daemon.init();
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    daemon.spawn();
    let (_bin_dir, bin) = public_copy(KEYD);
    let identity = |groups: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", groups])
            .arg(&bin)
            .args(["identity", "--socket"])
            .arg(daemon.socket())
            .output()
            .unwrap();
        outcome(out)
    };
    let (ok, stderr) = identity("--groups=4242");
    assert!(ok, "{stderr}");
    let (ok, stderr) = identity("--clear-groups");
    assert!(!ok && stderr.contains("policy"), "{stderr}");
}

#[test]
fn a_policy_or_config_others_may_write_is_refused() {
    let mut daemon = Daemon::prepare_software(&Daemon::allow_all(), "");
    daemon.init();
    std::fs::set_permissions(
        daemon.path("policy.toml"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let (ok, stderr) = outcome(daemon.keyd("run"));
    assert!(!ok);
    assert!(
        stderr.contains("policy.toml") && stderr.contains("go-w"),
        "{stderr}"
    );
    std::fs::set_permissions(
        daemon.path("policy.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(
        daemon.path("keyd.toml"),
        std::fs::Permissions::from_mode(0o620),
    )
    .unwrap();
    let (ok, stderr) = outcome(daemon.keyd("run"));
    assert!(!ok);
    assert!(stderr.contains("keyd.toml"), "{stderr}");
}

#[test]
fn a_pin_file_owned_by_someone_else_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give the PIN file away");
        return;
    }
    let Some(mut daemon) = Daemon::start_pkcs11() else {
        return;
    };
    daemon.stop();
    std::os::unix::fs::chown(daemon.path("pin"), Some(65534), None).unwrap();
    let (ok, stderr) = outcome(daemon.keyd("run"));
    assert!(!ok);
    assert!(
        stderr.contains("pin_file") && stderr.contains("owned by uid 65534"),
        "{stderr}"
    );
}

// 11. Every subcommand is hardened.

#[test]
fn every_subcommand_runs_without_core_dumps() {
    // A socket that accepts and never answers: `keyd identity` waits on it.
    let dir = tempfile::Builder::new()
        .prefix("kd")
        .tempdir_in("/tmp")
        .unwrap();
    let socket = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut child = Command::new(KEYD)
        .args(["identity", "--socket"])
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id();
    let checked = std::panic::catch_unwind(|| common::assert_no_core_dumps(pid));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}

// 12. TPM: sealed to something, never to nothing.

#[test]
fn tpm_keys_are_never_sealed_to_nothing() {
    let Some(mut daemon) = Daemon::prepare_tpm("pcrs = []\n") else {
        return;
    };
    let (ok, stderr) = outcome(daemon.keyd("init"));
    assert!(!ok);
    assert!(stderr.contains("neither pcrs nor auth_file"), "{stderr}");
    // An auth value alone: sealed, unsealed with it, not without it.
    let auth = daemon.path("tpm-auth");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&auth)
            .unwrap()
            .write_all(b"correct horse battery staple\n")
            .unwrap();
    }
    let config = std::fs::read_to_string(daemon.path("keyd.toml")).unwrap();
    let with_auth = config.replace(
        "pcrs = []\n",
        &format!("auth_file = \"{}\"\n", auth.display()),
    );
    std::fs::write(daemon.path("keyd.toml"), &with_auth).unwrap();
    daemon.init();
    daemon.spawn();
    assert_eq!(daemon.client().identity().backend_detail, "tpm");
    daemon.stop();
    std::fs::write(&auth, b"wrong\n").unwrap();
    let (ok, stderr) = outcome(daemon.keyd("run"));
    assert!(!ok);
    assert!(stderr.contains("unseal"), "{stderr}");
}

// 13 and 11 (the token's GCM IV, aes-gcm wiping its keys) are unit tests: backend::pkcs11
// and the compile-time check below.

/// AES-256's key schedule is wiped on drop (the rest of AES-GCM by keyd's `Locked`, a unit
/// test in `harden`).
#[test]
fn the_field_cipher_wipes_its_key_schedule() {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<aes::Aes256>();
}
