//! A plugin's worker thread: the only caller of the plugin. It runs the initial sync (streamed
//! or replayed), then drains the queue in dependency order, answers the host's refusals itself,
//! and records one outcome per change in the held set and the status.

mod sync;

use super::held::{Held, Hint};
use super::keys::key_hash;
use super::limits::{host_refusal, not_offloaded, tc_refusal, Refused};
use super::ports::PortFilter;
use super::queue::{PendingMap, Queue, Work};
use super::status::{outcome_code, PluginState, PluginStatus, TcOutcome};
use super::stream::StreamFeed;
use super::views::Views;
use super::{Lookup, MirrorAccess, ReplaySource, Size, TcChain, BATCH, KINDS};
use crate::binding::Bound;
use ekho_plugin_api::object::TcTarget;
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::{order, ObjectKey};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the plugin's counters are read while it is idle.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// A chain of tc filters: target, parent (hook or class), chain.
pub(super) type ChainKey = (TcTarget, u32, u32);

/// What one batch's refusals are judged against ([`Worker::admission`]).
pub(super) struct Admission {
    /// The port scope, for plugins that take tc filters.
    ports: Option<PortFilter>,
    /// The `(pref, protocol)` of the filters not handed over, by chain.
    chains: HashMap<ChainKey, Vec<(u16, u16)>>,
}

/// The worker's private state: what the plugin holds, and with which outcome.
pub(super) struct Worker {
    plugin: Bound,
    queue: Arc<Queue>,
    status: Arc<Mutex<PluginStatus>>,
    caps: Capabilities,
    /// Objects given to the plugin and not removed (by a 64-bit hash of their key, about 9 bytes
    /// an entry), with their kind and last outcome code.
    held: Held,
    replay: ReplaySource,
    held_per_kind: [u64; KINDS],
    per_outcome: [[u64; 4]; KINDS],
    last_stats: Instant,
    /// Set once the plugin failed: it is never called again.
    failed: bool,
    /// Additions refused at a declared limit, offered again when room frees up.
    refused: Refused,
    lookup: Lookup,
    size: Size,
    tc_chain: TcChain,
    /// The initial dump, streamed (plugins loaded at start-up).
    feed: Option<StreamFeed>,
}

impl Worker {
    pub(super) fn new(
        plugin: Bound,
        queue: Arc<Queue>,
        status: Arc<Mutex<PluginStatus>>,
        caps: Capabilities,
        mirror: MirrorAccess,
        feed: Option<StreamFeed>,
    ) -> Worker {
        let MirrorAccess {
            replay,
            lookup,
            size,
            tc_chain,
        } = mirror;
        Worker {
            plugin,
            queue,
            status,
            caps,
            held: Held::default(),
            held_per_kind: [0; KINDS],
            per_outcome: [[0; 4]; KINDS],
            last_stats: Instant::now(),
            replay,
            failed: false,
            refused: Refused::default(),
            lookup,
            size,
            tc_chain,
            feed,
        }
    }

    pub(super) fn run(mut self) {
        if let Some(feed) = self.feed.take() {
            if let Err(reason) = self.stream_sync(feed) {
                self.fail(reason);
            }
        }
        while !self.failed {
            let Some(work) = self.queue.next_work(STATS_EVERY) else {
                if self.last_stats.elapsed() >= STATS_EVERY {
                    self.refresh_stats();
                }
                continue;
            };
            let Work {
                pending,
                events,
                replay,
                reevaluate,
                shutdown,
            } = work;
            if shutdown {
                if let Err(e) = self.plugin.shutdown().into_result() {
                    tracing::warn!(plugin = %self.name(), "shutdown: {e}");
                }
                return;
            }
            let result = if replay {
                self.replay_all().and_then(|()| self.step(pending, events))
            } else {
                self.step(pending, events)
            };
            let result = if reevaluate && !replay {
                result.and_then(|()| self.reevaluate_all())
            } else {
                result
            };
            if let Err(reason) = result {
                self.fail(reason);
            }
            // Counters go on being read under load too (flows' keep-alive depends on them).
            if self.last_stats.elapsed() >= STATS_EVERY {
                self.refresh_stats();
            }
        }
        // Failed: never call the plugin again, not even shutdown; wait to be stopped.
        self.queue.wait_shutdown();
    }

