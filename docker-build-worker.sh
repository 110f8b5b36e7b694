#!/usr/bin/env bash
# Build the GPU worker image (docker/Dockerfile.worker): CUDA runtime, torch (CUDA), pero-ocr, the worker.
#
#   ./docker-build-worker.sh [-t TAG] [--torch VERSION] [--cuda-image IMAGE] [extra docker build options...]
#
# Default tag: pero-worker:<version from pyproject.toml>, also tagged :latest.  Run it with
#   docker run --gpus all -v "$PWD/config:/etc/pero:ro" -v pero-cache:/var/cache/pero-worker pero-worker:latest
# (config/ as made by scripts/system_setup.py; secrets/service.password must be readable by uid 10001).
set -euo pipefail
cd "$(dirname "$0")"

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)"
TAG="pero-worker:${VERSION:-dev}"
ARGS=()
while (( $# )); do
    case "$1" in
        -t|--tag) TAG="$2"; shift 2 ;;
        --torch) ARGS+=(--build-arg "TORCH_VERSION=$2"); shift 2 ;;
        --cuda-image) ARGS+=(--build-arg "CUDA_IMAGE=$2"); shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
command -v docker >/dev/null || { echo "docker-build-worker.sh: docker is not installed" >&2; exit 1; }
echo "[build] $TAG from docker/Dockerfile.worker"
docker build -f docker/Dockerfile.worker -t "$TAG" -t "${TAG%%:*}:latest" "${ARGS[@]}" .
