//! Conversion of rtnetlink messages into plugin-api objects.
//!
//! Links, addresses, routes, neighbours/FDB and rules are decoded by `netlink-packet-route`.
//! netlink-packet-route 0.34 has no types for nexthop objects (`RTM_*NEXTHOP`), netconf
//! (`RTM_*NETCONF`) and MDB (`RTM_*MDB`): for those the payload is walked here minimally with
//! netlink-packet-core's [`NlasIterator`] over the fixed kernel header structs (`nhmsg`,
//! `netconfmsg`, `br_port_msg`/`br_mdb_entry`).

use ekho_plugin_api::abi_stable::std_types::{ROption, RString, RVec};
use ekho_plugin_api::object::neighbour::{ntf, nud};
use ekho_plugin_api::object::*;
use netlink_packet_core::{NetlinkHeader, NlaBuffer, NlasIterator, NLA_TYPE_MASK};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteLwTunnelEncap, RouteMessage, RouteMetric as NlMetric,
    RouteNextHop, RoutePreference, RouteVia,
};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use std::net::IpAddr;

/// `RTM_*` message types not known to netlink-packet-route.
pub mod rtm {
    /// RTM_NEWNETCONF
    pub const NEWNETCONF: u16 = 80;
    /// RTM_DELNETCONF
    pub const DELNETCONF: u16 = 81;
    /// RTM_GETNETCONF
    pub const GETNETCONF: u16 = 82;
    /// RTM_NEWMDB
    pub const NEWMDB: u16 = 84;
    /// RTM_DELMDB
    pub const DELMDB: u16 = 85;
    /// RTM_GETMDB (also the type of MDB dump replies)
    pub const GETMDB: u16 = 86;
    /// RTM_NEWNEXTHOP
    pub const NEWNEXTHOP: u16 = 104;
    /// RTM_DELNEXTHOP
    pub const DELNEXTHOP: u16 = 105;
    /// RTM_GETNEXTHOP
    pub const GETNEXTHOP: u16 = 106;
    /// RTM_NEWVLAN
    pub const NEWVLAN: u16 = 112;
    /// RTM_DELVLAN
    pub const DELVLAN: u16 = 113;
    /// RTM_GETVLAN
    pub const GETVLAN: u16 = 114;
}

/// A decoded kernel message, as the mirror applies it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A link appeared or changed (full state).
    NewLink(Link),
    /// A link is gone.
    DelLink(Link),
    /// An address appeared or changed.
    NewAddress(Address),
    /// An address is gone.
    DelAddress(Address),
    /// A route and the `nlmsg_flags` of its message (`NLM_F_REPLACE`, `NLM_F_APPEND`, ...).
    NewRoute(Route, u16),
    /// A route (or, for IPv6 multipath, some of its legs) is gone.
    DelRoute(Route),
    /// An IPv4/IPv6 neighbour appeared or changed.
    NewNeighbour(Neighbour),
    /// A neighbour is gone.
    DelNeighbour(Neighbour),
    /// A bridge/VXLAN FDB entry appeared or changed.
    NewFdb(FdbEntry),
    /// An FDB entry is gone.
    DelFdb(FdbEntry),
    /// A nexthop object or group appeared or changed.
    NewNexthop(Nexthop),
    /// A nexthop object is gone (by id).
    DelNexthop(u32),
    /// A rule appeared.
    NewRule(Rule),
    /// A rule is gone.
    DelRule(Rule),
    /// Netconf of a device (possibly partial: only changed attributes).
    NewNetconf(Netconf),
    /// Netconf of (family, ifindex) is gone.
    DelNetconf(Family, i32),
    /// MDB entries appeared or changed.
    NewMdb(Vec<MdbEntry>),
    /// MDB entries are gone.
    DelMdb(Vec<MdbEntry>),
    /// Bridge VLAN entries appeared or changed.
    NewVlan(Vec<BridgeVlan>),
    /// Bridge VLAN entries are gone.
    DelVlan(Vec<BridgeVlan>),
    /// A message the mirror does not use (bridge port link messages, unknown types...).
    Ignored,
}

fn ip(a: IpAddr) -> IpAddress {
    a.into()
}

fn route_addr(a: &RouteAddress) -> Option<IpAddress> {
    match a {
        RouteAddress::Inet(v) => Some((*v).into()),
        RouteAddress::Inet6(v) => Some((*v).into()),
        _ => None,
    }
}

