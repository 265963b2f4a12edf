#include "daemon/shard.hpp"

#include <pthread.h>
#include <unistd.h>

#include <optional>

#include "common/log.hpp"
#include "daemon/connection.hpp"

namespace sluice {
namespace {

// Session timers (greeting delay, timeouts, data rate) are checked this often.
constexpr std::uint64_t kTickMs = 250;
// Maps are checked for a newly published generation this often.
constexpr std::uint64_t kMapRefreshTicks = 1;
// One read buffer per loop, reused by every connection (no 64 KiB per idle peer).
constexpr std::size_t kReadBuffer = 64 * 1024;

}  // namespace

Shard::Shard(ShardOptions o)
    : index_(o.index),
      peers_(o.peers),
      snapshot_(std::move(o.snapshot)),
      listener_fds_(std::move(o.listener_fds)),
      limiter_(o.limiter),
      rates_(o.rates),
      maps_(std::move(o.maps)),
      spool_(o.spool),
      auth_throttle_(o.auth_throttle),
      read_buffer_(kReadBuffer) {
    std::vector<std::string> names;
    for (const auto& l : snapshot_->config->listeners) {
        names.push_back(l.name);
    }
    metrics_.rebind_listeners(names);
    metrics_.generation.store(snapshot_->generation, std::memory_order_relaxed);
}

std::size_t owner_index(std::string_view id, std::size_t shards) {
    return shards == 0 ? 0 : std::hash<std::string_view>{}(id) % shards;
}

Shard& Shard::owner_of(std::string_view id) {
    if (peers_ == nullptr || peers_->empty()) {
        return *this;
    }
    return *(*peers_)[owner_index(id, peers_->size())];
}

Shard::~Shard() {
    join();
}

void Shard::start() {
    // The loop and its async handle exist before the thread does, so post() is safe from
    // the moment start() returns.
    uv_loop_init(&loop_);
    loop_.data = this;
    async_.data = this;
    uv_async_init(&loop_, &async_, on_async);
    thread_ = std::thread([this] { run(); });
}

void Shard::join() {
    if (thread_.joinable()) {
        thread_.join();
    }
}

void Shard::post(std::function<void(Shard&)> fn) {
    std::lock_guard lock(mu_);
    if (finished_) {
        return;  // the loop is ending; nothing will run there again
    }
    inbox_.push_back(std::move(fn));
    uv_async_send(&async_);  // coalesces; on_async drains the whole inbox
}

void Shard::run() {
    std::string name = "sluice-shard" + std::to_string(index_);
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());

    tick_.data = this;
    grace_.data = this;
    uv_timer_init(&loop_, &tick_);
    uv_timer_init(&loop_, &grace_);
    uv_timer_start(&tick_, on_tick, kTickMs, kTickMs);
    // Log lines of one loop iteration go out in one write (common/log.hpp).
    set_thread_log_batching(true);
    local_delivery_ = std::make_unique<LocalDelivery>(&loop_, index_, &metrics_);
    resolver_ = std::make_unique<dns::Resolver>(&loop_, &metrics_);
    if (auto e = resolver_->start(dns::resolver_options(*snapshot_->config)); !e.empty()) {
        // Without a resolver, delivery by MX defers (4.4.3); everything else works.
        LogLine(Level::error, "dns_failed", index_).kv("error", e);
    }
    if (spool_ != nullptr) {
        outbound_ = std::make_unique<Outbound>(*this, *spool_);
    }
    prepare_.data = this;
    uv_prepare_init(&loop_, &prepare_);
    uv_prepare_start(&prepare_, [](uv_prepare_t* p) {
        // Everything this iteration committed goes to the thread pool as one batch.
        static_cast<Shard*>(p->data)->local_delivery_->flush();
        flush_thread_log();
    });

    for (std::size_t i = 0; i < listener_fds_.size(); ++i) {
        open_listener(i, format_sockaddr(snapshot_->config->listeners[i].address),
                      listener_fds_[i]);
    }
    uv_run(&loop_, UV_RUN_DEFAULT);
    outbound_.reset();
    resolver_.reset();
    set_thread_log_batching(false);
    // Every handle is closed by now; uv_loop_close verifies it.
    int rc = uv_loop_close(&loop_);
    if (rc != 0) {
        LogLine(Level::error, "loop_close", index_).kv("error", uv_strerror(rc));
    }
}

void Shard::on_async(uv_async_t* a) {
    auto* self = static_cast<Shard*>(a->data);
    std::deque<std::function<void(Shard&)>> work;
    {
        std::lock_guard lock(self->mu_);
        work.swap(self->inbox_);
    }
    for (auto& fn : work) {
        fn(*self);
    }
}

