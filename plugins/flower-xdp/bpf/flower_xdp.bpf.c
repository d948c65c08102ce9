// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// ekho flower-xdp data path: tc flower filters of the ingress hook run in XDP on the ports the
// flower-xdp plugin owns (plugins/flower-xdp/src). The plugin compiles the filters it is handed
// into the maps below; this program dissects each frame once into a flow key (struct fkey, the
// fields flower matches) and walks the port's rules of chain 0 in (prio, handle) order: a rule
// matches when (key & rule mask) == rule key and the port ranges hold; the first match runs its
// actions in order (tc's control actions: pipe, ok, drop, continue, goto chain, jump).
//
// Only two results end a packet here: drop (XDP_DROP) and mirred egress redirect to an owned port
// (XDP_REDIRECT, after the rule's vlan push/pop/modify). Every other result (no rule matched,
// pass/ok, reclassify, an action list ending in pipe) is XDP_PASS with the frame untouched: the
// kernel's tc then classifies it itself (the host never sets skip_sw), so the software result is
// the one tc would give. The plugin therefore only compiles vlan actions into rules whose actions
// after them always end in a redirect or a drop.
//
// Frames this program cannot dissect as flower would (two or more VLAN tags, IPv6 extension
// headers, malformed headers) are passed to the kernel without looking at any rule.
//
// police: one token bucket per police action (kind police, index), shared by every CPU under a
// bpf_spin_lock, with act_police's arithmetic (tokens are nanoseconds of credit; the cost of a
// packet is (len + overhead) * mult >> shift with the kernel's psched_ratecfg_precompute mult and
// shift, computed by the plugin), so it enforces the rate exactly as the kernel does, not rate/N
// per CPU.
//
// Rebuild: plugins/flower-xdp/bpf/build.sh (the object is committed next to this file).
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

#define MAX_RULES 4096
#define MAX_FILTERS 4096
#define MAX_POLICERS 1024
#define MAX_ACTIONS 8
// Rules looked at per packet, goto chains included; beyond it the packet goes to the kernel.
#define MAX_STEPS 1024

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8

// fkey.flags
#define K_VLAN 1       // the frame carries one VLAN tag
#define K_FRAG 2       // an IP fragment (FLOW_DIS_IS_FRAGMENT)
#define K_FIRSTFRAG 4  // the first fragment (FLOW_DIS_FIRST_FRAG)

// The flow key: what flower's dissector extracts, laid out as 8 words so a rule is 8 masked
// compares. Network order as on the wire; fields a frame does not have are 0.
struct __attribute__((aligned(8))) fkey {
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__be16 proto;      // the outer EtherType (tc's filter protocol; the TPID when tagged)
	__be16 n_proto;    // the EtherType after the VLAN tag (flower's eth_type / vlan_ethtype)
	__be16 vlan_tci;   // VID | PCP << 13 (DEI cleared); 0 untagged
	__be16 vlan_tpid;  // 0 untagged
	__u8 ip_proto;
	__u8 ip_tos;       // IPv4 TOS, IPv6 traffic class
	__u8 ip_ttl;       // TTL, hop limit
	__u8 flags;        // K_*
	__be16 src_port;   // TCP/UDP/SCTP; 0 in fragments
	__be16 dst_port;
	__be16 tcp_flags;  // the 12 flag bits of the TCP header (flower's tcp_flags)
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 src_ip[16];   // IPv4 in the first 4 bytes
	__u8 dst_ip[16];
};

// action.kind
#define A_GACT 1         // control only (pass, drop, pipe, continue, goto chain, jump)
#define A_REDIRECT 2     // mirred egress redirect to arg (ifindex of an owned port)
#define A_VLAN_PUSH 3    // vlan push: tpid = vlan_proto, tci = vlan_tci
#define A_VLAN_POP 4
#define A_VLAN_MODIFY 5  // vlan modify: vid, pcp when VF_PRIO, tpid = vlan_proto
#define A_POLICE 6       // police arg (POLICERS index): conform -> control, exceed -> exceed

// action.control / action.exceed (the compiler's encoding of tc's TC_ACT_*)
#define C_PIPE 0      // next action (at the end of the list: continue into the stack)
#define C_OK 1        // accept: XDP_PASS
#define C_SHOT 2      // drop
#define C_CONTINUE 3  // try the next rule (TC_ACT_UNSPEC)
#define C_GOTO 4      // goto chain `goto_arg`
#define C_JUMP 5      // skip `goto_arg` actions
#define C_KERNEL 6    // reclassify, trap, stolen, ...: hand the frame to the kernel

