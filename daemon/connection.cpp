#include "daemon/connection.hpp"

#include <netinet/tcp.h>

#include <algorithm>
#include <map>
#include <random>

#include "common/log.hpp"
#include "daemon/auth.hpp"
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
    c->port_ = ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                             : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    c->snapshot_ = shard.snapshot();
    c->listener_index_ = listener_index;

    const auto& trusted = c->snapshot_->config->listeners[listener_index].proxy_protocol;
    if (!trusted.empty()) {
        // proxy-protocol.txt §2 and §5: such a listener speaks only the PROXY protocol, and
        // only with the listed balancers; their header comes before anything else (no
        // greeting, no TLS handshake until it is complete).
        c->proxy_ = c->peer_;
        if (std::none_of(trusted.begin(), trusted.end(),
                         [&](const Cidr& n) { return n.contains(c->peer_); })) {
            c->refuse_proxy("proxy_untrusted", {}, Level::warn);
            return;
        }
        c->proxy_reader_ = std::make_unique<proxy::Reader>();
        c->reading_ =
            uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp_), on_alloc, on_read) == 0;
        return;
    }
    c->begin({}, nullptr);
}

void Connection::read_proxy_header(std::string_view bytes) {
    auto r = proxy_reader_->feed(bytes);
    if (r.status == proxy::Status::need_more) {
        return;
    }
    if (r.status == proxy::Status::error) {
        refuse_proxy("proxy_invalid", proxy::error_name(r.error), Level::warn);
        return;
    }
    std::string early = proxy_reader_->take_rest();
    proxy_reader_.reset();
    if (r.header.kind == proxy::Kind::proxied) {
        peer_ = r.header.source.ip;
        port_ = r.header.source.port;
    }
    // LOCAL (a health check) and UNKNOWN: "use the real connection endpoints" (§2.1, §2.2):
    // the balancer is the client.
    begin(early, &r.header);
}

void Connection::refuse_proxy(std::string_view result, std::string_view error, Level level) {
    bool silent = result == "proxy_closed" && proxy_reader_ && proxy_reader_->received() == 0;
    if (!silent) {
        shard_.metrics()
            .connections[listener_index_][static_cast<int>(ConnResult::proxy_refused)]
            .add();
    }
    // A balancer's plain TCP check connects and closes: not worth a line above debug.
    LogLine line(silent ? Level::debug : level, "connect", shard_.index());
    // Not a listed balancer: the peer is the client. Else the client is unknown.
    line.kv(result == "proxy_untrusted" ? "client" : "proxy", format_ip(peer_))
        .kv("listener", snapshot_->config->listeners[listener_index_].name)
        .kv("result", result);
    if (!error.empty()) {
        line.kv("error", error);
    }
    line.emit();
    close_handle();
}

