//! Plugin lifecycle through the real daemon: a plugin that panics is created anew and replayed
//! (by its restart policy, with a backoff and a limit), one hung in a call is marked `hung` by
//! the watchdog and fed no more (in status and metrics), shutdown asks every plugin at once and
//! is bounded in total, and the operator restarts, stops and starts plugins by name.

use ekho_tests::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn topology(ns: &Netns) {
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
    ns.ip(&["link", "set", "a0", "up"]);
    ns.ip(&["link", "set", "b0", "up"]);
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "a0"]);
    ns.ip(&["route", "add", "10.50.0.0/16", "via", "10.1.0.2"]);
}

fn recorder(name: &str, events: &Path, table: &str, config: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"libekho_recorder.so\"\n{table}\n[plugins.config]\nevents_path = \"{}\"\n{config}\n",
        events.display()
    )
}

fn ops(events: &Path, op: &str) -> usize {
    read_events(events).iter().filter(|e| e["op"] == op).count()
}

fn wait_plugin(d: &Daemon, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(30), || {
        let p = d.plugin(name);
        f(&p).then_some(p)
    })
    .unwrap_or_else(|| panic!("{name}: never {what}: {}\n{}", d.plugin(name), d.log_text()))
}

fn has_route(events: &Path, dst: &str) -> bool {
    read_events(events)
        .iter()
        .any(|e| e["op"] == "add" && e["object"]["dst"] == dst)
}

#[test]
fn a_plugin_that_panics_once_is_restarted_and_replayed() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let ev = dir.path().join("p.jsonl");
    let flag = dir.path().join("panicked");
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &recorder(
            "p",
            &ev,
            "restart_backoff_ms = 100",
            &format!("panic_after = 3\npanic_once_flag = \"{}\"", flag.display()),
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    let p = wait_plugin(&d, "p", "restarted and in sync", |p| {
        p["state"] == "in_sync" && p["restarts"] == 1
    });
    assert!(flag.exists(), "it did panic");
    // Created anew and replayed: a second sync, complete, and its outcomes are back.
    assert_eq!(ops(&ev, "begin_sync"), 2, "{p}");
    assert_eq!(ops(&ev, "end_sync"), 1, "the first sync died in the panic");
    assert!(p["objects"].as_u64().unwrap() > 3, "{p}");
    assert!(p["offloaded"].as_u64().unwrap() > 3, "{p}");
    assert!(p.get("reason").is_none(), "{p}");
    assert!(d
        .log_text()
        .contains("plugin failed; restarting in 100ms (restart 1 of 5)"));
    // Increments reach the new instance.
    ns.ip(&["route", "add", "10.66.0.0/16", "via", "10.1.0.2"]);
    d.settle();
    assert!(has_route(&ev, "10.66.0.0/16"));
}

#[test]
fn a_plugin_that_panics_every_time_backs_off_then_is_given_up() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let ev = dir.path().join("p.jsonl");
    let good = dir.path().join("good.jsonl");
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &(recorder(
            "p",
            &ev,
            "restart_backoff_ms = 100\nrestart_limit = 3",
            "panic_after = 1",
        ) + &recorder("good", &good, "", "")),
    );
    let t0 = Instant::now();
    let d = Daemon::start(dir.path(), &cfg);
    let p = wait_plugin(&d, "p", "given up", |p| {
        p["reason"].as_str().is_some_and(|r| r.contains("given up"))
    });
    let took = t0.elapsed();
    assert_eq!(p["state"], "failed");
    assert_eq!(p["restarts"], 3, "{p}");
    let r = p["reason"].as_str().unwrap();
    assert!(
        r.contains("plugin panicked: recorder: panic_after = 1")
            && r.contains("given up after 3 restarts in a row (restart_limit = 3; `ekho plugin restart p` tries again)"),
        "{r}"
    );
    // Exponential backoff: 100, 200, 400 ms.
    let log = d.log_text();
    for (n, ms) in [(1, 100), (2, 200), (3, 400)] {
        assert!(
            log.contains(&format!("restarting in {ms}ms (restart {n} of 3)")),
            "{log}"
        );
    }
    assert!(took >= Duration::from_millis(700), "{took:?}");
    // Created 4 times in all (each began a sync), then left alone.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(ops(&ev, "begin_sync"), 4);
    assert_eq!(d.plugin("p")["restarts"], 3);
    assert_eq!(d.plugin("good")["state"], "in_sync");
}

