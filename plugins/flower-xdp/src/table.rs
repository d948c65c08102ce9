//! The rule table: the filters the plugin holds, compiled, laid out per owned port in the BPF
//! maps. Every change lays the ports it touches out anew in a new generation (`CHAINS` keys with
//! a generation number never used before, `RULES` slots no generation holds), then flips the
//! port's `PORTS` entry (one atomic map update): a packet sees the old rule set or the new one,
//! never a mix. A packet that started in the old generation may still be walking it after the
//! flip (a `goto chain` looks its chain up again, a redirect rereads its rule for the vlan
//! rewrites): what the old generation held (its `CHAINS` entries, `RULES` slots, and the counter
//! and police slots of filters deleted with it) is retired, not freed, and becomes free again
//! only after an RCU grace period ([`Backend::synchronize`]) that starts after the flip. The
//! table waits for one only when it needs the space (rules, chains, counters or buckets run
//! out), then frees everything retired before it.

use crate::compile::{compile, Compiled};
use crate::dataplane::{Backend, Error};
use crate::maps::*;
use crate::tc::{TcFilter, TcTarget};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

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
    /// Why it is not run although it compiles: its place in the order is not known (see
    /// [`PrioOrder`]).
    order_refused: Option<String>,
}

/// tc's (target, parent, chain, prio): one flower instance, whose filters share the protocol.
type PrioKey = (TcTarget, u32, u32, u16);

fn prio_key(id: &FilterId) -> PrioKey {
    (id.target, id.parent, id.chain, id.prio)
}

/// A flower mask as the kernel groups filters by it: the mask and whether the source and
/// destination ports are ranges. `Unknown` for a filter whose keys the compiler refuses (its
/// trap catches every frame of its protocol, and is put first in its prio: a trap earlier than
/// the kernel's order only hands more frames to the kernel, which decides them as tc does).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum MaskId {
    Known(FKey, bool, bool),
    Unknown(u32),
}

fn mask_of(f: &TcFilter) -> MaskId {
    match crate::compile::compile_match(f) {
        Ok((_, m, r)) => MaskId::Known(m, r[1] != 0, r[3] != 0),
        Err(_) => MaskId::Unknown(f.handle),
    }
}

/// The order flower tries the filters of one prio in. fl_classify walks the instance's masks
/// in list order, a new mask appended at the end (fl_create_new_mask: list_add_tail_rcu) and
/// removed when its last filter goes (fl_mask_put); within a mask a hash table holds the
/// filters by masked key, so at most one matches a frame, except with port ranges, where the
/// mask's filters are tried in creation order (fl_lookup_range walks mask->filters, appended
/// to). Handles say nothing about it: automatic ones are the lowest free (idr_alloc_u32 from
/// 1). The plugin sees filters in notification order and keeps that order here.
///
/// A replay (a resync, the initial dump) hands filters over in handle order: the order of
/// masks met first there is not the kernel's. Such a prio is `known: false` until it empties:
/// its filters are run where no two of them of different masks (or of one mask with port
/// ranges) can match one frame, where the order decides nothing; the others are refused.
#[derive(Debug)]
struct PrioOrder {
    masks: Vec<(MaskId, Vec<u32>)>,
    known: bool,
}

impl PrioOrder {
    fn insert(&mut self, handle: u32, m: MaskId) {
        match self.masks.iter_mut().find(|(k, _)| *k == m) {
            Some((_, hs)) => hs.push(handle),
            None => self.masks.push((m, vec![handle])),
        }
    }

    fn remove(&mut self, handle: u32, m: &MaskId) {
        if let Some(i) = self.masks.iter().position(|(k, _)| k == m) {
            self.masks[i].1.retain(|h| *h != handle);
            if self.masks[i].1.is_empty() {
                self.masks.remove(i);
            }
        }
    }

    /// The place of `handle` within its prio: masks in list order (unknown ones first), then
    /// the mask's filters in creation order.
    fn rank(&self, handle: u32) -> u64 {
        for (i, (m, hs)) in self.masks.iter().enumerate() {
            if let Some(p) = hs.iter().position(|h| *h == handle) {
                let band = match m {
                    MaskId::Unknown(_) => 0,
                    MaskId::Known(..) => i as u64 + 1,
                };
                return (band << 32) | p as u64;
            }
        }
        u64::MAX
    }
}

/// A filter's compiled match (key, mask, port ranges) and its mask.
type Placed = ((FKey, FKey, [u16; 4]), MaskId);

