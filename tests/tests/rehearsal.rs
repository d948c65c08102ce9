//! The 1.x contract, rehearsed (see `tests/rehearsal/README.md`): plugins built against this
//! tree's API (1.4) run unchanged on a 1.5 host built from this tree plus the rehearsal patch.

use ekho_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Builds the 1.5 host and recorder from a patched copy of the workspace (once per process);
/// returns the directory holding `ekho` and `libekho_recorder.so`.
fn rehearsal_build() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let ws = workspace();
        let root = ws.join("target").join("rehearsal-1.5");
        let src = root.join("src");
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).unwrap();
        for entry in [
            "Cargo.toml",
            "Cargo.lock",
            "plugin-api",
            "host",
            "plugins",
            "examples",
            "tests",
        ] {
            sh(
                "cp",
                &[
                    "-r",
                    ws.join(entry).to_str().unwrap(),
                    src.to_str().unwrap(),
                ],
            );
        }
        let patch = ws.join("tests/rehearsal/api-1.5.patch");
        // The copy lies inside this work tree (target/): without a ceiling, git would find the
        // enclosing repository and silently skip every path outside the current directory.
        let out = Command::new("git")
            .current_dir(&src)
            .env("GIT_CEILING_DIRECTORIES", &root)
            .args(["apply", "--whitespace=nowarn", patch.to_str().unwrap()])
            .output()
            .expect("running git apply");
        assert!(
            out.status.success(),
            "the rehearsal patch no longer applies to this tree: refresh it (tests/rehearsal/README.md says how):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let api = std::fs::read_to_string(src.join("plugin-api/Cargo.toml")).unwrap();
        assert!(api.contains("version = \"1.5.0\""), "the patch did not make a 1.5 API");
        let target = root.join("target");
        let cargo = |args: &[&str], env: &[(&str, &str)]| {
            let mut c = Command::new(env!("CARGO"));
            c.current_dir(&src).env("CARGO_TARGET_DIR", &target).args(args);
            for (k, v) in env {
                c.env(k, v);
            }
            let st = c.status().expect("running cargo");
            assert!(st.success(), "cargo {args:?} in the 1.5 rehearsal failed");
        };
        // The release procedure: the new minor's layout is written once; 1.0's to 1.4's must
        // not move.
        let _ = std::fs::remove_file(src.join("plugin-api/abi/v1.5.layout"));
        cargo(
            &["test", "--offline", "-p", "ekho-plugin-api", "--test", "abi_freeze"],
            &[("EKHO_ABI_BLESS", "1")],
        );
        cargo(
            &["test", "--offline", "-p", "ekho-plugin-api", "--test", "abi_freeze"],
            &[],
        );
        cargo(
            &["build", "--offline", "-p", "ekho", "-p", "ekho-recorder"],
            &[],
        );
        target.join("debug")
    })
}

fn events_of(path: &Path) -> Vec<Value> {
    read_events(path)
}

fn kinds_seen(events: &[Value]) -> std::collections::BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect()
}

