#!/bin/sh
# CI check: the committed ekho.bpf.o must be what ekho.bpf.c builds to.
# Installs nothing. Needs clang, llvm, libbpf-dev (Debian: apt-get install -y clang llvm libbpf-dev).
# - same clang as recorded in ekho.bpf.clang-version: the rebuilt object must be byte-identical;
# - another clang: the source must still build (objects differ between compiler versions), and
#   the script says so.
# Exit status: 0 ok, 1 stale object or build failure, 2 tools missing.
set -eu
cd "$(dirname "$0")"
CLANG=${CLANG:-clang}
for tool in "$CLANG" "${LLVM_STRIP:-llvm-strip}"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "check.sh: $tool not found (apt-get install -y clang llvm libbpf-dev)"; exit 2; }
done
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "check.sh: libbpf headers missing (apt-get install -y libbpf-dev)"; exit 2; }
TMPD=$(mktemp -d)
trap 'rm -rf "$TMPD"' EXIT
./build.sh "$TMPD/ekho.bpf.o" >/dev/null || { echo "check.sh: ekho.bpf.c does not build"; exit 1; }
want=$(cat ekho.bpf.clang-version)
have=$(cat "$TMPD/ekho.bpf.clang-version")
if cmp -s "$TMPD/ekho.bpf.o" ekho.bpf.o; then
    echo "check.sh: ok, committed ekho.bpf.o matches ekho.bpf.c ($have)"
elif [ "$want" = "$have" ]; then
    echo "check.sh: STALE: ekho.bpf.o differs from what ekho.bpf.c builds to with $have;"
    echo "          run host/ebpf/bpf/build.sh and commit ekho.bpf.o"
    exit 1
else
    echo "check.sh: ok (build only): ekho.bpf.c builds with $have, but ekho.bpf.o was built with"
    echo "          $want, so the objects cannot be compared byte for byte"
fi