// action.vflags
#define VF_PRIO 1

struct action {
	__u8 kind;       // A_*
	__u8 control;    // C_* (police: conform)
	__u8 exceed;     // C_* (police only)
	__u8 vflags;     // VF_*
	__be16 vlan_proto;
	__be16 vlan_tci;
	__u32 arg;       // redirect ifindex, POLICERS index
	__u32 goto_arg;  // control's chain (C_GOTO) or count (C_JUMP)
	__u32 exceed_arg;
	__u32 _pad;
};

struct rule {
	struct fkey key;   // already masked
	struct fkey mask;
	__u16 sport_min;   // host order; sport_max 0: no range
	__u16 sport_max;
	__u16 dport_min;
	__u16 dport_max;
	__u32 stats_id;    // FILTER_STATS index (one per filter, shared by its copies)
	__u32 n_actions;
	struct action actions[MAX_ACTIONS];
};

struct chain_key {
	__u32 ifindex;
	__u32 gen;
	__u32 chain;
};

// Rules [first, first + count) of RULES, in order.
struct chain_val {
	__u32 first;
	__u32 count;
};

struct port_val {
	__u32 gen;   // which generation of CHAINS entries is live (flipped once per recompile)
	__u32 flags;
};

struct filter_stats {
	__u64 packets;
	__u64 bytes;      // as tc counts them: the frame without Ethernet header and outer tag
	__u64 drops;
	__u64 lastused;   // bpf_ktime_get_ns of the last match, 0 = none
};

struct police {
	struct bpf_spin_lock lock;
	__u32 _pad0;
	// state (the plugin writes 0s: the first packet finds a full bucket, as act_police's init)
	__s64 toks;
	__s64 ptoks;
	__u64 t_c;
	// parameters
	__s64 burst;      // ns of credit at the rate (tcfp_burst)
	__s64 pburst;     // packet burst, ns (tcfp_pkt_burst)
	__u32 mult;       // byte rate: psched_ratecfg mult, shift
	__u32 shift;
	__u32 pmult;      // packet rate
	__u32 pshift;
	__u32 mtu;        // longer packets exceed (tcfp_mtu)
	__u32 overhead;
	__u32 mpu;
	__u32 flags;      // POL_RATE | POL_PPS
};

#define POL_RATE 1
#define POL_PPS 2

// Drop / pass reasons (index into REASONS); keep in sync with src/maps.rs REASON_NAMES.
enum reason {
	R_NOT_OWNED = 0,
	R_UNPARSED,    // not dissected (QinQ, IPv6 extension headers, malformed): to the kernel
	R_NO_MATCH,
	R_PASSED,      // a rule's result is pass / continue into the stack
	R_DROPPED,
	R_REDIRECTED,
	R_REDIRECT_FAILED,
	R_STEPS,       // MAX_STEPS reached
	R_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule);
} RULES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct chain_key);
	__type(value, struct chain_val);
} CHAINS SEC(".maps");

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
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_FILTERS);
	__type(key, __u32);
	__type(value, struct filter_stats);
} FILTER_STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_POLICERS);
	__type(key, __u32);
	__type(value, struct police);
} POLICERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_MAX);
	__type(key, __u32);
	__type(value, __u64);
} REASONS SEC(".maps");

static __always_inline int reason(int verdict, __u32 r)
{
	__u64 *c = bpf_map_lookup_elem(&REASONS, &r);
	if (c)
		*c += 1;
	return verdict;
}

// ---- dissection ------------------------------------------------------------------------------

