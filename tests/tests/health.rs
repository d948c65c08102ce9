//! Health of the running daemon, through the real daemon: one daemon per namespace, the control
//! socket's limits (a huge request, a request that never ends, too many clients), the CLI's
//! timeout, the mirrored namespace deleted under the daemon.

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
