//! What the host reads from a plugin file without loading it: its ELF type, the API version tag
//! and panic strategy (the data of two exported statics) and the plugin's declared name (the
//! `.ekho.plugin_name` section), all parsed from the open file with the `object` crate. No code
//! of the file runs.

use object::{Object, ObjectSection, ObjectSymbol};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The section a plugin may declare its name in (NUL-terminated UTF-8), so the host can find it
/// by name among files of any name without loading them.
pub const NAME_SECTION: &str = ".ekho.plugin_name";

/// What the file's header says.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    NotElf,
    /// ELF, with its `e_type` (3: shared object).
    Elf {
        e_type: u16,
    },
}

/// Reads the ELF header's magic and type.
pub fn header(file: &File) -> std::io::Result<Header> {
    let mut h = [0u8; 18];
    let mut n = 0;
    while n < h.len() {
        match file.read_at(&mut h[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    if n < 18 || &h[..4] != b"\x7fELF" {
        return Ok(Header::NotElf);
    }
    let e_type = if h[5] == 2 {
        u16::from_be_bytes([h[16], h[17]])
    } else {
        u16::from_le_bytes([h[16], h[17]])
    };
    Ok(Header::Elf { e_type })
}

/// The statics and sections of a plugin file the host reads before loading it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Declared {
    /// The text of the exported `EKHO_PLUGIN_API_VERSION` tag, if exported.
    pub api_version: Option<String>,
    /// The exported `EKHO_PLUGIN_PANIC_UNWIND` byte, if exported.
    pub panic_unwind: Option<u8>,
    /// The name in [`NAME_SECTION`], if the file has one.
    pub name: Option<String>,
}

/// Parses `file` (an ELF shared object) for what it declares.
pub fn declared(
    file: &File,
    version_symbol: &str,
    panic_symbol: &str,
) -> Result<Declared, object::Error> {
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache)?;
    let mut out = Declared::default();
    let data_of = |sym: &object::Symbol<'_, '_, &object::ReadCache<&File>>| -> Option<Vec<u8>> {
        let section = obj.section_by_index(sym.section_index()?).ok()?;
        let bytes = section.data_range(sym.address(), sym.size()).ok()??;
        Some(bytes.to_vec())
    };
    for sym in obj.dynamic_symbols() {
        if !sym.is_definition() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if name == version_symbol {
            out.api_version = data_of(&sym).map(|b| c_text(&b));
        } else if name == panic_symbol {
            out.panic_unwind = data_of(&sym).and_then(|b| b.first().copied());
        }
    }
    if let Some(s) = obj.section_by_name(NAME_SECTION) {
        if let Ok(b) = s.data() {
            let n = c_text(b);
            if !n.is_empty() {
                out.name = Some(n);
            }
        }
    }
    Ok(out)
}

/// The text up to the first NUL.
fn c_text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_is_elf_without_plugin_statics() {
        let f = File::open("/proc/self/exe").unwrap();
        assert!(matches!(header(&f).unwrap(), Header::Elf { .. }));
        let d = declared(&f, "EKHO_PLUGIN_API_VERSION", "EKHO_PLUGIN_PANIC_UNWIND").unwrap();
        assert_eq!(d, Declared::default());
    }

    #[test]
    fn text_is_not_elf() {
        let p = std::env::temp_dir().join(format!("ekho-elf-{}", std::process::id()));
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(header(&File::open(&p).unwrap()).unwrap(), Header::NotElf);
        std::fs::remove_file(&p).unwrap();
    }
}
