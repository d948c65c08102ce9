//! End-to-end tests of the plugin host: real `.so` plugins, a real daemon, a private netns.

use ekho_plugin_api::version::{accepted_range, API_VERSION};
use ekho_tests::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The plugin API versions this host accepts (`^0.2`).
fn accepted() -> String {
    accepted_range(API_VERSION).unwrap()
}

fn base_config(ns: &Netns, plugin_dir: &Path, plugins: &str) -> String {
    host_config(&ns.name, plugin_dir, false, plugins)
}

/// veth pair a0/b0 in `ns`, addresses, a few routes.
fn topology(ns: &Netns) {
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
    ns.ip(&["link", "set", "a0", "up"]);
    ns.ip(&["link", "set", "b0", "up"]);
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "a0"]);
    ns.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "a0", "nodad"]);
    ns.ip(&["route", "add", "10.50.0.0/16", "via", "10.1.0.2"]);
    ns.ip(&[
        "route",
        "add",
        "10.51.0.0/16",
        "via",
        "10.1.0.2",
        "table",
        "100",
    ]);
}

/// A kind's place in the replay's dependency order: the API's own (`order::kind_rank`).
fn kind_rank(kind: &str) -> u16 {
    let k = ekho_plugin_api::object::ObjectKind::from_name(kind)
        .unwrap_or_else(|| panic!("the recorder named an unknown kind {kind:?}"));
    ekho_plugin_api::order::kind_rank(k)
}

#[test]
fn replay_then_increments_reach_the_recorder_in_order() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let events = dir.path().join("events.jsonl");
    let view = dir.path().join("view.json");
    let cfg = base_config(
        &ns,
        build(),
        &format!(
            "[[plugins]]\nname = \"recorder\"\n[plugins.config]\nevents_path = \"{}\"\nview_path = \"{}\"\n",
            events.display(),
            view.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    assert_eq!(d.plugin("recorder")["state"], "in_sync");

    // Replay: begin_sync, additions in dependency order, end_sync.
    let ev = read_events(&events);
    assert_eq!(ev[0]["op"], "begin_sync", "{:?}", ev[0]);
    let end = ev
        .iter()
        .position(|e| e["op"] == "end_sync")
        .expect("end_sync");
    let replay = &ev[1..end];
    assert!(
        replay.iter().all(|e| e["op"] == "add"),
        "replay must be additions only"
    );
    let ranks: Vec<u16> = replay
        .iter()
        .map(|e| kind_rank(e["kind"].as_str().unwrap()))
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "replay not in dependency order: {ranks:?}"
    );
    let has = |kind: &str, f: &dyn Fn(&Value) -> bool| {
        replay.iter().any(|e| e["kind"] == kind && f(&e["object"]))
    };
    assert!(has("link", &|o| o["ifname"] == "a0"));
    assert!(has("address", &|o| o["local"] == "10.1.0.1"));
    assert!(has("route", &|o| o["dst"] == "10.50.0.0/16"
        && o["gateway"] == "10.1.0.2"));
    assert!(has("route", &|o| o["dst"] == "10.51.0.0/16"
        && o["table"] == "100"));
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seq must count up by one"
    );

    // Increments after the replay, in order.
    // (Settling between steps: a busy plugin would get them coalesced, which is tested below.)
    ns.ip(&["route", "add", "10.60.0.0/16", "via", "10.1.0.2"]);
    d.settle();
    ns.ip(&["route", "replace", "10.60.0.0/16", "via", "10.1.0.3"]);
    d.settle();
    ns.ip(&["route", "del", "10.60.0.0/16"]);
    d.settle();
    let ev = read_events(&events);
    let inc: Vec<(String, String)> = ev[end + 1..]
        .iter()
        .filter(|e| e["kind"] == "route" && e["object"]["dst"] == "10.60.0.0/16")
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["object"]["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        inc,
        [
            ("add".into(), "10.1.0.2".into()),
            ("update".into(), "10.1.0.3".into()),
            ("remove".into(), "10.1.0.3".into())
        ]
    );
    let upd = ev
        .iter()
        .find(|e| e["op"] == "update" && e["object"]["dst"] == "10.60.0.0/16")
        .unwrap();
    assert_eq!(
        upd["old"]["gateway"], "10.1.0.2",
        "an update carries the previous object"
    );

    // The view equals the kernel's main-table routes.
    let v: Value = read_json(&view);
    let kernel = kernel_main_routes(&ns);
    assert_eq!(
        route_dsts(&v["routes"], "main"),
        route_dsts(&kernel, "main")
    );

    // Status counts.
    let p = d.plugin("recorder");
    assert!(p["applied"].as_u64().unwrap() >= replay.len() as u64 + 3);
    assert_eq!(p["failed"], 0);
    assert_eq!(p["queue_depth"], 0);
}