    fn name(&self) -> String {
        self.status.lock().unwrap().name.clone()
    }

    fn fail(&mut self, reason: String) {
        self.failed = true;
        tracing::error!(plugin = %self.name(), "plugin failed, no longer called: {reason}");
        self.queue.close();
        let mut s = self.status.lock().unwrap();
        s.state = Some(PluginState::Failed);
        s.reason = Some(reason);
    }

    fn step(
        &mut self,
        mut batch: PendingMap,
        events: VecDeque<NotifierEvent>,
    ) -> Result<(), String> {
        if !events.is_empty() {
            let v: Vec<NotifierEvent> = events.into_iter().collect();
            self.plugin
                .notify(v.as_slice().into())
                .into_result()
                .map_err(|e| e.to_string())?;
            self.status.lock().unwrap().events += v.len() as u64;
        }

        // Turn pending entries into changes, answering refusals ourselves. The changes view
        // the objects the queues share (no copy per plugin: `views`).
        let mut changes = Views::with_capacity(batch.len());
        let mut adm = self.admission();
        let mut refused = 0u64;
        // Chains whose filters changed, from the lowest pref changed: that pref and what
        // follows are judged again once the batch is applied.
        let mut chains: HashMap<ChainKey, u16> = HashMap::new();
        for (key, p) in batch.drain(..) {
            if let ObjectKey::TcFilter {
                target,
                parent,
                chain,
                prio,
                ..
            } = key
            {
                let from = chains.entry((target, parent, chain)).or_insert(prio);
                *from = (*from).min(prio);
            }
            let hash = key_hash(&key);
            let (delivered, hint) = self.held.contains_hinted(hash);
            match (p.base, p.target) {
                (base, None) => {
                    self.refused.forget(&key);
                    self.forget_tc(&key);
                    if let (true, Some(old)) = (delivered, base) {
                        changes.remove(old, hash, hint);
                    }
                }
                (base, Some(t)) => {
                    if let Some(refusal) = self.refusal(&mut adm, &t, !delivered) {
                        if delivered {
                            if let Some(b) = base {
                                changes.remove(b, hash, hint);
                            }
                        }
                        refused += 1;
                        self.refused.remember(&t, &refusal);
                        if !matches!(*t, Object::TcFilter(_)) {
                            self.record_failure(&t, "add", &refusal);
                        }
                        continue;
                    }
                    match (delivered, base) {
                        (true, Some(b)) if b == t => {}
                        (true, Some(b)) => changes.update(b, t, hash, hint),
                        _ => {
                            // Count it now so the limit check sees additions of this batch.
                            self.held_per_kind[t.kind().index()] += 1;
                            changes.add(t, hash, hint);
                        }
                    }
                }
            }
        }
        // The emptied map goes back to the queue with its capacity: a burst does not regrow it
        // (and copy every pending entry again) each time the worker takes one.
        self.queue.recycle(batch);
        // held_per_kind was bumped for additions to enforce limits within the batch; undo, the
        // outcomes below recount.
        for c in changes.changes() {
            if let Change::Add(o) = c {
                self.held_per_kind[o.kind().index()] -= 1;
            }
        }
        changes.sort_batch();

        self.apply_hashed(
            changes.changes(),
            Some(changes.hashes()),
            Some(changes.hints()),
        )?;
        drop(changes);
        self.status.lock().unwrap().refused += refused;
        self.reevaluate_chains(chains)?;
        self.offer_refused_again()?;
        self.refresh_stats();
        Ok(())
    }

