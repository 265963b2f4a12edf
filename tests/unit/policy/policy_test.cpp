// policy/policy.hpp: one test (or more) per decision code, the rule and source each
// decision names, and fail-closed behaviour for every map on the path.

#include "policy/policy.hpp"

#include <gtest/gtest.h>

#include <functional>

#include "fake_maps.hpp"

using namespace sluice;
using namespace sluice::policy;
using sluice::policy::testing::FakeMaps;

namespace {

Address addr(std::string_view text, bool reverse = false) {
    auto r = parse_path(text, reverse, true);
    EXPECT_TRUE(r.ok()) << text;
    return r.address;
}

IpAddr ip(std::string_view s) {
    auto a = parse_ip(s);
    EXPECT_TRUE(a) << s;
    return a.value_or(IpAddr{});
}

class PolicyTest : public ::testing::Test {
  public:
    void SetUp() override {
        rules.relay = RelayConfig{true, true, false, false, false, false};
        rules.local_domains = {"example.test"};
        rules.hostname = "mx.example.test";
        rules.sources["relay.authenticated"] = SourceRef{"/etc/sluice/sluice.toml", 12, 1};
        rules.sources["relay.privileged_networks"] = SourceRef{"/etc/sluice/sluice.toml", 13, 1};
        rules.sources["relay.local_senders"] = SourceRef{"/etc/sluice/sluice.toml", 14, 1};
        rules.sources["relay.enabled"] = SourceRef{"/etc/sluice/sluice.toml", 11, 1};

        maps.add(MapId::local_domains, "maplocal.test", "", "local_domains.txt:1");
        maps.add(MapId::local_domains, "catch.test", "", "local_domains.txt:2");
        maps.add(MapId::local_domains, "wide.test", "", "local_domains.txt:3");
        maps.add(MapId::local_addresses, "alice@example.test", "", "local_addresses.txt:1");
        maps.add(MapId::local_addresses, "bob@example.test", "robert@internal.test",
                 "local_addresses.txt:2");
        maps.add(MapId::local_addresses, "carol@maplocal.test", "", "local_addresses.txt:3");
        maps.add(MapId::local_addresses, "@wide.test", "", "local_addresses.txt:4");
        maps.add(MapId::catch_all, "catch.test", "catchall@catch.test", "catch_all.txt:1");
        EXPECT_TRUE(maps.add_cidr(MapId::privileged_networks, "10.0.0.0/8", "office",
                                  "privileged_networks.txt:2"));
        EXPECT_TRUE(maps.add_cidr(MapId::privileged_networks, "2001:db8:1::/48", "lab",
                                  "privileged_networks.txt:3"));
        EXPECT_TRUE(
            maps.add_cidr(MapId::access, "203.0.113.0/24", "REJECT go away", "access.txt:1"));
        EXPECT_TRUE(
            maps.add_cidr(MapId::access, "198.51.100.7", "DEFER slow down", "access.txt:2"));
        EXPECT_TRUE(maps.add_cidr(MapId::access, "198.51.100.0/24", "OK", "access.txt:3"));
        maps.add(MapId::access, "spammer@bad.test", "REJECT", "access.txt:4");
        maps.add(MapId::access, "@bad.test", "reject Domain blocked", "access.txt:5");
        maps.add(MapId::access, "friend@bad.test", "OK", "access.txt:6");
        maps.add(MapId::access, "@slow.test", "DEFER", "access.txt:7");
        maps.add(MapId::access, "odd@weird.test", "MAYBE", "access.txt:8");
        maps.add(MapId::access, "rcpt:victim@example.test", "REJECT no mail for you",
                 "access.txt:9");
        maps.add(MapId::access, "rcpt:@blocked.test", "REJECT", "access.txt:10");
        EXPECT_TRUE(maps.add_cidr(MapId::connection_filter, "192.0.2.0/24", "allow", "cf.txt:1"));
        EXPECT_TRUE(maps.add_cidr(MapId::connection_filter, "192.0.2.66", "deny", "cf.txt:2"));
        EXPECT_TRUE(maps.add_cidr(MapId::connection_filter, "233.252.0.0/24", "deny", "cf.txt:3"));
        EXPECT_TRUE(maps.add_cidr(MapId::connection_filter, "233.252.1.0/24", "bogus", "cf.txt:4"));

        mx.listener = "mx";
        mx.role = Role::mx;
        mx.client = ip("192.0.2.10");
        mx.helo = "client.outside.test";
        sub = mx;
        sub.listener = "submission";
        sub.role = Role::submission;
        sub.tls = true;
    }

