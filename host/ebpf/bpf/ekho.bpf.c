// SPDX-License-Identifier: GPL-2.0
/*
 * ekho's kernel side: notifier chains (fentry) and neighbour / bridge-FDB / FIB-lookup tracepoints
 * (tp_btf, with raw_tp twins), filtered to one network namespace by the namespace of the object's
 * device, delivered through the EVENTS ring buffer.
 *
 * Rebuild: host/ebpf/bpf/build.sh (clang -target bpf, CO-RE against the committed vmlinux.h).
 *
 * Every kernel read goes through BPF_CORE_READ / bpf_probe_read_kernel, never a direct
 * dereference: the same handlers then verify both as fentry/tp_btf (BTF pointers) and as raw_tp
 * (plain scalars), which lets the raw_tp "verify_*" twins check the fentry code on kernels that
 * refuse fentry.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "ekho.h"

char LICENSE[] SEC("license") = "GPL";

_Static_assert(sizeof(struct ekho_event) == 152, "ekho_event layout changed: update src/wire.rs");
_Static_assert(sizeof(struct ekho_fib_key) == 24, "ekho_fib_key layout changed: update src/wire.rs");

#define AF_INET 2
#define AF_INET6 10
#define AF_BRIDGE 7

/* Inode of the network namespace whose events are kept (stat of /proc/self/ns/net or
 * /run/netns/NAME); set by the loader. 0 keeps every namespace. */
const volatile __u32 target_netns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} EVENTS SEC(".maps");

/* Failed ring-buffer reservations, per CPU, indexed by EKHO_KIND_*. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EKHO_KIND_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} LOST SEC(".maps");

/* The same failed reservations, per CPU, indexed by EKHO_HOOK_* (the hook that lost them). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EKHO_HOOK_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} LOST_BY_HOOK SEC(".maps");

/* Route lookup hits: IPv6 per matched prefix, IPv4 per destination (see fib_table_lookup). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct ekho_fib_key);
	__type(value, __u64);
} FIB_HITS SEC(".maps");

/* Types absent from some kernels' BTF (no CONFIG_NET_SWITCHDEV): local CO-RE definitions; code
 * using them is guarded by bpf_core_type_exists() so it is dropped where they do not exist. */
/* `id` is an enum, as in the kernel: CO-RE refuses an int field for an enum one (the relocation
 * fails and the loader poisons the read), which first showed on 6.1, the first kernel tested
 * with CONFIG_NET_SWITCHDEV. Only the kind matters for the match, not the enum's values. */
enum switchdev_obj_id___ekho { SWITCHDEV_OBJ_ID_UNDEFINED___ekho };

struct switchdev_obj___ekho {
	struct net_device *orig_dev;
	enum switchdev_obj_id___ekho id;
	__u32 flags;
} __attribute__((preserve_access_index));

struct switchdev_obj_port_vlan___ekho {
	struct switchdev_obj___ekho obj;
	__u16 flags;
	__u16 vid;
} __attribute__((preserve_access_index));

struct switchdev_obj_port_mdb___ekho {
	struct switchdev_obj___ekho obj;
	unsigned char addr[6];
	__u16 vid;
} __attribute__((preserve_access_index));

struct switchdev_notifier_port_obj_info___ekho {
	struct switchdev_notifier_info info;
	const struct switchdev_obj___ekho *obj;
} __attribute__((preserve_access_index));

struct switchdev_attr___ekho {
	struct net_device *orig_dev;
	enum switchdev_attr_id id;
	__u32 flags;
	union {
		__u8 stp_state;
		bool vlan_filtering;
		__u64 ageing_time;
	} u;
} __attribute__((preserve_access_index));

struct switchdev_notifier_port_attr_info___ekho {
	struct switchdev_notifier_info info;
	const struct switchdev_attr___ekho *attr;
} __attribute__((preserve_access_index));

#define SWITCHDEV_OBJ_ID_PORT_VLAN 1
#define SWITCHDEV_OBJ_ID_PORT_MDB 2
#define SWITCHDEV_OBJ_ID_HOST_MDB 3

/* ---------------------------------------------------------------------------------------- */

static __always_inline bool net_ok(struct net *net)
{
	if (!target_netns)
		return true;
	if (!net)
		return false;
	return BPF_CORE_READ(net, ns.inum) == target_netns;
}

static __always_inline bool dev_ok(struct net_device *dev)
{
	if (!target_netns)
		return true;
	if (!dev)
		return false;
	return BPF_CORE_READ(dev, nd_net.net, ns.inum) == target_netns;
}

static __always_inline struct ekho_event *reserve(__u8 kind, __u32 hook)
{
	struct ekho_event *e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		__u32 k = kind;
		__u64 *lost = bpf_map_lookup_elem(&LOST, &k);
		if (lost)
			*lost += 1;
		lost = bpf_map_lookup_elem(&LOST_BY_HOOK, &hook);
		if (lost)
			*lost += 1;
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->hook = hook;
	return e;
}

