// daemon/dns/cache: TTLs with floor and ceiling, negative caching, the bounds.
#include "daemon/dns/cache.hpp"

#include <gtest/gtest.h>

namespace sluice::dns {
namespace {

using namespace std::chrono_literals;
using Clock = Cache::Clock;

Result ok_a(std::uint32_t ttl, const std::string& name = "h.test") {
    Result r;
    r.status = Status::ok;
    r.canonical = name;
    Record rec;
    rec.name = name;
    rec.type = Type::a;
    rec.addr = *parse_ip("127.0.0.1");
    r.records.push_back(rec);
    r.ttl = ttl;
    return r;
}

TEST(DnsCache, HonoursTheTtl) {
    Cache c({});
    auto t0 = Clock::now();
    ASSERT_TRUE(c.put("h.test", Type::a, ok_a(30), t0));
    auto hit = c.get("h.test", Type::a, t0 + 10s);
    ASSERT_TRUE(hit);
    EXPECT_EQ(*hit->ttl, 20u);  // what is left
    EXPECT_FALSE(c.get("h.test", Type::aaaa, t0));
    EXPECT_FALSE(c.get("h.test", Type::a, t0 + 30s));
    EXPECT_EQ(c.entries(), 0u);  // expired entries are dropped when seen
}

TEST(DnsCache, TtlZeroIsNotCachedUnlessAFloorSaysSo) {
    Cache c({});
    auto t0 = Clock::now();
    EXPECT_FALSE(c.put("h.test", Type::a, ok_a(0), t0));
    Cache floor({.max_entries = 10, .max_bytes = 1 << 20, .min_ttl = 5, .max_ttl = 60});
    EXPECT_TRUE(floor.put("h.test", Type::a, ok_a(0), t0));
    EXPECT_TRUE(floor.get("h.test", Type::a, t0 + 4s));
    EXPECT_FALSE(floor.get("h.test", Type::a, t0 + 5s));
}

TEST(DnsCache, CeilingCapsLongTtls) {
    Cache c({.max_entries = 10, .max_bytes = 1 << 20, .min_ttl = 0, .max_ttl = 60});
    auto t0 = Clock::now();
    c.put("h.test", Type::a, ok_a(86400), t0);
    EXPECT_TRUE(c.get("h.test", Type::a, t0 + 59s));
    EXPECT_FALSE(c.get("h.test", Type::a, t0 + 60s));
}

TEST(DnsCache, NegativeAnswersAreCachedForTheirSoaTtlOnly) {
    Cache c({});
    auto t0 = Clock::now();
    Result nx;
    nx.status = Status::nxdomain;
    nx.ttl = 10;
    EXPECT_TRUE(c.put("gone.test", Type::mx, nx, t0));
    auto hit = c.get("gone.test", Type::mx, t0 + 1s);
    ASSERT_TRUE(hit);
    EXPECT_EQ(hit->status, Status::nxdomain);
    Result no_soa;
    no_soa.status = Status::nodata;  // no SOA: no ttl, RFC 2308 §5
    EXPECT_FALSE(c.put("x.test", Type::mx, no_soa, t0));
    Result temp;
    temp.status = Status::temporary;
    temp.ttl = 100;
    EXPECT_FALSE(c.put("y.test", Type::mx, temp, t0));
}

TEST(DnsCache, BoundedInEntriesLeastRecentlyUsedFirst) {
    Cache c({.max_entries = 3, .max_bytes = 1 << 20, .min_ttl = 0, .max_ttl = 3600});
    auto t0 = Clock::now();
    for (auto n : {"a.test", "b.test", "c.test"}) {
        c.put(n, Type::a, ok_a(100, n), t0);
    }
    ASSERT_TRUE(c.get("a.test", Type::a, t0));  // a is now the most recent
    c.put("d.test", Type::a, ok_a(100, "d.test"), t0);
    EXPECT_EQ(c.entries(), 3u);
    EXPECT_FALSE(c.get("b.test", Type::a, t0));
    EXPECT_TRUE(c.get("a.test", Type::a, t0));
    EXPECT_TRUE(c.get("d.test", Type::a, t0));
}

TEST(DnsCache, BoundedInBytes) {
    auto one = Cache::cost("1/n00000.test", ok_a(100, "n00000.test"));
    Cache c({.max_entries = 1000, .max_bytes = one * 10, .min_ttl = 0, .max_ttl = 3600});
    auto t0 = Clock::now();
    for (int i = 0; i < 100; ++i) {
        char n[32];
        std::snprintf(n, sizeof n, "n%05d.test", i);
        c.put(n, Type::a, ok_a(100, n), t0);
        EXPECT_LE(c.bytes(), one * 10);
    }
    EXPECT_LE(c.entries(), 10u);
    EXPECT_GE(c.entries(), 9u);
}

}  // namespace
}  // namespace sluice::dns
