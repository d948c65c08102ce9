//! What `ekho status` shows about a plugin: its state, counters, outcomes per kind and recent
//! failures.

use super::KINDS;
use ekho_plugin_api::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};

/// The state of a plugin, as `ekho status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Receiving the replay of the mirror (between begin-sync and end-sync).
    Syncing,
    /// Replay done; receiving increments.
    InSync,
    /// Refused at load, or failed (panicked / broke the contract); no longer called.
    Failed,
    /// A call ran past the watchdog's `call_timeout_ms`; no longer fed.
    Hung,
    /// Stopped by `ekho plugin stop`.
    Stopped,
}

/// The call a hung plugin is stuck in.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HungCall {
    /// `apply`, `notify`, `begin_sync`, `end_sync`, `stats`, `capabilities`, `shutdown`.
    pub call: String,
    /// When it was entered, in ms since the Unix epoch.
    pub since_unix_ms: u64,
}

/// A failure kept for `ekho status`.
#[derive(Clone, Debug, Serialize)]
pub struct FailureRecord {
    pub kind: String,
    pub op: String,
    pub object: serde_json::Value,
    pub reason: String,
}

/// Failures kept per plugin, the most recent (and as many refusals with a reason).
const RECENT_FAILURES: usize = 16;

/// Everything `ekho status` shows about one plugin.
#[derive(Clone, Debug, Serialize, Default)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    pub api_version: String,
    /// How the host drives it: `native`, or `converted from 1.0` (built against an older minor).
    pub abi: String,
    pub path: String,
    pub state: Option<PluginState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Objects currently held for the plugin (given to it and not removed).
    pub objects: u64,
    /// Changes applied (each got an outcome from the plugin).
    pub applied: u64,
    pub offloaded: u64,
    pub unsupported: u64,
    pub trapped: u64,
    pub failed: u64,
    /// Additions the host refused on the plugin's behalf (declared limits, ECMP width).
    pub refused: u64,
    pub queue_depth: u64,
    pub events: u64,
    pub events_dropped: u64,
    pub syncs: u64,
    pub last_sync_ms: u64,
    /// Times it was created anew (after failures, or by `ekho plugin restart`).
    pub restarts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hung: Option<HungCall>,
    /// Objects held, per kind, by outcome (rendered from `per_outcome` in snapshots).
    pub outcomes: HashMap<String, HashMap<String, u64>>,
    /// Objects held per kind (index: [`ObjectKind::index`]) and outcome code.
    #[serde(skip)]
    pub per_outcome: [[u64; 4]; KINDS],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stats_text: String,
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub recent_failures: VecDeque<FailureRecord>,
    /// The plugin's most recent `unsupported` outcomes that came with a reason (API 1.4), of
    /// every kind but tc filters (whose are in `tc_unsupported` while held).
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub recent_unsupported: VecDeque<FailureRecord>,
    /// Conntrack flows held with outcome `offloaded` (rendered from `per_outcome`).
    #[serde(skip_serializing_if = "is_zero")]
    pub flows_offloaded: u64,
    /// The plugin's per-flow counters, as last read (`object_stats`, about once a second).
    #[serde(skip)]
    pub flow_stats: std::sync::Arc<Vec<ekho_plugin_api::ObjectStats>>,
    /// tc filters (API 1.3) the host does not hand the plugin, each with the reason in tc's
    /// words (rendered into `tc_unsupported` in snapshots).
    #[serde(skip)]
    pub tc_refused: std::collections::BTreeMap<ekho_plugin_api::ObjectKey, TcRefusal>,
    /// The outcome the plugin gave each tc filter it holds, with its reason.
    #[serde(skip)]
    pub tc_outcomes: std::collections::BTreeMap<ekho_plugin_api::ObjectKey, TcOutcome>,
    /// [`PluginStatus::tc_refused`] and the filters the plugin itself answered `unsupported`
    /// with a reason, as `ekho status --json` lists them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tc_unsupported: Vec<TcRefusal>,
    /// The plugin's per-filter counters, as last read (`object_stats`, about once a second).
    #[serde(skip)]
    pub tc_stats: std::sync::Arc<Vec<ekho_plugin_api::ObjectStats>>,
}

/// A tc filter a plugin does not run: where it is (`dev v0 ingress pref 1 chain 0 handle
/// 0x1`, tc's words) and why (`action pedit not supported`), said by the host (which did not
/// hand it over) or by the plugin (its `unsupported` with a reason, API 1.4).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TcRefusal {
    pub filter: String,
    pub reason: String,
    /// `host` or `plugin`.
    pub by: &'static str,
}

