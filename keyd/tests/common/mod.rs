//! A real keyd process on a real Unix socket (software backend), for tests and benches.
#![allow(dead_code)] // each test or bench target uses a part

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyd_proto::client::KeydClient;

pub const KEYD: &str = env!("CARGO_BIN_EXE_keyd");

pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

pub fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

impl Daemon {
    /// Provisions keys and starts keyd; `policy` is the policy file's text.
    pub fn start_with(policy: &str, extra_config: &str) -> Daemon {
        Self::start_backend(policy, extra_config, false)
    }

    /// keyd on a fresh SoftHSM token; `None` when SoftHSM is not installed.
    pub fn start_pkcs11() -> Option<Daemon> {
        if !std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so").exists() {
            eprintln!("skipped: SoftHSM is not installed (scripts/setup installs it)");
            return None;
        }
        Some(Self::start_backend(&Self::allow_all(), "", true))
    }

    /// The environment keyd's processes need (SoftHSM's configuration for pkcs11).
    pub fn env(&self) -> Vec<(String, String)> {
        let conf = self.path("softhsm2.conf");
        if conf.exists() {
            vec![("SOFTHSM2_CONF".into(), conf.display().to_string())]
        } else {
            vec![]
        }
    }

    fn start_backend(policy: &str, extra_config: &str, pkcs11: bool) -> Daemon {
        // Short paths: a Unix socket path has at most 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("kd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("policy.toml"), policy).unwrap();
        let owner = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([11u8; 32]));
        let config = format!(
            "backend = \"software\"\nsocket = \"{0}/run/keyd.sock\"\npolicy = \"{0}/policy.toml\"\nstate_dir = \"{0}/state\"\naudit_log = \"{0}/state/audit.jsonl\"\n{extra_config}\n[software]\nkey_file = \"{0}/state/keys.json\"\n[[recipients]]\nid = \"owner-1\"\ntype = \"owner\"\npublic_key_hex = \"{1}\"\n",
            d.display(),
            hex::encode(owner.as_bytes())
        );
        let config = if pkcs11 {
            std::fs::create_dir_all(d.join("tokens")).unwrap();
            std::fs::write(d.join("softhsm2.conf"), format!("directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n", d.display())).unwrap();
            let init = Command::new("softhsm2-util")
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    "keyd-test",
                    "--so-pin",
                    "87654321",
                    "--pin",
                    "24681357",
                ])
                .env("SOFTHSM2_CONF", d.join("softhsm2.conf"))
                .output()
                .unwrap();
            assert!(
                init.status.success(),
                "{}",
                String::from_utf8_lossy(&init.stderr)
            );
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(d.join("pin"))
                .unwrap()
                .write_all(b"24681357\n")
                .unwrap();
            let table = format!(
                "[pkcs11]\ntoken_label = \"keyd-test\"\npin_file = \"{}/pin\"\n",
                d.display()
            );
            config
                .replace(
                    &format!(
                        "[software]\nkey_file = \"{}/state/keys.json\"\n",
                        d.display()
                    ),
                    &table,
                )
                .replace("backend = \"software\"", "backend = \"pkcs11\"")
        } else {
            config
        };
        std::fs::write(d.join("keyd.toml"), config).unwrap();
        let mut init = Command::new(KEYD);
        init.args(["init", "--config"]).arg(d.join("keyd.toml"));
        if pkcs11 {
            init.env("SOFTHSM2_CONF", d.join("softhsm2.conf"));
        }
        let init = init.output().unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut daemon = Daemon { dir, child: None };
        daemon.spawn();
        daemon
    }

    /// Everything allowed for the current user; a small sequence reservation so that tests
    /// cross reservation boundaries.
    pub fn start() -> Daemon {
        Self::start_with(&Self::allow_all(), "sequence_reserve = 16")
    }

    /// Everything allowed for the current user, keyd's default settings.
    pub fn start_default() -> Daemon {
        Self::start_with(&Self::allow_all(), "")
    }

    pub fn allow_all() -> String {
        format!("[[allow]]\nuids = [{}]\noperations = [\"identity\", \"sign_packages\", \"sign_chunk_hashes\", \"new_chunk_keys\", \"grant\", \"encrypt_fields\"]\n", uid())
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("keyd.log"))
            .unwrap();
        let child = Command::new(KEYD)
            .envs(self.env())
            .args(["run", "--config"])
            .arg(self.path("keyd.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while !self.socket().exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "keyd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn socket(&self) -> PathBuf {
        self.path("run/keyd.sock")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("keyd.log")).unwrap_or_default()
    }
    pub fn client(&self) -> KeydClient {
        KeydClient::connect(&self.socket()).unwrap()
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    /// Every secret in the key file, as hex.
    pub fn secrets(&self) -> Vec<String> {
        let keys: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.path("state/keys.json")).unwrap())
                .unwrap();
        ["identity", "chain", "box", "field"]
            .iter()
            .map(|k| keys[k].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending SIGTERM to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
