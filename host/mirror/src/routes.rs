//! Compact route storage.
//!
//! A route is stored as a small fixed-size key (table, destination, tos, metric; plus source for
//! IPv6) mapped to the list of its aliases (the kernel may hold several entries under one key:
//! IPv4 `append`/`prepend` alternatives, IPv6 same-metric routes through different devices).
//! Everything else (type, protocol, scope, flags, prefsrc, legs, metrics) lives in an interned,
//! shared [`Attrs`] — as the kernel shares `fib_info` between routes with the same next hops, so
//! a million routes through a handful of gateways cost one key and one pointer each.

use ekho_plugin_api::abi_stable::std_types::{ROption, RVec};
use ekho_plugin_api::object::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything of a route but its key.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Attrs {
    /// `RTN_*` type.
    pub kind: RouteType,
    /// `RTPROT_*`.
    pub protocol: Protocol,
    /// Scope.
    pub scope: Scope,
    /// `RTNH_F_*` flags of a single-path route.
    pub flags: u32,
    /// Preferred source.
    pub prefsrc: Option<IpAddress>,
    /// Nexthop object id.
    pub nhid: Option<u32>,
    /// Legs (device names empty).
    pub nexthops: Vec<NextHop>,
    /// Metrics, by id.
    pub metrics: Vec<RouteMetric>,
    /// IPv6 router preference.
    pub pref: Option<u8>,
    /// Seconds to expiry (as last reported).
    pub expires: Option<u32>,
}

impl Attrs {
    /// The attributes of a route (device names dropped: they are filled at emission).
    ///
    /// Exhaustive (no `..`): a new [`Route`] field fails to compile here until it is stored in
    /// the attribute set or in the key ([`RKey`]).
    pub fn of(r: &Route) -> Attrs {
        let Route {
            // The key.
            family: _,
            table: _,
            dst: _,
            src: _,
            tos: _,
            metric: _,
            kind,
            protocol,
            scope,
            flags,
            prefsrc,
            nhid,
            nexthops,
            metrics,
            pref,
            expires,
        } = r;
        Attrs {
            kind: *kind,
            protocol: *protocol,
            scope: *scope,
            flags: *flags,
            prefsrc: prefsrc.into_option(),
            nhid: nhid.into_option(),
            nexthops: nexthops
                .iter()
                .map(|n| {
                    let mut n = n.clone();
                    n.dev = Default::default();
                    n
                })
                .collect(),
            metrics: metrics.to_vec(),
            pref: pref.into_option(),
            expires: expires.into_option(),
        }
    }

    /// Whether any leg goes out through `ifindex`.
    pub fn uses_dev(&self, ifindex: u32) -> bool {
        self.nexthops.iter().any(|n| n.ifindex == ifindex)
    }

    /// Whether the legs (gateway, device) of both are the same, flags aside.
    pub fn same_legs(&self, o: &Attrs) -> bool {
        self.nexthops.len() == o.nexthops.len()
            && self
                .nexthops
                .iter()
                .zip(o.nexthops.iter())
                .all(|(a, b)| a.gateway == b.gateway && a.ifindex == b.ifindex)
    }
}

/// The fields of an attribute set, borrowed from an [`Attrs`] or from a [`Route`], so that a
/// dumped route finds its shared set without building one (device names are not part of it).
///
/// [`Route`], [`NextHop`], [`Attrs`] and `View` are destructured field by field below, never with
/// `..`: a field added to any of them fails to compile here until it is hashed and compared (or
/// said to be left out, like the key's fields and device names). Listing fields by hand would let
/// two routes differing only in the new field share one attribute set, silently merged. (`Encap`
/// and `RouteMetric` are hashed and compared whole, by their derived impls.)
struct View<'a> {
    kind: RouteType,
    protocol: Protocol,
    scope: Scope,
    flags: u32,
    prefsrc: Option<&'a IpAddress>,
    nhid: Option<u32>,
    nexthops: &'a [NextHop],
    metrics: &'a [RouteMetric],
    pref: Option<u8>,
    expires: Option<u32>,
}

/// What a leg contributes to an attribute set: everything but its device name (filled at
/// emission). Exhaustive: a new [`NextHop`] field fails to compile here.
fn leg(n: &NextHop) -> (&ROption<IpAddress>, u32, u16, u32, &ROption<Encap>) {
    let NextHop {
        gateway,
        ifindex,
        dev: _,
        weight,
        flags,
        encap,
    } = n;
    (gateway, *ifindex, *weight, *flags, encap)
}

