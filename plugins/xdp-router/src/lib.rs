//! # ekho-xdp-router: a router whose "hardware" is XDP
//!
//! A complete ekho offload backend. It takes links, nexthop objects and groups, neighbours,
//! IPv4/IPv6 routes and rules from the host's mirror and programs BPF maps from those changes alone
//! (no `bpf_fib_lookup`: the mirror is the only source). An XDP program attached to every owned
//! port forwards what it can and hands everything else to the kernel untouched (`XDP_PASS`).
//!
//! ## Data path (`bpf/xdp_router.bpf.c`)
//! - Offloaded conntrack flows first (kind `flow`, API 1.2; [`flows`], [`flow_api`]): a TCP/UDP
//!   packet whose 5-tuple is a flow's original or reply tuple is NATed to the other tuple
//!   reversed (SNAT and DNAT, addresses and ports, checksums updated incrementally), its TTL /
//!   hop limit decremented and it is routed by its new destination as below; counted per flow
//!   and direction. This runs before the netfilter punt (the kernel applied NAT and verdict when
//!   the flow was set up, as for its own flowtable). A TCP FIN or RST is passed to the kernel and
//!   the flow marked (every later packet of it passed too) and handed back
//!   (`Request::ReleaseFlow`). SYN, TTL expiry, over-MTU and missing routes or neighbours pass
//!   the packet, the flow staying offloaded.
//! - Lookup order = the kernel's default rules: table local (255), main (254), default (253); one
//!   LPM trie per family keyed by (table, prefix). Routes in other tables are answered
//!   `unsupported` (only policy rules can reach them, see below).
//! - Policy rules: the default rules are `offloaded`; any other rule of a family makes the data
//!   path hand *all* traffic of that family to the kernel (and the rule is answered `trapped`), so
//!   a rule can never be bypassed.
//! - Netfilter: a plugin that forwards in XDP skips every netfilter hook the kernel would run
//!   (NAT, conntrack, firewall). Any nftables base chain (iptables-nft's included) that could
//!   act on forwarded traffic (`NfChain::acts_on_forwarding`: on prerouting, forward,
//!   postrouting or a netdev hook, with a rule or a policy other than accept, table not
//!   dormant) makes the data path hand all traffic of the families it sees (`ip`: IPv4, `ip6`:
//!   IPv6, `inet` and `netdev`: both) to the kernel; the chain is answered `trapped`. No rule is
//!   assumed not to match. While a sync runs (before the plugin knows the whole ruleset) both
//!   families go to the kernel too. iptables-legacy (x_tables) has no netlink and is not seen.
//! - Per route: a set of up to 16 legs with weights spread over 128 hash slots; the leg is chosen
//!   by a flow hash (addresses, protocol, TCP/UDP ports). Legs through ports that are down, dead
//!   (`RTNH_F_DEAD`) or without carrier are left out; a route without a usable leg, or with a leg
//!   through a port the plugin does not own, or with an encapsulation, is passed to the kernel.
//! - Next hop MAC from the neighbour map (gateway, or the destination itself for on-link routes).
//!   Missing: `XDP_PASS`, and a resolution request goes to the host (`Request::ResolveNeighbour`,
//!   rate-limited); the neighbour arrives later as a normal change.
//! - Forward: TTL / hop limit decrement (IPv4 checksum updated incrementally), source MAC = egress
//!   port MAC, destination MAC = neighbour, `bpf_redirect_map` through a devmap of owned ports.
//! - Passed to the kernel: non-IP, frames not addressed to the port's MAC, local/broadcast/
//!   multicast/unreachable/prohibit/throw routes (answered `trapped`), TTL expiry, IPv4 options,
//!   IPv6 hop-by-hop, fragments, packets over the egress MTU, no route. Blackhole routes drop.
//!
//! ## Configuration (`[plugins.config]` of the host config)
//! ```toml
//! netns = "/run/netns/r"        # namespace of the ports; default: the one the host mirrors
//!                               # (`CreateContext::netns`), else the process's own
//! ports = ["eth*", "swp*"]      # globs of ports to own; default: every Ethernet port received
//! xdp_mode = "auto"             # auto | native | skb
//! resolve_interval_ms = 1000    # at most one resolution request per next hop per interval
//! zones = { p1 = 1, p3 = 1 }     # conntrack zone of each port's packets (default 0), as the
//!                               # operator's `iif NAME ct zone set N` rules set it
//! ```
//! Own ports with the `ports` key *here*. The plugin declares every port in its capabilities on
//! purpose: the host drops objects tied only to ports outside a plugin's scope, and a router
//! must see every route (a route through a port it does not own is passed to the kernel; if it
//! were missing, a covering route through an owned port would capture its traffic). Narrowing
//! with the host's `[[plugins]] ports` globs is therefore unsafe for this plugin unless every
//! route uses owned ports.
//!
//! ## Stats
//! `port:<name>` forwarded / passed / dropped / forwarded_bytes (ingress), `route:<prefix>`
//! (`route:<prefix>@<table>` outside main) packets / bytes (above 1000 prefixes only those with
//! hits), `xdp` per pass/drop reason and resolution requests, `flows` offloaded / refused /
//! released / release_failed / release_moot (a FIN/RST seen after the host took the flow back
//! already); per flow through `Plugin::object_stats` (packets, bytes, lastused
//! of each direction).
//!
//! ## Lifecycle
//! Programs are attached as `bpf_link`s owned by the plugin: `shutdown` (or drop, or the process
//! dying) detaches them and releases the maps. On attach, a stale `ekho_xdp_router` left on a port
//! by another run is detached first (see [`stale`]).

pub mod dataplane;
pub mod flow_api;
pub mod flows;
pub mod maps;
pub mod resolver;
pub mod ring;
pub use ekho_xdp_common::{netns, stale};

#[cfg(test)]
mod logic_tests;

