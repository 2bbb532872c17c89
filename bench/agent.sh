#!/usr/bin/env bash
# bench/agent.sh — the agent's speed and size goals, measured side by side in one run (issue 2).
#
#   bench/agent.sh                       # ~4 minutes; results in bench/out/agent/, summary on stdout
#   DURATION=10 ROUNDS=7 bench/agent.sh
#
# Load generator: h2load (Debian's nghttp2-client). A gRPC unary call is a POST with
# `content-type: application/grpc`, `te: trailers` and a 5-byte body (the empty `Nothing` frame).
# h2load cannot read `grpc-status` (it is in the trailers), so every server is first called once with the
# generated client (`startup check`) to prove it answers OK before it is loaded.
#
# Measured:
#   1. A with a null config vs a bare tonic no-op server (examples/noop.rs): goal >= 0.9x
#   2. A with one 10 ms sleep at 100 concurrent streams: goal >= 9000 req/s and p99 <= 12 ms
#   3. a yorick -> gilbert hop (A on yorick calls A on gilbert): goal >= 0.5x the null-method rate
#   4. peak RSS (VmHWM) of a fresh agent under 256 concurrent streams (10 ms sleep): goal <= 16 MiB
#   5. start-up to the first successful request: goal <= 50 ms
#
# The machine may be shared: rates move with the neighbours' load, so comparisons alternate short rounds
# and report medians, and the CPU time the servers spend per request (which moves far less) is given too.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}          # seconds of measurement per h2load run (after 1 s of warm-up)
ROUNDS=${ROUNDS:-5}              # alternating rounds; the median of each series is reported
CONNS=${CONNS:-2}                # connections per h2load run ...
STREAMS=${STREAMS:-50}           # ... and concurrent streams on each (100 in flight)
ALT_WORKERS=${ALT_WORKERS:-1}    # the THESPIAN_WORKER_THREADS setting compared with the default (2)
OUT=bench/out/agent
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.out

command -v h2load >/dev/null || { echo "bench/agent.sh: h2load not found (apt-get install nghttp2-client)" >&2; exit 2; }

echo "building release binaries..." >&2
cargo build --release --locked -p thespian-agent --bin thespian-agent --example noop --example startup >&2
AGENT=target/release/thespian-agent
NOOP=target/release/examples/noop
HELPER=target/release/examples/startup

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

