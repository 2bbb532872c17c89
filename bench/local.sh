#!/usr/bin/env bash
# bench/local.sh — speed of the local target (issue 3): `up` of the largest example to all-healthy, and
# `down`, against the goals of < 2 s each. Also, for information: a no-op `up` (nothing changed) and a
# rolling restart of one thespian.
#
#   bench/local.sh               # release build, 10 rounds; summary on stdout
#   ROUNDS=20 EXAMPLE=shop bench/local.sh
#   THESPCTL=target/debug/thespctl bench/local.sh    # measure another build
#
# Part 2 (skipped without h2load): the cost of THESPIAN_RESOLVE_FILE on the call path — the rate of a
# yorick -> gilbert hop with the fixed THESPIAN_RESOLVE vs the resolve file, in alternating rounds (h2load,
# 2 connections x 50 streams against yorick). Each yorick is first called once through grpcio (the venv of
# scripts/test; THESPCTL_TEST_VENV) to prove the hop answers OK, since h2load cannot see grpc-status.
#
# `thespctl up` returns only once every replica answers SERVING to a gRPC health check, so the time of
# the command *is* the time to all-healthy; each round also checks `thespctl status` (exit 0 = every
# replica serving) and, after `down`, that no agent of the fleet is left (by pid), so a fast but wrong run
# cannot count. Plain wall-clock timing around each command (nanoseconds from `date`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ROUNDS=${ROUNDS:-10}
EXAMPLE=${EXAMPLE:-shop}
THESPCTL=${THESPCTL:-}
if [ -z "$THESPCTL" ]; then
  echo "building the release binary..." >&2
  cargo build --release --locked --bin thespctl >&2
  THESPCTL=$root/target/release/thespctl
fi
THESPCTL=$(realpath "$THESPCTL")