static __always_inline void fill_dev(struct ekho_event *e, struct net_device *dev)
{
	if (!dev)
		return;
	e->ifindex = BPF_CORE_READ(dev, ifindex);
	BPF_CORE_READ_STR_INTO(&e->dev, dev, name);
}

static __always_inline void read_lladdr(struct ekho_event *e, const void *src, __u32 len)
{
	if (!src)
		return;
	if (len > EKHO_LLADDR_LEN)
		len = EKHO_LLADDR_LEN;
	if (bpf_probe_read_kernel(e->lladdr, len, src) == 0)
		e->lladdr_len = len;
}

static __always_inline void read_addr(struct ekho_event *e, __u8 family, const void *src)
{
	if (!src)
		return;
	if (family == AF_INET) {
		if (bpf_probe_read_kernel(e->addr, 4, src) == 0)
			e->addr_family = AF_INET;
	} else if (family == AF_INET6) {
		if (bpf_probe_read_kernel(e->addr, 16, src) == 0)
			e->addr_family = AF_INET6;
	}
}

/* Family, address, link-layer address, state and device of a neighbour. */
static __always_inline void fill_neigh(struct ekho_event *e, struct neighbour *n)
{
	struct net_device *dev = BPF_CORE_READ(n, dev);
	fill_dev(e, dev);
	e->family = BPF_CORE_READ(n, tbl, family);
	/* primary_key is a flexible array: take its offset, do not index it (aya CO-RE bug). */
	const void *key = (const void *)n + bpf_core_field_offset(struct neighbour, primary_key);
	read_addr(e, e->family, key);
	e->state = BPF_CORE_READ(n, nud_state);
	e->flags = BPF_CORE_READ(n, flags);
	read_lladdr(e, (const void *)n + bpf_core_field_offset(struct neighbour, ha),
		    BPF_CORE_READ(dev, addr_len));
}

/* ----------------------------- neighbour tracepoints --------------------------------------- */

