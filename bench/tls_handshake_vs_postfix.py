#!/usr/bin/env python3
"""bench/tls_handshake_vs_postfix.py [BUILD] [MSGS] [REPS]

TLS handshakes at MX scale, Sluice against Postfix 3.7 in one sitting. 20 concurrent
asyncio clients (Python's ssl, i.e. OpenSSL); every message on a new connection: connect,
EHLO, STARTTLS, a TLS 1.2 handshake, EHLO, MAIL, RCPT, DATA (1 KB), QUIT. Three modes:

  full     no session offered: a full handshake (ECDHE + ECDSA) per message
  tickets  each client offers the session ticket of its previous connection (RFC 5077)
  ids      each client offers no ticket extension, only the session ID of its previous
           connection (RFC 5246 §7.4.1.2): the server's session cache

Both servers use the same ECDSA P-256 certificate (tests/integration/certs.py), keep the
mail durable and forward it to the same smtp-sink: Postfix as the private instance of
../shared/bench/postfix-gateway.sh (never the system one) with smtpd_tls_security_level =
may and its session cache (tickets, and btree:smtpd_scache for IDs); sluiced with
tls = "optional" and its spool. Runs alternate between the two servers, each run waits
for both queues to drain, and the figures are medians over REPS.

Reported per server and mode: accepted msg/s (client side), the share of handshakes the
client saw resumed, and the server's CPU per message from /proc/PID/stat (utime + stime,
and cutime + cstime for children reaped, over the whole process tree: Postfix's master,
smtpd, cleanup, qmgr, smtp, tlsmgr...; sluiced's threads), sampled before each run and
after its queue drained, so it includes forwarding. The full-minus-resumed difference is
the server's CPU per full handshake (divided by the share resumed). sluiced's
sluice_tls_handshakes_total{result} closes the report. Needs root (a private Postfix instance).
"""
import asyncio
import os
import pathlib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from certs import SERVER_NAME, make_certs  # noqa: E402

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
MSGS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
REPS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
CLIENTS = 20
MODES = ("full", "tickets", "ids")
SHARED = pathlib.Path(os.environ.get("SHARED_BENCH", ROOT.parent / "shared" / "bench"))
TCK = os.sysconf("SC_CLK_TCK")
BODY = (b"Subject: tls bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12)  # ~1 KB
assert 900 <= len(BODY) <= 1100


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def tree_cpu_seconds(root_pid):
    """CPU of root_pid and its live descendants, with reaped children's (cutime+cstime)."""
    stats = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = pathlib.Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on
        stats[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]))  # ppid; utime..cstime
    total, todo, seen = 0, [root_pid], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return total / TCK


class ResumingContext(ssl.SSLContext):
    """asyncio's STARTTLS (loop.start_tls) takes no session: hand it over in wrap_bio."""
    offer = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None,
                 session=None):
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                session=self.offer)


def client_context(ca, mode):
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if mode == "ids":
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


async def reply(reader, code):
    while True:
        line = await reader.readline()
        if not line:
            raise RuntimeError(f"connection closed waiting for {code}")
        if not line.startswith(code):
            raise RuntimeError(f"expected {code}, got {line!r}")
        if line[3:4] != b"-":
            return


async def one_message(port, ctx):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reply(reader, b"220")
        writer.write(b"EHLO client.bench.test\r\n")
        await reply(reader, b"250")
        writer.write(b"STARTTLS\r\n")
        await reply(reader, b"220")
        await writer.start_tls(ctx, server_hostname=SERVER_NAME)
        tls = writer.get_extra_info("ssl_object")
        reused, session = tls.session_reused, tls.session
        writer.write(b"EHLO client.bench.test\r\n")
        await reply(reader, b"250")
        writer.write(b"MAIL FROM:<sender@outside.test>\r\n")
        await reply(reader, b"250")
        writer.write(b"RCPT TO:<user@example.test>\r\n")
        await reply(reader, b"250")
        writer.write(b"DATA\r\n")
        await reply(reader, b"354")
        writer.write(BODY + b".\r\n")
        await reply(reader, b"250")
        writer.write(b"QUIT\r\n")
        await reply(reader, b"221")
        return reused, session
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def run_clients(port, ca, mode, msgs):
    left = [msgs]
    resumed = [0]
    errors = []

    async def worker():
        ctx = client_context(ca, mode)
        while left[0] > 0 and len(errors) < 10:
            left[0] -= 1
            try:
                reused, session = await one_message(port, ctx)
            except (OSError, ssl.SSLError, RuntimeError) as e:
                errors.append(repr(e))
                continue
            resumed[0] += 1 if reused else 0
            if mode != "full":
                ctx.offer = session

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return msgs / (time.monotonic() - t0), resumed[0] / msgs, errors


