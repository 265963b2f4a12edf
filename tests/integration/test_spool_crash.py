"""Crash safety of the spool: kill -9 at random moments under load, many times, then recover.

tests/unit/storage/spool_crash_driver.cpp submits messages from several threads and prints
"ok ID" only after the spool's commit callback reported the message durable. We kill it
with SIGKILL at a random moment, run its `verify` mode (a fresh process: recovery, then every
message read back and compared with the content its id determines, CRC checked), and count:

- every id printed "ok" and not since recorded delivered must be recovered (lost: 0);
- every recovered message must be intact, byte for byte (bad: 0): nothing half-written;
- every recovered id must be one the driver submitted (made up: 0).

The spool directory is kept across rounds, so recovery of a recovered spool, segment
rotation and deletion (tiny segments), big files and delivered records all meet crashes.
kill -9 leaves the page cache alone: this checks the ordering of acknowledgements and
records, not power loss (the fsync is what protects against that).
"""
import json
import os
import random
import re
import signal
import subprocess
import threading
import time

DRIVER = os.environ.get("SPOOL_CRASH_DRIVER", "build/tests/unit/storage/spool_crash_driver")
ROUNDS = int(os.environ.get("SPOOL_CRASH_ROUNDS", "40"))
ID = re.compile(r"^\d+-\d+-\d+$")


def run_round(spool, rnd, rng, common):
    threads = rng.choice([1, 4, 16, 64])
    proc = subprocess.Popen(
        [DRIVER, "submit", spool, "--run", str(rnd), "--threads", str(threads),
         "--deliver-every", str(rng.choice([2, 3, 5]))] + common,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines = []

    def reader():
        buf = b""
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            buf += chunk
            *whole, buf = buf.split(b"\n")
            lines.extend(l.decode() for l in whole)
        # An unterminated last line was cut by the kill: it does not count.

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(rng.choice([0.005, 0.02, 0.05]) + rng.random() * 0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t.join()
    return lines


def test_kill9_under_load_loses_nothing_and_recovers_nothing_half_written(tmp_path):
    assert os.path.exists(DRIVER), DRIVER
    spool = str(tmp_path / "spool")
    rng = random.Random(int(os.environ.get("SPOOL_CRASH_SEED", str(time.time_ns()))))
    common = ["--segment-bytes", "65536", "--min-size", "100", "--max-size", "6000",
              "--large", "65536", "--large-size", "150000"]
    acked, delivered, failed = set(), set(), set()
    totals = {"rounds": 0, "acked": 0, "recovered": 0, "torn_tails": 0}
    for rnd in range(ROUNDS):
        for line in run_round(spool, rnd, rng, common):
            kind, _, rest = line.partition(" ")
            if kind == "ok":
                acked.add(rest)
            elif kind == "delivered":
                delivered.add(rest)
            elif kind == "fail":
                failed.add(rest)
        v = subprocess.run([DRIVER, "verify", spool] + common, capture_output=True, text=True,
                           timeout=120)
        have, bad = set(), []
        for line in v.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "have":
                have.add(rest)
            elif kind == "bad":
                bad.append(rest)
        assert not bad, f"round {rnd}: damaged messages recovered: {bad[:5]}"
        assert v.returncode == 0, v.stderr
        lost = (acked - delivered) - have
        assert not lost, f"round {rnd}: {len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
        made_up = [i for i in have if not ID.match(i) or int(i.split("-")[0]) > rnd]
        assert not made_up, f"round {rnd}: unknown ids recovered: {made_up[:5]}"
        assert not (have & failed), f"round {rnd}: failed commits recovered: {sorted(have & failed)[:5]}"
        m = re.search(r"torn_bytes=(\d+)", v.stderr)
        totals["torn_tails"] += bool(m and int(m.group(1)) > 0)
        totals["rounds"] += 1
        totals["recovered"] = len(have)
    totals["acked"] = len(acked)
    print("spool crash test:", totals, "delivered:", len(delivered))
    assert totals["acked"] > 100, "the driver should have committed a fair amount under load"


SLUICECTL = os.environ.get("SLUICECTL", "build/tools/sluicectl")


def test_sluicectl_queue_works_offline_and_refuses_while_the_spool_is_locked(tmp_path):
    """sluicectl queue on a spool the driver filled (and a crash left), then while it runs."""
    spool = tmp_path / "spool"
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('[server]\nhostname = "mx.example.test"\n\n[[listener]]\nname = "mx"\n'
                   'address = "127.0.0.1:2599"\nrole = "mx"\ntls = "off"\n\n'
                   '[domains]\nlocal = ["example.test"]\n\n'
                   '[routes]\n"*" = "smtp://127.0.0.1:2526"\n\n'
                   f'[spool]\ndir = "{spool}"\n')
    ctl = lambda *a: subprocess.run([SLUICECTL, "--config", str(cfg), "queue", *a],
                                    capture_output=True, text=True, timeout=60)
    lines = run_round(str(spool), 0, random.Random(7), ["--max-size", "500"])
    acked = {l.split()[1] for l in lines if l.startswith("ok ")}
    delivered = {l.split()[1] for l in lines if l.startswith("delivered ")}
    assert acked

    r = ctl("list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {m["id"]: m for m in json.loads(r.stdout)}
    assert acked - delivered <= set(listed)
    some = sorted(acked - delivered)[0]
    assert listed[some]["sender"] == f"s-{some}@sender.test"
    assert listed[some]["recipients"][0]["transport"] == "smtp://127.0.0.1:2526"

    r = ctl("show", some)
    assert r.returncode == 0 and f"Message-Id: <{some}@crash.test>" in r.stdout
    assert ctl("hold", some).stdout == f"held {some}\n"
    assert {m["id"]: m for m in json.loads(ctl("list", "--json").stdout)}[some]["held"] is True

    r = ctl("purge", "--rcpt-domain", "dom1.test", "--dry-run", "--json")
    dry = json.loads(r.stdout)
    assert dry["dry_run"] is True and dry["recipients"] > 0
    assert len(json.loads(ctl("list", "--json").stdout)) == len(listed)  # nothing changed

    r = ctl("purge", "--sender", f"s-{some}@sender.test")
    assert r.returncode == 0 and f"removed {some}" in r.stdout
    assert ctl("show", some).returncode == 1
    assert ctl("delete", "no-such-id").returncode == 1
    assert ctl("purge").returncode == 2  # a filter is required

    # While another process holds the spool, sluicectl asks the daemon's control socket
    # instead; there is no daemon here, so it fails with a clear error.
    proc = subprocess.Popen([DRIVER, "submit", str(spool), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline()  # its first line: it has the spool open
        r = ctl("list")
        assert r.returncode == 2
        assert "cannot connect to" in r.stderr
    finally:
        proc.kill()
        proc.wait()
