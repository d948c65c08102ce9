//! The queue between the mirror (producer, under its lock) and a plugin's worker: filtered by
//! what the plugin takes, coalesced per object key, bounded by the size of the mirror.

use super::gate::ReplayGate;
use super::ports::{takes, PortFilter};
use ekho_mirror::SharedChange;
use ekho_plugin_api::object::Link;
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::ObjectKey;
use indexmap::IndexMap;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Notifier events kept per plugin while it is busy; older ones are dropped and counted.
pub const EVENT_QUEUE: usize = 65_536;

/// One object's pending change: the version the plugin was given last (`base`, as far as the
/// queue knows) and the latest version (`target`); `None`: absent. The objects are the mirror's
/// batch's, shared with the other plugins' queues (the worker copies one only if another queue
/// still holds it).
pub(super) struct Pending {
    pub(super) base: Option<Arc<Object>>,
    pub(super) target: Option<Arc<Object>>,
}

/// Pending changes by key, in the order first queued (hashed with foldhash: SipHash cost a tenth
/// of the source thread's time on a route burst).
pub(super) type PendingMap = IndexMap<ObjectKey, Pending, foldhash::fast::RandomState>;

/// What the worker takes from the queue in one go.
pub(super) struct Work {
    /// Pending changes, by key, in the order first queued.
    pub(super) pending: PendingMap,
    pub(super) events: VecDeque<NotifierEvent>,
    /// A full replay was asked for.
    pub(super) replay: bool,
    /// A port entered or left the scope: everything is to be re-evaluated.
    pub(super) reevaluate: bool,
    pub(super) shutdown: bool,
}

struct QueueState {
    caps: Capabilities,
    ports: PortFilter,
    pending: PendingMap,
    events: VecDeque<NotifierEvent>,
    events_dropped: u64,
    sync_requested: bool,
    gate: ReplayGate,
    /// Set when a port entered or left the plugin's scope: the worker re-evaluates everything.
    reevaluate: bool,
    closed: bool,
    shutdown: bool,
}

impl QueueState {
    #[inline]
    fn takes(&self, o: &Object) -> bool {
        takes(&self.caps, &self.ports, o)
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty()
            || !self.events.is_empty()
            || self.sync_requested
            || self.reevaluate
    }

    fn push_change(&mut self, c: &SharedChange) {
        let (old, new) = (c.before(), c.after());
        // An update that changes identity (a device route moved to another device) is, for a
        // plugin, the removal of one object and the addition of another.
        if let (Some(o), Some(n)) = (old, new) {
            let (ko, kn) = (o.key(), n.key());
            if ko != kn {
                self.push_one(Some(o), None, ko, false);
                self.push_one(None, Some(n), kn, false);
                return;
            }
            return self.push_one(old, new, kn, true);
        }
        self.push_one(old, new, c.object().key(), false);
    }

    /// One change of the object `key` from `old` to `new` (`update`: both there, same key).
    fn push_one(
        &mut self,
        old: Option<&Arc<Object>>,
        new: Option<&Arc<Object>>,
        key: ObjectKey,
        update: bool,
    ) {
        // The old version is judged with the port table as it was, the new one as it is now: a
        // renamed port changes ownership of the link itself.
        let base = old.filter(|o| self.takes(o));
        let changed = new.or(old).map(|o| &**o);
        let owned_before = changed.and_then(|o| self.ports.link_owned(o));
        self.ports.observe(old.map(|o| &**o), new.map(|o| &**o));
        if update
            && !self.ports.owns_all()
            && owned_before != changed.and_then(|o| self.ports.link_owned(o))
            && !self.gate.is_running()
        {
            // A port entered or left the plugin's scope (renamed, or its driver changed): what
            // is attached to it must follow. The worker re-evaluates the whole state.
            self.reevaluate = true;
        }
        if self.gate.leaves_to_replay(&key) {
            return;
        }
        let target = new.filter(|o| self.takes(o)).cloned();
        if base.is_none() && target.is_none() {
            return;
        }
        match self.pending.entry(key) {
            indexmap::map::Entry::Occupied(mut e) => e.get_mut().target = target,
            indexmap::map::Entry::Vacant(e) => {
                e.insert(Pending {
                    base: base.cloned(),
                    target,
                });
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
                pending: PendingMap::default(),
                events: VecDeque::new(),
                events_dropped: 0,
                sync_requested: false,
                gate: ReplayGate::default(),
                reevaluate: false,
                closed: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
        })
    }

    /// Holds every change back for a replay about to be asked for ([`Queue::request_replay`]).
    pub(super) fn hold_for_replay(&self) {
        self.st.lock().unwrap().gate.start();
    }

