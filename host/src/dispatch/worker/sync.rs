//! The worker's syncs: the full replay read lazily from the mirror, and the initial sync fed by
//! the mirror's initial dump as it is made.

use super::Worker;
use crate::dispatch::held::Held;
use crate::dispatch::keys::key_hash;
use crate::dispatch::ports::takes;
use crate::dispatch::status::PluginState;
use crate::dispatch::stream::{StreamEnd, StreamFeed};
use crate::dispatch::{BATCH, KINDS};
use ekho_mirror::routes::Attrs;
use ekho_mirror::source::Initial;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::{order, ObjectKey};
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl Worker {
    /// The full replay: begin-sync, the mirror read chunk by chunk as additions, end-sync.
    pub(super) fn replay_all(&mut self) -> Result<(), String> {
        let started = self.begin_sync()?;
        let mut refused = 0u64;
        // The plugin holds nothing yet (a replay follows its load): what it is given is
        // appended and sorted once at the end, not inserted one by one.
        let bulk = self.held.begin_bulk((self.size)());
        // Where the replay's time goes (logged at debug): reading the mirror (on a reader thread,
        // overlapping with the rest), host-side preparation, the plugin's apply with outcome
        // recording.
        let (mut t_prep, mut t_apply) = (Duration::ZERO, Duration::ZERO);
        let mut count = 0usize;
        enum Msg {
            /// Additions in apply order, with the hashes of their keys (computed by the reader
            /// while the objects it just built are in its cache).
            Chunk(Vec<Change>, Vec<u64>),
            Done(Duration),
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(2);
        let (gtx, grx) = std::sync::mpsc::channel::<Vec<Change>>();
        let (replay, queue) = (self.replay.clone(), self.queue.clone());
        let result: Result<Option<Duration>, String> = std::thread::scope(|scope| {
            // The reader stays at most two chunks ahead. The gate moves when a chunk is read, so
            // changes to what it holds queue up as increments, applied after the replay.
            scope.spawn(move || {
                let mut cursor: Option<ObjectKey> = None;
                let mut t_read = Duration::ZERO;
                // Chunk buffers come back from the worker once applied; their contents are freed
                // here, where they were allocated, and the buffers reused.
                let mut spare: Vec<Vec<Change>> = Vec::new();
                loop {
                    while let Ok(mut g) = grx.try_recv() {
                        g.clear();
                        spare.push(g);
                    }
                    if queue.is_shut_down() {
                        return; // no Done: the worker ends the replay without end-sync
                    }
                    let mut next: Option<ObjectKey> = None;
                    let mut done = false;
                    let t0 = Instant::now();
                    let mut changes = spare.pop().unwrap_or_default();
                    replay(cursor.as_ref(), BATCH, &mut changes, &mut |last, fin| {
                        // Under the mirror's lock: from now on, changes up to `last` are
                        // increments.
                        queue.replay_passed(last, fin);
                        next = last.cloned();
                        done = fin;
                    });
                    t_read += t0.elapsed();
                    if done {
                        let _ = tx.send(Msg::Done(t_read));
                        return;
                    }
                    cursor = next;
                    queue.take_replayed(&mut changes);
                    order::sort_batch(&mut changes);
                    let hashes = changes.iter().map(|c| key_hash(&c.key())).collect();
                    if tx.send(Msg::Chunk(changes, hashes)).is_err() {
                        return; // the worker gave up (plugin failed)
                    }
                }
            });
            // Owned here, so an early return (plugin failure) drops it and stops the reader
            // before the scope joins it.
            let rx = rx;
            for msg in rx.iter() {
                let (mut changes, mut hashes) = match msg {
                    Msg::Chunk(c, h) => (c, h),
                    Msg::Done(t_read) => return Ok(Some(t_read)),
                };
                let t1 = Instant::now();
                count += changes.len();
                // On failure `rx` is dropped on return, which stops the reader.
                let t2 = self.apply_replayed(&mut changes, &mut hashes, &mut refused)?;
                t_prep += t2 - t1;
                let _ = gtx.send(changes);
                t_apply += t2.elapsed();
            }
            Ok(None)
        });
        if bulk {
            self.end_bulk();
        }
        let Some(t_read) = result? else {
            // Stopping mid-replay: no end-sync, which would sweep what was not replayed yet.
            return Ok(());
        };
        tracing::debug!(
            plugin = %self.name(),
            objects = count,
            read_ms = t_read.as_millis() as u64,
            prepare_ms = t_prep.as_millis() as u64,
            apply_ms = t_apply.as_millis() as u64,
            "replay done"
        );
        self.end_sync(started, refused)
    }

    /// Begin-sync; the plugin shows as syncing. Returns when the sync started.
    fn begin_sync(&mut self) -> Result<Instant, String> {
        let started = Instant::now();
        {
            // The sync hands over (or refuses) every tc filter anew.
            let mut s = self.status.lock().unwrap();
            s.state = Some(PluginState::Syncing);
            s.tc_refused.clear();
            s.tc_outcomes.clear();
        }
        self.plugin
            .begin_sync()
            .into_result()
            .map_err(|e| e.to_string())?;
        Ok(started)
    }

    /// Ends a bulk load of the held set. Two keys with one 64-bit hash count once, as in any
    /// hash table: the per-kind counts are kept equal to what is held.
    fn end_bulk(&mut self) {
        for (kind, code) in self.held.end_bulk() {
            self.held_per_kind[kind as usize] -= 1;
            self.per_outcome[kind as usize][code as usize] -= 1;
        }
    }

    /// End-sync, and the plugin's status as it stands after its sync.
    fn end_sync(&mut self, started: Instant, refused: u64) -> Result<(), String> {
        self.plugin
            .end_sync()
            .into_result()
            .map_err(|e| e.to_string())?;
        {
            let mut s = self.status.lock().unwrap();
            s.refused += refused;
            s.state = Some(PluginState::InSync);
            s.syncs += 1;
            s.last_sync_ms = started.elapsed().as_millis() as u64;
        }
        self.refresh_stats();
        Ok(())
    }

    /// Applies a chunk of replayed additions (in apply order, with their key hashes), answering
    /// the host's refusals (declared limits, ECMP width) itself. Returns when the host-side
    /// preparation ended (for the replay's timing log).
    fn apply_replayed(
        &mut self,
        changes: &mut Vec<Change>,
        hashes: &mut Vec<u64>,
        refused: &mut u64,
    ) -> Result<Instant, String> {
        // Count this chunk's additions as they go, so a limit holds within the chunk.
        let mut keep = vec![true; changes.len()];
        let mut any_refused = false;
        let mut adm = self.admission();
        for (i, c) in changes.iter().enumerate() {
            let o = c.object();
            if let Some(refusal) = self.refusal(&mut adm, o, true) {
                *refused += 1;
                any_refused = true;
                keep[i] = false;
                self.refused.remember(o, &refusal);
                if !matches!(o, Object::TcFilter(_)) {
                    self.record_failure(o, "add", &refusal);
                }
                continue;
            }
            self.held_per_kind[c.kind().index()] += 1;
        }
        if any_refused {
            let mut k = keep.iter();
            changes.retain(|_| *k.next().unwrap());
            let mut k = keep.iter();
            hashes.retain(|_| *k.next().unwrap());
        }
        for c in changes.iter() {
            self.held_per_kind[c.kind().index()] -= 1;
        }
        let prepared = Instant::now();
        if !changes.is_empty() {
            self.apply_hashed(changes, Some(hashes), None)?;
        }
        Ok(prepared)
    }

    /// The initial sync fed by the mirror's initial dump as it is made (see
    /// [`crate::dispatch::Fanout`]): begin-sync, the streamed additions, end-sync once the dump
    /// is installed. When the stream fell behind and was cut, the sync starts over from the
    /// installed mirror (a second begin-sync: the plugin marks everything again, the replay
    /// renews what is current, end-sync sweeps the rest).
    pub(super) fn stream_sync(&mut self, feed: StreamFeed) -> Result<(), String> {
        let started = self.begin_sync()?;
        let bulk = self.held.begin_bulk(0);
        let mut refused = 0u64;
        let mut count = 0usize;
        let mut result = Ok(());
        // The stream's attribute sets by number, the names of the links it has shown, and the
        // port filter as of the dump (the queue's own table moves on with later changes).
        let mut attrs: Vec<Attrs> = Vec::new();
        let mut names: HashMap<u32, RString> = HashMap::new();
        let mut ports = self.queue.port_scope();
        let mut changes: Vec<Change> = Vec::new();
        let mut filters: Vec<Change> = Vec::new();
        loop {
            let (new_attrs, mut items) = match feed.recv(Duration::from_millis(200)) {
                Ok(m) => m,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if self.queue.is_shut_down() {
                        break;
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            attrs.extend(new_attrs);
            changes.clear();
            for item in items.drain(..) {
                let c = match item {
                    Initial::Object(c) => *c,
                    Initial::Route(rk, i) => {
                        let mut r = rk.route(&attrs[i as usize]);
                        for h in r.nexthops.iter_mut() {
                            if h.ifindex != 0 {
                                h.dev = names.get(&h.ifindex).cloned().unwrap_or_default();
                            }
                        }
                        Change::Add(Object::Route(r))
                    }
                };
                if let Change::Add(Object::Link(l)) = &c {
                    names.insert(l.ifindex, l.ifname.clone());
                    ports.note_link(l);
                }
                changes.push(c);
            }
            feed.give_back(items);
            changes.retain(|c| takes(&self.caps, &ports, c.object()));
            // tc filters wait for the end of the dump: whether one comes after a filter not
            // handed over is judged from its whole chain, in the installed mirror.
            if self.caps.takes_kind(ObjectKind::TcFilter) {
                let (f, rest): (Vec<Change>, Vec<Change>) = changes
                    .drain(..)
                    .partition(|c| c.kind() == ObjectKind::TcFilter);
                filters.extend(f);
                changes = rest;
            }
            order::sort_batch(&mut changes);
            let mut hashes: Vec<u64> = changes.iter().map(|c| key_hash(&c.key())).collect();
            count += changes.len();
            if let Err(e) = self.apply_replayed(&mut changes, &mut hashes, &mut refused) {
                result = Err(e);
                break;
            }
        }
        if bulk {
            self.end_bulk();
        }
        result?;
        drop((attrs, names, changes));
        if self.queue.is_shut_down() {
            return Ok(()); // no end-sync: it would sweep what was not streamed yet
        }
        match feed.end() {
            StreamEnd::Cut => {
                // The source stopped before the dump was installed (the daemon is failing):
                // leave the plugin as it is, without end-sync, until it is shut down.
                tracing::debug!(plugin = %self.name(), "initial dump cut short");
                Ok(())
            }
            StreamEnd::Behind => {
                tracing::info!(
                    plugin = %self.name(),
                    streamed = count,
                    "the initial dump outran the plugin: replaying from the mirror"
                );
                self.held = Held::default();
                self.held_per_kind = [0; KINDS];
                self.per_outcome = [[0; 4]; KINDS];
                // Everything pending is superseded by the replay, which reads the current state;
                // changes from here on are left to it until it gets there.
                self.queue.restart_replay();
                self.status.lock().unwrap().refused += refused;
                self.replay_all()
            }
            StreamEnd::Complete => {
                order::sort_batch(&mut filters);
                while !filters.is_empty() {
                    let n = filters.len().min(BATCH);
                    let mut chunk: Vec<Change> = filters.drain(..n).collect();
                    let mut hashes: Vec<u64> = chunk.iter().map(|c| key_hash(&c.key())).collect();
                    self.apply_replayed(&mut chunk, &mut hashes, &mut refused)?;
                }
                tracing::debug!(
                    plugin = %self.name(),
                    objects = count,
                    ms = started.elapsed().as_millis() as u64,
                    "initial sync streamed"
                );
                self.end_sync(started, refused)
            }
        }
    }
}