fn bytes_ip(b: &[u8]) -> Option<IpAddress> {
    match b.len() {
        4 => Some(IpAddress::V4(b.try_into().ok()?)),
        16 => Some(IpAddress::V6(b.try_into().ok()?)),
        _ => None,
    }
}

fn zero_addr(family: Family) -> IpAddress {
    if family == Family::INET6 {
        IpAddress::V6([0; 16])
    } else {
        IpAddress::V4([0; 4])
    }
}

/// Converts a link message (family `AF_UNSPEC`). Returns `None` for `AF_BRIDGE` port messages.
pub fn link(msg: &LinkMessage) -> Option<Link> {
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

/// Converts an address message.
pub fn address(msg: &AddressMessage) -> Option<Address> {
    let family = Family(u8::from(msg.header.family));
    let mut local = None;
    let mut addr = None;
    let mut a = Address {
        family,
        ifindex: msg.header.index,
        dev: RString::new(),
        local: zero_addr(family),
        prefixlen: msg.header.prefix_len,
        peer: ROption::RNone,
        broadcast: ROption::RNone,
        scope: Scope(u8::from(msg.header.scope)),
        flags: msg.header.flags.bits() as u32,
        label: RString::new(),
        valid_life: u32::MAX,
        preferred_life: u32::MAX,
    };
    for at in &msg.attributes {
        match at {
            AddressAttribute::Local(x) => local = Some(ip(*x)),
            AddressAttribute::Address(x) => addr = Some(ip(*x)),
            AddressAttribute::Label(s) => a.label = s.as_str().into(),
            AddressAttribute::Broadcast(b) => a.broadcast = ROption::RSome((*b).into()),
            AddressAttribute::Flags(f) => a.flags = f.bits(),
            AddressAttribute::CacheInfo(c) => {
                a.valid_life = c.ifa_valid;
                a.preferred_life = c.ifa_preferred;
            }
            _ => {}
        }
    }
    match (local, addr) {
        (Some(l), Some(p)) => {
            a.local = l;
            if l != p {
                a.peer = ROption::RSome(p);
            }
        }
        (Some(l), None) => a.local = l,
        (None, Some(p)) => a.local = p,
        (None, None) => return None,
    }
    Some(a)
}

/// The encapsulation of a route or leg, described as iproute2 prints it (`ip id 5 src 0.0.0.0
/// dst 10.1.0.9 ttl 0 tos 0`, `mpls 100/200`); other types fall back to a debug rendering.
fn encap_of(kind: Option<u16>, attrs: &[RouteLwTunnelEncap]) -> Option<Encap> {
    use netlink_packet_route::route::{
        RouteIp6Tunnel as I6, RouteIpTunnel as I4, RouteMplsIpTunnel as M,
    };
    if attrs.is_empty() && kind.is_none() {
        return None;
    }
    let kind = kind.unwrap_or(0);
    let mut id = None;
    let (mut src, mut dst, mut ttl, mut tos) = (None, None, None, None);
    let mut labels = Vec::new();
    let mut other = Vec::new();
    for a in attrs {
        match a {
            RouteLwTunnelEncap::Ip(I4::Id(x)) => id = Some(*x),
            RouteLwTunnelEncap::Ip(I4::Source(x)) => src = Some(x.to_string()),
            RouteLwTunnelEncap::Ip(I4::Destination(x)) => dst = Some(x.to_string()),
            RouteLwTunnelEncap::Ip(I4::Ttl(x)) => ttl = Some(*x),
            RouteLwTunnelEncap::Ip(I4::Tos(x)) => tos = Some(*x),
            RouteLwTunnelEncap::Ip6(I6::Id(x)) => id = Some(*x),
            RouteLwTunnelEncap::Ip6(I6::Source(x)) => src = Some(x.to_string()),
            RouteLwTunnelEncap::Ip6(I6::Destination(x)) => dst = Some(x.to_string()),
            RouteLwTunnelEncap::Ip6(I6::Hoplimit(x)) => ttl = Some(*x),
            RouteLwTunnelEncap::Ip6(I6::Tc(x)) => tos = Some(*x),
            RouteLwTunnelEncap::Mpls(M::Destination(ls)) => {
                labels.extend(ls.iter().map(|l| l.label.to_string()))
            }
            RouteLwTunnelEncap::Mpls(M::Ttl(x)) => ttl = Some(*x),
            RouteLwTunnelEncap::Ip(I4::Flags(_)) | RouteLwTunnelEncap::Ip6(I6::Flags(_)) => {}
            a => other.push(format!("{a:?}")),
        }
    }
    let text = match kind {
        1 => {
            let mut t = format!("mpls {}", labels.join("/"));
            if let Some(x) = ttl {
                t += &format!(" ttl {x}");
            }
            t
        }
        2 | 4 => {
            let (name, t_name, c_name) = if kind == 2 {
                ("ip", "ttl", "tos")
            } else {
                ("ip6", "hoplimit", "tc")
            };
            let mut t = name.to_string();
            if let Some(x) = id {
                t += &format!(" id {x}");
            }
            if let Some(x) = src {
                t += &format!(" src {x}");
            }
            if let Some(x) = dst {
                t += &format!(" dst {x}");
            }
            t += &format!(
                " {t_name} {} {c_name} {}",
                ttl.unwrap_or(0),
                tos.unwrap_or(0)
            );
            t
        }
        _ => other.join(" "),
    };
    Some(Encap {
        kind,
        text: text.into(),
    })
}

fn leg_from_attrs(
    family: Family,
    ifindex: u32,
    weight: u16,
    flags: u32,
    attrs: &[RouteAttribute],
) -> NextHop {
    let _ = family;
    let mut nh = NextHop {
        gateway: ROption::RNone,
        ifindex,
        dev: RString::new(),
        weight,
        flags,
        encap: ROption::RNone,
    };
    let mut ek = None;
    let mut enc: &[RouteLwTunnelEncap] = &[];
    for a in attrs {
        match a {
            RouteAttribute::Gateway(g) => nh.gateway = route_addr(g).into(),
            RouteAttribute::Via(RouteVia::Inet(v)) => nh.gateway = ROption::RSome((*v).into()),
            RouteAttribute::Via(RouteVia::Inet6(v)) => nh.gateway = ROption::RSome((*v).into()),
            RouteAttribute::EncapType(t) => ek = Some(u16::from(*t)),
            RouteAttribute::Encap(e) => enc = e,
            _ => {}
        }
    }
    nh.encap = encap_of(ek, enc).into();
    nh
}

fn metric_of(m: &NlMetric) -> Option<RouteMetric> {
    let (id, value) = match m {
        NlMetric::Lock(v) => (1, *v),
        NlMetric::Mtu(v) => (2, *v),
        NlMetric::Window(v) => (3, *v),
        NlMetric::Rtt(v) => (4, *v),
        NlMetric::RttVar(v) => (5, *v),
        NlMetric::SsThresh(v) => (6, *v),
        NlMetric::Cwnd(v) => (7, *v),
        NlMetric::Advmss(v) => (8, *v),
        NlMetric::Reordering(v) => (9, *v),
        NlMetric::Hoplimit(v) => (10, *v),
        NlMetric::InitCwnd(v) => (11, *v),
        NlMetric::Features(v) => (12, *v),
        NlMetric::RtoMin(v) => (13, *v),
        NlMetric::InitRwnd(v) => (14, *v),
        NlMetric::QuickAck(v) => (15, *v),
        NlMetric::FastopenNoCookie(v) => (17, *v),
        // Congestion-control names do not fit a u32 value: not mirrored.
        NlMetric::CcAlgo(_) | NlMetric::Other(_) => return None,
        _ => return None,
    };
    Some(RouteMetric { id, value })
}

/// Mask of the `RTNH_F_*` bits kept in [`Route::flags`] (the `RTM_F_*` request bits are dropped).
pub const ROUTE_FLAG_MASK: u32 = 0xff;

/// Converts a route message. Returns `None` for families other than IPv4/IPv6 and for cloned
/// (cache) entries.
pub fn route(msg: &RouteMessage) -> Option<Route> {
    let h = &msg.header;
    let family = Family(u8::from(h.address_family));
    if family != Family::INET && family != Family::INET6 {
        return None;
    }
    if h.flags.bits() & 0x200 != 0 {
        return None; // RTM_F_CLONED
    }
    let mut r = Route::unicast(
        IpPrefix::new(zero_addr(family), h.destination_prefix_length),
        vec![],
    );
    r.dst = IpPrefix::new(zero_addr(family), h.destination_prefix_length);
    r.src = IpPrefix::new(zero_addr(family), h.source_prefix_length);
    r.family = family;
    r.table = h.table as u32;
    r.tos = h.tos;
    r.kind = RouteType(u8::from(h.kind));
    r.protocol = Protocol(u8::from(h.protocol));
    r.scope = Scope(u8::from(h.scope));
    r.flags = h.flags.bits() & ROUTE_FLAG_MASK;
    let mut oif = 0;
    let mut single = false;
    let mut legs: Vec<NextHop> = Vec::new();
    let mut metrics = Vec::new();
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                if let Some(x) = route_addr(d) {
                    r.dst.addr = x;
                }
            }
            RouteAttribute::Source(s) => {
                if let Some(x) = route_addr(s) {
                    r.src.addr = x;
                }
            }
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Priority(p) => r.metric = *p,
            RouteAttribute::PrefSource(p) => r.prefsrc = route_addr(p).into(),
            RouteAttribute::NhId(id) => r.nhid = ROption::RSome(*id),
            RouteAttribute::Oif(i) => {
                oif = *i;
                single = true;
            }
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => single = true,
            RouteAttribute::MultiPath(nhs) => {
                legs = nhs.iter().map(|n| multipath_leg(family, n)).collect();
            }
            RouteAttribute::Metrics(ms) => metrics.extend(ms.iter().filter_map(metric_of)),
            RouteAttribute::Preference(p) => {
                r.pref = ROption::RSome(match p {
                    RoutePreference::Low => 3,
                    RoutePreference::Medium => 0,
                    RoutePreference::High => 1,
                    RoutePreference::Invalid => 2,
                    RoutePreference::Other(x) => *x,
                    _ => 2,
                })
            }
            RouteAttribute::Expires(e) => r.expires = ROption::RSome(*e),
            RouteAttribute::MulticastExpires(e) => r.expires = ROption::RSome((*e / 100) as u32),
            _ => {}
        }
    }
    if legs.is_empty() && single {
        legs.push(leg_from_attrs(family, oif, 1, 0, &msg.attributes));
    }
    r.nexthops = legs.into();
    metrics.sort_by_key(|m| m.id);
    r.metrics = metrics.into();
    Some(r)
}

