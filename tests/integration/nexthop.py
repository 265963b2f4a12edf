"""A recording next hop for forwarding tests: an aiosmtpd server in a thread that keeps
every envelope and message, and can refuse chosen recipients or stall."""
import socket
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as Server


class Recorder:
    def __init__(self):
        self.messages = []          # (mail_from, [rcpts], content bytes)
        self.reject = {}            # address -> reply for RCPT
        self.data_reply = None      # a reply for every DATA instead of recording it
        self.attempts = 0           # transactions that reached DATA or a refused RCPT
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.reject.get(address)
        if reply:
            with self.lock:
                self.attempts += 1
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.attempts += 1
            if self.data_reply:
                return self.data_reply
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 recorded"

    def snapshot(self):
        with self.lock:
            return list(self.messages)


class NextHop:
    """Start with .start(port); stop with .stop(). Records into .recorder."""

    def __init__(self, port, host="127.0.0.1"):
        self.port = port
        self.host = host
        self.recorder = Recorder()
        self.controller = None

    def start(self):
        rec = self.recorder

        class C(Controller):
            def factory(self):
                return Server(self.handler, enable_SMTPUTF8=True, decode_data=False)

        self.controller = C(rec, hostname=self.host, port=self.port, data_size_limit=64 << 20)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None


class RawNextHop:
    """A next hop on plain sockets that answers pipelined commands one write per reply
    with Nagle's algorithm on (no TCP_NODELAY), as some SMTP servers do. With a `gate`
    (threading.Event) it greets no connection before the gate opens. Counts messages and
    keeps their Subject lines."""

    def __init__(self, port, gate=None):
        self.port = port
        self.gate = gate
        self.messages = 0
        self.subjects = []
        self.lock = threading.Lock()
        self.sock = None

    def start(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        if self.gate is not None:
            self.gate.wait()
        with conn, conn.makefile("rb") as f:
            conn.sendall(b"220 nagle.test ESMTP\r\n")
            for line in f:
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-nagle.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    subject = None
                    for body in f:
                        if body == b".\r\n":
                            break
                        if subject is None and body.startswith(b"Subject: "):
                            subject = body[9:].strip().decode()
                    with self.lock:
                        self.messages += 1
                        self.subjects.append(subject)
                    conn.sendall(b"250 2.0.0 kept\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
