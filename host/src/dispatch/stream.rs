//! The mirror's initial dump fanned out, as it is made, to the plugins loaded at start-up (their
//! initial sync runs alongside the dump instead of after it).

use super::queue::Queue;
use ekho_mirror::routes::Attrs;
use ekho_mirror::source::Initial;
use ekho_plugin_api::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the initial dump waits for a plugin whose stream is full before leaving it behind
/// (it then replays from the mirror once the dump is installed).
pub const STREAM_PATIENCE: Duration = Duration::from_millis(100);

/// Chunks of the initial dump in flight to one plugin, at most.
const STREAM_DEPTH: usize = 8;

/// A chunk of the initial dump: attribute sets first used in it (copies: a reference held by
/// the plugin's thread would keep the mirror's interner from freeing a set), then the additions.
pub(super) type StreamMsg = (Vec<Attrs>, Vec<Initial>);

/// How a plugin's stream of the initial dump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// Cut: the source stopped before the dump was installed.
    Cut,
    /// The plugin was given the whole initial dump.
    Complete,
    /// The plugin was left behind: it replays from the mirror once the dump is installed.
    Behind,
}

impl StreamEnd {
    fn code(self) -> u8 {
        match self {
            StreamEnd::Cut => 0,
            StreamEnd::Complete => 1,
            StreamEnd::Behind => 2,
        }
    }

    fn from_code(c: u8) -> StreamEnd {
        match c {
            1 => StreamEnd::Complete,
            2 => StreamEnd::Behind,
            _ => StreamEnd::Cut,
        }
    }
}

/// One plugin's end of the initial dump stream.
pub struct StreamFeed {
    rx: Receiver<StreamMsg>,
    /// Consumed chunk buffers go back to be reused (and freed) on the thread that built them.
    back: Sender<Vec<Initial>>,
    /// How the stream ended ([`StreamEnd`]'s code), as the dump's thread set it.
    end: Arc<AtomicU8>,
}

impl StreamFeed {
    /// The next chunk, waiting at most `timeout`.
    pub(super) fn recv(&self, timeout: Duration) -> Result<StreamMsg, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Hands a consumed chunk buffer back to the dump's thread.
    pub(super) fn give_back(&self, buffer: Vec<Initial>) {
        let _ = self.back.send(buffer);
    }

    /// How the stream ended (once it is disconnected).
    pub(super) fn end(&self) -> StreamEnd {
        StreamEnd::from_code(self.end.load(Ordering::SeqCst))
    }
}

struct FanoutOut {
    name: String,
    /// Bound once the plugin's worker has started ([`Fanout::bind`]).
    queue: Option<Arc<Queue>>,
    tx: Option<SyncSender<StreamMsg>>,
    back: Receiver<Vec<Initial>>,
    spare: Vec<Vec<Initial>>,
    end: Arc<AtomicU8>,
    /// Left behind: no more chunks, a replay from the mirror follows the dump.
    behind: bool,
}

impl FanoutOut {
    fn set_end(&self, end: StreamEnd) {
        self.end.store(end.code(), Ordering::SeqCst);
    }
}

/// Hands the mirror's initial dump to the plugins loaded at start-up while it is made, so that
/// a plugin's initial sync runs alongside the dump instead of after it (the source calls this on
/// its own thread; see `ekho_mirror::source::InitialStream`). Each plugin gets what it takes, in
/// apply order, with the key hashes; a plugin that cannot keep up is left behind after
/// [`STREAM_PATIENCE`] and replays from the mirror instead, so the dump never waits longer.
#[derive(Default)]
pub struct Fanout {
    outs: Vec<FanoutOut>,
}

impl Fanout {
    /// A stream end for the plugin `name`; [`Fanout::bind`] its queue once started.
    pub fn feed(&mut self, name: &str) -> StreamFeed {
        let (tx, rx) = std::sync::mpsc::sync_channel(STREAM_DEPTH);
        let (back_tx, back_rx) = std::sync::mpsc::channel();
        let end = Arc::new(AtomicU8::new(StreamEnd::Cut.code()));
        self.outs.push(FanoutOut {
            name: name.to_string(),
            queue: None,
            tx: Some(tx),
            back: back_rx,
            spare: Vec::new(),
            end: end.clone(),
            behind: false,
        });
        StreamFeed {
            rx,
            back: back_tx,
            end,
        }
    }

