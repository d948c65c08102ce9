#!/bin/sh
# Builds and checks the committed BPF objects of the XDP crates (xdp-common, xdp-router,
# flower-xdp). Each crate's bpf/build.sh and bpf/check.sh call it:
#   xdp-object.sh build DIR OBJ...        rebuilds DIR/OBJ.bpf.o from DIR/OBJ.bpf.c and records the
#                                         clang major version in DIR/CLANG_VERSION
#   xdp-object.sh check DIR CRATE OBJ...  CI: 1. every committed DIR/OBJ.bpf.o must be exactly what
#                                         `build` produces from the source with the clang major
#                                         recorded in CLANG_VERSION (another major only gets a
#                                         warning: code generation differs between versions); the
#                                         committed files are left untouched. 2. cargo test -p CRATE.
# Needs clang (14+) and the libbpf headers: apt-get install -y clang llvm libbpf-dev
set -eu
cmd=$1
dir=$(cd "$2" && pwd)
shift 2
root=$(cd "$(dirname "$0")/../../.." && pwd)
rel=${dir#"$root"/}
case "$cmd" in
build)
    cd "$dir"
    CLANG=${CLANG:-$(command -v clang || command -v clang-14)}
    ARCH_INC=/usr/include/$(uname -m)-linux-gnu
    for obj in "$@"; do
        # Debug info without the checkout path, so the object is the same in every clone.
        "$CLANG" -target bpf -O2 -g -fdebug-prefix-map="$(pwd)"=. -fdebug-compilation-dir=. -Wall -Werror \
            -I"$ARCH_INC" \
            -c "$obj.bpf.c" -o "$obj.bpf.o.tmp"
        mv "$obj.bpf.o.tmp" "$obj.bpf.o"
        echo "built $(pwd)/$obj.bpf.o ($("$CLANG" --version | head -1))"
    done
    # Keep CLANG_VERSION (the major version the committed objects were built with) in step.
    "$CLANG" --version | head -1 | sed -n "s/.*clang version \([0-9]*\).*/\1/p" > CLANG_VERSION
    ;;
check)
    crate=$1
    shift
    CLANG=${CLANG:-$(command -v clang || command -v clang-14 || true)}
    if [ -z "$CLANG" ]; then
        echo "check.sh: SKIP rebuild comparison: clang not installed (apt-get install -y clang llvm libbpf-dev)" >&2
    else
        want=$(cat "$dir/CLANG_VERSION")
        have=$("$CLANG" --version | head -1 | sed -n 's/.*clang version \([0-9]*\).*/\1/p')
        tmp=$(mktemp -d)
        cp "$dir/CLANG_VERSION" "$tmp/"
        for obj in "$@"; do cp "$dir/$obj.bpf.o" "$tmp/"; done
        restore() {
            for obj in "$@"; do cp "$tmp/$obj.bpf.o" "$dir/"; done
            cp "$tmp/CLANG_VERSION" "$dir/"
            rm -rf "$tmp"
        }
        trap 'restore "$@"' EXIT
        CLANG="$CLANG" "$0" build "$dir" "$@" >/dev/null
        stale=""
        for obj in "$@"; do
            cmp -s "$dir/$obj.bpf.o" "$tmp/$obj.bpf.o" || stale="$stale $obj.bpf.o"
        done
        if [ -z "$stale" ]; then
            echo "check.sh: committed object is up to date (clang $have)"
        elif [ "$have" = "$want" ]; then
            echo "check.sh: the committed object is stale ($rel:$stale): run $rel/build.sh and commit it" >&2
            exit 1
        else
            echo "check.sh: warning: clang $have differs from the recorded clang $want; object not compared" >&2
        fi
    fi
    cd "$root"
    cargo test -p "$crate"
    ;;
*)
    echo "usage: $0 build DIR OBJ... | check DIR CRATE OBJ..." >&2
    exit 2
    ;;
esac
