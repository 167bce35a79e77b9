#!/usr/bin/env bash
# Builds the one-file plugin binary for Linux on amd64 (x86-64) or arm64 (aarch64, Graviton), prints its
# path, size and the plugin_checksum line for SPIRE's server.conf, and records its SHA-256 in
# dist/SHA256SUMS (sha256sum's format, one line per architecture built).
#
#   scripts/build.sh                  this machine's architecture: dist/aws-kms-keymanager-linux-amd64
#   scripts/build.sh --arch arm64     dist/aws-kms-keymanager-linux-arm64, built in a Debian 12 arm64 root
#                                     under qemu-user (scripts/build_root.sh; needs root the first time)
#   scripts/build.sh --arch all       both
#   CLEAN=1 scripts/build.sh          from scratch (PyInstaller otherwise reuses its analysis)
#   BUILD_DIR=... DIST_DIR=...        other work/output directories (default: build/pyinstaller, dist)
#
# Each binary is frozen by scripts/freeze.sh: PyInstaller, then staticx, so that it needs nothing from the
# machine that runs it (the official SPIRE images are FROM scratch). The same sources give the same bytes.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
workdir=$(realpath -m "${BUILD_DIR:-$top/build/pyinstaller}")
distpath=$(realpath -m "${DIST_DIR:-$top/dist}")
cd "$top"

case $(uname -m) in
x86_64) native=amd64 ;;
aarch64) native=arm64 ;;
*) native=$(uname -m) ;;
esac
arches=("$native")
while (($#)); do
    case $1 in
    --arch)
        case ${2:-} in
        amd64 | arm64) arches=("$2") ;;
        all) arches=(amd64 arm64) ;;
        *)
            echo "$0: --arch takes amd64, arm64 or all" >&2
            exit 2
            ;;
        esac
        shift 2
        ;;
    *)
        echo "usage: $0 [--arch amd64|arm64|all]" >&2
        exit 2
        ;;
    esac
done

if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || true)
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
fi
# What --version reports (build.spec bakes it in): the commit, marked when the work tree differs from it,
# and the commit's date, so that the same sources always give the same bytes.
BUILD_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $BUILD_COMMIT != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then
    BUILD_COMMIT=$BUILD_COMMIT-modified
fi
BUILD_DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
export SOURCE_DATE_EPOCH BUILD_COMMIT BUILD_DATE

# SHA256SUMS lists the binaries dist/ holds, whichever architectures were built.
write_sums() {
    (
        cd "$distpath"
        binaries=()
        for arch in amd64 arm64; do
            if [[ -f aws-kms-keymanager-linux-$arch ]]; then binaries+=("aws-kms-keymanager-linux-$arch"); fi
        done
        if ((${#binaries[@]})); then sha256sum "${binaries[@]}"; fi >SHA256SUMS.partial
        mv SHA256SUMS.partial SHA256SUMS
    )
}

build() {
    local arch=$1
    local name=aws-kms-keymanager-linux-$arch
    local binary=$distpath/$name workpath=$workdir/$arch start root
    if [[ ${CLEAN:-0} == 1 ]]; then rm -rf "$workpath"; fi
    mkdir -p "$workpath" "$distpath"
    # A failed build must not leave the previous binary looking current.
    rm -f "$binary"
    write_sums

    start=$(date +%s)
    if [[ $arch == "$native" ]]; then
        "$top/scripts/bootstrap.sh"
        "$top/scripts/freeze.sh" "$top/.venv/bin/python" "$workpath" "$binary"
    else
        root=$("$top/scripts/build_root.sh" "$arch")
        "$top/scripts/in_root.sh" "$root" --ro "$top:/src" --rw "$workpath:/work" --rw "$distpath:/dist" -- \
            /src/scripts/freeze.sh /opt/venv/bin/python /work "/dist/$name"
    fi
    write_sums

    local size
    size=$(stat -c %s "$binary")
    echo "built:    $binary (in $(($(date +%s) - start))s; static, any $arch Linux)"
    echo "size:     $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }') MB)"
    echo "sums:     $distpath/SHA256SUMS"
    scripts/checksum.sh "$binary"
}

for arch in "${arches[@]}"; do
    build "$arch"
done
