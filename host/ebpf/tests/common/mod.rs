//! Test helpers: the test kit's private network namespaces (deleted on drop, also on panic) with
//! this crate's topologies, and an event collector.

#![allow(dead_code)]

use ekho_ebpf::{EventSink, LossSink};
use ekho_plugin_api::{NotifierEvent, ObjectKind};
#[allow(unused_imports)] // not every test file names the kernel
pub use ekho_testkit::kernel;
use ekho_testkit::{needs_root, say_skip};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether these tests can run at all (they load BPF and create namespaces); prints `SKIP:` when
/// not.
pub fn privileged() -> bool {
    if let Some(r) = needs_root("BPF and network namespaces") {
        say_skip(&r);
        return false;
    }
    true
}

/// The test kit's namespace (`ekho-bpf-<pid>-<n>`, deleted on drop, also on panic; every kit
/// method through `Deref`) with these tests' topologies.
pub struct Netns(ekho_testkit::Netns);

impl std::ops::Deref for Netns {
    type Target = ekho_testkit::Netns;
    fn deref(&self) -> &ekho_testkit::Netns {
        &self.0
    }
}

impl Netns {
    pub fn new() -> Netns {
        Netns(ekho_testkit::Netns::named("ekho-bpf"))
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

/// Whether a tracepoint hook is unavailable because this kernel has no such tracepoint at all:
/// raw_tp got ENOENT, and tp_btf found no `btf_trace_NAME` type in the kernel's BTF (or was not
/// tried: `force_raw_tp`). Any other failure (verifier, permissions) is not that.
pub fn tracepoint_missing(h: &ekho_ebpf::HookStatus) -> bool {
    let tp = h.name.trim_start_matches("tp_btf/");
    match &h.state {
        ekho_ebpf::HookState::Unavailable { reason } => {
            (reason.contains(&format!("Unknown BTF type `btf_trace_{tp}`"))
                || reason.starts_with("tp_btf: tp_btf skipped (force_raw_tp)"))
                && reason.contains("raw_tp: ENOENT")
        }
        _ => false,
    }
}
