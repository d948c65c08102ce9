//! `ekho dump qdiscs|classes|filters|chains|actions`, compared with tc's own output in a private
//! namespace: the JSON against `tc -j` field by field (the fields ekho renders:
//! `ekho_mirror::tcshow`), the text against tc's wording, before and after changes the kernel
//! makes without a notification (a qdisc's filters, a device's tc state).

use ekho_tests::*;
use serde_json::{json, Map, Value};
use std::time::Duration;

fn tc_json(ns: &Netns, args: &str) -> Vec<Value> {
    let out = std::process::Command::new("tc")
        .args(["-n", &ns.name, "-j"])
        .args(args.split_whitespace())
        .output()
        .expect("tc");
    assert!(
        out.status.success(),
        "tc -j {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() {
        return vec![];
    }
    match serde_json::from_str(&s).unwrap_or_else(|e| panic!("tc -j {args}: {e}: {s}")) {
        Value::Array(a) => a,
        _ => vec![],
    }
}

fn tc(ns: &Netns, cmd: &str) {
    let out = std::process::Command::new("tc")
        .args(["-n", &ns.name])
        .args(cmd.split_whitespace())
        .output()
        .expect("tc");
    assert!(
        out.status.success(),
        "tc {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `v` reduced to `keys` (and, under `options`, `option_keys`; under its `actions`, `action_keys`).
fn project(v: &Value, keys: &[&str]) -> Value {
    const OPTIONS: &[&str] = &["fh", "ht_divisor", "key_ht", "bkt", "match", "actions"];
    const ACTION: &[&str] = &[
        "order",
        "kind",
        "index",
        "ref",
        "bind",
        "mirred_action",
        "direction",
        "to_dev",
        "control_action",
    ];
    let mut m = Map::new();
    for k in keys {
        let Some(x) = v.get(*k) else { continue };
        let x = match *k {
            "options" => {
                let mut o = Map::new();
                for ok in OPTIONS {
                    if let Some(y) = x.get(*ok) {
                        let y = if *ok == "actions" {
                            Value::Array(
                                y.as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|a| project(a, ACTION))
                                    .collect(),
                            )
                        } else {
                            y.clone()
                        };
                        o.insert(ok.to_string(), y);
                    }
                }
                Value::Object(o)
            }
            _ => x.clone(),
        };
        m.insert(k.to_string(), x);
    }
    Value::Object(m)
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.to_string());
    v
}

const QDISC: &[&str] = &[
    "kind",
    "handle",
    "dev",
    "root",
    "parent",
    "ingress_block",
    "egress_block",
];
const FILTER: &[&str] = &["protocol", "pref", "kind", "chain", "options"];

