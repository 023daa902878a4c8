#!/usr/bin/env bash
# Regenerate the Python modules of ecosched's TGI v3 shard protocol from generate_v3.proto.
# Uses grpcio-tools 1.62 (protobuf 4.25 generated code), which loads under protobuf 4.x to 7.x, so
# the router runs inside TGI images as well as beside vLLM. Needs registry access the first time.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
proto_dir="$here/adapters/ecosched_adapters/tgi/proto"
venv="${GEN_PROTO_VENV:-${TMPDIR:-/tmp}/ecosched-grpc-tools}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "grpcio-tools==1.62.3"
fi
cd "$proto_dir"
"$venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. generate_v3.proto
# the generated stub imports its sibling as a top-level module; make it package-relative
sed -i 's/^import generate_v3_pb2 as /from . import generate_v3_pb2 as /' generate_v3_pb2_grpc.py
echo "regenerated $(ls generate_v3_pb2*.py* | tr '\n' ' ')"
