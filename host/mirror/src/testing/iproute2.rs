//! Comparison of mirrored objects with the kernel's state as iproute2 prints it (test support).
//!
//! [`kernel_state`] runs `ip -j`/`bridge -j` in a namespace and [`mirror_state`] renders objects
//! with their `to_json`; both are brought to one canonical form by [`normalize`] (formatting
//! only: iproute2's omitted defaults filled in, flag lists sorted, volatile counters such as
//! remaining lifetimes replaced by a marker, fields the object model does not carry dropped) and
//! compared as multisets by [`compare`]. Reused by the host's end-to-end `ekho dump --json` test.

use ekho_plugin_api::{Object, ObjectKind};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::process::Command;

/// Kinds compared against iproute2 (bridge VLANs: none on a kernel without
/// CONFIG_BRIDGE_VLAN_FILTERING, where both sides are empty).
pub const COMPARED: &[ObjectKind] = &[
    ObjectKind::Link,
    ObjectKind::Vlan,
    ObjectKind::Netconf,
    ObjectKind::Address,
    ObjectKind::Nexthop,
    ObjectKind::Neighbour,
    ObjectKind::Fdb,
    ObjectKind::Mdb,
    ObjectKind::Route,
    ObjectKind::Rule,
];

fn run(netns: Option<&str>, tool: &str, args: &[&str]) -> Result<Value, String> {
    let mut c = Command::new(tool);
    if let Some(n) = netns {
        c.args(["-n", n]);
    }
    c.args(args);
    let out = c.output().map_err(|e| format!("{tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() {
        return Ok(Value::Array(vec![]));
    }
    serde_json::from_str(&s).map_err(|e| format!("{tool} {args:?}: bad json: {e}"))
}

fn arr(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => vec![],
    }
}

/// The kernel's state of `kind` in `netns` (`None`: the caller's), raw iproute2 JSON entries.
pub fn kernel_kind(netns: Option<&str>, kind: ObjectKind) -> Result<Vec<Value>, String> {
    Ok(match kind {
        ObjectKind::Link => arr(run(netns, "ip", &["-d", "-j", "link", "show"])?),
        ObjectKind::Netconf => {
            let mut v = arr(run(netns, "ip", &["-4", "-j", "netconf", "show"])?);
            v.extend(arr(run(netns, "ip", &["-6", "-j", "netconf", "show"])?));
            v
        }
        ObjectKind::Address => {
            let mut out = Vec::new();
            for l in arr(run(netns, "ip", &["-j", "addr", "show"])?) {
                for mut a in l.get("addr_info").cloned().map(arr).unwrap_or_default() {
                    a["ifindex"] = l["ifindex"].clone();
                    a["dev"] = l["ifname"].clone();
                    out.push(a);
                }
            }
            out
        }
        ObjectKind::Vlan => {
            // One entry per port and VLAN (a range `vlan`..`vlanEnd` expanded).
            let mut out = Vec::new();
            for p in arr(run(netns, "bridge", &["-j", "vlan", "show"])?) {
                for v in p.get("vlans").cloned().map(arr).unwrap_or_default() {
                    let first = v["vlan"].as_u64().unwrap_or(0);
                    let last = v.get("vlanEnd").and_then(Value::as_u64).unwrap_or(first);
                    for vid in first..=last {
                        out.push(serde_json::json!({
                            "ifname": p["ifname"],
                            "vlan": vid,
                            "flags": v.get("flags").cloned().unwrap_or(Value::Array(vec![])),
                        }));
                    }
                }
            }
            out
        }
        ObjectKind::Nexthop => arr(run(netns, "ip", &["-d", "-j", "nexthop", "show"])?),
        ObjectKind::Neighbour => {
            let mut v = arr(run(netns, "ip", &["-j", "neigh", "show", "nud", "all"])?);
            v.extend(arr(run(
                netns,
                "ip",
                &["-4", "-j", "neigh", "show", "proxy"],
            )?));
            v.extend(arr(run(
                netns,
                "ip",
                &["-6", "-j", "neigh", "show", "proxy"],
            )?));
            v
        }
        ObjectKind::Fdb => arr(run(netns, "bridge", &["-j", "fdb", "show"])?),
        ObjectKind::Mdb => {
            let mut out = Vec::new();
            // Before the bridge module is loaded (no bridge yet) the MDB dump is refused
            // (EOPNOTSUPP, seen on Debian's 6.1): no bridge, no MDB.
            let mdb = match run(netns, "bridge", &["-j", "mdb", "show"]) {
                Err(e) if e.contains("Operation not supported") => Value::Array(vec![]),
                r => r?,
            };
            for b in arr(mdb) {
                out.extend(b.get("mdb").cloned().map(arr).unwrap_or_default());
            }
            out
        }
        ObjectKind::Route => {
            let mut v = arr(run(
                netns,
                "ip",
                &["-4", "-d", "-j", "route", "show", "table", "all"],
            )?);
            v.extend(arr(run(
                netns,
                "ip",
                &["-6", "-d", "-j", "route", "show", "table", "all"],
            )?));
            v
        }
        ObjectKind::Rule => {
            let mut v = arr(run(netns, "ip", &["-4", "-d", "-j", "rule", "show"])?);
            v.extend(arr(run(netns, "ip", &["-6", "-d", "-j", "rule", "show"])?));
            v
        }
        other => return Err(format!("no iproute2 view of {other} objects")),
    })
}