use dataplane::{Backend, Dataplane, XdpMode};
use ekho_plugin_api::object::neighbour::nud;
use ekho_plugin_api::object::route::{RTNH_F_DEAD, RTNH_F_LINKDOWN};
use ekho_plugin_api::prelude::*;
use flows::{FlowTable, Releaser};
use maps::*;
use resolver::Asker;
use ring::RingReader;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The plugin's own configuration table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Network namespace whose ports the plugin attaches to (path, e.g. `/run/netns/r`). Default:
    /// the namespace the host mirrors (`CreateContext::netns`).
    #[serde(default)]
    pub netns: Option<String>,
    /// Globs of port names to own (default: every Ethernet port the host gives).
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval_ms: u32,
    /// The conntrack zone of each port's packets, by port name, as the operator's rules set it
    /// (`iif NAME ct zone set N` in a raw prerouting chain); a port not listed is in zone 0.
    /// The flow path matches a packet against the flows of its ingress port's zone, so flows
    /// of two zones with the same tuple do not collide, and a flow of a zone no owned port is
    /// in is not taken (it stays in the kernel).
    #[serde(default)]
    pub zones: BTreeMap<String, u16>,
}

fn default_resolve_interval() -> u32 {
    1000
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| format!("xdp-router config: {e}"))?;
        for g in &c.ports {
            glob::Pattern::new(g)
                .map_err(|e| format!("xdp-router config: bad port glob {g:?}: {e}"))?;
        }
        Ok(c)
    }
}

/// A (table, destination) entry of the LPM tries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct PrefixKey {
    table: u32,
    dst: IpPrefix,
}

struct Programmed {
    counter_id: u32,
    /// Key of the route whose legs are programmed (for stats naming).
    active: Option<ObjectKey>,
}

/// What the data path does for a route.
enum Plan {
    Forward(Vec<(Leg, u16)>),
    Pass,
    Drop,
}

/// A route leg before programming: (gateway, ifindex, weight, `RTNH_F_*` flags, has encap).
type RawLeg = (Option<IpAddress>, u32, u16, u32, bool);

/// The plugin.
pub struct XdpRouter {
    cfg: Config,
    globs: Vec<glob::Pattern>,
    host: HostHandle,
    dp: Option<Box<dyn Backend>>,
    resolver: Option<RingReader>,
    asker: Asker,
    links: HashMap<u32, Link>,
    owned: BTreeSet<u32>,
    routes: HashMap<ObjectKey, Route>,
    by_prefix: HashMap<PrefixKey, BTreeSet<ObjectKey>>,
    programmed: BTreeMap<PrefixKey, Programmed>,
    nexthops: HashMap<u32, Nexthop>,
    neighbours: HashMap<ObjectKey, Neighbour>,
    rules: HashMap<ObjectKey, Rule>,
    /// nftables base chains.
    nf_chains: HashMap<ObjectKey, NfChain>,
    cfg_flags: u32,
    /// Prefixes whose data-path entry could not be written (map full, ...).
    unprogrammed: BTreeSet<PrefixKey>,
    next_counter: u32,
    sync_seen: Option<HashSet<ObjectKey>>,
    /// Offloaded conntrack flows.
    flows: FlowTable<ObjectKey>,
    /// Flows the data path saw FIN/RST on, handed back to the host once each.
    releaser: Arc<Releaser<ObjectKey>>,
    flow_events: Option<RingReader>,
    /// Flows not taken (table full, a duplicate tuple, a protocol or family not run).
    flows_refused: u64,
}

fn addr16(a: &IpAddress) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match a {
        IpAddress::V4(b) => {
            out[..4].copy_from_slice(b);
            (2, out)
        }
        IpAddress::V6(b) => (10, *b),
    }
}

fn neigh_key(ifindex: u32, a: &IpAddress) -> NeighKey {
    let (family, addr) = addr16(a);
    NeighKey {
        ifindex,
        family: family as u32,
        addr,
    }
}

fn is_default_rule(r: &Rule) -> bool {
    let plain = r.action == 1
        && r.src.is_none()
        && r.dst.is_none()
        && r.iif.is_empty()
        && r.oif.is_empty()
        && r.fwmark == 0
        && r.fwmask == 0
        && r.tos == 0
        && r.ip_proto == 0
        && r.suppress_prefixlen.is_none()
        && r.flags & ekho_plugin_api::object::rule::FIB_RULE_INVERT == 0
        && !r.l3mdev
        && r.sport.is_none()
        && r.dport.is_none()
        && r.uid_range.is_none()
        && r.tun_id.is_none()
        && r.realms.is_none()
        && r.suppress_ifgroup.is_none();
    plain
        && matches!(
            (r.priority, r.table),
            (0, TABLE_LOCAL) | (32766, TABLE_MAIN) | (32767, TABLE_DEFAULT)
        )
}

impl XdpRouter {
    fn log(&self, level: LogLevel, msg: impl AsRef<str>) {
        self.host.log(level, msg.as_ref().into());
    }

    fn dp(&mut self) -> Result<&mut dyn Backend, String> {
        match self.dp.as_mut() {
            Some(b) => Ok(&mut **b),
            None => Err("data path is shut down".to_string()),
        }
    }

    fn wants_port(&self, l: &Link) -> bool {
        l.link_type == 1
            && l.address.as_slice().len() == 6
            && (self.globs.is_empty() || self.globs.iter().any(|g| g.matches(l.ifname.as_str())))
    }

    fn port_live(&self, ifindex: u32) -> bool {
        self.owned.contains(&ifindex)
            && self
                .links
                .get(&ifindex)
                .is_some_and(|l| l.is_up() && l.has_carrier())
    }

    fn neighbour_valid(&self, ifindex: u32, a: &IpAddress) -> bool {
        let key = ObjectKey::Neighbour {
            family: a.family(),
            ifindex,
            dst: *a,
            proxy: false,
        };
        self.neighbours.get(&key).is_some_and(|n| n.is_valid())
    }

    // ---- links -------------------------------------------------------------------------------

