//! Public API behaviour against a real namespace: attach atomicity and ordering, request_resync
//! without flap, resolve_neighbour.

mod common;
use common::*;
use ekho_plugin_api::{Change, Object, ObjectKind};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn attach_orders_and_resync_is_silent_and_resolve_works() {
    let Some(ns) = netns("api") else { return };
    ns.ip("link add va type veth peer name vb");
    ns.ip("link set va up");
    ns.ip("link set vb up");
    ns.ip("addr add 10.1.0.1/24 dev va");
    ns.ip("link add vc type veth peer name vd");
    ns.ip("link set vc up");
    ns.ip("link set vd up");
    ns.ip("nexthop add id 1 via 10.1.0.2 dev va");
    ns.ip("nexthop add id 2 group 1");
    ns.ip("route add 10.9.0.0/24 nhid 2");
    let r = start(&ns, 0);
    let snap: Arc<Mutex<Vec<Object>>> = Arc::default();
    let log: Arc<Mutex<Vec<Change>>> = Arc::default();
    let (s2, l2) = (snap.clone(), log.clone());
    r.mirror.attach(
        move |v| *s2.lock().unwrap() = v,
        Box::new(move |c: &[Change]| l2.lock().unwrap().extend_from_slice(c)),
    );
    // Snapshot in dependency order, with names.
    let snap = snap.lock().unwrap().clone();
    let rank = ekho_plugin_api::order::dependency_rank;
    assert!(
        snap.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "snapshot not in dependency order"
    );
    let route = snap.iter().find_map(|o| match o {
        Object::Route(x) if x.nhid.into_option() == Some(2) => Some(x.clone()),
        _ => None,
    });
    assert_eq!(route.expect("nhid route").nexthops[0].dev.as_str(), "va");

    // A requested resync finds nothing different: no change at all.
    let before = r.mirror.stats().resyncs;
    r.mirror.request_resync(ObjectKind::ALL);
    let t = Instant::now();
    while r.mirror.stats().resyncs == before {
        assert!(t.elapsed() < Duration::from_secs(5), "resync did not run");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        log.lock().unwrap().is_empty(),
        "resync emitted changes: {:?}",
        log.lock().unwrap()
    );

    // A batch with a removal of a link and of its dependants: dependants first.
    ns.ip("link del va");
    assert!(converge(&ns, &r.mirror, Duration::from_secs(3)).is_empty());
    let log2 = log.lock().unwrap().clone();
    let pos = |f: &dyn Fn(&Change) -> bool| log2.iter().position(f);
    let link = pos(&|c| matches!(c, Change::Remove(Object::Link(l)) if l.ifname.as_str() == "va"))
        .expect("link removal");
    let route = pos(&|c| matches!(c, Change::Remove(Object::Route(_)))).expect("route removal");
    let nh = pos(&|c| matches!(c, Change::Remove(Object::Nexthop(n)) if n.id == 1))
        .expect("nexthop removal");
    assert!(
        route < nh && nh < link,
        "removals not in reverse dependency order: {log2:?}"
    );

    // resolve_neighbour creates an entry and probes.
    let vb = r
        .mirror
        .dump(Some(ObjectKind::Link))
        .into_iter()
        .find_map(|o| match o {
            Object::Link(l) if l.ifname.as_str() == "vc" => Some(l.ifindex),
            _ => None,
        });
    ns.ip("addr add 10.2.0.1/24 dev vc");
    r.mirror
        .resolve_neighbour(vb.unwrap(), "10.2.0.9".parse().unwrap())
        .expect("resolve");
    let out = ns.sh("ip -j neigh show 10.2.0.9 nud all");
    assert!(
        out.contains("10.2.0.9"),
        "no neighbour entry after resolve: {out}"
    );
}

#[test]
fn device_routes_on_several_devices_are_separate_objects() {
    let Some(ns) = netns("devroutes") else {
        return;
    };
    ns.ip("link add va type veth peer name vb");
    ns.ip("link set va up");
    ns.ip("link set vb up");
    // The kernel adds the fe80::/64 routes when IPv6 comes up on each device, shortly after.
    let t0 = std::time::Instant::now();
    while ns
        .sh("ip -6 route show table main fe80::/64")
        .lines()
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the kernel did not add both fe80::/64 routes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = start(&ns, 0);
    let fe80 = |objs: &[Object]| -> Vec<String> {
        let mut v: Vec<String> = objs
            .iter()
            .filter_map(|o| match o {
                Object::Route(x) if x.dst.to_string() == "fe80::/64" && x.table == 254 => {
                    Some(x.nexthops[0].dev.to_string())
                }
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    let snap: Arc<Mutex<Vec<Object>>> = Arc::default();
    let log: Arc<Mutex<Vec<Change>>> = Arc::default();
    let (s2, l2) = (snap.clone(), log.clone());
    r.mirror.attach(
        move |v| *s2.lock().unwrap() = v,
        Box::new(move |c: &[Change]| l2.lock().unwrap().extend_from_slice(c)),
    );
    assert_eq!(
        fe80(&snap.lock().unwrap()),
        ["va", "vb"],
        "both fe80::/64 routes in the snapshot"
    );
    ns.ip("link set vb down");
    assert!(converge(&ns, &r.mirror, Duration::from_secs(3)).is_empty());
    let removed: Vec<Object> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| match c {
            Change::Remove(o) => Some(o.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        fe80(&removed),
        ["vb"],
        "only vb's fe80::/64 removed: {removed:?}"
    );
}
