#pragma once
// The numbers of docs/metrics.md and the HTTP endpoint that serves them.
//
// collect() sums every shard's ShardMetrics at scrape time. The shards write their own
// counters with relaxed stores and are never stopped or locked for a scrape; the only lock
// is each shard's `listeners_mu`, which guards the listener-name table and is taken on the
// shard only when it switches snapshots (daemon/metrics.hpp). A scrape is therefore a
// snapshot of counters that may be a few increments apart from each other, never a value
// that goes backwards. render_prometheus() writes the text exposition format 0.0.4
// (HELP, TYPE, counters, gauges, histograms with cumulative buckets, _sum and _count);
// to_json() the same numbers for `sluicectl stats --json`.
//
// StatsServer is HTTP/1.1 on the [stats] address, on the daemon's main loop: GET or HEAD
// /metrics, /healthz (200 while the process serves), /readyz (503 from the moment draining
// starts), anything else 404. One request per connection (`Connection: close`), a strict
// parser (daemon/http.hpp: 400/405/414/431/505), a lingering close so an error reply is
// not lost to a reset, and no way for idle or slow clients to keep a probe out: a complete
// request within limits::request_timeout_ms (408 beyond), at most limits::max_clients
// clients and limits::max_clients_per_address from one address, and a new connection over
// either cap evicts a client (of that address, or of all) of the owner holding the most
// clients there: one already answered first, else the one that has waited longest. An
// owner is the local user for a connection from this host (the kernel says whose socket
// the peer is: sock_diag(7)), else the client address, so a reconnect loop of one user,
// however fast, only ever evicts its own connections, and a probe of another user or
// address is never the victim. A probe's request is also read as it is accepted.
//
// Trust: the endpoint is reachable by whoever can reach its address; it reads no secret
// and changes nothing.

#include <uv.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.hpp"
#include "daemon/flood_log.hpp"
#include "daemon/http.hpp"
#include "daemon/metrics.hpp"

