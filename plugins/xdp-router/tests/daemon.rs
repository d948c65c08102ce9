//! The xdp-router plugin through the ekho daemon: h1 - r - h2 (this crate's topology), r's kernel
//! forwarding off. `ekho run` (built with the plugin by the test kit's [`build`]) mirrors r and
//! loads libekho_xdp_router.so: traffic between h1 and h2 flows only while it runs, and route,
//! gateway, ECMP, link and neighbour changes made on r are followed.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// The plugin table: xdp-router owning r's ports with its own `ports` key (as its docs say).
const XDP_ROUTER: &str = "[[plugins]]\nname = \"xdp-router\"\n[plugins.config]\nports = [\"p*\"]\n";

/// The plugin table: xdp-router with r's ports selected by the host's `[[plugins]] ports` filter
/// (every route of these tests goes through them).
const XDP_ROUTER_HOST_FILTER: &str = "[[plugins]]\nname = \"xdp-router\"\nports = [\"p*\"]\n";

#[test]
fn xdp_router_forwards_only_while_ekho_runs() {
    if skip() {
        return;
    }
    let topo = Topo::new(false);
    let (h1, r, h2) = (topo.h1.clone(), topo.r.clone(), topo.h2.clone());
    assert!(
        !topo.ping_once(&h1, "10.0.2.2"),
        "the kernel on r must not forward (ip_forward=0)"
    );
    assert!(
        !topo.ping_once(&h1, "fd00:2::2"),
        "the kernel on r must not forward (IPv6 forwarding=0)"
    );

    let dir = TempDir::new();
    let cfg = host_config(&r, build(), true, XDP_ROUTER);
    let mut d = Daemon::start(dir.path(), &cfg);
    let st = d.plugin("xdp-router");
    assert_eq!(st["state"], "in_sync", "{st}\n{}", d.log_text());
    assert!(
        topo.ping_within(&h1, "10.0.2.2", T),
        "v4 through XDP:\n{}",
        d.log_text()
    );
    assert!(
        topo.ping_within(&h1, "fd00:2::2", T),
        "v6 through XDP:\n{}",
        d.log_text()
    );
    assert_eq!(
        topo.ping_count(&h1, "10.0.2.2", 5),
        5,
        "every v4 ping answered"
    );
    let n = 2 << 20;
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "10.0.2.2", 5101, n),
        Some(n),
        "v4 TCP transfer"
    );
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "fd00:2::2", 5102, n),
        Some(n),
        "v6 TCP transfer"
    );

    // Plugin counters reach `ekho status` when the worker refreshes them (about every second):
    // all ports' `forwarded`, and p1's (h1's traffic enters there).
    let forwarded = |d: &Daemon| -> (u64, u64, Value) {
        let counters = d.plugin("xdp-router")["counters"].clone();
        let fwd = counters
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "forwarded");
        let all = fwd.clone().map(|c| c["value"].as_u64().unwrap()).sum();
        let p1 = fwd
            .filter(|c| c["kind"] == "port:p1")
            .map(|c| c["value"].as_u64().unwrap())
            .sum();
        (all, p1, counters)
    };
    let (fwd, p1, counters) = wait_for(Duration::from_secs(5), || {
        let (f, p, c) = forwarded(&d);
        (f > 1000 && p > 0).then_some((f, p, c))
    })
    .unwrap_or_else(|| forwarded(&d));
    assert!(fwd > 1000, "packets forwarded by XDP: {fwd} ({counters})");
    assert!(
        p1 > 0,
        "no port:p1 forwarded counter in `ekho status --json`: {counters}"
    );

    // A route change on r reaches the data path: a host route and a new prefix behind h2.
    topo.ip(&h2, "addr add 10.9.9.9/32 dev lo");
    topo.ip(&h2, "addr add 10.9.0.1/32 dev lo");
    assert!(!topo.ping_once(&h1, "10.9.9.9"), "no host route on r yet");
    assert!(!topo.ping_once(&h1, "10.9.0.1"), "no route on r yet");
    topo.ip(&r, "route add 10.9.9.9/32 via 10.0.2.2");
    assert!(
        topo.ping_within(&h1, "10.9.9.9", T),
        "host route added on r:\n{}",
        d.log_text()
    );
    topo.ip(&r, "route add 10.9.0.0/24 via 10.0.2.2");
    assert!(
        topo.ping_within(&h1, "10.9.0.1", T),
        "new prefix forwarded:\n{}",
        d.log_text()
    );
    topo.ip(&r, "route del 10.9.0.0/24");
    d.settle();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !topo.ping_once(&h1, "10.9.0.1"),
        "deleted prefix no longer forwarded"
    );

    // Stopping ekho (SIGTERM) shuts the plugin down, which detaches its programs: no forwarding.
    let t0 = Instant::now();
    assert!(d.stop(), "clean exit:\n{}", d.log_text());
    assert!(
        t0.elapsed() < T,
        "the daemon took {:?} to stop",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        topo.xdp_attached_in_r().is_empty(),
        "left attached: {:?}",
        topo.xdp_attached_in_r()
    );
    let links = topo.ip(&r, "-d link show");
    assert!(
        !links.contains("prog/xdp"),
        "no XDP program left on r's ports:\n{links}"
    );
    assert_eq!(
        topo.ping_count(&h1, "10.0.2.2", 3),
        0,
        "forwarding must stop with ekho"
    );
}

