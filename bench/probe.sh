#!/usr/bin/env bash
# Probe speed, side by side with h2load against the same agent in the same run (docs/benchmarks.md, Probe).
#
#   bench/probe.sh               # release build, 3 rounds of 10 s each
#   ROUNDS=1 SECONDS_PER_RUN=5 bench/probe.sh
#
# 1. Closed loop: `thespctl probe --concurrency 64 --duration 10s` vs `h2load` with the same 64 streams
#    over the same 4 connections (-c 4 -m 16), alternating, ROUNDS times. Goal: probe ≥ 0.8 × h2load.
# 2. Open loop: `thespctl probe --rate 5000 --duration 10s`. Goal: ≥ 99 % of the rate achieved, p99
#    reported from scheduled start times.
#
# The agent answers method A at once (a 0 ms sleep), so both clients measure request handling, not the
# behaviour. h2load cannot read gRPC trailers, so its "succeeded" counts HTTP 200s; the agent's status
# is OK for every request here (the probe's own counts confirm it).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-10}
RATE=${RATE:-5000}

command -v h2load >/dev/null || { echo "bench/probe.sh: h2load is not installed (apt-get install nghttp2-client)" >&2; exit 2; }
cargo build --release --locked --bin thespctl >&2
bin=target/release/thespctl

work=$(mktemp -d -t thespctl-bench-probe.XXXXXX)
agent_pid=
cleanup() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

config='{"grpc_method_a":{"tracing_name":"a","operations":[{"Action":{"Sleep":{"tracing_name":"s","duration_ms":0}}}]},"grpc_method_b":null,"grpc_method_c":null}'
env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_BACKEND_ADDRESS \
  PORT=0 BIND_ADDR=127.0.0.1 SERVICE_NAME=bench CONFIG_JSON="$config" "$bin" agent >"$work/agent.log" 2>&1 &
agent_pid=$!

# Readiness: the agent's first stdout line names the bound address.
addr=
for _ in $(seq 1 200); do
  addr=$(head -n 1 "$work/agent.log" 2>/dev/null | python3 -c 'import json,sys
try:
    line = json.loads(sys.stdin.readline())
    print(line.get("address") or line.get("fields", {}).get("address", ""))
except Exception:
    pass')
  [ -n "$addr" ] && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log" >&2; echo "bench/probe.sh: the agent exited" >&2; exit 1; }
  sleep 0.05
done
[ -n "$addr" ] || { cat "$work/agent.log" >&2; echo "bench/probe.sh: the agent did not start" >&2; exit 1; }

printf '\x00\x00\x00\x00\x00' >"$work/empty.grpc"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "agent: $addr (pid $agent_pid)"
echo
echo "closed loop, 64 in flight over 4 connections, ${SECS}s per run:"
probe_all=()
h2_all=()
for round in $(seq 1 "$ROUNDS"); do
  h2=$(h2load -D "$SECS" -c 4 -m 16 -t 1 \
         -H 'content-type: application/grpc' -H 'te: trailers' -d "$work/empty.grpc" \
         "http://$addr/thespian.Thespian/A" 2>&1)
  h2_rps=$(printf '%s\n' "$h2" | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')
  h2_ok=$(printf '%s\n' "$h2" | sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p')
  p=$("$bin" probe --address "$addr" --concurrency 64 --connections 4 --duration "${SECS}s" -o json)
  p_rps=$(printf '%s' "$p" | json 'round(d["rps"], 1)')
  p_ok=$(printf '%s' "$p" | json 'd["ok"]')
  p_req=$(printf '%s' "$p" | json 'd["requests"]')
  p_p99=$(printf '%s' "$p" | json 'd["latency_ms"]["p99"]')
  ratio=$(python3 -c "print(f'{$p_rps / $h2_rps:.2f}')")
  echo "  round $round: h2load $h2_rps req/s ($h2_ok succeeded) | probe $p_rps req/s ($p_ok OK of $p_req, p99 $p_p99 ms) | probe/h2load $ratio"
  probe_all+=("$p_rps")
  h2_all+=("$h2_rps")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
pm=$(median "${probe_all[@]}")
hm=$(median "${h2_all[@]}")
echo "  median: h2load $hm req/s, probe $pm req/s, ratio $(python3 -c "print(f'{$pm / $hm:.2f}')") (goal ≥ 0.80)"

echo
echo "open loop, --rate $RATE for ${SECS}s:"
p=$("$bin" probe --address "$addr" --rate "$RATE" --duration "${SECS}s" -o json)
printf '%s' "$p" | python3 -c "
import json, sys
d = json.load(sys.stdin)
rate = $RATE
scheduled = round(rate * $SECS)
l = d['latency_ms']; lag = d['open_loop']['start_lag_ms']
print(f\"  requests {d['requests']} of {scheduled} scheduled, {d['ok']} OK, errors {d['errors']}\")
print(f\"  achieved {d['rps']:.1f} req/s = {100 * d['rps'] / rate:.2f} % of {rate} (goal ≥ 99 %)\")
print(f\"  latency from scheduled start: p50 {l['p50']} ms, p90 {l['p90']} ms, p99 {l['p99']} ms, p99.9 {l['p999']} ms, max {l['max']} ms\")
print(f\"  sent after due time: p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms; delayed by the in-flight cap: {d['open_loop']['delayed']}\")
"
