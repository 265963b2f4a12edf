#pragma once
// An in-memory policy::Maps for the policy tests: policy::Maps is the interface under
// test here (the LMDB implementation has its own tests in tests/unit/storage). Exact keys
// and CIDR entries per map, longest-prefix match, and a switch that makes a map fail so
// the fail-closed paths can be driven.

#include <array>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/net.hpp"
#include "policy/maps.hpp"

namespace sluice::policy::testing {

class FakeMaps : public Maps {
  public:
    void add(MapId map, std::string key, std::string value = {}, std::string source = {}) {
        exact_[index(map)][key] = Entry{std::move(value), std::move(source)};
    }

    // False when `cidr` does not parse (tests assert on it).
    bool add_cidr(MapId map, const std::string& cidr, std::string value = {},
                  std::string source = {}) {
        std::string error;
        auto c = parse_cidr(cidr, error);
        if (!c) {
            return false;
        }
        cidrs_[index(map)].push_back(
            CidrEntry{*c, format_cidr(*c), Entry{std::move(value), std::move(source)}});
        return true;
    }

    void set_unavailable(MapId map, bool down = true) { down_[index(map)] = down; }
    void set_all_unavailable() { down_.fill(true); }

    Lookup find(MapId map, std::string_view key) const override {
        ++lookups_;
        Lookup l;
        if (down_[index(map)]) {
            l.status = Lookup::Status::unavailable;
            return l;
        }
        const auto& m = exact_[index(map)];
        auto it = m.find(std::string(key));
        if (it != m.end()) {
            l.status = Lookup::Status::found;
            l.key = it->first;
            l.value = it->second.value;
            l.source = it->second.source;
        }
        return l;
    }

    Lookup find_cidr(MapId map, const IpAddr& ip) const override {
        ++lookups_;
        Lookup l;
        if (down_[index(map)]) {
            l.status = Lookup::Status::unavailable;
            return l;
        }
        const CidrEntry* best = nullptr;
        for (const auto& e : cidrs_[index(map)]) {
            if (e.cidr.contains(ip) && (!best || e.cidr.prefix > best->cidr.prefix)) {
                best = &e;
            }
        }
        if (best) {
            l.status = Lookup::Status::found;
            l.key = best->text;
            l.value = best->entry.value;
            l.source = best->entry.source;
        }
        return l;
    }

    Lookup::Status has_entries(MapId map) const override {
        if (down_[index(map)]) {
            return Lookup::Status::unavailable;
        }
        bool any = !exact_[index(map)].empty() || !cidrs_[index(map)].empty();
        return any ? Lookup::Status::found : Lookup::Status::missing;
    }

    // How many find/find_cidr calls were made (to show a path needs no lookup).
    int lookups() const { return lookups_; }

  private:
    struct Entry {
        std::string value;
        std::string source;
    };
    struct CidrEntry {
        Cidr cidr;
        std::string text;
        Entry entry;
    };
    static constexpr std::size_t kMaps = static_cast<std::size_t>(MapId::count_);
    static std::size_t index(MapId m) { return static_cast<std::size_t>(m); }

    std::array<std::map<std::string, Entry>, kMaps> exact_;
    std::array<std::vector<CidrEntry>, kMaps> cidrs_;
    std::array<bool, kMaps> down_{};
    mutable int lookups_ = 0;
};

}  // namespace sluice::policy::testing
