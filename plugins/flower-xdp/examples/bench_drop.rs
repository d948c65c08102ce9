//! Benchmark of the flower-xdp plugin on a veth pair g0 - r0 in a namespace of its own (this
//! machine's kernel has no flower classifier: the plugin is fed the flower filter directly, as
//! the host would hand it, the way bench_forward feeds xdp-router):
//!
//! 1. Drop rate: XDP frames (the in-kernel generator of `ekho_xdp_common::live`, 64 UDP flows to
//!    10.77.0.1:9000, as from a NIC) are offered to r0, where one rule drops them:
//!    - flower-xdp: `protocol ip flower ip_proto udp dst_port 9000 action drop`, compiled by the
//!      plugin and run in XDP (native mode) on r0;
//!    - nftables: `table netdev` with an `ingress` chain on r0, `udp dport 9000 counter drop`;
//!    - tc: `clsact` on r0, `u32 match ip protocol 17 0xff match ip dport 9000 0xffff` (this
//!      kernel has u32 and bpf classifiers and only the mirred action: no flower, no gact), its
//!      action `mirred egress redirect dev bh0`, a veth whose peer is down, where the frame is
//!      freed at once (`__dev_forward_skb`: the peer is not up).
//!
//!    - flower-xdp with `action police` instead of drop, every frame over the rate: what the one
//!      bucket under a `bpf_spin_lock` costs (the police/drop ratio).
//!
//!    Alternating rounds in the same run; the rate is what each counted as dropped per second
//!    (the plugin's filter counter, nft's rule counter, tc's action counter). Everything runs in
//!    softirq on the generating CPU (veth), so each figure is "frames one core generates and
//!    drops"; the ratio is what counts.
//! 2. Filter change -> first frame dropped in XDP: frames flowing (generator in a thread), the
//!    drop filter is added through `Plugin::apply` (in-process: compile, map writes, the port's
//!    generation flip) and the plugin's counter polled until it shows a drop; then removed and
//!    the program's `no_match` counter polled until frames pass again. p50/p99 over many changes,
//!    beside the time of one BPF map update (`PORTS`, the flip) measured in the same run.
//!
//! Run (root): `cargo run --release -p ekho-flower-xdp --example bench_drop [-- SECONDS ROUNDS CHANGES]`
//! (defaults 3 s, 3 rounds, 200 changes).

use ekho_flower_xdp::dataplane::{Backend, Dataplane, XdpMode};
use ekho_flower_xdp::table::Table;
use ekho_flower_xdp::tc::*;
use ekho_flower_xdp::{Config, FlowerXdp};
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::DetachedHost;
use ekho_testkit::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DPORT: u16 = 9000;

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One 60-byte UDP frame 10.76.0.2 -> 10.77.0.1:9000 to r0's MAC.
fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 76, 0, 2, 10, 77, 0, 1,
    ];
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x27, 0x10]);
    f.extend_from_slice(&DPORT.to_be_bytes());
    f.extend_from_slice(&[0, 26, 0, 0]);
    f.extend_from_slice(&[0x5a; 18]);
    f
}