#[test]
fn a_plugin_hung_in_apply_is_marked_hung_and_the_daemon_stops_within_a_bound() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let ev = dir.path().join("h.jsonl");
    let good = dir.path().join("good.jsonl");
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &(recorder("h", &ev, "call_timeout_ms = 500", "hang_after = 2")
            + &recorder("good", &good, "", "")),
    )
    .replace("ebpf = false", "ebpf = false\nmetrics = \"127.0.0.1:0\"");
    let mut d = Daemon::spawn(dir.path(), &cfg);
    let t0 = Instant::now();
    wait_for(Duration::from_secs(10), || {
        d.try_cli_json(&["status", "--json"]).ok()?["plugins"]
            .as_array()?
            .iter()
            .any(|p| p["name"] == "h")
            .then_some(())
    })
    .expect("status answers");
    let p = wait_plugin(&d, "h", "hung", |p| p["state"] == "hung");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(p["hung"]["call"], "apply", "{p}");
    let since = p["hung"]["since_unix_ms"].as_u64().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        since <= now_ms && now_ms - since < 20_000,
        "{since} {now_ms}"
    );
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("its apply call has run for more than 500 ms"),
        "{p}"
    );
    d.wait_ready();
    // Fed no more: changes do not pile up for it; the other plugin carries on.
    for i in 0..20 {
        ns.ip(&[
            "route",
            "add",
            &format!("10.67.{i}.0/24"),
            "via",
            "10.1.0.2",
        ]);
    }
    d.settle();
    assert!(has_route(&good, "10.67.19.0/24"));
    let p = d.plugin("h");
    assert_eq!(p["state"], "hung");
    assert_eq!(p["queue_depth"], 0, "{p}");
    // And in the metrics.
    let body = metrics(&d);
    for line in [
        "ekho_plugin_hung{plugin=\"h\"} 1",
        "ekho_plugin_state{plugin=\"h\",state=\"hung\"} 1",
        "ekho_plugin_hung{plugin=\"good\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
    }
    // Shutdown does not wait for it.
    let t0 = Instant::now();
    assert!(d.stop(), "clean exit:\n{}", d.log_text());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(d.log_text().contains("plugin hung: not waited for"));
}

/// The daemon's `/metrics` body.
fn metrics(d: &Daemon) -> String {
    d.scrape("*/*").1
}

/// The daemon's log lines saying plugin `name` stopped.
fn stopped_lines(d: &Daemon, name: &str) -> usize {
    d.log_text()
        .lines()
        .filter(|l| l.contains("plugin stopped") && l.contains(&format!("plugin={name}")))
        .count()
}

#[test]
fn shutdown_stops_the_plugins_all_at_once() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    // Each takes 3 s to shut down: one after the other would take 9 s.
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &(1..=3)
            .map(|i| {
                recorder(
                    &format!("slow{i}"),
                    &dir.path().join(format!("s{i}.jsonl")),
                    "",
                    "shutdown_delay_ms = 3000",
                )
            })
            .collect::<String>(),
    );
    let mut d = Daemon::start(dir.path(), &cfg);
    let t0 = Instant::now();
    assert!(d.stop(), "clean exit:\n{}", d.log_text());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "{took:?}\n{}",
        d.log_text()
    );
    for i in 1..=3 {
        assert_eq!(
            stopped_lines(&d, &format!("slow{i}")),
            1,
            "{}",
            d.log_text()
        );
    }
}

#[test]
fn shutdown_is_bounded_in_total_whatever_a_plugin_does() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    // One that would take a minute to shut down, one that takes 2 s.
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &(recorder(
            "stuck",
            &dir.path().join("stuck.jsonl"),
            "",
            "shutdown_delay_ms = 60000",
        ) + &recorder(
            "slow",
            &dir.path().join("slow.jsonl"),
            "",
            "shutdown_delay_ms = 2000",
        )),
    );
    let mut d = Daemon::start(dir.path(), &cfg);
    let t0 = Instant::now();
    assert!(d.stop(), "clean exit:\n{}", d.log_text());
    let took = t0.elapsed();
    // The bound is 10 s for all plugins together.
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "{took:?}\n{}",
        d.log_text()
    );
    let log = d.log_text();
    assert_eq!(stopped_lines(&d, "slow"), 1, "{log}");
    assert_eq!(stopped_lines(&d, "stuck"), 0, "{log}");
    assert!(
        log.lines().any(|l| l.contains("plugin=stuck")
            && l.contains("plugin still shutting down at the shutdown bound")),
        "{log}"
    );
    assert!(log.contains("ekho stopped"), "{log}");
}

#[test]
fn plugins_are_restarted_stopped_and_started_by_name() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let ev = dir.path().join("p.jsonl");
    let cfg = host_config(&ns.name, build(), false, &recorder("p", &ev, "", ""));
    let d = Daemon::start(dir.path(), &cfg);
    assert_eq!(ops(&ev, "begin_sync"), 1);
    let ok = |args: &[&str]| {
        let out = d.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(ok(&["plugin", "restart", "p"]).contains("plugin p: restart done"));
    let p = wait_plugin(&d, "p", "in sync again", |p| p["state"] == "in_sync");
    assert_eq!(p["restarts"], 1);
    assert_eq!(ops(&ev, "begin_sync"), 2);
    assert_eq!(ops(&ev, "end_sync"), 2);
    ok(&["plugin", "stop", "p"]);
    let p = d.plugin("p");
    assert_eq!(p["state"], "stopped", "{p}");
    ns.ip(&["route", "add", "10.68.0.0/16", "via", "10.1.0.2"]);
    d.settle();
    assert!(
        !has_route(&ev, "10.68.0.0/16"),
        "a stopped plugin is not fed"
    );
    // Stopping twice, starting a running one and an unknown name are refused with the reason.
    let err = |args: &[&str]| {
        let out = d.cli(args);
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err(&["plugin", "stop", "p"]).contains("stopped already"));
    assert!(err(&["plugin", "start", "nope"])
        .contains("no plugin \"nope\" in the configuration; configured: p"));
    ok(&["plugin", "start", "p"]);
    wait_plugin(&d, "p", "started", |p| p["state"] == "in_sync");
    assert!(has_route(&ev, "10.68.0.0/16"), "replayed on start");
    assert!(err(&["plugin", "start", "p"]).contains("running already"));
}
