// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// ekho xdp-router data path: an IPv4/IPv6 router whose tables are programmed from the ekho mirror
// by the xdp-router plugin (plugins/xdp-router/src). It never calls bpf_fib_lookup: routes,
// next hops, neighbours and ports all come from the maps below.
//
// Forwarded: unicast IPv4 (no options, not fragmented) and IPv6 (no hop-by-hop / fragment header)
// whose destination matches a FORWARD route in table local(255) -> main(254) -> default(253),
// whose chosen next hop has a resolved neighbour, an owned egress port that is up, and an MTU the
// packet fits. TTL / hop limit is decremented (IPv4 checksum updated incrementally), MACs are
// rewritten and the frame is redirected through the TX_PORTS devmap.
// Everything else is XDP_PASS (handed to the kernel untouched), except BLACKHOLE routes (XDP_DROP).
//
// Rebuild: plugins/xdp-router/bpf/build.sh (the object is committed next to this file).
// Keep the structs in sync with src/maps.rs (checked by a unit test on the object's BTF sizes).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

#define MAX_LEGS 16
#define N_SLOTS 128

#define TABLE_DEFAULT 253
#define TABLE_MAIN 254
#define TABLE_LOCAL 255

// route_val.action
#define ACT_FORWARD 1
#define ACT_PASS 2
#define ACT_DROP 3

// leg.flags
#define LEG_GATEWAY 1

// port_val.flags
#define PORT_UP 1

// config_val.flags
#define CFG_PUNT_V4 1
#define CFG_PUNT_V6 2
// The flow path too hands the family to the kernel (non-default policy rules, a sync under way,
// an unprogrammed prefix: the route lookup after NAT could be wrong). Netfilter chains alone do
// not set it: an offloaded flow carries the kernel's NAT and verdict.
#define CFG_NOFLOW_V4 4
#define CFG_NOFLOW_V6 8

// flow_stats.flags
#define FLOW_HANDBACK 1

#define FLOW_DIR_ORIG 0
#define FLOW_DIR_REPLY 1

// Pass / drop reasons (index into REASONS); keep in sync with src/maps.rs REASON_NAMES.
enum reason {
	R_NOT_IP = 0,
	R_NOT_FOR_US,
	R_PUNT_ALL,
	R_MALFORMED,
	R_IP_OPTIONS,
	R_FRAGMENT,
	R_SPECIAL_ADDR,
	R_TTL,
	R_NO_ROUTE,
	R_LOCAL,
	R_ROUTE_TRAP,
	R_NO_LEG,
	R_NO_NEIGH,
	R_EGRESS_NOT_OWNED,
	R_EGRESS_DOWN,
	R_MTU,
	R_BLACKHOLE,
	R_REDIRECT_FAILED,
	R_FORWARDED,
	R_FLOW_FORWARDED,
	R_FLOW_TEARDOWN,
	R_FLOW_HANDED_BACK,
	R_MAX,
};

struct lpm_v4_key {
	__u32 prefixlen; // 32 (table) + route prefix length
	__u32 table;
	__u8 addr[4];
};

struct lpm_v6_key {
	__u32 prefixlen; // 32 (table) + route prefix length
	__u32 table;
	__u8 addr[16];
};

struct leg {
	__u32 ifindex;
	__u8 flags;  // LEG_*
	__u8 family; // family of gw (AF_INET 2 / AF_INET6 10)
	__u16 _pad;
	__u8 gw[16];
};

struct route_val {
	__u32 action;
	__u32 counter_id;
	__u16 n_legs;
	__u16 n_slots;
	__u8 slots[N_SLOTS]; // leg index per slot, filled in proportion to the legs' weights
	struct leg legs[MAX_LEGS];
};

struct neigh_key {
	__u32 ifindex;
	__u32 family;
	__u8 addr[16];
};

struct neigh_val {
	__u8 mac[6];
	__u16 _pad;
};

struct port_val {
	__u8 mac[6];
	__u16 flags; // PORT_*
	__u32 mtu;
	__u16 zone; // conntrack zone of the packets it receives (the operator's `ct zone set`)
	__u16 _pad;
};

struct port_stats {
	__u64 forwarded;
	__u64 passed;
	__u64 dropped;
	__u64 forwarded_bytes;
};

struct route_stats {
	__u64 packets;
	__u64 bytes;
};