    /// Asks for a full replay (read lazily from the mirror), bracketed by begin/end sync. Call
    /// before the listener is attached: changes are then left to the replay until it reaches them.
    pub fn request_replay(&self) {
        let mut st = self.st.lock().unwrap();
        if st.closed {
            return;
        }
        st.gate.start();
        st.sync_requested = true;
        self.cv.notify_one();
    }

    /// Drops what is pending and holds every later change back for a replay the worker runs
    /// now (it reads the current state: what was pending is superseded).
    pub(super) fn restart_replay(&self) {
        let mut st = self.st.lock().unwrap();
        st.pending.clear();
        st.gate.start();
    }

    /// The running replay handed out everything up to `last` (`done`: all of it). Called under
    /// the mirror's lock: from then on, changes up to `last` are increments.
    pub(super) fn replay_passed(&self, last: Option<&ObjectKey>, done: bool) {
        self.st.lock().unwrap().gate.passed(last, done);
    }

    /// Keeps the replayed additions the plugin takes (noting the links it sees for the port
    /// filter), in place.
    pub(super) fn take_replayed(&self, chunk: &mut Vec<Change>) {
        let mut st = self.st.lock().unwrap();
        for c in chunk.iter() {
            if let Change::Add(Object::Link(l)) = c {
                // Only links not known yet: the listener may have seen a newer version (a
                // rename) between the read of this chunk and now.
                st.ports.note_new_link(l);
            }
        }
        chunk.retain(|c| st.takes(c.object()));
    }

    /// Notes links of the initial dump in the port table (before any change is filtered).
    pub(super) fn note_links(&self, links: &[&Link]) {
        let mut st = self.st.lock().unwrap();
        for l in links {
            st.ports.note_link(l);
        }
    }

    /// The port scope, with no link known.
    pub(super) fn port_scope(&self) -> PortFilter {
        self.st.lock().unwrap().ports.scope_only()
    }

    /// The port filter as of now, with the links it knows (their names).
    pub(super) fn ports(&self) -> PortFilter {
        self.st.lock().unwrap().ports.clone()
    }

    /// Runs `f` with what the plugin takes as of now (under the queue's lock: `f` must not
    /// block).
    pub(super) fn with_filter<R>(&self, f: impl FnOnce(&dyn Fn(&Object) -> bool) -> R) -> R {
        let st = self.st.lock().unwrap();
        f(&|o| st.takes(o))
    }

    /// Whether a change of `key` is queued and not taken yet.
    pub(super) fn is_pending(&self, key: &ObjectKey) -> bool {
        self.st.lock().unwrap().pending.contains_key(key)
    }

    /// Whether the plugin takes `o` as of now.
    pub(super) fn takes(&self, o: &Object) -> bool {
        self.st.lock().unwrap().takes(o)
    }

    /// Enqueues changes (filtered, coalesced), copied into shared ones (the mirror hands the
    /// dispatch [`SharedChange`]s: [`Queue::push_shared`]).
    #[cfg(test)]
    pub fn push_changes(&self, changes: &[Change]) {
        let shared: Vec<SharedChange> = changes.iter().cloned().map(Into::into).collect();
        self.push_shared(&shared);
    }

