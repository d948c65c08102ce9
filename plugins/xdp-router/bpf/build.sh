#!/bin/sh
# Rebuilds the committed BPF object of the xdp-router plugin:
#   plugins/xdp-router/bpf/build.sh
# Needs clang (14+) and the libbpf headers: apt-get install -y clang llvm libbpf-dev
# `cargo build` does not run this; it embeds the committed xdp_router.bpf.o.
set -eu
cd "$(dirname "$0")"
CLANG=${CLANG:-$(command -v clang || command -v clang-14)}
ARCH_INC=/usr/include/$(uname -m)-linux-gnu
# xdp_router: the plugin's data path (the benchmarks' generator is plugins/xdp-common/bpf's).
for obj in xdp_router; do
    # Debug info without the checkout path, so the object is the same in every clone.
    "$CLANG" -target bpf -O2 -g -fdebug-prefix-map="$(pwd)"=. -fdebug-compilation-dir=. -Wall -Werror \
        -I"$ARCH_INC" \
        -c $obj.bpf.c -o $obj.bpf.o.tmp
    mv $obj.bpf.o.tmp $obj.bpf.o
done
# Keep CLANG_VERSION (the major version the committed object was built with) in step.
"$CLANG" --version | head -1 | sed -n "s/.*clang version \([0-9]*\).*/\1/p" > CLANG_VERSION
echo "built $(pwd)/xdp_router.bpf.o ($("$CLANG" --version | head -1))"
