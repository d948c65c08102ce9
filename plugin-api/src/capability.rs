//! What a plugin can take: the host forwards only what matches.

use crate::event::NotifierKind;
use crate::object::{Family, Flow, ObjectKind, TcCapabilities, TcFilter, TcUnsupported};
use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;
use std::borrow::Borrow;

/// Which ports (network devices) a plugin owns. A port is owned when `all` is set, or its name
/// matches one of `names` (shell globs: `eth*`, `swp[0-9]`), or its driver (`IFLA_INFO_KIND`:
/// `veth`, `vxlan`, ...) is one of `drivers`. The `ports` key of the plugin's `[[plugins]]` table
/// in the host config overrides this.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct PortScope {
    pub all: bool,
    pub names: RVec<RString>,
    pub drivers: RVec<RString>,
}

/// A maximum number of entries of one kind (like a hardware table size). The host refuses
/// additions past it with a `failed` outcome without calling the plugin.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limit {
    pub kind: ObjectKind,
    pub max_entries: u64,
}

/// Optional features.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Features {
    /// Widest ECMP group supported (legs per route); 0 means no limit. Wider routes are answered
    /// `unsupported` by the host.
    pub max_ecmp_width: u32,
    /// Whether the plugin takes nexthop objects. Without it the host does not forward
    /// `nexthop` objects and routes arrive with their legs expanded.
    pub nexthop_objects: bool,
    /// Routes, nexthops and rules reach the plugin whatever ports they use; the port scope then
    /// narrows only links, addresses, neighbours and bridge objects. A router needs this: a
    /// route through a port it does not own must still be known, or a covering route through
    /// an owned port would capture its traffic.
    pub routes_all_ports: bool,
}

/// What a plugin takes of conntrack flows (API 1.2), beside [`ObjectKind::Flow`] in
/// [`Capabilities::kinds`]. Families are [`Capabilities::families`]; the most flows held is a
/// [`Limit`] of kind `flow` (additions past it are refused, the flow stays in the kernel).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct FlowCapabilities {
    /// Whether the dataplane rewrites addresses and ports. Without it, NATed flows
    /// ([`Flow::is_nat`]) are not offered.
    pub nat: bool,
    /// IP protocols taken (6 tcp, 17 udp, ...). Empty: all.
    pub protocols: RVec<u8>,
}

/// Everything a plugin declares about what it takes.
///
/// ```
/// use ekho_plugin_api::prelude::*;
/// let caps = Capabilities::new()
///     .kinds([ObjectKind::Route, ObjectKind::Neighbour])
///     .families([Family::INET])
///     .port_names(["swp*"])
///     .limit(ObjectKind::Route, 16_384)
///     .max_ecmp_width(64);
/// assert!(caps.takes_kind(ObjectKind::Route));
/// assert!(!caps.takes_family(Family::INET6));
///
/// // Conntrack flows (API 1.2): TCP and UDP, NAT included, at most 65536.
/// let caps = Capabilities::new()
///     .kinds([ObjectKind::Flow])
///     .flow_nat(true)
///     .flow_protocols([6, 17])
///     .limit(ObjectKind::Flow, 65_536);
/// assert!(caps.takes_kind(ObjectKind::Flow));
/// ```
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct Capabilities {
    /// Object kinds taken. Empty: none.
    pub kinds: RVec<ObjectKind>,
    /// Address families taken for family-bearing objects (routes, addresses, neighbours, rules,
    /// netconf, nexthops). Empty: all families.
    pub families: RVec<Family>,
    /// Notifier kinds taken on the `ebpf` stream. Empty: none.
    pub notifiers: RVec<NotifierKind>,
    pub ports: PortScope,
    pub limits: RVec<Limit>,
    pub features: Features,
    /// API 1.2: what of flows is taken (with [`ObjectKind::Flow`] in `kinds`).
    pub flows: FlowCapabilities,
    /// API 1.3: what of tc filters is run (with [`ObjectKind::TcFilter`] in `kinds`); see
    /// [`Capabilities::takes_filter`]. Empty: no filter.
    pub tc: TcCapabilities,
}