#[test]
fn plugins_built_against_1_4_run_unchanged_on_a_1_5_host() {
    let host15 = rehearsal_build();
    let ns = Netns::new();
    ns.ip_batch(
        "link add a0 type veth peer name b0\nlink set a0 up\nlink set b0 up\n\
         addr add 10.1.0.1/24 dev a0\nroute add 10.50.0.0/16 via 10.1.0.2\n\
         route add 10.51.0.0/16 via 10.1.0.2 table 100\n",
    );
    let dir = TempDir::new();
    let pdir = dir.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    // The 1.4 plugins, as built by this tree (the frozen 1.4 API), and the 1.5 recorder.
    for (from, to) in [
        (build().join("libekho_recorder.so"), "librec14.so"),
        (build().join("libhello_vendor.so"), "libhello14.so"),
        (host15.join("libekho_recorder.so"), "librec15.so"),
    ] {
        std::fs::copy(&from, pdir.join(to)).unwrap();
    }
    let ev14 = dir.path().join("rec14.jsonl");
    let release = dir.path().join("release-flows");
    let ev15 = dir.path().join("rec15.jsonl");
    let cfg = host_config(
        &ns.name,
        &pdir,
        false,
        &format!(
            "[[plugins]]\nname = \"rec14\"\npath = \"librec14.so\"\n[plugins.config]\nevents_path = \"{}\"\nrelease_flows_path = \"{}\"\nunsupported_routes = [\"10.50.0.0/16\"]\n\n\
             [[plugins]]\nname = \"hello14\"\npath = \"libhello14.so\"\n\n\
             [[plugins]]\nname = \"rec15\"\npath = \"librec15.so\"\n[plugins.config]\nevents_path = \"{}\"\n",
            ev14.display(),
            release.display(),
            ev15.display()
        ),
    );
    let d = Daemon::start_bin(&host15.join("ekho"), dir.path(), &cfg);

    // How each plugin runs, as `ekho plugins` says.
    let pl = d.cli_json(&["plugins", "--json"]);
    assert_eq!(pl["host_api_version"], "1.5.0", "{pl}");
    let by_name = |n: &str| -> Value {
        pl["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing: {pl}"))
    };
    for n in ["rec14", "hello14"] {
        let p = by_name(n);
        assert_eq!(p["state"], "in_sync", "{p}\n{}", d.log_text());
        assert_eq!(p["api_version"], "1.4.0", "{p}");
        assert_eq!(p["abi"], "converted from 1.4", "{p}");
    }
    let p = by_name("rec15");
    assert_eq!(p["state"], "in_sync", "{p}");
    assert_eq!(
        (&p["api_version"], &p["abi"]),
        (&"1.5.0".into(), &"native".into())
    );

    // Sync: both recorders got the routes; the 1.4 vendor plugin offloaded its IPv4 routes.
    let has_route = |evs: &[Value], dst: &str| {
        evs.iter()
            .any(|e| e["kind"] == "route" && e["object"]["dst"] == dst)
    };
    for path in [&ev14, &ev15] {
        let evs = events_of(path);
        assert!(
            evs.iter().any(|e| e["op"] == "end_sync"),
            "{}",
            path.display()
        );
        assert!(has_route(&evs, "10.50.0.0/16"), "{}", path.display());
    }
    let hello = d.plugin("hello14");
    assert!(hello["offloaded"].as_u64().unwrap() >= 1, "{hello}");
    // A 1.4 outcome through the 1.4 binding: the recorder's unsupported with its reason.
    let rec = d.plugin("rec14");
    let why = rec["recent_unsupported"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["object"]["dst"] == "10.50.0.0/16")
        .map(|f| f["reason"].clone());
    assert_eq!(
        why,
        Some("recorder: 10.50.0.0/16 is in unsupported_routes".into()),
        "{rec}"
    );

    // Increments, with a link added: the 1.5 recorder gets the new kind, the 1.4 ones never.
    ns.ip_batch("link add c0 type veth peer name d0\nroute add 10.60.0.0/16 via 10.1.0.2\n");
    d.settle();
    let ok = wait_for(Duration::from_secs(10), || {
        let e15 = events_of(&ev15);
        let e14 = events_of(&ev14);
        (has_route(&e15, "10.60.0.0/16")
            && has_route(&e14, "10.60.0.0/16")
            && kinds_seen(&e15).contains("rehearsal"))
        .then_some(())
    });
    let (e14, e15) = (events_of(&ev14), events_of(&ev15));
    assert!(
        ok.is_some(),
        "rec14 {:?}\nrec14 {:?}",
        kinds_seen(&e14),
        kinds_seen(&e15)
    );
    assert!(
        e15.iter()
            .any(|e| e["kind"] == "rehearsal" && e["op"] == "add" && e["object"]["ifname"] == "c0"),
        "the 1.5 plugin sees the new kind"
    );
    assert!(
        !kinds_seen(&e14).contains("rehearsal"),
        "a 1.4 plugin got a kind 1.4 does not have"
    );
    assert!(e14
        .iter()
        .any(|e| e["kind"] == "link" && e["object"]["ifname"] == "c0"));
    let hello = d.plugin("hello14");
    assert_eq!(hello["state"], "in_sync", "{hello}");
    assert_eq!(hello["failed"], 0, "{hello}");

    // Older kinds still reach the 1.4 recorder through the conversion (nftables chains, 1.1).
    if missing_tools(&["nft"], "nftables").is_none() {
        ns.run(&["nft", "add", "table", "ip", "t"]);
        ns.run(&[
            "nft",
            "add chain ip t pre { type filter hook prerouting priority 0 ; }",
        ]);
        let seen = wait_for(Duration::from_secs(10), || {
            let e = events_of(&ev14);
            e.iter()
                .any(|e| e["kind"] == "nft_chain" && e["object"]["name"] == "pre")
                .then_some(())
        });
        assert!(seen.is_some(), "rec14 {:?}", kinds_seen(&events_of(&ev14)));
    }

    // A 1.2 kind through the conversion: a conntrack flow reaches the 1.4 recorder, and its
    // hand-back (a 1.4 request) reaches the 1.5 host.
    if missing_tools(
        &["nft", "conntrack", "python3"],
        "nftables conntrack python3",
    )
    .is_none()
    {
        ns.run(&["nft", "add", "table", "inet", "track"]);
        ns.run(&[
            "nft",
            "add chain inet track out { type filter hook output priority 0 ; }",
        ]);
        ns.run(&["nft", "add rule inet track out ct state new counter"]);
        let py = "import socket, time\n\
                  l = socket.socket(); l.bind(('127.0.0.1', 5201)); l.listen(1)\n\
                  c = socket.create_connection(('127.0.0.1', 5201)); s, _ = l.accept()\n\
                  c.send(b'x'); s.recv(1); s.send(b'y'); c.recv(1)\n\
                  time.sleep(60)\n";
        let mut held = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", py])
            .spawn()
            .unwrap();
        let flow = |op: &str| {
            events_of(&ev14)
                .iter()
                .rev()
                .find(|e| e["kind"] == "flow")
                .is_some_and(|e| e["op"] == op && e["object"]["original"]["dport"] == 5201)
        };
        let seen = wait_for(Duration::from_secs(10), || flow("add").then_some(()));
        std::fs::write(&release, b"").unwrap();
        let back =
            seen.and_then(|()| wait_for(Duration::from_secs(10), || flow("remove").then_some(())));
        let _ = held.kill();
        let _ = held.wait();
        assert!(
            seen.is_some(),
            "rec14 {:?}\n{}",
            kinds_seen(&events_of(&ev14)),
            d.log_text()
        );
        assert!(
            back.is_some(),
            "the 1.4 hand-back did not reach the host\n{}",
            d.log_text()
        );
        assert_eq!(d.status()["conntrack"]["released"], 1);
    }

    // The vendor's self-check on the 1.5 host says how it would run.
    let out = Command::new(host15.join("ekho"))
        .args([
            "check-plugin",
            "--json",
            pdir.join("libhello14.so").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!(v["api_version"], "1.4.0");
    assert_eq!(v["abi"], "converted from 1.4", "{v}");
}
