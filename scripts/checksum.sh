#!/usr/bin/env bash
# Prints the line to paste into SPIRE's server.conf for FILE: plugin_checksum = "<sha256 hex>"
set -euo pipefail
if [[ $# -ne 1 ]]; then
    echo "usage: $0 FILE" >&2
    exit 2
fi
file=$1
if [[ ! -f "$file" ]]; then
    echo "$0: $file: no such file" >&2
    exit 1
fi
if command -v sha256sum >/dev/null 2>&1; then
    sum=$(sha256sum -- "$file")
elif command -v shasum >/dev/null 2>&1; then
    sum=$(shasum -a 256 -- "$file")
else
    sum=$(python3 -c 'import hashlib, sys; print(hashlib.file_digest(open(sys.argv[1], "rb"), "sha256").hexdigest())' "$file")
fi
printf 'plugin_checksum = "%s"\n' "${sum%% *}"
