#!/usr/bin/env bash
# Build conformance/cnitool (a small Go CNI runtime) against Debian's libcni,
# offline, in GOPATH mode (no Go module proxy needed).
#
# Usage: bash conformance/build-cnitool.sh [OUT]
#   OUT defaults to <repo root>/dist/cnitool; a relative OUT is taken relative
#   to the current directory. Re-running simply rebuilds/overwrites OUT.
#
# Required Debian packages (Debian 12):
#   golang-go                    (go 1.19)
#   golang-github-appc-cni-dev   (libcni 1.1.2 source in /usr/share/gocode)
# libcni 1.1.2 needs nothing else outside the Go standard library, so no
# further golang-*-dev packages are required.
#
# Environment overrides: GO (go binary), GOCACHE (build cache; default
# ${TMPDIR:-/tmp}/pycni-cnitool-gocache), GOCODE (default /usr/share/gocode).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
src="$here/cnitool"

out="${1:-$repo/dist/cnitool}"
case "$out" in
    /*) ;;
    *) out="$PWD/$out" ;;
esac

GO="${GO:-go}"
if ! command -v "$GO" >/dev/null 2>&1; then
    echo "build-cnitool.sh: '$GO' not found; install golang-go (apt-get install -y golang-go)" >&2
    exit 1
fi

gocode="${GOCODE:-/usr/share/gocode}"
libcni="$gocode/src/github.com/containernetworking/cni/libcni"
if [ ! -d "$libcni" ]; then
    echo "build-cnitool.sh: libcni source not found at $libcni;" \
         "install golang-github-appc-cni-dev (apt-get install -y golang-github-appc-cni-dev)" >&2
    exit 1
fi

if [ ! -f "$src/main.go" ]; then
    echo "build-cnitool.sh: $src/main.go missing" >&2
    exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/pycni-cnitool-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

pkgdir="$tmp/gopath/src/pycni.dev/cnitool"
mkdir -p "$pkgdir"
cp "$src"/*.go "$pkgdir/"

export GO111MODULE=off
export GOPATH="$tmp/gopath:$gocode"
export GOFLAGS=
export GOPROXY=off
export CGO_ENABLED=0
export GOCACHE="${GOCACHE:-${TMPDIR:-/tmp}/pycni-cnitool-gocache}"
mkdir -p "$GOCACHE" "$(dirname "$out")"

# Build to a temp file first so a failed build never leaves a half-written OUT.
(cd "$pkgdir" && "$GO" build -trimpath -o "$tmp/cnitool" .)
install -m 0755 "$tmp/cnitool" "$out"
echo "built $out" >&2
