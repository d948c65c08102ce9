//! Netconf events: partial messages merged into what is held; a change of
//! `ignore_routes_with_linkdown` changes how routes render (see `routes`).

use super::State;
use ekho_plugin_api::object::*;

impl State {
    /// A device's netconf changed: a partial message (only the changed attributes) is merged
    /// into what is held.
    pub(super) fn new_netconf(&mut self, n: Netconf) {
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

    /// The netconf of (family, ifindex) is gone.
    pub(super) fn del_netconf(&mut self, family: Family, ifindex: i32) {
        self.del(&ObjectKey::Netconf { family, ifindex })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::*;
    use crate::Event;
    use ekho_plugin_api::abi_stable::std_types::{ROption, RString};

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
}
