//! # ekho-flower-xdp: tc flower filters run in XDP
//!
//! A reference ekho backend for the tc kinds of plugin API 1.3. It owns Ethernet ports and runs
//! the flower filters of their ingress hook (a device's, or a shared block bound only to owned
//! ports) in an XDP program attached to them, in tc's order: chain 0 first, within a chain by
//! prio, within a prio by mask as flower tries them, the first match runs its actions,
//! `goto chain N` continues in chain N, `continue` with the next filter, `jump N` resumes at
//! action N (tc restarts the list and skips N).
//!
//! ## What runs in XDP (`bpf/flower_xdp.bpf.c`)
//! - Keys: `protocol`, `eth_type`, `dst_mac`/`src_mac` (masked), `vlan_id`, `vlan_prio`,
//!   `vlan_ethtype`, `ip_proto`, `dst_ip`/`src_ip` (IPv4 and IPv6, any mask), `dst_port`/
//!   `src_port` (masked) and their ranges, `tcp_flags`, `ip_tos`, `ip_ttl`, ICMP `type`/`code`,
//!   `ip_flags` (`frag`, `firstfrag`). The frame is dissected once as flower's dissector does
//!   (a fragment has no ports, DEI is not part of the VLAN key).
//! - Actions: `gact` (pass, drop, pipe, continue, goto chain, forward jumps), `mirred egress
//!   redirect` to an owned port (XDP_REDIRECT through a devmap), `vlan push|pop|modify` (only
//!   where every path after it ends in that redirect or a drop), `police` (rate and burst, packet
//!   rate and burst, mtu; conform and exceed controls).
//! - police: one token bucket per police action (tc's index: filters sharing `action police
//!   index 5` share it), under a `bpf_spin_lock`, with act_police's arithmetic (nanoseconds of
//!   credit, psched_ratecfg_precompute's mult and shift): not rate/N per CPU but the rate itself,
//!   as the kernel enforces it. The burst arrives in bytes (the API converts the kernel's psched
//!   ticks) and is converted back at the rate: it may differ from the kernel's by the rounding of
//!   one conversion (less than one tick, 64 ns of credit).
//! - Counters per filter (`object_stats`, `ekho dump filters --stats`): packets and bytes
//!   matched (bytes as tc counts them at ingress: without the Ethernet header and the outer
//!   VLAN tag), drops, lastused.
//!
//! ## What stays with the kernel
//! The host hands the plugin only the filters its [`compile::tc_capabilities`] can run whole
//! (the others are reported `unsupported` with the reason by the host). Of those, the plugin
//! answers `unsupported` itself, with the reason ([`Outcome::unsupported`], API 1.4: shown in
//! `ekho dump filters` and `ekho status`, and in its log), for what the capabilities cannot
//! express: a vlan rewrite whose frame would go on to the kernel (its tc would classify the
//! rewritten frame again), a backwards jump, gact's random verdict, police peakrate or avrate,
//! a redirect to a port it does not own, more than 8 actions.
//!
//! Only a drop and a redirect end a frame in XDP. Every other result (no filter matched, pass,
//! reclassify, trap, a list ending in pipe) passes the frame to the kernel untouched, where tc
//! classifies it again in software (the host never sets `skip_sw`): the result is the one tc
//! gives, and a passing filter is counted twice, by the plugin and by tc. Frames the program
//! does not dissect (two or more VLAN tags, IPv6 extension headers, malformed headers) are
//! passed without looking at any filter.
//!
//! Not exact, and why:
//! - A filter the plugin holds but does not run (refused by its compiler, a redirect to a port
//!   it gave up) keeps its place: a trap rule at its (chain, prio, handle) hands every frame it
//!   may match to the kernel untouched. A filter the host does not hand over (another
//!   classifier, an action not in the capabilities) is not seen here, and the host hands over
//!   no filter after it in its chain either (`after pref 1 chain 0, which is not offloaded`),
//!   nor one of its pref (`beside pref 1 chain 0, ...`): those stay with the kernel, so the
//!   first match is tc's.
//! - A redirect in XDP bypasses the target port's egress qdisc and egress tc filters.
//! - A NIC with rx-vlan offload on (`ethtool -k`: `rx-vlan-offload`, `rx-vlan-stag-hw-parse`)
//!   takes the tag out before XDP: a tagged frame looks untagged here, so a `protocol ip` filter
//!   matches tagged traffic tc would not and vlan keys never match. The plugin reads the
//!   features when it takes a port (and on each later link message), warns, and counts such
//!   ports (`ports rx_vlan_offload`); it does not refuse filters for it. Turn it off:
//!   `ethtool -K DEV rxvlan off rx-vlan-stag-hw-parse off`. Not read on veth, which has the
//!   feature on by default but strips nothing from the frame's bytes; there a tag the sender
//!   carried beside the frame (tx-vlan offload on at the peer) is not seen: turn `txvlan` off
//!   on a sender whose tags the filters match.
//! - Within one prio, flower tries masks in the order they were first made, not by handle
//!   (see `table::PrioOrder`): the plugin keeps the order it sees filters made in. After a
//!   replay (handle order) that order is unknown: filters of a replayed prio that may match
//!   one frame under different masks are refused (the kernel runs them), the others run.
//! - vlan modify without a priority keeps the frame's PCP in the kernel, with `priority 0` sets
//!   0; the API's `priority` is 0 for both, so a vlan modify with priority 0 is refused
//!   (unsupported: the kernel runs it).
//!
//! ## Configuration (`[plugins.config]`)
//! ```toml
//! netns = "/run/netns/r"   # namespace of the ports; default: the one the host mirrors
//! ports = ["eth*"]         # globs of ports to own; default: every Ethernet port received
//! xdp_mode = "auto"        # auto | native | skb
//! ```
//!
//! ## Stats
//! `xdp` per reason (not_owned, unparsed, no_match, passed, dropped, redirected,
//! redirect_failed, steps), `filters` running / unsupported, `ports` owned and
//! rx_vlan_offload (owned ports that strip VLAN tags before XDP: see above).

