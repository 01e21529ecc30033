#!/usr/bin/env bash
# The PyPI gate benchmark, on loopback only: tollgate against nginx (static files) and proxpi.
#
#   bash bench/pypi_bench.sh            from the repo root (or anywhere: it finds the root)
#
# 1. project page requests/s (HTML and JSON), cached: tollgate vs nginx vs proxpi
# 2. cached wheel download MiB/s, 16 clients, largest wheel: tollgate vs nginx; tollgate's peak RSS
# 3. cold `uv pip install --require-hashes` of the whole set: through tollgate vs from nginx
# 4. tollgate's idle RSS with a 10,000-rule allowlist
#
# Wheels (the closure of scikit-learn, pandas, fastapi, onnxruntime for this Python) are
# downloaded once into bench/work/wheels (git-ignored). Every server listens on 127.0.0.1 only;
# every load loop is bounded by duration/count. All processes it starts are stopped on exit.
#
# Knobs (environment): REPS (3) repeats per figure, DUR (5) seconds per wrk run, CONNS (16)
# wrk connections, PAGE_PROJECT (numpy) the page measured, UV_REPS (3) cold installs per side,
# BUILD=1 to run `cargo build --release` even when target/release/tollgate exists.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
W=$ROOT/bench/work
REPS=${REPS:-3}
DUR=${DUR:-5}
CONNS=${CONNS:-16}
UV_REPS=${UV_REPS:-3}
PAGE_PROJECT=${PAGE_PROJECT:-numpy}
TG=$ROOT/target/release/tollgate
PY=${PYTHON:-python3}

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
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v uv >/dev/null || { log "installing uv"; $PY -m pip install -q uv; }
$PY -c 'import proxpi' 2>/dev/null || { log "installing proxpi"; $PY -m pip install -q proxpi; }
$PY -c 'import gunicorn' 2>/dev/null || { log "installing gunicorn"; $PY -m pip install -q gunicorn; }
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

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (other load skews every figure)"

# --- wheels and the static index ---------------------------------------------------------------
if [ ! -f "$W/wheels/.complete" ]; then
    log "downloading wheels (scikit-learn pandas fastapi onnxruntime, with dependencies)"
    rm -rf "$W/wheels.partial"; mkdir -p "$W/wheels.partial"
    $PY -m pip download -q --only-binary=:all: -d "$W/wheels.partial" \
        scikit-learn pandas fastapi onnxruntime
    touch "$W/wheels.partial/.complete"
    rm -rf "$W/wheels"; mv "$W/wheels.partial" "$W/wheels"
fi
SITE=$W/site
rm -rf "$SITE"
log "static index: $($PY bench/gen_index.py "$W/wheels" "$SITE")"
REQS=$SITE/requirements.txt
N_WHEELS=$(grep -c . "$REQS")
read -r BIG_PROJECT BIG_SHA BIG_FILE BIG_SIZE < "$SITE/largest.txt"

# --- nginx -------------------------------------------------------------------------------------
NG=$W/nginx
rm -rf "$NG"; mkdir -p "$NG/tmp"
NGINX_PORT=$(free_port)
user_line=""; [ "$(id -u)" = 0 ] && user_line="user root;"
cat > "$NG/nginx.conf" <<EOF
$user_line
worker_processes auto;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    open_file_cache max=1000 inactive=60s;   # nginx at its best for small static pages
    client_body_temp_path $NG/tmp/body;
    proxy_temp_path $NG/tmp/proxy;
    fastcgi_temp_path $NG/tmp/fastcgi;
    uwsgi_temp_path $NG/tmp/uwsgi;
    scgi_temp_path $NG/tmp/scgi;
    types {
        text/html html;
        application/vnd.pypi.simple.v1+json json;
        application/octet-stream whl;
    }
    default_type application/octet-stream;
    # PEP 691 negotiation for the static tree: JSON when asked for, else the PEP 503 HTML.
    map \$http_accept \$pep691_index {
        default index.html;
        "~application/vnd\.pypi\.simple\.v1\+json" index.json;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $SITE;
        location /simple/ { index \$pep691_index; add_header Vary Accept; }
        location /packages/ { }
    }
}
EOF
"$NGINX" -p "$NG" -c "$NG/nginx.conf" -g 'daemon off;' 2>>"$NG/error.log" &
PIDS+=($!); NGINX_PID=$!
NGINX_URL=http://127.0.0.1:$NGINX_PORT
wait_http "$NGINX_URL/simple/" || die "nginx did not start (see $NG/error.log)"
log "nginx on $NGINX_URL"

