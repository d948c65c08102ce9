//! `ekho run`: the daemon. Wires kernel sources -> mirror -> per-plugin dispatch -> status.

use crate::config::{Config, PluginConfig};
use crate::control::{self, ChangeSink, WatchId};
use crate::dispatch::{Fanout, HungCall, MirrorAccess, PluginHandle, PluginState, PluginStatus};
use crate::loader;
use anyhow::Context;
use ekho_ebpf::{EbpfConfig, EbpfSource, HookState};
use ekho_mirror::source::{SourceConfig, SourceError};
use ekho_mirror::Mirror;
use ekho_plugin_api::host::{HostServices, HostServices_TO};
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::version::API_VERSION;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default receive buffer of the netlink event socket.
pub const DEFAULT_RCVBUF: usize = 64 << 20;

/// A plugin as the daemon keeps it.
#[allow(clippy::large_enum_variant)] // a handful per daemon
pub enum PluginEntry {
    Running {
        handle: PluginHandle,
        listener: ekho_mirror::ListenerId,
    },
    Refused(PluginStatus),
}

/// A configured plugin: its `[[plugins]]` table, what became of it, and its restarts.
pub struct Slot {
    pub config: PluginConfig,
    pub entry: PluginEntry,
    /// Restarts after failures in a row (reset once it stayed in sync for a minute, and by
    /// `ekho plugin restart|start`).
    pub restarts_in_row: u32,
    /// Every restart (status `restarts`).
    pub restarts: u64,
    /// When the pending automatic restart is due.
    pub restart_at: Option<Instant>,
    /// No more automatic restarts (policy `never`, or the limit reached).
    pub gave_up: bool,
    /// When it was last (re)created.
    pub loaded_at: Instant,
}

impl Slot {
    fn new(config: PluginConfig, entry: PluginEntry) -> Slot {
        Slot {
            config,
            entry,
            restarts_in_row: 0,
            restarts: 0,
            restart_at: None,
            gave_up: false,
            loaded_at: Instant::now(),
        }
    }
}

/// How often the supervisor looks at the plugins (watchdog, restarts).
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);

/// How often the flows plugins report active have their conntrack timeouts refreshed (the
/// plugins' counters are read about as often).
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);

/// A plugin in sync this long has its restarts in a row forgotten.
const RESTARTS_FORGOTTEN_AFTER: Duration = Duration::from_secs(60);

/// Where the daemon is in its life, as `ekho status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Loading plugins.
    Starting,
    /// The initial netlink dump is running.
    Syncing,
    /// Synced and serving.
    Running,
    /// Shutting down.
    Stopping,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Syncing => "syncing",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
        }
    }
}

/// State of the eBPF source.
#[allow(clippy::large_enum_variant)] // one value per daemon
pub enum EbpfEntry {
    Disabled,
    Unavailable(String),
    Running(EbpfSource),
}

impl PluginEntry {
    /// The status `ekho status` shows (with the live queue depth for a running plugin).
    pub fn status(&self) -> PluginStatus {
        match self {
            PluginEntry::Running { handle, .. } => handle.snapshot(),
            PluginEntry::Refused(s) => s.clone(),
        }
    }
}

/// The running daemon: the mirror, the plugins and the eBPF source; it serves the control socket
/// ([`control::Service`]).
pub struct Daemon {
    config: Config,
    mirror: Mirror,
    plugins: Mutex<Vec<Slot>>,
    ebpf: Mutex<EbpfEntry>,
    /// The conntrack source (started once the mirror is synced).
    flows: Mutex<crate::flows::Flows>,
    started: Instant,
    phase: Mutex<Phase>,
    /// Where plugins loaded at any time send their requests.
    requests: PluginRequests,
    /// One change of the plugin set at a time (reload, restart, stop, start).
    reloading: Mutex<()>,
    /// The netlink source's restarts.
    source: Mutex<SourceHealth>,
}

/// Longest wait for one plugin's worker to stop.
const PLUGIN_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where plugins send their requests to the host (plugin name, request).
type PluginRequests = tokio::sync::mpsc::UnboundedSender<(Arc<str>, Request)>;

/// The host services a plugin gets: requests go to the daemon, logs to tracing.
#[derive(Clone)]
struct PluginHost {
    name: Arc<str>,
    netns: Option<PathBuf>,
    requests: PluginRequests,
}

impl HostServices for PluginHost {
    fn request(&self, req: Request) -> abi_stable::std_types::RResult<(), RString> {
        match self.requests.send((self.name.clone(), req)) {
            Ok(()) => abi_stable::std_types::RResult::ROk(()),
            Err(_) => abi_stable::std_types::RResult::RErr("the host is shutting down".into()),
        }
    }
    fn netns(&self) -> RString {
        self.netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
            .into()
    }
    fn log(&self, level: LogLevel, message: abi_stable::std_types::RStr<'_>) {
        let plugin = &*self.name;
        match level {
            LogLevel::Error => tracing::error!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
        }
    }
}

impl Daemon {
    /// A daemon with no plugin loaded yet, over an empty mirror; with the receiving end of its
    /// plugins' requests.
    fn new(
        config: Config,
    ) -> (
        Daemon,
        tokio::sync::mpsc::UnboundedReceiver<(Arc<str>, Request)>,
    ) {
        let (requests, requests_rx) = tokio::sync::mpsc::unbounded_channel();
        let d = Daemon {
            config,
            mirror: Mirror::new(),
            plugins: Mutex::new(Vec::new()),
            ebpf: Mutex::new(EbpfEntry::Disabled),
            flows: Mutex::new(crate::flows::Flows::Disabled),
            started: Instant::now(),
            phase: Mutex::new(Phase::Starting),
            requests,
            reloading: Mutex::new(()),
            source: Mutex::new(SourceHealth {
                state: "starting",
                ..Default::default()
            }),
        };
        (d, requests_rx)
    }

    fn set_phase(&self, p: Phase) {
        *self.phase.lock().unwrap() = p;
    }

    /// Loads the configured plugins before the initial dump: the dump feeds them as it is made
    /// (their initial sync runs alongside the dump, not after it). Returns that feed.
    fn load_plugins(&self) -> Fanout {
        let mut fanout = Fanout::default();
        for pc in &self.config.plugins {
            let entry = self.load_plugin(pc, Some(&mut fanout));
            self.plugins
                .lock()
                .unwrap()
                .push(Slot::new(pc.clone(), entry));
        }
        fanout
    }

    /// How a plugin's worker reads the mirror.
    fn mirror_access(&self) -> MirrorAccess {
        let m = self.mirror.clone();
        let replay: crate::dispatch::ReplaySource = Arc::new(move |after, max, out, at_cursor| {
            m.replay_chunk_into(after, max, out, &mut *at_cursor)
        });
        let m = self.mirror.clone();
        let lookup: crate::dispatch::Lookup = Arc::new(move |k| m.get(k));
        let m = self.mirror.clone();
        let size: crate::dispatch::Size = Arc::new(move || m.len());
        let m = self.mirror.clone();
        let tc_chain: crate::dispatch::TcChain =
            Arc::new(move |target, parent, chain| m.tc_chain(target, parent, chain));
        MirrorAccess {
            replay,
            lookup,
            size,
            tc_chain,
        }
    }

