//! One process per run directory: an advisory lock on `run.lock` (`flock` on Linux and macOS,
//! `LockFileEx` on Windows, through std). The operating system releases it when the process
//! ends, however it ends, so there is no stale lock to detect and no window between checking
//! and taking it. The holder's pid is written into the file for the error message only.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another mpo process{} is running this plan (lock {})", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .path.display())]
    Held { pid: Option<u32>, path: PathBuf },
    #[error("cannot lock {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl LockError {
    pub fn help(&self) -> Option<String> {
        match self {
            LockError::Held { .. } => {
                Some("wait for it to finish, or stop it (Ctrl-C checkpoints first); the lock goes when that process ends".into())
            }
            LockError::Io { .. } => None,
        }
    }
}

/// Holds the lock until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Take the lock at `path`, or say who holds it.
    pub fn take(path: &Path) -> Result<RunLock, LockError> {
        let io = |source| LockError::Io { path: path.to_path_buf(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held { pid, path: path.to_path_buf() });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id())).map_err(io)?;
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("mpo-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("run.lock");
        let first = RunLock::take(&p).unwrap();
        // a second open file description conflicts like another process would
        match RunLock::take(&p) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected the lock to be held, got {other:?}"),
        }
        drop(first);
        let again = RunLock::take(&p);
        assert!(again.is_ok(), "{again:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
