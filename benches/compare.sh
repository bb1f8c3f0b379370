#!/usr/bin/env bash
# benches/compare.sh — the hub side by side with a direct call and with nginx, in one run.
#
# Same messages (A052 payloads from bcss_sim::payloads, seed 2026), same reference institution
# server (cpas-liege, one process plain and one with mutual TLS), same load generator
# (`bcss-hub load`), configurations interleaved round by round:
#
#   a   load -> institution                                  (plain h2c)
#   b   load -> nginx grpc_pass -> institution               (plain h2c both legs)
#   bt  load -> nginx (TLS, client certs) -> institution       (mTLS in, plain out: c's legs)
#   c   load -> hub, memory outbox, no journal -> institution (mTLS in, plain out)
#   cu  the same hub with delivery.stream = false: one Deliver call per delivery, as a and b make
#   d   load -> hub, durable outbox + journal -> institution  (mTLS both legs)
#   b'  load -> nginx (TLS, client certs) -> institution      (TLS both legs)
#   f1  hub everything on, in-process network, single-recipient A052   } deliveries per second
#   f10 the same, A052 broadcast to 10 CPAS that integrated the person } (fan-out ratio)
#
# Prints throughput and p99 per configuration (median of the rounds) and the ratios c/a, c/b,
# d/b' and f10/f1 (deliveries per second); then the CPU each process spent per answered message
# (the load generator, nginx or the hub, the institution server; f1 and f10 run all three in one
# process), read from /proc: on cores the processes share, it tells what bounds each ratio.
# Needs: cargo, and nginx (installed from Debian with apt-get when missing). Everything it
# starts runs on loopback and is stopped on exit.
#
#   benches/compare.sh [--rounds 3] [--seconds 10] [--warm-up 2] [--in-flight 64] [--connections 2]
#                      [--base-port 47100] [--no-build] [--only "a b bt c cu d b2 f1 f10"]
#                      [--hub-metrics on|off]
#
# Each run loads for --warm-up seconds before its measured ones (connections opened, caches and
# allocators filled); the warm-up's calls are counted apart (`load --warm-up`), and its errors
# leave a round out as the measured ones do. CPU is divided over every call the generator
# made, the warm-up's included, since the processes' ticks are read around the whole run.
#
# The hubs record and serve their Prometheus metrics, as a hub in production does
# (`--hub-metrics off`: no recorder, to measure what the metrics cost).
#
# BCSS_HUB_BIN=PATH runs another build of bcss-hub (a baseline) instead of target/release's.
# BCSS_HUB_ENV="NAME=VALUE ..." is set for the hubs of c, cu and d only (an experiment on the
# hub's process, say TOKIO_WORKER_THREADS=1, with the same load generator and institutions).
set -euo pipefail

ROUNDS=3
SECONDS_EACH=10
WARM_UP=2
IN_FLIGHT=64
CONNECTIONS=2
BASE_PORT=47100
BUILD=1
ONLY="a b bt c cu d b2 f1 f10"
HUB_METRICS=on
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --seconds) SECONDS_EACH="$2"; shift 2 ;;
    --warm-up) WARM_UP="$2"; shift 2 ;;
    --in-flight) IN_FLIGHT="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --base-port) BASE_PORT="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --hub-metrics) HUB_METRICS="$2"; shift 2 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
ROOT=$PWD

if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  echo "nginx is missing: installing it from Debian" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get install -y nginx >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y nginx >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v jq >/dev/null 2>&1; then
  echo "jq is missing: installing it from Debian" >&2
  $([[ $(id -u) -ne 0 ]] && echo sudo) apt-get install -y jq >/dev/null
fi

if [[ $BUILD -eq 1 ]]; then
  cargo build --release --bin bcss-hub
