"""Clients that hold a slot without doing anything: an SMTP client
sending NOOPs, slow HTTP clients of an unprivileged local user on the stats endpoint, idle
connections to the control socket. Each must be closed or pushed aside while the real
work (mail, the health probe, the operator's sluicectl) goes through."""
import os
import socket
import subprocess
import sys
import time

from harness import Daemon, Raw, code, wait_for


def test_noop_flood_is_closed_past_the_junk_command_limit():
    with Daemon(limits="junk_commands = 100") as d:
        c = Raw(d.port)
        assert c.cmd("EHLO client.test")[-1].startswith("250 ")
        # NOOP, RSET, HELP, VRFY and repeated EHLOs all count; 100 are answered as usual.
        verbs = ["NOOP", "RSET", "HELP", "VRFY someone", "EHLO client.test"]
        for i in range(100):
            assert code(c.cmd(verbs[i % len(verbs)]))[:1] == "2", i
        assert code(c.cmd("NOOP")) == "421 4.7.0"
        assert c.closed()
        assert wait_for(lambda: any("result=junk_commands" in l
                                    for l in d.log_lines("session")))

        # A message accepted forgives them (as in Postfix): a client that sends RSET between
        # its messages is not cut off.
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        for _ in range(3):
            for _ in range(60):
                assert code(c.cmd("RSET")) == "250 2.0.0"
            assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "250 2.1.0"
            assert code(c.cmd("RCPT TO:<user@example.test>")) == "250 2.1.5"
            assert c.cmd("DATA")[0].startswith("354")
            assert code(c.cmd("Subject: x\r\n\r\nbody\r\n.")) == "250 2.0.0"
        assert code(c.cmd("QUIT")) == "221 2.0.0"


def test_noop_trickler_is_closed_at_the_command_deadline():
    with Daemon(limits='command_deadline = "2s"') as d:
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        start = time.time()
        got = None
        while time.time() - start < 30:
            try:
                got = c.cmd("NOOP")
            except (OSError, EOFError):
                break
            if code(got) != "250 2.0.0":
                break
            time.sleep(0.5)
        assert got is not None and code(got) == "421 4.4.2", got
        assert c.closed()
        # Closed at the deadline (2 s) plus the session's once-a-second tick, not at the
        # 5-minute idle timeout; 30 s is the test giving up.
        assert time.time() - start < 30


def trickle(c, commands, interval=0.3, seconds=30):
    """Sends `commands` round and round, one every `interval` s, until the session is closed
    or `seconds` pass: the last reply's code (None if it ran out of time)."""
    start = time.time()
    i = 0
    while time.time() - start < seconds:
        try:
            got = code(c.cmd(commands[i % len(commands)]))
        except (OSError, EOFError):
            return "closed"
        if got[:1] not in ("2", "3"):
            return got
        i += 1
        time.sleep(interval)
    return None


def test_transactions_that_are_reset_in_a_loop_are_closed_at_the_command_deadline():
    with Daemon(limits='command_deadline = "2s"') as d:
        for commands in (["MAIL FROM:<a@outside.test>", "RSET"],
                         ["MAIL FROM:<a@outside.test>", "NOOP", "RCPT TO:<user@example.test>",
                          "NOOP", "NOOP", "RSET"]):
            c = Raw(d.port)
            c.cmd("EHLO client.test")
            assert trickle(c, commands) == "421 4.4.2", commands
            assert c.closed()


def test_a_client_sending_messages_with_rset_and_pauses_between_them_stays():
    with Daemon(limits='command_deadline = "2s"') as d:
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        start = time.time()
        n = 0
        while time.time() - start < 8:  # four deadlines
            assert code(c.cmd("RSET")) == "250 2.0.0"
            if n == 1:
                time.sleep(3)  # one pause after RSET, longer than the deadline
            assert code(c.cmd("MAIL FROM:<a@outside.test>")) == "250 2.1.0"
            assert code(c.cmd("NOOP")) == "250 2.0.0"
            assert code(c.cmd("RCPT TO:<user@example.test>")) == "250 2.1.5"
            time.sleep(1.2)  # the session's once-a-second tick looks at the run meanwhile
            assert code(c.cmd("NOOP")) == "250 2.0.0"
            assert c.cmd("DATA")[0].startswith("354")
            assert code(c.cmd(f"Subject: {n}\r\n\r\nbody\r\n.")) == "250 2.0.0"
            n += 1
            time.sleep(0.3)
        assert code(c.cmd("QUIT")) == "221 2.0.0"


