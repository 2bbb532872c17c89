#!/usr/bin/env bash
# Probe speed, side by side with h2load against the same agent in the same run (docs/benchmarks.md, Probe).
#
#   bench/probe.sh               # release build, 5 rounds of 10 s each
#   ROUNDS=1 SECONDS_PER_RUN=5 bench/probe.sh
#
# 1. Closed loop: `thespctl probe --concurrency 64 --duration 10s` vs `h2load` with the same 64 streams
#    over the same 4 connections (-c 4 -m 16), alternating, ROUNDS times. Goal: probe ≥ 0.8 × h2load
#    (the median of the per-round ratios: each round's two runs are seconds apart, so a change in the
#    load of a shared machine affects both). Also reported: CPU per request of each client and of the
#    agent, the figures that explain the ratio when both share the machine's cores.
# 2. Open loop: `thespctl probe --rate 5000 --duration 10s`. Goal: ≥ 99 % of the rate achieved, p99
#    reported from scheduled start times.
#
# The agent answers method A at once (a 0 ms sleep), so both clients measure request handling, not the
# behaviour. h2load cannot read gRPC trailers, so its "succeeded" counts HTTP 200s; the agent's status
# is OK for every request here (the probe's own counts confirm it).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
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
echo "closed loop, 64 in flight over 4 connections, ${SECS}s per run (CPU: microseconds per request):"
agent_ticks() { awk '{print $14 + $15}' "/proc/$agent_pid/stat"; }
hz=$(getconf CLK_TCK)
run_h2load() {
  local t0 t1
  t0=$(agent_ticks)
  /usr/bin/time -f '%U %S' -o "$work/h2.time" h2load -D "$SECS" -c 4 -m 16 -t 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$work/empty.grpc" \
    "http://$addr/thespian.Thespian/A" >"$work/h2.out" 2>&1
  t1=$(agent_ticks)
  h2_rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$work/h2.out")
  h2_n=$(sed -n 's/^requests: \([0-9]*\) total.*/\1/p' "$work/h2.out")
  h2_ok=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$work/h2.out")
  h2_cpu=$(python3 -c "u, s = map(float, open('$work/h2.time').read().split()); print(f'{1e6 * (u + s) / $h2_n:.1f}')")
  h2_agent=$(python3 -c "print(f'{1e6 * ($t1 - $t0) / $hz / $h2_n:.1f}')")
}
run_probe() {
  local t0 t1
  t0=$(agent_ticks)
  /usr/bin/time -f '%U %S' -o "$work/p.time" "$bin" probe --address "$addr" --concurrency 64 --connections 4 \
    --duration "${SECS}s" -o json >"$work/p.json"
  t1=$(agent_ticks)
  p_rps=$(json 'round(d["rps"], 1)' <"$work/p.json")
  p_n=$(json 'd["requests"]' <"$work/p.json")
  p_ok=$(json 'd["ok"]' <"$work/p.json")
  p_p99=$(json 'd["latency_ms"]["p99"]' <"$work/p.json")
  p_cpu=$(python3 -c "u, s = map(float, open('$work/p.time').read().split()); print(f'{1e6 * (u + s) / $p_n:.1f}')")
  p_agent=$(python3 -c "print(f'{1e6 * ($t1 - $t0) / $hz / $p_n:.1f}')")
}
ratios=()
probe_all=()
h2_all=()
for round in $(seq 1 "$ROUNDS"); do
  # Alternate which client goes first, so a drift in the machine's load does not favour one of them.
  if [ $((round % 2)) -eq 1 ]; then run_h2load; run_probe; else run_probe; run_h2load; fi
  ratio=$(python3 -c "print(f'{$p_rps / $h2_rps:.2f}')")
  echo "  round $round: h2load $h2_rps req/s ($h2_ok of $h2_n succeeded; cpu h2load $h2_cpu, agent $h2_agent)" \
       "| probe $p_rps req/s ($p_ok OK of $p_n, p99 $p_p99 ms; cpu probe $p_cpu, agent $p_agent) | ratio $ratio"
  ratios+=("$ratio")
  probe_all+=("$p_rps")
  h2_all+=("$h2_rps")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "  median: h2load $(median "${h2_all[@]}") req/s, probe $(median "${probe_all[@]}") req/s;" \
     "median of the per-round ratios $(median "${ratios[@]}") (goal ≥ 0.80)"
echo "  load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

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