// Fills k from the frame; returns 0, or -1 when the frame is not dissected here.
static __always_inline int dissect(void *data, void *data_end, struct fkey *k, __u32 *l2len)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(k->dst_mac, eth->h_dest, 6);
	__builtin_memcpy(k->src_mac, eth->h_source, 6);
	__be16 proto = eth->h_proto;
	k->proto = proto;
	void *l3 = eth + 1;
	__u32 hdr = 14;
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		__be16 *tag = l3;
		if ((void *)(tag + 2) > data_end)
			return -1;
		k->vlan_tpid = proto;
		k->vlan_tci = tag[0] & bpf_htons(0xefff);
		k->flags |= K_VLAN;
		proto = tag[1];
		l3 = tag + 2;
		hdr += 4;
		// A second tag is flower's cvlan: not dissected here.
		if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_))
			return -1;
	}
	k->n_proto = proto;
	*l2len = hdr;
	void *l4;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > data_end)
			return -1;
		if (ip->ihl < 5 || ip->version != 4)
			return -1;
		__builtin_memcpy(k->src_ip, &ip->saddr, 4);
		__builtin_memcpy(k->dst_ip, &ip->daddr, 4);
		k->ip_proto = ip->protocol;
		k->ip_tos = ip->tos;
		k->ip_ttl = ip->ttl;
		if (ip->frag_off & bpf_htons(0x3fff)) {
			k->flags |= K_FRAG;
			if (!(ip->frag_off & bpf_htons(0x1fff)))
				k->flags |= K_FIRSTFRAG;
			// flower dissects no transport header of a fragment, not even the first
			return 0;
		}
		l4 = (void *)ip + ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if (ip6->version != 6)
			return -1;
		__builtin_memcpy(k->src_ip, &ip6->saddr, 16);
		__builtin_memcpy(k->dst_ip, &ip6->daddr, 16);
		__u8 nh = ip6->nexthdr;
		// extension headers (hop-by-hop, routing, fragment, destination options, AH, ESP's
		// neighbours): flower walks them; here they go to the kernel
		if (nh == 0 || nh == 43 || nh == 44 || nh == 60 || nh == 51 || nh == 135 ||
		    nh == 139 || nh == 140)
			return -1;
		k->ip_proto = nh;
		k->ip_tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		k->ip_ttl = ip6->hop_limit;
		l4 = ip6 + 1;
	} else {
		return 0;
	}
	__u8 p = k->ip_proto;
	if (p == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return -1;
		k->src_port = th->source;
		k->dst_port = th->dest;
		// doff and the reserved bits are masked off: the 12 bits flower keys
		k->tcp_flags = *(__be16 *)((__u8 *)th + 12) & bpf_htons(0x0fff);
	} else if (p == IPPROTO_UDP || p == IPPROTO_SCTP || p == 136 /* UDPLITE */) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) > data_end)
			return -1;
		k->src_port = ports[0];
		k->dst_port = ports[1];
	} else if ((p == IPPROTO_ICMP && proto == bpf_htons(ETH_P_IP)) ||
		   (p == 58 /* ICMPV6 */ && proto == bpf_htons(ETH_P_IPV6))) {
		__u8 *ic = l4;
		if ((void *)(ic + 2) > data_end)
			return -1;
		k->icmp_type = ic[0];
		k->icmp_code = ic[1];
	}
	return 0;
}

// ---- classification (a bpf_loop callback per rule looked at) ---------------------------------

// verdict
#define V_NONE 0
#define V_PASS 1
#define V_DROP 2
#define V_REDIRECT 3

struct walk {
	struct fkey k;
	__u64 now;
	__u32 ifindex;
	__u32 gen;
	__u32 pc;         // RULES index looked at next
	__u32 end;        // end of the chain's range
	__u32 len;        // packet length as tc counts it
	__u32 verdict;    // V_*
	__u32 reason;
	__u32 rule;       // the rule whose actions decided (for the vlan ops)
	__u32 ops;        // bit i: action i of `rule` is a vlan op to carry out
	__u32 target;     // redirect ifindex
};

static __always_inline int enter_chain(struct walk *w, __u32 chain)
{
	struct chain_key ck = { .ifindex = w->ifindex, .gen = w->gen, .chain = chain };
	struct chain_val *cv = bpf_map_lookup_elem(&CHAINS, &ck);
	if (!cv) {
		// an empty chain: nothing matches, tc continues into the stack
		w->verdict = V_PASS;
		w->reason = R_NO_MATCH;
		return 1;
	}
	w->pc = cv->first;
	w->end = cv->first + cv->count;
	return 0;
}

static __always_inline int rule_matches(const struct rule *r, const struct fkey *k)
{
	const __u64 *kw = (const __u64 *)k;
	const __u64 *rk = (const __u64 *)&r->key;
	const __u64 *rm = (const __u64 *)&r->mask;
#pragma unroll
	for (int i = 0; i < 8; i++)
		if ((kw[i] & rm[i]) != rk[i])
			return 0;
	if (r->sport_max) {
		__u16 p = bpf_ntohs(k->src_port);
		if (p < r->sport_min || p > r->sport_max)
			return 0;
	}
	if (r->dport_max) {
		__u16 p = bpf_ntohs(k->dst_port);
		if (p < r->dport_min || p > r->dport_max)
			return 0;
	}
	return 1;
}

