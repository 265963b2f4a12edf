// The session state machine, driven without sockets: bytes in, replies and commits out.
// Maps are the real LMDB reader over an empty maps directory (every map empty).

#include "daemon/session.hpp"

#include <gtest/gtest.h>

#include <filesystem>

#include "storage/maps.hpp"

using namespace sluice;
using namespace sluice::smtp;

namespace {

const char* kConfig = R"(
[server]
hostname = "mx.example.test"
[[listener]]
name = "mx"
address = "127.0.0.1:2525"
[limits]
message_size = "64KiB"
recipients = 5
command_timeout = "10s"
[domains]
local = ["example.test"]
[routes]
"example.test" = "maildir:/tmp/unused"
)";

class Recorder : public SessionHooks {
  public:
    std::vector<std::unique_ptr<storage::Message>> commits;
    void commit(std::unique_ptr<storage::Message> m) override { commits.push_back(std::move(m)); }
    bool transport_available(const Transport& t) const override {
        return t.kind == Transport::Kind::maildir;
    }
};

class SessionTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("sluice-session-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir_);
        reader_ = std::make_unique<storage::MapReader>(dir_.string());
        auto r = load_config_text(kConfig, "/tmp/session-test.toml");
        ASSERT_TRUE(r.ok());
        auto snap = std::make_shared<Snapshot>();
        snap->config = r.config;
        snap->rules = policy::Rules::from_config(*r.config);
        snap->generation = 1;
        snapshot_ = snap;
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }

    std::unique_ptr<Session> make(Millis greeting_delay = Millis(0)) {
        SessionParams p;
        p.snapshot = snapshot_;
        p.listener = &snapshot_->config->listeners[0];
        p.maps = reader_.get();
        p.hooks = &rec_;
        p.metrics = &metrics_;
        p.client = *parse_ip("192.0.2.7");
        p.id = "test";
        p.greeting_delay = greeting_delay;
        auto s = std::make_unique<Session>(std::move(p));
        s->start(now_);
        return s;
    }

    static std::string take(Session& s) {
        std::string out = s.output();
        s.output().clear();
        return out;
    }

    std::filesystem::path dir_;
    std::unique_ptr<storage::MapReader> reader_;
    std::shared_ptr<const Snapshot> snapshot_;
    Recorder rec_;
    ShardMetrics metrics_;
    Clock::time_point now_ = Clock::now();
};

// Codes of every reply line in `out` ("250", "354", ...), multi-line replies once.
std::vector<std::string> codes(const std::string& out) {
    std::vector<std::string> v;
    std::size_t pos = 0;
    while (pos < out.size()) {
        auto eol = out.find("\r\n", pos);
        std::string line = out.substr(pos, eol - pos);
        if (line.size() >= 4 && line[3] == ' ') {
            std::string c = line.substr(0, 3);
            auto sp = line.find(' ', 4);
            if (line.size() > 5 && std::isdigit(static_cast<unsigned char>(line[4])) &&
                line[5] == '.') {
                c += " " + line.substr(4, sp - 4);
            }
            v.push_back(c);
        }
        pos = eol + 2;
    }
    return v;
}

const std::string kTransaction =
    "EHLO client.test\r\n"
    "MAIL FROM:<Sender@Outside.TEST.> SIZE=100\r\n"
    "RCPT TO:<User@Example.Test>\r\n"
    "RCPT TO:<postmaster@example.test>\r\n"
    "RCPT TO:<victim@elsewhere.test>\r\n"
    "DATA\r\n";

}  // namespace

TEST_F(SessionTest, GreetingAndEhloExtensions) {
    auto s = make();
    EXPECT_EQ(take(*s), "220 mx.example.test ESMTP Sluice\r\n");
    s->receive("EHLO client.test\r\n", now_);
    EXPECT_EQ(take(*s),
              "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 65536\r\n250-8BITMIME\r\n"
              "250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n");
}

