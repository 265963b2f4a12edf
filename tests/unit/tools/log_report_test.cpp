// Unit tests of tools/log_report: the line parser (quoting, escapes, truncation,
// garbage), timestamps, the bounded TopTable, and the Analyzer with exact counts.

#include "tools/log_report.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>

#include "common/log.hpp"

namespace sluice::ctl::logreport {
namespace {

constexpr std::string_view kDenied =
    "ts=2026-11-22T10:00:00.123Z lvl=info shard=1 sess=8f3a2c event=rcpt code=D111 "
    "client=203.0.113.9 helo=x.test from=<a@outside.test> to=<b@elsewhere.test> listener=mx "
    "reply=\"554 5.7.1 relay denied\"";

TimeMs ts(std::string_view s) {
    auto t = parse_timestamp(s);
    EXPECT_TRUE(t.has_value()) << s;
    return t.value_or(0);
}

// ---- timestamps ----

TEST(LogTimestamp, ParsesTheLogFormat) {
    // 2026-11-22 is day 20779 since the epoch.
    EXPECT_EQ(ts("2026-11-22T10:00:00.123Z"), 20779LL * 86'400'000 + 10 * 3'600'000 + 123);
    EXPECT_EQ(ts("1970-01-01T00:00:00Z"), 0);
    EXPECT_EQ(ts("1970-01-01"), 0);
    EXPECT_EQ(ts("2026-11-22T10:00"), ts("2026-11-22T10:00:00.000Z"));
    EXPECT_EQ(ts("2026-11-22T10:00:00.1Z"), ts("2026-11-22T10:00:00.100Z"));
    EXPECT_EQ(ts("2026-11-22T10:00:00.123456Z"), ts("2026-11-22T10:00:00.123Z"));
    EXPECT_EQ(ts("2024-02-29T00:00:00Z") + 86'400'000, ts("2024-03-01"));
}

TEST(LogTimestamp, RejectsBadInput) {
    for (std::string_view bad :
         {"", "2026-11-22T", "2026-13-01", "2026-02-29", "2026-11-22T25:00:00Z",
          "2026-11-22T10:60:00Z", "2026-11-22T10:00:00.Z", "2026-11-22T10:00:00+01:00",
          "2026/11/22", "20261122", "2026-11-22T10:00:00ZZ", "abcd-ef-gh"}) {
        EXPECT_FALSE(parse_timestamp(bad).has_value()) << bad;
    }
}

TEST(LogTimestamp, FormatRoundTrips) {
    for (std::string_view s : {"2026-11-22T10:00:00.123Z", "1970-01-01T00:00:00.000Z",
                               "2000-02-29T23:59:59.999Z", "1969-12-31T23:59:59.999Z"}) {
        EXPECT_EQ(format_timestamp(ts(s)), s);
    }
}

TEST(LogTimestamp, AgreesWithTheLogger) {
    std::string now = utc_timestamp();
    auto t = parse_timestamp(now);
    ASSERT_TRUE(t.has_value()) << now;
    EXPECT_EQ(format_timestamp(*t), now);
}

// ---- parse_line ----

TEST(LogParse, ParsesADecisionLine) {
    LogRecord r;
    std::string scratch;
    ASSERT_EQ(parse_line(kDenied, r, scratch), LineStatus::ok);
    EXPECT_EQ(r.ts, ts("2026-11-22T10:00:00.123Z"));
    EXPECT_EQ(r.lvl, "info");
    EXPECT_EQ(r.sess, "8f3a2c");
    EXPECT_EQ(r.event, "rcpt");
    EXPECT_EQ(r.code, "D111");
    EXPECT_EQ(r.client, "203.0.113.9");
    EXPECT_EQ(r.helo, "x.test");
    EXPECT_EQ(r.from, "<a@outside.test>");
    EXPECT_EQ(r.to, "<b@elsewhere.test>");
    EXPECT_EQ(r.listener, "mx");
    EXPECT_EQ(r.reply, "554 5.7.1 relay denied");
    EXPECT_TRUE(r.user.empty());
}

TEST(LogParse, DecodesEscapes) {
    LogRecord r;
    std::string scratch;
    std::string line =
        R"(ts=2026-11-22T10:00:00Z event=rcpt helo="a \"quoted\" \\ name\x0d\x0aevent=x" )"
        R"(code=D113 reply="plain text" to="<x y@z>")";
    ASSERT_EQ(parse_line(line, r, scratch), LineStatus::ok);
    EXPECT_EQ(r.helo, "a \"quoted\" \\ name\r\nevent=x");
    EXPECT_EQ(r.event, "rcpt");  // the forged "event=x" stayed inside the value
    EXPECT_EQ(r.code, "D113");
    EXPECT_EQ(r.reply, "plain text");
    EXPECT_EQ(r.to, "<x y@z>");
}

TEST(LogParse, ReadsWhatTheLoggerWrites) {
    // The writer (common/log.cpp) and this reader must agree on every byte value.
    std::string value;
    for (int c = 1; c < 256; ++c) {
        value.push_back(static_cast<char>(c));
    }
    std::string line = "ts=2026-11-22T10:00:00.000Z event=rcpt code=D111 helo=";
    append_log_value(line, value);
    line += " user=";
    append_log_value(line, "bob smith");
    line += " from=";
    append_log_value(line, "");
    LogRecord r;
    std::string scratch;
    ASSERT_EQ(parse_line(line, r, scratch), LineStatus::ok);
    EXPECT_EQ(r.helo, value);
    EXPECT_EQ(r.user, "bob smith");
    EXPECT_EQ(r.from, "");
}

TEST(LogParse, LastValueWinsAndUnknownKeysAreIgnored) {
    LogRecord r;
    std::string scratch;
    ASSERT_EQ(parse_line("ts=2026-11-22T10:00:00Z event=a event=b x.y-z=1 code=", r, scratch),
              LineStatus::ok);
    EXPECT_EQ(r.event, "b");
    EXPECT_EQ(r.code, "");
}

TEST(LogParse, BlankLines) {
    LogRecord r;
    std::string scratch;
    EXPECT_EQ(parse_line("", r, scratch), LineStatus::blank);
    EXPECT_EQ(parse_line("   \t ", r, scratch), LineStatus::blank);
    EXPECT_EQ(parse_line("\r", r, scratch), LineStatus::blank);
}

TEST(LogParse, ToleratesCrlfAndExtraSpaces) {
    LogRecord r;
    std::string scratch;
    ASSERT_EQ(parse_line("  ts=2026-11-22T10:00:00Z   event=rcpt  code=L101 \r", r, scratch),
              LineStatus::ok);
    EXPECT_EQ(r.code, "L101");
}

TEST(LogParse, TruncatedLinesAreMalformed) {
    LogRecord r;
    std::string scratch;
    // Every prefix of a line ending inside a quoted value is malformed, never a crash.
    std::string line(kDenied);
    auto quote = line.find("reply=\"") + 7;
    for (std::size_t n = quote; n < line.size(); ++n) {
        EXPECT_EQ(parse_line(std::string_view(line).substr(0, n), r, scratch),
                  LineStatus::malformed)
            << n;
    }
    // Cut before event= or inside the timestamp.
    EXPECT_EQ(parse_line("ts=2026-11-22T10:00:00.123Z lvl=info", r, scratch),
              LineStatus::malformed);
    EXPECT_EQ(parse_line("ts=2026-11-22T10:0", r, scratch), LineStatus::malformed);
    EXPECT_EQ(parse_line(R"(ts=2026-11-22T10:00:00Z event=x helo="ab\)", r, scratch),
              LineStatus::malformed);
    EXPECT_EQ(parse_line(R"(ts=2026-11-22T10:00:00Z event=x helo="ab\x4)", r, scratch),
              LineStatus::malformed);
}

TEST(LogParse, GarbageIsMalformed) {
    LogRecord r;
    std::string scratch;
    for (std::string_view bad : {
             "hello world",
             "=value ts=2026-11-22T10:00:00Z event=x",
             "ts=2026-11-22T10:00:00Z event=x novalue",
             "ts=2026-11-22T10:00:00Z event=x k\xc3\xa9y=1",
             "ts=2026-11-22T10:00:00Z event=x helo=\"a\"b",
             "ts=2026-11-22T10:00:00Z event=x helo=\"a\\qb\"",
             "ts=2026-11-22T10:00:00Z event=x helo=\"a\\xZZ\"",
             "ts=yesterday event=x",
             "event=x code=D111",
             "ts=2026-11-22T10:00:00Z code=D111",
             "ts=2026-11-22T10:00:00Z event=",
             "Nov 22 10:00:00 host sluiced[123]: something else",
         }) {
        EXPECT_EQ(parse_line(bad, r, scratch), LineStatus::malformed) << bad;
    }
}

TEST(LogParse, RandomBytesNeverCrash) {
    std::mt19937 rng(7);
    std::string alphabet = "ts=event\"\\x0aZ :-T1@<>\t\r";
    LogRecord r;
    std::string scratch;
    int ok = 0;
    for (int i = 0; i < 20000; ++i) {
        std::string line = "ts=2026-11-22T10:00:00Z event=e ";
        int n = static_cast<int>(rng() % 40);
        for (int k = 0; k < n; ++k) {
            line.push_back(rng() % 4 == 0 ? static_cast<char>(rng() % 256)
                                          : alphabet[rng() % alphabet.size()]);
        }
        auto st = parse_line(line, r, scratch);
        if (st == LineStatus::ok) {
            ++ok;
            // Views must lie inside the line or the scratch buffer.
            for (auto v : {r.event, r.code, r.helo, r.reply}) {
                bool in_line =
                    v.data() >= line.data() && v.data() + v.size() <= line.data() + line.size();
                bool in_scratch = v.data() >= scratch.data() &&
                                  v.data() + v.size() <= scratch.data() + scratch.capacity();
                EXPECT_TRUE(v.empty() || in_line || in_scratch);
            }
        }
    }
    EXPECT_GT(ok, 0);
}

// ---- TopTable ----

TEST(TopTable, ExactBelowCapacity) {
    TopTable t(8);
    for (int i = 0; i < 5; ++i) {
        t.add("a", 100 + i);
    }
    t.add("b", 50);
    t.add("b", 300);
    t.add("c", 10);
    EXPECT_TRUE(t.exact());
    EXPECT_EQ(t.total(), 8u);
    EXPECT_EQ(t.size(), 3u);
    auto top = t.top(10);
    ASSERT_EQ(top.size(), 3u);
    EXPECT_EQ(top[0].key, "a");
    EXPECT_EQ(top[0].count, 5u);
    EXPECT_EQ(top[0].first, 100);
    EXPECT_EQ(top[0].last, 104);
    EXPECT_EQ(top[1].key, "b");
    EXPECT_EQ(top[1].first, 50);
    EXPECT_EQ(top[1].last, 300);
    EXPECT_EQ(top[2].key, "c");
    EXPECT_EQ(t.top(1).size(), 1u);
    EXPECT_EQ(t.find("zz"), nullptr);
    ASSERT_NE(t.find("c"), nullptr);
    EXPECT_EQ(t.find("c")->count, 1u);
}

TEST(TopTable, TiesSortByKey) {
    TopTable t(8);
    t.add("m", 1);
    t.add("b", 1);
    t.add("x", 1);
    auto top = t.top(3);
    EXPECT_EQ(top[0].key, "b");
    EXPECT_EQ(top[1].key, "m");
    EXPECT_EQ(top[2].key, "x");
}

TEST(TopTable, BoundedAndKeepsHeavyHitters) {
    // 100 heavy keys (2000 hits each) in a flood of 200k distinct one-off keys through a
    // table of 500. Space-Saving keeps every key more frequent than total/capacity (here
    // 400k / 500 = 800): memory stays at 500 keys, the heavy keys are the top 100, and
    // each count is an upper bound whose lower bound (count - error) is not above truth.
    TopTable t(500);
    std::uint64_t flood = 0;
    for (int round = 0; round < 200; ++round) {
        for (int h = 0; h < 100; ++h) {
            t.add("heavy-" + std::to_string(h), round, 10);
        }
        for (int k = 0; k < 1000; ++k) {
            t.add("noise-" + std::to_string(flood++), round);
        }
    }
    EXPECT_EQ(t.size(), 500u);
    EXPECT_FALSE(t.exact());
    EXPECT_GT(t.evictions(), 0u);
    EXPECT_EQ(t.total(), 200u * 100 * 10 + flood);
    auto top = t.top(100);
    ASSERT_EQ(top.size(), 100u);
    for (const auto& e : top) {
        EXPECT_EQ(e.key.rfind("heavy-", 0), 0u) << e.key;
        EXPECT_GE(e.count, 2000u);
        EXPECT_LE(e.count - e.error, 2000u);
    }
}

TEST(TopTable, RandomStreamsKeepTheSpaceSavingBounds) {
    // Against exact counts, for skewed random streams at several capacities: every held
    // key satisfies count - error <= true <= count, the counts add up to the total (each
    // add increments exactly one slot), and an unevicted table is exact.
    std::mt19937 rng(42);
    for (std::size_t capacity : {1u, 2u, 7u, 64u, 1000u}) {
        TopTable t(capacity);
        std::map<std::string, std::uint64_t> truth;
        for (int i = 0; i < 20000; ++i) {
            // Log-uniform over 1..3000: small numbers much more often.
            auto k =
                static_cast<int>(std::pow(3000.0, std::uniform_real_distribution<>(0, 1)(rng)));
            std::string key = "k" + std::to_string(k);
            std::uint64_t n = 1 + rng() % 3;
            t.add(key, i, n);
            truth[key] += n;
        }
        std::uint64_t sum = 0;
        for (const auto& e : t.top(t.size())) {
            sum += e.count;
            ASSERT_TRUE(truth.count(e.key)) << e.key;
            EXPECT_LE(e.count - e.error, truth[e.key]) << e.key;
            EXPECT_GE(e.count, truth[e.key]) << e.key;
        }
        EXPECT_EQ(sum, t.total());
        EXPECT_EQ(t.size(), std::min(capacity, truth.size()));
        if (t.exact()) {
            EXPECT_EQ(t.size(), truth.size());
            for (const auto& [k, v] : truth) {
                ASSERT_NE(t.find(k), nullptr);
                EXPECT_EQ(t.find(k)->count, v);
            }
        }
        // The Space-Saving guarantee: every key more frequent than total / capacity is held.
        for (const auto& [k, v] : truth) {
            if (v > t.total() / capacity) {
                EXPECT_NE(t.find(k), nullptr) << k << " capacity " << capacity;
            }
        }
    }
}

// ---- Analyzer ----

std::string line(std::string_view t, std::string_view event, std::string_view code,
                 std::string_view rest = {}) {
    std::string s =
        "ts=" + std::string(t) + " lvl=info shard=0 sess=abc event=" + std::string(event);
    if (!code.empty()) {
        s += " code=" + std::string(code);
    }
    if (!rest.empty()) {
        s += " " + std::string(rest);
    }
    return s + "\n";
}

std::string sample_log() {
    std::string s;
    s += line("2026-11-22T10:00:00.000Z", "connect", "", "client=203.0.113.9");
    s += line("2026-11-22T10:00:01.000Z", "rcpt", "D111",
              "client=203.0.113.9 from=<a@outside.test> to=<b@Elsewhere.TEST.>");
    s += line("2026-11-22T10:00:02.000Z", "rcpt", "D111",
              "client=203.0.113.10 from=<a@outside.test> to=<c@elsewhere.test>");
    s += line("2026-11-22T10:00:03.000Z", "rcpt", "D113",
              "client=203.0.113.9 from=<> to=\"<\\\"x@y\\\"@example.test>\"");
    s += line("2026-11-22T10:00:04.000Z", "mail", "B120",
              "client=2001:db8:1:2::5 from=<spam@bad.test>");
    s += line("2026-11-22T10:00:05.000Z", "rcpt", "L101",
              "client=198.51.100.1 from=<x@y.test> to=<u@example.test>");
    s += line("2026-11-22T10:00:06.000Z", "rcpt", "G106",
              "client=198.51.100.2 from=<boss@example.test> to=<z@far.test>");
    s += line("2026-11-22T10:00:07.000Z", "rcpt", "G110",
              "client=198.51.100.3 from=<q@q.test> to=<z@far.test>");
    s += line("2026-11-22T10:00:08.000Z", "rcpt", "G108", "client=10.0.0.1 user=alice");
    s += line("2026-11-22T10:00:09.000Z", "rcpt", "G108", "client=10.0.0.2 user=bob");
    s += line("2026-11-22T10:00:10.000Z", "connect", "C130", "client=192.0.2.66");
    s += line("2026-11-22T10:00:11.000Z", "connect", "C130", "client=192.0.2.66");
    s += line("2026-11-22T10:00:12.000Z", "session", "", "client=203.0.113.9 rcpts=3");
    s += "garbage line\n";
    s += "ts=2026-11-22T10:00:13.000Z event=rcpt code=D111 reply=\"unterminated\n";
    s += "\n";
    return s;
}

TEST(Analyzer, ExactCounts) {
    Analyzer a;
    a.feed(sample_log());
    a.end_of_input();
    const auto& st = a.stats();
    EXPECT_EQ(st.lines, 16u);
    EXPECT_EQ(st.blank, 1u);
    EXPECT_EQ(st.malformed, 2u);
    EXPECT_EQ(st.matched, 13u);
    EXPECT_EQ(st.filtered_out, 0u);
    EXPECT_EQ(st.bytes, sample_log().size());
    EXPECT_EQ(*a.first_time(), ts("2026-11-22T10:00:00Z"));
    EXPECT_EQ(*a.last_time(), ts("2026-11-22T10:00:12Z"));

    EXPECT_EQ(a.codes().find("D111")->count, 2u);
    EXPECT_EQ(a.codes().find("D113")->count, 1u);
    EXPECT_EQ(a.codes().find("B120")->count, 1u);
    EXPECT_EQ(a.codes().find("C130")->count, 2u);
    EXPECT_EQ(a.codes().total(), 11u);
    EXPECT_EQ(a.events().find("rcpt")->count, 8u);
    EXPECT_EQ(a.events().find("connect")->count, 3u);

    EXPECT_EQ(a.denied_total(), 4u);
    EXPECT_EQ(a.denied_by_client().find("203.0.113.9")->count, 2u);
    EXPECT_EQ(a.denied_by_client().find("203.0.113.9")->first, ts("2026-11-22T10:00:01Z"));
    EXPECT_EQ(a.denied_by_client().find("203.0.113.9")->last, ts("2026-11-22T10:00:03Z"));
    EXPECT_EQ(a.denied_by_network().find("203.0.113.0/24")->count, 3u);
    EXPECT_EQ(a.denied_by_network().find("2001:db8:1:2::/64")->count, 1u);
    EXPECT_EQ(a.denied_by_sender().find("a@outside.test")->count, 2u);
    EXPECT_EQ(a.denied_by_sender().find("<>")->count, 1u);
    EXPECT_EQ(a.denied_by_recipient_domain().find("elsewhere.test")->count, 2u);
    EXPECT_EQ(a.denied_by_recipient_domain().find("example.test")->count, 1u);
    EXPECT_EQ(a.denied_by_recipient_domain().find("(none)")->count, 1u);

    EXPECT_EQ(a.weak_total(), 2u);
    EXPECT_EQ(a.weak_by_sender().find("boss@example.test")->count, 1u);
    EXPECT_EQ(a.auth_by_user().find("alice")->count, 1u);
    EXPECT_EQ(a.refused_by_client().find("192.0.2.66")->count, 2u);
    auto w = a.warnings();
    ASSERT_EQ(w.size(), 2u);
    EXPECT_EQ(w[0].rfind("G110", 0), 0u);
    EXPECT_EQ(w[1].rfind("G106", 0), 0u);
}

TEST(Analyzer, ChunkBoundariesDoNotMatter) {
    // The same input at every chunk size gives the same report.
    std::string log = sample_log();
    Analyzer whole;
    whole.feed(log);
    whole.end_of_input();
    for (std::size_t size : {1u, 2u, 3u, 7u, 64u, 100u}) {
        Analyzer a;
        for (std::size_t i = 0; i < log.size(); i += size) {
            a.feed(std::string_view(log).substr(i, size));
        }
        a.end_of_input();
        EXPECT_EQ(a.format_json(), whole.format_json()) << size;
    }
}

TEST(Analyzer, LastLineWithoutNewlineCountsAndDoesNotJoinTheNextFile) {
    Analyzer a;
    a.feed("ts=2026-11-22T10:00:00Z event=rcpt code=D111 client=1.2.3.4");
    a.end_of_input();
    a.feed("ts=2026-11-22T10:00:01Z event=rcpt code=D112 client=1.2.3.4\n");
    a.end_of_input();
    EXPECT_EQ(a.stats().lines, 2u);
    EXPECT_EQ(a.stats().matched, 2u);
    EXPECT_EQ(a.codes().find("D111")->count, 1u);
    EXPECT_EQ(a.codes().find("D112")->count, 1u);
}

TEST(Analyzer, OverlongLinesAreSkippedWithBoundedMemory) {
    Analyzer a;
    std::string huge(limits::kMaxLineBytes + 10, 'x');
    a.feed("ts=2026-11-22T10:00:00Z event=rcpt code=D111 helo=");
    for (int i = 0; i < 10; ++i) {
        a.feed(huge);  // one line of ~640 KiB arriving in pieces
    }
    a.feed("\nts=2026-11-22T10:00:01Z event=rcpt code=D112\n");
    a.feed(huge);  // an over-long last line without newline
    a.end_of_input();
    EXPECT_EQ(a.stats().lines, 3u);
    EXPECT_EQ(a.stats().too_long, 2u);
    EXPECT_EQ(a.stats().malformed, 2u);
    EXPECT_EQ(a.stats().matched, 1u);
    EXPECT_EQ(a.codes().find("D112")->count, 1u);
}

TEST(Analyzer, Filters) {
    ReportOptions o;
    o.filters.since = ts("2026-11-22T10:00:02Z");
    o.filters.until = ts("2026-11-22T10:00:11Z");
    Analyzer a(o);
    a.feed(sample_log());
    a.end_of_input();
    EXPECT_EQ(a.stats().matched, 9u);  // 10:00:02 .. 10:00:10 inclusive
    EXPECT_EQ(a.stats().filtered_out, 4u);
    EXPECT_EQ(a.codes().find("D111")->count, 1u);

    ReportOptions c;
    c.filters.codes = {"D111", "C130"};
    Analyzer b(c);
    b.feed(sample_log());
    b.end_of_input();
    EXPECT_EQ(b.stats().matched, 4u);
    EXPECT_EQ(b.codes().size(), 2u);

    ReportOptions n;
    std::string err;
    n.filters.client = parse_cidr("203.0.113.0/24", err);
    Analyzer d(n);
    d.feed(sample_log());
    d.end_of_input();
    EXPECT_EQ(d.stats().matched, 5u);  // connect, D111 x2, D113, session
    EXPECT_EQ(d.denied_total(), 3u);

    ReportOptions v6;
    v6.filters.client = parse_cidr("2001:db8::/32", err);
    Analyzer e(v6);
    e.feed(sample_log());
    e.end_of_input();
    EXPECT_EQ(e.stats().matched, 1u);
    EXPECT_EQ(e.codes().find("B120")->count, 1u);
}

TEST(Analyzer, UnusualAuthenticatedVolume) {
    ReportOptions o;
    o.user_min_volume = 100;
    Analyzer a(o);
    std::string log;
    auto add = [&](std::string_view user, int n) {
        for (int i = 0; i < n; ++i) {
            log += line("2026-11-22T10:00:00Z", "rcpt", "G108",
                        "client=10.0.0.1 user=" + std::string(user));
        }
    };
    add("alice", 10);
    add("bob", 12);
    add("carol", 40);     // > 3x median (12) but not > 100: quiet
    add("mallory", 500);  // > 3x median and > 100: flagged
    add("dave", 11);
    a.feed(log);
    a.end_of_input();
    EXPECT_DOUBLE_EQ(a.user_median(), 12.0);
    int flagged = 0;
    for (const auto& u : a.users()) {
        if (u.unusual) {
            ++flagged;
            EXPECT_EQ(u.entry.key, "mallory");
        }
    }
    EXPECT_EQ(flagged, 1);
    auto w = a.warnings();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_NE(w[0].find("mallory"), std::string::npos);
}

TEST(Analyzer, OneUserIsNeverUnusual) {
    Analyzer a;
    std::string log;
    for (int i = 0; i < 1000; ++i) {
        log += line("2026-11-22T10:00:00Z", "rcpt", "G108", "user=solo");
    }
    a.feed(log);
    a.end_of_input();
    EXPECT_TRUE(a.warnings().empty());
}

TEST(Analyzer, JsonAndTextOutputs) {
    ReportOptions o;
    o.top = 1;
    Analyzer a(o);
    a.feed(sample_log());
    a.end_of_input();
    std::string j = a.format_json();
    EXPECT_NE(j.find("\"matched\":13"), std::string::npos) << j;
    EXPECT_NE(j.find("\"D111\":2"), std::string::npos);
    EXPECT_NE(j.find("\"by_client\":{\"total\":4,\"distinct\":3,\"exact\":true,\"top\":[{\"key\":"
                     "\"203.0.113.9\",\"count\":2"),
              std::string::npos)
        << j;
    EXPECT_NE(j.find("\"others\":2"), std::string::npos);
    EXPECT_NE(j.find("\"first\":\"2026-11-22T10:00:00.000Z\""), std::string::npos);
    std::string t = a.format_text();
    EXPECT_NE(t.find("WARNING G110"), std::string::npos) << t;
    EXPECT_NE(t.find("denied relay attempts (D1xx, B120): 4"), std::string::npos) << t;
    EXPECT_NE(t.find("... 2 more"), std::string::npos) << t;
}

TEST(Analyzer, ControlBytesNeverReachTheTerminal) {
    Analyzer a;
    a.feed(
        "ts=2026-11-22T10:00:00Z event=rcpt code=D111 client=1.2.3.4 "
        "from=\"<\\x1b[31mevil\\x07@x>\"\n");
    a.end_of_input();
    std::string t = a.format_text();
    EXPECT_EQ(t.find('\x1b'), std::string::npos);
    EXPECT_EQ(t.find('\x07'), std::string::npos);
    std::string j = a.format_json();
    EXPECT_NE(j.find("\\u001b[31mevil\\u0007@x"), std::string::npos) << j;
}

TEST(NetworkKey, Prefixes) {
    EXPECT_EQ(network_key("203.0.113.77"), "203.0.113.0/24");
    EXPECT_EQ(network_key("[203.0.113.77]"), "203.0.113.0/24");
    EXPECT_EQ(network_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    EXPECT_EQ(network_key("[IPv6:2001:db8::1]"), "2001:db8::/64");
    EXPECT_EQ(network_key("::ffff:192.0.2.1"), "192.0.2.0/24");
    EXPECT_EQ(network_key("nonsense"), "(invalid)");
    EXPECT_EQ(network_key(""), "(none)");
}

}  // namespace
}  // namespace sluice::ctl::logreport
