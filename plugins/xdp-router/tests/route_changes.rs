//! Route changes on r reach the data path: new prefix, gateway change, ECMP, link down,
//! neighbour MAC change, deleted prefix, nexthop objects/groups, blackhole, policy rules.
//! Needs root, iproute2, iputils-ping, ethtool and python3; prints `SKIP:` otherwise.

mod common;

use common::*;
use ekho_plugin_api::prelude::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(8);

/// RX deltas on h2's two links while `f` runs (a stray ARP/ND probe from r may add one or two).
fn rx_delta(topo: &Topo, f: impl FnOnce()) -> (u64, u64) {
    let a0 = topo.rx_packets(&topo.h2, "veth0");
    let b0 = topo.rx_packets(&topo.h2, "veth1");
    f();
    std::thread::sleep(Duration::from_millis(200));
    (
        topo.rx_packets(&topo.h2, "veth0") - a0,
        topo.rx_packets(&topo.h2, "veth1") - b0,
    )
}

#[test]
fn route_changes_are_reflected_in_forwarding() {
    if skip() {
        return;
    }
    let topo = Topo::new(true);
    let (h1, h2, r) = (topo.h1.clone(), topo.h2.clone(), topo.r.clone());
    topo.ip(&h2, "addr add 10.9.9.9/32 dev lo");
    topo.ip(&h2, "addr add fd00:99::9/128 dev lo");
    let run = Running::start(&topo, "");

    // No route on r yet.
    assert_eq!(
        topo.ping_count(&h1, "10.9.9.9", 2),
        0,
        "forwarded without a route"
    );

    // New prefix.
    topo.ip(&r, "route add 10.9.9.9/32 via 10.0.2.2");
    topo.ip(&r, "-6 route add fd00:99::9/128 via fd00:2::2");
    assert!(
        topo.ping_within(&h1, "10.9.9.9", T),
        "new v4 prefix\n{}",
        run.report()
    );
    assert!(
        topo.ping_within(&h1, "fd00:99::9", T),
        "new v6 prefix\n{}",
        run.report()
    );
    run.with(|m| {
        assert_eq!(
            m.outcome_of_route(254, "10.9.9.9/32"),
            Some(Outcome::Offloaded)
        );
        assert_eq!(
            m.outcome_of_route(254, "fd00:99::9/128"),
            Some(Outcome::Offloaded)
        );
    });
    let (a, b) = rx_delta(&topo, || assert_eq!(topo.ping_count(&h1, "10.9.9.9", 5), 5));
    assert!(a >= 5 && b <= 2, "via p2: veth0 +{a}, veth1 +{b}");

    // Gateway change: now through p3 / veth1.
    topo.ip(&r, "route replace 10.9.9.9/32 via 10.0.3.2");
    topo.ip(&r, "-6 route replace fd00:99::9/128 via fd00:3::2");
    run.settle();
    assert!(
        topo.ping_within(&h1, "10.9.9.9", T),
        "after gateway change\n{}",
        run.report()
    );
    assert!(
        topo.ping_within(&h1, "fd00:99::9", T),
        "v6 after gateway change\n{}",
        run.report()
    );
    let (a, b) = rx_delta(&topo, || {
        assert_eq!(topo.ping_count(&h1, "10.9.9.9", 5), 5);
        assert_eq!(topo.ping_count(&h1, "fd00:99::9", 5), 5);
    });
    assert!(b >= 10 && a < 3, "via p3: veth0 +{a}, veth1 +{b}");

    // ECMP across both legs: many flows spread over both.
    topo.ip(
        &r,
        "route replace 10.9.9.9/32 nexthop via 10.0.2.2 nexthop via 10.0.3.2",
    );
    topo.ip(
        &r,
        "-6 route replace fd00:99::9/128 nexthop via fd00:2::2 nexthop via fd00:3::2",
    );
    run.settle();
    assert!(
        topo.ping_within(&h1, "10.9.9.9", T),
        "ecmp\n{}",
        run.report()
    );
    let (a, b) = rx_delta(&topo, || topo.udp_flows(&h1, "10.9.9.9", 7000, 200));
    assert!(
        a >= 40 && b >= 40 && a + b >= 195,
        "v4 ECMP split veth0 +{a}, veth1 +{b}\n{}",
        run.report()
    );
    let (a, b) = rx_delta(&topo, || topo.udp_flows(&h1, "fd00:99::9", 7000, 200));
    assert!(
        a >= 40 && b >= 40 && a + b >= 195,
        "v6 ECMP split veth0 +{a}, veth1 +{b}\n{}",
        run.report()
    );

    // Link down: the p3 leg dies, every flow takes p2.
    topo.ip(&r, "link set p3 down");
    run.settle();
    let (a, b) = rx_delta(&topo, || topo.udp_flows(&h1, "10.9.9.9", 7000, 200));
    assert!(
        a >= 195 && b == 0,
        "p3 down: veth0 +{a}, veth1 +{b}\n{}",
        run.report()
    );
    let (a, b) = rx_delta(&topo, || topo.udp_flows(&h1, "fd00:99::9", 7000, 200));
    assert!(
        a >= 195 && b == 0,
        "p3 down (v6): veth0 +{a}, veth1 +{b}\n{}",
        run.report()
    );
    assert_eq!(topo.ping_count(&h1, "10.9.9.9", 3), 3);

    // Neighbour MAC change: h2 changes its MAC; until r's neighbour follows, frames go to the
    // old MAC and h2 drops them; once r's entry is replaced, forwarding resumes.
    topo.ip(&r, "route replace 10.9.9.9/32 via 10.0.2.2");
    run.settle();
    assert_eq!(topo.ping_count(&h1, "10.9.9.9", 3), 3);
    topo.ip(&h2, "link set veth0 address 02:00:00:00:22:22");
    topo.ip(
        &r,
        "neigh replace 10.0.2.2 lladdr 02:00:00:00:22:22 dev p2 nud permanent",
    );
    run.settle();
    assert_eq!(
        topo.ping_count(&h1, "10.9.9.9", 3),
        3,
        "after neighbour MAC change\n{}",
        run.report()
    );
    topo.ip(
        &r,
        "neigh replace 10.0.2.2 lladdr 02:00:00:00:99:99 dev p2 nud permanent",
    );
    run.settle();
    assert_eq!(
        topo.ping_count(&h1, "10.9.9.9", 3),
        0,
        "a wrong MAC must break forwarding (MACs come from the mirror)"
    );
    topo.ip(
        &r,
        "neigh replace 10.0.2.2 lladdr 02:00:00:00:22:22 dev p2 nud permanent",
    );
    run.settle();
    assert_eq!(
        topo.ping_count(&h1, "10.9.9.9", 3),
        3,
        "MAC restored\n{}",
        run.report()
    );

    // Deleted prefix.
    topo.ip(&r, "route del 10.9.9.9/32");
    run.settle();
    assert_eq!(
        topo.ping_count(&h1, "10.9.9.9", 3),
        0,
        "forwarded after the route was deleted"
    );
    run.with(|m| assert_eq!(m.outcome_of_route(254, "10.9.9.9/32"), None));
    assert!(run.with(|m| m.counter("xdp", "no_route")) > 0);
}

