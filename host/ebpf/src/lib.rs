//! ekho's eBPF source: kernel notifier events (FIB, switchdev, netevent, netdevice chains; neighbour
//! and bridge-FDB tracepoints) captured in the kernel, filtered to one network namespace, delivered
//! through ring buffers as [`NotifierEvent`]s.
//!
//! THIS FILE IS A SKELETON of the API the host depends on; internals are to be written.

use ekho_plugin_api::{NotifierEvent, ObjectKind};
use std::path::PathBuf;
use std::sync::Arc;

/// What became of one hook at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookState {
    /// Attached as intended.
    Live,
    /// The preferred attachment was refused; this one is live instead (e.g. `tp_btf/neigh_update`).
    FallenBack { to: String, reason: String },
    /// Nothing attached; the kernel's reason.
    Unavailable { reason: String },
}

/// One hook and its state (`name` like `fentry/call_fib_notifiers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookStatus {
    pub name: String,
    pub state: HookState,
}

/// Where and how to capture.
#[derive(Clone, Debug, Default)]
pub struct EbpfConfig {
    /// Network namespace whose events are kept: `None` for the caller's, else a path
    /// (`/run/netns/NAME`).
    pub netns: Option<PathBuf>,
}

/// Receives batches of events (called from the source's task; must not block for long).
pub type EventSink = Arc<dyn Fn(Vec<NotifierEvent>) + Send + Sync>;
/// Told which kinds must be re-dumped after ring-buffer loss.
pub type LossSink = Arc<dyn Fn(&[ObjectKind]) + Send + Sync>;

/// Errors that stop the eBPF source as a whole (individual hooks failing are in [`HookStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("cannot load BPF programs: {0} (ekho runs on netlink alone)")]
    Load(String),
}

/// Counters for `ekho status`.
#[derive(Clone, Debug, Default)]
pub struct EbpfStats {
    pub events: u64,
    /// Events lost because the ring buffer was full (read from the per-CPU drop counter).
    pub lost: u64,
}

/// A running eBPF source; dropping it detaches everything.
pub struct EbpfSource {
    pub hooks: Vec<HookStatus>,
}

impl EbpfSource {
    /// Loads and attaches what this kernel allows, spawns the ring-buffer reader on the current
    /// tokio runtime.
    pub fn start(cfg: EbpfConfig, events: EventSink, loss: LossSink) -> Result<EbpfSource, EbpfError> {
        let _ = (cfg, events, loss);
        Err(EbpfError::Load("not implemented yet".into()))
    }

    /// Current counters.
    pub fn stats(&self) -> EbpfStats {
        EbpfStats::default()
    }
}
