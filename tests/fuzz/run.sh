#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer targets with clang-14 + ASan/UBSan and runs each for
# FUZZ_SECONDS (default 60). Findings land in build-fuzz/crashes/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/build-fuzz"
secs=${FUZZ_SECONDS:-60}
mkdir -p "$out/crashes"
for t in smtp_parser data_reader smtp_client proxy_header; do
  src="$root/tests/fuzz/fuzz_$t.cpp"
  clang++-14 -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I"$root" "$src" \
    "$root/daemon/smtp_parser.cpp" "$root/daemon/data_reader.cpp" \
    "$root/daemon/smtp_client.cpp" "$root/common/reply.cpp" \
    "$root/daemon/proxy/proxy_header.cpp" "$root/common/net.cpp" -o "$out/fuzz_$t"
  mkdir -p "$out/corpus_$t"
  seeds=()
  [ -d "$root/tests/fuzz/seeds/$t" ] && seeds=("$root/tests/fuzz/seeds/$t")
  "$out/fuzz_$t" -max_total_time="$secs" -artifact_prefix="$out/crashes/$t-" "$out/corpus_$t" \
    "${seeds[@]}"
done
