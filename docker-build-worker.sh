#!/usr/bin/env bash
# Build the worker image (docker/Dockerfile.worker -> pero-worker) on the shared pero-python layer, with podman
# or docker, whichever is installed (PERO_CONTAINER_ENGINE chooses).
#
#   ./docker-build-worker.sh [-t TAG] [--torch VERSION] [--cuda] [extra build options...]
#
# CPU torch by default: the machine's own wheel when pip's find-links folder has it (copied into the ignored
# docker/wheels/ and bind-mounted into the build, never into a layer), else PyTorch's CPU index.  --cuda
# installs the CUDA build from PyPI instead (several GB; run it with docker run --gpus all).
# Default tag: pero-worker:<version from pyproject.toml>, also :latest.  Run it with
#   docker run -d --name pero-worker --hostname "$(hostname)" -v "$(pwd)"/config:/etc/pero pero-worker
set -euo pipefail
cd "$(dirname "$0")"

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)"
VERSION="${VERSION:-dev}"
IMAGE=pero-worker
TORCH="$(sed -n 's/.*TORCH_SPEC="torch==\([^"]*\)".*/\1/p' install_dependencies.sh | head -1)"
TORCH="${TORCH:-2.13.0}"
CUDA=0
ARGS=()
while (( $# )); do
    case "$1" in
        -t|--tag) IMAGE="${2%%:*}"; [[ "$2" == *:* ]] && VERSION="${2#*:}"; shift 2 ;;
        --torch) TORCH="$2"; shift 2 ;;
        --cuda) CUDA=1; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
source docker/engine.sh
ensure_base
if ! "$ENGINE" image inspect pero-python:latest >/dev/null 2>&1; then
    engine_build docker/Dockerfile.python pero-python "$VERSION"
fi

mkdir -p docker/wheels
find docker/wheels -name 'torch-*.whl' ! -name "torch-${TORCH}[+-]*" -delete
if [[ $CUDA -eq 1 ]]; then
    find docker/wheels -name 'torch-*.whl' -delete
    ARGS+=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
elif ! compgen -G "docker/wheels/torch-${TORCH}[+-]*.whl" >/dev/null; then
    # pip's find-links folders (pip config list): the CPU wheel this machine installs, if it is there.
    for folder in $(pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | sort -u); do
        for wheel in "$folder"/torch-"${TORCH}"+cpu-cp311-*.whl; do
            [[ -f "$wheel" ]] || continue
            ln -f "$wheel" docker/wheels/ 2>/dev/null || cp "$wheel" docker/wheels/
            echo "[build] torch wheel from $wheel"
            break 2
        done
    done
fi
engine_build docker/Dockerfile.worker "$IMAGE" "$VERSION" --build-arg "TORCH_VERSION=$TORCH" "${ARGS[@]}"
