"""`sluicectl log-report` on generated decision logs with known counts.

The generator writes lines exactly as sluiced's logger does (common/log.cpp: key=value,
values quoted with \\" \\\\ \\xHH escapes when needed) and computes every expected number
itself; the tests compare them with `--json` output: codes, events, denied attempts
by client / network / sender / recipient domain with first and last times, weak grants,
authenticated users and the unusual-volume rule, C130 refusals, filters, gzip input
(also concatenated members and a truncated file), stdin, malformed lines.

The binary comes from $SLUICECTL (default build/tools/sluicectl under the repo root).
"""

import collections
import gzip
import ipaddress
import json
import os
import pathlib
import random
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SLUICECTL = os.environ.get("SLUICECTL", str(REPO / "build" / "tools" / "sluicectl"))

BASE = datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc)
USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
DENIED = {"D109", "D111", "D112", "D113", "B120"}


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def log_value(v):
    """common/log.cpp append_log_value, for ASCII text."""
    if v and all(32 < ord(c) < 0x7f and c not in '"\\=' for c in v):
        return v
    out = ['"']
    for c in v:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 0x7f:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def line(t, event, **kv):
    parts = [f"ts={iso(t)}", "lvl=info", "shard=0", "sess=%06x" % random.getrandbits(24),
             f"event={event}"]
    for k, v in kv.items():
        parts.append(f"{k}={log_value(v)}")
    return " ".join(parts) + "\n"


def network(client):
    ip = ipaddress.ip_address(client)
    return str(ipaddress.ip_network(f"{client}/{24 if ip.version == 4 else 64}", strict=False))


class Expected:
    def __init__(self):
        self.codes = collections.Counter()
        self.events = collections.Counter()
        self.tables = collections.defaultdict(dict)  # name -> key -> [count, first, last]
        self.times = []
        self.matched = 0

    def bump(self, table, key, t):
        e = self.tables[table].get(key)
        if e is None:
            self.tables[table][key] = [1, t, t]
        else:
            e[0] += 1
            e[1] = min(e[1], t)
            e[2] = max(e[2], t)

    def record(self, t, event, code=None, client=None, sender=None, rcpt=None, user=None):
        self.matched += 1
        self.times.append(t)
        self.events[event] += 1
        if code is None:
            return
        self.codes[code] += 1
        if code in DENIED:
            self.bump("denied_by_client", client, t)
            self.bump("denied_by_network", network(client), t)
            self.bump("denied_by_sender", sender.strip("<>") or "<>" if sender else "(none)", t)
            dom = rcpt.strip("<>").rsplit("@", 1)[1].rstrip(".").lower() if rcpt else "(none)"
            self.bump("denied_by_domain", dom, t)
        elif code in ("G106", "G110"):
            self.bump("weak_by_client", client, t)
            self.bump("weak_by_sender", sender.strip("<>") or "<>", t)
        elif code == "G108":
            self.bump("users", user, t)
        elif code == "C130":
            self.bump("refused", client, t)


