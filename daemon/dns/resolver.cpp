#include "daemon/dns/resolver.hpp"

#include <arpa/nameser.h>

#include <mutex>

#include "common/config.hpp"
#include "common/log.hpp"
#include "daemon/metrics.hpp"

namespace sluice::dns {
namespace {

std::string key_of(const std::string& name, Type type) {
    return std::to_string(static_cast<int>(type)) + "/" + name;
}

void library_init() {
    // Process-wide, once (c-ares requires it before the first channel on some platforms).
    static std::once_flag once;
    std::call_once(once, [] { ares_library_init(ARES_LIB_INIT_ALL); });
}

DnsAnswer answer_kind(Rcode r) {
    switch (r) {
        case Rcode::noerror:
            return DnsAnswer::noerror;
        case Rcode::nxdomain:
            return DnsAnswer::nxdomain;
        case Rcode::servfail:
            return DnsAnswer::servfail;
        case Rcode::refused:
            return DnsAnswer::refused;
        default:
            return DnsAnswer::malformed;
    }
}

}  // namespace

ResolverOptions resolver_options(const sluice::Config& c) {
    ResolverOptions o;
    o.servers = c.dns.servers;
    o.timeout = c.dns.timeout;
    o.attempts = c.dns.attempts;
    o.cache.max_entries = c.dns.cache_entries;
    o.cache.max_bytes = c.dns.cache_memory;
    o.cache.min_ttl = static_cast<std::uint32_t>(c.dns.min_ttl.count() / 1000);
    o.cache.max_ttl = static_cast<std::uint32_t>(c.dns.max_ttl.count() / 1000);
    return o;
}

// One socket c-ares asked us to watch. Freed in its close callback (libuv: a handle lives
// until then).
struct Resolver::Poll {
    uv_poll_t handle{};
    Resolver* owner = nullptr;
    ares_socket_t fd = ARES_SOCKET_BAD;
};

struct Resolver::Query {
    Resolver* owner = nullptr;
    std::string name;
    Type type = Type::a;
    std::string key;
    std::chrono::steady_clock::time_point started;
};

Resolver::Resolver(uv_loop_t* loop, ShardMetrics* metrics)
    : loop_(loop), metrics_(metrics), rng_(std::random_device{}()) {}

Resolver::~Resolver() {
    // close() ran and the loop freed the handles (Shard waits for busy() == 0).
    if (channel_ != nullptr) {
        ares_destroy(channel_);
    }
}

std::string Resolver::start(const ResolverOptions& o) {
    library_init();
    ares_options opts{};
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS;
    opts.sock_state_cb = on_sock_state;
    opts.sock_state_cb_data = this;
    opts.timeout = static_cast<int>(o.timeout.count());
    opts.tries = static_cast<int>(o.attempts);
    // Names are asked as given (no search list: a recipient domain is fully qualified).
    opts.flags = ARES_FLAG_NOSEARCH;
    int rc = ares_init_options(&channel_, &opts, mask);
    if (rc != ARES_SUCCESS) {
        channel_ = nullptr;
        return std::string("c-ares: ") + ares_strerror(rc);
    }
    uv_timer_init(loop_, &timer_);
    timer_.data = this;
    timer_open_ = true;
    ++handles_;
    return reconfigure(o);
}

std::string Resolver::reconfigure(const ResolverOptions& o) {
    cache_.set_options(o.cache);
    publish_cache_size();
    if (channel_ == nullptr || o.servers.empty()) {
        return {};
    }
    std::string csv;
    for (const auto& s : o.servers) {
        csv += (csv.empty() ? "" : ",") + s;
    }
    int rc = ares_set_servers_ports_csv(channel_, csv.c_str());
    if (rc != ARES_SUCCESS) {
        return "dns.servers \"" + csv + "\": " + ares_strerror(rc);
    }
    return {};
}

LookupFn Resolver::lookup_fn() {
    return [this](const std::string& name, Type type, LookupDone done) {
        lookup(name, type, std::move(done));
    };
}

void Resolver::lookup(const std::string& raw, Type type, LookupDone done) {
    std::string name = normalise_name(raw);
    auto now = std::chrono::steady_clock::now();
    if (auto hit = cache_.get(name, type, now)) {
        metrics_->dns_cache_hits.add();
        done(*hit);
        return;
    }
    metrics_->dns_cache_misses.add();
    if (closing_ || channel_ == nullptr || name.empty() || name.size() > limits::name) {
        Result r;
        r.status = name.empty() || name.size() > limits::name ? Status::malformed
                                                              : Status::temporary;
        r.canonical = name;
        r.detail = closing_ || channel_ == nullptr ? "resolver not running" : "bad name";
        done(r);
        return;
    }
    std::string key = key_of(name, type);
    auto [it, fresh] = waiting_.try_emplace(key);
    it->second.push_back(std::move(done));
    if (!fresh) {
        return;  // the same question is on its way
    }
    auto* q = new Query{this, name, type, key, now};
    metrics_->dns_queries.add();
    ares_query(channel_, name.c_str(), ns_c_in, static_cast<int>(type), on_answer, q);
    rearm();
}

void Resolver::on_answer(void* arg, int status, int, unsigned char* abuf, int alen) {
    std::unique_ptr<Query> q(static_cast<Query*>(arg));
    Resolver* self = q->owner;
    Result r;
    r.canonical = q->name;
    auto* m = self->metrics_;
    auto count = [m](DnsAnswer a) { m->dns_answers[static_cast<std::size_t>(a)].add(); };
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
        r.status = Status::temporary;
        r.detail = "resolver shutting down";
    } else if (abuf != nullptr && alen > 0) {
        std::string error;
        auto resp = parse_response(
            std::string_view(reinterpret_cast<const char*>(abuf), static_cast<std::size_t>(alen)),
            error);
        if (!resp) {
            count(DnsAnswer::malformed);
            r.status = Status::malformed;
            r.detail = "malformed answer: " + error;
        } else {
            count(answer_kind(resp->rcode));
            r = interpret(*resp, q->name, q->type);
        }
    } else {
        switch (status) {
            case ARES_ETIMEOUT:
                count(DnsAnswer::timeout);
                r.detail = "timeout";
                break;
            case ARES_ESERVFAIL:
                count(DnsAnswer::servfail);
                r.detail = "SERVFAIL";
                break;
            case ARES_EREFUSED:
                count(DnsAnswer::refused);
                r.detail = "REFUSED";
                break;
            case ARES_ENOTFOUND:
                count(DnsAnswer::nxdomain);
                r.status = Status::nxdomain;
                r.detail = "NXDOMAIN";
                break;
            case ARES_ENODATA:
                count(DnsAnswer::noerror);
                r.status = Status::nodata;
                r.detail = "no record";
                break;
            case ARES_EBADRESP:
            case ARES_EFORMERR:
                count(DnsAnswer::malformed);
                r.status = Status::malformed;
                r.detail = std::string("malformed answer: ") + ares_strerror(status);
                break;
            default:
                count(DnsAnswer::timeout);
                r.detail = ares_strerror(status);
        }
        if (r.status != Status::nxdomain && r.status != Status::nodata &&
            r.status != Status::malformed) {
            r.status = Status::temporary;
        }
    }
    if (status != ARES_EDESTRUCTION && status != ARES_ECANCELLED) {
        m->observe_dns(std::chrono::duration<double>(std::chrono::steady_clock::now() - q->started)
                           .count());
        self->cache_.put(q->name, q->type, r, std::chrono::steady_clock::now());
        self->publish_cache_size();
    }
    self->deliver(q->key, r);
}

