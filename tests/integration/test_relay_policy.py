"""The relay policy in a real sluiced: decisions with codes, LMDB maps changed live,
fail-closed on broken maps, and the operator tools (relay-test, log-report) against it."""
import json
import subprocess
import time

from harness import SLUICECTL, SLUICED, Daemon, Raw, code


def ctl(d, *args, input=None):
    return subprocess.run([SLUICECTL, "--config", str(d.config), *args], capture_output=True,
                          text=True, input=input, timeout=120)


def build_map(d, name, text):
    src = d.dir / f"{name}.txt"
    src.write_text(text)
    r = ctl(d, "map", "build", name, str(src))
    assert r.returncode == 0, r.stdout + r.stderr


def rcpt(d, to, sender="a@outside.test"):
    c = Raw(d.port)
    c.cmd("EHLO client.test")
    mail = c.cmd(f"MAIL FROM:<{sender}>")
    if not mail[-1].startswith("250"):
        return mail
    return c.cmd(f"RCPT TO:<{to}>")


def eventually(fn, expect, seconds=3):
    """Maps are picked up by every shard within a second; poll until then."""
    deadline = time.time() + seconds
    got = None
    while time.time() < deadline:
        got = fn()
        if got == expect:
            return got
        time.sleep(0.1)
    return got


