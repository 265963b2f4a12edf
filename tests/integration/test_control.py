"""The live daemon's control: sluicectl reload/status/stats/explain over the control socket,
hot reload (rules, maps, listeners) under load, the socket's defences, systemd readiness."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from harness import SLUICECTL, Daemon, Raw, code, free_port


def rcpt(port, to, frm="a@outside.test"):
    """The reply code to RCPT TO:<to> in a fresh session."""
    c = Raw(port)
    c.cmd("EHLO client.test")
    c.cmd(f"MAIL FROM:<{frm}>")
    r = code(c.cmd(f"RCPT TO:<{to}>"))
    c.cmd("QUIT")
    c.close()
    return r


def edit(d, old, new):
    text = d.config.read_text()
    assert old in text, old
    d.config.write_text(text.replace(old, new))


class ControlConn:
    """A raw control-socket client: bytes out, one JSON reply per line in."""

    def __init__(self, d):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(d.control_socket))
        self.buf = b""

    def sendall(self, data):
        self.sock.sendall(data)

    def read_line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def closed(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def control_conn(d):
    return ControlConn(d)


def read_line(c):
    return c.read_line()


def closed(c, timeout=5):
    return c.closed(timeout)


# ---- status, explain, stats ------------------------------------------------------------

def test_status_reports_the_running_daemon():
    with Daemon() as d:
        st = d.ctl_json("status")
        assert st["ok"] is True
        assert re.fullmatch(r"\d+\.\d+\.\d+", st["version"])
        assert st["generation"] == 1
        assert st["shards"] == 2
        assert st["shard_generations"] == [1, 1]
        assert st["config"] == str(d.config)
        assert st["listeners"] == [{"name": "mx", "address": f"127.0.0.1:{d.port}", "role": "mx", "tls": "off"}]
        assert st["queue_messages"] == 0
        assert st["draining"] is False
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        assert d.ctl_json("status")["sessions_active"] == 1
        c.close()
        human = d.ctl("status")
        assert human.returncode == 0
        assert "generation:  1" in human.stdout
        assert f"127.0.0.1:{d.port}" in human.stdout


def test_explain_runs_the_live_policy():
    with Daemon() as d:
        r = d.ctl("explain", "--client", "203.0.113.9", "--from", "a@outside.test", "--to", "b@elsewhere.test")
        assert r.returncode == 0, r.stderr
        assert "decision:   D111 reject" in r.stdout
        assert "reply:      554 5.7.1" in r.stdout
        # Its source is the relay settings (where relaying was enabled, here the default).
        assert "source:     default" in r.stdout, r.stdout
        j = d.ctl_json("explain", "--client", "203.0.113.9", "--helo", "x.test", "--from", "",
                       "--to", "User@Example.TEST")
        assert j["code"] == "L101" and j["verdict"] == "accept"
        assert j["from"] == "<>" and j["to"] == "<User@example.test>"
        assert j["generation"] == 1
        # Errors are one line and exit 1 (the daemon could not run it) or 2 (usage).
        bad = d.ctl("explain", "--client", "nope", "--from", "a@b.test", "--to", "c@d.test")
        assert bad.returncode == 1
        assert bad.stderr.strip() == 'sluicectl: explain: client "nope" is not an IP address'
        mx_auth = d.ctl("explain", "--client", "192.0.2.1", "--auth", "alice", "--listener", "mx",
                        "--from", "a@b.test", "--to", "c@elsewhere.test")
        assert mx_auth.returncode == 1 and "offers no AUTH" in mx_auth.stderr, mx_auth.stderr
        usage = d.ctl("explain", "--client", "192.0.2.1", "--to", "c@d.test")
        assert usage.returncode == 2
        assert "explain needs --from" in usage.stderr


def test_every_command_has_help_and_no_daemon_is_a_clear_error(tmp_path):
    d = Daemon()  # not started
    for cmd in ("reload", "status", "stats", "explain"):
        r = d.ctl(cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith("usage: sluicectl"), cmd
        r = d.ctl(cmd) if cmd != "explain" else d.ctl(cmd, "--client", "1.2.3.4", "--from", "a@b.test",
                                                        "--to", "c@d.test")
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert r.stderr.startswith(f"sluicectl: cannot connect to {d.control_socket}: "), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


# ---- reload --------------------------------------------------------------------------

def test_reload_adds_and_removes_a_local_domain():
    with Daemon() as d:
        assert rcpt(d.port, "user@newdomain.test") == "554 5.7.1"
        edit(d, 'local = ["example.test"]', 'local = ["example.test", "newdomain.test"]')
        edit(d, '"example.test" = "maildir:maildir"',
             '"example.test" = "maildir:maildir"\n"newdomain.test" = "maildir:maildir"')
        r = d.ctl("reload")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "reloaded: generation 2" in r.stdout
        assert 'keys changed: domains.local, routes."newdomain.test"' in r.stdout
        # The reply comes once every shard switched: no waiting needed.
        for _ in range(4):
            assert rcpt(d.port, "user@newdomain.test") == "250 2.1.5"
        assert d.ctl_json("status")["shard_generations"] == [2, 2]
        edit(d, 'local = ["example.test", "newdomain.test"]', 'local = ["example.test"]')
        edit(d, '"newdomain.test" = "maildir:maildir"', "")
        j = d.ctl_json("reload")
        assert j["ok"] is True and j["generation"] == 3
        assert "domains.local" in j["changed"]["keys"]
        for _ in range(4):
            assert rcpt(d.port, "user@newdomain.test") == "554 5.7.1"
        # The decision log carries the generation that decided.
        assert re.search(r"event=rcpt code=D111 .*to=<user@newdomain.test> .*gen=3", d.log())


def test_session_in_flight_keeps_its_generation():
    with Daemon() as d:
        old = Raw(d.port)
        old.cmd("EHLO client.test")
        edit(d, 'local = ["example.test"]', 'local = ["example.test", "newdomain.test"]')
        edit(d, '"example.test" = "maildir:maildir"',
             '"example.test" = "maildir:maildir"\n"newdomain.test" = "maildir:maildir"')
        assert d.ctl("reload").returncode == 0
        old.cmd("MAIL FROM:<a@outside.test>")
        assert code(old.cmd("RCPT TO:<user@newdomain.test>")) == "554 5.7.1"  # started on gen 1
        assert rcpt(d.port, "user@newdomain.test") == "250 2.1.5"


def test_privileged_network_through_map_and_reload(tmp_path):
    extra = '\n[relay]\nprivileged_networks = false\n'
    d = Daemon(extra=extra)
    edit(d, '"example.test" = "maildir:maildir"', '"example.test" = "maildir:maildir"\n"*" = "maildir:relayed"')
    with d:
        nets = tmp_path / "nets.txt"
        nets.write_text("# trusted\n127.0.0.1/32 loopback\n")
        b = d.ctl("map", "build", "privileged_networks", str(nets))
        assert b.returncode == 0, b.stderr
        assert rcpt(d.port, "someone@elsewhere.test") == "554 5.7.1"  # criterion off
        edit(d, "privileged_networks = false", "privileged_networks = true")
        r = d.ctl("reload")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "keys changed: relay.privileged_networks" in r.stdout
        assert "maps changed: privileged_networks" in r.stdout
        # Relaying works and is deliverable.
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@outside.test>")
        assert code(c.cmd("RCPT TO:<someone@elsewhere.test>")) == "250 2.1.5"
        c.cmd("DATA")
        assert code(c.cmd("Subject: relayed\r\n\r\nhi\r\n.")) == "250 2.0.0"
        c.cmd("QUIT")
        assert len(list((d.dir / "relayed" / "new").iterdir())) == 1
        ex = d.ctl_json("explain", "--client", "127.0.0.1", "--from", "a@outside.test",
                        "--to", "someone@elsewhere.test")
        assert ex["code"] == "G107"
        assert ex["source"] == f"{nets}:2"
        # The network is removed from the map: relaying stops.
        nets.write_text("192.0.2.0/24 elsewhere\n")
        assert d.ctl("map", "build", "privileged_networks", str(nets)).returncode == 0
        j = d.ctl_json("reload")
        assert j["changed"]["maps"] == ["privileged_networks"]
        for _ in range(4):
            assert rcpt(d.port, "someone@elsewhere.test") == "554 5.7.1"


def test_broken_config_is_refused_with_every_error_and_changes_nothing():
    with Daemon() as d:
        good = d.config.read_text()
        bad = good.replace('hostname = "mx.example.test"',
                           'hostname = "mx.example.test"\nbogus_key = 1\nmax_connections = "lots"')
        bad = bad.replace('local = ["example.test"]', 'local = ["example.test", "newdomain.test"]')
        d.config.write_text(bad)
        lines = bad.splitlines()
        bogus_line = next(i for i, l in enumerate(lines, 1) if l.startswith("bogus_key"))
        maxc_line = bogus_line + 1
        r = d.ctl("reload")
        assert r.returncode == 1
        out = r.stdout.splitlines()
        assert f'{d.config}:{bogus_line}:1: unknown key "server.bogus_key"' in out, r.stdout
        assert any(l.startswith(f"{d.config}:{maxc_line}:") and "server.max_connections" in l for l in out), r.stdout
        assert r.stderr.strip() == "sluicectl: reload refused: 2 errors; nothing changed, generation 1 stays in service"
        assert d.ctl_json("status")["generation"] == 1
        # The old rules keep working; the domain of the broken file was not applied.
        assert rcpt(d.port, "user@example.test") == "250 2.1.5"
        assert rcpt(d.port, "user@newdomain.test") == "554 5.7.1"
        j = json.loads(d.ctl("--json", "reload").stdout)
        assert j["ok"] is False and len(j["errors"]) == 2 and j["generation"] == 1
        # A syntax error is reported too (the socket path is still found).
        d.config.write_text(good + "\n[broken\n")
        r = d.ctl("reload")
        assert r.returncode == 1 and f"{d.config}:" in r.stdout
        d.config.write_text(good)
        assert d.ctl("reload").returncode == 0
        assert d.ctl_json("status")["generation"] == 2
        assert "result=rejected" in d.log() and "result=ok generation=2" in d.log()


def test_changes_that_need_a_restart_are_refused():
    with Daemon() as d:
        edit(d, "shards = 2", "shards = 3")
        r = d.ctl("reload")
        assert r.returncode == 1
        assert "server.shards changes from 2 to 3" in r.stdout and "restart sluiced" in r.stdout
        edit(d, "shards = 3", "shards = 2")
        edit(d, 'dir = "maps"', 'dir = "maps2"')
        r = d.ctl("reload")
        assert r.returncode == 1 and "maps.dir changes" in r.stdout
        assert d.ctl_json("status")["generation"] == 1


def test_sighup_and_sluicectl_reload_share_one_path():
    with Daemon() as d:
        d.signal(signal.SIGHUP)
        deadline = time.time() + 5
        while "result=ok generation=2" not in d.log() and time.time() < deadline:
            time.sleep(0.02)
        assert "result=ok generation=2" in d.log()
        assert d.ctl_json("reload")["generation"] == 3


def test_listener_added_then_removed():
    with Daemon() as d:
        port2 = free_port()
        base = d.config.read_text()
        d.config.write_text(base + f'\n[[listener]]\nname = "extra"\naddress = "127.0.0.1:{port2}"\nrole = "mx"\n')
        r = d.ctl("reload")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"listeners added: extra (127.0.0.1:{port2})" in r.stdout
        for _ in range(4):  # every shard serves it
            assert rcpt(port2, "user@example.test") == "250 2.1.5"
        assert [l["name"] for l in d.ctl_json("status")["listeners"]] == ["mx", "extra"]
        assert rcpt(d.port, "user@example.test") == "250 2.1.5"
        d.config.write_text(base)
        r = d.ctl("reload")
        assert f"listeners removed: extra (127.0.0.1:{port2})" in r.stdout
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port2), timeout=2)
        assert rcpt(d.port, "user@example.test") == "250 2.1.5"
        # Counters are per listener name and survive the removal.
        stats = d.ctl_json("stats")
        assert stats["connections"]["extra"]["accepted"] == 4


def test_listener_on_a_busy_port_refuses_the_whole_reload():
    with Daemon() as d:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        edit(d, 'local = ["example.test"]', 'local = ["example.test", "newdomain.test"]')
        d.config.write_text(d.config.read_text() +
                            f'\n[[listener]]\nname = "extra"\naddress = "127.0.0.1:{busy}"\n')
        r = d.ctl("reload")
        assert r.returncode == 1
        assert f'listener "extra": cannot listen on 127.0.0.1:{busy}: Address already in use' in r.stdout
        assert rcpt(d.port, "user@newdomain.test") == "554 5.7.1"  # nothing else applied either
        blocker.close()


def test_reload_under_load_drops_nothing():
    """smtp-source runs 3000 messages over fresh connections while reloads change rules and
    add/remove a listener: no failed transaction, no dropped connection, every message stored."""
    with Daemon() as d:
        base = d.config.read_text()
        port2 = free_port()
        variants = [
            base,
            base.replace('local = ["example.test"]', 'local = ["example.test", "other.test"]'),
            base + f'\n[[listener]]\nname = "extra"\naddress = "127.0.0.1:{port2}"\n',
        ]
        before = d.ctl_json("stats")  # the harness's readiness probe is one connection
        src = subprocess.Popen(["/usr/sbin/smtp-source", "-s", "10", "-m", "3000", "-l", "512",
                                "-f", "sender@outside.test", "-t", "user@example.test",
                                f"127.0.0.1:{d.port}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        reloads = 0
        generation = 1
        while src.poll() is None:
            d.config.write_text(variants[reloads % len(variants)])
            j = d.ctl_json("reload")
            assert j["ok"] is True, j
            generation += 1
            assert j["generation"] == generation
            reloads += 1
            time.sleep(0.02)
        out, err = src.communicate()
        assert src.returncode == 0, err
        assert err == b"", err  # smtp-source reports every failed session or transaction
        assert reloads >= 5, f"only {reloads} reloads during the run"
        assert len(d.messages()) == 3000
        stats = d.ctl_json("stats")
        assert stats["messages"]["accepted"] - before["messages"]["accepted"] == 3000
        assert stats["messages"]["failed"] == 0
        assert stats["connections"]["mx"]["accepted"] - before["connections"]["mx"]["accepted"] == 3000
        assert "lvl=error" not in d.log()


# ---- the control socket's defences ----------------------------------------------------

def test_wrong_uid_is_refused():
    with Daemon() as d:
        os.chmod(d.dir, 0o755)  # nobody may reach the config and the socket's directory
        os.chmod(d.config, 0o644)
        r = d.ctl("status", user="nobody")
        assert r.returncode == 2
        assert r.stderr.strip() == f"sluicectl: cannot connect to {d.control_socket}: Permission denied"
        assert oct(os.stat(d.control_socket).st_mode & 0o777) == "0o660"
        # Even with the file mode loosened, SO_PEERCRED keeps others out.
        os.chmod(d.control_socket, 0o666)
        r = d.ctl("status", user="nobody")
        assert r.returncode == 2
        assert r.stderr.strip() == (f"sluicectl: cannot connect to {d.control_socket}: permission denied: "
                                    "uid 65534 may not use the control socket")
        assert "event=control_refused uid=65534" in d.log()
        assert d.ctl("status").returncode == 0  # root still gets in


def test_garbage_and_partial_lines():
    with Daemon() as d:
        s = control_conn(d)
        s.sendall(b"garbage\n")
        assert read_line(s) == {"ok": False, "error": "invalid JSON"}
        s.sendall(b'["cmd","status"]\n')
        assert read_line(s)["error"] == "a request must be a JSON object"
        s.sendall(b'{"cmd":"rm -rf"}\n')
        assert read_line(s)["error"] == 'unknown command "rm -rf"'
        s.sendall(b'{"cmd":"explain","client":7}\n')
        assert read_line(s)["ok"] is False
        s.sendall(b'{"cmd":')
        time.sleep(0.2)
        s.sendall(b'"status"}\r\n')
        assert read_line(s)["generation"] == 1
        s.sendall(b'{"cmd":"status"}\n{"cmd":"stats"}\n')  # pipelined: in order
        assert "generation" in read_line(s)
        assert "stats" in read_line(s)
        s.close()


def test_a_1mb_line_gets_an_error_and_is_closed():
    with Daemon() as d:
        s = control_conn(d)
        line = b'{"cmd":"status","pad":"' + b"x" * (1024 * 1024) + b'"}\n'
        sender = threading.Thread(target=lambda: _sendall_quietly(s, line))
        sender.start()
        reply = read_line(s)
        assert reply == {"ok": False, "error": "request line longer than 65536 bytes; closing"}
        assert closed(s)
        sender.join()
        assert d.ctl("status").returncode == 0


def _sendall_quietly(s, data):
    try:
        s.sendall(data)
    except OSError:
        pass


def test_many_clients_and_a_silent_one_does_not_block_others():
    with Daemon() as d:
        silent = control_conn(d)
        silent.sendall(b'{"cmd":"sta')  # never finished
        results = []
        lock = threading.Lock()

        def client():
            s = control_conn(d)
            s.sendall(b'{"cmd":"status"}\n')
            r = read_line(s)
            with lock:
                results.append(r["ok"])
            s.close()

        t0 = time.time()
        threads = [threading.Thread(target=client) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [True] * 50
        assert time.time() - t0 < 5
        # The CLI works next to them too.
        assert d.ctl("status").returncode == 0
        silent.close()


# ---- systemd ---------------------------------------------------------------------------

@pytest.mark.parametrize("abstract", [False, True])
def test_systemd_readiness_reloading_and_stopping(abstract, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = "sluice-test-" + uuid.uuid4().hex
        sock.bind("\0" + name)
        env_name = "@" + name
    else:
        env_name = str(tmp_path / "notify.sock")
        sock.bind(env_name)
    sock.settimeout(10)

    def next_message():
        return sock.recv(4096).decode()

    d = Daemon()
    d.env = dict(os.environ, NOTIFY_SOCKET=env_name)
    with d:
        assert "READY=1" in next_message().splitlines()
        assert d.ctl("reload").returncode == 0
        reloading = next_message().splitlines()
        assert "RELOADING=1" in reloading
        usec = [l for l in reloading if l.startswith("MONOTONIC_USEC=")]
        assert usec and int(usec[0].split("=")[1]) > 0
        assert "READY=1" in next_message().splitlines()
        d.stop()
        assert "STOPPING=1" in next_message().splitlines()
    sock.close()
