// The control protocol: line framing at every fragment size, request validation, what
// explain/status answer, the reload report helpers, and the socket server on a real loop.

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "daemon/control.hpp"
#include "storage/maps.hpp"

using namespace sluice;
using namespace sluice::control;
using nlohmann::json;

namespace {

std::vector<std::string> lines_at(const std::string& input, std::size_t fragment, bool& overflow,
                                  std::size_t max = limits::line) {
    LineReader r(max);
    std::vector<std::string> out;
    for (std::size_t i = 0; i < input.size(); i += fragment) {
        r.feed(std::string_view(input).substr(i, fragment));
        while (auto l = r.next()) {
            out.push_back(*l);
        }
    }
    overflow = r.overflow();
    return out;
}

}  // namespace

TEST(LineReader, SameLinesAtEveryFragmentSize) {
    const std::string input =
        "{\"cmd\":\"status\"}\n\r\n{\"cmd\":\"stats\"}\r\nab\rc\n{\"partial\"";
    const std::vector<std::string> want = {"{\"cmd\":\"status\"}", "", "{\"cmd\":\"stats\"}",
                                           "ab\rc"};
    for (std::size_t f = 1; f <= input.size(); ++f) {
        bool overflow = true;
        EXPECT_EQ(lines_at(input, f, overflow), want) << "fragment " << f;
        EXPECT_FALSE(overflow);
    }
}

TEST(LineReader, OverflowAtEveryFragmentSize) {
    const std::size_t max = 16;
    std::string fits = std::string(max, 'a') + "\r\n";
    std::string too_long = std::string(max + 1, 'b') + "\n";
    for (std::size_t f = 1; f <= too_long.size() + fits.size(); ++f) {
        bool overflow = false;
        EXPECT_EQ(lines_at(fits, f, overflow, max),
                  std::vector<std::string>{std::string(max, 'a')});
        EXPECT_FALSE(overflow) << f;
        auto got = lines_at(fits + too_long + fits, f, overflow, max);
        EXPECT_TRUE(overflow) << f;
        EXPECT_EQ(got, std::vector<std::string>{std::string(max, 'a')}) << f;  // nothing after
    }
}

TEST(LineReader, UnterminatedInputIsBounded) {
    LineReader r(1024);
    std::string chunk(4096, 'x');
    for (int i = 0; i < 1000; ++i) {
        r.feed(chunk);
    }
    EXPECT_TRUE(r.overflow());
    EXPECT_LE(r.buffered(), 1024u + 4096u);
    EXPECT_FALSE(r.next());
}

TEST(LineReader, RestAfterEof) {
    LineReader r;
    r.feed("{\"cmd\":\"status\"}\n{\"cmd\":\"stats\"}\r");
    EXPECT_EQ(r.next(), "{\"cmd\":\"status\"}");
    EXPECT_FALSE(r.next());
    EXPECT_EQ(r.take_rest(), "{\"cmd\":\"stats\"}");
    EXPECT_FALSE(r.take_rest());
}

TEST(Protocol, ParsesRequests) {
    auto ok = parse_request(R"({"cmd":"reload"})");
    ASSERT_TRUE(ok.request);
    EXPECT_EQ(ok.request->cmd, Command::reload);
    auto ex = parse_request(
        R"({"cmd":"explain","client":"192.0.2.1","from":"a@b.test","to":"c@d.test"})");
    ASSERT_TRUE(ex.request);
    EXPECT_EQ(ex.request->cmd, Command::explain);
    EXPECT_EQ(ex.request->body["client"], "192.0.2.1");
}

