//! tc: qdiscs, classes, chains, filters and actions as the kernel announces them, and what it
//! changes without a message (docs/netlink-gaps.md section "tc"), found by experiment on 6.18:
//!
//! - deleting a qdisc announces the qdisc (and each chain of its blocks) only: its classes,
//!   the qdiscs under them and every filter of its blocks go silently (inferred here);
//! - deleting a root qdisc brings back the device's default one (`noqueue`, `pfifo_fast`,
//!   `mq`...) unannounced, and `mq` creates its per-queue children unannounced (re-dumped);
//! - a device's first `up` attaches its default root qdisc (`noqueue` on veth), unannounced
//!   (re-dumped when a device without a root qdisc goes up);
//! - deleting a device announces nothing of its tc state but its chains (inferred);
//! - unbinding a shared block from its last qdisc destroys it, its filters silently
//!   (inferred);
//! - deleting a classifier instance's last filter (or the whole instance: handle 0) removes the
//!   instance, whose own dump entry (the line without `fh`) is never announced, nor u32's root
//!   hash table (`fh 800:`) when the instance is created (the instance inferred; a new u32
//!   instance re-dumped for its hash table's handle);
//! - an action's `bind` count is the number of filters holding it and its `ref` count that plus
//!   the references `tc actions add` took, neither announced when a filter comes or goes: the
//!   mirror keeps each action's own references and counts the bindings
//!   ([`Tc::actions`]); an action created inline with a filter lives as long as it is bound.
//! - on 6.1, adding a matchall filter announces one RTM_NEWTFILTER with handle 0 and no options,
//!   not the filter (re-dumped on any RTM_NEWTFILTER with handle 0);
//! - on 6.18, replacing a u32 key node (`tc filter replace ... handle 800::800 u32 ...`)
//!   announces it with its old actions (`tc monitor` prints `replaced filter ...` with the
//!   replaced action's index and target): a filter announced again is re-dumped.
//!
//! u32 keeps its hash tables and key nodes per qdisc (or shared block), and the dump of a u32
//! instance lists every one of its prio there, whichever chain, class or clsact hook the
//! instance is in: a key node added through one instance shows under all of that prio (as
//! `tc filter show` lists them, and the mirror holds them), bound to its actions once. The
//! instance goes only with the last key node of its qdisc when it is the only u32 instance
//! there.
//!
//! Chains are announced (implicit creation by a filter included), but a class's block (and
//! clsact's egress hook) reports its chains under its qdisc's handle: one chain key can stand
//! for several chains, as in `tc chain show`'s output. The mirror keeps the key while any block
//! it stands for still has a filter in that chain (an explicit empty chain of a second block
//! under the same key is lost with the first's deletion: not inferred).
//!
//! An `ingress` qdisc has a single block, whichever parent a filter names (`ffff:`,
//! `ingress`, `egress`): notifications carry the parent as requested, dumps the dumped one; the
//! mirror files them all under `ingress` (`ffff:fff2`).

use crate::netlink::tc::{
    action_of, filter_actions, Action, Chain, Class, Filter, Message, Qdisc, Target, H_ROOT,
};
use std::collections::BTreeMap;

/// (target, parent, chain, prio, handle) of a filter.
pub type FilterKey = (Target, u32, u32, u16, u32);

fn major(h: u32) -> u32 {
    h & 0xffff_0000
}

/// What u32 keeps its hash tables in (`tc_u_common`): a shared block, else the qdisc.
fn u32_common(target: Target, parent: u32) -> (Target, u32) {
    match target {
        Target::Block(_) => (target, 0),
        Target::Dev(_) => (target, major(parent)),
    }
}

/// u32's node bits of a filter handle: 0 for a hash table, else a key node.
fn u32_node(h: u32) -> u32 {
    h & 0xfff
}

/// The tc state of one namespace.
#[derive(Clone, Debug, Default)]
pub struct Tc {
    /// Qdiscs by (ifindex, parent).
    pub qdiscs: BTreeMap<(u32, u32), Qdisc>,
    /// Classes by (ifindex, handle).
    pub classes: BTreeMap<(u32, u32), Class>,
    /// Filters, classifier instances (handle 0) included.
    pub filters: BTreeMap<FilterKey, Filter>,
    /// Chains, by (target, reported parent, index).
    pub chains: std::collections::BTreeSet<Chain>,
    /// Actions as the kernel last reported them (standalone or bound), by (kind, index).
    pub reported: BTreeMap<(String, u32), Action>,
    /// Set when the kernel changed something the state cannot infer: the source re-dumps tc.
    pub want_redump: bool,
    /// What changed since the plugin API's tc objects were last derived
    /// (`State::sync_tc`).
    pub dirty: TcDirty,
}

