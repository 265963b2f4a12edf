// The outbound client state machine, driven without sockets: scripted next-hop dialogs
// fed at every fragment size, checked byte for byte against what the client writes, and
// the per-recipient results checked against the replies that decided them.

#include "daemon/smtp_client.hpp"

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>
#include <vector>

using namespace sluice;
using namespace sluice::smtp;
using Kind = RecipientResult::Kind;
using State = Client::State;

namespace {

const std::string kGreeting = "220 sink.test ESMTP\r\n";
const std::string kEhlo = "EHLO gw.example.test\r\n";
const std::string kEhloPipelining =
    "250-sink.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n";
const std::string kEhloPlain = "250-sink.test\r\n250-SIZE 0\r\n250 8BITMIME\r\n";
const std::string kBody = "Subject: t\r\n\r\nhello\r\n";

Client::Options options() {
    Client::Options o;
    o.helo = "gw.example.test";
    return o;
}

OutboundMessage message(const std::string& data, std::vector<std::string> rcpts,
                        std::string sender = "a@x.test") {
    OutboundMessage m;
    m.sender = std::move(sender);
    m.recipients = std::move(rcpts);
    m.data = data;
    return m;
}

// Everything the client wants written, refilling data chunks the way a driver does.
std::string drain(Client& c) {
    std::string all;
    for (;;) {
        std::string s = c.take_output();
        if (s.empty()) {
            return all;
        }
        all += s;
        c.output_drained();
    }
}

void feed(Client& c, std::string_view bytes, std::size_t frag) {
    for (std::size_t i = 0; i < bytes.size(); i += frag) {
        c.receive(bytes.substr(i, frag));
    }
}

// kind agrees with the class of code and enhanced code (a promise of the header).
void check_consistent(const RecipientResult& r) {
    int cls = r.code / 100;
    int want = r.kind == Kind::delivered ? 2 : r.kind == Kind::deferred ? 4 : 5;
    EXPECT_EQ(cls, want) << r.code << " " << r.text;
    ASSERT_FALSE(r.enhanced.empty());
    EXPECT_EQ(r.enhanced[0] - '0', want) << r.enhanced;
}

struct Step {
    std::string server;  // what the next hop sends
    std::string client;  // exactly what the client must write in response
};

struct Outcome {
    std::vector<std::vector<RecipientResult>> results;
    State state = State::connecting;
};

// Runs one dialog: connected(), the first message queued at once, each further message
// given as soon as the client is reusable again; every step's server bytes fed `frag`
// bytes at a time.
Outcome run(const std::vector<OutboundMessage>& msgs, const std::vector<Step>& steps,
            std::size_t frag, Client::Options o = options()) {
    Client c(std::move(o));
    c.connected();
    std::size_t next = 0;
    if (!msgs.empty()) {
        EXPECT_TRUE(c.send_message(msgs[next++]));
    }
    Outcome out;
    for (std::size_t i = 0; i < steps.size(); ++i) {
        SCOPED_TRACE("step " + std::to_string(i));
        feed(c, steps[i].server, frag);
        while (c.transaction_done()) {
            out.results.push_back(c.take_results());
        }
        if (next < msgs.size() && c.reusable()) {
            EXPECT_TRUE(c.send_message(msgs[next++]));
        }
        while (c.transaction_done()) {
            out.results.push_back(c.take_results());
        }
        EXPECT_EQ(drain(c), steps[i].client);
    }
    out.state = c.state();
    for (const auto& tx : out.results) {
        for (const auto& r : tx) {
            check_consistent(r);
        }
    }
    return out;
}

// Every fragment size from 1 byte up to the longest server step, plus "all at once".
template <typename F>
void for_each_fragment(const std::vector<Step>& steps, F f) {
    std::size_t longest = 1;
    for (const auto& s : steps) {
        longest = std::max(longest, s.server.size());
    }
    for (std::size_t frag = 1; frag <= longest; ++frag) {
        SCOPED_TRACE("fragment " + std::to_string(frag));
        f(frag);
    }
}

std::string mail_group(const std::string& from, std::size_t size,
                       const std::vector<std::string>& rcpts, std::string_view params = "") {
    std::string s = "MAIL FROM:<" + from + "> SIZE=" + std::to_string(size);
    s += params;
    s += "\r\n";
    for (const auto& r : rcpts) {
        s += "RCPT TO:<" + r + ">\r\n";
    }
    return s + "DATA\r\n";
}

}  // namespace

// ---------------------------------------------------------------------------------------
// ReplyReader

TEST(ReplyReader, SingleAndMultiLineAtEveryFragmentSize) {
    const std::string input =
        "250-sink.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n550 5.1.1 <x@y>: unknown\r\n"
        "451-4.3.0 first\r\n451 4.3.0 second\r\n354\r\n250 2.0.0\r\n";
    for (std::size_t frag = 1; frag <= input.size(); ++frag) {
        SCOPED_TRACE(frag);
        ReplyReader rr;
        std::vector<ServerReply> got;
        for (std::size_t i = 0; i < input.size(); i += frag) {
            rr.append(std::string_view(input).substr(i, frag));
            ServerReply r;
            ReplyReader::Status st;
            while ((st = rr.next(r)) == ReplyReader::Status::reply) {
                got.push_back(r);
            }
            ASSERT_EQ(st, ReplyReader::Status::partial);
        }
        ASSERT_EQ(got.size(), 5u);
        EXPECT_EQ(got[0].code, 250);
        EXPECT_EQ(got[0].lines, (std::vector<std::string>{"sink.test", "PIPELINING", "SIZE 100"}));
        EXPECT_EQ(got[0].enhanced, "");
        EXPECT_EQ(got[1].code, 550);
        EXPECT_EQ(got[1].enhanced, "5.1.1");
        EXPECT_EQ(got[1].text(), "<x@y>: unknown");
        EXPECT_EQ(got[2].enhanced, "4.3.0");
        EXPECT_EQ(got[2].text(), "first second");  // the code is stripped from every line
        EXPECT_EQ(got[3].code, 354);
        EXPECT_TRUE(got[3].lines.size() == 1 && got[3].lines[0].empty());
        EXPECT_EQ(got[4].enhanced, "2.0.0");
        EXPECT_EQ(rr.buffered(), 0u);
    }
}

TEST(ReplyReader, EnhancedCodeOnlyWhenItsClassMatches) {
    ReplyReader rr;
    rr.append("550 4.1.1 odd\r\n250 2.1.5x no\r\n");
    ServerReply r;
    ASSERT_EQ(rr.next(r), ReplyReader::Status::reply);
    EXPECT_EQ(r.enhanced, "");
    EXPECT_EQ(r.text(), "4.1.1 odd");
    ASSERT_EQ(rr.next(r), ReplyReader::Status::reply);
    EXPECT_EQ(r.enhanced, "");
}