TEST(Protocol, RejectsBadRequestsWithAReason) {
    struct Case {
        std::string line;
        std::string error;
    };
    const Case cases[] = {
        {"garbage", "invalid JSON"},
        {"{\"cmd\":\"status\"", "invalid JSON"},
        {"[1,2]", "a request must be a JSON object"},
        {"\"status\"", "a request must be a JSON object"},
        {"{}", "a request needs \"cmd\" (a string)"},
        {"{\"cmd\":5}", "a request needs \"cmd\" (a string)"},
        {"{\"cmd\":\"format-disk\"}", "unknown command \"format-disk\""},
        {"{\"cmd\":\"status\",\"x\":\"\xff\xfe\"}", "invalid JSON"},  // not UTF-8
        {std::string("{\"cmd\":\"st\0atus\"}", 17), "invalid JSON"},
    };
    for (const auto& c : cases) {
        auto r = parse_request(c.line);
        EXPECT_FALSE(r.request) << c.line;
        EXPECT_EQ(r.error, c.error) << c.line;
    }
    // Deeply nested input is an error, not a crash.
    std::string deep(100000, '[');
    EXPECT_FALSE(parse_request(deep).request);
}

TEST(Protocol, ExplainArguments) {
    std::string e;
    auto a = parse_explain_args(json{{"client", "192.0.2.1"},
                                     {"from", "a@b.test"},
                                     {"to", "c@d.test"},
                                     {"auth", "alice"},
                                     {"tls", true}},
                                e);
    ASSERT_TRUE(a) << e;
    EXPECT_EQ(a->auth, "alice");
    EXPECT_EQ(a->tls, true);
    EXPECT_TRUE(a->listener.empty());
    EXPECT_FALSE(parse_explain_args(json{{"from", "a@b"}, {"to", "c@d"}}, e));
    EXPECT_EQ(e, "explain needs \"client\"");
    EXPECT_FALSE(parse_explain_args(json{{"client", 5}, {"from", "a@b"}, {"to", "c@d"}}, e));
    EXPECT_EQ(e, "explain: \"client\" must be a string");
    EXPECT_FALSE(parse_explain_args(
        json{{"client", "1.2.3.4"}, {"from", "a"}, {"to", "c"}, {"tls", "yes"}}, e));
}

TEST(Protocol, EncodeIsOneLineOfValidUtf8) {
    auto line = encode(json{{"ok", false}, {"error", std::string("bad \xff byte\nand newline")}});
    ASSERT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\n'), line.size() - 1);
    auto back = json::parse(line);
    EXPECT_EQ(back["error"], "bad \xEF\xBF\xBD byte\nand newline");
}

// ---- explain, status, reload reports ------------------------------------------------

namespace {

const char* kConfig = R"(
[server]
hostname = "mx.example.test"
shards = 2
[[listener]]
name = "mx"
address = "127.0.0.1:2525"
role = "mx"
[[listener]]
name = "submission"
address = "127.0.0.1:2587"
role = "submission"
tls = "required"
[tls]
certificate = "/etc/sluice/cert.pem"
key = "/etc/sluice/key.pem"
[relay]
privileged_networks = true
[domains]
local = ["example.test"]
[routes]
"example.test" = "maildir:/tmp/unused"
)";

class Live : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ =
            std::filesystem::temp_directory_path() / ("sluice-ctl-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir_);
        auto r = load_config_text(kConfig, "/etc/sluice/test.toml");
        ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].str());
        auto snap = std::make_shared<Snapshot>();
        snap->config = r.config;
        snap->rules = policy::Rules::from_config(*r.config);
        snap->generation = 4;
        snapshot_ = snap;
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }

    json run(json args) {
        std::string e;
        auto a = parse_explain_args(args, e);
        EXPECT_TRUE(a) << e;
        storage::MapReader reader(dir_.string());
        return explain(*snapshot_, reader, *a);
    }

    std::filesystem::path dir_;
    std::shared_ptr<const Snapshot> snapshot_;
};

}  // namespace

