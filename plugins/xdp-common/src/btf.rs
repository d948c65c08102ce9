//! Struct sizes from the `.BTF` section of a BPF ELF object, so a plugin's unit test can check
//! that its Rust mirrors of the map structs match the C structs of its committed object.

use std::collections::HashMap;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

fn section<'a>(elf: &'a [u8], want: &str) -> Option<&'a [u8]> {
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    let shstrndx = u16_at(elf, 0x3e)? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab_off = u64_at(elf, sh(shstrndx) + 24)? as usize;
    for i in 0..shnum {
        let name_off = u32_at(elf, sh(i))? as usize;
        let name = elf.get(strtab_off + name_off..)?;
        let end = name.iter().position(|&c| c == 0)?;
        if &name[..end] == want.as_bytes() {
            let off = u64_at(elf, sh(i) + 24)? as usize;
            let size = u64_at(elf, sh(i) + 32)? as usize;
            return elf.get(off..off + size);
        }
    }
    None
}

/// Name -> size of every named struct in the object's BTF.
pub fn struct_sizes(elf: &[u8]) -> Option<HashMap<String, usize>> {
    let btf = section(elf, ".BTF")?;
    if u16_at(btf, 0)? != 0xeb9f {
        return None;
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let type_off = u32_at(btf, 8)? as usize;
    let type_len = u32_at(btf, 12)? as usize;
    let str_off = u32_at(btf, 16)? as usize;
    let types = btf.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strs = btf.get(hdr_len + str_off..)?;
    let mut out = HashMap::new();
    let mut o = 0;
    while o + 12 <= types.len() {
        let name_off = u32_at(types, o)? as usize;
        let info = u32_at(types, o + 4)?;
        let size = u32_at(types, o + 8)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        if kind == 4 && name_off != 0 {
            let s = strs.get(name_off..)?;
            let end = s.iter().position(|&c| c == 0)?;
            out.insert(
                String::from_utf8_lossy(&s[..end]).into_owned(),
                size as usize,
            );
        }
        o += 12
            + match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                _ => 0,
            };
    }
    Some(out)
}
