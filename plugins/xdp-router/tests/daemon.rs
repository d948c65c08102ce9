//! End to end through the ekho daemon: `ekho run` mirrors r, loads libekho_xdp_router.so, and
//! forwarding between h1 and h2 works only while the daemon runs.
//!
//! Needs the host binary, which this crate cannot build: run with
//! `cargo build -p ekho -p ekho-xdp-router && EKHO_BIN=target/debug/ekho cargo test -p ekho-xdp-router --test daemon`
//! (the plugin is taken from the binary's directory). Prints `SKIP:` without it, or without root.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether some object in `v` is the counter {kind, name} with a value > 0.
fn counter_positive(v: &Value, kind: &str, name: &str) -> bool {
    match v {
        Value::Object(m) => {
            (m.get("kind").and_then(Value::as_str) == Some(kind)
                && m.get("name").and_then(Value::as_str) == Some(name)
                && m.get("value").and_then(Value::as_u64).unwrap_or(0) > 0)
                || m.values().any(|x| counter_positive(x, kind, name))
        }
        Value::Array(a) => a.iter().any(|x| counter_positive(x, kind, name)),
        _ => false,
    }
}

#[test]
fn forwarding_through_the_daemon() {
    if skip() {
        return;
    }
    let Some(bin) = std::env::var_os("EKHO_BIN").map(PathBuf::from) else {
        say_skip("forwarding_through_the_daemon: set EKHO_BIN to the ekho binary (cargo build -p ekho -p ekho-xdp-router; EKHO_BIN=target/debug/ekho)");
        return;
    };
    // Relative paths are taken from the workspace root (tests run in the crate's directory).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::fs::canonicalize(&bin)
        .or_else(|_| std::fs::canonicalize(root.join(&bin)))
        .expect("EKHO_BIN");
    let dir = bin.parent().unwrap().to_path_buf();
    assert!(
        dir.join("libekho_xdp_router.so").exists(),
        "no libekho_xdp_router.so next to {}",
        bin.display()
    );

    let topo = Topo::new(false);
    let (h1, h2) = (topo.h1.clone(), topo.h2.clone());
    assert!(
        !topo.ping_once(&h1, "10.0.2.2"),
        "kernel forwarded with ip_forward=0"
    );

    let tmp = std::env::temp_dir().join(format!("ekho-xdp-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let config = tmp.join("ekho.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nnetns = \"{}\"\nplugin_dir = \"{}\"\ncontrol_socket = \"{}\"\n\n\
             [[plugins]]\nname = \"xdp-router\"\n[plugins.config]\nports = [\"p*\"]\n",
            topo.r,
            dir.display(),
            tmp.join("ekho.sock").display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut daemon = Daemon(
        Command::new(&bin)
            .args(["--config", cfg, "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ekho run"),
    );

    assert!(
        topo.ping_within(&h1, "10.0.2.2", T),
        "v4 through the daemon"
    );
    assert!(
        topo.ping_within(&h1, "fd00:2::2", T),
        "v6 through the daemon"
    );
    assert_eq!(topo.ping_count(&h1, "10.0.2.2", 5), 5);
    let n = 2 << 20;
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "10.0.2.2", 5101, n),
        Some(n),
        "v4 TCP"
    );
    assert_eq!(
        topo.tcp_transfer(&h1, &h2, "fd00:2::2", 5102, n),
        Some(n),
        "v6 TCP"
    );

    // A route added on r reaches the data path through the mirror.
    topo.ip(&h2, "addr add 10.9.9.9/32 dev lo");
    assert!(!topo.ping_once(&h1, "10.9.9.9"));
    topo.ip(&topo.r, "route add 10.9.9.9/32 via 10.0.2.2");
    assert!(topo.ping_within(&h1, "10.9.9.9", T), "route added on r");

    let t0 = std::time::Instant::now();
    loop {
        let out = Command::new(&bin)
            .args(["--config", cfg, "status", "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if counter_positive(&v, "port:p1", "forwarded") {
            break;
        }
        assert!(
            t0.elapsed() < T,
            "no forwarded counter in `ekho status --json`: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM: the daemon shuts the plugin down, which detaches its programs.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let t0 = std::time::Instant::now();
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < T, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        topo.xdp_attached_in_r().is_empty(),
        "left attached: {:?}",
        topo.xdp_attached_in_r()
    );
    assert_eq!(
        topo.ping_count(&h1, "10.0.2.2", 3),
        0,
        "forwarded after the daemon stopped"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
