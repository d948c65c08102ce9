//! The object model: everything the mirror carries, as `#[repr(C)]` [`StableAbi`] types.
//!
//! Each kind has a stable identity key ([`Object::key`]) — what the kernel itself uses to tell two
//! objects of that kind apart — so an update can be matched to the object it replaces.
//! Field names follow iproute2 (`dst`, `gateway`, `dev`, `table`, `protocol`, `scope`, `metric`,
//! `lladdr`, `state`, ...), and with the default `json` feature every object renders to the same
//! JSON shape `ip -j` prints.

pub mod address;
pub mod bridge;
pub mod flow;
pub mod link;
pub mod neighbour;
pub mod net;
pub mod netconf;
pub mod netfilter;
pub mod nexthop;
pub mod route;
pub mod rule;
pub mod tc;

pub use address::Address;
pub use bridge::{BridgeVlan, FdbEntry, MdbEntry};
pub use flow::{Flow, FlowNat, FlowTuple};
pub use link::Link;
pub use neighbour::Neighbour;
pub use net::{Family, IpAddress, IpPrefix, LinkAddr, Protocol, RouteType, Scope};
pub use netconf::Netconf;
pub use netfilter::{NfChain, NfFamily, NfFlowtable};
pub use nexthop::{GroupMember, Nexthop};
pub use route::{Encap, NextHop, Route, RouteMetric};
pub use rule::{PortRange, Rule, UidRange};
pub use tc::{
    FlowerKey, FlowerKeys, MaskBits, Masked, Qdisc, TcAction, TcActionParams, TcActionSpec,
    TcBinding, TcBpf, TcCapabilities, TcClass, TcControl, TcCt, TcCtNat, TcFilter, TcFilterFlags,
    TcGactProb, TcHook, TcMatch, TcMirredAction, TcPeditKey, TcPolice, TcRawAttr, TcTarget,
    TcTunnelKey, TcU32, TcU32Key, TcU32Selector, TcUnsupported, TcVlanOp, TC_H_INGRESS,
    TC_H_MIN_EGRESS, TC_H_MIN_INGRESS, TC_H_ROOT,
};

use abi_stable::std_types::{ROption, RString};
use abi_stable::StableAbi;

crate::open_tag! {
    /// The kind of an object. An open set: a minor release of this crate may add kinds (the host
    /// never hands a plugin a kind its API version does not know), so a `match` on a kind needs
    /// a `_` arm. In a batch, what an object depends on comes first: see [`crate::order`].
    pub struct ObjectKind;
    /// Singular name (change records, config: `route`, `fdb`, ...) and plural name (the keys of
    /// `ekho dump --json`: `routes`, `fdb`, ...).
    names(name, plural) {
        0 => Link("link", "links"),
        1 => Netconf("netconf", "netconf"),
        2 => Address("address", "addresses"),
        3 => Vlan("vlan", "vlans"),
        4 => Nexthop("nexthop", "nexthops"),
        5 => Neighbour("neighbour", "neighbours"),
        6 => Fdb("fdb", "fdb"),
        7 => Mdb("mdb", "mdb"),
        8 => Route("route", "routes"),
        9 => Rule("rule", "rules"),
        /// An nftables base chain (API 1.1).
        10 => NfChain("nft_chain", "nft_chains"),
        /// An nftables flowtable (API 1.1).
        11 => NfFlowtable("nft_flowtable", "nft_flowtables"),
        /// A conntrack flow offered for offload (API 1.2).
        12 => Flow("flow", "flows"),
        /// A tc qdisc (API 1.3).
        13 => Qdisc("qdisc", "qdiscs"),
        /// A class of a classful qdisc (API 1.3).
        14 => TcClass("class", "classes"),
        /// A tc action, standalone or bound (API 1.3).
        15 => TcAction("action", "actions"),
        /// A tc filter (API 1.3).
        16 => TcFilter("filter", "filters"),
    }
}

impl ObjectKind {
    /// Parses a singular or plural name.
    pub fn from_name(s: &str) -> Option<ObjectKind> {
        ObjectKind::ALL.iter().copied().find(|k| {
            k.name() == s || k.plural() == s || (s == "neighbor" && *k == ObjectKind::Neighbour)
        })
    }
}

/// One object of any kind. Non-exhaustive: a minor release may add kinds (a plugin never
/// receives a kind its API version does not know), so a `match` needs a `_` arm.
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Object {
    Link(Link),
    Netconf(Netconf),
    Address(Address),
    Vlan(BridgeVlan),
    Nexthop(Nexthop),
    Neighbour(Neighbour),
    Fdb(FdbEntry),
    Mdb(MdbEntry),
    Route(Route),
    Rule(Rule),
    /// API 1.1.
    NfChain(NfChain),
    /// API 1.1.
    NfFlowtable(NfFlowtable),
    /// API 1.2.
    Flow(Flow),
    /// API 1.3.
    Qdisc(Qdisc),
    /// API 1.3.
    TcClass(TcClass),
    /// API 1.3.
    TcAction(TcAction),
    /// API 1.3.
    TcFilter(TcFilter),
}

