//! The control socket: one JSON request line in, one JSON response line out (or a stream of lines
//! for `monitor`). The CLI is its client.

use anyhow::Context;
use ekho_mirror::tcshow::Show;
use ekho_plugin_api::prelude::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
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

/// A request the control socket serves (one JSON line from the CLI: `{"cmd": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `ekho status`.
    Status,
    /// `ekho plugins`.
    Plugins,
    /// `ekho dump [KIND]`; `counts` (`"counts": true`, the human CLI asks for it): each
    /// kind's list is preceded by its length under `"#KIND"`, so the header can be printed
    /// before the objects arrive.
    Dump {
        kind: Option<ObjectKind>,
        counts: bool,
    },
    /// `ekho dump flows [--stats]`: the conntrack table.
    Flows { stats: bool },
    /// `ekho dump qdiscs|classes|filters|chains|actions`: tc's lists (`filters --stats`: with
    /// the kernel's software counters and the plugins' beside each filter).
    DumpTc { what: Show, stats: bool },
    /// `ekho monitor`: the changes applied from now on, one line each.
    Monitor,
    /// `ekho reload`: re-read the config file.
    Reload,
    /// `ekho plugin restart|stop|start NAME`.
    Plugin { action: String, name: String },
}

impl Request {
    /// Reads a request line; the error is the message the client is answered with.
    pub fn parse(line: &str) -> Result<Request, String> {
        let req: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        match req["cmd"].as_str().unwrap_or("") {
            "status" => Ok(Request::Status),
            "plugins" => Ok(Request::Plugins),
            "dump" => match req["kind"].as_str() {
                None => Ok(Request::Dump {
                    kind: None,
                    counts: req["counts"].as_bool().unwrap_or(false),
                }),
                Some("flows" | "flow") => Ok(Request::Flows {
                    stats: req["stats"].as_bool().unwrap_or(false),
                }),
                // tc's lists (`qdiscs`, `filters`, ...) are tc's view, in its wording, though
                // the plugin API's tc kinds share their names.
                Some(k) => match (Show::from_name(k), ObjectKind::from_name(k)) {
                    (Some(t), _) => Ok(Request::DumpTc {
                        what: t,
                        stats: req["stats"].as_bool().unwrap_or(false),
                    }),
                    (None, Some(k)) => Ok(Request::Dump {
                        kind: Some(k),
                        counts: req["counts"].as_bool().unwrap_or(false),
                    }),
                    (None, None) => Err(format!("unknown kind {k:?}; one of: {}", dump_kinds())),
                },
            },
            "monitor" => Ok(Request::Monitor),
            "reload" => Ok(Request::Reload),
            "plugin" => match (req["action"].as_str(), req["name"].as_str()) {
                (Some(a), Some(n)) => Ok(Request::Plugin {
                    action: a.into(),
                    name: n.into(),
                }),
                _ => Err("plugin: needs \"action\" and \"name\"".into()),
            },
            other => Err(format!("unknown command {other:?}")),
        }
    }
}

/// The kinds `ekho dump` takes: the plugin API's, the conntrack table, tc's lists.
pub fn dump_kinds() -> String {
    let mut known: Vec<&str> = ObjectKind::ALL
        .iter()
        .map(|k| k.plural())
        .filter(|k| Show::from_name(k).is_none())
        .collect();
    known.push("flows");
    known.extend(Show::ALL.iter().map(|(n, _)| *n));
    known.join(", ")
}

/// Called with every change applied while a monitor watches (under the mirror's lock: must not
/// block).
pub type ChangeSink = Box<dyn FnMut(&[Change]) + Send>;

/// Identifies a watch started by [`Service::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchId(pub u64);

/// What the control socket serves; the daemon implements it.
pub trait Service: Send + Sync + 'static {
    /// `ekho status --json`.
    fn status(&self) -> Value;
    /// `ekho plugins --json`.
    fn plugins(&self) -> Value;
    /// `ekho dump --json`: one object keyed by kind (`kind` alone when given), written to `out`
    /// as it is serialised (an error from `out`, the client gone, ends it); with `counts`, each
    /// kind's list preceded by `"#KIND": N`, its length.
    fn dump(
        &self,
        kind: Option<ObjectKind>,
        counts: bool,
        out: &mut dyn Write,
    ) -> std::io::Result<()>;
    /// `ekho dump flows --json`: the conntrack entries (with the table's counters: `stats`).
    fn flows(&self, stats: bool) -> Value;
    /// `ekho dump qdiscs|... --json`: the list as `tc -j` prints it.
    fn dump_tc(&self, what: Show, stats: bool) -> Value;
    /// Hands `sink` every change applied from now on (no snapshot), until [`Service::unwatch`].
    fn watch(&self, sink: ChangeSink) -> WatchId;
    /// Ends a watch.
    fn unwatch(&self, id: WatchId);
    /// `ekho reload`: what was added, removed, restarted, or `{"error": ...}` (may block).
    fn reload(&self) -> Value;
    /// `ekho plugin ACTION NAME`: the plugin's state after it, or `{"error": ...}` (may block).
    fn plugin_action(&self, action: &str, name: &str) -> Value;
}

