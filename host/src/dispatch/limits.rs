//! What the host refuses on a plugin's behalf without calling it: routes wider than its ECMP
//! width, additions beyond its declared per-kind limits. Additions refused at a limit are
//! remembered and offered again when room frees up, so a smaller table converges to what fits.

use super::KINDS;
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::ObjectKey;
use std::collections::BTreeSet;

/// Additions refused at a declared limit that are remembered and offered again when room frees
/// up, at most (beyond this, they are offered again only when they change).
pub const REFUSED_REMEMBERED: usize = 100_000;

/// Why the host answers for the plugin without calling it. `held`: objects held per kind;
/// `adding`: the plugin does not hold the object yet (the declared limit counts objects held, so
/// updates are never refused by it).
#[inline]
pub(super) fn host_refusal(
    caps: &Capabilities,
    held: &[u64; KINDS],
    o: &Object,
    adding: bool,
) -> Option<Outcome> {
    if let Object::Route(r) = o {
        let w = caps.features.max_ecmp_width;
        if w != 0 && r.nexthops.len() > w as usize {
            return Some(Outcome::Unsupported);
        }
    }
    if let (true, Some(max)) = (adding, caps.limit_for(o.kind())) {
        if held[o.kind().index()] >= max {
            return Some(Outcome::failed(format!(
                "refused by the host: limit reached, the plugin declares at most {max} {} entries",
                o.kind()
            )));
        }
    }
    None
}

/// Additions refused at a declared limit, to offer again when room frees up.
#[derive(Default)]
pub(super) struct Refused {
    keys: BTreeSet<ObjectKey>,
}

impl Refused {
    /// Remembers a refused addition when a declared limit refused it (not an ECMP-width refusal,
    /// which only a change of the route can lift). `was_delivered`: the plugin held the object
    /// before this change.
    pub(super) fn remember(
        &mut self,
        caps: &Capabilities,
        held: &[u64; KINDS],
        o: &Object,
        was_delivered: bool,
    ) {
        let k = o.kind();
        let at_limit = caps.limit_for(k).is_some()
            && (was_delivered || held[k.index()] >= caps.limit_for(k).unwrap_or(0));
        if at_limit && self.keys.len() < REFUSED_REMEMBERED {
            self.keys.insert(o.key());
        }
    }

    /// Forgets `key` (the object is gone).
    pub(super) fn forget(&mut self, key: &ObjectKey) {
        self.keys.remove(key);
    }

    /// Whether nothing is remembered.
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Takes out the remembered keys that may fit now: of each kind, at most as many as its
    /// declared limit has room for (in kind, then key order). Refused again, they are
    /// remembered again.
    pub(super) fn take_offerable(
        &mut self,
        caps: &Capabilities,
        held: &[u64; KINDS],
    ) -> Vec<ObjectKey> {
        let mut out = Vec::new();
        for &kind in ObjectKind::ALL {
            let Some(max) = caps.limit_for(kind) else {
                continue;
            };
            let free = max.saturating_sub(held[kind.index()]);
            if free == 0 {
                continue;
            }
            let keys: Vec<ObjectKey> = self
                .keys
                .iter()
                .filter(|k| k.kind() == kind)
                .take(free as usize)
                .cloned()
                .collect();
            for k in &keys {
                self.keys.remove(k);
            }
            out.extend(keys);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_objects::{link, route};

    #[test]
    fn limits_refuse_additions_and_wide_routes_not_updates() {
        let caps = Capabilities::everything()
            .limit(ObjectKind::Route, 1)
            .max_ecmp_width(1);
        let mut held = [0u64; KINDS];
        let r = route("10.0.0.0/24", 1, "10.1.0.1");
        assert!(host_refusal(&caps, &held, &r, true).is_none());
        held[ObjectKind::Route.index()] = 1;
        assert!(matches!(
            host_refusal(&caps, &held, &r, true),
            Some(Outcome::Failed(_))
        ));
        assert!(host_refusal(&caps, &held, &r, false).is_none(), "an update");
        let Object::Route(mut wide) = r else {
            unreachable!()
        };
        wide.nexthops.push(wide.nexthops[0].clone());
        assert_eq!(
            host_refusal(&caps, &[0; KINDS], &Object::Route(wide), true),
            Some(Outcome::Unsupported)
        );
        assert!(host_refusal(&caps, &held, &link(1, "a"), true).is_none());
    }

    #[test]
    fn refusals_at_a_limit_are_offered_again_as_room_frees_up() {
        let caps = Capabilities::everything().limit(ObjectKind::Route, 2);
        let mut held = [0u64; KINDS];
        held[ObjectKind::Route.index()] = 2;
        let mut refused = Refused::default();
        let routes: Vec<Object> = (1..=3)
            .map(|i| route(&format!("10.0.{i}.0/24"), 1, "10.1.0.1"))
            .collect();
        for r in &routes {
            refused.remember(&caps, &held, r, false);
        }
        refused.remember(&caps, &held, &link(1, "a"), false); // no limit on links
        assert!(refused.take_offerable(&caps, &held).is_empty(), "no room");
        held[ObjectKind::Route.index()] = 1;
        assert_eq!(refused.take_offerable(&caps, &held), [routes[0].key()]);
        refused.forget(&routes[1].key());
        held[ObjectKind::Route.index()] = 0;
        assert_eq!(refused.take_offerable(&caps, &held), [routes[2].key()]);
        assert!(refused.is_empty());
    }
}