impl View<'_> {
    fn of_attrs(a: &Attrs) -> View<'_> {
        let Attrs {
            kind,
            protocol,
            scope,
            flags,
            prefsrc,
            nhid,
            nexthops,
            metrics,
            pref,
            expires,
        } = a;
        View {
            kind: *kind,
            protocol: *protocol,
            scope: *scope,
            flags: *flags,
            prefsrc: prefsrc.as_ref(),
            nhid: *nhid,
            nexthops,
            metrics,
            pref: *pref,
            expires: *expires,
        }
    }

    fn of_route(r: &Route) -> View<'_> {
        let Route {
            // The key ([`RKey`]), not part of the attribute set.
            family: _,
            table: _,
            dst: _,
            src: _,
            tos: _,
            metric: _,
            kind,
            protocol,
            scope,
            flags,
            prefsrc,
            nhid,
            nexthops,
            metrics,
            pref,
            expires,
        } = r;
        View {
            kind: *kind,
            protocol: *protocol,
            scope: *scope,
            flags: *flags,
            prefsrc: prefsrc.as_ref().into_option(),
            nhid: nhid.into_option(),
            nexthops,
            metrics,
            pref: pref.into_option(),
            expires: expires.into_option(),
        }
    }

    fn hash(&self) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let View {
            kind,
            protocol,
            scope,
            flags,
            prefsrc,
            nhid,
            nexthops,
            metrics,
            pref,
            expires,
        } = self;
        let mut h = foldhash::fast::FixedState::with_seed(0x6174_7472).build_hasher();
        (kind.0, protocol.0, scope.0, flags).hash(&mut h);
        (prefsrc, nhid, pref, expires).hash(&mut h);
        nexthops.len().hash(&mut h);
        for n in *nexthops {
            leg(n).hash(&mut h);
        }
        metrics.hash(&mut h);
        h.finish()
    }

    fn same(&self, o: &View<'_>) -> bool {
        let View {
            kind,
            protocol,
            scope,
            flags,
            prefsrc,
            nhid,
            nexthops,
            metrics,
            pref,
            expires,
        } = self;
        *kind == o.kind
            && *protocol == o.protocol
            && *scope == o.scope
            && *flags == o.flags
            && *prefsrc == o.prefsrc
            && *nhid == o.nhid
            && *pref == o.pref
            && *expires == o.expires
            && *metrics == o.metrics
            && nexthops.len() == o.nexthops.len()
            && nexthops
                .iter()
                .zip(o.nexthops)
                .all(|(a, b)| leg(a) == leg(b))
    }
}

/// Key of an IPv4 route.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct K4 {
    /// Routing table.
    pub table: u32,
    /// Destination address.
    pub dst: [u8; 4],
    /// Destination prefix length.
    pub len: u8,
    /// TOS (IPv4) / traffic class.
    pub tos: u8,
    /// Priority (metric).
    pub metric: u32,
}

/// Key of an IPv6 route.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct K6 {
    /// Routing table.
    pub table: u32,
    /// Destination address.
    pub dst: [u8; 16],
    /// Destination prefix length.
    pub len: u8,
    /// Source prefix address (source-specific routes).
    pub src: [u8; 16],
    /// Source prefix length.
    pub srclen: u8,
    /// TOS (IPv4) / traffic class.
    pub tos: u8,
    /// Priority (metric).
    pub metric: u32,
}

/// Key of a route of either family.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum RKey {
    /// IPv4.
    V4(K4),
    /// IPv6.
    V6(K6),
}

impl RKey {
    /// The key of a route.
    pub fn of(r: &Route) -> RKey {
        match (r.dst.addr, r.src.addr) {
            (IpAddress::V4(d), _) => RKey::V4(K4 {
                table: r.table,
                dst: d,
                len: r.dst.len,
                tos: r.tos,
                metric: r.metric,
            }),
            (IpAddress::V6(d), s) => RKey::V6(K6 {
                table: r.table,
                dst: d,
                len: r.dst.len,
                src: match s {
                    IpAddress::V6(s) => s,
                    _ => [0; 16],
                },
                srclen: r.src.len,
                tos: r.tos,
                metric: r.metric,
            }),
        }
    }

