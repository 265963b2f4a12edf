"""The durable spool and forwarding in a real sluiced: smtp-source and smtplib in,
a recording next hop (aiosmtpd) or smtp-sink out; outages, refusals, bounces, kill -9."""
import os
import random
import signal
import smtplib
import subprocess
import threading
import time

from harness import SLUICECTL, Daemon, Raw, code, free_port, wait_for
from nexthop import NextHop, RawNextHop


def forwarding_daemon(hop_port, extra_routes="", limits="", spool="", query=""):
    d = Daemon(limits=limits)
    text = d.config.read_text().replace(
        '"example.test" = "maildir:maildir"',
        f'"example.test" = "smtp://127.0.0.1:{hop_port}{query}"{extra_routes}')
    text = text.replace('dir = "spool"', 'dir = "spool"\nretry = ["1s", "2s"]' + spool)
    d.config.write_text(text)
    return d


def strip_received(content):
    """Our Received: field is the only change; remove it to compare byte for byte."""
    assert content.startswith(b"Received: from ")
    i = content.index(b"\r\n") + 2
    while content[i:i + 1] == b"\t":
        i = content.index(b"\r\n", i) + 2
    return content[i:]


def test_forwarded_byte_for_byte_with_the_decided_envelope():
    hop = NextHop(free_port()).start()
    try:
        with forwarding_daemon(hop.port) as d:
            content = (b"From: a@outside.test\r\nSubject: fwd\r\n\r\n.dot line\r\n..two\r\n"
                       b"\xc3\xa9t\xc3\xa9 8bit\r\nlast\r\n")
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.ehlo("client.test")
                s.sendmail("Sender@Outside.TEST.", ["User@Example.Test", "other@example.test"],
                           content, mail_options=["BODY=8BITMIME"])
            msgs = wait_for(lambda: hop.recorder.snapshot())
            assert len(msgs) == 1
            mail_from, rcpts, data = msgs[0]
            assert mail_from == "Sender@outside.test"
            assert rcpts == ["User@example.test", "other@example.test"]
            assert strip_received(data) == content
            assert wait_for(lambda: len(d.log_lines("delivered")) == 2)
    finally:
        hop.stop()