static __always_inline int on_neigh_update(__u32 hook, struct neighbour *n, const u8 *lladdr,
					   __u8 new_state, __u32 flags, __u32 nlmsg_pid)
{
	struct net_device *dev = BPF_CORE_READ(n, dev);
	if (!dev_ok(dev))
		return 0;
	struct ekho_event *e = reserve(EKHO_KIND_NEIGHBOUR, hook);
	if (!e)
		return 0;
	fill_neigh(e, n);
	/* The tracepoint fires before the update: the neighbour still holds the old state. */
	e->old_state = e->state;
	e->state = new_state;
	e->flags = flags;
	e->value = nlmsg_pid;
	if (lladdr) {
		e->lladdr_len = 0;
		read_lladdr(e, lladdr, BPF_CORE_READ(dev, addr_len));
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_neigh_update_done(__u32 hook, struct neighbour *n, int err)
{
	if (!dev_ok(BPF_CORE_READ(n, dev)))
		return 0;
	struct ekho_event *e = reserve(EKHO_KIND_NEIGHBOUR, hook);
	if (!e)
		return 0;
	fill_neigh(e, n);
	e->value = (__u64)(__s64)err;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_neigh_create(__u32 hook, struct neigh_table *tbl,
					   struct net_device *dev, const void *pkey,
					   const struct neighbour *n, bool exempt)
{
	if (!dev_ok(dev))
		return 0;
	struct ekho_event *e = reserve(EKHO_KIND_NEIGHBOUR, hook);
	if (!e)
		return 0;
	fill_dev(e, dev);
	e->family = BPF_CORE_READ(tbl, family);
	read_addr(e, e->family, pkey);
	if (n)
		e->state = BPF_CORE_READ(n, nud_state);
	e->value = exempt;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/neigh_update")
int BPF_PROG(btf_neigh_update, struct neighbour *n, const u8 *lladdr, u8 new, u32 flags, u32 pid)
{
	return on_neigh_update(EKHO_HOOK_TP(EKHO_TP_NEIGH_UPDATE, 0), n, lladdr, new, flags, pid);
}

SEC("raw_tp/neigh_update")
int BPF_PROG(raw_neigh_update, struct neighbour *n, const u8 *lladdr, u8 new, u32 flags, u32 pid)
{
	return on_neigh_update(EKHO_HOOK_TP(EKHO_TP_NEIGH_UPDATE, 1), n, lladdr, new, flags, pid);
}

SEC("tp_btf/neigh_update_done")
int BPF_PROG(btf_neigh_update_done, struct neighbour *n, int err)
{
	return on_neigh_update_done(EKHO_HOOK_TP(EKHO_TP_NEIGH_UPDATE_DONE, 0), n, err);
}

SEC("raw_tp/neigh_update_done")
int BPF_PROG(raw_neigh_update_done, struct neighbour *n, int err)
{
	return on_neigh_update_done(EKHO_HOOK_TP(EKHO_TP_NEIGH_UPDATE_DONE, 1), n, err);
}

/* The key argument is `const void *`: 6.1 refuses to load it from a tp_btf context ("arg2 type
 * UNKNOWN is not a struct": its btf_ctx_access does not see a pointer to const void as a pointer
 * to void), so it is copied out of the context with a helper instead of a context load; the other
 * arguments are structs and scalars, loaded as usual. */
SEC("tp_btf/neigh_create")
int btf_neigh_create(unsigned long long *ctx)
{
	const void *pkey = 0;
	bpf_probe_read_kernel(&pkey, sizeof(pkey), &ctx[2]);
	return on_neigh_create(EKHO_HOOK_TP(EKHO_TP_NEIGH_CREATE, 0), (void *)ctx[0],
			       (void *)ctx[1], pkey, (void *)ctx[3], ctx[4]);
}

SEC("raw_tp/neigh_create")
int BPF_PROG(raw_neigh_create, struct neigh_table *tbl, struct net_device *dev, const void *pkey,
	     const struct neighbour *n, bool exempt)
{
	return on_neigh_create(EKHO_HOOK_TP(EKHO_TP_NEIGH_CREATE, 1), tbl, dev, pkey, n, exempt);
}

/* ----------------------------- bridge FDB tracepoints -------------------------------------- */

static __always_inline struct ekho_event *fdb_event(__u32 hook, struct net_device *dev,
						    struct net_bridge *br, const void *mac, __u16 vid)
{
	if (!dev_ok(dev))
		return 0;
	struct ekho_event *e = reserve(EKHO_KIND_BRIDGE_FDB, hook);
	if (!e)
		return 0;
	fill_dev(e, dev);
	e->family = AF_BRIDGE;
	e->vlan = vid;
	read_lladdr(e, mac, 6);
	if (br)
		BPF_CORE_READ_STR_INTO(&e->detail, br, dev, name);
	return e;
}

static __always_inline int on_br_fdb_add(__u32 hook, struct ndmsg *ndm, struct net_device *dev,
					 const unsigned char *addr, u16 vid, u16 nlh_flags)
{
	struct ekho_event *e = fdb_event(hook, dev, 0, addr, vid);
	if (!e)
		return 0;
	e->state = BPF_CORE_READ(ndm, ndm_state);
	e->flags = BPF_CORE_READ(ndm, ndm_flags);
	e->value = nlh_flags;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_br_fdb_update(__u32 hook, struct net_bridge *br,
					    struct net_bridge_port *p, const unsigned char *addr,
					    u16 vid, unsigned long flags)
{
	struct net_device *dev = p ? BPF_CORE_READ(p, dev) : BPF_CORE_READ(br, dev);
	struct ekho_event *e = fdb_event(hook, dev, br, addr, vid);
	if (!e)
		return 0;
	e->flags = (__u32)flags;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_fdb_delete(__u32 hook, struct net_bridge *br,
					 struct net_bridge_fdb_entry *f)
{
	struct net_bridge_port *p = BPF_CORE_READ(f, dst);
	struct net_device *dev = p ? BPF_CORE_READ(p, dev) : BPF_CORE_READ(br, dev);
	const void *mac = __builtin_preserve_access_index(&f->key.addr.addr);
	struct ekho_event *e = fdb_event(hook, dev, br, mac, BPF_CORE_READ(f, key.vlan_id));
	if (!e)
		return 0;
	e->flags = (__u32)BPF_CORE_READ(f, flags);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/br_fdb_add")
int BPF_PROG(btf_br_fdb_add, struct ndmsg *ndm, struct net_device *dev, const unsigned char *addr,
	     u16 vid, u16 nlh_flags)
{
	return on_br_fdb_add(EKHO_HOOK_TP(EKHO_TP_BR_FDB_ADD, 0), ndm, dev, addr, vid, nlh_flags);
}

SEC("raw_tp/br_fdb_add")
int BPF_PROG(raw_br_fdb_add, struct ndmsg *ndm, struct net_device *dev, const unsigned char *addr,
	     u16 vid, u16 nlh_flags)
{
	return on_br_fdb_add(EKHO_HOOK_TP(EKHO_TP_BR_FDB_ADD, 1), ndm, dev, addr, vid, nlh_flags);
}

SEC("tp_btf/br_fdb_update")
int BPF_PROG(btf_br_fdb_update, struct net_bridge *br, struct net_bridge_port *p,
	     const unsigned char *addr, u16 vid, unsigned long flags)
{
	return on_br_fdb_update(EKHO_HOOK_TP(EKHO_TP_BR_FDB_UPDATE, 0), br, p, addr, vid, flags);
}

SEC("raw_tp/br_fdb_update")
int BPF_PROG(raw_br_fdb_update, struct net_bridge *br, struct net_bridge_port *p,
	     const unsigned char *addr, u16 vid, unsigned long flags)
{
	return on_br_fdb_update(EKHO_HOOK_TP(EKHO_TP_BR_FDB_UPDATE, 1), br, p, addr, vid, flags);
}

SEC("tp_btf/br_fdb_external_learn_add")
int BPF_PROG(btf_br_fdb_external_learn_add, struct net_bridge *br, struct net_bridge_port *p,
	     const unsigned char *addr, u16 vid)
{
	return on_br_fdb_update(EKHO_HOOK_TP(EKHO_TP_BR_FDB_EXTERNAL_LEARN_ADD, 0), br, p, addr,
				vid, 0);
}

SEC("raw_tp/br_fdb_external_learn_add")
int BPF_PROG(raw_br_fdb_external_learn_add, struct net_bridge *br, struct net_bridge_port *p,
	     const unsigned char *addr, u16 vid)
{
	return on_br_fdb_update(EKHO_HOOK_TP(EKHO_TP_BR_FDB_EXTERNAL_LEARN_ADD, 1), br, p, addr,
				vid, 0);
}

SEC("tp_btf/fdb_delete")
int BPF_PROG(btf_fdb_delete, struct net_bridge *br, struct net_bridge_fdb_entry *f)
{
	return on_fdb_delete(EKHO_HOOK_TP(EKHO_TP_FDB_DELETE, 0), br, f);
}

SEC("raw_tp/fdb_delete")
int BPF_PROG(raw_fdb_delete, struct net_bridge *br, struct net_bridge_fdb_entry *f)
{
	return on_fdb_delete(EKHO_HOOK_TP(EKHO_TP_FDB_DELETE, 1), br, f);
}

/* ----------------------------- FIB lookup counters ----------------------------------------- */

/* IPv4 route prefixes per table, fed by user space (EbpfSource::set_route_prefixes), so that
 * IPv4 lookups count against the matched prefix: key bits = 32 (table) + prefix length, value =
 * prefix length. */
struct ekho_lpm4_key {
	__u32 prefixlen;
	__u32 table;
	__u8 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ekho_lpm4_key);
	__type(value, __u8);
} ROUTES4 SEC(".maps");

static __always_inline void count_hit(struct ekho_fib_key *k)
{
	__u64 *v = bpf_map_lookup_elem(&FIB_HITS, k);
	if (v) {
		*v += 1;
	} else {
		__u64 one = 1;
		bpf_map_update_elem(&FIB_HITS, k, &one, BPF_NOEXIST);
	}
}

/* The tracepoint does not carry the matched prefix (only the flow and the chosen nexthop): the
 * prefix comes from ROUTES4 when user space provided the table's prefixes, else hits are counted
 * per destination address (/32). */
static __always_inline int on_fib_lookup(u32 tb_id, const struct flowi4 *flp,
					 const struct fib_nh_common *nhc, int err)
{
	if (err || !nhc)
		return 0;
	if (!dev_ok(BPF_CORE_READ(nhc, nhc_dev)))
		return 0;
	struct ekho_fib_key k = {};
	k.table = tb_id;
	k.family = AF_INET;
	k.len = 32;
	__be32 daddr = BPF_CORE_READ(flp, daddr);
	struct ekho_lpm4_key lk = { .prefixlen = 64, .table = tb_id };
	__builtin_memcpy(lk.addr, &daddr, 4);
	__u8 *plen = bpf_map_lookup_elem(&ROUTES4, &lk);
	if (plen && *plen < 32) {
		__u32 len = *plen;
		k.len = len;
		daddr = len ? daddr & bpf_htonl(0xffffffffu << (32 - len)) : 0;
	}
	__builtin_memcpy(k.addr, &daddr, 4);
	count_hit(&k);
	return 0;
}

static __always_inline int on_fib6_lookup(const struct net *net, const struct fib6_result *res,
					  struct fib6_table *table)
{
	if (!net_ok((struct net *)net))
		return 0;
	struct fib6_info *f6i = BPF_CORE_READ(res, f6i);
	if (!f6i)
		return 0;
	struct ekho_fib_key k = {};
	k.table = BPF_CORE_READ(table, tb6_id);
	k.family = AF_INET6;
	k.len = BPF_CORE_READ(f6i, fib6_dst.plen);
	bpf_probe_read_kernel(k.addr, 16, __builtin_preserve_access_index(&f6i->fib6_dst.addr));
	count_hit(&k);
	return 0;
}

SEC("tp_btf/fib_table_lookup")
int BPF_PROG(btf_fib_table_lookup, u32 tb_id, const struct flowi4 *flp,
	     const struct fib_nh_common *nhc, int err)
{
	return on_fib_lookup(tb_id, flp, nhc, err);
}

SEC("raw_tp/fib_table_lookup")
int BPF_PROG(raw_fib_table_lookup, u32 tb_id, const struct flowi4 *flp,
	     const struct fib_nh_common *nhc, int err)
{
	return on_fib_lookup(tb_id, flp, nhc, err);
}

SEC("tp_btf/fib6_table_lookup")
int BPF_PROG(btf_fib6_table_lookup, const struct net *net, const struct fib6_result *res,
	     struct fib6_table *table, const struct flowi6 *flp)
{
	return on_fib6_lookup(net, res, table);
}

SEC("raw_tp/fib6_table_lookup")
int BPF_PROG(raw_fib6_table_lookup, const struct net *net, const struct fib6_result *res,
	     struct fib6_table *table, const struct flowi6 *flp)
{
	return on_fib6_lookup(net, res, table);
}

/* ----------------------------- notifier_run counters -------------------------------------- */

/* Runs per notifier callback (key: the callback's address), across all chains and namespaces:
 * the tracepoint carries only the callback, no chain, value or namespace. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} NOTIFIER_RUNS SEC(".maps");

static __always_inline int on_notifier_run(void *cb)
{
	__u64 k = (__u64)cb;
	__u64 *v = bpf_map_lookup_elem(&NOTIFIER_RUNS, &k);
	if (v) {
		*v += 1;
	} else {
		__u64 one = 1;
		bpf_map_update_elem(&NOTIFIER_RUNS, &k, &one, BPF_NOEXIST);
	}
	return 0;
}

SEC("tp_btf/notifier_run")
int BPF_PROG(btf_notifier_run, void *cb)
{
	return on_notifier_run(cb);
}

SEC("raw_tp/notifier_run")
int BPF_PROG(raw_notifier_run, void *cb)
{
	return on_notifier_run(cb);
}

/* ----------------------------- notifier chains (fentry) ------------------------------------ */

/* Device, gateway of a fib_nh_common. */
static __always_inline void fill_nhc(struct ekho_event *e, const struct fib_nh_common *nhc)
{
	struct net_device *dev = BPF_CORE_READ(nhc, nhc_dev);
	fill_dev(e, dev);
	__u8 gwf = BPF_CORE_READ(nhc, nhc_gw_family);
	read_addr(e, gwf, __builtin_preserve_access_index(&nhc->nhc_gw));
}

static __always_inline int on_fib_notifier(__u32 hook, struct net *net, unsigned long event,
					   struct fib_notifier_info *info)
{
	if (!net_ok(net) || !info)
		return 0;
	struct ekho_event *e = reserve(EKHO_KIND_FIB, hook);
	if (!e)
		return 0;
	int family = BPF_CORE_READ(info, family);
	e->event = event;
	e->family = family;
	if (event <= FIB_EVENT_ENTRY_DEL && family == AF_INET) {
		struct fib_entry_notifier_info *fen = (void *)info;
		__u32 dst = bpf_htonl(BPF_CORE_READ(fen, dst)); /* fib_trie keys are host order */
		__builtin_memcpy(e->dst, &dst, 4);
		e->dst_len = BPF_CORE_READ(fen, dst_len);
		e->dst_family = AF_INET;
		e->table = BPF_CORE_READ(fen, tb_id);
		e->route_type = BPF_CORE_READ(fen, type);
		struct fib_info *fi = BPF_CORE_READ(fen, fi);
		if (fi) {
			struct nexthop *nh = BPF_CORE_READ(fi, nh);
			e->value = BPF_CORE_READ(fi, fib_nhs);
			if (nh) {
				e->flags = BPF_CORE_READ(nh, id); /* nexthop object id */
			} else {
				const struct fib_nh_common *nhc =
					(const void *)fi + bpf_core_field_offset(struct fib_info, fib_nh);
				fill_nhc(e, nhc);
			}
		}
	} else if (event <= FIB_EVENT_ENTRY_DEL && family == AF_INET6) {
		struct fib6_entry_notifier_info *fen = (void *)info;
		struct fib6_info *rt = BPF_CORE_READ(fen, rt);
		e->value = BPF_CORE_READ(fen, nsiblings) + 1;
		if (rt) {
			bpf_probe_read_kernel(e->dst, 16,
					      __builtin_preserve_access_index(&rt->fib6_dst.addr));
			e->dst_len = BPF_CORE_READ(rt, fib6_dst.plen);
			e->dst_family = AF_INET6;
			e->table = BPF_CORE_READ(rt, fib6_table, tb6_id);
			e->route_type = BPF_CORE_READ(rt, fib6_type);
			struct nexthop *nh = BPF_CORE_READ(rt, nh);
			if (nh) {
				e->flags = BPF_CORE_READ(nh, id);
			} else {
				const struct fib_nh_common *nhc =
					(const void *)rt + bpf_core_field_offset(struct fib6_info, fib6_nh);
				fill_nhc(e, nhc);
			}
		}
	} else if (event == FIB_EVENT_RULE_ADD || event == FIB_EVENT_RULE_DEL) {
		struct fib_rule_notifier_info *rin = (void *)info;
		struct fib_rule *rule = BPF_CORE_READ(rin, rule);
		if (rule) {
			e->table = BPF_CORE_READ(rule, table);
			e->value = BPF_CORE_READ(rule, pref);
			e->route_type = BPF_CORE_READ(rule, action);
		}
	} else if (event == FIB_EVENT_NH_ADD || event == FIB_EVENT_NH_DEL) {
		struct fib_nh_notifier_info *nin = (void *)info;
		struct fib_nh *fnh = BPF_CORE_READ(nin, fib_nh);
		if (fnh)
			fill_nhc(e, __builtin_preserve_access_index(&fnh->nh_common));
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_switchdev(__u32 hook, unsigned long event, struct net_device *dev,
					struct switchdev_notifier_info *info)
{
	if (!dev_ok(dev))
		return 0;
	struct ekho_event *e = reserve(EKHO_KIND_SWITCHDEV, hook);
	if (!e)
		return 0;
	e->event = event;
	e->family = AF_BRIDGE;
	fill_dev(e, dev);
	if (event >= SWITCHDEV_FDB_ADD_TO_BRIDGE && event <= SWITCHDEV_FDB_FLUSH_TO_BRIDGE) {
		struct switchdev_notifier_fdb_info *fi = (void *)info;
		read_lladdr(e, BPF_CORE_READ(fi, addr), 6);
		e->vlan = BPF_CORE_READ(fi, vid);
		e->flags = BPF_CORE_READ_BITFIELD_PROBED(fi, added_by_user) |
			   BPF_CORE_READ_BITFIELD_PROBED(fi, is_local) << 1 |
			   BPF_CORE_READ_BITFIELD_PROBED(fi, offloaded) << 3;
		/* `locked` is newer than 6.1: without the guard its relocation fails there and
		 * the loader poisons the read (the verifier's `call unknown#195896080`, 0xbad2310);
		 * guarded, the branch is dead code where the field does not exist. */
		if (bpf_core_field_exists(fi->locked))
			e->flags |= BPF_CORE_READ_BITFIELD_PROBED(fi, locked) << 2;
	} else if (event >= SWITCHDEV_VXLAN_FDB_ADD_TO_BRIDGE &&
		   event <= SWITCHDEV_VXLAN_FDB_OFFLOADED &&
		   /* Defined by the vxlan driver: where it is a module (Debian's 6.1) the type is
		    * only in the module's BTF, not vmlinux's, so the record carries the event and
		    * the device only. */
		   bpf_core_type_exists(struct switchdev_notifier_vxlan_fdb_info)) {
		struct switchdev_notifier_vxlan_fdb_info *vi = (void *)info;
		read_lladdr(e, __builtin_preserve_access_index(&vi->eth_addr), 6);
		e->value = bpf_ntohl(BPF_CORE_READ(vi, vni));
		__u16 sa_family = BPF_CORE_READ(vi, remote_ip.sa.sa_family);
		if (sa_family == AF_INET)
			read_addr(e, AF_INET,
				  __builtin_preserve_access_index(&vi->remote_ip.sin.sin_addr));
		else if (sa_family == AF_INET6)
			read_addr(e, AF_INET6,
				  __builtin_preserve_access_index(&vi->remote_ip.sin6.sin6_addr));
		e->flags = BPF_CORE_READ(vi, added_by_user) | BPF_CORE_READ(vi, offloaded) << 3;
	} else if ((event == SWITCHDEV_PORT_OBJ_ADD || event == SWITCHDEV_PORT_OBJ_DEL) &&
		   bpf_core_type_exists(struct switchdev_notifier_port_obj_info___ekho) &&
		   bpf_core_type_exists(struct switchdev_obj___ekho)) {
		struct switchdev_notifier_port_obj_info___ekho *oi = (void *)info;
		const struct switchdev_obj___ekho *obj = BPF_CORE_READ(oi, obj);
		if (obj) {
			int id = (int)BPF_CORE_READ(obj, id);
			e->value = id;
			e->flags = BPF_CORE_READ(obj, flags);
			if (id == SWITCHDEV_OBJ_ID_PORT_VLAN) {
				const struct switchdev_obj_port_vlan___ekho *v = (const void *)obj;
				e->vlan = BPF_CORE_READ(v, vid);
				e->state = BPF_CORE_READ(v, flags); /* BRIDGE_VLAN_INFO_* */
			} else if (id == SWITCHDEV_OBJ_ID_PORT_MDB || id == SWITCHDEV_OBJ_ID_HOST_MDB) {
				const struct switchdev_obj_port_mdb___ekho *m = (const void *)obj;
				read_lladdr(e, __builtin_preserve_access_index(&m->addr), 6);
				e->vlan = BPF_CORE_READ(m, vid);
			}
		}
	} else if (event == SWITCHDEV_PORT_ATTR_SET &&
		   bpf_core_type_exists(struct switchdev_notifier_port_attr_info___ekho) &&
		   bpf_core_type_exists(struct switchdev_attr___ekho)) {
		struct switchdev_notifier_port_attr_info___ekho *ai = (void *)info;
		const struct switchdev_attr___ekho *attr = BPF_CORE_READ(ai, attr);
		if (attr) {
			int id = BPF_CORE_READ(attr, id);
			e->value = id; /* SWITCHDEV_ATTR_ID_* */
			e->flags = BPF_CORE_READ(attr, flags);
			if (id == SWITCHDEV_ATTR_ID_PORT_STP_STATE)
				e->state = BPF_CORE_READ(attr, u.stp_state);
			else if (id == SWITCHDEV_ATTR_ID_BRIDGE_VLAN_FILTERING)
				e->state = BPF_CORE_READ(attr, u.vlan_filtering);
		}
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_netevent(__u32 hook, unsigned long event, void *ptr)
{
	struct ekho_event *e;
	if (event == NETEVENT_NEIGH_UPDATE) {
		struct neighbour *n = ptr;
		if (!dev_ok(BPF_CORE_READ(n, dev)))
			return 0;
		if (!(e = reserve(EKHO_KIND_NETEVENT, hook)))
			return 0;
		fill_neigh(e, n);
	} else if (event == NETEVENT_REDIRECT) {
		struct netevent_redirect *r = ptr;
		struct neighbour *n = BPF_CORE_READ(r, neigh);
		if (!dev_ok(BPF_CORE_READ(n, dev)))
			return 0;
		if (!(e = reserve(EKHO_KIND_NETEVENT, hook)))
			return 0;
		fill_neigh(e, n);
	} else if (event == NETEVENT_DELAY_PROBE_TIME_UPDATE) {
		struct neigh_parms *p = ptr;
		struct net_device *dev = BPF_CORE_READ(p, dev);
		if (dev ? !dev_ok(dev) : !net_ok(BPF_CORE_READ(p, net.net)))
			return 0;
		if (!(e = reserve(EKHO_KIND_NETEVENT, hook)))
			return 0;
		fill_dev(e, dev);
		e->family = BPF_CORE_READ(p, tbl, family);
		e->value = BPF_CORE_READ(p, data[NEIGH_VAR_DELAY_PROBE_TIME]); /* jiffies */
	} else {
		/* Multipath hash / forwarding priority updates: ptr is the struct net. */
		if (!net_ok(ptr))
			return 0;
		if (!(e = reserve(EKHO_KIND_NETEVENT, hook)))
			return 0;
		e->family = event == NETEVENT_IPV6_MPATH_HASH_UPDATE ? AF_INET6 : AF_INET;
	}
	e->event = event;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* The netdevice chain's event numbers differ between kernels: 6.1 has no NETDEV_PRE_UNINIT
 * (18 in the committed vmlinux.h), so every later event is one lower there. Records carry the
 * committed vmlinux.h's numbers (what src/hooks.rs names); the running kernel's value of each name
 * comes from a CO-RE enum relocation, and a name the kernel lacks is skipped. A value without a
 * name here is passed as EKHO_NETDEV_UNNAMED + the kernel's value. */
#define EKHO_NETDEV_UNNAMED 0x10000
#define NETDEV_ID(name)                                                                \
	if (bpf_core_enum_value_exists(enum netdev_cmd, name) &&                       \
	    event == bpf_core_enum_value(enum netdev_cmd, name))                       \
	return name

static __always_inline __u32 netdev_event_id(unsigned long event)
{
	NETDEV_ID(NETDEV_UP);
	NETDEV_ID(NETDEV_DOWN);
	NETDEV_ID(NETDEV_REBOOT);
	NETDEV_ID(NETDEV_CHANGE);
	NETDEV_ID(NETDEV_REGISTER);
	NETDEV_ID(NETDEV_UNREGISTER);
	NETDEV_ID(NETDEV_CHANGEMTU);
	NETDEV_ID(NETDEV_CHANGEADDR);
	NETDEV_ID(NETDEV_PRE_CHANGEADDR);
	NETDEV_ID(NETDEV_GOING_DOWN);
	NETDEV_ID(NETDEV_CHANGENAME);
	NETDEV_ID(NETDEV_FEAT_CHANGE);
	NETDEV_ID(NETDEV_BONDING_FAILOVER);
	NETDEV_ID(NETDEV_PRE_UP);
	NETDEV_ID(NETDEV_PRE_TYPE_CHANGE);
	NETDEV_ID(NETDEV_POST_TYPE_CHANGE);
	NETDEV_ID(NETDEV_POST_INIT);
	NETDEV_ID(NETDEV_PRE_UNINIT);
	NETDEV_ID(NETDEV_RELEASE);
	NETDEV_ID(NETDEV_NOTIFY_PEERS);
	NETDEV_ID(NETDEV_JOIN);
	NETDEV_ID(NETDEV_CHANGEUPPER);
	NETDEV_ID(NETDEV_RESEND_IGMP);
	NETDEV_ID(NETDEV_PRECHANGEMTU);
	NETDEV_ID(NETDEV_CHANGEINFODATA);
	NETDEV_ID(NETDEV_BONDING_INFO);
	NETDEV_ID(NETDEV_PRECHANGEUPPER);
	NETDEV_ID(NETDEV_CHANGELOWERSTATE);
	NETDEV_ID(NETDEV_UDP_TUNNEL_PUSH_INFO);
	NETDEV_ID(NETDEV_UDP_TUNNEL_DROP_INFO);
	NETDEV_ID(NETDEV_CHANGE_TX_QUEUE_LEN);
	NETDEV_ID(NETDEV_CVLAN_FILTER_PUSH_INFO);
	NETDEV_ID(NETDEV_CVLAN_FILTER_DROP_INFO);
	NETDEV_ID(NETDEV_SVLAN_FILTER_PUSH_INFO);
	NETDEV_ID(NETDEV_SVLAN_FILTER_DROP_INFO);
	NETDEV_ID(NETDEV_OFFLOAD_XSTATS_ENABLE);
	NETDEV_ID(NETDEV_OFFLOAD_XSTATS_DISABLE);
	NETDEV_ID(NETDEV_OFFLOAD_XSTATS_REPORT_USED);
	NETDEV_ID(NETDEV_OFFLOAD_XSTATS_REPORT_DELTA);
	NETDEV_ID(NETDEV_XDP_FEAT_CHANGE);
	return EKHO_NETDEV_UNNAMED + (__u32)event;
}

static __always_inline int on_netdev(__u32 hook, unsigned long kernel_event,
				     struct netdev_notifier_info *info)
{
	struct net_device *dev = BPF_CORE_READ(info, dev);
	if (!dev || !dev_ok(dev))
		return 0;
	__u32 event = netdev_event_id(kernel_event);
	struct ekho_event *e = reserve(EKHO_KIND_NETDEVICE, hook);
	if (!e)
		return 0;
	e->event = event;
	fill_dev(e, dev);
	e->flags = BPF_CORE_READ(dev, flags);
	read_lladdr(e, BPF_CORE_READ(dev, dev_addr), BPF_CORE_READ(dev, addr_len));
	if (event == NETDEV_CHANGEUPPER || event == NETDEV_PRECHANGEUPPER) {
		struct netdev_notifier_changeupper_info *ci = (void *)info;
		struct net_device *upper = BPF_CORE_READ(ci, upper_dev);
		if (upper) {
			e->value = BPF_CORE_READ(upper, ifindex);
			BPF_CORE_READ_STR_INTO(&e->detail, upper, name);
		}
		e->state = BPF_CORE_READ(ci, linking);
	} else if (event == NETDEV_CHANGEMTU || event == NETDEV_PRECHANGEMTU) {
		struct netdev_notifier_info_ext *xi = (void *)info;
		e->value = BPF_CORE_READ(dev, mtu);
		e->old_state = 0;
		e->table = BPF_CORE_READ(xi, ext.mtu); /* old MTU (CHANGEMTU), new (PRECHANGEMTU) */
	} else {
		e->value = BPF_CORE_READ(dev, mtu);
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("fentry/call_fib_notifiers")
int BPF_PROG(fentry_fib, struct net *net, enum fib_event_type event, struct fib_notifier_info *info)
{
	return on_fib_notifier(EKHO_HOOK_FENTRY_FIB, net, event, info);
}

SEC("fentry/call_switchdev_notifiers")
int BPF_PROG(fentry_switchdev, unsigned long val, struct net_device *dev,
	     struct switchdev_notifier_info *info, struct netlink_ext_ack *extack)
{
	return on_switchdev(EKHO_HOOK_FENTRY_SWITCHDEV, val, dev, info);
}

SEC("fentry/call_switchdev_blocking_notifiers")
int BPF_PROG(fentry_switchdev_blocking, unsigned long val, struct net_device *dev,
	     struct switchdev_notifier_info *info, struct netlink_ext_ack *extack)
{
	return on_switchdev(EKHO_HOOK_FENTRY_SWITCHDEV_BLOCKING, val, dev, info);
}

SEC("fentry/call_netevent_notifiers")
int BPF_PROG(fentry_netevent, unsigned long val, void *v)
{
	return on_netevent(EKHO_HOOK_FENTRY_NETEVENT, val, v);
}

SEC("fentry/call_netdevice_notifiers_info")
int BPF_PROG(fentry_netdev, unsigned long val, struct netdev_notifier_info *info)
{
	return on_netdev(EKHO_HOOK_FENTRY_NETDEV, val, info);
}

/*
 * Verifier twins of the fentry handlers, as raw tracepoints on notifier_run (never attached: the
 * loader only loads them, in tests and EbpfSource::verify_fentry_handlers). Arguments are unknown
 * scalars there, so the verifier walks every branch of the handlers on kernels that refuse fentry.
 */
SEC("raw_tp/notifier_run")
int BPF_PROG(verify_fib, void *cb)
{
	return on_fib_notifier(EKHO_HOOK_FENTRY_FIB, cb, (unsigned long)cb, cb);
}

SEC("raw_tp/notifier_run")
int BPF_PROG(verify_switchdev, void *cb)
{
	return on_switchdev(EKHO_HOOK_FENTRY_SWITCHDEV, (unsigned long)cb, cb, cb);
}

SEC("raw_tp/notifier_run")
int BPF_PROG(verify_netevent, void *cb)
{
	return on_netevent(EKHO_HOOK_FENTRY_NETEVENT, (unsigned long)cb, cb);
}

SEC("raw_tp/notifier_run")
int BPF_PROG(verify_netdev, void *cb)
{
	return on_netdev(EKHO_HOOK_FENTRY_NETDEV, (unsigned long)cb, cb);
}
