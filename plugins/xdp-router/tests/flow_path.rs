//! The BPF flow path run on crafted frames (`BPF_PROG_TEST_RUN`, `Dataplane::test_run`): NAT of
//! both directions for TCP and UDP over IPv4 and IPv6, the output compared byte for byte with the
//! expected frame built from scratch (checksums recomputed in full, so the incremental updates
//! are checked against a recomputation), TTL, FIN/RST hand-back, per-direction counters, flows
//! keyed by conntrack zone, the netfilter punt the flow path overrides and the ones it obeys.
//! Needs root (a namespace with a veth pair: the program's ingress and egress ports); prints
//! `SKIP:` otherwise.

use ekho_testkit::*;
use ekho_xdp_router::dataplane::{Dataplane, XdpMode};
use ekho_xdp_router::flows::{FlowSpec, FlowTable, Tuple, IPPROTO_TCP, IPPROTO_UDP};
use ekho_xdp_router::maps::*;
use std::net::IpAddr;

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const MAC_H1: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const MAC_H2: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

// ---- frames ----------------------------------------------------------------------------------

fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    sum
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[derive(Clone, Debug)]
struct Pkt {
    dmac: [u8; 6],
    smac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    proto: u8,
    sport: u16,
    dport: u16,
    /// TCP flags byte (TCP only).
    flags: u8,
    payload: Vec<u8>,
    /// UDP: send without a checksum (zero).
    udp_no_csum: bool,
}

const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

impl Pkt {
    /// The frame with every checksum computed from scratch.
    fn frame(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == IPPROTO_TCP {
            l4.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // seq
            l4.extend_from_slice(&0x9abc_def0u32.to_be_bytes()); // ack
            l4.push(5 << 4);
            l4.push(self.flags);
            l4.extend_from_slice(&0xffffu16.to_be_bytes()); // window
            l4.extend_from_slice(&[0, 0, 0, 0]); // check, urg
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let l4_len = l4.len();
        let mut pseudo = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, self.proto]);
                pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, self.proto]);
            }
            _ => unreachable!(),
        }
        let c = !fold(sum16(&l4, sum16(&pseudo, 0)));
        let at = if self.proto == IPPROTO_TCP { 16 } else { 6 };
        let c = if self.proto == IPPROTO_UDP {
            if self.udp_no_csum {
                0
            } else if c == 0 {
                0xffff
            } else {
                c
            }
        } else {
            c
        };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());

        let mut f = Vec::new();
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
                ip.extend_from_slice(&[0xbe, 0xef, 0x40, 0]); // id, DF
                ip.push(self.ttl);
                ip.push(self.proto);
                ip.extend_from_slice(&[0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = !fold(sum16(&ip, 0));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4_len as u16).to_be_bytes());
                f.push(self.proto);
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => unreachable!(),
        }
        f.extend_from_slice(&l4);
        f
    }

    fn ip_len(&self) -> u64 {
        let l4 = if self.proto == IPPROTO_TCP { 20 } else { 8 } + self.payload.len();
        (l4 + if self.src.is_ipv4() { 20 } else { 40 }) as u64
    }
}

// ---- the data path in a namespace ------------------------------------------------------------

