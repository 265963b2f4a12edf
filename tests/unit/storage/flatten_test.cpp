// Flattening nested CIDR prefixes into disjoint ranges (the build step behind the one-seek
// longest-prefix match).

#include <gtest/gtest.h>

#include <cstring>

#include "storage/map_format.hpp"

using namespace sluice;
using namespace sluice::storage;

namespace {

Cidr cidr(const char* s) {
    std::string e;
    auto c = parse_cidr(s, e);
    EXPECT_TRUE(c) << s << ": " << e;
    return *c;
}

std::string text(const std::array<std::uint8_t, 16>& b) {
    IpAddr a;
    a.bytes = b;
    static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    a.v4 = std::memcmp(b.data(), mapped, 12) == 0;
    return format_ip(a);
}

}  // namespace

TEST(Flatten, NestedV4) {
    std::vector<Cidr> in = {cidr("10.1.2.0/24"), cidr("10.0.0.0/8"), cidr("10.1.2.3/32"),
                            cidr("10.1.0.0/16")};
    auto r = format::flatten(in);
    // 10.0.0.0-10.0.255.255 (/8), 10.1.0.0-10.1.1.255 (/16), 10.1.2.0-10.1.2.2 (/24),
    // 10.1.2.3 (/32), 10.1.2.4-10.1.2.255 (/24), 10.1.3.0-10.1.255.255 (/16),
    // 10.2.0.0-10.255.255.255 (/8)
    ASSERT_EQ(r.size(), 7u);
    const char* want[7][3] = {
        {"10.0.0.0", "10.0.255.255", "10.0.0.0/8"},   {"10.1.0.0", "10.1.1.255", "10.1.0.0/16"},
        {"10.1.2.0", "10.1.2.2", "10.1.2.0/24"},      {"10.1.2.3", "10.1.2.3", "10.1.2.3/32"},
        {"10.1.2.4", "10.1.2.255", "10.1.2.0/24"},    {"10.1.3.0", "10.1.255.255", "10.1.0.0/16"},
        {"10.2.0.0", "10.255.255.255", "10.0.0.0/8"},
    };
    for (std::size_t i = 0; i < r.size(); ++i) {
        EXPECT_EQ(text(r[i].start), want[i][0]) << i;
        EXPECT_EQ(text(r[i].end), want[i][1]) << i;
        EXPECT_EQ(format_cidr(in[r[i].owner]), want[i][2]) << i;
    }
}

TEST(Flatten, WholeSpaceAndFullyCoveredParents) {
    // ::/0 ends at the last address; 10.0.0.0/31 is covered entirely by its two halves.
    std::vector<Cidr> in = {cidr("::/0"), cidr("10.0.0.0/31"), cidr("10.0.0.0/32"),
                            cidr("10.0.0.1/32"), cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")};
    auto r = format::flatten(in);
    ASSERT_EQ(r.size(), 5u);
    EXPECT_EQ(text(r[0].start), "::");
    EXPECT_EQ(format_cidr(in[r[0].owner]), "::/0");
    EXPECT_EQ(format_cidr(in[r[1].owner]), "10.0.0.0/32");
    EXPECT_EQ(format_cidr(in[r[2].owner]), "10.0.0.1/32");
    EXPECT_EQ(format_cidr(in[r[3].owner]), "::/0");
    EXPECT_EQ(text(r[3].start), "10.0.0.2");
    EXPECT_EQ(text(r[3].end), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe");
    EXPECT_EQ(format_cidr(in[r[4].owner]), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
    // Disjoint and sorted.
    for (std::size_t i = 1; i < r.size(); ++i) {
        EXPECT_LT(r[i - 1].end, r[i].start);
    }
}

TEST(Flatten, Empty) {
    EXPECT_TRUE(format::flatten({}).empty());
}

TEST(Format, HeaderAndFilesRoundTrip) {
    format::Header h;
    h.map = MapId::access;
    h.keys = 3;
    h.prefixes = 2;
    h.ranges = 4;
    h.built_ns = 123456789;
    auto bytes = format::encode_header(h);
    auto back = format::decode_header(bytes);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->map, MapId::access);
    EXPECT_EQ(back->keys, 3u);
    EXPECT_EQ(back->ranges, 4u);
    bytes[0] = 'X';
    EXPECT_FALSE(format::decode_header(bytes));
    EXPECT_FALSE(format::decode_header(bytes.substr(0, 10)));

    std::vector<std::string> files = {"/a/b.txt", "", "map add x"};
    auto f = format::decode_files(format::encode_files(files));
    ASSERT_TRUE(f);
    EXPECT_EQ(*f, files);
    auto enc = format::encode_files(files);
    EXPECT_FALSE(format::decode_files(enc.substr(0, enc.size() - 1)));
}

TEST(Format, Xxh64KnownVectors) {
    EXPECT_EQ(format::hash64("", 0), 0xEF46DB3751D8E999ULL);
    EXPECT_EQ(format::hash64("abc", 3), 0x44BC2CF5AD770999ULL);
    const std::string s = "Nobody inspects the spammish repetition";
    EXPECT_EQ(format::hash64(s.data(), s.size()), 0xFBCEA83C8A378BF1ULL);
    // Streaming in uneven pieces gives the same digest as one call.
    std::string big;
    for (int i = 0; i < 1000; ++i) {
        big += std::to_string(i * 7919);
    }
    format::Hasher h;
    std::size_t off = 0;
    for (std::size_t step = 1; off < big.size(); step = step * 5 % 41 + 1) {
        std::size_t n = std::min(step, big.size() - off);
        h.update(big.data() + off, n);
        off += n;
    }
    EXPECT_EQ(h.digest(), format::hash64(big.data(), big.size()));
    EXPECT_NE(format::hash64(big.data(), big.size()), format::hash64(big.data(), big.size() - 1));
}
