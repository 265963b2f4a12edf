"""Real clients deliver through a real sluiced into its maildir, byte for byte."""
import email
import smtplib
import subprocess

from harness import Daemon, Raw, code


def body_of(path):
    """The stored message without the trace fields Sluice adds in front of it."""
    data = path.read_bytes()
    lines = data.split(b"\r\n")
    i = 0
    while lines[i].startswith((b"Return-Path:", b"Delivered-To:")):
        i += 1
    assert lines[i].startswith(b"Received: from ")
    i += 1
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


def test_smtplib_message_arrives_byte_for_byte():
    content = (b"From: a@outside.test\r\nTo: user@example.test\r\nSubject: dots\r\n\r\n"
               b".leading dot line\r\n..two dots\r\n.\r\nnot the end\r\nlast line\r\n")
    with Daemon() as d:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.ehlo("client.test")
            assert s.has_extn("pipelining") and s.has_extn("size") and s.has_extn("8bitmime")
            assert s.has_extn("enhancedstatuscodes") and s.has_extn("smtputf8")
            s.sendmail("a@outside.test", ["user@example.test"], content)
        msgs = d.messages()
        assert len(msgs) == 1
        assert body_of(msgs[0]) == content
        raw = msgs[0].read_bytes()
        assert raw.startswith(b"Return-Path: <a@outside.test>\r\nDelivered-To: user@example.test\r\n")
        assert b"by mx.example.test (Sluice) with ESMTP id " in raw
        assert b"for <user@example.test>;" in raw
        queued = d.log_lines("queued")
        assert len(queued) == 1
        # size= is the message as received (with our Received:, without the maildir's
        # Return-Path and Delivered-To).
        size = int(queued[0].split(" size=")[1].split()[0])
        assert len(content) < size < len(raw)
        rcpt = d.log_lines("rcpt")
        assert len(rcpt) == 1 and "code=L101" in rcpt[0] and "to=<user@example.test>" in rcpt[0]


def test_swaks_delivers():
    with Daemon() as d:
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{d.port}", "--from", "a@outside.test",
                            "--to", "User@Example.TEST", "--helo", "client.test",
                            "--body", "hello from swaks", "--pipeline"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "250 2.0.0 Ok: queued as" in r.stdout
        msgs = d.messages()
        assert len(msgs) == 1
        raw = msgs[0].read_bytes()
        # The canonical form that was decided on is the form stored.
        assert b"Delivered-To: User@example.test\r\n" in raw
        assert b"hello from swaks" in raw


def test_smtp_source_many_sessions():
    with Daemon() as d:
        r = subprocess.run(["/usr/sbin/smtp-source", "-s", "5", "-m", "200", "-l", "2048",
                            "-f", "sender@outside.test", "-t", "user@example.test",
                            f"127.0.0.1:{d.port}"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        msgs = d.messages()
        assert len(msgs) == 200
        for m in msgs[:10]:
            parsed = email.message_from_bytes(m.read_bytes())
            assert parsed["Received"].startswith("from ")


def test_smtp_source_reusing_connections():
    with Daemon() as d:
        r = subprocess.run(["/usr/sbin/smtp-source", "-d", "-s", "4", "-m", "400", "-l", "512",
                            "-f", "sender@outside.test", "-t", "user@example.test",
                            f"127.0.0.1:{d.port}"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(d.messages()) == 400


def test_pipelined_transaction_replies_in_order():
    with Daemon() as d:
        c = Raw(d.port)
        ehlo = c.cmd("EHLO client.test")
        assert "250-PIPELINING" in ehlo
        c.send("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\n"
               "RCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<postmaster@example.test>\r\nDATA\r\n")
        assert code(c.reply()) == "250 2.1.0"
        assert code(c.reply()) == "250 2.1.5"
        assert code(c.reply()) == "554 5.7.1"   # relay denied (D111)
        assert code(c.reply()) == "250 2.1.5"
        assert c.reply()[0].startswith("354")
        c.send("Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<user@example.test>\r\n")
        assert code(c.reply()).startswith("250 2.0.0")
        assert code(c.reply()) == "250 2.1.0"
        assert code(c.reply()) == "250 2.1.5"
        assert code(c.cmd("RSET")) == "250 2.0.0"
        assert code(c.cmd("QUIT")) == "221 2.0.0"
        assert c.closed()
        assert len(d.messages()) == 1
        denied = [l for l in d.log_lines("rcpt") if "code=D111" in l]
        assert len(denied) == 1 and "to=<nobody@elsewhere.test>" in denied[0]


def test_basic_commands():
    with Daemon() as d:
        c = Raw(d.port)
        assert c.greeting[0].startswith("220 mx.example.test ")
        assert code(c.cmd("NOOP")) == "250 2.0.0"
        assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "503 5.5.1"
        assert c.cmd("HELO client.test")[0] == "250 mx.example.test"
        assert code(c.cmd("VRFY user")) == "252 2.5.0"
        assert code(c.cmd("EXPN list")) == "502 5.5.1"
        assert code(c.cmd("HELP")) == "214 2.0.0"
        assert code(c.cmd("RCPT TO:<user@example.test>")) == "503 5.5.1"
        assert code(c.cmd("DATA")) == "503 5.5.1"
        assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "250 2.1.0"
        assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "503 5.5.1"
        assert code(c.cmd("DATA")) == "554 5.5.1"
        assert code(c.cmd("BOGUS")) == "500 5.5.1"
        assert code(c.cmd("STARTTLS")) == "502 5.5.1"
        assert code(c.cmd("QUIT")) == "221 2.0.0"