void Resolver::deliver(const std::string& key, const Result& r) {
    auto it = waiting_.find(key);
    if (it == waiting_.end()) {
        return;
    }
    auto waiters = std::move(it->second);
    waiting_.erase(it);
    for (auto& w : waiters) {
        w(r);
    }
}

void Resolver::publish_cache_size() {
    auto entries = static_cast<std::int64_t>(cache_.entries());
    auto bytes = static_cast<std::int64_t>(cache_.bytes());
    metrics_->dns_cache_entries.add(entries - published_entries_);
    metrics_->dns_cache_bytes.add(bytes - published_bytes_);
    published_entries_ = entries;
    published_bytes_ = bytes;
}

void Resolver::on_sock_state(void* data, ares_socket_t fd, int readable, int writable) {
    auto* self = static_cast<Resolver*>(data);
    auto it = self->polls_.find(fd);
    if (!readable && !writable) {
        if (it != self->polls_.end()) {
            Poll* p = it->second;
            self->polls_.erase(it);
            uv_poll_stop(&p->handle);
            uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), [](uv_handle_t* h) {
                auto* poll = static_cast<Poll*>(h->data);
                --poll->owner->handles_;
                delete poll;
            });
        }
        return;
    }
    Poll* p = nullptr;
    if (it == self->polls_.end()) {
        p = new Poll;
        p->owner = self;
        p->fd = fd;
        p->handle.data = p;
        if (uv_poll_init_socket(self->loop_, &p->handle, fd) != 0) {
            delete p;
            LogLine(Level::error, "dns_poll_failed").kv("fd", static_cast<std::int64_t>(fd));
            return;  // c-ares times the query out
        }
        ++self->handles_;
        self->polls_[fd] = p;
    } else {
        p = it->second;
    }
    int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
    uv_poll_start(&p->handle, events, [](uv_poll_t* h, int status, int ev) {
        auto* poll = static_cast<Poll*>(h->data);
        Resolver* r = poll->owner;
        ares_socket_t fd = poll->fd;
        // An error on the socket: let c-ares read and write it to find out and close it.
        bool rd = status < 0 || (ev & UV_READABLE) != 0;
        bool wr = status < 0 || (ev & UV_WRITABLE) != 0;
        ares_process_fd(r->channel_, rd ? fd : ARES_SOCKET_BAD, wr ? fd : ARES_SOCKET_BAD);
        r->rearm();
    });
}

