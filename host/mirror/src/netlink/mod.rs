//! rtnetlink messages to mirror [`Event`]s, a file per object family.
//!
//! Links, addresses, routes, neighbours/FDB and rules are decoded by `netlink-packet-route`
//! ([`link`], [`address`], [`route`], [`neighbour`], [`rule`]: each converts the crate's
//! message). netlink-packet-route 0.34 has no types for nexthop objects (`RTM_*NEXTHOP`), netconf
//! (`RTM_*NETCONF`), MDB (`RTM_*MDB`) and bridge VLANs (`RTM_*VLAN`): [`nexthop`], [`netconf`],
//! [`mdb`] and [`vlan`] parse those payloads minimally with netlink-packet-core's
//! [`NlasIterator`] over the fixed kernel header structs (`nhmsg`, `netconfmsg`,
//! `br_port_msg`/`br_mdb_entry`, `br_vlan_msg`). Their message types are in [`rtm`].
//!
//! tc messages (qdiscs, classes, filters, chains, actions) are decoded by netlink-packet-route
//! too, into the mirror's tc objects in [`tc`].
//!
//! nftables messages (`NETLINK_NETFILTER`, the netfilter state on the forwarding path) are
//! parsed in [`nftables`].
//!
//! [`split`] cuts a received buffer into messages; [`parse`] then [`event`] (or [`decode`], both
//! at once) turn one into an [`Event`].

pub mod address;
pub mod link;
pub mod mdb;
pub mod neighbour;
pub mod netconf;
pub mod nexthop;
pub mod nftables;
pub mod route;
pub mod rtm;
pub mod rule;
pub mod tc;
pub mod tc_act;
pub mod tc_objects;
pub mod vlan;

use crate::Event;
use ekho_plugin_api::object::*;
use netlink_packet_core::{NetlinkHeader, NlaBuffer, NlasIterator, NLA_TYPE_MASK};
use std::net::IpAddr;

fn ip(a: IpAddr) -> IpAddress {
    a.into()
}

fn bytes_ip(b: &[u8]) -> Option<IpAddress> {
    match b.len() {
        4 => Some(IpAddress::V4(b.try_into().ok()?)),
        16 => Some(IpAddress::V6(b.try_into().ok()?)),
        _ => None,
    }
}

