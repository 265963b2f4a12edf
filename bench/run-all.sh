#!/usr/bin/env bash
# `make bench`: every benchmark, each reporting ratios against a reference measured in
# the same run. Run it on a quiet machine.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
echo "== parser micro benchmarks (MB/s; memcpy is the reference)"
"$root/$build/bench/parser_bench" --benchmark_min_time=0.5
echo "== receiving rate vs smtp-sink"
"$root/bench/load.sh" "$build" 3
echo "== memory with 10000 idle sessions"
/usr/bin/python3 "$root/bench/idle_memory.py" "$build" 10000
