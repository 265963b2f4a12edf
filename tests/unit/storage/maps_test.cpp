// The maps on real LMDB files in temp directories: publish, look up, longest-prefix match,
// atomic republish seen by an open reader, corrupt and truncated files, live edits.

#include "storage/maps.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "storage/map_format.hpp"

using namespace sluice;
using namespace sluice::storage;
using policy::Lookup;
namespace fs = std::filesystem;

namespace {

class Maps : public ::testing::Test {
  protected:
    void SetUp() override {
        std::string tmpl = (fs::temp_directory_path() / "sluice-maps-XXXXXX").string();
        ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
        root_ = tmpl;
        dir_ = root_ + "/maps";
    }
    void TearDown() override { fs::remove_all(root_); }

    std::string write_source(const std::string& name, const std::string& text) {
        std::string path = root_ + "/" + name;
        std::ofstream(path) << text;
        return path;
    }

    void build(MapId map, const std::string& text) {
        auto path = write_source(std::string(map_file_name(map)) + ".txt", text);
        BuildReport r = build_map(dir_, map, path);
        ASSERT_TRUE(r.diagnostics.empty()) << r.diagnostics[0].str();
        ASSERT_TRUE(r.ok()) << r.error.message;
    }

    static MapReader::Options manual() {
        MapReader::Options o;
        o.check_interval = std::chrono::milliseconds(0);
        return o;
    }

    ino_t inode(MapId map) {
        struct stat st {};
        EXPECT_EQ(::stat(map_path(dir_, map).c_str(), &st), 0);
        return st.st_ino;
    }

    // Replaces the published file the way a careless operator or a broken disk might:
    // a different file renamed into place (never in place: that could crash this very test).
    void replace_with(MapId map, const std::string& bytes) {
        std::string tmp = dir_ + "/bad.tmp";
        std::ofstream(tmp, std::ios::binary) << bytes;
        ASSERT_EQ(::rename(tmp.c_str(), map_path(dir_, map).c_str()), 0);
    }

