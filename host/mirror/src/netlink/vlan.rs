//! Bridge port VLANs (`RTM_NEWVLAN`/`RTM_DELVLAN`): parsed here, netlink-packet-route 0.34 has no
//! type for them.

use super::nlas;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::*;

/// Parses an `RTM_NEWVLAN`/`RTM_DELVLAN` payload (`struct br_vlan_msg` + `BRIDGE_VLANDB_ENTRY`
/// nests of `BRIDGE_VLANDB_ENTRY_INFO` = `struct bridge_vlan_info { u16 flags; u16 vid; }` and
/// an optional `BRIDGE_VLANDB_ENTRY_RANGE` end vid), expanded to one entry per vid.
pub fn parse(payload: &[u8]) -> Vec<BridgeVlan> {
    let mut out = Vec::new();
    if payload.len() < 8 {
        return out;
    }
    let ifindex = u32::from_ne_bytes(payload[4..8].try_into().unwrap());
    for (k, v) in nlas(&payload[8..]) {
        if k != 1 {
            continue; // BRIDGE_VLANDB_GLOBAL_OPTIONS and others
        }
        let mut info = None;
        let mut end = None;
        for (k2, a) in nlas(v) {
            match (k2, a.len()) {
                (1, 4..) => {
                    info = Some((
                        u16::from_ne_bytes(a[0..2].try_into().unwrap()),
                        u16::from_ne_bytes(a[2..4].try_into().unwrap()),
                    ))
                }
                (2, 2..) => end = Some(u16::from_ne_bytes(a[0..2].try_into().unwrap())),
                _ => {}
            }
        }
        let Some((flags, vid)) = info else { continue };
        for vid in vid..=end.unwrap_or(vid).max(vid) {
            out.push(BridgeVlan {
                ifindex,
                dev: RString::new(),
                vid,
                pvid: flags & 2 != 0,
                untagged: flags & 4 != 0,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_entries_and_ranges() {
        // SYNTHESIZED from the uapi layout (this kernel has no CONFIG_BRIDGE_VLAN_FILTERING, so
        // none could be captured): br_vlan_msg{family 7, ifindex 4}, an entry vid 1 PVID
        // UNTAGGED, an entry vids 10..=12 (range).
        let mut p = vec![7u8, 0, 0, 0, 4, 0, 0, 0];
        let nla = |t: u16, v: &[u8]| {
            let mut b = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
            b.extend(t.to_ne_bytes());
            b.extend(v);
            while b.len() % 4 != 0 {
                b.push(0);
            }
            b
        };
        let info = |flags: u16, vid: u16| [flags.to_ne_bytes(), vid.to_ne_bytes()].concat();
        p.extend(nla(1, &nla(1, &info(6, 1))));
        p.extend(nla(
            1,
            &[nla(1, &info(0, 10)), nla(2, &12u16.to_ne_bytes())].concat(),
        ));
        let v = parse(&p);
        let got: Vec<(u32, u16, bool, bool)> = v
            .iter()
            .map(|x| (x.ifindex, x.vid, x.pvid, x.untagged))
            .collect();
        assert_eq!(
            got,
            [
                (4, 1, true, true),
                (4, 10, false, false),
                (4, 11, false, false),
                (4, 12, false, false)
            ]
        );
    }
}
