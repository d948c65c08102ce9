//! Rules (`RTM_NEWRULE`/`RTM_DELRULE`), decoded by netlink-packet-route.

use super::ip;
use ekho_plugin_api::abi_stable::std_types::ROption;
use ekho_plugin_api::object::*;
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};

/// Whether a rule message is of IPv4 or IPv6 (not a multicast routing family's).
pub fn is_unicast(msg: &RuleMessage) -> bool {
    let f = u8::from(msg.header.family);
    f == Family::INET.0 || f == Family::INET6.0
}

/// Converts a rule message.
pub fn convert(msg: &RuleMessage) -> Rule {
    let h = &msg.header;
    let mut r = Rule {
        tos: h.tos,
        action: u8::from(h.action),
        flags: h.flags.bits(),
        ..Rule::lookup(Family(u8::from(h.family)), 0, h.table as u32)
    };
    for a in &msg.attributes {
        match a {
            RuleAttribute::Destination(d) => {
                r.dst = ROption::RSome(IpPrefix::new(ip(*d), h.dst_len))
            }
            RuleAttribute::Source(s) => r.src = ROption::RSome(IpPrefix::new(ip(*s), h.src_len)),
            RuleAttribute::Iifname(s) => r.iif = s.as_str().into(),
            RuleAttribute::Oifname(s) => r.oif = s.as_str().into(),
            RuleAttribute::Goto(g) => r.goto_target = *g,
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::FwMark(m) => r.fwmark = *m,
            RuleAttribute::FwMask(m) => r.fwmask = *m,
            RuleAttribute::SuppressPrefixLen(s) if *s != u32::MAX => {
                r.suppress_prefixlen = ROption::RSome(*s)
            }
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::L3MDev(b) => r.l3mdev = *b,
            RuleAttribute::Protocol(p) => r.protocol = Protocol(u8::from(*p)),
            RuleAttribute::IpProtocol(p) => r.ip_proto = u8::from(*p),
            RuleAttribute::SourcePortRange(p) => {
                r.sport = ROption::RSome(PortRange {
                    start: p.start,
                    end: p.end,
                })
            }
            RuleAttribute::DestinationPortRange(p) => {
                r.dport = ROption::RSome(PortRange {
                    start: p.start,
                    end: p.end,
                })
            }
            RuleAttribute::UidRange(u) => {
                r.uid_range = ROption::RSome(UidRange {
                    start: u.start,
                    end: u.end,
                })
            }
            RuleAttribute::TunId(t) => r.tun_id = ROption::RSome(*t),
            RuleAttribute::Realm(f) => {
                r.realms = ROption::RSome(u32::from(f.source) << 16 | u32::from(f.destination))
            }
            RuleAttribute::SuppressIfGroup(g) if *g != u32::MAX => {
                r.suppress_ifgroup = ROption::RSome(*g)
            }
            _ => {}
        }
    }
    r
}