/// What changed in [`Tc`] since its API objects were last derived: a filter message (not u32's,
/// whose key nodes are listed under several instances) touches its filter and the actions'
/// counts; an action message the actions and the filters holding them; anything else (qdiscs,
/// classes, chains, devices, dumps: what takes filters with it silently) everything.
#[derive(Clone, Debug, Default)]
pub struct TcDirty {
    /// Everything is derived anew.
    pub all: bool,
    /// These filters are.
    pub filters: std::collections::BTreeSet<FilterKey>,
    /// These actions are (their counts or parameters changed).
    pub actions: std::collections::BTreeSet<(String, u32)>,
}

fn fkey(f: &Filter) -> FilterKey {
    (f.target, f.parent, f.chain, f.prio, f.handle)
}

impl Tc {
    /// Notes what `m` changes of the API objects (see [`TcDirty`]).
    fn note_dirty(&mut self, m: &Message) {
        match m {
            Message::NewFilter(f) | Message::DelFilter(f)
                if f.handle != 0 && !f.kind.is_empty() && f.kind != "u32" =>
            {
                let k = fkey(&self.canonical(f.clone()));
                // The actions it held and holds: their binding counts change.
                let held = self.filters.get(&k).into_iter().chain([f]);
                let keys: Vec<(String, u32)> = held
                    .flat_map(|f| filter_actions(f).filter_map(crate::netlink::tc::action_key))
                    .collect();
                self.dirty.actions.extend(keys);
                self.dirty.filters.insert(k);
            }
            Message::NewActions(v) | Message::DelActions(v) => {
                let keys: std::collections::BTreeSet<(&str, u32)> =
                    v.iter().map(|a| (a.kind.as_str(), a.index)).collect();
                let holding: Vec<FilterKey> = self
                    .filters
                    .iter()
                    .filter(|(_, f)| {
                        filter_actions(f)
                            .filter_map(action_of)
                            .any(|a| keys.contains(&(a.kind.as_str(), a.index)))
                    })
                    .map(|(k, _)| *k)
                    .collect();
                self.dirty.filters.extend(holding);
                let keys: Vec<(String, u32)> =
                    v.iter().map(|a| (a.kind.clone(), a.index)).collect();
                self.dirty.actions.extend(keys);
            }
            _ => self.dirty.all = true,
        }
    }

    /// Applies a message.
    pub fn apply(&mut self, m: Message) {
        self.note_dirty(&m);
        match m {
            Message::NewQdisc(q) => {
                if q.parent == H_ROOT && matches!(q.kind.as_str(), "mq" | "mqprio") {
                    self.want_redump = true;
                }
                self.qdiscs.insert((q.ifindex, q.parent), q);
            }
            Message::DelQdisc(q) => self.del_qdisc(q.ifindex, q.parent),
            Message::NewClass(c) => {
                self.classes.insert((c.ifindex, c.handle), c);
            }
            Message::DelClass(c) => {
                self.classes.remove(&(c.ifindex, c.handle));
            }
            Message::NewFilter(f) => {
                if f.handle == 0 {
                    // An instance's own entry is never announced, but 6.1 announces a new
                    // matchall filter so: handle 0, no options. The filter is in the dump.
                    self.want_redump = true;
                }
                let f = self.canonical(f);
                self.new_filter(f)
            }
            Message::DelFilter(f) => {
                let f = self.canonical(f);
                self.del_filter(&f)
            }
            Message::NewChain(c) => {
                self.chains.insert(c);
            }
            Message::DelChain(c) => {
                let used = self.filters.keys().any(|k| {
                    k.0 == c.target
                        && k.2 == c.index
                        && (matches!(c.target, Target::Block(_)) || major(k.1) == major(c.parent))
                });
                if !used {
                    self.chains.remove(&c);
                }
            }
            Message::NewActions(v) => {
                for a in v {
                    if a.index == 0 {
                        self.want_redump = true;
                        continue;
                    }
                    self.reported.insert((a.kind.clone(), a.index), a);
                }
            }
            Message::DelActions(v) => {
                for a in v {
                    if a.index == 0 {
                        // A flush (`tc actions flush action KIND`): its kind only.
                        self.want_redump = true;
                        continue;
                    }
                    self.reported.remove(&(a.kind.clone(), a.index));
                }
            }
        }
    }

