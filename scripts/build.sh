#!/usr/bin/env bash
# Builds the one-file plugin binary dist/aws-kms-keymanager from build.spec, then prints its path, size
# and the plugin_checksum line for SPIRE's server.conf.
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
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]] && epoch=$(git log -1 --format=%ct 2>/dev/null) && [[ -n "$epoch" ]]; then
    export SOURCE_DATE_EPOCH=$epoch
fi

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

binary="$distpath/aws-kms-keymanager"
rm -f "$binary"  # a failed build must not leave the previous binary looking current

start=$(date +%s)
.venv/bin/python -m PyInstaller \
    --noconfirm \
    --log-level "${PYINSTALLER_LOG_LEVEL:-WARN}" \
    --workpath "$workpath" \
    --distpath "$distpath" \
    build.spec
elapsed=$(($(date +%s) - start))

size=$(stat -c %s "$binary")
echo "built:    $binary (in ${elapsed}s)"
echo "size:     $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }') MB)"
scripts/checksum.sh "$binary"
