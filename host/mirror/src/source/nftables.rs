//! The source's nftables sockets (`NETLINK_NETFILTER`, in the mirrored netns): the event socket
//! on `NFNLGRP_NFTABLES`, and dumps of tables, chains, rules and flowtables on the request
//! socket's companion. A kernel without nf_tables (the socket or the dump refused) leaves the
//! nftables kinds empty; the rest of the mirror runs as before.

use super::{errno, nl_err, recv_dgram, recv_dump, refused, ReqSocket, SourceError};
use crate::netlink::{self, nftables};
use crate::Event;
use ekho_plugin_api::ObjectKind;
use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::{Socket, SocketAddr};
use std::os::fd::AsRawFd;

/// Whether `k` is dumped from nftables (not rtnetlink).
pub fn is_nft(k: ObjectKind) -> bool {
    matches!(k, ObjectKind::NfChain | ObjectKind::NfFlowtable)
}

fn socket() -> Result<Socket, SourceError> {
    let mut s =
        Socket::new(nftables::NETLINK_NETFILTER).map_err(|e| nl_err("nftables socket", e))?;
    s.bind_auto().map_err(|e| nl_err("nftables bind", e))?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(|e| nl_err("nftables connect", e))?;
    Ok(s)
}

/// The event socket, joined to `NFNLGRP_NFTABLES`, its receive buffer sized like the
/// rtnetlink one; `None` (logged) when the kernel refuses it.
pub fn event_socket(rcvbuf: usize) -> Option<Socket> {
    let s = match socket() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no nftables event socket: netfilter chains not mirrored");
            return None;
        }
    };
    super::set_rcvbuf(&s, rcvbuf);
    if let Err(e) = s.add_membership(nftables::NFNLGRP_NFTABLES) {
        tracing::warn!(error = %e, "cannot join NFNLGRP_NFTABLES: netfilter chains not mirrored");
        return None;
    }
    Some(s)
}

/// Receives what is queued on the event socket into `evs`; returns the messages read.
/// `Err` carries the socket's error (`ENOBUFS`: notifications lost).
pub fn drain(s: &Socket, buf: &mut Vec<u8>, evs: &mut Vec<Event>) -> std::io::Result<u64> {
    let mut count = 0;
    while let Some(n) = recv_dgram(s.as_raw_fd(), buf, false)? {
        for (h, payload) in netlink::split(&buf[..n]) {
            count += 1;
            match nftables::parse(h.message_type, payload) {
                Ok(Some(m)) => evs.push(Event::Nft(m)),
                Ok(None) => {}
                Err(e) => crate::undecodable::note(
                    crate::undecodable::Protocol::Netfilter,
                    h.message_type,
                    "nftables notification",
                    &e,
                ),
            }
        }
    }
    Ok(count)
}

impl ReqSocket {
    /// Dumps what kind `k` is derived from (tables and, for chains, chains and rules; for
    /// flowtables, flowtables), calling `f` for every message. Returns the message count and
    /// whether the ruleset changed during the dump (`NLM_F_DUMP_INTR`).
    pub(super) fn dump_nft(
        &mut self,
        k: ObjectKind,
        f: &mut dyn FnMut(Event),
    ) -> Result<(u64, bool), SourceError> {
        use nftables::msg;
        let types: &[u8] = if k == ObjectKind::NfFlowtable {
            &[msg::GETTABLE, msg::GETFLOWTABLE]
        } else {
            &[msg::GETTABLE, msg::GETCHAIN, msg::GETRULE]
        };
        if self.nft.is_none() {
            self.nft = Some(socket()?);
        }
        let mut count = 0;
        let mut intr = false;
        for &t in types {
            let (c, i) = self.dump_nft_one(nftables::msg_type(t), f)?;
            count += c;
            intr |= i;
        }
        Ok((count, intr))
    }

    fn dump_nft_one(
        &mut self,
        msg_type: u16,
        f: &mut dyn FnMut(Event),
    ) -> Result<(u64, bool), SourceError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut b = Vec::with_capacity(20);
        b.extend_from_slice(&(20u32).to_ne_bytes());
        b.extend_from_slice(&msg_type.to_ne_bytes());
        b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&nftables::DUMP_HEADER);
        let sock = self.nft.as_ref().expect("opened by dump_nft");
        sock.send(&b, 0).map_err(|e| nl_err("nftables send", e))?;
        let fd = sock.as_raw_fd();
        let mut count = 0;
        let mut intr = false;
        loop {
            let (n, truncated) =
                recv_dump(fd, &mut self.buf).map_err(|e| nl_err("nftables dump recv", e))?;
            intr |= truncated;
            for (h, payload) in netlink::split(&self.buf[..n]) {
                if h.sequence_number != seq {
                    continue;
                }
                if h.flags & 0x10 != 0 {
                    intr = true; // NLM_F_DUMP_INTR
                }
                match h.message_type {
                    NLMSG_DONE => return Ok((count, intr)),
                    NLMSG_ERROR => {
                        let code = errno(payload);
                        if code != 0 {
                            return Err(refused(
                                format!("nftables dump of type {msg_type:#x}"),
                                code,
                            ));
                        }
                        return Ok((count, intr));
                    }
                    t => {
                        count += 1;
                        match nftables::parse(t, payload) {
                            Ok(Some(m)) => f(Event::Nft(m)),
                            Ok(None) => {}
                            Err(e) => crate::undecodable::note(
                                crate::undecodable::Protocol::Netfilter,
                                t,
                                "nftables dump message",
                                &e,
                            ),
                        }
                    }
                }
            }
        }
    }
}
