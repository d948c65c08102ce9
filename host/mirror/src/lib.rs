//! ekho's mirror: the kernel's networking state in user space.
//!
//! [`Mirror`] owns the state and turns kernel input into the exact list of object [`Change`]s,
//! handed to listeners (the host's per-plugin dispatch) under the mirror's lock, so that a listener
//! attached with [`Mirror::attach`] sees the snapshot and then every later change, with no gap and
//! no duplicate. [`source`] feeds it from rtnetlink (subscribe, dump, notifications, inference of
//! the changes the kernel does not announce, resync after overruns) in a chosen netns.
//!
//! Within one batch of changes, adds and updates come first in dependency order (links, netconf,
//! addresses, nexthops, groups, neighbours, FDB, MDB, routes, rules), then removals in reverse
//! order. Device names (`dev`, `master_name`, ...) are filled from the link table when an object
//! is emitted or dumped.
//!
//! Routes: the kernel may hold several entries under one (table, dst, src, tos, metric): IPv4
//! `append`/`prepend` alternatives, IPv6 same-metric device routes on several devices. The mirror
//! keeps all of them, in kernel order. Device routes on different devices are distinct objects
//! (the plugin-api key's `dev` discriminator); among entries with the same plugin-api key,
//! listeners see the first (the one in effect) as *the* route of that key. [`Mirror::dump`]
//! returns every entry (as `ip route show` does).

#![warn(missing_docs)]

use ekho_plugin_api::{Change, Object, ObjectKey, ObjectKind};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

pub mod conntrack;
pub mod event;
pub mod netlink;
pub mod replay;
pub mod routes;
pub mod source;
pub mod state;
pub mod tcshow;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod undecodable;

pub use event::Event;
use state::{Snapshot, State};

/// A listener of mirror changes. Called with the mirror's lock held: must not block (enqueue and
/// return).
pub type Listener = Box<dyn FnMut(&[Change]) + Send>;

/// A listener of mirror changes whose objects it keeps ([`SharedChange`]: one allocation per
/// object for every such listener, not a copy each). Called with the mirror's lock held, after
/// the [`Listener`]s: must not block.
pub type SharedListener = Box<dyn FnMut(&[SharedChange]) + Send>;

/// A [`Change`] whose objects are reference-counted: the per-plugin queues of a batch hold the
/// same objects, and the last one to hand an object on moves it instead of copying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedChange {
    /// A new object.
    Add(Arc<Object>),
    /// An object changed.
    Update {
        /// As it was.
        old: Arc<Object>,
        /// As it is.
        new: Arc<Object>,
    },
    /// An object is gone (as it was).
    Remove(Arc<Object>),
}

impl SharedChange {
    /// The version before the change (`None`: an addition).
    pub fn before(&self) -> Option<&Arc<Object>> {
        match self {
            SharedChange::Add(_) => None,
            SharedChange::Update { old, .. } | SharedChange::Remove(old) => Some(old),
        }
    }

    /// The version after the change (`None`: a removal).
    pub fn after(&self) -> Option<&Arc<Object>> {
        match self {
            SharedChange::Add(new) | SharedChange::Update { new, .. } => Some(new),
            SharedChange::Remove(_) => None,
        }
    }

    /// The object as it is after the change (for a removal, as it was), as
    /// [`Change::object`].
    pub fn object(&self) -> &Object {
        match self {
            SharedChange::Add(o) | SharedChange::Remove(o) => o,
            SharedChange::Update { new, .. } => new,
        }
    }
}

impl From<Change> for SharedChange {
    fn from(c: Change) -> SharedChange {
        match c {
            Change::Add(o) => SharedChange::Add(Arc::new(o)),
            Change::Update { old, new } => SharedChange::Update {
                old: Arc::new(old),
                new: Arc::new(new),
            },
            Change::Remove(o) => SharedChange::Remove(Arc::new(o)),
        }
    }
}

/// A listener of either form.
enum AnyListener {
    Plain(Listener),
    Shared(SharedListener),
}

/// Identifies an attached listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub u64);

