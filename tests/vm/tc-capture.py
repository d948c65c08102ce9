#!/usr/bin/env python3
"""Captures the kernel's tc action messages as test vectors for the mirror's typed actions
(host/mirror/src/netlink/tc_act/): in a fresh network namespace, each `tc actions add` below,
then an RTM_GETACTION dump of its kind (and a flower filter's RTM_GETTFILTER dump), printed as
`# command`, `hex <message>`, `json <tc -j actions list>`, `text <tc actions list>`.

Run it in the 6.1 VM (this machine's kernel has mirred only):
    vng --run /boot/vmlinuz-*-amd64 --disable-kvm --user root --exec 'python3 tests/vm/tc-capture.py'
TC_CAPTURE_KINDS="mpls sample" captures only these kinds (and no filter).
"""
import os, socket, struct, subprocess, sys

ACTIONS = {
    "gact": ["drop index 1", "pass random determ drop 10 index 2", "pipe index 4", "reclassify random netrand ok 25 index 5"],
    "vlan": ["vlan push id 100 protocol 802.1Q priority 3 index 1", "vlan pop index 2",
             "vlan modify id 200 protocol 802.1ad pipe index 3"],
    "police": ["police rate 1mbit burst 10k conform-exceed drop/pipe index 1",
               "police rate 10mbit burst 64k mtu 2000 peakrate 20mbit conform-exceed drop index 2",
               "police pkts_rate 1000 pkts_burst 100 index 3",
               "police rate 1mbit burst 10k avrate 500kbit conform-exceed reclassify/ok index 4"],
    "skbedit": ["skbedit mark 5 priority 1:2 queue_mapping 3 index 1",
                "skbedit ptype host index 2", "skbedit mark 0x10/0xff pipe index 3"],
    "pedit": ["pedit ex munge eth dst set 00:11:22:33:44:55 index 1",
              "pedit ex munge ip ttl dec index 2",
              "pedit munge offset 0 u32 set 0x1 munge offset 4 u16 set 0x2 pipe index 3",
              "pedit ex munge ip dst set 10.0.0.9 munge tcp dport set 80 index 4"],
    "csum": ["csum iph and tcp index 1", "csum udp pipe index 2"],
    "ct": ["ct index 1", "ct commit zone 5 mark 0x1/0xff index 2",
           "ct commit nat src addr 10.0.0.1-10.0.0.2 port 1000-2000 index 3",
           "ct clear index 4", "ct zone 3 index 5"],
    "mpls": ["mpls push label 17 tc 3 ttl 64 index 1", "mpls pop protocol ip index 2",
             "mpls mod label 5 index 3", "mpls dec_ttl pipe index 4",
             "mpls push protocol mpls_mc label 20 bos 1 index 5", "mpls mac_push label 30 index 6"],
    "sample": ["sample rate 100 group 5 trunc 128 index 1", "sample rate 10 group 1 pipe index 2"],
    "skbmod": ["skbmod set dmac 00:11:22:33:44:55 smac 00:aa:bb:cc:dd:ee index 1",
               "skbmod swap mac index 2", "skbmod set etype 0x8100 pipe index 3"],
    "connmark": ["connmark zone 5 index 1", "connmark pipe index 2"],
}

RTM_GETACTION, RTM_GETTFILTER = 50, 46
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300


def attr(t, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * ((4 - n % 4) % 4)


def dump(msg_type, body):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    s.bind((0, 0))
    s.send(struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
    out = []
    while True:
        data = s.recv(1 << 16)
        off = 0
        while off < len(data):
            n, t = struct.unpack_from("=IH", data, off)
            if t in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
                s.close()
                return out
            out.append(data[off:off + n])
            off += (n + 3) & ~3


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True)


def main():
    if os.environ.get("TC_CAPTURE_NETNS") != "1":
        os.environ["TC_CAPTURE_NETNS"] = "1"
        os.execvp("unshare", ["unshare", "-n", sys.executable] + sys.argv)
    print(f"# kernel {os.uname().release}")
    # TC_CAPTURE_KINDS="mpls sample": only these kinds, no filters.
    only = os.environ.get("TC_CAPTURE_KINDS", "").split()
    for kind, cmds in ACTIONS.items():
        if only and kind not in only:
            continue
        for c in cmds:
            r = sh(f"tc actions add action {c}")
            print(f"# tc actions add action {c}" + (f"  FAILED: {r.stderr.strip()}" if r.returncode else ""))
        body = struct.pack("=BxH", 0, 0) + attr(1, attr(1, attr(1, kind.encode() + b"\0")))
        for m in dump(RTM_GETACTION, body):
            print("hex", m.hex())
        print("json", sh(f"tc -j actions list action {kind}").stdout.strip())
        for line in sh(f"tc actions list action {kind}").stdout.splitlines():
            print("text", line)
    if only:
        return 0
    # Inline actions in a flower filter.
    sh("ip link add d0 type dummy && ip link set d0 up && tc qdisc add dev d0 clsact")
    c = ("tc filter add dev d0 ingress pref 1 protocol ip flower dst_ip 10.0.0.1 ip_proto tcp "
         "action vlan push id 5 action skbedit mark 7 action gact drop")
    r = sh(c)
    print(f"# {c}" + (f"  FAILED: {r.stderr.strip()}" if r.returncode else ""))
    c2 = "tc filter add dev d0 egress pref 2 protocol all matchall action mirred egress redirect dev d0"
    r = sh(c2)
    print(f"# {c2}" + (f"  FAILED: {r.stderr.strip()}" if r.returncode else ""))
    ifindex = socket.if_nametoindex("d0")
    for hook, parent in (("ingress", 0xFFFFFFF2), ("egress", 0xFFFFFFF3)):
        print(f"# filters of d0 {hook}")
        body = struct.pack("=BxHiIII", 0, 0, ifindex, 0, parent, 0)
        for m in dump(RTM_GETTFILTER, body):
            print("hex", m.hex())
        print("json", sh(f"tc -j filter show dev d0 {hook}").stdout.strip())
        for line in sh(f"tc filter show dev d0 {hook}").stdout.splitlines():
            print("text", line)


if __name__ == "__main__":
    sys.exit(main())
