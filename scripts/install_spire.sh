#!/usr/bin/env bash
# Installs a real spire-server (for the end-to-end tests in tests/e2e and scripts/bench_spire.py) from the
# github.com/spiffe/spire Go module, caches it outside the repository, and prints the binary's path on
# stdout (nothing else goes to stdout). Idempotent: when the cached binary is there it only prints its path.
#
#   scripts/install_spire.sh
#
#   SPIRE_VERSION   the SPIRE release to install (default v1.13.3)
#   SPIRE_CACHE_DIR where to keep it (default ${XDG_CACHE_HOME:-$HOME/.cache}/aws-kms-keymanager/spire-VERSION)
#   GO              the go command (default: go on PATH, else /usr/local/go/bin/go); Go >= 1.26, cgo and gcc
#                   (SPIRE's sqlite datastore needs cgo)
#
# The build runs in a private GOPATH/GOCACHE under the cache directory (about 2 GB), removed once the binary
# is in place, so a cold install always costs the same and leaves only the binary (230 MB) behind.
set -euo pipefail

version=${SPIRE_VERSION:-v1.13.3}
cache=${SPIRE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aws-kms-keymanager/spire-$version}
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
if ! command -v "${CC:-gcc}" >/dev/null 2>&1; then
    log "no C compiler (${CC:-gcc}): SPIRE's sqlite datastore needs cgo"
    exit 1
fi

mkdir -p "$cache"
# One installer at a time per cache directory; a second one waits, then finds the binary.
exec 9>"$cache/.lock"
flock 9
if installed; then
    echo "$binary"
    exit 0
fi

# The module and build caches of a failed attempt are kept and reused by the next one.
work=$cache/work
rm -rf "$work/module" "$work/bin"
mkdir -p "$work/module" "$work/bin"
export GOPATH=$work/gopath GOMODCACHE=$work/gopath/pkg/mod GOCACHE=$work/gocache
# Writable module cache so the work directory can be removed with rm; the local toolchain only (no silent
# toolchain download); cgo for sqlite.
export GOFLAGS=-modcacherw GOTOOLCHAIN=local CGO_ENABLED=1 GOBIN=$work/bin
unset GOOS GOARCH

start=$(date +%s)
log "installing spire-server $version with $go_version: it compiles SPIRE, about 10 minutes on 2 cores"
(
    cd "$work/module"
    "$go" mod init aws-kms-keymanager/spire-install 2>&1 |
        grep -v -e "^go: creating new go.mod" -e "^go: to add module requirements" >&2 || true
    [[ -f go.mod ]]
    "$go" get -tool "github.com/spiffe/spire/cmd/spire-server@$version" >&2
    "$go" install github.com/spiffe/spire/cmd/spire-server >&2
)
built=$work/bin/spire-server
# Built from the module proxy without VCS data, it calls itself e.g. "1.13.3-dev-unk".
if [[ "$("$built" --version 2>&1)" != "${version#v}"* ]]; then
    log "the built $built does not run as spire-server $version: $("$built" --version 2>&1 | head -1)"
    exit 1
fi

mkdir -p "$cache/bin"
mv -f "$built" "$binary.tmp"
mv -f "$binary.tmp" "$binary"
echo "$version" >"$cache/.installed"
rm -rf "$work"
log "installed $binary in $(($(date +%s) - start)) s"
echo "$binary"
