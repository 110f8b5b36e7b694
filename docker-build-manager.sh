#!/usr/bin/env bash
# Build the shared Python layer (docker/Dockerfile.python -> pero-python) and the manager images: the watchdog
# (docker/Dockerfile.watchdog -> pero-watchdog) and the log daemon (docker/Dockerfile.log_daemon -> pero-logd),
# with podman or docker, whichever is installed (PERO_CONTAINER_ENGINE chooses).
#
#   ./docker-build-manager.sh [--tag-version VERSION] [extra build options...]
#
# Images are tagged :<version from pyproject.toml> and :latest.  Run with
#   docker run -d --name pero-watchdog -v "$(pwd)"/config:/etc/pero pero-watchdog
#   docker run -d --name pero-logd -v "$(pwd)"/data/logs:/var/log/pero -v "$(pwd)"/config:/etc/pero pero-logd
# A missing debian:bookworm-slim is made locally first (dev/container_base.sh).
set -euo pipefail
cd "$(dirname "$0")"

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)"
VERSION="${VERSION:-dev}"
ARGS=()
while (( $# )); do
    case "$1" in
        --tag-version) VERSION="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
source docker/engine.sh
ensure_base
engine_build docker/Dockerfile.python pero-python "$VERSION" "${ARGS[@]}"
engine_build docker/Dockerfile.watchdog pero-watchdog "$VERSION" "${ARGS[@]}"
engine_build docker/Dockerfile.log_daemon pero-logd "$VERSION" "${ARGS[@]}"
