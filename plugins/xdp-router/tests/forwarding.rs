//! End-to-end forwarding through the plugin, in-process: h1 - r - h2 namespaces, r's kernel
//! forwarding off, the plugin fed from `ip -j` dumps of r. Needs root, iproute2, iputils-ping,
//! ethtool and python3; prints `SKIP:` with the reason otherwise.

mod common;

use common::*;
use ekho_plugin_api::prelude::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(8);

#[test]
fn forwards_v4_and_v6_only_while_the_plugin_runs() {
    if skip() {
        return;
    }
    let topo = Topo::new(false);
    let (h1, h2) = (topo.h1.clone(), topo.h2.clone());

    // Baseline: the kernel on r does not forward.
    assert!(
        !topo.ping_once(&h1, "10.0.2.2"),
        "kernel forwarded v4 with ip_forward=0"
    );
    assert!(
        !topo.ping_once(&h1, "fd00:2::2"),
        "kernel forwarded v6 with forwarding=0"
    );

    let mut run = Running::start(&topo, "ports = [\"p*\"]");
    let mut attached = topo.xdp_attached_in_r();
    attached.sort();
    assert_eq!(
        attached,
        vec!["p1".to_string(), "p2".to_string()],
        "XDP on r's ports only"
    );

    assert!(
        topo.ping_within(&h1, "10.0.2.2", T),
        "v4 ping through the plugin\n{}{}",
        run.report(),
        topo.diag()
    );
    assert!(
        topo.ping_within(&h1, "fd00:2::2", T),
        "v6 ping through the plugin\n{}",
        run.report()
    );
    assert!(
        topo.ping_within(&h2, "10.0.1.2", T),
        "v4 ping h2 -> h1\n{}",
        run.report()
    );
    assert_eq!(topo.ping_count(&h1, "10.0.2.2", 5), 5, "steady v4 ping");
    assert_eq!(topo.ping_count(&h1, "fd00:2::2", 5), 5, "steady v6 ping");

    let n = 4 << 20;
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "10.0.2.2", 5001, n),
        Some(n),
        "v4 TCP transfer"
    );
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "fd00:2::2", 5002, n),
        Some(n),
        "v6 TCP transfer"
    );

    run.with(|m| {
        // The forwarded traffic went through XDP, not the kernel.
        let fwd1 = m.counter("port:p1", "forwarded");
        let fwd2 = m.counter("port:p2", "forwarded");
        assert!(fwd1 > 1000, "p1 forwarded {fwd1}");
        assert!(fwd2 > 100, "p2 forwarded {fwd2}");
        assert!(
            m.counter("port:p1", "passed") > 0,
            "ARP/ND/first packets passed"
        );
        assert!(m.counter("route:10.0.2.0/24", "packets") > 1000);
        assert!(m.counter("route:fd00:2::/64", "packets") > 1000);
        assert!(m.counter("route:10.0.1.0/24", "packets") > 10);
        // h2 was never resolved by r before: the plugin asked the host.
        let reqs = m.host.requests.lock().unwrap().clone();
        assert!(
            reqs.iter().any(|(_, a)| a.to_string() == "10.0.2.2"),
            "resolve requests: {reqs:?}"
        );
        assert!(
            reqs.iter().any(|(_, a)| a.to_string() == "fd00:2::2"),
            "resolve requests: {reqs:?}"
        );
        assert!(m.counter("xdp", "no_neighbour") > 0);
        // Outcomes: connected routes offloaded, local routes trapped.
        assert_eq!(
            m.outcome_of_route(254, "10.0.2.0/24"),
            Some(Outcome::Offloaded)
        );
        assert_eq!(
            m.outcome_of_route(254, "fd00:2::/64"),
            Some(Outcome::Offloaded)
        );
        assert_eq!(
            m.outcome_of_route(255, "10.0.1.1/32"),
            Some(Outcome::Trapped)
        );
        eprintln!("{}", m.stats().text);
    });

    // What the data path must leave to the kernel (which, forwarding off, drops it here).
    let r = topo.r.clone();
    let ping = |args: &[&str]| {
        let mut v = vec![
            "netns",
            "exec",
            h1.as_str(),
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            "1",
        ];
        v.extend_from_slice(args);
        succeeds("ip", &v)
    };
    assert!(!ping(&["-t", "1", "10.0.2.2"]), "TTL 1 forwarded");
    assert!(run.with(|m| m.counter("xdp", "ttl_expired")) > 0);
    topo.ip(&r, "link set p2 mtu 1280");
    run.settle();
    assert!(
        !ping(&["-M", "dont", "-s", "1400", "10.0.2.2"]),
        "packet over the egress MTU forwarded"
    );
    assert!(run.with(|m| m.counter("xdp", "mtu")) > 0);
    assert!(
        ping(&["-s", "1200", "10.0.2.2"]),
        "small packet after MTU change\n{}",
        run.report()
    );
    topo.ip(&r, "link set p2 mtu 1500");

    run.stop();
    assert!(
        topo.xdp_attached_in_r().is_empty(),
        "programs detached on shutdown"
    );
    assert_eq!(
        topo.ping_count(&h1, "10.0.2.2", 3),
        0,
        "v4 still forwarded after shutdown"
    );
    assert_eq!(
        topo.ping_count(&h1, "fd00:2::2", 3),
        0,
        "v6 still forwarded after shutdown"
    );
}
