//! The conntrack mirror against `conntrack -L -o extended` (conntrack-tools) in a private netns,
//! after random flow set-up and teardown, through an event-socket overrun (ENOBUFS) and its
//! resync, and with a bounded table. Compared: family, protocol, both tuples, status
//! (`[UNREPLIED]`, `[ASSURED]`), mark and zone. Left out, as they change by themselves with no
//! event: the timeout (counts down), the counters (grow with every packet; NEW events carry
//! none) and the use count.

use ekho_mirror::conntrack::message::status;
use ekho_mirror::conntrack::source::{Config, Conntrack, KeepAlive};
use ekho_mirror::conntrack::Entry;
use ekho_testkit::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// UDP datagrams from `ns` to each of `ports` on the loopback (IPv4, and IPv6 for every
/// fourth), one flow each.
fn udp_flows(ns: &Netns, ports: &[u16]) {
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let py = format!(
        "import socket\n\
         s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         for i, p in enumerate([{}]):\n    \
             s4.sendto(b'x' * (i % 7 + 1), ('127.0.0.1', p))\n    \
             if i % 4 == 0:\n        s6.sendto(b'y', ('::1', p))\n",
        list.join(",")
    );
    ns.run(&["python3", "-c", &py]);
}

/// One entry as both sides are compared.
fn line_of_flow(e: &Entry) -> String {
    let f = &e.flow;
    let (o, r) = (&f.original, &f.reply);
    let fam = if f.family.0 == 10 { "ipv6" } else { "ipv4" };
    let mut flags = String::new();
    if f.status & status::SEEN_REPLY == 0 {
        flags.push_str(" [UNREPLIED]");
    }
    if f.status & status::ASSURED != 0 {
        flags.push_str(" [ASSURED]");
    }
    format!(
        "{fam} {} src={} dst={} sport={} dport={}{flags} src={} dst={} sport={} dport={} mark={} zone={}",
        f.protocol,
        o.src,
        o.dst,
        o.sport,
        o.dport,
        r.src,
        r.dst,
        r.sport,
        r.dport,
        f.mark,
        f.zone
    )
}

/// `conntrack -L -o extended` of the namespace (both families), in the same shape (UDP only:
/// the flows this test makes).
fn kernel_lines(ns: &Netns) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for fam in ["ipv4", "ipv6"] {
        let text = ns.sh(&format!(
            "conntrack -L -f {fam} -p udp -o extended 2>/dev/null"
        ));
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 6 {
                continue;
            }
            // ipv4 2 udp 17 TIMEOUT key=value... [FLAGS] ...
            let kv: Vec<&str> = w[5..].to_vec();
            let get = |k: &str, nth: usize| -> String {
                kv.iter()
                    .filter_map(|x| x.strip_prefix(&format!("{k}=")))
                    .nth(nth)
                    .unwrap_or("")
                    .to_string()
            };
            let mut flags = String::new();
            if kv.contains(&"[UNREPLIED]") {
                flags.push_str(" [UNREPLIED]");
            }
            if kv.contains(&"[ASSURED]") {
                flags.push_str(" [ASSURED]");
            }
            let zone = {
                let z = get("zone", 0);
                if z.is_empty() {
                    "0".to_string()
                } else {
                    z
                }
            };
            out.insert(format!(
                "{} {} src={} dst={} sport={} dport={}{flags} src={} dst={} sport={} dport={} mark={} zone={zone}",
                w[0],
                w[3],
                get("src", 0),
                get("dst", 0),
                get("sport", 0),
                get("dport", 0),
                get("src", 1),
                get("dst", 1),
                get("sport", 1),
                get("dport", 1),
                get("mark", 0)
            ));
        }
    }
    out
}

fn mirror_lines(c: &Conntrack) -> BTreeSet<String> {
    c.table()
        .entries()
        .filter(|e| e.protocol() == 17)
        .map(line_of_flow)
        .collect()
}

/// Waits until the mirror equals the kernel; panics with the difference.
fn assert_same(ns: &Netns, c: &Conntrack, what: &str) {
    let mut last = (BTreeSet::new(), BTreeSet::new());
    let ok = wait_for(Duration::from_secs(10), || {
        let (k, m) = (kernel_lines(ns), mirror_lines(c));
        let same = k == m;
        last = (k, m);
        same.then_some(())
    });
    if ok.is_none() {
        let (k, m) = last;
        let only_k: Vec<_> = k.difference(&m).take(5).collect();
        let only_m: Vec<_> = m.difference(&k).take(5).collect();
        panic!(
            "{what}: kernel {} entries, mirror {}\nonly in kernel: {only_k:#?}\nonly in mirror: {only_m:#?}",
            k.len(),
            m.len()
        );
    }
}

