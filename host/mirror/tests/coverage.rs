//! Differential coverage of route types, metrics, encapsulation, IPv4 via IPv6 gateways, wide
//! ECMP (one notification far larger than a default socket buffer), device kinds, address
//! lifetimes, and the sysctls that change notification behaviour.

mod common;
use common::*;
use std::time::Duration;

fn check(ns: &Netns, r: &Running, step: &str) {
    let d = converge(ns, &r.mirror, Duration::from_secs(4));
    assert!(
        d.is_empty(),
        "after {step}: mirror differs from kernel:\n{}",
        d.join("\n")
    );
}

fn base(tag: &str) -> Option<Netns> {
    let ns = netns(tag)?;
    for s in [
        "link add va type veth peer name vb",
        "link add vc type veth peer name vd",
        "link set va up",
        "link set vb up",
        "link set vc up",
        "link set vd up",
        "addr add 10.1.0.1/16 dev va",
        "addr add 10.2.0.1/24 dev vc",
        "addr add 2001:db8:1::1/64 dev va",
        "addr add 2001:db8:2::1/64 dev vc",
    ] {
        ns.ip(s);
    }
    Some(ns)
}

#[test]
fn route_types_metrics_encap_via() {
    let Some(ns) = base("types") else { return };
    let r = start(&ns, 0);
    for s in [
        "route add 10.60.0.0/24 via inet6 2001:db8:1::2 dev va",
        "route add 10.61.0.0/24 encap ip id 5 dst 10.1.0.9 dev va",
        "route add 10.63.0.0/24 via 10.1.0.2 mtu lock 1400 advmss 1300 hoplimit 9 initcwnd 10",
        "route add anycast 10.64.0.0/24 dev va table 9",
        "route add multicast 224.1.0.0/16 dev va table 9",
        "route add broadcast 10.65.0.255 dev va table 9",
        "route add throw 10.66.0.0/16 table 9",
        "route add blackhole 10.67.0.0/16 table 9 metric 4",
        "route add 10.68.0.0/24 via 10.1.0.2 tos 0x10 proto bgp",
        "route add 10.69.0.0/24 via 10.1.0.2 src 10.1.0.1 table 5",
        "route add 10.70.0.0/24 via 10.200.0.2 dev va onlink",
        "route add 10.71.0.0/24 dev va scope link",
        "-6 route add anycast 2001:db8:7::/64 dev va table 9",
        "-6 route add unreachable 2001:db8:8::/64 table 9",
        "-6 route add prohibit 2001:db8:9::/64",
        "-6 route add 2001:db8:10::/64 via 2001:db8:1::2 pref high",
        "-6 route add 2001:db8:11::/64 from 2001:db8:1::/64 via 2001:db8:1::2",
        "-6 route add 2001:db8:12::/64 via 2001:db8:1::2 expires 100",
        "-6 route add 2001:db8:13::/64 via 2001:db8:1::2 mtu 1400 hoplimit 20",
        "route change 10.63.0.0/24 via 10.1.0.3 mtu 1300",
        "route del 10.60.0.0/24",
        "route del 10.61.0.0/24",
    ] {
        ns.ip(s);
        check(&ns, &r, s);
    }
}

