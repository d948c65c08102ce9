//! ctnetlink messages (`NFNL_SUBSYS_CTNETLINK`): `IPCTNL_MSG_CT_NEW` (dump replies, NEW and
//! UPDATE events) and `IPCTNL_MSG_CT_DELETE` (DESTROY events), parsed into an [`Entry`]: the
//! plugin API's [`Flow`] (the one object model of a flow, as the route mirror holds the API's
//! routes) and the kernel's bookkeeping beside it.
//!
//! netlink-packet-netfilter 0.4 parses tuples, protoinfo, status, timeout and mark, and leaves
//! counters, id, zone, labels and timestamps as `Other`, with no event support: this module
//! reads all of them, in the crate's layout (one function per nested attribute: tuple, ip,
//! proto, counters, protoinfo), so it could go upstream. Integers are in network byte order.
//! What the host sends (`super::request`) is built with the crate's own types.

// Constants, fields and variants are named after the kernel's `CTA_*` / `IPS_*` names.
#![allow(missing_docs)]

pub use ekho_plugin_api::object::{Family, Flow, FlowTuple, IpAddress, ObjectKey};

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

/// `IPS_*` status bits: the plugin API's, and those only the host looks at.
pub mod status {
    pub use ekho_plugin_api::object::flow::status::*;
    /// The entry is being destroyed.
    pub const DYING: u32 = 1 << 9;
}

/// Packets and bytes of one direction (`CTA_COUNTERS_*`, with `nf_conntrack_acct=1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// `IP_CT_TCP_FLAG_BE_LIBERAL`: window tracking accepts out-of-window packets.
pub const TCP_FLAG_BE_LIBERAL: u8 = 0x08;

/// A conntrack entry as ctnetlink reports it: the plugin API's [`Flow`] (family, protocol,
/// zone, mark, both tuples, NAT derived from them, status, id: what a dataplane is handed, and
/// the entry's identity, [`key`]), and beside it only what the API's flow does not carry, the
/// kernel's own bookkeeping, which changes by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The flow. Its `zone` is the zone the original direction is tracked in: `CTA_ZONE` (a
    /// zone of both directions) or else the original tuple's `CTA_TUPLE_ZONE`, so that the
    /// flow's key is the kernel's identity of the entry.
    pub flow: Flow,
    /// Seconds left (`CTA_TIMEOUT`); changes by itself.
    pub timeout: u32,
    /// `CTA_USE`.
    pub use_count: u32,
    /// TCP state (`CTA_PROTOINFO_TCP_STATE`: 1 syn_sent ... 3 established ... 7 close).
    pub tcp_state: Option<u8>,
    /// TCP window tracking flags of the original and reply direction (`IP_CT_TCP_FLAG_*`:
    /// [`TCP_FLAG_BE_LIBERAL`] once the host marked an offered entry); 0 when not reported.
    pub tcp_flags: [u8; 2],
    pub counters_orig: Option<Counters>,
    pub counters_reply: Option<Counters>,
    /// `CTA_LABELS` (128 bits), when set.
    pub labels: Option<[u8; 16]>,
    /// `CTA_TUPLE_ZONE` of the original and the reply tuple (0: absent): a zone of that
    /// direction only (`conntrack -L`'s `zone-orig=`, `zone-reply=`).
    pub tuple_zones: [u16; 2],
}

impl Entry {
    /// The entry's identity, the kernel's (zone and original tuple): the plugin API's key of
    /// its flow.
    pub fn key(&self) -> ObjectKey {
        key(&self.flow)
    }

    /// The IP protocol number.
    pub fn protocol(&self) -> u8 {
        self.flow.protocol
    }
}

/// The plugin API's key of a flow (`ObjectKey::Flow`: family, protocol, zone, original
/// tuple), without wrapping it in an `Object`.
pub fn key(f: &Flow) -> ObjectKey {
    ObjectKey::Flow {
        family: f.family,
        protocol: f.protocol,
        zone: f.zone,
        original: f.original,
    }
}

/// conntrack's name of a TCP state (`CTA_PROTOINFO_TCP_STATE`).
pub fn tcp_state_name(s: u8) -> &'static str {
    match s {
        0 => "NONE",
        1 => "SYN_SENT",
        2 => "SYN_RECV",
        3 => "ESTABLISHED",
        4 => "FIN_WAIT",
        5 => "CLOSE_WAIT",
        6 => "LAST_ACK",
        7 => "TIME_WAIT",
        8 => "CLOSE",
        9 => "SYN_SENT2",
        _ => "UNKNOWN",
    }
}

