//! `recorder`: an ekho plugin that writes every change and event it receives as one JSON line, and
//! keeps its current view as one JSON document. For operators (what does the host send?), for
//! tests, and as a model of restart reconciliation (mark and sweep).
//!
//! Config (`[plugins.config]`):
//! - `events_path`: file to append JSON lines to (default: stdout).
//! - `view_path`: if set, rewritten (atomically) after each batch with the current view, keyed by
//!   kind like `ekho dump --json`.
//! - `state_path`: if set, the recorder's "hardware" state persists there across host restarts:
//!   at end-sync it removes (op `sweep`) what the replay did not renew, and keeps the rest without
//!   rewriting it.
//! - `kinds`, `families`, `ports`: narrow the capabilities (default: everything).
//! - `limits`: declared limits per kind, e.g. `limits = { route = 100 }`.
//! - `delay_ms`: sleep this long in each `apply` (to simulate a slow backend).
//! - `panic_after`: panic in `apply` once this many changes have been received (fault injection,
//!   to test hosts).
//! - `create_delay_ms`: sleep this long in `create` (a slow start-up, to test hosts).
//! - `panic_once_flag`: with `panic_after`, panic only while this file does not exist (it is
//!   created just before the panic): a restarted recorder then carries on.
//! - `hang_after`: once this many changes have been received, never return from `apply` (a hung
//!   backend, to test the host's watchdog).
//! - `shutdown_delay_ms`: sleep this long in `shutdown` (a slow release of hardware, to test
//!   hosts' shutdown bound).
//! - `flows_active_path`: while this file exists, every flow held is reported active by
//!   `object_stats` (one packet of 100 bytes more each way per call, `lastused` now), as a
//!   dataplane forwarding it would; otherwise its counters stay (idle).
//! - `release_flows_path`: once this file exists, every flow held is handed back to the kernel
//!   (`Request::ReleaseFlow`, as a dataplane that saw a FIN would), once each.
//!
//! - `tc`: what of tc filters it runs (API 1.3; default: every filter), a table of
//!   [`TcCapabilities`]'s fields: `classifiers`, `actions`, `flower_keys` (default: every key
//!   this version knows), `mirred` (`"egress redirect"`, ...; default: all), `ingress`,
//!   `egress`, `shared_blocks`, `goto_chain` (default: true), e.g.
//!   `tc = { classifiers = ["flower"], actions = ["gact"] }`: the host then hands it only
//!   such filters and reports the others unsupported with the reason.
//! - `filters_active_path`: while this file exists, every tc filter held counts one packet of
//!   100 bytes (dropped, if its last action is a drop) more per `object_stats` call, `lastused`
//!   now, as a dataplane running it would; otherwise its counters stay.
//! - `unsupported_prefs`, `unsupported_routes`: tc filters of these prefs (`[2]`), routes to
//!   these destinations (`["10.77.0.0/16"]`) are recorded but answered `unsupported` with a
//!   reason (API 1.4: `recorder: pref 2 is in unsupported_prefs`), as a backend refusing them
//!   would (to test hosts).
//!
//! Flows (API 1.2) are taken NAT included unless `kinds` leaves them out.
//!
//! Line format: `{"seq":N,"stream":"netlink"|"ebpf","op":"add"|"update"|"remove"|"event"|
//! "begin_sync"|"end_sync"|"sweep","kind":"route"|...,"object":{...}}` with iproute2 field names
//! inside `object` (and `old` for updates).

use ekho_plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    events_path: Option<PathBuf>,
    view_path: Option<PathBuf>,
    state_path: Option<PathBuf>,
    kinds: Option<Vec<String>>,
    families: Option<Vec<String>>,
    notifiers: Option<Vec<String>>,
    ports: Option<Vec<String>>,
    delay_ms: Option<u64>,
    /// Declared limits per kind, e.g. `limits = { route = 100 }` (to exercise hosts).
    limits: Option<std::collections::BTreeMap<String, u64>>,
    panic_after: Option<u64>,
    create_delay_ms: Option<u64>,
    panic_once_flag: Option<PathBuf>,
    hang_after: Option<u64>,
    shutdown_delay_ms: Option<u64>,
    flows_active_path: Option<PathBuf>,
    release_flows_path: Option<PathBuf>,
    tc: Option<TcConfig>,
    filters_active_path: Option<PathBuf>,
    /// tc filters of these prefs are answered `unsupported` with a reason (API 1.4), still
    /// recorded (to exercise hosts).
    unsupported_prefs: Option<Vec<u16>>,
    /// Routes to these destinations (`10.77.0.0/16`, as `dst` in the events) likewise.
    unsupported_routes: Option<Vec<String>>,
}