#[test]
fn wide_ecmp_single_large_message() {
    let Some(ns) = base("ecmp") else { return };
    // A small event buffer: the kernel may drop the big notification (then the overrun
    // repair must bring it back) or deliver it (then it must parse).
    let r = start(&ns, 1 << 20);
    // iproute2 caps a request at 4 KiB: 200 IPv4 legs in one request.
    let legs4: String = (0..200)
        .map(|i| format!(" nexthop via 10.1.{}.{} dev va", 1 + i / 100, 2 + i % 100))
        .collect();
    ns.ip(&format!("route add 10.80.0.0/24{legs4}"));
    check(&ns, &r, "wide IPv4 ECMP");
    // IPv6: iproute2 6.1 cannot dump an IPv6 route over ~4 KiB (about 140 legs: the dump
    // silently stops), so the comparison with `ip -j` goes to 100 legs.
    let append = |from: u32, n: u32| {
        let legs6: String = (from..from + n)
            .map(|i| format!(" nexthop via 2001:db8:1::{:x} dev va", 0x1000 + i))
            .collect();
        ns.ip(&format!("-6 route append 2001:db8:80::/64{legs6}"));
    };
    append(0, 50);
    append(50, 50);
    check(&ns, &r, "wide IPv6 ECMP");
    ns.ip("-6 route del 2001:db8:80::/64 via 2001:db8:1::1000");
    check(&ns, &r, "one leg of wide IPv6 ECMP deleted");
    // Beyond iproute2: 1999 legs, each notification up to ~56 KB. The mirror must hold all of
    // them, and a re-dump (another code path: dump, not events) must find nothing different.
    for b in 1..20 {
        append(b * 100, 100);
    }
    let legs = || {
        r.mirror
            .dump(Some(ekho_plugin_api::ObjectKind::Route))
            .into_iter()
            .filter_map(|o| match o {
                ekho_plugin_api::Object::Route(x) => Some(x.nexthops.len()),
                _ => None,
            })
            .max()
    };
    // Generous: each event of this route is a full decode and diff of up to 1999 legs, seconds
    // apiece in a debug build in the emulated VM (5 s there left the mirror at 1899 legs).
    let t = std::time::Instant::now();
    while legs() != Some(1999) && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let changes = std::sync::Arc::new(std::sync::Mutex::new(0usize));
    let c2 = changes.clone();
    r.mirror.attach(
        |_| {},
        Box::new(move |c| {
            for x in c {
                if let ekho_plugin_api::Change::Update {
                    old: ekho_plugin_api::Object::Route(o),
                    new: ekho_plugin_api::Object::Route(n),
                } = x
                {
                    let g = |r: &ekho_plugin_api::object::Route| -> Vec<String> {
                        r.nexthops
                            .iter()
                            .map(|h| format!("{}", h.gateway.unwrap()))
                            .collect()
                    };
                    let (go, gn) = (g(o), g(n));
                    let i = go.iter().zip(gn.iter()).position(|(a, b)| a != b);
                    eprintln!(
                        "update: {} -> {} legs, first difference at {i:?}: {:?} vs {:?}",
                        go.len(),
                        gn.len(),
                        i.map(|i| &go[i..(i + 3).min(go.len())]),
                        i.map(|i| &gn[i..(i + 3).min(gn.len())])
                    );
                } else {
                    eprintln!("change {} {:?}", x.op(), x.key());
                }
            }
            *c2.lock().unwrap() += c.len()
        }),
    );
    let before = r.mirror.stats().resyncs;
    r.mirror
        .request_resync(&[ekho_plugin_api::ObjectKind::Route]);
    let t = std::time::Instant::now();
    while r.mirror.stats().resyncs == before {
        assert!(t.elapsed() < Duration::from_secs(60), "resync did not run");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        *changes.lock().unwrap(),
        0,
        "re-dump disagrees with the event-built state"
    );
    assert_eq!(legs(), Some(1999));
}

#[test]
fn device_kinds_and_address_lifetimes() {
    let Some(ns) = base("kinds") else { return };
    let r = start(&ns, 0);
    for s in [
        "link add br0 type bridge",
        "link set vb master br0",
        "link set br0 up",
        "link add vx0 type vxlan id 42 dstport 4789 local 10.1.0.1 dev va",
        "link add mv0 link va type macvlan mode bridge",
        "tuntap add mode tun name tun0",
        "link set tun0 up",
        "link set mv0 address 02:00:00:00:aa:01",
        "link set vx0 master br0",
        "link set va mtu 9000",
        "link set dev mv0 name mv1",
        "link set va group 7 txqueuelen 500",
        "addr add 10.9.9.9/24 dev va valid_lft 100 preferred_lft 50",
        "addr add 10.9.9.10/24 dev va",
        "addr add 10.9.8.1 peer 10.9.8.2 dev vc",
        "addr add 2001:db8:5::1/64 dev va noprefixroute",
        "addr change 10.9.9.9/24 dev va valid_lft forever preferred_lft forever",
        "addr del 10.9.9.9/24 dev va",
        "link del vx0",
        "link set vb nomaster",
    ] {
        ns.ip(s);
        check(&ns, &r, s);
    }
}

#[test]
fn notification_sysctls() {
    let Some(ns) = base("sysctl") else { return };
    ns.sh("sysctl -qw net.ipv6.route.skip_notify_on_dev_down=1");
    ns.sh("sysctl -qw net.ipv4.nexthop_compat_mode=0");
    let r = start(&ns, 0);
    for s in [
        "-6 route add 2001:db8:50::/64 via 2001:db8:1::2",
        "-6 route add 2001:db8:51::/64 via 2001:db8:1::2 table 10",
        "nexthop add id 1 via 10.1.0.2 dev va",
        "nexthop add id 2 via 2001:db8:2::2 dev vc",
        "route add 10.50.0.0/24 nhid 1",
        "-6 route add 2001:db8:52::/64 nhid 2",
        "nexthop replace id 1 via 10.1.0.3 dev va",
        "nexthop del id 2",
        "link set va down",
        "link set va up",
        "link del vc",
    ] {
        ns.ip(s);
        check(&ns, &r, s);
    }
}