    Decision rcpt(const Facts& f, std::string_view from, std::string_view to) {
        return decide_rcpt(f, addr(from, true), addr(to), rules, maps);
    }

    Rules rules;
    FakeMaps maps;
    Facts mx;
    Facts sub;
};

}  // namespace

// ----- L101 / L102 / L103: local domains -----

TEST_F(PolicyTest, L101KnownAddress) {
    auto d = rcpt(mx, "<a@outside.test>", "<alice@example.test>");
    EXPECT_EQ(d.code, Code::L101);
    EXPECT_EQ(d.verdict, Verdict::accept);
    EXPECT_EQ(d.reply, Reply::recipient_local);
    EXPECT_EQ(d.rule, "map local_addresses alice@example.test");
    EXPECT_EQ(d.source, "local_addresses.txt:1");
    EXPECT_EQ(d.deliver_to, "");
    EXPECT_EQ(d.reply_line(), "250 2.1.5 Recipient ok");
}

TEST_F(PolicyTest, L101WithTarget) {
    auto d = rcpt(mx, "<a@outside.test>", "<bob@example.test>");
    EXPECT_EQ(d.code, Code::L101);
    EXPECT_EQ(d.deliver_to, "robert@internal.test");
    EXPECT_NE(d.reason.find("robert@internal.test"), std::string::npos);
}

TEST_F(PolicyTest, L101CaseAndTrailingDotGames) {
    for (auto to : {"<alice@EXAMPLE.test.>", "<Alice@Example.Test>", "<ALICE@example.test>"}) {
        auto d = rcpt(mx, "<a@outside.test>", to);
        EXPECT_EQ(d.code, Code::L101) << to;
        EXPECT_EQ(d.rule, "map local_addresses alice@example.test") << to;
    }
}

TEST_F(PolicyTest, L101DomainFromTheMap) {
    auto d = rcpt(mx, "<a@outside.test>", "<carol@maplocal.test>");
    EXPECT_EQ(d.code, Code::L101);
    auto unknown = rcpt(mx, "<a@outside.test>", "<dave@maplocal.test>");
    EXPECT_EQ(unknown.code, Code::L103);
    EXPECT_EQ(unknown.source, "local_domains.txt:1");  // where the domain was made local
}

TEST_F(PolicyTest, L101NullSenderToLocal) {
    EXPECT_EQ(rcpt(mx, "<>", "<alice@example.test>").code, Code::L101);
}

TEST_F(PolicyTest, L101Postmaster) {
    auto d = rcpt(mx, "<>", "<Postmaster>");
    EXPECT_EQ(d.code, Code::L101);
    EXPECT_EQ(d.deliver_to, "postmaster@example.test");
    d = rcpt(mx, "<a@outside.test>", "<PostMaster@example.test>");
    EXPECT_EQ(d.code, Code::L101);
    EXPECT_EQ(d.rule, "postmaster");
    // Postmaster of a foreign domain is a relay like any other.
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<postmaster@elsewhere.test>").code, Code::D111);
    // Without any local domain, <Postmaster> goes to the server's own name.
    rules.local_domains.clear();
    EXPECT_EQ(rcpt(mx, "<>", "<Postmaster>").deliver_to, "postmaster@mx.example.test");
}

TEST_F(PolicyTest, L101DomainWideEntry) {
    auto d = rcpt(mx, "<a@outside.test>", "<anyone@wide.test>");
    EXPECT_EQ(d.code, Code::L101);
    EXPECT_EQ(d.rule, "map local_addresses @wide.test");
    EXPECT_EQ(d.source, "local_addresses.txt:4");
}