def generate(n_sessions=3000, seed=11, start=BASE):
    """A realistic log: (text, Expected, list of (time, line, record-args))."""
    rng = random.Random(seed)
    random.seed(seed)
    exp = Expected()
    out = []
    t = start
    spam_clients = [f"203.0.113.{i}" for i in range(1, 40)] + \
                   [f"2001:db8:bad:{i:x}::{j}" for i in range(3) for j in (1, 2)]
    good_clients = [f"198.51.100.{i}" for i in range(1, 30)]
    blocked = ["192.0.2.66", "192.0.2.67", "2001:db8:ffff::1"]
    records = []

    def emit(event, code=None, client=None, sender=None, rcpt=None, user=None, **extra):
        kv = {}
        if code:
            kv["code"] = code
        if client:
            kv["client"] = client
        if sender is not None:
            kv["from"] = sender
        if rcpt is not None:
            kv["to"] = rcpt
        if user:
            kv["user"] = user
        kv.update(extra)
        text = line(t, event, **kv)
        out.append(text)
        records.append((t, text, dict(event=event, code=code, client=client, sender=sender,
                                      rcpt=rcpt, user=user)))
        exp.record(t, event, code, client, sender, rcpt, user)

    for _ in range(n_sessions):
        t += timedelta(milliseconds=rng.randint(1, 4000))
        kind = rng.random()
        if kind < 0.05:
            client = rng.choice(blocked)
            emit("connect", "C130", client, reply="554 5.7.1 connection refused")
            continue
        if kind < 0.45:
            client = rng.choice(spam_clients)
            emit("connect", client=client, listener="mx")
            sender = rng.choice(["<>", "<a@outside.test>", "<bulk@spam.example>",
                                 f"<x{rng.randint(1, 50)}@random.example>"])
            for _ in range(rng.randint(1, 4)):
                t += timedelta(milliseconds=rng.randint(0, 50))
                rcpt = rng.choice(["<victim@Elsewhere.TEST.>", "<v@far.example>",
                                   "<\"odd user\"@far.example>", "<user%far.example@example.test>",
                                   "<@example.test:x@far.example>"])
                code = rng.choice(["D111", "D111", "D111", "D113", "D109", "B120", "D112"])
                emit("rcpt", code, client, sender, rcpt, helo=rng.choice(["x.test", "evil \"h\""]),
                     listener="mx", reply="554 5.7.1 relay denied")
            emit("session", client=client, rcpts=str(rng.randint(1, 4)))
            continue
        client = rng.choice(good_clients)
        emit("connect", client=client, listener="submission")
        user = None
        if kind < 0.75:
            user = rng.choice(USERS)
            code = "G108"
        else:
            code = rng.choice(["L101", "L101", "L102", "L103", "G107", "G106", "G110", "T140"])
        sender = f"<{user or 'someone'}@example.test>"
        rcpt = "<r@far.example>" if code.startswith("G") else "<u@example.test>"
        emit("rcpt", code, client, sender, rcpt, user=user, listener="submission",
             reply="250 2.1.5 Ok")
        if code.startswith(("G", "L10")) and code != "L103":
            emit("queued", client=client, id="%08x" % rng.getrandbits(32))
            emit("delivered", id="%08x" % rng.getrandbits(32), result="sent")
        emit("session", client=client)
    # One user with unusual volume: mallory relays 1000 recipients in a burst (the others
    # about 150 each).
    for _ in range(1000):
        t += timedelta(milliseconds=10)
        emit("rcpt", "G108", "198.51.100.200", "<mallory@example.test>", "<r@far.example>",
             user="mallory", listener="submission")
    return "".join(out), exp, records


def run_report(*args, stdin=None):
    return subprocess.run([SLUICECTL, "log-report", *map(str, args)], capture_output=True,
                          input=stdin, timeout=120)


