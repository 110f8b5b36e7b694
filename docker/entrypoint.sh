#!/bin/sh
# Entrypoint of the pero-worker images: runs ROLE (worker | watchdog | logd) with the configuration
# mounted at /etc/pero (PERO_CONFIG_DIR), the directory scripts/system_setup.py generates:
#
#   /etc/pero/<role>.ini                   worker.ini, watchdog.ini or logd.ini (-c)
#   /etc/pero/certificates/ca.pem          CA of the servers' TLS certificates (-e)
#   /etc/pero/certificates/known_hosts     SFTP host keys (PERO_SFTP_KNOWN_HOSTS)
#   /etc/pero/secrets/service.password     the service user's password (PERO_PASSWORD_FILE)
#
# Paths inside the INI files are those of the machine that generated them; the options given here
# replace them with the paths in the container.  Extra arguments go to the program
# (e.g. `docker run pero-worker -i gpu0`); PERO_PASSWORD, if set, wins over the password file.
set -eu

ROLE="${1:-}"
[ $# -gt 0 ] && shift
CONF="${PERO_CONFIG_DIR:-/etc/pero}"
APP=/opt/pero/pero_worker

case "$ROLE" in
    worker) SCRIPT="$APP/worker/run_worker.py"; INI="$CONF/worker.ini"
            set -- --cache-directory "${PERO_CACHE_DIR:-/var/cache/pero-worker}" "$@" ;;
    watchdog) SCRIPT="$APP/watchdog/worker_watchdog.py"; INI="$CONF/watchdog.ini" ;;
    logd) SCRIPT="$APP/log_daemon/log_daemon.py"; INI="$CONF/logd.ini"
          set -- -o "${PERO_LOG_DIR:-/var/log/pero}" "$@" ;;
    *) echo "pero-entrypoint: unknown role '$ROLE' (worker, watchdog or logd)" >&2; exit 2 ;;
esac

if [ -f "$INI" ]; then
    set -- -c "$INI" "$@"
else
    echo "pero-entrypoint: $INI not found; give the connection options as arguments (mount the config at $CONF)" >&2
fi
if [ -f "$CONF/certificates/ca.pem" ]; then
    set -- -e "$CONF/certificates/ca.pem" "$@"
fi
if [ -f "$CONF/certificates/known_hosts" ] && [ -z "${PERO_SFTP_KNOWN_HOSTS:-}" ]; then
    export PERO_SFTP_KNOWN_HOSTS="$CONF/certificates/known_hosts"
fi
SECRET="$CONF/secrets/service.password"
if [ -z "${PERO_PASSWORD:-}" ] && [ -z "${PERO_PASSWORD_FILE:-}" ] && [ -e "$SECRET" ]; then
    if [ ! -r "$SECRET" ]; then
        echo "pero-entrypoint: $SECRET is not readable by uid $(id -u): chown $(id -u) it on the host" \
             "(it stays 0600) or pass PERO_PASSWORD" >&2
        exit 2
    fi
    export PERO_PASSWORD_FILE="$SECRET"
fi
exec python "$SCRIPT" "$@"
