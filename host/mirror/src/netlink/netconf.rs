//! Per-device IPv4/IPv6 configuration (`RTM_NEWNETCONF`/`RTM_DELNETCONF`): parsed here,
//! netlink-packet-route 0.34 has no type for it.

use super::{nlas, u32_of};
use ekho_plugin_api::abi_stable::std_types::{ROption, RString};
use ekho_plugin_api::object::*;

/// Parses an `RTM_NEWNETCONF`/`RTM_DELNETCONF` payload (`struct netconfmsg` + `NETCONFA_*`).
pub fn parse(payload: &[u8]) -> Option<Netconf> {
    let family = Family(*payload.first()?);
    let mut n = Netconf {
        family,
        ifindex: 0,
        dev: RString::new(),
        forwarding: ROption::RNone,
        rp_filter: ROption::RNone,
        mc_forwarding: ROption::RNone,
        proxy_neigh: ROption::RNone,
        ignore_routes_with_linkdown: ROption::RNone,
        input: ROption::RNone,
    };
    let body = payload.get(4..).unwrap_or(&[]);
    let mut have_index = false;
    for (kind, v) in nlas(body) {
        let val = u32_of(v).map(|x| x as i32);
        match kind {
            1 => {
                n.ifindex = val?;
                have_index = true;
            }
            2 => n.forwarding = val.into(),
            3 => n.rp_filter = val.into(),
            4 => n.mc_forwarding = val.into(),
            5 => n.proxy_neigh = val.into(),
            6 => n.ignore_routes_with_linkdown = val.into(),
            7 => n.input = val.into(),
            _ => {}
        }
    }
    have_index.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::tests::one;
    use crate::Event;

    #[test]
    fn netconf_default() {
        let Event::NewNetconf(c) = one("4c00000050000200010000007c670000020000000800010001000000080002000000000008000300000000000800040000000000080008000000000008000500000000000800060000000000")
        else {
            panic!()
        };
        assert_eq!((c.family, c.ifindex), (Family::INET, 1));
        assert_eq!(c.forwarding, ROption::RSome(0));
        assert_eq!(c.input, ROption::RNone);
    }
}
