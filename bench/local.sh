#!/usr/bin/env bash
# bench/local.sh — speed of the local target (issue 3): `up` of the largest example to all-healthy, and
# `down`, against the goals of < 2 s each. Also, for information: a no-op `up` (nothing changed) and a
# rolling restart of one thespian.
#
#   bench/local.sh               # release build, 10 rounds; summary on stdout
#   ROUNDS=20 EXAMPLE=shop bench/local.sh
#   THESPCTL=target/debug/thespctl bench/local.sh    # measure another build
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
