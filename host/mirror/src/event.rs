//! The mirror's input: one decoded kernel message ([`Event`]), as [`crate::netlink`] produces it
//! and the state applies it.

use ekho_plugin_api::object::*;

/// A decoded kernel message, as the mirror applies it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A link appeared or changed (full state).
    NewLink(Link),
    /// A bridge appeared or changed (full state), with its `mcast_snooping` option: turning it
    /// off or on changes the host-joined MDB entries without a message (docs/netlink-gaps.md
    /// section 8).
    NewBridge(Link, bool),
    /// A link is gone.
    DelLink(Link),
    /// An address appeared or changed.
    NewAddress(Address),
    /// An address is gone.
    DelAddress(Address),
    /// A route and the `nlmsg_flags` of its message (`NLM_F_REPLACE`, `NLM_F_APPEND`, ...).
    NewRoute(Route, u16),
    /// A route (or, for IPv6 multipath, some of its legs) is gone.
    DelRoute(Route),
    /// An IPv4/IPv6 neighbour appeared or changed.
    NewNeighbour(Neighbour),
    /// A neighbour is gone.
    DelNeighbour(Neighbour),
    /// A bridge/VXLAN FDB entry appeared or changed.
    NewFdb(FdbEntry),
    /// An FDB entry is gone.
    DelFdb(FdbEntry),
    /// A nexthop object or group appeared or changed.
    NewNexthop(Nexthop),
    /// A nexthop object is gone (by id).
    DelNexthop(u32),
    /// A rule appeared.
    NewRule(Rule),
    /// A rule is gone.
    DelRule(Rule),
    /// Netconf of a device (possibly partial: only changed attributes).
    NewNetconf(Netconf),
    /// Netconf of (family, ifindex) is gone.
    DelNetconf(Family, i32),
    /// MDB entries appeared or changed.
    NewMdb(Vec<MdbEntry>),
    /// MDB entries are gone.
    DelMdb(Vec<MdbEntry>),
    /// Bridge VLAN entries appeared or changed.
    NewVlan(Vec<BridgeVlan>),
    /// Bridge VLAN entries are gone.
    DelVlan(Vec<BridgeVlan>),
    /// An nftables ruleset change (table, chain, rule, flowtable), or a dumped one.
    Nft(crate::netlink::nftables::Message),
    /// A tc message (qdisc, class, filter, chain, actions).
    Tc(crate::netlink::tc::Message),
    /// A message the mirror does not use (bridge port link messages, unknown types...).
    Ignored,
}
