//! Finding, checking and loading plugin shared objects.
//!
//! Steps, each with its own error: find the file (by a candidate file name, or by the name a file
//! declares, read from it); open it once and check it without running any of its code (trust:
//! owner and mode of the file and every directory above it, sshd-style, symlinks resolved; is it
//! an ELF shared object, does it export `EKHO_PLUGIN_API_VERSION`, is that version in the
//! accepted range, is it built to unwind); load that very file through its descriptor with every
//! symbol bound at once; abi_stable's layout check of the root module; the plugin's own version
//! against the config's requirement; create with its config table.

mod elf;
mod trust;

use crate::binding::{self, Bound, How, Module};
use ekho_plugin_api::plugin::PluginInfo;
use ekho_plugin_api::version::{
    accepted_range, verdict, Verdict, API_VERSION, PANIC_SYMBOL, VERSION_SYMBOL,
};
use ekho_plugin_api::HostHandle;
use std::path::{Path, PathBuf};

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {name:?} not found in {dir}: tried {tried}{seen}; copy its .so into the plugin dir (the in-tree plugins are built by `cargo build --release` at the workspace root), or set `path` in its [[plugins]] table")]
    NotFound {
        name: String,
        dir: PathBuf,
        tried: String,
        seen: String,
    },
    #[error("{0}")]
    Untrusted(#[from] trust::Untrusted),
    #[error("{path}: not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path}: unreadable ELF: {reason}")]
    BadElf { path: PathBuf, reason: String },
    #[error("{path}: refused: it needs the symbol {symbol}, which neither it nor the libraries it links define (every symbol is bound at load); link the library that defines it, or remove the use")]
    Unresolved { path: PathBuf, symbol: String },
    #[error("{path}: not an ekho plugin: it exports EKHO_PLUGIN_API_VERSION but not abi_stable's root module (declare the plugin with ekho_plugin_api::declare_plugin!)")]
    NoRootModule { path: PathBuf },
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

/// A plugin file opened once and checked without running any of its code: trusted (owner and
/// mode of the file and the directories above it), an ELF shared object exporting an API
/// version this host accepts, built to unwind. Loading it ([`load`]) loads this very file, by
/// its descriptor.
pub struct Checked {
    /// The path as configured or found.
    pub path: PathBuf,
    /// The file it resolves to (symlinks followed).
    pub target: PathBuf,
    file: std::fs::File,
    /// The ekho-plugin-api version it was built against.
    pub api_version: String,
    how: Verdict,
    /// The name it declares in its `.ekho.plugin_name` section, if any.
    pub declared_name: Option<String>,
}

/// Finds the file of plugin `name`: `path` if set (relative to `dir`), else a candidate file name
/// in `dir`, else any `.so` in `dir` that declares the name `name` (read from the file, none of
/// them loaded). Returns it checked ([`check_file`]).
pub fn find(name: &str, path: Option<&Path>, dir: &Path) -> Result<Checked, LoadError> {
    if let Some(p) = path {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        };
        return check_file(&p);
    }
    let cands = candidate_files(name);
    for c in &cands {
        let p = dir.join(c);
        if p.is_file() {
            return check_file(&p);
        }
    }
    // Scan: a vendor may name the file anything; the name is read from each file.
    let mut seen = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "so"))
            .collect();
        files.sort();
        for f in files {
            let file_name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match check_file(&f) {
                Ok(c) if c.declared_name.as_deref() == Some(name) => return Ok(c),
                Ok(c) => seen.push(match c.declared_name {
                    Some(n) => format!("{file_name} is {n:?}"),
                    None => format!("{file_name} declares no name"),
                }),
                Err(e) => {
                    tracing::debug!(file = %f.display(), "not a candidate for plugin {name:?}: {e}");
                    seen.push(format!("{file_name} refused"));
                }
            }
        }
    }
    Err(LoadError::NotFound {
        name: name.into(),
        dir: dir.to_path_buf(),
        tried: cands.join(", "),
        seen: if seen.is_empty() {
            String::new()
        } else {
            format!(
                " (none of its .so files declares that name: {})",
                seen.join(", ")
            )
        },
    })
}

