#!/usr/bin/env bash
# Installs a real spire-server (for the end-to-end tests in tests/e2e and scripts/bench_spire.py) from the
# github.com/spiffe/spire Go module, caches it outside the repository, and prints the binary's path on
# stdout (nothing else goes to stdout). Idempotent: when the cached binary is there it only prints its path.
#
# It is built as SPIRE's own release builds it: statically linked against musl (cgo for sqlite,
# `-extldflags -static`), so the same file runs on any Linux and inside an empty root file system, as in the
# official `FROM scratch` image. For arm64 it is cross-compiled (GOARCH=arm64) with Debian's aarch64 gcc and
# linked statically against its glibc, since Debian has no musl cross compiler; the netgo and osusergo tags
# keep it from needing glibc's NSS at run time. It runs here under qemu-user (scripts/qemu_binfmt.sh).
#
#   scripts/install_spire.sh
#
#   SPIRE_VERSION   the SPIRE release to install (default v1.13.3; the tests also use v1.15.3)
#   SPIRE_ARCH      amd64 (default) or arm64
#   SPIRE_CACHE_DIR where to keep it (default ${XDG_CACHE_HOME:-$HOME/.cache}/aws-kms-keymanager)
#   GO              the go command (default: go on PATH, else /usr/local/go/bin/go); Go >= 1.26
#   MUSL_CC         musl's gcc wrapper (default musl-gcc, Debian's musl-tools); SPIRE's sqlite needs cgo
#   ARM64_CC        the arm64 cross compiler (default aarch64-linux-gnu-gcc, Debian's gcc-aarch64-linux-gnu)
#
# The binary goes to $SPIRE_CACHE_DIR/spire-VERSION-static/bin/spire-server (spire-VERSION-static-arm64 for
# arm64). The Go module and build caches
# ($SPIRE_CACHE_DIR/go, about 2 GB) are kept and shared by every version, so a second version or a retry
# compiles only what differs.
set -euo pipefail

version=${SPIRE_VERSION:-v1.13.3}
arch=${SPIRE_ARCH:-amd64}
cache_root=${SPIRE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aws-kms-keymanager}
case $arch in
amd64) cache=$cache_root/spire-$version-static ;;
arm64) cache=$cache_root/spire-$version-static-arm64 ;;
*)
    echo "install_spire: SPIRE_ARCH is amd64 or arm64, not $arch" >&2
    exit 2
    ;;
esac
binary=$cache/bin/spire-server

log() { echo "install_spire: $*" >&2; }

installed() {
    # A complete install is the binary plus the stamp written after it was checked.
    [[ -x "$binary" && "$(cat "$cache/.installed" 2>/dev/null)" == "$version" ]]
}

if installed; then
    echo "$binary"
    exit 0
fi

go=${GO:-}
if [[ -z "$go" ]]; then
    go=$(command -v go || true)
    [[ -n "$go" ]] || go=/usr/local/go/bin/go
fi
if ! go_version=$("$go" env GOVERSION 2>/dev/null); then
    log "no working Go toolchain at $go: set GO=/path/to/go (Go >= 1.26 is needed)"
    exit 1
fi
if [[ ! "$go_version" =~ ^go1\.([0-9]+) ]] || ((BASH_REMATCH[1] < 26)); then
    log "$go is $go_version: Go >= 1.26 is needed (set GO=/path/to/go)"
    exit 1
fi
if [[ $arch == amd64 ]]; then
    cc=${MUSL_CC:-musl-gcc}
    tags=
    missing="no $cc: install musl-tools (SPIRE's sqlite datastore needs cgo, linked statically with musl)"
else
    cc=${ARM64_CC:-aarch64-linux-gnu-gcc}
    tags=netgo,osusergo
    missing="no $cc: install gcc-aarch64-linux-gnu (SPIRE's sqlite datastore needs cgo)"
    "$(dirname "$0")/qemu_binfmt.sh" arm64
fi
if ! command -v "$cc" >/dev/null 2>&1; then
    log "$missing"
    exit 1
fi

mkdir -p "$cache"
# One installer at a time per cache root (the Go caches are shared); a second one waits, then finds the binary.
exec 9>"$cache_root/.lock"
flock 9
if installed; then
    echo "$binary"
    exit 0
fi

work=$cache/work
rm -rf "$work"
mkdir -p "$work/module" "$work/bin"
gocache=$cache_root/go
export GOPATH=$gocache/path GOMODCACHE=$gocache/path/pkg/mod GOCACHE=$gocache/build
# Writable module cache so it can be removed with rm; the local toolchain only (no silent toolchain
# download); cgo for sqlite, compiled and linked statically.
export GOFLAGS=-modcacherw GOTOOLCHAIN=local CGO_ENABLED=1 CC=$cc GOOS=linux GOARCH=$arch

start=$(date +%s)
log "installing spire-server $version for $arch (static) with $go_version: it compiles SPIRE, about 10 minutes on 2 cores"
(
    cd "$work/module"
    "$go" mod init aws-kms-keymanager/spire-install 2>&1 |
        grep -v -e "^go: creating new go.mod" -e "^go: to add module requirements" >&2 || true
    [[ -f go.mod ]]
    # SPIRE v1.15 requires ejbca-go-client-sdk v1.1.0 (an upstream-authority plugin's client), which the Go
    # module proxy does not serve; v1.0.2 builds. Other versions never ask for v1.1.0.
    "$go" mod edit -replace=github.com/Keyfactor/ejbca-go-client-sdk@v1.1.0=github.com/Keyfactor/ejbca-go-client-sdk@v1.0.2
    # `go get` lists every module it adds: keep that for when it fails.
    if ! "$go" get -tool "github.com/spiffe/spire/cmd/spire-server@$version" 2>go-get.log; then
        cat go-get.log >&2
        exit 1
    fi
    "$go" build -trimpath -tags "$tags" -ldflags '-s -w -linkmode external -extldflags "-static"' \
        -o "$work/bin/spire-server" github.com/spiffe/spire/cmd/spire-server >&2
)
built=$work/bin/spire-server
# Built from the module proxy without VCS data, it calls itself e.g. "1.13.3-dev-unk".
if [[ "$("$built" --version 2>&1)" != "${version#v}"* ]]; then
    log "the built $built does not run as spire-server $version: $("$built" --version 2>&1 | head -1)"
    exit 1
fi

if LC_ALL=C readelf -l "$built" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    log "the built $built is dynamically linked: it would not run in an empty root"
    exit 1
fi

mkdir -p "$cache/bin"
mv -f "$built" "$binary.tmp"
mv -f "$binary.tmp" "$binary"
echo "$version" >"$cache/.installed"
rm -rf "$work"
log "installed $binary in $(($(date +%s) - start)) s"
echo "$binary"
