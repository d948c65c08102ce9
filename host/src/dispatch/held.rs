//! What a plugin holds: for every object handed to it and not removed, its kind and last outcome,
//! by a 64-bit hash of its key.
//!
//! A replay hands a plugin up to millions of objects in key order. Inserting each into a hash
//! table costs a cache miss per object (the table is tens of MiB and the hashes are random); the
//! replay instead appends to a vector, which is sorted once at the end ([`Held::end_bulk`]) and
//! searched afterwards (interpolation, then bisection: [`find`]). Later additions go to a small hash table, removals of sorted
//! entries leave a tombstone, and both are folded back into the sorted part when they grow.
//! 9 bytes per sorted entry, against 16 bytes per slot of a hash table at most 7/8 full.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for keys that are already 64-bit hashes: passes them through.
#[derive(Default)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

const TOMBSTONE: u8 = 0xff;

/// The position of `h` in `sorted` (distinct, ascending), as [`slice::binary_search`] gives it.
///
/// The entries are 64-bit hashes, spread evenly over their range: a few interpolation steps
/// land within a few cache lines of `h`, where bisection of a million entries (8 MiB) takes
/// about ten cache misses before it gets there (under a 1M-route churn, a plugin worker's
/// bisections were a third of its time, `perf`). At most [`INTERPOLATIONS`] steps, then
/// bisection of what is left: never worse than bisection by more than those steps, whatever the
/// hashes.
fn find(sorted: &[u64], h: u64) -> Result<usize, usize> {
    // Invariant: every entry before `lo` is below `h`, every entry from `hi` on above it.
    let (mut lo, mut hi) = (0usize, sorted.len());
    for _ in 0..INTERPOLATIONS {
        if hi - lo <= 16 {
            break;
        }
        let (a, b) = (sorted[lo], sorted[hi - 1]);
        if h <= a {
            return if h == a { Ok(lo) } else { Err(lo) };
        }
        if h >= b {
            return if h == b { Ok(hi - 1) } else { Err(hi) };
        }
        // a < h < b: a guess strictly inside (lo, hi - 1). In floating point (a 128-bit
        // division cost about as much as the rest of the step); only its position matters,
        // not its precision: the invariant holds for any guess in range.
        let frac = (h - a) as f64 / (b - a) as f64;
        let at = lo + (frac * (hi - 1 - lo) as f64) as usize;
        let at = at.clamp(lo + 1, hi - 2);
        match sorted[at].cmp(&h) {
            std::cmp::Ordering::Equal => return Ok(at),
            std::cmp::Ordering::Less => lo = at + 1,
            std::cmp::Ordering::Greater => hi = at,
        }
    }
    match sorted[lo..hi].binary_search(&h) {
        Ok(i) => Ok(lo + i),
        Err(i) => Err(lo + i),
    }
}

/// Interpolation steps of [`find`] before it bisects.
const INTERPOLATIONS: usize = 6;

// Every kind of this API version has an index that packs.
const _: () = assert!(ekho_plugin_api::ObjectKind::ALL.len() <= 63);

/// Kind index in the upper six bits, outcome code in the lower two; 0xff (kind 63, code 3) is
/// the tombstone, so kind indexes up to 62 fit.
fn pack(kind: u8, code: u8) -> u8 {
    debug_assert!(kind < 63 && code < 4);
    kind << 2 | code
}

fn unpack(m: u8) -> Option<(u8, u8)> {
    (m != TOMBSTONE).then_some((m >> 2, m & 3))
}

/// Where a lookup found a hash in the sorted part, for a later operation on the same hash
/// ([`Held::insert_hinted`], [`Held::remove_hinted`]): a worker looks each pending key up when it
/// builds the batch and records the plugin's outcome after the call, and a second search of a
/// million entries is a few cache misses. The entry at the hinted position is compared with the
/// hash before use, so a hint made stale by a fold in between costs only the search it would have
/// saved (the sorted part holds each hash once: an equal entry is the one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hint(usize);

