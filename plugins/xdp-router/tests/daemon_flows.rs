//! Issue 13's acceptance through the real daemon: r is a NAT router (kernel forwarding,
//! conntrack, nftables masquerade on p2, h2 without a route back to h1), `ekho run` mirrors r
//! with xdp-router owning its ports. A paced 64 MiB TCP transfer h1 -> h2 creates one conntrack
//! entry that the host offers and the plugin offloads: the transfer arrives intact; after the
//! handshake its packets bypass the kernel (the kernel's conntrack counters stay still while the
//! plugin's, in `ekho dump flows --stats`, grow); the entry outlives its idle timeout (5 s here)
//! while the transfer runs (the host's keep-alive follows the plugin's lastused); `conntrack -D`
//! removes the offload (the time until the kernel forwards the flow again is printed) and the
//! transfer carries on through the kernel; the FIN tears the flow down in the kernel. The same
//! through an IPv6 masquerade (an `ip6` nat table).
//!
//! Needs root, iproute2, ethtool, python3, conntrack and nft; prints `SKIP:` otherwise.

mod common;

use common::nat::*;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);
const PORT: u16 = 5401;
/// r's idle timeout of established TCP entries (the kernel's default is 5 days).
const IDLE_S: u64 = 5;

const XDP_ROUTER: &str = "[[plugins]]\nname = \"xdp-router\"\n[plugins.config]\nports = [\"p*\"]\n";

/// The xdp-router counters of the flow to PORT in `ekho dump flows --stats --json`: (packets
/// both ways, the flow's JSON).
fn offload_counters(d: &Daemon) -> Option<(u64, Value)> {
    let j = d
        .try_cli_json(&["dump", "flows", "--stats", "--json"])
        .ok()?;
    let f = j["flows"]
        .as_array()?
        .iter()
        .find(|f| f["original"]["dport"] == PORT as u64)?
        .clone();
    let o = f["offload"]
        .as_array()?
        .iter()
        .find(|o| o["plugin"] == "xdp-router")?
        .clone();
    let n = ["original", "reply"]
        .iter()
        .map(|dir| o[dir]["packets"].as_u64().unwrap_or(0))
        .sum();
    Some((n, f))
}

fn offloaded(d: &Daemon) -> u64 {
    d.plugin("xdp-router")["flows_offloaded"]
        .as_u64()
        .unwrap_or(0)
}