#[test]
fn capabilities_filter_what_reaches_a_plugin() {
    let ns = Netns::new();
    topology(&ns);
    ns.ip(&["link", "add", "c0", "type", "veth", "peer", "name", "d0"]);
    ns.ip(&["link", "set", "c0", "up"]);
    ns.ip(&["link", "set", "d0", "up"]);
    ns.ip(&["addr", "add", "2001:db8:2::1/64", "dev", "c0", "nodad"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:99::/48",
        "via",
        "2001:db8:2::2",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:98::/48",
        "via",
        "2001:db8:1::2",
    ]);
    let dir = TempDir::new();
    let events = dir.path().join("events.jsonl");
    let cfg = base_config(
        &ns,
        build(),
        &format!(
            "[[plugins]]\nname = \"recorder\"\nports = [\"c*\"]\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"route\", \"link\"]\nfamilies = [\"inet6\"]\n",
            events.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:97::/48",
        "via",
        "2001:db8:2::3",
    ]);
    ns.ip(&["route", "add", "10.70.0.0/16", "via", "10.1.0.2"]);
    ns.ip(&["addr", "add", "2001:db8:3::1/64", "dev", "c0", "nodad"]);
    d.settle();
    let ev = read_events(&events);
    let objs: Vec<&Value> = ev.iter().filter(|e| e["object"].is_object()).collect();
    assert!(!objs.is_empty());
    for e in &objs {
        let kind = e["kind"].as_str().unwrap();
        assert!(
            kind == "route" || kind == "link",
            "kind {kind} must be filtered out: {e}"
        );
        if kind == "route" {
            assert!(
                e["object"]["dst"].as_str().unwrap().contains(':'),
                "IPv4 route leaked: {e}"
            );
            assert_eq!(
                e["object"]["dev"], "c0",
                "route on an unowned port leaked: {e}"
            );
        } else {
            assert_eq!(e["object"]["ifname"], "c0", "unowned link leaked: {e}");
        }
    }
    let dsts: Vec<&str> = objs
        .iter()
        .filter_map(|e| e["object"]["dst"].as_str())
        .collect();
    assert!(dsts.contains(&"2001:db8:99::/48"), "{dsts:?}");
    assert!(dsts.contains(&"2001:db8:97::/48"), "{dsts:?}");
    assert!(!dsts.contains(&"2001:db8:98::/48"), "{dsts:?}");
    // `ekho plugins` shows the override.
    let pl = d.cli_json(&["plugins", "--json"]);
    let caps = &pl["plugins"][0]["capabilities"];
    assert_eq!(caps["ports"]["from"], "config");
    assert_eq!(caps["families"][0], "inet6");
}

/// Builds hello-vendor against a copy of plugin-api whose version is `version`.
/// `patch` edits the copied plugin-api sources (to change a type's layout).
fn build_api_variant(version: &str, tag: &str, patch: &dyn Fn(&Path)) -> std::path::PathBuf {
    build_variant(version, tag, patch, "")
}

