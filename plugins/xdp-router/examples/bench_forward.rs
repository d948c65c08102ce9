//! Benchmark of the xdp-router plugin on the h1 - r - h2 veth topology of the tests:
//!
//! 1. Forwarding rate: UDP from h1 (one sender thread, `sendmmsg`, 64 flows) to 10.99.0.0/16
//!    routed by r via h2; packets delivered = RX packets on h2's veth0 (h2 drops them cheaply:
//!    not for it, forwarding off). XDP (plugin running, r's forwarding off) versus the kernel's own
//!    forwarding (plugin stopped, r's forwarding on), alternating rounds in the same run.
//! 2. The same with XDP frames offered to r: an in-kernel generator (ekho_xdp_common::live, run by
//!    BPF_PROG_TEST_RUN with live frames in h1) redirects frames into h1's veth, so they reach r's
//!    port as XDP frames, without an skb, as they would from a NIC.
//! 3. Route-change latency: a paced sender in h1 targets 10.88.<i>.1; the route 10.88.<i>.0/24
//!    via h2 is then applied to the plugin (`Plugin::apply`, in-process) and the time to the first
//!    packet received in h2 is measured (h2 accepts 10.88.0.0/16 as local).
//!
//! 4. NAT: r with conntrack and an nftables masquerade on p2; the same traffic (both sources)
//!    forwarded by the kernel (conntrack and NAT) versus XDP with the conntrack entries the kernel
//!    made offloaded as flows (`Change::Add(Object::Flow)`, in-process; SNAT in XDP), alternating
//!    rounds in the same run.
//!
//! Run (root): `cargo run --release -p ekho-xdp-router --example bench_forward [-- SECONDS ROUNDS SENDERS]`
//! (defaults 3 s, 3 rounds, 1 sender thread). Env: BENCH_SKIP_SOCKET=1 skips part 1 and the
//! socket half of part 4, BENCH_NAT_ONLY=1 runs part 4 alone,
//! BENCH_DIAG=1 prints the veths' ethtool counters after each live-frame round. All forwarding work runs in softirq on the sending
//! CPU (veth), so the figures are "packets one sending core gets through r to h2".

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use ekho_plugin_api::prelude::*;
use std::fs::File;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn spawn_in(ns: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("netns");
        // SAFETY: setns on this fresh thread only.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns {path}"
        );
        f()
    })
}

/// Floods 10.99.0.0/16 from h1 until `stop`; counts datagrams handed to the kernel.
fn flood(ns: &str, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> JoinHandle<()> {
    spawn_in(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let fd = sock.as_raw_fd();
        const B: usize = 64;
        let payload = [0x5au8; 18];
        let mut addrs: Vec<libc::sockaddr_in> = (0..B)
            .map(|k| libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: (9000 + k as u16).to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_be_bytes([10, 99, (k % 16) as u8, 1 + k as u8]).to_be(),
                },
                sin_zero: [0; 8],
            })
            .collect();
        let mut iov: Vec<libc::iovec> = (0..B)
            .map(|_| libc::iovec {
                iov_base: payload.as_ptr() as *mut _,
                iov_len: payload.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..B)
            .map(|k| {
                // SAFETY: zeroed POD.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = &mut addrs[k] as *mut _ as *mut libc::c_void;
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = &mut iov[k];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: valid arrays of B entries.
            let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), B as u32, 0) };
            if n > 0 {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    })
}

/// Packets per second delivered to h2 during `secs`, and sent by h1 (`senders` threads).
fn measure(topo: &Topo, secs: f64, senders: usize) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let threads: Vec<JoinHandle<()>> = (0..senders)
        .map(|_| flood(&topo.h1, stop.clone(), sent.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(500)); // warm-up (neighbours, caches)
    let rx0 = topo.rx_packets(&topo.h2, "veth0");
    let s0 = sent.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let rx1 = topo.rx_packets(&topo.h2, "veth0");
    let s1 = sent.load(Ordering::Relaxed);
    let dt = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    ((rx1 - rx0) as f64 / dt, (s1 - s0) as f64 / dt)
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

/// One 60-byte UDP frame h1 -> 10.99.0.1 addressed to r's p1.
fn frame(dst_mac: &[u8], src_mac: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(dst_mac);
    f.extend_from_slice(src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 1, 2, 10, 99, 0, 1,
    ];
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x27, 0x10, 0x23, 0x28, 0, 26, 0, 0]); // 10000 -> 9000, len 26, csum 0
    f.extend_from_slice(&[0x5a; 18]);
    f
}

