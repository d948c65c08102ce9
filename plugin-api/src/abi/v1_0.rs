//! The boundary of API 1.0: the root module, the plugin vtable and every type they reach.
//!
//! 1.1 added a variant to `Object` (the nftables kinds), so `Object`, `Change`, the `FfiPlugin`
//! vtable and `PluginMod` are frozen copies of their 1.0 definitions (same names, fields and
//! order: the freeze check against `plugin-api/abi/v1.0.layout` proves they are what 1.0
//! shipped); 1.2 appended a field to `Capabilities` (flows) and a variant to `Request`
//! (`ReleaseFlow`), so they, the `HostServices` vtable and `HostHandle` are frozen copies too
//! (unchanged in 1.1: `v1_1` re-exports them); 1.4 added a variant to `Outcome` (an
//! unsupported with its reason), so `Outcome` is a frozen copy too (unchanged in 1.1 to 1.3:
//! their snapshots re-export it); everything else is re-exported. [`change`] converts a change
//! of the newest minor into these types, `None` for kinds 1.0 does not have; [`capabilities`],
//! [`host`] and [`outcome`] convert the other way and back.

#![allow(non_local_definitions)] // emitted by abi_stable's #[sabi_trait] on recent rustc

pub use crate::capability::{Features, Limit, PortScope};
pub use crate::event::{NotifierEvent, NotifierKind};
pub use crate::host::LogLevel;
use crate::object::IpAddress;
pub use crate::object::{
    Address, BridgeVlan, Family, FdbEntry, Link, MdbEntry, Neighbour, Netconf, Nexthop, ObjectKind,
    Route, Rule,
};
pub use crate::plugin::{PluginInfo, Stats};

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, StableAbi};

/// The minor's number.
pub const MINOR: (u64, u64) = (1, 0);

/// `Outcome` as 1.0 (and 1.1 to 1.3) defined it.
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Outcome {
    Offloaded,
    Unsupported,
    Trapped,
    Failed(RString),
}

/// An outcome of a 1.0 to 1.3 plugin in the newest minor's types (an unsupported without a
/// reason: those minors cannot give one).
pub fn outcome(o: Outcome) -> crate::Outcome {
    match o {
        Outcome::Offloaded => crate::Outcome::Offloaded,
        Outcome::Unsupported => crate::Outcome::Unsupported,
        Outcome::Trapped => crate::Outcome::Trapped,
        Outcome::Failed(r) => crate::Outcome::Failed(r),
    }
}

/// `Capabilities` as 1.0 (and 1.1) defined it.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct Capabilities {
    pub kinds: RVec<ObjectKind>,
    pub families: RVec<Family>,
    pub notifiers: RVec<NotifierKind>,
    pub ports: PortScope,
    pub limits: RVec<Limit>,
    pub features: Features,
}

/// Capabilities of a 1.0 or 1.1 plugin in the newest minor's types (fields added since empty:
/// no flows).
pub fn capabilities(c: Capabilities) -> crate::Capabilities {
    // Exhaustive: a field added to the frozen copy would be a mistake.
    let Capabilities {
        kinds,
        families,
        notifiers,
        ports,
        limits,
        features,
    } = c;
    crate::Capabilities {
        kinds,
        families,
        notifiers,
        ports,
        limits,
        features,
        ..Default::default()
    }
}

/// `Request` as 1.0 (and 1.1) defined it.
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Request {
    ResolveNeighbour { ifindex: u32, addr: IpAddress },
}

/// A request of a 1.0 or 1.1 plugin in the newest minor's types.
pub fn request(r: Request) -> crate::Request {
    match r {
        Request::ResolveNeighbour { ifindex, addr } => {
            crate::Request::ResolveNeighbour { ifindex, addr }
        }
    }
}

/// The host's services as 1.0 (and 1.1) defined them.
#[sabi_trait]
pub trait HostServices: Send + Sync + Clone {
    fn request(&self, req: Request) -> RResult<(), RString>;
    fn netns(&self) -> RString {
        RString::new()
    }
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, message: RStr<'_>);
}

/// The host handle as 1.0 (and 1.1) plugins hold it.
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

/// The host's handle as a 1.0 or 1.1 plugin takes it: its calls forwarded to `h`.
pub fn host(h: crate::HostHandle) -> HostHandle {
    HostServices_TO::from_ptr(RArc::new(Forward(h)), abi_stable::sabi_trait::TD_Opaque)
}

/// `Object` as 1.0 defined it.
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
}

/// `Change` as 1.0 defined it.
#[allow(clippy::large_enum_variant)]
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub enum Change {
    Add(Object),
    Update { old: Object, new: Object },
    Remove(Object),
}

/// The plugin vtable as 1.0 defined it.
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

/// A 1.0 plugin behind the ABI.
pub type PluginBox = FfiPlugin_TO<'static, RBox<()>>;

/// The root module as 1.0 defined it.
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
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}

/// An object of the newest minor as 1.0 sees it; `None` for kinds 1.0 does not have.
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
        // Added in 1.1.
        O::NfChain(_) | O::NfFlowtable(_) => return None,
        // Added in 1.2.
        O::Flow(_) => return None,
        // Added in 1.3.
        O::Qdisc(_) | O::TcClass(_) | O::TcAction(_) | O::TcFilter(_) => return None,
    })
}

/// A change of the newest minor as 1.0 sees it; `None` when its kind is not in 1.0.
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
    use crate::object::{NextHop, NfChain};

    #[test]
    fn changes_convert_and_new_kinds_are_dropped() {
        let r = Route::unicast(
            "10.0.0.0/8".parse().unwrap(),
            vec![NextHop::via("10.1.0.1".parse().unwrap(), 2)],
        );
        let c = crate::Change::Add(crate::Object::Route(r.clone()));
        assert_eq!(change(&c), Some(Change::Add(Object::Route(r))));
        let nf = crate::Change::Add(crate::Object::NfChain(NfChain::default()));
        assert_eq!(change(&nf), None);
    }

    #[test]
    fn outcomes_convert_back() {
        assert_eq!(outcome(Outcome::Unsupported), crate::Outcome::Unsupported);
        assert_eq!(outcome(Outcome::Trapped), crate::Outcome::Trapped);
        assert_eq!(
            outcome(Outcome::Failed("full".into())),
            crate::Outcome::failed("full")
        );
    }
}
