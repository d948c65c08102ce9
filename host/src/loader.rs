//! Finding, checking and loading plugin shared objects.
//!
//! Steps, each with its own error: find the file; pre-flight (is it an ELF shared object, does it
//! export `EKHO_PLUGIN_API_VERSION`, is that version in the accepted range); abi_stable's layout
//! check of the root module; the plugin's own version against the config's requirement; create
//! with its config table.

use crate::binding::{self, Bound, How, Module};
use ekho_plugin_api::plugin::PluginInfo;
use ekho_plugin_api::version::{
    accepted_range, verdict, Verdict, API_VERSION, PANIC_SYMBOL, VERSION_SYMBOL,
};
use ekho_plugin_api::HostHandle;
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {name:?} not found in {dir}: tried {tried}; copy its .so into the plugin dir (the in-tree plugins are built by `cargo build --release` at the workspace root), or set `path` in its [[plugins]] table")]
    NotFound {
        name: String,
        dir: PathBuf,
        tried: String,
    },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ELF file; a plugin is a shared object (crate-type = [\"cdylib\"])")]
    NotElf { path: PathBuf },
    #[error("{path}: ELF but not a shared object (e_type {e_type}); build the plugin as crate-type = [\"cdylib\"]")]
    NotSharedObject { path: PathBuf, e_type: u16 },
    #[error("{path}: dlopen failed: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path}: not an ekho plugin: it does not export the symbol {VERSION_SYMBOL} (declare the plugin with ekho_plugin_api::declare_plugin!)")]
    NoVersionSymbol { path: PathBuf },
    #[error("{file} was built against ekho-plugin-api {plugin}; this host accepts {accepted} (host API {API_VERSION}): rebuild the plugin against a matching ekho-plugin-api")]
    IncompatibleApi {
        file: String,
        plugin: String,
        accepted: String,
    },
    #[error("{file} was built against ekho-plugin-api {plugin}, newer than this host's API {API_VERSION}: update ekho to a release with API {plugin} or later, or rebuild the plugin against ekho-plugin-api {host_minor}")]
    NewerApi {
        file: String,
        plugin: String,
        host_minor: String,
    },
    #[error("{path}: built with panic = \"abort\": a panic in it would abort the whole daemon; build it with panic = \"unwind\" (the default; check `panic` in the [profile.*] of its Cargo.toml)")]
    PanicAbort { path: PathBuf },
    #[error("{path}: ABI layout check failed: {summary} (run with RUST_LOG=debug for abi_stable's full report)")]
    Layout {
        path: PathBuf,
        summary: String,
        full: String,
    },
    #[error("plugin {name:?} is version {version}, but the config requires {req}")]
    Version {
        name: String,
        version: String,
        req: String,
    },
    #[error("plugin {name:?} refused its configuration: {reason}")]
    Create { name: String, reason: String },
    #[error("plugin {name:?} failed to report capabilities: {reason}")]
    Capabilities { name: String, reason: String },
}

/// A library that passed pre-flight and the layout check.
pub struct Library {
    /// The ekho-plugin-api version it was built against.
    pub api_version: String,
    pub info: PluginInfo,
    module: Module,
}

impl Library {
    /// Creates the plugin with its config (TOML text).
    pub fn create(&self, config: &str, host: HostHandle) -> Result<Bound, LoadError> {
        self.module
            .create(config, host)
            .map_err(|reason| LoadError::Create {
                name: self.info.name.to_string(),
                reason,
            })
    }

    /// How the host drives it: natively, or converted from an older minor.
    pub fn how(&self) -> How {
        self.module.how()
    }
}

/// File names tried for plugin `name` in the plugin dir.
pub fn candidate_files(name: &str) -> Vec<String> {
    let u = name.replace('-', "_");
    let mut v = vec![
        format!("lib{u}.so"),
        format!("libekho_{u}.so"),
        format!("{name}.so"),
        format!("lib{name}.so"),
    ];
    v.dedup();
    v
}

