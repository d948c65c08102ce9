//! Dumps into the state: a [`Snapshot`] of some kinds and [`State::reconcile`] (mark and sweep,
//! touching only what differs).

use super::State;
use crate::netlink::neighbour::fdb_is_dev_addr_list;
use crate::routes::{Attrs, RKey, Routes};
use crate::Event;
use ekho_plugin_api::object::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A complete dump of some kinds, reconciled into the state by [`State::reconcile`].
#[derive(Default)]
pub struct Snapshot {
    /// Kinds the snapshot covers (others are left alone).
    pub kinds: BTreeSet<ObjectKind>,
    /// Whether only proxy neighbours were dumped (for `Neighbour`).
    pub proxies_only: bool,
    /// Kinds whose dump the kernel could not complete: seen objects are reconciled, unseen ones
    /// are kept (no sweep).
    pub partial: BTreeSet<ObjectKind>,
    /// Links by ifindex.
    pub links: BTreeMap<u32, Link>,
    /// Bridges' `mcast_snooping`, by ifindex.
    pub bridge_snooping: BTreeMap<u32, bool>,
    /// Other objects by key.
    pub objs: BTreeMap<ObjectKey, Object>,
    /// Routes.
    pub routes: Routes,
    /// The nftables ruleset dumped (its objects are in `objs` once derived:
    /// [`Snapshot::derive_nft`]).
    pub nft: super::netfilter::Nft,
    /// Tables whose nftables messages were added since their objects were last derived.
    pub(crate) nft_dirty: BTreeSet<super::netfilter::TableKey>,
    /// The tc state dumped, when tc was (`source::dump_tc`).
    pub tc: Option<super::tc::Tc>,
}

impl Snapshot {
    /// Adds a dumped message to the snapshot.
    pub fn add(&mut self, ev: Event) {
        match ev {
            Event::NewLink(l) => {
                self.links.insert(l.ifindex, l);
            }
            Event::NewBridge(l, snooping) => {
                self.bridge_snooping.insert(l.ifindex, snooping);
                self.links.insert(l.ifindex, l);
            }
            Event::NewRoute(r, _) => {
                let k = RKey::of(&r);
                let a = self.routes.intern_route(&r);
                self.routes.push(k, a);
            }
            Event::NewAddress(a) => self.put(a.into()),
            Event::NewNeighbour(n) => self.put(n.into()),
            Event::NewFdb(f) if !fdb_is_dev_addr_list(&f) => self.put(f.into()),
            Event::NewNexthop(n) => self.put(n.into()),
            Event::NewRule(r) => self.put(r.into()),
            Event::NewNetconf(n) => {
                let k = Object::Netconf(n.clone()).key();
                match self.objs.get_mut(&k) {
                    Some(Object::Netconf(o)) => o.merge(&n),
                    _ => {
                        self.objs.insert(k, n.into());
                    }
                }
            }
            Event::NewMdb(v) => {
                for m in v {
                    self.put(m.into())
                }
            }
            Event::NewVlan(v) => {
                for x in v {
                    self.put(x.into())
                }
            }
            Event::Tc(m) => self.tc.get_or_insert_default().add_dumped(m),
            Event::Nft(m) => {
                // The table's objects are derived once its messages are all in
                // (`derive_nft`): deriving them at every message made a dump of a table with
                // n chains and m rules cost (n + m) * n (300 chains of 5 rules: 2.3 s natively
                // in a debug build, over 30 s in the emulated VM).
                if let Some(t) = self.nft.apply(m) {
                    self.nft_dirty.insert(t);
                }
            }
            _ => {}
        }
    }
    fn put(&mut self, o: Object) {
        self.objs.insert(o.key(), o);
    }

    /// Derives the nftables objects of the tables whose messages were added since the last
    /// call (each table's objects replaced by what its ruleset now gives). Called once an
    /// nftables dump is in, and by [`State::reconcile`].
    pub fn derive_nft(&mut self) {
        let dirty = std::mem::take(&mut self.nft_dirty);
        if dirty.is_empty() {
            return;
        }
        self.objs
            .retain(|_, o| !dirty.iter().any(|t| super::netfilter::in_table(o, t)));
        for t in &dirty {
            for o in self.nft.objects_of(t) {
                self.put(o);
            }
        }
    }
}

