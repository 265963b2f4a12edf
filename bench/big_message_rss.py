#!/usr/bin/env python3
"""bench/big_message_rss.py [BUILD] [MB]

Peak resident memory (VmHWM) of sluiced receiving one MB-megabyte message (default 20)
over SMTP with SIZE= declared, against its peak before the message, same run. The message
is spooled (a big file) and forwarded to a local sink. The reference is the message size
itself: a gateway that copies the message once peaks at about twice it.
"""
import os
import pathlib
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hwm_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    mb = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-bigrss-"))
    port, sink_port = free_port(), free_port()
    (work / "maps").mkdir()
    (work / "sluice.toml").write_text(f"""
[server]
# Benches run as root (make bench) and keep that identity (daemon/privileges.hpp).
user = "root"
group = "root"
allow_root = true
hostname = "big.example.test"
[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
[domains]
local = ["example.test"]
[maps]
dir = "maps"
[routes]
"*" = "smtp://127.0.0.1:{sink_port}?starttls=off"
[spool]
dir = "spool"
[control]
socket = "control.sock"
""")
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([str(ROOT / build / "daemon" / "sluiced"), "--config",
                             str(work / "sluice.toml"), "--log-level", "warn"])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        before = hwm_kb(proc.pid)
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (mb * 1024)
        s = smtplib.SMTP("127.0.0.1", port)
        s.sendmail("a@outside.test", ["user@example.test"], body)  # SIZE= declared
        s.quit()
        time.sleep(0.5)
        after = hwm_kb(proc.pid)
        size_kb = len(body) // 1024
        growth = after - before
        print(f"message_kb={size_kb} peak_before_kb={before} peak_after_kb={after} "
              f"growth_kb={growth} growth/message={growth / size_kb:.2f}")
    finally:
        proc.terminate()
        proc.wait()
        sink.terminate()
        sink.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
