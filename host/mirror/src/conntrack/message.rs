//! ctnetlink messages (`NFNL_SUBSYS_CTNETLINK`): `IPCTNL_MSG_CT_NEW` (dump replies, NEW and
//! UPDATE events) and `IPCTNL_MSG_CT_DELETE` (DESTROY events), parsed into a [`Flow`].
//!
//! netlink-packet-netfilter 0.4 parses tuples, protoinfo, status, timeout and mark, and leaves
//! counters, id, zone, labels and timestamps as `Other`, with no event support: this module
//! reads all of them, in the crate's layout (one function per nested attribute: tuple, ip,
//! proto, counters, protoinfo), so it could go upstream. Integers are in network byte order.
//! What the host sends (`super::request`) is built with the crate's own types.

// Constants, fields and variants are named after the kernel's `CTA_*` / `IPS_*` names.
#![allow(missing_docs)]

use std::net::IpAddr;

/// `NFNL_SUBSYS_CTNETLINK`.
pub const SUBSYS: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`.
pub const CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`.
pub const CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`.
pub const CT_DELETE: u8 = 2;
/// `NFNLGRP_CONNTRACK_NEW`, `_UPDATE`, `_DESTROY`.
pub const GROUPS: [u32; 3] = [1, 2, 3];

/// `IPS_*` status bits used here.
pub mod status {
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const DYING: u32 = 1 << 9;
    pub const OFFLOAD: u32 = 1 << 14;
}

/// One direction of a connection: addresses, protocol and ports (or ICMP id/type/code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6, ...).
    pub proto: u8,
    /// Source port, or the ICMP id.
    pub sport: u16,
    /// Destination port, or `type << 8 | code` for ICMP.
    pub dport: u16,
    /// `CTA_TUPLE_ZONE` (a zone of this direction only), 0 when absent.
    pub zone: u16,
}

impl Tuple {
    /// A tuple not yet read (all zero, IPv4 unspecified): replaced by the message's own.
    pub const UNSET: Tuple = Tuple {
        src: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        proto: 0,
        sport: 0,
        dport: 0,
        zone: 0,
    };
}

/// Packets and bytes of one direction (`CTA_COUNTERS_*`, with `nf_conntrack_acct=1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// A conntrack entry as ctnetlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// `AF_INET` 2 or `AF_INET6` 10 (`nfgen_family`).
    pub family: u8,
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: u32,
    /// Seconds left (`CTA_TIMEOUT`); changes by itself.
    pub timeout: u32,
    pub mark: u32,
    /// `CTA_ZONE`.
    pub zone: u16,
    /// `CTA_LABELS` (128 bits), when set.
    pub labels: Option<[u8; 16]>,
    /// `CTA_ID`.
    pub id: u32,
    /// `CTA_USE`.
    pub use_count: u32,
    /// TCP state (`CTA_PROTOINFO_TCP_STATE`: 1 syn_sent ... 3 established ... 7 close).
    pub tcp_state: Option<u8>,
    pub counters_orig: Option<Counters>,
    pub counters_reply: Option<Counters>,
}

impl Flow {
    /// The identity the kernel tells entries apart by: zone and original tuple.
    pub fn key(&self) -> (u16, Tuple) {
        (self.zone, self.orig)
    }

    /// Source NAT, derived from the tuples: the reply is not addressed to the original source.
    pub fn snat(&self) -> Option<(IpAddr, u16)> {
        (self.reply.dst != self.orig.src || self.reply.dport != self.orig.sport)
            .then_some((self.reply.dst, self.reply.dport))
    }

    /// Destination NAT, derived: the reply does not come from the original destination.
    pub fn dnat(&self) -> Option<(IpAddr, u16)> {
        (self.reply.src != self.orig.dst || self.reply.sport != self.orig.dport)
            .then_some((self.reply.src, self.reply.sport))
    }
}

/// One ctnetlink message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A dumped entry, a new one (`NLM_F_CREATE`) or an update.
    New(Flow),
    /// A destroyed entry.
    Delete(Flow),
}

/// Why a message could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("ctnetlink message of type {0:#x}: shorter than struct nfgenmsg")]
    Short(u16),
    #[error("ctnetlink message of type {ty:#x}: {what} missing or malformed")]
    Bad { ty: u16, what: &'static str },
}

fn nlas(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    crate::netlink::nlas(buf)
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}
fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}
fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// `CTA_TUPLE_IP`: (src, dst).
fn ip(v: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let (mut s, mut d) = (None, None);
    for (a, x) in nlas(v) {
        match a {
            1 => s = Some(IpAddr::from(<[u8; 4]>::try_from(x).ok()?)),
            2 => d = Some(IpAddr::from(<[u8; 4]>::try_from(x).ok()?)),
            3 => s = Some(IpAddr::from(<[u8; 16]>::try_from(x).ok()?)),
            4 => d = Some(IpAddr::from(<[u8; 16]>::try_from(x).ok()?)),
            _ => {}
        }
    }
    Some((s?, d?))
}

