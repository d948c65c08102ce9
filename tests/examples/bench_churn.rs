//! The churn benchmark: one table where every figure stands beside its reference from the same
//! run (harness: `ekho_tests::bench`).
//!
//! `cargo run --release -p ekho-tests --example bench_churn -- [V4] [V6]` (default 1000000
//! IPv4 and 230000 IPv6 routes; as root; builds the release `ekho`, `null` and `recorder`; makes
//! a Python venv with pyroute2 under target/bench-venv for the peer dump, skipped with a note
//! when that fails). Namespaces are deleted on exit, also on panic.
//!
//! - churn: the fast writer adds then deletes the routes, nobody listening, then with the
//!   daemon running 1 and 4 `null` plugins: the kernel's accept rate with ekho against without,
//!   changes/s delivered to every plugin, time from the writer's last `send` until every plugin
//!   holds the final view, overruns, resyncs, final view exact (ekho's dump against iproute2's);
//! - the floor: a listener that only receives (recv and drop, the daemon's buffer) on the same
//!   churn: the kernel's accept rate with it, messages received, overruns;
//! - `ip monitor route` under the same churn: events printed against written;
//! - latency, route request to the plugin's apply (the recorder on a port of its own), idle and
//!   while the writer adds the IPv4 routes;
//! - initial sync of the whole table to `null` in_sync against the raw dump (receive and split)
//!   and the parsed dump (netlink-packet-route); pyroute2 dumping the IPv4 table;
//! - the daemon's peak RSS per route over an idle daemon, 1 and 4 plugins, at both table sizes;
//! - dispatch cost per change across the ABI, batched, against the same work in-process.

use ekho_tests::bench::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Table(Vec<[String; 5]>);