fi
BIN="${BCSS_HUB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/bcss-hub}"
CONFIG="$ROOT/config/hub.toml"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
# On an interrupt the script stops (a trap that returned would let the loop go on, without
# its servers, and print a table of zeros).
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A fresh development PKI for this run (network CA, hub, every institution).
PKI="$WORK/pki"
"$BIN" load --config "$CONFIG" --pki "$PKI" --serve-only >"$WORK/pki.log" 2>&1 &
PKI_PID=$!
for _ in $(seq 1 300); do grep -q "Serving until" "$WORK/pki.log" 2>/dev/null && break; sleep 0.1; done
kill "$PKI_PID" 2>/dev/null || true
wait "$PKI_PID" 2>/dev/null || true
CA="$PKI/ca.pem"; HUB_CERT="$PKI/hub.pem"; HUB_KEY="$PKI/hub.key"
for f in "$CA" "$HUB_CERT" "$HUB_KEY"; do [[ -f $f ]] || { echo "no $f" >&2; cat "$WORK/pki.log" >&2; exit 1; }; done

INST_PLAIN=$((BASE_PORT + 1)); INST_TLS=$((BASE_PORT + 2))
NGINX_PLAIN=$((BASE_PORT + 3)); NGINX_TLS=$((BASE_PORT + 4)); NGINX_TLS_IN=$((BASE_PORT + 8))
HUB_C=$((BASE_PORT + 5)); HUB_D=$((BASE_PORT + 6)); HUB_CU=$((BASE_PORT + 7))
# Each hub's metrics endpoint, on a port the system picks: nothing scrapes it here, and a fixed
# port in the ephemeral range can be taken by a client connection between rounds.
metrics_at() { [[ $HUB_METRICS == on ]] && echo "--hub-metrics 127.0.0.1:0"; true; }
case $HUB_METRICS in on|off) ;; *) echo "--hub-metrics: on or off, not $HUB_METRICS" >&2; exit 2 ;; esac
INST_NAME=cpas-liege.institutions.bcss.test

# A config copy whose tls.pki is this run's PKI (the institution subcommand reads it there).
mkdir -p "$WORK/config"
cp -r "$ROOT/config/." "$WORK/config/"
sed -i "s|^pki = .*|pki = \"$PKI\"|" "$WORK/config/hub.toml"
RUN_CONFIG="$WORK/config/hub.toml"