    /// Loads one plugin and attaches it to the mirror (replay, then increments). A refusal is
    /// returned as a status with state `failed` and the reason.
    fn load_plugin(&self, pc: &PluginConfig, mut fanout: Option<&mut Fanout>) -> PluginEntry {
        let dir = self.config.plugin_dir();
        let mut status = PluginStatus {
            name: pc.name.clone(),
            ..Default::default()
        };
        let result = (|| -> Result<(PluginHandle, ekho_mirror::ListenerId), loader::LoadError> {
            let checked = loader::find(&pc.name, pc.path.as_deref(), &dir)?;
            status.path = checked.path.display().to_string();
            if checked.target != checked.path {
                tracing::info!(plugin = %pc.name, path = %checked.path.display(), target = %checked.target.display(), "plugin file is a link");
            }
            let lib = loader::load(checked)?;
            status.api_version = lib.api_version.clone();
            status.abi = lib.how().describe();
            status.version = lib.info.version.to_string();
            loader::check_version(&lib.info, pc.version.as_deref())?;
            let host = HostServices_TO::from_ptr(
                abi_stable::std_types::RArc::new(PluginHost {
                    name: pc.name.as_str().into(),
                    netns: self.config.netns_path(),
                    requests: self.requests.clone(),
                }),
                abi_stable::sabi_trait::TD_Opaque,
            );
            let plugin = lib.create(&pc.config_text(), host).map_err(|e| match e {
                loader::LoadError::Create { name, reason } => loader::LoadError::Create {
                    name,
                    reason: format!(
                        "{reason} (the plugin parses its [plugins.config] table{}: line numbers in its message count within that table)",
                        config_table_location(&self.config, &pc.name)
                    ),
                },
                other => other,
            })?;
            let caps = plugin.capabilities().into_result().map_err(|e| {
                loader::LoadError::Capabilities {
                    name: pc.name.clone(),
                    reason: e.to_string(),
                }
            })?;
            for g in caps.ports.names.iter() {
                if let Err(e) = glob::Pattern::new(g) {
                    return Err(loader::LoadError::Capabilities {
                        name: pc.name.clone(),
                        reason: format!("it declares the invalid port glob {:?} ({e})", g.as_str()),
                    });
                }
            }
            // Loaded before the initial dump: fed by it as it is made. Otherwise: a replay
            // read from the mirror.
            let feed = fanout.as_deref_mut().map(|f| f.feed(&pc.name));
            let streamed = feed.is_some();
            let handle = PluginHandle::start(
                plugin,
                caps,
                pc.ports.as_deref(),
                status.clone(),
                self.mirror_access(),
                feed,
            );
            let q = handle.queue.clone();
            let listener = if let Some(f) = fanout {
                f.bind(handle.queue.clone());
                self.mirror
                    .attach_synced_shared(Box::new(move |changes| q.push_shared(changes)))
            } else {
                self.mirror
                    .attach_lazy_shared(Box::new(move |changes| q.push_shared(changes)))
            };
            if !streamed {
                handle.queue.request_replay();
            }
            Ok((handle, listener))
        })();
        match result {
            Ok((handle, listener)) => {
                tracing::info!(
                    plugin = %pc.name,
                    version = %status.version,
                    api = %status.api_version,
                    path = %status.path,
                    "plugin loaded"
                );
                PluginEntry::Running { handle, listener }
            }
            Err(e) => {
                if let loader::LoadError::Layout { full, .. } = &e {
                    tracing::debug!(plugin = %pc.name, "abi_stable report:\n{full}");
                }
                tracing::error!(plugin = %pc.name, "plugin skipped: {e}");
                status.state = Some(PluginState::Failed);
                status.reason = Some(e.to_string());
                PluginEntry::Refused(status)
            }
        }
    }

    /// Hands notifier events to every running plugin that takes them.
    pub fn notify(&self, events: &[NotifierEvent]) {
        for p in self.plugins.lock().unwrap().iter() {
            if let PluginEntry::Running { handle, .. } = &p.entry {
                handle.queue.push_events(events);
            }
        }
    }

    fn ebpf_status(&self) -> Value {
        match &*self.ebpf.lock().unwrap() {
            EbpfEntry::Disabled => {
                json!({"state": "disabled", "reason": "disabled in config ([host] ebpf = false)"})
            }
            EbpfEntry::Unavailable(r) => json!({"state": "unavailable", "reason": r}),
            EbpfEntry::Running(src) => {
                let st = src.stats();
                let hooks: Vec<Value> = src
                    .hooks
                    .iter()
                    .map(|h| match &h.state {
                        HookState::Live => json!({"name": h.name, "state": "live"}),
                        HookState::FallenBack { to, reason } => {
                            json!({"name": h.name, "state": "fallen_back", "to": to, "reason": reason})
                        }
                        HookState::Unavailable { reason } => {
                            json!({"name": h.name, "state": "unavailable", "reason": reason})
                        }
                    })
                    .collect();
                json!({
                    "state": "running",
                    "events": st.events,
                    "lost": st.lost,
                    "events_by_hook": st.events_by_hook,
                    "lost_by_kind": st.lost_by_kind,
                    "lost_by_hook": st.lost_by_hook,
                    "hooks": hooks,
                })
            }
        }
    }

    /// Stops every plugin, all at once and within [`PLUGIN_STOP_TIMEOUT`] in total: shutdown
    /// is asked of each, then each is waited for until the common deadline (a hung one is not
    /// waited for).
    pub fn stop_plugins(&self) {
        let slots = std::mem::take(&mut *self.plugins.lock().unwrap());
        let mut running = Vec::new();
        for s in slots {
            if let PluginEntry::Running { handle, listener } = s.entry {
                self.mirror.detach(listener);
                handle.begin_stop();
                running.push(handle);
            }
        }
        let deadline = Instant::now() + PLUGIN_STOP_TIMEOUT;
        for mut h in running {
            let (name, state) = {
                let st = h.status.lock().unwrap();
                (st.name.clone(), st.state)
            };
            if state == Some(PluginState::Hung) {
                tracing::warn!(plugin = %name, "plugin hung: not waited for");
                continue;
            }
            if h.join_by(deadline) {
                tracing::info!(plugin = %name, "plugin stopped");
            } else {
                tracing::warn!(plugin = %name, "plugin still shutting down at the shutdown bound ({PLUGIN_STOP_TIMEOUT:?} in total): left");
            }
        }
    }

    /// Detaches a plugin from the mirror and shuts it down.
    fn stop_entry(&self, entry: PluginEntry) {
        if let PluginEntry::Running {
            mut handle,
            listener,
        } = entry
        {
            self.mirror.detach(listener);
            let hung = handle.status.lock().unwrap().state == Some(PluginState::Hung);
            if hung {
                handle.begin_stop();
                tracing::warn!(plugin = %handle.status.lock().unwrap().name, "plugin hung: left in its call");
            } else {
                handle.stop(PLUGIN_STOP_TIMEOUT);
            }
            tracing::info!(plugin = %handle.status.lock().unwrap().name, "plugin stopped");
        }
    }

    /// The running plugins' per-flow counters, as their workers last read them.
    fn plugin_flow_stats(&self) -> crate::flows::PluginFlowStats {
        self.plugins
            .lock()
            .unwrap()
            .iter()
            .filter_map(|slot| match &slot.entry {
                PluginEntry::Running { handle, .. } => {
                    let s = handle.status.lock().unwrap();
                    (!s.flow_stats.is_empty()).then(|| (s.name.clone(), s.flow_stats.clone()))
                }
                PluginEntry::Refused(_) => None,
            })
            .collect()
    }

