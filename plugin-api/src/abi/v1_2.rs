//! The boundary of API 1.2.
//!
//! 1.3 added the tc kinds (four `Object` and `ObjectKey` variants) and a field to
//! `Capabilities` (`tc`), so `Object`, `Change`, `Capabilities`, `ObjectKey` and what carries
//! it (`ObjectStats`, `Request`, the `HostServices` vtable, the host handle), the `FfiPlugin`
//! vtable and `PluginMod` are frozen copies of their 1.2 definitions (the freeze check against
//! `plugin-api/abi/v1.2.layout` proves they are what 1.2 shipped); `Outcome` is 1.0's
//! (unchanged until 1.4); everything else is re-exported. [`change`] converts a change of the
//! newest minor into these types, `None` for kinds 1.2 does not have; [`capabilities`],
//! [`object_stats`], [`request`], [`host`] and [`outcome`] convert the other way and back.

#![allow(non_local_definitions)] // emitted by abi_stable's #[sabi_trait] on recent rustc

pub use super::v1_0::{outcome, Outcome};
pub use crate::capability::{Features, FlowCapabilities, Limit, PortScope};
pub use crate::event::{NotifierEvent, NotifierKind};
pub use crate::host::LogLevel;
pub use crate::object::{
    Address, BridgeVlan, FdbEntry, Flow, Link, MdbEntry, Neighbour, Netconf, Nexthop, NfChain,
    NfFlowtable, ObjectKind, Route, Rule,
};
use crate::object::{Family, FlowTuple, IpAddress, IpPrefix, LinkAddr, NfFamily};
pub use crate::plugin::{ObjectCounters, PluginInfo, Stats};

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, StableAbi};

/// The minor's number.
pub const MINOR: (u64, u64) = (1, 2);

/// `Capabilities` as 1.2 defined it.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct Capabilities {
    pub kinds: RVec<ObjectKind>,
    pub families: RVec<Family>,
    pub notifiers: RVec<NotifierKind>,
    pub ports: PortScope,
    pub limits: RVec<Limit>,
    pub features: Features,
    pub flows: FlowCapabilities,
}

/// Capabilities of a 1.2 plugin in the newest minor's types (fields added since empty: no tc
/// filter).
pub fn capabilities(c: Capabilities) -> crate::Capabilities {
    // Exhaustive: a field added to the frozen copy would be a mistake.
    let Capabilities {
        kinds,
        families,
        notifiers,
        ports,
        limits,
        features,
        flows,
    } = c;
    crate::Capabilities {
        kinds,
        families,
        notifiers,
        ports,
        limits,
        features,
        flows,
        ..Default::default()
    }
}

/// `ObjectKey` as 1.2 defined it.
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
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
}

/// A key of a 1.2 plugin in the newest minor's types.
pub fn key(k: ObjectKey) -> crate::ObjectKey {
    use ObjectKey as K;
    match k {
        K::Link { ifindex } => crate::ObjectKey::Link { ifindex },
        K::Netconf { family, ifindex } => crate::ObjectKey::Netconf { family, ifindex },
        K::Address {
            family,
            ifindex,
            local,
            prefixlen,
        } => crate::ObjectKey::Address {
            family,
            ifindex,
            local,
            prefixlen,
        },
        K::Vlan { ifindex, vid } => crate::ObjectKey::Vlan { ifindex, vid },
        K::Nexthop { id } => crate::ObjectKey::Nexthop { id },
        K::Neighbour {
            family,
            ifindex,
            dst,
            proxy,
        } => crate::ObjectKey::Neighbour {
            family,
            ifindex,
            dst,
            proxy,
        },
        K::Fdb {
            owner,
            mac,
            vlan,
            vni,
            dst,
        } => crate::ObjectKey::Fdb {
            owner,
            mac,
            vlan,
            vni,
            dst,
        },
        K::Mdb {
            bridge,
            port,
            group,
            mac_group,
            vid,
            source,
        } => crate::ObjectKey::Mdb {
            bridge,
            port,
            group,
            mac_group,
            vid,
            source,
        },
        K::Route {
            family,
            table,
            dst,
            src,
            tos,
            metric,
            dev,
        } => crate::ObjectKey::Route {
            family,
            table,
            dst,
            src,
            tos,
            metric,
            dev,
        },
        K::Rule {
            family,
            priority,
            selector,
        } => crate::ObjectKey::Rule {
            family,
            priority,
            selector,
        },
        K::NfChain {
            family,
            table,
            name,
        } => crate::ObjectKey::NfChain {
            family,
            table,
            name,
        },
        K::NfFlowtable {
            family,
            table,
            name,
        } => crate::ObjectKey::NfFlowtable {
            family,
            table,
            name,
        },
        K::Flow {
            family,
            protocol,
            zone,
            original,
        } => crate::ObjectKey::Flow {
            family,
            protocol,
            zone,
            original,
        },
    }
}

/// `ObjectStats` as 1.2 defined it.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct ObjectStats {
    pub key: ObjectKey,
    pub counters: RVec<ObjectCounters>,
}

/// Object stats of a 1.2 plugin in the newest minor's types.
pub fn object_stats(s: ObjectStats) -> crate::ObjectStats {
    crate::ObjectStats {
        key: key(s.key),
        counters: s.counters,
    }
}

/// `Request` as 1.2 defined it.
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Request {
    ResolveNeighbour { ifindex: u32, addr: IpAddress },
    ReleaseFlow { key: ObjectKey },
}

