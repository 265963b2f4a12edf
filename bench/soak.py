#!/usr/bin/env python3
"""`make soak`: a long run under steady, unfriendly load; the goal is flat lines.

  bench/soak.py [BUILD] [SECONDS]      (default 1800; `make soak SOAK_SECONDS=180`)

One sluiced forwarding to an smtp-sink next hop, with a spool on disk (${TMPDIR:-/var/tmp}):
  1. the maximum receiving rate is measured first (smtp-source, 20 sessions, 1 KiB, next
     hop up), then the soak runs at half of it: each second, one smtp-source run of
     rate/2 messages;
  2. the next hop flaps: up 15 s, down 5 s (killed by pid, restarted on the same port), so
     mail queues, is retried and drains again;
  3. slow clients: 20 SMTP clients that trickle a command a byte at a time or NOOP every
     half second, 10 HTTP clients that trickle a request to the stats endpoint, each
     reconnecting as soon as it is closed;
  4. `sluicectl reload` every 10 s;
  5. a sampling client sends 5 messages a second of its own and times each final "." to
     its 250 (the 250 comes only once the message is durable): time-to-durable.
Every 10 s (less in short runs) it samples the daemon's RSS and open fds (/proc/PID), the queue size
(sluice_queue_messages), and keeps the sampler's latencies. The report compares the first
window after a warm-up (a tenth of the run, 20 to 60 s) with the last one (each a sixth of
the run, at most 60 s): RSS, fds, queue, p99 time-to-durable, and the ratios end/start. Flat is the goal: ratios near 1, a queue that
does not grow from window to window. Every process it starts is stopped by its pid.
"""
import getpass
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = "/usr/sbin/smtp-source"
SINK = "/usr/sbin/smtp-sink"


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


def p99(values):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * 0.99))]


