"""A real HAProxy (Debian package `haproxy`) in TCP mode on free loopback ports, with its own
config in a temp dir, in the foreground (`-db`), stopped by its own pid. Its systemd service
is never used (the Makefile's installs deny service starts).

    with HAProxy({"v1": (backend_port, "send-proxy"), "v2": (backend_port, "send-proxy-v2")}) as h:
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
    server s 127.0.0.1:{backend} {option} source 127.0.0.1
"""


class HAProxy:
    def __init__(self, frontends, source="127.0.0.1"):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sluice-haproxy-"))
        self.ports = {}
        text = CONFIG
        for name, (backend, option) in frontends.items():
            self.ports[name] = free_port()
            text += FRONTEND.format(name=name, port=self.ports[name], backend=backend,
                                    option=option).replace("source 127.0.0.1",
                                                           f"source {source}")
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
