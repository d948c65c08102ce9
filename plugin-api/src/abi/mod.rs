//! The plugin boundary, one snapshot per API minor: how a plugin built against any 1.x keeps
//! running on a newer 1.y host.
//!
//! abi_stable checks at load time that every type crossing the boundary has the layout the host
//! expects, field for field. A host that knew only the newest types would refuse every plugin
//! built before a field was added. So the host keeps the boundary of every minor it supports:
//! module `v1_0` for 1.0, `v1_1` for 1.1, ..., `v1_4` for 1.4. Each snapshot re-exports what
//! did not change since and holds a frozen copy of what did. When it loads a plugin the host
//! reads the API version the plugin declares ([`version`](crate::version)), checks the plugin's
//! layout against *that* snapshot (abi_stable's safe equality check), and drives it through it:
//!
//! - a plugin of the host's own minor runs *native*: changes cross as they are;
//! - a plugin of an older minor runs *converted*: the host converts each change into the
//!   plugin's snapshot before the call (new fields dropped), and its capabilities, outcomes and
//!   stats back. Kinds the plugin's minor does not have never reach it: its capabilities cannot
//!   name them.
//!
//! Vendors never see this: they build against one version of this crate and use its top-level
//! types. Only the host and this crate's maintainers do.
//!
//! ## Making a minor release (maintainers)
//! 1. Make the change in the crate's types (a field appended, a kind added, ...) and bump the
//!    minor.
//! 2. For every type of the previous snapshots that changed *and every type containing it* up to
//!    the root module (`Route` changed: `Object`, `Change`, the `FfiPlugin` vtable and
//!    `PluginMod` change with it), replace the re-export in each older snapshot by a frozen
//!    copy, and write its conversion from the new type (and back, for what the plugin
//!    hands the host: capabilities, requests).
//! 3. Add the new snapshot module re-exporting the crate's types, its `.layout` file
//!    (`EKHO_ABI_BLESS=1 cargo test -p ekho-plugin-api --test abi_freeze` writes a missing one;
//!    it never rewrites an existing one) and the host's binding for the older minor (in ekho:
//!    `host/src/binding/v1_N.rs`, one `converted!` call).
//!
//! The freeze check fails when a snapshot's types no longer describe what its `.layout` file
//! holds, and `tests/rehearsal/` in the ekho repository rehearses exactly this procedure (the
//! next minor with a new kind and a new `Route` field) against the in-tree plugins built as
//! the current one.

pub mod layout;
pub mod v1_0;
pub mod v1_1;
pub mod v1_2;
pub mod v1_3;
pub mod v1_4;

/// One snapshot: its minor and the layout of its root module (from which the freeze check
/// describes every type crossing the boundary).
pub struct Snapshot {
    pub minor: (u64, u64),
    pub root: fn() -> &'static abi_stable::type_layout::TypeLayout,
}

/// Every snapshot this version of the crate has, oldest first.
pub const SNAPSHOTS: &[Snapshot] = &[
    Snapshot {
        minor: v1_0::MINOR,
        root: || <v1_0::PluginModRef as abi_stable::StableAbi>::LAYOUT,
    },
    Snapshot {
        minor: v1_1::MINOR,
        root: || <v1_1::PluginModRef as abi_stable::StableAbi>::LAYOUT,
    },
    Snapshot {
        minor: v1_2::MINOR,
        root: || <v1_2::PluginModRef as abi_stable::StableAbi>::LAYOUT,
    },
    Snapshot {
        minor: v1_3::MINOR,
        root: || <v1_3::PluginModRef as abi_stable::StableAbi>::LAYOUT,
    },
    Snapshot {
        minor: v1_4::MINOR,
        root: || <v1_4::PluginModRef as abi_stable::StableAbi>::LAYOUT,
    },
];
