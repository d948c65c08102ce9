//! Link events and what they change without telling: IPv4 routes and nexthops through a device
//! that goes down or away, leg flags on carrier changes, rules naming the device, veth peers.

use super::routes::fold_single;
use super::State;
use crate::routes::{Attrs, RKey};
use ekho_plugin_api::object::link::{IFF_LOWER_UP, IFF_UP};
use ekho_plugin_api::object::*;
use std::sync::Arc;

impl State {
    pub(super) fn new_link(&mut self, l: Link) {
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
        // A device's first `up` attaches its default root qdisc, unannounced
        // (docs/netlink-gaps.md section 15).
        if up && (old.is_none() || !was_up) {
            self.tc.link_up(l.ifindex);
            self.tc.dirty.all = true;
        }
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
        if let Some(o) = &old {
            if o.master != l.master && (self.is_l3_master(o.master) || self.is_l3_master(l.master))
            {
                // Linked to or unlinked from a VRF: the kernel flushes every IPv4 route through
                // the device, `local` ones too, without RTM_DELROUTE (fib_netdev_event,
                // NETDEV_CHANGEUPPER -> fib_disable_ip(force)); the VRF then cycles the device
                // and the new local routes are announced in its table.
                self.v4_dev_down(l.ifindex, false, false);
            }
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

    /// Whether `ifindex` is an L3 master device (a VRF).
    fn is_l3_master(&self, ifindex: u32) -> bool {
        ifindex != 0
            && self
                .links
                .get(&ifindex)
                .is_some_and(|m| m.kind.as_str() == "vrf")
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

    pub(super) fn del_link(&mut self, ifindex: u32) {
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
        self.bridge_snooping.remove(&ifindex);
        self.tc.del_dev(ifindex);
        self.tc.dirty.all = true;
        self.touch(&ObjectKey::Link { ifindex });
        self.links.remove(&ifindex);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::routes::NLM_F_EXCL;
    use crate::state::tests::*;
    use crate::Event;

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
    fn vrf_enslave_and_release_flush_ipv4_routes_local_ones_too() {
        let mut s = state();
        let mut vrf = link(5, "vrf1", true);
        vrf.kind = "vrf".into();
        s.apply(Event::NewLink(vrf));
        let mut local = route("10.0.0.2/32", "0.0.0.0", 2);
        local.kind = RouteType::LOCAL;
        local.table = 255;
        local.nexthops[0].gateway = ekho_plugin_api::prelude::ROption::RNone;
        s.apply(Event::NewRoute(local.clone(), CREATE | NLM_F_EXCL));
        s.apply(Event::NewRoute(
            route("10.9.0.0/24", "10.0.0.1", 3),
            CREATE | NLM_F_EXCL,
        ));
        s.flush();
        let count = |s: &State| s.routes.keys_where(|_, a| a.uses_dev(2)).len();
        assert_eq!(count(&s), 1);
        // An admin down keeps the local route.
        s.apply(Event::NewLink(link(2, "a", false)));
        s.apply(Event::NewLink(link(2, "a", true)));
        assert_eq!(count(&s), 1);
        // Enslaving to the VRF flushes it, silently in the kernel.
        let mut enslaved = link(2, "a", true);
        enslaved.master = 5;
        s.apply(Event::NewLink(enslaved.clone()));
        assert_eq!(count(&s), 0);
        // So does the release of a route added meanwhile (in the VRF's table).
        local.table = 10;
        s.apply(Event::NewRoute(local, CREATE | NLM_F_EXCL));
        assert_eq!(count(&s), 1);
        s.apply(Event::NewLink(link(2, "a", true)));
        assert_eq!(count(&s), 0);
        // Routes through other devices stay.
        assert_eq!(gws(&s, "10.9.0.0/24").len(), 1);
    }
}
