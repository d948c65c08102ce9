//! Connection-tracking flows (API 1.2): conntrack entries the host's offload policy made
//! candidates, for a dataplane to forward itself, NAT included.
//!
//! A flow is what `conntrack -L` lists: two tuples (the original direction, as the first packet
//! was seen, and the reply direction, as the answer is expected), from which NAT is derived
//! (the reply not addressed to the original source: source NAT; not coming from the original
//! destination: destination NAT). Field names in JSON follow `conntrack -L`.
//!
//! How a dataplane runs one: a packet matching `original` (its source, destination, protocol
//! and ports) is rewritten by [`Flow::snat`] (new source address and port) and [`Flow::dnat`]
//! (new destination address and port); a packet matching `reply` gets the inverse (its
//! destination becomes `original.src`/`sport`, its source `original.dst`/`dport`). Both then
//! follow the routes as any packet. The dataplane counts each direction and reports it through
//! [`Plugin::object_stats`](crate::Plugin::object_stats) (the host keeps the conntrack entry
//! alive while it advances); on a TCP FIN or RST it passes the packet to the kernel, stops
//! forwarding the flow and hands it back with
//! [`Request::ReleaseFlow`](crate::Request::ReleaseFlow), so the kernel sees the teardown.

use super::net::{Family, IpAddress};
use abi_stable::std_types::ROption;
use abi_stable::StableAbi;

/// `IPS_*` status bits of a conntrack entry ([`Flow::status`]).
pub mod status {
    /// A packet was seen in the reply direction.
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// Traffic was seen both ways enough for the entry to be kept under pressure.
    pub const ASSURED: u32 = 1 << 2;
    /// The entry is in the kernel's table.
    pub const CONFIRMED: u32 = 1 << 3;
    /// Source NAT applies.
    pub const SRC_NAT: u32 = 1 << 4;
    /// Destination NAT applies.
    pub const DST_NAT: u32 = 1 << 5;
    /// The entry is offloaded to the kernel's flowtable.
    pub const OFFLOAD: u32 = 1 << 14;
}

/// One direction of a flow: addresses and ports (for ICMP: `sport` is the id, `dport` is
/// `type << 8 | code`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct FlowTuple {
    pub src: IpAddress,
    pub dst: IpAddress,
    pub sport: u16,
    pub dport: u16,
}

/// A NAT rewrite of the original direction: the address and port put in place of the
/// original ones.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FlowNat {
    pub addr: IpAddress,
    pub port: u16,
}

/// A conntrack flow offered for offload (kind `flow`, API 1.2). Its identity
/// ([`ObjectKey::Flow`](super::ObjectKey::Flow)) is the kernel's: zone and original tuple. A
/// new entry of the same tuple (the old one deleted) has another `id`.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Flow {
    /// [`Family::INET`] or [`Family::INET6`].
    pub family: Family,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6, 132 sctp, ...).
    pub protocol: u8,
    /// Conntrack zone (`CTA_ZONE`), 0 by default.
    pub zone: u16,
    /// Conntrack mark (`CTA_MARK`).
    pub mark: u32,
    /// The original direction, as the first packet was seen.
    pub original: FlowTuple,
    /// The reply direction, as the answer is expected (after NAT).
    pub reply: FlowTuple,
    /// Source NAT of the original direction (derived from the tuples): the new source.
    pub snat: ROption<FlowNat>,
    /// Destination NAT of the original direction (derived from the tuples): the new destination.
    pub dnat: ROption<FlowNat>,
    /// `IPS_*` bits ([`status`]).
    pub status: u32,
    /// The conntrack id (`CTA_ID`).
    pub id: u32,
}