/// Finds the file of plugin `name`: `path` if set (relative to `dir`), else a candidate file name
/// in `dir`, else any `.so` in `dir` whose declared name is `name`.
pub fn find(name: &str, path: Option<&Path>, dir: &Path) -> Result<PathBuf, LoadError> {
    if let Some(p) = path {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        };
        return Ok(p);
    }
    let cands = candidate_files(name);
    for c in &cands {
        let p = dir.join(c);
        if p.is_file() {
            return Ok(p);
        }
    }
    // Scan: a vendor may name the file anything.
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "so"))
            .collect();
        files.sort();
        for f in files {
            if let Ok(lib) = open(&f) {
                if lib.info.name.as_str() == name {
                    return Ok(f);
                }
            }
        }
    }
    Err(LoadError::NotFound {
        name: name.into(),
        dir: dir.to_path_buf(),
        tried: cands.join(", "),
    })
}

fn elf_check(path: &Path) -> Result<(), LoadError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    let mut h = [0u8; 18];
    let n = f.read(&mut h).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    if n < 18 || &h[..4] != b"\x7fELF" {
        return Err(LoadError::NotElf { path: path.into() });
    }
    let e_type = if h[5] == 2 {
        u16::from_be_bytes([h[16], h[17]])
    } else {
        u16::from_le_bytes([h[16], h[17]])
    };
    if e_type != 3 {
        return Err(LoadError::NotSharedObject {
            path: path.into(),
            e_type,
        });
    }
    Ok(())
}

/// Pre-flight only: ELF check, dlopen, version symbol. Returns the API version and how this
/// host runs it.
pub fn preflight(path: &Path) -> Result<(String, Verdict), LoadError> {
    elf_check(path)?;
    // SAFETY: loading a shared object runs its initialisers; that is what loading a plugin means.
    // The library is leaked on purpose (plugins are never unloaded; abi_stable does the same).
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
        path: path.into(),
        reason: error_chain(&e),
    })?;
    let lib = Box::leak(Box::new(lib));
    let sym = format!("{VERSION_SYMBOL}\0");
    // SAFETY: for a data symbol the symbol value is the address of the static, which
    // `declare_plugin!` defines as a NUL-terminated `VersionTag` (32 bytes).
    let ptr: *const c_char = unsafe {
        match lib.get::<*const c_char>(sym.as_bytes()) {
            Ok(s) => *s,
            Err(_) => return Err(LoadError::NoVersionSymbol { path: path.into() }),
        }
    };
    // SAFETY: the tag is 32 bytes with at least one trailing NUL.
    let v = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    let file = || {
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let how = verdict(API_VERSION, &v);
    if how == Verdict::NewerMinor {
        let (major, minor) = ekho_plugin_api::version::major_minor(API_VERSION).unwrap_or((0, 0));
        return Err(LoadError::NewerApi {
            file: file(),
            plugin: v,
            host_minor: format!("{major}.{minor}"),
        });
    }
    if !binding::supported(how) {
        return Err(LoadError::IncompatibleApi {
            file: file(),
            plugin: v,
            accepted: accepted_range(API_VERSION).unwrap_or_else(|| API_VERSION.into()),
        });
    }
    let sym = format!("{PANIC_SYMBOL}\0");
    // SAFETY: a `u8` static defined by `declare_plugin!`; absent in plugins of older API
    // versions, which are accepted as they are.
    unsafe {
        if let Ok(s) = lib.get::<*const u8>(sym.as_bytes()) {
            if **s == 0 {
                return Err(LoadError::PanicAbort { path: path.into() });
            }
        }
    }
    Ok((v, how))
}

/// Pre-flight plus abi_stable's layout check against the snapshot of the plugin's minor;
/// returns the loaded library.
pub fn open(path: &Path) -> Result<Library, LoadError> {
    let (api_version, how) = preflight(path)?;
    let module = abi_stable::library::lib_header_from_path(path)
        .and_then(|h| Module::load(h, how))
        .map_err(|e| {
            let full = e.to_string();
            LoadError::Layout {
                path: path.into(),
                summary: summarize_layout_error(&full),
                full,
            }
        })?;
    let info = module.info();
    Ok(Library {
        api_version,
        info,
        module,
    })
}

