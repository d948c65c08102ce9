//! The daemon's conntrack flows, through the real daemon in a private namespace: `ekho dump
//! flows` against `conntrack -L -o extended` (text) after the start-up dump, events and
//! deletions, the JSON form's field names, the status and metrics counters, the `[flows]`
//! limit (refused additions counted) and `enabled = false`.

use ekho_tests::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// A tracked namespace ([`tracked_netns`]) that also marks the TCP flows to 5201.
fn tracked_netns_marked() -> Netns {
    let ns = tracked_netns();
    // Marks the TCP flows to 5201 (the policy test filters on it).
    ns.run(&[
        "nft",
        "add rule inet track out tcp dport 5201 ct mark set 0x13",
    ]);
    ns
}

/// One UDP datagram from `ns` to each of `ports` on 127.0.0.1 (one unreplied flow each).
fn udp_flows(ns: &Netns, ports: &[u16]) {
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let py = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor p in [{}]:\n    s.sendto(b'x', ('127.0.0.1', p))\n",
        list.join(",")
    );
    ns.run(&["python3", "-c", &py]);
}

fn null_plugin() -> &'static str {
    "[[plugins]]\nname = \"null\"\npath = \"libekho_null.so\"\n"
}

/// A `conntrack -L -o extended` line without what changes by itself with no event (the
/// timeout, the fifth word; the counters; the use count: NEW events carry neither), so both
/// sides compare.
fn steady(line: &str) -> String {
    let w: Vec<&str> = line.split_whitespace().collect();
    w.iter()
        .enumerate()
        .filter(|(i, s)| {
            *i != 4
                && !["packets=", "bytes=", "use="]
                    .iter()
                    .any(|p| s.starts_with(p))
        })
        .map(|(_, s)| *s)
        .collect::<Vec<_>>()
        .join(" ")
}

fn kernel_lines(ns: &Netns) -> BTreeSet<String> {
    ns.sh("conntrack -L -o extended 2>/dev/null")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(steady)
        .collect()
}

