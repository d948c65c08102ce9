//! Netlink messages that fail to decode: counted per message type and logged at most once per
//! type every [`LOG_EVERY`], with how many went unlogged since the last line.
//!
//! The counts are process-wide (every source of the process, the rtnetlink, nftables and
//! conntrack sources and their restarts, reports here): [`Mirror::stats`](crate::Mirror::stats)
//! shows them as `undecodable`, keyed by the message type's name in the kernel's words
//! (`RTM_NEWROUTE`, `NFT_MSG_NEWCHAIN`, `IPCTNL_MSG_CT_NEW`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per message type this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The netlink protocol a message came on (its types are numbered per protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `NETLINK_ROUTE`.
    Route,
    /// `NETLINK_NETFILTER` (nfnetlink: subsystem in the high byte, message in the low byte).
    Netfilter,
}

struct PerType {
    count: u64,
    logged_at: Option<Instant>,
    unlogged: u64,
}

static UNDECODABLE: Mutex<BTreeMap<String, PerType>> = Mutex::new(BTreeMap::new());

/// Counts a message of type `message_type` that failed to decode (`what`: `dump message`,
/// `notification`), logging it unless this type was logged less than [`LOG_EVERY`] ago.
pub fn note(protocol: Protocol, message_type: u16, what: &str, error: &dyn std::fmt::Display) {
    let name = type_name(protocol, message_type);
    let now = Instant::now();
    let mut g = UNDECODABLE.lock().unwrap_or_else(|e| e.into_inner());
    let t = g.entry(name.clone()).or_insert(PerType {
        count: 0,
        logged_at: None,
        unlogged: 0,
    });
    t.count += 1;
    if t.logged_at
        .is_some_and(|at| now.duration_since(at) < LOG_EVERY)
    {
        t.unlogged += 1;
        return;
    }
    let unlogged = std::mem::take(&mut t.unlogged);
    t.logged_at = Some(now);
    let total = t.count;
    drop(g);
    if unlogged > 0 {
        tracing::warn!(
            message_type = %name,
            total,
            "undecodable {what}: {error} ({unlogged} more of this type not logged in the last {} s)",
            LOG_EVERY.as_secs()
        );
    } else {
        tracing::warn!(message_type = %name, total, "undecodable {what}: {error}");
    }
}

/// Messages that failed to decode so far, per message type name.
pub fn counts() -> BTreeMap<String, u64> {
    UNDECODABLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.count))
        .collect()
}

/// The kernel's name of a message type (`RTM_NEWROUTE`); `RTM type N`, `NFNL type 0xSSMM` for
/// one without a name here.
pub fn type_name(protocol: Protocol, t: u16) -> String {
    let name = match protocol {
        Protocol::Route => match t {
            16 => "RTM_NEWLINK",
            17 => "RTM_DELLINK",
            18 => "RTM_GETLINK",
            19 => "RTM_SETLINK",
            20 => "RTM_NEWADDR",
            21 => "RTM_DELADDR",
            22 => "RTM_GETADDR",
            24 => "RTM_NEWROUTE",
            25 => "RTM_DELROUTE",
            26 => "RTM_GETROUTE",
            28 => "RTM_NEWNEIGH",
            29 => "RTM_DELNEIGH",
            30 => "RTM_GETNEIGH",
            32 => "RTM_NEWRULE",
            33 => "RTM_DELRULE",
            34 => "RTM_GETRULE",
            80 => "RTM_NEWNETCONF",
            81 => "RTM_DELNETCONF",
            84 => "RTM_NEWMDB",
            85 => "RTM_DELMDB",
            86 => "RTM_GETMDB",
            104 => "RTM_NEWNEXTHOP",
            105 => "RTM_DELNEXTHOP",
            112 => "RTM_NEWVLAN",
            113 => "RTM_DELVLAN",
            _ => return format!("RTM type {t}"),
        },
        Protocol::Netfilter => match (t >> 8, t & 0xff) {
            // NFNL_SUBSYS_CTNETLINK
            (1, 0) => "IPCTNL_MSG_CT_NEW",
            (1, 1) => "IPCTNL_MSG_CT_GET",
            (1, 2) => "IPCTNL_MSG_CT_DELETE",
            // NFNL_SUBSYS_NFTABLES
            (10, 0) => "NFT_MSG_NEWTABLE",
            (10, 2) => "NFT_MSG_DELTABLE",
            (10, 3) => "NFT_MSG_NEWCHAIN",
            (10, 5) => "NFT_MSG_DELCHAIN",
            (10, 6) => "NFT_MSG_NEWRULE",
            (10, 8) => "NFT_MSG_DELRULE",
            (10, 15) => "NFT_MSG_NEWGEN",
            (10, 22) => "NFT_MSG_NEWFLOWTABLE",
            (10, 24) => "NFT_MSG_DELFLOWTABLE",
            _ => return format!("NFNL type {t:#06x}"),
        },
    };
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_per_type_under_the_kernels_name() {
        // Type numbers no source receives, so that other tests of the process cannot count them.
        let before = counts();
        let get = |c: &BTreeMap<String, u64>, k: &str| c.get(k).copied().unwrap_or(0);
        for _ in 0..3 {
            note(Protocol::Route, 1000, "notification", &"bad");
        }
        note(Protocol::Netfilter, 0x0aff, "notification", &"bad");
        let after = counts();
        assert_eq!(
            get(&after, "RTM type 1000") - get(&before, "RTM type 1000"),
            3
        );
        assert_eq!(
            get(&after, "NFNL type 0x0aff") - get(&before, "NFNL type 0x0aff"),
            1
        );
        assert_eq!(type_name(Protocol::Route, 24), "RTM_NEWROUTE");
        assert_eq!(type_name(Protocol::Netfilter, 0x0103), "NFNL type 0x0103");
        assert_eq!(type_name(Protocol::Netfilter, 0x0a03), "NFT_MSG_NEWCHAIN");
        assert_eq!(type_name(Protocol::Netfilter, 0x0100), "IPCTNL_MSG_CT_NEW");
    }
}
