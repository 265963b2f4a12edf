"""A recording next hop for forwarding tests: an aiosmtpd server in a thread that keeps
every envelope and message, and can refuse chosen recipients or stall."""
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as Server


class Recorder:
    def __init__(self):
        self.messages = []          # (mail_from, [rcpts], content bytes)
        self.reject = {}            # address -> reply for RCPT
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.reject.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 recorded"

    def snapshot(self):
        with self.lock:
            return list(self.messages)


class NextHop:
    """Start with .start(port); stop with .stop(). Records into .recorder."""

    def __init__(self, port):
        self.port = port
        self.recorder = Recorder()
        self.controller = None

    def start(self):
        rec = self.recorder

        class C(Controller):
            def factory(self):
                return Server(self.handler, enable_SMTPUTF8=True, decode_data=False)

        self.controller = C(rec, hostname="127.0.0.1", port=self.port, data_size_limit=64 << 20)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None
