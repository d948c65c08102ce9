//! Why a test cannot run here: it prints `SKIP:` with the reason (and, where it matters, the
//! kernel) instead of passing silently.

use std::process::{Command, Stdio};

/// Prints `SKIP: reason` on the real stderr (not captured by the test harness, so it shows in a
/// plain `cargo test` run).
pub fn say_skip(reason: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("SKIP: {reason}\n").as_bytes());
}

/// `Some("needs root (WHAT)")` unless this process runs as root.
pub fn needs_root(what: &str) -> Option<String> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        return Some(format!("needs root ({what})"));
    }
    None
}

/// The first of `tools` not installed, as a reason naming the packages to install.
pub fn missing_tools(tools: &[&str], packages: &str) -> Option<String> {
    tools
        .iter()
        .find(|t| !have(t))
        .map(|t| format!("`{t}` not installed (apt-get install -y {packages})"))
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// This kernel's release (`uname -r`), named in skip messages and kernel-specific expectations.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown kernel ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named() {
        assert_eq!(missing_tools(&["sh"], "dash"), None);
        let r = missing_tools(&["sh", "ekho-no-such-tool"], "x y").unwrap();
        assert_eq!(
            r,
            "`ekho-no-such-tool` not installed (apt-get install -y x y)"
        );
    }
}
