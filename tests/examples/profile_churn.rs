//! Instruction counts of the daemon's incremental path, repeatable whatever the machine's load:
//! the daemon runs under `valgrind --tool=callgrind` (instrumentation off until it is synced), the
//! fast writer adds then deletes `N` routes, and once every plugin holds the final view the
//! counters are dumped per thread. Prints instructions per route change, per thread and in
//! total; the callgrind files stay in `OUT` for `callgrind_annotate`.
//!
//! `cargo run --release -p ekho-tests --example profile_churn -- [N=20000] [PLUGINS=1] [V4|V6]
//! [OUT=target/callgrind]` (as root; needs valgrind; builds the release `ekho` and `null`).
//! `EKHO_PROFILE_PHASE=add` or `delete` counts only that phase (default: both).
//!
//! The event socket is sized so that nothing overruns however slow the daemon runs under
//! callgrind: the figures are the notification path only, no resync.

use ekho_tests::bench::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Polls (every 300 ms: the status requests run in the daemon too) until every null plugin
/// holds `routes` routes with nothing queued.
fn wait(d: &ekho_tests::Daemon, routes: u64) {
    let t0 = Instant::now();
    loop {
        let c = counters(d);
        if c.plugin_routes_min == routes && c.plugin_routes_max == routes && c.queued == 0 {
            assert_eq!(
                c.overruns, 0,
                "the profile is of the notification path: {c:?}"
            );
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "not caught up: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn callgrind_control(args: &[&str], pid: u32) {
    let st = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("callgrind_control");
    assert!(st.success(), "callgrind_control {args:?} failed");
}

/// The `PROGRAM TOTALS` of a callgrind file (instructions).
fn totals(f: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(f).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("summary: ").or(l.strip_prefix("totals: ")))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn main() {
    let mut a = std::env::args().skip(1);
    let n: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let nulls: usize = a.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let fam = match a.next().as_deref() {
        Some("V6") | Some("v6") => Family::V6,
        _ => Family::V4,
    };
    let ws = ekho_tests::workspace();
    let out = a
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ws.join("target/callgrind"));
    let bin_dir = ekho_tests::bench::release_build(&["ekho", "ekho-null"]);
    std::fs::create_dir_all(&out).unwrap();
    let stem = out.join(format!("churn-{fam:?}-{n}-{nulls}p"));
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(stem.file_name().unwrap().to_str().unwrap())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let wrapper: Vec<String> = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        &format!("--callgrind-out-file={}.%p", stem.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let b = Bench::new(&bin_dir);
    // 1 GiB of socket buffer: nothing overruns under callgrind.
    let (d, _) = b.daemon_under(&wrapper, "netlink_rcvbuf = 1073741824\n", nulls, "");
    let pid = Bench::pid(&d);
    let base = counters(&d).plugin_routes_max;
    // Which phases are counted: both (the default), or only the additions or the deletions.
    let phase = std::env::var("EKHO_PROFILE_PHASE").unwrap_or_else(|_| "both".into());
    let (count_add, count_delete) = match phase.as_str() {
        "add" => (true, false),
        "delete" => (false, true),
        "both" => (true, true),
        other => panic!("EKHO_PROFILE_PHASE={other}: add, delete or both"),
    };
    callgrind_control(&["-z"], pid);
    if count_add {
        callgrind_control(&["-i", "on"], pid);
    }
    let t = Instant::now();
    let w = b.write(Op::Add, fam, 0..n);
    assert_eq!(w.refused, 0);
    wait(&d, base + n as u64);
    if count_add != count_delete {
        callgrind_control(&["-i", if count_delete { "on" } else { "off" }], pid);
    }
    let w = b.write(Op::Delete, fam, 0..n);
    assert_eq!(w.refused, 0);
    wait(&d, base);
    callgrind_control(&["-i", "off"], pid);
    callgrind_control(&["-d"], pid);
    let took = t.elapsed();
    drop(d);
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let s = p.file_name().unwrap().to_string_lossy().to_string();
            s.starts_with(stem.file_name().unwrap().to_str().unwrap()) && s.contains(".1-")
        })
        .collect();
    files.sort();
    let changes = n as u64 * (count_add as u64 + count_delete as u64);
    let mut total = 0;
    println!(
        "profile_churn: {fam:?} add+delete {n} routes, counted: {phase}, {nulls} null plugin(s), {:.0?} under callgrind",
        took
    );
    for f in &files {
        let ir = totals(f);
        total += ir;
        if ir > changes {
            println!(
                "  {:>8} Ir/change  {}",
                ir / changes,
                f.file_name().unwrap().to_string_lossy()
            );
        }
    }
    println!("  {:>8} Ir/change  all threads", total / changes);
}
