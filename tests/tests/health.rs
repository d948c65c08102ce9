//! Health of the running daemon, through the real daemon: one daemon per namespace, the control
//! socket's limits (a huge request, a request that never ends, too many clients), the CLI's
//! timeout, the mirrored namespace deleted under the daemon, the netlink source failing after the
//! sync (restarted with a full resync), undecodable messages (counted per type, logged
//! rate-limited), the initial dump's progress in `ekho status`, SIGTERM during that dump.

use ekho_tests::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn topology(ns: &Netns) {
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
    ns.ip(&["link", "set", "a0", "up"]);
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "a0"]);
}

fn null_plugin() -> &'static str {
    "[[plugins]]\nname = \"null\"\npath = \"libekho_null.so\"\n"
}

/// Waits for the daemon process to exit; its status.
fn wait_exit(d: &mut Daemon, within: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
            d.child = None;
            return st;
        }
        assert!(
            t0.elapsed() < within,
            "still running after {within:?}:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_daemon_on_one_namespace_is_refused_naming_the_first() {
    let ns = Netns::new();
    topology(&ns);
    let (a, b) = (TempDir::new(), TempDir::new());
    let cfg = host_config(&ns.name, build(), false, null_plugin());
    let first = Daemon::start(a.path(), &cfg);
    let pid = first.status()["ekho"]["pid"].as_u64().unwrap();
    // Another config, another control socket: the same namespace.
    let mut second = Daemon::spawn(b.path(), &cfg);
    let st = wait_exit(&mut second, Duration::from_secs(10));
    assert!(!st.success());
    let log = second.log_text();
    assert!(
        log.contains(&format!(
            "another ekho (pid {pid}) already mirrors the network namespace /run/netns/{}",
            ns.name
        )),
        "{log}"
    );
    assert!(!second.socket.exists(), "the second never bound its socket");
    assert_eq!(first.status()["ekho"]["state"], "running");
    assert!(first.socket.exists());
}

#[test]
fn the_control_socket_limits_request_size_idle_time_and_clients() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let d = Daemon::start(
        dir.path(),
        &host_config(&ns.name, build(), false, null_plugin()),
    );
    let answer = |s: UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line
    };
    // A huge request: refused with the limit, closed.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let huge = vec![b'x'; 1 << 20];
    let _ = s.write_all(&huge);
    let line = answer(s);
    assert!(line.contains("request larger than 65536 bytes"), "{line:?}");
    // A request that never ends: closed after the request timeout, the daemon answering others
    // meanwhile.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"{\"cmd\": \"sta").unwrap();
    let t0 = Instant::now();
    assert_eq!(d.status()["ekho"]["state"], "running");
    let line = answer(s);
    let took = t0.elapsed();
    assert!(
        line.contains("no complete request line within 5 s"),
        "{line:?}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // Too many clients at once: the one past the limit is told so; once they go, it answers.
    let idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let out = d.cli(&["status", "--json"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serves 64 control clients at once"),
        "{out:?}"
    );
    drop(idle);
    assert!(wait_for(Duration::from_secs(10), || d
        .try_cli_json(&["status", "--json"])
        .ok())
    .is_some());
}

#[test]
fn the_cli_times_out_with_a_clear_message() {
    let dir = TempDir::new();
    let socket = dir.path().join("mute.sock");
    // Something that accepts and never answers.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let keep = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = c.read(&mut buf);
        std::thread::sleep(Duration::from_secs(5));
    });
    let cfg = dir.path().join("ekho.toml");
    std::fs::write(
        &cfg,
        format!("[host]\ncontrol_socket = \"{}\"\n", socket.display()),
    )
    .unwrap();
    let t0 = Instant::now();
    let out = std::process::Command::new(ekho_bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "status",
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the ekho daemon at {} did not answer within 1 s",
            socket.display()
        )),
        "{err}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    keep.join().unwrap();
}

