//! The churn benchmark harness in small (10k IPv4 + 2k IPv6 routes), for correctness, not
//! timing: the fast writer's requests all accepted, the daemon (one and two `null` plugins)
//! catching up after each add and delete burst with no overrun and a final view exactly the
//! kernel's, and the latency probe seeing every one of its routes reach the plugin.
//! The full run with timings is `examples/bench_churn.rs`.

use ekho_tests::bench::*;
use std::time::Duration;

#[test]
fn churn_smoke_exact_and_lossless() {
    if let Some(r) = ekho_tests::needs_root("the churn harness (network namespaces)") {
        ekho_tests::say_skip(&r);
        return;
    }
    let bin_dir = ekho_tests::build();
    let b = Bench::new(bin_dir);
    let sets = [(Family::V4, 10_000u32), (Family::V6, 2_000u32)];
    // The writer alone: every request accepted, the kernel holds them, then none of them.
    for (fam, n) in sets {
        let before = b.kernel_routes(fam);
        let w = b.write(Op::Add, fam, 0..n);
        assert_eq!(
            (w.requests, w.refused),
            (n as u64, 0),
            "{fam:?} adds: {w:?}"
        );
        assert_eq!(
            b.kernel_routes(fam),
            before + n as u64,
            "{fam:?} routes added"
        );
        let w = b.write(Op::Delete, fam, 0..n);
        assert_eq!(
            (w.requests, w.refused),
            (n as u64, 0),
            "{fam:?} deletes: {w:?}"
        );
        assert_eq!(b.kernel_routes(fam), before, "{fam:?} routes deleted");
    }
    for nulls in [1, 2] {
        let (d, _) = b.daemon(nulls, "");
        for (fam, n) in sets {
            for op in [Op::Add, Op::Delete] {
                let ph = churn_phase(&b, &d, op, fam, 0..n, Duration::from_secs(60));
                assert_eq!(ph.written.refused, 0, "{fam:?} {op:?}: {ph:?}");
                assert!(
                    ph.behind.is_some(),
                    "{nulls} plugins never held the final view after {fam:?} {op:?}: {:?}\n{}",
                    counters(&d),
                    d.log_text()
                );
                assert_eq!(ph.overruns, 0, "{fam:?} {op:?}: {ph:?}");
                let compared = same_routes(&b, &d, fam).unwrap();
                if op == Op::Add {
                    assert!(compared >= n as usize, "{compared} routes compared");
                }
            }
        }
    }
    // The latency probe: each of its routes reaches the recorder, idle and under churn.
    let (mut probe, rec) = Probe::new(&b);
    let (_d, _) = b.daemon(1, &rec);
    let (lat, missed) = probe.run(&b, 20, Duration::from_millis(1), &|| false);
    assert_eq!((lat.len(), missed), (20, 0), "probes seen, missed");
    let ns = b.ns.path();
    let va = b.va;
    let w = std::thread::spawn(move || write_routes(&ns, Op::Add, Family::V4, 0..10_000, va));
    let (lat, missed) = probe.run(&b, 10, Duration::from_millis(1), &|| false);
    assert_eq!(
        (lat.len(), missed),
        (10, 0),
        "probes under churn seen, missed"
    );
    assert_eq!(w.join().unwrap().refused, 0);
}
