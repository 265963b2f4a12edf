#pragma once
// Counters of one shard (PRODUCT.md §7). Each shard writes only its own `ShardMetrics`
// (single writer: relaxed load + store, no locked instructions on the data path); the
// stats endpoint reads all shards at scrape time and sums them.

#include <array>
#include <atomic>
#include <cstdint>

namespace sluice {

inline constexpr std::size_t kMaxListeners = 64;
inline constexpr std::size_t kDecisionCodes = 32;  // >= policy::Code count
inline constexpr std::array<double, 10> kDurationBuckets = {0.01, 0.05, 0.1, 0.5, 1,
                                                            5,    10,   30,  60,  300};

enum class ConnResult : std::uint8_t { accepted, filtered, over_limit, shutting_down, count_ };
enum class MsgResult : std::uint8_t { accepted, rejected, failed, count_ };
enum class DeliveryResult : std::uint8_t { delivered, deferred, bounced, count_ };

struct Counter {
    std::atomic<std::uint64_t> v{0};
    void add(std::uint64_t n = 1) { v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
    std::uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

struct Gauge {
    std::atomic<std::int64_t> v{0};
    void add(std::int64_t n) { v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
    std::int64_t get() const { return v.load(std::memory_order_relaxed); }
};

struct ShardMetrics {
    std::array<std::array<Counter, static_cast<std::size_t>(ConnResult::count_)>, kMaxListeners>
        connections;
    Gauge sessions_active;
    std::array<Counter, kDecisionCodes> decisions;
    std::array<Counter, static_cast<std::size_t>(MsgResult::count_)> messages;
    std::array<Counter, static_cast<std::size_t>(DeliveryResult::count_)> deliveries;
    Counter bytes_received;
    std::array<Counter, kDurationBuckets.size()> duration_buckets;  // non-cumulative here
    Counter duration_count;
    Counter duration_sum_ms;

    void observe_duration(double seconds) {
        for (std::size_t i = 0; i < kDurationBuckets.size(); ++i) {
            if (seconds <= kDurationBuckets[i]) {
                duration_buckets[i].add();
                break;
            }
        }
        duration_count.add();
        duration_sum_ms.add(static_cast<std::uint64_t>(seconds * 1000));
    }
};

}  // namespace sluice