    /// Adds a dumped message (dumps list everything, instances and hash tables included:
    /// nothing to infer).
    pub fn add_dumped(&mut self, m: Message) {
        match m {
            Message::NewQdisc(q) => {
                self.qdiscs.insert((q.ifindex, q.parent), q);
            }
            Message::NewClass(c) => {
                self.classes.insert((c.ifindex, c.handle), c);
            }
            Message::NewFilter(f) => {
                let f = self.canonical(f);
                self.filters.insert(fkey(&f), f);
            }
            Message::NewChain(c) => {
                self.chains.insert(c);
            }
            Message::NewActions(v) => {
                for a in v {
                    self.reported.insert((a.kind.clone(), a.index), a);
                }
            }
            _ => {}
        }
    }

    /// A filter of an `ingress` qdisc under `ingress`, whatever parent it was named by.
    /// The filter as the mirror keeps it (an `ingress` qdisc's filters under `ingress`).
    pub fn canonical(&self, mut f: Filter) -> Filter {
        if let Target::Dev(i) = f.target {
            if major(f.parent) == 0xffff_0000
                && self
                    .qdiscs
                    .get(&(i, crate::netlink::tc::H_INGRESS))
                    .is_some_and(|q| q.kind == "ingress")
            {
                f.parent = crate::netlink::tc::H_MIN_INGRESS;
            }
        }
        f
    }