/// The identity of an object: two objects with equal keys are versions of the same object.
/// Non-exhaustive like [`Object`].
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[non_exhaustive]
pub enum ObjectKey {
    Link {
        ifindex: u32,
    },
    Netconf {
        family: Family,
        ifindex: i32,
    },
    Address {
        family: Family,
        ifindex: u32,
        local: IpAddress,
        prefixlen: u8,
    },
    Vlan {
        ifindex: u32,
        vid: u16,
    },
    Nexthop {
        id: u32,
    },
    Neighbour {
        family: Family,
        ifindex: u32,
        dst: IpAddress,
        proxy: bool,
    },
    Fdb {
        owner: u32,
        mac: LinkAddr,
        vlan: u16,
        vni: ROption<u32>,
        dst: ROption<IpAddress>,
    },
    Mdb {
        bridge: u32,
        port: u32,
        group: ROption<IpAddress>,
        mac_group: LinkAddr,
        vid: u16,
        source: ROption<IpAddress>,
    },
    /// `dev`: for a route with a single leg and no gateway (a device route: connected prefixes,
    /// `fe80::/64`, `local`, `broadcast`, IPv6 `multicast`), that leg's ifindex, since the kernel
    /// keeps one such route per device under the same prefix and metric; 0 otherwise.
    Route {
        family: Family,
        table: u32,
        dst: IpPrefix,
        src: IpPrefix,
        tos: u8,
        metric: u32,
        dev: u32,
    },
    Rule {
        family: Family,
        priority: u32,
        selector: RString,
    },
    NfChain {
        family: NfFamily,
        table: RString,
        name: RString,
    },
    NfFlowtable {
        family: NfFamily,
        table: RString,
        name: RString,
    },
    /// API 1.2: the kernel's identity of a conntrack entry (zone and original tuple).
    Flow {
        family: Family,
        protocol: u8,
        zone: u16,
        original: FlowTuple,
    },
    /// API 1.3: a qdisc's device and parent.
    Qdisc {
        ifindex: u32,
        parent: u32,
    },
    /// API 1.3: a class's device and handle.
    TcClass {
        ifindex: u32,
        handle: u32,
    },
    /// API 1.3: an action's kind and index.
    TcAction {
        kind: RString,
        index: u32,
    },
    /// API 1.3: where a filter is (device or shared block, parent), its chain, prio and handle.
    TcFilter {
        target: TcTarget,
        parent: u32,
        chain: u32,
        prio: u16,
        handle: u32,
    },
}

impl ObjectKey {
    /// The kind of object this key identifies.
    pub fn kind(&self) -> ObjectKind {
        match self {
            ObjectKey::Link { .. } => ObjectKind::Link,
            ObjectKey::Netconf { .. } => ObjectKind::Netconf,
            ObjectKey::Address { .. } => ObjectKind::Address,
            ObjectKey::Vlan { .. } => ObjectKind::Vlan,
            ObjectKey::Nexthop { .. } => ObjectKind::Nexthop,
            ObjectKey::Neighbour { .. } => ObjectKind::Neighbour,
            ObjectKey::Fdb { .. } => ObjectKind::Fdb,
            ObjectKey::Mdb { .. } => ObjectKind::Mdb,
            ObjectKey::Route { .. } => ObjectKind::Route,
            ObjectKey::Rule { .. } => ObjectKind::Rule,
            ObjectKey::NfChain { .. } => ObjectKind::NfChain,
            ObjectKey::NfFlowtable { .. } => ObjectKind::NfFlowtable,
            ObjectKey::Flow { .. } => ObjectKind::Flow,
            ObjectKey::Qdisc { .. } => ObjectKind::Qdisc,
            ObjectKey::TcClass { .. } => ObjectKind::TcClass,
            ObjectKey::TcAction { .. } => ObjectKind::TcAction,
            ObjectKey::TcFilter { .. } => ObjectKind::TcFilter,
        }
    }
}