/// The longest request line the daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Clients served at once (monitors included); one more is answered with an error and closed.
pub const MAX_CLIENTS: usize = 64;
/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves clients forever.
pub async fn serve(listener: tokio::net::UnixListener, service: Arc<dyn Service>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!("control socket: more than {MAX_CLIENTS} clients at once; one refused");
            tokio::spawn(async move {
                let e = json!({"error": format!("the daemon serves {MAX_CLIENTS} control clients at once; try again")});
                let _ = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    stream.write_all(format!("{e}\n").as_bytes()),
                )
                .await;
            });
            continue;
        };
        let s = service.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, s).await {
                tracing::debug!("control client: {e}");
            }
            drop(permit);
        });
    }
}

/// Reads one request line of at most [`MAX_REQUEST`] bytes within [`REQUEST_TIMEOUT`]; the
/// error is what the client is answered.
async fn read_request(r: tokio::net::unix::OwnedReadHalf) -> Result<Option<String>, String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut limited = tokio::io::BufReader::new(r.take(MAX_REQUEST as u64 + 1));
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut buf)).await {
        Err(_) => Err(format!(
            "no complete request line within {} s; closed",
            REQUEST_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) if buf.len() > MAX_REQUEST => {
            Err(format!("request larger than {MAX_REQUEST} bytes; closed"))
        }
        Ok(Ok(_)) => Ok(Some(String::from_utf8_lossy(&buf).trim_end().to_string())),
    }
}

async fn handle(stream: tokio::net::UnixStream, service: Arc<dyn Service>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let line = match read_request(r).await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::debug!("control client refused: {e}");
            let _ = tokio::time::timeout(
                REQUEST_TIMEOUT,
                w.write_all(format!("{}\n", json!({ "error": e })).as_bytes()),
            )
            .await;
            return Ok(());
        }
    };
    let resp = match Request::parse(&line) {
        Ok(Request::Status) => service.status(),
        Ok(Request::Plugins) => service.plugins(),
        Ok(Request::Dump { kind, counts }) => return dump(w, service, kind, counts).await,
        Ok(Request::Flows { stats }) => service.flows(stats),
        Ok(Request::DumpTc { what, stats }) => service.dump_tc(what, stats),
        Ok(Request::Monitor) => return monitor(w, &*service).await,
        Ok(Request::Reload) => {
            let s = service.clone();
            tokio::task::spawn_blocking(move || s.reload()).await?
        }
        Ok(Request::Plugin { action, name }) => {
            let s = service.clone();
            tokio::task::spawn_blocking(move || s.plugin_action(&action, &name)).await?
        }
        Err(e) => json!({ "error": e }),
    };
    w.write_all(format!("{resp}\n").as_bytes()).await?;
    Ok(())
}

/// A dump's bytes go to the client in chunks of this size, at most [`DUMP_CHUNKS`] of them
/// serialised ahead of the socket.
const DUMP_CHUNK: usize = 256 * 1024;
const DUMP_CHUNKS: usize = 4;

/// Hands what is written to it to the async side in [`DUMP_CHUNK`]s.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(DUMP_CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= DUMP_CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// `ekho dump`: serialised on a blocking thread while the bytes already made are written, so
/// the client hears from the daemon at once however large the table (its timeout is how long
/// the daemon may stay silent) and neither side holds the whole document.
async fn dump(
    mut w: tokio::net::unix::OwnedWriteHalf,
    service: Arc<dyn Service>,
    kind: Option<ObjectKind>,
    counts: bool,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(DUMP_CHUNKS);
    let producer = tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            buf: Vec::with_capacity(DUMP_CHUNK),
            tx,
        };
        service.dump(kind, counts, &mut out)?;
        out.write_all(b"\n")?;
        out.flush()
    });
    while let Some(chunk) = rx.recv().await {
        w.write_all(&chunk).await?;
    }
    // The client gone: the producer saw its channel closed and stopped.
    producer.await?.context("ekho dump")?;
    Ok(())
}

/// Changes buffered per `ekho monitor` client; a client that falls further behind is cut off
/// (the mirror and the plugins never wait for it).
const MONITOR_BUFFER: usize = 65_536;

async fn monitor(
    mut w: tokio::net::unix::OwnedWriteHalf,
    service: &dyn Service,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Change>(MONITOR_BUFFER);
    let overflow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let of = overflow.clone();
    let mut tx = Some(tx);
    // No snapshot: a monitor streams changes from now on (serialised outside the mirror lock).
    let id = service.watch(Box::new(move |changes: &[Change]| {
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
            w.write_all(format!("{}\n", c.to_json()).as_bytes()).await?;
        }
        if overflow.load(std::sync::atomic::Ordering::Relaxed) {
            let e = json!({"error": format!("this monitor fell more than {MONITOR_BUFFER} changes behind and was cut off; reconnect (ekho dump gives the current state)")});
            w.write_all(format!("{e}\n").as_bytes()).await?;
        }
        anyhow::Ok(())
    }
    .await;
    service.unwatch(id);
    result
}

/// Client side: sends one request, returns the response; gives up after `timeout`.
pub fn request(socket: &Path, req: &Value, timeout: Duration) -> anyhow::Result<Value> {
    let mut s = connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let timed_out = |e: std::io::Error| -> anyhow::Error {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            anyhow::anyhow!(
                "the ekho daemon at {} did not answer within {} s (it may be busy or stuck: see its log; --timeout SECS waits longer)",
                socket.display(),
                timeout.as_secs_f64()
            )
        } else {
            e.into()
        }
    };
    // A daemon refusing the connection (too many clients) may answer and close before the
    // request is written: its answer is still there to read.
    match s.write_all(format!("{req}\n").as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.map_err(timed_out)?,
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(timed_out)?;
    let v: Value = serde_json::from_str(&line).context("bad response from the daemon")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        anyhow::bail!("{e}");
    }
    Ok(v)
}

