//! The test kit of ekho's test crates (the mirror's, the eBPF source's, the xdp-router's and the
//! end-to-end tests in `tests/`).
//!
//! - [`Netns`]: a uniquely named private network namespace, deleted on drop (also on panic), driven
//!   with the real `ip`/`bridge`; tests never touch the machine's own namespace and run in
//!   parallel.
//! - [`sh`] and the [`Args`] of a command; [`unique`] names; [`TempDir`]; [`wait_for`].
//! - Skip reasons ([`needs_root`], [`missing_tools`], [`say_skip`], [`kernel`]): a test that cannot
//!   run here prints `SKIP:` with the reason instead of passing silently.
//! - [`tracked_netns`]: a namespace whose traffic conntrack tracks ([`conntrack_unavailable`]
//!   skips where it cannot run).
//! - [`Daemon`]: `ekho run` built from this workspace ([`build`]), its CLI and status.
//!
//! The kit depends on none of ekho's crates (so that any of them can use it); what needs a crate's
//! internals (a running mirror, an eBPF event collector, the xdp-router's topologies) stays in that
//! crate's `tests/common`.

mod cmd;
mod conntrack;
mod daemon;
mod netns;
mod skip;
mod temp;

pub use cmd::{sh, succeeds, try_sh, unique, Args};
pub use conntrack::{conntrack_unavailable, held_tcp, track, tracked_netns, Background};
pub use daemon::{build, ekho_bin, host_config, http_get, workspace, Daemon};
pub use netns::Netns;
pub use skip::{kernel, missing_tools, needs_root, say_skip};
pub use temp::{wait_for, TempDir};

/// The kernel functions ekho's eBPF source hooks with fentry, one per notifier chain: what the
/// tests expect live where the kernel allows fentry (Debian's 6.1), and fallen back where not.
pub const FENTRY_TARGETS: [&str; 5] = [
    "call_fib_notifiers",
    "call_switchdev_notifiers",
    "call_switchdev_blocking_notifiers",
    "call_netevent_notifiers",
    "call_netdevice_notifiers_info",
];
