//! Offloaded conntrack flows: what the data path's `FLOWS` and `FLOW_STATS` maps hold for each,
//! independent of how the host describes a flow (the API adapter in `lib.rs` turns the host's
//! flow objects into a [`FlowSpec`]).
//!
//! A flow is two `FLOWS` entries, one per direction, keyed by the 5-tuple a packet of that
//! direction carries on ingress (the conntrack entry's original tuple, and its reply tuple).
//! Each rewrites the packet to the *other* tuple reversed, which is SNAT and DNAT at once: for a
//! masqueraded flow `orig = h1:p -> h2:q`, `reply = h2:q -> r:p'`, a packet `h1:p -> h2:q`
//! leaves as `r:p' -> h2:q`, and a reply `h2:q -> r:p'` leaves as `h2:q -> h1:p`. Without NAT
//! the rewrite is the identity (and the checksum deltas are zero).

use crate::dataplane::{Backend, Error};
use crate::maps::*;
use crate::ring::RingReader;
use aya::maps::{MapData, RingBuf};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// One direction's 5-tuple (ports in host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// What the data path needs of a conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowSpec {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// The conntrack zone: packets are matched in the zone of the port they arrive on.
    pub zone: u16,
    pub orig: Tuple,
    pub reply: Tuple,
}

/// Why a flow was not installed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("protocol {0} is not offloaded (TCP and UDP only)")]
    Protocol(u8),
    #[error("the tuples mix IPv4 and IPv6 ({0:?}); NAT64 is not offloaded")]
    Family(Box<FlowSpec>),
    #[error("the flow table is full ({0} flows): the flow stays in the kernel")]
    Full(usize),
    #[error("another offloaded flow has the same {0} tuple in the same zone: the flow stays in the kernel")]
    Duplicate(&'static str),
    #[error("data path: {0}")]
    Dataplane(#[from] Error),
}

/// A flow's counters as the data path counts them (index 0 original, 1 reply direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCounters {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// `CLOCK_MONOTONIC` nanoseconds of the last packet of each direction forwarded in XDP
    /// (0: none yet).
    pub lastused: [u64; 2],
    /// Time since then (`None`: none yet).
    pub idle: [Option<Duration>; 2],
    /// The flow saw a FIN or RST: its packets go to the kernel, it should be handed back.
    pub handed_back: bool,
}

fn addr16(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v) => out[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => out = v.octets(),
    }
    out
}

fn key_of(proto: u8, zone: u16, t: &Tuple) -> FlowKey {
    FlowKey {
        src: addr16(t.src),
        dst: addr16(t.dst),
        sport: t.sport.to_be(),
        dport: t.dport.to_be(),
        proto,
        family: if t.src.is_ipv4() { 2 } else { 10 },
        zone,
    }
}

/// The rewrite of a packet carrying `from` into the reverse of `to`.
fn val_of(to: &Tuple, id: u32, dir: u32) -> FlowVal {
    FlowVal {
        src: addr16(to.dst),
        dst: addr16(to.src),
        sport: to.dport.to_be(),
        dport: to.sport.to_be(),
        id,
        dir,
        pad: 0,
    }
}

impl FlowSpec {
    /// The two `FLOWS` entries of this flow under counter id `id`.
    pub fn entries(&self, id: u32) -> Result<[(FlowKey, FlowVal); 2], FlowError> {
        if self.proto != IPPROTO_TCP && self.proto != IPPROTO_UDP {
            return Err(FlowError::Protocol(self.proto));
        }
        let v4 = self.orig.src.is_ipv4();
        if [self.orig.dst, self.reply.src, self.reply.dst]
            .iter()
            .any(|a| a.is_ipv4() != v4)
        {
            return Err(FlowError::Family(Box::new(*self)));
        }
        Ok([
            (
                key_of(self.proto, self.zone, &self.orig),
                val_of(&self.reply, id, FLOW_DIR_ORIG),
            ),
            (
                key_of(self.proto, self.zone, &self.reply),
                val_of(&self.orig, id, FLOW_DIR_REPLY),
            ),
        ])
    }

    /// Whether the flow is NATed (the reply tuple is not the original reversed).
    pub fn is_nat(&self) -> bool {
        self.reply.src != self.orig.dst
            || self.reply.dst != self.orig.src
            || self.reply.sport != self.orig.dport
            || self.reply.dport != self.orig.sport
    }
}

struct Installed {
    id: u32,
    keys: [FlowKey; 2],
    spec: FlowSpec,
}

/// The flows programmed into the data path, by the host's key for them.
pub struct FlowTable<K> {
    flows: HashMap<K, Installed>,
    by_tuple: HashMap<FlowKey, K>,
    /// Counter id -> key; shared with the FLOW_EVENTS thread ([`spawn_events`]).
    by_id: Arc<Mutex<HashMap<u32, K>>>,
    next_id: u32,
    max: usize,
}

