//! Links (`RTM_NEWLINK`/`RTM_DELLINK`), decoded by netlink-packet-route.

use ekho_plugin_api::object::*;
use netlink_packet_route::link::{InfoBridge, InfoData, LinkAttribute, LinkInfo, LinkMessage};

/// A bridge's `mcast_snooping` option (`IFLA_BR_MCAST_SNOOPING`), for a bridge's link message.
pub fn mcast_snooping(msg: &LinkMessage) -> Option<bool> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Bridge(opts)) => opts.iter().find_map(|o| match o {
                InfoBridge::MulticastSnooping(s) => Some(*s),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// Converts a link message (family `AF_UNSPEC`). Returns `None` for `AF_BRIDGE` port messages.
pub fn convert(msg: &LinkMessage) -> Option<Link> {
    let fam = u8::from(msg.header.interface_family);
    if fam != 0 {
        return None;
    }
    let mut l = Link {
        ifindex: msg.header.index,
        flags: msg.header.flags.bits(),
        link_type: u16::from(msg.header.link_layer_type),
        link_netnsid: -1,
        ..Default::default()
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(s) => l.ifname = s.as_str().into(),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::OperState(s) => l.operstate = u8::from(*s),
            LinkAttribute::Address(b) => l.address = LinkAddr::new(b),
            LinkAttribute::Broadcast(b) => l.broadcast = LinkAddr::new(b),
            LinkAttribute::Controller(m) => l.master = *m,
            LinkAttribute::Link(x) => l.link = *x,
            LinkAttribute::LinkNetNsId(n) => l.link_netnsid = *n,
            LinkAttribute::IfAlias(s) => l.ifalias = s.as_str().into(),
            LinkAttribute::Qdisc(s) => l.qdisc = s.as_str().into(),
            LinkAttribute::TxQueueLen(q) => l.txqlen = *q,
            LinkAttribute::Group(g) => l.group = *g,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = k.to_string().into(),
                        LinkInfo::PortKind(k) => l.slave_kind = k.to_string().into(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(l)
}
