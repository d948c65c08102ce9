//! Trusted plugin loading through the real daemon: files and directories others may write,
//! files of another owner, links to such files, unresolved symbols and a misspelled name among
//! other `.so` files are refused before any of their code runs, each with a reason naming the
//! path and the fix; `ekho check-plugin` says the same; the rest of the plugins run.

use ekho_plugin_api::version::API_VERSION;
use ekho_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A shared library built with gcc from C source `src`.
fn gcc_so(dir: &Path, out: &Path, src: &str) {
    let c = dir.join(format!("{}.c", out.file_stem().unwrap().to_string_lossy()));
    std::fs::write(&c, src).unwrap();
    sh(
        "gcc",
        &[
            "-shared",
            "-fPIC",
            "-o",
            out.to_str().unwrap(),
            c.to_str().unwrap(),
        ],
    );
}

#[test]
fn untrusted_plugins_are_refused_before_any_of_their_code_runs() {
    if let Some(r) = needs_root("chown and namespaces").or_else(|| missing_tools(&["gcc"], "gcc")) {
        say_skip(&r);
        return;
    }
    let ns = Netns::new();
    let dir = TempDir::new();
    let pdir = dir.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    chmod(dir.path(), 0o755);
    chmod(&pdir, 0o755);
    let recorder = build().join("libekho_recorder.so");
    let copy = |to: &Path| {
        std::fs::copy(&recorder, to).unwrap();
        chmod(to, 0o644);
    };
    // A constructor that leaves a mark: proof of whether a file was loaded.
    let marker = dir.path().join("constructor-ran");
    let ctor = |file: &str, extra: &str| {
        gcc_so(
            dir.path(),
            &pdir.join(file),
            &format!(
                "#include <stdio.h>\n\
                 const char EKHO_PLUGIN_API_VERSION[32] = \"{API_VERSION}\";\n\
                 const unsigned char EKHO_PLUGIN_PANIC_UNWIND = 1;\n\
                 __attribute__((constructor)) static void mark(void) {{\n\
                   FILE *f = fopen(\"{}\", \"a\"); if (f) {{ fputs(\"{file}\\n\", f); fclose(f); }}\n\
                 }}\n{extra}",
                marker.display()
            ),
        )
    };
    // World-writable file.
    copy(&pdir.join("libww.so"));
    chmod(&pdir.join("libww.so"), 0o646);
    // Owned by another user.
    copy(&pdir.join("libother.so"));
    sh(
        "chown",
        &["65534:65534", pdir.join("libother.so").to_str().unwrap()],
    );
    // In a world-writable directory (no sticky bit).
    let wwdir = dir.path().join("open");
    std::fs::create_dir(&wwdir).unwrap();
    chmod(&wwdir, 0o777);
    copy(&wwdir.join("librec.so"));
    // A link in a good directory to a world-writable file in a good directory.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    chmod(&elsewhere, 0o755);
    copy(&elsewhere.join("librec.so"));
    chmod(&elsewhere.join("librec.so"), 0o666);
    std::os::unix::fs::symlink(elsewhere.join("librec.so"), pdir.join("liblink.so")).unwrap();
    // Unresolved symbol: every symbol is bound at load, so this is refused at dlopen (bound
    // lazily it would load and kill the daemon at the first call).
    ctor(
        "libunresolved.so",
        "extern int ekho_test_absent_function(void);\nint use_it(void) { return ekho_test_absent_function(); }\n",
    );
    // Other .so files beside a misspelled name: none of them may be loaded by the scan.
    ctor("libbystander.so", "");
    copy(&pdir.join("libekho_recorder.so"));
    // A vendor's file of any name, found by the name it declares (read from the file).
    std::fs::copy(build().join("libhello_vendor.so"), pdir.join("vendor-x.so")).unwrap();
    chmod(&pdir.join("vendor-x.so"), 0o644);

    let events = dir.path().join("events.jsonl");
    let cfg = host_config(
        &ns.name,
        &pdir,
        false,
        &format!(
            "[[plugins]]\nname = \"ww\"\n\n\
             [[plugins]]\nname = \"other\"\n\n\
             [[plugins]]\nname = \"open\"\npath = \"{}\"\n\n\
             [[plugins]]\nname = \"link\"\n\n\
             [[plugins]]\nname = \"unresolved\"\n\n\
             [[plugins]]\nname = \"recordr\"\n\n\
             [[plugins]]\nname = \"hello-vendor\"\n\n\
             [[plugins]]\nname = \"recorder\"\n[plugins.config]\nevents_path = \"{}\"\n",
            wwdir.join("librec.so").display(),
            events.display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    let reason = |n: &str| {
        let p = d.plugin(n);
        assert_eq!(p["state"], "failed", "{n}: {p}");
        p["reason"].as_str().unwrap().to_string()
    };
    let f = pdir.join("libww.so");
    let r = reason("ww");
    assert_eq!(
        r,
        format!(
            "{}: refused: owner root (uid 0), mode 0646: writable by others; fix with `chmod go-w {}`",
            f.display(),
            f.display()
        )
    );
    let f = pdir.join("libother.so");
    let r = reason("other");
    assert!(
        r.starts_with(&format!("{}: refused: owner ", f.display()))
            && r.contains("(uid 65534), mode 0644: not owned by root or the daemon's user")
            && r.ends_with(&format!("fix with `chown root {}`", f.display())),
        "{r}"
    );
    let r = reason("open");
    assert_eq!(
        r,
        format!(
            "{}: refused: owner root (uid 0), mode 0777: writable by its group and others; fix with `chmod go-w {}`",
            wwdir.display(),
            wwdir.display()
        )
    );
    let f = elsewhere.join("librec.so");
    let r = reason("link");
    assert!(
        r.starts_with(&format!("{}: refused:", f.display()))
            && r.contains("mode 0666")
            && r.contains(&format!("chmod go-w {}", f.display())),
        "the link's target is checked: {r}"
    );
    let r = reason("unresolved");
    assert!(
        r.contains("libunresolved.so: refused: it needs the symbol ekho_test_absent_function"),
        "{r}"
    );
    let r = reason("recordr");
    assert!(
        r.contains("not found")
            && r.contains("librecordr.so")
            && r.contains("libbystander.so declares no name"),
        "{r}"
    );
    // The bystander was never loaded; the unresolved library's constructor did not run either
    // (its load failed at binding, before initialisers).
    assert!(
        !marker.exists(),
        "loaded: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    // The rest runs: the vendor's oddly named file by its declared name, and the recorder.
    let hv = d.plugin("hello-vendor");
    assert_eq!(hv["state"], "in_sync", "{hv}");
    assert!(
        hv["path"].as_str().unwrap().ends_with("vendor-x.so"),
        "{hv}"
    );
    assert_eq!(d.plugin("recorder")["state"], "in_sync");
    assert!(read_events(&events).iter().any(|e| e["op"] == "end_sync"));

    // `ekho check-plugin` runs the same checks, with the stage and a non-zero exit.
    for (file, stage, says) in [
        (pdir.join("libww.so"), "trust", "writable by others"),
        (pdir.join("libother.so"), "trust", "not owned by root"),
        (
            wwdir.join("librec.so"),
            "trust",
            "writable by its group and others",
        ),
        (pdir.join("liblink.so"), "trust", "mode 0666"),
        (
            pdir.join("libunresolved.so"),
            "symbol binding",
            "ekho_test_absent_function",
        ),
    ] {
        let out = d.cli(&["check-plugin", "--json", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", file.display());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["accepted"], false);
        assert_eq!(v["stage"], stage, "{v}");
        assert!(v["reason"].as_str().unwrap().contains(says), "{v}");
    }
    assert!(!marker.exists());
    let out = d.cli(&["check-plugin", pdir.join("vendor-x.so").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}
