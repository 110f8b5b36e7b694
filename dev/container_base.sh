#!/usr/bin/env bash
# Make the local stand-in for the Debian base image the Dockerfiles start FROM (debian:bookworm-slim), when
# no container registry is reachable: a minimal Debian bookworm made with mmdebstrap from the Debian mirror
# apt already uses, trusting this machine's CA certificates (so that pip and apt inside builds get through a
# TLS-intercepting proxy), imported into podman (or docker).
#
#   dev/container_base.sh [--force] [--tag NAME]     (default tag: debian:bookworm-slim)
#
# Does nothing when the image exists already (--force remakes it).  Needs root and mmdebstrap.
# Where a registry is reachable, skip this: the builds pull the official debian:bookworm-slim.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="debian:bookworm-slim"
FORCE=0
while (( $# )); do
    case "$1" in
        --force) FORCE=1; shift ;;
        --tag) TAG="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "container_base.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

ENGINE="${PERO_CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}"
[[ -n "$ENGINE" ]] || { echo "container_base.sh: neither podman nor docker is installed" >&2; exit 1; }
if [[ $FORCE -eq 0 ]] && "$ENGINE" image inspect "$TAG" >/dev/null 2>&1; then
    echo "[base] $TAG exists"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "container_base.sh: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }

# The mirror apt uses on this machine (deb822 or one-line sources), else Debian's CDN.
MIRROR="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
[[ -n "$MIRROR" ]] || MIRROR="$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
HOOKS=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    HOOKS+=(--customize-hook='mkdir -p "$1"/usr/local/share/ca-certificates'
            --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1"/usr/local/share/ca-certificates/'
            --customize-hook='chroot "$1" update-ca-certificates')
fi
# apt inside the builds: a stalled connection to the mirror (through this machine's proxy) held a build's
# apt-get update for over 10 minutes, twice; apt's own timeout did not end it.  docker/base/apt-get bounds
# each try and retries; apt itself waits at most 30 s for a reply and retries a failed download 5 times.
HOOKS+=(--customize-hook='printf "%s\n" "Acquire::Retries \"5\";" "Acquire::http::Timeout \"30\";" "Acquire::https::Timeout \"30\";" > "$1"/etc/apt/apt.conf.d/80pero-network'
        --customize-hook="install -D -m 755 '$REPO/docker/base/apt-get' \"\$1\"/usr/local/sbin/apt-get")
echo "[base] mmdebstrap bookworm from $MIRROR"
# Like the official slim image: no documentation, no apt lists.
mmdebstrap --variant=minbase --include=ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "${HOOKS[@]}" --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    bookworm "$work/rootfs.tar" "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb ${MIRROR%/debian}/debian-security bookworm-security main"
echo "[base] importing as $TAG"
"$ENGINE" import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$TAG"
