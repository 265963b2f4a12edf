"""Hostile clients, one numbered case each : the exact reply code, no
buffer growth, nothing half-received ever stored."""
import socket
import time

from harness import Daemon, Raw, code


def helo(c):
    return c.cmd("EHLO attacker.test")


def test_01_command_line_too_long():
    with Daemon() as d:
        c = Raw(d.port)
        helo(c)
        assert code(c.cmd("NOOP " + "x" * 600)) == "500 5.5.2"
        # 512 octets with CRLF is still fine (RFC 5321 §4.5.3.1.4).
        assert code(c.cmd("NOOP " + "x" * 505)) == "250 2.0.0"
        # An endless line costs nothing: 2 MB without CRLF, then a valid command.
        c.send(b"y" * (2 * 1024 * 1024))
        assert code(c.cmd("")) == "500 5.5.2"
        assert code(c.cmd("NOOP")) == "250 2.0.0"


def test_02_address_length_limits():
    with Daemon() as d:
        c = Raw(d.port)
        helo(c)
        assert code(c.cmd("MAIL FROM:<%s@outside.test>" % ("a" * 65))) == "501 5.1.7"
        assert code(c.cmd("MAIL FROM:<%s@outside.test>" % ("a" * 64))) == "250 2.1.0"
        assert code(c.cmd("RCPT TO:<%s@example.test>" % ("b" * 65))) == "501 5.1.3"
        long_domain = ".".join(["d" * 63] * 4) + ".test"   # > 255 octets
        assert code(c.cmd("RCPT TO:<u@%s>" % long_domain)) == "501 5.1.3"


def test_03_declared_size_over_limit():
    with Daemon(limits='message_size = "10KiB"') as d:
        c = Raw(d.port)
        ehlo = helo(c)
        assert "250-SIZE 10240" in ehlo
        assert code(c.cmd("MAIL FROM:<a@outside.test> SIZE=10241")) == "552 5.3.4"
        assert code(c.cmd("MAIL FROM:<a@outside.test> SIZE=99999999999999999999999")) == "552 5.3.4"
        assert code(c.cmd("MAIL FROM:<a@outside.test> SIZE=10240")) == "250 2.1.0"


def test_04_actual_size_over_limit():
    with Daemon(limits='message_size = "10KiB"') as d:
        c = Raw(d.port)
        helo(c)
        c.cmd("MAIL FROM:<a@outside.test>")
        c.cmd("RCPT TO:<user@example.test>")
        assert c.cmd("DATA")[0].startswith("354")
        c.send(("x" * 70 + "\r\n") * 2000 + ".\r\n")
        assert code(c.reply()) == "552 5.3.4"
        assert code(c.cmd("NOOP")) == "250 2.0.0"
        assert d.messages() == []


def test_05_recipient_limit():
    with Daemon(limits="recipients = 3") as d:
        c = Raw(d.port)
        helo(c)
        c.cmd("MAIL FROM:<a@outside.test>")
        for i in range(3):
            assert code(c.cmd(f"RCPT TO:<u{i}@example.test>")) == "250 2.1.5"
        assert code(c.cmd("RCPT TO:<u9@example.test>")) == "452 4.5.3"


def test_06_too_many_errors():
    with Daemon(limits="max_errors = 3") as d:
        c = Raw(d.port)
        assert code(c.cmd("BOGUS")) == "500 5.5.1"
        assert code(c.cmd("BOGUS")) == "500 5.5.1"
        c.send("BOGUS\r\n")
        assert code(c.reply()) == "500 5.5.1"
        assert code(c.reply()) == "421 4.7.0"
        assert c.closed()


def test_07_command_timeout():
    with Daemon(limits='command_timeout = "1s"') as d:
        c = Raw(d.port)
        helo(c)
        start = time.time()
        assert code(c.reply()) == "421 4.4.2"
        assert time.time() - start < 5
        assert c.closed()


def test_08_trickled_command_hits_the_deadline():
    with Daemon(limits='command_deadline = "2s"') as d:
        c = Raw(d.port)
        helo(c)
        start = time.time()
        got = None
        for ch in "NOOP this is a very slow command line that never ends":
            try:
                c.send(ch)
            except OSError:
                break
            c.sock.settimeout(0.3)
            try:
                got = c.reply()
                break
            except socket.timeout:
                continue
        assert got is not None and code(got) == "421 4.4.2"
        assert time.time() - start < 8


def test_09_minimum_data_rate():
    with Daemon(limits='command_deadline = "2s"\nmin_data_rate = "10KiB"') as d:
        c = Raw(d.port)
        helo(c)
        c.cmd("MAIL FROM:<a@outside.test>")
        c.cmd("RCPT TO:<user@example.test>")
        c.cmd("DATA")
        got = None
        for _ in range(40):
            try:
                c.send("x")
            except OSError:
                break
            c.sock.settimeout(0.25)
            try:
                got = c.reply()
                break
            except socket.timeout:
                continue
        assert got is not None and code(got) == "421 4.4.2"
        assert d.messages() == []