/// A small deterministic generator (no dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn the_mirrored_table_equals_conntrack_after_random_setup_and_teardown() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns();
    let c = Conntrack::spawn(Config {
        netns: Some(ns.path()),
        rcvbuf: 64 << 20,
        limit: 100_000,
        refresh: None,
    })
    .unwrap();
    assert!(wait_for(Duration::from_secs(5), || c.synced().then_some(())).is_some());
    let mut rng = Rng(0x5eed_0013);
    let mut live: BTreeSet<u16> = BTreeSet::new();
    for round in 0..3 {
        let ports: Vec<u16> = (0..150)
            .map(|_| 20_000 + (rng.next() % 20_000) as u16)
            .filter(|p| !live.contains(p))
            .collect();
        udp_flows(&ns, &ports);
        live.extend(ports.iter().copied());
        assert_same(&ns, &c, &format!("round {round}: after set-up"));
        let n = kernel_lines(&ns).len();
        assert!(
            n >= live.len(),
            "the kernel tracks the flows: {n} entries for {} ports",
            live.len()
        );
        // Tear down a random third.
        let gone: Vec<u16> = live
            .iter()
            .copied()
            .filter(|_| rng.next() % 3 == 0)
            .collect();
        let script: String = gone
            .iter()
            .map(|p| {
                format!(
                    "conntrack -D -p udp --dport {p} >/dev/null 2>&1; conntrack -D -f ipv6 -p udp --dport {p} >/dev/null 2>&1\n"
                )
            })
            .collect();
        ns.sh(&script);
        for p in &gone {
            live.remove(p);
        }
        assert_same(&ns, &c, &format!("round {round}: after teardown"));
    }
    let st = c.table().stats();
    assert_eq!(st.overruns, 0, "{st:?}");
    assert!(st.flows >= live.len(), "{st:?}");
}

#[test]
fn an_overrun_is_counted_and_repaired_by_a_resync() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns();
    // The smallest buffer the kernel allows: a burst overruns it.
    let c = Conntrack::spawn(Config {
        netns: Some(ns.path()),
        rcvbuf: 1,
        limit: 100_000,
        refresh: None,
    })
    .unwrap();
    assert!(wait_for(Duration::from_secs(5), || c.synced().then_some(())).is_some());
    let ports: Vec<u16> = (30_000..33_000).collect();
    udp_flows(&ns, &ports);
    ns.sh("conntrack -F >/dev/null 2>&1");
    udp_flows(&ns, &ports[..500]);
    assert_same(&ns, &c, "after the burst");
    assert!(
        kernel_lines(&ns).len() >= 500,
        "the kernel tracks the flows"
    );
    let st = c.table().stats();
    assert!(st.overruns > 0, "the burst overran the socket: {st:?}");
    assert!(st.resyncs > 0, "{st:?}");
}

#[test]
fn the_table_is_bounded_and_refusals_are_counted() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns();
    let c = Conntrack::spawn(Config {
        netns: Some(ns.path()),
        rcvbuf: 64 << 20,
        limit: 20,
        refresh: None,
    })
    .unwrap();
    assert!(wait_for(Duration::from_secs(5), || c.synced().then_some(())).is_some());
    let ports: Vec<u16> = (40_000..40_050).collect();
    udp_flows(&ns, &ports);
    let st = wait_for(Duration::from_secs(10), || {
        let st = c.table().stats();
        (st.refused >= 30).then_some(st)
    })
    .unwrap_or_else(|| c.table().stats());
    assert_eq!(st.flows, 20, "{st:?}");
    assert!(st.refused >= 30, "{st:?}");
}

/// Whether `conntrack -L` lists a UDP IPv4 entry to `port`.
fn kernel_has(ns: &Netns, port: u16) -> bool {
    ns.sh(&format!(
        "conntrack -L -f ipv4 -p udp --dport {port} 2>/dev/null"
    ))
    .lines()
    .any(|l| l.contains(&format!("dport={port} ")))
}

#[test]
fn a_kept_alive_entry_outlives_its_timeout_and_expires_once_no_longer_refreshed() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns();
    // Unreplied UDP entries live 3 s here.
    ns.run(&["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3"]);
    let c = Conntrack::spawn(Config {
        netns: Some(ns.path()),
        rcvbuf: 64 << 20,
        limit: 1000,
        refresh: None,
    })
    .unwrap();
    assert!(wait_for(Duration::from_secs(5), || c.synced().then_some(())).is_some());
    // IPv4 4500 is kept alive; IPv4 4501 and IPv6 4500 (the controls) are not.
    udp_flows(&ns, &[4500, 4501]);
    let kept = wait_for(Duration::from_secs(5), || {
        c.table()
            .entries()
            .find(|e| e.flow.original.dport == 4500 && e.flow.family.0 == 2)
            .cloned()
    })
    .expect("the entry is mirrored");
    let ka = KeepAlive {
        key: kept.key(),
        timeout_s: 3,
    };
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(7) {
        c.keep_alive(std::slice::from_ref(&ka));
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(
        kernel_has(&ns, 4500),
        "kept alive for 7 s with a 3 s timeout: still there"
    );
    assert!(!kernel_has(&ns, 4501), "the control expired");
    let st = c.table().stats();
    assert!(st.kept_alive >= 6, "{st:?}");
    assert_eq!(st.keep_alive_failed, 0, "{st:?}");
    // No more refreshes: the kernel's timeout runs again, and the mirror sees it go.
    let gone = wait_for(Duration::from_secs(10), || {
        let mirrored = c.table().entries().any(|e| e.flow.original.dport == 4500);
        (!kernel_has(&ns, 4500) && !mirrored).then_some(())
    });
    assert!(gone.is_some(), "expired in the kernel and in the mirror");
    // A keep-alive of an entry that is gone creates nothing.
    let before = c.table().stats().keep_alive_failed;
    c.keep_alive(&[ka]);
    let failed = wait_for(Duration::from_secs(5), || {
        (c.table().stats().keep_alive_failed > before).then_some(())
    });
    assert!(failed.is_some(), "{:?}", c.table().stats());
    assert!(!kernel_has(&ns, 4500), "not created again");
}
