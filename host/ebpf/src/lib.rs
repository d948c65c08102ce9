//! ekho's eBPF source: kernel notifier events (FIB, switchdev, netevent, netdevice chains; neighbour
//! and bridge-FDB tracepoints) captured in the kernel, filtered to one network namespace, delivered
//! through a ring buffer as [`NotifierEvent`]s.
//!
//! The BPF programs are C (`bpf/ekho.bpf.c`), built with clang into `bpf/ekho.bpf.o`, which is
//! committed and embedded here, so `cargo build` needs no clang. Rebuild with `bpf/build.sh`;
//! `bpf/check.sh` verifies the committed object matches the source.
//!
//! At start-up each hook is tried in order of preference:
//! - notifier chains: `fentry/<function>`. Kernels that refuse fentry (EPERM here) leave the hook
//!   [`HookState::FallenBack`] to the tracepoints covering part of the chain, or
//!   [`HookState::Unavailable`].
//! - tracepoints: `tp_btf/<name>`, else `raw_tp/<name>` (neither needs tracefs).
//!
//! Events are dropped in the kernel unless the object's device (or, for FIB and netevent
//! events without a device, the `struct net`) is in the configured network namespace, compared by
//! namespace inode. A failed ring-buffer reservation increments a per-CPU, per-kind counter; the
//! reader reports the increase through the [`LossSink`] with the object kinds to re-dump.
//!
//! Route lookups (`fib_table_lookup`, `fib6_table_lookup`) never produce one ring-buffer record per
//! packet: the kernel counts hits in a per-CPU LRU hash (IPv6 per matched prefix; IPv4 per prefix
//! given with [`EbpfSource::set_route_prefixes`], else per destination address, because that
//! tracepoint does not carry the matched prefix), and a poller
//! delivers [`NotifierKind::FibLookup`] events with `value` = hits since the previous report.
//! [`EbpfSource::fib_lookup_hits`] reads the cumulative counters.

mod hooks;
mod wire;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, FEntry, Program, RawTracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use ekho_plugin_api::object::{Family, IpPrefix};
use ekho_plugin_api::{NotifierEvent, NotifierKind, ObjectKind};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;
use wire::{FibKey, Lpm4, RawEvent};

/// The compiled BPF object (`bpf/ekho.bpf.o`, rebuilt by `bpf/build.sh`).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/ekho.bpf.o");

/// Records delivered in one [`EventSink`] call at most.
const MAX_BATCH: usize = 4096;

/// What became of one hook at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookState {
    /// Attached as intended.
    Live,
    /// The preferred attachment was refused; this one is live instead (e.g. `tp_btf/neigh_update`).
    FallenBack { to: String, reason: String },
    /// Nothing attached; the kernel's reason.
    Unavailable { reason: String },
}

/// One hook and its state (`name` like `fentry/call_fib_notifiers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookStatus {
    pub name: String,
    pub state: HookState,
}

/// Where and how to capture.
#[derive(Clone, Debug, Default)]
pub struct EbpfConfig {
    /// Network namespace whose events are kept: `None` for the caller's, else a path
    /// (`/run/netns/NAME`).
    pub netns: Option<PathBuf>,
}

/// Tuning knobs beyond [`EbpfConfig`] (for [`EbpfSource::start_with`]).
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// Ring-buffer size in bytes (a power of two, multiple of the page size). Default 4 MiB
    /// (about 27000 records; `bench_events` lost records at 1 MiB in bursts of 200k records/s).
    pub ring_bytes: u32,
    /// How often route-lookup counters are delivered as [`NotifierKind::FibLookup`] events;
    /// `None` attaches the lookup tracepoints but delivers nothing (read with
    /// [`EbpfSource::fib_lookup_hits`]).
    pub fib_lookup_interval: Option<Duration>,
    /// Attach `fib_table_lookup` / `fib6_table_lookup` at all (they run once per route lookup).
    pub fib_lookups: bool,
    /// Skip `tp_btf` and attach tracepoints as `raw_tp` (tests the fallback path).
    pub force_raw_tp: bool,
    /// Skip fentry entirely (hooks reported [`HookState::FallenBack`]/[`HookState::Unavailable`]).
    pub no_fentry: bool,
    /// Attach `notifier_run` and count runs per notifier callback (machine-wide, see
    /// [`EbpfSource::notifier_runs`]).
    pub notifier_runs: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            ring_bytes: 4 << 20,
            fib_lookup_interval: Some(Duration::from_secs(1)),
            fib_lookups: true,
            force_raw_tp: false,
            no_fentry: false,
            notifier_runs: true,
        }
    }
}