/// A request of a 1.2 plugin in the newest minor's types.
pub fn request(r: Request) -> crate::Request {
    match r {
        Request::ResolveNeighbour { ifindex, addr } => {
            crate::Request::ResolveNeighbour { ifindex, addr }
        }
        Request::ReleaseFlow { key: k } => crate::Request::ReleaseFlow { key: key(k) },
    }
}

/// The host's services as 1.2 defined them.
#[sabi_trait]
pub trait HostServices: Send + Sync + Clone {
    fn request(&self, req: Request) -> RResult<(), RString>;
    fn netns(&self) -> RString {
        RString::new()
    }
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, message: RStr<'_>);
}

/// The host handle as 1.2 plugins hold it.
pub type HostHandle = HostServices_TO<'static, RArc<()>>;

#[derive(Clone)]
struct Forward(crate::HostHandle);

impl HostServices for Forward {
    fn request(&self, req: Request) -> RResult<(), RString> {
        self.0.request(request(req))
    }
    fn netns(&self) -> RString {
        self.0.netns()
    }
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        self.0.log(level, message)
    }
}

/// The host's handle as a 1.2 plugin takes it: its calls forwarded to `h`.
pub fn host(h: crate::HostHandle) -> HostHandle {
    HostServices_TO::from_ptr(RArc::new(Forward(h)), abi_stable::sabi_trait::TD_Opaque)
}

/// `Object` as 1.2 defined it.
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
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
    NfChain(NfChain),
    NfFlowtable(NfFlowtable),
    Flow(Flow),
}

/// `Change` as 1.2 defined it.
#[allow(clippy::large_enum_variant)]
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub enum Change {
    Add(Object),
    Update { old: Object, new: Object },
    Remove(Object),
}

/// The plugin vtable as 1.2 defined it.
#[sabi_trait]
pub trait FfiPlugin: Send {
    fn capabilities(&self) -> RResult<Capabilities, RString>;
    fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString>;
    fn notify(&mut self, events: RSlice<'_, NotifierEvent>) -> RResult<(), RString>;
    fn begin_sync(&mut self) -> RResult<(), RString>;
    fn end_sync(&mut self) -> RResult<(), RString>;
    fn stats(&self) -> RResult<Stats, RString>;
    fn object_stats(&self, kind: ObjectKind) -> RResult<RVec<ObjectStats>, RString>;
    #[sabi(last_prefix_field)]
    fn shutdown(&mut self) -> RResult<(), RString>;
}

/// A 1.2 plugin behind the ABI.
pub type PluginBox = FfiPlugin_TO<'static, RBox<()>>;

/// The root module as 1.2 defined it.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    pub info: extern "C" fn() -> PluginInfo,
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(config: RStr<'_>, host: HostHandle) -> RResult<PluginBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "ekho_plugin";
    const NAME: &'static str = "ekho_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.2.0");
}

/// An object of the newest minor as 1.2 sees it; `None` for kinds 1.2 does not have.
pub fn object(o: &crate::Object) -> Option<Object> {
    use crate::Object as O;
    Some(match o {
        O::Link(x) => Object::Link(x.clone()),
        O::Netconf(x) => Object::Netconf(x.clone()),
        O::Address(x) => Object::Address(x.clone()),
        O::Vlan(x) => Object::Vlan(x.clone()),
        O::Nexthop(x) => Object::Nexthop(x.clone()),
        O::Neighbour(x) => Object::Neighbour(x.clone()),
        O::Fdb(x) => Object::Fdb(x.clone()),
        O::Mdb(x) => Object::Mdb(x.clone()),
        O::Route(x) => Object::Route(x.clone()),
        O::Rule(x) => Object::Rule(x.clone()),
        O::NfChain(x) => Object::NfChain(x.clone()),
        O::NfFlowtable(x) => Object::NfFlowtable(x.clone()),
        O::Flow(x) => Object::Flow(x.clone()),
        // Added in 1.3.
        O::Qdisc(_) | O::TcClass(_) | O::TcAction(_) | O::TcFilter(_) => return None,
    })
}

/// A change of the newest minor as 1.2 sees it; `None` when its kind is not in 1.2.
pub fn change(c: &crate::Change) -> Option<Change> {
    use crate::Change as C;
    Some(match c {
        C::Add(o) => Change::Add(object(o)?),
        C::Update { old, new } => Change::Update {
            old: object(old)?,
            new: object(new)?,
        },
        C::Remove(o) => Change::Remove(object(o)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{Qdisc, TcFilter};

    #[test]
    fn changes_convert_and_tc_kinds_are_dropped() {
        let a = |s: &str| s.parse().unwrap();
        let t = FlowTuple {
            src: a("10.0.0.1"),
            dst: a("10.0.0.2"),
            sport: 1,
            dport: 2,
        };
        let f = Flow::new(6, t, t);
        let c = crate::Change::Remove(crate::Object::Flow(f.clone()));
        assert_eq!(change(&c), Some(Change::Remove(Object::Flow(f))));
        for o in [
            crate::Object::Qdisc(Qdisc::default()),
            crate::Object::TcFilter(TcFilter::default()),
        ] {
            assert_eq!(change(&crate::Change::Add(o)), None);
        }
    }

    #[test]
    fn keys_and_capabilities_convert_back() {
        let k = ObjectKey::Nexthop { id: 7 };
        assert_eq!(key(k), crate::ObjectKey::Nexthop { id: 7 });
        let c = capabilities(Capabilities {
            kinds: vec![ObjectKind::Flow].into(),
            flows: FlowCapabilities {
                nat: true,
                protocols: vec![6].into(),
            },
            ..Default::default()
        });
        assert!(c.flows.nat && c.takes_kind(ObjectKind::Flow));
        assert_eq!(c.tc, crate::object::TcCapabilities::default());
    }
}