/// Counters of the mirror and its source, shown by `ekho status`.
#[derive(Clone, Debug, Default)]
pub struct MirrorStats {
    /// Objects held, per kind (plural kind name -> count), and tc's entries per list
    /// (`qdiscs`, `classes`, `filters`, `chains`, `actions`).
    pub objects: BTreeMap<&'static str, usize>,
    /// Netlink messages received.
    pub messages: u64,
    /// Socket overruns (ENOBUFS) seen.
    pub overruns: u64,
    /// Overruns per event socket (`rtnetlink`, `nftables`; both always present): which socket
    /// lost messages. A notification too large for its receive slot counts as an overrun of
    /// its socket.
    pub socket_overruns: BTreeMap<&'static str, u64>,
    /// Re-dumps reconciled after the initial sync, per kind (plural kind name, `tc` for the tc
    /// dump): what a resync re-read. An overrun of the rtnetlink socket re-dumps every kind but
    /// the nftables ones, and tc; one of the nftables socket only `nf_chains` and
    /// `nf_flowtables`; a targeted re-dump only the kinds asked for.
    pub resynced: BTreeMap<&'static str, u64>,
    /// Resyncs done (after overruns, eBPF ring-buffer losses, or targeted re-dumps).
    pub resyncs: u64,
    /// Duration of the last resync, in milliseconds.
    pub last_resync_ms: u64,
    /// Whether the initial dump has completed.
    pub synced: bool,
    /// Changes emitted to listeners.
    pub changes: u64,
    /// Distinct shared route attribute sets (next hops etc.) held.
    pub route_attr_sets: usize,
    /// Initial dumps completed (one per source started: a restarted source's full resync counts).
    pub syncs: u64,
    /// Netlink messages that failed to decode, per message type name (see [`undecodable`]).
    pub undecodable: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Inner {
    state: State,
    listeners: Vec<(ListenerId, AnyListener)>,
    /// A shared batch's buffer, kept with its capacity.
    shared: Vec<SharedChange>,
    next_id: u64,
    stats: MirrorStats,
}

impl Inner {
    fn emit(&mut self) {
        let changes = self.state.flush();
        if changes.is_empty() {
            return;
        }
        self.stats.changes += changes.len() as u64;
        let mut any_shared = false;
        for (_, l) in self.listeners.iter_mut() {
            match l {
                AnyListener::Plain(l) => l(&changes),
                AnyListener::Shared(_) => any_shared = true,
            }
        }
        if any_shared {
            // Moved, not copied: the batch's objects are the shared listeners' from here.
            let mut shared = std::mem::take(&mut self.shared);
            shared.extend(changes.into_iter().map(SharedChange::from));
            for (_, l) in self.listeners.iter_mut() {
                if let AnyListener::Shared(l) = l {
                    l(&shared);
                }
            }
            shared.clear();
            self.shared = shared;
        }
    }

    fn push_listener(&mut self, l: AnyListener) -> ListenerId {
        self.next_id += 1;
        let id = ListenerId(self.next_id);
        self.listeners.push((id, l));
        id
    }
}

/// How far a source's initial dump has come (see [`Mirror::dump_progress`]), counted by the
/// dump's receiving thread as datagrams arrive.
pub(crate) struct DumpProgress {
    /// Messages received so far, per kind ([`ObjectKind::index`]).
    messages: Vec<std::sync::atomic::AtomicU64>,
    /// The kind being dumped ([`ObjectKind::index`]), `usize::MAX` when no dump runs.
    dumping: std::sync::atomic::AtomicUsize,
}

impl Default for DumpProgress {
    fn default() -> Self {
        DumpProgress {
            messages: ObjectKind::ALL.iter().map(|_| Default::default()).collect(),
            dumping: usize::MAX.into(),
        }
    }
}

impl DumpProgress {
    /// A new dump starts: counts back to 0.
    pub(crate) fn reset(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for m in &self.messages {
            m.store(0, Relaxed);
        }
        self.dumping.store(usize::MAX, Relaxed);
    }

    /// Kind `k` is being dumped from now on (`None`: the dump is over).
    pub(crate) fn dumping(&self, k: Option<ObjectKind>) {
        self.dumping.store(
            k.map_or(usize::MAX, |k| k.index()),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// `n` more messages of the kind being dumped.
    pub(crate) fn add(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(m) = self.messages.get(self.dumping.load(Relaxed)) {
            m.fetch_add(n, Relaxed);
        }
    }
}

/// How far the initial dump (of the last source started) has come: the kind being dumped
/// (`None` once it is over) and the messages received so far per kind, by plural name
/// (`routes`). Kinds dumped by one request of another kind's (nexthop groups, proxy entries)
/// are counted under the kind asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// The kind whose dump runs now.
    pub dumping: Option<ObjectKind>,
    /// Messages received per kind.
    pub messages: BTreeMap<&'static str, u64>,
}

/// Requests from mirror users to the running source.
#[derive(Default)]
pub(crate) struct Control {
    /// The initial dump's progress.
    pub progress: Arc<DumpProgress>,
    /// Kinds to re-dump.
    pub resync: Mutex<BTreeSet<ObjectKind>>,
    /// Wakes the source thread (an eventfd), when a source runs.
    pub waker: Mutex<Option<std::os::fd::OwnedFd>>,
    /// Socket in the mirrored netns for requests (neighbour resolution).
    pub req: Mutex<Option<source::ReqSocket>>,
    /// Whether tc is to be re-dumped.
    pub tc_resync: std::sync::atomic::AtomicBool,
}

impl Control {
    pub(crate) fn wake(&self) {
        if let Some(fd) = self.waker.lock().unwrap().as_ref() {
            use std::os::fd::AsRawFd;
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own.
            unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        }
    }
}

/// The mirror. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Mirror {
    inner: Arc<Mutex<Inner>>,
    ctl: Arc<Control>,
}

impl Mirror {
    /// An empty mirror; feed it with [`source::run`].
    pub fn new() -> Mirror {
        Mirror::default()
    }