impl Capabilities {
    /// Nothing taken, all ports, no limits: start here and add.
    pub fn new() -> Capabilities {
        Capabilities {
            ports: PortScope {
                all: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }
    /// Every object kind, every family, every notifier, every port, nexthop objects, every
    /// flow (NAT included), every tc filter (but `skip_hw` ones: [`TcCapabilities::all`]).
    pub fn everything() -> Capabilities {
        Capabilities::new()
            .kinds(ObjectKind::ALL)
            .notifiers(NotifierKind::ALL)
            .nexthop_objects(true)
            .flow_nat(true)
            .tc(TcCapabilities::everything())
    }
    /// Adds object kinds (`[ObjectKind::Route]`, or `ObjectKind::ALL`).
    pub fn kinds<K: Borrow<ObjectKind>>(mut self, k: impl IntoIterator<Item = K>) -> Self {
        self.kinds.extend(k.into_iter().map(|k| *k.borrow()));
        self
    }
    pub fn families(mut self, f: impl IntoIterator<Item = Family>) -> Self {
        self.families.extend(f);
        self
    }
    /// Adds notifier kinds (`[NotifierKind::Fib]`, or `NotifierKind::ALL`).
    pub fn notifiers<N: Borrow<NotifierKind>>(mut self, n: impl IntoIterator<Item = N>) -> Self {
        self.notifiers.extend(n.into_iter().map(|n| *n.borrow()));
        self
    }
    /// Owns ports whose names match these globs (instead of all ports).
    pub fn port_names<S: Into<String>>(mut self, globs: impl IntoIterator<Item = S>) -> Self {
        self.ports.all = false;
        self.ports
            .names
            .extend(globs.into_iter().map(|s| RString::from(s.into())));
        self
    }
    /// Owns ports of these drivers (instead of all ports).
    pub fn port_drivers<S: Into<String>>(mut self, drivers: impl IntoIterator<Item = S>) -> Self {
        self.ports.all = false;
        self.ports
            .drivers
            .extend(drivers.into_iter().map(|s| RString::from(s.into())));
        self
    }
    pub fn limit(mut self, kind: ObjectKind, max_entries: u64) -> Self {
        self.limits.push(Limit { kind, max_entries });
        self
    }
    pub fn max_ecmp_width(mut self, w: u32) -> Self {
        self.features.max_ecmp_width = w;
        self
    }
    pub fn nexthop_objects(mut self, yes: bool) -> Self {
        self.features.nexthop_objects = yes;
        self
    }
    /// See [`Features::routes_all_ports`].
    pub fn routes_all_ports(mut self, yes: bool) -> Self {
        self.features.routes_all_ports = yes;
        self
    }

    /// Whether the dataplane NATs flows (see [`FlowCapabilities::nat`]).
    pub fn flow_nat(mut self, yes: bool) -> Self {
        self.flows.nat = yes;
        self
    }
    /// Adds IP protocols of flows taken (see [`FlowCapabilities::protocols`]).
    pub fn flow_protocols(mut self, p: impl IntoIterator<Item = u8>) -> Self {
        self.flows.protocols.extend(p);
        self
    }

    /// What of tc filters is run (API 1.3; see [`TcCapabilities`]).
    pub fn tc(mut self, tc: TcCapabilities) -> Self {
        self.tc = tc;
        self
    }

    /// Whether a tc filter can be run whole (API 1.3), or the first reason it cannot
    /// ([`TcCapabilities::takes_filter`]: `owned` says whether the plugin owns an ifindex, for
    /// mirred targets). The one definition: the host's dispatch, `ekho check-plugin` and a
    /// plugin's own tests use it. The kind ([`ObjectKind::TcFilter`] in `kinds`) is not
    /// checked here: a plugin not taking filters gets none, and no reason either.
    ///
    /// ```
    /// use ekho_plugin_api::prelude::*;
    /// let caps = Capabilities::new().kinds([ObjectKind::TcFilter])
    ///     .tc(TcCapabilities::new().classifiers(["matchall"]).actions(["gact"]).ingress(true));
    /// let mut f = TcFilter::new(TcTarget::Dev(2), TC_H_MIN_INGRESS, 1, 1);
    /// f.kind = "u32".into();
    /// let why = caps.takes_filter(&f, &|_| true).unwrap_err();
    /// assert_eq!(why.to_string(), "classifier u32 not supported");
    /// ```
    pub fn takes_filter(
        &self,
        f: &TcFilter,
        owned: &dyn Fn(u32) -> bool,
    ) -> Result<(), TcUnsupported> {
        self.tc.takes_filter(f, owned)
    }

    /// Whether this flow is taken: the kind, its family, its protocol, and NAT if it has any.
    pub fn takes_flow(&self, f: &Flow) -> bool {
        self.takes_kind(ObjectKind::Flow)
            && self.takes_family(f.family)
            && (self.flows.protocols.is_empty() || self.flows.protocols.contains(&f.protocol))
            && (self.flows.nat || !f.is_nat())
    }

    /// Whether objects of this kind are taken.
    pub fn takes_kind(&self, k: ObjectKind) -> bool {
        self.kinds.contains(&k) && (k != ObjectKind::Nexthop || self.features.nexthop_objects)
    }
    /// Whether objects of this family are taken (family-less objects always pass).
    pub fn takes_family(&self, f: Family) -> bool {
        f == Family::UNSPEC
            || f == Family::BRIDGE
            || self.families.is_empty()
            || self.families.contains(&f)
    }
    /// Whether notifier events of this kind are taken.
    pub fn takes_notifier(&self, n: NotifierKind) -> bool {
        self.notifiers.contains(&n)
    }
    /// The declared limit for a kind, if any.
    pub fn limit_for(&self, k: ObjectKind) -> Option<u64> {
        self.limits
            .iter()
            .find(|l| l.kind == k)
            .map(|l| l.max_entries)
    }
}
