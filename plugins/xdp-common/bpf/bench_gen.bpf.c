// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// Traffic generator for examples/bench_forward.rs (not part of the plugin): run with
// BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES in h1's namespace, it redirects copies of one
// UDP frame into h1's veth, so they reach r's port as XDP frames (no skb), like frames from a NIC.
// Each copy gets a random UDP source port out of 64 (64 flows; the UDP checksum is 0).
// Built by build.sh next to the plugin's object; not loaded by the plugin.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

const volatile __u32 target_ifindex = 0;
// Ethernet + IPv4 + UDP headers of the frame. Live-frame pages are recycled with whatever the
// receivers did to them (MAC rewrite, TTL decrement), so every run writes the headers afresh.
const volatile __u8 headers[42] = {};

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	// Ethernet (14) + IPv4 without options (20): UDP source port at 34.
	if (data + 42 > data_end)
		return XDP_ABORTED;
	__u8 *d = data;
#pragma unroll
	for (int i = 0; i < 42; i++)
		d[i] = headers[i];
	__u16 *sport = data + 34;
	*sport = bpf_htons(10000 + (bpf_get_prandom_u32() & 63));
	return bpf_redirect(target_ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