pub mod compile;
pub mod dataplane;
pub mod ethtool;
pub mod maps;
pub mod table;

/// The plugin API's tc types (1.3), which the compiler takes as they are.
pub use ekho_plugin_api::object::tc;

use dataplane::{Backend, Dataplane, XdpMode};
use ekho_plugin_api::prelude::*;
use std::collections::{HashMap, HashSet};
use table::{FilterId, Table, Taken};

/// The plugin's own configuration table.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Network namespace of the ports (a path, `/run/netns/r`). Default: the one the host
    /// mirrors.
    #[serde(default)]
    pub netns: Option<String>,
    /// Globs of port names to own (default: every Ethernet port the host gives).
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| format!("flower-xdp config: {e}"))?;
        for g in &c.ports {
            glob::Pattern::new(g)
                .map_err(|e| format!("flower-xdp config: bad port glob {g:?}: {e}"))?;
        }
        Ok(c)
    }
}

/// The plugin.
pub struct FlowerXdp {
    cfg: Config,
    globs: Vec<glob::Pattern>,
    host: HostHandle,
    dp: Option<Box<dyn Backend>>,
    table: Table,
    links: HashMap<u32, Link>,
    sync_seen: Option<HashSet<FilterId>>,
    /// Owned ports that strip VLAN tags before XDP (see the crate docs).
    rx_vlan: HashSet<u32>,
}