    /// What every running plugin that takes tc filters made of them, and its counters.
    fn tc_filter_views(&self) -> Vec<TcFilterView> {
        self.plugins
            .lock()
            .unwrap()
            .iter()
            .filter_map(|slot| match &slot.entry {
                PluginEntry::Running { handle, .. }
                    if handle.caps.takes_kind(ObjectKind::TcFilter) =>
                {
                    let s = handle.status.lock().unwrap();
                    Some(TcFilterView {
                        plugin: s.name.clone(),
                        refused: s.tc_refused.clone(),
                        outcomes: s.tc_outcomes.clone(),
                        stats: s
                            .tc_stats
                            .iter()
                            .map(|st| {
                                (
                                    st.key.clone(),
                                    st.counters.first().copied().unwrap_or_default(),
                                )
                            })
                            .collect(),
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// The kernel's software counters of every filter now (a fresh `RTM_GETTFILTER` dump in
    /// the mirrored netns), `None` when it could not be read.
    fn filter_counters(&self, tc: &ekho_mirror::state::tc::Tc) -> Option<FilterCounters> {
        let netns = self.config.netns_path();
        let tc = tc.clone();
        let read = move || -> Option<FilterCounters> {
            let mut req = ekho_mirror::source::ReqSocket::new().ok()?;
            match req.filter_counters(&tc) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the filters' software counters");
                    None
                }
            }
        };
        ekho_mirror::source::run_in_netns(netns, read)
            .ok()
            .flatten()
    }

    /// Refreshes the conntrack timeouts of the flows plugins report active.
    fn keep_flows_alive(&self, ka: &mut crate::flows::KeepAlive) {
        let stats = self.plugin_flow_stats();
        self.flows.lock().unwrap().keep_alive(&stats, ka);
    }

    /// One look at every plugin: a call running past its `call_timeout_ms` marks the plugin
    /// `hung` (fed no more); a failed plugin is restarted by its policy, after its backoff.
    fn supervise(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut slots = self.plugins.lock().unwrap();
            for slot in slots.iter_mut() {
                let PluginEntry::Running { handle, listener } = &slot.entry else {
                    continue;
                };
                let state = handle.status.lock().unwrap().state;
                match state {
                    Some(PluginState::Failed) => {
                        if let Some(at) = slot.restart_at {
                            if now >= at {
                                due.push(slot.config.name.clone());
                            }
                        } else if !slot.gave_up {
                            self.plan_restart(slot);
                        }
                    }
                    Some(PluginState::Hung) | Some(PluginState::Stopped) => {}
                    _ => {
                        if state == Some(PluginState::InSync)
                            && slot.restarts_in_row > 0
                            && slot.loaded_at.elapsed() > RESTARTS_FORGOTTEN_AFTER
                        {
                            slot.restarts_in_row = 0;
                        }
                        let (Some(limit), Some(call)) =
                            (slot.config.call_timeout(), handle.clock.running())
                        else {
                            continue;
                        };
                        if call.running_for() <= limit {
                            continue;
                        }
                        let since_unix_ms = call
                            .since
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0);
                        let reason = format!(
                            "hung: its {} call has run for more than {} ms (call_timeout_ms); it is fed no more (`ekho plugin restart {}` creates it anew)",
                            call.name,
                            limit.as_millis(),
                            slot.config.name
                        );
                        tracing::error!(plugin = %slot.config.name, call = call.name, "{reason}");
                        {
                            let mut st = handle.status.lock().unwrap();
                            st.state = Some(PluginState::Hung);
                            st.hung = Some(HungCall {
                                call: call.name.into(),
                                since_unix_ms,
                            });
                            st.reason = Some(reason);
                        }
                        self.mirror.detach(*listener);
                        handle.stop_feeding();
                    }
                }
            }
        }
        for name in due {
            let _one = self.reloading.lock().unwrap();
            self.recreate(&name, false);
        }
    }

    /// A plugin just failed: schedules its restart by its policy, or gives up.
    fn plan_restart(&self, slot: &mut Slot) {
        let PluginEntry::Running { handle, .. } = &slot.entry else {
            return;
        };
        let name = &slot.config.name;
        let limit = slot
            .config
            .restart_limit
            .unwrap_or(crate::config::DEFAULT_RESTART_LIMIT);
        let mut st = handle.status.lock().unwrap();
        let why = st.reason.clone().unwrap_or_default();
        if slot.config.restart.unwrap_or_default() == crate::config::RestartPolicy::Never {
            slot.gave_up = true;
            tracing::error!(plugin = %name, "plugin failed; not restarted (restart = \"never\")");
            return;
        }
        if slot.restarts_in_row >= limit {
            slot.gave_up = true;
            st.reason = Some(format!(
                "{why}; given up after {} restarts in a row (restart_limit = {limit}; `ekho plugin restart {name}` tries again)",
                slot.restarts_in_row
            ));
            tracing::error!(plugin = %name, "plugin failed again; given up after {} restarts in a row", slot.restarts_in_row);
            return;
        }
        let delay = slot.config.restart_backoff(slot.restarts_in_row);
        slot.restart_at = Some(Instant::now() + delay);
        st.reason = Some(format!(
            "{why}; restarting in {} ms (restart {} of {limit})",
            delay.as_millis(),
            slot.restarts_in_row + 1
        ));
        tracing::warn!(plugin = %name, "plugin failed; restarting in {delay:?} (restart {} of {limit})", slot.restarts_in_row + 1);
    }

    /// Creates plugin `name` anew (shutting down what runs): its own replay (begin/end sync,
    /// mark and sweep) reconciles what the old one left. `manual`: asked by the operator, the
    /// restarts in a row start again. Returns whether such a plugin is configured. The caller
    /// holds `reloading`.
    fn recreate(&self, name: &str, manual: bool) -> bool {
        let (old, config) = {
            let mut slots = self.plugins.lock().unwrap();
            let Some(slot) = slots.iter_mut().find(|s| s.config.name == name) else {
                return false;
            };
            let mut placeholder = slot.entry.status();
            placeholder.state = Some(PluginState::Syncing);
            placeholder.reason = None;
            placeholder.hung = None;
            let old = std::mem::replace(&mut slot.entry, PluginEntry::Refused(placeholder));
            (old, slot.config.clone())
        };
        self.stop_entry(old);
        tracing::info!(plugin = %name, manual, "plugin restarting: created anew and replayed");
        let entry = self.load_plugin(&config, None);
        let mut slots = self.plugins.lock().unwrap();
        if let Some(slot) = slots.iter_mut().find(|s| s.config.name == name) {
            slot.restarts += 1;
            slot.restarts_in_row = if manual { 0 } else { slot.restarts_in_row + 1 };
            slot.restart_at = None;
            slot.gave_up = false;
            slot.loaded_at = Instant::now();
            match &entry {
                PluginEntry::Running { handle, .. } => {
                    handle.status.lock().unwrap().restarts = slot.restarts
                }
                PluginEntry::Refused(_) => {}
            }
            let mut entry = entry;
            if let PluginEntry::Refused(st) = &mut entry {
                st.restarts = slot.restarts;
            }
            slot.entry = entry;
        }
        true
    }

    /// `ekho plugin restart|stop|start NAME`.
    pub fn plugin_action(&self, action: &str, name: &str) -> Result<Value, String> {
        let _one = self.reloading.lock().unwrap();
        let state = {
            let slots = self.plugins.lock().unwrap();
            let Some(slot) = slots.iter().find(|s| s.config.name == name) else {
                let known: Vec<&str> = slots.iter().map(|s| s.config.name.as_str()).collect();
                return Err(format!(
                    "no plugin {name:?} in the configuration; configured: {}",
                    known.join(", ")
                ));
            };
            slot.entry.status().state
        };
        match action {
            "restart" => {
                self.recreate(name, true);
            }
            "start" => {
                if matches!(
                    state,
                    Some(PluginState::InSync) | Some(PluginState::Syncing)
                ) {
                    return Err(format!(
                        "plugin {name:?} is running already (`ekho plugin restart {name}` creates it anew)"
                    ));
                }
                self.recreate(name, true);
            }
            "stop" => {
                if state == Some(PluginState::Stopped) {
                    return Err(format!("plugin {name:?} is stopped already"));
                }
                let old = {
                    let mut slots = self.plugins.lock().unwrap();
                    let slot = slots.iter_mut().find(|s| s.config.name == name).unwrap();
                    let mut st = slot.entry.status();
                    st.state = Some(PluginState::Stopped);
                    st.reason = Some(format!(
                        "stopped by `ekho plugin stop` (`ekho plugin start {name}` starts it)"
                    ));
                    st.queue_depth = 0;
                    slot.restart_at = None;
                    slot.gave_up = true;
                    std::mem::replace(&mut slot.entry, PluginEntry::Refused(st))
                };
                self.stop_entry(old);
            }
            other => {
                return Err(format!(
                    "unknown plugin action {other:?}; one of: restart, stop, start"
                ))
            }
        }
        let slots = self.plugins.lock().unwrap();
        let st = slots
            .iter()
            .find(|s| s.config.name == name)
            .map(|s| s.entry.status())
            .unwrap_or_default();
        Ok(json!({"name": name, "action": action, "state": st.state, "reason": st.reason}))
    }

    /// Re-reads the config file: plugins added are loaded and replayed, removed ones shut down,
    /// changed ones (any key of their table) restarted, refused ones tried again; the others and
    /// the mirror are left alone. A config that does not parse is refused whole and the running
    /// one stays. `[host]` changes need a restart (reported, not applied).
    pub fn reload(&self) -> Result<Value, String> {
        let _one = self.reloading.lock().unwrap();
        let crate::config::ConfigSource::File(path) = &self.config.source else {
            return Err("no config file to re-read: this daemon runs the built-in default (start it with --config FILE)".into());
        };
        let new =
            Config::from_file(path).map_err(|e| format!("{e}; the running configuration stays"))?;
        enum Action {
            Keep,
            Restart,
            Remove,
        }
        let plan: Vec<(String, Action)> = self
            .plugins
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                let a = match new.plugins.iter().find(|p| p.name == s.config.name) {
                    None => Action::Remove,
                    Some(p) if *p != s.config => Action::Restart,
                    Some(_) if matches!(s.entry, PluginEntry::Refused(_)) => Action::Restart,
                    Some(_) => Action::Keep,
                };
                (s.config.name.clone(), a)
            })
            .collect();
        let (mut added, mut removed, mut restarted, mut unchanged) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let take = |name: &str| {
            let mut v = self.plugins.lock().unwrap();
            let i = v.iter().position(|s| s.config.name == name)?;
            Some(v.remove(i))
        };
        for (name, a) in &plan {
            match a {
                Action::Keep => unchanged.push(name.clone()),
                Action::Remove | Action::Restart => {
                    if let Some(s) = take(name) {
                        tracing::info!(plugin = %name, "reload: stopping");
                        self.stop_entry(s.entry);
                    }
                    if matches!(a, Action::Remove) {
                        removed.push(name.clone());
                    } else {
                        restarted.push(name.clone());
                    }
                }
            }
        }
        for pc in &new.plugins {
            let known = plan.iter().find(|(n, _)| *n == pc.name);
            if matches!(known, Some((_, Action::Keep))) {
                continue;
            }
            if known.is_none() {
                added.push(pc.name.clone());
            }
            let entry = self.load_plugin(pc, None);
            self.plugins
                .lock()
                .unwrap()
                .push(Slot::new(pc.clone(), entry));
        }
        // The config's order, as at start-up.
        self.plugins.lock().unwrap().sort_by_key(|s| {
            new.plugins
                .iter()
                .position(|p| p.name == s.config.name)
                .unwrap_or(usize::MAX)
        });
        let host_ignored = new.host != self.config.host || new.flows != self.config.flows;
        if host_ignored {
            tracing::warn!(
                "reload: [host] or [flows] changed; their keys take effect at the next start"
            );
        }
        tracing::info!(?added, ?removed, ?restarted, "configuration reloaded");
        Ok(json!({
            "config": path.display().to_string(),
            "added": added,
            "removed": removed,
            "restarted": restarted,
            "unchanged": unchanged,
            "host_changed_needs_restart": host_ignored,
        }))
    }
}

