//! Running the daemon in production, through the real daemon: signals from the first moment,
//! reload by SIGHUP and `ekho reload`.

use ekho_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn recorder(name: &str, events: &Path, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\n{extra}\n",
        events.display()
    )
}

fn ops(events: &Path, op: &str) -> usize {
    read_events(events).iter().filter(|e| e["op"] == op).count()
}

fn signal(d: &Daemon, sig: i32) {
    let pid = d.child.as_ref().unwrap().id() as i32;
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn topology(ns: &Netns) {
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
    ns.ip(&["link", "set", "a0", "up"]);
    ns.ip(&["link", "set", "b0", "up"]);
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "a0"]);
    ns.ip(&["route", "add", "10.50.0.0/16", "via", "10.1.0.2"]);
}

#[test]
fn sigterm_during_start_up_is_a_clean_stop() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let events = dir.path().join("events.jsonl");
    let view = dir.path().join("view.json");
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &recorder(
            "slow",
            &events,
            &format!("view_path = \"{}\"\ncreate_delay_ms = 1500", view.display()),
        ),
    );
    let mut d = Daemon::spawn(dir.path(), &cfg);
    // `ekho status` answers during start-up, and says so.
    let s = wait_for(Duration::from_secs(10), || {
        d.try_cli_json(&["status", "--json"]).ok()
    })
    .unwrap_or_else(|| panic!("no status during start-up:\n{}", d.log_text()));
    assert_eq!(s["ekho"]["state"], "starting", "{s}");
    signal(&d, libc::SIGTERM);
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "still running:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    d.child = None;
    let log = d.log_text();
    assert!(st.success(), "{st}:\n{log}");
    assert!(log.contains("SIGTERM during start-up: stopping"), "{log}");
    assert!(log.contains("ekho stopped"), "{log}");
    assert!(!d.socket.exists(), "the socket file is removed");
    // The plugin loaded during start-up was shut down.
    assert!(log.contains("plugin stopped plugin=slow"), "{log}");
    assert!(
        view.exists(),
        "the recorder writes its view at shutdown:\n{log}"
    );
}

#[test]
fn sighup_and_ekho_reload_add_remove_and_restart_plugins_and_refuse_a_bad_config() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let ev = |n: &str| dir.path().join(format!("{n}.jsonl"));
    let plugins = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(n, extra)| recorder(n, &ev(n), extra))
            .collect::<String>()
    };
    let cfg0 = host_config(
        &ns.name,
        build(),
        false,
        &plugins(&[("keep", ""), ("gone", ""), ("changed", "")]),
    );
    let d = Daemon::start(dir.path(), &cfg0);
    let pid = d.status()["ekho"]["pid"].clone();
    let resyncs = d.status()["mirror"]["resyncs"].clone();
    let cfg = |list: &[(&str, &str)]| {
        std::fs::write(
            &d.config,
            host_config(&ns.name, build(), false, &plugins(list))
                .replace("{socket}", &d.socket.display().to_string()),
        )
        .unwrap()
    };
    cfg(&[
        ("keep", ""),
        ("changed", "kinds = [\"route\"]"),
        ("new", ""),
    ]);
    signal(&d, libc::SIGHUP);
    let names = || -> Vec<String> {
        d.status()["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}={}",
                    p["name"].as_str().unwrap(),
                    p["state"].as_str().unwrap()
                )
            })
            .collect()
    };
    let want = vec!["keep=in_sync", "changed=in_sync", "new=in_sync"];
    assert!(
        wait_for(Duration::from_secs(20), || (names() == want).then_some(())).is_some(),
        "{:?}\n{}",
        names(),
        d.log_text()
    );
    // SIGHUP did not kill it; the mirror did not notice.
    assert_eq!(d.status()["ekho"]["pid"], pid);
    assert_eq!(d.status()["mirror"]["resyncs"], resyncs);
    // The unchanged plugin was not touched, the changed one replayed anew with its new table,
    // the removed one shut down, the new one synced.
    assert_eq!(ops(&ev("keep"), "begin_sync"), 1);
    assert_eq!(ops(&ev("changed"), "begin_sync"), 2);
    let last_sync = read_events(&ev("changed"))
        .iter()
        .rposition(|e| e["op"] == "begin_sync")
        .unwrap();
    assert!(read_events(&ev("changed"))[last_sync..]
        .iter()
        .filter(|e| e["op"] == "add")
        .all(|e| e["kind"] == "route"));
    assert_eq!(ops(&ev("new"), "end_sync"), 1);
    // Increments reach the plugins that run, not the removed one.
    ns.ip(&["route", "add", "10.77.0.0/16", "via", "10.1.0.2"]);
    d.settle();
    let has = |n: &str| {
        read_events(&ev(n))
            .iter()
            .any(|e| e["object"]["dst"] == "10.77.0.0/16")
    };
    assert!(has("keep") && has("changed") && has("new") && !has("gone"));

    // `ekho reload` with a config that does not parse: refused with file, line and column (by the
    // CLI, which reads the same file to find the daemon); the running configuration stays.
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!("{good}\n[[plugins]]\nname = \"x\"\nbogus = 1\n"),
    )
    .unwrap();
    let out = d.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&d.config.display().to_string())
            && err.contains("line ")
            && err.contains("column ")
            && err.contains("unknown field `bogus`")
            && err.contains("the running configuration stays"),
        "{err}"
    );
    // The same by SIGHUP: logged, still running, nothing changed.
    signal(&d, libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(10), || d
        .log_text()
        .contains("reload refused")
        .then_some(()))
    .is_some());
    std::fs::write(&d.config, &good).unwrap();
    assert_eq!(names(), want);
    // Back to a good config with `ekho reload`: the removed plugin returns.
    cfg(&[
        ("keep", ""),
        ("changed", "kinds = [\"route\"]"),
        ("new", ""),
        ("gone", ""),
    ]);
    let v = d.cli_json(&["reload", "--json"]);
    assert_eq!(v["added"], serde_json::json!(["gone"]), "{v}");
    assert_eq!(
        v["unchanged"],
        serde_json::json!(["keep", "changed", "new"]),
        "{v}"
    );
    assert!(
        wait_for(Duration::from_secs(20), || (d.plugin("gone")["state"]
            == "in_sync")
            .then_some(()))
        .is_some()
    );
    assert_eq!(d.status()["ekho"]["pid"], pid);
}
