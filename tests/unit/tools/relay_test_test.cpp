// Unit tests of tools/relay_test: the reply parser (multi-line, fragments, limits), the
// target parser, what is learned from a greeting, the IP-literal spellings, the probe
// catalogue (distinct names, never DATA, always an outside recipient) and the outputs.

#include "tools/relay_test.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>

namespace sluice::ctl::relay {
namespace {

// ---- parse_reply ----

TEST(ReplyParse, SingleLine) {
    ServerReply r;
    auto p = parse_reply("250 2.1.0 Ok\r\n", r);
    ASSERT_EQ(p.status, ParseStatus::complete);
    EXPECT_EQ(p.consumed, 14u);
    EXPECT_EQ(r.code, 250);
    ASSERT_EQ(r.lines.size(), 1u);
    EXPECT_EQ(r.lines[0], "2.1.0 Ok");
    EXPECT_EQ(r.first_line(), "250 2.1.0 Ok");
}

TEST(ReplyParse, MultiLine) {
    std::string ehlo =
        "250-mx.example.test Hello\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250 STARTTLS\r\n";
    ServerReply r;
    auto p = parse_reply(ehlo + "554 extra\r\n", r);
    ASSERT_EQ(p.status, ParseStatus::complete);
    EXPECT_EQ(p.consumed, ehlo.size());
    EXPECT_EQ(r.code, 250);
    ASSERT_EQ(r.lines.size(), 4u);
    EXPECT_EQ(r.lines[0], "mx.example.test Hello");
    EXPECT_EQ(r.lines[3], "STARTTLS");
    EXPECT_EQ(r.full_text(), "250 mx.example.test Hello | PIPELINING | SIZE 26214400 | STARTTLS");
}

TEST(ReplyParse, EveryFragmentIsPartialUntilTheLastLine) {
    std::string reply = "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 last\r\n";
    for (std::size_t n = 0; n < reply.size(); ++n) {
        ServerReply r;
        EXPECT_EQ(parse_reply(std::string_view(reply).substr(0, n), r).status, ParseStatus::partial)
            << n;
    }
    ServerReply r;
    EXPECT_EQ(parse_reply(reply, r).status, ParseStatus::complete);
    EXPECT_EQ(r.lines.size(), 3u);
}

TEST(ReplyParse, BareLfAndCodeOnly) {
    ServerReply r;
    auto p = parse_reply("220-hi\n220\n", r);
    ASSERT_EQ(p.status, ParseStatus::complete);
    EXPECT_EQ(p.consumed, 11u);
    EXPECT_EQ(r.code, 220);
    ASSERT_EQ(r.lines.size(), 2u);
    EXPECT_EQ(r.lines[1], "");
    EXPECT_EQ(parse_reply("354\r\n", r).status, ParseStatus::complete);
    EXPECT_EQ(r.first_line(), "354");
}

TEST(ReplyParse, Errors) {
    ServerReply r;
    for (std::string_view bad :
         {"25 ok\r\n", "abc ok\r\n", "250ok\r\n", "650 nope\r\n", "050 nope\r\n",
          "250-a\r\n251 b\r\n", "\r\n", "HTTP/1.1 200\r\n"}) {
        EXPECT_EQ(parse_reply(bad, r).status, ParseStatus::error) << bad;
    }
}

TEST(ReplyParse, Limits) {
    ServerReply r;
    std::string long_line = "250 " + std::string(limits::kMaxReplyLine, 'x');
    EXPECT_EQ(parse_reply(long_line, r).status, ParseStatus::error);  // even without newline
    EXPECT_EQ(parse_reply(long_line + "\r\n", r).status, ParseStatus::error);
    std::string many;
    for (std::size_t i = 0; i <= limits::kMaxReplyLines; ++i) {
        many += "250-x\r\n";
    }
    EXPECT_EQ(parse_reply(many, r).status, ParseStatus::error);
    std::string ok;
    for (std::size_t i = 0; i + 1 < limits::kMaxReplyLines; ++i) {
        ok += "250-x\r\n";
    }
    ok += "250 end\r\n";
    EXPECT_EQ(parse_reply(ok, r).status, ParseStatus::complete);
}

// ---- parse_target ----

TEST(Target, Forms) {
    std::string err;
    auto t = parse_target("mx.example.com", err);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->host, "mx.example.com");
    EXPECT_EQ(t->port, 25);
    t = parse_target("127.0.0.1:2525", err);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->host, "127.0.0.1");
    EXPECT_EQ(t->port, 2525);
    t = parse_target("[::1]:2526", err);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->host, "::1");
    EXPECT_EQ(t->port, 2526);
    t = parse_target("[2001:db8::1]", err);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->port, 25);
    t = parse_target("2001:db8::1", err);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->host, "2001:db8::1");
    EXPECT_EQ(t->port, 25);
}

