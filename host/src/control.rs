//! The control socket: one JSON request line in, one JSON response line out (or a stream of lines
//! for `monitor`). The CLI is its client.

use crate::daemon::Daemon;
use anyhow::Context;
use ekho_plugin_api::prelude::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Fails if a daemon already answers on `socket`; removes a stale socket file.
pub fn ensure_not_running(socket: &Path) -> anyhow::Result<()> {
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            anyhow::bail!(
                "another ekho is already running on {} (stop it, or set [host] control_socket to another path)",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    Ok(())
}

/// Binds the socket with mode 0600 (creating its directory).
pub fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let l = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves clients forever.
pub async fn serve(listener: tokio::net::UnixListener, daemon: Arc<Daemon>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let d = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, d).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

async fn handle(stream: tokio::net::UnixStream, daemon: Arc<Daemon>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    let Some(line) = lines.next_line().await? else {
        return Ok(());
    };
    let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    let cmd = req["cmd"].as_str().unwrap_or("");
    let resp = match cmd {
        "status" => daemon.status(),
        "plugins" => daemon.plugins(),
        "dump" => {
            let kind = match req["kind"].as_str() {
                None => None,
                Some(k) => match ObjectKind::from_name(k) {
                    Some(k) => Some(k),
                    None => {
                        let known: Vec<&str> = ObjectKind::ALL.iter().map(|k| k.plural()).collect();
                        let e = json!({"error": format!("unknown kind {k:?}; one of: {}", known.join(", "))});
                        w.write_all(format!("{e}\n").as_bytes()).await?;
                        return Ok(());
                    }
                },
            };
            daemon.dump(kind)
        }
        "monitor" => return monitor(w, daemon).await,
        other => json!({"error": format!("unknown command {other:?}")}),
    };
    w.write_all(format!("{resp}\n").as_bytes()).await?;
    Ok(())
}

/// Changes buffered per `ekho monitor` client; a client that falls further behind is cut off
/// (the mirror and the plugins never wait for it).
const MONITOR_BUFFER: usize = 65_536;

async fn monitor(
    mut w: tokio::net::unix::OwnedWriteHalf,
    daemon: Arc<Daemon>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Change>(MONITOR_BUFFER);
    let overflow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let of = overflow.clone();
    let mut tx = Some(tx);
    // No snapshot: a monitor streams changes from now on (serialised outside the mirror lock).
    let id = daemon
        .mirror
        .attach_lazy(Box::new(move |changes: &[Change]| {
            let Some(t) = &tx else { return };
            for c in changes {
                if t.try_send(c.clone()).is_err() {
                    of.store(true, std::sync::atomic::Ordering::Relaxed);
                    tx = None;
                    return;
                }
            }
        }));
    let result = async {
        while let Some(c) = rx.recv().await {
            w.write_all(format!("{}\n", change_json(&c)).as_bytes()).await?;
        }
        if overflow.load(std::sync::atomic::Ordering::Relaxed) {
            let e = json!({"error": format!("this monitor fell more than {MONITOR_BUFFER} changes behind and was cut off; reconnect (ekho dump gives the current state)")});
            w.write_all(format!("{e}\n").as_bytes()).await?;
        }
        anyhow::Ok(())
    }
    .await;
    daemon.mirror.detach(id);
    result
}

/// A change as one JSON record (the shape `ekho monitor --json` and the recorder print).
pub fn change_json(c: &Change) -> Value {
    let mut v = json!({"op": c.op(), "kind": c.kind().name(), "object": c.object().to_json()});
    if let Change::Update { old, .. } = c {
        v["old"] = old.to_json();
    }
    v
}

/// Client side: sends one request, returns the response.
pub fn request(socket: &Path, req: &Value) -> anyhow::Result<Value> {
    let mut s = connect(socket)?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).context("bad response from the daemon")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        anyhow::bail!("{e}");
    }
    Ok(v)
}

/// Client side: connects, with a message that says what to do when nothing listens.
pub fn connect(socket: &Path) -> anyhow::Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the ekho daemon at {}: {e} (is `ekho run` running with the same --config?)",
            socket.display()
        )
    })
}

/// Client side: streams `monitor` lines to `f` until the daemon closes.
pub fn stream(socket: &Path, req: &Value, mut f: impl FnMut(Value)) -> anyhow::Result<()> {
    let mut s = connect(socket)?;
    s.write_all(format!("{req}\n").as_bytes())?;
    for line in BufReader::new(s).lines() {
        let line = line?;
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                anyhow::bail!("{e}");
            }
            f(v);
        }
    }
    Ok(())
}
