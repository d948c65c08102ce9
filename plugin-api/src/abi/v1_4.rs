//! The boundary of API 1.4: the crate's own types (1.4 is the newest minor).
//!
//! The first minor that changes one of them replaces its re-export here by a frozen copy of
//! the 1.4 definition, as `v1_0` to `v1_3` show, and the freeze check (against
//! `plugin-api/abi/v1.4.layout`) proves the copy is what 1.4 shipped.

pub use crate::capability::{Capabilities, Features, FlowCapabilities, Limit, PortScope};
pub use crate::change::Change;
pub use crate::event::{NotifierEvent, NotifierKind};
pub use crate::host::{HostHandle, LogLevel, Request};
pub use crate::object::{Object, ObjectKey, ObjectKind, TcCapabilities};
pub use crate::outcome::Outcome;
pub use crate::plugin::{
    FfiPlugin_TO, ObjectCounters, ObjectStats, PluginBox, PluginInfo, PluginMod, PluginModRef,
    Stats,
};

/// The minor's number.
pub const MINOR: (u64, u64) = (1, 4);
