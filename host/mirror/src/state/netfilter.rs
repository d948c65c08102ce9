//! nftables: tables, chains, rule handles and flowtables as the kernel announces them, and the
//! objects derived from them (a [`NfChain`] per base chain, with its rule count and its table's
//! dormancy; a [`NfFlowtable`] per flowtable).
//!
//! What the kernel tells: every object of a transaction is notified (deleting a table notifies
//! each of its rules, chains and flowtables first); a chain's deletion carries only its table,
//! name and handle; a table's update (`flags dormant`) carries its flags. Regular chains are
//! kept (their rules too) but are not objects.

use super::State;
use crate::netlink::nftables::{Chain, Flowtable, Message, Table};
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::netfilter::NFT_TABLE_F_DORMANT;
use ekho_plugin_api::object::*;
use std::collections::{BTreeMap, BTreeSet};

/// (family, table) of a table.
pub type TableKey = (NfFamily, String);
/// (family, table, name) of a chain or flowtable.
pub type NameKey = (NfFamily, String, String);

/// The ruleset as far as the mirror reads it.
#[derive(Default, Clone, Debug)]
pub struct Nft {
    tables: BTreeMap<TableKey, Table>,
    chains: BTreeMap<NameKey, Chain>,
    /// Rule handles per chain.
    rules: BTreeMap<NameKey, BTreeSet<u64>>,
    flowtables: BTreeMap<NameKey, Flowtable>,
}

impl Nft {
    /// Applies a message; returns the table it concerns (whose objects may have changed).
    pub fn apply(&mut self, m: Message) -> Option<TableKey> {
        match m {
            Message::NewTable(t) => {
                let k = (t.family, t.name.clone());
                self.tables.insert(k.clone(), t);
                Some(k)
            }
            Message::DelTable(t) => {
                let k = (t.family, t.name);
                self.tables.remove(&k);
                let of = |x: &NameKey| x.0 == k.0 && x.1 == k.1;
                self.chains.retain(|x, _| !of(x));
                self.rules.retain(|x, _| !of(x));
                self.flowtables.retain(|x, _| !of(x));
                Some(k)
            }
            Message::NewChain(c) => {
                let k = (c.family, c.table.clone(), c.name.clone());
                match self.chains.get_mut(&k) {
                    // An update carries what changed.
                    Some(old) => {
                        if c.hook.is_some() {
                            old.hook = c.hook;
                        }
                        if c.policy.is_some() {
                            old.policy = c.policy;
                        }
                        if c.chain_type.is_some() {
                            old.chain_type = c.chain_type;
                        }
                        if c.flags.is_some() {
                            old.flags = c.flags;
                        }
                        if c.handle != 0 {
                            old.handle = c.handle;
                        }
                    }
                    None => {
                        self.chains.insert(k.clone(), c);
                    }
                }
                Some((k.0, k.1))
            }
            Message::DelChain(c) => {
                let k = (c.family, c.table, c.name);
                self.chains.remove(&k);
                self.rules.remove(&k);
                Some((k.0, k.1))
            }
            Message::NewRule(r) => {
                let k = (r.family, r.table, r.chain);
                self.rules.entry(k.clone()).or_default().insert(r.handle);
                Some((k.0, k.1))
            }
            Message::DelRule(r) => {
                let k = (r.family, r.table, r.chain);
                if let Some(set) = self.rules.get_mut(&k) {
                    set.remove(&r.handle);
                    if set.is_empty() {
                        self.rules.remove(&k);
                    }
                }
                Some((k.0, k.1))
            }
            Message::NewFlowtable(f) => {
                let k = (f.family, f.table.clone(), f.name.clone());
                match self.flowtables.get_mut(&k) {
                    // An update (devices added) may omit the rest.
                    Some(old) => {
                        if let (Some(h), Some(new)) = (old.hook.as_mut(), f.hook.as_ref()) {
                            for d in &new.devices {
                                if !h.devices.contains(d) {
                                    h.devices.push(d.clone());
                                }
                            }
                        } else if f.hook.is_some() {
                            old.hook = f.hook;
                        }
                        old.flags = f.flags;
                    }
                    None => {
                        self.flowtables.insert(k.clone(), f);
                    }
                }
                Some((k.0, k.1))
            }
            Message::DelFlowtable(f) => {
                let k = (f.family, f.table, f.name);
                self.flowtables.remove(&k);
                Some((k.0, k.1))
            }
            Message::NewGen(_) => None,
        }
    }