TEST_F(SessionTest, TwoFiftyOnlyAfterStorageSaysDurable) {
    auto s = make();
    take(*s);
    s->receive("EHLO client.test\r\nMAIL FROM:<a@outside.test>\r\n", now_);
    // EHLO must end a pipelined group (RFC 2920): this client is refused.
    EXPECT_TRUE(s->closed());

    auto t = make();
    take(*t);
    t->receive("EHLO client.test\r\n", now_);
    take(*t);
    t->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
    EXPECT_EQ(codes(take(*t)), (std::vector<std::string>{"250 2.1.0", "250 2.1.5", "354"}));
    t->receive("Subject: hi\r\n\r\nbody\r\n.\r\n", now_);
    ASSERT_EQ(rec_.commits.size(), 1u);
    EXPECT_EQ(take(*t), "");  // nothing until storage answers
    EXPECT_EQ(t->state(), Session::State::committing);
    t->commit_done(storage::CommitStatus::ok, now_);
    auto out = take(*t);
    EXPECT_EQ(out.rfind("250 2.0.0 Ok: queued as " + rec_.commits[0]->id + "\r\n", 0), 0u) << out;
}

TEST_F(SessionTest, StorageFailureIsATemporaryError) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    s->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
    s->receive("x\r\n.\r\n", now_);
    take(*s);
    s->commit_done(storage::CommitStatus::io_error, now_);
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"451 4.3.0"}));
    s->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
    s->receive("x\r\n.\r\n", now_);
    take(*s);
    s->commit_done(storage::CommitStatus::no_space, now_);
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"452 4.3.1"}));
}

TEST_F(SessionTest, EnvelopeIsCanonicalAndReceivedHeaderPrepended) {
    auto s = make();
    s->receive("EHLO client.test\r\n", now_);
    s->receive(kTransaction.substr(18), now_);
    auto c = codes(take(*s));
    EXPECT_EQ(c, (std::vector<std::string>{"220", "250", "250 2.1.0", "250 2.1.5", "250 2.1.5",
                                           "554 5.7.1", "354"}));
    s->receive("Subject: x\r\n\r\n..dot\r\n.\r\n", now_);
    ASSERT_EQ(rec_.commits.size(), 1u);
    const auto& m = *rec_.commits[0];
    EXPECT_EQ(m.sender, "Sender@outside.test");
    ASSERT_EQ(m.recipients.size(), 2u);
    EXPECT_EQ(m.recipients[0].address, "User@example.test");
    EXPECT_EQ(m.recipients[0].code, "L101");
    EXPECT_EQ(m.recipients[1].address, "postmaster@example.test");
    EXPECT_EQ(m.data.rfind("Received: from client.test ([192.0.2.7])\r\n\tby mx.example.test "
                           "(Sluice) with ESMTP id " +
                               m.id + "; ",
                           0),
              0u)
        << m.data;
    EXPECT_NE(m.data.find(" +0000\r\nSubject: x\r\n"), std::string::npos);
    EXPECT_TRUE(m.data.ends_with("\r\nSubject: x\r\n\r\n.dot\r\n")) << m.data;
}

TEST_F(SessionTest, SameRepliesAtEveryFragmentSize) {
    // RFC 2920 groups: a client waits for the replies to EHLO, DATA and NOOP, so each
    // group is split at every fragment size but never merged with the next one.
    const std::vector<std::string> groups = {kTransaction.substr(0, 18), kTransaction.substr(18),
                                             "Subject: y\r\n\r\nline\r\n.\r\nRSET\r\nNOOP\r\n",
                                             "QUIT\r\n"};
    std::size_t longest = 0;
    for (const auto& g : groups) {
        longest = std::max(longest, g.size());
    }
    std::string reference;
    for (std::size_t step = 1; step <= longest; ++step) {
        rec_.commits.clear();
        auto s = make();
        std::string out = take(*s);
        for (const auto& g : groups) {
            for (std::size_t pos = 0; pos < g.size(); pos += step) {
                s->receive(g.substr(pos, step), now_);
                if (s->state() == Session::State::committing) {
                    s->commit_done(storage::CommitStatus::ok, now_);
                }
                out += take(*s);
            }
        }
        auto c = codes(out);
        std::string joined;
        for (auto& x : c) {
            joined += x + ",";
        }
        if (reference.empty()) {
            reference = joined;
        }
        EXPECT_EQ(joined, reference) << "step " << step;
        EXPECT_EQ(joined,
                  "220,250,250 2.1.0,250 2.1.5,250 2.1.5,554 5.7.1,354,250 2.0.0,250 2.0.0,"
                  "250 2.0.0,221 2.0.0,");
        EXPECT_EQ(rec_.commits.size(), 1u) << "step " << step;
    }
}

