"""A full or failing spool disk under a real sluiced: the spool on a real 20 MiB tmpfs (a
full disk), or behind the faultfs shim (tests/support/faultfs.cpp: a failing one, EIO from
fdatasync). The next hop is down while the disk fills, then a recording next hop
(nexthop.py) counts every delivery.

- A full disk is a state: MAIL gets 452 4.3.1, no segment file is made per attempt, the
  daemon says so once (log, metric, `sluicectl status`), and SIGTERM stops it.
- Acceptance resumes by itself once the queue drains (space reclaimed, the active segment
  included), without a restart.
- Deliveries made on a full disk are recorded (the spool's reserve): after kill -9 and a
  restart nothing is sent twice.
- A failing disk: the message in flight gets 451 4.3.0, new mail 452 4.3.1 at MAIL, retries
  back off, and acceptance resumes once writes work again.

Mounting a tmpfs needs root (CAP_SYS_ADMIN): without it these tests are skipped.
"""
import contextlib
import os
import signal
import smtplib
import subprocess
import time

import pytest

from harness import Daemon, Raw, code, free_port, wait_for
from nexthop import NextHop

FAULTFS = os.environ.get("SLUICE_FAULTFS", "")
MSG_BYTES = 32 * 1024


def spool_daemon(hop_port, min_free, extra=""):
    d = Daemon()
    text = d.config.read_text().replace(
        '"example.test" = "maildir:maildir"', f'"example.test" = "smtp://127.0.0.1:{hop_port}"')
    text = text.replace('dir = "spool"',
                        f'dir = "spool"\nretry = ["1s"]\nmin_free = "{min_free}"{extra}')
    d.config.write_text(text)
    d.enable_stats()
    return d


@contextlib.contextmanager
def small_disk(d, size="20m"):
    """The daemon's spool directory on its own tmpfs of `size`, unmounted afterwards."""
    spool = d.dir / "spool"
    spool.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(spool)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + r.stderr.strip())
    try:
        yield spool
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        subprocess.run(["umount", "-l", str(spool)], check=False)


def segments(spool):
    return sorted(p.name for p in spool.glob("seg-*.log"))