namespace sluice::stats {

// Numbers the main thread keeps (not per shard).
struct ServerNumbers {
    std::uint64_t generation = 0;
    std::uint64_t reloads_ok = 0;
    std::uint64_t reloads_failed = 0;
    std::uint64_t queue_messages = 0;
    // The spool's group commit: messages made durable, batches written, fsyncs issued
    // (their ratio is the fsyncs per message, bench/gateway_vs_postfix.sh).
    std::uint64_t spool_committed = 0;
    std::uint64_t spool_batches = 0;
    std::uint64_t spool_fsyncs = 0;
    std::uint64_t spool_commit_ns = 0;
    // Clients closed to make room for a newer one (stats endpoint, control socket).
    std::uint64_t stats_evicted = 0;
    std::uint64_t control_evicted = 0;
    std::int64_t transactions_open = 0;
    // The spool's disk (storage::SpoolState as text: ok, low, full, failing).
    std::string spool_state = "ok";
    std::uint64_t spool_free_bytes = 0;
    std::uint64_t spool_reserve_bytes = 0;
    std::uint64_t spool_write_errors = 0;
    double start_time = 0;  // seconds since the Unix epoch
    // Seconds since the oldest queued message was received (0: queue empty).
    double queue_oldest_age = 0;
    // Per shard: how long a callback waits before its loop runs it (daemon/watchdog.hpp).
    std::vector<double> shard_loop_lag;
    std::string version;
};

template <typename E>
using ByResult = std::array<std::uint64_t, static_cast<std::size_t>(E::count_)>;

struct Totals {
    std::map<std::string, ByResult<ConnResult>> connections;  // by listener name
    std::int64_t sessions_active = 0;
    std::int64_t outbound_queued_bytes = 0;
    std::int64_t outbound_overflow = 0;
    std::array<std::uint64_t, kDecisionCodes> decisions{};  // by policy::Code
    std::array<std::array<std::uint64_t, 2>, 4> rate_limited{};  // ShardMetrics::rate_limited
    ByResult<MsgResult> messages{};
    ByResult<DeliveryResult> deliveries{};
    ByResult<TlsResult> tls_handshakes{};
    ByResult<TlsResult> tls_out_handshakes{};
    ByResult<AuthResult> auth{};
    // The shards' resolvers.
    std::uint64_t dns_queries = 0;
    ByResult<DnsAnswer> dns_answers{};
    std::uint64_t dns_cache_hits = 0;
    std::uint64_t dns_cache_misses = 0;
    std::int64_t dns_cache_entries = 0;
    std::int64_t dns_cache_bytes = 0;
    std::array<std::uint64_t, kDnsBuckets.size()> dns_latency_buckets{};  // cumulative
    std::uint64_t dns_latency_count = 0;
    double dns_latency_sum = 0;
    std::uint64_t bytes_received = 0;
    std::array<std::uint64_t, kDurationBuckets.size()> duration_buckets{};  // cumulative
    std::uint64_t duration_count = 0;                                       // also the +Inf bucket
    double duration_sum = 0;                                                // seconds
    std::vector<std::uint64_t> shard_generations;
    ServerNumbers server;
};

// Sums the shards' counters (any thread; see the header comment).
Totals collect(const std::vector<const ShardMetrics*>& shards, const ServerNumbers& server);

std::string render_prometheus(const Totals& t);
nlohmann::json to_json(const Totals& t);

// Label values (result_name) are in daemon/metrics.hpp, one table per enum.

namespace limits {
inline constexpr std::size_t max_clients = 512;             // one more evicts the longest waiting
inline constexpr std::size_t max_clients_per_address = 32;  // from one client address, likewise
inline constexpr std::uint64_t request_timeout_ms = 1000;   // whole request head: 408 beyond
inline constexpr std::uint64_t linger_ms = 2000;            // after the reply, waiting for EOF
inline constexpr std::size_t linger_bytes = 64 * 1024;      // discarded after the reply at most
inline constexpr int backlog = 511;
}  // namespace limits

class StatsServer {
  public:
    // `metrics` renders the /metrics body; it runs on the loop thread for each scrape.
    StatsServer(uv_loop_t* loop, std::function<std::string()> metrics,
                std::uint64_t request_timeout_ms = limits::request_timeout_ms);
    StatsServer(const StatsServer&) = delete;
    StatsServer& operator=(const StatsServer&) = delete;
    ~StatsServer();

    // Binds and serves `address`. A previously bound address keeps serving until this
    // one is bound, then is closed. Returns "" or the error (nothing changes then).
    std::string listen(const SockAddr& address);
    // Stops serving its address (clients in progress finish).
    void stop_listening();
    // /readyz answers 503 from now on.
    void set_draining() { draining_ = true; }
    // Stops listening and closes every client; afterwards the loop holds no handle of ours
    // once the close callbacks have run.
    void close();

    bool listening() const { return listener_ != nullptr; }
    std::size_t clients() const { return clients_.size(); }
    std::uint64_t requests() const { return requests_; }
    std::uint64_t evicted() const { return evicted_; }

  private:
    struct Listener;
    struct Client;

    static void on_connection(uv_stream_t* server, int status);
    static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
    static void on_timer(uv_timer_t* t);
    void respond(Client& c);
    void respond_error(Client& c, int code);
    void send(Client& c, std::string response);
    void close_client(Client& c);
    // Makes room for a client from `peer`: evicts one when a cap is reached.
    void make_room(const IpAddr& peer);
    void evict(Client& c, std::string_view reason);
    void read_now(Client& c);

    uv_loop_t* loop_;
    std::function<std::string()> metrics_;
    std::uint64_t request_timeout_ms_;
    Listener* listener_ = nullptr;
    std::list<Client*> clients_;  // in the order they were accepted: oldest first
    std::map<IpAddr, std::size_t> per_address_;
    std::uint64_t evicted_ = 0;
    FloodLog evict_log_{loop_, "stats_evicted", "client", "evicted"};
    bool draining_ = false;
    bool closed_ = false;
    std::uint64_t requests_ = 0;
};

}  // namespace sluice::stats