impl State {
    /// Makes the state equal to `snap` for the kinds it covers (mark and sweep), touching only
    /// what differs.
    pub fn reconcile(&mut self, mut snap: Snapshot) {
        snap.derive_nft();
        let Snapshot {
            kinds,
            proxies_only,
            partial,
            links,
            bridge_snooping,
            objs,
            routes,
            nft,
            nft_dirty: _,
            tc,
        } = snap;
        if let Some(tc) = tc {
            // The dump replaces tc's lists; the plugin API's tc objects are derived from them
            // at the flush (`State::sync_tc`), so only what differs is emitted.
            self.tc = tc;
            self.tc.dirty.all = true;
        }
        if kinds.contains(&ObjectKind::NfChain) && !partial.contains(&ObjectKind::NfChain) {
            // Both nftables kinds come from one dump (`source::dump_requests`).
            self.nft = nft;
        }
        if kinds.contains(&ObjectKind::Link) {
            self.bridge_snooping = bridge_snooping;
            let keys: BTreeSet<u32> = self.links.keys().chain(links.keys()).copied().collect();
            for i in keys {
                let new = links.get(&i);
                if self.links.get(&i) != new {
                    self.touch(&ObjectKey::Link { ifindex: i });
                    match new {
                        Some(l) => self.links.insert(i, l.clone()),
                        None => self.links.remove(&i),
                    };
                }
            }
        }
        let covered = |k: &ObjectKey, o: &Object| -> bool {
            // Flows come from the conntrack source (`Mirror::update_flows`), never a dump here.
            k.kind() != ObjectKind::Flow
                && !super::tc::is_tc_kind(k.kind())
                && kinds.contains(&k.kind())
                && !partial.contains(&k.kind())
                && (!proxies_only || matches!(o, Object::Neighbour(n) if n.proxy))
                && !matches!(o, Object::Netconf(_) if !kinds.contains(&ObjectKind::Netconf))
        };
        let stale: Vec<ObjectKey> = self
            .objs
            .iter()
            .filter(|(k, o)| covered(k, o) && !objs.contains_key(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.del(&k);
        }
        for (k, o) in objs {
            if self.objs.get(&k) != Some(&o) {
                self.touch(&k);
                self.objs.insert(k, o);
            }
        }
        if kinds.contains(&ObjectKind::Route) {
            if self.routes.is_empty() && !self.tracking && !partial.contains(&ObjectKind::Route) {
                self.routes = routes;
            } else {
                let sweep = !partial.contains(&ObjectKind::Route);
                // Merge-join of both sorted tables: only differing keys are collected.
                let mut diff: Vec<RKey> = Vec::new();
                merge_diff(&self.routes.v4, &routes.v4, sweep, &mut |k| {
                    diff.push(RKey::V4(*k))
                });
                merge_diff(&self.routes.v6, &routes.v6, sweep, &mut |k| {
                    diff.push(RKey::V6(*k))
                });
                for k in diff {
                    let v = self.routes.adopt(routes.get(&k));
                    self.touch_route(&k);
                    self.routes.set(k, v);
                }
            }
        }
    }
}

impl State {
    /// A streamed route resync, one key at a time (the source's `stream_route_resync`): the
    /// routes dumped under `k` replace what the table holds there when they differ (a change
    /// emitted at the next flush), and `k` is marked seen. A key seen again in the same pass
    /// (its aliases not adjacent in the dump) gets the new ones appended. The pass starts with
    /// [`Routes::clear_marks`] and ends with [`State::sweep_routes`]; it holds no second copy of
    /// the table.
    pub fn stream_route(&mut self, k: RKey, dumped: &[Route]) {
        if self.routes.marked(&k) {
            self.touch_route(&k);
            for r in dumped {
                let a = self.routes.intern_route(r);
                self.routes.push(k, a);
            }
            return;
        }
        let new: Vec<Arc<Attrs>> = dumped.iter().map(|r| self.routes.intern_route(r)).collect();
        if same_aliases(self.routes.get(&k), &new) {
            // The table's own sets (interned: the same ones); a set interned only now, equal
            // under comparison, is not kept.
            for a in new {
                self.routes.release(a);
            }
        } else {
            self.touch_route(&k);
            self.routes.set(k, new);
        }
        self.routes.mark(&k);
    }