impl FlowerXdp {
    /// The plugin on a given data path (the real one in `create`; tests and the benchmark pass
    /// their own [`Dataplane`]).
    pub fn build(cfg: Config, host: HostHandle, dp: Box<dyn Backend>) -> Result<FlowerXdp, String> {
        let globs = cfg
            .ports
            .iter()
            .map(|g| glob::Pattern::new(g).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(FlowerXdp {
            cfg,
            globs,
            host,
            dp: Some(dp),
            table: Table::new(),
            links: HashMap::new(),
            sync_seen: None,
            rx_vlan: HashSet::new(),
        })
    }

    fn log(&self, level: LogLevel, msg: impl AsRef<str>) {
        self.host.log(level, msg.as_ref().into());
    }

    fn wants_port(&self, l: &Link) -> bool {
        l.link_type == 1
            && l.address.as_slice().len() == 6
            && (self.globs.is_empty() || self.globs.iter().any(|g| g.matches(l.ifname.as_str())))
    }

    fn name(&self, ifindex: u32) -> String {
        self.links
            .get(&ifindex)
            .map(|l| l.ifname.to_string())
            .unwrap_or_else(|| format!("if{ifindex}"))
    }

    fn apply_link(&mut self, l: &Link, removed: bool) -> Outcome {
        let ifindex = l.ifindex;
        let want = !removed && self.wants_port(l);
        let was = self.table.owned().contains(&ifindex);
        if removed {
            self.links.remove(&ifindex);
        } else {
            self.links.insert(ifindex, l.clone());
        }
        let Some(dp) = self.dp.as_deref_mut() else {
            return Outcome::failed("data path is shut down");
        };
        let res: Result<Option<String>, String> = match (want, was) {
            (true, false) => dp
                .attach(ifindex)
                .map_err(|e| format!("attach XDP to {}: {e}", l.ifname))
                .and_then(|note| {
                    self.table
                        .set_owned(dp, ifindex, true)
                        .map(|_| note)
                        .map_err(|e| e.to_string())
                }),
            (false, true) => self
                .table
                .set_owned(dp, ifindex, false)
                .map_err(|e| e.to_string())
                .and_then(|_| dp.detach(ifindex).map_err(|e| e.to_string()))
                .map(|_| None),
            _ => Ok(None),
        };
        if want && res.is_ok() && l.kind.as_str() != "veth" {
            // On every add or update of an owned port: `ethtool -K` sends no link message,
            // but a later one (up, down, mtu) reads the features again. Not on veth: it has
            // the feature on but takes nothing out of the frame's bytes (see the crate docs).
            match dp.rx_vlan_offload(ifindex) {
                Ok(true) => {
                    if self.rx_vlan.insert(ifindex) {
                        let msg = format!(
                            "{}: rx-vlan-offload is on: VLAN tags are taken out before XDP, so a tagged frame looks untagged to the filters run here (a `protocol ip` filter matches tagged traffic tc would not, vlan keys never match); turn it off: `ethtool -K {} rxvlan off rx-vlan-stag-hw-parse off`",
                            l.ifname, l.ifname
                        );
                        self.host.log(LogLevel::Warn, msg.as_str().into());
                    }
                }
                Ok(false) => {
                    self.rx_vlan.remove(&ifindex);
                }
                Err(e) => {
                    let msg = format!("{}: rx-vlan offload unknown: {e}", l.ifname);
                    self.host.log(LogLevel::Warn, msg.as_str().into());
                }
            }
        } else if !want || l.kind.as_str() == "veth" {
            self.rx_vlan.remove(&ifindex);
        }
        match res {
            Err(e) => Outcome::failed(e),
            Ok(note) => {
                if let Some(n) = note {
                    self.log(LogLevel::Warn, format!("{}: {n}", l.ifname));
                }
                if want && !was {
                    self.log(
                        LogLevel::Info,
                        format!("attached XDP to {} (ifindex {ifindex})", l.ifname),
                    );
                    if l.kind.as_str() == "veth" {
                        // A mirred redirect run here to a veth port is such a frame.
                        self.log(LogLevel::Info, ekho_xdp_common::veth_note(&l.ifname));
                    }
                }
                if want || (removed && was) {
                    Outcome::Offloaded
                } else {
                    Outcome::Unsupported
                }
            }
        }
    }

    fn apply_filter(&mut self, f: &TcFilter, removed: bool) -> Outcome {
        let out = self.apply_filter_inner(f, removed);
        for (id, why) in self.table.take_order_changes() {
            let dev = match id.target {
                TcTarget::Dev(d) => self.name(d),
                TcTarget::Block(b) => format!("block {b}"),
            };
            let msg = match why {
                Some(w) => format!(
                    "filter {dev} chain {} pref {} handle {:#x}: no longer run here ({w}); the kernel runs it",
                    id.chain, id.prio, id.handle
                ),
                None => format!(
                    "filter {dev} chain {} pref {} handle {:#x}: runs here again (its order decides nothing now)",
                    id.chain, id.prio, id.handle
                ),
            };
            self.log(LogLevel::Info, msg);
        }
        out
    }

    fn apply_filter_inner(&mut self, f: &TcFilter, removed: bool) -> Outcome {
        let id = FilterId::of(f);
        if let Some(seen) = self.sync_seen.as_mut() {
            seen.insert(id);
        }
        let Some(dp) = self.dp.as_deref_mut() else {
            return Outcome::failed("data path is shut down");
        };
        if removed {
            return match self.table.remove(dp, id) {
                Ok(()) => Outcome::Offloaded,
                Err(e) => Outcome::failed(e.to_string()),
            };
        }
        match self.table.upsert(dp, f.clone()) {
            Ok(Taken::Running) => Outcome::Offloaded,
            Ok(Taken::Unsupported(why)) => {
                let dev = f
                    .devices()
                    .first()
                    .map(|d| self.name(*d))
                    .unwrap_or_default();
                self.log(
                    LogLevel::Info,
                    format!(
                        "filter {dev} chain {} pref {} handle {:#x}: unsupported ({why}); the kernel runs it",
                        f.chain, f.prio, f.handle
                    ),
                );
                // The reason is shown beside the outcome (`ekho dump filters`, `ekho status`).
                Outcome::unsupported(why)
            }
            Err(e) => Outcome::failed(e.to_string()),
        }
    }
}

impl Plugin for FlowerXdp {
    fn create(ctx: CreateContext) -> Result<Self, String> {
        let cfg = Config::parse(&ctx.config)?;
        let netns = ekho_xdp_common::ports_netns(cfg.netns.as_deref(), ctx.netns(), "flower-xdp")?;
        let dp = Dataplane::load(netns, cfg.xdp_mode).map_err(|e| e.to_string())?;
        FlowerXdp::build(cfg, ctx.host, Box::new(dp))
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::new()
            .kinds([ObjectKind::Link, ObjectKind::TcFilter])
            .tc(compile::tc_capabilities())
            .limit(ObjectKind::TcFilter, maps::MAX_FILTERS as u64);
        if self.cfg.ports.is_empty() {
            caps
        } else {
            caps.port_names(self.cfg.ports.iter().cloned())
        }
    }

    fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
        self.table.begin_batch();
        let out = changes
            .iter()
            .map(|c| match c {
                Change::Add(Object::Link(l))
                | Change::Update {
                    new: Object::Link(l),
                    ..
                } => self.apply_link(l, false),
                Change::Remove(Object::Link(l)) => self.apply_link(l, true),
                Change::Add(Object::TcFilter(f))
                | Change::Update {
                    new: Object::TcFilter(f),
                    ..
                } => self.apply_filter(f, false),
                Change::Remove(Object::TcFilter(f)) => self.apply_filter(f, true),
                _ => Outcome::Unsupported,
            })
            .collect();
        self.table.end_batch();
        out
    }

    fn begin_sync(&mut self) {
        self.sync_seen = Some(HashSet::new());
        self.table.begin_replay();
    }

    fn end_sync(&mut self) {
        self.table.end_replay();
        let Some(seen) = self.sync_seen.take() else {
            return;
        };
        let stale: Vec<FilterId> = self
            .table
            .filters()
            .map(|(f, _, _)| FilterId::of(f))
            .filter(|id| !seen.contains(id))
            .collect();
        if let Some(dp) = self.dp.as_deref_mut() {
            for id in stale {
                if let Err(e) = self.table.remove(dp, id) {
                    let msg = format!("removing a stale filter: {e}");
                    self.host.log(LogLevel::Warn, msg.as_str().into());
                }
            }
        }
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default();
        let Some(dp) = self.dp.as_deref() else {
            s.text = "shut down".into();
            return s;
        };
        for (name, v) in dp.reasons() {
            s = s.counter("xdp", name, v);
        }
        let (mut running, mut unsupported) = (0, 0);
        for (_, _, r) in self.table.filters() {
            if r {
                running += 1;
            } else {
                unsupported += 1;
            }
        }
        s.counter("filters", "running", running)
            .counter("filters", "unsupported", unsupported)
            .counter("ports", "owned", self.table.owned().len() as u64)
            .counter("ports", "rx_vlan_offload", self.rx_vlan.len() as u64)
    }

    fn object_stats(&self, kind: ObjectKind) -> Vec<ObjectStats> {
        let Some(dp) = self.dp.as_deref() else {
            return Vec::new();
        };
        if kind != ObjectKind::TcFilter {
            return Vec::new();
        }
        self.table
            .filters()
            .filter(|(_, _, running)| *running)
            .map(|(f, sid, _)| {
                let c = dp.stats(sid);
                ObjectStats::tc_filter(
                    f.key(),
                    ObjectCounters {
                        packets: c.packets,
                        bytes: c.bytes,
                        drops: c.drops,
                        lastused: c.lastused,
                    },
                )
            })
            .collect()
    }

    fn shutdown(&mut self) {
        if let Some(mut dp) = self.dp.take() {
            for (i, e) in dp.detach_all() {
                self.log(LogLevel::Warn, format!("detach XDP from ifindex {i}: {e}"));
            }
            drop(dp);
            self.log(LogLevel::Info, "XDP programs detached, maps released");
        }
        self.table = Table::new();
    }
}

ekho_plugin_api::declare_plugin!(FlowerXdp, name = "flower-xdp");