#[test]
fn nexthop_objects_blackhole_and_rules() {
    if skip() {
        return;
    }
    let topo = Topo::new(true);
    let (h1, h2, r) = (topo.h1.clone(), topo.h2.clone(), topo.r.clone());
    topo.ip(&h2, "addr add 10.9.9.8/32 dev lo");
    topo.ip(&h2, "addr add 10.9.9.6/32 dev lo");
    topo.ip(&r, "nexthop add id 10 via 10.0.2.2 dev p2");
    topo.ip(&r, "nexthop add id 11 via 10.0.3.2 dev p3");
    topo.ip(&r, "nexthop add id 12 group 10/11");
    topo.ip(&r, "route add 10.9.9.8/32 nhid 12");
    topo.ip(&r, "route add blackhole 10.9.9.7/32");
    let run = Running::start(&topo, "");

    assert!(
        topo.ping_within(&h1, "10.9.9.8", T),
        "via nexthop group\n{}",
        run.report()
    );
    run.with(|m| {
        assert_eq!(
            m.outcome_of_route(254, "10.9.9.8/32"),
            Some(Outcome::Offloaded)
        );
        assert_eq!(
            m.outcome_of_route(254, "10.9.9.7/32"),
            Some(Outcome::Offloaded)
        );
        assert_eq!(
            m.outcomes.get(&ObjectKey::Nexthop { id: 12 }),
            Some(&Outcome::Offloaded)
        );
    });
    // Both gateways resolved (the plugin asked for them when programming the group).
    let t0 = std::time::Instant::now();
    while !topo.ip(&r, "neigh show 10.0.3.2").contains("REACHABLE") && t0.elapsed() < T {
        std::thread::sleep(Duration::from_millis(100));
    }
    run.settle();
    let (a, b) = rx_delta(&topo, || topo.udp_flows(&h1, "10.9.9.8", 7000, 200));
    assert!(
        a >= 40 && b >= 40 && a + b >= 195,
        "group split veth0 +{a}, veth1 +{b}\n{}",
        run.report()
    );

    // Changing the group object alone moves the traffic (the route itself is unchanged).
    topo.ip(&r, "nexthop replace id 12 group 11");
    run.settle();
    let (a, b) = rx_delta(&topo, || topo.udp_flows(&h1, "10.9.9.8", 7000, 100));
    assert!(
        a <= 2 && b >= 98,
        "group = {{11}}: veth0 +{a}, veth1 +{b}\n{}",
        run.report()
    );

    // An IPv4 route through an IPv6 gateway (RFC 5549): the MAC comes from the v6 neighbour.
    topo.ip(&r, "route add 10.9.9.6/32 via inet6 fd00:3::2 dev p3");
    run.settle();
    assert!(
        topo.ping_within(&h1, "10.9.9.6", T),
        "v4 via v6 gateway\n{}",
        run.report()
    );
    let (a, b) = rx_delta(&topo, || assert_eq!(topo.ping_count(&h1, "10.9.9.6", 3), 3));
    assert!(
        b >= 3 && a <= 2,
        "via fd00:3::2 on p3: veth0 +{a}, veth1 +{b}"
    );
    run.with(|m| assert!(m.counter("route:10.9.9.6/32", "packets") >= 3));

    // Blackhole: dropped in XDP, counted.
    let before = run.with(|m| m.counter("port:p1", "dropped"));
    topo.udp_flows(&h1, "10.9.9.7", 7000, 20);
    run.with(|m| {
        assert!(
            m.counter("port:p1", "dropped") >= before + 20,
            "{}",
            m.report()
        );
        assert!(m.counter("route:10.9.9.7/32", "packets") >= 20);
    });

    // A policy rule: the family goes to the kernel (which does not forward here), the rule is
    // never bypassed; removing it restores forwarding.
    topo.ip(&r, "rule add from 10.0.1.2 table 100 pref 100");
    run.settle();
    assert_eq!(
        topo.ping_count(&h1, "10.9.9.8", 2),
        0,
        "policy rule bypassed by XDP"
    );
    run.with(|m| assert!(m.counter("xdp", "punt_all") > 0));
    topo.ip(&r, "rule del from 10.0.1.2 table 100 pref 100");
    run.settle();
    assert!(
        topo.ping_within(&h1, "10.9.9.8", T),
        "after rule removal\n{}",
        run.report()
    );
    let _ = h2;
}