/// Receives batches of events (called from the source's task; must not block for long).
pub type EventSink = Arc<dyn Fn(Vec<NotifierEvent>) + Send + Sync>;
/// Told which kinds must be re-dumped after ring-buffer loss.
pub type LossSink = Arc<dyn Fn(&[ObjectKind]) + Send + Sync>;

/// Errors that stop the eBPF source as a whole (individual hooks failing are in [`HookStatus`]).
/// Callers match on [`EbpfError::errno`], never on the text.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("cannot load BPF programs: {reason} (ekho runs on netlink alone)")]
    Load {
        /// What failed, on one line, the errno named first when there is one (`EPERM: ...`).
        reason: String,
        /// The errno of the refused system call, when there is one.
        errno: Option<i32>,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("eBPF source must be started inside a tokio runtime")]
    NoRuntime,
    #[error("BPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

impl EbpfError {
    /// The errno behind the error, when a system call gave one (`libc::EPERM` when loading BPF is
    /// not allowed, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            EbpfError::Load { errno, .. } => *errno,
            EbpfError::Netns { source, .. } => source.raw_os_error(),
            EbpfError::NoRuntime | EbpfError::Map { .. } => None,
        }
    }

    fn load(e: &(dyn std::error::Error + 'static)) -> EbpfError {
        EbpfError::Load {
            reason: reason(e),
            errno: errno_of(e),
        }
    }
}

/// Counters for `ekho status`.
#[derive(Clone, Debug, Default)]
pub struct EbpfStats {
    pub events: u64,
    /// Events lost because the ring buffer was full (read from the per-CPU drop counter).
    pub lost: u64,
    /// Events delivered, per hook (`tp_btf/neigh_update`).
    pub events_by_hook: std::collections::BTreeMap<String, u64>,
    /// Events lost, per notifier kind (`neighbour`).
    pub lost_by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Events lost, per attached hook (`tp_btf/neigh_update`; 0 for a hook that lost none).
    pub lost_by_hook: std::collections::BTreeMap<String, u64>,
}

/// Cumulative route-lookup hits of one prefix (IPv4: one destination address, `/32`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FibLookupHits {
    pub family: Family,
    pub table: u32,
    pub prefix: IpPrefix,
    pub hits: u64,
}

/// Runs of one notifier callback (from the `notifier_run` tracepoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierRuns {
    /// The callback's kernel symbol (`/proc/kallsyms`), or its address in hex.
    pub callback: String,
    pub runs: u64,
}

/// Kernel run-time statistics of one attached program (needs BPF stats enabled, see
/// [`enable_bpf_stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    /// Hook name (`tp_btf/neigh_update`).
    pub hook: String,
    /// Program (C function) name.
    pub program: String,
    /// Times the program ran.
    pub run_count: u64,
    /// Total time spent in it.
    pub run_time_ns: u64,
}

/// Turns on the kernel's per-program run-time accounting (`BPF_ENABLE_STATS`, as
/// `kernel.bpf_stats_enabled`) for as long as the returned descriptor is open.
pub fn enable_bpf_stats() -> Result<OwnedFd, EbpfError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| EbpfError::load(&e))
}

/// State shared between the source and its tasks.
struct Shared {
    events: AtomicU64,
    /// Events delivered per hook name.
    events_by_hook: Mutex<HashMap<String, u64>>,
    lost_map: Mutex<PerCpuArray<MapData, u64>>,
    /// Failed reservations per hook id (`EKHO_HOOK_*`).
    lost_by_hook_map: Mutex<PerCpuArray<MapData, u64>>,
    /// Per-kind loss totals already reported.
    lost_seen: Mutex<[u64; NotifierKind::ALL.len()]>,
}

impl Shared {
    /// Per-kind totals of failed reservations.
    fn lost_by_kind(&self) -> [u64; NotifierKind::ALL.len()] {
        let map = self.lost_map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = [0u64; NotifierKind::ALL.len()];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(v) = map.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        out
    }

    /// Totals of failed reservations of the hooks with these ids.
    fn lost_by_hook(&self, ids: impl Iterator<Item = u32>) -> Vec<(u32, u64)> {
        let map = self
            .lost_by_hook_map
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ids.map(|id| {
            let n = map.get(&id, 0).map(|v| v.iter().sum()).unwrap_or(0);
            (id, n)
        })
        .collect()
    }