#[test]
fn a_deleted_namespace_stops_the_daemon_with_the_reason() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let mut d = Daemon::start(
        dir.path(),
        &host_config(&ns.name, build(), false, null_plugin()),
    );
    sh("ip", &["netns", "del", &ns.name]);
    let st = wait_exit(&mut d, Duration::from_secs(10));
    assert!(!st.success(), "{st}");
    let log = d.log_text();
    assert!(
        log.contains(&format!(
            "the mirrored network namespace /run/netns/{} was deleted (or replaced): stopping, not to mirror a ghost",
            ns.name
        )),
        "{log}"
    );
    assert!(log.contains("plugin stopped plugin=null"), "{log}");
    assert!(!d.socket.exists());
}

/// The routes' destinations in the daemon's mirror.
fn mirrored_dsts(d: &Daemon) -> Vec<String> {
    d.cli_json(&["dump", "routes", "--json"])["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_failed_netlink_source_is_restarted_with_a_full_resync() {
    let ns = Netns::new();
    topology(&ns);
    ns.ip(&["route", "add", "10.70.0.0/16", "via", "10.1.0.2"]);
    let dir = TempDir::new();
    let ev = dir.path().join("rec.jsonl");
    let cfg = host_config(
        &ns.name,
        build(),
        false,
        &format!(
            "[[plugins]]\nname = \"rec\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\n",
            ev.display()
        ),
    );
    // Fault injection (a test-only environment variable): 1.5 s after the sync the source's event
    // socket is broken, its next receive fails (ENOTSOCK) as a real socket error would.
    let mut d = Daemon::spawn_env(
        dir.path(),
        &cfg,
        &[("EKHO_FAULT_SOURCE_FAIL_AFTER_MS", "1500")],
    );
    d.wait_ready();
    assert_eq!(d.status()["mirror"]["source"]["state"], "running");
    let resyncs = d.status()["mirror"]["resyncs"].as_u64().unwrap();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // While it is down (the daemon waits 0.5 s before the restart), change routes: only the new
    // source's full dump, reconciled by mark and sweep, can tell the mirror and the plugin.
    let src = wait_for(Duration::from_secs(10), || {
        let s = bench::status(&d)["mirror"]["source"].clone();
        (s["state"] == "restarting").then_some(s)
    })
    .unwrap_or_else(|| panic!("the source never failed:\n{}", d.log_text()));
    ns.ip(&["route", "del", "10.70.0.0/16"]);
    ns.ip(&["route", "add", "10.71.0.0/16", "via", "10.1.0.2"]);
    assert_eq!(src["restarts"], 1, "{src}");
    let err = src["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("event recv"), "{src}");
    assert!(err.contains("os error 88"), "ENOTSOCK expected: {src}");
    let at = src["last_error_unix_ms"].as_u64().unwrap();
    assert!(at >= t0 && at < t0 + 10_000, "{src}");
    assert!(
        wait_for(Duration::from_secs(10), || {
            let dsts = mirrored_dsts(&d);
            (dsts.iter().any(|x| x == "10.71.0.0/16") && !dsts.iter().any(|x| x == "10.70.0.0/16"))
                .then_some(())
        })
        .is_some(),
        "the mirror never caught up:\n{}",
        d.log_text()
    );
    d.settle();
    let st = d.status();
    assert_eq!(st["mirror"]["source"]["state"], "running", "{st}");
    assert_eq!(st["mirror"]["source"]["restarts"], 1, "{st}");
    assert!(st["mirror"]["resyncs"].as_u64().unwrap() > resyncs, "{st}");
    // The plugin was not restarted: it got the differences.
    assert_eq!(d.plugin("rec")["restarts"], 0);
    let events = read_events(&ev);
    let ops = |op: &str, dst: &str| {
        events
            .iter()
            .filter(|e| e["op"] == op && e["object"]["dst"] == dst)
            .count()
    };
    assert_eq!(ops("add", "10.71.0.0/16"), 1, "{events:?}");
    assert_eq!(ops("remove", "10.70.0.0/16"), 1, "{events:?}");
    assert_eq!(ops("add", "10.70.0.0/16"), 1, "added once, at the start");
    // The new source keeps the mirror current.
    ns.ip(&["route", "add", "10.72.0.0/16", "via", "10.1.0.2"]);
    assert!(wait_for(Duration::from_secs(10), || mirrored_dsts(&d)
        .iter()
        .any(|x| x == "10.72.0.0/16")
        .then_some(()))
    .is_some());
    // `ekho status` says it too.
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("netlink source: running restarts=1 last error: netlink: event recv"),
        "{text}"
    );
    let log = d.log_text();
    assert!(
        log.contains("netlink source failed: netlink: event recv"),
        "{log}"
    );
    assert!(log.contains("netlink source restarted: resynced"), "{log}");
}

/// Multicasts `n` `RTM_NEWROUTE` messages too short for their header (3 bytes where `struct
/// rtmsg` has 12) to `RTNLGRP_IPV4_ROUTE` in `ns`, as any process with CAP_NET_ADMIN there may:
/// the kernel delivers them to every member of the group, the daemon's event socket among them.
/// Without `NLM_F_REQUEST` the kernel itself ignores them.
fn multicast_undecodable_routes(ns: &Netns, n: usize) {
    let path = ns.path();
    std::thread::spawn(move || {
        // Only this thread enters the test's namespace.
        ekho_mirror::source::enter_netns(&path).unwrap();
        let mut msg = Vec::new();
        msg.extend_from_slice(&19u32.to_ne_bytes()); // nlmsg_len
        msg.extend_from_slice(&24u16.to_ne_bytes()); // RTM_NEWROUTE
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
        msg.extend_from_slice(&[2, 0, 0]); // rtm_family AF_INET, then cut short
                                           // SAFETY: plain socket calls on a descriptor owned here, with valid buffers.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as u16;
            to.nl_groups = 1 << (7 - 1); // RTNLGRP_IPV4_ROUTE
            for _ in 0..n {
                let r = libc::sendto(
                    fd,
                    msg.as_ptr() as *const libc::c_void,
                    msg.len(),
                    0,
                    &to as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                );
                assert_eq!(r, msg.len() as isize, "{}", std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
    })
    .join()
    .unwrap();
}

#[test]
fn undecodable_messages_are_counted_per_type_and_logged_rate_limited() {
    let ns = Netns::new();
    topology(&ns);
    let dir = TempDir::new();
    let d = Daemon::start(
        dir.path(),
        &host_config(&ns.name, build(), false, null_plugin()),
    );
    assert!(
        d.status()["mirror"]["undecodable"]
            .as_object()
            .unwrap()
            .is_empty(),
        "nothing undecodable from the kernel itself"
    );
    multicast_undecodable_routes(&ns, 25);
    let count = |d: &Daemon| d.status()["mirror"]["undecodable"]["RTM_NEWROUTE"].as_u64();
    assert_eq!(
        wait_for(Duration::from_secs(10), || count(&d).filter(|n| *n == 25)),
        Some(25),
        "{}\n{}",
        d.status(),
        d.log_text()
    );
    let logged = |d: &Daemon| {
        d.log_text()
            .lines()
            .filter(|l| l.contains("undecodable notification") && l.contains("RTM_NEWROUTE"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        logged(&d).len(),
        1,
        "one line for 25 messages:\n{}",
        d.log_text()
    );
    // The mirror is unharmed and keeps listening.
    ns.ip(&["route", "add", "10.73.0.0/16", "via", "10.1.0.2"]);
    assert!(wait_for(Duration::from_secs(10), || mirrored_dsts(&d)
        .iter()
        .any(|x| x == "10.73.0.0/16")
        .then_some(()))
    .is_some());
    // Past the 10 s: the next one is logged, with how many were not.
    std::thread::sleep(Duration::from_millis(10_200));
    multicast_undecodable_routes(&ns, 1);
    assert_eq!(
        wait_for(Duration::from_secs(10), || count(&d).filter(|n| *n == 26)),
        Some(26)
    );
    let lines = wait_for(Duration::from_secs(5), || {
        let l = logged(&d);
        (l.len() == 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("{}", d.log_text()));
    assert!(
        lines[1].contains("24 more of this type not logged"),
        "{lines:?}"
    );
    assert!(lines[1].contains("total=26"), "{lines:?}");
    // `ekho status` says it too.
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("undecodable messages: RTM_NEWROUTE=26"),
        "{text}"
    );
}

/// Adds `n` /32 routes (172.16.0.0 on) via 10.1.0.2.
fn add_routes(ns: &Netns, n: u32) {
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!(
            "route add 172.{}.{}.{}/32 via 10.1.0.2\n",
            16 + (i >> 16),
            (i >> 8) & 255,
            i & 255
        ));
    }
    ns.ip_batch(&batch);
}

#[test]
fn sigterm_during_the_initial_dump_is_a_clean_stop() {
    let ns = Netns::new();
    topology(&ns);
    add_routes(&ns, 200_000);
    let dir = TempDir::new();
    let ev = dir.path().join("rec.jsonl");
    let mut d = Daemon::spawn(
        dir.path(),
        &host_config(
            &ns.name,
            build(),
            false,
            &format!(
                "[[plugins]]\nname = \"rec\"\npath = \"libekho_recorder.so\"\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"link\"]\n",
                ev.display()
            ),
        ),
    );
    let s = wait_for(Duration::from_secs(60), || {
        try_status(&d.socket).filter(|s| s["mirror"]["dump_progress"]["dumping"] == "routes")
    })
    .unwrap_or_else(|| panic!("never seen dumping routes:\n{}", d.log_text()));
    assert_eq!(s["ekho"]["state"], "syncing", "{s}");
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(d.child.as_ref().unwrap().id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut d, Duration::from_secs(15));
    let log = d.log_text();
    assert!(st.success(), "{st}:\n{log}");
    assert!(log.contains("SIGTERM during start-up: stopping"), "{log}");
    assert!(
        !log.contains("ekho running"),
        "stopped before the sync completed:\n{log}"
    );
    assert!(log.contains("plugin stopped plugin=rec"), "{log}");
    assert!(log.contains("ekho stopped"), "{log}");
    assert!(!d.socket.exists(), "the socket file is removed");
}

/// The daemon's status from its control socket (no process per poll), if it answers.
fn try_status(socket: &std::path::Path) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    serde_json::from_slice(&out).ok()
}

#[test]
fn status_shows_the_initial_dumps_progress() {
    let ns = Netns::new();
    topology(&ns);
    // Enough routes for a dump that takes a while.
    const ROUTES: u32 = 200_000;
    add_routes(&ns, ROUTES);
    let dir = TempDir::new();
    let mut d = Daemon::spawn(
        dir.path(),
        &host_config(&ns.name, build(), false, null_plugin()),
    );
    // Poll the control socket directly (no process per poll) until the daemon runs.
    let t0 = Instant::now();
    let mut samples = Vec::new();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(120), "{}", d.log_text());
        if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("exited {st}:\n{}", d.log_text());
        }
        if !d.socket.exists() {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let Some(s) = try_status(&d.socket) else {
            continue;
        };
        let state = s["ekho"]["state"].as_str().unwrap().to_string();
        let p = s["mirror"]["dump_progress"].clone();
        samples.push((state.clone(), p));
        if state == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let syncing: Vec<&serde_json::Value> = samples
        .iter()
        .filter(|(s, _)| s == "syncing")
        .map(|(_, p)| p)
        .collect();
    let routes_seen: Vec<u64> = syncing
        .iter()
        .filter(|p| p["dumping"] == "routes")
        .map(|p| p["messages"]["routes"].as_u64().unwrap())
        .collect();
    assert!(
        routes_seen.iter().any(|n| *n > 0 && *n < u64::from(ROUTES)),
        "no sample caught the route dump under way ({} samples while syncing: {:?})",
        syncing.len(),
        routes_seen
    );
    assert!(
        routes_seen.windows(2).all(|w| w[0] <= w[1]),
        "{routes_seen:?}"
    );
    // Links were dumped before the routes.
    let p = syncing.iter().find(|p| p["dumping"] == "routes").unwrap();
    assert!(p["messages"]["links"].as_u64().unwrap() >= 3, "{p}");
    // Once running: the dump is over, every route counted.
    let (_, last) = samples.last().unwrap();
    assert!(last["dumping"].is_null(), "{last}");
    assert!(
        last["messages"]["routes"].as_u64().unwrap() >= u64::from(ROUTES),
        "{last}"
    );
}