/// Checks the plugin's own version against a requirement.
pub fn check_version(info: &PluginInfo, req: Option<&str>) -> Result<(), LoadError> {
    let Some(req) = req else { return Ok(()) };
    let ok = match (
        semver::VersionReq::parse(req),
        semver::Version::parse(info.version.as_str()),
    ) {
        (Ok(r), Ok(v)) => r.matches(&v),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(LoadError::Version {
            name: info.name.to_string(),
            version: info.version.to_string(),
            req: req.into(),
        })
    }
}

/// abi_stable's layout errors are hundreds of lines; keep the type and the lines that say what
/// differs: "type Counter (ekho_plugin_api::plugin): incompatible type size (expected 72, found 80)".
fn summarize_layout_error(full: &str) -> String {
    let lines: Vec<&str> = full.lines().map(str::trim).collect();
    let first_err = lines.iter().position(|l| l.starts_with("Error:"));
    let mut ty = None;
    if let Some(fe) = first_err {
        if let Some(found) = lines[..fe]
            .iter()
            .rposition(|l| *l == "Layout of found type:")
        {
            let name = lines[found..fe]
                .iter()
                .find_map(|l| l.strip_prefix("type:"));
            let module = lines[found..fe]
                .iter()
                .find_map(|l| l.split_once("mod:").map(|(_, m)| m.trim()));
            ty = name.map(|n| match module {
                Some(m) => format!("type {n} ({m})"),
                None => format!("type {n}"),
            });
        }
    }
    let value_after = |start: usize, label: &str| -> Option<String> {
        let at = lines[start..].iter().take(12).position(|l| *l == label)? + start;
        lines
            .get(at + 1)
            .map(|v| v.to_string())
            .filter(|v| !v.is_empty())
    };
    let mut out: Vec<String> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(what) = l.strip_prefix("Error:") {
            let mut s = what.trim().to_string();
            match (value_after(i, "Expected:"), value_after(i, "Found:")) {
                (Some(e), Some(f)) => s.push_str(&format!(" (expected {e}, found {f})")),
                (Some(e), None) => s.push_str(&format!(" ({e})")),
                _ => {}
            }
            if !out.contains(&s) {
                out.push(s);
            }
            if out.len() >= 2 {
                break;
            }
        }
    }
    let body = if out.is_empty() {
        full.lines().next().unwrap_or("unknown error").to_string()
    } else {
        out.join("; ")
    };
    match ty {
        Some(t) => format!("{t}: {body}"),
        None => body,
    }
}

/// The most specific message of an error chain (libloading's own Display is just
/// "dlopen failed"; the system's text is in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = c.to_string();
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_cargo_names() {
        let c = candidate_files("hello-vendor");
        assert!(c.contains(&"libhello_vendor.so".to_string()));
        assert!(candidate_files("recorder").contains(&"libekho_recorder.so".to_string()));
    }

    #[test]
    fn not_elf_is_refused_with_reason() {
        let d = std::env::temp_dir().join(format!("ekho-loader-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("libfoo.so");
        std::fs::write(&f, b"#!/bin/sh\necho not a library\n").unwrap();
        let e = open(&f).err().unwrap().to_string();
        assert!(e.contains("not an ELF file"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn executable_is_not_a_shared_object_or_lacks_symbol() {
        // /proc/self/exe is this test binary: ELF, PIE (ET_DYN) or EXEC; either way refused.
        let e = open(Path::new("/proc/self/exe")).err().unwrap().to_string();
        assert!(
            e.contains("not a shared object")
                || e.contains("does not export")
                || e.contains("dlopen"),
            "{e}"
        );
    }

    #[test]
    fn layout_summary_keeps_the_differences() {
        let full = "blah\nLayout of found type:\n --- Type Layout ---\n type:Counter\n line:29 mod:ekho_plugin_api::plugin\n\
                    Error:incompatible type size\nExpected:\n    72\nFound:\n    80\n\nError:too many fields\nExpected:\n 3\nFound:\n 4\nError:unexpected field\n";
        let s = summarize_layout_error(full);
        assert_eq!(
            s,
            "type Counter (ekho_plugin_api::plugin): incompatible type size (expected 72, found 80); too many fields (expected 3, found 4)"
        );
    }
}
