//! The mirror's state and how kernel events change it, including the changes the kernel makes
//! without telling (docs/netlink-gaps.md), and the per-batch change computation.
//!
//! [`State::apply`] hands each event to the file of its object family, which says what the event
//! changes, including its silent consequences on other families (a link going down takes IPv4
//! routes and nexthops with it): `links`, `addresses`, `routes`, `nexthops`,
//! `neighbours`, `bridge` (FDB, MDB, VLANs), `rules`, `netconf`, `netfilter` (nftables), `tc` (qdiscs, classes, chains, filters, actions). `batch` tracks what a batch
//! touched and computes its net changes ([`State::flush`]); `reconcile` brings a dump into the
//! state (mark and sweep, [`State::reconcile`]).

mod addresses;
mod batch;
mod bridge;
mod links;
mod neighbours;
mod netconf;
pub mod netfilter;
mod nexthops;
mod reconcile;
mod routes;
mod rules;
pub mod tc;

pub use reconcile::Snapshot;

use crate::routes::{Attrs, RKey, Routes};
use crate::Event;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::route::device_discriminator;
use ekho_plugin_api::object::*;
use ekho_plugin_api::order;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A dumped route as a listener sees it ([`State::install_dumped_route`]).
pub enum Installed {
    /// Rendered and named.
    Route(Route),
    /// `rk.route(attrs)`, to be named by the receiver (no alias, nothing to render).
    Shared(RKey, Arc<Attrs>),
}

/// The mirrored state.
#[derive(Default)]
pub struct State {
    /// Links by ifindex.
    pub links: BTreeMap<u32, Link>,
    /// Objects of every kind but links and routes.
    pub objs: BTreeMap<ObjectKey, Object>,
    /// Routes.
    pub routes: Routes,
    /// Whether changes are being tracked (some listener is attached).
    pub tracking: bool,
    /// Keys touched in the current batch, with their (named) state before the batch.
    touched: BTreeMap<ObjectKey, Option<Object>>,
    /// Route keys touched in the current batch, with their (named) objects before the batch.
    /// In the order first touched (the kernel's order of events), hashed: one lookup per touch.
    touched_routes: indexmap::IndexMap<RKey, Vec<Object>, foldhash::fast::RandomState>,
    /// Set when proxy neighbours may have changed silently (link down/delete, last address).
    pub want_proxy_dump: bool,
    /// The nftables ruleset the nftables objects are derived from.
    pub nft: netfilter::Nft,
    /// Tables whose nftables messages were applied since their objects were last derived
    /// (at the flush: `State::sync_nft`).
    nft_dirty: std::collections::BTreeSet<netfilter::TableKey>,
    /// Kinds to re-dump: changed silently in a way the state cannot infer.
    pub want_redump: std::collections::BTreeSet<ObjectKind>,
    /// Each bridge's `mcast_snooping` option, by ifindex.
    bridge_snooping: BTreeMap<u32, bool>,
    /// tc: qdiscs, classes, chains, filters, actions, from which the plugin API's tc objects
    /// (in `objs`) are derived at each flush (`State::sync_tc`; what changed: `tc.dirty`).
    pub tc: tc::Tc,
}

impl State {
    /// A state holding only links and other objects (no routes), to name and render routes
    /// against while a dump of them runs; [`State::into_parts`] gives them back.
    pub fn view(links: BTreeMap<u32, Link>, objs: BTreeMap<ObjectKey, Object>) -> State {
        State {
            links,
            objs,
            ..Default::default()
        }
    }

    /// The links and other objects of a [`State::view`].
    pub fn into_parts(self) -> (BTreeMap<u32, Link>, BTreeMap<ObjectKey, Object>) {
        (self.links, self.objs)
    }

    /// Fills device names of `o` from the link table.
    pub fn name(&self, o: &mut Object) {
        name_with(&self.links, o)
    }

    /// The current (named) object under `k`; for routes, the alias in effect for that key.
    pub fn get(&self, k: &ObjectKey) -> Option<Object> {
        let mut o = match k {
            ObjectKey::Link { ifindex } => Object::Link(self.links.get(ifindex)?.clone()),
            ObjectKey::Route { dev, .. } => {
                let rk = RKey::from_object_key(k)?;
                Object::Route(
                    self.route_objects(&rk)
                        .into_iter()
                        .find(|r| device_discriminator(r) == *dev)?,
                )
            }
            _ => self.objs.get(k)?.clone(),
        };
        self.name(&mut o);
        Some(o)
    }

    /// Every object (routes: every alias), named, in dependency order.
    pub fn all(&self, kind: Option<ObjectKind>, all_aliases: bool) -> Vec<Object> {
        let want = |k: ObjectKind| kind.is_none_or(|x| x == k);
        let mut out = Vec::new();
        if want(ObjectKind::Link) {
            out.extend(self.links.values().cloned().map(Object::Link));
        }
        let mut rest: Vec<Object> = self
            .objs
            .values()
            .filter(|o| want(o.kind()))
            .cloned()
            .collect();
        out.append(&mut rest);
        if want(ObjectKind::Route) {
            for k in self.routes.keys() {
                if all_aliases {
                    for a in self.routes.get(&k) {
                        out.push(Object::Route(self.render(&k, a)));
                    }
                } else {
                    out.extend(self.route_objects(&k).into_iter().map(Object::Route));
                }
            }
        }
        for o in out.iter_mut() {
            self.name(o);
        }
        order::sort_dependency(&mut out);
        out
    }

