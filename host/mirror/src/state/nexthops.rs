//! Nexthop events and what they change without telling: groups shrink and emptied groups go with
//! their members, routes through removed nexthops go, legs of routes through groups re-expand.

use super::State;
use crate::routes::Attrs;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::*;
use std::collections::BTreeSet;
use std::sync::Arc;

impl State {
    fn nexthop(&self, id: u32) -> Option<&Nexthop> {
        match self.objs.get(&ObjectKey::Nexthop { id }) {
            Some(Object::Nexthop(n)) => Some(n),
            _ => None,
        }
    }

    pub(super) fn new_nexthop(&mut self, n: Nexthop) {
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
    pub(super) fn del_nexthops(&mut self, ids: &[u32]) {
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

    pub(super) fn drop_nexthops_on(&mut self, ifindex: u32) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::routes::NLM_F_EXCL;
    use crate::state::tests::*;
    use crate::Event;
    use ekho_plugin_api::abi_stable::std_types::ROption;
    use ekho_plugin_api::object::link::IFF_UP;
    use ekho_plugin_api::order;

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
}
