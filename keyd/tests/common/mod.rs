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
    /// The software TPM, for the tpm backend: a child of the test, stopped with it.
    swtpm: Option<Child>,
}

/// Starts swtpm on two free loopback ports; returns it and its TCTI.
fn start_swtpm(state: &std::path::Path) -> (Child, String) {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port == u16::MAX || std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
            continue;
        }
        let mut child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                break; // lost a race for the port: try others
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, format!("swtpm:host=127.0.0.1,port={port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not start swtpm");
}

/// Asserts that process `pid` may write no core file (soft and hard limit 0).
pub fn assert_no_core_dumps(pid: u32) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().filter(|w| *w == "0").count(),
        2,
        "{core}"
    );
}

pub fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

impl Daemon {
    /// Provisions keys and starts keyd; `policy` is the policy file's text.
    pub fn start_with(policy: &str, extra_config: &str) -> Daemon {
        Self::start_backend(policy, extra_config, Backend::Software)
    }

    /// keyd with keys sealed to a fresh swtpm, bound to PCR 7; `None` without swtpm.
    pub fn start_tpm() -> Option<Daemon> {
        if Command::new("swtpm").arg("--version").output().is_err() {
            eprintln!("skipped: swtpm is not installed (scripts/setup installs it)");
            return None;
        }
        Some(Self::start_backend(&Self::allow_all(), "", Backend::Tpm))
    }

    /// The TCTI of this daemon's swtpm.
    pub fn tcti(&self) -> String {
        let config = std::fs::read_to_string(self.path("keyd.toml")).unwrap();
        config
            .lines()
            .find_map(|l| l.strip_prefix("tcti = \""))
            .unwrap()
            .trim_end_matches('"')
            .to_string()
    }

