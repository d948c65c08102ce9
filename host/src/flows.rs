//! The daemon's conntrack flows: the conntrack source of the mirrored netns (when conntrack is
//! there: its absence is a status line, not an error), its status and counters, and the JSON
//! form of its entries (`ekho dump flows`) in conntrack's own wording: the `conntrack -L` field
//! names (`src`, `dst`, `sport`, `dport`, `packets`, `bytes`, `type`, `code`, `id`, `mark`,
//! `zone`, `use`, the flags `UNREPLIED`, `ASSURED`, `OFFLOAD`), TCP states as conntrack prints
//! them.

pub mod policy;

use crate::config::FlowsConfig;
use ekho_mirror::conntrack::message::status;
use ekho_mirror::conntrack::source::{Config as SourceConfig, Conntrack};
use ekho_mirror::conntrack::{Flow, Tuple};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
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
    },
}

impl Flows {
    /// Starts the source in `netns` by `cfg`; waits a little for its first dump, so that a
    /// netns without ctnetlink says so at once.
    pub fn start(cfg: &FlowsConfig, netns: Option<PathBuf>) -> Flows {
        if !cfg.enabled.unwrap_or(true) {
            return Flows::Disabled;
        }
        let limit = cfg.limit.unwrap_or(DEFAULT_LIMIT);
        let source = match Conntrack::spawn(SourceConfig {
            netns,
            rcvbuf: cfg.rcvbuf.unwrap_or(DEFAULT_RCVBUF),
            limit,
            refresh: match cfg.refresh_s.unwrap_or(DEFAULT_REFRESH_S) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
        }) {
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
        tracing::info!(
            flows = source.table().stats().flows,
            synced = source.synced(),
            "conntrack mirrored"
        );
        Flows::Running {
            source,
            limit,
            rules: cfg.offload.clone(),
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
                    (t.stats(), t.flows().filter(|f| p.candidate(f)).count())
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
    /// original tuple), with `"stats"` (the status counters) when asked.
    pub fn dump(&self, stats: bool) -> Value {
        let mut flows: Vec<Flow> = match self {
            Flows::Running { source, .. } => source.table().flows().cloned().collect(),
            _ => Vec::new(),
        };
        flows.sort_by_key(|f| (f.family, f.orig.proto, f.zone, f.orig));
        let p = self.policy();
        let list: Vec<Value> = flows
            .iter()
            .map(|f| {
                let mut j = flow_json(f);
                j["candidate"] = p.candidate(f).into();
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

/// conntrack's name of an IP protocol (`conntrack -L`'s first column; the number otherwise).
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        33 => "dccp".into(),
        47 => "gre".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

/// conntrack's name of a TCP state (`CTA_PROTOINFO_TCP_STATE`).
pub fn tcp_state_name(s: u8) -> &'static str {
    match s {
        0 => "NONE",
        1 => "SYN_SENT",
        2 => "SYN_RECV",
        3 => "ESTABLISHED",
        4 => "FIN_WAIT",
        5 => "CLOSE_WAIT",
        6 => "LAST_ACK",
        7 => "TIME_WAIT",
        8 => "CLOSE",
        9 => "SYN_SENT2",
        _ => "UNKNOWN",
    }
}

/// The flags `conntrack -L` prints in brackets, in its order.
pub fn flags(status_bits: u32) -> Vec<&'static str> {
    let mut v = Vec::new();
    if status_bits & status::SEEN_REPLY == 0 {
        v.push("UNREPLIED");
    }
    if status_bits & status::ASSURED != 0 {
        v.push("ASSURED");
    }
    if status_bits & status::OFFLOAD != 0 {
        v.push("OFFLOAD");
    }
    v
}

fn tuple_json(t: &Tuple, c: Option<ekho_mirror::conntrack::Counters>) -> Value {
    let mut m = Map::new();
    m.insert("src".into(), t.src.to_string().into());
    m.insert("dst".into(), t.dst.to_string().into());
    if t.proto == 1 || t.proto == 58 {
        m.insert("type".into(), (t.dport >> 8).into());
        m.insert("code".into(), (t.dport & 0xff).into());
        m.insert("id".into(), t.sport.into());
    } else {
        m.insert("sport".into(), t.sport.into());
        m.insert("dport".into(), t.dport.into());
    }
    if let Some(c) = c {
        m.insert("packets".into(), c.packets.into());
        m.insert("bytes".into(), c.bytes.into());
    }
    Value::Object(m)
}

/// One entry in JSON, conntrack's field names (the one JSON form of a flow).
pub fn flow_json(f: &Flow) -> Value {
    let mut m = Map::new();
    let (fam, famnum) = if f.family == 10 {
        ("ipv6", 10)
    } else {
        ("ipv4", 2)
    };
    m.insert("family".into(), fam.into());
    m.insert("l3protonum".into(), famnum.into());
    m.insert("proto".into(), proto_name(f.orig.proto).into());
    m.insert("protonum".into(), f.orig.proto.into());
    m.insert("timeout".into(), f.timeout.into());
    if let Some(s) = f.tcp_state {
        m.insert("state".into(), tcp_state_name(s).into());
    }
    m.insert("original".into(), tuple_json(&f.orig, f.counters_orig));
    m.insert("reply".into(), tuple_json(&f.reply, f.counters_reply));
    m.insert("flags".into(), flags(f.status).into());
    m.insert("mark".into(), f.mark.into());
    if f.zone != 0 {
        m.insert("zone".into(), f.zone.into());
    }
    if let Some(l) = f.labels {
        let hex: String = l.iter().map(|b| format!("{b:02x}")).collect();
        m.insert("labels".into(), format!("0x{hex}").into());
    }
    // Events carry no use count: 0 is "not known yet" (a live entry is used at least once).
    if f.use_count != 0 {
        m.insert("use".into(), f.use_count.into());
    }
    m.insert("id".into(), f.id.into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        let a = |s: &str| s.parse().unwrap();
        Flow {
            family: 2,
            orig: Tuple {
                src: a("10.0.1.2"),
                dst: a("10.0.2.2"),
                proto: 6,
                sport: 40000,
                dport: 5201,
                zone: 0,
            },
            reply: Tuple {
                src: a("10.0.2.2"),
                dst: a("10.0.2.1"),
                proto: 6,
                sport: 5201,
                dport: 40000,
                zone: 0,
            },
            status: status::SEEN_REPLY | status::ASSURED | status::CONFIRMED | status::SRC_NAT,
            timeout: 431999,
            mark: 0,
            zone: 3,
            labels: None,
            id: 7,
            use_count: 1,
            tcp_state: Some(3),
            counters_orig: Some(ekho_mirror::conntrack::Counters {
                packets: 3,
                bytes: 180,
            }),
            counters_reply: None,
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
        icmp.orig.proto = 1;
        icmp.orig.dport = 8 << 8;
        icmp.orig.sport = 99;
        icmp.tcp_state = None;
        icmp.status = 0;
        let v = flow_json(&icmp);
        assert_eq!(
            (v["original"]["type"].clone(), v["original"]["code"].clone()),
            (json!(8), json!(0))
        );
        assert_eq!(v["original"]["id"], 99);
        assert!(v.get("state").is_none());
        assert_eq!(v["flags"], json!(["UNREPLIED"]));
    }
}
