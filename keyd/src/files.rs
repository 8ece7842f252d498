//! What keyd trusts on disk: configuration and policy that only root or keyd's user can
//! change, secrets (key file, PIN) that only keyd's user can read, and one keyd per state
//! directory.

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file keyd refuses to use, and why.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Unsafe { path: String, reason: String },
    #[error("{dir} is in use by another keyd{holder}: one keyd per state directory")]
    Locked { dir: String, holder: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn unsafe_file(path: &Path, reason: String) -> FileError {
    FileError::Unsafe {
        path: path.display().to_string(),
        reason,
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() }
}

/// Whether `uid` is root or the user keyd runs as.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// Refuses a configuration or policy file that anyone but root or keyd's user could change:
/// the file and its directory must be owned by one of them and writable by no one else.
pub fn check_trusted(path: &Path) -> Result<(), FileError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(unsafe_file(path, "not a regular file".into()));
    }
    check_owner_and_mode(path, &meta)?;
    let canonical = fs::canonicalize(path).map_err(io(path))?;
    if let Some(dir) = canonical.parent() {
        let dir_meta = fs::metadata(dir).map_err(io(dir))?;
        check_owner_and_mode(dir, &dir_meta)?;
    }
    Ok(())
}

fn check_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<(), FileError> {
    if !trusted_owner(meta.uid()) {
        return Err(unsafe_file(
            path,
            format!(
                "owned by uid {}: only root or keyd's user (uid {}) may own what keyd trusts",
                meta.uid(),
                euid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_file(
            path,
            format!(
                "mode {:o} lets group or others write it (chmod go-w)",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Refuses a secret (key file, PIN file) that is not a regular file owned by keyd's user
/// and readable by it alone.
pub fn check_private(path: &Path) -> Result<(), FileError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(unsafe_file(path, "not a regular file".into()));
    }
    if meta.uid() != euid() {
        return Err(unsafe_file(
            path,
            format!("owned by uid {}, not keyd's uid {}", meta.uid(), euid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(unsafe_file(
            path,
            format!(
                "mode {:o}: group or others may read it (chmod 600)",
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

/// An exclusive lock on a state directory, held for the process's life: a second keyd on
/// the same state would sign the same sequence numbers.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock on `dir` (created 0700 if missing), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<StateLock, FileError> {
        create_private_dir(dir)?;
        let path = dir.join("keyd.lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(FileError::Locked {
                    dir: dir.display().to_string(),
                    holder: if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        let _ = writeln!(file, "{}", std::process::id());
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` (and its parents) if missing; a new directory is 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        check_trusted(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).unwrap();
        let err = check_trusted(&path).unwrap_err().to_string();
        assert!(err.contains("policy.toml") && err.contains("664"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_trusted(&path).unwrap_err().to_string();
        assert!(err.contains("777"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn secrets_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        fs::write(&path, "1234").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(check_private(&path)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&path).unwrap();
    }

    #[test]
    fn one_lock_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("another keyd") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }
}
