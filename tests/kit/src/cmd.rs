//! Running commands: their arguments, and unique names.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name with a prefix: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The arguments of a command: a line split on white space (`"link set lo up"`), or the words
/// themselves (`&["link", "set", name, "up"]`, where a word may hold spaces).
pub trait Args {
    /// The words.
    fn words(&self) -> Vec<&str>;
}

impl Args for str {
    fn words(&self) -> Vec<&str> {
        self.split_whitespace().collect()
    }
}

impl Args for String {
    fn words(&self) -> Vec<&str> {
        self.as_str().words()
    }
}

impl Args for [&str] {
    fn words(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl<const N: usize> Args for [&str; N] {
    fn words(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl Args for Vec<&str> {
    fn words(&self) -> Vec<&str> {
        self.clone()
    }
}

impl Args for [String] {
    fn words(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}

impl Args for Vec<String> {
    fn words(&self) -> Vec<&str> {
        self.as_slice().words()
    }
}

/// Runs a command; returns its stdout, or its stderr (trimmed) when it fails or cannot start.
pub fn try_sh(cmd: &str, args: &(impl Args + ?Sized)) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args.words())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs a command, panicking with its stderr when it fails; returns stdout.
pub fn sh(cmd: &str, args: &(impl Args + ?Sized)) -> String {
    try_sh(cmd, args).unwrap_or_else(|e| panic!("{cmd} {}: {e}", args.words().join(" ")))
}

/// Runs a command quietly (output discarded); whether it succeeded.
pub fn succeeds(cmd: &str, args: &(impl Args + ?Sized)) -> bool {
    Command::new(cmd)
        .args(args.words())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_split_a_line_or_take_the_words() {
        assert_eq!("link  set lo\tup".words(), ["link", "set", "lo", "up"]);
        assert_eq!(["a b", "c"].words(), ["a b", "c"]);
        assert_eq!(vec!["x".to_string()].words(), ["x"]);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("t"), unique("t"));
        assert!(unique("t").starts_with(&format!("t-{}-", std::process::id())));
    }

    #[test]
    fn sh_returns_stdout_or_stderr() {
        assert_eq!(sh("sh", &["-c", "echo out"]), "out\n");
        assert_eq!(
            try_sh("sh", &["-c", "echo bad >&2; exit 3"]),
            Err("bad".to_string())
        );
        assert!(try_sh("/nonexistent/ekho-cmd", "x").is_err());
        assert!(succeeds("true", ""));
        assert!(!succeeds("false", ""));
    }
}
