//! `keyd dev up|restart|down`: a throw-away keyd for development and for a user's CI, from
//! the installed keyd alone.
//!
//! `up` makes, in one directory: development recipient keys (`keys/`), a policy allowing the
//! calling user (and `--agent-user`, which also gets the socket's group), a configuration, the
//! backend's store (a fresh SoftHSM token initialized through the module itself, a fresh
//! swtpm with keys bound to PCR 7, or a software key file), provisions keyd's keys, starts
//! `keyd run` in its own process group and prints the socket's path as the last line of
//! stdout. `down` stops what `up` started and removes the directory; it refuses a directory
//! that `up` did not make.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stream::devkeys::write_development_keys;
use stream::keys::Secret32;
use zeroize::Zeroizing;

use crate::CmdResult;

/// The file that marks a directory as made by `keyd dev up` (and names its backend).
const MARKER: &str = "keyd-dev.toml";
/// Every operation a development caller may need.
const ALL_OPERATIONS: &str = r#"["identity", "sign_packages", "sign_chunk_hashes", "new_chunk_keys", "grant", "encrypt_fields", "sign_dataset"]"#;
/// The edge agent's operations: everything but grant.
const AGENT_OPERATIONS: &str = r#"["identity", "sign_packages", "sign_chunk_hashes", "new_chunk_keys", "encrypt_fields", "sign_dataset"]"#;
/// How long keyd (or swtpm) may take to listen. Generous: under qemu-user it is slow.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The development backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DevBackend {
    /// Keys in a key file (mode 0600) in the directory.
    Software,
    /// A fresh SoftHSM token (or another module's free slot): keys sensitive and
    /// non-extractable.
    Pkcs11,
    /// A fresh swtpm on loopback: keys sealed to PCR 7.
    Tpm,
}

impl DevBackend {
    fn name(self) -> &'static str {
        match self {
            DevBackend::Software => "software",
            DevBackend::Pkcs11 => "pkcs11",
            DevBackend::Tpm => "tpm",
        }
    }
}

/// What `keyd dev up` was asked for.
pub struct UpOptions {
    pub backend: DevBackend,
    pub dir: PathBuf,
    pub agent_user: Option<String>,
    pub pkcs11_module: PathBuf,
}

/// `$KEYD_DEV_DIR`, else `~/.cache/keyd-dev`, else `/tmp/keyd-dev-{uid}`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYD_DEV_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Path::new(&home).join(".cache").join("keyd-dev"),
        None => PathBuf::from(format!("/tmp/keyd-dev-{}", euid())),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() }
}

fn fail(message: impl std::fmt::Display) -> (i32, String) {
    (1, format!("keyd dev: {message}"))
}

