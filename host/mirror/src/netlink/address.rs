//! Addresses (`RTM_NEWADDR`/`RTM_DELADDR`), decoded by netlink-packet-route.

use super::{ip, zero_addr};
use ekho_plugin_api::abi_stable::std_types::{ROption, RString};
use ekho_plugin_api::object::*;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};

/// Converts an address message.
pub fn convert(msg: &AddressMessage) -> Option<Address> {
    let family = Family(u8::from(msg.header.family));
    let mut local = None;
    let mut addr = None;
    let mut a = Address {
        family,
        ifindex: msg.header.index,
        dev: RString::new(),
        local: zero_addr(family),
        prefixlen: msg.header.prefix_len,
        peer: ROption::RNone,
        broadcast: ROption::RNone,
        scope: Scope(u8::from(msg.header.scope)),
        flags: msg.header.flags.bits() as u32,
        label: RString::new(),
        valid_life: u32::MAX,
        preferred_life: u32::MAX,
    };
    for at in &msg.attributes {
        match at {
            AddressAttribute::Local(x) => local = Some(ip(*x)),
            AddressAttribute::Address(x) => addr = Some(ip(*x)),
            AddressAttribute::Label(s) => a.label = s.as_str().into(),
            AddressAttribute::Broadcast(b) => a.broadcast = ROption::RSome((*b).into()),
            AddressAttribute::Flags(f) => a.flags = f.bits(),
            AddressAttribute::CacheInfo(c) => {
                a.valid_life = c.ifa_valid;
                a.preferred_life = c.ifa_preferred;
            }
            _ => {}
        }
    }
    match (local, addr) {
        (Some(l), Some(p)) => {
            a.local = l;
            if l != p {
                a.peer = ROption::RSome(p);
            }
        }
        (Some(l), None) => a.local = l,
        (None, Some(p)) => a.local = p,
        (None, None) => return None,
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use crate::netlink::tests::one;
    use crate::Event;

    #[test]
    fn ipv4_address() {
        let Event::NewAddress(a) = one("4c0000001400020001000000a56700000218800003000000080001000a010001080002000a0100010700030076610000080008008000000014000600ffffffffffffffff84ae010084ae0100")
        else {
            panic!()
        };
        assert_eq!(a.local, "10.1.0.1".parse().unwrap());
        assert_eq!((a.prefixlen, a.ifindex, a.peer.is_none()), (24, 3, true));
        assert_eq!(a.label.as_str(), "va");
        assert_eq!(a.valid_life, u32::MAX);
        assert_eq!(a.flags & 0x80, 0x80);
    }
}
