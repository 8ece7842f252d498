//! The `peaqos` binary: exit codes, errors that name what was wrong, and no secret in
//! any output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn peaqos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peaqos"))
        .args(args)
        .output()
        .expect("peaqos runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Keys {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let out = peaqos(&["keys", "generate", "--out", dir.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        Keys { _tmp: tmp, dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap()
            .trim()
            .to_string()
    }
    /// The hex of every secret key file, without any 0x prefix.
    fn secrets(&self) -> Vec<String> {
        [
            "identity", "chain", "owner", "operator", "machine", "buyer", "field",
        ]
        .iter()
        .map(|n| {
            self.read(&format!("{n}.key"))
                .trim_start_matches("0x")
                .to_string()
        })
        .collect()
    }
    /// `peaqos stream sign` with this set's keys, signing as `did`.
    fn sign(&self, map: &Path, dir: &Path, did: &str) -> Output {
        let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
        let (identity, field) = (self.path("identity.key"), self.path("field.key"));
        peaqos(&[
            "stream",
            "sign",
            "--map",
            map.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--signing-key-file",
            &identity,
            "--field-key-file",
            &field,
            "--did",
            did,
            "--key-id",
            "k",
        ])
    }

    fn publish(&self, input: &Path, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "stream",
            "publish",
            "--input",
            input.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ];
        let owner = self.read("owner.pub");
        let operator = self.read("operator.pub");
        let machine = self.read("machine.pub");
        let chain = self.path("chain.key");
        let did = self.read("identity.did");
        args.extend([
            "--owner-public-key",
            &owner,
            "--operator-public-key",
            &operator,
            "--machine-public-key",
            &machine,
        ]);
        args.extend([
            "--signing-key-file",
            &chain,
            "--machine-did",
            &did,
            "--machine-key-id",
            "k1",
        ]);
        args.extend(extra);
        peaqos(&args)
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = peaqos(&["stream", "publish"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = peaqos(&["stream", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_input_names_the_flag_or_file_and_exits_2() {
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.bin");
    std::fs::write(&input, b"hello").unwrap();
    let out_dir = tmp.path().join("pub");

    let missing = keys.publish(&tmp.path().join("nope.bin"), &out_dir, &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("nope.bin"), "{}", text(&missing));

    let zero = keys.publish(&input, &out_dir, &["--chunk-size", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(text(&zero).contains("--chunk-size"));

    let bad_key_file = tmp.path().join("bad.key");
    std::fs::write(&bad_key_file, format!("{}zz\n", "a1".repeat(31))).unwrap();
    let out = peaqos(&[
        "stream",
        "verify",
        "--chunk-dir",
        tmp.path().to_str().unwrap(),
        "--recipient-key-file",
        bad_key_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let shown = text(&out);
    assert!(
        shown.contains("bad.key") && !shown.contains(&"a1".repeat(31)),
        "{shown}"
    );

    let out = peaqos(&[
        "stream",
        "verify",
        "--chunk-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no chunk files"), "{}", text(&out));

    let owner = keys.read("owner.pub");
    let bad_pub = owner[..62].to_string();
    let machine = keys.read("machine.pub");
    let chain = keys.path("chain.key");
    let out = peaqos(&[
        "stream",
        "publish",
        "--input",
        input.to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
        "--owner-public-key",
        &bad_pub,
        "--operator-public-key",
        &machine,
        "--machine-public-key",
        &machine,
        "--signing-key-file",
        &chain,
        "--machine-did",
        "did:peaq:0x00",
        "--machine-key-id",
        "k",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--owner-public-key"), "{}", text(&out));
}

#[test]
fn sign_refuses_a_did_that_is_not_the_keys() {
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("map.yaml"), "topics: []\n").unwrap();
    std::fs::write(tmp.path().join("in.jsonl"), "").unwrap();
    let other = format!("did:peaq:0x{}", "12".repeat(20));
    let out = keys.sign(&tmp.path().join("map.yaml"), tmp.path(), &other);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("--did") && text(&out).contains(&other),
        "{}",
        text(&out)
    );
    assert!(!tmp.path().join("out.jsonl").exists());
}

#[test]
fn map_errors_name_file_line_and_key() {
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    let map = tmp.path().join("map.yaml");
    std::fs::write(&map, "topics:\n  - topic: /a\n    field_rules:\n      rules:\n        - field_path: x\n          action: exclude\n          strategy: hash\n").unwrap();
    std::fs::write(tmp.path().join("in.jsonl"), "").unwrap();
    let out = keys.sign(&map, tmp.path(), &keys.read("identity.did"));
    assert_eq!(out.status.code(), Some(2));
    let shown = text(&out);
    assert!(
        shown.contains("map.yaml:7: topics[0].field_rules.rules[0].strategy: unknown field"),
        "{shown}"
    );
}

#[test]
fn keys_are_never_overwritten() {
    let keys = Keys::new();
    let before = keys.read("identity.key");
    let out = peaqos(&["keys", "generate", "--out", keys.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(keys.read("identity.key"), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.dir.join("identity.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn no_secret_in_any_output() {
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.bin");
    std::fs::write(&input, vec![7u8; 3000]).unwrap();
    let pub_dir = tmp.path().join("pub");
    let access = tmp.path().join("access");
    let mut outputs = vec![keys.publish(&input, &pub_dir, &["--chunk-size", "1000"])];
    outputs.push(keys.publish(&input, &pub_dir, &["--chunk-size", "1000", "--json"]));
    let p = |p: &Path| p.to_str().unwrap().to_string();
    for role in ["owner", "operator", "machine", "buyer"] {
        outputs.push(peaqos(&[
            "stream",
            "verify",
            "--chunk-dir",
            &p(&pub_dir),
            "--recipient-key-file",
            &keys.path(&format!("{role}.key")),
            "--json",
        ]));
    }
    let buyer_pub = keys.read("buyer.pub");
    let grant = |json: bool| {
        let mut a = vec![
            "stream".to_string(),
            "grant".into(),
            "--chunk-dir".into(),
            p(&pub_dir),
            "--buyer-public-key".into(),
            buyer_pub.clone(),
            "--buyer-id".into(),
            "b1".into(),
            "--owner-private-key-file".into(),
            keys.path("owner.key"),
            "--output-dir".into(),
            p(&access),
        ];
        if json {
            a.push("--json".into());
        }
        Command::new(env!("CARGO_BIN_EXE_peaqos"))
            .args(&a)
            .output()
            .unwrap()
    };
    outputs.push(grant(false));
    outputs.push(grant(true));
    // A wrong key for consume, and a right one.
    for key in ["owner.key", "buyer.key"] {
        outputs.push(peaqos(&[
            "stream",
            "consume",
            "--chunk-dir",
            &p(&pub_dir),
            "--access-dir",
            &p(&access),
            "--data-dir",
            &p(&pub_dir),
            "--buyer-private-key-file",
            &keys.path(key),
            "--buyer-id",
            "b1",
            "--output",
            &p(&tmp.path().join("out.bin")),
            "--json",
        ]));
    }
    assert_eq!(
        std::fs::read(tmp.path().join("out.bin")).unwrap(),
        vec![7u8; 3000]
    );
    let all: String = outputs.iter().map(text).collect();
    for secret in keys.secrets() {
        assert!(
            !all.contains(&secret),
            "a secret key appeared in the output"
        );
        assert!(!all.contains(&secret.to_uppercase()));
    }
}

#[test]
fn consume_with_the_wrong_key_fails_and_leaves_no_output() {
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.bin");
    std::fs::write(&input, vec![1u8; 100]).unwrap();
    let pub_dir = tmp.path().join("pub");
    assert!(keys.publish(&input, &pub_dir, &[]).status.success());
    let access = tmp.path().join("access");
    let out = peaqos(&[
        "stream",
        "grant",
        "--chunk-dir",
        pub_dir.to_str().unwrap(),
        "--buyer-public-key",
        &keys.read("buyer.pub"),
        "--buyer-id",
        "b1",
        "--owner-private-key-file",
        &keys.path("machine.key"),
        "--output-dir",
        access.to_str().unwrap(),
    ]);
    // The machine key is a recipient too, so it may grant.
    assert!(out.status.success(), "{}", text(&out));
    let output = tmp.path().join("out.bin");
    let out = peaqos(&[
        "stream",
        "consume",
        "--chunk-dir",
        pub_dir.to_str().unwrap(),
        "--access-dir",
        access.to_str().unwrap(),
        "--data-dir",
        pub_dir.to_str().unwrap(),
        "--buyer-private-key-file",
        &keys.path("owner.key"),
        "--buyer-id",
        "b1",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("chunk 0"), "{}", text(&out));
    assert!(!output.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.'))
            .count(),
        0
    );
}

#[test]
fn republishing_a_shorter_input_removes_stale_chunks() {
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.bin");
    let pub_dir = tmp.path().join("pub");
    std::fs::write(&input, vec![1u8; 5000]).unwrap();
    assert!(keys
        .publish(&input, &pub_dir, &["--chunk-size", "1000"])
        .status
        .success());
    std::fs::write(&input, vec![2u8; 1500]).unwrap();
    assert!(keys
        .publish(&input, &pub_dir, &["--chunk-size", "1000"])
        .status
        .success());
    assert!(!pub_dir.join("chunk-2.json").exists() && !pub_dir.join("chunk-4.bin").exists());
    let out = peaqos(&[
        "stream",
        "verify",
        "--chunk-dir",
        pub_dir.to_str().unwrap(),
        "--recipient-key-file",
        &keys.path("owner.key"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn verify_takes_a_directory_of_published_directories() {
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.bin");
    std::fs::write(&input, vec![3u8; 2500]).unwrap();
    let root = tmp.path().join("out");
    for topic in ["imu", "gps"] {
        let dir = root.join(topic);
        let out = keys.publish(&input, &dir, &["--chunk-size", "1000"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let verify = |json: bool| {
        let mut args = vec!["stream", "verify", "--chunk-dir", root.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        peaqos(&args)
    };
    let out = verify(false);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("gps: ✓ 3 chunks valid")
            && text(&out).contains("imu: ✓ 3 chunks valid")
    );

    // One tampered chain fails the whole run and is named.
    let bin = root.join("imu").join("chunk-1.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&bin, bytes).unwrap();
    let out = verify(true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["chains"]["gps"]["valid"], true);
    assert_eq!(report["chains"]["imu"]["index"], 1);
}

/// A low-order X25519 key (all zeros, say) makes every shared secret zero: a chunk key
/// sealed to it opens for anyone. `publish` and `grant` refuse one, naming the flag.
#[test]
fn low_order_public_keys_are_refused() {
    let keys = Keys::new();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.bin");
    std::fs::write(&input, b"hello").unwrap();
    let out_dir = tmp.path().join("pub");
    let zeros = "00".repeat(32);
    let machine = keys.read("machine.pub");
    let chain = keys.path("chain.key");
    let out = peaqos(&[
        "stream",
        "publish",
        "--input",
        input.to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
        "--owner-public-key",
        &machine,
        "--operator-public-key",
        &zeros,
        "--machine-public-key",
        &machine,
        "--signing-key-file",
        &chain,
        "--machine-did",
        "did:peaq:0x00",
        "--machine-key-id",
        "k",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let shown = text(&out);
    assert!(
        shown.contains("--operator-public-key") && shown.contains("low-order"),
        "{shown}"
    );
    assert!(
        !out_dir.join("chunk-0.json").exists(),
        "nothing sealed to it"
    );

    assert!(keys.publish(&input, &out_dir, &[]).status.success());
    let access = tmp.path().join("access");
    let owner_key = keys.path("owner.key");
    let out = peaqos(&[
        "stream",
        "grant",
        "--chunk-dir",
        out_dir.to_str().unwrap(),
        "--buyer-public-key",
        &format!("ec{}7f", "ff".repeat(30)),
        "--buyer-id",
        "b",
        "--owner-private-key-file",
        &owner_key,
        "--output-dir",
        access.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("--buyer-public-key") && text(&out).contains("low-order"),
        "{}",
        text(&out)
    );
    assert!(!access.exists());
}
