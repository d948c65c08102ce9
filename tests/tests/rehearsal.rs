//! The 1.x contract, rehearsed (see `tests/rehearsal/README.md`): plugins built against the
//! frozen 1.0 API run unchanged on a 1.1 host built from this tree plus the rehearsal patch.

use ekho_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Builds the 1.1 host and recorder from a patched copy of the workspace (once per process);
/// returns the directory holding `ekho` and `libekho_recorder.so`.
fn rehearsal_build() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let ws = workspace();
        let root = ws.join("target").join("rehearsal-1.1");
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
        let patch = ws.join("tests/rehearsal/api-1.1.patch");
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
        assert!(api.contains("version = \"1.1.0\""), "the patch did not make a 1.1 API");
        let target = root.join("target");
        let cargo = |args: &[&str], env: &[(&str, &str)]| {
            let mut c = Command::new(env!("CARGO"));
            c.current_dir(&src).env("CARGO_TARGET_DIR", &target).args(args);
            for (k, v) in env {
                c.env(k, v);
            }
            let st = c.status().expect("running cargo");
            assert!(st.success(), "cargo {args:?} in the 1.1 rehearsal failed");
        };
        // The release procedure: the new minor's layout is written once; 1.0's must not move.
        let _ = std::fs::remove_file(src.join("plugin-api/abi/v1.1.layout"));
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
fn plugins_built_against_1_0_run_unchanged_on_a_1_1_host() {
    let host11 = rehearsal_build();
    let ns = Netns::new();
    ns.ip_batch(
        "link add a0 type veth peer name b0\nlink set a0 up\nlink set b0 up\n\
         addr add 10.1.0.1/24 dev a0\nroute add 10.50.0.0/16 via 10.1.0.2\n\
         route add 10.51.0.0/16 via 10.1.0.2 table 100\n",
    );
    let dir = TempDir::new();
    let pdir = dir.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    // The 1.0 plugins, as built by this tree (the frozen 1.0 API), and the 1.1 recorder.
    for (from, to) in [
        (build().join("libekho_recorder.so"), "librec10.so"),
        (build().join("libhello_vendor.so"), "libhello10.so"),
        (host11.join("libekho_recorder.so"), "librec11.so"),
    ] {
        std::fs::copy(&from, pdir.join(to)).unwrap();
    }
    let ev10 = dir.path().join("rec10.jsonl");
    let ev11 = dir.path().join("rec11.jsonl");
    let cfg = host_config(
        &ns.name,
        &pdir,
        false,
        &format!(
            "[[plugins]]\nname = \"rec10\"\npath = \"librec10.so\"\n[plugins.config]\nevents_path = \"{}\"\n\n\
             [[plugins]]\nname = \"hello10\"\npath = \"libhello10.so\"\n\n\
             [[plugins]]\nname = \"rec11\"\npath = \"librec11.so\"\n[plugins.config]\nevents_path = \"{}\"\n",
            ev10.display(),
            ev11.display()
        ),
    );
    let d = Daemon::start_bin(&host11.join("ekho"), dir.path(), &cfg);

    // How each plugin runs, as `ekho plugins` says.
    let pl = d.cli_json(&["plugins", "--json"]);
    assert_eq!(pl["host_api_version"], "1.1.0", "{pl}");
    let by_name = |n: &str| -> Value {
        pl["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing: {pl}"))
    };
    for n in ["rec10", "hello10"] {
        let p = by_name(n);
        assert_eq!(p["state"], "in_sync", "{p}\n{}", d.log_text());
        assert_eq!(p["api_version"], "1.0.0", "{p}");
        assert_eq!(p["abi"], "converted from 1.0", "{p}");
    }
    let p = by_name("rec11");
    assert_eq!(p["state"], "in_sync", "{p}");
    assert_eq!(
        (&p["api_version"], &p["abi"]),
        (&"1.1.0".into(), &"native".into())
    );

    // Sync: both recorders got the routes; the 1.0 vendor plugin offloaded its IPv4 routes.
    let has_route = |evs: &[Value], dst: &str| {
        evs.iter()
            .any(|e| e["kind"] == "route" && e["object"]["dst"] == dst)
    };
    for path in [&ev10, &ev11] {
        let evs = events_of(path);
        assert!(
            evs.iter().any(|e| e["op"] == "end_sync"),
            "{}",
            path.display()
        );
        assert!(has_route(&evs, "10.50.0.0/16"), "{}", path.display());
    }
    let hello = d.plugin("hello10");
    assert!(hello["offloaded"].as_u64().unwrap() >= 1, "{hello}");

    // Increments, with a link added: the 1.1 recorder gets the new kind, the 1.0 ones never.
    ns.ip_batch("link add c0 type veth peer name d0\nroute add 10.60.0.0/16 via 10.1.0.2\n");
    d.settle();
    let ok = wait_for(Duration::from_secs(10), || {
        let e11 = events_of(&ev11);
        let e10 = events_of(&ev10);
        (has_route(&e11, "10.60.0.0/16")
            && has_route(&e10, "10.60.0.0/16")
            && kinds_seen(&e11).contains("rehearsal"))
        .then_some(())
    });
    let (e10, e11) = (events_of(&ev10), events_of(&ev11));
    assert!(
        ok.is_some(),
        "rec10 {:?}\nrec11 {:?}",
        kinds_seen(&e10),
        kinds_seen(&e11)
    );
    assert!(
        e11.iter()
            .any(|e| e["kind"] == "rehearsal" && e["op"] == "add" && e["object"]["ifname"] == "c0"),
        "the 1.1 plugin sees the new kind"
    );
    assert!(
        !kinds_seen(&e10).contains("rehearsal"),
        "a 1.0 plugin got a kind 1.0 does not have"
    );
    assert!(e10
        .iter()
        .any(|e| e["kind"] == "link" && e["object"]["ifname"] == "c0"));
    let hello = d.plugin("hello10");
    assert_eq!(hello["state"], "in_sync", "{hello}");
    assert_eq!(hello["failed"], 0, "{hello}");

    // The vendor's self-check on the 1.1 host says how it would run.
    let out = Command::new(host11.join("ekho"))
        .args([
            "check-plugin",
            "--json",
            pdir.join("libhello10.so").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!(v["api_version"], "1.0.0");
    assert_eq!(v["abi"], "converted from 1.0", "{v}");
}