/// The `tc` table: [`TcCapabilities`] by tc's names.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TcConfig {
    classifiers: Option<Vec<String>>,
    actions: Option<Vec<String>>,
    flower_keys: Option<Vec<String>>,
    mirred: Option<Vec<String>>,
    ingress: Option<bool>,
    egress: Option<bool>,
    shared_blocks: Option<bool>,
    goto_chain: Option<bool>,
}

impl TcConfig {
    fn capabilities(&self) -> Result<TcCapabilities, String> {
        let name = |what: &str, s: &str, all: &[&'static str]| {
            all.iter()
                .position(|n| *n == s)
                .ok_or_else(|| format!("unknown {what} {s:?} in recorder tc config"))
        };
        let keys: Vec<FlowerKey> = match &self.flower_keys {
            None => FlowerKey::ALL.to_vec(),
            Some(v) => {
                let names: Vec<&'static str> = FlowerKey::ALL.iter().map(|k| k.name()).collect();
                v.iter()
                    .map(|s| name("flower key", s, &names).map(|i| FlowerKey::ALL[i]))
                    .collect::<Result<_, _>>()?
            }
        };
        let mirred: Vec<TcMirredAction> = match &self.mirred {
            None => vec![],
            Some(v) => {
                let names: Vec<&'static str> =
                    TcMirredAction::ALL.iter().map(|k| k.name()).collect();
                v.iter()
                    .map(|s| name("mirred operation", s, &names).map(|i| TcMirredAction::ALL[i]))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(TcCapabilities::new()
            .classifiers(self.classifiers.clone().unwrap_or_default())
            .actions(self.actions.clone().unwrap_or_default())
            .flower_keys(keys)
            .mirred(mirred)
            .ingress(self.ingress.unwrap_or(true))
            .egress(self.egress.unwrap_or(true))
            .shared_blocks(self.shared_blocks.unwrap_or(true))
            .goto_chain(self.goto_chain.unwrap_or(true)))
    }
}

/// A flow held: its counters (both directions alike) and whether it was handed back.
#[derive(Default, Clone, Copy)]
struct HeldFlow {
    counters: ObjectCounters,
    released: bool,
}

struct Recorder {
    cfg: Config,
    caps: Capabilities,
    out: Box<dyn Write + Send>,
    seq: u64,
    received: u64,
    /// Current view: identity (debug form of the key) -> (kind, object JSON).
    view: BTreeMap<String, (ObjectKind, Value)>,
    /// Keys not yet renewed by the replay in progress.
    unmarked: Option<HashSet<String>>,
    kept: u64,
    swept: u64,
    counts: BTreeMap<&'static str, u64>,
    host: HostHandle,
    /// Flows held, by key (counters change in `object_stats`, which takes `&self`).
    flows: std::sync::Mutex<BTreeMap<ObjectKey, HeldFlow>>,
    /// tc filters held, by key: whether the last action drops, and the counters.
    filters: std::sync::Mutex<BTreeMap<ObjectKey, (bool, ObjectCounters)>>,
}

fn key_string(o: &Object) -> String {
    format!("{:?}", o.key())
}

impl Recorder {
    /// The outcome of `c` (its object's JSON `json`): `offloaded`, or `unsupported` with the
    /// reason for what `unsupported_prefs` / `unsupported_routes` name.
    fn outcome(&self, c: &Change, json: &Value) -> Outcome {
        if let Change::Remove(_) = c {
            return Outcome::Offloaded;
        }
        match c.object() {
            Object::TcFilter(f)
                if self
                    .cfg
                    .unsupported_prefs
                    .as_ref()
                    .is_some_and(|p| p.contains(&f.prio)) =>
            {
                Outcome::unsupported(format!("recorder: pref {} is in unsupported_prefs", f.prio))
            }
            Object::Route(_) => match json["dst"].as_str() {
                Some(dst)
                    if self
                        .cfg
                        .unsupported_routes
                        .as_ref()
                        .is_some_and(|r| r.iter().any(|x| x == dst)) =>
                {
                    Outcome::unsupported(format!("recorder: {dst} is in unsupported_routes"))
                }
                _ => Outcome::Offloaded,
            },
            _ => Outcome::Offloaded,
        }
    }

    /// Hands every flow held back, once each, when `release_flows_path` exists.
    fn release_flows(&self) {
        if !self
            .cfg
            .release_flows_path
            .as_ref()
            .is_some_and(|p| p.exists())
        {
            return;
        }
        for (k, f) in self.flows.lock().unwrap().iter_mut() {
            if !f.released {
                f.released = true;
                let _ = self.host.request(Request::ReleaseFlow { key: k.clone() });
            }
        }
    }

    fn line(
        &mut self,
        stream: &str,
        op: &str,
        kind: &str,
        object: Option<Value>,
        old: Option<Value>,
    ) {
        self.seq += 1;
        let mut v = json!({"seq": self.seq, "stream": stream, "op": op});
        if !kind.is_empty() {
            v["kind"] = kind.into();
        }
        if let Some(o) = object {
            v["object"] = o;
        }
        if let Some(o) = old {
            v["old"] = o;
        }
        let _ = writeln!(self.out, "{v}");
    }

    /// A change record ([`Change::to_json`]) as one line, after its sequence number and stream.
    fn record(&mut self, stream: &str, record: Value) {
        self.seq += 1;
        let mut v = json!({"seq": self.seq, "stream": stream});
        if let (Value::Object(line), Value::Object(rec)) = (&mut v, record) {
            line.extend(rec);
        }
        let _ = writeln!(self.out, "{v}");
    }

    fn write_view(&self) -> std::io::Result<()> {
        if let Some(p) = &self.cfg.view_path {
            let mut doc = Map::new();
            for &k in ObjectKind::ALL {
                if self.caps.takes_kind(k) {
                    doc.insert(k.plural().into(), Value::Array(vec![]));
                }
            }
            for (kind, o) in self.view.values() {
                if let Some(Value::Array(a)) = doc.get_mut(kind.plural()) {
                    a.push(o.clone());
                }
            }
            write_atomic(p, &serde_json::to_vec_pretty(&Value::Object(doc))?)?;
        }
        if let Some(p) = &self.cfg.state_path {
            let state: Map<String, Value> = self
                .view
                .iter()
                .map(|(k, (kind, o))| (k.clone(), json!({"kind": kind.name(), "object": o})))
                .collect();
            write_atomic(p, &serde_json::to_vec(&Value::Object(state))?)?;
        }
        Ok(())
    }
}

fn write_atomic(p: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, p)
}

fn parse_list<T>(
    v: &Option<Vec<String>>,
    what: &str,
    f: impl Fn(&str) -> Option<T>,
) -> Result<Option<Vec<T>>, String> {
    match v {
        None => Ok(None),
        Some(list) => list
            .iter()
            .map(|s| f(s).ok_or_else(|| format!("unknown {what} {s:?} in recorder config")))
            .collect::<Result<Vec<T>, String>>()
            .map(Some),
    }
}

impl Plugin for Recorder {
    fn create(ctx: CreateContext) -> Result<Self, String> {
        let cfg: Config =
            toml::from_str(&ctx.config).map_err(|e| format!("recorder config: {e}"))?;
        if let Some(ms) = cfg.create_delay_ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let mut caps = Capabilities::new();
        caps = match parse_list(&cfg.kinds, "kind", ObjectKind::from_name)? {
            Some(k) => caps.kinds(k),
            None => caps.kinds(ObjectKind::ALL),
        };
        if let Some(f) = parse_list(&cfg.families, "family", |s| match s {
            "inet" | "ipv4" => Some(Family::INET),
            "inet6" | "ipv6" => Some(Family::INET6),
            "bridge" => Some(Family::BRIDGE),
            _ => None,
        })? {
            caps = caps.families(f);
        }
        caps = match parse_list(&cfg.notifiers, "notifier", NotifierKind::from_name)? {
            Some(n) => caps.notifiers(n),
            None => caps.notifiers(NotifierKind::ALL),
        };
        if let Some(p) = &cfg.ports {
            caps = caps.port_names(p.clone());
        }
        caps = caps.nexthop_objects(true).flow_nat(true);
        caps = match &cfg.tc {
            Some(t) => caps.tc(t.capabilities()?),
            None => caps.tc(TcCapabilities::everything()),
        };
        for (k, n) in cfg.limits.iter().flatten() {
            let kind = ObjectKind::from_name(k)
                .ok_or_else(|| format!("unknown kind {k:?} in recorder limits"))?;
            caps = caps.limit(kind, *n);
        }
        let out: Box<dyn Write + Send> = match &cfg.events_path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot open events_path {}: {e}", p.display()))?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let mut view = BTreeMap::new();
        if let Some(p) = &cfg.state_path {
            if let Ok(bytes) = std::fs::read(p) {
                let state: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "state_path {} is not a recorder state file: {e}",
                        p.display()
                    )
                })?;
                for (k, v) in state {
                    let kind = v["kind"].as_str().and_then(ObjectKind::from_name);
                    if let Some(kind) = kind {
                        view.insert(k, (kind, v["object"].clone()));
                    }
                }
            }
        }
        Ok(Recorder {
            cfg,
            caps,
            out,
            seq: 0,
            received: 0,
            view,
            unmarked: None,
            kept: 0,
            swept: 0,
            counts: BTreeMap::new(),
            host: ctx.host,
            flows: Default::default(),
            filters: Default::default(),
        })
    }

    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
        if let Some(ms) = self.cfg.delay_ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            self.received += 1;
            if let Some(n) = self.cfg.panic_after {
                let once = self.cfg.panic_once_flag.as_ref();
                if self.received >= n && once.is_none_or(|f| !f.exists()) {
                    if let Some(f) = once {
                        let _ = std::fs::write(f, b"panicked\n");
                    }
                    panic!("recorder: panic_after = {n} reached (fault injection)");
                }
            }
            if let Some(n) = self.cfg.hang_after {
                if self.received >= n {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
            }
            let o = c.object();
            let kind = o.kind();
            let key = key_string(o);
            let record = c.to_json();
            let json = record["object"].clone();
            let outcome = self.outcome(c, &json);
            self.record("netlink", record);
            *self.counts.entry(kind.plural()).or_default() += 1;
            if kind == ObjectKind::Flow {
                let mut flows = self.flows.lock().unwrap();
                match c {
                    Change::Remove(o) => flows.remove(&o.key()),
                    _ => flows.insert(o.key(), HeldFlow::default()),
                };
            }
            if kind == ObjectKind::TcFilter {
                let mut filters = self.filters.lock().unwrap();
                match c {
                    Change::Remove(o) => {
                        filters.remove(&o.key());
                    }
                    Change::Add(Object::TcFilter(f))
                    | Change::Update {
                        new: Object::TcFilter(f),
                        ..
                    } => {
                        let drops = f
                            .actions
                            .last()
                            .is_some_and(|a| a.control == TcControl::Shot);
                        let e = filters.entry(c.key()).or_default();
                        e.0 = drops;
                    }
                    _ => {}
                }
            }
            match c {
                Change::Remove(_) => {
                    self.view.remove(&key);
                }
                _ => {
                    if let Some(unmarked) = &mut self.unmarked {
                        if unmarked.remove(&key)
                            && self.view.get(&key).is_some_and(|(_, v)| *v == json)
                        {
                            self.kept += 1;
                        }
                    }
                    self.view.insert(key, (kind, json));
                }
            }
            out.push(outcome);
        }
        let _ = self.out.flush();
        if let Err(e) = self.write_view() {
            let _ = writeln!(std::io::stderr(), "recorder: cannot write view: {e}");
        }
        self.release_flows();
        out
    }

    fn object_stats(&self, kind: ObjectKind) -> Vec<ObjectStats> {
        if kind == ObjectKind::TcFilter {
            let active = self
                .cfg
                .filters_active_path
                .as_ref()
                .is_some_and(|p| p.exists());
            let now = ekho_plugin_api::monotonic_ns();
            let mut filters = self.filters.lock().unwrap();
            return filters
                .iter_mut()
                .map(|(k, (drops, c))| {
                    if active {
                        c.packets += 1;
                        c.bytes += 100;
                        c.drops += *drops as u64;
                        c.lastused = now;
                    }
                    ObjectStats::tc_filter(k.clone(), *c)
                })
                .collect();
        }
        if kind != ObjectKind::Flow {
            return Vec::new();
        }
        self.release_flows();
        let active = self
            .cfg
            .flows_active_path
            .as_ref()
            .is_some_and(|p| p.exists());
        let now = ekho_plugin_api::monotonic_ns();
        let mut flows = self.flows.lock().unwrap();
        flows
            .iter_mut()
            .filter(|(_, f)| !f.released)
            .map(|(k, f)| {
                if active {
                    f.counters.packets += 1;
                    f.counters.bytes += 100;
                    f.counters.lastused = now;
                }
                ObjectStats::flow(k.clone(), f.counters, f.counters)
            })
            .collect()
    }

    fn notify(&mut self, events: &[NotifierEvent]) {
        for e in events {
            self.line("ebpf", "event", e.kind.name(), Some(e.to_json()), None);
        }
        let _ = self.out.flush();
    }

    fn begin_sync(&mut self) {
        self.unmarked = Some(self.view.keys().cloned().collect());
        self.line("netlink", "begin_sync", "", None, None);
    }

    fn end_sync(&mut self) {
        if let Some(stale) = self.unmarked.take() {
            for k in stale {
                if let Some((kind, o)) = self.view.remove(&k) {
                    self.swept += 1;
                    self.line("netlink", "sweep", kind.name(), Some(o), None);
                }
            }
        }
        self.line("netlink", "end_sync", "", None, None);
        let _ = self.out.flush();
        let _ = self.write_view();
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default()
            .counter("all", "received", self.received)
            .counter("all", "kept_after_restart", self.kept)
            .counter("all", "swept_after_restart", self.swept);
        for (k, n) in &self.counts {
            s = s.counter(k, "changes", *n);
        }
        s
    }

    fn shutdown(&mut self) {
        if let Some(ms) = self.cfg.shutdown_delay_ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let _ = self.out.flush();
        let _ = self.write_view();
    }
}

ekho_plugin_api::declare_plugin!(Recorder, name = "recorder");
