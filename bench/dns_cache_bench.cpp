// The resolver cache (daemon/dns/cache.hpp): lookup latency p50/p99 when warm (a hit) and
// the cost of a miss, and its memory at 100k names (the cache's own estimate against the
// heap growth malloc reports), in one run.
//   build/bench/dns_cache_bench [NAMES]
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "daemon/dns/cache.hpp"

using namespace sluice;
using namespace sluice::dns;
using Clock = std::chrono::steady_clock;

namespace {

Result answer(const std::string& name, int i) {
    Result r;
    r.status = Status::ok;
    r.canonical = name;
    r.ttl = 3600;
    Record rec;
    rec.name = name;
    rec.type = Type::a;
    rec.addr = *parse_ip("192.0.2." + std::to_string(i % 250 + 1));
    r.records.push_back(rec);
    return r;
}

double pct(std::vector<double>& v, double p) {
    std::sort(v.begin(), v.end());
    return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t n = argc > 1 ? std::stoul(argv[1]) : 100'000;
    std::vector<std::string> names;
    for (std::size_t i = 0; i < n; ++i) {
        names.push_back("mx" + std::to_string(i) + ".example-domain-" + std::to_string(i % 977) +
                        ".test");
    }
    auto before = mallinfo2().uordblks;
    Cache c({.max_entries = n, .max_bytes = 1ull << 32, .min_ttl = 0, .max_ttl = 86400});
    auto now = Clock::now();
    for (std::size_t i = 0; i < n; ++i) {
        c.put(names[i], Type::a, answer(names[i], static_cast<int>(i)), now);
    }
    auto after = mallinfo2().uordblks;
    std::vector<double> warm, cold;
    for (std::size_t i = 0; i < n; ++i) {
        const auto& name = names[(i * 7919) % n];
        auto t0 = Clock::now();
        auto hit = c.get(name, Type::a, now);
        auto t1 = Clock::now();
        if (!hit) {
            return 1;
        }
        warm.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
        std::string miss = "absent" + std::to_string(i) + ".test";
        t0 = Clock::now();
        auto none = c.get(miss, Type::a, now);
        t1 = Clock::now();
        if (none) {
            return 1;
        }
        cold.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
    }
    std::printf("cache of %zu names: estimate %.1f MiB, heap growth %.1f MiB (%.0f bytes/name)\n",
                n, static_cast<double>(c.bytes()) / 1048576.0,
                static_cast<double>(after - before) / 1048576.0,
                static_cast<double>(after - before) / static_cast<double>(n));
    std::printf("hit  (warm): p50 %.0f ns  p99 %.0f ns\n", pct(warm, 0.5), pct(warm, 0.99));
    std::printf("miss (cold, before the query goes out): p50 %.0f ns  p99 %.0f ns\n",
                pct(cold, 0.5), pct(cold, 0.99));
    return 0;
}