TEST(ReplyReader, BareLfAndControlCharacters) {
    ReplyReader rr;
    rr.append("250 ok\n550 5.7.1 bad\x01text\r\n");
    ServerReply r;
    ASSERT_EQ(rr.next(r), ReplyReader::Status::reply);
    EXPECT_EQ(r.text(), "ok");
    ASSERT_EQ(rr.next(r), ReplyReader::Status::reply);
    EXPECT_EQ(r.text(), "bad text");
}

TEST(ReplyReader, MalformedRepliesAreErrors) {
    for (std::string bad : {"hello\r\n", "25\r\n", "2500 x\r\n", "250-a\r\n251 b\r\n", "650 x\r\n",
                            "099 x\r\n", "abc def\r\n"}) {
        SCOPED_TRACE(bad);
        ReplyReader rr;
        rr.append(bad);
        ServerReply r;
        EXPECT_EQ(rr.next(r), ReplyReader::Status::error);
        EXPECT_EQ(rr.next(r), ReplyReader::Status::error);  // stays stuck
    }
}

TEST(ReplyReader, OverlongLineAndTooManyLinesAreErrors) {
    ReplyReader rr;
    rr.append("250 " + std::string(client_limits::reply_line + 10, 'x'));
    ServerReply r;
    EXPECT_EQ(rr.next(r), ReplyReader::Status::error);

    ReplyReader many;
    std::string s;
    for (std::size_t i = 0; i <= client_limits::reply_lines; ++i) {
        s += "250-X\r\n";
    }
    many.append(s + "250 end\r\n");
    EXPECT_EQ(many.next(r), ReplyReader::Status::error);
}

// ---------------------------------------------------------------------------------------
// DotStuffer

namespace {
std::string stuff(std::string_view data, std::size_t piece) {
    DotStuffer d;
    std::string out;
    for (std::size_t i = 0; i < data.size(); i += piece) {
        d.feed(data.substr(i, piece), out);
    }
    d.finish(out);
    return out;
}
}  // namespace

TEST(DotStuffer, StuffsLeadingDotsAtEveryPieceSize) {
    const std::string data = ".first\r\nmid.dle\r\n..two\r\n.\r\n\r\n.x";
    const std::string want = "..first\r\nmid.dle\r\n...two\r\n..\r\n\r\n..x\r\n.\r\n";
    for (std::size_t piece = 1; piece <= data.size(); ++piece) {
        EXPECT_EQ(stuff(data, piece), want) << piece;
    }
}

TEST(DotStuffer, EndsWithCrlfBeforeTheDot) {
    EXPECT_EQ(stuff("", 1), ".\r\n");
    EXPECT_EQ(stuff("a\r\n", 1), "a\r\n.\r\n");
    EXPECT_EQ(stuff("a", 1), "a\r\n.\r\n");
    EXPECT_EQ(stuff("a\r", 1), "a\r\n.\r\n");
}

TEST(DotStuffer, BareLineEndsBecomeCrlfSoNoSmugglingIsPossible) {
    // "\n.\n" would end the data for a lenient next hop: it must go out as a stuffed line.
    const std::string data = "a\n.\nb\r.\rc\r\n";
    for (std::size_t piece = 1; piece <= data.size(); ++piece) {
        EXPECT_EQ(stuff(data, piece), "a\r\n..\r\nb\r\n..\r\nc\r\n.\r\n") << piece;
    }
}

// ---------------------------------------------------------------------------------------
// Client: dialogs