    fn new_filter(&mut self, f: Filter) {
        if f.handle != 0 && self.filters.contains_key(&fkey(&f)) {
            // A replace (`tc filter replace`): 6.18 announces a u32 key node replaced with its
            // old actions (`replaced filter ... index 1` while the kernel now holds index 2),
            // so the replacement is read from a dump. Other classifiers alike, to be safe.
            self.want_redump = true;
        }
        let tp = (f.target, f.parent, f.chain, f.prio, 0);
        if f.handle != 0 && !self.filters.contains_key(&tp) {
            // A new classifier instance: its own entry is never announced.
            if f.kind == "u32" {
                // Nor its root hash table, whose handle the kernel picks, nor the hash tables
                // of the instances it now lists (see `u32_listers`).
                self.want_redump = true;
            }
            let inst = Filter {
                handle: 0,
                options: Vec::new(),
                attributes: Vec::new(),
                ..f.clone()
            };
            self.filters.insert(tp, inst);
        }
        for a in filter_actions(&f).filter_map(action_of) {
            let k = (a.kind.clone(), a.index);
            match self.reported.entry(k) {
                // The filter's copy is the action as it is now (newer than the last action
                // message: a filter replaced with an inline action of a reused index).
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let e = e.get_mut();
                    e.options = a.options;
                    e.attributes = a.attributes;
                }
                // An inline action: created with the filter (no reference of its own).
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(Action {
                        refcnt: a.bindcnt,
                        ..a
                    });
                }
            }
        }
        if f.kind == "u32" && f.handle != 0 {
            // Listed under every u32 instance of its prio sharing its hash tables.
            for at in self.u32_listers(&f) {
                let mut c = f.clone();
                (c.target, c.parent, c.chain) = (at.0, at.1, at.2);
                self.filters.insert(fkey(&c), c);
            }
        }
        self.filters.insert(fkey(&f), f);
    }

    /// The u32 instances (target, parent, chain) whose dump lists a u32 hash table or key
    /// node of `f`'s prio: u32 keeps its hash tables per qdisc (or shared block), and an
    /// instance's dump walks every one of its prio, whichever chain or block (class, hook) the
    /// instance sits in.
    fn u32_listers(&self, f: &Filter) -> Vec<(Target, u32, u32)> {
        let c = u32_common(f.target, f.parent);
        self.filters
            .iter()
            .filter(|(k, x)| {
                k.4 == 0 && x.kind == "u32" && k.3 == f.prio && u32_common(k.0, k.1) == c
            })
            .map(|(k, _)| (k.0, k.1, k.2))
            .collect()
    }

    fn del_filter(&mut self, f: &Filter) {
        let inst =
            |k: &FilterKey| k.0 == f.target && k.1 == f.parent && k.2 == f.chain && k.3 == f.prio;
        if f.handle == 0 {
            let u32 = self
                .filters
                .get(&(f.target, f.parent, f.chain, f.prio, 0))
                .is_some_and(|x| x.kind == "u32");
            self.filters.retain(|k, _| !inst(k));
            if u32 {
                // Its hash tables go with it, from the other instances' listings too: which
                // are its own a dump does not say.
                self.want_redump = true;
            }
            return;
        }
        if f.kind == "u32" {
            // Gone from every listing; the instance goes only when it is the last u32 instance
            // of its qdisc (or block) and no key node is left there (`u32_delete`).
            let (c, prio, h) = (u32_common(f.target, f.parent), f.prio, f.handle);
            self.filters
                .retain(|k, _| !(k.4 == h && k.3 == prio && u32_common(k.0, k.1) == c));
            let of_common =
                |k: &FilterKey, x: &Filter| x.kind == "u32" && u32_common(k.0, k.1) == c;
            let instances = self
                .filters
                .iter()
                .filter(|(k, x)| k.4 == 0 && of_common(k, x))
                .count();
            let knodes = self
                .filters
                .iter()
                .any(|(k, x)| u32_node(k.4) != 0 && of_common(k, x));
            if instances == 1 && !knodes {
                self.filters.retain(|k, x| !of_common(k, x));
            }
            return;
        }
        self.filters.remove(&fkey(f));
        // The instance goes with its last filter.
        let left = self.filters.iter().any(|(k, _)| inst(k) && k.4 != 0);
        if !left {
            self.filters.retain(|k, _| !inst(k));
        }
    }

    fn del_qdisc(&mut self, ifindex: u32, parent: u32) {
        let Some(q) = self.qdiscs.remove(&(ifindex, parent)) else {
            return;
        };
        if parent == H_ROOT {
            self.want_redump = true;
        }
        let m = major(q.handle);
        // Its classes, the qdiscs under them (recursively), its blocks' filters.
        self.classes
            .retain(|k, _| !(k.0 == ifindex && major(k.1) == m));
        let children: Vec<u32> = self
            .qdiscs
            .iter()
            .filter(|(k, c)| k.0 == ifindex && major(c.parent) == m && c.parent != H_ROOT)
            .map(|(k, _)| k.1)
            .collect();
        for c in children {
            self.del_qdisc(ifindex, c);
        }
        self.filters
            .retain(|k, _| !(k.0 == Target::Dev(ifindex) && major(k.1) == m));
        for b in [q.ingress_block, q.egress_block].into_iter().flatten() {
            self.unbound(b);
        }
    }

    /// A shared block lost a binding: gone with its filters when it was the last.
    fn unbound(&mut self, block: u32) {
        let bound = self
            .qdiscs
            .values()
            .any(|q| q.ingress_block == Some(block) || q.egress_block == Some(block));
        if !bound {
            self.filters.retain(|k, _| k.0 != Target::Block(block));
        }
    }

    /// A device went up: its default root qdisc, attached on the first `up`, is unannounced.
    pub fn link_up(&mut self, ifindex: u32) {
        if !self.qdiscs.contains_key(&(ifindex, H_ROOT)) {
            self.want_redump = true;
        }
    }

    /// A device is gone, with all its tc state.
    pub fn del_dev(&mut self, ifindex: u32) {
        let roots: Vec<u32> = self
            .qdiscs
            .keys()
            .filter(|k| k.0 == ifindex)
            .map(|k| k.1)
            .collect();
        let had = !roots.is_empty();
        for p in roots {
            self.del_qdisc(ifindex, p);
        }
        self.want_redump = false;
        self.classes.retain(|k, _| k.0 != ifindex);
        self.filters.retain(|k, _| k.0 != Target::Dev(ifindex));
        self.chains.retain(|c| c.target != Target::Dev(ifindex));
        // Actions redirecting to the device now name none (mirred's `to_dev *`): re-dumped.
        if had || !self.reported.is_empty() {
            self.want_redump = true;
        }
    }

    /// Every action as `tc actions list` shows it: those holding references of their own
    /// (`tc actions add`) and those bound to filters, with `bindcnt` the filters holding it
    /// and `refcnt` that plus its own references.
    pub fn actions(&self) -> Vec<Action> {
        let bound = self.bindings();
        self.reported
            .keys()
            .filter_map(|k| self.action_bound(k, &bound))
            .collect()
    }

    /// How many filters hold each action (a u32 key node listed under several instances,
    /// `u32_listers`, is bound once).
    fn bindings(&self) -> BTreeMap<(String, u32), i32> {
        let mut bound: BTreeMap<(String, u32), i32> = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for (k, f) in &self.filters {
            if f.kind == "u32" && !seen.insert((u32_common(k.0, k.1), k.3, k.4)) {
                continue;
            }
            for k in filter_actions(f).filter_map(crate::netlink::tc::action_key) {
                *bound.entry(k).or_default() += 1;
            }
        }
        bound
    }

    /// The action under `k` as `tc actions list` shows it, given [`Tc::bindings`]; `None`
    /// when it is gone (no reference of its own, no filter holding it).
    fn action_bound(
        &self,
        k: &(String, u32),
        bound: &BTreeMap<(String, u32), i32>,
    ) -> Option<Action> {
        let a = self.reported.get(k)?;
        let own = a.refcnt - a.bindcnt;
        let bind = bound.get(k).copied().unwrap_or(0);
        (own > 0 || bind > 0).then(|| Action {
            refcnt: own.max(0) + bind,
            bindcnt: bind,
            ..a.clone()
        })
    }

    /// The state as the plugin API's tc objects (API 1.3; [`crate::netlink::tc_objects`]):
    /// qdiscs, classes, the actions `tc actions list` shows, and the filters (not the
    /// classifier instances), each with its actions as they are now and, for a shared block's,
    /// the devices bound to it. u32 key nodes listed under several instances are one filter
    /// each where the kernel holds them.
    pub fn objects(&self) -> Vec<ekho_plugin_api::Object> {
        use crate::netlink::tc_objects as conv;
        use ekho_plugin_api::Object;
        let mut out = Vec::new();
        out.extend(self.qdiscs.values().map(|q| Object::Qdisc(conv::qdisc(q))));
        out.extend(
            self.classes
                .values()
                .map(|c| Object::TcClass(conv::class(c))),
        );
        out.extend(
            self.actions()
                .iter()
                .map(|a| Object::TcAction(conv::action(a))),
        );
        let blocks = self.blocks();
        let latest =
            |kind: &str, index: u32| self.reported.get(&(kind.to_string(), index)).cloned();
        for f in self.filters.values() {
            let bindings = match f.target {
                Target::Block(b) => blocks.get(&b).map(Vec::as_slice).unwrap_or(&[]),
                Target::Dev(_) => &[],
            };
            if let Some(o) = conv::filter(f, bindings, &latest) {
                out.push(Object::TcFilter(o));
            }
        }
        out
    }

    /// The shared blocks and the (ifindex, hook parent) bound to each.
    pub fn blocks(&self) -> BTreeMap<u32, Vec<(u32, u32)>> {
        use crate::netlink::tc::{H_MIN_EGRESS, H_MIN_INGRESS};
        let mut m: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
        for q in self.qdiscs.values() {
            if let Some(b) = q.ingress_block {
                m.entry(b).or_default().push((q.ifindex, H_MIN_INGRESS));
            }
            if let Some(b) = q.egress_block {
                m.entry(b).or_default().push((q.ifindex, H_MIN_EGRESS));
            }
        }
        m
    }

    /// Entries per list, as `ekho dump qdiscs|classes|filters|chains|actions` lists them (for
    /// `ekho status` and the metrics).
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        [
            ("qdiscs", self.qdiscs.len()),
            ("classes", self.classes.len()),
            ("filters", self.filters.len()),
            ("chains", self.chains.len()),
            ("actions", self.actions().len()),
        ]
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.qdiscs.is_empty()
            && self.classes.is_empty()
            && self.filters.is_empty()
            && self.chains.is_empty()
            && self.reported.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::tc::{H_INGRESS, H_MIN_INGRESS};

    fn qdisc(ifindex: u32, handle: u32, parent: u32, kind: &str) -> Qdisc {
        Qdisc {
            ifindex,
            handle,
            parent,
            kind: kind.into(),
            options: vec![],
            ingress_block: None,
            egress_block: None,
            attributes: vec![],
        }
    }

    fn filter(target: Target, parent: u32, prio: u16, handle: u32) -> Filter {
        Filter {
            target,
            parent,
            chain: 0,
            prio,
            protocol: 3,
            handle,
            kind: "u32".into(),
            options: vec![],
            attributes: vec![],
        }
    }

    fn handles(t: &Tc) -> Vec<u32> {
        t.filters.keys().map(|k| k.4).collect()
    }

    #[test]
    fn a_qdisc_takes_its_classes_children_and_filters_silently() {
        let mut t = Tc::default();
        t.apply(Message::NewQdisc(qdisc(2, 0x1_0000, H_ROOT, "htb")));
        t.apply(Message::NewClass(Class {
            ifindex: 2,
            handle: 0x1_0010,
            parent: 0x1_0000,
            kind: "htb".into(),
            options: vec![],
            attributes: vec![],
        }));
        t.apply(Message::NewQdisc(qdisc(2, 0x10_0000, 0x1_0010, "pfifo")));
        t.apply(Message::NewQdisc(qdisc(
            2,
            0xffff_0000,
            H_INGRESS,
            "clsact",
        )));
        t.apply(Message::NewFilter(filter(
            Target::Dev(2),
            0x1_0000,
            5,
            0x8000_0800,
        )));
        t.apply(Message::NewFilter(filter(
            Target::Dev(2),
            H_MIN_INGRESS,
            5,
            0x8000_0800,
        )));
        // The instance's own entry is inferred.
        assert_eq!(t.filters.len(), 4);
        t.want_redump = false;
        t.apply(Message::DelQdisc(qdisc(2, 0x1_0000, H_ROOT, "htb")));
        assert!(t.classes.is_empty());
        assert_eq!(t.qdiscs.len(), 1, "{:?}", t.qdiscs);
        assert!(t.filters.keys().all(|k| k.1 == H_MIN_INGRESS));
        assert!(
            t.want_redump,
            "the default root qdisc comes back unannounced"
        );
    }

    #[test]
    fn the_last_filter_takes_its_instance() {
        let mut t = Tc::default();
        let d = Target::Dev(2);
        t.apply(Message::NewFilter(filter(d, 0x1_0000, 5, 0x8000_0800)));
        t.apply(Message::NewFilter(filter(d, 0x1_0000, 5, 0x8000_0801)));
        // The root hash table, as a re-dump brings it.
        t.filters.insert(
            (d, 0x1_0000, 0, 5, 0x8000_0000),
            filter(d, 0x1_0000, 5, 0x8000_0000),
        );
        t.apply(Message::DelFilter(filter(d, 0x1_0000, 5, 0x8000_0800)));
        assert_eq!(handles(&t), vec![0, 0x8000_0000, 0x8000_0801]);
        t.apply(Message::DelFilter(filter(d, 0x1_0000, 5, 0x8000_0801)));
        assert!(t.filters.is_empty());
        t.apply(Message::NewFilter(filter(d, 0x1_0000, 5, 0x8000_0800)));
        t.apply(Message::NewFilter(filter(d, 0x1_0000, 6, 0x8010_0800)));
        // Deleting an instance (handle 0) takes all its filters.
        t.apply(Message::DelFilter(filter(d, 0x1_0000, 5, 0)));
        assert_eq!(handles(&t), vec![0, 0x8010_0800]);
    }

    #[test]
    fn a_shared_block_goes_with_its_last_binding_and_a_device_with_everything() {
        let mut t = Tc::default();
        for dev in [2, 3] {
            t.apply(Message::NewQdisc(Qdisc {
                ingress_block: Some(7),
                ..qdisc(dev, 0xffff_0000, H_INGRESS, "clsact")
            }));
        }
        t.apply(Message::NewChain(Chain {
            target: Target::Block(7),
            parent: 7,
            index: 0,
        }));
        t.apply(Message::NewFilter(filter(
            Target::Block(7),
            7,
            4,
            0x8000_0800,
        )));
        assert_eq!(t.blocks()[&7], vec![(2, H_MIN_INGRESS), (3, H_MIN_INGRESS)]);
        t.apply(Message::DelQdisc(qdisc(
            2,
            0xffff_0000,
            H_INGRESS,
            "clsact",
        )));
        assert_eq!(t.filters.len(), 2, "still bound to 3");
        t.del_dev(3);
        assert!(t.filters.is_empty() && t.qdiscs.is_empty());
        assert_eq!(
            t.counts(),
            [
                ("qdiscs", 0),
                ("classes", 0),
                ("filters", 0),
                ("chains", 1),
                ("actions", 0)
            ]
        );
        // Chains are announced, but a device's are inferred too.
        assert_eq!(t.chains.len(), 1, "the block's chain is announced");
    }

    #[test]
    fn class_blocks_report_chains_under_their_qdisc() {
        let mut t = Tc::default();
        let c = Chain {
            target: Target::Dev(2),
            parent: 0x1_0000,
            index: 0,
        };
        // Chain 0 of 1:'s block and of class 1:10's, both reported as `parent 1:`.
        t.apply(Message::NewChain(c));
        t.apply(Message::NewFilter(filter(
            Target::Dev(2),
            0x1_0000,
            5,
            0x8000_0800,
        )));
        t.apply(Message::NewChain(c));
        t.apply(Message::NewFilter(filter(
            Target::Dev(2),
            0x1_0010,
            5,
            0x8010_0800,
        )));
        t.apply(Message::DelFilter(filter(Target::Dev(2), 0x1_0000, 5, 0)));
        t.apply(Message::DelChain(c));
        assert!(
            t.chains.contains(&c),
            "the class's chain 0 still holds a filter"
        );
        t.apply(Message::DelFilter(filter(Target::Dev(2), 0x1_0010, 5, 0)));
        t.apply(Message::DelChain(c));
        assert!(t.chains.is_empty());
    }

    #[test]
    fn an_ingress_qdisc_has_one_block_whatever_the_parent() {
        let mut t = Tc::default();
        t.apply(Message::NewQdisc(qdisc(
            2,
            0xffff_0000,
            H_INGRESS,
            "ingress",
        )));
        let egress = filter(
            Target::Dev(2),
            crate::netlink::tc::H_MIN_EGRESS,
            3,
            0x8000_0800,
        );
        t.apply(Message::NewFilter(egress.clone()));
        t.add_dumped(Message::NewFilter(filter(
            Target::Dev(2),
            H_MIN_INGRESS,
            3,
            0x8000_0800,
        )));
        assert!(t.filters.keys().all(|k| k.1 == H_MIN_INGRESS));
        assert_eq!(t.filters.len(), 2, "{:?}", t.filters.keys());
        t.apply(Message::DelFilter(egress));
        assert!(t.filters.is_empty());
    }
}

