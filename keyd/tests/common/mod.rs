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
        std::fs::write(d.join("keyd.toml"), config).unwrap();
        let init = Command::new(KEYD)
            .args(["init", "--config"])
            .arg(d.join("keyd.toml"))
            .output()
            .unwrap();
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