fn io_fail(path: &Path, e: std::io::Error) -> (i32, String) {
    fail(format!("{}: {e}", path.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> CmdResult {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_fail(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_fail(path, e))
}

/// A TOML basic string holding `text` (paths and names may hold quotes or backslashes).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn toml_path(path: &Path) -> CmdResult<String> {
    path.to_str()
        .map(toml_string)
        .ok_or_else(|| fail(format!("{} is not UTF-8", path.display())))
}

/// Makes the directory, its keys, policy, configuration and backend; provisions and starts
/// keyd; prints the socket path last.
pub fn up(options: UpOptions) -> CmdResult {
    let dir = absolute(&options.dir)?;
    let result = make_and_start(&dir, &options);
    if result.is_err() {
        // Nothing left running; the directory stays for its logs.
        stop_pid_file(&dir.join("keyd.pid"));
        stop_pid_file(&dir.join("swtpm.pid"));
    }
    result
}

fn make_and_start(dir: &Path, options: &UpOptions) -> CmdResult {
    let dir = dir.to_path_buf();
    let socket = dir.join("run").join("keyd.sock");
    // sun_path holds 108 bytes with the terminating NUL.
    if socket.as_os_str().len() > 107 {
        return Err((
            2,
            format!(
                "keyd dev: --dir {} is too long: the socket path {} would pass the 107 bytes a Unix socket path may have",
                dir.display(),
                socket.display()
            ),
        ));
    }
    down(&dir)?;
    fs::create_dir_all(&dir).map_err(|e| io_fail(&dir, e))?;
    // The agent's account must reach the socket below it; nothing else here is secret to
    // it except the key files, which are 0600.
    let mode = if options.agent_user.is_some() {
        0o755
    } else {
        0o700
    };
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(|e| io_fail(&dir, e))?;
    write_file(
        &dir.join(MARKER),
        &format!(
            "# Made by `keyd dev up`; `keyd dev down` removes this directory.\nbackend = {}\n",
            toml_string(options.backend.name())
        ),
        0o644,
    )?;

    let keys = write_development_keys(&dir.join("keys")).map_err(fail)?;
    let public = |role: &str| {
        keys.box_public_hex
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, hex)| hex.clone())
            .ok_or_else(|| fail(format!("no development {role} key")))
    };

    let mut policy = format!(
        "# Development policy: the user who ran `keyd dev up` may do everything.\n[[allow]]\nuids = [{}]\noperations = {ALL_OPERATIONS}\n",
        euid()
    );
    let mut socket_group = String::new();
    if let Some(user) = &options.agent_user {
        let group = primary_group(user)
            .ok_or_else(|| (2, format!("keyd dev: --agent-user {user}: no such user")))?;
        policy.push_str(&format!(
            "\n# The edge agent: it signs and closes chunks, and may not grant.\n[[allow]]\nusers = [{}]\noperations = {AGENT_OPERATIONS}\n",
            toml_string(user)
        ));
        socket_group = format!("socket_group = {}\n", toml_string(&group));
    }
    write_file(&dir.join("policy.toml"), &policy, 0o644)?;

    let state = dir.join("state");
    let backend_table = match options.backend {
        DevBackend::Software => format!(
            "[software]\nkey_file = {}\n",
            toml_path(&state.join("keys.json"))?
        ),
        DevBackend::Pkcs11 => pkcs11_token(&dir, &options.pkcs11_module)?,
        DevBackend::Tpm => start_swtpm(&dir)?,
    };
    let config = format!(
        "# A development keyd made by `keyd dev up`.\nbackend = {backend}\nsocket = {socket}\n{socket_group}policy = {policy}\nstate_dir = {state}\naudit_log = {audit}\n\n{backend_table}\n[[recipients]]\nid = \"owner-1\"\ntype = \"owner\"\npublic_key_hex = \"{owner}\"\n\n[[recipients]]\nid = \"operator-1\"\ntype = \"operator\"\npublic_key_hex = \"{operator}\"\n",
        backend = toml_string(options.backend.name()),
        socket = toml_path(&socket)?,
        policy = toml_path(&dir.join("policy.toml"))?,
        state = toml_path(&state)?,
        audit = toml_path(&state.join("audit.jsonl"))?,
        owner = public("owner")?,
        operator = public("operator")?,
    );
    let config_path = dir.join("keyd.toml");
    write_file(&config_path, &config, 0o644)?;

    let identity = crate::provision(&config_path, false)?;
    write_file(
        &dir.join("identity.json"),
        &format!(
            "{}\n",
            serde_json::to_string_pretty(&identity).unwrap_or_default()
        ),
        0o644,
    )?;
    let pid = launch(&dir)?;
    eprintln!(
        "keyd dev: keyd ({}) running, pid {pid}, DID {}",
        options.backend.name(),
        identity["did"].as_str().unwrap_or("?")
    );
    eprintln!(
        "keyd dev: owner/operator/buyer keys in {}, log {}, audit {}",
        dir.join("keys").display(),
        dir.join("keyd.log").display(),
        state.join("audit.jsonl").display()
    );
    println!("{}", socket.display());
    Ok(())
}

/// Stops keyd (SIGTERM, the time it needs, then SIGKILL) and starts it again on the same
/// keys and state, `down_for` later.
pub fn restart(dir: &Path, down_for: Duration) -> CmdResult {
    let dir = absolute(dir)?;
    if !dir.join(MARKER).exists() {
        return Err(fail(format!(
            "{} was not made by `keyd dev up`",
            dir.display()
        )));
    }
    stop_pid_file(&dir.join("keyd.pid"));
    std::thread::sleep(down_for);
    launch(&dir)?;
    println!("{}", dir.join("run").join("keyd.sock").display());
    Ok(())
}

