//! tc filters handed to plugins (API 1.3): a filter reaches a plugin that can run it whole, a
//! plugin declaring no tc capability receives no tc object, and a filter a plugin cannot run is
//! reported `unsupported` with tc's reason (`ekho status`, `ekho dump filters`) while the kernel
//! keeps running it in software (its counters rise under traffic).
//!
//! On this machine's kernel (u32, bpf, mirred only): u32 with mirred. flower with pedit and
//! with drop needs the 6.1 VM (tests/vm/run, set `daemon`); elsewhere it says `SKIP:`.

use ekho_tests::*;
use serde_json::Value;
use std::time::Duration;

fn tc(ns: &Netns, cmd: &str) -> Result<(), String> {
    let out = std::process::Command::new("tc")
        .args(["-n", &ns.name])
        .args(cmd.split_whitespace())
        .output()
        .expect("tc");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

const TC_KINDS: [&str; 4] = ["qdisc", "class", "filter", "action"];

/// The filters in a recorder's events, as last seen (by `pref` and `handle`), `None` once
/// removed.
fn last_filter(events: &[Value], pref: u64) -> Option<Value> {
    let mut last = None;
    for e in events {
        if e["kind"] == "filter" && e["object"]["pref"] == pref {
            last = match e["op"].as_str() {
                Some("remove") => None,
                _ => Some(e["object"].clone()),
            };
        }
    }
    last
}

/// `ekho status`'s tc refusals of a plugin: (filter, reason).
fn refusals(d: &Daemon, plugin: &str) -> Vec<(String, String)> {
    d.plugin(plugin)["tc_unsupported"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["filter"].as_str().unwrap_or("").to_string(),
                t["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Two namespaces: `v0` (owned by the plugins scoped to `v*`) in the first, its peer `v1` in
/// the second (10.0.0.1 and 10.0.0.2), and `p0` (not owned) and `v2` (owned) with peers that
/// drop what they receive.
fn setup() -> (Netns, Netns) {
    let ns = Netns::new();
    let peer = Netns::new();
    ns.ip_batch(&format!(
        "link add v0 type veth peer name v1 netns {peer}
link add p0 type veth peer name p1
link add v2 type veth peer name v3
link set v0 up
link set p0 up
link set p1 up
link set v2 up
link set v3 up
addr add 10.0.0.1/24 dev v0
",
        peer = peer.name
    ));
    peer.ip_batch("link set v1 up\naddr add 10.0.0.2/24 dev v1\n");
    (ns, peer)
}

fn ping(peer: &Netns, n: u32) {
    // Answered or not (a filter may redirect or drop the requests): the packets were sent.
    let _ = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &peer.name,
            "ping",
            "-c",
            &n.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
        ])
        .args(["-q", "10.0.0.1"])
        .output();
}

/// A filter's kernel packets (first action) and each plugin's, from `ekho dump filters --stats
/// --json`, for the entry with `pref` and a handle.
fn counters(d: &Daemon, pref: u64) -> (u64, Vec<(String, u64)>) {
    let v = d.cli_json(&["dump", "filters", "--stats", "--json"]);
    let f = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pref"] == pref && f["options"]["actions"].is_array())
        .cloned()
        .unwrap_or_else(|| panic!("no filter pref {pref}: {v}"));
    let sw = f["options"]["actions"][0]["stats"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no kernel counters: {f}"));
    let plugins = f["ekho_stats"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["plugin"].as_str().unwrap().to_string(),
                s["packets"].as_u64().unwrap(),
            )
        })
        .collect();
    (sw, plugins)
}

#[test]
fn u32_filters_reach_the_plugins_that_run_them_and_the_others_say_why() {
    if let Some(s) =
        needs_root("tc filters").or_else(|| missing_tools(&["tc", "ping"], "iproute2 iputils-ping"))
    {
        return say_skip(&s);
    }
    let (ns, peer) = setup();
    tc(&ns, "qdisc add dev v0 clsact").unwrap();
    // Redirected to p0, which the scoped plugins do not own.
    tc(
        &ns,
        "filter add dev v0 ingress pref 1 protocol ip u32 match ip dst 10.0.0.1/32 action mirred egress redirect dev p0",
    )
    .unwrap();
    let dir = TempDir::new();
    let ev = |n: &str| dir.path().join(format!("{n}.jsonl"));
    let active = dir.path().join("active");
    let plugins = format!(
        "[[plugins]]\nname = \"rec\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nfilters_active_path = \"{}\"\nunsupported_prefs = [2]\nunsupported_routes = [\"10.77.0.0/16\"]\n\n\
         [[plugins]]\nname = \"notc\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"link\", \"address\", \"route\"]\n\n\
         [[plugins]]\nname = \"flower_only\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"filter\"]\nports = [\"v*\"]\ntc = {{ classifiers = [\"flower\"], actions = [\"gact\"] }}\n\n\
         [[plugins]]\nname = \"u32_v\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"filter\"]\nports = [\"v*\"]\ntc = {{ classifiers = [\"u32\"], actions = [\"mirred\"], mirred = [\"egress redirect\"], egress = false }}\n",
        ev("rec").display(),
        active.display(),
        ev("notc").display(),
        ev("flower_only").display(),
        ev("u32_v").display(),
    );
    let cfg = host_config(&ns.name, build(), false, &plugins);
    let d = Daemon::start(dir.path(), &cfg);
    d.settle();

    // The recorder taking everything got the qdisc and the filter, its u32 selector and its
    // mirred action typed.
    let rec = read_events(&ev("rec"));
    let f = last_filter(&rec, 1).unwrap_or_else(|| panic!("no filter: {rec:?}"));
    assert_eq!(f["kind"], "u32", "{f}");
    assert_eq!(f["parent"], "ingress", "{f}");
    assert_eq!(
        f["options"]["match"][0]["match"], "0a000001/ffffffff",
        "{f}"
    );
    let a = &f["options"]["actions"][0];
    assert_eq!(
        (
            &a["kind"],
            &a["mirred_action"],
            &a["control_action"]["type"]
        ),
        (
            &"mirred".into(),
            &"egress redirect".into(),
            &"stolen".into()
        ),
        "{a}"
    );
    assert_eq!(a["ifindex"], ns.ifindex("p0"));
    assert!(rec
        .iter()
        .any(|e| e["kind"] == "qdisc" && e["object"]["kind"] == "clsact"));

    // A plugin declaring no tc kind receives no tc object.
    let notc = read_events(&ev("notc"));
    assert!(notc.iter().any(|e| e["kind"] == "link"), "{notc:?}");
    let got: Vec<&Value> = notc
        .iter()
        .filter(|e| TC_KINDS.contains(&e["kind"].as_str().unwrap_or("")))
        .collect();
    assert!(got.is_empty(), "a plugin without tc kinds got {got:?}");

    // The others are told why, in tc's words, and get nothing.
    let place = "dev v0 ingress pref 1 chain 0 fh 800::800";
    assert_eq!(
        refusals(&d, "flower_only"),
        [(
            place.to_string(),
            "classifier u32 not supported".to_string()
        )]
    );
    assert_eq!(
        refusals(&d, "u32_v"),
        [(
            place.to_string(),
            "mirred to p0 (not an owned port)".to_string()
        )]
    );
    assert!(last_filter(&read_events(&ev("u32_v")), 1).is_none());
    let text = String::from_utf8(d.cli(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "unsupported filter {place}: mirred to p0 (not an owned port)"
        )),
        "{text}"
    );
    let text = String::from_utf8(d.cli(&["dump", "filters"]).stdout).unwrap();
    for l in [
        "\toffload: offloaded [rec]",
        "\toffload: unsupported (classifier u32 not supported) [flower_only]",
        "\toffload: unsupported (mirred to p0 (not an owned port)) [u32_v]",
    ] {
        assert!(text.contains(l), "{l:?} not in\n{text}");
    }

    // The kernel runs it in software: its counter rises under traffic; the recorder's, counting
    // while `active` exists, rises too.
    let (before, _) = counters(&d, 1);
    std::fs::write(&active, b"").unwrap();
    ping(&peer, 5);
    let risen = wait_for(Duration::from_secs(10), || {
        let (sw, plugins) = counters(&d, 1);
        let rec = plugins.iter().find(|(p, _)| p == "rec").map_or(0, |p| p.1);
        (sw >= before + 5 && rec > 0).then_some((sw, rec))
    });
    assert!(risen.is_some(), "{:?}", counters(&d, 1));
    let text = String::from_utf8(d.cli(&["dump", "filters", "--stats"]).stdout).unwrap();
    assert!(text.contains("\tSent "), "{text}");
    assert!(text.contains("\trec: "), "{text}");

    // Replaced into what u32_v can run (a redirect to an owned port): added; replaced back: a
    // removal, and the reason again.
    let replace = |to: &str| {
        tc(
            &ns,
            &format!("filter replace dev v0 ingress pref 1 protocol ip handle 800::800 u32 match ip dst 10.0.0.1/32 action mirred egress redirect dev {to}"),
        )
        .unwrap()
    };
    replace("v2");
    d.settle();
    let f = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev("u32_v")), 1)
    });
    let f = f.unwrap_or_else(|| {
        panic!(
            "u32_v did not get the filter: {:?}\n{}\nrec's: {:?}",
            refusals(&d, "u32_v"),
            String::from_utf8_lossy(&d.cli(&["dump", "filters"]).stdout),
            last_filter(&read_events(&ev("rec")), 1)
        )
    });
    assert_eq!(f["options"]["actions"][0]["ifindex"], ns.ifindex("v2"));
    assert!(refusals(&d, "u32_v").is_empty());
    replace("p0");
    d.settle();
    let gone = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev("u32_v")), 1)
            .is_none()
            .then_some(())
    });
    assert!(gone.is_some(), "{:?}", read_events(&ev("u32_v")));
    assert_eq!(refusals(&d, "u32_v").len(), 1);

    // The redirect's port renamed into the scope: the filter is added; renamed back out of it:
    // removed, with the reason again.
    let rename = |from: &str, to: &str| {
        ns.ip_batch(&format!(
            "link set {from} down\nlink set {from} name {to}\nlink set {to} up\n"
        ))
    };
    rename("p0", "v9");
    let got = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev("u32_v")), 1)
    });
    assert!(got.is_some(), "{:?}", refusals(&d, "u32_v"));
    assert!(refusals(&d, "u32_v").is_empty());
    rename("v9", "p0");
    let gone = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev("u32_v")), 1)
            .is_none()
            .then_some(())
    });
    assert!(gone.is_some(), "{:?}", read_events(&ev("u32_v")));
    assert_eq!(
        refusals(&d, "u32_v"),
        [(
            place.to_string(),
            "mirred to p0 (not an owned port)".to_string()
        )]
    );

    // Deleted: gone from every plugin, nothing left to say.
    tc(&ns, "filter del dev v0 ingress pref 1").unwrap();
    d.settle();
    let gone = wait_for(Duration::from_secs(10), || {
        (last_filter(&read_events(&ev("rec")), 1).is_none()
            && refusals(&d, "flower_only").is_empty()
            && refusals(&d, "u32_v").is_empty())
        .then_some(())
    });
    assert!(gone.is_some(), "{:?}", refusals(&d, "flower_only"));

    // A plugin's own refusal (API 1.4: `unsupported` with its reason; the recorder refuses
    // pref 2 and 10.77.0.0/16 so) is shown where the host's are: `ekho dump filters` (text and
    // JSON), `ekho status` (text and JSON), in the same words.
    u32_redirect(&ns, 2, "v2");
    ns.ip("route add 10.77.0.0/16 dev v0");
    d.settle();
    let why = "recorder: pref 2 is in unsupported_prefs";
    let mine = wait_for(Duration::from_secs(10), || {
        let r = refusals(&d, "rec");
        (!r.is_empty()).then_some(r)
    })
    .unwrap_or_else(|| panic!("no refusal of rec: {}", d.plugin("rec")));
    assert!(
        mine.len() == 1
            && mine[0].0.starts_with("dev v0 ingress pref 2 chain 0 fh ")
            && mine[0].1 == why,
        "{mine:?}"
    );
    let rec = d.plugin("rec");
    assert_eq!(rec["tc_unsupported"][0]["by"], "plugin", "{rec}");
    assert_eq!(rec["outcomes"]["filters"]["unsupported"], 1, "{rec}");
    let route = rec["recent_unsupported"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["kind"] == "route")
        .unwrap_or_else(|| panic!("no route in recent_unsupported: {rec}"));
    assert_eq!(
        (&route["op"], &route["object"]["dst"], &route["reason"]),
        (
            &"add".into(),
            &"10.77.0.0/16".into(),
            &"recorder: 10.77.0.0/16 is in unsupported_routes".into()
        ),
        "{route}"
    );
    // The host's refusal of the same filter stays the host's.
    assert_eq!(
        refusals(&d, "flower_only"),
        [(
            mine[0].0.clone(),
            "classifier u32 not supported".to_string()
        )]
    );
    let text = String::from_utf8(d.cli(&["dump", "filters"]).stdout).unwrap();
    for l in [
        format!("\toffload: unsupported ({why}) [rec]"),
        "\toffload: unsupported (classifier u32 not supported) [flower_only]".to_string(),
        "\toffload: offloaded [u32_v]".to_string(),
    ] {
        assert!(text.contains(&l), "{l:?} not in\n{text}");
    }
    let dump = d.cli_json(&["dump", "filters", "--json"]);
    let offload = dump
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["pref"] == 2)
        .flat_map(|f| f["ekho_offload"].as_array().cloned().unwrap_or_default())
        .find(|o| o["plugin"] == "rec");
    assert_eq!(
        offload,
        Some(serde_json::json!({"plugin": "rec", "outcome": "unsupported", "reason": why})),
        "{dump}"
    );
    let text = String::from_utf8(d.cli(&["status"]).stdout).unwrap();
    for l in [
        format!("unsupported filter {}: {why}", mine[0].0),
        "unsupported add route 10.77.0.0/16".to_string(),
    ] {
        assert!(text.contains(&l), "{l:?} not in\n{text}");
    }
    // Deleted: the plugin's reason goes with it.
    tc(&ns, "filter del dev v0 ingress pref 2").unwrap();
    d.settle();
    let gone = wait_for(Duration::from_secs(10), || {
        refusals(&d, "rec").is_empty().then_some(())
    });
    assert!(gone.is_some(), "{:?}", refusals(&d, "rec"));
}

