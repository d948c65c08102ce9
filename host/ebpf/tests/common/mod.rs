//! Test helpers: private network namespaces (deleted on drop, also on panic) and an event
//! collector.

#![allow(dead_code)]

use ekho_ebpf::{EventSink, LossSink};
use ekho_plugin_api::{NotifierEvent, ObjectKind};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether these tests can run at all (they load BPF and create namespaces).
pub fn privileged() -> bool {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: needs root (BPF and network namespaces)");
        return false;
    }
    true
}

/// A named network namespace `ekho-bpf-<pid>-<n>`, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "ekho-bpf-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME ARGS`, panics on failure.
    pub fn ip(&self, args: &str) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend(args.split_whitespace());
        sh(&v);
    }

    /// `ip -batch -n NAME -`, panics on failure.
    pub fn ip_batch(&self, lines: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "ip -batch failed in {}",
            self.name
        );
    }

    /// `bridge -n NAME ARGS`, panics on failure.
    pub fn bridge(&self, args: &str) {
        let mut v = vec!["bridge", "-n", &self.name];
        v.extend(args.split_whitespace());
        sh(&v);
    }

    /// `bridge -n NAME ARGS`, returns success.
    pub fn bridge_try(&self, args: &str) -> bool {
        Command::new("bridge")
            .args(["-n", &self.name])
            .args(args.split_whitespace())
            .output()
            .unwrap()
            .status
            .success()
    }

    /// `ip netns exec NAME CMD...`, returns success.
    pub fn exec(&self, cmd: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd.split_whitespace())
            .output()
            .unwrap()
            .status
            .success()
    }

    /// A bridge `br0` with port `p0` (veth, peer `p1` also in this namespace, addressed
    /// 10.8.0.2/24) — all up.
    pub fn bridge_topology(&self) {
        self.ip("link add br0 type bridge");
        self.ip("link add p0 type veth peer name p1");
        self.ip("link set p0 master br0");
        self.ip("link set br0 up");
        self.ip("link set p0 up");
        self.ip("link set p1 up");
        self.ip("addr add 10.8.0.2/24 dev p1");
    }

    /// A veth `v0` (10.9.0.1/24, up) with peer `v1` in this namespace.
    pub fn veth_topology(&self) {
        self.ip("link add v0 type veth peer name v1");
        self.ip("addr add 10.9.0.1/24 dev v0");
        self.ip("link set v0 up");
        self.ip("link set v1 up");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn sh(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Collects everything an EbpfSource delivers.
#[derive(Clone, Default)]
pub struct Collector {
    pub events: Arc<Mutex<Vec<NotifierEvent>>>,
    pub losses: Arc<Mutex<Vec<Vec<ObjectKind>>>>,
}

impl Collector {
    pub fn sinks(&self) -> (EventSink, LossSink) {
        let ev = self.events.clone();
        let lo = self.losses.clone();
        (
            Arc::new(move |batch| ev.lock().unwrap().extend(batch)),
            Arc::new(move |kinds: &[ObjectKind]| lo.lock().unwrap().push(kinds.to_vec())),
        )
    }

    pub fn snapshot(&self) -> Vec<NotifierEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for an event matching `pred`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&NotifierEvent) -> bool,
    ) -> NotifierEvent {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            if start.elapsed() > timeout {
                let got: Vec<String> = self.snapshot().iter().map(short).collect();
                panic!(
                    "no event {what} within {timeout:?}; got {} events:\n{}",
                    got.len(),
                    got.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One-line rendering for failure messages.
pub fn short(e: &NotifierEvent) -> String {
    format!(
        "{} {} dev={}({}) addr={:?} lladdr={} vlan={} state={:#x} old={:#x} flags={:#x} value={} detail={}",
        e.hook, e.event, e.dev, e.ifindex, e.addr.into_option(), e.lladdr, e.vlan, e.state, e.old_state, e.flags, e.value, e.detail
    )
}

pub fn v4(s: &str) -> ekho_plugin_api::object::IpAddress {
    s.parse().unwrap()
}

impl Netns {
    /// Interface index of `dev` in this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", dev])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        s.split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no ifindex for {dev}: {s}"))
    }
}

impl Netns {
    /// MAC address of `dev` (`aa:bb:...`).
    pub fn mac(&self, dev: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", dev])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let mut it = s.split_whitespace().skip_while(|w| *w != "link/ether");
        it.nth(1)
            .unwrap_or_else(|| panic!("no MAC for {dev}: {s}"))
            .to_string()
    }
}

/// CLOCK_MONOTONIC now, ns (the clock of event timestamps).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This kernel's release (`uname -r`), named in skip messages and kernel-specific expectations.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown kernel ({e})"))
}

/// Whether a tracepoint hook is unavailable because this kernel has no such tracepoint at all:
/// tp_btf found no `btf_trace_NAME` type in the kernel's BTF and raw_tp got ENOENT. Any other
/// failure (verifier, permissions) is not that.
pub fn tracepoint_missing(h: &ekho_ebpf::HookStatus) -> bool {
    let tp = h.name.trim_start_matches("tp_btf/");
    match &h.state {
        ekho_ebpf::HookState::Unavailable { reason } => {
            reason.contains(&format!("Unknown BTF type `btf_trace_{tp}`"))
                && reason.contains("raw_tp: ENOENT")
        }
        _ => false,
    }
}
