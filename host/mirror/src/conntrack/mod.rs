//! The conntrack table of the mirrored netns, from ctnetlink: a dump, then NEW / UPDATE /
//! DESTROY events; `ENOBUFS` on the event socket (conntrack churns far more than routes)
//! counted and repaired by a re-dump reconciled by mark and sweep. The table is bounded
//! ([`Table::new`]'s limit): additions past it are refused and counted, never stored.
//!
//! [`request`] builds what the host asks of ctnetlink (the keep-alive of offloaded entries),
//! sent by the source's thread ([`source::Conntrack::keep_alive`]).

pub mod message;
pub mod request;
pub mod source;

pub use message::{key, Counters, Entry, Flow, FlowTuple, Message, ObjectKey};
use std::hash::BuildHasher;

/// Counters of the table and its source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries held.
    pub flows: usize,
    /// Additions refused because the table was full: by events, and by the first dump (a
    /// re-dump does not count again what still does not fit: see `over_limit`).
    pub refused: u64,
    /// Entries of the last dump not held for the limit.
    pub over_limit: u64,
    /// Event socket overruns (`ENOBUFS`).
    pub overruns: u64,
    /// Re-dumps reconciled after an overrun.
    pub resyncs: u64,
    /// Periodic re-dumps reconciled ([`source::Config::refresh`]).
    pub refreshes: u64,
    /// Timeouts set on the host's request ([`source::Conntrack::keep_alive`]), acknowledged.
    pub kept_alive: u64,
    /// Of those requests, the ones whose entry was gone (`ENOENT`) or refused otherwise.
    pub keep_alive_failed: u64,
    /// ctnetlink messages read (dumps and events).
    pub messages: u64,
    /// Event messages read (NEW, UPDATE, DESTROY).
    pub events: u64,
}

/// The mirrored entries, by their flow's key ([`Entry::key`]: the plugin API's
/// `ObjectKey::Flow`, the kernel's identity of an entry). The key is not stored beside the
/// entry: it is the flow's own fields.
pub struct Table {
    entries: hashbrown::HashTable<Entry>,
    hasher: foldhash::fast::FixedState,
    limit: usize,
    stats: Stats,
    /// A dump was reconciled already.
    reconciled: bool,
    /// Keys added, changed or removed since [`Table::take_touched`], when tracked.
    touched: Option<Vec<ObjectKey>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("entries", &self.entries.len())
            .field("limit", &self.limit)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Whether `e` is the entry of `k`, a flow's key.
fn is(e: &Entry, k: &ObjectKey) -> bool {
    let ObjectKey::Flow {
        family,
        protocol,
        zone,
        original,
    } = k
    else {
        return false;
    };
    let f = &e.flow;
    f.original == *original && f.zone == *zone && f.protocol == *protocol && f.family == *family
}

impl Table {
    /// An empty table holding at most `limit` entries.
    pub fn new(limit: usize) -> Table {
        Table {
            entries: hashbrown::HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x6374_6b65),
            limit,
            stats: Stats::default(),
            reconciled: false,
            touched: None,
        }
    }

    /// Bytes one held entry takes in the table (it is stored inline, nothing is allocated per
    /// entry), before the hash table's load factor (at most 8/7) and its control byte.
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

    fn hash(&self, k: &ObjectKey) -> u64 {
        self.hasher.hash_one(k)
    }

    /// Records the keys of what changes from now on, for [`Table::take_touched`].
    pub fn track(&mut self) {
        self.touched.get_or_insert_with(Vec::new);
    }

