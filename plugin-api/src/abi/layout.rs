//! A stable text description of the types crossing the boundary, for the freeze check: every
//! type reachable from a root (fields, variants, vtable and module entries with their
//! signatures, sizes, alignments), as abi_stable's load-time check compares them. Source
//! positions and the crate's own version are left out: they change without changing the ABI.

use abi_stable::std_types::UTypeId;
use abi_stable::type_layout::{TLData, TypeLayout};
use std::collections::HashSet;
use std::fmt::Write;

/// Describes `root` and every type it reaches, one block per type, in a deterministic order.
pub fn describe(root: &'static TypeLayout) -> String {
    let mut seen: HashSet<UTypeId> = HashSet::new();
    let mut blocks = Vec::new();
    walk(root, &mut seen, &mut blocks);
    blocks.sort();
    blocks.dedup();
    // The crate's own version is checked by its major only (abi_stable's loose rule), and
    // changes with every release: keep the major.
    let text = blocks.join("\n");
    let re = "package:'ekho-plugin-api' version:'";
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find(re) {
        let (head, tail) = rest.split_at(i + re.len());
        out.push_str(head);
        let end = tail.find('\'').unwrap_or(tail.len());
        let major = tail[..end].split('.').next().unwrap_or("");
        out.push_str(major);
        out.push_str(".x");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn walk(l: &'static TypeLayout, seen: &mut HashSet<UTypeId>, out: &mut Vec<String>) {
    if !seen.insert(l.get_utypeid()) {
        return;
    }
    out.push(block(l));
    let fields = match l.data() {
        TLData::Struct { fields } | TLData::Union { fields } => Some(fields),
        TLData::Enum(e) => Some(e.fields),
        TLData::PrefixType(p) => Some(p.fields),
        TLData::Primitive(_) | TLData::Opaque => None,
    };
    for f in fields.iter().flat_map(|f| f.iter()) {
        walk(f.layout(), seen, out);
        // Function pointers (vtable and module entries): their parameters and return type.
        for func in f.function_range().iter() {
            for p in func.param_type_layouts.iter() {
                walk(p(), seen, out);
            }
            if let Some(r) = func.return_type_layout() {
                walk(r(), seen, out);
            }
        }
    }
    for nested in l.shared_vars().type_layouts() {
        walk(nested(), seen, out);
    }
    if let Some(extra) = l.extra_checks() {
        for nested in &*extra.nested_type_layouts() {
            walk(nested, seen, out);
        }
    }
}

fn block(l: &'static TypeLayout) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "type {} (package {}): size {} align {} repr {:?}{}",
        l.full_type(),
        l.package(),
        l.size(),
        l.alignment(),
        l.repr_attr(),
        if l.is_nonzero() { " nonzero" } else { "" }
    );
    let data = match l.data() {
        TLData::Primitive(p) => format!("primitive {p:?}"),
        TLData::Opaque => "opaque".to_string(),
        TLData::Struct { fields } => format!("struct\n{fields}"),
        TLData::Union { fields } => format!("union\n{fields}"),
        TLData::Enum(e) => {
            let mut d = format!("enum {:?}\n", e.exhaustiveness);
            let mut fields = e.fields.iter();
            for (name, &n) in e.variant_names_iter().zip(e.field_count.iter()) {
                let _ = writeln!(d, "  variant {name}");
                for f in fields.by_ref().take(n as usize) {
                    let _ = writeln!(d, "    {f}");
                }
            }
            let _ = write!(d, "  discriminants {:?}", e.discriminants);
            d
        }
        TLData::PrefixType(p) => format!("prefix\n{p}"),
    };
    s.push_str(&data);
    let _ = write!(s, "\ntag {}", l.tag());
    s.push('\n');
    s
}
