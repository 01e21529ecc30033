#!/usr/bin/env bash
# Starts the shared-state services the replica tests use, once per run, and prints the
# environment the tests read (eval it): a throwaway PostgreSQL cluster (Debian's postgresql,
# run as the postgres user, TLS on with a CA made here) and Azurite, the Azure Storage emulator
# (from npm). Both listen on 127.0.0.1 only and live under one temp directory, removed by
# `scripts/services.sh stop DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "stop" ]; then
    dir="$2"
    if [ -f "$dir/pg/PG_VERSION" ]; then
        runuser -u postgres -- "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl" -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    [ -f "$dir/azurite.pid" ] && kill "$(cat "$dir/azurite.pid")" 2>/dev/null || true
    rm -rf "$dir"
    exit 0
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

dir=$(mktemp -d /tmp/tollgate-services.XXXXXX)
chmod 755 "$dir"

# PostgreSQL: a cluster of our own (initdb as postgres), trust on loopback, TLS with a server
# certificate for 127.0.0.1/localhost signed by a CA the tests are given.
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$dir/pg" "$dir/pgtls"
chown postgres:postgres "$dir/pg"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=tollgate test CA" -keyout "$dir/pgtls/ca.key" -out "$dir/pgtls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$dir/pgtls/server.key" -out "$dir/pgtls/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$dir/pgtls/ext"
openssl x509 -req -in "$dir/pgtls/server.csr" -CA "$dir/pgtls/ca.pem" -CAkey "$dir/pgtls/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/pgtls/ext" -out "$dir/pgtls/server.pem" 2>/dev/null
chown -R postgres:postgres "$dir/pgtls"
chmod 600 "$dir/pgtls/server.key"
runuser -u postgres -- "$pgbin/initdb" -D "$dir/pg" -A trust -U postgres --no-sync >/dev/null
pgport=$(free_port)
cat >> "$dir/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pgport
unix_socket_directories = '$dir/pg'
ssl = on
ssl_cert_file = '$dir/pgtls/server.pem'
ssl_key_file = '$dir/pgtls/server.key'
max_connections = 300
fsync = off
CONF
runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg/log" -w start >/dev/null

# Azurite, pinned to a release whose engines accept the machine's Node (3.36 wants Node 21+).
if [ ! -x target/tools/azurite/node_modules/.bin/azurite-blob ]; then
    npm install --prefix target/tools/azurite --no-audit --no-fund -q azurite@3.35.0 >/dev/null
fi
azport=$(free_port)
mkdir -p "$dir/azurite"
target/tools/azurite/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$azport" \
    --location "$dir/azurite" --silent --skipApiVersionCheck >"$dir/azurite.log" 2>&1 &
echo $! > "$dir/azurite.pid"
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$azport") 2>/dev/null && break
    sleep 0.1
done

echo "export TOLLGATE_TEST_SERVICES=$dir"
echo "export TOLLGATE_TEST_PG=postgres://postgres@127.0.0.1:$pgport/postgres"
echo "export TOLLGATE_TEST_PG_CA=$dir/pgtls/ca.pem"
echo "export TOLLGATE_TEST_AZURITE=http://127.0.0.1:$azport"
