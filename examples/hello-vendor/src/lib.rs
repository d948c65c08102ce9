//! # hello-vendor: the smallest ekho offload plugin
//!
//! Copy this crate to start a backend for your NIC/DPU. It "offloads" IPv4 routes into an
//! in-memory table of fixed capacity, like a hardware LPM table, and reports
//! `failed: table full` past it. Replace `Table` with calls into your SDK.
//!
//! Build and check it:
//! ```sh
//! cargo build --release -p hello-vendor
//! ekho check-plugin target/release/libhello_vendor.so
//! ```
//! Enable it (`/etc/ekho/ekho.toml`):
//! ```toml
//! [[plugins]]
//! name = "hello-vendor"
//! [plugins.config]
//! capacity = 1024
//! ```

use ekho_plugin_api::prelude::*;
use ekho_plugin_api::ObjectKey;
use serde::Deserialize;
use std::collections::HashMap;

/// The plugin's own config table, parsed from the TOML text the host passes verbatim.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Entries the "hardware" table holds.
    #[serde(default = "default_capacity")]
    capacity: usize,
}

fn default_capacity() -> usize {
    16
}

/// Stand-in for the device's route table.
struct Table {
    capacity: usize,
    entries: HashMap<ObjectKey, Route>,
}

struct HelloVendor {
    table: Table,
    host: HostHandle,
    failed_full: u64,
}

impl Plugin for HelloVendor {
    /// Called once with the `[plugins.config]` table. An `Err` is shown to the operator and the
    /// host skips the plugin.
    fn create(ctx: CreateContext) -> Result<Self, String> {
        let cfg: Config =
            toml::from_str(&ctx.config).map_err(|e| format!("hello-vendor config: {e}"))?;
        if cfg.capacity == 0 {
            return Err("hello-vendor config: capacity must be at least 1".into());
        }
        ctx.host.log(
            LogLevel::Info,
            format!("table capacity {}", cfg.capacity).as_str().into(),
        );
        Ok(HelloVendor {
            table: Table {
                capacity: cfg.capacity,
                entries: HashMap::new(),
            },
            host: ctx.host,
            failed_full: 0,
        })
    }

    /// Only IPv4 routes reach this plugin; the host filters everything else out.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .kinds([ObjectKind::Route])
            .families([Family::INET])
            .max_ecmp_width(8)
    }

    /// One outcome per change, in order.
    fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
        changes.iter().map(|c| self.apply_one(c)).collect()
    }

    /// Counters for `ekho status`.
    fn stats(&self) -> Stats {
        Stats::default()
            .counter("route", "entries", self.table.entries.len() as u64)
            .counter("route", "capacity", self.table.capacity as u64)
            .counter("route", "failed_table_full", self.failed_full)
    }

    fn shutdown(&mut self) {
        self.host.log(LogLevel::Info, "clearing table".into());
        self.table.entries.clear();
    }
}

impl HelloVendor {
    fn apply_one(&mut self, c: &Change) -> Outcome {
        match c {
            Change::Add(Object::Route(r))
            | Change::Update {
                new: Object::Route(r),
                ..
            } => {
                // Routes the kernel handles locally stay with the kernel.
                if r.kind != RouteType::UNICAST {
                    return Outcome::Trapped;
                }
                let key = c.key();
                if !self.table.entries.contains_key(&key)
                    && self.table.entries.len() >= self.table.capacity
                {
                    self.failed_full += 1;
                    return Outcome::failed(format!(
                        "table full ({} entries)",
                        self.table.capacity
                    ));
                }
                self.table.entries.insert(key, r.clone());
                Outcome::Offloaded
            }
            Change::Remove(o) => {
                self.table.entries.remove(&o.key());
                Outcome::Offloaded
            }
            _ => Outcome::Unsupported,
        }
    }
}

ekho_plugin_api::declare_plugin!(HelloVendor, name = "hello-vendor");