/// `action police rate 1 burst 1 conform-exceed drop/pass` (every frame exceeds).
fn police_drop() -> TcActionSpec {
    TcActionSpec {
        kind: "police".into(),
        index: 1,
        control: TcControl::Shot,
        params: TcActionParams::Police(TcPolice {
            rate_bytes_ps: 1,
            burst_bytes: 1,
            conform: TcControl::Ok,
            exceed: TcControl::Shot,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `protocol ip flower ip_proto udp dst_port 9000 action drop` on `ifindex`'s ingress.
fn drop_filter(ifindex: u32) -> TcFilter {
    let mut f = TcFilter::new(TcTarget::Dev(ifindex), TC_H_MIN_INGRESS, 1, 1);
    f.protocol = 0x0800;
    f.kind = "flower".into();
    f.matches = TcMatch::flower(FlowerKeys {
        eth_type: Some(0x0800).into(),
        ip_proto: Some(17).into(),
        dst_port: Some(Masked::exact(DPORT)).into(),
        ..Default::default()
    });
    f.actions = vec![TcActionSpec::gact(TcControl::Shot)].into();
    f
}

struct Rig {
    ns: Netns,
    g0: u32,
    frame: Vec<u8>,
}

impl Rig {
    /// Generates for `secs`; returns (frames generated, seconds).
    fn offer(&self, secs: f64) -> (u64, f64) {
        let t0 = Instant::now();
        let done = move || t0.elapsed().as_secs_f64() >= secs;
        let n = ekho_xdp_common::live::generate(
            Some(&self.ns.path()),
            self.g0,
            &self.frame,
            1 << 16,
            &done,
        )
        .expect("live-frame generator");
        (n, t0.elapsed().as_secs_f64())
    }
}

fn nft_dropped(ns: &Netns) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&ns.run(&["nft", "-j", "list", "ruleset"])).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

/// Frames tc's u32 filter redirected to bh0 (its mirred action's packets).
fn tc_dropped(ns: &Netns) -> u64 {
    let out = ns.run(&["tc", "-s", "-j", "filter", "show", "dev", "r0", "ingress"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["options"]["actions"].as_array())
        .flatten()
        .filter_map(|a| a["stats"]["packets"].as_u64())
        .sum()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if let Some(r) = needs_root("network namespaces, XDP, BPF_PROG_TEST_RUN") {
        eprintln!("SKIP: {r}");
        return;
    }
    if let Some(r) = missing_tools(&["nft", "tc", "ethtool"], "nftables iproute2 ethtool") {
        eprintln!("SKIP: {r}");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let changes: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200);

    let ns = Netns::named("ekho-fxdp-bench");
    ns.ip("link add g0 type veth peer name r0");
    ns.ip("link set g0 up");
    ns.ip("link set r0 up");
    // Frames redirected into g0 reach r0 only through its NAPI: an XDP program or GRO there.
    ns.run(&["ethtool", "-K", "r0", "gro", "on"]);
    // tc's drop: a redirect to bh0, whose peer is down (this kernel has no gact).
    ns.ip("link add bh0 type veth peer name bh1");
    ns.ip("link set bh0 up");
    let (g0, r0) = (ns.ifindex("g0"), ns.ifindex("r0"));
    let frame = frame(mac(&ns.mac("r0")), mac(&ns.mac("g0")));
    let rig = Rig { ns, g0, frame };

    // ---- 1. drop rate ----
    let (mut xdp, mut pol, mut nft, mut tc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for (police, out) in [(false, &mut xdp), (true, &mut pol)] {
            let mut dp = Dataplane::load(Some(rig.ns.path()), XdpMode::Native).expect("load");
            let mut table = Table::new();
            dp.attach(r0).expect("attach XDP to r0");
            table.set_owned(&mut dp, r0, true).unwrap();
            let mut f = drop_filter(r0);
            if police {
                // 1 byte/s, a 1-byte burst: every frame exceeds and is dropped, after taking the
                // bucket's spin lock and doing act_police's arithmetic
                f.actions = vec![police_drop()].into();
            }
            let id = ekho_flower_xdp::table::FilterId::of(&f);
            table.upsert(&mut dp, f).unwrap();
            let sid = table.stats_id(&id).unwrap();
            let (n, dt) = rig.offer(secs);
            let d = dp.stats(sid).drops;
            println!(
                "round {round}: flower-xdp{} dropped {:>10.0} /s (offered {:>10.0} /s)",
                if police { " police" } else { "       " },
                d as f64 / dt,
                n as f64 / dt
            );
            out.push(d as f64 / dt);
        }
        {
            rig.ns.run(&["nft", "add", "table", "netdev", "bench"]);
            rig.ns.run(&[
                "nft",
                "add chain netdev bench in { type filter hook ingress device r0 priority 0 ; }",
            ]);
            rig.ns.run(&[
                "nft",
                &format!("add rule netdev bench in udp dport {DPORT} counter drop"),
            ]);
            let (n, dt) = rig.offer(secs);
            let d = nft_dropped(&rig.ns);
            rig.ns.run(&["nft", "delete", "table", "netdev", "bench"]);
            println!(
                "round {round}: nft netdev  dropped {:>10.0} /s (offered {:>10.0} /s)",
                d as f64 / dt,
                n as f64 / dt
            );
            nft.push(d as f64 / dt);
        }
        {
            rig.ns.run(&["tc", "qdisc", "add", "dev", "r0", "clsact"]);
            let sel = format!(
                "filter add dev r0 ingress protocol ip prio 1 u32 match ip protocol 17 0xff match ip dport {DPORT} 0xffff action mirred egress redirect dev bh0"
            );
            let words: Vec<&str> = sel.split(' ').collect();
            rig.ns.run(&[&["tc"][..], &words[..]].concat());
            let (n, dt) = rig.offer(secs);
            let d = tc_dropped(&rig.ns);
            rig.ns.run(&["tc", "qdisc", "del", "dev", "r0", "clsact"]);
            println!(
                "round {round}: tc u32      dropped {:>10.0} /s (offered {:>10.0} /s)",
                d as f64 / dt,
                n as f64 / dt
            );
            tc.push(d as f64 / dt);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (x, n, t, p) = (med(&mut xdp), med(&mut nft), med(&mut tc), med(&mut pol));
    println!(
        "drop rate (median of {rounds} x {secs} s, XDP frames offered): flower-xdp {x:.0}/s, nft netdev ingress {n:.0}/s, tc u32 {t:.0}/s; ratio flower-xdp/nft = {:.2}, flower-xdp/tc-u32 = {:.2}",
        x / n,
        x / t
    );
    println!(
        "police in XDP (one bucket under bpf_spin_lock, every frame exceeding): {p:.0}/s; ratio police/drop = {:.2}",
        p / x
    );

    // ---- 2. filter change -> first drop in XDP ----
    let dp = Dataplane::load(Some(rig.ns.path()), XdpMode::Native).expect("load");
    let mut plugin =
        FlowerXdp::build(Config::default(), DetachedHost::handle(), Box::new(dp)).expect("plugin");
    let link = Link {
        ifindex: r0,
        ifname: "r0".into(),
        flags: 1 | 0x40 | 0x10000, // IFF_UP | IFF_RUNNING | IFF_LOWER_UP
        mtu: 1500,
        link_type: 1,
        address: rig.ns.mac("r0").trim().parse().unwrap(),
        kind: "veth".into(),
        ..Default::default()
    };
    let o = plugin.apply(&[Change::Add(Object::Link(link))]);
    assert_eq!(o, vec![Outcome::Offloaded], "r0 owned");
    let stop = Arc::new(AtomicBool::new(false));
    let gen = {
        let stop = stop.clone();
        let (path, g0, frame) = (rig.ns.path(), rig.g0, rig.frame.clone());
        std::thread::spawn(move || {
            let done = move || stop.load(Ordering::Relaxed);
            ekho_xdp_common::live::generate(Some(&path), g0, &frame, 4096, &done)
                .expect("generator")
        })
    };
    let no_match = |p: &FlowerXdp| {
        p.stats()
            .counters
            .iter()
            .find(|c| c.kind.as_str() == "xdp" && c.name.as_str() == "no_match")
            .map(|c| c.value)
            .unwrap_or(0)
    };
    let dropped = |p: &FlowerXdp| {
        p.object_stats(ObjectKind::TcFilter)
            .first()
            .map(|s| s.counters[0].drops)
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(200));
    let (mut add, mut del, mut applied) = (Vec::new(), Vec::new(), Vec::new());
    let f = drop_filter(r0);
    let timeout = Duration::from_secs(2);
    for _ in 0..changes {
        let t0 = Instant::now();
        let o = plugin.apply(&[Change::Add(Object::TcFilter(f.clone()))]);
        assert_eq!(o, vec![Outcome::Offloaded]);
        applied.push(t0.elapsed());
        while dropped(&plugin) == 0 {
            assert!(t0.elapsed() < timeout, "no drop within {timeout:?}");
            // leave the CPU to the generator (two cores, shared)
            std::thread::yield_now();
        }
        add.push(t0.elapsed());
        let base = no_match(&plugin);
        let t0 = Instant::now();
        let o = plugin.apply(&[Change::Remove(Object::TcFilter(f.clone()))]);
        assert_eq!(o, vec![Outcome::Offloaded]);
        while no_match(&plugin) == base {
            assert!(t0.elapsed() < timeout, "no pass within {timeout:?}");
            std::thread::yield_now();
        }
        del.push(t0.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let generated = gen.join().unwrap();
    plugin.shutdown();
    // The reference: one map update (what the generation flip costs), same run.
    let mut dp = Dataplane::load(Some(rig.ns.path()), XdpMode::Native).expect("load");
    let t0 = Instant::now();
    const M: u32 = 10_000;
    for i in 0..M {
        dp.set_gen(
            r0,
            ekho_flower_xdp::maps::PortVal {
                gen: i & 1,
                flags: 0,
            },
        )
        .unwrap();
    }
    let update = t0.elapsed() / M;
    let (a50, a99) = (pct(&mut add, 0.5), pct(&mut add, 0.99));
    let (d50, d99) = (pct(&mut del, 0.5), pct(&mut del, 0.99));
    let (p50, p99) = (pct(&mut applied, 0.5), pct(&mut applied, 0.99));
    println!(
        "filter change -> XDP ({changes} adds and removals, {generated} frames offered meanwhile): add -> first drop p50 {:.1} us p99 {:.1} us (of which Plugin::apply p50 {:.1} us p99 {:.1} us); removal -> first pass p50 {:.1} us p99 {:.1} us; one BPF map update {:.2} us (add p50 = {:.1} map updates)",
        us(a50),
        us(a99),
        us(p50),
        us(p99),
        us(d50),
        us(d99),
        us(update),
        a50.as_secs_f64() / update.as_secs_f64()
    );
}