impl<K: Clone + Eq + Hash> FlowTable<K> {
    pub fn new(max: usize) -> FlowTable<K> {
        FlowTable {
            flows: HashMap::new(),
            by_tuple: HashMap::new(),
            by_id: Default::default(),
            next_id: 0,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.flows.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.flows.keys()
    }

    /// Installs (or replaces) the flow `key`; its counters start at zero. The same flow again
    /// (an update of other fields) is left as it is, counters and hand-back mark included.
    /// Returns whether the data path was written.
    pub fn install(
        &mut self,
        dp: &mut dyn Backend,
        key: K,
        spec: &FlowSpec,
    ) -> Result<bool, FlowError> {
        // Validate before touching anything.
        spec.entries(0)?;
        if self.flows.get(&key).is_some_and(|f| f.spec == *spec) {
            return Ok(false);
        }
        if self.flows.contains_key(&key) {
            self.remove(dp, &key)?;
        }
        if self.flows.len() >= self.max {
            return Err(FlowError::Full(self.max));
        }
        // max < u32::MAX: a free id exists.
        let id = {
            let ids = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = self.next_id;
            loop {
                next = next.wrapping_add(1).max(1);
                if !ids.contains_key(&next) {
                    break next;
                }
            }
        };
        self.next_id = id;
        let entries = spec.entries(id)?;
        for (name, (k, _)) in ["original", "reply"].iter().zip(entries.iter()) {
            if self.by_tuple.contains_key(k) {
                return Err(FlowError::Duplicate(name));
            }
        }
        if entries[0].0 == entries[1].0 {
            return Err(FlowError::Duplicate("reply"));
        }
        dp.set_flow(id, &entries)?;
        let keys = [entries[0].0, entries[1].0];
        for k in keys {
            self.by_tuple.insert(k, key.clone());
        }
        self.ids().insert(id, key.clone());
        self.flows.insert(
            key,
            Installed {
                id,
                keys,
                spec: *spec,
            },
        );
        Ok(true)
    }

    /// Removes the flow `key` (no error when it is not installed).
    pub fn remove(&mut self, dp: &mut dyn Backend, key: &K) -> Result<bool, FlowError> {
        let Some(f) = self.flows.remove(key) else {
            return Ok(false);
        };
        for k in &f.keys {
            self.by_tuple.remove(k);
        }
        self.ids().remove(&f.id);
        dp.remove_flow(f.id, &f.keys)?;
        Ok(true)
    }

    /// Forgets every flow (the data path is gone).
    pub fn clear(&mut self) {
        self.flows.clear();
        self.by_tuple.clear();
        self.ids().clear();
    }

    /// The counters of flow `key`, `None` when it is not installed.
    pub fn counters(&self, dp: &dyn Backend, key: &K) -> Option<FlowCounters> {
        let f = self.flows.get(key)?;
        let s = dp.flow_stats(f.id).unwrap_or_default();
        let now = ekho_plugin_api::monotonic_ns();
        let idle = |t: u64| (t != 0).then(|| Duration::from_nanos(now.saturating_sub(t)));
        Some(FlowCounters {
            packets: s.packets,
            bytes: s.bytes,
            lastused: s.lastused,
            idle: [idle(s.lastused[0]), idle(s.lastused[1])],
            handed_back: s.flags & FLOW_HANDBACK != 0,
        })
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<u32, K>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of the flow with counter id `id` (for FLOW_EVENTS records).
    pub fn key_of_id(&self, id: u32) -> Option<K> {
        self.ids().get(&id).cloned()
    }

    /// The counter id -> key map, for the FLOW_EVENTS thread ([`spawn_events`]).
    pub fn shared_ids(&self) -> Arc<Mutex<HashMap<u32, K>>> {
        self.by_id.clone()
    }

    /// The counter id of flow `key`.
    pub fn id_of(&self, key: &K) -> Option<u32> {
        self.flows.get(key).map(|f| f.id)
    }

    /// Flows the data path marked for hand-back (saw FIN or RST).
    pub fn handed_back(&self, dp: &dyn Backend) -> Vec<K> {
        self.flows
            .iter()
            .filter(|(_, f)| {
                dp.flow_stats(f.id)
                    .is_some_and(|s| s.flags & FLOW_HANDBACK != 0)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Sends one hand-back to the host.
pub type ReleaseFn<K> = Box<dyn Fn(&K) -> Result<(), String> + Send + Sync>;

/// Hand-backs: which flows were released to the host already (by the FLOW_EVENTS thread or a
/// later scan of the flags), so each is released once.
pub struct Releaser<K> {
    release: ReleaseFn<K>,
    done: Mutex<HashSet<u32>>,
    pub released: AtomicU64,
    pub release_failed: AtomicU64,
    /// FIN/RST records of flows no longer offloaded when the event thread read them (the host
    /// had taken the flow back already, on the kernel entry's own state change): nothing left
    /// to hand back.
    pub release_moot: AtomicU64,
}

impl<K> Releaser<K> {
    pub fn new(release: impl Fn(&K) -> Result<(), String> + Send + Sync + 'static) -> Releaser<K> {
        Releaser {
            release: Box::new(release),
            done: Mutex::new(HashSet::new()),
            released: AtomicU64::new(0),
            release_failed: AtomicU64::new(0),
            release_moot: AtomicU64::new(0),
        }
    }

    fn done(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases flow `id` (key `key`) unless it was already.
    pub fn release(&self, id: u32, key: &K) {
        if !self.done().insert(id) {
            return;
        }
        match (self.release)(key) {
            Ok(()) => self.released.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.release_failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The flow `id` was removed: a later flow may reuse the id.
    pub fn forget(&self, id: u32) {
        self.done().remove(&id);
    }
}

/// The thread draining FLOW_EVENTS: each record (a flow saw FIN or RST) is released at once.
pub fn spawn_events<K: Clone + Send + 'static>(
    ring: RingBuf<MapData>,
    ids: Arc<Mutex<HashMap<u32, K>>>,
    releaser: Arc<Releaser<K>>,
) -> std::io::Result<RingReader> {
    RingReader::spawn("xdp-router-flows", ring, move |ev: FlowEvent| {
        let key = ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ev.id)
            .cloned();
        match key {
            Some(k) => releaser.release(ev.id, &k),
            None => {
                releaser.release_moot.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
        }
    }

    #[test]
    fn masquerade_rewrites_both_directions() {
        let spec = FlowSpec {
            proto: IPPROTO_TCP,
            zone: 0,
            orig: t("10.0.1.2", 40000, "10.0.2.2", 5001),
            reply: t("10.0.2.2", 5001, "10.0.2.1", 61000),
        };
        assert!(spec.is_nat());
        let [(k0, v0), (k1, v1)] = spec.entries(7).unwrap();
        assert_eq!(&k0.src[..4], &[10, 0, 1, 2]);
        assert_eq!(u16::from_be(k0.sport), 40000);
        assert_eq!((k0.family, k0.zone, k1.zone), (2, 0, 0));
        // The same tuples in another conntrack zone: other keys (no collision), same rewrite.
        let [(z0, w0), (z1, _)] = FlowSpec { zone: 7, ..spec }.entries(7).unwrap();
        assert_eq!((z0.zone, z1.zone), (7, 7));
        assert_ne!(z0, k0);
        assert_eq!(
            FlowKey { zone: 0, ..z0 },
            k0,
            "only the zone tells them apart"
        );
        assert_eq!(w0, v0);
        // original direction leaves as r:61000 -> h2:5001
        assert_eq!(&v0.src[..4], &[10, 0, 2, 1]);
        assert_eq!(&v0.dst[..4], &[10, 0, 2, 2]);
        assert_eq!(u16::from_be(v0.sport), 61000);
        assert_eq!(u16::from_be(v0.dport), 5001);
        assert_eq!((v0.id, v0.dir), (7, FLOW_DIR_ORIG));
        // reply h2:5001 -> r:61000 leaves as h2:5001 -> h1:40000
        assert_eq!(&k1.dst[..4], &[10, 0, 2, 1]);
        assert_eq!(u16::from_be(k1.dport), 61000);
        assert_eq!(&v1.src[..4], &[10, 0, 2, 2]);
        assert_eq!(&v1.dst[..4], &[10, 0, 1, 2]);
        assert_eq!(u16::from_be(v1.dport), 40000);
        assert_eq!(v1.dir, FLOW_DIR_REPLY);
    }

    #[test]
    fn plain_flows_rewrite_to_themselves() {
        let spec = FlowSpec {
            proto: IPPROTO_UDP,
            zone: 0,
            orig: t("fd00:1::2", 1, "fd00:2::2", 2),
            reply: t("fd00:2::2", 2, "fd00:1::2", 1),
        };
        assert!(!spec.is_nat());
        let [(k0, v0), (k1, v1)] = spec.entries(1).unwrap();
        assert_eq!(k0.family, 10);
        assert_eq!(
            (k0.src, k0.dst, k0.sport, k0.dport),
            (v0.src, v0.dst, v0.sport, v0.dport)
        );
        assert_eq!(
            (k1.src, k1.dst, k1.sport, k1.dport),
            (v1.src, v1.dst, v1.sport, v1.dport)
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let mut spec = FlowSpec {
            proto: 1,
            zone: 0,
            orig: t("10.0.1.2", 0, "10.0.2.2", 0),
            reply: t("10.0.2.2", 0, "10.0.1.2", 0),
        };
        assert!(matches!(spec.entries(1), Err(FlowError::Protocol(1))));
        spec.proto = IPPROTO_TCP;
        spec.reply.dst = "fd00::1".parse().unwrap();
        assert!(matches!(spec.entries(1), Err(FlowError::Family(_))));
    }
}
