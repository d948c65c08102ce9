//! The daemon's conntrack flows: the conntrack source of the mirrored netns (when conntrack is
//! there: its absence is a status line, not an error), its status and counters, and the JSON
//! form of its entries (`ekho dump flows`) in conntrack's own wording: the `conntrack -L` field
//! names (`src`, `dst`, `sport`, `dport`, `packets`, `bytes`, `type`, `code`, `id`, `mark`,
//! `zone`, `use`, the flags `UNREPLIED`, `ASSURED`, `OFFLOAD`), TCP states as conntrack prints
//! them.

pub mod policy;

use crate::config::FlowsConfig;
use ekho_mirror::conntrack::source::{Config as SourceConfig, Conntrack, Observer, Requests};
use ekho_mirror::conntrack::{Entry, Table};
use ekho_mirror::Mirror;
use ekho_plugin_api::{ObjectKey, ObjectStats};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default `[flows] limit`: the most conntrack entries mirrored (about 225 bytes each, so about
/// 15 MiB at the limit); additions past it are refused and counted.
pub const DEFAULT_LIMIT: usize = 65_536;
/// Default `[flows] rcvbuf`: the ctnetlink event socket's receive buffer, bytes.
pub const DEFAULT_RCVBUF: usize = 32 << 20;
/// Default `[flows] refresh_s`: the table is re-dumped and reconciled this often. Entries
/// created before the daemon listened send no events (`nf_conntrack_events = 2`, the kernel's
/// default), and counters and timeouts change with none: a dump is how they are seen.
pub const DEFAULT_REFRESH_S: u64 = 10;
/// How long start-up waits for the conntrack source's first dump before going on without it
/// (it keeps syncing; `ekho status` says so).
const FIRST_DUMP_WAIT: Duration = Duration::from_secs(5);

/// The conntrack source as the daemon holds it.
pub enum Flows {
    /// `[flows] enabled = false`.
    Disabled,
    /// conntrack cannot be mirrored in this netns (why).
    Unavailable(String),
    /// Running (or failed later: [`Conntrack::failure`]).
    Running {
        source: Conntrack,
        limit: usize,
        /// `[[flows.offload]]`.
        rules: Vec<policy::Rule>,
        /// Entries handed back by a plugin (`Request::ReleaseFlow`), by their flow's key, with
        /// their conntrack id: not offered again while that entry lives.
        released: Released,
        /// Where the candidates go.
        mirror: Mirror,
        /// The timeouts the keep-alive sets, as last read from `sysctls` (shared with the
        /// observer, whose liberal mark of a TCP entry is a keep-alive too).
        timeouts: Arc<Mutex<Timeouts>>,
        /// Where they are read from.
        sysctls: TimeoutSysctls,
    },
}

/// The timeouts the kernel gives an entry on each packet, read from the mirrored netns's
/// sysctls ([`TimeoutSysctls`], each keep-alive): the keep-alive sets what the kernel would have
/// set had it seen the plugin's packets, so once they stop the entry expires as it would in the
/// kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `nf_conntrack_tcp_timeout_established`.
    pub tcp: u32,
    /// `nf_conntrack_udp_timeout_stream` (an assured UDP entry's).
    pub udp: u32,
    /// `nf_conntrack_generic_timeout`.
    pub other: u32,
}

impl Default for Timeouts {
    /// The kernel's defaults.
    fn default() -> Timeouts {
        Timeouts {
            tcp: 432_000,
            udp: 120,
            other: 600,
        }
    }
}

/// The sysctls the [`Timeouts`] come from, opened once in the mirrored netns: an open file of
/// `/proc/sys/net` stays the netns's it was opened in, so they are read again, each keep-alive
/// (once a second), from the daemon's own thread. A change (`sysctl -w` in the netns) is
/// followed within about a second; there is no event for one.
pub struct TimeoutSysctls {
    files: [Option<std::fs::File>; 3],
}

impl TimeoutSysctls {
    /// `/proc/sys/net/netfilter/` names, in [`Timeouts`]' order: tcp, udp, other.
    const NAMES: [&'static str; 3] = [
        "nf_conntrack_tcp_timeout_established",
        "nf_conntrack_udp_timeout_stream",
        "nf_conntrack_generic_timeout",
    ];

    /// Opens them in `netns` (what cannot be opened reads as the kernel's default).
    pub fn open(netns: Option<PathBuf>) -> TimeoutSysctls {
        let open = || TimeoutSysctls {
            files: Self::NAMES.map(|n| {
                let path = format!("/proc/sys/net/netfilter/{n}");
                std::fs::File::open(&path)
                    .map_err(|e| tracing::warn!("{path}: {e} (the kernel's default used)"))
                    .ok()
            }),
        };
        ekho_mirror::source::run_in_netns(netns, open).unwrap_or_else(|e| {
            tracing::warn!("conntrack timeouts not read (kernel defaults used): {e}");
            TimeoutSysctls {
                files: [None, None, None],
            }
        })
    }

