#!/usr/bin/env bash
# `make bench`: every benchmark, each reporting ratios against a reference measured in
# the same run. Run it on a quiet machine.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
echo "== parser micro benchmarks (MB/s; memcpy is the reference)"
"$root/$build/bench/parser_bench" --benchmark_min_time=0.5
echo "== relay decision per RCPT (parse_path, decide_rcpt over LMDB maps)"
"$root/$build/bench/policy_bench" --benchmark_min_time=0.5
echo "== receiving rate vs smtp-sink"
"$root/bench/load.sh" "$build" 3
echo "== behind HAProxy with PROXY v2 vs direct"
"$root/bench/proxy_vs_direct.sh" "$build" 3
echo "== STARTTLS vs plaintext, 20 sessions x 10 KB"
/usr/bin/python3 "$root/bench/tls_throughput.py" "$build" 4000
echo "== TLS handshake cost vs raw ECDHE+ECDSA"
"$root/$build/bench/tls_bench" --benchmark_min_time=0.5
echo "== spool group commit"
"$root/$build/bench/spool_bench" --seconds 1.5
echo "== fdatasync: appending vs writing into zero-filled space (spool.zero_ahead)"
/usr/bin/python3 "$root/bench/fdatasync_probe.py" "${TMPDIR:-/var/tmp}" 2000
echo "== peak memory for one 20 MB message (the message size is the reference)"
/usr/bin/python3 "$root/bench/big_message_rss.py" "$build" 20
echo "== memory with 10000 idle sessions"
/usr/bin/python3 "$root/bench/idle_memory.py" "$build" 10000
echo "== /healthz latency alone vs with 64 slow HTTP clients of user nobody"
/usr/bin/python3 "$root/bench/healthz_probe.py" "$build" 200
echo "== resolver cache: hit/miss latency, memory at 100k names"
"$root/$build/bench/dns_cache_bench" 100000
echo "== delivery by MX vs static routes to the same 4 sinks (20000 messages, 1000 domains)"
/usr/bin/python3 "$root/bench/mx_bench.py" "$build" 20000 1000
