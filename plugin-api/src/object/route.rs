//! Routes (`RTM_NEWROUTE`), IPv4 and IPv6, every table and type.

use super::net::{table_name, Family, IpAddress, IpPrefix, Protocol, RouteType, Scope};
use abi_stable::std_types::{ROption, RString, RVec};
use abi_stable::StableAbi;

/// `RTNH_F_DEAD`: next hop is dead.
pub const RTNH_F_DEAD: u32 = 1;
/// `RTNH_F_PERVASIVE`.
pub const RTNH_F_PERVASIVE: u32 = 2;
/// `RTNH_F_ONLINK`: gateway is on-link even if no prefix covers it.
pub const RTNH_F_ONLINK: u32 = 4;
/// `RTNH_F_OFFLOAD`.
pub const RTNH_F_OFFLOAD: u32 = 8;
/// `RTNH_F_LINKDOWN`: carrier is down on the next hop's device.
pub const RTNH_F_LINKDOWN: u32 = 16;
/// `RTNH_F_UNRESOLVED`.
pub const RTNH_F_UNRESOLVED: u32 = 32;
/// `RTNH_F_TRAP`.
pub const RTNH_F_TRAP: u32 = 64;

/// Lightweight tunnel encapsulation of a route or a leg (`RTA_ENCAP`).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Hash, Debug)]
pub struct Encap {
    /// `LWTUNNEL_ENCAP_*` type (1 mpls, 2 ip, 4 ip6, 5 seg6, ...).
    pub kind: u16,
    /// The encapsulation, described in iproute2's words (e.g. `mpls 100/200`).
    pub text: RString,
}

/// One leg of a route: where packets go.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Hash, Debug)]
pub struct NextHop {
    /// Gateway; may be IPv6 for an IPv4 route (RFC 5549, `RTA_VIA`).
    pub gateway: ROption<IpAddress>,
    /// Output device ifindex, 0 when none.
    pub ifindex: u32,
    /// Output device name (filled by the host).
    pub dev: RString,
    /// ECMP weight, 1..=256 (`rtnh_hops + 1`).
    pub weight: u16,
    /// `RTNH_F_*` flags.
    pub flags: u32,
    pub encap: ROption<Encap>,
}

impl NextHop {
    /// A leg through `gateway` on device `ifindex` with weight 1.
    pub fn via(gateway: IpAddress, ifindex: u32) -> NextHop {
        NextHop {
            gateway: ROption::RSome(gateway),
            ifindex,
            dev: RString::new(),
            weight: 1,
            flags: 0,
            encap: ROption::RNone,
        }
    }
}

/// A route metric (`RTA_METRICS`): `RTAX_*` id and value.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RouteMetric {
    pub id: u16,
    pub value: u32,
}

impl RouteMetric {
    /// iproute2's name of the metric (`mtu`, `advmss`, `hoplimit`, ...).
    pub fn name(&self) -> String {
        let s = match self.id {
            1 => "lock",
            2 => "mtu",
            3 => "window",
            4 => "rtt",
            5 => "rttvar",
            6 => "ssthresh",
            7 => "cwnd",
            8 => "advmss",
            9 => "reordering",
            10 => "hoplimit",
            11 => "initcwnd",
            12 => "features",
            13 => "rto_min",
            14 => "initrwnd",
            15 => "quickack",
            16 => "congctl",
            17 => "fastopen_no_cookie",
            n => return format!("metric{n}"),
        };
        s.into()
    }
}

/// A route. Identity: (`family`, `table`, `dst`, `src`, `tos`, `metric`), the key the kernel's FIB
/// uses to tell two routes apart.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Route {
    pub family: Family,
    pub table: u32,
    pub dst: IpPrefix,
    /// Source prefix of an IPv6 source-specific route (length 0 otherwise).
    pub src: IpPrefix,
    pub tos: u8,
    /// `RTA_PRIORITY`.
    pub metric: u32,
    pub kind: RouteType,
    pub protocol: Protocol,
    pub scope: Scope,
    /// `RTM_F_*` / `RTNH_F_*` flags of the route message.
    pub flags: u32,
    pub prefsrc: ROption<IpAddress>,
    /// Nexthop object id when the route uses one (`ip route add ... nhid N`).
    pub nhid: ROption<u32>,
    /// Legs: one for a single-path route, several for multipath, none for blackhole & co.
    /// For routes with `nhid`, the legs expanded from the nexthop object.
    pub nexthops: RVec<NextHop>,
    pub metrics: RVec<RouteMetric>,
    /// IPv6 router preference (`RTA_PREF`): 0 medium, 1 high, 3 low.
    pub pref: ROption<u8>,
    /// Seconds until expiry, when the route expires.
    pub expires: ROption<u32>,
}