void Connection::begin(std::string_view early, const proxy::Header* header) {
    Shard& shard = shard_;
    const auto& snap = snapshot_;
    const Config& cfg = *snap->config;
    const std::size_t listener_index = listener_index_;
    auto& conn_metrics = shard.metrics().connections[listener_index];
    auto lim = shard.limiter().acquire(peer_, cfg.server.max_connections,
                                       cfg.server.max_connections_per_ip);
    if (lim != ConnectionLimiter::Result::ok) {
        // Refused before any session state exists: one reply, then close (RFC 5321 §3.1).
        conn_metrics[static_cast<int>(ConnResult::over_limit)].add();
        if (reading_) {
            uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
            reading_ = false;
        }
        std::string out;
        append_reply(out, lim == ConnectionLimiter::Result::global_limit
                              ? Reply::too_many_connections
                              : Reply::too_many_connections_from_ip);
        LogLine line(Level::warn, "connect", shard.index());
        line.kv("client", format_ip(peer_));
        if (proxy_) {
            line.kv("proxy", format_ip(*proxy_));
        }
        line.kv("listener", cfg.listeners[listener_index].name)
            .kv("result",
                lim == ConnectionLimiter::Result::global_limit ? "global_limit" : "ip_limit");
        line.emit();
        flush_thread_log();  // on record before the client sees the refusal
        writing_ = std::move(out);
        write_in_flight_ = true;
        uv_buf_t b = uv_buf_init(writing_.data(), static_cast<unsigned>(writing_.size()));
        write_req_.data = this;
        uv_write(&write_req_, reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1,
                 [](uv_write_t* req, int) {
                     auto* self = static_cast<Connection*>(req->data);
                     self->write_in_flight_ = false;
                     self->close_handle();
                 });
        return;
    }
    limiter_held_ = true;

    smtp::SessionParams p;
    p.snapshot = snap;
    p.listener = &cfg.listeners[listener_index];
    p.listener_index = listener_index;
    p.maps = &shard.maps();
    p.rates = shard.rates();
    p.hooks = this;
    p.metrics = &shard.metrics();
    p.client = peer_;
    p.client_port = port_;
    p.proxy = proxy_;
    p.shard = shard.index();
    p.id = new_session_id();
    p.greeting_delay = cfg.limits.greeting_delay;
    const auto& listener = cfg.listeners[listener_index];
    tls_config_ = snap->tls;
    p.tls_available = tls_config_ != nullptr &&
                      (listener.tls == TlsMode::optional || listener.tls == TlsMode::required);
    tls_implicit_ = tls_config_ != nullptr && listener.tls == TlsMode::implicit;
    p.tls_active = tls_implicit_;
    if (header != nullptr) {
        // The session's connect line: who the client is, and the balancer that said so.
        LogLine(Level::info, "connect", shard.index(), p.id)
            .kv("client", format_ip(peer_))
            .kv("client_port", static_cast<unsigned>(port_))
            .kv("proxy", format_ip(*proxy_))
            .kv("listener", listener.name)
            .kv("result", "proxied")
            .kv("header", header->version == 1 ? "v1" : "v2")
            .kv("command", proxy::kind_name(header->kind));
    }
    session_ = std::make_unique<smtp::Session>(std::move(p));
    if (tls_implicit_) {
        // Port 465: the session (and its greeting) begins once the handshake is done.
        start_tls();
    } else {
        session_started_ = true;
        session_->start(smtp::Clock::now());
    }
    if (!session_->closed() && !reading_) {
        reading_ = uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), on_alloc, on_read) == 0;
    }
    if (!early.empty()) {
        // The client's first bytes (TLS or SMTP) came in the same read as the header.
        receive(early);
        return;
    }
    flush();
}

void Connection::on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) {
    auto* c = static_cast<Connection*>(h->data);
    buf->base = c->shard_.read_buffer();
    buf->len = c->shard_.read_buffer_size();
}

void Connection::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Connection*>(s->data);
    if (n == 0 || c->closing_) {
        return;
    }
    const char* why = n > 0 ? "" : n == UV_EOF ? "peer_closed" : uv_err_name(static_cast<int>(n));
    if (c->proxy_reader_) {
        if (n < 0) {
            c->refuse_proxy("proxy_closed", why, Level::info);
        } else {
            c->read_proxy_header(std::string_view(buf->base, static_cast<std::size_t>(n)));
        }
        return;
    }
    if (n < 0) {
        c->session_->peer_closed(why);
        c->close_handle();
        return;
    }
    c->receive(std::string_view(buf->base, static_cast<std::size_t>(n)));
}

void Connection::receive(std::string_view bytes) {
    if (tls_) {
        std::string plain;
        if (!receive_tls(bytes, plain)) {
            flush();
            close_handle();
            return;
        }
        if (!plain.empty()) {
            session_->receive(plain, smtp::Clock::now());
        }
    } else {
        session_->receive(bytes, smtp::Clock::now());
    }
    sync_expectation();
    flush();
    update_reading();
}

void Connection::sync_expectation(bool force_off) {
    bool want = !force_off && !closing_ && session_->in_transaction();
    if (want != expecting_) {
        if (storage::Spool* spool = shard_.spool()) {
            spool->expect(want ? 1 : -1);
        }
        expecting_ = want;
    }
}

void Connection::start_tls() {
    tls_ = std::make_unique<tls::TlsStream>(tls_config_);
}

