//! The daemon's configuration file (TOML).
//!
//! ```toml
//! [host]
//! netns = "r1"                       # name under /run/netns, or a path; default: the caller's
//! plugin_dir = "/usr/lib/ekho/plugins"
//! control_socket = "/run/ekho/ekho.sock"
//!
//! [[plugins]]
//! name = "recorder"                  # the plugin's declared name (or its file name)
//! path = "libekho_recorder.so"       # optional; relative to plugin_dir
//! version = "^0.1"                   # optional semver requirement on the plugin's version
//! ports = ["veth*"]                  # optional interface-name globs, overriding the plugin's scope
//! restart = "on-failure"             # or "never" (default on-failure)
//! restart_limit = 5                  # restarts in a row before giving up
//! restart_backoff_ms = 1000          # first delay, doubled per restart in a row, at most 60 s
//! call_timeout_ms = 30000            # the watchdog: a longer call marks the plugin hung (0: off)
//! [plugins.config]                   # passed to the plugin verbatim
//! events_path = "/var/log/ekho/events.jsonl"
//!
//! [flows]                            # conntrack of the mirrored netns (docs/flows.md)
//! enabled = true                     # default true; without ctnetlink it is a status line
//! limit = 65536                      # most entries mirrored (about 225 B each); more refused
//! rcvbuf = 33554432                  # ctnetlink event socket buffer, bytes (default 32 MiB)
//! refresh_s = 10                     # re-dump and reconcile this often (0: only on overruns)
//! [[flows.offload]]                  # offload candidates: ASSURED (TCP: ESTABLISHED) entries
//! protocols = ["tcp", "udp"]         #   matching any such table (none: tcp and udp, any)
//! families = ["ipv4", "ipv6"]        # optional filters: zones = [0], mark = "0x10/0xff",
//! dports = [443, "8000-8999"]        #   sports = [...]
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ekho/ekho.toml";
/// Default control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/ekho/ekho.sock";

/// Errors a user can cause with the config file; each names the file and, for TOML errors, the
/// line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path} (pass an existing file with --config, or omit --config to use the built-in default)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    #[serde(default)]
    pub flows: FlowsConfig,
    /// Where this config came from (not a TOML key).
    #[serde(skip)]
    pub source: ConfigSource,
}

/// Origin of a config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// The built-in default (no file).
    #[default]
    BuiltIn,
    File(PathBuf),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::BuiltIn => f.write_str("built-in default"),
            ConfigSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `[host]`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Network namespace to mirror: a name under /run/netns or a path. Default: the caller's.
    pub netns: Option<String>,
    /// Directory holding plugin `.so` files. Default: the directory of the `ekho` executable.
    pub plugin_dir: Option<PathBuf>,
    /// Control socket path. Default: /run/ekho/ekho.sock.
    pub control_socket: Option<PathBuf>,
    /// Capture kernel notifier events with eBPF (default true; falls back to netlink alone when
    /// BPF cannot be loaded).
    pub ebpf: Option<bool>,
    /// Receive buffer of the netlink event socket, in bytes (default 64 MiB).
    pub netlink_rcvbuf: Option<usize>,
    /// Serve Prometheus metrics at `http://ADDR:PORT/metrics`, e.g. "127.0.0.1:9477" (default:
    /// not served).
    pub metrics: Option<String>,
}

/// `[flows]`: the conntrack table of the mirrored netns (docs/flows.md).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowsConfig {
    /// Mirror conntrack (default true; a netns without ctnetlink is reported, not an error).
    pub enabled: Option<bool>,
    /// The most entries mirrored, hence offload candidates (default 65536, about 225 bytes
    /// each); additions past it are refused and counted (`ekho status`: `refused`).
    pub limit: Option<usize>,
    /// Receive buffer of the ctnetlink event socket, bytes (default 32 MiB).
    pub rcvbuf: Option<usize>,
    /// Re-dump and reconcile the table every this many seconds (default 10; 0: never): entries
    /// older than the daemon send no events, counters and timeouts change with none.
    pub refresh_s: Option<u64>,
    /// The offload policy: `[[flows.offload]]` tables; an entry matching any is an offload
    /// candidate (none: the defaults, `crate::flows::policy`).
    #[serde(default)]
    pub offload: Vec<crate::flows::policy::Rule>,
}

/// What happens to a plugin that failed (panicked, broke the contract).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// It stays failed.
    Never,
    /// It is created anew and replayed, after a backoff, at most `restart_limit` times in a row.
    #[default]
    OnFailure,
}

