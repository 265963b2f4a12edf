"""Delivery by MX (route "mx") in a real sluiced: its resolver asks a real DNS server of
the tests (dnszone.py, python3-dnslib) on a loopback port; next hops listen on port 25 of
distinct 127.x.y.z addresses (the tests run as root). Each case of RFC 5321 §5.1 / RFC 7505
has its exact outcome: delivered at the right host, bounced with the right code, deferred
and delivered later. Broken DNS answers from a hostile responder defer (4.4.3), never crash.
"""
import os
import random
import smtplib
import socket
import threading
import time

import pytest

from dnszone import DnsServer, HostileDns
from harness import Daemon, wait_for
from nexthop import NextHop

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="port 25 on loopback needs root")

DOMAINS = ["a.test", "b.test", "c.test", "d.test", "e.test", "f.test", "g.test", "h.test",
           "i.test", "j.test", "k.test", "dead.test", "big.test", "ttl0.test", "ttl1.test",
           "flaky.test", "slow.test", "nomx.test", "nomail.test", "gone.test", "loop.test",
           "loop2.test", "x.test"]


def fresh_ip():
    """A loopback address no other test of this run uses (port 25 must be free there)."""
    while True:
        ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((ip, 25))
                return ip
            except OSError:
                continue


def mx_daemon(dns_address, dns_extra="", retry='["2s"]', extra="", shards=2):
    d = Daemon(shards=shards)
    text = d.config.read_text()
    text = text.replace('local = ["example.test"]',
                        "local = [" + ", ".join(f'"{x}"' for x in ["example.test"] + DOMAINS) + "]")
    text = text.replace('"example.test" = "maildir:maildir"',
                        '"example.test" = "maildir:maildir"\n"*" = "mx"')
    text = text.replace('dir = "spool"', f'dir = "spool"\nretry = {retry}')
    text += f'\n[dns]\nservers = ["{dns_address}"]\ntimeout = "500ms"\nattempts = 2\n{dns_extra}\n{extra}'
    d.config.write_text(text)
    return d


def send(d, rcpt, sender="s@outside.test", subject="mx"):
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.sendmail(sender, [rcpt], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def lines_for(d, event, rcpt):
    return [l for l in d.log_lines(event) if f"to=<{rcpt}>" in l]


class GreetingServer:
    """Port 25 of `ip`: counts connections and answers each with `greeting` then closes."""

    def __init__(self, ip, greeting=b"421 4.3.2 busy, try later\r\n"):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, 25))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.greeting = greeting
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                c.sendall(self.greeting)
                c.settimeout(2)
                c.recv(1024)
            except OSError:
                pass
            c.close()

    def stop(self):
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def world():
    """Four next hops on port 25 of four addresses, and a zone naming them."""
    ips = [fresh_ip() for _ in range(4)]
    hops = [NextHop(25, host=ip).start() for ip in ips]
    down = fresh_ip()  # nothing listens there: connection refused
    zone = {
        "a.test": [("MX", 300, (20, "mx2.a.test")), ("MX", 300, (10, "mx1.a.test"))],
        "mx1.a.test": [("A", 300, ips[0])],
        "mx2.a.test": [("A", 300, ips[1])],
        # The preferred MX is down: the next MX takes it in the same attempt.
        "b.test": [("MX", 300, (10, "down.b.test")), ("MX", 300, (20, "up.b.test"))],
        "down.b.test": [("A", 300, down)],
        "up.b.test": [("A", 300, ips[2])],
        # No MX: the domain's own address (RFC 5321 §5.1).
        "nomx.test": [("A", 300, ips[3])],
        # Null MX (RFC 7505).
        "nomail.test": [("MX", 300, (0, ""))],
        # MX to a CNAME.
        "c.test": [("MX", 300, (10, "alias.c.test"))],
        "alias.c.test": [("CNAME", 300, "real.c.test")],
        "real.c.test": [("A", 300, ips[1])],
        # MX naming this gateway (server.hostname of the harness).
        "loop.test": [("MX", 300, (10, "mx.example.test"))],
        "mx.example.test": [("A", 300, "127.0.0.1")],
        # TTL 0 and 1.
        "ttl0.test": [("MX", 0, (10, "h0.ttl0.test"))],
        "h0.ttl0.test": [("A", 0, ips[0])],
        "ttl1.test": [("MX", 1, (10, "h1.ttl1.test"))],
        "h1.ttl1.test": [("A", 1, ips[0])],
        # A huge answer: 40 MX hosts (over 512 bytes: truncated on UDP, retried over TCP).
        "big.test": [("MX", 300, (10 + i, f"a-rather-long-mail-exchanger-name-{i:02d}.big.test"))
                     for i in range(40)],
    }
    for i in range(40):
        zone[f"a-rather-long-mail-exchanger-name-{i:02d}.big.test"] = [("A", 300, ips[3])]
    dns = DnsServer(zone).start()
    try:
        yield dns, ips, hops, down
    finally:
        dns.stop()
        for h in hops:
            h.stop()