TEST_F(Live, ExplainLocalAndDeniedRelay) {
    auto local =
        run({{"client", "203.0.113.9"}, {"from", "a@outside.test"}, {"to", "User@Example.TEST"}});
    EXPECT_EQ(local["ok"], true);
    EXPECT_EQ(local["code"], "L101");
    EXPECT_EQ(local["verdict"], "accept");
    EXPECT_EQ(local["to"], "<User@example.test>");
    EXPECT_EQ(local["generation"], 4);
    EXPECT_EQ(local["listener"], "mx");

    auto relay =
        run({{"client", "203.0.113.9"}, {"from", "a@outside.test"}, {"to", "b@elsewhere.test"}});
    EXPECT_EQ(relay["code"], "D111");
    EXPECT_EQ(relay["verdict"], "reject");
    EXPECT_EQ(relay["reply"].get<std::string>().substr(0, 9), "554 5.7.1");
    EXPECT_FALSE(relay["rule"].get<std::string>().empty());
    EXPECT_FALSE(relay["source"].get<std::string>().empty());

    auto routed = run({{"client", "203.0.113.9"},
                       {"from", "a@outside.test"},
                       {"to", "b%elsewhere.test@example.test"}});
    EXPECT_EQ(routed["code"], "D113");
}

TEST_F(Live, ExplainUsesTheLiveMaps) {
    auto before =
        run({{"client", "10.1.2.3"}, {"from", "a@inside.test"}, {"to", "b@elsewhere.test"}});
    EXPECT_EQ(before["code"], "D111");
    auto pub = storage::publish_map(dir_.string(), policy::MapId::privileged_networks,
                                    {{"10.1.0.0/16", "office", "nets.txt:3"}});
    ASSERT_TRUE(pub.ok());
    auto after =
        run({{"client", "10.1.2.3"}, {"from", "a@inside.test"}, {"to", "b@elsewhere.test"}});
    EXPECT_EQ(after["code"], "G107");
    EXPECT_EQ(after["verdict"], "accept");
    EXPECT_NE(after["rule"].get<std::string>().find("10.1.0.0/16"), std::string::npos)
        << after.dump();
    EXPECT_EQ(after["source"], "nets.txt:3");
}

TEST_F(Live, ExplainOnAListenerAndAuthenticated) {
    auto sub = run({{"client", "198.51.100.7"},
                    {"from", "alice@example.test"},
                    {"to", "x@elsewhere.test"},
                    {"listener", "submission"},
                    {"auth", "alice"}});
    EXPECT_EQ(sub["listener"], "submission");
    EXPECT_EQ(sub["tls"], true);  // tls = "required": MAIL comes after STARTTLS
    EXPECT_EQ(sub["code"], "G108");
}

TEST_F(Live, ExplainErrors) {
    auto bad_ip = run({{"client", "not-an-ip"}, {"from", "a@b.test"}, {"to", "c@d.test"}});
    EXPECT_EQ(bad_ip["ok"], false);
    EXPECT_EQ(bad_ip["error"], "client \"not-an-ip\" is not an IP address");
    auto bad_listener =
        run({{"client", "192.0.2.1"}, {"from", "a@b.test"}, {"to", "c@d.test"}, {"listener", "x"}});
    EXPECT_EQ(bad_listener["ok"], false);
    EXPECT_EQ(bad_listener["error"], "no listener named \"x\" (listeners: mx, submission)");
    auto bad_rcpt = run({{"client", "192.0.2.1"}, {"from", "a@b.test"}, {"to", "c@@d.test"}});
    EXPECT_EQ(bad_rcpt["ok"], false);
    EXPECT_NE(bad_rcpt["error"].get<std::string>().find("recipient <c@@d.test>: syntax"),
              std::string::npos);
    auto null_sender = run({{"client", "192.0.2.1"}, {"from", "<>"}, {"to", "user@example.test"}});
    EXPECT_EQ(null_sender["ok"], true);
    EXPECT_EQ(null_sender["from"], "<>");
}

TEST_F(Live, Status) {
    StatusInfo info;
    info.version = "1.2.3";
    info.shards = 2;
    info.generation = 4;
    info.sessions_active = 5;
    auto j = status(*snapshot_->config, info);
    EXPECT_EQ(j["ok"], true);
    EXPECT_EQ(j["generation"], 4);
    EXPECT_EQ(j["config"], "/etc/sluice/test.toml");
    ASSERT_EQ(j["listeners"].size(), 2u);
    EXPECT_EQ(j["listeners"][1]["name"], "submission");
    EXPECT_EQ(j["listeners"][1]["address"], "127.0.0.1:2587");
    EXPECT_EQ(j["listeners"][1]["tls"], "required");
    EXPECT_EQ(j["sessions_active"], 5);
    EXPECT_EQ(j["queue_messages"], 0);
}