/// The kernel's state of every [`COMPARED`] kind, normalized.
///
/// Each kind is dumped in a thread of its own, so that the fifteen `ip`/`bridge` commands run
/// side by side: one after the other they took a second or more per comparison in the emulated
/// VM, most of it starting the processes. The result is no less consistent than before: the
/// kinds were never dumped at one instant.
pub fn kernel_state(netns: Option<&str>) -> Result<BTreeMap<ObjectKind, Vec<Value>>, String> {
    let dumped: Vec<(ObjectKind, Result<Vec<Value>, String>)> = std::thread::scope(|s| {
        let threads: Vec<_> = COMPARED
            .iter()
            .map(|k| (*k, s.spawn(move || kernel_kind(netns, *k))))
            .collect();
        threads
            .into_iter()
            .map(|(k, t)| (k, t.join().expect("an iproute2 dump thread panicked")))
            .collect()
    });
    let mut m = BTreeMap::new();
    for (k, v) in dumped {
        let v = v?.into_iter().filter_map(|x| normalize(k, x)).collect();
        m.insert(k, v);
    }
    Ok(m)
}

/// Mirror objects rendered and normalized, per kind (`objs` as [`crate::Mirror::dump`] gives).
pub fn mirror_state(objs: &[Object]) -> BTreeMap<ObjectKind, Vec<Value>> {
    let names: BTreeMap<u32, String> = objs
        .iter()
        .filter_map(|o| match o {
            Object::Link(l) => Some((l.ifindex, l.ifname.to_string())),
            _ => None,
        })
        .collect();
    let mut m: BTreeMap<ObjectKind, Vec<Value>> = COMPARED.iter().map(|k| (*k, vec![])).collect();
    for o in objs {
        let Some(v) = m.get_mut(&o.kind()) else {
            continue;
        };
        let mut j = o.to_json();
        if let Object::Link(l) = o {
            // iproute2 names a lower device in the same netns, and gives the index otherwise.
            if l.link != 0 && l.link_netnsid < 0 {
                if let Some(obj) = j.as_object_mut() {
                    obj.remove("link_index");
                    obj.insert(
                        "link".into(),
                        names
                            .get(&l.link)
                            .cloned()
                            .unwrap_or_else(|| format!("if{}", l.link))
                            .into(),
                    );
                }
            }
        }
        if let Some(x) = normalize(o.kind(), j) {
            v.push(x);
        }
    }
    m
}

fn keep(o: &mut Map<String, Value>, keys: &[&str]) {
    o.retain(|k, _| keys.contains(&k.as_str()));
}

fn default(o: &mut Map<String, Value>, k: &str, v: Value) {
    if !o.contains_key(k) {
        o.insert(k.into(), v);
    }
}

fn sort_arr(o: &mut Map<String, Value>, k: &str) {
    if let Some(Value::Array(a)) = o.get_mut(k) {
        a.sort_by_key(|x| x.to_string());
    }
}

fn onoff(o: &mut Map<String, Value>, k: &str) {
    if let Some(Value::Bool(b)) = o.get(k) {
        let s = if *b { "on" } else { "off" };
        o.insert(k.into(), s.into());
    }
}

/// For a kernel neighbour in state INCOMPLETE, the same entry in state FAILED.
fn unresolved_as_failed(kind: ObjectKind, v: &Value) -> Option<Value> {
    if kind != ObjectKind::Neighbour || v.get("state")? != &serde_json::json!(["INCOMPLETE"]) {
        return None;
    }
    let mut f = v.clone();
    f["state"] = serde_json::json!(["FAILED"]);
    Some(f)
}