TEST(Target, Errors) {
    std::string err;
    for (std::string_view bad : {"", ":25", "host:", "host:0", "host:65536", "host:2x", "[::1",
                                 "[::1]x", "[::1]:", "a b", "user@host", "gg::zz"}) {
        err.clear();
        EXPECT_FALSE(parse_target(bad, err)) << bad;
        EXPECT_FALSE(err.empty()) << bad;
    }
}

// ---- learning from the greeting ----

TEST(Learn, HostnameAndLocalDomain) {
    ServerReply r;
    r.code = 220;
    r.lines = {"mx.Example.TEST ESMTP Sluice"};
    EXPECT_EQ(hostname_from_reply(r), "mx.Example.TEST");
    EXPECT_EQ(guess_local_domain("mx.Example.TEST"), "example.test");
    EXPECT_EQ(guess_local_domain("example.test."), "example.test");
    EXPECT_EQ(guess_local_domain("a.b.example.test"), "b.example.test");
    EXPECT_EQ(guess_local_domain("localhost"), "");
    EXPECT_EQ(guess_local_domain("bad..name.test"), "");
    r.lines = {"ESMTP ready"};
    EXPECT_EQ(hostname_from_reply(r), "");
    r.lines = {};
    EXPECT_EQ(hostname_from_reply(r), "");
}

TEST(Learn, PlainAddresses) {
    EXPECT_TRUE(valid_plain_address("relay-test@outside.example"));
    for (std::string_view bad :
         {"", "a", "@b", "a@", "a b@c", "<a@b>", "a@b@c", "\"a\"@b", "a@b\r\nDATA"}) {
        EXPECT_FALSE(valid_plain_address(bad)) << bad;
    }
}

// ---- IP literal spellings ----

TEST(IpSpellings, EveryIpv4SpellingNamesTheSameAddress) {
    auto ip = parse_ip("127.0.0.1");
    ASSERT_TRUE(ip);
    auto sp = ip_literal_spellings(*ip);
    std::set<std::string> literals;
    int legacy = 0;
    for (const auto& s : sp) {
        literals.insert(s.literal);
        if (s.literal.rfind("IPv6:", 0) == 0) {
            auto v6 = parse_ip(s.literal.substr(5));
            ASSERT_TRUE(v6) << s.literal;
            EXPECT_TRUE(*v6 == *ip || s.name == "ipv6-loopback") << s.literal;
            continue;
        }
        // inet_aton accepts the legacy forms (one number, hex, octal, short): each must
        // decode to the server's address, or the probe tests nothing.
        in_addr a{};
        ASSERT_EQ(inet_aton(s.literal.c_str(), &a), 1) << s.literal;
        if (s.name != "zero-padded") {  // "127.000.000.001" is octal-ambiguous by design
            EXPECT_EQ(ntohl(a.s_addr), 0x7f000001u) << s.name << " " << s.literal;
            ++legacy;
        }
    }
    EXPECT_EQ(literals.size(), sp.size());
    EXPECT_GE(legacy, 6);
    EXPECT_TRUE(literals.count("127.0.0.1"));
    EXPECT_TRUE(literals.count("2130706433"));
    EXPECT_TRUE(literals.count("0x7f000001"));
    EXPECT_TRUE(literals.count("127.1"));
    EXPECT_TRUE(literals.count("IPv6:::ffff:127.0.0.1"));
    EXPECT_TRUE(literals.count("IPv6:::1"));
}

TEST(IpSpellings, Ipv6) {
    auto ip = parse_ip("2001:db8::25");
    ASSERT_TRUE(ip);
    auto sp = ip_literal_spellings(*ip);
    std::set<std::string> literals;
    for (const auto& s : sp) {
        literals.insert(s.literal);
        auto colon = s.literal.find(':');
        ASSERT_NE(colon, std::string::npos);
        auto back = parse_ip(s.literal.substr(colon + 1));
        ASSERT_TRUE(back) << s.literal;
        EXPECT_EQ(*back, *ip) << s.literal;
    }
    EXPECT_EQ(literals.size(), sp.size());
    EXPECT_TRUE(literals.count("IPv6:2001:db8::25"));
    EXPECT_TRUE(literals.count("IPv6:2001:db8:0:0:0:0:0:25"));
    EXPECT_TRUE(literals.count("IPv6:2001:0db8:0000:0000:0000:0000:0000:0025"));
    EXPECT_TRUE(literals.count("ipv6:2001:db8::25"));
}

// ---- the catalogue ----

ProbeContext context(std::string_view server_ip, std::string_view server_name) {
    ProbeContext c;
    c.local_domain = "example.test";
    c.server_name = std::string(server_name);
    c.server_ip = *parse_ip(server_ip);
    c.local_sender = "postmaster@example.test";
    c.outside = "relay-test@outside.example";
    c.helo = "[192.0.2.200]";
    return c;
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
}

