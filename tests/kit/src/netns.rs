//! A private network namespace with a guard.

use crate::cmd::{sh, try_sh, unique, Args};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A uniquely named network namespace (loopback up), deleted on drop (also on panic).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace named after the test binary (`ekho-<test>-<pid>-<n>`: a leftover names the
    /// test file that created it); panics when it cannot be created.
    pub fn new() -> Netns {
        Netns::named(&default_prefix())
    }

    /// A namespace named `<prefix>-<pid>-<n>`; panics when it cannot be created.
    pub fn named(prefix: &str) -> Netns {
        Netns::try_named(prefix).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A namespace named `<prefix>-<pid>-<n>`, or why it cannot be created here (for a `SKIP:`).
    pub fn try_named(prefix: &str) -> Result<Netns, String> {
        let name = unique(prefix);
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot create netns: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // The guard exists from here on.
        let ns = Netns { name };
        ns.ip("link set lo up");
        Ok(ns)
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn with_ns<'a>(&'a self, args: &'a (impl Args + ?Sized)) -> Vec<&'a str> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend(args.words());
        a
    }

    /// `ip -n NAME ARGS...`; panics with stderr on failure, returns stdout.
    pub fn ip(&self, args: &(impl Args + ?Sized)) -> String {
        sh("ip", &self.with_ns(args))
    }

    /// `ip -n NAME ARGS...`: stdout, or stderr (trimmed) on failure.
    pub fn try_ip(&self, args: &(impl Args + ?Sized)) -> Result<String, String> {
        try_sh("ip", &self.with_ns(args))
    }

    /// `ip -j -n NAME ARGS...` parsed (an empty output is an empty list).
    pub fn ip_json(&self, args: &(impl Args + ?Sized)) -> Value {
        let mut a = vec!["-j"];
        a.extend(args.words());
        let s = self.ip(&a);
        if s.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&s).unwrap_or_else(|e| panic!("ip -j {}: {e}: {s}", a.join(" ")))
        }
    }

    /// `ip -n NAME -batch -` with these lines; panics with stderr on failure.
    pub fn ip_batch(&self, lines: &str) {
        use std::io::Write;
        let mut c = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        c.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ip -n {} -batch: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `bridge -n NAME ARGS...`; panics with stderr on failure, returns stdout.
    pub fn bridge(&self, args: &(impl Args + ?Sized)) -> String {
        sh("bridge", &self.with_ns(args))
    }

    /// `bridge -n NAME ARGS...`: stdout, or stderr (trimmed) on failure.
    pub fn try_bridge(&self, args: &(impl Args + ?Sized)) -> Result<String, String> {
        try_sh("bridge", &self.with_ns(args))
    }

    /// `ip netns exec NAME ARGS...`; panics with stderr on failure, returns stdout.
    pub fn run(&self, args: &(impl Args + ?Sized)) -> String {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend(args.words());
        sh("ip", &a)
    }

    /// `ip netns exec NAME ARGS...`; whether it succeeded (output discarded).
    pub fn exec(&self, args: &(impl Args + ?Sized)) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args.words())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A shell command line inside the namespace (`ip netns exec NAME sh -c CMD`); its stdout,
    /// whether or not it succeeded.
    pub fn sh(&self, cmd: &str) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Interface index of `dev` in this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let s = self
            .try_ip(&["-o", "link", "show", dev])
            .unwrap_or_default();
        s.split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no ifindex for {dev}: {s}"))
    }

    /// MAC address of `dev` (`aa:bb:...`).
    pub fn mac(&self, dev: &str) -> String {
        let s = self
            .try_ip(&["-o", "link", "show", dev])
            .unwrap_or_default();
        let mut it = s.split_whitespace().skip_while(|w| *w != "link/ether");
        it.nth(1)
            .unwrap_or_else(|| panic!("no MAC for {dev}: {s}"))
            .to_string()
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

/// `ekho-<test binary>` (cargo's `-<hash>` suffix dropped), or `ekho-test`.
fn default_prefix() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .map(|n| match n.rsplit_once('-') {
            Some((s, h)) if h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) => s,
            _ => n,
        })
        .unwrap_or("test");
    format!("ekho-{stem}")
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
