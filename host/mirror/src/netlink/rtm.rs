//! `RTM_*` message types not known to netlink-packet-route 0.34.

/// RTM_NEWNETCONF
pub const NEWNETCONF: u16 = 80;
/// RTM_DELNETCONF
pub const DELNETCONF: u16 = 81;
/// RTM_GETNETCONF
pub const GETNETCONF: u16 = 82;
/// RTM_NEWMDB
pub const NEWMDB: u16 = 84;
/// RTM_DELMDB
pub const DELMDB: u16 = 85;
/// RTM_GETMDB (also the type of MDB dump replies)
pub const GETMDB: u16 = 86;
/// RTM_NEWNEXTHOP
pub const NEWNEXTHOP: u16 = 104;
/// RTM_DELNEXTHOP
pub const DELNEXTHOP: u16 = 105;
/// RTM_GETNEXTHOP
pub const GETNEXTHOP: u16 = 106;
/// RTM_NEWVLAN
pub const NEWVLAN: u16 = 112;
/// RTM_DELVLAN
pub const DELVLAN: u16 = 113;
/// RTM_GETVLAN
pub const GETVLAN: u16 = 114;
