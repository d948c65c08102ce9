//! Batch tracking: what a batch of events touched, with its state before the batch, and the net
//! change of each touched object at the batch's end.

use super::State;
use crate::routes::RKey;
use ekho_plugin_api::object::*;
use ekho_plugin_api::{order, Change};
use std::collections::BTreeSet;

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
            let old: Vec<Object> = self
                .route_objects(k)
                .into_iter()
                .map(|r| {
                    let mut o = Object::Route(r);
                    self.name(&mut o);
                    o
                })
                .collect();
            self.touched_routes.insert(*k, old);
        }
    }

    /// Ends a batch: the net change of every touched object, in batch order
    /// ([`ekho_plugin_api::order`]).
    pub fn flush(&mut self) -> Vec<Change> {
        let mut touched = std::mem::take(&mut self.touched);
        for (rk, olds) in std::mem::take(&mut self.touched_routes) {
            let mut seen = BTreeSet::new();
            for o in olds {
                seen.insert(o.key());
                touched.insert(o.key(), Some(o));
            }
            for r in self.route_objects(&rk) {
                let k = Object::Route(r).key();
                if seen.insert(k.clone()) {
                    touched.insert(k, None);
                }
            }
        }
        let mut up = Vec::new();
        let mut rm = Vec::new();
        for (k, old) in touched {
            let new = self.get(&k);
            match (old, new) {
                (None, Some(n)) => up.push(Change::Add(n)),
                (Some(o), Some(n)) if o != n => up.push(Change::Update { old: o, new: n }),
                (Some(o), None) => rm.push(Change::Remove(o)),
                _ => {}
            }
        }
        up.extend(rm);
        order::sort_batch(&mut up);
        up
    }
}