/// The control socket's requests, answered from the daemon's state.
impl control::Service for Daemon {
    /// `ekho status --json`.
    fn status(&self) -> Value {
        let ms = self.mirror.stats();
        let plugins: Vec<Value> = self
            .plugins
            .lock()
            .unwrap()
            .iter()
            .map(|p| serde_json::to_value(p.entry.status()).unwrap())
            .collect();
        let source = {
            let h = self.source.lock().unwrap();
            json!({
                "state": h.state,
                "restarts": h.restarts,
                "last_error": h.last_error,
                "last_error_unix_ms": h.last_error_at.map(unix_ms),
            })
        };
        let progress = self.mirror.dump_progress();
        json!({
            "ekho": {
                "state": self.phase.lock().unwrap().name(),
                "version": env!("CARGO_PKG_VERSION"),
                "api_version": API_VERSION,
                "pid": std::process::id(),
                "uptime_s": self.started.elapsed().as_secs(),
                "config": self.config.source.to_string(),
                "netns": self.config.host.netns.clone().unwrap_or_else(|| "(caller's)".into()),
                "plugin_dir": self.config.plugin_dir().display().to_string(),
            },
            "mirror": {
                "synced": ms.synced,
                "objects": ms.objects,
                "messages": ms.messages,
                "overruns": ms.overruns,
                "socket_overruns": ms.socket_overruns,
                "resyncs": ms.resyncs,
                "resynced": ms.resynced,
                "last_resync_ms": ms.last_resync_ms,
                "changes": ms.changes,
                "route_attr_sets": ms.route_attr_sets,
                "undecodable": ms.undecodable,
                "source": source,
                "dump_progress": {
                    "dumping": progress.dumping.map(|k| k.plural()),
                    "messages": progress.messages,
                },
            },
            "ebpf": self.ebpf_status(),
            "conntrack": self.flows.lock().unwrap().status(),
            "plugins": plugins,
        })
    }

