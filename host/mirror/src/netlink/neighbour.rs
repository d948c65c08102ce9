//! Neighbours and bridge/VXLAN FDB entries (`RTM_NEWNEIGH`/`RTM_DELNEIGH`, one message type for
//! both: `AF_BRIDGE` ones are FDB entries), decoded by netlink-packet-route except `NDA_DST` of
//! `AF_BRIDGE` messages, which it leaves raw.

use super::bytes_ip;
use crate::Event;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::neighbour::{ntf, nud};
use ekho_plugin_api::object::*;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};

/// Converts a neighbour message: IPv4/IPv6 neighbours, or bridge FDB entries (`AF_BRIDGE`).
pub fn convert(msg: &NeighbourMessage, del: bool) -> Event {
    let h = &msg.header;
    let family = Family(u8::from(h.family));
    let flags = h.flags.bits();
    let state = u16::from(h.state);
    let mut dst = None;
    let mut lladdr = LinkAddr::default();
    let mut master = 0;
    let mut vlan = 0;
    let mut vni = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => dst = Some((*v).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => dst = Some((*v).into()),
            // AF_BRIDGE messages (VXLAN remotes): netlink-packet-route leaves NDA_DST raw.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => dst = bytes_ip(b),
            NeighbourAttribute::LinkLayerAddress(b) => lladdr = LinkAddr::new(b),
            NeighbourAttribute::Controller(m) => master = *m,
            NeighbourAttribute::Vlan(v) => vlan = *v,
            NeighbourAttribute::Vni(v) => vni = Some(*v),
            _ => {}
        }
    }
    if family == Family::BRIDGE {
        let f = FdbEntry {
            ifindex: h.ifindex,
            dev: RString::new(),
            master,
            master_name: RString::new(),
            mac: lladdr,
            vlan,
            dst: dst.into(),
            vni: vni.into(),
            state,
            flags,
        };
        return if del {
            Event::DelFdb(f)
        } else {
            Event::NewFdb(f)
        };
    }
    if family != Family::INET && family != Family::INET6 {
        return Event::Ignored;
    }
    let Some(dst) = dst else {
        return Event::Ignored;
    };
    if neighbour_is_unannounced_map(&dst, h.ifindex == LOOPBACK_IFINDEX, state) {
        return Event::Ignored;
    }
    let n = Neighbour {
        family,
        ifindex: h.ifindex,
        dev: RString::new(),
        dst,
        lladdr,
        state,
        flags: flags & !ntf::PROXY,
        proxy: flags & ntf::PROXY != 0,
    };
    if del {
        Event::DelNeighbour(n)
    } else {
        Event::NewNeighbour(n)
    }
}

/// The loopback device's index, the same in every network namespace (`LOOPBACK_IFINDEX`).
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Whether a neighbour entry is a fixed mapping the kernel creates on transmit without any
/// notification (state `NOARP`): of a multicast/broadcast address on any device, or of any
/// address on the loopback device (`0.0.0.0 dev lo lladdr 00:00:00:00:00:00 NOARP`, seen on
/// Debian's 6.1, docs/netlink-gaps.md section 7). They carry nothing an offload needs (the MAC
/// derives from the address, or there is none). Not mirrored.
pub fn neighbour_is_unannounced_map(dst: &IpAddress, on_loopback: bool, state: u16) -> bool {
    let mc = match dst {
        IpAddress::V4(b) => b[0] & 0xf0 == 0xe0 || *b == [255, 255, 255, 255],
        IpAddress::V6(b) => b[0] == 0xff,
    };
    (mc || on_loopback) && state == nud::NOARP
}

/// Whether an FDB entry is a row of a device's unicast/multicast address list (`self permanent`
/// rows without a remote or master): those are not objects and change without notification.
pub fn fdb_is_dev_addr_list(f: &FdbEntry) -> bool {
    f.flags & ntf::SELF != 0
        && f.state & nud::PERMANENT != 0
        && f.dst.is_none()
        && f.master == 0
        && f.vni.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::tests::one;

    #[test]
    fn permanent_neighbour() {
        let Event::NewNeighbour(n) = one("4c0000001c0002000100000051670000020000000300000080000001080001000a0100020a00020002000000000200000800040000000000140003001f0000001f0000001f00000000000000")
        else {
            panic!()
        };
        assert_eq!(n.dst, "10.1.0.2".parse().unwrap());
        assert_eq!(n.lladdr.to_string(), "02:00:00:00:00:02");
        assert_eq!((n.state, n.ifindex, n.proxy), (nud::PERMANENT, 3, false));
    }

    #[test]
    fn unannounced_noarp_maps() {
        let st = nud::NOARP;
        let v4 = |s: &str| -> IpAddress { s.parse().unwrap() };
        assert!(neighbour_is_unannounced_map(&v4("0.0.0.0"), true, st));
        assert!(neighbour_is_unannounced_map(&v4("224.0.0.22"), false, st));
        assert!(neighbour_is_unannounced_map(&v4("ff02::16"), false, st));
        assert!(!neighbour_is_unannounced_map(&v4("10.0.0.1"), false, st));
        assert!(!neighbour_is_unannounced_map(
            &v4("10.0.0.1"),
            true,
            nud::PERMANENT
        ));
    }
}
