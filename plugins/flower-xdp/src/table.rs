//! The rule table: the filters the plugin holds, compiled, laid out per owned port in the BPF
//! maps. Every change recompiles the ports it touches into the unused generation of their
//! `CHAINS` entries and unused `RULES` slots, then flips the port's `PORTS` entry (one atomic
//! map update): a packet sees the old rule set or the new one, never a mix.

use crate::compile::{compile, Compiled};
use crate::dataplane::{Backend, Error};
use crate::maps::*;
use crate::tc::{TcFilter, TcTarget};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A filter's identity: tc's (target, parent, chain, prio, handle).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct FilterId {
    pub target: TcTarget,
    pub parent: u32,
    pub chain: u32,
    pub prio: u16,
    pub handle: u32,
}

impl FilterId {
    pub fn of(f: &TcFilter) -> FilterId {
        FilterId {
            target: f.target,
            parent: f.parent,
            chain: f.chain,
            prio: f.prio,
            handle: f.handle,
        }
    }
}

struct Entry {
    filter: TcFilter,
    compiled: Result<Compiled, String>,
    stats_id: u32,
}

#[derive(Default)]
struct PortLayout {
    gen: u32,
    /// (chain, first slot, count) of the live generation.
    chains: Vec<(u32, u32, u32)>,
}

struct Bucket {
    slot: u32,
    params: Police,
    users: BTreeSet<FilterId>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(
        "the rule table is full ({MAX_RULES} rules): remove filters or split them over fewer ports"
    )]
    RulesFull,
    #[error("{MAX_FILTERS} filters held already")]
    FiltersFull,
    #[error("{MAX_POLICERS} police actions held already")]
    PolicersFull,
    #[error("data path: {0}")]
    Dataplane(#[from] Error),
}

/// What a change made of a filter.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Runs in XDP.
    Running,
    /// Not run here, with the reason (tc's words); the kernel runs it.
    Unsupported(String),
}

pub struct Table {
    filters: BTreeMap<FilterId, Entry>,
    owned: BTreeSet<u32>,
    ports: HashMap<u32, PortLayout>,
    used: Vec<bool>,
    free_stats: Vec<u32>,
    next_stats: u32,
    buckets: HashMap<u32, Bucket>,
    free_police: Vec<u32>,
    next_police: u32,
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

impl Table {
    pub fn new() -> Table {
        Table {
            filters: BTreeMap::new(),
            owned: BTreeSet::new(),
            ports: HashMap::new(),
            used: vec![false; MAX_RULES],
            free_stats: Vec::new(),
            next_stats: 0,
            buckets: HashMap::new(),
            free_police: Vec::new(),
            next_police: 0,
        }
    }

    pub fn owned(&self) -> &BTreeSet<u32> {
        &self.owned
    }

    /// A port taken (its program attached by the caller) or given up: every filter is compiled
    /// again (mirred targets and shared blocks depend on what is owned).
    pub fn set_owned(
        &mut self,
        dp: &mut dyn Backend,
        ifindex: u32,
        owned: bool,
    ) -> Result<(), TableError> {
        if owned {
            if self.owned.insert(ifindex) {
                dp.set_port(ifindex, Some(PortVal::default()))?;
                self.ports.insert(ifindex, PortLayout::default());
            }
        } else if self.owned.remove(&ifindex) {
            if let Some(l) = self.ports.remove(&ifindex) {
                for (chain, first, count) in l.chains {
                    dp.set_chain(
                        ChainKey {
                            ifindex,
                            gen: l.gen,
                            chain,
                        },
                        None,
                    )?;
                    self.free(first, count);
                }
            }
            dp.set_port(ifindex, None)?;
        }
        let ids: Vec<FilterId> = self.filters.keys().copied().collect();
        for id in ids {
            self.recompile(dp, id)?;
        }
        self.rebuild(dp, None)
    }

    fn recompile(&mut self, dp: &mut dyn Backend, id: FilterId) -> Result<(), TableError> {
        let owned = self.owned.clone();
        let Some(e) = self.filters.get_mut(&id) else {
            return Ok(());
        };
        e.compiled = compile(&e.filter, &|i| owned.contains(&i));
        self.sync_buckets(dp, id)
    }

