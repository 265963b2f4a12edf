#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer targets with clang-14 + ASan/UBSan and runs each for
# FUZZ_SECONDS (default 60). Findings land in build-fuzz/crashes/; the corpus each run
# grows stays in build-fuzz/corpus_NAME and the seeds in tests/fuzz/seeds/NAME.
# FUZZ_TARGETS="parse_path sasl" runs only those; FUZZ_BUILD_ONLY=1 only builds.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/build-fuzz"
secs=${FUZZ_SECONDS:-60}
mkdir -p "$out/crashes"

# Each target and the sources it links: the pure cores only, no libuv, no LMDB.
declare -A sources=(
  [smtp_parser]="daemon/smtp_parser.cpp"
  [data_reader]="daemon/data_reader.cpp"
  [smtp_client]="daemon/smtp_client.cpp common/reply.cpp"
  [parse_path]="policy/address.cpp common/net.cpp common/reply.cpp"
  [http_request]="daemon/http.cpp"
  [sasl]="daemon/sasl.cpp common/reply.cpp"
  [proxy_header]="daemon/proxy/proxy_header.cpp common/net.cpp"
)
# Inputs longer than libFuzzer's default 4096 bytes where a limit lies beyond it: the HTTP
# header section (8 KiB: 431) and the SASL line (12286 octets: 500 5.5.2).
declare -A max_len=([http_request]=16384 [sasl]=16384)
targets=${FUZZ_TARGETS:-"smtp_parser data_reader smtp_client proxy_header parse_path http_request sasl"}
for t in $targets; do
  srcs=()
  for s in ${sources[$t]}; do srcs+=("$root/$s"); done
  clang++-14 -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I"$root" \
    "$root/tests/fuzz/fuzz_$t.cpp" "${srcs[@]}" -o "$out/fuzz_$t"
done
[ -n "${FUZZ_BUILD_ONLY:-}" ] && exit 0
for t in $targets; do
  mkdir -p "$out/corpus_$t"
  seeds=()
  [ -d "$root/tests/fuzz/seeds/$t" ] && seeds=("$root/tests/fuzz/seeds/$t")
  "$out/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 -max_len="${max_len[$t]:-4096}" \
    -artifact_prefix="$out/crashes/$t-" "$out/corpus_$t" "${seeds[@]}"
done
