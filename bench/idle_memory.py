#!/usr/bin/env python3
"""bench/idle_memory.py [BUILD] [N]

Resident memory of sluiced holding N idle sessions after EHLO (default 10000), against
its own baseline measured in the same run. Target: < 64 MB above the baseline.
"""
import asyncio
import os
import pathlib
import resource
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def hold(port, ready, release, stats):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await r.readline()
        w.write(b"EHLO idle.test\r\n")
        while True:
            line = await r.readline()
            if not line.startswith(b"250"):
                stats["failed"] += 1
                return
            if line[3:4] == b" ":
                break
        stats["ok"] += 1
    except OSError:
        stats["failed"] += 1
        return
    finally:
        ready.release()
    await release.wait()
    w.close()


async def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n * 2 + 1000), hard))
    work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-idle-"))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    (work / "maps").mkdir()
    (work / "sluice.toml").write_text(f"""
[server]
# Benches run as root (make bench) and keep that identity (daemon/privileges.hpp).
user = "root"
group = "root"
allow_root = true
hostname = "idle.example.test"
max_connections = {n + 100}
max_connections_per_ip = {n + 100}
[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
[domains]
local = ["example.test"]
[maps]
dir = "maps"
[routes]
"example.test" = "maildir:maildir"
[control]
socket = "control.sock"
""")
    proc = subprocess.Popen([str(ROOT / build / "daemon" / "sluiced"), "--config", str(work / "sluice.toml"),
                             "--log-level", "warn"], preexec_fn=lambda: resource.setrlimit(
                                 resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard)))
    time.sleep(0.5)
    base = rss_kb(proc.pid)
    stats = {"ok": 0, "failed": 0}
    ready = asyncio.Semaphore(0)
    release = asyncio.Event()
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(hold(port, ready, release, stats)))
        if len(tasks) % 500 == 0:
            await asyncio.sleep(0.05)
    for _ in range(n):
        await ready.acquire()
    time.sleep(1)
    loaded = rss_kb(proc.pid)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    proc.terminate()
    proc.wait()
    print(f"idle_sessions={stats['ok']} failed={stats['failed']} baseline_rss_mb={base / 1024:.1f} "
          f"loaded_rss_mb={loaded / 1024:.1f} delta_mb={(loaded - base) / 1024:.1f} "
          f"per_session_bytes={(loaded - base) * 1024 // max(1, stats['ok'])}")


asyncio.run(main())