fn multipath_leg(family: Family, n: &RouteNextHop) -> NextHop {
    leg_from_attrs(
        family,
        n.interface_index,
        n.hops as u16 + 1,
        n.flags.bits() as u32,
        &n.attributes,
    )
}

/// Converts a neighbour message: IPv4/IPv6 neighbours, or bridge FDB entries (`AF_BRIDGE`).
pub fn neighbour(msg: &NeighbourMessage, del: bool) -> Event {
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
    if neighbour_is_multicast_map(&dst, state) {
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

/// Whether a neighbour entry is the fixed mapping of a multicast/broadcast address (state
/// `NOARP`): the kernel creates these on transmit without any notification, and they carry
/// nothing an offload needs (the MAC derives from the address). Not mirrored.
pub fn neighbour_is_multicast_map(dst: &IpAddress, state: u16) -> bool {
    let mc = match dst {
        IpAddress::V4(b) => b[0] & 0xf0 == 0xe0 || *b == [255, 255, 255, 255],
        IpAddress::V6(b) => b[0] == 0xff,
    };
    mc && state == nud::NOARP
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

/// Converts a rule message.
pub fn rule(msg: &RuleMessage) -> Rule {
    let h = &msg.header;
    let mut r = Rule {
        tos: h.tos,
        action: u8::from(h.action),
        flags: h.flags.bits(),
        ..Rule::lookup(Family(u8::from(h.family)), 0, h.table as u32)
    };
    for a in &msg.attributes {
        match a {
            RuleAttribute::Destination(d) => {
                r.dst = ROption::RSome(IpPrefix::new(ip(*d), h.dst_len))
            }
            RuleAttribute::Source(s) => r.src = ROption::RSome(IpPrefix::new(ip(*s), h.src_len)),
            RuleAttribute::Iifname(s) => r.iif = s.as_str().into(),
            RuleAttribute::Oifname(s) => r.oif = s.as_str().into(),
            RuleAttribute::Goto(g) => r.goto_target = *g,
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::FwMark(m) => r.fwmark = *m,
            RuleAttribute::FwMask(m) => r.fwmask = *m,
            RuleAttribute::SuppressPrefixLen(s) if *s != u32::MAX => {
                r.suppress_prefixlen = ROption::RSome(*s)
            }
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::L3MDev(b) => r.l3mdev = *b,
            RuleAttribute::Protocol(p) => r.protocol = Protocol(u8::from(*p)),
            RuleAttribute::IpProtocol(p) => r.ip_proto = u8::from(*p),
            RuleAttribute::SourcePortRange(p) => {
                r.sport = ROption::RSome(PortRange {
                    start: p.start,
                    end: p.end,
                })
            }
            RuleAttribute::DestinationPortRange(p) => {
                r.dport = ROption::RSome(PortRange {
                    start: p.start,
                    end: p.end,
                })
            }
            RuleAttribute::UidRange(u) => {
                r.uid_range = ROption::RSome(UidRange {
                    start: u.start,
                    end: u.end,
                })
            }
            RuleAttribute::TunId(t) => r.tun_id = ROption::RSome(*t),
            RuleAttribute::Realm(f) => {
                r.realms = ROption::RSome(u32::from(f.source) << 16 | u32::from(f.destination))
            }
            RuleAttribute::SuppressIfGroup(g) if *g != u32::MAX => {
                r.suppress_ifgroup = ROption::RSome(*g)
            }
            _ => {}
        }
    }
    r
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

fn nlas(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(buf)
        .filter_map(|r: Result<NlaBuffer<&[u8]>, _>| r.ok())
        .map(|n| {
            let kind = n.kind() & NLA_TYPE_MASK;
            let len = n.value_length();
            let inner: &[u8] = n.into_inner();
            (kind, &inner[4..4 + len])
        })
}

/// Parses an `RTM_NEWNEXTHOP`/`RTM_DELNEXTHOP` payload (`struct nhmsg` + `NHA_*` attributes).
pub fn nexthop(payload: &[u8]) -> Option<Nexthop> {
    if payload.len() < 8 {
        return None;
    }
    let mut n = Nexthop {
        id: 0,
        family: Family(payload[0]),
        gateway: ROption::RNone,
        ifindex: 0,
        dev: RString::new(),
        blackhole: false,
        fdb: false,
        flags: u32_of(&payload[4..8])?,
        protocol: Protocol(payload[2]),
        scope: Scope(payload[1]),
        group: RVec::new(),
        group_type: 0,
        encap: ROption::RNone,
    };
    for (kind, v) in nlas(&payload[8..]) {
        match kind {
            1 => n.id = u32_of(v)?,
            2 => {
                // struct nexthop_grp { u32 id; u8 weight; u8 weight_high; u16 resvd2; }
                n.group = v
                    .chunks_exact(8)
                    .map(|c| GroupMember {
                        id: u32::from_ne_bytes(c[..4].try_into().unwrap()),
                        weight: (c[4] as u16 | ((c[5] as u16) << 8)) + 1,
                    })
                    .collect();
            }
            3 => n.group_type = u16::from_ne_bytes(v.get(..2)?.try_into().ok()?),
            4 => n.blackhole = true,
            5 => n.ifindex = u32_of(v)?,
            6 => n.gateway = bytes_ip(v).into(),
            7 => {
                let k = u16::from_ne_bytes(v.get(..2)?.try_into().ok()?);
                n.encap = ROption::RSome(Encap {
                    kind: k,
                    text: RString::new(),
                });
            }
            11 => n.fdb = true,
            _ => {}
        }
    }
    Some(n)
}

/// Parses an `RTM_NEWNETCONF`/`RTM_DELNETCONF` payload (`struct netconfmsg` + `NETCONFA_*`).
pub fn netconf(payload: &[u8]) -> Option<Netconf> {
    let family = Family(*payload.first()?);
    let mut n = Netconf {
        family,
        ifindex: 0,
        dev: RString::new(),
        forwarding: ROption::RNone,
        rp_filter: ROption::RNone,
        mc_forwarding: ROption::RNone,
        proxy_neigh: ROption::RNone,
        ignore_routes_with_linkdown: ROption::RNone,
        input: ROption::RNone,
    };
    let body = payload.get(4..).unwrap_or(&[]);
    let mut have_index = false;
    for (kind, v) in nlas(body) {
        let val = u32_of(v).map(|x| x as i32);
        match kind {
            1 => {
                n.ifindex = val?;
                have_index = true;
            }
            2 => n.forwarding = val.into(),
            3 => n.rp_filter = val.into(),
            4 => n.mc_forwarding = val.into(),
            5 => n.proxy_neigh = val.into(),
            6 => n.ignore_routes_with_linkdown = val.into(),
            7 => n.input = val.into(),
            _ => {}
        }
    }
    have_index.then_some(n)
}

/// Parses an `RTM_NEWMDB`/`RTM_DELMDB` payload (`struct br_port_msg` + `MDBA_MDB` nest of
/// `MDBA_MDB_ENTRY` nests of `MDBA_MDB_ENTRY_INFO` = `struct br_mdb_entry` + `MDBA_MDB_EATTR_*`).
pub fn mdb(payload: &[u8]) -> Vec<MdbEntry> {
    let mut out = Vec::new();
    if payload.len() < 8 {
        return out;
    }
    let bridge = u32::from_ne_bytes(payload[4..8].try_into().unwrap());
    for (k, v) in nlas(&payload[8..]) {
        if k != 1 {
            continue; // MDBA_ROUTER and others
        }
        for (k2, v2) in nlas(v) {
            if k2 != 1 {
                continue;
            }
            for (k3, e) in nlas(v2) {
                if k3 != 1 || e.len() < 26 {
                    continue;
                }
                let port = u32::from_ne_bytes(e[0..4].try_into().unwrap());
                let state = e[4];
                let vid = u16::from_ne_bytes(e[6..8].try_into().unwrap());
                let proto = u16::from_be_bytes(e[24..26].try_into().unwrap());
                let (group, mac_group) = match proto {
                    0x0800 => (
                        Some(IpAddress::V4(e[8..12].try_into().unwrap())),
                        LinkAddr::default(),
                    ),
                    0x86dd => (
                        Some(IpAddress::V6(e[8..24].try_into().unwrap())),
                        LinkAddr::default(),
                    ),
                    _ => (None, LinkAddr::new(&e[8..14])),
                };
                let mut source = None;
                if e.len() > 28 {
                    for (k4, a) in nlas(&e[28..]) {
                        if k4 == 2 {
                            source = bytes_ip(a);
                        }
                    }
                }
                out.push(MdbEntry {
                    bridge,
                    bridge_name: RString::new(),
                    port,
                    port_name: RString::new(),
                    group: group.into(),
                    mac_group,
                    source: source.into(),
                    vid,
                    permanent: state == 1,
                });
            }
        }
    }
    out
}

/// Parses an `RTM_NEWVLAN`/`RTM_DELVLAN` payload (`struct br_vlan_msg` + `BRIDGE_VLANDB_ENTRY`
/// nests of `BRIDGE_VLANDB_ENTRY_INFO` = `struct bridge_vlan_info { u16 flags; u16 vid; }` and
/// an optional `BRIDGE_VLANDB_ENTRY_RANGE` end vid), expanded to one entry per vid.
pub fn vlans(payload: &[u8]) -> Vec<BridgeVlan> {
    let mut out = Vec::new();
    if payload.len() < 8 {
        return out;
    }
    let ifindex = u32::from_ne_bytes(payload[4..8].try_into().unwrap());
    for (k, v) in nlas(&payload[8..]) {
        if k != 1 {
            continue; // BRIDGE_VLANDB_GLOBAL_OPTIONS and others
        }
        let mut info = None;
        let mut end = None;
        for (k2, a) in nlas(v) {
            match (k2, a.len()) {
                (1, 4..) => {
                    info = Some((
                        u16::from_ne_bytes(a[0..2].try_into().unwrap()),
                        u16::from_ne_bytes(a[2..4].try_into().unwrap()),
                    ))
                }
                (2, 2..) => end = Some(u16::from_ne_bytes(a[0..2].try_into().unwrap())),
                _ => {}
            }
        }
        let Some((flags, vid)) = info else { continue };
        for vid in vid..=end.unwrap_or(vid).max(vid) {
            out.push(BridgeVlan {
                ifindex,
                dev: RString::new(),
                vid,
                pvid: flags & 2 != 0,
                untagged: flags & 4 != 0,
            });
        }
    }
    out
}

/// A netlink message parsed by netlink-packet-route (rtnetlink types), or kept as bytes for the
/// types ekho reads itself (nexthop, netconf, MDB, VLAN): the first half of [`decode`], which a
/// dump runs on its receiving thread.
pub enum Parsed {
    /// An rtnetlink message and the `nlmsg_flags` of its header.
    Rtnl(netlink_packet_route::RouteNetlinkMessage, u16),
    /// Message type and payload.
    Raw(u16, Vec<u8>),
    /// A type ekho does not mirror.
    Ignored,
}

/// Parses one message (see [`Parsed`]).
pub fn parse(header: &NetlinkHeader, payload: &[u8]) -> Result<Parsed, String> {
    use netlink_packet_core::NetlinkDeserializable;
    use netlink_packet_route::RouteNetlinkMessage as M;
    let t = header.message_type;
    Ok(match t {
        rtm::NEWNEXTHOP
        | rtm::DELNEXTHOP
        | rtm::NEWNETCONF
        | rtm::DELNETCONF
        | rtm::NEWMDB
        | rtm::GETMDB
        | rtm::DELMDB
        | rtm::NEWVLAN
        | rtm::DELVLAN => Parsed::Raw(t, payload.to_vec()),
        16..=34 => Parsed::Rtnl(
            M::deserialize(header, payload).map_err(|e| format!("type {t}: {e}"))?,
            header.flags,
        ),
        _ => Parsed::Ignored,
    })
}

/// The mirror event of a parsed message (the second half of [`decode`]).
pub fn event(p: &Parsed) -> Event {
    use netlink_packet_route::RouteNetlinkMessage as M;
    match p {
        Parsed::Raw(t, payload) => {
            let payload = &payload[..];
            match *t {
                rtm::NEWNEXTHOP => nexthop(payload)
                    .map(Event::NewNexthop)
                    .unwrap_or(Event::Ignored),
                rtm::DELNEXTHOP => nexthop(payload)
                    .map(|n| Event::DelNexthop(n.id))
                    .unwrap_or(Event::Ignored),
                rtm::NEWNETCONF => netconf(payload)
                    .map(Event::NewNetconf)
                    .unwrap_or(Event::Ignored),
                rtm::DELNETCONF => netconf(payload)
                    .map(|n| Event::DelNetconf(n.family, n.ifindex))
                    .unwrap_or(Event::Ignored),
                // MDB dump replies carry RTM_GETMDB.
                rtm::NEWMDB | rtm::GETMDB => Event::NewMdb(mdb(payload)),
                rtm::DELMDB => Event::DelMdb(mdb(payload)),
                // VLAN dump replies carry RTM_NEWVLAN.
                rtm::NEWVLAN => Event::NewVlan(vlans(payload)),
                rtm::DELVLAN => Event::DelVlan(vlans(payload)),
                _ => Event::Ignored,
            }
        }
        Parsed::Rtnl(m, flags) => match m {
            M::NewLink(l) => link(l).map(Event::NewLink).unwrap_or(Event::Ignored),
            M::DelLink(l) => link(l).map(Event::DelLink).unwrap_or(Event::Ignored),
            M::NewAddress(a) => address(a).map(Event::NewAddress).unwrap_or(Event::Ignored),
            M::DelAddress(a) => address(a).map(Event::DelAddress).unwrap_or(Event::Ignored),
            M::NewRoute(r) => route(r)
                .map(|r| Event::NewRoute(r, *flags))
                .unwrap_or(Event::Ignored),
            M::DelRoute(r) => route(r).map(Event::DelRoute).unwrap_or(Event::Ignored),
            M::NewNeighbour(n) => neighbour(n, false),
            M::DelNeighbour(n) => neighbour(n, true),
            M::NewRule(r) => Event::NewRule(rule(r)),
            M::DelRule(r) => Event::DelRule(rule(r)),
            _ => Event::Ignored,
        },
        Parsed::Ignored => Event::Ignored,
    }
}

/// Decodes one message into a mirror event ([`parse`], then [`event`]).
pub fn decode(header: &NetlinkHeader, payload: &[u8]) -> Result<Event, String> {
    Ok(event(&parse(header, payload)?))
}

/// Splits a buffer holding one or more netlink messages (one `recv`) into (header, payload).
pub fn split(buf: &[u8]) -> Vec<(NetlinkHeader, &[u8])> {
    use netlink_packet_core::{NetlinkBuffer, Parseable};
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let Ok(nb) = NetlinkBuffer::new_checked(&buf[off..]) else {
            break;
        };
        let len = nb.length() as usize;
        let Ok(header) = NetlinkHeader::parse(&nb) else {
            break;
        };
        out.push((header, nb.payload()));
        off += (len + 3) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    //! Messages captured from the kernel (6.18) of this machine in a scratch netns with a raw
    //! `AF_NETLINK` dump socket; hex as received.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn one(s: &str) -> Event {
        let b = hex(s);
        let v = split(&b);
        assert_eq!(v.len(), 1);
        decode(&v[0].0, v[0].1).unwrap()
    }

    #[test]
    fn multipath_route_table_100() {
        // ip route add 10.3.0.0/24 table 100 nexthop via 10.1.0.2 weight 3 nexthop via 10.1.0.3
        let e = one("500000001800020001000000ff66000002180000640300010000000008000f0064000000080001000a030000240009001000000203000000080005000a0100021000000003000000080005000a010003");
        let Event::NewRoute(r, _) = e else {
            panic!("{e:?}")
        };
        assert_eq!(r.family, Family::INET);
        assert_eq!(r.table, 100);
        assert_eq!(r.dst, "10.3.0.0/24".parse().unwrap());
        assert_eq!(r.protocol, Protocol::BOOT);
        assert_eq!(r.nexthops.len(), 2);
        assert_eq!(
            r.nexthops[0].gateway,
            ROption::RSome("10.1.0.2".parse().unwrap())
        );
        assert_eq!(r.nexthops[0].weight, 3);
        assert_eq!(r.nexthops[0].ifindex, 3);
        assert_eq!(
            r.nexthops[1].gateway,
            ROption::RSome("10.1.0.3".parse().unwrap())
        );
        assert_eq!(r.nexthops[1].weight, 1);
    }

    #[test]
    fn nexthop_and_group() {
        // ip nexthop add id 7 via 10.1.0.2 dev va
        let Event::NewNexthop(n) =
            one("3000000068000200010000002867000002fd00000000000008000100070000000800050003000000080006000a010002")
        else {
            panic!()
        };
        assert_eq!(
            (n.id, n.ifindex, n.scope, n.is_group()),
            (7, 3, Scope::LINK, false)
        );
        assert_eq!(n.gateway, ROption::RSome("10.1.0.2".parse().unwrap()));
        // ip nexthop add id 8 group 7,2
        let Event::NewNexthop(g) = one("3c0000006800020001000000286700000000000000000000080001000800000006000300000000000c000200070000000100000008000e0000000080")
        else {
            panic!()
        };
        assert_eq!(g.id, 8);
        assert_eq!(g.group.as_slice(), &[GroupMember { id: 7, weight: 2 }]);
        assert_eq!(g.group_type, 0);
    }

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
    fn netconf_default() {
        let Event::NewNetconf(c) = one("4c00000050000200010000007c670000020000000800010001000000080002000000000008000300000000000800040000000000080008000000000008000500000000000800060000000000")
        else {
            panic!()
        };
        assert_eq!((c.family, c.ifindex), (Family::INET, 1));
        assert_eq!(c.forwarding, ROption::RSome(0));
        assert_eq!(c.input, ROption::RNone);
    }

    #[test]
    fn ipv4_address() {
        let Event::NewAddress(a) = one("4c0000001400020001000000a56700000218800003000000080001000a010001080002000a0100010700030076610000080008008000000014000600ffffffffffffffff84ae010084ae0100")
        else {
            panic!()
        };
        assert_eq!(a.local, "10.1.0.1".parse().unwrap());
        assert_eq!((a.prefixlen, a.ifindex, a.peer.is_none()), (24, 3, true));
        assert_eq!(a.label.as_str(), "va");
        assert_eq!(a.valid_life, u32::MAX);
        assert_eq!(a.flags & 0x80, 0x80);
    }

    #[test]
    fn vlan_entries_and_ranges() {
        // SYNTHESIZED from the uapi layout (this kernel has no CONFIG_BRIDGE_VLAN_FILTERING, so
        // none could be captured): br_vlan_msg{family 7, ifindex 4}, an entry vid 1 PVID
        // UNTAGGED, an entry vids 10..=12 (range).
        let mut p = vec![7u8, 0, 0, 0, 4, 0, 0, 0];
        let nla = |t: u16, v: &[u8]| {
            let mut b = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
            b.extend(t.to_ne_bytes());
            b.extend(v);
            while b.len() % 4 != 0 {
                b.push(0);
            }
            b
        };
        let info = |flags: u16, vid: u16| [flags.to_ne_bytes(), vid.to_ne_bytes()].concat();
        p.extend(nla(1, &nla(1, &info(6, 1))));
        p.extend(nla(
            1,
            &[nla(1, &info(0, 10)), nla(2, &12u16.to_ne_bytes())].concat(),
        ));
        let v = vlans(&p);
        let got: Vec<(u32, u16, bool, bool)> = v
            .iter()
            .map(|x| (x.ifindex, x.vid, x.pvid, x.untagged))
            .collect();
        assert_eq!(
            got,
            [
                (4, 1, true, true),
                (4, 10, false, false),
                (4, 11, false, false),
                (4, 12, false, false)
            ]
        );
    }

    #[test]
    fn truncated_buffer_is_not_parsed() {
        let b = hex("500000001800020001000000ff660000021800006403");
        assert!(split(&b).is_empty());
    }
}
