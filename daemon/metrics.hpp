#pragma once
// Counters of one shard (docs/metrics.md). Each shard writes only its own `ShardMetrics`
// (single writer: relaxed load + store, no locked instructions on the data path); the
// stats endpoint reads all shards at scrape time and sums them.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace sluice {

inline constexpr std::size_t kMaxListeners = 64;
inline constexpr std::size_t kDecisionCodes = 32;  // >= policy::Code count
inline constexpr std::array<double, 10> kDurationBuckets = {0.01, 0.05, 0.1, 0.5, 1,
                                                            5,    10,   30,  60,  300};

// The `result` label of each counter family: one table per enum, its rows in the enum's
// order, each with the label value and what it counts (docs/metrics.md says the same).
struct ResultRow {
    std::string_view name;
    std::string_view meaning;
};

// proxy_refused: a proxy_protocol listener closed it before the session (peer not a listed
// balancer, or its PROXY header invalid or not complete in time).
enum class ConnResult : std::uint8_t {
    accepted,
    filtered,
    over_limit,
    shutting_down,
    proxy_refused,
    count_
};
inline constexpr std::array<ResultRow, 5> kConnResults = {{
    {"accepted", "a session began"},
    {"filtered", "refused at connect by the policy (IP filter C130, access map B120, T140)"},
    {"over_limit", "refused: server.max_connections or server.max_connections_per_ip"},
    {"shutting_down", "refused while draining (0 today: a draining shard closes its listeners)"},
    {"proxy_refused", "closed before the session: not a listed balancer, or a bad or late PROXY "
                      "header"},
}};
enum class MsgResult : std::uint8_t { accepted, rejected, failed, count_ };
inline constexpr std::array<ResultRow, 3> kMsgResults = {{
    {"accepted", "durable and answered 250"},
    {"rejected", "refused at the end of DATA (size, NUL, line length, hops, in-line refusal)"},
    {"failed", "storage failed or the next hop deferred in-line: answered 4xx"},
}};
enum class DeliveryResult : std::uint8_t { delivered, deferred, bounced, count_ };
inline constexpr std::array<ResultRow, 3> kDeliveryResults = {{
    {"delivered", "the next hop or the maildir took the recipient"},
    {"deferred", "4xx: retried on spool.retry"},
    {"bounced", "5xx or spool.max_age: final, a DSN goes to the sender"},
}};
// TLS handshakes (STARTTLS and implicit): completed in full, resumed from a ticket, failed.
enum class TlsResult : std::uint8_t { ok, resumed, failed, count_ };
inline constexpr std::array<ResultRow, 3> kTlsResults = {{
    {"ok", "a full handshake completed"},
    {"resumed", "resumed from a session ticket"},
    {"failed", "the handshake failed"},
}};
// AUTH attempts: credentials accepted, refused, or the exchange aborted/malformed.
enum class AuthResult : std::uint8_t { ok, failed, aborted, count_ };
inline constexpr std::array<ResultRow, 3> kAuthResults = {{
    {"ok", "credentials accepted"},
    {"failed", "credentials refused (or throttled, or the users map unreadable)"},
    {"aborted", "no credentials to check: cancelled, bad base64 or malformed"},
}};

// DNS answers (daemon/dns/resolver.hpp) by what the server said: rcode, or no answer.
enum class DnsAnswer : std::uint8_t { noerror, nxdomain, servfail, refused, timeout, malformed, count_ };
inline constexpr std::array<ResultRow, 6> kDnsAnswers = {{
    {"noerror", "an answer (possibly with no record of the type asked)"},
    {"nxdomain", "the name does not exist"},
    {"servfail", "the server failed"},
    {"refused", "the server refused the query"},
    {"timeout", "no answer within dns.timeout x dns.attempts"},
    {"malformed", "an answer that does not parse"},
}};
inline constexpr std::array<double, 8> kDnsBuckets = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};

constexpr const auto& result_rows(ConnResult) { return kConnResults; }
constexpr const auto& result_rows(MsgResult) { return kMsgResults; }
constexpr const auto& result_rows(DeliveryResult) { return kDeliveryResults; }
constexpr const auto& result_rows(TlsResult) { return kTlsResults; }
constexpr const auto& result_rows(AuthResult) { return kAuthResults; }
constexpr const auto& result_rows(DnsAnswer) { return kDnsAnswers; }

// The label value of `r` ("accepted", ...), as in the metrics and the JSON of stats.
template <typename E>
constexpr std::string_view result_name(E r) {
    static_assert(std::tuple_size_v<std::remove_cvref_t<decltype(result_rows(r))>> ==
                      static_cast<std::size_t>(E::count_),
                  "one row per value");
    const auto& rows = result_rows(r);
    auto i = static_cast<std::size_t>(r);
    return i < rows.size() ? rows[i].name : "unknown";
}