/// `CTA_TUPLE_PROTO`: (proto, sport or id, dport or type<<8|code).
fn proto(v: &[u8]) -> Option<(u8, u16, u16)> {
    let (mut p, mut sp, mut dp, mut ty, mut code) = (None, 0, 0, 0u16, 0u16);
    for (a, x) in nlas(v) {
        match a {
            1 => p = x.first().copied(),
            2 => sp = be16(x)?,
            3 => dp = be16(x)?,
            4 | 7 => sp = be16(x)?,
            5 | 8 => ty = *x.first()? as u16,
            6 | 9 => code = *x.first()? as u16,
            _ => {}
        }
    }
    let p = p?;
    if p == 1 || p == 58 {
        dp = ty << 8 | code;
    }
    Some((p, sp, dp))
}

/// `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY`.
fn tuple(v: &[u8]) -> Option<Tuple> {
    let (mut addrs, mut pr, mut zone) = (None, None, 0);
    for (a, x) in nlas(v) {
        match a {
            1 => addrs = ip(x),
            2 => pr = proto(x),
            3 => zone = be16(x)?,
            _ => {}
        }
    }
    let ((src, dst), (proto, sport, dport)) = (addrs?, pr?);
    Some(Tuple {
        src,
        dst,
        proto,
        sport,
        dport,
        zone,
    })
}

/// `CTA_COUNTERS_ORIG` / `_REPLY`.
fn counters(v: &[u8]) -> Option<Counters> {
    let mut c = Counters::default();
    for (a, x) in nlas(v) {
        match a {
            1 => c.packets = be64(x)?,
            2 => c.bytes = be64(x)?,
            _ => {}
        }
    }
    Some(c)
}

/// `CTA_PROTOINFO`: the TCP state, when TCP.
fn protoinfo(v: &[u8]) -> Option<u8> {
    for (a, x) in nlas(v) {
        if a == 1 {
            for (b, y) in nlas(x) {
                if b == 1 {
                    return y.first().copied();
                }
            }
        }
    }
    None
}

/// Parses one message of the ctnetlink subsystem; `Ok(None)` for other types (expectations,
/// stats) and subsystems.
pub fn parse(message_type: u16, payload: &[u8]) -> Result<Option<Message>, ParseError> {
    let ty = message_type;
    if ty >> 8 != SUBSYS {
        return Ok(None);
    }
    let m = (ty & 0xff) as u8;
    if m != CT_NEW && m != CT_DELETE {
        return Ok(None);
    }
    if payload.len() < 4 {
        return Err(ParseError::Short(ty));
    }
    let bad = |what| ParseError::Bad { ty, what };
    let family = payload[0];
    let (mut orig, mut reply) = (None, None);
    let mut f = Flow {
        family,
        orig: Tuple::UNSET,
        reply: Tuple::UNSET,
        status: 0,
        timeout: 0,
        mark: 0,
        zone: 0,
        labels: None,
        id: 0,
        use_count: 0,
        tcp_state: None,
        counters_orig: None,
        counters_reply: None,
    };
    for (a, x) in nlas(&payload[4..]) {
        match a {
            1 => orig = Some(tuple(x).ok_or_else(|| bad("CTA_TUPLE_ORIG"))?),
            2 => reply = Some(tuple(x).ok_or_else(|| bad("CTA_TUPLE_REPLY"))?),
            3 => f.status = be32(x).ok_or_else(|| bad("CTA_STATUS"))?,
            4 => f.tcp_state = protoinfo(x),
            7 => f.timeout = be32(x).ok_or_else(|| bad("CTA_TIMEOUT"))?,
            8 => f.mark = be32(x).ok_or_else(|| bad("CTA_MARK"))?,
            9 => f.counters_orig = counters(x),
            10 => f.counters_reply = counters(x),
            11 => f.use_count = be32(x).ok_or_else(|| bad("CTA_USE"))?,
            12 => f.id = be32(x).ok_or_else(|| bad("CTA_ID"))?,
            18 => f.zone = be16(x).ok_or_else(|| bad("CTA_ZONE"))?,
            22 => f.labels = Some(<[u8; 16]>::try_from(x).map_err(|_| bad("CTA_LABELS"))?),
            _ => {}
        }
    }
    f.orig = orig.ok_or_else(|| bad("CTA_TUPLE_ORIG"))?;
    f.reply = reply.ok_or_else(|| bad("CTA_TUPLE_REPLY"))?;
    Ok(Some(if m == CT_NEW {
        Message::New(f)
    } else {
        Message::Delete(f)
    }))
}
