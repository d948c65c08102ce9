//! The boundary of API 1.1: the crate's own types (1.1 is the newest minor).
//!
//! The first minor that changes one of them replaces its re-export here by a frozen copy of
//! the 1.1 definition, as `v1_0` shows, and the freeze check (against
//! `plugin-api/abi/v1.1.layout`) proves the copy is what 1.1 shipped.

pub use crate::capability::{Capabilities, Features, Limit, PortScope};
pub use crate::change::Change;
pub use crate::event::{NotifierEvent, NotifierKind};
pub use crate::host::{HostHandle, LogLevel, Request};
pub use crate::object::{Object, ObjectKind};
pub use crate::outcome::Outcome;
pub use crate::plugin::{FfiPlugin_TO, PluginBox, PluginInfo, PluginMod, PluginModRef, Stats};

/// The minor's number.
pub const MINOR: (u64, u64) = (1, 1);
