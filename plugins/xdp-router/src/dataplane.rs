//! The BPF side: loads the committed object, owns its maps and the XDP attachments.

use crate::maps::*;
use crate::netns;
use aya::maps::lpm_trie::Key;
use aya::maps::{
    Array, DevMapHash, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray,
    PerCpuHashMap, PerCpuValues, RingBuf,
};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{ProgramError, Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};
use std::collections::HashMap;
use std::path::PathBuf;

/// The BPF object built by `bpf/build.sh` and committed (so `cargo build` needs no clang).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/xdp_router.bpf.o");

/// Name of the XDP program (the C function; also the kernel's program name, 15 chars).
pub const PROG_NAME: &str = "ekho_xdp_router";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program: {0}")]
    Program(#[from] ProgramError),
    #[error("BPF map: {0}")]
    Map(#[from] MapError),
    #[error("devmap: {0}")]
    DevMap(#[from] aya::maps::xdp::XdpMapError),
    #[error("network namespace: {0}")]
    Netns(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// How XDP programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Let the kernel choose (native when the driver supports it).
    #[default]
    Auto,
    /// Driver (native) mode only.
    Native,
    /// Generic (skb) mode.
    Skb,
}

impl XdpMode {
    fn flags(self) -> XdpFlags {
        match self {
            XdpMode::Auto => XdpFlags::default(),
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Skb => XdpFlags::SKB_MODE,
        }
    }
}

/// What the plugin's logic needs from the data path: the BPF maps and the attachments.
/// [`Dataplane`] is the real one; unit tests use an in-memory fake.
pub trait Backend: Send {
    /// Attaches the program to a port; returns a note for the log (stale program removed, mode
    /// fallback).
    fn attach(&mut self, ifindex: u32) -> Result<Option<String>, Error>;
    fn detach(&mut self, ifindex: u32) -> Result<(), Error>;
    fn attached(&self) -> Vec<u32>;
    fn set_port(&mut self, ifindex: u32, v: Option<PortVal>) -> Result<(), Error>;
    fn set_neighbour(&mut self, k: NeighKey, v: Option<NeighVal>) -> Result<(), Error>;
    fn set_route_v4(
        &mut self,
        table: u32,
        addr: [u8; 4],
        len: u8,
        v: Option<&RouteVal>,
    ) -> Result<(), Error>;
    fn set_route_v6(
        &mut self,
        table: u32,
        addr: [u8; 16],
        len: u8,
        v: Option<&RouteVal>,
    ) -> Result<(), Error>;
    fn set_route_counter(&mut self, id: u32, present: bool) -> Result<(), Error>;
    fn route_counter(&self, id: u32) -> RouteStats;
    fn port_counter(&self, ifindex: u32) -> PortStats;
    fn reasons(&self) -> Vec<(&'static str, u64)>;
    fn set_config(&mut self, v: ConfigVal) -> Result<(), Error>;
    /// Installs a flow: its counters (zeroed) and one `FLOWS` entry per direction.
    fn set_flow(&mut self, id: u32, entries: &[(FlowKey, FlowVal); 2]) -> Result<(), Error>;
    /// Removes a flow's entries and counters (absent ones are no error).
    fn remove_flow(&mut self, id: u32, keys: &[FlowKey; 2]) -> Result<(), Error>;
    /// A flow's counters; `None` when it has none (not installed).
    fn flow_stats(&self, id: u32) -> Option<FlowStats>;
    /// Detaches every program.
    fn detach_all(&mut self) -> Vec<(u32, Error)>;
}

impl Backend for Dataplane {
    fn attach(&mut self, ifindex: u32) -> Result<Option<String>, Error> {
        Dataplane::attach(self, ifindex)
    }
    fn detach(&mut self, ifindex: u32) -> Result<(), Error> {
        Dataplane::detach(self, ifindex)
    }
    fn attached(&self) -> Vec<u32> {
        Dataplane::attached(self).collect()
    }
    fn set_port(&mut self, ifindex: u32, v: Option<PortVal>) -> Result<(), Error> {
        Dataplane::set_port(self, ifindex, v)
    }
    fn set_neighbour(&mut self, k: NeighKey, v: Option<NeighVal>) -> Result<(), Error> {
        Dataplane::set_neighbour(self, k, v)
    }
    fn set_route_v4(
        &mut self,
        table: u32,
        addr: [u8; 4],
        len: u8,
        v: Option<&RouteVal>,
    ) -> Result<(), Error> {
        Dataplane::set_route_v4(self, table, addr, len, v)
    }
    fn set_route_v6(
        &mut self,
        table: u32,
        addr: [u8; 16],
        len: u8,
        v: Option<&RouteVal>,
    ) -> Result<(), Error> {
        Dataplane::set_route_v6(self, table, addr, len, v)
    }
    fn set_route_counter(&mut self, id: u32, present: bool) -> Result<(), Error> {
        Dataplane::set_route_counter(self, id, present)
    }
    fn route_counter(&self, id: u32) -> RouteStats {
        Dataplane::route_counter(self, id)
    }
    fn port_counter(&self, ifindex: u32) -> PortStats {
        Dataplane::port_counter(self, ifindex)
    }
    fn reasons(&self) -> Vec<(&'static str, u64)> {
        Dataplane::reasons(self)
    }
    fn set_config(&mut self, v: ConfigVal) -> Result<(), Error> {
        Dataplane::set_config(self, v)
    }
    fn set_flow(&mut self, id: u32, entries: &[(FlowKey, FlowVal); 2]) -> Result<(), Error> {
        Dataplane::set_flow(self, id, entries)
    }
    fn remove_flow(&mut self, id: u32, keys: &[FlowKey; 2]) -> Result<(), Error> {
        Dataplane::remove_flow(self, id, keys)
    }
    fn flow_stats(&self, id: u32) -> Option<FlowStats> {
        Dataplane::flow_stats(self, id)
    }
    fn detach_all(&mut self) -> Vec<(u32, Error)> {
        Dataplane::detach_all(self)
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    routes_v4: LpmTrie<MapData, LpmV4, RouteVal>,
    routes_v6: LpmTrie<MapData, LpmV6, RouteVal>,
    neighbours: BpfHashMap<MapData, NeighKey, NeighVal>,
    ports: BpfHashMap<MapData, u32, PortVal>,
    tx_ports: DevMapHash<MapData>,
    port_stats: PerCpuHashMap<MapData, u32, PortStats>,
    route_stats: PerCpuHashMap<MapData, u32, RouteStats>,
    reasons: PerCpuArray<MapData, u64>,
    config: Array<MapData, ConfigVal>,
    flows: BpfHashMap<MapData, FlowKey, FlowVal>,
    flow_stats: BpfHashMap<MapData, u32, FlowStats>,
    links: HashMap<u32, XdpLinkId>,
    netns: Option<PathBuf>,
    mode: XdpMode,
    ncpus: usize,
}

fn map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = ebpf
        .take_map(name)
        .ok_or_else(|| Error::Other(format!("map {name} missing from the object")))?;
    Ok(T::try_from(m)?)
}

fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Removal that tolerates an absent key.
fn ignore_absent(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        r => r,
    }
}

impl Dataplane {
    /// Loads the object and the program (not attached yet). Returns the RESOLVE and the
    /// FLOW_EVENTS ring buffers too.
    pub fn load(
        netns: Option<PathBuf>,
        mode: XdpMode,
    ) -> Result<(Dataplane, RingBuf<MapData>, RingBuf<MapData>), Error> {
        let mut ebpf = EbpfLoader::new().load(BPF_OBJECT)?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut(PROG_NAME)
                .ok_or_else(|| Error::Other(format!("program {PROG_NAME} missing")))?
                .try_into()?;
            prog.load()?;
        }
        let ring: RingBuf<MapData> = map(&mut ebpf, "RESOLVE")?;
        let flow_ring: RingBuf<MapData> = map(&mut ebpf, "FLOW_EVENTS")?;
        let ncpus = aya::util::nr_cpus().map_err(|(s, e)| Error::Other(format!("{s}: {e}")))?;
        let dp = Dataplane {
            routes_v4: map(&mut ebpf, "ROUTES_V4")?,
            routes_v6: map(&mut ebpf, "ROUTES_V6")?,
            neighbours: map(&mut ebpf, "NEIGHBOURS")?,
            ports: map(&mut ebpf, "PORTS")?,
            tx_ports: map(&mut ebpf, "TX_PORTS")?,
            port_stats: map(&mut ebpf, "PORT_STATS")?,
            route_stats: map(&mut ebpf, "ROUTE_STATS")?,
            reasons: map(&mut ebpf, "REASONS")?,
            config: map(&mut ebpf, "CONFIG")?,
            flows: map(&mut ebpf, "FLOWS")?,
            flow_stats: map(&mut ebpf, "FLOW_STATS")?,
            ebpf,
            links: HashMap::new(),
            netns,
            mode,
            ncpus,
        };
        Ok((dp, ring, flow_ring))
    }

    fn prog(&mut self) -> Result<&mut Xdp, Error> {
        Ok(self
            .ebpf
            .program_mut(PROG_NAME)
            .ok_or_else(|| Error::Other(format!("program {PROG_NAME} missing")))?
            .try_into()?)
    }

    /// Attaches the program to `ifindex` (in the configured namespace). Before attaching, an
    /// ekho program left on the port by an earlier run is detached. In `auto` mode a port whose
    /// driver refuses native XDP gets generic XDP.
    /// Returns a note when something stale was removed or the mode fell back.
    pub fn attach(&mut self, ifindex: u32) -> Result<Option<String>, Error> {
        if self.links.contains_key(&ifindex) {
            return Ok(None);
        }
        let mode = self.mode;
        let netns = self.netns.clone();
        let prog = self.prog()?;
        let (stale, id, fell_back) = netns::run_in(netns.as_deref(), move || {
            let stale = crate::stale::detach_stale(ifindex, PROG_NAME);
            let mut id = prog.attach_to_if_index(ifindex, mode.flags());
            let mut fell_back = None;
            // auto: when the driver refuses native mode (no support, MTU too large for XDP),
            // generic mode still works.
            if let (Err(e), XdpMode::Auto) = (&id, mode) {
                fell_back = Some(e.to_string());
                id = prog.attach_to_if_index(ifindex, XdpFlags::SKB_MODE);
            }
            (stale, id, fell_back)
        })?;
        let id = id?;
        self.links.insert(ifindex, id);
        let mut notes = Vec::new();
        match stale {
            Ok(Some(n)) => notes.push(n),
            Ok(None) => {}
            Err(e) => notes.push(format!("checking for a stale program failed: {e}")),
        }
        if let Some(e) = fell_back {
            notes.push(format!(
                "native XDP refused ({e}); attached in generic (skb) mode"
            ));
        }
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// Detaches the program from `ifindex` (no error when it was not attached or the device is
    /// gone: the kernel releases the link with the device).
    pub fn detach(&mut self, ifindex: u32) -> Result<(), Error> {
        if let Some(id) = self.links.remove(&ifindex) {
            self.prog()?.detach(id)?;
        }
        Ok(())
    }

    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.links.keys().copied()
    }

    pub fn set_port(&mut self, ifindex: u32, v: Option<PortVal>) -> Result<(), Error> {
        match v {
            Some(v) => {
                self.ports.insert(ifindex, v, 0)?;
                // The kernel resolves a devmap entry's ifindex in the network namespace of the
                // *updating thread*: from the host's namespace it would bind another device.
                let tx = &mut self.tx_ports;
                netns::run_in(self.netns.as_deref(), move || {
                    tx.insert(ifindex, ifindex, None, 0)
                })??;
            }
            None => {
                ignore_absent(self.ports.remove(&ifindex))?;
                ignore_absent(self.tx_ports.remove(ifindex))?;
            }
        }
        Ok(())
    }

    pub fn set_neighbour(&mut self, k: NeighKey, v: Option<NeighVal>) -> Result<(), Error> {
        match v {
            Some(v) => self.neighbours.insert(k, v, 0)?,
            None => ignore_absent(self.neighbours.remove(&k))?,
        }
        Ok(())
    }

    pub fn set_route_v4(
        &mut self,
        table: u32,
        addr: [u8; 4],
        len: u8,
        v: Option<&RouteVal>,
    ) -> Result<(), Error> {
        let k = Key::new(32 + len as u32, LpmV4 { table, addr });
        match v {
            Some(v) => self.routes_v4.insert(&k, v, 0)?,
            None => ignore_absent(self.routes_v4.remove(&k))?,
        }
        Ok(())
    }

    pub fn set_route_v6(
        &mut self,
        table: u32,
        addr: [u8; 16],
        len: u8,
        v: Option<&RouteVal>,
    ) -> Result<(), Error> {
        let k = Key::new(32 + len as u32, LpmV6 { table, addr });
        match v {
            Some(v) => self.routes_v6.insert(&k, v, 0)?,
            None => ignore_absent(self.routes_v6.remove(&k))?,
        }
        Ok(())
    }

    /// Creates (zeroed) or removes a route counter.
    pub fn set_route_counter(&mut self, id: u32, present: bool) -> Result<(), Error> {
        if present {
            let v = PerCpuValues::try_from(vec![RouteStats::default(); self.ncpus])?;
            self.route_stats.insert(id, v, 0)?;
        } else {
            ignore_absent(self.route_stats.remove(&id))?;
        }
        Ok(())
    }

    pub fn route_counter(&self, id: u32) -> RouteStats {
        match self.route_stats.get(&id, 0) {
            Ok(v) => v.iter().fold(RouteStats::default(), |a, b| RouteStats {
                packets: a.packets + b.packets,
                bytes: a.bytes + b.bytes,
            }),
            Err(_) => RouteStats::default(),
        }
    }

    pub fn port_counter(&self, ifindex: u32) -> PortStats {
        match self.port_stats.get(&ifindex, 0) {
            Ok(v) => v.iter().fold(PortStats::default(), |a, b| PortStats {
                forwarded: a.forwarded + b.forwarded,
                passed: a.passed + b.passed,
                dropped: a.dropped + b.dropped,
                forwarded_bytes: a.forwarded_bytes + b.forwarded_bytes,
            }),
            Err(_) => PortStats::default(),
        }
    }

    pub fn reasons(&self) -> Vec<(&'static str, u64)> {
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

    pub fn set_config(&mut self, v: ConfigVal) -> Result<(), Error> {
        self.config.set(0, v, 0)?;
        Ok(())
    }

    /// Installs a flow: counters first (zeroed), then both directions' entries, so a packet
    /// that finds an entry finds its counters. On failure nothing of it is left.
    pub fn set_flow(&mut self, id: u32, entries: &[(FlowKey, FlowVal); 2]) -> Result<(), Error> {
        self.flow_stats.insert(id, FlowStats::default(), 0)?;
        for (k, v) in entries {
            if let Err(e) = self.flows.insert(k, v, 0) {
                let _ = self.remove_flow(id, &[entries[0].0, entries[1].0]);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Removes a flow: entries first (no packet forwarded after), then its counters.
    pub fn remove_flow(&mut self, id: u32, keys: &[FlowKey; 2]) -> Result<(), Error> {
        for k in keys {
            ignore_absent(self.flows.remove(k))?;
        }
        ignore_absent(self.flow_stats.remove(&id))?;
        Ok(())
    }

    pub fn flow_stats(&self, id: u32) -> Option<FlowStats> {
        self.flow_stats.get(&id, 0).ok()
    }

    /// Runs the program once on `frame` as if it arrived on `ingress_ifindex`
    /// (`BPF_PROG_TEST_RUN`, in the configured namespace): returns the verdict and the frame as
    /// the program left it. Redirects are not carried out. For tests of the data path.
    pub fn test_run(
        &mut self,
        ingress_ifindex: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), Error> {
        use std::os::fd::{AsFd, AsRawFd};
        let netns = self.netns.clone();
        let fd = self.prog()?.fd()?.as_fd().as_raw_fd();
        let frame = frame.to_vec();
        netns::run_in(netns.as_deref(), move || {
            let mut out = vec![0u8; frame.len() + 256];
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex.
            let mut ctx = [0u32; 6];
            ctx[1] = frame.len() as u32;
            ctx[3] = ingress_ifindex;
            // union bpf_attr, test: prog_fd, retval, data_size_in, data_size_out, data_in,
            // data_out, repeat, duration, ctx_size_in, ctx_size_out, ctx_in, ctx_out, flags,
            // cpu, batch_size (BPF_PROG_TEST_RUN = 10).
            #[repr(C)]
            #[derive(Default)]
            struct Attr {
                prog_fd: u32,
                retval: u32,
                data_size_in: u32,
                data_size_out: u32,
                data_in: u64,
                data_out: u64,
                repeat: u32,
                duration: u32,
                ctx_size_in: u32,
                ctx_size_out: u32,
                ctx_in: u64,
                ctx_out: u64,
                flags: u32,
                cpu: u32,
                batch_size: u32,
                pad: u32,
            }
            let mut a = Attr {
                prog_fd: fd as u32,
                data_size_in: frame.len() as u32,
                data_size_out: out.len() as u32,
                data_in: frame.as_ptr() as u64,
                data_out: out.as_mut_ptr() as u64,
                repeat: 1,
                ctx_size_in: std::mem::size_of_val(&ctx) as u32,
                ctx_in: ctx.as_ptr() as u64,
                ..Default::default()
            };
            // SAFETY: `a` is a complete, zero-padded bpf_attr prefix; the buffers outlive the
            // call and their sizes are the ones given.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    10,
                    &mut a as *mut Attr,
                    std::mem::size_of::<Attr>(),
                )
            };
            if r != 0 {
                return Err(Error::Other(format!(
                    "BPF_PROG_TEST_RUN: {}",
                    std::io::Error::last_os_error()
                )));
            }
            out.truncate(a.data_size_out as usize);
            Ok((a.retval, out))
        })?
    }

    /// Detaches every program. Maps and programs are released when `self` is dropped.
    pub fn detach_all(&mut self) -> Vec<(u32, Error)> {
        let mut errs = Vec::new();
        let ids: Vec<u32> = self.links.keys().copied().collect();
        for i in ids {
            if let Err(e) = self.detach(i) {
                errs.push((i, e));
            }
        }
        errs
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}
