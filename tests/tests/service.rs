//! Operating ekho as a service, through the real daemon: Prometheus metrics at `/metrics`
//! (checked with `promtool check metrics` where installed), the systemd unit in the repository
//! (`systemd-analyze verify`), and the notify protocol the unit's `Type=notify` and
//! `WatchdogSec=` rely on (READY=1 after the first sync, WATCHDOG=1 from the daemon's own loop).

use ekho_tests::*;
use std::time::{Duration, Instant};

fn topology(ns: &Netns) {
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
    ns.ip(&["link", "set", "a0", "up"]);
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "a0"]);
    ns.ip(&["route", "add", "10.50.0.0/16", "via", "10.1.0.2"]);
}

#[test]
fn metrics_are_served_in_prometheus_text() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let events = dir.path().join("rec.jsonl");
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &format!(
            "[[plugins]]\nname = \"rec\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\n\n\
             [[plugins]]\nname = \"bad\"\npath = \"libekho_recorder.so\"\nrestart = \"never\"\n[plugins.config]\nevents_path = \"{}\"\npanic_after = 1\n",
            events.display(),
            dir.path().join("bad.jsonl").display()
        ),
    )
    .replace("ebpf = false", "ebpf = false\nmetrics = \"127.0.0.1:0\"");
    let d = Daemon::start(dir.path(), &cfg);
    d.settle();
    let addr = d.metrics_addr();
    let (status, body) = http_get(&addr, "/metrics", "*/*");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let routes = d.status()["mirror"]["objects"]["routes"].as_u64().unwrap();
    for line in [
        format!("ekho_mirror_objects{{kind=\"routes\"}} {routes}"),
        "ekho_mirror_synced 1".to_string(),
        "ekho_plugin_state{plugin=\"rec\",state=\"in_sync\"} 1".into(),
        "ekho_plugin_state{plugin=\"bad\",state=\"failed\"} 1".into(),
        "ekho_plugin_queue_depth{plugin=\"rec\"} 0".into(),
        "ekho_plugin_restarts_total{plugin=\"bad\"} 0".into(),
        "# TYPE ekho_mirror_changes_total counter".into(),
        "# TYPE ekho_plugin_outcomes_total counter".into(),
        "# TYPE ekho_plugin_objects gauge".into(),
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
    }
    let offloaded = d.plugin("rec")["offloaded"].as_u64().unwrap();
    assert!(offloaded > 0);
    assert!(
        body.lines().any(|l| l
            == format!(
                "ekho_plugin_outcomes_total{{plugin=\"rec\",outcome=\"offloaded\"}} {offloaded}"
            )),
        "{body}"
    );
    // What Prometheus asks for: OpenMetrics.
    let (status, om) = http_get(
        &addr,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.lines()
            .any(|l| l == "# TYPE ekho_mirror_changes counter"),
        "{om}"
    );
    let (status, _) = http_get(&addr, "/other", "*/*");
    assert!(status.contains("404"), "{status}");
    // Names, types and units by Prometheus conventions.
    promtool_check(dir.path(), &body);
}

