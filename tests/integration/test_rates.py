"""[rates] in a real sluiced: each limit below, at and above its threshold (connections,
messages, recipients, errors; per client and per network), counted exactly over two
shards, the tarpit's delay, exemptions by map rate_exempt, the log line, the metric and
`sluicectl rates`. Clients come from their own loopback addresses (127.0.0.0/8), away from
127.0.0.1, which the harness's readiness probe uses."""
import smtplib
import socket
import time

import pytest

from harness import Daemon, code, wait_for
from test_relay_policy import build_map


def rates(**kw):
    body = "".join(f"{k} = {v}\n" for k, v in kw.items())
    return '\n[rates]\ninterval = "1h"\n' + body


class Client:
    """A raw SMTP connection from a chosen loopback source address."""

    def __init__(self, port, src, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(src, 0))
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed; buffered %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def reply(self):
        lines = [self.line()]
        while len(lines[-1]) >= 4 and lines[-1][3] == "-":
            lines.append(self.line())
        return lines

    def cmd(self, text):
        self.sock.sendall((text + "\r\n").encode())
        return self.reply()

    def closed(self, timeout=10):
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def greet(d, src):
    c = Client(d.port, src)
    reply = c.reply()
    return c, "220" if reply[-1].startswith("220 ") else code(reply)


def limited(d, limit, key_kind):
    return [l for l in d.log_lines("rate_limited")
            if f" limit={limit} " in l and f" key_kind={key_kind} " in l]


def metric(d, limit, key_kind):
    samples, _ = d.metrics()
    return samples[("sluice_rate_limited_total",
                    frozenset({("limit", limit), ("key_kind", key_kind)}))]


def test_connections_per_client_exact_over_two_shards():
    d = Daemon(extra=rates(connections_per_client=3)).enable_stats()
    with d:
        # Six connections held open together land on both shards; exactly three are
        # greeted (below and at the threshold), the rest refused (above it).
        got = [greet(d, "127.0.0.2") for _ in range(6)]
        codes = [c for _, c in got]
        assert codes[:3] == ["220"] * 3, codes
        assert codes[3:] == ["421 4.7.0"] * 3, codes
        for c, result in got[3:]:
            assert c.closed()
        line = limited(d, "connections", "client")
        assert len(line) == 3 and "code=R150" in line[0] and "client=127.0.0.2" in line[0]
        assert "key=127.0.0.2 " in line[0] and "count=3 " in line[0] and "action=refuse" in line[0]
        assert metric(d, "connections", "client") == 3
        # Another address is not affected.
        _, other = greet(d, "127.0.0.3")
        assert other == "220"
        r = d.ctl_json("rates", "127.0.0.2")
        row = [l for l in r["limits"] if l["limit"] == "connections" and l["key_kind"] == "client"][0]
        assert row["level"] == 3 and row["count"] == 3 and row["over"] is True
        assert row["retry_after_ms"] > 0
        text = d.ctl("rates", "127.0.0.2")
        assert text.returncode == 0 and "connections/client 127.0.0.2 3/3 OVER" in text.stdout
        # Reading counted nothing.
        again = d.ctl_json("rates", "127.0.0.2")["limits"]
        assert [l["level"] for l in again] == [l["level"] for l in r["limits"]]
        for c, _ in got[:3]:
            c.close()


def test_connections_per_network_counts_the_slash_24():
    d = Daemon(extra=rates(connections_per_network=4)).enable_stats()
    with d:
        codes = [greet(d, src)[1] for src in ("127.0.5.1", "127.0.5.2", "127.0.5.1", "127.0.5.3")]
        assert codes == ["220"] * 4
        assert greet(d, "127.0.5.9")[1] == "421 4.7.0"
        assert greet(d, "127.0.6.1")[1] == "220"   # another /24
        line = limited(d, "connections", "network")
        assert len(line) == 1 and "key=127.0.5.0/24 " in line[0] and "client=127.0.5.9" in line[0]
        assert metric(d, "connections", "network") == 1
        assert metric(d, "connections", "client") == 0


def mail_round(c, i):
    return code(c.cmd(f"MAIL FROM:<s{i}@outside.test>")), c.cmd("RSET")


