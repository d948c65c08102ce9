//! The per-change cost of handing changes to a plugin across the ABI, in batches of 1024 (the
//! dispatcher's batch): the `null` plugin loaded from its `.so` and called through abi_stable,
//! against references measured in the same run: the same work done in-process (a direct call
//! of an equivalent plugin), and one clone of each change (what the dispatcher's queue pays
//! per change before the call, and about what converting a change into an older minor's types
//! costs: a field-by-field copy).
//!
//! `cargo run --release -p ekho-tests --example bench_abi -- [N]` (default 1000000 routes;
//! builds the release `null` plugin).

use ekho_plugin_api::abi_stable::std_types::RSlice;
use ekho_plugin_api::plugin::PluginModRef;
use ekho_plugin_api::prelude::*;
use std::process::Command;
use std::time::{Duration, Instant};

const BATCH: usize = 1024;

/// What `plugins/null` does per change, in-process.
struct Counting([u64; ObjectKind::ALL.len()]);

impl Counting {
    fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
        changes
            .iter()
            .map(|c| {
                self.0[c.kind().index()] += 1;
                Outcome::Offloaded
            })
            .collect()
    }
}

fn best_of(rounds: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..rounds).map(|_| f()).min().unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let ws = ekho_tests::workspace();
    let st = Command::new(env!("CARGO"))
        .current_dir(&ws)
        .args(["build", "--release", "-p", "ekho-null"])
        .status()
        .unwrap();
    assert!(st.success());
    let so = ws.join("target/release/libekho_null.so");
    let module = ekho_plugin_api::abi_stable::library::lib_header_from_path(&so)
        .and_then(|h| h.init_root_module::<PluginModRef>())
        .unwrap_or_else(|e| panic!("{}: {e}", so.display()));
    let mut plugin = (module.create())("".into(), ekho_plugin_api::DetachedHost::handle())
        .into_result()
        .unwrap();

    let changes: Vec<Change> = (0..n as u32)
        .map(|i| {
            let dst = IpPrefix::new(IpAddress::V4((0x2000_0000u32 + (i << 8)).to_be_bytes()), 24);
            let gw = IpAddress::V4([10, 0, 1, (i % 4) as u8 + 1]);
            Change::Add(Object::Route(Route::unicast(
                dst,
                vec![NextHop::via(gw, 2)],
            )))
        })
        .collect();

    let abi = best_of(3, || {
        let t = Instant::now();
        for chunk in changes.chunks(BATCH) {
            let out = plugin
                .apply(RSlice::from_slice(chunk))
                .into_result()
                .unwrap();
            assert_eq!(out.len(), chunk.len());
        }
        t.elapsed()
    });
    let mut local = Counting([0; ObjectKind::ALL.len()]);
    let direct = best_of(3, || {
        let t = Instant::now();
        for chunk in changes.chunks(BATCH) {
            let out = local.apply(std::hint::black_box(chunk));
            assert_eq!(out.len(), chunk.len());
        }
        t.elapsed()
    });
    let clone = best_of(3, || {
        let t = Instant::now();
        for chunk in changes.chunks(BATCH) {
            let v: Vec<Change> = std::hint::black_box(chunk).to_vec();
            std::hint::black_box(&v);
        }
        t.elapsed()
    });
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!("{n} route additions in batches of {BATCH}, best of 3:");
    println!(
        "  across the ABI into libekho_null.so: {:.1} ns/change ({abi:.2?})",
        per(abi)
    );
    println!(
        "  the same work in-process (direct call): {:.1} ns/change ({direct:.2?}); ABI/direct {:.2}",
        per(direct),
        abi.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "  one clone of each change (the queue's copy; a conversion is one such copy): {:.1} ns/change ({clone:.2?})",
        per(clone)
    );
}