    fn apply_link(&mut self, change: &Change) -> Outcome {
        let (link, removed) = match change {
            Change::Add(Object::Link(l))
            | Change::Update {
                new: Object::Link(l),
                ..
            } => (l.clone(), false),
            Change::Remove(Object::Link(l)) => (l.clone(), true),
            _ => return Outcome::Unsupported,
        };
        let ifindex = link.ifindex;
        let old = self.links.get(&ifindex).cloned();
        let want = !removed && self.wants_port(&link);
        let was_owned = self.owned.contains(&ifindex);
        if removed {
            self.links.remove(&ifindex);
        } else {
            self.links.insert(ifindex, link.clone());
        }
        let res: Result<(), String> = (|| {
            if want {
                if !was_owned {
                    let note = self
                        .dp()?
                        .attach(ifindex)
                        .map_err(|e| format!("attach XDP to {}: {e}", link.ifname))?;
                    if let Some(n) = note {
                        self.log(LogLevel::Warn, format!("{}: {n}", link.ifname));
                    }
                    self.owned.insert(ifindex);
                    self.log(
                        LogLevel::Info,
                        format!("attached XDP to {} (ifindex {ifindex})", link.ifname),
                    );
                    if link.kind.as_str() == "veth" {
                        self.log(LogLevel::Info, ekho_xdp_common::veth_note(&link.ifname));
                    }
                }
                let mut mac = [0u8; 6];
                mac.copy_from_slice(link.address.as_slice());
                let flags = if link.is_up() && link.has_carrier() {
                    PORT_UP
                } else {
                    0
                };
                let zone = self
                    .cfg
                    .zones
                    .get(link.ifname.as_str())
                    .copied()
                    .unwrap_or(0);
                self.dp()?
                    .set_port(
                        ifindex,
                        Some(PortVal {
                            mac,
                            flags,
                            mtu: link.mtu,
                            zone,
                            pad: 0,
                        }),
                    )
                    .map_err(|e| e.to_string())?;
            } else if was_owned {
                self.owned.remove(&ifindex);
                let dp = self.dp()?;
                dp.set_port(ifindex, None).map_err(|e| e.to_string())?;
                dp.detach(ifindex).map_err(|e| e.to_string())?;
                self.log(
                    LogLevel::Info,
                    format!("detached XDP from {} (ifindex {ifindex})", link.ifname),
                );
            }
            Ok(())
        })();
        // Routes through this port may change (live legs, ownership, MTU is checked in BPF).
        let relevant = match (&old, removed) {
            (Some(o), false) => {
                o.flags != link.flags || o.ifname != link.ifname || was_owned != want
            }
            _ => true,
        };
        if relevant {
            self.reprogram_where(|r| {
                r.nexthops.iter().any(|n| n.ifindex == ifindex) || r.nhid.is_some()
            });
        }
        match res {
            Err(e) => Outcome::failed(e),
            Ok(()) if want || (removed && was_owned) => Outcome::Offloaded,
            Ok(()) => Outcome::Unsupported,
        }
    }

    // ---- neighbours --------------------------------------------------------------------------

    fn apply_neighbour(&mut self, change: &Change) -> Outcome {
        let (n, removed) = match change {
            Change::Add(Object::Neighbour(n))
            | Change::Update {
                new: Object::Neighbour(n),
                ..
            } => (n, false),
            Change::Remove(Object::Neighbour(n)) => (n, true),
            _ => return Outcome::Unsupported,
        };
        let key = Object::Neighbour(n.clone()).key();
        if n.proxy {
            return Outcome::unsupported("proxy neighbour (the kernel answers for it)");
        }
        if removed {
            self.neighbours.remove(&key);
        } else {
            self.neighbours.insert(key, n.clone());
        }
        let usable = !removed && n.is_valid() && n.lladdr.as_slice().len() == 6;
        let val = usable.then(|| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(n.lladdr.as_slice());
            NeighVal { mac, pad: 0 }
        });
        if usable {
            self.asker.forget(n.ifindex, n.dst);
        }
        let res = match self.dp() {
            Ok(dp) => dp
                .set_neighbour(neigh_key(n.ifindex, &n.dst), val)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        // A gateway that lost its MAC (failed, removed): ask again, the data path will pass.
        if !usable
            && !removed
            && n.state & (nud::FAILED | nud::INCOMPLETE) == 0
            && self.is_gateway(n.ifindex, &n.dst)
        {
            self.asker.ask(n.ifindex, n.dst);
        }
        match res {
            Err(e) => Outcome::failed(e),
            Ok(()) if self.owned.contains(&n.ifindex) => Outcome::Offloaded,
            Ok(()) => Outcome::Unsupported,
        }
    }

    fn is_gateway(&self, ifindex: u32, a: &IpAddress) -> bool {
        self.routes.values().any(|r| {
            r.nexthops
                .iter()
                .any(|n| n.ifindex == ifindex && n.gateway.as_ref().into_option() == Some(a))
        })
    }

    // ---- nexthop objects ---------------------------------------------------------------------

    fn apply_nexthop(&mut self, change: &Change) -> Outcome {
        let (nh, removed) = match change {
            Change::Add(Object::Nexthop(n))
            | Change::Update {
                new: Object::Nexthop(n),
                ..
            } => (n.clone(), false),
            Change::Remove(Object::Nexthop(n)) => (n.clone(), true),
            _ => return Outcome::Unsupported,
        };
        let id = nh.id;
        if removed {
            self.nexthops.remove(&id);
        } else {
            self.nexthops.insert(id, nh.clone());
        }
        // Groups containing this id, and the id itself.
        let mut ids: HashSet<u32> = HashSet::from([id]);
        for g in self.nexthops.values() {
            if g.group.iter().any(|m| m.id == id) {
                ids.insert(g.id);
            }
        }
        self.reprogram_where(|r| r.nhid.into_option().is_some_and(|n| ids.contains(&n)));
        if removed {
            return Outcome::Offloaded;
        }
        if nh.fdb {
            return Outcome::unsupported("fdb nexthop (VXLAN)");
        }
        if nh.blackhole {
            return Outcome::Offloaded;
        }
        if nh.is_group() {
            return if nh.group.iter().all(|m| self.nexthops.contains_key(&m.id)) {
                Outcome::Offloaded
            } else {
                Outcome::Trapped
            };
        }
        if nh.encap.is_some() || !self.owned.contains(&nh.ifindex) {
            return Outcome::Trapped;
        }
        if let Some(gw) = nh.gateway.into_option() {
            if !self.neighbour_valid(nh.ifindex, &gw) {
                self.asker.ask(nh.ifindex, gw);
            }
        }
        Outcome::Offloaded
    }

