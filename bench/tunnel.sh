#!/usr/bin/env bash
# Session Manager tunnel benchmark (figures go to docs/benchmarks.md, section "Session Manager tunnel").
#
# Runs the release `thespctl tunnel` binary against the loopback SSM double (tests/ssm_double/, in the
# test process) with a TCP echo target behind it:
#   1. 20 concurrent connections, each echoing 1 MiB byte-exact: wall time, MB/s, CPU of thespctl per MB;
#   2. a session idle for 10 minutes (THESPCTL_BENCH_IDLE_SECS, default 600) that must still forward.
# Usage: bench/tunnel.sh [quick]   ("quick" skips the 10-minute idle run)
set -euo pipefail
cd "$(dirname "$0")/.."
# Dummy credentials: the double checks the SigV4 signature against them; nothing reaches AWS.
export AWS_ACCESS_KEY_ID=AKIDTHESPCTLTEST AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_SSM
filter=bench_twenty_connections_by_one_mebibyte
if [ "${1:-}" != quick ]; then filter=bench_; fi
echo "machine: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%dT%H:%MZ)"
cargo test --release --locked --test tunnel -- --ignored --nocapture --test-threads 1 "$filter" 2>&1 | grep -oE "BENCH.*|test result.*|panicked.*"