class NextHop:
    """smtp-sink on a fixed port that can be taken down and brought back."""

    def __init__(self, workdir):
        self.port = free_port()
        self.workdir = workdir
        self.proc = None
        self.up_since = None

    def start(self):
        self.proc = subprocess.Popen([SINK, "-c", "-u", getpass.getuser(),
                                      f"127.0.0.1:{self.port}", "1000"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.workdir)
        wait_port(self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Gateway:
    def __init__(self, build, workdir, hop_port):
        self.sluiced = str(ROOT / build / "daemon" / "sluiced")
        self.sluicectl = str(ROOT / build / "tools" / "sluicectl")
        self.dir = workdir
        self.port, self.stats_port = free_port(), free_port()
        (self.dir / "maps").mkdir()
        self.config = self.dir / "sluice.toml"
        self.config.write_text(f"""
[server]
# Benches run as root (make bench) and keep that identity (daemon/privileges.hpp).
user = "root"
group = "root"
allow_root = true
hostname = "soak.example.test"
max_connections_per_ip = 10000
[[listener]]
name = "mx"
address = "127.0.0.1:{self.port}"
[limits]
command_deadline = "5s"
[domains]
local = ["example.test"]
[maps]
dir = "maps"
[routes]
"example.test" = "smtp://127.0.0.1:{hop_port}"
[spool]
dir = "spool"
retry = ["1s", "2s", "5s"]
min_free = "64MiB"
[control]
socket = "control.sock"
[stats]
address = "127.0.0.1:{self.stats_port}"
""")
        self.proc = None

    def start(self):
        self.log = open(self.dir / "sluiced.log", "wb")
        self.proc = subprocess.Popen([self.sluiced, "--config", str(self.config),
                                      "--log-level", "warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        wait_port(self.stats_port)

    def ctl(self, *args):
        return subprocess.run([self.sluicectl, "--config", str(self.config), *args],
                              capture_output=True, text=True, check=False, timeout=60)

    def source(self, msgs, sessions=20):
        return subprocess.run([SOURCE, "-d", "-s", str(sessions), "-m", str(msgs), "-l", "1024",
                               "-f", "sender@outside.test", "-t", "user@example.test",
                               f"127.0.0.1:{self.port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)

    def metric(self, name):
        try:
            with socket.create_connection(("127.0.0.1", self.stats_port), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            return None
        m = re.search(rb"^" + name.encode() + rb" (\S+)$", data, re.M)
        return float(m.group(1)) if m else None

    def rss_kib(self):
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def smtp_reply(f):
    """One (possibly multi-line) reply from a socket file; its code or None at EOF."""
    while True:
        line = f.readline()
        if not line:
            return None
        if len(line) < 4 or line[3:4] != b"-":
            return line[:3].decode(errors="replace")


class Sampler(threading.Thread):
    """Sends `rate` messages a second over one connection and times "." -> 250."""

    def __init__(self, port, stop, rate=5):
        super().__init__(daemon=True)
        self.port, self.stop_event, self.rate = port, stop, rate
        self.samples = []  # (time, seconds)
        self.failures = 0
        self.lock = threading.Lock()

    def run(self):
        while not self.stop_event.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                    f = s.makefile("rb")
                    smtp_reply(f)
                    s.sendall(b"EHLO sampler.test\r\n")
                    smtp_reply(f)
                    while not self.stop_event.is_set():
                        t_next = time.time() + 1.0 / self.rate
                        s.sendall(b"MAIL FROM:<sampler@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n")
                        codes = [smtp_reply(f), smtp_reply(f), smtp_reply(f)]
                        if codes != ["250", "250", "354"]:
                            self.failures += 1
                            s.sendall(b"RSET\r\n")
                            smtp_reply(f)
                            time.sleep(0.2)
                            continue
                        s.sendall(b"Subject: soak\r\n\r\n" + (b"x" * 70 + b"\r\n") * 14)
                        t0 = time.monotonic()
                        s.sendall(b".\r\n")
                        code = smtp_reply(f)
                        dt = time.monotonic() - t0
                        if code == "250":
                            with self.lock:
                                self.samples.append((time.time(), dt))
                        else:
                            self.failures += 1
                            if code is None:
                                break
                        time.sleep(max(0.0, t_next - time.time()))
            except OSError:
                self.failures += 1
                time.sleep(0.2)

    def window(self, t0, t1):
        with self.lock:
            return [dt for t, dt in self.samples if t0 <= t < t1]


def slow_smtp(port, stop, kind):
    """A client that holds a slot doing nothing useful; reconnects when closed."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.recv(4096)
                s.sendall(b"EHLO slow.test\r\n")
                s.recv(4096)
                while not stop.is_set():
                    if kind == "noop":
                        s.sendall(b"NOOP\r\n")
                        if not s.recv(4096):
                            break
                        time.sleep(0.5)
                    else:
                        for ch in b"MAIL FROM:<slow@outside.test>":
                            s.sendall(bytes([ch]))
                            time.sleep(1)
                            if stop.is_set():
                                break
        except OSError:
            pass
        stop.wait(0.5)


def slow_http(port, stop):
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\n")
                while not stop.is_set():
                    s.sendall(b"X")
                    stop.wait(0.3)
        except OSError:
            pass
        stop.wait(0.2)


def measure_max_rate(gw):
    msgs = 3000
    t0 = time.monotonic()
    r = gw.source(msgs)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("smtp-source failed: " + r.stderr.decode(errors="replace"))
    return msgs / dt


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else int(os.environ.get("SOAK_SECONDS", 1800))
    base = pathlib.Path(tempfile.mkdtemp(prefix="sluice-soak-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    hop = NextHop(base)
    (base / "gw").mkdir()
    gw = Gateway(build, base / "gw", hop.port)
    stop = threading.Event()
    threads = []
    try:
        hop.start()
        gw.start()
        max_rate = measure_max_rate(gw)
        rate = max(1, int(max_rate / 2))
        # Let the measurement's mail drain before the clock starts.
        deadline = time.time() + 60
        while time.time() < deadline and (gw.metric("sluice_queue_messages") or 0) > 0:
            time.sleep(0.5)
        print(f"soak: {seconds} s at {rate} msg/s (half the measured maximum of "
              f"{max_rate:.0f} msg/s: smtp-source -s 20 -l 1024, 3000 messages), "
              f"spool in {base}", flush=True)

        sampler = Sampler(gw.port, stop)
        threads.append(sampler)
        for i in range(20):
            threads.append(threading.Thread(target=slow_smtp, daemon=True,
                                            args=(gw.port, stop, "noop" if i % 2 else "bytes")))
        for _ in range(10):
            threads.append(threading.Thread(target=slow_http, daemon=True,
                                            args=(gw.stats_port, stop)))
        for t in threads:
            t.start()

        start = time.time()
        end = start + seconds
        next_reload = start + 10
        next_sample = start
        window = min(60.0, seconds / 6)
        warmup = min(60.0, max(20.0, seconds / 10))
        interval = min(10.0, window / 3)
        hop_down_at = start + 15
        hop_up_at = None
        reloads_ok = reloads_failed = 0
        flaps = 0
        sent = 0
        source_failures = 0
        samples = []  # (t, rss_kib, fds, queue)
        print(f"{'t':>6} {'rss_kib':>8} {'fds':>5} {'queue':>7} {'p99_ms':>8} {'hop':>4}", flush=True)
        while time.time() < end:
            tick = time.time()
            r = gw.source(rate)
            sent += rate
            if r.returncode != 0:
                source_failures += 1
            now = time.time()
            if hop_up_at is None and now >= hop_down_at:
                hop.stop()
                flaps += 1
                hop_up_at = now + 5
            elif hop_up_at is not None and now >= hop_up_at:
                hop.start()
                hop_up_at = None
                hop_down_at = now + 15
            if now >= next_reload:
                res = gw.ctl("reload")
                if res.returncode == 0:
                    reloads_ok += 1
                else:
                    reloads_failed += 1
                next_reload += 10
            if now >= next_sample:
                q = gw.metric("sluice_queue_messages")
                lat = sampler.window(now - interval, now)
                samples.append((now - start, gw.rss_kib(), gw.fds(), q))
                print(f"{now - start:6.0f} {samples[-1][1]:8d} {samples[-1][2]:5d} "
                      f"{q if q is not None else float('nan'):7.0f} {p99(lat) * 1000:8.1f} "
                      f"{'up' if hop_up_at is None else 'down':>4}", flush=True)
                next_sample += interval
            time.sleep(max(0.0, tick + 1 - time.time()))
        if hop_up_at is not None:
            hop.start()
        elapsed = time.time() - start
        samples.append((elapsed, gw.rss_kib(), gw.fds(), gw.metric("sluice_queue_messages")))
        stop.set()
        # The first window starts after a warm-up (one flap cycle at least): allocator
        # arenas, the spool's first segments and the outbound connections settle there.
        first = [s for s in samples if warmup <= s[0] <= warmup + window]
        last = [s for s in samples if s[0] >= elapsed - window]
        lat_first = sampler.window(start + warmup, start + warmup + window)
        lat_last = sampler.window(start + elapsed - window, start + elapsed)

        def mean(rows, i):
            vals = [r[i] for r in rows if r[i] is not None]
            return statistics.mean(vals) if vals else float("nan")

        print()
        print(f"report: {elapsed:.0f} s, {sent} messages offered at {rate}/s "
              f"(smtp-source runs failed: {source_failures}), sampler: "
              f"{len(sampler.samples)} timed, {sampler.failures} failed; "
              f"next hop down {flaps} times; reloads ok {reloads_ok}, failed {reloads_failed}")
        print(f"windows: {window:.0f} s from {warmup:.0f} s (after the warm-up) and the last {window:.0f} s")
        print(f"{'':22} {'start':>10} {'end':>10} {'end/start':>10}")
        rows = [("RSS (KiB)", mean(first, 1), mean(last, 1)),
                ("open fds", mean(first, 2), mean(last, 2)),
                ("queue (messages)", mean(first, 3), mean(last, 3)),
                ("p99 to durable (ms)", p99(lat_first) * 1000, p99(lat_last) * 1000)]
        for name, a, b in rows:
            ratio = b / a if a else float("nan")
            print(f"{name:22} {a:10.1f} {b:10.1f} {ratio:10.2f}")
        # The queue once the next hop stays up: everything offered should drain.
        deadline = time.time() + 120
        q = gw.metric("sluice_queue_messages")
        while time.time() < deadline and (q or 0) > 0:
            time.sleep(1)
            q = gw.metric("sluice_queue_messages")
        print(f"queue after the next hop stayed up for up to 120 s: {q:.0f}")
    finally:
        stop.set()
        gw.stop()
        hop.stop()
        for t in threads:
            t.join(timeout=5)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
