#include "common/config.hpp"

#include <gtest/gtest.h>

#include <algorithm>

using namespace sluice;

namespace {

const char* kGood = R"(
[server]
hostname = "mx.example.test"
shards = 2

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
role = "mx"

[limits]
message_size = "10MiB"
command_timeout = "30s"

[domains]
local = ["Example.TEST."]

[routes]
"example.test" = "maildir:mail"
"*" = "smtp://127.0.0.1:2526?starttls=off"
)";

std::string all(const LoadResult& r) {
    std::string s;
    for (const auto& d : r.diagnostics) {
        s += d.str() + "\n";
    }
    return s;
}

}  // namespace

TEST(Config, LoadsAndAppliesDefaults) {
    auto r = load_config_text(kGood, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(r.ok()) << all(r);
    const auto& c = *r.config;
    EXPECT_EQ(c.server.hostname, "mx.example.test");
    EXPECT_EQ(c.server.shards, 2u);
    EXPECT_EQ(c.server.max_connections, 10000u);
    EXPECT_EQ(c.limits.message_size, 10u << 20);
    EXPECT_EQ(c.limits.recipients, 100u);
    EXPECT_EQ(c.limits.command_timeout, Millis(30'000));
    EXPECT_EQ(c.limits.data_timeout, Millis(600'000));
    EXPECT_TRUE(c.relay.enabled);
    EXPECT_TRUE(c.relay.authenticated);
    EXPECT_FALSE(c.relay.open);
    EXPECT_EQ(c.spool.retry.size(), 5u);
    ASSERT_EQ(c.domains.local.size(), 1u);
    EXPECT_EQ(c.domains.local[0], "example.test");
    ASSERT_EQ(c.listeners.size(), 1u);
    EXPECT_EQ(c.listeners[0].address.port, 2525);
    const Route* local = c.route_for("example.test");
    ASSERT_NE(local, nullptr);
    EXPECT_EQ(local->transport.kind, Transport::Kind::maildir);
    EXPECT_EQ(local->transport.path, "/etc/sluice/mail");  // relative to the config file
    const Route* other = c.route_for("elsewhere.test");
    ASSERT_NE(other, nullptr);
    EXPECT_EQ(other->transport.port, 2526);
    EXPECT_EQ(other->transport.starttls, TlsMode::off);
    EXPECT_EQ(c.sources.at("limits.message_size").line, 12);
}

TEST(Config, ReportsEveryErrorWithPosition) {
    const char* bad = R"([server]
shards = "two"
colour = "blue"

[limits]
message_size = "25 parsecs"
recipients = 0
command_timeout = 300

[[listener]]
name = "mx"
address = "localhost:25"
)";
    auto r = load_config_text(bad, "/tmp/x.toml");
    EXPECT_FALSE(r.ok());
    auto s = all(r);
    EXPECT_NE(s.find("/tmp/x.toml:2:10: server.shards: expected integer"), std::string::npos) << s;
    EXPECT_NE(s.find("/tmp/x.toml:3:1: unknown key \"server.colour\""), std::string::npos) << s;
    EXPECT_NE(s.find("/tmp/x.toml:6:16: limits.message_size: unknown size unit"), std::string::npos)
        << s;
    EXPECT_NE(s.find("/tmp/x.toml:7:14: limits.recipients: 0 (allowed 1..100000) is out of range"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/tmp/x.toml:8:19: limits.command_timeout: expected a duration"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/tmp/x.toml:12:11: listener.address: not an IP address"), std::string::npos)
        << s;
    // Sorted by position.
    EXPECT_LT(s.find(":2:10:"), s.find(":3:1:"));
    EXPECT_LT(s.find(":8:19:"), s.find(":12:11:"));
}

TEST(Config, SyntaxErrorHasPosition) {
    auto r = load_config_text("[server\nshards = 1\n", "/tmp/y.toml");
    ASSERT_FALSE(r.ok());
    ASSERT_EQ(r.diagnostics.size(), 1u);
    EXPECT_EQ(r.diagnostics[0].where.line, 1);
    EXPECT_EQ(r.diagnostics[0].str().rfind("/tmp/y.toml:1:", 0), 0u);
}

TEST(Config, OpenRelayRefusedWithoutAcknowledgement) {
    std::string t = std::string(kGood) + "\n[relay]\nopen = true\n";
    auto r = load_config_text(t, "/tmp/z.toml");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(all(r).find("open relay"), std::string::npos);
    t += "acknowledge_open_relay = true\n";
    EXPECT_TRUE(load_config_text(t, "/tmp/z.toml").ok());
}

TEST(Config, ListenerChecks) {
    const char* dup = R"(
[[listener]]
name = "a"
address = "127.0.0.1:25"
[[listener]]
name = "a"
address = "127.0.0.1:25"
tls = "sometimes"
[[listener]]
name = "sub"
address = "192.0.2.1:587"
auth_without_tls = true
)";
    auto r = load_config_text(dup, "/tmp/l.toml");
    ASSERT_FALSE(r.ok());
    auto s = all(r);
    EXPECT_NE(s.find("is not one of off|optional|required|implicit"), std::string::npos) << s;
    EXPECT_NE(s.find("auth_without_tls is only allowed on loopback"), std::string::npos) << s;
}

TEST(Config, BadRoutes) {
    const char* t = R"(
[[listener]]
name = "a"
address = "127.0.0.1:25"
[routes]
"example.test" = "ftp://x"
"b.test" = "smtp://127.0.0.1"
"c.test" = "smtp://127.0.0.1:25?starttls=maybe"
)";
    auto r = load_config_text(t, "/tmp/r.toml");
    ASSERT_FALSE(r.ok());
    auto s = all(r);
    EXPECT_NE(s.find("unknown transport"), std::string::npos) << s;
    EXPECT_NE(s.find("needs HOST:PORT"), std::string::npos) << s;
    EXPECT_NE(s.find("unknown option \"starttls=maybe\""), std::string::npos) << s;
}

TEST(Config, OutboundQueueMemory) {
    auto r = load_config_text(kGood, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(r.ok()) << all(r);
    EXPECT_EQ(r.config->limits.outbound_queue_memory, 128ull << 20);
    std::string text = kGood;
    auto at = text.find("[limits]\n") + 9;
    text.insert(at, "outbound_queue_memory = \"1KiB\"\n");
    const auto line = std::to_string(std::count(text.begin(), text.begin() + at, '\n') + 1);
    auto small = load_config_text(text, "/tmp/x.toml");
    EXPECT_FALSE(small.ok());
    EXPECT_NE(all(small).find("/tmp/x.toml:" + line +
                              ":25: limits.outbound_queue_memory: \"1KiB\" (allowed 64KiB.."),
              std::string::npos)
        << all(small);
}

TEST(Config, ProxyProtocolListeners) {
    auto r = load_config_text(kGood, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(r.ok()) << all(r);
    EXPECT_EQ(r.config->limits.proxy_timeout, Millis(5000));
    EXPECT_TRUE(r.config->listeners[0].proxy_protocol.empty());
    const char* t = R"(
[[listener]]
name = "lb"
address = "127.0.0.1:25"
proxy_protocol = ["10.0.0.10", "2001:db8::/64"]
[[listener]]
name = "any4"
address = "127.0.0.1:26"
proxy_protocol = ["10.0.0.10/32", "0.0.0.0/0"]
[[listener]]
name = "any6"
address = "127.0.0.1:27"
proxy_protocol = ["::/0"]
[limits]
proxy_timeout = "1s"
)";
    auto bad = load_config_text(t, "/tmp/p.toml");
    ASSERT_FALSE(bad.ok());
    auto s = all(bad);
    // proxy-protocol.txt §2: at least 3 s, to cover a TCP retransmit.
    EXPECT_NE(s.find("limits.proxy_timeout: \"1s\" (allowed 3s.."), std::string::npos) << s;
    EXPECT_NE(s.find("listener \"any4\": proxy_protocol 0.0.0.0/0 trusts every peer"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("listener \"any6\": proxy_protocol ::/0 trusts every peer"), std::string::npos)
        << s;
    EXPECT_EQ(s.find("listener \"lb\""), std::string::npos) << s;
}

TEST(Config, SpoolGroupCommitKeys) {
    auto r = load_config_text(kGood, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(r.ok()) << all(r);
    EXPECT_EQ(r.config->spool.commit_delay, Millis(1));
    EXPECT_EQ(r.config->spool.syncs_in_flight, 1u);

    auto zero =
        load_config_text(std::string(kGood) + "[spool]\ncommit_delay = \"0ms\"\n", "/tmp/x.toml");
    ASSERT_TRUE(zero.ok()) << all(zero);
    EXPECT_EQ(zero.config->spool.commit_delay, Millis(0));  // never wait

    auto bad = load_config_text(
        std::string(kGood) + "[spool]\ncommit_delay = \"1s\"\nsyncs_in_flight = 0\n",
        "/tmp/x.toml");
    EXPECT_FALSE(bad.ok());
    auto s = all(bad);
    EXPECT_NE(s.find("/tmp/x.toml:22:16: spool.commit_delay: \"1s\" (allowed 0s..100ms) is out "
                     "of range"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/tmp/x.toml:23:19: spool.syncs_in_flight: 0 (allowed 1..16) is out of range"),
              std::string::npos)
        << s;
}

TEST(Config, DnsSectionDefaultsAndMxRoutes) {
    auto r = load_config_text(kGood, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(r.ok()) << all(r);
    const auto& d = r.config->dns;
    EXPECT_TRUE(d.servers.empty());  // /etc/resolv.conf
    EXPECT_EQ(d.timeout, Millis(5000));
    EXPECT_EQ(d.attempts, 3u);
    EXPECT_EQ(d.cache_entries, 100000u);
    EXPECT_EQ(d.cache_memory, 64u << 20);
    EXPECT_EQ(d.min_ttl, Millis(0));
    EXPECT_EQ(d.max_ttl, Millis(86'400'000));
    EXPECT_FALSE(d.prefer_ipv4);
    EXPECT_EQ(d.mx_addresses, 5u);

    std::string text = std::string(kGood) +
                       "\"other.test\" = \"mx?starttls=required\"\n"
                       "[dns]\nservers = [\"127.0.0.1:5353\", \"[::1]:53\", \"192.0.2.1\"]\n"
                       "timeout = \"500ms\"\nprefer = \"ipv4\"\nmax_ttl = \"1h\"\n";
    auto m = load_config_text(text, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(m.ok()) << all(m);
    EXPECT_EQ(m.config->dns.servers.size(), 3u);
    EXPECT_TRUE(m.config->dns.prefer_ipv4);
    const Route* route = m.config->route_for("other.test");
    ASSERT_NE(route, nullptr);
    EXPECT_EQ(route->transport.kind, Transport::Kind::mx);
    EXPECT_EQ(route->transport.port, 25);
    EXPECT_EQ(route->transport.starttls, TlsMode::required);
}

TEST(Config, DnsSectionErrors) {
    std::string text = std::string(kGood) +
                       "\"other.test\" = \"mx?bogus=1\"\n"
                       "[dns]\nservers = [\"dns.example\"]\nattempts = 0\n"
                       "min_ttl = \"30m\"\nmax_ttl = \"10m\"\n";
    auto r = load_config_text(text, "/etc/sluice/sluice.toml");
    EXPECT_FALSE(r.ok());
    auto s = all(r);
    EXPECT_NE(s.find("unknown option \"bogus=1\""), std::string::npos) << s;
    EXPECT_NE(s.find("dns.servers: \"dns.example\" is not IP"), std::string::npos) << s;
    EXPECT_NE(s.find("dns.attempts: 0 (allowed 1..10) is out of range"), std::string::npos) << s;
    EXPECT_NE(s.find("dns.min_ttl: longer than dns.max_ttl"), std::string::npos) << s;
}

TEST(Config, ServesAsSluiceByDefaultAndNeverAsRootUnlessAllowed) {
    auto r = load_config_text(kGood, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(r.ok()) << all(r);
    EXPECT_EQ(r.config->server.user, "sluice");
    EXPECT_EQ(r.config->server.group, "sluice");
    EXPECT_FALSE(r.config->server.allow_root);

    std::string text = kGood;
    text.replace(text.find("shards = 2"), 10,
                 "shards = 2\nuser = \"mail\"\ngroup = \"mail\"\nallow_root = true");
    r = load_config_text(text, "/etc/sluice/sluice.toml");
    ASSERT_TRUE(r.ok()) << all(r);
    EXPECT_EQ(r.config->server.user, "mail");
    EXPECT_EQ(r.config->server.group, "mail");
    EXPECT_TRUE(r.config->server.allow_root);

    // An empty name or a wrong type is an error at its position, not a silent default.
    text = kGood;
    text.replace(text.find("shards = 2"), 10, "shards = 2\nuser = \"\"\nallow_root = \"yes\"");
    r = load_config_text(text, "/etc/sluice/sluice.toml");
    EXPECT_FALSE(r.ok());
    std::string errors = all(r);
    EXPECT_NE(errors.find(":5:"), std::string::npos) << errors;  // user
    EXPECT_NE(errors.find(":6:"), std::string::npos) << errors;  // allow_root
}

TEST(Config, SchemaDescribesTheServiceIdentityKeys) {
    std::string schema = describe_schema();
    for (const char* key : {"server.user ", "server.group ", "server.allow_root "}) {
        EXPECT_NE(schema.find(key), std::string::npos) << key;
    }
}