TEST(Client, PipelinedDeliveryInOneGroup) {
    auto msg = message(kBody, {"b@y.test", "c@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"b@y.test", "c@y.test"})},
        {"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
         kBody + ".\r\n"},
        {"250 2.0.0 Ok: queued as ABC\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        ASSERT_EQ(out.results[0].size(), 2u);
        for (const auto& r : out.results[0]) {
            EXPECT_EQ(r.kind, Kind::delivered);
            EXPECT_EQ(r.code, 250);
            EXPECT_EQ(r.enhanced, "2.0.0");
            EXPECT_EQ(r.text, "Ok: queued as ABC");
            EXPECT_EQ(r.in_reply_to, "end of data");
        }
        EXPECT_EQ(out.state, State::ready);
    });
}

TEST(Client, NonPipelinedWaitsForEachReply) {
    auto msg = message(kBody, {"b@y.test", "c@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPlain, "MAIL FROM:<a@x.test> SIZE=" + std::to_string(kBody.size()) + "\r\n"},
        {"250 2.1.0 Ok\r\n", "RCPT TO:<b@y.test>\r\n"},
        {"250 2.1.5 Ok\r\n", "RCPT TO:<c@y.test>\r\n"},
        {"250 2.1.5 Ok\r\n", "DATA\r\n"},
        {"354 go\r\n", kBody + ".\r\n"},
        {"250 ok\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::delivered);
        EXPECT_EQ(out.results[0][1].kind, Kind::delivered);
        EXPECT_EQ(out.results[0][0].enhanced, "2.0.0");  // filled in: the server gave none
    });
}

TEST(Client, EveryPerRecipientOutcomeWithPipelining) {
    auto msg = message(kBody, {"ok@y.test", "later@y.test", "never@y.test"});
    for (std::string final_reply :
         {"250 2.0.0 queued\r\n", "451 4.3.0 disk\r\n", "554 5.6.0 content rejected\r\n"}) {
        SCOPED_TRACE(final_reply);
        std::vector<Step> steps = {
            {kGreeting, kEhlo},
            {kEhloPipelining,
             mail_group("a@x.test", kBody.size(), {"ok@y.test", "later@y.test", "never@y.test"})},
            {"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.1 mailbox busy\r\n"
             "550 5.1.1 <never@y.test>: unknown\r\n354 go\r\n",
             kBody + ".\r\n"},
            {final_reply, ""},
        };
        for_each_fragment(steps, [&](std::size_t frag) {
            auto out = run({msg}, steps, frag);
            ASSERT_EQ(out.results.size(), 1u);
            const auto& r = out.results[0];
            Kind want = final_reply[0] == '2'   ? Kind::delivered
                        : final_reply[0] == '4' ? Kind::deferred
                                                : Kind::failed;
            EXPECT_EQ(r[0].kind, want);
            EXPECT_EQ(r[0].code, std::stoi(final_reply.substr(0, 3)));
            EXPECT_EQ(r[1].kind, Kind::deferred);
            EXPECT_EQ(r[1].code, 450);
            EXPECT_EQ(r[1].enhanced, "4.2.1");
            EXPECT_EQ(r[1].in_reply_to, "RCPT");
            EXPECT_EQ(r[2].kind, Kind::failed);
            EXPECT_EQ(r[2].code, 550);
            EXPECT_EQ(r[2].diagnostic(), "smtp; 550 5.1.1 <never@y.test>: unknown");
            EXPECT_EQ(out.state, State::ready);
        });
    }
}

TEST(Client, NoRecipientAcceptedPipelinedDataRefused) {
    auto msg = message(kBody, {"x@y.test", "z@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"x@y.test", "z@y.test"})},
        // No data may be sent; the server still holds MAIL: RSET.
        {"250 2.1.0 Ok\r\n550 5.1.1 no\r\n450 4.1.1 later\r\n554 5.5.1 No valid recipients\r\n",
         "RSET\r\n"},
        {"250 2.0.0 Ok\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::failed);
        EXPECT_EQ(out.results[0][1].kind, Kind::deferred);
        EXPECT_EQ(out.state, State::ready);
    });
}

TEST(Client, NoRecipientAcceptedButDataAcceptedSendsOnlyTheDot) {
    auto msg = message(kBody, {"x@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"x@y.test"})},
        {"250 2.1.0 Ok\r\n550 5.1.1 no\r\n354 go ahead anyway\r\n", ".\r\n"},
        {"554 5.5.1 no recipients\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::failed);
        EXPECT_EQ(out.results[0][0].code, 550);  // the RCPT reply decided, not the "."
        EXPECT_EQ(out.state, State::ready);
    });
}

TEST(Client, NoRecipientAcceptedWithoutPipeliningSendsNoData) {
    auto msg = message(kBody, {"x@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPlain, "MAIL FROM:<a@x.test> SIZE=" + std::to_string(kBody.size()) + "\r\n"},
        {"250 ok\r\n", "RCPT TO:<x@y.test>\r\n"},
        {"550 5.1.1 no\r\n", "RSET\r\n"},
        {"250 ok\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::failed);
    });
}

TEST(Client, MailRefusedDecidesForEveryRecipient) {
    auto msg = message(kBody, {"b@y.test", "c@y.test"});
    for (std::string reply : {"451 4.3.0 try later\r\n", "553 5.7.1 sender refused\r\n"}) {
        SCOPED_TRACE(reply);
        // Pipelined: the RCPT and DATA replies that follow are consumed and ignored.
        std::vector<Step> pipelined = {
            {kGreeting, kEhlo},
            {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"b@y.test", "c@y.test"})},
            {reply + "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n",
             "RSET\r\n"},
            {"250 ok\r\n", ""},
        };
        std::vector<Step> plain = {
            {kGreeting, kEhlo},
            {kEhloPlain, "MAIL FROM:<a@x.test> SIZE=" + std::to_string(kBody.size()) + "\r\n"},
            {reply, "RSET\r\n"},
            {"250 ok\r\n", ""},
        };
        for (const auto* steps : {&pipelined, &plain}) {
            for_each_fragment(*steps, [&](std::size_t frag) {
                auto out = run({msg}, *steps, frag);
                ASSERT_EQ(out.results.size(), 1u);
                for (const auto& r : out.results[0]) {
                    EXPECT_EQ(r.code, std::stoi(reply.substr(0, 3)));
                    EXPECT_EQ(r.in_reply_to, "MAIL");
                }
                EXPECT_EQ(out.state, State::ready);
            });
        }
    }
}

TEST(Client, DataRefusedAppliesToAcceptedRecipients) {
    auto msg = message(kBody, {"b@y.test", "c@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"b@y.test", "c@y.test"})},
        {"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n451 4.3.0 not now\r\n", "RSET\r\n"},
        {"250 ok\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::deferred);
        EXPECT_EQ(out.results[0][0].in_reply_to, "DATA");
        EXPECT_EQ(out.results[0][1].kind, Kind::failed);
    });
}

TEST(Client, Reply421MidwayDefersEverythingAndCloses) {
    auto msg = message(kBody, {"b@y.test", "c@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"b@y.test", "c@y.test"})},
        {"250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n421 4.3.2 shutting down\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::failed);  // already final before the 421
        EXPECT_EQ(out.results[0][1].kind, Kind::deferred);
        EXPECT_EQ(out.results[0][1].code, 421);
        EXPECT_EQ(out.results[0][1].in_reply_to, "RCPT");
        EXPECT_EQ(out.state, State::closed);
    });
}

TEST(Client, Reply421ToTheFinalDotIsNotDelivered) {
    auto msg = message(kBody, {"b@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"b@y.test"})},
        {"250 ok\r\n250 ok\r\n354 go\r\n", kBody + ".\r\n"},
        {"421 4.4.2 timeout\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::deferred);
        EXPECT_EQ(out.results[0][0].in_reply_to, "end of data");
        EXPECT_EQ(out.state, State::closed);
    });
}

TEST(Client, MultiLineEhloIsParsed) {
    Client c(options());
    c.connected();
    feed(c, kGreeting, 3);
    EXPECT_EQ(drain(c), kEhlo);
    feed(c,
         "250-sink.test greets\r\n250-pipelining\r\n250-SIZE 52428800\r\n250-8bitmime\r\n"
         "250-AUTH PLAIN LOGIN\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n",
         5);
    EXPECT_EQ(c.state(), State::ready);
    EXPECT_TRUE(c.server_supports("PIPELINING"));
    EXPECT_TRUE(c.server_supports("8BITMIME"));
    EXPECT_TRUE(c.server_supports("starttls"));
    EXPECT_TRUE(c.server_supports("AUTH"));
    EXPECT_TRUE(c.server_supports("SMTPUTF8"));
    EXPECT_FALSE(c.server_supports("CHUNKING"));
    EXPECT_FALSE(c.server_supports("sink.test"));  // the greeting line is no keyword
    EXPECT_EQ(c.server_size_limit(), 52428800u);
    EXPECT_TRUE(c.reusable());
}

TEST(Client, EhloRefusedFallsBackToHelo) {
    auto msg = message(kBody, {"b@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {"502 5.5.1 command not implemented\r\n", "HELO gw.example.test\r\n"},
        // No extensions: no SIZE=, no pipelining.
        {"250 sink.test\r\n", "MAIL FROM:<a@x.test>\r\n"},
        {"250 ok\r\n", "RCPT TO:<b@y.test>\r\n"},
        {"250 ok\r\n", "DATA\r\n"},
        {"354 go\r\n", kBody + ".\r\n"},
        {"250 ok\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::delivered);
    });
}

TEST(Client, SizeRefusalSendsNothing) {
    std::string big(2000, 'x');
    big += "\r\n";
    Client c(options());
    c.connected();
    c.receive(kGreeting);
    EXPECT_EQ(drain(c), kEhlo);
    c.receive("250-sink.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
    ASSERT_EQ(c.state(), State::ready);
    ASSERT_TRUE(c.send_message(message(big, {"b@y.test", "c@y.test"})));
    EXPECT_EQ(drain(c), "");
    ASSERT_TRUE(c.transaction_done());
    auto r = c.take_results();
    ASSERT_EQ(r.size(), 2u);
    for (const auto& x : r) {
        EXPECT_EQ(x.kind, Kind::failed);
        EXPECT_EQ(x.code, 552);
        EXPECT_EQ(x.enhanced, "5.3.4");
        EXPECT_FALSE(x.remote());
    }
    EXPECT_EQ(c.state(), State::ready);
    EXPECT_TRUE(c.reusable());
}

TEST(Client, DotStuffingInATransaction) {
    const std::string data = ".hidden\r\n..two\r\nmid.dle\r\n.\r\nlast";
    auto msg = message(data, {"b@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", data.size(), {"b@y.test"})},
        {"250 ok\r\n250 ok\r\n354 go\r\n", "..hidden\r\n...two\r\nmid.dle\r\n..\r\nlast\r\n.\r\n"},
        {"250 ok\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].kind, Kind::delivered);
    });
}

TEST(Client, ConnectionReusedForTwoTransactionsThenQuit) {
    const std::string body2 = "Subject: second\r\n\r\nbye\r\n";
    auto m1 = message(kBody, {"b@y.test"});
    auto m2 = message(body2, {"c@y.test", "d@y.test"}, "");
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"b@y.test"})},
        {"250 ok\r\n250 ok\r\n354 go\r\n", kBody + ".\r\n"},
        // The first transaction ends; the second goes out on the same connection, with
        // no RSET in between and the null sender as given.
        {"250 2.0.0 first\r\n", mail_group("", body2.size(), {"c@y.test", "d@y.test"})},
        {"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", body2 + ".\r\n"},
        {"250 2.0.0 second\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        Client c(options());
        c.connected();
        ASSERT_TRUE(c.send_message(m1));
        EXPECT_FALSE(c.send_message(m2));  // one queued at a time
        std::vector<std::vector<RecipientResult>> results;
        for (std::size_t i = 0; i < steps.size(); ++i) {
            feed(c, steps[i].server, frag);
            if (c.transaction_done()) {
                results.push_back(c.take_results());
                if (results.size() == 1) {
                    ASSERT_TRUE(c.reusable());
                    ASSERT_TRUE(c.send_message(m2));
                }
            }
            EXPECT_EQ(drain(c), steps[i].client) << i;
        }
        ASSERT_EQ(results.size(), 2u);
        EXPECT_EQ(results[0][0].text, "first");
        EXPECT_EQ(results[1].size(), 2u);
        EXPECT_EQ(results[1][1].text, "second");
        EXPECT_EQ(results[1][1].kind, Kind::delivered);
        EXPECT_TRUE(c.reusable());
        c.quit();
        EXPECT_EQ(drain(c), "QUIT\r\n");
        EXPECT_EQ(c.state(), State::quitting);
        EXPECT_FALSE(c.reusable());
        feed(c, "221 2.0.0 Bye\r\n", frag);
        EXPECT_EQ(c.state(), State::closed);
        EXPECT_TRUE(c.finished());
    });
}

// With PIPELINING the next transaction's group follows the "." of the current one: one
// round trip per message. Results still come in order, each from its own replies.
TEST(Client, NextTransactionPipelinedAfterTheDot) {
    const std::string body2 = "Subject: second\r\n\r\nbye\r\n";
    auto m1 = message(kBody, {"b@y.test"});
    auto m2 = message(body2, {"c@y.test", "d@y.test"});
    auto m3 = message(kBody, {"e@y.test"});
    std::vector<Step> steps = {
        {kGreeting, kEhlo},
        {kEhloPipelining, mail_group("a@x.test", kBody.size(), {"b@y.test"})},
        // 354: the data, its ".", and at once the second transaction's group.
        {"250 ok\r\n250 ok\r\n354 go\r\n",
         kBody + ".\r\n" + mail_group("a@x.test", body2.size(), {"c@y.test", "d@y.test"})},
        // The first "." answered together with the second group's replies.
        {"250 2.0.0 first\r\n250 ok\r\n250 ok\r\n550 5.1.1 no d\r\n354 go\r\n",
         body2 + ".\r\n" + mail_group("a@x.test", kBody.size(), {"e@y.test"})},
        // The second "." refused: the third transaction is not affected.
        {"451 4.3.0 try later\r\n250 ok\r\n250 ok\r\n354 go\r\n", kBody + ".\r\n"},
        {"250 2.0.0 third\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        Client c(options());
        c.connected();
        ASSERT_TRUE(c.send_message(m1));
        std::vector<OutboundMessage> more = {m2, m3};
        std::size_t next = 0;
        std::vector<std::vector<RecipientResult>> results;
        for (std::size_t i = 0; i < steps.size(); ++i) {
            feed(c, steps[i].server, frag);
            while (c.transaction_done()) {
                results.push_back(c.take_results());
            }
            if (next < more.size() && c.can_pipeline()) {
                EXPECT_FALSE(c.reusable());
                ASSERT_TRUE(c.send_message(more[next++]));
                EXPECT_FALSE(c.can_pipeline()) << "one transaction behind the dot at most";
            }
            EXPECT_EQ(drain(c), steps[i].client) << i;
        }
        ASSERT_EQ(results.size(), 3u);
        EXPECT_EQ(results[0][0].kind, Kind::delivered);
        EXPECT_EQ(results[0][0].text, "first");
        ASSERT_EQ(results[1].size(), 2u);
        EXPECT_EQ(results[1][0].kind, Kind::deferred);  // the "." got 451
        EXPECT_EQ(results[1][0].code, 451);
        EXPECT_EQ(results[1][1].kind, Kind::failed);  // its RCPT got 550
        EXPECT_EQ(results[2][0].kind, Kind::delivered);
        EXPECT_EQ(results[2][0].text, "third");
        EXPECT_TRUE(c.reusable());
    });
}

// A 421 to the first "." ends the connection: the transaction pipelined behind it is
// deferred too, and its results still come second.
TEST(Client, Reply421ToTheDotDefersThePipelinedTransaction) {
    Client c(options());
    c.connected();
    feed(c, kGreeting, 100);
    drain(c);
    feed(c, kEhloPipelining, 100);
    ASSERT_TRUE(c.send_message(message(kBody, {"b@y.test"})));
    drain(c);
    feed(c, "250 ok\r\n250 ok\r\n354 go\r\n", 100);
    ASSERT_TRUE(c.can_pipeline());
    ASSERT_TRUE(c.send_message(message(kBody, {"c@y.test"})));
    EXPECT_EQ(c.state(), State::data_end);
    feed(c, "421 4.3.2 shutting down\r\n", 100);
    EXPECT_EQ(c.state(), State::closed);
    auto r1 = c.take_results();
    auto r2 = c.take_results();
    ASSERT_EQ(r1.size(), 1u);
    ASSERT_EQ(r2.size(), 1u);
    EXPECT_EQ(r1[0].kind, Kind::deferred);
    EXPECT_EQ(r2[0].kind, Kind::deferred);
    EXPECT_FALSE(c.transaction_done());
}

// Not without PIPELINING, and not while the data is still being written.
TEST(Client, NoPipelineWithoutTheExtensionOrBeforeTheDot) {
    Client c(options());
    c.connected();
    feed(c, kGreeting, 100);
    drain(c);
    feed(c, "250 model\r\n", 100);  // no PIPELINING
    ASSERT_TRUE(c.send_message(message(kBody, {"b@y.test"})));
    feed(c, "250 ok\r\n", 100);
    feed(c, "250 ok\r\n", 100);
    feed(c, "354 go\r\n", 100);
    EXPECT_EQ(c.state(), State::data_end);
    EXPECT_FALSE(c.can_pipeline());
    EXPECT_FALSE(c.send_message(message(kBody, {"c@y.test"})));
}

TEST(Client, QuitWaitsForTheCurrentTransaction) {
    Client c(options());
    c.connected();
    ASSERT_TRUE(c.send_message(message(kBody, {"b@y.test"})));
    c.receive(kGreeting + kEhloPipelining);
    EXPECT_EQ(drain(c), kEhlo + mail_group("a@x.test", kBody.size(), {"b@y.test"}));
    c.quit();
    EXPECT_EQ(drain(c), "");
    c.receive("250 ok\r\n250 ok\r\n354 go\r\n");
    EXPECT_EQ(drain(c), kBody + ".\r\n");
    c.receive("250 ok\r\n");
    EXPECT_EQ(drain(c), "QUIT\r\n");
    ASSERT_TRUE(c.transaction_done());
    EXPECT_EQ(c.take_results()[0].kind, Kind::delivered);
    EXPECT_FALSE(c.send_message(message(kBody, {"b@y.test"})));
    c.receive("221 bye\r\n");
    EXPECT_EQ(c.state(), State::closed);
}

TEST(Client, ConnectionLostBeforeTheFinalReplyIsDeferred) {
    // Lost at each point of the transaction: never delivered, never failed.
    const std::vector<std::string> server = {kGreeting, kEhloPipelining,
                                             "250 ok\r\n250 ok\r\n354 go\r\n"};
    for (std::size_t lose_after = 0; lose_after <= server.size(); ++lose_after) {
        SCOPED_TRACE(lose_after);
        Client c(options());
        c.connected();
        ASSERT_TRUE(c.send_message(message(kBody, {"b@y.test"})));
        for (std::size_t i = 0; i < lose_after && i < server.size(); ++i) {
            c.receive(server[i]);
            drain(c);
        }
        c.connection_lost();
        EXPECT_EQ(c.state(), State::failed);
        EXPECT_EQ(c.output(), "");
        ASSERT_TRUE(c.transaction_done());
        auto r = c.take_results();
        ASSERT_EQ(r.size(), 1u);
        EXPECT_EQ(r[0].kind, Kind::deferred);
        EXPECT_EQ(r[0].code, 451);
        EXPECT_EQ(r[0].enhanced, "4.4.2");
        EXPECT_FALSE(r[0].remote());
        EXPECT_FALSE(c.close_reason().empty());
    }
}

TEST(Client, LostWhileSendingALargeMessage) {
    std::string big;
    while (big.size() < 300 * 1024) {
        big += "line of text for the message body\r\n";
    }
    Client::Options o = options();
    o.chunk = 16 * 1024;
    Client c(o);
    c.connected();
    ASSERT_TRUE(c.send_message(message(big, {"b@y.test"})));
    c.receive(kGreeting + kEhloPipelining);
    drain(c);
    c.receive("250 ok\r\n250 ok\r\n354 go\r\n");
    EXPECT_EQ(c.state(), State::sending);
    std::string first = c.take_output();
    EXPECT_GT(first.size(), 0u);
    EXPECT_LE(first.size(), 2 * o.chunk + 8);
    c.connection_lost();
    ASSERT_TRUE(c.transaction_done());
    EXPECT_EQ(c.take_results()[0].kind, Kind::deferred);
}

TEST(Client, OutputIsChunkedAndBounded) {
    std::string big;
    for (int i = 0; big.size() < 2 * 1024 * 1024; ++i) {
        big += (i % 7 == 0 ? ".dotted line " : "plain line ") + std::to_string(i) + "\r\n";
    }
    Client::Options o = options();
    o.chunk = 64 * 1024;
    Client c(o);
    c.connected();
    ASSERT_TRUE(c.send_message(message(big, {"b@y.test"})));
    c.receive(kGreeting + kEhloPipelining);
    drain(c);
    c.receive("250 ok\r\n250 ok\r\n354 go\r\n");
    std::string sent;
    std::size_t chunks = 0;
    while (c.state() == State::sending || !c.output().empty()) {
        std::string s = c.take_output();
        ASSERT_FALSE(s.empty());
        EXPECT_LE(s.size(), 2 * o.chunk + 8);  // never the whole message at once
        EXPECT_EQ(c.current_timeout(),
                  c.state() == State::sending ? o.timeouts.data_block : o.timeouts.data_term);
        sent += s;
        ++chunks;
        c.output_drained();
    }
    EXPECT_GT(chunks, 20u);
    EXPECT_EQ(c.state(), State::data_end);
    EXPECT_EQ(sent, stuff(big, 1000));
    c.receive("250 ok\r\n");
    EXPECT_EQ(c.take_results()[0].kind, Kind::delivered);
}

TEST(Client, TimeoutsFollowRfc5321) {
    Client::Options o = options();
    Client c(o);
    EXPECT_EQ(c.current_timeout(), o.timeouts.connect);
    c.connected();
    ASSERT_TRUE(c.send_message(message(kBody, {"b@y.test"})));
    EXPECT_EQ(c.current_timeout(), std::chrono::minutes(5));  // §4.5.3.2.1
    c.receive(kGreeting);
    EXPECT_EQ(c.state(), State::ehlo);
    c.receive(kEhloPipelining);
    EXPECT_EQ(c.state(), State::mail);
    EXPECT_EQ(c.current_timeout(), std::chrono::minutes(5));  // §4.5.3.2.2
    c.receive("250 ok\r\n");
    EXPECT_EQ(c.state(), State::rcpt);
    EXPECT_EQ(c.current_timeout(), std::chrono::minutes(5));  // §4.5.3.2.3
    c.receive("250 ok\r\n");
    EXPECT_EQ(c.state(), State::data);
    EXPECT_EQ(c.current_timeout(), std::chrono::minutes(2));  // §4.5.3.2.4
    c.receive("354 go\r\n");
    EXPECT_EQ(c.state(), State::data_end);                     // small message: all stuffed at once
    EXPECT_EQ(c.current_timeout(), std::chrono::minutes(10));  // §4.5.3.2.6
    c.timed_out();
    EXPECT_EQ(c.state(), State::failed);
    EXPECT_EQ(c.current_timeout(), Millis(0));
    auto r = c.take_results();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, Kind::deferred);
    EXPECT_EQ(r[0].enhanced, "4.4.2");
    EXPECT_NE(r[0].text.find("data_end"), std::string::npos);
    EXPECT_EQ(c.output(), "");
}

TEST(Client, IdleTimeoutQuitsPolitely) {
    Client c(options());
    c.connected();
    c.receive(kGreeting);
    c.receive(kEhloPipelining);
    drain(c);
    EXPECT_EQ(c.state(), State::ready);
    EXPECT_EQ(c.current_timeout(), options().timeouts.idle);
    c.timed_out();
    EXPECT_EQ(drain(c), "QUIT\r\n");
    EXPECT_EQ(c.state(), State::quitting);
    EXPECT_FALSE(c.transaction_done());
    c.connection_lost();  // the server closed without 221: still an orderly end
    EXPECT_EQ(c.state(), State::closed);
}

TEST(Client, EightBitData) {
    const std::string data = "Subject: caf\xc3\xa9\r\n\r\n\xe2\x82\xac\r\n";
    auto msg = message(data, {"b@y.test"});
    // Offered: BODY=8BITMIME.
    {
        Client c(options());
        c.connected();
        c.send_message(msg);
        c.receive(kGreeting + kEhloPipelining);
        EXPECT_EQ(drain(c),
                  kEhlo + mail_group("a@x.test", data.size(), {"b@y.test"}, " BODY=8BITMIME"));
    }
    // Not offered: sent as is by default, without BODY=.
    {
        Client c(options());
        c.connected();
        c.send_message(msg);
        c.receive(kGreeting + "250-sink.test\r\n250-PIPELINING\r\n250 SIZE 0\r\n");
        EXPECT_EQ(drain(c), kEhlo + mail_group("a@x.test", data.size(), {"b@y.test"}));
    }
    // Not offered, strict: 554 5.6.3 and nothing sent.
    {
        Client::Options o = options();
        o.strict_8bitmime = true;
        Client c(o);
        c.connected();
        c.send_message(msg);
        c.receive(kGreeting + "250-sink.test\r\n250 PIPELINING\r\n");
        EXPECT_EQ(drain(c), kEhlo);
        auto r = c.take_results();
        ASSERT_EQ(r.size(), 1u);
        EXPECT_EQ(r[0].kind, Kind::failed);
        EXPECT_EQ(r[0].enhanced, "5.6.3");
        EXPECT_EQ(c.state(), State::ready);
    }
}

TEST(Client, NonAsciiAddressesNeedSmtputf8) {
    auto msg = message(kBody, {"j\xc3\xb6rg@y.test"});
    {
        Client c(options());
        c.connected();
        c.send_message(msg);
        c.receive(kGreeting + kEhloPipelining);
        EXPECT_EQ(drain(c), kEhlo + mail_group("a@x.test", kBody.size(), {"j\xc3\xb6rg@y.test"},
                                               " SMTPUTF8"));
    }
    {
        Client c(options());
        c.connected();
        c.send_message(msg);
        c.receive(kGreeting + "250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        EXPECT_EQ(drain(c), kEhlo);
        auto r = c.take_results();
        ASSERT_EQ(r.size(), 1u);
        EXPECT_EQ(r[0].kind, Kind::failed);
        EXPECT_EQ(r[0].code, 553);
        EXPECT_EQ(r[0].enhanced, "5.6.7");
    }
}

TEST(Client, ControlCharactersInAddressesNeverReachTheWire) {
    auto msg = message(kBody, {"evil@y.test>\r\nRSET", "b@y.test"});
    Client c(options());
    c.connected();
    c.send_message(msg);
    c.receive(kGreeting + kEhloPipelining);
    EXPECT_EQ(drain(c), kEhlo + mail_group("a@x.test", kBody.size(), {"b@y.test"}));
    c.receive("250 ok\r\n250 ok\r\n354 go\r\n");
    drain(c);
    c.receive("250 ok\r\n");
    auto r = c.take_results();
    ASSERT_EQ(r.size(), 2u);
    EXPECT_EQ(r[0].kind, Kind::failed);
    EXPECT_EQ(r[0].enhanced, "5.1.3");
    EXPECT_EQ(r[1].kind, Kind::delivered);
}

TEST(Client, RefusedGreetingDefersAndQuits) {
    auto msg = message(kBody, {"b@y.test"});
    std::vector<Step> steps = {
        {"554 5.7.1 no service for you\r\n", "QUIT\r\n"},
        {"221 bye\r\n", ""},
    };
    for_each_fragment(steps, [&](std::size_t frag) {
        auto out = run({msg}, steps, frag);
        ASSERT_EQ(out.results.size(), 1u);
        const auto& r = out.results[0][0];
        EXPECT_EQ(r.kind, Kind::deferred);  // session level: never a bounce
        EXPECT_EQ(r.code, 454);
        EXPECT_EQ(r.enhanced, "4.7.1");
        EXPECT_EQ(r.diagnostic(), "smtp; 554 5.7.1 no service for you");
        EXPECT_EQ(r.in_reply_to, "greeting");
        EXPECT_EQ(out.state, State::closed);
    });
    std::vector<Step> busy = {{"421 4.3.2 busy\r\n", ""}};
    for_each_fragment(busy, [&](std::size_t frag) {
        auto out = run({msg}, busy, frag);
        ASSERT_EQ(out.results.size(), 1u);
        EXPECT_EQ(out.results[0][0].code, 421);
        EXPECT_EQ(out.state, State::closed);
    });
}

TEST(Client, MalformedReplyFailsTheConnection) {
    Client c(options());
    c.connected();
    c.send_message(message(kBody, {"b@y.test"}));
    c.receive(kGreeting + kEhloPipelining);
    drain(c);
    c.receive("250 ok\r\nHTTP/1.1 400 Bad Request\r\n");
    EXPECT_EQ(c.state(), State::failed);
    auto r = c.take_results();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, Kind::deferred);
    EXPECT_EQ(r[0].enhanced, "4.5.0");
}

TEST(Client, UnexpectedReplyClassesAreProtocolErrors) {
    // 354 to MAIL, 250 to DATA: nothing is concluded from them, nothing bounces.
    Client c(options());
    c.connected();
    c.send_message(message(kBody, {"b@y.test"}));
    c.receive(kGreeting + kEhloPipelining);
    drain(c);
    c.receive("354 what\r\n250 ok\r\n250 ok\r\n");
    EXPECT_EQ(drain(c), "RSET\r\n");
    auto r = c.take_results();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, Kind::deferred);
    EXPECT_EQ(r[0].enhanced, "4.5.0");
}

TEST(Client, EarlyReplyWhileSendingIsNotDelivered) {
    std::string big(200 * 1024, 'a');
    Client::Options o = options();
    o.chunk = 4096;
    Client c(o);
    c.connected();
    c.send_message(message(big, {"b@y.test"}));
    c.receive(kGreeting + kEhloPipelining);
    drain(c);
    c.receive("250 ok\r\n250 ok\r\n354 go\r\n");
    c.take_output();
    ASSERT_EQ(c.state(), State::sending);
    c.receive("250 2.0.0 too early\r\n");
    EXPECT_EQ(c.state(), State::failed);
    auto r = c.take_results();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, Kind::deferred);
}

