"""`sluicectl relay-test` against SMTP servers written here with asyncio.

Each server is a small, real SMTP responder on a free loopback port, with one behaviour:
open (accepts every RCPT), strict (554 for every non-local RCPT, multi-line replies sent
in fragments), dropping (closes the connection on some RCPTs), greylisting (450),
silent (never greets), tarpit (never answers MAIL). Every server records the commands
it received, so the tests also check that the tool never sent DATA and always sent
RSET after an accepted RCPT.

The binary comes from $SLUICECTL (default build/tools/sluicectl under the repo root).
Later fixtures can point the same tests at a real sluiced: see `run_relay_test`.
"""

import asyncio
import itertools
import json
import os
import pathlib
import re
import socket
import subprocess
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SLUICECTL = os.environ.get("SLUICECTL", str(REPO / "build" / "tools" / "sluicectl"))

LOCAL_ADDR = re.compile(r"^<[A-Za-z0-9._+-]+@example\.test>$")


class SmtpServer:
    """A scripted SMTP server on 127.0.0.1 (or ::1), run on its own asyncio thread."""

    def __init__(self, mode, host="127.0.0.1", greeting="220 mx.example.test ESMTP test",
                 ehlo_name="mx.example.test"):
        self.mode = mode
        self.ehlo_name = ehlo_name
        self.host = host
        self.greeting = greeting
        self.commands = []  # (connection number, command line)
        self.connections = 0
        self.port = None
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server = None

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "test server did not start"
        return self

    def __exit__(self, *exc):
        async def shutdown():
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def target(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _send(self, writer, text, fragments=False):
        data = text.encode()
        if fragments:
            # A few bytes at a time: replies split at every kind of boundary.
            for i in range(0, len(data), 5):
                writer.write(data[i:i + 5])
                await writer.drain()
                await asyncio.sleep(0.001)
        else:
            writer.write(data)
            await writer.drain()

    async def _handle(self, reader, writer):
        conn = next(self._ids)
        self.connections += 1
        try:
            if self.mode == "silent":
                await asyncio.sleep(3600)
            await self._send(writer, self.greeting + "\r\n")
            rcpts = 0
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line.decode("latin-1").rstrip("\r\n")
                self.commands.append((conn, cmd))
                verb = cmd[:4].upper()
                if verb == "EHLO":
                    await self._send(writer, f"250-{self.ehlo_name} hello\r\n250-PIPELINING\r\n"
                                     "250-SIZE 10240000\r\n250 8BITMIME\r\n")
                elif verb == "HELO":
                    await self._send(writer, "250 mx.example.test\r\n")
                elif verb == "MAIL":
                    if self.mode == "tarpit":
                        await asyncio.sleep(3600)
                    await self._send(writer, "250 2.1.0 Ok\r\n")
                elif verb == "RCPT":
                    path = cmd[len("RCPT TO:"):]
                    rcpts += 1
                    if self.mode == "errlimit" and rcpts > 5:
                        await self._send(writer, "421 4.7.0 too many errors, closing\r\n")
                        writer.close()
                        return
                    if self.mode == "garbage":
                        await self._send(writer, "HTTP/1.1 400 Bad Request\r\n")
                    elif self.mode == "open":
                        await self._send(writer, "250 2.1.5 Ok\r\n")
                    elif self.mode == "greylist":
                        await self._send(writer, "450 4.7.1 greylisted, try again later\r\n")
                    elif self.mode == "dropping" and "%" in path:
                        writer.close()
                        return
                    elif LOCAL_ADDR.match(path):
                        await self._send(writer, "250 2.1.5 Ok\r\n")
                    else:
                        await self._send(writer, "554-5.7.1 Relay access denied\r\n"
                                         "554-5.7.1 this server does not relay\r\n"
                                         "554 5.7.1 see your administrator\r\n",
                                         fragments=self.mode == "strict")
                elif verb == "RSET":
                    await self._send(writer, "250 2.0.0 Ok\r\n")
                    if self.mode == "idle-close":
                        await asyncio.sleep(0.01)
                        writer.close()  # as if an idle timeout hit between probes
                        return
                elif verb == "QUIT":
                    await self._send(writer, "221 2.0.0 Bye\r\n")
                    writer.close()
                    return
                elif verb == "DATA":
                    await self._send(writer, "354 End data with <CR><LF>.<CR><LF>\r\n")
                else:
                    await self._send(writer, "500 5.5.2 unrecognized\r\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def verbs(self):
        return [c[:4].upper() for _, c in self.commands]


def run_relay_test(*args, timeout=120):
    started = time.monotonic()
    proc = subprocess.run([SLUICECTL, "relay-test", *args], capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - started


def run_json(*args, timeout=120):
    proc, elapsed = run_relay_test("--json", *args, timeout=timeout)
    assert proc.stdout, proc.stderr
    return proc, json.loads(proc.stdout), elapsed


def assert_never_relayed(server):
    """No DATA ever; every accepted RCPT is followed, on its connection, by RSET or QUIT."""
    assert "DATA" not in server.verbs()
    assert "BDAT" not in server.verbs()
    by_conn = {}
    for conn, cmd in server.commands:
        by_conn.setdefault(conn, []).append(cmd[:4].upper())
    for cmds in by_conn.values():
        for i, verb in enumerate(cmds):
            if verb == "RCPT" and i + 1 < len(cmds):
                assert cmds[i + 1] in ("RSET", "QUIT"), cmds


def test_open_server_fails_every_probe():
    with SmtpServer("open") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s")
    assert proc.returncode == 1, proc.stderr
    probes = report["probes"]
    assert len(probes) >= 30
    assert all(p["result"] == "FAIL" for p in probes), [p for p in probes if p["result"] != "FAIL"]
    assert report["open_relay"] is True
    assert report["summary"]["fail"] == len(probes)
    assert report["local_domain"] == "example.test"
    assert report["server_name"] == "mx.example.test"
    assert report["starttls_used"] is False
    names = [p["name"] for p in probes]
    assert len(set(names)) == len(names)
    assert names[0] == "manual-valid-local-sender"
    assert probes[0]["mail_from"] == "<postmaster@example.test>"
    assert all(p["rcpt_reply"] == "250 2.1.5 Ok" for p in probes)
    assert_never_relayed(srv)
    # One connection was enough: RSET between probes, re-EHLO for the HELO probes.
    assert srv.connections == 1
    rcpts = [c for _, c in srv.commands if c.startswith("RCPT")]
    assert len(rcpts) == len(probes)


def test_open_server_table_output():
    with SmtpServer("open") as srv:
        proc, _ = run_relay_test(srv.target, "--timeout", "5s")
    assert proc.returncode == 1
    out = proc.stdout
    assert "PROBE" in out and "RESULT" in out
    row = re.compile(r"^percent-hack\s+<postmaster@example\.test>\s+"
                     r"<relay-test%sluice-relay-test\.example@example\.test>.*FAIL$", re.M)
    assert row.search(out), out
    assert "OPEN RELAY" in out
    assert re.search(r"\d+ probes: \d+ FAIL, 0 PASS, 0 TEMP, 0 ERROR", out)
    assert_never_relayed(srv)


def test_strict_server_passes_with_fragmented_multiline_replies():
    with SmtpServer("strict") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probes = report["probes"]
    bad = [p for p in probes if p["result"] != "PASS"]
    assert not bad, bad
    assert report["open_relay"] is False
    assert report["summary"] == {"total": len(probes), "pass": len(probes), "fail": 0,
                                 "temp": 0, "error": 0}
    for p in probes:
        assert p["rcpt_reply"] == "554 5.7.1 Relay access denied", p
        assert p["stage"] == "rcpt"
    assert_never_relayed(srv)


def test_strict_server_table_output_and_exit_code():
    with SmtpServer("strict") as srv:
        proc, _ = run_relay_test(srv.target, "--timeout", "5s", "--pace", "1ms")
    assert proc.returncode == 0
    assert "No relay accepted." in proc.stdout
    assert "FAIL" not in proc.stdout.split("\n\n")[1]  # the table rows


def test_server_that_drops_the_connection():
    with SmtpServer("dropping") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s")
    assert proc.returncode == 0, proc.stderr
    probes = report["probes"]
    errors = [p for p in probes if p["result"] == "ERROR"]
    assert errors, "the server dropped on every % probe"
    for p in probes:
        if "%" in p["rcpt_to"]:
            assert p["result"] == "ERROR", p
            assert p["stage"] == "rcpt"
            assert "closed" in p["detail"], p
        else:
            assert p["result"] == "PASS", p
    # The tool reconnected after each drop and went on.
    assert srv.connections == len(errors) + 1
    assert_never_relayed(srv)


def test_421_after_too_many_errors_retries_on_a_fresh_connection():
    with SmtpServer("errlimit") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s")
    assert proc.returncode == 0, proc.stderr
    assert all(p["result"] == "PASS" for p in report["probes"]), report["probes"]
    # Five probes per connection, then the 421 and a retry on the next one.
    assert srv.connections > len(report["probes"]) // 5
    assert_never_relayed(srv)


def test_connection_closed_between_probes_is_retried():
    with SmtpServer("idle-close") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s", "--pace", "50ms")
    assert proc.returncode == 0, proc.stderr
    assert all(p["result"] == "PASS" for p in report["probes"]), report["probes"]
    assert srv.connections >= len(report["probes"])


def test_garbage_replies_are_errors_not_crashes():
    with SmtpServer("garbage") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s")
    assert proc.returncode == 0, proc.stderr
    for p in report["probes"]:
        assert p["result"] == "ERROR" and "malformed reply" in p["detail"], p
    assert srv.connections == len(report["probes"])  # a fresh connection after each
    assert_never_relayed(srv)


def test_greylisting_is_temp_not_failure():
    with SmtpServer("greylist") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s")
    assert proc.returncode == 0
    assert all(p["result"] == "TEMP" for p in report["probes"])
    assert report["summary"]["temp"] == len(report["probes"])


def test_silent_server_times_out_at_start():
    with SmtpServer("silent") as srv:
        proc, elapsed = run_relay_test(srv.target, "--timeout", "1s")
    assert proc.returncode == 2
    assert "greeting" in proc.stderr and "no reply" in proc.stderr, proc.stderr
    assert elapsed < 10


def test_silent_server_json_reports_the_error():
    with SmtpServer("silent") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "500ms")
    assert proc.returncode == 2
    assert "greeting" in report["error"]
    assert report["probes"] == []


def test_tarpit_server_times_out_and_stops_waiting():
    with SmtpServer("tarpit") as srv:
        proc, report, elapsed = run_json(srv.target, "--timeout", "1s")
    assert proc.returncode == 0
    probes = report["probes"]
    assert [p["result"] for p in probes[:3]] == ["ERROR"] * 3
    for p in probes[:3]:
        assert p["stage"] == "mail" and "timeout" in p["detail"], p
    for p in probes[3:]:
        assert p["result"] == "ERROR" and p["stage"] == "not-run", p
    # Three timeouts, not one per probe.
    assert elapsed < 12, elapsed
    assert "RCPT" not in srv.verbs()


def test_options_shape_the_probes():
    with SmtpServer("open") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s", "--local-domain", "Other.TEST",
                                   "--local-sender", "admin@other.test",
                                   "--outside", "victim@far.example", "--helo", "probe.example")
    assert proc.returncode == 1
    assert report["local_domain"] == "other.test"
    assert report["helo"] == "probe.example"
    probes = {p["name"]: p for p in report["probes"]}
    assert probes["manual-valid-local-sender"]["mail_from"] == "<admin@other.test>"
    assert probes["percent-hack"]["rcpt_to"] == "<victim%far.example@other.test>"
    assert probes["source-route"]["rcpt_to"] == "<@other.test:victim@far.example>"
    ehlos = [c for _, c in srv.commands if c.upper().startswith("EHLO")]
    assert ehlos[0] == "EHLO probe.example"
    assert "EHLO localhost" in ehlos  # the HELO-spoofing probe


def test_local_domain_learned_from_ehlo_when_the_greeting_has_none():
    with SmtpServer("strict", greeting="220 ESMTP ready",
                    ehlo_name="relay.mail.example.test") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s")
    assert proc.returncode == 0
    assert report["server_name"] == "relay.mail.example.test"
    assert report["local_domain"] == "mail.example.test"


def test_no_host_name_anywhere_needs_local_domain():
    with SmtpServer("strict", greeting="220 ESMTP ready", ehlo_name="hello") as srv:
        proc, _ = run_relay_test(srv.target, "--timeout", "5s")
        assert proc.returncode == 2
        assert "--local-domain" in proc.stderr
        proc, report, _ = run_json(srv.target, "--timeout", "5s", "--local-domain", "example.test")
        assert proc.returncode == 0


def test_refused_session_is_a_start_error():
    with SmtpServer("strict", greeting="554 5.7.1 go away") as srv:
        proc, _ = run_relay_test(srv.target, "--timeout", "5s")
    assert proc.returncode == 2
    assert "554 5.7.1 go away" in proc.stderr


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this host")
def test_ipv6_server_gets_ipv6_literal_spellings():
    with SmtpServer("strict", host="::1") as srv:
        proc, report, _ = run_json(srv.target, "--timeout", "5s")
    assert proc.returncode == 0
    assert report["server_ip"] == "::1"
    rcpts = {p["name"]: p["rcpt_to"] for p in report["probes"]}
    assert rcpts["ip-literal-ipv6"].endswith("@[IPv6:::1]>")
    assert rcpts["ip-literal-ipv6-full"].endswith("@[IPv6:0:0:0:0:0:0:0:1]>")
    assert rcpts["ip-literal-ipv4-loopback"].endswith("@[127.0.0.1]>")


@pytest.mark.parametrize("args", [
    [],
    ["127.0.0.1:99999"],
    ["127.0.0.1:25", "--timeout", "soon"],
    ["127.0.0.1:25", "--outside", "no-at-sign"],
    ["127.0.0.1:25", "--outside", "a@b\r\nDATA"],
    ["127.0.0.1:25", "--bogus"],
    ["a", "b"],
])
def test_usage_errors(args):
    proc, _ = run_relay_test(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sluicectl: relay-test: ")
    assert proc.stderr.count("\n") == 1


def test_connection_refused_is_exit_2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connect is refused
        proc, _ = run_relay_test(f"127.0.0.1:{port}", "--timeout", "2s")
    assert proc.returncode == 2
    assert "cannot connect" in proc.stderr


def test_help():
    proc, _ = run_relay_test("--help")
    assert proc.returncode == 0
    assert "never" in proc.stdout and "DATA" in proc.stdout
