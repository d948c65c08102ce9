//! A daemon under test: `ekho run` and its plugins built from this workspace, driven through
//! its CLI.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Builds the `ekho` binary and the plugin libraries once per test process (debug profile), and
/// returns the directory holding them. With `EKHO_TEST_BUILD_DIR` set, nothing is built and that
/// directory is used as is: tests/vm/run builds on the host and runs the tests in a VM that sees
/// target/ read-only.
pub fn build() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("EKHO_TEST_BUILD_DIR") {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("ekho").is_file(),
                "EKHO_TEST_BUILD_DIR={}: no ekho binary there (cargo build -p ekho first)",
                dir.display()
            );
            return dir;
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args([
                "build",
                "-p",
                "ekho",
                "-p",
                "ekho-recorder",
                "-p",
                "ekho-null",
                "-p",
                "hello-vendor",
                "-p",
                "ekho-xdp-router",
                "-p",
                "ekho-flower-xdp",
            ])
            .status()
            .expect("running cargo build");
        assert!(
            status.success(),
            "cargo build of ekho and its plugins failed"
        );
        target.join("debug")
    })
}

/// The built `ekho` binary.
pub fn ekho_bin() -> PathBuf {
    build().join("ekho")
}

/// A daemon under test; SIGTERM on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `ekho run` with the given config text (write `{socket}` where the control socket
    /// path goes) and waits until every plugin left `syncing`.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        Daemon::start_bin(&ekho_bin(), dir, config)
    }

    /// [`Daemon::start`] with another `ekho` binary (a host built from other sources).
    pub fn start_bin(bin: &Path, dir: &Path, config: &str) -> Daemon {
        let mut d = Daemon::spawn_bin(bin, dir, config);
        d.wait_ready();
        d
    }

    /// Starts `ekho run` like [`Daemon::start`] without waiting for anything.
    pub fn spawn(dir: &Path, config: &str) -> Daemon {
        Daemon::spawn_bin(&ekho_bin(), dir, config)
    }

    /// [`Daemon::spawn`] with these environment variables set for the daemon.
    pub fn spawn_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_full(&ekho_bin(), dir, config, env)
    }

    fn spawn_bin(bin: &Path, dir: &Path, config: &str) -> Daemon {
        Daemon::spawn_full(bin, dir, config, &[])
    }

    fn spawn_full(bin: &Path, dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        let socket = dir.join("ekho.sock");
        let cfg_path = dir.join("ekho.toml");
        std::fs::write(
            &cfg_path,
            config.replace("{socket}", &socket.display().to_string()),
        )
        .unwrap();
        let log = dir.join("ekho.log");
        let child = Command::new(bin)
            .args(["--config", cfg_path.to_str().unwrap(), "run"])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(dir.join("ekho.stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            config: cfg_path,
            socket,
            log,
        }
    }

    /// Waits until the daemon says it is running (synced; older hosts do not say) and every
    /// plugin left `syncing`.
    pub fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ekho exited ({st}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok(s) = self.try_cli_json(&["status", "--json"]) {
                let running = s["ekho"]["state"].as_str().is_none_or(|st| st == "running");
                let syncing = !running
                    || s["plugins"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["state"] == "syncing");
                if !syncing {
                    return;
                }
            }
            // A bound on a hang, not a timing: a daemon that fails exits (above). Under the
            // 6.1 VM's emulation, on a loaded machine, verifying flower-xdp's program alone
            // took 34 s.
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "ekho not ready in 180 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address its `[host] metrics` endpoint listens on, read from its log (`127.0.0.1:0`
    /// in a config gives a free port, logged with `metrics at /metrics addr=...`).
    pub fn metrics_addr(&self) -> String {
        let log = self.log_text();
        log.lines()
            .find(|l| l.contains("metrics at /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no metrics address logged:\n{log}"))
    }

    /// `GET /metrics` from its metrics endpoint: (status line, body).
    pub fn scrape(&self, accept: &str) -> (String, String) {
        http_get(&self.metrics_addr(), "/metrics", accept)
    }

    /// Runs an `ekho` CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(ekho_bin())
            .args(["--config", self.config.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a CLI command with `--json` output and parses it.
    pub fn try_cli_json(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.cli(args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        self.try_cli_json(args)
            .unwrap_or_else(|e| panic!("ekho {}: {e}\n{}", args.join(" "), self.log_text()))
    }

    /// `ekho status --json`.
    pub fn status(&self) -> Value {
        self.cli_json(&["status", "--json"])
    }

    /// The status entry of plugin `name`.
    pub fn plugin(&self, name: &str) -> Value {
        self.status()["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no plugin {name} in status"))
    }

    /// Waits until every running plugin's queue is empty and the mirror is quiet.
    pub fn settle(&self) {
        let t0 = Instant::now();
        let mut quiet_since: Option<(Instant, u64)> = None;
        loop {
            let s = self.status();
            let msgs = s["mirror"]["messages"].as_u64().unwrap_or(0);
            let busy = s["plugins"].as_array().unwrap().iter().any(|p| {
                p["state"] != "failed"
                    && (p["queue_depth"].as_u64().unwrap_or(0) > 0 || p["state"] == "syncing")
            });
            match quiet_since {
                Some((t, m)) if m == msgs && !busy => {
                    if t.elapsed() > Duration::from_millis(300) {
                        return;
                    }
                }
                _ => {
                    quiet_since = if busy {
                        None
                    } else {
                        Some((Instant::now(), msgs))
                    }
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "daemon did not settle:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for exit; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A daemon config for namespace `ns`: `[host]` (control socket left as the `{socket}`
/// placeholder [`Daemon::start`] fills in), eBPF on or off, then `plugins` (`[[plugins]]` tables).
pub fn host_config(ns: &str, plugin_dir: &Path, ebpf: bool, plugins: &str) -> String {
    format!(
        "[host]\nnetns = \"{ns}\"\nplugin_dir = \"{}\"\ncontrol_socket = \"{{socket}}\"\nebpf = {ebpf}\n\n{plugins}",
        plugin_dir.display()
    )
}

/// `GET path` on `addr` (HTTP/1.1, `Accept: accept`), read to the end: (status line, body).
pub fn http_get(addr: &str, path: &str, accept: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}