// A flow entry's key: the 5-tuple as the packet carries it on ingress (one entry per direction
// of a conntrack entry: its original tuple and its reply tuple) and the conntrack zone, the
// ingress port's (two zones may hold the same tuple, as conntrack tells them apart by zone).
// Addresses and ports in network order, IPv4 addresses in the first 4 bytes (the rest zero).
struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;  // IPPROTO_TCP / IPPROTO_UDP
	__u8 family; // AF_INET / AF_INET6
	__u16 zone;
};

// What a packet of that direction is rewritten to (the other direction's tuple reversed: SNAT
// and DNAT in one), the flow's counter id and the direction's index in it.
struct flow_val {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u32 id;  // key of FLOW_STATS
	__u32 dir; // FLOW_DIR_*
	__u32 _pad;
};

// Per flow, both directions (shared by the two entries; updated with atomic adds).
struct flow_stats {
	__u64 packets[2];
	__u64 bytes[2];     // IP packet lengths
	__u64 lastused[2];  // bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last packet, 0 = none
	__u32 flags;        // FLOW_*
	__u32 _pad;
};

// A FLOW_EVENTS record: the flow saw a TCP FIN or RST and is handed back to the kernel.
struct flow_event {
	__u32 id;
	__u32 dir;
};

struct config_val {
	__u32 flags; // CFG_*
	__u32 resolve_interval_ms;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, struct route_val);
} ROUTES_V4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, struct route_val);
} ROUTES_V6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct neigh_key);
	__type(value, struct neigh_val);
} NEIGHBOURS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct port_val);
} PORTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} TX_PORTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct port_stats);
} PORT_STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct route_stats);
} ROUTE_STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_MAX);
	__type(key, __u32);
	__type(value, __u64);
} REASONS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config_val);
} CONFIG SEC(".maps");

// Neighbours asked for recently (rate limit of RESOLVE events).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct neigh_key);
	__type(value, __u64);
} PENDING SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} RESOLVE SEC(".maps");

// Offloaded flows: two entries per flow (original and reply direction). 65536 flows.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} FLOWS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct flow_stats);
} FLOW_STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} FLOW_EVENTS SEC(".maps");

static __always_inline void count_reason(__u32 r)
{
	__u64 *c = bpf_map_lookup_elem(&REASONS, &r);
	if (c)
		*c += 1;
}

static __always_inline void count_port(__u32 ifindex, int verdict, __u64 bytes)
{
	struct port_stats *s = bpf_map_lookup_elem(&PORT_STATS, &ifindex);
	if (!s) {
		struct port_stats zero = {};
		bpf_map_update_elem(&PORT_STATS, &ifindex, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&PORT_STATS, &ifindex);
		if (!s)
			return;
	}
	if (verdict == XDP_REDIRECT) {
		s->forwarded += 1;
		s->forwarded_bytes += bytes;
	} else if (verdict == XDP_DROP) {
		s->dropped += 1;
	} else {
		s->passed += 1;
	}
}

static __always_inline int verdict(__u32 in_if, int v, __u32 r)
{
	count_reason(r);
	count_port(in_if, v, 0);
	return v;
}

static __always_inline void count_route(const struct route_val *rv, __u64 bytes)
{
	__u32 id = rv->counter_id;
	struct route_stats *s = bpf_map_lookup_elem(&ROUTE_STATS, &id);
	if (s) {
		s->packets += 1;
		s->bytes += bytes;
	}
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline __u32 fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 mix(__u32 h, __u32 v)
{
	h ^= v;
	h *= 0x9e3779b1;
	return (h << 13) | (h >> 19);
}

// Ports of a TCP/UDP header at `l4`, 0 when absent or truncated.
static __always_inline __u32 l4_ports(void *l4, void *data_end, __u8 proto)
{
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	__u32 *p = l4;
	if ((void *)(p + 1) > data_end)
		return 0;
	return *p;
}

static __always_inline void request_resolve(struct neigh_key *nk)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 *last = bpf_map_lookup_elem(&PENDING, nk);
	__u32 zero = 0;
	__u64 interval = 200ULL * 1000 * 1000;
	struct config_val *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	if (cfg && cfg->resolve_interval_ms)
		interval = (__u64)cfg->resolve_interval_ms * 1000 * 1000;
	if (last && now - *last < interval)
		return;
	bpf_map_update_elem(&PENDING, nk, &now, BPF_ANY);
	// The event is the neighbour key itself.
	struct neigh_key *e = bpf_ringbuf_reserve(&RESOLVE, sizeof(*e), 0);
	if (!e)
		return;
	e->ifindex = nk->ifindex;
	e->family = nk->family;
	__builtin_memcpy(e->addr, nk->addr, 16);
	bpf_ringbuf_submit(e, 0);
}