    /// Objects per kind (routes: keys, aliases included as separate entries).
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for &k in ObjectKind::ALL {
            m.insert(k.plural(), 0);
        }
        *m.get_mut("links").unwrap() = self.links.len();
        *m.get_mut("routes").unwrap() = self.routes.len();
        for o in self.objs.values() {
            *m.get_mut(o.kind().plural()).unwrap() += 1;
        }
        m
    }

    // ---------------------------------------------------------------- generic objects

    pub(super) fn put(&mut self, o: Object) {
        let k = o.key();
        self.touch(&k);
        self.objs.insert(k, o);
    }

    pub(super) fn del(&mut self, k: &ObjectKey) {
        if self.objs.contains_key(k) {
            self.touch(k);
            self.objs.remove(k);
        }
    }

    pub(super) fn del_where(&mut self, kind: ObjectKind, f: impl Fn(&Object) -> bool) {
        let keys: Vec<ObjectKey> = self
            .objs
            .iter()
            .filter(|(k, o)| k.kind() == kind && f(o))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.del(&k);
        }
    }

    // ---------------------------------------------------------------- apply

    /// Applies one kernel event: each family's own file says what its events change.
    pub fn apply(&mut self, ev: Event) {
        match ev {
            Event::NewLink(l) => self.new_link(l),
            Event::NewBridge(l, snooping) => {
                self.bridge_snooping(l.ifindex, snooping);
                self.new_link(l)
            }
            Event::DelLink(l) => self.del_link(l.ifindex),
            Event::NewAddress(a) => self.new_address(a),
            Event::DelAddress(a) => self.del_address(a),
            Event::NewRoute(r, flags) => self.new_route(r, flags),
            Event::DelRoute(r) => self.del_route(r),
            Event::NewNeighbour(n) => self.new_neighbour(n),
            Event::DelNeighbour(n) => self.del_neighbour(n),
            Event::NewFdb(f) => self.new_fdb(f),
            Event::DelFdb(f) => self.del_fdb(f),
            Event::NewNexthop(n) => self.new_nexthop(n),
            Event::DelNexthop(id) => self.del_nexthops(&[id]),
            Event::NewRule(r) => self.new_rule(r),
            Event::DelRule(r) => self.del_rule(r),
            Event::NewNetconf(n) => self.new_netconf(n),
            Event::DelNetconf(family, ifindex) => self.del_netconf(family, ifindex),
            Event::NewMdb(v) => self.new_mdb(v),
            Event::DelMdb(v) => self.del_mdb(v),
            Event::NewVlan(v) => self.new_vlan(v),
            Event::DelVlan(v) => self.del_vlan(v),
            Event::Nft(m) => self.apply_nft(m),
            Event::Tc(m) => self.tc.apply(m),
            Event::Ignored => {}
        }
    }
}

/// Fills device names of `o` from `links`.
pub fn name_with(links: &BTreeMap<u32, Link>, o: &mut Object) {
    let n = |i: u32| -> RString { links.get(&i).map(|l| l.ifname.clone()).unwrap_or_default() };
    match o {
        Object::Link(l) => {
            l.master_name = if l.master != 0 {
                n(l.master)
            } else {
                RString::new()
            }
        }
        Object::Netconf(c) => {
            c.dev = if c.ifindex > 0 {
                n(c.ifindex as u32)
            } else {
                RString::new()
            }
        }
        Object::Address(a) => a.dev = n(a.ifindex),
        Object::Vlan(v) => v.dev = n(v.ifindex),
        Object::Nexthop(x) => {
            x.dev = if x.ifindex != 0 {
                n(x.ifindex)
            } else {
                RString::new()
            }
        }
        Object::Neighbour(x) => x.dev = n(x.ifindex),
        Object::Fdb(f) => {
            f.dev = n(f.ifindex);
            f.master_name = if f.master != 0 {
                n(f.master)
            } else {
                RString::new()
            };
        }
        Object::Mdb(m) => {
            m.bridge_name = n(m.bridge);
            m.port_name = n(m.port);
        }
        Object::Route(r) => {
            for h in r.nexthops.iter_mut() {
                h.dev = if h.ifindex != 0 {
                    n(h.ifindex)
                } else {
                    RString::new()
                };
            }
        }
        _ => {}
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! Helpers of the state machine's tests (beside each family's code), fed with events as the
    //! source decodes them.
    use super::*;
    use ekho_plugin_api::object::link::{IFF_LOWER_UP, IFF_UP};

    pub(super) const CREATE: u16 = super::routes::NLM_F_CREATE;

    pub(super) fn link(ifindex: u32, name: &str, up: bool) -> Link {
        Link {
            ifindex,
            ifname: name.into(),
            flags: if up { IFF_UP | IFF_LOWER_UP } else { 0 },
            link_netnsid: -1,
            ..Default::default()
        }
    }

    pub(super) fn route(dst: &str, gw: &str, dev: u32) -> Route {
        Route::unicast(
            dst.parse().unwrap(),
            vec![NextHop::via(gw.parse().unwrap(), dev)],
        )
    }

    pub(super) fn state() -> State {
        let mut s = State {
            tracking: true,
            ..Default::default()
        };
        s.apply(Event::NewLink(link(2, "a", true)));
        s.apply(Event::NewLink(link(3, "b", true)));
        s.flush();
        s
    }

    pub(super) fn gws(s: &State, dst: &str) -> Vec<String> {
        let rk = RKey::of(&route(dst, "10.0.0.1", 2));
        s.routes
            .get(&rk)
            .iter()
            .map(|a| a.nexthops[0].gateway.unwrap().to_string())
            .collect()
    }
}
