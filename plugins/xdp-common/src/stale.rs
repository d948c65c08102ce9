//! Finding and removing an ekho XDP program left on a port by an earlier run.
//!
//! Our own attachments are `bpf_link`s held by the process: they disappear with it, so a crashed
//! daemon normally leaves nothing behind. What can remain is a program attached through netlink
//! (`ip link set dev X xdp ...`, older kernels, other tools) or a link kept alive elsewhere (pinned,
//! or a still-running old instance). Before attaching, the plugin asks the kernel (RTM_GETLINK,
//! `IFLA_XDP`) which program is attached; when its name is ours it is removed: by netlink
//! (`IFLA_XDP_FD = -1`) for a netlink attachment, by `BPF_LINK_DETACH` for a link.
//! Must run on a thread inside the port's network namespace (see [`crate::netns`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;
const XDP_FLAGS_HW_MODE: u32 = 8;

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    Ok(fd)
}

fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn request(fd: &OwnedFd, ty: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> io::Result<Vec<u8>> {
    let mut msg = Vec::with_capacity(64);
    let len = 16 + 16 + attrs.len();
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                                // ifinfomsg
    msg.extend_from_slice(&[0u8, 0]); // family, pad
    msg.extend_from_slice(&0u16.to_ne_bytes()); // type
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // change
    msg.extend_from_slice(attrs);
    // SAFETY: valid buffer and fd.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            msg.as_ptr() as *const libc::c_void,
            msg.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 65536];
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    if buf.len() >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if err != 0 {
            return Err(io::Error::from_raw_os_error(-err));
        }
    }
    Ok(buf)
}

/// Walks netlink attributes in `b`, calling `f(type, payload)`.
fn walk(b: &[u8], mut f: impl FnMut(u16, &[u8])) {
    let mut o = 0;
    while o + 4 <= b.len() {
        let len = u16::from_ne_bytes([b[o], b[o + 1]]) as usize;
        let ty = u16::from_ne_bytes([b[o + 2], b[o + 3]]) & 0x3fff;
        if len < 4 || o + len > b.len() {
            break;
        }
        f(ty, &b[o + 4..o + len]);
        o += (len + 3) & !3;
    }
}

/// The XDP program attached to `ifindex` in this thread's namespace: (program id, attach mode).
pub fn attached_prog(ifindex: u32) -> io::Result<Option<(u32, u8)>> {
    let fd = netlink_socket()?;
    let buf = request(&fd, RTM_GETLINK, 0, ifindex, &[])?;
    if buf.len() < 32 {
        return Err(io::Error::other("short RTM_NEWLINK reply"));
    }
    let msg_len = (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(buf.len());
    let (mut id, mut mode) = (0u32, 0u8);
    walk(&buf[32..msg_len], |ty, p| {
        if ty == IFLA_XDP {
            walk(p, |t, q| match t {
                IFLA_XDP_PROG_ID if q.len() >= 4 => {
                    id = u32::from_ne_bytes([q[0], q[1], q[2], q[3]])
                }
                IFLA_XDP_ATTACHED if !q.is_empty() => mode = q[0],
                _ => {}
            });
        }
    });
    Ok((id != 0).then_some((id, mode)))
}

fn prog_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zeroed bpf_attr, large enough for every command used here.
    unsafe { crate::sys_bpf(cmd, attr) }
}

/// Detaches (BPF_LINK_DETACH) every XDP bpf_link whose program is `prog_id`.
fn detach_links_of(prog_id: u32) -> io::Result<usize> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
    const BPF_LINK_DETACH: libc::c_long = 34;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    let mut done = 0;
    let mut start = 0u32;
    loop {
        let mut a = [0u64; 16];
        a[0] = start as u64;
        if sys_bpf(BPF_LINK_GET_NEXT_ID, &mut a).is_err() {
            break;
        }
        let next = (a[0] >> 32) as u32;
        start = next;
        let mut a = [0u64; 16];
        a[0] = next as u64;
        let Ok(fd) = sys_bpf(BPF_LINK_GET_FD_BY_ID, &mut a) else {
            continue;
        };
        // SAFETY: fresh fd from the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut info = [0u64; 16];
        let mut a = [0u64; 16];
        a[0] = fd.as_raw_fd() as u32 as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
        a[1] = info.as_mut_ptr() as u64;
        if sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).is_err() {
            continue;
        }
        let ty = info[0] as u32;
        let pid = info[1] as u32;
        if ty == BPF_LINK_TYPE_XDP && pid == prog_id {
            let mut a = [0u64; 16];
            a[0] = fd.as_raw_fd() as u32 as u64;
            sys_bpf(BPF_LINK_DETACH, &mut a)?;
            done += 1;
        }
    }
    Ok(done)
}

/// Removes an XDP program named `name` from `ifindex` (this thread's namespace), if one is there.
/// Returns a description of what was removed.
pub fn detach_stale(ifindex: u32, name: &str) -> io::Result<Option<String>> {
    let Some((id, mode)) = attached_prog(ifindex)? else {
        return Ok(None);
    };
    let Some(pname) = prog_name(id) else {
        return Ok(None);
    };
    if pname != name {
        return Err(io::Error::other(format!(
            "ifindex {ifindex} already has another XDP program attached ({pname}, id {id})"
        )));
    }
    let flags = match mode {
        2 => XDP_FLAGS_SKB_MODE,
        3 => XDP_FLAGS_HW_MODE,
        _ => XDP_FLAGS_DRV_MODE,
    };
    let mut nested = Vec::new();
    attr(&mut nested, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    let mut attrs = Vec::new();
    attr(&mut attrs, IFLA_XDP | NLA_F_NESTED, &nested);
    let fd = netlink_socket()?;
    match request(&fd, RTM_SETLINK, NLM_F_ACK, ifindex, &attrs) {
        Ok(_) => Ok(Some(format!(
            "detached stale {name} (prog id {id}, netlink) from ifindex {ifindex}"
        ))),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let n = detach_links_of(id)?;
            Ok(Some(format!(
                "detached stale {name} (prog id {id}, {n} bpf_link(s)) from ifindex {ifindex}"
            )))
        }
        Err(e) => Err(e),
    }
}
