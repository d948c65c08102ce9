//! Requests the host makes of ctnetlink, built with netlink-packet-netfilter 0.4's types: the
//! source's dump, and the keep-alive.
//!
//! The keep-alive: `IPCTNL_MSG_CT_NEW` *without* `NLM_F_CREATE | NLM_F_EXCL` on an existing
//! entry is an update (`ctnetlink_change_conntrack`), and an update carrying `CTA_TIMEOUT` sets
//! the entry's timeout, the way the kernel's flowtable keeps the entries it offloads alive. The
//! entry is found by `CTA_TUPLE_ORIG` and `CTA_ZONE` (the crate has no zone attribute: it goes
//! as a raw attribute, `CTA_ZONE` 18, a big-endian u16, the crate's `Other` way). The kernel
//! answers `ENOENT` when the entry is gone (deleted, flushed, expired): nothing is created.
//!
//! A TCP entry's keep-alive also marks both directions `IP_CT_TCP_FLAG_BE_LIBERAL`
//! (`CTA_PROTOINFO` / `CTA_PROTOINFO_TCP` / `CTA_PROTOINFO_TCP_FLAGS_ORIGINAL` and `_REPLY`, flag
//! and mask 0x08), as the kernel's flowtable does for the entries it offloads: conntrack sees
//! none of an offloaded flow's packets, its tracked window goes stale, and the packets it sees
//! again (the FIN a dataplane hands back, the rest after a hand-back) would be out of window,
//! INVALID and not NATed: a masqueraded connection hung at its FIN without it (xdp-router).

use super::message::ObjectKey;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol,
    TCPFlags, Tuple as NfTuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

/// `CTA_ZONE`.
const CTA_ZONE: u16 = 18;

use super::message::TCP_FLAG_BE_LIBERAL as IP_CT_TCP_FLAG_BE_LIBERAL;

/// The dump of every entry of every family: `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`,
/// `AF_UNSPEC`, no attribute.
pub fn dump_all(seq: u32) -> Vec<u8> {
    let nf = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        ConntrackMessage::Get(vec![]),
    );
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    serialize(header, nf)
}

