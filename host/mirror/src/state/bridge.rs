//! Bridge and VXLAN events: FDB entries (a VXLAN unicast MAC has one remote), MDB entries, port
//! VLANs (one pvid per port). Their removal with a port or device is in `links`.

use super::State;
use crate::netlink::neighbour::fdb_is_dev_addr_list;
use ekho_plugin_api::object::*;

impl State {
    /// An FDB entry appeared or changed (a device's own address-list rows are not objects).
    pub(super) fn new_fdb(&mut self, f: FdbEntry) {
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

    /// An FDB entry is gone.
    pub(super) fn del_fdb(&mut self, f: FdbEntry) {
        self.del(&Object::Fdb(f).key())
    }

    /// A bridge's `mcast_snooping` option as announced. Toggling it removes (off) or re-creates
    /// (on) the bridge's host-joined entries (port = the bridge) without `RTM_DELMDB` or
    /// `RTM_NEWMDB` (Debian's 6.1, docs/netlink-gaps.md section 8): which groups the bridge has
    /// joined is not mirrored, so the MDB is re-dumped.
    pub(super) fn bridge_snooping(&mut self, ifindex: u32, on: bool) {
        if self
            .bridge_snooping
            .insert(ifindex, on)
            .is_some_and(|was| was != on)
        {
            self.want_redump.insert(ObjectKind::Mdb);
        }
    }

    /// MDB entries appeared or changed.
    pub(super) fn new_mdb(&mut self, v: Vec<MdbEntry>) {
        for m in v {
            self.put(m.into())
        }
    }

    /// MDB entries are gone.
    pub(super) fn del_mdb(&mut self, v: Vec<MdbEntry>) {
        for m in v {
            self.del(&Object::Mdb(m).key())
        }
    }

    /// Port VLANs appeared or changed. A port (or the bridge) has one pvid: a VLAN announced as
    /// pvid takes the flag from the port's previous pvid VLAN, which gets no message
    /// (docs/netlink-gaps.md section 14).
    pub(super) fn new_vlan(&mut self, v: Vec<BridgeVlan>) {
        for x in v {
            if x.pvid {
                let old: Vec<BridgeVlan> = self
                    .objs
                    .values()
                    .filter_map(|o| match o {
                        Object::Vlan(y) if y.ifindex == x.ifindex && y.pvid && y.vid != x.vid => {
                            Some(y.clone())
                        }
                        _ => None,
                    })
                    .collect();
                for mut y in old {
                    y.pvid = false;
                    self.put(y.into());
                }
            }
            self.put(x.into())
        }
    }

    /// Port VLANs are gone.
    pub(super) fn del_vlan(&mut self, v: Vec<BridgeVlan>) {
        for x in v {
            self.del(&Object::Vlan(x).key())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::Event;
    use ekho_plugin_api::object::*;

    fn vlan(ifindex: u32, vid: u16, pvid: bool) -> BridgeVlan {
        BridgeVlan {
            ifindex,
            dev: Default::default(),
            vid,
            pvid,
            untagged: pvid,
        }
    }

    #[test]
    fn a_new_pvid_takes_the_flag_from_the_old_one() {
        let mut s = state();
        s.apply(Event::NewVlan(vec![vlan(2, 1, true), vlan(3, 1, true)]));
        s.apply(Event::NewVlan(vec![vlan(2, 12, true)]));
        let got = |s: &super::State, i: u32, vid: u16| {
            s.objs.values().find_map(|o| match o {
                Object::Vlan(v) if v.ifindex == i && v.vid == vid => Some((v.pvid, v.untagged)),
                _ => None,
            })
        };
        // Port 2: vid 1 keeps untagged, loses pvid; port 3 untouched.
        assert_eq!(got(&s, 2, 1), Some((false, true)));
        assert_eq!(got(&s, 2, 12), Some((true, true)));
        assert_eq!(got(&s, 3, 1), Some((true, true)));
    }

    #[test]
    fn a_snooping_toggle_asks_for_an_mdb_redump() {
        let mut s = state();
        let mut br = link(4, "br0", true);
        br.kind = "bridge".into();
        s.apply(Event::NewBridge(br.clone(), true));
        s.apply(Event::NewBridge(br.clone(), true));
        assert!(
            s.want_redump.is_empty(),
            "first sight or no change: nothing to re-dump"
        );
        s.apply(Event::NewBridge(br.clone(), false));
        assert_eq!(std::mem::take(&mut s.want_redump), [ObjectKind::Mdb].into());
        s.apply(Event::NewBridge(br, true));
        assert_eq!(s.want_redump, [ObjectKind::Mdb].into());
    }
}