TEST_F(PolicyTest, L101EveryAddressWhenThereIsNoAddressList) {
    FakeMaps empty;
    auto d = decide_rcpt(mx, addr("<a@outside.test>", true), addr("<whoever@example.test>"), rules,
                         empty);
    EXPECT_EQ(d.code, Code::L101);
    EXPECT_NE(d.reason.find("domain-wide"), std::string::npos);
    // ... but an address list makes the others unknown.
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<whoever@example.test>").code, Code::L103);
}

TEST_F(PolicyTest, L102CatchAll) {
    auto d = rcpt(mx, "<a@outside.test>", "<nobody@catch.test>");
    EXPECT_EQ(d.code, Code::L102);
    EXPECT_EQ(d.reply, Reply::recipient_local);
    EXPECT_EQ(d.deliver_to, "catchall@catch.test");
    EXPECT_EQ(d.rule, "map catch_all catch.test");
    EXPECT_EQ(d.source, "catch_all.txt:1");
}

TEST_F(PolicyTest, L103UnknownLocal) {
    auto d = rcpt(mx, "<a@outside.test>", "<nobody@example.test>");
    EXPECT_EQ(d.code, Code::L103);
    EXPECT_EQ(d.verdict, Verdict::reject);
    EXPECT_EQ(d.reply_line(), "550 5.1.1 Recipient address rejected: user unknown");
}

TEST_F(PolicyTest, ConfigLocalDomainNeedsNoDomainLookup) {
    maps.set_unavailable(MapId::local_domains);
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<alice@example.test>").code, Code::L101);
}

// ----- relay grants -----

TEST_F(PolicyTest, G108Authenticated) {
    sub.auth_user = "alice";
    auto d = rcpt(sub, "<alice@example.test>", "<x@elsewhere.test>");
    EXPECT_EQ(d.code, Code::G108);
    EXPECT_EQ(d.reply, Reply::relay_granted);
    EXPECT_EQ(d.rule, "relay.authenticated");
    EXPECT_EQ(d.source, "/etc/sluice/sluice.toml:12");
    EXPECT_NE(d.reason.find("authenticated as alice"), std::string::npos);
    // The criterion off: authentication grants nothing.
    rules.relay.authenticated = false;
    EXPECT_EQ(rcpt(sub, "<alice@example.test>", "<x@elsewhere.test>").code, Code::D111);
}

TEST_F(PolicyTest, G108NeedsNoMapLookup) {
    sub.auth_user = "alice";
    maps.set_unavailable(MapId::privileged_networks);
    maps.set_unavailable(MapId::local_addresses);
    rules.relay.privileged_networks = true;
    EXPECT_EQ(rcpt(sub, "<alice@example.test>", "<x@elsewhere.test>").code, Code::G108);
}

TEST_F(PolicyTest, G107PrivilegedNetworkNamesTheNetwork) {
    rules.relay.privileged_networks = true;
    mx.client = ip("10.20.30.40");
    auto d = rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>");
    EXPECT_EQ(d.code, Code::G107);
    EXPECT_EQ(d.rule, "map privileged_networks 10.0.0.0/8 (office)");
    EXPECT_EQ(d.source, "privileged_networks.txt:2");
    EXPECT_NE(d.reason.find("10.20.30.40"), std::string::npos);
    mx.client = ip("2001:db8:1::25");
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>").code, Code::G107);
    mx.client = ip("::ffff:10.1.1.1");  // IPv4-mapped: the same address
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>").code, Code::G107);
    mx.client = ip("11.0.0.1");
    auto denied = rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>");
    EXPECT_EQ(denied.code, Code::D111);
    EXPECT_EQ(denied.source, "/etc/sluice/sluice.toml:11");  // the relay settings
}

TEST_F(PolicyTest, G107OnlyWhenTheCriterionIsOn) {
    mx.client = ip("10.20.30.40");
    int before = maps.lookups();
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>").code, Code::D111);
    maps.set_unavailable(MapId::privileged_networks);  // not consulted: not on the path
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>").code, Code::D111);
    EXPECT_GT(maps.lookups(), before);
}