def test_10_bare_lf_in_data_is_refused_and_never_stored():
    with Daemon() as d:
        c = Raw(d.port)
        helo(c)
        c.cmd("MAIL FROM:<a@outside.test>")
        c.cmd("RCPT TO:<user@example.test>")
        c.cmd("DATA")
        # The classic smuggling payload: <LF>.<CR><LF> then a second transaction.
        c.send("Subject: x\r\n\r\nhello\n.\r\nMAIL FROM:<admin@example.test>\r\n"
               "RCPT TO:<user@example.test>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n")
        assert code(c.reply()) == "521 5.5.2"
        assert c.closed()
        assert d.messages() == []


def test_11_bare_cr_in_data_and_bare_lf_in_command():
    with Daemon() as d:
        c = Raw(d.port)
        helo(c)
        c.cmd("MAIL FROM:<a@outside.test>")
        c.cmd("RCPT TO:<user@example.test>")
        c.cmd("DATA")
        c.send("hello\r.\r\n")
        assert code(c.reply()) == "521 5.5.2"
        assert c.closed()
        c2 = Raw(d.port)
        c2.send("EHLO x.test\n")
        assert code(c2.reply()) == "521 5.5.2"
        assert c2.closed()
        assert d.messages() == []


def test_12_early_talker():
    with Daemon(limits='greeting_delay = "1s"') as d:
        c = Raw(d.port, greeting=False)
        c.send("EHLO spammer.test\r\n")
        assert code(c.reply()) == "554 5.5.0"
        assert c.closed()
        # A polite client waits and is served.
        ok = Raw(d.port)
        assert ok.greeting[0].startswith("220 ")


def test_13_pipelining_without_ehlo():
    with Daemon() as d:
        c = Raw(d.port)
        assert c.cmd("HELO old.test")[0].startswith("250 ")
        c.send("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\n")
        assert code(c.reply()) == "554 5.5.0"
        assert c.closed()


def test_14_pipelining_after_ehlo_before_its_reply():
    with Daemon() as d:
        c = Raw(d.port)
        c.send("EHLO eager.test\r\nMAIL FROM:<a@outside.test>\r\n")
        lines = c.reply()
        assert lines[0].startswith("250")
        assert code(c.reply()) == "554 5.5.0"
        assert c.closed()


def test_15_nul_and_8bit():
    with Daemon() as d:
        c = Raw(d.port)
        helo(c)
        assert code(c.cmd("NOOP\0")) == "500 5.5.2"
        assert code(c.cmd("MAIL FROM:<j\u00f6rg@outside.test>")) == "553 5.6.7"
        assert code(c.cmd("MAIL FROM:<j\u00f6rg@outside.test> SMTPUTF8")) == "250 2.1.0"
        assert code(c.cmd("RCPT TO:<us\u00e9r@example.test>")) == "250 2.1.5"


def test_16_malformed_paths():
    with Daemon() as d:
        c = Raw(d.port)
        helo(c)
        assert code(c.cmd("MAIL FROM:a@outside.test")) == "501 5.5.4"
        assert code(c.cmd("MAIL FROM:<a@outside.test")) == "501 5.1.7"
        assert code(c.cmd("MAIL FROM:<a@@outside.test>")) == "501 5.1.7"
        assert code(c.cmd("MAIL FROM:<a@outside.test> FOO=bar")) == "555 5.5.4"
        assert code(c.cmd("MAIL FROM:<a@outside.test> BODY=BINARYMIME")) == "504 5.5.4"


def test_17_connections_per_ip():
    d = Daemon()
    d.config.write_text(d.config.read_text().replace("shards = 2", "shards = 2\nmax_connections_per_ip = 2"))
    with d:
        a, b = Raw(d.port), Raw(d.port)
        c = Raw(d.port, greeting=False)
        assert code(c.reply()) == "421 4.7.0"
        assert c.closed()
        a.close()
        time.sleep(0.3)
        e = Raw(d.port)
        assert e.greeting[0].startswith("220 ")
        b.close()


def test_18_deep_pipeline_is_answered_in_order_without_loss():
    # 20,000 RSETs are a junk-command flood (test_limits.py); the limit is raised here so
    # that they can stand for any deep pipeline.
    with Daemon(limits="junk_commands = 100000") as d:
        c = Raw(d.port)
        helo(c)
        n = 20000
        c.send("RSET\r\n" * n + "MAIL FROM:<a@outside.test>\r\n")
        for i in range(n):
            assert code(c.reply()) == "250 2.0.0", i
        assert code(c.reply()) == "250 2.1.0"
