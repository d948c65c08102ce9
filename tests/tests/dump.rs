//! `ekho dump --json` and the recorder's view, compared with `ip -j` / `bridge -j` in a private
//! namespace, before and after changes (including ones the kernel makes without a notification).

use ekho_mirror::testing::iproute2::{compare, kernel_state, normalize, COMPARED};
use ekho_plugin_api::ObjectKind;
use ekho_tests::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A dump-shaped document (keyed by plural kind) in the normalizer's canonical form.
fn normalized(doc: &Value) -> BTreeMap<ObjectKind, Vec<Value>> {
    let names: HashMap<u64, String> = doc["links"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["ifindex"].as_u64().unwrap(),
                l["ifname"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut m = BTreeMap::new();
    for k in COMPARED {
        let list: Vec<Value> = doc[k.plural()]
            .as_array()
            .into_iter()
            .flatten()
            .cloned()
            .map(|mut v| {
                // The recorder's view names a same-netns peer by index; iproute2 by name.
                if *k == ObjectKind::Link && v.get("link_netnsid").is_none() {
                    if let Some(i) = v.get("link_index").and_then(Value::as_u64) {
                        let o = v.as_object_mut().unwrap();
                        o.remove("link_index");
                        o.insert(
                            "link".into(),
                            names.get(&i).cloned().unwrap_or_default().into(),
                        );
                    }
                }
                v
            })
            .filter_map(|v| normalize(*k, v))
            .collect();
        m.insert(*k, list);
    }
    m
}

/// Compares at a quiet point. One kernel state is visible in dumps before it is notified: an
/// IPv6 address stays `tentative` without RTM_NEWADDR until duplicate address detection ends
/// (about a second), so a difference may persist that long; any longer is a divergence. A
/// comparison is not atomic (the kernel's kinds are dumped one command after the other, then the
/// daemon is asked): a difference past the deadline counts once the next comparison finds it too
/// (one made while the kernel changed, e.g. an FDB entry learned from background traffic, does
/// not repeat), or past three deadlines of continuous change.
fn assert_same(step: &str, ns: &Netns, d: &Daemon, view: &std::path::Path) {
    d.settle();
    let start = std::time::Instant::now();
    let deadline = start + std::time::Duration::from_secs(5);
    let mut last: Option<(Vec<String>, Vec<String>)> = None;
    loop {
        let kernel = kernel_state(Some(&ns.name)).unwrap();
        let dump = d.cli_json(&["dump", "--json"]);
        let v: Value = read_json(view);
        let d1 = compare(&kernel, &normalized(&dump));
        let d2 = compare(&kernel, &normalized(&v));
        if d1.is_empty() && d2.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let same = last.as_ref() == Some(&(d1.clone(), d2.clone()));
        if now > deadline && (same || now > start + std::time::Duration::from_secs(15)) {
            // The daemon's log goes with a failure: it says how the plugin was synced.
            let log = d.log_text();
            assert!(
                d1.is_empty(),
                "{step}: `ekho dump --json` differs from the kernel:\n{}\n--- daemon log:\n{log}",
                d1.join("\n")
            );
            assert!(
                d2.is_empty(),
                "{step}: the recorder's view differs from the kernel:\n{}\n--- daemon log:\n{log}",
                d2.join("\n")
            );
        }
        last = Some((d1, d2));
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn dump_and_recorder_view_equal_the_kernel() {
    let ns = Netns::new();
    let dir = TempDir::new();
    let view = dir.path().join("view.json");
    // A router-ish topology: two veth pairs, a bridge with a port, a VXLAN, addresses, routes of
    // several types and tables, multipath, nexthop objects and a group, neighbours, FDB, rules.
    ns.ip_batch(
        "link add a0 type veth peer name a1
link add b0 type veth peer name b1
link add br0 type bridge
link set a1 master br0
link set a0 up
link set a1 up
link set b0 up
link set b1 up
link set br0 up
addr add 10.1.0.1/24 dev br0
addr add 10.2.0.1/24 dev b0
addr add 2001:db8:2::1/64 dev b0 nodad
link add vx0 type vxlan id 42 dstport 4789 local 10.2.0.1 dev b0
link set vx0 up
",
    );
    // Routes and nexthops need the carrier, which the kernel raises asynchronously (the
    // bridge's, once its port forwards): on a loaded machine it can lag the `link set up`.
    for dev in ["br0", "b0"] {
        let up = wait_for(Duration::from_secs(10), || {
            let l = ns.ip_json(&["link", "show", dev]);
            l[0]["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "LOWER_UP"))
                .then_some(())
        });
        assert!(up.is_some(), "{dev} has no carrier after 10 s");
    }
    ns.ip_batch(
        "route add 10.50.0.0/16 via 10.1.0.2
route add 10.51.0.0/16 nexthop via 10.1.0.2 weight 2 nexthop via 10.2.0.2 weight 1
route add blackhole 10.52.0.0/16
route add unreachable 10.53.0.0/16 table 100
route add prohibit 10.54.0.0/16 table 100
route add throw 10.55.0.0/16 table 100
route add 10.56.0.0/16 via 10.2.0.2 metric 50 table 200
nexthop add id 1 via 10.1.0.2 dev br0
nexthop add id 2 via 10.2.0.2 dev b0
nexthop add id 10 group 1/2
route add 10.57.0.0/16 nhid 10
route add 2001:db8:99::/48 via 2001:db8:2::2
neigh add 10.1.0.2 lladdr 02:00:00:00:01:02 dev br0 nud permanent
neigh add 10.2.0.2 lladdr 02:00:00:00:02:02 dev b0 nud reachable
rule add from 10.9.0.0/16 table 100 priority 100
rule add iif b0 table 200 priority 200
rule add ipproto tcp dport 80 table 100 priority 300
rule add ipproto tcp dport 443 table 100 priority 300
rule add uidrange 100-200 table 200 priority 301
",
    );
    ns.bridge(&[
        "fdb",
        "add",
        "02:00:00:00:0a:01",
        "dev",
        "a1",
        "master",
        "static",
    ]);
    ns.bridge(&[
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "vx0",
        "dst",
        "10.2.0.9",
    ]);
    let cfg = host_config(
        &ns.name,
        build(),
        true,
        &format!(
            "[[plugins]]\nname = \"recorder\"\n[plugins.config]\nevents_path = \"/dev/null\"\nview_path = \"{}\"\n",
            view.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    assert_same("initial replay", &ns, &d, &view);

    // Notified changes.
    ns.ip(&["route", "replace", "10.50.0.0/16", "via", "10.2.0.2"]);
    ns.ip(&["addr", "add", "10.3.0.1/24", "dev", "b0"]);
    ns.ip(&[
        "neigh",
        "replace",
        "10.2.0.2",
        "lladdr",
        "02:00:00:00:02:03",
        "dev",
        "b0",
    ]);
    assert_same("after notified changes", &ns, &d, &view);

    // Silent ones: a link going down flushes IPv4 routes and nexthops without telling anyone.
    ns.ip(&["link", "set", "b0", "down"]);
    assert_same("after b0 down", &ns, &d, &view);
    ns.ip(&["link", "set", "b0", "up"]);
    ns.ip(&["nexthop", "del", "id", "1"]);
    assert_same("after nexthop del", &ns, &d, &view);
    ns.ip(&["link", "del", "a0"]);
    assert_same("after a0 deleted", &ns, &d, &view);

    // The text form (its `# KIND (N)` headers printed before the objects, from the lengths the
    // daemon sends first): every kind the JSON has, as many lines after each header as it
    // says, and as many routes as the JSON lists (nothing changes them any more).
    let doc = d.cli_json(&["dump", "--json"]);
    let out = d.cli(&["dump"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut kinds: Vec<(String, usize, usize)> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("# ") {
            Some(h) => {
                let (k, n) = h.split_once(" (").unwrap_or_else(|| panic!("{line}"));
                let n: usize = n.trim_end_matches(')').parse().unwrap();
                kinds.push((k.to_string(), n, 0));
            }
            None => kinds.last_mut().unwrap_or_else(|| panic!("{text}")).2 += 1,
        }
    }
    let names: Vec<&str> = kinds.iter().map(|(k, _, _)| k.as_str()).collect();
    let want: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(names, want, "{text}");
    for (k, n, lines) in &kinds {
        assert_eq!(
            n, lines,
            "{k}: header says {n}, {lines} lines follow:\n{text}"
        );
    }
    let routes = kinds.iter().find(|(k, _, _)| k == "routes").unwrap().1;
    assert_eq!(routes, doc["routes"].as_array().unwrap().len(), "{text}");
}

#[test]
fn monitor_streams_changes_as_applied() {
    let ns = Netns::new();
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "a1"]);
    ns.ip(&["link", "set", "a0", "up"]);
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "a0"]);
    let dir = TempDir::new();
    let cfg = host_config(&ns.name, build(), false, "");
    let d = Daemon::start(dir.path(), &cfg);
    let mut child = std::process::Command::new(ekho_bin())
        .args(["--config", d.config.to_str().unwrap(), "monitor", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until the monitor streams: a probe route shows on it (a fixed wait was too short for
    // the CLI's start in an emulated VM).
    let ready_by = std::time::Instant::now() + std::time::Duration::from_secs(30);
    'ready: for i in 0.. {
        assert!(
            std::time::Instant::now() < ready_by,
            "ekho monitor showed no probe route in 30 s"
        );
        ns.ip(&[
            "route",
            "add",
            &format!("10.78.{i}.0/24"),
            "via",
            "10.1.0.2",
        ]);
        while let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
            if l.contains("10.78.") {
                break 'ready;
            }
        }
    }
    ns.ip(&["route", "add", "10.77.0.0/16", "via", "10.1.0.2"]);
    ns.ip(&["route", "del", "10.77.0.0/16"]);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&l).unwrap();
            if v["object"]["dst"] == "10.77.0.0/16" {
                seen.push(v["op"].as_str().unwrap().to_string());
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, ["add", "remove"]);
}