/// UDP datagrams from `from` to `to`: 5 from each of `flows` source ports (20000 on).
fn udp_flows_from_ports(topo: &Topo, from: &str, to: &str, flows: u16) {
    let code = format!(
        "import socket\nfor p in range(20000, 20000 + {flows}):\n  s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n  s.bind(('0.0.0.0', p))\n  for _ in range(5): s.sendto(b'x'*64, ('{to}', 9))\n  s.close()\n"
    );
    topo.exec(from, &[&python(), "-c", &code]);
}

#[test]
fn xdp_router_follows_route_changes_made_on_r() {
    if skip() {
        return;
    }
    let topo = Topo::new(true);
    let (h1, r, h2) = (topo.h1.clone(), topo.r.clone(), topo.h2.clone());
    topo.ip(&h2, "addr add 10.9.0.1/32 dev lo");
    topo.ip(&r, "route add 10.9.0.0/24 via 10.0.2.2");
    let dir = TempDir::new();
    let cfg = host_config(&r, build(), false, XDP_ROUTER_HOST_FILTER);
    let d = Daemon::start(dir.path(), &cfg);
    assert!(
        topo.ping_within(&h1, "10.9.0.1", T),
        "prefix via p2:\n{}",
        d.log_text()
    );

    // Gateway change: the prefix now goes out through p3, arriving on h2's veth1.
    topo.ip(&r, "route replace 10.9.0.0/24 via 10.0.3.2");
    d.settle();
    let before = topo.rx_packets(&h2, "veth1");
    assert!(
        topo.ping_within(&h1, "10.9.0.1", T),
        "after gateway change:\n{}",
        d.log_text()
    );
    udp_flows_from_ports(&topo, &h1, "10.9.0.1", 4);
    assert!(
        topo.rx_packets(&h2, "veth1") >= before + 20,
        "traffic must follow the new gateway"
    );

    // ECMP across both links: flows spread over veth0 and veth1.
    topo.ip(
        &r,
        "route replace 10.9.0.0/24 nexthop via 10.0.2.2 nexthop via 10.0.3.2",
    );
    d.settle();
    assert!(topo.ping_within(&h1, "10.9.0.1", T));
    let rx = || (topo.rx_packets(&h2, "veth0"), topo.rx_packets(&h2, "veth1"));
    let (a0, b0) = rx();
    udp_flows_from_ports(&topo, &h1, "10.9.0.1", 64);
    let (a1, b1) = rx();
    assert!(
        a1 - a0 >= 20 && b1 - b0 >= 20,
        "64 flows over two legs: {} via p2, {} via p3",
        a1 - a0,
        b1 - b0
    );

    // Link down on one leg: the kernel drops the leg without a netlink message; the mirror infers
    // it, and all flows go the other way.
    topo.ip(&r, "link set p3 down");
    d.settle();
    let (a0, b0) = rx();
    udp_flows_from_ports(&topo, &h1, "10.9.0.1", 32);
    let (a1, b1) = rx();
    assert!(
        a1 - a0 >= 150 && b1 == b0,
        "after p3 down: {} via p2, {} via p3",
        a1 - a0,
        b1 - b0
    );

    // Neighbour MAC change: a wrong MAC for h2 breaks forwarding, the right one restores it.
    let mac = topo.netns(&h2).ip_json("link show veth0")[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    topo.ip(
        &r,
        "neigh replace 10.0.2.2 lladdr 02:00:00:00:00:99 dev p2 nud permanent",
    );
    d.settle();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !topo.ping_once(&h1, "10.0.2.2"),
        "frames to a wrong MAC must not reach h2"
    );
    topo.ip(
        &r,
        &format!("neigh replace 10.0.2.2 lladdr {mac} dev p2 nud permanent"),
    );
    assert!(
        topo.ping_within(&h1, "10.0.2.2", T),
        "the right MAC again:\n{}",
        d.log_text()
    );
}