TEST_F(PolicyTest, G106LocalSender) {
    rules.relay.local_senders = true;
    auto d = rcpt(mx, "<alice@example.test>", "<x@elsewhere.test>");
    EXPECT_EQ(d.code, Code::G106);
    EXPECT_EQ(d.rule, "relay.local_senders");
    EXPECT_EQ(d.source, "/etc/sluice/sluice.toml:14");
    EXPECT_NE(d.reason.find("local_addresses.txt:1"), std::string::npos);
    EXPECT_EQ(rcpt(mx, "<Alice@Example.TEST>", "<x@elsewhere.test>").code, Code::G106);
    EXPECT_EQ(rcpt(mx, "<anyone@wide.test>", "<x@elsewhere.test>").code, Code::G106);
}

TEST_F(PolicyTest, D109SenderNotLocalWhenOnlyLocalSendersApplies) {
    rules.relay.local_senders = true;
    for (auto from :
         {"<stranger@example.test>", "<a@outside.test>", "<>", "<alice%x@example.test>",
          "<u@[192.0.2.1]>", "<@r.test:alice@example.test>", "<alice@example.test.evil.test>"}) {
        auto d = rcpt(mx, from, "<x@elsewhere.test>");
        EXPECT_EQ(d.code, Code::D109) << from;
        EXPECT_EQ(d.reply, Reply::relay_denied) << from;
    }
    // On a submission listener authentication could also apply: D111.
    EXPECT_EQ(rcpt(sub, "<stranger@example.test>", "<x@elsewhere.test>").code, Code::D111);
    // With an empty address list, any sender at a local domain counts as local.
    FakeMaps empty;
    auto d = decide_rcpt(mx, addr("<stranger@example.test>", true), addr("<x@elsewhere.test>"),
                         rules, empty);
    EXPECT_EQ(d.code, Code::G106);
}

TEST_F(PolicyTest, G110OpenOnlyWithAcknowledgement) {
    rules.relay.open = true;
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>").code, Code::D111);
    rules.relay.acknowledge_open_relay = true;
    auto d = rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>");
    EXPECT_EQ(d.code, Code::G110);
    EXPECT_EQ(d.source, "default");
}

TEST_F(PolicyTest, D111NoCriterionMet) {
    rules.relay.privileged_networks = true;
    auto d = rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>");
    EXPECT_EQ(d.code, Code::D111);
    EXPECT_EQ(d.reply_line(), "554 5.7.1 Relay access denied");
    EXPECT_NE(d.reason.find("not authenticated"), std::string::npos);
    EXPECT_NE(d.reason.find("not in privileged_networks"), std::string::npos);
    rules.relay = RelayConfig{true, false, false, false, false, false};
    EXPECT_NE(rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>").reason.find("no relay criterion"),
              std::string::npos);
}

TEST_F(PolicyTest, D112RelayDisabledEvenForAuthenticated) {
    rules.relay.enabled = false;
    rules.relay.open = rules.relay.acknowledge_open_relay = true;
    sub.auth_user = "alice";
    auto d = rcpt(sub, "<alice@example.test>", "<x@elsewhere.test>");
    EXPECT_EQ(d.code, Code::D112);
    EXPECT_EQ(d.rule, "relay.enabled");
    EXPECT_EQ(d.source, "/etc/sluice/sluice.toml:11");
    // Local delivery is not relaying.
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<alice@example.test>").code, Code::L101);
}

TEST_F(PolicyTest, SuffixConfusionIsNotLocal) {
    for (auto to : {"<alice@example.test.evil.test>", "<alice@evilexample.test>",
                    "<alice@xample.test>", "<alice@sub.example.test>"}) {
        EXPECT_EQ(rcpt(mx, "<a@outside.test>", to).code, Code::D111) << to;
    }
}

// ----- D113: sender-specified routing, for everyone -----

