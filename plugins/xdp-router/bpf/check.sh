#!/bin/sh
# CI check for the xdp-router BPF object:
#   plugins/xdp-router/bpf/check.sh
# 1. The committed object (xdp_router.bpf.o) must be exactly what build.sh produces from the
#    source
#    with the clang major version recorded in CLANG_VERSION (another major only gets a warning:
#    code generation differs between versions). The committed files are left untouched.
# 2. cargo test: the Rust mirrors of the map structs must match the object's BTF (unit test); the
#    integration tests load it into the kernel (verifier) and forward traffic through it (they
#    need root, iproute2, iputils-ping, ethtool and python3, and print SKIP otherwise).
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
    cp "$here/xdp_router.bpf.o" "$here/CLANG_VERSION" "$tmp/"
    restore() { cp "$tmp/xdp_router.bpf.o" "$tmp/CLANG_VERSION" "$here/"; rm -rf "$tmp"; }
    trap restore EXIT
    CLANG="$CLANG" "$here/build.sh" >/dev/null
    if cmp -s "$here/xdp_router.bpf.o" "$tmp/xdp_router.bpf.o"; then
        echo "check.sh: committed object is up to date (clang $have)"
    elif [ "$have" = "$want" ]; then
        echo "check.sh: the committed object is stale: run plugins/xdp-router/bpf/build.sh and commit it" >&2
        exit 1
    else
        echo "check.sh: warning: clang $have differs from the recorded clang $want; object not compared" >&2
    fi
fi
cd "$root"
# The daemon end-to-end test builds the host itself (the test kit's build()).
cargo test -p ekho-xdp-router
