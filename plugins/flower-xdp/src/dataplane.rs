//! The BPF side: loads the committed object, owns its maps and the XDP attachments.

use crate::maps::*;
use aya::maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use aya::{Ebpf, EbpfLoader};
use ekho_xdp_common::{ignore_absent, netns, take_map, xdp_prog, Attachments};
pub use ekho_xdp_common::{Error, XdpMode};
use std::path::PathBuf;

/// The BPF object built by `bpf/build.sh` and committed (so `cargo build` needs no clang).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/flower_xdp.bpf.o");

/// Name of the XDP program (the C function; also the kernel's program name, 15 chars).
pub const PROG_NAME: &str = "ekho_flower_xdp";

/// `BPF_F_LOCK` (uapi bpf.h): update a value holding a `bpf_spin_lock` under that lock.
const BPF_F_LOCK: u64 = 4;

/// What the plugin's logic needs from the data path. [`Dataplane`] is the real one; unit tests
/// use an in-memory fake.
pub trait Backend: Send {
    fn attach(&mut self, ifindex: u32) -> Result<Option<String>, Error>;
    fn detach(&mut self, ifindex: u32) -> Result<(), Error>;
    /// Adds (`Some`) or removes a port: `PORTS` (its live generation) and the `TX_PORTS`
    /// devmap entry redirects use.
    fn set_port(&mut self, ifindex: u32, v: Option<PortVal>) -> Result<(), Error>;
    /// Flips a port's live generation (`PORTS`, one atomic update).
    fn set_gen(&mut self, ifindex: u32, v: PortVal) -> Result<(), Error>;
    fn set_rule(&mut self, slot: u32, r: &Rule) -> Result<(), Error>;
    fn set_chain(&mut self, k: ChainKey, v: Option<ChainVal>) -> Result<(), Error>;
    /// Zeroes a filter's counters (a new filter in a reused slot).
    fn reset_stats(&mut self, id: u32) -> Result<(), Error>;
    fn stats(&self, id: u32) -> FilterStats;
    /// Writes a police bucket: parameters and a full bucket.
    fn set_police(&mut self, id: u32, p: &Police) -> Result<(), Error>;
    fn reasons(&self) -> Vec<(&'static str, u64)>;
    fn detach_all(&mut self) -> Vec<(u32, Error)>;
}

pub struct Dataplane {
    ebpf: Ebpf,
    rules: Array<MapData, Rule>,
    chains: BpfHashMap<MapData, ChainKey, ChainVal>,
    ports: BpfHashMap<MapData, u32, PortVal>,
    tx_ports: DevMapHash<MapData>,
    filter_stats: PerCpuArray<MapData, FilterStats>,
    policers: Array<MapData, Police>,
    reasons: PerCpuArray<MapData, u64>,
    att: Attachments,
    ncpus: usize,
}

impl Dataplane {
    /// Loads the object and the program (not attached yet).
    pub fn load(netns: Option<PathBuf>, mode: XdpMode) -> Result<Dataplane, Error> {
        let mut ebpf = EbpfLoader::new().load(BPF_OBJECT)?;
        xdp_prog(&mut ebpf, PROG_NAME)?.load()?;
        let ncpus = aya::util::nr_cpus().map_err(|(s, e)| Error::Other(format!("{s}: {e}")))?;
        Ok(Dataplane {
            rules: take_map(&mut ebpf, "RULES")?,
            chains: take_map(&mut ebpf, "CHAINS")?,
            ports: take_map(&mut ebpf, "PORTS")?,
            tx_ports: take_map(&mut ebpf, "TX_PORTS")?,
            filter_stats: take_map(&mut ebpf, "FILTER_STATS")?,
            policers: take_map(&mut ebpf, "POLICERS")?,
            reasons: take_map(&mut ebpf, "REASONS")?,
            ebpf,
            att: Attachments::new(PROG_NAME, netns, mode),
            ncpus,
        })
    }

    /// Runs the program once on `frame` as if it arrived on `ingress_ifindex`
    /// (`BPF_PROG_TEST_RUN`, in the configured namespace): the verdict and the frame as the
    /// program left it (redirects are not carried out). For tests of the data path.
    pub fn test_run(
        &mut self,
        ingress_ifindex: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), Error> {
        let prog = xdp_prog(&mut self.ebpf, PROG_NAME)?;
        ekho_xdp_common::test_run(prog, self.att.netns(), ingress_ifindex, frame)
    }

    /// The loaded program (the benchmark runs it with live frames).
    pub fn program(&mut self) -> Result<&mut aya::programs::Xdp, Error> {
        xdp_prog(&mut self.ebpf, PROG_NAME)
    }
}

impl Backend for Dataplane {
    fn attach(&mut self, ifindex: u32) -> Result<Option<String>, Error> {
        self.att.attach(&mut self.ebpf, ifindex)
    }

    fn detach(&mut self, ifindex: u32) -> Result<(), Error> {
        self.att.detach(&mut self.ebpf, ifindex)
    }

    fn set_port(&mut self, ifindex: u32, v: Option<PortVal>) -> Result<(), Error> {
        match v {
            Some(v) => {
                // The kernel resolves a devmap entry's ifindex in the namespace of the updating
                // thread: it must be the ports' one.
                let tx = &mut self.tx_ports;
                netns::run_in(self.att.netns(), move || {
                    tx.insert(ifindex, ifindex, None, 0)
                })??;
                self.ports.insert(ifindex, v, 0)?;
            }
            None => {
                ignore_absent(self.ports.remove(&ifindex))?;
                ignore_absent(self.tx_ports.remove(ifindex))?;
            }
        }
        Ok(())
    }

    fn set_gen(&mut self, ifindex: u32, v: PortVal) -> Result<(), Error> {
        self.ports.insert(ifindex, v, 0)?;
        Ok(())
    }

    fn set_rule(&mut self, slot: u32, r: &Rule) -> Result<(), Error> {
        self.rules.set(slot, r, 0)?;
        Ok(())
    }

    fn set_chain(&mut self, k: ChainKey, v: Option<ChainVal>) -> Result<(), Error> {
        match v {
            Some(v) => self.chains.insert(k, v, 0)?,
            None => ignore_absent(self.chains.remove(&k))?,
        }
        Ok(())
    }

    fn reset_stats(&mut self, id: u32) -> Result<(), Error> {
        let v = PerCpuValues::try_from(vec![FilterStats::default(); self.ncpus])?;
        self.filter_stats.set(id, v, 0)?;
        Ok(())
    }

    fn stats(&self, id: u32) -> FilterStats {
        match self.filter_stats.get(&id, 0) {
            Ok(v) => v.iter().fold(FilterStats::default(), |a, b| FilterStats {
                packets: a.packets + b.packets,
                bytes: a.bytes + b.bytes,
                drops: a.drops + b.drops,
                lastused: a.lastused.max(b.lastused),
            }),
            Err(_) => FilterStats::default(),
        }
    }

    fn set_police(&mut self, id: u32, p: &Police) -> Result<(), Error> {
        // BPF_F_LOCK: the kernel takes the value's bpf_spin_lock for the copy, as
        // police_conforms does; without it a packet could see a half-written bucket.
        self.policers.set(id, p, BPF_F_LOCK)?;
        Ok(())
    }

    fn reasons(&self) -> Vec<(&'static str, u64)> {
        REASON_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let v = self
                    .reasons
                    .get(&(i as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*n, v)
            })
            .collect()
    }

    fn detach_all(&mut self) -> Vec<(u32, Error)> {
        self.att.detach_all(&mut self.ebpf)
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.att.detach_all(&mut self.ebpf);
    }
}
