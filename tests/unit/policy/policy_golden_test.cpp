// Golden table for the relay policy: one row per envelope, run through connect, MAIL and
// RCPT (decide_envelope), with the expected code and basic reply code. Then the open-relay
// battery: every trick of an outside probe, under every safe relay setting, is refused.

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "fake_maps.hpp"
#include "policy/policy.hpp"

using namespace sluice;
using namespace sluice::policy;
using sluice::policy::testing::FakeMaps;

namespace {

FakeMaps golden_maps() {
    FakeMaps m;
    m.add(MapId::local_domains, "maplocal.test");
    m.add(MapId::local_domains, "catch.test");
    m.add(MapId::local_addresses, "alice@example.test");
    m.add(MapId::local_addresses, "bob@example.test", "robert@internal.test");
    m.add(MapId::local_addresses, "carol@maplocal.test");
    m.add(MapId::catch_all, "catch.test", "catchall@catch.test");
    m.add_cidr(MapId::privileged_networks, "10.0.0.0/8", "office");
    m.add_cidr(MapId::privileged_networks, "2001:db8:1::/48", "lab");
    m.add_cidr(MapId::access, "203.0.113.0/24", "REJECT");
    m.add_cidr(MapId::access, "198.51.100.7", "DEFER");
    m.add(MapId::access, "spammer@bad.test", "REJECT");
    m.add(MapId::access, "@bad.test", "REJECT");
    m.add(MapId::access, "rcpt:victim@example.test", "REJECT");
    m.add_cidr(MapId::connection_filter, "192.0.2.0/24", "allow");
    m.add_cidr(MapId::connection_filter, "233.252.0.0/24", "deny");
    return m;
}

// Columns: listener client auth settings from to code reply.
// settings: '+'-joined tokens: auth nets senders open disabled none allow-listed
// deny-listed down=MAP ("-" for auth means not authenticated).
constexpr const char* kGolden = R"(
# local delivery
mx   192.0.2.10   -     auth          <a@outside.test>      <alice@example.test>      L101 250
mx   192.0.2.10   -     auth          <>                    <alice@example.test>      L101 250
mx   192.0.2.10   -     auth          <a@outside.test>      <Alice@EXAMPLE.TEST.>     L101 250
mx   192.0.2.10   -     auth          <a@outside.test>      <bob@example.test>        L101 250
mx   192.0.2.10   -     auth          <a@outside.test>      <carol@maplocal.test>     L101 250
mx   192.0.2.10   -     auth          <a@outside.test>      <Postmaster>              L101 250
mx   192.0.2.10   -     auth          <a@outside.test>      <postmaster@example.test> L101 250
mx   192.0.2.10   -     none          <a@outside.test>      <alice@example.test>      L101 250
mx   192.0.2.10   -     disabled      <a@outside.test>      <alice@example.test>      L101 250
mx   192.0.2.10   -     auth          <a@outside.test>      <nobody@catch.test>       L102 250
mx   192.0.2.10   -     auth          <a@outside.test>      <nobody@example.test>     L103 550
mx   192.0.2.10   -     auth          <a@outside.test>      <nobody@maplocal.test>    L103 550
# relay granted
sub  192.0.2.10   alice auth          <alice@example.test>  <x@elsewhere.test>        G108 250
sub  192.0.2.10   alice auth          <>                    <x@elsewhere.test>        G108 250
mx   10.1.2.3     -     auth+nets     <a@outside.test>      <x@elsewhere.test>        G107 250
mx   2001:db8:1::9 -    nets          <a@outside.test>      <x@elsewhere.test>        G107 250
mx   192.0.2.10   -     senders       <alice@example.test>  <x@elsewhere.test>        G106 250
mx   192.0.2.10   -     open          <a@outside.test>      <x@elsewhere.test>        G110 250
# relay denied
mx   192.0.2.10   -     auth          <a@outside.test>      <x@elsewhere.test>        D111 554
mx   192.0.2.10   -     auth          <alice@example.test>  <x@elsewhere.test>        D111 554
mx   192.0.2.10   -     nets          <a@outside.test>      <x@elsewhere.test>        D111 554
mx   192.0.2.10   -     none          <a@outside.test>      <x@elsewhere.test>        D111 554
sub  192.0.2.10   alice none          <alice@example.test>  <x@elsewhere.test>        D111 554
mx   192.0.2.10   -     senders       <fake@example.test>   <x@elsewhere.test>        D109 554
mx   192.0.2.10   -     auth+senders  <fake@example.test>   <x@elsewhere.test>        D109 554
sub  192.0.2.10   -     auth+senders  <fake@example.test>   <x@elsewhere.test>        D111 554
mx   192.0.2.10   -     nets+senders  <fake@example.test>   <x@elsewhere.test>        D111 554
sub  192.0.2.10   alice disabled      <alice@example.test>  <x@elsewhere.test>        D112 554
mx   10.1.2.3     -     disabled+nets <a@outside.test>      <x@elsewhere.test>        D112 554
mx   192.0.2.10   -     auth          <a@outside.test>      <x@example.test.evil.test> D111 554
# sender-specified routing, even when authenticated
sub  192.0.2.10   alice auth <alice@example.test> <user%else.test@example.test> D113 554
sub  192.0.2.10   alice auth <alice@example.test> <else.test!user@example.test> D113 554
sub  192.0.2.10   alice auth <alice@example.test> <"user@else.test"@example.test> D113 554
sub  192.0.2.10   alice auth <alice@example.test> <user@[192.0.2.1]> D113 554
sub  192.0.2.10   alice auth <alice@example.test> <@example.test:user@else.test> D113 501
mx   10.1.2.3     -     nets <a@outside.test> <user%else.test@example.test> D113 554
# block list
mx   203.0.113.5  -     auth <a@outside.test> <alice@example.test> B120 554
mx   192.0.2.10   -     auth <spammer@bad.test> <alice@example.test> B120 554
mx   192.0.2.10   -     auth <other@bad.test> <alice@example.test> B120 554
mx   192.0.2.10   -     auth <a@outside.test> <victim@example.test> B120 554
mx   198.51.100.7 -     auth <a@outside.test> <alice@example.test> B120 450
# connection filter
mx   192.0.2.10   -     auth+allow-listed <a@outside.test> <alice@example.test> L101 250
mx   8.8.8.8      -     auth+allow-listed <a@outside.test> <alice@example.test> C130 554
mx   233.252.0.1  -     auth+deny-listed <a@outside.test> <alice@example.test> C130 554
mx   8.8.8.8      -     auth+deny-listed <a@outside.test> <alice@example.test> L101 250
# maps down: fail closed
mx   8.8.8.8      -     auth+deny-listed+down=connection_filter <a@o.test> <u@example.test> T140 421
mx   192.0.2.10   -     auth+down=access <a@outside.test> <alice@example.test> T140 421
mx   192.0.2.10   -     auth+down=local_addresses <a@outside.test> <alice@example.test> T140 451
mx   192.0.2.10   -     auth+down=local_domains <a@outside.test> <x@else.test> T140 451
mx   192.0.2.10   -     auth+down=local_domains <a@outside.test> <alice@example.test> L101 250
mx   192.0.2.10   -     auth+down=catch_all <a@outside.test> <nobody@example.test> T140 451
mx   10.1.2.3     -     nets+down=privileged_networks <a@outside.test> <x@else.test> T140 451
sub  10.1.2.3     alice auth+nets+down=privileged_networks <a@o.test> <x@else.test> G108 250
)";