struct Rig {
    _ns: Netns,
    dp: Dataplane,
    /// (ifindex, MAC) of the port towards h1 and of the one towards h2.
    a: (u32, [u8; 6]),
    b: (u32, [u8; 6]),
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn neigh(ifindex: u32, a: IpAddr) -> NeighKey {
    let mut addr = [0u8; 16];
    let family = match a {
        IpAddr::V4(v) => {
            addr[..4].copy_from_slice(&v.octets());
            2
        }
        IpAddr::V6(v) => {
            addr = v.octets();
            10
        }
    };
    NeighKey {
        ifindex,
        family,
        addr,
    }
}

fn rig() -> Option<Rig> {
    if let Some(r) = needs_root("network namespaces, BPF_PROG_TEST_RUN") {
        say_skip(&r);
        return None;
    }
    let ns = Netns::named("ekho-xdp-flowpath");
    ns.ip("link add pa type veth peer name pb");
    ns.ip("link set pa up");
    ns.ip("link set pb up");
    let a = (ns.ifindex("pa"), mac_bytes(&ns.mac("pa")));
    let b = (ns.ifindex("pb"), mac_bytes(&ns.mac("pb")));
    let (mut dp, _, _) = Dataplane::load(Some(ns.path()), XdpMode::Skb).expect("load");
    for (i, m) in [a, b] {
        dp.set_port(
            i,
            Some(PortVal {
                mac: m,
                flags: PORT_UP,
                mtu: 1500,
                zone: 0,
                pad: 0,
            }),
        )
        .unwrap();
    }
    // h1 behind a (10.0.1.0/24, fd00:1::/64), h2 behind b (10.0.2.0/24, fd00:2::/64); on-link.
    for (port, p4, p6) in [(a, "10.0.1.0", "fd00:1::"), (b, "10.0.2.0", "fd00:2::")] {
        let leg = Leg {
            ifindex: port.0,
            ..Default::default()
        };
        let mut rv = RouteVal::new(ACT_FORWARD, port.0);
        rv.set_legs(&[(leg, 1)]);
        dp.set_route_counter(port.0, true).unwrap();
        dp.set_route_v4(TABLE_MAIN, v4(p4), 24, Some(&rv)).unwrap();
        dp.set_route_v6(TABLE_MAIN, v6(p6), 64, Some(&rv)).unwrap();
    }
    for (port, mac, hosts) in [
        (a, MAC_H1, ["10.0.1.2", "fd00:1::2"]),
        (b, MAC_H2, ["10.0.2.2", "fd00:2::2"]),
    ] {
        for h in hosts {
            dp.set_neighbour(
                neigh(port.0, h.parse().unwrap()),
                Some(NeighVal { mac, pad: 0 }),
            )
            .unwrap();
        }
    }
    Some(Rig { _ns: ns, dp, a, b })
}

fn tuple(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport,
        dport,
    }
}

/// h1:40000 -> h2:5001 masqueraded to r:61000 (r = 10.0.2.1 / fd00:2::1).
fn masq(proto: u8, v6: bool) -> FlowSpec {
    let (h1, h2, r) = if v6 {
        ("fd00:1::2", "fd00:2::2", "fd00:2::1")
    } else {
        ("10.0.1.2", "10.0.2.2", "10.0.2.1")
    };
    FlowSpec {
        proto,
        zone: 0,
        orig: tuple(h1, 40000, h2, 5001),
        reply: tuple(h2, 5001, r, 61000),
    }
}

impl Rig {
    /// Puts port `port` (ifindex, MAC) in conntrack zone `zone`.
    fn set_zone(&mut self, port: (u32, [u8; 6]), zone: u16) {
        let v = PortVal {
            mac: port.1,
            flags: PORT_UP,
            mtu: 1500,
            zone,
            pad: 0,
        };
        self.dp.set_port(port.0, Some(v)).unwrap();
    }

    /// A packet of `t` entering from h1 (dir 0) or h2 (dir 1).
    fn pkt(&self, proto: u8, t: &Tuple, from_h2: bool, payload: &[u8]) -> Pkt {
        let (port, smac) = if from_h2 {
            (self.b, MAC_H2)
        } else {
            (self.a, MAC_H1)
        };
        Pkt {
            dmac: port.1,
            smac,
            src: t.src,
            dst: t.dst,
            ttl: 64,
            proto,
            sport: t.sport,
            dport: t.dport,
            flags: ACK,
            payload: payload.to_vec(),
            udp_no_csum: false,
        }
    }

    fn run(&mut self, p: &Pkt, from_h2: bool) -> (u32, Vec<u8>) {
        let ingress = if from_h2 { self.b.0 } else { self.a.0 };
        self.dp.test_run(ingress, &p.frame()).expect("test run")
    }

    /// What `p` must look like after the flow path: rewritten to the reverse of `to`, MACs of
    /// the egress port and the next host, TTL - 1, checksums recomputed from scratch.
    fn expected(&self, p: &Pkt, to: &Tuple, from_h2: bool) -> Vec<u8> {
        let (smac, dmac) = if from_h2 {
            (self.a.1, MAC_H1)
        } else {
            (self.b.1, MAC_H2)
        };
        Pkt {
            dmac,
            smac,
            src: to.dst,
            dst: to.src,
            sport: to.dport,
            dport: to.sport,
            ttl: p.ttl - 1,
            ..p.clone()
        }
        .frame()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[track_caller]
fn assert_frame(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}:\n got  {}\n want {}",
        hex(got),
        hex(want)
    );
}

