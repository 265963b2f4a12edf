"""Test harness: a real sluiced on a free loopback port, in a temp dir.

Every process a test starts is stopped by its own pid (never by name); every port is
chosen free at run time; nothing leaves 127.0.0.0/8.
"""
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SLUICED = os.environ.get("SLUICED", str(ROOT / "build" / "daemon" / "sluiced"))
SLUICECTL = os.environ.get("SLUICECTL", str(ROOT / "build" / "tools" / "sluicectl"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BASE_CONFIG = """
[server]
hostname = "mx.example.test"
shards = 2

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
role = "mx"

[limits]
{limits}

[domains]
local = ["example.test"]

[maps]
dir = "maps"

[routes]
"example.test" = "maildir:maildir"

[spool]
dir = "spool"

[control]
socket = "control.sock"
{extra}
"""


# Run as root (make test as root, CI), sluiced would drop to [server] user (default
# "sluice", which need not exist here): the suites serve as root on purpose, the one
# set-up the daemon refuses unless told (test_privileges.py covers the drop itself).
ROOT_KEYS = 'user = "root"\ngroup = "root"\nallow_root = true\n'


def serve_as_root_if_root(text):
    """The config `text` with [server] user/group root and allow_root when we are root."""
    if os.geteuid() != 0 or "allow_root" in text:
        return text
    if "[server]\n" in text:
        return text.replace("[server]\n", "[server]\n" + ROOT_KEYS, 1)
    return "[server]\n" + ROOT_KEYS + "\n" + text


class Daemon:
    """A sluiced process with its own directory, config and log."""

    def __init__(self, limits="", extra="", config=None, shards=2):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sluice-it-"))
        self.port = free_port()
        (self.dir / "maps").mkdir()
        text = config if config is not None else BASE_CONFIG
        text = text.replace("{port}", str(self.port)).replace("{limits}", limits)
        text = text.replace("{extra}", extra).replace("shards = 2", f"shards = {shards}")
        text = serve_as_root_if_root(text)
        self.config = self.dir / "sluice.toml"
        self.config.write_text(text)
        self.log_path = self.dir / "sluiced.log"
        self.proc = None

    @property
    def maildir(self):
        return self.dir / "maildir" / "new"

    def start(self, wait=True):
        self._log = open(self.log_path, "ab")   # restarts append to the same log
        self.proc = subprocess.Popen([SLUICED, "--config", str(self.config),
                                      *getattr(self, "args", [])],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env=getattr(self, "env", None))
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sluiced exited: " + self.log())
            if "event=started" in self.log():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        pass
                except OSError:
                    time.sleep(0.02)
                    continue
                # The probe counts against per-IP limits until the daemon has seen it go.
                while time.time() < deadline and "event=session" not in self.log():
                    time.sleep(0.01)
                return
            time.sleep(0.02)
        raise RuntimeError("sluiced did not start: " + self.log())

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, event=None):
        out = []
        for line in self.log().splitlines():
            if event is None or f" event={event} " in line + " ":
                out.append(line)
        return out

    def messages(self):
        if not self.maildir.exists():
            return []
        return sorted(self.maildir.iterdir())

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    # ---- operating the live daemon (sluicectl, control socket, stats endpoint) ----

    @property
    def control_socket(self):
        return self.dir / "control.sock"

    def ctl(self, *args, user=None, timeout=120):
        """Runs sluicectl against this daemon's config; `user` runs it as that user
        (setpriv), e.g. "nobody"."""
        cmd = [SLUICECTL, "--config", str(self.config), *args]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def ctl_json(self, *args):
        """sluicectl --json ARGS, parsed; asserts it exited 0."""
        import json
        r = self.ctl("--json", *args)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def enable_stats(self):
        """Adds a [stats] section on a free port (call before start())."""
        self.stats_port = free_port()
        self.config.write_text(self.config.read_text() +
                               f'\n[stats]\naddress = "127.0.0.1:{self.stats_port}"\n')
        return self

    def http(self, request, timeout=10):
        """Sends raw bytes to the stats endpoint; returns everything it answers until it closes."""
        if isinstance(request, str):
            request = request.encode()
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=timeout) as s:
            try:
                s.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
        return data

    def get(self, path):
        """GET path from the stats endpoint: (status code, headers text, body text)."""
        raw = self.http(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, head.decode(), body.decode()

    def metrics(self):
        """/metrics parsed by prometheus_client's text parser: {(sample name, frozenset of
        label items): value}, and the families by name with their types."""
        from prometheus_client.parser import text_string_to_metric_families
        status, _, body = self.get("/metrics")
        assert status == 200, body
        samples, types = {}, {}
        for family in text_string_to_metric_families(body):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples, types


class Raw:
    """A raw SMTP connection for byte-exact tests (smtplib hides what we need to see)."""

    def __init__(self, port, greeting=True, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        if greeting:
            self.greeting = self.reply()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed; buffered: %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self):
        """One complete (possibly multi-line) reply, as a list of lines."""
        lines = [self.line()]
        while len(lines[-1]) >= 4 and lines[-1][3] == "-":
            lines.append(self.line())
        return lines

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.reply()

    def closed(self, timeout=5):
        """True when the server closes the connection (EOF) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def wait_for(fn, seconds=20):
    """Polls `fn` until it returns something true (or the time is up); returns its value."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    return fn()


def code(reply):
    """'250 2.1.0 Sender ok' -> '250 2.1.0' (basic and enhanced code of the last line)."""
    parts = reply[-1].split(" ")
    return " ".join(parts[:2])
