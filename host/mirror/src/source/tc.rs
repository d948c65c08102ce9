//! The source's tc dumps: qdiscs of every device, then per device its classes, and per block
//! (each qdisc's and class's own, each shared block once) its filters and chains, then the
//! actions of every kind `tc actions` knows. Notifications come on the rtnetlink event socket
//! (`RTNLGRP_TC`).

use super::{ReqSocket, SourceError};
use crate::netlink::tc::{H_INGRESS, H_MIN_EGRESS, H_MIN_INGRESS, IFINDEX_MAGIC_BLOCK};
use crate::state::tc::Tc;
use crate::Event;
use std::collections::BTreeSet;

/// `RTNLGRP_TC`.
pub const GROUP: u32 = 4;
const GETQDISC: u16 = 38;
const GETTCLASS: u16 = 42;
const GETTFILTER: u16 = 46;
const GETACTION: u16 = 50;
const GETCHAIN: u16 = 102;

/// Action kinds dumped (`tc actions list action KIND` for each): iproute2's. A kind the kernel
/// lacks dumps empty.
pub const ACTION_KINDS: &[&str] = &[
    "bpf",
    "connmark",
    "csum",
    "ct",
    "ctinfo",
    "gact",
    "gate",
    "ife",
    "mirred",
    "mpls",
    "nat",
    "pedit",
    "police",
    "sample",
    "simple",
    "skbedit",
    "skbmod",
    "tunnel_key",
    "vlan",
];

/// A `tcmsg` for device `ifindex` (or [`IFINDEX_MAGIC_BLOCK`]) and `parent`.
fn tcmsg(ifindex: u32, parent: u32) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    v[12..16].copy_from_slice(&parent.to_ne_bytes());
    v
}

fn nla(t: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + value.len() + 3);
    v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&t.to_ne_bytes());
    v.extend_from_slice(value);
    v.resize((v.len() + 3) & !3, 0);
    v
}

/// An `RTM_GETACTION` dump request of one kind: `tcamsg`, then `TCA_ACT_TAB { 1 {
/// TCA_ACT_KIND } }` as iproute2 builds it.
fn action_request(kind: &str) -> Vec<u8> {
    let mut k = kind.as_bytes().to_vec();
    k.push(0);
    let mut v = vec![0u8; 4];
    v.extend(nla(1, &nla(1, &nla(1, &k))));
    v
}

/// The (ifindex, parent) whose block holds filters and chains, and the shared blocks.
fn blocks(tc: &Tc) -> (Vec<(u32, u32)>, BTreeSet<u32>) {
    let mut dev = Vec::new();
    let mut shared = BTreeSet::new();
    for q in tc.qdiscs.values() {
        if q.parent == H_INGRESS {
            // ingress has one hook, clsact two; a hook bound to a shared block is dumped as
            // the block.
            match q.ingress_block {
                Some(b) => {
                    shared.insert(b);
                }
                None => dev.push((q.ifindex, H_MIN_INGRESS)),
            }
            if q.kind == "clsact" {
                match q.egress_block {
                    Some(b) => {
                        shared.insert(b);
                    }
                    None => dev.push((q.ifindex, H_MIN_EGRESS)),
                }
            }
        } else if q.handle != 0 {
            dev.push((q.ifindex, q.handle));
        }
    }
    for c in tc.classes.values() {
        dev.push((c.ifindex, c.handle));
    }
    (dev, shared)
}