    /// Atomically: calls `init` with the current state (every object, in dependency order: see
    /// [`ObjectKind`]; for routes, the entry in effect per key), then registers `listener` for
    /// every later change.
    pub fn attach(&self, init: impl FnOnce(Vec<Object>), listener: Listener) -> ListenerId {
        let mut g = self.inner.lock().unwrap();
        let objs = g.state.all(None, false);
        init(objs);
        let id = g.push_listener(AnyListener::Plain(listener));
        g.state.tracking = true;
        id
    }

    /// Registers `listener` for every change after the initial dump is installed, without a
    /// snapshot: for listeners fed the initial dump by the source's
    /// [`InitialStream`](source::InitialStream). Call before the source starts; until the
    /// initial dump is installed no change is computed for them.
    pub fn attach_synced(&self, listener: Listener) -> ListenerId {
        self.attach_synced_any(AnyListener::Plain(listener))
    }

    /// [`Mirror::attach_synced`] for a listener that keeps the objects.
    pub fn attach_synced_shared(&self, listener: SharedListener) -> ListenerId {
        self.attach_synced_any(AnyListener::Shared(listener))
    }

    fn attach_synced_any(&self, listener: AnyListener) -> ListenerId {
        let mut g = self.inner.lock().unwrap();
        let id = g.push_listener(listener);
        if g.stats.synced {
            g.state.tracking = true;
        }
        id
    }

    /// Removes a listener.
    pub fn detach(&self, id: ListenerId) {
        let mut g = self.inner.lock().unwrap();
        g.listeners.retain(|(i, _)| *i != id);
        if g.listeners.is_empty() {
            g.state.tracking = false;
            let _ = g.state.flush();
        }
    }

    /// The current objects of one kind (or all), with device names filled in, in dependency
    /// order. Routes: every entry the kernel holds (alternatives under one key included).
    pub fn dump(&self, kind: Option<ObjectKind>) -> Vec<Object> {
        self.inner.lock().unwrap().state.all(kind, true)
    }

    /// One object by key (routes: the entry in effect), named.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        self.inner.lock().unwrap().state.get(key)
    }

