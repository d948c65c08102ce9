#!/bin/sh
# Rebuilds host/ebpf/bpf/ekho.bpf.o from ekho.bpf.c (the object is committed so that `cargo build`
# needs no clang). Needs: clang (>= 14), llvm (llvm-strip), libbpf-dev (bpf/*.h headers).
#   Debian/Ubuntu: apt-get install -y clang llvm libbpf-dev bpftool
# Usage: host/ebpf/bpf/build.sh [OUTPUT]      (default: ekho.bpf.o next to this script)
# vmlinux.h is committed too; refresh it from a kernel with `host/ebpf/bpf/build.sh --vmlinux`.
set -eu
cd "$(dirname "$0")"
CLANG=${CLANG:-clang}
STRIP=${LLVM_STRIP:-llvm-strip}
if [ "${1:-}" = "--vmlinux" ]; then
    bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux.h
    echo "wrote $(pwd)/vmlinux.h from /sys/kernel/btf/vmlinux ($(uname -r))"
    exit 0
fi
OUT=${1:-ekho.bpf.o}
case "$OUT" in /*) ;; *) OUT="$(pwd)/$OUT" ;; esac
TMP="$OUT.tmp.$$"
trap 'rm -f "$TMP"' EXIT
# Relative source path and no DWARF (-g is still required: it produces the BTF CO-RE needs) keep
# the object independent of the checkout location.
"$CLANG" -target bpf -O2 -g -fdebug-prefix-map="$(pwd)"=. -fdebug-compilation-dir=. -Wall -Werror -D__TARGET_ARCH_x86 -I. -c ekho.bpf.c -o "$TMP"
"$STRIP" -g "$TMP"
mv "$TMP" "$OUT"
trap - EXIT
"$CLANG" --version | head -n1 > "${OUT%.o}.clang-version"
echo "built $OUT ($(wc -c < "$OUT") bytes) with $(cat "${OUT%.o}.clang-version")"