void check_catalogue(const ProbeContext& ctx) {
    auto cat = build_catalogue(ctx);
    ASSERT_GE(cat.size(), 30u);
    std::set<std::string> names;
    std::set<std::string> categories;
    for (const auto& p : cat) {
        SCOPED_TRACE(p.name);
        EXPECT_TRUE(names.insert(p.name).second) << "duplicate probe name";
        categories.insert(p.category);
        EXPECT_FALSE(p.description.empty());
        EXPECT_FALSE(p.helo.empty());
        for (const std::string& field : {p.name, p.helo, p.mail_from, p.rcpt_to}) {
            EXPECT_EQ(field.find_first_of(std::string("\r\n\0", 3)), std::string::npos);
            EXPECT_EQ(lower(field).find("data"), std::string::npos);
            EXPECT_EQ(field.find(' '), std::string::npos);
        }
        ASSERT_GE(p.mail_from.size(), 2u);
        ASSERT_GE(p.rcpt_to.size(), 3u);
        EXPECT_EQ(p.mail_from.front(), '<');
        EXPECT_EQ(p.mail_from.back(), '>');
        EXPECT_EQ(p.rcpt_to.front(), '<');
        EXPECT_EQ(p.rcpt_to.back(), '>');
        // Every recipient leads outside: through the outside domain, an outside IP
        // literal, or a look-alike of the local domain that is not it.
        std::string rcpt = lower(p.rcpt_to);
        bool outside = rcpt.find("outside.example") != std::string::npos ||
                       rcpt.find(std::string(defaults::kOutsideIpv4)) != std::string::npos ||
                       rcpt.find(std::string(defaults::kOutsideIpv6)) != std::string::npos ||
                       rcpt.find("@outside-example.test>") != std::string::npos;
        EXPECT_TRUE(outside) << p.rcpt_to;
        // Never a plain local recipient: that would test nothing.
        EXPECT_NE(rcpt, "<postmaster@example.test>");
    }
    for (std::string_view c : {"manual", "null-sender", "percent", "bang", "quoted", "double-at",
                               "source-route", "ip-literal", "case", "helo"}) {
        EXPECT_TRUE(categories.count(std::string(c))) << c;
    }
    // The manual open-relay test comes first, as an operator would type it.
    EXPECT_EQ(cat[0].name, "manual-valid-local-sender");
    EXPECT_EQ(cat[0].mail_from, "<postmaster@example.test>");
    EXPECT_EQ(cat[0].rcpt_to, "<relay-test@outside.example>");
    EXPECT_EQ(cat[1].name, "manual-fake-local-sender");
    EXPECT_NE(cat[1].mail_from, cat[0].mail_from);
    EXPECT_NE(cat[1].mail_from.find("@example.test>"), std::string::npos);
}

TEST(Catalogue, Ipv4WithServerName) {
    auto ctx = context("192.0.2.25", "mx.example.test");
    check_catalogue(ctx);
    auto cat = build_catalogue(ctx);
    auto find = [&](std::string_view name) -> const Probe* {
        for (const auto& p : cat) {
            if (p.name == name) {
                return &p;
            }
        }
        return nullptr;
    };
    ASSERT_TRUE(find("percent-hack"));
    EXPECT_EQ(find("percent-hack")->rcpt_to, "<relay-test%outside.example@example.test>");
    EXPECT_EQ(find("bang-path")->rcpt_to, "<outside.example!relay-test>");
    EXPECT_EQ(find("quoted-at")->rcpt_to, "<\"relay-test@outside.example\"@example.test>");
    EXPECT_EQ(find("source-route")->rcpt_to, "<@example.test:relay-test@outside.example>");
    EXPECT_EQ(find("source-route-two-hops")->rcpt_to,
              "<@example.test,@hop.outside.example:relay-test@outside.example>");
    EXPECT_EQ(find("double-at")->rcpt_to, "<relay-test@outside.example@example.test>");
    EXPECT_EQ(find("ip-literal-decimal")->rcpt_to, "<relay-test%outside.example@[3221226009]>");
    EXPECT_EQ(find("outside-trailing-dot")->rcpt_to, "<relay-test@OUTSIDE.EXAMPLE.>");
    EXPECT_EQ(find("local-domain-as-prefix")->rcpt_to, "<relay-test@example.test.outside.example>");
    EXPECT_EQ(find("null-sender")->mail_from, "<>");
    EXPECT_EQ(find("helo-server-name")->helo, "mx.example.test");
    EXPECT_EQ(find("helo-ip-literal")->helo, "[192.0.2.25]");
    EXPECT_EQ(find("percent-hack")->helo, "[192.0.2.200]");
    ASSERT_TRUE(find("percent-hack-server-name"));
}