#[test]
fn routes_through_unowned_ports_are_not_shadowed() {
    if skip() {
        return;
    }
    let topo = Topo::new(true);
    let (h1, h2, r) = (topo.h1.clone(), topo.h2.clone(), topo.r.clone());
    topo.ip(&h2, "addr add 10.9.9.9/32 dev lo");
    topo.ip(&h2, "addr add 10.9.9.5/32 dev lo");
    // p3 is not owned. The default route goes through owned p2; 10.9.9.9 through p3.
    topo.ip(&r, "route add default via 10.0.2.2");
    topo.ip(&r, "route add 10.9.9.9/32 via 10.0.3.2");
    let run = Running::start(&topo, "ports = [\"p1\", \"p2\"]");
    let mut attached = topo.xdp_attached_in_r();
    attached.sort();
    assert_eq!(attached, vec!["p1".to_string(), "p2".to_string()]);

    // The default route is forwarded by XDP...
    assert!(
        topo.ping_within(&h1, "10.9.9.5", T),
        "default route via p2\n{}",
        run.report()
    );
    // ...but 10.9.9.9 goes to the kernel (which does not forward here): never out of p2.
    // (Shadowed, h2 would answer: it holds 10.9.9.9; and veth0 would see all 10 requests.)
    let (a, _) = rx_delta(&topo, || {
        assert_eq!(topo.ping_count(&h1, "10.9.9.9", 10), 0)
    });
    assert!(a <= 3, "10.9.9.9 shadowed by the default route: veth0 +{a}");
    // r's own address on the non-owned port is delivered locally, not forwarded by default.
    let (a, _) = rx_delta(&topo, || assert!(topo.ping_within(&h1, "10.0.3.1", T)));
    assert!(a <= 2, "r's address on p3 forwarded to h2: veth0 +{a}");
    run.with(|m| {
        // ... and the host must hand it every route: the plugin takes all ports.
        assert!(m.plugin.as_ref().unwrap().capabilities().ports.all);
        assert_eq!(
            m.outcome_of_route(254, "10.9.9.9/32"),
            Some(Outcome::Trapped)
        );
        assert_eq!(
            m.outcome_of_route(254, "0.0.0.0/0"),
            Some(Outcome::Offloaded)
        );
        assert!(
            m.counter("route:10.9.9.9/32", "packets") >= 10,
            "{}",
            m.report()
        );
    });
    let _ = h2;
}

