//! Bridge multicast database entries (`RTM_NEWMDB`/`RTM_DELMDB`, dump replies `RTM_GETMDB`):
//! parsed here, netlink-packet-route 0.34 has no type for them.

use super::{bytes_ip, nlas};
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::*;

/// Parses an `RTM_NEWMDB`/`RTM_DELMDB` payload (`struct br_port_msg` + `MDBA_MDB` nest of
/// `MDBA_MDB_ENTRY` nests of `MDBA_MDB_ENTRY_INFO` = `struct br_mdb_entry` + `MDBA_MDB_EATTR_*`).
pub fn parse(payload: &[u8]) -> Vec<MdbEntry> {
    let mut out = Vec::new();
    if payload.len() < 8 {
        return out;
    }
    let bridge = u32::from_ne_bytes(payload[4..8].try_into().unwrap());
    for (k, v) in nlas(&payload[8..]) {
        if k != 1 {
            continue; // MDBA_ROUTER and others
        }
        for (k2, v2) in nlas(v) {
            if k2 != 1 {
                continue;
            }
            for (k3, e) in nlas(v2) {
                if k3 != 1 || e.len() < 26 {
                    continue;
                }
                let port = u32::from_ne_bytes(e[0..4].try_into().unwrap());
                let state = e[4];
                let vid = u16::from_ne_bytes(e[6..8].try_into().unwrap());
                let proto = u16::from_be_bytes(e[24..26].try_into().unwrap());
                let (group, mac_group) = match proto {
                    0x0800 => (
                        Some(IpAddress::V4(e[8..12].try_into().unwrap())),
                        LinkAddr::default(),
                    ),
                    0x86dd => (
                        Some(IpAddress::V6(e[8..24].try_into().unwrap())),
                        LinkAddr::default(),
                    ),
                    _ => (None, LinkAddr::new(&e[8..14])),
                };
                let mut source = None;
                if e.len() > 28 {
                    for (k4, a) in nlas(&e[28..]) {
                        if k4 == 2 {
                            source = bytes_ip(a);
                        }
                    }
                }
                out.push(MdbEntry {
                    bridge,
                    bridge_name: RString::new(),
                    port,
                    port_name: RString::new(),
                    group: group.into(),
                    mac_group,
                    source: source.into(),
                    vid,
                    permanent: state == 1,
                });
            }
        }
    }
    out
}