    /// The keys of entries added, changed or removed since the last call (tracked only after
    /// [`Table::track`]; a key may come more than once).
    pub fn take_touched(&mut self) -> Vec<ObjectKey> {
        self.touched
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn touch(&mut self, k: ObjectKey) {
        if let Some(t) = self.touched.as_mut() {
            t.push(k);
        }
    }

    fn remove(&mut self, k: &ObjectKey) -> Option<Entry> {
        let h = self.hash(k);
        match self.entries.find_entry(h, |e| is(e, k)) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// Applies one message (an event, or one entry of a dump that is not reconciled).
    pub fn apply(&mut self, m: Message) {
        match m {
            Message::New(e) => self.put(e, true),
            Message::Delete(e) => {
                // Only the entry the event is about: the kernel redelivers a DESTROY it failed
                // to deliver (ENOBUFS) later, from its dying list, by when a new entry with the
                // same tuple may be mirrored already (found by the overrun test: an entry of a
                // flushed burst took its successor with it). An id of 0 is unknown.
                let k = e.key();
                let id = e.flow.id;
                if self
                    .get(&k)
                    .is_some_and(|held| id == 0 || held.flow.id == 0 || held.flow.id == id)
                {
                    self.remove(&k);
                    self.touch(k);
                }
            }
        }
    }

    /// Adds an entry or changes the one held. `merge`: `e` is an event, which carries what
    /// changed; else a dumped entry, which is whole.
    fn put(&mut self, mut e: Entry, merge: bool) {
        let k = e.key();
        let h = self.hash(&k);
        if let Some(old) = self.entries.find_mut(h, |x| is(x, &k)) {
            if merge {
                // Events carry what changed (ctnetlink_conntrack_event): an update leaves out
                // the counters, `CTA_USE`, and the protocol info and labels unless those
                // changed. Keep what it left out. Seen on 6.18: the update that marks a
                // picked-up TCP entry ASSURED has no CTA_PROTOINFO; replaced whole, the entry
                // lost its ESTABLISHED and stopped being a candidate. An update clearing every
                // label bit sends no CTA_LABELS either (ctnetlink_dump_labels sends none for
                // zero labels): the labels kept then are corrected by the next dump, whose
                // entries replace the held ones whole.
                if e.counters_orig.is_none() {
                    e.counters_orig = old.counters_orig;
                    e.counters_reply = old.counters_reply;
                }
                if e.tcp_state.is_none() {
                    e.tcp_state = old.tcp_state;
                }
                if e.labels.is_none() {
                    e.labels = old.labels;
                }
                if e.use_count == 0 {
                    e.use_count = old.use_count;
                }
            }
            if *old != e {
                *old = e;
                self.touch(k);
            }
        } else if self.entries.len() >= self.limit {
            self.stats.refused += 1;
        } else {
            let hasher = &self.hasher;
            self.entries
                .insert_unique(h, e, |x| hasher.hash_one(x.key()));
            self.touch(k);
        }
    }

    /// Makes the table equal to a complete dump (mark and sweep; the limit holds).
    pub fn reconcile(&mut self, dump: Vec<Entry>) {
        let seen: std::collections::HashSet<ObjectKey, foldhash::fast::RandomState> =
            dump.iter().map(Entry::key).collect();
        // Sweep first, so the room of what is gone goes to what the dump adds.
        let mut gone = Vec::new();
        self.entries.retain(|e| {
            let k = e.key();
            let keep = seen.contains(&k);
            if !keep {
                gone.push(k);
            }
            keep
        });
        for k in gone {
            self.touch(k);
        }
        let before = self.stats.refused;
        for e in dump {
            self.put(e, false);
        }
        self.stats.over_limit = self.stats.refused - before;
        if self.reconciled {
            self.stats.refused = before;
        }
        self.reconciled = true;
    }

    /// The entry of a flow's key (`None` for another kind's key).
    pub fn get(&self, k: &ObjectKey) -> Option<&Entry> {
        self.entries.find(self.hash(k), |e| is(e, k))
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// The most entries held.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            flows: self.entries.len(),
            ..self.stats
        }
    }

    pub(crate) fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }
}

#[cfg(test)]
mod tests {
    //! Messages captured from the kernel (6.18) of this machine in a scratch netns (UDP to the
    //! loopback with `nf_conntrack_acct=1`, raw `AF_NETLINK` socket): a dump reply, a NEW and a
    //! DESTROY event; `conntrack -L -o extended` printed the same entries.
    use super::*;
    use crate::netlink::split;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn one(s: &str) -> Message {
        let b = hex(s);
        let v: Vec<_> = split(&b).collect();
        assert_eq!(v.len(), 1);
        message::parse(v[0].0.message_type, v[0].1)
            .unwrap()
            .unwrap()
    }

