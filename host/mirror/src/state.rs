//! The mirror's state and how kernel events change it, including the changes the kernel makes
//! without telling (docs/netlink-gaps.md), and the per-batch change computation.

use crate::netlink::neighbour::fdb_is_dev_addr_list;
use crate::routes::{Attrs, RKey, Routes};
use crate::Event;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::link::{IFF_LOWER_UP, IFF_UP};
use ekho_plugin_api::object::route::device_discriminator;
use ekho_plugin_api::object::route::{RTNH_F_DEAD, RTNH_F_LINKDOWN};
use ekho_plugin_api::object::rule::{FIB_RULE_IIF_DETACHED, FIB_RULE_OIF_DETACHED};
use ekho_plugin_api::object::*;
use ekho_plugin_api::{order, Change};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

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
    /// Other objects by key.
    pub objs: BTreeMap<ObjectKey, Object>,
    /// Routes.
    pub routes: Routes,
}

impl Snapshot {
    /// Adds a dumped message to the snapshot.
    pub fn add(&mut self, ev: Event) {
        match ev {
            Event::NewLink(l) => {
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
            _ => {}
        }
    }
    fn put(&mut self, o: Object) {
        self.objs.insert(o.key(), o);
    }
}

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
    touched_routes: BTreeMap<RKey, Vec<Object>>,
    /// Set when proxy neighbours may have changed silently (link down/delete, last address).
    pub want_proxy_dump: bool,
}

impl State {
    // ---------------------------------------------------------------- names and materialization

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

