// The text form of the maps: every error reported with its position, keys normalised as
// the policy compares them.

#include "storage/map_source.hpp"

#include <gtest/gtest.h>

using namespace sluice;
using namespace sluice::storage;

namespace {

std::string all(const ParseResult& r) {
    std::string s;
    for (const auto& d : r.diagnostics) {
        s += d.str() + "\n";
    }
    return s;
}

bool has(const ParseResult& r, const std::string& line) {
    return all(r).find(line) != std::string::npos;
}

}  // namespace

TEST(MapSource, ReportsEveryErrorWithPosition) {
    const char* text =
        "# office and lab\n"
        "10.0.0.0/8        allow\n"
        "10.1.0.1/16       deny\n"   // host bits set
        "  192.0.2.0/24    maybe\n"  // bad value, at its column
        "not-an-ip         deny\n"
        "10.0.0.0/8        deny\n"   // duplicate of line 2
        "2001:db8::/129    allow\n"  // prefix too long
        "2001:db8::/32\n"            // missing value
        "\n"
        "198.51.100.7      ALLOW\n";  // fine: value is case-insensitive
    auto r = parse_map_text(MapId::connection_filter, text, "/etc/sluice/filter.txt");
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.diagnostics.size(), 6u) << all(r);
    EXPECT_TRUE(has(r, "/etc/sluice/filter.txt:3:1: connection_filter: bad CIDR: host bits set"))
        << all(r);
    EXPECT_TRUE(has(r, "/etc/sluice/filter.txt:4:19: connection_filter: bad value \"maybe\""))
        << all(r);
    EXPECT_TRUE(has(r, "/etc/sluice/filter.txt:5:1: connection_filter: bad CIDR: not an IP"))
        << all(r);
    EXPECT_TRUE(has(r,
                    "/etc/sluice/filter.txt:6:1: connection_filter: duplicate key "
                    "\"10.0.0.0/8\" (first at /etc/sluice/filter.txt:2)"))
        << all(r);
    EXPECT_TRUE(has(r, "/etc/sluice/filter.txt:7:1: connection_filter: bad CIDR: bad prefix"))
        << all(r);
    EXPECT_TRUE(has(r, "/etc/sluice/filter.txt:8:14: connection_filter: missing value")) << all(r);
    // The valid lines are still parsed (the caller publishes nothing when any error exists).
    ASSERT_EQ(r.entries.size(), 2u);
    EXPECT_EQ(r.entries[1].key, "198.51.100.7/32");
    EXPECT_EQ(r.entries[1].value, "allow");
    EXPECT_EQ(r.entries[1].source, "/etc/sluice/filter.txt:10");
}

TEST(MapSource, DuplicateAfterNormalisation) {
    auto r = parse_map_text(MapId::local_domains, "Example.TEST\nexample.test.\n", "d.txt");
    ASSERT_EQ(r.diagnostics.size(), 1u);
    EXPECT_EQ(r.diagnostics[0].str(),
              "d.txt:2:1: local_domains: duplicate key \"example.test\" (first at d.txt:1)");
    // ::ffff:a.b.c.d is the IPv4 address; a bare address is a /32.
    auto c =
        parse_map_text(MapId::privileged_networks, "192.0.2.1 a\n::ffff:192.0.2.1/32 b\n", "p.txt");
    ASSERT_EQ(c.diagnostics.size(), 1u) << all(c);
    EXPECT_NE(c.diagnostics[0].message.find("duplicate key \"192.0.2.1/32\""), std::string::npos);
}

TEST(MapSource, CommentsBlankLinesCrlfAndValues) {
    const char* text =
        "# comment\r\n"
        "   \t\r\n"
        "  # indented comment\n"
        "192.0.2.0/24   REJECT spam # not a comment here  \r\n"
        "@Bad.Example.   defer  try later\n"
        "rcpt:Abuse@Example.TEST ok\n";
    auto r = parse_map_text(MapId::access, text, "a.txt");
    ASSERT_TRUE(r.ok()) << all(r);
    ASSERT_EQ(r.entries.size(), 3u);
    EXPECT_EQ(r.entries[0].key, "192.0.2.0/24");
    EXPECT_EQ(r.entries[0].value, "REJECT spam # not a comment here");
    EXPECT_EQ(r.entries[0].source, "a.txt:4");
    EXPECT_EQ(r.entries[1].key, "@bad.example");
    EXPECT_EQ(r.entries[1].value, "DEFER try later");
    EXPECT_EQ(r.entries[2].key, "rcpt:Abuse@example.test");
    EXPECT_EQ(r.entries[2].value, "OK");
}

TEST(MapSource, AccessErrors) {
    const char* text =
        "spammer@example.test  OK go ahead\n"  // OK takes no text
        "spammer@example.test  BLOCK\n"        // bad value (and not a duplicate: line 1 failed)
        "example.test          REJECT\n"       // neither CIDR nor address form
        "rcpt:a%b@example.test REJECT\n";      // routing in the local part
    auto r = parse_map_text(MapId::access, text, "a.txt");
    EXPECT_EQ(r.diagnostics.size(), 4u) << all(r);
    EXPECT_TRUE(has(r, "a.txt:1:23: access: OK takes no text")) << all(r);
    EXPECT_TRUE(has(r, "a.txt:2:23: access: bad value \"BLOCK\"")) << all(r);
    EXPECT_TRUE(has(r, "a.txt:3:1: access: bad key \"example.test\"")) << all(r);
    EXPECT_TRUE(has(r, "a.txt:4:1: access: \"%\" in local part")) << all(r);
}

