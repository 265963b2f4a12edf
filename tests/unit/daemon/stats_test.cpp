// Stats: summing shards, the Prometheus text format, per-listener counters across
// reloads, and the HTTP endpoint on a real loop with real sockets.

#include "daemon/stats.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "policy/policy.hpp"

using namespace sluice;
using namespace sluice::stats;

namespace {

// "name{labels}" -> value, for every sample line; also checks the line grammar.
std::map<std::string, std::string> samples(const std::string& text) {
    std::map<std::string, std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        EXPECT_FALSE(line.empty());
        if (line.rfind("# ", 0) == 0) {
            EXPECT_TRUE(line.rfind("# HELP sluice_", 0) == 0 ||
                        line.rfind("# TYPE sluice_", 0) == 0)
                << line;
            continue;
        }
        auto sp = line.rfind(' ');
        EXPECT_NE(sp, std::string::npos) << line;
        out[line.substr(0, sp)] = line.substr(sp + 1);
    }
    return out;
}

ServerNumbers server_numbers() {
    ServerNumbers s;
    s.generation = 3;
    s.reloads_ok = 2;
    s.reloads_failed = 1;
    s.queue_messages = 7;
    s.version = "9.9.9";
    s.start_time = 1700000000.5;
    return s;
}

std::string code_label(policy::Code c) {
    return std::string(policy::code_name(c));
}

}  // namespace

TEST(Stats, SumsShardsAndRendersEveryFamily) {
    ShardMetrics a, b;
    a.rebind_listeners({"mx", "submission"});
    b.rebind_listeners({"mx", "submission"});
    a.connections[0][static_cast<int>(ConnResult::accepted)].add(3);
    b.connections[0][static_cast<int>(ConnResult::accepted)].add(4);
    b.connections[1][static_cast<int>(ConnResult::over_limit)].add(2);
    a.sessions_active.add(2);
    b.sessions_active.add(1);
    a.decisions[static_cast<int>(policy::Code::D111)].add(5);
    b.decisions[static_cast<int>(policy::Code::L101)].add(6);
    a.messages[static_cast<int>(MsgResult::accepted)].add(6);
    b.bytes_received.add(1000);
    a.bytes_received.add(24);
    a.deliveries[static_cast<int>(DeliveryResult::delivered)].add(6);
    a.tls_handshakes[static_cast<int>(TlsResult::failed)].add(1);
    b.auth[static_cast<int>(AuthResult::ok)].add(2);
    a.observe_duration(0.004);
    a.observe_duration(0.2);
    b.observe_duration(2);
    b.observe_duration(1000);  // beyond the last bucket: only +Inf
    a.generation.store(3);
    b.generation.store(3);

    auto t = collect({&a, &b}, server_numbers());
    auto text = render_prometheus(t);
    auto s = samples(text);
    EXPECT_EQ(s["sluice_build_info{version=\"9.9.9\"}"], "1");
    EXPECT_EQ(s["sluice_config_generation"], "3");
    EXPECT_EQ(s["sluice_config_reloads_total{result=\"ok\"}"], "2");
    EXPECT_EQ(s["sluice_config_reloads_total{result=\"failed\"}"], "1");
    EXPECT_EQ(s["sluice_connections_total{listener=\"mx\",result=\"accepted\"}"], "7");
    EXPECT_EQ(s["sluice_connections_total{listener=\"submission\",result=\"over_limit\"}"], "2");
    EXPECT_EQ(s["sluice_connections_total{listener=\"submission\",result=\"accepted\"}"], "0");
    EXPECT_EQ(s["sluice_sessions_active"], "3");
    EXPECT_EQ(s["sluice_relay_decisions_total{code=\"D111\"}"], "5");
    EXPECT_EQ(s["sluice_relay_decisions_total{code=\"L101\"}"], "6");
    EXPECT_EQ(s["sluice_relay_decisions_total{code=\"T140\"}"], "0");  // every code is present
    EXPECT_EQ(s["sluice_messages_total{result=\"accepted\"}"], "6");
    EXPECT_EQ(s["sluice_bytes_received_total"], "1024");
    EXPECT_EQ(s["sluice_queue_messages"], "7");
    EXPECT_EQ(s["sluice_deliveries_total{result=\"delivered\"}"], "6");
    EXPECT_EQ(s["sluice_tls_handshakes_total{result=\"failed\"}"], "1");
    EXPECT_EQ(s["sluice_auth_total{result=\"ok\"}"], "2");
    // Histogram: cumulative buckets, +Inf equals _count, _sum in seconds.
    EXPECT_EQ(s["sluice_session_duration_seconds_bucket{le=\"0.01\"}"], "1");
    EXPECT_EQ(s["sluice_session_duration_seconds_bucket{le=\"0.5\"}"], "2");
    EXPECT_EQ(s["sluice_session_duration_seconds_bucket{le=\"5\"}"], "3");
    EXPECT_EQ(s["sluice_session_duration_seconds_bucket{le=\"300\"}"], "3");
    EXPECT_EQ(s["sluice_session_duration_seconds_bucket{le=\"+Inf\"}"], "4");
    EXPECT_EQ(s["sluice_session_duration_seconds_count"], "4");
    EXPECT_EQ(s["sluice_session_duration_seconds_sum"], "1002.204");
    for (const char* family : {"sluice_connections_total counter", "sluice_sessions_active gauge",
                               "sluice_session_duration_seconds histogram",
                               "sluice_queue_messages gauge", "sluice_config_generation gauge"}) {
        EXPECT_NE(text.find(std::string("# TYPE ") + family + "\n"), std::string::npos) << family;
    }
    EXPECT_EQ(text.back(), '\n');
}

