//! `ekho`: mirror the kernel's networking state and dispatch it to offload plugins.

mod binding;
mod config;
mod control;
mod daemon;
mod dispatch;
mod flows;
mod instance;
mod loader;
mod metrics;
mod render;
mod systemd;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::Config;
use ekho_mirror::tcshow::{self, Show};
use ekho_plugin_api::prelude::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ekho",
    version,
    about = "Mirror the kernel's networking state and dispatch it to offload plugins"
)]
struct Cli {
    /// Config file [default: /etc/ekho/ekho.toml if it exists, else a built-in default: plugins
    /// next to the executable, the recorder plugin writing to stdout, the caller's netns]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format (logs go to stderr; filter with RUST_LOG, default info)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// How long the CLI waits for the daemon's answer, in seconds [default: 10; reload and
    /// plugin actions 120]; a dump streams, so this is how long the daemon may stay silent in
    /// the middle of it (a full table takes longer in all, not before its first byte)
    #[arg(long, global = true)]
    timeout: Option<f64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon
    Run,
    /// Show the daemon's state: mirror, eBPF hooks, plugins
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List loaded plugins, their API versions and capabilities
    Plugins {
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's mirror, iproute2-like (KIND: links, addresses, routes, nexthops,
    /// neighbours, fdb, vlans, mdb, rules, netconf, nft_chains, nft_flowtables), its conntrack
    /// table as `conntrack -L -o extended` prints it (KIND: flows), or one of tc's lists in tc's
    /// wording (qdiscs, classes, filters, chains, actions)
    Dump {
        kind: Option<String>,
        #[arg(long)]
        json: bool,
        /// With `flows`: the table's counters (entries, limit, refused, events, overruns, resyncs);
        /// with `filters`: the kernel's software counters and each plugin's beside each filter
        #[arg(long)]
        stats: bool,
    },
    /// Stream changes as the mirror applies them, like `ip monitor`
    Monitor {
        #[arg(long)]
        json: bool,
    },
    /// Restart, stop or start one plugin of the running daemon
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Re-read the config file: load added plugins, stop removed ones, restart changed ones
    /// (also sent by SIGHUP); a config that does not parse is refused and the running one stays
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// Load a plugin .so without the daemon: print its ABI, versions and capabilities, or exactly
    /// why the host would refuse it (non-zero exit then)
    CheckPlugin {
        file: PathBuf,
        /// A TOML file holding the plugin's config table (its keys, or the `[plugins.config]`
        /// table as in ekho.toml), to check `create` with it
        #[arg(long)]
        plugin_config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PluginAction {
    /// Create the plugin anew and replay the mirror to it (its restarts in a row start again)
    Restart { name: String },
    /// Shut the plugin down; it stays stopped (also across failures) until `start`
    Stop { name: String },
    /// Start a stopped or failed plugin
    Start { name: String },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ekho: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::CheckPlugin {
            file,
            plugin_config,
            json,
        } => check_plugin(&file, plugin_config.as_deref(), json),
        cmd => {
            let config = match Config::load(cli.config.as_deref()) {
                Ok(c) => c,
                // The daemon would refuse it the same way: say so without asking it.
                Err(e) if matches!(cmd, Cmd::Reload { .. }) => {
                    anyhow::bail!("{e}; not reloaded: the running configuration stays")
                }
                Err(e) => return Err(e.into()),
            };
            let socket = config.control_socket();
            let slow = matches!(cmd, Cmd::Reload { .. } | Cmd::Plugin { .. });
            let timeout = std::time::Duration::from_secs_f64(
                cli.timeout
                    .filter(|t| *t > 0.0)
                    .unwrap_or(if slow { 120.0 } else { 10.0 }),
            );
            match cmd {
                Cmd::Run => {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(daemon::run(config))?;
                }
                Cmd::Status { json } => {
                    let v = control::request(&socket, &json!({"cmd": "status"}), timeout)?;
                    print_or(json, &v, render::status);
                }
                Cmd::Plugins { json } => {
                    let v = control::request(&socket, &json!({"cmd": "plugins"}), timeout)?;
                    print_or(json, &v, render::plugins);
                }
                Cmd::Dump { kind, json, stats }
                    if matches!(kind.as_deref(), Some("flows" | "flow")) =>
                {
                    let v = control::request(
                        &socket,
                        &json!({"cmd": "dump", "kind": "flows", "stats": stats}),
                        timeout,
                    )?;
                    print_or(json, &v, render::flows);
                }
                Cmd::Dump {
                    stats: true, kind, ..
                } if kind.as_deref() != Some("filters") => {
                    anyhow::bail!(
                        "--stats goes with `ekho dump flows` and `ekho dump filters` only"
                    )
                }
                Cmd::Dump { kind, json, stats } => {
                    let tc = kind.as_deref().and_then(Show::from_name);
                    if let Some(k) = &kind {
                        if ObjectKind::from_name(k).is_none() && tc.is_none() {
                            anyhow::bail!("unknown kind {k:?}; one of: {}", control::dump_kinds());
                        }
                    }
                    // The human form asks for each kind's length first, to print its header
                    // before the objects (streamed, never held).
                    let req = json!({"cmd": "dump", "kind": kind, "stats": stats, "counts": !json});
                    match tc {
                        // tc's lists: `tc -j`'s array, or tc's own lines.
                        Some(t) => {
                            let v = control::request(&socket, &req, timeout)?;
                            print_or(json, &v, |v| tcshow::text(v, t))
                        }
                        // Streamed: a full table is printed as it arrives.
                        None => {
                            let stdout = std::io::stdout().lock();
                            let mut p = render::DumpPrinter::new(
                                std::io::BufWriter::with_capacity(256 * 1024, stdout),
                                json,
                            );
                            control::request_dump(&socket, &req, timeout, |e| p.event(e))?;
                            p.finish()?;
                        }
                    }
                }
                Cmd::Plugin { action } => {
                    let (a, name) = match &action {
                        PluginAction::Restart { name } => ("restart", name),
                        PluginAction::Stop { name } => ("stop", name),
                        PluginAction::Start { name } => ("start", name),
                    };
                    let v = control::request(
                        &socket,
                        &json!({"cmd": "plugin", "action": a, "name": name}),
                        timeout,
                    )?;
                    println!(
                        "plugin {name}: {a} done, now {}",
                        v["state"].as_str().unwrap_or("?")
                    );
                }
                Cmd::Reload { json } => {
                    let v = control::request(&socket, &json!({"cmd": "reload"}), timeout)?;
                    print_or(json, &v, render::reload);
                }
                Cmd::Monitor { json } => {
                    control::stream(&socket, &json!({"cmd": "monitor"}), |v| {
                        if json {
                            println!("{v}");
                        } else {
                            println!("{}", render::change(&v));
                        }
                    })?;
                }
                Cmd::CheckPlugin { .. } => unreachable!(),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_or(json: bool, v: &serde_json::Value, human: impl Fn(&serde_json::Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap());
    } else {
        print!("{}", human(v));
    }
}

fn check_plugin(
    file: &std::path::Path,
    cfg: Option<&std::path::Path>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let config_text = match cfg {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            // Accept the table alone, or with its `[plugins.config]` header as in ekho.toml.
            match toml::from_str::<toml::Table>(&text) {
                Ok(t) => match t
                    .get("plugins")
                    .and_then(|p| p.get("config"))
                    .and_then(|c| c.as_table())
                {
                    Some(inner) if t.len() == 1 => toml::to_string(inner)?,
                    _ => text,
                },
                Err(_) => text,
            }
        }
        None => String::new(),
    };
    let fail = |stage: &str, e: String| -> anyhow::Result<ExitCode> {
        if as_json {
            println!(
                "{}",
                json!({"file": file.display().to_string(), "accepted": false, "stage": stage, "reason": e})
            );
        } else {
            println!("{}: REFUSED at {stage}\n  {e}", file.display());
        }
        Ok(ExitCode::from(2))
    };
    let api = ekho_plugin_api::version::API_VERSION;
    let range = ekho_plugin_api::version::accepted_range(api).unwrap_or_default();
    let lib = match loader::open(file) {
        Ok(l) => l,
        Err(e) => {
            if let loader::LoadError::Layout { full, .. } = &e {
                tracing::debug!("abi_stable report:\n{full}");
            }
            let stage = match &e {
                loader::LoadError::Layout { .. } => "layout check",
                loader::LoadError::IncompatibleApi { .. } | loader::LoadError::NewerApi { .. } => {
                    "API version"
                }
                loader::LoadError::PanicAbort { .. } => "panic strategy",
                loader::LoadError::Untrusted(_) => "trust",
                loader::LoadError::Unresolved { .. } => "symbol binding",
                _ => "pre-flight",
            };
            return fail(stage, e.to_string());
        }
    };
    let plugin = match lib.create(&config_text, ekho_plugin_api::DetachedHost::handle()) {
        Ok(p) => p,
        Err(e) => return fail("create", e.to_string()),
    };
    let caps = match plugin.capabilities().into_result() {
        Ok(c) => c,
        Err(e) => return fail("capabilities", e.to_string()),
    };
    let mut plugin = plugin;
    let _ = plugin.shutdown();
    let v = json!({
        "file": file.display().to_string(),
        "accepted": true,
        "name": lib.info.name.as_str(),
        "version": lib.info.version.as_str(),
        "description": lib.info.description.as_str(),
        "api_version": lib.api_version,
        "host_api_version": api,
        "host_accepts": range,
        "abi": lib.how().describe(),
        "capabilities": daemon::capabilities_json(&caps, None),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
    } else {
        print!("{}", render::check(&v));
    }
    Ok(ExitCode::SUCCESS)
}