def delivered_to(hops, rcpt):
    return [i for i, h in enumerate(hops) for m in h.recorder.snapshot() if rcpt in m[1]]


def test_mx_hosts_by_preference(world):
    dns, ips, hops, _ = world
    with mx_daemon(dns.address) as d:
        send(d, "u@a.test")
        assert wait_for(lambda: delivered_to(hops, "u@a.test"))
        assert delivered_to(hops, "u@a.test") == [0]  # MX 10, never MX 20
        line = lines_for(d, "delivered", "u@a.test")[0]
        assert f"relay=mx1.a.test[{ips[0]}]:25" in line


def test_next_mx_when_the_preferred_one_refuses_connections(world):
    dns, ips, hops, down = world
    with mx_daemon(dns.address) as d:
        send(d, "u@b.test")
        assert wait_for(lambda: delivered_to(hops, "u@b.test"))
        assert delivered_to(hops, "u@b.test") == [2]
        assert lines_for(d, "deferred", "u@b.test") == []  # within the same attempt


def test_next_mx_after_a_4xx_greeting(world):
    dns, ips, hops, _ = world
    busy_ip = fresh_ip()
    busy = GreetingServer(busy_ip)
    dns.resolver.records["d.test"] = [("MX", 300, (10, "busy.d.test")), ("MX", 300, (20, "ok.d.test"))]
    dns.resolver.records["busy.d.test"] = [("A", 300, busy_ip)]
    dns.resolver.records["ok.d.test"] = [("A", 300, ips[1])]
    try:
        with mx_daemon(dns.address) as d:
            send(d, "u@d.test")
            assert wait_for(lambda: delivered_to(hops, "u@d.test"))
            assert busy.connections == 1
            assert delivered_to(hops, "u@d.test") == [1]
            assert lines_for(d, "deferred", "u@d.test") == []
    finally:
        busy.stop()


def test_implicit_mx_is_the_domains_address(world):
    dns, ips, hops, _ = world
    with mx_daemon(dns.address) as d:
        send(d, "u@nomx.test")
        assert wait_for(lambda: delivered_to(hops, "u@nomx.test"))
        assert delivered_to(hops, "u@nomx.test") == [3]
        assert any("implicit=yes" in l for l in d.log_lines("mx_plan"))


def test_null_mx_bounces_5_1_10(world):
    dns, _, hops, _ = world
    with mx_daemon(dns.address) as d:
        send(d, "u@nomail.test")
        assert wait_for(lambda: lines_for(d, "bounced", "u@nomail.test"))
        line = lines_for(d, "bounced", "u@nomail.test")[0]
        assert "556 5.1.10" in line
        assert all(not h.recorder.snapshot() for h in hops)


def test_nxdomain_bounces_5_1_2(world):
    dns, _, hops, _ = world
    with mx_daemon(dns.address) as d:
        send(d, "u@gone.test")
        assert wait_for(lambda: lines_for(d, "bounced", "u@gone.test"))
        assert "550 5.1.2" in lines_for(d, "bounced", "u@gone.test")[0]


def test_mx_to_cname_is_followed(world):
    dns, _, hops, _ = world
    with mx_daemon(dns.address) as d:
        send(d, "u@c.test")
        assert wait_for(lambda: delivered_to(hops, "u@c.test"))
        assert delivered_to(hops, "u@c.test") == [1]