// Picks the leg for `hash`, resolves its neighbour and egress port, sets the redirect target and
// rewrites the Ethernet header. Returns R_FORWARDED when the frame is ready (the caller then
// decrements TTL / hop limit and returns XDP_REDIRECT); any other reason leaves the frame intact.
static __always_inline __u32 prepare_forward(struct ethhdr *eth, const struct route_val *rv,
					     __u32 hash, __u32 family, const __u8 *daddr,
					     __u32 ip_len)
{
	__u32 n_slots = rv->n_slots;
	if (rv->n_legs == 0 || n_slots == 0 || n_slots > N_SLOTS)
		return R_NO_LEG;
	__u32 slot = hash % n_slots;
	barrier_var(slot); // keep the mask: the verifier needs the bound, clang would drop it
	slot &= N_SLOTS - 1;
	__u32 li = rv->slots[slot];
	barrier_var(li);
	li &= MAX_LEGS - 1;
	const struct leg *leg = &rv->legs[li];

	struct neigh_key nk = {};
	nk.ifindex = leg->ifindex;
	if (leg->flags & LEG_GATEWAY) {
		nk.family = leg->family;
		__builtin_memcpy(nk.addr, leg->gw, 16);
	} else {
		nk.family = family;
		if (family == AF_INET)
			__builtin_memcpy(nk.addr, daddr, 4);
		else
			__builtin_memcpy(nk.addr, daddr, 16);
	}

	__u32 oif = leg->ifindex;
	struct port_val *port = bpf_map_lookup_elem(&PORTS, &oif);
	if (!port)
		return R_EGRESS_NOT_OWNED;
	if (!(port->flags & PORT_UP))
		return R_EGRESS_DOWN;
	if (ip_len > port->mtu)
		return R_MTU;

	struct neigh_val *nv = bpf_map_lookup_elem(&NEIGHBOURS, &nk);
	if (!nv) {
		request_resolve(&nk);
		return R_NO_NEIGH;
	}
	// Set the redirect target before touching the frame: when it fails (port not in the devmap)
	// the frame still goes to the kernel untouched. bpf_redirect_map only records the target.
	if (bpf_redirect_map(&TX_PORTS, oif, XDP_PASS) != XDP_REDIRECT)
		return R_REDIRECT_FAILED;
	__builtin_memcpy(eth->h_dest, nv->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, port->mac, ETH_ALEN);
	return R_FORWARDED;
}

static __always_inline int finish(__u32 in_if, const struct route_val *rv, __u32 r, __u64 bytes)
{
	if (r != R_FORWARDED)
		return verdict(in_if, XDP_PASS, r);
	count_route(rv, bytes);
	count_reason(R_FORWARDED);
	count_port(in_if, XDP_REDIRECT, bytes);
	return XDP_REDIRECT;
}

static __always_inline const struct route_val *lookup_v4(__u32 daddr)
{
	struct lpm_v4_key k;
	k.prefixlen = 64;
	__builtin_memcpy(k.addr, &daddr, 4);
	k.table = TABLE_LOCAL;
	const struct route_val *rv = bpf_map_lookup_elem(&ROUTES_V4, &k);
	if (rv)
		return rv;
	k.table = TABLE_MAIN;
	rv = bpf_map_lookup_elem(&ROUTES_V4, &k);
	if (rv)
		return rv;
	k.table = TABLE_DEFAULT;
	return bpf_map_lookup_elem(&ROUTES_V4, &k);
}

static __always_inline const struct route_val *lookup_v6(const struct in6_addr *daddr)
{
	struct lpm_v6_key k;
	k.prefixlen = 160;
	__builtin_memcpy(k.addr, daddr, 16);
	k.table = TABLE_LOCAL;
	const struct route_val *rv = bpf_map_lookup_elem(&ROUTES_V6, &k);
	if (rv)
		return rv;
	k.table = TABLE_MAIN;
	rv = bpf_map_lookup_elem(&ROUTES_V6, &k);
	if (rv)
		return rv;
	k.table = TABLE_DEFAULT;
	return bpf_map_lookup_elem(&ROUTES_V6, &k);
}