    /// The timeouts now (the kernel's defaults for what cannot be read).
    pub fn read(&self) -> Timeouts {
        use std::os::unix::fs::FileExt;
        let get = |i: usize| -> Option<u32> {
            let mut buf = [0u8; 32];
            let n = self.files[i].as_ref()?.read_at(&mut buf, 0).ok()?;
            std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
        };
        let d = Timeouts::default();
        Timeouts {
            tcp: get(0).unwrap_or(d.tcp),
            udp: get(1).unwrap_or(d.udp),
            other: get(2).unwrap_or(d.other),
        }
    }
}

impl Timeouts {
    fn of(&self, protocol: u8) -> u32 {
        match protocol {
            6 => self.tcp,
            17 | 136 => self.udp,
            _ => self.other,
        }
    }
}

/// The keep-alive's memory: each flow's latest `lastused` over the plugins, as last read.
#[derive(Default)]
pub struct KeepAlive {
    last: HashMap<ObjectKey, u64>,
}

/// The plugins' per-flow counters as last read: (plugin name, its stats).
pub type PluginFlowStats = Vec<(String, Arc<Vec<ObjectStats>>)>;

/// Entries handed back, by their flow's key, with the id of the entry handed back.
type Released = Arc<Mutex<HashMap<ObjectKey, u32>>>;

/// What the conntrack source tells of each batch: the candidates among the touched entries go
/// to the mirror as flows, the others (gone, no longer candidates, handed back) leave it. A TCP
/// candidate offered for the first time gets a keep-alive first, sent and acknowledged before
/// the flow goes to the mirror, hence before any plugin has it: it marks the entry's window
/// tracking liberal (as the kernel's flowtable does on offload), so the packets the kernel sees
/// again after the offload (the FIN handed back) are not INVALID. One the kernel refused (the
/// entry gone meanwhile) is not offered.
fn observer(
    rules: Vec<policy::Rule>,
    released: Released,
    mirror: Mirror,
    timeouts: Arc<Mutex<Timeouts>>,
) -> Observer {
    // The TCP entries offered so far: key -> conntrack id (a new entry of the key is offered
    // anew); by key, so that a deletion is one lookup, not a scan (a flush deletes them all).
    let mut offered: HashMap<ObjectKey, u32> = HashMap::new();
    Box::new(
        move |t: &Table, keys: Vec<ObjectKey>, req: &mut Requests<'_>| {
            let p = policy::Policy { rules: &rules };
            let mut rel = released.lock().unwrap();
            let (mut put, mut del) = (Vec::new(), Vec::new());
            // TCP flows offered for the first time, held back until marked liberal.
            let (mut liberal, mut new_tcp) = (Vec::new(), Vec::new());
            let mut seen = HashSet::with_capacity(keys.len());
            for k in keys {
                if seen.contains(&k) {
                    continue;
                }
                match t.get(&k) {
                    Some(e) => {
                        let id = e.flow.id;
                        // A new entry of a tuple handed back is offered as any other.
                        if rel.get(&k).is_some_and(|held| *held != id) {
                            rel.remove(&k);
                        }
                        if p.candidate(e) && !rel.contains_key(&k) {
                            if e.protocol() == 6 && offered.get(&k) != Some(&id) {
                                liberal.push(ekho_mirror::conntrack::source::KeepAlive {
                                    key: k.clone(),
                                    timeout_s: timeouts.lock().unwrap().of(6),
                                });
                                new_tcp.push((e.flow.clone(), id));
                            } else {
                                put.push(e.flow.clone());
                            }
                        } else {
                            del.push(k.clone());
                        }
                    }
                    None => {
                        rel.remove(&k);
                        offered.remove(&k);
                        del.push(k.clone());
                    }
                }
                seen.insert(k);
            }
            if !liberal.is_empty() {
                let done = req.keep_alive(&liberal);
                for ((flow, id), ok) in new_tcp.into_iter().zip(done) {
                    let k = ekho_mirror::conntrack::key(&flow);
                    if ok {
                        offered.insert(k, id);
                        put.push(flow);
                    } else {
                        // Gone meanwhile (its DESTROY follows) or refused: not offered unmarked;
                        // a later event of the entry tries again.
                        offered.remove(&k);
                        del.push(k);
                    }
                }
            }
            mirror.update_flows(put, del);
        },
    )
}

