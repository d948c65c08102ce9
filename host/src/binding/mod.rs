//! A loaded plugin as the dispatcher drives it, whatever API minor it was built against.
//!
//! The dispatcher speaks the host's own (newest) API. A plugin of the host's minor is driven
//! [natively](native): the calls cross as they are. A plugin of an older minor of the same
//! major is driven through the frozen types of its minor (`ekho_plugin_api::abi::v1_N`), the
//! changes converted into them before each call, its capabilities, outcomes and stats
//! converted back: one module here per supported older minor, each made by `converted!`
//! (`converted.rs`). Which one is chosen by
//! [`ekho_plugin_api::version::verdict`].

#[macro_use]
mod converted;
mod native;
mod v1_0;
mod v1_1;
mod v1_2;
mod v1_3;

use abi_stable::library::LibHeader;
use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use ekho_plugin_api::plugin::{ObjectStats, PluginInfo};
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::version::Verdict;
use ekho_plugin_api::HostHandle;

/// The calls of the plugin ABI, in the host's types. Errors are the plugin's panic message or
/// a broken promise (as many outcomes as changes).
pub trait Binding: Send {
    fn capabilities(&self) -> RResult<Capabilities, RString>;
    fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString>;
    fn notify(&mut self, events: RSlice<'_, NotifierEvent>) -> RResult<(), RString>;
    fn begin_sync(&mut self) -> RResult<(), RString>;
    fn end_sync(&mut self) -> RResult<(), RString>;
    fn stats(&self) -> RResult<Stats, RString>;
    /// Per-object counters (API 1.2; plugins of older minors have none).
    fn object_stats(&self, kind: ObjectKind) -> RResult<RVec<ObjectStats>, RString>;
    fn shutdown(&mut self) -> RResult<(), RString>;
}

/// A created plugin, ready for the dispatcher.
pub type Bound = Box<dyn Binding>;

/// How a plugin is driven.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum How {
    /// Built against the host's minor: the calls cross as they are.
    Native,
    /// Built against an older minor: changes converted into its frozen types.
    Converted { minor: (u64, u64) },
}

impl How {
    /// `native`, or `converted from 1.0`.
    pub fn describe(self) -> String {
        match self {
            How::Native => "native".into(),
            How::Converted { minor: (a, b) } => format!("converted from {a}.{b}"),
        }
    }
}

/// A plugin library's root module, of whichever minor it was built against.
pub enum Module {
    Native(ekho_plugin_api::plugin::PluginModRef),
    V1_0(ekho_plugin_api::abi::v1_0::PluginModRef),
    V1_1(ekho_plugin_api::abi::v1_1::PluginModRef),
    V1_2(ekho_plugin_api::abi::v1_2::PluginModRef),
    V1_3(ekho_plugin_api::abi::v1_3::PluginModRef),
}

impl Module {
    /// Checks the library's layout against the snapshot of its minor (abi_stable's equality
    /// check) and initialises its root module. `verdict` comes from the version pre-flight.
    pub fn load(
        header: &'static LibHeader,
        verdict: Verdict,
    ) -> Result<Module, abi_stable::library::LibraryError> {
        match verdict {
            Verdict::Native => native::load(header).map(Module::Native),
            Verdict::Converted { minor: (1, 0) } => v1_0::load(header).map(Module::V1_0),
            Verdict::Converted { minor: (1, 1) } => v1_1::load(header).map(Module::V1_1),
            Verdict::Converted { minor: (1, 2) } => v1_2::load(header).map(Module::V1_2),
            Verdict::Converted { minor: (1, 3) } => v1_3::load(header).map(Module::V1_3),
            // A minor this host has no snapshot of cannot pass the pre-flight.
            other => unreachable!("pre-flight lets {other:?} through"),
        }
    }

    /// The plugin's name and version, without creating it.
    pub fn info(&self) -> PluginInfo {
        match self {
            Module::Native(m) => (m.info())(),
            Module::V1_0(m) => (m.info())(),
            Module::V1_1(m) => (m.info())(),
            Module::V1_2(m) => (m.info())(),
            Module::V1_3(m) => (m.info())(),
        }
    }

    /// Creates the plugin with its configuration (TOML text).
    pub fn create(&self, config: &str, host: HostHandle) -> Result<Bound, String> {
        match self {
            Module::Native(m) => native::create(*m, config, host),
            Module::V1_0(m) => v1_0::create(*m, config, host),
            Module::V1_1(m) => v1_1::create(*m, config, host),
            Module::V1_2(m) => v1_2::create(*m, config, host),
            Module::V1_3(m) => v1_3::create(*m, config, host),
        }
    }

    pub fn how(&self) -> How {
        match self {
            Module::Native(_) => How::Native,
            Module::V1_0(_) => How::Converted { minor: (1, 0) },
            Module::V1_1(_) => How::Converted { minor: (1, 1) },
            Module::V1_2(_) => How::Converted { minor: (1, 2) },
            Module::V1_3(_) => How::Converted { minor: (1, 3) },
        }
    }
}

/// The minors this host drives: its own natively, older ones of its major through their
/// snapshots.
pub fn supported(verdict: Verdict) -> bool {
    matches!(
        verdict,
        Verdict::Native
            | Verdict::Converted {
                minor: (1, 0) | (1, 1) | (1, 2) | (1, 3)
            }
    )
}
