#!/bin/sh
# CI check for the flower-xdp BPF object:
#   plugins/flower-xdp/bpf/check.sh
# 1. The committed object (flower_xdp.bpf.o) must be exactly what build.sh produces from the
#    source with the clang major version recorded in CLANG_VERSION (another major only gets a
#    warning: code generation differs between versions). The committed files are left untouched.
# 2. cargo test: the Rust mirrors of the map structs must match the object's BTF (unit test); the
#    integration tests load it into the kernel (verifier) and run it on crafted frames (they need
#    root and iproute2, and print SKIP otherwise).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
CLANG=${CLANG:-$(command -v clang || command -v clang-14 || true)}
if [ -z "$CLANG" ]; then
    echo "check.sh: SKIP rebuild comparison: clang not installed (apt-get install -y clang llvm libbpf-dev)" >&2
else
    want=$(cat "$here/CLANG_VERSION")
    have=$("$CLANG" --version | head -1 | sed -n 's/.*clang version \([0-9]*\).*/\1/p')
    tmp=$(mktemp -d)
    cp "$here/flower_xdp.bpf.o" "$here/CLANG_VERSION" "$tmp/"
    restore() { cp "$tmp/flower_xdp.bpf.o" "$tmp/CLANG_VERSION" "$here/"; rm -rf "$tmp"; }
    trap restore EXIT
    CLANG="$CLANG" "$here/build.sh" >/dev/null
    if cmp -s "$here/flower_xdp.bpf.o" "$tmp/flower_xdp.bpf.o"; then
        echo "check.sh: committed object is up to date (clang $have)"
    elif [ "$have" = "$want" ]; then
        echo "check.sh: the committed object is stale: run plugins/flower-xdp/bpf/build.sh and commit it" >&2
        exit 1
    else
        echo "check.sh: warning: clang $have differs from the recorded clang $want; object not compared" >&2
    fi
fi
cd "$root"
cargo test -p ekho-flower-xdp
