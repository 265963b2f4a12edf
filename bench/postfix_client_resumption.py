#!/usr/bin/env python3
"""bench/postfix_client_resumption.py [BUILD] [MSGS]

Resumption that a real sending MTA uses: a private Postfix 3.7 instance (the one of
../shared/bench/postfix-gateway.sh, never the system one) is the CLIENT. Its smtp client
has smtp_tls_security_level = may, its TLS session cache on (smtp_tls_session_cache_database;
OpenSSL offers tickets, and the session ID when there is none) and
smtp_connection_cache_on_demand = no, so every message is a new connection with STARTTLS.
MSGS messages (1 KB each) are put in its queue while its relay transport is held
(defer_transports), then released at once (postqueue -f) to a new qmgr; the rate is the
messages queued over the time until its queue is empty, i.e. until the receiver answered
250 to all of them. KEEP=1 keeps the work directory (logs) for a look afterwards.

Runs, one after the other in the same sitting: the sender as it comes (resuming by
ticket), and with tls_ssl_options = NO_TICKET (resuming by session ID only) into sluiced;
the latter into Postfix too. Receivers, each with a fresh sending instance
(an empty session cache): sluiced (tls = "optional", its spool, forwarding to an
smtp-sink) and a second private Postfix (smtpd_tls_security_level = may, its session
caches on, forwarding to the same sink), both with the same ECDSA P-256 certificate.
Reported: msg/s, the sender's TLS connections (its smtp_tls_loglevel = 1 summary lines)
and, for sluiced, the share of resumed handshakes from its
sluice_tls_handshakes_total{result}. The Postfix receiver keeps smtpd_tls_loglevel = 0
(only its level 2 logs a resumption, and that logging would slow it). Needs root.
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from tls_handshake_vs_postfix import (ROOT, SHARED, free_port, make_certs,  # noqa: E402
                                      wait_drained, wait_port)

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
MSGS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000


def gateway(cmd, d, *ports):
    subprocess.run([SHARED / "postfix-gateway.sh", cmd, str(d), *map(str, ports)], check=True,
                   stdout=subprocess.DEVNULL)


def postconf(d, *settings):
    subprocess.run(["postconf", "-c", str(d / "etc"), "-e", *settings], check=True)
    subprocess.run(["postfix", "-c", str(d / "etc"), "reload"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def queue_empty(d):
    out = subprocess.run(["postqueue", "-c", str(d / "etc"), "-p"], capture_output=True,
                         text=True).stdout
    return "Mail queue is empty" in out


def queue_by_name(d):
    """Messages per queue (postqueue -j, one JSON object a line)."""
    out = subprocess.run(["postqueue", "-c", str(d / "etc"), "-j"], capture_output=True,
                         text=True).stdout
    counts = {}
    for line in out.splitlines():
        q = json.loads(line)["queue_name"]
        counts[q] = counts.get(q, 0) + 1
    return counts


def qmgr_pid(d):
    master = (d / "spool" / "pid" / "master.pid").read_text().strip()
    for p in os.listdir("/proc"):
        try:
            if (p.isdigit() and pathlib.Path(f"/proc/{p}/comm").read_text().strip() == "qmgr"
                    and pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]
                    == master):
                return int(p)
        except OSError:
            continue
    return None


def send_through(work, name, receiver_port, extra=()):
    """A fresh sending instance delivers MSGS messages to receiver_port; returns msg/s."""
    d = work / f"sender-{name}"
    inject = free_port()
    gateway("start", d, inject, receiver_port)
    try:
        postconf(d, "smtp_tls_security_level = may",
                 f"smtp_tls_session_cache_database = btree:{d}/data/smtp_scache",
                 "smtp_tls_session_cache_timeout = 3600s",
                 "smtp_connection_cache_on_demand = no",
                 "smtp_tls_connection_reuse = no",
                 "smtp_tls_loglevel = 1",  # one summary line per TLS connection
                 # A delivery that fails (a receiver still starting) is retried within
                 # seconds, not Postfix's default 300 s, and counted as deferred below.
                 "minimal_backoff_time = 1s", "maximal_backoff_time = 2s",
                 "queue_run_delay = 1s",
                 "defer_transports = relay", *extra)
        subprocess.run(["smtp-source", "-s", "20", "-m", str(MSGS), "-l", "1024",
                        "-f", "sender@outside.test", "-t", "user@example.test",
                        f"127.0.0.1:{inject}"], check=True)
        # Every message held in the deferred queue (a listing taken while messages move
        # between queues counts some twice), then a new qmgr without defer_transports (a
        # flush that reaches the old one is deferred again), then the flush.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            counts = queue_by_name(d)
            if set(counts) == {"deferred"} and counts["deferred"] >= MSGS:
                break
            time.sleep(0.5)
        queued = queue_by_name(d).get("deferred", 0)
        old_qmgr = qmgr_pid(d)
        postconf(d, "defer_transports =")
        deadline = time.monotonic() + 60
        while qmgr_pid(d) in (None, old_qmgr) and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        subprocess.run(["postqueue", "-c", str(d / "etc"), "-f"], check=True)
        drained = wait_drained(lambda: queue_empty(d), timeout=1800)
        rate = queued / (time.monotonic() - t0)
        # postlogd writes the log a little after the fact: wait for every delivery's line.
        log, deadline = "", time.monotonic() + 30
        while time.monotonic() < deadline:
            log = (d / "log" / "maillog").read_text(errors="replace")
            if log.count("status=sent") >= queued:
                break
            time.sleep(0.2)
        sent = log.count("status=sent")
        deferred = len(re.findall(r"postfix/relay/smtp\[\d+\]: .*status=deferred", log))
        tls = len(re.findall(r"postfix/relay/smtp\[\d+\]: .*TLS connection established", log))
        return rate, queued, sent, tls, drained, deferred
    finally:
        gateway("stop", d)


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-pfclient-"))
    os.chmod(work, 0o755)  # the postfix user must reach its queue below it
    certs = make_certs(work / "pki")
    env = dict(os.environ, PEERS_RUN=str(work / "run"))
    sink, pf, sl, st = free_port(), free_port(), free_port(), free_port()
    sl_proc = None
    try:
        subprocess.run([SHARED / "sink.sh", "start", str(sink)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        # sluiced as the receiver
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
        def handshakes():
            with urllib.request.urlopen(f"http://127.0.0.1:{st}/metrics", timeout=10) as r:
                return {k: int(v) for k, v in re.findall(
                    r'^sluice_tls_handshakes_total\{result="(\w+)"\} (\d+)',
                    r.read().decode(), re.M)}

        # The sender as it comes (OpenSSL offers tickets), then with tls_ssl_options =
        # NO_TICKET: a sender that resumes by session ID only (sluiced's session cache).
        all_ok = True
        for sender, extra in (("tickets", ()), ("ids", ("tls_ssl_options = NO_TICKET",))):
            before = handshakes()
            rate, queued, sent, tls, drained, deferred = send_through(
                work, f"to-sluice-{sender}", sl, extra)
            after = handshakes()
            ok, resumed, failed = (after.get(k, 0) - before.get(k, 0)
                                   for k in ("ok", "resumed", "failed"))
            print(f"receiver=sluice sender_resumes_by={sender} msgs={queued} sent={sent} "
                  f"msg_per_s={rate:.0f} tls_connections={tls} tls_handshakes={ok + resumed} "
                  f"resumed={resumed} resumed_share={resumed / max(1, ok + resumed):.3f} "
                  f"failed={failed} deferred={deferred}{'' if drained else ' queue_not_drained'}",
                  flush=True)
            all_ok = all_ok and drained and sent == queued >= MSGS
        sl_proc.terminate()
        sl_proc.wait()
        sl_proc = None

        # a second private Postfix as the receiver
        rdir = work / "receiver"
        gateway("start", rdir, pf, sink)
        try:
            postconf(rdir, f"smtpd_tls_cert_file = {certs.ecdsa_chain}",
                     f"smtpd_tls_key_file = {certs.ecdsa_key}",
                     "smtpd_tls_security_level = may",
                     f"smtpd_tls_session_cache_database = btree:{rdir}/data/smtpd_scache",
                     "smtpd_tls_session_cache_timeout = 3600s",
                     "smtpd_tls_loglevel = 0")
            wait_port(pf)
            prate, pqueued, psent, ptls, pdrained, pdeferred = send_through(
                work, "to-postfix", pf, ("tls_ssl_options = NO_TICKET",))
        finally:
            gateway("stop", rdir)
        print(f"receiver=postfix msgs={pqueued} sent={psent} msg_per_s={prate:.0f} "
              f"tls_connections={ptls} deferred={pdeferred}"
              f"{'' if pdrained else ' queue_not_drained'}", flush=True)
        print(f"sluice/postfix as receivers of a resuming Postfix client (session IDs) = "
              f"{rate / prate:.2f}x msg/s (the sending Postfix is the same in both, and may be "
              "the limit)")
        return 0 if all_ok and pdrained and psent == pqueued >= MSGS else 1
    finally:
        if sl_proc is not None:
            sl_proc.terminate()
            sl_proc.wait()
        for d in ("sender-to-sluice-tickets", "sender-to-sluice-ids", "sender-to-postfix",
                  "receiver"):
            if (work / d / "etc" / "main.cf").exists():
                subprocess.run([SHARED / "postfix-gateway.sh", "stop", str(work / d)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([SHARED / "sink.sh", "stop", str(sink)], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not os.environ.get("KEEP"):
            subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    sys.exit(main())
