// The open-relay lint (policy/lint.hpp) over configs and map entries.

#include "policy/lint.hpp"

#include <gtest/gtest.h>

using namespace sluice;
using namespace sluice::policy;

namespace {

const char* kBase = R"([server]
hostname = "mx.example.test"
nat_router = "192.168.1.1"

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
role = "mx"

[[listener]]
name = "submission"
address = "127.0.0.1:2587"
role = "submission"
tls = "off"

[relay]
privileged_networks = true
)";

std::shared_ptr<const Config> config(const std::string& extra = "") {
    auto r = load_config_text(std::string(kBase) + extra, "/etc/sluice/sluice.toml");
    std::string all;
    for (const auto& d : r.diagnostics) {
        all += d.str() + "\n";
    }
    EXPECT_TRUE(r.ok()) << all;
    return r.config;
}

std::string text(const std::vector<Diagnostic>& ds) {
    std::string s;
    for (const auto& d : ds) {
        s += d.str() + "\n";
    }
    return s;
}

int errors(const std::vector<Diagnostic>& ds) {
    int n = 0;
    for (const auto& d : ds) {
        n += d.severity == Diagnostic::Severity::error;
    }
    return n;
}

LintMaps privileged(std::vector<LintEntry> nets) {
    LintMaps m;
    m.privileged_networks = std::move(nets);
    return m;
}

}  // namespace

TEST(Lint, TightNetworksAreClean) {
    auto cfg = config();
    ASSERT_TRUE(cfg);
    auto d = lint(*cfg, privileged({{"10.1.2.0/24", "office", "/m/priv.txt:1"},
                                    {"2001:db8:1:2::/64", "v6 office", "/m/priv.txt:2"}}));
    // Only the submission listener without TLS is worth a word.
    ASSERT_EQ(d.size(), 1u) << text(d);
    EXPECT_EQ(d[0].severity, Diagnostic::Severity::warning);
    EXPECT_NE(d[0].message.find("listener \"submission\""), std::string::npos);
    EXPECT_EQ(d[0].where.line, 10);
}

