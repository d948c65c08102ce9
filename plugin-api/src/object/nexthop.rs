//! Nexthop objects and groups (`RTM_NEWNEXTHOP`).

use super::net::{Family, IpAddress, Protocol, Scope};
use super::route::Encap;
use abi_stable::std_types::{ROption, RString, RVec};
use abi_stable::StableAbi;

/// A member of a nexthop group.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GroupMember {
    pub id: u32,
    /// Weight, 1..=256.
    pub weight: u16,
}

/// A nexthop object: a single next hop, or a group when `group` is not empty.
/// Identity: `id`.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Nexthop {
    pub id: u32,
    pub family: Family,
    pub gateway: ROption<IpAddress>,
    /// Device ifindex, 0 when none (groups, blackhole).
    pub ifindex: u32,
    pub dev: RString,
    pub blackhole: bool,
    /// `fdb` nexthop (for VXLAN FDB entries).
    pub fdb: bool,
    /// `RTNH_F_*` flags.
    pub flags: u32,
    pub protocol: Protocol,
    pub scope: Scope,
    /// Members, for a group; empty for a single nexthop.
    pub group: RVec<GroupMember>,
    /// Group type: 0 `mpath`, 1 `resilient`.
    pub group_type: u16,
    pub encap: ROption<Encap>,
}

impl Nexthop {
    /// Whether this is a group.
    pub fn is_group(&self) -> bool {
        !self.group.is_empty()
    }

    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), self.id.into());
        if self.is_group() {
            let g: Vec<serde_json::Value> = self
                .group
                .iter()
                .map(|g| {
                    let mut e = serde_json::Map::new();
                    e.insert("id".into(), g.id.into());
                    if g.weight > 1 {
                        e.insert("weight".into(), g.weight.into());
                    }
                    e.into()
                })
                .collect();
            m.insert("group".into(), g.into());
            m.insert(
                "type".into(),
                if self.group_type == 1 {
                    "resilient"
                } else {
                    "mpath"
                }
                .into(),
            );
        } else {
            if let Some(g) = self.gateway.as_ref().into_option() {
                m.insert("gateway".into(), g.to_string().into());
            }
            if self.ifindex != 0 {
                m.insert("dev".into(), self.dev.as_str().into());
            }
            if self.blackhole {
                m.insert("blackhole".into(), serde_json::Value::Null);
            }
            if let Some(e) = self.encap.as_ref().into_option() {
                m.insert("encap".into(), e.text.as_str().into());
            }
            if self.ifindex != 0 || self.gateway.is_some() {
                m.insert("scope".into(), self.scope.name().into());
            }
        }
        if self.fdb {
            m.insert("fdb".into(), serde_json::Value::Null);
        }
        m.insert("protocol".into(), self.protocol.name().into());
        let mut flags = Vec::new();
        for (bit, n) in [(1u32, "dead"), (4, "onlink"), (16, "linkdown")] {
            if self.flags & bit != 0 {
                flags.push(n);
            }
        }
        m.insert("flags".into(), flags.into());
        m.into()
    }
}