def test_smtp_source_through_sluiced_into_smtp_sink():
    sink_port = free_port()
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "root", "-c", f"127.0.0.1:{sink_port}", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with forwarding_daemon(sink_port) as d:
            r = subprocess.run(["/usr/sbin/smtp-source", "-d", "-s", "10", "-m", "2000", "-l", "1024",
                                "-f", "sender@outside.test", "-t", "user@example.test",
                                f"127.0.0.1:{d.port}"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            assert wait_for(lambda: len(d.log_lines("delivered")) >= 2000, 60)
            assert len(d.log_lines("delivered")) == 2000
            assert len(d.log_lines("queued")) == 2000
        # Everything final: the spool has reclaimed its segments by the clean stop.
        assert not list((d.dir / "spool").glob("seg-*.log"))
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait()


def test_next_hop_down_then_back_nothing_lost():
    port = free_port()
    with forwarding_daemon(port) as d:
        for i in range(5):
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.sendmail("a@outside.test", ["user@example.test"], f"Subject: q{i}\r\n\r\nbody {i}\r\n")
        assert wait_for(lambda: len(d.log_lines("deferred")) >= 5)
        hop = NextHop(port).start()
        try:
            msgs = wait_for(lambda: len(hop.recorder.snapshot()) >= 5 and hop.recorder.snapshot(), 30)
            subjects = sorted(m[2].split(b"Subject: ")[1].split(b"\r\n")[0] for m in msgs)
            assert subjects == [f"q{i}".encode() for i in range(5)]
        finally:
            hop.stop()


def test_refused_recipient_bounces_to_the_sender_and_never_loops():
    hop = NextHop(free_port()).start()
    hop.recorder.reject["gone@example.test"] = "550 5.1.1 no such user"
    try:
        routes = f'\n"outside.test" = "smtp://127.0.0.1:{hop.port}"'
        with forwarding_daemon(hop.port, extra_routes=routes) as d:
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.sendmail("a@outside.test", ["gone@example.test", "user@example.test"],
                           "Subject: partly\r\n\r\nhello\r\n")
                # A message from <> that bounces must not produce another bounce.
                s.sendmail("", ["gone@example.test"], "Subject: from null\r\n\r\nx\r\n")
            msgs = wait_for(lambda: len(hop.recorder.snapshot()) >= 2 and hop.recorder.snapshot())
            time.sleep(1.5)
            msgs = hop.recorder.snapshot()
            delivered = [m for m in msgs if m[0] not in ("", "<>")]
            dsns = [m for m in msgs if m[0] in ("", "<>")]
            assert len(delivered) == 1 and delivered[0][1] == ["user@example.test"]
            assert len(dsns) == 1, msgs
            assert dsns[0][1] == ["a@outside.test"]
            body = dsns[0][2]
            assert b"multipart/report" in body and b"report-type=delivery-status" in body
            assert b"Final-Recipient: rfc822; gone@example.test" in body
            assert b"550 5.1.1" in body
            assert len(d.log_lines("bounced")) == 2
    finally:
        hop.stop()


def test_disk_full_refuses_new_mail_with_452():
    hop = NextHop(free_port()).start()
    try:
        # A free-space floor no disk here meets: admission says no at MAIL.
        with forwarding_daemon(hop.port, spool='\nmin_free = "1000000GiB"') as d:
            c = Raw(d.port)
            c.cmd("EHLO client.test")
            assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "452 4.3.1"
    finally:
        hop.stop()


def test_kill_9_under_load_loses_nothing_that_got_250():
    hop = NextHop(free_port()).start()
    d = forwarding_daemon(hop.port)
    acked, attempted = set(), set()
    lock = threading.Lock()
    rng = random.Random(1234)
    try:
        for rnd in range(6):
            d.start()
            stop = threading.Event()

            def client(n):
                i = 0
                while not stop.is_set():
                    tag = f"r{rnd}-c{n}-m{i}"
                    i += 1
                    with lock:
                        attempted.add(tag)
                    try:
                        with smtplib.SMTP("127.0.0.1", d.port, timeout=5) as s:
                            s.sendmail("a@outside.test", ["user@example.test"],
                                       f"Subject: {tag}\r\n\r\n{tag}\r\n" + "x" * rng.randint(10, 3000) + "\r\n")
                        with lock:
                            acked.add(tag)
                    except (smtplib.SMTPException, OSError):
                        pass

            threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            stop.set()
            for t in threads:
                t.join()
        d.start()   # the last restart recovers and delivers what is left
        def arrived():
            return {m[2].split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in hop.recorder.snapshot()}
        assert acked
        wait_for(lambda: acked <= arrived(), 60)
        got = arrived()
        lost = acked - got
        assert lost == set(), f"{len(lost)} acknowledged messages lost"
        assert got <= attempted   # nothing made up; at most messages in flight at a kill
        for _, _, data in hop.recorder.snapshot():
            tag = data.split(b"Subject: ")[1].split(b"\r\n")[0]
            assert data.count(tag) == 2 and data.endswith(b"\r\n")   # whole, never half-written
    finally:
        d.stop()
        hop.stop()


def test_queue_commands_through_the_running_daemon():
    port = free_port()
    with forwarding_daemon(port) as d:
        for sender in ["spammer@outside.test", "spammer@outside.test", "friend@outside.test"]:
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.sendmail(sender, ["user@example.test"], "Subject: q\r\n\r\nbody\r\n")
        assert wait_for(lambda: len(d.log_lines("deferred")) >= 3)

        def ctl(*args):
            return subprocess.run([SLUICECTL, "--config", str(d.config), *args],
                                  capture_output=True, text=True, timeout=60)
        r = ctl("queue", "list", "--json")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("spammer@outside.test") == 2 and "friend@outside.test" in r.stdout
        r = ctl("queue", "purge", "--sender", "spammer@outside.test", "--dry-run")
        assert r.returncode == 0, r.stderr
        assert "2" in r.stdout
        r = ctl("queue", "purge", "--sender", "spammer@outside.test")
        assert r.returncode == 0, r.stderr
        r = ctl("queue", "list")
        assert "spammer@outside.test" not in r.stdout and "friend@outside.test" in r.stdout
        # The purge is on record (the dry run changed nothing and is not).
        ops = d.log_lines("queue_op")
        assert len(ops) == 1, ops
        assert 'command="purge --sender spammer@outside.test"' in ops[0] and "exit=0" in ops[0]
        assert "removed 2 messages" in ops[0]
        # The next hop comes back; flush retries now instead of on the schedule.
        hop = NextHop(port).start()
        try:
            r = ctl("queue", "flush")
            assert r.returncode == 0, r.stderr
            msgs = wait_for(lambda: hop.recorder.snapshot(), 15)
            assert [m[0] for m in msgs] == ["friend@outside.test"]
        finally:
            hop.stop()


def test_inline_mode_answers_after_the_next_hop_and_spools_the_rest():
    hop = NextHop(free_port()).start()
    hop.recorder.reject["later@example.test"] = "450 4.2.1 try later"
    d = forwarding_daemon(hop.port, query="?inline=true")
    try:
        with d:
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.sendmail("a@outside.test", ["user@example.test"], "Subject: inline\r\n\r\nx\r\n")
                # The next hop had it before our 250 came back.
                assert len(hop.recorder.snapshot()) == 1
                s.sendmail("a@outside.test", ["user2@example.test", "later@example.test"],
                           "Subject: partly\r\n\r\ny\r\n")
                assert len(hop.recorder.snapshot()) == 2
            assert any("mode=inline" in l for l in d.log_lines("delivered"))
            assert any("via=inline" in l for l in d.log_lines("queued"))
            # The refused recipient went to the spool and is retried from there.
            assert any("via=spool" in l for l in d.log_lines("queued"))
            hop.recorder.reject.clear()
            msgs = wait_for(lambda: len(hop.recorder.snapshot()) >= 3 and hop.recorder.snapshot(), 20)
            assert msgs[-1][1] == ["later@example.test"]
        # The next hop down: no local queue in this mode, the client keeps the message
        # and is told to try again later.
        hop.stop()
        with d:
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.ehlo("client.test")
                s.mail("a@outside.test")
                s.rcpt("user@example.test")
                code_, text = s.data("Subject: down\r\n\r\nz\r\n")
                assert code_ == 451 and text.startswith(b"4.4.0 "), text
            assert d.log_lines("inline_refused")
            r = d.ctl("queue", "list")
            assert r.returncode == 0 and "a@outside.test" not in r.stdout, r.stdout
    finally:
        hop.stop()


def test_a_next_hop_that_nagles_its_replies_does_not_stall_the_link():
    """Replies to a pipelined group written one by one without TCP_NODELAY: the next one
    waits until the previous is acknowledged, so an ACK delayed by the kernel (40 ms) would
    stall every message. In-line mode makes each message wait for the next hop: 40
    messages take about 40 x 40 ms if the link delays its ACKs, a few ms each if not."""
    hop = RawNextHop(free_port()).start()
    try:
        with forwarding_daemon(hop.port, query="?inline=true") as d:
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.ehlo("client.test")
                t0 = time.monotonic()
                for i in range(40):
                    s.sendmail("a@outside.test", ["user@example.test"], f"Subject: {i}\r\n\r\nx\r\n")
                took = time.monotonic() - t0
            assert hop.messages == 40
            assert took < 0.8, f"40 in-line messages took {took:.2f}s"
    finally:
        hop.stop()


def test_a_slow_next_hop_keeps_queued_data_on_disk_and_all_of_it_arrives_once():
    """limits.outbound_queue_memory bounds the message data waiting in memory for a next
    hop that does not keep up; the rest waits on disk (in order) and is read back as the
    queue drains. 30 messages of 20 KB against a 64 KiB bound while the hop is stuck."""
    gate = threading.Event()
    hop = RawNextHop(free_port(), gate=gate).start()
    size = 20_000
    try:
        d = forwarding_daemon(hop.port, limits='outbound_connections = 1\n'
                                               'outbound_queue_memory = "64KiB"')
        with d.enable_stats():
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.ehlo("client.test")
                for i in range(30):
                    s.sendmail("a@outside.test", ["user@example.test"],
                               f"Subject: m{i}\r\n\r\n" + ("x" * 98 + "\r\n") * (size // 100))

            def gauge(name):
                return d.metrics()[0][(name, frozenset())]

            assert wait_for(lambda: gauge("sluice_outbound_overflow_messages") > 0)
            # At most the bound (a message larger than a shard's share would still fit alone).
            assert gauge("sluice_outbound_queued_bytes") <= 64 * 1024
            gate.set()
            assert wait_for(lambda: hop.messages == 30)
            assert sorted(hop.subjects) == sorted(f"m{i}" for i in range(30))
            assert wait_for(lambda: gauge("sluice_outbound_overflow_messages") == 0)
            assert gauge("sluice_outbound_queued_bytes") == 0
            assert wait_for(lambda: len(d.log_lines("delivered")) == 30)
    finally:
        gate.set()
        hop.stop()


def test_a_retry_due_while_other_recipients_are_in_flight_is_not_lost():
    """One message, two routes: other.test defers once (450) and is due again after 1 s
    while example.test's next hop still holds its delivery (a stuck greeting). The retry
    must happen once that delivery is over, not wait for a restart or `queue flush`."""
    slow_gate = threading.Event()
    slow = RawNextHop(free_port(), gate=slow_gate).start()
    fast = NextHop(free_port()).start()
    fast.recorder.reject["b@other.test"] = "450 4.2.1 try later"
    try:
        routes = f'\n"other.test" = "smtp://127.0.0.1:{fast.port}"'
        d = forwarding_daemon(slow.port, extra_routes=routes)
        d.config.write_text(d.config.read_text().replace(
            'local = ["example.test"]', 'local = ["example.test", "other.test"]'))
        with d:
            with smtplib.SMTP("127.0.0.1", d.port) as s:
                s.sendmail("a@outside.test", ["user@example.test", "b@other.test"],
                           "Subject: two routes\r\n\r\nx\r\n")
            assert wait_for(lambda: len(d.log_lines("deferred")) == 1)
            del fast.recorder.reject["b@other.test"]
            time.sleep(2)  # the retry (after 1 s) is due while example.test's is in flight
            slow_gate.set()
            assert wait_for(lambda: slow.messages == 1)
            msgs = wait_for(lambda: fast.recorder.snapshot(), 20)
            assert [m[1] for m in msgs] == [["b@other.test"]]
            time.sleep(1)
            assert slow.messages == 1 and len(fast.recorder.snapshot()) == 1  # once each
    finally:
        slow_gate.set()
        slow.stop()
        fast.stop()


def test_flush_and_release_never_deliver_twice():
    """`queue flush` and `queue release` read deferred messages back while their own retry
    timers are still set: each message must still reach the next hop exactly once (every
    delivery of a message runs on one shard, and a message is not read back while the
    outcome of its last delivery is still on its way to the spool)."""
    hop = NextHop(free_port()).start()
    hop.recorder.reject["x@example.test"] = "450 4.2.1 later"
    try:
        d = forwarding_daemon(hop.port)
        d.config.write_text(d.config.read_text().replace('retry = ["1s", "2s"]', 'retry = ["3s"]'))
        with d:
            for i in range(6):
                with smtplib.SMTP("127.0.0.1", d.port) as s:
                    s.sendmail("a@outside.test", ["x@example.test"], f"Subject: f{i}\r\n\r\nx\r\n")
            assert wait_for(lambda: len(d.log_lines("deferred")) == 6)
            ids = [l.split(" id=")[1].split()[0] for l in d.log_lines("deferred")]
            # Flushed while the next hop still refuses: each message is tried again (and
            # deferred again, with a new timer) while its first timer is still set.
            assert d.ctl("queue", "flush").returncode == 0
            assert wait_for(lambda: len(d.log_lines("deferred")) == 12)
            assert d.ctl("queue", "hold", ids[0]).returncode == 0
            assert d.ctl("queue", "release", ids[0]).returncode == 0
            del hop.recorder.reject["x@example.test"]
            assert wait_for(lambda: len(hop.recorder.snapshot()) >= 6)
            time.sleep(5)  # past every retry timer
            subjects = sorted(m[2].split(b"Subject: ")[1].split(b"\r\n")[0] for m in hop.recorder.snapshot())
            assert subjects == [f"f{i}".encode() for i in range(6)], subjects
    finally:
        hop.stop()


def test_inline_mode_passes_a_refusal_back_to_the_client_and_keeps_nothing():
    """In-line mode has no local queue: when the next hop takes none of the recipients,
    the client gets the refusal (5xx when all are refused for good, 4xx otherwise) and
    keeps the message; nothing is spooled, sent again or bounced."""
    hop = NextHop(free_port()).start()
    try:
        with forwarding_daemon(hop.port, query="?inline=true") as d:
            def send(rcpt):
                with smtplib.SMTP("127.0.0.1", d.port) as s:
                    s.ehlo("client.test")
                    s.mail("a@outside.test")
                    assert s.rcpt(rcpt)[0] == 250
                    return s.data("Subject: inline refusal\r\n\r\nx\r\n")

            hop.recorder.data_reply = "554 5.6.0 content rejected"
            code_, text = send("user@example.test")
            assert code_ == 554 and text.startswith(b"5.0.0 ") and b"554 5.6.0 content rejected" in text
            hop.recorder.data_reply = "451 4.3.0 busy"
            code_, text = send("user@example.test")
            assert code_ == 451 and text.startswith(b"4.4.0 ") and b"451 4.3.0 busy" in text
            hop.recorder.data_reply = None
            hop.recorder.reject["gone@example.test"] = "550 5.1.1 no such user"
            code_, text = send("gone@example.test")
            assert code_ == 554 and b"550 5.1.1 no such user" in text
            time.sleep(1.5)
            assert hop.recorder.attempts == 3  # each once: nothing sent again
            assert hop.recorder.snapshot() == []  # and no DSN
            assert d.log_lines("queued") == [] and d.log_lines("bounced") == []
            assert len(d.log_lines("inline_refused")) == 3
            r = d.ctl("queue", "list")
            assert r.returncode == 0 and "a@outside.test" not in r.stdout, r.stdout
    finally:
        hop.stop()
