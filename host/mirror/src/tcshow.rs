//! The mirror's tc state in tc's own wording: the lines `tc qdisc/class/filter/chain/actions
//! show` prints and the JSON of `tc -j` (its field names), for `ekho dump qdiscs|classes|
//! filters|chains|actions`. One definition, used by the daemon's dump and its tests.
//!
//! What is rendered: identities (device or block, handle, parent, chain, pref, protocol, kind,
//! `fh`), shared blocks, u32 hash tables (`ht_divisor`) and keys (`match`, as tc: value, mask
//! and offset in hex/decimal), each action's order, kind, index, `ref` and `bind`, mirred's
//! `mirred_action`, `direction`, `to_dev` and control action. Not rendered yet: the options of
//! the qdiscs and classes netlink-packet-route 0.34 leaves raw (htb, tbf, ...: the mirror holds
//! their bytes), flower/matchall/bpf matches, counters.

use crate::netlink::tc::{
    action_of, handle, protocol, u32_handle, Action, Class, Filter, Qdisc, Target, H_MIN_EGRESS,
    H_MIN_INGRESS, H_ROOT,
};
use crate::state::tc::Tc;
use netlink_packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcFilterU32Option,
    TcMirrorActionType, TcOption,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Device names by ifindex.
pub type Names = BTreeMap<u32, String>;

/// What `ekho dump` shows of tc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// `qdiscs`.
    Qdiscs,
    /// `classes`.
    Classes,
    /// `filters`.
    Filters,
    /// `chains`.
    Chains,
    /// `actions`.
    Actions,
}

impl Show {
    /// Every tc list, by its name.
    pub const ALL: &[(&'static str, Show)] = &[
        ("qdiscs", Show::Qdiscs),
        ("classes", Show::Classes),
        ("filters", Show::Filters),
        ("chains", Show::Chains),
        ("actions", Show::Actions),
    ];

    /// Parses a name (`qdiscs`, `qdisc`, ...).
    pub fn from_name(s: &str) -> Option<Show> {
        Show::ALL
            .iter()
            .find(|(n, _)| {
                *n == s || n.strip_suffix('s') == Some(s) || (s == "class" && *n == "classes")
            })
            .map(|(_, k)| *k)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Show::ALL.iter().find(|(_, k)| *k == self).unwrap().0
    }
}

fn dev(names: &Names, i: u32) -> String {
    names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"))
}

fn parent_json(m: &mut Map<String, Value>, parent: u32) {
    if parent == H_ROOT {
        m.insert("root".into(), true.into());
    } else {
        m.insert("parent".into(), handle(parent).into());
    }
}

/// A qdisc as `tc -j qdisc show` prints it (its options not yet).
pub fn qdisc_json(q: &Qdisc, names: &Names) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), q.kind.clone().into());
    m.insert("handle".into(), handle(q.handle).into());
    m.insert("dev".into(), dev(names, q.ifindex).into());
    parent_json(&mut m, q.parent);
    if let Some(b) = q.ingress_block {
        m.insert("ingress_block".into(), b.into());
    }
    if let Some(b) = q.egress_block {
        m.insert("egress_block".into(), b.into());
    }
    Value::Object(m)
}

/// A class, with the field names of a qdisc (tc prints htb classes as text only).
pub fn class_json(c: &Class, names: &Names) -> Value {
    let mut m = Map::new();
    m.insert("class".into(), c.kind.clone().into());
    m.insert("handle".into(), handle(c.handle).into());
    m.insert("dev".into(), dev(names, c.ifindex).into());
    parent_json(&mut m, c.parent);
    Value::Object(m)
}

fn control(t: TcActionType) -> &'static str {
    match t {
        TcActionType::Unspec => "continue",
        TcActionType::Ok => "pass",
        TcActionType::Reclassify => "reclassify",
        TcActionType::Shot => "drop",
        TcActionType::Pipe => "pipe",
        TcActionType::Stolen => "stolen",
        TcActionType::Queued => "queued",
        TcActionType::Repeat => "repeat",
        TcActionType::Redirect => "redirect",
        TcActionType::Trap => "trap",
        _ => "unknown",
    }
}

