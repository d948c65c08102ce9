//! The per-change cost of handing changes to a plugin across the ABI, in batches of 1024 (the
//! dispatcher's batch): the `null` plugin loaded from its `.so` and called through abi_stable,
//! against references measured in the same run: the same work done in-process (a direct call
//! of an equivalent plugin), and one clone of each change (what the dispatcher's queue pays
//! per change before the call, and about what converting a change into an older minor's types
//! costs: a field-by-field copy). The measurement is `ekho_tests::bench::dispatch_cost`, also
//! part of `bench_churn`'s table.
//!
//! `cargo run --release -p ekho-tests --example bench_abi -- [N]` (default 1000000 routes;
//! builds the release `null` plugin).

use ekho_tests::bench::{dispatch_cost, DISPATCH_BATCH};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let bin_dir = ekho_tests::bench::release_build(&["ekho-null"]);
    let d = dispatch_cost(&bin_dir.join("libekho_null.so"), n);
    println!("{n} route additions in batches of {DISPATCH_BATCH}, best of 3:");
    println!(
        "  across the ABI into libekho_null.so: {:.1} ns/change ({:.2?})",
        d.per_change(d.abi),
        d.abi
    );
    println!(
        "  the same work in-process (direct call): {:.1} ns/change ({:.2?}); ABI/direct {:.2}",
        d.per_change(d.direct),
        d.direct,
        d.abi.as_secs_f64() / d.direct.as_secs_f64()
    );
    println!(
        "  one clone of each change (the queue's copy; a conversion is one such copy): {:.1} ns/change ({:.2?})",
        d.per_change(d.clone),
        d.clone
    );
}