def report_json(*args, stdin=None):
    proc = run_report("--json", *args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def table(obj):
    return {e["key"]: [e["count"], e["first"], e["last"]] for e in obj["top"]}


def iso_table(d):
    return {k: [v[0], iso(v[1]), iso(v[2])] for k, v in d.items()}


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    text, exp, records = generate()
    path = tmp_path_factory.mktemp("logs") / "sluiced.log"
    path.write_text(text)
    return path, text, exp, records


def test_exact_counts(log):
    path, text, exp, _ = log
    r = report_json("--top", "100000", path)
    assert r["input"]["lines"] == text.count("\n")
    assert r["input"]["bytes"] == len(text.encode())
    assert r["input"]["matched"] == exp.matched
    assert r["input"]["malformed"] == 0
    assert r["time_range"] == {"first": iso(min(exp.times)), "last": iso(max(exp.times))}
    assert r["codes"] == dict(exp.codes)
    assert r["events"] == dict(exp.events)
    assert r["exact"] is True

    d = r["denied"]
    assert d["total"] == sum(exp.codes[c] for c in DENIED)
    assert table(d["by_client"]) == iso_table(exp.tables["denied_by_client"])
    assert table(d["by_network"]) == iso_table(exp.tables["denied_by_network"])
    assert table(d["by_sender"]) == iso_table(exp.tables["denied_by_sender"])
    assert table(d["by_recipient_domain"]) == iso_table(exp.tables["denied_by_domain"])
    assert "2001:db8:bad:1::/64" in table(d["by_network"])
    assert "elsewhere.test" in table(d["by_recipient_domain"])

    w = r["weak_grants"]
    assert w["G106"] == exp.codes["G106"] > 0
    assert w["G110"] == exp.codes["G110"] > 0
    assert w["total"] == exp.codes["G106"] + exp.codes["G110"]
    assert table(w["by_client"]) == iso_table(exp.tables["weak_by_client"])
    assert table(w["by_sender"]) == iso_table(exp.tables["weak_by_sender"])

    refused = r["connection_refusals"]
    assert refused["total"] == exp.codes["C130"]
    assert table(refused["by_client"]) == iso_table(exp.tables["refused"])


def test_top_n_order_and_others(log):
    path, _, exp, _ = log
    r = report_json("--top", "3", path)
    by_client = r["denied"]["by_client"]
    expected = sorted(exp.tables["denied_by_client"].items(), key=lambda kv: (-kv[1][0], kv[0]))
    assert [e["key"] for e in by_client["top"]] == [k for k, _ in expected[:3]]
    assert by_client["distinct"] == len(expected)
    assert by_client["others"] == sum(v[0] for _, v in expected[3:])


def test_authenticated_users_and_the_unusual_rule(log):
    path, _, exp, _ = log
    r = report_json("--top", "100", path)
    a = r["authenticated"]
    users = exp.tables["users"]
    counts = sorted(v[0] for v in users.values())
    n = len(counts)
    median = counts[n // 2] if n % 2 else (counts[n // 2 - 1] + counts[n // 2]) / 2
    assert a["total"] == exp.codes["G108"]
    assert a["users"] == len(users)
    assert a["median"] == pytest.approx(median, abs=0.05)
    unusual = sorted(u for u, v in users.items() if v[0] > 3 * median and v[0] > 100)
    assert unusual == ["mallory"]
    assert a["unusual_users"] == unusual
    assert {e["key"]: e["count"] for e in a["top"]} == {u: v[0] for u, v in users.items()}
    assert any("mallory" in w for w in r["warnings"])
    assert any(w.startswith("G110") for w in r["warnings"])
    assert any(w.startswith("G106") for w in r["warnings"])


def test_text_report_and_strict(log):
    path, _, exp, _ = log
    proc = run_report(path)
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert "WARNING G110" in out and "WARNING G106" in out
    assert f"denied relay attempts (D1xx, B120): {sum(exp.codes[c] for c in DENIED)}" in out
    assert "UNUSUAL" in out
    assert run_report("--strict", path).returncode == 1


def test_filters(log):
    path, _, _, records = log
    since = BASE + timedelta(hours=1)
    until = BASE + timedelta(hours=2)
    r = report_json("--since", iso(since), "--until", iso(until), path)
    inside = [rec for t, _, rec in records if since <= t < until]
    assert r["input"]["matched"] == len(inside)
    assert r["input"]["filtered_out"] == len(records) - len(inside)
    assert r["codes"] == dict(collections.Counter(rec["code"] for rec in inside if rec["code"]))

    r = report_json("--code", "D111", "--code", "c130", path)
    assert r["codes"].keys() <= {"D111", "C130"}
    assert r["input"]["matched"] == sum(1 for _, _, rec in records
                                        if rec["code"] in ("D111", "C130"))

    r = report_json("--client", "203.0.113.0/26", path)
    chosen = [rec for _, _, rec in records
              if rec["client"] and ipaddress.ip_address(rec["client"]).version == 4
              and ipaddress.ip_address(rec["client"]) in ipaddress.ip_network("203.0.113.0/26")]
    assert r["input"]["matched"] == len(chosen)
    assert r["denied"]["total"] == sum(1 for rec in chosen if rec["code"] in DENIED)

    r = report_json("--client", "2001:db8:bad::/48", path)
    assert r["input"]["matched"] == sum(
        1 for _, _, rec in records if rec["client"] and rec["client"].startswith("2001:db8:bad:"))


def test_gzip_and_multiple_files_and_stdin(log, tmp_path):
    path, text, _, _ = log
    whole = report_json("--top", "50", path)
    lines = text.splitlines(keepends=True)
    a, b, c = len(lines) // 3, 2 * len(lines) // 3, len(lines)
    (tmp_path / "part1.log").write_text("".join(lines[:a]))
    (tmp_path / "part2.log.gz").write_bytes(gzip.compress("".join(lines[a:b]).encode()))
    # logrotate-style: two gzip members in one file.
    half = (b + c) // 2
    (tmp_path / "part3.log.gz").write_bytes(gzip.compress("".join(lines[b:half]).encode()) +
                                            gzip.compress("".join(lines[half:c]).encode()))
    split = report_json("--top", "50", tmp_path / "part1.log", tmp_path / "part2.log.gz",
                        tmp_path / "part3.log.gz")
    assert split == whole
    piped = report_json("--top", "50", stdin=gzip.compress(text.encode()))
    assert piped == whole
    dash = report_json("--top", "50", "-", stdin=text.encode())
    assert dash == whole


def test_truncated_gzip_is_reported_and_counted(log, tmp_path):
    path, text, _, _ = log
    data = gzip.compress(text.encode())
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(data[: len(data) // 2])
    proc = run_report("--json", cut)
    assert proc.returncode == 0
    assert b"cut.log.gz" in proc.stderr
    r = json.loads(proc.stdout)
    assert r["input"]["read_errors"] == 1
    assert 0 < r["input"]["matched"] < text.count("\n")
    assert r["read_errors"] and "cut.log.gz" in r["read_errors"][0]


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    good = [
        line(BASE, "rcpt", code="D111", client="203.0.113.9", **{"from": "<a@x.test>"},
             to="<b@y.test>"),
        line(BASE + timedelta(seconds=1), "rcpt", code="G108", client="10.0.0.1", user="bob"),
        # CRLF and odd spacing are fine.
        line(BASE + timedelta(seconds=2), "connect", code="C130",
             client="192.0.2.1").replace("\n", "\r\n"),
        line(BASE + timedelta(seconds=3), "rcpt", code="D113", client="203.0.113.9",
             to='<"x@y"@example.test>', **{"from": "<a\x1b[2Jb@x.test>"}),
    ]
    bad = [
        "this is not a log line\n",
        'ts=2026-11-22T10:00:00.000Z event=rcpt code=D111 reply="unterminated\n',
        "ts=2026-11-22T10:00:00.000Z lvl=info\n",                 # no event
        "event=rcpt code=D111 client=1.2.3.4\n",                  # no ts
        "ts=2026-13-45T10:00:00Z event=rcpt code=D111\n",         # bad date
        'ts=2026-11-22T10:00:00Z event=rcpt helo="bad \\q escape"\n',
        "\x00\x01\x02\xff\xfe binary junk\n",
        "ts=2026-11-22T10:00:00Z event=rcpt code=D111 helo=" + "x" * 100_000 + "\n",
    ]
    blank = ["\n", "   \n"]
    truncated_last = 'ts=2026-11-22T10:00:09.000Z event=rcpt code=D111 client=1.2.3.4 reply="55'
    body = good[:2] + bad[:4] + blank + good[2:] + bad[4:] + [truncated_last]
    path = tmp_path / "mixed.log"
    path.write_bytes("".join(body).encode("latin-1"))
    r = report_json(path)
    assert r["input"]["lines"] == len(good) + len(bad) + len(blank) + 1
    assert r["input"]["matched"] == len(good)
    assert r["input"]["malformed"] == len(bad) + 1
    assert r["input"]["too_long"] == 1
    assert r["input"]["blank"] == len(blank)
    assert r["codes"] == {"D111": 1, "G108": 1, "C130": 1, "D113": 1}
    assert table(r["denied"]["by_recipient_domain"]) == {
        "y.test": [1, iso(BASE), iso(BASE)],
        "example.test": [1, iso(BASE + timedelta(seconds=3)), iso(BASE + timedelta(seconds=3))]}
    proc = run_report(path)
    assert proc.returncode == 0
    assert b"\x1b" not in proc.stdout


def test_bounded_tables_mark_counts_as_approximate(tmp_path):
    # 5000 distinct spam clients through tables of 100 keys: the report stays exact in
    # its totals, marks the tables inexact, and still names the heavy hitter.
    lines = []
    t = BASE
    for i in range(5000):
        t += timedelta(milliseconds=5)
        lines.append(line(t, "rcpt", code="D111", client=f"10.{i // 250}.{i % 250}.1",
                          to="<a@b.test>"))
        if i % 10 == 0:
            lines.append(line(t, "rcpt", code="D111", client="203.0.113.250", to="<a@b.test>"))
    path = tmp_path / "many.log"
    path.write_text("".join(lines))
    r = report_json("--max-keys", "100", "--top", "1", path)
    d = r["denied"]
    assert d["total"] == 5500
    assert d["by_client"]["exact"] is False
    assert d["by_client"]["distinct"] == 100
    assert d["by_client"]["top"][0]["key"] == "203.0.113.250"
    assert d["by_client"]["top"][0]["count"] >= 500
    assert r["exact"] is False
    first = iso(BASE + timedelta(milliseconds=5))
    assert table(d["by_recipient_domain"]) == {"b.test": [5500, first, iso(t)]}


@pytest.mark.parametrize("args", [
    ["/nonexistent/sluiced.log"],
    ["--since", "yesterday"],
    ["--until", "2026-11-22T10:00:00+01:00"],
    ["--client", "300.1.2.3"],
    ["--top", "0"],
    ["--code", ""],
    ["--bogus"],
])
def test_usage_errors(args):
    proc = run_report(*args, stdin=b"")
    assert proc.returncode == 2
    assert proc.stderr.startswith(b"sluicectl: log-report: ")
    assert proc.stderr.count(b"\n") == 1
    assert proc.stdout == b""


def test_empty_input():
    r = report_json(stdin=b"")
    assert r["input"]["lines"] == 0
    assert r["time_range"] is None
    assert r["codes"] == {}
    assert r["warnings"] == []