    /// From the plugin-api key.
    pub fn from_object_key(k: &ObjectKey) -> Option<RKey> {
        match k {
            ObjectKey::Route {
                table,
                dst,
                src,
                tos,
                metric,
                ..
            } => {
                let mut r = Route::unicast(*dst, vec![]);
                r.table = *table;
                r.src = *src;
                r.tos = *tos;
                r.metric = *metric;
                Some(RKey::of(&r))
            }
            _ => None,
        }
    }

    /// The route with this key and these attributes.
    pub fn route(&self, a: &Attrs) -> Route {
        let (family, table, dst, src, tos, metric) = match self {
            RKey::V4(k) => (
                Family::INET,
                k.table,
                IpPrefix::new(IpAddress::V4(k.dst), k.len),
                IpPrefix::new(IpAddress::V4([0; 4]), 0),
                k.tos,
                k.metric,
            ),
            RKey::V6(k) => (
                Family::INET6,
                k.table,
                IpPrefix::new(IpAddress::V6(k.dst), k.len),
                IpPrefix::new(IpAddress::V6(k.src), k.srclen),
                k.tos,
                k.metric,
            ),
        };
        Route {
            family,
            table,
            dst,
            src,
            tos,
            metric,
            kind: a.kind,
            protocol: a.protocol,
            scope: a.scope,
            flags: a.flags,
            prefsrc: a.prefsrc.into(),
            nhid: a.nhid.into(),
            nexthops: RVec::from(a.nexthops.clone()),
            metrics: RVec::from(a.metrics.clone()),
            pref: a.pref.into(),
            expires: a.expires.into(),
        }
    }

    /// The plugin-api key.
    pub fn object_key(&self) -> ObjectKey {
        let r = self.route(&Attrs {
            kind: RouteType::UNICAST,
            protocol: Protocol::UNSPEC,
            scope: Scope::UNIVERSE,
            flags: 0,
            prefsrc: None,
            nhid: None,
            nexthops: vec![],
            metrics: vec![],
            pref: None,
            expires: None,
        });
        ObjectKey::Route {
            family: r.family,
            table: r.table,
            dst: r.dst,
            src: r.src,
            tos: r.tos,
            metric: r.metric,
            dev: 0,
        }
    }
}

/// The aliases under one key, first = the one in effect. Never empty in a table. The `bool`
/// is the mark of a streamed resync ([`Routes::mark`]); it lives in the enum's padding (the
/// value stays 16 bytes) and takes no part in comparisons.
#[derive(Clone, Debug)]
pub enum Aliases {
    /// The usual case: one entry.
    One(Arc<Attrs>, bool),
    /// Several entries, kernel order.
    Many(Box<Vec<Arc<Attrs>>>, bool),
}

const _: () = assert!(std::mem::size_of::<Aliases>() == 16);

impl PartialEq for Aliases {
    fn eq(&self, o: &Self) -> bool {
        self.as_slice() == o.as_slice()
    }
}
impl Eq for Aliases {}

impl Aliases {
    /// The aliases as a slice.
    pub fn as_slice(&self) -> &[Arc<Attrs>] {
        match self {
            Aliases::One(a, _) => std::slice::from_ref(a),
            Aliases::Many(v, _) => v,
        }
    }
    fn marked(&self) -> bool {
        match self {
            Aliases::One(_, m) | Aliases::Many(_, m) => *m,
        }
    }
    fn set_mark(&mut self, v: bool) {
        match self {
            Aliases::One(_, m) | Aliases::Many(_, m) => *m = v,
        }
    }
    fn from_vec(mut v: Vec<Arc<Attrs>>) -> Option<Aliases> {
        match v.len() {
            0 => None,
            1 => Some(Aliases::One(v.pop().unwrap(), false)),
            _ => Some(Aliases::Many(Box::new(v), false)),
        }
    }
}

/// Both route tables and the attribute interner.
#[derive(Default)]
pub struct Routes {
    /// IPv4 routes.
    pub v4: BTreeMap<K4, Aliases>,
    /// IPv6 routes.
    pub v6: BTreeMap<K6, Aliases>,
    /// Shared attribute sets, by [`View::hash`].
    interner: hashbrown::HashTable<Arc<Attrs>>,
    /// Route entries (aliases included), kept by `push` and `set` so that `len` is O(1): `ekho
    /// status` asks for it under the mirror's lock.
    entries: usize,
}

