// daemon/auth: crypt(3) hashes, the users-map value format, sender ownership and the
// AUTH throttle (with an injected clock).

#include "daemon/auth.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace sluice::auth {
namespace {

using namespace std::string_literals;
using namespace std::chrono_literals;

// --- hashing --------------------------------------------------------------------------

TEST(Password, HashIsYescryptSaltedAndVerifies) {
    std::string err;
    auto h1 = hash_password("correct horse", err);
    ASSERT_TRUE(h1) << err;
    EXPECT_TRUE(h1->starts_with("$y$")) << *h1;
    EXPECT_TRUE(acceptable_hash(*h1));
    EXPECT_EQ(h1->find("correct"), std::string::npos);
    auto h2 = hash_password("correct horse", err);
    ASSERT_TRUE(h2);
    EXPECT_NE(*h1, *h2) << "a fresh salt each time";
    EXPECT_TRUE(verify_password(*h1, "correct horse"));
    EXPECT_TRUE(verify_password(*h2, "correct horse"));
    EXPECT_FALSE(verify_password(*h1, "correct horsE"));
    EXPECT_FALSE(verify_password(*h1, "correct horse "));
    EXPECT_FALSE(verify_password(*h1, "correct hors"));
    EXPECT_FALSE(verify_password(*h1, ""));
}

TEST(Password, BadPasswordsAreNotHashed) {
    std::string err;
    EXPECT_FALSE(hash_password("", err));
    EXPECT_NE(err.find("empty"), std::string::npos);
    err.clear();
    EXPECT_FALSE(hash_password("a\0b"s, err));
    EXPECT_NE(err.find("NUL"), std::string::npos);
    err.clear();
    EXPECT_FALSE(hash_password(std::string(limits::kMaxPassword + 1, 'x'), err));
    EXPECT_FALSE(err.empty());
    EXPECT_TRUE(hash_password(std::string(limits::kMaxPassword, 'x'), err));
}

TEST(Password, NulCannotTruncateThePassword) {
    std::string err;
    auto h = hash_password("secret", err);
    ASSERT_TRUE(h);
    EXPECT_FALSE(verify_password(*h, "secret\0anything"s));
}

TEST(Password, Sha512CryptIsAcceptedOtherSchemesAreNot) {
    // crypt(3) test vector: SHA-512-crypt of "Hello world!" with salt "saltstring"
    // (Drepper's specification, test 1).
    const std::string sha512 =
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdF"
        "CoEOfaS35inz1";
    EXPECT_TRUE(acceptable_hash(sha512));
    EXPECT_TRUE(verify_password(sha512, "Hello world!"));
    EXPECT_FALSE(verify_password(sha512, "Hello world?"));
    // MD5-crypt, DES, plaintext, locked accounts: never.
    EXPECT_FALSE(acceptable_hash("$1$saltsalt$qjXMvbEw8oaL.CzflDugX/"));
    EXPECT_FALSE(verify_password("$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "password"));
    EXPECT_FALSE(verify_password("abJnggxhB/yWI", "password"));
    EXPECT_FALSE(verify_password("password", "password"));
    EXPECT_FALSE(verify_password("!", ""));
    EXPECT_FALSE(verify_password("", ""));
    EXPECT_FALSE(verify_password("$y$", "x"));
    EXPECT_FALSE(acceptable_hash("$y$j9T$abc$def ghi"));
}

TEST(Password, DummyHashCostsTheSameAndMatchesNothingGuessable) {
    const std::string& d = dummy_hash();
    EXPECT_TRUE(d.starts_with("$y$")) << d;
    EXPECT_EQ(&d, &dummy_hash()) << "computed once";
    EXPECT_FALSE(verify_password(d, "dummy"));
    EXPECT_FALSE(verify_password(d, "password"));
}

// --- users map values -----------------------------------------------------------------

const std::string kHash =
    "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o7TwoQ7ZTLyUS4p6KQa/ZzzE7Mw9.U1Y4";

TEST(UserEntry, HashAloneAndWithSenders) {
    std::string err;
    auto e = parse_user_entry(kHash, err);
    ASSERT_TRUE(e) << err;
    EXPECT_EQ(e->hash, kHash);
    EXPECT_TRUE(e->senders.empty());
    EXPECT_EQ(format_user_entry(*e), kHash);

    const std::string v = kHash + ";senders=alice@example.test,@sales.example.test,<>";
    e = parse_user_entry(v, err);
    ASSERT_TRUE(e) << err;
    EXPECT_EQ(e->senders,
              (std::vector<std::string>{"alice@example.test", "@sales.example.test", "<>"}));
    EXPECT_EQ(format_user_entry(*e), v);
    EXPECT_EQ(v.find_first_of(" \t"), std::string::npos) << "one token for the users map";
}

TEST(UserEntry, MalformedValuesAreErrors) {
    const std::string bad[] = {
        "",
        "plaintext",
        "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
        kHash + ";senders=",
        kHash + ";senders=alice",
        kHash + ";senders=alice@",
        kHash + ";senders=a@x.test,,b@x.test",
        kHash + ";senders=a@x.test,",
        kHash + ";senders=a b@x.test",
        kHash + ";senders=<a@x.test>",
        kHash + ";quota=5",
        kHash + ";",
    };
    for (const auto& v : bad) {
        std::string err;
        EXPECT_FALSE(parse_user_entry(v, err)) << v;
        EXPECT_FALSE(err.empty()) << v;
    }
    std::string many = kHash + ";senders=";
    for (int i = 0; i <= 100; ++i) {
        many += (i ? "," : "") + std::to_string(i) + "@x.test";
    }
    std::string err;
    EXPECT_FALSE(parse_user_entry(many, err));
}

TEST(UserEntry, SenderOwnership) {
    std::string err;
    auto e = parse_user_entry(kHash + ";senders=Alice.Smith@example.test,@sales.example.test", err);
    ASSERT_TRUE(e) << err;
    // Listed address: local part exact, domain case-insensitive.
    EXPECT_TRUE(sender_allowed(*e, "alice", "Alice.Smith@example.test"));
    EXPECT_TRUE(sender_allowed(*e, "alice", "Alice.Smith@EXAMPLE.test"));
    EXPECT_FALSE(sender_allowed(*e, "alice", "alice.smith@example.test"));
    EXPECT_FALSE(sender_allowed(*e, "alice", "Alice.Smith@example.test.evil"));
    EXPECT_FALSE(sender_allowed(*e, "alice", "bob@example.test"));
    // Whole domain.
    EXPECT_TRUE(sender_allowed(*e, "alice", "anyone@sales.example.test"));
    EXPECT_FALSE(sender_allowed(*e, "alice", "anyone@evil-sales.example.test"));
    EXPECT_FALSE(sender_allowed(*e, "alice", "anyone@sub.sales.example.test"));
    // The null sender only when "<>" is listed.
    EXPECT_FALSE(sender_allowed(*e, "alice", ""));
    auto bounce = parse_user_entry(kHash + ";senders=<>", err);
    ASSERT_TRUE(bounce);
    EXPECT_TRUE(sender_allowed(*bounce, "alice", ""));
    EXPECT_FALSE(sender_allowed(*bounce, "alice", "alice@example.test"));
    // A user name that is an address may always send as itself.
    auto plain = parse_user_entry(kHash, err);
    ASSERT_TRUE(plain);
    EXPECT_TRUE(sender_allowed(*plain, "carol@example.test", "carol@example.test"));
    EXPECT_TRUE(sender_allowed(*plain, "carol@example.test", "carol@Example.Test"));
    EXPECT_FALSE(sender_allowed(*plain, "carol@example.test", "Carol@example.test"));
    EXPECT_FALSE(sender_allowed(*plain, "carol@example.test", "dave@example.test"));
    EXPECT_FALSE(sender_allowed(*plain, "carol", "carol@example.test"));
    EXPECT_FALSE(sender_allowed(*plain, "@example.test", "x@example.test"));
}

// --- throttle -------------------------------------------------------------------------

struct FakeClock {
    AuthThrottle::Clock::time_point t{std::chrono::hours(1000)};
    AuthThrottle::Now fn() {
        return [this] { return t; };
    }
};

IpAddr ip(const char* s) {
    return *parse_ip(s);
}

TEST(AuthThrottle, PerIpLimitThenDecay) {
    FakeClock clock;
    AuthThrottle th(AuthThrottle::Limits{}, clock.fn());  // 5 per 600 s per IP
    const IpAddr a = ip("192.0.2.1");
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(th.allow(a, "user" + std::to_string(i))) << i;
        th.record(a, "user" + std::to_string(i), false);
    }
    EXPECT_FALSE(th.allow(a, "other"));
    EXPECT_FALSE(th.allow(a, ""));
    // Another address is not affected.
    EXPECT_TRUE(th.allow(ip("192.0.2.2"), "user0"));
    // One attempt drains every 120 s.
    clock.t += 119s;
    EXPECT_FALSE(th.allow(a, "x"));
    clock.t += 2s;
    EXPECT_TRUE(th.allow(a, "x"));
    EXPECT_FALSE(th.allow(a, "x"));
    clock.t += 600s;
    for (int i = 0; i < 5; ++i) {
        EXPECT_TRUE(th.allow(a, "y")) << i;
    }
    EXPECT_FALSE(th.allow(a, "y"));
}

TEST(AuthThrottle, PerUserLimitAcrossAddresses) {
    FakeClock clock;
    AuthThrottle th(AuthThrottle::Limits{}, clock.fn());  // 10 per user
    for (int i = 0; i < 10; ++i) {
        std::string addr = "198.51.100." + std::to_string(i + 1);
        ASSERT_TRUE(th.allow(ip(addr.c_str()), "victim")) << i;
        th.record(ip(addr.c_str()), "victim", false);
    }
    EXPECT_FALSE(th.allow(ip("198.51.100.200"), "victim"));
    EXPECT_TRUE(th.allow(ip("198.51.100.200"), "someone-else"));
}

TEST(AuthThrottle, RightPasswordFromAnotherAddressStillWorks) {
    // The brute-force case: N wrong passwords from one address are throttled, the
    // owner logs in from elsewhere.
    FakeClock clock;
    AuthThrottle th(AuthThrottle::Limits{}, clock.fn());
    const IpAddr attacker = ip("203.0.113.66");
    int allowed = 0;
    for (int i = 0; i < 50; ++i) {
        if (th.allow(attacker, "alice")) {
            ++allowed;
            th.record(attacker, "alice", false);
        }
    }
    EXPECT_EQ(allowed, 5);
    EXPECT_TRUE(th.allow(ip("192.0.2.10"), "alice"));
    th.record(ip("192.0.2.10"), "alice", true);
}

TEST(AuthThrottle, SuccessRefundsAndTrustsThePair) {
    FakeClock clock;
    AuthThrottle th(AuthThrottle::Limits{}, clock.fn());
    const IpAddr home = ip("192.0.2.10");
    // Successful logins never use up the client's allowance.
    for (int i = 0; i < 20; ++i) {
        ASSERT_TRUE(th.allow(home, "alice")) << i;
        th.record(home, "alice", true);
    }
    // A distributed attack locks "alice" for everyone else...
    for (int i = 0; i < 10; ++i) {
        std::string addr = "198.51.100." + std::to_string(i + 1);
        ASSERT_TRUE(th.allow(ip(addr.c_str()), "alice"));
        th.record(ip(addr.c_str()), "alice", false);
    }
    EXPECT_FALSE(th.allow(ip("198.51.100.99"), "alice"));
    // ...but not where alice has logged in before, within `trust`.
    EXPECT_TRUE(th.allow(home, "alice"));
    th.record(home, "alice", true);
    clock.t += 86401s;
    // Trust expired, but by now the user's bucket has drained as well.
    EXPECT_TRUE(th.allow(ip("198.51.100.99"), "alice"));
}

TEST(AuthThrottle, Ipv6CountsPerSlash64) {
    FakeClock clock;
    AuthThrottle th(AuthThrottle::Limits{}, clock.fn());
    for (int i = 0; i < 5; ++i) {
        std::string addr = "2001:db8:1:2::" + std::to_string(i + 1);
        ASSERT_TRUE(th.allow(ip(addr.c_str()), "u" + std::to_string(i)));
        th.record(ip(addr.c_str()), "u" + std::to_string(i), false);
    }
    EXPECT_FALSE(th.allow(ip("2001:db8:1:2:ffff::1"), "x"));
    EXPECT_TRUE(th.allow(ip("2001:db8:1:3::1"), "x"));
}

TEST(AuthThrottle, MemoryIsBounded) {
    FakeClock clock;
    AuthThrottle::Limits l;
    l.max_entries = 1000;
    AuthThrottle th(l, clock.fn());
    for (int i = 0; i < 20000; ++i) {
        IpAddr a{};
        a.bytes[0] = 0x20;
        a.bytes[1] = 0x01;
        a.bytes[2] = static_cast<std::uint8_t>(i >> 8);
        a.bytes[3] = static_cast<std::uint8_t>(i);
        th.allow(a, "user" + std::to_string(i));
        th.record(a, "user" + std::to_string(i), false);
        ASSERT_LE(th.size(), 1000u);
    }
    // The most recent client is still remembered.
    IpAddr last{};
    last.bytes[0] = 0x20;
    last.bytes[1] = 0x01;
    last.bytes[2] = static_cast<std::uint8_t>(19999 >> 8);
    last.bytes[3] = static_cast<std::uint8_t>(19999);
    for (int i = 0; i < 4; ++i) {
        EXPECT_TRUE(th.allow(last, ""));
    }
    EXPECT_FALSE(th.allow(last, ""));
}

TEST(AuthThrottle, IdleEntriesAreDropped) {
    FakeClock clock;
    AuthThrottle th(AuthThrottle::Limits{}, clock.fn());
    for (int i = 0; i < 100; ++i) {
        std::string addr = "10.0.0." + std::to_string(i);
        th.allow(ip(addr.c_str()), "");
    }
    EXPECT_EQ(th.size(), 100u);
    clock.t += 601s;
    for (int i = 0; i < 100; ++i) {
        std::string addr = "10.0.1." + std::to_string(i);
        th.allow(ip(addr.c_str()), "");
    }
    EXPECT_LT(th.size(), 110u) << "each insert drops up to two idle entries";
}

TEST(AuthThrottle, ParallelAttemptsCannotRacePastTheLimit) {
    AuthThrottle th;  // real clock
    const IpAddr a = ip("192.0.2.77");
    std::atomic<int> allowed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 50; ++i) {
                if (th.allow(a, "alice")) {
                    ++allowed;
                    th.record(a, "alice", false);
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    EXPECT_EQ(allowed.load(), 5);
}

}  // namespace
}  // namespace sluice::auth