def body(tag):
    line = "y" * 76 + "\r\n"
    return f"Subject: {tag}\r\n\r\n" + line * (MSG_BYTES // len(line))


def fill(d, limit=2000, mail_refused=True):
    """Sends 32 KiB messages until MAIL gets 452 4.3.1 (or, when `mail_refused` is false,
    until 20 in a row were refused at the end of DATA). Returns the tags answered 250 and
    the replies to the final "." that were not 250 (a message in flight when the disk
    filled). A reply that never comes fails the test (socket timeout); a session the
    daemon closes (too many errors) is opened again."""
    acked, refused = [], []
    s = None
    streak = 0   # refused at the end of DATA in a row
    for i in range(limit):
        try:
            if s is None:
                s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
                s.ehlo("client.test")
            c, msg = s.mail("a@outside.test")
            if c != 250:
                assert (c, msg[:5]) == (452, b"4.3.1"), (c, msg)
                break
            assert s.rcpt("user@example.test")[0] == 250
            tag = f"m{i}"
            c, msg = s.data(body(tag))
            if c == 250:
                acked.append(tag)
                streak = 0
            else:
                refused.append((c, msg[:5]))
                s.rset()
                streak += 1
                if not mail_refused and streak >= 20:
                    break
        except (smtplib.SMTPServerDisconnected, BrokenPipeError, ConnectionResetError):
            s = None
    else:
        if not mail_refused:
            return acked, refused
        pytest.fail(f"MAIL was never refused: {len(acked)} accepted, {len(refused)} refused "
                    f"at the end of DATA ({refused[:3]})")
    if s is not None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            s.quit()
    return acked, refused


def mail_reply(d):
    c = Raw(d.port, timeout=30)
    try:
        c.cmd("EHLO client.test")
        return code(c.cmd("MAIL FROM:<a@outside.test>"))
    finally:
        c.close()


def state_gauge(d):
    samples, _ = d.metrics()
    return {dict(labels)["state"]: v for (name, labels), v in samples.items()
            if name == "sluice_spool_state"}


def queue_gauge(d):
    samples, _ = d.metrics()
    return samples[("sluice_queue_messages", frozenset())]


def subjects(hop):
    out = []
    for _, _, data in hop.recorder.snapshot():
        out.append(data.split(b"Subject: ")[1].split(b"\r\n")[0].decode())
    return out


def stop_within(d, sig, seconds=45):
    t0 = time.time()
    d.signal(sig)
    try:
        rc = d.proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{signal.Signals(sig).name} did not stop sluiced within {seconds} s")
    return rc, time.time() - t0


def test_a_full_disk_is_a_state_mail_is_refused_without_a_file_per_attempt_and_sigterm_stops_it():
    d = spool_daemon(free_port(), "0B")   # the next hop is down: everything stays queued
    with small_disk(d) as spool:
        d.start()
        acked, refused = fill(d)
        assert len(acked) > 200, len(acked)
        # The message in flight when the disk filled was answered, with a 4xx.
        assert all(r in ((452, b"4.3.1"), (451, b"4.3.0")) for r in refused), refused
        before = set(segments(spool))
        # Mail keeps coming for a while: refused at MAIL, and no file is made for it.
        for _ in range(30):
            assert mail_reply(d) == "452 4.3.1"
            time.sleep(0.1)
        time.sleep(2)   # deferrals (retry 1 s) come and go meanwhile
        assert len(set(segments(spool)) - before) <= 1, (before, segments(spool))
        assert len(d.log_lines("spool_write_failed")) < 20
        full = [l for l in d.log_lines("spool_state") if "state=full" in l]
        assert len(full) == 1, full
        assert state_gauge(d) == {"ok": 0, "low": 0, "full": 1, "failing": 0}
        st = d.ctl("status")
        assert "spool:       full" in st.stdout, st.stdout
        assert d.ctl_json("status")["spool"]["state"] == "full"
        rc, took = stop_within(d, signal.SIGTERM)
        assert rc == 0
        # What got 250 is still there for the next start.
        d.start()
        assert "messages=%d " % len(acked) in d.log_lines("spool_open")[-1]
        rc, _ = stop_within(d, signal.SIGINT)
        assert rc == 0


def test_acceptance_resumes_by_itself_once_the_queue_drains():
    hop_port = free_port()
    d = spool_daemon(hop_port, "4MiB")
    hop = NextHop(hop_port)
    with small_disk(d) as spool:
        try:
            d.start()
            acked, _ = fill(d)
            assert len(acked) > 100
            assert mail_reply(d) == "452 4.3.1"
            hop.start()   # the next hop comes back: everything is delivered
            assert wait_for(lambda: len(subjects(hop)) >= len(acked), 120), \
                (len(subjects(hop)), len(acked))
            assert wait_for(lambda: queue_gauge(d) == 0, 60)
            # Nothing else happens: no new mail can come in, yet space is reclaimed (the
            # active segment too) and MAIL is accepted again, without a restart.
            assert wait_for(lambda: mail_reply(d) == "250 2.1.0", 60), \
                (segments(spool), state_gauge(d))
            assert state_gauge(d)["ok"] == 1
            # The operator reads why in the log: one line into `low`, one out of it.
            lines = d.log_lines("spool_state")
            assert len([l for l in lines if "state=low was=ok" in l]) == 1, lines
            assert len([l for l in lines if "state=ok was=low" in l]) == 1, lines
            got = subjects(hop)
            assert sorted(got) == sorted(acked)   # each exactly once
            s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
            s.sendmail("a@outside.test", ["user@example.test"], body("after"))
            s.quit()
            assert wait_for(lambda: "after" in subjects(hop), 60)
            rc, _ = stop_within(d, signal.SIGINT)
            assert rc == 0
        finally:
            hop.stop()


def test_deliveries_on_a_full_disk_are_recorded_and_never_sent_again_after_kill_9():
    hop_port = free_port()
    d = spool_daemon(hop_port, "0B")
    hop = NextHop(hop_port)
    with small_disk(d):
        try:
            d.start()
            acked, _ = fill(d, mail_refused=False)
            assert len(acked) > 200
            d.proc.kill()
            d.proc.wait()
            # The disk is still full; the next hop is back. Everything goes out once, and
            # each delivery is recorded although the disk is full.
            hop.start()
            d.start()
            assert wait_for(lambda: len(subjects(hop)) >= len(acked), 120)
            assert wait_for(lambda: queue_gauge(d) == 0, 60), queue_gauge(d)
            d.proc.kill()
            d.proc.wait()
            n = len(subjects(hop))
            d.start()
            assert "messages=0 " in d.log_lines("spool_open")[-1], d.log_lines("spool_open")[-1]
            time.sleep(3)   # past a retry (1 s): nothing left to send
            got = subjects(hop)
            assert len(got) == n
            assert sorted(got) == sorted(acked), "each message exactly once"
            rc, _ = stop_within(d, signal.SIGTERM)
            assert rc == 0
        finally:
            hop.stop()


@pytest.mark.skipif(not FAULTFS, reason="SLUICE_FAULTFS (the faultfs shim) not built")
def test_a_failing_disk_refuses_mail_backs_off_and_resumes_when_writes_work_again():
    d = spool_daemon(free_port(), "0B")
    ctl = d.dir / "faults"
    ctl.write_text("")
    spool = d.dir / "spool"
    spool.mkdir()
    d.env = dict(os.environ, LD_PRELOAD=FAULTFS, SLUICE_FAULT_DIR=str(spool),
                 SLUICE_FAULT_CTL=str(ctl))
    d.start()
    try:
        s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
        s.sendmail("a@outside.test", ["user@example.test"], body("before"))
        ctl.write_text("fdatasync=EIO\n")   # the disk starts failing
        assert s.mail("a@outside.test")[0] == 250
        assert s.rcpt("user@example.test")[0] == 250
        c, msg = s.data(body("in-flight"))
        assert (c, msg[:5]) == (451, b"4.3.0")   # answered, never silence
        s.quit()
        hits = lambda: len((d.dir / "faults.hits").read_text().splitlines())
        segs = len(segments(spool))
        for _ in range(20):
            assert mail_reply(d) == "452 4.3.1"
            time.sleep(0.2)
        assert state_gauge(d)["failing"] == 1
        assert "spool:       failing" in d.ctl("status").stdout
        # Retries and probes back off: a few failed calls in 4 s (deferrals every second,
        # refused mail never written), not a loop; no file left per attempt.
        assert hits() < 40, hits()
        assert len(segments(spool)) <= segs + 1
        ctl.write_text("")   # writes work again
        assert wait_for(lambda: mail_reply(d) == "250 2.1.0", 90)
        assert state_gauge(d)["ok"] == 1
        s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
        s.sendmail("a@outside.test", ["user@example.test"], body("after"))
        # Failing again, and SIGTERM still stops it.
        ctl.write_text("fdatasync=EIO write=EIO\n")
        c = s.mail("a@outside.test")[0]
        s.rcpt("user@example.test")
        assert c == 250 and s.data(body("lost"))[0] == 451
        assert mail_reply(d) == "452 4.3.1"
        rc, _ = stop_within(d, signal.SIGTERM)
        assert rc == 0
        ctl.write_text("")
        d.start()
        # "before" and "after" are queued; the two refused ones never come back.
        assert "messages=2 " in d.log_lines("spool_open")[-1], d.log_lines("spool_open")[-1]
    finally:
        d.stop()
