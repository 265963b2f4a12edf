"""PROXY protocol v1 and v2 on listeners with `proxy_protocol` (haproxy's
doc/proxy-protocol.txt): a real HAProxy in front of sluiced with send-proxy and
send-proxy-v2, plain and with implicit TLS behind it, and raw headers that must be refused:
from a peer not in the list, truncated, oversized, slow, with garbage TLVs.

The client binds 127.0.0.9 (or .10, .11) before it connects to HAProxy, which connects to
sluiced from 127.0.0.1: every address sluiced uses for the client must be the first."""
import json
import smtplib
import socket
import ssl
import struct
import subprocess
import time

from certs import make_certs
from harness import SLUICECTL, Daemon, Raw, code, free_port, wait_for
from haproxy import HAProxy

CLIENT = "127.0.0.9"
BALANCER = "127.0.0.1"
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_daemon(tmp_path, extra="", server="", tls=False):
    """sluiced with its ordinary `mx` listener plus `proxied` (and `proxied_tls`, implicit
    TLS), both taking PROXY headers from 127.0.0.1 only."""
    pp, ppt = free_port(), free_port()
    listeners = f'''
[[listener]]
name = "proxied"
address = "127.0.0.1:{pp}"
role = "mx"
proxy_protocol = ["{BALANCER}/32"]
'''
    if tls:
        certs = make_certs(tmp_path / "pki")
        listeners += f'''
[[listener]]
name = "proxied_tls"
address = "127.0.0.1:{ppt}"
role = "mx"
tls = "implicit"
proxy_protocol = ["{BALANCER}/32", "::1/128"]

[tls]
certificate = "{certs.ecdsa_chain}"
key = "{certs.ecdsa_key}"
'''
    d = Daemon(limits='proxy_timeout = "3s"', extra=listeners + extra)
    text = d.config.read_text().replace('"example.test" = "maildir:maildir"',
                                        '"example.test" = "maildir:maildir"\n"*" = "maildir:outbound"')
    text = text.replace("shards = 2", "shards = 2\n" + server)
    d.config.write_text(text)
    d.pp_port, d.ppt_port = pp, ppt
    d.certs = certs if tls else None
    return d


def build_map(d, name, text):
    src = d.dir / f"{name}.txt"
    src.write_text(text)
    r = d.ctl("map", "build", name, str(src))
    assert r.returncode == 0, r.stdout + r.stderr


def connect_from(source, port, timeout=15):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


class RawFrom(Raw):
    """A raw connection from a chosen loopback source address, greeting not read."""

    def __init__(self, source, port, timeout=15):
        self.sock = connect_from(source, port, timeout)
        self.buf = b""


def v2(ver_cmd, fam, body):
    return SIG + bytes([ver_cmd, fam]) + struct.pack("!H", len(body)) + body


def inet4(src, dst, sport, dport):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def session_lines(d, client):
    return [l for l in d.log_lines("session") if f" client={client} " in l + " "]


def test_haproxy_v1_and_v2_the_client_is_the_one_haproxy_saw(tmp_path):
    d = proxy_daemon(tmp_path, extra='\n[relay]\nprivileged_networks = true\n')
    build_map(d, "privileged_networks", f"{CLIENT}/32 behind-the-balancer\n")
    with d, HAProxy({"v1": (d.pp_port, "send-proxy"), "v2": (d.pp_port, "send-proxy-v2")}) as h:
        for version in ("v1", "v2"):
            with smtplib.SMTP("127.0.0.1", h.ports[version], source_address=(CLIENT, 0),
                              timeout=30) as s:
                s.ehlo("client.test")
                # The policy sees the header's address: 127.0.0.9 is privileged (G107),
                # the balancer 127.0.0.1 is not.
                s.sendmail("a@outside.test", ["user@example.test", f"far-{version}@elsewhere.test"],
                           f"Subject: via {version}\r\n\r\nhello\r\n")
        msgs = [p.read_text() for p in d.messages()]
        assert len(msgs) == 2
        for text in msgs:
            received = next(l for l in text.splitlines() if l.startswith("Received:"))
            assert f"([{CLIENT}])" in received, text[:300]
            assert BALANCER not in received
        relayed = list((d.dir / "outbound" / "new").iterdir())
        assert len(relayed) == 2
        grants = [l for l in d.log_lines("rcpt") if "code=G107" in l]
        assert len(grants) == 2
        assert all(f"client={CLIENT} " in l and f"proxy={BALANCER} " in l for l in grants)
        # The session's connect line names the client and the balancer, and the header.
        connects = [l for l in d.log_lines("connect") if "result=proxied" in l]
        assert any("header=v1" in l and f"client={CLIENT} " in l for l in connects), connects
        assert any("header=v2" in l and f"client={CLIENT} " in l for l in connects), connects
        assert all(f"proxy={BALANCER} " in l and "command=proxied" in l for l in connects)
        assert wait_for(lambda: len(session_lines(d, CLIENT)) >= 2)
        assert all(f"proxy={BALANCER} " in l for l in session_lines(d, CLIENT))
        # explain gives the decision the session got, for the address HAProxy saw.
        j = d.ctl_json("explain", "--client", CLIENT, "--listener", "proxied",
                       "--from", "a@outside.test", "--to", "far@elsewhere.test")
        assert j["code"] == "G107" and j["client"] == CLIENT
        assert j["proxy_protocol"] == [f"{BALANCER}/32"]
        text = d.ctl("explain", "--client", CLIENT, "--listener", "proxied",
                     "--from", "a@outside.test", "--to", "far@elsewhere.test").stdout
        assert "PROXY header" in text and f"{BALANCER}/32" in text
        # The balancer's own address relays nothing (it is not privileged).
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@outside.test>")
        assert code(c.cmd("RCPT TO:<far@elsewhere.test>")) == "554 5.7.1"


