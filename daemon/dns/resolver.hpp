#pragma once
// One shard's resolver: c-ares driven by the shard's libuv loop (RFC 1035 queries over UDP,
// TCP when an answer is truncated, retries and timeouts by c-ares), no thread and no
// blocking call. c-ares tells which sockets to watch (its socket-state callback becomes a
// uv_poll per socket) and when to wake up (ares_timeout becomes one uv_timer). Answers go
// through the pure parser and interpretation of daemon/dns/message.hpp and the shard's
// cache (daemon/dns/cache.hpp). Identical questions in flight share one query.
//
// Trust: answers come from the network; c-ares matches ids and questions, our parser
// checks everything else. Every failure is a Result with Status::temporary or malformed,
// never an exception or a crash.

#include <ares.h>
#include <uv.h>

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/units.hpp"
#include "daemon/dns/cache.hpp"
#include "daemon/dns/destination.hpp"

namespace sluice {
struct ShardMetrics;
struct Config;
}

namespace sluice::dns {

struct ResolverOptions {
    std::vector<std::string> servers;  // "IP", "IP:PORT", "[IPv6]:PORT"; empty: resolv.conf
    Millis timeout{5000};              // per try
    unsigned attempts = 3;
    Cache::Options cache;
};

// What the [dns] section of the config asks for.
ResolverOptions resolver_options(const sluice::Config& c);

class Resolver {
  public:
    Resolver(uv_loop_t* loop, ShardMetrics* metrics);
    Resolver(const Resolver&) = delete;
    Resolver& operator=(const Resolver&) = delete;
    ~Resolver();

    // "" or why the channel could not be made (bad server list...).
    std::string start(const ResolverOptions& o);
    // A new config generation: new servers or cache bounds (the cache is kept).
    std::string reconfigure(const ResolverOptions& o);

    // The answer for (name, type): from the cache, or asked. `done` runs on the loop,
    // possibly before this returns (cache hit, shutting down).
    void lookup(const std::string& name, Type type, LookupDone done);
    // The same, as the function daemon/dns/destination.hpp takes.
    LookupFn lookup_fn();

    // Shutdown: lookups in flight end as temporary failures; handles are closed.
    void close();
    // Handles not yet freed (the loop must keep running until 0).
    std::size_t busy() const { return handles_; }

    Cache& cache() { return cache_; }
    std::mt19937& rng() { return rng_; }

  private:
    struct Poll;
    struct Query;
    static void on_sock_state(void* data, ares_socket_t fd, int readable, int writable);
    static void on_answer(void* arg, int status, int timeouts, unsigned char* abuf, int alen);
    void rearm();
    void deliver(const std::string& key, const Result& r);
    void publish_cache_size();

    uv_loop_t* loop_;
    ShardMetrics* metrics_;
    ares_channel channel_ = nullptr;
    uv_timer_t timer_{};
    bool timer_open_ = false;
    bool closing_ = false;
    std::size_t handles_ = 0;
    std::map<ares_socket_t, Poll*> polls_;
    std::map<std::string, std::vector<LookupDone>> waiting_;  // key -> lookups in flight
    Cache cache_{Cache::Options{}};
    std::int64_t published_entries_ = 0;
    std::int64_t published_bytes_ = 0;
    std::mt19937 rng_;
};

}  // namespace sluice::dns