/// Default `restart_limit`.
pub const DEFAULT_RESTART_LIMIT: u32 = 5;
/// Default `restart_backoff_ms`: the first delay; each further restart in a row doubles it.
pub const DEFAULT_RESTART_BACKOFF_MS: u64 = 1000;
/// The longest restart backoff.
pub const MAX_RESTART_BACKOFF_MS: u64 = 60_000;
/// Default `call_timeout_ms`.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 30_000;

/// One `[[plugins]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    pub path: Option<PathBuf>,
    /// Semver requirement on the plugin's own version.
    pub version: Option<String>,
    /// Interface-name globs, overriding the plugin's declared port scope.
    pub ports: Option<Vec<String>>,
    /// `"on-failure"` (default) or `"never"`.
    pub restart: Option<RestartPolicy>,
    /// Restarts in a row before giving up (default 5); a plugin in sync for a minute starts
    /// counting again.
    pub restart_limit: Option<u32>,
    /// The first restart's delay in ms (default 1000), doubled for each further one in a row, at
    /// most 60 s.
    pub restart_backoff_ms: Option<u64>,
    /// A call into the plugin running longer than this (ms) marks it `hung` and it is fed no
    /// more (default 30000; 0: no watchdog).
    pub call_timeout_ms: Option<u64>,
    /// Passed to the plugin verbatim, as TOML text.
    #[serde(default)]
    pub config: Option<toml::Table>,
}

impl PluginConfig {
    /// The delay before restart number `n + 1` in a row.
    pub fn restart_backoff(&self, n: u32) -> std::time::Duration {
        let first = self
            .restart_backoff_ms
            .unwrap_or(DEFAULT_RESTART_BACKOFF_MS);
        let ms = first
            .saturating_mul(1u64 << n.min(20))
            .min(MAX_RESTART_BACKOFF_MS.max(first));
        std::time::Duration::from_millis(ms)
    }

    /// The watchdog's limit for one call (`None`: off).
    pub fn call_timeout(&self) -> Option<std::time::Duration> {
        match self.call_timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// The plugin's own table as TOML text (empty when absent).
    pub fn config_text(&self) -> String {
        self.config
            .as_ref()
            .map(|t| toml::to_string(t).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Config {
    /// Loads `path`, or the built-in default when `path` is `None` and the default file does not
    /// exist.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::from_file(p),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                if p.exists() {
                    Config::from_file(p)
                } else {
                    Ok(Config::built_in())
                }
            }
        }
    }