/// Canonical form of one entry of `kind` (from either side); `None` drops the entry (rows that
/// are not objects, like a device's own address-list rows in `bridge fdb show`).
pub fn normalize(kind: ObjectKind, v: Value) -> Option<Value> {
    let Value::Object(mut o) = v else {
        return Some(v);
    };
    match kind {
        ObjectKind::Link => {
            keep(
                &mut o,
                &[
                    "ifindex",
                    "ifname",
                    "flags",
                    "mtu",
                    "qdisc",
                    "master",
                    "operstate",
                    "group",
                    "txqlen",
                    "link_type",
                    "address",
                    "broadcast",
                    "link",
                    "link_index",
                    "link_netnsid",
                    "ifalias",
                    "linkinfo",
                ],
            );
            if let Some(Value::Object(li)) = o.get_mut("linkinfo") {
                keep(li, &["info_kind", "info_slave_kind"]);
                if li.is_empty() {
                    o.remove("linkinfo");
                }
            }
            // iproute2 derives M-DOWN from the lower device's state: not a flag of this link.
            if let Some(Value::Array(f)) = o.get_mut("flags") {
                f.retain(|x| x != "M-DOWN");
            }
            sort_arr(&mut o, "flags");
        }
        ObjectKind::Netconf => {
            o.remove("ifindex");
            for k in [
                "forwarding",
                "mc_forwarding",
                "proxy_neigh",
                "ignore_routes_with_linkdown",
                "input",
            ] {
                onoff(&mut o, k);
            }
        }
        ObjectKind::Address => {
            for k in ["valid_life_time", "preferred_life_time"] {
                if o.get(k)
                    .and_then(|x| x.as_u64())
                    .is_some_and(|x| x != u32::MAX as u64)
                {
                    o.insert(k.into(), "finite".into());
                }
            }
        }
        ObjectKind::Nexthop => {
            // Resilient-group bucket/timer settings are not in the object model.
            o.remove("resilient_args");
            // iproute2 -d prints the scope of device-less nexthops (global), to_json omits it.
            if o.contains_key("blackhole") || o.contains_key("fdb") && !o.contains_key("dev") {
                o.remove("scope");
            }
            if o.contains_key("group") {
                o.remove("scope");
                if let Some(Value::Array(g)) = o.get_mut("group") {
                    for m in g.iter_mut() {
                        if let Some(mo) = m.as_object_mut() {
                            if mo.get("weight").and_then(|w| w.as_u64()) == Some(1) {
                                mo.remove("weight");
                            }
                        }
                    }
                }
                default(&mut o, "type", "mpath".into());
            }
            sort_arr(&mut o, "flags");
        }
        ObjectKind::Neighbour => {
            let dst: Option<ekho_plugin_api::object::IpAddress> = o
                .get("dst")
                .and_then(|d| d.as_str())
                .and_then(|d| d.parse().ok());
            let noarp = o
                .get("state")
                .and_then(|s| s.as_array())
                .is_some_and(|s| s.len() == 1 && s[0] == "NOARP");
            // In a network namespace the loopback device is `lo` (ifindex 1).
            let on_lo = o.get("dev").and_then(|d| d.as_str()) == Some("lo");
            if dst.is_some_and(|d| {
                crate::netlink::neighbour::neighbour_is_unannounced_map(
                    &d,
                    on_lo,
                    if noarp { 0x40 } else { 0 },
                )
            }) {
                return None;
            }
            keep(
                &mut o,
                &[
                    "dst",
                    "dev",
                    "lladdr",
                    "router",
                    "extern_learn",
                    "proxy",
                    "state",
                ],
            );
            // NUD timer transitions are not notified (docs/netlink-gaps.md section 7):
            // REACHABLE/STALE/DELAY compare as one class of usable dynamic entries; entries
            // being resolved (INCOMPLETE, never notified) are matched in [`compare`].
            if let Some(Value::Array(st)) = o.get("state").cloned() {
                if st.len() == 1 && ["REACHABLE", "STALE", "DELAY"].iter().any(|x| st[0] == *x) {
                    o.insert("state".into(), serde_json::json!(["REACHABLE|STALE|DELAY"]));
                }
            }
            sort_arr(&mut o, "state");
        }
        ObjectKind::Fdb => {
            let self_only = o
                .get("flags")
                .and_then(|f| f.as_array())
                .is_some_and(|f| f.len() == 1 && f[0] == "self");
            if self_only
                && o.get("state").and_then(|s| s.as_str()) == Some("permanent")
                && !o.contains_key("master")
                && !o.contains_key("dst")
                && !o.contains_key("vni")
            {
                return None;
            }
            keep(
                &mut o,
                &[
                    "mac", "ifname", "vlan", "dst", "vni", "flags", "master", "state",
                ],
            );
            sort_arr(&mut o, "flags");
        }
        ObjectKind::Vlan => {
            keep(&mut o, &["ifname", "vlan", "flags"]);
            default(&mut o, "flags", Value::Array(vec![]));
            sort_arr(&mut o, "flags");
        }
        ObjectKind::Mdb => {
            keep(
                &mut o,
                &["index", "dev", "port", "grp", "src", "state", "vid"],
            );
        }
        ObjectKind::Route => {
            // `ip -d` renders the nexthop object inside the route: that is the nexthop's state.
            o.remove("nh_info");
            // iproute2 (6.1) flattens an ip/ip6 encapsulation into the route object, its `dst`
            // overwriting the route's: rebuild the encap text and mark dst as unknown, on both
            // sides.
            if let Some(enc) = o.get("encap").and_then(|e| e.as_str()).map(str::to_string) {
                if (enc == "ip" || enc == "ip6") && o.contains_key("id") {
                    let (t, c) = if enc == "ip" {
                        ("ttl", "tos")
                    } else {
                        ("hoplimit", "tc")
                    };
                    let g = |k: &str| {
                        o.get(k)
                            .map(|v| v.to_string().trim_matches('"').to_string())
                    };
                    let mut text = enc.clone();
                    for (k, v) in [("id", g("id")), ("src", g("src")), ("dst", g("dst"))] {
                        if let Some(v) = v {
                            text += &format!(" {k} {v}");
                        }
                    }
                    text += &format!(
                        " {t} {} {c} {}",
                        g(t).unwrap_or("0".into()),
                        g(c).unwrap_or("0".into())
                    );
                    for k in ["id", "src", "ttl", "tos", "hoplimit", "tc"] {
                        o.remove(k);
                    }
                    o.insert("encap".into(), text.into());
                    o.insert("dst".into(), "?encap".into());
                } else if enc.starts_with("ip ") || enc.starts_with("ip6 ") {
                    o.insert("dst".into(), "?encap".into());
                }
            }
            // iproute2's JSON does not show locked metrics; `congestion` (a string) is not in
            // the object model.
            if let Some(Value::Array(ms)) = o.get_mut("metrics") {
                for m in ms.iter_mut() {
                    if let Some(mo) = m.as_object_mut() {
                        mo.remove("lock");
                        mo.remove("congestion");
                    }
                }
                ms.retain(|m| m.as_object().is_none_or(|x| !x.is_empty()));
                if ms.is_empty() {
                    o.remove("metrics");
                }
            }
            o.remove("expires");
            o.remove("cache");
            default(&mut o, "type", "unicast".into());
            default(&mut o, "table", "main".into());
            default(&mut o, "protocol", "boot".into());
            default(&mut o, "scope", "global".into());
            default(&mut o, "metric", 0.into());
            // A one-leg multipath (a nexthop group left with one member) prints as `nexthops`
            // with one entry: same route as a single path.
            if let Some(Value::Array(legs)) = o.get("nexthops").cloned() {
                if legs.len() == 1 {
                    o.remove("nexthops");
                    if let Value::Object(l) = &legs[0] {
                        for (k, v) in l {
                            match k.as_str() {
                                "weight" => {}
                                "flags" => {
                                    let mut f = o
                                        .get("flags")
                                        .and_then(|x| x.as_array())
                                        .cloned()
                                        .unwrap_or_default();
                                    for x in v.as_array().cloned().unwrap_or_default() {
                                        if !f.contains(&x) {
                                            f.push(x);
                                        }
                                    }
                                    o.insert("flags".into(), f.into());
                                }
                                _ => {
                                    o.insert(k.clone(), v.clone());
                                }
                            }
                        }
                    }
                }
            }
            sort_arr(&mut o, "flags");
            if let Some(Value::Array(legs)) = o.get_mut("nexthops") {
                for l in legs.iter_mut() {
                    if let Some(lo) = l.as_object_mut() {
                        sort_arr(lo, "flags");
                    }
                }
            }
        }
        ObjectKind::Rule => {
            o.remove("protocol");
            // iproute2 prints a nop rule as `"nop": null`, to_json as `"action": "nop"`.
            if o.remove("nop").is_some() {
                o.insert("action".into(), "nop".into());
            }
            // iproute2 names well-known IP protocols, to_json gives the number.
            if let Some(Value::String(p)) = o.get("ipproto") {
                let n = match p.as_str() {
                    "icmp" => Some(1),
                    "tcp" => Some(6),
                    "udp" => Some(17),
                    "gre" => Some(47),
                    "ipv6-icmp" | "icmpv6" => Some(58),
                    "sctp" => Some(132),
                    other => other.parse::<u64>().ok(),
                };
                if let Some(n) = n {
                    o.insert("ipproto".into(), n.into());
                }
            }
            for k in ["iif_detached", "oif_detached"] {
                if o.contains_key(k) {
                    o.insert(k.into(), true.into());
                }
            }
            // The VRF rule: iproute2 prints `"l3mdev": null` and no table (the kernel's is 0,
            // the lookup goes to the device's table), to_json `"l3mdev": true, "table": "0"`.
            if o.contains_key("l3mdev") {
                o.insert("l3mdev".into(), true.into());
                if o.get("table").is_some_and(|t| t == "0" || t == "unspec") {
                    o.remove("table");
                }
            }
        }
        _ => {}
    }
    Some(sorted(Value::Object(o)))
}

