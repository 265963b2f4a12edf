#!/usr/bin/env bash
# bench/load.sh [BUILD] [REPS]
#
# Receiving rate of sluiced against the harness ceiling, measured side by side in one run:
#   ceiling : smtp-source -s 20 -d -m 20000 -l 1024  ->  smtp-sink
#   sluiced : smtp-source -s 20 -d -m 20000 -l 1024  ->  sluiced -> maildir on tmpfs
# Alternates the two REPS times (default 3) and prints the medians and their ratio.
# Target: sluiced >= 0.6 x smtp-sink.
set -euo pipefail
build=${1:-build}
reps=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
sluiced="$root/$build/daemon/sluiced"
MSGS=${MSGS:-20000}
SESS=${SESS:-20}
SIZE=${SIZE:-1024}
work=$(mktemp -d /dev/shm/sluice-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

sink_port=$(free_port)
/usr/sbin/smtp-sink -c -u "$(id -un)" 127.0.0.1:$sink_port 1000 > /dev/null 2>&1 &
pids+=($!)
wait_port $sink_port

port=$(free_port)
mkdir -p "$work/maps"
cat > "$work/sluice.toml" <<TOML
[server]
# Benches run as root (make bench) and keep that identity (daemon/privileges.hpp).
user = "root"
group = "root"
allow_root = true
hostname = "bench.example.test"
max_connections_per_ip = 10000
shards = ${SHARDS:-0}
[[listener]]
name = "mx"
address = "127.0.0.1:$port"
role = "mx"
[domains]
local = ["example.test"]
[maps]
dir = "maps"
[routes]
"example.test" = "maildir:maildir"
[control]
socket = "control.sock"
TOML
"$sluiced" --config "$work/sluice.toml" --log-level "${LOG_LEVEL:-info}" 2> "$work/sluiced.log" &
pids+=($!)
wait_port $port

rate() {  # rate TARGET -> msgs/s
  local t0 t1
  t0=$EPOCHREALTIME
  /usr/sbin/smtp-source -d -s "$SESS" -m "$MSGS" -l "$SIZE" -f sender@outside.test \
    -t user@example.test "$1" > /dev/null
  t1=$EPOCHREALTIME
  /usr/bin/python3 -c "print(round($MSGS / ($t1 - $t0)))"
}

sink_rates=() sluice_rates=()
for i in $(seq "$reps"); do
  sink_rates+=("$(rate 127.0.0.1:$sink_port)")
  sluice_rates+=("$(rate 127.0.0.1:$port)")
  rm -rf "$work/maildir/new" && mkdir -p "$work/maildir/new"
  echo "rep=$i smtp_sink_msgs_per_s=${sink_rates[-1]} sluiced_msgs_per_s=${sluice_rates[-1]}"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms=$(median "${sink_rates[@]}")
ml=$(median "${sluice_rates[@]}")
echo "command: smtp-source -d -s $SESS -m $MSGS -l $SIZE (maildir on tmpfs)"
echo "median smtp_sink_msgs_per_s=$ms sluiced_msgs_per_s=$ml ratio=$(/usr/bin/python3 -c "print(round($ml / $ms, 2))")"