    /// Reads and validates a file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Config::parse(&text, path)?;
        c.source = ConfigSource::File(path.to_path_buf());
        Ok(c)
    }

    /// Parses TOML text (`path` is used in messages only).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        c.validate(text, path)?;
        Ok(c)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for p in &self.plugins {
            let line = find_line(text, &format!("\"{}\"", p.name));
            let at = |m: String| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: match line {
                    Some(l) => format!("line {l}: {m}"),
                    None => m,
                },
            };
            if p.name.trim().is_empty() {
                return Err(at("a [[plugins]] table has an empty `name`".into()));
            }
            if !seen.insert(p.name.clone()) {
                return Err(at(format!(
                    "plugin {:?} is enabled twice; keep one [[plugins]] table per plugin",
                    p.name
                )));
            }
            if let Some(v) = &p.version {
                if let Err(e) = semver::VersionReq::parse(v) {
                    return Err(at(format!(
                        "plugin {:?}: `version = {v:?}` is not a semver requirement ({e}); write e.g. \"^0.1\"",
                        p.name
                    )));
                }
            }
            for g in p.ports.iter().flatten() {
                if let Err(e) = glob::Pattern::new(g) {
                    return Err(at(format!(
                        "plugin {:?}: port glob {g:?} is invalid: {e}",
                        p.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The built-in default: plugin dir next to the executable, the recorder writing to stdout,
    /// the caller's netns.
    pub fn built_in() -> Config {
        Config {
            host: HostConfig::default(),
            plugins: vec![PluginConfig {
                name: "recorder".into(),
                ..Default::default()
            }],
            flows: FlowsConfig::default(),
            source: ConfigSource::BuiltIn,
        }
    }

    /// The plugin directory in effect.
    pub fn plugin_dir(&self) -> PathBuf {
        if let Some(d) = &self.host.plugin_dir {
            return d.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The control socket in effect.
    pub fn control_socket(&self) -> PathBuf {
        self.host
            .control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
    }

    /// The netns path in effect (`None`: the caller's).
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.host.netns.as_ref().map(|n| {
            if n.contains('/') {
                PathBuf::from(n)
            } else {
                Path::new("/run/netns").join(n)
            }
        })
    }
}

fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/ekho/test.toml"))
    }

    #[test]
    fn restart_keys_and_backoff() {
        let c = parse("[[plugins]]\nname = \"a\"\nrestart = \"never\"\nrestart_backoff_ms = 250\ncall_timeout_ms = 0\n\n[[plugins]]\nname = \"b\"\n").unwrap();
        let (a, b) = (&c.plugins[0], &c.plugins[1]);
        assert_eq!(a.restart, Some(RestartPolicy::Never));
        assert_eq!(b.restart.unwrap_or_default(), RestartPolicy::OnFailure);
        let ms = |p: &PluginConfig, n| p.restart_backoff(n).as_millis();
        assert_eq!([ms(a, 0), ms(a, 1), ms(a, 2)], [250, 500, 1000]);
        assert_eq!([ms(b, 0), ms(b, 5), ms(b, 30)], [1000, 32_000, 60_000]);
        assert_eq!(a.call_timeout(), None);
        assert_eq!(b.call_timeout(), Some(std::time::Duration::from_secs(30)));
        let e = parse("[[plugins]]\nname = \"a\"\nrestart = \"always\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("never") && e.contains("on-failure"),
            "{e}"
        );
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
[host]
netns = "r1"
plugin_dir = "/opt/p"
control_socket = "/tmp/e.sock"

[[plugins]]
name = "recorder"
version = "^0.1"
ports = ["veth*", "br0"]
[plugins.config]
events_path = "/tmp/x"
nested = { a = 1 }
"#,
        )
        .unwrap();
        assert_eq!(c.netns_path().unwrap(), PathBuf::from("/run/netns/r1"));
        assert_eq!(c.plugin_dir(), PathBuf::from("/opt/p"));
        let text = c.plugins[0].config_text();
        let back: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(back["events_path"].as_str(), Some("/tmp/x"));
        assert_eq!(back["nested"]["a"].as_integer(), Some(1));
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let e = parse("[host]\nnetns = \"a\"\nplugin_dri = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/ekho/test.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("column 1"), "{e}");
        assert!(e.contains("plugin_dri"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let e = parse("[[plugins]]\nname = 3\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("string"), "{e}");
    }

    #[test]
    fn bad_semver_and_duplicates() {
        let e = parse("[[plugins]]\nname = \"a\"\nversion = \"one\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("semver"), "{e}");
        let e = parse("[[plugins]]\nname = \"a\"\n[[plugins]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn a_bad_offload_policy_names_file_line_and_column() {
        let c =
            parse("[flows]\nlimit = 10\n[[flows.offload]]\nprotocols = [\"udp\"]\ndports = [53]\n")
                .unwrap();
        assert_eq!((c.flows.limit, c.flows.offload.len()), (Some(10), 1));
        let e = parse("[flows]\n\n[[flows.offload]]\nprotocols = [\"tcp\", \"tpc\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/ekho/test.toml"), "{e}");
        assert!(e.contains("line 4") && e.contains("column"), "{e}");
        assert!(e.contains("unknown protocol \"tpc\""), "{e}");
        let e = parse("[[flows.offload]]\ndports = [\"9000-80\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("LO <= HI"), "{e}");
        let e = parse("[flows]\nlimt = 3\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("limt"), "{e}");
    }

    #[test]
    fn built_in_default_runs_recorder() {
        let c = Config::built_in();
        assert_eq!(c.plugins[0].name, "recorder");
        assert!(c.netns_path().is_none());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_example_config_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ekho.toml");
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.host.netns.as_deref(), Some("r1"));
        assert_eq!(c.plugins.len(), 2);
    }

    #[test]
    fn installed_config_matches_the_install_layout() {
        // dist/ekho.toml is installed as /etc/ekho/ekho.toml (README.md, "Installing").
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/ekho.toml");
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.plugin_dir(), Path::new("/usr/lib/ekho/plugins"));
        assert_eq!(c.control_socket(), Path::new(DEFAULT_CONTROL_SOCKET));
        assert!(c.netns_path().is_none());
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugins[0].name, "xdp-router");
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .unwrap();
        assert!(readme.contains("install -m 0644 dist/ekho.toml /etc/ekho/ekho.toml"));
        let unit = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/ekho.service"),
        )
        .unwrap();
        assert!(unit.contains(&format!("--config {DEFAULT_CONFIG_PATH} run")));
        assert!(unit.contains("RuntimeDirectory=ekho"));
    }
}