#[test]
fn nat_both_directions_tcp_udp_v4_v6() {
    let Some(mut rig) = rig() else { return };
    let mut table: FlowTable<u32> = FlowTable::new(MAX_FLOWS);
    let mut n = 0;
    for v6 in [false, true] {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            n += 1;
            let spec = masq(proto, v6);
            assert!(table.install(&mut rig.dp, n, &spec).unwrap());
            // Original direction: SNAT to r:61000.
            let p = rig.pkt(proto, &spec.orig, false, b"hello, h2");
            let (v, out) = rig.run(&p, false);
            assert_eq!(v, XDP_REDIRECT, "v6={v6} proto={proto} original");
            assert_frame(&out, &rig.expected(&p, &spec.reply, false), "original");
            // Reply direction: back to h1:40000 (de-SNAT).
            let q = rig.pkt(proto, &spec.reply, true, b"hello back, h1!");
            let (v, out) = rig.run(&q, true);
            assert_eq!(v, XDP_REDIRECT, "v6={v6} proto={proto} reply");
            assert_frame(&out, &rig.expected(&q, &spec.orig, true), "reply");
            let c = table.counters(&rig.dp, &n).unwrap();
            assert_eq!(c.packets, [1, 1], "v6={v6} proto={proto}");
            assert_eq!(c.bytes, [p.ip_len(), q.ip_len()]);
            assert!(
                c.idle.iter().all(|i| i.is_some_and(|d| d.as_secs() < 5)),
                "{c:?}"
            );
            assert!(!c.handed_back);
        }
    }
}

/// Random addresses, ports and payloads (odd lengths, all carry patterns): the incrementally
/// updated checksums equal the recomputed ones every time.
#[test]
fn checksums_match_a_recomputation_for_random_flows() {
    let Some(mut rig) = rig() else { return };
    let mut table: FlowTable<u32> = FlowTable::new(MAX_FLOWS);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..400u32 {
        let v6 = i % 2 == 1;
        let proto = if i % 4 < 2 { IPPROTO_TCP } else { IPPROTO_UDP };
        let r = rnd();
        let (h1, h2, nat) = if v6 {
            let h = |p: &str, x: u64| -> String {
                format!(
                    "{p}:{:x}:{:x}:{:x}:{:x}",
                    x & 0xffff,
                    (x >> 16) & 0xffff,
                    (x >> 32) & 0xffff,
                    x >> 48
                )
            };
            (
                h("fd00:1:0:0", rnd()),
                h("fd00:2:0:0", rnd()),
                h("fd00:2:0:0", rnd()),
            )
        } else {
            let h = |n: u8, x: u64| format!("10.0.{n}.{}", (x % 253) + 2);
            (h(1, rnd()), h(2, rnd()), h(2, rnd()))
        };
        let spec = FlowSpec {
            proto,
            zone: 0,
            orig: tuple(&h1, r as u16, &h2, (r >> 16) as u16),
            reply: tuple(&h2, (r >> 16) as u16, &nat, (r >> 32) as u16),
        };
        // Neighbours for the random hosts.
        for (port, mac, h) in [(rig.a, MAC_H1, &h1), (rig.b, MAC_H2, &h2)] {
            rig.dp
                .set_neighbour(
                    neigh(port.0, h.parse().unwrap()),
                    Some(NeighVal { mac, pad: 0 }),
                )
                .unwrap();
        }
        if table.install(&mut rig.dp, i, &spec).is_err() {
            continue; // a repeated random tuple
        }
        let len = (rnd() % 97) as usize;
        let payload: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        let p = rig.pkt(proto, &spec.orig, false, &payload);
        let (v, out) = rig.run(&p, false);
        assert_eq!(v, XDP_REDIRECT, "{spec:?}");
        assert_frame(
            &out,
            &rig.expected(&p, &spec.reply, false),
            &format!("{spec:?}"),
        );
        let q = rig.pkt(proto, &spec.reply, true, &payload);
        let (v, out) = rig.run(&q, true);
        assert_eq!(v, XDP_REDIRECT, "{spec:?}");
        assert_frame(
            &out,
            &rig.expected(&q, &spec.orig, true),
            &format!("{spec:?} reply"),
        );
        table.remove(&mut rig.dp, &i).unwrap();
    }
}