    /// Stores a dumped route in `routes` and returns it as a listener of the finished table
    /// sees it ([`State::route_objects_of`]), or `None` when an earlier alias under the same key
    /// and device is the one in effect.
    pub fn install_dumped_route(&self, routes: &mut Routes, r: Route) -> Option<Installed> {
        let rk = RKey::of(&r);
        let a = routes.intern_route(&r);
        let aliases = routes.push(rk, a);
        let a = aliases.last().expect("just pushed");
        let linkdown = a.flags & RTNH_F_LINKDOWN != 0
            || a.nexthops.iter().any(|h| h.flags & RTNH_F_LINKDOWN != 0);
        if aliases.len() == 1 && !linkdown {
            debug_assert_eq!(self.render(&rk, a), r);
            return Some(Installed::Shared(rk, a.clone()));
        }
        // Rare: aliases, or `dead` rendered from netconf. Render exactly as a reader would.
        let out = self.render(&rk, a);
        let d = device_discriminator(&out);
        let shadowed = aliases[..aliases.len() - 1]
            .iter()
            .any(|x| device_discriminator(&self.render(&rk, x)) == d);
        if shadowed {
            return None;
        }
        let mut o = Object::Route(out);
        self.name(&mut o);
        match o {
            Object::Route(r) => Some(Installed::Route(r)),
            _ => unreachable!(),
        }
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

    /// Whether routes through `ifindex` with a gateway (or device) of `family` show `dead` when
    /// their device has no carrier (`ignore_routes_with_linkdown`, device or `all`).
    fn ignores_linkdown(&self, family: Family, ifindex: u32) -> bool {
        [ifindex as i32, -1].iter().any(|i| {
            matches!(self.objs.get(&ObjectKey::Netconf { family, ifindex: *i }),
                Some(Object::Netconf(n)) if n.ignore_routes_with_linkdown.into_option().unwrap_or(0) != 0)
        })
    }

    /// A stored route as the kernel shows it: the kernel adds `dead` to `linkdown` legs at dump
    /// time when the device's `ignore_routes_with_linkdown` is set (fib_nexthop_info).
    pub fn render(&self, rk: &RKey, a: &Attrs) -> Route {
        let mut r = rk.route(a);
        let fam = r.family;
        let dead = |st: &State, h: &NextHop| {
            let f = h
                .gateway
                .as_ref()
                .map(|g| g.family())
                .into_option()
                .unwrap_or(fam);
            st.ignores_linkdown(f, h.ifindex)
        };
        if r.nexthops.len() == 1 {
            if r.flags & RTNH_F_LINKDOWN != 0 && dead(self, &r.nexthops[0]) {
                r.flags |= RTNH_F_DEAD;
            }
        } else {
            let marks: Vec<bool> = r
                .nexthops
                .iter()
                .map(|h| h.flags & RTNH_F_LINKDOWN != 0 && dead(self, h))
                .collect();
            for (h, m) in r.nexthops.iter_mut().zip(marks) {
                if m {
                    h.flags |= RTNH_F_DEAD;
                }
            }
        }
        r
    }

    /// The route objects under one route key: per device discriminator of the plugin-api key
    /// (see [`ekho_plugin_api::object::route::device_discriminator`]), the first alias (the one in
    /// effect), in alias order. Unnamed.
    pub fn route_objects(&self, rk: &RKey) -> Vec<Route> {
        self.route_objects_of(rk, self.routes.get(rk))
    }

    /// [`State::route_objects`] for aliases already at hand (no second lookup of the key).
    pub fn route_objects_of(&self, rk: &RKey, aliases: &[Arc<Attrs>]) -> Vec<Route> {
        let mut out: Vec<Route> = Vec::new();
        for a in aliases {
            let r = self.render(rk, a);
            let d = device_discriminator(&r);
            if !out.iter().any(|x| device_discriminator(x) == d) {
                out.push(r);
            }
        }
        out
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

    /// Whether some IPv6 route is too large for the kernel to dump: its message would exceed
    /// the largest dump buffer (~32 KiB, about 1100 legs). The kernel then ends the IPv6 route
    /// dump early and silently (observed on 6.18: `NLMSG_DONE` with error 0), so such a dump
    /// must not be used to sweep.
    pub fn has_undumpable_routes(&self) -> bool {
        self.routes.v6.values().flat_map(|a| a.as_slice()).any(|a| {
            let est: usize = 128
                + a.nexthops
                    .iter()
                    .map(|h| 8 + 20 + h.encap.as_ref().map_or(0, |_| 64))
                    .sum::<usize>();
            est > 30 * 1024
        })
    }

    // ---------------------------------------------------------------- batch tracking

    fn touch(&mut self, k: &ObjectKey) {
        if let ObjectKey::Route { .. } = k {
            if let Some(rk) = RKey::from_object_key(k) {
                self.touch_route(&rk);
            }
            return;
        }
        if self.tracking && !self.touched.contains_key(k) {
            let old = self.get(k);
            self.touched.insert(k.clone(), old);
        }
    }

    /// Marks every route object under `k` (all device discriminators, before and after the
    /// change) as touched.
    fn touch_route(&mut self, k: &RKey) {
        if self.tracking && !self.touched_routes.contains_key(k) {
            let old: Vec<Object> = self
                .route_objects(k)
                .into_iter()
                .map(|r| {
                    let mut o = Object::Route(r);
                    self.name(&mut o);
                    o
                })
                .collect();
            self.touched_routes.insert(*k, old);
        }
    }

    /// Ends a batch: the net change of every touched object, in batch order
    /// ([`ekho_plugin_api::order`]).
    pub fn flush(&mut self) -> Vec<Change> {
        let mut touched = std::mem::take(&mut self.touched);
        for (rk, olds) in std::mem::take(&mut self.touched_routes) {
            let mut seen = BTreeSet::new();
            for o in olds {
                seen.insert(o.key());
                touched.insert(o.key(), Some(o));
            }
            for r in self.route_objects(&rk) {
                let k = Object::Route(r).key();
                if seen.insert(k.clone()) {
                    touched.insert(k, None);
                }
            }
        }
        let mut up = Vec::new();
        let mut rm = Vec::new();
        for (k, old) in touched {
            let new = self.get(&k);
            match (old, new) {
                (None, Some(n)) => up.push(Change::Add(n)),
                (Some(o), Some(n)) if o != n => up.push(Change::Update { old: o, new: n }),
                (Some(o), None) => rm.push(Change::Remove(o)),
                _ => {}
            }
        }
        up.extend(rm);
        order::sort_batch(&mut up);
        up
    }

    // ---------------------------------------------------------------- generic objects

    fn put(&mut self, o: Object) {
        let k = o.key();
        self.touch(&k);
        self.objs.insert(k, o);
    }

    fn del(&mut self, k: &ObjectKey) {
        if self.objs.contains_key(k) {
            self.touch(k);
            self.objs.remove(k);
        }
    }

    fn del_where(&mut self, kind: ObjectKind, f: impl Fn(&Object) -> bool) {
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

    /// Applies one kernel event.
    #[allow(clippy::collapsible_match)]
    pub fn apply(&mut self, ev: Event) {
        match ev {
            Event::NewLink(l) => self.new_link(l),
            Event::DelLink(l) => self.del_link(l.ifindex),
            Event::NewAddress(a) => {
                // An IPv4 address on an up device revives its dead IPv4 legs (fib_sync_up).
                if a.family == Family::INET
                    && self
                        .links
                        .get(&a.ifindex)
                        .is_some_and(|l| l.flags & IFF_UP != 0)
                {
                    // fib_sync_up(RTNH_F_DEAD) also clears linkdown when the link has carrier.
                    let carrier = self
                        .links
                        .get(&a.ifindex)
                        .is_some_and(|l| l.flags & IFF_LOWER_UP != 0);
                    self.leg_flags(a.ifindex, Some(false), carrier.then_some(false), Some(4));
                }
                self.put(a.into())
            }
            Event::DelAddress(a) => self.del_address(a),
            Event::NewRoute(r, flags) => self.new_route(r, flags),
            Event::DelRoute(r) => self.del_route(r),
            Event::NewNeighbour(n) => self.put(n.into()),
            Event::DelNeighbour(n) => self.del(&Object::Neighbour(n).key()),
            Event::NewFdb(f) => {
                if !fdb_is_dev_addr_list(&f) {
                    // A VXLAN unicast MAC has one remote: a NEWNEIGH naming another remote is a
                    // replace (multicast/zero MACs may hold several, added with append).
                    let m = f.mac.as_slice();
                    if f.dst.is_some()
                        && f.master == 0
                        && m.len() == 6
                        && m[0] & 1 == 0
                        && m.iter().any(|b| *b != 0)
                    {
                        let (ifindex, mac, vlan) = (f.ifindex, f.mac.clone(), f.vlan);
                        self.del_where(ObjectKind::Fdb, |o| {
                            matches!(o, Object::Fdb(x) if x.master == 0 && x.ifindex == ifindex && x.mac == mac && x.vlan == vlan)
                        });
                    }
                    self.put(f.into())
                }
            }
            Event::DelFdb(f) => self.del(&Object::Fdb(f).key()),
            Event::NewNexthop(n) => self.new_nexthop(n),
            Event::DelNexthop(id) => self.del_nexthops(&[id]),
            Event::NewRule(r) => self.put(r.into()),
            Event::DelRule(r) => self.del(&Object::Rule(r).key()),
            Event::NewNetconf(n) => {
                let k = Object::Netconf(n.clone()).key();
                if n.ignore_routes_with_linkdown.is_some() {
                    // Changes how linkdown routes render: touch the routes concerned.
                    let ifindex = n.ifindex;
                    let keys = self
                        .routes
                        .keys_where(|_, a| ifindex < 0 || a.uses_dev(ifindex as u32));
                    for rk in keys {
                        self.touch_route(&rk);
                    }
                }
                let merged = match self.objs.get(&k) {
                    Some(Object::Netconf(o)) => {
                        let mut o = o.clone();
                        o.merge(&n);
                        o
                    }
                    _ => n,
                };
                self.put(merged.into());
            }
            Event::DelNetconf(family, ifindex) => self.del(&ObjectKey::Netconf { family, ifindex }),
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
            Event::DelVlan(v) => {
                for x in v {
                    self.del(&Object::Vlan(x).key())
                }
            }
            Event::DelMdb(v) => {
                for m in v {
                    self.del(&Object::Mdb(m).key())
                }
            }
            Event::Ignored => {}
        }
    }

    fn new_link(&mut self, l: Link) {
        let k = ObjectKey::Link { ifindex: l.ifindex };
        self.touch(&k);
        // Objects naming this device (netconf is announced before its link, a rename changes
        // every `dev`): capture their emitted form before the name changes.
        if self.links.get(&l.ifindex).map(|o| &o.ifname) != Some(&l.ifname) {
            self.touch_users(l.ifindex);
        }
        let old = self.links.insert(l.ifindex, l.clone());
        let (was_up, had_carrier, old_name) = match &old {
            Some(o) => (
                o.flags & IFF_UP != 0,
                o.flags & IFF_LOWER_UP != 0,
                Some(o.ifname.clone()),
            ),
            None => (true, true, None),
        };
        let up = l.flags & IFF_UP != 0;
        let carrier = l.flags & IFF_LOWER_UP != 0;
        // A veth peer is announced before its partner is registered, with IFLA_LINK 0, and never
        // again: complete the pair from the second one.
        if old.is_none() && l.kind.as_str() == "veth" && l.link != 0 && l.link_netnsid < 0 {
            if let Some(p) = self.links.get(&l.link).cloned() {
                if p.kind.as_str() == "veth" && p.link == 0 {
                    let mut p = p;
                    p.link = l.ifindex;
                    self.touch(&ObjectKey::Link { ifindex: p.ifindex });
                    self.links.insert(p.ifindex, p);
                }
            }
        }
        if old_name.as_ref() != Some(&l.ifname) {
            if let Some(on) = &old_name {
                self.rules_detach(on, true);
            }
            self.rules_detach(&l.ifname, false);
        }
        if old.is_some() && was_up && !up {
            self.link_down(l.ifindex, false);
        }
        if old.is_some() && (had_carrier && !carrier) {
            self.drop_nexthops_on(l.ifindex);
        }
        if old.is_some() && (was_up != up || had_carrier != carrier) {
            let dead = (was_up != up).then_some(!up);
            let linkdown = if !carrier && had_carrier {
                Some(true)
            } else if carrier && (!had_carrier || !was_up) {
                Some(false)
            } else {
                None
            };
            // IPv4 revives dead legs on NETDEV_UP (fib_sync_up); IPv6 only once the link is
            // ready, i.e. up with carrier (addrconf_notify -> rt6_sync_up).
            let linkdown4 = if dead == Some(false) && carrier {
                Some(false)
            } else {
                linkdown
            };
            self.leg_flags(l.ifindex, dead, linkdown4, Some(4));
            let dead6 = if was_up && !up {
                Some(true)
            } else if up && carrier && (!was_up || !had_carrier) {
                Some(false)
            } else {
                None
            };
            self.leg_flags(l.ifindex, dead6, linkdown, Some(6));
        }
    }

    fn touch_users(&mut self, ifindex: u32) {
        if !self.tracking {
            return;
        }
        let keys: Vec<ObjectKey> = self
            .objs
            .iter()
            .filter(|(_, o)| {
                o.ifindexes().contains(&ifindex)
                    || matches!(o, Object::Fdb(f) if f.master == ifindex)
                    || matches!(o, Object::Mdb(m) if m.bridge == ifindex)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.touch(&k);
        }
        let lk: Vec<u32> = self
            .links
            .values()
            .filter(|x| x.master == ifindex)
            .map(|x| x.ifindex)
            .collect();
        for i in lk {
            self.touch(&ObjectKey::Link { ifindex: i });
        }
        for k in self.routes.keys_where(|_, a| a.uses_dev(ifindex)) {
            self.touch_route(&k);
        }
    }

    fn rules_detach(&mut self, name: &RString, detached: bool) {
        let upd: Vec<Rule> = self
            .objs
            .values()
            .filter_map(|o| match o {
                Object::Rule(r) if r.iif == *name || r.oif == *name => Some(r.clone()),
                _ => None,
            })
            .collect();
        for mut r in upd {
            for (n, bit) in [
                (r.iif.clone(), FIB_RULE_IIF_DETACHED),
                (r.oif.clone(), FIB_RULE_OIF_DETACHED),
            ] {
                if n == *name {
                    if detached {
                        r.flags |= bit
                    } else {
                        r.flags &= !bit
                    }
                }
            }
            self.put(r.into());
        }
    }

    /// A device lost its IPv4 addresses or went admin down (`deleted`: or disappeared).
    fn link_down(&mut self, ifindex: u32, deleted: bool) {
        self.want_proxy_dump = true;
        self.drop_nexthops_on(ifindex);
        self.v4_dev_down(ifindex, deleted, !deleted);
        if !deleted {
            // IPv6 addresses kept over admin down (keep_addr_on_down) become tentative silently
            // (addrconf_ifdown); the others are deleted with RTM_DELADDR.
            let kept: Vec<Address> = self
                .objs
                .values()
                .filter_map(|o| match o {
                    Object::Address(a)
                        if a.family == Family::INET6
                            && a.ifindex == ifindex
                            && a.flags & 0x42 == 0 =>
                    {
                        Some(a.clone())
                    }
                    _ => None,
                })
                .collect();
            for mut a in kept {
                a.flags |= 0x40;
                self.put(a.into());
            }
            // IPv6 announces these (unless net.ipv6.route.skip_notify_on_dev_down=1): routes
            // whose every leg is on the device go, in every table; multipath legs die.
            let keys = self.routes.keys_where(|k, a| {
                matches!(k, RKey::V6(_)) && a.nhid.is_none() && a.uses_dev(ifindex)
            });
            for k in keys {
                let v: Vec<Arc<Attrs>> = self
                    .routes
                    .get(&k)
                    .iter()
                    .filter(|a| {
                        a.nhid.is_some() || !a.nexthops.iter().all(|h| h.ifindex == ifindex)
                    })
                    .cloned()
                    .collect();
                self.touch_route(&k);
                self.routes.set(k, v);
            }
        }
        if deleted {
            // IPv6 announces these, but not with skip_notify_on_dev_down=1: drop them anyway.
            let keys = self
                .routes
                .keys_where(|k, a| matches!(k, RKey::V6(_)) && a.uses_dev(ifindex));
            for k in keys {
                let v: Vec<Arc<Attrs>> = self
                    .routes
                    .get(&k)
                    .iter()
                    .filter_map(|a| {
                        if !a.uses_dev(ifindex) {
                            return Some(a.clone());
                        }
                        let mut n = (**a).clone();
                        n.nexthops.retain(|h| h.ifindex != ifindex);
                        if n.nexthops.is_empty() {
                            None
                        } else {
                            fold_single(&mut n);
                            Some(Arc::new(n))
                        }
                    })
                    .collect();
                let v = self.routes.adopt(&v);
                self.touch_route(&k);
                self.routes.set(k, v);
            }
        }
    }

    /// IPv4 routes through `ifindex` after it went down or was deleted: single-device routes are
    /// flushed (all tables; `local` routes stay on admin down), multipath legs die (deleted:
    /// the whole route goes).
    fn v4_dev_down(&mut self, ifindex: u32, deleted: bool, keep_local: bool) {
        let keys = self
            .routes
            .keys_where(|k, a| matches!(k, RKey::V4(_)) && a.uses_dev(ifindex));
        for k in keys {
            let mut v = Vec::new();
            for a in self.routes.get(&k) {
                // Routes through nexthop objects follow their nexthops (handled there).
                if !a.uses_dev(ifindex)
                    || a.nhid.is_some()
                    || (keep_local && a.kind == RouteType::LOCAL)
                {
                    v.push((**a).clone());
                    continue;
                }
                if deleted {
                    continue;
                }
                let mut n = (**a).clone();
                for h in n.nexthops.iter_mut() {
                    if h.ifindex == ifindex && h.flags & RTNH_F_DEAD == 0 {
                        h.flags |= RTNH_F_DEAD | RTNH_F_LINKDOWN;
                    }
                }
                if n.nexthops.iter().all(|h| h.flags & RTNH_F_DEAD != 0) || n.nexthops.len() == 1 {
                    continue;
                }
                v.push(n);
            }
            let v: Vec<Arc<Attrs>> = v.into_iter().map(|a| self.routes.intern(a)).collect();
            self.touch_route(&k);
            self.routes.set(k, v);
        }
    }

    /// Recomputes the carrier/admin-driven leg flags of routes through `ifindex`.
    /// Applies the leg flag changes the kernel makes silently on a device event: `dead` set
    /// (`Some(true)`) or cleared (`Some(false)`) on multipath legs, `linkdown` set or cleared on
    /// legs and single-path routes (not `local` ones); `only` limits it to one family (4 or 6).
    fn leg_flags(
        &mut self,
        ifindex: u32,
        dead: Option<bool>,
        linkdown: Option<bool>,
        only: Option<u8>,
    ) {
        let keys = self.routes.keys_where(|k, a| {
            a.uses_dev(ifindex)
                && match only {
                    Some(4) => matches!(k, RKey::V4(_)),
                    Some(_) => matches!(k, RKey::V6(_)),
                    None => true,
                }
        });
        let set = |f: &mut u32, bit: u32, on: Option<bool>| match on {
            Some(true) => *f |= bit,
            Some(false) => *f &= !bit,
            None => {}
        };
        for k in keys {
            let v: Vec<Attrs> = self
                .routes
                .get(&k)
                .iter()
                .map(|a| {
                    let mut n = (**a).clone();
                    if n.kind == RouteType::LOCAL {
                        // local routes never show carrier state
                    } else if n.nexthops.len() == 1 && n.nexthops[0].ifindex == ifindex {
                        set(&mut n.flags, RTNH_F_LINKDOWN, linkdown);
                        if linkdown == Some(false) {
                            // a one-member group's leg carries its own flags
                            n.nexthops[0].flags &= !RTNH_F_LINKDOWN;
                        }
                    } else if n.nexthops.len() > 1 {
                        let v4 = matches!(k, RKey::V4(_));
                        for h in n.nexthops.iter_mut().filter(|h| h.ifindex == ifindex) {
                            // IPv4 leaves legs that are already dead alone when marking
                            // (fib_sync_down_dev counts them, flags nothing).
                            if v4
                                && h.flags & RTNH_F_DEAD != 0
                                && (dead == Some(true) || linkdown == Some(true))
                            {
                                continue;
                            }
                            set(&mut h.flags, RTNH_F_DEAD, dead);
                            set(&mut h.flags, RTNH_F_LINKDOWN, linkdown);
                        }
                        // IPv4 fib_info flags: linkdown when every leg is dead or on the device
                        // losing carrier (fib_sync_down_dev); cleared when a leg comes back.
                        if matches!(k, RKey::V4(_)) {
                            if linkdown == Some(true)
                                && n.nexthops
                                    .iter()
                                    .all(|h| h.ifindex == ifindex || h.flags & RTNH_F_DEAD != 0)
                            {
                                n.flags |= RTNH_F_LINKDOWN;
                            }
                            // fib_sync_up(dev, nh_flags): a leg is alive when it has none of
                            // the bits being cleared (a leg that is only `dead` is alive for a
                            // carrier-up); then only those bits leave the fib_info flags.
                            let mut nh_flags = 0;
                            if dead == Some(false) {
                                nh_flags |= RTNH_F_DEAD;
                            }
                            if linkdown == Some(false) {
                                nh_flags |= RTNH_F_LINKDOWN;
                            }
                            if nh_flags != 0 && n.nexthops.iter().any(|h| h.flags & nh_flags == 0) {
                                n.flags &= !nh_flags;
                            }
                        }
                    }
                    n
                })
                .collect();
            let v: Vec<Arc<Attrs>> = v.into_iter().map(|a| self.routes.intern(a)).collect();
            if v.as_slice() != self.routes.get(&k) {
                self.touch_route(&k);
                self.routes.set(k, v);
            }
        }
    }

    fn del_link(&mut self, ifindex: u32) {
        let Some(l) = self.links.get(&ifindex).cloned() else {
            return;
        };
        self.link_down(ifindex, true);
        for kind in [
            ObjectKind::Address,
            ObjectKind::Neighbour,
            ObjectKind::Fdb,
            ObjectKind::Mdb,
            ObjectKind::Vlan,
        ] {
            self.del_where(kind, |o| {
                o.ifindexes().contains(&ifindex)
                    || matches!(o, Object::Fdb(f) if f.master == ifindex)
                    || matches!(o, Object::Mdb(m) if m.bridge == ifindex)
            });
        }
        self.del_where(
            ObjectKind::Netconf,
            |o| matches!(o, Object::Netconf(n) if n.ifindex == ifindex as i32),
        );
        self.rules_detach(&l.ifname, true);
        self.touch(&ObjectKey::Link { ifindex });
        self.links.remove(&ifindex);
    }

    fn del_address(&mut self, a: Address) {
        let fam = a.family;
        let ifindex = a.ifindex;
        let local = a.local;
        self.del(&Object::Address(a).key());
        if fam == Family::INET {
            let left = self
                .objs
                .values()
                .any(|o| matches!(o, Object::Address(x) if x.family == Family::INET && x.ifindex == ifindex));
            if !left {
                self.want_proxy_dump = true;
                self.v4_dev_down(ifindex, false, false);
            }
        } else if fam == Family::INET6 {
            // The kernel drops a matching prefsrc from IPv6 routes silently.
            let keys = self
                .routes
                .keys_where(|k, x| matches!(k, RKey::V6(_)) && x.prefsrc == Some(local));
            for k in keys {
                let v: Vec<Attrs> = self
                    .routes
                    .get(&k)
                    .iter()
                    .map(|x| {
                        let mut n = (**x).clone();
                        if n.prefsrc == Some(local) {
                            n.prefsrc = None;
                        }
                        n
                    })
                    .collect();
                let v: Vec<Arc<Attrs>> = v.into_iter().map(|a| self.routes.intern(a)).collect();
                self.touch_route(&k);
                self.routes.set(k, v);
            }
        }
    }

    // ---------------------------------------------------------------- routes

    fn new_route(&mut self, r: Route, flags: u16) {
        let k = RKey::of(&r);
        let a = self.routes.intern(Attrs::of(&r));
        let mut v = self.routes.get(&k).to_vec();
        let v4 = matches!(k, RKey::V4(_));
        if v.iter().any(|x| Arc::ptr_eq(x, &a)) && flags & NLM_F_REPLACE == 0 {
            return; // the kernel never holds two identical entries
        }
        if flags & NLM_F_REPLACE != 0 || v.is_empty() {
            if v.is_empty() {
                v.push(a);
            } else if !v4 {
                // IPv6: the route sharing a leg, else the first.
                let i = v.iter().position(|x| shares_leg(x, &a)).unwrap_or(0);
                v[i] = a;
            } else {
                v[0] = a;
            }
        } else if v4 {
            if flags & NLM_F_APPEND != 0 {
                v.push(a);
            } else if flags & NLM_F_CREATE != 0 && flags & NLM_F_EXCL == 0 {
                v.insert(0, a);
            } else {
                v[0] = a;
            }
        } else {
            // IPv6 add/append: the message holds every leg of the (merged) route, the new ones
            // first; the kernel keeps the existing legs first.
            match v.iter().position(|x| shares_leg(x, &a) || same_nhid(x, &a)) {
                Some(i) => {
                    let mut n = (*a).clone();
                    if a.nhid.is_none() && v[i].nexthops.len() > 1
                        || (v[i].nexthops.len() == 1 && a.nexthops.len() > 1)
                    {
                        let old = &v[i].nexthops;
                        let mut legs: Vec<NextHop> = old
                            .iter()
                            .filter_map(|h| {
                                a.nexthops
                                    .iter()
                                    .find(|g| g.gateway == h.gateway && g.ifindex == h.ifindex)
                                    .cloned()
                            })
                            .collect();
                        legs.extend(
                            a.nexthops
                                .iter()
                                .filter(|g| {
                                    !old.iter()
                                        .any(|h| g.gateway == h.gateway && g.ifindex == h.ifindex)
                                })
                                .cloned(),
                        );
                        n.nexthops = legs;
                    }
                    v[i] = self.routes.intern(n);
                }
                None => v.push(a),
            }
        }
        self.touch_route(&k);
        self.routes.set(k, v);
    }

    fn del_route(&mut self, r: Route) {
        let k = RKey::of(&r);
        let d = Attrs::of(&r);
        let mut v = self.routes.get(&k).to_vec();
        if v.is_empty() {
            return;
        }
        if matches!(k, RKey::V4(_)) {
            let i = v
                .iter()
                .position(|x| **x == d)
                .or_else(|| v.iter().position(|x| x.kind == d.kind && x.same_legs(&d)))
                .or_else(|| v.iter().position(|x| x.kind == d.kind))
                .unwrap_or(0);
            v.remove(i);
        } else {
            let i = v
                .iter()
                .position(|x| d.nhid.is_some() && x.nhid == d.nhid)
                .or_else(|| v.iter().position(|x| shares_leg(x, &d)))
                .or_else(|| v.iter().position(|x| x.kind == d.kind));
            let Some(i) = i else { return };
            let mut n = (*v[i]).clone();
            if d.nhid.is_some() || d.nexthops.is_empty() {
                v.remove(i);
            } else {
                n.nexthops.retain(|h| {
                    !d.nexthops
                        .iter()
                        .any(|g| g.gateway == h.gateway && g.ifindex == h.ifindex)
                });
                if n.nexthops.is_empty() {
                    v.remove(i);
                } else {
                    fold_single(&mut n);
                    v[i] = self.routes.intern(n);
                }
            }
        }
        self.touch_route(&k);
        self.routes.set(k, v);
    }

    // ---------------------------------------------------------------- nexthops

    fn nexthop(&self, id: u32) -> Option<&Nexthop> {
        match self.objs.get(&ObjectKey::Nexthop { id }) {
            Some(Object::Nexthop(n)) => Some(n),
            _ => None,
        }
    }

    fn new_nexthop(&mut self, n: Nexthop) {
        let id = n.id;
        self.put(n.into());
        self.reexpand(&[id]);
    }

    /// Re-expands the legs of routes using nexthop `ids` (directly or through a group), when
    /// those routes carry expanded legs (nexthop_compat_mode=1).
    fn reexpand(&mut self, ids: &[u32]) {
        let groups: BTreeSet<u32> = self
            .objs
            .values()
            .filter_map(|o| match o {
                Object::Nexthop(g) if g.group.iter().any(|m| ids.contains(&m.id)) => Some(g.id),
                _ => None,
            })
            .chain(ids.iter().copied())
            .collect();
        let keys = self
            .routes
            .keys_where(|_, a| a.nhid.is_some_and(|i| groups.contains(&i)));
        for k in keys {
            let v: Vec<Attrs> = self
                .routes
                .get(&k)
                .iter()
                .map(|a| {
                    let mut n = (**a).clone();
                    if let Some(id) = n.nhid.filter(|i| groups.contains(i)) {
                        if !n.nexthops.is_empty() {
                            if let Some((legs, fl)) = self.expand(id) {
                                n.nexthops = legs;
                                if n.nexthops.len() == 1 {
                                    n.flags = (n.flags & !0xff) | fl;
                                }
                            }
                        }
                    }
                    n
                })
                .collect();
            let v: Vec<Arc<Attrs>> = v.into_iter().map(|a| self.routes.intern(a)).collect();
            if v.as_slice() != self.routes.get(&k) {
                self.touch_route(&k);
                self.routes.set(k, v);
            }
        }
    }

    /// The legs a route using nexthop `id` shows, and the route flags for a single leg.
    fn expand(&self, id: u32) -> Option<(Vec<NextHop>, u32)> {
        let n = self.nexthop(id)?;
        let leg = |n: &Nexthop, weight: u16| NextHop {
            gateway: n.gateway,
            ifindex: n.ifindex,
            dev: RString::new(),
            weight,
            flags: n.flags & 0xff,
            encap: n.encap.clone(),
        };
        if n.is_group() {
            let legs: Vec<NextHop> = n
                .group
                .iter()
                .filter_map(|m| self.nexthop(m.id).map(|x| leg(x, m.weight)))
                .collect();
            Some((legs, 0))
        } else {
            let mut l = leg(n, 1);
            let fl = l.flags;
            l.flags = 0;
            Some((vec![l], fl))
        }
    }

    /// Removes nexthops `ids`, shrinking groups (dropping emptied ones) and removing the routes
    /// that used a removed nexthop.
    fn del_nexthops(&mut self, ids: &[u32]) {
        let mut gone: BTreeSet<u32> = ids.iter().copied().collect();
        for id in ids {
            self.del(&ObjectKey::Nexthop { id: *id });
        }
        let mut shrunk = Vec::new();
        loop {
            let groups: Vec<Nexthop> = self
                .objs
                .values()
                .filter_map(|o| match o {
                    Object::Nexthop(g) if g.group.iter().any(|m| gone.contains(&m.id)) => {
                        Some(g.clone())
                    }
                    _ => None,
                })
                .collect();
            if groups.is_empty() {
                break;
            }
            for mut g in groups {
                g.group = g
                    .group
                    .iter()
                    .filter(|m| !gone.contains(&m.id))
                    .copied()
                    .collect();
                if g.group.is_empty() {
                    gone.insert(g.id);
                    self.del(&ObjectKey::Nexthop { id: g.id });
                } else {
                    shrunk.push(g.id);
                    self.put(g.into());
                }
            }
        }
        let keys = self
            .routes
            .keys_where(|_, a| a.nhid.is_some_and(|i| gone.contains(&i)));
        for k in keys {
            let v: Vec<Arc<Attrs>> = self
                .routes
                .get(&k)
                .iter()
                .filter(|a| !a.nhid.is_some_and(|i| gone.contains(&i)))
                .cloned()
                .collect();
            self.touch_route(&k);
            self.routes.set(k, v);
        }
        self.reexpand(&shrunk);
    }

    fn drop_nexthops_on(&mut self, ifindex: u32) {
        let ids: Vec<u32> = self
            .objs
            .values()
            .filter_map(|o| match o {
                Object::Nexthop(n) if n.ifindex == ifindex && !n.is_group() => Some(n.id),
                _ => None,
            })
            .collect();
        if !ids.is_empty() {
            self.del_nexthops(&ids);
        }
    }

    // ---------------------------------------------------------------- reconcile (resync)

    /// Makes the state equal to `snap` for the kinds it covers (mark and sweep), touching only
    /// what differs.
    pub fn reconcile(&mut self, snap: Snapshot) {
        let Snapshot {
            kinds,
            proxies_only,
            partial,
            links,
            objs,
            routes,
        } = snap;
        if kinds.contains(&ObjectKind::Link) {
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
            kinds.contains(&k.kind())
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

/// A multipath route left with one leg is a single-path route: the kernel then reports the leg's
/// flags in the route header and no weight.
fn fold_single(n: &mut Attrs) {
    if n.nhid.is_none() && n.nexthops.len() == 1 {
        let h = &mut n.nexthops[0];
        n.flags |= h.flags & 0xff;
        h.flags = 0;
        h.weight = 1;
    }
}

fn shares_leg(a: &Attrs, b: &Attrs) -> bool {
    a.nexthops.iter().any(|h| {
        b.nexthops
            .iter()
            .any(|g| g.gateway == h.gateway && g.ifindex == h.ifindex)
    }) && (a.nexthops.iter().any(|h| h.gateway.is_some()) || a.nexthops.len() == b.nexthops.len())
}

fn same_nhid(a: &Attrs, b: &Attrs) -> bool {
    a.nhid.is_some() && a.nhid == b.nhid
}

#[cfg(test)]
mod tests {
    //! The state machine alone, fed with events as the source decodes them.
    use super::*;
    use ekho_plugin_api::abi_stable::std_types::ROption;

    const CREATE: u16 = NLM_F_CREATE;

    fn link(ifindex: u32, name: &str, up: bool) -> Link {
        Link {
            ifindex,
            ifname: name.into(),
            flags: if up { IFF_UP | IFF_LOWER_UP } else { 0 },
            link_netnsid: -1,
            ..Default::default()
        }
    }

    fn route(dst: &str, gw: &str, dev: u32) -> Route {
        Route::unicast(
            dst.parse().unwrap(),
            vec![NextHop::via(gw.parse().unwrap(), dev)],
        )
    }

    fn state() -> State {
        let mut s = State {
            tracking: true,
            ..Default::default()
        };
        s.apply(Event::NewLink(link(2, "a", true)));
        s.apply(Event::NewLink(link(3, "b", true)));
        s.flush();
        s
    }

    fn gws(s: &State, dst: &str) -> Vec<String> {
        let rk = RKey::of(&route(dst, "10.0.0.1", 2));
        s.routes
            .get(&rk)
            .iter()
            .map(|a| a.nexthops[0].gateway.unwrap().to_string())
            .collect()
    }

    #[test]
    fn ipv4_alias_order_follows_replace_append_prepend() {
        let mut s = state();
        s.apply(Event::NewRoute(
            route("10.9.0.0/24", "10.0.0.1", 2),
            CREATE | NLM_F_EXCL,
        ));
        s.apply(Event::NewRoute(
            route("10.9.0.0/24", "10.0.0.2", 2),
            CREATE | NLM_F_APPEND,
        ));
        s.apply(Event::NewRoute(route("10.9.0.0/24", "10.0.0.3", 2), CREATE));
        assert_eq!(gws(&s, "10.9.0.0/24"), ["10.0.0.3", "10.0.0.1", "10.0.0.2"]);
        s.apply(Event::NewRoute(
            route("10.9.0.0/24", "10.0.0.4", 2),
            NLM_F_REPLACE,
        ));
        assert_eq!(gws(&s, "10.9.0.0/24"), ["10.0.0.4", "10.0.0.1", "10.0.0.2"]);
        s.apply(Event::DelRoute(route("10.9.0.0/24", "10.0.0.1", 2)));
        assert_eq!(gws(&s, "10.9.0.0/24"), ["10.0.0.4", "10.0.0.2"]);
        // Listeners see the entry in effect: one Add, of the head.
        let c = s.flush();
        assert_eq!(c.len(), 1);
        assert!(
            matches!(&c[0], Change::Add(Object::Route(r)) if r.nexthops[0].gateway.unwrap().to_string() == "10.0.0.4")
        );
    }

    #[test]
    fn link_down_flushes_ipv4_routes_silently_and_in_reverse_order() {
        let mut s = state();
        s.apply(Event::NewRoute(
            route("10.9.0.0/24", "10.0.0.1", 2),
            CREATE | NLM_F_EXCL,
        ));
        s.apply(Event::NewRoute(
            route("10.8.0.0/24", "10.0.0.1", 3),
            CREATE | NLM_F_EXCL,
        ));
        s.flush();
        s.apply(Event::NewLink(link(2, "a", false)));
        let c = s.flush();
        let ops: Vec<(&str, ObjectKind)> = c.iter().map(|c| (c.op(), c.kind())).collect();
        assert_eq!(
            ops,
            // Batch order: the route through the link goes before the link's update.
            [("remove", ObjectKind::Route), ("update", ObjectKind::Link)]
        );
        assert!(gws(&s, "10.8.0.0/24").len() == 1);
    }

    #[test]
    fn nexthop_delete_shrinks_groups_and_drops_routes() {
        let mut s = state();
        let nh = |id, dev| Nexthop {
            id,
            family: Family::INET,
            gateway: ROption::RSome("10.0.0.1".parse().unwrap()),
            ifindex: dev,
            dev: RString::new(),
            blackhole: false,
            fdb: false,
            flags: 0,
            protocol: Protocol::UNSPEC,
            scope: Scope::LINK,
            group: Default::default(),
            group_type: 0,
            encap: ROption::RNone,
        };
        s.apply(Event::NewNexthop(nh(1, 2)));
        s.apply(Event::NewNexthop(nh(2, 3)));
        let mut g = nh(10, 0);
        g.gateway = ROption::RNone;
        g.group = vec![
            GroupMember { id: 1, weight: 1 },
            GroupMember { id: 2, weight: 1 },
        ]
        .into();
        s.apply(Event::NewNexthop(g));
        let mut r = route("10.7.0.0/24", "10.0.0.1", 2);
        r.nhid = ROption::RSome(1);
        s.apply(Event::NewRoute(r, CREATE | NLM_F_EXCL));
        s.flush();
        // Device 2 loses carrier: nexthop 1 goes silently, the group shrinks, the route goes.
        let mut l = link(2, "a", true);
        l.flags = IFF_UP;
        s.apply(Event::NewLink(l));
        let c = s.flush();
        let ops: Vec<String> = c
            .iter()
            .map(|c| format!("{} {}", c.op(), order::dependency_rank(c.object())))
            .collect();
        // The route (through the group) goes first, the member nexthop after the group's update.
        assert_eq!(
            ops,
            ["remove 16", "update 0", "update 9", "remove 8"],
            "{c:?}"
        );
    }

    #[test]
    fn netconf_partial_notifications_merge() {
        let mut s = state();
        let nc = |fwd: Option<i32>, rp: Option<i32>| Netconf {
            family: Family::INET,
            ifindex: 2,
            dev: RString::new(),
            forwarding: fwd.into(),
            rp_filter: rp.into(),
            mc_forwarding: ROption::RNone,
            proxy_neigh: ROption::RNone,
            ignore_routes_with_linkdown: ROption::RNone,
            input: ROption::RNone,
        };
        s.apply(Event::NewNetconf(nc(Some(0), Some(0))));
        s.apply(Event::NewNetconf(nc(Some(1), None)));
        match s.get(&ObjectKey::Netconf {
            family: Family::INET,
            ifindex: 2,
        }) {
            Some(Object::Netconf(n)) => {
                assert_eq!(
                    (n.forwarding, n.rp_filter),
                    (ROption::RSome(1), ROption::RSome(0))
                );
                assert_eq!(n.dev.as_str(), "a");
            }
            o => panic!("{o:?}"),
        }
    }

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
}
