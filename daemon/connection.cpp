#include "daemon/connection.hpp"

#include <netinet/tcp.h>

#include <map>
#include <random>

#include "common/log.hpp"
#include "daemon/shard.hpp"

namespace sluice {
namespace {

// Replies waiting for a slow reader beyond which we stop reading its commands.
constexpr std::size_t kMaxPendingOutput = 256 * 1024;

std::string new_session_id() {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    static constexpr char hex[] = "0123456789abcdef";
    std::uint64_t v = rng();
    std::string s(10, '0');
    for (auto& c : s) {
        c = hex[v & 15];
        v >>= 4;
    }
    return s;
}

}  // namespace

Connection::Connection(Shard& shard) : shard_(shard) {}

Connection::~Connection() {
    if (limiter_held_) {
        shard_.limiter().release(peer_);
    }
}

void Connection::accept(Shard& shard, uv_stream_t* server, std::size_t listener_index) {
    auto* c = new Connection(shard);
    uv_tcp_init(shard.loop(), &c->tcp_);
    c->tcp_.data = c;
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->tcp_)) != 0) {
        c->closing_ = true;
        uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp_), on_close);
        return;
    }
    shard.add(c);
    uv_tcp_nodelay(&c->tcp_, 1);

    sockaddr_storage ss{};
    int len = sizeof ss;
    uv_tcp_getpeername(&c->tcp_, reinterpret_cast<sockaddr*>(&ss), &len);
    c->peer_ = ip_from_sockaddr(reinterpret_cast<sockaddr*>(&ss));
    std::uint16_t port = ntohs(ss.ss_family == AF_INET
                                   ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                   : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);

    const auto& snap = shard.snapshot();
    const Config& cfg = *snap->config;
    auto& conn_metrics = shard.metrics().connections[listener_index];
    auto lim = shard.limiter().acquire(c->peer_, cfg.server.max_connections,
                                       cfg.server.max_connections_per_ip);
    if (lim != ConnectionLimiter::Result::ok) {
        // Refused before any session state exists: one reply, then close (RFC 5321 §3.1).
        conn_metrics[static_cast<int>(ConnResult::over_limit)].add();
        std::string out;
        append_reply(out, lim == ConnectionLimiter::Result::global_limit
                              ? Reply::too_many_connections
                              : Reply::too_many_connections_from_ip);
        LogLine(Level::warn, "connect", shard.index())
            .kv("client", format_ip(c->peer_))
            .kv("listener", cfg.listeners[listener_index].name)
            .kv("result", lim == ConnectionLimiter::Result::global_limit ? "global_limit" : "ip_limit");
        c->writing_ = std::move(out);
        c->write_in_flight_ = true;
        uv_buf_t b = uv_buf_init(c->writing_.data(), static_cast<unsigned>(c->writing_.size()));
        c->write_req_.data = c;
        uv_write(&c->write_req_, reinterpret_cast<uv_stream_t*>(&c->tcp_), &b, 1,
                 [](uv_write_t* req, int) {
                     auto* self = static_cast<Connection*>(req->data);
                     self->write_in_flight_ = false;
                     self->close_handle();
                 });
        return;
    }
    c->limiter_held_ = true;

    smtp::SessionParams p;
    p.snapshot = snap;
    p.listener = &cfg.listeners[listener_index];
    p.listener_index = listener_index;
    p.maps = &shard.maps();
    p.hooks = c;
    p.metrics = &shard.metrics();
    p.client = c->peer_;
    p.client_port = port;
    p.shard = shard.index();
    p.id = new_session_id();
    p.greeting_delay = cfg.limits.greeting_delay;
    c->session_ = std::make_unique<smtp::Session>(std::move(p));
    c->session_->start(smtp::Clock::now());
    if (!c->session_->closed()) {
        c->reading_ = uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp_), on_alloc, on_read) == 0;
    }
    c->flush();
}

void Connection::on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) {
    auto* c = static_cast<Connection*>(h->data);
    buf->base = c->shard_.read_buffer();
    buf->len = c->shard_.read_buffer_size();
}

