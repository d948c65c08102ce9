//! The plugin as the host drives it (`Plugin::apply`, `begin_sync`/`end_sync`, `object_stats`,
//! `stats`), in-process, with real traffic: r's ports v0 and v1 (veth; peers h0 and h1 in
//! namespaces of their own, r's forwarding off). Runs on this machine's kernel, which has no
//! flower: the filters are handed over as the host would hand them. A drop filter drops UDP
//! from h0 in XDP (the receiver on r gets nothing, `object_stats` counts packets, bytes as tc
//! would, drops, lastused), a redirect delivers h0's frames out of v1 to h1 (r forwards nothing
//! itself), a filter with gact random is answered `unsupported` with the compiler's reason, a
//! sync's sweep removes what the replay did not renew, a removed port takes its
//! filters out of the data path. Needs root; prints `SKIP:` otherwise.

use ekho_flower_xdp::dataplane::{Dataplane, XdpMode};
use ekho_flower_xdp::tc::*;
use ekho_flower_xdp::{Config, FlowerXdp};
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::DetachedHost;
use ekho_testkit::*;
use ekho_xdp_common::netns::run_in;
use std::time::Duration;

mod common;
use common::*;

fn link(ns: &Netns, dev: &str) -> Link {
    Link {
        ifindex: ns.ifindex(dev),
        ifname: dev.into(),
        flags: 1 | 0x40 | 0x10000,
        mtu: 1500,
        link_type: 1,
        address: ns.mac(dev).trim().parse().unwrap(),
        kind: "veth".into(),
        ..Default::default()
    }
}

fn flower(ifindex: u32, prio: u16, keys: FlowerKeys, actions: Vec<TcActionSpec>) -> TcFilter {
    let mut f = TcFilter::new(TcTarget::Dev(ifindex), TC_H_MIN_INGRESS, prio, 1);
    f.protocol = 0x0800;
    f.kind = "flower".into();
    f.matches = TcMatch::flower(FlowerKeys {
        eth_type: Some(0x0800).into(),
        ..keys
    });
    f.actions = actions.into();
    f
}

fn udp_port(port: u16) -> FlowerKeys {
    FlowerKeys {
        ip_proto: Some(17).into(),
        dst_port: Some(Masked::exact(port)).into(),
        ..Default::default()
    }
}

fn filter_stats(p: &FlowerXdp, f: &TcFilter) -> Option<ObjectCounters> {
    p.object_stats(ObjectKind::TcFilter)
        .into_iter()
        .find(|s| s.key == f.key())
        .map(|s| s.counters[0])
}

#[test]
fn the_plugin_drops_and_redirects_real_traffic_and_sweeps_after_a_sync() {
    if let Some(r) = needs_root("network namespaces, XDP") {
        say_skip(&r);
        return;
    }
    if let Some(r) = missing_tools(&["ethtool"], "ethtool") {
        say_skip(&r);
        return;
    }
    let t = topo("ekho-fxdpp");
    let dp = Dataplane::load(Some(t.r.path()), XdpMode::Auto).expect("load");
    let mut p = FlowerXdp::build(Config::default(), DetachedHost::handle(), Box::new(dp)).unwrap();
    let (v0, v1) = (link(&t.r, "v0"), link(&t.r, "v1"));
    p.begin_sync();
    let o = p.apply(&[
        Change::Add(Object::Link(v0.clone())),
        Change::Add(Object::Link(v1.clone())),
    ]);
    assert_eq!(o, vec![Outcome::Offloaded; 2]);
    p.end_sync();
    assert!(
        p.capabilities().takes_kind(ObjectKind::TcFilter),
        "declares filters"
    );

    let drop = flower(
        v0.ifindex,
        1,
        udp_port(5000),
        vec![TcActionSpec::gact(TcControl::Shot)],
    );
    let redirect = flower(
        v0.ifindex,
        2,
        FlowerKeys {
            dst_ip: Some(Masked::prefix(IpAddress::V4([10, 1, 0, 2]), 32)).into(),
            ..Default::default()
        },
        vec![TcActionSpec::mirred(
            TcMirredAction::EgressRedirect,
            v1.ifindex,
        )],
    );
    let o = p.apply(&[
        Change::Add(Object::TcFilter(drop.clone())),
        Change::Add(Object::TcFilter(redirect.clone())),
    ]);
    assert_eq!(o, vec![Outcome::Offloaded; 2]);
    // what its compiler refuses comes back with the reason (API 1.4), which the host shows
    let random = flower(
        v0.ifindex,
        3,
        udp_port(7000),
        vec![TcActionSpec {
            params: TcActionParams::Gact {
                prob: ROption::RSome(TcGactProb {
                    ptype: 1,
                    pval: 2,
                    control: TcControl::Ok,
                }),
            },
            ..TcActionSpec::gact(TcControl::Shot)
        }],
    );
    let o = p.apply(&[Change::Add(Object::TcFilter(random))]);
    assert_eq!(o, vec![Outcome::unsupported("gact random not supported")]);

    let rx_hit = socket_in(&t.r, "10.0.0.1:5000");
    let rx_miss = socket_in(&t.r, "10.0.0.1:5001");
    let tx = socket_in(&t.h0, "10.0.0.2:0");
    send(&tx, "10.0.0.1:5001", 3); // ARP first
    assert_eq!(received(&rx_miss, Duration::from_millis(300)), 3);
    send(&tx, "10.0.0.1:5000", 40);
    send(&tx, "10.0.0.1:5001", 40);
    assert_eq!(
        received(&rx_hit, Duration::from_millis(300)),
        0,
        "dropped in XDP"
    );
    assert_eq!(received(&rx_miss, Duration::from_millis(100)), 40, "passed");
    let c = filter_stats(&p, &drop).expect("the drop filter's counters");
    // 4 bytes of payload: IPv4 20 + UDP 8 + 4 (tc counts without the Ethernet header)
    assert_eq!((c.packets, c.bytes, c.drops), (40, 40 * 32, 40));
    assert!(c.lastused > 0 && c.lastused <= ekho_plugin_api::monotonic_ns());
    let dropped = p
        .stats()
        .counters
        .iter()
        .find(|c| c.kind.as_str() == "xdp" && c.name.as_str() == "dropped")
        .map(|c| c.value);
    assert_eq!(dropped, Some(40));

    // the redirect: h0 -> 10.1.0.2 out of v1 (r's own forwarding is off)
    let rx0 = rx_packets(&t.h1, "h1");
    send(&tx, "10.1.0.2:6000", 30);
    let got = wait_for(Duration::from_secs(3), || {
        let n = rx_packets(&t.h1, "h1") - rx0;
        (n >= 30).then_some(n)
    });
    assert_eq!(got, Some(30), "redirected to h1");
    assert_eq!(
        filter_stats(&p, &redirect).map(|c| (c.packets, c.drops)),
        Some((30, 0))
    );

    // a sync that replays only the redirect sweeps the drop: port 5000 gets through
    p.begin_sync();
    let o = p.apply(&[
        Change::Add(Object::Link(v0.clone())),
        Change::Add(Object::Link(v1.clone())),
        Change::Add(Object::TcFilter(redirect.clone())),
    ]);
    assert_eq!(o, vec![Outcome::Offloaded; 3]);
    p.end_sync();
    assert!(filter_stats(&p, &drop).is_none(), "swept");
    send(&tx, "10.0.0.1:5000", 10);
    assert_eq!(
        received(&rx_hit, Duration::from_millis(300)),
        10,
        "after the sweep"
    );

    // v1 removed: the redirect to it is not run any more (the kernel keeps it)
    let o = p.apply(&[Change::Remove(Object::Link(v1.clone()))]);
    assert_eq!(o, vec![Outcome::Offloaded]);
    assert!(filter_stats(&p, &redirect).is_none(), "no longer running");
    let rx0 = rx_packets(&t.h1, "h1");
    send(&tx, "10.1.0.2:6000", 10);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx_packets(&t.h1, "h1") - rx0, 0, "r does not forward");
    p.shutdown();
    assert!(p.object_stats(ObjectKind::TcFilter).is_empty());
}

