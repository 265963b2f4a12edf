"""The stats endpoint of a real sluiced: /metrics parsed by prometheus_client's text parser
and checked against the traffic sent; /healthz, /readyz and the HTTP parser's limits."""
import signal
import socket
import time

from harness import Daemon, Raw, code, free_port


class CountingRaw(Raw):
    """A Raw SMTP client that counts the bytes it sends."""
    sent = 0

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        CountingRaw.sent += len(data)
        super().send(data)


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(pred, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def status_of(raw):
    return int(raw.split(b" ", 2)[1])


def test_metrics_match_the_traffic_sent():
    with Daemon().enable_stats() as d:
        before, types = d.metrics()
        # Every family of docs/metrics.md that the contract names, with its type.
        for name, kind in [("sluice_connections", "counter"), ("sluice_sessions_active", "gauge"),
                           ("sluice_relay_decisions", "counter"), ("sluice_messages", "counter"),
                           ("sluice_bytes_received", "counter"), ("sluice_queue_messages", "gauge"),
                           ("sluice_deliveries", "counter"), ("sluice_tls_handshakes", "counter"),
                           ("sluice_auth", "counter"), ("sluice_config_reloads", "counter"),
                           ("sluice_config_generation", "gauge"),
                           ("sluice_session_duration_seconds", "histogram"),
                           ("sluice_build_info", "gauge")]:
            assert types.get(name) == kind, (name, types.get(name))
        CountingRaw.sent = 0
        for i in range(3):  # delivered locally: L101, a message, a delivery
            c = CountingRaw(d.port)
            c.cmd("EHLO client.test")
            c.cmd("MAIL FROM:<a@outside.test>")
            assert code(c.cmd("RCPT TO:<user@example.test>")) == "250 2.1.5"
            c.cmd("DATA")
            assert code(c.cmd(f"Subject: m{i}\r\n\r\nbody {i}\r\n.")) == "250 2.0.0"
            c.cmd("QUIT")
            c.close()
        for i in range(2):  # relay attempts: D111, and D113 for a routing trick
            c = CountingRaw(d.port)
            c.cmd("EHLO client.test")
            c.cmd("MAIL FROM:<a@outside.test>")
            assert code(c.cmd("RCPT TO:<b@elsewhere.test>")) == "554 5.7.1"
            assert code(c.cmd("RCPT TO:<b%elsewhere.test@example.test>")) == "554 5.7.1"
            c.cmd("QUIT")
            c.close()
        assert wait_for(lambda: value(d.metrics()[0], "sluice_sessions_active") == 0)
        after, _ = d.metrics()

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("sluice_connections_total", listener="mx", result="accepted") == 5
        assert delta("sluice_connections_total", listener="mx", result="over_limit") == 0
        assert delta("sluice_relay_decisions_total", code="L101") == 3
        assert delta("sluice_relay_decisions_total", code="D111") == 2
        assert delta("sluice_relay_decisions_total", code="D113") == 2
        assert delta("sluice_relay_decisions_total", code="G107") == 0
        assert delta("sluice_messages_total", result="accepted") == 3
        assert delta("sluice_messages_total", result="failed") == 0
        assert delta("sluice_deliveries_total", result="delivered") == 3
        assert delta("sluice_bytes_received_total") == CountingRaw.sent
        assert value(after, "sluice_queue_messages") == 0
        assert value(after, "sluice_config_generation") == 1
        assert value(after, "sluice_build_info", version=d.ctl_json("status")["version"]) == 1
        # The histogram: 5 more sessions, cumulative buckets, +Inf equal to _count.
        assert delta("sluice_session_duration_seconds_count") == 5
        buckets = sorted(((float(dict(labels)["le"]), v) for (n, labels), v in after.items()
                          if n == "sluice_session_duration_seconds_bucket"))
        assert buckets[-1][0] == float("inf")
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
        assert buckets[-1][1] == value(after, "sluice_session_duration_seconds_count")
        assert value(after, "sluice_session_duration_seconds_sum") >= 0
        # sluicectl stats gives the same numbers.
        s = d.ctl_json("stats")
        assert s["connections"]["mx"]["accepted"] == value(after, "sluice_connections_total",
                                                         listener="mx", result="accepted")
        assert s["relay_decisions"]["D111"] == value(after, "sluice_relay_decisions_total", code="D111")
        assert s["bytes_received"] == value(after, "sluice_bytes_received_total")
        human = d.ctl("stats")
        assert human.returncode == 0 and "relay_decisions.L101" in human.stdout


def test_reloads_show_in_the_metrics():
    with Daemon().enable_stats() as d:
        assert d.ctl("reload").returncode == 0
        good = d.config.read_text()
        d.config.write_text(good + "\n[bogus]\n")
        assert d.ctl("reload").returncode == 1
        m, _ = d.metrics()
        assert value(m, "sluice_config_generation") == 2
        assert value(m, "sluice_config_reloads_total", result="ok") == 1
        assert value(m, "sluice_config_reloads_total", result="failed") == 1


def test_health_ready_and_unknown_paths():
    with Daemon().enable_stats() as d:
        st, head, body = d.get("/healthz")
        assert (st, body) == (200, "ok\n")
        assert "Connection: close" in head
        assert d.get("/readyz")[0] == 200
        assert d.get("/nope")[0] == 404
        head_only = d.http("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(head_only) == 200 and head_only.endswith(b"\r\n\r\n")


def test_bad_requests_get_4xx_and_are_closed():
    with Daemon().enable_stats() as d:
        assert status_of(d.http("hello there\r\n\r\n")) == 400
        assert status_of(d.http("GET /metrics HTTP/1.1\r\n\r\n")) == 400  # no Host
        assert status_of(d.http("GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n")) == 400
        assert status_of(d.http("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")) == 405
        assert status_of(d.http("GET /metrics HTTP/2.0\r\n\r\n")) == 505
        assert status_of(d.http("GET /" + "a" * 5000 + " HTTP/1.1\r\nHost: x\r\n\r\n")) == 414
        big = "GET /metrics HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"X-Filler-{i}: {'f' * 200}\r\n" for i in range(100)) + "\r\n"
        assert status_of(d.http(big)) == 431
        # A megabyte of junk: answered, closed, the daemon unharmed.
        assert status_of(d.http(b"G" * (1024 * 1024))) == 400
        assert d.get("/healthz")[0] == 200


def test_a_silent_client_does_not_block_scrapes_and_times_out():
    with Daemon().enable_stats() as d:
        silent = socket.create_connection(("127.0.0.1", d.stats_port))
        silent.sendall(b"GET /metrics HTTP/1.1\r\n")
        t0 = time.time()
        for _ in range(5):
            assert d.get("/metrics")[0] == 200
        assert time.time() - t0 < 2
        silent.settimeout(10)
        answer = silent.recv(4096)
        assert status_of(answer) == 408
        silent.close()


def test_readyz_is_503_while_draining():
    d = Daemon().enable_stats()
    d.start()
    c = Raw(d.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@outside.test>")
    c.cmd("RCPT TO:<user@example.test>")
    c.cmd("DATA")
    c.send("Subject: in flight\r\n\r\n")
    d.signal(signal.SIGTERM)
    assert wait_for(lambda: d.get("/readyz")[0] == 503)
    assert d.get("/healthz")[0] == 200
    c.send("end\r\n.\r\n")
    assert code(c.reply()) == "250 2.0.0"
    assert d.proc.wait(timeout=10) == 0
    try:
        socket.create_connection(("127.0.0.1", d.stats_port), timeout=1).close()
        assert False, "the stats endpoint outlived the daemon"
    except ConnectionRefusedError:
        pass


def test_reload_moves_the_stats_endpoint():
    with Daemon().enable_stats() as d:
        old = d.stats_port
        new = free_port()
        d.config.write_text(d.config.read_text().replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}"))
        r = d.ctl("reload")
        assert r.returncode == 0 and "stats.address" in r.stdout
        d.stats_port = new
        assert d.get("/healthz")[0] == 200
        try:
            socket.create_connection(("127.0.0.1", old), timeout=1).close()
            assert False, "the old stats address still answers"
        except ConnectionRefusedError:
            pass


def test_open_transactions_gauge_returns_to_zero():
    """sluice_transactions_open is what a commit may wait for (spool.commit_delay): every way
    a transaction can end must take it back, or every later commit would wait in vain."""
    with Daemon().enable_stats() as d:
        def gauge():
            return value(d.metrics()[0], "sluice_transactions_open")

        holder = Raw(d.port)
        holder.cmd("EHLO client.test")
        assert code(holder.cmd("MAIL FROM:<a@outside.test>")) == "250 2.1.0"
        assert wait_for(lambda: gauge() == 1)
        endings = [
            ["RSET"],
            ["QUIT"],
            ["RCPT TO:<user@example.test>"],                 # then the peer vanishes
            ["RCPT TO:<user@example.test>", "DATA"],         # vanishes inside DATA
            ["RCPT TO:<b@elsewhere.test>", "DATA", "RSET"],  # refused RCPT, DATA refused
            ["RCPT TO:<user@example.test>", "DATA", "Subject: x\r\n\r\nbody\r\n."],
        ]
        for cmds in endings:
            c = Raw(d.port)
            c.cmd("EHLO client.test")
            c.cmd("MAIL FROM:<a@outside.test>")
            for line in cmds:
                c.cmd(line)
            c.close()
        # A refused sender never opens one.
        c = Raw(d.port)
        c.cmd("EHLO client.test")
        assert code(c.cmd("MAIL FROM:<a b@outside.test>"))[0] == "5"
        assert gauge() >= 1
        c.close()
        assert wait_for(lambda: value(d.metrics()[0], "sluice_sessions_active") == 1)
        assert gauge() == 1, "only the holder's transaction is open"
        assert d.ctl_json("stats")["transactions_open"] == 1
        holder.close()
        assert wait_for(lambda: gauge() == 0)
