//! The netfilter state that acts on forwarded traffic, from nftables netlink
//! (`NFNL_SUBSYS_NFTABLES`): base chains and flowtables (added in API 1.1).
//!
//! iptables-nft programs nftables underneath: its chains (`filter FORWARD`, `nat
//! POSTROUTING`, ...) arrive as base chains like any other. Names follow `nft -j list ruleset`
//! (`family`, `table`, `name`, `handle`, `type`, `hook`, `prio`, `policy`, `dev`).
//!
//! A dataplane that forwards packets itself skips every hook the kernel would have run on
//! them. [`NfChain::acts_on_forwarding`] says whether a chain could change what happens to a
//! forwarded packet: a plugin that cannot apply the chain itself must hand that traffic to the
//! kernel.

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;

/// An nftables family (`NFPROTO_*`), as `nft` names them.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct NfFamily(pub u8);

impl NfFamily {
    /// `inet`: IPv4 and IPv6.
    pub const INET: NfFamily = NfFamily(1);
    /// `ip`: IPv4.
    pub const IPV4: NfFamily = NfFamily(2);
    /// `arp`.
    pub const ARP: NfFamily = NfFamily(3);
    /// `netdev`: per device, before (ingress) or after (egress) the IP layer.
    pub const NETDEV: NfFamily = NfFamily(5);
    /// `bridge`: bridged frames.
    pub const BRIDGE: NfFamily = NfFamily(7);
    /// `ip6`: IPv6.
    pub const IPV6: NfFamily = NfFamily(10);

    /// `nft`'s name of the family (`ip`, `ip6`, `inet`, `arp`, `bridge`, `netdev`).
    pub fn name(self) -> &'static str {
        match self {
            NfFamily::INET => "inet",
            NfFamily::IPV4 => "ip",
            NfFamily::ARP => "arp",
            NfFamily::NETDEV => "netdev",
            NfFamily::BRIDGE => "bridge",
            NfFamily::IPV6 => "ip6",
            _ => "unknown",
        }
    }

    /// Whether chains of this family see IPv4 (`ip`, `inet`) resp. IPv6 (`ip6`, `inet`)
    /// packets at the IP hooks.
    pub fn covers(self, family: super::Family) -> bool {
        match family {
            super::Family::INET => matches!(self, NfFamily::IPV4 | NfFamily::INET),
            super::Family::INET6 => matches!(self, NfFamily::IPV6 | NfFamily::INET),
            _ => false,
        }
    }
}

/// Hook numbers of the `ip`, `ip6` and `inet` families (`NF_INET_*`).
pub mod hook {
    pub const PREROUTING: u32 = 0;
    pub const INPUT: u32 = 1;
    pub const FORWARD: u32 = 2;
    pub const OUTPUT: u32 = 3;
    pub const POSTROUTING: u32 = 4;
    /// `inet` family only: per device, before prerouting (kernel 5.10+).
    pub const INGRESS: u32 = 5;
    /// `netdev` family (`NF_NETDEV_INGRESS`).
    pub const NETDEV_INGRESS: u32 = 0;
    /// `netdev` family (`NF_NETDEV_EGRESS`, kernel 5.16+).
    pub const NETDEV_EGRESS: u32 = 1;
}

/// Verdicts of a chain's policy (`NF_DROP`, `NF_ACCEPT`).
pub mod verdict {
    pub const DROP: u32 = 0;
    pub const ACCEPT: u32 = 1;
}

/// `NFT_TABLE_F_DORMANT`: the table's chains are not registered with the kernel's hooks.
pub const NFT_TABLE_F_DORMANT: u32 = 1;

/// A base chain of nftables (a chain registered at a hook). Identity: (`family`, `table`,
/// `name`). Regular chains (reached by `jump`/`goto`) are not objects: the jump is a rule of
/// the base chain.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct NfChain {
    pub family: NfFamily,
    pub table: RString,
    pub name: RString,
    /// The chain's handle (`NFTA_CHAIN_HANDLE`).
    pub handle: u64,
    /// `filter`, `nat` or `route` (`NFTA_CHAIN_TYPE`).
    pub chain_type: RString,
    /// The hook number ([`hook`]): its meaning depends on the family.
    pub hook: u32,
    /// The hook priority (lower runs first; `srcnat` is 100, `dstnat` -100, `filter` 0).
    pub priority: i32,
    /// The chain's policy ([`verdict`]): what happens to a packet no rule decided on.
    pub policy: u32,
    /// Devices of a `netdev` (or `inet` ingress) chain.
    pub devices: RVec<RString>,
    /// Rules in the chain (jumps to regular chains count as one rule each).
    pub rules: u32,
    /// `NFTA_CHAIN_FLAGS` (`NFT_CHAIN_BASE` 1, `NFT_CHAIN_HW_OFFLOAD` 2).
    pub flags: u32,
    /// The chain's table is dormant (`NFT_TABLE_F_DORMANT`): the chain is not run.
    pub table_dormant: bool,
}