/// Whether some frame may match both rules (keys equal where both masks look; port ranges,
/// when both have one on the same port, intersect; a range against a masked port: maybe).
fn may_overlap(a: &(FKey, FKey, [u16; 4]), b: &(FKey, FKey, [u16; 4])) -> bool {
    let both = a.1.masked(&b.1);
    if a.0.masked(&both) != b.0.masked(&both) {
        return false;
    }
    let (ra, rb) = (a.2, b.2);
    let disjoint =
        |lo1: u16, hi1: u16, lo2: u16, hi2: u16| hi1 != 0 && hi2 != 0 && (hi1 < lo2 || hi2 < lo1);
    !(disjoint(ra[0], ra[1], rb[0], rb[1]) || disjoint(ra[2], ra[3], rb[2], rb[3]))
}

#[derive(Default)]
struct PortLayout {
    gen: u32,
    /// (chain, first slot, count) of the live generation.
    chains: Vec<(u32, u32, u32)>,
}

/// What replaced generations held, waiting for a grace period.
#[derive(Default)]
struct Retired {
    /// (CHAINS key, first slot, count).
    chains: Vec<(ChainKey, u32, u32)>,
    stats: Vec<u32>,
    police: Vec<u32>,
}

impl Retired {
    fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.stats.is_empty() && self.police.is_empty()
    }
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
    #[error("the chain table is full ({MAX_CHAINS} chains over all ports): use fewer chains")]
    ChainsFull,
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
    /// Police slots given up during the current change: retired once its flips are done.
    pending_police: Vec<u32>,
    retired: Retired,
    /// `CHAINS` entries held, live or retired.
    chain_entries: usize,
    /// The last generation number given out (over all ports: a key is never reused while a
    /// retired generation may hold it).
    last_gen: u32,
    prios: HashMap<PrioKey, PrioOrder>,
    /// Between `begin_replay` and `end_replay`.
    replaying: bool,
    /// Between `begin_batch` and `end_batch`.
    batch: Option<BatchMarks>,
    order_changes: Vec<(FilterId, Option<String>)>,
}

