//! IPv4/IPv6 neighbours (`RTM_NEWNEIGH`, families inet and inet6).

use super::net::{Family, IpAddress, LinkAddr};
use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// NUD states (`NUD_*`).
pub mod nud {
    pub const INCOMPLETE: u16 = 0x01;
    pub const REACHABLE: u16 = 0x02;
    pub const STALE: u16 = 0x04;
    pub const DELAY: u16 = 0x08;
    pub const PROBE: u16 = 0x10;
    pub const FAILED: u16 = 0x20;
    pub const NOARP: u16 = 0x40;
    pub const PERMANENT: u16 = 0x80;
    /// Valid states: the link-layer address can be used.
    pub const VALID: u16 = PERMANENT | NOARP | REACHABLE | PROBE | STALE | DELAY;
}

/// `NTF_*` flags.
pub mod ntf {
    pub const USE: u8 = 0x01;
    pub const SELF: u8 = 0x02;
    pub const MASTER: u8 = 0x04;
    pub const PROXY: u8 = 0x08;
    pub const EXT_LEARNED: u8 = 0x10;
    pub const OFFLOADED: u8 = 0x20;
    pub const STICKY: u8 = 0x40;
    pub const ROUTER: u8 = 0x80;
}

/// iproute2's names of a NUD state bit set.
pub fn nud_state_names(state: u16) -> Vec<&'static str> {
    const N: &[(u16, &str)] = &[
        (nud::INCOMPLETE, "INCOMPLETE"),
        (nud::REACHABLE, "REACHABLE"),
        (nud::STALE, "STALE"),
        (nud::DELAY, "DELAY"),
        (nud::PROBE, "PROBE"),
        (nud::FAILED, "FAILED"),
        (nud::NOARP, "NOARP"),
        (nud::PERMANENT, "PERMANENT"),
    ];
    let v: Vec<&str> = N
        .iter()
        .filter(|(b, _)| state & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        vec!["NONE"]
    } else {
        v
    }
}

/// A neighbour (ARP / NDP) entry, or a proxy entry when `proxy` is set.
/// Identity: (`family`, `ifindex`, `dst`, `proxy`).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Neighbour {
    pub family: Family,
    pub ifindex: u32,
    pub dev: RString,
    pub dst: IpAddress,
    /// Link-layer address; empty while unresolved.
    pub lladdr: LinkAddr,
    /// `NUD_*` state bits.
    pub state: u16,
    /// `NTF_*` flags.
    pub flags: u8,
    /// A proxy entry (`ip neigh add proxy`).
    pub proxy: bool,
}

impl Neighbour {
    /// Whether the link-layer address is usable for forwarding.
    pub fn is_valid(&self) -> bool {
        self.state & nud::VALID != 0 && !self.lladdr.is_empty()
    }

    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("dst".into(), self.dst.to_string().into());
        m.insert("dev".into(), self.dev.as_str().into());
        if !self.lladdr.is_empty() {
            m.insert("lladdr".into(), self.lladdr.to_string().into());
        }
        if self.flags & ntf::ROUTER != 0 {
            m.insert("router".into(), serde_json::Value::Null);
        }
        if self.flags & ntf::EXT_LEARNED != 0 {
            m.insert("extern_learn".into(), serde_json::Value::Null);
        }
        if self.proxy {
            m.insert("proxy".into(), serde_json::Value::Null);
        } else {
            m.insert("state".into(), nud_state_names(self.state).into());
        }
        m.into()
    }
}
