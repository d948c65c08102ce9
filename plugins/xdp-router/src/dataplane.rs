//! The BPF side: loads the committed object, owns its maps and the XDP attachments.

use crate::maps::*;
use crate::netns;
use aya::maps::lpm_trie::Key;
use aya::maps::{
    Array, DevMapHash, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap,
    PerCpuValues, RingBuf,
};
use aya::Ebpf;
use ekho_xdp_common::{ignore_absent, take_map as map, xdp_prog, Attachments};
pub use ekho_xdp_common::{Error, XdpMode};
use std::path::PathBuf;

/// The BPF object built by `bpf/build.sh` and committed (so `cargo build` needs no clang).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/xdp_router.bpf.o");

/// Name of the XDP program (the C function; also the kernel's program name, 15 chars).
pub const PROG_NAME: &str = "ekho_xdp_router";

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
    att: Attachments,
    ncpus: usize,
}

impl Dataplane {
    /// Loads the object and the program (not attached yet). Returns the RESOLVE and the
    /// FLOW_EVENTS ring buffers too.
    pub fn load(
        netns: Option<PathBuf>,
        mode: XdpMode,
    ) -> Result<(Dataplane, RingBuf<MapData>, RingBuf<MapData>), Error> {
        let (mut ebpf, ncpus) = ekho_xdp_common::load_xdp_object(BPF_OBJECT, PROG_NAME)?;
        let ring: RingBuf<MapData> = map(&mut ebpf, "RESOLVE")?;
        let flow_ring: RingBuf<MapData> = map(&mut ebpf, "FLOW_EVENTS")?;
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
            att: Attachments::new(PROG_NAME, netns, mode),
            ncpus,
        };
        Ok((dp, ring, flow_ring))
    }

    /// Attaches the program to `ifindex` (in the configured namespace): see
    /// [`Attachments::attach`]. Returns a note when something stale was removed or the mode
    /// fell back.
    pub fn attach(&mut self, ifindex: u32) -> Result<Option<String>, Error> {
        self.att.attach(&mut self.ebpf, ifindex)
    }

    /// Detaches the program from `ifindex` (no error when it was not attached or the device is
    /// gone).
    pub fn detach(&mut self, ifindex: u32) -> Result<(), Error> {
        self.att.detach(&mut self.ebpf, ifindex)
    }

    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.att.attached()
    }

    pub fn set_port(&mut self, ifindex: u32, v: Option<PortVal>) -> Result<(), Error> {
        match v {
            Some(v) => {
                self.ports.insert(ifindex, v, 0)?;
                // The kernel resolves a devmap entry's ifindex in the network namespace of the
                // *updating thread*: from the host's namespace it would bind another device.
                let tx = &mut self.tx_ports;
                netns::run_in(self.att.netns(), move || {
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
        ekho_xdp_common::reason_counts(&self.reasons, &REASON_NAMES)
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
        let prog = xdp_prog(&mut self.ebpf, PROG_NAME)?;
        ekho_xdp_common::test_run(prog, self.att.netns(), ingress_ifindex, frame)
    }

    /// Detaches every program. Maps and programs are released when `self` is dropped.
    pub fn detach_all(&mut self) -> Vec<(u32, Error)> {
        self.att.detach_all(&mut self.ebpf)
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}