    // ---- rules -------------------------------------------------------------------------------

    fn apply_rule(&mut self, change: &Change) -> Outcome {
        let (r, removed) = match change {
            Change::Add(Object::Rule(r))
            | Change::Update {
                new: Object::Rule(r),
                ..
            } => (r.clone(), false),
            Change::Remove(Object::Rule(r)) => (r.clone(), true),
            _ => return Outcome::Unsupported,
        };
        let key = Object::Rule(r.clone()).key();
        if removed {
            self.rules.remove(&key);
        } else {
            self.rules.insert(key, r.clone());
        }
        let res = self.write_config();
        match res {
            Err(e) => Outcome::failed(e),
            Ok(()) if removed || is_default_rule(&r) => Outcome::Offloaded,
            Ok(()) => Outcome::Trapped,
        }
    }

    // ---- netfilter ---------------------------------------------------------------------------

    fn apply_nf_chain(&mut self, change: &Change) -> Outcome {
        let (c, removed) = match change {
            Change::Add(Object::NfChain(c))
            | Change::Update {
                new: Object::NfChain(c),
                ..
            } => (c.clone(), false),
            Change::Remove(Object::NfChain(c)) => (c.clone(), true),
            _ => return Outcome::Unsupported,
        };
        let key = Object::NfChain(c.clone()).key();
        if removed {
            self.nf_chains.remove(&key);
        } else {
            self.nf_chains.insert(key, c.clone());
        }
        match self.write_config() {
            Err(e) => Outcome::failed(e),
            Ok(()) if !removed && c.acts_on_forwarding() => Outcome::Trapped,
            Ok(()) => Outcome::Offloaded,
        }
    }

    /// Families whose traffic nftables chains could act on (see the crate docs).
    fn nf_punt_flags(&self) -> u32 {
        let mut flags = 0;
        for c in self.nf_chains.values().filter(|c| c.acts_on_forwarding()) {
            if c.family.covers(Family::INET) || c.family == NfFamily::NETDEV {
                flags |= CFG_PUNT_V4;
            }
            if c.family.covers(Family::INET6) || c.family == NfFamily::NETDEV {
                flags |= CFG_PUNT_V6;
            }
        }
        flags
    }

    /// Families whose traffic must all go to the kernel: non-default policy rules, netfilter
    /// chains on the forwarding path, a sync under way, or a prefix that could not be
    /// programmed (a missing specific route would let a covering one capture its traffic).
    ///
    /// All but the netfilter chains also stop the flow path (`CFG_NOFLOW_*`): its route lookup
    /// after NAT could be wrong. An offloaded flow carries the kernel's NAT and netfilter verdict,
    /// so chains alone leave it running (like the kernel's flowtable).
    fn punt_flags(&self) -> u32 {
        if self.sync_seen.is_some() {
            return CFG_PUNT_V4 | CFG_PUNT_V6 | CFG_NOFLOW_V4 | CFG_NOFLOW_V6;
        }
        let fam = |f: Family| match f {
            Family::INET => CFG_PUNT_V4 | CFG_NOFLOW_V4,
            Family::INET6 => CFG_PUNT_V6 | CFG_NOFLOW_V6,
            _ => 0,
        };
        let mut flags = 0;
        for r in self.rules.values().filter(|r| !is_default_rule(r)) {
            flags |= fam(r.family);
        }
        for pk in &self.unprogrammed {
            flags |= fam(pk.dst.addr.family());
        }
        flags | self.nf_punt_flags()
    }

    fn write_config(&mut self) -> Result<(), String> {
        let flags = self.punt_flags();
        self.cfg_flags = flags;
        let v = ConfigVal {
            flags,
            resolve_interval_ms: self.cfg.resolve_interval_ms.min(100),
        };
        self.dp()?.set_config(v).map_err(|e| e.to_string())
    }

    // ---- routes ------------------------------------------------------------------------------

    /// The legs of a route: from its nexthop object when it has one we know, else its own.
    fn route_legs(&self, r: &Route) -> Result<Vec<RawLeg>, Plan> {
        if let Some(id) = r.nhid.into_option() {
            if let Some(nh) = self.nexthops.get(&id) {
                if nh.blackhole {
                    return Err(Plan::Drop);
                }
                let members: Vec<(u32, u16)> = if nh.is_group() {
                    nh.group.iter().map(|m| (m.id, m.weight)).collect()
                } else {
                    vec![(id, 1)]
                };
                let mut out = Vec::new();
                for (mid, w) in members {
                    let Some(m) = self.nexthops.get(&mid) else {
                        return Err(Plan::Pass);
                    };
                    if m.blackhole || m.is_group() {
                        return Err(Plan::Pass);
                    }
                    out.push((
                        m.gateway.into_option(),
                        m.ifindex,
                        w,
                        m.flags,
                        m.encap.is_some(),
                    ));
                }
                return Ok(out);
            }
        }
        Ok(r.nexthops
            .iter()
            .map(|n| {
                (
                    n.gateway.into_option(),
                    n.ifindex,
                    n.weight,
                    n.flags,
                    n.encap.is_some(),
                )
            })
            .collect())
    }