struct Counter {
    std::atomic<std::uint64_t> v{0};
    void add(std::uint64_t n = 1) {
        v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    std::uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

struct Gauge {
    std::atomic<std::int64_t> v{0};
    void add(std::int64_t n) {
        v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    std::int64_t get() const { return v.load(std::memory_order_relaxed); }
};

struct ShardMetrics {
    std::array<std::array<Counter, static_cast<std::size_t>(ConnResult::count_)>, kMaxListeners>
        connections;
    Gauge sessions_active;
    // Message data held in memory by next-hop queues, and jobs waiting on disk behind them
    // (Outbound: limits.outbound_queue_memory).
    Gauge outbound_queued_bytes;
    Gauge outbound_overflow;
    std::array<Counter, kDecisionCodes> decisions;
    // Refusals by [rates] limit: [connections, messages, recipients, errors][client, network]
    // (daemon/rates/limits.hpp LimitKind, KeyKind).
    std::array<std::array<Counter, 2>, 4> rate_limited;
    std::array<Counter, static_cast<std::size_t>(MsgResult::count_)> messages;
    std::array<Counter, static_cast<std::size_t>(DeliveryResult::count_)> deliveries;
    Counter bytes_received;
    std::array<Counter, kDurationBuckets.size()> duration_buckets;  // non-cumulative here
    Counter duration_count;
    Counter duration_sum_ms;
    std::array<Counter, static_cast<std::size_t>(TlsResult::count_)> tls_handshakes;
    // STARTTLS to next hops (outbound links).
    std::array<Counter, static_cast<std::size_t>(TlsResult::count_)> tls_out_handshakes;
    std::array<Counter, static_cast<std::size_t>(AuthResult::count_)> auth;
    // The shard's resolver: queries sent, answers by rcode, cache hits and misses, the
    // latency of network queries, and the cache's size.
    Counter dns_queries;
    std::array<Counter, static_cast<std::size_t>(DnsAnswer::count_)> dns_answers;
    Counter dns_cache_hits;
    Counter dns_cache_misses;
    std::array<Counter, kDnsBuckets.size()> dns_latency_buckets;  // non-cumulative here
    Counter dns_latency_count;
    Counter dns_latency_sum_us;
    Gauge dns_cache_entries;
    Gauge dns_cache_bytes;
    // The config generation this shard serves (stored by the shard thread when it switches).
    std::atomic<std::uint64_t> generation{0};

    // `connections` is indexed by the listener's position in the shard's current snapshot,
    // which a reload may reorder, extend or shrink. The stats are per listener NAME, so the
    // shard re-keys the counters when it switches snapshots (rebind_listeners, shard thread
    // only, at the switch) and the scrape reads names and counters under `listeners_mu`.
    // That mutex is never taken on the data path: increments stay plain relaxed stores.
    using ConnCounts = std::array<std::uint64_t, static_cast<std::size_t>(ConnResult::count_)>;
    mutable std::mutex listeners_mu;
    std::vector<std::string> listener_names;           // slot -> name (guarded)
    std::map<std::string, ConnCounts> listeners_gone;  // totals of removed listeners (guarded)

    // Shard thread only. Moves each listener's counts to its slot in `names` (its new
    // order), keeps the totals of listeners that disappeared, and restores them if one
    // comes back, so every per-name counter stays monotonic across reloads.
    void rebind_listeners(const std::vector<std::string>& names) {
        std::lock_guard lock(listeners_mu);
        std::map<std::string, ConnCounts> current = std::move(listeners_gone);
        for (std::size_t i = 0; i < listener_names.size() && i < kMaxListeners; ++i) {
            ConnCounts c{};
            for (std::size_t r = 0; r < c.size(); ++r) {
                c[r] = connections[i][r].get();
            }
            current[listener_names[i]] = c;
        }
        listener_names.assign(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                                 names.size(), kMaxListeners)));
        for (std::size_t i = 0; i < kMaxListeners; ++i) {
            ConnCounts c{};
            if (i < listener_names.size()) {
                auto it = current.find(listener_names[i]);
                if (it != current.end()) {
                    c = it->second;
                    current.erase(it);
                }
            }
            for (std::size_t r = 0; r < c.size(); ++r) {
                connections[i][r].v.store(c[r], std::memory_order_relaxed);
            }
        }
        listeners_gone = std::move(current);
    }

    void observe_dns(double seconds) {
        for (std::size_t i = 0; i < kDnsBuckets.size(); ++i) {
            if (seconds <= kDnsBuckets[i]) {
                dns_latency_buckets[i].add();
                break;
            }
        }
        dns_latency_count.add();
        dns_latency_sum_us.add(static_cast<std::uint64_t>(seconds * 1e6));
    }

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