/// The plugin API's tc kinds (API 1.3), derived from [`Tc`].
pub fn is_tc_kind(k: ekho_plugin_api::ObjectKind) -> bool {
    use ekho_plugin_api::ObjectKind as K;
    matches!(k, K::Qdisc | K::TcClass | K::TcAction | K::TcFilter)
}

impl super::State {
    /// Brings the tc objects in `objs` in line with `tc` when it changed: each is derived anew
    /// ([`Tc::objects`]) and only what differs is touched, so a batch emits exactly the tc
    /// objects it changed (an action replaced: every filter holding it). One pass over the tc
    /// state per batch that changed it.
    pub(super) fn sync_tc(&mut self) {
        let dirty = std::mem::take(&mut self.tc.dirty);
        if !dirty.all {
            return self.sync_tc_part(dirty);
        }
        let new = self.tc.objects();
        let keep: std::collections::BTreeSet<ekho_plugin_api::ObjectKey> =
            new.iter().map(|o| o.key()).collect();
        let gone: Vec<ekho_plugin_api::ObjectKey> = self
            .objs
            .keys()
            .filter(|k| is_tc_kind(k.kind()) && !keep.contains(k))
            .cloned()
            .collect();
        for k in gone {
            self.del(&k);
        }
        for o in new {
            if self.objs.get(&o.key()) != Some(&o) {
                self.put(o);
            }
        }
    }