TEST(Catalogue, Ipv6WithoutServerName) {
    auto ctx = context("2001:db8::25", "");
    check_catalogue(ctx);
    for (const auto& p : build_catalogue(ctx)) {
        EXPECT_EQ(p.name.find("server-name"), std::string::npos) << p.name;
    }
}

// ---- verdicts, commands, outputs ----

TEST(Verdict, Classification) {
    EXPECT_EQ(classify_rcpt(250), Verdict::fail);
    EXPECT_EQ(classify_rcpt(251), Verdict::fail);
    EXPECT_EQ(classify_rcpt(450), Verdict::temp);
    EXPECT_EQ(classify_rcpt(421), Verdict::temp);
    EXPECT_EQ(classify_rcpt(550), Verdict::pass);
    EXPECT_EQ(classify_rcpt(554), Verdict::pass);
    EXPECT_EQ(classify_rcpt(354), Verdict::error);
    EXPECT_EQ(verdict_name(Verdict::fail), "FAIL");
}

TEST(Client, CommandSetHasNoData) {
    for (int v = static_cast<int>(Verb::ehlo); v <= static_cast<int>(Verb::quit); ++v) {
        std::string line = command_line(static_cast<Verb>(v), "x");
        EXPECT_EQ(line.find("DATA"), std::string::npos) << line;
        EXPECT_EQ(line.find("BDAT"), std::string::npos) << line;
    }
    EXPECT_EQ(command_line(Verb::mail_from, "<>"), "MAIL FROM:<>");
    EXPECT_EQ(command_line(Verb::rcpt_to, "<a@b>"), "RCPT TO:<a@b>");
    EXPECT_EQ(command_line(Verb::rset, ""), "RSET");
}

TEST(Client, RefusesLineBreaksInArguments) {
    SmtpClient c(Millis{100});
    const std::string_view bads[] = {"<a@b>\r\nDATA", "<a@b>\nDATA", {"<a\0b>", 5}};
    for (std::string_view bad : bads) {
        Exchange ex = c.command(Verb::rcpt_to, bad);
        EXPECT_EQ(ex.status, Exchange::Status::failed);
        EXPECT_NE(ex.error.find("CR, LF or NUL"), std::string::npos);
    }
}

RunReport sample_report() {
    RunReport r;
    r.target = "127.0.0.1:2525";
    r.server_ip = "127.0.0.1";
    r.greeting = "220 mx.example.test ESMTP";
    r.local_domain = "example.test";
    r.local_sender = "postmaster@example.test";
    r.outside = "relay-test@outside.example";
    r.helo = "[127.0.0.1]";
    auto cat = build_catalogue(context("127.0.0.1", "mx.example.test"));
    for (std::size_t i = 0; i < 4; ++i) {
        ProbeResult p;
        p.probe = cat[i];
        p.stage = "rcpt";
        p.verdict = static_cast<Verdict>(i);
        p.mail_reply = "250 2.1.0 Ok";
        p.rcpt_reply = i == 0 ? "554 5.7.1 denied \"quoted\"" : "250 2.1.5 Ok";
        r.results.push_back(p);
    }
    return r;
}

TEST(Output, ExitCodes) {
    RunReport r = sample_report();
    EXPECT_EQ(exit_code(r), 1);
    r.results[1].verdict = Verdict::pass;
    EXPECT_EQ(exit_code(r), 0);
    r.start_error = "cannot connect";
    EXPECT_EQ(exit_code(r), 2);
}

TEST(Output, TableAndJson) {
    RunReport r = sample_report();
    std::string t = format_table(r);
    EXPECT_NE(t.find("manual-valid-local-sender"), std::string::npos) << t;
    EXPECT_NE(t.find("4 probes: 1 FAIL, 1 PASS, 1 TEMP, 1 ERROR"), std::string::npos) << t;
    EXPECT_NE(t.find("OPEN RELAY"), std::string::npos);
    std::string j = format_json(r);
    EXPECT_NE(j.find("\"open_relay\":true"), std::string::npos) << j;
    EXPECT_NE(j.find("\"summary\":{\"total\":4,\"pass\":1,\"fail\":1,\"temp\":1,\"error\":1}"),
              std::string::npos)
        << j;
    EXPECT_NE(j.find("\"rcpt_reply\":\"554 5.7.1 denied \\\"quoted\\\"\""), std::string::npos);
    EXPECT_NE(j.find("\"starttls_used\":false"), std::string::npos);
    r.start_error = "cannot connect to 127.0.0.1:2525: Connection refused";
    j = format_json(r);
    EXPECT_NE(j.find("\"error\":\"cannot connect"), std::string::npos) << j;
}

}  // namespace
}  // namespace sluice::ctl::relay
