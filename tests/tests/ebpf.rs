//! Kernel notifier events captured with eBPF reach plugins through the daemon, on the `ebpf`
//! stream, filtered to the mirrored namespace.

use ekho_tests::*;
use serde_json::Value;
use std::time::Duration;

#[test]
fn neighbour_and_fdb_events_reach_the_recorder_from_our_namespace_only() {
    let ns = Netns::new();
    let other = Netns::new();
    for n in [&ns, &other] {
        n.ip_batch(
            "link add a0 type veth peer name a1
link add br0 type bridge
link set a1 master br0
link set a0 up
link set a1 up
link set br0 up
addr add 10.1.0.1/24 dev a0
",
        );
    }
    let dir = TempDir::new();
    let events = dir.path().join("events.jsonl");
    let cfg = host_config(
        &ns.name,
        build(),
        true,
        &format!(
            "[[plugins]]\nname = \"recorder\"\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"link\"]\nnotifiers = [\"neighbour\", \"bridge_fdb\"]\n",
            events.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    let st = d.status();
    if st["ebpf"]["state"] != "running" {
        println!("SKIP: eBPF source not running here: {}", st["ebpf"]);
        return;
    }
    // Busy work in the other namespace, with addresses and MACs we can recognise.
    for i in 0..20 {
        other.ip(&[
            "neigh",
            "replace",
            &format!("10.1.0.{}", 100 + i),
            "lladdr",
            "02:00:00:00:99:99",
            "dev",
            "a0",
        ]);
    }
    other.bridge(&[
        "fdb",
        "add",
        "02:00:00:00:99:98",
        "dev",
        "a1",
        "master",
        "static",
    ]);
    // Ours.
    ns.ip(&[
        "neigh",
        "add",
        "10.1.0.2",
        "lladdr",
        "02:00:00:00:01:02",
        "dev",
        "a0",
        "nud",
        "permanent",
    ]);
    ns.bridge(&[
        "fdb",
        "add",
        "02:00:00:00:0a:01",
        "dev",
        "a1",
        "master",
        "static",
    ]);
    let ev = wait_for(Duration::from_secs(10), || {
        let ev: Vec<Value> = read_events(&events)
            .into_iter()
            .filter(|e| e["stream"] == "ebpf")
            .collect();
        let neigh = ev
            .iter()
            .any(|e| e["object"]["addr"] == "10.1.0.2" && e["object"]["dev"] == "a0");
        let fdb = ev
            .iter()
            .any(|e| e["object"]["lladdr"] == "02:00:00:00:0a:01");
        (neigh && fdb).then_some(ev)
    })
    .unwrap_or_else(|| {
        panic!(
            "no neighbour+fdb events; got:\n{}",
            std::fs::read_to_string(&events).unwrap()
        )
    });
    // neigh_create comes first (no link-layer address yet), then neigh_update with it.
    let ours: Vec<&Value> = ev
        .iter()
        .filter(|e| e["object"]["addr"] == "10.1.0.2")
        .collect();
    let n = ours
        .iter()
        .find(|e| e["object"]["lladdr"] == "02:00:00:00:01:02")
        .unwrap_or_else(|| panic!("no neighbour event with the MAC: {ours:#?}"));
    assert_eq!(n["op"], "event");
    assert_eq!(n["kind"], "neighbour");
    assert_eq!(n["object"]["state"][0], "PERMANENT", "{n}");
    assert!(n["object"]["timestamp_ns"].as_u64().unwrap() > 0);
    let f = ev
        .iter()
        .find(|e| e["object"]["lladdr"] == "02:00:00:00:0a:01")
        .unwrap();
    assert_eq!(f["kind"], "bridge_fdb");
    assert_eq!(f["object"]["dev"], "a1");
    // Nothing from the other namespace.
    for e in &ev {
        let o = &e["object"];
        assert!(
            o["lladdr"] != "02:00:00:00:99:99" && o["lladdr"] != "02:00:00:00:99:98",
            "leaked: {e}"
        );
    }
    // Hooks are reported.
    let hooks = st["ebpf"]["hooks"].as_array().unwrap();
    assert!(hooks.iter().any(|h| h["state"] == "live"), "{hooks:?}");
    assert!(st["plugins"][0]["events"].as_u64().is_some());
    status_names_fentry_or_its_fallbacks(&d, hooks);
}

/// `ekho status` (JSON and text) says how each notifier chain is hooked on this kernel:
/// - Debian's 6.1 (the VM suite) allows fentry: all five fentry hooks live;
/// - a kernel that refuses fentry (the 6.18 development kernel, EPERM): no fentry hook live, the
///   netevent chain fallen back to the neighbour tracepoints, the others unavailable or fallen
///   back, each with the kernel's reason.
fn status_names_fentry_or_its_fallbacks(d: &Daemon, hooks: &[Value]) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let kernel = kernel.trim();
    let hook = |f: &str| {
        hooks
            .iter()
            .find(|h| h["name"] == format!("fentry/{f}"))
            .unwrap_or_else(|| panic!("no fentry/{f} in status: {hooks:?}"))
    };
    let text = String::from_utf8(d.cli(&["status"]).stdout).unwrap();
    let line = |f: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("fentry/{f} ")))
            .unwrap_or_else(|| panic!("no fentry/{f} line in `ekho status`:\n{text}"))
            .to_string()
    };
    if kernel.starts_with("6.1.") && kernel.ends_with("-amd64") {
        for f in FENTRY_TARGETS {
            assert_eq!(hook(f)["state"], "live", "kernel {kernel}: {}", hook(f));
            assert!(line(f).trim_end().ends_with(" live"), "{}", line(f));
        }
        return;
    }
    if FENTRY_TARGETS.iter().any(|f| hook(f)["state"] == "live") {
        // Another kernel that allows fentry: the chains it has are all live.
        for f in FENTRY_TARGETS {
            assert!(
                hook(f)["state"] == "live"
                    || hook(f)["reason"]
                        .as_str()
                        .unwrap()
                        .contains("not in this kernel's BTF"),
                "kernel {kernel}: {}",
                hook(f)
            );
        }
        return;
    }
    let ne = hook("call_netevent_notifiers");
    assert_eq!(ne["state"], "fallen_back", "kernel {kernel}: {ne}");
    assert_eq!(
        ne["to"], "tp_btf/neigh_update, tp_btf/neigh_update_done",
        "{ne}"
    );
    assert!(
        line("call_netevent_notifiers").contains("fallen_back -> tp_btf/neigh_update"),
        "{}",
        line("call_netevent_notifiers")
    );
    for f in FENTRY_TARGETS {
        let h = hook(f);
        assert_ne!(h["state"], "live", "kernel {kernel}: {h}");
        let reason = h["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("fentry refused by this kernel")
                || reason.contains("not in this kernel's BTF"),
            "kernel {kernel}: {h}"
        );
        assert!(line(f).contains(reason), "{}", line(f));
    }
}
