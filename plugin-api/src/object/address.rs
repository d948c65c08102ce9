//! Interface addresses (`RTM_NEWADDR`).

use super::net::{Family, IpAddress, Scope};
use abi_stable::std_types::{ROption, RString};
use abi_stable::StableAbi;

/// An IPv4 or IPv6 address on a device.
/// Identity: (`family`, `ifindex`, `local`, `prefixlen`).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Address {
    pub family: Family,
    pub ifindex: u32,
    /// Device name (filled by the host).
    pub dev: RString,
    pub local: IpAddress,
    pub prefixlen: u8,
    /// Peer address of a point-to-point address (`IFA_ADDRESS` when it differs from local).
    pub peer: ROption<IpAddress>,
    pub broadcast: ROption<IpAddress>,
    pub scope: Scope,
    /// `IFA_F_*` flags (secondary, nodad, dadfailed, deprecated, tentative, permanent, ...).
    pub flags: u32,
    pub label: RString,
    /// Lifetimes in seconds; `u32::MAX` is forever.
    pub valid_life: u32,
    pub preferred_life: u32,
}

impl Address {
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        const FLAGS: &[(u32, &str)] = &[
            (0x01, "secondary"),
            (0x02, "nodad"),
            (0x04, "optimistic"),
            (0x08, "dadfailed"),
            (0x10, "home"),
            (0x20, "deprecated"),
            (0x40, "tentative"),
            (0x100, "mngtmpaddr"),
            (0x200, "noprefixroute"),
            (0x400, "autojoin"),
            (0x800, "stable-privacy"),
        ];
        let mut m = serde_json::Map::new();
        m.insert("ifindex".into(), self.ifindex.into());
        m.insert("dev".into(), self.dev.as_str().into());
        m.insert("family".into(), self.family.name().into());
        m.insert("local".into(), self.local.to_string().into());
        if let Some(p) = self.peer.as_ref().into_option() {
            m.insert("address".into(), p.to_string().into());
        }
        m.insert("prefixlen".into(), self.prefixlen.into());
        if let Some(b) = self.broadcast.as_ref().into_option() {
            m.insert("broadcast".into(), b.to_string().into());
        }
        m.insert("scope".into(), self.scope.name().into());
        // iproute2 prints "dynamic" for addresses without IFA_F_PERMANENT (0x80).
        if self.flags & 0x80 == 0 {
            m.insert("dynamic".into(), true.into());
        }
        for (bit, name) in FLAGS {
            if self.flags & bit != 0 {
                m.insert((*name).into(), true.into());
            }
        }
        if !self.label.is_empty() {
            m.insert("label".into(), self.label.as_str().into());
        }
        m.insert("valid_life_time".into(), self.valid_life.into());
        m.insert("preferred_life_time".into(), self.preferred_life.into());
        m.into()
    }
}