    fn plan(&self, r: &Route) -> Plan {
        if r.kind == RouteType::BLACKHOLE {
            return Plan::Drop;
        }
        if r.kind != RouteType::UNICAST || r.tos != 0 || r.src.len != 0 {
            return Plan::Pass;
        }
        let legs = match self.route_legs(r) {
            Ok(l) => l,
            Err(p) => return p,
        };
        let mut out = Vec::new();
        for (gw, ifindex, weight, flags, encap) in legs {
            if flags & RTNH_F_DEAD != 0 {
                continue;
            }
            if encap || ifindex == 0 || !self.owned.contains(&ifindex) {
                // The kernel must see this traffic (a share of it at least).
                return Plan::Pass;
            }
            if flags & RTNH_F_LINKDOWN != 0 || !self.port_live(ifindex) {
                continue;
            }
            let mut leg = Leg {
                ifindex,
                ..Leg::default()
            };
            if let Some(g) = gw {
                let (fam, a) = addr16(&g);
                leg.flags = LEG_GATEWAY;
                leg.family = fam;
                leg.gw = a;
            }
            out.push((leg, weight.max(1)));
        }
        if out.is_empty() || out.len() > MAX_LEGS {
            Plan::Pass
        } else {
            Plan::Forward(out)
        }
    }

    fn route_outcome(&self, r: &Route) -> Outcome {
        if r.kind == RouteType::BLACKHOLE {
            return Outcome::Offloaded;
        }
        if r.kind != RouteType::UNICAST || r.tos != 0 || r.src.len != 0 {
            return Outcome::Trapped;
        }
        match self.route_legs(r) {
            Err(Plan::Drop) => Outcome::Offloaded,
            Err(_) => Outcome::Trapped,
            Ok(legs) if legs.is_empty() || legs.len() > MAX_LEGS => Outcome::Trapped,
            Ok(legs) => {
                if legs
                    .iter()
                    .all(|(_, i, _, _, encap)| !encap && *i != 0 && self.owned.contains(i))
                {
                    Outcome::Offloaded
                } else {
                    Outcome::Trapped
                }
            }
        }
    }

    fn apply_route(&mut self, change: &Change) -> Outcome {
        let (r, removed) = match change {
            Change::Add(Object::Route(r))
            | Change::Update {
                new: Object::Route(r),
                ..
            } => (r, false),
            Change::Remove(Object::Route(r)) => (r, true),
            _ => return Outcome::Unsupported,
        };
        if r.family != Family::INET && r.family != Family::INET6 {
            return Outcome::unsupported(format!("family {} not routed here", r.family.name()));
        }
        if ![TABLE_LOCAL, TABLE_MAIN, TABLE_DEFAULT].contains(&r.table) {
            return Outcome::unsupported(format!(
                "table {} (only local, main and default are run here)",
                r.table
            ));
        }
        let key = Object::Route(r.clone()).key();
        let pk = PrefixKey {
            table: r.table,
            dst: IpPrefix::new(r.dst.addr.masked(r.dst.len), r.dst.len),
        };
        if removed {
            self.routes.remove(&key);
            if let Some(s) = self.by_prefix.get_mut(&pk) {
                s.remove(&key);
                if s.is_empty() {
                    self.by_prefix.remove(&pk);
                }
            }
        } else {
            self.routes.insert(key.clone(), r.clone());
            self.by_prefix.entry(pk).or_default().insert(key);
        }
        if let Err(e) = self.reprogram(pk) {
            return Outcome::failed(e);
        }
        if removed {
            Outcome::Offloaded
        } else {
            self.route_outcome(r)
        }
    }

    /// Reprograms every prefix holding a route for which `f` is true.
    fn reprogram_where(&mut self, f: impl Fn(&Route) -> bool) {
        let pks: BTreeSet<PrefixKey> = self
            .by_prefix
            .iter()
            .filter(|(_, keys)| keys.iter().any(|k| self.routes.get(k).is_some_and(&f)))
            .map(|(pk, _)| *pk)
            .collect();
        for pk in pks {
            if let Err(e) = self.reprogram(pk) {
                self.log(LogLevel::Error, format!("reprogramming {}: {e}", pk.dst));
            }
        }
    }

    /// Reprograms one (table, prefix); a failure punts the family to the kernel until the prefix
    /// is programmed (or gone).
    fn reprogram(&mut self, pk: PrefixKey) -> Result<(), String> {
        let res = self.reprogram_inner(pk);
        let changed = match &res {
            Ok(()) => self.unprogrammed.remove(&pk),
            Err(e) => {
                let fresh = self.unprogrammed.insert(pk);
                if fresh {
                    self.log(
                        LogLevel::Error,
                        format!("cannot program {} (table {}): {e}; all {} traffic goes to the kernel until it is", pk.dst, pk.table, pk.dst.addr.family().name()),
                    );
                }
                fresh
            }
        };
        if changed {
            self.write_config()?;
        }
        res
    }

