//! # ekho-plugin-api: the ekho vendor SDK
//!
//! ekho mirrors the Linux kernel's networking state (links, addresses, routes, nexthops,
//! neighbours, bridge FDB/VLAN/MDB, rules, netconf) from netlink, captures kernel notifier events
//! with eBPF, and hands both to offload backends: shared-object plugins built against this crate.
//! A plugin sees a stream of [`Change`]s (add / update / remove) for the object kinds, families and
//! ports it declares in its [`Capabilities`], and answers each with an [`Outcome`] (offloaded,
//! unsupported, trapped, failed with a reason) — the same words the kernel's offload flags use.
//!
//! ## Writing a plugin
//! A plugin is a `cdylib` crate that depends on this crate alone:
//!
//! ```toml
//! [package]
//! name = "acme-asic"
//! version = "1.0.0"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! ekho-plugin-api = "0.1"
//!
//! [profile.release]
//! panic = "unwind"   # required: panics are caught at the boundary, never abort the host
//! ```
//!
//! and implements [`Plugin`]:
//!
//! ```
//! use ekho_plugin_api::prelude::*;
//!
//! struct Acme { routes: std::collections::HashMap<ObjectKey, Route> }
//!
//! impl Plugin for Acme {
//!     fn create(_ctx: CreateContext) -> Result<Self, String> {
//!         Ok(Acme { routes: Default::default() })
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::new()
//!             .kinds([ObjectKind::Route])
//!             .families([Family::INET])
//!             .port_names(["swp*"])
//!     }
//!     fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
//!         changes.iter().map(|c| match c {
//!             Change::Add(Object::Route(r)) | Change::Update { new: Object::Route(r), .. } => {
//!                 self.routes.insert(c.key(), r.clone());
//!                 Outcome::Offloaded
//!             }
//!             Change::Remove(o) => {
//!                 self.routes.remove(&o.key());
//!                 Outcome::Offloaded
//!             }
//!             _ => Outcome::Unsupported,
//!         }).collect()
//!     }
//! }
//!
//! ekho_plugin_api::declare_plugin!(Acme);
//! # fn main() {}
//! ```
//!
//! `examples/hello-vendor` in the ekho repository is a complete, commented template with a
//! configuration table and a capacity limit.
//!
//! ## Configuration
//! The operator enables the plugin in the host's TOML config; the `[plugins.config]` table reaches
//! [`Plugin::create`] verbatim as TOML text ([`CreateContext::config`]):
//!
//! ```toml
//! [[plugins]]
//! name = "acme-asic"            # file: <plugin_dir>/libacme_asic.so (or set `path`)
//! version = "^1.0"              # optional requirement on the plugin's own version
//! ports = ["swp*"]              # optional: overrides the plugin's declared port scope
//! [plugins.config]
//! device = "/dev/acme0"
//! ```
//!
//! ## Build, self-check, install
//! ```sh
//! cargo build --release                      # target/release/libacme_asic.so
//! ekho check-plugin target/release/libacme_asic.so   # ABI, versions, capabilities, or why refused
//! cp target/release/libacme_asic.so /usr/lib/ekho/plugins/   # the host's plugin_dir
//! ```
//!
//! ## Contract
//! - Calls come from one thread per plugin, never concurrently. A slow plugin never slows the
//!   kernel or other plugins: the host coalesces its queue per object (add then remove cancels,
//!   many updates collapse into the last), so the plugin always converges to the latest state.
//! - At start (and after the host restarts), the plugin gets the whole state as additions between
//!   [`Plugin::begin_sync`] and [`Plugin::end_sync`]. A plugin keeping hardware state across host
//!   restarts removes at `end_sync` what it was not given (mark and sweep).
//! - Within a batch, dependencies come first (links, then addresses, nexthops, routes...);
//!   removals come in reverse order.
//! - A panic is caught at the boundary; the host marks the plugin `failed` and stops calling it.
//!
//! ## Versioning
//! See [`version`]: the host reads the exported `EKHO_PLUGIN_API_VERSION` symbol before loading
//! and accepts plugins built against the same compatible range (`^0.MINOR` while 0.x).

#![allow(non_local_definitions)] // emitted by abi_stable's #[sabi_trait] on recent rustc

pub mod capability;
pub mod change;
pub mod event;
pub mod host;
pub mod object;
pub mod outcome;
pub mod plugin;
pub mod version;

pub use abi_stable;
pub use capability::{Capabilities, Features, Limit, PortScope};
pub use change::Change;
pub use event::{NotifierEvent, NotifierKind};
pub use host::{DetachedHost, HostHandle, HostServices, LogLevel, Request};
pub use object::{Object, ObjectKey, ObjectKind};
pub use outcome::Outcome;
pub use plugin::{Counter, CreateContext, Plugin, PluginInfo, Stats};

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::capability::{Capabilities, Features, Limit, PortScope};
    pub use crate::change::Change;
    pub use crate::event::{NotifierEvent, NotifierKind};
    pub use crate::host::{HostHandle, HostServices, LogLevel, Request};
    pub use crate::object::*;
    pub use crate::outcome::Outcome;
    pub use crate::plugin::{CreateContext, Plugin, PluginInfo, Stats};
    pub use abi_stable::std_types::{ROption, RString, RVec};
}