    const DUMP_V4: &str = "dc000000000102000100000079650000020000003400018014000180080001007f000001080002007f0000011c000280050001001100000006000200b92d0000060003000fa000003400028014000180080001007f000001080002007f0000011c0002800500010011000000060002000fa0000006000300b92d00000800030000000008080008000000000008000c00b161e43b08000b0000000001080007000000001c1c0009800c00010000000000000000010c000200000000000000001d1c000a800c00010000000000000000000c0002000000000000000000";
    const NEW_V6: &str = "c40000000001000600000000000000000a0000004c0001802c000180140003000000000000000000000000000000000114000400000000000000000000000000000000011c00028005000100110000000600020082bf0000060003000fa100004c0002802c000180140003000000000000000000000000000000000114000400000000000000000000000000000000011c0002800500010011000000060002000fa100000600030082bf000008000c00a3a5832e0800030000000008080007000000001e";
    const DESTROY_V6: &str = "fc0000000201000000000000199829b70a0000004c0001802c000180140003000000000000000000000000000000000114000400000000000000000000000000000000011c00028005000100110000000600020082bf0000060003000fa100004c0002802c000180140003000000000000000000000000000000000114000400000000000000000000000000000000011c0002800500010011000000060002000fa100000600030082bf000008000c00a3a5832e0800030000000208080007000000001d1c0009800c00010000000000000000010c00020000000000000000321c000a800c00010000000000000000000c0002000000000000000000";

    #[test]
    fn a_dumped_udp_entry() {
        // udp 17 27 src=127.0.0.1 dst=127.0.0.1 sport=47405 dport=4000 packets=1 bytes=29
        // [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=4000 dport=47405 packets=0 bytes=0
        // mark=0 use=1
        let Message::New(f) = one(DUMP_V4) else {
            panic!()
        };
        let lo: message::IpAddress = "127.0.0.1".parse().unwrap();
        assert_eq!(f.flow.family, message::Family::INET);
        let o = f.flow.original;
        assert_eq!(
            (o.src, o.dst, f.flow.protocol, o.sport, o.dport),
            (lo, lo, 17, 47405, 4000)
        );
        assert_eq!((f.flow.reply.sport, f.flow.reply.dport), (4000, 47405));
        assert_eq!(
            (f.timeout, f.flow.mark, f.use_count, f.flow.zone),
            (28, 0, 1, 0)
        );
        assert_eq!(f.tuple_zones, [0, 0]);
        assert_eq!(f.flow.status & message::status::SEEN_REPLY, 0, "UNREPLIED");
        assert_eq!(
            f.counters_orig,
            Some(Counters {
                packets: 1,
                bytes: 29
            })
        );
        assert_eq!(
            f.counters_reply,
            Some(Counters {
                packets: 0,
                bytes: 0
            })
        );
        assert_eq!(f.flow.id, 0xb161e43b);
        assert!(!f.flow.is_nat());
    }

    #[test]
    fn new_then_destroy_events() {
        let Message::New(n) = one(NEW_V6) else {
            panic!()
        };
        assert_eq!(n.flow.family, message::Family::INET6);
        assert_eq!(
            (n.flow.original.sport, n.flow.original.dport),
            (33471, 4001)
        );
        assert_eq!(n.counters_orig, None, "NEW events carry no counters");
        let mut t = Table::new(10);
        t.apply(Message::New(n.clone()));
        assert_eq!(t.stats().flows, 1);
        let Message::Delete(d) = one(DESTROY_V6) else {
            panic!()
        };
        assert_eq!(d.key(), n.key());
        assert_eq!(
            d.counters_orig,
            Some(Counters {
                packets: 1,
                bytes: 50
            })
        );
        // A late DESTROY of an earlier entry with the same tuple leaves its successor.
        let mut late = d.clone();
        late.flow.id = d.flow.id.wrapping_add(1);
        t.apply(Message::Delete(late));
        assert_eq!(t.stats().flows, 1, "another entry's DESTROY");
        t.apply(Message::Delete(d));
        assert_eq!(t.stats().flows, 0);
    }