#[test]
fn a_flower_filter_with_pedit_stays_in_software_and_with_drop_reaches_the_plugin() {
    if let Some(s) =
        needs_root("tc filters").or_else(|| missing_tools(&["tc", "ping"], "iproute2 iputils-ping"))
    {
        return say_skip(&s);
    }
    let (ns, peer) = setup();
    tc(&ns, "qdisc add dev v0 clsact").unwrap();
    let add = "filter add dev v0 ingress pref 1 handle 1 protocol ip flower dst_ip 10.0.0.1 ip_proto icmp action pedit ex munge ip ttl set 9";
    if let Err(e) = tc(&ns, add) {
        return say_skip(&format!(
            "kernel {} lacks tc flower or pedit ({e}); run in the 6.1 VM (tests/vm/run)",
            kernel()
        ));
    }
    let dir = TempDir::new();
    let ev = dir.path().join("fx.jsonl");
    let plugins = format!(
        "[[plugins]]\nname = \"fx\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"filter\"]\nports = [\"v*\"]\ntc = {{ classifiers = [\"flower\"], actions = [\"gact\"], egress = false }}\n",
        ev.display()
    );
    let cfg = host_config(&ns.name, build(), false, &plugins);
    let d = Daemon::start(dir.path(), &cfg);
    d.settle();

    let place = "dev v0 ingress pref 1 chain 0 handle 0x1";
    assert_eq!(
        refusals(&d, "fx"),
        [(place.to_string(), "action pedit not supported".to_string())]
    );
    assert!(last_filter(&read_events(&ev), 1).is_none());
    let text = String::from_utf8(d.cli(&["dump", "filters"]).stdout).unwrap();
    assert!(
        text.contains("\toffload: unsupported (action pedit not supported) [fx]"),
        "{text}"
    );
    // The kernel does the work: pedit's software counter rises.
    let (before, _) = counters(&d, 1);
    ping(&peer, 5);
    let risen = wait_for(Duration::from_secs(10), || {
        let (sw, _) = counters(&d, 1);
        (sw >= before + 5).then_some(sw)
    });
    assert!(risen.is_some(), "{:?}", counters(&d, 1));

    // The same filter with `action drop` reaches the plugin, its match typed.
    tc(
        &ns,
        "filter replace dev v0 ingress pref 1 handle 1 protocol ip flower dst_ip 10.0.0.1 ip_proto icmp action drop",
    )
    .unwrap();
    d.settle();
    let f = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev), 1)
    });
    let f = f.unwrap_or_else(|| panic!("fx did not get the filter: {}", d.log_text()));
    assert_eq!(f["kind"], "flower");
    assert_eq!(f["options"]["keys"]["dst_ip"], "10.0.0.1/32", "{f}");
    assert_eq!(f["options"]["keys"]["ip_proto"], "icmp", "{f}");
    assert_eq!(f["options"]["actions"][0]["control_action"]["type"], "drop");
    assert!(refusals(&d, "fx").is_empty());
    let text = String::from_utf8(d.cli(&["dump", "filters"]).stdout).unwrap();
    assert!(text.contains("\toffload: offloaded [fx]"), "{text}");
}