struct Row {
    int line = 0;
    std::string listener, client, auth, settings, from, to, code;
    int reply = 0;
};

std::vector<Row> parse_golden(const char* text) {
    std::vector<Row> rows;
    std::istringstream in(text);
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
        ++n;
        if (line.empty() || line[0] == '#') {
            continue;
        }
        std::istringstream f(line);
        Row r;
        r.line = n;
        f >> r.listener >> r.client >> r.auth >> r.settings >> r.from >> r.to >> r.code >> r.reply;
        EXPECT_FALSE(f.fail()) << "golden line " << n << ": " << line;
        rows.push_back(r);
    }
    return rows;
}

bool map_by_name(std::string_view name, MapId& out) {
    for (std::size_t i = 0; i < static_cast<std::size_t>(MapId::count_); ++i) {
        if (map_name(static_cast<MapId>(i)) == name) {
            out = static_cast<MapId>(i);
            return true;
        }
    }
    return false;
}

// Applies the settings column; false on an unknown token (a broken table row).
bool apply_settings(const std::string& settings, Rules& rules, FakeMaps& maps) {
    rules.relay = RelayConfig{true, false, false, false, false, false};
    std::istringstream in(settings);
    std::string tok;
    while (std::getline(in, tok, '+')) {
        if (tok == "auth") {
            rules.relay.authenticated = true;
        } else if (tok == "nets") {
            rules.relay.privileged_networks = true;
        } else if (tok == "senders") {
            rules.relay.local_senders = true;
        } else if (tok == "open") {
            rules.relay.open = rules.relay.acknowledge_open_relay = true;
        } else if (tok == "disabled") {
            rules.relay.enabled = false;
        } else if (tok == "none") {
        } else if (tok == "allow-listed") {
            rules.filter = FilterMode::allow_listed;
        } else if (tok == "deny-listed") {
            rules.filter = FilterMode::deny_listed;
        } else if (tok.rfind("down=", 0) == 0) {
            MapId id;
            if (!map_by_name(tok.substr(5), id)) {
                return false;
            }
            maps.set_unavailable(id);
        } else {
            return false;
        }
    }
    return true;
}

}  // namespace

