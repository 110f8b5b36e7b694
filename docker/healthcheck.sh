#!/bin/sh
# Health check of the daemon images: healthy while the role's Python process runs and is not a zombie
# (tini, PID 1, ends the container when it exits; this catches the window in between and a stuck exec).
#   pero-healthcheck worker|watchdog|logd
case "${1:-}" in
    worker) script=run_worker.py ;;
    watchdog) script=worker_watchdog.py ;;
    logd) script=log_daemon.py ;;
    *) echo "pero-healthcheck: unknown role '${1:-}'" >&2; exit 2 ;;
esac
for dir in /proc/[0-9]*; do
    if grep -qs "$script" "$dir/cmdline" && ! grep -qs '^State:.*Z' "$dir/status"; then
        exit 0
    fi
done
echo "pero-healthcheck: no live $script process" >&2
exit 1