impl Object {
    /// The kind of this object.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Link(_) => ObjectKind::Link,
            Object::Netconf(_) => ObjectKind::Netconf,
            Object::Address(_) => ObjectKind::Address,
            Object::Vlan(_) => ObjectKind::Vlan,
            Object::Nexthop(_) => ObjectKind::Nexthop,
            Object::Neighbour(_) => ObjectKind::Neighbour,
            Object::Fdb(_) => ObjectKind::Fdb,
            Object::Mdb(_) => ObjectKind::Mdb,
            Object::Route(_) => ObjectKind::Route,
            Object::Rule(_) => ObjectKind::Rule,
            Object::NfChain(_) => ObjectKind::NfChain,
            Object::NfFlowtable(_) => ObjectKind::NfFlowtable,
            Object::Flow(_) => ObjectKind::Flow,
            Object::Qdisc(_) => ObjectKind::Qdisc,
            Object::TcClass(_) => ObjectKind::TcClass,
            Object::TcAction(_) => ObjectKind::TcAction,
            Object::TcFilter(_) => ObjectKind::TcFilter,
        }
    }

    /// The identity of this object.
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Link(l) => ObjectKey::Link { ifindex: l.ifindex },
            Object::Netconf(n) => ObjectKey::Netconf {
                family: n.family,
                ifindex: n.ifindex,
            },
            Object::Address(a) => ObjectKey::Address {
                family: a.family,
                ifindex: a.ifindex,
                local: a.local,
                prefixlen: a.prefixlen,
            },
            Object::Vlan(v) => ObjectKey::Vlan {
                ifindex: v.ifindex,
                vid: v.vid,
            },
            Object::Nexthop(n) => ObjectKey::Nexthop { id: n.id },
            Object::Neighbour(n) => ObjectKey::Neighbour {
                family: n.family,
                ifindex: n.ifindex,
                dst: n.dst,
                proxy: n.proxy,
            },
            Object::Fdb(f) => ObjectKey::Fdb {
                owner: if f.master != 0 { f.master } else { f.ifindex },
                mac: f.mac.clone(),
                vlan: f.vlan,
                vni: f.vni,
                dst: f.dst,
            },
            Object::Mdb(m) => ObjectKey::Mdb {
                bridge: m.bridge,
                port: m.port,
                group: m.group,
                mac_group: m.mac_group.clone(),
                vid: m.vid,
                source: m.source,
            },
            Object::Route(r) => ObjectKey::Route {
                family: r.family,
                table: r.table,
                dst: r.dst,
                src: r.src,
                tos: r.tos,
                metric: r.metric,
                dev: route::device_discriminator(r),
            },
            Object::Rule(r) => ObjectKey::Rule {
                family: r.family,
                priority: r.priority,
                selector: r.selector().into(),
            },
            Object::NfChain(c) => ObjectKey::NfChain {
                family: c.family,
                table: c.table.clone(),
                name: c.name.clone(),
            },
            Object::NfFlowtable(f) => ObjectKey::NfFlowtable {
                family: f.family,
                table: f.table.clone(),
                name: f.name.clone(),
            },
            Object::Flow(f) => ObjectKey::Flow {
                family: f.family,
                protocol: f.protocol,
                zone: f.zone,
                original: f.original,
            },
            Object::Qdisc(q) => ObjectKey::Qdisc {
                ifindex: q.ifindex,
                parent: q.parent,
            },
            Object::TcClass(c) => ObjectKey::TcClass {
                ifindex: c.ifindex,
                handle: c.handle,
            },
            Object::TcAction(a) => ObjectKey::TcAction {
                kind: a.spec.kind.clone(),
                index: a.spec.index,
            },
            Object::TcFilter(f) => f.key(),
        }
    }

    /// The address family of this object, where it has one (links and FDB/VLAN/MDB entries are
    /// [`Family::BRIDGE`] or [`Family::UNSPEC`]).
    pub fn family(&self) -> Family {
        match self {
            Object::Link(_) => Family::UNSPEC,
            Object::Netconf(n) => n.family,
            Object::Address(a) => a.family,
            Object::Vlan(_) | Object::Fdb(_) | Object::Mdb(_) => Family::BRIDGE,
            Object::Nexthop(n) => n.family,
            Object::Neighbour(n) => n.family,
            Object::Route(r) => r.family,
            Object::Rule(r) => r.family,
            // nftables families are their own set (`NfChain::family`).
            Object::NfChain(_) | Object::NfFlowtable(_) => Family::UNSPEC,
            Object::Flow(f) => f.family,
            Object::Qdisc(_) | Object::TcClass(_) | Object::TcAction(_) | Object::TcFilter(_) => {
                Family::UNSPEC
            }
        }
    }

    /// The device ifindexes this object is attached to (the ports it concerns). Empty for objects
    /// tied to no device (nexthop groups, blackhole routes, rules, global netconf).
    pub fn ifindexes(&self) -> Vec<u32> {
        let v = match self {
            Object::Link(l) => vec![l.ifindex],
            Object::Netconf(n) => {
                if n.ifindex > 0 {
                    vec![n.ifindex as u32]
                } else {
                    vec![]
                }
            }
            Object::Address(a) => vec![a.ifindex],
            Object::Vlan(v) => vec![v.ifindex],
            Object::Nexthop(n) => vec![n.ifindex],
            Object::Neighbour(n) => vec![n.ifindex],
            Object::Fdb(f) => vec![f.ifindex],
            Object::Mdb(m) => vec![m.port],
            Object::Route(r) => r.nexthops.iter().map(|n| n.ifindex).collect(),
            // Devices named (netdev chains), not referred to by ifindex: every port scope.
            Object::Rule(_) | Object::NfChain(_) | Object::NfFlowtable(_) => vec![],
            // A flow goes where its routes say: every port scope.
            Object::Flow(_) => vec![],
            Object::Qdisc(q) => vec![q.ifindex],
            Object::TcClass(c) => vec![c.ifindex],
            // Held by filters on any device: every port scope.
            Object::TcAction(_) => vec![],
            // A shared block's: every device it is bound to.
            Object::TcFilter(f) => f.devices(),
        };
        v.into_iter().filter(|&i| i != 0).collect()
    }

    /// iproute2-shaped JSON of the object (as `ip -j` / `bridge -j` print one entry).
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Object::Link(x) => x.to_json(),
            Object::Netconf(x) => x.to_json(),
            Object::Address(x) => x.to_json(),
            Object::Vlan(x) => x.to_json(),
            Object::Nexthop(x) => x.to_json(),
            Object::Neighbour(x) => x.to_json(),
            Object::Fdb(x) => x.to_json(),
            Object::Mdb(x) => x.to_json(),
            Object::Route(x) => x.to_json(),
            Object::Rule(x) => x.to_json(),
            Object::NfChain(x) => x.to_json(),
            Object::NfFlowtable(x) => x.to_json(),
            Object::Flow(x) => x.to_json(),
            Object::Qdisc(x) => x.to_json(),
            Object::TcClass(x) => x.to_json(),
            Object::TcAction(x) => x.to_json(),
            Object::TcFilter(x) => x.to_json(),
        }
    }
}

