//! keyd as a real process on a real Unix socket, with the software backend.

mod common;

use std::path::Path;
use std::process::Command;

use common::{uid, Daemon, KEYD};

use keyd_proto::client::KeydClient;
use stream::json::{self, Value};
use stream::package::{self, DataPackage};
use stream::signer::*;

fn envelope(did: &str, seq: u64) -> Vec<u8> {
    let payload = json::parse(&format!(r#"{{"x":{seq},"é":[1.5e-7,true,null]}}"#)).unwrap();
    json::canonical_bytes(&package::envelope(
        did,
        &"2026-11-22T10:00:00Z".into(),
        &"1".into(),
        &Value::from(seq),
        &payload,
    ))
    .unwrap()
}

fn chunk<'a>(hash: &'a str, commitment: &'a str) -> ChunkToSign<'a> {
    ChunkToSign {
        encrypted_data_hash: hash,
        key_commitment: commitment,
    }
}

fn refused(result: Result<impl std::fmt::Debug, SignerError>, needle: &str) {
    match result {
        Err(SignerError::Refused(message) | SignerError::Sequence(message)) => assert!(
            message.contains(needle),
            "{message:?} does not mention {needle:?}"
        ),
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn signatures_verify_and_keys_do_their_one_job() {
    signatures_verify_on(&Daemon::start(), "software");
}

#[test]
fn pkcs11_signatures_verify_and_keys_stay_in_the_token() {
    let Some(daemon) = Daemon::start_pkcs11() else {
        return;
    };
    signatures_verify_on(&daemon, "tee");
    let status = daemon.keyd("status");
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let keys = report["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 5, "the four keys and the audit HMAC key");
    for key in keys {
        assert_eq!(
            (
                key["inToken"].as_bool(),
                key["sensitive"].as_bool(),
                key["extractable"].as_bool()
            ),
            (Some(true), Some(true), Some(false)),
            "{key}"
        );
    }
    // The software backend reports the truth too: not protected.
    let software = Daemon::start();
    let status = software.keyd("status");
    assert_eq!(status.status.code(), Some(1));
}

#[test]
fn tpm_sealed_keys_sign_and_do_not_unseal_after_pcr7_changes() {
    let Some(mut daemon) = Daemon::start_tpm() else {
        return;
    };
    signatures_verify_on(&daemon, "tee");
    let did = daemon.client().did().to_string();
    // A restart unseals the same keys.
    daemon.stop();
    daemon.spawn();
    assert_eq!(daemon.client().did(), did);
    // Extending PCR 7 (as a changed Secure Boot state would) locks the keys away.
    daemon.stop();
    let extend = Command::new("tpm2_pcrextend")
        .arg(format!("7:sha256={}", "ab".repeat(32)))
        .env("TPM2TOOLS_TCTI", daemon.tcti())
        .output()
        .unwrap();
    assert!(
        extend.status.success(),
        "{}",
        String::from_utf8_lossy(&extend.stderr)
    );
    let stderr = daemon.run_expecting_failure();
    assert!(
        stderr.contains("unseal") && stderr.contains("policy"),
        "{stderr}"
    );
}

fn signatures_verify_on(daemon: &Daemon, backend: &str) {
    let client = daemon.client();
    let did = client.did().to_string();
    assert_eq!(client.identity().backend, backend);
    assert_eq!(client.identity().recipients.len(), 2);

    // Packages: EIP-191 over canonical envelopes, verifiable by recovery.
    let envelopes: Vec<Vec<u8>> = (1..=20).map(|s| envelope(&did, s)).collect();
    let refs: Vec<&[u8]> = envelopes.iter().map(Vec::as_slice).collect();
    let signatures = client.sign_envelopes(&refs).unwrap();
    for (bytes, signature) in envelopes.iter().zip(&signatures) {
        let doc = json::parse_slice(bytes).unwrap();
        let package = DataPackage {
            did: did.clone(),
            timestamp: doc["timestamp"].clone(),
            schema_version: doc["schemaVersion"].clone(),
            sequence_number: doc["sequenceNumber"].clone(),
            payload: doc["payload"].clone(),
            signature: package::signature_hex(signature),
            signing_key_id: None,
        };
        package.verify().unwrap();
    }
    assert_eq!(client.next_sequence_number().unwrap(), 21);

    // Chunk hashes: Ed25519 with the chain key.
    let hash = stream::hexenc::sha256_0x(b"chunk");
    let commitment = stream::hexenc::key_commitment(&[5; 32]);
    let signature = client.sign_chunks(&[chunk(&hash, &commitment)]).unwrap()[0];
    let chain = ed25519_dalek::VerifyingKey::from_bytes(
        &hex::decode(&client.identity().chain_public_key_hex)
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .unwrap();
    chain
        .verify_strict(
            hash.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .unwrap();

    // Chunk keys: sealed to owner and machine, commitments right.
    let keys = client.new_chunk_keys(3).unwrap();
    let owner = stream::keys::BoxKey::from_secret(&stream::keys::Secret32::from_bytes([11u8; 32]));
    for key in &keys {
        assert_eq!(
            key.commitment,
            stream::hexenc::key_commitment(key.key.expose())
        );
        assert_eq!(
            key.recipients
                .iter()
                .map(|r| r.recipient_id.as_str())
                .collect::<Vec<_>>(),
            ["owner-1", "machine-1"]
        );
        let sealed = hex::decode(&key.recipients[0].wrapped_key_hex).unwrap();
        assert_eq!(
            stream::sealed::open_key(&sealed, &owner).unwrap().expose(),
            key.key.expose()
        );
    }

    // Field encryption: AES-256-GCM under the field key.
    let ciphertexts = client
        .encrypt_fields(&[b"{\"lat\":1.5}".as_slice()])
        .unwrap();
    use base64::Engine as _;
    let packed = base64::engine::general_purpose::STANDARD
        .decode(&ciphertexts[0])
        .unwrap();
    assert_eq!(packed.len(), 12 + 11 + 16);
}

#[test]
fn the_identity_and_chain_keys_refuse_anything_else() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let did = client.did().to_string();
    let good = envelope(&did, 1);
    let spaced = String::from_utf8(good.clone())
        .unwrap()
        .replace(',', ", ")
        .into_bytes();
    refused(client.sign_envelopes(&[&spaced]), "canonical");
    let foreign = envelope("did:peaq:0x00000000000000000000000000000000000000aa", 2);
    refused(
        client.sign_envelopes(&[&good, &foreign]),
        "envelope 1: did is not",
    );
    refused(
        client.sign_envelopes(&[&[0xde, 0xad, 0xbe, 0xef]]),
        "not JSON",
    );
    let tx = br#"{"chainId":1,"nonce":0,"to":"0x00","value":1}"#;
    refused(client.sign_envelopes(&[tx.as_slice()]), "exactly the keys");
    // Nothing was signed by the refused batches.
    assert_eq!(client.next_sequence_number().unwrap(), 0);
    let upper = stream::hexenc::sha256_0x(b"x")
        .to_uppercase()
        .replace("0X", "0x");
    let commitment = stream::hexenc::key_commitment(&[5; 32]);
    refused(
        client.sign_chunks(&[chunk(&upper, &commitment)]),
        "lowercase",
    );
    refused(client.sign_chunks(&[chunk("hello", &commitment)]), "hash 0");
    let hash = stream::hexenc::sha256_0x(b"x");
    refused(
        client.sign_chunks(&[chunk(&hash, "sha256:00")]),
        "keyCommitment",
    );
}

fn dataset(did: &str, chain_key: &str) -> stream::dataset::DatasetDocument {
    let id = format!("0x{}", "02".repeat(32));
    stream::dataset::DatasetDocument {
        schema_version: stream::dataset::DATASET_SCHEMA_VERSION.into(),
        machine_did: did.into(),
        topic: "/imu".into(),
        first_index: 0,
        last_index: 0,
        tree_size: 1,
        merkle_root: format!("0x{}", "01".repeat(32)),
        first_chunk_id: id.clone(),
        last_chunk_id: id,
        time_range: None,
        chain_public_key_hex: chain_key.into(),
        created_at: "2026-12-01T10:00:00Z".into(),
        title: Some("IMU, one chunk".into()),
        description: None,
        terms: None,
        signature: None,
    }
}

#[test]
fn datasets_of_this_machine_are_signed_and_audited_and_nothing_else() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let did = client.did().to_string();
    let chain_key = client.identity().chain_public_key_hex.clone();
    let doc = dataset(&did, &chain_key);
    let bytes = doc.signing_bytes().unwrap();
    let signature = DatasetSigner::sign_dataset(&client, &bytes).unwrap();
    let signed = doc
        .clone()
        .signed(DatasetSigner::key_id(&client), &signature);
    signed.verify_signature().unwrap();
    assert_eq!(
        signed.signature.as_ref().unwrap().key_id,
        client.identity().identity_key_id
    );
    let audit = std::fs::read_to_string(daemon.path("state/audit.jsonl")).unwrap();
    let line = audit.lines().find(|l| l.contains("sign_dataset")).unwrap();
    assert!(line.contains("\"merkle_root\":\"0x0101"), "{line}");
    assert!(line.contains("\"topic\":\"/imu\""), "{line}");

    let foreign = dataset(
        "did:peaq:0x00000000000000000000000000000000000000aa",
        &chain_key,
    );
    refused(
        client.sign_dataset(&foreign.signing_bytes().unwrap()),
        "machineDid",
    );
    let other_chain = dataset(&did, &"ab".repeat(32));
    refused(
        client.sign_dataset(&other_chain.signing_bytes().unwrap()),
        "chain key",
    );
    refused(
        client.sign_dataset(&signed.to_file_text().unwrap().into_bytes()),
        "canonical",
    );
    // A package envelope is not a dataset, and a dataset is not a package envelope.
    refused(client.sign_dataset(&envelope(&did, 1)), "document");
    refused(client.sign_envelopes(&[&bytes]), "exactly the keys");
}

#[test]
fn sequence_numbers_never_repeat_across_kill_9() {
    let mut daemon = Daemon::start();
    let client = daemon.client();
    let did = client.did().to_string();
    let sign = |client: &KeydClient, seqs: &[u64]| {
        let envelopes: Vec<Vec<u8>> = seqs.iter().map(|s| envelope(&did, *s)).collect();
        let refs: Vec<&[u8]> = envelopes.iter().map(Vec::as_slice).collect();
        client.sign_envelopes(&refs)
    };
    sign(&client, &[1, 2, 3, 5]).unwrap();
    refused(sign(&client, &[5]), "not above 5");
    refused(sign(&client, &[4]), "not above 5");
    refused(sign(&client, &[6, 6]), "item 1");
    sign(&client, &[6]).unwrap();
    drop(client);
    daemon.kill9();
    daemon.spawn();
    let client = daemon.client();
    let next = client.next_sequence_number().unwrap();
    assert!(
        next > 6,
        "continues above everything that may have been signed, got {next}"
    );
    for seq in [1, 5, 6, next - 1] {
        refused(sign(&client, &[seq]), "not above");
    }
    sign(&client, &[next]).unwrap();
    // A second crash right after a reservation.
    drop(client);
    daemon.kill9();
    daemon.spawn();
    let client = daemon.client();
    refused(sign(&client, &[next]), "not above");
}

#[test]
fn callers_outside_the_policy_are_denied_and_audited() {
    let daemon = Daemon::start_with(
        &format!(
            "[[allow]]\nuids = [{}]\noperations = [\"identity\"]\n",
            uid()
        ),
        "",
    );
    let client = daemon.client(); // identity is allowed
    let did = client.did().to_string();
    let denied = |r: Result<_, SignerError>| match r {
        Err(SignerError::Denied(m)) => assert!(m.contains("policy"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("allowed"),
    };
    denied(client.sign_envelopes(&[&envelope(&did, 1)]).map(|_| ()));
    let hash = stream::hexenc::sha256_0x(b"x");
    let commitment = stream::hexenc::key_commitment(&[5; 32]);
    denied(client.sign_chunks(&[chunk(&hash, &commitment)]).map(|_| ()));
    denied(client.new_chunk_keys(1).map(|_| ()));
    denied(client.encrypt_fields(&[b"1".as_slice()]).map(|_| ()));
    let buyer = stream::access::BuyerIdentity::new("b", &"11".repeat(32)).unwrap();
    denied(client.grant(&[], &buyer).map(|_| ()));
    denied(client.sign_dataset(b"{}").map(|_| ()));
    let audit = std::fs::read_to_string(daemon.path("state/audit.jsonl")).unwrap();
    assert_eq!(audit.matches("\"result\":\"denied\"").count(), 6, "{audit}");
}

#[test]
fn another_uid_is_denied_by_peer_credentials() {
    if uid() != 0 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to run a client as another uid");
        return;
    }
    // The socket is group nogroup so that uid 65534 can connect; the policy allows only us.
    let daemon = Daemon::start_with(
        &format!("[[allow]]\nuids = [{}]\noperations = [\"identity\", \"sign_packages\", \"sign_chunk_hashes\", \"new_chunk_keys\", \"grant\", \"encrypt_fields\"]\n", uid()),
        "socket_group = \"nogroup\"",
    );
    // nobody needs to reach the binary and the socket's directory.
    let bin_dir = tempfile::Builder::new()
        .prefix("kdbin")
        .tempdir_in("/tmp")
        .unwrap();
    let bin = bin_dir.path().join("keyd");
    std::fs::copy(KEYD, &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["identity", "--socket"])
        .arg(daemon.socket())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("uid 65534") && stderr.contains("policy"),
        "{stderr}"
    );
    // ... while we are served.
    daemon.client();
}

#[test]
fn the_audit_chain_is_keyed_and_catches_edits_cuts_and_rewrites() {
    let mut daemon = Daemon::start();
    let client = daemon.client();
    let did = client.did().to_string();
    for seq in 1..=3 {
        client.sign_envelopes(&[&envelope(&did, seq)]).unwrap();
    }
    let _ = client.sign_chunks(&[chunk("nope", "sha256:00")]);
    drop(client);
    daemon.stop(); // the checkpoint is written at shutdown
    let audit = daemon.path("state/audit.jsonl");
    let verify = |path: &Path| {
        let out = Command::new(KEYD)
            .envs(daemon.env())
            .args(["audit", "verify", "--config"])
            .arg(daemon.path("keyd.toml"))
            .arg("--log")
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = verify(&audit);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the checkpoint covers"), "{stderr}");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.contains("\"op\":\"sign_chunk_hashes\"") && text.contains("InvalidArgument"));
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let write = |name: &str, kept: &[String]| {
        let path = daemon.path(name);
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        path
    };
    let mut edited = lines.clone();
    edited[2] = edited[2].replace("\"batch\":1", "\"batch\":2");
    let (code, stderr) = verify(&write("edited.jsonl", &edited));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("line 3"), "{stderr}");
    let mut deleted = lines.clone();
    deleted.remove(1);
    let (code, stderr) = verify(&write("deleted.jsonl", &deleted));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("line 2"), "{stderr}");
    // The last lines cut: what is left verifies line by line, but not against the checkpoint.
    let (code, stderr) = verify(&write("cut.jsonl", &lines[..lines.len() - 2]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("truncated"), "{stderr}");
    // The whole log rewritten with an unkeyed hash chain (what the old format allowed).
    let rewritten: Vec<String> = lines
        .iter()
        .map(|l| l.replace("\"result\":\"ok\"", "\"result\":\"nothing\""))
        .collect();
    let (code, stderr) = verify(&write("rewritten.jsonl", &rewritten));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("MAC"), "{stderr}");
    // keyd refuses to continue a log that was cut.
    write("state/audit.jsonl", &lines[..2]);
    let out = daemon.keyd("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_core_dumps_and_no_key_bytes_in_any_output() {
    let daemon = Daemon::start();
    common::assert_no_core_dumps(daemon.pid());

    let client = daemon.client();
    let did = client.did().to_string();
    client.sign_envelopes(&[&envelope(&did, 1)]).unwrap();
    let _ = client.sign_envelopes(&[&envelope(&did, 1)]);
    let _ = client.sign_chunks(&[chunk("bad", "sha256:00")]);
    let _ = client.new_chunk_keys(2).unwrap();
    let debug = format!("{client:?}");
    drop(client);
    let everything = format!(
        "{}{}{debug}",
        daemon.log(),
        std::fs::read_to_string(daemon.path("state/audit.jsonl")).unwrap()
    );
    assert!(
        everything.contains("SOFTWARE BACKEND"),
        "keyd says loudly that it is a development backend"
    );
    for secret in daemon.secrets() {
        assert!(
            !everything.contains(&secret),
            "a key appeared in logs, audit or Debug output"
        );
    }
}

/// A CA, a server certificate for localhost and 127.0.0.1, and two client certificates.
fn make_pki(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=keyd test CA",
                "-days",
                "2",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n").unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for (name, ext) in [
        ("server", "server.ext"),
        ("client1", "client.ext"),
        ("client2", "client.ext"),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
        openssl(&[
            "x509",
            "-in",
            &crt,
            "-outform",
            "DER",
            "-out",
            &format!("{name}.der"),
        ]);
    }
}

/// An identity call over TLS; `client` names the certificate to present, if any.
fn tls_identity(port: u16, pki: &Path, client: Option<&str>) -> Result<String, String> {
    use keyd_proto::v1;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .domain_name("localhost");
    if let Some(name) = client {
        tls = tls.identity(Identity::from_pem(
            read(&format!("{name}.crt")),
            read(&format!("{name}.key")),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        v1::keyd_client::KeydClient::new(channel)
            .identity(v1::IdentityRequest {})
            .await
            .map(|r| r.into_inner().did)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
}

#[test]
fn tcp_listener_requires_an_allowed_client_certificate() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: openssl is needed to make test certificates");
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    use sha2::Digest;
    let allowed = hex::encode(sha2::Sha256::digest(
        std::fs::read(pki.path().join("client1.der")).unwrap(),
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = pki.path().display();
    let daemon = Daemon::start_with(
        &format!("{}[[allow]]\nclient_certs = [\"sha256:{allowed}\"]\noperations = [\"identity\"]\n", Daemon::allow_all()),
        &format!("[tcp]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{p}/server.crt\"\nkey = \"{p}/server.key\"\nclient_ca = \"{p}/ca.crt\"\n"),
    );
    let did = daemon.client().did().to_string();
    // Give the TCP listener a moment after the Unix socket appeared.
    let mut result = Err(String::new());
    for _ in 0..50 {
        result = tls_identity(port, pki.path(), Some("client1"));
        if result.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(result, Ok(did));
    let denied = tls_identity(port, pki.path(), Some("client2")).unwrap_err();
    assert!(
        denied.contains("PermissionDenied") && denied.contains("client certificate sha256:"),
        "{denied}"
    );
    assert!(
        tls_identity(port, pki.path(), None).is_err(),
        "no client certificate, no service"
    );
    let audit = std::fs::read_to_string(daemon.path("state/audit.jsonl")).unwrap();
    assert!(
        audit.contains(&format!("\"client_cert\":\"{allowed}\"")),
        "{audit}"
    );
}
