//! The ring-buffer record of `bpf/ekho.h` and its decoding into [`NotifierEvent`].

use crate::hooks;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::{Family, IpAddress, IpPrefix, LinkAddr, RouteType};
use ekho_plugin_api::NotifierEvent;

/// `struct ekho_event` (152 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawEvent {
    pub ts_ns: u64,
    pub value: u64,
    pub hook: u32,
    pub event: u32,
    pub ifindex: u32,
    pub table: u32,
    pub flags: u32,
    pub vlan: u16,
    pub state: u16,
    pub old_state: u16,
    pub kind: u8,
    pub family: u8,
    pub dst_len: u8,
    pub dst_family: u8,
    pub addr_family: u8,
    pub route_type: u8,
    pub lladdr_len: u8,
    pub pad: [u8; 7],
    pub dst: [u8; 16],
    pub addr: [u8; 16],
    pub lladdr: [u8; 32],
    pub dev: [u8; 16],
    pub detail: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<RawEvent>() == 152);

/// `struct ekho_fib_key` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FibKey {
    pub table: u32,
    pub family: u8,
    pub len: u8,
    pub pad: [u8; 2],
    pub addr: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<FibKey>() == 24);

// SAFETY: plain-old-data, every bit pattern valid.
unsafe impl aya::Pod for FibKey {}

/// Data part of the `ROUTES4` LPM-trie key (`struct ekho_lpm4_key` without `prefixlen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Lpm4 {
    pub table: u32,
    pub addr: [u8; 4],
}

// SAFETY: plain-old-data without padding, every bit pattern valid.
unsafe impl aya::Pod for Lpm4 {}

impl RawEvent {
    /// Reads a record from ring-buffer bytes (`None` if too short).
    pub fn from_bytes(b: &[u8]) -> Option<RawEvent> {
        if b.len() < std::mem::size_of::<RawEvent>() {
            return None;
        }
        // SAFETY: length checked; RawEvent is repr(C) POD, read_unaligned copes with alignment.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const RawEvent) })
    }

    /// The notifier kind of this record (`None` for an unknown discriminant).
    pub fn notifier_kind(&self) -> Option<ekho_plugin_api::NotifierKind> {
        hooks::kind_from_u8(self.kind)
    }

    pub fn decode(&self) -> Option<NotifierEvent> {
        let kind = self.notifier_kind()?;
        let (hook, event) = hooks::names(self.hook, self.event);
        let lladdr_len = (self.lladdr_len as usize).min(self.lladdr.len());
        Some(NotifierEvent {
            kind,
            hook: hook.into(),
            event: event.into(),
            timestamp_ns: self.ts_ns,
            ifindex: self.ifindex,
            dev: c_string(&self.dev),
            family: Family(self.family),
            dst: ip(self.dst_family, &self.dst)
                .map(|a| IpPrefix::new(a, self.dst_len))
                .into(),
            addr: ip(self.addr_family, &self.addr).into(),
            table: self.table,
            route_type: RouteType(self.route_type),
            lladdr: LinkAddr::new(&self.lladdr[..lladdr_len]),
            vlan: self.vlan,
            state: self.state,
            old_state: self.old_state,
            flags: self.flags,
            value: self.value,
            detail: c_string(&self.detail),
        })
    }
}

/// An address of `family` (AF_INET 2, AF_INET6 10) from the first bytes of `b`.
pub(crate) fn ip(family: u8, b: &[u8; 16]) -> Option<IpAddress> {
    match family {
        2 => Some(IpAddress::V4([b[0], b[1], b[2], b[3]])),
        10 => Some(IpAddress::V6(*b)),
        _ => None,
    }
}

fn c_string(b: &[u8]) -> RString {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekho_plugin_api::NotifierKind;

    fn raw() -> RawEvent {
        // SAFETY: all-zero is a valid RawEvent.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn decodes_a_neighbour_record() {
        let mut r = raw();
        r.ts_ns = 42;
        r.kind = NotifierKind::Neighbour.raw() as u8;
        r.hook = hooks::HOOK_TP_BASE; // tp_btf/neigh_update
        r.ifindex = 7;
        r.dev[..5].copy_from_slice(b"veth0");
        r.family = 2;
        r.addr_family = 2;
        r.addr[..4].copy_from_slice(&[10, 9, 0, 2]);
        r.lladdr_len = 6;
        r.lladdr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        r.state = 0x80;
        r.old_state = 0x01;
        let bytes: [u8; 152] = unsafe { std::mem::transmute(r) };
        let ev = RawEvent::from_bytes(&bytes).unwrap().decode().unwrap();
        assert_eq!(ev.kind, NotifierKind::Neighbour);
        assert_eq!(ev.hook.as_str(), "tp_btf/neigh_update");
        assert_eq!(ev.event.as_str(), "neigh_update");
        assert_eq!(ev.dev.as_str(), "veth0");
        assert_eq!(ev.addr.into_option(), Some(IpAddress::V4([10, 9, 0, 2])));
        assert_eq!(ev.lladdr.to_string(), "02:00:00:00:00:01");
        assert_eq!((ev.state, ev.old_state, ev.timestamp_ns), (0x80, 0x01, 42));
        assert!(ev.dst.is_none());
    }

    #[test]
    fn decodes_a_fib_record_and_rejects_garbage() {
        let mut r = raw();
        r.kind = NotifierKind::Fib.raw() as u8;
        r.hook = hooks::HOOK_FENTRY_FIB;
        r.event = 2;
        r.dst_family = 10;
        r.dst_len = 64;
        r.dst[0] = 0x20;
        r.dst[1] = 0x01;
        r.table = 254;
        let ev = r.decode().unwrap();
        assert_eq!(ev.event.as_str(), "FIB_EVENT_ENTRY_ADD");
        assert_eq!(ev.dst.into_option().unwrap().to_route_string(), "2001::/64");
        r.kind = 200;
        assert!(r.decode().is_none());
        assert!(RawEvent::from_bytes(&[0u8; 10]).is_none());
    }
}