/// What a plugin answered for a tc filter it holds: the outcome's name and its reason, if any
/// (a failure's, or an `unsupported` one's, with where the filter is, for `ekho status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcOutcome {
    pub outcome: &'static str,
    pub reason: Option<String>,
    /// tc's words for where the filter is, kept for an `unsupported` with a reason.
    pub filter: Option<String>,
}

impl TcOutcome {
    /// `o` for the filter at `place` (computed only when needed).
    pub fn new(o: &Outcome, place: impl FnOnce() -> String) -> TcOutcome {
        TcOutcome {
            outcome: o.name(),
            reason: o.reason().map(str::to_string),
            filter: (o.is_unsupported() && o.reason().is_some()).then(place),
        }
    }

    /// The plugin's own refusal, as `ekho status` lists it beside the host's.
    fn refusal(&self) -> Option<TcRefusal> {
        Some(TcRefusal {
            filter: self.filter.clone()?,
            reason: self.reason.clone()?,
            by: "plugin",
        })
    }
}

/// tc's words for where a filter is (`dev v0 ingress pref 1 chain 0 handle 0x1`, `block 7 pref
/// 2 chain 0 handle 0x1`, a u32 one's `... fh 800::800`), device names by `name`.
pub fn tc_filter_place(
    f: &ekho_plugin_api::object::TcFilter,
    name: &dyn Fn(u32) -> Option<String>,
) -> String {
    use ekho_plugin_api::object::{tc, TcTarget};
    let at = match f.target {
        TcTarget::Dev(i) => format!(
            "dev {} {}",
            name(i).unwrap_or_else(|| format!("if{i}")),
            match f.parent {
                tc::TC_H_MIN_INGRESS | tc::TC_H_MIN_EGRESS => tc::parent_name(f.parent),
                p => format!("parent {}", tc::handle_name(p)),
            }
        ),
        TcTarget::Block(b) => format!("block {b}"),
    };
    // tc's own handle notation: u32's `fh 800::800`, the others' `handle 0x1`.
    let handle = if f.kind.as_str() == "u32" {
        format!("fh {}", ekho_mirror::netlink::tc::u32_handle(f.handle))
    } else {
        format!("handle 0x{:x}", f.handle)
    };
    format!("{at} pref {} chain {} {handle}", f.prio, f.chain)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PluginStatus {
    /// Counts outcomes the plugin gave.
    pub(super) fn count(&mut self, outcomes: &[Outcome]) {
        for o in outcomes {
            self.applied += 1;
            match outcome_code(o) {
                0 => self.offloaded += 1,
                1 => self.unsupported += 1,
                2 => self.trapped += 1,
                _ => self.failed += 1,
            }
        }
    }

    /// Keeps a failure (the plugin's, or the host's refusal) among the most recent ones.
    pub(super) fn note_failure(&mut self, o: &Object, op: &str, outcome: &Outcome) {
        let reason = outcome.reason().unwrap_or(outcome.name()).to_string();
        keep_recent(&mut self.recent_failures, o, op, reason);
    }

    /// Keeps an `unsupported` the plugin gave with a reason among the most recent ones.
    pub(super) fn note_unsupported(&mut self, o: &Object, op: &str, reason: &str) {
        keep_recent(&mut self.recent_unsupported, o, op, reason.to_string());
    }

    /// Renders `outcomes` (by kind and outcome name) from `per_outcome`, and `tc_unsupported`,
    /// for a snapshot.
    pub(super) fn fill_outcomes(&mut self) {
        self.tc_unsupported = self.tc_refused.values().cloned().collect();
        self.tc_unsupported
            .extend(self.tc_outcomes.values().filter_map(TcOutcome::refusal));
        self.flows_offloaded = self.per_outcome[ObjectKind::Flow.index()][0];
        let per_outcome = &self.per_outcome;
        self.outcomes = ObjectKind::ALL
            .iter()
            .filter(|k| per_outcome[k.index()].iter().any(|&n| n > 0))
            .map(|k| {
                let m = OUTCOME_NAMES
                    .iter()
                    .zip(per_outcome[k.index()])
                    .filter(|(_, n)| *n > 0)
                    .map(|(name, n)| (name.to_string(), n))
                    .collect();
                (k.plural().to_string(), m)
            })
            .collect();
    }
}

fn keep_recent(list: &mut VecDeque<FailureRecord>, o: &Object, op: &str, reason: String) {
    if list.len() >= RECENT_FAILURES {
        list.pop_front();
    }
    list.push_back(FailureRecord {
        kind: o.kind().name().into(),
        op: op.into(),
        object: o.to_json(),
        reason,
    });
}

/// An outcome as a code: the index of its name in [`OUTCOME_NAMES`] (an `unsupported` with a
/// reason is an `unsupported`: the reason is no label).
#[inline]
pub(super) fn outcome_code(o: &Outcome) -> u8 {
    match o {
        Outcome::Offloaded => 0,
        Outcome::Unsupported | Outcome::UnsupportedBecause(_) => 1,
        Outcome::Trapped => 2,
        Outcome::Failed(_) => 3,
        // Outcomes of a later minor than the host's API: impossible (plugins of a newer minor
        // are refused); counted as failures should one appear.
        _ => 3,
    }
}

/// Outcome names by code.
const OUTCOME_NAMES: [&str; 4] = ["offloaded", "unsupported", "trapped", "failed"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_objects::{link, route};

    #[test]
    fn outcomes_render_by_kind_and_name() {
        let mut s = PluginStatus::default();
        s.per_outcome[ObjectKind::Route.index()][outcome_code(&Outcome::Offloaded) as usize] = 3;
        s.per_outcome[ObjectKind::Route.index()][outcome_code(&Outcome::failed("x")) as usize] = 1;
        s.fill_outcomes();
        assert_eq!(
            s.outcomes.len(),
            1,
            "only kinds with objects: {:?}",
            s.outcomes
        );
        let routes = &s.outcomes["routes"];
        assert_eq!((routes["offloaded"], routes["failed"]), (3, 1));
        assert_eq!(routes.len(), 2);
        s.count(&[
            Outcome::Offloaded,
            Outcome::Trapped,
            Outcome::failed("y"),
            Outcome::unsupported("why"),
            Outcome::Unsupported,
        ]);
        assert_eq!(
            (s.applied, s.offloaded, s.trapped, s.unsupported, s.failed),
            (5, 1, 1, 2, 1)
        );
    }

    #[test]
    fn recent_failures_keep_the_last_sixteen() {
        let mut s = PluginStatus::default();
        for i in 0..20 {
            s.note_failure(&link(i, "a"), "add", &Outcome::failed(format!("no {i}")));
        }
        s.note_failure(
            &route("10.0.0.0/24", 1, "10.1.0.1"),
            "add",
            &Outcome::Unsupported,
        );
        assert_eq!(s.recent_failures.len(), RECENT_FAILURES);
        assert_eq!(s.recent_failures[0].reason, "no 5");
        let last = s.recent_failures.back().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.reason.as_str()),
            ("route", "unsupported")
        );
    }

    #[test]
    fn a_plugins_reasoned_unsupported_filter_is_listed_beside_the_hosts() {
        let mut s = PluginStatus::default();
        let key = |prio| ObjectKey::TcFilter {
            target: TcTarget::Dev(1),
            parent: 0xffff_fff2,
            chain: 0,
            prio,
            handle: 1,
        };
        s.tc_refused.insert(
            key(1),
            TcRefusal {
                filter: "dev v0 ingress pref 1 chain 0 handle 0x1".into(),
                reason: "action pedit not supported".into(),
                by: "host",
            },
        );
        let place = |p: u16| move || format!("dev v0 ingress pref {p} chain 0 handle 0x1");
        let because = TcOutcome::new(&Outcome::unsupported("gact random"), place(2));
        assert_eq!(because.outcome, "unsupported");
        s.tc_outcomes.insert(key(2), because);
        // Neither a bare unsupported nor an offloaded one is a listed refusal; the place of
        // those is never computed.
        let never = || -> String { panic!("place computed") };
        s.tc_outcomes
            .insert(key(3), TcOutcome::new(&Outcome::Unsupported, never));
        s.tc_outcomes
            .insert(key(4), TcOutcome::new(&Outcome::Offloaded, never));
        let failed = TcOutcome::new(&Outcome::failed("map full"), never);
        assert_eq!(
            (failed.outcome, failed.reason.as_deref()),
            ("failed", Some("map full"))
        );
        s.fill_outcomes();
        let got: Vec<(&str, &str, &str)> = s
            .tc_unsupported
            .iter()
            .map(|r| (r.filter.as_str(), r.reason.as_str(), r.by))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "dev v0 ingress pref 1 chain 0 handle 0x1",
                    "action pedit not supported",
                    "host"
                ),
                (
                    "dev v0 ingress pref 2 chain 0 handle 0x1",
                    "gact random",
                    "plugin"
                )
            ]
        );
    }

    #[test]
    fn recent_unsupported_keep_the_plugins_reasons() {
        let mut s = PluginStatus::default();
        for i in 0..20 {
            s.note_unsupported(
                &route("10.0.0.0/24", 1, "10.1.0.1"),
                "add",
                &format!("type {i}"),
            );
        }
        assert_eq!(s.recent_unsupported.len(), RECENT_FAILURES);
        assert_eq!(s.recent_unsupported[0].reason, "type 4");
        assert_eq!(s.recent_unsupported.back().unwrap().kind, "route");
        assert!(s.recent_failures.is_empty());
    }
}