bool Connection::receive_tls(std::string_view cipher, std::string& plain) {
    bool was_done = tls_->handshake_done();
    auto st = tls_->receive(cipher, plain);
    auto& m = shard_.metrics();
    if (st == tls::TlsChannel::Status::error || st == tls::TlsChannel::Status::closed) {
        if (!was_done) {
            m.tls_handshakes[static_cast<int>(TlsResult::failed)].add();
        }
        LogLine(Level::info, "tls", shard_.index(), session_->id())
            .kv("client", format_ip(peer_))
            .kv("result", st == tls::TlsChannel::Status::closed ? "closed" : "failed")
            .kv("error", tls_->error());
        // Whatever alert the library queued still goes out.
        sendbuf_ += tls_->outbox();
        tls_->outbox().clear();
        session_->peer_closed(was_done ? "tls_closed" : "tls_handshake_failed");
        return false;
    }
    if (!was_done && tls_->handshake_done()) {
        m.tls_handshakes[static_cast<int>(tls_->resumed() ? TlsResult::resumed : TlsResult::ok)]
            .add();
        LogLine(Level::info, "tls", shard_.index(), session_->id())
            .kv("client", format_ip(peer_))
            .kv("result", tls_->resumed() ? "resumed" : "ok")
            .kv("version", tls_->version())
            .kv("cipher", tls_->cipher());
        auto now = smtp::Clock::now();
        if (!session_started_) {
            session_started_ = true;
            session_->start(now);
        }
        session_->tls_started(tls_->version(), tls_->cipher());
    }
    return true;
}

void Connection::stage_output() {
    std::string& out = session_->output();
    if (tls_) {
        if (tls_->handshake_done() && !out.empty()) {
            if (tls_->send(out) != tls::TlsChannel::Status::ok) {
                session_->peer_closed("tls_write_error");
            }
            out.clear();
        }
        // Handshake records, alerts and application data, in order.
        sendbuf_ += tls_->outbox();
        tls_->outbox().clear();
        return;
    }
    sendbuf_ += out;
    out.clear();
    if (session_->tls_requested() && tls_config_) {
        // The 220 went into sendbuf_ in plaintext; every later byte is TLS.
        start_tls();
    }
}

void Connection::update_reading() {
    if (closing_) {
        return;
    }
    // Back-pressure both ways: a client that pipelines without reading our replies, or
    // outruns a commit in flight, is simply not read from until it catches up.
    bool want = session_->wants_input() &&
                writing_.size() + sendbuf_.size() + session_->output().size() < kMaxPendingOutput;
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
    stage_output();
    std::string& out = sendbuf_;
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
    sync_expectation(true);
    closing_ = true;
    shard_.remove(this);
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), on_close);
}

void Connection::on_close(uv_handle_t* h) {
    static_cast<Connection*>(h->data)->release();
}

void Connection::release() {
    if (--refs_ == 0) {
        delete this;
    }
}

void Connection::tick(smtp::Clock::time_point now) {
    if (closing_) {
        return;
    }
    if (proxy_reader_) {
        // The whole header within limits.proxy_timeout of the accept, however it trickles.
        if (now - accepted_at_ >= snapshot_->config->limits.proxy_timeout) {
            refuse_proxy("proxy_timeout", {}, Level::warn);
        }
        return;
    }
    if (!session_) {
        return;
    }
    if (!session_started_) {
        // Implicit TLS: a client that never completes the handshake does not keep the slot.
        if (now - accepted_at_ >= shard_.snapshot()->config->limits.command_timeout) {
            session_->peer_closed("tls_handshake_timeout");
            close_handle();
        }
        return;
    }
    session_->tick(now);
    flush();
}