# --- tollgate ----------------------------------------------------------------------------------
"$TG" allowlist import "$REQS" > "$W/bench-allowlist.toml" || die "tollgate allowlist import"

TG_PID=""; TG_PORT=""; TG_START_S=""
start_tollgate() { # dir: writes dir/config.toml (data_dir, allowlists/ must be there), starts it
    local dir=$1 i t0
    cat > "$dir/config.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "data"
allowlist_dir = "allowlists"
[pypi]
page_ttl = "10m"
[[pypi.index]]
name = "up"
url = "$NGINX_URL/simple/"
EOF
    t0=$(date +%s.%N)
    TOLLGATE_LOG=json "$TG" serve --config "$dir/config.toml" > "$dir/stdout" 2>> "$dir/tollgate.log" &
    TG_PID=$!; PIDS+=("$TG_PID")
    for i in $(seq 1200); do   # 60 s
        TG_PORT=$(sed -n 's|^tollgate listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$dir/stdout")
        if [ -n "$TG_PORT" ]; then
            TG_START_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
            return 0
        fi
        kill -0 "$TG_PID" 2>/dev/null || break
        sleep 0.05
    done
    die "tollgate did not start (see $dir/tollgate.log)"
}
new_tg_dir() { # dir [extra allowlist files...]
    local dir=$1; shift
    rm -rf "$dir"; mkdir -p "$dir/allowlists"
    cp "$W/bench-allowlist.toml" "$dir/allowlists/"
    [ $# -gt 0 ] && cp "$@" "$dir/allowlists/"
    return 0
}
TG_LOGS=()

# --- proxpi (gunicorn, one process: its cache is per process; threads as its README advises) -----
PP=$W/proxpi
rm -rf "$PP"; mkdir -p "$PP/cache"
PROXPI_PORT=$(free_port)
PROXPI_INDEX_URL=$NGINX_URL/simple/ PROXPI_CACHE_DIR=$PP/cache PROXPI_LOGGING_LEVEL=WARNING \
    $PY -m gunicorn --bind "127.0.0.1:$PROXPI_PORT" --workers 1 --threads 4 --log-level warning \
    proxpi.server:app > "$PP/stdout" 2> "$PP/stderr" &
PIDS+=($!)
PROXPI_URL=http://127.0.0.1:$PROXPI_PORT
wait_http "$PROXPI_URL/health" || die "proxpi did not start (see $PP/stderr)"
log "proxpi on $PROXPI_URL"

# --- wrk ---------------------------------------------------------------------------------------
LUA=$W/report.lua
cat > "$LUA" <<'EOF'
done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("WRK %.1f %.2f %d %d %d\n", summary.requests / s,
    summary.bytes / s / 1048576, summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout))
end
EOF
ACCEPT_HTML='Accept: text/html'
ACCEPT_JSON='Accept: application/vnd.pypi.simple.v1+json'
# identity: proxpi gzips every page for a client that sends no Accept-Encoding; nobody else does.
NOENC='Accept-Encoding: identity'
WRK_BAD=()
WRK_RPS=""; WRK_MIB=""
wrk_once() { # label url accept -> sets WRK_RPS, WRK_MIB
    local label=$1 url=$2 accept=$3 out line
    out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 30s -s "$LUA" -H "$accept" -H "$NOENC" "$url")
    line=$(grep '^WRK ' <<<"$out") || die "wrk gave no result for $label: $out"
    set -- $line
    if [ "$5" != 0 ] || [ "$6" != 0 ]; then
        WRK_BAD+=("$label: $5 non-2xx, $6 socket errors of $4 requests")
    fi
    WRK_RPS=$2; WRK_MIB=$3
}
check_get() { # url accept want-content-type-substring -> prints size
    local r
    local code size ctype
    r=$(curl -s -o /dev/null -H "$2" -H "$NOENC" -w '%{http_code} %{size_download} %{content_type}' "$1")
    read -r code size ctype <<<"$r"
    [ "$code" = 200 ] || die "GET $1 ($2) gave $r"
    [[ "$ctype" == *"$3"* ]] || die "GET $1 ($2): unexpected content type $ctype"
    echo "$size"
}