impl ReqSocket {
    /// Dumps the whole tc state. Returns it, the message count and whether a dump was
    /// interrupted. A request the kernel refuses (a device gone meanwhile, a qdisc without
    /// blocks) is skipped: the notifications that follow repair it.
    pub(super) fn dump_tc(&mut self) -> Result<(Tc, u64, bool), SourceError> {
        let mut tc = Tc::default();
        let mut n = 0;
        let mut intr = false;
        let mut run =
            |req: &mut ReqSocket, t: u16, h: Vec<u8>, tc: &mut Tc| match req.dump(t, &h, &mut |e| {
                if let Event::Tc(m) = e {
                    tc.add_dumped(m)
                }
            }) {
                Ok((c, i)) => {
                    n += c;
                    intr |= i;
                    Ok(())
                }
                Err(e @ SourceError::Netlink { .. }) => {
                    tracing::debug!(error = %e, "tc dump refused, skipped");
                    Ok(())
                }
                Err(e) => Err(e),
            };
        run(self, GETQDISC, tcmsg(0, 0), &mut tc)?;
        let devs: BTreeSet<u32> = tc.qdiscs.keys().map(|k| k.0).collect();
        for d in devs {
            run(self, GETTCLASS, tcmsg(d, 0), &mut tc)?;
        }
        let (dev, shared) = blocks(&tc);
        let targets = dev
            .into_iter()
            .chain(shared.into_iter().map(|b| (IFINDEX_MAGIC_BLOCK, b)));
        for (ifindex, parent) in targets.collect::<Vec<_>>() {
            run(self, GETTFILTER, tcmsg(ifindex, parent), &mut tc)?;
            run(self, GETCHAIN, tcmsg(ifindex, parent), &mut tc)?;
        }
        for k in ACTION_KINDS {
            run(self, GETACTION, action_request(k), &mut tc)?;
        }
        Ok((tc, n, intr))
    }
}

/// A tc action's software counters as the kernel reports them (`tc -s`'s `Sent BYTES bytes
/// PKTS pkt (dropped DROPS, overlimits OVERLIMITS)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwCounters {
    /// Bytes.
    pub bytes: u64,
    /// Packets.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Packets over a limit (police).
    pub overlimits: u64,
}

/// The software counters of an action as a dump carries them.
fn action_counters(a: &netlink_packet_route::tc::TcAction) -> SwCounters {
    use netlink_packet_route::tc::{TcActionAttribute, TcStats2};
    let mut c = SwCounters::default();
    for x in &a.attributes {
        if let TcActionAttribute::Stats(v) = x {
            for s in v {
                match s {
                    TcStats2::Basic(b) => {
                        c.bytes = b.bytes;
                        c.packets = b.packets.into();
                    }
                    TcStats2::Queue(q) => {
                        c.drops = q.drops.into();
                        c.overlimits = q.overlimits.into();
                    }
                    _ => {}
                }
            }
        }
    }
    c
}

impl ReqSocket {
    /// Every filter's software counters now, per action in order (a filter's match counts
    /// reach the kernel as its actions' counters: `tc -s filter show`), by the key the mirror
    /// keeps the filter under: one `RTM_GETTFILTER` dump per block `tc` holds (the mirror keeps
    /// no counter: they change without a message).
    pub fn filter_counters(
        &mut self,
        tc: &Tc,
    ) -> Result<std::collections::BTreeMap<crate::state::tc::FilterKey, Vec<SwCounters>>, SourceError>
    {
        use netlink_packet_route::RouteNetlinkMessage as R;
        let mut out = std::collections::BTreeMap::new();
        let (dev, shared) = blocks(tc);
        let targets = dev
            .into_iter()
            .chain(shared.into_iter().map(|b| (IFINDEX_MAGIC_BLOCK, b)));
        for (ifindex, parent) in targets.collect::<Vec<_>>() {
            let r = self.dump_messages(GETTFILTER, &tcmsg(ifindex, parent), &mut |m| {
                let R::NewTrafficFilter(m) = m else { return };
                let f = tc.canonical(crate::netlink::tc::filter(&m));
                if f.handle == 0 {
                    return;
                }
                let raw = crate::netlink::tc::Filter {
                    options: m
                        .attributes
                        .iter()
                        .find_map(|a| match a {
                            netlink_packet_route::tc::TcAttribute::Options(o) => Some(o.clone()),
                            _ => None,
                        })
                        .unwrap_or_default(),
                    ..f.clone()
                };
                let counters = crate::netlink::tc::filter_actions(&raw)
                    .map(action_counters)
                    .collect();
                out.insert((f.target, f.parent, f.chain, f.prio, f.handle), counters);
            });
            if let Err(e @ SourceError::Netlink { .. }) = &r {
                tracing::debug!(error = %e, "tc filter dump refused, skipped");
            } else {
                r?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_request_is_iproute2s() {
        // tcamsg, TCA_ACT_TAB { 1 { TCA_ACT_KIND "mirred" } }, lengths without padding.
        assert_eq!(
            action_request("mirred"),
            [
                0, 0, 0, 0, 20, 0, 1, 0, 16, 0, 1, 0, 11, 0, 1, 0, b'm', b'i', b'r', b'r', b'e',
                b'd', 0, 0
            ]
        );
    }
}
