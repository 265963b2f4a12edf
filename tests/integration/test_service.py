"""sluiced as a service: the systemd watchdog pings only while every shard's loop
answers (daemon/watchdog.hpp), and what an operator watches is well-formed: the live
/metrics passes `promtool check metrics`, the alert rules pass `promtool check rules` and
name only metrics a running daemon serves."""
import os
import pathlib
import re
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from harness import Daemon, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging" / "prometheus" / "sluice.rules.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "sluice-dashboard.json"


def watchdog_messages(sock, seconds):
    """The WATCHDOG=1 datagrams received within `seconds`."""
    n = 0
    deadline = time.time() + seconds
    while time.time() < deadline:
        sock.settimeout(max(0.01, deadline - time.time()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        if "WATCHDOG=1" in msg.splitlines():
            n += 1
    return n


def test_watchdog_pings_stop_while_a_shard_is_stalled(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    d = Daemon().enable_stats()
    # 0.9 s timeout: a probe (and a ping) every 300 ms while every loop answers.
    d.env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="900000")
    d.args = ["--test-stall-on-sigusr2", "8"]
    with d:
        assert "period_ms=300" in d.log_lines("watchdog")[0]
        assert watchdog_messages(sock, 3) >= 3
        d.signal(signal.SIGUSR2)
        assert wait_for(lambda: d.log_lines("test_stall"))
        # A ping for a round that completed before the stall may still be on its way.
        watchdog_messages(sock, 1.5)
        assert watchdog_messages(sock, 2.5) == 0
        assert wait_for(lambda: any("state=not_answering" in l and "shard=0" in l
                                    for l in d.log_lines("shard_stall")))
        samples, _ = d.metrics()
        assert samples[("sluice_shard_loop_lag_seconds", frozenset({("shard", "0")}))] > 1
        # The stall ends: the loop answers and the pings come back.
        assert wait_for(lambda: watchdog_messages(sock, 1) > 0, seconds=30)
        assert wait_for(lambda: any("state=answering" in l for l in d.log_lines("shard_stall")))
        # The shard serves again.
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("a@outside.test", ["user@example.test"], b"Subject: x\r\n\r\nx\r\n")
    sock.close()


def test_no_watchdog_without_watchdog_usec(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    d = Daemon()
    env = dict(os.environ, NOTIFY_SOCKET=path)
    env.pop("WATCHDOG_USEC", None)
    d.env = env
    with d:
        assert watchdog_messages(sock, 2) == 0
    sock.close()


def live_metrics():
    d = Daemon().enable_stats()
    with d:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("a@outside.test", ["user@example.test"], b"Subject: x\r\n\r\nx\r\n")
            try:
                s.sendmail("a@outside.test", ["b@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
            except smtplib.SMTPRecipientsRefused:
                pass
        wait_for(d.messages)
        status, _, body = d.get("/metrics")
        assert status == 200
        return body


def test_live_metrics_pass_promtool():
    body = live_metrics()
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", \
        r.stdout + r.stderr
    # The new gauges are there.
    for name in ("sluice_shard_loop_lag_seconds", "sluice_spool_free_bytes",
                 "sluice_queue_oldest_age_seconds"):
        assert f"\n# TYPE {name} gauge\n" in body, name
    free = re.search(r"^sluice_spool_free_bytes (\S+)$", body, re.M)
    assert free and float(free.group(1)) > 0


def test_alert_rules_pass_promtool_and_name_served_metrics():
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    body = live_metrics()
    served = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
    used = set(re.findall(r"\b(sluice_[a-z_]+)", RULES.read_text()))
    assert used and used <= served, used - served
    # So does the dashboard: every sluice_ family it queries exists (histogram series
    # by their family name).
    import json
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    names = {re.sub(r"_(bucket|sum|count)$", "", n)
             for e in exprs for n in re.findall(r"\b(sluice_[a-z_]+)", e)}
    assert names <= served, names - served
