#!/bin/sh
# Rebuilds the committed BPF object of xdp-common, the XDP plugins' benchmarks' traffic generator:
#   plugins/xdp-common/bpf/build.sh
# Needs clang (14+) and the libbpf headers: apt-get install -y clang llvm libbpf-dev
# `cargo build` does not run this; it embeds the committed bench_gen.bpf.o. The build itself is
# plugins/xdp-common/bpf/xdp-object.sh's (one for the XDP crates).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../xdp-common/bpf/xdp-object.sh" build "$here" bench_gen
