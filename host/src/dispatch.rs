//! Per-plugin dispatch: a capability filter, a coalescing queue, and one worker thread per plugin.
//!
//! The mirror calls every plugin's listener under its lock; the listener filters (kinds, families,
//! ports) and enqueues without blocking. The queue holds at most one pending entry per object key:
//! the version the plugin was given last (`base`) and the latest version (`target`), so add then
//! remove cancels, many updates collapse into the last one, and memory stays bounded by the size
//! of the mirror however slow the plugin is. The worker drains the queue in dependency order and
//! records one outcome per change.

use crate::binding::Bound;
use crate::held::Held;
use ekho_mirror::routes::Attrs;
use ekho_mirror::source::Initial;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::{order, ObjectKey};
use indexmap::IndexMap;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
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
}

/// Additions refused at a declared limit that are remembered and offered again when room frees
/// up, at most (beyond this, they are offered again only when they change).
pub const REFUSED_REMEMBERED: usize = 100_000;

/// Changes handed to a plugin per `apply` call, at most.
pub const BATCH: usize = 1024;

/// Per-kind arrays are indexed by [`ObjectKind::index`].
const KINDS: usize = ObjectKind::ALL.len();
/// Notifier events kept per plugin while it is busy; older ones are dropped and counted.
pub const EVENT_QUEUE: usize = 65_536;

/// The state of a plugin, as `ekho status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Receiving the replay of the mirror (between begin-sync and end-sync).
    Syncing,
    /// Replay done; receiving increments.
    InSync,
    /// Refused at load, or failed (panicked / broke the contract); no longer called.
    Failed,
}

/// A failure kept for `ekho status`.
#[derive(Clone, Debug, Serialize)]
pub struct FailureRecord {
    pub kind: String,
    pub op: String,
    pub object: serde_json::Value,
    pub reason: String,
}

/// Everything `ekho status` shows about one plugin.
#[derive(Clone, Debug, Serialize, Default)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    pub api_version: String,
    /// How the host drives it: `native`, or `converted from 1.0` (built against an older minor).
    pub abi: String,
    pub path: String,
    pub state: Option<PluginState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Objects currently held for the plugin (given to it and not removed).
    pub objects: u64,
    /// Changes applied (each got an outcome from the plugin).
    pub applied: u64,
    pub offloaded: u64,
    pub unsupported: u64,
    pub trapped: u64,
    pub failed: u64,
    /// Additions the host refused on the plugin's behalf (declared limits, ECMP width).
    pub refused: u64,
    pub queue_depth: u64,
    pub events: u64,
    pub events_dropped: u64,
    pub syncs: u64,
    pub last_sync_ms: u64,
    /// Objects held, per kind, by outcome (rendered from `per_outcome` in snapshots).
    pub outcomes: HashMap<String, HashMap<String, u64>>,
    /// Objects held per kind (index: `ObjectKind as usize`) and outcome code.
    #[serde(skip)]
    pub per_outcome: [[u64; 4]; KINDS],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stats_text: String,
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub recent_failures: VecDeque<FailureRecord>,
}

/// Which ports a plugin owns, and the link table needed to decide it.
#[derive(Clone)]
pub struct PortFilter {
    all: bool,
    names: Vec<glob::Pattern>,
    drivers: Vec<String>,
    /// ifindex -> (name, kind) of every link the mirror has.
    links: HashMap<u32, (String, String)>,
}

impl PortFilter {
    /// From the plugin's declared scope, or the config's `ports` globs when given.
    pub fn new(scope: &PortScope, override_globs: Option<&[String]>) -> PortFilter {
        match override_globs {
            Some(g) => PortFilter {
                all: false,
                names: g
                    .iter()
                    .filter_map(|s| glob::Pattern::new(s).ok())
                    .collect(),
                drivers: vec![],
                links: HashMap::new(),
            },
            None => PortFilter {
                all: scope.all,
                names: scope
                    .names
                    .iter()
                    .filter_map(|s| glob::Pattern::new(s).ok())
                    .collect(),
                drivers: scope.drivers.iter().map(|s| s.to_string()).collect(),
                links: HashMap::new(),
            },
        }
    }

    /// The same scope with no link known yet.
    fn scope_only(&self) -> PortFilter {
        PortFilter {
            links: HashMap::new(),
            ..self.clone()
        }
    }

    /// Notes a link (name and driver decide whether it is a port of the plugin).
    fn note_link(&mut self, l: &ekho_plugin_api::object::Link) {
        self.links
            .insert(l.ifindex, (l.ifname.to_string(), l.kind.to_string()));
    }

    fn observe(&mut self, c: &Change) {
        match c {
            Change::Add(Object::Link(l))
            | Change::Update {
                new: Object::Link(l),
                ..
            } => {
                self.links
                    .insert(l.ifindex, (l.ifname.to_string(), l.kind.to_string()));
            }
            Change::Remove(Object::Link(l)) => {
                self.links.remove(&l.ifindex);
            }
            _ => {}
        }
    }

    /// For a link change: whether that link is owned now (`None` for other kinds).
    fn link_owned(&self, c: &Change) -> Option<bool> {
        match c.object() {
            Object::Link(l) => Some(self.links.contains_key(&l.ifindex) && self.owns(l.ifindex)),
            _ => None,
        }
    }

    /// Whether the port `ifindex` is owned.
    pub fn owns(&self, ifindex: u32) -> bool {
        if self.all {
            return true;
        }
        match self.links.get(&ifindex) {
            Some((name, kind)) => {
                self.names.iter().any(|p| p.matches(name)) || self.drivers.iter().any(|d| d == kind)
            }
            None => false,
        }
    }

    /// Links pass when owned; other objects when tied to no port or to at least one owned port.
    fn passes(&self, o: &Object) -> bool {
        if self.all {
            return true;
        }
        if let Object::Link(l) = o {
            return self.owns(l.ifindex);
        }
        let ifs = o.ifindexes();
        ifs.is_empty() || ifs.iter().any(|&i| self.owns(i))
    }
}

struct Pending {
    base: Option<Object>,
    target: Option<Object>,
}

struct QueueState {
    caps: Capabilities,
    ports: PortFilter,
    pending: IndexMap<ObjectKey, Pending>,
    events: VecDeque<NotifierEvent>,
    events_dropped: u64,
    sync_requested: bool,
    /// While a replay runs: the position of the last object it handed out (`None`: nothing yet).
    /// Changes after it are left to the replay, which reads the current state when it gets there.
    replay_gate: Option<Option<ObjectKey>>,
    /// Set when a port entered or left the plugin's scope: the worker re-evaluates everything.
    reevaluate: bool,
    closed: bool,
    shutdown: bool,
}