/// `workspace_extra` is appended to the variant's workspace Cargo.toml (profiles).
fn build_variant(
    version: &str,
    tag: &str,
    patch: &dyn Fn(&Path),
    workspace_extra: &str,
) -> std::path::PathBuf {
    let ws = workspace();
    let tmp = ws
        .join("target")
        .join(format!("api-variant-{version}-{tag}"));
    let _ = std::fs::remove_dir_all(tmp.join("src"));
    std::fs::create_dir_all(tmp.join("src")).unwrap();
    let copy = |from: &Path, to: &Path| {
        sh("cp", &["-r", from.to_str().unwrap(), to.to_str().unwrap()]);
    };
    copy(&ws.join("plugin-api"), &tmp.join("src/plugin-api"));
    copy(
        &ws.join("examples/hello-vendor"),
        &tmp.join("src/hello-vendor"),
    );
    let fix = |p: &Path, f: &dyn Fn(String) -> String| {
        let s = std::fs::read_to_string(p).unwrap();
        std::fs::write(p, f(s)).unwrap();
    };
    let inherit = |s: String| {
        s.replace("edition.workspace = true", "edition = \"2021\"")
            .replace("rust-version.workspace = true\n", "")
            .replace("license.workspace = true", "license = \"MIT\"")
            .replace(
                "abi_stable.workspace = true",
                "abi_stable = { version = \"=0.11.3\", default-features = false }",
            )
            .replace(
                "serde_json = { workspace = true, optional = true }",
                "serde_json = { version = \"1\", optional = true }",
            )
            .replace(
                "serde.workspace = true",
                "serde = { version = \"1\", features = [\"derive\"] }",
            )
            .replace("toml.workspace = true", "toml = \"0.8\"")
            .replace(
                "nix.workspace = true",
                "nix = { version = \"0.31\", default-features = false, features = [\"time\"] }",
            )
            .replace(
                "ekho-plugin-api.workspace = true",
                "ekho-plugin-api = { path = \"../plugin-api\" }",
            )
    };
    // A dependency inherited from the workspace that `inherit` does not spell out fails the
    // variant's build far from here: name it.
    let inherit = |s: String| {
        let out = inherit(s);
        if let Some(l) = out.lines().find(|l| l.contains("workspace = true")) {
            panic!("the API-variant build inherits `{l}`: spell it out in build_variant's inherit");
        }
        out
    };
    fix(&tmp.join("src/plugin-api/Cargo.toml"), &|s| {
        inherit(s).replace(
            &format!("version = \"{API_VERSION}\""),
            &format!("version = \"{version}\""),
        )
    });
    fix(&tmp.join("src/hello-vendor/Cargo.toml"), &|s| inherit(s));
    patch(&tmp.join("src/plugin-api"));
    std::fs::write(
        tmp.join("src/Cargo.toml"),
format!("[workspace]\nresolver = \"2\"\nmembers = [\"plugin-api\", \"hello-vendor\"]\n{workspace_extra}"),
    )
    .unwrap();
    std::fs::copy(ws.join("Cargo.lock"), tmp.join("src/Cargo.lock")).unwrap();
    let st = std::process::Command::new(env!("CARGO"))
        .current_dir(tmp.join("src"))
        .env("CARGO_TARGET_DIR", tmp.join("target"))
        .args(["build", "--offline", "-p", "hello-vendor"])
        .status()
        .unwrap();
    assert!(st.success(), "building the API-variant plugin failed");
    tmp.join("target/debug/libhello_vendor.so")
}

