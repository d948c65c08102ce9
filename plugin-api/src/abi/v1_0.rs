//! The boundary of API 1.0: the root module, the plugin vtable and every type they reach.
//!
//! While 1.0 is the newest minor this module names the crate's own types. The first minor
//! that changes one of them replaces its re-export here by a frozen copy of the 1.0
//! definition (same name, fields and order), and the freeze check
//! (`plugin-api/tests/abi_freeze.rs` against `plugin-api/abi/v1.0.layout`) proves the copy is
//! what 1.0 shipped.

pub use crate::capability::{Capabilities, Features, Limit, PortScope};
pub use crate::change::Change;
pub use crate::event::{NotifierEvent, NotifierKind};
pub use crate::host::{HostHandle, LogLevel, Request};
pub use crate::object::{Object, ObjectKind};
pub use crate::outcome::Outcome;
pub use crate::plugin::{FfiPlugin_TO, PluginBox, PluginInfo, PluginMod, PluginModRef, Stats};

/// The minor's number.
pub const MINOR: (u64, u64) = (1, 0);