fn daemon_lines(d: &Daemon) -> BTreeSet<String> {
    let out = d.cli(&["dump", "flows"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(steady)
        .collect()
}

/// Waits until `ekho dump flows` prints what `conntrack -L -o extended` does; panics with both.
fn assert_same(ns: &Netns, d: &Daemon, what: &str) {
    let mut last = (BTreeSet::new(), BTreeSet::new());
    let ok = wait_for(Duration::from_secs(10), || {
        let (k, m) = (kernel_lines(ns), daemon_lines(d));
        let same = k == m;
        last = (k, m);
        same.then_some(())
    });
    if ok.is_none() {
        panic!(
            "{what}: `ekho dump flows` differs from `conntrack -L -o extended`\nkernel: {:#?}\nekho: {:#?}\n--- log:\n{}",
            last.0,
            last.1,
            d.log_text()
        );
    }
}

#[test]
fn dump_flows_prints_what_conntrack_lists() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns_marked();
    // Before the daemon: in its start-up dump. A replied UDP flow and an ICMP echo too.
    udp_flows(&ns, &[4000, 4001, 4002]);
    ns.run(&[
        "python3",
        "-c",
        "import socket\nr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nr.bind(('127.0.0.1', 5000))\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'q', ('127.0.0.1', 5000))\nd, a = r.recvfrom(10)\nr.sendto(b'a', a)\ns.recv(10)\n",
    ]);
    ns.run(&["ping", "-c1", "-W1", "127.0.0.1"]);
    let dir = TempDir::new();
    // Entries created while nothing listened send no events (nf_conntrack_events = 2): a
    // deletion of one is seen by the next refresh.
    let cfg = format!(
        "{}\n[flows]\nrefresh_s = 2\n",
        host_config(&ns.name, build(), false, null_plugin())
    );
    let d = Daemon::start(dir.path(), &cfg);
    let st = d.status()["conntrack"].clone();
    assert_eq!(st["state"], "running", "{st}");
    assert_same(&ns, &d, "after the start-up dump");

    // Events: new flows, then one deleted.
    udp_flows(&ns, &[4100, 4101]);
    assert_same(&ns, &d, "after NEW events");
    ns.sh("conntrack -D -p udp --dport 4100 2>/dev/null");
    assert_same(&ns, &d, "after conntrack -D (a DESTROY event)");
    ns.sh("conntrack -D -p udp --dport 4000 2>/dev/null");
    assert_same(
        &ns,
        &d,
        "after conntrack -D of an entry older than the daemon (a refresh)",
    );
    // Whether that deletion came as an event depends on whether anything listened to conntrack
    // events when the entry was created (another process may, anywhere on the machine): the
    // periodic re-dump sees it either way. It runs (refresh_s = 2).
    let refreshed = wait_for(Duration::from_secs(5), || {
        (d.status()["conntrack"]["refreshes"].as_u64().unwrap() >= 1).then_some(())
    });
    assert!(refreshed.is_some(), "{}", d.status()["conntrack"]);
    let st = d.status()["conntrack"].clone();
    assert!(st["events"].as_u64().unwrap() >= 3, "{st}");
    assert_eq!(
        st["flows"].as_u64().unwrap() as usize,
        kernel_lines(&ns).len(),
        "{st}"
    );
    assert_eq!(
        (st["refused"].clone(), st["overruns"].clone()),
        (0.into(), 0.into())
    );

    // The JSON form: conntrack's field names.
    let j = d.cli_json(&["dump", "flows", "--json", "--stats"]);
    let flows = j["flows"].as_array().unwrap();
    let replied = flows
        .iter()
        .find(|f| f["original"]["dport"] == 5000)
        .expect("the replied UDP flow");
    assert_eq!(
        (
            replied["family"].clone(),
            replied["proto"].clone(),
            replied["protonum"].clone()
        ),
        ("ipv4".into(), "udp".into(), 17.into())
    );
    assert_eq!(replied["reply"]["sport"], 5000);
    assert_eq!(replied["original"]["packets"], 1);
    assert!(!replied["flags"]
        .as_array()
        .unwrap()
        .contains(&Value::from("UNREPLIED")));
    let unreplied = flows
        .iter()
        .find(|f| f["original"]["dport"] == 4101)
        .unwrap();
    assert_eq!(unreplied["flags"], serde_json::json!(["UNREPLIED"]));
    let icmp = flows.iter().find(|f| f["proto"] == "icmp").unwrap();
    assert_eq!(
        (
            icmp["original"]["type"].clone(),
            icmp["reply"]["type"].clone()
        ),
        (8.into(), 0.into())
    );
    assert_eq!(j["stats"]["flows"].as_u64().unwrap() as usize, flows.len());
    // The text form's counters line.
    let out = d.cli(&["dump", "flows", "--stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("conntrack: running flows=")),
        "{text}"
    );
    // `ekho status` has its line.
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("conntrack: running flows="), "{text}");
}

#[test]
fn the_limit_refuses_and_counts_and_enabled_false_is_a_status_line() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns_marked();
    udp_flows(&ns, &[4000, 4001, 4002]);
    let dir = TempDir::new();
    let cfg = format!(
        "{}\n[flows]\nlimit = 2\nrefresh_s = 1\n",
        host_config(&ns.name, build(), false, null_plugin())
    );
    let d = Daemon::start(dir.path(), &cfg);
    let st = d.status()["conntrack"].clone();
    assert_eq!(
        (st["flows"].clone(), st["limit"].clone()),
        (2.into(), 2.into()),
        "{st}"
    );
    assert_eq!(st["refused"], 1, "{st}");
    udp_flows(&ns, &[4100]);
    let refused = wait_for(Duration::from_secs(5), || {
        let st = d.status()["conntrack"].clone();
        (st["refused"] == 2).then_some(st)
    });
    assert!(refused.is_some(), "{}", d.status()["conntrack"]);
    // Refreshes re-dump what does not fit: counted over the limit, not refused again.
    std::thread::sleep(Duration::from_millis(2500));
    let st = d.status()["conntrack"].clone();
    assert!(st["refreshes"].as_u64().unwrap() >= 2, "{st}");
    assert_eq!(
        (st["refused"].clone(), st["over_limit"].clone()),
        (2.into(), 2.into()),
        "{st}"
    );
    assert_eq!(
        d.cli_json(&["dump", "flows", "--json"])["flows"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    drop(d);

    let dir = TempDir::new();
    let cfg = format!(
        "{}\n[flows]\nenabled = false\n",
        host_config(&ns.name, build(), false, null_plugin())
    );
    let d = Daemon::start(dir.path(), &cfg);
    let st = d.status()["conntrack"].clone();
    assert_eq!(st["state"], "disabled", "{st}");
    assert!(d.cli_json(&["dump", "flows", "--json"])["flows"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// `(proto, original dport)` of the candidates in `ekho dump flows --json`.
fn candidates(d: &Daemon) -> BTreeSet<(String, u64)> {
    d.cli_json(&["dump", "flows", "--json"])["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["candidate"] == true)
        .map(|f| {
            (
                f["proto"].as_str().unwrap().to_string(),
                f["original"]["dport"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_offload_policy_picks_the_candidates() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns_marked();
    let _tcp = held_tcp(&ns, 5201);
    // UDP 5000: replied, and a packet more than 2 s after the first: ASSURED. UDP 5300: replied
    // once (not assured). UDP 4000: unreplied. An ICMP echo.
    ns.run(&[
        "python3",
        "-c",
        "import socket, time\n\
         r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 5000))\n\
         q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.bind(('127.0.0.1', 5300))\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for x in (r, q):\n    s.sendto(b'q', x.getsockname()); d, a = x.recvfrom(10); x.sendto(b'a', a); s.recv(10)\n\
         time.sleep(2.5)\n\
         s.sendto(b'q', ('127.0.0.1', 5000)); r.recvfrom(10)\n\
         s.sendto(b'x', ('127.0.0.1', 4000))\n",
    ]);
    ns.run(&["ping", "-c1", "-W1", "127.0.0.1"]);
    let listed = ns.sh("conntrack -L 2>/dev/null");
    assert!(
        listed
            .lines()
            .any(|l| l.contains("dport=5000") && l.contains("[ASSURED]")),
        "UDP 5000 should be assured by now:\n{listed}"
    );
    let dir = TempDir::new();
    let d = Daemon::start(
        dir.path(),
        &host_config(&ns.name, build(), false, null_plugin()),
    );
    let want: BTreeSet<(String, u64)> =
        [("tcp".to_string(), 5201), ("udp".to_string(), 5000)].into();
    assert_eq!(candidates(&d), want, "the default policy");
    assert_eq!(d.status()["conntrack"]["candidates"], 2);
    drop(d);

    // Policies of two tables: UDP to 5000-5100 or 4000, and TCP marked 0x1? (the TCP flow is
    // marked 0x13 by the nftables rule), resp. 0x2? (no TCP flow).
    let policy = |mark: &str| {
        format!(
            "{}\n[flows]\n[[flows.offload]]\nprotocols = [\"udp\"]\ndports = [\"5000-5100\", 4000]\n[[flows.offload]]\nprotocols = [\"tcp\"]\nmark = \"{mark}\"\n",
            host_config(&ns.name, build(), false, null_plugin())
        )
    };
    let dir = TempDir::new();
    let d = Daemon::start(dir.path(), &policy("0x10/0xf0"));
    assert_eq!(candidates(&d), want, "udp 4000 is not assured");
    drop(d);
    let dir = TempDir::new();
    let d = Daemon::start(dir.path(), &policy("0x20/0xf0"));
    let udp: BTreeSet<(String, u64)> = [("udp".to_string(), 5000)].into();
    assert_eq!(candidates(&d), udp, "the TCP flow's mark does not match");
}

#[test]
fn a_bad_offload_policy_stops_the_daemon_naming_file_line_and_column() {
    if conntrack_unavailable() {
        return;
    }
    let ns = Netns::named("ekflows");
    let dir = TempDir::new();
    let cfg = format!(
        "{}\n[flows]\n[[flows.offload]]\nprotocols = [\"udp\"]\ndports = [\"90-80\"]\n",
        host_config(&ns.name, build(), false, null_plugin())
    );
    let mut d = Daemon::spawn(dir.path(), &cfg);
    let st = wait_for(Duration::from_secs(10), || {
        d.child.as_mut().unwrap().try_wait().unwrap()
    })
    .expect("the daemon should refuse the config");
    d.child = None;
    assert!(!st.success());
    let log = d.log_text();
    assert!(
        log.contains(&d.config.display().to_string())
            && log.contains("column")
            && log.contains("port range \"90-80\" is empty"),
        "{log}"
    );
    let line = cfg.lines().position(|l| l.starts_with("dports")).unwrap() + 1;
    assert!(log.contains(&format!("line {line}")), "{log}");
}
