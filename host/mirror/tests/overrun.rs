//! ENOBUFS on a deliberately small event buffer: a batched writer (no per-message ack) floods
//! route notifications; the mirror must count the overrun, resync, and converge to the kernel
//! with nothing lost, nothing duplicated and no flap of objects that did not change.

mod common;
use common::*;
use ekho_plugin_api::{Change, ObjectKey};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn overrun_is_detected_and_repaired_without_flap() {
    let Some(ns) = netns("overrun") else {
        return;
    };
    ns.ip("link add va type veth peer name vb");
    ns.ip("link set va up");
    ns.ip("link set vb up");
    ns.ip("addr add 10.1.0.1/24 dev va");
    ns.ip("route add 10.200.0.0/24 via 10.1.0.2");
    // 4 KiB requested: the kernel's minimum, a few dozen messages.
    let r = start(&ns, 4096);
    let log: Arc<Mutex<Vec<Change>>> = Arc::default();
    let l2 = log.clone();
    // The first batch stalls the source for a moment (as a busy host would), so the flood
    // overruns the small buffer whatever the scheduling.
    let mut first = true;
    r.mirror.attach(
        |_| {},
        Box::new(move |c: &[Change]| {
            if std::mem::take(&mut first) {
                std::thread::sleep(Duration::from_millis(300));
            }
            l2.lock().unwrap().extend_from_slice(c)
        }),
    );
    let n = 20_000u32;
    let routes: Vec<(Ipv4Addr, u8, Ipv4Addr)> = (0..n)
        .map(|i| {
            (
                Ipv4Addr::from(0x0b00_0000u32 + (i << 8)),
                24,
                Ipv4Addr::new(10, 1, 0, 2),
            )
        })
        .collect();
    let sent =
        ekho_mirror::testing::route_writer::add_routes_v4(Some(&ns.path()), routes, 254, 500)
            .unwrap();
    assert_eq!(sent, n as usize);
    let d = converge(&ns, &r.mirror, Duration::from_secs(30));
    assert!(
        d.is_empty(),
        "mirror differs after overrun:\n{}",
        d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let st = r.mirror.stats();
    eprintln!("stats after flood: {st:?}");
    assert!(st.overruns >= 1, "no overrun provoked: {st:?}");
    assert!(st.resyncs >= 1, "overrun not repaired by resync: {st:?}");
    // Exactly one Add per new route, nothing else for any key.
    let log = log.lock().unwrap();
    let mut per_key: BTreeMap<ObjectKey, Vec<&'static str>> = BTreeMap::new();
    for c in log.iter() {
        per_key.entry(c.key()).or_default().push(c.op());
    }
    let routes_added = per_key
        .iter()
        .filter(|(k, ops)| matches!(k, ObjectKey::Route { .. }) && *ops == &vec!["add"])
        .count();
    let bad: Vec<_> = per_key
        .iter()
        .filter(|(_, ops)| *ops != &vec!["add"])
        .take(10)
        .collect();
    assert!(bad.is_empty(), "flapping or duplicated changes: {bad:?}");
    assert_eq!(routes_added, n as usize, "every new route announced once");
}
