//! Batch tracking: what a batch of events touched, with its state before the batch, and the net
//! change of each touched object at the batch's end.

use super::State;
use crate::routes::RKey;
use ekho_plugin_api::object::*;
use ekho_plugin_api::{order, Change};

impl State {
    pub(super) fn touch(&mut self, k: &ObjectKey) {
        if let ObjectKey::Route { .. } = k {
            if let Some(rk) = RKey::from_object_key(k) {
                self.touch_route(&rk);
            }
            return;
        }
        if self.tracking && !self.touched.contains_key(k) {
            let old = self.get(k);
            self.touched.insert(k.clone(), old);
        }
    }

    /// Marks every route object under `k` (all device discriminators, before and after the
    /// change) as touched.
    pub(super) fn touch_route(&mut self, k: &RKey) {
        if self.tracking && !self.touched_routes.contains_key(k) {
            let old = self.named_route_objects(k, self.routes.get(k));
            self.touched_routes.insert(*k, old);
        }
    }

    /// [`State::touch_route`] with the aliases under `k` at hand (one lookup of the route table
    /// fewer per route event).
    pub(super) fn touch_route_of(
        &mut self,
        k: &RKey,
        aliases: &[std::sync::Arc<crate::routes::Attrs>],
    ) {
        if self.tracking && !self.touched_routes.contains_key(k) {
            let old = self.named_route_objects(k, aliases);
            self.touched_routes.insert(*k, old);
        }
    }

    fn named_route_objects(
        &self,
        k: &RKey,
        aliases: &[std::sync::Arc<crate::routes::Attrs>],
    ) -> Vec<Object> {
        self.named_route_objects_of(k, aliases)
    }

    /// Ends a batch: the net change of every touched object, in batch order
    /// ([`ekho_plugin_api::order`]).
    ///
    /// Routes are paired per route key: the objects under a key before the batch against those
    /// under it now, rendered and named once each (no second lookup per object), in the order
    /// the batch first touched their keys (the kernel's order of events; a route key's objects
    /// in plugin-api key order). The other kinds come in key order.
    pub fn flush(&mut self) -> Vec<Change> {
        self.sync_tc();
        self.sync_nft();
        let touched = std::mem::take(&mut self.touched);
        // Taken and put back drained: the table keeps its capacity for the next batch (no
        // regrowth), and needs no vector of its own while `self` renders the new objects.
        let mut touched_routes = std::mem::take(&mut self.touched_routes);
        // Removals go in the same vector: the stable sort by batch key below puts them where
        // they belong and keeps the order of equal keys, as a separate vector appended would
        // (which cost a regrowth and a second move of each removal).
        let mut up = Vec::with_capacity(touched.len() + touched_routes.len());
        let diff = |up: &mut Vec<Change>, old: Option<Object>, new: Option<Object>| match (old, new)
        {
            (None, Some(n)) => up.push(Change::Add(n)),
            (Some(o), Some(n)) if o != n => up.push(Change::Update { old: o, new: n }),
            (Some(o), None) => up.push(Change::Remove(o)),
            _ => {}
        };
        for (k, old) in touched {
            let new = self.get(&k);
            diff(&mut up, old, new);
        }
        let mut pairs: Vec<(ObjectKey, Option<Object>, Option<Object>)> = Vec::new();
        for (rk, mut olds) in touched_routes.drain(..) {
            let mut news = self.named_route_objects(&rk, self.routes.get(&rk));
            if olds.len() <= 1 && news.len() <= 1 {
                // The usual case: one object under the key before and/or after. Each object
                // goes straight from its vector into its change (an object is a few hundred
                // bytes, and a burst of route events is millions of them: every move counts).
                match (olds.is_empty(), news.is_empty()) {
                    (true, true) => {}
                    (true, false) => up.push(Change::Add(news.pop().expect("one"))),
                    (false, true) => up.push(Change::Remove(olds.pop().expect("one"))),
                    (false, false) => {
                        if olds[0].key() != news[0].key() {
                            // Another device (the key's `dev`): a removal and an addition.
                            up.push(Change::Remove(olds.pop().expect("one")));
                            up.push(Change::Add(news.pop().expect("one")));
                        } else if olds[0] != news[0] {
                            up.push(Change::Update {
                                old: olds.pop().expect("one"),
                                new: news.pop().expect("one"),
                            });
                        }
                    }
                }
                continue;
            }
            pairs.clear();
            for o in olds {
                let k = o.key();
                let n = news
                    .iter()
                    .position(|n| n.key() == k)
                    .map(|i| news.remove(i));
                pairs.push((k, Some(o), n));
            }
            pairs.extend(news.into_iter().map(|n| (n.key(), None, Some(n))));
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, o, n) in pairs.drain(..) {
                diff(&mut up, o, n);
            }
        }
        self.touched_routes = touched_routes;
        order::sort_batch(&mut up);
        up
    }
}