/// One ctnetlink message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A dumped entry, a new one (`NLM_F_CREATE`) or an update.
    New(Entry),
    /// A destroyed entry.
    Delete(Entry),
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
fn ip(v: &[u8]) -> Option<(IpAddress, IpAddress)> {
    let (mut s, mut d) = (None, None);
    for (a, x) in nlas(v) {
        match a {
            1 => s = Some(IpAddress::V4(x.try_into().ok()?)),
            2 => d = Some(IpAddress::V4(x.try_into().ok()?)),
            3 => s = Some(IpAddress::V6(x.try_into().ok()?)),
            4 => d = Some(IpAddress::V6(x.try_into().ok()?)),
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

/// `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY`: the tuple, its protocol and its `CTA_TUPLE_ZONE` (0
/// when absent).
fn tuple(v: &[u8]) -> Option<(FlowTuple, u8, u16)> {
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
    Some((
        FlowTuple {
            src,
            dst,
            sport,
            dport,
        },
        proto,
        zone,
    ))
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

/// `CTA_PROTOINFO`, when TCP (`CTA_PROTOINFO_TCP`): the state and the window tracking flags
/// of each direction (`CTA_PROTOINFO_TCP_FLAGS_ORIGINAL`, `_REPLY`: `struct nf_ct_tcp_flags`,
/// the flags first).
fn protoinfo(v: &[u8]) -> (Option<u8>, [u8; 2]) {
    let (mut state, mut flags) = (None, [0, 0]);
    for (a, x) in nlas(v) {
        if a == 1 {
            for (b, y) in nlas(x) {
                match b {
                    1 => state = y.first().copied(),
                    4 => flags[0] = y.first().copied().unwrap_or(0),
                    5 => flags[1] = y.first().copied().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    (state, flags)
}

/// A tuple not read yet, replaced by the message's own.
const UNSET: FlowTuple = FlowTuple {
    src: IpAddress::V4([0; 4]),
    dst: IpAddress::V4([0; 4]),
    sport: 0,
    dport: 0,
};

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
    let (mut status, mut mark, mut zone, mut id) = (0, 0, None, 0);
    let mut e = Entry {
        flow: Flow::new(0, UNSET, UNSET),
        timeout: 0,
        use_count: 0,
        tcp_state: None,
        tcp_flags: [0, 0],
        counters_orig: None,
        counters_reply: None,
        labels: None,
        tuple_zones: [0, 0],
    };
    for (a, x) in nlas(&payload[4..]) {
        match a {
            1 => orig = Some(tuple(x).ok_or_else(|| bad("CTA_TUPLE_ORIG"))?),
            2 => reply = Some(tuple(x).ok_or_else(|| bad("CTA_TUPLE_REPLY"))?),
            3 => status = be32(x).ok_or_else(|| bad("CTA_STATUS"))?,
            4 => (e.tcp_state, e.tcp_flags) = protoinfo(x),
            7 => e.timeout = be32(x).ok_or_else(|| bad("CTA_TIMEOUT"))?,
            8 => mark = be32(x).ok_or_else(|| bad("CTA_MARK"))?,
            9 => e.counters_orig = counters(x),
            10 => e.counters_reply = counters(x),
            11 => e.use_count = be32(x).ok_or_else(|| bad("CTA_USE"))?,
            12 => id = be32(x).ok_or_else(|| bad("CTA_ID"))?,
            18 => zone = Some(be16(x).ok_or_else(|| bad("CTA_ZONE"))?),
            22 => e.labels = Some(<[u8; 16]>::try_from(x).map_err(|_| bad("CTA_LABELS"))?),
            _ => {}
        }
    }
    let (orig, proto, orig_zone) = orig.ok_or_else(|| bad("CTA_TUPLE_ORIG"))?;
    let (reply, _, reply_zone) = reply.ok_or_else(|| bad("CTA_TUPLE_REPLY"))?;
    // NAT derived from the tuples the one way the API defines it.
    e.flow = Flow::new(proto, orig, reply);
    e.flow.family = Family(family);
    e.flow.zone = zone.unwrap_or(orig_zone);
    e.flow.mark = mark;
    e.flow.status = status;
    e.flow.id = id;
    e.tuple_zones = [orig_zone, reply_zone];
    Ok(Some(if m == CT_NEW {
        Message::New(e)
    } else {
        Message::Delete(e)
    }))
}