impl NfChain {
    /// `nft`'s name of the hook (`prerouting`, `forward`, `ingress`, ...).
    pub fn hook_name(&self) -> &'static str {
        hook_name(self.family, self.hook)
    }

    /// Whether the chain sits on a hook forwarded packets cross: prerouting, forward,
    /// postrouting (and `inet` ingress) of the IP families, ingress and egress of `netdev`.
    /// (Bridge and ARP chains see bridged frames and ARP, not routed packets.)
    pub fn on_forwarding_path(&self) -> bool {
        match self.family {
            NfFamily::IPV4 | NfFamily::IPV6 | NfFamily::INET => {
                matches!(
                    self.hook,
                    hook::PREROUTING | hook::FORWARD | hook::POSTROUTING | hook::INGRESS
                ) && (self.hook != hook::INGRESS || self.family == NfFamily::INET)
            }
            NfFamily::NETDEV => matches!(self.hook, hook::NETDEV_INGRESS | hook::NETDEV_EGRESS),
            _ => false,
        }
    }

    /// Whether the chain could change what happens to a forwarded packet: it is on the
    /// forwarding path, its table is active, and it has a rule or a policy other than accept.
    /// (A rule is never assumed not to match: deciding that would take evaluating it.)
    pub fn acts_on_forwarding(&self) -> bool {
        self.on_forwarding_path()
            && !self.table_dormant
            && (self.rules > 0 || self.policy != verdict::ACCEPT)
    }

    /// `nft -j`-shaped JSON, with the rule count and the table's dormancy added.
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("family".into(), self.family.name().into());
        m.insert("table".into(), self.table.as_str().into());
        m.insert("name".into(), self.name.as_str().into());
        m.insert("handle".into(), self.handle.into());
        m.insert("type".into(), self.chain_type.as_str().into());
        m.insert("hook".into(), self.hook_name().into());
        m.insert("prio".into(), self.priority.into());
        m.insert(
            "policy".into(),
            match self.policy {
                verdict::ACCEPT => "accept".into(),
                verdict::DROP => "drop".into(),
                v => v.into(),
            },
        );
        match self.devices.len() {
            0 => {}
            1 => {
                m.insert("dev".into(), self.devices[0].as_str().into());
            }
            _ => {
                let d: Vec<&str> = self.devices.iter().map(|d| d.as_str()).collect();
                m.insert("dev".into(), d.into());
            }
        }
        m.insert("rules".into(), self.rules.into());
        if self.table_dormant {
            m.insert("dormant".into(), true.into());
        }
        serde_json::Value::Object(m)
    }
}

/// A flowtable (`nft add flowtable`): flows a `flow add @ft` rule moves there skip the
/// forwarding path in the kernel. Identity: (`family`, `table`, `name`).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct NfFlowtable {
    pub family: NfFamily,
    pub table: RString,
    pub name: RString,
    pub handle: u64,
    /// Always ingress (`NF_NETDEV_INGRESS`, 0) today.
    pub hook: u32,
    pub priority: i32,
    pub devices: RVec<RString>,
    /// `NFTA_FLOWTABLE_FLAGS` (`NF_FLOWTABLE_HW_OFFLOAD` 1, `NF_FLOWTABLE_COUNTER` 2).
    pub flags: u32,
    /// The flowtable's table is dormant.
    pub table_dormant: bool,
}

impl NfFlowtable {
    /// `nft -j`-shaped JSON.
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("family".into(), self.family.name().into());
        m.insert("table".into(), self.table.as_str().into());
        m.insert("name".into(), self.name.as_str().into());
        m.insert("handle".into(), self.handle.into());
        m.insert("hook".into(), "ingress".into());
        m.insert("prio".into(), self.priority.into());
        let d: Vec<&str> = self.devices.iter().map(|d| d.as_str()).collect();
        m.insert("dev".into(), d.into());
        m.insert("flags".into(), self.flags.into());
        if self.table_dormant {
            m.insert("dormant".into(), true.into());
        }
        serde_json::Value::Object(m)
    }
}