    /// Enqueues changes (filtered, coalesced): the queue keeps the batch's objects, shared.
    /// Never blocks on the plugin.
    pub fn push_shared(&self, changes: &[SharedChange]) {
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

    /// Takes back an emptied pending map (from [`Work::pending`]) to fill next, keeping its
    /// capacity, when it is larger than the one filling now and that one is still empty.
    pub(super) fn recycle(&self, map: PendingMap) {
        debug_assert!(map.is_empty());
        let mut st = self.st.lock().unwrap();
        if st.pending.is_empty() && st.pending.capacity() < map.capacity() {
            st.pending = map;
        }
    }

    /// Waits at most `timeout` for work or shutdown, and takes it (`None`: nothing came).
    pub(super) fn next_work(&self, timeout: Duration) -> Option<Work> {
        let mut st = self.st.lock().unwrap();
        if !st.shutdown && !st.has_work() {
            st = self.cv.wait_timeout(st, timeout).unwrap().0;
            if !st.shutdown && !st.has_work() {
                return None;
            }
        }
        Some(Work {
            pending: std::mem::take(&mut st.pending),
            events: std::mem::take(&mut st.events),
            replay: std::mem::take(&mut st.sync_requested),
            reevaluate: std::mem::take(&mut st.reevaluate),
            shutdown: st.shutdown,
        })
    }

    /// Waits until shut down.
    pub(super) fn wait_shutdown(&self) {
        let mut st = self.st.lock().unwrap();
        while !st.shutdown {
            st = self.cv.wait(st).unwrap();
        }
    }

    /// Whether the worker is asked to stop.
    pub(super) fn is_shut_down(&self) -> bool {
        self.st.lock().unwrap().shutdown
    }

    /// Pending entries (objects) plus pending events.
    pub fn depth(&self) -> u64 {
        let st = self.st.lock().unwrap();
        (st.pending.len() + st.events.len()) as u64
    }

    /// Notifier events dropped while the plugin was busy.
    pub(super) fn events_dropped(&self) -> u64 {
        self.st.lock().unwrap().events_dropped
    }

    /// Pending entries (objects).
    #[cfg(test)]
    pub(super) fn pending_len(&self) -> usize {
        self.st.lock().unwrap().pending.len()
    }

    /// Asks the worker to shut the plugin down and stop.
    pub fn shutdown(&self) {
        let mut st = self.st.lock().unwrap();
        st.shutdown = true;
        st.closed = true;
        self.cv.notify_all();
    }

    /// Takes nothing more (the plugin failed) and drops what is pending.
    pub(super) fn close(&self) {
        let mut st = self.st.lock().unwrap();
        st.closed = true;
        st.pending.clear();
        st.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_objects::{link, route};

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
        assert_eq!(p.base.as_deref(), Some(&a));
        assert_eq!(p.target.as_deref(), Some(&c));
    }

    #[test]
    fn queues_share_the_batch_objects() {
        let (q1, q2) = (
            Queue::new(Capabilities::everything(), None),
            Queue::new(Capabilities::everything(), None),
        );
        let batch: Vec<SharedChange> =
            vec![Change::Add(route("10.0.0.0/24", 1, "10.1.0.1")).into()];
        q1.push_shared(&batch);
        q2.push_shared(&batch);
        let t = |q: &Queue| {
            q.st.lock()
                .unwrap()
                .pending
                .values()
                .next()
                .unwrap()
                .target
                .clone()
                .unwrap()
        };
        assert!(
            Arc::ptr_eq(&t(&q1), &t(&q2)),
            "one object, not a copy per queue"
        );
        assert_eq!(
            Arc::strong_count(&t(&q1)),
            3 + 1,
            "the batch, both queues (and this one)"
        );
    }

    #[test]
    fn the_port_filter_a_worker_takes_shares_the_link_table() {
        let caps = Capabilities::everything().port_names(["swp*"]);
        let q = Queue::new(caps, None);
        let links: Vec<Change> = (1..=1000)
            .map(|i| Change::Add(link(i, &format!("swp{i}"))))
            .collect();
        q.push_changes(&links);
        let a = q.ports();
        assert!(
            a.shares_links_with(&q.ports()),
            "a batch's filter copies nothing"
        );
        // A link change leaving names and drivers as they are copies nothing either.
        let Object::Link(mut l) = link(1, "swp1") else {
            unreachable!()
        };
        l.mtu = 9000;
        q.push_changes(&[Change::Update {
            old: link(1, "swp1"),
            new: Object::Link(l),
        }]);
        assert!(a.shares_links_with(&q.ports()));
        // A rename while the batch holds the table: the queue copies it, the batch keeps its own.
        q.push_changes(&[Change::Update {
            old: link(1, "swp1"),
            new: link(1, "eth1"),
        }]);
        let b = q.ports();
        assert!(!a.shares_links_with(&b));
        assert!(a.owns(1) && !b.owns(1));
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
        assert_eq!(p.base.as_deref(), Some(&a));
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
        q.hold_for_replay();
        q.replay_passed(Some(&ekho_mirror::replay::replay_position(&a.key())), false);
        q.push_changes(&[Change::Remove(a.clone()), Change::Add(b.clone())]);
        let st = q.st.lock().unwrap();
        assert_eq!(
            st.pending.len(),
            1,
            "only the change at or before the cursor is queued"
        );
        assert_eq!(st.pending.keys().next(), Some(&a.key()));
        drop(st);
        q.hold_for_replay();
        q.push_changes(&[Change::Add(link(1, "x"))]);
        assert_eq!(
            q.st.lock().unwrap().pending.len(),
            1,
            "nothing replayed yet: all left to the replay"
        );
        assert!(
            q.st.lock().unwrap().ports.knows(1),
            "links are still observed"
        );
    }

    #[test]
    fn a_restarted_replay_drops_what_is_pending() {
        let q = Queue::new(Capabilities::everything(), None);
        q.push_changes(&[Change::Add(link(1, "x"))]);
        assert_eq!(q.pending_len(), 1);
        q.restart_replay();
        q.push_changes(&[Change::Add(link(2, "y"))]);
        assert_eq!(q.pending_len(), 0, "superseded, then left to the replay");
        q.replay_passed(None, true);
        q.push_changes(&[Change::Add(link(3, "z"))]);
        assert_eq!(q.pending_len(), 1, "replay done: increments queue again");
    }
}
