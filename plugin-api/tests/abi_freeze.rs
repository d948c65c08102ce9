//! The freeze check: the types of every API snapshot describe exactly what its `.layout` file
//! (committed when the minor shipped) holds. A difference means a change would refuse, or
//! worse misread, every plugin built against that minor: make it in a new minor instead (see
//! the `abi` module docs).

use ekho_plugin_api::abi;
use std::path::PathBuf;

fn check(minor: (u64, u64), described: String) {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("abi")
        .join(format!("v{}.{}.layout", minor.0, minor.1));
    let frozen = match std::fs::read_to_string(&file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os("EKHO_ABI_BLESS").is_some() {
                std::fs::write(&file, &described).unwrap();
                eprintln!("wrote {}", file.display());
                return;
            }
            panic!(
                "{} is missing: a new minor's layout is written once with EKHO_ABI_BLESS=1",
                file.display()
            );
        }
        Err(e) => panic!("{}: {e}", file.display()),
    };
    if frozen != described {
        let diff: Vec<String> = diff_lines(&frozen, &described);
        panic!(
            "the types of API {}.{} no longer match {} (frozen when {}.{} shipped):\n{}\n\
             Frozen types never change: put the change in a new minor (plugin-api/src/abi/mod.rs says how).",
            minor.0,
            minor.1,
            file.display(),
            minor.0,
            minor.1,
            diff.join("\n")
        );
    }
}

/// Lines only in the frozen file (`-`) and only in the current description (`+`).
fn diff_lines(frozen: &str, now: &str) -> Vec<String> {
    let a: Vec<&str> = frozen.lines().collect();
    let b: Vec<&str> = now.lines().collect();
    let mut out: Vec<String> = a
        .iter()
        .filter(|l| !b.contains(l))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        b.iter()
            .filter(|l| !a.contains(l))
            .map(|l| format!("+ {l}")),
    );
    if out.is_empty() {
        out.push("(same lines, in another order)".into());
    }
    out.truncate(60);
    out
}

#[test]
fn every_snapshot_is_frozen() {
    for snap in abi::SNAPSHOTS {
        check(snap.minor, abi::layout::describe((snap.root)()));
    }
}

#[test]
fn every_snapshot_has_a_layout_file() {
    if std::env::var_os("EKHO_ABI_BLESS").is_some() {
        return; // the other test is writing the missing ones
    }
    for snap in abi::SNAPSHOTS {
        let (major, minor) = snap.minor;
        let f = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("abi")
            .join(format!("v{major}.{minor}.layout"));
        assert!(f.is_file(), "{} missing", f.display());
    }
}