# A port that already answers belongs to something else (a server an earlier run left behind
# would be measured in place of this run's): refused before anything starts.
for port in $(seq $((BASE_PORT + 1)) $((BASE_PORT + 8))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use (a server left by an earlier run?): stop it or give --base-port" >&2
    exit 1
  fi
done
start() { "$@" >"$WORK/log.$(( ${#PIDS[@]} ))" 2>&1 & PIDS+=($!); }
start "$BIN" institution --config "$RUN_CONFIG" --id cpas-liege --listen "127.0.0.1:$INST_PLAIN" --plain --quiet
PID_INST_PLAIN=$!
start "$BIN" institution --config "$RUN_CONFIG" --id cpas-liege --listen "127.0.0.1:$INST_TLS" --quiet
PID_INST_TLS=$!
# `env` execs the hub, so $! is the hub's pid.
start env ${BCSS_HUB_ENV:-} "$BIN" load --config "$RUN_CONFIG" --start-hub memory --serve-only --hub-listen "127.0.0.1:$HUB_C" \
  --endpoint "cpas-liege=127.0.0.1:$INST_PLAIN" --delivery-tls off $(metrics_at)
PID_HUB_C=$!
PID_HUB_CU=""
if [[ " $ONLY " == *" cu "* ]]; then
  start env ${BCSS_HUB_ENV:-} "$BIN" load --config "$RUN_CONFIG" --start-hub memory --serve-only --hub-listen "127.0.0.1:$HUB_CU" \
    --endpoint "cpas-liege=127.0.0.1:$INST_PLAIN" --delivery-tls off --delivery-stream off $(metrics_at)
  PID_HUB_CU=$!
fi
start env ${BCSS_HUB_ENV:-} "$BIN" load --config "$RUN_CONFIG" --start-hub durable --serve-only --hub-listen "127.0.0.1:$HUB_D" \
  --endpoint "cpas-liege=127.0.0.1:$INST_TLS" $(metrics_at)
PID_HUB_D=$!

USER_LINE=""
[[ $(id -u) -eq 0 ]] && USER_LINE="user root;"
cat >"$WORK/nginx.conf" <<EOF
$USER_LINE
worker_processes auto;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  fastcgi_temp_path $WORK/nginx-fastcgi;
  uwsgi_temp_path $WORK/nginx-uwsgi;
  scgi_temp_path $WORK/nginx-scgi;
  http2_max_concurrent_streams 1024;
  keepalive_requests 1000000;
  upstream institution_plain { server 127.0.0.1:$INST_PLAIN; keepalive 256; keepalive_requests 1000000; }
  upstream institution_tls { server 127.0.0.1:$INST_TLS; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX_PLAIN http2;
    location / { grpc_pass grpc://institution_plain; }
  }
  server {
    listen 127.0.0.1:$NGINX_TLS_IN ssl http2;
    ssl_certificate $HUB_CERT;
    ssl_certificate_key $HUB_KEY;
    ssl_client_certificate $CA;
    ssl_verify_client on;
    location / { grpc_pass grpc://institution_plain; }
  }
  server {
    listen 127.0.0.1:$NGINX_TLS ssl http2;
    ssl_certificate $HUB_CERT;
    ssl_certificate_key $HUB_KEY;
    ssl_client_certificate $CA;
    ssl_verify_client on;
    location / {
      grpc_pass grpcs://institution_tls;
      grpc_ssl_certificate $HUB_CERT;
      grpc_ssl_certificate_key $HUB_KEY;
      grpc_ssl_trusted_certificate $CA;
      grpc_ssl_verify on;
      grpc_ssl_name $INST_NAME;
      grpc_ssl_server_name on;
      grpc_ssl_session_reuse on;
    }
  }
}
EOF
start "$NGINX" -p "$WORK" -c "$WORK/nginx.conf"
PID_NGINX=$!

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1; logs in $WORK:" >&2
  tail -n 20 "$WORK"/log.* "$WORK/nginx-error.log" >&2 || true
  exit 1
}
PORTS="$INST_PLAIN $INST_TLS $NGINX_PLAIN $NGINX_TLS $NGINX_TLS_IN $HUB_C $HUB_D"
[[ " $ONLY " == *" cu "* ]] && PORTS+=" $HUB_CU"
for port in $PORTS; do wait_port "$port"; done

# CPU time, in clock ticks, of processes and their children (nginx's workers), every thread.
TICK_HZ=$(getconf CLK_TCK)
ticks() {
  local total=0 pid child tid fields
  for pid in "$@"; do
    for child in $pid $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
      for tid in /proc/"$child"/task/*; do
        read -r -a fields 2>/dev/null <"$tid/stat" || continue
        # utime and stime; a thread name with spaces would shift them, ours have none.
        total=$((total + fields[13] + fields[14]))
      done
    done
  done
  echo "$total"
}
# User + system seconds of this shell's finished children (`times`' second line), into
# CHILDREN_SECONDS; `times` must run in this shell, not in a subshell, to see them.
children_seconds() {
  times >"$WORK/times"
  CHILDREN_SECONDS=$(awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } printf "%.3f", s }' "$WORK/times")
}
middle_of() { case $1 in b|bt|b2) echo "$PID_NGINX" ;; c) echo "$PID_HUB_C" ;; cu) echo "$PID_HUB_CU" ;; d) echo "$PID_HUB_D" ;; esac; }
institution_of() { case $1 in a|b|bt|c|cu) echo "$PID_INST_PLAIN" ;; d|b2) echo "$PID_INST_TLS" ;; esac; }

COMMON=(--config "$RUN_CONFIG" --duration "$SECONDS_EACH" --warm-up "$WARM_UP" --in-flight "$IN_FLIGHT" --connections "$CONNECTIONS" --quiet)
run() { # name, load arguments...
  local name=$1 round=$2; shift 2
  local middle institution g0 g1 m0 m1 i0 i1
  middle=$(middle_of "$name"); institution=$(institution_of "$name")
  m0=$(ticks $middle); i0=$(ticks $institution)
  children_seconds; g0=$CHILDREN_SECONDS
  if ! "$BIN" load "${COMMON[@]}" --label "$name" --json "$WORK/$name.$round.json" "$@" >"$WORK/$name.$round.txt" 2>&1; then
    echo "  $name failed:" >&2; tail -n 5 "$WORK/$name.$round.txt" >&2
    return 0
  fi
  children_seconds; g1=$CHILDREN_SECONDS
  m1=$(ticks $middle); i1=$(ticks $institution)
  # The servers this round measured must still be the ones started above.
  for pid in $middle $institution; do
    kill -0 "$pid" 2>/dev/null || { echo "  $name: process $pid (nginx, hub or institution) has exited; logs in $WORK" >&2; exit 1; }
  done
  # A round with errors, refusals or deliveries made twice (f1, f10: the in-process network
  # counts them) measured something else than forwarding: it is reported and left out of the
  # medians.
  local errors refused twice
  errors=$(jq '([.errors[]] | add // 0) + (.warm_up.errors // 0)' "$WORK/$name.$round.json")
  refused=$(jq '.deliveries.refused // 0' "$WORK/$name.$round.json")
  twice=$(jq '.deliveries.duplicated // 0' "$WORK/$name.$round.json")
  if [[ $errors != 0 || $refused != 0 || $twice != 0 ]]; then
    echo "  $name: $errors errors, warm-up included ($(jq -c "{measured: .errors, warm_up: .warm_up.errors}" "$WORK/$name.$round.json")), $refused refused, $twice delivered twice: round left out of the medians" >&2
    mv "$WORK/$name.$round.json" "$WORK/$name.$round.left-out"
    LEFT_OUT+=("$name round $round")
    return 0
  fi
  # Microseconds of CPU per answered message: generator (for f1 and f10, the one process), middle, institution.
  # The ticks cover the warm-up too, and so do the calls they are divided by.
  awk -v n="$(jq '.answered + (.warm_up.calls // 0)' "$WORK/$name.$round.json")" -v g0="$g0" -v g1="$g1" -v m=$((m1 - m0)) -v i=$((i1 - i0)) -v hz="$TICK_HZ" \
    'BEGIN { if (n > 0) printf "%.1f %.1f %.1f\n", (g1 - g0) * 1e6 / n, m * 1e6 / hz / n, i * 1e6 / hz / n }' >"$WORK/$name.$round.cpu"
  printf '  %-4s %9.0f msg/s  p99 %7.2f ms  %9.0f deliveries/s\n' "$name" \
    "$(jq .throughput "$WORK/$name.$round.json")" "$(jq .latency_ms.p99 "$WORK/$name.$round.json")" \
    "$(jq .deliveries.per_second "$WORK/$name.$round.json")"
}

LEFT_OUT=()
echo "bcss-hub comparison: $ROUNDS rounds x ${SECONDS_EACH} s after ${WARM_UP} s of warm-up, $IN_FLIGHT in flight over $CONNECTIONS connections; hub metrics $HUB_METRICS; $(nproc) CPUs; $(date -u +%F)"
# The host, so that a saved output says which machine it came from (these VMs move between hosts).
CPU_LINE=$(awk -F': ' '/^model name/ {m=$2} /^cpu family/ {f=$2} /^model\t/ {n=$2} END {printf "%s, family %s model %s", m, f, n}' /proc/cpuinfo)
echo "host: $CPU_LINE; $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg); $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo 'no git') $( [[ -n "${BCSS_HUB_BIN:-}" ]] && echo "(hub binary $BCSS_HUB_BIN)")"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  for name in $ONLY; do
    case $name in
      a)  run a "$round" --target institution --address "127.0.0.1:$INST_PLAIN" --tls off ;;
      b)  run b "$round" --target institution --address "127.0.0.1:$NGINX_PLAIN" --tls off ;;
      bt) run bt "$round" --target institution --address "127.0.0.1:$NGINX_TLS_IN" --tls on --server-name hub.bcss.test ;;
      c)  run c "$round" --target hub --address "127.0.0.1:$HUB_C" ;;
      cu) run cu "$round" --target hub --address "127.0.0.1:$HUB_CU" ;;
      d)  run d "$round" --target hub --address "127.0.0.1:$HUB_D" ;;
      b2) run b2 "$round" --target institution --address "127.0.0.1:$NGINX_TLS" --tls on --server-name hub.bcss.test ;;
      f1) run f1 "$round" --target hub --start-hub durable --start-network $(metrics_at) ;;
      f10) run f10 "$round" --target hub --start-hub durable --start-network --fan-out 10 $(metrics_at) ;;
    esac
  done
done

# The median of the numbers on stdin, one per line (0 when there are none).
median_of_lines() {
  sort -g | awk '{v[NR]=$1} END {if (NR == 0) print 0; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}
median() { # name, jq path
  for f in "$WORK/$1".*.json; do if [[ -f $f ]]; then jq "$2" "$f"; fi; done | median_of_lines
}
cpu_median() { # name, column of the .cpu files
  for f in "$WORK/$1".*.cpu; do if [[ -f $f ]]; then awk -v k="$2" '{ print $k }' "$f"; fi; done | median_of_lines
}
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (y > 0) printf "%.2f", x / y; else print "n/a" }'; }

echo
if [[ ${#LEFT_OUT[@]} -eq 0 ]]; then
  echo "medians of $ROUNDS rounds"
else
  echo "medians of $ROUNDS rounds, except these, left out for errors, refusals or deliveries made twice: ${LEFT_OUT[*]}"
fi
printf '%-4s %-58s %10s %9s %13s\n' cfg configuration msg/s "p99 ms" deliveries/s
declare -A TPUT DPS
for name in $ONLY; do
  case $name in
    a) what="direct to the institution server (plain h2c)" ;;
    b) what="nginx grpc_pass (plain h2c)" ;;
    bt) what="nginx grpc_pass, mTLS in, plain out (c's legs)" ;;
    c) what="hub, memory outbox, no journal (mTLS in, plain out)" ;;
    cu) what="c with one Deliver call per delivery (no stream)" ;;
    d) what="hub, durable outbox + journal (mTLS both legs)" ;;
    b2) what="nginx grpc_pass, TLS both legs (b')" ;;
    f1) what="hub everything on, single-recipient A052" ;;
    f10) what="hub everything on, A052 fan-out to 10 CPAS" ;;
  esac
  TPUT[$name]=$(median "$name" .throughput)
  DPS[$name]=$(median "$name" .deliveries.per_second)
  printf '%-4s %-58s %10.0f %9.2f %13.0f\n' "$name" "$what" "${TPUT[$name]}" "$(median "$name" .latency_ms.p99)" "${DPS[$name]}"
done
echo
[[ -n ${TPUT[c]:-} && -n ${TPUT[a]:-} ]] && echo "c/a  = $(ratio "${TPUT[c]}" "${TPUT[a]}")   (goal >= 0.45)"
[[ -n ${TPUT[c]:-} && -n ${TPUT[b]:-} ]] && echo "c/b  = $(ratio "${TPUT[c]}" "${TPUT[b]}")   (goal >= 1.5)"
[[ -n ${TPUT[c]:-} && -n ${TPUT[bt]:-} ]] && echo "c/bt = $(ratio "${TPUT[c]}" "${TPUT[bt]}")   (nginx with c's legs: mTLS in, plain out)"
[[ -n ${TPUT[cu]:-} && -n ${TPUT[b]:-} ]] && echo "cu/b = $(ratio "${TPUT[cu]}" "${TPUT[b]}")   (deliveries as unary calls)"
[[ -n ${TPUT[c]:-} && -n ${TPUT[cu]:-} ]] && echo "c/cu = $(ratio "${TPUT[c]}" "${TPUT[cu]}")   (what the delivery stream gives)"
[[ -n ${TPUT[d]:-} && -n ${TPUT[b2]:-} ]] && echo "d/b' = $(ratio "${TPUT[d]}" "${TPUT[b2]}")   (goal >= 1.0)"
[[ -n ${DPS[f10]:-} && -n ${DPS[f1]:-} ]] && echo "fan-out deliveries/s f10/f1 = $(ratio "${DPS[f10]}" "${DPS[f1]}")   (goal >= 3)"
# Per-round ratios, to show the spread.
for round in $(seq 1 "$ROUNDS"); do
  line="round $round:"
  if [[ -f "$WORK/c.$round.json" && -f "$WORK/a.$round.json" ]]; then line+=" c/a $(ratio "$(jq .throughput "$WORK/c.$round.json")" "$(jq .throughput "$WORK/a.$round.json")")"; fi
  if [[ -f "$WORK/c.$round.json" && -f "$WORK/b.$round.json" ]]; then line+=" c/b $(ratio "$(jq .throughput "$WORK/c.$round.json")" "$(jq .throughput "$WORK/b.$round.json")")"; fi
  if [[ -f "$WORK/c.$round.json" && -f "$WORK/bt.$round.json" ]]; then line+=" c/bt $(ratio "$(jq .throughput "$WORK/c.$round.json")" "$(jq .throughput "$WORK/bt.$round.json")")"; fi
  if [[ -f "$WORK/d.$round.json" && -f "$WORK/b2.$round.json" ]]; then line+=" d/b' $(ratio "$(jq .throughput "$WORK/d.$round.json")" "$(jq .throughput "$WORK/b2.$round.json")")"; fi
  if [[ -f "$WORK/f10.$round.json" && -f "$WORK/f1.$round.json" ]]; then line+=" f10/f1 $(ratio "$(jq .deliveries.per_second "$WORK/f10.$round.json")" "$(jq .deliveries.per_second "$WORK/f1.$round.json")")"; fi
  echo "$line"
done

# What each process spent per answered message, medians of the rounds. "available" is what the
# cores offered per message (CPUs / messages per second): a total well below it means the
# processes waited (on commits, on each other) rather than used the cores.
echo
echo "CPU per answered message, microseconds (medians of $ROUNDS rounds; user + system, all threads)"
printf '%-4s %10s %10s %12s %8s %10s\n' cfg generator "nginx/hub" institution total available
for name in $ONLY; do
  ls "$WORK/$name".*.cpu >/dev/null 2>&1 || continue
  g=$(cpu_median "$name" 1); m=$(cpu_median "$name" 2); i=$(cpu_median "$name" 3)
  available=$(awk -v c="$(nproc)" -v t="${TPUT[$name]}" 'BEGIN { if (t > 0) printf "%.1f", c * 1e6 / t; else print "n/a" }')
  case $name in
    f1|f10) printf '%-4s %10s %10s %12s %8.1f %10s   (generator, hub and institutions: one process)\n' "$name" - - - "$g" "$available" ;;
    a) printf '%-4s %10.1f %10s %12.1f %8.1f %10s\n' "$name" "$g" - "$i" "$(awk -v a="$g" -v c="$i" 'BEGIN { print a + c }')" "$available" ;;
    *) printf '%-4s %10.1f %10.1f %12.1f %8.1f %10s\n' "$name" "$g" "$m" "$i" "$(awk -v a="$g" -v b="$m" -v c="$i" 'BEGIN { print a + b + c }')" "$available" ;;
  esac
done
