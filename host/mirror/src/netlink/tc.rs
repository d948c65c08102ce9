//! tc messages (`RTM_*QDISC`, `RTM_*TCLASS`, `RTM_*TFILTER`, `RTM_*CHAIN`, `RTM_*ACTION`),
//! decoded by netlink-packet-route 0.34's `tc` module, into the mirror's tc objects.
//!
//! The crate types the options of the qdiscs `ingress` and `fq_codel`, the classifiers `u32`,
//! `flower`, `matchall` and `bpf` (the last one's action list stays raw), and the actions
//! `mirred`, `nat` and `tunnel_key`; everything else (htb, tbf, gact, vlan, ...) arrives as
//! [`DefaultNla`] attributes, kept as they are so that nothing is lost. The actions gact, vlan,
//! police, skbedit, pedit, csum, ct, mpls, sample, skbmod and connmark are typed here
//! ([`super::tc_act`]): an [`Action`]
//! carries its options typed ([`ActionOptions`]). Counters and timestamps
//! (`TCA_STATS*`, `TCA_XSTATS`, u32's `TCA_U32_PCNT`, an action's `TCA_ACT_STATS` and `tcf_t`)
//! change without a message and are dropped, as are the reference and binding counts inside an
//! action's parameters, which the mirror computes (state/tc.rs).

use super::tc_act::ActionOptions;
use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMessage, TcActionMessageAttribute, TcActionOption,
    TcAttribute, TcFilterFlowerOption, TcFilterMatchAllOption, TcFilterU32Option, TcMessage,
    TcOption,
};

/// `TCM_IFINDEX_MAGIC_BLOCK`: a filter or chain of a shared block, `tcm_parent` its index.
pub const IFINDEX_MAGIC_BLOCK: u32 = 0xffff_ffff;
/// `TC_H_ROOT`.
pub const H_ROOT: u32 = 0xffff_ffff;
/// `TC_H_INGRESS` (the parent of `ingress` and `clsact`).
pub const H_INGRESS: u32 = 0xffff_fff1;
/// clsact's/ingress's ingress hook (`TC_H_MIN_INGRESS` under `TC_H_CLSACT`).
pub const H_MIN_INGRESS: u32 = 0xffff_fff2;
/// clsact's egress hook.
pub const H_MIN_EGRESS: u32 = 0xffff_fff3;
/// `TCA_INGRESS_BLOCK`, `TCA_EGRESS_BLOCK` (raw in netlink-packet-route 0.34).
const TCA_INGRESS_BLOCK: u16 = 13;
const TCA_EGRESS_BLOCK: u16 = 14;

/// Where a filter or chain lives: a device's block (under `parent`) or a shared block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A device (ifindex).
    Dev(u32),
    /// A shared block (its index).
    Block(u32),
}

/// A qdisc. At most one qdisc sits at each parent of a device, so (ifindex, parent) is its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    /// Device.
    pub ifindex: u32,
    /// Handle (`1:` is 0x0001_0000).
    pub handle: u32,
    /// Parent: [`H_ROOT`], [`H_INGRESS`] or a class.
    pub parent: u32,
    /// Kind (`htb`, `clsact`, ...).
    pub kind: String,
    /// Options (`TCA_OPTIONS`), typed where the crate types them.
    pub options: Vec<TcOption>,
    /// `ingress_block` (shared block bound to the ingress hook).
    pub ingress_block: Option<u32>,
    /// `egress_block`.
    pub egress_block: Option<u32>,
    /// Other attributes (`TCA_RATE`, `TCA_STAB`, `TCA_HW_OFFLOAD`, ...), as received.
    pub attributes: Vec<TcAttribute>,
}

/// A class of a classful qdisc, keyed by (ifindex, handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// Device.
    pub ifindex: u32,
    /// Class id (`1:10`).
    pub handle: u32,
    /// Parent class or qdisc.
    pub parent: u32,
    /// Kind (the qdisc's).
    pub kind: String,
    /// Options.
    pub options: Vec<TcOption>,
    /// Other attributes, as received.
    pub attributes: Vec<TcAttribute>,
}

