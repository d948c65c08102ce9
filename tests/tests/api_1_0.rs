//! The 1.x contract for real: plugins built against the released API 1.0 (the recorder and
//! `examples/hello-vendor` of the last 1.0 commit, built from `git archive`) load on this host
//! (the crate's own API version) `converted from 1.0`, sync, offload, and never see the kinds
//! added since (nftables chains, 1.1), which this tree's recorder does see. The same for the
//! last 1.3 commit's: `converted from 1.3`, tc filters included, their outcomes converted back
//! (1.3 has no `unsupported` with a reason).

use ekho_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The last commit of the API at 1.0.0 (main is never rewritten, so it stays reachable).
const API_1_0_COMMIT: &str = "6695f9452fefd6881be6f99712cc64e72e268cbf";

/// The last commit of the API at 1.3.0.
const API_1_3_COMMIT: &str = "f91ff25620923193b9b0c456fa63532aa274d7f6";

/// Builds the 1.0 recorder and hello-vendor (once per process); their directory, or why not.
fn build_1_0() -> Result<&'static Path, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| build_released(API_1_0_COMMIT, "1.0"))
        .as_deref()
        .map_err(Clone::clone)
}

/// Builds the 1.3 recorder and hello-vendor (once per process).
fn build_1_3() -> Result<&'static Path, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| build_released(API_1_3_COMMIT, "1.3"))
        .as_deref()
        .map_err(Clone::clone)
}

/// Builds the recorder and hello-vendor of `commit`, whose API is `minor`.0, from `git
/// archive`; their directory, or why not.
fn build_released(commit: &str, minor: &str) -> Result<PathBuf, String> {
    {
        let ws = workspace();
        let have = Command::new("git")
            .current_dir(&ws)
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            return Err(format!(
                "commit {commit} (API {minor}) is not in this clone (shallow?): fetch the history"
            ));
        }
        let root = ws.join("target").join(format!("api-{minor}"));
        let src = root.join("src");
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).unwrap();
        let archive = Command::new("git")
            .current_dir(&ws)
            .args([
                "archive",
                commit,
                "Cargo.toml",
                "Cargo.lock",
                "plugin-api",
                "plugins/recorder",
                "examples/hello-vendor",
            ])
            .output()
            .expect("git archive");
        assert!(
            archive.status.success(),
            "{}",
            String::from_utf8_lossy(&archive.stderr)
        );
        let mut tar = Command::new("tar")
            .current_dir(&src)
            .args(["-x"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("tar");
        use std::io::Write;
        tar.stdin
            .take()
            .unwrap()
            .write_all(&archive.stdout)
            .unwrap();
        assert!(tar.wait().unwrap().success());
        // A workspace of just these three (the others are not in the archive).
        let manifest = std::fs::read_to_string(src.join("Cargo.toml")).unwrap();
        let rest = &manifest[manifest.find("[workspace.package]").unwrap()..];
        std::fs::write(
            src.join("Cargo.toml"),
            format!(
                "[workspace]\nresolver = \"2\"\nmembers = [\"plugin-api\", \"plugins/recorder\", \"examples/hello-vendor\"]\n{rest}"
            ),
        )
        .unwrap();
        let api = std::fs::read_to_string(src.join("plugin-api/Cargo.toml")).unwrap();
        assert!(
            api.contains(&format!("version = \"{minor}.0\"")),
            "{commit} is not API {minor}.0"
        );
        let target = root.join("target");
        let st = Command::new(env!("CARGO"))
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--offline",
                "-p",
                "ekho-recorder",
                "-p",
                "hello-vendor",
            ])
            .status()
            .expect("cargo");
        assert!(st.success(), "building the {minor} plugins failed");
        Ok(target.join("debug"))
    }
}

/// The two tests' setting: a namespace with a veth pair (a0 10.1.0.1/24, a route via its peer's
/// side) and a plugin dir holding `libs` (the built library, its file name there).
fn topology(libs: &[(PathBuf, &str)]) -> (Netns, TempDir, PathBuf) {
    let ns = Netns::new();
    ns.ip_batch(
        "link add a0 type veth peer name b0\nlink set a0 up\nlink set b0 up\n\
         addr add 10.1.0.1/24 dev a0\nroute add 10.50.0.0/16 via 10.1.0.2\n",
    );
    let dir = TempDir::new();
    let pdir = dir.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    for (from, to) in libs {
        std::fs::copy(from, pdir.join(to)).unwrap();
    }
    (ns, dir, pdir)
}