impl Route {
    /// A minimal unicast route of `dst` in the main table, protocol static.
    pub fn unicast(dst: IpPrefix, nexthops: Vec<NextHop>) -> Route {
        Route {
            family: dst.addr.family(),
            table: 254,
            dst,
            src: IpPrefix::default_route(dst.addr.family()),
            tos: 0,
            metric: 0,
            kind: RouteType::UNICAST,
            protocol: Protocol::STATIC,
            scope: Scope::UNIVERSE,
            flags: 0,
            prefsrc: ROption::RNone,
            nhid: ROption::RNone,
            nexthops: nexthops.into(),
            metrics: RVec::new(),
            pref: ROption::RNone,
            expires: ROption::RNone,
        }
    }

    /// Whether this is a multipath route (more than one leg).
    pub fn is_multipath(&self) -> bool {
        self.nexthops.len() > 1
    }

    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value};
        fn nh_flags(flags: u32) -> Vec<&'static str> {
            let mut v = Vec::new();
            for (bit, n) in [
                (RTNH_F_DEAD, "dead"),
                (RTNH_F_PERVASIVE, "pervasive"),
                (RTNH_F_ONLINK, "onlink"),
                (RTNH_F_OFFLOAD, "offload"),
                (RTNH_F_TRAP, "trap"),
                (RTNH_F_LINKDOWN, "linkdown"),
                (RTNH_F_UNRESOLVED, "unresolved"),
            ] {
                if flags & bit != 0 {
                    v.push(n);
                }
            }
            v
        }
        fn gw(m: &mut Map<String, Value>, route_family: Family, g: &IpAddress) {
            if g.family() == route_family {
                m.insert("gateway".into(), g.to_string().into());
            } else {
                m.insert(
                    "via".into(),
                    serde_json::json!({"family": g.family().name(), "host": g.to_string()}),
                );
            }
        }
        let mut m = Map::new();
        // iproute2 names the type only when it is not unicast.
        if self.kind != RouteType::UNICAST {
            m.insert("type".into(), self.kind.name().into());
        }
        m.insert("dst".into(), self.dst.to_route_string().into());
        if self.src.len != 0 {
            m.insert("from".into(), self.src.to_route_string().into());
        }
        if self.tos != 0 {
            m.insert("tos".into(), format!("0x{:x}", self.tos).into());
        }
        if let Some(id) = self.nhid.into_option() {
            m.insert("nhid".into(), id.into());
        }
        if self.nexthops.len() == 1 {
            let nh = &self.nexthops[0];
            if let Some(g) = nh.gateway.as_ref().into_option() {
                gw(&mut m, self.family, g);
            }
            if nh.ifindex != 0 {
                m.insert("dev".into(), nh.dev.as_str().into());
            }
            if let Some(e) = nh.encap.as_ref().into_option() {
                m.insert("encap".into(), e.text.as_str().into());
            }
        }
        m.insert("table".into(), table_name(self.table).into());
        m.insert("protocol".into(), self.protocol.name().into());
        m.insert("scope".into(), self.scope.name().into());
        if let Some(p) = self.prefsrc.as_ref().into_option() {
            m.insert("prefsrc".into(), p.to_string().into());
        }
        m.insert("metric".into(), self.metric.into());
        let mut flags = nh_flags(self.flags);
        if self.nexthops.len() == 1 {
            for f in nh_flags(self.nexthops[0].flags) {
                if !flags.contains(&f) {
                    flags.push(f);
                }
            }
        }
        m.insert("flags".into(), flags.into());
        if !self.metrics.is_empty() {
            let mut mm = Map::new();
            for x in self.metrics.iter() {
                mm.insert(x.name(), x.value.into());
            }
            m.insert("metrics".into(), vec![Value::Object(mm)].into());
        }
        if let Some(p) = self.pref.into_option() {
            let name = match p {
                0 => "medium",
                1 => "high",
                3 => "low",
                _ => "unknown",
            };
            m.insert("pref".into(), name.into());
        }
        if let Some(e) = self.expires.into_option() {
            m.insert("expires".into(), e.into());
        }
        if self.nexthops.len() > 1 {
            let legs: Vec<Value> = self
                .nexthops
                .iter()
                .map(|nh| {
                    let mut l = Map::new();
                    if let Some(g) = nh.gateway.as_ref().into_option() {
                        gw(&mut l, self.family, g);
                    }
                    if nh.ifindex != 0 {
                        l.insert("dev".into(), nh.dev.as_str().into());
                    }
                    l.insert("weight".into(), nh.weight.into());
                    if let Some(e) = nh.encap.as_ref().into_option() {
                        l.insert("encap".into(), e.text.as_str().into());
                    }
                    l.insert("flags".into(), nh_flags(nh.flags).into());
                    Value::Object(l)
                })
                .collect();
            m.insert("nexthops".into(), legs.into());
        }
        m.into()
    }
}

/// The device part of a route's identity: the ifindex of the only leg when it has no gateway,
/// else 0 (see [`ObjectKey::Route`](super::ObjectKey::Route)).
pub fn device_discriminator(r: &Route) -> u32 {
    match r.nexthops.as_slice() {
        [only] if only.gateway.is_none() && r.nhid.is_none() => only.ifindex,
        _ => 0,
    }
}
