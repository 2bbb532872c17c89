#!/usr/bin/env bash
# Benchmark of the AWS target against moto on loopback (figures go to docs/benchmarks.md, "AWS target").
#
#   bench/aws.sh            # release build, 5 runs per scenario
#   RUNS=3 BIN=target/debug/thespctl RTT_MS=100 bench/aws.sh
#
# What it measures, each on a freshly reset moto with a new fleet:
#   1. `up --no-wait` of a 1-thespian fleet and of a 20-thespian fleet (--parallel 8, then the default
#      --parallel 20): wall time and the CPU time moto spent meanwhile, median of RUNS. Each on a moto
#      reset and then warmed by a throwaway fleet (moto initialises its backends on first use).
#      Goal: 20 thespians ≤ 1.5 × 1 thespian.
#   2. The same two with RTT_MS (default 100) added to every call by the proxy, as a round trip to a
#      real AWS endpoint would: moto answers in milliseconds, AWS in tens to hundreds of them.
#   3. Describe calls (DescribeStacks + DescribeStackEvents) per stack per second, counted by a proxy
#      between thespctl and moto: the most calls naming one stack within any 1-second window.
#      Goal: ≤ 2.
#   4. The same 21 stacks (environment + 20 services, same templates and parameters) deployed by a
#      sequential loop of `aws cloudformation deploy` (awscli v1 from PyPI, in its own venv), for the
#      ratio against `thespctl up`.
#
# Needs: the test venv with moto (THESPCTL_TEST_VENV, else .venv, else /work/venv), python3, and PyPI
# the first time (awscli into $BENCH_VENV, default target/bench-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="${THESPCTL_TEST_VENV:-$root/.venv}"
[ -x "$venv/bin/moto_server" ] || venv=/work/venv
bench_venv="${BENCH_VENV:-$root/target/bench-venv}"
runs="${RUNS:-5}"
rtt="${RTT_MS:-100}"
bin="${BIN:-}"

if [ -z "$bin" ]; then
  cargo build --release --locked --bin thespctl >&2
  bin="$root/target/release/thespctl"
fi
if [ ! -x "$bench_venv/bin/aws" ]; then
  echo "bench/aws.sh: installing awscli into $bench_venv" >&2
  python3 -m venv "$bench_venv"
  "$bench_venv/bin/pip" install --quiet --disable-pip-version-check awscli
fi

work=$(mktemp -d -t thespctl-bench-aws.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 1 300); do
    if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('$1', timeout=1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench/aws.sh: $1 did not answer" >&2
  return 1
}

moto_port=$(free_port)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
moto_pid=$!
pids+=("$moto_pid")
wait_http "http://127.0.0.1:$moto_port/moto-api/data.json"
tck=$(getconf CLK_TCK)
moto_cpu() { awk -v t="$tck" '{printf "%.3f\n", ($14 + $15) / t}' "/proc/$moto_pid/stat"; }
reset_moto() {
  "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$moto_port/moto-api/reset', data=b'', timeout=10)"
}

# The counting proxy: forwards every request to moto (after DELAY_MS, if given) and logs
# `time action stack` for CloudFormation calls (form-encoded query protocol).
cat >"$work/proxy.py" <<'PY'
import http.client, http.server, sys, threading, time, urllib.parse
upstream_port, listen_port, log_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
delay = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
lock = threading.Lock()
log = open(log_path, "a", buffering=1)

class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle and the client's delayed ACK
    # would add ~40 ms to every call.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def forward(self):
        if delay and not self.path.startswith("/moto-api"):
            time.sleep(delay)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if body and self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            form = urllib.parse.parse_qs(body.decode(errors="replace"))
            action = form.get("Action", ["?"])[0]
            stack = form.get("StackName", ["-"])[0]
            if stack.startswith("arn:"):  # arn:...:stack/NAME/ID
                stack = stack.split(":", 5)[-1].split("/")[1]
            with lock:
                log.write(f"{time.monotonic():.6f} {action} {stack}\n")
        conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = forward