#[test]
fn plugins_built_against_1_0_run_converted_on_this_host() {
    if let Some(r) = needs_root("network namespaces") {
        say_skip(&r);
        return;
    }
    let dir10 = match build_1_0() {
        Ok(d) => d,
        Err(r) => {
            say_skip(&r);
            return;
        }
    };
    let nft = missing_tools(&["nft"], "nftables").is_none();
    let (ns, dir, pdir) = topology(&[
        (dir10.join("libekho_recorder.so"), "librec10.so"),
        (dir10.join("libhello_vendor.so"), "libhello10.so"),
        (build().join("libekho_recorder.so"), "librec11.so"),
    ]);
    let (ev10, ev11) = (
        dir.path().join("rec10.jsonl"),
        dir.path().join("rec11.jsonl"),
    );
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
    let d = Daemon::start(dir.path(), &cfg);
    let pl = d.cli_json(&["plugins", "--json"]);
    let host_api = ekho_plugin_api::version::API_VERSION;
    assert_eq!(pl["host_api_version"], host_api, "{pl}");
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
    assert_eq!(
        (&p["api_version"], &p["abi"]),
        (&host_api.into(), &"native".into())
    );
    let has_route = |evs: &[Value], dst: &str| {
        evs.iter()
            .any(|e| e["kind"] == "route" && e["object"]["dst"] == dst)
    };
    for path in [&ev10, &ev11] {
        let evs = read_events(path);
        assert!(
            evs.iter().any(|e| e["op"] == "end_sync"),
            "{}",
            path.display()
        );
        assert!(has_route(&evs, "10.50.0.0/16"), "{}", path.display());
    }
    let hello = d.plugin("hello10");
    assert!(hello["offloaded"].as_u64().unwrap() >= 1, "{hello}");

    // A 1.1 kind: an nftables base chain reaches the 1.1 recorder, never the 1.0 ones; a
    // route added meanwhile reaches both.
    if nft {
        ns.run(&["nft", "add", "table", "ip", "t"]);
        ns.run(&[
            "nft",
            "add chain ip t fw { type filter hook forward priority 0 ; policy drop ; }",
        ]);
    }
    ns.ip("route add 10.60.0.0/16 via 10.1.0.2");
    d.settle();
    let ok = wait_for(Duration::from_secs(10), || {
        let (e10, e11) = (read_events(&ev10), read_events(&ev11));
        (has_route(&e10, "10.60.0.0/16")
            && has_route(&e11, "10.60.0.0/16")
            && (!nft || e11.iter().any(|e| e["kind"] == "nft_chain")))
        .then_some(())
    });
    let kinds = |p: &Path| -> std::collections::BTreeSet<String> {
        read_events(p)
            .iter()
            .filter_map(|e| e["kind"].as_str().map(String::from))
            .collect()
    };
    assert!(
        ok.is_some(),
        "rec10 {:?}\nrec11 {:?}",
        kinds(&ev10),
        kinds(&ev11)
    );
    if nft {
        let e11 = read_events(&ev11);
        assert!(e11.iter().any(|e| e["kind"] == "nft_chain"
            && e["object"]["name"] == "fw"
            && e["object"]["policy"] == "drop"));
    } else {
        say_skip("nft missing (apt-get install nftables): the 1.1 kind part is not checked");
    }
    assert!(
        !kinds(&ev10).iter().any(|k| k.starts_with("nft_")),
        "a 1.0 plugin got a kind 1.0 does not have: {:?}",
        kinds(&ev10)
    );
    let hello = d.plugin("hello10");
    assert_eq!(
        (&hello["state"], &hello["failed"]),
        (&"in_sync".into(), &0.into()),
        "{hello}"
    );

    // The vendor's self-check on this host says how it would run.
    let out = Command::new(ekho_bin())
        .args([
            "check-plugin",
            "--json",
            pdir.join("libhello10.so").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!(
        (&v["api_version"], &v["abi"]),
        (&"1.0.0".into(), &"converted from 1.0".into()),
        "{v}"
    );
}

#[test]
fn plugins_built_against_1_3_run_converted_on_this_host() {
    if let Some(r) = needs_root("network namespaces").or_else(|| missing_tools(&["tc"], "iproute2"))
    {
        say_skip(&r);
        return;
    }
    let dir13 = match build_1_3() {
        Ok(d) => d,
        Err(r) => {
            say_skip(&r);
            return;
        }
    };
    let (ns, dir, pdir) = topology(&[
        (dir13.join("libekho_recorder.so"), "librec13.so"),
        (dir13.join("libhello_vendor.so"), "libhello13.so"),
    ]);
    let ev13 = dir.path().join("rec13.jsonl");
    let cfg = host_config(
        &ns.name,
        &pdir,
        false,
        &format!(
            "[[plugins]]\nname = \"rec13\"\npath = \"librec13.so\"\n[plugins.config]\nevents_path = \"{}\"\n\n\
             [[plugins]]\nname = \"hello13\"\npath = \"libhello13.so\"\n",
            ev13.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    let pl = d.cli_json(&["plugins", "--json"]);
    for n in ["rec13", "hello13"] {
        let p = pl["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing: {pl}"));
        assert_eq!(p["state"], "in_sync", "{p}\n{}", d.log_text());
        assert_eq!(
            (&p["api_version"], &p["abi"]),
            (&"1.3.0".into(), &"converted from 1.3".into()),
            "{p}"
        );
    }
    // A 1.3 kind reaches the 1.3 recorder (through the frozen 1.3 vtable), and its outcome
    // comes back as this host's.
    ns.run("tc qdisc add dev a0 clsact");
    ns.run(
        "tc filter add dev a0 ingress pref 1 protocol ip u32 match ip dst 10.9.0.1/32 \
         action mirred egress redirect dev b0",
    );
    ns.ip("route add 10.60.0.0/16 via 10.1.0.2");
    d.settle();
    let ok = wait_for(Duration::from_secs(10), || {
        let e = read_events(&ev13);
        (e.iter().any(|e| e["kind"] == "filter")
            && e.iter()
                .any(|e| e["kind"] == "route" && e["object"]["dst"] == "10.60.0.0/16"))
        .then_some(())
    });
    assert!(ok.is_some(), "{:?}", read_events(&ev13));
    let rec = d.plugin("rec13");
    assert_eq!(rec["outcomes"]["filters"]["offloaded"], 1, "{rec}");
    assert_eq!(rec["failed"], 0, "{rec}");
    let text = String::from_utf8(d.cli(&["dump", "filters"]).stdout).unwrap();
    assert!(text.contains("\toffload: offloaded [rec13]"), "{text}");
    let hello = d.plugin("hello13");
    assert!(hello["offloaded"].as_u64().unwrap() >= 2, "{hello}");
    assert_eq!(hello["failed"], 0, "{hello}");
}
