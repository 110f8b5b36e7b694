#!/bin/bash
# zkServer.sh of the pero-zookeeper image: the two commands the official image's script is used for here.
#   zkServer.sh start-foreground   run the server with $ZOOCFGDIR/zoo.cfg and $ZOOCFGDIR/java.env (SERVER_JVMFLAGS)
#   zkServer.sh status             exit 0 when the secure client port (or the client port) accepts connections
set -euo pipefail
CONF="${ZOOCFGDIR:-/conf}"
CFG="$CONF/zoo.cfg"
[[ -f "$CFG" ]] || { echo "zkServer.sh: $CFG not found (mount the configuration, set ZOOCFGDIR)" >&2; exit 2; }
setting() { sed -n "s/^$1=\(.*\)/\1/p" "$CFG" | tail -1; }

case "${1:-}" in
    start-foreground)
        SERVER_JVMFLAGS=""
        # shellcheck disable=SC1091
        [[ -f "$CONF/java.env" ]] && source "$CONF/java.env"
        CP=/usr/share/java/zookeeper.jar:/usr/share/java/zookeeper-jute.jar
        for jar in netty-codec netty-resolver netty-transport-native-unix-common slf4j-simple; do
            CP="$CP:/usr/share/java/$jar.jar"
        done
        # The data (snapshots: stage configs, server lists) stays private to the zookeeper user.
        umask 077
        # shellcheck disable=SC2086
        exec java $SERVER_JVMFLAGS -Dorg.slf4j.simpleLogger.defaultLogLevel=info -cp "$CP" \
            org.apache.zookeeper.server.quorum.QuorumPeerMain "$CFG" ;;
    status)
        port="$(setting secureClientPort)"
        port="${port:-$(setting clientPort)}"
        exec 3<>"/dev/tcp/127.0.0.1/${port:?no client port in $CFG}" ;;
    *) echo "zkServer.sh: start-foreground or status" >&2; exit 2 ;;
esac