    /// Binds the queue of the plugin whose feed was made last (its port and kind filter).
    pub fn bind(&mut self, queue: Arc<Queue>) {
        if let Some(o) = self.outs.last_mut() {
            o.queue = Some(queue);
        }
    }

    /// Whether any plugin takes the stream.
    pub fn is_empty(&self) -> bool {
        self.outs.is_empty()
    }
}

impl ekho_mirror::source::InitialStream for Fanout {
    fn objects(&mut self, new_attrs: &[Arc<Attrs>], chunk: &mut Vec<Initial>) {
        let last = self
            .outs
            .iter()
            .rposition(|o| o.tx.is_some() && !o.behind && o.queue.is_some());
        // The links the dump shows, for the filter of the changes that follow it (this runs
        // before the mirror starts computing changes, so the table is the dump's when the first
        // change is filtered). Even a plugin left behind needs it.
        let links: Vec<&ekho_plugin_api::object::Link> = chunk
            .iter()
            .filter_map(|c| match c {
                Initial::Object(b) => match &**b {
                    Change::Add(Object::Link(l)) => Some(l),
                    _ => None,
                },
                Initial::Route(..) => None,
            })
            .collect();
        if !links.is_empty() {
            for queue in self.outs.iter().filter_map(|o| o.queue.as_ref()) {
                queue.note_links(&links);
            }
        }
        drop(links);
        for (i, out) in self.outs.iter_mut().enumerate() {
            if out.queue.is_none() {
                continue;
            }
            if out.behind || out.tx.is_none() {
                continue;
            }
            while let Ok(mut v) = out.back.try_recv() {
                v.clear();
                out.spare.push(v);
            }
            let mut mine = out.spare.pop().unwrap_or_default();
            if Some(i) == last {
                std::mem::swap(&mut mine, chunk);
            } else {
                mine.extend(chunk.iter().cloned());
            }
            // Building routes, naming, filtering, ordering and hashing are left to the plugin's
            // worker (it has the time; this thread is the dump's).
            let mut msg = (new_attrs.iter().map(|a| (**a).clone()).collect(), mine);
            let t = Instant::now();
            loop {
                match out.tx.as_ref().expect("checked").try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(m)) => {
                        if t.elapsed() >= STREAM_PATIENCE {
                            tracing::info!(
                                plugin = %out.name,
                                "plugin slower than the initial dump: left behind, it replays from the mirror once the dump is installed"
                            );
                            out.behind = true;
                            out.set_end(StreamEnd::Behind);
                            break;
                        }
                        msg = m;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        out.tx = None; // the plugin failed
                        break;
                    }
                }
            }
        }
    }

    fn done(&mut self) {
        for out in &mut self.outs {
            if out.tx.is_some() && !out.behind {
                out.set_end(StreamEnd::Complete);
            }
            out.tx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_objects::{link, route};
    use ekho_mirror::source::InitialStream;

    #[test]
    fn streamed_links_fill_the_port_table_before_changes_are_filtered() {
        // A plugin owning swp* ports, fed by the stream: a change right after the dump is
        // installed, through a port the plugin has not processed yet, must still be queued.
        let q = Queue::new(Capabilities::everything().port_names(["swp*"]), None);
        let mut f = Fanout::default();
        let feed = f.feed("p");
        f.bind(q.clone());
        let mut chunk = vec![
            Initial::Object(Box::new(Change::Add(link(1, "swp1")))),
            Initial::Object(Box::new(Change::Add(link(2, "eth0")))),
        ];
        f.objects(&[], &mut chunk);
        f.done();
        q.push_changes(&[
            Change::Add(route("10.0.0.0/24", 1, "10.1.0.1")),
            Change::Add(route("10.0.1.0/24", 2, "10.2.0.1")),
        ]);
        assert_eq!(q.pending_len(), 1, "the route via swp1");
        // The plugin's end got the chunk and a complete stream.
        assert_eq!(feed.rx.try_recv().unwrap().1.len(), 2);
        assert_eq!(feed.end(), StreamEnd::Complete);
    }
}
