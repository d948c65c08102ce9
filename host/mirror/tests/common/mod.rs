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
            ..Default::default()
        },
    )
}

/// As [`start`], with explicit options.
pub fn start_with(ns: &Netns, rcvbuf: usize, opts: SourceOptions) -> Running {
    // The source's log, with RUST_LOG set (shown with the test's output).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
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
/// equal) that two comparisons in a row found, once `timeout` has passed and every divergence
/// of the last comparison was in the one before (or after three times `timeout`, the ones both
/// found).
///
/// One comparison is not atomic: the kernel's kinds are dumped one `ip`/`bridge` command after
/// the other (a second or more in the emulated VM, up to 6 s under load), then the mirror is
/// read. A change between the two (an FDB entry learned from background traffic or aged out, a
/// lifetime expiring) shows in that one comparison only, while a real divergence stays in
/// every one: only divergences confirmed by the next comparison are reported.
pub fn converge(ns: &Netns, m: &Mirror, timeout: Duration) -> Vec<String> {
    let t = Instant::now();
    let mut last: Option<Vec<String>> = None;
    loop {
        let k = iproute2::kernel_state(Some(&ns.name)).expect("kernel state");
        let mi = iproute2::mirror_state(&m.dump(None));
        let d = iproute2::compare(&k, &mi);
        if d.is_empty() {
            return d;
        }
        if let Some(prev) = &last {
            let both: Vec<String> = d.iter().filter(|x| prev.contains(x)).cloned().collect();
            if (t.elapsed() > timeout && both.len() == d.len()) || t.elapsed() > timeout * 3 {
                return both;
            }
        }
        last = Some(d);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Device features the 6.18 development kernel lacks and Debian's 6.1 has (docs/kernels.md):
/// each is detected by creating the device in a scratch namespace, not by the kernel's version.
pub const DEVICE_FEATURES: &[(&str, &str)] = &[
    ("bridge VLAN filtering", "type bridge vlan_filtering 1"),
    ("802.1Q VLAN devices", "link probe1 type vlan id 5"),
    ("VRF devices", "type vrf table 10"),
    ("dummy devices", "type dummy"),
    ("bonding devices", "type bond"),
];

/// `Ok(())` when this kernel can create the device of `feature` (a name of
/// [`DEVICE_FEATURES`]), or the reason it cannot, naming the kernel and the feature (for a
/// `SKIP:` line).
pub fn kernel_has(feature: &str) -> Result<(), String> {
    let (_, args) = DEVICE_FEATURES
        .iter()
        .find(|(f, _)| *f == feature)
        .unwrap_or_else(|| panic!("unknown device feature {feature}"));
    let ns = Netns::try_named("ekho-mir-probe")?;
    // The lower device of a VLAN upper (not lo: 8021q refuses it).
    ns.try_ip("link add probe1 type veth peer name probe2")?;
    let r = ns.try_ip(format!("link add probe0 {args}").as_str());
    if r.is_ok() && feature == "bridge VLAN filtering" {
        // Without CONFIG_BRIDGE_VLAN_FILTERING the option is refused; make sure it took.
        let j = ns.ip_json(&["-d", "link", "show", "probe0"]);
        if j[0]["linkinfo"]["info_data"]["vlan_filtering"] != 1 {
            return Err(format!(
                "kernel {}: no {feature} (`ip link add probe0 {args}` created a bridge without it)",
                kernel()
            ));
        }
    }
    r.map(|_| ()).map_err(|e| {
        format!(
            "kernel {}: no {feature} (`ip link add probe0 {args}`: {})",
            kernel(),
            e.trim()
        )
    })
}