/// An action as `tc -j actions list` and the `actions` of a filter print it.
pub fn action_json(order: u16, a: &Action, names: &Names) -> Value {
    let mut m = Map::new();
    m.insert("order".into(), order.into());
    m.insert("kind".into(), a.kind.clone().into());
    for x in &a.attributes {
        let TcActionAttribute::Options(v) = x else {
            continue;
        };
        for o in v {
            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                let (what, dir) = match p.eaction {
                    TcMirrorActionType::EgressRedir => ("redirect", "egress"),
                    TcMirrorActionType::EgressMirror => ("mirror", "egress"),
                    TcMirrorActionType::IngressRedir => ("redirect", "ingress"),
                    TcMirrorActionType::IngressMirror => ("mirror", "ingress"),
                    _ => ("unknown", "unknown"),
                };
                m.insert("mirred_action".into(), what.into());
                m.insert("direction".into(), dir.into());
                let to = names.get(&p.ifindex).cloned().unwrap_or_else(|| "*".into());
                m.insert("to_dev".into(), to.into());
                m.insert(
                    "control_action".into(),
                    json!({ "type": control(p.generic.action) }),
                );
            }
        }
    }
    m.insert("index".into(), a.index.into());
    m.insert("ref".into(), a.refcnt.into());
    m.insert("bind".into(), a.bindcnt.into());
    Value::Object(m)
}

/// Where a filter is, as (JSON fields, text).
fn place(target: Target, parent: u32, names: &Names) -> (Map<String, Value>, String) {
    let mut m = Map::new();
    let text = match target {
        Target::Block(b) => {
            m.insert("block".into(), b.into());
            format!("block {b}")
        }
        Target::Dev(i) => {
            let d = dev(names, i);
            m.insert("dev".into(), d.clone().into());
            let p = match parent {
                H_MIN_INGRESS => "ingress".to_string(),
                H_MIN_EGRESS => "egress".to_string(),
                p => handle(p),
            };
            m.insert("parent".into(), p.clone().into());
            if parent == H_MIN_INGRESS || parent == H_MIN_EGRESS {
                format!("dev {d} {p}")
            } else {
                format!("dev {d} parent {p}")
            }
        }
    };
    (m, text)
}

/// A filter as `tc -j filter show` prints it, with `dev` and `parent` (or `block`) added.
/// `counts`: the actions' current `ref`/`bind` ([`Tc::actions`]).
pub fn filter_json(
    f: &Filter,
    counts: &BTreeMap<(String, u32), (i32, i32)>,
    names: &Names,
) -> Value {
    let (mut m, _) = place(f.target, f.parent, names);
    m.insert("protocol".into(), protocol(f.protocol).into());
    m.insert("pref".into(), f.prio.into());
    m.insert("kind".into(), f.kind.clone().into());
    m.insert("chain".into(), f.chain.into());
    if f.handle == 0 {
        return Value::Object(m);
    }
    let mut o = Map::new();
    let u32 = f.kind == "u32";
    o.insert(
        "fh".into(),
        if u32 {
            u32_handle(f.handle)
        } else {
            format!("0x{:x}", f.handle)
        }
        .into(),
    );
    let mut actions = Vec::new();
    for x in &f.options {
        match x {
            TcOption::U32(TcFilterU32Option::Divisor(d)) => {
                o.insert("ht_divisor".into(), (*d).into());
            }
            TcOption::U32(TcFilterU32Option::Selector(sel)) => {
                o.insert("key_ht".into(), format!("{:x}", f.handle >> 20).into());
                o.insert(
                    "bkt".into(),
                    format!("{:x}", (f.handle >> 12) & 0xff).into(),
                );
                if let Some(k) = sel.keys.first() {
                    o.insert(
                        "match".into(),
                        json!({
                            "value": format!("{:x}", k.val),
                            "mask": format!("{:x}", k.mask),
                            "offmask": if k.offmask != 0 { format!("{:x}", k.offmask) } else { String::new() },
                            "off": k.off,
                        }),
                    );
                }
            }
            _ => {}
        }
    }
    for a in crate::netlink::tc::filter_actions(f) {
        if let Some(mut x) = action_of(a) {
            if let Some((r, b)) = counts.get(&(x.kind.clone(), x.index)) {
                (x.refcnt, x.bindcnt) = (*r, *b);
            }
            actions.push(action_json(a.tab, &x, names));
        }
    }
    if !actions.is_empty() {
        o.insert("actions".into(), actions.into());
    }
    m.insert("options".into(), Value::Object(o));
    Value::Object(m)
}