/// What one batch did to mask lists. The host sorts a batch (plugin-api `order`): filter
/// removals before additions, so a filter removed after another was added in the same batch
/// arrives first. That matters only when a mask emptied by a removal comes back in the batch:
/// if the addition came first in the kernel, the mask kept its place; if not, it went to the
/// end. Where the two differ (masks after it, or masks added in the batch), the order is not
/// known.
#[derive(Default)]
struct BatchMarks {
    /// Masks emptied in the batch, and whether other masks followed them then.
    emptied: HashMap<(PrioKey, MaskId), bool>,
    /// Masks appended in the batch.
    added: HashSet<(PrioKey, MaskId)>,
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
            pending_police: Vec::new(),
            retired: Retired::default(),
            chain_entries: 0,
            last_gen: 0,
            prios: HashMap::new(),
            replaying: false,
            batch: None,
            order_changes: Vec::new(),
        }
    }

    /// A batch of changes begins (one `Plugin::apply`, which the host sorts: removals of
    /// filters before additions, so a mask emptied and made again in it has no known place).
    pub fn begin_batch(&mut self) {
        self.batch = Some(BatchMarks::default());
    }

    pub fn end_batch(&mut self) {
        self.batch = None;
    }

    /// A replay (the host's sync) begins: the filters new to the table come in handle order,
    /// not in the order they were made.
    pub fn begin_replay(&mut self) {
        self.replaying = true;
    }

    pub fn end_replay(&mut self) {
        self.replaying = false;
    }

    /// Keeps the order of `id`'s prio for a filter added (`Some(new)`) or removed, then decides
    /// which of the prio's filters cannot run for want of their order.
    fn track_order(&mut self, id: FilterId, old: Option<MaskId>, new: Option<MaskId>) {
        let pk = prio_key(&id);
        let replaying = self.replaying;
        let po = self.prios.entry(pk).or_insert_with(|| PrioOrder {
            masks: Vec::new(),
            known: true,
        });
        let added = old.is_none() && new.is_some();
        match (old, new) {
            (Some(o), Some(n)) if o == n => {}
            (o, n) => {
                // fl_change: the new mask is found or appended before the old one is put
                if let Some(n) = n {
                    let fresh = !po.masks.iter().any(|(m, _)| *m == n);
                    if let (true, Some(b)) = (fresh, self.batch.as_mut()) {
                        let had_after = b.emptied.get(&(pk, n.clone())).copied();
                        let added_here = po
                            .masks
                            .iter()
                            .any(|(m, _)| b.added.contains(&(pk, m.clone())));
                        if had_after == Some(true) || (had_after.is_some() && added_here) {
                            po.known = false;
                        }
                        b.added.insert((pk, n.clone()));
                    }
                    po.insert(id.handle, n);
                    if o.is_none() && replaying {
                        po.known = false;
                    }
                }
                if let Some(o) = o {
                    let at = po.masks.iter().position(|(m, _)| *m == o);
                    let n_masks = po.masks.len();
                    po.remove(id.handle, &o);
                    let gone = !po.masks.iter().any(|(m, _)| *m == o);
                    if let (true, Some(at), Some(b)) = (gone, at, self.batch.as_mut()) {
                        b.emptied.insert((pk, o), at + 1 < n_masks);
                    }
                }
            }
        }
        if po.masks.is_empty() {
            self.prios.remove(&pk);
            return;
        }
        if po.known {
            // made in notification order: nothing is refused for its order
            return;
        }
        let handles: Vec<u32> = po.masks.iter().flat_map(|(_, hs)| hs.clone()).collect();
        let fid = |h: u32| FilterId { handle: h, ..id };
        let info = |t: &Table, h: u32| {
            t.filters.get(&fid(h)).and_then(|e| {
                crate::compile::compile_match(&e.filter)
                    .ok()
                    .map(|m| (m, mask_of(&e.filter)))
            })
        };
        let all: Vec<(u32, Option<Placed>)> =
            handles.iter().map(|h| (*h, info(self, *h))).collect();
        let clash = |a: &Placed, b: &Placed| {
            let ranged = matches!(a.1, MaskId::Known(_, s, d) if s || d);
            (a.1 != b.1 || ranged) && may_overlap(&a.0, &b.0)
        };
        let why = |other: u32| {
            format!(
                "order within pref {} unknown (filters replayed in handle order, or a mask removed and made again in one batch) and handle {:#x} may match the same frames: the kernel runs it until the pref is emptied",
                id.prio, other
            )
        };
        let mut refused: HashMap<u32, String> = HashMap::new();
        if added {
            // a filter added: only its pairs are new (O(n))
            for (h, _) in &all {
                if let Some(r) = self
                    .filters
                    .get(&fid(*h))
                    .and_then(|e| e.order_refused.clone())
                {
                    refused.insert(*h, r);
                }
            }
            if let Some(Some(a)) = all.iter().find(|(h, _)| *h == id.handle).map(|(_, m)| m) {
                for (h, b) in &all {
                    let Some(b) = b else { continue };
                    if *h != id.handle && clash(a, b) {
                        refused.entry(id.handle).or_insert_with(|| why(*h));
                        refused.entry(*h).or_insert_with(|| why(id.handle));
                    }
                }
            }
        } else {
            // removed or replaced: every pair again
            for (x, (hx, a)) in all.iter().enumerate() {
                let Some(a) = a else { continue };
                for (hy, b) in all.iter().skip(x + 1) {
                    let Some(b) = b else { continue };
                    if clash(a, b) || clash(b, a) {
                        refused.entry(*hx).or_insert_with(|| why(*hy));
                        refused.entry(*hy).or_insert_with(|| why(*hx));
                    }
                }
            }
        }
        for h in handles {
            if let Some(e) = self.filters.get_mut(&fid(h)) {
                let now = refused.remove(&h);
                if h != id.handle && now != e.order_refused {
                    self.order_changes.push((fid(h), now.clone()));
                }
                e.order_refused = now;
            }
        }
    }

    /// Filters other than the one changed that stopped running (with the reason) or run again
    /// (`None`) for their order since the last call.
    pub fn take_order_changes(&mut self) -> Vec<(FilterId, Option<String>)> {
        std::mem::take(&mut self.order_changes)
    }

    /// Waits for a grace period, then frees what was retired before it; false when nothing
    /// was retired.
    fn reclaim(&mut self, dp: &mut dyn Backend) -> Result<bool, TableError> {
        if self.retired.is_empty() {
            return Ok(false);
        }
        dp.synchronize()?;
        let r = std::mem::take(&mut self.retired);
        for (k, first, count) in r.chains {
            let _ = dp.set_chain(k, None);
            self.chain_entries -= 1;
            self.free(first, count);
        }
        self.free_stats.extend(r.stats);
        self.free_police.extend(r.police);
        Ok(true)
    }

    /// The end of a change (its flips done): police slots it gave up are retired.
    fn retire_pending(&mut self) {
        self.retired.police.append(&mut self.pending_police);
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
            dp.set_port(ifindex, None)?;
            if let Some(l) = self.ports.remove(&ifindex) {
                // packets that looked the port up before it went may still walk these
                for (chain, first, count) in l.chains {
                    let k = ChainKey {
                        ifindex,
                        gen: l.gen,
                        chain,
                    };
                    self.retired.chains.push((k, first, count));
                }
            }
        }
        let ids: Vec<FilterId> = self.filters.keys().copied().collect();
        let mut res = Ok(());
        for id in ids {
            res = res.and(self.recompile(dp, id));
        }
        let res = res.and(self.rebuild(dp, None));
        self.retire_pending();
        res
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
                if self.free_stats.is_empty() && self.next_stats as usize >= MAX_FILTERS {
                    self.reclaim(dp)?;
                }
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
        let old_mask = self.filters.get(&id).map(|e| mask_of(&e.filter));
        let new_mask = mask_of(&f);
        self.filters.insert(
            id,
            Entry {
                filter: f,
                compiled,
                stats_id,
                order_refused: None,
            },
        );
        self.track_order(id, old_mask, Some(new_mask));
        let taken = match self.reason(&id) {
            None => Taken::Running,
            Some(r) => Taken::Unsupported(r.to_string()),
        };
        let res = self
            .sync_buckets(dp, id)
            .and_then(|_| self.rebuild(dp, Some(&touched)));
        self.retire_pending();
        res.map(|_| taken)
    }

    /// Removes a filter; the ports it ran on are rebuilt.
    pub fn remove(&mut self, dp: &mut dyn Backend, id: FilterId) -> Result<(), TableError> {
        let Some(e) = self.filters.remove(&id) else {
            return Ok(());
        };
        self.track_order(id, Some(mask_of(&e.filter)), None);
        let touched: BTreeSet<u32> = e.filter.devices().into_iter().collect();
        let res = self
            .rebuild(dp, Some(&touched))
            .and_then(|_| self.sync_buckets(dp, id));
        // the generations flipped away from counted into it until now
        self.retired.stats.push(e.stats_id);
        self.retire_pending();
        res
    }

    /// Every filter held, with its stats id and whether it runs.
    pub fn filters(&self) -> impl Iterator<Item = (&TcFilter, u32, bool)> {
        self.filters.values().map(|e| {
            (
                &e.filter,
                e.stats_id,
                e.compiled.is_ok() && e.order_refused.is_none(),
            )
        })
    }

    /// Why a filter does not run, if it does not.
    pub fn reason(&self, id: &FilterId) -> Option<&str> {
        self.filters.get(id).and_then(|e| match &e.compiled {
            Err(s) => Some(s.as_str()),
            Ok(_) => e.order_refused.as_deref(),
        })
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
                // the live generation may still use it: retired after this change's flips
                self.pending_police.push(b.slot);
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
                    if self.free_police.is_empty() && self.next_police as usize >= MAX_POLICERS {
                        self.reclaim(dp)?;
                    }
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
        // tc's order within a chain: by prio, within a prio flower's (masks in list order, a
        // mask's filters in creation order: PrioOrder), then handle.
        let mut rules: BTreeMap<(u32, u16, u64, u32), Rule> = BTreeMap::new();
        for (id, e) in &self.filters {
            let rank = self
                .prios
                .get(&prio_key(id))
                .map(|p| p.rank(id.handle))
                .unwrap_or(u64::MAX);
            let c = match &e.compiled {
                Ok(c) if e.order_refused.is_none() => c,
                _ => {
                    // held but not run here: a trap keeps its place in the order
                    if crate::compile::traps_on(&e.filter, ifindex) {
                        let mut r = crate::compile::trap(&e.filter);
                        // not counted: the kernel runs it (and counts it)
                        r.stats_id = u32::MAX;
                        rules.insert((id.chain, id.prio, rank, id.handle), r);
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
            rules.insert((id.chain, id.prio, rank, id.handle), r);
        }
        let mut by_chain: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
        for ((chain, _, _, _), r) in rules {
            by_chain.entry(chain).or_default().push(r);
        }
        let old = self.ports.remove(&ifindex).unwrap_or_default();
        self.last_gen = self.last_gen.wrapping_add(1).max(1);
        let gen = self.last_gen;
        let mut layout = PortLayout {
            gen,
            chains: Vec::new(),
        };
        let mut failed = None;
        if self.chain_entries + by_chain.len() > MAX_CHAINS {
            if let Err(e) = self.reclaim(dp) {
                failed = Some(e);
            } else if self.chain_entries + by_chain.len() > MAX_CHAINS {
                failed = Some(TableError::ChainsFull);
            }
        }
        for (chain, rs) in &by_chain {
            if failed.is_some() {
                break;
            }
            let n = rs.len() as u32;
            let first = match self.alloc(n) {
                Some(f) => Some(f),
                None => match self.reclaim(dp) {
                    Ok(true) => self.alloc(n),
                    Ok(false) => None,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                },
            };
            let Some(first) = first else {
                failed = Some(TableError::RulesFull);
                break;
            };
            for (i, r) in rs.iter().enumerate() {
                if let Err(e) = dp.set_rule(first + i as u32, r) {
                    failed = Some(e.into());
                    break;
                }
            }
            if failed.is_some() {
                self.free(first, n);
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
                self.free(first, n);
                failed = Some(e.into());
                break;
            }
            layout.chains.push((*chain, first, n));
            self.chain_entries += 1;
        }
        let flip = if failed.is_none() {
            dp.set_gen(ifindex, PortVal { gen, flags: 0 })
                .map_err(TableError::from)
        } else {
            Ok(())
        };
        if failed.is_none() && flip.is_ok() {
            // the old generation: packets may still walk it, retired until a grace period
            for (chain, first, count) in old.chains {
                let k = ChainKey {
                    ifindex,
                    gen: old.gen,
                    chain,
                };
                self.retired.chains.push((k, first, count));
            }
            self.ports.insert(ifindex, layout);
        } else {
            // the new one never went live: freed now
            for (chain, first, count) in &layout.chains {
                let _ = dp.set_chain(
                    ChainKey {
                        ifindex,
                        gen,
                        chain: *chain,
                    },
                    None,
                );
                self.chain_entries -= 1;
                self.free(*first, *count);
            }
            self.ports.insert(ifindex, old);
        }
        flip?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tc::*;
    use std::collections::HashSet;

    /// A data path that knows what a packet which started before a flip may still read: the
    /// `CHAINS` entries and `RULES` slots of the generation flipped away from (or of a port
    /// given up), and the counters and buckets its rules name, until `synchronize`. Writing
    /// any of them before is a violation.
    #[derive(Default)]
    struct Hazards {
        live: HashMap<u32, u32>,
        chains: HashMap<ChainKey, ChainVal>,
        rules: HashMap<u32, Rule>,
        h_keys: HashSet<ChainKey>,
        h_slots: HashSet<u32>,
        h_stats: HashSet<u32>,
        h_police: HashSet<u32>,
        violations: Vec<String>,
        syncs: usize,
    }

    impl Hazards {
        fn in_flight(&mut self, ifindex: u32, gen: u32) {
            let keys: Vec<(ChainKey, ChainVal)> = self
                .chains
                .iter()
                .filter(|(k, _)| k.ifindex == ifindex && k.gen == gen)
                .map(|(k, v)| (*k, *v))
                .collect();
            for (k, v) in keys {
                self.h_keys.insert(k);
                for slot in v.first..v.first + v.count {
                    self.h_slots.insert(slot);
                    if let Some(r) = self.rules.get(&slot) {
                        self.h_stats.insert(r.stats_id);
                        for a in &r.actions[..r.n_actions as usize] {
                            if a.kind == A_POLICE {
                                self.h_police.insert(a.arg);
                            }
                        }
                    }
                }
            }
        }
    }

    impl Backend for Hazards {
        fn attach(&mut self, _: u32) -> Result<Option<String>, Error> {
            Ok(None)
        }
        fn detach(&mut self, _: u32) -> Result<(), Error> {
            Ok(())
        }
        fn rx_vlan_offload(&mut self, _: u32) -> Result<bool, Error> {
            Ok(false)
        }
        fn set_port(&mut self, ifindex: u32, v: Option<PortVal>) -> Result<(), Error> {
            match v {
                Some(v) => {
                    self.live.insert(ifindex, v.gen);
                }
                None => {
                    if let Some(g) = self.live.remove(&ifindex) {
                        self.in_flight(ifindex, g);
                    }
                }
            }
            Ok(())
        }
        fn set_gen(&mut self, ifindex: u32, v: PortVal) -> Result<(), Error> {
            if let Some(g) = self.live.insert(ifindex, v.gen) {
                self.in_flight(ifindex, g);
            }
            Ok(())
        }
        fn set_rule(&mut self, slot: u32, r: &Rule) -> Result<(), Error> {
            if self.h_slots.contains(&slot) {
                self.violations
                    .push(format!("RULES[{slot}] rewritten in flight"));
            }
            self.rules.insert(slot, *r);
            Ok(())
        }
        fn set_chain(&mut self, k: ChainKey, v: Option<ChainVal>) -> Result<(), Error> {
            if self.h_keys.contains(&k) {
                self.violations
                    .push(format!("CHAINS {k:?} changed in flight"));
            }
            match v {
                Some(v) => self.chains.insert(k, v),
                None => self.chains.remove(&k),
            };
            Ok(())
        }
        fn reset_stats(&mut self, id: u32) -> Result<(), Error> {
            if self.h_stats.contains(&id) {
                self.violations
                    .push(format!("counter {id} reused in flight"));
            }
            Ok(())
        }
        fn stats(&self, _: u32) -> FilterStats {
            FilterStats::default()
        }
        fn set_police(&mut self, id: u32, _: &Police) -> Result<(), Error> {
            if self.h_police.contains(&id) {
                self.violations
                    .push(format!("bucket {id} reused in flight"));
            }
            Ok(())
        }
        fn reasons(&self) -> Vec<(&'static str, u64)> {
            Vec::new()
        }
        fn synchronize(&mut self) -> Result<(), Error> {
            self.syncs += 1;
            self.h_keys.clear();
            self.h_slots.clear();
            self.h_stats.clear();
            self.h_police.clear();
            Ok(())
        }
        fn detach_all(&mut self) -> Vec<(u32, Error)> {
            Vec::new()
        }
    }

    fn filter(chain: u32, prio: u16, handle: u32, actions: Vec<TcActionSpec>) -> TcFilter {
        let mut f = TcFilter::new(TcTarget::Dev(2), TC_H_MIN_INGRESS, prio, handle);
        f.chain = chain;
        f.protocol = 0x0800;
        f.kind = "flower".into();
        f.matches = TcMatch::flower(FlowerKeys {
            eth_type: Some(0x0800).into(),
            ..Default::default()
        });
        f.actions = actions.into();
        f
    }

    fn police(index: u32) -> TcActionSpec {
        TcActionSpec {
            kind: "police".into(),
            index,
            control: TcControl::Shot,
            params: TcActionParams::Police(TcPolice {
                rate_bytes_ps: 1000,
                burst_bytes: 1000,
                conform: TcControl::Ok,
                exceed: TcControl::Shot,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_a_packet_in_flight_may_read_is_reused_before_a_grace_period() {
        let mut dp = Hazards::default();
        let mut t = Table::new();
        t.set_owned(&mut dp, 2, true).unwrap();
        t.set_owned(&mut dp, 3, true).unwrap();
        let goto = |c| vec![TcActionSpec::gact(TcControl::GotoChain(c))];
        let drop_ = || vec![TcActionSpec::gact(TcControl::Shot)];
        // goto chain 1, a rule there; then every kind of change, many times over
        t.upsert(&mut dp, filter(0, 1, 1, goto(1))).unwrap();
        for round in 0..300u32 {
            let h = 10 + round;
            t.upsert(&mut dp, filter(1, 1, h, drop_())).unwrap();
            t.upsert(&mut dp, filter(1, 2, h, vec![police(round % 3 + 1)]))
                .unwrap();
            t.upsert(&mut dp, filter(2, 1, h, drop_())).unwrap();
            let old = FilterId::of(&filter(1, 1, h, drop_()));
            t.remove(&mut dp, old).unwrap();
            t.remove(&mut dp, FilterId::of(&filter(1, 2, h, drop_())))
                .unwrap();
            t.remove(&mut dp, FilterId::of(&filter(2, 1, h, drop_())))
                .unwrap();
            if round % 50 == 0 {
                t.set_owned(&mut dp, 3, false).unwrap();
                t.set_owned(&mut dp, 3, true).unwrap();
            }
        }
        assert_eq!(dp.violations, Vec::<String>::new());
        // the live layout is the last one: chain 0 only, its goto
        let g = dp.live[&2];
        let live: Vec<&ChainKey> = dp.chains.keys().filter(|k| k.gen == g).collect();
        assert_eq!(live.len(), 1);
        // grace periods only when space ran out, not per change (1800 changes)
        assert!(dp.syncs > 0 && dp.syncs < 100, "{} grace periods", dp.syncs);
    }
}
