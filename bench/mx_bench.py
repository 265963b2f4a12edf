#!/usr/bin/env python3
"""Delivery by MX against the same load routed statically, in one sitting.

  bench/mx_bench.py BUILD [MESSAGES] [DOMAINS]      (default 20000 messages, 1000 domains)

Four smtp-sinks on port 25 of four loopback addresses; a DNS server of the tests
(tests/integration/dnszone.py, python3-dnslib) gives each of DOMAINS domains an MX that
names one of them. Run 1 routes `"*" = "mx"` through the daemon's resolver; run 2 gives
each domain a static `smtp://SINK:25` route to the same sink. MESSAGES messages, one
recipient each, domains in turn, are sent by 8 client processes; the clock runs from the
first connection to the last `event=delivered`. Prints msgs/s of each run and the ratio
(target: MX >= 0.95 of static), plus the resolver's counters. Needs root (port 25).
"""
import multiprocessing
import os
import pathlib
import random
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from dnszone import DnsServer  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_ip():
    while True:
        ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.bind((ip, 25))
                return ip
            except OSError:
                continue


def client(port, jobs):
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        for i, rcpt in jobs:
            s.sendmail("bench@outside.test", [rcpt], b"Subject: mx bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 25)


def run(build, routes, domains, n, dns_address):
    d = pathlib.Path(tempfile.mkdtemp(prefix="sluice-mxbench-"))
    (d / "maps").mkdir()
    port = free_port()
    local = ", ".join(f'"{x}"' for x in domains)
    cfg = f"""
[server]
hostname = "bench.gateway.test"
shards = 2
[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
[limits]
recipients = 100
[domains]
local = [{local}]
[maps]
dir = "maps"
[spool]
dir = "spool"
[control]
socket = "control.sock"
[dns]
servers = ["{dns_address}"]
[routes]
{routes}
"""
    (d / "sluice.toml").write_text(cfg)
    log = open(d / "log", "wb")
    p = subprocess.Popen([str(ROOT / build / "daemon" / "sluiced"), "--config", str(d / "sluice.toml")],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while b"event=started" not in (d / "log").read_bytes():
            if time.time() > deadline or p.poll() is not None:
                raise RuntimeError((d / "log").read_text())
            time.sleep(0.05)
        jobs = [(i, f"u{i}@{domains[i % len(domains)]}") for i in range(n)]
        parts = [jobs[k::8] for k in range(8)]
        start = time.time()
        procs = [multiprocessing.Process(target=client, args=(port, part)) for part in parts]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join()
        while True:
            text = (d / "log").read_bytes()
            done = text.count(b" event=delivered ")
            if done >= n:
                break
            if time.time() - start > 1800:
                raise RuntimeError(f"only {done} of {n} delivered")
            time.sleep(0.2)
        elapsed = time.time() - start
        stats = subprocess.run([str(ROOT / build / "tools" / "sluicectl"), "--config",
                                str(d / "sluice.toml"), "--json", "stats"],
                               capture_output=True, text=True).stdout
        deferred = text.count(b" event=deferred ")
        return elapsed, deferred, stats
    finally:
        p.terminate()
        p.wait(timeout=60)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    nd = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    ips = [fresh_ip() for _ in range(4)]
    sinks = [subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "root", f"{ip}:25", "512"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for ip in ips]
    domains = [f"d{i:04d}.bench.test" for i in range(nd)]
    zone = {}
    for i, dom in enumerate(domains):
        zone[dom] = [("MX", 3600, (10, f"mx{i % 4}.bench.test"))]
    for k, ip in enumerate(ips):
        zone[f"mx{k}.bench.test"] = [("A", 3600, ip)]
    dns = DnsServer(zone).start()
    try:
        time.sleep(0.5)
        mx_routes = '"*" = "mx"'
        static_routes = "\n".join(f'"{dom}" = "smtp://{ips[i % 4]}:25"' for i, dom in enumerate(domains))
        results = {}
        for name, routes in (("static", static_routes), ("mx", mx_routes), ("static2", static_routes), ("mx2", mx_routes)):
            elapsed, deferred, stats = run(build, routes, domains, n, dns.address)
            results[name] = n / elapsed
            print(f"{name:8s} {n} messages to {nd} domains: {elapsed:6.2f} s, {n / elapsed:7.0f} msg/s, deferred {deferred}")
            if name.startswith("mx"):
                import json
                print("         resolver:", json.dumps(json.loads(stats).get("dns", {})))
        mx = (results["mx"] + results["mx2"]) / 2
        st = (results["static"] + results["static2"]) / 2
        print(f"MX / static throughput: {mx / st:.3f} (target >= 0.95)")
    finally:
        dns.stop()
        for s in sinks:
            s.terminate()
            s.wait()


if __name__ == "__main__":
    main()