TEST(Lint, WidePrivilegedNetworksAreErrors) {
    auto cfg = config();
    ASSERT_TRUE(cfg);
    auto d = lint(*cfg, privileged({
                            {"0.0.0.0/0", "", "/m/priv.txt:1"},
                            {"::/0", "", "/m/priv.txt:2"},
                            {"10.0.0.0/8", "", "/m/priv.txt:3"},
                            {"2001:db8::/32", "", "/m/priv.txt:4"},
                            {"::/80", "", "/m/priv.txt:5"},
                            {"172.16.0.0/12", "", "/m/priv.txt:6"},      // warning: wider than /16
                            {"2001:db8:100::/40", "", "/m/priv.txt:7"},  // warning
                            {"10.0.0.0/9", "", "/m/priv.txt:8"},         // warning, not error
                        }));
    auto s = text(d);
    EXPECT_EQ(errors(d), 5) << s;
    EXPECT_NE(s.find("/m/priv.txt:1:1: privileged_networks: \"0.0.0.0/0\" is /0, everybody"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/m/priv.txt:2:1: privileged_networks: \"::/0\" is /0"), std::string::npos);
    EXPECT_NE(s.find("/m/priv.txt:3:1: privileged_networks: \"10.0.0.0/8\" is /8, far wider"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/m/priv.txt:4:1: privileged_networks: \"2001:db8::/32\" is /32"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/m/priv.txt:5:1: privileged_networks: \"::/80\" contains every IPv4"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/m/priv.txt:6:1: warning: privileged_networks: \"172.16.0.0/12\""),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/m/priv.txt:7:1: warning:"), std::string::npos) << s;
    EXPECT_NE(s.find("/m/priv.txt:8:1: warning:"), std::string::npos) << s;
}

TEST(Lint, UnusedMapOnlyWarns) {
    // relay.privileged_networks left at its default (off).
    auto r = load_config_text(std::string(kBase).substr(0, std::string(kBase).find("[relay]")),
                              "/etc/sluice/sluice.toml");
    ASSERT_TRUE(r.ok());
    auto d = lint(*r.config, privileged({{"0.0.0.0/0", "", "/m/priv.txt:1"}}));
    EXPECT_EQ(errors(d), 0) << text(d);
    EXPECT_NE(text(d).find("unused while relay.privileged_networks is off"), std::string::npos);
}

TEST(Lint, NatRouterInsidePrivilegedNetwork) {
    auto cfg = config();
    ASSERT_TRUE(cfg);
    auto d = lint(*cfg, privileged({{"192.168.0.0/16", "lan", "/m/priv.txt:4"},
                                    {"192.168.2.0/24", "lab", "/m/priv.txt:5"}}));
    ASSERT_EQ(errors(d), 1) << text(d);
    EXPECT_NE(text(d).find("/m/priv.txt:4:1: privileged_networks: \"192.168.0.0/16\" contains "
                           "server.nat_router 192.168.1.1"),
              std::string::npos)
        << text(d);
}

TEST(Lint, LoadBalancerInsidePrivilegedNetwork) {
    auto cfg = config(R"(
[[listener]]
name = "mx-lb"
address = "127.0.0.1:2526"
proxy_protocol = ["10.1.2.10/32", "10.9.0.0/24"]
)");
    ASSERT_TRUE(cfg);
    auto d = lint(*cfg, privileged({{"10.1.2.0/24", "dmz", "/m/priv.txt:2"},
                                    {"10.9.0.128/25", "lb-net", "/m/priv.txt:3"},
                                    {"10.3.0.0/24", "office", "/m/priv.txt:4"}}));
    EXPECT_EQ(errors(d), 0) << text(d);
    EXPECT_NE(text(d).find("/m/priv.txt:2:1: warning: privileged_networks: \"10.1.2.0/24\" "
                           "overlaps the load balancer 10.1.2.10/32 of listener \"mx-lb\""),
              std::string::npos)
        << text(d);
    EXPECT_NE(text(d).find("/m/priv.txt:3:1: warning: privileged_networks: \"10.9.0.128/25\" "
                           "overlaps the load balancer 10.9.0.0/24"),
              std::string::npos)
        << text(d);
    EXPECT_EQ(text(d).find("10.3.0.0/24"), std::string::npos) << text(d);
}

TEST(Lint, EmptyPrivilegedNetworksMap) {
    auto cfg = config();
    ASSERT_TRUE(cfg);
    LintMaps m;
    m.privileged_networks_path = "/var/lib/sluice/maps/privileged_networks.mdb";
    auto d = lint(*cfg, m);
    EXPECT_EQ(errors(d), 0);
    EXPECT_NE(text(d).find("/etc/sluice/sluice.toml:17:23: warning: relay.privileged_networks = "
                           "true but map privileged_networks is empty"),
              std::string::npos)
        << text(d);
}

// An unreadable map is reported by the map check (T140); it is not also called empty.
TEST(Lint, UnreadablePrivilegedNetworksMapIsNotAlsoEmpty) {
    auto cfg = config();
    ASSERT_TRUE(cfg);
    LintMaps m;
    m.privileged_networks_path = "/var/lib/sluice/maps/privileged_networks.mdb";
    m.privileged_networks_unreadable = true;
    auto d = lint(*cfg, m);
    EXPECT_EQ(text(d).find("is empty"), std::string::npos) << text(d);
}

TEST(Lint, OpenRelay) {
    Config cfg = *config();
    cfg.relay.open = true;
    cfg.relay.acknowledge_open_relay = false;
    auto d = lint(cfg, privileged({{"10.1.2.0/24", "", "f:1"}}));
    EXPECT_EQ(errors(d), 1) << text(d);
    EXPECT_NE(text(d).find("open relay and is not acknowledged"), std::string::npos);

    auto acknowledged = config("open = true\nacknowledge_open_relay = true\n");
    ASSERT_TRUE(acknowledged);
    d = lint(*acknowledged, privileged({{"10.1.2.0/24", "", "f:1"}}));
    EXPECT_EQ(errors(d), 0) << text(d);
    EXPECT_NE(text(d).find("/etc/sluice/sluice.toml:18:8: warning: relay.open = true"),
              std::string::npos)
        << text(d);
}

TEST(Lint, LocalSendersWithMxListener) {
    auto cfg = config("local_senders = true\n");
    ASSERT_TRUE(cfg);
    auto d = lint(*cfg, privileged({{"10.1.2.0/24", "", "f:1"}}));
    EXPECT_EQ(errors(d), 0);
    EXPECT_NE(text(d).find("/etc/sluice/sluice.toml:18:17: warning: relay.local_senders = true "
                           "with mx listener \"mx\""),
              std::string::npos)
        << text(d);
}

TEST(Lint, AuthWithoutTls) {
    auto r = load_config_text(R"([[listener]]
name = "sub"
address = "127.0.0.1:2587"
role = "submission"
tls = "off"
auth_without_tls = true
)",
                              "/c.toml");
    ASSERT_TRUE(r.ok());
    auto d = lint(*r.config, {});
    ASSERT_EQ(d.size(), 1u) << text(d);
    EXPECT_EQ(d[0].str(),
              "/c.toml:1:1: warning: listener \"sub\": auth_without_tls = true offers "
              "AUTH without TLS (passwords in clear)");
}

