#pragma once
// One shard's DNS cache: answers by (name, type), kept for their TTL clamped to
// [min_ttl, max_ttl], negative answers (NXDOMAIN, NODATA) for the TTL RFC 2308 §5 gives
// them (an answer with no SOA is not cached). Bounded in entries and in bytes: the least
// recently used entry goes first. Temporary failures are never cached (RFC 2308 §7 allows
// it; a retry must ask again).
//
// Pure: the clock is an argument. One shard, one cache, no locks.

#include <chrono>
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <unordered_map>

#include "daemon/dns/message.hpp"

namespace sluice::dns {

class Cache {
  public:
    using Clock = std::chrono::steady_clock;

    struct Options {
        std::size_t max_entries = 100'000;
        std::uint64_t max_bytes = 64ull << 20;
        std::uint32_t min_ttl = 0;      // seconds
        std::uint32_t max_ttl = 86'400; // seconds
    };

    explicit Cache(Options o) : opts_(o) {}

    // The cached answer with its remaining TTL in `ttl`, or nullopt (absent or expired).
    std::optional<Result> get(const std::string& name, Type type, Clock::time_point now);
    // Keeps `r` if it may be cached (see above). Returns whether it did.
    bool put(const std::string& name, Type type, const Result& r, Clock::time_point now);

    std::size_t entries() const { return map_.size(); }
    std::uint64_t bytes() const { return bytes_; }
    void set_options(Options o);

    // The estimate of what one entry costs (its strings and records plus the containers'
    // bookkeeping), so that max_bytes bounds the real heap use within a small factor.
    static std::uint64_t cost(const std::string& key, const Result& r);

  private:
    struct Entry {
        std::string key;
        Result result;
        Clock::time_point expires;
        std::uint64_t bytes = 0;
    };
    void evict_to_fit();
    void erase(std::list<Entry>::iterator it);

    Options opts_;
    std::list<Entry> lru_;  // front: most recently used
    std::unordered_map<std::string, std::list<Entry>::iterator> map_;
    std::uint64_t bytes_ = 0;
};

}  // namespace sluice::dns
