#!/bin/sh
# CI check for the xdp-router BPF object:
#   plugins/xdp-router/bpf/check.sh
# 1. The committed object (xdp_router.bpf.o) must be exactly what build.sh produces from the source with
#    the clang major version recorded in CLANG_VERSION (another major only gets a warning: code
#    generation differs between versions). The committed files are left untouched.
# 2. cargo test -p ekho-xdp-router: the integration tests load it into the kernel (verifier) and forward
#    traffic through it (they need root, iproute2, iputils-ping, ethtool and python3, and print
#    SKIP otherwise); the daemon end-to-end test builds the host itself (the test kit's build()).
# The check is plugins/xdp-common/bpf/xdp-object.sh's (one for the XDP crates).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../xdp-common/bpf/xdp-object.sh" check "$here" ekho-xdp-router xdp_router