TEST(Client, RsetRefusedEndsTheConnection) {
    auto m1 = message(kBody, {"x@y.test"});
    Client c(options());
    c.connected();
    c.send_message(m1);
    c.receive(kGreeting + kEhloPipelining);
    drain(c);
    c.receive("250 ok\r\n550 no\r\n554 no\r\n");
    EXPECT_EQ(drain(c), "RSET\r\n");
    EXPECT_EQ(c.take_results()[0].kind, Kind::failed);
    EXPECT_TRUE(c.reusable());
    ASSERT_TRUE(c.send_message(message(kBody, {"b@y.test"})));  // queued behind RSET
    c.receive("500 5.5.1 what\r\n");
    EXPECT_EQ(drain(c), "QUIT\r\n");
    auto r = c.take_results();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, Kind::deferred);
    EXPECT_EQ(r[0].in_reply_to, "RSET");
}

TEST(Client, StartTlsHook) {
    Client::Options o = options();
    o.starttls = Client::StartTls::optional;
    Client c(o);
    c.connected();
    c.send_message(message(kBody, {"b@y.test"}));
    c.receive(kGreeting);
    EXPECT_EQ(drain(c), kEhlo);
    c.receive("250-sink.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    EXPECT_EQ(drain(c), "STARTTLS\r\n");
    EXPECT_EQ(c.state(), State::starttls);
    // Plaintext injected behind the 220 must be thrown away (CVE-2011-0411).
    c.receive("220 2.0.0 go ahead\r\n250-fake\r\n250 PIPELINING\r\n");
    EXPECT_EQ(c.state(), State::tls_handshake);
    EXPECT_EQ(drain(c), "");
    c.receive("250 more injected\r\n");
    c.tls_established();
    EXPECT_TRUE(c.tls_active());
    EXPECT_FALSE(c.server_supports("PIPELINING"));  // forgotten until the new EHLO
    EXPECT_EQ(drain(c), kEhlo);
    c.receive("250-sink.test\r\n250 PIPELINING\r\n");
    EXPECT_EQ(drain(c), "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");

    // Required but not offered: deferred, QUIT.
    o.starttls = Client::StartTls::required;
    Client d(o);
    d.connected();
    d.send_message(message(kBody, {"b@y.test"}));
    d.receive(kGreeting + kEhloPipelining);
    EXPECT_EQ(drain(d), kEhlo + "QUIT\r\n");
    auto r = d.take_results();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, Kind::deferred);
    EXPECT_EQ(r[0].code, 454);
}