TEST_F(SessionTest, PipelinedCommandsAfterDotWaitForTheCommit) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    take(*s);
    s->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
    take(*s);
    s->receive("x\r\n.\r\nMAIL FROM:<b@outside.test>\r\nRCPT TO:<user@example.test>\r\n", now_);
    EXPECT_EQ(take(*s), "");
    s->commit_done(storage::CommitStatus::ok, now_);
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"250 2.0.0", "250 2.1.0", "250 2.1.5"}));
}

TEST_F(SessionTest, InputIsBoundedWhileCommitting) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    s->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
    s->receive("x\r\n.\r\n", now_);
    EXPECT_TRUE(s->wants_input());
    std::string noops;
    for (int i = 0; i < 20000; ++i) {
        noops += "NOOP\r\n";
    }
    s->receive(noops, now_);
    EXPECT_FALSE(s->wants_input());
}

TEST_F(SessionTest, TimeoutsAndGreetingDelay) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    take(*s);
    s->tick(now_ + std::chrono::seconds(9));
    EXPECT_FALSE(s->closed());
    s->tick(now_ + std::chrono::seconds(11));
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"421 4.4.2"}));
    EXPECT_TRUE(s->closed());

    auto d = make(Millis(500));
    EXPECT_EQ(take(*d), "");
    d->tick(now_ + Millis(600));
    EXPECT_EQ(codes(take(*d)), (std::vector<std::string>{"220"}));

    auto e = make(Millis(500));
    e->receive("EHLO early.test\r\n", now_);
    EXPECT_EQ(codes(take(*e)), (std::vector<std::string>{"554 5.5.0"}));
    EXPECT_TRUE(e->closed());
}

TEST_F(SessionTest, JunkCommandsPastTheLimitClose) {
    // limits.junk_commands is 100 by default: NOOP, RSET, HELP, VRFY and a repeated EHLO
    // or HELO all count; the first EHLO does not.
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    take(*s);
    const char* junk[] = {"NOOP\r\n",      "RSET\r\n",        "HELP\r\n",
                          "VRFY user\r\n", "EHLO c.test\r\n", "HELO c.test\r\n"};
    for (int i = 0; i < 100; ++i) {
        s->receive(junk[i % 6], now_);
        ASSERT_FALSE(s->closed()) << i;
    }
    take(*s);
    s->receive("NOOP\r\n", now_);
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"421 4.7.0"}));
    EXPECT_TRUE(s->closed());
}

TEST_F(SessionTest, AcceptedMessageForgivesJunkCommands) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    for (int i = 0; i < 99; ++i) {
        s->receive("NOOP\r\n", now_);
    }
    s->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
    s->receive("x\r\n.\r\n", now_);
    s->commit_done(storage::CommitStatus::ok, now_);
    take(*s);
    for (int i = 0; i < 100; ++i) {
        s->receive("RSET\r\n", now_);
    }
    EXPECT_FALSE(s->closed());
    EXPECT_EQ(codes(take(*s)).back(), "250 2.0.0");
    s->receive("RSET\r\n", now_);
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"421 4.7.0"}));
}

TEST_F(SessionTest, TrickledJunkCommandsMeetTheCommandDeadline) {
    // command_deadline is 1m here, command_timeout 10s: a NOOP every 5 s is never idle,
    // but a run of NOOPs lasting a whole command deadline is closed as a trickler.
    using std::chrono::seconds;
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    for (int t = 0; t <= 55; t += 5) {
        s->receive("NOOP\r\n", now_ + seconds(t));
        s->tick(now_ + seconds(t + 1));
        ASSERT_FALSE(s->closed()) << t;
    }
    take(*s);
    s->tick(now_ + seconds(60));
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"421 4.4.2"}));
    EXPECT_TRUE(s->closed());

    // MAIL does not end the run: a transaction that is then reset was no progress.
    auto l = make();
    l->receive("EHLO c.test\r\n", now_);
    for (int t = 0; t <= 65; t += 5) {
        l->receive(t % 10 == 0 ? "MAIL FROM:<a@outside.test>\r\n" : "RSET\r\n",
                   now_ + seconds(t));
    }
    take(*l);
    l->tick(now_ + seconds(66));
    EXPECT_EQ(codes(take(*l)), (std::vector<std::string>{"421 4.4.2"}));

    // A transaction that reaches the end of DATA ends the run (here one refused there).
    auto m = make();
    m->receive("EHLO c.test\r\n", now_);
    for (int t = 0; t <= 50; t += 5) {
        m->receive("NOOP\r\n", now_ + seconds(t));
    }
    m->receive("MAIL FROM:<a@outside.test>\r\n", now_ + seconds(55));
    m->receive("RCPT TO:<user@example.test>\r\n", now_ + seconds(55));
    m->receive("DATA\r\n", now_ + seconds(55));
    m->receive(std::string("a\0b\r\n.\r\n", 8), now_ + seconds(55));
    m->receive("NOOP\r\n", now_ + seconds(57));
    take(*m);
    m->tick(now_ + seconds(61));
    EXPECT_FALSE(m->closed());

    // One RSET and then silence is an idle client, held to command_timeout only.
    auto r = make();
    r->receive("EHLO c.test\r\n", now_);
    r->receive("RSET\r\n", now_);
    r->tick(now_ + seconds(9));
    EXPECT_FALSE(r->closed());
}