/// A recorder taking u32 filters with a redirect to an owned port, scoped to `v*`, declaring at
/// most `limit` filters.
fn u32_plugin(name: &str, events: &std::path::Path, limit: Option<u64>) -> String {
    let limits = limit.map_or(String::new(), |n| format!("limits = {{ filter = {n} }}\n"));
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"filter\"]\nports = [\"v*\"]\n{limits}tc = {{ classifiers = [\"u32\"], actions = [\"mirred\"], mirred = [\"egress redirect\"], egress = false }}\n",
        events.display()
    )
}

fn u32_redirect(ns: &Netns, pref: u32, to: &str) {
    tc(
        ns,
        &format!("filter add dev v0 ingress pref {pref} protocol ip u32 match ip dst 10.0.0.1/32 action mirred egress redirect dev {to}"),
    )
    .unwrap();
}

#[test]
fn a_filter_refused_by_tc_while_at_the_limit_is_not_offered_again_when_room_frees_up() {
    if let Some(s) = needs_root("tc filters").or_else(|| missing_tools(&["tc"], "iproute2")) {
        return say_skip(&s);
    }
    let (ns, _peer) = setup();
    tc(&ns, "qdisc add dev v0 clsact").unwrap();
    u32_redirect(&ns, 5, "v2");
    let dir = TempDir::new();
    let ev = dir.path().join("lim.jsonl");
    let cfg = host_config(&ns.name, build(), false, &u32_plugin("lim", &ev, Some(1)));
    let d = Daemon::start(dir.path(), &cfg);
    d.settle();
    assert!(last_filter(&read_events(&ev), 5).is_some(), "pref 5 taken");
    // At the limit, a filter the plugin cannot run (a redirect to p0) arrives: refused by the
    // tc check, not by the limit.
    u32_redirect(&ns, 7, "p0");
    d.settle();
    // Room frees up: nothing refused at the limit is there to offer again.
    tc(&ns, "filter del dev v0 ingress pref 5").unwrap();
    d.settle();
    let gone = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev), 5).is_none().then_some(())
    });
    assert!(gone.is_some(), "{:?}", read_events(&ev));
    assert!(
        last_filter(&read_events(&ev), 7).is_none(),
        "a filter redirecting to p0 reached the plugin: {:?}",
        read_events(&ev)
    );
    let r = refusals(&d, "lim");
    assert!(
        r.len() == 1
            && r[0].0.starts_with("dev v0 ingress pref 7 chain 0 ")
            && r[0].1 == "mirred to p0 (not an owned port)",
        "{r:?}"
    );
}

