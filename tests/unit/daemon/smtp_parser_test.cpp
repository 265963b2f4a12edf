#include "daemon/smtp_parser.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace sluice::smtp;

namespace {

struct Event {
    LineScanner::Status status;
    std::string line;
    bool operator==(const Event&) const = default;
};

// Feeds `input` in fragments of `step` bytes, the way a socket may deliver it, and keeps
// unconsumed bytes exactly as the session does.
std::vector<Event> scan(const std::string& input, std::size_t step) {
    LineScanner sc;
    std::vector<Event> out;
    std::string pending;
    for (std::size_t pos = 0; pos < input.size(); pos += step) {
        pending += input.substr(pos, step);
        while (true) {
            auto r = sc.next(pending);
            if (r.status != LineScanner::Status::need_more) {
                out.push_back({r.status, std::string(r.line)});
            }
            pending.erase(0, r.consumed);
            if (r.status == LineScanner::Status::bare_cr ||
                r.status == LineScanner::Status::bare_lf) {
                return out;
            }
            if (r.status == LineScanner::Status::need_more &&
                (r.consumed == 0 || pending.empty())) {
                break;
            }
        }
        // The scanner never makes the caller hold more than one command line.
        EXPECT_LE(pending.size(), limits::kMaxCommandLine);
    }
    return out;
}

}  // namespace

TEST(LineScanner, SplitsPipelinedCommandsAtEveryFragmentSize) {
    std::string in = "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n";
    std::vector<Event> want = {{LineScanner::Status::line, "EHLO client.test"},
                               {LineScanner::Status::line, "MAIL FROM:<a@b.test>"},
                               {LineScanner::Status::line, "RCPT TO:<c@d.test>"},
                               {LineScanner::Status::line, "DATA"}};
    for (std::size_t step = 1; step <= in.size(); ++step) {
        EXPECT_EQ(scan(in, step), want) << "step " << step;
    }
}

TEST(LineScanner, LimitIsExactly512OctetsWithCrlf) {
    std::string ok(510, 'a');
    std::string bad(511, 'a');
    for (std::size_t step : {1u, 7u, 512u, 2000u}) {
        auto a = scan(ok + "\r\nNOOP\r\n", step);
        ASSERT_EQ(a.size(), 2u) << step;
        EXPECT_EQ(a[0].status, LineScanner::Status::line);
        EXPECT_EQ(a[0].line.size(), 510u);
        auto b = scan(bad + "\r\nNOOP\r\n", step);
        ASSERT_EQ(b.size(), 2u) << step;
        EXPECT_EQ(b[0].status, LineScanner::Status::too_long);
        EXPECT_EQ(b[1], (Event{LineScanner::Status::line, "NOOP"}));
    }
}

TEST(LineScanner, EndlessLineIsReportedOnceAndNeverBuffered) {
    std::string in(100000, 'x');
    in += "\r\nQUIT\r\n";
    for (std::size_t step : {1u, 100u, 4096u, 200000u}) {
        auto ev = scan(in, step);
        ASSERT_EQ(ev.size(), 2u) << step;
        EXPECT_EQ(ev[0].status, LineScanner::Status::too_long);
        EXPECT_EQ(ev[1], (Event{LineScanner::Status::line, "QUIT"}));
    }
}

TEST(LineScanner, BareLineEndingsAreErrors) {
    for (std::size_t step : {1u, 3u, 100u}) {
        auto a = scan("NOOP\nQUIT\r\n", step);
        ASSERT_FALSE(a.empty());
        EXPECT_EQ(a.back().status, LineScanner::Status::bare_lf) << step;
        auto b = scan("NOOP\rQUIT\r\n", step);
        ASSERT_FALSE(b.empty());
        EXPECT_EQ(b.back().status, LineScanner::Status::bare_cr) << step;
    }
    // A bare LF inside an over-long line is still caught.
    auto c = scan(std::string(600, 'a') + "\nRSET\r\n", 50);
    EXPECT_EQ(c.back().status, LineScanner::Status::bare_lf);
}

TEST(ParseCommand, VerbsAreCaseInsensitive) {
    EXPECT_EQ(parse_command("ehlo x.test").verb, Verb::ehlo);
    EXPECT_EQ(parse_command("Quit").verb, Verb::quit);
    EXPECT_EQ(parse_command("STARTTLS").verb, Verb::starttls);
    EXPECT_EQ(parse_command("XYZZY").verb, Verb::unknown);
    EXPECT_EQ(parse_command("").verb, Verb::unknown);
    EXPECT_EQ(parse_command("EHLOX").verb, Verb::unknown);
}

TEST(ParseCommand, MailAndRcptNeedTheirKeyword) {
    auto m = parse_command("MAIL FROM:<a@b.test> SIZE=10");
    EXPECT_EQ(m.verb, Verb::mail);
    EXPECT_TRUE(m.syntax_ok);
    EXPECT_EQ(m.arg, "<a@b.test> SIZE=10");
    EXPECT_EQ(parse_command("mail from: <a@b.test>").arg, "<a@b.test>");
    EXPECT_FALSE(parse_command("MAIL <a@b.test>").syntax_ok);
    EXPECT_FALSE(parse_command("MAIL FROM <a@b.test>").syntax_ok);
    EXPECT_FALSE(parse_command("RCPT FROM:<a@b.test>").syntax_ok);
    EXPECT_TRUE(parse_command("rcpt to:<a@b.test>").syntax_ok);
}

TEST(ParseCommand, FlagsNulAnd8Bit) {
    EXPECT_TRUE(parse_command(std::string_view("NOOP\0x", 6)).has_nul);
    EXPECT_TRUE(parse_command("RCPT TO:<j\xc3\xb6@b.test>").has_8bit);
    EXPECT_FALSE(parse_command("NOOP").has_8bit);
}

TEST(ParseParams, KeywordsAndValues) {
    std::vector<Param> p;
    ASSERT_TRUE(parse_params(" SIZE=1000 body=8BITMIME SMTPUTF8", p));
    ASSERT_EQ(p.size(), 3u);
    EXPECT_EQ(p[0].keyword, "SIZE");
    EXPECT_EQ(p[0].value, "1000");
    EXPECT_EQ(p[1].keyword, "BODY");
    EXPECT_FALSE(p[2].has_value);
    EXPECT_TRUE(parse_params("", p));
    EXPECT_TRUE(p.empty());
    EXPECT_FALSE(parse_params("SIZE=1", p));  // must start with a space
    EXPECT_FALSE(parse_params(" =1", p));
    EXPECT_FALSE(parse_params(" SIZE=", p));
    EXPECT_FALSE(parse_params(" -X=1", p));
    EXPECT_FALSE(parse_params(" A=b=c", p));
}