    #[test]
    fn nat_is_derived_from_the_tuples() {
        // The reply addressed to 192.0.2.1:61000: masqueraded. The parser derives NAT as the
        // API does (Flow::new), from the bytes.
        let b = hex(DUMP_V4);
        let mut b = b.clone();
        // The reply tuple's CTA_IP_V4_DST (127.0.0.1, the second address of the second tuple)
        // and CTA_PROTO_DST_PORT (47405 = 0xb92d, its second port).
        let at = |b: &[u8], pat: &[u8], nth: usize| {
            b.windows(pat.len())
                .enumerate()
                .filter(|(_, w)| *w == pat)
                .nth(nth)
                .unwrap()
                .0
        };
        let ip = at(&b, &[127, 0, 0, 1], 3);
        b[ip..ip + 4].copy_from_slice(&[192, 0, 2, 1]);
        let port = at(&b, &[0xb9, 0x2d], 1);
        b[port..port + 2].copy_from_slice(&61000u16.to_be_bytes());
        let v: Vec<_> = split(&b).collect();
        let Some(Message::New(f)) = message::parse(v[0].0.message_type, v[0].1).unwrap() else {
            panic!()
        };
        let pub_ip: message::IpAddress = "192.0.2.1".parse().unwrap();
        assert_eq!(
            f.flow.snat.into_option(),
            Some(ekho_plugin_api::object::FlowNat {
                addr: pub_ip,
                port: 61000
            })
        );
        assert!(f.flow.dnat.is_none());
    }

