"""STARTTLS, implicit TLS and SMTP AUTH in a real sluiced, with real clients:
Python's smtplib, swaks and openssl s_client."""
import base64
import smtplib
import socket
import ssl
import subprocess
import time

from certs import make_certs
from harness import SLUICECTL, Daemon, Raw, code, free_port


def tls_daemon(tmp_path, mx_tls="optional", extra=""):
    certs = make_certs(tmp_path / "pki")
    sub_port, imp_port = free_port(), free_port()
    d = Daemon(extra=f'''
[tls]
certificate = "{certs.ecdsa_chain}"
key = "{certs.ecdsa_key}"

[[listener]]
name = "submission"
address = "127.0.0.1:{sub_port}"
role = "submission"
tls = "required"

[[listener]]
name = "smtps"
address = "127.0.0.1:{imp_port}"
role = "submission"
tls = "implicit"
''' + extra)
    text = d.config.read_text().replace('role = "mx"\n', f'role = "mx"\ntls = "{mx_tls}"\n', 1)
    text = text.replace('"example.test" = "maildir:maildir"',
                        '"example.test" = "maildir:maildir"\n"*" = "maildir:outbound"')
    d.config.write_text(text)
    d.sub_port, d.imp_port, d.certs = sub_port, imp_port, certs
    return d


def context(certs):
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.check_hostname = False
    return ctx


def add_user(d, name, password, *extra):
    r = subprocess.run([SLUICECTL, "--config", str(d.config), "user", "add", name, *extra],
                       input=password + "\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_starttls_with_smtplib_and_swaks(tmp_path):
    with tls_daemon(tmp_path) as d:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.ehlo("client.test")
            assert s.has_extn("starttls") and not s.has_extn("auth")
            s.starttls(context=context(d.certs))
            s.ehlo("client.test")
            assert not s.has_extn("starttls")
            assert s.sock.version() == "TLSv1.2"
            s.sendmail("a@outside.test", ["user@example.test"], "Subject: tls\r\n\r\nsecret\r\n")
        raw = d.messages()[0].read_bytes()
        assert b"with ESMTPS id" in raw and b"TLSv1.2" in raw
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{d.port}", "--tls", "--from",
                            "a@outside.test", "--to", "user@example.test"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout
        assert len(d.messages()) == 2
        assert any("result=ok" in l and "version=TLSv1.2" in l for l in d.log_lines("tls"))


def test_openssl_s_client_starttls_and_old_protocols_refused(tmp_path):
    with tls_daemon(tmp_path) as d:
        r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{d.port}",
                            "-CAfile", str(d.certs.ca), "-brief"], input="QUIT\n",
                           capture_output=True, text=True, timeout=30)
        assert "Verification: OK" in r.stderr or "Verify return code: 0" in r.stdout + r.stderr, r.stderr
        for proto in ["-tls1", "-tls1_1"]:
            r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", proto, "-connect",
                                f"127.0.0.1:{d.port}"], input="", capture_output=True, text=True, timeout=30)
            assert r.returncode != 0


def test_starttls_injection_is_discarded(tmp_path):
    with tls_daemon(tmp_path) as d:
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        # CVE-2011-0411: a command in the same packet as STARTTLS must not run under TLS.
        c.send("STARTTLS\r\nMAIL FROM:<evil@outside.test>\r\n")
        assert code(c.reply()) == "220 2.0.0"
        tls = context(d.certs).wrap_socket(c.sock, server_hostname="mx.example.test")
        tls.settimeout(2)
        tls.sendall(b"RCPT TO:<user@example.test>\r\n")
        reply = tls.recv(4096).decode()
        # The injected MAIL was thrown away: RCPT has no transaction (and no EHLO yet).
        assert reply.startswith("503 5.5.1"), reply
        assert "event=starttls_injection" in d.log()
        tls.sendall(b"STARTTLS\r\n")
        assert tls.recv(4096).decode().startswith("503 5.5.1")


def test_implicit_tls(tmp_path):
    with tls_daemon(tmp_path) as d:
        with smtplib.SMTP_SSL("127.0.0.1", d.imp_port, context=context(d.certs)) as s:
            code_, _ = s.ehlo("client.test")
            assert code_ == 250 and s.has_extn("auth")
            assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]