#[test]
fn a_route_the_maps_cannot_hold_punts_its_family() {
    if skip() {
        return;
    }
    let topo = Topo::new(false);
    let h1 = topo.h1.clone();
    let run = Running::start(&topo, "");
    assert!(topo.ping_within(&h1, "10.0.2.2", T), "{}", run.report());
    assert!(topo.ping_within(&h1, "fd00:2::2", T), "{}", run.report());

    // 65536 more IPv4 /24s: the v4 trie holds 65536 (table, prefix) entries in all, so the last
    // few cannot be programmed.
    let p2 = run.with(|m| {
        m.given
            .values()
            .find_map(|o| match o {
                Object::Link(l) if l.ifname.as_str() == "p2" => Some(l.ifindex),
                _ => None,
            })
            .unwrap()
    });
    let routes: Vec<Route> = (0..65536u32)
        .map(|i| {
            let dst = IpPrefix::new(IpAddress::V4([11, (i >> 8) as u8, i as u8, 0]), 24);
            Route::unicast(dst, vec![NextHop::via("10.0.2.2".parse().unwrap(), p2)])
        })
        .collect();
    let failed: Vec<Route> = run.with(|m| {
        let p = m.plugin.as_mut().unwrap();
        let mut failed = Vec::new();
        for chunk in routes.chunks(4096) {
            let changes: Vec<Change> = chunk
                .iter()
                .cloned()
                .map(|r| Change::Add(Object::Route(r)))
                .collect();
            for (r, o) in chunk.iter().zip(p.apply(&changes)) {
                if matches!(o, Outcome::Failed(_)) {
                    failed.push(r.clone());
                }
            }
        }
        failed
    });
    assert!(
        !failed.is_empty() && failed.len() < 100,
        "{} routes failed",
        failed.len()
    );
    // IPv4 now goes to the kernel (which does not forward here); IPv6 is unaffected.
    assert_eq!(
        topo.ping_count(&h1, "10.0.2.2", 2),
        0,
        "IPv4 forwarded with an unprogrammed prefix"
    );
    assert_eq!(topo.ping_count(&h1, "fd00:2::2", 2), 2);
    assert!(run.with(|m| m.counter("xdp", "punt_all")) > 0);

    // Once the routes that did not fit are gone, IPv4 is forwarded again.
    run.with(|m| {
        let changes: Vec<Change> = failed
            .iter()
            .cloned()
            .map(|r| Change::Remove(Object::Route(r)))
            .collect();
        let outs = m.plugin.as_mut().unwrap().apply(&changes);
        assert!(outs.iter().all(|o| *o == Outcome::Offloaded), "{outs:?}");
    });
    assert!(topo.ping_within(&h1, "10.0.2.2", T), "{}", run.report());
}