// act_police's conform test on one bucket; 1 conform, 0 exceed. (Global functions are verified
// once, on their own: the walk stays within the verifier's budget.)
__noinline int police_conforms(__u32 id, __u32 len, __u64 now)
{
	struct police *p = bpf_map_lookup_elem(&POLICERS, &id);
	if (!p)
		return 0;
	if (len > p->mtu)
		return 0;
	if (!(p->flags & (POL_RATE | POL_PPS)))
		return 1;
	int ok = 0;
	bpf_spin_lock(&p->lock);
	__s64 elapsed = (__s64)(now - p->t_c);
	__s64 toks = elapsed, ptoks = 0;
	if (toks > p->burst)
		toks = p->burst;
	if (p->flags & POL_RATE) {
		__u64 l = len + p->overhead;
		if (l < p->mpu)
			l = p->mpu;
		toks += p->toks;
		if (toks > p->burst)
			toks = p->burst;
		toks -= (__s64)((l * p->mult) >> (p->shift & 63));
	}
	if (p->flags & POL_PPS) {
		ptoks = elapsed;
		if (ptoks > p->pburst)
			ptoks = p->pburst;
		ptoks += p->ptoks;
		if (ptoks > p->pburst)
			ptoks = p->pburst;
		ptoks -= (__s64)(((__u64)1 * p->pmult) >> (p->pshift & 63));
	}
	if ((toks | ptoks) >= 0) {
		p->t_c = now;
		p->toks = toks;
		p->ptoks = ptoks;
		ok = 1;
	}
	bpf_spin_unlock(&p->lock);
	return ok;
}

static __always_inline void count(__u32 id, __u32 len, __u64 now, int dropped)
{
	struct filter_stats *s = bpf_map_lookup_elem(&FILTER_STATS, &id);
	if (!s)
		return;
	s->packets += 1;
	s->bytes += len;
	s->lastused = now;
	if (dropped)
		s->drops += 1;
}

// Applies control c (with argument arg) after action i; returns what the walk does next:
// -1 next action (sets *skip for jumps), 0 next rule / new chain, 1 stop.
static __always_inline int control(struct walk *w, __u8 c, __u32 arg, __u32 *skip)
{
	switch (c) {
	case C_PIPE:
		return -1;
	case C_JUMP:
		*skip = arg;
		return -1;
	case C_OK:
	case C_KERNEL:
		w->verdict = V_PASS;
		w->reason = R_PASSED;
		return 1;
	case C_SHOT:
		w->verdict = V_DROP;
		w->reason = R_DROPPED;
		return 1;
	case C_CONTINUE:
		return 0;
	case C_GOTO:
		return enter_chain(w, arg);
	}
	w->verdict = V_PASS;
	w->reason = R_PASSED;
	return 1;
}

// Looks at rule `pc` for the walk: 0 when the walk goes on (no match, continue, goto chain), 1
// when it is decided (w->verdict).
__noinline int run_rule(struct walk *w, __u32 pc)
{
	if (!w)
		return 1;
	struct rule *r = bpf_map_lookup_elem(&RULES, &pc);
	if (!r) {
		w->verdict = V_PASS;
		w->reason = R_NO_MATCH;
		return 1;
	}
	if (!rule_matches(r, &w->k))
		return 0;

	__u32 n = r->n_actions;
	__u32 skip = 0;
	int next = -1;
	w->ops = 0;
	for (int i = 0; i < MAX_ACTIONS; i++) {
		if (i >= n)
			break;
		if (skip) {
			skip--;
			continue;
		}
		struct action *a = &r->actions[i];
		__u8 c = a->control;
		__u32 arg = a->goto_arg;
		if (a->kind == A_REDIRECT) {
			w->verdict = V_REDIRECT;
			w->reason = R_REDIRECTED;
			w->target = a->arg;
			next = 1;
			break;
		}
		if (a->kind == A_VLAN_PUSH || a->kind == A_VLAN_POP || a->kind == A_VLAN_MODIFY)
			w->ops |= 1u << i;
		else if (a->kind == A_POLICE && !police_conforms(a->arg, w->len, w->now)) {
			c = a->exceed;
			arg = a->exceed_arg;
		}
		next = control(w, c, arg, &skip);
		if (next >= 0)
			break;
	}
	if (next < 0) {
		// the list ended on pipe: classified, continue into the stack
		w->verdict = V_PASS;
		w->reason = R_PASSED;
		next = 1;
	}
	count(r->stats_id, w->len, w->now, next == 1 && w->verdict == V_DROP);
	if (next == 1)
		w->rule = pc;
	return next;
}

static long step(__u32 index, void *ctx)
{
	struct walk *w = ctx;
	if (w->pc >= w->end) {
		w->verdict = V_PASS;
		w->reason = R_NO_MATCH;
		return 1;
	}
	__u32 pc = w->pc;
	w->pc = pc + 1;
	return run_rule(w, pc) ? 1 : 0;
}

