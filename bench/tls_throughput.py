#!/usr/bin/env python3
"""bench/tls_throughput.py [BUILD] [MSGS]

20 sessions x 10 KB through sluiced over STARTTLS vs plaintext, same run, same
daemon (an mx listener with tls = "optional", maildir on tmpfs). Each session reuses its
connection (one TLS handshake per session). Prints both rates and their ratio. The client
is Python's smtplib, the same for both modes, so the ratio is what counts.
"""
import pathlib
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from certs import make_certs  # noqa: E402

build = sys.argv[1] if len(sys.argv) > 1 else "build"
msgs = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
sessions = 20
work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-tlsbench-", dir="/dev/shm"))
certs = make_certs(work / "pki")
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
hostname = "mx.example.test"
max_connections_per_ip = 1000
[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
tls = "optional"
[tls]
certificate = "{certs.ecdsa_chain}"
key = "{certs.ecdsa_key}"
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
                         "--log-level", "warn"])
time.sleep(0.5)
body = "Subject: bench\r\n\r\n" + ("x" * 78 + "\r\n") * 128   # ~10 KB
ctx = ssl.create_default_context(cafile=str(certs.ca))
ctx.check_hostname = False


def run(tls):
    per = msgs // sessions
    errors = []

    def worker():
        try:
            with smtplib.SMTP("127.0.0.1", port) as c:
                c.ehlo("bench.test")
                if tls:
                    c.starttls(context=ctx)
                    c.ehlo("bench.test")
                for _ in range(per):
                    c.sendmail("a@outside.test", ["user@example.test"], body)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    assert not errors, errors
    return per * sessions / dt


try:
    rates = {"plain": [], "starttls": []}
    for _ in range(3):
        rates["plain"].append(run(False))
        rates["starttls"].append(run(True))
    med = {k: sorted(v)[1] for k, v in rates.items()}
    print(f"20 sessions x 10 KB, {msgs} msgs, median of 3: plaintext={med['plain']:.0f} msg/s "
          f"starttls={med['starttls']:.0f} msg/s ratio={med['starttls'] / med['plain']:.2f}")
finally:
    proc.terminate()
    proc.wait()
    subprocess.run(["rm", "-rf", str(work)])
