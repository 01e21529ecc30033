#!/usr/bin/env bash
# The OCI pull-gate benchmark, on loopback only: tollgate vs docker-registry (distribution 2.8)
# as a pull-through cache (proxy.remoteurl) vs docker-registry direct, with one 5-layer ~200 MiB
# image (uncompressed, incompressible layers; built by bench/gen_oci_image.py).
#
#   bash bench/oci_bench.sh            from the repo root (or anywhere: it finds the root)
#
# 1. `skopeo copy` to a dir: destination, cold (fresh tollgate data_dir / fresh proxy storage,
#    restarted per run) and warm (second copy), COPY_REPS runs per side, medians
# 2. manifest GET (wrk) and HEAD (ab -k: wrk cannot do HEAD) requests/s, OCI manifest Accept, by
#    tag and by digest, verdict inputs cached: tollgate vs direct vs proxy (target: >= 5x direct)
# 3. blob MiB/s, CONNS clients, largest layer: tollgate (warm) vs direct vs proxy (target >= 0.8x)
# 4. tollgate RSS: VmHWM during (3), VmRSS idle (after the warm copy and after (3))
#
# The image layout is built once into bench/work/oci-image (git-ignored); the direct registry's
# storage is filled fresh each run by `skopeo copy --preserve-digests`. Every server listens on
# 127.0.0.1 only; every load loop is bounded by duration/count. All processes it starts are
# stopped on exit.
#
# Knobs (environment): REPS (3) repeats per wrk figure, DUR (5) seconds per wrk run, CONNS (16)
# wrk connections, COPY_REPS (3) skopeo copies per side and state, LAYERS_MIB (80,50,35,20,15)
# layer sizes, BUILD=1 to run `cargo build --release` even when target/release/tollgate exists.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
W=$ROOT/bench/work
REPS=${REPS:-3}
DUR=${DUR:-5}
CONNS=${CONNS:-16}
COPY_REPS=${COPY_REPS:-3}
LAYERS_MIB=${LAYERS_MIB:-80,50,35,20,15}
TG=$ROOT/target/release/tollgate
PY=${PYTHON:-python3}
REPO=bench/big
TAG=v1
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# --- processes we start, stopped on exit -------------------------------------------------------
PIDS=()
stop_pid() { # pid: TERM, wait up to 10 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools -------------------------------------------------------------------------------------
need_apt=()
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v ab >/dev/null || need_apt+=(apache2-utils)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ! -x "$TG" ] || [ "${BUILD:-0}" = 1 ]; then
    log "building tollgate (release)"
    cargo build --release
fi

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
wait_http() { # url: up to 15 s
    local i
    for i in $(seq 150); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
    return 1
}
rss_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (other load skews every figure)"

# --- the image layout --------------------------------------------------------------------------
LAYOUT=$W/oci-image
if [ ! -f "$LAYOUT/.complete" ] || [ "$(cat "$LAYOUT/.complete")" != "$LAYERS_MIB" ]; then
    log "building the image layout ($LAYERS_MIB MiB layers)"
    rm -rf "$LAYOUT" "$LAYOUT.partial"
    $PY bench/gen_oci_image.py "$LAYOUT.partial" "$LAYERS_MIB" > "$W/oci-image.txt.partial"
    mv "$W/oci-image.txt.partial" "$LAYOUT.partial/image.txt"
    echo "$LAYERS_MIB" > "$LAYOUT.partial/.complete"
    mv "$LAYOUT.partial" "$LAYOUT"
fi
read -r MDIGEST BIG_DIGEST BIG_SIZE IMG_BYTES < "$LAYOUT/image.txt"
N_LAYERS=$(tr ',' '\n' <<<"$LAYERS_MIB" | grep -c .)
log "image: $MDIGEST, $N_LAYERS layers, $((IMG_BYTES >> 20)) MiB; largest layer $BIG_DIGEST ($((BIG_SIZE >> 20)) MiB)"