// ---- vlan rewriting --------------------------------------------------------------------------

static __always_inline int vlan_push(struct xdp_md *ctx, __be16 tpid, __be16 tci)
{
	if (bpf_xdp_adjust_head(ctx, -4))
		return -1;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + 18 > data_end)
		return -1;
	__builtin_memmove(data, data + 4, 12);
	__be16 *tag = data + 12;
	tag[0] = tpid;
	tag[1] = tci;
	return 0;
}

static __always_inline int vlan_pop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + 18 > data_end)
		return -1;
	__be16 t = *(__be16 *)(data + 12);
	if (t != bpf_htons(ETH_P_8021Q_) && t != bpf_htons(ETH_P_8021AD_))
		return 0; // untagged: act_vlan pops nothing
	__builtin_memmove(data + 4, data, 12);
	if (bpf_xdp_adjust_head(ctx, 4))
		return -1;
	return 0;
}

static __always_inline int vlan_modify(struct xdp_md *ctx, const struct action *a)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + 18 > data_end)
		return -1;
	__be16 *tag = data + 12;
	if (tag[0] != bpf_htons(ETH_P_8021Q_) && tag[0] != bpf_htons(ETH_P_8021AD_))
		return 0; // untagged: a no-op in act_vlan
	__u16 tci = bpf_ntohs(tag[1]);
	__u16 want = bpf_ntohs(a->vlan_tci);
	tci = (tci & ~0x0fff) | (want & 0x0fff);
	if (a->vflags & VF_PRIO)
		tci = (tci & 0x1fff) | (want & 0xe000);
	tag[0] = a->vlan_proto;
	tag[1] = bpf_htons(tci);
	return 0;
}

SEC("xdp")
int ekho_flower_xdp(struct xdp_md *ctx)
{
	__u32 in_if = ctx->ingress_ifindex;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	struct port_val *port = bpf_map_lookup_elem(&PORTS, &in_if);
	if (!port)
		return reason(XDP_PASS, R_NOT_OWNED);

	struct walk w = {};
	__u32 l2len = 14;
	if (dissect(data, data_end, &w.k, &l2len) < 0)
		return reason(XDP_PASS, R_UNPARSED);
	w.len = (__u32)(data_end - data) - l2len;
	w.ifindex = in_if;
	w.gen = port->gen;
	w.now = bpf_ktime_get_ns();
	if (enter_chain(&w, 0))
		return reason(XDP_PASS, R_NO_MATCH);
	bpf_loop(MAX_STEPS, step, &w, 0);

	switch (w.verdict) {
	case V_DROP:
		return reason(XDP_DROP, R_DROPPED);
	case V_REDIRECT:
		break;
	case V_NONE:
		return reason(XDP_PASS, R_STEPS);
	default:
		return reason(XDP_PASS, w.reason);
	}

	// The target must be an owned port (the plugin keeps PORTS and TX_PORTS in step): checked
	// before anything is rewritten, so a frame that cannot be redirected goes to the kernel as
	// it came.
	__u32 target = w.target;
	if (!bpf_map_lookup_elem(&PORTS, &target))
		return reason(XDP_PASS, R_REDIRECT_FAILED);
	// The deciding rule's vlan ops, in order, then the redirect.
	if (w.ops) {
		__u32 pc = w.rule;
		struct rule *r = bpf_map_lookup_elem(&RULES, &pc);
		if (!r)
			return reason(XDP_PASS, R_REDIRECT_FAILED);
		for (int i = 0; i < MAX_ACTIONS; i++) {
			if (!(w.ops & (1u << i)))
				continue;
			struct action *a = &r->actions[i];
			int err = 0;
			if (a->kind == A_VLAN_PUSH)
				err = vlan_push(ctx, a->vlan_proto, a->vlan_tci);
			else if (a->kind == A_VLAN_POP)
				err = vlan_pop(ctx);
			else if (a->kind == A_VLAN_MODIFY)
				err = vlan_modify(ctx, a);
			if (err)
				// the frame may be half rewritten: no longer the kernel's to classify
				return reason(XDP_DROP, R_REDIRECT_FAILED);
		}
	}
	long rc = bpf_redirect_map(&TX_PORTS, target, 0);
	if (rc != XDP_REDIRECT)
		return reason(XDP_DROP, R_REDIRECT_FAILED);
	return reason(XDP_REDIRECT, R_REDIRECTED);
}

char LICENSE[] SEC("license") = "GPL";