impl Flows {
    /// Starts the source in `netns` by `cfg`, its offload candidates kept in `mirror` as flows;
    /// waits a little for its first dump, so that a netns without ctnetlink says so at once.
    pub fn start(cfg: &FlowsConfig, netns: Option<PathBuf>, mirror: &Mirror) -> Flows {
        if !cfg.enabled.unwrap_or(true) {
            return Flows::Disabled;
        }
        let limit = cfg.limit.unwrap_or(DEFAULT_LIMIT);
        let released = Released::default();
        // The kernel's defaults until the sysctls are open (below).
        let timeouts = Arc::new(Mutex::new(Timeouts::default()));
        let obs = observer(
            cfg.offload.clone(),
            released.clone(),
            mirror.clone(),
            timeouts.clone(),
        );
        let source = match Conntrack::spawn_observed(
            SourceConfig {
                netns: netns.clone(),
                rcvbuf: cfg.rcvbuf.unwrap_or(DEFAULT_RCVBUF),
                limit,
                refresh: match cfg.refresh_s.unwrap_or(DEFAULT_REFRESH_S) {
                    0 => None,
                    s => Some(Duration::from_secs(s)),
                },
            },
            Some(obs),
        ) {
            Ok(s) => s,
            Err(e) => return Flows::Unavailable(unavailable(&e.to_string(), e.errno())),
        };
        let t0 = Instant::now();
        while !source.synced() && !source.finished() && t0.elapsed() < FIRST_DUMP_WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let (true, Some(why)) = (source.finished(), source.failure()) {
            let why = unavailable(&why, source.failure_errno());
            tracing::info!("conntrack flows not mirrored: {why}");
            return Flows::Unavailable(why);
        }
        // Opened once the source has its socket: the conntrack sysctls exist only once
        // nf_conntrack is loaded, which a ctnetlink socket does where it is a module (opened
        // before, they were missing for good and the netns's own timeouts never followed).
        let sysctls = TimeoutSysctls::open(netns);
        *timeouts.lock().unwrap() = sysctls.read();
        tracing::info!(
            flows = source.table().stats().flows,
            synced = source.synced(),
            "conntrack mirrored"
        );
        Flows::Running {
            source,
            limit,
            rules: cfg.offload.clone(),
            released,
            mirror: mirror.clone(),
            timeouts,
            sysctls,
        }
    }

    /// The keep-alive, once a second: every flow whose `lastused` advanced in some plugin
    /// since the last reading has its conntrack timeout set to what the kernel would set
    /// ([`Timeouts`]); a flow no plugin reports active is left to the kernel's timeout. Only
    /// entries still candidates are refreshed: one that just left `ESTABLISHED` (a FIN the
    /// plugin passed) must not be given an established flow's timeout. Returns how many were
    /// refreshed.
    pub fn keep_alive(&self, stats: &PluginFlowStats, ka: &mut KeepAlive) -> usize {
        let Flows::Running {
            source,
            timeouts,
            sysctls,
            rules,
            released,
            ..
        } = self
        else {
            return 0;
        };
        // Read again each time: the operator may have changed them.
        let now = sysctls.read();
        *timeouts.lock().unwrap() = now;
        let mut latest: HashMap<ObjectKey, u64> = HashMap::new();
        for (_, v) in stats {
            for s in v.iter() {
                let e = latest.entry(s.key.clone()).or_default();
                *e = (*e).max(s.lastused());
            }
        }
        let mut reqs = Vec::new();
        let p = policy::Policy { rules };
        let t = source.table();
        let rel = released.lock().unwrap();
        for (k, &lu) in &latest {
            let Some(e) = t.get(k) else {
                continue;
            };
            if p.candidate(e) && !rel.contains_key(k) && lu > ka.last.get(k).copied().unwrap_or(0) {
                reqs.push(ekho_mirror::conntrack::source::KeepAlive {
                    key: k.clone(),
                    timeout_s: now.of(e.protocol()),
                });
            }
        }
        drop((rel, t));
        ka.last = latest;
        if !reqs.is_empty() {
            source.keep_alive(&reqs);
        }
        reqs.len()
    }