void Connection::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Connection*>(s->data);
    if (n == 0) {
        return;
    }
    if (n < 0) {
        c->session_->peer_closed(n == UV_EOF ? "peer_closed" : uv_err_name(static_cast<int>(n)));
        c->close_handle();
        return;
    }
    c->session_->receive(std::string_view(buf->base, static_cast<std::size_t>(n)), smtp::Clock::now());
    c->flush();
    c->update_reading();
}

void Connection::update_reading() {
    if (closing_) {
        return;
    }
    // Back-pressure both ways: a client that pipelines without reading our replies, or
    // outruns a commit in flight, is simply not read from until it catches up.
    bool want = session_->wants_input() &&
                writing_.size() + session_->output().size() < kMaxPendingOutput;
    if (want && !reading_) {
        reading_ = uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), on_alloc, on_read) == 0;
    } else if (!want && reading_) {
        uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
        reading_ = false;
    }
}

void Connection::flush() {
    if (closing_) {
        return;
    }
    std::string& out = session_->output();
    if (!write_in_flight_ && !out.empty()) {
        // A decision is on record before the client can see it (batched lines go first).
        flush_thread_log();
        // Try the write right away (the common case: the socket buffer has room).
        uv_buf_t b = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
        int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
        if (n == static_cast<int>(out.size())) {
            out.clear();
        } else {
            if (n > 0) {
                out.erase(0, static_cast<std::size_t>(n));
            } else if (n != UV_EAGAIN) {
                out.clear();
                session_->peer_closed("write_error");
                close_handle();
                return;
            }
            writing_.swap(out);
            out.clear();
            write_in_flight_ = true;
            write_req_.data = this;
            uv_buf_t wb = uv_buf_init(writing_.data(), static_cast<unsigned>(writing_.size()));
            uv_write(&write_req_, reinterpret_cast<uv_stream_t*>(&tcp_), &wb, 1, on_write);
        }
    }
    if (session_->closed() && !write_in_flight_ && out.empty()) {
        close_handle();
    }
}

void Connection::on_write(uv_write_t* req, int status) {
    auto* c = static_cast<Connection*>(req->data);
    c->write_in_flight_ = false;
    c->writing_.clear();
    if (status < 0) {
        c->session_->peer_closed("write_error");
        c->close_handle();
        return;
    }
    c->flush();
    c->update_reading();
}

void Connection::close_handle() {
    if (closing_) {
        return;
    }
    closing_ = true;
    shard_.remove(this);
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), on_close);
}

void Connection::on_close(uv_handle_t* h) { static_cast<Connection*>(h->data)->release(); }

void Connection::release() {
    if (--refs_ == 0) {
        delete this;
    }
}

void Connection::tick(smtp::Clock::time_point now) {
    if (closing_ || !session_) {
        return;
    }
    session_->tick(now);
    flush();
}

void Connection::shutdown() {
    if (closing_ || !session_) {
        return;
    }
    session_->shutdown();
    flush();
}

void Connection::force_close() {
    if (session_) {
        session_->peer_closed("shutdown_timeout");
    }
    close_handle();
}

void Connection::commit(std::unique_ptr<storage::Message> msg) {
    // The connection stays alive until the batch reports back, even if the peer leaves.
    ++refs_;
    shard_.work_started();
    shard_.local_delivery().submit(std::move(msg), session_->id(), [this](storage::CommitStatus st) {
        commit_finished(st);
        shard_.work_finished();
        release();
    });
}

void Connection::commit_finished(storage::CommitStatus status) {
    if (closing_) {
        return;
    }
    session_->commit_done(status, smtp::Clock::now());
    flush();
    update_reading();
}

bool Connection::transport_available(const Transport& t) const {
    // Forwarding over SMTP arrives with the durable spool; until then only maildir
    // delivery is available and RCPTs routed elsewhere get 451 (fail closed).
    return t.kind == Transport::Kind::maildir;
}

}  // namespace sluice