macro_rules! from_kind {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Object {
            fn from(x: $t) -> Object { Object::$v(x) }
        }
    )*};
}
from_kind!(Link => Link, Netconf => Netconf, Address => Address, BridgeVlan => Vlan,
    Nexthop => Nexthop, Neighbour => Neighbour, FdbEntry => Fdb, MdbEntry => Mdb,
    Route => Route, Rule => Rule, NfChain => NfChain, NfFlowtable => NfFlowtable, Flow => Flow,
    Qdisc => Qdisc, TcClass => TcClass, TcAction => TcAction, TcFilter => TcFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_roundtrip_names() {
        for &k in ObjectKind::ALL {
            assert_eq!(ObjectKind::from_name(k.name()), Some(k));
            assert_eq!(ObjectKind::from_name(k.plural()), Some(k));
        }
        assert_eq!(
            ObjectKind::from_name("neighbor"),
            Some(ObjectKind::Neighbour)
        );
    }

    #[test]
    fn route_key_ignores_legs_but_not_metric() {
        let dst: IpPrefix = "10.0.0.0/24".parse().unwrap();
        let a = Route::unicast(dst, vec![NextHop::via("10.1.0.1".parse().unwrap(), 3)]);
        let mut b = a.clone();
        b.nexthops = vec![NextHop::via("10.2.0.1".parse().unwrap(), 4)].into();
        assert_eq!(Object::Route(a.clone()).key(), Object::Route(b).key());
        let mut c = a.clone();
        c.metric = 100;
        assert_ne!(Object::Route(a).key(), Object::Route(c).key());
    }

    #[test]
    fn device_routes_on_two_devices_are_two_objects() {
        let dst: IpPrefix = "fe80::/64".parse().unwrap();
        let leg = |i| NextHop {
            gateway: ROption::RNone,
            ..NextHop::via("fe80::1".parse().unwrap(), i)
        };
        let a = Route::unicast(dst, vec![leg(2)]);
        let b = Route::unicast(dst, vec![leg(3)]);
        assert_ne!(Object::Route(a).key(), Object::Route(b).key());
    }

    #[cfg(feature = "json")]
    #[test]
    fn route_json_uses_iproute2_names() {
        let dst: IpPrefix = "10.0.0.0/24".parse().unwrap();
        let mut nh = NextHop::via("10.1.0.1".parse().unwrap(), 3);
        nh.dev = "veth0".into();
        let r = Route::unicast(dst, vec![nh]);
        let j = r.to_json();
        assert_eq!(j["dst"], "10.0.0.0/24");
        assert_eq!(j["gateway"], "10.1.0.1");
        assert_eq!(j["dev"], "veth0");
        assert_eq!(j["table"], "main");
        assert_eq!(j["protocol"], "static");
        assert_eq!(j["scope"], "global");
    }
}