    /// Reports newly lost kinds to `loss`.
    fn check_loss(&self, loss: &LossSink) {
        let now = self.lost_by_kind();
        let mut redump: Vec<ObjectKind> = Vec::new();
        {
            let mut seen = self.lost_seen.lock().unwrap_or_else(|e| e.into_inner());
            for (i, (n, s)) in now.iter().zip(seen.iter_mut()).enumerate() {
                if *n > *s {
                    let kind = NotifierKind::ALL[i];
                    tracing::warn!(
                        kind = kind.name(),
                        lost = *n - *s,
                        "eBPF ring buffer full: events lost"
                    );
                    redump.extend_from_slice(hooks::redump_kinds(kind));
                    *s = *n;
                }
            }
        }
        if !redump.is_empty() {
            redump.sort();
            redump.dedup();
            loss(&redump);
        }
    }
}

/// The `ROUTES4` LPM trie and the (key, prefix length) pairs currently in it.
type Routes4 = (
    LpmTrie<MapData, Lpm4, u8>,
    std::collections::HashSet<(Lpm4, u8)>,
);

/// A running eBPF source; dropping it detaches everything.
pub struct EbpfSource {
    pub hooks: Vec<HookStatus>,
    bpf: Mutex<Ebpf>,
    /// (hook name, program name) of every attached program.
    attached: Vec<(String, String)>,
    shared: Arc<Shared>,
    fib_hits: Option<Arc<Mutex<PerCpuHashMap<MapData, FibKey, u64>>>>,
    notifier_map: Option<PerCpuHashMap<MapData, u64, u64>>,
    /// IPv4 route prefixes for lookup aggregation, and the keys currently in it.
    routes4: Mutex<Routes4>,
    netns_inode: u32,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for EbpfSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // `bpf` drops after this: programs detach, maps close.
    }
}

impl std::fmt::Debug for EbpfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfSource")
            .field("hooks", &self.hooks)
            .field("netns_inode", &self.netns_inode)
            .finish_non_exhaustive()
    }
}

impl EbpfSource {
    /// Loads and attaches what this kernel allows, spawns the ring-buffer reader on the current
    /// tokio runtime.
    pub fn start(
        cfg: EbpfConfig,
        events: EventSink,
        loss: LossSink,
    ) -> Result<EbpfSource, EbpfError> {
        Self::start_with(cfg, StartOptions::default(), events, loss)
    }

