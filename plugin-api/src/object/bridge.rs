//! Bridge objects: FDB entries (`AF_BRIDGE` neighbours), port VLANs, MDB entries.

use super::neighbour::{ntf, nud};
use super::net::{IpAddress, LinkAddr};
use abi_stable::std_types::{ROption, RString};
use abi_stable::StableAbi;

/// A forwarding-database entry of a bridge port or a VXLAN device.
/// Identity: (`master` or, without a master, `ifindex`; `mac`; `vlan`; `vni`; `dst`) — a bridge
/// entry can move between ports of its bridge without changing identity.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct FdbEntry {
    /// Port (or VXLAN device) ifindex.
    pub ifindex: u32,
    pub dev: RString,
    /// Bridge ifindex for `master` entries, 0 otherwise.
    pub master: u32,
    pub master_name: RString,
    pub mac: LinkAddr,
    /// VLAN id, 0 when none.
    pub vlan: u16,
    /// VXLAN remote.
    pub dst: ROption<IpAddress>,
    /// VXLAN VNI.
    pub vni: ROption<u32>,
    /// `NUD_*` state: PERMANENT (local), NOARP (static), REACHABLE/STALE (learned).
    pub state: u16,
    /// `NTF_*` flags (self, master, extern_learn, offloaded, sticky).
    pub flags: u8,
}

impl FdbEntry {
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("mac".into(), self.mac.to_string().into());
        m.insert("ifname".into(), self.dev.as_str().into());
        if self.vlan != 0 {
            m.insert("vlan".into(), self.vlan.into());
        }
        if let Some(d) = self.dst.as_ref().into_option() {
            m.insert("dst".into(), d.to_string().into());
        }
        if let Some(v) = self.vni.into_option() {
            m.insert("vni".into(), v.into());
        }
        let mut flags = Vec::new();
        for (bit, n) in [
            (ntf::SELF, "self"),
            (ntf::EXT_LEARNED, "extern_learn"),
            (ntf::OFFLOADED, "offload"),
            (ntf::STICKY, "sticky"),
        ] {
            if self.flags & bit != 0 {
                flags.push(n);
            }
        }
        m.insert("flags".into(), flags.into());
        if self.master != 0 {
            m.insert("master".into(), self.master_name.as_str().into());
        }
        let state = if self.state & nud::PERMANENT != 0 {
            "permanent"
        } else if self.state & nud::NOARP != 0 {
            "static"
        } else {
            ""
        };
        m.insert("state".into(), state.into());
        m.into()
    }
}

/// A VLAN on a bridge port (or the bridge itself). Identity: (`ifindex`, `vid`).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct BridgeVlan {
    pub ifindex: u32,
    pub dev: RString,
    pub vid: u16,
    pub pvid: bool,
    pub untagged: bool,
}

impl BridgeVlan {
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut flags = Vec::new();
        if self.pvid {
            flags.push("PVID");
        }
        if self.untagged {
            flags.push("Egress Untagged");
        }
        serde_json::json!({"ifname": self.dev.as_str(), "vlan": self.vid, "flags": flags})
    }
}

/// A multicast database entry. Identity: (`bridge`, `port`, `group`, `vid`, `source`).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct MdbEntry {
    pub bridge: u32,
    pub bridge_name: RString,
    pub port: u32,
    pub port_name: RString,
    /// Group address (IP group); see `mac_group` for L2 groups.
    pub group: ROption<IpAddress>,
    pub mac_group: LinkAddr,
    pub source: ROption<IpAddress>,
    pub vid: u16,
    /// `true` for permanent entries, `false` for learned (temp).
    pub permanent: bool,
}

impl MdbEntry {
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("index".into(), self.bridge.into());
        m.insert("dev".into(), self.bridge_name.as_str().into());
        m.insert("port".into(), self.port_name.as_str().into());
        let grp = match self.group.as_ref().into_option() {
            Some(g) => g.to_string(),
            None => self.mac_group.to_string(),
        };
        m.insert("grp".into(), grp.into());
        if let Some(s) = self.source.as_ref().into_option() {
            m.insert("src".into(), s.to_string().into());
        }
        m.insert(
            "state".into(),
            if self.permanent { "permanent" } else { "temp" }.into(),
        );
        if self.vid != 0 {
            m.insert("vid".into(), self.vid.into());
        }
        m.into()
    }
}