# --- docker-registry ---------------------------------------------------------------------------
REG_LOGS=()
REG_PID=""; REG_PORT=""
start_registry() { # dir [remoteurl]: fresh storage under dir, starts it (REG_PID, REG_PORT)
    local dir=$1 remote=${2:-}
    rm -rf "$dir"; mkdir -p "$dir/storage"
    REG_PORT=$(free_port)
    # The inmemory blob-descriptor cache is Debian's default config: the registry at its best.
    cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REG_PORT
EOF
    [ -z "$remote" ] || printf 'proxy:\n  remoteurl: %s\n' "$remote" >> "$dir/config.yml"
    docker-registry serve "$dir/config.yml" > "$dir/stdout" 2>> "$dir/registry.log" &
    REG_PID=$!; PIDS+=("$REG_PID")
    REG_LOGS+=("$dir/registry.log")
    wait_http "http://127.0.0.1:$REG_PORT/v2/" || die "docker-registry did not start (see $dir/registry.log)"
}

DR=$W/reg-direct
start_registry "$DR"
DIRECT_PID=$REG_PID; DIRECT_PORT=$REG_PORT
DIRECT=127.0.0.1:$DIRECT_PORT
log "docker-registry direct on http://$DIRECT (pid $DIRECT_PID); pushing the image"
SKOPEO=(skopeo --insecure-policy)
"${SKOPEO[@]}" copy -q --preserve-digests --dest-tls-verify=false \
    "oci:$LAYOUT:$TAG" "docker://$DIRECT/$REPO:$TAG" > "$W/push.out" 2>&1 \
    || die "skopeo push to the direct registry: $(tail -5 "$W/push.out")"
