//! Policy routing rules (`RTM_NEWRULE`).

use super::net::{table_name, Family, IpPrefix, Protocol};
use abi_stable::std_types::{ROption, RString};
use abi_stable::StableAbi;

/// `FIB_RULE_INVERT`.
pub const FIB_RULE_INVERT: u32 = 0x2;
/// `FIB_RULE_IIF_DETACHED`.
pub const FIB_RULE_IIF_DETACHED: u32 = 0x8;
/// `FIB_RULE_OIF_DETACHED`.
pub const FIB_RULE_OIF_DETACHED: u32 = 0x10;

/// A port range of a rule (`sport`, `dport`), both ends included.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// A user id range of a rule (`uidrange`), both ends included.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct UidRange {
    pub start: u32,
    pub end: u32,
}

/// A policy routing rule. Identity: (`family`, `priority`, and every selector and action) —
/// the kernel tells rules apart by all of their attributes; see [`Rule::selector`].
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub src: ROption<IpPrefix>,
    pub dst: ROption<IpPrefix>,
    pub iif: RString,
    pub oif: RString,
    pub fwmark: u32,
    pub fwmask: u32,
    pub tos: u8,
    pub table: u32,
    /// `FR_ACT_*`: 1 to_tbl, 2 goto, 3 nop, 6 blackhole, 7 unreachable, 8 prohibit.
    pub action: u8,
    pub goto_target: u32,
    pub suppress_prefixlen: ROption<u32>,
    pub ip_proto: u8,
    pub protocol: Protocol,
    /// `FIB_RULE_*` flags (invert, iif/oif detached).
    pub flags: u32,
    pub l3mdev: bool,
    /// `FRA_SPORT_RANGE`.
    pub sport: ROption<PortRange>,
    /// `FRA_DPORT_RANGE`.
    pub dport: ROption<PortRange>,
    /// `FRA_UID_RANGE`.
    pub uid_range: ROption<UidRange>,
    /// `FRA_TUN_ID` (host byte order).
    pub tun_id: ROption<u64>,
    /// `FRA_FLOW`: realms, `from << 16 | to`.
    pub realms: ROption<u32>,
    /// `FRA_SUPPRESS_IFGROUP`.
    pub suppress_ifgroup: ROption<u32>,
}

impl Rule {
    /// A rule `from all lookup TABLE` at `priority`, no other selector (build others with
    /// struct update syntax: `Rule { fwmark: 1, ..Rule::lookup(family, 100, 100) }`).
    pub fn lookup(family: Family, priority: u32, table: u32) -> Rule {
        Rule {
            family,
            priority,
            src: ROption::RNone,
            dst: ROption::RNone,
            iif: RString::new(),
            oif: RString::new(),
            fwmark: 0,
            fwmask: 0,
            tos: 0,
            table,
            action: 1,
            goto_target: 0,
            suppress_prefixlen: ROption::RNone,
            ip_proto: 0,
            protocol: Protocol::UNSPEC,
            flags: 0,
            l3mdev: false,
            sport: ROption::RNone,
            dport: ROption::RNone,
            uid_range: ROption::RNone,
            tun_id: ROption::RNone,
            realms: ROption::RNone,
            suppress_ifgroup: ROption::RNone,
        }
    }