work=$(mktemp -d -t thespctl-bench-local.XXXXXX)
cleanup() {
  "$THESPCTL" down -f "$work/thespian.yaml" --grace 1s >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
cp -r "examples/$EXAMPLE/." "$work/"
manifest=$work/thespian.yaml
log=$work/thespctl.log   # stderr of every command (progress lines, errors), shown if a round fails
tc() { "$THESPCTL" "$@" >/dev/null 2>>"$log" || { echo "thespctl $1 failed:" >&2; tail -20 "$log" >&2; exit 1; }; }

replicas() { # the number of replicas in the state
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(sum(len(t["replicas"]) for t in s["thespians"].values()))' "$work/.thespctl/state.json"
}
pids() { # pid:start_time of every recorded replica
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(" ".join("%d:%d" % (r["pid"], r["start_time"]) for t in s["thespians"].values() for r in t["replicas"]))' "$work/.thespctl/state.json"
}
alive() { # pid:start_time -> true if that very process still runs (not a zombie)
  local pid=${1%%:*} start=${1##*:} stat
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  set -- $stat
  [ "$1" != Z ] && [ "${20}" = "$start" ]
}
ms() { echo $(( ($2 - $1) / 1000000 )); }
now() { date +%s%N; }

up_ms=(); down_ms=(); noop_ms=(); roll_ms=()
for round in $(seq 1 "$ROUNDS"); do
  t0=$(now); tc up -f "$manifest"; t1=$(now)
  up_ms+=("$(ms "$t0" "$t1")")
  "$THESPCTL" status -f "$manifest" >/dev/null 2>>"$log" || { echo "round $round: not every replica is serving after up" >&2; exit 1; }
  n=$(replicas)

  t0=$(now); tc up -f "$manifest"; t1=$(now)
  noop_ms+=("$(ms "$t0" "$t1")")

  # A rolling restart of the first thespian: change its behaviour (a comment does not count; the
  # fleet's name does not either) by bumping the first `sleep: Nms` in the manifest, then restore.
  cp "$manifest" "$work/orig.yaml"
  python3 - "$manifest" <<'EOF'
import re, sys
p = sys.argv[1]; s = open(p).read()
s = re.sub(r"sleep: (\d+)ms", lambda m: f"sleep: {int(m.group(1)) + 1}ms", s, count=1)
open(p, "w").write(s)
EOF
  t0=$(now); tc up -f "$manifest"; t1=$(now)
  roll_ms+=("$(ms "$t0" "$t1")")
  cp "$work/orig.yaml" "$manifest"
  tc up -f "$manifest"

  before=$(pids)
  t0=$(now); tc down -f "$manifest"; t1=$(now)
  down_ms+=("$(ms "$t0" "$t1")")
  for p in $before; do
    if alive "$p"; then echo "round $round: agent ${p%%:*} survived down" >&2; exit 1; fi
  done
done

# ---- part 2: resolve file vs fixed map on the call path ----
hop_fixed=(); hop_file=()
venv=${THESPCTL_TEST_VENV:-$root/.venv}
if command -v h2load >/dev/null && [ -x "$venv/bin/python" ]; then
  HOP_ROUNDS=${HOP_ROUNDS:-3}; HOP_SECONDS=${HOP_SECONDS:-5}
  printf '\x00\x00\x00\x00\x00' >"$work/empty.grpc"
  agent_pids=()
  stop_agents() { for p in "${agent_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; agent_pids=(); }
  trap 'stop_agents; cleanup' EXIT INT TERM
  # agent NAME CONFIG [ENV=VALUE...]: starts `thespctl agent`, sets ADDR from its first line
  agent() {
    local name=$1 config=$2; shift 2
    env PORT=0 BIND_ADDR=127.0.0.1 SERVICE_NAME="$name" CONFIG_JSON="$config" "$@" \
      "$THESPCTL" agent >"$work/$name.out" 2>&1 &
    agent_pids+=($!)
    for _ in $(seq 1 500); do
      ADDR=$(head -1 "$work/$name.out" 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["address"])' 2>/dev/null) && return 0
      sleep 0.01
    done
    echo "agent $name did not start" >&2; cat "$work/$name.out" >&2; exit 1
  }
  call_once() { # ADDR: one A through grpcio, which must answer OK
    "$venv/bin/python" -c '
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
ch.unary_unary("/thespian.Thespian/A", request_serializer=lambda _: b"", response_deserializer=lambda b: b)(b"", timeout=5)
' "$1"
  }
  hop() { # ADDR -> req/s
    h2load -t 1 -c 2 -m 50 -D "$HOP_SECONDS" --warm-up-time 1 -H 'content-type: application/grpc' -H 'te: trailers' \
      -d "$work/empty.grpc" "http://$1/thespian.Thespian/A" >"$work/h2load.out"
    grep -q ' 0 failed, 0 errored' "$work/h2load.out" || { cat "$work/h2load.out" >&2; exit 1; }
    grep -o 'finished in [0-9.]*s, [0-9.]* req/s' "$work/h2load.out" | awk '{print int($4)}'
  }
  agent gilbert '{"grpc_method_a":null}'; gilbert=$ADDR
  yorick_config='{"grpc_method_a":{"tracing_name":"ask","operations":[{"Action":{"CallService":{"service_address":"http://gilbert","service_port":"80","grpc_method":"A"}}}]}}'
  echo "gilbert:80=$gilbert" >"$work/resolve"
  agent yorick-fixed "$yorick_config" THESPIAN_RESOLVE="gilbert:80=$gilbert"; fixed=$ADDR
  agent yorick-file "$yorick_config" THESPIAN_RESOLVE_FILE="$work/resolve"; file=$ADDR
  call_once "$fixed"; call_once "$file"
  for _ in $(seq 1 "$HOP_ROUNDS"); do
    hop_fixed+=("$(hop "$fixed")"); hop_file+=("$(hop "$file")")
  done
  stop_agents
fi

stats() { # min median max of the arguments
  printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "min %d ms, median %d ms, max %d ms", a[1], a[int((NR+1)/2)], a[NR]}'
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
verdict() { [ "$(median "${@:2}")" -lt "$1" ] && echo "met" || echo "NOT met"; }

echo "local target: example '$EXAMPLE' ($n replicas), $ROUNDS rounds, $(nproc) CPUs, $("$THESPCTL" --version)"
echo "  up (all healthy):          $(stats "${up_ms[@]}")   goal < 2000 ms: $(verdict 2000 "${up_ms[@]}")"
echo "  down (all exited):         $(stats "${down_ms[@]}")   goal < 2000 ms: $(verdict 2000 "${down_ms[@]}")"
echo "  up, nothing changed:       $(stats "${noop_ms[@]}")"
echo "  up, one thespian rolled:   $(stats "${roll_ms[@]}")"
if [ ${#hop_fixed[@]} -gt 0 ]; then
  echo "yorick -> gilbert hop, $HOP_ROUNDS alternating rounds of ${HOP_SECONDS} s, 2 x 50 streams (req/s):"
  echo "  THESPIAN_RESOLVE (fixed):  ${hop_fixed[*]}   median $(median "${hop_fixed[@]}")"
  echo "  THESPIAN_RESOLVE_FILE:     ${hop_file[*]}   median $(median "${hop_file[@]}")"
else
  echo "(hop comparison skipped: it needs h2load and the Python venv of scripts/test)"
fi
