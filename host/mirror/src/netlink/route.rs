//! Routes (`RTM_NEWROUTE`/`RTM_DELROUTE`), decoded by netlink-packet-route: legs, encapsulation,
//! metrics. Notifications of the common shape (one leg, no metrics or encapsulation) are read
//! straight from their bytes by [`fast`], checked against the full decode in debug builds.

use super::zero_addr;
use ekho_plugin_api::abi_stable::std_types::{ROption, RString};
use ekho_plugin_api::object::*;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteLwTunnelEncap, RouteMessage, RouteMetric as NlMetric,
    RouteNextHop, RoutePreference, RouteVia,
};

fn route_addr(a: &RouteAddress) -> Option<IpAddress> {
    match a {
        RouteAddress::Inet(v) => Some((*v).into()),
        RouteAddress::Inet6(v) => Some((*v).into()),
        _ => None,
    }
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
pub fn convert(msg: &RouteMessage) -> Option<Route> {
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

/// The attributes [`fast`] reads (`RTA_*`); a message with any other goes the full way.
mod rta {
    pub const DST: u16 = 1;
    pub const SRC: u16 = 2;
    pub const OIF: u16 = 4;
    pub const GATEWAY: u16 = 5;
    pub const PRIORITY: u16 = 6;
    pub const PREFSRC: u16 = 7;
    pub const CACHEINFO: u16 = 12;
    pub const TABLE: u16 = 15;
    pub const PREF: u16 = 20;
    pub const EXPIRES: u16 = 23;
    pub const NH_ID: u16 = 30;
}

/// A route notification of the common shape (IPv4 or IPv6, not cloned, one leg through at most
/// a gateway and a device, or a nexthop object; no multipath, metrics, encapsulation, `via`,
/// realm), read straight from its bytes: what [`convert`] makes of netlink-packet-route's
/// parse of it, without building the attribute list (that parse was a fifth of the source
/// thread's instructions per route change). `None` for anything else, malformed included: the
/// full decode decides. Debug builds check every message against the full decode
/// (`netlink::decode`).
pub fn fast(payload: &[u8]) -> Option<Route> {
    let h = payload.get(..12)?;
    let family = Family(h[0]);
    let alen = match family {
        Family::INET => 4,
        Family::INET6 => 16,
        _ => return None,
    };
    let flags = u32::from_ne_bytes(h[8..12].try_into().ok()?);
    if flags & 0x200 != 0 {
        return None; // RTM_F_CLONED
    }
    let mut r = Route::unicast(IpPrefix::new(zero_addr(family), h[1]), vec![]);
    r.src = IpPrefix::new(zero_addr(family), h[2]);
    r.family = family;
    r.tos = h[3];
    r.table = h[4] as u32;
    r.protocol = Protocol(h[5]);
    r.scope = Scope(h[6]);
    r.kind = RouteType(h[7]);
    r.flags = flags & ROUTE_FLAG_MASK;
    let (mut oif, mut gateway, mut single) = (0, None, false);
    let mut off = 12;
    while off < payload.len() {
        let a = payload.get(off..off + 4)?;
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let kind = u16::from_ne_bytes([a[2], a[3]]);
        let v = payload.get(off + 4..off.checked_add(len)?)?;
        let addr = || (v.len() == alen).then(|| super::bytes_ip(v)).flatten();
        let u32v = || Some(u32::from_ne_bytes(v.try_into().ok()?));
        match kind {
            rta::DST => r.dst.addr = addr()?,
            rta::SRC => r.src.addr = addr()?,
            rta::OIF => {
                oif = u32v()?;
                single = true;
            }
            rta::GATEWAY => {
                gateway = Some(addr()?);
                single = true;
            }
            rta::PRIORITY => r.metric = u32v()?,
            rta::PREFSRC => r.prefsrc = ROption::RSome(addr()?),
            rta::TABLE => r.table = u32v()?,
            rta::NH_ID => r.nhid = ROption::RSome(u32v()?),
            // A multicast route's is a u64 (`MulticastExpires`): the full decode's.
            rta::EXPIRES if r.kind != RouteType::MULTICAST => r.expires = ROption::RSome(u32v()?),
            // RoutePreference's values are the byte's (low 3, medium 0, high 1, invalid 2).
            rta::PREF if v.len() == 1 => r.pref = ROption::RSome(v[0]),
            // struct rta_cacheinfo: not mirrored.
            rta::CACHEINFO if v.len() == 32 => {}
            _ => return None,
        }
        off += (len + 3) & !3;
    }
    if single {
        r.nexthops = vec![NextHop {
            gateway: gateway.into(),
            ifindex: oif,
            dev: RString::new(),
            weight: 1,
            flags: 0,
            encap: ROption::RNone,
        }]
        .into();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::tests::one;
    use crate::Event;

    /// Route messages of many shapes, made by netlink-packet-route's emitter: `fast` reads each
    /// as the full decode does, or leaves it to it.
    #[test]
    fn fast_agrees_with_the_full_decode() {
        use netlink_packet_core::{Emitable, NLA_F_NESTED};
        use netlink_packet_route::route::{RouteCacheInfo, RouteProtocol};
        use netlink_packet_route::AddressFamily;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut fast_read, mut left) = (0, 0);
        for i in 0..4000 {
            let v6 = next() % 2 == 0;
            let mut m = RouteMessage::default();
            m.header.address_family = if v6 {
                AddressFamily::Inet6
            } else {
                AddressFamily::Inet
            };
            m.header.destination_prefix_length = (next() % 129) as u8;
            m.header.source_prefix_length = (next() % 3) as u8;
            m.header.tos = (next() % 3) as u8;
            m.header.table = [254u8, 255, 100, 0][(next() % 4) as usize];
            m.header.protocol = RouteProtocol::from([2u8, 3, 4, 186][(next() % 4) as usize]);
            m.header.scope = netlink_packet_route::route::RouteScope::from(
                [0u8, 253, 254][(next() % 3) as usize],
            );
            m.header.kind = netlink_packet_route::route::RouteType::from(
                [1u8, 2, 3, 5, 6, 7][(next() % 6) as usize],
            );
            m.header.flags = netlink_packet_route::route::RouteFlags::from_bits_retain(
                [0u32, 1, 4, 0x10, 0x80, 0x200][(next() % 6) as usize],
            );
            let addr = |x: u64| {
                if v6 {
                    let mut b = [0u8; 16];
                    b[..8].copy_from_slice(&x.to_be_bytes());
                    RouteAddress::Inet6(b.into())
                } else {
                    RouteAddress::Inet((x as u32).to_be_bytes().into())
                }
            };
            let mut attrs = Vec::new();
            for _ in 0..(next() % 8) {
                attrs.push(match next() % 14 {
                    0 => RouteAttribute::Destination(addr(next())),
                    1 => RouteAttribute::Source(addr(next())),
                    2 => RouteAttribute::Oif((next() % 5) as u32),
                    3 => RouteAttribute::Gateway(addr(next())),
                    4 => RouteAttribute::Priority((next() % 1025) as u32),
                    5 => RouteAttribute::PrefSource(addr(next())),
                    6 => RouteAttribute::Table((next() % 300) as u32),
                    7 => RouteAttribute::Preference(((next() % 5) as u8).into()),
                    8 => RouteAttribute::CacheInfo(RouteCacheInfo::parse(&[0u8; 32]).unwrap()),
                    9 => RouteAttribute::NhId((next() % 9) as u32),
                    10 => RouteAttribute::Expires((next() % 600) as u32),
                    11 => RouteAttribute::Metrics(vec![NlMetric::Mtu(1400)]),
                    12 => RouteAttribute::Mark(7),
                    _ => RouteAttribute::MultiPath(vec![{
                        let mut nh = RouteNextHop::default();
                        nh.interface_index = 2;
                        nh.attributes = vec![RouteAttribute::Gateway(addr(next()))];
                        nh
                    }]),
                });
            }
            m.attributes = attrs;
            let mut payload = vec![0u8; m.buffer_len()];
            m.emit(&mut payload);
            if i % 97 == 0 && payload.len() > 16 {
                // Malformed on purpose: a cut attribute, or a flag bit on a type.
                if i % 2 == 0 {
                    payload.truncate(payload.len() - 2);
                } else {
                    payload[15] |= (NLA_F_NESTED >> 8) as u8;
                }
            }
            let mut h = netlink_packet_core::NetlinkHeader::default();
            h.message_type = 24;
            let slow = match super::super::parse(&h, &payload).map(|p| super::super::event(&p)) {
                Ok(Event::NewRoute(r, _)) => Some(r),
                _ => None,
            };
            match fast(&payload) {
                Some(r) => {
                    fast_read += 1;
                    assert_eq!(Some(&r), slow.as_ref(), "{payload:02x?}");
                }
                None => left += 1,
            }
        }
        assert!(
            fast_read > 1000 && left > 500,
            "{fast_read} read, {left} left"
        );
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
}
