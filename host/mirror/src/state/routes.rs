//! Route events (IPv4 alias order on replace/append/prepend, IPv6 multipath appends and partial
//! deletes), routes as the kernel shows them (`dead` rendered from netconf), and the route
//! changes other families' events imply (legs on device down/up, routes through a device gone).

use super::{Installed, State};
use crate::routes::{Attrs, RKey, Routes};
use ekho_plugin_api::object::route::device_discriminator;
use ekho_plugin_api::object::route::{RTNH_F_DEAD, RTNH_F_LINKDOWN};
use ekho_plugin_api::object::*;
use std::sync::Arc;

pub(super) const NLM_F_REPLACE: u16 = 0x100;
pub(super) const NLM_F_EXCL: u16 = 0x200;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;

impl State {
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

    /// [`State::route_objects_of`] as named objects, built in place (one vector, sized once:
    /// what a batch's diff holds per touched route key).
    pub(super) fn named_route_objects_of(&self, rk: &RKey, aliases: &[Arc<Attrs>]) -> Vec<Object> {
        let mut out: Vec<Object> = Vec::with_capacity(aliases.len());
        for a in aliases {
            let r = self.render(rk, a);
            let d = device_discriminator(&r);
            let seen = out
                .iter()
                .any(|x| matches!(x, Object::Route(x) if device_discriminator(x) == d));
            if !seen {
                // Named where it is stored (one move of the object fewer).
                out.push(Object::Route(r));
                self.name(out.last_mut().expect("just pushed"));
            }
        }
        out
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

    /// IPv4 routes through `ifindex` after it went down or was deleted: single-device routes are
    /// flushed (all tables; `local` routes stay on admin down), multipath legs die (deleted:
    /// the whole route goes).
    pub(super) fn v4_dev_down(&mut self, ifindex: u32, deleted: bool, keep_local: bool) {
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
    pub(super) fn leg_flags(
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

    pub(super) fn new_route(&mut self, r: Route, flags: u16) {
        let k = RKey::of(&r);
        let a = self.routes.intern_route(&r);
        let mut v = self.routes.get(&k).to_vec();
        let v4 = matches!(k, RKey::V4(_));
        if v.iter().any(|x| Arc::ptr_eq(x, &a)) && flags & NLM_F_REPLACE == 0 {
            return; // the kernel never holds two identical entries
        }
        self.touch_route_of(&k, &v);
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
        self.routes.set(k, v);
    }

    pub(super) fn del_route(&mut self, r: Route) {
        let k = RKey::of(&r);
        let d = Attrs::of(&r);
        let mut v = self.routes.get(&k).to_vec();
        if v.is_empty() {
            return;
        }
        if matches!(k, RKey::V4(_)) {
            self.touch_route_of(&k, &v);
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
            self.touch_route_of(&k, &v);
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
        self.routes.set(k, v);
    }
}

/// A multipath route left with one leg is a single-path route: the kernel then reports the leg's
/// flags in the route header and no weight.
pub(super) fn fold_single(n: &mut Attrs) {
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
    use super::*;
    use crate::state::tests::*;
    use crate::Event;
    use ekho_plugin_api::Change;

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
}
