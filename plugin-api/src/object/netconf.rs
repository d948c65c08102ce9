//! Per-device IP configuration notified by the kernel (`RTM_NEWNETCONF`).

use super::net::Family;
use abi_stable::std_types::{ROption, RString};
use abi_stable::StableAbi;

/// `NETCONFA_IFINDEX_ALL`.
pub const IFINDEX_ALL: i32 = -1;
/// `NETCONFA_IFINDEX_DEFAULT`.
pub const IFINDEX_DEFAULT: i32 = -2;

/// Netconf of one device (or `all` / `default`). Identity: (`family`, `ifindex`).
/// Attributes the kernel has not reported are `None`.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Netconf {
    pub family: Family,
    /// Device ifindex, or [`IFINDEX_ALL`] / [`IFINDEX_DEFAULT`].
    pub ifindex: i32,
    pub dev: RString,
    pub forwarding: ROption<i32>,
    pub rp_filter: ROption<i32>,
    pub mc_forwarding: ROption<i32>,
    pub proxy_neigh: ROption<i32>,
    pub ignore_routes_with_linkdown: ROption<i32>,
    pub input: ROption<i32>,
}

impl Netconf {
    /// Merges a partial notification (only changed attributes present) into this one.
    pub fn merge(&mut self, other: &Netconf) {
        macro_rules! m {
            ($f:ident) => {
                if other.$f.is_some() {
                    self.$f = other.$f;
                }
            };
        }
        m!(forwarding);
        m!(rp_filter);
        m!(mc_forwarding);
        m!(proxy_neigh);
        m!(ignore_routes_with_linkdown);
        m!(input);
    }

    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let onoff = |v: i32| if v != 0 { "on" } else { "off" };
        let mut m = serde_json::Map::new();
        m.insert("family".into(), self.family.name().into());
        m.insert("ifindex".into(), self.ifindex.into());
        let name = match self.ifindex {
            IFINDEX_ALL => "all",
            IFINDEX_DEFAULT => "default",
            _ => self.dev.as_str(),
        };
        m.insert("interface".into(), name.into());
        if let Some(v) = self.forwarding.into_option() {
            m.insert("forwarding".into(), onoff(v).into());
        }
        if let Some(v) = self.rp_filter.into_option() {
            let s = match v {
                0 => "off",
                1 => "strict",
                _ => "loose",
            };
            m.insert("rp_filter".into(), s.into());
        }
        if let Some(v) = self.mc_forwarding.into_option() {
            m.insert("mc_forwarding".into(), onoff(v).into());
        }
        if let Some(v) = self.proxy_neigh.into_option() {
            m.insert("proxy_neigh".into(), onoff(v).into());
        }
        if let Some(v) = self.ignore_routes_with_linkdown.into_option() {
            m.insert("ignore_routes_with_linkdown".into(), onoff(v).into());
        }
        if let Some(v) = self.input.into_option() {
            m.insert("input".into(), onoff(v).into());
        }
        m.into()
    }
}