TEST(ReloadReport, ChangedKeys) {
    const char* a =
        "[relay]\nenabled = true\n[domains]\nlocal = [\"a.test\"]\n[routes]\n"
        "\"a.test\" = \"maildir:x\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:1\"\n";
    const char* b =
        "[relay]\nenabled = true\nprivileged_networks = true\n[domains]\n"
        "local = [\"a.test\", \"b.test\"]\n[routes]\n\"a.test\" = \"maildir:y\"\n"
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2\"\n";
    auto fa = flatten_config(a, "a.toml");
    auto fb = flatten_config(b, "b.toml");
    EXPECT_EQ(fa.at("listener.mx.address"), "'127.0.0.1:1'");
    EXPECT_EQ(changed_keys(fa, fb),
              (std::vector<std::string>{"domains.local", "relay.privileged_networks",
                                        "routes.\"a.test\""}));
    EXPECT_TRUE(changed_keys(fa, fa).empty());
    EXPECT_TRUE(flatten_config("[broken", "c.toml").empty());
}

TEST(ReloadReport, ListenerPlanKeepsSocketsByAddress) {
    auto load = [](const std::string& listeners) {
        auto r = load_config_text(
            "[server]\nshards = 2\n[tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n" + listeners,
            "/x/s.toml");
        EXPECT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].str());
        return r.config;
    };
    auto before = load(
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n"
        "[[listener]]\nname = \"old\"\naddress = \"127.0.0.1:2526\"\n"
        "[[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:2587\"\nrole = \"submission\"\n");
    auto after = load(
        "[[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:2587\"\nrole = \"submission\"\ntls = "
        "\"required\"\n"
        "[[listener]]\nname = \"new\"\naddress = \"127.0.0.1:2600\"\n"
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n");
    auto p = plan_listeners(*before, *after);
    EXPECT_EQ(p.added, std::vector<std::size_t>{1});
    EXPECT_EQ(p.removed, std::vector<std::size_t>{1});
    EXPECT_EQ(p.changed, std::vector<std::size_t>{0});  // sub: tls changed, socket kept
    EXPECT_TRUE(restart_only_changes(*before, *after).empty());

    auto more_shards = load_config_text(
        "[server]\nshards = 3\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n",
        "/x/s.toml");
    ASSERT_TRUE(more_shards.ok());
    auto errors = restart_only_changes(*before, *more_shards.config);
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0],
              "/x/s.toml:2:10: server.shards changes from 2 to 3: the number of shards cannot "
              "change while running; restart sluiced to apply");
}

