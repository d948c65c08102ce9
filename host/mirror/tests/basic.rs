//! The mirror follows links, addresses, routes and neighbours of a private namespace, and equals
//! `ip -j` output after each step.

mod common;
use common::*;
use std::time::Duration;

fn check(ns: &Netns, r: &Running, step: &str) {
    let d = converge(ns, &r.mirror, Duration::from_secs(3));
    assert!(
        d.is_empty(),
        "after {step}: mirror differs from kernel:\n{}",
        d.join("\n")
    );
}

#[test]
fn links_addresses_routes_neighbours() {
    let Some(ns) = netns("basic") else {
        return;
    };
    ns.ip("link add va type veth peer name vb");
    ns.ip("link set va up");
    ns.ip("addr add 10.1.0.1/24 dev va");
    let r = start(&ns, 0);
    check(&ns, &r, "initial sync");
    let steps = [
        "link set vb up",
        "addr add 2001:db8::1/64 dev va",
        "route add 10.2.0.0/24 via 10.1.0.2",
        "route add 10.3.0.0/24 table 100 nexthop via 10.1.0.2 weight 3 nexthop via 10.1.0.3",
        "-6 route add 2001:db8:9::/64 via 2001:db8::2 metric 50",
        "route add blackhole 10.4.0.0/24",
        "route add unreachable 10.5.0.0/24 table 7",
        "route add prohibit 10.6.0.0/24 metric 9",
        "-6 route add blackhole 2001:db8:5::/64",
        "neigh add 10.1.0.2 lladdr 02:00:00:00:00:02 dev va",
        "neigh add 2001:db8::2 lladdr 02:00:00:00:00:03 dev va nud reachable",
        "link set va mtu 1400",
        "link set va alias uplink",
        "route del 10.2.0.0/24",
        "neigh del 10.1.0.2 dev va",
        "addr del 2001:db8::1/64 dev va",
        "link set vb down",
    ];
    for s in steps {
        ns.ip(s);
        check(&ns, &r, s);
    }
    let st = r.mirror.stats();
    assert!(st.messages > 0 && st.synced, "{st:?}");
}