    /// After a port entered or left the scope: walks the mirror and adds what is now taken but
    /// not held, removes what is held but no longer taken.
    fn reevaluate_all(&mut self) -> Result<(), String> {
        let mut cursor: Option<ObjectKey> = None;
        loop {
            let mut next = None;
            let mut done = false;
            let mut chunk = Vec::new();
            (self.replay)(cursor.as_ref(), BATCH, &mut chunk, &mut |last, fin| {
                next = last.cloned();
                done = fin;
            });
            if done {
                return Ok(());
            }
            cursor = next;
            let held = &mut self.held;
            let (mut changes, kept_filters) = self.queue.with_filter(move |takes| {
                let mut changes = Vec::new();
                let mut kept_filters = Vec::new();
                for c in chunk {
                    let o = match c {
                        Change::Add(o) => o,
                        _ => continue,
                    };
                    let is_held = held.contains(key_hash(&o.key()));
                    match (takes(&o), is_held) {
                        (true, false) => changes.push(Change::Add(o)),
                        (false, true) => changes.push(Change::Remove(o)),
                        (true, true) if o.kind() == ObjectKind::TcFilter => kept_filters.push(o),
                        _ => {}
                    }
                }
                (changes, kept_filters)
            });
            // The host's refusals with the ports as they are now, through the same admission as
            // every other path: a tc filter the plugin cannot run whole (a mirred target or a
            // block's device that left the scope) is not added, or removed if held; its reason
            // is kept. Additions count against declared limits as they go.
            let mut adm = self.admission();
            let mut adding = Vec::with_capacity(changes.len());
            for c in changes.drain(..) {
                let Change::Add(o) = c else {
                    adding.push(c);
                    continue;
                };
                match self.refusal(&mut adm, &o, true) {
                    Some(why) => self.refused.remember(&o, &why),
                    None => {
                        self.held_per_kind[o.kind().index()] += 1;
                        adding.push(Change::Add(o));
                    }
                }
            }
            let mut changes = adding;
            for c in &changes {
                if let Change::Add(o) = c {
                    self.held_per_kind[o.kind().index()] -= 1;
                }
            }
            for o in kept_filters {
                if self.refusal(&mut adm, &o, false).is_some() {
                    changes.push(Change::Remove(o));
                }
            }
            order::sort_batch(&mut changes);
            self.apply_in_batches(&changes)?;
        }
    }

    /// When room has freed up under a declared limit, offers remembered refused additions again
    /// (read afresh from the mirror), so a smaller table converges to what fits.
    fn offer_refused_again(&mut self) -> Result<(), String> {
        if self.refused.is_empty() {
            return Ok(());
        }
        let mut adds = Vec::new();
        let mut adm = self.admission();
        for k in self.refused.take_offerable(&self.caps, &self.held_per_kind) {
            if self.held.contains(key_hash(&k)) {
                continue;
            }
            let Some(o) = (self.lookup)(&k) else {
                continue;
            };
            if !self.queue.takes(&o) {
                continue;
            }
            // Through the same admission as every other path: a tc filter the plugin cannot
            // run is not handed over because room freed up (its reason is kept). The limit
            // has room for it (`take_offerable`).
            match self.refusal(&mut adm, &o, false) {
                None => adds.push(Change::Add(o)),
                Some(why) => self.refused.remember(&o, &why),
            }
        }
        if adds.is_empty() {
            return Ok(());
        }
        order::sort_batch(&mut adds);
        self.apply_in_batches(&adds)?;
        Ok(())
    }

    /// Hands `changes` to the plugin, at most [`BATCH`] per call, and records the outcomes.
    fn apply_in_batches(&mut self, changes: &[Change]) -> Result<(), String> {
        self.apply_hashed(changes, None, None)
    }

    /// [`Worker::apply_in_batches`] with the key hashes of `changes` when already known (and
    /// where the held set had them, when looked up).
    fn apply_hashed(
        &mut self,
        changes: &[Change],
        hashes: Option<&[u64]>,
        hints: Option<&[Hint]>,
    ) -> Result<(), String> {
        for (i, chunk) in changes.chunks(BATCH).enumerate() {
            let outcomes = self
                .plugin
                .apply(chunk.into())
                .into_result()
                .map_err(|e| e.to_string())?;
            let range = i * BATCH..(i * BATCH + chunk.len());
            let h = hashes.map(|h| &h[range.clone()]);
            let hi = hints.map(|h| &h[range]);
            self.record(chunk, &outcomes, h, hi);
        }
        Ok(())
    }