TEST(Client, SendMessageRulesAndQuitBeforeReady) {
    Client c(options());
    EXPECT_FALSE(c.send_message(message(kBody, {})));  // no recipients
    c.quit();  // before connecting and with nothing queued: done
    EXPECT_EQ(c.state(), State::closed);
    EXPECT_FALSE(c.send_message(message(kBody, {"b@y.test"})));

    Client d(options());
    d.connected();
    d.quit();
    d.receive(kGreeting);
    EXPECT_EQ(drain(d), kEhlo);
    d.receive(kEhloPipelining);
    EXPECT_EQ(drain(d), "QUIT\r\n");
    d.receive("221 bye\r\n");
    EXPECT_EQ(d.state(), State::closed);
    EXPECT_FALSE(d.transaction_done());
}

TEST(Client, UnsolicitedReply421WhileIdleCloses) {
    Client c(options());
    c.connected();
    c.receive(kGreeting + kEhloPipelining);
    drain(c);
    c.receive("421 4.4.2 idle timeout\r\n");
    EXPECT_EQ(c.state(), State::closed);
    EXPECT_FALSE(c.transaction_done());
}

// ---------------------------------------------------------------------------------------
// Property: against a model server answering at random (refusals, 421, hang-ups, DATA
// accepted with no recipient, RSET refused, idle timeouts), fed in random fragments, every
// recipient of every accepted message gets exactly one result, and it is `delivered`
// exactly when the server accepted that recipient's RCPT and then the final dot.

