//! Conntrack flows dispatched to plugins (API 1.2), through the real daemon in private
//! namespaces with real conntrack entries: only offload candidates reach a plugin that takes
//! flows, none reach one without the capability; `conntrack -D` and a flush remove them from
//! the plugin (measured); a flow handed back leaves the plugin and is not offered again; the
//! keep-alive keeps an entry past its idle timeout while the plugin reports it active and lets
//! it expire after; `ekho dump flows --stats` shows the plugin's counters beside the kernel's.

use ekho_tests::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// The flow records (`kind` `flow`) of a recorder's events file.
fn flow_events(path: &Path) -> Vec<Value> {
    read_events(path)
        .into_iter()
        .filter(|e| e["kind"] == "flow")
        .collect()
}

/// Whether the last record of the flow to `dport` is `op`.
fn last_op_is(path: &Path, dport: u64, op: &str) -> bool {
    flow_events(path)
        .iter()
        .rev()
        .find(|e| e["object"]["original"]["dport"] == dport)
        .is_some_and(|e| e["op"] == op)
}

fn recorder(name: &str, events: &Path, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\n{extra}\n",
        events.display()
    )
}

#[test]
fn candidates_reach_flow_plugins_only_and_leave_them_when_deleted_or_handed_back() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns();
    let dir = TempDir::new();
    let (evf, evr) = (
        dir.path().join("flows.jsonl"),
        dir.path().join("routes.jsonl"),
    );
    let release = dir.path().join("release");
    // No periodic re-dump: what reaches the plugin comes from the events.
    let cfg = format!(
        "{}\n[flows]\nrefresh_s = 0\n",
        host_config(
            &ns.name,
            build(),
            false,
            &format!(
                "{}{}",
                recorder(
                    "recflow",
                    &evf,
                    &format!("release_flows_path = \"{}\"", release.display())
                ),
                recorder("recroutes", &evr, "kinds = [\"link\", \"route\"]")
            )
        )
    );
    let d = Daemon::start(dir.path(), &cfg);
    // Three established TCP flows (candidates), an unreplied UDP one (not); in another
    // namespace, a flow the daemon does not mirror.
    let _a = held_tcp(&ns, 5201);
    let _b = held_tcp(&ns, 5202);
    let c = held_tcp(&ns, 5203);
    let other = tracked_netns();
    let _o = held_tcp(&other, 5999);
    ns.run(&[
        "python3",
        "-c",
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 4000))\n",
    ]);
    let got = wait_for(Duration::from_secs(10), || {
        [5201, 5202, 5203]
            .iter()
            .all(|&p| last_op_is(&evf, p, "add"))
            .then_some(())
    });
    assert!(
        got.is_some(),
        "the TCP flows should reach recflow: {:?}\n{}",
        flow_events(&evf),
        d.log_text()
    );
    d.settle();
    let evs = flow_events(&evf);
    assert!(
        evs.iter()
            .all(|e| e["object"]["proto"] == "tcp" && e["object"]["flags"][0] == "ASSURED"),
        "only candidates reach the plugin: {evs:?}"
    );
    assert!(
        flow_events(&evr).is_empty(),
        "a plugin without the flow capability got flows"
    );
    assert!(read_events(&evr).iter().any(|e| e["kind"] == "route"));
    assert!(
        !evs.iter().any(|e| e["object"]["original"]["dport"] == 5999),
        "a flow of another namespace reached the plugin"
    );
    let p = d.plugin("recflow");
    assert_eq!(p["flows_offloaded"], 3, "{p}");

    // No longer a candidate: the connection closes (FIN: TIME_WAIT).
    drop(c);
    let closed = wait_for(Duration::from_secs(5), || {
        last_op_is(&evf, 5203, "remove").then_some(())
    });
    assert!(closed.is_some(), "{:?}", flow_events(&evf));
    assert!(d.plugin("recroutes")["flows_offloaded"].is_null());

    // conntrack -D: the plugin is told at once (an event, no re-dump runs).
    let t0 = Instant::now();
    ns.run(&["conntrack", "-D", "-p", "tcp", "--dport", "5202"]);
    let ran = t0.elapsed();
    let gone = wait_for_fast(Duration::from_secs(5), || last_op_is(&evf, 5202, "remove"));
    let took = t0.elapsed();
    assert!(
        gone,
        "conntrack -D did not reach the plugin: {:?}",
        flow_events(&evf)
    );
    // The entry is deleted while `ip netns exec conntrack -D` runs: the latency lies between
    // what was seen after it returned and the whole.
    println!(
        "conntrack -D to the plugin's remove: {:?} after conntrack returned, {took:?} in all (conntrack ran {ran:?})",
        took - ran
    );
    assert!(
        took < Duration::from_secs(1),
        "removal took {took:?}: it should come from the DESTROY event"
    );

    // Handed back: it leaves the plugin and is not offered again while the entry lives.
    std::fs::write(&release, b"").unwrap();
    let back = wait_for(Duration::from_secs(5), || {
        last_op_is(&evf, 5201, "remove").then_some(())
    });
    assert!(back.is_some(), "{:?}\n{}", flow_events(&evf), d.log_text());
    assert_eq!(d.status()["conntrack"]["released"], 1);
    let listed = ns.sh("conntrack -L -p tcp --dport 5201 2>/dev/null");
    assert!(listed.contains("ESTABLISHED"), "{listed}");
    // The connection carries on (the kernel sees its packets): no offer again.
    ns.run(&[
        "python3",
        "-c",
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 4001))\n",
    ]);
    d.settle();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(last_op_is(&evf, 5201, "remove"), "{:?}", flow_events(&evf));
    assert_eq!(
        d.plugin("recflow")["flows_offloaded"].as_u64().unwrap_or(0),
        0
    );
}

