//! Nexthop objects and groups (`RTM_NEWNEXTHOP`/`RTM_DELNEXTHOP`): parsed here, netlink-packet-route
//! 0.34 has no type for them.

use super::{bytes_ip, nlas, u32_of};
use ekho_plugin_api::abi_stable::std_types::{ROption, RString, RVec};
use ekho_plugin_api::object::*;

/// Parses an `RTM_NEWNEXTHOP`/`RTM_DELNEXTHOP` payload (`struct nhmsg` + `NHA_*` attributes).
pub fn parse(payload: &[u8]) -> Option<Nexthop> {
    if payload.len() < 8 {
        return None;
    }
    let mut n = Nexthop {
        id: 0,
        family: Family(payload[0]),
        gateway: ROption::RNone,
        ifindex: 0,
        dev: RString::new(),
        blackhole: false,
        fdb: false,
        flags: u32_of(&payload[4..8])?,
        protocol: Protocol(payload[2]),
        scope: Scope(payload[1]),
        group: RVec::new(),
        group_type: 0,
        encap: ROption::RNone,
    };
    for (kind, v) in nlas(&payload[8..]) {
        match kind {
            1 => n.id = u32_of(v)?,
            2 => {
                // struct nexthop_grp { u32 id; u8 weight; u8 weight_high; u16 resvd2; }
                n.group = v
                    .chunks_exact(8)
                    .map(|c| GroupMember {
                        id: u32::from_ne_bytes(c[..4].try_into().unwrap()),
                        weight: (c[4] as u16 | ((c[5] as u16) << 8)) + 1,
                    })
                    .collect();
            }
            3 => n.group_type = u16::from_ne_bytes(v.get(..2)?.try_into().ok()?),
            4 => n.blackhole = true,
            5 => n.ifindex = u32_of(v)?,
            6 => n.gateway = bytes_ip(v).into(),
            7 => {
                let k = u16::from_ne_bytes(v.get(..2)?.try_into().ok()?);
                n.encap = ROption::RSome(Encap {
                    kind: k,
                    text: RString::new(),
                });
            }
            11 => n.fdb = true,
            _ => {}
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::tests::one;
    use crate::Event;

    #[test]
    fn nexthop_and_group() {
        // ip nexthop add id 7 via 10.1.0.2 dev va
        let Event::NewNexthop(n) =
            one("3000000068000200010000002867000002fd00000000000008000100070000000800050003000000080006000a010002")
        else {
            panic!()
        };
        assert_eq!(
            (n.id, n.ifindex, n.scope, n.is_group()),
            (7, 3, Scope::LINK, false)
        );
        assert_eq!(n.gateway, ROption::RSome("10.1.0.2".parse().unwrap()));
        // ip nexthop add id 8 group 7,2
        let Event::NewNexthop(g) = one("3c0000006800020001000000286700000000000000000000080001000800000006000300000000000c000200070000000100000008000e0000000080")
        else {
            panic!()
        };
        assert_eq!(g.id, 8);
        assert_eq!(g.group.as_slice(), &[GroupMember { id: 7, weight: 2 }]);
        assert_eq!(g.group_type, 0);
    }
}