#[test]
fn the_systemd_unit_verifies() {
    if let Some(r) = missing_tools(&["systemd-analyze"], "systemd") {
        say_skip(&r);
        return;
    }
    let dir = TempDir::new();
    let unit = std::fs::read_to_string(workspace().join("dist/ekho.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ekho --config /etc/ekho/ekho.toml run"));
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(key), "{key}");
    }
    // verify wants the executable to exist: the built one stands in for /usr/bin/ekho.
    let f = dir.path().join("ekho.service");
    std::fs::write(
        &f,
        unit.replace("/usr/bin/ekho", ekho_bin().to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_daemon_notifies_ready_after_the_first_sync_and_feeds_the_watchdog() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let sock = dir.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        "[[plugins]]\nname = \"null\"\npath = \"libekho_null.so\"\n",
    );
    let mut d = Daemon::spawn_env(
        dir.path(),
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let next = || {
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // READY=1 first (the supervisor may have fed the watchdog in the instant between the daemon
    // saying running and notifying).
    let mut before = Vec::new();
    loop {
        let m = next();
        if m.trim() == "READY=1" {
            break;
        }
        before.push(m.trim().to_string());
    }
    assert!(before.iter().all(|m| m == "WATCHDOG=1"), "{before:?}");
    assert!(before.len() <= 1, "{before:?}");
    // Sent once the mirror synced: the daemon says running.
    assert_eq!(d.status()["ekho"]["state"], "running");
    let t0 = Instant::now();
    let mut feeds = 0;
    while feeds < 3 {
        if next().trim() == "WATCHDOG=1" {
            feeds += 1;
        }
    }
    // Fed at half the interval (200 ms): three feeds within about 0.6 s.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(d.stop());
    let mut rest = Vec::new();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 256];
    while let Ok(n) = rx.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

#[test]
fn ebpf_metrics_count_events_per_hook() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let events = dir.path().join("rec.jsonl");
    let cfg = host_config(
        &ns.name,
        build(),
        true,
        &format!(
            "[[plugins]]\nname = \"rec\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"link\"]\nnotifiers = [\"neighbour\"]\n",
            events.display()
        ),
    )
    .replace("ebpf = true", "ebpf = true\nmetrics = \"127.0.0.1:0\"");
    assert!(cfg.contains("metrics = "), "{cfg}");
    let d = Daemon::start(dir.path(), &cfg);
    let st = d.status();
    if st["ebpf"]["state"] != "running" {
        say_skip(&format!("eBPF source not running here: {}", st["ebpf"]));
        return;
    }
    for i in 0..10 {
        ns.ip(&[
            "neigh",
            "add",
            &format!("10.1.0.{}", 100 + i),
            "lladdr",
            "02:00:00:00:01:02",
            "dev",
            "a0",
            "nud",
            "permanent",
        ]);
    }
    // The recorder's eBPF events, per hook.
    let recorded = wait_for(Duration::from_secs(10), || {
        let mut by_hook = std::collections::BTreeMap::<String, u64>::new();
        let mut ours = 0;
        for e in read_events(&events)
            .iter()
            .filter(|e| e["stream"] == "ebpf")
        {
            *by_hook
                .entry(e["object"]["hook"].as_str().unwrap().to_string())
                .or_default() += 1;
            ours += (e["object"]["lladdr"] == "02:00:00:00:01:02") as u32;
        }
        (ours >= 10).then_some(by_hook)
    })
    .unwrap_or_else(|| panic!("no neighbour events:\n{}", d.log_text()));
    d.settle();
    let addr = d.metrics_addr();
    let (status, body) = http_get(&addr, "/metrics", "*/*");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let st = d.status();
    let mut total = 0;
    for (hook, n) in &recorded {
        // Every event captured is handed to the recorder (it takes neighbour events only).
        let line = format!("ekho_ebpf_events_total{{hook=\"{hook}\"}} ");
        let v: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("{line} missing:\n{body}"))
            .parse()
            .unwrap();
        assert!(v >= *n, "{hook}: {v} counted, {n} recorded\n{body}");
        assert_eq!(st["ebpf"]["events_by_hook"][hook], v, "{}", st["ebpf"]);
        total += v;
    }
    assert!(total <= st["ebpf"]["events"].as_u64().unwrap());
    let by_hook: u64 = st["ebpf"]["events_by_hook"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        by_hook,
        st["ebpf"]["events"].as_u64().unwrap(),
        "{}",
        st["ebpf"]
    );
    assert!(
        body.lines()
            .any(|l| l == "# TYPE ekho_ebpf_lost_total counter"),
        "{body}"
    );
    // Losses per hook: every hook that captured events is listed (0 unless the ring was full),
    // as in status.
    for hook in recorded.keys() {
        let line = format!("ekho_ebpf_lost_total{{hook=\"{hook}\"}} ");
        let v: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("{line} missing:\n{body}"))
            .parse()
            .unwrap();
        assert_eq!(st["ebpf"]["lost_by_hook"][hook], v, "{}", st["ebpf"]);
    }
    let lost: u64 = st["ebpf"]["lost_by_hook"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(lost, st["ebpf"]["lost"].as_u64().unwrap(), "{}", st["ebpf"]);
    promtool_check(dir.path(), &body);
}

/// `promtool check metrics` on a scraped body (names, types and units by Prometheus
/// conventions); a `SKIP:` line where promtool is missing.
fn promtool_check(dir: &std::path::Path, body: &str) {
    if let Some(r) = missing_tools(&["promtool"], "prometheus") {
        say_skip(&format!("promtool check metrics: {r}"));
        return;
    }
    let f = dir.join("metrics.txt");
    std::fs::write(&f, body).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("promtool check metrics < {}", f.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
