#!/bin/sh
# log-report throughput: generates a realistic decision log of SIZE_MB (default 1024),
# runs `sluicectl log-report --json` on it (plain and gzip'd), prints MB/s and the peak
# resident memory (bounded whatever the log size). Not part of `make test`.
#
# usage: bench/log_report_bench.sh [SIZE_MB] [SLUICECTL]
#   SLUICECTL defaults to $SLUICECTL, else build/tools/sluicectl.
set -eu

size_mb=${1:-1024}
bin=${2:-${SLUICECTL:-build/tools/sluicectl}}
[ -x "$bin" ] || { echo "log_report_bench: no sluicectl at $bin (build it first)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# One 32 MiB chunk written by Python, repeated up to the size: the mix of events is what a
# busy MX sees (most lines are connects, sessions, deliveries and local recipients; a third
# of the decisions are denied relay attempts from many clients).
/usr/bin/python3 - "$tmp/chunk.log" <<'EOF'
import random, sys
from datetime import datetime, timedelta, timezone
rng = random.Random(1)
t = datetime(2026, 11, 22, tzinfo=timezone.utc)
out = []
size = 0
while size < 32 << 20:
    t += timedelta(milliseconds=rng.randint(1, 20))
    ts = t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)
    sess = "%06x" % rng.getrandbits(24)
    client = "%d.%d.%d.%d" % (rng.choice([203, 198, 192]), rng.randint(0, 255),
                              rng.randint(0, 255), rng.randint(1, 254))
    head = f"ts={ts} lvl=info shard={rng.randint(0, 3)} sess={sess}"
    r = rng.random()
    if r < 0.2:
        line = f"{head} event=connect client={client} listener=mx"
    elif r < 0.35:
        code = rng.choice(["D111", "D111", "D113", "D109", "B120"])
        line = (f"{head} event=rcpt code={code} client={client} helo=x{rng.randint(1, 999)}.test "
                f"from=<a{rng.randint(1, 5000)}@outside.test> "
                f"to=<b@elsewhere{rng.randint(1, 300)}.test> "
                f'listener=mx reply="554 5.7.1 relay access denied"')
    elif r < 0.55:
        code = rng.choice(["L101", "L101", "L102", "G107", "G108"])
        user = f" user=u{rng.randint(1, 200)}" if code == "G108" else ""
        line = (f"{head} event=rcpt code={code} client={client} helo=mail.example.net "
                f"from=<s@example.net> to=<r{rng.randint(1, 999)}@example.test>{user} "
                f'listener=mx reply="250 2.1.5 Ok"')
    elif r < 0.7:
        line = (f"{head} event=queued id={rng.getrandbits(64):016x} "
                f"size={rng.randint(500, 90000)} rcpts=1")
    elif r < 0.85:
        line = (f"{head} event=delivered id={rng.getrandbits(64):016x} relay=127.0.0.1:2526 "
                f'result=sent reply="250 2.0.0 Ok: queued as {rng.getrandbits(32):08X}"')
    elif r < 0.9:
        line = f'{head} event=connect code=C130 client={client} reply="554 5.7.1 refused"'
    else:
        line = (f"{head} event=session client={client} duration_ms={rng.randint(5, 9000)} "
                f"rcpts={rng.randint(0, 5)} result=quit")
    out.append(line + "\n")
    size += len(out[-1])
open(sys.argv[1], "w").write("".join(out))
EOF

chunk_bytes=$(stat -c %s "$tmp/chunk.log")
: >"$tmp/big.log"
while [ "$(stat -c %s "$tmp/big.log")" -lt $((size_mb * 1024 * 1024)) ]; do
    cat "$tmp/chunk.log" >>"$tmp/big.log"
done
bytes=$(stat -c %s "$tmp/big.log")
gzip -1 -c "$tmp/big.log" >"$tmp/big.log.gz"
cat "$tmp/big.log" "$tmp/big.log.gz" >/dev/null  # warm the page cache: measure the analyzer

measure() {  # label, file
    start=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "%M" -o "$tmp/rss" "$bin" log-report --json "$2" >"$tmp/out.json"
        rss="$(cat "$tmp/rss") KiB peak RSS"
    else
        "$bin" log-report --json "$2" >"$tmp/out.json"
        rss="peak RSS not measured (no /usr/bin/time)"
    fi
    end=$(date +%s.%N)
    /usr/bin/python3 - "$1" "$bytes" "$start" "$end" "$rss" "$tmp/out.json" <<'EOF'
import json, sys
label, size, start, end, rss, out = sys.argv[1:]
secs = float(end) - float(start)
report = json.load(open(out))
mb = int(size) / 1e6
print(f"{label}: {mb:.0f} MB ({report['input']['lines']} lines) in {secs:.2f} s = "
      f"{mb / secs:.0f} MB/s; {rss}; malformed {report['input']['malformed']}")
EOF
}

echo "log-report on $bytes bytes (chunk $chunk_bytes bytes repeated)"
measure "plain" "$tmp/big.log"
measure "gzip " "$tmp/big.log.gz"
