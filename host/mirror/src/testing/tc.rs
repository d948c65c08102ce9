//! The tc state as `tc -j -d` prints it and the mirror's tc state, brought to one canonical form
//! (one line per qdisc, class, filter, chain and action) and compared: the tc differential
//! test's oracle.
//!
//! Compared: qdiscs (device, kind, handle, parent, shared blocks), classes (device, kind,
//! handle, parent), filters of every block (target, hook or parent, protocol, pref, kind, chain,
//! `fh`, u32's first key and the kind and index of each action), chains (one line per
//! target, reported parent and index), actions of `tc actions list` (kind, index, ref, bind,
//! mirred's target, the parameters `tc -j` prints of the kinds typed in
//! [`crate::netlink::tc_act`]). Not
//! compared: the options of qdiscs and classes (raw in netlink-packet-route 0.34), counters.

use crate::netlink::tc::{
    action_of, filter_actions, handle, protocol, u32_handle, Target, H_MIN_EGRESS, H_MIN_INGRESS,
    H_ROOT,
};
use crate::netlink::tc_act::ActionOptions;
use crate::state::tc::Tc;
use netlink_packet_route::tc::{TcActionMirrorOption, TcActionOption, TcFilterU32Option, TcOption};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

fn tc(netns: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new("tc");
    if let Some(n) = netns {
        c.args(["-n", n]);
    }
    c.args(args);
    let out = c.output().map_err(|e| format!("tc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `tc -j -force -b -` on `script` (commands, one a line): its output, whatever the status
/// (`-force` goes on past failing commands).
fn tc_batch(netns: Option<&str>, script: &str) -> Result<String, String> {
    use std::io::Write;
    let mut c = Command::new("tc");
    if let Some(n) = netns {
        c.args(["-n", n]);
    }
    c.args(["-j", "-force", "-b", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("tc -b: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("tc -b: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("tc -b: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tc_json(netns: Option<&str>, args: &[&str]) -> Result<Vec<Value>, String> {
    let s = tc(netns, args)?;
    if s.trim().is_empty() {
        return Ok(vec![]);
    }
    match serde_json::from_str(&s) {
        Ok(Value::Array(a)) => Ok(a),
        Ok(_) => Ok(vec![]),
        Err(e) => Err(format!("tc {args:?}: bad json: {e}: {s}")),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// A qdisc as tc lists it: device, kind, handle, parent, ingress and egress block.
type KernelQdisc = (String, String, String, String, Option<u64>, Option<u64>);

/// Where tc shows a block's filters: (target label, the `tc filter show` arguments).
fn hooks(qdiscs: &[KernelQdisc]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut blocks = std::collections::BTreeSet::new();
    for (dev, kind, h, parent, ib, eb) in qdiscs {
        let d = |p: &str| {
            (
                format!("dev {dev} {p}"),
                vec!["dev".into(), dev.clone(), p.into()],
            )
        };
        if parent == "ffff:fff1" {
            match ib {
                Some(b) => {
                    blocks.insert(*b);
                }
                None => out.push(d("ingress")),
            }
            if kind == "clsact" {
                match eb {
                    Some(b) => {
                        blocks.insert(*b);
                    }
                    None => out.push(d("egress")),
                }
            }
        } else if h != "0:" {
            out.push((
                format!("dev {dev} parent {h}"),
                vec!["dev".into(), dev.clone(), "parent".into(), h.clone()],
            ));
        }
    }
    for b in blocks {
        out.push((format!("block {b}"), vec!["block".into(), b.to_string()]));
    }
    out
}

/// The action kinds compared: mirred and those typed in [`crate::netlink::tc_act`].
const ACTION_KINDS: [&str; 11] = [
    "mirred", "gact", "vlan", "police", "skbedit", "pedit", "csum", "ct", "mpls", "sample",
    "connmark",
];

/// The parameters of an action of tc's JSON (`tc -j actions list`, or the mirror's
/// [`crate::tcshow::action_json`]) compared: the fields `tc -j` prints for the typed kinds.
/// tc prints police's `control_action` twice (exceed, then conform) and a JSON parser keeps
/// the last: the mirror's `conform_action`, when it has one, stands for it.
fn params(a: &Value) -> String {
    const FIELDS: &[&str] = &[
        "control_action",
        "prob",
        "vlan_action",
        "id",
        "protocol",
        "priority",
        "queue_mapping",
        "mark",
        "mask",
        "ptype",
        "nkeys",
        "keys",
        "csum",
        "action",
        "mark_mask",
        "zone",
        "nat",
        "pkts_rate",
        "pkts_burst",
        "overhead",
        "mpls_action",
        "label",
        "tc",
        "bos",
        "ttl",
        "group",
        "trunc_size",
    ];
    let mut out = String::new();
    for f in FIELDS {
        let mut v = &a[*f];
        if *f == "control_action" && !a["conform_action"].is_null() {
            v = &a["conform_action"];
        }
        if !v.is_null() {
            out += &format!(" {f}={v}");
        }
    }
    // `rate` is also police's, which tc -j does not print.
    if a["kind"] == "sample" && !a["rate"].is_null() {
        out += &format!(" rate={}", a["rate"]);
    }
    out
}

/// A filter's `fh` as the oracle compares it: u32's as tc prints it, the others' `handle`.
fn kernel_fh(o: &Value) -> String {
    match (&o["fh"], o["handle"].as_u64()) {
        (Value::Null, Some(h)) => format!("0x{h:x}"),
        (fh, _) => s(fh),
    }
}

/// The kernel's tc state in `netns`, canonical lines (sorted).
pub fn kernel(netns: Option<&str>) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let mut qs = Vec::new();
    for q in tc_json(netns, &["-j", "-d", "qdisc", "show"])? {
        let parent = if q["root"] == true {
            "root".to_string()
        } else {
            s(&q["parent"])
        };
        let (ib, eb) = (q["ingress_block"].as_u64(), q["egress_block"].as_u64());
        lines.push(format!(
            "qdisc dev {} {} {} parent {} ingress_block {:?} egress_block {:?}",
            s(&q["dev"]),
            s(&q["kind"]),
            s(&q["handle"]),
            parent,
            ib,
            eb
        ));
        let p = if parent == "root" {
            "ffffffff".into()
        } else {
            parent
        };
        qs.push((s(&q["dev"]), s(&q["kind"]), s(&q["handle"]), p, ib, eb));
    }
    let mut targets = hooks(&qs);
    // One chain key per (target, reported parent, index), as the mirror keeps them.
    let mut chains = std::collections::BTreeSet::new();
    let devs: std::collections::BTreeSet<String> = qs.iter().map(|q| q.0.clone()).collect();
    for dev in devs {
        // `tc -j class show` prints htb's classes as text: "class htb 1:10 root leaf 10: ...".
        for l in tc(netns, &["class", "show", "dev", &dev])?.lines() {
            let t: Vec<&str> = l.split_whitespace().collect();
            if t.first() != Some(&"class") || t.len() < 4 {
                continue;
            }
            let parent = if t[3] == "root" {
                "root".to_string()
            } else {
                t.get(4).unwrap_or(&"-").to_string()
            };
            lines.push(format!("class dev {dev} {} {} parent {parent}", t[1], t[2]));
            targets.push((
                format!("dev {dev} parent {}", t[2]),
                vec!["dev".into(), dev.clone(), "parent".into(), t[2].into()],
            ));
        }
    }
    for (label, args) in targets {
        let mut a: Vec<&str> = vec!["-j", "-d", "filter", "show"];
        a.extend(args.iter().map(|x| x.as_str()));
        for f in tc_json(netns, &a)? {
            let o = &f["options"];
            let m = &o["match"];
            let key = if m.is_object() {
                format!(
                    " match {}/{}@{}",
                    s(&m["value"]),
                    s(&m["mask"]),
                    s(&m["off"])
                )
            } else {
                String::new()
            };
            let acts: Vec<String> = o["actions"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|a| format!("{}:{}", s(&a["kind"]), s(&a["index"])))
                        .collect()
                })
                .unwrap_or_default();
            lines.push(format!(
                "filter {label} protocol {} pref {} {} chain {} fh {}{key} actions [{}]",
                s(&f["protocol"]),
                s(&f["pref"]),
                s(&f["kind"]),
                s(&f["chain"]),
                kernel_fh(o),
                acts.join(",")
            ));
        }
        let mut a: Vec<&str> = vec!["-j", "chain", "show"];
        a.extend(args.iter().map(|x| x.as_str()));
        for c in tc_json(netns, &a)? {
            let what = label
                .split(" parent")
                .next()
                .unwrap_or(&label)
                .replace(" ingress", "")
                .replace(" egress", "");
            // tc prints the chain's parent only when it differs from the one asked for (a
            // shared block's: the block index, as the mirror holds it).
            let parent = match (c.get("parent"), label.split_once(" parent ")) {
                (Some(p), _) => s(p),
                (None, Some((_, p))) => p.to_string(),
                (None, None) => format!(
                    "0:{:x}",
                    what.trim_start_matches("block ")
                        .parse::<u32>()
                        .unwrap_or(0)
                ),
            };
            chains.insert(format!("chain {what} parent {parent} {}", s(&c["chain"])));
        }
    }
    lines.extend(chains);
    // One tc for every kind (`-b`: one JSON array per command; `-force`: past a kind whose
    // module the kernel lacks). Each action names its kind.
    let script: String = ACTION_KINDS
        .iter()
        .map(|k| format!("actions list action {k}\n"))
        .collect();
    let lists: Vec<Value> = tc_batch(netns, &script)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .collect();
    {
        let v = lists;
        for x in v.iter().filter_map(|x| x["actions"].as_array()).flatten() {
            lines.push(format!(
                "action {} index {} ref {} bind {} to_dev {}{}",
                s(&x["kind"]),
                s(&x["index"]),
                s(&x["ref"]),
                s(&x["bind"]),
                s(&x["to_dev"]),
                params(x)
            ));
        }
    }
    lines.sort();
    Ok(lines)
}

/// The mirror's tc state, canonical lines (sorted); `names`: device names by ifindex.
pub fn mirror(t: &Tc, names: &BTreeMap<u32, String>) -> Vec<String> {
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
    let mut lines = Vec::new();
    for q in t.qdiscs.values() {
        let parent = if q.parent == H_ROOT {
            "root".into()
        } else {
            handle(q.parent)
        };
        lines.push(format!(
            "qdisc dev {} {} {} parent {parent} ingress_block {:?} egress_block {:?}",
            name(q.ifindex),
            q.kind,
            handle(q.handle),
            q.ingress_block.map(u64::from),
            q.egress_block.map(u64::from)
        ));
    }
    for c in t.classes.values() {
        let parent = if c.parent == H_ROOT {
            "root".into()
        } else {
            handle(c.parent)
        };
        lines.push(format!(
            "class dev {} {} {} parent {parent}",
            name(c.ifindex),
            c.kind,
            handle(c.handle)
        ));
    }
    let label = |target: Target, parent: u32| match target {
        Target::Block(b) => format!("block {b}"),
        Target::Dev(i) => match parent {
            H_MIN_INGRESS => format!("dev {} ingress", name(i)),
            H_MIN_EGRESS => format!("dev {} egress", name(i)),
            p => format!("dev {} parent {}", name(i), handle(p)),
        },
    };
    for f in t.filters.values() {
        let mut key = String::new();
        let mut fh = "-".to_string();
        if f.handle != 0 {
            fh = if f.kind == "u32" {
                u32_handle(f.handle)
            } else {
                format!("0x{:x}", f.handle)
            };
        }
        for o in &f.options {
            if let TcOption::U32(TcFilterU32Option::Selector(sel)) = o {
                if let Some(k) = sel.keys.first() {
                    key = format!(" match {:x}/{:x}@{}", k.val, k.mask, k.off);
                }
            }
        }
        let acts: Vec<String> = filter_actions(f)
            .filter_map(action_of)
            .map(|a| format!("{}:{}", a.kind, a.index))
            .collect();
        lines.push(format!(
            "filter {} protocol {} pref {} {} chain {} fh {fh}{key} actions [{}]",
            label(f.target, f.parent),
            protocol(f.protocol),
            f.prio,
            f.kind,
            f.chain,
            acts.join(",")
        ));
    }
    let mut chains = std::collections::BTreeSet::new();
    for c in &t.chains {
        let what = match c.target {
            Target::Block(b) => format!("block {b}"),
            Target::Dev(i) => format!("dev {}", name(i)),
        };
        chains.insert(format!(
            "chain {what} parent {} {}",
            handle(c.parent),
            c.index
        ));
    }
    lines.extend(chains);
    for a in t.actions() {
        let mut to = "-".to_string();
        if let ActionOptions::Route(v) = &a.options {
            for o in v {
                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                    to = names.get(&p.ifindex).cloned().unwrap_or_else(|| "*".into());
                }
            }
        }
        if !ACTION_KINDS.contains(&a.kind.as_str()) {
            continue;
        }
        lines.push(format!(
            "action {} index {} ref {} bind {} to_dev {to}{}",
            a.kind,
            a.index,
            a.refcnt,
            a.bindcnt,
            params(&crate::tcshow::action_json(0, &a, names))
        ));
    }
    lines.sort();
    lines
}

/// Lines only in the kernel (`-`) or only in the mirror (`+`).
pub fn compare(kernel: &[String], mirror: &[String]) -> Vec<String> {
    let count = |v: &[String]| {
        let mut m: BTreeMap<String, i32> = BTreeMap::new();
        for l in v {
            *m.entry(l.clone()).or_default() += 1;
        }
        m
    };
    let (k, m) = (count(kernel), count(mirror));
    let mut out = Vec::new();
    for l in k
        .keys()
        .chain(m.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let d = m.get(l).copied().unwrap_or(0) - k.get(l).copied().unwrap_or(0);
        if d < 0 {
            out.push(format!("- {l} (x{})", -d));
        } else if d > 0 {
            out.push(format!("+ {l} (x{d})"));
        }
    }
    out
}
