//! The XDP plugins' benchmarks' traffic generator: `bpf/bench_gen.bpf.c`, run by
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` in a namespace, redirects copies of
//! one frame out of a device (a veth), so they reach its peer as XDP frames, without an skb,
//! as they would from a NIC. Each copy gets a random UDP source port out of 64 (64 flows).

use crate::{netns, xdp_prog, Error};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

/// The generator object (`bpf/bench_gen.bpf.c`, built by `bpf/build.sh`).
pub static GEN_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/bench_gen.bpf.o");

/// The frame's bytes the generator rewrites on every run: Ethernet, IPv4 without options, UDP.
pub const HEADERS: usize = 42;

/// Sends copies of `frame` (Ethernet + IPv4 + UDP, at least [`HEADERS`] bytes) out of
/// `target_ifindex` in namespace `ns`, `batch` per syscall, until `done()` says so; returns how
/// many were generated.
pub fn generate(
    ns: Option<&Path>,
    target_ifindex: u32,
    frame: &[u8],
    batch: u32,
    done: &(dyn Fn() -> bool + Sync),
) -> Result<u64, Error> {
    if frame.len() < HEADERS {
        return Err(Error::Other(format!(
            "generator frame of {} bytes: at least {HEADERS} (Ethernet, IPv4, UDP)",
            frame.len()
        )));
    }
    let mut headers = [0u8; HEADERS];
    headers.copy_from_slice(&frame[..HEADERS]);
    let data = frame.to_vec();
    netns::run_in(ns, move || -> Result<u64, Error> {
        let mut ebpf = aya::EbpfLoader::new()
            .set_global("target_ifindex", &target_ifindex, true)
            .set_global("headers", &headers, true)
            .load(GEN_OBJECT)?;
        let prog = xdp_prog(&mut ebpf, "xdp_gen")?;
        prog.load()?;
        let fd = prog.fd()?.as_fd().as_raw_fd();
        let mut total = 0u64;
        while !done() {
            // union bpf_attr, BPF_PROG_TEST_RUN (cmd 10): prog_fd, retval, data_size_in,
            // data_size_out, data_in, data_out, repeat, duration, ctx sizes/pointers, flags,
            // cpu, batch_size.
            let mut a = [0u64; 16];
            a[0] = fd as u32 as u64;
            a[1] = data.len() as u64; // data_size_in (low half of word 1)
            a[2] = data.as_ptr() as u64;
            a[4] = batch as u64;
            a[8] = 1 << 1; // BPF_F_TEST_XDP_LIVE_FRAMES
                           // SAFETY: attr is large enough and zeroed; data outlives the call.
            unsafe { crate::sys_bpf(10, &mut a) }
                .map_err(|e| Error::Other(format!("BPF_PROG_TEST_RUN live frames: {e}")))?;
            total += batch as u64;
        }
        Ok(total)
    })?
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_generator_loads() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP: loading the generator needs root (BPF)");
            return;
        }
        let mut ebpf = aya::EbpfLoader::new()
            .set_global("target_ifindex", &1u32, true)
            .load(super::GEN_OBJECT)
            .expect("load the object");
        crate::xdp_prog(&mut ebpf, "xdp_gen")
            .unwrap()
            .load()
            .expect("verifier");
    }
}
