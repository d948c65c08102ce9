//! # ekho-xdp-common: what the ekho XDP plugins share
//!
//! `xdp-router` and `flower-xdp` each load one committed BPF object with aya and attach its XDP
//! program to the ports they own. The parts that are the same for both live here:
//! - [`netns`]: running an ifindex-based operation inside the ports' network namespace;
//! - [`stale`]: finding and removing an ekho program an earlier run left on a port;
//! - [`Attachments`]: attaching a program to ports (stale one removed first, generic-mode
//!   fallback in `auto` mode) and detaching it;
//! - [`XdpMode`], the `xdp_mode` config value;
//! - map helpers ([`take_map`], [`ignore_absent`], [`reason_counts`]), [`ports_netns`] (the
//!   `netns` key or the host's), and [`test_run`] (`BPF_PROG_TEST_RUN` of a
//!   program on one frame, for the plugins' data-path tests);
//! - [`btf`]: struct sizes from an object's BTF, for the unit tests that check the Rust mirrors
//!   of the map structs;
//! - [`live`]: the benchmarks' traffic generator (XDP frames offered to a port, as from a NIC).

pub mod btf;
pub mod live;
pub mod netns;
pub mod stale;

use aya::maps::MapError;
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpFlags};
use aya::Ebpf;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
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
    pub fn flags(self) -> XdpFlags {
        match self {
            XdpMode::Auto => XdpFlags::default(),
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Skb => XdpFlags::SKB_MODE,
        }
    }
}

/// Takes map `name` out of a loaded object, typed.
/// What a port owner says once it attached XDP to a veth (`ifname`): frames an XDP program
/// redirects into a veth reach its peer only through the peer's NAPI, which it has with GRO on
/// or an XDP program of its own (otherwise the kernel drops them, counted nowhere the user
/// looks); and a veth sender leaves L4 checksums to offload, which XDP does not fill in.
pub fn veth_note(ifname: &str) -> String {
    format!(
        "{ifname} is a veth: frames redirected to it reach its peer only if the peer has GRO on or an XDP program (NAPI: `ethtool -K PEER gro on`); senders on veth must fill L4 checksums (`ethtool -K DEV tx off`)"
    )
}

pub fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = ebpf
        .take_map(name)
        .ok_or_else(|| Error::Other(format!("map {name} missing from the object")))?;
    Ok(T::try_from(m)?)
}

/// The counters of a per-CPU `REASONS` array (one `u64` per reason, index `i` named
/// `names[i]`), each summed over the CPUs; a reason that cannot be read counts 0.
pub fn reason_counts(
    reasons: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    names: &[&'static str],
) -> Vec<(&'static str, u64)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = reasons
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            (*n, v)
        })
        .collect()
}

/// The namespace a plugin's ports live in: its own `netns` config key when given, else the one
/// the host mirrors (`mirrored`, from `CreateContext::netns`); an error naming `plugin` when
/// the chosen path does not exist.
pub fn ports_netns(
    own: Option<&str>,
    mirrored: Option<PathBuf>,
    plugin: &str,
) -> Result<Option<PathBuf>, String> {
    let netns = own.map(PathBuf::from).or(mirrored);
    if let Some(ns) = &netns {
        if !ns.exists() {
            return Err(format!(
                "{plugin} config: netns {} does not exist",
                ns.display()
            ));
        }
    }
    Ok(netns)
}

/// The `bpf(2)` system call: command `cmd` with `attr` as its `union bpf_attr` (its size
/// passed with it, the kernel treating the rest as zero); the call's non-negative result.
///
/// # Safety
/// `T` must be a `repr(C)` prefix of `union bpf_attr` as `cmd` reads and writes it, and every
/// pointer in it valid for what the kernel does with it during the call.
pub unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: the caller's contract above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether a map operation failed because the key is absent.
pub fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Removal that tolerates an absent key.
pub fn ignore_absent(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        r => r,
    }
}

/// Loads a BPF object and its XDP program `prog` (verified, not attached); returns the object
/// and the number of possible CPUs (the length of each per-CPU map value).
pub fn load_xdp_object(object: &[u8], prog: &str) -> Result<(Ebpf, usize), Error> {
    let mut ebpf = aya::EbpfLoader::new().load(object)?;
    xdp_prog(&mut ebpf, prog)?.load()?;
    let ncpus = aya::util::nr_cpus().map_err(|(s, e)| Error::Other(format!("{s}: {e}")))?;
    Ok((ebpf, ncpus))
}

/// The program `name` of a loaded object, as XDP.
pub fn xdp_prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, Error> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Other(format!("program {name} missing")))?
        .try_into()?)
}

/// The ports a program is attached to, as `bpf_link`s owned by the plugin (dropped with it).
pub struct Attachments {
    prog_name: &'static str,
    links: HashMap<u32, XdpLinkId>,
    netns: Option<PathBuf>,
    mode: XdpMode,
}

impl Attachments {
    /// `prog_name`: the XDP program's name in the object (also the kernel's name for it, which
    /// [`stale`] looks for); `netns`: the ports' namespace, `None` for the current one.
    pub fn new(prog_name: &'static str, netns: Option<PathBuf>, mode: XdpMode) -> Attachments {
        Attachments {
            prog_name,
            links: HashMap::new(),
            netns,
            mode,
        }
    }

    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// Attaches the program to `ifindex` (in the configured namespace). Before attaching, an
    /// ekho program of the same name left on the port by an earlier run is detached. In `auto`
    /// mode a port whose driver refuses native XDP gets generic XDP.
    /// Returns a note when something stale was removed or the mode fell back.
    pub fn attach(&mut self, ebpf: &mut Ebpf, ifindex: u32) -> Result<Option<String>, Error> {
        if self.links.contains_key(&ifindex) {
            return Ok(None);
        }
        let mode = self.mode;
        let name = self.prog_name;
        let prog = xdp_prog(ebpf, name)?;
        let (stale, id, fell_back) = netns::run_in(self.netns.as_deref(), move || {
            let stale = stale::detach_stale(ifindex, name);
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
    pub fn detach(&mut self, ebpf: &mut Ebpf, ifindex: u32) -> Result<(), Error> {
        if let Some(id) = self.links.remove(&ifindex) {
            xdp_prog(ebpf, self.prog_name)?.detach(id)?;
        }
        Ok(())
    }

    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.links.keys().copied()
    }

    /// Detaches every program; returns the ports that failed.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) -> Vec<(u32, Error)> {
        let mut errs = Vec::new();
        let ids: Vec<u32> = self.links.keys().copied().collect();
        for i in ids {
            if let Err(e) = self.detach(ebpf, i) {
                errs.push((i, e));
            }
        }
        errs
    }
}

/// Runs `prog` once on `frame` as if it arrived on `ingress_ifindex` (`BPF_PROG_TEST_RUN`, in
/// namespace `netns`): returns the verdict and the frame as the program left it. Redirects are
/// not carried out. For tests of a data path.
pub fn test_run(
    prog: &Xdp,
    netns: Option<&Path>,
    ingress_ifindex: u32,
    frame: &[u8],
) -> Result<(u32, Vec<u8>), Error> {
    let fd = prog.fd()?.as_fd().as_raw_fd();
    let frame = frame.to_vec();
    netns::run_in(netns, move || {
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
        unsafe { sys_bpf(10, &mut a) }
            .map_err(|e| Error::Other(format!("BPF_PROG_TEST_RUN: {e}")))?;
        out.truncate(a.data_size_out as usize);
        Ok((a.retval, out))
    })?
}