impl Hint {
    /// No position known: search.
    pub const NONE: Hint = Hint(usize::MAX);
}

/// The held set: key hash -> (kind, outcome code).
#[derive(Default)]
pub struct Held {
    /// Sorted, distinct hashes.
    base: Vec<u64>,
    /// Packed (kind, code) of `base[i]`, or [`TOMBSTONE`].
    meta: Vec<u8>,
    /// Live entries in `base`.
    base_live: usize,
    /// Entries not in `base`.
    extra: HashMap<u64, u8, BuildHasherDefault<PreHashed>>,
    /// Appended by a bulk load, not yet sorted.
    bulk: Option<Vec<(u64, u8)>>,
}

impl Held {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.base_live + self.extra.len() + self.bulk.as_ref().map_or(0, |b| b.len())
    }

    /// Starts a bulk load of about `hint` entries whose hashes are all new and distinct (a
    /// replay into an empty set): inserts append until [`Held::end_bulk`]. Returns false, and
    /// changes nothing, when the set is not empty.
    pub fn begin_bulk(&mut self, hint: usize) -> bool {
        if self.len() != 0 || self.bulk.is_some() {
            return false;
        }
        self.bulk = Some(Vec::with_capacity(hint));
        true
    }

    /// Sorts the bulk-loaded entries into the searchable part. Returns the (kind, code) of
    /// entries dropped because their hash was loaded twice (two keys with one hash: they count
    /// as one, as they would in a hash table).
    pub fn end_bulk(&mut self) -> Vec<(u8, u8)> {
        let Some(mut v) = self.bulk.take() else {
            return Vec::new();
        };
        v.sort_by_key(|e| e.0); // stable: of a hash loaded twice, the later load wins
        let mut dropped = Vec::new();
        v.dedup_by(|later, first| {
            let dup = later.0 == first.0;
            if dup {
                dropped.extend(unpack(first.1));
                first.1 = later.1; // the last version wins
            }
            dup
        });
        self.rebuild(v);
        dropped
    }

    fn rebuild(&mut self, sorted: Vec<(u64, u8)>) {
        self.base = sorted.iter().map(|e| e.0).collect();
        self.meta = sorted.iter().map(|e| e.1).collect();
        self.base_live = self.base.len();
    }

    fn finish_bulk(&mut self) {
        if self.bulk.is_some() {
            // Never expected (a replay only inserts), but keeps every operation exact.
            self.end_bulk();
        }
    }

    /// (kind, code) held under `h`.
    pub fn get(&mut self, h: u64) -> Option<(u8, u8)> {
        self.finish_bulk();
        if let Some(m) = self.extra.get(&h) {
            return unpack(*m);
        }
        find(&self.base, h).ok().and_then(|i| unpack(self.meta[i]))
    }

    /// Whether something is held under `h`.
    pub fn contains(&mut self, h: u64) -> bool {
        self.get(h).is_some()
    }

    /// [`Held::contains`], with where `h` was found for a later operation on it.
    pub fn contains_hinted(&mut self, h: u64) -> (bool, Hint) {
        self.finish_bulk();
        if let Some(m) = self.extra.get(&h) {
            return (unpack(*m).is_some(), Hint::NONE);
        }
        match find(&self.base, h) {
            Ok(i) => (unpack(self.meta[i]).is_some(), Hint(i)),
            Err(_) => (false, Hint::NONE),
        }
    }

    /// The position of `h` in the sorted part: `hint` when the entry there is `h`, else searched.
    fn base_index(&self, h: u64, hint: Hint) -> Option<usize> {
        if self.base.get(hint.0) == Some(&h) {
            return Some(hint.0);
        }
        find(&self.base, h).ok()
    }

    /// Holds `h` with (kind, code); returns what was held before.
    #[cfg(test)]
    pub fn insert(&mut self, h: u64, kind: u8, code: u8) -> Option<(u8, u8)> {
        self.insert_hinted(h, kind, code, Hint::NONE)
    }

    /// Holds `h` with (kind, code), with a [`Hint`] from an earlier lookup of `h`
    /// ([`Hint::NONE`]: none); returns what was held before.
    pub fn insert_hinted(&mut self, h: u64, kind: u8, code: u8, hint: Hint) -> Option<(u8, u8)> {
        let m = pack(kind, code);
        if let Some(b) = &mut self.bulk {
            b.push((h, m));
            return None;
        }
        if let Some(i) = self.base_index(h, hint) {
            let prev = unpack(self.meta[i]);
            if prev.is_none() {
                self.base_live += 1;
            }
            self.meta[i] = m;
            return prev;
        }
        let prev = self.extra.insert(h, m).and_then(unpack);
        self.maybe_compact();
        prev
    }

    /// Drops `h`; returns what was held.
    #[cfg(test)]
    pub fn remove(&mut self, h: u64) -> Option<(u8, u8)> {
        self.remove_hinted(h, Hint::NONE)
    }

    /// Drops `h`, with a [`Hint`] from an earlier lookup of `h` ([`Hint::NONE`]: none);
    /// returns what was held.
    pub fn remove_hinted(&mut self, h: u64, hint: Hint) -> Option<(u8, u8)> {
        self.finish_bulk();
        // A hash in the sorted part is never in the table too.
        let hinted = self.base.get(hint.0) == Some(&h);
        if !hinted {
            if let Some(m) = self.extra.remove(&h) {
                return unpack(m);
            }
        }
        let i = self.base_index(h, hint)?;
        let prev = unpack(self.meta[i]);
        if prev.is_some() {
            self.meta[i] = TOMBSTONE;
            self.base_live -= 1;
            self.maybe_compact();
        }
        prev
    }

    /// Folds the hash table and the tombstones into the sorted part once either is large
    /// against it (amortized: each fold follows at least n/4 operations). Only the hash
    /// table's entries are sorted, then merged with the sorted part in one pass: O(k log k + n),
    /// not a sort of all n (which was a seventh of a plugin worker's instructions under a
    /// 20k-route churn, `profile_churn`). The two are disjoint: a hash in the sorted part is
    /// updated there, never added to the table.
    fn maybe_compact(&mut self) {
        let tombs = self.base.len() - self.base_live;
        let limit = 4096.max(self.base.len() / 4);
        if self.extra.len() <= limit && tombs <= limit {
            return;
        }
        let mut extra: Vec<(u64, u8)> = self.extra.drain().collect();
        extra.sort_unstable_by_key(|e| e.0);
        let mut v: Vec<(u64, u8)> = Vec::with_capacity(self.base_live + extra.len());
        let mut base = self
            .base
            .iter()
            .zip(&self.meta)
            .filter(|(_, m)| **m != TOMBSTONE)
            .map(|(h, m)| (*h, *m))
            .peekable();
        let mut extra = extra.into_iter().peekable();
        loop {
            let next = match (base.peek(), extra.peek()) {
                (Some(b), Some(e)) if b.0 < e.0 => base.next(),
                (Some(_), Some(_)) => extra.next(),
                (Some(_), None) => base.next(),
                (None, Some(_)) => extra.next(),
                (None, None) => break,
            };
            v.extend(next);
        }
        debug_assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
        self.rebuild(v);
        self.extra.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Model;

    /// A repeatable pseudo-random sequence (xorshift64).
    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// A random walk of inserts, updates and removals (bulk load first) matches a plain map.
    #[test]
    fn matches_a_hash_map() {
        let mut rnd = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut h = Held::default();
        let mut m: Model<u64, (u8, u8)> = Model::new();
        assert!(h.begin_bulk(20_000));
        let keys: Vec<u64> = (0..20_000).map(|_| rnd()).collect();
        for (i, k) in keys.iter().enumerate() {
            let v = ((i % 10) as u8, (i % 4) as u8);
            assert_eq!(h.insert(*k, v.0, v.1), None);
            m.insert(*k, v);
        }
        assert_eq!(h.len(), 20_000);
        assert!(h.end_bulk().is_empty());
        assert!(!h.begin_bulk(1), "bulk only into an empty set");
        for step in 0..200_000u64 {
            let r = rnd();
            // Half the operations on loaded keys, half on new ones.
            let k = if r & 1 == 0 {
                keys[(r >> 8) as usize % keys.len()]
            } else {
                rnd() % 50_000
            };
            let v = ((r >> 3) as u8 % 10, (r >> 5) as u8 % 4);
            match (r >> 1) % 3 {
                0 => assert_eq!(h.insert(k, v.0, v.1), m.insert(k, v), "step {step}"),
                1 => assert_eq!(h.remove(k), m.remove(&k), "step {step}"),
                _ => assert_eq!(h.get(k), m.get(&k).copied(), "step {step}"),
            }
            assert_eq!(h.len(), m.len(), "step {step}");
        }
    }

    /// Operations with hints, fresh or made stale by folds, answer as those without.
    #[test]
    fn hints_fresh_or_stale_change_nothing() {
        let mut rnd = xorshift(0x1234_5678_9abc_def1);
        let (mut h, mut plain) = (Held::default(), Held::default());
        let keys: Vec<u64> = (0..30_000).map(|_| rnd()).collect();
        for k in &keys[..20_000] {
            h.insert(*k, 1, 0);
            plain.insert(*k, 1, 0);
        }
        // Hints taken now, used after thousands of operations (folds among them).
        let hints: Vec<(u64, Hint)> = keys.iter().map(|k| (*k, h.contains_hinted(*k).1)).collect();
        for step in 0..100_000usize {
            let r = rnd();
            let (k, hint) = hints[(r >> 8) as usize % hints.len()];
            let fresh = h.contains_hinted(k);
            assert_eq!(fresh.0, plain.contains(k), "step {step}");
            let hint = if r & 4 == 0 { hint } else { fresh.1 };
            if r & 1 == 0 {
                assert_eq!(h.remove_hinted(k, hint), plain.remove(k), "step {step}");
            } else {
                let code = (r >> 3) as u8 % 4;
                assert_eq!(
                    h.insert_hinted(k, 2, code, hint),
                    plain.insert(k, 2, code),
                    "step {step}"
                );
            }
            assert_eq!(h.len(), plain.len(), "step {step}");
        }
    }

    /// `find` answers as `binary_search` does, on even and on skewed hashes, present or not,
    /// at both ends and past them.
    #[test]
    fn find_is_binary_search() {
        let mut rnd = xorshift(0x2545_f491_4f6c_dd1d);
        let even: Vec<u64> = (0..5000).map(|_| rnd()).collect();
        // Clustered: most entries in a narrow band, a few far out (interpolation's worst case).
        let skewed: Vec<u64> = (0..5000)
            .map(|i| if i % 100 == 0 { rnd() } else { rnd() % 100_000 })
            .collect();
        for mut v in [
            even,
            skewed,
            vec![],
            vec![5],
            vec![1, 2, 3],
            (0..40).collect(),
        ] {
            v.sort_unstable();
            v.dedup();
            let mut probes: Vec<u64> = v
                .iter()
                .flat_map(|h| [*h, h.wrapping_add(1), h.wrapping_sub(1)])
                .collect();
            probes.extend([0, u64::MAX, 1]);
            probes.extend((0..2000).map(|_| rnd()));
            for p in probes {
                assert_eq!(
                    find(&v, p),
                    v.binary_search(&p),
                    "{p} in {} entries",
                    v.len()
                );
            }
        }
    }

    #[test]
    fn a_hash_loaded_twice_counts_once_and_is_reported() {
        let mut h = Held::default();
        assert!(h.begin_bulk(3));
        h.insert(7, 1, 0);
        h.insert(9, 2, 0);
        h.insert(7, 3, 1);
        assert_eq!(h.end_bulk(), vec![(1, 0)]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.get(7), Some((3, 1)));
    }
}