/// One of the lists, as JSON (an array).
pub fn json(tc: &Tc, what: Show, names: &Names) -> Value {
    let counts: BTreeMap<(String, u32), (i32, i32)> = tc
        .actions()
        .into_iter()
        .map(|a| ((a.kind, a.index), (a.refcnt, a.bindcnt)))
        .collect();
    let v: Vec<Value> = match what {
        Show::Qdiscs => tc.qdiscs.values().map(|q| qdisc_json(q, names)).collect(),
        Show::Classes => tc.classes.values().map(|c| class_json(c, names)).collect(),
        Show::Filters => tc
            .filters
            .values()
            .map(|f| filter_json(f, &counts, names))
            .collect(),
        Show::Chains => tc
            .chains
            .iter()
            .map(|c| {
                let (mut m, _) = place(c.target, 0, names);
                m.remove("parent");
                if let Target::Dev(_) = c.target {
                    m.insert("parent".into(), handle(c.parent).into());
                }
                m.insert("chain".into(), c.index.into());
                Value::Object(m)
            })
            .collect(),
        Show::Actions => tc
            .actions()
            .iter()
            .enumerate()
            .map(|(i, a)| action_json(i as u16, a, names))
            .collect(),
    };
    Value::Array(v)
}

fn action_text(a: &Value) -> String {
    let s = |k: &str| {
        a[k].as_str()
            .map(str::to_string)
            .unwrap_or_else(|| a[k].to_string())
    };
    let what = if a["kind"] == "mirred" {
        let cap = |x: String| {
            let mut c = x.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        };
        format!(
            "mirred ({} {} to device {}) {}",
            cap(s("direction")),
            cap(s("mirred_action")),
            s("to_dev"),
            a["control_action"]["type"].as_str().unwrap_or("")
        )
    } else {
        s("kind")
    };
    format!(
        "action order {}: {what}\n\tindex {} ref {} bind {}",
        a["order"], a["index"], a["ref"], a["bind"]
    )
}

/// One of the lists in tc's text wording (from its [`json()`]).
pub fn text(list: &Value, what: Show) -> String {
    let mut out = String::new();
    for e in list.as_array().map(|v| v.as_slice()).unwrap_or(&[]) {
        let s = |k: &str| {
            e[k].as_str()
                .map(str::to_string)
                .unwrap_or_else(|| e[k].to_string())
        };
        let parent = || {
            if e["root"] == true {
                "root".to_string()
            } else {
                format!("parent {}", s("parent"))
            }
        };
        let line = match what {
            Show::Qdiscs => {
                let mut l = format!(
                    "qdisc {} {} dev {} {}",
                    s("kind"),
                    s("handle"),
                    s("dev"),
                    parent()
                );
                for b in ["ingress_block", "egress_block"] {
                    if !e[b].is_null() {
                        l += &format!(" {b} {}", e[b]);
                    }
                }
                l
            }
            Show::Classes => format!(
                "class {} {} dev {} {}",
                s("class"),
                s("handle"),
                s("dev"),
                parent()
            ),
            Show::Chains => match e.get("block") {
                Some(b) => format!("chain block {b} chain {}", e["chain"]),
                None => format!(
                    "chain dev {} parent {} chain {}",
                    s("dev"),
                    s("parent"),
                    e["chain"]
                ),
            },
            Show::Filters => {
                let at = match e.get("block") {
                    Some(b) => format!("block {b}"),
                    None if matches!(s("parent").as_str(), "ingress" | "egress") => {
                        format!("dev {} {}", s("dev"), s("parent"))
                    }
                    None => format!("dev {} parent {}", s("dev"), s("parent")),
                };
                let mut l = format!(
                    "filter {at} protocol {} pref {} {} chain {}",
                    s("protocol"),
                    e["pref"],
                    s("kind"),
                    e["chain"]
                );
                let o = &e["options"];
                if let Some(fh) = o["fh"].as_str() {
                    l += &format!(" fh {fh}");
                }
                if let Some(d) = o["ht_divisor"].as_u64() {
                    l += &format!(" ht divisor {d}");
                }
                if let Some(k) = o["key_ht"].as_str() {
                    l += &format!(" key ht {k} bkt {}", o["bkt"].as_str().unwrap_or(""));
                }
                let m = &o["match"];
                if m.is_object() {
                    l += &format!(
                        "\n  match {:0>8}/{:0>8} at {}",
                        m["value"].as_str().unwrap_or(""),
                        m["mask"].as_str().unwrap_or(""),
                        m["off"]
                    );
                }
                for a in o["actions"].as_array().map(|v| v.as_slice()).unwrap_or(&[]) {
                    l += &format!("\n\t{}", action_text(a));
                }
                l
            }
            Show::Actions => action_text(e),
        };
        out += &line;
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(Show::from_name("qdiscs"), Some(Show::Qdiscs));
        assert_eq!(Show::from_name("filter"), Some(Show::Filters));
        assert_eq!(Show::from_name("class"), Some(Show::Classes));
        assert_eq!(Show::from_name("routes"), None);
        assert_eq!(Show::Actions.name(), "actions");
    }
}