    /// [`EbpfSource::start`] with explicit [`StartOptions`].
    pub fn start_with(
        cfg: EbpfConfig,
        opts: StartOptions,
        events: EventSink,
        loss: LossSink,
    ) -> Result<EbpfSource, EbpfError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| EbpfError::NoRuntime)?;
        let netns_inode = netns_inode(cfg.netns.as_deref())?;
        raise_memlock();
        let btf = Btf::from_sys_fs().map_err(|e| EbpfError::Load {
            reason: format!("kernel BTF (/sys/kernel/btf/vmlinux): {}", reason(&e)),
            errno: errno_of(&e),
        })?;
        let mut bpf = EbpfLoader::new()
            .btf(Some(&btf))
            .set_global("target_netns", &netns_inode, true)
            .set_max_entries("EVENTS", opts.ring_bytes)
            .load(OBJECT)
            .map_err(|e| EbpfError::load(&e))?;

        let mut statuses = Vec::new();
        let mut attached = Vec::new();
        // Tracepoints first: fentry fallbacks name them.
        let mut tp_live: HashMap<&'static str, String> = HashMap::new();
        let mut tp_statuses = Vec::new();
        // The errno of each unavailable hook, by hook name.
        let mut refused: HashMap<String, Option<i32>> = HashMap::new();
        for tp in hooks::TRACEPOINTS {
            if tp.kind == NotifierKind::FibLookup && !opts.fib_lookups {
                continue;
            }
            let (status, live) =
                attach_tracepoint(&mut bpf, &btf, tp.name, opts.force_raw_tp, &mut refused);
            if let Some((hook, prog)) = live {
                tp_live.insert(tp.name, hook.clone());
                attached.push((hook, prog));
            }
            tp_statuses.push(status);
        }
        for f in hooks::FENTRIES {
            let name = format!("fentry/{}", f.func);
            let res = if opts.no_fentry {
                Err(Refusal {
                    reason: "fentry disabled by StartOptions::no_fentry".to_string(),
                    errno: None,
                })
            } else {
                attach_fentry(&mut bpf, &btf, f.prog, f.func)
            };
            let state = match res {
                Ok(()) => {
                    attached.push((name.clone(), f.prog.to_string()));
                    HookState::Live
                }
                Err(Refusal { reason: why, errno }) => {
                    let to: Vec<&str> = f
                        .fallback
                        .iter()
                        .filter_map(|t| tp_live.get(t).map(String::as_str))
                        .collect();
                    if to.is_empty() {
                        refused.insert(name.clone(), errno);
                        HookState::Unavailable { reason: why }
                    } else {
                        HookState::FallenBack {
                            to: to.join(", "),
                            reason: why,
                        }
                    }
                }
            };
            statuses.push(HookStatus { name, state });
        }
        let mut notifier_live = false;
        if opts.notifier_runs {
            let (status, live) = attach_tracepoint(
                &mut bpf,
                &btf,
                "notifier_run",
                opts.force_raw_tp,
                &mut refused,
            );
            if let Some(l) = live {
                notifier_live = true;
                attached.push(l);
            }
            tp_statuses.push(status);
        }
        statuses.extend(tp_statuses);
        for h in &statuses {
            match &h.state {
                HookState::Live => tracing::debug!(hook = %h.name, "eBPF hook live"),
                HookState::FallenBack { to, reason } => {
                    tracing::debug!(hook = %h.name, %to, %reason, "eBPF hook fell back")
                }
                HookState::Unavailable { reason } => {
                    tracing::debug!(hook = %h.name, %reason, "eBPF hook unavailable")
                }
            }
        }
        if attached.is_empty() {
            let (why, errno) = statuses
                .iter()
                .find_map(|h| match &h.state {
                    HookState::Unavailable { reason } => {
                        Some((reason.clone(), refused.get(&h.name).copied().flatten()))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| ("no hook".into(), None));
            return Err(EbpfError::Load {
                reason: format!("no hook could be attached ({why})"),
                errno,
            });
        }

        let ring = take_map(&mut bpf, "EVENTS", RingBuf::try_from)?;
        let lost_map = take_map(&mut bpf, "LOST", PerCpuArray::<MapData, u64>::try_from)?;
        let lost_by_hook_map = take_map(
            &mut bpf,
            "LOST_BY_HOOK",
            PerCpuArray::<MapData, u64>::try_from,
        )?;
        let notifier_map = if notifier_live {
            Some(take_map(
                &mut bpf,
                "NOTIFIER_RUNS",
                PerCpuHashMap::<MapData, u64, u64>::try_from,
            )?)
        } else {
            None
        };
        let routes4 = take_map(&mut bpf, "ROUTES4", LpmTrie::<MapData, Lpm4, u8>::try_from)?;
        let fib_map = take_map(
            &mut bpf,
            "FIB_HITS",
            PerCpuHashMap::<MapData, FibKey, u64>::try_from,
        )?;
        let shared = Arc::new(Shared {
            events: AtomicU64::new(0),
            events_by_hook: Default::default(),
            lost_map: Mutex::new(lost_map),
            lost_by_hook_map: Mutex::new(lost_by_hook_map),
            lost_seen: Mutex::new([0; NotifierKind::ALL.len()]),
        });
        let ring = {
            let _guard = rt.enter();
            // SAFETY: the ring buffer's fd stays open as long as the AsyncFd owns the RingBuf.
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                EbpfError::Map {
                    map: "EVENTS",
                    reason: e.to_string(),
                }
            })?
        };
        let mut tasks = vec![rt.spawn(read_ring(ring, shared.clone(), events.clone(), loss))];
        let fib_live = ["fib_table_lookup", "fib6_table_lookup"]
            .iter()
            .any(|t| tp_live.contains_key(t));
        let fib_hits = fib_live.then(|| Arc::new(Mutex::new(fib_map)));
        if let (Some(map), Some(every)) = (&fib_hits, opts.fib_lookup_interval) {
            let hook_v4 = tp_live.get("fib_table_lookup").cloned().unwrap_or_default();
            let hook_v6 = tp_live
                .get("fib6_table_lookup")
                .cloned()
                .unwrap_or_default();
            tasks.push(rt.spawn(poll_fib_hits(map.clone(), every, events, hook_v4, hook_v6)));
        }
        tracing::info!(
            netns_inode,
            live = attached.len(),
            hooks = statuses.len(),
            "eBPF source started"
        );
        Ok(EbpfSource {
            hooks: statuses,
            bpf: Mutex::new(bpf),
            attached,
            shared,
            fib_hits,
            notifier_map,
            routes4: Mutex::new((routes4, Default::default())),
            netns_inode,
            tasks,
        })
    }

    /// Current counters.
    pub fn stats(&self) -> EbpfStats {
        let lost = self.shared.lost_by_kind();
        EbpfStats {
            events: self.shared.events.load(Ordering::Relaxed),
            lost: lost.iter().sum(),
            events_by_hook: self
                .shared
                .events_by_hook
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(h, n)| (h.clone(), *n))
                .collect(),
            lost_by_kind: NotifierKind::ALL
                .iter()
                .zip(lost)
                .map(|(k, n)| (k.name(), n))
                .collect(),
            lost_by_hook: self
                .shared
                .lost_by_hook(hooks::ids())
                .into_iter()
                .map(|(id, n)| (hooks::names(id, 0).0, n))
                .filter(|(name, n)| *n > 0 || self.attached.iter().any(|(h, _)| h == name))
                .collect(),
        }
    }

    /// Inode of the network namespace whose events are kept.
    pub fn netns_inode(&self) -> u32 {
        self.netns_inode
    }

    /// Cumulative route-lookup hits per prefix (empty if the lookup tracepoints are not attached).
    pub fn fib_lookup_hits(&self) -> Vec<FibLookupHits> {
        match &self.fib_hits {
            Some(m) => read_fib_hits(m)
                .into_iter()
                .filter_map(|(k, hits)| {
                    let prefix = IpPrefix::new(wire::ip(k.family, &k.addr)?, k.len);
                    Some(FibLookupHits {
                        family: Family(k.family),
                        table: k.table,
                        prefix,
                        hits,
                    })
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// Gives the kernel side the IPv4 route prefixes of each table (`(table, prefix)`; IPv6 and
    /// duplicate entries are ignored), so that IPv4 lookups count against the matched prefix
    /// instead of the destination address. Replaces the previous set; the host calls it with the
    /// mirror's routes after a dump and after route changes. Lookups whose destination matches
    /// none of them keep counting per address (`/32`).
    pub fn set_route_prefixes(&self, prefixes: &[(u32, IpPrefix)]) -> Result<(), EbpfError> {
        let want: std::collections::HashSet<(Lpm4, u8)> = prefixes
            .iter()
            .filter_map(|(table, p)| match p.addr.masked(p.len) {
                ekho_plugin_api::object::IpAddress::V4(addr) if p.len <= 32 => Some((
                    Lpm4 {
                        table: *table,
                        addr,
                    },
                    p.len,
                )),
                _ => None,
            })
            .collect();
        let mut guard = self.routes4.lock().unwrap_or_else(|e| e.into_inner());
        let (trie, have) = &mut *guard;
        let map_err = |e: aya::maps::MapError| EbpfError::Map {
            map: "ROUTES4",
            reason: reason(&e),
        };
        for (k, len) in have.difference(&want).copied().collect::<Vec<_>>() {
            match trie.remove(&LpmKey::new(32 + u32::from(len), k)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(e)),
            }
            have.remove(&(k, len));
        }
        for (k, len) in want.difference(&have.clone()).copied() {
            trie.insert(&LpmKey::new(32 + u32::from(len), k), len, 0)
                .map_err(map_err)?;
            have.insert((k, len));
        }
        Ok(())
    }

    /// Runs per notifier callback since start, most frequent first, symbols from
    /// `/proc/kallsyms`. Machine-wide: the `notifier_run` tracepoint carries only the callback
    /// (no chain, event or namespace). Empty if `notifier_run` is not attached.
    pub fn notifier_runs(&self) -> Vec<NotifierRuns> {
        let Some(map) = &self.notifier_map else {
            return Vec::new();
        };
        let mut counts: Vec<(u64, u64)> = map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (k, v.iter().sum()))
            .collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        let syms = kallsyms(counts.iter().map(|c| c.0).collect());
        counts
            .into_iter()
            .map(|(addr, runs)| NotifierRuns {
                callback: syms
                    .get(&addr)
                    .cloned()
                    .unwrap_or_else(|| format!("{addr:#x}")),
                runs,
            })
            .collect()
    }

    /// Kernel ids of the attached programs (as in `bpftool prog show`).
    pub fn program_ids(&self) -> Vec<u32> {
        let bpf = self.bpf.lock().unwrap_or_else(|e| e.into_inner());
        self.attached
            .iter()
            .filter_map(|(_, prog)| Some(bpf.program(prog)?.info().ok()?.id()))
            .collect()
    }

    /// Run count and run time of each attached program, from `bpf(BPF_OBJ_GET_INFO_BY_FD)`. Both
    /// stay 0 unless BPF stats are enabled ([`enable_bpf_stats`]).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let bpf = self.bpf.lock().unwrap_or_else(|e| e.into_inner());
        self.attached
            .iter()
            .filter_map(|(hook, prog)| {
                let info = bpf.program(prog)?.info().ok()?;
                Some(ProgramStats {
                    hook: hook.clone(),
                    program: prog.clone(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }
}

/// Verifier verdict on one fentry handler (see [`verify_fentry_handlers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerCheck {
    /// The fentry hook whose handler was checked (`fentry/call_fib_notifiers`).
    pub hook: String,
    /// `Err` holds the verifier's reason.
    pub result: Result<(), String>,
}

/// Loads (never attaches) the raw-tracepoint twins of the fentry handlers, so the verifier checks
/// the notifier-chain code even where fentry is refused. Returns (fentry hook, result) per handler.
pub fn verify_fentry_handlers() -> Result<Vec<HandlerCheck>, EbpfError> {
    raise_memlock();
    let btf = Btf::from_sys_fs().map_err(|e| EbpfError::load(&e))?;
    let ino = netns_inode(None)?;
    let mut bpf = EbpfLoader::new()
        .btf(Some(&btf))
        .set_global("target_netns", &ino, true)
        .set_max_entries("EVENTS", 4096 * 4)
        .load(OBJECT)
        .map_err(|e| EbpfError::load(&e))?;
    let mut out = Vec::new();
    let mut done: HashMap<&str, Result<(), String>> = HashMap::new();
    for f in hooks::FENTRIES {
        if let Some(r) = done.get(f.verify_prog) {
            out.push(HandlerCheck {
                hook: format!("fentry/{}", f.func),
                result: r.clone(),
            });
            continue;
        }
        let res = match bpf.program_mut(f.verify_prog) {
            Some(p) => match <&mut RawTracePoint>::try_from(p) {
                Ok(p) => p.load().map_err(|e| reason(&e)),
                Err(e) => Err(reason(&e)),
            },
            None => Err(format!("program {} not in object", f.verify_prog)),
        };
        done.insert(f.verify_prog, res.clone());
        out.push(HandlerCheck {
            hook: format!("fentry/{}", f.func),
            result: res,
        });
    }
    Ok(out)
}

/// Symbols of the given kernel text addresses (exact matches) from `/proc/kallsyms`.
fn kallsyms(mut want: Vec<u64>) -> HashMap<u64, String> {
    want.sort_unstable();
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return out;
    };
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(_), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if let Ok(a) = u64::from_str_radix(addr, 16) {
            if want.binary_search(&a).is_ok() {
                out.entry(a).or_insert_with(|| name.to_string());
            }
        }
    }
    out
}

/// Tries `tp_btf/NAME` then `raw_tp/NAME`; returns the status and (hook, program) if attached.
/// An unavailable hook's errno (raw_tp's, else tp_btf's) goes into `refused`.
fn attach_tracepoint(
    bpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    force_raw: bool,
    refused: &mut HashMap<String, Option<i32>>,
) -> (HookStatus, Option<(String, String)>) {
    let btf_hook = hooks::tp_hook_name(name, false);
    let raw_hook = hooks::tp_hook_name(name, true);
    let btf_prog = format!("btf_{name}");
    let raw_prog = format!("raw_{name}");
    let btf_err = if force_raw {
        Refusal {
            reason: "tp_btf skipped (force_raw_tp)".to_string(),
            errno: None,
        }
    } else {
        match with_prog::<BtfTracePoint, _>(bpf, &btf_prog, |p| {
            p.load(name, btf)?;
            if let Err(e) = p.attach() {
                let _ = p.unload();
                return Err(e);
            }
            Ok(())
        }) {
            Ok(()) => {
                let st = HookStatus {
                    name: btf_hook.clone(),
                    state: HookState::Live,
                };
                return (st, Some((btf_hook, btf_prog)));
            }
            Err(e) => e,
        }
    };
    match with_prog::<RawTracePoint, _>(bpf, &raw_prog, |p| {
        p.load()?;
        if let Err(e) = p.attach(name) {
            let _ = p.unload();
            return Err(e);
        }
        Ok(())
    }) {
        Ok(()) => {
            let state = HookState::FallenBack {
                to: raw_hook.clone(),
                reason: btf_err.reason,
            };
            (
                HookStatus {
                    name: btf_hook,
                    state,
                },
                Some((raw_hook, raw_prog)),
            )
        }
        Err(raw_err) => {
            refused.insert(btf_hook.clone(), raw_err.errno.or(btf_err.errno));
            let state = HookState::Unavailable {
                reason: format!("tp_btf: {}; raw_tp: {}", btf_err.reason, raw_err.reason),
            };
            (
                HookStatus {
                    name: btf_hook,
                    state,
                },
                None,
            )
        }
    }
}

fn attach_fentry(bpf: &mut Ebpf, btf: &Btf, prog: &str, func: &str) -> Result<(), Refusal> {
    with_prog::<FEntry, _>(bpf, prog, |p| {
        p.load(func, btf)?;
        if let Err(e) = p.attach() {
            let _ = p.unload();
            return Err(e);
        }
        Ok(())
    })
    .map_err(|Refusal { reason: e, errno }| {
        let reason = if e.contains("Unknown BTF type") {
            format!("{func} is not in this kernel's BTF (function not built in): {e}")
        } else if errno == Some(libc::EPERM) {
            format!("fentry refused by this kernel: {e}")
        } else {
            e
        };
        Refusal { reason, errno }
    })
}

/// Why a program could not be loaded or attached: a one-line reason and the errno behind it.
struct Refusal {
    reason: String,
    errno: Option<i32>,
}

impl Refusal {
    fn of(e: &(dyn std::error::Error + 'static)) -> Refusal {
        Refusal {
            reason: reason(e),
            errno: errno_of(e),
        }
    }
}

/// Runs `f` on program `name` converted to `P`, turning every error into a [`Refusal`].
fn with_prog<P, F>(bpf: &mut Ebpf, name: &str, f: F) -> Result<(), Refusal>
where
    for<'a> &'a mut P: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
    F: FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
{
    let prog = bpf.program_mut(name).ok_or_else(|| Refusal {
        reason: format!("program {name} not in object"),
        errno: None,
    })?;
    let p: &mut P = prog.try_into().map_err(|e| Refusal::of(&e))?;
    f(p).map_err(|e| Refusal::of(&e))
}

fn take_map<T, E: std::error::Error + 'static>(
    bpf: &mut Ebpf,
    name: &'static str,
    conv: impl FnOnce(aya::maps::Map) -> Result<T, E>,
) -> Result<T, EbpfError> {
    let map = bpf.take_map(name).ok_or(EbpfError::Map {
        map: name,
        reason: "not in object".into(),
    })?;
    conv(map).map_err(|e| EbpfError::Map {
        map: name,
        reason: reason(&e),
    })
}

/// Namespace inode of `path` (default: this process's network namespace).
fn netns_inode(path: Option<&Path>) -> Result<u32, EbpfError> {
    let path = path.unwrap_or(Path::new("/proc/self/ns/net"));
    let md = std::fs::metadata(path).map_err(|source| EbpfError::Netns {
        path: path.into(),
        source,
    })?;
    u32::try_from(md.ino()).map_err(|_| EbpfError::Netns {
        path: path.into(),
        source: std::io::Error::other("inode does not fit 32 bits: not a namespace file"),
    })
}

/// Lifts RLIMIT_MEMLOCK where allowed; kernels >= 5.11 charge BPF memory to the memory cgroup, so
/// failure is not fatal.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot raise RLIMIT_MEMLOCK (not needed on kernels >= 5.11)");
    }
}

