"""The outbound SMTP client (daemon/smtp_client.hpp) and the DSN builder (daemon/dsn.hpp)
against real next hops, through tests/unit/daemon/smtp_client_driver.cpp.

Peers: Postfix's smtp-sink (pipelining, dumps every transaction to a file; -f/-r/-Q/-q make
it refuse, defer, send 421 or hang up after a given command) and an aiosmtpd server that
records every envelope and its data byte for byte, refuses chosen recipients with 550 or
450, refuses chosen data, replies slowly and optionally announces PIPELINING. A raw
socket server covers what neither can do: dropping the connection in the middle of DATA
or after the final dot without a reply.

The driver comes from $SMTP_CLIENT_DRIVER (default: build/tests/unit/daemon/...).
"""

import asyncio
import email
import email.policy
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest
from aiosmtpd.controller import Controller

REPO = pathlib.Path(__file__).resolve().parents[2]
DRIVER = os.environ.get(
    "SMTP_CLIENT_DRIVER", str(REPO / "build" / "tests" / "unit" / "daemon" / "smtp_client_driver"))
SMTP_SINK = "/usr/sbin/smtp-sink"

BODY = (b"Received: from client.test by mx.example.test\r\n"
        b"From: Alice <alice@outside.test>\r\n"
        b"To: user@example.test\r\n"
        b"Subject: test message\r\n"
        b"Message-ID: <m1@outside.test>\r\n"
        b"\r\n"
        b".leading dot must survive\r\n"
        b"..two dots\r\n"
        b".\r\n"
        b"normal line\r\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def deliver(port, messages, *extra, timeout=30):
    """messages: [(from, [rcpt...], path)]. Returns the driver's JSON."""
    args = [DRIVER, "deliver", "127.0.0.1", str(port), *extra]
    for sender, rcpts, path in messages:
        args += ["--from", sender, "--to", ",".join(rcpts), "--data", str(path)]
    out = subprocess.run(args, capture_output=True, timeout=timeout)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return json.loads(out.stdout.decode("utf-8", errors="replace"))


def kinds(result, t=0):
    return [r["kind"] for r in result["transactions"][t]]


@pytest.fixture
def msgfile(tmp_path):
    def make(data=BODY, name="msg"):
        p = tmp_path / name
        p.write_bytes(data)
        return p
    return make


# --------------------------------------------------------------------------------------
# smtp-sink


class Sink:
    def __init__(self, *options):
        # smtp-sink drops privileges to nobody before dumping: a world-writable directory
        # outside pytest's private (0700) tmp tree.
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sluice-sink-"))
        self.dir.chmod(0o777)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-d", str(self.dir) + "/%Y%m%d%H%M%S.", *options,
             f"127.0.0.1:{self.port}", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(self.port)

    def dumps(self, expect=None, timeout=5):
        """The dump files; with `expect`, waits until that many exist."""
        deadline = time.time() + timeout
        while True:
            files = sorted(self.dir.iterdir())
            if expect is None or len(files) >= expect or time.time() > deadline:
                return [p.read_bytes() for p in files]
            time.sleep(0.05)

    def stop(self):
        self.proc.kill()  # our own child, by its pid
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sink():
    sinks = []

    def start(*options):
        s = Sink(*options)
        sinks.append(s)
        return s
    yield start
    for s in sinks:
        s.stop()


def test_sink_pipelined_delivery_byte_for_byte(sink, msgfile):
    s = sink()
    r = deliver(s.port, [("alice@outside.test", ["u1@example.test", "u2@example.test"], msgfile())])
    assert "PIPELINING" in r["supports"]
    assert kinds(r) == ["delivered", "delivered"]
    assert r["state"] == "closed" and r["close_reason"] == "QUIT"
    dumps = s.dumps(expect=1)
    assert len(dumps) == 1
    d = dumps[0]
    assert b"X-Mail-Args: <alice@outside.test>\n" in d
    assert b"X-Rcpt-Args: <u1@example.test>\nX-Rcpt-Args: <u2@example.test>\n" in d
    # The dump ends with the message (unstuffed, LF line ends) and an empty line.
    assert d.endswith(BODY.replace(b"\r\n", b"\n") + b"\n")


def test_sink_large_message_two_transactions_one_connection(sink, msgfile):
    s = sink()
    big = b"".join(b"%08d .line with some text to make it longer\r\n" % i for i in range(120000))
    big += b".final\r\n"
    r = deliver(s.port, [("a@outside.test", ["x@example.test"], msgfile(big, "big")),
                         ("", ["y@example.test"], msgfile())])
    assert [kinds(r, 0), kinds(r, 1)] == [["delivered"], ["delivered"]]
    dumps = s.dumps(expect=2)
    assert len(dumps) == 2
    by_rcpt = {b"x" if b"<x@example.test>" in d else b"y": d for d in dumps}
    assert by_rcpt[b"x"].endswith(big.replace(b"\r\n", b"\n") + b"\n")
    assert b"X-Mail-Args: <>\n" in by_rcpt[b"y"]


@pytest.mark.parametrize("option,command,kind,code", [
    ("-f", "RCPT", "failed", 500),    # every RCPT 5xx: no DATA, RSET
    ("-r", "RCPT", "deferred", 450),
    ("-f", "MAIL", "failed", 500),
    ("-r", "MAIL", "deferred", 450),
    ("-f", ".", "failed", 500),       # refused at the end of data
    ("-r", ".", "deferred", 450),
    ("-f", "DATA", "failed", 500),
])
def test_sink_refusals(sink, msgfile, option, command, kind, code):
    s = sink(option, command)
    r = deliver(s.port, [("a@outside.test", ["x@example.test", "y@example.test"], msgfile())])
    for res in r["transactions"][0]:
        assert res["kind"] == kind, res
        assert res["code"] == code
        assert res["diagnostic"].startswith(f"smtp; {code} ")
    assert r["state"] == "closed"
    if command != ".":
        time.sleep(0.2)
        assert s.dumps() == []


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA", "."])
def test_sink_421_defers_everything(sink, msgfile, command):
    s = sink("-Q", command)
    r = deliver(s.port, [("a@outside.test", ["x@example.test", "y@example.test"], msgfile())])
    assert kinds(r) == ["deferred", "deferred"]
    assert r["transactions"][0][0]["code"] == 421
    assert r["state"] == "closed"


@pytest.mark.parametrize("command", ["RCPT", "DATA", "."])
def test_sink_hangup_is_deferred_never_delivered(sink, msgfile, command):
    s = sink("-q", command)
    r = deliver(s.port, [("a@outside.test", ["x@example.test"], msgfile())])
    assert kinds(r) == ["deferred"]
    assert r["transactions"][0][0]["enhanced"] == "4.4.2"
    assert r["state"] == "failed"


# --------------------------------------------------------------------------------------
# aiosmtpd


class Recorder:
    """Records envelopes; refuses or delays recipients by their local part."""

    def __init__(self, pipelining=False, rcpt_delay=0.0):
        self.pipelining = pipelining
        self.rcpt_delay = rcpt_delay
        self.envelopes = []
        self.commands = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.commands.append(("MAIL", address, options))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.commands.append(("RCPT", address, options))
        local = address.split("@")[0]
        if local.startswith("slow"):
            await asyncio.sleep(self.rcpt_delay)
        if local.startswith("reject5"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("reject4"):
            return "450 4.2.1 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if any(a.startswith("datafail") for a in envelope.rcpt_tos):
            return "554 5.6.0 Content refused"
        self.envelopes.append({
            "peer": session.peer,
            "from": envelope.mail_from,
            "options": list(envelope.mail_options),
            "rcpts": list(envelope.rcpt_tos),
            "data": envelope.original_content,
        })
        return "250 2.0.0 Ok: queued"


@pytest.fixture
def aio():
    controllers = []

    def start(**kw):
        handler = Recorder(pipelining=kw.pop("pipelining", False),
                           rcpt_delay=kw.pop("rcpt_delay", 0.0))
        c = Controller(handler, hostname="127.0.0.1", port=free_port(),
                       server_hostname="next-hop.test", enable_SMTPUTF8=True, **kw)
        c.start()
        controllers.append(c)
        return c, handler
    yield start
    for c in controllers:
        c.stop()


@pytest.mark.parametrize("pipelining", [False, True])
def test_aiosmtpd_per_recipient_results(aio, msgfile, pipelining):
    c, h = aio(pipelining=pipelining)
    rcpts = ["ok1@example.test", "reject5@example.test", "reject4@example.test",
             "ok2@example.test"]
    r = deliver(c.port, [("alice@outside.test", rcpts, msgfile())])
    assert ("PIPELINING" in r["supports"]) == pipelining
    res = r["transactions"][0]
    assert [x["kind"] for x in res] == ["delivered", "failed", "deferred", "delivered"]
    assert res[1]["diagnostic"] == ("smtp; 550 5.1.1 <reject5@example.test>: Recipient "
                                    "address rejected: User unknown")
    assert res[1]["in_reply_to"] == "RCPT"
    assert res[2]["enhanced"] == "4.2.1"
    assert len(h.envelopes) == 1
    env = h.envelopes[0]
    assert env["from"] == "alice@outside.test"
    assert env["rcpts"] == ["ok1@example.test", "ok2@example.test"]
    assert env["data"] == BODY  # byte for byte, dot-stuffing undone by the server
    assert f"SIZE={len(BODY)}" in env["options"]


@pytest.mark.parametrize("pipelining", [False, True])
def test_aiosmtpd_no_recipient_accepted_sends_no_data(aio, msgfile, pipelining):
    c, h = aio(pipelining=pipelining)
    r = deliver(c.port, [("a@outside.test", ["reject5@example.test", "reject4@example.test"],
                          msgfile()),
                         ("a@outside.test", ["ok@example.test"], msgfile())])
    assert kinds(r, 0) == ["failed", "deferred"]
    assert kinds(r, 1) == ["delivered"]  # the connection went on after RSET
    assert len(h.envelopes) == 1 and h.envelopes[0]["rcpts"] == ["ok@example.test"]


def test_aiosmtpd_data_refused(aio, msgfile):
    c, h = aio(pipelining=True)
    r = deliver(c.port, [("a@outside.test", ["datafail@example.test", "reject4@example.test"],
                          msgfile())])
    res = r["transactions"][0]
    assert [x["kind"] for x in res] == ["failed", "deferred"]
    assert res[0]["code"] == 554 and res[0]["in_reply_to"] == "end of data"
    assert h.envelopes == []


def test_aiosmtpd_connection_reuse(aio, msgfile):
    c, h = aio(pipelining=True)
    msgs = [("s%d@outside.test" % i, ["r%d@example.test" % i], msgfile(BODY, "m%d" % i))
            for i in range(5)]
    r = deliver(c.port, msgs)
    assert [kinds(r, i) for i in range(5)] == [["delivered"]] * 5
    assert len(h.envelopes) == 5
    assert len({e["peer"] for e in h.envelopes}) == 1  # one connection for all five
    assert [e["from"] for e in h.envelopes] == ["s%d@outside.test" % i for i in range(5)]


def test_aiosmtpd_8bit_and_smtputf8(aio, msgfile):
    c, h = aio(pipelining=True)
    data = "Subject: caf\u00e9\r\n\r\n\u20ac 100\r\n".encode()
    r = deliver(c.port, [("alice@outside.test", ["j\u00f6rg@example.test"], msgfile(data))])
    assert kinds(r) == ["delivered"]
    env = h.envelopes[0]
    assert "BODY=8BITMIME" in env["options"]
    assert "SMTPUTF8" in env["options"]
    assert env["rcpts"] == ["j\u00f6rg@example.test"]
    assert env["data"] == data


def test_aiosmtpd_size_limit_refused_before_sending(aio, msgfile):
    c, h = aio(data_size_limit=1000)
    big = b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n"
    r = deliver(c.port, [("a@outside.test", ["x@example.test"], msgfile(big, "big")),
                         ("a@outside.test", ["y@example.test"], msgfile())])
    assert r["size_limit"] == 1000
    res = r["transactions"][0][0]
    assert (res["kind"], res["code"], res["enhanced"]) == ("failed", 552, "5.3.4")
    assert res["diagnostic"] == ""  # decided here, not by the next hop
    assert kinds(r, 1) == ["delivered"]
    # Only the second message's MAIL reached the server; the big one was never offered.
    mails = [cmd for cmd in h.commands if cmd[0] == "MAIL"]
    assert len(mails) == 1
    assert f"SIZE={len(BODY)}" in mails[0][2]


def test_aiosmtpd_slow_reply_times_out_then_succeeds_with_time(aio, msgfile):
    c, h = aio(pipelining=True, rcpt_delay=1.5)
    r = deliver(c.port, [("a@outside.test", ["slow@example.test"], msgfile())],
                "--timeout-ms", "400")
    res = r["transactions"][0][0]
    assert res["kind"] == "deferred" and res["enhanced"] == "4.4.2"
    assert "rcpt" in res["text"]
    assert r["state"] == "failed"
    r = deliver(c.port, [("a@outside.test", ["slow@example.test"], msgfile())],
                "--timeout-ms", "5000")
    assert kinds(r) == ["delivered"]


# --------------------------------------------------------------------------------------
# A raw server for what real servers will not do on request


class RawServer:
    """Greets, answers EHLO (no PIPELINING), accepts MAIL/RCPT/DATA, then misbehaves:
    'mid-data' closes after `after` bytes of data, 'after-dot' closes after the final
    dot without replying."""

    def __init__(self, mode, after=100):
        self.mode = mode
        self.after = after
        self.received = b""
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.sock.accept()
        with conn:
            f = conn.makefile("rb")
            conn.sendall(b"220 raw.test ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line[:4].upper()
                if cmd == b"EHLO":
                    conn.sendall(b"250-raw.test\r\n250 8BITMIME\r\n")
                elif cmd in (b"MAIL", b"RCPT"):
                    conn.sendall(b"250 2.0.0 ok\r\n")
                elif cmd == b"DATA":
                    conn.sendall(b"354 go\r\n")
                    break
                else:
                    conn.sendall(b"250 ok\r\n")
            if self.mode == "mid-data":
                self.received = f.read(self.after)
                return  # close with the data half sent
            while True:
                line = f.readline()
                if not line or line == b".\r\n":
                    return  # after the dot: close without a reply

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("mode", ["mid-data", "after-dot"])
def test_raw_disconnect_during_or_after_data_is_deferred(msgfile, mode):
    srv = RawServer(mode)
    try:
        big = b"Subject: x\r\n\r\n" + b"y" * 400000 + b"\r\n"
        r = deliver(srv.port, [("a@outside.test", ["x@example.test", "z@example.test"],
                                msgfile(big, "big"))])
        assert kinds(r) == ["deferred", "deferred"]  # never delivered without 2xx to "."
        assert r["transactions"][0][0]["code"] == 451
        assert r["state"] == "failed"
    finally:
        srv.close()


# --------------------------------------------------------------------------------------
# DSN: parsed by Python's email package, then delivered with MAIL FROM:<>


def make_dsn(tmp_path, *extra):
    orig = tmp_path / "orig"
    orig.write_bytes(BODY)
    out = subprocess.run(
        [DRIVER, "dsn", "--mta", "mx.example.test", "--sender", "alice@outside.test",
         "--queue-id", "Q123", "--original", str(orig),
         "--rcpt", "user@example.test|failed|5.1.1|smtp; 550 5.1.1 <user@example.test>: "
                   "Recipient address rejected: User unknown in local recipient table",
         "--rcpt", "other@example.test|delayed|4.4.1|", *extra],
        capture_output=True, check=True)
    return out.stdout


def test_dsn_parses_as_multipart_report(tmp_path):
    raw = make_dsn(tmp_path)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"].addresses[0].addr_spec == "alice@outside.test"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "user@example.test" in parts[0].get_content()
    # email parses message/delivery-status into one block per message and recipient.
    blocks = parts[1].get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.test"
    assert blocks[1]["Final-Recipient"] == "rfc822; user@example.test"
    assert blocks[1]["Action"] == "failed"
    assert blocks[1]["Status"] == "5.1.1"
    assert "User unknown in local recipient table" in str(blocks[1]["Diagnostic-Code"])
    assert blocks[2]["Action"] == "delayed"
    assert blocks[2]["Will-Retry-Until"]
    headers = parts[2].get_payload()
    assert "Message-ID: <m1@outside.test>" in headers
    assert "leading dot" not in raw.decode()


def test_dsn_full_message_and_delivery_with_null_sender(tmp_path, aio):
    raw = make_dsn(tmp_path, "--full")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    inner = list(msg.iter_parts())[2]
    assert inner.get_content_type() == "message/rfc822"
    assert inner.get_payload()[0]["Subject"] == "test message"
    # Delivered as a DSN must be: MAIL FROM:<> to the original sender.
    c, h = aio(pipelining=True)
    path = tmp_path / "dsn"
    path.write_bytes(raw)
    r = deliver(c.port, [("", ["alice@outside.test"], path)])
    assert kinds(r) == ["delivered"]
    assert h.envelopes[0]["from"] == "<>"  # aiosmtpd keeps the null path as "<>"
    assert h.envelopes[0]["data"] == raw


def test_no_dsn_for_null_sender(tmp_path):
    orig = tmp_path / "orig"
    orig.write_bytes(BODY)
    out = subprocess.run([DRIVER, "dsn", "--mta", "mx.example.test", "--sender", "",
                          "--queue-id", "Q1", "--original", str(orig),
                          "--rcpt", "u@example.test|failed|5.1.1|"],
                         capture_output=True, check=True)
    assert out.stdout == b""
