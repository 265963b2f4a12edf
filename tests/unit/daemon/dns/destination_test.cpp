// daemon/dns/destination: the MX plan over a scripted lookup.
#include "daemon/dns/destination.hpp"

#include <gtest/gtest.h>

#include <map>
#include <set>

namespace sluice::dns {
namespace {

// A zone as the lookup function sees it: (name, type) -> result.
struct Zone {
    std::map<std::pair<std::string, Type>, Result> answers;
    int asked = 0;

    void mx(const std::string& name, std::vector<std::pair<int, std::string>> hosts,
            std::uint32_t ttl = 300) {
        Result r;
        r.status = Status::ok;
        r.canonical = name;
        r.ttl = ttl;
        for (auto& [pref, host] : hosts) {
            Record rec;
            rec.name = name;
            rec.type = Type::mx;
            rec.preference = static_cast<std::uint16_t>(pref);
            rec.target = host;
            r.records.push_back(rec);
        }
        answers[{name, Type::mx}] = r;
    }
    void addr(const std::string& name, const std::string& ip, std::uint32_t ttl = 300) {
        auto a = *parse_ip(ip);
        Type t = a.v4 ? Type::a : Type::aaaa;
        auto& r = answers[{name, t}];
        r.status = Status::ok;
        r.canonical = name;
        r.ttl = ttl;
        Record rec;
        rec.name = name;
        rec.type = t;
        rec.addr = a;
        r.records.push_back(rec);
    }
    void set(const std::string& name, Type t, Status s, std::string canonical = {}) {
        Result r;
        r.status = s;
        r.canonical = canonical.empty() ? name : canonical;
        r.ttl = 60;
        answers[{name, t}] = r;
    }
    LookupFn fn() {
        return [this](const std::string& n, Type t, LookupDone done) {
            ++asked;
            auto it = answers.find({n, t});
            if (it != answers.end()) {
                done(it->second);
                return;
            }
            Result r;
            r.status = Status::nodata;
            r.canonical = n;
            r.ttl = 60;
            done(r);
        };
    }
};

Destination plan(Zone& z, const std::string& domain, Self self = {}, PlanOptions o = {}) {
    std::mt19937 rng(1);
    Destination out;
    bool called = false;
    plan_destination(domain, self, o, rng, z.fn(), [&](Destination d) {
        out = std::move(d);
        called = true;
    });
    EXPECT_TRUE(called);
    return out;
}

std::vector<std::string> ips(const Destination& d) {
    std::vector<std::string> v;
    for (const auto& t : d.targets) {
        v.push_back(format_ip(t.addr));
    }
    return v;
}

TEST(MxPlan, HostsByPreference) {
    Zone z;
    z.mx("a.test", {{20, "mx2.a.test"}, {10, "mx1.a.test"}});
    z.addr("mx1.a.test", "127.0.1.1");
    z.addr("mx2.a.test", "127.0.1.2");
    auto d = plan(z, "A.Test.");
    EXPECT_EQ(d.verdict, Destination::Verdict::deliver);
    EXPECT_EQ(ips(d), (std::vector<std::string>{"127.0.1.1", "127.0.1.2"}));
    EXPECT_FALSE(d.implicit);
}

TEST(MxPlan, EqualPreferencesAreShuffled) {
    std::vector<Record> mx;
    for (int i = 0; i < 4; ++i) {
        Record r;
        r.type = Type::mx;
        r.preference = 10;
        r.target = "mx" + std::to_string(i) + ".test";
        mx.push_back(r);
    }
    Record low;
    low.type = Type::mx;
    low.preference = 5;
    low.target = "first.test";
    mx.push_back(low);
    std::mt19937 rng(7);
    std::set<std::string> seconds;
    for (int i = 0; i < 50; ++i) {
        auto o = order_mx(mx, rng);
        EXPECT_EQ(o.front().target, "first.test");  // preference still rules
        seconds.insert(o[1].target);
    }
    EXPECT_EQ(seconds.size(), 4u);  // every equal host comes first sometimes
}

TEST(MxPlan, ImplicitMxIsTheDomainsOwnAddress) {
    Zone z;
    z.addr("plain.test", "127.0.2.1");
    auto d = plan(z, "plain.test");
    EXPECT_EQ(d.verdict, Destination::Verdict::deliver);
    EXPECT_TRUE(d.implicit);
    EXPECT_EQ(ips(d), std::vector<std::string>{"127.0.2.1"});
}

TEST(MxPlan, NoMxNoAddressBounces512) {
    Zone z;
    auto d = plan(z, "empty.test");
    EXPECT_EQ(d.verdict, Destination::Verdict::bounce);
    EXPECT_EQ(d.reply, Reply::dns_no_domain);
}

TEST(MxPlan, NullMxBounces5110) {
    Zone z;
    z.mx("nomail.test", {{0, ""}});
    auto d = plan(z, "nomail.test");
    EXPECT_EQ(d.verdict, Destination::Verdict::bounce);
    EXPECT_EQ(d.reply, Reply::dns_null_mx);
    EXPECT_EQ(reply_spec(d.reply).enhanced, "5.1.10");
    EXPECT_TRUE(d.null_mx);
}

TEST(MxPlan, NxdomainBounces512) {
    Zone z;
    z.set("gone.test", Type::mx, Status::nxdomain);
    auto d = plan(z, "gone.test");
    EXPECT_EQ(d.verdict, Destination::Verdict::bounce);
    EXPECT_EQ(reply_spec(d.reply).enhanced, "5.1.2");
}

TEST(MxPlan, ServfailDefers443) {
    Zone z;
    z.set("broken.test", Type::mx, Status::temporary);
    auto d = plan(z, "broken.test");
    EXPECT_EQ(d.verdict, Destination::Verdict::defer);
    EXPECT_EQ(reply_spec(d.reply).enhanced, "4.4.3");
    z.set("bad.test", Type::mx, Status::malformed);
    EXPECT_EQ(plan(z, "bad.test").verdict, Destination::Verdict::defer);
}

TEST(MxPlan, MxNamingThisHostIsALoop) {
    Zone z;
    z.mx("loop.test", {{10, "gw.test"}});
    z.addr("gw.test", "127.0.3.1");
    Self self;
    self.names = {"gw.test"};
    auto d = plan(z, "loop.test", self);
    EXPECT_EQ(d.verdict, Destination::Verdict::bounce);
    EXPECT_EQ(reply_spec(d.reply).enhanced, "5.4.6");
}

TEST(MxPlan, OnlyMorePreferredHostsThanThisOneAreUsed) {
    // RFC 5321 §5.1: we are MX 20: 10 is used, 30 is not.
    Zone z;
    z.mx("backup.test", {{10, "primary.test"}, {20, "gw.test"}, {30, "tertiary.test"}});
    z.addr("primary.test", "127.0.4.1");
    z.addr("tertiary.test", "127.0.4.3");
    Self self;
    self.names = {"gw.test"};
    auto d = plan(z, "backup.test", self);
    EXPECT_EQ(d.verdict, Destination::Verdict::deliver);
    EXPECT_EQ(ips(d), std::vector<std::string>{"127.0.4.1"});
}

TEST(MxPlan, MxResolvingToOurListenerIsALoop) {
    Zone z;
    z.mx("back.test", {{10, "other-name.test"}});
    z.addr("other-name.test", "127.0.5.5");
    Self self;
    self.addrs = {*parse_ip("127.0.5.5")};
    auto d = plan(z, "back.test", self);
    EXPECT_EQ(d.verdict, Destination::Verdict::bounce);
    EXPECT_EQ(d.reply, Reply::dns_mx_loop);
}

TEST(MxPlan, CnameOfAnMxHostIsFollowedWithABound) {
    Zone z;
    z.mx("c.test", {{10, "alias.c.test"}});
    z.set("alias.c.test", Type::a, Status::cname, "real.c.test");
    z.addr("real.c.test", "127.0.6.1");
    auto d = plan(z, "c.test");
    EXPECT_EQ(ips(d), std::vector<std::string>{"127.0.6.1"});
    // A chain that never ends: asked a bounded number of times, then deferred.
    Zone loop;
    loop.mx("l.test", {{10, "x0.l.test"}});
    for (int i = 0; i < 100; ++i) {
        loop.set("x" + std::to_string(i) + ".l.test", Type::a, Status::cname,
                 "x" + std::to_string(i + 1) + ".l.test");
        loop.set("x" + std::to_string(i) + ".l.test", Type::aaaa, Status::cname,
                 "x" + std::to_string(i + 1) + ".l.test");
    }
    auto dl = plan(loop, "l.test");
    EXPECT_EQ(dl.verdict, Destination::Verdict::defer);
    EXPECT_LE(loop.asked, 1 + 2 * limits::cname_chain);
}

TEST(MxPlan, PreferredFamilyFirstAndTargetsBounded) {
    Zone z;
    z.mx("v6.test", {{10, "mx.v6.test"}, {20, "mx2.v6.test"}});
    z.addr("mx.v6.test", "127.0.7.1");
    z.addr("mx.v6.test", "::1");
    z.addr("mx2.v6.test", "127.0.7.2");
    auto d6 = plan(z, "v6.test");
    EXPECT_EQ(ips(d6), (std::vector<std::string>{"::1", "127.0.7.1", "127.0.7.2"}));
    PlanOptions o;
    o.prefer = Prefer::ipv4;
    o.max_targets = 2;
    auto d4 = plan(z, "v6.test", {}, o);
    EXPECT_EQ(ips(d4), (std::vector<std::string>{"127.0.7.1", "::1"}));
}

TEST(MxPlan, MxHostsWithoutAddressDefer) {
    Zone z;
    z.mx("dangling.test", {{10, "nowhere.test"}});
    z.set("nowhere.test", Type::a, Status::nxdomain);
    z.set("nowhere.test", Type::aaaa, Status::nxdomain);
    auto d = plan(z, "dangling.test");
    EXPECT_EQ(d.verdict, Destination::Verdict::defer);
}

}  // namespace
}  // namespace sluice::dns
