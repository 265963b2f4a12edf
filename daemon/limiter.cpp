#include "daemon/limiter.hpp"

#include <cstring>

namespace sluice {

std::size_t ConnectionLimiter::Hash::operator()(const IpAddr& ip) const noexcept {
    std::uint64_t a, b;
    std::memcpy(&a, ip.bytes.data(), 8);
    std::memcpy(&b, ip.bytes.data() + 8, 8);
    return static_cast<std::size_t>((a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full) ^
                                    (b >> 29));
}

ConnectionLimiter::Result ConnectionLimiter::acquire(const IpAddr& ip, std::uint32_t max_total,
                                                     std::uint32_t max_per_ip) {
    if (total_.fetch_add(1, std::memory_order_relaxed) >= max_total) {
        total_.fetch_sub(1, std::memory_order_relaxed);
        return Result::global_limit;
    }
    Stripe& s = stripe(ip);
    std::lock_guard lock(s.mu);
    auto& n = s.counts[ip];
    if (n >= max_per_ip) {
        if (n == 0) {
            s.counts.erase(ip);
        }
        total_.fetch_sub(1, std::memory_order_relaxed);
        return Result::ip_limit;
    }
    ++n;
    return Result::ok;
}

void ConnectionLimiter::release(const IpAddr& ip) {
    Stripe& s = stripe(ip);
    {
        std::lock_guard lock(s.mu);
        auto it = s.counts.find(ip);
        if (it != s.counts.end() && --it->second == 0) {
            s.counts.erase(it);
        }
    }
    total_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace sluice