    /// [`State::sync_tc`](super::State) for what a filter or action message changed: those
    /// filters, and the actions (their counts), not every filter again.
    fn sync_tc_part(&mut self, dirty: TcDirty) {
        use crate::netlink::tc_objects as conv;
        use ekho_plugin_api::{Object, ObjectKey};
        if dirty.filters.is_empty() && dirty.actions.is_empty() {
            return;
        }
        let blocks = self.tc.blocks();
        let latest =
            |kind: &str, index: u32| self.tc.reported.get(&(kind.to_string(), index)).cloned();
        let mut puts = Vec::new();
        let mut dels = Vec::new();
        for k in &dirty.filters {
            let key = ObjectKey::TcFilter {
                target: conv::target(k.0),
                parent: k.1,
                chain: k.2,
                prio: k.3,
                handle: k.4,
            };
            let bindings = match k.0 {
                Target::Block(b) => blocks.get(&b).map(Vec::as_slice).unwrap_or(&[]),
                Target::Dev(_) => &[],
            };
            match self
                .tc
                .filters
                .get(k)
                .and_then(|f| conv::filter(f, bindings, &latest))
            {
                Some(o) => puts.push(Object::TcFilter(o)),
                None => dels.push(key),
            }
        }
        if !dirty.actions.is_empty() {
            let bound = self.tc.bindings();
            for k in &dirty.actions {
                match self.tc.action_bound(k, &bound) {
                    Some(a) => puts.push(Object::TcAction(conv::action(&a))),
                    None => dels.push(ObjectKey::TcAction {
                        kind: k.0.as_str().into(),
                        index: k.1,
                    }),
                }
            }
        }
        for k in dels {
            self.del(&k);
        }
        for o in puts {
            if self.objs.get(&o.key()) != Some(&o) {
                self.put(o);
            }
        }
    }
}

