#include "common/net.hpp"

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