TEST_F(PolicyTest, D113RoutingTricks) {
    struct Case {
        const char* to;
        Reply reply;
    } cases[] = {
        {"<user%elsewhere.test@example.test>", Reply::routing_denied},
        {"<elsewhere.test!user@example.test>", Reply::routing_denied},
        {"<\"user@elsewhere.test\"@example.test>", Reply::routing_denied},
        {"<user@[192.0.2.1]>", Reply::routing_denied},
        {"<user@[IPv6:2001:db8::1]>", Reply::routing_denied},
        {"<@example.test:user@elsewhere.test>", Reply::routing_syntax},
        {"<@a.test,@b.test:alice@example.test>", Reply::routing_syntax},
    };
    rules.relay.privileged_networks = true;
    rules.relay.open = rules.relay.acknowledge_open_relay = true;
    sub.auth_user = "alice";
    sub.client = ip("10.0.0.5");
    for (const auto& c : cases) {
        for (const Facts* f : {&mx, &sub}) {
            auto d = rcpt(*f, "<alice@example.test>", c.to);
            EXPECT_EQ(d.code, Code::D113) << c.to;
            EXPECT_EQ(d.verdict, Verdict::reject) << c.to;
            EXPECT_EQ(d.reply, c.reply) << c.to;
            EXPECT_EQ(d.source, "built-in") << c.to;
        }
    }
}

// ----- B120 and DEFER: the access map -----

TEST_F(PolicyTest, B120ClientAtConnectAndMail) {
    mx.client = ip("203.0.113.9");
    auto c = decide_connect(mx, rules, maps);
    EXPECT_EQ(c.code, Code::B120);
    EXPECT_EQ(c.reply, Reply::connection_refused);
    EXPECT_EQ(c.reply_line(), "554 5.7.1 go away");
    EXPECT_EQ(c.source, "access.txt:1");
    auto m = decide_mail(mx, addr("<a@outside.test>", true), rules, maps);
    EXPECT_EQ(m.code, Code::B120);
    EXPECT_EQ(m.reply, Reply::blocked);
    EXPECT_EQ(m.reply_text, "go away");
    EXPECT_EQ(m.rule, "map access 203.0.113.0/24");
}

TEST_F(PolicyTest, ClientDeferAppliesAtMailNotAtConnect) {
    mx.client = ip("198.51.100.7");
    EXPECT_TRUE(decide_connect(mx, rules, maps).accepted());
    auto m = decide_mail(mx, addr("<a@outside.test>", true), rules, maps);
    EXPECT_EQ(m.verdict, Verdict::defer);
    EXPECT_EQ(m.reply, Reply::deferred);
    EXPECT_EQ(m.reply_line(), "450 4.7.1 slow down");
    // The /24 around it is OK: no block, and never a relay grant.
    mx.client = ip("198.51.100.8");
    EXPECT_EQ(decide_mail(mx, addr("<a@outside.test>", true), rules, maps).code, Code::A000);
    EXPECT_EQ(rcpt(mx, "<a@outside.test>", "<x@elsewhere.test>").code, Code::D111);
}

TEST_F(PolicyTest, B120Sender) {
    auto d = decide_mail(mx, addr("<spammer@bad.test>", true), rules, maps);
    EXPECT_EQ(d.code, Code::B120);
    EXPECT_EQ(d.reply_line(), "554 5.7.1 Access denied");
    d = decide_mail(mx, addr("<Other@BAD.test>", true), rules, maps);
    EXPECT_EQ(d.code, Code::B120);
    EXPECT_EQ(d.reply_text, "Domain blocked");
    EXPECT_EQ(d.source, "access.txt:5");
    // A more specific OK shadows the domain entry.
    EXPECT_EQ(decide_mail(mx, addr("<friend@bad.test>", true), rules, maps).code, Code::A000);
    EXPECT_EQ(decide_mail(mx, addr("<FRIEND@bad.test>", true), rules, maps).code, Code::A000);
    d = decide_mail(mx, addr("<x@slow.test>", true), rules, maps);
    EXPECT_EQ(d.verdict, Verdict::defer);
    EXPECT_EQ(d.reply_line(), "450 4.7.1 Try again later");
    auto ok = decide_mail(mx, addr("<>", true), rules, maps);
    EXPECT_EQ(ok.code, Code::A000);
    EXPECT_EQ(ok.reply, Reply::sender_ok);
}