fn serialize(header: NetlinkHeader, nf: NetfilterMessage) -> Vec<u8> {
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(nf));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// The request setting the timeout of the entry of `key` (a flow's key: family, protocol,
/// zone, original tuple) to `timeout_s` seconds (a TCP one also liberal window tracking both
/// ways), with sequence number `seq`; `None` for another kind's key or a protocol without
/// ports (ICMP entries are not refreshed).
///
/// The zone goes as `CTA_ZONE`: the key's is the zone the original direction is tracked in,
/// and the kernel finds an entry by its original tuple in the zone of that direction
/// (`nf_ct_zone_equal`), whether the entry's zone covers both directions or the original only.
pub fn refresh_timeout(key: &ObjectKey, timeout_s: u32, seq: u32) -> Option<Vec<u8>> {
    let ObjectKey::Flow {
        family,
        protocol,
        zone,
        original: orig,
    } = *key
    else {
        return None;
    };
    if matches!(protocol, 1 | 58) {
        return None;
    }
    let mut attrs = vec![
        ConntrackAttribute::CtaTupleOrig(vec![
            NfTuple::Ip(vec![
                IPTuple::SourceAddress(orig.src.into()),
                IPTuple::DestinationAddress(orig.dst.into()),
            ]),
            NfTuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::from(protocol)),
                ProtoTuple::SourcePort(orig.sport),
                ProtoTuple::DestinationPort(orig.dport),
            ]),
        ]),
        ConntrackAttribute::CtaTimeout(timeout_s),
    ];
    if protocol == 6 {
        // TCPFlags is non_exhaustive: built by parsing its two bytes (flags, mask).
        let liberal = || {
            TCPFlags::parse(&[IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL])
                .expect("two bytes")
        };
        attrs.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
            vec![
                ProtoInfoTCP::OriginalFlags(liberal()),
                ProtoInfoTCP::ReplyFlags(liberal()),
            ],
        )]));
    }
    if zone != 0 {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            zone.to_be_bytes().to_vec(),
        )));
    }
    let nf = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::from(family.0), 0, 0),
        ConntrackMessage::New(attrs),
    );
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = seq;
    Some(serialize(header, nf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::message::{self, Family, FlowTuple};

    fn key(protocol: u8, zone: u16, dport: u16) -> ObjectKey {
        ObjectKey::Flow {
            family: Family::INET,
            protocol,
            zone,
            original: FlowTuple {
                src: "10.0.1.2".parse().unwrap(),
                dst: "10.0.2.2".parse().unwrap(),
                sport: 40000,
                dport,
            },
        }
    }

    #[test]
    fn the_dump_request_is_what_the_kernel_expects() {
        // The 20 bytes the source sent before it used the crate: nlmsghdr (length 20, type
        // CTNETLINK << 8 | IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq 5, pid 0) and
        // nfgenmsg (AF_UNSPEC, version 0, res_id 0).
        let mut want = Vec::new();
        want.extend_from_slice(&20u32.to_ne_bytes());
        want.extend_from_slice(&((message::SUBSYS << 8) | message::CT_GET as u16).to_ne_bytes());
        want.extend_from_slice(&0x301u16.to_ne_bytes());
        want.extend_from_slice(&5u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(dump_all(5), want);
    }

    #[test]
    fn the_refresh_is_an_update_of_the_original_tuple_with_a_timeout() {
        let k = key(17, 7, 53);
        let b = refresh_timeout(&k, 30, 9).unwrap();
        let v: Vec<_> = crate::netlink::split(&b).collect();
        assert_eq!(v.len(), 1);
        let (h, payload) = &v[0];
        assert_eq!(
            h.message_type,
            (message::SUBSYS << 8) | message::CT_NEW as u16
        );
        assert_eq!(
            h.flags,
            NLM_F_REQUEST | NLM_F_ACK,
            "no NLM_F_CREATE, no NLM_F_EXCL"
        );
        assert_eq!(h.sequence_number, 9);
        assert_eq!(payload[0], 2, "nfgen_family");
        // The mirror's own parser reads what the crate wrote: the same tuple; CTA_TIMEOUT and
        // CTA_ZONE as the kernel encodes them (a reply tuple is required by the parser only).
        let attrs: Vec<(u16, Vec<u8>)> = crate::netlink::nlas(&payload[4..])
            .map(|(t, v)| (t & 0x7fff, v.to_vec()))
            .collect();
        assert_eq!(
            attrs.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [1, 7, 18],
            "CTA_TUPLE_ORIG, CTA_TIMEOUT, CTA_ZONE"
        );
        assert_eq!(attrs[1].1, 30u32.to_be_bytes());
        assert_eq!(attrs[2].1, 7u16.to_be_bytes());
        let mut with_reply = payload.to_vec();
        let orig_nla = {
            let total = u16::from_ne_bytes([payload[4], payload[5]]) as usize;
            payload[4..4 + total].to_vec()
        };
        let mut reply = orig_nla.clone();
        reply[2] = 2; // CTA_TUPLE_REPLY, keeping the nested flag
        with_reply.extend_from_slice(&reply);
        let Some(message::Message::New(f)) =
            message::parse((message::SUBSYS << 8) | message::CT_NEW as u16, &with_reply).unwrap()
        else {
            panic!()
        };
        assert_eq!((f.key(), f.timeout), (k, 30));
        assert!(refresh_timeout(&key(1, 0, 0x800), 30, 1).is_none());
        assert!(
            refresh_timeout(&ObjectKey::Link { ifindex: 1 }, 30, 1).is_none(),
            "not a flow"
        );
    }

    #[test]
    fn a_tcp_refresh_marks_both_directions_liberal() {
        let b = refresh_timeout(&key(6, 0, 5201), 30, 1).unwrap();
        let v: Vec<_> = crate::netlink::split(&b).collect();
        let payload = &v[0].1;
        let attrs: Vec<(u16, Vec<u8>)> = crate::netlink::nlas(&payload[4..])
            .map(|(t, v)| (t, v.to_vec()))
            .collect();
        assert_eq!(
            attrs.iter().map(|(t, _)| t & 0x7fff).collect::<Vec<_>>(),
            [1, 7, 4],
            "CTA_TUPLE_ORIG, CTA_TIMEOUT, CTA_PROTOINFO"
        );
        // CTA_PROTOINFO (nested) > CTA_PROTOINFO_TCP 1 (nested) > FLAGS_ORIGINAL 4, FLAGS_REPLY 5,
        // each struct nf_ct_tcp_flags { flags, mask } = { 0x08, 0x08 }, as the kernel parses it.
        // (The crate sets no NLA_F_NESTED; ctnetlink parses these nests without requiring it.)
        let info = &attrs[2].1;
        let tcp: Vec<(u16, Vec<u8>)> = crate::netlink::nlas(info)
            .map(|(t, v)| (t, v.to_vec()))
            .collect();
        assert_eq!(tcp.len(), 1);
        assert_eq!(tcp[0].0 & 0x7fff, 1, "CTA_PROTOINFO_TCP");
        let flags: Vec<(u16, Vec<u8>)> = crate::netlink::nlas(&tcp[0].1)
            .map(|(t, v)| (t & 0x7fff, v.to_vec()))
            .collect();
        assert_eq!(flags, vec![(4, vec![0x08, 0x08]), (5, vec![0x08, 0x08])]);
    }
}
