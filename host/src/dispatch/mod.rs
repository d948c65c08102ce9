//! Per-plugin dispatch: a capability filter, a coalescing queue, and one worker thread per plugin.
//!
//! The mirror calls every plugin's listener under its lock; the listener filters (kinds, families,
//! ports) and enqueues without blocking. The queue holds at most one pending entry per object key:
//! the version the plugin was given last (`base`) and the latest version (`target`), so add then
//! remove cancels, many updates collapse into the last one, and memory stays bounded by the size
//! of the mirror however slow the plugin is. The worker drains the queue in dependency order and
//! records one outcome per change.
//!
//! - [`status`]: what `ekho status` shows of a plugin.
//! - [`ports`]: which ports a plugin owns; which objects it takes.
//! - [`gate`]: which changes a running replay leaves to itself.
//! - [`queue`]: the coalescing queue between the mirror and a plugin's worker.
//! - [`limits`]: additions the host refuses for the plugin (declared limits, ECMP width).
//! - [`keys`]: the key hashes identifying held objects.
//! - [`held`]: what a plugin holds, with which outcome.
//! - [`worker`]: the thread calling the plugin (syncs, increments, outcomes).
//! - [`stream`]: the initial dump fanned out to the plugins loaded at start-up.
//! - [`watchdog`]: which call into the plugin is running, since when.

mod gate;
mod held;
mod keys;
mod limits;
mod ports;
mod queue;
mod status;
mod stream;
mod views;
pub mod watchdog;
mod worker;

pub use queue::Queue;
pub use status::{HungCall, PluginState, PluginStatus, TcOutcome, TcRefusal};
pub use stream::{Fanout, StreamFeed};

use crate::binding::Bound;
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::ObjectKey;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Reads the mirror for a lazy replay: `(after, max, out, at_cursor)` appends to `out` up to
/// `max` additions of the objects after `after` in key order and calls `at_cursor(last, done)`
/// under the mirror's lock (see `ekho_mirror::Mirror::replay_chunk_into`).
pub type ReplaySource = Arc<
    dyn Fn(Option<&ObjectKey>, usize, &mut Vec<Change>, &mut dyn FnMut(Option<&ObjectKey>, bool))
        + Send
        + Sync,
>;

/// Reads one object from the mirror (to offer again an addition refused at a declared limit).
pub type Lookup = Arc<dyn Fn(&ObjectKey) -> Option<Object> + Send + Sync>;

/// Reads the tc filters of one chain from the mirror, `(target, parent, chain)`, in `pref`
/// order (the host refuses a filter after one it does not hand over).
pub type TcChain = Arc<
    dyn Fn(ekho_plugin_api::object::TcTarget, u32, u32) -> Vec<ekho_plugin_api::object::TcFilter>
        + Send
        + Sync,
>;

/// How many objects the mirror holds, about (sizes the held set before a replay).
pub type Size = Arc<dyn Fn() -> usize + Send + Sync>;

/// How a plugin's worker reads the mirror.
pub struct MirrorAccess {
    /// Lazy replay.
    pub replay: ReplaySource,
    /// One object.
    pub lookup: Lookup,
    /// Object count.
    pub size: Size,
    /// The tc filters of one chain.
    pub tc_chain: TcChain,
}

/// Changes handed to a plugin per `apply` call, at most.
pub const BATCH: usize = 1024;

/// Per-kind arrays are indexed by [`ObjectKind::index`].
const KINDS: usize = ObjectKind::ALL.len();

/// A plugin attached to the dispatcher.
pub struct PluginHandle {
    pub status: Arc<Mutex<PluginStatus>>,
    pub queue: Arc<Queue>,
    pub caps: Capabilities,
    /// The call running in the plugin, for the watchdog.
    pub clock: Arc<watchdog::CallClock>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PluginHandle {
    /// Starts the worker thread for `plugin`, with changes held back for a replay: the caller
    /// attaches the queue's listener to the mirror, then calls [`Queue::request_replay`].
    pub fn start(
        plugin: Bound,
        caps: Capabilities,
        ports_override: Option<&[String]>,
        status: PluginStatus,
        mirror: MirrorAccess,
        feed: Option<StreamFeed>,
    ) -> PluginHandle {
        let clock = Arc::new(watchdog::CallClock::default());
        let plugin = watchdog::Watched::wrap(plugin, clock.clone());
        let queue = Queue::new(caps.clone(), ports_override);
        if feed.is_none() {
            queue.hold_for_replay();
        }
        let mut status = status;
        status.state = Some(PluginState::Syncing);
        let status = Arc::new(Mutex::new(status));
        let worker = worker::Worker::new(
            plugin,
            queue.clone(),
            status.clone(),
            caps.clone(),
            mirror,
            feed,
        );
        let name = status.lock().unwrap().name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .spawn(move || worker.run())
            .expect("spawn plugin worker thread");
        PluginHandle {
            status,
            queue,
            caps,
            clock,
            thread: Some(thread),
        }
    }

    /// A snapshot of the status, with the live queue depth.
    pub fn snapshot(&self) -> PluginStatus {
        let mut s = self.status.lock().unwrap().clone();
        s.queue_depth = self.queue.depth();
        s.fill_outcomes();
        s
    }

    /// Feeds the plugin nothing more (it is hung): what is pending is dropped.
    pub fn stop_feeding(&self) {
        self.queue.close();
    }

    /// Shuts the plugin down and joins its worker (waits at most `timeout`).
    pub fn stop(&mut self, timeout: Duration) {
        self.begin_stop();
        self.join_by(Instant::now() + timeout);
    }

    /// Asks the worker to shut the plugin down (returns at once).
    pub fn begin_stop(&self) {
        self.queue.shutdown();
    }

    /// Joins the worker, waiting until `deadline` at most (a plugin hung in a call is left).
    /// Whether it stopped.
    pub fn join_by(&mut self, deadline: Instant) -> bool {
        if let Some(t) = self.thread.take() {
            let timeout = deadline.saturating_duration_since(Instant::now());
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("plugin worker did not stop within {timeout:?}; leaving it");
                return false;
            }
        }
        true
    }
}

/// Objects the unit tests build.
#[cfg(test)]
mod test_objects {
    use ekho_plugin_api::object::{Link, NextHop, Route};
    use ekho_plugin_api::prelude::*;

    pub fn link(ifindex: u32, name: &str) -> Object {
        Object::Link(Link {
            ifindex,
            ifname: name.into(),
            ..Default::default()
        })
    }

    pub fn route(dst: &str, ifindex: u32, gw: &str) -> Object {
        Object::Route(Route::unicast(
            dst.parse().unwrap(),
            vec![NextHop::via(gw.parse().unwrap(), ifindex)],
        ))
    }
}
