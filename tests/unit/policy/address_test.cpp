// policy/address.hpp: RFC 5321 path grammar, canonical form, limits, SMTPUTF8, and every
// routing trick an open-relay probe sends.

#include "policy/address.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

using namespace sluice;
using namespace sluice::policy;

namespace {

ParsedPath rcpt(std::string_view s, bool utf8 = false) {
    return parse_path(s, false, utf8);
}
ParsedPath mail(std::string_view s, bool utf8 = false) {
    return parse_path(s, true, utf8);
}

// A syntactically valid domain of exactly `n` octets: labels of 'x' (at most 49 octets),
// separated by dots, never ending in a dot.
std::string domain_of(std::size_t n) {
    std::string d(n, 'x');
    for (std::size_t i = 49; i + 1 < n; i += 50) {
        d[i] = '.';
    }
    return d;
}

std::string path(std::string_view local, std::string_view domain) {
    return "<" + std::string(local) + "@" + std::string(domain) + ">";
}

}  // namespace

// ----- valid paths and their canonical form -----

TEST(Address, PlainMailbox) {
    auto r = rcpt("<user@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "user");
    EXPECT_EQ(r.address.domain, "example.test");
    EXPECT_EQ(r.address.str(), "user@example.test");
    EXPECT_EQ(r.consumed, 19u);
    EXPECT_FALSE(r.address.null || r.address.postmaster_only || r.address.had_source_route ||
                 r.address.quoted_local || r.address.ip_literal || r.address.utf8);
}

TEST(Address, StopsAtTheClosingBracketLeavingParameters) {
    std::string_view line = "<a@b.test> SIZE=100 BODY=8BITMIME";
    auto r = mail(line);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.consumed, 10u);
    EXPECT_EQ(line.substr(r.consumed), " SIZE=100 BODY=8BITMIME");
    // 8-bit bytes in the parameters are not the parser's business.
    EXPECT_TRUE(mail("<a@b.test> X=\xff").ok());
    // A second '>' belongs to what follows.
    EXPECT_EQ(mail("<a@b.test>>").consumed, 10u);
}

TEST(Address, NullReversePathOnlyForMail) {
    auto r = mail("<> SIZE=1");
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r.address.null);
    EXPECT_EQ(r.consumed, 2u);
    EXPECT_EQ(r.address.str(), "");
    EXPECT_EQ(rcpt("<>").error, PathError::syntax);
}