TEST(PolicyGolden, Table) {
    auto rows = parse_golden(kGolden);
    ASSERT_GE(rows.size(), 50u);
    int checked = 0;
    for (const auto& row : rows) {
        SCOPED_TRACE("golden line " + std::to_string(row.line) + ": " + row.to);
        FakeMaps maps = golden_maps();
        Rules rules;
        rules.local_domains = {"example.test"};
        rules.hostname = "mx.example.test";
        ASSERT_TRUE(apply_settings(row.settings, rules, maps)) << row.settings;
        Facts f;
        f.listener = row.listener;
        ASSERT_TRUE(row.listener == "mx" || row.listener == "sub");
        f.role = row.listener == "mx" ? Role::mx : Role::submission;
        auto client = parse_ip(row.client);
        ASSERT_TRUE(client) << row.client;
        f.client = *client;
        if (row.auth != "-") {
            f.auth_user = row.auth;
        }
        auto from = parse_path(row.from, true, false);
        auto to = parse_path(row.to, false, false);
        ASSERT_TRUE(from.ok()) << row.from;
        ASSERT_TRUE(to.ok()) << row.to;
        Decision d = decide_envelope(f, from.address, to.address, rules, maps);
        EXPECT_EQ(code_name(d.code), row.code) << d.reason;
        EXPECT_EQ(reply_spec(d.reply).code, row.reply) << d.reply_line();
        EXPECT_EQ(d.accepted(), row.reply == 250) << d.reason;
        EXPECT_FALSE(d.rule.empty()) << d.reason;
        EXPECT_FALSE(d.reason.empty());
        ++checked;
    }
    EXPECT_EQ(checked, static_cast<int>(rows.size()));
}

// The probe of `sluicectl relay-test` and the manual open-relay test, from outside, with
// every safe setting:
// nothing may be accepted for a non-local destination. A parse error counts as refused.
TEST(PolicyGolden, OpenRelayBatteryIsRefused) {
    const char* recipients[] = {
        "<x@elsewhere.test>",
        "<x@ELSEWHERE.TEST.>",
        "<x%elsewhere.test@example.test>",
        "<\"x%elsewhere.test\"@example.test>",
        "<x%elsewhere.test@[192.0.2.25]>",
        "<elsewhere.test!x@example.test>",
        "<\"x@elsewhere.test\"@example.test>",
        "<\"x@elsewhere.test\"@[192.0.2.25]>",
        "<x@elsewhere.test@example.test>",
        "<x@example.test@elsewhere.test>",
        "<@example.test:x@elsewhere.test>",
        "<@example.test,@example.test:x@elsewhere.test>",
        "<x@[192.0.2.25]>",
        "<x@[IPv6:2001:db8::25]>",
        "<x@3221225497>",
        "<x@0xC0000219>",
        "<x@192.0.2.25>",
        "<x@example.test.elsewhere.test>",
        "<x@elsewhere.test.example>",
        "<x@sub.example.test>",
        "<x@example.test.>",  // local, and must not be L101 unless known: L103
        "<Postmaster@elsewhere.test>",
        "<x@elsewhere.test >",
        "< x@elsewhere.test>",
    };
    const char* senders[] = {"<a@outside.test>", "<fake@example.test>", "<>",
                             "<postmaster@example.test>", "<x@[192.0.2.25]>"};
    const char* settings[] = {"auth", "auth+nets", "nets", "auth+senders", "none", "disabled"};
    const char* clients[] = {"192.0.2.99", "203.0.114.1", "2001:db8:2::1", "::ffff:11.0.0.1"};
    int probes = 0;
    for (const char* setting : settings) {
        for (const char* client : clients) {
            for (Role role : {Role::mx, Role::submission}) {
                FakeMaps maps = golden_maps();
                Rules rules;
                rules.local_domains = {"example.test"};
                ASSERT_TRUE(apply_settings(setting, rules, maps));
                Facts f;
                f.role = role;
                f.client = *parse_ip(client);
                for (const char* s : senders) {
                    auto from = parse_path(s, true, false);
                    ASSERT_TRUE(from.ok()) << s;
                    for (const char* r : recipients) {
                        ++probes;
                        auto to = parse_path(r, false, false);
                        if (!to.ok()) {
                            continue;
                        }
                        auto d = decide_envelope(f, from.address, to.address, rules, maps);
                        EXPECT_FALSE(d.accepted())
                            << setting << " " << client << " " << s << " " << r << " -> "
                            << code_name(d.code) << " " << d.reason;
                    }
                }
            }
        }
    }
    EXPECT_GT(probes, 5000);
}