    fn record(
        &mut self,
        chunk: &[Change],
        outcomes: &[Outcome],
        hashes: Option<&[u64]>,
        hints: Option<&[Hint]>,
    ) {
        for (i, (c, o)) in chunk.iter().zip(outcomes).enumerate() {
            let kind = c.kind();
            let k = kind.index();
            let code = outcome_code(o);
            let hash = || hashes.map_or_else(|| key_hash(&c.key()), |h| h[i]);
            let hint = hints.map_or(Hint::NONE, |h| h[i]);
            match c {
                Change::Remove(_) => {
                    if let Some((_, prev)) = self.held.remove_hinted(hash(), hint) {
                        self.held_per_kind[k] -= 1;
                        self.per_outcome[k][prev as usize] -= 1;
                    }
                }
                Change::Add(_) | Change::Update { .. } => {
                    if let Some((_, prev)) =
                        self.held
                            .insert_hinted(hash(), kind.index() as u8, code, hint)
                    {
                        self.per_outcome[k][prev as usize] -= 1;
                    } else {
                        self.held_per_kind[k] += 1;
                    }
                    self.per_outcome[k][code as usize] += 1;
                }
            }
            match o {
                Outcome::Failed(_) => self.record_failure(c.object(), c.op(), o),
                Outcome::UnsupportedBecause(why) if kind != ObjectKind::TcFilter => self
                    .status
                    .lock()
                    .unwrap()
                    .note_unsupported(c.object(), c.op(), why),
                _ => {}
            }
        }
        // Where a filter the plugin refused with a reason is, in tc's words (the port table
        // read once per call, only if one is).
        let mut ports = None;
        let mut place = |f: &Object| match f {
            Object::TcFilter(f) => {
                let p = ports.get_or_insert_with(|| self.queue.ports());
                super::status::tc_filter_place(f, &|i| p.name(i))
            }
            _ => String::new(),
        };
        let tc: Vec<(ObjectKey, Option<TcOutcome>)> = chunk
            .iter()
            .zip(outcomes)
            .filter(|(c, _)| c.kind() == ObjectKind::TcFilter)
            .map(|(c, o)| match c {
                Change::Remove(_) => (c.key(), None),
                _ => (c.key(), Some(TcOutcome::new(o, || place(c.object())))),
            })
            .collect();
        let mut s = self.status.lock().unwrap();
        s.count(outcomes);
        s.objects = self.held.len() as u64;
        s.per_outcome = self.per_outcome;
        for (key, o) in tc {
            match o {
                None => s.tc_outcomes.remove(&key),
                Some(o) => s.tc_outcomes.insert(key, o),
            };
        }
    }

    /// What the host's refusals are judged against for one batch or chunk: the port scope as
    /// of now for plugins that take tc filters (their mirred targets and shared blocks' devices
    /// must be owned ports), and the chains' filters not handed over, read from the mirror once
    /// per chain.
    pub(super) fn admission(&self) -> Admission {
        Admission {
            ports: self
                .caps
                .takes_kind(ObjectKind::TcFilter)
                .then(|| self.queue.ports()),
            chains: HashMap::new(),
        }
    }

    /// The host's answer for the plugin when it refuses `o` without calling it, in front of
    /// every path that hands the plugin an object (batches, syncs, re-evaluations, re-offers):
    /// a tc filter the plugin cannot run whole or that comes after one not handed over (its
    /// reason kept in the status, or dropped once it is taken), declared limits, ECMP width.
    pub(super) fn refusal(&self, adm: &mut Admission, o: &Object, adding: bool) -> Option<Outcome> {
        if let (Some(p), Object::TcFilter(f)) = (adm.ports.as_ref(), o) {
            let not_offloaded = adm
                .chains
                .entry((f.target, f.parent, f.chain))
                .or_insert_with(|| {
                    not_offloaded(&self.caps, p, &(self.tc_chain)(f.target, f.parent, f.chain))
                });
            let why = tc_refusal(&self.caps, o, p, not_offloaded);
            let mut s = self.status.lock().unwrap();
            match why {
                Some(why) => {
                    let name = |i: u32| p.name(i);
                    s.tc_refused.insert(
                        o.key(),
                        super::status::TcRefusal {
                            filter: super::status::tc_filter_place(f, &name),
                            reason: why.describe(&name),
                            by: "host",
                        },
                    );
                    return Some(Outcome::Unsupported);
                }
                None => {
                    s.tc_refused.remove(&o.key());
                }
            }
        }
        host_refusal(&self.caps, &self.held_per_kind, o, adding)
    }

