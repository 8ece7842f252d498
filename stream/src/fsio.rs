//! Atomic file writes: the one way every crate here replaces a file.
//!
//! The bytes go to a temporary file beside the target (`.{name}.tmp-{pid}-{n}`), which is renamed
//! over the target only when complete, so a reader (or a process restarted after a crash)
//! sees the old file or the new one, never half of one. With [`Durability::Synced`] the file
//! is fsynced before the rename and its directory after it: once the call returns, the new
//! file survives a power loss. A temporary file left by a crash is recognised by
//! [`is_temp_name`].

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Whether writes are flushed to stable storage before the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Atomic against readers; the page cache decides when it reaches the disk.
    Atomic,
    /// Atomic and fsynced (file, then directory): survives power loss once returned.
    Synced,
}

/// A file being written in place of `target`; renamed over it by [`AtomicFile::commit`],
/// removed if dropped before that.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
    durability: Durability,
}

/// The temporary name of `target`'s replacement: unique to this process and this write, so
/// two threads replacing the same file do not share one.
fn temp_path(target: &Path) -> io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(target.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id())))
}

/// Whether `name` is a temporary file of [`AtomicFile`] (left behind by a crash).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(".tmp-").is_some_and(|(_, tail)| {
            !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit() || b == b'-')
        })
}

impl AtomicFile {
    /// Starts the replacement of `target` (its directory must exist).
    pub fn create(target: &Path, durability: Durability) -> io::Result<Self> {
        Self::create_with_mode(target, durability, 0o666)
    }

    /// As [`AtomicFile::create`], the new file created with `mode` (before the umask):
    /// `0o600` for a file only its owner may read.
    pub fn create_with_mode(target: &Path, durability: Durability, mode: u32) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let temp = temp_path(target)?;
        // A stale one (same pid, an earlier crash) must not lend the new file its mode.
        match fs::remove_file(&temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
            durability,
        })
    }

    /// Where the file will appear.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Puts the file in place.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("already committed"))?;
        if self.durability == Durability::Synced {
            file.sync_all()?;
        }
        drop(file);
        if let Err(e) = fs::rename(&self.temp, &self.target) {
            let _ = fs::remove_file(&self.temp);
            return Err(e);
        }
        if self.durability == Durability::Synced {
            let dir = match self.target.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Replaces `target` with `bytes` atomically.
pub fn write_atomic(target: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let mut file = AtomicFile::create(target, durability)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Replaces `target` with `bytes` atomically, as a file only its owner may read (0600).
pub fn write_atomic_private(target: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let mut file = AtomicFile::create_with_mode(target, durability, 0o600)?;
    file.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        write_atomic(&target, b"one", Durability::Synced).unwrap();
        {
            let mut half = AtomicFile::create(&target, Durability::Atomic).unwrap();
            half.write_all(b"tw").unwrap();
            // dropped without commit, as when the writer fails half way
        }
        assert_eq!(fs::read(&target).unwrap(), b"one");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file is removed");
        write_atomic_private(&target, b"two", Durability::Atomic).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn temp_names() {
        let temp = temp_path(Path::new("/x/chunk-1.json")).unwrap();
        let name = temp.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_name(name), "{name}");
        assert!(!is_temp_name("chunk-1.json"));
        assert!(!is_temp_name(".chunk-1.json.tmp-"));
        assert!(!is_temp_name(".hidden"));
    }
}