TEST_F(SessionTest, ShutdownLetsDataFinishThenSays421) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    s->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
    take(*s);
    s->shutdown();
    EXPECT_FALSE(s->closed());
    s->receive("x\r\n.\r\n", now_);
    s->commit_done(storage::CommitStatus::ok, now_);
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"250 2.0.0", "421 4.3.2"}));
    EXPECT_TRUE(s->closed());
}

TEST_F(SessionTest, MailLoopIsRefused) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    s->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
    take(*s);
    std::string hops;
    for (int i = 0; i < 60; ++i) {
        hops += "Received: from x by y; Sun, 22 Nov 2026 10:00:00 +0000\r\n";
    }
    s->receive(hops + "\r\nbody\r\n.\r\n", now_);
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"554 5.4.0"}));
    EXPECT_TRUE(rec_.commits.empty());
}

TEST_F(SessionTest, RecipientWithoutUsableRouteFailsClosed) {
    std::string text = kConfig;
    text.replace(text.find("local = [\"example.test\"]"), 24,
                 "local = [\"example.test\", \"noroute.test\", \"smtp.test\"]");
    text += "\"smtp.test\" = \"smtp://127.0.0.1:2526\"\n";
    auto r = load_config_text(text, "/tmp/x.toml");
    ASSERT_TRUE(r.ok());
    auto snap = std::make_shared<Snapshot>();
    snap->config = r.config;
    snap->rules = policy::Rules::from_config(*r.config);
    snapshot_ = snap;
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    take(*s);
    s->receive("MAIL FROM:<a@outside.test>\r\n", now_);
    s->receive("RCPT TO:<user@noroute.test>\r\n", now_);
    s->receive("RCPT TO:<user@smtp.test>\r\n", now_);  // no SMTP forwarding in this build
    s->receive("RCPT TO:<user@example.test>\r\n", now_);
    EXPECT_EQ(codes(take(*s)),
              (std::vector<std::string>{"250 2.1.0", "451 4.3.0", "451 4.3.0", "250 2.1.5"}));
}

TEST_F(SessionTest, ContentThatCannotBeForwardedIsRefusedAtTheEnd) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    auto transaction = [&](const std::string& content) {
        take(*s);
        s->receive("MAIL FROM:<a@outside.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n", now_);
        take(*s);
        s->receive(content + ".\r\n", now_);
        return codes(take(*s));
    };
    // RFC 5321 §4.5.3.1.6: 998 octets of text per line at most.
    EXPECT_EQ(transaction(std::string(999, 'a') + "\r\n"), (std::vector<std::string>{"500 5.5.2"}));
    EXPECT_EQ(transaction(std::string("a\0b\r\n", 5)), (std::vector<std::string>{"554 5.6.0"}));
    EXPECT_TRUE(rec_.commits.empty());
    // Neither ends the session: the next transaction goes through.
    transaction(std::string(998, 'a') + "\r\n");
    EXPECT_EQ(rec_.commits.size(), 1u);
}

TEST_F(SessionTest, RcptParametersAreRefused) {
    auto s = make();
    s->receive("EHLO c.test\r\n", now_);
    take(*s);
    s->receive("MAIL FROM:<a@outside.test>\r\n", now_);
    s->receive("RCPT TO:<user@example.test> NOTIFY=NEVER\r\n", now_);
    s->receive("RCPT TO:<user@example.test> =x\r\n", now_);
    EXPECT_EQ(codes(take(*s)), (std::vector<std::string>{"250 2.1.0", "555 5.5.4", "501 5.5.4"}));
}