    /// `ekho plugins --json`.
    fn plugins(&self) -> Value {
        let v: Vec<Value> = self
            .plugins
            .lock()
            .unwrap()
            .iter()
            .map(|slot| {
                let s = slot.entry.status();
                let mut v = json!({
                    "name": s.name,
                    "version": s.version,
                    "api_version": s.api_version,
                    "abi": s.abi,
                    "path": s.path,
                    "state": s.state,
                });
                match &slot.entry {
                    PluginEntry::Running { handle, .. } => {
                        v["capabilities"] =
                            capabilities_json(&handle.caps, slot.config.ports.as_deref());
                    }
                    PluginEntry::Refused(_) => v["reason"] = s.reason.into(),
                }
                v
            })
            .collect();
        json!({"host_api_version": API_VERSION, "plugins": v})
    }

    /// `ekho dump --json`: one object keyed by kind.
    fn dump(
        &self,
        kind: Option<ObjectKind>,
        counts: bool,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        // The kinds in their order, each with its list (empty lists too), written one object
        // at a time: a full BGP table never exists as one JSON value.
        let kinds: Vec<ObjectKind> = ObjectKind::ALL
            .iter()
            .copied()
            // Flows (the offload candidates) are `ekho dump flows`, in conntrack's wording
            // with what the kernel alone knows (timeouts, counters, every entry); tc's kinds
            // are `ekho dump qdiscs|classes|filters|actions`, in tc's.
            .filter(|&k| !skipped_in_dump(k) && kind.is_none_or(|x| x == k))
            .collect();
        let mut objects = self.mirror.dump(kind);
        objects.sort_by_key(|o| o.kind().index());
        let names: std::collections::HashMap<u32, String> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Link(l) => Some((l.ifindex, l.ifname.to_string())),
                _ => None,
            })
            .collect();
        // Each kind's length, from the same copy of the mirror as the lists.
        let mut count = vec![0usize; ObjectKind::ALL.len()];
        for o in &objects {
            count[o.kind().index()] += 1;
        }
        let mut objects = objects.iter().peekable();
        out.write_all(b"{")?;
        for (i, k) in kinds.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            if counts {
                serde_json::to_writer(&mut *out, &format!("#{}", k.plural()))?;
                write!(out, ":{},", count[k.index()])?;
            }
            serde_json::to_writer(&mut *out, k.plural())?;
            out.write_all(b":[")?;
            let mut first = true;
            while let Some(o) = objects.next_if(|o| o.kind().index() <= k.index()) {
                if o.kind() != *k {
                    continue;
                }
                let mut j = o.to_json();
                // Like iproute2: a lower device (veth peer) in the same netns is named.
                if let Object::Link(l) = o {
                    if let (true, Some(name), Some(obj)) =
                        (l.link_netnsid < 0, names.get(&l.link), j.as_object_mut())
                    {
                        obj.shift_remove("link_index");
                        obj.insert("link".into(), name.as_str().into());
                    }
                }
                if !first {
                    out.write_all(b",")?;
                }
                first = false;
                serde_json::to_writer(&mut *out, &j)?;
            }
            out.write_all(b"]")?;
        }
        out.write_all(b"}")
    }

    /// `ekho dump flows --json`.
    fn flows(&self, stats: bool) -> Value {
        let plugins = if stats {
            self.plugin_flow_stats()
        } else {
            Vec::new()
        };
        self.flows.lock().unwrap().dump(stats, &plugins)
    }

    /// `ekho dump qdiscs|classes|filters|chains|actions --json`; each filter with what every
    /// plugin taking filters made of it (`ekho_offload`), and with `stats` the kernel's software
    /// counters read now (tc's `-s` `stats`, per action) and the plugins' (`ekho_stats`).
    fn dump_tc(&self, what: ekho_mirror::tcshow::Show, stats: bool) -> Value {
        use ekho_mirror::tcshow::Show;
        let names: ekho_mirror::tcshow::Names = self
            .mirror
            .dump(Some(ObjectKind::Link))
            .into_iter()
            .filter_map(|o| match o {
                Object::Link(l) => Some((l.ifindex, l.ifname.to_string())),
                _ => None,
            })
            .collect();
        let tc = self.mirror.tc();
        let mut v = ekho_mirror::tcshow::json(&tc, what, &names);
        if what == Show::Filters {
            let kernel = stats.then(|| self.filter_counters(&tc));
            let plugins = self.tc_filter_views();
            if let Some(list) = v.as_array_mut() {
                for (f, e) in tc.filters.values().zip(list.iter_mut()) {
                    annotate_filter(f, e, &plugins, kernel.as_ref(), stats);
                }
            }
        }
        v
    }

    fn watch(&self, sink: ChangeSink) -> WatchId {
        WatchId(self.mirror.attach_lazy(sink).0)
    }

    fn unwatch(&self, id: WatchId) {
        self.mirror.detach(ekho_mirror::ListenerId(id.0));
    }

    /// `ekho plugin ACTION NAME`.
    fn plugin_action(&self, action: &str, name: &str) -> Value {
        match Daemon::plugin_action(self, action, name) {
            Ok(v) => v,
            Err(e) => json!({ "error": e }),
        }
    }

    /// `ekho reload`.
    fn reload(&self) -> Value {
        match Daemon::reload(self) {
            Ok(v) => v,
            Err(e) => json!({ "error": e }),
        }
    }
}

/// The capabilities as `ekho plugins` shows them.
pub fn capabilities_json(c: &Capabilities, ports_override: Option<&[String]>) -> Value {
    let limits: serde_json::Map<String, Value> = c
        .limits
        .iter()
        .map(|l| (l.kind.name().to_string(), l.max_entries.into()))
        .collect();
    let ports = match ports_override {
        Some(g) => json!({"all": false, "names": g, "drivers": [], "from": "config"}),
        None => json!({
            "all": c.ports.all,
            "names": c.ports.names.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "drivers": c.ports.drivers.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "from": "plugin",
        }),
    };
    json!({
        "kinds": c.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "families": if c.families.is_empty() { vec!["all".to_string()] } else { c.families.iter().map(|f| f.name()).collect() },
        "notifiers": c.notifiers.iter().map(|n| n.name()).collect::<Vec<_>>(),
        "ports": ports,
        "limits": limits,
        "features": {
            "max_ecmp_width": c.features.max_ecmp_width,
            "nexthop_objects": c.features.nexthop_objects,
            "routes_all_ports": c.features.routes_all_ports,
        },
        "flows": {
            "nat": c.flows.nat,
            "protocols": c.flows.protocols.iter().map(|p| ekho_plugin_api::object::flow::proto_name(*p)).collect::<Vec<_>>(),
        },
        "tc": {
            "all": c.tc.all,
            "classifiers": c.tc.classifiers.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "flower_keys": c.tc.flower_keys.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "actions": c.tc.actions.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "mirred": c.tc.mirred.iter().map(|m| m.name()).collect::<Vec<_>>(),
            // What the list takes: all four when empty (it fails open), none without mirred.
            "mirred_taken": c.tc.mirred_taken().iter().map(|m| m.name()).collect::<Vec<_>>(),
            "ingress": c.tc.ingress,
            "egress": c.tc.egress,
            "shared_blocks": c.tc.shared_blocks,
            "goto_chain": c.tc.goto_chain,
        },
    })
}