/// The errno of the first operating-system error in an error chain.
fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(n) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return Some(n);
        }
        cur = err.source();
    }
    None
}

/// One-line reason from an error chain, with the errno name (`EPERM: ...`) when there is one.
fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let s = s
            .trim_end_matches(['.', ':', ' '])
            .trim_end_matches("Verifier output")
            .trim_end_matches(['.', ' '])
            .to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    let mut out = parts.join(": ");
    if let Some(n) = errno_of(e) {
        out = format!("{}: {out}", errno_name(n));
    }
    if out.chars().count() > 600 {
        let head: String = out.chars().take(200).collect();
        let tail: String = out
            .chars()
            .rev()
            .take(350)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        out = format!("{head} ... {tail}");
    }
    out
}

fn errno_name(n: i32) -> String {
    match n {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EOPNOTSUPP | 524 => "EOPNOTSUPP".into(),
        libc::E2BIG => "E2BIG".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::ESRCH => "ESRCH".into(),
        n => format!("errno {n}"),
    }
}

/// Drains the ring buffer into `events` whenever it becomes readable; checks the loss counters
/// after each drain and every 250 ms.
async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    shared: Arc<Shared>,
    events: EventSink,
    loss: LossSink,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = ring.readable_mut() => match r {
                Ok(mut guard) => {
                    guard.clear_ready();
                    drain(guard.get_inner_mut(), &shared, &events);
                }
                Err(e) => {
                    tracing::error!(error = %e, "eBPF ring buffer poll failed; reader stops");
                    return;
                }
            },
            _ = tick.tick() => drain(ring.get_mut(), &shared, &events),
        }
        shared.check_loss(&loss);
    }
}