TEST(Stats, JsonHasTheSameNumbers) {
    ShardMetrics a;
    a.rebind_listeners({"mx"});
    a.connections[0][static_cast<int>(ConnResult::filtered)].add(2);
    a.decisions[static_cast<int>(policy::Code::G107)].add(1);
    a.observe_duration(0.02);
    auto j = to_json(collect({&a}, server_numbers()));
    EXPECT_EQ(j["connections"]["mx"]["filtered"], 2);
    EXPECT_EQ(j["relay_decisions"][code_label(policy::Code::G107)], 1);
    EXPECT_EQ(j["config_generation"], 3);
    EXPECT_EQ(j["queue_messages"], 7);
    EXPECT_EQ(j["session_duration_seconds"]["buckets"]["0.05"], 1);
    EXPECT_EQ(j["session_duration_seconds"]["buckets"]["+Inf"], 1);
    EXPECT_EQ(j["session_duration_seconds"]["count"], 1);
}

TEST(Stats, ListenerCountersFollowTheirNameAcrossReloads) {
    ShardMetrics m;
    auto acc = static_cast<int>(ConnResult::accepted);
    m.rebind_listeners({"mx", "submission"});
    m.connections[0][acc].add(10);
    m.connections[1][acc].add(20);
    // A reload reorders and adds: the counts move with the names.
    m.rebind_listeners({"extra", "submission", "mx"});
    EXPECT_EQ(m.connections[0][acc].get(), 0u);
    EXPECT_EQ(m.connections[1][acc].get(), 20u);
    EXPECT_EQ(m.connections[2][acc].get(), 10u);
    m.connections[0][acc].add(1);
    // "mx" is removed: its total is kept and still reported.
    m.rebind_listeners({"extra", "submission"});
    auto t = collect({&m}, {});
    EXPECT_EQ(t.connections["mx"][acc], 10u);
    EXPECT_EQ(t.connections["extra"][acc], 1u);
    EXPECT_EQ(t.connections["submission"][acc], 20u);
    EXPECT_EQ(m.connections[2][acc].get(), 0u);  // the freed slot starts clean
    // It comes back: it continues from its total (counters never go backwards).
    m.rebind_listeners({"mx", "extra", "submission"});
    EXPECT_EQ(m.connections[0][acc].get(), 10u);
    t = collect({&m}, {});
    EXPECT_EQ(t.connections["mx"][acc], 10u);
    EXPECT_EQ(t.connections.size(), 3u);
}