/// `nft`'s name of hook `hook` in `family`.
pub fn hook_name(family: NfFamily, hook: u32) -> &'static str {
    if family == NfFamily::NETDEV {
        return match hook {
            hook::NETDEV_INGRESS => "ingress",
            hook::NETDEV_EGRESS => "egress",
            _ => "unknown",
        };
    }
    match hook {
        hook::PREROUTING => "prerouting",
        hook::INPUT => "input",
        hook::FORWARD => "forward",
        hook::OUTPUT => "output",
        hook::POSTROUTING => "postrouting",
        hook::INGRESS => "ingress",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(family: NfFamily, hook: u32, rules: u32, policy: u32) -> NfChain {
        NfChain {
            family,
            table: "t".into(),
            name: "c".into(),
            chain_type: "filter".into(),
            hook,
            policy,
            rules,
            ..Default::default()
        }
    }

    #[test]
    fn which_chains_act_on_forwarded_traffic() {
        use verdict::{ACCEPT, DROP};
        // A rule, or a drop policy, on prerouting / forward / postrouting.
        assert!(chain(NfFamily::IPV4, hook::POSTROUTING, 1, ACCEPT).acts_on_forwarding());
        assert!(chain(NfFamily::INET, hook::FORWARD, 0, DROP).acts_on_forwarding());
        assert!(chain(NfFamily::IPV6, hook::PREROUTING, 2, ACCEPT).acts_on_forwarding());
        assert!(chain(NfFamily::NETDEV, hook::NETDEV_INGRESS, 1, ACCEPT).acts_on_forwarding());
        assert!(chain(NfFamily::NETDEV, hook::NETDEV_EGRESS, 1, ACCEPT).acts_on_forwarding());
        assert!(chain(NfFamily::INET, hook::INGRESS, 1, ACCEPT).acts_on_forwarding());
        // Empty accept chains, local hooks, bridge and ARP chains, dormant tables do not.
        assert!(!chain(NfFamily::INET, hook::FORWARD, 0, ACCEPT).acts_on_forwarding());
        assert!(!chain(NfFamily::INET, hook::INPUT, 3, DROP).acts_on_forwarding());
        assert!(!chain(NfFamily::IPV4, hook::OUTPUT, 3, DROP).acts_on_forwarding());
        assert!(!chain(NfFamily::BRIDGE, hook::FORWARD, 3, DROP).acts_on_forwarding());
        assert!(!chain(NfFamily::ARP, hook::INPUT, 3, DROP).acts_on_forwarding());
        let mut dormant = chain(NfFamily::IPV4, hook::FORWARD, 1, DROP);
        dormant.table_dormant = true;
        assert!(!dormant.acts_on_forwarding());
    }

    #[test]
    fn families_cover_ip_versions() {
        use super::super::Family;
        assert!(NfFamily::INET.covers(Family::INET) && NfFamily::INET.covers(Family::INET6));
        assert!(NfFamily::IPV4.covers(Family::INET) && !NfFamily::IPV4.covers(Family::INET6));
        assert!(NfFamily::IPV6.covers(Family::INET6) && !NfFamily::IPV6.covers(Family::INET));
        assert!(!NfFamily::NETDEV.covers(Family::INET));
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_follows_nft() {
        let mut c = chain(NfFamily::IPV4, hook::POSTROUTING, 1, verdict::ACCEPT);
        c.chain_type = "nat".into();
        c.priority = 100;
        let j = c.to_json();
        assert_eq!(j["family"], "ip");
        assert_eq!(j["hook"], "postrouting");
        assert_eq!(j["type"], "nat");
        assert_eq!(j["prio"], 100);
        assert_eq!(j["policy"], "accept");
        assert_eq!(j["rules"], 1);
        let mut n = chain(NfFamily::NETDEV, hook::NETDEV_EGRESS, 0, verdict::DROP);
        n.devices = vec![RString::from("v1")].into();
        let j = n.to_json();
        assert_eq!(
            (&j["hook"], &j["dev"], &j["policy"]),
            (&"egress".into(), &"v1".into(), &"drop".into())
        );
    }
}