    /// Adds or replaces a filter; the ports it runs on are rebuilt.
    pub fn upsert(&mut self, dp: &mut dyn Backend, f: TcFilter) -> Result<Taken, TableError> {
        let id = FilterId::of(&f);
        let owned = &self.owned;
        let compiled = compile(&f, &|i| owned.contains(&i));
        let mut touched: BTreeSet<u32> = f.devices().into_iter().collect();
        let stats_id = match self.filters.get(&id) {
            Some(old) => {
                touched.extend(old.filter.devices());
                old.stats_id
            }
            None => {
                let sid = match self.free_stats.pop() {
                    Some(s) => s,
                    None if (self.next_stats as usize) < MAX_FILTERS => {
                        self.next_stats += 1;
                        self.next_stats - 1
                    }
                    None => return Err(TableError::FiltersFull),
                };
                dp.reset_stats(sid)?;
                sid
            }
        };
        let taken = match &compiled {
            Ok(_) => Taken::Running,
            Err(r) => Taken::Unsupported(r.clone()),
        };
        self.filters.insert(
            id,
            Entry {
                filter: f,
                compiled,
                stats_id,
            },
        );
        self.sync_buckets(dp, id)?;
        self.rebuild(dp, Some(&touched))?;
        Ok(taken)
    }

    /// Removes a filter; the ports it ran on are rebuilt.
    pub fn remove(&mut self, dp: &mut dyn Backend, id: FilterId) -> Result<(), TableError> {
        let Some(e) = self.filters.remove(&id) else {
            return Ok(());
        };
        let touched: BTreeSet<u32> = e.filter.devices().into_iter().collect();
        self.rebuild(dp, Some(&touched))?;
        self.sync_buckets(dp, id)?;
        self.free_stats.push(e.stats_id);
        Ok(())
    }

    /// Every filter held, with its stats id and whether it runs.
    pub fn filters(&self) -> impl Iterator<Item = (&TcFilter, u32, bool)> {
        self.filters
            .values()
            .map(|e| (&e.filter, e.stats_id, e.compiled.is_ok()))
    }

    /// Why a filter does not run, if it does not.
    pub fn reason(&self, id: &FilterId) -> Option<&str> {
        self.filters
            .get(id)
            .and_then(|e| e.compiled.as_ref().err().map(|s| s.as_str()))
    }

    pub fn stats_id(&self, id: &FilterId) -> Option<u32> {
        self.filters.get(id).map(|e| e.stats_id)
    }

