//! Bridge and VXLAN events: FDB entries (a VXLAN unicast MAC has one remote), MDB entries, port
//! VLANs. Their removal with a port or device is in `links`.

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

    /// Port VLANs appeared or changed.
    pub(super) fn new_vlan(&mut self, v: Vec<BridgeVlan>) {
        for x in v {
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