/// The signals the daemon handles, installed before anything else: from the first moment
/// SIGTERM and SIGINT stop it cleanly and SIGHUP (a reload) no longer kills it.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// Until SIGTERM or SIGINT (during start-up: a SIGHUP there is logged and ignored, the
    /// config having just been read); its name.
    async fn stop(&mut self) -> &'static str {
        loop {
            match self.next().await {
                Some(s) => return s,
                None => tracing::warn!(
                    "SIGHUP during start-up: ignored (send it again once `ekho status` says running)"
                ),
            }
        }
    }

    /// The next signal: `Some(name)` of a stop signal, `None` for SIGHUP.
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            _ = self.term.recv() => Some("SIGTERM"),
            _ = self.int.recv() => Some("SIGINT"),
            _ = self.hup.recv() => None,
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT; SIGHUP reloads the config.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let netns = netns_to_mirror(&config)?;
    // One daemon per namespace, whatever its control socket: held until the process ends.
    let lock = crate::instance::acquire(netns.as_deref(), Path::new(crate::instance::LOCK_DIR))?;
    tracing::debug!(lock = %lock.path.display(), "this daemon's namespace lock");
    let socket = config.control_socket();
    control::ensure_not_running(&socket)?;
    // Take the socket first: a second daemon started at the same time fails here, before it
    // touches any plugin.
    let listener = control::bind(&socket).context("control socket")?;
    let result = run_bound(config, netns, listener, &socket, &mut signals).await;
    let _ = std::fs::remove_file(&socket);
    result
}

/// The daemon's life once its control socket is bound, step by step.
async fn run_bound(
    config: Config,
    netns: Option<PathBuf>,
    listener: tokio::net::UnixListener,
    socket: &Path,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    tracing::info!(config = %config.source, netns = %netns.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(caller's)".into()), plugin_dir = %config.plugin_dir().display(), "ekho starting");
    let metrics = match &config.host.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("[host] metrics = {addr:?}: cannot listen there (another process on that port? set another ADDR:PORT)"))?,
        ),
        None => None,
    };
    let (daemon, requests_rx) = Daemon::new(config);
    let daemon = Arc::new(daemon);
    if let Some(l) = metrics {
        let d = daemon.clone();
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics at /metrics");
        tokio::spawn(crate::metrics::serve(
            l,
            Arc::new(move || control::Service::status(&*d)),
        ));
    }
    // The control socket answers from now on (`ekho status` says `starting`, then `syncing`).
    tokio::spawn(control::serve(listener, daemon.clone()));
    // The watchdog and restarts, on a thread of their own (a restart may block).
    // It also feeds systemd's watchdog: a daemon stuck there is restarted by systemd.
    let weak = Arc::downgrade(&daemon);
    let mut watchdog = crate::systemd::Watchdog::from_env();
    std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            let mut ka = crate::flows::KeepAlive::default();
            let mut ka_at = Instant::now();
            while let Some(d) = weak.upgrade() {
                if *d.phase.lock().unwrap() == Phase::Stopping {
                    break;
                }
                d.supervise();
                if ka_at.elapsed() >= KEEP_ALIVE_EVERY {
                    ka_at = Instant::now();
                    d.keep_flows_alive(&mut ka);
                }
                // Armed by systemd once READY=1 is sent (start-up has TimeoutStartSec).
                if *d.phase.lock().unwrap() == Phase::Running {
                    watchdog.feed();
                }
                drop(d);
                std::thread::sleep(SUPERVISE_EVERY);
            }
        })
        .context("spawning the supervisor thread")?;

    let fanout = daemon.load_plugins();
    daemon.set_phase(Phase::Syncing);
    let opts = ekho_mirror::source::SourceOptions {
        fail_after_sync: std::env::var(FAULT_SOURCE_FAIL_AFTER_MS)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
        ..Default::default()
    };
    if opts.fail_after_sync.is_some() {
        tracing::warn!("{FAULT_SOURCE_FAIL_AFTER_MS} is set: the netlink source will be broken after its sync (fault injection for tests)");
    }
    let mut source = start_mirror(&daemon, netns.clone(), fanout, opts);
    tokio::select! {
        r = wait_for_sync(&daemon.mirror, &mut source) => {
            if let Err(e) = r {
                // The plugins were loaded for the initial dump: let them release what they hold.
                stop_plugins(&daemon).await?;
                return Err(e);
            }
        }
        s = signals.stop() => {
            tracing::info!("{s} during start-up: stopping");
            return shutdown(&daemon).await;
        }
    }
    if daemon.config.host.ebpf.unwrap_or(true) {
        let entry = start_ebpf(&daemon, netns.clone());
        *daemon.ebpf.lock().unwrap() = entry;
    }
    let (cfg, ns) = (daemon.config.flows.clone(), netns.clone());
    let mirror = daemon.mirror.clone();
    let flows =
        tokio::task::spawn_blocking(move || crate::flows::Flows::start(&cfg, ns, &mirror)).await?;
    *daemon.flows.lock().unwrap() = flows;
    tokio::spawn(serve_plugin_requests(daemon.clone(), requests_rx));
    daemon.set_phase(Phase::Running);
    tracing::info!(socket = %socket.display(), "ekho running");
    crate::systemd::ready();

    daemon.source.lock().unwrap().state = "running";
    tokio::spawn(supervise_source(daemon.clone(), netns.clone(), source));
    let netns_id = netns.as_deref().and_then(netns_inode);
    let mut netns_check = tokio::time::interval(NETNS_CHECK_EVERY);
    loop {
        let signal = tokio::select! {
            s = signals.next() => s,
            _ = netns_check.tick() => {
                if let (Some(p), Some(id)) = (&netns, netns_id) {
                    if netns_inode(p) != Some(id) {
                        let e = format!(
                            "the mirrored network namespace {} was deleted (or replaced): stopping, not to mirror a ghost",
                            p.display()
                        );
                        tracing::error!("{e}");
                        shutdown(&daemon).await?;
                        anyhow::bail!("{e}");
                    }
                }
                continue;
            }
        };
        match signal {
            Some(s) => {
                tracing::info!("{s}: stopping");
                break;
            }
            None => {
                tracing::info!("SIGHUP: reloading the configuration");
                crate::systemd::reloading();
                let d = daemon.clone();
                match tokio::task::spawn_blocking(move || d.reload()).await? {
                    Ok(_) => {}
                    Err(e) => tracing::error!("reload refused: {e}"),
                }
                crate::systemd::ready();
            }
        }
    }
    shutdown(&daemon).await
}

/// Environment variable, for tests only (fault injection): the first netlink source's event
/// socket is broken this many ms after the initial dump
/// ([`SourceOptions::fail_after_sync`](ekho_mirror::source::SourceOptions::fail_after_sync)), so
/// that the source fails through the path of a real socket error. Unset in production.
pub const FAULT_SOURCE_FAIL_AFTER_MS: &str = "EKHO_FAULT_SOURCE_FAIL_AFTER_MS";

/// The wait before the first restart of a failed netlink source; doubled for each failure in a
/// row, up to [`SOURCE_RESTART_MAX_DELAY`].
const SOURCE_RESTART_DELAY: Duration = Duration::from_millis(500);

/// The longest wait before restarting a failed netlink source.
const SOURCE_RESTART_MAX_DELAY: Duration = Duration::from_secs(30);

