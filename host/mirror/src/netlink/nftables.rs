//! nftables netlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_NFTABLES`): tables, chains,
//! rules (by handle only) and flowtables, parsed here. Crates checked: `rustables` is GPL-3.0,
//! `nftnl` binds the C libnftnl; `netlink-packet-netfilter` 0.4 (MIT) has an nftables module
//! (tables, chains with hooks, rules with their expressions, sets, generations) but gives
//! flowtables as raw attributes and decodes every rule's expressions, of which the mirror needs
//! none. This module reads only the identity and hook attributes; moving its table, chain and
//! rule parsing onto that crate's types (and adding flowtables there) is open. The payload is a
//! `struct nfgenmsg` (family, version, resource id = low 16 bits of the ruleset generation)
//! then `NFTA_*` attributes, integers in network byte order.
//!
//! Only what decides whether a chain acts on forwarded traffic is read: a rule is its table,
//! chain and handle (its expressions are not decoded).

// Constants, fields and variants are named after the kernel's `NFT_MSG_*` / `NFTA_*` names.
#![allow(missing_docs)]

use super::nlas;
use ekho_plugin_api::object::NfFamily;

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: isize = 12;
/// `NFNLGRP_NFTABLES`: the group of ruleset change notifications.
pub const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`: the high byte of every message type here.
pub const SUBSYS: u16 = 10;

/// `NFT_MSG_*` (low byte of the message type).
pub mod msg {
    pub const NEWTABLE: u8 = 0;
    pub const GETTABLE: u8 = 1;
    pub const DELTABLE: u8 = 2;
    pub const NEWCHAIN: u8 = 3;
    pub const GETCHAIN: u8 = 4;
    pub const DELCHAIN: u8 = 5;
    pub const NEWRULE: u8 = 6;
    pub const GETRULE: u8 = 7;
    pub const DELRULE: u8 = 8;
    pub const NEWGEN: u8 = 15;
    pub const NEWFLOWTABLE: u8 = 22;
    pub const GETFLOWTABLE: u8 = 23;
    pub const DELFLOWTABLE: u8 = 24;
}

/// The message type of `NFT_MSG_*` `m`.
pub const fn msg_type(m: u8) -> u16 {
    (SUBSYS << 8) | m as u16
}

/// A hook (of a base chain or flowtable): `NFTA_HOOK_*` / `NFTA_FLOWTABLE_HOOK_*`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Hook {
    pub num: u32,
    pub priority: i32,
    /// `NFTA_HOOK_DEV` and `NFTA_HOOK_DEVS` (the kernel sends both for one device), merged.
    pub devices: Vec<String>,
}

/// A table (`NFTA_TABLE_*`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Table {
    pub family: NfFamily,
    pub name: String,
    pub flags: u32,
    pub handle: u64,
}

/// A chain (`NFTA_CHAIN_*`): a base chain has a hook. Deletions carry only table, name and
/// handle; updates may carry only what changed (the policy), so absent fields are `None`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Chain {
    pub family: NfFamily,
    pub table: String,
    pub name: String,
    pub handle: u64,
    pub hook: Option<Hook>,
    pub policy: Option<u32>,
    pub chain_type: Option<String>,
    pub flags: Option<u32>,
}

/// A rule, by identity (`NFTA_RULE_TABLE`, `_CHAIN`, `_HANDLE`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Rule {
    pub family: NfFamily,
    pub table: String,
    pub chain: String,
    pub handle: u64,
}

/// A flowtable (`NFTA_FLOWTABLE_*`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Flowtable {
    pub family: NfFamily,
    pub table: String,
    pub name: String,
    pub handle: u64,
    pub hook: Option<Hook>,
    pub flags: u32,
}

/// One nftables message, as the mirror applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    NewTable(Table),
    DelTable(Table),
    NewChain(Chain),
    DelChain(Chain),
    NewRule(Rule),
    DelRule(Rule),
    NewFlowtable(Flowtable),
    DelFlowtable(Flowtable),
    /// `NFT_MSG_NEWGEN`: a transaction committed (the ruleset's new generation id).
    NewGen(u32),
}

/// Why a message could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("nftables message of type {0:#x}: shorter than struct nfgenmsg")]
    Short(u16),
    #[error("nftables message of type {ty:#x}: attribute {attr} has {len} bytes")]
    BadAttr { ty: u16, attr: u16, len: usize },
}

fn be32(ty: u16, attr: u16, v: &[u8]) -> Result<u32, ParseError> {
    v.get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        .ok_or(ParseError::BadAttr {
            ty,
            attr,
            len: v.len(),
        })
}

fn be64(ty: u16, attr: u16, v: &[u8]) -> Result<u64, ParseError> {
    v.get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        .ok_or(ParseError::BadAttr {
            ty,
            attr,
            len: v.len(),
        })
}

/// A NUL-terminated (or not) string attribute.
fn string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Parses a hook nest. `devs` is the attribute holding the `NFTA_DEVICE_NAME` list, `dev` the
/// single-device one (chains only).
fn hook(ty: u16, v: &[u8], devs: u16, dev: Option<u16>) -> Result<Hook, ParseError> {
    let mut h = Hook::default();
    for (a, x) in nlas(v) {
        match a {
            1 => h.num = be32(ty, a, x)?,
            2 => h.priority = be32(ty, a, x)? as i32,
            _ if a == devs => {
                for (d, name) in nlas(x) {
                    if d == 1 {
                        let n = string(name);
                        if !h.devices.contains(&n) {
                            h.devices.push(n);
                        }
                    }
                }
            }
            _ if Some(a) == dev => {
                let n = string(x);
                if !h.devices.contains(&n) {
                    h.devices.push(n);
                }
            }
            _ => {}
        }
    }
    Ok(h)
}

/// Parses one message of the nftables subsystem; `Ok(None)` for the types the mirror does not
/// use (sets, elements, objects, traces, other subsystems).
pub fn parse(message_type: u16, payload: &[u8]) -> Result<Option<Message>, ParseError> {
    let ty = message_type;
    if ty >> 8 != SUBSYS {
        return Ok(None);
    }
    if payload.len() < 4 {
        return Err(ParseError::Short(ty));
    }
    let family = NfFamily(payload[0]);
    let attrs = &payload[4..];
    let m = (ty & 0xff) as u8;
    Ok(Some(match m {
        msg::NEWTABLE | msg::DELTABLE => {
            let mut t = Table {
                family,
                ..Default::default()
            };
            for (a, v) in nlas(attrs) {
                match a {
                    1 => t.name = string(v),
                    2 => t.flags = be32(ty, a, v)?,
                    4 => t.handle = be64(ty, a, v)?,
                    _ => {}
                }
            }
            if m == msg::NEWTABLE {
                Message::NewTable(t)
            } else {
                Message::DelTable(t)
            }
        }
        msg::NEWCHAIN | msg::DELCHAIN => {
            let mut c = Chain {
                family,
                ..Default::default()
            };
            for (a, v) in nlas(attrs) {
                match a {
                    1 => c.table = string(v),
                    2 => c.handle = be64(ty, a, v)?,
                    3 => c.name = string(v),
                    4 => c.hook = Some(hook(ty, v, 4, Some(3))?),
                    5 => c.policy = Some(be32(ty, a, v)?),
                    7 => c.chain_type = Some(string(v)),
                    10 => c.flags = Some(be32(ty, a, v)?),
                    _ => {}
                }
            }
            if m == msg::NEWCHAIN {
                Message::NewChain(c)
            } else {
                Message::DelChain(c)
            }
        }
        msg::NEWRULE | msg::DELRULE => {
            let mut r = Rule {
                family,
                ..Default::default()
            };
            for (a, v) in nlas(attrs) {
                match a {
                    1 => r.table = string(v),
                    2 => r.chain = string(v),
                    3 => r.handle = be64(ty, a, v)?,
                    _ => {}
                }
            }
            if m == msg::NEWRULE {
                Message::NewRule(r)
            } else {
                Message::DelRule(r)
            }
        }
        msg::NEWFLOWTABLE | msg::DELFLOWTABLE => {
            let mut f = Flowtable {
                family,
                ..Default::default()
            };
            for (a, v) in nlas(attrs) {
                match a {
                    1 => f.table = string(v),
                    2 => f.name = string(v),
                    3 => f.hook = Some(hook(ty, v, 3, None)?),
                    5 => f.handle = be64(ty, a, v)?,
                    7 => f.flags = be32(ty, a, v)?,
                    _ => {}
                }
            }
            if m == msg::NEWFLOWTABLE {
                Message::NewFlowtable(f)
            } else {
                Message::DelFlowtable(f)
            }
        }
        msg::NEWGEN => {
            let mut id = 0;
            for (a, v) in nlas(attrs) {
                if a == 1 {
                    id = be32(ty, a, v)?;
                }
            }
            Message::NewGen(id)
        }
        _ => return Ok(None),
    }))
}

/// The payload of a dump request of every family (`struct nfgenmsg` with `NFPROTO_UNSPEC`).
pub const DUMP_HEADER: [u8; 4] = [0, 0, 0, 0];

#[cfg(test)]
mod tests {
    //! Messages captured from the kernel (6.18) of this machine in a scratch netns (dump replies
    //! and notifications on `NFNLGRP_NFTABLES` of `nft` commands, raw `AF_NETLINK` socket), hex as
    //! received; the flowtable, which this kernel cannot create (no `nf_flow_table`), is built
    //! attribute by attribute after `nf_tables_fill_flowtable_info`.
    use super::*;
    use crate::netlink::split;
    use crate::netlink::tests::hex;

    fn one(s: &str) -> Message {
        let b = hex(s);
        let v: Vec<_> = split(&b).collect();
        assert_eq!(v.len(), 1);
        parse(v[0].0.message_type, v[0].1).unwrap().unwrap()
    }

    #[test]
    fn table_of_a_dump() {
        // `nft add table ip nat`, dumped (NFT_MSG_NEWTABLE reply to GETTABLE).
        let m = one("38000000000a020001000000c02b000002000004080001006e61740008000300000000010c00040000000000000000010800020000000000");
        assert_eq!(
            m,
            Message::NewTable(Table {
                family: NfFamily::IPV4,
                name: "nat".into(),
                flags: 0,
                handle: 1
            })
        );
    }

    #[test]
    fn base_chain_of_a_dump() {
        // `add chain ip nat post { type nat hook postrouting priority 100; policy accept; }`
        let m = one("68000000030a020004000000c02b000002000004080001006e61740009000300706f7374000000000c000200000000000000000114000400080001000000000408000200000000640800050000000001080007006e61740008000a00000000010800060000000001");
        assert_eq!(
            m,
            Message::NewChain(Chain {
                family: NfFamily::IPV4,
                table: "nat".into(),
                name: "post".into(),
                handle: 1,
                hook: Some(Hook {
                    num: 4,
                    priority: 100,
                    devices: vec![]
                }),
                policy: Some(1),
                chain_type: Some("nat".into()),
                flags: Some(1),
            })
        );
    }

    #[test]
    fn rule_of_a_dump_is_its_identity() {
        // `add rule ip nat post oifname "h2" masquerade`
        let m = one("a8000000060a020807000000c02b000002000004080001006e61740009000200706f7374000000000c00030000000000000000027400040024000100090001006d6574610000000014000200080002000000000708000100000000013800010008000100636d70002c0002000800010000000001080002000000000018000300140001006832000000000000000000000000000014000100090001006d6173710000000004000200");
        assert_eq!(
            m,
            Message::NewRule(Rule {
                family: NfFamily::IPV4,
                table: "nat".into(),
                chain: "post".into(),
                handle: 2
            })
        );
    }

    #[test]
    fn notifications_of_a_transaction() {
        // `add chain inet f forward { type filter hook forward priority 0; policy drop; }`
        let m = one("6c000000030a0004010000007a2d00000100000706000100660000000c000300666f7277617264000c0002000000000000000001140004000800010000000002080002000000000008000500000000000b00070066696c746572000008000a00000000010800060000000000");
        let Message::NewChain(c) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (c.family, c.table.as_str(), c.name.as_str()),
            (NfFamily::INET, "f", "forward")
        );
        assert_eq!(c.hook.as_ref().map(|h| (h.num, h.priority)), Some((2, 0)));
        assert_eq!(c.policy, Some(0));
        // Its NFT_MSG_NEWGEN.
        assert_eq!(
            one("2c0000000f0a0000010000007a2d00000000000708000100000000070800020000002d7a080003006e667400"),
            Message::NewGen(7)
        );
        // `delete table ip nat`: the chain's deletion carries table, name and handle only.
        let m = one("34000000050a000001000000372c000002000005080001006e61740009000300706f7374000000000c0002000000000000000001");
        assert_eq!(
            m,
            Message::DelChain(Chain {
                family: NfFamily::IPV4,
                table: "nat".into(),
                name: "post".into(),
                handle: 1,
                ..Default::default()
            })
        );
        // `add table inet f { flags dormant; }`: a table update with its flags.
        let m = one("38000000000a0000010000007c2d000001000009060001006600000008000300000000010c00040000000000000000020800020000000001");
        assert_eq!(
            m,
            Message::NewTable(Table {
                family: NfFamily::INET,
                name: "f".into(),
                flags: 1,
                handle: 2
            })
        );
    }

    #[test]
    fn netdev_chain_names_its_device_once() {
        // `add chain netdev n in { type filter hook ingress device v1 priority 0; }`: the
        // kernel sends the device as NFTA_HOOK_DEVS and NFTA_HOOK_DEV.
        let m = one("7c000000030a000401000000802d00000500000b060001006e00000007000300696e00000c000200000000000000000128000400080001000000000008000200000000000c0004000700010076310000070003007631000008000500000000010b00070066696c746572000008000a00000000010800060000000000");
        let Message::NewChain(c) = m else {
            panic!("{m:?}")
        };
        assert_eq!(c.family, NfFamily::NETDEV);
        assert_eq!(
            c.hook,
            Some(Hook {
                num: 0,
                priority: 0,
                devices: vec!["v1".into()]
            })
        );
    }

    #[test]
    fn flowtable() {
        // NFTA_FLOWTABLE_TABLE "f", NAME "ft", HOOK {NUM 0, PRIORITY 0, DEVS {NAME "v1", NAME
        // "v2"}}, USE 0, HANDLE 3, FLAGS 0.
        let m = one("68000000160a000001000000000000000100000c060001006600000007000200667400002800030008000100000000000800020000000000140003000700010076310000070001007632000008000400000000000c00050000000000000000030800070000000000");
        let Message::NewFlowtable(f) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (f.table.as_str(), f.name.as_str(), f.handle),
            ("f", "ft", 3)
        );
        assert_eq!(
            f.hook.map(|h| h.devices),
            Some(vec!["v1".to_string(), "v2".to_string()])
        );
    }

    #[test]
    fn other_subsystems_and_types_are_not_ours() {
        assert_eq!(parse(0x0101, &[2, 0, 0, 0]), Ok(None)); // ctnetlink
        assert_eq!(parse(msg_type(9), &[2, 0, 0, 0]), Ok(None)); // NFT_MSG_NEWSET
        assert_eq!(
            parse(msg_type(msg::NEWTABLE), &[2]),
            Err(ParseError::Short(0x0a00))
        );
        // A handle attribute too short.
        let bad = [2, 0, 0, 0, 8, 0, 4, 0, 0, 0, 0, 1];
        assert!(matches!(
            parse(msg_type(msg::NEWTABLE), &bad),
            Err(ParseError::BadAttr { attr: 4, .. })
        ));
    }
}