# =============================================================================================
# 1 + 2: one tollgate, warm
# =============================================================================================
TGW=$W/tg-warm
new_tg_dir "$TGW"
start_tollgate "$TGW"; TG_LOGS+=("$TGW/tollgate.log")
START_SMALL=$TG_START_S
TG_URL=http://127.0.0.1:$TG_PORT
log "tollgate on $TG_URL (pid $TG_PID)"

declare -A PAGE_URL=(
    [tollgate]=$TG_URL/simple/$PAGE_PROJECT/
    [nginx]=$NGINX_URL/simple/$PAGE_PROJECT/
    [proxpi]=$PROXPI_URL/index/$PAGE_PROJECT/
)
declare -A SIZE RPS RUNS
for srv in tollgate nginx proxpi; do
    for fmt in html json; do
        if [ $fmt = html ]; then acc=$ACCEPT_HTML; ct=html; else acc=$ACCEPT_JSON; ct=json; fi
        SIZE[$srv.$fmt]=$(check_get "${PAGE_URL[$srv]}" "$acc" "$ct")   # warms the caches
        check_get "${PAGE_URL[$srv]}" "$acc" "$ct" >/dev/null
    done
done
log "1. project page ($PAGE_PROJECT), $REPS x ${DUR}s per server and format, wrk -t2 -c$CONNS"
for fmt in html json; do
    if [ $fmt = html ]; then acc=$ACCEPT_HTML; else acc=$ACCEPT_JSON; fi
    declare -A runs=()
    for r in $(seq "$REPS"); do
        for srv in tollgate nginx proxpi; do   # interleaved, so drift hits all alike
            wrk_once "page $fmt $srv" "${PAGE_URL[$srv]}" "$acc"
            runs[$srv]="${runs[$srv]:-} $WRK_RPS"
        done
    done
    for srv in tollgate nginx proxpi; do
        RPS[$srv.$fmt]=$(median ${runs[$srv]}); RUNS[$srv.$fmt]=${runs[$srv]}
        log "   $fmt $srv: runs${runs[$srv]} -> median ${RPS[$srv.$fmt]}"
    done
    unset runs
done

log "2. cached download of $BIG_FILE ($((BIG_SIZE / 1048576)) MiB), $REPS x ${DUR}s, wrk -t2 -c$CONNS"
TG_FILE_URL=$TG_URL/files/$BIG_PROJECT/$BIG_SHA/$BIG_FILE
NG_FILE_URL=$NGINX_URL/packages/$BIG_FILE
curl -sf -o "$W/big.whl" "$TG_FILE_URL" || die "first fetch of $BIG_FILE through tollgate"
[ "$(sha256sum "$W/big.whl" | cut -d' ' -f1)" = "$BIG_SHA" ] || die "tollgate served $BIG_FILE with another sha256"
rm -f "$W/big.whl"
curl -sf -o /dev/null "$TG_FILE_URL" || die "second fetch (cached) through tollgate"
# Reset the peak-RSS mark so VmHWM covers this phase only (Linux >= 4.0); else it is lifetime.
HWM_SCOPE="during (2)"
echo 5 > "/proc/$TG_PID/clear_refs" 2>/dev/null || HWM_SCOPE="lifetime, incl. (1)"
TG_RSS_BEFORE2=$(rss_kib "$TG_PID" VmRSS)
declare -A dl=()
for r in $(seq "$REPS"); do
    wrk_once "download tollgate" "$TG_FILE_URL" "Accept: */*"; dl[tollgate]="${dl[tollgate]:-} $WRK_MIB"
    wrk_once "download nginx" "$NG_FILE_URL" "Accept: */*"; dl[nginx]="${dl[nginx]:-} $WRK_MIB"
