#!/usr/bin/env bash
# bench/proxy_vs_direct.sh [BUILD] [REPS]
#
# The cost of running behind a load balancer, measured side by side in one sitting:
#   direct   : smtp-source -s 20 -m 20000 -l 1024  ->  sluiced (listener mx)
#   haproxy  : smtp-source ... -> HAProxy (TCP mode, no header) -> sluiced (listener mx)
#   proxy-v2 : smtp-source ... -> HAProxy send-proxy-v2 -> sluiced (listener mx-lb,
#              proxy_protocol = ["127.0.0.1/32"])
# Twice: with one connection per message (every message pays for a connection through
# HAProxy and one PROXY header), then with connections reused (smtp-source -d). The three
# alternate REPS times (default 3); the medians and the ratios to `direct` are printed.
# `haproxy` separates the extra hop's cost from the header's (proxy-v2 vs haproxy).
set -euo pipefail
build=${1:-build}
reps=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
sluiced="$root/$build/daemon/sluiced"
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
MSGS=${MSGS:-20000}
SESS=${SESS:-20}
SIZE=${SIZE:-1024}
work=$(mktemp -d /dev/shm/sluice-proxy-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

direct=$(free_port) lb=$(free_port) fe_plain=$(free_port) fe_v2=$(free_port)
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
address = "127.0.0.1:$direct"
role = "mx"
[[listener]]
name = "mx-lb"
address = "127.0.0.1:$lb"
role = "mx"
proxy_protocol = ["127.0.0.1/32"]
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
wait_port $direct

cat > "$work/haproxy.cfg" <<CFG
global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend plain
    bind 127.0.0.1:$fe_plain
    default_backend plain
backend plain
    server s 127.0.0.1:$direct source 127.0.0.1
frontend v2
    bind 127.0.0.1:$fe_v2
    default_backend v2
backend v2
    server s 127.0.0.1:$lb send-proxy-v2 source 127.0.0.1
CFG
"$haproxy" -c -f "$work/haproxy.cfg" > /dev/null
"$haproxy" -db -f "$work/haproxy.cfg" > "$work/haproxy.log" 2>&1 &
pids+=($!)
wait_port $fe_plain
wait_port $fe_v2

rate() {  # rate TARGET [SMTP-SOURCE OPTION] -> msgs/s
  local t0 t1
  t0=$EPOCHREALTIME
  /usr/sbin/smtp-source ${2:-} -s "$SESS" -m "$MSGS" -l "$SIZE" -f sender@outside.test \
    -t user@example.test "$1" > /dev/null
  t1=$EPOCHREALTIME
  /usr/bin/python3 -c "print(round($MSGS / ($t1 - $t0)))"
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { /usr/bin/python3 -c "print(round($1 / $2, 2))"; }

# Warm-up: first connections through each path (HAProxy's and sluiced's first accepts).
for t in $direct $fe_plain $fe_v2; do MSGS=200 rate 127.0.0.1:$t > /dev/null; done
rm -rf "$work/maildir/new"

for opt in "" "-d"; do
  mode=$([ -z "$opt" ] && echo "one connection per message" || echo "connections reused (-d)")
  echo "== $mode"
  before=$(grep -c 'result=proxied' "$work/sluiced.log" || true)
  direct_rates=() plain_rates=() v2_rates=()
  for i in $(seq "$reps"); do
    direct_rates+=("$(rate 127.0.0.1:$direct "$opt")")
    plain_rates+=("$(rate 127.0.0.1:$fe_plain "$opt")")
    v2_rates+=("$(rate 127.0.0.1:$fe_v2 "$opt")")
    rm -rf "$work/maildir/new" && mkdir -p "$work/maildir/new"
    echo "rep=$i direct_msgs_per_s=${direct_rates[-1]} haproxy_msgs_per_s=${plain_rates[-1]}" \
         "proxy_v2_msgs_per_s=${v2_rates[-1]}"
  done
  proxied=$(( $(grep -c 'result=proxied' "$work/sluiced.log" || true) - before ))
  md=$(median "${direct_rates[@]}")
  mp=$(median "${plain_rates[@]}")
  mv=$(median "${v2_rates[@]}")
  echo "command: smtp-source $opt -s $SESS -m $MSGS -l $SIZE ($mode; maildir on tmpfs)"
  echo "sessions through the PROXY v2 listener: $proxied"
  echo "median direct_msgs_per_s=$md haproxy_msgs_per_s=$mp proxy_v2_msgs_per_s=$mv"
  echo "ratio proxy_v2/direct=$(ratio "$mv" "$md") haproxy/direct=$(ratio "$mp" "$md")" \
       "proxy_v2/haproxy=$(ratio "$mv" "$mp")"
done