TEST(ReloadReport, MapStamps) {
    auto dir =
        std::filesystem::temp_directory_path() / ("sluice-stamps-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto s0 = stamp_maps(dir.string());
    EXPECT_TRUE(s0.empty());
    ASSERT_TRUE(
        storage::publish_map(dir.string(), policy::MapId::local_domains, {{"a.test", "", "x:1"}})
            .ok());
    auto s1 = stamp_maps(dir.string());
    EXPECT_EQ(changed_maps(s0, s1), std::vector<std::string>{"local_domains"});
    EXPECT_TRUE(changed_maps(s1, stamp_maps(dir.string())).empty());
    ASSERT_TRUE(
        storage::publish_map(dir.string(), policy::MapId::local_domains, {{"b.test", "", "x:1"}})
            .ok());
    EXPECT_EQ(changed_maps(s1, stamp_maps(dir.string())),
              std::vector<std::string>{"local_domains"});
    std::filesystem::remove_all(dir);
}

// ---- the socket server ----------------------------------------------------------------

namespace {

class Server : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("sluice-ctlsock-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir_);
        path_ = (dir_ / "control.sock").string();
        std::signal(SIGPIPE, SIG_IGN);  // as the daemon does: libuv does not
        uv_loop_init(&loop_);
        uv_timer_init(&loop_, &later_);
        server_ = std::make_unique<ControlServer>(
            &loop_, [this](Request r, ControlServer::Respond respond) {
                ++requests_;
                if (r.cmd == Command::reload) {
                    // Answered later, from the loop, like a real reload.
                    pending_ = std::move(respond);
                    uv_timer_start(
                        &later_,
                        [](uv_timer_t* t) {
                            auto* self = static_cast<Server*>(t->data);
                            auto p = std::move(self->pending_);
                            p(json{{"ok", true}, {"generation", 2}});
                        },
                        50, 0);
                    return;
                }
                respond(json{{"ok", true}, {"cmd", std::string(command_name(r.cmd))}});
            });
        later_.data = this;
        ASSERT_EQ(server_->listen(path_), "");
    }

    void TearDown() override {
        server_->close();
        uv_close(reinterpret_cast<uv_handle_t*>(&later_), nullptr);
        uv_run(&loop_, UV_RUN_DEFAULT);
        EXPECT_EQ(uv_loop_close(&loop_), 0);
        EXPECT_FALSE(std::filesystem::exists(path_));  // the socket file is removed
        std::filesystem::remove_all(dir_);
    }

    int connect_client() {
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
        EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        timeval tv{5, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        return fd;
    }

    // Runs `client` on a thread while the loop runs here.
    void with_loop(const std::function<void()>& client) {
        std::atomic<bool> done{false};
        std::thread t([&] {
            client();
            done = true;
        });
        while (!done) {
            uv_run(&loop_, UV_RUN_NOWAIT);
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        t.join();
    }

    static void send_all(int fd, const std::string& s) {
        std::size_t off = 0;
        while (off < s.size()) {
            ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
            if (n <= 0) {
                return;
            }
            off += static_cast<std::size_t>(n);
        }
    }

    // Reads until `lines` full lines arrived or EOF; returns them.
    static std::vector<std::string> read_lines(int fd, std::size_t lines, bool* eof = nullptr) {
        std::string buf;
        std::vector<std::string> out;
        char tmp[4096];
        while (out.size() < lines) {
            ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
            if (n <= 0) {
                if (eof) {
                    // Closed: EOF, or a reset when it closed with our input unread.
                    *eof = n == 0 || errno == ECONNRESET;
                }
                break;
            }
            buf.append(tmp, static_cast<std::size_t>(n));
            std::size_t lf;
            while ((lf = buf.find('\n')) != std::string::npos) {
                out.push_back(buf.substr(0, lf));
                buf.erase(0, lf + 1);
            }
        }
        return out;
    }

    static bool at_eof(int fd) {
        char c;
        return ::recv(fd, &c, 1, 0) == 0;
    }

    std::filesystem::path dir_;
    std::string path_;
    uv_loop_t loop_{};
    uv_timer_t later_{};
    std::unique_ptr<ControlServer> server_;
    ControlServer::Respond pending_;
    int requests_ = 0;
};

}  // namespace

TEST_F(Server, SocketModeIs0660) {
    struct stat st {};
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(Server, RequestsAnsweredInOrderIncludingPipelinedAndAsync) {
    with_loop([&] {
        int fd = connect_client();
        send_all(fd, "{\"cmd\":\"status\"}\n{\"cmd\":\"reload\"}\n{\"cmd\":\"stats\"}\n");
        auto got = read_lines(fd, 3);
        ASSERT_EQ(got.size(), 3u);
        EXPECT_EQ(json::parse(got[0])["cmd"], "status");
        EXPECT_EQ(json::parse(got[1])["generation"], 2);
        EXPECT_EQ(json::parse(got[2])["cmd"], "stats");
        ::close(fd);
    });
    EXPECT_EQ(requests_, 3);
}

TEST_F(Server, GarbageGetsAnErrorAndTheConnectionStaysUsable) {
    with_loop([&] {
        int fd = connect_client();
        send_all(fd, "this is not json\n");
        send_all(fd, "{\"cmd\":\"nope\"}\r\n");
        send_all(fd, "{\"cmd\":\"st");  // a partial line...
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        send_all(fd, "atus\"}\n");  // ...completed later
        auto got = read_lines(fd, 3);
        ASSERT_EQ(got.size(), 3u);
        EXPECT_EQ(json::parse(got[0])["error"], "invalid JSON");
        EXPECT_EQ(json::parse(got[1])["error"], "unknown command \"nope\"");
        EXPECT_EQ(json::parse(got[2])["cmd"], "status");
        ::close(fd);
    });
}

TEST_F(Server, HugeLineGetsAnErrorAndIsClosed) {
    with_loop([&] {
        int fd = connect_client();
        std::string huge =
            "{\"cmd\":\"status\",\"pad\":\"" + std::string(1024 * 1024, 'p') + "\"}\n";
        std::thread sender([&] { send_all(fd, huge); });
        bool eof = false;
        auto got = read_lines(fd, 2, &eof);
        sender.join();
        ASSERT_EQ(got.size(), 1u);
        EXPECT_EQ(json::parse(got[0])["error"], "request line longer than 65536 bytes; closing");
        EXPECT_TRUE(eof);
        ::close(fd);
    });
    EXPECT_EQ(requests_, 0);
}

TEST_F(Server, RequestEndedByEofIsAnswered) {
    with_loop([&] {
        int fd = connect_client();
        send_all(fd, "{\"cmd\":\"stats\"}");
        ::shutdown(fd, SHUT_WR);
        auto got = read_lines(fd, 1);
        ASSERT_EQ(got.size(), 1u);
        EXPECT_EQ(json::parse(got[0])["cmd"], "stats");
        EXPECT_TRUE(at_eof(fd));
        ::close(fd);
    });
}

TEST_F(Server, ManyClientsAndASilentOneDoesNotBlockOthers) {
    with_loop([&] {
        int silent = connect_client();
        send_all(silent, "{\"cmd\":");  // and nothing more
        std::vector<std::thread> ts;
        std::atomic<int> ok{0};
        for (int i = 0; i < 50; ++i) {
            ts.emplace_back([&] {
                int fd = connect_client();
                send_all(fd, "{\"cmd\":\"status\"}\n");
                auto got = read_lines(fd, 1);
                if (got.size() == 1 && json::parse(got[0])["ok"] == true) {
                    ++ok;
                }
                ::close(fd);
            });
        }
        for (auto& t : ts) {
            t.join();
        }
        EXPECT_EQ(ok, 50);
        ::close(silent);
    });
}

TEST_F(Server, ClientThatLeavesDuringAnAsyncRequestIsForgotten) {
    with_loop([&] {
        int fd = connect_client();
        send_all(fd, "{\"cmd\":\"reload\"}\n");
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        ::close(fd);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the reply fires
    });
    EXPECT_EQ(requests_, 1);
    EXPECT_EQ(server_->clients(), 0u);
}

TEST_F(Server, StaleSocketIsReplacedButALiveOneIsNot) {
    ControlServer other(&loop_, [](Request, ControlServer::Respond r) { r(json{{"ok", true}}); });
    EXPECT_EQ(other.listen(path_), "another process answers on " + path_);
    std::string file = (dir_ / "plain").string();
    { std::ofstream(file) << "x"; }
    EXPECT_EQ(other.listen(file), file + " exists and is not a socket");
    EXPECT_NE(other.listen(std::string(200, 'a')).find("longer than 107 bytes"), std::string::npos);
    // A socket file nobody answers on (a crashed daemon's) is replaced.
    std::string stale = (dir_ / "stale.sock").string();
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, stale.c_str(), sizeof a.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ::close(fd);
    ASSERT_TRUE(std::filesystem::exists(stale));
    EXPECT_EQ(other.listen(stale), "");
    other.close();
    EXPECT_FALSE(std::filesystem::exists(stale));
}
