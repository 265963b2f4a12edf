"""The tests' DNS servers (python3-dnslib): an authoritative server for test zones on a
free loopback port, UDP and TCP (answers over 512 bytes are truncated on UDP, so the
client must retry over TCP), and a hostile responder that sends broken answers.

Zones are a dict: name -> list of (type, ttl, value); special names behave badly:
  "servfail" in the name: SERVFAIL; "timeout" in the name: no answer at all.
"""
import socket
import socketserver
import struct
import threading

from dnslib import A, AAAA, CNAME, MX, QTYPE, RCODE, RR, SOA, DNSRecord
from dnslib.server import BaseResolver, DNSServer


def free_udp_tcp_port():
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
                    return port
            except OSError:
                continue


class ZoneResolver(BaseResolver):
    def __init__(self, records, soa_ttl=60, soa_minimum=60):
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.soa_ttl = soa_ttl
        self.soa_minimum = soa_minimum
        self.queries = []           # (name, type) in order
        self.silent = set()         # names that get no answer (a timeout), for now
        self.servfail = set()       # names answered SERVFAIL, for now
        self.tcp_queries = 0
        self.lock = threading.Lock()

    def count(self, name, qtype=None):
        with self.lock:
            return sum(1 for n, t in self.queries if n == name and (qtype is None or t == qtype))

    def resolve(self, request, handler):
        q = request.q
        name = str(q.qname).lower().rstrip(".")
        qtype = QTYPE[q.qtype]
        with self.lock:
            self.queries.append((name, qtype))
            if handler.protocol == "tcp":
                self.tcp_queries += 1
        reply = request.reply()
        if "timeout" in name or name in self.silent:
            return None
        if "servfail" in name or name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        soa = RR("test", QTYPE.SOA, ttl=self.soa_ttl,
                 rdata=SOA("ns.test", "admin.test", (1, 60, 60, 60, self.soa_minimum)))
        current = name
        for _ in range(10):
            recs = self.records.get(current)
            if recs is None:
                break
            cname = [r for r in recs if r[0] == "CNAME"]
            if cname and qtype != "CNAME":
                _, ttl, target = cname[0]
                reply.add_answer(RR(current, QTYPE.CNAME, ttl=ttl, rdata=CNAME(target)))
                current = target.lower().rstrip(".")
                continue
            for rtype, ttl, value in recs:
                if rtype != qtype:
                    continue
                if rtype == "A":
                    rdata = A(value)
                elif rtype == "AAAA":
                    rdata = AAAA(value)
                elif rtype == "MX":
                    pref, host = value
                    rdata = MX(host if host else ".", pref)
                else:
                    continue
                reply.add_answer(RR(current, getattr(QTYPE, rtype), ttl=ttl, rdata=rdata))
            break
        if not reply.rr:
            if self.records.get(current) is None and not any(
                    k.endswith("." + current) for k in self.records):
                reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(soa)
        return reply


class _Logger:
    def log_recv(self, *a): pass
    def log_send(self, *a): pass
    def log_request(self, *a): pass
    def log_reply(self, *a): pass
    def log_truncated(self, *a): pass
    def log_error(self, *a): pass
    def log_data(self, *a): pass


class _Handler(socketserver.BaseRequestHandler):
    pass


class DnsServer:
    """Serves `records` on 127.0.0.1:port over UDP and TCP. Stop with .stop()."""

    def __init__(self, records, **kw):
        self.resolver = ZoneResolver(records, **kw)
        self.port = free_udp_tcp_port()
        self.udp = DNSServer(self.resolver, port=self.port, address="127.0.0.1", logger=_Logger())
        self.tcp = DNSServer(self.resolver, port=self.port, address="127.0.0.1", tcp=True,
                             logger=_Logger())

    def start(self):
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def stop(self):
        for s in (self.udp, self.tcp):
            s.server.shutdown()
            s.server.server_close()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"


class HostileDns:
    """A UDP responder that answers every query with a broken packet chosen by `mode`:
    wrong_id, truncated (cut mid-record), tc_no_tcp (TC set, no TCP server), loop (an MX
    whose target is a compression pointer to itself), long_name (a 300-octet name)."""

    def __init__(self, mode):
        self.mode = mode
        self.port = free_udp_tcp_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.running = True
        self.answered = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _run(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                pkt = self._answer(data)
            except Exception:   # a query we cannot parse: ignore it
                continue
            self.answered += 1
            self.sock.sendto(pkt, peer)

    def _answer(self, query):
        req = DNSRecord.parse(query)
        qid = req.header.id
        question = query[12:]                 # the question section as sent
        qlen = len(question)
        flags = 0x8180
        if self.mode == "wrong_id":
            reply = req.reply()
            reply.add_answer(RR(str(req.q.qname), QTYPE.MX, ttl=60, rdata=MX("mx.test", 10)))
            pkt = bytearray(reply.pack())
            struct.pack_into(">H", pkt, 0, (qid + 1) & 0xFFFF)
            return bytes(pkt)
        if self.mode == "tc_no_tcp":
            return struct.pack(">HHHHHH", qid, flags | 0x0200, 1, 0, 0, 0) + question
        header = struct.pack(">HHHHHH", qid, flags, 1, 1, 0, 0)
        if self.mode == "truncated":
            rr = struct.pack(">HHHIH", 0xC00C, 15, 1, 60, 20) + b"\x00\x0a\x02mx"
            return header + question + rr
        if self.mode == "loop":
            at = 12 + qlen + 12 + 2          # where the MX target starts
            rr = struct.pack(">HHHIH", 0xC00C, 15, 1, 60, 4) + struct.pack(">HH", 10, 0xC000 | at)
            return header + question + rr
        if self.mode == "long_name":
            name = b"".join(bytes([60]) + b"a" * 60 for _ in range(5)) + b"\x00"
            rr = struct.pack(">HHHIH", 0xC00C, 15, 1, 60, 2 + len(name)) + b"\x00\x0a" + name
            return header + question + rr
        raise ValueError(self.mode)
