//! # ekho-plugin-api: the ekho vendor SDK
//!
//! ekho mirrors the Linux kernel's networking state (links, addresses, routes, nexthops,
//! neighbours, bridge FDB/VLAN/MDB, rules, netconf, nftables base chains and flowtables,
//! conntrack flows, tc qdiscs, classes, filters and actions) from netlink, captures kernel notifier events with eBPF, and hands both to offload backends: shared-object plugins built against this crate.
//! A plugin sees a stream of [`Change`]s (add / update / remove) for the object kinds, families and
//! ports it declares in its [`Capabilities`], and answers each with an [`Outcome`] (offloaded,
//! unsupported, trapped, failed with a reason) — the same words the kernel's offload flags use.
//!
//! ## Writing a plugin
//! A plugin is a `cdylib` crate that depends on this crate (plus whatever it needs itself, e.g.
//! `serde` and `toml` to parse its config table, as `examples/hello-vendor` does):
//!
//! ```toml
//! [package]
//! name = "acme-asic"
//! version = "1.0.0"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! # not on crates.io yet: point at a checkout of ekho
//! ekho-plugin-api = { path = "../ekho/plugin-api" }
//!
//! [profile.release]
//! panic = "unwind"   # required: panics are caught at the boundary, never abort the host
//! ```
//!
//! and implements [`Plugin`]:
//!
//! ```
//! use ekho_plugin_api::prelude::*;
//!
//! struct Acme { routes: std::collections::HashMap<ObjectKey, Route> }
//!
//! impl Plugin for Acme {
//!     fn create(_ctx: CreateContext) -> Result<Self, String> {
//!         Ok(Acme { routes: Default::default() })
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::new()
//!             .kinds([ObjectKind::Route])
//!             .families([Family::INET])
//!             .port_names(["swp*"])
//!     }
//!     fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
//!         changes.iter().map(|c| match c {
//!             Change::Add(Object::Route(r)) | Change::Update { new: Object::Route(r), .. } => {
//!                 self.routes.insert(c.key(), r.clone());
//!                 Outcome::Offloaded
//!             }
//!             Change::Remove(o) => {
//!                 self.routes.remove(&o.key());
//!                 Outcome::Offloaded
//!             }
//!             _ => Outcome::Unsupported,
//!         }).collect()
//!     }
//! }
//!
//! ekho_plugin_api::declare_plugin!(Acme);
//! # fn main() {}
//! ```
//!
//! `examples/hello-vendor` in the ekho repository is a complete, commented template with a
//! configuration table and a capacity limit.
//!
//! ## Configuration
//! The operator enables the plugin in the host's TOML config; the `[plugins.config]` table reaches
//! [`Plugin::create`] verbatim as TOML text ([`CreateContext::config`]):
//!
//! ```toml
//! [[plugins]]
//! name = "acme-asic"            # file: <plugin_dir>/libacme_asic.so (or set `path`)
//! version = "^1.0"              # optional requirement on the plugin's own version
//! ports = ["swp*"]              # optional: overrides the plugin's declared port scope
//! [plugins.config]
//! device = "/dev/acme0"
//! ```
//!
//! ## Build, self-check, install
//! ```sh
//! cargo build --release                      # target/release/libacme_asic.so
//! ekho check-plugin target/release/libacme_asic.so   # ABI, versions, capabilities, or why refused
//! cp target/release/libacme_asic.so /usr/lib/ekho/plugins/   # the host's plugin_dir
//! ```
//!
//! ## Contract
//! - Calls come from one thread per plugin, never concurrently. A slow plugin never slows the
//!   kernel or other plugins: the host coalesces its queue per object (add then remove cancels,
//!   many updates collapse into the last), so the plugin always converges to the latest state.
//! - At start (and after the host restarts), the plugin gets the whole state as additions between
//!   [`Plugin::begin_sync`] and [`Plugin::end_sync`], while the host is still dumping the kernel
//!   (the additions arrive as fast as the plugin takes them). A plugin keeping hardware state
//!   across host restarts removes at `end_sync` what it was not given (mark and sweep). A plugin
//!   that falls more than 100 ms behind the dump gets `begin_sync` again once the dump is done,
//!   and the whole state once more: mark everything again there.
//! - Within a batch, dependencies come first (links, then addresses, nexthops, routes...);
//!   removals come in reverse order: [`order`] defines it once, for the host and for you.
//! - A panic is caught at the boundary; the host marks the plugin `failed` and never calls it
//!   again (a failed plugin comes back only with a restart of the daemon). This needs
//!   `panic = "unwind"` (the default): the host refuses a plugin built with `panic = "abort"`.
//!
//! ## What reaches a plugin
//! - Kinds: those in [`Capabilities::kinds`]. Families: [`Capabilities::families`] (empty: all)
//!   for family-bearing objects; links and bridge objects always pass.
//! - Ports ([`PortScope`], or the operator's `ports` globs, which replace it): a link passes when
//!   it is owned; any other object passes when it refers to no device (blackhole routes, nexthop
//!   groups, rules) or to at least one owned device (a multipath route with one owned leg arrives
//!   whole, every leg included). With [`Features::routes_all_ports`], routes, nexthops and rules
//!   pass whatever their devices: a router must know routes through ports it does not own.
//! - [`Limit`]: the host counts the objects of a kind the plugin holds (whatever their outcome,
//!   `trapped` included) and answers further *additions* `failed` itself; updates of held
//!   objects always reach the plugin. Additions refused this way are offered again when room
//!   frees up (the host remembers up to 100 000 of them; beyond that, when they next change).
//! - A port renamed into or out of scope brings what is attached to it along: the host
//!   re-evaluates and adds or removes accordingly.
//! - [`Features::max_ecmp_width`]: wider routes are answered `unsupported` by the host.
//! - Outcomes are recorded by the host (`ekho status`); they are not written back to the
//!   kernel's offload flags. Give an `unsupported` its reason with [`Outcome::unsupported`]
//!   (API 1.4): `ekho status` lists it (a tc filter's among the filters not offloaded, any
//!   other kind's among the recent refusals) and `ekho dump filters` prints it beside the
//!   outcome, as it prints the host's own reasons.
//! - [`Plugin::stats`] is read about once a second; `ekho status` shows the last reading.
//! - One library can be enabled several times under different names (`[[plugins]] name = "asic0"`
//!   and `name = "asic1"`, each with `path` set to the same file and its own config table):
//!   each gets its own instance, thread and queue.
//!
//! ## Flows (API 1.2)
//! Conntrack entries the operator's offload policy (`[[flows.offload]]` in the host config;
//! by default established, assured TCP and assured UDP) makes candidates reach a plugin that
//! takes [`ObjectKind::Flow`] as [`Object::Flow`] additions and removals, in order with the
//! rest (a flow ranks after routes). Only flows of the mirrored netns, only those its
//! [`FlowCapabilities`] take (NAT, protocols; families as for other objects), at most its
//! [`Limit`] of kind `flow`. A flow that stops being a candidate or leaves the kernel's table
//! (`conntrack -D`, a flush, its timeout) is removed within 100 ms.
//!
//! The dataplane counts each flow and answers [`Plugin::object_stats`] (asked about once a
//! second): while a flow's [`ObjectCounters::lastused`] advances, the host refreshes the
//! conntrack entry's timeout, since the kernel sees none of its packets; once it stops, the
//! kernel's timeout runs again. When it sees a flow end (a TCP FIN or RST: pass that packet to
//! the kernel), the plugin stops forwarding it and sends [`Request::ReleaseFlow`]: the host
//! removes it and does not offer that entry again.
//!
//! ```
//! use ekho_plugin_api::prelude::*;
//! use std::collections::HashMap;
//!
//! struct FlowBox {
//!     host: HostHandle,
//!     flows: HashMap<ObjectKey, (Flow, [ObjectCounters; 2])>,
//! }
//!
//! impl Plugin for FlowBox {
//!     fn create(ctx: CreateContext) -> Result<Self, String> {
//!         Ok(FlowBox { host: ctx.host, flows: HashMap::new() })
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::new()
//!             .kinds([ObjectKind::Flow])
//!             .families([Family::INET])
//!             .flow_protocols([6, 17])
//!             .flow_nat(true)
//!             .limit(ObjectKind::Flow, 65_536)
//!     }
//!     fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
//!         changes.iter().map(|c| match c {
//!             Change::Add(Object::Flow(f)) | Change::Update { new: Object::Flow(f), .. } => {
//!                 // Program it: match `original` and `reply`, rewrite by `snat`/`dnat`.
//!                 self.flows.insert(c.key(), (f.clone(), Default::default()));
//!                 Outcome::Offloaded
//!             }
//!             Change::Remove(o) => {
//!                 self.flows.remove(&o.key());
//!                 Outcome::Offloaded
//!             }
//!             _ => Outcome::Unsupported,
//!         }).collect()
//!     }
//!     fn object_stats(&self, kind: ObjectKind) -> Vec<ObjectStats> {
//!         if kind != ObjectKind::Flow {
//!             return vec![];
//!         }
//!         self.flows.iter().map(|(k, (_, [o, r]))| ObjectStats::flow(k.clone(), *o, *r)).collect()
//!     }
//! }
//!
//! impl FlowBox {
//!     /// The dataplane saw a FIN on this flow (and passed the packet to the kernel).
//!     fn fin_seen(&mut self, key: &ObjectKey) {
//!         if self.flows.remove(key).is_some() {
//!             let _ = self.host.request(Request::ReleaseFlow { key: key.clone() });
//!         }
//!     }
//! }
//!
//! ekho_plugin_api::declare_plugin!(FlowBox);
//! # fn main() {}
//! ```
//!
//! ## tc (API 1.3)
//! The tc state (`tc qdisc|class|filter|actions show`) reaches a plugin that takes the tc kinds:
//! [`ObjectKind::Qdisc`], [`ObjectKind::TcClass`], [`ObjectKind::TcAction`],
//! [`ObjectKind::TcFilter`] (ranked in that order after flows). A filter
//! ([`TcFilter`](object::TcFilter)) carries its classifier's match ([`TcMatch`](object::TcMatch):
//! flower keys with their masks, u32's selector, matchall, bpf's program id; other classifiers
//! raw) and its ordered actions with their full parameters
//! ([`TcActionSpec`](object::TcActionSpec)): a filter object alone says what to do. The host
//! hands a plugin only the filters it can run whole, as its
//! [`TcCapabilities`] ([`Capabilities::tc`]) say: classifiers, flower
//! keys, action kinds, mirred operations, hooks, shared blocks, goto chain. Each other filter
//! is reported `unsupported` with the first reason
//! [`Capabilities::takes_filter`] gives, in tc's words (`action pedit not supported`), in the
//! plugin's status and `ekho dump filters`; the kernel keeps running it in software. A device's
//! filter passes the port scope when its device is owned; a shared block's when every device
//! the block is bound to is ([`TcFilter::bindings`](object::TcFilter::bindings)). Replacing an
//! action shared by index (`tc actions replace action police index 5 ...`) re-sends every filter
//! holding it. Per-filter counters go through [`Plugin::object_stats`]
//! ([`ObjectStats::tc_filter`]); `ekho dump filters --stats` shows them beside the kernel's
//! software counters. The host never sets `skip_sw`, and never hands over a `skip_hw` filter.
//!
//! ```
//! use ekho_plugin_api::prelude::*;
//! use std::collections::HashMap;
//!
//! /// Drops in its dataplane what ingress matchall/flower filters with `action drop` match.
//! struct Dropper { filters: HashMap<ObjectKey, TcFilter>, hits: HashMap<ObjectKey, ObjectCounters> }
//!
//! impl Plugin for Dropper {
//!     fn create(_ctx: CreateContext) -> Result<Self, String> {
//!         Ok(Dropper { filters: HashMap::new(), hits: HashMap::new() })
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::new()
//!             .kinds([ObjectKind::TcFilter])
//!             .port_names(["v*"])
//!             .tc(TcCapabilities::new()
//!                 .classifiers(["matchall", "flower"])
//!                 .flower_keys([FlowerKey::EthType, FlowerKey::IpProto, FlowerKey::DstIp])
//!                 .actions(["gact"])
//!                 .ingress(true))
//!     }
//!     fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
//!         changes.iter().map(|c| match c {
//!             Change::Add(Object::TcFilter(f)) | Change::Update { new: Object::TcFilter(f), .. } => {
//!                 // Every filter here passed `takes_filter`: gact only, ingress, known keys.
//!                 self.filters.insert(c.key(), f.clone());
//!                 Outcome::Offloaded
//!             }
//!             Change::Remove(o) => {
//!                 self.filters.remove(&o.key());
//!                 self.hits.remove(&o.key());
//!                 Outcome::Offloaded
//!             }
//!             // API 1.4: the reason is shown beside `unsupported` (`ekho dump filters`).
//!             _ => Outcome::unsupported("only tc filters"),
//!         }).collect()
//!     }
//!     fn object_stats(&self, kind: ObjectKind) -> Vec<ObjectStats> {
//!         if kind != ObjectKind::TcFilter {
//!             return vec![];
//!         }
//!         self.hits.iter().map(|(k, c)| ObjectStats::tc_filter(k.clone(), *c)).collect()
//!     }
//! }
//!
//! ekho_plugin_api::declare_plugin!(Dropper);
//! # fn main() {}
//! ```
//!
//! ## Versioning: the 1.x contract
//! A plugin is built once and keeps working when the operator updates ekho. The host reads the
//! exported `EKHO_PLUGIN_API_VERSION` symbol before loading and applies [`version::verdict`]:
//!
//! - **Every plugin built against any 1.x up to the host's own minor loads and works
//!   unchanged.** One of the host's minor runs natively; one of an older minor is checked
//!   against the frozen types of its minor and driven through them ([`abi`]): the host
//!   converts each change into that minor's types before the call. Kinds and fields the
//!   plugin was not built with never reach it. `ekho check-plugin` and `ekho plugins` say
//!   which (`native`, `converted from 1.0`).
//! - **A plugin built against a newer minor than the host is refused**, with one line naming
//!   both versions: it may rely on kinds or fields this host does not have.
//! - **Another major is refused** (rebuild against the host's major).
//!
//! What a **minor** release (1.y) may add, and nothing else:
//! - object kinds (a new [`ObjectKind`] constant, [`Object`] and [`ObjectKey`] variant, its
//!   struct), notifier kinds ([`NotifierKind`]), requests ([`Request`]), outcomes
//!   ([`Outcome`]): these are open sets, so match them with a `_` arm;
//! - fields appended to object structs, [`Capabilities`], [`Features`], [`Stats`] and events
//!   (a field's absence in an older minor reads as its zero/empty value);
//! - capability keys ([`Features`] fields, limits of new kinds);
//! - methods of [`Plugin`] with a default body, and helper functions and constructors.
//!
//! What only a **major** release may change: removing or renaming anything, changing a
//! field's type or meaning, reordering fields, changing an existing method's signature or a
//! default's behaviour, changing an identity key ([`Object::key`]), the batch order
//! ([`order`]) or the contract above. Patch releases (1.y.z) change no type.
//!
//! Build with struct-update syntax (`Route { metric: 10, ..Route::unicast(..) }` or
//! `..Default::default()`) and `_` arms, and a rebuild against a newer 1.y compiles unchanged.
//!
//! ## Changes
//! - 1.4.0: an unsupported outcome can carry its reason: [`Outcome::UnsupportedBecause`],
//!   built with [`Outcome::unsupported`] (`Outcome::unsupported("gact random")`), read with
//!   [`Outcome::reason`] and [`Outcome::is_unsupported`]; still named `unsupported` (JSON,
//!   status, metrics), its reason shown where the outcome is (`ekho status`, `ekho dump
//!   filters`: `offload: unsupported (gact random) [plugin]`). The bare
//!   [`Outcome::Unsupported`] stays. 1.0 to 1.3 plugins run converted (`abi::v1_0` holds the
//!   frozen `Outcome` of 1.0 to 1.3, `abi::v1_3` the frozen 1.3 vtable and root module).
//! - 1.3.0: tc: object kinds [`ObjectKind::Qdisc`], [`ObjectKind::TcClass`],
//!   [`ObjectKind::TcAction`] and [`ObjectKind::TcFilter`] (keys: device and parent; device and
//!   handle; kind and index; target, parent, chain, prio and handle), the filter's typed match
//!   ([`TcMatch`](object::TcMatch), [`FlowerKeys`](object::FlowerKeys), u32, matchall, bpf) and
//!   actions ([`TcActionSpec`](object::TcActionSpec), [`TcControl`](object::TcControl),
//!   [`TcActionParams`](object::TcActionParams): gact, mirred, vlan, police in bytes, skbedit,
//!   pedit, csum, ct, tunnel_key, nat; others raw), [`Capabilities::tc`]
//!   ([`TcCapabilities`]) and [`Capabilities::takes_filter`] (the
//!   reason a filter is not taken, [`TcUnsupported`](object::TcUnsupported)),
//!   [`ObjectStats::tc_filter`]. 1.0, 1.1 and 1.2 plugins run converted (`abi::v1_2` holds the
//!   frozen 1.2 `Object`, `Change`, `ObjectKey`, `ObjectStats`, `Request`, `Capabilities`, host
//!   handle, vtable and root module) and never see tc objects.
//! - 1.2.0: conntrack flows: object kind [`ObjectKind::Flow`] ([`Flow`](object::Flow): family,
//!   protocol, zone, mark, both tuples, NAT derived from them, status bits, conntrack id;
//!   key: zone and original tuple), [`Capabilities::flows`] ([`FlowCapabilities`]: NAT,
//!   protocols), per-object counters ([`Plugin::object_stats`]: packets, bytes, drops,
//!   lastused per direction, keyed by [`ObjectKey`]), [`Request::ReleaseFlow`] to hand a flow
//!   back to the kernel. 1.0 and 1.1 plugins run converted (`abi::v1_0` and `abi::v1_1` hold
//!   their frozen types: `Capabilities`, `Request` and the host handle changed since 1.0;
//!   `Object`, `Change`, the vtable and root module since 1.1) and never see flows.
//! - 1.1.0: the netfilter state on the forwarding path, from nftables netlink (iptables-nft
//!   included): object kinds [`ObjectKind::NfChain`] (a base chain: family, table, name, hook,
//!   priority, type, policy, devices, rule count, table dormancy;
//!   [`NfChain::acts_on_forwarding`](object::NfChain::acts_on_forwarding) says whether it could
//!   change what happens to a forwarded packet) and [`ObjectKind::NfFlowtable`]. A dataplane that
//!   forwards itself must hand the traffic such a chain could act on to the kernel. 1.0 plugins
//!   run converted (`abi::v1_0` holds the frozen 1.0 `Object`, `Change`, vtable and root
//!   module) and never see the new kinds.
//! - 1.0.0: the first stable release (rebuild 0.x plugins once; from here on, plugins keep
//!   loading). Kinds ([`ObjectKind`], [`NotifierKind`]) are open `u16` tags instead of closed
//!   enums; [`Object`], [`ObjectKey`], [`Outcome`] and [`Request`] are non-exhaustive; the
//!   batch order is defined once in [`order`]; [`abi`] holds the boundary of each minor;
//!   abi_stable is pinned to one exact version.
//! - 0.2.0 (breaking): [`Rule`](object::Rule) gains the selectors the kernel tells rules apart
//!   by (`sport`, `dport`, `uid_range`, `tun_id`, `realms`, `suppress_ifgroup`), and
//!   [`Rule::lookup`](object::Rule::lookup) builds a plain rule. [`Plugin::begin_sync`] may
//!   come again before `end_sync` (the sync starts over).
//! - 0.1.0: first release.