TEST_F(PolicyTest, UnrecognisedAccessValueDefers) {
    auto d = decide_mail(mx, addr("<odd@weird.test>", true), rules, maps);
    EXPECT_EQ(d.verdict, Verdict::defer);
    EXPECT_NE(d.reason.find("unrecognised"), std::string::npos);
    // "OK" takes no text: "OK please" is not an exemption the operator can rely on.
    maps.add(MapId::access, "@ok.test", "OK please", "access.txt:21");
    EXPECT_EQ(decide_mail(mx, addr("<x@ok.test>", true), rules, maps).verdict, Verdict::defer);
    maps.add(MapId::access, "@fine.test", " ok ", "access.txt:22");
    EXPECT_EQ(decide_mail(mx, addr("<x@fine.test>", true), rules, maps).code, Code::A000);
}

TEST_F(PolicyTest, B120Recipient) {
    auto d = rcpt(mx, "<a@outside.test>", "<victim@example.test>");
    EXPECT_EQ(d.code, Code::B120);
    EXPECT_EQ(d.reply_line(), "554 5.7.1 no mail for you");
    sub.auth_user = "alice";
    EXPECT_EQ(rcpt(sub, "<alice@example.test>", "<anyone@blocked.test>").code, Code::B120);
}

TEST_F(PolicyTest, ReplyTextCannotEndTheReply) {
    maps.add(MapId::access, "evil@x.test", "REJECT bye\r\n250 2.0.0 ok", "access.txt:20");
    auto d = decide_mail(mx, addr("<evil@x.test>", true), rules, maps);
    EXPECT_EQ(d.reply_line().find('\n'), std::string::npos);
    EXPECT_EQ(d.reply_line().find('\r'), std::string::npos);
}

// ----- C130: the connection filter -----

TEST_F(PolicyTest, C130AllowListed) {
    rules.filter = FilterMode::allow_listed;
    rules.sources["connections.filter"] = SourceRef{"/etc/sluice/sluice.toml", 20, 1};
    mx.client = ip("192.0.2.5");
    auto d = decide_connect(mx, rules, maps);
    EXPECT_TRUE(d.accepted());
    EXPECT_EQ(d.code, Code::A000);
    EXPECT_EQ(d.source, "cf.txt:1");
    mx.client = ip("192.0.2.66");  // a longer deny inside the allowed range
    EXPECT_EQ(decide_connect(mx, rules, maps).code, Code::C130);
    mx.client = ip("8.8.8.8");  // not listed
    d = decide_connect(mx, rules, maps);
    EXPECT_EQ(d.code, Code::C130);
    EXPECT_EQ(d.reply, Reply::connection_refused);
    EXPECT_EQ(d.source, "/etc/sluice/sluice.toml:20");
}

TEST_F(PolicyTest, C130DenyListed) {
    rules.filter = FilterMode::deny_listed;
    mx.client = ip("233.252.0.9");
    auto d = decide_connect(mx, rules, maps);
    EXPECT_EQ(d.code, Code::C130);
    EXPECT_EQ(d.rule, "map connection_filter 233.252.0.0/24 (deny)");
    EXPECT_EQ(d.source, "cf.txt:3");
    mx.client = ip("8.8.8.8");
    EXPECT_TRUE(decide_connect(mx, rules, maps).accepted());
    mx.client = ip("233.252.1.1");  // neither allow nor deny: refused, not guessed
    EXPECT_EQ(decide_connect(mx, rules, maps).code, Code::C130);
}

TEST_F(PolicyTest, FilterOffAcceptsWithoutFilterLookup) {
    maps.set_unavailable(MapId::connection_filter);
    mx.client = ip("233.252.0.9");
    EXPECT_TRUE(decide_connect(mx, rules, maps).accepted());
}

// ----- T140: fail closed on every map on the path -----

