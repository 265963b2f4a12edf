// daemon/dns/message: the wire parser and the interpretation of one answer.
#include "daemon/dns/message.hpp"

#include <gtest/gtest.h>

#include "tests/unit/daemon/dns/wire.hpp"

namespace sluice::dns {
namespace {

using test::Wire;

TEST(DnsMessage, MxAnswerWithCompression) {
    auto w = Wire::header(0, 1, 2, 0).question("example.com", 15);
    w.rr_mx(12, 300, 10, "mx1.example.com").rr_mx(12, 200, 20, "MX2.Example.com.");
    std::string e;
    auto r = parse_response(w.b, e);
    ASSERT_TRUE(r) << e;
    ASSERT_EQ(r->answers.size(), 2u);
    EXPECT_EQ(r->answers[0].name, "example.com");
    EXPECT_EQ(r->answers[0].target, "mx1.example.com");
    EXPECT_EQ(r->answers[1].target, "mx2.example.com");
    auto res = interpret(*r, "example.com", Type::mx);
    EXPECT_EQ(res.status, Status::ok);
    ASSERT_EQ(res.records.size(), 2u);
    EXPECT_EQ(*res.ttl, 200u);  // the lowest TTL of the set
}

TEST(DnsMessage, NullMxTargetIsTheRoot) {
    auto w = Wire::header(0, 1, 1, 0).question("nomail.test", 15);
    w.rr_mx(12, 60, 0, "");
    std::string e;
    auto r = parse_response(w.b, e);
    ASSERT_TRUE(r) << e;
    ASSERT_EQ(r->answers.size(), 1u);
    EXPECT_EQ(r->answers[0].target, "");
}

TEST(DnsMessage, NegativeTtlIsSoaMinimumCappedBySoaTtl) {
    // RFC 2308 §5: min(SOA TTL, SOA MINIMUM).
    auto w = Wire::header(3, 1, 0, 1).question("gone.test", 15);
    w.rr_soa("test", 600, 120);
    std::string e;
    auto r = parse_response(w.b, e);
    ASSERT_TRUE(r) << e;
    auto res = interpret(*r, "gone.test", Type::mx);
    EXPECT_EQ(res.status, Status::nxdomain);
    EXPECT_EQ(*res.ttl, 120u);
    auto w2 = Wire::header(0, 1, 0, 1).question("nomx.test", 15);
    w2.rr_soa("test", 30, 120);
    auto r2 = parse_response(w2.b, e);
    ASSERT_TRUE(r2) << e;
    auto res2 = interpret(*r2, "nomx.test", Type::mx);
    EXPECT_EQ(res2.status, Status::nodata);
    EXPECT_EQ(*res2.ttl, 30u);
}

TEST(DnsMessage, NegativeWithoutSoaIsNotCacheable) {
    auto w = Wire::header(3, 1, 0, 0).question("gone.test", 15);
    std::string e;
    auto r = parse_response(w.b, e);
    ASSERT_TRUE(r);
    EXPECT_FALSE(interpret(*r, "gone.test", Type::mx).ttl.has_value());
}

TEST(DnsMessage, CnameChainFollowedInsideTheAnswer) {
    auto w = Wire::header(0, 1, 3, 0).question("mx.a.test", 1);
    w.rr_cname("mx.a.test", 100, "b.test").rr_cname("b.test", 50, "c.test");
    w.rr_a("c.test", 300, 127, 0, 0, 9);
    std::string e;
    auto r = parse_response(w.b, e);
    ASSERT_TRUE(r) << e;
    auto res = interpret(*r, "mx.a.test", Type::a);
    EXPECT_EQ(res.status, Status::ok);
    EXPECT_EQ(res.canonical, "c.test");
    EXPECT_EQ(*res.ttl, 50u);
    ASSERT_EQ(res.records.size(), 1u);
    EXPECT_EQ(format_ip(res.records[0].addr), "127.0.0.9");
}

TEST(DnsMessage, CnameWithoutTargetDataAsksAgain) {
    auto w = Wire::header(0, 1, 1, 0).question("alias.test", 1);
    w.rr_cname("alias.test", 100, "elsewhere.test");
    std::string e;
    auto r = parse_response(w.b, e);
    auto res = interpret(*r, "alias.test", Type::a);
    EXPECT_EQ(res.status, Status::cname);
    EXPECT_EQ(res.canonical, "elsewhere.test");
}

TEST(DnsMessage, CnameLoopInsideTheAnswerIsBounded) {
    auto w = Wire::header(0, 1, 2, 0).question("a.test", 1);
    w.rr_cname("a.test", 100, "b.test").rr_cname("b.test", 100, "a.test");
    std::string e;
    auto r = parse_response(w.b, e);
    ASSERT_TRUE(r);
    EXPECT_EQ(interpret(*r, "a.test", Type::a).status, Status::malformed);
}

TEST(DnsMessage, ServfailIsTemporary) {
    auto w = Wire::header(2, 1, 0, 0).question("x.test", 15);
    std::string e;
    auto r = parse_response(w.b, e);
    ASSERT_TRUE(r);
    auto res = interpret(*r, "x.test", Type::mx);
    EXPECT_EQ(res.status, Status::temporary);
    EXPECT_FALSE(res.ttl.has_value());
}

// Hostile input: every one is an error value, never a crash or a hang.
TEST(DnsMessage, CompressionLoopIsRefused) {
    auto w = Wire::header(0, 1, 1, 0).question("x.test", 15);
    std::size_t at = w.b.size();
    w.ptr(static_cast<unsigned>(at));  // points at itself
    w.u16(15).u16(1).u32(1).u16(0);
    std::string e;
    EXPECT_FALSE(parse_response(w.b, e));
    EXPECT_EQ(e, "answer: compression loop");
    // Forward pointer (into the record that follows).
    auto w2 = Wire::header(0, 1, 1, 0).question("x.test", 15);
    w2.ptr(static_cast<unsigned>(w2.b.size() + 2)).ptr(12);
    std::string e2;
    EXPECT_FALSE(parse_response(w2.b, e2));
}

TEST(DnsMessage, OversizedNamesAreRefused) {
    std::string label(63, 'a');
    std::string name;
    for (int i = 0; i < 5; ++i) {
        name += (name.empty() ? "" : ".") + label;  // 5 * 64 + 1 > 255
    }
    auto w = Wire::header(0, 1, 0, 0).question(name, 1);
    std::string e;
    EXPECT_FALSE(parse_response(w.b, e));
    EXPECT_EQ(e, "question: name longer than 255");
    auto w2 = Wire::header(0, 1, 0, 0);
    w2.u8(64);
    w2.b += std::string(64, 'b');
    w2.u8(0).u16(1).u16(1);
    EXPECT_FALSE(parse_response(w2.b, e));
    EXPECT_EQ(e, "question: unknown label type");  // 64 = 0x40: a reserved label type
}

TEST(DnsMessage, EveryTruncationOfAValidAnswerIsAnErrorOrAPrefix) {
    auto w = Wire::header(0, 1, 2, 1).question("example.com", 15);
    w.rr_mx(12, 300, 10, "mx1.example.com").rr_mx(12, 200, 20, "mx2.example.com");
    w.rr_soa("example.com", 60, 60);
    for (std::size_t n = 0; n < w.b.size(); ++n) {
        std::string e;
        EXPECT_FALSE(parse_response(std::string_view(w.b).substr(0, n), e)) << n;
        EXPECT_FALSE(e.empty());
    }
    std::string e;
    EXPECT_TRUE(parse_response(w.b, e)) << e;
}

TEST(DnsMessage, WrongRdataLengthsAreRefused) {
    auto w = Wire::header(0, 1, 1, 0).question("x.test", 1);
    w.name("x.test").u16(1).u16(1).u32(1).u16(5).u32(0).u8(0);
    std::string e;
    EXPECT_FALSE(parse_response(w.b, e));
    EXPECT_EQ(e, "A record of 5 bytes");
}

TEST(DnsMessage, NotAResponse) {
    Wire w;
    w.u16(1).u16(0x0100).u16(0).u16(0).u16(0).u16(0);
    std::string e;
    EXPECT_FALSE(parse_response(w.b, e));
    EXPECT_EQ(e, "not a response");
}

TEST(DnsMessage, EveryByteFlipDoesNotCrash) {
    auto w = Wire::header(0, 1, 2, 1).question("example.com", 15);
    w.rr_mx(12, 300, 10, "mx1.example.com").rr_cname("mx1.example.com", 5, "x.example.com");
    w.rr_soa("example.com", 60, 60);
    for (std::size_t i = 0; i < w.b.size(); ++i) {
        for (unsigned v : {0x00u, 0xFFu, 0xC0u, 0x3Fu, 0x40u}) {
            std::string m = w.b;
            m[i] = static_cast<char>(v);
            std::string e;
            auto r = parse_response(m, e);
            if (r) {
                interpret(*r, "example.com", Type::mx);
            } else {
                EXPECT_FALSE(e.empty());
            }
        }
    }
}

}  // namespace
}  // namespace sluice::dns
