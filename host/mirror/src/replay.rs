//! Lazy replay: a newly attached listener receives the mirror's state in chunks read under the
//! lock, never as one copy of everything (a million routes would otherwise be materialized at
//! once, several hundred bytes each).
//!
//! Chunks come in [`ObjectKey`] order (its derived `Ord`: kinds in dependency order, then key
//! order; for routes every object of a route key, see `State::route_objects`, the route `dev`
//! component ignored in the order), which is
//! the order of the mirror's own maps. The caller keeps the last key handed out as its cursor: a
//! change to a key at or before the cursor must be queued as an increment, a change after it is
//! picked up by a later chunk. `at_cursor` runs while the lock is still held so the cursor and the
//! listener agree at every instant.

use crate::routes::RKey;
use crate::{AnyListener, Listener, ListenerId, Mirror, SharedListener};
use ekho_plugin_api::{Change, Object, ObjectKey, ObjectKind};
use std::ops::Bound::{Excluded, Unbounded};

/// The replay position of `k`: the key with a route's `dev` discriminator cleared (all aliases of
/// a route key are handed out together).
pub fn replay_position(k: &ObjectKey) -> ObjectKey {
    match k {
        ObjectKey::Route {
            family,
            table,
            dst,
            src,
            tos,
            metric,
            ..
        } => ObjectKey::Route {
            family: *family,
            table: *table,
            dst: *dst,
            src: *src,
            tos: *tos,
            metric: *metric,
            dev: 0,
        },
        other => other.clone(),
    }
}

impl Mirror {
    /// Registers `listener` for every later change, without a snapshot: pair with
    /// [`Mirror::replay_chunk_into`].
    pub fn attach_lazy(&self, listener: Listener) -> ListenerId {
        self.attach_lazy_any(AnyListener::Plain(listener))
    }

    /// [`Mirror::attach_lazy`] for a listener that keeps the objects.
    pub fn attach_lazy_shared(&self, listener: SharedListener) -> ListenerId {
        self.attach_lazy_any(AnyListener::Shared(listener))
    }

    fn attach_lazy_any(&self, listener: AnyListener) -> ListenerId {
        let mut g = self.inner.lock().unwrap();
        let id = g.push_listener(listener);
        g.state.tracking = true;
        id
    }

