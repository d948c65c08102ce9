//! A batch of changes that borrows the queued objects instead of copying them.
//!
//! The plugin queues share each changed object (`Arc<Object>`, one per change, for every
//! plugin). A plugin's `apply` takes `&[Change]`: it reads the batch and may clone what it
//! keeps, never takes ownership. So a worker need not clone each object into an owned `Change`
//! (deep: its vectors and strings) only to drop the clone after the call; [`Views`] hands the
//! plugin changes that are bitwise views of the shared objects, kept alive beside them, and
//! never dropped as owners. With 4 plugins a clone and a drop per change per plugin were about
//! a quarter of each worker's instructions (`profile_churn`).

use super::held::Hint;
use ekho_plugin_api::{Change, Object};
use std::sync::Arc;

/// Changes viewing shared objects. Only shared access to the changes is given out, so no view
/// is ever moved out, mutated or dropped as an owner: the views are forgotten and the objects
/// are released through their `Arc`s, also when a panic unwinds through the batch.
pub(super) struct Views {
    /// Declared first, dropped last: the views below point into these.
    shared: Vec<Arc<Object>>,
    views: Vec<Change>,
    /// The key hash of each view's object (`dispatch::keys::key_hash`), computed once by the
    /// worker and kept in step with `views` through the sort: recording the outcomes needs it
    /// again.
    hashes: Vec<u64>,
    /// Where the worker found each view's hash in the plugin's held set ([`Hint`]).
    hints: Vec<Hint>,
}

impl Views {
    pub(super) fn with_capacity(n: usize) -> Views {
        Views {
            shared: Vec::with_capacity(n),
            views: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            hints: Vec::with_capacity(n),
        }
    }

    /// A view of `o`, which this batch keeps alive.
    fn view(&mut self, o: Arc<Object>) -> Object {
        // SAFETY: a bitwise copy of an object that stays alive (its `Arc` is pushed into
        // `shared`, which outlives `views`) and is never mutated while shared (nothing in
        // ekho mutates an object behind an `Arc`: no interior mutability in the API's types,
        // whose heap parts are raw-pointer vectors and strings). The copy is only ever read
        // through `&`, and never dropped (`Drop` forgets every view), so the heap parts are
        // freed once, by the `Arc`.
        let v = unsafe { std::ptr::read(&*o) };
        self.shared.push(o);
        v
    }

    /// Adds `o`, whose key hashes to `hash` (found in the held set at `hint`).
    pub(super) fn add(&mut self, o: Arc<Object>, hash: u64, hint: Hint) {
        let o = self.view(o);
        self.views.push(Change::Add(o));
        self.hashes.push(hash);
        self.hints.push(hint);
    }

    /// Removes `o`, whose key hashes to `hash` (found in the held set at `hint`).
    pub(super) fn remove(&mut self, o: Arc<Object>, hash: u64, hint: Hint) {
        let o = self.view(o);
        self.views.push(Change::Remove(o));
        self.hashes.push(hash);
        self.hints.push(hint);
    }

    /// Updates `old` to `new`, whose key (one key for both) hashes to `hash` (found in the
    /// held set at `hint`).
    pub(super) fn update(&mut self, old: Arc<Object>, new: Arc<Object>, hash: u64, hint: Hint) {
        let (old, new) = (self.view(old), self.view(new));
        self.views.push(Change::Update { old, new });
        self.hashes.push(hash);
        self.hints.push(hint);
    }

    /// Sorts the views into batch order ([`ekho_plugin_api::order::sort_batch`]): moves them
    /// within the vector, which is no use of them as owners. A batch already in order (a burst
    /// of route changes: one kind, one phase) is only checked; one that was not has its hashes
    /// computed again in the new order (and no hints: the held set is searched).
    pub(super) fn sort_batch(&mut self) {
        use ekho_plugin_api::order::batch_key;
        if !self.views.is_sorted_by_key(batch_key) {
            self.views.sort_by_key(batch_key); // stable, as sort_batch
            self.hashes.clear();
            self.hashes
                .extend(self.views.iter().map(|c| super::keys::key_hash(&c.key())));
            self.hints.iter_mut().for_each(|h| *h = Hint::NONE);
        }
    }

    pub(super) fn changes(&self) -> &[Change] {
        &self.views
    }

    /// The key hashes of [`Views::changes`], in the same order.
    pub(super) fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// The held-set hints of [`Views::changes`], in the same order.
    pub(super) fn hints(&self) -> &[Hint] {
        &self.hints
    }
}

impl Drop for Views {
    fn drop(&mut self) {
        // SAFETY: forgets the views without dropping them (they own nothing: `shared` does);
        // `Change` needs no drop for its storage to be reused or freed.
        unsafe { self.views.set_len(0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_objects::route;

    #[test]
    fn sorting_keeps_each_hash_with_its_change() {
        use crate::dispatch::keys::key_hash;
        let a = Arc::new(route("10.0.0.0/8", 2, "10.9.0.1"));
        let b = Arc::new(route("10.1.0.0/16", 2, "10.9.0.1"));
        let (ha, hb) = (key_hash(&a.key()), key_hash(&b.key()));
        let mut v = Views::with_capacity(2);
        // An addition before a removal: batch order puts the removal first.
        v.add(a.clone(), ha, Hint::NONE);
        v.remove(b.clone(), hb, Hint::NONE);
        v.sort_batch();
        assert!(matches!(v.changes()[0], Change::Remove(_)));
        assert_eq!(v.hashes(), [hb, ha]);
        // Already in order: untouched.
        v.sort_batch();
        assert_eq!(v.hashes(), [hb, ha]);
    }

    #[test]
    fn views_read_as_the_objects_and_free_them_once() {
        let a = Arc::new(route("10.0.0.0/8", 2, "10.9.0.1"));
        let b = Arc::new(route("10.1.0.0/16", 2, "10.9.0.1"));
        let mut v = Views::with_capacity(3);
        v.update(a.clone(), b.clone(), 1, Hint::NONE);
        v.remove(b.clone(), 2, Hint::NONE);
        v.add(a.clone(), 3, Hint::NONE);
        assert_eq!(v.changes().len(), 3);
        assert_eq!(v.changes()[2], Change::Add((*a).clone()));
        assert_eq!(v.changes()[1], Change::Remove((*b).clone()));
        assert_eq!(v.hashes(), [1, 2, 3]);
        // A plugin's clone is its own.
        let kept = v.changes()[0].clone();
        assert_eq!(Arc::strong_count(&a), 3);
        drop(v);
        // The batch's references are gone, the objects are whole.
        assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (1, 1));
        assert_eq!(
            kept,
            Change::Update {
                old: (*a).clone(),
                new: (*b).clone()
            }
        );
    }
}
