//! The committed BPF object is what the C source builds to (runs `bpf/check.sh`; skipped where
//! clang is not installed — CI installs it: `apt-get install -y clang llvm libbpf-dev`).

use std::process::Command;

#[test]
fn committed_object_matches_source() {
    let have_clang = Command::new("clang")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_clang || !std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        println!(
            "SKIP: clang or libbpf-dev not installed (apt-get install -y clang llvm libbpf-dev)"
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/check.sh");
    let out = Command::new("sh")
        .arg(script)
        .output()
        .expect("run check.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.code() == Some(2) {
        println!("SKIP: {text}");
        return;
    }
    assert!(out.status.success(), "{text}");
    println!("{text}");
}