# Slow HTTP clients, run as `nobody` (any local user can do this): each opens a connection,
# sends part of a request and then a byte now and then, and reconnects as soon as it is
# closed. Prints "ready" once every client has connected once.
SLOW_HTTP_CLIENTS = r"""
import socket, sys, threading, time
port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
end = time.time() + seconds
connected = threading.Barrier(n + 1)
def client():
    once = True
    while time.time() < end:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            if once:
                once = False
                connected.wait()
            while time.time() < end:
                s.sendall(b"X")
                time.sleep(0.2)
        except OSError:
            if once:
                once = False
                connected.wait()
            time.sleep(0.01)
for _ in range(n):
    threading.Thread(target=client, daemon=True).start()
connected.wait()
print("ready", flush=True)
while time.time() < end:
    time.sleep(0.1)
"""


def probe(port, path="/healthz", timeout=10):
    """One GET; (status or None, seconds taken)."""
    t0 = time.time()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None, time.time() - t0
    parts = data.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") else None
    return status, time.time() - t0


def test_slow_http_clients_of_a_local_user_cannot_starve_healthz():
    with Daemon().enable_stats() as d:
        attackers = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-c", SLOW_HTTP_CLIENTS, str(d.stats_port), "64", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert attackers.stdout.readline().strip() == "ready", attackers.stderr.read()
            results = []
            for _ in range(20):
                results.append(probe(d.stats_port))
                time.sleep(0.1)
            assert [s for s, _ in results] == [200] * 20, results
            assert probe(d.stats_port, "/readyz")[0] == 200
            assert attackers.poll() is None  # the clients were there all along
            # The endpoint made room by evicting, and says so.
            samples, _ = d.metrics()
            assert samples[("sluice_stats_clients_evicted_total", frozenset())] > 0
            assert d.log_lines("stats_evicted")
            print("probe seconds:", sorted(round(t, 4) for _, t in results))
        finally:
            attackers.kill()
            attackers.wait()


# Partial requests that are never finished, reopened the moment they are closed (evicted or
# timed out): the fastest cycle through a cap that one local user can run.
RECONNECTING_HTTP_CLIENTS = r"""
import asyncio, sys, time
port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
end = time.time() + seconds
async def client():
    while time.time() < end:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            while await r.read(100):
                pass
            w.close()
        except OSError:
            await asyncio.sleep(0.01)
async def main():
    tasks = [asyncio.create_task(client()) for _ in range(n)]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await asyncio.gather(*tasks)
asyncio.run(main())
"""


def slow_probe(port, delay):
    """A probe that waits `delay` seconds between connecting and sending (curl does a little
    of that): its status or an error name."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            time.sleep(delay)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return type(e).__name__
    return data.split(b"\r\n")[0].decode() or "closed without reply"


def test_a_reconnect_loop_of_a_local_user_cannot_evict_a_probe():
    with Daemon().enable_stats() as d:
        attackers = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-c", RECONNECTING_HTTP_CLIENTS, str(d.stats_port), "64", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert attackers.stdout.readline().strip() == "ready", attackers.stderr.read()
            results = [slow_probe(d.stats_port, delay) for delay in [0.02, 0.05, 0.1] * 8]
            assert results == ["HTTP/1.1 200 OK"] * len(results), results
            assert attackers.poll() is None
            # The attackers did run into the cap and were evicted.
            samples, _ = d.metrics()
            assert samples[("sluice_stats_clients_evicted_total", frozenset())] > 0
        finally:
            attackers.kill()
            attackers.wait()


def test_idle_control_connections_do_not_lock_out_sluicectl():
    with Daemon() as d:
        idle = []
        try:
            for _ in range(200):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(d.control_socket))
                idle.append(s)
            for _ in range(3):
                r = d.ctl("status", timeout=30)
                assert r.returncode == 0, r.stdout + r.stderr
            assert wait_for(lambda: d.log_lines("control_evicted"))
            # The idle deadline closes whatever is left of them within seconds.
            def all_closed():
                for s in idle:
                    s.settimeout(0.01)
                    try:
                        if s.recv(1) != b"":
                            return False
                    except socket.timeout:
                        return False
                    except OSError:
                        pass
                return True
            assert wait_for(all_closed, seconds=30)
            samples = d.ctl_json("stats")
            assert samples["clients_evicted"]["control"] >= 200 - 64
        finally:
            for s in idle:
                s.close()


# Idle control connections, each reopened as soon as it is closed (evicted or timed out).
RECONNECTING_CONTROL_CLIENTS = r"""
import selectors, socket, sys, time
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + seconds
sel = selectors.DefaultSelector()
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
for _ in range(n):
    connect()