TEST_F(PolicyTest, T140EveryMapOnThePath) {
    struct Case {
        MapId down;
        std::function<Decision(PolicyTest&)> run;
    };
    auto to = [](std::string_view from, std::string_view rcpt_to) {
        return [from, rcpt_to](PolicyTest& t) { return t.rcpt(t.mx, from, rcpt_to); };
    };
    auto mail = [](std::string_view from) {
        return
            [from](PolicyTest& t) { return decide_mail(t.mx, addr(from, true), t.rules, t.maps); };
    };
    Case cases[] = {
        {MapId::local_domains, to("<a@o.test>", "<x@maplocal.test>")},
        {MapId::local_domains, to("<a@o.test>", "<x@elsewhere.test>")},
        {MapId::local_addresses, to("<a@o.test>", "<alice@example.test>")},
        {MapId::catch_all, to("<a@o.test>", "<nobody@example.test>")},
        {MapId::access, to("<a@o.test>", "<alice@example.test>")},
        {MapId::access, mail("<a@o.test>")},
        {MapId::access, mail("<>")},
        {MapId::privileged_networks,
         [](PolicyTest& t) {
             t.rules.relay.privileged_networks = true;
             return t.rcpt(t.mx, "<a@o.test>", "<x@elsewhere.test>");
         }},
        {MapId::local_addresses,
         [](PolicyTest& t) {
             t.rules.relay.local_senders = true;
             return t.rcpt(t.mx, "<alice@example.test>", "<x@elsewhere.test>");
         }},
        {MapId::local_domains,
         [](PolicyTest& t) {
             t.rules.relay.local_senders = true;
             return t.rcpt(t.mx, "<alice@maplocal.test>", "<x@elsewhere.test>");
         }},
    };
    for (auto& c : cases) {
        maps = FakeMaps{};
        rules = Rules{};
        SetUp();
        maps.set_unavailable(c.down);
        auto d = c.run(*this);
        EXPECT_EQ(d.code, Code::T140) << map_name(c.down);
        EXPECT_EQ(d.verdict, Verdict::defer) << map_name(c.down);
        EXPECT_EQ(d.reply_line(), "451 4.3.0 Temporary lookup failure, try again later");
        EXPECT_NE(d.reason.find(std::string(map_name(c.down))), std::string::npos) << d.reason;
    }
}

TEST_F(PolicyTest, T140WhenTheAddressListCannotBeCounted) {
    struct DownCount : FakeMaps {
        Lookup::Status has_entries(MapId) const override { return Lookup::Status::unavailable; }
    } m;
    m.add(MapId::local_addresses, "alice@example.test");
    auto d = decide_rcpt(mx, addr("<a@o.test>", true), addr("<nobody@example.test>"), rules, m);
    EXPECT_EQ(d.code, Code::T140);
    EXPECT_EQ(
        decide_rcpt(mx, addr("<a@o.test>", true), addr("<alice@example.test>"), rules, m).code,
        Code::L101);
}

TEST_F(PolicyTest, T140AtConnectClosesWith421) {
    rules.filter = FilterMode::deny_listed;
    maps.set_unavailable(MapId::connection_filter);
    auto d = decide_connect(mx, rules, maps);
    EXPECT_EQ(d.code, Code::T140);
    EXPECT_EQ(d.reply, Reply::lookup_failed_connect);
    EXPECT_EQ(d.reply_line(), "421 4.3.0 Temporary lookup failure, try again later");
    EXPECT_TRUE(reply_spec(d.reply).closes);
    rules.filter = FilterMode::off;
    maps.set_unavailable(MapId::connection_filter, false);
    maps.set_unavailable(MapId::access);
    EXPECT_EQ(decide_connect(mx, rules, maps).code, Code::T140);
}

TEST_F(PolicyTest, NothingIsAcceptedWhenEveryMapIsDown) {
    maps.set_all_unavailable();
    rules.relay = RelayConfig{true, true, true, true, true, true};
    sub.auth_user = "alice";
    const char* froms[] = {"<>", "<alice@example.test>", "<a@outside.test>"};
    const char* tos[] = {"<alice@example.test>", "<Postmaster>", "<x@elsewhere.test>",
                         "<nobody@catch.test>", "<postmaster@example.test>"};
    for (FilterMode fm : {FilterMode::off, FilterMode::allow_listed, FilterMode::deny_listed}) {
        rules.filter = fm;
        for (const Facts* f : {&mx, &sub}) {
            EXPECT_FALSE(decide_connect(*f, rules, maps).accepted());
            for (auto from : froms) {
                EXPECT_FALSE(decide_mail(*f, addr(from, true), rules, maps).accepted()) << from;
                for (auto to : tos) {
                    auto d = rcpt(*f, from, to);
                    EXPECT_FALSE(d.accepted()) << from << " " << to;
                    EXPECT_EQ(d.code, Code::T140) << from << " " << to;
                }
            }
        }
    }
}

