//! Fast batched route writer (test support: tests and benchmarks): many `RTM_NEWROUTE` requests per `send`,
//! without per-message acknowledgement, in a given netns. Messages are built and serialized by
//! netlink-packet-route.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::net::Ipv4Addr;
use std::path::Path;

/// Adds IPv4 routes `dst/len via gateway` (table `table`) in the netns at `netns` (or the
/// caller's), `per_send` messages per `send`, no acks. Errors of individual routes are ignored
/// (they arrive as unrequested error messages nobody reads). Runs on a scratch thread so the
/// caller's netns is untouched. Returns the number of requests sent.
pub fn add_routes_v4(
    netns: Option<&Path>,
    routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    table: u32,
    per_send: usize,
) -> std::io::Result<usize> {
    let netns = netns.map(|p| p.to_path_buf());
    crate::source::run_in_netns(netns, move || -> std::io::Result<usize> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind_auto()?;
        s.connect(&SocketAddr::new(0, 0))?;
        // Replies (errors only) go unread: keep their buffer small so they are dropped.
        let mut buf = Vec::with_capacity(per_send * 64);
        let mut n = 0;
        for (i, (dst, len, gw)) in routes.iter().enumerate() {
            let mut m = RouteMessage::default();
            m.header = RouteHeader {
                address_family: AddressFamily::Inet,
                destination_prefix_length: *len,
                table: if table < 256 { table as u8 } else { 252 },
                protocol: RouteProtocol::Static,
                scope: RouteScope::Universe,
                kind: RouteType::Unicast,
                ..Default::default()
            };
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(*dst)));
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(*gw)));
            if table >= 256 {
                m.attributes.push(RouteAttribute::Table(table));
            }
            let mut h = NetlinkHeader::default();
            h.flags = NLM_F_REQUEST | NLM_F_CREATE;
            h.sequence_number = i as u32;
            let mut nl = NetlinkMessage::new(
                h,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)),
            );
            nl.finalize();
            let at = buf.len();
            buf.resize(at + nl.buffer_len(), 0);
            nl.serialize(&mut buf[at..]);
            n += 1;
            if n % per_send == 0 {
                s.send(&buf, 0)?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            s.send(&buf, 0)?;
        }
        Ok(n)
    })
    .map_err(std::io::Error::other)?
}