    /// Stops keyd (SIGTERM) without starting it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Runs `keyd SUBCOMMAND --config <this daemon's config>` to completion; a `run` that
    /// starts serving instead of failing is stopped after 10 s (and reported as a success).
    pub fn keyd(&self, subcommand: &str) -> std::process::Output {
        let mut child = Command::new(KEYD)
            .envs(self.env())
            .args([subcommand, "--config"])
            .arg(self.path("keyd.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().unwrap().is_none() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        child.wait_with_output().unwrap()
    }

    /// Runs `keyd run` in the foreground, expecting it to fail; returns its stderr.
    pub fn run_expecting_failure(&self) -> String {
        let out = self.keyd("run");
        assert!(!out.status.success(), "keyd started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// keyd on a fresh SoftHSM token; `None` when SoftHSM is not installed.
    pub fn start_pkcs11() -> Option<Daemon> {
        if !std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so").exists() {
            eprintln!("skipped: SoftHSM is not installed (scripts/setup installs it)");
            return None;
        }
        Some(Self::start_backend(&Self::allow_all(), "", Backend::Pkcs11))
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

    fn start_backend(policy: &str, extra_config: &str, backend: Backend) -> Daemon {
        let mut daemon = Self::prepare(policy, extra_config, backend);
        daemon.init();
        daemon.spawn();
        daemon
    }

    /// A directory with a config (software backend) and policy, keys not yet made.
    pub fn prepare_software(policy: &str, extra_config: &str) -> Daemon {
        Self::prepare(policy, extra_config, Backend::Software)
    }

    /// A directory with a config (keys sealed to a fresh swtpm) and policy, keys not yet made;
    /// `None` without swtpm.
    pub fn prepare_tpm(tpm_table_extra: &str) -> Option<Daemon> {
        if Command::new("swtpm").arg("--version").output().is_err() {
            eprintln!("skipped: swtpm is not installed (scripts/setup installs it)");
            return None;
        }
        let daemon = Self::prepare(&Self::allow_all(), "", Backend::Tpm);
        let config = std::fs::read_to_string(daemon.path("keyd.toml")).unwrap();
        std::fs::write(
            daemon.path("keyd.toml"),
            config.replace("pcrs = [7]\n", tpm_table_extra),
        )
        .unwrap();
        Some(daemon)
    }

    /// `keyd init`, expecting success.
    pub fn init(&mut self) {
        let init = self.keyd("init");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
    }

    fn prepare(policy: &str, extra_config: &str, backend: Backend) -> Daemon {
        // Short paths: a Unix socket path has at most 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("kd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("policy.toml"), policy).unwrap();
        let owner = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([11u8; 32]));
        let mut swtpm = None;
        let (name, table) = match backend {
            Backend::Software => (
                "software",
                format!(
                    "[software]\nkey_file = \"{}/state/keys.json\"\n",
                    d.display()
                ),
            ),
            Backend::Pkcs11 => {
                init_softhsm_token(d);
                (
                    "pkcs11",
                    format!(
                        "[pkcs11]\ntoken_label = \"keyd-test\"\npin_file = \"{}/pin\"\n",
                        d.display()
                    ),
                )
            }
            Backend::Tpm => {
                std::fs::create_dir_all(d.join("swtpm")).unwrap();
                let (child, tcti) = start_swtpm(&d.join("swtpm"));
                swtpm = Some(child);
                (
                    "tpm",
                    format!(
                        "[tpm]\ntcti = \"{tcti}\"\nblob_dir = \"{}/blobs\"\npcrs = [7]\n",
                        d.display()
                    ),
                )
            }
        };
        let config = format!(
            "backend = \"{name}\"\nsocket = \"{0}/run/keyd.sock\"\npolicy = \"{0}/policy.toml\"\nstate_dir = \"{0}/state\"\naudit_log = \"{0}/state/audit.jsonl\"\n{extra_config}\n{table}[[recipients]]\nid = \"owner-1\"\ntype = \"owner\"\npublic_key_hex = \"{1}\"\n",
            d.display(),
            hex::encode(owner.as_bytes())
        );
        std::fs::write(d.join("keyd.toml"), config).unwrap();
        Daemon {
            dir,
            child: None,
            swtpm,
        }
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
        format!("[[allow]]\nuids = [{}]\noperations = [\"identity\", \"sign_packages\", \"sign_chunk_hashes\", \"new_chunk_keys\", \"grant\", \"encrypt_fields\", \"sign_dataset\"]\n", uid())
    }

    pub fn spawn(&mut self) {
        self.spawn_with(&[], &[]);
    }

    /// Starts `keyd run` under `wrapper` (a command prefix: `prlimit …`, `unshare …`) with
    /// `args` after the config, and waits for its socket.
    pub fn spawn_with(&mut self, wrapper: &[&str], args: &[&str]) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("keyd.log"))
            .unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(KEYD);
                c
            }
            None => Command::new(KEYD),
        };
        let child = command
            .envs(self.env())
            .args(["run", "--config"])
            .arg(self.path("keyd.toml"))
            .args(args)
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
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("keyd exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw tonic client (to send what the typed client would refuse to), on its runtime.
    pub fn raw(
        &self,
    ) -> (
        tokio::runtime::Runtime,
        keyd_proto::v1::keyd_client::KeydClient<tonic::transport::Channel>,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = runtime
            .block_on(keyd_proto::client::connect_channel(&self.socket()))
            .unwrap();
        let client = keyd_proto::v1::keyd_client::KeydClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        (runtime, client)
    }

    /// keyd's peak resident memory (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// keyd's CPU time so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
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

/// A fresh SoftHSM token (label keyd-test) in `d`, and the PIN file keyd reads.
fn init_softhsm_token(d: &std::path::Path) {
    std::fs::create_dir_all(d.join("tokens")).unwrap();
    std::fs::write(
        d.join("softhsm2.conf"),
        format!(
            "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            d.display()
        ),
    )
    .unwrap();
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Software,
    Pkcs11,
    Tpm,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Then its TPM.
        if let Some(mut swtpm) = self.swtpm.take() {
            let _ = swtpm.kill();
            let _ = swtpm.wait();
        }
    }
}