def test_haproxy_with_implicit_tls_behind_it(tmp_path):
    d = proxy_daemon(tmp_path, tls=True)
    with d, HAProxy({"tls": (d.ppt_port, "send-proxy-v2")}) as h:
        ctx = ssl.create_default_context(cafile=str(d.certs.ca))
        ctx.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", h.ports["tls"], source_address=(CLIENT, 0),
                              context=ctx, timeout=30) as s:
            s.ehlo("client.test")
            s.sendmail("a@outside.test", ["user@example.test"], "Subject: tls\r\n\r\nhi\r\n")
        msgs = [p.read_text() for p in d.messages()]
        assert len(msgs) == 1 and f"([{CLIENT}])" in msgs[0]
        tls_lines = [l for l in d.log_lines("tls") if "result=ok" in l]
        assert tls_lines and f"client={CLIENT} " in tls_lines[-1]
        assert any("header=v2" in l and f"client={CLIENT} " in l
                   for l in d.log_lines("connect"))


def test_client_bytes_in_the_same_segment_as_the_header_are_not_lost(tmp_path):
    d = proxy_daemon(tmp_path, tls=True)
    with d:
        # SMTP: the header and the client's EHLO in one write (greeting_delay is off, so
        # the client's pipelined EHLO is answered after the greeting).
        c = RawFrom(BALANCER, d.pp_port)
        c.send(b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 25\r\nEHLO client.test\r\n")
        assert c.reply()[0].startswith("220 ")
        ehlo = c.reply()
        assert ehlo[0].startswith("250-") and "PIPELINING" in " ".join(ehlo)
        c.cmd("QUIT")
        # TLS: the header and the ClientHello in one write, the handshake then completes.
        ctx = ssl.create_default_context(cafile=str(d.certs.ca))
        ctx.check_hostname = False
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mx.example.test")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        assert hello[:1] == b"\x16"
        s = connect_from(BALANCER, d.ppt_port)
        s.sendall(v2(0x21, 0x11, inet4("192.0.2.10", "127.0.0.1", 40001, 465)) + hello)
        plain = b""
        deadline = time.time() + 30
        while b"\r\n" not in plain and time.time() < deadline:
            data = s.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
            try:
                tls.do_handshake()
                plain += tls.read(4096)
            except ssl.SSLWantReadError:
                pass
            out = outgoing.read()
            if out:
                s.sendall(out)
        assert plain.startswith(b"220 "), plain
        s.close()
        assert wait_for(lambda: session_lines(d, "192.0.2.10") and session_lines(d, "192.0.2.9"))


def test_v2_local_is_the_balancers_own_health_check(tmp_path):
    with proxy_daemon(tmp_path) as d:
        c = RawFrom(BALANCER, d.pp_port)
        c.send(v2(0x20, 0x00, b""))
        assert c.reply()[0].startswith("220 ")
        assert c.cmd("HELO balancer.test")[-1].startswith("250 ")
        assert c.cmd("QUIT")[0].startswith("221")
        # LOCAL with an address block (§2.2: never assume zero length) and v1 UNKNOWN.
        c = RawFrom(BALANCER, d.pp_port)
        c.send(v2(0x20, 0x11, inet4("192.0.2.66", "127.0.0.1", 1, 25)))
        assert c.reply()[0].startswith("220 ")
        c.close()
        c = RawFrom(BALANCER, d.pp_port)
        c.send(b"PROXY UNKNOWN\r\n")
        assert c.reply()[0].startswith("220 ")
        c.close()
        lines = d.log_lines("connect")
        assert any("command=local" in l and f"client={BALANCER} " in l for l in lines)
        assert any("command=unknown" in l and f"client={BALANCER} " in l for l in lines)
        # The addresses of a LOCAL block are never taken.
        assert "192.0.2.66" not in d.log()


def test_haproxy_smtp_health_check_over_v2_local(tmp_path):
    """HAProxy's own SMTP check (option smtpchk, check-send-proxy: a v2 LOCAL header, then
    HELO) sees a working server."""
    with proxy_daemon(tmp_path) as d, HAProxy({"chk": (
            d.pp_port, "send-proxy-v2 check check-send-proxy inter 300 fall 2 rise 1",
            "option smtpchk HELO balancer.test")}) as h:
        assert wait_for(lambda: [l for l in d.log_lines("connect")
                                 if "command=local" in l and f"client={BALANCER} " in l])
        assert wait_for(lambda: h.server_check("chk")[1] == "L7OK"), h.server_check("chk")
        assert h.server_check("chk")[0] == "UP"
        assert wait_for(lambda: [l for l in d.log_lines("session")
                                 if "helo=balancer.test" in l and f"proxy={BALANCER} " in l])


def test_ipv6_client_through_a_v1_header(tmp_path):
    with proxy_daemon(tmp_path) as d:
        c = RawFrom(BALANCER, d.pp_port)
        c.send(b"PROXY TCP6 2001:db8::7 ::1 40000 25\r\n")
        assert c.reply()[0].startswith("220 ")
        c.cmd("EHLO client.test")
        assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "250 2.1.0"
        assert code(c.cmd("RCPT TO:<user@example.test>")) == "250 2.1.5"
        assert c.cmd("DATA")[0].startswith("354")
        assert c.cmd("Subject: six\r\n\r\nhi\r\n.")[0].startswith("250")
        c.cmd("QUIT")
        text = d.messages()[0].read_text()
        assert "([IPv6:2001:db8::7])" in text


def refused(d, conn, expect_result, expect_error=None, seconds=20):
    """The connection is closed without a greeting and the refusal is on record."""
    assert conn.closed(timeout=seconds), "still open"
    assert conn.buf == b"", conn.buf
    def logged():
        return [l for l in d.log_lines("connect") if f"result={expect_result}" in l and
                (expect_error is None or f"error={expect_error}" in l)]
    assert wait_for(logged), d.log()[-2000:]


def test_headers_that_are_never_trusted(tmp_path):
    spoofed = "192.0.2.77"
    with proxy_daemon(tmp_path) as d:
        # A peer not in proxy_protocol: closed at once, even with a well-formed header.
        c = RawFrom(CLIENT, d.pp_port)
        c.send(f"PROXY TCP4 {spoofed} 127.0.0.1 1 25\r\n".encode())
        refused(d, c, "proxy_untrusted")
        assert any(f"client={CLIENT} " in l for l in d.log_lines("connect"))
        # Oversized: a v1 line without CRLF in 107 bytes; a v2 length past the bound.
        c = RawFrom(BALANCER, d.pp_port)
        c.send(b"PROXY TCP4 " + b"1" * 150)
        refused(d, c, "proxy_invalid", "v1_too_long")
        c = RawFrom(BALANCER, d.pp_port)
        c.send(SIG + b"\x21\x11\xff\xff" + b"\x00" * 64)
        refused(d, c, "proxy_invalid", "v2_too_long")
        # Garbage TLVs: a TLV that runs past the header, and a wrong CRC32C.
        c = RawFrom(BALANCER, d.pp_port)
        c.send(v2(0x21, 0x11, inet4(spoofed, "127.0.0.1", 1, 25) + b"\x04\x00\x40junk"))
        refused(d, c, "proxy_invalid", "v2_bad_tlv")
        c = RawFrom(BALANCER, d.pp_port)
        c.send(v2(0x21, 0x11, inet4(spoofed, "127.0.0.1", 1, 25) + b"\x03\x00\x04abcd"))
        refused(d, c, "proxy_invalid", "v2_bad_checksum")
        # Not a header at all (a client speaking SMTP or TLS to the balancer's port).
        c = RawFrom(BALANCER, d.pp_port)
        c.send(b"EHLO client.test\r\n")
        refused(d, c, "proxy_invalid", "bad_signature")
        # Truncated: half a header, then the peer closes its side.
        c = RawFrom(BALANCER, d.pp_port)
        c.send(v2(0x21, 0x11, inet4(spoofed, "127.0.0.1", 1, 25))[:20])
        c.sock.shutdown(socket.SHUT_WR)
        refused(d, c, "proxy_closed")
        # Slow: a header trickled a byte every half second is cut at proxy_timeout (3 s),
        # however steadily it arrives.
        c = RawFrom(BALANCER, d.pp_port)
        header = f"PROXY TCP4 {spoofed} 127.0.0.1 1 25\r\n".encode()
        started = time.time()
        closed = False
        for b in header:
            try:
                c.send(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.5)
        assert closed or c.closed(timeout=10)
        assert time.time() - started < len(header) * 0.5
        assert wait_for(lambda: [l for l in d.log_lines("connect") if "result=proxy_timeout" in l])
        # No session ever ran for the spoofed address; nothing was greeted.
        assert spoofed not in "".join(d.log_lines("session"))
    text = d.log()
    assert f"client={spoofed}" not in text


def test_proxied_clients_get_their_own_caps_and_filter(tmp_path):
    d = proxy_daemon(tmp_path, server="max_connections_per_ip = 2",
                     extra='\n[connections]\nfilter = "deny-listed"\n')
    build_map(d, "connection_filter", "127.0.0.11/32 deny\n")
    d.enable_stats()
    with d, HAProxy({"v2": (d.pp_port, "send-proxy-v2")}) as h:
        held = []
        for _ in range(2):
            c = RawFrom(CLIENT, h.ports["v2"])
            assert c.reply()[0].startswith("220 ")
            held.append(c)
        # A third session from the same client (through the same balancer): its cap.
        c = RawFrom(CLIENT, h.ports["v2"])
        assert code(c.reply()).startswith("421")
        assert wait_for(lambda: any("result=ip_limit" in l and f"client={CLIENT} " in l and
                                    f"proxy={BALANCER} " in l for l in d.log_lines("connect")))
        # Another client through the same balancer is not counted with it.
        c = RawFrom("127.0.0.10", h.ports["v2"])
        assert c.reply()[0].startswith("220 ")
        c.close()
        # The connection filter looks at the header's address too (C130).
        c = RawFrom("127.0.0.11", h.ports["v2"])
        assert code(c.reply()) == "554 5.7.1"
        assert wait_for(lambda: any("code=C130" in l and "client=127.0.0.11 " in l
                                    for l in d.log_lines("connect")))
        for c in held:
            c.close()
        # A peer outside the list is counted as a refusal on the listener.
        c = RawFrom(CLIENT, d.pp_port)
        assert c.closed(timeout=20)
        key = ("sluice_connections_total",
               frozenset({"listener": "proxied", "result": "proxy_refused"}.items()))
        assert wait_for(lambda: d.metrics()[0].get(key, 0) >= 1)


def test_listener_without_proxy_protocol_reads_a_proxy_line_as_smtp(tmp_path):
    with proxy_daemon(tmp_path) as d:
        c = Raw(d.port)
        unknown = c.cmd("FROB x")
        reply = c.cmd("PROXY TCP4 192.0.2.9 127.0.0.1 1 25")
        assert code(reply) == code(unknown) and reply[0][:3] == "500"
        assert c.cmd("EHLO client.test")[-1].startswith("250 ")
        c.cmd("QUIT")
        assert "192.0.2.9" not in "".join(d.log_lines("session"))


def test_proxy_protocol_catch_all_is_a_config_error(tmp_path):
    d = proxy_daemon(tmp_path)
    d.config.write_text(d.config.read_text().replace(f'["{BALANCER}/32"]', '["0.0.0.0/0"]'))
    from harness import SLUICED
    r = subprocess.run([SLUICED, "--config", str(d.config), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "proxy_protocol 0.0.0.0/0 trusts every peer" in r.stdout + r.stderr
