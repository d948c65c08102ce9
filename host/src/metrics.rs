//! `[host] metrics = "ADDR:PORT"`: Prometheus text at `/metrics`, encoded by prometheus-client
//! from the same state `ekho status --json` shows (one definition of what is reported).
//!
//! Served as OpenMetrics text to a scraper that asks for it (`Accept: application/openmetrics-text`,
//! as Prometheus does), else in the classic text format 0.0.4 ([`classic`]), which is what
//! `promtool check metrics` reads.
//!
//! Families: `ekho_mirror_*` (objects per kind, messages, changes, overruns (also per socket),
//! resyncs (also re-dumps per kind), synced,
//! undecodable messages per type, source restarts and up),
//! `ekho_plugin_*` (state, queue depth, objects held per kind and outcome, outcomes given,
//! host refusals, restarts, hung, the plugin's own counters as `ekho_plugin_stat`), `ekho_ebpf_*` (events per
//! hook, losses per notifier kind, hooks live), `ekho_conntrack_*` (up, flows, limit, events, refused, kept_alive, keep_alive_failed, released,
//! overruns, resyncs).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Plugin {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginState {
    plugin: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOutcome {
    plugin: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginKindOutcome {
    plugin: String,
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCounter {
    plugin: String,
    kind: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MsgType {
    message_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Sock {
    socket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Hook {
    hook: String,
}

/// The states a plugin can be in (each exported, 1 for the current one).
const STATES: &[&str] = &["syncing", "in_sync", "failed", "hung", "stopped"];

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The Prometheus text of a status document (`ekho status --json`).
pub fn encode(status: &Value) -> String {
    let mut r = Registry::default();
    let m = &status["mirror"];
    let objects = Family::<Kind, Gauge>::default();
    for (k, n) in m["objects"].as_object().into_iter().flatten() {
        objects
            .get_or_create(&Kind { kind: k.clone() })
            .set(u(n) as i64);
    }
    r.register(
        "ekho_mirror_objects",
        "Objects the mirror holds, per kind",
        objects,
    );
    gauge(
        &mut r,
        "ekho_mirror_synced",
        "1 once the initial netlink dump has completed",
        (m["synced"] == true) as i64,
    );
    counter(
        &mut r,
        "ekho_mirror_messages",
        "Netlink messages received",
        u(&m["messages"]),
    );
    counter(
        &mut r,
        "ekho_mirror_changes",
        "Changes the mirror emitted to its listeners",
        u(&m["changes"]),
    );
    counter(
        &mut r,
        "ekho_mirror_overruns",
        "Netlink socket overruns (ENOBUFS)",
        u(&m["overruns"]),
    );
    let per_socket = Family::<Sock, Counter>::default();
    for (k, n) in m["socket_overruns"].as_object().into_iter().flatten() {
        per_socket
            .get_or_create(&Sock { socket: k.clone() })
            .inc_by(u(n));
    }
    r.register(
        "ekho_mirror_socket_overruns",
        "Overruns (ENOBUFS) per event socket (rtnetlink, nftables)",
        per_socket,
    );
    let resynced = Family::<Kind, Counter>::default();
    for (k, n) in m["resynced"].as_object().into_iter().flatten() {
        resynced
            .get_or_create(&Kind { kind: k.clone() })
            .inc_by(u(n));
    }
    r.register(
        "ekho_mirror_resynced",
        "Re-dumps after the initial sync, per kind (tc: the tc dump)",
        resynced,
    );
    let undecodable = Family::<MsgType, Counter>::default();
    for (t, n) in m["undecodable"].as_object().into_iter().flatten() {
        undecodable
            .get_or_create(&MsgType {
                message_type: t.clone(),
            })
            .inc_by(u(n));
    }
    r.register(
        "ekho_mirror_undecodable",
        "Netlink messages that failed to decode, per message type",
        undecodable,
    );
    let src = &m["source"];
    counter(
        &mut r,
        "ekho_mirror_source_restarts",
        "Restarts of the netlink source after a fatal error (each with a full resync)",
        u(&src["restarts"]),
    );
    gauge(
        &mut r,
        "ekho_mirror_source_up",
        "1 while the netlink source runs, 0 while it is restarting after a failure",
        (src["state"] == "running") as i64,
    );
    counter(
        &mut r,
        "ekho_mirror_resyncs",
        "Resyncs done (after overruns, eBPF losses, targeted re-dumps)",
        u(&m["resyncs"]),
    );

    let c = &status["conntrack"];
    gauge(
        &mut r,
        "ekho_conntrack_up",
        "1 while the conntrack source runs (0: disabled, unavailable or failed)",
        matches!(c["state"].as_str(), Some("running") | Some("syncing")) as i64,
    );
    gauge(
        &mut r,
        "ekho_conntrack_flows",
        "conntrack entries mirrored",
        u(&c["flows"]) as i64,
    );
    gauge(
        &mut r,
        "ekho_conntrack_candidates",
        "conntrack entries the offload policy makes candidates",
        u(&c["candidates"]) as i64,
    );
    gauge(
        &mut r,
        "ekho_conntrack_limit",
        "The most conntrack entries mirrored ([flows] limit)",
        u(&c["limit"]) as i64,
    );
    counter(
        &mut r,
        "ekho_conntrack_events",
        "ctnetlink events read (NEW, UPDATE, DESTROY)",
        u(&c["events"]),
    );
    counter(
        &mut r,
        "ekho_conntrack_refused",
        "conntrack entries not mirrored: the table was at its limit",
        u(&c["refused"]),
    );
    counter(
        &mut r,
        "ekho_conntrack_overruns",
        "ctnetlink event socket overruns (ENOBUFS)",
        u(&c["overruns"]),
    );
    counter(
        &mut r,
        "ekho_conntrack_resyncs",
        "conntrack re-dumps reconciled after overruns",
        u(&c["resyncs"]),
    );
    counter(
        &mut r,
        "ekho_conntrack_kept_alive",
        "conntrack timeouts refreshed for flows plugins report active (acknowledged)",
        u(&c["kept_alive"]),
    );
    counter(
        &mut r,
        "ekho_conntrack_keep_alive_failed",
        "keep-alive refreshes refused (the entry gone meanwhile)",
        u(&c["keep_alive_failed"]),
    );
    gauge(
        &mut r,
        "ekho_conntrack_released",
        "conntrack entries plugins handed back, still in the table (not offered again)",
        u(&c["released"]) as i64,
    );

    let state = Family::<PluginState, Gauge>::default();
    let queue = Family::<Plugin, Gauge>::default();
    let hung = Family::<Plugin, Gauge>::default();
    let held = Family::<PluginKindOutcome, Gauge>::default();
    let outcomes = Family::<PluginOutcome, Counter>::default();
    let applied = Family::<Plugin, Counter>::default();
    let refused = Family::<Plugin, Counter>::default();
    let restarts = Family::<Plugin, Counter>::default();
    let events = Family::<Plugin, Counter>::default();
    let events_dropped = Family::<Plugin, Counter>::default();
    let own = Family::<PluginCounter, Gauge>::default();
    for p in status["plugins"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("").to_string();
        let plugin = Plugin {
            plugin: name.clone(),
        };
        for s in STATES {
            state
                .get_or_create(&PluginState {
                    plugin: name.clone(),
                    state: s.to_string(),
                })
                .set((p["state"] == *s) as i64);
        }
        queue
            .get_or_create(&plugin)
            .set(u(&p["queue_depth"]) as i64);
        hung.get_or_create(&plugin)
            .set((p["state"] == "hung") as i64);
        for (kind, by) in p["outcomes"].as_object().into_iter().flatten() {
            for (outcome, n) in by.as_object().into_iter().flatten() {
                held.get_or_create(&PluginKindOutcome {
                    plugin: name.clone(),
                    kind: kind.clone(),
                    outcome: outcome.clone(),
                })
                .set(u(n) as i64);
            }
        }
        for o in ["offloaded", "unsupported", "trapped", "failed"] {
            outcomes
                .get_or_create(&PluginOutcome {
                    plugin: name.clone(),
                    outcome: o.into(),
                })
                .inc_by(u(&p[o]));
        }
        applied.get_or_create(&plugin).inc_by(u(&p["applied"]));
        refused.get_or_create(&plugin).inc_by(u(&p["refused"]));
        restarts.get_or_create(&plugin).inc_by(u(&p["restarts"]));
        events.get_or_create(&plugin).inc_by(u(&p["events"]));
        events_dropped
            .get_or_create(&plugin)
            .inc_by(u(&p["events_dropped"]));
        for c in p["counters"].as_array().into_iter().flatten() {
            own.get_or_create(&PluginCounter {
                plugin: name.clone(),
                kind: c["kind"].as_str().unwrap_or("").into(),
                name: c["name"].as_str().unwrap_or("").into(),
            })
            .set(c["value"].as_i64().unwrap_or(0));
        }
    }
    r.register(
        "ekho_plugin_state",
        "1 for the state the plugin is in (syncing, in_sync, failed, hung, stopped)",
        state,
    );
    r.register(
        "ekho_plugin_queue_depth",
        "Changes waiting for the plugin",
        queue,
    );
    r.register(
        "ekho_plugin_hung",
        "1 while a call into the plugin runs past its call_timeout_ms",
        hung,
    );
    r.register(
        "ekho_plugin_objects",
        "Objects held for the plugin, per kind and last outcome",
        held,
    );
    r.register(
        "ekho_plugin_outcomes",
        "Outcomes the plugin gave, per outcome",
        outcomes,
    );
    r.register(
        "ekho_plugin_changes_applied",
        "Changes the plugin applied",
        applied,
    );
    r.register(
        "ekho_plugin_refused",
        "Additions the host refused for the plugin (declared limits, ECMP width)",
        refused,
    );
    r.register(
        "ekho_plugin_restarts",
        "Times the plugin was created anew",
        restarts,
    );
    r.register(
        "ekho_plugin_events",
        "Notifier events handed to the plugin",
        events,
    );
    r.register(
        "ekho_plugin_events_dropped",
        "Notifier events dropped for the plugin",
        events_dropped,
    );
    r.register(
        "ekho_plugin_stat",
        "The plugin's own counters, by kind and name",
        own,
    );

    let e = &status["ebpf"];
    gauge(
        &mut r,
        "ekho_ebpf_running",
        "1 while the eBPF source runs",
        (e["state"] == "running") as i64,
    );
    // Per hook (the one that captured or lost them: a fallen-back hook's events carry the name
    // of the hook it fell back to).
    let events = Family::<Hook, Counter>::default();
    for (h, n) in e["events_by_hook"].as_object().into_iter().flatten() {
        events.get_or_create(&Hook { hook: h.clone() }).inc_by(u(n));
    }
    r.register(
        "ekho_ebpf_events",
        "Notifier events captured by eBPF, per hook",
        events,
    );
    let lost = Family::<Hook, Counter>::default();
    for (h, n) in e["lost_by_hook"].as_object().into_iter().flatten() {
        lost.get_or_create(&Hook { hook: h.clone() }).inc_by(u(n));
    }
    r.register(
        "ekho_ebpf_lost",
        "eBPF events lost (ring buffer full), per hook",
        lost,
    );
    let live = Family::<Hook, Gauge>::default();
    for h in e["hooks"].as_array().into_iter().flatten() {
        live.get_or_create(&Hook {
            hook: h["name"].as_str().unwrap_or("").into(),
        })
        .set((h["state"] == "live") as i64);
    }
    r.register(
        "ekho_ebpf_hook_live",
        "1 for an eBPF hook attached live, 0 fallen back or unavailable",
        live,
    );
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

/// The classic Prometheus text format (0.0.4) of OpenMetrics text: a counter family is named
/// with its `_total` (as its samples are), `# UNIT` and `# EOF` lines are left out.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on `listener` forever (plain HTTP/1.x, one request per connection).
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: Arc<dyn Fn() -> Value + Send + Sync>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            // The request head, up to its blank line (at most 8 KiB, within 5 s).
            let mut buf = Vec::with_capacity(1024);
            let read_head = async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), read_head)
                .await
                .is_err()
            {
                return;
            }
            let req = String::from_utf8_lossy(&buf);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let openmetrics = req.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("accept:")
                    && l.contains("application/openmetrics-text")
            });
            let (code, ctype, body) = if req.starts_with("GET ") && path == "/metrics" {
                let s = tokio::task::spawn_blocking(move || status())
                    .await
                    .unwrap_or(Value::Null);
                let text = encode(&s);
                if openmetrics {
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    )
                } else {
                    (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        classic(&text),
                    )
                }
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "ekho serves its metrics at /metrics\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_prometheus_conventions() {
        let st = serde_json::json!({
            "mirror": {"objects": {"routes": 3, "links": 2}, "synced": true, "messages": 10,
                       "changes": 7, "overruns": 1, "resyncs": 2,
                       "socket_overruns": {"rtnetlink": 0, "nftables": 1},
                       "resynced": {"nft_chains": 1},
                       "undecodable": {"RTM_NEWROUTE": 4},
                       "source": {"state": "running", "restarts": 1}},
            "plugins": [{"name": "rec", "state": "in_sync", "queue_depth": 0, "offloaded": 5,
                         "unsupported": 1, "trapped": 0, "failed": 0, "applied": 6, "refused": 0,
                         "restarts": 2, "events": 0, "events_dropped": 0,
                         "outcomes": {"route": {"offloaded": 3, "unsupported": 1}},
                         "recent_unsupported": [{"kind": "route", "op": "add",
                             "object": {"dst": "10.77.0.0/16"}, "reason": "table 100"}],
                         "tc_unsupported": [{"filter": "dev v0 ingress pref 2 chain 0 handle 0x1",
                             "reason": "gact random not supported", "by": "plugin"}],
                         "counters": [{"kind": "route", "name": "entries", "value": 3}]}],
            "ebpf": {"state": "running", "events": 5, "lost": 2,
                     "events_by_hook": {"tp_btf/neigh_update": 4, "tp_btf/fib6_table_lookup": 1},
                     "lost_by_kind": {"neighbour": 2, "fib": 0},
                     "lost_by_hook": {"tp_btf/neigh_update": 2, "tp_btf/fib6_table_lookup": 0},
                     "hooks": [{"name": "tp_btf/neigh_update", "state": "live"}]},
            "conntrack": {"state": "running", "flows": 4, "limit": 10, "refused": 2,
                          "events": 9, "overruns": 1, "resyncs": 1}
        });
        let t = encode(&st);
        for line in [
            "ekho_ebpf_events_total{hook=\"tp_btf/neigh_update\"} 4",
            "ekho_ebpf_events_total{hook=\"tp_btf/fib6_table_lookup\"} 1",
            "ekho_ebpf_lost_total{hook=\"tp_btf/neigh_update\"} 2",
            "ekho_ebpf_lost_total{hook=\"tp_btf/fib6_table_lookup\"} 0",
            "ekho_ebpf_hook_live{hook=\"tp_btf/neigh_update\"} 1",
            "ekho_mirror_objects{kind=\"routes\"} 3",
            "ekho_mirror_changes_total 7",
            "ekho_mirror_overruns_total 1",
            "ekho_mirror_socket_overruns_total{socket=\"nftables\"} 1",
            "ekho_mirror_socket_overruns_total{socket=\"rtnetlink\"} 0",
            "ekho_mirror_resynced_total{kind=\"nft_chains\"} 1",
            "ekho_mirror_undecodable_total{message_type=\"RTM_NEWROUTE\"} 4",
            "ekho_mirror_source_restarts_total 1",
            "ekho_mirror_source_up 1",
            "ekho_conntrack_up 1",
            "ekho_conntrack_flows 4",
            "ekho_conntrack_refused_total 2",
            "ekho_conntrack_events_total 9",
            "ekho_plugin_state{plugin=\"rec\",state=\"in_sync\"} 1",
            "ekho_plugin_state{plugin=\"rec\",state=\"failed\"} 0",
            "ekho_plugin_restarts_total{plugin=\"rec\"} 2",
            "ekho_plugin_outcomes_total{plugin=\"rec\",outcome=\"offloaded\"} 5",
            "ekho_plugin_objects{plugin=\"rec\",kind=\"route\",outcome=\"offloaded\"} 3",
            "ekho_plugin_objects{plugin=\"rec\",kind=\"route\",outcome=\"unsupported\"} 1",
            "ekho_plugin_outcomes_total{plugin=\"rec\",outcome=\"unsupported\"} 1",
            "ekho_plugin_stat{plugin=\"rec\",kind=\"route\",name=\"entries\"} 3",
            "# TYPE ekho_mirror_changes counter",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing in\n{t}");
        }
        assert!(t.ends_with("# EOF\n"));
        // A plugin's reasons (API 1.4) are no label: one series per outcome, whatever the text.
        assert!(
            !t.contains("table 100") && !t.contains("gact random"),
            "a reason in the metrics:\n{t}"
        );
        let c = classic(&t);
        assert!(
            c.lines()
                .any(|l| l == "# TYPE ekho_mirror_changes_total counter"),
            "{c}"
        );
        assert!(
            c.lines()
                .any(|l| l.starts_with("# HELP ekho_mirror_changes_total ")),
            "{c}"
        );
        assert!(
            c.lines().any(|l| l == "# TYPE ekho_mirror_objects gauge"),
            "{c}"
        );
        assert!(c.lines().any(|l| l == "ekho_mirror_changes_total 7"), "{c}");
        assert!(!c.contains("# EOF"));
    }
}
