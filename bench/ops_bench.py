#!/usr/bin/env python3
"""Costs of operating the live daemon, measured against a real sluiced.

  bench/ops_bench.py [BUILD] reload [RELOADS]   reload latency under load with a 1M-entry map
  bench/ops_bench.py [BUILD] scrape [REPS]      throughput with /metrics scraped 10x/s vs not

reload: publishes a 1,000,000-entry local_addresses map (sluicectl map build), starts
  sluiced, keeps smtp-source running against it (20 sessions, 1 KiB, connections reused),
  and asks for RELOADS reloads (default 20), each changing domains.local. Reports what the
  daemon measures for each (validate_ms: re-reading config and every map on the thread
  pool; apply_ms: snapshot posted until every shard has switched; total_ms: request to
  every shard on the new generation) and the client's wall time, median / p90 / max.
scrape: alternates REPS times (default 5) an smtp-source run of MSGS messages (default
  20000) with and without a scraper thread doing GET /metrics every 100 ms, in the same
  daemon; prints both medians, their ratio, and the scrape latency.
Works in /dev/shm; every process it starts is stopped by pid.
"""
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


class Setup:
    def __init__(self, build):
        self.sluiced = str(ROOT / build / "daemon" / "sluiced")
        self.sluicectl = str(ROOT / build / "tools" / "sluicectl")
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sluice-ops-", dir="/dev/shm"))
        self.port, self.stats_port = free_port(), free_port()
        (self.dir / "maps").mkdir()
        self.config = self.dir / "sluice.toml"
        self.base = f"""
[server]
# Benches run as root (make bench) and keep that identity (daemon/privileges.hpp).
user = "root"
group = "root"
allow_root = true
hostname = "bench.example.test"
max_connections_per_ip = 10000
[[listener]]
name = "mx"
address = "127.0.0.1:{self.port}"
[domains]
local = ["example.test"]
[maps]
dir = "maps"
[routes]
"example.test" = "maildir:maildir"
[spool]
dir = "spool"
[control]
socket = "control.sock"
[stats]
address = "127.0.0.1:{self.stats_port}"
"""
        self.config.write_text(self.base)
        self.proc = None

    def ctl(self, *args):
        return subprocess.run([self.sluicectl, "--config", str(self.config), *args],
                              capture_output=True, text=True, check=False)

    def start(self):
        self.log = open(self.dir / "sluiced.log", "wb")
        self.proc = subprocess.Popen([self.sluiced, "--config", str(self.config), "--log-level", "warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        wait_port(self.stats_port)

    def source(self, msgs, sessions=20):
        return subprocess.Popen(["/usr/sbin/smtp-source", "-d", "-s", str(sessions), "-m", str(msgs),
                                 "-l", "1024", "-f", "sender@outside.test", "-t", "user@example.test",
                                 f"127.0.0.1:{self.port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def summary(values):
    v = sorted(values)
    p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
    return f"median {statistics.median(v):8.1f}  p90 {p90:8.1f}  max {v[-1]:8.1f}"


def bench_reload(build, reloads):
    s = Setup(build)
    try:
        src = s.dir / "addresses.txt"
        with open(src, "w") as f:
            for i in range(1_000_000):
                f.write(f"user{i}@example.test\n")
        t0 = time.time()
        r = s.ctl("map", "build", "local_addresses", str(src))
        assert r.returncode == 0, r.stderr
        print(f"map build local_addresses: 1000000 entries in {time.time() - t0:.1f} s, "
              f"{(s.dir / 'maps' / 'local_addresses.mdb').stat().st_size >> 20} MiB")
        s.start()
        load = s.source(10_000_000)
        time.sleep(1)
        rows = {"validate_ms": [], "apply_ms": [], "total_ms": [], "client_ms": []}
        for i in range(reloads):
            extra = "" if i % 2 else ', "other.test"'
            s.config.write_text(s.base.replace('local = ["example.test"]', f'local = ["example.test"{extra}]'))
            t0 = time.perf_counter()
            r = s.ctl("--json", "reload")
            client_ms = (time.perf_counter() - t0) * 1000
            j = json.loads(r.stdout)
            assert j["ok"], j
            for k in ("validate_ms", "apply_ms", "total_ms"):
                rows[k].append(j[k])
            rows["client_ms"].append(client_ms)
            time.sleep(0.2)
        load.terminate()
        load.wait()
        print(f"{reloads} reloads under load (smtp-source -d -s 20, 1 KiB), milliseconds:")
        for k, v in rows.items():
            print(f"  {k:12s} {summary(v)}")
    finally:
        s.close()


def rate(s, msgs):
    # An ever-growing maildir slows every run after it: each run starts empty (as load.sh).
    shutil.rmtree(s.dir / "maildir" / "new", ignore_errors=True)
    (s.dir / "maildir" / "new").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    p = s.source(msgs)
    _, err = p.communicate()
    assert p.returncode == 0 and not err, err
    return msgs / (time.perf_counter() - t0)


def bench_scrape(build, reps):
    msgs = int(os.environ.get("MSGS", "20000"))
    s = Setup(build)
    try:
        s.start()
        rate(s, 2000)  # warm up
        plain, scraped, latencies = [], [], []
        sizes = []
        for i in range(reps):
            for scrape in ((False, True) if i % 2 == 0 else (True, False)):
                stop = threading.Event()

                def scraper():
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        with socket.create_connection(("127.0.0.1", s.stats_port)) as c:
                            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                            data = b""
                            while chunk := c.recv(65536):
                                data += chunk
                        latencies.append((time.perf_counter() - t0) * 1000)
                        sizes.append(len(data))
                        assert data.startswith(b"HTTP/1.1 200 ")
                        stop.wait(0.1)

                t = threading.Thread(target=scraper) if scrape else None
                if t:
                    t.start()
                r = rate(s, msgs)
                if t:
                    stop.set()
                    t.join()
                (scraped if scrape else plain).append(r)
            print(f"rep={i + 1} without_scraper_msgs_per_s={plain[-1]:.0f} with_scraper_msgs_per_s={scraped[-1]:.0f}")
        a, b = statistics.median(plain), statistics.median(scraped)
        print(f"command: smtp-source -d -s 20 -m {msgs} -l 1024; scraper: GET /metrics every 100 ms")
        print(f"median without={a:.0f} with={b:.0f} ratio={b / a:.4f} ({(b / a - 1) * 100:+.2f}%)")
        print(f"scrapes={len(latencies)} latency_ms {summary(latencies)} body_bytes={sizes[-1]}")
        # The noise-free number: CPU time the daemon spends per scrape, from the kernel's
        # per-thread accounting (schedstat, ns), over many back-to-back scrapes while idle.
        n = 3000

        def cpu_ns():
            main = int((pathlib.Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/schedstat")).read_text().split()[0])
            total = 0
            for task in pathlib.Path(f"/proc/{s.proc.pid}/task").iterdir():
                try:
                    total += int((task / "schedstat").read_text().split()[0])
                except FileNotFoundError:
                    pass
            return main, total

        m0, t0 = cpu_ns()
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", s.stats_port)) as c:
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                while c.recv(65536):
                    pass
        m1, t1 = cpu_ns()
        per = (t1 - t0) / n / 1000
        print(f"daemon CPU per scrape: {per:.1f} us (main thread {(m1 - m0) / n / 1000:.1f} us, "
              f"shard threads {(t1 - t0 - (m1 - m0)) / n / 1000:.1f} us); at 10 scrapes/s: "
              f"{per * 10 / 1e4:.3f}% of one core")
    finally:
        s.close()


def main():
    args = sys.argv[1:]
    build = "build"
    if args and args[0] not in ("reload", "scrape"):
        build = args.pop(0)
    if not args or args[0] not in ("reload", "scrape"):
        print(__doc__)
        return 2
    n = int(args[1]) if len(args) > 1 else None
    if args[0] == "reload":
        bench_reload(build, n or 20)
    else:
        bench_scrape(build, n or 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
