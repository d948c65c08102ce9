//! ekho's mirror: the kernel's networking state in user space.
//!
//! [`Mirror`] owns the state and turns kernel input into the exact list of object [`Change`]s,
//! handed to listeners (the host's per-plugin dispatch) under the mirror's lock, so that a listener
//! attached with [`Mirror::attach`] sees the snapshot and then every later change, with no gap and
//! no duplicate. [`source`] feeds it from rtnetlink (dump + notifications) in a chosen netns.
//!
//! THIS FILE IS A SKELETON of the API the host depends on; internals are to be replaced.

use ekho_plugin_api::{Change, Object, ObjectKey, ObjectKind};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub mod source;

/// A listener of mirror changes. Called with the mirror's lock held: must not block (enqueue and
/// return).
pub type Listener = Box<dyn FnMut(&[Change]) + Send>;

/// Identifies an attached listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub u64);

/// Counters of the mirror and its source, shown by `ekho status`.
#[derive(Clone, Debug, Default)]
pub struct MirrorStats {
    /// Objects held, per kind (plural kind name -> count).
    pub objects: BTreeMap<&'static str, usize>,
    /// Netlink messages received.
    pub messages: u64,
    /// Socket overruns (ENOBUFS) seen.
    pub overruns: u64,
    /// Resyncs done (after overruns, eBPF ring-buffer losses, or targeted re-dumps).
    pub resyncs: u64,
    /// Duration of the last resync, in milliseconds.
    pub last_resync_ms: u64,
    /// Whether the initial dump has completed.
    pub synced: bool,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<ObjectKey, Object>,
    listeners: Vec<(ListenerId, Listener)>,
    next_id: u64,
    stats: MirrorStats,
}

/// The mirror. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Mirror {
    inner: Arc<Mutex<Inner>>,
}

impl Mirror {
    pub fn new() -> Mirror {
        Mirror::default()
    }

    /// Atomically: calls `init` with the current state (every object, in dependency order: see
    /// [`ObjectKind`]), then registers `listener` for every later change.
    pub fn attach(&self, init: impl FnOnce(Vec<Object>), listener: Listener) -> ListenerId {
        let mut g = self.inner.lock().unwrap();
        let mut objs: Vec<Object> = g.objects.values().cloned().collect();
        objs.sort_by_key(|o| o.kind());
        init(objs);
        g.next_id += 1;
        let id = ListenerId(g.next_id);
        g.listeners.push((id, listener));
        id
    }

    /// Removes a listener.
    pub fn detach(&self, id: ListenerId) {
        self.inner.lock().unwrap().listeners.retain(|(i, _)| *i != id);
    }

    /// The current objects of one kind (or all), with device names filled in.
    pub fn dump(&self, kind: Option<ObjectKind>) -> Vec<Object> {
        let g = self.inner.lock().unwrap();
        g.objects.values().filter(|o| kind.is_none_or(|k| o.kind() == k)).cloned().collect()
    }

    /// Counters.
    pub fn stats(&self) -> MirrorStats {
        self.inner.lock().unwrap().stats.clone()
    }

    /// Inserts or replaces an object, notifying listeners of the resulting change (if any).
    pub fn upsert(&self, obj: Object) {
        let mut g = self.inner.lock().unwrap();
        let key = obj.key();
        let change = match g.objects.insert(key, obj.clone()) {
            None => Some(Change::Add(obj)),
            Some(old) if old != obj => Some(Change::Update { old, new: obj }),
            Some(_) => None,
        };
        if let Some(c) = change {
            for (_, l) in g.listeners.iter_mut() {
                l(std::slice::from_ref(&c));
            }
        }
    }

    /// Removes an object by key, notifying listeners.
    pub fn remove(&self, key: &ObjectKey) {
        let mut g = self.inner.lock().unwrap();
        if let Some(old) = g.objects.remove(key) {
            let c = Change::Remove(old);
            for (_, l) in g.listeners.iter_mut() {
                l(std::slice::from_ref(&c));
            }
        }
    }
}