#[test]
fn udp_without_checksum_stays_without() {
    let Some(mut rig) = rig() else { return };
    let mut table: FlowTable<u32> = FlowTable::new(MAX_FLOWS);
    let spec = masq(IPPROTO_UDP, false);
    table.install(&mut rig.dp, 1, &spec).unwrap();
    let mut p = rig.pkt(IPPROTO_UDP, &spec.orig, false, b"no checksum");
    p.udp_no_csum = true;
    let (v, out) = rig.run(&p, false);
    assert_eq!(v, XDP_REDIRECT);
    assert_frame(
        &out,
        &rig.expected(&p, &spec.reply, false),
        "UDP, zero checksum",
    );
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
}

#[test]
fn fin_and_rst_hand_the_flow_back_and_ttl_expiry_goes_to_the_kernel() {
    let Some(mut rig) = rig() else { return };
    let mut table: FlowTable<u32> = FlowTable::new(MAX_FLOWS);
    for (n, flag) in [(1u32, FIN), (2, RST)] {
        let spec = FlowSpec {
            orig: tuple("10.0.1.2", 40000 + n as u16, "10.0.2.2", 5001),
            reply: tuple("10.0.2.2", 5001, "10.0.2.1", 61000 + n as u16),
            ..masq(IPPROTO_TCP, false)
        };
        assert!(table.install(&mut rig.dp, n, &spec).unwrap());
        let mut p = rig.pkt(IPPROTO_TCP, &spec.orig, false, b"data");
        // TTL 1: to the kernel untouched, the flow stays.
        p.ttl = 1;
        let (v, out) = rig.run(&p, false);
        assert_eq!(v, XDP_PASS, "TTL 1");
        assert_frame(&out, &p.frame(), "TTL 1 untouched");
        p.ttl = 64;
        assert_eq!(rig.run(&p, false).0, XDP_REDIRECT);
        // The teardown: passed untouched, the flow marked.
        let mut f = p.clone();
        f.flags = flag | ACK;
        let (v, out) = rig.run(&f, false);
        assert_eq!(v, XDP_PASS, "flag {flag:#x}");
        assert_frame(&out, &f.frame(), "teardown untouched");
        let c = table.counters(&rig.dp, &n).unwrap();
        assert!(c.handed_back, "{c:?}");
        assert_eq!(
            c.packets,
            [1, 0],
            "the teardown is not counted as forwarded"
        );
        assert_eq!(table.handed_back(&rig.dp), vec![n]);
        // From now on both directions go to the kernel (it sees the whole teardown).
        let (v, out) = rig.run(&p, false);
        assert_eq!(v, XDP_PASS);
        assert_frame(&out, &p.frame(), "after the hand-back");
        let q = rig.pkt(IPPROTO_TCP, &spec.reply, true, b"");
        assert_eq!(rig.run(&q, true).0, XDP_PASS);
        table.remove(&mut rig.dp, &n).unwrap();
    }
    assert!(table.handed_back(&rig.dp).is_empty());
}

