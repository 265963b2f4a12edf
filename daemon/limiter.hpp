#pragma once
// Connection caps shared by all shards: total sessions and sessions per client address.
// Touched once at accept and once at close, never per byte; striped locks keep shards
// from contending on one mutex.

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "common/net.hpp"

namespace sluice {

class ConnectionLimiter {
  public:
    enum class Result : std::uint8_t { ok, global_limit, ip_limit };

    Result acquire(const IpAddr& ip, std::uint32_t max_total, std::uint32_t max_per_ip);
    void release(const IpAddr& ip);
    std::uint32_t total() const { return total_.load(std::memory_order_relaxed); }

  private:
    struct Hash {
        std::size_t operator()(const IpAddr& ip) const noexcept;
    };
    struct Stripe {
        std::mutex mu;
        std::unordered_map<IpAddr, std::uint32_t, Hash> counts;
    };
    Stripe& stripe(const IpAddr& ip) { return stripes_[Hash{}(ip) % stripes_.size()]; }

    std::atomic<std::uint32_t> total_{0};
    std::array<Stripe, 64> stripes_;
};

}  // namespace sluice
