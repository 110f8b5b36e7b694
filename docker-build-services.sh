#!/usr/bin/env bash
# Build the engines' images from Debian's packages, with podman or docker (PERO_CONTAINER_ENGINE chooses):
# pero-zookeeper (docker/Dockerfile.zookeeper), pero-rabbitmq with the management plugin
# (docker/Dockerfile.rabbitmq) and pero-sftp (OpenSSH, docker/Dockerfile.sftp).  They stand in for the official
# zookeeper, rabbitmq:*-management and atmoz/sftp images where no registry is reachable; where one is, set
# PERO_ZOOKEEPER_IMAGE, PERO_RABBITMQ_IMAGE and PERO_SFTP_IMAGE in config/docker.env instead (README).
#
#   ./docker-build-services.sh [--tag-version VERSION] [extra build options...]
set -euo pipefail
cd "$(dirname "$0")"

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)"
VERSION="${VERSION:-dev}"
ARGS=()
while (( $# )); do
    case "$1" in
        --tag-version) VERSION="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
source docker/engine.sh
ensure_base
for name in zookeeper rabbitmq sftp; do
    engine_build "docker/Dockerfile.$name" "pero-$name" "$VERSION" "${ARGS[@]}"
done