fn counter(d: &Daemon, kind: &str, name: &str) -> u64 {
    d.plugin("xdp-router")["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"] == kind && c["name"] == name)
        .map(|c| c["value"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn masqueraded_transfer_is_offloaded_kept_alive_and_handed_back() {
    if skip_nat() {
        return;
    }
    let topo = Topo::new(false);
    let dir = TempDir::new();
    make_nat_router(&topo, dir.path());
    topo.exec(
        &topo.r,
        &[
            "sysctl",
            "-qw",
            &format!("net.netfilter.nf_conntrack_tcp_timeout_established={IDLE_S}"),
        ],
    );
    let cfg = host_config(&topo.r, build(), true, XDP_ROUTER);
    let d = Daemon::start(dir.path(), &cfg);
    assert_eq!(
        d.plugin("xdp-router")["state"],
        "in_sync",
        "{}",
        d.log_text()
    );

    // 64 MiB at about 3 MiB/s: over 20 s, several idle timeouts.
    let bytes = 64 << 20;
    let mut xfer = Transfer::start(&topo, PORT, bytes, 3.0 * (1 << 20) as f64);
    let ct = established(&topo, PORT, T).expect("an ESTABLISHED, ASSURED conntrack entry");
    let on = wait_for(T, || (offloaded(&d) == 1).then_some(()));
    assert!(
        on.is_some(),
        "the flow is offloaded: {}\n{}",
        d.plugin("xdp-router"),
        d.log_text()
    );
    let t_on = Instant::now();

    // Its packets bypass the kernel: the kernel's counters stay, the plugin's grow.
    std::thread::sleep(Duration::from_millis(500));
    let k0 = ct_entries(&topo, PORT)[0].clone();
    let p0 = wait_for(T, || offload_counters(&d).filter(|(n, _)| *n > 0))
        .expect("the plugin's counters in `ekho dump flows --stats`");
    std::thread::sleep(Duration::from_millis(2500));
    let k1 = ct_entries(&topo, PORT)[0].clone();
    let p1 = offload_counters(&d).expect("still offloaded");
    assert_eq!(
        k1.packets(),
        k0.packets(),
        "the kernel's conntrack counters grew while offloaded: {k0:?} -> {k1:?}"
    );
    assert!(
        p1.0 > p0.0 + 500,
        "the plugin's counters grow: {} -> {} ({})",
        p0.0,
        p1.0,
        p1.1
    );

    // The entry outlives its idle timeout while the transfer runs (the keep-alive).
    let past = Duration::from_secs(IDLE_S + 3);
    std::thread::sleep(past.saturating_sub(t_on.elapsed()));
    assert!(xfer.running(), "the transfer still runs");
    let alive = ct_entries(&topo, PORT);
    assert!(
        alive.iter().any(|e| e.id == ct.id && e.state == "ESTABLISHED"),
        "the entry (id {}) is kept alive past its {IDLE_S} s timeout while offloaded: {alive:?}\n{}",
        ct.id,
        d.status()["conntrack"]
    );

    // conntrack -D: the offload goes within 100 ms (the kernel sees the transfer's packets
    // again: a new entry appears) and the transfer carries on through the kernel.
    let t0 = Instant::now();
    assert!(ct_delete(&topo, PORT), "conntrack -D");
    let ran = t0.elapsed();
    let mut seen = None;
    while t0.elapsed() < Duration::from_secs(5) {
        if !ct_entries(&topo, PORT).is_empty() {
            seen = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let seen = seen.expect("the kernel sees the transfer again after conntrack -D");
    println!(
        "conntrack -D -> the kernel forwards the flow again: {:?} after conntrack returned ({seen:?} in all, conntrack ran {ran:?})",
        seen - ran
    );
    // The figure is printed (issue 13 asks for 100 ms: 15 ms on a quiet machine); the bound
    // asserted is loose, no timed test: it tells the DESTROY event from the periodic re-dump.
    assert!(
        seen - ran < Duration::from_secs(1),
        "offload removed {:?} after conntrack -D returned: not by the DESTROY event",
        seen - ran
    );
    // The kernel picks the connection up again (a new entry, loose pickup; its id may be the
    // old one's, the id being derived from the entry's address), and once that entry is
    // ESTABLISHED and ASSURED it is offered and offloaded anew.
    let again = wait_for(T, || {
        let new = ct_entries(&topo, PORT)
            .into_iter()
            .find(|e| e.assured && e.state == "ESTABLISHED")?;
        (offloaded(&d) == 1).then_some(new)
    });
    assert!(
        again.is_some(),
        "the re-picked entry is offloaded again: {:?}\n{}\n{}",
        ct_entries(&topo, PORT),
        d.plugin("xdp-router"),
        d.log_text()
    );
    assert!(xfer.running(), "the transfer survived conntrack -D");

    // The end: intact, and the FIN torn down in the kernel (the flow, offered again once the
    // new entry is established, is handed back on the FIN: the plugin passes it).
    let res = xfer.finish();
    assert_eq!(res, Ok(bytes), "the transfer is intact\n{}", d.log_text());
    let closed = wait_for(T, || {
        ct_entries(&topo, PORT)
            .into_iter()
            .find(|e| e.state != "ESTABLISHED")
    });
    assert!(
        closed.is_some(),
        "the kernel's entry after the FIN: {:?}",
        ct_entries(&topo, PORT)
    );
    let none = wait_for(T, || (offloaded(&d) == 0).then_some(()));
    assert!(
        none.is_some(),
        "no flow left in the plugin: {}",
        d.plugin("xdp-router")
    );
    let teardowns = counter(&d, "xdp", "flow_teardown");
    if teardowns > 0 {
        // Handed back, or already taken back by the host on the entry's own state change when
        // the event thread read the FIN (then nothing is left to hand back: release_moot).
        let handled = wait_for(T, || {
            let n = counter(&d, "flows", "released") + counter(&d, "flows", "release_moot");
            (n >= 1).then_some(n)
        });
        assert!(
            handled.is_some(),
            "a FIN passed by the flow path is handed back: {}",
            d.plugin("xdp-router")
        );
    }
    println!(
        "flow_teardown {teardowns}, released {}, release_moot {}, flow_forwarded {}",
        counter(&d, "flows", "released"),
        counter(&d, "flows", "release_moot"),
        counter(&d, "xdp", "flow_forwarded")
    );
}

/// An unpaced transfer (the flow offloaded after its first hundred packets, everything else in
/// XDP, at full speed) completes with the kernel's default TCP window tracking: the host marks
/// the entry liberal when it offers it, so the FIN handed back is NATed. (Before it did, such a
/// transfer hung at its FIN: the kernel's window was far behind, the FIN INVALID, not NATed.)
#[test]
fn unpaced_transfers_complete_with_default_window_tracking() {
    if skip_nat() {
        return;
    }
    let topo = Topo::new(false);
    let dir = TempDir::new();
    make_nat_router(&topo, dir.path());
    let cfg = host_config(&topo.r, build(), true, XDP_ROUTER);
    let d = Daemon::start(dir.path(), &cfg);
    let bytes = 64 << 20;
    for i in 0..3 {
        let fwd0 = counter(&d, "xdp", "flow_forwarded");
        let xfer = Transfer::start(&topo, PORT + 10 + i, bytes, 1e12);
        assert_eq!(
            xfer.finish(),
            Ok(bytes),
            "unpaced transfer {i}: {}\n{}",
            d.plugin("xdp-router"),
            d.log_text()
        );
        let fwd = wait_for(T, || {
            let f = counter(&d, "xdp", "flow_forwarded");
            (f > fwd0 + 10_000).then_some(f)
        });
        assert!(
            fwd.is_some(),
            "transfer {i} went through the flow path: {}",
            d.plugin("xdp-router")
        );
    }
    // Each FIN was passed by the flow path and each flow left the plugin: handed back, or
    // removed by the host first (the kernel saw the FIN, the entry is no candidate any more;
    // then the hand-back finds nothing to release). Counters reach `ekho status` about once a
    // second.
    let done = wait_for(T, || {
        (counter(&d, "xdp", "flow_teardown") >= 3 && offloaded(&d) == 0).then_some(())
    });
    assert!(done.is_some(), "{}", d.plugin("xdp-router"));
    println!(
        "flow_teardown {}, released {}",
        counter(&d, "xdp", "flow_teardown"),
        counter(&d, "flows", "released")
    );
}

/// The IPv6 masquerade end to end, as the IPv4 transfer above: r masquerades IPv6 behind
/// fd00:2::1 (an `ip6` nat table), a paced transfer h1 -> [fd00:2::2] creates one IPv6 entry
/// the plugin offloads with its NAT; the kernel's counters stay still while the plugin's grow,
/// the transfer arrives intact and its FIN goes to the kernel.
#[test]
fn ipv6_masqueraded_transfer_is_offloaded_with_its_nat() {
    if skip_nat() {
        return;
    }
    let port = PORT + 100;
    let topo = Topo::new(false);
    let dir = TempDir::new();
    make_nat6_router(&topo, dir.path());
    let cfg = host_config(&topo.r, build(), true, XDP_ROUTER);
    let d = Daemon::start(dir.path(), &cfg);
    let bytes = 32 << 20;
    let mut xfer = Transfer::start_to(&topo, "fd00:2::2", port, bytes, 4.0 * (1 << 20) as f64);
    let ct = wait_for(T, || {
        ct_entries_of(&topo, "ipv6", port)
            .into_iter()
            .find(|e| e.state == "ESTABLISHED" && e.assured)
    })
    .expect("an ESTABLISHED, ASSURED IPv6 conntrack entry");
    assert_eq!(
        (ct.reply.0.as_str(), ct.reply.1.as_str()),
        ("fd00:2::2", "fd00:2::1"),
        "masqueraded behind r: {ct:?}"
    );
    let on = wait_for(T, || (offloaded(&d) == 1).then_some(()));
    assert!(
        on.is_some(),
        "the IPv6 flow is offloaded: {}\n{}",
        d.plugin("xdp-router"),
        d.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    let k0 = ct_entries_of(&topo, "ipv6", port)[0].clone();
    let f0 = counter(&d, "xdp", "flow_forwarded");
    std::thread::sleep(Duration::from_millis(2500));
    let k1 = ct_entries_of(&topo, "ipv6", port)[0].clone();
    let f1 = counter(&d, "xdp", "flow_forwarded");
    assert!(xfer.running(), "the transfer still runs");
    assert_eq!(
        k1.packets(),
        k0.packets(),
        "the kernel's conntrack counters grew while offloaded: {k0:?} -> {k1:?}"
    );
    assert!(
        f1 > f0 + 500,
        "the flow path forwards it: flow_forwarded {f0} -> {f1}"
    );
    let res = xfer.finish();
    assert_eq!(res, Ok(bytes), "the transfer is intact\n{}", d.log_text());
    let closed = wait_for(T, || {
        ct_entries_of(&topo, "ipv6", port)
            .into_iter()
            .find(|e| e.state != "ESTABLISHED")
    });
    assert!(
        closed.is_some(),
        "the FIN tears the entry down in the kernel: {:?}",
        ct_entries_of(&topo, "ipv6", port)
    );
    let none = wait_for(T, || (offloaded(&d) == 0).then_some(()));
    assert!(none.is_some(), "no flow left: {}", d.plugin("xdp-router"));
    println!(
        "ipv6: flow_forwarded {}, flow_teardown {}, released {}",
        counter(&d, "xdp", "flow_forwarded"),
        counter(&d, "xdp", "flow_teardown"),
        counter(&d, "flows", "released")
    );
}