fn mac_of(topo: &Topo, ns: &str, dev: &str) -> (u32, Vec<u8>) {
    let j: serde_json::Value =
        serde_json::from_str(&topo.ip(ns, &format!("-j link show dev {dev}"))).unwrap();
    let mac: LinkAddr = j[0]["address"].as_str().unwrap().parse().unwrap();
    (
        j[0]["ifindex"].as_u64().unwrap() as u32,
        mac.as_slice().to_vec(),
    )
}

/// Offers XDP frames to r's p1 for `secs` with the in-kernel generator (BPF_PROG_TEST_RUN, live
/// frames) running in h1; returns (pps delivered to h2, pps generated). Frames that r cannot
/// take are dropped at its ring, so "delivered" is what r forwards.
fn measure_live(topo: &Topo, secs: f64) -> (f64, f64) {
    let (_, p1_mac) = mac_of(topo, &topo.r, "p1");
    let (veth0, h1_mac) = mac_of(topo, &topo.h1, "veth0");
    let data = frame(&p1_mac, &h1_mac);
    let rx0 = topo.rx_packets(&topo.h2, "veth0");
    let t0 = Instant::now();
    let ns = std::path::PathBuf::from(format!("/run/netns/{}", topo.h1));
    let done = move || t0.elapsed().as_secs_f64() >= secs;
    let generated = ekho_xdp_common::live::generate(Some(&ns), veth0, &data, 1 << 18, &done)
        .expect("live-frame generator");
    let dt = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    let rx = topo.rx_packets(&topo.h2, "veth0") - rx0;
    if std::env::var_os("BENCH_DIAG").is_some() {
        eprintln!("{}", topo.diag());
    }
    (rx as f64 / dt, generated as f64 / dt)
}

fn sysctl(topo: &Topo, k: &str, v: &str) {
    topo.exec(&topo.r, &["sysctl", "-qw", &format!("{k}={v}")]);
}