#[test]
fn bad_plugins_are_refused_with_a_clear_reason_and_the_rest_runs() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let pdir = dir.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    // Not a library at all.
    std::fs::write(pdir.join("libtext.so"), "this is not a library\n").unwrap();
    // A real shared library without the plugin symbol.
    let c = dir.path().join("nosym.c");
    std::fs::write(&c, "int answer(void) { return 42; }\n").unwrap();
    sh(
        "gcc",
        &[
            "-shared",
            "-fPIC",
            "-o",
            pdir.join("libnosym.so").to_str().unwrap(),
            c.to_str().unwrap(),
        ],
    );
    // A plugin built against an incompatible API version.
    let variant = build_api_variant("0.0.7", "plain", &|_| {});
    std::fs::copy(&variant, pdir.join("libold_api.so")).unwrap();
    // A good one.
    std::fs::copy(
        build().join("libekho_recorder.so"),
        pdir.join("libekho_recorder.so"),
    )
    .unwrap();
    let events = dir.path().join("events.jsonl");
    let cfg = base_config(
        &ns,
        &pdir,
        &format!(
            "[[plugins]]\nname = \"text\"\n\n[[plugins]]\nname = \"nosym\"\n\n[[plugins]]\nname = \"old-api\"\npath = \"libold_api.so\"\n\n\
             [[plugins]]\nname = \"missing\"\n\n[[plugins]]\nname = \"recorder\"\nversion = \"^9\"\n\n\
             [[plugins]]\nname = \"rec\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\n",
            events.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    let reason = |n: &str| {
        let p = d.plugin(n);
        assert_eq!(p["state"], "failed", "{n}: {p}");
        p["reason"].as_str().unwrap().to_string()
    };
    let r = reason("text");
    assert!(r.contains("not an ELF file"), "{r}");
    let r = reason("nosym");
    assert!(
        r.contains("does not export the symbol EKHO_PLUGIN_API_VERSION"),
        "{r}"
    );
    let r = reason("old-api");
    assert!(
        r.contains(&format!(
            "libold_api.so was built against ekho-plugin-api 0.0.7; this host accepts {}",
            accepted()
        )),
        "{r}"
    );
    let r = reason("missing");
    assert!(
        r.contains("not found") && r.contains("libmissing.so"),
        "{r}"
    );
    let r = reason("recorder");
    assert!(r.contains("requires ^9"), "{r}");
    assert_eq!(d.plugin("rec")["state"], "in_sync");
    assert!(read_events(&events).iter().any(|e| e["op"] == "end_sync"));

    // The same verdicts from the vendor's self-check, with a non-zero exit.
    let out = d.cli(&["check-plugin", pdir.join("libold_api.so").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "was built against ekho-plugin-api 0.0.7; this host accepts {}",
            accepted()
        )),
        "{text}"
    );
    let out = d.cli(&["check-plugin", pdir.join("libnosym.so").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.cli(&[
        "check-plugin",
        "--json",
        pdir.join("libekho_recorder.so").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["accepted"], true);
    assert_eq!(v["name"], "recorder");
    assert_eq!(v["api_version"], API_VERSION);
}

#[test]
fn a_panicking_plugin_fails_alone() {
    // Not restarted (`restart = "never"`): restarts are the lifecycle tests' subject, and one
    // due after the backoff (1 s) could find the plugin `syncing` again when it is looked at
    // (seen in the 6.1 VM, where everything is slower).
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let good = dir.path().join("good.jsonl");
    let bad = dir.path().join("bad.jsonl");
    let cfg = base_config(
        &ns,
        build(),
        &format!(
            "[[plugins]]\nname = \"panicky\"\npath = \"libekho_recorder.so\"\nrestart = \"never\"\n[plugins.config]\nevents_path = \"{}\"\npanic_after = 3\n\n\
             [[plugins]]\nname = \"good\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\n",
            bad.display(),
            good.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    let p = d.plugin("panicky");
    assert_eq!(p["state"], "failed");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("plugin panicked: recorder: panic_after = 3"),
        "{p}"
    );
    // The host and the other plugin carry on.
    ns.ip(&["route", "add", "10.80.0.0/16", "via", "10.1.0.2"]);
    d.settle();
    assert!(read_events(&good)
        .iter()
        .any(|e| e["object"]["dst"] == "10.80.0.0/16"));
    assert!(!read_events(&bad)
        .iter()
        .any(|e| e["object"]["dst"] == "10.80.0.0/16"));
    assert_eq!(d.plugin("good")["state"], "in_sync");
    assert_eq!(
        d.plugin("panicky")["queue_depth"],
        0,
        "a failed plugin's queue must not grow"
    );
}

#[test]
fn a_slow_plugin_has_a_bounded_queue_and_converges() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let view = dir.path().join("view.json");
    let cfg = base_config(
        &ns,
        build(),
        &format!(
            "[[plugins]]\nname = \"slow\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"/dev/null\"\nview_path = \"{}\"\nkinds = [\"route\"]\ndelay_ms = 200\n",
            view.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    // 40 prefixes, each added, replaced 25 times, and half of them deleted: 1,020 kernel changes.
    let n = 40;
    let mut batch = String::new();
    for i in 0..n {
        batch += &format!("route add 10.90.{i}.0/24 via 10.1.0.2\n");
    }
    for r in 0..25 {
        for i in 0..n {
            batch += &format!("route replace 10.90.{i}.0/24 via 10.1.0.{}\n", 2 + (r % 2));
        }
    }
    for i in (0..n).step_by(2) {
        batch += &format!("route del 10.90.{i}.0/24\n");
    }
    ns.ip_batch(&batch);
    let mut max_depth = 0;
    for _ in 0..20 {
        let q = d.plugin("slow")["queue_depth"].as_u64().unwrap();
        max_depth = max_depth.max(q);
        std::thread::sleep(Duration::from_millis(20));
    }
    // At most one pending entry per object, however many kernel changes.
    let objects_in_kernel = ns
        .ip_json(&["-4", "route", "show", "table", "all"])
        .as_array()
        .unwrap()
        .len() as u64
        + ns.ip_json(&["-6", "route", "show", "table", "all"])
            .as_array()
            .unwrap()
            .len() as u64;
    assert!(
        max_depth <= n as u64 + objects_in_kernel,
        "queue depth {max_depth} not bounded by distinct objects"
    );
    d.settle();
    let p = d.plugin("slow");
    assert!(
        p["applied"].as_u64().unwrap() < 1020,
        "changes should have coalesced, applied {}",
        p["applied"]
    );
    let v: Value = read_json(&view);
    let kernel = kernel_main_routes(&ns);
    assert_eq!(
        route_dsts(&v["routes"], "main"),
        route_dsts(&kernel, "main")
    );
    // Gateways converge to the kernel's (the last replace) too.
    for r in v["routes"].as_array().unwrap() {
        let dst = r["dst"].as_str().unwrap();
        if dst.starts_with("10.90.") {
            let k = kernel
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["dst"] == dst)
                .unwrap();
            assert_eq!(r["gateway"], k["gateway"], "{r} vs kernel {k}");
        }
    }
}

#[test]
fn a_plugin_slower_than_the_initial_dump_is_left_behind_and_replayed_from_the_mirror() {
    let ns = Netns::new();
    topology(&ns);
    // Enough routes for more chunks than the stream holds in flight (8 x 1024).
    let mut batch = String::new();
    for i in 0..12_000u32 {
        batch += &format!(
            "route add 10.{}.{}.0/24 via 10.1.0.2\n",
            100 + i / 256,
            i % 256
        );
    }
    ns.ip_batch(&batch);
    let dir = TempDir::new();
    let view = dir.path().join("view.json");
    let events = dir.path().join("events.jsonl");
    // 150 ms per apply call: longer than the stream waits for a plugin (100 ms).
    let cfg = base_config(
        &ns,
        build(),
        &format!(
            "[[plugins]]\nname = \"slow\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nview_path = \"{}\"\nkinds = [\"route\"]\ndelay_ms = 150\n\n[[plugins]]\nname = \"null\"\n",
            events.display(),
            view.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    // Changes while the slow plugin is still behind: they must reach it exactly once.
    ns.ip(&["route", "del", "10.100.7.0/24"]);
    ns.ip(&["route", "replace", "10.100.8.0/24", "via", "10.1.0.3"]);
    ns.ip(&["route", "add", "10.99.0.0/24", "via", "10.1.0.2"]);
    d.settle();
    let log = d.log_text();
    assert!(
        log.contains("left behind") && log.contains("replaying from the mirror"),
        "the slow plugin should have been left behind:\n{log}"
    );
    assert_eq!(d.plugin("slow")["state"], "in_sync");
    assert_eq!(d.plugin("null")["state"], "in_sync");
    let ev = read_events(&events);
    let count = |op: &str| ev.iter().filter(|e| e["op"] == op).count();
    assert_eq!(count("begin_sync"), 2, "the sync starts over once");
    assert_eq!(count("end_sync"), 1);
    let v: Value = read_json(&view);
    let kernel = kernel_main_routes(&ns);
    assert_eq!(
        route_dsts(&v["routes"], "main"),
        route_dsts(&kernel, "main")
    );
    let gw = |routes: &Value| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == "10.100.8.0/24")
            .map(|r| r["gateway"].clone())
    };
    assert_eq!(gw(&v["routes"]), gw(&kernel));
    assert_eq!(gw(&kernel), Some(Value::from("10.1.0.3")));
}

#[test]
fn restart_reconciliation_sweeps_stale_and_keeps_live_entries() {
    let ns = Netns::new();
    topology(&ns);
    ns.ip(&["route", "add", "10.91.1.0/24", "via", "10.1.0.2"]);
    ns.ip(&["route", "add", "10.91.2.0/24", "via", "10.1.0.2"]);
    // The link-local addresses end their duplicate address detection with a route each (table
    // local), up to a few seconds after the links came up: wait for them, or one appearing while
    // no daemon runs counts as a route not kept (seen under the full suite's load).
    assert!(
        wait_for(Duration::from_secs(20), || ns
            .ip(&["-6", "addr", "show", "tentative"])
            .trim()
            .is_empty()
            .then_some(()))
        .is_some(),
        "{}",
        ns.ip(&["-6", "addr", "show"])
    );
    let dir = TempDir::new();
    let state = dir.path().join("state.json");
    let events = dir.path().join("events.jsonl");
    let cfg = base_config(
        &ns,
        build(),
        &format!(
            "[[plugins]]\nname = \"recorder\"\n[plugins.config]\nevents_path = \"{}\"\nstate_path = \"{}\"\nkinds = [\"route\"]\n",
            events.display(),
            state.display()
        ),
    );
    let mut d = Daemon::start(dir.path(), &cfg);
    assert!(d.stop(), "clean exit on SIGTERM:\n{}", d.log_text());
    assert!(!d.socket.exists(), "control socket removed at exit");
    // While the host is down: one route goes, one comes.
    ns.ip(&["route", "del", "10.91.2.0/24"]);
    ns.ip(&["route", "add", "10.91.3.0/24", "via", "10.1.0.2"]);
    std::fs::write(&events, "").unwrap();
    let d = Daemon::start(dir.path(), &cfg);
    d.settle();
    let ev = read_events(&events);
    let swept: Vec<&str> = ev
        .iter()
        .filter(|e| e["op"] == "sweep")
        .map(|e| e["object"]["dst"].as_str().unwrap())
        .collect();
    assert_eq!(swept, ["10.91.2.0/24"], "exactly the stale entry is swept");
    let end = ev.iter().position(|e| e["op"] == "end_sync").unwrap();
    let sweep_at = ev.iter().position(|e| e["op"] == "sweep").unwrap();
    assert!(sweep_at < end, "sweep happens at end-sync");
    let p = d.plugin("recorder");
    let counter = |name: &str| {
        p["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["value"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(counter("swept_after_restart"), 1);
    // Every route of the replay but the new one was kept without a rewrite.
    let replay: Vec<&str> = ev[..end]
        .iter()
        .filter(|e| e["op"] == "add")
        .map(|e| e["object"]["dst"].as_str().unwrap())
        .collect();
    assert!(
        replay.contains(&"10.91.1.0/24") && replay.contains(&"10.91.3.0/24"),
        "{replay:?}"
    );
    assert_eq!(
        counter("kept_after_restart") as usize,
        replay.len() - 1,
        "{p}"
    );
}

#[test]
fn hello_vendor_reports_table_full_past_capacity() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let cfg = base_config(
        &ns,
        build(),
        "[[plugins]]\nname = \"hello-vendor\"\n[plugins.config]\ncapacity = 4\n",
    );
    let d = Daemon::start(dir.path(), &cfg);
    for i in 0..6 {
        ns.ip(&[
            "route",
            "add",
            &format!("10.92.{i}.0/24"),
            "via",
            "10.1.0.2",
        ]);
    }
    d.settle();
    let p = d.plugin("hello-vendor");
    let unicast_v4 = ns
        .ip_json(&["-4", "route", "show", "table", "all"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("type").is_none_or(|t| t == "unicast"))
        .count() as u64;
    assert!(unicast_v4 > 4);
    assert_eq!(p["failed"].as_u64().unwrap(), unicast_v4 - 4, "{p}");
    let f = &p["recent_failures"][0];
    assert_eq!(f["reason"], "table full (4 entries)", "{p}");
    assert_eq!(f["kind"], "route");
    assert!(
        p["trapped"].as_u64().unwrap() > 0,
        "local/broadcast routes are trapped: {p}"
    );
    // Freeing an entry makes room again.
    ns.ip(&["route", "del", "10.50.0.0/16"]);
    ns.ip(&["route", "add", "10.93.0.0/24", "via", "10.1.0.2"]);
    d.settle();
    let p2 = d.plugin("hello-vendor");
    assert_eq!(p2["failed"], p["failed"], "the new route fit: {p2}");
}

#[test]
fn cli_reports_a_missing_daemon_and_bad_config_clearly() {
    let dir = TempDir::new();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[host]\nnetns = \"x\"\nplugin_dri = \"/nope\"\n").unwrap();
    let out = ekho_with(&cfg, "status");
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("bad.toml")
            && e.contains("line 3")
            && e.contains("column 1")
            && e.contains("plugin_dri"),
        "{e}"
    );
    std::fs::write(
        &cfg,
        format!(
            "[host]\ncontrol_socket = \"{}/none.sock\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = ekho_with(&cfg, "status");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("cannot reach the ekho daemon") && e.contains("none.sock"),
        "{e}"
    );
    std::fs::write(
        &cfg,
        format!(
            "[host]\nnetns = \"ekho-no-such-netns\"\ncontrol_socket = \"{}/run.sock\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = ekho_with(&cfg, "run");
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/run/netns/ekho-no-such-netns does not exist"),
        "{e}"
    );
}

/// `ip -4` and `ip -6` routes of the main table, as one list.
fn kernel_main_routes(ns: &Netns) -> Value {
    let mut v = ns
        .ip_json(&["-4", "route", "show", "table", "main"])
        .as_array()
        .unwrap()
        .clone();
    v.extend(
        ns.ip_json(&["-6", "route", "show", "table", "main"])
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    Value::Array(v)
}

#[test]
fn a_layout_mismatch_is_refused_clearly() {
    // Same API version, but a type changed shape: only abi_stable's layout check can tell.
    let variant = build_api_variant(API_VERSION, "layout", &|api| {
        let p = api.join("src/plugin.rs");
        let s = std::fs::read_to_string(&p).unwrap();
        let s = s
            .replace(
                "pub struct Counter {\n",
                "pub struct Counter {\n    pub extra: u64,\n",
            )
            .replace(
                "self.counters.push(Counter {",
                "self.counters.push(Counter { extra: 0,",
            );
        assert!(s.contains("pub extra: u64"), "patch did not apply");
        std::fs::write(&p, s).unwrap();
    });
    let out = check_plugin(&variant);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("REFUSED at layout check"), "{text}");
    assert!(text.contains("ABI layout check failed"), "{text}");
    // One short paragraph, not abi_stable's hundreds of lines.
    assert!(text.lines().count() <= 3, "{text}");
    assert!(
        text.contains("type Counter") && text.contains("(expected 72, found 80)"),
        "{text}"
    );
}

#[test]
fn a_copy_of_the_api_with_a_field_reordered_is_refused_naming_the_type() {
    // Same version, same fields, two of them swapped: the frozen 1.0 layout says otherwise.
    let variant = build_api_variant(API_VERSION, "reordered", &|api| {
        let p = api.join("src/object/route.rs");
        let s = std::fs::read_to_string(&p).unwrap();
        let from = "pub struct Route {\n    pub family: Family,\n    pub table: u32,\n";
        assert!(s.contains(from), "patch did not apply");
        let s = s.replace(
            from,
            "pub struct Route {\n    pub table: u32,\n    pub family: Family,\n",
        );
        std::fs::write(&p, s).unwrap();
    });
    let out = check_plugin(&variant);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("REFUSED at layout check"), "{text}");
    assert!(text.contains("type Route"), "{text}");
}

#[test]
fn a_plugin_of_a_newer_minor_is_refused_naming_both_versions() {
    let (major, minor) = ekho_plugin_api::version::major_minor(API_VERSION).unwrap();
    let newer = format!("{major}.{}.0", minor + 1);
    let variant = build_api_variant(&newer, "newer", &|_| {});
    let out = check_plugin(&variant);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("REFUSED at API version"), "{text}");
    assert!(
        text.contains(&format!(
            "was built against ekho-plugin-api {newer}, newer than this host's API {API_VERSION}"
        )),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "one line of reason: {text}");
}

#[test]
fn a_plugin_built_to_abort_on_panic_is_refused() {
    let variant = build_variant(
        API_VERSION,
        "abort",
        &|_| {},
        "[profile.dev]\npanic = \"abort\"\n",
    );
    let out = check_plugin(&variant);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("REFUSED at panic strategy"), "{text}");
    assert!(text.contains("built with panic = \"abort\""), "{text}");
}

#[test]
fn additions_refused_at_a_declared_limit_are_offered_again_when_room_frees() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let view = dir.path().join("view.json");
    let v4 = ns
        .ip_json(&["-4", "route", "show", "table", "all"])
        .as_array()
        .unwrap()
        .len() as u64;
    let limit = v4 + 2;
    let cfg = base_config(
        &ns,
        build(),
        &format!(
            "[[plugins]]\nname = \"recorder\"\n[plugins.config]\nevents_path = \"/dev/null\"\nview_path = \"{}\"\nkinds = [\"route\"]\nfamilies = [\"inet\"]\nlimits = {{ route = {limit} }}\n",
            view.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    for i in 1..=4 {
        ns.ip(&[
            "route",
            "add",
            &format!("10.94.{i}.0/24"),
            "via",
            "10.1.0.2",
        ]);
    }
    d.settle();
    let p = d.plugin("recorder");
    assert_eq!(p["objects"].as_u64().unwrap(), limit, "{p}");
    assert_eq!(p["refused"].as_u64().unwrap(), 2, "{p}");
    assert!(
        p["recent_failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("refused by the host: limit reached"),
        "{p}"
    );
    // An update of a held route is never refused.
    ns.ip(&["route", "replace", "10.94.1.0/24", "via", "10.1.0.3"]);
    d.settle();
    assert_eq!(d.plugin("recorder")["objects"].as_u64().unwrap(), limit);
    // Room frees up: the refused additions are offered again.
    ns.ip(&["route", "del", "10.94.1.0/24"]);
    ns.ip(&["route", "del", "10.94.2.0/24"]);
    d.settle();
    let v: Value = read_json(&view);
    let dsts = route_dsts(&v["routes"], "main");
    assert!(
        dsts.contains("10.94.3.0/24") && dsts.contains("10.94.4.0/24"),
        "{dsts:?}"
    );
    assert_eq!(d.plugin("recorder")["objects"].as_u64().unwrap(), limit);
}

#[test]
fn renaming_a_port_in_or_out_of_scope_moves_what_is_attached_to_it() {
    let ns = Netns::new();
    ns.ip_batch(
        "link add vethA type veth peer name pb
link set vethA up
link set pb up
addr add 10.7.0.1/24 dev vethA
route add 10.95.0.0/16 via 10.7.0.2
",
    );
    let dir = TempDir::new();
    let view = dir.path().join("view.json");
    let cfg = base_config(
        &ns,
        build(),
        &format!(
            "[[plugins]]\nname = \"recorder\"\nports = [\"veth*\"]\n[plugins.config]\nevents_path = \"/dev/null\"\nview_path = \"{}\"\nkinds = [\"link\", \"route\"]\nfamilies = [\"inet\"]\n",
            view.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    let has = |dst: &str| {
        let v: Value = read_json(&view);
        route_dsts(&v["routes"], "main").contains(dst)
    };
    let links = || {
        let v: Value = read_json(&view);
        v["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(has("10.95.0.0/16"));
    assert_eq!(links(), ["vethA"]);
    // Out of scope: the link and its routes leave the plugin. Renaming a running device needs
    // kernel 6.2 or later; older kernels (Debian's 6.1) refuse it with EBUSY, and taking the
    // device down first would remove its IPv4 routes, which is not what this test is about.
    let rename = std::process::Command::new("ip")
        .args(["-n", &ns.name, "link", "set", "vethA", "name", "pxA"])
        .output()
        .unwrap();
    if !rename.status.success() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let err = String::from_utf8_lossy(&rename.stderr);
        let major_minor: Vec<u32> = kernel
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(
            major_minor < vec![6, 2] && err.contains("Device or resource busy"),
            "renaming running vethA failed on kernel {}: {err}",
            kernel.trim()
        );
        println!(
            "SKIP: renaming_a_port_in_or_out_of_scope: kernel {} cannot rename a running device (6.2+): {}",
            kernel.trim(),
            err.trim()
        );
        return;
    }
    d.settle();
    assert!(
        !has("10.95.0.0/16"),
        "route on a port renamed out of scope must be removed"
    );
    assert!(links().is_empty(), "{:?}", links());
    // And back in.
    ns.ip(&["link", "set", "pxA", "name", "vethB"]);
    d.settle();
    assert!(
        has("10.95.0.0/16"),
        "route on a port renamed into scope must be added"
    );
    assert_eq!(links(), ["vethB"]);
}

/// `ekho --config CFG CMD`.
fn ekho_with(cfg: &Path, cmd: &str) -> std::process::Output {
    std::process::Command::new(ekho_bin())
        .args(["--config", cfg.to_str().unwrap(), cmd])
        .output()
        .unwrap()
}

/// `ekho check-plugin FILE`.
fn check_plugin(file: &Path) -> std::process::Output {
    std::process::Command::new(ekho_bin())
        .args(["check-plugin", file.to_str().unwrap()])
        .output()
        .unwrap()
}