/// The flower-xdp shadowing case on this kernel's classifier: a plugin running a filter before
/// the kernel's turn at an earlier one it was not given would decide frames both match.
#[test]
fn a_filter_after_one_not_handed_over_stays_with_the_kernel() {
    if let Some(s) = needs_root("tc filters").or_else(|| missing_tools(&["tc"], "iproute2")) {
        return say_skip(&s);
    }
    let (ns, _peer) = setup();
    tc(&ns, "qdisc add dev v0 clsact").unwrap();
    // pref 1 redirects to p0 (not owned: not handed over); pref 2, which the plugin could run,
    // sees only what pref 1 does not take.
    u32_redirect(&ns, 1, "p0");
    u32_redirect(&ns, 2, "v2");
    let dir = TempDir::new();
    let ev = dir.path().join("sh.jsonl");
    let cfg = host_config(&ns.name, build(), false, &u32_plugin("sh", &ev, None));
    let d = Daemon::start(dir.path(), &cfg);
    d.settle();
    let reasons = |d: &Daemon| -> Vec<(String, String)> {
        refusals(d, "sh")
            .into_iter()
            .map(|(f, r)| (f.split(" fh ").next().unwrap().to_string(), r))
            .collect()
    };
    let shadowed = vec![
        (
            "dev v0 ingress pref 1 chain 0".to_string(),
            "mirred to p0 (not an owned port)".to_string(),
        ),
        (
            "dev v0 ingress pref 2 chain 0".to_string(),
            "after pref 1 chain 0, which is not offloaded".to_string(),
        ),
    ];
    // At start-up (the initial dump's stream).
    assert_eq!(reasons(&d), shadowed);
    assert!(
        last_filter(&read_events(&ev), 2).is_none(),
        "{:?}",
        read_events(&ev)
    );
    let text = String::from_utf8(d.cli(&["dump", "filters"]).stdout).unwrap();
    assert!(
        text.contains("\toffload: unsupported (after pref 1 chain 0, which is not offloaded) [sh]"),
        "{text}"
    );

    // The earlier one deleted: the later one is handed over.
    tc(&ns, "filter del dev v0 ingress pref 1").unwrap();
    d.settle();
    let got = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev), 2)
    });
    assert!(got.is_some(), "{:?}", reasons(&d));
    assert!(reasons(&d).is_empty(), "{:?}", reasons(&d));

    // Added again: removed from the plugin, with the reason.
    u32_redirect(&ns, 1, "p0");
    d.settle();
    let gone = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev), 2).is_none().then_some(())
    });
    assert!(gone.is_some(), "{:?}", read_events(&ev));
    assert_eq!(reasons(&d), shadowed);

    // Replaced into what the plugin runs: both handed over. (Added again, pref 1's u32
    // hash table is another one: its handle is read from the status.)
    let place = &refusals(&d, "sh")[0].0;
    // tc's own `fh` notation, which `tc filter replace ... handle` takes as it is.
    let handle = place.rsplit("fh ").next().unwrap();
    tc(
        &ns,
        &format!("filter replace dev v0 ingress pref 1 protocol ip handle {handle} u32 match ip dst 10.0.0.1/32 action mirred egress redirect dev v2"),
    )
    .unwrap();
    d.settle();
    let both = wait_for(Duration::from_secs(10), || {
        let e = read_events(&ev);
        (last_filter(&e, 1).is_some() && last_filter(&e, 2).is_some()).then_some(())
    });
    assert!(both.is_some(), "{:?}", reasons(&d));
    assert!(reasons(&d).is_empty(), "{:?}", reasons(&d));
}

