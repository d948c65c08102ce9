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
    // The rtnetlink socket overran; the nftables kinds (another socket) were not re-dumped.
    assert!(st.socket_overruns["rtnetlink"] >= 1, "{st:?}");
    assert_eq!(st.socket_overruns["nftables"], 0, "{st:?}");
    assert!(
        st.resynced.get("routes").copied().unwrap_or(0) >= 1,
        "{st:?}"
    );
    let nft: Vec<_> = st
        .resynced
        .iter()
        .filter(|(k, _)| matches!(**k, "nft_chains" | "nft_flowtables"))
        .collect();
    assert!(
        nft.is_empty(),
        "an rtnetlink overrun re-dumped nftables kinds: {nft:?}"
    );
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

/// An overrun of the nftables event socket (a 4 KiB buffer, an `nft -f` transaction of
/// hundreds of chains and rules while the first batch stalls) re-dumps the nftables kinds only:
/// the rtnetlink socket does not overrun and no rtnetlink kind or tc is re-dumped, and the
/// mirrored chains are exact afterwards (every chain, every rule count).
#[test]
fn nftables_overrun_redumps_only_the_nftables_kinds() {
    let Some(ns) = netns("nftoverrun") else {
        return;
    };
    if !ns.exec(&["nft", "list", "tables"]) {
        eprintln!(
            "SKIP: kernel {}: nf_tables (or the nft tool) missing",
            ekho_testkit::kernel()
        );
        return;
    }
    let r = start(&ns, 4096);
    let mut first = true;
    r.mirror.attach(
        |_| {},
        Box::new(move |_: &[Change]| {
            if std::mem::take(&mut first) {
                std::thread::sleep(Duration::from_millis(300));
            }
        }),
    );
    // The first change (a table and its chain) stalls the source; the transaction that follows
    // floods the nftables socket meanwhile.
    ns.run(&[
        "nft",
        "add table inet ekhoflood ; add chain inet ekhoflood c0 { type filter hook input priority 0 ; }",
    ]);
    let (chains, rules) = (300u32, 5u32);
    let mut script = String::new();
    for c in 1..chains {
        script +=
            &format!("add chain inet ekhoflood c{c} {{ type filter hook input priority {c} ; }}\n");
    }
    for c in 0..chains {
        for _ in 0..rules {
            script += &format!("add rule inet ekhoflood c{c} counter\n");
        }
    }
    let file = std::env::temp_dir().join(format!("ekho-nftflood-{}.nft", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let out = ns.run(&["nft", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    eprintln!("nft: {out}");
    let want: BTreeMap<String, u32> = (0..chains).map(|c| (format!("c{c}"), rules)).collect();
    let got = || -> BTreeMap<String, u32> {
        r.mirror
            .dump(Some(ekho_plugin_api::ObjectKind::NfChain))
            .into_iter()
            .filter_map(|o| match o {
                ekho_plugin_api::Object::NfChain(c) if c.table.as_str() == "ekhoflood" => {
                    Some((c.name.to_string(), c.rules))
                }
                _ => None,
            })
            .collect()
    };
    let t = std::time::Instant::now();
    while got() != want && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = r.mirror.stats();
    eprintln!("stats after nft flood: {st:?}");
    let g = got();
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| g.get(*k) != Some(v))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty() && g.len() == want.len(),
        "mirrored chains differ after the nftables overrun ({} mirrored): {wrong:?}",
        g.len()
    );
    // The kernel agrees on the number of chains (the view is the kernel's, not only ours).
    let listed = ns.run(&["nft", "list", "table", "inet", "ekhoflood"]);
    assert_eq!(
        listed.matches("\tchain c").count(),
        chains as usize,
        "{listed}"
    );
    assert!(
        st.socket_overruns["nftables"] >= 1,
        "no nftables overrun provoked: {st:?}"
    );
    assert_eq!(st.socket_overruns["rtnetlink"], 0, "{st:?}");
    assert!(
        st.resynced.get("nft_chains").copied().unwrap_or(0) >= 1,
        "{st:?}"
    );
    let other: Vec<_> = st
        .resynced
        .iter()
        .filter(|(k, _)| !matches!(**k, "nft_chains" | "nft_flowtables"))
        .collect();
    assert!(
        other.is_empty(),
        "an nftables overrun re-dumped rtnetlink kinds or tc: {other:?}"
    );
}