    /// A plugin hands the flow `key` back to the kernel (`Request::ReleaseFlow`): it leaves
    /// every plugin and is not offered again while this conntrack entry lives. `Err` says why
    /// not (not a flow key, no such entry).
    pub fn release(&self, key: &ObjectKey) -> Result<(), String> {
        let Flows::Running {
            source,
            released,
            mirror,
            ..
        } = self
        else {
            return Err("conntrack is not mirrored".into());
        };
        if !matches!(key, ObjectKey::Flow { .. }) {
            return Err(format!("not a flow's key: {key:?}"));
        }
        let t = source.table();
        let e = t
            .get(key)
            .ok_or_else(|| format!("no conntrack entry for {key:?} (gone already)"))?;
        released.lock().unwrap().insert(key.clone(), e.flow.id);
        mirror.update_flows(Vec::new(), vec![key.clone()]);
        Ok(())
    }

    /// Entries handed back and still in the table.
    pub fn released(&self) -> usize {
        match self {
            Flows::Running { released, .. } => released.lock().unwrap().len(),
            _ => 0,
        }
    }

    /// The offload policy in effect (none when not running).
    fn policy(&self) -> policy::Policy<'_> {
        match self {
            Flows::Running { rules, .. } => policy::Policy { rules },
            _ => policy::Policy { rules: &[] },
        }
    }

    /// `status.conntrack`: state and counters.
    pub fn status(&self) -> Value {
        match self {
            Flows::Disabled => {
                json!({"state": "disabled", "reason": "disabled in config ([flows] enabled = false)"})
            }
            Flows::Unavailable(r) => json!({"state": "unavailable", "reason": r}),
            Flows::Running { source, limit, .. } => {
                let (st, candidates) = {
                    let t = source.table();
                    let p = self.policy();
                    (t.stats(), t.entries().filter(|e| p.candidate(e)).count())
                };
                let (state, reason) = match source.failure() {
                    Some(why) if source.finished() => ("failed", Some(why)),
                    _ if !source.synced() => ("syncing", None),
                    _ => ("running", None),
                };
                let mut v = json!({
                    "state": state,
                    "flows": st.flows,
                    "candidates": candidates,
                    "limit": limit,
                    "refused": st.refused,
                    "over_limit": st.over_limit,
                    "messages": st.messages,
                    "events": st.events,
                    "overruns": st.overruns,
                    "resyncs": st.resyncs,
                    "refreshes": st.refreshes,
                    "released": self.released(),
                    "kept_alive": st.kept_alive,
                    "keep_alive_failed": st.keep_alive_failed,
                });
                if let Some(r) = reason {
                    v["reason"] = r.into();
                }
                v
            }
        }
    }

    /// `ekho dump flows --json`: `{"flows": [...]}` in a stable order (family, protocol,
    /// original tuple), with `"stats"` (the status counters) and each offloaded flow's
    /// `"offload"` (the plugins' counters, beside the kernel's) when asked.
    pub fn dump(&self, stats: bool, plugins: &PluginFlowStats) -> Value {
        let mut by_key: HashMap<&ObjectKey, Vec<(&str, &ObjectStats)>> = HashMap::new();
        if stats {
            for (name, v) in plugins {
                for s in v.iter() {
                    by_key.entry(&s.key).or_default().push((name, s));
                }
            }
        }
        let now = ekho_plugin_api::monotonic_ns();
        let mut entries: Vec<Entry> = match self {
            Flows::Running { source, .. } => source.table().entries().cloned().collect(),
            _ => Vec::new(),
        };
        entries.sort_by_key(|e| (e.flow.family, e.flow.protocol, e.flow.zone, e.flow.original));
        let p = self.policy();
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut j = flow_json(e);
                j["candidate"] = p.candidate(e).into();
                if let Some(v) = by_key.get(&e.key()) {
                    j["offload"] = v
                        .iter()
                        .map(|(name, s)| offload_json(name, s, now))
                        .collect::<Vec<_>>()
                        .into();
                }
                j
            })
            .collect();
        let mut v = json!({ "flows": list });
        if stats {
            v["stats"] = self.status();
        }
        v
    }
}

/// One plugin's counters of a flow: `{"plugin", "original": {"packets", "bytes", "drops",
/// "last_used"}, "reply": {...}}`, `last_used` in seconds ago as `tc -s` says it (absent:
/// never).
fn offload_json(plugin: &str, s: &ObjectStats, now: u64) -> Value {
    let dir = |i: usize| -> Value {
        let Some(c) = s.counters.get(i) else {
            return Value::Null;
        };
        let mut m = json!({"packets": c.packets, "bytes": c.bytes, "drops": c.drops});
        if c.lastused != 0 {
            m["last_used"] = (now.saturating_sub(c.lastused) / 1_000_000_000).into();
        }
        m
    };
    json!({"plugin": plugin, "original": dir(0), "reply": dir(1)})
}