TEST(MapSource, AddressNormalisation) {
    std::string err;
    EXPECT_EQ(normalise_address("John.Smith@Example.TEST.", err), "John.Smith@example.test");
    EXPECT_EQ(normalise_address("\"john\"@example.test", err), "john@example.test");
    EXPECT_EQ(normalise_address("\"john smith\"@example.test", err), "\"john smith\"@example.test");
    EXPECT_FALSE(normalise_address("john@[192.0.2.1]", err));
    EXPECT_NE(err.find("literal"), std::string::npos);
    EXPECT_FALSE(normalise_address("a!b@example.test", err));
    EXPECT_FALSE(normalise_address("\"a@b\"@example.test", err));
    EXPECT_FALSE(normalise_address("@relay.test:user@example.test", err));
    EXPECT_FALSE(normalise_address("<user@example.test>", err));
    EXPECT_FALSE(normalise_address("user@example.123", err));
    EXPECT_FALSE(normalise_address("user@-bad.test", err));
    EXPECT_FALSE(normalise_address("user@exa_mple.test", err));
    EXPECT_FALSE(normalise_address(".user@example.test", err));
    EXPECT_FALSE(normalise_address(std::string(65, 'a') + "@example.test", err));
    EXPECT_EQ(normalise_domain("Ex-Ample.Test.", err), "ex-ample.test");
    EXPECT_FALSE(normalise_domain("a..b", err));
}

TEST(MapSource, PerMapValues) {
    auto d = parse_map_text(MapId::local_domains, "example.test extra\n", "f");
    ASSERT_EQ(d.diagnostics.size(), 1u);
    EXPECT_EQ(d.diagnostics[0].str(), "f:1:14: local_domains: local_domains takes no value");

    auto a = parse_map_text(MapId::local_addresses,
                            "info@Example.test\nsales@example.test Bob@Example.TEST\n"
                            "x@example.test not-an-address\n",
                            "f");
    ASSERT_EQ(a.diagnostics.size(), 1u) << all(a);
    EXPECT_EQ(a.diagnostics[0].where.line, 3);
    EXPECT_EQ(a.diagnostics[0].where.column, 16);
    ASSERT_EQ(a.entries.size(), 2u);
    EXPECT_EQ(a.entries[0].value, "");
    EXPECT_EQ(a.entries[1].value, "Bob@example.test");

    auto c =
        parse_map_text(MapId::catch_all, "example.test\nexample.org postmaster@example.org\n", "f");
    ASSERT_EQ(c.diagnostics.size(), 1u);
    EXPECT_NE(c.diagnostics[0].message.find("needs the mailbox"), std::string::npos);

    auto u = parse_map_text(MapId::users, "alice $6$salt$hash\nbob\ncarol two words\n", "f");
    EXPECT_EQ(u.diagnostics.size(), 2u) << all(u);
    ASSERT_EQ(u.entries.size(), 1u);
    EXPECT_EQ(u.entries[0].value, "$6$salt$hash");

    auto p = parse_map_text(MapId::privileged_networks, "10.1.2.0/24 Office LAN, floor 2\n", "f");
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p.entries[0].value, "Office LAN, floor 2");
}

TEST(MapSource, ControlCharactersAndLongLines) {
    std::string text = "example.test\n";
    text += std::string("bad\x01.test\n");
    text += std::string(5000, 'a') + "\n";
    auto r = parse_map_text(MapId::local_domains, text, "f");
    ASSERT_EQ(r.diagnostics.size(), 2u) << all(r);
    EXPECT_EQ(r.diagnostics[0].str(), "f:2:4: control character in line");
    EXPECT_EQ(r.diagnostics[1].where.line, 3);
    EXPECT_EQ(r.entries.size(), 1u);
}

TEST(MapSource, MissingFileIsReported) {
    auto r = parse_map_file(MapId::users, "/nonexistent/sluice/users.txt");
    ASSERT_EQ(r.diagnostics.size(), 1u);
    EXPECT_EQ(r.diagnostics[0].str().rfind("/nonexistent/sluice/users.txt:0:0: cannot read", 0),
              0u);
}

TEST(MapSource, NamesAndSourceRefs) {
    EXPECT_EQ(map_file_name(MapId::connection_filter), "connection_filter");
    EXPECT_EQ(map_from_name("privileged_networks"), MapId::privileged_networks);
    EXPECT_FALSE(map_from_name("relay_domains"));
    auto ref = split_source("/etc/sluice/maps/a:b.txt:12");
    EXPECT_EQ(ref.file, "/etc/sluice/maps/a:b.txt");
    EXPECT_EQ(ref.line, 12);
    auto edit = split_source("map add 2026-11-22T10:00:00.123Z");
    EXPECT_EQ(edit.file, "map add 2026-11-22T10:00:00.123Z");
    EXPECT_EQ(edit.line, 0);
}