/// Stops keyd and swtpm and removes the directory. Nothing to do when it does not exist;
/// refuses one that `keyd dev up` did not make.
pub fn down(dir: &Path) -> CmdResult {
    let dir = absolute(dir)?;
    if !dir.exists() {
        return Ok(());
    }
    if !dir.join(MARKER).exists() {
        let empty = fs::read_dir(&dir)
            .map_err(|e| io_fail(&dir, e))?
            .next()
            .is_none();
        if empty {
            return Ok(());
        }
        return Err(fail(format!(
            "{} exists and was not made by `keyd dev up` (no {MARKER}): not touching it; choose another --dir",
            dir.display()
        )));
    }
    stop_pid_file(&dir.join("keyd.pid"));
    stop_pid_file(&dir.join("swtpm.pid"));
    fs::remove_dir_all(&dir).map_err(|e| io_fail(&dir, e))
}

fn absolute(dir: &Path) -> CmdResult<PathBuf> {
    std::path::absolute(dir).map_err(|e| io_fail(dir, e))
}

/// SIGTERM to the process in `pid_file`, up to 10 s to exit, then SIGKILL.
fn stop_pid_file(pid_file: &Path) {
    let Some(pid) = fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<libc::pid_t>().ok())
        .filter(|pid| *pid > 1)
    else {
        return;
    };
    // SAFETY: kill has no memory effects; a pid that is gone gives ESRCH.
    let alive = || unsafe { libc::kill(pid, 0) } == 0;
    if !alive() {
        return;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = fs::remove_file(pid_file);
}

/// The words of `$KEYD_DEV_WRAP` (a command prefix keyd runs under, e.g. `strace -f -o F`
/// or `qemu-aarch64`), then `program`.
fn wrapped(program: &Path) -> Command {
    let wrap = std::env::var("KEYD_DEV_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(first) => {
            let mut command = Command::new(first);
            command.args(words).arg(program);
            command
        }
        None => Command::new(program),
    };
    command.stdin(Stdio::null()).process_group(0);
    command
}

fn log_to(command: &mut Command, log: &Path) -> CmdResult {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(log)
        .map_err(|e| io_fail(log, e))?;
    let copy = file.try_clone().map_err(|e| io_fail(log, e))?;
    command.stdout(copy).stderr(file);
    Ok(())
}