impl Routes {
    /// Number of route entries (aliases included).
    pub fn len(&self) -> usize {
        self.entries
    }
    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
    /// Number of distinct attribute sets held.
    pub fn interned(&self) -> usize {
        self.interner.len()
    }

    /// Shares `a` with an equal attribute set already held.
    pub fn intern(&mut self, a: Attrs) -> Arc<Attrs> {
        let v = View::of_attrs(&a);
        let h = v.hash();
        if let Some(x) = self.interner.find(h, |x| View::of_attrs(x).same(&v)) {
            return x.clone();
        }
        let x = Arc::new(a);
        self.interner
            .insert_unique(h, x.clone(), |x| View::of_attrs(x).hash());
        x
    }

    /// The shared attribute set of `r` (built only when no equal set is held yet: a dump of a
    /// million routes through a few gateways allocates a few sets, not a million).
    pub fn intern_route(&mut self, r: &Route) -> Arc<Attrs> {
        let v = View::of_route(r);
        let h = v.hash();
        if let Some(x) = self.interner.find(h, |x| View::of_attrs(x).same(&v)) {
            return x.clone();
        }
        let x = Arc::new(Attrs::of(r));
        self.interner
            .insert_unique(h, x.clone(), |x| View::of_attrs(x).hash());
        x
    }

    /// Drops a reference to an interned set, and the set with the last user.
    pub fn release(&mut self, a: Arc<Attrs>) {
        // One reference in the interner, one here: last user gone.
        if Arc::strong_count(&a) == 2 {
            let h = View::of_attrs(&a).hash();
            if let Ok(e) = self.interner.find_entry(h, |x| Arc::ptr_eq(x, &a)) {
                e.remove();
            }
        }
    }

    /// The aliases under `k` (empty when none).
    pub fn get(&self, k: &RKey) -> &[Arc<Attrs>] {
        match k {
            RKey::V4(k) => self.v4.get(k).map(|a| a.as_slice()).unwrap_or(&[]),
            RKey::V6(k) => self.v6.get(k).map(|a| a.as_slice()).unwrap_or(&[]),
        }
    }

    /// Appends an alias under `k` (attribute set from this table's interner); returns the
    /// aliases now under `k`.
    pub fn push(&mut self, k: RKey, a: Arc<Attrs>) -> &[Arc<Attrs>] {
        self.entries += 1;
        let slot = match k {
            RKey::V4(k) => match self.v4.entry(k) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    return e.insert(Aliases::One(a, false)).as_slice();
                }
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            },
            RKey::V6(k) => match self.v6.entry(k) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    return e.insert(Aliases::One(a, false)).as_slice();
                }
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            },
        };
        let mut v = slot.as_slice().to_vec();
        v.push(a);
        *slot = Aliases::Many(Box::new(v), slot.marked());
        slot.as_slice()
    }

    /// Replaces the aliases under `k` (attribute sets must come from this table's interner).
    pub fn set(&mut self, k: RKey, v: Vec<Arc<Attrs>>) {
        self.entries += v.len();
        let old = match (k, Aliases::from_vec(v)) {
            (RKey::V4(k), Some(a)) => self.v4.insert(k, a),
            (RKey::V4(k), None) => self.v4.remove(&k),
            (RKey::V6(k), Some(a)) => self.v6.insert(k, a),
            (RKey::V6(k), None) => self.v6.remove(&k),
        };
        if let Some(old) = old {
            let olds: Vec<Arc<Attrs>> = match old {
                Aliases::One(a, _) => vec![a],
                Aliases::Many(v, _) => *v,
            };
            self.entries -= olds.len();
            for a in olds {
                self.release(a);
            }
        }
    }

    /// Clears every resync mark (before and after a streamed resync).
    pub fn clear_marks(&mut self) {
        self.v4.values_mut().for_each(|a| a.set_mark(false));
        self.v6.values_mut().for_each(|a| a.set_mark(false));
    }

    /// Marks `k` seen by the streamed resync under way (no-op when absent).
    pub fn mark(&mut self, k: &RKey) {
        let a = match k {
            RKey::V4(k) => self.v4.get_mut(k),
            RKey::V6(k) => self.v6.get_mut(k),
        };
        if let Some(a) = a {
            a.set_mark(true);
        }
    }

    /// Whether `k` is held and marked.
    pub fn marked(&self, k: &RKey) -> bool {
        match k {
            RKey::V4(k) => self.v4.get(k).is_some_and(|a| a.marked()),
            RKey::V6(k) => self.v6.get(k).is_some_and(|a| a.marked()),
        }
    }

    /// Keys not marked (what a streamed resync did not see: gone from the kernel).
    pub fn unmarked_keys(&self) -> Vec<RKey> {
        self.v4
            .iter()
            .filter(|(_, a)| !a.marked())
            .map(|(k, _)| RKey::V4(*k))
            .chain(
                self.v6
                    .iter()
                    .filter(|(_, a)| !a.marked())
                    .map(|(k, _)| RKey::V6(*k)),
            )
            .collect()
    }

    /// Every key (both families), in order.
    pub fn keys(&self) -> Vec<RKey> {
        self.v4
            .keys()
            .map(|k| RKey::V4(*k))
            .chain(self.v6.keys().map(|k| RKey::V6(*k)))
            .collect()
    }

    /// Keys of routes having an alias that matches `f`.
    pub fn keys_where(&self, mut f: impl FnMut(&RKey, &Attrs) -> bool) -> Vec<RKey> {
        let mut out = Vec::new();
        for (k, a) in &self.v4 {
            let k = RKey::V4(*k);
            if a.as_slice().iter().any(|x| f(&k, x)) {
                out.push(k);
            }
        }
        for (k, a) in &self.v6 {
            let k = RKey::V6(*k);
            if a.as_slice().iter().any(|x| f(&k, x)) {
                out.push(k);
            }
        }
        out
    }

    /// Re-interns attribute sets from another table into this one.
    pub fn adopt(&mut self, v: &[Arc<Attrs>]) -> Vec<Arc<Attrs>> {
        v.iter().map(|a| self.intern((**a).clone())).collect()
    }
}

