#include "common/net.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

using namespace sluice;

TEST(Net, ParsesV4AndV6) {
    auto a = parse_ip("192.0.2.1");
    ASSERT_TRUE(a);
    EXPECT_TRUE(a->v4);
    EXPECT_EQ(format_ip(*a), "192.0.2.1");
    auto b = parse_ip("2001:db8::1");
    ASSERT_TRUE(b);
    EXPECT_FALSE(b->v4);
    EXPECT_EQ(format_ip(*b), "2001:db8::1");
    EXPECT_FALSE(parse_ip("192.0.2"));
    EXPECT_FALSE(parse_ip("example.test"));
}

TEST(Net, MappedV6IsTheV4Address) {
    EXPECT_EQ(*parse_ip("::ffff:192.0.2.1"), *parse_ip("192.0.2.1"));
}

TEST(Net, CidrContains) {
    std::string e;
    auto c = parse_cidr("10.1.0.0/16", e);
    ASSERT_TRUE(c) << e;
    EXPECT_TRUE(c->contains(*parse_ip("10.1.255.3")));
    EXPECT_FALSE(c->contains(*parse_ip("10.2.0.1")));
    EXPECT_FALSE(c->contains(*parse_ip("2001:db8::1")));
    EXPECT_EQ(format_cidr(*c), "10.1.0.0/16");
    EXPECT_EQ(format_ip(c->last()), "10.1.255.255");
}

TEST(Net, CidrRejectsHostBitsAndBadPrefix) {
    std::string e;
    EXPECT_FALSE(parse_cidr("10.1.0.1/16", e));
    EXPECT_NE(e.find("host bits"), std::string::npos);
    EXPECT_FALSE(parse_cidr("10.0.0.0/33", e));
    EXPECT_FALSE(parse_cidr("2001:db8::/129", e));
    EXPECT_TRUE(parse_cidr("::/0", e));
}

TEST(Net, SockAddr) {
    std::string e;
    auto a = parse_sockaddr("127.0.0.1:2525", e);
    ASSERT_TRUE(a) << e;
    EXPECT_EQ(a->port, 2525);
    EXPECT_EQ(format_sockaddr(*a), "127.0.0.1:2525");
    auto b = parse_sockaddr("[::1]:25", e);
    ASSERT_TRUE(b) << e;
    EXPECT_EQ(format_sockaddr(*b), "[::1]:25");
    EXPECT_FALSE(parse_sockaddr("::1:25", e));
    EXPECT_FALSE(parse_sockaddr("127.0.0.1:70000", e));
    EXPECT_FALSE(parse_sockaddr("localhost:25", e));
}

// RFC 5952: the hex form for every IPv6 address that is not IPv4-mapped. glibc's inet_ntop
// writes ::/96 as ::a.b.c.d, which made the canonical form of the address literal
// [IPv6:::fff:f11] longer than the text sent (found by tests/fuzz/fuzz_parse_path.cpp).
TEST(Net, FormatsIpv6InRfc5952Form) {
    EXPECT_EQ(format_ip(*parse_ip("::fff:f11")), "::fff:f11");
    EXPECT_EQ(format_ip(*parse_ip("::15.255.15.17")), "::fff:f11");
    EXPECT_EQ(format_ip(*parse_ip("::ffff:0:c000:201")), "::ffff:0:c000:201");
    EXPECT_EQ(format_ip(*parse_ip("::")), "::");
    EXPECT_EQ(format_ip(*parse_ip("::1")), "::1");
    EXPECT_EQ(format_ip(*parse_ip("1::")), "1::");
    EXPECT_EQ(format_ip(*parse_ip("2001:db8:0:1:1:1:1:1")), "2001:db8:0:1:1:1:1:1");
    EXPECT_EQ(format_ip(*parse_ip("2001:0:0:1:0:0:0:1")), "2001:0:0:1::1");
    EXPECT_EQ(format_ip(*parse_ip("2001:db8:0:0:1:0:0:1")), "2001:db8::1:0:0:1");
    EXPECT_EQ(format_ip(*parse_ip("2001:DB8::ABCD")), "2001:db8::abcd");
}

TEST(Net, Ipv6FormMatchesInetNtopOutsideTheV4CompatibleRange) {
    // Every pattern of zero and non-zero groups (2^8), with the first group non-zero so
    // that glibc's ::a.b.c.d special cases do not apply.
    for (unsigned mask = 0; mask < 256; ++mask) {
        IpAddr ip;
        for (unsigned i = 0; i < 8; ++i) {
            bool nonzero = i == 0 || (mask >> i & 1) != 0;
            ip.bytes[2 * i] = nonzero ? static_cast<std::uint8_t>(i) : 0;
            ip.bytes[2 * i + 1] = nonzero ? static_cast<std::uint8_t>(0x10 + mask % 7) : 0;
        }
        char buf[INET6_ADDRSTRLEN];
        ASSERT_NE(inet_ntop(AF_INET6, ip.bytes.data(), buf, sizeof buf), nullptr);
        EXPECT_EQ(format_ip(ip), buf) << mask;
        auto back = parse_ip(format_ip(ip));
        ASSERT_TRUE(back);
        EXPECT_EQ(*back, ip);
    }
}