impl Flow {
    /// A flow from its two tuples, NAT derived from them (what the host does).
    ///
    /// ```
    /// use ekho_plugin_api::prelude::*;
    /// let a = |s: &str| s.parse::<IpAddress>().unwrap();
    /// // 10.0.1.2:40000 -> 10.0.2.2:5201, masqueraded behind 10.0.2.1.
    /// let f = Flow::new(
    ///     6,
    ///     FlowTuple { src: a("10.0.1.2"), dst: a("10.0.2.2"), sport: 40000, dport: 5201 },
    ///     FlowTuple { src: a("10.0.2.2"), dst: a("10.0.2.1"), sport: 5201, dport: 40000 },
    /// );
    /// assert_eq!(f.snat.into_option(), Some(FlowNat { addr: a("10.0.2.1"), port: 40000 }));
    /// assert!(f.dnat.is_none() && f.is_nat());
    /// ```
    pub fn new(protocol: u8, original: FlowTuple, reply: FlowTuple) -> Flow {
        let snat =
            (reply.dst != original.src || reply.dport != original.sport).then_some(FlowNat {
                addr: reply.dst,
                port: reply.dport,
            });
        let dnat =
            (reply.src != original.dst || reply.sport != original.dport).then_some(FlowNat {
                addr: reply.src,
                port: reply.sport,
            });
        Flow {
            family: original.src.family(),
            protocol,
            zone: 0,
            mark: 0,
            original,
            reply,
            snat: snat.into(),
            dnat: dnat.into(),
            status: 0,
            id: 0,
        }
    }

    /// Whether the flow is NATed (either way): a plugin without
    /// [`FlowCapabilities::nat`](crate::capability::FlowCapabilities::nat) is not offered it.
    pub fn is_nat(&self) -> bool {
        self.snat.is_some() || self.dnat.is_some()
    }

    /// The flow's JSON in `conntrack -L`'s wording (`family`, `proto`, `original`/`reply` with
    /// `src`, `dst`, `sport`, `dport` or ICMP's `type`, `code`, `id`; `flags`, `mark`, `zone`,
    /// `id`).
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let fam = if self.family == Family::INET6 {
            "ipv6"
        } else {
            "ipv4"
        };
        m.insert("family".into(), fam.into());
        m.insert("l3protonum".into(), self.family.0.into());
        m.insert("proto".into(), proto_name(self.protocol).into());
        m.insert("protonum".into(), self.protocol.into());
        m.insert("original".into(), tuple_json(self.protocol, &self.original));
        m.insert("reply".into(), tuple_json(self.protocol, &self.reply));
        m.insert("flags".into(), flags(self.status).into());
        m.insert("mark".into(), self.mark.into());
        if self.zone != 0 {
            m.insert("zone".into(), self.zone.into());
        }
        m.insert("id".into(), self.id.into());
        serde_json::Value::Object(m)
    }
}

/// Whether a protocol's tuples carry ICMP's id, type and code instead of ports.
pub fn is_icmp(protocol: u8) -> bool {
    protocol == 1 || protocol == 58
}

#[cfg(feature = "json")]
fn tuple_json(protocol: u8, t: &FlowTuple) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("src".into(), t.src.to_std().to_string().into());
    m.insert("dst".into(), t.dst.to_std().to_string().into());
    if is_icmp(protocol) {
        m.insert("type".into(), (t.dport >> 8).into());
        m.insert("code".into(), (t.dport & 0xff).into());
        m.insert("id".into(), t.sport.into());
    } else {
        m.insert("sport".into(), t.sport.into());
        m.insert("dport".into(), t.dport.into());
    }
    serde_json::Value::Object(m)
}

/// conntrack's name of an IP protocol (`conntrack -L`'s first column; the number otherwise).
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        33 => "dccp".into(),
        47 => "gre".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

/// The flags `conntrack -L` prints in brackets, in its order.
pub fn flags(status_bits: u32) -> Vec<&'static str> {
    let mut v = Vec::new();
    if status_bits & status::SEEN_REPLY == 0 {
        v.push("UNREPLIED");
    }
    if status_bits & status::ASSURED != 0 {
        v.push("ASSURED");
    }
    if status_bits & status::OFFLOAD != 0 {
        v.push("OFFLOAD");
    }
    v
}