TEST(Stats, LabelValuesAreEscaped) {
    ShardMetrics m;
    m.rebind_listeners({"we\"ird\\name\n"});
    auto text = render_prometheus(collect({&m}, {}));
    EXPECT_NE(text.find("listener=\"we\\\"ird\\\\name\\n\""), std::string::npos) << text;
}

TEST(Stats, HistogramNeverShowsBucketsAboveCount) {
    ShardMetrics m;
    // A scrape racing observe_duration() can see a bucket incremented before the count.
    m.duration_buckets[0].add(3);
    m.duration_count.add(2);
    auto t = collect({&m}, {});
    EXPECT_EQ(t.duration_count, 3u);
    EXPECT_EQ(t.duration_buckets.back(), 3u);
}

// ---- the HTTP endpoint -------------------------------------------------------------

namespace {

class Endpoint : public ::testing::Test {
  protected:
    void SetUp() override {
        uv_loop_init(&loop_);
        server_ = std::make_unique<StatsServer>(
            &loop_,
            [this] {
                ++scrapes_;
                return std::string("sluice_test 1\n");
            },
            /*request_timeout_ms=*/300);
        std::string e;
        auto a = parse_sockaddr("127.0.0.1:0", e);
        ASSERT_TRUE(a);
        // Port 0: find the port through a probe socket first.
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
        socklen_t len = sizeof sin;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
        port_ = ntohs(sin.sin_port);
        ::close(fd);
        a = parse_sockaddr("127.0.0.1:" + std::to_string(port_), e);
        ASSERT_EQ(server_->listen(*a), "");
    }

    void TearDown() override {
        server_->close();
        uv_run(&loop_, UV_RUN_DEFAULT);
        // libuv's rule: the loop closes only when no handle is left open.
        EXPECT_EQ(uv_loop_close(&loop_), 0);
    }

    // Sends `request` (then half-closes if asked) from a thread while the loop runs; returns
    // everything the server sent until it closed.
    std::string exchange(const std::string& request, bool half_close = true, int delay_ms = 0) {
        std::string got;
        std::atomic<bool> done{false};
        std::thread t([&] {
            int fd = ::socket(AF_INET, SOCK_STREAM, 0);
            sockaddr_in sin{};
            sin.sin_family = AF_INET;
            sin.sin_port = htons(port_);
            sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0) {
                if (delay_ms > 0) {
                    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
                }
                std::size_t off = 0;
                while (off < request.size()) {
                    ssize_t n =
                        ::send(fd, request.data() + off, request.size() - off, MSG_NOSIGNAL);
                    if (n <= 0) {
                        break;
                    }
                    off += static_cast<std::size_t>(n);
                }
                if (half_close) {
                    ::shutdown(fd, SHUT_WR);
                }
                char buf[4096];
                ssize_t n;
                while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
                    got.append(buf, static_cast<std::size_t>(n));
                }
            }
            ::close(fd);
            done = true;
        });
        while (!done) {
            uv_run(&loop_, UV_RUN_NOWAIT);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        t.join();
        return got;
    }

    uv_loop_t loop_{};
    std::unique_ptr<StatsServer> server_;
    std::uint16_t port_ = 0;
    int scrapes_ = 0;
};

std::string status_line(const std::string& response) {
    return response.substr(0, response.find("\r\n"));
}

}  // namespace

