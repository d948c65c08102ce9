//! The mirror's tc state in tc's own wording: the lines `tc qdisc/class/filter/chain/actions
//! show` prints and the JSON of `tc -j` (its field names), for `ekho dump qdiscs|classes|
//! filters|chains|actions`. One definition, used by the daemon's dump and its tests.
//!
//! What is rendered: identities (device or block, handle, parent, chain, pref, protocol, kind,
//! `fh`), shared blocks, u32 hash tables (`ht_divisor`) and keys (`match`, as tc: value, mask
//! and offset in hex/decimal), each action's order, kind, index, `ref` and `bind`, and the
//! parameters of mirred and of the kinds typed in [`crate::netlink::tc_act`] (gact, vlan, police,
//! skbedit, pedit, csum, ct, mpls, sample, skbmod, connmark) with `tc -j`'s field names (police's conform action as
//! `conform_action`: tc repeats `control_action`). Not rendered yet: the options of
//! the qdiscs and classes netlink-packet-route 0.34 leaves raw (htb, tbf, ...: the mirror holds
//! their bytes), flower/matchall/bpf matches, counters.

use crate::netlink::tc::{
    action_of, handle, protocol, u32_handle, Action, Class, Filter, Qdisc, Target, H_MIN_EGRESS,
    H_MIN_INGRESS, H_ROOT,
};
use crate::netlink::tc_act::{
    ActionOptions, TcActionConnmarkOption, TcActionCsumOption, TcActionCtOption,
    TcActionGactOption, TcActionMplsOption, TcActionPeditOption, TcActionPoliceOption,
    TcActionSampleOption, TcActionSkbeditOption, TcActionSkbmodOption, TcActionVlanOption,
    TcCtFlags, TcGactProbType, TcMplsAction, TcPeditHeaderType, TcPeditKeyEx, TcPeditKeyExCmd,
    TcSkbeditPtype, TcSkbmodFlags, TcVlanAction,
};
use crate::state::tc::Tc;
use netlink_packet_route::tc::{
    TcActionOption, TcActionType, TcFilterU32Option, TcMirrorActionType, TcOption,
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

/// `TC_ACT_GOTO_CHAIN`, `TC_ACT_JUMP` (the opcode in the top 4 bits, the value below).
const TC_ACT_JUMP: i32 = 0x1000_0000;
const TC_ACT_GOTO_CHAIN: i32 = 0x2000_0000;
const TC_ACT_EXT_MASK: i32 = 0xf000_0000_u32 as i32;

/// A control action as tc's JSON has it: `{"type": "drop"}`, `{"type": "goto", "chain": 5}`.
pub fn control_json(t: TcActionType) -> Value {
    let v = i32::from(t);
    match v & TC_ACT_EXT_MASK {
        TC_ACT_GOTO_CHAIN => json!({"type": "goto", "chain": v & !TC_ACT_EXT_MASK}),
        TC_ACT_JUMP => json!({"type": "jump", "jump": v & !TC_ACT_EXT_MASK}),
        _ => json!({ "type": control(t) }),
    }
}

/// A control action in tc's text: `drop`, `goto chain 5`.
fn control_text(v: &Value) -> String {
    let t = v["type"].as_str().unwrap_or("");
    match t {
        "goto" => format!("goto chain {}", v["chain"]),
        "jump" => format!("jump {}", v["jump"]),
        t => t.to_string(),
    }
}

/// A rate (bytes per second) as tc prints it: `1Mbit`, `500Kbit`.
pub fn rate(bytes_per_s: u64) -> String {
    let mut r = bytes_per_s * 8;
    let units = ["", "K", "M", "G", "T"];
    let mut i = 0;
    while i < units.len() - 1 {
        if r < 1000 || (r % 1000 != 0 && r < 1_000_000) {
            break;
        }
        r /= 1000;
        i += 1;
    }
    format!("{r}{}bit", units[i])
}

/// A size as tc prints it: `10Kb`, `2000b`, `4096Mb`.
pub fn size(sz: u64) -> String {
    let t = sz as f64;
    let (k, m) = (1024.0, 1024.0 * 1024.0);
    if t >= m && (m * (t / m).round() - t).abs() < 1024.0 {
        format!("{}Mb", (t / m).round())
    } else if t >= k && (k * (t / k).round() - t).abs() < 16.0 {
        format!("{}Kb", (t / k).round())
    } else {
        format!("{sz}b")
    }
}

use crate::netlink::tc_act::police::ticks_at;

/// The fields tc's JSON gives an action of a kind typed here (and mirred), beside `order`,
/// `kind`, `index`, `ref` and `bind`.
fn options_json(m: &mut Map<String, Value>, o: &ActionOptions, names: &Names) {
    use netlink_packet_route::tc::TcActionMirrorOption as Mo;
    match o {
        ActionOptions::Route(v) => {
            for o in v {
                if let TcActionOption::Mirror(Mo::Parms(p)) = o {
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
                    m.insert("control_action".into(), control_json(p.generic.action));
                }
            }
        }
        ActionOptions::Gact(v) => {
            for o in v {
                match o {
                    TcActionGactOption::Parms(p) => {
                        m.insert("control_action".into(), control_json(p.generic.action));
                    }
                    TcActionGactOption::Prob(p) => {
                        let t = match p.ptype {
                            TcGactProbType::None => "none".to_string(),
                            TcGactProbType::Netrand => "netrand".into(),
                            TcGactProbType::Determ => "determ".into(),
                            TcGactProbType::Other(v) => v.to_string(),
                        };
                        m.insert(
                            "prob".into(),
                            json!({"random_type": t, "control_action": control_json(p.paction), "val": p.pval}),
                        );
                    }
                    _ => {}
                }
            }
            // tc prints the replacement also when the kernel gives none.
            m.entry("prob").or_insert_with(
                || json!({"random_type": "none", "control_action": {"type": "pass"}, "val": 0}),
            );
        }
        ActionOptions::Vlan(v) => {
            for o in v {
                match o {
                    TcActionVlanOption::Parms(p) => {
                        let a = match p.v_action {
                            TcVlanAction::Pop => "pop".to_string(),
                            TcVlanAction::Push => "push".into(),
                            TcVlanAction::Modify => "modify".into(),
                            TcVlanAction::PopEth => "pop_eth".into(),
                            TcVlanAction::PushEth => "push_eth".into(),
                            TcVlanAction::Other(v) => v.to_string(),
                        };
                        m.insert("vlan_action".into(), a.into());
                        m.insert("control_action".into(), control_json(p.generic.action));
                    }
                    TcActionVlanOption::PushVlanId(i) => {
                        m.insert("id".into(), (*i).into());
                    }
                    TcActionVlanOption::PushVlanProtocol(p) => {
                        m.insert("protocol".into(), protocol(*p).into());
                    }
                    TcActionVlanOption::PushVlanPriority(p) => {
                        m.insert("priority".into(), (*p).into());
                    }
                    TcActionVlanOption::PushEthDst(a) => {
                        m.insert("dst_mac".into(), mac(a).into());
                    }
                    TcActionVlanOption::PushEthSrc(a) => {
                        m.insert("src_mac".into(), mac(a).into());
                    }
                    _ => {}
                }
            }
            // tc shows the priority of a push only.
            if m["vlan_action"] != "push" {
                m.remove("priority");
            }
        }
        ActionOptions::Police(v) => {
            let (mut rate64, mut peak64, mut pkt_rate, mut pkt_burst) = (None, None, None, None);
            for o in v {
                match o {
                    TcActionPoliceOption::Rate64(r) => rate64 = Some(*r),
                    TcActionPoliceOption::PeakRate64(r) => peak64 = Some(*r),
                    TcActionPoliceOption::PktRate64(r) => pkt_rate = Some(*r),
                    TcActionPoliceOption::PktBurst64(r) => pkt_burst = Some(*r),
                    _ => {}
                }
            }
            for o in v {
                match o {
                    TcActionPoliceOption::Tbf(p) => {
                        let r = rate64.unwrap_or(p.rate.rate.into());
                        m.insert("rate".into(), rate(r).into());
                        m.insert("burst".into(), size(ticks_at(r, p.burst.into())).into());
                        m.insert("mtu".into(), size(p.mtu.into()).into());
                        let peak = peak64.unwrap_or(p.peakrate.rate.into());
                        if peak != 0 {
                            m.insert("peakrate".into(), rate(peak).into());
                        }
                        m.insert("control_action".into(), control_json(p.action));
                        m.insert("overhead".into(), p.rate.overhead.into());
                    }
                    TcActionPoliceOption::AvRate(r) => {
                        m.insert("avrate".into(), rate((*r).into()).into());
                    }
                    TcActionPoliceOption::Result(r) => {
                        // tc's JSON repeats `control_action` for it; one key can hold one.
                        m.insert("conform_action".into(), control_json(*r));
                    }
                    _ => {}
                }
            }
            if let (Some(r), Some(b)) = (pkt_rate, pkt_burst) {
                m.insert("pkts_rate".into(), r.into());
                m.insert("pkts_burst".into(), ticks_at(r, b).into());
            }
        }
        ActionOptions::Skbedit(v) => {
            for o in v {
                match o {
                    TcActionSkbeditOption::Parms(p) => {
                        m.insert("control_action".into(), control_json(p.generic.action));
                    }
                    TcActionSkbeditOption::QueueMapping(q) => {
                        m.insert("queue_mapping".into(), (*q).into());
                    }
                    TcActionSkbeditOption::Priority(p) => {
                        m.insert(
                            "priority".into(),
                            handle(*p).trim_end_matches(':').to_string().into(),
                        );
                        if p & 0xffff == 0 {
                            m.insert("priority".into(), format!("{:x}:0", p >> 16).into());
                        }
                    }
                    TcActionSkbeditOption::Mark(k) => {
                        m.insert("mark".into(), (*k).into());
                    }
                    TcActionSkbeditOption::Mask(k) => {
                        m.insert("mask".into(), format!("{k:x}").into());
                    }
                    TcActionSkbeditOption::Ptype(t) => {
                        let t = match t {
                            TcSkbeditPtype::Host => "host".to_string(),
                            TcSkbeditPtype::Broadcast => "broadcast".into(),
                            TcSkbeditPtype::Multicast => "multicast".into(),
                            TcSkbeditPtype::Otherhost => "otherhost".into(),
                            TcSkbeditPtype::Other(v) => v.to_string(),
                        };
                        m.insert("ptype".into(), t.into());
                    }
                    _ => {}
                }
            }
        }
        ActionOptions::Pedit(v) => {
            let ex: Vec<&TcPeditKeyEx> = v
                .iter()
                .flat_map(|o| match o {
                    TcActionPeditOption::KeysEx(e) => e.iter().collect(),
                    _ => Vec::new(),
                })
                .collect();
            for o in v {
                if let TcActionPeditOption::Parms(p) | TcActionPeditOption::ParmsEx(p) = o {
                    m.insert("control_action".into(), control_json(p.generic.action));
                    m.insert("nkeys".into(), p.nkeys.into());
                    let keys: Vec<Value> = p
                        .keys
                        .iter()
                        .enumerate()
                        .map(|(i, k)| {
                            let e = ex.get(i);
                            let htype = match e.and_then(|e| e.htype()).unwrap_or_default() {
                                TcPeditHeaderType::Network => "network".to_string(),
                                TcPeditHeaderType::Eth => "eth".into(),
                                TcPeditHeaderType::Ipv4 => "ipv4".into(),
                                TcPeditHeaderType::Ipv6 => "ipv6".into(),
                                TcPeditHeaderType::Tcp => "tcp".into(),
                                TcPeditHeaderType::Udp => "udp".into(),
                                TcPeditHeaderType::Other(v) => v.to_string(),
                            };
                            let cmd = match e.and_then(|e| e.cmd()).unwrap_or_default() {
                                TcPeditKeyExCmd::Add => "add".to_string(),
                                TcPeditKeyExCmd::Set => "set".into(),
                                TcPeditKeyExCmd::Other(v) => v.to_string(),
                            };
                            json!({
                                "htype": htype,
                                "offset": k.off as i32,
                                "cmd": cmd,
                                "val": format!("{:x}", u32::from_be(k.val)),
                                "mask": format!("{:x}", u32::from_be(k.mask)),
                            })
                        })
                        .collect();
                    m.insert("keys".into(), keys.into());
                }
            }
        }
        ActionOptions::Csum(v) => {
            for o in v {
                if let TcActionCsumOption::Parms(p) = o {
                    m.insert("csum".into(), p.update_flags.names().join(", ").into());
                    m.insert("control_action".into(), control_json(p.generic.action));
                }
            }
        }
        ActionOptions::Mpls(v) => {
            let what = v.iter().find_map(|o| match o {
                TcActionMplsOption::Parms(p) => Some(p.m_action),
                _ => None,
            });
            for o in v {
                match o {
                    TcActionMplsOption::Parms(p) => {
                        m.insert("mpls_action".into(), p.m_action.name().into());
                        m.insert("control_action".into(), control_json(p.generic.action));
                    }
                    TcActionMplsOption::Proto(p) => {
                        m.insert("protocol".into(), protocol(*p).into());
                    }
                    TcActionMplsOption::Label(l) => {
                        m.insert("label".into(), (*l).into());
                    }
                    TcActionMplsOption::Tc(t) => {
                        m.insert("tc".into(), (*t).into());
                    }
                    TcActionMplsOption::Ttl(t) => {
                        m.insert("ttl".into(), (*t).into());
                    }
                    TcActionMplsOption::Bos(b) => {
                        m.insert("bos".into(), (*b).into());
                    }
                    _ => {}
                }
            }
            // tc shows, as the kernel dumps them all: the protocol of a pop and a push; the
            // label stack entry's fields of a push and a modify; nothing of a dec_ttl.
            let (proto, entry) = match what {
                Some(TcMplsAction::Pop) => (true, false),
                Some(TcMplsAction::Push | TcMplsAction::MacPush) => (true, true),
                Some(TcMplsAction::Modify) => (false, true),
                _ => (false, false),
            };
            if !proto {
                m.remove("protocol");
            }
            if !entry {
                for k in ["label", "tc", "ttl", "bos"] {
                    m.remove(k);
                }
            }
        }
        ActionOptions::Sample(v) => {
            for o in v {
                match o {
                    TcActionSampleOption::Parms(p) => {
                        m.insert("control_action".into(), control_json(p.generic.action));
                    }
                    TcActionSampleOption::Rate(r) => {
                        m.insert("rate".into(), (*r).into());
                    }
                    TcActionSampleOption::PsampleGroup(g) => {
                        m.insert("group".into(), (*g).into());
                    }
                    TcActionSampleOption::TruncSize(t) => {
                        m.insert("trunc_size".into(), (*t).into());
                    }
                    _ => {}
                }
            }
        }
        ActionOptions::Connmark(v) => {
            for o in v {
                if let TcActionConnmarkOption::Parms(p) = o {
                    m.insert("zone".into(), p.zone.into());
                    m.insert("control_action".into(), control_json(p.generic.action));
                }
            }
        }
        ActionOptions::Skbmod(v) => {
            // tc's JSON for skbmod (6.1's iproute2) holds `control_action` only (the rest is
            // printed as text inside it): the other keys are ekho's, in tc's text words.
            for o in v {
                match o {
                    TcActionSkbmodOption::Parms(p) => {
                        m.insert("control_action".into(), control_json(p.generic.action));
                        if p.flags.has(TcSkbmodFlags::SWAPMAC) {
                            m.insert("swap_mac".into(), true.into());
                        }
                        if p.flags.has(TcSkbmodFlags::ECN) {
                            m.insert("ecn".into(), true.into());
                        }
                    }
                    TcActionSkbmodOption::Dmac(a) => {
                        m.insert("dmac".into(), mac(a).into());
                    }
                    TcActionSkbmodOption::Smac(a) => {
                        m.insert("smac".into(), mac(a).into());
                    }
                    TcActionSkbmodOption::Etype(e) => {
                        m.insert("etype".into(), format!("0x{e:X}").into());
                    }
                    _ => {}
                }
            }
        }
        ActionOptions::Ct(v) => {
            let flags = v
                .iter()
                .find_map(|o| match o {
                    TcActionCtOption::Action(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_default();
            let mut what = Vec::new();
            for (f, n) in [
                (TcCtFlags::CLEAR, "clear"),
                (TcCtFlags::COMMIT, "commit"),
                (TcCtFlags::FORCE, "force"),
            ] {
                if flags.has(f) {
                    what.push(n);
                }
            }
            if !what.is_empty() {
                m.insert("action".into(), what.join(" ").into());
            }
            let (mut nat_min, mut nat_max, mut p_min, mut p_max) = (None, None, None, None);
            for o in v {
                match o {
                    TcActionCtOption::Parms(p) => {
                        m.insert("control_action".into(), control_json(p.generic.action));
                    }
                    TcActionCtOption::Zone(z) => {
                        m.insert("zone".into(), (*z).into());
                    }
                    TcActionCtOption::Mark(k) => {
                        m.insert("mark".into(), (*k).into());
                    }
                    TcActionCtOption::MarkMask(k) => {
                        m.insert("mark_mask".into(), format!("{k:x}").into());
                    }
                    TcActionCtOption::HelperName(h) => {
                        m.insert("helper".into(), h.clone().into());
                    }
                    TcActionCtOption::NatIpv4Min(a) => nat_min = Some(a.to_string()),
                    TcActionCtOption::NatIpv4Max(a) => nat_max = Some(a.to_string()),
                    TcActionCtOption::NatIpv6Min(a) => nat_min = Some(a.to_string()),
                    TcActionCtOption::NatIpv6Max(a) => nat_max = Some(a.to_string()),
                    TcActionCtOption::NatPortMin(p) => p_min = Some(*p),
                    TcActionCtOption::NatPortMax(p) => p_max = Some(*p),
                    _ => {}
                }
            }
            if flags.has(TcCtFlags::NAT) {
                let mut n = if flags.has(TcCtFlags::NAT_SRC) {
                    "src".to_string()
                } else if flags.has(TcCtFlags::NAT_DST) {
                    "dst".to_string()
                } else {
                    String::new()
                };
                if let Some(a) = nat_min {
                    n += &format!(" addr {a}");
                    if let Some(b) = nat_max.filter(|b| *b != a) {
                        n += &format!("-{b}");
                    }
                }
                if let Some(a) = p_min {
                    n += &format!(" port {a}");
                    if let Some(b) = p_max.filter(|b| *b != a) {
                        n += &format!("-{b}");
                    }
                }
                m.insert("nat".into(), n.trim_start().to_string().into());
            }
        }
    }
}

fn mac(a: &[u8; 6]) -> String {
    a.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An action as `tc -j actions list` and the `actions` of a filter print it.
pub fn action_json(order: u16, a: &Action, names: &Names) -> Value {
    let mut m = Map::new();
    m.insert("order".into(), order.into());
    m.insert("kind".into(), a.kind.clone().into());
    options_json(&mut m, &a.options, names);
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
    if f.kind == "u32" {
        o.insert("fh".into(), u32_handle(f.handle).into());
    } else {
        // tc's JSON: `handle` (a number) for the other classifiers.
        o.insert("handle".into(), f.handle.into());
    }
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
    let has = |k: &str| !a[k].is_null();
    let ctl = control_text(&a["control_action"]);
    let mut after = String::new();
    let what = match a["kind"].as_str().unwrap_or("") {
        "mirred" => {
            let cap = |x: String| {
                let mut c = x.chars();
                c.next()
                    .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                    .unwrap_or_default()
            };
            format!(
                "mirred ({} {} to device {}) {ctl}",
                cap(s("direction")),
                cap(s("mirred_action")),
                s("to_dev"),
            )
        }
        "gact" => {
            let p = &a["prob"];
            after = format!(
                "\n\t random type {} {} val {}",
                p["random_type"].as_str().unwrap_or(""),
                control_text(&p["control_action"]),
                p["val"]
            );
            format!("gact action {ctl}")
        }
        "vlan" => {
            let mut l = format!("vlan  {}", s("vlan_action"));
            for (k, w) in [
                ("id", "id"),
                ("protocol", "protocol"),
                ("priority", "priority"),
            ] {
                if has(k) {
                    l += &format!(" {w} {}", s(k));
                }
            }
            format!("{l} {ctl}")
        }
        "police" => {
            let mut l = format!(
                " police 0x{:x} rate {} burst {} mtu {}",
                a["index"].as_u64().unwrap_or(0),
                s("rate"),
                s("burst"),
                s("mtu")
            );
            if has("peakrate") {
                l += &format!(" peakrate {}", s("peakrate"));
            }
            if has("avrate") {
                l += &format!(" avrate {}", s("avrate"));
            }
            if has("pkts_rate") {
                l += &format!(
                    " pkts_rate {} pkts_burst {}",
                    s("pkts_rate"),
                    s("pkts_burst")
                );
            }
            l += &format!(" action {ctl}");
            if has("conform_action") {
                l += &format!("/{}", control_text(&a["conform_action"]));
            }
            format!("{l} overhead {}b", s("overhead"))
        }
        "skbedit" => {
            let mut l = "skbedit".to_string();
            for k in ["queue_mapping", "priority", "mark", "ptype"] {
                if has(k) {
                    l += &format!(" {k} {}", s(k));
                    if k == "mark" && has("mask") {
                        l += &format!("/0x{}", s("mask"));
                    }
                }
            }
            format!("{l} {ctl}")
        }
        "pedit" => {
            for (i, k) in a["keys"]
                .as_array()
                .map(|v| v.as_slice())
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                let at = match k["htype"].as_str().unwrap_or("") {
                    "network" => k["offset"].to_string(),
                    h => format!("{h}+{}", k["offset"]),
                };
                let cmd = if k["cmd"] == "add" { "add" } else { "val" };
                after += &format!(
                    "\n\t key #{i}  at {at}: {cmd} {:0>8} mask {:0>8}",
                    k["val"].as_str().unwrap_or(""),
                    k["mask"].as_str().unwrap_or("")
                );
            }
            format!(" pedit action {ctl} keys {}", a["nkeys"])
        }
        "csum" => format!("csum ({}) action {ctl}", s("csum")),
        "mpls" => {
            let mut l = format!("mpls  {}", s("mpls_action"));
            for k in ["protocol", "label", "tc", "bos", "ttl"] {
                if has(k) {
                    l += &format!(" {k} {}", s(k));
                }
            }
            format!("{l} {ctl}")
        }
        "connmark" => format!("connmark zone {} {ctl}", s("zone")),
        // tc: the control action first, each change followed by a space.
        "skbmod" => {
            let mut l = format!("skbmod {ctl} ");
            for (k, w) in [
                ("etype", "set etype"),
                ("dmac", "set dmac"),
                ("smac", "set smac"),
            ] {
                if has(k) {
                    l += &format!("{w} {} ", s(k));
                }
            }
            if a["swap_mac"] == true {
                l += "swap mac ";
            }
            if a["ecn"] == true {
                l += "ecn ";
            }
            l
        }
        "sample" => {
            let mut l = format!("sample rate 1/{} group {}", s("rate"), s("group"));
            if has("trunc_size") {
                l += &format!(" trunc_size {}", s("trunc_size"));
            }
            format!("{l} {ctl}")
        }
        "ct" => {
            let mut l = "ct".to_string();
            if has("action") {
                l += &format!(" {}", s("action"));
            }
            if has("mark") {
                l += &format!(" mark {}", s("mark"));
                if has("mark_mask") {
                    l += &format!("/0x{}", s("mark_mask"));
                }
            }
            if has("zone") {
                l += &format!(" zone {}", s("zone"));
            }
            if has("nat") {
                l += &format!(" nat {}", s("nat"));
            }
            format!("{l} {ctl}")
        }
        _ => s("kind"),
    };
    format!(
        "action order {}: {what}\n\tindex {} ref {} bind {}{after}",
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
                } else if let Some(h) = o["handle"].as_u64() {
                    l += &format!(" handle 0x{h:x}");
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
                    // `--stats`: the kernel's software counters of the action, as `tc -s`.
                    let st = &a["stats"];
                    if st.is_object() {
                        l += &format!(
                            "\n\tSent {} bytes {} pkt (dropped {}, overlimits {} requeues {})",
                            st["bytes"],
                            st["packets"],
                            st["drops"],
                            st["overlimits"],
                            st["requeues"]
                        );
                    }
                }
                // What the plugins counted (ekho's own keys: `--stats`).
                for p in e["ekho_stats"]
                    .as_array()
                    .map(|v| v.as_slice())
                    .unwrap_or(&[])
                {
                    l += &format!(
                        "\n\t{}: {} bytes {} pkt (dropped {})",
                        p["plugin"].as_str().unwrap_or(""),
                        p["bytes"],
                        p["packets"],
                        p["drops"]
                    );
                    if let Some(u) = p["last_used"].as_u64() {
                        l += &format!(" used {u}s");
                    }
                }
                // What the plugins made of the filter.
                for p in e["ekho_offload"]
                    .as_array()
                    .map(|v| v.as_slice())
                    .unwrap_or(&[])
                {
                    l += &format!("\n\toffload: {}", p["outcome"].as_str().unwrap_or(""));
                    if let Some(r) = p["reason"].as_str() {
                        l += &format!(" ({r})");
                    }
                    l += &format!(" [{}]", p["plugin"].as_str().unwrap_or(""));
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

    /// Each captured action dump (the 6.1 kernel's, `tests/vm/tc-capture.py`) rendered: every
    /// field `tc -j actions list` printed for it has the same value here.
    #[test]
    fn typed_actions_render_as_tc_json_prints_them() {
        use crate::netlink::tc::Message;
        use crate::netlink::tc_act::tests::{dumped, VECTORS};
        let tc_json: Vec<Value> = VECTORS
            .lines()
            .filter_map(|l| l.strip_prefix("json "))
            .filter_map(|j| serde_json::from_str::<Value>(j).ok())
            .filter_map(|v| v.get(1).and_then(|x| x.get("actions")).cloned())
            .flat_map(|a| a.as_array().cloned().unwrap_or_default())
            .collect();
        let mut checked = 0;
        for kind in [
            "gact", "vlan", "police", "skbedit", "pedit", "csum", "ct", "mpls", "sample",
            "connmark",
        ] {
            let ours: Vec<Value> = dumped(kind)
                .iter()
                .flat_map(|m| crate::netlink::split(m))
                .filter_map(|(h, p)| match crate::netlink::decode(&h, p) {
                    Ok(crate::Event::Tc(Message::NewActions(v))) => Some(v),
                    _ => None,
                })
                .flatten()
                .enumerate()
                .map(|(i, a)| action_json(i as u16, &a, &Names::new()))
                .collect();
            let theirs: Vec<&Value> = tc_json.iter().filter(|a| a["kind"] == kind).collect();
            assert_eq!(ours.len(), theirs.len(), "{kind}");
            for (o, t) in ours.iter().zip(theirs) {
                for (k, v) in t.as_object().unwrap() {
                    let mine = match (kind, k.as_str()) {
                        ("police", "control_action") if !o["conform_action"].is_null() => {
                            // tc prints control_action twice, exceed then conform: JSON
                            // parsers keep the last.
                            &o["conform_action"]
                        }
                        (_, "not_in_hw") => continue,
                        _ => &o[k],
                    };
                    assert_eq!(mine, v, "{kind} {k}: ours {o}, tc's {t}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "{checked}");
    }

    /// The captured mpls, sample, connmark and skbmod actions in tc's text: each `action order` line as `tc
    /// actions list` printed it (the index line is tc's too, with one space less).
    #[test]
    fn mpls_sample_connmark_and_skbmod_render_as_tc_text_prints_them() {
        use crate::netlink::tc::Message;
        use crate::netlink::tc_act::tests::{dumped, VECTORS};
        for kind in ["mpls", "sample", "connmark", "skbmod"] {
            let at = VECTORS
                .find(&format!("# tc actions add action {kind} "))
                .unwrap();
            let theirs: Vec<&str> = VECTORS[at..]
                .lines()
                .skip_while(|l| !l.starts_with("text "))
                .take_while(|l| l.starts_with("text "))
                .filter_map(|l| l.strip_prefix("text \taction order "))
                .collect();
            let ours: Vec<String> = dumped(kind)
                .iter()
                .flat_map(|m| crate::netlink::split(m))
                .filter_map(|(h, p)| match crate::netlink::decode(&h, p) {
                    Ok(crate::Event::Tc(Message::NewActions(v))) => Some(v),
                    _ => None,
                })
                .flatten()
                .enumerate()
                .map(|(i, a)| {
                    let t = action_text(&action_json(i as u16, &a, &Names::new()));
                    t.lines().next().unwrap().to_string()
                })
                .collect();
            assert!(!theirs.is_empty(), "{kind}");
            assert_eq!(ours.len(), theirs.len(), "{kind}");
            for (o, t) in ours.iter().zip(&theirs) {
                assert_eq!(o.strip_prefix("action order ").unwrap(), *t, "{kind}");
            }
        }
    }

    /// The captured flower filter (`action vlan push id 5 action skbedit mark 7 action gact
    /// drop`): its handle and its actions as `tc -j filter show` printed them.
    #[test]
    fn a_flower_filters_typed_actions_render_as_tc_prints_them() {
        use crate::netlink::tc::Message;
        use crate::netlink::tc_act::tests::VECTORS;
        let at = VECTORS.find("# tc filter add").unwrap();
        let rest = &VECTORS[at..];
        let filters: Vec<Filter> = rest
            .lines()
            .filter_map(|l| l.strip_prefix("hex "))
            .map(crate::netlink::tests::hex)
            .flat_map(|m| {
                crate::netlink::split(&m)
                    .filter_map(|(h, p)| match crate::netlink::decode(&h, p) {
                        Ok(crate::Event::Tc(Message::NewFilter(f))) => Some(f),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let theirs: Value = rest
            .lines()
            .find_map(|l| l.strip_prefix("json "))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap();
        let f = filters.iter().find(|f| f.handle != 0).expect("the filter");
        let t = &theirs[1]["options"];
        let ours = filter_json(f, &BTreeMap::new(), &Names::new());
        let o = &ours["options"];
        assert_eq!(o["handle"], t["handle"]);
        let (oa, ta) = (
            o["actions"].as_array().unwrap(),
            t["actions"].as_array().unwrap(),
        );
        assert_eq!(oa.len(), 3);
        assert_eq!(oa.len(), ta.len());
        for (a, b) in oa.iter().zip(ta) {
            for (k, v) in b.as_object().unwrap() {
                // ref and bind: the mirror's counts, from the state (none given here).
                if !["ref", "bind", "not_in_hw"].contains(&k.as_str()) {
                    assert_eq!(&a[k], v, "{k}: ours {a}, tc's {b}");
                }
            }
        }
        // The text as tc prints it (its action lines; tc indents the index line one space more).
        let txt = text(&Value::Array(vec![ours.clone()]), Show::Filters);
        for line in [
            "flower chain 0 handle 0x1",
            "action order 1: vlan  push id 5 protocol 802.1Q priority 0 pipe",
            "action order 2: skbedit mark 7 pipe",
            "action order 3: gact action drop",
            "random type none pass val 0",
        ] {
            assert!(txt.contains(line), "{line:?} not in {txt}");
        }
    }

    #[test]
    fn rates_and_sizes_in_tcs_units() {
        assert_eq!(rate(125_000), "1Mbit");
        assert_eq!(rate(62_500), "500Kbit");
        assert_eq!(rate(0), "0bit");
        assert_eq!(size(10_240), "10Kb");
        assert_eq!(size(2040), "2Kb");
        assert_eq!(size(2000), "2000b");
        assert_eq!(size(u32::MAX.into()), "4096Mb");
        // police's text line, as tc printed it for `rate 1mbit burst 10k`.
        let a = serde_json::json!({"order": 0, "kind": "police", "index": 1, "rate": "1Mbit",
            "burst": "10Kb", "mtu": "2Kb", "control_action": {"type": "drop"},
            "conform_action": {"type": "pipe"}, "overhead": 0, "ref": 1, "bind": 0});
        assert!(action_text(&a)
            .contains(" police 0x1 rate 1Mbit burst 10Kb mtu 2Kb action drop/pipe overhead 0b"));
    }

    #[test]
    fn names_parse() {
        assert_eq!(Show::from_name("qdiscs"), Some(Show::Qdiscs));
        assert_eq!(Show::from_name("filter"), Some(Show::Filters));
        assert_eq!(Show::from_name("class"), Some(Show::Classes));
        assert_eq!(Show::from_name("routes"), None);
        assert_eq!(Show::Actions.name(), "actions");
    }
}
