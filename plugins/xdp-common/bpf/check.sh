#!/bin/sh
# CI check for the xdp-common BPF object:
#   plugins/xdp-common/bpf/check.sh
# 1. The committed object (bench_gen.bpf.o) must be exactly what build.sh produces from the source with
#    the clang major version recorded in CLANG_VERSION (another major only gets a warning: code
#    generation differs between versions). The committed files are left untouched.
# 2. cargo test -p ekho-xdp-common: its unit test loads it into the kernel (verifier; needs root, else SKIP).
# The check is plugins/xdp-common/bpf/xdp-object.sh's (one for the XDP crates).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../xdp-common/bpf/xdp-object.sh" check "$here" ekho-xdp-common bench_gen
