//! Support for ekho's end-to-end tests: the test kit ([`ekho_testkit`]: private network
//! namespaces, the built binaries and plugins, a daemon under test), re-exported, and the
//! recorder's output.
//!
//! Every test creates its own uniquely named namespace (deleted on drop, also on panic), never
//! touches the machine's own namespace, and can run in parallel with the others.

pub mod bench;

pub use ekho_testkit::*;
use serde_json::Value;
use std::path::Path;

/// Reads the recorder's JSON lines (complete lines only: the recorder may be writing the last).
pub fn read_events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad recorder line {l:?}: {e}")))
        .collect()
}

/// The set of `dst` of the routes of one table in a dump-shaped JSON list.
pub fn route_dsts(routes: &Value, table: &str) -> std::collections::BTreeSet<String> {
    routes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["table"].as_str().unwrap_or("main") == table)
        .map(|r| r["dst"].as_str().unwrap().to_string())
        .collect()
}

/// A JSON file (the recorder's view), parsed.
pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
