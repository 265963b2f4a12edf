#!/usr/bin/env python3
"""/healthz latency while a local user holds the stats endpoint with slow clients.

  bench/healthz_probe.py [BUILD] [PROBES]     (default 200 probes per phase)

One sluiced with a stats endpoint. Phase 1 (the reference): PROBES GETs of /healthz, one
every 20 ms, nobody else connected. Phase 2: the same while 64 slow HTTP clients run as
user `nobody` (each sends part of a request, then a byte every 200 ms, and reconnects as
soon as it is closed: the clients of tests/integration/test_limits.py). Prints p50, p99 and
max of both phases, the p99 ratio, and whether every probe of phase 2 got 200 within the
100 ms the README promises. Every process it starts is stopped by its pid.
"""
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import harness  # noqa: E402
from test_limits import SLOW_HTTP_CLIENTS, probe  # noqa: E402


def run(port, n):
    out = []
    for _ in range(n):
        out.append(probe(port))
        time.sleep(0.02)
    return out


def describe(name, results):
    ok = [t for s, t in results if s == 200]
    v = sorted(ok) or [float("nan")]
    p99 = v[min(len(v) - 1, int(len(v) * 0.99))]
    print(f"{name:28} ok {len(ok):4}/{len(results):<4} p50 {statistics.median(v) * 1000:7.2f} ms"
          f"  p99 {p99 * 1000:7.2f} ms  max {v[-1] * 1000:7.2f} ms")
    return ok, p99


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    harness.SLUICED = str(ROOT / build / "daemon" / "sluiced")
    harness.SLUICECTL = str(ROOT / build / "tools" / "sluicectl")
    with harness.Daemon().enable_stats() as d:
        _, ref_p99 = describe("alone", run(d.stats_port, n))
        attackers = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-c", SLOW_HTTP_CLIENTS, str(d.stats_port), "64", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if attackers.stdout.readline().strip() != "ready":
                raise RuntimeError("slow clients did not start: " + attackers.stderr.read())
            results = run(d.stats_port, n)
        finally:
            attackers.kill()
            attackers.wait()
        ok, p99 = describe("64 slow clients of nobody", results)
        print(f"p99 ratio (slow clients / alone): {p99 / ref_p99:.2f}")
        within = sum(1 for s, t in results if s == 200 and t <= 0.1)
        print(f"probes answered 200 within 100 ms under the slow clients: {within}/{len(results)}")


if __name__ == "__main__":
    main()