    /// Ends a streamed route resync: removes the routes it did not see (when `sweep`: the dump
    /// was complete) and clears the marks.
    pub fn sweep_routes(&mut self, sweep: bool) {
        if sweep {
            for k in self.routes.unmarked_keys() {
                self.touch_route(&k);
                self.routes.set(k, Vec::new());
            }
        }
        self.routes.clear_marks();
    }
}

fn same_aliases(a: &[Arc<Attrs>], b: &[Arc<Attrs>]) -> bool {
    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| **x == **y)
}

/// Calls `f` for every key whose aliases differ between `cur` and `new` (keys only in `cur`
/// only when `sweep`), walking both sorted maps once.
fn merge_diff<K: Ord>(
    cur: &BTreeMap<K, crate::routes::Aliases>,
    new: &BTreeMap<K, crate::routes::Aliases>,
    sweep: bool,
    f: &mut dyn FnMut(&K),
) {
    let mut a = cur.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, _)), None) => {
                if sweep {
                    f(ka);
                }
                a.next();
            }
            (None, Some((kb, _))) => {
                f(kb);
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    if sweep {
                        f(ka);
                    }
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    f(kb);
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !same_aliases(va.as_slice(), vb.as_slice()) {
                        f(ka);
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::routes::NLM_F_EXCL;
    use crate::state::tests::*;

    #[test]
    fn partial_snapshot_never_sweeps() {
        let mut s = state();
        s.apply(Event::NewRoute(
            route("10.9.0.0/24", "10.0.0.1", 2),
            CREATE | NLM_F_EXCL,
        ));
        s.flush();
        let mut snap = Snapshot {
            kinds: [ObjectKind::Route].into(),
            ..Default::default()
        };
        snap.partial.insert(ObjectKind::Route);
        s.reconcile(snap);
        assert!(s.flush().is_empty());
        s.reconcile(Snapshot {
            kinds: [ObjectKind::Route].into(),
            ..Default::default()
        });
        assert_eq!(s.flush().len(), 1);
    }

    /// A streamed route resync emits exactly what differs: a changed route as one change, a
    /// route the dump lacks as a removal, a new one as an addition, an unchanged one nothing;
    /// the marks are cleared after; an incomplete pass removes nothing.
    #[test]
    fn streamed_route_resync_emits_only_differences() {
        let mut s = state();
        for (dst, gw) in [
            ("10.1.0.0/24", "10.0.0.1"),
            ("10.2.0.0/24", "10.0.0.1"),
            ("10.3.0.0/24", "10.0.0.1"),
        ] {
            s.apply(Event::NewRoute(route(dst, gw, 2), CREATE | NLM_F_EXCL));
        }
        s.flush();
        s.routes.clear_marks();
        let same = route("10.1.0.0/24", "10.0.0.1", 2);
        let changed = route("10.2.0.0/24", "10.0.0.2", 2);
        let added = route("10.4.0.0/24", "10.0.0.1", 2);
        for r in [&same, &changed, &added] {
            s.stream_route(RKey::of(r), std::slice::from_ref(r));
        }
        s.sweep_routes(true);
        let mut ops: Vec<(&str, String)> = s
            .flush()
            .iter()
            .map(|c| (c.op(), format!("{:?}", c.key())))
            .collect();
        ops.sort();
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert_eq!(
            ops.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            ["add", "remove", "update"],
            "{ops:?}"
        );
        assert!(ops[0].1.contains("[10, 4, 0, 0]"), "{ops:?}");
        assert!(ops[1].1.contains("[10, 3, 0, 0]"), "{ops:?}");
        assert!(ops[2].1.contains("[10, 2, 0, 0]"), "{ops:?}");
        assert_eq!(s.routes.len(), 3);
        assert!(s.routes.unmarked_keys().len() == 3, "marks cleared");
        // Nothing changed: a second pass emits nothing and keeps no new attribute set.
        let sets = s.routes.interned();
        s.routes.clear_marks();
        for r in [&same, &changed, &added] {
            s.stream_route(RKey::of(r), std::slice::from_ref(r));
        }
        s.sweep_routes(true);
        assert!(s.flush().is_empty());
        assert_eq!(s.routes.interned(), sets);
        // An incomplete pass removes nothing.
        s.routes.clear_marks();
        s.stream_route(RKey::of(&same), std::slice::from_ref(&same));
        s.sweep_routes(false);
        assert!(s.flush().is_empty());
        assert_eq!(s.routes.len(), 3);
    }
}