got=$(curl -sfI -H "Accept: $MT_MANIFEST" "http://$DIRECT/v2/$REPO/manifests/$TAG" \
    | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')
[ "$got" = "$MDIGEST" ] || die "the direct registry has $REPO:$TAG as '$got', not $MDIGEST"

PROXY_PID=""; PROXY_PORT=""
start_proxy() { # dir: fresh storage
    start_registry "$1" "http://$DIRECT"
    PROXY_PID=$REG_PID; PROXY_PORT=$REG_PORT
}

# --- tollgate ----------------------------------------------------------------------------------
TG_PID=""; TG_PORT=""; TG_LOGS=()
start_tollgate() { # dir: fresh data_dir and allowlist, starts it (TG_PID, TG_PORT)
    local dir=$1 i
    rm -rf "$dir"; mkdir -p "$dir/allowlists"
    cat > "$dir/allowlists/img.toml" <<EOF
[[image]]
repository = "registry.test/$REPO"
digests = ["$MDIGEST"]
EOF
    cat > "$dir/config.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "data"
allowlist_dir = "allowlists"
[oci]
tag_ttl = "60s"
[[oci.registry]]
host = "registry.test"
prefix = "reg"
url = "http://$DIRECT"
EOF
    TOLLGATE_LOG=json "$TG" serve --config "$dir/config.toml" > "$dir/stdout" 2>> "$dir/tollgate.log" &
    TG_PID=$!; PIDS+=("$TG_PID"); TG_LOGS+=("$dir/tollgate.log")
    for i in $(seq 1200); do   # 60 s
        TG_PORT=$(sed -n 's|^tollgate listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$dir/stdout")
        [ -n "$TG_PORT" ] && return 0
        kill -0 "$TG_PID" 2>/dev/null || break
        sleep 0.05
    done
    die "tollgate did not start (see $dir/tollgate.log; an old binary refuses [oci]: BUILD=1)"
}

# =============================================================================================
# 1: skopeo copy, cold and warm
# =============================================================================================
DST=$W/copy-dst
copy_image() { # host:port/prefix-path -> prints seconds; checks what arrived
    local src=$1 t0 t1 n
    rm -rf "$DST"
    t0=$(now)
    "${SKOPEO[@]}" copy -q --src-tls-verify=false "docker://$src/$REPO:$TAG" "dir:$DST" \
        > "$W/copy.out" 2>&1 || die "skopeo copy from $src: $(tail -5 "$W/copy.out")"
    t1=$(now)
    [ "sha256:$(sha256sum "$DST/manifest.json" | cut -d' ' -f1)" = "$MDIGEST" ] \
        || die "skopeo copy from $src: another manifest arrived"
    n=$(find "$DST" -type f ! -name manifest.json ! -name version | wc -l)
    [ "$n" = $((N_LAYERS + 1)) ] || die "skopeo copy from $src: $n blobs, not $((N_LAYERS + 1))"
    [ "$(stat -c %s "$DST/${BIG_DIGEST#sha256:}")" = "$BIG_SIZE" ] || die "skopeo copy from $src: largest layer has the wrong size"
    rm -rf "$DST"
    secs "$t0" "$t1"
}
log "1. skopeo copy to dir:, $COPY_REPS runs per side, cold (fresh cache, restarted) then warm"
declare -A CP=()
for r in $(seq "$COPY_REPS"); do
    # direct has no cache: its "cold" and "warm" are two consecutive copies, like the others'
    CP[direct.cold]="${CP[direct.cold]:-} $(copy_image "$DIRECT")"
    CP[direct.warm]="${CP[direct.warm]:-} $(copy_image "$DIRECT")"
    [ -z "$TG_PID" ] || stop_pid "$TG_PID"
    start_tollgate "$W/tg-$r"
    CP[tollgate.cold]="${CP[tollgate.cold]:-} $(copy_image "127.0.0.1:$TG_PORT/reg")"
    CP[tollgate.warm]="${CP[tollgate.warm]:-} $(copy_image "127.0.0.1:$TG_PORT/reg")"
    [ -z "$PROXY_PID" ] || stop_pid "$PROXY_PID"
    start_proxy "$W/reg-proxy-$r"
    CP[proxy.cold]="${CP[proxy.cold]:-} $(copy_image "127.0.0.1:$PROXY_PORT")"
    CP[proxy.warm]="${CP[proxy.warm]:-} $(copy_image "127.0.0.1:$PROXY_PORT")"
    log "   run $r: direct ${CP[direct.cold]##* }/${CP[direct.warm]##* } s, tollgate ${CP[tollgate.cold]##* }/${CP[tollgate.warm]##* } s, proxy ${CP[proxy.cold]##* }/${CP[proxy.warm]##* } s (cold/warm)"
done
declare -A CPM=()
for k in "${!CP[@]}"; do CPM[$k]=$(median ${CP[$k]}); done
sleep 1
TG_IDLE_WARM=$(rss_kib "$TG_PID" VmRSS)   # the last tollgate, idle after its cold + warm copy
TG_URL=http://127.0.0.1:$TG_PORT
PROXY=127.0.0.1:$PROXY_PORT
log "   tollgate (warm) on $TG_URL (pid $TG_PID), proxy (warm) on http://$PROXY (pid $PROXY_PID)"

# --- wrk ---------------------------------------------------------------------------------------
REPORT='done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("WRK %.1f %.2f %d %d %d\n", summary.requests / s,
    summary.bytes / s / 1048576, summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout))
end'
printf '%s\n' "$REPORT" > "$W/get.lua"
WRK_BAD=()
WRK_RPS=""; WRK_MIB=""
wrk_once() { # label GET url [header...] -> sets WRK_RPS, WRK_MIB
    local label=$1 url=$3 out line hdr=()
    shift 3
    for h in "$@"; do hdr+=(-H "$h"); done
    out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 30s -s "$W/get.lua" "${hdr[@]}" "$url")
    line=$(grep '^WRK ' <<<"$out") || die "wrk gave no result for $label: $out"
    set -- $line
    [ "$4" -gt 0 ] || die "wrk completed no request for $label: $out"
    if [ "$5" != 0 ] || [ "$6" != 0 ]; then
        WRK_BAD+=("$label: $5 non-2xx, $6 socket errors of $4 requests")
    fi
    WRK_RPS=$2; WRK_MIB=$3
}
# wrk cannot measure HEAD: its parser waits for the Content-Length body a HEAD answer never has
# (0 requests complete). HEAD goes through ApacheBench (-k: HTTP/1.0 keep-alive, one thread) for
# every server alike; its figures compare with each other, not with the GET rows.
ab_once() { # label url [header...] -> sets WRK_RPS
    local label=$1 url=$2 out n failed non2xx ka hdr=()
    shift 2
    for h in "$@"; do hdr+=(-H "$h"); done
    out=$(ab -q -k -i -c"$CONNS" -t"$DUR" -n 10000000 -s 30 "${hdr[@]}" "$url" 2>&1) \
        || die "ab failed for $label: $(tail -3 <<<"$out")"
    n=$(awk '/^Complete requests:/ {print $3}' <<<"$out")
    failed=$(awk '/^Failed requests:/ {print $3}' <<<"$out")
    non2xx=$(awk '/^Non-2xx responses:/ {print $3}' <<<"$out")
    ka=$(awk '/^Keep-Alive requests:/ {print $3}' <<<"$out")
    [ "${n:-0}" -gt 0 ] || die "ab completed no request for $label: $out"
    if [ "${failed:-0}" != 0 ] || [ "${non2xx:-0}" != 0 ]; then
        WRK_BAD+=("$label: ${non2xx:-0} non-2xx, ${failed:-0} failed of $n requests")
    fi
    [ "${ka:-0}" -ge $((n * 9 / 10)) ] || WRK_BAD+=("$label: only ${ka:-0} of $n requests kept the connection alive")
    WRK_RPS=$(awk '/^Requests per second:/ {print $4}' <<<"$out")
}
check_manifest() { # method url: 200, the manifest's type and digest
    local m=$1 url=$2 r
    if [ "$m" = HEAD ]; then
        r=$(curl -s -I -o /dev/null -H "Accept: $MT_MANIFEST" -w '%{http_code} %{content_type} %header{docker-content-digest}' "$url")
    else
        r=$(curl -s -o /dev/null -H "Accept: $MT_MANIFEST" -w '%{http_code} %{content_type} %header{docker-content-digest}' "$url")
    fi
    [ "$r" = "200 $MT_MANIFEST $MDIGEST" ] || die "$m $url gave '$r'"
}

# =============================================================================================
# 2: manifest requests/s
# =============================================================================================
SIDES=(tollgate direct proxy)
declare -A BASE=(
    [tollgate]=$TG_URL/v2/reg/$REPO
    [direct]=http://$DIRECT/v2/$REPO
    [proxy]=http://$PROXY/v2/$REPO
)
declare -A REF=([tag]=$TAG [digest]=$MDIGEST)
log "2. manifest requests/s, $REPS x ${DUR}s per server, method and reference, wrk -t2 -c$CONNS"
declare -A RPS=() RUNS=()
for m in GET HEAD; do
    for ref in tag digest; do
        for s in "${SIDES[@]}"; do check_manifest $m "${BASE[$s]}/manifests/${REF[$ref]}"; done
        for r in $(seq "$REPS"); do
            for s in "${SIDES[@]}"; do   # interleaved, so drift hits all alike
                if [ $m = GET ]; then
                    wrk_once "manifest $m $ref $s" GET "${BASE[$s]}/manifests/${REF[$ref]}" "Accept: $MT_MANIFEST"
                else
                    ab_once "manifest $m $ref $s" "${BASE[$s]}/manifests/${REF[$ref]}" "Accept: $MT_MANIFEST"
                fi
                RUNS[$s.$m.$ref]="${RUNS[$s.$m.$ref]:-} $WRK_RPS"
            done
        done
        for s in "${SIDES[@]}"; do
            RPS[$s.$m.$ref]=$(median ${RUNS[$s.$m.$ref]})
            check_manifest $m "${BASE[$s]}/manifests/${REF[$ref]}"
        done
        log "   $m by $ref: tollgate ${RPS[tollgate.$m.$ref]}, direct ${RPS[direct.$m.$ref]}, proxy ${RPS[proxy.$m.$ref]} req/s"
    done
done

# =============================================================================================
# 3: blob throughput, largest layer
# =============================================================================================
log "3. largest layer ($((BIG_SIZE >> 20)) MiB), $REPS x ${DUR}s per server, wrk -t2 -c$CONNS"
for s in "${SIDES[@]}"; do
    curl -sf -o "$W/big.blob" "${BASE[$s]}/blobs/$BIG_DIGEST" || die "GET of the largest layer from $s"
    [ "sha256:$(sha256sum "$W/big.blob" | cut -d' ' -f1)" = "$BIG_DIGEST" ] || die "$s served the largest layer with another digest"
done
rm -f "$W/big.blob"
# Reset the peak-RSS marks so VmHWM covers this phase only (Linux >= 4.0); else it is lifetime.
HWM_SCOPE="during (3)"
for p in "$TG_PID" "$DIRECT_PID" "$PROXY_PID"; do
    echo 5 > "/proc/$p/clear_refs" 2>/dev/null || HWM_SCOPE="lifetime"
done
declare -A MIB=() MRUNS=()
for r in $(seq "$REPS"); do
    for s in "${SIDES[@]}"; do
        wrk_once "blob $s" GET "${BASE[$s]}/blobs/$BIG_DIGEST"
        MRUNS[$s]="${MRUNS[$s]:-} $WRK_MIB"
    done
done
for s in "${SIDES[@]}"; do MIB[$s]=$(median ${MRUNS[$s]}); done
TG_HWM=$(rss_kib "$TG_PID" VmHWM); DIRECT_HWM=$(rss_kib "$DIRECT_PID" VmHWM); PROXY_HWM=$(rss_kib "$PROXY_PID" VmHWM)
log "   tollgate ${MIB[tollgate]}, direct ${MIB[direct]}, proxy ${MIB[proxy]} MiB/s; VmHWM ($HWM_SCOPE) tollgate $TG_HWM KiB"

# =============================================================================================
# 4: idle RSS after the load
# =============================================================================================
sleep 2
TG_IDLE_AFTER=$(rss_kib "$TG_PID" VmRSS); DIRECT_IDLE=$(rss_kib "$DIRECT_PID" VmRSS); PROXY_IDLE=$(rss_kib "$PROXY_PID" VmRSS)
AUDIT_LINES=$(grep -c '"target":"tollgate::audit"' "${TG_LOGS[-1]}" || true)
stop_pid "$TG_PID"

# =============================================================================================
# report
# =============================================================================================
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
verdict() { # value op limit
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {if (v !~ /^[0-9.]+$/) {print "MISS"; exit}
        ok = (op == ">=") ? (v + 0 >= l) : (v + 0 <= l); print ok ? "ok" : "MISS"}'
}
row() { printf '%-44s %10s %10s %10s %7s %7s %8s  %s\n' "$@"; }
MISSES=0
line() { # what tollgate direct proxy ratio op target
    local v; v=$(verdict "$5" "$6" "$7"); [ "$v" = ok ] || MISSES=$((MISSES + 1))
    row "$1" "$2" "$3" "$4" "$5" "$(ratio "$2" "$4")" "$6 $7" "$v"
}
info() { row "$1" "$2" "$3" "$4" "$(ratio "$2" "$3")" "$(ratio "$2" "$4")" "-" "info"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

echo
echo "tollgate OCI benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "image: $N_LAYERS uncompressed layers ($LAYERS_MIB MiB), $((IMG_BYTES >> 20)) MiB in all; wrk -t2 -c$CONNS -d${DUR}s, medians of $REPS; skopeo copy medians of $COPY_REPS"
echo "$($TG --version 2>/dev/null || echo 'tollgate ?') (built $(date -r "$TG" +%Y-%m-%dT%H:%M), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?'), work tree $(git status --porcelain 2>/dev/null | grep -q . && echo dirty || echo clean)), $(docker-registry --version 2>/dev/null | awk '{print $2, $3}') (inmemory blob-descriptor cache), $(skopeo --version)"
echo
row "figure" "tollgate" "direct" "proxy" "tg/dir" "tg/prx" "target" ""
row "------" "--------" "------" "-----" "------" "------" "------" ""
info "1. skopeo copy cold, s (lower is better)" "${CPM[tollgate.cold]}" "${CPM[direct.cold]}" "${CPM[proxy.cold]}"
info "1. skopeo copy warm, s (lower is better)" "${CPM[tollgate.warm]}" "${CPM[direct.warm]}" "${CPM[proxy.warm]}"
for m in GET HEAD; do
    for ref in tag digest; do
        tool=wrk; [ $m = GET ] || tool="ab -k"
        line "2. manifest $m by $ref, req/s ($tool)" "${RPS[tollgate.$m.$ref]}" "${RPS[direct.$m.$ref]}" "${RPS[proxy.$m.$ref]}" \
            "$(ratio "${RPS[tollgate.$m.$ref]}" "${RPS[direct.$m.$ref]}")" ">=" 5
    done
done
line "3. largest layer MiB/s, $CONNS clients" "${MIB[tollgate]}" "${MIB[direct]}" "${MIB[proxy]}" \
    "$(ratio "${MIB[tollgate]}" "${MIB[direct]}")" ">=" 0.8
info "4. VmHWM MiB [$HWM_SCOPE]" "$(mib "$TG_HWM")" "$(mib "$DIRECT_HWM")" "$(mib "$PROXY_HWM")"
info "4. VmRSS MiB idle, after (3)" "$(mib "$TG_IDLE_AFTER")" "$(mib "$DIRECT_IDLE")" "$(mib "$PROXY_IDLE")"
row "4. VmRSS MiB idle, after warm copy" "$(mib "$TG_IDLE_WARM")" "-" "-" "-" "-" "-" "info"
echo
[ ${#WRK_BAD[@]} -eq 0 ] || { echo "wrk errors:"; printf '  %s\n' "${WRK_BAD[@]}"; }
warns=$(cat "${TG_LOGS[@]}" | grep -E '"level":"(WARN|ERROR)"' || true)
if [ -n "$warns" ]; then
    echo "tollgate logged $(grep -c . <<<"$warns") warnings/errors; distinct messages:"
    sed -E 's/.*"message":"([^"]*)".*/  \1/' <<<"$warns" | sort | uniq -c | head -20
else
    echo "tollgate logged no warnings or errors ($AUDIT_LINES audit lines in the last instance)."
fi
# the push's existence probes ("blob unknown") are expected; anything else is reported
regerr=$(cat "${REG_LOGS[@]}" | grep -iE 'level=(error|fatal|panic)' | grep -v 'err.code="blob unknown"' || true)
if [ -n "$regerr" ]; then
    echo "docker-registry logged $(grep -c . <<<"$regerr") errors (besides the push's blob-unknown probes); distinct:"
    sed -E 's/.*msg="([^"]*)".*(err.message="[^"]*")?.*/  \1 \2/' <<<"$regerr" | sort | uniq -c | head -10
else
    echo "docker-registry logged no errors (besides the push's blob-unknown probes)."
fi
echo "runs (in order):"
for k in tollgate.cold direct.cold proxy.cold tollgate.warm direct.warm proxy.warm; do printf '  copy %-14s s:%s\n' "$k" "${CP[$k]}"; done
for m in GET HEAD; do for ref in tag digest; do for s in "${SIDES[@]}"; do
    printf '  manifest %-4s %-6s %-8s req/s:%s\n' "$m" "$ref" "$s" "${RUNS[$s.$m.$ref]}"
done; done; done
for s in "${SIDES[@]}"; do printf '  blob %-8s MiB/s:%s\n' "$s" "${MRUNS[$s]}"; done
echo "logs: bench/work/tg-*/tollgate.log, bench/work/reg-*/registry.log"
echo "$MISSES figure(s) missed the target."
