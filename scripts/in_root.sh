#!/usr/bin/env bash
# Runs a command as root inside a Debian root file system of another architecture (made by build_root.sh),
# in a mount namespace of its own, so that nothing it mounts outlives it:
#
#   scripts/in_root.sh ROOT [--ro HOST:PATH]... [--rw HOST:PATH]... -- COMMAND [ARGS...]
#
# The root gets /proc, the host's /dev, the host's DNS settings and the host's CA bundle (pip behind a
# proxy with its own CA works as it does outside), plus the given binds, read-only or writable. The command
# sees a clean environment: PATH, HOME, and only those host variables that steer pip or a reproducible build.
# The kernel runs the root's binaries through qemu (binfmt_misc, registered by build_root.sh).
set -euo pipefail

if (($# < 3)); then
    echo "usage: $0 ROOT [--ro HOST:PATH]... [--rw HOST:PATH]... -- COMMAND [ARGS...]" >&2
    exit 2
fi
root=$(realpath "$1")
shift
binds=()
while (($#)); do
    case $1 in
    --ro | --rw)
        binds+=("$1" "$2")
        shift 2
        ;;
    --)
        shift
        break
        ;;
    *)
        echo "$0: unexpected argument $1" >&2
        exit 2
        ;;
    esac
done

ca_bundle=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
environment=(HOME=/root PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)
[[ -f $ca_bundle ]] && environment+=(PIP_CERT=/etc/host-ca-bundle.crt)
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT HTTP_PROXY HTTPS_PROXY \
    NO_PROXY http_proxy https_proxy no_proxy SOURCE_DATE_EPOCH PYTHONHASHSEED BUILD_COMMIT BUILD_DATE; do
    [[ -n "${!name:-}" ]] && environment+=("$name=${!name}")
done

# The body runs in the new mount namespace; its arguments come through the environment, unexpanded.
export IN_ROOT=$root IN_ROOT_CA=$ca_bundle
exec unshare --mount --propagation private bash -euo pipefail -c '
    bind() {  # bind HOST PATH ro|rw
        local target=$IN_ROOT$2
        if [[ -d $1 ]]; then mkdir -p "$target"; else mkdir -p "$(dirname "$target")"; touch "$target"; fi
        mount --bind "$1" "$target"
        [[ $3 == rw ]] || mount -o remount,bind,ro "$target"
    }
    mount -t proc proc "$IN_ROOT/proc"
    mount --rbind /dev "$IN_ROOT/dev"
    cp /etc/resolv.conf "$IN_ROOT/etc/resolv.conf"
    [[ -f $IN_ROOT_CA ]] && bind "$IN_ROOT_CA" /etc/host-ca-bundle.crt ro
    count=$1
    shift
    while ((count > 0)); do
        mode=${1#--}
        bind "${2%%:*}" "${2#*:}" "$mode"
        shift 2
        count=$((count - 2))
    done
    exec chroot "$IN_ROOT" /usr/bin/env -i "$@"
' in_root "${#binds[@]}" "${binds[@]}" "${environment[@]}" "$@"
