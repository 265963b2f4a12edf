"""Start-up checks, reload and shutdown of a real sluiced."""
import signal
import smtplib
import subprocess
import threading
import time

from harness import SLUICED, Daemon, Raw, code


def test_check_reports_every_error_with_position(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nshards = "two"\nbogus = 1\n\n[[listener]]\nname = "mx"\n'
                   'address = "127.0.0.1:notaport"\n')
    r = subprocess.run([SLUICED, "--config", str(cfg), "--check"], capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert f"{cfg}:2:10: server.shards: expected integer" in lines
    assert f"{cfg}:3:1: unknown key \"server.bogus\"" in lines
    assert any(l.startswith(f"{cfg}:7:11: listener.address: bad port") for l in lines), lines


def test_check_accepts_the_example_config(tmp_path):
    d = Daemon()
    r = subprocess.run([SLUICED, "--config", str(d.config), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_port_in_use_is_a_clear_error():
    with Daemon() as d:
        other = Daemon()
        other.config.write_text(other.config.read_text().replace(str(other.port), str(d.port)))
        other.start(wait=False)
        assert other.proc.wait(timeout=10) == 1
        assert "event=listen_failed" in other.log()


def test_sigterm_idle_sessions_get_421_and_exit_0():
    d = Daemon().start()
    c = Raw(d.port)
    c.cmd("EHLO client.test")
    d.signal(signal.SIGTERM)
    assert code(c.reply()) == "421 4.3.2"
    assert c.closed()
    assert d.proc.wait(timeout=10) == 0
    assert "event=stopped" in d.log()


def test_sigterm_lets_data_in_flight_finish():
    d = Daemon().start()
    c = Raw(d.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@outside.test>")
    c.cmd("RCPT TO:<user@example.test>")
    c.cmd("DATA")
    c.send("Subject: in flight\r\n\r\n")
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    c.send("still sending\r\n.\r\n")
    assert code(c.reply()) == "250 2.0.0"
    assert code(c.reply()) == "421 4.3.2"
    assert d.proc.wait(timeout=10) == 0
    assert len(d.messages()) == 1


def test_sigterm_closes_a_session_whose_message_in_flight_is_rejected():
    # The message is refused at its end (a loop: more Received: fields than limits.max_hops);
    # the drain must not wait shutdown_grace for the client's next command.
    d = Daemon(limits='shutdown_grace = "120s"').start()
    c = Raw(d.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@outside.test>")
    c.cmd("RCPT TO:<user@example.test>")
    c.cmd("DATA")
    c.send("".join(f"Received: from hop{i}.test by x.test; Mon, 7 Dec 2026 00:00:00 +0000\r\n"
                   for i in range(60)))
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    c.send("Subject: looping\r\n\r\nbody\r\n.\r\n")
    assert code(c.reply()) == "554 5.4.0"
    assert code(c.reply()) == "421 4.3.2"
    assert c.closed()
    # Well before the 120 s grace; 60 s is the test giving up.
    assert d.proc.wait(timeout=60) == 0
    assert "drain_timeout" not in d.log()
    assert d.messages() == []


def test_sigterm_under_load_loses_nothing_that_got_250():
    d = Daemon().start()
    accepted = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n):
        i = 0
        while not stop.is_set():
            tag = f"msg-{n}-{i}"
            try:
                with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
                    s.sendmail("a@outside.test", ["user@example.test"],
                               f"Subject: {tag}\r\n\r\n{tag}\r\n")
                with lock:
                    accepted.append(tag)
            except (smtplib.SMTPException, OSError):
                pass
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    d.signal(signal.SIGTERM)
    rc = d.proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join()
    assert rc == 0
    stored = set()
    for m in d.messages():
        for line in m.read_text().splitlines():
            if line.startswith("Subject: "):
                stored.add(line[9:])
    assert accepted, "no message was accepted before the shutdown"
    missing = [t for t in accepted if t not in stored]
    assert missing == []


def test_sighup_reload_applies_new_rules_to_new_sessions():
    with Daemon() as d:
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@outside.test>")
        assert code(c.cmd("RCPT TO:<user@newdomain.test>")) == "554 5.7.1"
        d.config.write_text(d.config.read_text()
                            .replace('local = ["example.test"]', 'local = ["example.test", "newdomain.test"]')
                            .replace('"example.test" = "maildir:maildir"',
                                     '"example.test" = "maildir:maildir"\n"newdomain.test" = "maildir:maildir"'))
        d.signal(signal.SIGHUP)
        deadline = time.time() + 5
        while "event=reload" not in d.log() and time.time() < deadline:
            time.sleep(0.05)
        assert "result=ok generation=2" in d.log()
        time.sleep(0.1)
        c2 = Raw(d.port)
        c2.cmd("EHLO client.test")
        c2.cmd("MAIL FROM:<a@outside.test>")
        assert code(c2.cmd("RCPT TO:<user@newdomain.test>")) == "250 2.1.5"
        # A broken config changes nothing.
        good = d.config.read_text()
        d.config.write_text(good + "\n[bogus]\n")
        d.signal(signal.SIGHUP)
        deadline = time.time() + 5
        while "result=rejected" not in d.log() and time.time() < deadline:
            time.sleep(0.05)
        assert "result=rejected" in d.log()
        c3 = Raw(d.port)
        c3.cmd("EHLO client.test")
        c3.cmd("MAIL FROM:<a@outside.test>")
        assert code(c3.cmd("RCPT TO:<user@newdomain.test>")) == "250 2.1.5"
