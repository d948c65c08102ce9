#!/bin/sh
# CI check for the flower-xdp BPF object:
#   plugins/flower-xdp/bpf/check.sh
# 1. The committed object (flower_xdp.bpf.o) must be exactly what build.sh produces from the source with
#    the clang major version recorded in CLANG_VERSION (another major only gets a warning: code
#    generation differs between versions). The committed files are left untouched.
# 2. cargo test -p ekho-flower-xdp: the Rust mirrors of the map structs must match the object's BTF
#    (unit test); the integration tests load it into the kernel (verifier) and run it on crafted
#    frames (they need root and iproute2, and print SKIP otherwise).
# The check is plugins/xdp-common/bpf/xdp-object.sh's (one for the XDP crates).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../xdp-common/bpf/xdp-object.sh" check "$here" ekho-flower-xdp flower_xdp