/// The netfilter bypass of issue 13: r forwards in its kernel with conntrack and an nftables
/// `masquerade` on its h2 side, h2 has no route back to h1. With xdp-router owning r's ports
/// the transfer must still complete (the kernel NATs it: XDP hands it over), a forward-chain
/// drop rule must still drop, and once the rules are gone XDP forwards again.
#[test]
fn xdp_router_hands_traffic_netfilter_acts_on_to_the_kernel() {
    if skip() {
        return;
    }
    if let Some(r) = missing_tools(&["nft"], "nftables") {
        say_skip(&r);
        return;
    }
    let topo = Topo::new(false);
    let (h1, r, h2) = (topo.h1.clone(), topo.r.clone(), topo.h2.clone());
    let dir = TempDir::new();
    let nft = |rules: &str| {
        let f = dir.path().join("rules.nft");
        std::fs::write(&f, rules).unwrap();
        topo.exec(&r, &["nft", "-f", f.to_str().unwrap()]);
    };
    topo.exec(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    topo.ip(&h2, "route del default");
    nft("table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"p2\" masquerade\n }\n}\n");
    let n = 64 << 20;
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "10.0.2.2", 5201, 1 << 20),
        Some(1 << 20),
        "the kernel alone NATs the transfer"
    );

    // Flows are not offered here (`[flows] enabled = false`): this is the guard alone, every
    // packet the rules could act on goes to the kernel (daemon_flows.rs offloads the flow).
    let cfg = format!(
        "{}\n[flows]\nenabled = false\n",
        host_config(&r, build(), true, XDP_ROUTER)
    );
    let d = Daemon::start(dir.path(), &cfg);
    let st = d.plugin("xdp-router");
    assert_eq!(st["state"], "in_sync", "{st}\n{}", d.log_text());
    // The mirror holds the chain, with its rule.
    let dump = d.cli_json(&["dump", "nft_chains", "--json"]);
    let chains = dump["nft_chains"].as_array().cloned().unwrap_or_default();
    assert!(
        chains.iter().any(|c| c["family"] == "ip"
            && c["table"] == "nat"
            && c["name"] == "post"
            && c["hook"] == "postrouting"
            && c["type"] == "nat"
            && c["prio"] == 100
            && c["rules"] == 1),
        "{dump}"
    );
    let counter = |d: &Daemon, kind: &str, name: &str| -> u64 {
        d.plugin("xdp-router")["counters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == kind && c["name"] == name)
            .map(|c| c["value"].as_u64().unwrap())
            .sum()
    };
    let acting = wait_for(T, || {
        let a = counter(&d, "netfilter", "chains_acting");
        (a == 1).then_some(a)
    });
    assert_eq!(acting, Some(1), "{}", d.plugin("xdp-router"));
    let fwd0 = counter(&d, "port:p1", "forwarded");
    let punt0 = counter(&d, "xdp", "punt_all");
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "10.0.2.2", 5202, n),
        Some(n),
        "64 MiB through r with xdp-router owning its ports and a masquerade rule:\n{}",
        d.log_text()
    );
    // Counters refresh about every second: the punted packets show up, no forwarded one.
    let punted = wait_for(T, || {
        let p = counter(&d, "xdp", "punt_all");
        (p > punt0 + 1000).then_some(p)
    });
    assert!(
        punted.is_some(),
        "the transfer was handed to the kernel: {}",
        d.plugin("xdp-router")
    );
    assert_eq!(
        counter(&d, "port:p1", "forwarded"),
        fwd0,
        "nothing forwarded by XDP while the masquerade rule exists"
    );

    // A forward-chain drop rule still drops (with NAT gone, h2 gets its route back).
    nft("flush ruleset\ntable inet filt {\n chain forward {\n  type filter hook forward priority filter; policy accept;\n  ip daddr 10.0.2.2 drop\n }\n}\n");
    topo.ip(&h2, "route add default via 10.0.2.1");
    d.settle();
    let dropping = wait_for(T, || {
        let a = counter(&d, "netfilter", "chains_acting");
        (a == 1).then_some(a)
    });
    assert_eq!(dropping, Some(1), "{}", d.plugin("xdp-router"));
    assert_eq!(
        topo.ping_count(&h1, "10.0.2.2", 3),
        0,
        "the forward-chain drop rule is bypassed"
    );

    // The rules removed: XDP forwards again.
    nft("flush ruleset\n");
    d.settle();
    let gone = wait_for(T, || {
        let a = counter(&d, "netfilter", "chains");
        (a == 0).then_some(a)
    });
    assert_eq!(gone, Some(0), "{}", d.plugin("xdp-router"));
    assert!(topo.ping_within(&h1, "10.0.2.2", T));
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "10.0.2.2", 5203, 2 << 20),
        Some(2 << 20)
    );
    let again = wait_for(T, || {
        let f = counter(&d, "port:p1", "forwarded");
        (f > fwd0 + 1000).then_some(f)
    });
    assert!(
        again.is_some(),
        "XDP forwards again once the rules are gone: {}",
        d.plugin("xdp-router")
    );
}

