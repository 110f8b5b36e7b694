#!/usr/bin/env bash
# Install and set up the container engine for `make docker-images` / `make docker-test`: podman from Debian
# (with runc, podman-compose and mmdebstrap for the local base image), and /etc/containers/containers.conf from
# docker/containers.conf when the machine has none (the ulimit, runtime and cgroup settings podman needs on
# machines like the project's: ../README.md "Deploy with containers").  Idempotent; needs root for the install.
#
#   dev/container_engine.sh            install what is missing
#   dev/container_engine.sh --check    only say what is missing (exit 1 when something is)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(podman runc podman-compose mmdebstrap)
CHECK=0
case "${1:-}" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "container_engine.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
conf_missing=0
[[ -e /etc/containers/containers.conf ]] || conf_missing=1
if [[ $CHECK -eq 1 ]]; then
    [[ ${#missing[@]} -eq 0 ]] || echo "missing packages: ${missing[*]}"
    [[ $conf_missing -eq 0 ]] || echo "missing /etc/containers/containers.conf"
    [[ ${#missing[@]} -eq 0 && $conf_missing -eq 0 ]]
    exit
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "[engine] apt-get install ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 install -y "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && apt-get -o DPkg::Lock::Timeout=600 install -y "${missing[@]}" >/dev/null; }
fi
if [[ $conf_missing -eq 1 ]]; then
    mkdir -p /etc/containers
    cp docker/containers.conf /etc/containers/containers.conf
    echo "[engine] wrote /etc/containers/containers.conf"
fi
podman info --format '[engine] podman {{.Version.Version}}, {{.Host.OCIRuntime.Name}}, {{.Host.CgroupManager}}, storage {{.Store.GraphDriverName}}'