fn zero_addr(family: Family) -> IpAddress {
    if family == Family::INET6 {
        IpAddress::V6([0; 16])
    } else {
        IpAddress::V4([0; 4])
    }
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// The attributes of `buf`: (type without flags, value).
pub(crate) fn nlas(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(buf)
        .filter_map(|r: Result<NlaBuffer<&[u8]>, _>| r.ok())
        .map(|n| {
            let kind = n.kind() & NLA_TYPE_MASK;
            let len = n.value_length();
            let inner: &[u8] = n.into_inner();
            (kind, &inner[4..4 + len])
        })
}

/// A netlink message parsed by netlink-packet-route (rtnetlink types), or kept as bytes for the
/// types ekho reads itself (nexthop, netconf, MDB, VLAN): the first half of [`decode`], which a
/// dump runs on its receiving thread.
pub enum Parsed {
    /// An rtnetlink message and the `nlmsg_flags` of its header.
    Rtnl(netlink_packet_route::RouteNetlinkMessage, u16),
    /// Message type and payload.
    Raw(u16, Vec<u8>),
    /// A type ekho does not mirror.
    Ignored,
}

/// Parses one message (see [`Parsed`]).
pub fn parse(header: &NetlinkHeader, payload: &[u8]) -> Result<Parsed, String> {
    use netlink_packet_core::NetlinkDeserializable;
    use netlink_packet_route::RouteNetlinkMessage as M;
    let t = header.message_type;
    Ok(match t {
        rtm::NEWNEXTHOP
        | rtm::DELNEXTHOP
        | rtm::NEWNETCONF
        | rtm::DELNETCONF
        | rtm::NEWMDB
        | rtm::GETMDB
        | rtm::DELMDB
        | rtm::NEWVLAN
        | rtm::DELVLAN => Parsed::Raw(t, payload.to_vec()),
        // Links to rules (16..=34), tc (36..=51: qdiscs, classes, filters, actions; 100..=102:
        // chains).
        16..=34 | 36..=51 | 100..=102 => Parsed::Rtnl(
            M::deserialize(header, payload).map_err(|e| format!("type {t}: {e}"))?,
            header.flags,
        ),
        _ => Parsed::Ignored,
    })
}

/// The mirror event of a parsed message (the second half of [`decode`]).
pub fn event(p: &Parsed) -> Event {
    use netlink_packet_route::RouteNetlinkMessage as M;
    match p {
        Parsed::Raw(t, payload) => {
            let payload = &payload[..];
            match *t {
                rtm::NEWNEXTHOP => nexthop::parse(payload)
                    .map(Event::NewNexthop)
                    .unwrap_or(Event::Ignored),
                rtm::DELNEXTHOP => nexthop::parse(payload)
                    .map(|n| Event::DelNexthop(n.id))
                    .unwrap_or(Event::Ignored),
                rtm::NEWNETCONF => netconf::parse(payload)
                    .map(Event::NewNetconf)
                    .unwrap_or(Event::Ignored),
                rtm::DELNETCONF => netconf::parse(payload)
                    .map(|n| Event::DelNetconf(n.family, n.ifindex))
                    .unwrap_or(Event::Ignored),
                // MDB dump replies carry RTM_GETMDB.
                rtm::NEWMDB | rtm::GETMDB => Event::NewMdb(mdb::parse(payload)),
                rtm::DELMDB => Event::DelMdb(mdb::parse(payload)),
                // VLAN dump replies carry RTM_NEWVLAN.
                rtm::NEWVLAN => Event::NewVlan(vlan::parse(payload)),
                rtm::DELVLAN => Event::DelVlan(vlan::parse(payload)),
                _ => Event::Ignored,
            }
        }
        Parsed::Rtnl(m, flags) => match m {
            M::NewLink(l) => link::convert(l)
                .map(|x| match link::mcast_snooping(l) {
                    Some(s) => Event::NewBridge(x, s),
                    None => Event::NewLink(x),
                })
                .unwrap_or(Event::Ignored),
            M::DelLink(l) => link::convert(l)
                .map(Event::DelLink)
                .unwrap_or(Event::Ignored),
            M::NewAddress(a) => address::convert(a)
                .map(Event::NewAddress)
                .unwrap_or(Event::Ignored),
            M::DelAddress(a) => address::convert(a)
                .map(Event::DelAddress)
                .unwrap_or(Event::Ignored),
            M::NewRoute(r) => route::convert(r)
                .map(|r| Event::NewRoute(r, *flags))
                .unwrap_or(Event::Ignored),
            M::DelRoute(r) => route::convert(r)
                .map(Event::DelRoute)
                .unwrap_or(Event::Ignored),
            M::NewNeighbour(n) => neighbour::convert(n, false),
            M::DelNeighbour(n) => neighbour::convert(n, true),
            // Only IPv4/IPv6 rules: a VRF also adds its l3mdev rule for the multicast routing
            // families (RTNL_FAMILY_IPMR 128, IP6MR 129), which `ip rule` does not list and
            // multicast routing is not mirrored.
            M::NewRule(r) if rule::is_unicast(r) => Event::NewRule(rule::convert(r)),
            M::DelRule(r) if rule::is_unicast(r) => Event::DelRule(rule::convert(r)),
            M::NewRule(_) | M::DelRule(_) => Event::Ignored,
            M::NewQueueDiscipline(q) => Event::Tc(tc::Message::NewQdisc(tc::qdisc(q))),
            M::DelQueueDiscipline(q) => Event::Tc(tc::Message::DelQdisc(tc::qdisc(q))),
            M::NewTrafficClass(c) => Event::Tc(tc::Message::NewClass(tc::class(c))),
            M::DelTrafficClass(c) => Event::Tc(tc::Message::DelClass(tc::class(c))),
            M::NewTrafficFilter(f) => Event::Tc(tc::Message::NewFilter(tc::filter(f))),
            M::DelTrafficFilter(f) => Event::Tc(tc::Message::DelFilter(tc::filter(f))),
            M::NewTrafficChain(c) => Event::Tc(tc::Message::NewChain(tc::chain(c))),
            M::DelTrafficChain(c) => Event::Tc(tc::Message::DelChain(tc::chain(c))),
            // Action dump replies carry RTM_GETACTION.
            M::NewTrafficAction(a) | M::GetTrafficAction(a) => {
                Event::Tc(tc::Message::NewActions(tc::actions(a)))
            }
            M::DelTrafficAction(a) => Event::Tc(tc::Message::DelActions(tc::actions(a))),
            _ => Event::Ignored,
        },
        Parsed::Ignored => Event::Ignored,
    }
}

/// Decodes one message into a mirror event ([`parse`], then [`event`]).
pub fn decode(header: &NetlinkHeader, payload: &[u8]) -> Result<Event, String> {
    // Route notifications of the common shape skip netlink-packet-route (`route::fast`).
    const NEWROUTE: u16 = 24;
    const DELROUTE: u16 = 25;
    let t = header.message_type;
    let fast = match t {
        NEWROUTE | DELROUTE => route::fast(payload),
        _ => None,
    };
    if let Some(r) = fast {
        let e = if t == NEWROUTE {
            Event::NewRoute(r, header.flags)
        } else {
            Event::DelRoute(r)
        };
        #[cfg(debug_assertions)]
        assert_eq!(
            Ok(&e),
            parse(header, payload).map(|p| event(&p)).as_ref(),
            "route::fast differs from the full decode of {payload:02x?}"
        );
        return Ok(e);
    }
    Ok(event(&parse(header, payload)?))
}

/// Splits a buffer holding one or more netlink messages (one `recv`) into (header, payload).
pub fn split(buf: &[u8]) -> impl Iterator<Item = (NetlinkHeader, &[u8])> {
    use netlink_packet_core::{NetlinkBuffer, Parseable};
    // An iterator, not a vector: one allocation fewer per datagram on the event path (a
    // notification is a datagram of one message).
    let mut off = 0;
    std::iter::from_fn(move || {
        if off >= buf.len() {
            return None;
        }
        let nb = NetlinkBuffer::new_checked(&buf[off..]).ok()?;
        let len = nb.length() as usize;
        let header = NetlinkHeader::parse(&nb).ok()?;
        off += (len + 3) & !3;
        Some((header, nb.payload()))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    //! Messages captured from the kernel (6.18) of this machine in a scratch netns with a raw
    //! `AF_NETLINK` dump socket; hex as received.
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    pub(crate) fn one(s: &str) -> Event {
        let b = hex(s);
        let v: Vec<_> = split(&b).collect();
        assert_eq!(v.len(), 1);
        decode(&v[0].0, v[0].1).unwrap()
    }

    #[test]
    fn truncated_buffer_is_not_parsed() {
        let b = hex("500000001800020001000000ff660000021800006403");
        assert!(split(&b).next().is_none());
    }
}