    /// The objects of table `t` (none when it is gone), in key order.
    pub fn objects_of(&self, t: &TableKey) -> Vec<Object> {
        let dormant = self
            .tables
            .get(t)
            .is_some_and(|x| x.flags & NFT_TABLE_F_DORMANT != 0);
        let in_table = |k: &NameKey| k.0 == t.0 && k.1 == t.1;
        let mut out = Vec::new();
        for (k, c) in self.chains.iter().filter(|(k, _)| in_table(k)) {
            let Some(h) = &c.hook else {
                continue; // a regular chain
            };
            out.push(Object::NfChain(NfChain {
                family: c.family,
                table: c.table.as_str().into(),
                name: c.name.as_str().into(),
                handle: c.handle,
                chain_type: c.chain_type.as_deref().unwrap_or("").into(),
                hook: h.num,
                priority: h.priority,
                policy: c.policy.unwrap_or(netfilter::verdict::ACCEPT),
                devices: h
                    .devices
                    .iter()
                    .map(|d| RString::from(d.as_str()))
                    .collect(),
                rules: self.rules.get(k).map_or(0, |s| s.len() as u32),
                flags: c.flags.unwrap_or(0),
                table_dormant: dormant,
            }));
        }
        for f in self
            .flowtables
            .iter()
            .filter(|(k, _)| in_table(k))
            .map(|x| x.1)
        {
            let h = f.hook.clone().unwrap_or_default();
            out.push(Object::NfFlowtable(NfFlowtable {
                family: f.family,
                table: f.table.as_str().into(),
                name: f.name.as_str().into(),
                handle: f.handle,
                hook: h.num,
                priority: h.priority,
                devices: h
                    .devices
                    .iter()
                    .map(|d| RString::from(d.as_str()))
                    .collect(),
                flags: f.flags,
                table_dormant: dormant,
            }));
        }
        out
    }

    /// Every table that holds something (tables, or chains/rules/flowtables seen without their
    /// table).
    pub fn tables(&self) -> BTreeSet<TableKey> {
        let mut s: BTreeSet<TableKey> = self.tables.keys().cloned().collect();
        for k in self
            .chains
            .keys()
            .chain(self.rules.keys())
            .chain(self.flowtables.keys())
        {
            s.insert((k.0, k.1.clone()));
        }
        s
    }

    /// Every derived object.
    pub fn objects(&self) -> Vec<Object> {
        self.tables()
            .iter()
            .flat_map(|t| self.objects_of(t))
            .collect()
    }
}

/// Whether `o` is an nftables object of table `t`.
pub fn in_table(o: &Object, t: &TableKey) -> bool {
    match o {
        Object::NfChain(c) => c.family == t.0 && c.table.as_str() == t.1,
        Object::NfFlowtable(f) => f.family == t.0 && f.table.as_str() == t.1,
        _ => false,
    }
}

impl State {
    /// An nftables message: applied to the ruleset; its table's objects are derived at the
    /// flush ([`State::sync_nft`]), once per batch: deriving them at every message made a
    /// transaction of n chains and m rules cost (n + m) * n.
    pub(super) fn apply_nft(&mut self, m: Message) {
        if let Some(t) = self.nft.apply(m) {
            self.nft_dirty.insert(t);
        }
    }