def test_auth_relays_only_after_login(tmp_path):
    d = tls_daemon(tmp_path)
    add_user(d, "alice", "correct horse battery staple")
    with d:
        with smtplib.SMTP("127.0.0.1", d.sub_port) as s:
            s.ehlo("client.test")
            assert not s.has_extn("auth")          # never before TLS
            # AUTH before TLS on submission: 538 5.7.11 (RFC 4954 §4)
            c, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0x").decode())
            assert c == 538
            c, _ = s.docmd("MAIL", "FROM:<alice@example.test>")
            assert c == 530                         # tls = "required"
            s.starttls(context=context(d.certs))
            s.ehlo("client.test")
            assert s.has_extn("auth")
            try:
                s.login("alice", "wrong")
                assert False, "wrong password accepted"
            except smtplib.SMTPAuthenticationError as e:
                assert e.smtp_code == 535
            s.login("alice", "correct horse battery staple")
            s.sendmail("alice@example.test", ["friend@elsewhere.test"], "Subject: out\r\n\r\nhi\r\n")
        out = list((d.dir / "outbound" / "new").iterdir())
        assert len(out) == 1
        raw = out[0].read_bytes()
        assert b"(authenticated as alice)" in raw and b"with ESMTPSA" in raw
        granted = [l for l in d.log_lines("rcpt") if "code=G108" in l]
        assert len(granted) == 1
        assert " user=alice " in granted[0]  # the principal, for log-report and purge
        assert "correct horse" not in d.log() and "wrong" not in d.log()
        # LOGIN works too, on the implicit-TLS port.
        with smtplib.SMTP_SSL("127.0.0.1", d.imp_port, context=context(d.certs)) as s:
            s.ehlo("client.test")
            s.login("alice", "correct horse battery staple", initial_response_ok=False)
        # No AUTH on the mx listener, even under TLS; no relay there.
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.ehlo("client.test")
            s.starttls(context=context(d.certs))
            s.ehlo("client.test")
            assert not s.has_extn("auth")
            s.mail("alice@example.test")
            c, _ = s.rcpt("friend@elsewhere.test")
            assert c == 554


def test_auth_cancel_and_bad_base64(tmp_path):
    with tls_daemon(tmp_path) as d:
        with smtplib.SMTP_SSL("127.0.0.1", d.imp_port, context=context(d.certs)) as s:
            s.ehlo("client.test")
            c, _ = s.docmd("AUTH", "PLAIN")
            assert c == 334
            c, _ = s.docmd("*")
            assert c == 501
            c, _ = s.docmd("AUTH", "PLAIN !!!notbase64")
            assert c == 501
            c, _ = s.docmd("AUTH", "CRAM-MD5")
            assert c == 504


def test_brute_force_is_throttled_but_the_right_password_works_elsewhere(tmp_path):
    d = tls_daemon(tmp_path)
    add_user(d, "bob", "s3cret-enough")
    with d:
        throttled = False
        for i in range(12):
            try:
                with smtplib.SMTP_SSL("127.0.0.1", d.imp_port, context=context(d.certs)) as s:
                    s.ehlo("client.test")
                    s.login("bob", f"guess{i}")
            except smtplib.SMTPAuthenticationError as e:
                if e.smtp_code == 454:
                    throttled = True
                    break
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                throttled = True
                break
        assert throttled
        assert any("result=throttled" in l for l in d.log_lines("auth"))
        # From another address (127.0.0.2) the right password still works.
        s = smtplib.SMTP_SSL("127.0.0.1", d.imp_port, context=context(d.certs),
                             source_address=("127.0.0.2", 0))
        s.ehlo("client.test")
        s.login("bob", "s3cret-enough")
        s.quit()


def test_sender_tied_to_login(tmp_path):
    d = tls_daemon(tmp_path)
    d.config.write_text(d.config.read_text().replace('tls = "implicit"\n', 'tls = "implicit"\nsender_login_match = true\n'))
    add_user(d, "carol", "pw-for-carol-1", "--senders", "carol@example.test")
    with d:
        with smtplib.SMTP_SSL("127.0.0.1", d.imp_port, context=context(d.certs)) as s:
            s.ehlo("client.test")
            s.login("carol", "pw-for-carol-1")
            c, _ = s.docmd("MAIL", "FROM:<ceo@example.test>")
            assert c == 553
            c, _ = s.docmd("MAIL", "FROM:<carol@example.test>")
            assert c == 250