    /// Computes the data-path entry of one (table, prefix) from the routes there and writes it.
    fn reprogram_inner(&mut self, pk: PrefixKey) -> Result<(), String> {
        let keys: Vec<ObjectKey> = self
            .by_prefix
            .get(&pk)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let routes: Vec<&Route> = keys.iter().filter_map(|k| self.routes.get(k)).collect();
        let (bytes, len) = match pk.dst.addr {
            IpAddress::V4(b) => (addr16(&IpAddress::V4(b)).1, pk.dst.len),
            IpAddress::V6(b) => (b, pk.dst.len),
        };
        let v4 = matches!(pk.dst.addr, IpAddress::V4(_));
        if routes.is_empty() {
            if let Some(p) = self.programmed.remove(&pk) {
                let dp = self.dp()?;
                if v4 {
                    dp.set_route_v4(
                        pk.table,
                        [bytes[0], bytes[1], bytes[2], bytes[3]],
                        len,
                        None,
                    )
                } else {
                    dp.set_route_v6(pk.table, bytes, len, None)
                }
                .map_err(|e| e.to_string())?;
                dp.set_route_counter(p.counter_id, false)
                    .map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        // tos / source-specific routes at this prefix: the kernel decides (selectors we do not do).
        let special = routes.iter().any(|r| r.tos != 0 || r.src.len != 0);
        let best = routes
            .iter()
            .filter(|r| r.tos == 0 && r.src.len == 0)
            .min_by_key(|r| r.metric)
            .copied();
        let plan = match (special, best) {
            (false, Some(b)) => self.plan(b),
            _ => Plan::Pass,
        };
        let active = best.map(|b| Object::Route(b.clone()).key());
        // Gateways without a MAC yet: ask the host now rather than on the first packet.
        let mut ask = Vec::new();
        if let Plan::Forward(legs) = &plan {
            for (l, _) in legs {
                if l.flags & LEG_GATEWAY != 0 {
                    let gw = if l.family == 2 {
                        IpAddress::V4([l.gw[0], l.gw[1], l.gw[2], l.gw[3]])
                    } else {
                        IpAddress::V6(l.gw)
                    };
                    if !self.neighbour_valid(l.ifindex, &gw) {
                        ask.push((l.ifindex, gw));
                    }
                }
            }
        }
        let (counter_id, fresh) = match self.programmed.get(&pk) {
            Some(p) => (p.counter_id, false),
            None => {
                self.next_counter = self.next_counter.wrapping_add(1).max(1);
                (self.next_counter, true)
            }
        };
        let mut val = RouteVal::new(ACT_PASS, counter_id);
        match &plan {
            Plan::Forward(legs) => {
                val.action = ACT_FORWARD;
                val.set_legs(legs);
            }
            Plan::Pass => {}
            Plan::Drop => val.action = ACT_DROP,
        }
        let dp = self.dp()?;
        if fresh {
            dp.set_route_counter(counter_id, true)
                .map_err(|e| e.to_string())?;
        }
        if v4 {
            dp.set_route_v4(
                pk.table,
                [bytes[0], bytes[1], bytes[2], bytes[3]],
                len,
                Some(&val),
            )
        } else {
            dp.set_route_v6(pk.table, bytes, len, Some(&val))
        }
        .map_err(|e| e.to_string())?;
        self.programmed
            .insert(pk, Programmed { counter_id, active });
        for (i, a) in ask {
            self.asker.ask(i, a);
        }
        Ok(())
    }

    fn apply_one(&mut self, c: &Change) -> Outcome {
        if let Some(seen) = self.sync_seen.as_mut() {
            seen.insert(c.key());
        }
        match c.kind() {
            ObjectKind::Link => self.apply_link(c),
            ObjectKind::Neighbour => self.apply_neighbour(c),
            ObjectKind::Nexthop => self.apply_nexthop(c),
            ObjectKind::Route => self.apply_route(c),
            ObjectKind::Rule => self.apply_rule(c),
            ObjectKind::NfChain => self.apply_nf_chain(c),
            ObjectKind::Flow => self.apply_flow(c),
            _ => Outcome::Unsupported,
        }
    }

    /// The plugin over another data-path backend (the BPF one is built by [`Plugin::create`]):
    /// for tests of the plugin's logic without a kernel, and for embedding.
    pub fn with_backend(
        config: &str,
        host: HostHandle,
        backend: Box<dyn Backend>,
    ) -> Result<Self, String> {
        XdpRouter::build(Config::parse(config)?, host, backend)
    }

    fn build(cfg: Config, host: HostHandle, dp: Box<dyn Backend>) -> Result<Self, String> {
        let globs = cfg
            .ports
            .iter()
            .map(|g| {
                glob::Pattern::new(g)
                    .map_err(|e| format!("xdp-router config: bad port glob {g:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let asker = Asker::new(
            host.clone(),
            Duration::from_millis(cfg.resolve_interval_ms as u64),
        );
        let release_host = host.clone();
        let releaser = Arc::new(Releaser::new(move |k: &ObjectKey| {
            flow_api::release(&release_host, k)
        }));
        let mut p = XdpRouter {
            cfg,
            globs,
            host,
            dp: Some(dp),
            resolver: None,
            asker,
            links: HashMap::new(),
            owned: BTreeSet::new(),
            routes: HashMap::new(),
            by_prefix: HashMap::new(),
            programmed: BTreeMap::new(),
            nexthops: HashMap::new(),
            neighbours: HashMap::new(),
            rules: HashMap::new(),
            nf_chains: HashMap::new(),
            cfg_flags: 0,
            unprogrammed: BTreeSet::new(),
            next_counter: 0,
            sync_seen: None,
            flows: FlowTable::new(MAX_FLOWS),
            releaser,
            flow_events: None,
            flows_refused: 0,
        };
        p.write_config()?;
        Ok(p)
    }

    // ---- flows -------------------------------------------------------------------------------

    fn apply_flow(&mut self, change: &Change) -> Outcome {
        let Some((f, removed)) = flow_api::flow_of(change) else {
            return Outcome::Unsupported;
        };
        let key = Object::Flow(f.clone()).key();
        if removed {
            let id = self.flows.id_of(&key);
            let res = match self.dp.as_mut() {
                Some(dp) => self.flows.remove(&mut **dp, &key),
                None => Ok(false),
            };
            if let Some(id) = id {
                self.releaser.forget(id);
            }
            return match res {
                Ok(_) => Outcome::Offloaded,
                Err(e) => Outcome::failed(e.to_string()),
            };
        }
        let spec = match flow_api::spec_of(f) {
            Ok(s) => s,
            Err(e) => {
                self.flows_refused += 1;
                return Outcome::failed(e.to_string());
            }
        };
        if !self.zone_served(spec.zone) {
            self.flows_refused += 1;
            return Outcome::failed(format!(
                "conntrack zone {}: no port of this plugin is in it (its `zones` config maps port names to zones): the flow stays in the kernel",
                spec.zone
            ));
        }
        // An update that changes the tuples replaces the entries and starts the counters
        // again; one of other fields (status, mark) leaves them.
        let old_id = self.flows.id_of(&key);
        let Some(dp) = self.dp.as_mut() else {
            return Outcome::failed("data path is shut down");
        };
        match self.flows.install(&mut **dp, key, &spec) {
            Ok(written) => {
                if let (true, Some(id)) = (written, old_id) {
                    self.releaser.forget(id);
                }
                Outcome::Offloaded
            }
            Err(e) => {
                self.flows_refused += 1;
                Outcome::failed(e.to_string())
            }
        }
    }

    /// Whether packets of conntrack zone `zone` can arrive on a port: a zone `zones` gives
    /// some port, or 0 (the zone of the ports it does not list).
    fn zone_served(&self, zone: u16) -> bool {
        zone == 0 || self.cfg.zones.values().any(|v| *v == zone)
    }

    /// Offloaded flows whose FIN/RST the event thread missed (ring full) are released here.
    fn release_marked_flows(&self) {
        let Some(dp) = self.dp.as_ref() else {
            return;
        };
        for k in self.flows.handed_back(&**dp) {
            if let Some(id) = self.flows.id_of(&k) {
                self.releaser.release(id, &k);
            }
        }
    }

    /// Number of flows in the data path.
    pub fn offloaded_flows(&self) -> usize {
        self.flows.len()
    }

    /// Ifindexes with the program attached.
    pub fn attached_ports(&self) -> Vec<u32> {
        self.dp.as_ref().map(|d| d.attached()).unwrap_or_default()
    }

    /// Number of (table, prefix) entries programmed.
    pub fn programmed_prefixes(&self) -> usize {
        self.programmed.len()
    }
}

impl Plugin for XdpRouter {
    fn create(ctx: CreateContext) -> Result<Self, String> {
        let cfg = Config::parse(&ctx.config)?;
        // The namespace: the plugin's own `netns` key wins, else the one the host mirrors.
        let netns = ekho_xdp_common::ports_netns(cfg.netns.as_deref(), ctx.netns(), "xdp-router")?;
        let (dp, ring, flow_ring) =
            Dataplane::load(netns, cfg.xdp_mode).map_err(|e| e.to_string())?;
        let mut p = XdpRouter::build(cfg, ctx.host, Box::new(dp))?;
        p.resolver = Some(
            resolver::spawn(ring, p.asker.clone()).map_err(|e| format!("resolver thread: {e}"))?,
        );
        p.flow_events = Some(
            flows::spawn_events(flow_ring, p.flows.shared_ids(), p.releaser.clone())
                .map_err(|e| format!("flow events thread: {e}"))?,
        );
        Ok(p)
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::new()
            .kinds([
                ObjectKind::Link,
                ObjectKind::Nexthop,
                ObjectKind::Neighbour,
                ObjectKind::Route,
                ObjectKind::Rule,
                ObjectKind::NfChain,
                ObjectKind::Flow,
            ])
            .families([Family::INET, Family::INET6])
            // Flows: TCP and UDP, NAT (SNAT and DNAT, addresses and ports), as many as the
            // data path's FLOWS map holds.
            .flow_nat(true)
            .flow_protocols([flows::IPPROTO_TCP, flows::IPPROTO_UDP])
            .limit(ObjectKind::Flow, MAX_FLOWS as u64)
            .max_ecmp_width(MAX_LEGS as u32)
            // No route limit on purpose: a route the host refused would be invisible, and a
            // covering route could capture its traffic. A route the maps cannot hold (65536
            // (table, prefix) entries per family) fails here and punts its family instead.
            // A missing neighbour only means "pass to the kernel".
            .limit(ObjectKind::Neighbour, 65_536)
            .nexthop_objects(true)
            // Routes whose legs all use ports we do not own must still reach us (with the
            // host's `ports` set too): otherwise a covering route through an owned port (say,
            // the default) would forward traffic the kernel sends elsewhere.
            .routes_all_ports(true);
        // Deliberately all ports here: ownership (which ports get the program) is decided from
        // the plugin's own `ports`, or from the host's `[[plugins]] ports` when set, since the
        // host then narrows links to those.
        caps
    }

    fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
        changes.iter().map(|c| self.apply_one(c)).collect()
    }

    fn begin_sync(&mut self) {
        self.sync_seen = Some(HashSet::new());
        // Until the whole state (netfilter chains included) is known, the kernel forwards.
        if let Err(e) = self.write_config() {
            self.log(LogLevel::Warn, format!("punting during the sync: {e}"));
        }
    }

    fn end_sync(&mut self) {
        let Some(seen) = self.sync_seen.take() else {
            return;
        };
        // Sweep, dependents first.
        let mut stale: Vec<Object> = Vec::new();
        stale.extend(
            self.routes
                .iter()
                .filter(|(k, _)| !seen.contains(k))
                .map(|(_, r)| Object::Route(r.clone())),
        );
        stale.extend(
            self.rules
                .iter()
                .filter(|(k, _)| !seen.contains(k))
                .map(|(_, r)| Object::Rule(r.clone())),
        );
        // Flows are removed by key (the sweep needs no object beyond its key).
        let stale_flows: Vec<ObjectKey> = self
            .flows
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        if let Some(dp) = self.dp.as_mut() {
            for k in stale_flows {
                if let Some(id) = self.flows.id_of(&k) {
                    self.releaser.forget(id);
                }
                let _ = self.flows.remove(&mut **dp, &k);
            }
        }
        stale.extend(
            self.nf_chains
                .iter()
                .filter(|(k, _)| !seen.contains(k))
                .map(|(_, c)| Object::NfChain(c.clone())),
        );
        stale.extend(
            self.neighbours
                .iter()
                .filter(|(k, _)| !seen.contains(k))
                .map(|(_, n)| Object::Neighbour(n.clone())),
        );
        let mut nhs: Vec<&Nexthop> = self
            .nexthops
            .values()
            .filter(|n| !seen.contains(&ObjectKey::Nexthop { id: n.id }))
            .collect();
        nhs.sort_by_key(|n| !n.is_group());
        stale.extend(nhs.into_iter().map(|n| Object::Nexthop(n.clone())));
        stale.extend(
            self.links
                .values()
                .filter(|l| !seen.contains(&ObjectKey::Link { ifindex: l.ifindex }))
                .map(|l| Object::Link(l.clone())),
        );
        for o in stale {
            self.apply_one(&Change::Remove(o));
        }
        if let Err(e) = self.write_config() {
            self.log(
                LogLevel::Warn,
                format!("data path configuration after the sync: {e}"),
            );
        }
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default();
        let Some(dp) = self.dp.as_ref() else {
            s.text = "shut down".into();
            return s;
        };
        for &i in &self.owned {
            let name = self
                .links
                .get(&i)
                .map(|l| l.ifname.to_string())
                .unwrap_or_else(|| i.to_string());
            let c = dp.port_counter(i);
            let kind = format!("port:{name}");
            s = s
                .counter(&kind, "forwarded", c.forwarded)
                .counter(&kind, "passed", c.passed)
                .counter(&kind, "dropped", c.dropped)
                .counter(&kind, "forwarded_bytes", c.forwarded_bytes);
        }
        // Every route counter for tables of a reasonable size; past that, only routes with hits.
        let all_routes = self.programmed.len() <= 1000;
        for (pk, p) in &self.programmed {
            let c = dp.route_counter(p.counter_id);
            if !all_routes && c.packets == 0 {
                continue;
            }
            let kind = if pk.table == TABLE_MAIN {
                format!("route:{}", pk.dst)
            } else {
                format!(
                    "route:{}@{}",
                    pk.dst,
                    ekho_plugin_api::object::net::table_name(pk.table)
                )
            };
            s = s
                .counter(&kind, "packets", c.packets)
                .counter(&kind, "bytes", c.bytes);
        }
        for (n, v) in dp.reasons() {
            s = s.counter("xdp", n, v);
        }
        let acting = self
            .nf_chains
            .values()
            .filter(|c| c.acts_on_forwarding())
            .count();
        s = s
            .counter("flows", "offloaded", self.flows.len() as u64)
            .counter("flows", "refused", self.flows_refused)
            .counter(
                "flows",
                "released",
                self.releaser.released.load(Ordering::Relaxed),
            )
            .counter(
                "flows",
                "release_failed",
                self.releaser.release_failed.load(Ordering::Relaxed),
            )
            .counter(
                "flows",
                "release_moot",
                self.releaser.release_moot.load(Ordering::Relaxed),
            );
        s = s
            .counter("netfilter", "chains", self.nf_chains.len() as u64)
            .counter("netfilter", "chains_acting", acting as u64);
        s = s
            .counter(
                "xdp",
                "resolve_requests",
                self.asker.sent.load(std::sync::atomic::Ordering::Relaxed),
            )
            .counter(
                "xdp",
                "resolve_refused",
                self.asker
                    .refused
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
        let active = self
            .programmed
            .values()
            .filter(|p| p.active.is_some())
            .count();
        s.text = format!(
            "{} ports attached, {} prefixes programmed ({} with an active route), {} neighbours, {} nexthop objects{}",
            self.owned.len(),
            self.programmed.len(),
            active,
            self.neighbours.values().filter(|n| n.is_valid()).count(),
            self.nexthops.len(),
            if self.nf_punt_flags() != 0 {
                ", netfilter chains on the forwarding path: family punted to the kernel"
            } else if self.cfg_flags != 0 {
                ", policy rules or unprogrammed prefixes: family punted to the kernel"
            } else {
                ""
            }
        )
        .into();
        s
    }

    fn object_stats(&self, kind: ObjectKind) -> Vec<ObjectStats> {
        if kind != ObjectKind::Flow {
            return Vec::new();
        }
        let Some(dp) = self.dp.as_ref() else {
            return Vec::new();
        };
        // The host asks about once a second: a good time to release what the event thread
        // could not (its ring full).
        self.release_marked_flows();
        self.flows
            .keys()
            .filter_map(|k| {
                let c = self.flows.counters(&**dp, k)?;
                Some(flow_api::object_stats(k.clone(), &c))
            })
            .collect()
    }

    fn shutdown(&mut self) {
        if let Some(mut r) = self.resolver.take() {
            r.stop();
        }
        if let Some(mut e) = self.flow_events.take() {
            e.stop();
        }
        self.flows.clear();
        if let Some(mut dp) = self.dp.take() {
            for (i, e) in dp.detach_all() {
                self.log(LogLevel::Warn, format!("detach XDP from ifindex {i}: {e}"));
            }
            drop(dp);
            self.log(LogLevel::Info, "XDP programs detached, maps released");
        }
        self.owned.clear();
        self.programmed.clear();
    }
}

impl Drop for XdpRouter {
    fn drop(&mut self) {
        if let Some(mut r) = self.resolver.take() {
            r.stop();
        }
        if let Some(mut e) = self.flow_events.take() {
            e.stop();
        }
        self.dp.take();
    }
}

ekho_plugin_api::declare_plugin!(XdpRouter, name = "xdp-router");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses() {
        let c = Config::parse("netns = \"/run/netns/r\"\nports = [\"r-*\"]\nxdp_mode = \"skb\"")
            .unwrap();
        assert_eq!(c.netns.as_deref(), Some("/run/netns/r"));
        assert_eq!(c.ports, vec!["r-*".to_string()]);
        assert_eq!(c.xdp_mode, XdpMode::Skb);
        assert_eq!(Config::parse("").unwrap().resolve_interval_ms, 1000);
        assert!(Config::parse("bogus = 1").is_err());
        assert!(Config::parse("xdp_mode = \"hw\"").is_err());
        assert!(Config::parse("ports = [\"[\"]").is_err());
    }
}