    /// The objects of every table an nftables message of this batch concerned, derived again:
    /// what differs is put or removed.
    pub(super) fn sync_nft(&mut self) {
        let dirty = std::mem::take(&mut self.nft_dirty);
        if dirty.is_empty() {
            return;
        }
        let new: Vec<Object> = dirty.iter().flat_map(|t| self.nft.objects_of(t)).collect();
        let keep: BTreeSet<ObjectKey> = new.iter().map(|o| o.key()).collect();
        let gone: Vec<ObjectKey> = self
            .objs
            .iter()
            .filter(|(k, o)| dirty.iter().any(|t| in_table(o, t)) && !keep.contains(k))
            .map(|(k, _)| k.clone())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::nftables::{Hook, Rule};
    use crate::state::tests::state;
    use crate::Event;
    use ekho_plugin_api::Change;

    const IP: NfFamily = NfFamily::IPV4;

    fn table(name: &str, flags: u32) -> Message {
        Message::NewTable(Table {
            family: IP,
            name: name.into(),
            flags,
            handle: 1,
        })
    }

    fn base(table: &str, name: &str, hook: u32, policy: u32) -> Message {
        Message::NewChain(Chain {
            family: IP,
            table: table.into(),
            name: name.into(),
            handle: 2,
            hook: Some(Hook {
                num: hook,
                priority: 0,
                devices: vec![],
            }),
            policy: Some(policy),
            chain_type: Some("filter".into()),
            flags: Some(1),
        })
    }

    fn del_chain(table: &str, name: &str, handle: u64) -> Message {
        Message::DelChain(Chain {
            family: IP,
            table: table.into(),
            name: name.into(),
            handle,
            ..Default::default()
        })
    }

    fn rule(table: &str, chain: &str, handle: u64, new: bool) -> Message {
        let r = Rule {
            family: IP,
            table: table.into(),
            chain: chain.into(),
            handle,
        };
        if new {
            Message::NewRule(r)
        } else {
            Message::DelRule(r)
        }
    }

    fn chain_of(c: &Change) -> NfChain {
        match c {
            Change::Add(Object::NfChain(x))
            | Change::Update {
                new: Object::NfChain(x),
                ..
            } => x.clone(),
            Change::Remove(Object::NfChain(x)) => x.clone(),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn a_base_chain_counts_its_rules_and_goes_with_its_table() {
        let mut s = state();
        for m in [
            table("f", 0),
            base("f", "fwd", 2, 1),
            rule("f", "fwd", 4, true),
        ] {
            s.apply(Event::Nft(m));
        }
        let ch = s.flush();
        assert_eq!(ch.len(), 1, "{ch:?}");
        let c = chain_of(&ch[0]);
        assert!(matches!(ch[0], Change::Add(_)));
        assert_eq!((c.rules, c.hook, c.policy), (1, 2, 1));
        assert!(c.acts_on_forwarding());
        // A second rule, then both deleted: updates with the count.
        s.apply(Event::Nft(rule("f", "fwd", 5, true)));
        assert_eq!(chain_of(&s.flush()[0]).rules, 2);
        s.apply(Event::Nft(rule("f", "fwd", 4, false)));
        s.apply(Event::Nft(rule("f", "fwd", 5, false)));
        let ch = s.flush();
        let c = chain_of(&ch[0]);
        assert_eq!(c.rules, 0);
        assert!(!c.acts_on_forwarding());
        // A policy update (only the policy carried): drop acts.
        s.apply(Event::Nft(Message::NewChain(Chain {
            family: IP,
            table: "f".into(),
            name: "fwd".into(),
            policy: Some(0),
            ..Default::default()
        })));
        let c = chain_of(&s.flush()[0]);
        assert_eq!((c.policy, c.hook, c.chain_type.as_str()), (0, 2, "filter"));
        // The table made dormant: the chain no longer acts.
        s.apply(Event::Nft(table("f", NFT_TABLE_F_DORMANT)));
        let c = chain_of(&s.flush()[0]);
        assert!(c.table_dormant && !c.acts_on_forwarding());
        // The table deleted (as the kernel does: chain first, then table).
        s.apply(Event::Nft(del_chain("f", "fwd", 2)));
        s.apply(Event::Nft(Message::DelTable(Table {
            family: IP,
            name: "f".into(),
            flags: 0,
            handle: 1,
        })));
        let ch = s.flush();
        assert!(
            matches!(&ch[..], [Change::Remove(Object::NfChain(_))]),
            "{ch:?}"
        );
        assert!(s.nft.objects().is_empty());
    }

    /// A dumped ruleset (tables, then chains, then rules, as `source` dumps them) gives each
    /// base chain with its rule count once the dump is in, and a re-dump reconciles into the
    /// state emitting only what differs.
    #[test]
    fn a_dumped_ruleset_is_derived_once_it_is_in() {
        let mut s = state();
        let dump = |rules: u64| {
            let mut snap = crate::state::Snapshot {
                kinds: [ObjectKind::NfChain, ObjectKind::NfFlowtable].into(),
                ..Default::default()
            };
            let mut msgs = vec![table("f", 0), table("g", 0)];
            for c in 0..50 {
                msgs.push(base("f", &format!("c{c}"), 2, 1));
            }
            msgs.push(base("g", "in", 1, 1));
            for c in 0..50 {
                for h in 0..rules {
                    msgs.push(rule("f", &format!("c{c}"), 10 + h, true));
                }
            }
            msgs.push(rule("g", "in", 3, true));
            for m in msgs {
                snap.add(Event::Nft(m));
            }
            snap
        };
        s.reconcile(dump(4));
        let ch = s.flush();
        assert_eq!(ch.len(), 51, "{ch:?}");
        assert!(ch.iter().all(|c| matches!(c, Change::Add(_))));
        let rules: Vec<u32> = ch.iter().map(|c| chain_of(c).rules).collect();
        assert_eq!(rules.iter().filter(|r| **r == 4).count(), 50);
        assert_eq!(rules.iter().filter(|r| **r == 1).count(), 1);
        // The same ruleset: nothing; one rule more per chain of f: 50 updates, g untouched.
        s.reconcile(dump(4));
        assert!(s.flush().is_empty());
        s.reconcile(dump(5));
        let ch = s.flush();
        assert_eq!(ch.len(), 50, "{ch:?}");
        assert!(ch
            .iter()
            .all(|c| matches!(c, Change::Update { .. }) && chain_of(c).rules == 5));
    }

    /// A batch of many messages (a transaction) derives each table's objects at the flush:
    /// the net change per chain, whatever the order of the messages.
    #[test]
    fn a_transaction_is_derived_at_the_flush() {
        let mut s = state();
        s.apply(Event::Nft(table("f", 0)));
        for c in 0..20 {
            s.apply(Event::Nft(base("f", &format!("c{c}"), 2, 1)));
        }
        for c in 0..20 {
            for h in 0..3 {
                s.apply(Event::Nft(rule("f", &format!("c{c}"), 10 + h, true)));
            }
        }
        let ch = s.flush();
        assert_eq!(ch.len(), 20, "{ch:?}");
        assert!(ch
            .iter()
            .all(|c| matches!(c, Change::Add(_)) && chain_of(c).rules == 3));
        // A chain added and deleted in one batch: nothing.
        s.apply(Event::Nft(base("f", "tmp", 2, 1)));
        s.apply(Event::Nft(del_chain("f", "tmp", 2)));
        assert!(s.flush().is_empty());
    }

    #[test]
    fn regular_chains_are_not_objects_and_a_table_delete_takes_everything() {
        let mut s = state();
        s.apply(Event::Nft(table("t", 0)));
        s.apply(Event::Nft(Message::NewChain(Chain {
            family: IP,
            table: "t".into(),
            name: "helper".into(),
            handle: 3,
            ..Default::default()
        })));
        s.apply(Event::Nft(rule("t", "helper", 9, true)));
        assert!(s.flush().is_empty());
        s.apply(Event::Nft(base("t", "pre", 0, 1)));
        assert_eq!(s.flush().len(), 1);
        // Deleting the table alone (no per-object notifications) still removes it all.
        s.apply(Event::Nft(Message::DelTable(Table {
            family: IP,
            name: "t".into(),
            flags: 0,
            handle: 1,
        })));
        assert!(matches!(&s.flush()[..], [Change::Remove(_)]));
        assert!(s.nft.tables().is_empty());
    }
}