void Resolver::rearm() {
    if (!timer_open_ || closing_) {
        return;
    }
    timeval max{};
    max.tv_sec = 60;
    timeval tv{};
    timeval* next = ares_timeout(channel_, &max, &tv);
    std::uint64_t ms = static_cast<std::uint64_t>(next->tv_sec) * 1000 +
                       static_cast<std::uint64_t>(next->tv_usec + 999) / 1000;
    if (waiting_.empty()) {
        uv_timer_stop(&timer_);
        return;
    }
    uv_timer_start(
        &timer_,
        [](uv_timer_t* t) {
            auto* self = static_cast<Resolver*>(t->data);
            ares_process_fd(self->channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
            self->rearm();
        },
        std::max<std::uint64_t>(ms, 1), 0);
}

void Resolver::close() {
    if (closing_) {
        return;
    }
    closing_ = true;
    if (channel_ != nullptr) {
        // Every query in flight gets ARES_EDESTRUCTION (a temporary failure for its waiters),
        // and every socket's state goes to "not watched" (its poll is closed).
        ares_channel ch = channel_;
        ares_cancel(ch);
        ares_destroy(ch);
        channel_ = nullptr;
    }
    for (auto& [fd, p] : polls_) {
        uv_poll_stop(&p->handle);
        uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), [](uv_handle_t* h) {
            auto* poll = static_cast<Poll*>(h->data);
            --poll->owner->handles_;
            delete poll;
        });
    }
    polls_.clear();
    if (timer_open_) {
        timer_open_ = false;
        uv_close(reinterpret_cast<uv_handle_t*>(&timer_), [](uv_handle_t* h) {
            --static_cast<Resolver*>(h->data)->handles_;
        });
    }
    // Anything still waiting (none should be) fails now.
    auto left = std::move(waiting_);
    waiting_.clear();
    for (auto& [key, ws] : left) {
        for (auto& w : ws) {
            Result r;
            r.status = Status::temporary;
            r.detail = "resolver shutting down";
            w(r);
        }
    }
}

}  // namespace sluice::dns