namespace {

class ModelServer {
  public:
    explicit ModelServer(std::mt19937& rng, bool pipelining) : rng_(rng), pipe_(pipelining) {}

    bool gone = false;                // closed the connection (after 421 or a hang-up)
    std::set<std::string> delivered;  // ground truth
    std::string out;                  // replies not yet given to the client

    void input(std::string_view bytes) {
        if (gone) {
            return;
        }
        in_.append(bytes);
        std::size_t e;
        while (!gone && (e = in_.find("\r\n")) != std::string::npos) {
            std::string line = in_.substr(0, e);
            in_.erase(0, e + 2);
            in_data_ ? data_line(line) : command(line);
        }
    }

  private:
    int pick(std::initializer_list<std::pair<int, int>> choices) {  // (weight, value)
        int total = 0;
        for (auto& c : choices) {
            total += c.first;
        }
        int r = static_cast<int>(rng_() % static_cast<unsigned>(total));
        for (auto& c : choices) {
            if (r < c.first) {
                return c.second;
            }
            r -= c.first;
        }
        return choices.begin()->second;
    }
    void reply(int code) {
        if (code == 0) {  // hang up without a word
            gone = true;
            return;
        }
        out += std::to_string(code) + " " + std::to_string(code / 100) + ".0.0 model\r\n";
        if (code == 421) {
            gone = true;
        }
    }
    void command(const std::string& line) {
        std::string verb = line.substr(0, 4);
        if (verb == "EHLO") {
            out += pipe_ ? "250-model\r\n250-PIPELINING\r\n250 8BITMIME\r\n" : "250 model\r\n";
        } else if (verb == "MAIL") {
            ASSERT_FALSE(mail_ok_) << "MAIL inside a transaction";
            int code = pick({{80, 250}, {6, 451}, {6, 550}, {2, 421}, {1, 0}});
            mail_ok_ = code == 250;
            accepted_.clear();
            reply(code);
        } else if (verb == "RCPT") {
            int code = mail_ok_ ? pick({{60, 250}, {15, 450}, {15, 550}, {2, 421}, {1, 0}}) : 503;
            if (code == 250) {
                accepted_.push_back(line.substr(9, line.size() - 10));
            }
            reply(code);
        } else if (verb == "DATA") {
            int code = mail_ok_ && !accepted_.empty()
                           ? pick({{85, 354}, {5, 451}, {5, 554}, {2, 421}, {1, 0}})
                           : pick({{70, 554}, {20, 503}, {10, 354}});
            in_data_ = code == 354;
            data_lines_ = 0;
            reply(code);
        } else if (verb == "RSET") {
            mail_ok_ = false;
            accepted_.clear();
            reply(pick({{95, 250}, {5, 500}}));
        } else if (verb == "QUIT") {
            out += "221 bye\r\n";
            gone = true;
        } else {
            ADD_FAILURE() << "unexpected command: " << line;
        }
    }
    void data_line(const std::string& line) {
        if (line != ".") {
            ++data_lines_;
            return;
        }
        in_data_ = false;
        bool recipients = mail_ok_ && !accepted_.empty();
        if (!recipients) {
            EXPECT_EQ(data_lines_, 0) << "message data sent with no accepted recipient";
        }
        int code = pick({{70, 250}, {10, 451}, {10, 554}, {3, 421}, {3, 0}});
        if (code == 250 && recipients) {
            delivered.insert(accepted_.begin(), accepted_.end());
        }
        mail_ok_ = false;
        accepted_.clear();
        reply(code);
    }

