//! The boundary of API 1.3.
//!
//! 1.4 added a variant to `Outcome` (an unsupported with its reason), so the `FfiPlugin`
//! vtable (whose `apply` returns outcomes) and `PluginMod` are frozen copies of their 1.3
//! definitions (the freeze check against `plugin-api/abi/v1.3.layout` proves they are what 1.3
//! shipped) and `Outcome` is 1.0's (unchanged in 1.1 to 1.3); everything else is re-exported:
//! `Object`, `Change`, `Capabilities`, `ObjectKey` and its carriers are the crate's own, so
//! [`change`], [`capabilities`] and [`host`] hand them over as they are, and [`outcome`]
//! converts what the plugin answers.

#![allow(non_local_definitions)] // emitted by abi_stable's #[sabi_trait] on recent rustc

pub use super::v1_0::{outcome, Outcome};
pub use crate::capability::{Capabilities, Features, FlowCapabilities, Limit, PortScope};
pub use crate::change::Change;
pub use crate::event::{NotifierEvent, NotifierKind};
pub use crate::host::{HostHandle, LogLevel, Request};
pub use crate::object::{Object, ObjectKey, ObjectKind, TcCapabilities};
pub use crate::plugin::{ObjectCounters, ObjectStats, PluginInfo, Stats};

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, StableAbi};

/// The minor's number.
pub const MINOR: (u64, u64) = (1, 3);

/// The plugin vtable as 1.3 defined it.
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

/// A 1.3 plugin behind the ABI.
pub type PluginBox = FfiPlugin_TO<'static, RBox<()>>;

/// The root module as 1.3 defined it.
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
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.3.0");
}

/// Capabilities of a 1.3 plugin: the newest minor's type (unchanged since 1.3).
pub fn capabilities(c: Capabilities) -> crate::Capabilities {
    c
}

/// The host's handle as a 1.3 plugin takes it: the newest minor's (unchanged since 1.3).
pub fn host(h: crate::HostHandle) -> HostHandle {
    h
}

/// A change of the newest minor as 1.3 sees it: every kind is 1.3's, so always `Some` (a copy:
/// the host's batch stays its own).
pub fn change(c: &crate::Change) -> Option<Change> {
    Some(c.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_1_3_have_no_reason() {
        // A 1.3 plugin's bare unsupported stays bare; it cannot give the 1.4 variant.
        assert_eq!(outcome(Outcome::Unsupported), crate::Outcome::Unsupported);
        assert_eq!(outcome(Outcome::Offloaded).reason(), None);
    }
}
