#!/usr/bin/env bash
# Installs the machine tools the build and the tests use, from Debian's packages, when they are missing:
#
#   musl-gcc     (musl-tools)   SPIRE is built static with musl, as its own release is (install_spire.sh)
#   debootstrap  (debootstrap)  the tests make a Debian 11 root file system to run the binary in
#   objcopy, readelf (binutils) staticx wraps the binary (scripts/build.sh)
#   qemu-aarch64-static, update-binfmts (qemu-user-static, binfmt-support)
#                               the arm64 binary is built and tested under qemu-user (scripts/build_root.sh)
#   aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)
#                               an arm64 spire-server is cross-compiled for the tests (install_spire.sh)
#   systemd-analyze (systemd)   checks packaging/systemd/spire-server.service (tests/portable/test_systemd_unit.py)
#   strace       (strace)       lists the plugin's system calls against that unit's filter (same test)
#
# Needs root and apt-get when something is missing; does nothing otherwise.
set -euo pipefail

missing=()
for pair in musl-gcc:musl-tools debootstrap:debootstrap objcopy:binutils readelf:binutils \
    qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support \
    aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu systemd-analyze:systemd strace:strace; do
    tool=${pair%%:*}
    # debootstrap and update-binfmts live in /usr/sbin, which a non-login PATH may lack.
    command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing+=("${pair#*:}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | grep .)
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_host_tools: missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "install_host_tools: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