/// Polls `f` every 2 ms (for latency measurements) until it holds or `timeout` passes.
fn wait_for_fast(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn a_flush_removes_every_flow_from_the_plugin() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns();
    let dir = TempDir::new();
    let ev = dir.path().join("flows.jsonl");
    let cfg = format!(
        "{}\n[flows]\nrefresh_s = 0\n",
        host_config(&ns.name, build(), false, &recorder("rec", &ev, ""))
    );
    let d = Daemon::start(dir.path(), &cfg);
    let conns: Vec<Background> = (0..4).map(|i| held_tcp(&ns, 5300 + i)).collect();
    let all = |op: &str| (0..4).all(|i| last_op_is(&ev, 5300 + i, op));
    assert!(
        wait_for(Duration::from_secs(10), || all("add").then_some(())).is_some(),
        "{:?}",
        flow_events(&ev)
    );
    let t0 = Instant::now();
    ns.run(&["conntrack", "-F"]);
    assert!(
        wait_for_fast(Duration::from_secs(5), || all("remove")),
        "{:?}\n{}",
        flow_events(&ev),
        d.log_text()
    );
    println!(
        "conntrack -F of 4 offloaded flows to their removal in the plugin: {:?}",
        t0.elapsed()
    );
    drop(conns);
}

#[test]
fn the_keep_alive_holds_an_active_flow_past_its_timeout_and_lets_it_expire_after() {
    if conntrack_unavailable() {
        return;
    }
    let ns = tracked_netns();
    // An assured UDP entry times out 4 s after its last packet.
    ns.run(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_udp_timeout_stream=4",
    ]);
    let dir = TempDir::new();
    let ev = dir.path().join("flows.jsonl");
    let active = dir.path().join("active");
    std::fs::write(&active, b"").unwrap();
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &recorder(
            "rec",
            &ev,
            &format!("flows_active_path = \"{}\"", active.display()),
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    // UDP 5000: replied, and a packet more than 2 s after the first: ASSURED.
    ns.run(&[
        "python3",
        "-c",
        "import socket, time\n\
         r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 5000))\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto(b'q', ('127.0.0.1', 5000)); d, a = r.recvfrom(10); r.sendto(b'a', a); s.recv(10)\n\
         time.sleep(2.5)\n\
         s.sendto(b'q', ('127.0.0.1', 5000)); r.recvfrom(10)\n",
    ]);
    let last_packet = Instant::now();
    let listed = || ns.sh("conntrack -L -p udp --dport 5000 2>/dev/null");
    assert!(listed().contains("ASSURED"), "{}", listed());
    assert!(
        wait_for(Duration::from_secs(5), || last_op_is(&ev, 5000, "add")
            .then_some(()))
        .is_some(),
        "{:?}\n{}",
        flow_events(&ev),
        d.log_text()
    );
    // Idle in the kernel for 2.5 x its timeout, alive while the plugin reports it active.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(last_packet.elapsed()));
    assert!(
        listed().contains("dport=5000"),
        "the entry expired although the plugin reports it active:\n{}",
        d.log_text()
    );
    let st = d.status()["conntrack"].clone();
    assert!(st["kept_alive"].as_u64().unwrap() >= 3, "{st}");
    // The operator changes the timeout: the keep-alive follows, up and back down (the entry's
    // timeout as `conntrack -L` shows it, third column).
    let timeout = || -> Option<u64> {
        let l = listed();
        let line = l.lines().find(|l| l.contains("dport=5000"))?;
        line.split_whitespace().nth(2)?.parse().ok()
    };
    for (value, holds) in [
        (30u64, (|t: u64| t > 10) as fn(u64) -> bool),
        (4, |t| t <= 4),
    ] {
        ns.run(&[
            "sysctl",
            "-qw",
            &format!("net.netfilter.nf_conntrack_udp_timeout_stream={value}"),
        ]);
        let followed = wait_for(Duration::from_secs(5), || timeout().filter(|t| holds(*t)));
        assert!(
            followed.is_some(),
            "the keep-alive follows nf_conntrack_udp_timeout_stream={value}: timeout {:?}",
            timeout()
        );
    }
    // The plugin's counters beside the kernel's.
    let dump = d.cli_json(&["dump", "flows", "--stats", "--json"]);
    let f = dump["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["original"]["dport"] == 5000)
        .cloned()
        .unwrap_or_else(|| panic!("{dump}"));
    let o = &f["offload"][0];
    assert_eq!(o["plugin"], "rec", "{f}");
    assert!(o["original"]["packets"].as_u64().unwrap() >= 3, "{f}");
    assert!(o["reply"]["last_used"].as_u64().unwrap() <= 2, "{f}");
    let text = String::from_utf8_lossy(&d.cli(&["dump", "flows", "--stats"]).stdout).to_string();
    assert!(text.contains("[OFFLOAD rec original: packets="), "{text}");

    // The plugin stops seeing packets: the kernel's timeout runs again.
    std::fs::remove_file(&active).unwrap();
    let t0 = Instant::now();
    let expired = wait_for(Duration::from_secs(15), || {
        (!listed().contains("dport=5000")).then_some(())
    });
    assert!(
        expired.is_some(),
        "the entry outlived the plugin's activity: {}",
        listed()
    );
    println!(
        "expired {:?} after the plugin went idle (timeout 4 s)",
        t0.elapsed()
    );
    assert!(
        wait_for(Duration::from_secs(15), || last_op_is(&ev, 5000, "remove")
            .then_some(()))
        .is_some(),
        "the expired flow should leave the plugin: {:?}",
        flow_events(&ev)
    );
}