    /// Appends to `out` the additions of up to `max` objects after `after` (all from the start
    /// when `None`), named, in [`ObjectKey`] order; nexthop objects are never split across chunks
    /// (groups refer to other nexthops by id in any order). Calls `at_cursor` with the position
    /// of the last object appended (or `after` when none) and whether the replay is complete
    /// (nothing left after it) before releasing the lock. Nothing appended means the replay is
    /// complete. A replay hands a plugin `Change`s, and a reused buffer of them (over 600 bytes
    /// each) spares an allocation, a copy and the page faults of a fresh buffer per chunk.
    pub fn replay_chunk_into(
        &self,
        after: Option<&ObjectKey>,
        max: usize,
        out: &mut Vec<Change>,
        at_cursor: impl FnOnce(Option<&ObjectKey>, bool),
    ) {
        let g = self.inner.lock().unwrap();
        let st = &g.state;
        let max = max.max(1);
        let after = after.map(replay_position);
        let start = out.len();
        let mut last: Option<ObjectKey> = after.clone();
        // The last route key handed out, turned into an ObjectKey once at the end (building one
        // per route would cost as much as the route itself).
        let mut last_route: Option<RKey> = None;
        let full = |out: &Vec<Change>, next_kind: ObjectKind| {
            out.len() - start >= max
                && !(next_kind == ObjectKind::Nexthop
                    && out.last().is_some_and(|o| o.kind() == ObjectKind::Nexthop))
        };
        let kind_of_after = after.as_ref().map(|k| k.kind());
        let before_routes = |k: &ObjectKey| k.kind() < ObjectKind::Route;

        'fill: {
            // 1. Links.
            if after.is_none() || kind_of_after == Some(ObjectKind::Link) {
                let start = match &after {
                    Some(ObjectKey::Link { ifindex }) => Excluded(*ifindex),
                    _ => Unbounded,
                };
                for (i, l) in st.links.range((start, Unbounded)) {
                    if full(out, ObjectKind::Link) {
                        break 'fill;
                    }
                    out.push(Change::Add(Object::Link(l.clone())));
                    last = Some(ObjectKey::Link { ifindex: *i });
                    last_route = None;
                }
            }
            // 2. Other kinds before routes, then 3. routes, then 4. kinds after routes.
            let objs_from = |from: Option<&ObjectKey>| match from {
                Some(k) if k.kind() != ObjectKind::Link => {
                    st.objs.range((Excluded(k.clone()), Unbounded))
                }
                _ => st
                    .objs
                    .range::<ObjectKey, (std::ops::Bound<ObjectKey>, std::ops::Bound<ObjectKey>)>(
                        (Unbounded, Unbounded),
                    ),
            };
            if after.as_ref().is_none_or(|k| k.kind() < ObjectKind::Route) {
                for (k, o) in objs_from(after.as_ref()) {
                    if !before_routes(k) {
                        break;
                    }
                    if full(out, k.kind()) {
                        break 'fill;
                    }
                    out.push(Change::Add(o.clone()));
                    last = Some(k.clone());
                    last_route = None;
                }
            }
            if after.as_ref().is_none_or(|k| k.kind() <= ObjectKind::Route) {
                let rk = match &after {
                    Some(k @ ObjectKey::Route { .. }) => RKey::from_object_key(k),
                    _ => None,
                };
                let (v4_start, v6_start) = match rk {
                    Some(RKey::V4(k)) => (Some(Excluded(k)), Some(Unbounded)),
                    Some(RKey::V6(k)) => (None, Some(Excluded(k))),
                    None => (Some(Unbounded), Some(Unbounded)),
                };
                // IPv4 then IPv6, each from its start, as one sequence of (key, aliases).
                let v4 = v4_start.into_iter().flat_map(|s| {
                    st.routes
                        .v4
                        .range((s, Unbounded))
                        .map(|(k, a)| (RKey::V4(*k), a))
                });
                let v6 = v6_start.into_iter().flat_map(|s| {
                    st.routes
                        .v6
                        .range((s, Unbounded))
                        .map(|(k, a)| (RKey::V6(*k), a))
                });
                for (rk, al) in v4.chain(v6) {
                    if full(out, ObjectKind::Route) {
                        break 'fill;
                    }
                    out.extend(
                        st.route_objects_of(&rk, al.as_slice())
                            .into_iter()
                            .map(|r| Change::Add(Object::Route(r))),
                    );
                    last_route = Some(rk);
                }
            }
            let from = match &after {
                Some(k) if k.kind() > ObjectKind::Route => Some(k.clone()),
                _ => None,
            };
            let iter = match &from {
                Some(k) => st.objs.range((Excluded(k.clone()), Unbounded)),
                None => st
                    .objs
                    .range::<ObjectKey, (std::ops::Bound<ObjectKey>, std::ops::Bound<ObjectKey>)>(
                        (Unbounded, Unbounded),
                    ),
            };
            for (k, o) in iter {
                if k.kind() <= ObjectKind::Route {
                    continue;
                }
                if full(out, k.kind()) {
                    break 'fill;
                }
                out.push(Change::Add(o.clone()));
                last = Some(k.clone());
                last_route = None;
            }
        }
        for c in out[start..].iter_mut() {
            if let Change::Add(o) = c {
                st.name(o);
            }
        }
        if let Some(rk) = last_route {
            last = Some(rk.object_key());
        }
        at_cursor(last.as_ref(), out.len() == start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekho_plugin_api::object::{Link, NextHop, Route};

    #[test]
    fn chunks_cover_everything_once_in_key_order() {
        let m = Mirror::new();
        {
            let mut g = m.inner.lock().unwrap();
            for i in 1..=5u32 {
                g.state.links.insert(
                    i,
                    Link {
                        ifindex: i,
                        ifname: format!("l{i}").into(),
                        ..Default::default()
                    },
                );
            }
            for i in 0..50u8 {
                let r = Route::unicast(
                    format!("10.{i}.0.0/16").parse().unwrap(),
                    vec![NextHop::via("10.255.0.1".parse().unwrap(), 1)],
                );
                let a = g.state.routes.intern(crate::routes::Attrs::of(&r));
                g.state.routes.set(RKey::of(&r), vec![a]);
            }
            for i in 0..10u8 {
                let r = Route::unicast(
                    format!("2001:db8:{i}::/48").parse().unwrap(),
                    vec![NextHop::via("fe80::1".parse().unwrap(), 1)],
                );
                let a = g.state.routes.intern(crate::routes::Attrs::of(&r));
                g.state.routes.set(RKey::of(&r), vec![a]);
            }
        }
        let mut cursor: Option<ObjectKey> = None;
        let mut seen = Vec::new();
        loop {
            let mut c2 = None;
            let mut chunk = Vec::new();
            m.replay_chunk_into(cursor.as_ref(), 7, &mut chunk, |l, _| c2 = l.cloned());
            if chunk.is_empty() {
                break;
            }
            cursor = c2;
            assert!(chunk.iter().all(|c| matches!(c, Change::Add(_))));
            seen.extend(chunk.iter().map(|c| replay_position(&c.key())));
        }
        assert_eq!(seen.len(), 65, "5 links, 50 IPv4 and 10 IPv6 routes");
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted, "in key order, no duplicates");
    }
}
