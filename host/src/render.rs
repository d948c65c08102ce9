//! Human-readable output of the CLI (the JSON forms are the daemon's responses as they are).

use serde_json::Value;
use std::fmt::Write;

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k} {}", scalar(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// One object, iproute2-like: the first field bare, then `name value` pairs (links as
/// `ip link` prints them: `3: a0: <FLAGS> mtu ...`).
pub fn object(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return v.to_string();
    };
    if let (Some(i), Some(n), Some(f)) = (m.get("ifindex"), m.get("ifname"), m.get("flags")) {
        if m.contains_key("mtu") {
            let rest: serde_json::Map<String, Value> = m
                .iter()
                .filter(|(k, _)| !["ifindex", "ifname", "flags"].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let flags: Vec<String> = f.as_array().into_iter().flatten().map(scalar).collect();
            return format!(
                "{i}: {}: <{}> {}",
                scalar(n),
                flags.join(","),
                object_rest(&rest)
            );
        }
    }
    object_fields(m)
}

/// `name value` pairs only.
fn object_rest(m: &serde_json::Map<String, Value>) -> String {
    let mut v = serde_json::Map::new();
    v.insert(String::new(), Value::Null);
    v.extend(m.clone());
    object_fields(&v).trim_start().to_string()
}

/// iproute2's text for JSON fields it splits: `uid_start`/`uid_end` → `uidrange A-B`,
/// `sport_start`/`sport_end` → `sport A-B`, `flow_from`/`flow_to` → `realms FROM/TO`.
fn join_ranges(m: &serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for (k, v) in m {
        if let Some(base) = k.strip_suffix("_start") {
            if let Some(end) = m.get(&format!("{base}_end")) {
                let name = if base == "uid" { "uidrange" } else { base };
                out.insert(name.into(), format!("{}-{}", scalar(v), scalar(end)).into());
                continue;
            }
        }
        if let Some(base) = k.strip_suffix("_end") {
            if m.contains_key(&format!("{base}_start")) {
                continue;
            }
        }
        match k.as_str() {
            "flow_from" => continue,
            "flow_to" => {
                let r = match m.get("flow_from") {
                    Some(f) => format!("{}/{}", scalar(f), scalar(v)),
                    None => scalar(v),
                };
                out.insert("realms".into(), r.into());
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn object_fields(m: &serde_json::Map<String, Value>) -> String {
    let m = &join_ranges(m);
    let mut out = String::new();
    for (i, (k, val)) in m.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match val {
            Value::Array(a) if a.is_empty() => {
                out.push_str(k);
                out.push_str(" []");
            }
            Value::Null => out.push_str(k),
            Value::Bool(true) => out.push_str(k),
            _ if i == 0 => out.push_str(&scalar(val)),
            Value::Array(a) if a.iter().all(Value::is_object) => {
                let _ = write!(out, "{k}");
                for e in a {
                    let _ = write!(out, " [{}]", scalar(e));
                }
            }
            _ => {
                let _ = write!(out, "{k} {}", scalar(val));
            }
        }
    }
    out
}

/// `ekho dump` as it streams in: the JSON as `serde_json::to_string_pretty` prints the whole
/// document, or the human lines (`# kind (n)`, then one line per object).
pub struct DumpPrinter<W: std::io::Write> {
    out: W,
    json: bool,
    kinds: usize,
    kind: String,
    n: usize,
    /// The next kind's length, when the daemon sent it (`DumpEvent::Count`).
    announced: Option<usize>,
    /// The current kind's header is printed: its lines go straight out.
    streaming: bool,
    /// The current kind's lines, held to print `# KIND (N)` first when no length came.
    lines: String,
}

impl<W: std::io::Write> DumpPrinter<W> {
    pub fn new(out: W, json: bool) -> Self {
        DumpPrinter {
            out,
            json,
            kinds: 0,
            kind: String::new(),
            n: 0,
            announced: None,
            streaming: false,
            lines: String::new(),
        }
    }

    pub fn event(&mut self, e: crate::control::DumpEvent) -> std::io::Result<()> {
        use crate::control::DumpEvent;
        match e {
            DumpEvent::Count(n) => self.announced = Some(n),
            DumpEvent::Kind(k) => {
                if self.json {
                    let open = if self.kinds == 0 { "{" } else { "," };
                    write!(self.out, "{open}\n  {}: [", Value::from(k.as_str()))?;
                }
                self.kinds += 1;
                self.n = 0;
                self.lines.clear();
                // Text with the length known: the header now, each line as it arrives.
                self.streaming = match self.announced.take() {
                    Some(n) if !self.json => {
                        writeln!(self.out, "# {k} ({n})")?;
                        true
                    }
                    _ => false,
                };
                self.kind = k;
            }
            DumpEvent::Object(v) if self.json => {
                self.out
                    .write_all(if self.n == 0 { b"\n" } else { b",\n" })?;
                let text = serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?;
                for (i, line) in text.lines().enumerate() {
                    let sep = if i == 0 { "" } else { "\n" };
                    write!(self.out, "{sep}    {line}")?;
                }
                self.n += 1;
            }
            DumpEvent::Object(v) if self.streaming => {
                writeln!(self.out, "{}", object(&v))?;
                self.n += 1;
            }
            DumpEvent::Object(v) => {
                let _ = writeln!(self.lines, "{}", object(&v));
                self.n += 1;
            }
            DumpEvent::End if self.json => {
                self.out
                    .write_all(if self.n == 0 { b"]" } else { b"\n  ]" })?;
            }
            DumpEvent::End if self.streaming => self.streaming = false,
            DumpEvent::End => {
                writeln!(self.out, "# {} ({})", self.kind, self.n)?;
                self.out.write_all(self.lines.as_bytes())?;
                self.lines = String::new();
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        if self.json {
            self.out
                .write_all(if self.kinds == 0 { b"{}\n" } else { b"\n}\n" })?;
        }
        self.out.flush()
    }
}

/// `ekho monitor` (human).
pub fn change(v: &Value) -> String {
    format!(
        "[{}] {} {}",
        v["op"].as_str().unwrap_or("?"),
        v["kind"].as_str().unwrap_or("?"),
        object(&v["object"])
    )
}

/// `ekho status`.
pub fn status(v: &Value) -> String {
    let mut out = String::new();
    let e = &v["ekho"];
    let _ = writeln!(
        out,
        "ekho {} (api {}) pid {} up {}s  config: {}  netns: {}",
        scalar(&e["version"]),
        scalar(&e["api_version"]),
        e["pid"],
        e["uptime_s"],
        scalar(&e["config"]),
        scalar(&e["netns"])
    );
    let m = &v["mirror"];
    let _ = write!(out, "state: {}", scalar(&e["state"]));
    let p = &m["dump_progress"];
    if e["state"] == "syncing" || p["dumping"].is_string() {
        // The initial dump (or a restarted source's) as it runs.
        let dumped: Vec<String> = p["messages"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let _ = write!(
            out,
            " (dumping {}; messages so far: {})",
            p["dumping"].as_str().unwrap_or("-"),
            if dumped.is_empty() {
                "none".into()
            } else {
                dumped.join(" ")
            }
        );
    }
    out.push('\n');
    let src = &m["source"];
    if src["restarts"].as_u64().unwrap_or(0) > 0 || src["state"] == "restarting" {
        let _ = writeln!(
            out,
            "netlink source: {} restarts={} last error: {}",
            scalar(&src["state"]),
            src["restarts"],
            scalar(&src["last_error"])
        );
    }
    if let Some(u) = m["undecodable"].as_object().filter(|u| !u.is_empty()) {
        let parts: Vec<String> = u.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(out, "undecodable messages: {}", parts.join(" "));
    }
    let _ = writeln!(
        out,
        "mirror: synced={} messages={} changes={} overruns={} resyncs={} last_resync={}ms shared_route_attrs={}",
        m["synced"],
        m["messages"],
        m["changes"],
        m["overruns"],
        m["resyncs"],
        m["last_resync_ms"],
        m["route_attr_sets"]
    );
    if let Some(o) = m["objects"].as_object() {
        let parts: Vec<String> = o.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(out, "  objects: {}", parts.join(" "));
    }
    // Which event socket overran, and what the resyncs re-read (absent from older daemons).
    if let Some(o) = m["socket_overruns"].as_object().filter(|o| !o.is_empty()) {
        let parts: Vec<String> = o.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(out, "  overruns per socket: {}", parts.join(" "));
    }
    if let Some(o) = m["resynced"].as_object().filter(|o| !o.is_empty()) {
        let parts: Vec<String> = o.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(out, "  re-dumped per kind: {}", parts.join(" "));
    }
    let b = &v["ebpf"];
    let _ = write!(out, "ebpf: {}", scalar(&b["state"]));
    if let Some(r) = b["reason"].as_str() {
        let _ = write!(out, " ({r})");
    }
    if b["state"] == "running" {
        let _ = write!(out, " events={} lost={}", b["events"], b["lost"]);
    }
    out.push('\n');
    for h in b["hooks"].as_array().into_iter().flatten() {
        let _ = write!(out, "  {:<40} {}", scalar(&h["name"]), scalar(&h["state"]));
        if let Some(t) = h["to"].as_str() {
            let _ = write!(out, " -> {t}");
        }
        if let Some(r) = h["reason"].as_str() {
            let _ = write!(out, " ({r})");
        }
        out.push('\n');
    }
    let c = &v["conntrack"];
    if c.is_object() {
        let _ = write!(out, "conntrack: {}", scalar(&c["state"]));
        if let Some(r) = c["reason"].as_str() {
            let _ = write!(out, " ({r})");
        }
        if !c["flows"].is_null() {
            let _ = write!(
                out,
                " flows={} candidates={} limit={} refused={} events={} overruns={} resyncs={} kept_alive={} released={}",
                c["flows"],
                c["candidates"],
                c["limit"],
                c["refused"],
                c["events"],
                c["overruns"],
                c["resyncs"],
                c["kept_alive"],
                c["released"]
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "plugins:");
    let _ = writeln!(
        out,
        "  {:<16} {:<9} {:<9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>7} {:>6}",
        "NAME",
        "VERSION",
        "STATE",
        "OBJECTS",
        "APPLIED",
        "OFFLOADED",
        "TRAPPED",
        "FAILED",
        "REFUSED",
        "QUEUE"
    );
    for p in v["plugins"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<16} {:<9} {:<9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>7} {:>6}",
            scalar(&p["name"]),
            scalar(&p["version"]),
            scalar(&p["state"]),
            scalar(&p["objects"]),
            scalar(&p["applied"]),
            scalar(&p["offloaded"]),
            scalar(&p["trapped"]),
            scalar(&p["failed"]),
            scalar(&p["refused"]),
            scalar(&p["queue_depth"])
        );
        if let Some(r) = p["reason"].as_str() {
            let _ = writeln!(out, "    reason: {r}");
        }
        if let Some(h) = p["hung"].as_object() {
            let _ = writeln!(
                out,
                "    hung in {} since {} ms after the epoch",
                scalar(&h["call"]),
                scalar(&h["since_unix_ms"])
            );
        }
        if p["restarts"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(out, "    restarts: {}", p["restarts"]);
        }
        if p["flows_offloaded"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(out, "    flows offloaded: {}", p["flows_offloaded"]);
        }
        for c in p["counters"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    {} {} = {}",
                scalar(&c["kind"]),
                scalar(&c["name"]),
                c["value"]
            );
        }
        for t in p["tc_unsupported"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    unsupported filter {}: {}",
                scalar(&t["filter"]),
                scalar(&t["reason"])
            );
        }
        for f in p["recent_failures"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    failed {} {} {}: {}",
                scalar(&f["op"]),
                scalar(&f["kind"]),
                object(&f["object"]),
                scalar(&f["reason"])
            );
        }
        for f in p["recent_unsupported"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    unsupported {} {} {}: {}",
                scalar(&f["op"]),
                scalar(&f["kind"]),
                object(&f["object"]),
                scalar(&f["reason"])
            );
        }
    }
    out
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

fn caps(out: &mut String, c: &Value) {
    let _ = writeln!(out, "    kinds:     {}", scalar(&c["kinds"]));
    let _ = writeln!(out, "    families:  {}", scalar(&c["families"]));
    let _ = writeln!(out, "    notifiers: {}", or_none(scalar(&c["notifiers"])));
    let p = &c["ports"];
    let ports = if p["all"] == true {
        "all".to_string()
    } else {
        format!(
            "names [{}] drivers [{}]",
            scalar(&p["names"]),
            scalar(&p["drivers"])
        )
    };
    let _ = writeln!(out, "    ports:     {ports} (from {})", scalar(&p["from"]));
    let _ = writeln!(out, "    limits:    {}", or_none(scalar(&c["limits"])));
    let _ = writeln!(out, "    features:  {}", scalar(&c["features"]));
    if c["kinds"]
        .as_array()
        .is_some_and(|k| k.iter().any(|k| k == "flow"))
    {
        let _ = writeln!(out, "    flows:     {}", scalar(&c["flows"]));
    }
    if c["kinds"]
        .as_array()
        .is_some_and(|k| k.iter().any(|k| k == "filter"))
    {
        let t = &c["tc"];
        let tc = if t["all"] == true {
            "every filter".to_string()
        } else {
            let hooks: Vec<&str> = [
                ("ingress", "ingress"),
                ("egress", "egress"),
                ("shared_blocks", "shared blocks"),
                ("goto_chain", "goto chain"),
            ]
            .iter()
            .filter(|(k, _)| t[*k] == true)
            .map(|(_, n)| *n)
            .collect();
            format!(
                "classifiers [{}] actions [{}] flower keys [{}] mirred [{}] {}",
                scalar(&t["classifiers"]),
                scalar(&t["actions"]),
                scalar(&t["flower_keys"]),
                mirred_taken(t),
                hooks.join(", ")
            )
        };
        let _ = writeln!(out, "    tc:        {tc}");
    }
}

/// The mirred operations a plugin's tc capabilities take (`mirred_taken`), in words: an empty
/// `mirred` list takes all four (`TcCapabilities::mirred` fails open), which the text says.
fn mirred_taken(t: &Value) -> String {
    let taken: Vec<&str> = t["mirred_taken"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
        .collect();
    if taken.is_empty() {
        return "none: no mirred action".into();
    }
    let empty = t["mirred"].as_array().is_none_or(|m| m.is_empty());
    let note = if empty {
        " (the list is empty: all four)"
    } else {
        ""
    };
    format!("{}{note}", taken.join(", "))
}

/// `ekho plugins`.
pub fn plugins(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "host API {}", scalar(&v["host_api_version"]));
    if v["plugins"].as_array().is_none_or(|a| a.is_empty()) {
        // Also while a starting daemon has not loaded them yet.
        let _ = writeln!(
            out,
            "no plugin loaded (yet: `ekho status` shows whether the daemon is still starting; plugins are the config's [[plugins]] tables)"
        );
    }
    for p in v["plugins"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{} {} (built against ekho-plugin-api {}, {}) {}  [{}]",
            scalar(&p["name"]),
            scalar(&p["version"]),
            scalar(&p["api_version"]),
            scalar(&p["abi"]),
            scalar(&p["path"]),
            scalar(&p["state"])
        );
        if let Some(r) = p["reason"].as_str() {
            let _ = writeln!(out, "    refused: {r}");
        }
        if p["capabilities"].is_object() {
            caps(&mut out, &p["capabilities"]);
        }
    }
    out
}

/// `ekho check-plugin`.
pub fn check(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: ACCEPTED", scalar(&v["file"]));
    let _ = writeln!(
        out,
        "  plugin:      {} {}",
        scalar(&v["name"]),
        scalar(&v["version"])
    );
    if v["description"].as_str().is_some_and(|s| !s.is_empty()) {
        let _ = writeln!(out, "  description: {}", scalar(&v["description"]));
    }
    let _ = writeln!(
        out,
        "  built against ekho-plugin-api {}; this host is {} and accepts {}",
        scalar(&v["api_version"]),
        scalar(&v["host_api_version"]),
        scalar(&v["host_accepts"])
    );
    let _ = writeln!(out, "  runs:        {}", scalar(&v["abi"]));
    let _ = writeln!(out, "  capabilities:");
    caps(&mut out, &v["capabilities"]);
    out
}

/// `ekho reload`: one line per change.
pub fn reload(v: &Value) -> String {
    let list = |k: &str| -> String {
        let names: Vec<&str> = v[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join(", ")
        }
    };
    let mut out = format!(
        "reloaded {}\n  added: {}\n  removed: {}\n  restarted: {}\n  unchanged: {}\n",
        v["config"].as_str().unwrap_or("?"),
        list("added"),
        list("removed"),
        list("restarted"),
        list("unchanged")
    );
    if v["host_changed_needs_restart"] == true {
        out.push_str("  [host] changed: its keys take effect at the next start\n");
    }
    out
}

/// `ekho dump flows`: one line per entry as `conntrack -L -o extended` prints it, from the
/// JSON form (`flows::flow_json`); with `--stats`, the table's counters last.
pub fn flows(v: &Value) -> String {
    let mut out = String::new();
    for f in v["flows"].as_array().into_iter().flatten() {
        out.push_str(&flow_line(f));
        out.push('\n');
    }
    let s = &v["stats"];
    if s.is_object() {
        let _ = write!(out, "conntrack: {}", scalar(&s["state"]));
        if let Some(r) = s["reason"].as_str() {
            let _ = write!(out, " ({r})");
        }
        for k in [
            "flows",
            "candidates",
            "limit",
            "refused",
            "over_limit",
            "events",
            "messages",
            "overruns",
            "resyncs",
            "refreshes",
        ] {
            if !s[k].is_null() {
                let _ = write!(out, " {k}={}", s[k]);
            }
        }
        out.push('\n');
    }
    out
}

fn flow_tuple(out: &mut String, t: &Value) {
    for k in [
        "src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes",
    ] {
        if !t[k].is_null() {
            let _ = write!(out, " {k}={}", scalar(&t[k]));
        }
    }
}

/// One entry, `conntrack -L -o extended`'s line.
pub fn flow_line(f: &Value) -> String {
    let mut out = format!(
        "{:<8} {} {:<8} {} {}",
        scalar(&f["family"]),
        f["l3protonum"],
        scalar(&f["proto"]),
        f["protonum"],
        f["timeout"]
    );
    if let Some(s) = f["state"].as_str() {
        let _ = write!(out, " {s}");
    }
    let flags: Vec<&str> = f["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    flow_tuple(&mut out, &f["original"]);
    if flags.contains(&"UNREPLIED") {
        out.push_str(" [UNREPLIED]");
    }
    flow_tuple(&mut out, &f["reply"]);
    for fl in flags.iter().filter(|f| **f != "UNREPLIED") {
        let _ = write!(out, " [{fl}]");
    }
    for k in ["mark", "zone", "zone-orig", "zone-reply", "labels", "use"] {
        if !f[k].is_null() {
            let _ = write!(out, " {k}={}", scalar(&f[k]));
        }
    }
    // `--stats`: each plugin's counters of the flow, after the kernel's, in the same words,
    // per direction, and when it last saw a packet as `tc -s` says it (`used 3s`).
    for o in f["offload"].as_array().into_iter().flatten() {
        let _ = write!(out, " [OFFLOAD {}", scalar(&o["plugin"]));
        for dir in ["original", "reply"] {
            let d = &o[dir];
            if d.is_null() {
                continue;
            }
            let _ = write!(out, " {dir}:");
            for k in ["packets", "bytes", "drops"] {
                if !d[k].is_null() {
                    let _ = write!(out, " {k}={}", scalar(&d[k]));
                }
            }
            match d["last_used"].as_u64() {
                Some(s) => {
                    let _ = write!(out, " used {s}s");
                }
                None => out.push_str(" unused"),
            }
        }
        out.push(']');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_plugin_loaded_is_said_not_left_blank() {
        let none = plugins(&serde_json::json!({"host_api_version": "1.3.0", "plugins": []}));
        assert!(none.contains("no plugin loaded"), "{none}");
        let one = plugins(
            &serde_json::json!({"host_api_version": "1.3.0", "plugins": [
            {"name": "null", "version": "0.1.0", "api_version": "1.3.0", "abi": "native",
             "path": "/x/libekho_null.so", "state": "in_sync"}]}),
        );
        assert!(!one.contains("no plugin loaded"), "{one}");
        assert!(one.contains("null 0.1.0"), "{one}");
    }

    #[test]
    fn a_flow_line_names_the_directions_of_a_plugins_counters() {
        let f = serde_json::json!({
            "family": "ipv4", "l3protonum": 2, "proto": "tcp", "protonum": 6, "timeout": 300,
            "state": "ESTABLISHED", "flags": ["ASSURED"], "mark": 0,
            "original": {"src": "10.1.0.2", "dst": "10.2.0.2", "sport": 40000, "dport": 5001},
            "reply": {"src": "10.2.0.2", "dst": "10.2.0.1", "sport": 5001, "dport": 40000},
            "offload": [{"plugin": "xdp-router",
                "original": {"packets": 10, "bytes": 15000, "drops": 0, "last_used": 0},
                "reply": {"packets": 4, "bytes": 240, "drops": 0}}]
        });
        assert_eq!(
            flow_line(&f),
            "ipv4     2 tcp      6 300 ESTABLISHED src=10.1.0.2 dst=10.2.0.2 sport=40000 \
             dport=5001 src=10.2.0.2 dst=10.2.0.1 sport=5001 dport=40000 [ASSURED] mark=0 \
             [OFFLOAD xdp-router original: packets=10 bytes=15000 drops=0 used 0s \
             reply: packets=4 bytes=240 drops=0 unused]"
        );
    }

    /// Feeds `doc` to a printer as the client reads it from the daemon.
    fn streamed(doc: &Value, json: bool) -> String {
        streamed_counted(doc, json, false)
    }

    /// As [`streamed`], with each kind's length sent first when `counts` (the daemon does when
    /// the request asks for it).
    fn streamed_counted(doc: &Value, json: bool, counts: bool) -> String {
        use crate::control::DumpEvent;
        let mut out = Vec::new();
        let mut p = DumpPrinter::new(&mut out, json);
        for (k, list) in doc.as_object().unwrap() {
            if counts {
                p.event(DumpEvent::Count(list.as_array().unwrap().len()))
                    .unwrap();
            }
            p.event(DumpEvent::Kind(k.clone())).unwrap();
            for o in list.as_array().unwrap() {
                p.event(DumpEvent::Object(o.clone())).unwrap();
            }
            p.event(DumpEvent::End).unwrap();
        }
        p.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_streamed_dump_prints_as_the_whole_document_would() {
        let doc = serde_json::json!({
            "links": [{"ifindex": 1, "ifname": "lo", "flags": ["UP"], "mtu": 65536}],
            "addresses": [],
            "routes": [
                {"dst": "10.0.0.0/24", "dev": "a0", "nested": {"x": [1, 2]}},
                {"dst": "10.0.1.0/24", "gateway": "10.0.0.1", "dev": "a0"}
            ]
        });
        assert_eq!(
            streamed(&doc, true),
            format!("{}\n", serde_json::to_string_pretty(&doc).unwrap())
        );
        let empty = serde_json::json!({});
        assert_eq!(streamed(&empty, true), "{}\n");
        let text = streamed(&doc, false);
        assert!(
            text.starts_with("# links (1)\n1: lo: <UP> mtu 65536\n# addresses (0)\n# routes (2)\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 6, "{text}");
        // With each kind's length sent first: the same bytes, in either form.
        assert_eq!(streamed_counted(&doc, false, true), text);
        assert_eq!(streamed_counted(&doc, true, true), streamed(&doc, true));
    }

    /// With the length sent first, the header and each line are written as they arrive, before
    /// the kind's list ends (nothing of the kind held in the CLI).
    #[test]
    fn a_counted_kind_is_printed_as_it_arrives() {
        use crate::control::DumpEvent;
        let mut out = Vec::new();
        let mut p = DumpPrinter::new(&mut out, false);
        p.event(DumpEvent::Count(2)).unwrap();
        p.event(DumpEvent::Kind("routes".into())).unwrap();
        p.event(DumpEvent::Object(
            serde_json::json!({"dst": "10.0.0.0/24", "dev": "a0"}),
        ))
        .unwrap();
        let so_far = String::from_utf8(p.out.clone()).unwrap();
        assert_eq!(so_far, "# routes (2)\n10.0.0.0/24 dev a0\n");
        assert!(p.lines.is_empty());
        // A kind without a length (an older daemon) is still held to count it.
        p.event(DumpEvent::End).unwrap();
        p.event(DumpEvent::Kind("links".into())).unwrap();
        p.event(DumpEvent::Object(
            serde_json::json!({"ifindex": 1, "ifname": "lo"}),
        ))
        .unwrap();
        assert!(!p.lines.is_empty());
    }

    #[test]
    fn links_read_like_ip_link() {
        let v = serde_json::json!({"ifindex": 3, "ifname": "a0", "flags": ["UP", "LOWER_UP"], "mtu": 1500, "master": "br0"});
        assert_eq!(object(&v), "3: a0: <UP,LOWER_UP> mtu 1500 master br0");
    }

    #[test]
    fn rule_ranges_read_like_iproute2() {
        let v = serde_json::json!({"priority": 11, "src": "all", "uid_start": 1000,
            "uid_end": 2000, "sport_start": 1, "sport_end": 9, "dport": 80,
            "flow_from": "3", "flow_to": "4", "table": "101"});
        assert_eq!(
            object(&v),
            "11 src all uidrange 1000-2000 sport 1-9 dport 80 realms 3/4 table 101"
        );
    }

    #[test]
    fn object_reads_like_iproute2() {
        let v = serde_json::json!({"dst": "10.0.0.0/24", "gateway": "10.1.0.1", "dev": "veth0", "flags": []});
        assert_eq!(
            object(&v),
            "10.0.0.0/24 gateway 10.1.0.1 dev veth0 flags []"
        );
    }
}
