#!/usr/bin/env bash
# benches/bare-institution.sh — what tonic's service stack costs a unary call, against hyper alone.
#
# Starts the `bare_institution` example (crates/bcss-sim/examples/bare_institution.rs), which
# acknowledges every Deliver at once, served by tonic or by hyper alone, plain h2c on loopback;
# drives it with `bcss-hub load --target institution --tls off`, the two servers alternated
# round by round; prints each round's calls per second, p99, and the CPU the server and the
# generator spent per call (the server's from /proc, the generator's from /usr/bin/time), then
# the medians. Nothing else should run meanwhile.
#
#   benches/bare-institution.sh [--rounds 5] [--seconds 10] [--port 47201] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=5; SECONDS_EACH=10; PORT=47201; BUILD=yes
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --seconds) SECONDS_EACH="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --no-build) BUILD=no; shift ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for tool in jq /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install jq time)" >&2; exit 1; }
done
if [[ $BUILD == yes ]]; then
  cargo build --release --quiet -p bcss-sim --example bare_institution
  cargo build --release --quiet
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
SERVER="$TARGET_DIR/release/examples/bare_institution"
BIN="${BCSS_HUB_BIN:-$TARGET_DIR/release/bcss-hub}"
WORK=$(mktemp -d)
PID=""
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "bare institution, tonic against hyper alone: $ROUNDS rounds x $SECONDS_EACH s after 2 s of warm-up, 64 in flight over 2 connections; $(nproc) CPUs; $(date -u +%F)"
echo "host: $(lscpu | sed -n 's/^Model name: *//p' | head -1), family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  for server in tonic hyper; do
    "$SERVER" "$server" "127.0.0.1:$PORT" >"$WORK/$server.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
    t0=$(ticks "$PID")
    /usr/bin/time -f "%U %S" -o "$WORK/generator.time" "$BIN" load --target institution \
      --address "127.0.0.1:$PORT" --tls off --duration "$SECONDS_EACH" --warm-up 2 --quiet \
      --json "$WORK/$server.$round.json" >"$WORK/$server.$round.txt" 2>&1
    t1=$(ticks "$PID")
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    json="$WORK/$server.$round.json"
    awk -v s="$server" -v r="$round" -v n="$(jq '.answered + (.warm_up.calls // 0)' "$json")" \
      -v t=$((t1 - t0)) -v hz="$HZ" -v g="$(awk '{print $1 + $2}' "$WORK/generator.time")" \
      -v tp="$(jq .throughput "$json")" -v p="$(jq .latency_ms.p99 "$json")" -v e="$(jq '[.errors[]] | add // 0' "$json")" \
      'BEGIN { printf "%-5s %d: %6.0f calls/s  p99 %5.2f ms  errors %d  server %6.2f µs/call  generator %6.2f µs/call\n", s, r, tp, p, e, t * 1e6 / hz / n, g * 1e6 / n }' \
      | tee -a "$WORK/rounds"
  done
done
echo "medians:"
for server in tonic hyper; do
  grep "^$server " "$WORK/rounds" | awk -v s="$server" '
    { tp[NR] = $3; sv[NR] = $(NF - 4); gn[NR] = $(NF - 1) }
    function median(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    END { printf "%-5s %6.0f calls/s  server %6.2f µs/call  generator %6.2f µs/call\n", s, median(tp, NR), median(sv, NR), median(gn, NR) }'
done