/// Compares every list once the daemon is quiet; returns the differences.
fn differences(ns: &Netns, d: &Daemon) -> Vec<String> {
    d.settle();
    let mut out = Vec::new();
    let ekho = |what: &str| -> Vec<Value> {
        d.cli_json(&["dump", what, "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    // Qdiscs.
    let k = sorted(
        tc_json(ns, "-d qdisc show")
            .iter()
            .map(|q| project(q, QDISC))
            .collect(),
    );
    let e = sorted(ekho("qdiscs").iter().map(|q| project(q, QDISC)).collect());
    if k != e {
        out.push(format!("qdiscs: tc {k:#?}\nekho {e:#?}"));
    }
    // Filters, per block as tc lists them.
    let ef = ekho("filters");
    let mut targets: Vec<(Value, String)> = Vec::new();
    for q in tc_json(ns, "qdisc show") {
        let dev = q["dev"].as_str().unwrap_or_default().to_string();
        if q["parent"] == "ffff:fff1" {
            for (hook, block) in [("ingress", "ingress_block"), ("egress", "egress_block")] {
                if hook == "egress" && q["kind"] != "clsact" {
                    continue;
                }
                match q[block].as_u64() {
                    Some(b) => {
                        targets.push((json!({"block": b}), format!("filter show block {b}")))
                    }
                    None => targets.push((
                        json!({"dev": dev, "parent": hook}),
                        format!("-d filter show dev {dev} {hook}"),
                    )),
                }
            }
        } else if q["handle"] != "0:" {
            let h = q["handle"].as_str().unwrap().to_string();
            targets.push((
                json!({"dev": dev, "parent": h}),
                format!("-d filter show dev {dev} parent {h}"),
            ));
        }
    }
    targets.sort_by_key(|t| t.1.clone());
    targets.dedup_by_key(|t| t.1.clone());
    let mut listed = 0;
    for (at, cmd) in &targets {
        let k = sorted(
            tc_json(ns, cmd)
                .iter()
                .map(|f| project(f, FILTER))
                .collect(),
        );
        let e = sorted(
            ef.iter()
                .filter(|f| {
                    at.as_object()
                        .unwrap()
                        .iter()
                        .all(|(key, v)| f.get(key) == Some(v))
                })
                .map(|f| project(f, FILTER))
                .collect(),
        );
        listed += e.len();
        if k != e {
            out.push(format!("filters of {at}: tc {k:#?}\nekho {e:#?}"));
        }
    }
    if listed != ef.len() {
        out.push(format!(
            "ekho lists {} filters, {listed} of them where tc has a block",
            ef.len()
        ));
    }
    // Actions.
    const ACT: &[&str] = &[
        "kind",
        "index",
        "ref",
        "bind",
        "mirred_action",
        "direction",
        "to_dev",
    ];
    let k = sorted(
        tc_json(ns, "actions list action mirred")
            .iter()
            .filter_map(|x| x["actions"].as_array())
            .flatten()
            .map(|a| project(a, ACT))
            .collect(),
    );
    let e = sorted(ekho("actions").iter().map(|a| project(a, ACT)).collect());
    if k != e {
        out.push(format!("actions: tc {k:#?}\nekho {e:#?}"));
    }
    out
}

fn assert_same(step: &str, ns: &Netns, d: &Daemon) {
    // A comparison is not atomic, and the kernel releases an action's binding after an RCU
    // grace period: a difference counts once it lasts.
    let mut last = Vec::new();
    for _ in 0..40 {
        last = differences(ns, d);
        if last.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{step}: ekho dump differs from tc:\n{}", last.join("\n"));
}

#[test]
fn tc_dumps_equal_tc() {
    let ns = Netns::new();
    ns.ip_batch(
        "link add a0 type veth peer name a1
link add b0 type veth peer name b1
link set a0 up
link set a1 up
link set b0 up
link set b1 up
",
    );
    for cmd in [
        "qdisc add dev a0 clsact",
        "filter add dev a0 ingress pref 5 protocol ip u32 match ip dst 10.0.0.1/32 action mirred egress redirect dev b0",
        "filter add dev a0 egress pref 6 u32 match ip src 10.9.0.0/16",
        "qdisc add dev b0 root handle 1: htb default 10",
        "class add dev b0 parent 1: classid 1:10 htb rate 1mbit",
        "filter add dev b0 parent 1: pref 2 u32 match ip dst 10.0.0.2/32",
        "actions add action mirred egress mirror dev a1 index 40",
        "qdisc add dev a1 ingress_block 9 clsact",
        "qdisc add dev b1 ingress_block 9 clsact",
        "filter add block 9 pref 1 u32 match ip dst 10.0.0.3/32 action mirred index 40",
        "chain add dev a0 ingress chain 3",
    ] {
        tc(&ns, cmd);
    }
    let dir = TempDir::new();
    let cfg = host_config(&ns.name, build(), false, "");
    let d = Daemon::start(dir.path(), &cfg);
    assert_same("initial dump", &ns, &d);
    // ekho status (and the metrics from it) count tc's entries as the dumps list them.
    let objects = &d.status()["mirror"]["objects"];
    for what in ["qdiscs", "classes", "filters", "chains", "actions"] {
        let n = d
            .cli_json(&["dump", what, "--json"])
            .as_array()
            .unwrap()
            .len();
        assert!(n > 0, "{what}");
        assert_eq!(objects[what].as_u64(), Some(n as u64), "{what}: {objects}");
    }

    // tc's wording.
    let text = String::from_utf8(d.cli(&["dump", "qdiscs"]).stdout).unwrap();
    assert!(
        text.contains("qdisc clsact ffff: dev a0 parent ffff:fff1\n"),
        "{text}"
    );
    assert!(text.contains("qdisc htb 1: dev b0 root\n"), "{text}");
    assert!(
        text.contains("qdisc clsact ffff: dev a1 parent ffff:fff1 ingress_block 9\n"),
        "{text}"
    );
    let text = String::from_utf8(d.cli(&["dump", "filters"]).stdout).unwrap();
    assert!(
        text.contains("filter dev a0 ingress protocol ip pref 5 u32 chain 0 fh 800::800 key ht 800 bkt 0\n  match 0a000001/ffffffff at 16\n\taction order 1: mirred (Egress Redirect to device b0) stolen\n\tindex 1 ref 1 bind 1"),
        "{text}"
    );
    let text = String::from_utf8(d.cli(&["dump", "classes"]).stdout).unwrap();
    assert_eq!(text, "class htb 1:10 dev b0 root\n");
    let text = String::from_utf8(d.cli(&["dump", "actions"]).stdout).unwrap();
    assert!(
        text.contains("mirred (Egress Mirror to device a1) pipe\n\tindex 40 ref 2 bind 1"),
        "{text}"
    );
    let e = d.cli(&["dump", "qdisk"]);
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(
        msg.contains("unknown kind \"qdisk\"")
            && msg.contains("qdiscs, classes, filters, chains, actions"),
        "{msg}"
    );

    // Notified changes, then silent ones.
    tc(&ns, "filter add dev a0 ingress pref 5 protocol ip u32 match ip dst 10.0.0.4/32 action mirred index 40");
    tc(&ns, "filter del dev a0 egress pref 6");
    assert_same("after filter changes", &ns, &d);
    // The qdisc's filters and the inline action go without a message.
    tc(&ns, "qdisc del dev a0 clsact");
    assert_same("after a0's clsact deleted", &ns, &d);
    // The block goes with its last binding; b0's htb, class and filter with the device.
    tc(&ns, "qdisc del dev a1 clsact");
    ns.ip(&["link", "del", "b0"]);
    assert_same("after b0 deleted", &ns, &d);
}
