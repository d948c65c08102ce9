//! Change records: what the host hands a plugin.

use crate::object::{Object, ObjectKey, ObjectKind};
use abi_stable::StableAbi;

/// One change to one object.
// Kept unboxed: this is an ABI type handed across the plugin boundary in slices.
#[allow(clippy::large_enum_variant)]
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub enum Change {
    /// A new object.
    Add(Object),
    /// An object changed; `old` is the version the plugin was given last.
    Update { old: Object, new: Object },
    /// An object is gone; this is the version the plugin was given last.
    Remove(Object),
}

impl Change {
    /// The object as it is after the change (for a removal, as it was).
    pub fn object(&self) -> &Object {
        match self {
            Change::Add(o) | Change::Remove(o) => o,
            Change::Update { new, .. } => new,
        }
    }
    /// The identity of the changed object.
    pub fn key(&self) -> ObjectKey {
        self.object().key()
    }
    /// The kind of the changed object.
    pub fn kind(&self) -> ObjectKind {
        self.object().kind()
    }
    /// `add`, `update` or `remove`.
    pub fn op(&self) -> &'static str {
        match self {
            Change::Add(_) => "add",
            Change::Update { .. } => "update",
            Change::Remove(_) => "remove",
        }
    }

    /// The change as one JSON record, the shape `ekho monitor --json` and the recorder print:
    /// `{"op": "update", "kind": "route", "object": {...}, "old": {...}}` (`old` for updates
    /// only), objects as `ip -j` prints them ([`Object::to_json`]).
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "op": self.op(),
            "kind": self.kind().name(),
            "object": self.object().to_json(),
        });
        if let Change::Update { old, .. } = self {
            v["old"] = old.to_json();
        }
        v
    }
}
