"""A real HAProxy (Debian package `haproxy`) in TCP mode on free loopback ports, with its own
config in a temp dir, in the foreground (`-db`), stopped by its own pid. Its systemd service
is never used (the Makefile's installs deny service starts).

    with HAProxy({"v1": (backend_port, "send-proxy"), "v2": (backend_port, "send-proxy-v2")}) as h:
    (a third item and more are lines for the backend section, e.g. "option smtpchk")
        h.ports["v1"]   # where clients connect; HAProxy connects to backend_port from
                        # 127.0.0.1 and sends the PROXY header named by the option
"""
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

from harness import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

CONFIG = """
global
    maxconn 4000
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
"""

FRONTEND = """
frontend fe_{name}
    bind 127.0.0.1:{port}
    default_backend be_{name}

backend be_{name}
{backend_lines}    server s 127.0.0.1:{backend} {option} source 127.0.0.1
"""


class HAProxy:
    def __init__(self, frontends, source="127.0.0.1"):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sluice-haproxy-"))
        self.ports = {}
        text = CONFIG
        text = text.replace("nbthread 1", f"nbthread 1\n    stats socket {self.dir}/admin.sock")
        for name, spec in frontends.items():
            backend, option = spec[0], spec[1]
            backend_lines = "".join(f"    {l}\n" for l in spec[2:])
            self.ports[name] = free_port()
            text += FRONTEND.format(name=name, port=self.ports[name], backend=backend,
                                    option=option, backend_lines=backend_lines).replace(
                                        "source 127.0.0.1", f"source {source}")
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(text)
        self.log_path = self.dir / "haproxy.log"
        self.proc = None

    def start(self, timeout=20):
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        pending = set(self.ports.values())
        while pending and time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("haproxy exited: " + self.log())
            for port in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        pending.discard(port)
                except OSError:
                    pass
            time.sleep(0.05)
        if pending:
            raise RuntimeError("haproxy did not listen: " + self.log())
        return self

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def admin(self, command):
        """One command on HAProxy's stats socket (e.g. "show stat"); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.dir / "admin.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out.decode(errors="replace")
                out += chunk

    def server_check(self, backend):
        """(status, check_status) of the one server of backend `backend`, from show stat."""
        lines = self.admin("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == f"be_{backend}" and row.get("svname") == "s":
                return row.get("status"), row.get("check_status")
        return None, None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