TEST(Lint, OverlappingAllowDeny) {
    auto cfg = config("[connections]\nfilter = \"deny-listed\"\n");
    ASSERT_TRUE(cfg);
    LintMaps m;
    m.privileged_networks = {{"10.1.2.0/24", "", "p:1"}};
    m.connection_filter = {
        {"198.51.100.0/24", "deny", "/m/filter.txt:1"},
        {"198.51.100.7/32", "allow", "/m/filter.txt:2"},
        {"198.51.100.8/29", "deny", "/m/filter.txt:3"},  // same action as its container: fine
        {"203.0.113.0/24", "allow", "/m/filter.txt:4"},  // disjoint: fine
        {"::/0", "allow", "/m/filter.txt:5"},            // contains all three denies
        {"2001:db8::/32", "up", "/m/filter.txt:6"},      // bad value
    };
    auto d = lint(*cfg, m);
    auto s = text(d);
    EXPECT_EQ(errors(d), 1) << s;
    EXPECT_NE(s.find("/m/filter.txt:2:1: warning: connection_filter: \"198.51.100.7/32\" allow "
                     "overlaps \"198.51.100.0/24\" deny (/m/filter.txt:1)"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/m/filter.txt:1:1: warning: connection_filter: \"198.51.100.0/24\" deny "
                     "overlaps \"::/0\" allow (/m/filter.txt:5)"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("/m/filter.txt:3:1: warning: connection_filter: \"198.51.100.8/29\" deny "
                     "overlaps \"::/0\" allow"),
              std::string::npos)
        << s;
    EXPECT_EQ(s.find("/m/filter.txt:4:1"), std::string::npos) << s;
    EXPECT_NE(s.find("/m/filter.txt:6:1: connection_filter: \"2001:db8::/32\": value \"up\""),
              std::string::npos)
        << s;
}

TEST(Lint, AllowListedFilterWithEmptyMap) {
    auto cfg = config("[connections]\nfilter = \"allow-listed\"\n");
    ASSERT_TRUE(cfg);
    auto d = lint(*cfg, privileged({{"10.1.2.0/24", "", "p:1"}}));
    EXPECT_NE(text(d).find("every connection is refused"), std::string::npos) << text(d);
}

TEST(Lint, UnparsableKeysAreErrors) {
    auto cfg = config();
    ASSERT_TRUE(cfg);
    auto d = lint(*cfg, privileged({{"10.0.0.1/8", "", "p:7"}, {"lan", "", "p:8"}}));
    EXPECT_EQ(errors(d), 2) << text(d);
    EXPECT_NE(text(d).find("p:7:1: privileged_networks: key \"10.0.0.1/8\": host bits set"),
              std::string::npos)
        << text(d);
}
