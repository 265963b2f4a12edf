"""STARTTLS to the next hop per route in a real sluiced: a recording next
hop (aiosmtpd) with and without STARTTLS; `?starttls=required|optional|off`, certificate
verification against [tls] ca_file, fallback to plaintext after a failed optional handshake,
session resumption, and the config checks that go with it."""
import json
import smtplib
import ssl
import subprocess
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as Server

from certs import make_certs
from harness import SLUICED, Daemon, free_port, wait_for
from nexthop import NextHop, Recorder


class TlsRecorder(Recorder):
    """Records, per message, the TLS session it came over (None: plaintext)."""

    def __init__(self):
        super().__init__()
        self.tls = []               # (version, cipher, session_reused) or None
        self.close_after_data = False

    async def handle_DATA(self, server, session, envelope):
        obj = session.ssl.get("ssl_object") if session.ssl else None
        info = (obj.version(), obj.cipher()[0], obj.session_reused) if obj else None
        with self.lock:
            self.tls.append(info)
        if self.close_after_data:
            # Hang up after the reply so that the next message needs a new connection
            # (a TLS close_notify first, when TLS is up).
            server.loop.call_later(0.2, server.transport.close)
        return await super().handle_DATA(server, session, envelope)

    def sessions(self):
        with self.lock:
            return list(self.tls)


class TlsNextHop:
    """A next hop offering STARTTLS with `context` (a server SSLContext)."""

    def __init__(self, port, context, require_starttls=False):
        self.port = port
        self.context = context
        self.require_starttls = require_starttls
        self.recorder = TlsRecorder()
        self.controller = None

    def start(self):
        hop = self

        class C(Controller):
            def factory(self):
                return Server(self.handler, decode_data=False, tls_context=hop.context,
                              require_starttls=hop.require_starttls)

        self.controller = C(self.recorder, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None


def server_context(certs, tls13_only=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs.ecdsa_chain), str(certs.ecdsa_key))
    if tls13_only:
        # Our client speaks TLS 1.2 only (mbedTLS 2.28): every handshake fails.
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def outbound_daemon(route, ca_file=None, shards=2):
    d = Daemon(shards=shards)
    text = d.config.read_text().replace('"example.test" = "maildir:maildir"',
                                        f'"example.test" = "{route}"')
    text = text.replace('dir = "spool"', 'dir = "spool"\nretry = ["1s", "2s"]')
    if ca_file is not None:
        text += f'\n[tls]\nca_file = "{ca_file}"\n'
    d.config.write_text(text)
    return d


def send(d, subject="tls", rcpt="user@example.test"):
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.sendmail("a@outside.test", [rcpt], f"Subject: {subject}\r\n\r\nsecret body\r\n")


