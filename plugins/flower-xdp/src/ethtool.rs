//! A port's features as `ethtool -k` shows them, read with the `SIOCETHTOOL` ioctl
//! (`ETHTOOL_GSSET_INFO` and `ETHTOOL_GSTRINGS` for the kernel's feature names, then
//! `ETHTOOL_GFEATURES` for their active bits). Run it in the port's namespace.

use std::io;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// The kernel's names (`ethtool -k` shows the first as `rx-vlan-offload`) of the features by
/// which a NIC takes VLAN tags out of the frame before XDP sees it (802.1Q, 802.1ad).
pub const RX_VLAN_FEATURES: [&str; 2] = ["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];

#[repr(C)]
struct Ifreq {
    name: [u8; 16],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

struct Sock(libc::c_int);

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

fn ioctl(sock: &Sock, name: &[u8; 16], data: *mut u32) -> io::Result<()> {
    let mut ifr = Ifreq {
        name: *name,
        data: data as *mut libc::c_void,
        _pad: [0; 16],
    };
    // SAFETY: ifr names a device and points at an ethtool command buffer sized for it.
    if unsafe { libc::ioctl(sock.0, SIOCETHTOOL as _, &mut ifr as *mut Ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether each feature in `names` is active on `ifindex` (false for a name the kernel does
/// not have).
pub fn active(ifindex: u32, names: &[&str]) -> io::Result<Vec<bool>> {
    let mut name = [0u8; 16];
    // SAFETY: IF_NAMESIZE (16) bytes of buffer.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr() as *mut libc::c_char) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = Sock(fd);
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1]
    let m = (1u64 << ETH_SS_FEATURES).to_ne_bytes();
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let mut info = [ETHTOOL_GSSET_INFO, 0, word(&m[..4]), word(&m[4..]), 0];
    ioctl(&sock, &name, info.as_mut_ptr())?;
    let mut back = [0u8; 8];
    back[..4].copy_from_slice(&info[2].to_ne_bytes());
    back[4..].copy_from_slice(&info[3].to_ne_bytes());
    if u64::from_ne_bytes(back) & (1 << ETH_SS_FEATURES) == 0 {
        return Ok(vec![false; names.len()]);
    }
    let n = info[4] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes
    let mut strings = vec![0u32; 3 + n * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_FEATURES;
    strings[2] = n as u32;
    ioctl(&sock, &name, strings.as_mut_ptr())?;
    // struct ethtool_gfeatures: cmd, size, then size blocks of (available, requested, active,
    // never_changed)
    let blocks = n.div_ceil(32);
    let mut feats = vec![0u32; 2 + 4 * blocks];
    feats[0] = ETHTOOL_GFEATURES;
    feats[1] = blocks as u32;
    ioctl(&sock, &name, feats.as_mut_ptr())?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let index = |want: &str| {
        (0..n).find(|i| {
            let s = &bytes[i * ETH_GSTRING_LEN..(i + 1) * ETH_GSTRING_LEN];
            let end = s.iter().position(|b| *b == 0).unwrap_or(ETH_GSTRING_LEN);
            &s[..end] == want.as_bytes()
        })
    };
    Ok(names
        .iter()
        .map(|w| match index(w) {
            Some(i) => feats[2 + 4 * (i / 32) + 2] & (1 << (i % 32)) != 0,
            None => false,
        })
        .collect())
}