fn start_plugin(topo: &Topo, config: &str) -> MiniHost {
    let mut m = MiniHost::start(topo, config);
    // r resolves h2 itself (its own traffic), then the plugin learns the neighbour.
    assert!(topo.ping_within(&topo.r, "10.0.2.2", Duration::from_secs(5)));
    for _ in 0..10 {
        m.sync();
    }
    m
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() {
    if let Some(r) = skip_reason() {
        eprintln!("SKIP: {r}");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let senders: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    let topo = Topo::new(false);
    topo.ip(&topo.r, "route add 10.99.0.0/16 via 10.0.2.2");

    // ---- 1. forwarding rate ----
    let (mut native, mut generic, mut kern) = (Vec::new(), Vec::new(), Vec::new());
    let skip_socket = std::env::var_os("BENCH_SKIP_SOCKET").is_some();
    let nat_only = std::env::var_os("BENCH_NAT_ONLY").is_some();
    let socket_rounds = if skip_socket || nat_only { 0 } else { rounds };
    for round in 0..socket_rounds {
        for (mode, out) in [("native", &mut native), ("skb", &mut generic)] {
            sysctl(&topo, "net.ipv4.ip_forward", "0");
            let mut m = start_plugin(&topo, &format!("xdp_mode = \"{mode}\""));
            let (rx, tx) = measure(&topo, secs, senders);
            let fwd = m.counter("port:p1", "forwarded");
            m.shutdown();
            println!("round {round}: XDP {mode:<6} delivered {rx:>9.0} pps (sender {tx:>9.0} pps; plugin forwarded {fwd})");
            out.push(rx);
        }
        sysctl(&topo, "net.ipv4.ip_forward", "1");
        let (rx, tx) = measure(&topo, secs, senders);
        sysctl(&topo, "net.ipv4.ip_forward", "0");
        println!("round {round}: kernel     delivered {rx:>9.0} pps (sender {tx:>9.0} pps)");
        kern.push(rx);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    if socket_rounds > 0 {
        let (x, g, k) = (med(&mut native), med(&mut generic), med(&mut kern));
        println!(
        "forwarding rate (median of {rounds} x {secs} s, {senders} sender(s)): XDP native {x:.0} pps, XDP skb {g:.0} pps, kernel {k:.0} pps; ratio native/kernel = {:.2}, skb/kernel = {:.2}",
        x / k,
        g / k
    );
    }

    // ---- 2. the same with XDP frames offered to r (as from a NIC) ----
    // Receiving XDP frames on p1 needs NAPI there also without our program: GRO on.
    topo.exec(&topo.r, &["ethtool", "-K", "p1", "gro", "on"]);
    if nat_only {
        bench_nat(&topo, secs, rounds, senders, skip_socket);
        return;
    }
    let (mut lnative, mut lgeneric, mut lkern) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for (mode, out) in [("native", &mut lnative), ("skb", &mut lgeneric)] {
            sysctl(&topo, "net.ipv4.ip_forward", "0");
            let mut m = start_plugin(&topo, &format!("xdp_mode = \"{mode}\""));
            let (rx, gen) = measure_live(&topo, secs);
            m.shutdown();
            println!("round {round}: live frames, XDP {mode:<6} delivered {rx:>9.0} pps (offered {gen:>9.0} pps)");
            out.push(rx);
        }
        sysctl(&topo, "net.ipv4.ip_forward", "1");
        let (rx, gen) = measure_live(&topo, secs);
        sysctl(&topo, "net.ipv4.ip_forward", "0");
        println!("round {round}: live frames, kernel     delivered {rx:>9.0} pps (offered {gen:>9.0} pps)");
        lkern.push(rx);
    }
    let (x, g, k) = (med(&mut lnative), med(&mut lgeneric), med(&mut lkern));
    println!(
        "forwarding rate, XDP frames offered (median of {rounds} x {secs} s): XDP native {x:.0} pps, XDP skb {g:.0} pps, kernel {k:.0} pps; ratio native/kernel = {:.2}, skb/kernel = {:.2}",
        x / k,
        g / k
    );

    // ---- 3. route change -> first forwarded packet ----
    topo.ip(&topo.h2, "route add local 10.88.0.0/16 dev lo");
    let mut m = start_plugin(&topo, "");
    let p2 = dump(&topo.r)
        .values()
        .find_map(|o| match o {
            Object::Link(l) if l.ifname.as_str() == "p2" => Some(l.ifindex),
            _ => None,
        })
        .unwrap();
    const N: usize = 200;
    let first: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; N]));
    let stop = Arc::new(AtomicBool::new(false));
    let target = Arc::new(AtomicU32::new(u32::MAX));
    let (f, s) = (first.clone(), stop.clone());
    let rx = spawn_in(&topo.h2, move || {
        let sock = UdpSocket::bind("0.0.0.0:9999").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let now = Instant::now();
                if n >= 4 {
                    let i = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    let mut f = f.lock().unwrap();
                    if i < N && f[i].is_none() {
                        f[i] = Some(now);
                    }
                }
            }
        }
    });
    let gaps = Arc::new(AtomicU64::new(0));
    let sends = Arc::new(AtomicU64::new(0));
    let (t, s, g, c) = (target.clone(), stop.clone(), gaps.clone(), sends.clone());
    let tx = spawn_in(&topo.h1, move || {
        // SAFETY: prctl on this thread: fine-grained sleeps.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0, 0, 0) };
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut last = Instant::now();
        while !s.load(Ordering::Relaxed) {
            let i = t.load(Ordering::Relaxed);
            if i != u32::MAX {
                let dst = format!("10.88.{}.1:9999", i);
                let _ = sock.send_to(&i.to_le_bytes(), dst);
                let now = Instant::now();
                g.fetch_add(
                    now.duration_since(last).as_nanos() as u64,
                    Ordering::Relaxed,
                );
                c.fetch_add(1, Ordering::Relaxed);
                last = now;
            }
            std::thread::sleep(Duration::from_micros(10));
        }
    });
    // SAFETY: prctl on this thread: fine-grained sleeps while waiting.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0, 0, 0) };
    let mut lat = Vec::new();
    let mut apply = Vec::new();
    let mut missed = 0;
    for i in 0..N {
        target.store(i as u32, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(3)); // packets to 10.88.i.1 flow and are passed
        let prefix: IpPrefix = format!("10.88.{i}.0/24").parse().unwrap();
        let route = Route::unicast(prefix, vec![NextHop::via("10.0.2.2".parse().unwrap(), p2)]);
        let t0 = Instant::now();
        let out = m
            .plugin
            .as_mut()
            .unwrap()
            .apply(&[Change::Add(Object::Route(route))]);
        let t1 = Instant::now();
        assert_eq!(out, vec![Outcome::Offloaded]);
        apply.push(t1 - t0);
        let deadline = t0 + Duration::from_secs(1);
        loop {
            if let Some(t) = first.lock().unwrap()[i] {
                lat.push(t.saturating_duration_since(t0));
                break;
            }
            if Instant::now() > deadline {
                missed += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    stop.store(true, Ordering::Relaxed);
    rx.join().unwrap();
    tx.join().unwrap();
    m.shutdown();
    let gap =
        Duration::from_nanos(gaps.load(Ordering::Relaxed) / sends.load(Ordering::Relaxed).max(1));
    println!(
        "route change -> first packet forwarded ({} changes, {missed} missed; sender gap {:?} bounds the resolution): p50 {:?} p99 {:?} max {:?}",
        lat.len(),
        gap,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    println!(
        "Plugin::apply of one route: p50 {:?} p99 {:?} max {:?}",
        pct(&mut apply, 0.5),
        pct(&mut apply, 0.99),
        pct(&mut apply, 1.0)
    );
    assert_eq!(missed, 0, "a route change was never forwarded");

    bench_nat(&topo, secs, rounds, senders, skip_socket);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// r's UDP conntrack entries from h1 (the benchmark's flows).
fn udp_entries(topo: &Topo) -> Vec<common::nat::CtEntry> {
    let out = topo.exec(
        &topo.r,
        &[
            "conntrack",
            "-L",
            "-p",
            "udp",
            "-s",
            "10.0.1.2",
            "-o",
            "extended,id",
        ],
    );
    out.lines()
        .filter_map(common::nat::parse_ct_line)
        .filter(|e| e.proto == "udp")
        .collect()
}

/// Part 4: the forwarding rate of offloaded NAT flows in XDP against the kernel forwarding the
/// same flows with conntrack and masquerade.
fn bench_nat(topo: &Topo, secs: f64, rounds: usize, senders: usize, skip_socket: bool) {
    let dir = TempDir::new();
    common::nat::nft(topo, dir.path(), common::nat::NAT_RULES);
    let (mut k_live, mut x_live, mut k_sock, mut x_sock) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // The kernel first: it also makes the conntrack entries the XDP round offloads.
        sysctl(topo, "net.ipv4.ip_forward", "1");
        let (rx, gen) = measure_live(topo, secs);
        println!("round {round}: NAT, live frames, kernel (conntrack + masquerade) delivered {rx:>9.0} pps (offered {gen:>9.0} pps)");
        k_live.push(rx);
        if !skip_socket {
            let (rx, tx) = measure(topo, secs, senders);
            println!("round {round}: NAT, socket,      kernel (conntrack + masquerade) delivered {rx:>9.0} pps (sender {tx:>9.0} pps)");
            k_sock.push(rx);
        }
        let entries = udp_entries(topo);
        assert!(
            entries.iter().all(|e| e.reply.1 == "10.0.2.1"),
            "masqueraded behind r's p2: {entries:?}"
        );
        sysctl(topo, "net.ipv4.ip_forward", "0");
        let mut m = start_plugin(topo, "xdp_mode = \"native\"");
        let changes: Vec<Change> = entries
            .iter()
            .map(|e| Change::Add(Object::Flow(e.flow())))
            .collect();
        let outs = m.plugin.as_mut().unwrap().apply(&changes);
        assert!(
            outs.iter().all(|o| *o == Outcome::Offloaded),
            "flows offloaded: {outs:?}"
        );
        let (rx, gen) = measure_live(topo, secs);
        println!("round {round}: NAT, live frames, XDP flows ({} offloaded)          delivered {rx:>9.0} pps (offered {gen:>9.0} pps)", changes.len());
        x_live.push(rx);
        if !skip_socket {
            let (rx, tx) = measure(topo, secs, senders);
            println!("round {round}: NAT, socket,      XDP flows                         delivered {rx:>9.0} pps (sender {tx:>9.0} pps)");
            x_sock.push(rx);
        }
        let flow_pkts: u64 = m
            .plugin
            .as_ref()
            .unwrap()
            .object_stats(ObjectKind::Flow)
            .iter()
            .flat_map(|s| s.counters.iter().map(|c| c.packets))
            .sum();
        let fwd = m.counter("xdp", "flow_forwarded");
        m.shutdown();
        assert!(
            flow_pkts > 0 && fwd >= flow_pkts,
            "the flows forwarded the traffic: flow counters {flow_pkts}, flow_forwarded {fwd}"
        );
    }
    let (kl, xl) = (median(&mut k_live), median(&mut x_live));
    println!(
        "NAT forwarding rate, XDP frames offered (median of {rounds} x {secs} s): offloaded flow in XDP native {xl:.0} pps, kernel conntrack + masquerade {kl:.0} pps; ratio XDP/kernel = {:.2}",
        xl / kl
    );
    if !skip_socket {
        let (ks, xs) = (median(&mut k_sock), median(&mut x_sock));
        println!(
            "NAT forwarding rate, socket traffic (median of {rounds} x {secs} s, {senders} sender(s), 64 flows): offloaded flows in XDP native {xs:.0} pps, kernel conntrack + masquerade {ks:.0} pps; ratio XDP/kernel = {:.2}",
            xs / ks
        );
    }
}