done
TG_HWM2=$(rss_kib "$TG_PID" VmHWM)
DL_TG=$(median ${dl[tollgate]}); DL_NG=$(median ${dl[nginx]})
log "   tollgate: runs${dl[tollgate]} -> $DL_TG MiB/s; nginx: runs${dl[nginx]} -> $DL_NG MiB/s"
log "   tollgate VmHWM ($HWM_SCOPE): $TG_HWM2 KiB (VmRSS before: $TG_RSS_BEFORE2 KiB)"
stop_pid "$TG_PID"

# =============================================================================================
# 3: cold uv install, tollgate (fresh data_dir each run) vs nginx
# =============================================================================================
log "3. cold uv pip install --require-hashes of $N_WHEELS wheels, $UV_REPS runs per side"
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
uv_install() { # index-url target-dir -> prints seconds
    local t0 t1 n
    rm -rf "$2"
    t0=$(date +%s.%N)
    uv pip install --no-config --no-cache --require-hashes --no-deps --quiet \
        --python "$PY" --target "$2" --index-url "$1" -r "$REQS" >"$W/uv.out" 2>&1 \
        || die "uv install from $1 failed: $(tail -5 "$W/uv.out")"
    t1=$(date +%s.%N)
    n=$(find "$2" -maxdepth 1 -name '*.dist-info' | wc -l)
    [ "$n" = "$N_WHEELS" ] || die "uv installed $n of $N_WHEELS distributions from $1"
    rm -rf "$2"
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}'
}
uv_tg=""; uv_ng=""
for r in $(seq "$UV_REPS"); do
    d=$W/tg-cold-$r
    new_tg_dir "$d"
    start_tollgate "$d"; TG_LOGS+=("$d/tollgate.log")
    uv_tg="$uv_tg $(uv_install "http://127.0.0.1:$TG_PORT/simple/" "$W/uv-target")"
    stop_pid "$TG_PID"
    uv_ng="$uv_ng $(uv_install "$NGINX_URL/simple/" "$W/uv-target")"
    rm -rf "$d/data"
done
UV_TG=$(median $uv_tg); UV_NG=$(median $uv_ng)
log "   tollgate: runs$uv_tg s -> $UV_TG s; nginx: runs$uv_ng s -> $UV_NG s"

# =============================================================================================
# 4: idle RSS with 10,000 exact rules
# =============================================================================================
log "4. idle RSS with a 10,000-rule allowlist"
TGK=$W/tg-10k
$PY bench/gen_allowlist.py "$W/synth-10k.toml" 10000
new_tg_dir "$TGK" "$W/synth-10k.toml"
start_tollgate "$TGK"; TG_LOGS+=("$TGK/tollgate.log")
START_10K=$TG_START_S
log "   started in $START_10K s (warm instance with $N_WHEELS rules: $START_SMALL s)"
TGK_URL=http://127.0.0.1:$TG_PORT
check_get "$TGK_URL/simple/$PAGE_PROJECT/" "$ACCEPT_HTML" html >/dev/null
check_get "$TGK_URL/simple/$PAGE_PROJECT/" "$ACCEPT_JSON" json >/dev/null
check_get "$TGK_URL/simple/bench-synth-04242/" "$ACCEPT_JSON" json >/dev/null
check_get "$TGK_URL/simple/" "$ACCEPT_HTML" html >/dev/null
sleep 1
IDLE_RSS=$(rss_kib "$TG_PID" VmRSS)
IDLE_HWM=$(rss_kib "$TG_PID" VmHWM)
stop_pid "$TG_PID"