print("ready", flush=True)
while time.time() < end:
    for key, _ in sel.select(0.1):
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            connect()
"""


def test_a_reconnect_loop_on_the_control_socket_cannot_evict_sluicectl():
    with Daemon() as d:
        idle = subprocess.Popen(
            [sys.executable, "-c", RECONNECTING_CONTROL_CLIENTS, str(d.control_socket), "250",
             "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert idle.stdout.readline().strip() == "ready", idle.stderr.read()
            failed = []
            for i in range(30):
                r = d.ctl(["status", "stats", "reload"][i % 3], timeout=30)
                if r.returncode != 0:
                    failed.append(r.stdout + r.stderr)
            assert failed == []
            assert idle.poll() is None
            assert d.ctl_json("stats")["clients_evicted"]["control"] > 0
        finally:
            idle.kill()
            idle.wait()


# Control clients that pipeline `stats` requests as fast as they can and never read a reply.
PIPELINING_CONTROL_CLIENTS = r"""
import socket, sys, time
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    socks.append(s)
print("ready", flush=True)
line = b'{"cmd":"stats"}\n' * 200
end = time.time() + seconds
while time.time() < end:
    for s in socks:
        try:
            s.send(line)
        except OSError:
            pass
    time.sleep(0.01)
time.sleep(3600)
"""


def peak_rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_pipelined_control_requests_that_are_never_read_hold_bounded_memory():
    with Daemon() as d:
        before = peak_rss_kib(d.proc.pid)
        flood = subprocess.Popen(
            [sys.executable, "-c", PIPELINING_CONTROL_CLIENTS, str(d.control_socket), "60", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert flood.stdout.readline().strip() == "ready", flood.stderr.read()
            # The operator is served meanwhile.
            for _ in range(3):
                r = d.ctl("status", timeout=30)
                assert r.returncode == 0, r.stdout + r.stderr
                time.sleep(1)
            time.sleep(2)  # the flood's 4 s are over
            assert d.ctl("status", timeout=30).returncode == 0
            # Each client is held to one read and about limits::pause_output (64 KiB) of
            # replies: 60 clients, a few MiB. Without the pause this went past 400 MiB.
            grown = peak_rss_kib(d.proc.pid) - before
            assert grown < 64 * 1024, f"peak RSS grew by {grown} KiB"
        finally:
            flood.kill()
            flood.wait()


def test_refused_control_peers_are_logged_at_most_once_per_period():
    with Daemon() as d:
        # Let a user of another uid reach the socket, so the daemon's own check refuses it.
        os.chmod(d.dir, 0o711)
        os.chmod(d.control_socket, 0o666)
        flood = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-c", RECONNECTING_CONTROL_CLIENTS, str(d.control_socket), "50",
             "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert flood.stdout.readline().strip() == "ready", flood.stderr.read()
            assert flood.wait(timeout=60) == 0, flood.stderr.read()
        finally:
            flood.kill()
            flood.wait()
        assert d.ctl("status", timeout=30).returncode == 0
        lines = d.log_lines("control_refused")
        assert lines and "refused=1" in lines[0] and "uid=65534" in lines[0], lines
        # Hundreds of refusals in 3 s, one line (a second one if a 10 s period ended).
        assert len(lines) <= 2, len(lines)


def test_a_burst_of_evictions_is_reported_whole_without_a_later_eviction():
    with Daemon() as d:
        idle = []
        try:
            for _ in range(200):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(d.control_socket))
                idle.append(s)
            assert d.ctl("status", timeout=30).returncode == 0
            evicted = d.ctl_json("stats")["clients_evicted"]["control"]
            assert evicted >= 200 - 64

            def reported():
                return sum(int(f.split("=")[1]) for l in d.log_lines("control_evicted")
                           for f in l.split() if f.startswith("evicted="))
            # The first eviction is logged at once, the rest of the burst when its 10 s
            # period ends: no further eviction is needed for them to appear.
            assert wait_for(lambda: reported() == evicted, seconds=40), d.log_lines("control_evicted")
            assert all("reason=uid_limit" in l for l in d.log_lines("control_evicted"))
        finally:
            for s in idle:
                s.close()
