#!/bin/sh
# Regenerates libs/message_pb2.py from libs/message.proto.
# Needs grpcio-tools (requirements-dev.txt); the generated module is committed so
# that running the suite never needs a protobuf compiler.
set -eu
cd "$(dirname "$0")"
PY="${PYTHON:-../.venv/bin/python}"
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. message.proto
echo "generated $(pwd)/message_pb2.py"
