//! The order of changes within a batch: the one definition the host, the mirror and plugins
//! share.
//!
//! An object may refer only to objects of a lower [dependency rank](dependency_rank): links
//! first, then netconf, addresses, bridge VLANs, nexthops (single nexthops before the groups
//! made of them), neighbours, FDB and MDB entries, routes, rules, nftables base chains,
//! flowtables, conntrack flows, then tc: qdiscs, classes, actions, filters. Within one batch ([`Plugin::apply`](crate::Plugin::apply))
//! changes come in [`batch_key`] order:
//!
//! 1. removals of objects nothing depends on (addresses, neighbours, routes, ...), dependents
//!    first (reverse rank): a route through a nexthop is removed before the nexthop;
//! 2. additions and updates, dependencies first (rank order): a link before its addresses, a
//!    nexthop before the routes using it;
//! 3. removals of the objects others refer to (links, bridge VLANs, nexthops), in reverse rank:
//!    they go after the additions, which may have moved a route onto a new nexthop first.
//!
//! The sort is stable: changes of equal key keep the order the host produced them in.
//!
//! ```
//! use ekho_plugin_api::prelude::*;
//! use ekho_plugin_api::order;
//! let link = Object::Link(Link { ifindex: 2, ifname: "eth0".into(), ..Default::default() });
//! let route = Object::Route(Route::unicast("10.0.0.0/8".parse().unwrap(),
//!     vec![NextHop::via("10.1.0.1".parse().unwrap(), 2)]));
//! let mut batch = vec![Change::Remove(link.clone()), Change::Add(route.clone()),
//!     Change::Remove(route.clone()), Change::Add(link.clone())];
//! order::sort_batch(&mut batch);
//! assert_eq!(batch, vec![Change::Remove(route.clone()), Change::Add(link.clone()),
//!     Change::Add(route), Change::Remove(link)]);
//! ```

use crate::change::Change;
use crate::object::{Object, ObjectKind};

/// The rank of a kind in dependency order (nexthop groups rank one above single nexthops:
/// see [`dependency_rank`]).
pub const fn kind_rank(kind: ObjectKind) -> u16 {
    2 * match kind {
        ObjectKind::Link => 0,
        ObjectKind::Netconf => 1,
        ObjectKind::Address => 2,
        ObjectKind::Vlan => 3,
        ObjectKind::Nexthop => 4,
        ObjectKind::Neighbour => 5,
        ObjectKind::Fdb => 6,
        ObjectKind::Mdb => 7,
        ObjectKind::Route => 8,
        ObjectKind::Rule => 9,
        ObjectKind::NfChain => 10,
        ObjectKind::NfFlowtable => 11,
        ObjectKind::Flow => 12,
        ObjectKind::Qdisc => 13,
        ObjectKind::TcClass => 14,
        ObjectKind::TcAction => 15,
        ObjectKind::TcFilter => 16,
        // Kinds added by later minors rank after these unless placed here.
        _ => 100 + kind.raw(),
    }
}

/// The rank of an object in dependency order: its kind's rank, nexthop groups after single
/// nexthops. An object refers only to objects of a lower rank.
pub fn dependency_rank(o: &Object) -> u16 {
    let group = matches!(o, Object::Nexthop(n) if n.is_group());
    kind_rank(o.kind()) + group as u16
}

/// Whether other objects refer to objects of this kind (links, bridge VLANs, nexthops, tc
/// qdiscs, classes and actions): their removal waits until a batch's additions are done.
pub const fn is_referenced(kind: ObjectKind) -> bool {
    matches!(
        kind,
        ObjectKind::Link
            | ObjectKind::Vlan
            | ObjectKind::Nexthop
            | ObjectKind::Qdisc
            | ObjectKind::TcClass
            | ObjectKind::TcAction
    )
}

/// The sort key of a change within a batch (see the module docs): ascending keys are the order
/// a plugin receives.
pub fn batch_key(c: &Change) -> (u8, u16) {
    match c {
        Change::Remove(o) => {
            let phase = if is_referenced(o.kind()) { 2 } else { 0 };
            (phase, u16::MAX - dependency_rank(o))
        }
        Change::Add(o) | Change::Update { new: o, .. } => (1, dependency_rank(o)),
    }
}

/// Sorts a batch into the order a plugin receives it (stable).
pub fn sort_batch(changes: &mut [Change]) {
    // A batch is mostly in order already (a burst of route changes is one kind and one phase):
    // checking is a pass of comparisons, sorting moves every (large) change at least once.
    if !changes.is_sorted_by_key(batch_key) {
        changes.sort_by_key(batch_key);
    }
}

/// Sorts objects into dependency order (stable): what a full replay hands a plugin.
pub fn sort_dependency(objects: &mut [Object]) {
    objects.sort_by_key(dependency_rank);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_kind_has_its_own_rank_in_tag_order() {
        let ranks: Vec<u16> = ObjectKind::ALL.iter().map(|&k| kind_rank(k)).collect();
        assert!(ranks.windows(2).all(|w| w[0] + 2 == w[1]), "{ranks:?}");
    }
}