fn counter(p: &FlowerXdp, kind: &str, name: &str) -> Option<u64> {
    p.stats()
        .counters
        .iter()
        .find(|c| c.kind.as_str() == kind && c.name.as_str() == name)
        .map(|c| c.value)
}

#[test]
fn a_port_stripping_vlan_tags_before_xdp_is_read_warned_and_counted() {
    if let Some(r) = needs_root("network namespaces, XDP") {
        say_skip(&r);
        return;
    }
    if let Some(r) = missing_tools(&["ethtool"], "ethtool") {
        say_skip(&r);
        return;
    }
    let ns = Netns::named("ekho-fxdpp-rxvlan");
    ns.ip("link add pa type veth peer name pb");
    ns.ip("link set pa up");
    ns.ip("link set pb up");
    // veth has both features on by default (`ethtool -k`), as the reader sees them
    let pa = ns.ifindex("pa");
    let names = ekho_flower_xdp::ethtool::RX_VLAN_FEATURES;
    let read = || {
        run_in(Some(&ns.path()), || {
            ekho_flower_xdp::ethtool::active(pa, &names)
        })
    };
    assert_eq!(read().unwrap().unwrap(), vec![true, true]);
    let dp = Dataplane::load(Some(ns.path()), XdpMode::Skb).expect("load");
    let mut p = FlowerXdp::build(Config::default(), DetachedHost::handle(), Box::new(dp)).unwrap();
    // pa reported as a NIC (no kind), pb as the veth it is (not read: veth strips nothing)
    let mut nic = link(&ns, "pa");
    nic.kind = "".into();
    let o = p.apply(&[
        Change::Add(Object::Link(nic.clone())),
        Change::Add(Object::Link(link(&ns, "pb"))),
    ]);
    assert_eq!(o, vec![Outcome::Offloaded; 2]);
    assert_eq!(counter(&p, "ports", "owned"), Some(2));
    assert_eq!(counter(&p, "ports", "rx_vlan_offload"), Some(1));
    // turned off: the next link message reads it again
    ns.run(&[
        "ethtool",
        "-K",
        "pa",
        "rxvlan",
        "off",
        "rx-vlan-stag-hw-parse",
        "off",
    ]);
    assert_eq!(read().unwrap().unwrap(), vec![false, false]);
    let o = p.apply(&[Change::Update {
        old: Object::Link(nic.clone()),
        new: Object::Link(nic),
    }]);
    assert_eq!(o, vec![Outcome::Offloaded]);
    assert_eq!(counter(&p, "ports", "rx_vlan_offload"), Some(0));
    p.shutdown();
}
