#!/usr/bin/env bash
# Build the slim manager images: the watchdog (docker/Dockerfile.watchdog) and the log daemon
# (docker/Dockerfile.log_daemon).
#
#   ./docker-build-manager.sh [--tag-version VERSION] [extra docker build options...]
#
# Images: pero-watchdog:<version> and pero-log-daemon:<version>, both also :latest.  Run with
#   docker run -v "$PWD/config:/etc/pero:ro" pero-watchdog:latest
#   docker run -v "$PWD/config:/etc/pero:ro" -v /srv/pero/logs:/var/log/pero pero-log-daemon:latest
set -euo pipefail
cd "$(dirname "$0")"

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)"
VERSION="${VERSION:-dev}"
ARGS=()
while (( $# )); do
    case "$1" in
        --tag-version) VERSION="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
command -v docker >/dev/null || { echo "docker-build-manager.sh: docker is not installed" >&2; exit 1; }
for pair in "watchdog:pero-watchdog" "log_daemon:pero-log-daemon"; do
    dockerfile="docker/Dockerfile.${pair%%:*}"
    image="${pair#*:}"
    echo "[build] $image:$VERSION from $dockerfile"
    docker build -f "$dockerfile" -t "$image:$VERSION" -t "$image:latest" "${ARGS[@]}" .
done