/// Two filters of one pref are one classifier instance, whose own order decides between them:
/// beside one not handed over, the other stays with the kernel too, and is handed over once
/// that one is gone.
#[test]
fn a_filter_beside_one_not_handed_over_stays_with_the_kernel() {
    if let Some(s) = needs_root("tc filters").or_else(|| missing_tools(&["tc"], "iproute2")) {
        return say_skip(&s);
    }
    let (ns, _peer) = setup();
    tc(&ns, "qdisc add dev v0 clsact").unwrap();
    // pref 1: 800::800 redirects to p0 (not owned), 800::801 to v2 (owned).
    u32_redirect(&ns, 1, "p0");
    tc(
        &ns,
        "filter add dev v0 ingress pref 1 protocol ip u32 match ip dst 10.0.0.2/32 action mirred egress redirect dev v2",
    )
    .unwrap();
    let dir = TempDir::new();
    let ev = dir.path().join("bs.jsonl");
    let cfg = host_config(&ns.name, build(), false, &u32_plugin("bs", &ev, None));
    let d = Daemon::start(dir.path(), &cfg);
    d.settle();
    let mut r = refusals(&d, "bs");
    r.sort();
    assert_eq!(
        r,
        [
            (
                "dev v0 ingress pref 1 chain 0 fh 800::800".to_string(),
                "mirred to p0 (not an owned port)".to_string()
            ),
            (
                "dev v0 ingress pref 1 chain 0 fh 800::801".to_string(),
                "beside pref 1 chain 0, which is not offloaded".to_string()
            ),
        ]
    );
    assert!(
        last_filter(&read_events(&ev), 1).is_none(),
        "{:?}",
        read_events(&ev)
    );
    // The one not handed over deleted: its sibling is.
    tc(
        &ns,
        "filter del dev v0 ingress pref 1 protocol ip handle 800::800 u32",
    )
    .unwrap();
    d.settle();
    let got = wait_for(Duration::from_secs(10), || {
        last_filter(&read_events(&ev), 1)
    });
    assert!(got.is_some(), "{:?}", refusals(&d, "bs"));
    assert!(refusals(&d, "bs").is_empty(), "{:?}", refusals(&d, "bs"));
}

