#pragma once
// The rate limits of [rates] (README, "Rate limits") over GCRA tables (gcra.hpp): what
// is counted (connections, messages, recipients, errors), under which keys (the client
// address, and its network: /24 for IPv4, /64 for IPv6), and where the counters live.
//
// Where they live is a RateStore. LocalStore is one table for the whole process, shared
// by every shard: a client's connections land on shards by the kernel's SO_REUSEPORT
// hash of the 4-tuple, so per-shard tables would allow up to shards x limit; one table
// keeps the limit exact. It is striped (kStripes tables, each behind its own mutex) and
// touched once per connection, MAIL, RCPT or error reply, never per byte, like the
// connection caps (daemon/limiter.hpp). A fleet-wide store (Redis) implements the same
// interface.
//
// Pure: no clock (callers pass `now`), no I/O, no libuv.

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "common/config.hpp"
#include "common/net.hpp"
#include "daemon/rates/gcra.hpp"

namespace sluice::rates {

enum class LimitKind : std::uint8_t { connections, messages, recipients, errors, count_ };
enum class KeyKind : std::uint8_t { client, network, count_ };

inline constexpr std::size_t kLimitKinds = static_cast<std::size_t>(LimitKind::count_);
inline constexpr std::size_t kKeyKinds = static_cast<std::size_t>(KeyKind::count_);

// "connections", ...; "client", "network": the log's limit= and key_kind=, the metric's
// labels, the config keys' names (`rates.<limit>_per_<key_kind>`).
std::string_view limit_name(LimitKind k);
std::string_view key_kind_name(KeyKind k);

// The limits of one config generation.
struct Settings {
    std::array<std::array<std::uint32_t, kKeyKinds>, kLimitKinds> count{};
    Micros interval = 60'000'000;

    static Settings from_config(const Config& config);
    Limit limit(LimitKind l, KeyKind k) const {
        return Limit{count[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)], interval, 0};
    }
    bool any() const;
};

// The key `k` gives `client` for limit `l`: the address, or its /24 (IPv4) or /64 (IPv6).
Key key_for(const IpAddr& client, LimitKind l, KeyKind k);
// The address part of a key, as text: "192.0.2.7", "192.0.2.0/24", "2001:db8::/64".
std::string key_text(const IpAddr& client, KeyKind k);

class RateStore {
  public:
    virtual ~RateStore() = default;
    virtual Verdict take(const Key& key, const Limit& limit, Micros now) = 0;
    virtual Verdict peek(const Key& key, const Limit& limit, Micros now) const = 0;
};

// The process-wide store: thread-safe, fixed memory (`capacity` keys in all).
class LocalStore final : public RateStore {
  public:
    static constexpr std::size_t kStripes = 16;

    explicit LocalStore(std::size_t capacity);
    Verdict take(const Key& key, const Limit& limit, Micros now) override;
    Verdict peek(const Key& key, const Limit& limit, Micros now) const override;

    struct Stats {
        std::size_t capacity = 0;
        std::size_t live = 0;
        std::uint64_t evictions_live = 0;
    };
    Stats stats(Micros now) const;

  private:
    struct Stripe {
        mutable std::mutex mu;
        std::unique_ptr<GcraTable> table;
    };
    Stripe& stripe(const Key& key) const;
    mutable std::array<Stripe, kStripes> stripes_;
};

struct Tripped {
    LimitKind limit = LimitKind::connections;
    KeyKind key_kind = KeyKind::client;
    std::uint32_t count = 0;  // the limit, per interval
    Verdict verdict;
};

// Counts one `limit` event of `client`: its address first, then its network (a refusal
// of the address does not count against the network). nullopt: within every limit.
std::optional<Tripped> check(RateStore& store, const Settings& settings, LimitKind limit,
                             const IpAddr& client, Micros now);

// What `sluicectl rates CLIENT` shows: every limit under both keys, without counting.
struct Usage {
    LimitKind limit;
    KeyKind key_kind;
    std::uint32_t count;  // the limit (0: off)
    Verdict verdict;      // level now, and whether one more would be refused
};
std::vector<Usage> usage(const RateStore& store, const Settings& settings, const IpAddr& client,
                         Micros now);

}  // namespace sluice::rates