#[cfg(test)]
mod object_tests {
    use crate::netlink::tc::{Message, H_INGRESS, H_MIN_INGRESS};
    use crate::netlink::tc_objects::tests::filters;
    use crate::state::tests::state;
    use crate::Event;
    use ekho_plugin_api::object::tc::TcActionParams;
    use ekho_plugin_api::{Change, Object, ObjectKind};

    fn kinds(c: &[Change]) -> Vec<(&'static str, ObjectKind)> {
        c.iter()
            .map(|c| {
                let op = match c {
                    Change::Add(_) => "add",
                    Change::Update { .. } => "update",
                    Change::Remove(_) => "remove",
                };
                (op, c.key().kind())
            })
            .collect()
    }

    #[test]
    fn tc_messages_become_the_api_objects_and_an_action_replace_updates_its_filter() {
        let mut s = state();
        let clsact = crate::netlink::tc::Qdisc {
            ifindex: 2,
            handle: 0xffff_0000,
            parent: H_INGRESS,
            kind: "clsact".into(),
            options: vec![],
            ingress_block: None,
            egress_block: None,
            attributes: vec![],
        };
        s.apply(Event::Tc(Message::NewQdisc(clsact.clone())));
        let mut f = filters("d0 ingress")[1].clone();
        f.target = crate::netlink::tc::Target::Dev(2);
        assert_eq!(f.parent, H_MIN_INGRESS);
        s.apply(Event::Tc(Message::NewFilter(f.clone())));
        let c = s.flush();
        // The qdisc, the three inline actions, the filter (not its classifier instance).
        assert_eq!(
            kinds(&c),
            [
                ("add", ObjectKind::Qdisc),
                ("add", ObjectKind::TcAction),
                ("add", ObjectKind::TcAction),
                ("add", ObjectKind::TcAction),
                ("add", ObjectKind::TcFilter)
            ]
        );
        // Nothing changed: nothing emitted.
        s.apply(Event::Tc(Message::NewFilter(f.clone())));
        assert_eq!(s.flush(), vec![]);
        // `tc actions replace action vlan ... index 4`: the action and the filter holding it.
        let mut vlan = crate::netlink::tc::filter_actions(&f)
            .find_map(|a| crate::netlink::tc::action_of(a).filter(|a| a.kind == "vlan"))
            .unwrap();
        if let crate::netlink::tc_act::ActionOptions::Vlan(v) = &mut vlan.options {
            for o in v.iter_mut() {
                if let crate::netlink::tc_act::TcActionVlanOption::PushVlanId(id) = o {
                    *id = 9;
                }
            }
        }
        vlan.refcnt = 1;
        vlan.bindcnt = 1;
        s.apply(Event::Tc(Message::NewActions(vec![vlan])));
        let c = s.flush();
        assert_eq!(
            kinds(&c),
            [
                ("update", ObjectKind::TcAction),
                ("update", ObjectKind::TcFilter)
            ]
        );
        let Change::Update {
            new: Object::TcFilter(nf),
            ..
        } = &c[1]
        else {
            panic!("{c:?}")
        };
        assert!(matches!(
            nf.actions[0].params,
            TcActionParams::Vlan { id: 9, .. }
        ));
        // The qdisc deleted: its filter and inline actions go silently, and are removed.
        s.apply(Event::Tc(Message::DelQdisc(clsact)));
        let c = s.flush();
        assert_eq!(
            kinds(&c),
            [
                ("remove", ObjectKind::TcFilter),
                ("remove", ObjectKind::TcAction),
                ("remove", ObjectKind::TcAction),
                ("remove", ObjectKind::TcAction),
                ("remove", ObjectKind::Qdisc)
            ]
        );
    }
}
