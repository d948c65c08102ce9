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

pub use message::{Counters, Flow, Message, Tuple};
use std::collections::HashMap;

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

/// The mirrored entries, by (zone, original tuple).
#[derive(Debug)]
pub struct Table {
    flows: HashMap<(u16, Tuple), Flow>,
    limit: usize,
    stats: Stats,
    /// A dump was reconciled already.
    reconciled: bool,
    /// Keys added, changed or removed since [`Table::take_touched`], when tracked.
    touched: Option<Vec<(u16, Tuple)>>,
}

impl Table {
    /// An empty table holding at most `limit` entries.
    pub fn new(limit: usize) -> Table {
        Table {
            flows: HashMap::new(),
            limit,
            stats: Stats::default(),
            reconciled: false,
            touched: None,
        }
    }

    /// Records the keys of what changes from now on, for [`Table::take_touched`].
    pub fn track(&mut self) {
        self.touched.get_or_insert_with(Vec::new);
    }

    /// The keys of entries added, changed or removed since the last call (tracked only after
    /// [`Table::track`]; a key may come more than once).
    pub fn take_touched(&mut self) -> Vec<(u16, Tuple)> {
        self.touched
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn touch(&mut self, k: (u16, Tuple)) {
        if let Some(t) = self.touched.as_mut() {
            t.push(k);
        }
    }

    /// Applies one message.
    pub fn apply(&mut self, m: Message) {
        match m {
            Message::New(f) => {
                let k = f.key();
                if let Some(old) = self.flows.get_mut(&k) {
                    // Events carry what changed: keep the counters an update left out.
                    let mut f = f;
                    if f.counters_orig.is_none() {
                        f.counters_orig = old.counters_orig;
                        f.counters_reply = old.counters_reply;
                    }
                    if *old != f {
                        *old = f;
                        self.touch(k);
                    }
                } else if self.flows.len() >= self.limit {
                    self.stats.refused += 1;
                } else {
                    self.flows.insert(k, f);
                    self.touch(k);
                }
            }
            Message::Delete(f) => {
                // Only the entry the event is about: the kernel redelivers a DESTROY it failed
                // to deliver (ENOBUFS) later, from its dying list, by when a new entry with the
                // same tuple may be mirrored already (found by the overrun test: an entry of a
                // flushed burst took its successor with it). An id of 0 is unknown.
                let k = f.key();
                if self
                    .flows
                    .get(&k)
                    .is_some_and(|held| f.id == 0 || held.id == 0 || held.id == f.id)
                {
                    self.flows.remove(&k);
                    self.touch(k);
                }
            }
        }
    }

    /// Makes the table equal to a complete dump (mark and sweep; the limit holds).
    pub fn reconcile(&mut self, dump: Vec<Flow>) {
        let seen: std::collections::HashSet<(u16, Tuple)> = dump.iter().map(|f| f.key()).collect();
        // Sweep first, so the room of what is gone goes to what the dump adds.
        let gone: Vec<(u16, Tuple)> = self
            .flows
            .keys()
            .filter(|k| !seen.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.flows.remove(&k);
            self.touch(k);
        }
        let before = self.stats.refused;
        for f in dump {
            self.apply(Message::New(f));
        }
        self.stats.over_limit = self.stats.refused - before;
        if self.reconciled {
            self.stats.refused = before;
        }
        self.reconciled = true;
    }

    /// One entry.
    pub fn get(&self, zone: u16, orig: &Tuple) -> Option<&Flow> {
        self.flows.get(&(zone, *orig))
    }

    /// Every entry.
    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values()
    }

    /// The most entries held.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            flows: self.flows.len(),
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
        let v = split(&b);
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
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(f.family, 2);
        assert_eq!(
            (
                f.orig.src,
                f.orig.dst,
                f.orig.proto,
                f.orig.sport,
                f.orig.dport
            ),
            (lo, lo, 17, 47405, 4000)
        );
        assert_eq!((f.reply.sport, f.reply.dport), (4000, 47405));
        assert_eq!((f.timeout, f.mark, f.use_count, f.zone), (28, 0, 1, 0));
        assert_eq!(f.status & message::status::SEEN_REPLY, 0, "UNREPLIED");
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
        assert_eq!(f.id, 0xb161e43b);
        assert_eq!((f.snat(), f.dnat()), (None, None));
    }

    #[test]
    fn new_then_destroy_events() {
        let Message::New(n) = one(NEW_V6) else {
            panic!()
        };
        assert_eq!(n.family, 10);
        assert_eq!((n.orig.sport, n.orig.dport), (33471, 4001));
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
        late.id = d.id.wrapping_add(1);
        t.apply(Message::Delete(late));
        assert_eq!(t.stats().flows, 1, "another entry's DESTROY");
        t.apply(Message::Delete(d));
        assert_eq!(t.stats().flows, 0);
    }

    #[test]
    fn nat_is_derived_from_the_tuples() {
        let Message::New(mut f) = one(DUMP_V4) else {
            panic!()
        };
        let pub_ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        f.reply.dst = pub_ip;
        f.reply.dport = 61000;
        assert_eq!(f.snat(), Some((pub_ip, 61000)));
        assert_eq!(f.dnat(), None);
    }

    #[test]
    fn the_table_is_bounded_and_reconciles_by_mark_and_sweep() {
        let Message::New(f) = one(DUMP_V4) else {
            panic!()
        };
        let mut t = Table::new(2);
        let flow = |port: u16| Flow {
            orig: Tuple {
                sport: port,
                ..f.orig
            },
            ..f.clone()
        };
        for p in 1..=3 {
            t.apply(Message::New(flow(p)));
        }
        assert_eq!((t.stats().flows, t.stats().refused), (2, 1));
        // An update of a held entry is never refused.
        t.apply(Message::New(Flow { mark: 9, ..flow(1) }));
        assert_eq!(t.get(0, &flow(1).orig).unwrap().mark, 9);
        // A dump without 1: swept; 3 fits now.
        t.reconcile(vec![flow(2), flow(3)]);
        assert!(t.get(0, &flow(1).orig).is_none());
        assert!(t.get(0, &flow(3).orig).is_some());
        assert_eq!(t.stats().flows, 2);
        assert_eq!((t.stats().refused, t.stats().over_limit), (1, 0));
        // A re-dump with one too many: over the limit, not refused again and again.
        t.reconcile(vec![flow(2), flow(3), flow(4)]);
        t.reconcile(vec![flow(2), flow(3), flow(4)]);
        assert_eq!((t.stats().refused, t.stats().over_limit), (1, 1));
    }

    #[test]
    fn tracked_tables_tell_what_events_and_sweeps_touched() {
        let Message::New(f) = one(DUMP_V4) else {
            panic!()
        };
        let flow = |port: u16| Flow {
            orig: Tuple {
                sport: port,
                ..f.orig
            },
            ..f.clone()
        };
        let key = |port: u16| (0, flow(port).orig);
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
        let mut touched = t.take_touched();
        touched.sort();
        assert_eq!(touched, vec![key(1), key(3)]);
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// Memory per held entry: key and value inline in the hash table, plus its control byte
    /// (hashbrown), at most 8/7 of that with the load factor. Nothing is allocated per entry.
    #[test]
    fn an_entry_costs_a_fixed_size() {
        let per = std::mem::size_of::<((u16, Tuple), Flow)>() + 1;
        eprintln!("conntrack table: {per} bytes per entry (before the load factor)");
        assert!(per <= 256, "{per}");
    }
}
