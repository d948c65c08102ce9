//! Starts the eBPF source, prints each hook's state, then prints events for a few seconds.
//!
//! `cargo run -p ekho-ebpf --example hooks [-- NETNS_PATH [SECONDS]]`

use ekho_ebpf::{verify_fentry_handlers, EbpfConfig, EbpfSource, HookState};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let netns = args.next().filter(|s| !s.is_empty()).map(Into::into);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let events: ekho_ebpf::EventSink = Arc::new(|evs| {
        for e in evs {
            println!("{e:?}");
        }
    });
    let loss: ekho_ebpf::LossSink = Arc::new(|kinds| println!("LOSS: re-dump {kinds:?}"));
    let src = match EbpfSource::start(EbpfConfig { netns }, events, loss) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    for h in &src.hooks {
        match &h.state {
            HookState::Live => println!("{:45} live", h.name),
            HookState::FallenBack { to, reason } => {
                println!("{:45} fell back to {to} ({reason})", h.name)
            }
            HookState::Unavailable { reason } => println!("{:45} unavailable ({reason})", h.name),
        }
    }
    match verify_fentry_handlers() {
        Ok(v) => {
            for c in v {
                let verdict = c.result.err().unwrap_or_else(|| "accepted".into());
                println!("verifier twin of {:38} {verdict}", c.hook);
            }
        }
        Err(e) => println!("verifier twins: {e}"),
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    println!("{:?}", src.stats());
}