    #[test]
    fn a_zone_of_the_original_direction_only_is_the_flows_zone() {
        // DUMP_V4 with CTA_TUPLE_ZONE 5 in its original tuple (as `-j CT --zone-orig 5` makes
        // it; the kernel then sends no CTA_ZONE): appended to that nest (at 20, 52 bytes).
        let mut b = hex(DUMP_V4);
        let zone_nla = [6, 0, 3, 0, 0, 5, 0, 0];
        b.splice(72..72, zone_nla);
        let nest = u16::from_ne_bytes([b[20], b[21]]) + 8;
        b[20..22].copy_from_slice(&nest.to_ne_bytes());
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) + 8;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        let v: Vec<_> = split(&b).collect();
        let Some(Message::New(z)) = message::parse(v[0].0.message_type, v[0].1).unwrap() else {
            panic!()
        };
        assert_eq!((z.flow.zone, z.tuple_zones), (5, [5, 0]));
        // Another entry than the same tuple in zone 0 (the kernel tells them apart by the zone
        // of the original direction): both held.
        let Message::New(plain) = one(DUMP_V4) else {
            panic!()
        };
        assert_ne!(z.key(), plain.key());
        let mut t = Table::new(10);
        t.apply(Message::New(plain));
        t.apply(Message::New(z.clone()));
        assert_eq!(t.stats().flows, 2);
        assert_eq!(t.get(&z.key()), Some(&z));
    }

    #[test]
    fn the_table_is_bounded_and_reconciles_by_mark_and_sweep() {
        let Message::New(f) = one(DUMP_V4) else {
            panic!()
        };
        let mut t = Table::new(2);
        let flow = |port: u16| {
            let mut e = f.clone();
            e.flow.original.sport = port;
            e
        };
        for p in 1..=3 {
            t.apply(Message::New(flow(p)));
        }
        assert_eq!((t.stats().flows, t.stats().refused), (2, 1));
        // An update of a held entry is never refused.
        let mut marked = flow(1);
        marked.flow.mark = 9;
        t.apply(Message::New(marked));
        assert_eq!(t.get(&flow(1).key()).unwrap().flow.mark, 9);
        // A dump without 1: swept; 3 fits now.
        t.reconcile(vec![flow(2), flow(3)]);
        assert!(t.get(&flow(1).key()).is_none());
        assert!(t.get(&flow(3).key()).is_some());
        assert_eq!(t.stats().flows, 2);
        assert_eq!((t.stats().refused, t.stats().over_limit), (1, 0));
        // A re-dump with one too many: over the limit, not refused again and again.
        t.reconcile(vec![flow(2), flow(3), flow(4)]);
        t.reconcile(vec![flow(2), flow(3), flow(4)]);
        assert_eq!((t.stats().refused, t.stats().over_limit), (1, 1));
    }

    #[test]
    fn an_update_keeps_what_it_leaves_out() {
        let Message::New(f) = one(DUMP_V4) else {
            panic!()
        };
        let mut held = f.clone();
        held.flow.protocol = 6;
        held.tcp_state = Some(3);
        held.labels = Some([7; 16]);
        held.use_count = 1;
        let mut t = Table::new(8);
        t.apply(Message::New(held.clone()));
        // The ASSURED update of a picked-up entry: status and timeout, no protoinfo, labels,
        // use or counters.
        let mut update = held.clone();
        update.flow.status |= message::status::ASSURED;
        update.timeout = 432000;
        update.tcp_state = None;
        update.labels = None;
        update.use_count = 0;
        update.counters_orig = None;
        update.counters_reply = None;
        t.apply(Message::New(update));
        let now = t.get(&held.key()).unwrap();
        assert_eq!(
            now.flow.status & message::status::ASSURED,
            message::status::ASSURED
        );
        assert_eq!(now.timeout, 432000);
        assert_eq!(now.tcp_state, Some(3));
        assert_eq!(now.labels, Some([7; 16]));
        assert_eq!(now.use_count, 1);
        assert_eq!(now.counters_orig, held.counters_orig);
        // What an update carries replaces what was held.
        let mut closing = held.clone();
        closing.tcp_state = Some(6);
        t.apply(Message::New(closing));
        assert_eq!(t.get(&held.key()).unwrap().tcp_state, Some(6));
        // A dump is whole: labels it does not carry are zero (cleared), and are gone.
        let mut dumped = held.clone();
        dumped.labels = None;
        t.reconcile(vec![dumped]);
        assert_eq!(t.get(&held.key()).unwrap().labels, None);
    }

    #[test]
    fn tracked_tables_tell_what_events_and_sweeps_touched() {
        let Message::New(f) = one(DUMP_V4) else {
            panic!()
        };
        let flow = |port: u16| {
            let mut e = f.clone();
            e.flow.original.sport = port;
            e
        };
        let key = |port: u16| flow(port).key();
        let mut t = Table::new(10);
        t.apply(Message::New(flow(1)));
        assert!(t.take_touched().is_empty(), "not tracked yet");
        t.track();
        t.apply(Message::New(flow(2)));
        // The same entry again: nothing changed, nothing to tell.
        t.apply(Message::New(flow(1)));
        assert_eq!(t.take_touched(), vec![key(2)]);
        t.apply(Message::Delete(flow(2)));
        assert_eq!(t.take_touched(), vec![key(2)]);
        // A re-dump without 1 and with 3: the sweep and the addition.
        t.reconcile(vec![flow(3)]);
        let touched = t.take_touched();
        assert_eq!(touched.len(), 2);
        assert!(touched.contains(&key(1)) && touched.contains(&key(3)));
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// Memory per held entry: the entry inline in the hash table (its key is the flow's own
    /// fields, not stored again), plus its control byte (hashbrown), at most 8/7 of that with
    /// the load factor. Nothing is allocated per entry.
    #[test]
    fn an_entry_costs_a_fixed_size() {
        let per = Table::ENTRY_BYTES + 1;
        eprintln!("conntrack table: {per} bytes per entry (before the load factor)");
        assert!(per <= 256, "{per}");
    }
}