/// What [`request_dump`] hands on, in the order the daemon sent it.
pub enum DumpEvent {
    /// The length of the list that follows (sent when the request asked for `counts`).
    Count(usize),
    /// A kind's list begins (plural name: `routes`).
    Kind(String),
    /// One object of the current kind.
    Object(Value),
    /// The current kind's list ended.
    End,
}

/// Client side of `ekho dump`: sends the request and hands on each object as it is read (a
/// full BGP table is never one value in the CLI either); gives up when the daemon sends
/// nothing for `timeout`. An error from `each` (stdout closed) ends it.
pub fn request_dump(
    socket: &Path,
    req: &Value,
    timeout: Duration,
    mut each: impl FnMut(DumpEvent) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
    struct Top<'a, F>(&'a mut F);
    struct List<'a, F>(&'a mut F);
    impl<'de, F: FnMut(DumpEvent) -> std::io::Result<()>> Visitor<'de> for Top<'_, F> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of lists by kind")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Option<String>, A::Error> {
            while let Some(key) = m.next_key::<String>()? {
                if key.starts_with('#') {
                    let n: usize = m.next_value()?;
                    (self.0)(DumpEvent::Count(n)).map_err(A::Error::custom)?;
                    continue;
                }
                if key == "error" {
                    let e: Value = m.next_value()?;
                    return Ok(Some(e.as_str().map_or_else(|| e.to_string(), String::from)));
                }
                (self.0)(DumpEvent::Kind(key)).map_err(A::Error::custom)?;
                m.next_value_seed(List(&mut *self.0))?;
                (self.0)(DumpEvent::End).map_err(A::Error::custom)?;
            }
            Ok(None)
        }
    }
    impl<'de, F: FnMut(DumpEvent) -> std::io::Result<()>> DeserializeSeed<'de> for List<'_, F> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de, F: FnMut(DumpEvent) -> std::io::Result<()>> Visitor<'de> for List<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            while let Some(v) = s.next_element::<Value>()? {
                (self.0)(DumpEvent::Object(v)).map_err(A::Error::custom)?;
            }
            Ok(())
        }
    }

    let mut s = connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(256 * 1024, s));
    let r = de.deserialize_map(Top(&mut each));
    match r {
        Ok(None) => Ok(()),
        Ok(Some(e)) => anyhow::bail!("{e}"),
        Err(e)
            if e.is_io()
                && matches!(
                    e.io_error_kind(),
                    Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                ) =>
        {
            anyhow::bail!(
                "the ekho daemon at {} sent nothing for {} s in the middle of a dump (it may be busy or stuck: see its log; --timeout SECS waits longer)",
                socket.display(),
                timeout.as_secs_f64()
            )
        }
        Err(e) => Err(anyhow::Error::new(e).context("reading the dump from the daemon")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_the_cli_sends_them() {
        assert_eq!(Request::parse(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(Request::parse(r#"{"cmd":"plugins"}"#), Ok(Request::Plugins));
        assert_eq!(Request::parse(r#"{"cmd":"monitor"}"#), Ok(Request::Monitor));
        assert_eq!(
            Request::parse(r#"{"cmd":"dump","kind":null}"#),
            Ok(Request::Dump {
                kind: None,
                counts: false
            })
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"dump","kind":"routes","counts":true}"#),
            Ok(Request::Dump {
                kind: Some(ObjectKind::Route),
                counts: true
            })
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"dump","kind":"flows","stats":true}"#),
            Ok(Request::Flows { stats: true })
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"dump","kind":"filters"}"#),
            Ok(Request::DumpTc {
                what: Show::Filters,
                stats: false
            })
        );
    }

    #[test]
    fn bad_requests_say_what_was_wrong() {
        let e = Request::parse(r#"{"cmd":"dump","kind":"bogus"}"#).unwrap_err();
        assert!(
            e.starts_with(r#"unknown kind "bogus"; one of: links, "#)
                && e.contains(", flows, ")
                && e.ends_with("qdiscs, classes, filters, chains, actions"),
            "{e}"
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"frobnicate"}"#),
            Err(r#"unknown command "frobnicate""#.to_string())
        );
        assert_eq!(
            Request::parse("not json"),
            Err(r#"unknown command """#.to_string())
        );
    }
}
