//! Shared helpers of the mirror's integration tests: a private netns with a drop guard, `ip`
//! runners, a running source, and the wait-until-equal comparison with the kernel.
#![allow(dead_code)]

use ekho_mirror::source::{SourceConfig, SourceOptions};
use ekho_mirror::testing::iproute2;
use ekho_mirror::Mirror;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A uniquely named network namespace, deleted on drop (also on panic).
pub struct Netns {
    pub name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates `ekho-mir-<tag>-<pid>-<n>`, or returns `None` (with the reason printed) when
    /// namespaces cannot be created here.
    pub fn new(tag: &str) -> Option<Netns> {
        let name = format!(
            "ekho-mir-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "SKIP: cannot create netns: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return None;
            }
            Err(e) => {
                eprintln!("SKIP: cannot run ip: {e}");
                return None;
            }
        }
        let ns = Netns { name };
        // Deterministic IPv6: no DAD (no `tentative` flapping), lo up.
        for s in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            ns.sh(&format!("sysctl -qw {s}"));
        }
        ns.ip("link set lo up");
        Some(ns)
    }

    /// Path of the namespace.
    pub fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.name).into()
    }

    /// Runs `ip -n NS <args>`; panics on failure.
    pub fn ip(&self, args: &str) {
        self.try_ip(args)
            .unwrap_or_else(|e| panic!("ip {args}: {e}"));
    }

    /// Runs `ip -n NS <args>`.
    pub fn try_ip(&self, args: &str) -> Result<(), String> {
        self.tool("ip", args)
    }

    /// Runs `bridge -n NS <args>`.
    pub fn bridge(&self, args: &str) -> Result<(), String> {
        self.tool("bridge", args)
    }

    fn tool(&self, tool: &str, args: &str) -> Result<(), String> {
        let mut c = Command::new(tool);
        c.args(["-n", &self.name]);
        c.args(args.split_whitespace());
        let o = c.output().map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    /// Runs a shell command inside the namespace (`ip netns exec`).
    pub fn sh(&self, cmd: &str) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&o.stdout).to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A mirror fed by a source running in its own runtime thread.
pub struct Running {
    pub mirror: Mirror,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Starts a source mirroring `ns` with the given event socket buffer (0: default).
pub fn start(ns: &Netns, rcvbuf: usize) -> Running {
    start_with(
        ns,
        rcvbuf,
        SourceOptions {
            proxy_poll: Some(Duration::from_millis(200)),
        },
    )
}

/// As [`start`], with explicit options.
pub fn start_with(ns: &Netns, rcvbuf: usize, opts: SourceOptions) -> Running {
    let mirror = Mirror::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let m = mirror.clone();
    let cfg = SourceConfig {
        netns: Some(ns.path()),
        rcvbuf,
    };
    rt.spawn(async move {
        if let Err(e) = ekho_mirror::source::run_with(m, cfg, opts).await {
            panic!("source failed: {e}");
        }
    });
    let t = Instant::now();
    while !mirror.stats().synced {
        assert!(t.elapsed() < Duration::from_secs(20), "mirror did not sync");
        std::thread::sleep(Duration::from_millis(10));
    }
    Running {
        mirror,
        rt: Some(rt),
    }
}

/// Compares the mirror with the kernel until they agree or `timeout` passes; returns the last
/// divergences (empty when equal).
pub fn converge(ns: &Netns, m: &Mirror, timeout: Duration) -> Vec<String> {
    let t = Instant::now();
    loop {
        let k = iproute2::kernel_state(Some(&ns.name)).expect("kernel state");
        let mi = iproute2::mirror_state(&m.dump(None));
        let d = iproute2::compare(&k, &mi);
        if d.is_empty() || t.elapsed() > timeout {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