def queued_ids(d):
    """The spool's messages, read offline (call after the daemon stopped)."""
    r = d.ctl("queue", "list", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return [m["id"] for m in json.loads(r.stdout)]


def test_required_delivers_over_a_verified_tls_session(tmp_path):
    certs = make_certs(tmp_path / "pki")
    hop = TlsNextHop(free_port(), server_context(certs)).start()
    try:
        # A host name: the certificate names localhost (mbedTLS cannot match addresses).
        with outbound_daemon(f"smtp://localhost:{hop.port}?starttls=required", certs.ca) as d:
            send(d)
            msgs = wait_for(lambda: hop.recorder.snapshot())
            assert len(msgs) == 1 and b"secret body" in msgs[0][2]
            version, cipher, _ = hop.recorder.sessions()[0]
            assert version == "TLSv1.2"
            assert "GCM" in cipher or "CHACHA20" in cipher
            lines = wait_for(lambda: d.log_lines("tls_out"))
            assert len(lines) == 1
            assert f"relay=localhost:{hop.port}" in lines[0]
            assert "result=ok" in lines[0] and "verified=yes" in lines[0]
            assert "version=TLSv1.2" in lines[0] and "cipher=TLS-ECDHE-ECDSA-" in lines[0]
            assert wait_for(lambda: d.log_lines("delivered"))
            out = d.ctl_json("stats")["tls_out_handshakes"]
            assert out["ok"] == 1 and out["failed"] == 0
    finally:
        hop.stop()


def test_required_with_an_untrusted_certificate_defers_and_never_sends(tmp_path):
    certs = make_certs(tmp_path / "pki")
    stranger = make_certs(tmp_path / "other-pki")  # a CA that did not issue the hop's cert
    hop = TlsNextHop(free_port(), server_context(certs)).start()
    try:
        with outbound_daemon(f"smtp://localhost:{hop.port}?starttls=required",
                             stranger.ca) as d:
            send(d)
            assert wait_for(lambda: len(d.log_lines("deferred")) >= 2)  # retried, still refused
            failed = d.log_lines("tls_out")
            assert failed and all("result=failed" in l for l in failed)
            assert "certificate verification failed" in failed[0]
            assert "fallback=none" in failed[0]
            assert 'reply="451 4.4.2' in d.log_lines("deferred")[0]
            assert hop.recorder.snapshot() == []
            assert not d.log_lines("delivered")
            out = d.ctl_json("stats")["tls_out_handshakes"]
            assert out["ok"] == 0 and out["failed"] >= 2
        assert len(queued_ids(d)) == 1  # still in the spool after the clean stop
    finally:
        hop.stop()


def test_required_to_a_hop_without_starttls_defers_and_never_sends_plaintext(tmp_path):
    certs = make_certs(tmp_path / "pki")
    port = free_port()
    hop = NextHop(port).start()
    try:
        with outbound_daemon(f"smtp://127.0.0.1:{port}?starttls=required") as d:
            send(d)
            deferred = wait_for(lambda: len(d.log_lines("deferred")) >= 2 and
                                d.log_lines("deferred"))
            assert 'reply="454 4.7.0' in deferred[0]
            assert "STARTTLS" in deferred[0]
            time.sleep(0.5)
            assert hop.recorder.snapshot() == []
            assert not d.log_lines("delivered")
            # The next hop learns STARTTLS: a later retry delivers the queued message, over TLS.
            hop.stop()
            hop = TlsNextHop(port, server_context(certs)).start()
            msgs = wait_for(lambda: hop.recorder.snapshot(), 30)
            assert len(msgs) == 1 and hop.recorder.sessions()[0][0] == "TLSv1.2"
            assert wait_for(lambda: d.log_lines("delivered"))
        assert queued_ids(d) == []
    finally:
        hop.stop()


def test_required_without_a_ca_file_encrypts_without_verifying(tmp_path):
    certs = make_certs(tmp_path / "pki")
    hop = TlsNextHop(free_port(), server_context(certs)).start()
    try:
        with outbound_daemon(f"smtp://127.0.0.1:{hop.port}?starttls=required") as d:
            send(d)
            assert wait_for(lambda: hop.recorder.snapshot())
            assert hop.recorder.sessions()[0][0] == "TLSv1.2"
            line = wait_for(lambda: d.log_lines("tls_out"))[0]
            assert "result=ok" in line and "verified=no" in line
            assert "starttls=required" in line
    finally:
        hop.stop()


def test_optional_is_the_default_and_uses_tls_when_offered(tmp_path):
    certs = make_certs(tmp_path / "pki")
    hop = TlsNextHop(free_port(), server_context(certs)).start()
    try:
        with outbound_daemon(f"smtp://127.0.0.1:{hop.port}") as d:
            send(d)
            assert wait_for(lambda: hop.recorder.snapshot())
            assert hop.recorder.sessions()[0][0] == "TLSv1.2"
            line = wait_for(lambda: d.log_lines("tls_out"))[0]
            assert "result=ok" in line and "verified=no" in line
            assert "starttls=optional" in line
    finally:
        hop.stop()


def test_optional_to_a_plain_hop_delivers_in_plaintext():
    hop = NextHop(free_port()).start()
    try:
        with outbound_daemon(f"smtp://127.0.0.1:{hop.port}?starttls=optional") as d:
            send(d)
            msgs = wait_for(lambda: hop.recorder.snapshot())
            assert len(msgs) == 1 and b"secret body" in msgs[0][2]
            assert wait_for(lambda: d.log_lines("delivered"))
            assert d.log_lines("tls_out") == []
    finally:
        hop.stop()


def test_off_never_starts_tls_even_when_offered(tmp_path):
    certs = make_certs(tmp_path / "pki")
    hop = TlsNextHop(free_port(), server_context(certs)).start()
    try:
        with outbound_daemon(f"smtp://127.0.0.1:{hop.port}?starttls=off") as d:
            send(d)
            assert wait_for(lambda: hop.recorder.snapshot())
            assert hop.recorder.sessions() == [None]
            assert d.log_lines("tls_out") == []
    finally:
        hop.stop()


def test_optional_falls_back_to_plaintext_after_a_failed_handshake(tmp_path):
    certs = make_certs(tmp_path / "pki")
    hop = TlsNextHop(free_port(), server_context(certs, tls13_only=True)).start()
    try:
        with outbound_daemon(f"smtp://127.0.0.1:{hop.port}", shards=1) as d:
            send(d)
            # First attempt: STARTTLS, the handshake fails, the recipient is deferred (no
            # plaintext on that connection); the retry goes in plaintext.
            msgs = wait_for(lambda: hop.recorder.snapshot())
            assert len(msgs) == 1
            assert hop.recorder.sessions() == [None]
            failed = d.log_lines("tls_out")
            assert len(failed) == 1
            assert "result=failed" in failed[0] and "fallback=plaintext" in failed[0]
            assert len(d.log_lines("deferred")) == 1
            assert wait_for(lambda: d.log_lines("delivered"))
    finally:
        hop.stop()


def test_required_never_falls_back_after_a_failed_handshake(tmp_path):
    certs = make_certs(tmp_path / "pki")
    hop = TlsNextHop(free_port(), server_context(certs, tls13_only=True)).start()
    try:
        with outbound_daemon(f"smtp://127.0.0.1:{hop.port}?starttls=required", shards=1) as d:
            send(d)
            assert wait_for(lambda: len(d.log_lines("tls_out")) >= 2)  # first try and a retry
            assert all("result=failed" in l and "fallback=none" in l
                       for l in d.log_lines("tls_out"))
            assert hop.recorder.snapshot() == []
            assert not d.log_lines("delivered")
    finally:
        hop.stop()


def test_next_connection_resumes_the_tls_session(tmp_path):
    certs = make_certs(tmp_path / "pki")
    hop = TlsNextHop(free_port(), server_context(certs)).start()
    hop.recorder.close_after_data = True
    try:
        # One shard: sessions are kept per shard and next hop.
        with outbound_daemon(f"smtp://localhost:{hop.port}?starttls=required", certs.ca,
                             shards=1) as d:
            send(d, "first")
            assert wait_for(lambda: len(d.log_lines("delivered")) == 1)
            time.sleep(0.5)  # the next hop has hung up by now
            send(d, "second")
            assert wait_for(lambda: len(d.log_lines("delivered")) == 2)
            sessions = hop.recorder.sessions()
            assert [s[2] for s in sessions] == [False, True]
            lines = d.log_lines("tls_out")
            assert len(lines) == 2 and all("verified=yes" in l for l in lines)
            # The hang-up after the first message lost nothing.
            assert not d.log_lines("deferred")
    finally:
        hop.stop()


def check(tmp_path, route, ca_file=None):
    d = outbound_daemon(route, ca_file)
    r = subprocess.run([SLUICED, "--config", str(d.config), "--check"], capture_output=True,
                       text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


def test_config_checks_for_outbound_tls(tmp_path):
    certs = make_certs(tmp_path / "pki")
    # Verification needs a host name: an IP literal with a CA file is refused.
    rc, out = check(tmp_path, "smtp://127.0.0.1:2526?starttls=required", certs.ca)
    assert rc == 1 and "verifies the next hop against tls.ca_file by host name" in out
    # Required without a CA file: allowed, with a warning that nothing is verified.
    rc, out = check(tmp_path, "smtp://127.0.0.1:2526?starttls=required")
    assert rc == 0 and "does not verify the next hop" in out
    # A CA file that cannot be read.
    rc, out = check(tmp_path, "smtp://localhost:2526?starttls=required", tmp_path / "missing.pem")
    assert rc == 1 and "tls.ca_file: cannot read" in out
    rc, out = check(tmp_path, "smtp://localhost:2526?starttls=required", certs.ca)
    assert rc == 0, out