# =============================================================================================
# report
# =============================================================================================
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
verdict() { # value op limit
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {ok = (op == ">=") ? (v >= l) : (v <= l); print ok ? "ok" : "MISS"}'
}
row() { printf '%-44s %12s %12s %8s %10s  %s\n' "$@"; }
MISSES=0
line() { # what tollgate peer ratio op target
    local v; v=$(verdict "$4" "$5" "$6"); [ "$v" = ok ] || MISSES=$((MISSES + 1))
    row "$1" "$2" "$3" "$4" "$5 $6" "$v"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

echo
echo "tollgate PyPI benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$N_WHEELS wheels, $(du -shL "$SITE/packages/" | cut -f1); page: $PAGE_PROJECT; wrk -t2 -c$CONNS -d${DUR}s; medians of $REPS (uv: $UV_REPS)"
echo "$($TG --version 2>/dev/null || echo 'tollgate ?') (built $(date -r "$TG" +%Y-%m-%dT%H:%M), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')), nginx $("$NGINX" -v 2>&1 | sed 's|.*/||'), proxpi $($PY -c 'import importlib.metadata as m; print(m.version("proxpi"))') (gunicorn, 1 worker x 4 threads), $(uv --version)"
echo
row "figure" "tollgate" "peer" "ratio" "target" ""
row "------" "--------" "----" "-----" "------" ""
for fmt in html json; do
    F=$(echo $fmt | tr a-z A-Z)
    line "1. page $F req/s vs nginx (${SIZE[tollgate.$fmt]}B/${SIZE[nginx.$fmt]}B)" \
        "${RPS[tollgate.$fmt]}" "${RPS[nginx.$fmt]}" "$(ratio "${RPS[tollgate.$fmt]}" "${RPS[nginx.$fmt]}")" ">=" 0.5
    line "1. page $F req/s vs proxpi (${SIZE[proxpi.$fmt]}B)" \
        "${RPS[tollgate.$fmt]}" "${RPS[proxpi.$fmt]}" "$(ratio "${RPS[tollgate.$fmt]}" "${RPS[proxpi.$fmt]}")" ">=" 10
done
line "2. cached wheel MiB/s, $CONNS clients, vs nginx" "$DL_TG" "$DL_NG" "$(ratio "$DL_TG" "$DL_NG")" ">=" 0.8
line "3. cold uv install s (tollgate / nginx)" "$UV_TG" "$UV_NG" "$(ratio "$UV_TG" "$UV_NG")" "<=" 1.10
line "4. peak RSS MiB during (2) [$HWM_SCOPE]" "$(mib "$TG_HWM2")" "-" "-" "<=" 200
line "4. idle RSS MiB, 10,000 rules (peak $(mib "$IDLE_HWM"))" "$(mib "$IDLE_RSS")" "-" "-" "<=" 64
row "   (info) startup s, 10,000 rules / $N_WHEELS rules" "$START_10K" "$START_SMALL" "-" "-" "info"
echo
[ ${#WRK_BAD[@]} -eq 0 ] || { echo "wrk errors:"; printf '  %s\n' "${WRK_BAD[@]}"; }
# tollgate's own warnings and errors during the whole run (audit lines are INFO)
warns=$(cat "${TG_LOGS[@]}" | grep -E '"level":"(WARN|ERROR)"' || true)
if [ -n "$warns" ]; then
    echo "tollgate logged $(grep -c . <<<"$warns") warnings/errors; distinct messages:"
    sed -E 's/.*"message":"([^"]*)".*/  \1/' <<<"$warns" | sort | uniq -c | head -20
else
    echo "tollgate logged no warnings or errors."
fi
echo "runs (in order):"
for fmt in html json; do
    for srv in tollgate nginx proxpi; do printf '  page %-4s %-8s req/s:%s\n' "$fmt" "$srv" "${RUNS[$srv.$fmt]}"; done
done
printf '  download tollgate MiB/s:%s\n  download nginx   MiB/s:%s\n' "${dl[tollgate]}" "${dl[nginx]}"
printf '  uv cold install tollgate s:%s\n  uv cold install nginx    s:%s\n' "$uv_tg" "$uv_ng"
echo "logs: bench/work/tg-*/tollgate.log, bench/work/nginx/error.log, bench/work/proxpi/stderr"
echo "$MISSES figure(s) missed the target."