/// A filter, keyed by (target, parent, chain, prio, handle). Handle 0 is the classifier
/// instance itself (a *tp*, one per chain and prio, dumped as an entry of its own), which
/// `tc filter show` lists as the line without `fh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Device or shared block.
    pub target: Target,
    /// Parent (the hook or class; for a shared block, the block index).
    pub parent: u32,
    /// Chain index.
    pub chain: u32,
    /// Priority (`pref`).
    pub prio: u16,
    /// Ethernet protocol, host order (`ETH_P_ALL` 3 is `all`).
    pub protocol: u16,
    /// Filter handle (`fh`).
    pub handle: u32,
    /// Classifier kind (`u32`, `flower`, ...).
    pub kind: String,
    /// Options: match and action list, typed where the crate types them.
    pub options: Vec<TcOption>,
    /// Other attributes, as received.
    pub attributes: Vec<TcAttribute>,
}

/// A chain, keyed by (target, parent as the kernel reports it, index). The kernel reports a
/// class's block under its qdisc's handle, so one key may stand for several chains: see
/// state/tc.rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chain {
    /// Device or shared block.
    pub target: Target,
    /// Parent as reported.
    pub parent: u32,
    /// Chain index.
    pub index: u32,
}

/// An action (standalone, or bound to filters), keyed by (kind, index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// Kind (`mirred`, `gact`, ...).
    pub kind: String,
    /// Index in its kind's table.
    pub index: u32,
    /// References held, from the message (`refcnt`).
    pub refcnt: i32,
    /// Bindings to filters, from the message (`bindcnt`).
    pub bindcnt: i32,
    /// Its options, typed by kind where netlink-packet-route or [`super::tc_act`] types it,
    /// raw attributes otherwise; timestamps removed, reference counts zeroed.
    pub options: ActionOptions,
    /// Its other attributes as received (cookie, flags, ...; not the kind, index, options or
    /// counters).
    pub attributes: Vec<TcActionAttribute>,
}

/// A decoded tc message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A qdisc appeared or changed.
    NewQdisc(Qdisc),
    /// A qdisc is gone.
    DelQdisc(Qdisc),
    /// A class appeared or changed.
    NewClass(Class),
    /// A class is gone.
    DelClass(Class),
    /// A filter appeared or changed.
    NewFilter(Filter),
    /// A filter is gone; with handle 0, its whole classifier instance (chain and prio).
    DelFilter(Filter),
    /// A chain appeared.
    NewChain(Chain),
    /// A chain is gone.
    DelChain(Chain),
    /// Actions appeared or changed (standalone, `tc actions add`, or dumped).
    NewActions(Vec<Action>),
    /// Actions are gone.
    DelActions(Vec<Action>),
}

/// tc's handle form: `1:`, `1:10`, `ffff:fff1` (the plugin API's, one definition).
pub use ekho_plugin_api::object::tc::handle_name as handle;

/// u32's `fh` form (`800:`, `800::800`).
pub fn u32_handle(h: u32) -> String {
    let mut s = String::new();
    if h & 0xfff0_0000 != 0 {
        s += &format!("{:x}:", h >> 20);
    }
    if (h >> 12) & 0xff != 0 {
        s += &format!("{:x}", (h >> 12) & 0xff);
    }
    if h & 0xfff != 0 {
        s += &format!(":{:x}", h & 0xfff);
    }
    s
}

/// `tc`'s protocol names (the plugin API's, one definition).
pub use ekho_plugin_api::object::tc::protocol_name as protocol;

fn target(m: &TcMessage) -> Target {
    let ifindex = m.header.index as u32;
    if ifindex == IFINDEX_MAGIC_BLOCK {
        Target::Block(u32::from(m.header.parent))
    } else {
        Target::Dev(ifindex)
    }
}

/// The kind, options and the other attributes of a tc message (counters dropped).
fn split(m: &TcMessage) -> (String, Vec<TcOption>, Vec<TcAttribute>, Option<u32>) {
    let mut kind = String::new();
    let mut options = Vec::new();
    let mut rest = Vec::new();
    let mut chain = None;
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => kind = k.clone(),
            TcAttribute::Options(o) => options = o.iter().filter_map(clean_option).collect(),
            TcAttribute::Chain(c) => chain = Some(*c),
            TcAttribute::Stats(_) | TcAttribute::Stats2(_) | TcAttribute::Xstats(_) => {}
            a => rest.push(a.clone()),
        }
    }
    (kind, options, rest, chain)
}

