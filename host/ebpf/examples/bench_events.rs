//! Benchmark: neighbour events through the ring buffer into a consumer, and the in-kernel cost
//! of each program (run_time_ns / run_cnt from BPF_OBJ_GET_INFO_BY_FD with BPF stats enabled).
//!
//! `cargo run --release -p ekho-ebpf --example bench_events [-- OPS [PRODUCERS [RING_BYTES]]]`
//!
//! Creates a private namespace `ekho-bpf-bench-<pid>` (deleted at exit) with a veth pair, then
//! - phase 1: PRODUCERS parallel `ip -batch` processes each replace OPS/PRODUCERS neighbours in
//!   the watched namespace (128 addresses per producer, cycled with new MACs: 2 records per
//!   operation, neigh_update and neigh_update_done, plus neigh_create the first time); reports
//!   records/s delivered and lost;
//! - phase 2: the same operations in a second namespace, all dropped in the kernel by the netns
//!   filter; reports the per-run cost of a filtered event.

use ekho_ebpf::{enable_bpf_stats, EbpfConfig, EbpfSource, ProgramStats, StartOptions};
use ekho_plugin_api::object::IpAddress;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("ekho-bpf-bench-{}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        for cmd in [
            "link add v0 type veth peer name v1",
            "link set v0 up",
            "link set v1 up",
        ] {
            let mut a = vec!["ip", "-n", &ns.0];
            a.extend(cmd.split_whitespace());
            run(&a);
        }
        ns
    }
    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.0).into()
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(argv: &[&str]) {
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{argv:?} failed");
}

/// Runs `producers` parallel `ip -batch` processes in `ns`, `ops` neighbour replaces in total.
fn produce(ns: &Ns, ops: usize, producers: usize, round: usize, net: usize) -> Duration {
    let per = ops / producers;
    let scripts: Vec<String> = (0..producers)
        .map(|p| {
            let mut s = String::with_capacity(per * 80);
            for i in 0..per {
                let n = p * per + i;
                // 128 addresses per producer, cycled with changing MACs: the neighbour table
                // limit (gc_thresh3, 1024 by default) is shared by all namespaces.
                s += &format!(
                    "neigh replace 10.{}.0.{} lladdr 02:{:02x}:00:{:02x}:{:02x}:{:02x} dev v0 nud reachable\n",
                    net + p,
                    i % 128,
                    round & 0xff,
                    (n >> 16) & 0xff,
                    (n >> 8) & 0xff,
                    n & 0xff
                );
            }
            s
        })
        .collect();
    let t = Instant::now();
    let children: Vec<_> = scripts
        .into_iter()
        .map(|s| {
            let mut c = Command::new("ip")
                .args(["-n", &ns.0, "-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("ip -batch");
            let mut stdin = c.stdin.take().unwrap();
            let h = std::thread::spawn(move || stdin.write_all(s.as_bytes()).unwrap());
            (c, h)
        })
        .collect();
    for (mut c, h) in children {
        h.join().unwrap();
        assert!(c.wait().unwrap().success());
    }
    t.elapsed()
}

fn totals(s: &[ProgramStats]) -> (u64, u64) {
    s.iter()
        .fold((0, 0), |(c, t), p| (c + p.run_count, t + p.run_time_ns))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let ops: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let producers: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2).max(1);
    let ring: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(4 << 20);

    let watched = Ns::new("a");
    let other = Ns::new("b");
    let _stats = enable_bpf_stats().expect("BPF_ENABLE_STATS");
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let foreign = Arc::new(AtomicU64::new(0));
    let (r, l, f) = (received.clone(), last.clone(), foreign.clone());
    let sink: ekho_ebpf::EventSink = Arc::new(move |batch| {
        r.fetch_add(batch.len() as u64, Ordering::Relaxed);
        // The other namespace's operations use 10.64.0.0/10.
        let n = batch
            .iter()
            .filter(
                |e| matches!(e.addr.into_option(), Some(IpAddress::V4([10, b, _, _])) if b >= 64),
            )
            .count();
        f.fetch_add(n as u64, Ordering::Relaxed);
        *l.lock().unwrap() = Instant::now();
    });
    let lost_calls = Arc::new(AtomicU64::new(0));
    let lc = lost_calls.clone();
    let loss: ekho_ebpf::LossSink = Arc::new(move |_| {
        lc.fetch_add(1, Ordering::Relaxed);
    });
    let opts = StartOptions {
        ring_bytes: ring,
        fib_lookups: false,
        no_fentry: true,
        ..Default::default()
    };
    let src = EbpfSource::start_with(
        EbpfConfig {
            netns: Some(watched.path()),
        },
        opts,
        sink,
        loss,
    )
    .expect("start");

    println!(
        "ops {ops}, producers {producers}, ring {ring} bytes, {} CPUs",
        num_cpus()
    );
    for round in 0..2 {
        received.store(0, Ordering::Relaxed);
        let before = src.stats();
        let k0 = totals(&src.program_stats());
        let t0 = Instant::now();
        let produce_time = produce(&watched, ops, producers, round, 16);
        // Wait until the consumer has been idle for 200 ms.
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if last.lock().unwrap().elapsed() > Duration::from_millis(200) {
                break;
            }
        }
        let got = received.load(Ordering::Relaxed);
        let after = src.stats();
        let consumed = *last.lock().unwrap() - t0;
        let k1 = totals(&src.program_stats());
        let (runs, ns) = (k1.0 - k0.0, k1.1 - k0.1);
        println!(
            "phase 1.{round} watched ns: {got} records in {:.3} s (producers done in {:.3} s) = {:.0} records/s delivered, lost {}; kernel: {runs} runs, {:.0} ns/run",
            consumed.as_secs_f64(),
            produce_time.as_secs_f64(),
            got as f64 / consumed.as_secs_f64(),
            after.lost - before.lost,
            ns as f64 / runs.max(1) as f64
        );
    }
    let k0 = totals(&src.program_stats());
    let before = src.stats();
    let dt = produce(&other, ops, producers, 0, 64);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let k1 = totals(&src.program_stats());
    let (runs, ns) = (k1.0 - k0.0, k1.1 - k0.1);
    println!(
        "phase 2 other ns: {} operations in {:.3} s, {} of its records delivered (must be 0; {} records of the watched ns meanwhile); kernel: {runs} runs, {:.0} ns/run (filtered)",
        ops,
        dt.as_secs_f64(),
        foreign.load(Ordering::Relaxed),
        src.stats().events - before.events,
        ns as f64 / runs.max(1) as f64
    );
    println!("per program (cumulative):");
    for p in src.program_stats() {
        if p.run_count > 0 {
            println!(
                "  {:32} {:>9} runs {:>7.0} ns/run",
                p.hook,
                p.run_count,
                p.run_time_ns as f64 / p.run_count as f64
            );
        }
    }
    println!("loss reports: {}", lost_calls.load(Ordering::Relaxed));
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