    /// The tc filters of one chain (`target`, `parent`: the hook or class, `chain`), in `pref`
    /// then handle order, as held now (unnamed: the dispatch judges them by ifindex).
    pub fn tc_chain(
        &self,
        target: ekho_plugin_api::object::TcTarget,
        parent: u32,
        chain: u32,
    ) -> Vec<ekho_plugin_api::object::TcFilter> {
        let at = |prio, handle| ObjectKey::TcFilter {
            target,
            parent,
            chain,
            prio,
            handle,
        };
        let g = self.inner.lock().unwrap();
        g.state
            .objs
            .range(at(0, 0)..=at(u16::MAX, u32::MAX))
            .filter_map(|(_, o)| match o {
                Object::TcFilter(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    /// Objects held, all kinds (a route key with several aliases counts once).
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap();
        let st = &g.state;
        st.links.len() + st.objs.len() + st.routes.v4.len() + st.routes.v6.len()
    }

    /// Whether the mirror holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the conntrack flows offered to plugins (kind `flow`): `put` adds or replaces (an
    /// unchanged flow emits nothing), `del` removes (absent keys are ignored), and the net
    /// changes go to the listeners in one batch. The daemon's offload policy calls this from
    /// the conntrack source's thread: flows are not in the rtnetlink dump, and its resyncs
    /// never sweep them.
    pub fn update_flows(&self, put: Vec<ekho_plugin_api::object::Flow>, del: Vec<ObjectKey>) {
        let mut g = self.inner.lock().unwrap();
        for k in &del {
            if k.kind() == ObjectKind::Flow {
                g.state.del(k);
            }
        }
        for f in put {
            let o = Object::Flow(f);
            if g.state.objs.get(&o.key()) != Some(&o) {
                g.state.put(o);
            }
        }
        g.emit();
    }

    /// The tc state: qdiscs, classes, chains, filters and actions (see [`state::tc`]).
    pub fn tc(&self) -> state::tc::Tc {
        self.inner.lock().unwrap().state.tc.clone()
    }

    /// Counters.
    pub fn stats(&self) -> MirrorStats {
        let g = self.inner.lock().unwrap();
        let mut s = g.stats.clone();
        s.objects = g.state.counts();
        s.objects.extend(g.state.tc.counts());
        s.route_attr_sets = g.state.routes.interned();
        s.undecodable = undecodable::counts();
        for k in ["rtnetlink", "nftables"] {
            s.socket_overruns.entry(k).or_default();
        }
        s
    }

    /// Initial dumps completed ([`MirrorStats::syncs`]), without computing the other counters.
    pub fn syncs(&self) -> u64 {
        self.inner.lock().unwrap().stats.syncs
    }

    /// How far the initial dump has come (while `ekho status` says `syncing`; after a source
    /// restart, its full resync).
    pub fn dump_progress(&self) -> SyncProgress {
        use std::sync::atomic::Ordering::Relaxed;
        let p = &self.ctl.progress;
        SyncProgress {
            dumping: ObjectKind::ALL.get(p.dumping.load(Relaxed)).copied(),
            messages: ObjectKind::ALL
                .iter()
                .zip(&p.messages)
                .map(|(k, n)| (k.plural(), n.load(Relaxed)))
                .collect(),
        }
    }

    /// Asks the running source to re-dump `kinds` and reconcile (e.g. after eBPF ring-buffer
    /// loss). Returns at once; the resync runs in the source.
    pub fn request_resync(&self, kinds: &[ObjectKind]) {
        self.ctl
            .resync
            .lock()
            .unwrap()
            .extend(kinds.iter().copied());
        self.ctl.wake();
    }

    /// Asks the kernel of the mirrored netns to resolve `addr` on device `ifindex` (an
    /// `RTM_NEWNEIGH` with `NTF_USE`, creating an entry and sending a probe as traffic would).
    /// The outcome arrives later as a neighbour change. Fails when no source runs.
    pub fn resolve_neighbour(
        &self,
        ifindex: u32,
        addr: ekho_plugin_api::object::IpAddress,
    ) -> Result<(), source::SourceError> {
        let g = self.ctl.req.lock().unwrap();
        match g.as_ref() {
            Some(s) => s.resolve_neighbour(ifindex, addr),
            None => Err(source::SourceError::NotRunning),
        }
    }

    /// Applies a batch of decoded kernel events and emits the net changes. Returns whether
    /// proxy neighbours should be re-dumped (silent changes possible).
    pub(crate) fn apply_events(&self, evs: &mut Vec<Event>, messages: u64) -> bool {
        let mut g = self.inner.lock().unwrap();
        g.stats.messages += messages;
        // Drained: the caller's vector keeps its capacity for the next batch (a vector taken
        // whole regrew from nothing, each doubling a copy of large events).
        for e in evs.drain(..) {
            g.state.apply(e);
        }
        g.emit();
        if std::mem::take(&mut g.state.tc.want_redump) {
            self.ctl
                .tc_resync
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let redump = std::mem::take(&mut g.state.want_redump);
        if !redump.is_empty() {
            // The source re-dumps them right after this batch.
            self.ctl.resync.lock().unwrap().extend(redump);
        }
        std::mem::take(&mut g.state.want_proxy_dump)
    }

    /// Reconciles a dump into the state, emitting only differences.
    pub(crate) fn reconcile(&self, mut snap: Snapshot, messages: u64, ms: u64, counted: bool) {
        let mut g = self.inner.lock().unwrap();
        if snap.kinds.contains(&ObjectKind::Route) && g.state.has_undumpable_routes() {
            tracing::warn!(
                "an IPv6 route is too large for the kernel to dump: route resync without removals"
            );
            snap.partial.insert(ObjectKind::Route);
        }
        g.stats.messages += messages;
        g.state.reconcile(snap);
        g.emit();
        if counted {
            g.stats.resyncs += 1;
            g.stats.last_resync_ms = ms;
        }
    }

    /// Starts a streamed route resync ([`state::State::stream_route`]): clears the marks.
    pub(crate) fn stream_routes_begin(&self) {
        self.inner.lock().unwrap().state.routes.clear_marks();
    }

    /// Applies a chunk of a streamed route resync (complete keys, dump order) under one lock
    /// and emits what differs; `groups` is left empty for the next chunk.
    pub(crate) fn stream_routes(
        &self,
        groups: &mut Vec<(routes::RKey, Vec<ekho_plugin_api::object::Route>)>,
    ) {
        let mut g = self.inner.lock().unwrap();
        for (k, v) in groups.drain(..) {
            g.state.stream_route(k, &v);
        }
        g.emit();
    }

    /// Ends a streamed route resync: sweeps the routes not seen when `complete` (and no IPv6
    /// route is too large to dump), emits, counts the resync when `counted`.
    pub(crate) fn stream_routes_end(&self, complete: bool, messages: u64, ms: u64, counted: bool) {
        let mut g = self.inner.lock().unwrap();
        let mut sweep = complete;
        if sweep && g.state.has_undumpable_routes() {
            tracing::warn!(
                "an IPv6 route is too large for the kernel to dump: route resync without removals"
            );
            sweep = false;
        }
        g.stats.messages += messages;
        g.state.sweep_routes(sweep);
        g.emit();
        if counted {
            g.stats.resyncs += 1;
            g.stats.last_resync_ms = ms;
        }
    }

    pub(crate) fn set_synced(&self, ms: u64) {
        let mut g = self.inner.lock().unwrap();
        g.stats.synced = true;
        g.stats.syncs += 1;
        if !g.listeners.is_empty() {
            // Listeners attached with `attach_synced` were given the initial dump by the
            // stream: track every change from here on.
            g.state.tracking = true;
        }
        g.stats.last_resync_ms = ms;
    }

    /// Counts an overrun of the event socket named `socket` (`rtnetlink`, `nftables`).
    pub(crate) fn count_overrun(&self, socket: &'static str) {
        let mut g = self.inner.lock().unwrap();
        g.stats.overruns += 1;
        *g.stats.socket_overruns.entry(socket).or_default() += 1;
    }

    /// Counts a re-dump of `kinds` (and of tc when `tc`) after the initial sync.
    pub(crate) fn count_redump(&self, kinds: &BTreeSet<ObjectKind>, tc: bool) {
        let mut g = self.inner.lock().unwrap();
        for k in kinds {
            *g.stats.resynced.entry(k.plural()).or_default() += 1;
        }
        if tc {
            *g.stats.resynced.entry("tc").or_default() += 1;
        }
    }

    pub(crate) fn control(&self) -> &Arc<Control> {
        &self.ctl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekho_plugin_api::object::{Flow, FlowTuple};

    fn flow(sport: u16) -> Flow {
        let a = |s: &str| s.parse().unwrap();
        let t = FlowTuple {
            src: a("10.0.0.1"),
            dst: a("10.0.0.2"),
            sport,
            dport: 80,
        };
        let r = FlowTuple {
            src: t.dst,
            dst: t.src,
            sport: 80,
            dport: sport,
        };
        Flow::new(6, t, r)
    }

    #[test]
    fn flows_are_put_and_deleted_and_a_full_resync_keeps_them() {
        let m = Mirror::new();
        let seen: Arc<Mutex<Vec<String>>> = Default::default();
        let s = seen.clone();
        m.attach(
            |_| {},
            Box::new(move |cs| {
                s.lock()
                    .unwrap()
                    .extend(cs.iter().map(|c| format!("{} {}", c.op(), c.kind())))
            }),
        );
        m.update_flows(vec![flow(1), flow(2)], vec![]);
        // Unchanged: nothing emitted.
        m.update_flows(vec![flow(1)], vec![]);
        let k2 = Object::Flow(flow(2)).key();
        m.update_flows(vec![], vec![k2.clone()]);
        assert_eq!(
            *seen.lock().unwrap(),
            ["add flow", "add flow", "remove flow"]
        );
        // An rtnetlink resync of every kind sweeps what its dump lacks, never flows.
        m.reconcile(
            Snapshot {
                kinds: ObjectKind::ALL.iter().copied().collect(),
                ..Default::default()
            },
            0,
            0,
            true,
        );
        assert!(m.get(&Object::Flow(flow(1)).key()).is_some());
        assert!(m.get(&k2).is_none());
        assert_eq!(seen.lock().unwrap().len(), 3);
    }
}