def test_mx_naming_this_host_is_a_loop_5_4_6(world):
    dns, _, hops, _ = world
    with mx_daemon(dns.address) as d:
        send(d, "u@loop.test")
        assert wait_for(lambda: lines_for(d, "bounced", "u@loop.test"))
        assert "554 5.4.6" in lines_for(d, "bounced", "u@loop.test")[0]


def test_mx_resolving_to_a_listener_of_ours_is_a_loop(world):
    dns, _, hops, _ = world
    own = fresh_ip()
    dns.resolver.records["loop2.test"] = [("MX", 300, (10, "other.loop2.test"))]
    dns.resolver.records["other.loop2.test"] = [("A", 300, own)]
    d = mx_daemon(dns.address)
    text = d.config.read_text()
    text += f'\n[[listener]]\nname = "mx25"\naddress = "{own}:25"\nrole = "mx"\n'
    d.config.write_text(text)
    with d:
        send(d, "u@loop2.test")
        assert wait_for(lambda: lines_for(d, "bounced", "u@loop2.test"))
        assert "554 5.4.6" in lines_for(d, "bounced", "u@loop2.test")[0]


def test_servfail_defers_4_4_3_then_delivers(world):
    dns, ips, hops, _ = world
    dns.resolver.records["flaky.test"] = [("MX", 300, (10, "mx.flaky.test"))]
    dns.resolver.records["mx.flaky.test"] = [("A", 300, ips[2])]
    dns.resolver.servfail = {"flaky.test"}
    with mx_daemon(dns.address) as d:
        send(d, "u@flaky.test")
        assert wait_for(lambda: lines_for(d, "deferred", "u@flaky.test"), 30)
        assert "451 4.4.3" in lines_for(d, "deferred", "u@flaky.test")[0]
        assert delivered_to(hops, "u@flaky.test") == []
        dns.resolver.servfail = set()  # SERVFAIL is not cached: the retry asks again
        assert wait_for(lambda: delivered_to(hops, "u@flaky.test"), 30)
        assert delivered_to(hops, "u@flaky.test") == [2]


def test_timeout_defers_4_4_3_then_delivers_when_dns_answers(world):
    dns, ips, hops, _ = world
    dns.resolver.records["slow.test"] = [("MX", 300, (10, "mx.slow.test"))]
    dns.resolver.records["mx.slow.test"] = [("A", 300, ips[1])]
    dns.resolver.silent = {"slow.test"}
    with mx_daemon(dns.address) as d:
        send(d, "u@slow.test")
        assert wait_for(lambda: lines_for(d, "deferred", "u@slow.test"), 30)
        assert "451 4.4.3" in lines_for(d, "deferred", "u@slow.test")[0]
        assert delivered_to(hops, "u@slow.test") == []
        dns.resolver.silent = set()
        assert wait_for(lambda: delivered_to(hops, "u@slow.test"), 30)
        assert delivered_to(hops, "u@slow.test") == [1]


def test_huge_answer_falls_back_to_tcp(world):
    dns, _, hops, _ = world
    with mx_daemon(dns.address) as d:
        send(d, "u@big.test")
        assert wait_for(lambda: delivered_to(hops, "u@big.test"))
        assert delivered_to(hops, "u@big.test") == [3]
        assert dns.resolver.tcp_queries >= 1


def test_ttl_0_is_asked_again_and_ttl_1_expires(world):
    dns, ips, hops, _ = world
    with mx_daemon(dns.address) as d:
        send(d, "u1@ttl0.test")
        assert wait_for(lambda: delivered_to(hops, "u1@ttl0.test"))
        send(d, "u2@ttl0.test")
        assert wait_for(lambda: delivered_to(hops, "u2@ttl0.test"))
        assert dns.resolver.count("ttl0.test", "MX") == 2  # TTL 0: never cached
        send(d, "u1@ttl1.test")
        assert wait_for(lambda: delivered_to(hops, "u1@ttl1.test"))
        dns.resolver.records["h1.ttl1.test"] = [("A", 1, ips[2])]  # the host moved
        time.sleep(1.5)  # the TTL is the behaviour under test
        send(d, "u2@ttl1.test")
        assert wait_for(lambda: delivered_to(hops, "u2@ttl1.test"))
        assert delivered_to(hops, "u2@ttl1.test") == [2]
        assert dns.resolver.count("ttl1.test", "MX") == 2