# start NAME CMD... : runs CMD (stdout to $OUT/NAME.log), waits for its first line, sets ADDR and PID.
start() {
  local name=$1; shift
  "$@" >"$OUT/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  ADDR=
  for _ in $(seq 1 500); do
    ADDR=$(head -n1 "$OUT/$name.log" 2>/dev/null | grep -o '"address":"[^"]*"' | cut -d'"' -f4 || true)
    [ -n "$ADDR" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/$name.log" >&2; echo "$name exited" >&2; exit 1; }
    sleep 0.01
  done
  [ -n "$ADDR" ] || { echo "$name did not start" >&2; exit 1; }
  "$HELPER" check "$ADDR"
}

agent() { # agent NAME CONFIG [VAR=VALUE...]
  local name=$1 config=$2; shift 2
  start "$name" env -i PATH="$PATH" SERVICE_NAME="$name" CONFIG_JSON="$config" PORT=0 BIND_ADDR=127.0.0.1 "$@" "$AGENT"
}

# cpu_ticks PID... -> utime + stime of the processes, in clock ticks
cpu_ticks() {
  local sum=0 pid
  for pid in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$sum"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
printf '\0\0\0\0\0' >"$OUT/empty.grpc"
# load ADDR CONNS STREAMS LOGFILE PID... -> prints "REQ_PER_S CPU_US_PER_REQ": h2load's rate and the CPU
# time (user + system) the PIDs spent per request during the run (warm-up included in both counts).
load() {
  local addr=$1 conns=$2 streams=$3 logfile=$4; shift 4
  local before after rate total
  before=$(cpu_ticks "$@")
  h2load -t 1 -c "$conns" -m "$streams" -D "$DURATION" --warm-up-time 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$OUT/empty.grpc" \
    --log-file "$logfile" "http://$addr/thespian.Thespian/A" >"$logfile.out"
  after=$(cpu_ticks "$@")
  grep -q ' 0 failed, 0 errored' "$logfile.out" || { cat "$logfile.out" >&2; echo "h2load saw failures" >&2; exit 1; }
  rate=$(grep -o 'finished in [0-9.]*s, [0-9.]* req/s' "$logfile.out" | awk '{print $4}')
  # Requests completed including the warm-up second (which the CPU ticks also cover).
  total=$(wc -l <"$logfile")
  awk -v r="$rate" -v t="$total" -v c="$((after - before))" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.0f %.1f\n", r, (t > 0 ? c / hz * 1e6 / t : 0)}'
}
# percentile FILE P -> latency percentile in ms from an h2load log file (third column, microseconds)
percentile() {
  cut -f3 "$1" | sort -n | awk -v p="$2" '{a[NR]=$1} END {i=int(NR*p/100); if (i<1) i=1; printf "%.2f", a[i]/1000}'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rss_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }

NULL='{"grpc_method_a":null,"grpc_method_b":null,"grpc_method_c":null}'
SLEEP='{"grpc_method_a":{"tracing_name":"nap","operations":[{"Action":{"Sleep":{"tracing_name":"ten ms","duration_ms":10}}}]},"grpc_method_b":null,"grpc_method_c":null}'
HOP='{"grpc_method_a":{"tracing_name":"engage","operations":[{"Action":{"CallService":{"tracing_name":"call gilbert","service_address":"http://gilbert","service_port":"80","grpc_method":"A"}}}]},"grpc_method_b":null,"grpc_method_c":null}'

# 1. null method vs no-op, alternating rounds. The agent runs with its default worker count and, for
#    reference, with ALT_WORKERS.
start noop env -i PATH="$PATH" PORT=0 "$NOOP"; NOOP_ADDR=$ADDR; NOOP_PID=$PID
agent gilbert "$NULL"; NULL_ADDR=$ADDR; NULL_PID=$PID
agent gilbert_alt "$NULL" THESPIAN_WORKER_THREADS="$ALT_WORKERS"; ALT_ADDR=$ADDR; ALT_PID=$PID
noop_rates=""; null_rates=""; alt_rates=""; noop_cpu=""; null_cpu=""; alt_cpu=""
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: no-op vs null method..." >&2
  read -r r c < <(load "$NOOP_ADDR" "$CONNS" "$STREAMS" "$OUT/noop-$round.log" "$NOOP_PID"); noop_rates="$noop_rates $r"; noop_cpu="$noop_cpu $c"
  read -r r c < <(load "$NULL_ADDR" "$CONNS" "$STREAMS" "$OUT/null-$round.log" "$NULL_PID"); null_rates="$null_rates $r"; null_cpu="$null_cpu $c"
  read -r r c < <(load "$ALT_ADDR" "$CONNS" "$STREAMS" "$OUT/alt-$round.log" "$ALT_PID"); alt_rates="$alt_rates $r"; alt_cpu="$alt_cpu $c"
done
NOOP_RATE=$(echo "$noop_rates" | median); NULL_RATE=$(echo "$null_rates" | median); ALT_RATE=$(echo "$alt_rates" | median)
NOOP_CPU=$(echo "$noop_cpu" | median); NULL_CPU=$(echo "$null_cpu" | median); ALT_CPU=$(echo "$alt_cpu" | median)

# 2. one 10 ms sleep at 100 concurrent streams on one connection.
echo "10 ms sleep at 100 streams..." >&2
agent sleeper "$SLEEP"; SLEEP_ADDR=$ADDR
read -r SLEEP_RATE _ < <(load "$SLEEP_ADDR" 1 100 "$OUT/sleep.log" "$PID")
SLEEP_P50=$(percentile "$OUT/sleep.log" 50); SLEEP_P99=$(percentile "$OUT/sleep.log" 99)

# 3. yorick -> gilbert (the null agent above) hop, same load shape as 1, alternating with the null agent.
echo "yorick -> gilbert hop..." >&2
agent yorick "$HOP" THESPIAN_RESOLVE="gilbert:80=$NULL_ADDR"; HOP_ADDR=$ADDR; HOP_PID=$PID
hop_rates=""; hop_cpu=""; null2_rates=""
for round in $(seq 1 "$ROUNDS"); do
  read -r r c < <(load "$HOP_ADDR" "$CONNS" "$STREAMS" "$OUT/hop-$round.log" "$HOP_PID" "$NULL_PID"); hop_rates="$hop_rates $r"; hop_cpu="$hop_cpu $c"
  read -r r _ < <(load "$NULL_ADDR" "$CONNS" "$STREAMS" "$OUT/null2-$round.log" "$NULL_PID"); null2_rates="$null2_rates $r"
done
HOP_RATE=$(echo "$hop_rates" | median); HOP_CPU=$(echo "$hop_cpu" | median); NULL2_RATE=$(echo "$null2_rates" | median)

# 4. peak RSS of a fresh agent under 256 concurrent streams (4 connections x 64), 10 ms sleep so all 256
#    are in flight inside the agent at once; then the same with ALT_WORKERS. The no-op's and the null
#    agent's peaks after their loads are given for reference.
echo "peak RSS at 256 streams..." >&2
agent rss "$SLEEP"; RSS_ADDR=$ADDR; RSS_PID=$PID
RSS_IDLE=$(rss_kib "$RSS_PID")
read -r RSS_RATE _ < <(load "$RSS_ADDR" 4 64 "$OUT/rss.log" "$RSS_PID")
RSS_PEAK=$(rss_kib "$RSS_PID")
agent rss_alt "$SLEEP" THESPIAN_WORKER_THREADS="$ALT_WORKERS"; RSS_ALT_PID=$PID
load "$ADDR" 4 64 "$OUT/rss_alt.log" "$RSS_ALT_PID" >/dev/null
RSS_ALT_PEAK=$(rss_kib "$RSS_ALT_PID")
NOOP_PEAK=$(rss_kib "$NOOP_PID"); NULL_PEAK=$(rss_kib "$NULL_PID")

# 5. start-up: spawn -> first line -> first successful A, 30 times.
echo "start-up..." >&2
STARTUP=$(env -i PATH="$PATH" SERVICE_NAME=startup CONFIG_JSON="$NULL" BIND_ADDR=127.0.0.1 "$HELPER" "$AGENT" 30)

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
cat <<EOF | tee "$OUT/summary.md"
$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average before/after: $LOAD_BEFORE / $LOAD_AFTER; DURATION=$DURATION ROUNDS=$ROUNDS

| measurement | figure | goal |
| --- | --- | --- |
| no-op tonic server, A (${CONNS}x${STREAMS} streams, median of $ROUNDS rounds) | $NOOP_RATE req/s, $NOOP_CPU µs CPU/req (rates:$noop_rates) | |
| agent, null A (same load, default workers) | $NULL_RATE req/s, $NULL_CPU µs CPU/req (rates:$null_rates) | |
| **null A / no-op** | **$(ratio "$NULL_RATE" "$NOOP_RATE")x** the rate; CPU/req no-op ÷ agent $(ratio "$NOOP_CPU" "$NULL_CPU")x | >= 0.9x |
| agent, null A, THESPIAN_WORKER_THREADS=$ALT_WORKERS | $ALT_RATE req/s, $ALT_CPU µs CPU/req (rates:$alt_rates) | |
| **A = one 10 ms sleep, 100 streams on 1 connection** | **$SLEEP_RATE req/s, p50 $SLEEP_P50 ms, p99 $SLEEP_P99 ms** | >= 9000 req/s, p99 <= 12 ms |
| yorick -> gilbert hop (${CONNS}x${STREAMS} streams, median of $ROUNDS) | $HOP_RATE req/s, $HOP_CPU µs CPU/req in both agents (rates:$hop_rates) | |
| **hop / null A** (null re-measured alternately: $NULL2_RATE req/s) | **$(ratio "$HOP_RATE" "$NULL2_RATE")x** | >= 0.5x |
| **peak RSS, fresh agent, 256 streams of 10 ms sleeps** ($RSS_RATE req/s) | **$(mib "$RSS_PEAK") MiB** (idle $(mib "$RSS_IDLE") MiB) | <= 16 MiB |
| same with THESPIAN_WORKER_THREADS=$ALT_WORKERS | $(mib "$RSS_ALT_PEAK") MiB | |
| peak RSS after the loads above: no-op / null agent | $(mib "$NOOP_PEAK") MiB / $(mib "$NULL_PEAK") MiB | |
| **start-up to first successful A** (30 runs) | **$STARTUP** | <= 50 ms |
EOF