    std::mt19937& rng_;
    bool pipe_;
    std::string in_;
    bool in_data_ = false;
    bool mail_ok_ = false;
    int data_lines_ = 0;
    std::vector<std::string> accepted_;
};

}  // namespace

TEST(ClientProperty, DeliveredExactlyWhenTheServerAcceptedTheDot) {
    std::mt19937 rng(20261122);
    const std::string body = "Subject: p\r\n\r\n.line\r\nbody\r\n";
    std::size_t delivered_total = 0;
    for (int iter = 0; iter < 4000; ++iter) {
        SCOPED_TRACE("iteration " + std::to_string(iter));
        ModelServer server(rng, rng() % 2 == 0);
        Client c(options());
        c.connected();
        server.out = kGreeting;

        std::vector<OutboundMessage> msgs;
        const int n_msgs = 1 + static_cast<int>(rng() % 4);
        for (int m = 0; m < n_msgs; ++m) {
            std::vector<std::string> rcpts;
            const int n_rcpts = 1 + static_cast<int>(rng() % 4);
            for (int r = 0; r < n_rcpts; ++r) {
                rcpts.push_back("m" + std::to_string(m) + "r" + std::to_string(r) + "@y.test");
            }
            msgs.push_back(message(body, rcpts));
        }
        std::size_t given = 0;
        if (c.send_message(msgs[given])) {
            ++given;
        }
        std::vector<std::vector<RecipientResult>> results;
        for (int step = 0; step < 200 && !c.finished(); ++step) {
            // Server -> client, in random fragments.
            std::string bytes = std::move(server.out);
            server.out.clear();
            for (std::size_t i = 0; i < bytes.size();) {
                std::size_t n = 1 + rng() % 16;
                c.receive(std::string_view(bytes).substr(i, n));
                i += n;
            }
            if (server.gone && !c.finished()) {
                c.connection_lost();
            } else if (bytes.empty() && !c.finished() && rng() % 50 == 0) {
                c.timed_out();
            }
            while (c.transaction_done()) {
                results.push_back(c.take_results());
            }
            if (given < msgs.size() && c.can_pipeline() && rng() % 2 == 0) {
                // Behind the final "." of the current one, in the same bytes.
                ASSERT_TRUE(c.send_message(msgs[given]));
                ++given;
            } else if (c.reusable()) {
                if (given < msgs.size()) {
                    ASSERT_TRUE(c.send_message(msgs[given]));
                    ++given;
                } else {
                    c.quit();
                }
            }
            // Client -> server.
            server.input(drain(c));
            if (server.gone && server.out.empty() && !c.finished()) {
                c.connection_lost();
            }
        }
        ASSERT_TRUE(c.finished()) << to_string(c.state());
        while (c.transaction_done()) {
            results.push_back(c.take_results());
        }
        ASSERT_EQ(results.size(), given);
        for (std::size_t m = 0; m < given; ++m) {
            ASSERT_EQ(results[m].size(), msgs[m].recipients.size());
            for (std::size_t r = 0; r < results[m].size(); ++r) {
                const auto& res = results[m][r];
                check_consistent(res);
                bool truth = server.delivered.count(msgs[m].recipients[r]) > 0;
                EXPECT_EQ(res.kind == Kind::delivered, truth)
                    << msgs[m].recipients[r] << " " << res.code << " " << res.text;
                delivered_total += truth ? 1 : 0;
            }
        }
    }
    EXPECT_GT(delivered_total, 1000u);  // the model delivers often enough to mean something
}