def test_dead_destination_one_connection_per_retry_step(world):
    dns, ips, hops, _ = world
    down_ips = [fresh_ip(), fresh_ip()]
    servers = [GreetingServer(ip) for ip in down_ips]
    dns.resolver.records["dead.test"] = [("MX", 300, (10, "m1.dead.test")),
                                         ("MX", 300, (20, "m2.dead.test"))]
    dns.resolver.records["m1.dead.test"] = [("A", 300, down_ips[0])]
    dns.resolver.records["m2.dead.test"] = [("A", 300, down_ips[1])]
    try:
        with mx_daemon(dns.address, retry='["3s"]', shards=1) as d:
            n = 30
            with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
                for i in range(n):
                    s.sendmail("s@outside.test", [f"u{i}@dead.test"], b"Subject: dead\r\n\r\nx\r\n")
            start = time.time()
            assert wait_for(lambda: len(d.log_lines("deferred")) >= n, 30)
            assert wait_for(lambda: len(d.log_lines("deferred")) >= 2 * n, 30)
            elapsed = time.time() - start
            # One round at first, one more per retry step (3 s) that passed: 30 messages
            # queued make no difference.
            steps = int(elapsed / 3) + 1
            for s in servers:
                assert 1 <= s.connections <= steps + 1, (s.connections, elapsed)
            assert all("4.4.1" in l for l in d.log_lines("deferred"))
            assert d.log_lines("destination_dead")
    finally:
        for s in servers:
            s.stop()


@pytest.mark.parametrize("mode", ["wrong_id", "truncated", "tc_no_tcp", "loop", "long_name"])
def test_hostile_dns_answers_defer_without_crash(mode):
    bad = HostileDns(mode).start()
    try:
        with mx_daemon(bad.address, dns_extra="") as d:
            send(d, "u@x.test")
            assert wait_for(lambda: lines_for(d, "deferred", "u@x.test"), 30)
            assert "451 4.4.3" in lines_for(d, "deferred", "u@x.test")[0]
            assert d.proc.poll() is None
            assert bad.answered >= 1
            # Still serving.
            send(d, "v@example.test")
            assert wait_for(lambda: len(d.messages()) == 1)
    finally:
        bad.stop()


def test_sluicectl_dns_shows_the_plan_and_cached_ttls(world):
    dns, ips, hops, _ = world
    with mx_daemon(dns.address) as d:
        r = d.ctl_json("dns", "A.test.")
        assert r["domain"] == "a.test"
        assert r["route"] == "mx"
        assert r["verdict"] == "deliver"
        assert [(h["preference"], h["host"], h["status"]) for h in r["hosts"]] == [
            (10, "mx1.a.test", "ok"), (20, "mx2.a.test", "ok")]
        assert r["hosts"][0]["addresses"] == [{"address": ips[0], "ttl": 300}]
        assert r["try"] == [f"mx1.a.test[{ips[0]}]:25", f"mx2.a.test[{ips[1]}]:25"]
        asked = dns.resolver.count("a.test", "MX")
        time.sleep(1.1)  # the cached TTL counts down
        again = d.ctl_json("dns", "a.test")
        assert again["mx_ttl"] < 300
        assert dns.resolver.count("a.test", "MX") == asked  # from the cache
        nm = d.ctl_json("dns", "nomail.test")
        assert nm["verdict"] == "bounce" and nm["null_mx"] is True
        assert nm["reply"].startswith("556 5.1.10")
        human = d.ctl("dns", "gone.test")
        assert human.returncode == 0
        assert "verdict:  bounce (550 5.1.2" in human.stdout
        bad = d.ctl("dns")
        assert bad.returncode == 2
        stats = d.ctl_json("stats")["dns"]
        assert stats["queries"] >= 3
        assert stats["answers"]["noerror"] >= 1 and stats["answers"]["nxdomain"] >= 1
        assert stats["cache_hits"] >= 1 and stats["cache_entries"] >= 1