    std::string read_file(const std::string& path) {
        std::ifstream in(path, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }

    std::string root_;
    std::string dir_;
};

IpAddr ip(const char* s) {
    auto a = parse_ip(s);
    EXPECT_TRUE(a) << s;
    return a.value_or(IpAddr{});
}

}  // namespace

TEST_F(Maps, MissingDirectoryIsEmptyMaps) {
    MapReader r(dir_, manual());
    EXPECT_EQ(r.find(MapId::local_domains, "example.test").status, Lookup::Status::missing);
    EXPECT_EQ(r.find_cidr(MapId::privileged_networks, ip("10.0.0.1")).status,
              Lookup::Status::missing);
    EXPECT_EQ(r.has_entries(MapId::local_addresses), Lookup::Status::missing);
    EXPECT_EQ(r.info(MapId::access).state, MapReader::State::absent);
    auto contents = read_map(dir_, MapId::users);
    ASSERT_TRUE(contents.ok());
    EXPECT_FALSE(contents->present);
    EXPECT_TRUE(contents->entries.empty());
}

TEST_F(Maps, StringLookupsCarryValueAndSource) {
    build(MapId::local_addresses,
          "# people\nInfo@Example.TEST\nsales@example.test bob@example.test\n");
    build(MapId::local_domains, "example.test\n");
    build(MapId::users, "alice $6$salt$hash\n");
    MapReader r(dir_, manual());
    Lookup a = r.find(MapId::local_addresses, "Info@example.test");
    ASSERT_TRUE(a.found());
    EXPECT_EQ(a.value, "");
    EXPECT_EQ(a.key, "Info@example.test");
    EXPECT_EQ(a.source, root_ + "/local_addresses.txt:2");
    Lookup b = r.find(MapId::local_addresses, "sales@example.test");
    ASSERT_TRUE(b.found());
    EXPECT_EQ(b.value, "bob@example.test");
    EXPECT_EQ(b.source, root_ + "/local_addresses.txt:3");
    // Local parts are case-sensitive; the map holds canonical keys only.
    EXPECT_EQ(r.find(MapId::local_addresses, "info@example.test").status, Lookup::Status::missing);
    EXPECT_TRUE(r.find(MapId::local_domains, "example.test").found());
    EXPECT_EQ(r.find(MapId::local_domains, "example.org").status, Lookup::Status::missing);
    EXPECT_EQ(r.find(MapId::users, "alice").value, "$6$salt$hash");
    EXPECT_EQ(r.has_entries(MapId::users), Lookup::Status::found);
    // A CIDR-only map has no string keys, a string map no CIDR keys.
    EXPECT_EQ(r.find_cidr(MapId::local_domains, ip("192.0.2.1")).status, Lookup::Status::missing);
    EXPECT_EQ(r.find(MapId::local_domains, std::string(600, 'a')).status, Lookup::Status::missing);
    EXPECT_EQ(r.find(MapId::local_domains, "").status, Lookup::Status::missing);
}

TEST_F(Maps, LongestPrefixAtEveryBoundaryV4) {
    build(MapId::privileged_networks,
          "10.0.0.0/8 eight\n10.1.0.0/16 sixteen\n10.1.2.0/24 twentyfour\n"
          "10.1.2.3/32 host\n192.0.2.0/25 low-half\n192.0.2.128/25 high-half\n");
    MapReader r(dir_, manual());
    struct Case {
        const char* ip;
        const char* key;  // nullptr: no match
    };
    const Case cases[] = {
        {"9.255.255.255", nullptr},
        {"10.0.0.0", "10.0.0.0/8"},
        {"10.0.255.255", "10.0.0.0/8"},
        {"10.1.0.0", "10.1.0.0/16"},
        {"10.1.1.255", "10.1.0.0/16"},
        {"10.1.2.0", "10.1.2.0/24"},
        {"10.1.2.2", "10.1.2.0/24"},
        {"10.1.2.3", "10.1.2.3/32"},
        {"10.1.2.4", "10.1.2.0/24"},
        {"10.1.2.255", "10.1.2.0/24"},
        {"10.1.3.0", "10.1.0.0/16"},
        {"10.1.255.255", "10.1.0.0/16"},
        {"10.2.0.0", "10.0.0.0/8"},
        {"10.255.255.255", "10.0.0.0/8"},
        {"11.0.0.0", nullptr},
        {"192.0.2.127", "192.0.2.0/25"},
        {"192.0.2.128", "192.0.2.128/25"},
        {"192.0.2.255", "192.0.2.128/25"},
        {"192.0.3.0", nullptr},
        {"0.0.0.0", nullptr},
        {"255.255.255.255", nullptr},
        {"::ffff:10.1.2.3", "10.1.2.3/32"},
        {"::a01:203", nullptr},  // not the IPv4-mapped form: a different address
    };
    for (const auto& c : cases) {
        Lookup l = r.find_cidr(MapId::privileged_networks, ip(c.ip));
        if (c.key == nullptr) {
            EXPECT_EQ(l.status, Lookup::Status::missing) << c.ip << " matched " << l.key;
        } else {
            ASSERT_TRUE(l.found()) << c.ip;
            EXPECT_EQ(l.key, c.key) << c.ip;
        }
    }
    Lookup host = r.find_cidr(MapId::privileged_networks, ip("10.1.2.3"));
    EXPECT_EQ(host.value, "host");
    EXPECT_EQ(host.source, root_ + "/privileged_networks.txt:4");
}

TEST_F(Maps, LongestPrefixV6AndWholeSpace) {
    build(MapId::connection_filter,
          "::/0 deny\n2001:db8::/32 allow\n2001:db8:1::/48 deny\n2001:db8:1::1 allow\n"
          "0.0.0.0/0 allow\n203.0.113.0/24 deny\n");
    MapReader r(dir_, manual());
    auto key = [&](const char* a) {
        Lookup l = r.find_cidr(MapId::connection_filter, ip(a));
        return l.found() ? l.key + " " + l.value : std::string("none");
    };
    EXPECT_EQ(key("::"), "::/0 deny");
    EXPECT_EQ(key("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"), "::/0 deny");
    EXPECT_EQ(key("2001:db8::"), "2001:db8::/32 allow");
    EXPECT_EQ(key("2001:db8:0:ffff::1"), "2001:db8::/32 allow");
    EXPECT_EQ(key("2001:db8:1::"), "2001:db8:1::/48 deny");
    EXPECT_EQ(key("2001:db8:1::1"), "2001:db8:1::1/128 allow");
    EXPECT_EQ(key("2001:db8:1::2"), "2001:db8:1::/48 deny");
    EXPECT_EQ(key("2001:db8:1:ffff:ffff:ffff:ffff:ffff"), "2001:db8:1::/48 deny");
    EXPECT_EQ(key("2001:db8:2::"), "2001:db8::/32 allow");
    EXPECT_EQ(key("2001:db9::"), "::/0 deny");
    EXPECT_EQ(key("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "::/0 deny");
    // IPv4 lives inside ::/0 as ::ffff:0:0/96; 0.0.0.0/0 is the longer prefix there.
    EXPECT_EQ(key("198.51.100.1"), "0.0.0.0/0 allow");
    EXPECT_EQ(key("203.0.113.77"), "203.0.113.0/24 deny");
    EXPECT_EQ(key("::fffe:ffff:ffff"), "::/0 deny");
}

TEST_F(Maps, LongestPrefixMatchesBruteForce) {
    // Random nested and disjoint prefixes, compared with a linear scan over every entry.
    std::mt19937_64 rng(20261122);
    std::vector<Cidr> prefixes;
    std::string text;
    std::set<std::string> seen;
    auto random_v4 = [&] {
        IpAddr a = ip("0.0.0.0");
        // Cluster in 10/8 and 192.168/16 so that nesting happens often.
        a.bytes[12] = (rng() & 1) ? 10 : 192;
        a.bytes[13] = a.bytes[12] == 192 ? 168 : static_cast<std::uint8_t>(rng() % 4);
        a.bytes[14] = static_cast<std::uint8_t>(rng() % 8);
        a.bytes[15] = static_cast<std::uint8_t>(rng());
        return a;
    };
    for (int i = 0; i < 400; ++i) {
        IpAddr a = random_v4();
        unsigned len = 8 + static_cast<unsigned>(rng() % 25);  // /8../32
        Cidr c{a, 96 + len};
        for (unsigned b = c.prefix; b < 128; ++b) {
            c.base.bytes[b / 8] &= static_cast<std::uint8_t>(~(1u << (7 - b % 8)));
        }
        std::string k = format_cidr(c);
        if (!seen.insert(k).second) {
            continue;
        }
        prefixes.push_back(c);
        text += k + " n" + std::to_string(i) + "\n";
    }
    build(MapId::privileged_networks, text);
    MapReader r(dir_, manual());
    for (int i = 0; i < 20000; ++i) {
        IpAddr a = random_v4();
        const Cidr* best = nullptr;
        for (const auto& c : prefixes) {
            if (c.contains(a) && (best == nullptr || c.prefix > best->prefix)) {
                best = &c;
            }
        }
        Lookup l = r.find_cidr(MapId::privileged_networks, a);
        if (best == nullptr) {
            ASSERT_EQ(l.status, Lookup::Status::missing) << format_ip(a);
        } else {
            ASSERT_TRUE(l.found()) << format_ip(a);
            ASSERT_EQ(l.key, format_cidr(*best)) << format_ip(a);
        }
    }
}

TEST_F(Maps, AccessHoldsCidrAndStringKeys) {
    build(MapId::access,
          "192.0.2.0/24 REJECT go away\nspammer@Example.TEST REJECT\n@bad.test DEFER later\n"
          "rcpt:abuse@example.test OK\n2001:db8::/32 OK\n");
    MapReader r(dir_, manual());
    Lookup c = r.find_cidr(MapId::access, ip("192.0.2.9"));
    ASSERT_TRUE(c.found());
    EXPECT_EQ(c.value, "REJECT go away");
    EXPECT_EQ(c.key, "192.0.2.0/24");
    EXPECT_TRUE(r.find_cidr(MapId::access, ip("2001:db8::5")).found());
    EXPECT_EQ(r.find(MapId::access, "spammer@example.test").value, "REJECT");
    EXPECT_EQ(r.find(MapId::access, "@bad.test").value, "DEFER later");
    EXPECT_EQ(r.find(MapId::access, "rcpt:abuse@example.test").value, "OK");
    EXPECT_EQ(r.find(MapId::access, "192.0.2.0/24").status, Lookup::Status::missing);

    auto contents = read_map(dir_, MapId::access);
    ASSERT_TRUE(contents.ok()) << contents.error().message;
    ASSERT_EQ(contents->entries.size(), 5u);
    EXPECT_EQ(contents->entries[0].key, "192.0.2.0/24");
    EXPECT_EQ(contents->entries[0].source, root_ + "/access.txt:1");
    EXPECT_EQ(contents->entries[1].key, "2001:db8::/32");
    EXPECT_EQ(contents->entries[2].key, "@bad.test");
}

TEST_F(Maps, SourceWithErrorsPublishesNothing) {
    build(MapId::connection_filter, "192.0.2.0/24 deny\n");
    ino_t before = inode(MapId::connection_filter);
    auto src = write_source("bad.txt", "198.51.100.0/24 allow\n198.51.100.1/24 deny\nx deny\n");
    BuildReport r = build_map(dir_, MapId::connection_filter, src);
    EXPECT_FALSE(r.ok());
    ASSERT_EQ(r.diagnostics.size(), 2u);
    EXPECT_EQ(r.diagnostics[0].where.line, 2);
    EXPECT_EQ(r.diagnostics[1].where.line, 3);
    EXPECT_EQ(inode(MapId::connection_filter), before);
    MapReader reader(dir_, manual());
    EXPECT_TRUE(reader.find_cidr(MapId::connection_filter, ip("192.0.2.1")).found());
    EXPECT_FALSE(reader.find_cidr(MapId::connection_filter, ip("198.51.100.1")).found());
}

TEST_F(Maps, PublishLeavesOnlyTheMapAndItsLock) {
    build(MapId::local_domains, "example.test\n");
    // A builder that died mid-way (no such PID) left its temporary file behind.
    std::ofstream(dir_ + "/local_domains.mdb.tmp-999999999-0") << "partial";
    build(MapId::local_domains, "example.org\n");
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) {
        names.insert(e.path().filename().string());
    }
    EXPECT_EQ(names, (std::set<std::string>{"local_domains.mdb", "local_domains.edit.lock"}));
}

TEST_F(Maps, OpenReaderSeesRepublishAfterRefresh) {
    build(MapId::local_domains, "example.test\n");
    MapReader r(dir_, manual());
    EXPECT_TRUE(r.find(MapId::local_domains, "example.test").found());
    EXPECT_EQ(r.info(MapId::local_domains).generation, 1u);

    build(MapId::local_domains, "example.org\nexample.net\n");
    // Without a refresh the reader keeps its generation (and its mapping of the old inode).
    EXPECT_TRUE(r.find(MapId::local_domains, "example.test").found());
    auto stats = r.refresh();
    EXPECT_EQ(stats.loaded, 1u);
    EXPECT_EQ(stats.rejected, 0u);
    EXPECT_FALSE(r.find(MapId::local_domains, "example.test").found());
    EXPECT_TRUE(r.find(MapId::local_domains, "example.net").found());
    EXPECT_EQ(r.info(MapId::local_domains).entries, 2u);
    EXPECT_EQ(r.info(MapId::local_domains).generation, 2u);
    // Nothing changed: nothing reloaded.
    EXPECT_EQ(r.refresh().loaded, 0u);
}

// The shard's way: poll() on its thread, load() on another, install() back on its thread.
// Lookups in between are served by the old generation; a file replaced again meanwhile is
// picked up by the next poll; a bad file is rejected at install and the old one serves.
TEST_F(Maps, PollLoadInstallSwitchesOffTheOwnerThread) {
    build(MapId::local_domains, "example.test\n");
    MapReader r(dir_, manual());
    EXPECT_EQ(r.poll(), nullptr) << "nothing changed";

    build(MapId::local_domains, "example.org\n");
    auto p = r.poll();
    ASSERT_NE(p, nullptr);
    std::thread loader([&] { MapReader::load(*p); });
    // The owner keeps serving the previous generation while the file is validated.
    EXPECT_TRUE(r.find(MapId::local_domains, "example.test").found());
    loader.join();
    EXPECT_TRUE(r.find(MapId::local_domains, "example.test").found()) << "not before install";
    build(MapId::local_domains, "example.net\n");  // replaced again before the switch
    auto stats = r.install(std::move(p));
    EXPECT_EQ(stats.loaded, 1u);
    EXPECT_TRUE(r.find(MapId::local_domains, "example.org").found());
    EXPECT_EQ(r.info(MapId::local_domains).generation, 2u);
    auto again = r.poll();
    ASSERT_NE(again, nullptr) << "the newer file is seen by the next poll";
    MapReader::load(*again);
    EXPECT_EQ(r.install(std::move(again)).loaded, 1u);
    EXPECT_TRUE(r.find(MapId::local_domains, "example.net").found());

    replace_with(MapId::local_domains, std::string(16384, '\x5a'));
    auto bad = r.poll();
    ASSERT_NE(bad, nullptr);
    MapReader::load(*bad);
    EXPECT_EQ(r.install(std::move(bad)).rejected, 1u);
    EXPECT_TRUE(r.find(MapId::local_domains, "example.net").found());
    EXPECT_EQ(r.poll(), nullptr) << "a rejected file is not loaded again";
}

TEST_F(Maps, UsersMapIsNotWorldReadable) {
    build(MapId::users, "alice $6$salt$hash\n");
    build(MapId::local_domains, "example.test\n");
    struct stat st {};
    ASSERT_EQ(::stat(map_path(dir_, MapId::users).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0007, 0u);
    ASSERT_EQ(::stat(map_path(dir_, MapId::local_domains).c_str(), &st), 0);
    EXPECT_NE(st.st_mode & 0004, 0u);
}

TEST_F(Maps, ReaderDuringRepublishSeesWholeGenerations) {
    // A writer thread republishes while this thread refreshes and reads: every batch of
    // lookups between two refreshes sees exactly one generation, never a mixture or a crash.
    auto text_for = [](int gen) {
        std::string t;
        for (int i = 0; i < 300; ++i) {
            t += "u" + std::to_string(i) + "@example.test g" + std::to_string(gen) +
                 "@example.test\n";
        }
        return t;
    };
    build(MapId::local_addresses, text_for(0));
    constexpr int kGenerations = 15;
    std::atomic<bool> done{false};
    std::string error;
    std::thread writer([&] {
        for (int g = 1; g <= kGenerations; ++g) {
            std::vector<MapEntry> entries;
            for (int i = 0; i < 300; ++i) {
                entries.push_back({"u" + std::to_string(i) + "@example.test",
                                   "g" + std::to_string(g) + "@example.test", "w:1"});
            }
            auto r = publish_map(dir_, MapId::local_addresses, entries);
            if (!r.ok()) {
                error = r.error().message;
                break;
            }
        }
        done = true;
    });
    MapReader r(dir_, manual());
    std::set<std::string> seen;
    for (int round = 0; round < 100000 && (!done || round < 2); ++round) {
        r.refresh();
        std::string first = r.find(MapId::local_addresses, "u0@example.test").value;
        for (int i = 0; i < 300; i += 13) {
            Lookup l = r.find(MapId::local_addresses, "u" + std::to_string(i) + "@example.test");
            ASSERT_TRUE(l.found());
            ASSERT_EQ(l.value, first);
        }
        seen.insert(first);
    }
    writer.join();
    EXPECT_EQ(error, "");
    r.refresh();
    EXPECT_EQ(r.find(MapId::local_addresses, "u5@example.test").value,
              "g" + std::to_string(kGenerations) + "@example.test");
    EXPECT_GE(seen.size(), 2u);
}

TEST_F(Maps, ReaderNoticesNewGenerationByItself) {
    build(MapId::catch_all, "example.test postmaster@example.test\n");
    MapReader::Options o;
    o.check_interval = std::chrono::milliseconds(20);
    MapReader r(dir_, o);
    EXPECT_EQ(r.find(MapId::catch_all, "example.test").value, "postmaster@example.test");
    build(MapId::catch_all, "example.test catch@example.test\n");
    std::this_thread::sleep_for(std::chrono::milliseconds(40));
    EXPECT_EQ(r.find(MapId::catch_all, "example.test").value, "catch@example.test");
}

TEST_F(Maps, CorruptReplacementKeepsOldGeneration) {
    build(MapId::privileged_networks, "10.0.0.0/8 lan\n");
    MapReader r(dir_, manual());
    ASSERT_TRUE(r.find_cidr(MapId::privileged_networks, ip("10.9.9.9")).found());

    // Garbage of a plausible size.
    replace_with(MapId::privileged_networks, std::string(16384, '\x5a'));
    auto stats = r.refresh();
    EXPECT_EQ(stats.rejected, 1u);
    EXPECT_EQ(stats.loaded, 0u);
    EXPECT_TRUE(r.find_cidr(MapId::privileged_networks, ip("10.9.9.9")).found());
    EXPECT_TRUE(r.info(MapId::privileged_networks).candidate_rejected);
    EXPECT_EQ(r.info(MapId::privileged_networks).state, MapReader::State::ready);
    // The same bad file is not retried (nor logged) again.
    EXPECT_EQ(r.refresh().rejected, 0u);

    // An empty file, a tiny file.
    replace_with(MapId::privileged_networks, "");
    EXPECT_EQ(r.refresh().rejected, 1u);
    replace_with(MapId::privileged_networks, "tiny");
    EXPECT_EQ(r.refresh().rejected, 1u);
    EXPECT_TRUE(r.find_cidr(MapId::privileged_networks, ip("10.9.9.9")).found());

    // A good file again is picked up.
    build(MapId::privileged_networks, "192.168.0.0/16 lan\n");
    EXPECT_EQ(r.refresh().loaded, 1u);
    EXPECT_FALSE(r.find_cidr(MapId::privileged_networks, ip("10.9.9.9")).found());
    EXPECT_TRUE(r.find_cidr(MapId::privileged_networks, ip("192.168.1.1")).found());
    EXPECT_FALSE(r.info(MapId::privileged_networks).candidate_rejected);
}

TEST_F(Maps, TruncatedMapIsRejectedNotMapped) {
    // Enough entries for many pages, so that a truncated copy keeps valid meta pages but
    // loses pages the B-tree points to (reading those through the mapping would SIGBUS).
    std::string text;
    for (int i = 0; i < 5000; ++i) {
        text += "user" + std::to_string(i) + "@example.test\n";
    }
    build(MapId::local_addresses, text);
    const std::string path = map_path(dir_, MapId::local_addresses);
    std::string good = read_file(path);
    ASSERT_GT(good.size(), 16384u);

    MapReader r(dir_, manual());
    ASSERT_TRUE(r.find(MapId::local_addresses, "user4999@example.test").found());

    replace_with(MapId::local_addresses, good.substr(0, 3 * 4096));
    EXPECT_EQ(r.refresh().rejected, 1u);
    EXPECT_TRUE(r.find(MapId::local_addresses, "user4999@example.test").found());

    // A fresh reader with only the truncated file: fail closed, never crash.
    MapReader fresh(dir_, manual());
    EXPECT_EQ(fresh.find(MapId::local_addresses, "user1@example.test").status,
              Lookup::Status::unavailable);
    EXPECT_EQ(fresh.has_entries(MapId::local_addresses), Lookup::Status::unavailable);
    EXPECT_EQ(fresh.info(MapId::local_addresses).state, MapReader::State::unavailable);
    EXPECT_FALSE(read_map(dir_, MapId::local_addresses).ok());

    // Truncated at a page boundary just short of the end.
    replace_with(MapId::local_addresses, good.substr(0, good.size() - 4096));
    EXPECT_EQ(fresh.refresh().rejected, 1u);
    EXPECT_EQ(fresh.find(MapId::local_addresses, "user1@example.test").status,
              Lookup::Status::unavailable);
}

TEST_F(Maps, TruncatedDataBehindValidChecksumIsRejected) {
    // The checksum trailer is recomputed over truncated LMDB data: only LMDB's own idea of
    // its size (last page) can tell, and it must, before any page is touched.
    std::string text;
    for (int i = 0; i < 5000; ++i) {
        text += "user" + std::to_string(i) + "@example.test\n";
    }
    build(MapId::local_addresses, text);
    const std::string path = map_path(dir_, MapId::local_addresses);
    std::string good = read_file(path);
    std::string data = good.substr(0, good.size() - format::kTrailerSize);
    std::string tmp = dir_ + "/cut.tmp";
    std::ofstream(tmp, std::ios::binary) << data.substr(0, 4 * 4096);
    ASSERT_TRUE(format::append_trailer(tmp).ok());
    ASSERT_EQ(::rename(tmp.c_str(), path.c_str()), 0);
    auto g = format::open_generation(path, MapId::local_addresses);
    ASSERT_FALSE(g.ok());
    EXPECT_EQ(g.error().code, Errc::corrupt);
    EXPECT_NE(g.error().message.find("truncated: LMDB uses"), std::string::npos)
        << g.error().message;
    MapReader r(dir_, manual());
    EXPECT_EQ(r.find(MapId::local_addresses, "user1@example.test").status,
              Lookup::Status::unavailable);
}

TEST_F(Maps, FlippedBytesAreRejectedBeforeMapping) {
    // Flipped bytes inside B-tree pages crashed a plain LMDB reader (SIGSEGV/SIGBUS) in
    // experiments on this machine; the checksum stops them before the file is mapped.
    std::string text;
    for (int i = 0; i < 5000; ++i) {
        text += "user" + std::to_string(i) + "@example.test\n";
    }
    build(MapId::local_addresses, text);
    const std::string path = map_path(dir_, MapId::local_addresses);
    const std::string good = read_file(path);
    MapReader r(dir_, manual());
    std::mt19937 rng(7);
    for (int round = 0; round < 5; ++round) {
        std::string bad = good;
        for (int k = 0; k < 200; ++k) {
            bad[8192 + rng() % (bad.size() - 8192 - format::kTrailerSize)] =
                static_cast<char>(rng());
        }
        replace_with(MapId::local_addresses, bad);
        EXPECT_EQ(r.refresh().rejected, 1u);
        for (int i = 0; i < 5000; i += 97) {
            ASSERT_TRUE(r.find(MapId::local_addresses, "user" + std::to_string(i) + "@example.test")
                            .found());
        }
        MapReader fresh(dir_, manual());
        EXPECT_EQ(fresh.find(MapId::local_addresses, "user1@example.test").status,
                  Lookup::Status::unavailable);
    }
}

TEST_F(Maps, WrongMapAndGarbageAtStartup) {
    build(MapId::access, "@bad.test REJECT\n");
    // access.mdb renamed to users.mdb: valid LMDB, valid header, wrong map.
    ASSERT_EQ(::rename(map_path(dir_, MapId::access).c_str(), map_path(dir_, MapId::users).c_str()),
              0);
    replace_with(MapId::connection_filter, std::string(65536, '\0'));
    MapReader r(dir_, manual());
    EXPECT_EQ(r.find(MapId::users, "@bad.test").status, Lookup::Status::unavailable);
    EXPECT_EQ(r.find_cidr(MapId::connection_filter, ip("192.0.2.1")).status,
              Lookup::Status::unavailable);
    EXPECT_EQ(r.find(MapId::access, "@bad.test").status, Lookup::Status::missing);
    auto listed = read_map(dir_, MapId::users);
    ASSERT_FALSE(listed.ok());
    EXPECT_NE(listed.error().message.find("holds map access"), std::string::npos);
}

TEST_F(Maps, DeletedFileBecomesEmptyMap) {
    build(MapId::local_domains, "example.test\n");
    MapReader r(dir_, manual());
    ASSERT_TRUE(r.find(MapId::local_domains, "example.test").found());
    ASSERT_EQ(::unlink(map_path(dir_, MapId::local_domains).c_str()), 0);
    EXPECT_EQ(r.refresh().removed, 1u);
    EXPECT_EQ(r.find(MapId::local_domains, "example.test").status, Lookup::Status::missing);
    EXPECT_EQ(r.info(MapId::local_domains).state, MapReader::State::absent);
}

TEST_F(Maps, LiveEdits) {
    MapReader r(dir_, manual());
    auto added = add_map_entry(dir_, MapId::privileged_networks, "10.1.0.0/16", "office",
                               "map add 2026-11-22T10:00:00.000Z");
    ASSERT_TRUE(added.ok()) << added.error().message;
    EXPECT_EQ(*added, EditOutcome::added);
    ASSERT_TRUE(add_map_entry(dir_, MapId::privileged_networks, "10.1.2.0/24", "lab", "edit").ok());
    r.refresh();
    Lookup l = r.find_cidr(MapId::privileged_networks, ip("10.1.2.3"));
    ASSERT_TRUE(l.found());
    EXPECT_EQ(l.value, "lab");
    EXPECT_EQ(r.find_cidr(MapId::privileged_networks, ip("10.1.3.3")).source,
              "map add 2026-11-22T10:00:00.000Z");

    auto replaced =
        add_map_entry(dir_, MapId::privileged_networks, "::ffff:10.1.2.0/24", "lab2", "edit");
    ASSERT_TRUE(replaced.ok()) << replaced.error().message;
    EXPECT_EQ(*replaced, EditOutcome::replaced);

    auto removed = remove_map_entry(dir_, MapId::privileged_networks, "10.1.0.0/16");
    ASSERT_TRUE(removed.ok());
    EXPECT_EQ(*removed, EditOutcome::removed);
    auto again = remove_map_entry(dir_, MapId::privileged_networks, "10.1.0.0/16");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, EditOutcome::not_found);

    r.refresh();
    EXPECT_EQ(r.find_cidr(MapId::privileged_networks, ip("10.1.2.3")).value, "lab2");
    EXPECT_FALSE(r.find_cidr(MapId::privileged_networks, ip("10.1.3.3")).found());

    auto bad = add_map_entry(dir_, MapId::connection_filter, "10.0.0.1/8", "deny", "edit");
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().code, Errc::invalid);
    EXPECT_NE(bad.error().message.find("host bits"), std::string::npos);
    auto bad_value = add_map_entry(dir_, MapId::connection_filter, "10.0.0.0/8", "perhaps", "e");
    ASSERT_FALSE(bad_value.ok());
    EXPECT_FALSE(fs::exists(map_path(dir_, MapId::connection_filter)));

    // Edits keep the other entries' sources.
    build(MapId::local_domains, "example.test\nexample.org\n");
    ASSERT_TRUE(add_map_entry(dir_, MapId::local_domains, "Example.NET.", "", "edit").ok());
    auto contents = read_map(dir_, MapId::local_domains);
    ASSERT_TRUE(contents.ok());
    ASSERT_EQ(contents->entries.size(), 3u);
    EXPECT_EQ(contents->entries[0].key, "example.net");
    EXPECT_EQ(contents->entries[0].source, "edit");
    EXPECT_EQ(contents->entries[1].key, "example.org");
    EXPECT_EQ(contents->entries[1].source, root_ + "/local_domains.txt:2");
}

TEST_F(Maps, PublishRejectsInvalidEntries) {
    std::vector<MapEntry> dup = {{"10.0.0.0/8", "deny", "a:1"}, {"10.0.0.0/8", "allow", "a:2"}};
    auto r = publish_map(dir_, MapId::connection_filter, dup);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("duplicate key"), std::string::npos);
    auto empty = publish_map(dir_, MapId::connection_filter, {});
    ASSERT_TRUE(empty.ok()) << empty.error().message;
    EXPECT_EQ(empty->entries, 0u);
    MapReader reader(dir_, manual());
    EXPECT_EQ(reader.info(MapId::connection_filter).state, MapReader::State::ready);
    EXPECT_EQ(reader.has_entries(MapId::connection_filter), Lookup::Status::missing);
    EXPECT_EQ(reader.find_cidr(MapId::connection_filter, ip("10.0.0.1")).status,
              Lookup::Status::missing);
}

TEST_F(Maps, NormaliseKey) {
    std::string err;
    EXPECT_EQ(normalise_key(MapId::catch_all, "Example.Test.", err), "example.test");
    EXPECT_EQ(normalise_key(MapId::access, "RCPT:Abuse@Example.test", err),
              "rcpt:Abuse@example.test");
    EXPECT_EQ(normalise_key(MapId::connection_filter, "::ffff:192.0.2.1", err), "192.0.2.1/32");
    EXPECT_FALSE(normalise_key(MapId::connection_filter, "192.0.2.1/16", err));
}