fn clean_option(o: &TcOption) -> Option<TcOption> {
    Some(match o {
        TcOption::U32(TcFilterU32Option::Pnct(_)) => return None,
        TcOption::U32(TcFilterU32Option::Action(v)) => TcOption::U32(TcFilterU32Option::Action(
            v.iter().map(clean_action).collect(),
        )),
        TcOption::MatchAll(TcFilterMatchAllOption::Action(v)) => TcOption::MatchAll(
            TcFilterMatchAllOption::Action(v.iter().map(clean_action).collect()),
        ),
        TcOption::Flower(TcFilterFlowerOption::Actions(v)) => TcOption::Flower(
            TcFilterFlowerOption::Actions(v.iter().map(clean_action).collect()),
        ),
        o => o.clone(),
    })
}

/// `TCA_*_PARMS` of most actions (gact, mirred, vlan, nat, pedit, skbedit, tunnel_key, ...),
/// whose value starts with `tc_gen`: index, capab, action, refcnt, bindcnt.
const TCA_ACT_PARMS: u16 = 2;
/// `TCA_*_TM` of most actions: `tcf_t` timestamps.
const TCA_ACT_TM: u16 = 1;

/// The value of a raw attribute.
fn value(n: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; n.value_len()];
    n.emit_value(&mut v);
    v
}

fn zero_gen(v: &mut [u8]) -> Option<(i32, i32)> {
    let r = i32::from_ne_bytes(v.get(12..16)?.try_into().ok()?);
    let b = i32::from_ne_bytes(v.get(16..20)?.try_into().ok()?);
    v[12..20].fill(0);
    Some((r, b))
}

/// The kinds left raw whose parameters are attribute 1 and timestamps attribute 2 (most
/// others: timestamps 1, parameters 2).
const PARMS_FIRST: &[&str] = &["connmark", "ife"];