#[test]
fn netfilter_punt_leaves_flows_running_policy_punt_stops_them() {
    let Some(mut rig) = rig() else { return };
    let mut table: FlowTable<u32> = FlowTable::new(MAX_FLOWS);
    let spec = masq(IPPROTO_TCP, false);
    table.install(&mut rig.dp, 1, &spec).unwrap();
    let p = rig.pkt(IPPROTO_TCP, &spec.orig, false, b"x");
    let other = rig.pkt(
        IPPROTO_TCP,
        &tuple("10.0.1.2", 1, "10.0.2.2", 2),
        false,
        b"x",
    );
    // No punt: the other packet takes the route path (forwarded, not NATed).
    let (v, out) = rig.run(&other, false);
    assert_eq!(v, XDP_REDIRECT);
    assert_eq!(
        &out[14 + 12..14 + 16],
        &v4("10.0.1.2"),
        "route path: source kept"
    );
    // A netfilter chain (CFG_PUNT_V4): only the offloaded flow is forwarded.
    rig.dp
        .set_config(ConfigVal {
            flags: CFG_PUNT_V4,
            resolve_interval_ms: 100,
        })
        .unwrap();
    assert_eq!(rig.run(&other, false).0, XDP_PASS);
    let (v, out) = rig.run(&p, false);
    assert_eq!(v, XDP_REDIRECT);
    assert_frame(
        &out,
        &rig.expected(&p, &spec.reply, false),
        "flow under a netfilter punt",
    );
    // Policy rules (CFG_NOFLOW_V4): the flow goes to the kernel too; IPv6 unaffected.
    rig.dp
        .set_config(ConfigVal {
            flags: CFG_PUNT_V4 | CFG_NOFLOW_V4,
            resolve_interval_ms: 100,
        })
        .unwrap();
    let (v, out) = rig.run(&p, false);
    assert_eq!(v, XDP_PASS);
    assert_frame(&out, &p.frame(), "flow under a policy punt");
    let spec6 = masq(IPPROTO_TCP, true);
    table.install(&mut rig.dp, 2, &spec6).unwrap();
    let p6 = rig.pkt(IPPROTO_TCP, &spec6.orig, false, b"x");
    assert_eq!(rig.run(&p6, false).0, XDP_REDIRECT);
    // Removed: the route path again.
    rig.dp.set_config(ConfigVal::default()).unwrap();
    table.remove(&mut rig.dp, &1).unwrap();
    let (v, out) = rig.run(&p, false);
    assert_eq!(v, XDP_REDIRECT);
    assert_eq!(
        &out[14 + 12..14 + 16],
        &v4("10.0.1.2"),
        "removed flow: not NATed"
    );
}

/// Two conntrack zones holding the same tuple (overlapping customer networks): each packet
/// meets the flow of its ingress port's zone, with that flow's NAT; a zone without a flow is
/// not NATed by the flow path (it takes the route path).
#[test]
fn the_same_tuple_in_two_zones_are_two_flows() {
    let Some(mut rig) = rig() else { return };
    let mut table: FlowTable<u32> = FlowTable::new(MAX_FLOWS);
    let base = masq(IPPROTO_UDP, false);
    let z1 = FlowSpec { zone: 1, ..base };
    let z2 = FlowSpec {
        zone: 2,
        reply: tuple("10.0.2.2", 5001, "10.0.2.1", 62000),
        ..base
    };
    assert!(table.install(&mut rig.dp, 1, &z1).unwrap());
    assert!(
        table.install(&mut rig.dp, 2, &z2).unwrap(),
        "the same original tuple in another zone is another flow"
    );
    let p = rig.pkt(IPPROTO_UDP, &base.orig, false, b"which zone?");
    for (zone, spec, n) in [(1, &z1, 1u32), (2, &z2, 2)] {
        rig.set_zone(rig.a, zone);
        let (v, out) = rig.run(&p, false);
        assert_eq!(v, XDP_REDIRECT, "zone {zone}");
        assert_frame(
            &out,
            &rig.expected(&p, &spec.reply, false),
            &format!("zone {zone}"),
        );
        assert_eq!(
            table.counters(&rig.dp, &n).unwrap().packets,
            [1, 0],
            "zone {zone}"
        );
    }
    // The reply of zone 2's flow, entering b in zone 2, goes back to h1.
    rig.set_zone(rig.b, 2);
    let q = rig.pkt(IPPROTO_UDP, &z2.reply, true, b"from zone 2");
    let (v, out) = rig.run(&q, true);
    assert_eq!(v, XDP_REDIRECT);
    assert_frame(&out, &rig.expected(&q, &z2.orig, true), "zone 2 reply");
    // Zone 3 has no flow: routed as it is (not NATed), no flow counts it.
    rig.set_zone(rig.a, 3);
    let (_, out) = rig.run(&p, false);
    assert_ne!(
        out,
        rig.expected(&p, &z1.reply, false),
        "zone 3 must not meet zone 1's flow"
    );
    assert_ne!(out, rig.expected(&p, &z2.reply, false));
    assert_eq!(table.counters(&rig.dp, &1).unwrap().packets, [1, 0]);
    assert_eq!(table.counters(&rig.dp, &2).unwrap().packets, [1, 1]);
}