    /// Police buckets: one per tc police index, shared by the filters that hold it; written
    /// (full) when created or when its parameters change.
    fn sync_buckets(&mut self, dp: &mut dyn Backend, id: FilterId) -> Result<(), TableError> {
        let wanted: Vec<(u32, Police)> = match self.filters.get(&id).map(|e| &e.compiled) {
            Some(Ok(c)) => c.police.iter().map(|p| (p.index, p.params)).collect(),
            _ => Vec::new(),
        };
        // drop this filter from buckets it no longer uses
        let mut empty = Vec::new();
        for (idx, b) in self.buckets.iter_mut() {
            if !wanted.iter().any(|(i, _)| i == idx) && b.users.remove(&id) && b.users.is_empty() {
                empty.push(*idx);
            }
        }
        for idx in empty {
            if let Some(b) = self.buckets.remove(&idx) {
                self.free_police.push(b.slot);
            }
        }
        for (idx, params) in wanted {
            match self.buckets.get_mut(&idx) {
                Some(b) => {
                    b.users.insert(id);
                    if b.params != params {
                        b.params = params;
                        dp.set_police(b.slot, &params)?;
                    }
                }
                None => {
                    let slot = match self.free_police.pop() {
                        Some(s) => s,
                        None if (self.next_police as usize) < MAX_POLICERS => {
                            self.next_police += 1;
                            self.next_police - 1
                        }
                        None => return Err(TableError::PolicersFull),
                    };
                    dp.set_police(slot, &params)?;
                    self.buckets.insert(
                        idx,
                        Bucket {
                            slot,
                            params,
                            users: [id].into_iter().collect(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn alloc(&mut self, count: u32) -> Option<u32> {
        let n = count as usize;
        if n == 0 {
            return Some(0);
        }
        let mut run = 0;
        for i in 0..self.used.len() {
            run = if self.used[i] { 0 } else { run + 1 };
            if run == n {
                let first = i + 1 - n;
                self.used[first..=i].iter_mut().for_each(|u| *u = true);
                return Some(first as u32);
            }
        }
        None
    }

    fn free(&mut self, first: u32, count: u32) {
        for u in &mut self.used[first as usize..(first + count) as usize] {
            *u = false;
        }
    }

    /// Lays out the rules of `ports` (all owned ports when `None`) anew.
    fn rebuild(
        &mut self,
        dp: &mut dyn Backend,
        ports: Option<&BTreeSet<u32>>,
    ) -> Result<(), TableError> {
        let ports: Vec<u32> = match ports {
            Some(p) => p
                .iter()
                .copied()
                .filter(|p| self.owned.contains(p))
                .collect(),
            None => self.owned.iter().copied().collect(),
        };
        for p in ports {
            self.rebuild_port(dp, p)?;
        }
        Ok(())
    }

    fn rebuild_port(&mut self, dp: &mut dyn Backend, ifindex: u32) -> Result<(), TableError> {
        // (chain, prio, handle) order: tc's order within a chain (flower tries the filters of
        // one prio by mask in creation order; handles are allocated in that order).
        let mut rules: BTreeMap<(u32, u16, u32), Rule> = BTreeMap::new();
        for (id, e) in &self.filters {
            let c = match &e.compiled {
                Ok(c) => c,
                Err(_) => {
                    // held but not run here: a trap keeps its place in the order
                    if crate::compile::traps_on(&e.filter, ifindex) {
                        let mut r = crate::compile::trap(&e.filter);
                        // not counted: the kernel runs it (and counts it)
                        r.stats_id = u32::MAX;
                        rules.insert((id.chain, id.prio, id.handle), r);
                    }
                    continue;
                }
            };
            if !e.filter.devices().contains(&ifindex) {
                continue;
            }
            let mut r = c.rule;
            r.stats_id = e.stats_id;
            for p in &c.police {
                if let Some(b) = self.buckets.get(&p.index) {
                    r.actions[p.position].arg = b.slot;
                }
            }
            rules.insert((id.chain, id.prio, id.handle), r);
        }
        let mut by_chain: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
        for ((chain, _, _), r) in rules {
            by_chain.entry(chain).or_default().push(r);
        }
        let old = self.ports.remove(&ifindex).unwrap_or_default();
        let gen = old.gen ^ 1;
        let mut layout = PortLayout {
            gen,
            chains: Vec::new(),
        };
        let mut failed = None;
        for (chain, rs) in &by_chain {
            let Some(first) = self.alloc(rs.len() as u32) else {
                failed = Some(TableError::RulesFull);
                break;
            };
            layout.chains.push((*chain, first, rs.len() as u32));
            for (i, r) in rs.iter().enumerate() {
                if let Err(e) = dp.set_rule(first + i as u32, r) {
                    failed = Some(e.into());
                    break;
                }
            }
            if failed.is_some() {
                break;
            }
            if let Err(e) = dp.set_chain(
                ChainKey {
                    ifindex,
                    gen,
                    chain: *chain,
                },
                Some(ChainVal {
                    first,
                    count: rs.len() as u32,
                }),
            ) {
                failed = Some(e.into());
                break;
            }
        }
        let flip = if failed.is_none() {
            dp.set_gen(ifindex, PortVal { gen, flags: 0 })
                .map_err(TableError::from)
        } else {
            Ok(())
        };
        // What is not live any more (the old generation, or the new one that failed) goes.
        let (keep, drop) = if failed.is_none() && flip.is_ok() {
            (layout, old)
        } else {
            (old, layout)
        };
        for (chain, first, count) in &drop.chains {
            let _ = dp.set_chain(
                ChainKey {
                    ifindex,
                    gen: drop.gen,
                    chain: *chain,
                },
                None,
            );
            self.free(*first, *count);
        }
        self.ports.insert(ifindex, keep);
        flip?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