/// The kind of an action.
fn kind_of(a: &TcAction) -> Option<&str> {
    a.attributes.iter().find_map(|x| match x {
        TcActionAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

/// The options of an action of a kind left raw (netlink-packet-route's and ours), with the
/// timestamps removed and the reference counts zeroed by the common layout (`tc_gen` first in
/// the parameters), and those counts.
fn clean_raw(kind: &str, opts: &mut Vec<TcActionOption>) -> Option<(i32, i32)> {
    let (tm, parms) = if PARMS_FIRST.contains(&kind) {
        (TCA_ACT_TM + 1, TCA_ACT_PARMS - 1)
    } else {
        (TCA_ACT_TM, TCA_ACT_PARMS)
    };
    opts.retain(|o| !matches!(o, TcActionOption::Other(n) if n.kind() == tm));
    let mut counts = None;
    for o in opts.iter_mut() {
        if let TcActionOption::Other(n) = o {
            if n.kind() == parms {
                let mut v = value(n);
                if let Some(c) = zero_gen(&mut v) {
                    counts = Some(c);
                    *n = DefaultNla::new(n.kind(), v);
                }
            }
        }
    }
    counts
}

/// An action's options typed and cleaned: timestamps removed, reference counts zeroed (the
/// mirror computes them, state/tc.rs), with those counts.
fn typed(kind: &str, opts: &[TcActionOption]) -> (ActionOptions, Option<(i32, i32)>) {
    let mut o = ActionOptions::parse(kind, opts);
    let mut counts = o.clean();
    if let ActionOptions::Route(v) = &mut o {
        if let Some(c) = clean_raw(kind, v) {
            counts = Some(c);
        }
    }
    (o, counts)
}

/// An action with its counters, timestamps and reference counts removed, and those counts.
fn clean(a: &TcAction) -> (TcAction, i32, i32) {
    let kind = kind_of(a).unwrap_or("").to_string();
    let mut counts = (0, 0);
    let mut out = a.clone();
    out.attributes
        .retain(|x| !matches!(x, TcActionAttribute::Stats(_)));
    for x in out.attributes.iter_mut() {
        if let TcActionAttribute::Options(opts) = x {
            let (o, c) = typed(&kind, opts);
            if let Some(c) = c {
                counts = c;
            }
            *opts = o.to_route();
        }
    }
    (out, counts.0, counts.1)
}

fn clean_action(a: &TcAction) -> TcAction {
    clean(a).0
}

/// The kind and index of an action as a filter's list carries it, its options typed.
pub fn action_of(a: &TcAction) -> Option<Action> {
    let kind = kind_of(a)?.to_string();
    let mut index = None;
    let mut options = ActionOptions::default();
    let (mut refcnt, mut bindcnt) = (0, 0);
    let mut attributes = Vec::new();
    for x in &a.attributes {
        match x {
            TcActionAttribute::Index(i) => index = Some(*i),
            TcActionAttribute::Stats(_) => {}
            TcActionAttribute::Options(opts) => {
                let raw_index = opts.iter().find_map(|o| match o {
                    TcActionOption::Other(n) if n.kind() == TCA_ACT_PARMS => {
                        Some(u32::from_ne_bytes(value(n).get(..4)?.try_into().ok()?))
                    }
                    _ => None,
                });
                let (o, c) = typed(&kind, opts);
                if let Some(c) = c {
                    (refcnt, bindcnt) = c;
                }
                let i = o.generic().map(|g| g.index).or(raw_index);
                if let Some(i) = i {
                    index.get_or_insert(i);
                }
                options = o;
            }
            // The order (`tab`) is the action's place in a list, not part of the action.
            x => attributes.push(x.clone()),
        }
    }
    attributes.retain(|x| !matches!(x, TcActionAttribute::Kind(_)));
    Some(Action {
        kind,
        // None in a flush (`tc actions flush action KIND`: the kind alone).
        index: index.unwrap_or(0),
        refcnt,
        bindcnt,
        options,
        attributes,
    })
}

/// The kind and index of an action as a filter's list carries it, without typing its options
/// when the message names the index (`TCA_ACT_INDEX`): what counting bindings needs.
pub fn action_key(a: &TcAction) -> Option<(String, u32)> {
    let kind = kind_of(a)?;
    let index = a.attributes.iter().find_map(|x| match x {
        TcActionAttribute::Index(i) => Some(*i),
        _ => None,
    });
    match index {
        Some(i) => Some((kind.to_string(), i)),
        None => action_of(a).map(|x| (x.kind, x.index)),
    }
}

/// The actions a filter's options list (u32, matchall, flower; bpf's list is raw).
pub fn filter_actions(f: &Filter) -> impl Iterator<Item = &TcAction> {
    f.options.iter().flat_map(|o| match o {
        TcOption::U32(TcFilterU32Option::Action(v))
        | TcOption::MatchAll(TcFilterMatchAllOption::Action(v))
        | TcOption::Flower(TcFilterFlowerOption::Actions(v)) => v.as_slice(),
        _ => &[],
    })
}

fn u32_attr(a: &TcAttribute, t: u16) -> Option<u32> {
    match a {
        TcAttribute::Other(n) if n.kind() == t => {
            Some(u32::from_ne_bytes(value(n).get(..4)?.try_into().ok()?))
        }
        _ => None,
    }
}

/// Converts a qdisc message.
pub fn qdisc(m: &TcMessage) -> Qdisc {
    let (kind, options, mut attributes, _) = split(m);
    let ingress_block = attributes
        .iter()
        .find_map(|a| u32_attr(a, TCA_INGRESS_BLOCK));
    let egress_block = attributes
        .iter()
        .find_map(|a| u32_attr(a, TCA_EGRESS_BLOCK));
    attributes.retain(|a| {
        u32_attr(a, TCA_INGRESS_BLOCK).is_none() && u32_attr(a, TCA_EGRESS_BLOCK).is_none()
    });
    Qdisc {
        ifindex: m.header.index as u32,
        handle: m.header.handle.into(),
        parent: m.header.parent.into(),
        kind,
        options,
        ingress_block,
        egress_block,
        attributes,
    }
}

/// Converts a class message.
pub fn class(m: &TcMessage) -> Class {
    let (kind, options, attributes, _) = split(m);
    Class {
        ifindex: m.header.index as u32,
        handle: m.header.handle.into(),
        parent: m.header.parent.into(),
        kind,
        options,
        attributes,
    }
}

/// Converts a filter message (`tcm_info`: prio in the upper 16 bits, protocol, network order,
/// in the lower).
pub fn filter(m: &TcMessage) -> Filter {
    let (kind, options, attributes, chain) = split(m);
    Filter {
        target: target(m),
        parent: m.header.parent.into(),
        chain: chain.unwrap_or(0),
        prio: (m.header.info >> 16) as u16,
        protocol: u16::from_be(m.header.info as u16),
        handle: m.header.handle.into(),
        kind,
        options,
        attributes,
    }
}

/// Converts a chain message.
pub fn chain(m: &TcMessage) -> Chain {
    let (_, _, _, index) = split(m);
    Chain {
        target: target(m),
        parent: m.header.parent.into(),
        index: index.unwrap_or(0),
    }
}

/// The actions of an action message.
pub fn actions(m: &TcActionMessage) -> Vec<Action> {
    m.attributes
        .iter()
        .flat_map(|a| match a {
            TcActionMessageAttribute::Actions(v) => v.as_slice(),
            _ => &[],
        })
        .filter_map(action_of)
        .collect()
}

#[cfg(test)]
mod tests {
    //! Messages captured from this machine's kernel (6.18) with a raw `AF_NETLINK` socket in a
    //! scratch netns; hex as received.
    use super::super::tests::hex;
    use super::super::{decode, split as split_msgs};
    use super::*;
    use crate::Event;

    fn tc(s: &str) -> Vec<Message> {
        let b = hex(s);
        split_msgs(&b)
            .filter_map(|(h, p)| match decode(&h, p).unwrap() {
                Event::Tc(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    // `tc qdisc add dev ta clsact; tc filter add dev ta ingress pref 5 u32 match ip dst
    // 10.0.0.1/32 action mirred egress redirect dev tb` (ta is ifindex 3, tb 2), then dumps of
    // the filters of ta's ingress hook, of mirred actions and of qdiscs.
    const TP: &str = "340000002c00020001000000d4250000000000000300000000000000f2ffffff00030500080001007533320008000b0000000000";
    const HT: &str = "400000002c00020001000000d4250000000000000300000000000080f2ffffff00030500080001007533320008000b00000000000c0002000800040001000000";
    const KNODE: &str = "140100002c00020001000000d4250000000000000300000000080080f2ffffff00030500080001007533320008000b0000000000e00002002400050001000100000000000000000000000000ffffffff0a0000011000000000000000080002000000008008000b0008000000a8000700a40001000b0001006d69727265640000440004001400010000000000000000000000000000000000140007000000000000000000000000000000000018000300000000000000000000000000000000000000000008000a0000000000480002002000020001000000000000000400000001000000010000000100000002000000240001001200000000000000120000000000000000000000000000000000000000000000";
    const ACTIONS: &str = "d00000003200020001000000d4250000000000000800030000000000b4000100b00000000b0001006d6972726564000044000400140001000000000000000000000000000000000014000700000000000000000000000000000000001800030000000000000000000000000000000000000000000c000900000000000300000008000a0000000000480002002000020001000000000000000400000001000000010000000100000002000000240001001200000000000000120000000000000000000000000000000000000000000000";
    const CLSACT: &str = "980000002400020001000000d425000000000000030000000000fffff1ffffff010000000b000100636c7361637400000400020005000c00000000003000070014000100000000000000000000000000000000001800030000000000000000000000000000000000000000002c00030000000000000000000000000000000000000000000000000000000000000000000000000000000000";

    fn filter_of(s: &str) -> Filter {
        match &tc(s)[..] {
            [Message::NewFilter(f)] => f.clone(),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn a_u32_instance_its_hash_table_and_its_key_node() {
        let (tp, ht, kn) = (filter_of(TP), filter_of(HT), filter_of(KNODE));
        for f in [&tp, &ht, &kn] {
            assert_eq!(
                (
                    f.target,
                    f.parent,
                    f.chain,
                    f.prio,
                    f.protocol,
                    f.kind.as_str()
                ),
                (Target::Dev(3), H_MIN_INGRESS, 0, 5, 3, "u32")
            );
        }
        assert_eq!(
            (tp.handle, ht.handle, kn.handle),
            (0, 0x8000_0000, 0x8000_0800)
        );
        assert!(tp.options.is_empty());
        assert!(ht
            .options
            .contains(&TcOption::U32(TcFilterU32Option::Divisor(1))));
        // The key: dst 10.0.0.1/32 at offset 16.
        let sel = kn.options.iter().find_map(|o| match o {
            TcOption::U32(TcFilterU32Option::Selector(s)) => Some(s.clone()),
            _ => None,
        });
        let k = &sel.expect("selector").keys[0];
        assert_eq!((k.val, k.mask, k.off), (0x0a00_0001, u32::MAX, 16));
        // Its action, counters and reference counts removed (the message says ref 1 bind 1:
        // the state counts them, state/tc.rs).
        let acts: Vec<Action> = filter_actions(&kn).filter_map(action_of).collect();
        assert_eq!(acts.len(), 1);
        assert_eq!((acts[0].kind.as_str(), acts[0].index), ("mirred", 1));
        assert_eq!((acts[0].refcnt, acts[0].bindcnt), (0, 0));
        assert!(!format!("{:?}", kn.options).contains("Pnct"));
        assert!(!format!("{:?}", acts[0].attributes).contains("Stats"));
        assert!(!format!("{:?}", acts[0].options).contains("Tm("));
    }

    #[test]
    fn a_dumped_action_and_a_clsact_qdisc() {
        let v = tc(ACTIONS);
        let [Message::NewActions(a)] = &v[..] else {
            panic!("{v:?}")
        };
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].kind.as_str(), a[0].index, a[0].refcnt, a[0].bindcnt),
            ("mirred", 1, 1, 1)
        );
        // The same parameters as the filter carries (an action dump adds `used_hw_stats`).
        let kn = filter_of(KNODE);
        let inline: Vec<Action> = filter_actions(&kn).filter_map(action_of).collect();
        assert!(a[0].options.generic().is_some());
        assert_eq!(inline[0].options, a[0].options);
        let v = tc(CLSACT);
        let [Message::NewQdisc(q)] = &v[..] else {
            panic!("{v:?}")
        };
        assert_eq!(
            (
                q.ifindex,
                q.handle,
                q.parent,
                q.kind.as_str(),
                q.ingress_block
            ),
            (3, 0xffff_0000, H_INGRESS, "clsact", None)
        );
    }

    /// `tc filter add dev d2 egress pref 1 protocol all matchall action mirred egress redirect
    /// dev p2` on Debian's 6.1 (an `ingress` qdisc on d2): the one RTM_NEWTFILTER announced,
    /// received on RTNLGRP_TC in the VM, has handle 0 and no options; the filter (handle 1, its
    /// action) is only in the dump.
    const MATCHALL_61: &str = "3c0000002c00050647cd0f6bf8000000000000000300000000000000f3ffffff000301000d0001006d61746368616c6c0000000008000b0000000000";

    #[test]
    fn a_filter_announced_without_its_handle_is_re_dumped() {
        let mut t = crate::state::tc::Tc::default();
        let v = tc(MATCHALL_61);
        let [Message::NewFilter(f)] = &v[..] else {
            panic!("{v:?}")
        };
        assert_eq!(
            (f.kind.as_str(), f.handle, f.options.len()),
            ("matchall", 0, 0)
        );
        t.apply(v[0].clone());
        assert!(t.want_redump);
    }

    #[test]
    fn the_bound_action_counts_are_computed_from_the_filters() {
        let mut t = crate::state::tc::Tc::default();
        for m in tc(KNODE) {
            t.apply(m);
        }
        let a = t.actions();
        assert_eq!((a[0].refcnt, a[0].bindcnt), (1, 1));
        // An inline action goes with its last filter, unannounced.
        for m in tc(KNODE) {
            if let Message::NewFilter(f) = m {
                t.apply(Message::DelFilter(f));
            }
        }
        assert!(t.actions().is_empty());
        // A standalone one (`tc actions add`: a reference of its own) stays, unbound.
        let v = tc(ACTIONS);
        let Message::NewActions(mut a) = v[0].clone() else {
            panic!()
        };
        a[0].refcnt = 2;
        t.apply(Message::NewActions(a));
        for m in tc(KNODE) {
            t.apply(m);
        }
        assert_eq!((t.actions()[0].refcnt, t.actions()[0].bindcnt), (2, 1));
        t.filters.clear();
        assert_eq!((t.actions()[0].refcnt, t.actions()[0].bindcnt), (1, 0));
    }
}