/// A source that ran this long after its sync has its failures in a row forgotten.
const SOURCE_FAILURES_FORGOTTEN_AFTER: Duration = Duration::from_secs(60);

/// The netlink source's health, as `ekho status` shows it (`mirror.source`).
#[derive(Debug, Default)]
struct SourceHealth {
    /// `starting`, `running`, `restarting` (failed, its restart pending or resyncing).
    state: &'static str,
    /// Restarts after a failure.
    restarts: u64,
    /// Why it last failed, and when.
    last_error: Option<String>,
    last_error_at: Option<std::time::SystemTime>,
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Watches the synced netlink source: should it fail, records why (status `mirror.source`) and
/// starts a new one (after a delay growing with failures in a row), whose full dump is
/// reconciled into the mirror by mark and sweep: the plugins get what changed while no source
/// ran. Runs until the daemon's process ends.
async fn supervise_source(
    daemon: Arc<Daemon>,
    netns: Option<PathBuf>,
    mut source: tokio::task::JoinHandle<Option<SourceError>>,
) {
    let mut failures_in_row = 0u32;
    let mut synced_at = Instant::now();
    loop {
        let why = match (&mut source).await {
            Ok(Some(e)) => e.to_string(),
            Ok(None) => "it stopped without an error".into(),
            Err(e) => format!("its task ended: {e}"),
        };
        if synced_at.elapsed() >= SOURCE_FAILURES_FORGOTTEN_AFTER {
            failures_in_row = 0;
        }
        failures_in_row += 1;
        let delay = SOURCE_RESTART_DELAY
            .saturating_mul(1 << (failures_in_row - 1).min(16))
            .min(SOURCE_RESTART_MAX_DELAY);
        let n = {
            let mut h = daemon.source.lock().unwrap();
            h.restarts += 1;
            h.state = "restarting";
            h.last_error = Some(why.clone());
            h.last_error_at = Some(std::time::SystemTime::now());
            h.restarts
        };
        tracing::error!(
            restart = n,
            "netlink source failed: {why}; restarting it in {delay:?} with a full resync"
        );
        tokio::time::sleep(delay).await;
        let before = daemon.mirror.syncs();
        let t0 = Instant::now();
        source = start_mirror(
            &daemon,
            netns.clone(),
            Fanout::default(),
            ekho_mirror::source::SourceOptions::default(),
        );
        // Until its dump is reconciled (or it fails again: then the loop records that).
        while daemon.mirror.syncs() == before && !source.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if daemon.mirror.syncs() != before {
            synced_at = Instant::now();
            daemon.source.lock().unwrap().state = "running";
            tracing::info!(
                restart = n,
                objects = ?daemon.mirror.stats().objects,
                "netlink source restarted: resynced in {:?}",
                t0.elapsed()
            );
        }
    }
}

/// How often the daemon checks that the namespace it mirrors still exists.
const NETNS_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The (device, inode) of the namespace at `path`, if it exists.
fn netns_inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The namespace to mirror (`None`: the caller's), checked to exist; the netlink and eBPF
/// sources enter it.
fn netns_to_mirror(config: &Config) -> anyhow::Result<Option<PathBuf>> {
    let netns = config.netns_path();
    if let Some(p) = &netns {
        if !p.exists() {
            anyhow::bail!(
                "[host] netns = {:?}: {} does not exist (create it with `ip netns add NAME`, or remove the key to mirror the caller's namespace)",
                config.host.netns.clone().unwrap_or_default(),
                p.display()
            );
        }
    }
    Ok(netns)
}

/// Starts the netlink source feeding the mirror; its initial dump streams to the plugins in
/// `fanout`. The task ends with the reason the source stopped, if it failed.
fn start_mirror(
    daemon: &Daemon,
    netns: Option<PathBuf>,
    fanout: Fanout,
    opts: ekho_mirror::source::SourceOptions,
) -> tokio::task::JoinHandle<Option<SourceError>> {
    let src_cfg = SourceConfig {
        netns,
        rcvbuf: daemon.config.host.netlink_rcvbuf.unwrap_or(DEFAULT_RCVBUF),
    };
    let mirror = daemon.mirror.clone();
    let stream: Option<Box<dyn ekho_mirror::source::InitialStream>> = if fanout.is_empty() {
        None
    } else {
        Some(Box::new(fanout))
    };
    tokio::spawn(async move {
        match ekho_mirror::source::run_streaming(mirror, src_cfg, opts, stream).await {
            Err(e) => {
                tracing::error!("netlink source stopped: {e}");
                Some(e)
            }
            Ok(()) => None,
        }
    })
}

/// Waits for the mirror's initial dump to complete (at most 60 s), or fails with the reason the
/// source stopped first.
async fn wait_for_sync(
    mirror: &Mirror,
    source: &mut tokio::task::JoinHandle<Option<SourceError>>,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while !mirror.stats().synced {
        if source.is_finished() {
            let (e, errno) = match source.await {
                Ok(Some(e)) => (e.to_string(), e.errno()),
                Ok(None) => (String::new(), None),
                Err(e) => (e.to_string(), None),
            };
            let hint = if errno == Some(libc::EPERM) {
                " (entering a network namespace and forcing the socket buffer need root: CAP_SYS_ADMIN, CAP_NET_ADMIN)"
            } else {
                ""
            };
            anyhow::bail!("the netlink source failed before the initial dump completed: {e}{hint}");
        }
        if t0.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("initial netlink dump did not complete within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(objects = ?mirror.stats().objects, "mirror synced in {:?}", t0.elapsed());
    Ok(())
}

/// Starts the eBPF source: notifier events go to the plugins, ring-buffer losses and
/// neighbours created without a netlink message ask the mirror for a re-dump.
fn start_ebpf(daemon: &Arc<Daemon>, netns: Option<PathBuf>) -> EbpfEntry {
    let d = Arc::downgrade(daemon);
    let m_ev = daemon.mirror.clone();
    let events: ekho_ebpf::EventSink = Arc::new(move |ev: Vec<NotifierEvent>| {
        // The kernel creates some neighbours without any netlink message (NOARP entries made
        // by the output path, e.g. on lo): a neigh_create seen in the kernel asks the mirror
        // for a targeted neighbour re-dump, which emits only what differs.
        if ev
            .iter()
            .any(|e| e.kind == NotifierKind::Neighbour && e.event.as_str() == "neigh_create")
        {
            m_ev.request_resync(&[ObjectKind::Neighbour]);
        }
        if let Some(d) = d.upgrade() {
            d.notify(&ev);
        }
    });
    let m_loss = daemon.mirror.clone();
    let loss: ekho_ebpf::LossSink = Arc::new(move |kinds: &[ObjectKind]| {
        tracing::warn!(
            ?kinds,
            "eBPF ring buffer lost events; re-dumping the affected kinds"
        );
        m_loss.request_resync(kinds);
    });
    match EbpfSource::start(EbpfConfig { netns }, events, loss) {
        Ok(src) => {
            log_hooks(&src);
            EbpfEntry::Running(src)
        }
        Err(e) => {
            let mut why = e.to_string();
            if e.errno() == Some(libc::EPERM) {
                why.push_str("; loading BPF needs CAP_BPF and CAP_PERFMON (or root)");
            }
            tracing::warn!("{why}");
            EbpfEntry::Unavailable(why)
        }
    }
}

/// Logs how many eBPF hooks are live, fallen back or unavailable (each at debug).
fn log_hooks(src: &EbpfSource) {
    let (mut live, mut fell, mut none) = (0, 0, 0);
    for h in &src.hooks {
        match &h.state {
            HookState::Live => live += 1,
            HookState::FallenBack { to, reason } => {
                fell += 1;
                tracing::debug!(hook = %h.name, to = %to, "eBPF hook fell back: {reason}")
            }
            HookState::Unavailable { reason } => {
                none += 1;
                tracing::debug!(hook = %h.name, "eBPF hook unavailable: {reason}")
            }
        }
    }
    tracing::info!(
        "eBPF: {live} hooks live, {fell} fallen back, {none} unavailable (`ekho status` lists them)"
    );
}

/// Carries out the plugins' requests to the host (next-hop resolution, flows handed back),
/// until every plugin's sender is gone.
async fn serve_plugin_requests(
    daemon: Arc<Daemon>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<(Arc<str>, Request)>,
) {
    let mirror = daemon.mirror.clone();
    while let Some((plugin, req)) = requests.recv().await {
        match req {
            Request::ReleaseFlow { key } => {
                let d = daemon.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let r = d.flows.lock().unwrap().release(&key);
                    (r, key)
                })
                .await;
                match r {
                    Ok((Ok(()), key)) => tracing::debug!(%plugin, ?key, "flow handed back"),
                    Ok((Err(e), _)) => tracing::debug!(%plugin, "flow not handed back: {e}"),
                    Err(e) => tracing::warn!(%plugin, "release task: {e}"),
                }
            }
            Request::ResolveNeighbour { ifindex, addr } => {
                let m = mirror.clone();
                let r =
                    tokio::task::spawn_blocking(move || m.resolve_neighbour(ifindex, addr)).await;
                match r {
                    Ok(Ok(())) => {
                        tracing::debug!(%plugin, %addr, ifindex, "next-hop resolution requested")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%plugin, %addr, ifindex, "cannot resolve next hop: {e}")
                    }
                    Err(e) => tracing::warn!(%plugin, "resolve task: {e}"),
                }
            }
            other => tracing::warn!(%plugin, ?other, "request not handled by this host"),
        }
    }
}

/// Stops every plugin (off the async threads: a plugin's shutdown may block).
async fn stop_plugins(daemon: &Arc<Daemon>) -> anyhow::Result<()> {
    let d = daemon.clone();
    tokio::task::spawn_blocking(move || d.stop_plugins()).await?;
    Ok(())
}

/// Stops the plugins, then the eBPF source.
async fn shutdown(daemon: &Arc<Daemon>) -> anyhow::Result<()> {
    daemon.set_phase(Phase::Stopping);
    crate::systemd::stopping();
    stop_plugins(daemon).await?;
    *daemon.ebpf.lock().unwrap() = EbpfEntry::Disabled;
    *daemon.flows.lock().unwrap() = crate::flows::Flows::Disabled;
    tracing::info!("ekho stopped");
    Ok(())
}

/// ` at FILE:LINE` of plugin `name`'s `[plugins.config]` header, when it can be found.
fn config_table_location(config: &Config, name: &str) -> String {
    let crate::config::ConfigSource::File(path) = &config.source else {
        return String::new();
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let mut in_plugin = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("name") && t.contains(&format!("\"{name}\"")) {
            in_plugin = true;
        } else if t == "[[plugins]]" {
            in_plugin = false;
        } else if in_plugin && t == "[plugins.config]" {
            return format!(" at {}:{}", path.display(), i + 2);
        }
    }
    String::new()
}

/// Kinds `ekho dump` (the whole state) leaves to their own views: flows (`ekho dump flows`)
/// and tc's (`ekho dump qdiscs|classes|filters|actions`).
fn skipped_in_dump(k: ObjectKind) -> bool {
    k == ObjectKind::Flow || ekho_mirror::state::tc::is_tc_kind(k)
}

/// The kernel's software counters per filter (mirror key), per action.
type FilterCounters = std::collections::BTreeMap<
    ekho_mirror::state::tc::FilterKey,
    Vec<ekho_mirror::source::SwCounters>,
>;

/// One plugin's view of the tc filters, for `ekho dump filters`.
struct TcFilterView {
    plugin: String,
    refused: std::collections::BTreeMap<ekho_plugin_api::ObjectKey, crate::dispatch::TcRefusal>,
    outcomes: std::collections::BTreeMap<ekho_plugin_api::ObjectKey, crate::dispatch::TcOutcome>,
    stats: std::collections::HashMap<ekho_plugin_api::ObjectKey, ekho_plugin_api::ObjectCounters>,
}

/// Adds to a filter's `tc -j` entry what the plugins made of it (`ekho_offload`: plugin,
/// outcome, the reason of an `unsupported` or a failure, the host's or the plugin's) and, with
/// `stats`, the kernel's counters per action (`stats`, tc's `-s -j` names) and the plugins'
/// (`ekho_stats`).
fn annotate_filter(
    f: &ekho_mirror::netlink::tc::Filter,
    e: &mut Value,
    plugins: &[TcFilterView],
    kernel: Option<&Option<FilterCounters>>,
    stats: bool,
) {
    if f.handle == 0 {
        return;
    }
    let key = ObjectKey::TcFilter {
        target: ekho_mirror::netlink::tc_objects::target(f.target),
        parent: f.parent,
        chain: f.chain,
        prio: f.prio,
        handle: f.handle,
    };
    let mut offload = Vec::new();
    let mut ekho_stats = Vec::new();
    let now = ekho_plugin_api::monotonic_ns();
    for p in plugins {
        if let Some(r) = p.refused.get(&key) {
            offload.push(json!({"plugin": p.plugin, "outcome": "unsupported", "reason": r.reason}));
        } else if let Some(o) = p.outcomes.get(&key) {
            let mut e = json!({"plugin": p.plugin, "outcome": o.outcome});
            if let Some(r) = &o.reason {
                e["reason"] = r.as_str().into();
            }
            offload.push(e);
        }
        if let (true, Some(c)) = (stats, p.stats.get(&key)) {
            let mut s = json!({"plugin": p.plugin, "packets": c.packets, "bytes": c.bytes,
                "drops": c.drops, "lastused": c.lastused});
            if c.lastused != 0 {
                s["last_used"] = (now.saturating_sub(c.lastused) / 1_000_000_000).into();
            }
            ekho_stats.push(s);
        }
    }
    if !offload.is_empty() {
        e["ekho_offload"] = offload.into();
    }
    if !stats {
        return;
    }
    e["ekho_stats"] = ekho_stats.into();
    let Some(Some(kernel)) = kernel else {
        return;
    };
    let counters = kernel.get(&(f.target, f.parent, f.chain, f.prio, f.handle));
    let actions = e
        .get_mut("options")
        .and_then(|o| o.get_mut("actions"))
        .and_then(|a| a.as_array_mut());
    if let (Some(counters), Some(actions)) = (counters, actions) {
        for (a, c) in actions.iter_mut().zip(counters) {
            a["stats"] = json!({"bytes": c.bytes, "packets": c.packets, "drops": c.drops,
                "overlimits": c.overlimits, "requeues": 0, "backlog": 0, "qlen": 0});
        }
    }
}
