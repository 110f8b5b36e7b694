# Sourced by docker-build-*.sh: which container engine builds, and the shared pero-python layer.
#   PERO_CONTAINER_ENGINE=podman|docker   overrides the choice (default: podman when installed, else docker)

ENGINE="${PERO_CONTAINER_ENGINE:-}"
if [[ -z "$ENGINE" ]]; then
    if command -v podman >/dev/null; then ENGINE=podman
    elif command -v docker >/dev/null; then ENGINE=docker
    else echo "$(basename "$0"): neither podman nor docker is installed" >&2; exit 1
    fi
fi
command -v "$ENGINE" >/dev/null || { echo "$(basename "$0"): $ENGINE is not installed" >&2; exit 1; }
# podman writes OCI images by default, which drop HEALTHCHECK: the docker format keeps it.
BUILD_ARGS=()
if [[ "$(basename "$ENGINE")" == podman ]]; then BUILD_ARGS+=(--format docker); fi

# engine_build DOCKERFILE IMAGE VERSION [more build options...]: one image, tagged :VERSION and :latest.
engine_build() {
    local dockerfile="$1" image="$2" version="$3"
    shift 3
    echo "[build] $image:$version from $dockerfile ($ENGINE)"
    "$ENGINE" build "${BUILD_ARGS[@]}" -f "$dockerfile" -t "$image:$version" -t "$image:latest" "$@" .
}

# The Debian base the Dockerfiles start from: made locally (dev/container_base.sh) when no registry is reachable.
ensure_base() {
    if ! "$ENGINE" image inspect debian:bookworm-slim >/dev/null 2>&1; then
        PERO_CONTAINER_ENGINE="$ENGINE" dev/container_base.sh
    fi
}
