#include "daemon/rates/gcra.hpp"

#include <gtest/gtest.h>

namespace sluice::rates {
namespace {

constexpr Micros kSec = 1'000'000;

Key key_of(std::uint8_t b, std::uint8_t limit = 0) {
    Key k;
    k.bytes[15] = b;
    k.bytes[0] = static_cast<std::uint8_t>(b >> 1);
    k.limit = limit;
    return k;
}

// 10 per minute: T = 6 s, a fresh key may send all 10 at once.
const Limit kTenPerMinute{10, 60 * kSec, 0};

TEST(Gcra, BelowAndAtTheThresholdAllowedAboveRefused) {
    GcraTable t(64);
    const Micros now = 1000 * kSec;
    for (std::uint32_t i = 1; i <= 10; ++i) {
        Verdict v = t.take(key_of(1), kTenPerMinute, now);
        EXPECT_TRUE(v.allowed) << i;
        EXPECT_EQ(v.level, i);
    }
    Verdict over = t.take(key_of(1), kTenPerMinute, now);
    EXPECT_FALSE(over.allowed);
    EXPECT_EQ(over.level, 10u);
    EXPECT_EQ(over.retry_after, 6 * kSec);
    // A refusal does not count: still exactly one event's wait.
    EXPECT_EQ(t.take(key_of(1), kTenPerMinute, now).retry_after, 6 * kSec);
    // Other keys are unaffected.
    EXPECT_TRUE(t.take(key_of(2), kTenPerMinute, now).allowed);
    EXPECT_TRUE(t.take(key_of(1, 1), kTenPerMinute, now).allowed);
}

TEST(Gcra, RefillsOneEventPerEmissionInterval) {
    GcraTable t(64);
    Micros now = 5 * kSec;
    for (int i = 0; i < 10; ++i) {
        ASSERT_TRUE(t.take(key_of(1), kTenPerMinute, now).allowed);
    }
    EXPECT_FALSE(t.take(key_of(1), kTenPerMinute, now + 6 * kSec - 1).allowed);
    EXPECT_TRUE(t.take(key_of(1), kTenPerMinute, now + 6 * kSec).allowed);
    EXPECT_FALSE(t.take(key_of(1), kTenPerMinute, now + 6 * kSec).allowed);
    // A steady sender at exactly the rate is never refused.
    now += 6 * kSec;
    for (int i = 0; i < 100; ++i) {
        now += 6 * kSec;
        ASSERT_TRUE(t.take(key_of(1), kTenPerMinute, now).allowed) << i;
    }
    // After a whole idle interval the key has decayed: a full burst again.
    now += 60 * kSec;
    EXPECT_EQ(t.peek(key_of(1), kTenPerMinute, now).level, 0u);
    for (int i = 0; i < 10; ++i) {
        ASSERT_TRUE(t.take(key_of(1), kTenPerMinute, now).allowed);
    }
    EXPECT_FALSE(t.take(key_of(1), kTenPerMinute, now).allowed);
}

TEST(Gcra, BurstSmallerThanCount) {
    GcraTable t(64);
    const Limit l{10, 60 * kSec, 3};  // 10/min, but at most 3 at once
    const Micros now = 0;
    EXPECT_TRUE(t.take(key_of(1), l, now).allowed);
    EXPECT_TRUE(t.take(key_of(1), l, now).allowed);
    EXPECT_TRUE(t.take(key_of(1), l, now).allowed);
    Verdict v = t.take(key_of(1), l, now);
    EXPECT_FALSE(v.allowed);
    EXPECT_EQ(v.retry_after, 6 * kSec);
    EXPECT_TRUE(t.take(key_of(1), l, now + 6 * kSec).allowed);
}

TEST(Gcra, TakeOfSeveralEventsIsAllOrNothing) {
    GcraTable t(64);
    EXPECT_TRUE(t.take(key_of(1), kTenPerMinute, 0, 7).allowed);
    EXPECT_FALSE(t.take(key_of(1), kTenPerMinute, 0, 4).allowed);
    EXPECT_EQ(t.peek(key_of(1), kTenPerMinute, 0).level, 7u);
    EXPECT_TRUE(t.take(key_of(1), kTenPerMinute, 0, 3).allowed);
    EXPECT_FALSE(t.peek(key_of(1), kTenPerMinute, 0).allowed);
}

TEST(Gcra, ZeroLimitIsOff) {
    GcraTable t(64);
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(t.take(key_of(1), Limit{}, 0).allowed);
    }
    EXPECT_EQ(t.live(0), 0u);
}

TEST(Gcra, MemoryIsBounded) {
    GcraTable t(64);
    EXPECT_EQ(t.capacity(), 64u);
    // Keys that decay at 10 s, then a thousand keys live for a minute, seen at 20 s.
    for (int i = 0; i < 64; ++i) {
        t.take(key_of(static_cast<std::uint8_t>(i)), Limit{1, 10 * kSec, 0}, 0);
    }
    const std::uint64_t before = t.evictions_live();
    for (int i = 0; i < 1000; ++i) {
        Key k;
        k.bytes[0] = static_cast<std::uint8_t>(i);
        k.bytes[1] = static_cast<std::uint8_t>(i >> 8);
        k.scope = 1;
        EXPECT_TRUE(t.take(k, Limit{1, 60 * kSec, 0}, 20 * kSec).allowed);
    }
    EXPECT_LE(t.live(20 * kSec), 64u);
    // At most 64 of them found a free or decayed way; every other one forgot a live key,
    // and each such eviction is counted.
    EXPECT_GE(t.evictions_live() - before, 1000u - 64u);
}

TEST(Gcra, LiveKeysSurviveWhenDecayedOnesCanGo) {
    GcraTable t(GcraTable::kWays);  // one set
    const Limit hour{1, 3600 * kSec, 0};
    const Limit second{1, kSec, 0};
    t.take(key_of(100), hour, 0);  // live for an hour
    for (std::uint8_t i = 0; i < 7; ++i) {
        t.take(key_of(i), second, 0);  // decayed after 1 s
    }
    for (std::uint8_t i = 10; i < 50; ++i) {
        t.take(key_of(i), second, 10 * kSec + i * kSec);
    }
    EXPECT_EQ(t.evictions_live(), 0u);
    EXPECT_FALSE(t.take(key_of(100), hour, 60 * kSec).allowed);
}

}  // namespace
}  // namespace sluice::rates
