#!/usr/bin/env bash
# Makes (once, then reuses) the Debian 12 root file system in which scripts/build.sh freezes the binary for
# another architecture, and prints its path on stdout:
#
#   scripts/build_root.sh arm64
#
# The root holds Debian's Python 3.11 (with its shared libpython, which PyInstaller bundles), gcc and musl
# (pip builds staticx's bootloader from source: staticx publishes x86-64 wheels only), and /opt/venv with the
# pinned requirements of scripts/requirements.py. It runs here through qemu-user (scripts/qemu_binfmt.sh).
#
# Kept under ${BUILD_ROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aws-kms-keymanager/build-roots}, named by a
# hash of what goes into it: a change of pins or packages makes a new root and removes the old one. About
# 6 minutes the first time on 2 cores (debootstrap under emulation, then pip), nothing after.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

if [[ $# -ne 1 ]]; then
    echo "usage: $0 ARCH   (a Debian architecture: arm64)" >&2
    exit 2
fi
arch=$1
case $arch in
arm64) ;;
*)
    echo "build_root: no build root for architecture '$arch' (arm64 is the one made here)" >&2
    exit 2
    ;;
esac
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3-venv for the venv, libpython3.11 for PyInstaller, gcc/libc6-dev/musl-tools to build staticx,
# binutils for staticx's objcopy and PyInstaller's strip, ca-certificates for pip.
packages=python3,python3-venv,libpython3.11,gcc,libc6-dev,musl-tools,binutils,ca-certificates

log() { echo "build_root: $*" >&2; }

"$top/scripts/qemu_binfmt.sh" "$arch"

requirements=$(python3 "$top/scripts/requirements.py")
# Bump when the way the root is made changes in a way its inputs below do not show.
recipe=2
key=$(printf '%s\n' "$recipe" "$suite" "$arch" "$packages" "$requirements" | sha256sum | cut -c1-12)
cache=${BUILD_ROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aws-kms-keymanager/build-roots}
root=$cache/debian-$suite-$arch-$key
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [[ -f $root/.complete ]]; then
    echo "$root"
    exit 0
fi
for old in "$cache"/debian-"$suite"-"$arch"-*; do
    [[ -e $old ]] && rm -rf "$old"
done

start=$(date +%s)
partial=$root.partial
rm -rf "$partial"
log "debootstrap $suite for $arch (under emulation)"
debootstrap=$(command -v debootstrap || echo /usr/sbin/debootstrap)
if ! "$debootstrap" --arch="$arch" --variant=minbase --include="$packages" "$suite" "$partial" "$mirror" \
    >"$cache/debootstrap-$arch.log" 2>&1; then
    tail -n 30 "$cache/debootstrap-$arch.log" >&2
    log "debootstrap failed (whole log: $cache/debootstrap-$arch.log)"
    exit 1
fi
log "installing the pinned requirements into /opt/venv"
printf '%s\n' "$requirements" >"$partial/opt/requirements.txt"
# Build tools first, so that staticx's source build uses the pinned ones (no build isolation). Sources are
# built here, never taken from a wheel cache, with a fixed hash seed: scons orders staticx's link line by
# it, so its libnssfix.so (bundled in every binary) came out different from one root to the next.
grep -E '^(setuptools|wheel|scons)==' "$partial/opt/requirements.txt" >"$partial/opt/build-tools.txt"
PYTHONHASHSEED=0 "$top/scripts/in_root.sh" "$partial" -- bash -euo pipefail -c '
    python3 -m venv /opt/venv
    pip install --quiet --disable-pip-version-check --no-cache-dir -r /opt/build-tools.txt
    pip install --quiet --disable-pip-version-check --no-cache-dir --no-build-isolation -r /opt/requirements.txt
' >&2
touch "$partial/.complete"
mv "$partial" "$root"
log "made $root in $(($(date +%s) - start))s"
echo "$root"