void Shard::on_tick(uv_timer_t* t) {
    auto* self = static_cast<Shard*>(t->data);
    auto now = smtp::Clock::now();
    // Ticking may close connections (and remove them from the list): iterate a copy.
    auto conns = self->connections_;
    for (auto* c : conns) {
        c->tick(now);
    }
    static_assert(kMapRefreshTicks >= 1);
    self->maps_->refresh_then(*self, {});
    if (self->outbound_) {
        self->outbound_->tick(std::chrono::system_clock::now());
    }
}

void Shard::on_connection(uv_stream_t* server, int status) {
    auto* l = static_cast<Listener*>(server->data);
    if (status < 0) {
        LogLine(Level::warn, "accept_failed", l->shard->index_).kv("error", uv_strerror(status));
        return;
    }
    Connection::accept(*l->shard, server, l->index);
}

void Shard::add(Connection* c) {
    c->slot = connections_.size();
    connections_.push_back(c);
}

void Shard::remove(Connection* c) {
    std::size_t i = c->slot;
    if (i < connections_.size() && connections_[i] == c) {
        connections_[i] = connections_.back();
        connections_[i]->slot = i;
        connections_.pop_back();
    }
    maybe_finish();
}

void Shard::work_finished() {
    --work_in_flight_;
    maybe_finish();
}

void Shard::open_listener(std::size_t index, std::string address, int fd) {
    auto l = std::make_unique<Listener>();
    l->shard = this;
    l->index = index;
    l->address = std::move(address);
    uv_tcp_init(&loop_, &l->handle);
    l->handle.data = l.get();
    int rc = uv_tcp_open(&l->handle, fd);
    if (rc == 0) {
        rc = uv_listen(reinterpret_cast<uv_stream_t*>(&l->handle), 1024, on_connection);
    }
    if (rc != 0) {
        LogLine(Level::error, "listen_failed", index_)
            .kv("address", l->address)
            .kv("error", uv_strerror(rc));
    }
    listeners_.push_back(std::move(l));
}

void Shard::set_snapshot(std::shared_ptr<const Snapshot> s,
                         std::vector<std::pair<std::string, int>> added) {
    if (resolver_ && !draining_) {
        if (auto e = resolver_->reconfigure(dns::resolver_options(*s->config)); !e.empty()) {
            LogLine(Level::error, "dns_failed", index_).kv("error", e);
        }
    }
    const auto& wanted = s->config->listeners;
    auto position = [&wanted](const std::string& address) -> std::optional<std::size_t> {
        for (std::size_t i = 0; i < wanted.size(); ++i) {
            if (format_sockaddr(wanted[i].address) == address) {
                return i;
            }
        }
        return std::nullopt;
    };
    if (draining_) {
        // drain() closed every listener already; new sockets are not wanted.
        for (auto& [address, fd] : added) {
            ::close(fd);
        }
    } else {
        std::vector<std::unique_ptr<Listener>> keep;
        for (auto& l : listeners_) {
            if (auto i = position(l->address)) {
                l->index = *i;
                keep.push_back(std::move(l));
                continue;
            }
            // Removed from the config: the handle frees its Listener when it is closed.
            uv_close(reinterpret_cast<uv_handle_t*>(&l.release()->handle),
                     [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
        }
        listeners_ = std::move(keep);
        for (auto& [address, fd] : added) {
            if (auto i = position(address)) {
                open_listener(*i, address, fd);
            } else {
                ::close(fd);
            }
        }
    }
    std::vector<std::string> names;
    for (const auto& l : wanted) {
        names.push_back(l.name);
    }
    metrics_.rebind_listeners(names);
    metrics_.generation.store(s->generation, std::memory_order_relaxed);
    snapshot_ = std::move(s);
}

void Shard::drain(Millis grace) {
    if (draining_) {
        return;
    }
    draining_ = true;
    // Closing the listeners first: the kernel hands new connections to no one of ours.
    for (auto& l : listeners_) {
        uv_close(reinterpret_cast<uv_handle_t*>(&l->handle), nullptr);
    }
    auto conns = connections_;
    for (auto* c : conns) {
        c->shutdown();
    }
    if (outbound_) {
        outbound_->drain();
    }
    if (resolver_) {
        resolver_->close();  // lookups in flight end as temporary failures
    }
    uv_timer_start(
        &grace_,
        [](uv_timer_t* t) {
            auto* self = static_cast<Shard*>(t->data);
            LogLine(Level::warn, "drain_timeout", self->index_)
                .kv("sessions", static_cast<std::uint64_t>(self->connections_.size()));
            auto left = self->connections_;
            for (auto* c : left) {
                c->force_close();
            }
        },
        static_cast<std::uint64_t>(grace.count()), 0);
    maybe_finish();
}

void Shard::maybe_finish() {
    if (!draining_ || finished_ || !connections_.empty() || work_in_flight_ != 0) {
        return;
    }
    {
        std::lock_guard lock(mu_);
        finished_ = true;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&grace_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&prepare_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
}

}  // namespace sluice