/// `TcCapabilities::mirred` empty takes all four operations (it fails open, unlike the other
/// lists): `ekho check-plugin` says so, in text and JSON.
#[test]
fn check_plugin_spells_out_the_mirred_operations_an_empty_list_takes() {
    let dir = TempDir::new();
    let check = |tc: &str, json: bool| -> String {
        let cfg = dir.path().join("cfg.toml");
        std::fs::write(
            &cfg,
            format!(
                "events_path = \"{}\"\nkinds = [\"filter\"]\ntc = {tc}\n",
                dir.path().join("e.jsonl").display()
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(ekho_bin());
        cmd.arg("check-plugin")
            .arg(build().join("libekho_recorder.so"))
            .arg("--plugin-config")
            .arg(&cfg);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = check(
        "{ classifiers = [\"u32\"], actions = [\"mirred\"], ingress = true }",
        false,
    );
    assert!(
        text.contains("mirred [egress redirect, egress mirror, ingress redirect, ingress mirror (the list is empty: all four)]"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&check(
        "{ classifiers = [\"u32\"], actions = [\"mirred\"], ingress = true }",
        true,
    ))
    .unwrap();
    let tc = &v["capabilities"]["tc"];
    assert_eq!(tc["mirred"], serde_json::json!([]), "{v}");
    assert_eq!(
        tc["mirred_taken"],
        serde_json::json!([
            "egress redirect",
            "egress mirror",
            "ingress redirect",
            "ingress mirror"
        ]),
        "{v}"
    );
    let text = check(
        "{ classifiers = [\"u32\"], actions = [\"mirred\"], mirred = [\"egress redirect\"] }",
        false,
    );
    assert!(text.contains("mirred [egress redirect] "), "{text}");
    let text = check("{ classifiers = [\"u32\"], actions = [\"gact\"] }", false);
    assert!(text.contains("mirred [none: no mirred action]"), "{text}");
}
