#!/usr/bin/env bash
# Certificates for a pero-worker deployment, with openssl only (the certificate part of system_setup.py).
#
#   scripts/certificate_setup.sh [-o DIR] [--ca-cert FILE --ca-key FILE] [--days N] [--force] [--java-stores]
#                                SERVICE=HOST[,HOST...] ...
#
#   scripts/certificate_setup.sh -o config/certificates zookeeper=zk.example.org rabbitmq=mq.example.org,10.0.0.7
#
# Writes into DIR (default ./certificates), with the same names system_setup.py uses:
#   ca.pem / ca.key          the CA (created unless --ca-cert/--ca-key are given; an existing one is kept)
#   SERVICE.pem / SERVICE.key  a server certificate for every SERVICE=HOST,...: subjectAltName = every HOST
#                            (IP addresses as IP entries), chain = leaf then CA; the key is 0600
#   with --java-stores, for every SERVICE also SERVICE.keystore.p12 + SERVICE.truststore.p12 (PKCS12, for
#   ZooKeeper's ssl.keyStore / ssl.trustStore) and their passwords in SERVICE.keystore.pass /
#   SERVICE.truststore.pass (0600; give ZooKeeper ssl.keyStore.passwordPath, never the password itself).
# An existing server certificate is kept unless --force.  Clients need ca.pem only.
set -euo pipefail

OUT="certificates"
CA_CERT=""
CA_KEY=""
DAYS=825
CA_DAYS=3650
FORCE=0
JAVA=0
SPECS=()

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "certificate_setup.sh: $*" >&2; exit 2; }

while (( $# )); do
    case "$1" in
        -o|--output) OUT="${2:?-o needs a directory}"; shift 2 ;;
        --ca-cert) CA_CERT="${2:?--ca-cert needs a file}"; shift 2 ;;
        --ca-key) CA_KEY="${2:?--ca-key needs a file}"; shift 2 ;;
        --days) DAYS="${2:?--days needs a number}"; shift 2 ;;
        --force) FORCE=1; shift ;;
        --java-stores) JAVA=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *=*) SPECS+=("$1"); shift ;;
        *) die "expected SERVICE=HOST[,HOST...], got '$1' (see --help)" ;;
    esac
done
[[ $DAYS =~ ^[0-9]+$ ]] || die "--days must be a number"
if [[ -n $CA_CERT || -n $CA_KEY ]] && [[ -z $CA_CERT || -z $CA_KEY ]]; then
    die "give both --ca-cert and --ca-key"
fi
command -v openssl >/dev/null || die "openssl is not installed"
(( JAVA == 0 )) || command -v keytool >/dev/null || die "--java-stores needs keytool (a JDK/JRE)"

mkdir -p "$OUT"
umask 077
say() { echo "[certificates] $*"; }

# --- the CA -----------------------------------------------------------------------------
if [[ -n $CA_CERT ]]; then
    [[ -r $CA_CERT && -r $CA_KEY ]] || die "cannot read $CA_CERT or $CA_KEY"
    cert_mod=$(openssl x509 -in "$CA_CERT" -noout -pubkey | openssl sha256)
    key_mod=$(openssl pkey -in "$CA_KEY" -pubout | openssl sha256)
    [[ $cert_mod == "$key_mod" ]] || die "$CA_KEY is not the key of $CA_CERT"
    if [[ "$(realpath "$CA_CERT")" != "$(realpath -m "$OUT/ca.pem")" ]]; then
        cp "$CA_CERT" "$OUT/ca.pem"
    fi
    chmod 644 "$OUT/ca.pem"
    SIGN_KEY="$CA_KEY"
    say "using the CA $CA_CERT"
elif [[ -s $OUT/ca.pem && -s $OUT/ca.key ]]; then
    SIGN_KEY="$OUT/ca.key"
    say "keeping the CA $OUT/ca.pem"
else
    openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days "$CA_DAYS" \
        -keyout "$OUT/ca.key" -out "$OUT/ca.pem" -subj "/O=pero-worker/CN=pero-worker CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
    chmod 600 "$OUT/ca.key"
    chmod 644 "$OUT/ca.pem"
    SIGN_KEY="$OUT/ca.key"
    say "created the CA $OUT/ca.pem (key $OUT/ca.key: keep it on this machine)"
fi

is_ip() {
    [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $1 == *:* ]]
}

# --- server certificates ------------------------------------------------------------------
for spec in "${SPECS[@]}"; do
    service="${spec%%=*}"
    hosts="${spec#*=}"
    [[ $service =~ ^[A-Za-z0-9_-]+$ ]] || die "bad service name '$service'"
    [[ -n $hosts ]] || die "no host for $service"
    if [[ -s $OUT/$service.pem && -s $OUT/$service.key && $FORCE == 0 ]]; then
        say "keeping $OUT/$service.pem (use --force to re-issue)"
        continue
    fi
    IFS=',' read -r -a names <<< "$hosts"
    san=""
    for name in "${names[@]}"; do
        name="${name#[}"; name="${name%]}"
        [[ -n $name ]] || continue
        if is_ip "$name"; then san+="IP:$name,"; else san+="DNS:$name,"; fi
    done
    san="${san%,}"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    cat > "$work/ext.cnf" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
authorityKeyIdentifier=keyid
EOF
    openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$work/key.pem" -out "$work/req.csr" \
        -subj "/O=pero-worker/CN=${names[0]#[}" 2>/dev/null
    openssl x509 -req -sha256 -in "$work/req.csr" -CA "$OUT/ca.pem" -CAkey "$SIGN_KEY" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -extfile "$work/ext.cnf" -out "$work/cert.pem" 2>/dev/null
    cat "$work/cert.pem" "$OUT/ca.pem" > "$OUT/$service.pem"
    chmod 644 "$OUT/$service.pem"
    install -m 600 "$work/key.pem" "$OUT/$service.key"
    say "issued $OUT/$service.pem for $san (valid $DAYS days)"

    if (( JAVA )); then
        for kind in keystore truststore; do
            [[ -s $OUT/$service.$kind.pass ]] || openssl rand -base64 24 > "$OUT/$service.$kind.pass"
            chmod 600 "$OUT/$service.$kind.pass"
        done
        rm -f "$OUT/$service.keystore.p12" "$OUT/$service.truststore.p12"
        openssl pkcs12 -export -in "$OUT/$service.pem" -inkey "$OUT/$service.key" -name server \
            -out "$work/staging.p12" -passout "file:$OUT/$service.keystore.pass"
        keytool -importkeystore -noprompt -srckeystore "$work/staging.p12" -srcstoretype PKCS12 \
            -srcstorepass:file "$OUT/$service.keystore.pass" -destkeystore "$OUT/$service.keystore.p12" \
            -deststoretype PKCS12 -deststorepass:file "$OUT/$service.keystore.pass" >/dev/null 2>&1
        keytool -importcert -noprompt -alias pero-ca -file "$OUT/ca.pem" -keystore "$OUT/$service.truststore.p12" \
            -storetype PKCS12 -storepass:file "$OUT/$service.truststore.pass" >/dev/null 2>&1
        chmod 600 "$OUT/$service.keystore.p12"
        chmod 644 "$OUT/$service.truststore.p12"
        say "wrote $OUT/$service.keystore.p12 and $OUT/$service.truststore.p12"
    fi
    rm -rf "$work"
    trap - EXIT
done
say "done: clients need only $OUT/ca.pem"
