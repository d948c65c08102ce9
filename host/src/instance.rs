//! One daemon per network namespace: an exclusive lock (`flock`) on a file named after the
//! namespace's inode, holding the owner's pid. A second daemon on the same namespace (whatever
//! its config or control socket) is refused, naming the first's pid.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/ekho";

/// Held for the daemon's life (released by the kernel when the process ends, even by SIGKILL).
pub struct InstanceLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot stat the network namespace {ns}")]
    Netns { ns: PathBuf, source: std::io::Error },
    #[error("cannot open the lock file {path} (the daemon keeps one per namespace in {LOCK_DIR}; it needs to write there)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another ekho (pid {pid}) already mirrors the network namespace {ns} (inode {ino}; lock {path}): stop it first, or mirror another namespace")]
    Taken {
        pid: String,
        ns: PathBuf,
        ino: u64,
        path: PathBuf,
    },
}

/// Takes the lock of namespace `netns` (`None`: the caller's) in `dir`.
pub fn acquire(netns: Option<&Path>, dir: &Path) -> Result<InstanceLock, LockError> {
    let ns = netns
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
    let meta = std::fs::metadata(&ns).map_err(|source| LockError::Netns {
        ns: ns.clone(),
        source,
    })?;
    let path = dir.join(format!("netns-{}-{}.lock", meta.dev(), meta.ino()));
    let open = |source| LockError::Open {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(open)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(open)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(LockError::Taken {
            pid: if pid.is_empty() {
                "unknown".into()
            } else {
                pid.into()
            },
            ns,
            ino: meta.ino(),
            path,
        });
    }
    file.set_len(0).map_err(open)?;
    file.rewind().map_err(open)?;
    writeln!(file, "{}", std::process::id()).map_err(open)?;
    Ok(InstanceLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_namespace_is_refused_naming_the_holder() {
        let dir = std::env::temp_dir().join(format!("ekho-lock-{}", std::process::id()));
        let first = acquire(None, &dir).unwrap();
        let text = std::fs::read_to_string(&first.path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks belong to the open file description: a second open is refused.
        let e = acquire(None, &dir).err().unwrap().to_string();
        assert!(
            e.starts_with(&format!(
                "another ekho (pid {}) already mirrors",
                std::process::id()
            )),
            "{e}"
        );
        drop(first);
        let again = acquire(None, &dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
