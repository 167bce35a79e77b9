#!/usr/bin/env bash
# Makes this x86-64 machine run binaries of another architecture through qemu-user, and says so:
#
#   scripts/qemu_binfmt.sh arm64
#
# Mounts binfmt_misc and enables qemu's handler when they are not already (needs root, qemu-user-static and
# binfmt-support, which install_host_tools.sh installs). The handler must have the F flag: the kernel then
# opens qemu when the handler is registered, so that foreign binaries run in a chroot or an empty root file
# system that has no qemu of its own (the build root, the tests' containers).
set -euo pipefail
case ${1:-} in
arm64) qemu=aarch64 ;;
*)
    echo "usage: $0 arm64" >&2
    exit 2
    ;;
esac
binfmt=/proc/sys/fs/binfmt_misc
if [[ ! -e $binfmt/status ]]; then
    mount -t binfmt_misc binfmt_misc "$binfmt"
fi
if [[ ! -e $binfmt/qemu-$qemu ]]; then
    update-binfmts --enable "qemu-$qemu" >&2
fi
if ! grep -q '^flags: .*F' "$binfmt/qemu-$qemu"; then
    echo "qemu_binfmt: the binfmt_misc handler qemu-$qemu lacks the F flag: it cannot run in a chroot" >&2
    exit 1
fi