/// Removes a leg's device name; used by comparisons.
pub fn strip_names(mut r: Route) -> Route {
    for n in r.nexthops.iter_mut() {
        n.dev = Default::default();
    }
    r
}

/// `ROption` helper.
pub fn ropt<T>(o: Option<T>) -> ROption<T> {
    o.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_roundtrip_and_sharing() {
        let mut t = Routes::default();
        let mut keys = Vec::new();
        for i in 0..100u8 {
            let r = Route::unicast(
                IpPrefix::new(IpAddress::V4([10, 0, i, 0]), 24),
                vec![NextHop::via("10.1.0.1".parse().unwrap(), 3)],
            );
            let k = RKey::of(&r);
            assert_eq!(k.object_key(), Object::Route(r.clone()).key());
            assert_eq!(RKey::from_object_key(&k.object_key()), Some(k));
            let a = t.intern(Attrs::of(&r));
            t.set(k, vec![a]);
            assert_eq!(k.route(&t.get(&k)[0]), r);
            keys.push(k);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.interned(), 1);
        // A dumped route finds the same set without building one; a different leg does not.
        let r = Route::unicast(
            IpPrefix::new(IpAddress::V4([10, 9, 0, 0]), 16),
            vec![NextHop::via("10.1.0.1".parse().unwrap(), 3)],
        );
        assert!(Arc::ptr_eq(&t.intern_route(&r), &t.get(&keys[0])[0]));
        let mut other = r.clone();
        other.nexthops[0].weight = 2;
        let o = t.intern_route(&other);
        assert!(!Arc::ptr_eq(&o, &t.get(&keys[0])[0]));
        assert_eq!(t.interned(), 2);
        t.release(o); // its last user: dropped from the interner
        t.release(t.get(&keys[0])[0].clone()); // still used by 100 routes: kept
        assert_eq!(t.interned(), 1);
        // Aliases count as entries: pushing adds one, replacing counts the new list.
        let a = t.get(&keys[0])[0].clone();
        t.push(keys[0], a.clone());
        assert_eq!(t.len(), 101);
        t.set(keys[1], vec![a.clone(), a.clone(), a]);
        assert_eq!(t.len(), 103);
        for k in keys {
            t.set(k, vec![]);
        }
        assert_eq!(t.len(), 0);
        assert_eq!(t.interned(), 0);
        assert!(t.is_empty());
    }
}