impl Table {
    fn row(&mut self, what: &str, value: String, reference: String, ratio: String, target: &str) {
        self.0
            .push([what.into(), value, reference, ratio, target.into()]);
    }
    fn print(&self) {
        let head = ["figure", "ekho", "reference (same run)", "ratio", "target"];
        let mut w = [0usize; 5];
        for r in self
            .0
            .iter()
            .chain(std::iter::once(&head.map(String::from)))
        {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |r: &[String; 5]| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect();
            println!("| {} |", cells.join(" | "));
        };
        line(&head.map(String::from));
        println!(
            "|{}|",
            w.iter()
                .map(|n| "-".repeat(n + 2))
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.0 {
            line(r);
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn secs(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

fn krate(r: f64) -> String {
    format!("{:.0}k/s", r / 1000.0)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// `ip monitor route` on `b` while the writer adds and deletes `n` routes of `fam`: (lines
/// printed, kernel accept rate of the adds with it listening, overruns: the receive errors it
/// printed, `No buffer space available`, one per overrun, after which it goes on).
fn ip_monitor(b: &Bench, fam: Family, n: u32) -> (u64, f64, u64) {
    let mut child = Command::new("ip")
        .args(["-n", &b.ns.name, "monitor", "route"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("No buffer space"))
            .count() as u64
    });
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c2 = count.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for _ in std::io::BufReader::new(out).lines() {
            c2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let add = b.write(Op::Add, fam, 0..n);
    b.write(Op::Delete, fam, 0..n);
    // Until it has printed nothing for a second.
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = count.load(std::sync::atomic::Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let overruns = errors.join().unwrap_or(0);
    (
        count.load(std::sync::atomic::Ordering::Relaxed),
        add.rate(),
        overruns,
    )
}

/// pyroute2 in a venv under target/: dumps the IPv4 routes of `b`'s namespace; (routes, time,
/// peak RSS KiB) or why it could not run.
fn pyroute2(ws: &std::path::Path, b: &Bench) -> Result<(u64, Duration, u64), String> {
    let venv = ws.join("target/bench-venv");
    let py = venv.join("bin/python3");
    if !py.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv", venv.to_str().unwrap()])
            .status()
            .map_err(|e| e.to_string())?;
        if !ok.success() {
            return Err("python3 -m venv failed (python3-venv missing?)".into());
        }
    }
    let have = Command::new(&py)
        .args(["-c", "import pyroute2"])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !have.success() {
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "pyroute2"])
            .status()
            .map_err(|e| e.to_string())?;
        if !ok.success() {
            return Err("pip install pyroute2 failed".into());
        }
    }
    let script = "import time, resource\nfrom pyroute2 import IPRoute\n\
        with IPRoute() as ip:\n    t = time.monotonic()\n    n = sum(1 for _ in ip.get_routes(family=2, table=254))\n    d = time.monotonic() - t\n\
        print(n, d, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n";
    // Bounded: pyroute2 parses in Python, some 100x slower than a raw dump.
    let out = Command::new("timeout")
        .args([
            "300",
            "ip",
            "netns",
            "exec",
            &b.ns.name,
            py.to_str().unwrap(),
            "-c",
            script,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.code() == Some(124) {
        return Err("pyroute2 did not finish its dump in 300 s".into());
    }
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    match f.as_slice() {
        [n, d, kb] => Ok((
            n.parse().unwrap_or(0),
            Duration::from_secs_f64(d.parse().unwrap_or(0.0)),
            kb.parse().unwrap_or(0),
        )),
        _ => Err(format!("unexpected output {text:?}")),
    }
}

/// Churn with the daemon running `nulls` null plugins: rows for both families.
fn churn_with(t: &mut Table, b: &Bench, nulls: usize, sets: &[(Family, u32, Written, Written)]) {
    let (d, _) = b.daemon(nulls, "");
    let perf_file = std::env::var("EKHO_BENCH_PERF").ok().filter(|_| nulls == 1);
    let perf_delete = std::env::var("EKHO_BENCH_PERF_PHASE").is_ok_and(|p| p == "delete");
    let mut perf = None;
    let record = |perf: &mut Option<std::process::Child>| {
        if let Some(f) = perf_file.as_deref().filter(|_| perf.is_none()) {
            *perf = Some(
                Command::new("perf")
                    .args(["record", "-g", "-o", f, "-p"])
                    .arg(Bench::pid(&d).to_string())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let stop = |perf: &mut Option<std::process::Child>| {
        if let Some(mut c) = perf.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    };
    let mut recorded = false;
    for (fam, n, add0, del0) in sets {
        let (fam, n) = (*fam, *n);
        let timeout = Duration::from_secs(120);
        if !recorded && !perf_delete {
            record(&mut perf);
        }
        let add = churn_phase(b, &d, Op::Add, fam, 0..n, timeout);
        stop(&mut perf);
        let exact_add = same_routes(b, &d, fam);
        if !recorded && perf_delete {
            record(&mut perf);
        }
        recorded = true;
        let del = churn_phase(b, &d, Op::Delete, fam, 0..n, timeout);
        stop(&mut perf);
        let exact_del = same_routes(b, &d, fam);
        // What the daemon said about each overrun (which loss: the socket's ENOBUFS, a
        // truncated datagram, or its own backlog full).
        if add.overruns + del.overruns > 0 {
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            for l in log.lines().filter(|l| l.contains("lost, resyncing")) {
                eprintln!("{fam:?}, {nulls} plugin(s): {l}");
            }
        }
        let who = format!("{nulls} plugin{}", if nulls > 1 { "s" } else { "" });
        for (what, ph, ref0, exact) in [
            ("add", &add, add0, &exact_add),
            ("delete", &del, del0, &exact_del),
        ] {
            let ratio = ph.written.rate() / ref0.rate();
            t.row(
                &format!("{fam:?} {what} {n}, {who}: kernel accept rate"),
                krate(ph.written.rate()),
                format!("{} nobody listening", krate(ref0.rate())),
                format!("{ratio:.2}"),
                met(ratio >= 0.9),
            );
            let behind_ok = ph.behind.is_some_and(|b| b <= Duration::from_millis(500));
            t.row(
                &format!("{fam:?} {what} {n}, {who}: delivered, behind writer"),
                format!(
                    "{}, {}",
                    krate(ph.delivered_per_s),
                    ph.behind
                        .map(secs)
                        .unwrap_or_else(|| "not caught up in 120 s".into())
                ),
                format!("writer took {}", secs(ph.written.took)),
                "".into(),
                met(behind_ok),
            );
            t.row(
                &format!("{fam:?} {what} {n}, {who}: overruns, resyncs, final view"),
                format!(
                    "{}, {}, {}",
                    ph.overruns,
                    ph.resyncs,
                    match exact {
                        Ok(n) => format!("exact ({n} routes compared)"),
                        Err(e) => format!("DIFFERS: {e}"),
                    }
                ),
                format!("refused by the kernel: {}", ph.written.refused),
                "".into(),
                met(ph.overruns == 0 && exact.is_ok()),
            );
        }
    }
}

fn main() {
    let mut a = std::env::args().skip(1);
    let n4: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let n6: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(230_000);
    let ws = ekho_tests::workspace();
    let bin_dir = ekho_tests::bench::release_build(&["ekho", "ekho-null", "ekho-recorder"]);
    // EKHO_BENCH_ONLY=churn,latency,sync,dispatch,peers: a subset of the sections.
    let only = std::env::var("EKHO_BENCH_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|x| x == s);
    // EKHO_BENCH_PERF=FILE: `perf record` the daemon during the first churn phase (IPv4 adds, 1
    // plugin; EKHO_BENCH_PERF_PHASE=delete: the IPv4 deletes) into FILE.
    let load0 = loadavg();
    let t0 = Instant::now();
    let mut t = Table(Vec::new());

    // Churn, nobody listening: the references.
    let b = Bench::new(&bin_dir);
    let mut sets = Vec::new();
    for (fam, n) in [(Family::V4, n4), (Family::V6, n6)] {
        if n == 0 {
            continue;
        }
        let add0 = b.write(Op::Add, fam, 0..n);
        assert_eq!(add0.refused, 0, "{fam:?} adds refused: {add0:?}");
        let del0 = b.write(Op::Delete, fam, 0..n);
        assert_eq!(del0.refused, 0, "{fam:?} deletes refused: {del0:?}");
        eprintln!("reference {fam:?}: add {add0:?}, delete {del0:?}");
        sets.push((fam, n, add0, del0));
    }
    // The floor: a listener that only receives (`Drain`), on the same churn. What the kernel
    // pays to notify any listener; ekho's accept rate cannot be above it.
    for (fam, n, add0, del0) in sets.iter().filter(|_| want("churn")) {
        for (op, ref0) in [(Op::Add, add0), (Op::Delete, del0)] {
            let drain = Drain::start(&b.ns.path());
            let w = b.write(op, *fam, 0..*n);
            let got = drain.stop();
            assert_eq!(w.refused, 0, "{fam:?} {op:?} refused with the drain: {w:?}");
            let what = format!(
                "{fam:?} {} {n}",
                if op == Op::Add { "add" } else { "delete" }
            );
            t.row(
                &format!("{what}, drain-only listener: kernel accept rate"),
                krate(w.rate()),
                format!("{} nobody listening", krate(ref0.rate())),
                format!("{:.2}", w.rate() / ref0.rate()),
                "(floor)",
            );
            t.row(
                &format!("{what}, drain-only listener: received, overruns, behind"),
                format!(
                    "{} messages, {} overruns, {}",
                    got.messages,
                    got.overruns,
                    got.last
                        .map(|l| secs(l.saturating_duration_since(w.ended.unwrap())))
                        .unwrap_or_else(|| "-".into())
                ),
                format!("{n} written"),
                format!("{:.2}", got.messages as f64 / *n as f64),
                "(floor)",
            );
        }
    }
    for nulls in [1, 4] {
        if !want("churn") {
            break;
        }
        churn_with(&mut t, &b, nulls, &sets);
        eprintln!("churn with {nulls} plugins done at {:.0?}", t0.elapsed());
    }

    // The peer: ip monitor under the same IPv4 churn.
    if want("peers") {
        let (printed, mon_rate, overruns) = ip_monitor(&b, Family::V4, n4);
        t.row(
            &format!("`ip monitor route` under V4 add+delete {n4}: events printed"),
            format!("{printed} ({overruns} overruns reported)"),
            format!("{} written", 2 * n4 as u64),
            format!("{:.2}", printed as f64 / (2.0 * n4 as f64)),
            "(peer)",
        );
        t.row(
            "`ip monitor route` listening: kernel accept rate (V4 add)",
            krate(mon_rate),
            format!("{} nobody listening", krate(sets[0].2.rate())),
            format!("{:.2}", mon_rate / sets[0].2.rate()),
            "(peer)",
        );
    }

    // Latency, idle then under churn.
    if want("latency") {
        let (mut probe, rec) = Probe::new(&b);
        let (d, _) = b.daemon(1, &rec);
        let (idle, missed_idle) = probe.run(&b, 300, Duration::from_millis(3), &|| false);
        std::thread::sleep(Duration::from_millis(100));
        let base = counters(&d).plugin_routes_max;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done2, ns) = (done.clone(), b.ns.path());
        let va = b.va;
        let writer = std::thread::spawn(move || {
            let w = write_routes(&ns, Op::Add, Family::V4, 0..n4, va);
            done2.store(true, std::sync::atomic::Ordering::SeqCst);
            w
        });
        let (busy, missed_busy) = probe.run(&b, 100_000, Duration::from_millis(3), &|| {
            done.load(std::sync::atomic::Ordering::SeqCst)
        });
        writer.join().unwrap();
        // The probes' routes reach the null plugin too.
        let probes = (busy.len() + missed_busy as usize) as u64;
        let caught = |want: u64| {
            if wait_plugins(&d, want, Duration::from_secs(120)).is_none() {
                panic!(
                    "plugins never held {want} routes in 120 s: {:?}",
                    counters(&d)
                );
            }
        };
        caught(base + n4 as u64 + probes);
        b.write(Op::Delete, Family::V4, 0..n4);
        caught(base + probes);
        let p = |v: &[Duration]| {
            format!(
                "p50 {} p99 {} max {} ({} rounds)",
                secs(percentile(v, 50.0)),
                secs(percentile(v, 99.0)),
                secs(percentile(v, 100.0)),
                v.len()
            )
        };
        t.row(
            "latency route request -> plugin apply, idle",
            p(&idle),
            format!("missed {missed_idle}"),
            "".into(),
            met(percentile(&idle, 99.0) <= Duration::from_millis(1) && missed_idle == 0),
        );
        t.row(
            &format!("latency, under V4 add {n4}"),
            p(&busy),
            format!("missed {missed_busy}"),
            "".into(),
            "(no target)",
        );
        drop(d);
    }

    // Initial sync and memory on the full table, then on the IPv4 table alone.
    if want("sync") {
        let idle_ns = Bench::new(&bin_dir);
        let base1 = {
            let (d, _) = idle_ns.daemon(1, "");
            peak_rss_kb(Bench::pid(&d))
        };
        let base4 = {
            let (d, _) = idle_ns.daemon(4, "");
            peak_rss_kb(Bench::pid(&d))
        };
        drop(idle_ns);
        let mut fams = vec![(Family::V4, n4)];
        if n6 > 0 {
            fams.push((Family::V6, n6));
        }
        for (fam, n) in &fams {
            let w = b.write(Op::Add, *fam, 0..*n);
            assert_eq!(w.refused, 0);
        }
        for round in 0..2 {
            let total: u64 = if round == 0 {
                fams.iter().map(|(_, n)| *n as u64).sum()
            } else {
                n4 as u64
            };
            let label = if round == 0 && n6 > 0 {
                format!("{n4} V4 + {n6} V6")
            } else {
                format!("{n4} V4")
            };
            let dump = |parse: bool| {
                best_of(3, || {
                    fams.iter()
                        .take(if round == 0 { 2 } else { 1 })
                        .map(|(f, _)| dump_routes(&b.ns.path(), *f, parse).1)
                        .sum()
                })
            };
            let raw = dump(false);
            let parsed = dump(true);
            let mut syncs = Vec::new();
            for nulls in [1usize, 4] {
                let (d, took) = b.daemon(nulls, "");
                let c = counters(&d);
                assert!(c.routes >= total, "mirror holds {} routes", c.routes);
                let peak = peak_rss_kb(Bench::pid(&d));
                let base = if nulls == 1 { base1 } else { base4 };
                let per = (peak.saturating_sub(base)) as f64 * 1024.0 / total as f64;
                syncs.push(took);
                t.row(
                    &format!("peak RSS per route, {label}, {nulls} plugin(s)"),
                    format!("{per:.0} B/route ({} MiB)", peak / 1024),
                    format!("idle daemon {} MiB", base / 1024),
                    "".into(),
                    if nulls == 1 && round == 1 {
                        met(per <= 128.0)
                    } else {
                        "(<= 128 at 1M, 1 plugin)"
                    },
                );
            }
            t.row(
                &format!("initial sync {label} -> null in_sync"),
                secs(syncs[0]),
                format!("raw dump {}", secs(raw)),
                format!("{:.2}", syncs[0].as_secs_f64() / raw.as_secs_f64()),
                if round == 0 {
                    met(syncs[0] <= 2 * raw)
                } else {
                    "(<= 2x raw)"
                },
            );
            t.row(
                &format!("initial sync {label}, against a parsed dump"),
                secs(syncs[0]),
                format!("parsed dump {}", secs(parsed)),
                format!("{:.2}", syncs[0].as_secs_f64() / parsed.as_secs_f64()),
                "",
            );
            t.row(
                &format!("initial sync {label} -> 4 null plugins in_sync"),
                secs(syncs[1]),
                format!("raw dump {}", secs(raw)),
                format!("{:.2}", syncs[1].as_secs_f64() / raw.as_secs_f64()),
                "",
            );
            if round == 0 {
                if n6 > 0 {
                    b.write(Op::Delete, Family::V6, 0..n6);
                }
            } else {
                match pyroute2(&ws, &b) {
                    Ok((n, took, kb)) => {
                        t.row(
                            &format!("pyroute2 get_routes(table=254), {n} routes"),
                            format!("{}, peak RSS {} MiB", secs(took), kb / 1024),
                            format!("raw dump {}", secs(raw)),
                            format!("{:.2}", took.as_secs_f64() / raw.as_secs_f64()),
                            "(peer)",
                        );
                    }
                    Err(e) => eprintln!("pyroute2 peer skipped: {e}"),
                }
            }
        }
    }

    // Dispatch across the ABI.
    if want("dispatch") {
        let dc = dispatch_cost(&bin_dir.join("libekho_null.so"), 1_000_000);
        t.row(
            &format!("dispatch across the ABI, batches of {DISPATCH_BATCH}"),
            format!("{:.1} ns/change", dc.per_change(dc.abi)),
            format!("in-process {:.1} ns/change", dc.per_change(dc.direct)),
            format!("{:.2}", dc.abi.as_secs_f64() / dc.direct.as_secs_f64()),
            met(dc.per_change(dc.abi) <= 50.0),
        );
    }

    println!(
        "\nbench_churn {n4} V4 + {n6} V6 routes, {:.0?}; load average before {load0}, after {}; {} cores",
        t0.elapsed(),
        loadavg(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    t.print();
}