    /// After tc filters changed in these chains (from the lowest `pref` changed): the filters
    /// of that pref and the later ones are judged again, as an earlier one or one beside them
    /// not handed over may have come or gone (added, deleted, replaced). Adds what is now admitted and not held, removes what is
    /// held and now refused.
    fn reevaluate_chains(&mut self, chains: HashMap<ChainKey, u16>) -> Result<(), String> {
        if chains.is_empty() {
            return Ok(());
        }
        let mut adm = self.admission();
        let mut changes = Vec::new();
        for ((target, parent, chain), from) in chains {
            let list = (self.tc_chain)(target, parent, chain);
            // The chain read once: the admission's verdict on it comes from this list too.
            if let Some(p) = adm.ports.as_ref() {
                let no = not_offloaded(&self.caps, p, &list);
                adm.chains.insert((target, parent, chain), no);
            }
            for f in list {
                // From the changed pref on: the filters beside a changed one are judged again
                // too (`beside pref 1 chain 0`); the changed ones the same as in their batch.
                if f.prio < from {
                    continue;
                }
                let o = Object::TcFilter(f);
                let held = self.held.contains(key_hash(&o.key()));
                // Not held and its change still queued (the mirror is ahead of the batch): it is
                // judged when that change is taken, not added twice.
                if !held && (!self.queue.takes(&o) || self.queue.is_pending(&o.key())) {
                    continue;
                }
                match (self.refusal(&mut adm, &o, !held), held) {
                    (Some(_), true) => changes.push(Change::Remove(o)),
                    (None, false) => {
                        self.held_per_kind[o.kind().index()] += 1;
                        changes.push(Change::Add(o));
                    }
                    (Some(why), false) => self.refused.remember(&o, &why),
                    (None, true) => {}
                }
            }
        }
        for c in &changes {
            if let Change::Add(o) = c {
                self.held_per_kind[o.kind().index()] -= 1;
            }
        }
        order::sort_batch(&mut changes);
        self.apply_in_batches(&changes)
    }

    /// A tc filter is gone (or out of the port scope): nothing more to say about it.
    fn forget_tc(&self, key: &ObjectKey) {
        if key.kind() == ObjectKind::TcFilter {
            let mut s = self.status.lock().unwrap();
            s.tc_refused.remove(key);
            s.tc_outcomes.remove(key);
        }
    }

    fn record_failure(&self, o: &Object, op: &str, outcome: &Outcome) {
        self.status.lock().unwrap().note_failure(o, op, outcome);
    }

    fn refresh_stats(&mut self) {
        self.last_stats = Instant::now();
        if self.failed {
            return;
        }
        match self.plugin.stats().into_result() {
            Ok(st) => {
                let mut s = self.status.lock().unwrap();
                s.counters = st
                    .counters
                    .iter()
                    .map(|c| serde_json::json!({"kind": c.kind.as_str(), "name": c.name.as_str(), "value": c.value}))
                    .collect();
                s.stats_text = st.text.to_string();
            }
            Err(e) => self.fail(e.to_string()),
        }
        if self.caps.takes_kind(ObjectKind::Flow) && !self.failed {
            match self.plugin.object_stats(ObjectKind::Flow).into_result() {
                Ok(v) => self.status.lock().unwrap().flow_stats = Arc::new(v.into_vec()),
                Err(e) => self.fail(e.to_string()),
            }
        }
        if self.caps.takes_kind(ObjectKind::TcFilter) && !self.failed {
            match self.plugin.object_stats(ObjectKind::TcFilter).into_result() {
                Ok(v) => self.status.lock().unwrap().tc_stats = Arc::new(v.into_vec()),
                Err(e) => self.fail(e.to_string()),
            }
        }
        let depth = self.queue.depth();
        let dropped = self.queue.events_dropped();
        let mut s = self.status.lock().unwrap();
        s.queue_depth = depth;
        s.events_dropped = dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_objects::{link, route};

    #[test]
    fn batch_order_respects_dependencies() {
        let mut v = [
            Change::Remove(link(5, "old")),
            Change::Add(route("10.0.0.0/24", 1, "10.1.0.1")),
            Change::Remove(route("10.9.0.0/24", 5, "10.9.0.1")),
            Change::Add(link(1, "new")),
        ];
        order::sort_batch(&mut v);
        let ops: Vec<String> = v
            .iter()
            .map(|c| format!("{} {}", c.op(), c.kind()))
            .collect();
        assert_eq!(
            ops,
            ["remove route", "add link", "add route", "remove link"]
        );
    }
}
