//! The boundary of API 1.1.
//!
//! 1.2 added a variant to `Object` (conntrack flows) and a method to the vtable
//! (`object_stats`), so `Object`, `Change`, the `FfiPlugin` vtable and `PluginMod` are frozen
//! copies of their 1.1 definitions (the freeze check against `plugin-api/abi/v1.1.layout`
//! proves they are what 1.1 shipped); `Capabilities`, `Request` and the host handle are 1.0's
//! (unchanged in 1.1), and so is `Outcome` (unchanged until 1.4); everything else is
//! re-exported. [`change`] converts a change of the newest minor into these types, `None` for
//! kinds 1.1 does not have.

#![allow(non_local_definitions)] // emitted by abi_stable's #[sabi_trait] on recent rustc

pub use super::v1_0::{
    capabilities, host, outcome, request, Capabilities, HostHandle, HostServices, HostServices_TO,
    Outcome, Request,
};
pub use crate::capability::{Features, Limit, PortScope};
pub use crate::event::{NotifierEvent, NotifierKind};
pub use crate::host::LogLevel;
pub use crate::object::{
    Address, BridgeVlan, FdbEntry, Link, MdbEntry, Neighbour, Netconf, Nexthop, NfChain,
    NfFlowtable, ObjectKind, Route, Rule,
};
pub use crate::plugin::{PluginInfo, Stats};

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, StableAbi};

/// The minor's number.
pub const MINOR: (u64, u64) = (1, 1);

/// `Object` as 1.1 defined it.
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
}

/// `Change` as 1.1 defined it.
#[allow(clippy::large_enum_variant)]
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub enum Change {
    Add(Object),
    Update { old: Object, new: Object },
    Remove(Object),
}

/// The plugin vtable as 1.1 defined it.
#[sabi_trait]
pub trait FfiPlugin: Send {
    fn capabilities(&self) -> RResult<Capabilities, RString>;
    fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString>;
    fn notify(&mut self, events: RSlice<'_, NotifierEvent>) -> RResult<(), RString>;
    fn begin_sync(&mut self) -> RResult<(), RString>;
    fn end_sync(&mut self) -> RResult<(), RString>;
    fn stats(&self) -> RResult<Stats, RString>;
    #[sabi(last_prefix_field)]
    fn shutdown(&mut self) -> RResult<(), RString>;
}

/// A 1.1 plugin behind the ABI.
pub type PluginBox = FfiPlugin_TO<'static, RBox<()>>;

/// The root module as 1.1 defined it.
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
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.1.0");
}

/// An object of the newest minor as 1.1 sees it; `None` for kinds 1.1 does not have.
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
        // Added in 1.2.
        O::Flow(_) => return None,
        // Added in 1.3.
        O::Qdisc(_) | O::TcClass(_) | O::TcAction(_) | O::TcFilter(_) => return None,
    })
}

/// A change of the newest minor as 1.1 sees it; `None` when its kind is not in 1.1.
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
    use crate::object::{Flow, FlowTuple};

    #[test]
    fn changes_convert_and_flows_are_dropped() {
        let nf = crate::Change::Add(crate::Object::NfChain(NfChain::default()));
        assert_eq!(
            change(&nf),
            Some(Change::Add(Object::NfChain(NfChain::default())))
        );
        let a = |s: &str| s.parse().unwrap();
        let t = FlowTuple {
            src: a("10.0.0.1"),
            dst: a("10.0.0.2"),
            sport: 1,
            dport: 2,
        };
        let f = crate::Change::Remove(crate::Object::Flow(Flow::new(6, t, t)));
        assert_eq!(change(&f), None);
    }

    #[test]
    fn old_capabilities_take_no_flows() {
        let c = capabilities(Capabilities {
            kinds: vec![ObjectKind::Route, ObjectKind::Flow].into(),
            ..Default::default()
        });
        assert!(!c.flows.nat && c.flows.protocols.is_empty());
    }
}
