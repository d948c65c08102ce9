//! The BPF side: loads the committed object, owns its maps and the XDP attachments.

use crate::maps::*;
use aya::maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use aya::Ebpf;
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
    /// Whether the port strips VLAN tags before XDP (`rx-vlan-offload` or
    /// `rx-vlan-stag-hw-parse` on, `ethtool -k`).
    fn rx_vlan_offload(&mut self, ifindex: u32) -> Result<bool, Error>;
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
    /// Returns once every run of the program that started before the call has ended (an RCU
    /// grace period): what a replaced generation held may be reused after it.
    fn synchronize(&mut self) -> Result<(), Error>;
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
    /// (outer array of maps, inner array): see [`RcuSync`].
    rcu: Option<RcuSync>,
}

/// An RCU grace period from user space: the kernel waits for one (`synchronize_rcu`, so for
/// every BPF program run in progress to end) when user space updates an array of maps with a
/// map (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c, since 5.0; the kernel's own
/// selftests use it for that). Two small maps of this plugin's own, not in the object.
struct RcuSync {
    outer: std::os::fd::OwnedFd,
    inner: std::os::fd::OwnedFd,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf_sys<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> Result<libc::c_long, Error> {
    // SAFETY: attr is a repr(C) prefix of union bpf_attr for cmd, its size passed with it (the
    // kernel zero-fills the rest).
    unsafe { ekho_xdp_common::sys_bpf(cmd, attr) }.map_err(|e| Error::Other(format!("{what}: {e}")))
}

impl RcuSync {
    fn new() -> Result<RcuSync, Error> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut a = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        };
        let inner = bpf_sys(
            BPF_MAP_CREATE,
            &mut a,
            "creating the grace-period inner map",
        )?;
        // SAFETY: a new fd the kernel just returned, owned by no one else.
        let inner = unsafe { OwnedFd::from_raw_fd(inner as i32) };
        let mut a = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: std::os::fd::AsRawFd::as_raw_fd(&inner) as u32,
            ..Default::default()
        };
        let outer = bpf_sys(
            BPF_MAP_CREATE,
            &mut a,
            "creating the grace-period map of maps",
        )?;
        // SAFETY: as above.
        let outer = unsafe { OwnedFd::from_raw_fd(outer as i32) };
        Ok(RcuSync { outer, inner })
    }

    fn wait(&self) -> Result<(), Error> {
        use std::os::fd::AsRawFd;
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut a = MapUpdateAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        bpf_sys(
            BPF_MAP_UPDATE_ELEM,
            &mut a,
            "waiting for an RCU grace period",
        )?;
        Ok(())
    }
}

impl Dataplane {
    /// Loads the object and the program (not attached yet).
    pub fn load(netns: Option<PathBuf>, mode: XdpMode) -> Result<Dataplane, Error> {
        let (mut ebpf, ncpus) = ekho_xdp_common::load_xdp_object(BPF_OBJECT, PROG_NAME)?;
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
            rcu: None,
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

    fn rx_vlan_offload(&mut self, ifindex: u32) -> Result<bool, Error> {
        let on = netns::run_in(self.att.netns(), move || {
            crate::ethtool::active(ifindex, &crate::ethtool::RX_VLAN_FEATURES)
        })?
        .map_err(|e| Error::Other(format!("ethtool features of ifindex {ifindex}: {e}")))?;
        Ok(on.iter().any(|b| *b))
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
        ekho_xdp_common::reason_counts(&self.reasons, &REASON_NAMES)
    }

    fn synchronize(&mut self) -> Result<(), Error> {
        if self.rcu.is_none() {
            self.rcu = Some(RcuSync::new()?);
        }
        self.rcu.as_ref().map(|r| r.wait()).unwrap_or(Ok(()))
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