/// Counts a batch about to be delivered, in total and per hook.
fn count(shared: &Shared, batch: &[NotifierEvent]) {
    shared
        .events
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut by_hook = shared
        .events_by_hook
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for ev in batch {
        match by_hook.get_mut(ev.hook.as_str()) {
            Some(n) => *n += 1,
            None => {
                by_hook.insert(ev.hook.to_string(), 1);
            }
        }
    }
}

fn drain(rb: &mut RingBuf<MapData>, shared: &Shared, events: &EventSink) {
    let mut batch = Vec::new();
    while let Some(item) = rb.next() {
        match RawEvent::from_bytes(&item).and_then(|r| r.decode()) {
            Some(ev) => batch.push(ev),
            None => tracing::warn!(len = item.len(), "undecodable eBPF record dropped"),
        }
        drop(item);
        if batch.len() >= MAX_BATCH {
            count(shared, &batch);
            events(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        count(shared, &batch);
        events(batch);
    }
}

fn read_fib_hits(map: &Mutex<PerCpuHashMap<MapData, FibKey, u64>>) -> Vec<(FibKey, u64)> {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (k, v.iter().sum()))
        .collect()
}

/// Delivers route-lookup activity every `every`: one FibLookup event per prefix whose counter
/// moved, `value` = hits since the previous report.
async fn poll_fib_hits(
    map: Arc<Mutex<PerCpuHashMap<MapData, FibKey, u64>>>,
    every: Duration,
    events: EventSink,
    hook_v4: String,
    hook_v6: String,
) {
    let mut prev: HashMap<FibKey, u64> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = read_fib_hits(&map);
        let ts = ekho_plugin_api::monotonic_ns();
        let mut batch = Vec::new();
        let mut next = HashMap::with_capacity(now.len());
        for (k, total) in now {
            let before = prev.get(&k).copied().unwrap_or(0);
            // An LRU-evicted and re-created entry restarts from 0.
            let delta = if total >= before {
                total - before
            } else {
                total
            };
            next.insert(k, total);
            let Some(addr) = wire::ip(k.family, &k.addr) else {
                continue;
            };
            if delta == 0 {
                continue;
            }
            let v6 = k.family == 10;
            batch.push(NotifierEvent {
                kind: NotifierKind::FibLookup,
                hook: if v6 {
                    hook_v6.as_str()
                } else {
                    hook_v4.as_str()
                }
                .into(),
                event: if v6 {
                    "fib6_table_lookup"
                } else {
                    "fib_table_lookup"
                }
                .into(),
                timestamp_ns: ts,
                family: Family(k.family),
                dst: Some(IpPrefix::new(addr, k.len)).into(),
                table: k.table,
                value: delta,
                detail: format!("total={total}").into(),
                ..NotifierEvent::default()
            });
        }
        prev = next;
        if !batch.is_empty() {
            events(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _assert_send_sync() {
        fn is<T: Send + Sync>() {}
        is::<Mutex<EbpfSource>>();
    }

    #[test]
    fn reason_names_errno_and_keeps_one_line() {
        let e = std::io::Error::from_raw_os_error(libc::EPERM);
        let r = reason(&e);
        assert!(r.starts_with("EPERM: Operation not permitted"), "{r}");
        assert_eq!(errno_of(&e), Some(libc::EPERM));
        // The errno is found down an error chain (as in aya's errors).
        #[derive(Debug, thiserror::Error)]
        #[error("map EVENTS")]
        struct Wrapped(#[source] std::io::Error);
        let load = EbpfError::load(&Wrapped(e));
        assert_eq!(load.errno(), Some(libc::EPERM), "{load}");
        assert!(
            load.to_string().starts_with(
                "cannot load BPF programs: EPERM: map EVENTS: Operation not permitted"
            ),
            "{load}"
        );
        let long = std::io::Error::other(format!("a\nb {}", "x".repeat(2000)));
        let r = reason(&long);
        assert!(!r.contains('\n'));
        assert!(r.chars().count() < 600, "{}", r.len());
    }

    #[test]
    fn own_netns_inode_matches_proc() {
        let ino = netns_inode(None).unwrap();
        let link = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(link.to_string_lossy(), format!("net:[{ino}]"));
        assert!(matches!(
            netns_inode(Some(Path::new("/nonexistent/ns"))),
            Err(EbpfError::Netns { .. })
        ));
    }
}