def wait_drained(check, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-tlshs-"))
    os.chmod(work, 0o755)  # the postfix user must reach its queue below it
    certs = make_certs(work / "pki")
    env = dict(os.environ, PEERS_RUN=str(work / "run"))
    sink, pf, sl, st = free_port(), free_port(), free_port(), free_port()
    started = []
    sl_proc = None
    try:
        subprocess.run([SHARED / "sink.sh", "start", str(sink)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        started.append("sink")

        pdir = work / "postfix"
        subprocess.run([SHARED / "postfix-gateway.sh", "start", str(pdir), str(pf), str(sink)],
                       check=True, stdout=subprocess.DEVNULL)
        started.append("postfix")
        etc = pdir / "etc"
        subprocess.run(["postconf", "-c", str(etc), "-e",
                        f"smtpd_tls_cert_file = {certs.ecdsa_chain}",
                        f"smtpd_tls_key_file = {certs.ecdsa_key}",
                        "smtpd_tls_security_level = may",
                        f"smtpd_tls_session_cache_database = btree:{pdir}/data/smtpd_scache",
                        "smtpd_tls_session_cache_timeout = 3600s",
                        "smtpd_tls_loglevel = 0"], check=True)
        subprocess.run(["postfix", "-c", str(etc), "reload"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pf_master = int((pdir / "spool" / "pid" / "master.pid").read_text().strip())

        sdir = work / "sluice"
        (sdir / "maps").mkdir(parents=True)
        (sdir / "sluice.toml").write_text(f"""
[server]
hostname = "mx.example.test"
max_connections_per_ip = 10000
[[listener]]
name = "mx"
address = "127.0.0.1:{sl}"
tls = "optional"
[tls]
certificate = "{certs.ecdsa_chain}"
key = "{certs.ecdsa_key}"
[domains]
local = ["example.test"]
[maps]
dir = "maps"
[routes]
"*" = "smtp://127.0.0.1:{sink}?starttls=off"
[spool]
dir = "spool"
[control]
socket = "control.sock"
[stats]
address = "127.0.0.1:{st}"
""")
        log = open(sdir / "log", "w")
        sl_proc = subprocess.Popen([str(ROOT / BUILD / "daemon" / "sluiced"), "--config",
                                    str(sdir / "sluice.toml"), "--log-level", "warn"],
                                   stderr=log)
        wait_port(sl)
        wait_port(pf)
        ctl = [str(ROOT / BUILD / "tools" / "sluicectl"), "--config", str(sdir / "sluice.toml")]

        def pf_empty():
            out = subprocess.run(["postqueue", "-c", str(etc), "-p"], capture_output=True,
                                 text=True).stdout
            return "Mail queue is empty" in out

        def sl_empty():
            out = subprocess.run(ctl + ["status", "--json"], capture_output=True,
                                 text=True).stdout
            return '"queue_messages": 0' in out

        servers = {"postfix": (pf, pf_master, pf_empty), "sluice": (sl, sl_proc.pid, sl_empty)}
        results = {(s, m): [] for s in servers for m in MODES}
        failed = False
        for rep in range(REPS):
            for mode in MODES:
                for name, (port, pid, empty) in servers.items():
                    cpu0 = tree_cpu_seconds(pid)
                    rate, share, errors = asyncio.run(
                        run_clients(port, certs.ca, mode, MSGS))
                    drained = wait_drained(empty)
                    cpu = (tree_cpu_seconds(pid) - cpu0) / MSGS
                    results[(name, mode)].append((rate, share, cpu))
                    print(f"rep={rep + 1} server={name} mode={mode} msgs={MSGS} "
                          f"msg_per_s={rate:.0f} resumed={share:.2f} "
                          f"cpu_ms_per_msg={cpu * 1000:.2f}"
                          f"{'' if drained else ' queue_not_drained'}"
                          f"{' errors=' + str(len(errors)) + ' ' + errors[0] if errors else ''}",
                          flush=True)
                    failed = failed or bool(errors)

        print(f"== medians of {REPS}, {MSGS} messages per run, {CLIENTS} clients, "
              "a new connection and STARTTLS per message")
        med = {}
        for (name, mode), runs in results.items():
            med[(name, mode)] = tuple(statistics.median(r[i] for r in runs) for i in range(3))
            rate, share, cpu = med[(name, mode)]
            print(f"{name:8} {mode:8} msg/s={rate:7.0f} resumed={share:.2f} "
                  f"cpu_ms/msg={cpu * 1000:6.2f}")
        for mode in MODES:
            print(f"sluice/postfix {mode:8} = "
                  f"{med[('sluice', mode)][0] / med[('postfix', mode)][0]:.2f}x msg/s")
        for name in servers:
            for resumed in ("tickets", "ids"):
                # Only `share` of the resumed run's handshakes resumed (each client's first
                # one is full): scale the per-message difference to one handshake.
                share = med[(name, resumed)][1]
                d = (med[(name, "full")][2] - med[(name, resumed)][2]) / share if share else 0
                print(f"{name} CPU per full handshake over a resumed one ({resumed}) = "
                      f"{d * 1000:.2f} ms")
        # The server's own count, to check the client's view of resumption against.
        with urllib.request.urlopen(f"http://127.0.0.1:{st}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("sluice_tls_handshakes_total"):
                    print(line)
        return 1 if failed else 0
    finally:
        if sl_proc is not None:
            sl_proc.terminate()
            sl_proc.wait()
        if "postfix" in started:
            subprocess.run([SHARED / "postfix-gateway.sh", "stop", str(work / "postfix")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if "sink" in started:
            subprocess.run([SHARED / "sink.sh", "stop", str(sink)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    sys.exit(main())