static __always_inline int route_action(__u32 in_if, const struct route_val *rv, __u64 bytes)
{
	if (rv->action == ACT_DROP) {
		count_route(rv, bytes);
		return verdict(in_if, XDP_DROP, R_BLACKHOLE);
	}
	// PASS routes (local, broadcast, unreachable, ...): counted as hits, handed to the kernel.
	count_route(rv, bytes);
	return verdict(in_if, XDP_PASS, R_ROUTE_TRAP);
}

// ---- flow path (offloaded conntrack flows) ----------------------------------------------------

static __always_inline __u32 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s;
}

// Adds ~old + new for `n` 16-bit words (RFC 1624: the change of a one's complement sum).
static __always_inline __u32 csum_words(__u32 sum, const __u16 *old, const __u16 *new, int n)
{
#pragma unroll
	for (int i = 0; i < n; i++) {
		sum += (__u16)~old[i];
		sum += new[i];
	}
	return sum;
}

// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), `delta` = sum of (~m + m').
static __always_inline __u16 csum_replace(__u16 check, __u32 delta)
{
	return ~csum_fold(delta + (__u16)~check);
}

static __always_inline void flow_teardown(struct flow_stats *st, const struct flow_val *fv)
{
	if (st->flags & FLOW_HANDBACK)
		return;
	st->flags |= FLOW_HANDBACK; // only ever set (racing CPUs set the same bit)
	struct flow_event *e = bpf_ringbuf_reserve(&FLOW_EVENTS, sizeof(*e), 0);
	if (!e)
		return; // the plugin also finds the flag when it reads the flow's stats
	e->id = fv->id;
	e->dir = fv->dir;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void flow_count(struct flow_stats *st, const struct flow_val *fv,
				       __u64 bytes)
{
	__u32 d = fv->dir & 1;
	__sync_fetch_and_add(&st->packets[d], 1);
	__sync_fetch_and_add(&st->bytes[d], bytes);
	st->lastused[d] = bpf_ktime_get_ns();
}

// The checks every flow hit makes before it is forwarded. Returns R_FORWARDED to go on, else the
// reason to pass the (untouched) packet to the kernel with.
static __always_inline __u32 flow_admit(struct flow_stats *st, const struct flow_val *fv,
					struct tcphdr *th, __u32 noflow, __u8 ttl)
{
	if (st->flags & FLOW_HANDBACK)
		return R_FLOW_HANDED_BACK;
	// The kernel must see the teardown (and a new connection reusing the tuple).
	if (th && (th->fin || th->rst || th->syn)) {
		if (th->fin || th->rst)
			flow_teardown(st, fv);
		return R_FLOW_TEARDOWN;
	}
	if (noflow)
		return R_PUNT_ALL;
	if (ttl <= 1)
		return R_TTL;
	return R_FORWARDED;
}

// Returns -1 when the packet is not of an offloaded flow (the route path follows), else the
// verdict. `l4` is the byte after the IPv4 header (no options).
static __always_inline int flow_v4(__u32 in_if, struct ethhdr *eth, struct iphdr *iph, void *data_end,
				   __u32 cfg_flags, __u32 ip_len, __u16 zone)
{
	__u8 proto = iph->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return -1;
	struct udphdr *uh = (void *)(iph + 1); // ports at the same offsets for TCP
	if ((void *)(uh + 1) > data_end)
		return -1;
	struct flow_key k = {};
	__builtin_memcpy(k.src, &iph->saddr, 4);
	__builtin_memcpy(k.dst, &iph->daddr, 4);
	k.sport = uh->source;
	k.dport = uh->dest;
	k.proto = proto;
	k.family = AF_INET;
	k.zone = zone;
	const struct flow_val *fv = bpf_map_lookup_elem(&FLOWS, &k);
	if (!fv)
		return -1;
	struct tcphdr *th = 0;
	if (proto == IPPROTO_TCP) {
		th = (void *)(iph + 1);
		if ((void *)(th + 1) > data_end)
			return verdict(in_if, XDP_PASS, R_MALFORMED);
	}
	__u32 id = fv->id;
	struct flow_stats *st = bpf_map_lookup_elem(&FLOW_STATS, &id);
	if (!st)
		return verdict(in_if, XDP_PASS, R_FLOW_HANDED_BACK);
	__u32 r = flow_admit(st, fv, th, cfg_flags & CFG_NOFLOW_V4, iph->ttl);
	if (r != R_FORWARDED)
		return verdict(in_if, XDP_PASS, r);

	// Route the rewritten packet (the kernel routes after DNAT too).
	__u32 daddr;
	__builtin_memcpy(&daddr, fv->dst, 4);
	const struct route_val *rv = lookup_v4(daddr);
	if (!rv)
		return verdict(in_if, XDP_PASS, R_NO_ROUTE);
	if (rv->action != ACT_FORWARD)
		return route_action(in_if, rv, ip_len);
	__u32 saddr;
	__builtin_memcpy(&saddr, fv->src, 4);
	__u32 h = mix(0x5bd1e995, saddr);
	h = mix(h, daddr);
	h = mix(h, proto);
	h = mix(h, ((__u32)fv->dport << 16) | fv->sport);
	h = fmix(h);
	r = prepare_forward(eth, rv, h, AF_INET, fv->dst, ip_len);
	if (r != R_FORWARDED)
		return verdict(in_if, XDP_PASS, r);

	// NAT: addresses (IPv4 header and pseudo-header), ports (L4 header).
	__u32 d3 = csum_words(0, (const __u16 *)&iph->saddr, (const __u16 *)fv->src, 2);
	d3 = csum_words(d3, (const __u16 *)&iph->daddr, (const __u16 *)fv->dst, 2);
	__u32 d4 = csum_words(d3, &uh->source, &fv->sport, 1);
	d4 = csum_words(d4, &uh->dest, &fv->dport, 1);
	iph->check = csum_replace(iph->check, d3);
	iph->saddr = saddr;
	iph->daddr = daddr;
	if (th) {
		th->check = csum_replace(th->check, d4);
	} else if (uh->check) { // zero: the sender sent no checksum; keep none
		__u16 c = csum_replace(uh->check, d4);
		uh->check = c ? c : 0xffff;
	}
	uh->source = fv->sport;
	uh->dest = fv->dport;
	__u32 check = iph->check;
	check += bpf_htons(0x0100);
	iph->check = (__u16)(check + (check >= 0xFFFF));
	iph->ttl--;

	flow_count(st, fv, ip_len);
	count_route(rv, ip_len);
	count_reason(R_FLOW_FORWARDED);
	count_port(in_if, XDP_REDIRECT, ip_len);
	return XDP_REDIRECT;
}

static __always_inline int flow_v6(__u32 in_if, struct ethhdr *eth, struct ipv6hdr *ip6,
				   void *data_end, __u32 cfg_flags, __u32 ip_len, __u16 zone)
{
	__u8 proto = ip6->nexthdr;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return -1;
	struct udphdr *uh = (void *)(ip6 + 1);
	if ((void *)(uh + 1) > data_end)
		return -1;
	struct flow_key k = {};
	__builtin_memcpy(k.src, &ip6->saddr, 16);
	__builtin_memcpy(k.dst, &ip6->daddr, 16);
	k.sport = uh->source;
	k.dport = uh->dest;
	k.proto = proto;
	k.family = AF_INET6;
	k.zone = zone;
	const struct flow_val *fv = bpf_map_lookup_elem(&FLOWS, &k);
	if (!fv)
		return -1;
	struct tcphdr *th = 0;
	if (proto == IPPROTO_TCP) {
		th = (void *)(ip6 + 1);
		if ((void *)(th + 1) > data_end)
			return verdict(in_if, XDP_PASS, R_MALFORMED);
	}
	__u32 id = fv->id;
	struct flow_stats *st = bpf_map_lookup_elem(&FLOW_STATS, &id);
	if (!st)
		return verdict(in_if, XDP_PASS, R_FLOW_HANDED_BACK);
	__u32 r = flow_admit(st, fv, th, cfg_flags & CFG_NOFLOW_V6, ip6->hop_limit);
	if (r != R_FORWARDED)
		return verdict(in_if, XDP_PASS, r);

	const struct route_val *rv = lookup_v6((const struct in6_addr *)fv->dst);
	if (!rv)
		return verdict(in_if, XDP_PASS, R_NO_ROUTE);
	if (rv->action != ACT_FORWARD)
		return route_action(in_if, rv, ip_len);
	const __u32 *s = (const __u32 *)fv->src, *d = (const __u32 *)fv->dst;
	__u32 h = 0x5bd1e995;
	h = mix(h, s[0]);
	h = mix(h, s[1]);
	h = mix(h, s[2]);
	h = mix(h, s[3]);
	h = mix(h, d[0]);
	h = mix(h, d[1]);
	h = mix(h, d[2]);
	h = mix(h, d[3]);
	h = mix(h, proto);
	h = mix(h, ((__u32)fv->dport << 16) | fv->sport);
	h = fmix(h);
	r = prepare_forward(eth, rv, h, AF_INET6, fv->dst, ip_len);
	if (r != R_FORWARDED)
		return verdict(in_if, XDP_PASS, r);

	// NAT: addresses (pseudo-header only: IPv6 has no header checksum), ports.
	__u32 d4 = csum_words(0, (const __u16 *)&ip6->saddr, (const __u16 *)fv->src, 8);
	d4 = csum_words(d4, (const __u16 *)&ip6->daddr, (const __u16 *)fv->dst, 8);
	d4 = csum_words(d4, &uh->source, &fv->sport, 1);
	d4 = csum_words(d4, &uh->dest, &fv->dport, 1);
	if (th) {
		th->check = csum_replace(th->check, d4);
	} else if (uh->check) { // zero is not valid over IPv6: left for the receiver to drop
		__u16 c = csum_replace(uh->check, d4);
		uh->check = c ? c : 0xffff;
	}
	__builtin_memcpy(&ip6->saddr, fv->src, 16);
	__builtin_memcpy(&ip6->daddr, fv->dst, 16);
	uh->source = fv->sport;
	uh->dest = fv->dport;
	ip6->hop_limit--;

	flow_count(st, fv, ip_len);
	count_route(rv, ip_len);
	count_reason(R_FLOW_FORWARDED);
	count_port(in_if, XDP_REDIRECT, ip_len);
	return XDP_REDIRECT;
}

static __always_inline int forward_v4(__u32 in_if, struct ethhdr *eth, struct iphdr *iph,
				      void *data_end, __u32 cfg_flags, __u16 zone)
{
	if ((void *)(iph + 1) > data_end)
		return verdict(in_if, XDP_PASS, R_MALFORMED);
	if (iph->version != 4 || iph->ihl < 5)
		return verdict(in_if, XDP_PASS, R_MALFORMED);
	if (iph->ihl != 5)
		return verdict(in_if, XDP_PASS, R_IP_OPTIONS);
	if (iph->frag_off & bpf_htons(0x3fff)) // MF or offset
		return verdict(in_if, XDP_PASS, R_FRAGMENT);
	__u32 daddr = iph->daddr;
	__u8 d0 = daddr & 0xff; // first octet (network order)
	__u8 s0 = iph->saddr & 0xff;
	if (d0 >= 224 || d0 == 0 || d0 == 127 || s0 >= 224 || s0 == 127 || s0 == 0)
		return verdict(in_if, XDP_PASS, R_SPECIAL_ADDR);

	__u32 ip_len = bpf_ntohs(iph->tot_len);
	// Offloaded flows first: they carry the kernel's NAT and netfilter verdict.
	int fr = flow_v4(in_if, eth, iph, data_end, cfg_flags, ip_len, zone);
	if (fr >= 0)
		return fr;
	if (cfg_flags & CFG_PUNT_V4)
		return verdict(in_if, XDP_PASS, R_PUNT_ALL);
	const struct route_val *rv = lookup_v4(daddr);
	if (!rv)
		return verdict(in_if, XDP_PASS, R_NO_ROUTE);
	if (rv->action != ACT_FORWARD)
		return route_action(in_if, rv, ip_len);
	if (iph->ttl <= 1)
		return verdict(in_if, XDP_PASS, R_TTL);

	__u32 h = mix(0x5bd1e995, iph->saddr);
	h = mix(h, daddr);
	h = mix(h, iph->protocol);
	h = mix(h, l4_ports(iph + 1, data_end, iph->protocol));
	h = fmix(h);

	__u32 r = prepare_forward(eth, rv, h, AF_INET, (const __u8 *)&iph->daddr, ip_len);
	if (r == R_FORWARDED) {
		__u32 check = iph->check;
		check += bpf_htons(0x0100);
		iph->check = (__u16)(check + (check >= 0xFFFF));
		iph->ttl--;
	}
	return finish(in_if, rv, r, ip_len);
}

static __always_inline int forward_v6(__u32 in_if, struct ethhdr *eth, struct ipv6hdr *ip6,
				      void *data_end, __u32 cfg_flags, __u16 zone)
{
	if ((void *)(ip6 + 1) > data_end)
		return verdict(in_if, XDP_PASS, R_MALFORMED);
	if (ip6->version != 6)
		return verdict(in_if, XDP_PASS, R_MALFORMED);
	if (ip6->nexthdr == 0 /* hop-by-hop */)
		return verdict(in_if, XDP_PASS, R_IP_OPTIONS);
	if (ip6->nexthdr == 44 /* fragment */)
		return verdict(in_if, XDP_PASS, R_FRAGMENT);
	__u8 d0 = ip6->daddr.in6_u.u6_addr8[0], d1 = ip6->daddr.in6_u.u6_addr8[1];
	__u8 s0 = ip6->saddr.in6_u.u6_addr8[0], s1 = ip6->saddr.in6_u.u6_addr8[1];
	// multicast destination/source, link-local destination/source, unspecified/loopback (::/8)
	if (d0 == 0xff || s0 == 0xff || (d0 == 0xfe && (d1 & 0xc0) == 0x80) ||
	    (s0 == 0xfe && (s1 & 0xc0) == 0x80) || d0 == 0 || s0 == 0)
		return verdict(in_if, XDP_PASS, R_SPECIAL_ADDR);

	__u32 ip_len = bpf_ntohs(ip6->payload_len) + sizeof(struct ipv6hdr);
	int fr = flow_v6(in_if, eth, ip6, data_end, cfg_flags, ip_len, zone);
	if (fr >= 0)
		return fr;
	if (cfg_flags & CFG_PUNT_V6)
		return verdict(in_if, XDP_PASS, R_PUNT_ALL);
	const struct route_val *rv = lookup_v6(&ip6->daddr);
	if (!rv)
		return verdict(in_if, XDP_PASS, R_NO_ROUTE);
	if (rv->action != ACT_FORWARD)
		return route_action(in_if, rv, ip_len);
	if (ip6->hop_limit <= 1)
		return verdict(in_if, XDP_PASS, R_TTL);

	__u32 h = 0x5bd1e995;
	__u32 *s = ip6->saddr.in6_u.u6_addr32, *d = ip6->daddr.in6_u.u6_addr32;
	h = mix(h, s[0]);
	h = mix(h, s[1]);
	h = mix(h, s[2]);
	h = mix(h, s[3]);
	h = mix(h, d[0]);
	h = mix(h, d[1]);
	h = mix(h, d[2]);
	h = mix(h, d[3]);
	h = mix(h, ip6->nexthdr);
	h = mix(h, l4_ports(ip6 + 1, data_end, ip6->nexthdr));
	h = fmix(h);

	__u32 r = prepare_forward(eth, rv, h, AF_INET6, ip6->daddr.in6_u.u6_addr8, ip_len);
	if (r == R_FORWARDED)
		ip6->hop_limit--;
	return finish(in_if, rv, r, ip_len);
}

SEC("xdp")
int ekho_xdp_router(struct xdp_md *ctx)
{
	// Read once: the verifier rejects re-reading ctx through a pointer the compiler offsets.
	__u32 in_if = ctx->ingress_ifindex;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return verdict(in_if, XDP_PASS, R_MALFORMED);

	__u16 proto = eth->h_proto;
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return verdict(in_if, XDP_PASS, R_NOT_IP);

	struct port_val *in_port = bpf_map_lookup_elem(&PORTS, &in_if);
	if (!in_port)
		return verdict(in_if, XDP_PASS, R_NOT_FOR_US);
	// Only frames addressed to the port itself are routed (not broadcast, multicast, other hosts).
	if (!mac_eq(eth->h_dest, in_port->mac))
		return verdict(in_if, XDP_PASS, R_NOT_FOR_US);

	__u32 zero = 0;
	__u32 cfg_flags = 0;
	struct config_val *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	if (cfg)
		cfg_flags = cfg->flags;

	if (proto == bpf_htons(ETH_P_IP))
		return forward_v4(in_if, eth, (struct iphdr *)(eth + 1), data_end, cfg_flags,
				  in_port->zone);
	return forward_v6(in_if, eth, (struct ipv6hdr *)(eth + 1), data_end, cfg_flags,
			  in_port->zone);
}

char LICENSE[] SEC("license") = "GPL";