def test_messages_per_client():
    with Daemon(extra=rates(messages_per_client=2)) as d:
        c, _ = greet(d, "127.0.0.4")
        c.cmd("EHLO client.test")
        with smtplib.SMTP("127.0.0.1", d.port, source_address=("127.0.0.4", 0), timeout=30) as s:
            s.sendmail("a@outside.test", ["user@example.test"], b"Subject: 1\r\n\r\nbody\r\n")
        assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "250 2.1.0"   # the second: at
        c.cmd("RSET")
        r = c.cmd("MAIL FROM:<a@outside.test>")                           # the third: above
        assert code(r) == "450 4.7.1" and "Too many messages from your address" in r[-1]
        assert code(c.cmd("NOOP")) == "250 2.0.0"   # the session goes on
        line = limited(d, "messages", "client")
        assert len(line) == 1 and "code=R151" in line[0]
        assert len(d.messages()) == 1


def test_recipients_per_client():
    with Daemon(extra=rates(recipients_per_client=3)) as d:
        c, _ = greet(d, "127.0.0.5")
        c.cmd("EHLO client.test")
        assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "250 2.1.0"
        for i in range(3):
            assert code(c.cmd(f"RCPT TO:<u{i}@example.test>")) == "250 2.1.5"
        r = c.cmd("RCPT TO:<u9@example.test>")
        assert code(r) == "450 4.7.1" and "Too many recipients" in r[-1]
        assert c.cmd("DATA")[-1].startswith("354")
        c.sock.sendall(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert code(c.reply()) == "250 2.0.0"
        assert "code=R152" in limited(d, "recipients", "client")[0]
        assert len(d.messages()) == 1
        c.cmd("QUIT")
        c.close()


def test_errors_per_client():
    with Daemon(extra=rates(errors_per_client=3)) as d:
        c, _ = greet(d, "127.0.0.6")
        for _ in range(3):
            assert code(c.cmd("BOGUS")) == "500 5.5.1"
        assert code(c.cmd("NOOP")) == "250 2.0.0"      # at the threshold: still served
        c.sock.sendall(b"BOGUS\r\n")
        assert code(c.reply()) == "500 5.5.1"
        r = c.reply()
        assert code(r) == "421 4.7.0" and "Too many errors from your address" in r[-1]
        assert c.closed()
        assert "code=R153" in limited(d, "errors", "client")[0]


def test_tarpit_holds_the_refusal_and_the_session_goes_on():
    extra = rates(messages_per_client=1, connections_per_client=1, action='"tarpit"',
                  tarpit_delay='"2s"')
    with Daemon(extra=extra) as d:
        c, first = greet(d, "127.0.0.7")
        assert first == "220"
        c.cmd("EHLO client.test")
        assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "250 2.1.0"
        c.cmd("RSET")
        t0 = time.monotonic()
        r = c.cmd("MAIL FROM:<a@outside.test>")
        assert code(r) == "450 4.7.1"
        assert time.monotonic() - t0 >= 2.0
        assert code(c.cmd("NOOP")) == "250 2.0.0"
        # A connection over its limit waits the delay for its 421.
        t0 = time.monotonic()
        c2, second = greet(d, "127.0.0.7")
        assert second == "421 4.7.0" and time.monotonic() - t0 >= 2.0
        assert all("action=tarpit" in l for l in d.log_lines("rate_limited"))


def test_rate_exempt_map():
    d = Daemon(extra=rates(connections_per_client=1))
    build_map(d, "rate_exempt", "127.0.8.0/24 monitoring\n")   # before start: no race
    with d:
        r = d.ctl_json("rates", "127.0.8.1")
        assert r["exempt"] is True and "127.0.8.0/24" in r["exempt_by"]
        assert [greet(d, "127.0.8.1")[1] for _ in range(4)] == ["220"] * 4
        assert greet(d, "127.0.9.1")[1] == "220"
        assert greet(d, "127.0.9.1")[1] == "421 4.7.0"
        assert "monitoring" not in "".join(limited(d, "connections", "client")) and \
            all("127.0.9.1" in l for l in limited(d, "connections", "client"))


def test_off_by_default():
    with Daemon() as d:
        assert [greet(d, "127.0.0.9")[1] for _ in range(20)] == ["220"] * 20
        r = d.ctl_json("rates", "127.0.0.9")
        assert all(l["count"] == 0 and l["level"] == 0 for l in r["limits"])
        assert d.log_lines("rate_limited") == []