def test_relay_test_passes_against_sluiced():
    with Daemon() as d:
        r = subprocess.run([SLUICECTL, "relay-test", f"127.0.0.1:{d.port}", "--json"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["open_relay"] is False
        assert report["summary"]["fail"] == 0
        assert report["summary"]["pass"] == report["summary"]["total"] >= 40
        # Every decision the battery provoked was a denial; nothing was stored.
        codes = {l.split(" code=")[1].split(" ")[0] for l in d.log_lines("rcpt")}
        assert codes <= {"D111", "D113", "L101", "L103"}, codes
        assert d.messages() == []


def test_relay_test_detects_an_open_relay():
    extra = '\n[relay]\nopen = true\nacknowledge_open_relay = true\n'
    d = Daemon(extra=extra)
    d.config.write_text(d.config.read_text().replace('"example.test" = "maildir:maildir"',
                                                     '"example.test" = "maildir:maildir"\n"*" = "maildir:relayed"'))
    with d:
        r = subprocess.run([SLUICECTL, "relay-test", f"127.0.0.1:{d.port}", "--json"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["open_relay"] is True and report["summary"]["fail"] >= 1
        assert any("code=G110" in l for l in d.log_lines("rcpt"))
        # relay-test never sends DATA: nothing was relayed.
        assert not (d.dir / "relayed" / "new").exists() or not list((d.dir / "relayed" / "new").iterdir())


def test_local_addresses_and_catch_all_apply_without_reload():
    with Daemon() as d:
        assert code(rcpt(d, "anyone@example.test")) == "250 2.1.5"   # no address list: domain-wide
        build_map(d, "local_addresses", "known@example.test\nalias@example.test target@example.test\n")
        assert eventually(lambda: code(rcpt(d, "anyone@example.test")), "550 5.1.1") == "550 5.1.1"
        assert code(rcpt(d, "known@example.test")) == "250 2.1.5"
        assert code(rcpt(d, "postmaster@example.test")) == "250 2.1.5"
        build_map(d, "catch_all", "example.test catchall@example.test\n")
        assert eventually(lambda: code(rcpt(d, "anyone@example.test")), "250 2.1.5") == "250 2.1.5"
        lines = d.log_lines("rcpt")
        assert any("code=L103" in l and "to=<anyone@example.test>" in l for l in lines)
        assert any("code=L102" in l for l in lines)
        assert any("code=L101" in l and "to=<known@example.test>" in l for l in lines)


def test_privileged_network_grants_relay_and_names_it():
    extra = '\n[relay]\nprivileged_networks = true\n'
    d = Daemon(extra=extra)
    d.config.write_text(d.config.read_text().replace('"example.test" = "maildir:maildir"',
                                                     '"example.test" = "maildir:maildir"\n"*" = "maildir:outbound"'))
    with d:
        assert code(rcpt(d, "someone@elsewhere.test")) == "554 5.7.1"
        build_map(d, "privileged_networks", "127.0.0.1/32 loopback-lan\n")
        assert eventually(lambda: code(rcpt(d, "someone@elsewhere.test")), "250 2.1.5") == "250 2.1.5"
        granted = [l for l in d.log_lines("rcpt") if "code=G107" in l]
        assert granted and "loopback-lan" in granted[-1] and "privileged_networks.txt:1" in granted[-1]
        # Routing tricks stay denied even for a privileged client.
        assert code(rcpt(d, "someone%elsewhere.test@example.test")) == "554 5.7.1"
        assert any("code=D113" in l for l in d.log_lines("rcpt"))


def test_connection_filter_and_access_map():
    extra = '\n[connections]\nfilter = "deny-listed"\n'
    with Daemon(extra=extra) as d:
        build_map(d, "access", "bad@outside.test REJECT go away\n@spam.test DEFER slow down\n")
        assert eventually(lambda: code(rcpt(d, "user@example.test", sender="bad@outside.test")),
                          "554 5.7.1") == "554 5.7.1"
        assert code(rcpt(d, "user@example.test", sender="x@spam.test")) == "450 4.7.1"
        assert any("code=B120" in l for l in d.log_lines("mail"))
        build_map(d, "connection_filter", "127.0.0.1/32 deny\n")
        def greeting():
            c = Raw(d.port, greeting=False)
            return code(c.reply())
        assert eventually(greeting, "554 5.7.1") == "554 5.7.1"
        assert any("code=C130" in l for l in d.log_lines("connect"))


def test_corrupt_map_fails_closed_never_opens():
    with Daemon() as d:
        build_map(d, "local_addresses", "known@example.test\n")
        assert eventually(lambda: code(rcpt(d, "anyone@example.test")), "550 5.1.1") == "550 5.1.1"
        # A half-written file replacing the good one: the old generation keeps serving.
        path = d.dir / "maps" / "local_addresses.mdb"
        good = path.read_bytes()
        tmp = d.dir / "maps" / "local_addresses.mdb.new"
        tmp.write_bytes(good[: len(good) // 3])
        tmp.rename(path)
        time.sleep(1)
        assert code(rcpt(d, "anyone@example.test")) == "550 5.1.1"
        assert code(rcpt(d, "known@example.test")) == "250 2.1.5"
    # Started with only a corrupt map: --check refuses the installation; the daemon still
    # serves, and every recipient that needs the map gets 451 4.3.0 (T140).
    d2 = Daemon()
    (d2.dir / "maps" / "local_addresses.mdb").write_bytes(b"\0garbage" * 4096)
    r = subprocess.run([SLUICED, "--config", str(d2.config), "--check"], capture_output=True, text=True)
    assert r.returncode == 1 and "local_addresses" in r.stderr
    with d2:
        assert code(rcpt(d2, "anyone@example.test")) == "451 4.3.0"
        assert code(rcpt(d2, "someone@elsewhere.test")) == "554 5.7.1"
        assert any("code=T140" in l for l in d2.log_lines("rcpt"))
        assert d2.messages() == []
        # The start-up warning about it is a log line like every other (key=value).
        warned = [l for l in d2.log_lines("config") if "local_addresses" in l]
        assert warned and " lvl=warn " in warned[0] and "problem=" in warned[0]
        assert all(l.startswith("ts=") for l in d2.log().splitlines() if l.strip())


def test_log_report_counts_real_traffic():
    with Daemon() as d:
        for to in ["u1@example.test", "u2@example.test", "x@elsewhere.test", "y@elsewhere.test",
                   "z%evil.test@example.test"]:
            rcpt(d, to)
        time.sleep(0.3)
        r = subprocess.run([SLUICECTL, "log-report", "--json", str(d.log_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        text = json.dumps(rep)
        counts = rep.get("codes") or rep.get("decisions") or {}
        if isinstance(counts, list):
            counts = {c["code"]: c["count"] for c in counts}
        assert counts.get("L101") == 2, text
        assert counts.get("D111") == 2, text
        assert counts.get("D113") == 1, text


def test_live_map_edits_never_open_what_the_check_refuses():
    """A privileged network of 0.0.0.0/0 is refused by --check, a reload and the start-up;
    a live edit must not open it either: `map add` and `map build` refuse to publish it,
    and a file published behind the daemon's back (here by a config that does not use the
    map, so the lint only warns) is not switched to: the old generation keeps serving."""
    extra = '\n[relay]\nprivileged_networks = true\n'
    d = Daemon(extra=extra)
    d.config.write_text(d.config.read_text().replace('"example.test" = "maildir:maildir"',
                                                     '"example.test" = "maildir:maildir"\n"*" = "maildir:outbound"'))
    with d:
        build_map(d, "privileged_networks", "192.0.2.0/24 lab\n")
        assert eventually(lambda: len([l for l in d.log_lines("map_loaded")
                                       if "map=privileged_networks" in l]) >= 2, True)
        r = ctl(d, "map", "add", "privileged_networks", "0.0.0.0/0", "all")
        assert r.returncode == 1 and "is /0, everybody" in r.stderr, r.stdout + r.stderr
        src = d.dir / "wide.txt"
        src.write_text("0.0.0.0/1 half\n128.0.0.0/1 other-half\n")
        r = ctl(d, "map", "build", "privileged_networks", str(src))
        assert r.returncode == 1 and "wide.txt:1" in r.stderr, r.stdout + r.stderr
        assert "192.0.2.0/24" in ctl(d, "map", "list", "privileged_networks").stdout

        other = d.dir / "other.toml"
        other.write_text(d.config.read_text().replace("privileged_networks = true",
                                                      "privileged_networks = false"))
        r = subprocess.run([SLUICECTL, "--config", str(other), "map", "add",
                            "privileged_networks", "0.0.0.0/0", "all"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert eventually(lambda: any("map=privileged_networks" in l
                                      for l in d.log_lines("map_rejected")), True)
        assert code(rcpt(d, "someone@elsewhere.test")) == "554 5.7.1"
        assert not [l for l in d.log_lines("rcpt") if "code=G107" in l]


def test_unparsable_relay_tricks_are_decisions_on_record():
    """Paths that do not even parse but carry a relay trick's marks get 501 5.1.3 AND a
    D113 decision line (log-report and the metric see the attempt); a path that is merely
    malformed gets its 501 without a decision."""
    d = Daemon()
    with d:
        tricks = ["user@example.test@elsewhere.test", "a%b@[2130706433]", "@[127.0.0.1]:x@y",
                  "host!user", '"a@b"']
        for t in tricks:
            assert code(rcpt(d, t)) == "501 5.1.3", t
        assert code(rcpt(d, "no-at-sign-at-all.")) == "501 5.1.3"
        lines = [l for l in d.log_lines("rcpt") if "code=D113" in l]
        assert len(lines) == len(tricks), "\n".join(d.log_lines("rcpt"))
        for t in tricks:
            assert any(t.replace('"', '\\"') in l for l in lines), t
        assert not [l for l in d.log_lines("rcpt") if "no-at-sign-at-all" in l]