// ----- the rest of the API -----

TEST(PolicyApi, CodeNames) {
    EXPECT_EQ(code_name(Code::L101), "L101");
    EXPECT_EQ(code_name(Code::D113), "D113");
    EXPECT_EQ(code_name(Code::T140), "T140");
    EXPECT_EQ(code_name(Code::A000), "A000");
    EXPECT_EQ(verdict_name(Verdict::defer), "defer");
}

TEST(PolicyApi, DefaultDecisionFailsClosed) {
    Decision d;
    EXPECT_FALSE(d.accepted());
    EXPECT_EQ(d.code, Code::T140);
}

TEST(PolicyApi, RulesFromConfigKeepTheSources) {
    const char* text = R"([server]
hostname = "mx.example.test"

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
role = "mx"

[relay]
privileged_networks = true

[domains]
local = ["Example.TEST."]

[routes]
"*" = "smtp://127.0.0.1:2526?starttls=off"
)";
    auto loaded = load_config_text(text, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(loaded.ok());
    Rules r = Rules::from_config(*loaded.config);
    EXPECT_TRUE(r.relay.enabled);
    EXPECT_TRUE(r.relay.authenticated);
    EXPECT_TRUE(r.relay.privileged_networks);
    EXPECT_FALSE(r.relay.open);
    EXPECT_TRUE(r.is_config_local("example.test"));
    EXPECT_FALSE(r.is_config_local("Example.TEST."));
    EXPECT_EQ(r.hostname, "mx.example.test");
    EXPECT_EQ(r.source_of("relay.privileged_networks"), "/etc/sluice/sluice.toml:10");
    EXPECT_EQ(r.source_of("relay.open"), "default");

    FakeMaps maps;
    ASSERT_TRUE(maps.add_cidr(MapId::privileged_networks, "10.0.0.0/8", "office", "pn.txt:1"));
    Facts f;
    f.client = *parse_ip("10.9.8.7");
    auto d =
        decide_rcpt(f, Address{}, parse_path("<x@elsewhere.test>", false, false).address, r, maps);
    EXPECT_EQ(d.code, Code::G107);
    EXPECT_EQ(d.source, "pn.txt:1");
}

// Paths that do not parse: the marks of a relay trick make a D113 decision (501 5.1.3),
// anything else stays a plain syntax error (no decision).
TEST(UnparsableRouting, TrickMarksAreD113) {
    for (std::string_view path :
         {"<@a.test,@b.test:user@c.test>", "<user@example.test@elsewhere.test>",
          "<a%b@[2130706433]>", "<host!user>", "<\"a@b\">", "<user@[127.1]>"}) {
        auto d = unparsable_routing(path);
        ASSERT_TRUE(d.has_value()) << path;
        EXPECT_EQ(d->code, Code::D113) << path;
        EXPECT_EQ(d->verdict, Verdict::reject) << path;
        EXPECT_EQ(d->reply, Reply::routing_syntax) << path;  // 501 5.1.3
    }
    for (std::string_view path : {"<no-at-sign.>", "<user@exa mple.test>", "<user@-bad-.test>"}) {
        EXPECT_FALSE(unparsable_routing(path).has_value()) << path;
    }
}

// policy/codes.hpp: one row per code, read by the policy, the stats, the logs and
// log-report; every row names itself and says what it means.
TEST(PolicyCodes, EveryRowNamesItsCodeAndMeansSomething) {
    for (const auto& row : kCodes) {
        EXPECT_EQ(code_name(row.code), row.name);
        ASSERT_TRUE(find_code(row.name).has_value()) << row.name;
        EXPECT_EQ(*find_code(row.name), row.code);
        EXPECT_FALSE(code_meaning(row.name).empty()) << row.name;
    }
    EXPECT_EQ(code_meaning("D111"), "relay denied: no criterion met");
    EXPECT_FALSE(find_code("X999").has_value());
    EXPECT_EQ(code_meaning("X999"), "");
}