TEST_F(Endpoint, MetricsHealthReady) {
    auto r = exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(status_line(r), "HTTP/1.1 200 OK");
    EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
              std::string::npos);
    EXPECT_NE(r.find("Connection: close\r\n"), std::string::npos);
    EXPECT_NE(r.find("Content-Length: 14\r\n"), std::string::npos);
    EXPECT_EQ(r.substr(r.size() - 14), "sluice_test 1\n");
    EXPECT_EQ(scrapes_, 1);
    EXPECT_EQ(status_line(exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")), "HTTP/1.1 200 OK");
    EXPECT_EQ(status_line(exchange("GET /readyz HTTP/1.0\r\n\r\n")), "HTTP/1.1 200 OK");
    server_->set_draining();
    EXPECT_EQ(status_line(exchange("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")),
              "HTTP/1.1 503 Service Unavailable");
    EXPECT_EQ(status_line(exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")), "HTTP/1.1 200 OK");
}

TEST_F(Endpoint, HeadHasNoBody) {
    auto r = exchange("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(status_line(r), "HTTP/1.1 200 OK");
    EXPECT_NE(r.find("Content-Length: 14\r\n"), std::string::npos);
    EXPECT_EQ(r.substr(r.size() - 4), "\r\n\r\n");
}

TEST_F(Endpoint, ErrorsAndUnknownPaths) {
    EXPECT_EQ(status_line(exchange("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")),
              "HTTP/1.1 404 Not Found");
    EXPECT_EQ(status_line(exchange("BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")),
              "HTTP/1.1 405 Method Not Allowed");
    EXPECT_EQ(status_line(exchange("hello\r\n\r\n")), "HTTP/1.1 400 Bad Request");
    // Oversized: answered 431 while the client is still sending, and not lost to a reset.
    std::string big = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 200; ++i) {
        big += "X-Filler-" + std::to_string(i) + ": " + std::string(100, 'f') + "\r\n";
    }
    EXPECT_EQ(status_line(exchange(big + "\r\n")), "HTTP/1.1 431 Request Header Fields Too Large");
    EXPECT_EQ(scrapes_, 0);
}

TEST_F(Endpoint, IncompleteRequestTimesOutWith408) {
    auto r = exchange("GET /metrics HTTP/1.1\r\n", /*half_close=*/false);
    EXPECT_EQ(status_line(r), "HTTP/1.1 408 Request Timeout");
}

TEST_F(Endpoint, EndsWhenClosedWithClientsConnected) {
    // A client that connects and says nothing is closed by close(); TearDown checks that
    // no handle is left.
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port_);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    for (int i = 0; i < 50 && server_->clients() == 0; ++i) {
        uv_run(&loop_, UV_RUN_NOWAIT);
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(server_->clients(), 1u);
    server_->close();
    uv_run(&loop_, UV_RUN_DEFAULT);
    char c;
    EXPECT_EQ(::recv(fd, &c, 1, 0), 0);  // EOF
    ::close(fd);
}

TEST_F(Endpoint, IdleClientsOfOneAddressAreEvictedForANewOne) {
    // More silent clients from 127.0.0.1 than one address may hold: each one over the cap
    // evicts the one that has waited longest, and a probe behind them is still answered.
    std::vector<int> idle;
    for (std::size_t i = 0; i < limits::max_clients_per_address + 8; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(port_);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
        idle.push_back(fd);
    }
    for (int i = 0; i < 500 && server_->evicted() < 8; ++i) {
        uv_run(&loop_, UV_RUN_NOWAIT);
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(server_->evicted(), 8u);
    EXPECT_EQ(server_->clients(), limits::max_clients_per_address);
    EXPECT_EQ(status_line(exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")), "HTTP/1.1 200 OK");
    EXPECT_EQ(server_->evicted(), 9u);
    // The first ones connected were the ones closed.
    char c;
    EXPECT_EQ(::recv(idle.front(), &c, 1, MSG_DONTWAIT), 0);
    for (int fd : idle) {
        ::close(fd);
    }
}
