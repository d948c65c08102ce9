//! Address events and what they change without telling: dead IPv4 legs revived by a new address,
//! IPv4 routes through a device that lost its last IPv4 address, IPv6 `prefsrc` of a deleted
//! address.

use super::State;
use crate::routes::{Attrs, RKey};
use ekho_plugin_api::object::link::{IFF_LOWER_UP, IFF_UP};
use ekho_plugin_api::object::*;
use std::sync::Arc;

impl State {
    /// An address appeared or changed.
    pub(super) fn new_address(&mut self, a: Address) {
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

    /// An address is gone.
    pub(super) fn del_address(&mut self, a: Address) {
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
}
