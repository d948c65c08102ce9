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

static __always_inline int forward_v4(__u32 in_if, struct ethhdr *eth, struct iphdr *iph,
				      void *data_end, __u32 cfg_flags)
{
	if ((void *)(iph + 1) > data_end)
		return verdict(in_if, XDP_PASS, R_MALFORMED);
	if (cfg_flags & CFG_PUNT_V4)
		return verdict(in_if, XDP_PASS, R_PUNT_ALL);
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
				      void *data_end, __u32 cfg_flags)
{
	if ((void *)(ip6 + 1) > data_end)
		return verdict(in_if, XDP_PASS, R_MALFORMED);
	if (cfg_flags & CFG_PUNT_V6)
		return verdict(in_if, XDP_PASS, R_PUNT_ALL);
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
		return forward_v4(in_if, eth, (struct iphdr *)(eth + 1), data_end, cfg_flags);
	return forward_v6(in_if, eth, (struct ipv6hdr *)(eth + 1), data_end, cfg_flags);
}

char LICENSE[] SEC("license") = "GPL";
