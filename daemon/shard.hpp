#pragma once
// A shard: one thread, one libuv loop, its own listener sockets (SO_REUSEPORT, made by the
// server and handed over), its own connections, maps reader and counters. Nothing here is
// shared with other shards except the connection limiter; the server talks to a shard
// only through post(), which is safe from any thread.
//
// Trust: runs peer-facing code; a failure in one session closes that session only.

#include <uv.h>

#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/dns/resolver.hpp"
#include "daemon/limiter.hpp"
#include "daemon/local_delivery.hpp"
#include "daemon/metrics.hpp"
#include "daemon/outbound.hpp"
#include "daemon/rates/limits.hpp"
#include "daemon/session.hpp"
#include "policy/maps.hpp"

namespace sluice {

class Connection;
namespace auth {
class AuthThrottle;
}

// The maps a shard reads, plus the periodic check for a newly published generation.
class ShardMaps : public policy::Maps {
  public:
    // Everything on the calling thread (start-up, tests).
    virtual void refresh() = 0;
    // On the shard's loop: files are stat()ed here, new generations validated and opened
    // on the thread pool (a checksum over the whole file: ~13 ms per 15 MB, which must not
    // stall the loop), and switched to on the loop; then `then` runs there (possibly at
    // once). Counted as shard work while it runs.
    virtual void refresh_then(Shard& shard, std::function<void()> then) = 0;
};

class Shard;

// The shard that delivers queued message `id` out of `shards`: every delivery, retry and
// operator flush of a message runs there, so that one shard's bookkeeping sees all of its
// deliveries in flight (two shards would deliver it twice).
std::size_t owner_index(std::string_view id, std::size_t shards);

struct ShardOptions {
    int index = 0;
    const std::vector<std::unique_ptr<Shard>>* peers = nullptr;  // all shards, this one too
    std::shared_ptr<const Snapshot> snapshot;
    std::vector<int> listener_fds;  // one per snapshot->config->listeners entry, same order
    ConnectionLimiter* limiter = nullptr;
    rates::RateStore* rates = nullptr;  // [rates] counters, process-wide (daemon/rates)
    std::unique_ptr<ShardMaps> maps;
    storage::Spool* spool = nullptr;              // process-wide; outlives the shard
    auth::AuthThrottle* auth_throttle = nullptr;  // process-wide, thread-safe
};

class Shard {
  public:
    explicit Shard(ShardOptions opts);
    Shard(const Shard&) = delete;
    Shard& operator=(const Shard&) = delete;
    ~Shard();

    void start();  // spawns the thread
    void join();

    // Thread-safe: runs `fn` on the shard's loop thread at the next safe point.
    void post(std::function<void(Shard&)> fn);
    // The shard that delivers queued message `id` (owner_index); this one without peers.
    Shard& owner_of(std::string_view id);

    // Thread-safe: the shard has drained and closed its own handles (its loop is ending).
    bool finished() {
        std::lock_guard lock(mu_);
        return finished_;
    }

    // Loop-thread only.
    // Switches new sessions to `s` (sessions in progress keep theirs). The listeners follow
    // s's config: a listener whose address is still there keeps its socket (and the
    // connections queued on it), one whose address is gone is closed, and each of `added`
    // (address as format_sockaddr prints it -> a bound SO_REUSEPORT socket made by the
    // server) starts listening. Listener indexes become positions in s's config, and the
    // per-listener counters follow their names (ShardMetrics::rebind_listeners).
    void set_snapshot(std::shared_ptr<const Snapshot> s,
                      std::vector<std::pair<std::string, int>> added = {});
    void drain(Millis grace);  // stop accepting, 421 idle sessions, finish DATA in flight
    const std::shared_ptr<const Snapshot>& snapshot() const { return snapshot_; }
    uv_loop_t* loop() { return &loop_; }
    int index() const { return index_; }
    ShardMetrics& metrics() { return metrics_; }
    ShardMaps& maps() { return *maps_; }
    ConnectionLimiter& limiter() { return *limiter_; }
    rates::RateStore* rates() { return rates_; }
    LocalDelivery& local_delivery() { return *local_delivery_; }
    Outbound* outbound() { return outbound_.get(); }
    // The shard's DNS resolver (null once drained or when it could not start).
    dns::Resolver* resolver() { return resolver_.get(); }
    storage::Spool* spool() { return spool_; }
    auth::AuthThrottle* auth_throttle() { return auth_throttle_; }
    char* read_buffer() { return read_buffer_.data(); }
    std::size_t read_buffer_size() const { return read_buffer_.size(); }

    void add(Connection* c);
    void remove(Connection* c);
    // Work in flight on the thread pool that refers to this shard (keeps the loop alive).
    void work_started() { ++work_in_flight_; }
    void work_finished();

  private:
    struct Listener {
        uv_tcp_t handle;
        Shard* shard;
        std::size_t index;
        std::string address;  // format_sockaddr: what identifies it across reloads
    };

    void open_listener(std::size_t index, std::string address, int fd);

    void run();
    static void on_async(uv_async_t* a);
    static void on_tick(uv_timer_t* t);
    static void on_connection(uv_stream_t* server, int status);
    void maybe_finish();

    int index_;
    const std::vector<std::unique_ptr<Shard>>* peers_;
    std::shared_ptr<const Snapshot> snapshot_;
    std::vector<int> listener_fds_;
    ConnectionLimiter* limiter_;
    rates::RateStore* rates_;
    std::unique_ptr<ShardMaps> maps_;

    uv_loop_t loop_{};
    uv_async_t async_{};
    uv_timer_t tick_{};
    uv_timer_t grace_{};
    uv_prepare_t prepare_{};  // before each poll: start the commit batch, write the log lines
    std::unique_ptr<LocalDelivery> local_delivery_;
    storage::Spool* spool_;
    auth::AuthThrottle* auth_throttle_;
    std::unique_ptr<dns::Resolver> resolver_;  // before outbound_: it outlives it
    std::unique_ptr<Outbound> outbound_;  // forwarding from the spool (null without one)
    std::vector<std::unique_ptr<Listener>> listeners_;
    std::vector<Connection*> connections_;  // unordered; index kept in each Connection
    std::vector<char> read_buffer_;         // one per loop: reads are consumed synchronously
    ShardMetrics metrics_;
    std::thread thread_;
    std::mutex mu_;
    std::deque<std::function<void(Shard&)>> inbox_;
    bool draining_ = false;
    bool finished_ = false;  // async handle closed: post() must drop work (guarded by mu_)
    std::size_t work_in_flight_ = 0;
};

}  // namespace sluice
