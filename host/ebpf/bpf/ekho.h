/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Layout shared by ekho.bpf.c and host/ebpf/src/wire.rs (mirrored there as a #[repr(C)] struct;
 * a size assertion on both sides keeps them in step).
 */
#ifndef EKHO_H
#define EKHO_H

/* = ekho_plugin_api::NotifierKind discriminants. */
#define EKHO_KIND_FIB 0
#define EKHO_KIND_SWITCHDEV 1
#define EKHO_KIND_NETEVENT 2
#define EKHO_KIND_NETDEVICE 3
#define EKHO_KIND_NEIGHBOUR 4
#define EKHO_KIND_BRIDGE_FDB 5
#define EKHO_KIND_FIB_LOOKUP 6
#define EKHO_KIND_COUNT 7

/* Hook ids: which program produced an event (names in src/hooks.rs). */
#define EKHO_HOOK_FENTRY_FIB 0
#define EKHO_HOOK_FENTRY_SWITCHDEV 1
#define EKHO_HOOK_FENTRY_SWITCHDEV_BLOCKING 2
#define EKHO_HOOK_FENTRY_NETEVENT 3
#define EKHO_HOOK_FENTRY_NETDEV 4
/* Tracepoints: EKHO_HOOK_TP_BASE + 2 * tracepoint index + (1 if raw_tp, 0 if tp_btf). */
#define EKHO_HOOK_TP_BASE 16
#define EKHO_TP_NEIGH_UPDATE 0
#define EKHO_TP_NEIGH_UPDATE_DONE 1
#define EKHO_TP_NEIGH_CREATE 2
#define EKHO_TP_BR_FDB_ADD 3
#define EKHO_TP_BR_FDB_UPDATE 4
#define EKHO_TP_BR_FDB_EXTERNAL_LEARN_ADD 5
#define EKHO_TP_FDB_DELETE 6
#define EKHO_HOOK_TP(tp, raw) (EKHO_HOOK_TP_BASE + 2 * (tp) + (raw))
/* Room for every EKHO_HOOK_* id (the LOST_BY_HOOK map). */
#define EKHO_HOOK_COUNT 64

#define EKHO_DEV_LEN 16
#define EKHO_LLADDR_LEN 32
#define EKHO_DETAIL_LEN 16

/* One ring-buffer record (fixed size, 152 bytes). */
struct ekho_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns() */
	__u64 value;      /* event-specific number */
	__u32 hook;       /* EKHO_HOOK_* */
	__u32 event;      /* notifier value (FIB_EVENT_*, NETDEV_*, ...); 0 for tracepoints */
	__u32 ifindex;
	__u32 table;
	__u32 flags;
	__u16 vlan;
	__u16 state;
	__u16 old_state;
	__u8 kind;        /* EKHO_KIND_* */
	__u8 family;      /* AF_* of the object */
	__u8 dst_len;     /* prefix length, valid when dst_family != 0 */
	__u8 dst_family;  /* AF_INET / AF_INET6 if dst is set, else 0 */
	__u8 addr_family; /* AF_INET / AF_INET6 if addr is set, else 0 */
	__u8 route_type;
	__u8 lladdr_len;
	__u8 pad[7];
	__u8 dst[16];
	__u8 addr[16];
	__u8 lladdr[EKHO_LLADDR_LEN];
	char dev[EKHO_DEV_LEN];
	char detail[EKHO_DETAIL_LEN]; /* e.g. bridge or upper device name */
};

/* Key of the FIB lookup hit counters (LRU per-CPU hash FIB_HITS, value __u64 hits). */
struct ekho_fib_key {
	__u32 table;
	__u8 family;
	__u8 len;
	__u8 pad[2];
	__u8 addr[16];
};

#endif
