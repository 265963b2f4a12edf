#!/usr/bin/env bash
# bench/gateway_vs_postfix.sh [BUILD] [REPS] [SCENARIOS]
#
# Sluice against Postfix as a gateway, in one sitting on this machine: the shared harness
# (../shared/bench, or $SHARED_BENCH) runs Postfix as an edge gateway with its durable
# queue, then sluiced with its durable spool, under the same smtp-source load, and counts
# what reaches the same smtp-sink next hop. Also measures the harness ceiling
# (smtp-source straight into smtp-sink). Connections are reused (SRC_OPTS=-d) unless
# SRC_OPTS is set. Prints the medians and the ratios. Needs root (Postfix instance).
# INLINE=1 routes with ?inline=true (250 only after the next hop's 250, no spool);
# ONLY=sluice skips the ceiling and Postfix runs (to compare modes in one sitting).
set -euo pipefail
build=${1:-build}
reps=${2:-1}
scen=${3:-a b c}
root=$(cd "$(dirname "$0")/.." && pwd)
B=${SHARED_BENCH:-$root/../shared/bench}
export PEERS_RUN=${PEERS_RUN:-/tmp/sluice-bench}
export SRC_OPTS=${SRC_OPTS--d}
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK=$(free_port); PF=$(free_port); SL=$(free_port); ST=$(free_port)
export SINK_PORT=$SINK
work=$(mktemp -d /tmp/sluice-gw.XXXXXX)
chmod 755 "$work"   # the postfix user must reach its queue below it
sl_pid=
cleanup() {
  [ -n "$sl_pid" ] && kill "$sl_pid" 2>/dev/null && wait "$sl_pid" 2>/dev/null || true
  "$B/postfix-gateway.sh" stop "$work/postfix" >/dev/null 2>&1 || true
  "$B/sink.sh" stop "$SINK" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$B/sink.sh" start "$SINK" >/dev/null
# The sink (and Postfix's master) belong to the system under test: their CPU is not a
# neighbour's (bench.sh counts CPU outside MY_PIDS as contention and repeats the run).
sink_pid=$(cat "$PEERS_RUN/sink-$SINK.pid")
label() { echo "$1-$$"; }

touch "$work/ceiling.txt" "$work/postfix.txt"
if [ "${ONLY:-}" != sluice ]; then
echo "== ceiling: smtp-source -> smtp-sink"
MY_PIDS="$sink_pid" "$B/bench.sh" "$(label ceiling)" "127.0.0.1:$SINK" "$reps" "$scen" | tee "$work/ceiling.txt"

echo "== postfix 3.7 gateway (durable queue)"
"$B/postfix-gateway.sh" start "$work/postfix" "$PF" "$SINK" >/dev/null
MY_PIDS="$sink_pid $(tr -d ' ' < "$work/postfix/spool/pid/master.pid")" \
DRAIN_CHECK="postqueue -c $work/postfix/etc -p | grep -q 'Mail queue is empty'" \
FLUSH_CMD="postqueue -c $work/postfix/etc -f" \
  "$B/bench.sh" "$(label postfix)" "127.0.0.1:$PF" "$reps" "$scen" | tee "$work/postfix.txt"
"$B/postfix-gateway.sh" stop "$work/postfix" >/dev/null
# Postfix's queue files may still be on their way to the disk: let them land now rather
# than in the middle of the next gateway's fdatasyncs.
sync
fi

echo "== sluiced (${INLINE:+in-line, no spool}${INLINE:-durable spool})"
mkdir -p "$work/sluice/maps"
cat > "$work/sluice/sluice.toml" <<TOML
[server]
# Benches run as root (make bench) and keep that identity (daemon/privileges.hpp).
user = "root"
group = "root"
allow_root = true
hostname = "gw.example.test"
max_connections_per_ip = 10000
[[listener]]
name = "mx"
address = "127.0.0.1:$SL"
[domains]
local = ["example.test", "example.net.test", "corp.test", "internal.test"]
[maps]
dir = "maps"
[routes]
"*" = "smtp://127.0.0.1:$SINK?starttls=off${INLINE:+&inline=true}"
[spool]
dir = "spool"
retry = ["5s", "30s"]
syncs_in_flight = ${SYNCS:-1}
[control]
socket = "control.sock"
[stats]
address = "127.0.0.1:$ST"
TOML
"$root/$build/daemon/sluiced" --config "$work/sluice/sluice.toml" 2> "$work/sluice/log" &
sl_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$SL") 2>/dev/null && break; sleep 0.05; done
MY_PIDS="$sl_pid $sink_pid" \
DRAIN_CHECK="$root/$build/tools/sluicectl --config $work/sluice/sluice.toml status --json | grep -q '\"queue_messages\": *0'" \
  "$B/bench.sh" "$(label sluice)" "127.0.0.1:$SL" "$reps" "$scen" | tee "$work/sluice.txt"

echo "== sluiced CPU over the whole run (user+system, all threads)"
awk -v tck="$(getconf CLK_TCK)" '{ printf "sluiced_cpu_s user=%.2f sys=%.2f\n", $14/tck, $15/tck }' "/proc/$sl_pid/stat"
echo "== spool group commit over the whole sluiced run"
curl -s "127.0.0.1:$ST/metrics" | awk '/^sluice_spool_(committed|batches|fsyncs)_total/ {v[$1]=$2}
  END { c=v["sluice_spool_committed_total"]; if (c > 0) printf "committed=%d batches=%d fsyncs=%d fsyncs_per_msg=%.3f\n", c, v["sluice_spool_batches_total"], v["sluice_spool_fsyncs_total"], v["sluice_spool_fsyncs_total"]/c }'

echo "== ratios (e2e msgs/s medians)"
/usr/bin/python3 - "$work" $scen <<'PY'
import re, sys
work, scen = sys.argv[1], sys.argv[2:]
def medians(name):
    out = {}
    for line in open(f"{work}/{name}.txt"):
        m = re.match(r"^\s*([abcd])\s+(\S+)\s+(\S+)", line)
        if m and m.group(1) in scen and not line.startswith("#"):
            try:
                out[m.group(1)] = float(m.group(3))
            except ValueError:
                pass
    return out
c, p, s = medians("ceiling"), medians("postfix"), medians("sluice")
for k in scen:
    if k in s and k not in p:
        print(f"scenario {k}: sluice={s[k]:.0f}")
    if k in p and k in s:
        print(f"scenario {k}: sluice={s[k]:.0f} postfix={p[k]:.0f} ceiling={c.get(k, 0):.0f} "
              f"sluice/postfix={s[k]/p[k]:.1f}x sluice/ceiling={s[k]/c[k] if c.get(k) else 0:.2f}")
PY
echo "raw: $work/*.txt, $work/sluice/log"