    /// Canonical text of everything that makes the rule distinct (all but the detached flags).
    pub fn selector(&self) -> String {
        format!(
            "src={:?} dst={:?} iif={} oif={} fwmark={:#x}/{:#x} tos={} table={} action={} goto={} sp={:?} ipproto={} inv={} l3mdev={} sport={:?} dport={:?} uid={:?} tun={:?} realms={:?} sg={:?}",
            self.src.into_option(),
            self.dst.into_option(),
            self.iif,
            self.oif,
            self.fwmark,
            self.fwmask,
            self.tos,
            self.table,
            self.action,
            self.goto_target,
            self.suppress_prefixlen.into_option(),
            self.ip_proto,
            self.flags & FIB_RULE_INVERT != 0,
            self.l3mdev,
            self.sport.into_option().map(|r| (r.start, r.end)),
            self.dport.into_option().map(|r| (r.start, r.end)),
            self.uid_range.into_option().map(|r| (r.start, r.end)),
            self.tun_id.into_option(),
            self.realms.into_option(),
            self.suppress_ifgroup.into_option(),
        )
    }

    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("priority".into(), self.priority.into());
        if self.flags & FIB_RULE_INVERT != 0 {
            m.insert("not".into(), serde_json::Value::Null);
        }
        match self.src.into_option() {
            Some(p) => {
                m.insert("src".into(), p.addr.to_string().into());
                if p.len != p.addr.max_len() {
                    m.insert("srclen".into(), p.len.into());
                }
            }
            None => {
                m.insert("src".into(), "all".into());
            }
        }
        if let Some(p) = self.dst.into_option() {
            m.insert("dst".into(), p.addr.to_string().into());
            if p.len != p.addr.max_len() {
                m.insert("dstlen".into(), p.len.into());
            }
        }
        if self.tos != 0 {
            m.insert("tos".into(), format!("0x{:x}", self.tos).into());
        }
        if self.fwmark != 0 || self.fwmask != 0 {
            m.insert("fwmark".into(), format!("0x{:x}", self.fwmark).into());
            if self.fwmask != 0xffff_ffff {
                m.insert("fwmask".into(), format!("0x{:x}", self.fwmask).into());
            }
        }
        if !self.iif.is_empty() {
            m.insert("iif".into(), self.iif.as_str().into());
            if self.flags & FIB_RULE_IIF_DETACHED != 0 {
                m.insert("iif_detached".into(), true.into());
            }
        }
        if !self.oif.is_empty() {
            m.insert("oif".into(), self.oif.as_str().into());
            if self.flags & FIB_RULE_OIF_DETACHED != 0 {
                m.insert("oif_detached".into(), true.into());
            }
        }
        if self.l3mdev {
            m.insert("l3mdev".into(), true.into());
        }
        if let Some(u) = self.uid_range.into_option() {
            m.insert("uid_start".into(), u.start.into());
            m.insert("uid_end".into(), u.end.into());
        }
        for (name, range) in [("sport", self.sport), ("dport", self.dport)] {
            if let Some(r) = range.into_option() {
                if r.start == r.end {
                    m.insert(name.into(), r.start.into());
                } else {
                    m.insert(format!("{name}_start"), r.start.into());
                    m.insert(format!("{name}_end"), r.end.into());
                }
            }
        }
        if let Some(t) = self.tun_id.into_option() {
            m.insert("tun_id".into(), t.into());
        }
        if let Some(f) = self.realms.into_option() {
            let (from, to) = (f >> 16, f & 0xffff);
            if from != 0 {
                m.insert("flow_from".into(), realm_name(from).into());
            }
            m.insert("flow_to".into(), realm_name(to).into());
        }
        match self.action {
            1 => {
                m.insert("table".into(), table_name(self.table).into());
            }
            2 => {
                m.insert("goto".into(), self.goto_target.into());
            }
            3 => {
                m.insert("action".into(), "nop".into());
            }
            6 => {
                m.insert("action".into(), "blackhole".into());
            }
            7 => {
                m.insert("action".into(), "unreachable".into());
            }
            8 => {
                m.insert("action".into(), "prohibit".into());
            }
            _ => {}
        }
        if let Some(s) = self.suppress_prefixlen.into_option() {
            m.insert("suppress_prefixlen".into(), s.into());
        }
        if let Some(g) = self.suppress_ifgroup.into_option() {
            let name = if g == 0 {
                "default".to_string()
            } else {
                g.to_string()
            };
            m.insert("suppress_ifgroup".into(), name.into());
        }
        if self.ip_proto != 0 {
            // iproute2 names the well-known protocols (from /etc/protocols).
            let name = match self.ip_proto {
                1 => Some("icmp"),
                6 => Some("tcp"),
                17 => Some("udp"),
                47 => Some("gre"),
                58 => Some("ipv6-icmp"),
                132 => Some("sctp"),
                _ => None,
            };
            match name {
                Some(n) => m.insert("ipproto".into(), n.into()),
                None => m.insert("ipproto".into(), self.ip_proto.into()),
            };
        }
        if self.protocol != Protocol::UNSPEC {
            m.insert("protocol".into(), self.protocol.name().into());
        }
        m.into()
    }
}

/// iproute2's name of a realm number (`/etc/iproute2/rt_realms` defaults: 0 is `unknown`).
#[cfg(feature = "json")]
fn realm_name(r: u32) -> String {
    if r == 0 {
        "unknown".into()
    } else {
        r.to_string()
    }
}
