//! sshd-style trust checks of a plugin file: the file and every directory above it up to `/`
//! must be owned by root (or the daemon's own user) and not writable by group or others.
//!
//! Symlinks are resolved and the target is checked (and the directories holding the link, so a
//! link in a directory others may write to is refused too). A directory writable by others is
//! accepted only with the sticky bit set and owned by root (`/tmp`): there nobody but the owner
//! of an entry can rename or remove it, and the entry below it is itself checked.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a path is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub path: PathBuf,
    pub uid: u32,
    pub mode: u32,
    /// What is wrong, e.g. "writable by others".
    pub what: String,
    /// The command that fixes it, e.g. `chmod go-w /x`.
    pub fix: String,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: refused: owner {}, mode {:04o}: {}; fix with `{}`",
            self.path.display(),
            owner_name(self.uid),
            self.mode & 0o7777,
            self.what,
            self.fix
        )
    }
}

impl std::error::Error for Untrusted {}

/// The user name of `uid` from /etc/passwd, else `uid N`.
fn owner_name(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| {
        t.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _pw = f.next()?;
            (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
    });
    match name {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The users a trusted path may belong to: root and the daemon's effective user.
fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// Checks one file system object's owner and mode (`is_dir`: the sticky exception applies).
pub fn check_meta(path: &Path, meta: &std::fs::Metadata) -> Result<(), Untrusted> {
    let (uid, mode) = (meta.uid(), meta.mode());
    let err = |what: &str, fix: String| Untrusted {
        path: path.to_path_buf(),
        uid,
        mode,
        what: what.into(),
        fix,
    };
    if !trusted_owner(uid) {
        return Err(err(
            "not owned by root or the daemon's user",
            format!("chown root {}", path.display()),
        ));
    }
    let sticky_root_dir = meta.is_dir() && uid == 0 && mode & libc::S_ISVTX != 0;
    let what = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        _ if sticky_root_dir => None,
        (true, true) => Some("writable by its group and others"),
        (true, false) => Some("writable by its group"),
        (false, true) => Some("writable by others"),
        (false, false) => None,
    };
    if let Some(what) = what {
        return Err(err(what, format!("chmod go-w {}", path.display())));
    }
    Ok(())
}

/// Checks every directory from `dir` up to `/` (`dir` has no symlinks: canonical).
fn check_dirs(dir: &Path) -> Result<(), super::LoadError> {
    for d in dir.ancestors() {
        let meta = std::fs::metadata(d).map_err(|source| super::LoadError::Read {
            path: d.into(),
            source,
        })?;
        check_meta(d, &meta)?;
    }
    Ok(())
}

/// Resolves `path` (symlinks followed) and checks the directories above the target, and above
/// the link when `path` is one. Returns the target's canonical path; the file itself is checked
/// on the descriptor it is opened with ([`check_meta`] on `fstat`).
pub fn resolve(path: &Path) -> Result<PathBuf, super::LoadError> {
    let read = |source| super::LoadError::Read {
        path: path.into(),
        source,
    };
    let target = std::fs::canonicalize(path).map_err(read)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let parent = std::fs::canonicalize(parent).map_err(read)?;
        if Some(parent.as_path()) != target.parent() {
            check_dirs(&parent)?;
        }
    }
    if let Some(parent) = target.parent() {
        check_dirs(parent)?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ekho-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn modes_are_judged_like_sshd() {
        let d = scratch("modes");
        let f = d.join("f");
        std::fs::write(&f, b"x").unwrap();
        for (mode, ok) in [(0o644, true), (0o755, true), (0o664, false), (0o646, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = check_meta(&f, &std::fs::metadata(&f).unwrap());
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.fix, format!("chmod go-w {}", f.display()));
                assert!(e.to_string().contains(&format!("mode 0{mode:o}")), "{e}");
            }
        }
        // A world-writable directory only with the sticky bit (and owned by root).
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
        let sticky_ok = check_meta(&sub, &std::fs::metadata(&sub).unwrap()).is_ok();
        assert!(!sticky_ok);
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let meta = std::fs::metadata(&sub).unwrap();
        assert_eq!(check_meta(&sub, &meta).is_ok(), meta.uid() == 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_link_is_judged_by_its_target_and_its_own_directory() {
        let d = scratch("link");
        let good = d.join("good");
        let bad = d.join("bad");
        std::fs::create_dir(&good).unwrap();
        std::fs::create_dir(&bad).unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(bad.join("lib.so"), b"x").unwrap();
        std::fs::write(good.join("lib.so"), b"x").unwrap();
        // The link is in a good directory, its target in a bad one.
        std::os::unix::fs::symlink(bad.join("lib.so"), good.join("link.so")).unwrap();
        let e = resolve(&good.join("link.so")).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}: refused", bad.display())) && e.contains("and others"),
            "{e}"
        );
        // The link is in a bad directory, its target in a good one.
        std::os::unix::fs::symlink(good.join("lib.so"), bad.join("link.so")).unwrap();
        let e = resolve(&bad.join("link.so")).unwrap_err().to_string();
        assert!(e.contains(&format!("{}: refused", bad.display())), "{e}");
        assert_eq!(
            resolve(&good.join("lib.so")).unwrap(),
            std::fs::canonicalize(good.join("lib.so")).unwrap()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
