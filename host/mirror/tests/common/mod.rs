//! Shared helpers of the mirror's integration tests: a private netns set up for them (the test
//! kit's [`Netns`]), a running source, and the wait-until-equal comparison with the kernel.
#![allow(dead_code)]

use ekho_mirror::source::{SourceConfig, SourceOptions};
use ekho_mirror::testing::iproute2;
use ekho_mirror::Mirror;
pub use ekho_testkit::*;
use std::time::{Duration, Instant};

/// A namespace `ekho-mir-<tag>-<pid>-<n>` with deterministic IPv6 (no DAD, so no `tentative`
/// flapping), or `None` (with `SKIP:` and the reason printed) when namespaces cannot be created
/// here.
pub fn netns(tag: &str) -> Option<Netns> {
    let ns = match Netns::try_named(&format!("ekho-mir-{tag}")) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return None;
        }
    };
    for s in [
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ] {
        ns.sh(&format!("sysctl -qw {s}"));
    }
    Some(ns)
}

/// A mirror fed by a source running in its own runtime thread.
pub struct Running {
    pub mirror: Mirror,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Starts a source mirroring `ns` with the given event socket buffer (0: default).
pub fn start(ns: &Netns, rcvbuf: usize) -> Running {
    start_with(
        ns,
        rcvbuf,
        SourceOptions {
            proxy_poll: Some(Duration::from_millis(200)),
        },
    )
}

/// As [`start`], with explicit options.
pub fn start_with(ns: &Netns, rcvbuf: usize, opts: SourceOptions) -> Running {
    let mirror = Mirror::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let m = mirror.clone();
    let cfg = SourceConfig {
        netns: Some(ns.path()),
        rcvbuf,
    };
    rt.spawn(async move {
        if let Err(e) = ekho_mirror::source::run_with(m, cfg, opts).await {
            panic!("source failed: {e}");
        }
    });
    let t = Instant::now();
    while !mirror.stats().synced {
        // Generous: a dump takes seconds in the emulated VM when other tests run beside it.
        assert!(t.elapsed() < Duration::from_secs(60), "mirror did not sync");
        std::thread::sleep(Duration::from_millis(10));
    }
    Running {
        mirror,
        rt: Some(rt),
    }
}

/// Compares the mirror with the kernel until they agree; returns the divergences (empty when
/// equal) once `timeout` has passed and two comparisons in a row found the same ones.
///
/// One comparison is not atomic: the kernel's kinds are dumped one `ip`/`bridge` command after
/// the other (a second or more in the emulated VM), then the mirror is read. A change between
/// the two (an FDB entry learned from background traffic, a lifetime expiring) shows in that one
/// comparison only, while a real divergence stays: it is reported when confirmed by the next
/// comparison (or, under continuous churn, after three times `timeout`).
pub fn converge(ns: &Netns, m: &Mirror, timeout: Duration) -> Vec<String> {
    let t = Instant::now();
    let mut last: Option<Vec<String>> = None;
    loop {
        let k = iproute2::kernel_state(Some(&ns.name)).expect("kernel state");
        let mi = iproute2::mirror_state(&m.dump(None));
        let d = iproute2::compare(&k, &mi);
        if d.is_empty() || t.elapsed() > timeout {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
