#!/bin/sh
# Rebuilds the committed BPF object of the flower-xdp plugin:
#   plugins/flower-xdp/bpf/build.sh
# Needs clang (14+) and the libbpf headers: apt-get install -y clang llvm libbpf-dev
# `cargo build` does not run this; it embeds the committed flower_xdp.bpf.o.
set -eu
cd "$(dirname "$0")"
CLANG=${CLANG:-$(command -v clang || command -v clang-14)}
ARCH_INC=/usr/include/$(uname -m)-linux-gnu
# Debug info without the checkout path, so the object is the same in every clone.
"$CLANG" -target bpf -O2 -g -fdebug-prefix-map="$(pwd)"=. -fdebug-compilation-dir=. -Wall -Werror \
    -I"$ARCH_INC" \
    -c flower_xdp.bpf.c -o flower_xdp.bpf.o.tmp
mv flower_xdp.bpf.o.tmp flower_xdp.bpf.o
# Keep CLANG_VERSION (the major version the committed object was built with) in step.
"$CLANG" --version | head -1 | sed -n "s/.*clang version \([0-9]*\).*/\1/p" > CLANG_VERSION
echo "built $(pwd)/flower_xdp.bpf.o ($("$CLANG" --version | head -1))"