http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer(("127.0.0.1", listen_port), Proxy).serve_forever()
PY
proxy_port=$(free_port)
"$venv/bin/python" "$work/proxy.py" "$moto_port" "$proxy_port" "$work/calls.log" &
pids+=($!)
slow_port=$(free_port)
"$venv/bin/python" "$work/proxy.py" "$moto_port" "$slow_port" "$work/slow-calls.log" "$rtt" &
pids+=($!)
wait_http "http://127.0.0.1:$proxy_port/moto-api/data.json"
wait_http "http://127.0.0.1:$slow_port/moto-api/data.json"
endpoint="http://127.0.0.1:$proxy_port"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true NO_COLOR=1
unset AWS_PROFILE AWS_ENDPOINT_URL

manifest() { # NAME COUNT
  {
    echo "fleet: $1"
    echo "thespians:"
    for i in $(seq 1 "$2"); do
      printf '  t%02d:\n    methods:\n      A:\n        - sleep: %dms\n' "$i" "$i"
    done
    echo "aws:"
    echo "  region: us-east-1"
    echo "  image: registry.example.com/thespian-agent:1"
  } >"$work/$1.yaml"
}

# `up` of a fresh fleet of COUNT thespians on a freshly reset moto: prints the wall time and the CPU
# time moto spent meanwhile, in seconds.
up_time() { # ENDPOINT NAME COUNT EXTRA...
  local url=$1 name=$2 count=$3
  shift 3
  manifest "$name" "$count"
  reset_moto
  # moto builds its backends (EC2's AMIs and instance types, SSM's public parameters, ...) lazily on the
  # first calls after a reset: 0.2-1.3 s of its CPU that no AWS endpoint has. A throwaway 1-thespian
  # fleet, deployed straight to moto (not through the proxies, so its calls are not counted), pays it
  # before the clock starts.
  manifest "warm-$name" 1
  "$bin" up --target aws --endpoint-url "http://127.0.0.1:$moto_port" -f "$work/warm-$name.yaml" --no-wait \
    >/dev/null 2>"$work/warm-$name.err" || { cat "$work/warm-$name.err" >&2; return 1; }
  local t0 t1 c0 c1
  c0=$(moto_cpu)
  t0=$(date +%s.%N)
  "$bin" up --target aws --endpoint-url "$url" -f "$work/$name.yaml" --no-wait -o json "$@" \
    >"$work/$name.json" 2>"$work/$name.err" || { cat "$work/$name.err" >&2; return 1; }
  t1=$(date +%s.%N)
  c1=$(moto_cpu)
  echo "$t1 $t0 $c1 $c0" | awk '{printf "%.3f %.3f\n", $1 - $2, $3 - $4}'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
col() { awk -v c="$1" '{print $c}'; }
div() { echo "$1 $2" | awk -v f="$3" '{printf f, $1 / $2}'; }

echo "bench/aws.sh: $runs runs per scenario, binary $bin" >&2
for s in one twenty wide one-rtt twenty-rtt wide-rtt; do : >"$work/$s"; done
for r in $(seq 1 "$runs"); do
  up_time "$endpoint" "one-$r" 1 >>"$work/one"
  up_time "$endpoint" "twenty-$r" 20 --parallel 8 >>"$work/twenty"
  up_time "$endpoint" "wide-$r" 20 >>"$work/wide"
  up_time "http://127.0.0.1:$slow_port" "one-rtt-$r" 1 >>"$work/one-rtt"
  up_time "http://127.0.0.1:$slow_port" "twenty-rtt-$r" 20 --parallel 8 >>"$work/twenty-rtt"
  up_time "http://127.0.0.1:$slow_port" "wide-rtt-$r" 20 >>"$work/wide-rtt"
done

# Describe calls per stack: the most within any 1 s window, over every stack of every thespctl run.
read -r worst_window stacks_seen per_stack < <(cat "$work/calls.log" "$work/slow-calls.log" | "$venv/bin/python" -c '
import collections, sys
calls = collections.defaultdict(list)
for line in sys.stdin:
    t, action, stack = line.split()
    if action in ("DescribeStacks", "DescribeStackEvents") and stack != "-":
        calls[stack].append(float(t))
worst = 0
for times in calls.values():
    times.sort()
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0 + 1e-9:
            j += 1
        worst = max(worst, i - j + 1)
print(worst, len(calls), "%.2f" % (sum(len(v) for v in calls.values()) / max(len(calls), 1)))
')

# A sequential `aws cloudformation deploy` loop over the same 21 stacks (no proxy delay).
cli_fleet="cli-loop"
cli_time() {
  local t0 t1 t
  reset_moto
  t0=$(date +%s.%N)
  "$bench_venv/bin/aws" --endpoint-url "$endpoint" cloudformation deploy --stack-name "$cli_fleet" \
    --template-file templates/environment.yaml --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset \
    --parameter-overrides FleetName="$cli_fleet" InstanceType=t3.small InstanceCount=2 UseALB=false \
    --tags thespctl:fleet="$cli_fleet" thespctl:thespian=- >/dev/null
  for i in $(seq 1 20); do
    t=$(printf 't%02d' "$i")
    "$bench_venv/bin/aws" --endpoint-url "$endpoint" cloudformation deploy --stack-name "$cli_fleet-$t" \
      --template-file templates/ecs_service.yaml --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset \
      --parameter-overrides FleetName="$cli_fleet" ThespianName="$t" Image=registry.example.com/thespian-agent:1 \
      DesiredCount=1 "ConfigJson={\"grpc_method_a\":null}" ClusterName="$cli_fleet" \
      NamespaceArn="arn:aws:servicediscovery:us-east-1:123456789012:namespace/unknown" \
      --tags thespctl:fleet="$cli_fleet" thespctl:thespian="$t" >/dev/null
  done
  t1=$(date +%s.%N)
  echo "$t1 $t0" | awk '{printf "%.3f\n", $1 - $2}'
}
cli=$(cli_time)

m1=$(col 1 <"$work/one" | median)
c1=$(col 2 <"$work/one" | median)
m20=$(col 1 <"$work/twenty" | median)
c20=$(col 2 <"$work/twenty" | median)
m20w=$(col 1 <"$work/wide" | median)
c20w=$(col 2 <"$work/wide" | median)
r1=$(col 1 <"$work/one-rtt" | median)
r20=$(col 1 <"$work/twenty-rtt" | median)
r20w=$(col 1 <"$work/wide-rtt" | median)
svc_one=$(for r in $(seq 1 "$runs"); do
  "$venv/bin/python" -c "import json; r = json.load(open('$work/one-$r.json')); print(r['stacks'][1]['elapsed_ms'] / 1000)"
done | median)

cat <<REPORT
## results: moto 5.2.5 on 127.0.0.1 behind a counting proxy; $(nproc) CPUs; median of $runs runs; moto reset before each
                                                    wall       moto CPU
up, 1 thespian (environment + 1 service stack):     ${m1} s    ${c1} s   (the service stack alone: ${svc_one} s)
up, 20 thespians, --parallel 8:                     ${m20} s    ${c20} s   ($(div "$m20" "$m1" "%.2f")x the 1-thespian up)
up, 20 thespians, --parallel 20 (default):          ${m20w} s    ${c20w} s   ($(div "$m20w" "$m1" "%.2f")x)
with ${rtt} ms added to every call:
up, 1 thespian:                                     ${r1} s
up, 20 thespians, --parallel 8:                     ${r20} s              ($(div "$r20" "$r1" "%.2f")x)
up, 20 thespians, --parallel 20 (default):          ${r20w} s              ($(div "$r20w" "$r1" "%.2f")x)
describe calls per stack, worst 1 s window:         ${worst_window}   (over ${stacks_seen} stacks; ${per_stack} per stack in all)
sequential 'aws cloudformation deploy' loop, 21 stacks: ${cli} s   ($(div "$cli" "$m20w" "%.1f")x thespctl up of 20 thespians)
REPORT