/// Whether a plugin with `caps` and port filter `ports` takes `o`.
fn takes(caps: &Capabilities, ports: &PortFilter, o: &Object) -> bool {
    let port_free = caps.features.routes_all_ports
        && matches!(
            o.kind(),
            ObjectKind::Route | ObjectKind::Nexthop | ObjectKind::Rule
        );
    caps.takes_kind(o.kind()) && caps.takes_family(o.family()) && (port_free || ports.passes(o))
}

impl QueueState {
    fn takes(&self, o: &Object) -> bool {
        takes(&self.caps, &self.ports, o)
    }

    fn push_change(&mut self, c: &Change) {
        // An update that changes identity (a device route moved to another device) is, for a
        // plugin, the removal of one object and the addition of another.
        if let Change::Update { old, new } = c {
            if old.key() != new.key() {
                self.push_change(&Change::Remove(old.clone()));
                self.push_change(&Change::Add(new.clone()));
                return;
            }
        }
        let (old, new) = match c {
            Change::Add(o) => (None, Some(o)),
            Change::Update { old, new } => (Some(old), Some(new)),
            Change::Remove(o) => (Some(o), None),
        };
        // The old version is judged with the port table as it was, the new one as it is now: a
        // renamed port changes ownership of the link itself.
        let base = old.filter(|o| self.takes(o)).cloned();
        let owned_before = self.ports.link_owned(c);
        self.ports.observe(c);
        if matches!(c, Change::Update { .. })
            && !self.ports.all
            && owned_before != self.ports.link_owned(c)
            && self.replay_gate.is_none()
        {
            // A port entered or left the plugin's scope (renamed, or its driver changed): what
            // is attached to it must follow. The worker re-evaluates the whole state.
            self.reevaluate = true;
        }
        if let Some(cursor) = &self.replay_gate {
            let pos = ekho_mirror::replay::replay_position(&c.key());
            if cursor.as_ref().is_none_or(|cur| pos > *cur) {
                return;
            }
        }
        let target = new.filter(|o| self.takes(o)).cloned();
        if base.is_none() && target.is_none() {
            return;
        }
        let key = c.key();
        match self.pending.entry(key) {
            indexmap::map::Entry::Occupied(mut e) => e.get_mut().target = target,
            indexmap::map::Entry::Vacant(e) => {
                e.insert(Pending { base, target });
            }
        }
    }
}

/// The queue between the mirror (producer, under its lock) and a plugin's worker.
pub struct Queue {
    st: Mutex<QueueState>,
    cv: Condvar,
}

