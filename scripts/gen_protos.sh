#!/usr/bin/env bash
# Regenerates proto_gen/ from proto/. The .proto files are staged under a proto_gen/ include root so the
# generated modules import each other as `proto_gen.<...>` instead of as top-level packages.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-"$top/.venv/bin/python"}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage/proto_gen"
cp -r "$top/proto/." "$stage/proto_gen/"
rm -rf "$top/proto_gen"
mkdir -p "$top/proto_gen"
cd "$stage"
mapfile -t files < <(find proto_gen -name '*.proto' | sort)
"$python" -m grpc_tools.protoc -I . --python_out="$top" --pyi_out="$top" --grpc_python_out="$top" "${files[@]}"
find "$top/proto_gen" -type d -exec touch {}/__init__.py \;
echo "regenerated $(find "$top/proto_gen" -name '*_pb2*.py' | wc -l) modules in proto_gen/"
