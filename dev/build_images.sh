#!/usr/bin/env bash
# Build every image of a container deployment (make docker-images): the Debian base when missing
# (dev/container_base.sh), then the engines' images (docker-build-services.sh) beside the daemons' images
# (docker-build-manager.sh, then docker-build-worker.sh): the builds wait on the mirrors as much as on the CPU,
# so the two lines overlap.  Each line's output is prefixed; the exit status is the first failure's.
#
#   dev/build_images.sh          (PERO_CONTAINER_ENGINE=podman|docker chooses the engine)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "build_images.sh: no arguments expected (see --help)" >&2; exit 2 ;;
esac
# shellcheck source=../docker/engine.sh
source docker/engine.sh
ensure_base

started=$SECONDS
( ./docker-build-services.sh 2>&1 | sed -u 's/^/[services] /' ) &
services=$!
daemons_rc=0
( ./docker-build-manager.sh && ./docker-build-worker.sh ) 2>&1 | sed -u 's/^/[daemons] /' || daemons_rc=$?
services_rc=0
wait "$services" || services_rc=$?
echo "[build] all images in $((SECONDS - started)) s (services exit $services_rc, daemons exit $daemons_rc)"
if (( services_rc != 0 )); then exit "$services_rc"; fi
exit "$daemons_rc"