/// Waits until `ready` or the child exits (then its log is the error).
fn wait_ready(child: &mut Child, what: &str, log: &Path, ready: impl Fn() -> bool) -> CmdResult {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(fail(format!(
                "{what} exited ({status}) before it was ready; {}:\n{}",
                log.display(),
                tail.join("\n")
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(fail(format!(
                "{what} was not ready after {} s; see {}",
                START_TIMEOUT.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `keyd run` on the directory's configuration and waits for its socket.
fn launch(dir: &Path) -> CmdResult<u32> {
    let exe = std::env::current_exe().map_err(|e| fail(format!("which keyd is this: {e}")))?;
    let socket = dir.join("run").join("keyd.sock");
    let _ = fs::remove_file(&socket);
    let mut command = wrapped(&exe);
    command
        .arg("run")
        .arg("--config")
        .arg(dir.join("keyd.toml"));
    let softhsm_conf = dir.join("softhsm").join("softhsm2.conf");
    if softhsm_conf.exists() {
        command.env("SOFTHSM2_CONF", &softhsm_conf);
    }
    let log = dir.join("keyd.log");
    log_to(&mut command, &log)?;
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot start {}: {e}", exe.display())))?;
    write_file(&dir.join("keyd.pid"), &format!("{}\n", child.id()), 0o644)?;
    wait_ready(&mut child, "keyd", &log, || {
        use std::os::unix::fs::FileTypeExt;
        fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket())
    })?;
    Ok(child.id())
}

/// A private SoftHSM configuration and token directory, a fresh token with a random user
/// PIN in a 0600 file; the `[pkcs11]` table for it.
fn pkcs11_token(dir: &Path, module: &Path) -> CmdResult<String> {
    let softhsm = dir.join("softhsm");
    let tokens = softhsm.join("tokens");
    fs::create_dir_all(&tokens).map_err(|e| io_fail(&tokens, e))?;
    let conf = softhsm.join("softhsm2.conf");
    write_file(
        &conf,
        &format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
        0o644,
    )?;
    // SoftHSM reads its configuration's path from the environment, once, when the module
    // initializes: set before it loads (no other thread reads the environment here).
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let pin = Secret32::random().map_err(fail)?;
    let pin = Zeroizing::new(hex::encode(&pin.expose()[..8]));
    let pin_file = softhsm.join("pin");
    write_file(&pin_file, &pin, 0o600)?;
    keyd::backend::pkcs11::init_development_token(
        module,
        "keyd-dev",
        &cryptoki::types::AuthPin::from(pin.to_string()),
    )
    .map_err(fail)?;
    Ok(format!(
        "[pkcs11]\nmodule = {}\ntoken_label = \"keyd-dev\"\npin_file = {}\n",
        toml_path(module)?,
        toml_path(&pin_file)?
    ))
}

/// Two free loopback ports in a row (swtpm's server and control ports).
fn free_port_pair() -> CmdResult<u16> {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
        let port = first.local_addr().map_err(fail)?.port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(fail("no two free loopback ports in a row for swtpm"))
}

/// A fresh software TPM on loopback, in its own process group; the `[tpm]` table for it.
fn start_swtpm(dir: &Path) -> CmdResult<String> {
    let state = dir.join("swtpm");
    fs::create_dir_all(&state).map_err(|e| io_fail(&state, e))?;
    let port = free_port_pair()?;
    let mut command = Command::new("swtpm");
    command
        .arg("socket")
        .arg("--tpm2")
        .arg(format!("--tpmstate=dir={}", state.display()))
        .arg(format!("--server=type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg(format!(
            "--ctrl=type=tcp,port={},bindaddr=127.0.0.1",
            port + 1
        ))
        .arg("--flags=not-need-init,startup-clear")
        .stdin(Stdio::null())
        .process_group(0);
    let log = dir.join("swtpm.log");
    log_to(&mut command, &log)?;
    let mut child = command.spawn().map_err(|e| {
        fail(format!(
            "cannot start swtpm ({e}); the tpm backend needs swtpm (Debian: apt install swtpm)"
        ))
    })?;
    write_file(&dir.join("swtpm.pid"), &format!("{}\n", child.id()), 0o644)?;
    wait_ready(&mut child, "swtpm", &log, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    Ok(format!(
        "[tpm]\ntcti = \"swtpm:host=127.0.0.1,port={port}\"\nblob_dir = {}\npcrs = [7]\n",
        toml_path(&dir.join("state").join("tpm"))?
    ))
}

/// The name of `user`'s primary group.
fn primary_group(user: &str) -> Option<String> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we read one field at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: entry is non-null and points at getpwnam's static record.
    let gid = unsafe { (*entry).pw_gid };
    // SAFETY: getgrgid returns a pointer to static storage or null; gr_name is a C string.
    let group = unsafe { libc::getgrgid(gid) };
    if group.is_null() {
        return None;
    }
    // SAFETY: group is non-null; gr_name points at a NUL-terminated string in its record.
    let name = unsafe { std::ffi::CStr::from_ptr((*group).gr_name) };
    name.to_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_leaves_what_up_did_not_make() {
        let parent = tempfile::tempdir().unwrap();
        let missing = parent.path().join("missing");
        assert!(down(&missing).is_ok());
        let empty = parent.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(down(&empty).is_ok());
        let theirs = parent.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::write(theirs.join("notes.txt"), "keep me").unwrap();
        let (code, message) = down(&theirs).unwrap_err();
        assert_eq!(code, 1);
        assert!(message.contains("not made by `keyd dev up`"), "{message}");
        assert!(theirs.join("notes.txt").exists());
        let ours = parent.path().join("ours");
        fs::create_dir(&ours).unwrap();
        fs::write(ours.join(MARKER), "backend = \"software\"\n").unwrap();
        down(&ours).unwrap();
        assert!(!ours.exists());
    }

    #[test]
    fn a_socket_path_too_long_is_refused_before_anything_is_made() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("d".repeat(100));
        let (code, message) = up(UpOptions {
            backend: DevBackend::Software,
            dir: dir.clone(),
            agent_user: None,
            pkcs11_module: PathBuf::from("/nonexistent"),
        })
        .unwrap_err();
        assert_eq!(code, 2);
        assert!(message.contains("107 bytes"), "{message}");
        assert!(!dir.exists());
    }

    #[test]
    fn paths_and_names_are_quoted_for_toml() {
        for text in [r#"a "b" \c"#, "it's \"odd\"", "/tmp/plain dir"] {
            let parsed: toml::Value =
                toml::from_str(&format!("x = {}", toml_string(text))).unwrap();
            assert_eq!(parsed["x"].as_str(), Some(text));
        }
    }
}