#![allow(non_local_definitions)] // emitted by abi_stable's #[sabi_trait] on recent rustc

pub mod abi;
pub mod capability;
pub mod change;
pub mod event;
pub mod host;
pub mod object;
pub mod order;
pub mod outcome;
pub mod plugin;
mod tag;
pub mod version;

pub use abi_stable;
pub use capability::{Capabilities, Features, FlowCapabilities, Limit, PortScope};
pub use change::Change;
pub use event::{NotifierEvent, NotifierKind};
pub use host::{DetachedHost, HostHandle, HostServices, LogLevel, Request};
pub use object::TcCapabilities;
pub use object::{Object, ObjectKey, ObjectKind};
pub use outcome::Outcome;
pub use plugin::{
    monotonic_ns, Counter, CreateContext, ObjectCounters, ObjectStats, Plugin, PluginInfo, Stats,
};

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::capability::{Capabilities, Features, FlowCapabilities, Limit, PortScope};
    pub use crate::change::Change;
    pub use crate::event::{NotifierEvent, NotifierKind};
    pub use crate::host::{HostHandle, HostServices, LogLevel, Request};
    pub use crate::object::*;
    pub use crate::outcome::Outcome;
    pub use crate::plugin::{
        CreateContext, ObjectCounters, ObjectStats, Plugin, PluginInfo, Stats,
    };
    pub use abi_stable::std_types::{ROption, RString, RVec};
}