/// Opens `path` once and checks it without running any of its code: trust (owner and mode of
/// the file and of every directory above it, symlinks resolved), ELF type, the API version and
/// panic strategy it exports (read from the file).
pub fn check_file(path: &Path) -> Result<Checked, LoadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let target = trust::resolve(path)?;
    let read = |source| LoadError::Read {
        path: target.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&target)
        .map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(LoadError::NotRegular { path: target });
    }
    trust::check_meta(&target, &meta)?;
    match elf::header(&file).map_err(read)? {
        elf::Header::NotElf => return Err(LoadError::NotElf { path: path.into() }),
        elf::Header::Elf { e_type: 3 } => {}
        elf::Header::Elf { e_type } => {
            return Err(LoadError::NotSharedObject {
                path: path.into(),
                e_type,
            })
        }
    }
    let declared =
        elf::declared(&file, VERSION_SYMBOL, PANIC_SYMBOL).map_err(|e| LoadError::BadElf {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let Some(v) = declared.api_version else {
        return Err(LoadError::NoVersionSymbol { path: path.into() });
    };
    let file_name = || {
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let how = verdict(API_VERSION, &v);
    if how == Verdict::NewerMinor {
        let (major, minor) = ekho_plugin_api::version::major_minor(API_VERSION).unwrap_or((0, 0));
        return Err(LoadError::NewerApi {
            file: file_name(),
            plugin: v,
            host_minor: format!("{major}.{minor}"),
        });
    }
    if !binding::supported(how) {
        return Err(LoadError::IncompatibleApi {
            file: file_name(),
            plugin: v,
            accepted: accepted_range(API_VERSION).unwrap_or_else(|| API_VERSION.into()),
        });
    }
    // Absent in plugins of older API versions, which are accepted as they are.
    if declared.panic_unwind == Some(0) {
        return Err(LoadError::PanicAbort { path: path.into() });
    }
    Ok(Checked {
        path: path.into(),
        target,
        file,
        api_version: v,
        how,
        declared_name: declared.name,
    })
}

/// Loads a checked file through its descriptor (the file checked is the file loaded), every
/// symbol bound now (an unresolved one is a refusal naming it), then abi_stable's layout check
/// of the root module against the snapshot of the plugin's minor.
pub fn load(checked: Checked) -> Result<Library, LoadError> {
    use std::os::fd::AsRawFd;
    let path = checked.path.clone();
    let by_fd = format!("/proc/self/fd/{}", checked.file.as_raw_fd());
    // SAFETY: loading a shared object runs its initialisers; that is what loading a plugin means.
    // The library is leaked on purpose (plugins are never unloaded; abi_stable does the same).
    let lib = unsafe {
        libloading::os::unix::Library::open(
            Some(&by_fd),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
        )
    }
    .map_err(|e| {
        let reason = error_chain(&e).replace(&by_fd, &path.display().to_string());
        match reason.split_once("undefined symbol: ") {
            Some((_, rest)) => LoadError::Unresolved {
                path: path.clone(),
                symbol: rest
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .next()
                    .unwrap_or(rest)
                    .to_string(),
            },
            None => LoadError::Open {
                path: path.clone(),
                reason,
            },
        }
    })?;
    // The descriptor stays open as long as the library is loaded (for ever): glibc knows the
    // library by the name it was opened with, and a later `/proc/self/fd/N` of a reused N would
    // be taken for it.
    std::mem::forget(checked.file);
    let lib: &'static libloading::os::unix::Library = Box::leak(Box::new(lib));
    let layout = |e: abi_stable::library::LibraryError| {
        let full = e.to_string();
        LoadError::Layout {
            path: path.clone(),
            summary: summarize_layout_error(&full),
            full,
        }
    };
    // SAFETY: `declare_plugin!` exports this symbol as abi_stable's `LibHeader` static, whose
    // address is what an `AbiHeaderRef` holds (abi_stable reads it the same way).
    let header: abi_stable::library::AbiHeaderRef = unsafe {
        match lib.get::<abi_stable::library::AbiHeaderRef>(
            abi_stable::library::ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes(),
        ) {
            Ok(s) => *s,
            Err(_) => return Err(LoadError::NoRootModule { path }),
        }
    };
    let module = header
        .upgrade()
        .and_then(|h| Module::load(h, checked.how))
        .map_err(layout)?;
    let info = module.info();
    Ok(Library {
        api_version: checked.api_version,
        info,
        module,
    })
}

/// [`check_file`] then [`load`].
pub fn open(path: &Path) -> Result<Library, LoadError> {
    load(check_file(path)?)
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