fn unavailable(why: &str, errno: Option<i32>) -> String {
    let hint = match errno {
        Some(libc::EPROTONOSUPPORT) | Some(libc::EOPNOTSUPP) | Some(libc::ENOENT) => {
            " (this kernel has no ctnetlink: load nf_conntrack_netlink, or set [flows] enabled = false)"
        }
        Some(libc::EPERM) => " (reading conntrack needs CAP_NET_ADMIN)",
        _ => "",
    };
    format!("conntrack cannot be mirrored: {why}{hint}")
}

pub use ekho_mirror::conntrack::message::tcp_state_name;

/// One entry in JSON, conntrack's field names (the one JSON form of a flow): the plugin API's
/// form of the flow (`Flow::to_json`) with what the kernel alone knows: timeout, TCP state,
/// counters, labels, use count, zones of one direction (`zone-orig`, `zone-reply`).
pub fn flow_json(e: &Entry) -> Value {
    let mut v = e.flow.to_json();
    let m = v.as_object_mut().expect("a flow's JSON is an object");
    // The flow's zone is the original direction's: `zone` when it covers both directions.
    if e.tuple_zones != [0, 0] {
        m.remove("zone");
        for (k, z) in [
            ("zone-orig", e.tuple_zones[0]),
            ("zone-reply", e.tuple_zones[1]),
        ] {
            if z != 0 {
                m.insert(k.into(), z.into());
            }
        }
    }
    m.insert("timeout".into(), e.timeout.into());
    if let Some(s) = e.tcp_state {
        m.insert("state".into(), tcp_state_name(s).into());
    }
    for (dir, c) in [("original", e.counters_orig), ("reply", e.counters_reply)] {
        if let (Some(c), Some(t)) = (c, m.get_mut(dir).and_then(Value::as_object_mut)) {
            t.insert("packets".into(), c.packets.into());
            t.insert("bytes".into(), c.bytes.into());
        }
    }
    if let Some(l) = e.labels {
        let hex: String = l.iter().map(|b| format!("{b:02x}")).collect();
        m.insert("labels".into(), format!("0x{hex}").into());
    }
    // Events carry no use count: 0 is "not known yet" (a live entry is used at least once).
    if e.use_count != 0 {
        m.insert("use".into(), e.use_count.into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekho_mirror::conntrack::message::status;
    use ekho_mirror::conntrack::{Flow, FlowTuple};

    fn flow() -> Entry {
        let a = |s: &str| s.parse().unwrap();
        let mut flow = Flow::new(
            6,
            FlowTuple {
                src: a("10.0.1.2"),
                dst: a("10.0.2.2"),
                sport: 40000,
                dport: 5201,
            },
            FlowTuple {
                src: a("10.0.2.2"),
                dst: a("10.0.2.1"),
                sport: 5201,
                dport: 40000,
            },
        );
        flow.status = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED | status::SRC_NAT;
        flow.zone = 3;
        flow.id = 7;
        Entry {
            flow,
            timeout: 431999,
            use_count: 1,
            tcp_state: Some(3),
            tcp_flags: [0, 0],
            counters_orig: Some(ekho_mirror::conntrack::Counters {
                packets: 3,
                bytes: 180,
            }),
            counters_reply: None,
            labels: None,
            tuple_zones: [0, 0],
        }
    }

    #[test]
    fn json_uses_conntracks_names() {
        let v = flow_json(&flow());
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["state"], "ESTABLISHED");
        assert_eq!(v["original"]["sport"], 40000);
        assert_eq!(v["original"]["packets"], 3);
        assert!(v["reply"].get("packets").is_none());
        assert_eq!(v["reply"]["dst"], "10.0.2.1");
        assert_eq!(v["flags"], json!(["ASSURED"]));
        assert_eq!((v["zone"].clone(), v["use"].clone()), (json!(3), json!(1)));
        let mut icmp = flow();
        icmp.flow.protocol = 1;
        icmp.flow.original.dport = 8 << 8;
        icmp.flow.original.sport = 99;
        icmp.tcp_state = None;
        icmp.flow.status = 0;
        let v = flow_json(&icmp);
        assert_eq!(
            (v["original"]["type"].clone(), v["original"]["code"].clone()),
            (json!(8), json!(0))
        );
        assert_eq!(v["original"]["id"], 99);
        assert!(v.get("state").is_none());
        assert_eq!(v["flags"], json!(["UNREPLIED"]));
        // A zone of the original direction only: conntrack's `zone-orig`, not `zone`.
        let mut dir = flow();
        dir.tuple_zones = [3, 0];
        let v = flow_json(&dir);
        assert!(v.get("zone").is_none());
        assert_eq!(v["zone-orig"], 3);
        assert!(v.get("zone-reply").is_none());
    }
}
