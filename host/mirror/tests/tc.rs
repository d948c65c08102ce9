//! tc differential test: a seeded random sequence of `tc`/`ip` steps in a private netns (root
//! qdiscs, htb classes, clsact/ingress, shared blocks, u32 filters with random keys and mirred
//! actions, chains, standalone actions, deletes of filters, qdiscs and devices); after each, once
//! quiet, the mirror's tc state must equal `tc -j -d` (`ekho_mirror::testing::tc`).
//!
//! Rerun a case with `EKHO_MIRROR_SEED=<seed> EKHO_TC_STEPS=<n> cargo test -p ekho-mirror
//! --test tc -- --nocapture`.

mod common;
use common::*;
use ekho_mirror::testing::tc as oracle;
use ekho_plugin_api::{Object, ObjectKind};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn names(m: &ekho_mirror::Mirror) -> BTreeMap<u32, String> {
    m.dump(Some(ObjectKind::Link))
        .into_iter()
        .filter_map(|o| match o {
            Object::Link(l) => Some((l.ifindex, l.ifname.to_string())),
            _ => None,
        })
        .collect()
}

/// Compares until equal; the divergences once `timeout` passed and two comparisons agree.
fn converge(ns: &Netns, m: &ekho_mirror::Mirror, timeout: Duration) -> Vec<String> {
    let t = Instant::now();
    let mut last = None;
    loop {
        let k = oracle::kernel(Some(&ns.name)).expect("tc state");
        let mi = oracle::mirror(&m.tc(), &names(m));
        let d = oracle::compare(&k, &mi);
        if d.is_empty() || (t.elapsed() > timeout && last.as_ref() == Some(&d)) {
            return d;
        }
        last = Some(d);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A shell command line in `ns`: stdout, or stderr on failure.
fn try_sh(ns: &Netns, cmd: &str) -> Result<String, String> {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", cmd])
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Whether the kernel has action `kind` (`tc actions add` in a scratch namespace).
fn has_action(kind: &str, args: &str) -> Result<(), String> {
    let ns = Netns::try_named("ekho-mir-tcprobe")?;
    try_sh(&ns, &format!("tc actions add action {kind} {args}"))
        .map(|_| ())
        .map_err(|e| format!("kernel {}: no tc action {kind} ({})", kernel(), e.trim()))
}

/// Whether the kernel has the flower classifier (a filter added in a scratch namespace).
fn has_flower() -> Result<(), String> {
    let ns = Netns::try_named("ekho-mir-tcprobe")?;
    try_sh(
        &ns,
        "ip link add x0 type veth peer name x1 && tc qdisc add dev x0 clsact && \
         tc filter add dev x0 ingress protocol ip flower dst_ip 10.0.0.1",
    )
    .map(|_| ())
    .map_err(|e| format!("kernel {}: no tc flower ({})", kernel(), e.trim()))
}

fn add_dev(ns: &Netns, i: u64) {
    ns.sh(&format!(
        "ip link add d{i} type veth peer name p{i} && ip link set d{i} up && ip link set p{i} up"
    ));
}

#[test]
fn random_tc_steps_match_tc() {
    let Some(ns) = netns("tc") else { return };
    let seed: u64 = std::env::var("EKHO_MIRROR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let steps: usize = std::env::var("EKHO_TC_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80);
    eprintln!("seed {seed}, {steps} steps");
    let gact = match has_action("gact", "drop") {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIP: goto chain and gact steps: {e}");
            false
        }
    };
    // The typed actions (netlink/tc_act) and the classifiers flower and matchall, where the
    // kernel has them (6.1: yes; 6.18 here: no).
    let typed = gact
        && match has_action("vlan", "pop").and_then(|()| has_flower()) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("SKIP: flower, matchall and typed-action steps: {e}");
                false
            }
        };
    // mpls and sample (typed later; sample needs psample).
    let mpls_sample = typed
        && match has_action("mpls", "dec_ttl")
            .and_then(|()| has_action("sample", "rate 10 group 1"))
        {
            Ok(()) => true,
            Err(e) => {
                eprintln!("SKIP: mpls and sample steps: {e}");
                false
            }
        };
    for i in 0..3 {
        add_dev(&ns, i);
    }
    let r = start(&ns, 0);
    let mut rng = Rng(seed);
    let mut done = Vec::new();
    for step in 0..steps {
        let d = rng.below(3);
        let p = rng.below(3);
        let pref = 1 + rng.below(4);
        let block = 7 + rng.below(2);
        let hook = match rng.below(5) {
            0 => format!("dev d{d} ingress"),
            1 => format!("dev d{d} egress"),
            2 => format!("dev d{d} parent 1:"),
            3 => format!("dev d{d} parent 1:1{}", rng.below(3)),
            _ => format!("block {block}"),
        };
        let chain = if rng.below(3) == 0 { rng.below(3) } else { 0 };
        let kinds = if mpls_sample {
            14
        } else if typed {
            12
        } else if gact {
            5
        } else {
            4
        };
        let action = match rng.below(kinds) {
            0 => String::new(),
            1 => format!(" action mirred egress redirect dev p{p}"),
            2 => format!(" action mirred index {}", 20 + rng.below(3)),
            3 => format!(
                " action mirred egress mirror dev p{p} index {}",
                30 + rng.below(3)
            ),
            4 => format!(" action goto chain {}", 1 + rng.below(2)),
            5 => format!(
                " action vlan push id {} protocol {}",
                1 + rng.below(4094),
                ["802.1Q", "802.1ad"][rng.below(2) as usize]
            ),
            6 => " action vlan pop action gact pass random determ drop 3".into(),
            7 => format!(" action skbedit mark {} pipe", rng.below(100)),
            8 => format!(
                " action police rate {}mbit burst 10k conform-exceed drop/pipe",
                1 + rng.below(9)
            ),
            9 => " action csum iph and tcp".into(),
            10 => format!(" action pedit ex munge ip ttl set {}", 1 + rng.below(255)),
            11 => format!(" action ct zone {}", rng.below(4)),
            12 => match rng.below(3) {
                0 => format!(
                    " action mpls push label {} tc 3 ttl 64",
                    16 + rng.below(1000)
                ),
                1 => format!(" action mpls mod label {}", 16 + rng.below(1000)),
                _ => " action mpls dec_ttl pipe".into(),
            },
            _ => format!(
                " action sample rate {} group {}{}",
                1 + rng.below(1000),
                1 + rng.below(8),
                ["", " trunc 128"][rng.below(2) as usize]
            ),
        };
        let classifier = match rng.below(if typed { 4 } else { 1 }) {
            0 | 1 => format!(
                "protocol {} u32 match ip dst 10.{}.{}.{}/32",
                ["ip", "all"][rng.below(2) as usize],
                rng.below(3),
                rng.below(256),
                rng.below(256)
            ),
            2 => format!(
                "protocol ip flower dst_ip 10.{}.{}.{}",
                rng.below(3),
                rng.below(256),
                rng.below(256)
            ),
            _ => "protocol all matchall".into(),
        };
        let cmd = match rng.below(16) {
            0 => format!(
                "tc qdisc replace dev d{d} root handle 1: {}",
                ["htb default 10", "tbf rate 1mbit burst 10k latency 10ms", "pfifo"]
                    [rng.below(3) as usize]
            ),
            1 => format!(
                "tc class replace dev d{d} parent 1: classid 1:1{} htb rate {}mbit",
                rng.below(3),
                1 + rng.below(9)
            ),
            2 => format!("tc qdisc add dev d{d} clsact"),
            3 => format!("tc qdisc add dev d{d} ingress_block {block} clsact"),
            4 => format!("tc qdisc add dev d{d} ingress"),
            5..=8 => format!("tc filter add {hook} pref {pref} chain {chain} {classifier}{action}"),
            9 => format!("tc chain add {hook} chain {}", 1 + rng.below(3)),
            10 => format!("tc filter del {hook} pref {pref}"),
            11 => format!(
                "tc qdisc del dev d{d} {}",
                ["root", "clsact", "ingress"][rng.below(3) as usize]
            ),
            12 => format!("ip link del d{d} && ip link add d{d} type veth peer name p{d} && ip link set d{d} up && ip link set p{d} up"),
            13 => format!(
                "tc actions add action mirred egress redirect dev p{p} index {}",
                20 + rng.below(3)
            ),
            14 => format!("tc actions del action mirred index {}", 20 + rng.below(3)),
            _ => format!("tc filter del {hook}"),
        };
        // Many combinations are refused (no such parent, duplicate): part of the test.
        let ok = try_sh(&ns, &cmd).is_ok();
        done.push(format!(
            "{step}: {cmd}{}",
            if ok { "" } else { " (refused)" }
        ));
        let diff = converge(&ns, &r.mirror, Duration::from_secs(3));
        assert!(
            diff.is_empty(),
            "seed {seed}, after step {step} `{cmd}`: mirror differs from tc:\n{}\nsteps:\n{}\nkernel:\n{}",
            diff.join("\n"),
            done.join("\n"),
            oracle::kernel(Some(&ns.name)).unwrap_or_default().join("\n")
        );
    }
    // The sequence did something and reached a state worth comparing.
    let refused = done.iter().filter(|l| l.ends_with("(refused)")).count();
    eprintln!("{} steps taken, {refused} refused by tc", done.len());
    // What of the later typed kinds the sequence ran (steps tc took).
    for k in ["mpls", "sample"] {
        let n = done
            .iter()
            .filter(|l| !l.ends_with("(refused)") && l.contains(&format!(" action {k} ")))
            .count();
        eprintln!("steps with action {k} taken: {n}");
    }
    // A random sequence draws each of the later typed kinds seldom (a filter step whose hook
    // exists, then that action: about 1 in 60): every form of them once more, on the state the
    // sequence left, each step one tc must take, the mirror compared after each.
    if mpls_sample {
        let mut tail = vec![
            "ip link del d0; ip link add d0 type veth peer name p0 && ip link set d0 up && ip link set p0 up && tc qdisc add dev d0 clsact".to_string(),
        ];
        for (i, action) in [
            "mpls push label 17 tc 3 ttl 64",
            "mpls push protocol mpls_mc label 1048575 bos 1",
            "mpls mod label 4000 tc 7 pipe",
            "mpls dec_ttl pipe",
            "mpls pop protocol ipv4",
            "sample rate 100 group 5",
            "sample rate 3 group 1 trunc 128 continue",
        ]
        .iter()
        .enumerate()
        {
            let chain = if i % 2 == 0 { 0 } else { 2 };
            tail.push(format!(
                "tc filter add dev d0 ingress pref {} chain {chain} protocol all matchall action {action}",
                50 + i
            ));
        }
        let connmark = has_action("connmark", "zone 3");
        match &connmark {
            Ok(()) => tail.push(
                "tc filter add dev d0 egress pref 60 protocol ip flower dst_ip 10.1.2.3 action connmark zone 3 pipe action mpls push label 99".into(),
            ),
            Err(e) => eprintln!("SKIP: the connmark step: {e}"),
        }
        tail.push("tc filter del dev d0 ingress pref 52".into());
        for (step, cmd) in tail.iter().enumerate() {
            if let Err(e) = try_sh(&ns, cmd) {
                panic!("tail step {step} `{cmd}` refused by tc: {e}");
            }
            let diff = converge(&ns, &r.mirror, Duration::from_secs(3));
            assert!(
                diff.is_empty(),
                "seed {seed}, after tail step {step} `{cmd}`: mirror differs from tc:\n{}\nkernel:\n{}",
                diff.join("\n"),
                oracle::kernel(Some(&ns.name)).unwrap_or_default().join("\n")
            );
        }
        let k = oracle::kernel(Some(&ns.name)).unwrap();
        let kinds: &[&str] = if connmark.is_ok() {
            &["mpls", "sample", "connmark"]
        } else {
            &["mpls", "sample"]
        };
        for kind in kinds {
            let n = k
                .iter()
                .filter(|l| l.starts_with(&format!("action {kind} ")))
                .count();
            eprintln!("{kind} actions compared in the final state: {n}");
            assert!(n > 0, "no {kind} action in the final state: {k:?}");
        }
    }
    if std::env::var_os("EKHO_TC_VERBOSE").is_some() {
        eprintln!("{}", done.join("\n"));
    }
    let k = oracle::kernel(Some(&ns.name)).unwrap();
    eprintln!("final state:\n{}", k.join("\n"));
    assert!(refused < done.len(), "every step refused");
    assert!(k.iter().any(|l| l.starts_with("qdisc")), "{k:?}");
}