void Connection::shutdown() {
    if (!closing_ && proxy_reader_) {
        close_handle();  // no session yet: nobody to say 421 to
        return;
    }
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

namespace {

void log_queued(int shard, const std::string& session, const storage::Message& m,
                std::string_view via, std::uint64_t size) {
    LogLine(Level::info, "queued", shard, session)
        .kv("id", m.id)
        .kv("from", "<" + m.sender + ">")
        .kv("rcpts", static_cast<std::uint64_t>(m.recipients.size()))
        .kv("size", size)
        .kv("via", via);
}

}  // namespace

void Connection::commit(std::unique_ptr<storage::Message> msg) {
    // Before the submission: the spool's writer must not wait for this one any more.
    sync_expectation(true);
    // The connection stays alive until storage reports back, even if the peer leaves.
    ++refs_;
    shard_.work_started();
    bool all_local = std::all_of(msg->recipients.begin(), msg->recipients.end(), [](const auto& r) {
        return r.transport.kind == Transport::Kind::maildir;
    });
    storage::Spool* spool = shard_.spool();
    if (all_local || spool == nullptr) {
        // Final delivery in-line: the maildir file is durable before the 250.
        std::string id = msg->id;
        auto summary = std::make_shared<storage::Message>();  // the data goes to the file
        std::uint64_t size = msg->data.size();
        summary->id = msg->id;
        summary->sender = msg->sender;
        summary->recipients = msg->recipients;
        shard_.local_delivery().submit(
            std::move(msg), session_->id(), [this, summary, size](storage::CommitStatus st) {
                if (st == storage::CommitStatus::ok) {
                    log_queued(shard_.index(), session_->id(), *summary, "maildir", size);
                }
                commit_finished(st);
                shard_.work_finished();
                release();
            });
        return;
    }
    bool all_inline =
        std::all_of(msg->recipients.begin(), msg->recipients.end(), [](const auto& r) {
            return r.transport.kind == Transport::Kind::smtp && r.transport.inline_delivery;
        });
    if (all_inline && shard_.outbound() != nullptr) {
        // In-line mode: our 250 only follows the next hop's 250. When it took none of the
        // recipients, the client gets its refusal (5xx when every one was refused for
        // good, else 4xx) and keeps the message: there is no local queue. When it took
        // some, the others are spooled (retried or bounced) before our 250.
        std::shared_ptr<storage::Message> shared(std::move(msg));
        shard_.outbound()->deliver_inline(
            shared, session_->id(),
            [this, shared](std::vector<smtp::RecipientResult> results) {
                using Kind = smtp::RecipientResult::Kind;
                auto rest = std::make_unique<storage::Message>(*shared);
                rest->recipients.clear();
                for (std::size_t i = 0; i < results.size(); ++i) {
                    if (results[i].kind != Kind::delivered) {
                        rest->recipients.push_back(shared->recipients[i]);
                    }
                }
                if (rest->recipients.size() == results.size()) {
                    refuse_inline(*shared, results);
                    shard_.work_finished();
                    release();
                    return;
                }
                if (rest->recipients.empty()) {
                    log_queued(shard_.index(), session_->id(), *shared, "inline", shared->data.size());
                    commit_finished(storage::CommitStatus::ok);
                    shard_.work_finished();
                    release();
                    return;
                }
                spool_and_forward(std::move(rest));
            });
        return;
    }
    spool_and_forward(std::move(msg));
}

void Connection::spool_and_forward(std::unique_ptr<storage::Message> msg) {
    // Durable in the spool (group commit on its writer thread), then forwarded.
    storage::Spool* spool = shard_.spool();
    Shard* shard = &shard_;
    spool->submit(std::move(msg),
                  [this, shard](storage::CommitStatus st, std::unique_ptr<storage::Message> m) {
                      std::shared_ptr<const storage::Message> sm(std::move(m));
                      shard->post([this, st, sm](Shard& s) {
                          if (st == storage::CommitStatus::ok && sm) {
                              log_queued(s.index(), session_->id(), *sm, "spool", sm->data.size());
                          }
                          commit_finished(st);
                          if (st == storage::CommitStatus::ok && sm && s.outbound() != nullptr) {
                              s.outbound()->start(sm, session_->id());
                          }
                          s.work_finished();
                          release();
                      });
                  });
}

storage::CommitStatus Connection::admission() const {
    const storage::Spool* spool = shard_.spool();
    if (spool == nullptr) {
        return storage::CommitStatus::ok;
    }
    return spool->admission() == storage::Admission::ok ? storage::CommitStatus::ok
                                                        : storage::CommitStatus::no_space;
}

void Connection::refuse_inline(const storage::Message& msg,
                               const std::vector<smtp::RecipientResult>& results) {
    bool all_failed = std::all_of(results.begin(), results.end(), [](const auto& r) {
        return r.kind == smtp::RecipientResult::Kind::failed;
    });
    // The next hop's own words for the first recipient (one line: the client cleans reply
    // texts of control characters), or what we decided for it (lost connection...).
    const smtp::RecipientResult& first = results.front();
    std::string detail = !first.reply.empty() ? first.reply
                                              : std::to_string(first.code) + " " +
                                                    first.enhanced + " " + first.text;
    if (detail.size() > 200) {
        detail.resize(200);
    }
    LogLine(Level::info, "inline_refused", shard_.index(), session_->id())
        .kv("id", msg.id)
        .kv("from", "<" + msg.sender + ">")
        .kv("rcpts", static_cast<std::uint64_t>(msg.recipients.size()))
        .kv("result", all_failed ? "refused" : "deferred")
        .kv("reply", detail);
    if (closing_) {
        return;
    }
    session_->commit_refused(all_failed ? Reply::inline_refused : Reply::inline_deferred, detail,
                             smtp::Clock::now());
    flush();
    update_reading();
}

void Connection::commit_finished(storage::CommitStatus status) {
    if (closing_) {
        return;
    }
    session_->commit_done(status, smtp::Clock::now());
    flush();
    update_reading();
}

namespace {

// A password check on the thread pool: crypt(3) with yescrypt takes ~20 ms on purpose.
struct AuthJob {
    uv_work_t req{};
    Connection* conn = nullptr;
    std::string hash;
    std::string password;
    bool known = false;
    bool ok = false;
};

}  // namespace

void Connection::authenticate(const sasl::Credentials& creds) {
    auto* throttle = shard_.auth_throttle();
    auto now = smtp::Clock::now();
    auth_user_ = creds.user;
    if (throttle != nullptr && !throttle->allow(peer_, creds.user)) {
        session_->auth_done(smtp::AuthOutcome::throttled, now);
        return;
    }
    auto found = shard_.maps().find(policy::MapId::users, creds.user);
    if (found.unavailable()) {
        if (throttle != nullptr) {
            throttle->record(peer_, creds.user, true);  // not the client's fault: refund
        }
        session_->auth_done(smtp::AuthOutcome::unavailable, now);
        return;
    }
    auto* job = new AuthJob;
    job->req.data = job;
    job->conn = this;
    job->password = creds.password;
    std::string error;
    auto entry = found.found() ? auth::parse_user_entry(found.value, error) : std::nullopt;
    job->known = entry.has_value();
    // Unknown users cost the same hash as known ones: no user enumeration by timing.
    job->hash = job->known ? entry->hash : auth::dummy_hash();
    ++refs_;
    shard_.work_started();
    uv_queue_work(
        shard_.loop(), &job->req,
        [](uv_work_t* r) {
            auto* j = static_cast<AuthJob*>(r->data);
            j->ok = auth::verify_password(j->hash, j->password) && j->known;
        },
        [](uv_work_t* r, int) {
            std::unique_ptr<AuthJob> j(static_cast<AuthJob*>(r->data));
            // The password is wiped as soon as it is no longer needed.
            std::fill(j->password.begin(), j->password.end(), '\0');
            Connection* c = j->conn;
            if (!c->closing_) {
                auto* throttle = c->shard_.auth_throttle();
                const std::string& user = c->auth_user_;
                if (throttle != nullptr) {
                    throttle->record(c->peer_, user, j->ok);
                }
                c->session_->auth_done(j->ok ? smtp::AuthOutcome::ok : smtp::AuthOutcome::failed,
                                       smtp::Clock::now());
                c->flush();
                c->update_reading();
            }
            c->shard_.work_finished();
            c->release();
        });
}

bool Connection::sender_allowed(std::string_view user, std::string_view sender) const {
    auto found = shard_.maps().find(policy::MapId::users, user);
    if (!found.found()) {
        return false;
    }
    std::string error;
    auto entry = auth::parse_user_entry(found.value, error);
    return entry && auth::sender_allowed(*entry, user, sender);
}

bool Connection::transport_available(const Transport& t) const {
    // SMTP routes need the spool (and its forwarding); without one, RCPTs routed there get
    // 451 (fail closed) rather than a 250 for mail we could not forward.
    return t.kind == Transport::Kind::maildir || shard_.spool() != nullptr;
}

}  // namespace sluice