/// The value with object keys in sorted order, recursively (serde_json may keep insertion order).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut kv: Vec<(String, Value)> = o.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            kv.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(kv.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        x => x,
    }
}

/// Differences between two normalized states, as readable lines (empty when equal).
pub fn compare(
    kernel: &BTreeMap<ObjectKind, Vec<Value>>,
    mirror: &BTreeMap<ObjectKind, Vec<Value>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, kv) in kernel {
        let empty = Vec::new();
        let mv = mirror.get(k).unwrap_or(&empty);
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for v in mv {
            *counts.entry(v.to_string()).or_default() -= 1;
        }
        for v in kv {
            match unresolved_as_failed(*k, v) {
                // An INCOMPLETE entry was never announced (section 7): the mirror holds it as
                // the FAILED it was announced as before a transmit retried it silently, or not
                // at all (a new entry), or as dumped.
                Some(failed) => {
                    let f = failed.to_string();
                    let s = v.to_string();
                    if counts.get(&s).is_some_and(|c| *c < 0) {
                        *counts.get_mut(&s).unwrap() += 1;
                    } else if counts.get(&f).is_some_and(|c| *c < 0) {
                        *counts.get_mut(&f).unwrap() += 1;
                    }
                }
                None => *counts.entry(v.to_string()).or_default() += 1,
            }
        }
        for (s, c) in counts {
            if c > 0 {
                out.push(format!("{}: only in kernel: {s}", k.plural()));
            } else if c < 0 {
                out.push(format!("{}: only in mirror: {s}", k.plural()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn neigh(v: Vec<Value>) -> BTreeMap<ObjectKind, Vec<Value>> {
        BTreeMap::from([(ObjectKind::Neighbour, v)])
    }

    #[test]
    fn an_incomplete_neighbour_matches_failed_or_nothing() {
        let inc = json!({"dst": "10.1.0.8", "dev": "va", "state": ["INCOMPLETE"]});
        let failed = json!({"dst": "10.1.0.8", "dev": "va", "state": ["FAILED"]});
        let other = json!({"dst": "10.1.0.9", "dev": "va", "state": ["FAILED"]});
        // Silent FAILED -> INCOMPLETE, a new unannounced entry, or as dumped: no divergence.
        assert!(compare(&neigh(vec![inc.clone()]), &neigh(vec![failed.clone()])).is_empty());
        assert!(compare(&neigh(vec![inc.clone()]), &neigh(vec![])).is_empty());
        assert!(compare(&neigh(vec![inc.clone()]), &neigh(vec![inc.clone()])).is_empty());
        // A FAILED entry the kernel no longer has, or FAILED in the kernel only, diverges.
        assert_eq!(
            compare(&neigh(vec![inc.clone()]), &neigh(vec![other])).len(),
            1
        );
        assert_eq!(compare(&neigh(vec![failed]), &neigh(vec![])).len(), 1);
        assert_eq!(compare(&neigh(vec![]), &neigh(vec![inc])).len(), 1);
    }

    #[test]
    fn noarp_neighbours_on_lo_are_not_compared() {
        let lo = json!({"dst": "0.0.0.0", "dev": "lo", "lladdr": "00:00:00:00:00:00", "state": ["NOARP"]});
        assert_eq!(normalize(ObjectKind::Neighbour, lo), None);
        let va = json!({"dst": "10.0.0.1", "dev": "va", "lladdr": "00:00:00:00:00:00", "state": ["NOARP"]});
        assert!(normalize(ObjectKind::Neighbour, va).is_some());
    }
}