impl Queue {
    /// A queue filtering with `caps` (ports overridden by `ports_override` when given).
    pub fn new(caps: Capabilities, ports_override: Option<&[String]>) -> Arc<Queue> {
        let ports = PortFilter::new(&caps.ports, ports_override);
        Arc::new(Queue {
            st: Mutex::new(QueueState {
                caps,
                ports,
                pending: IndexMap::new(),
                events: VecDeque::new(),
                events_dropped: 0,
                sync_requested: false,
                replay_gate: None,
                reevaluate: false,
                closed: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
        })
    }

    /// Asks for a full replay (read lazily from the mirror), bracketed by begin/end sync. Call
    /// before the listener is attached: changes are then left to the replay until it reaches them.
    pub fn request_replay(&self) {
        let mut st = self.st.lock().unwrap();
        if st.closed {
            return;
        }
        st.replay_gate = Some(None);
        st.sync_requested = true;
        self.cv.notify_one();
    }

    /// Keeps the replayed additions the plugin takes (noting the links it sees for the port
    /// filter), in place.
    fn take_replayed(&self, chunk: &mut Vec<Change>) {
        let mut st = self.st.lock().unwrap();
        for c in chunk.iter() {
            if let Change::Add(Object::Link(l)) = c {
                // Only links not known yet: the listener may have seen a newer version (a
                // rename) between the read of this chunk and now.
                if !st.ports.links.contains_key(&l.ifindex) {
                    st.ports.note_link(l);
                }
            }
        }
        chunk.retain(|c| st.takes(c.object()));
    }

    /// Enqueues changes (filtered, coalesced). Never blocks on the plugin.
    pub fn push_changes(&self, changes: &[Change]) {
        let mut st = self.st.lock().unwrap();
        if st.closed {
            return;
        }
        for c in changes {
            st.push_change(c);
        }
        if !st.pending.is_empty() {
            self.cv.notify_one();
        }
    }

    /// Enqueues notifier events the plugin takes (kind and port).
    pub fn push_events(&self, events: &[NotifierEvent]) {
        let mut st = self.st.lock().unwrap();
        if st.closed {
            return;
        }
        let mut any = false;
        for e in events {
            if !st.caps.takes_notifier(e.kind) || (e.ifindex != 0 && !st.ports.owns(e.ifindex)) {
                continue;
            }
            if st.events.len() >= EVENT_QUEUE {
                st.events.pop_front();
                st.events_dropped += 1;
            }
            st.events.push_back(e.clone());
            any = true;
        }
        if any {
            self.cv.notify_one();
        }
    }

    /// Pending entries (objects) plus pending events.
    pub fn depth(&self) -> u64 {
        let st = self.st.lock().unwrap();
        (st.pending.len() + st.events.len()) as u64
    }

    /// Asks the worker to shut the plugin down and stop.
    pub fn shutdown(&self) {
        let mut st = self.st.lock().unwrap();
        st.shutdown = true;
        st.closed = true;
        self.cv.notify_all();
    }

    fn close(&self) {
        let mut st = self.st.lock().unwrap();
        st.closed = true;
        st.pending.clear();
        st.events.clear();
    }
}

/// Why the host answers for the plugin without calling it. `adding`: the plugin does not hold
/// the object yet (the declared limit counts objects held, so updates are never refused by it).
fn host_refusal(
    caps: &Capabilities,
    held: &[u64; KINDS],
    o: &Object,
    adding: bool,
) -> Option<Outcome> {
    if let Object::Route(r) = o {
        let w = caps.features.max_ecmp_width;
        if w != 0 && r.nexthops.len() > w as usize {
            return Some(Outcome::Unsupported);
        }
    }
    if let (true, Some(max)) = (adding, caps.limit_for(o.kind())) {
        if held[o.kind().index()] >= max {
            return Some(Outcome::failed(format!(
                "refused by the host: limit reached, the plugin declares at most {max} {} entries",
                o.kind()
            )));
        }
    }
    None
}

/// A 64-bit hash of an object key: the identity of held objects in the outcome table (foldhash's
/// quality variant with a fixed seed: stable within the process, well mixed, fast).
fn key_hash(k: &ObjectKey) -> u64 {
    use std::hash::BuildHasher;
    let st = foldhash::quality::FixedState::with_seed(0x656b_686f);
    match k {
        // Routes are nearly all of a large table: their key is packed into six words and hashed
        // as one slice (the derived `Hash` writes a dozen small fields one by one, ~4x slower).
        ObjectKey::Route {
            family,
            table,
            dst,
            src,
            tos,
            metric,
            dev,
        } => {
            let addr = |a: &IpAddress| -> (u64, u64) {
                let mut b = [0u8; 16];
                match a {
                    IpAddress::V4(x) => b[..4].copy_from_slice(x),
                    IpAddress::V6(x) => b = *x,
                }
                (
                    u64::from_ne_bytes(b[..8].try_into().unwrap()),
                    u64::from_ne_bytes(b[8..].try_into().unwrap()),
                )
            };
            let (d0, d1) = addr(&dst.addr);
            let (s0, s1) = addr(&src.addr);
            let w0 = u64::from(family.0)
                | u64::from(*table) << 8
                | u64::from(*tos) << 40
                | u64::from(dst.len) << 48
                | u64::from(src.len) << 56;
            let w1 = u64::from(*metric) | u64::from(*dev) << 32;
            st.hash_one([w0, w1, d0, d1, s0, s1])
        }
        other => st.hash_one(other),
    }
}

fn outcome_code(o: &Outcome) -> u8 {
    match o {
        Outcome::Offloaded => 0,
        Outcome::Unsupported => 1,
        Outcome::Trapped => 2,
        Outcome::Failed(_) => 3,
        // Outcomes of a later minor than the host's API: impossible (plugins of a newer minor
        // are refused); counted as failures should one appear.
        _ => 3,
    }
}

const OUTCOME_NAMES: [&str; 4] = ["offloaded", "unsupported", "trapped", "failed"];

/// The worker's private state: what the plugin holds, and with which outcome.
struct Worker {
    plugin: Bound,
    queue: Arc<Queue>,
    status: Arc<Mutex<PluginStatus>>,
    caps: Capabilities,
    /// Objects given to the plugin and not removed (by a 64-bit hash of their key, about 9 bytes
    /// an entry), with their kind and last outcome code.
    held: Held,
    replay: ReplaySource,
    held_per_kind: [u64; KINDS],
    per_outcome: [[u64; 4]; KINDS],
    last_stats: Instant,
    /// Set once the plugin failed: it is never called again.
    failed: bool,
    /// Additions refused at a declared limit, offered again when room frees up.
    refused_keys: std::collections::BTreeSet<ObjectKey>,
    lookup: Lookup,
    size: Size,
    /// The initial dump, streamed (plugins loaded at start-up).
    feed: Option<StreamFeed>,
}

impl Worker {
    fn run(mut self) {
        if let Some(feed) = self.feed.take() {
            if let Err(reason) = self.stream_sync(feed) {
                self.fail(reason);
            }
        }
        loop {
            let (batch, events, replay, shutdown, reevaluate) = {
                let mut st = self.queue.st.lock().unwrap();
                while !st.shutdown
                    && !self.failed
                    && st.pending.is_empty()
                    && st.events.is_empty()
                    && !st.sync_requested
                    && !st.reevaluate
                {
                    let (g, _) = self
                        .queue
                        .cv
                        .wait_timeout(st, Duration::from_secs(1))
                        .unwrap();
                    st = g;
                    if self.last_stats.elapsed() >= Duration::from_secs(1) {
                        drop(st);
                        self.refresh_stats();
                        st = self.queue.st.lock().unwrap();
                    }
                }
                (
                    std::mem::take(&mut st.pending),
                    std::mem::take(&mut st.events),
                    std::mem::take(&mut st.sync_requested),
                    st.shutdown,
                    std::mem::take(&mut st.reevaluate),
                )
            };
            if self.failed {
                break;
            }
            if shutdown {
                if let Err(e) = self.plugin.shutdown().into_result() {
                    tracing::warn!(plugin = %self.name(), "shutdown: {e}");
                }
                return;
            }
            let result = if replay {
                self.replay_all().and_then(|()| self.step(batch, events))
            } else {
                self.step(batch, events)
            };
            let result = if reevaluate && !replay {
                result.and_then(|()| self.reevaluate_all())
            } else {
                result
            };
            if let Err(reason) = result {
                self.fail(reason);
            }
            if self.failed {
                break;
            }
        }
        // Failed: never call the plugin again, not even shutdown; wait to be stopped.
        let mut st = self.queue.st.lock().unwrap();
        while !st.shutdown {
            st = self.queue.cv.wait(st).unwrap();
        }
    }

    fn name(&self) -> String {
        self.status.lock().unwrap().name.clone()
    }

    fn fail(&mut self, reason: String) {
        self.failed = true;
        tracing::error!(plugin = %self.name(), "plugin failed, no longer called: {reason}");
        self.queue.close();
        let mut s = self.status.lock().unwrap();
        s.state = Some(PluginState::Failed);
        s.reason = Some(reason);
    }

    /// The full replay: begin-sync, the mirror read chunk by chunk as additions, end-sync.
    fn replay_all(&mut self) -> Result<(), String> {
        let started = self.begin_sync()?;
        let mut refused = 0u64;
        // The plugin holds nothing yet (a replay follows its load): what it is given is
        // appended and sorted once at the end, not inserted one by one.
        let bulk = self.held.begin_bulk((self.size)());
        // Where the replay's time goes (logged at debug): reading the mirror (on a reader thread,
        // overlapping with the rest), host-side preparation, the plugin's apply with outcome
        // recording.
        let (mut t_prep, mut t_apply) = (Duration::ZERO, Duration::ZERO);
        let mut count = 0usize;
        enum Msg {
            /// Additions in apply order, with the hashes of their keys (computed by the reader
            /// while the objects it just built are in its cache).
            Chunk(Vec<Change>, Vec<u64>),
            Done(Duration),
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(2);
        let (gtx, grx) = std::sync::mpsc::channel::<Vec<Change>>();
        let (replay, queue) = (self.replay.clone(), self.queue.clone());
        let result: Result<Option<Duration>, String> = std::thread::scope(|scope| {
            // The reader stays at most two chunks ahead. The gate moves when a chunk is read, so
            // changes to what it holds queue up as increments, applied after the replay.
            scope.spawn(move || {
                let mut cursor: Option<ObjectKey> = None;
                let mut t_read = Duration::ZERO;
                // Chunk buffers come back from the worker once applied; their contents are freed
                // here, where they were allocated, and the buffers reused.
                let mut spare: Vec<Vec<Change>> = Vec::new();
                loop {
                    while let Ok(mut g) = grx.try_recv() {
                        g.clear();
                        spare.push(g);
                    }
                    if queue.st.lock().unwrap().shutdown {
                        return; // no Done: the worker ends the replay without end-sync
                    }
                    let mut next: Option<ObjectKey> = None;
                    let mut done = false;
                    let t0 = Instant::now();
                    let mut changes = spare.pop().unwrap_or_default();
                    replay(cursor.as_ref(), BATCH, &mut changes, &mut |last, fin| {
                        // Under the mirror's lock: from now on, changes up to `last` are
                        // increments.
                        let mut st = queue.st.lock().unwrap();
                        st.replay_gate = if fin { None } else { Some(last.cloned()) };
                        next = last.cloned();
                        done = fin;
                    });
                    t_read += t0.elapsed();
                    if done {
                        let _ = tx.send(Msg::Done(t_read));
                        return;
                    }
                    cursor = next;
                    queue.take_replayed(&mut changes);
                    order::sort_batch(&mut changes);
                    let hashes = changes.iter().map(|c| key_hash(&c.key())).collect();
                    if tx.send(Msg::Chunk(changes, hashes)).is_err() {
                        return; // the worker gave up (plugin failed)
                    }
                }
            });
            // Owned here, so an early return (plugin failure) drops it and stops the reader
            // before the scope joins it.
            let rx = rx;
            for msg in rx.iter() {
                let (mut changes, mut hashes) = match msg {
                    Msg::Chunk(c, h) => (c, h),
                    Msg::Done(t_read) => return Ok(Some(t_read)),
                };
                let t1 = Instant::now();
                count += changes.len();
                // On failure `rx` is dropped on return, which stops the reader.
                let t2 = self.apply_replayed(&mut changes, &mut hashes, &mut refused)?;
                t_prep += t2 - t1;
                let _ = gtx.send(changes);
                t_apply += t2.elapsed();
            }
            Ok(None)
        });
        if bulk {
            self.end_bulk();
        }
        let Some(t_read) = result? else {
            // Stopping mid-replay: no end-sync, which would sweep what was not replayed yet.
            return Ok(());
        };
        tracing::debug!(
            plugin = %self.name(),
            objects = count,
            read_ms = t_read.as_millis() as u64,
            prepare_ms = t_prep.as_millis() as u64,
            apply_ms = t_apply.as_millis() as u64,
            "replay done"
        );
        self.end_sync(started, refused)
    }

    /// Begin-sync; the plugin shows as syncing. Returns when the sync started.
    fn begin_sync(&mut self) -> Result<Instant, String> {
        let started = Instant::now();
        self.status.lock().unwrap().state = Some(PluginState::Syncing);
        self.plugin
            .begin_sync()
            .into_result()
            .map_err(|e| e.to_string())?;
        Ok(started)
    }

    /// Ends a bulk load of the held set. Two keys with one 64-bit hash count once, as in any
    /// hash table: the per-kind counts are kept equal to what is held.
    fn end_bulk(&mut self) {
        for (kind, code) in self.held.end_bulk() {
            self.held_per_kind[kind as usize] -= 1;
            self.per_outcome[kind as usize][code as usize] -= 1;
        }
    }

    /// End-sync, and the plugin's status as it stands after its sync.
    fn end_sync(&mut self, started: Instant, refused: u64) -> Result<(), String> {
        self.plugin
            .end_sync()
            .into_result()
            .map_err(|e| e.to_string())?;
        {
            let mut s = self.status.lock().unwrap();
            s.refused += refused;
            s.state = Some(PluginState::InSync);
            s.syncs += 1;
            s.last_sync_ms = started.elapsed().as_millis() as u64;
        }
        self.refresh_stats();
        Ok(())
    }

    /// Applies a chunk of replayed additions (in apply order, with their key hashes), answering
    /// the host's refusals (declared limits, ECMP width) itself. Returns when the host-side
    /// preparation ended (for the replay's timing log).
    fn apply_replayed(
        &mut self,
        changes: &mut Vec<Change>,
        hashes: &mut Vec<u64>,
        refused: &mut u64,
    ) -> Result<Instant, String> {
        // Count this chunk's additions as they go, so a limit holds within the chunk.
        let mut keep = vec![true; changes.len()];
        let mut any_refused = false;
        for (i, c) in changes.iter().enumerate() {
            let o = c.object();
            if let Some(refusal) = host_refusal(&self.caps, &self.held_per_kind, o, true) {
                *refused += 1;
                any_refused = true;
                keep[i] = false;
                self.remember_refusal(o, false);
                self.record_failure(o, "add", &refusal);
                continue;
            }
            self.held_per_kind[c.kind().index()] += 1;
        }
        if any_refused {
            let mut k = keep.iter();
            changes.retain(|_| *k.next().unwrap());
            let mut k = keep.iter();
            hashes.retain(|_| *k.next().unwrap());
        }
        for c in changes.iter() {
            self.held_per_kind[c.kind().index()] -= 1;
        }
        let prepared = Instant::now();
        if !changes.is_empty() {
            self.apply_hashed(changes, Some(hashes))?;
        }
        Ok(prepared)
    }

    /// The initial sync fed by the mirror's initial dump as it is made (see [`Fanout`]): begin-
    /// sync, the streamed additions, end-sync once the dump is installed. When the stream fell
    /// behind and was cut, the sync starts over from the installed mirror (a second begin-sync:
    /// the plugin marks everything again, the replay renews what is current, end-sync sweeps
    /// the rest).
    fn stream_sync(&mut self, feed: StreamFeed) -> Result<(), String> {
        let started = self.begin_sync()?;
        let bulk = self.held.begin_bulk(0);
        let mut refused = 0u64;
        let mut count = 0usize;
        let mut result = Ok(());
        // The stream's attribute sets by number, the names of the links it has shown, and the
        // port filter as of the dump (the queue's own table moves on with later changes).
        let mut attrs: Vec<Attrs> = Vec::new();
        let mut names: HashMap<u32, RString> = HashMap::new();
        let mut ports = self.queue.st.lock().unwrap().ports.scope_only();
        let mut changes: Vec<Change> = Vec::new();
        loop {
            let (new_attrs, mut items) = match feed.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => m,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if self.queue.st.lock().unwrap().shutdown {
                        break;
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            attrs.extend(new_attrs);
            changes.clear();
            for item in items.drain(..) {
                let c = match item {
                    Initial::Object(c) => *c,
                    Initial::Route(rk, i) => {
                        let mut r = rk.route(&attrs[i as usize]);
                        for h in r.nexthops.iter_mut() {
                            if h.ifindex != 0 {
                                h.dev = names.get(&h.ifindex).cloned().unwrap_or_default();
                            }
                        }
                        Change::Add(Object::Route(r))
                    }
                };
                if let Change::Add(Object::Link(l)) = &c {
                    names.insert(l.ifindex, l.ifname.clone());
                    ports.note_link(l);
                }
                changes.push(c);
            }
            let _ = feed.back.send(items);
            changes.retain(|c| takes(&self.caps, &ports, c.object()));
            order::sort_batch(&mut changes);
            let mut hashes: Vec<u64> = changes.iter().map(|c| key_hash(&c.key())).collect();
            count += changes.len();
            if let Err(e) = self.apply_replayed(&mut changes, &mut hashes, &mut refused) {
                result = Err(e);
                break;
            }
        }
        if bulk {
            self.end_bulk();
        }
        result?;
        drop((attrs, names, changes));
        if self.queue.st.lock().unwrap().shutdown {
            return Ok(()); // no end-sync: it would sweep what was not streamed yet
        }
        let end = feed.end.load(std::sync::atomic::Ordering::SeqCst);
        if end == 0 {
            // The source stopped before the dump was installed (the daemon is failing): leave
            // the plugin as it is, without end-sync, until it is shut down.
            tracing::debug!(plugin = %self.name(), "initial dump cut short");
            return Ok(());
        }
        if end == STREAM_BEHIND {
            tracing::info!(
                plugin = %self.name(),
                streamed = count,
                "the initial dump outran the plugin: replaying from the mirror"
            );
            self.held = Held::default();
            self.held_per_kind = [0; KINDS];
            self.per_outcome = [[0; 4]; KINDS];
            {
                // Everything pending is superseded by the replay, which reads the current
                // state; changes from here on are left to it until it gets there.
                let mut st = self.queue.st.lock().unwrap();
                st.pending.clear();
                st.replay_gate = Some(None);
            }
            self.status.lock().unwrap().refused += refused;
            return self.replay_all();
        }
        tracing::debug!(
            plugin = %self.name(),
            objects = count,
            ms = started.elapsed().as_millis() as u64,
            "initial sync streamed"
        );
        self.end_sync(started, refused)
    }

    fn step(
        &mut self,
        batch: IndexMap<ObjectKey, Pending>,
        events: VecDeque<NotifierEvent>,
    ) -> Result<(), String> {
        if !events.is_empty() {
            let v: Vec<NotifierEvent> = events.into_iter().collect();
            self.plugin
                .notify(v.as_slice().into())
                .into_result()
                .map_err(|e| e.to_string())?;
            self.status.lock().unwrap().events += v.len() as u64;
        }

        // Turn pending entries into changes, answering refusals ourselves.
        let mut changes: Vec<Change> = Vec::with_capacity(batch.len());
        let mut refused = 0u64;
        for (key, p) in batch {
            let delivered = self.held.contains(key_hash(&key));
            match (p.base, p.target) {
                (base, None) => {
                    self.refused_keys.remove(&key);
                    if let (true, Some(old)) = (delivered, base) {
                        changes.push(Change::Remove(old));
                    }
                }
                (base, Some(t)) => {
                    if let Some(refusal) =
                        host_refusal(&self.caps, &self.held_per_kind, &t, !delivered)
                    {
                        if delivered {
                            if let Some(b) = base {
                                changes.push(Change::Remove(b));
                            }
                        }
                        refused += 1;
                        self.remember_refusal(&t, delivered);
                        self.record_failure(&t, "add", &refusal);
                        continue;
                    }
                    match (delivered, base) {
                        (true, Some(b)) if b == t => {}
                        (true, Some(b)) => changes.push(Change::Update { old: b, new: t }),
                        _ => {
                            // Count it now so the limit check sees additions of this batch.
                            self.held_per_kind[t.kind().index()] += 1;
                            changes.push(Change::Add(t));
                        }
                    }
                }
            }
        }
        // held_per_kind was bumped for additions to enforce limits within the batch; undo, the
        // outcomes below recount.
        for c in &changes {
            if let Change::Add(o) = c {
                self.held_per_kind[o.kind().index()] -= 1;
            }
        }
        order::sort_batch(&mut changes);

        self.apply_in_batches(&changes)?;
        self.status.lock().unwrap().refused += refused;
        self.offer_refused_again()?;
        self.refresh_stats();
        Ok(())
    }

    /// After a port entered or left the scope: walks the mirror and adds what is now taken but
    /// not held, removes what is held but no longer taken.
    fn reevaluate_all(&mut self) -> Result<(), String> {
        let mut cursor: Option<ObjectKey> = None;
        loop {
            let mut next = None;
            let mut done = false;
            let mut chunk = Vec::new();
            (self.replay)(cursor.as_ref(), BATCH, &mut chunk, &mut |last, fin| {
                next = last.cloned();
                done = fin;
            });
            if done {
                return Ok(());
            }
            cursor = next;
            let mut changes = Vec::new();
            {
                let st = self.queue.st.lock().unwrap();
                for c in chunk {
                    let o = match c {
                        Change::Add(o) => o,
                        _ => continue,
                    };
                    let held = self.held.contains(key_hash(&o.key()));
                    match (st.takes(&o), held) {
                        (true, false) => changes.push(Change::Add(o)),
                        (false, true) => changes.push(Change::Remove(o)),
                        _ => {}
                    }
                }
            }
            order::sort_batch(&mut changes);
            self.apply_in_batches(&changes)?;
        }
    }

    /// Remembers an addition refused at a declared limit (not ECMP-width refusals, which only a
    /// change of the route can lift).
    fn remember_refusal(&mut self, o: &Object, was_delivered: bool) {
        let k = o.kind();
        let at_limit = self.caps.limit_for(k).is_some()
            && (was_delivered
                || self.held_per_kind[k.index()] >= self.caps.limit_for(k).unwrap_or(0));
        if at_limit && self.refused_keys.len() < REFUSED_REMEMBERED {
            self.refused_keys.insert(o.key());
        }
    }

    /// When room has freed up under a declared limit, offers remembered refused additions again
    /// (read afresh from the mirror), so a smaller table converges to what fits.
    fn offer_refused_again(&mut self) -> Result<(), String> {
        if self.refused_keys.is_empty() {
            return Ok(());
        }
        let mut adds = Vec::new();
        for &kind in ObjectKind::ALL {
            let Some(max) = self.caps.limit_for(kind) else {
                continue;
            };
            let mut free = max.saturating_sub(self.held_per_kind[kind.index()]);
            if free == 0 {
                continue;
            }
            let keys: Vec<ObjectKey> = self
                .refused_keys
                .iter()
                .filter(|k| k.kind() == kind)
                .take(free as usize)
                .cloned()
                .collect();
            for k in keys {
                self.refused_keys.remove(&k);
                if self.held.contains(key_hash(&k)) {
                    continue;
                }
                if let Some(o) = (self.lookup)(&k) {
                    let fits = host_refusal(&self.caps, &self.held_per_kind, &o, false).is_none();
                    if fits && self.queue.st.lock().unwrap().takes(&o) && free > 0 {
                        free -= 1;
                        adds.push(Change::Add(o));
                    }
                }
            }
        }
        if adds.is_empty() {
            return Ok(());
        }
        order::sort_batch(&mut adds);
        self.apply_in_batches(&adds)?;
        Ok(())
    }

    /// Hands `changes` to the plugin, at most [`BATCH`] per call, and records the outcomes.
    fn apply_in_batches(&mut self, changes: &[Change]) -> Result<(), String> {
        self.apply_hashed(changes, None)
    }

    /// [`Worker::apply_in_batches`] with the key hashes of `changes` when already known.
    fn apply_hashed(&mut self, changes: &[Change], hashes: Option<&[u64]>) -> Result<(), String> {
        for (i, chunk) in changes.chunks(BATCH).enumerate() {
            let outcomes = self
                .plugin
                .apply(chunk.into())
                .into_result()
                .map_err(|e| e.to_string())?;
            let h = hashes.map(|h| &h[i * BATCH..(i * BATCH + chunk.len())]);
            self.record(chunk, &outcomes, h);
        }
        Ok(())
    }

    fn record(&mut self, chunk: &[Change], outcomes: &[Outcome], hashes: Option<&[u64]>) {
        for (i, (c, o)) in chunk.iter().zip(outcomes).enumerate() {
            let kind = c.kind();
            let k = kind.index();
            let code = outcome_code(o);
            let hash = || hashes.map_or_else(|| key_hash(&c.key()), |h| h[i]);
            match c {
                Change::Remove(_) => {
                    if let Some((_, prev)) = self.held.remove(hash()) {
                        self.held_per_kind[k] -= 1;
                        self.per_outcome[k][prev as usize] -= 1;
                    }
                }
                Change::Add(_) | Change::Update { .. } => {
                    if let Some((_, prev)) = self.held.insert(hash(), kind.index() as u8, code) {
                        self.per_outcome[k][prev as usize] -= 1;
                    } else {
                        self.held_per_kind[k] += 1;
                    }
                    self.per_outcome[k][code as usize] += 1;
                }
            }
            if let Outcome::Failed(_) = o {
                self.record_failure(c.object(), c.op(), o);
            }
        }
        let mut s = self.status.lock().unwrap();
        for o in outcomes {
            s.applied += 1;
            match outcome_code(o) {
                0 => s.offloaded += 1,
                1 => s.unsupported += 1,
                2 => s.trapped += 1,
                _ => s.failed += 1,
            }
        }
        s.objects = self.held.len() as u64;
        s.per_outcome = self.per_outcome;
    }

    fn record_failure(&self, o: &Object, op: &str, outcome: &Outcome) {
        let reason = match outcome {
            Outcome::Failed(r) => r.to_string(),
            other => other.name().to_string(),
        };
        let mut s = self.status.lock().unwrap();
        if s.recent_failures.len() >= 16 {
            s.recent_failures.pop_front();
        }
        s.recent_failures.push_back(FailureRecord {
            kind: o.kind().name().into(),
            op: op.into(),
            object: o.to_json(),
            reason,
        });
    }

    fn refresh_stats(&mut self) {
        self.last_stats = Instant::now();
        if self.failed {
            return;
        }
        match self.plugin.stats().into_result() {
            Ok(st) => {
                let mut s = self.status.lock().unwrap();
                s.counters = st
                    .counters
                    .iter()
                    .map(|c| serde_json::json!({"kind": c.kind.as_str(), "name": c.name.as_str(), "value": c.value}))
                    .collect();
                s.stats_text = st.text.to_string();
            }
            Err(e) => self.fail(e.to_string()),
        }
        let depth = self.queue.depth();
        let dropped = self.queue.st.lock().unwrap().events_dropped;
        let mut s = self.status.lock().unwrap();
        s.queue_depth = depth;
        s.events_dropped = dropped;
    }
}

/// How long the initial dump waits for a plugin whose stream is full before leaving it behind
/// (it then replays from the mirror once the dump is installed).
pub const STREAM_PATIENCE: Duration = Duration::from_millis(100);

/// Chunks of the initial dump in flight to one plugin, at most.
const STREAM_DEPTH: usize = 8;

/// A chunk of the initial dump: attribute sets first used in it (copies: a reference held by
/// the plugin's thread would keep the mirror's interner from freeing a set), then the additions.
type StreamMsg = (Vec<Attrs>, Vec<Initial>);

/// One plugin's end of the initial dump stream.
pub struct StreamFeed {
    rx: std::sync::mpsc::Receiver<StreamMsg>,
    /// Consumed chunk buffers go back to be reused (and freed) on the thread that built them.
    back: std::sync::mpsc::Sender<Vec<Initial>>,
    /// How the stream ended: [`STREAM_COMPLETE`], [`STREAM_BEHIND`], or 0 (cut: the source
    /// stopped before the dump was installed).
    end: Arc<std::sync::atomic::AtomicU8>,
}

/// The plugin was given the whole initial dump.
const STREAM_COMPLETE: u8 = 1;
/// The plugin was left behind: it replays from the mirror once the dump is installed.
const STREAM_BEHIND: u8 = 2;

struct FanoutOut {
    name: String,
    /// Bound once the plugin's worker has started ([`Fanout::bind`]).
    queue: Option<Arc<Queue>>,
    tx: Option<std::sync::mpsc::SyncSender<StreamMsg>>,
    back: std::sync::mpsc::Receiver<Vec<Initial>>,
    spare: Vec<Vec<Initial>>,
    end: Arc<std::sync::atomic::AtomicU8>,
    /// Left behind: no more chunks, a replay from the mirror follows the dump.
    behind: bool,
}

/// Hands the mirror's initial dump to the plugins loaded at start-up while it is made, so that
/// a plugin's initial sync runs alongside the dump instead of after it (the source calls this on
/// its own thread; see `ekho_mirror::source::InitialStream`). Each plugin gets what it takes, in
/// apply order, with the key hashes; a plugin that cannot keep up is left behind after
/// [`STREAM_PATIENCE`] and replays from the mirror instead, so the dump never waits longer.
#[derive(Default)]
pub struct Fanout {
    outs: Vec<FanoutOut>,
}

impl Fanout {
    /// A stream end for the plugin `name`; [`Fanout::bind`] its queue once started.
    pub fn feed(&mut self, name: &str) -> StreamFeed {
        let (tx, rx) = std::sync::mpsc::sync_channel(STREAM_DEPTH);
        let (back_tx, back_rx) = std::sync::mpsc::channel();
        let end = Arc::new(std::sync::atomic::AtomicU8::new(0));
        self.outs.push(FanoutOut {
            name: name.to_string(),
            queue: None,
            tx: Some(tx),
            back: back_rx,
            spare: Vec::new(),
            end: end.clone(),
            behind: false,
        });
        StreamFeed {
            rx,
            back: back_tx,
            end,
        }
    }

    /// Binds the queue of the plugin whose feed was made last (its port and kind filter).
    pub fn bind(&mut self, queue: Arc<Queue>) {
        if let Some(o) = self.outs.last_mut() {
            o.queue = Some(queue);
        }
    }

    /// Whether any plugin takes the stream.
    pub fn is_empty(&self) -> bool {
        self.outs.is_empty()
    }
}

impl ekho_mirror::source::InitialStream for Fanout {
    fn objects(&mut self, new_attrs: &[Arc<Attrs>], chunk: &mut Vec<Initial>) {
        let last = self
            .outs
            .iter()
            .rposition(|o| o.tx.is_some() && !o.behind && o.queue.is_some());
        // The links the dump shows, for the filter of the changes that follow it (this runs
        // before the mirror starts computing changes, so the table is the dump's when the first
        // change is filtered). Even a plugin left behind needs it.
        let links: Vec<&ekho_plugin_api::object::Link> = chunk
            .iter()
            .filter_map(|c| match c {
                Initial::Object(b) => match &**b {
                    Change::Add(Object::Link(l)) => Some(l),
                    _ => None,
                },
                Initial::Route(..) => None,
            })
            .collect();
        for out in &self.outs {
            if let (Some(queue), false) = (&out.queue, links.is_empty()) {
                let mut st = queue.st.lock().unwrap();
                for l in &links {
                    st.ports.note_link(l);
                }
            }
        }
        drop(links);
        for (i, out) in self.outs.iter_mut().enumerate() {
            if out.queue.is_none() {
                continue;
            }
            if out.behind || out.tx.is_none() {
                continue;
            }
            while let Ok(mut v) = out.back.try_recv() {
                v.clear();
                out.spare.push(v);
            }
            let mut mine = out.spare.pop().unwrap_or_default();
            if Some(i) == last {
                std::mem::swap(&mut mine, chunk);
            } else {
                mine.extend(chunk.iter().cloned());
            }
            // Building routes, naming, filtering, ordering and hashing are left to the plugin's
            // worker (it has the time; this thread is the dump's).
            let mut msg = (new_attrs.iter().map(|a| (**a).clone()).collect(), mine);
            let t = Instant::now();
            loop {
                match out.tx.as_ref().expect("checked").try_send(msg) {
                    Ok(()) => break,
                    Err(std::sync::mpsc::TrySendError::Full(m)) => {
                        if t.elapsed() >= STREAM_PATIENCE {
                            tracing::info!(
                                plugin = %out.name,
                                "plugin slower than the initial dump: left behind, it replays from the mirror once the dump is installed"
                            );
                            out.behind = true;
                            out.end
                                .store(STREAM_BEHIND, std::sync::atomic::Ordering::SeqCst);
                            break;
                        }
                        msg = m;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                        out.tx = None; // the plugin failed
                        break;
                    }
                }
            }
        }
    }

    fn done(&mut self) {
        for out in &mut self.outs {
            if out.tx.is_some() && !out.behind {
                out.end
                    .store(STREAM_COMPLETE, std::sync::atomic::Ordering::SeqCst);
            }
            out.tx = None;
        }
    }
}

/// A plugin attached to the dispatcher.
pub struct PluginHandle {
    pub status: Arc<Mutex<PluginStatus>>,
    pub queue: Arc<Queue>,
    pub caps: Capabilities,
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
        let MirrorAccess {
            replay,
            lookup,
            size,
        } = mirror;
        let queue = Queue::new(caps.clone(), ports_override);
        if feed.is_none() {
            queue.st.lock().unwrap().replay_gate = Some(None);
        }
        let mut status = status;
        status.state = Some(PluginState::Syncing);
        let status = Arc::new(Mutex::new(status));
        let worker = Worker {
            plugin,
            queue: queue.clone(),
            status: status.clone(),
            caps: caps.clone(),
            held: Held::default(),
            held_per_kind: [0; KINDS],
            per_outcome: [[0; 4]; KINDS],
            last_stats: Instant::now(),
            replay,
            failed: false,
            refused_keys: Default::default(),
            lookup,
            size,
            feed,
        };
        let name = status.lock().unwrap().name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .spawn(move || worker.run())
            .expect("spawn plugin worker thread");
        PluginHandle {
            status,
            queue,
            caps,
            thread: Some(thread),
        }
    }

    /// A snapshot of the status, with the live queue depth.
    pub fn snapshot(&self) -> PluginStatus {
        let mut s = self.status.lock().unwrap().clone();
        s.queue_depth = self.queue.depth();
        s.outcomes = ObjectKind::ALL
            .iter()
            .filter(|k| s.per_outcome[k.index()].iter().any(|&n| n > 0))
            .map(|k| {
                let m = OUTCOME_NAMES
                    .iter()
                    .zip(s.per_outcome[k.index()])
                    .filter(|(_, n)| *n > 0)
                    .map(|(name, n)| (name.to_string(), n))
                    .collect();
                (k.plural().to_string(), m)
            })
            .collect();
        s
    }

    /// Shuts the plugin down and joins its worker (waits at most `timeout`).
    pub fn stop(&mut self, timeout: Duration) {
        self.queue.shutdown();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + timeout;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("plugin worker did not stop within {timeout:?}; leaving it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_key_hash_tells_every_field_apart() {
        let base = match route("10.0.0.0/24", 3, "10.1.0.1") {
            Object::Route(r) => r,
            _ => unreachable!(),
        };
        let key = |r: &Route| Object::Route(r.clone()).key();
        let mut variants = vec![base.clone()];
        let mut v = base.clone();
        v.table = 100;
        variants.push(v);
        let mut v = base.clone();
        v.metric = 1;
        variants.push(v);
        let mut v = base.clone();
        v.tos = 4;
        variants.push(v);
        let mut v = base.clone();
        v.dst = "10.0.0.0/25".parse().unwrap();
        variants.push(v);
        let mut v = base.clone();
        v.dst = "10.0.1.0/24".parse().unwrap();
        variants.push(v);
        let mut v = base.clone();
        v.nexthops[0].gateway = ROption::RNone; // a device route: dev in the key
        variants.push(v);
        let mut v = base.clone();
        v.family = Family::INET6;
        v.dst = "a00::/24".parse().unwrap();
        variants.push(v);
        let hashes: std::collections::HashSet<u64> =
            variants.iter().map(|r| key_hash(&key(r))).collect();
        assert_eq!(hashes.len(), variants.len());
        assert_eq!(key_hash(&key(&base)), key_hash(&key(&base.clone())));
    }
    use ekho_plugin_api::object::{Link, NextHop, Route};

    fn link(ifindex: u32, name: &str) -> Object {
        Object::Link(Link {
            ifindex,
            ifname: name.into(),
            ..Default::default()
        })
    }
    fn route(dst: &str, ifindex: u32, gw: &str) -> Object {
        Object::Route(Route::unicast(
            dst.parse().unwrap(),
            vec![NextHop::via(gw.parse().unwrap(), ifindex)],
        ))
    }

    #[test]
    fn coalescing_add_remove_cancels_and_updates_collapse() {
        let q = Queue::new(Capabilities::everything(), None);
        let a = route("10.0.0.0/24", 1, "10.1.0.1");
        q.push_changes(&[Change::Add(a.clone()), Change::Remove(a.clone())]);
        let st = q.st.lock().unwrap();
        let p = st.pending.values().next().unwrap();
        assert!(p.base.is_none() && p.target.is_none());
        drop(st);

        let q = Queue::new(Capabilities::everything(), None);
        let b = route("10.0.0.0/24", 1, "10.1.0.2");
        let c = route("10.0.0.0/24", 1, "10.1.0.3");
        q.push_changes(&[
            Change::Update {
                old: a.clone(),
                new: b.clone(),
            },
            Change::Update {
                old: b.clone(),
                new: c.clone(),
            },
        ]);
        let st = q.st.lock().unwrap();
        assert_eq!(st.pending.len(), 1);
        let p = st.pending.values().next().unwrap();
        assert_eq!(p.base.as_ref(), Some(&a));
        assert_eq!(p.target.as_ref(), Some(&c));
    }

    #[test]
    fn ports_filter_links_and_routes() {
        let caps = Capabilities::everything().port_names(["swp*"]);
        let q = Queue::new(caps, None);
        q.push_changes(&[Change::Add(link(1, "swp1")), Change::Add(link(2, "eth0"))]);
        q.push_changes(&[
            Change::Add(route("10.0.0.0/24", 1, "10.1.0.1")),
            Change::Add(route("10.0.1.0/24", 2, "10.2.0.1")),
        ]);
        let st = q.st.lock().unwrap();
        let kinds: Vec<String> = st
            .pending
            .values()
            .map(|p| p.target.as_ref().unwrap().to_json().to_string())
            .collect();
        assert_eq!(st.pending.len(), 2, "{kinds:?}");
        assert!(kinds[0].contains("swp1"));
        assert!(kinds[1].contains("10.0.0.0/24"));
    }

    #[test]
    fn routes_all_ports_delivers_routes_through_unowned_ports() {
        let caps = Capabilities::everything()
            .port_names(["swp*"])
            .routes_all_ports(true);
        let q = Queue::new(caps, None);
        q.push_changes(&[Change::Add(link(1, "swp1")), Change::Add(link(2, "eth0"))]);
        q.push_changes(&[Change::Add(route("10.0.1.0/24", 2, "10.2.0.1"))]);
        let st = q.st.lock().unwrap();
        assert_eq!(
            st.pending.len(),
            2,
            "link swp1 and the route via eth0; not link eth0"
        );
    }

    #[test]
    fn override_globs_replace_declared_scope() {
        let caps = Capabilities::everything().port_names(["swp*"]);
        let q = Queue::new(caps, Some(&["eth*".to_string()]));
        q.push_changes(&[Change::Add(link(1, "swp1")), Change::Add(link(2, "eth0"))]);
        assert_eq!(q.st.lock().unwrap().pending.len(), 1);
    }

    #[test]
    fn route_moving_off_owned_port_becomes_removal() {
        let caps = Capabilities::everything().port_names(["swp*"]);
        let q = Queue::new(caps, None);
        q.push_changes(&[Change::Add(link(1, "swp1")), Change::Add(link(2, "eth0"))]);
        q.st.lock().unwrap().pending.clear();
        let a = route("10.0.0.0/24", 1, "10.1.0.1");
        let b = route("10.0.0.0/24", 2, "10.2.0.1");
        q.push_changes(&[Change::Update {
            old: a.clone(),
            new: b,
        }]);
        let st = q.st.lock().unwrap();
        let p = st.pending.values().next().unwrap();
        assert_eq!(p.base.as_ref(), Some(&a));
        assert!(p.target.is_none());
    }

    #[test]
    fn families_and_kinds_filter() {
        let caps = Capabilities::new()
            .kinds([ObjectKind::Route])
            .families([Family::INET6]);
        let q = Queue::new(caps, None);
        q.push_changes(&[
            Change::Add(link(1, "a")),
            Change::Add(route("10.0.0.0/24", 1, "10.1.0.1")),
            Change::Add(route("2001:db8::/64", 1, "fe80::1")),
        ]);
        let st = q.st.lock().unwrap();
        assert_eq!(st.pending.len(), 1);
        assert!(
            st.pending
                .values()
                .next()
                .unwrap()
                .target
                .as_ref()
                .unwrap()
                .to_json()["dst"]
                == "2001:db8::/64"
        );
    }

    #[test]
    fn replay_gate_leaves_changes_past_the_cursor_to_the_replay() {
        let q = Queue::new(Capabilities::everything(), None);
        let a = route("10.1.0.0/24", 1, "10.9.0.1");
        let b = route("10.2.0.0/24", 1, "10.9.0.1");
        q.st.lock().unwrap().replay_gate =
            Some(Some(ekho_mirror::replay::replay_position(&a.key())));
        q.push_changes(&[Change::Remove(a.clone()), Change::Add(b.clone())]);
        let st = q.st.lock().unwrap();
        assert_eq!(
            st.pending.len(),
            1,
            "only the change at or before the cursor is queued"
        );
        assert_eq!(st.pending.keys().next(), Some(&a.key()));
        drop(st);
        q.st.lock().unwrap().replay_gate = Some(None);
        q.push_changes(&[Change::Add(link(1, "x"))]);
        assert_eq!(
            q.st.lock().unwrap().pending.len(),
            1,
            "nothing replayed yet: all left to the replay"
        );
        assert!(
            q.st.lock().unwrap().ports.links.contains_key(&1),
            "links are still observed"
        );
    }

    #[test]
    fn streamed_links_fill_the_port_table_before_changes_are_filtered() {
        use ekho_mirror::source::InitialStream;
        // A plugin owning swp* ports, fed by the stream: a change right after the dump is
        // installed, through a port the plugin has not processed yet, must still be queued.
        let q = Queue::new(Capabilities::everything().port_names(["swp*"]), None);
        let mut f = Fanout::default();
        let feed = f.feed("p");
        f.bind(q.clone());
        let mut chunk = vec![
            Initial::Object(Box::new(Change::Add(link(1, "swp1")))),
            Initial::Object(Box::new(Change::Add(link(2, "eth0")))),
        ];
        f.objects(&[], &mut chunk);
        f.done();
        q.push_changes(&[
            Change::Add(route("10.0.0.0/24", 1, "10.1.0.1")),
            Change::Add(route("10.0.1.0/24", 2, "10.2.0.1")),
        ]);
        assert_eq!(q.st.lock().unwrap().pending.len(), 1, "the route via swp1");
        // The plugin's end got the chunk and a complete stream.
        assert_eq!(feed.rx.try_recv().unwrap().1.len(), 2);
        assert_eq!(
            feed.end.load(std::sync::atomic::Ordering::SeqCst),
            STREAM_COMPLETE
        );
    }

    #[test]
    fn batch_order_respects_dependencies() {
        let mut v = [
            Change::Remove(link(5, "old")),
            Change::Add(route("10.0.0.0/24", 1, "10.1.0.1")),
            Change::Remove(route("10.9.0.0/24", 5, "10.9.0.1")),
            Change::Add(link(1, "new")),
        ];
        order::sort_batch(&mut v);
        let ops: Vec<String> = v
            .iter()
            .map(|c| format!("{} {}", c.op(), c.kind()))
            .collect();
        assert_eq!(
            ops,
            ["remove route", "add link", "add route", "remove link"]
        );
    }
}