TEST(Address, PostmasterWithoutDomainOnlyForRcpt) {
    for (auto s : {"<Postmaster>", "<postmaster>", "<POSTMASTER>"}) {
        auto r = rcpt(s);
        ASSERT_TRUE(r.ok()) << s;
        EXPECT_TRUE(r.address.postmaster_only);
        EXPECT_EQ(r.address.str(), "Postmaster");
        EXPECT_EQ(r.consumed, 12u);
    }
    EXPECT_EQ(mail("<Postmaster>").error, PathError::syntax);
    EXPECT_EQ(rcpt("<@a.test:Postmaster>").error, PathError::syntax);
    EXPECT_EQ(rcpt("<Postmasterx>").error, PathError::syntax);
    auto r = rcpt("<Postmaster@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(r.address.postmaster_only);
    EXPECT_EQ(r.address.str(), "Postmaster@example.test");
}

TEST(Address, DotStringWithEveryAtextCharacter) {
    auto r = rcpt("<first.last+tag@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "first.last+tag");
    r = rcpt("<a!#$%&'*+-/=?^_`{|}~z@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "a!#$%&'*+-/=?^_`{|}~z");
}

TEST(Address, LocalPartCaseIsKeptDomainIsLowered) {
    auto r = rcpt("<John.Doe@Example.TEST.>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "John.Doe");
    EXPECT_EQ(r.address.domain, "example.test");
}

TEST(Address, QuotedLocalPartIsUnquotedWhenItCanBe) {
    auto r = rcpt("<\"john\"@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "john");
    EXPECT_FALSE(r.address.quoted_local);
    r = rcpt("<\"\\j\\o\\h\\n\"@example.test>");  // needless quoted-pairs
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "john");
}

TEST(Address, QuotedLocalPartKeptQuotedWhenNeeded) {
    auto r = rcpt("<\"john doe\"@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r.address.quoted_local);
    EXPECT_EQ(r.address.local, "\"john doe\"");
    r = rcpt("<\"a\\\"b\\\\c\"@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "\"a\\\"b\\\\c\"");
    r = rcpt("<\"a..b\"@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "\"a..b\"");
    r = rcpt("<\"\"@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "\"\"");
    EXPECT_TRUE(r.address.quoted_local);
}

TEST(Address, ValidDomainShapes) {
    for (auto s : {"<u@localhost>", "<u@1example.test>", "<u@123.example.test>", "<u@a-b.c-d.test>",
                   "<u@0x1.test>", "<u@xn--bcher-kva.test>"}) {
        EXPECT_TRUE(rcpt(s).ok()) << s;
    }
}

// ----- invalid grammar -----

TEST(Address, RejectsBadGrammar) {
    const char* bad[] = {
        "",                      // nothing
        "user@example.test",     // no brackets
        "<user@example.test",    // no closing bracket
        "< user@example.test>",  // space
        "<user @example.test>",
        "<user@ example.test>",
        "<.user@example.test>",  // dots
        "<user.@example.test>",
        "<us..er@example.test>",
        "<@example.test>",  // empty local part
        "<user>",           // no domain
        "<user@>",
        "<user@.example.test>",
        "<user@example..test>",
        "<user@example.test..>",
        "<user@-example.test>",  // hyphens
        "<user@example-.test>",
        "<user@exa_mple.test>",     // underscore
        "<us(er)@example.test>",    // RFC 5322 comments are not SMTP
        "<us\\er@example.test>",    // backslash outside quotes
        "<\"user@example.test>",    // unterminated quote
        "<\"us\"er@example.test>",  // quote in the middle
        "<a@[1.2.3]>",              // literals
        "<a@[1.2.3.4.5]>",
        "<a@[256.1.1.1]>",
        "<a@[1.2.3.1234]>",
        "<a@[]>",
        "<a@[1.2.3.4>",
        "<a@[IPv6:1.2.3.4]>",
        "<a@[IPv6:zz::1]>",
        "<a@[IPv6:1::2::3]>",
        "<a@[IPv6:]>",
        "<a@[tag:general]>",  // General-address-literal: no registered tag
        "<a@[ 1.2.3.4]>",
        "<a@example.test@other.test>",  // two '@'
        "<@a.test,b.test:u@c.test>",    // route element without '@'
        "<@a.test u@c.test>",
        "<@a.test:>",
        "<@[192.0.2.1]:u@c.test>",  // At-domain is a Domain, not a literal
        "<@:u@c.test>",
    };
    for (auto s : bad) {
        auto r = rcpt(s);
        EXPECT_EQ(r.error, PathError::syntax) << '"' << s << '"';
        EXPECT_EQ(r.consumed, 0u) << s;
        EXPECT_TRUE(r.address.local.empty() && r.address.domain.empty()) << s;
    }
}

TEST(Address, RejectsNulAndControls) {
    const std::string cases[] = {
        std::string("<us\0er@example.test>", 20),
        "<us\ter@x.test>",
        "<us\rer@x.test>",
        "<us\ner@x.test>",
        "<us\x7f"
        "er@x.test>",
        std::string("<\"us\0er\"@x.test>", 16),
        "<\"us\ter\"@x.test>",
        "<\"us\\\x01"
        "er\"@x.test>",
        std::string("<u@ex\0.test>", 12),
        "<u@ex\x01.test>",
    };
    for (const std::string& s : cases) {
        for (bool utf8 : {false, true}) {
            EXPECT_EQ(rcpt(s, utf8).error, PathError::syntax) << "utf8=" << utf8;
        }
    }
}

// ----- limits of RFC 5321 §4.5.3.1 -----

TEST(Address, LocalPartLimit) {
    EXPECT_TRUE(rcpt(path(std::string(63, 'a'), "example.test")).ok());
    EXPECT_TRUE(rcpt(path(std::string(64, 'a'), "example.test")).ok());
    EXPECT_EQ(rcpt(path(std::string(65, 'a'), "example.test")).error, PathError::local_too_long);
    // The limit is on the octets sent, quotes included.
    EXPECT_TRUE(rcpt(path("\"" + std::string(62, 'a') + " \"", "x.test")).ok() == false);
    EXPECT_TRUE(rcpt(path("\"" + std::string(61, 'a') + " \"", "x.test")).ok());
}

TEST(Address, DomainLimit) {
    // A path holds at most 256 - "<" - "a@" - ">" = 252 octets of domain.
    EXPECT_TRUE(rcpt(path("a", domain_of(252))).ok());
    EXPECT_EQ(rcpt(path("a", domain_of(253))).error, PathError::path_too_long);
    EXPECT_EQ(rcpt(path("a", domain_of(255))).error, PathError::path_too_long);
    EXPECT_EQ(rcpt(path("a", domain_of(256))).error, PathError::domain_too_long);
}

TEST(Address, PathLimit) {
    // 1 + 64 + 1 + 189 + 1 = 256
    auto at = path(std::string(64, 'a'), domain_of(189));
    ASSERT_EQ(at.size(), 256u);
    auto r = rcpt(at);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.consumed, 256u);
    EXPECT_TRUE(rcpt(path(std::string(64, 'a'), domain_of(188))).ok());
    EXPECT_EQ(rcpt(path(std::string(64, 'a'), domain_of(190))).error, PathError::path_too_long);
    // A source route counts: it is part of the path as sent.
    std::string hop = "@" + domain_of(60);
    std::string routed =
        "<" + hop + "," + hop + "," + hop + ":" + std::string(64, 'a') + "@" + domain_of(60) + ">";
    EXPECT_TRUE(rcpt(path(std::string(64, 'a'), domain_of(60))).ok());
    EXPECT_EQ(rcpt(routed).error, PathError::path_too_long);
}

TEST(Address, LabelLimit) {
    EXPECT_TRUE(rcpt(path("a", std::string(63, 'x') + ".test")).ok());
    EXPECT_EQ(rcpt(path("a", std::string(64, 'x') + ".test")).error, PathError::syntax);
}

// ----- open-relay tricks: accepted but flagged, or refused -----

TEST(AddressTricks, PercentHackIsKeptVisible) {
    auto r = rcpt("<user%elsewhere.test@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "user%elsewhere.test");
    EXPECT_EQ(r.address.domain, "example.test");
}

TEST(AddressTricks, BangPathIsKeptVisible) {
    auto r = rcpt("<elsewhere.test!user@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "elsewhere.test!user");
}

TEST(AddressTricks, QuotedAtStaysQuoted) {
    auto r = rcpt("<\"user@elsewhere.test\"@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r.address.quoted_local);
    EXPECT_EQ(r.address.local, "\"user@elsewhere.test\"");
    EXPECT_EQ(r.address.domain, "example.test");
    // Quoting '%' buys nothing: canonical form is unquoted, the '%' is still there.
    r = rcpt("<\"user%elsewhere.test\"@example.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "user%elsewhere.test");
}

TEST(AddressTricks, DoubleAtIsASyntaxError) {
    EXPECT_EQ(rcpt("<user@a.test@b.test>").error, PathError::syntax);
    EXPECT_EQ(rcpt("<user@elsewhere.test@example.test>").error, PathError::syntax);
    EXPECT_EQ(rcpt("<user@@example.test>").error, PathError::syntax);
}

TEST(AddressTricks, SourceRouteIsDroppedAndFlagged) {
    auto r = rcpt("<@a.test,@b.test:user@c.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r.address.had_source_route);
    EXPECT_EQ(r.address.str(), "user@c.test");
    EXPECT_EQ(r.consumed, 29u);
    r = mail("<@relay.test:user@c.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r.address.had_source_route);
    EXPECT_EQ(r.address.str(), "user@c.test");
}

TEST(AddressTricks, IpLiteralsAreFlaggedAndNormalised) {
    struct Case {
        const char* in;
        const char* domain;
    } cases[] = {
        {"<u@[192.0.2.1]>", "[192.0.2.1]"},
        {"<u@[192.000.002.001]>", "[192.0.2.1]"},
        {"<u@[IPv6:2001:DB8:0:0::1]>", "[IPv6:2001:db8::1]"},
        {"<u@[ipv6:2001:db8:0:0:0:0:0:1]>", "[IPv6:2001:db8::1]"},
        {"<u@[IPv6:::ffff:192.0.2.1]>", "[192.0.2.1]"},
    };
    for (const auto& c : cases) {
        auto r = rcpt(c.in);
        ASSERT_TRUE(r.ok()) << c.in;
        EXPECT_TRUE(r.address.ip_literal) << c.in;
        EXPECT_EQ(r.address.domain, c.domain) << c.in;
    }
}

// Found by tests/fuzz/fuzz_parse_path.cpp: an IPv6 literal in ::/96 was canonicalised by
// inet_ntop to the dotted form (::15.255.15.17), longer than the text sent; the canonical
// form is RFC 5952's hex form, never longer, and a fixed point.
TEST(AddressTricks, V4CompatibleIpv6LiteralsKeepTheHexForm) {
    for (auto [in, domain] : {std::pair{"<uzser@[IPv6:::fff:f11]>", "[IPv6:::fff:f11]"},
                              std::pair{"<u@[IPv6:::15.255.15.17]>", "[IPv6:::fff:f11]"},
                              std::pair{"<u@[IPv6:0::0:0a00:1]>", "[IPv6:::a00:1]"}}) {
        auto r = rcpt(in);
        ASSERT_TRUE(r.ok()) << in;
        EXPECT_EQ(r.address.domain, domain) << in;
        EXPECT_LE(r.address.str().size() + 2, r.consumed) << in;
        auto again = rcpt("<" + r.address.str() + ">");
        ASSERT_TRUE(again.ok()) << in;
        EXPECT_EQ(again.address.domain, domain) << in;
    }
}

// Found by tests/fuzz/fuzz_parse_path.cpp: "::" for one zero group is valid input, but
// RFC 5952 §4.2.2 writes that group as "0"; the canonical literal is one octet longer and
// still a fixed point.
TEST(AddressTricks, Ipv6LiteralWithOneZeroGroupIsCanonical) {
    auto r = rcpt("<user@[IPv6:f:2::fff:f:19:2.0.2.1]>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.domain, "[IPv6:f:2:0:fff:f:19:200:201]");
    auto again = rcpt("<" + r.address.str() + ">");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again.address.domain, r.address.domain);
}

TEST(AddressTricks, NumericDomainsAreRefused) {
    // IPv4 addresses spelled as names: decimal, hex, octal, dotted, partial.
    for (auto d : {"3221225985", "0xC0000201", "0xc0000201", "030000001001", "192.0.2.1",
                   "0300.0000.0002.0001", "0xc0.0xa8.0x1.0x1", "192.168.257", "0x7f.1",
                   "example.123", "0x"}) {
        auto r = rcpt(path("u", d));
        EXPECT_EQ(r.error, PathError::syntax) << d;
    }
}

TEST(AddressTricks, CaseAndTrailingDotCanonicalise) {
    auto r = rcpt("<u@ExAmPlE.TeSt.>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.domain, "example.test");
    r = rcpt("<u@example.test.evil.test>");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.domain, "example.test.evil.test");
}

// ----- SMTPUTF8 (RFC 6531 §3.3) -----

TEST(AddressUtf8, NeedsSmtputf8) {
    for (auto s : {"<j\xc3\xb6rg@example.test>",
                   "<u@b\xc3\xbc"
                   "cher.test>",
                   "<\"j\xc3\xb6rg x\"@example.test>"}) {
        EXPECT_EQ(rcpt(s).error, PathError::needs_smtputf8) << s;
        auto r = rcpt(s, true);
        ASSERT_TRUE(r.ok()) << s;
        EXPECT_TRUE(r.address.utf8) << s;
    }
}

TEST(AddressUtf8, ULabelsAreLowerCased) {
    auto r = rcpt(
        "<J\xc3\x96RG@B\xc3\x9c"
        "CHER.Test>",
        true);  // JÖRG@BÜCHER.Test
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.local, "J\xc3\x96RG");  // local part keeps its case
    EXPECT_EQ(r.address.domain,
              "b\xc3\xbc"
              "cher.test");                               // bücher.test
    r = rcpt("<u@\xce\x91\xce\x92\xce\x93.test>", true);  // ΑΒΓ
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.domain, "\xce\xb1\xce\xb2\xce\xb3.test");  // αβγ
    r = rcpt("<u@\xd0\x9f\xd0\xa0\xd0\x98.test>", true);           // ПРИ
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.domain, "\xd0\xbf\xd1\x80\xd0\xb8.test");  // при
    r = rcpt("<u@\xd0\x81\xc5\xbd\xc5\xb8.test>", true);           // ЁŽŸ -> ёžÿ
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.address.domain, "\xd1\x91\xc5\xbe\xc3\xbf.test");
}

TEST(AddressUtf8, MalformedUtf8IsSyntaxEvenWithSmtputf8) {
    for (std::string s :
         {"<u\xff@x.test>", "<u\xc0\xaf@x.test>", "<u\xe0\x80\xaf@x.test>",
          "<u\xed\xa0\x80@x.test>", "<u\xf4\x90\x80\x80@x.test>", "<u\xc3@x.test>",
          "<u\xc2\x85@x.test>" /* C1 NEL */,
          "<\"u\\\xc3\xb6\"@x.test>" /* quoted-pair is ASCII only */, "<u@[192.0.2.\xc3\xb6]>"}) {
        EXPECT_EQ(rcpt(s, true).error, PathError::syntax) << s;
    }
}

TEST(AddressUtf8, LimitsAreInOctets) {
    std::string local;
    for (int i = 0; i < 32; ++i) {
        local += "\xc3\xb6";  // 64 octets
    }
    EXPECT_TRUE(rcpt(path(local, "x.test"), true).ok());
    EXPECT_EQ(rcpt(path(local + "a", "x.test"), true).error, PathError::local_too_long);
}

// ----- helpers -----

TEST(Address, ErrorNamesAndReplies) {
    EXPECT_EQ(path_error_name(PathError::needs_smtputf8), "needs_smtputf8");
    EXPECT_EQ(path_error_reply(PathError::syntax, true), Reply::bad_sender);
    EXPECT_EQ(path_error_reply(PathError::syntax, false), Reply::bad_recipient);
    EXPECT_EQ(path_error_reply(PathError::path_too_long, true), Reply::sender_too_long);
    EXPECT_EQ(path_error_reply(PathError::local_too_long, false), Reply::recipient_too_long);
    EXPECT_EQ(path_error_reply(PathError::needs_smtputf8, false), Reply::needs_smtputf8);
}

// ----- invariants over generated input -----

namespace {

void check_invariants(const std::string& s, bool reverse, bool utf8) {
    auto r = parse_path(s, reverse, utf8);
    if (!r.ok()) {
        ASSERT_EQ(r.consumed, 0u) << s;
        ASSERT_TRUE(r.address.local.empty() && r.address.domain.empty()) << s;
        return;
    }
    ASSERT_GE(r.consumed, 2u) << s;
    ASSERT_LE(r.consumed, std::min<std::size_t>(s.size(), limits::path)) << s;
    ASSERT_EQ(s[0], '<') << s;
    ASSERT_EQ(s[r.consumed - 1], '>') << s;
    const Address& a = r.address;
    if (a.null || a.postmaster_only) {
        return;
    }
    ASSERT_FALSE(a.domain.empty()) << s;
    ASSERT_EQ(a.domain.back() == '.', false) << s;
    if (!utf8) {
        for (char c : a.str()) {
            ASSERT_LT(static_cast<unsigned char>(c), 0x80) << s;
        }
    }
    for (char c : a.str()) {
        auto u = static_cast<unsigned char>(c);
        ASSERT_TRUE(u >= 0x20 && u != 0x7f) << s;
    }
    // The canonical form parses to itself and is never longer than what was sent.
    std::string canon = "<" + a.str() + ">";
    ASSERT_LE(canon.size(), r.consumed) << s;
    auto again = parse_path(canon, reverse, utf8);
    ASSERT_TRUE(again.ok()) << s << " -> " << canon;
    EXPECT_EQ(again.address.str(), a.str()) << s;
    EXPECT_EQ(again.address.quoted_local, a.quoted_local) << s;
    EXPECT_EQ(again.address.ip_literal, a.ip_literal) << s;
}

}  // namespace

TEST(AddressFuzz, GeneratedInputsKeepTheInvariants) {
    static const std::string pieces[] = {
        "<",         ">",
        "@",         ".",
        ",",         ":",
        "\"",        "\\",
        " ",         "%",
        "!",         "a",
        "Z",         "0",
        "9",         "-",
        "x.test",    "Example.TEST",
        "[",         "]",
        "IPv6:",     "::1",
        "192.0.2.1", "0x",
        "\xc3\xb6",  "\xc3\x96",
        "\xff",      std::string(1, '\0'),
        "\t",        "Postmaster",
        "user",      "@a.test",
    };
    std::mt19937 rng(20261122);
    std::uniform_int_distribution<std::size_t> pick(0, std::size(pieces) - 1);
    std::uniform_int_distribution<int> len(1, 14);
    for (int i = 0; i < 30000; ++i) {
        std::string s = "<";
        int n = len(rng);
        for (int k = 0; k < n; ++k) {
            s += pieces[pick(rng)];
        }
        if (i % 2 == 0) {
            s += ">";
        }
        check_invariants(s, i % 3 == 0, i % 5 == 0);
        if (::testing::Test::HasFatalFailure()) {
            return;
        }
    }
}

TEST(AddressFuzz, MutationsOfValidPathsKeepTheInvariants) {
    static const char* seeds[] = {
        "<user@example.test>",
        "<\"john doe\"@Example.TEST.>",
        "<@a.test,@b.test:u@c.test>",
        "<u@[IPv6:2001:db8::1]>",
        "<u@[192.0.2.1]>",
        "<j\xc3\xb6rg@b\xc3\xbc"
        "cher.test>",
    };
    std::mt19937 rng(7);
    for (const char* seed : seeds) {
        for (int i = 0; i < 4000; ++i) {
            std::string s = seed;
            std::uniform_int_distribution<std::size_t> at(0, s.size() - 1);
            std::size_t p = at(rng);
            switch (rng() % 3) {
                case 0:
                    s[p] = static_cast<char>(rng() % 256);
                    break;
                case 1:
                    s.erase(p, 1);
                    break;
                default:
                    s.insert(p, 1, static_cast<char>(rng() % 128));
                    break;
            }
            check_invariants(s, rng() % 2 == 0, rng() % 2 == 0);
            if (::testing::Test::HasFatalFailure()) {
                return;
            }
        }
    }
}