/// The routes of r's main table as the recorder's view shows them, and as the kernel holds them
/// (`dst` of each, IPv4 and IPv6).
fn route_sets(topo: &Topo, view: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let v: Value =
        serde_json::from_slice(&std::fs::read(view).unwrap_or_default()).unwrap_or(Value::Null);
    let main = |r: &Value| r["table"].as_str().unwrap_or("main") == "main";
    let mut mine: Vec<String> = v["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| main(r))
        .map(|r| r["dst"].as_str().unwrap_or("").to_string())
        .collect();
    let mut kernel = Vec::new();
    for fam in ["-4", "-6"] {
        let k: Value =
            serde_json::from_str(&topo.ip(&topo.r, &format!("{fam} -j route show table main")))
                .unwrap();
        kernel.extend(
            k.as_array()
                .unwrap()
                .iter()
                .map(|r| r["dst"].as_str().unwrap().to_string()),
        );
    }
    mine.sort();
    mine.dedup();
    kernel.sort();
    kernel.dedup();
    (mine, kernel)
}

/// The prefixes the xdp-router programmed (its `route:PREFIX` counters).
fn programmed(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d.plugin("xdp-router")["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c["kind"]
                .as_str()?
                .strip_prefix("route:")
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn after_kill_9_a_new_daemon_leaves_no_stale_program_and_matches_the_kernel() {
    if skip() {
        return;
    }
    let topo = Topo::new(false);
    let (h1, r, h2) = (topo.h1.clone(), topo.r.clone(), topo.h2.clone());
    topo.ip(&h2, "addr add 10.9.1.1/32 dev lo");
    topo.ip(&h2, "addr add 10.9.2.1/32 dev lo");
    topo.ip(&r, "route add 10.9.1.0/24 via 10.0.2.2");
    let dir = TempDir::new();
    let view = dir.path().join("view.json");
    let plugins = format!(
        "{XDP_ROUTER}\n[[plugins]]\nname = \"recorder\"\n[plugins.config]\nevents_path = \"{}\"\nview_path = \"{}\"\n",
        dir.path().join("events.jsonl").display(),
        view.display()
    );
    let cfg = host_config(&r, build(), true, &plugins);
    let mut d = Daemon::start(dir.path(), &cfg);
    assert!(topo.ping_within(&h1, "10.9.1.1", T), "{}", d.log_text());
    // SIGKILL: no shutdown at all.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The programs were held by the process (bpf_links): gone with it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        topo.xdp_attached_in_r().is_empty(),
        "left attached: {:?}",
        topo.xdp_attached_in_r()
    );
    // Changes while no daemon runs.
    topo.ip(&r, "route del 10.9.1.0/24");
    topo.ip(&r, "route add 10.9.2.0/24 via 10.0.2.2");
    // A new daemon (the old one's socket file is stale, its namespace lock released).
    let d = Daemon::start(dir.path(), &cfg);
    assert_eq!(
        d.plugin("xdp-router")["state"],
        "in_sync",
        "{}",
        d.log_text()
    );
    d.settle();
    let mut attached = topo.xdp_attached_in_r();
    attached.sort();
    assert_eq!(
        attached,
        vec!["p1", "p2"],
        "one program per port, no stale one"
    );
    assert!(topo.ping_within(&h1, "10.9.2.1", T), "{}", d.log_text());
    assert!(
        !topo.ping_once(&h1, "10.9.1.1"),
        "the deleted prefix is not forwarded"
    );
    // The recorder's view is the kernel's; the router programmed the new prefix, not the old.
    let (mine, kernel) = route_sets(&topo, &view);
    assert_eq!(mine, kernel);
    let prog = wait_for(Duration::from_secs(5), || {
        let p = programmed(&d);
        p.contains(&"10.9.2.0/24".to_string()).then_some(p)
    })
    .unwrap_or_else(|| programmed(&d));
    assert!(prog.contains(&"10.9.2.0/24".to_string()), "{prog:?}");
    assert!(!prog.contains(&"10.9.1.0/24".to_string()), "{prog:?}");
    let _ = h2;
}
