#include "daemon/outbound.hpp"

#include <algorithm>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include "common/log.hpp"
#include "daemon/dns/resolver.hpp"
#include "daemon/dsn.hpp"
#include "daemon/session.hpp"
#include "daemon/shard.hpp"
#include "daemon/tls.hpp"

namespace sluice {
namespace {

// Messages waiting for a connection to one next hop before new ones wait on disk instead.
constexpr std::size_t kMaxQueuedPerHop = 2000;
constexpr std::chrono::seconds kBusyRecheck{1};  // a due message with deliveries in flight
constexpr std::chrono::seconds kSettle{1};       // after a delivery, until its records are in
// Read buffer of one outbound connection (there are few of them).
constexpr std::size_t kLinkBuffer = 16 * 1024;
// How long a starttls=optional hop whose handshake failed is sent to in plaintext before
// TLS is tried again.
constexpr std::chrono::minutes kTlsFallback{60};

// The next hop as logs name it (relay=).
std::string relay_name(const Transport& t) {
    return t.kind == Transport::Kind::maildir ? "maildir:" + t.path
                                              : t.host + ":" + std::to_string(t.port);
}

// Where hops_ keeps it: the STARTTLS mode is part of the key (see outbound.hpp); a route
// by MX has one hop per recipient domain.
std::string hop_key(const Transport& t, const std::string& domain = {}) {
    if (t.kind == Transport::Kind::mx) {
        return "mx:" + domain + "?starttls=" + std::string(to_string(t.starttls));
    }
    return t.kind == Transport::Kind::maildir
               ? relay_name(t)
               : relay_name(t) + "?starttls=" + std::string(to_string(t.starttls));
}

// The domain an MX route delivers a recipient to.
std::string rcpt_domain(const storage::Recipient& r) {
    const std::string& a = r.deliver_to.empty() ? r.address : r.deliver_to;
    auto at = a.rfind('@');
    return dns::normalise_name(at == std::string::npos ? std::string() : a.substr(at + 1));
}

// An outcome we decide (no next-hop reply), from the reply table.
smtp::RecipientResult local_result(Reply row, const std::string& arg) {
    const auto& spec = reply_spec(row);
    smtp::RecipientResult r;
    r.code = spec.code;
    r.enhanced = std::string(spec.enhanced);
    r.reply = reply_line(row, arg);
    r.text = r.reply.substr(r.reply.find(' ', 4) + 1);
    r.reply.clear();
    r.kind = spec.code >= 500 ? smtp::RecipientResult::Kind::failed
                              : smtp::RecipientResult::Kind::deferred;
    return r;
}

constexpr std::uint16_t kSmtpPort = 25;  // RFC 5321 §4.5.4.2

smtp::Client::StartTls client_mode(TlsMode m) {
    switch (m) {
        case TlsMode::off:
            return smtp::Client::StartTls::off;
        case TlsMode::required:
            return smtp::Client::StartTls::required;
        default:
            return smtp::Client::StartTls::optional;
    }
}

std::string angle(std::string_view a) {
    return "<" + std::string(a) + ">";
}

}  // namespace

// One outbound SMTP connection to a next hop: libuv handles around the pure client.
class Outbound::Link {
  public:
    Link(Outbound& ob, Hop& hop) : ob_(ob), hop_(hop), client_(options(ob, hop)) {
        relay_ = hop.key;
        tls_name_ = hop.transport.host;
        if (!hop.domain.empty() && hop.next_target < hop.targets.size()) {
            target_ = hop.next_target;
            const auto& t = hop.targets[target_];
            relay_ = t.host + "[" + format_ip(t.addr) + "]:" + std::to_string(kSmtpPort);
            tls_name_ = t.host;  // RFC 7672 §3.2.2 names the MX host, not the domain
        }
    }

    // Delivery by MX: gave its messages back after a failure before the greeting.
    bool try_next() const { return try_next_; }
    std::size_t target() const { return target_; }

    static smtp::Client::Options options(Outbound& ob, Hop& hop) {
        smtp::Client::Options o;
        o.helo = ob.shard_.snapshot()->config->server.hostname;
        o.starttls = client_mode(hop.transport.starttls);
        if (o.starttls == smtp::Client::StartTls::optional &&
            std::chrono::steady_clock::now() < hop.plaintext_until) {
            o.starttls = smtp::Client::StartTls::off;
        }
        return o;
    }

    void open() {
        uv_timer_init(ob_.shard_.loop(), &timer_);
        timer_.data = this;
        ++handles_;
        arm(client_.current_timeout().count() > 0 ? client_.current_timeout()
                                                  : std::chrono::seconds(30));
        if (!hop_.domain.empty()) {
            if (target_ >= hop_.targets.size()) {
                fail("no address to connect to");
                return;
            }
            const auto& a = hop_.targets[target_].addr;
            std::string e;
            auto sa = parse_sockaddr((a.v4 ? format_ip(a) : "[" + format_ip(a) + "]") + ":" +
                                         std::to_string(kSmtpPort),
                                     e);
            connect_to(reinterpret_cast<const sockaddr*>(&sa->storage));
            return;
        }
        auto ip = parse_ip(hop_.transport.host);
        if (ip) {
            std::string e;
            auto sa =
                parse_sockaddr((ip->v4 ? hop_.transport.host : "[" + hop_.transport.host + "]") +
                                   ":" + std::to_string(hop_.transport.port),
                               e);
            connect_to(reinterpret_cast<const sockaddr*>(&sa->storage));
            return;
        }
        gai_.data = this;
        resolving_ = true;
        addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        int rc = uv_getaddrinfo(ob_.shard_.loop(), &gai_, on_resolved, hop_.transport.host.c_str(),
                                std::to_string(hop_.transport.port).c_str(), &hints);
        if (rc != 0) {
            resolving_ = false;
            fail(std::string("resolve: ") + uv_strerror(rc));
        }
    }

    // Gives the client the next job when it is idle, or (PIPELINING) while the current
    // one waits for the reply to its "." (smtp::Client::can_pipeline()).
    void feed() {
        while (!closing_ && !ob_.draining_ && !hop_.queue.empty() &&
               ((jobs_.empty() &&
                 (client_.state() == smtp::Client::State::connecting || client_.reusable())) ||
                client_.can_pipeline())) {
            jobs_.push_back(ob_.dequeue(hop_));
            const Job& job = jobs_.back();
            smtp::OutboundMessage m;
            m.sender = job.msg->sender;
            for (auto i : job.rcpts) {
                m.recipients.push_back(job.msg->recipients[i].address);
            }
            m.data = job.msg->data;
            if (!client_.send_message(m)) {
                ob_.enqueue(hop_, std::move(jobs_.back()), true);
                jobs_.pop_back();
                return;
            }
            collect();
        }
    }

    void close() {
        if (closing_) {
            return;
        }
        closing_ = true;
        while (!jobs_.empty()) {
            Job job = std::move(jobs_.front());
            jobs_.pop_front();
            if (job.inline_state) {
                // In-line: the waiting client's message is spooled by the caller instead.
                ob_.finish_inline(job, {});
            }
            // Spooled: still queued on disk, retried after the restart or by the next load.
        }
        if (resolving_) {
            uv_cancel(reinterpret_cast<uv_req_t*>(&gai_));
        }
        uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_close);
        if (tcp_init_) {
            uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), on_close);
        }
    }

    bool idle() const { return jobs_.empty() && client_.reusable(); }
    // Busy, but the next job can follow the current one's "." (PIPELINING).
    bool can_pipeline() const { return !closing_ && client_.can_pipeline(); }
    // Busy with one job whose "." is at most a round trip or two away: it will take the
    // next job behind it then (feed() runs at each of its steps).
    bool will_pipeline() const {
        if (closing_ || jobs_.size() != 1 || !client_.pipelining()) {
            return false;
        }
        using S = smtp::Client::State;
        switch (client_.state()) {
            case S::mail:
            case S::rcpt:
            case S::data:
            case S::sending:
            case S::data_end:
                return true;
            default:
                return false;
        }
    }

    // After every event: results out, next message in, output written, timer re-armed.
    void step() {
        if (closing_) {
            return;
        }
        collect();
        feed();
        if (client_.state() == smtp::Client::State::tls_handshake && !tls_) {
            // The next hop said 220 to STARTTLS: from here on every byte is TLS.
            start_tls();
            if (closing_) {
                return;
            }
        }
        if (tls_ && tls_->handshake_done() && client_.state() == smtp::Client::State::closed) {
            tls_->close_notify();  // after 221: end TLS properly, then TCP
        }
        flush();
        if (!hop_.queue.empty() && client_.can_pipeline()) {
            // Writing the data reached its "." just now (a large message goes out in
            // chunks): the next job's group follows at once rather than after the reply.
            feed();
            flush();
        }
        if (client_.finished()) {
            if (!client_.close_reason().empty() && reason_.empty()) {
                reason_ = client_.close_reason();
            }
            close();
            return;
        }
        arm(client_.current_timeout());
        if (widen_) {
            widen_ = false;
            ob_.pump(hop_);
        }
    }

  private:
    void arm(Millis t) {
        if (!closing_) {
            uv_timer_start(&timer_, on_timer,
                           static_cast<std::uint64_t>(std::max<std::int64_t>(t.count(), 1)), 0);
        }
    }

    void connect_to(const sockaddr* sa) {
        uv_tcp_init(ob_.shard_.loop(), &tcp_);
        tcp_.data = this;
        tcp_init_ = true;
        ++handles_;
        creq_.data = this;
        int rc = uv_tcp_connect(&creq_, &tcp_, sa, on_connect);
        if (rc != 0) {
            fail(std::string("connect: ") + uv_strerror(rc));
        }
    }

    void fail(std::string why) {
        reason_ = std::move(why);
        client_.connection_lost();
        step();
    }

    // The socket broke: during a TLS handshake that is a failed handshake (logged as one).
    void lost(std::string why) {
        if (tls_ && !tls_->handshake_done()) {
            tls_failed(why);
            return;
        }
        fail(std::move(why));
    }

    void start_tls() {
        const ClientTls& ct = ob_.client_tls();
        bool required = hop_.transport.starttls == TlsMode::required;
        verify_ = required && !ob_.shard_.snapshot()->config->tls.ca_file.empty();
        auto cfg = verify_ ? ct.verify : ct.plain;
        if (!cfg) {
            tls_failed(verify_ ? "tls.ca_file " + ct.verify_error : ct.plain_error);
            return;
        }
        std::shared_ptr<const tls::TlsSession> resume;
        if (hop_.tls_session && hop_.tls_session_config == cfg) {
            resume = hop_.tls_session;
        }
        tls_config_ = cfg;
        // The host as the route names it is the SNI and, with verify_, the name the
        // certificate must carry (RFC 6125); an IP literal is sent without SNI.
        tls_ = std::make_unique<tls::TlsClientStream>(std::move(cfg), tls_name_, verify_,
                                                      std::move(resume));
        if (!tls_->error().empty()) {
            tls_failed(tls_->error());
        }
        // Otherwise the ClientHello waits in the outbox for flush().
    }

    // The handshake failed: one log line, the recipients deferred (never plaintext when
    // required), and for optional a plaintext window for the next connections.
    void tls_failed(const std::string& error) {
        ob_.shard_.metrics().tls_out_handshakes[static_cast<int>(TlsResult::failed)].add();
        bool fallback = hop_.transport.starttls == TlsMode::optional;
        if (fallback) {
            hop_.plaintext_until = std::chrono::steady_clock::now() + kTlsFallback;
        }
        // A session that just failed is not offered again.
        hop_.tls_session.reset();
        hop_.tls_session_config.reset();
        LogLine(Level::warn, "tls_out", ob_.shard_.index())
            .kv("relay", hop_.key)
            .kv("starttls", to_string(hop_.transport.starttls))
            .kv("result", "failed")
            .kv("verified", verify_ ? "yes" : "no")
            .kv("error", error)
            .kv("fallback", fallback ? "plaintext" : "none");
        fail("TLS handshake: " + error);
    }

    // Feeds ciphertext to the stream; false when the link is failing (already handled).
    bool receive_tls(std::string_view cipher, std::string& plain) {
        bool was_done = tls_->handshake_done();
        auto st = tls_->receive(cipher, plain);
        if (st == tls::TlsChannel::Status::error || st == tls::TlsChannel::Status::closed) {
            if (!was_done) {
                tls_failed(st == tls::TlsChannel::Status::closed ? "closed during handshake"
                                                                 : tls_->error());
                return false;
            }
            // Replies before a close_notify still count (a 221, say); then the link ends.
            if (!plain.empty()) {
                client_.receive(plain);
            }
            fail(st == tls::TlsChannel::Status::closed ? "TLS closed by next hop"
                                                       : "TLS: " + tls_->error());
            return false;
        }
        if (!was_done && tls_->handshake_done()) {
            if (auto session = tls_->session()) {
                hop_.tls_session = std::move(session);
                hop_.tls_session_config = tls_config_;
            }
            ob_.shard_.metrics().tls_out_handshakes[static_cast<int>(TlsResult::ok)].add();
            LogLine(Level::info, "tls_out", ob_.shard_.index())
                .kv("relay", hop_.key)
                .kv("starttls", to_string(hop_.transport.starttls))
                .kv("result", "ok")
                .kv("verified", verify_ ? "yes" : "no")
                .kv("version", tls_->version())
                .kv("cipher", tls_->cipher());
            // RFC 3207 §4.2: EHLO again; the client forgets what it learnt in plaintext.
            client_.tls_established();
        }
        return true;
    }

    void collect() {
        using S = smtp::Client::State;
        auto st = client_.state();
        if (!greeted_ && st != S::connecting && st != S::greeting && st != S::quitting &&
            st != S::closed && st != S::failed) {
            greeted_ = true;  // the next hop said 220: this address works
            if (hop_.probe) {
                hop_.probe = false;
                widen_ = true;  // more links may follow now (at the end of step())
            }
        }
        while (client_.transaction_done()) {
            auto results = client_.take_results();
            if (!hop_.domain.empty() && !greeted_ && !jobs_.empty()) {
                // No connection or no 220 greeting (RFC 5321 §5.1: try the next address):
                // the message goes back to the destination's queue, in front.
                ob_.enqueue(hop_, std::move(jobs_.front()), true);
                jobs_.pop_front();
                try_next_ = true;
                continue;
            }
            if (!jobs_.empty()) {
                Job job = std::move(jobs_.front());
                jobs_.pop_front();
                ob_.finished(job, results, relay_);
            }
        }
    }

    void flush() {
        while (connected_ && !write_in_flight_) {
            if (tls_) {
                // The client writes nothing between STARTTLS and tls_established(), so all
                // of its output is meant for the TLS channel.
                if (tls_->handshake_done() && !client_.output().empty()) {
                    if (tls_->send(client_.output()) != tls::TlsChannel::Status::ok) {
                        client_.output().clear();
                        fail("TLS: " + tls_->error());
                        return;
                    }
                    client_.output().clear();
                }
                if (tls_->outbox().empty()) {
                    return;
                }
                // Handshake records, data records and alerts, in order, one write per step.
                writing_.swap(tls_->outbox());
                tls_->outbox().clear();
            } else {
                if (client_.output().empty()) {
                    return;
                }
                writing_ = client_.take_output();
            }
            // Most writes fit in the socket buffer: written now, they need no write request
            // (whose completion costs libuv an epoll_ctl). Errors and leftovers go through
            // uv_write, which reports them in on_write.
            uv_buf_t b = uv_buf_init(writing_.data(), static_cast<unsigned>(writing_.size()));
            int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
            if (n == static_cast<int>(writing_.size())) {
                writing_.clear();
                client_.output_drained();  // may fill more output (the next data chunk)
                continue;
            }
            if (n > 0) {
                writing_.erase(0, static_cast<std::size_t>(n));
            }
            write_in_flight_ = true;
            wreq_.data = this;
            b = uv_buf_init(writing_.data(), static_cast<unsigned>(writing_.size()));
            uv_write(&wreq_, reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1, on_write);
        }
    }

    static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res) {
        auto* self = static_cast<Link*>(req->data);
        self->resolving_ = false;
        if (self->closing_) {
            uv_freeaddrinfo(res);
            return;
        }
        if (status != 0 || res == nullptr) {
            uv_freeaddrinfo(res);
            self->fail(std::string("resolve: ") + uv_strerror(status));
            return;
        }
        self->connect_to(res->ai_addr);
        uv_freeaddrinfo(res);
    }

    static void on_connect(uv_connect_t* req, int status) {
        auto* self = static_cast<Link*>(req->data);
        if (self->closing_) {
            return;
        }
        if (status != 0) {
            self->fail(std::string("connect: ") + uv_strerror(status));
            return;
        }
        self->connected_ = true;
        uv_tcp_nodelay(&self->tcp_, 1);
        self->client_.connected();
        uv_read_start(reinterpret_cast<uv_stream_t*>(&self->tcp_), on_alloc, on_read);
        self->step();
    }

    static void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) {
        auto* self = static_cast<Link*>(h->data);
        buf->base = self->buf_;
        buf->len = sizeof self->buf_;
    }

    static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto* self = static_cast<Link*>(s->data);
        if (n == 0 || self->closing_) {
            return;
        }
        if (n < 0) {
            self->lost(n == UV_EOF ? "closed by next hop" : uv_err_name(static_cast<int>(n)));
            return;
        }
        std::string_view bytes(buf->base, static_cast<std::size_t>(n));
        if (self->tls_) {
            std::string plain;
            if (!self->receive_tls(bytes, plain)) {
                return;
            }
            if (!plain.empty()) {
                self->client_.receive(plain);
            }
        } else {
            // Bytes that follow the 220 to STARTTLS in the same read are dropped by the
            // client (RFC 3207 §4.2); the stream only sees what is read after it starts.
            self->client_.receive(bytes);
        }
        self->step();
        if (!self->closing_ && self->client_.awaiting_reply()) {
            self->ack_now();
        }
    }

    // More replies are due (a pipelined group, RFC 2920): acknowledge what was read at
    // once. A next hop that writes each reply on its own without TCP_NODELAY holds the
    // next one back (Nagle) until its previous one is acknowledged, and a delayed ACK
    // (up to 40 ms on Linux) would stall the connection that long. When the step above
    // wrote something, the ACK went with it and this only keeps quick-ACK mode on.
    void ack_now() {
        uv_os_fd_t fd;
        if (uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp_), &fd) == 0) {
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
        }
    }

    static void on_write(uv_write_t* req, int status) {
        auto* self = static_cast<Link*>(req->data);
        self->write_in_flight_ = false;
        self->writing_.clear();
        if (self->closing_) {
            return;
        }
        if (status < 0) {
            self->lost(std::string("write: ") + uv_strerror(status));
            return;
        }
        self->client_.output_drained();
        self->step();
    }

    static void on_timer(uv_timer_t* t) {
        auto* self = static_cast<Link*>(t->data);
        if (self->closing_) {
            return;
        }
        if (!self->connected_ && self->reason_.empty()) {
            self->reason_ = "connect timeout";
        }
        if (self->tls_ && !self->tls_->handshake_done()) {
            self->tls_failed("timeout");
            return;
        }
        self->client_.timed_out();
        self->step();
    }

    static void on_close(uv_handle_t* h) {
        auto* self = static_cast<Link*>(h->data);
        if (--self->handles_ == 0) {
            Outbound& ob = self->ob_;
            ob.link_closed(self);
        }
    }

    Outbound& ob_;
    Hop& hop_;
    smtp::Client client_;
    std::deque<Job> jobs_;  // given to the client, in order (two while pipelining)
    uv_tcp_t tcp_{};
    uv_connect_t creq_{};
    uv_getaddrinfo_t gai_{};
    uv_timer_t timer_{};
    uv_write_t wreq_{};
    std::string writing_;
    std::string reason_;
    std::string relay_;     // relay= of log lines: host:port, or for MX host[ip]:25
    std::string tls_name_;  // SNI and the name a verified certificate must carry
    std::size_t target_ = 0;
    bool greeted_ = false;
    bool try_next_ = false;
    bool widen_ = false;
    std::unique_ptr<tls::TlsClientStream> tls_;  // after the 220 to STARTTLS
    std::shared_ptr<const tls::TlsClientConfig> tls_config_;
    bool verify_ = false;
    char buf_[kLinkBuffer];
    int handles_ = 0;
    bool tcp_init_ = false;
    bool connected_ = false;
    bool resolving_ = false;
    bool write_in_flight_ = false;
    bool closing_ = false;
};

Outbound::Outbound(Shard& shard, storage::Spool& spool) : shard_(shard), spool_(spool) {}

Outbound::~Outbound() = default;

void Outbound::start(std::shared_ptr<const storage::Message> msg, std::string session_id) {
    Shard& owner = shard_.owner_of(msg->id);
    if (&owner != &shard_) {
        // Its retries and any flush run on its owner: so does its first delivery.
        owner.post([msg, session_id](Shard& s) {
            if (s.outbound() != nullptr) {
                s.outbound()->start(msg, session_id);
            }
        });
        return;
    }
    std::vector<std::size_t> all(msg->recipients.size());
    for (std::size_t i = 0; i < all.size(); ++i) {
        all[i] = i;
    }
    route(msg, all, std::vector<unsigned>(all.size(), 0), session_id);
}

std::map<std::string, Outbound::Job> Outbound::split_by_hop(
    const std::shared_ptr<const storage::Message>& msg, const std::vector<std::size_t>& rcpts,
    const std::vector<unsigned>& attempts, const std::string& session) {
    std::map<std::string, Job> by_hop;
    for (std::size_t k = 0; k < rcpts.size(); ++k) {
        const auto& rc = msg->recipients[rcpts[k]];
        auto& job = by_hop[hop_key(rc.transport, rcpt_domain(rc))];
        job.msg = msg;
        job.rcpts.push_back(rcpts[k]);
        job.attempts.push_back(attempts[k]);
        job.session = session;
    }
    return by_hop;
}

Outbound::Hop& Outbound::hop_for(const std::string& key, const Transport& t,
                                 const std::string& domain) {
    auto [it, fresh] = hops_.try_emplace(key);
    if (fresh) {
        it->second.key = t.kind == Transport::Kind::mx ? "mx:" + domain : relay_name(t);
        it->second.transport = t;
        if (t.kind == Transport::Kind::mx) {
            it->second.domain = domain;
        }
    }
    return it->second;
}

void Outbound::route(const std::shared_ptr<const storage::Message>& msg,
                     const std::vector<std::size_t>& rcpts, const std::vector<unsigned>& attempts,
                     const std::string& session) {
    if (draining_) {
        return;  // durable already: picked up again after the restart
    }
    for (auto& [key, job] : split_by_hop(msg, rcpts, attempts, session)) {
        ++active_[msg->id];
        const auto& t = msg->recipients[job.rcpts.front()].transport;
        if (t.kind == Transport::Kind::maildir) {
            deliver_local(std::move(job));
            continue;
        }
        Hop& hop = hop_for(key, t, rcpt_domain(msg->recipients[job.rcpts.front()]));
        if (!hop.overflow.empty() || !has_room(hop, msg->data.size())) {
            // The next hop is slower than the inflow: the data waits on disk, in line
            // (it still counts in active_: nothing else may route these recipients).
            hop.overflow.push_back({msg->id, std::move(job.rcpts), std::move(job.attempts),
                                    std::move(job.session), msg->data.size()});
            shard_.metrics().outbound_overflow.add(1);
            read_back(hop);  // (a no-op unless the queue has room: then the oldest comes back)
            continue;
        }
        enqueue(hop, std::move(job), false);
        pump(hop);
    }
}

bool Outbound::has_room(const Hop& hop, std::uint64_t bytes) const {
    const auto& cfg = *shard_.snapshot()->config;
    std::uint64_t cap = std::max<std::uint64_t>(
        1, cfg.limits.outbound_queue_memory / std::max<std::uint32_t>(1, cfg.server.shards));
    // One message always fits, however large: a queue never stalls for its size.
    std::uint64_t held = hop.queued_bytes + hop.reading_bytes;
    return hop.queue.size() + hop.reading_back < kMaxQueuedPerHop && (held == 0 || held + bytes <= cap);
}

void Outbound::enqueue(Hop& hop, Job job, bool front) {
    hop.queued_bytes += job.msg->data.size();
    shard_.metrics().outbound_queued_bytes.add(static_cast<std::int64_t>(job.msg->data.size()));
    if (front) {
        hop.queue.push_front(std::move(job));
    } else {
        hop.queue.push_back(std::move(job));
    }
}

Outbound::Job Outbound::dequeue(Hop& hop) {
    Job job = std::move(hop.queue.front());
    hop.queue.pop_front();
    hop.queued_bytes -= job.msg->data.size();
    shard_.metrics().outbound_queued_bytes.add(-static_cast<std::int64_t>(job.msg->data.size()));
    read_back(hop);
    return job;
}

namespace {

// A queued message read back from the spool on the thread pool (blocking I/O): for a
// retry or recovery (load) or for an overflow job whose hop has room again (read_back).
struct ReadJob {
    uv_work_t req{};
    Outbound* ob = nullptr;
    storage::Spool* spool = nullptr;
    storage::QueueId id;
    std::optional<storage::QueueEntry> entry;
    std::unique_ptr<storage::Message> msg;  // null: gone, held, or nothing left to deliver
    std::string hop;                        // read_back: the hop and its job
    Outbound::Overflow overflow;

    static ReadJob* make(Outbound* ob, storage::Spool* spool, const storage::QueueId& id) {
        auto* j = new ReadJob;
        j->req.data = j;
        j->ob = ob;
        j->spool = spool;
        j->id = id;
        return j;
    }

    // Thread pool.
    static void work(uv_work_t* r) {
        auto* j = static_cast<ReadJob*>(r->data);
        j->entry = j->spool->entry(j->id);
        if (j->entry && !j->entry->held && j->entry->live_recipients() > 0) {
            auto m = j->spool->load(j->id);
            if (m.ok()) {
                j->msg = std::move(*m);
            }
        }
    }
};

}  // namespace

// Overflow jobs come back into the queue as it drains, in order, a few reads at a time,
// while there is room for them (counting the reads in flight).
void Outbound::read_back(Hop& hop) {
    constexpr std::size_t kReadsInFlight = 4;
    while (!draining_ && !hop.overflow.empty() && hop.reading_back < kReadsInFlight &&
           has_room(hop, hop.overflow.front().bytes)) {
        auto* job = ReadJob::make(this, &spool_, hop.overflow.front().id);
        job->hop = hop_key(hop.transport, hop.domain);
        job->overflow = std::move(hop.overflow.front());
        hop.overflow.pop_front();
        shard_.metrics().outbound_overflow.add(-1);
        ++hop.reading_back;
        hop.reading_bytes += job->overflow.bytes;
        ++loads_;
        shard_.work_started();
        uv_queue_work(
            shard_.loop(), &job->req, ReadJob::work,
            [](uv_work_t* r, int) {
                std::unique_ptr<ReadJob> j(static_cast<ReadJob*>(r->data));
                Outbound& ob = *j->ob;
                Hop& hop = ob.hops_.at(j->hop);
                --hop.reading_back;
                hop.reading_bytes -= j->overflow.bytes;
                --ob.loads_;
                if (j->msg && !ob.draining_) {
                    Job job;
                    job.msg = std::shared_ptr<const storage::Message>(std::move(j->msg));
                    job.rcpts = std::move(j->overflow.rcpts);
                    job.attempts = std::move(j->overflow.attempts);
                    job.session = std::move(j->overflow.session);
                    ob.enqueue(hop, std::move(job), false);
                    ob.pump(hop);
                } else if (--ob.active_[j->id] == 0) {
                    // Deleted or held meanwhile (`queue release` schedules it again), or
                    // shutting down (it is read again after the restart).
                    ob.active_.erase(j->id);
                }
                ob.read_back(hop);
                ob.shard_.work_finished();
            });
    }
}

void Outbound::pump(Hop& hop) {
    if (!hop.domain.empty() && !destination_ready(hop)) {
        return;
    }
    // A busy link that can take the next job behind its "." first: one write then carries
    // that message's data and the next one's envelope, and fewer connections carry the
    // same mail (fewer system calls per message). Idle links and new ones take what is
    // left, so a growing queue still spreads over up to outbound_connections links. An
    // in-line job (its client waits for the next hop's reply) goes to an idle link first.
    // Spooled mail also waits for busy links that will reach their "." within a round trip
    // or two, as long as there are enough of them: a burst of commits then rides on the
    // connections already busy instead of spreading over idle ones, one message each.
    bool waiting_client = !hop.queue.empty() && hop.queue.front().inline_state != nullptr;
    std::size_t soon = 0;
    auto offer = [&](auto&& take) {
        for (auto* link : hop.links) {
            if (hop.queue.size() <= soon) {
                return;
            }
            if (take(*link)) {
                link->step();
            }
        }
    };
    auto can_pipeline = [](const Link& l) { return l.can_pipeline(); };
    auto idle = [](const Link& l) { return l.idle(); };
    if (waiting_client) {
        offer(idle);
        offer(can_pipeline);
    } else {
        offer(can_pipeline);
        soon = static_cast<std::size_t>(std::count_if(
            hop.links.begin(), hop.links.end(), [](const Link* l) { return l->will_pipeline(); }));
        offer(idle);
    }
    const auto& cfg = *shard_.snapshot()->config;
    std::size_t limit =
        std::max<std::size_t>(1, cfg.limits.outbound_connections / cfg.server.shards);
    if (hop.probe) {
        limit = 1;  // a destination that was dead: one connection finds out
    }
    std::size_t total = std::max<std::size_t>(
        1, cfg.limits.outbound_connections_total / cfg.server.shards);
    if (hop.queue.size() > soon && hop.links.size() < limit && links_ >= total && !draining_) {
        // Every connection this shard may have is open: an idle one elsewhere makes room
        // (its close pumps the hops waiting), else this hop waits for the next to end.
        waiting_room_.insert(&hop);
        for (auto& [key, other] : hops_) {
            if (&other == &hop) {
                continue;
            }
            auto idle_link = std::find_if(other.links.begin(), other.links.end(),
                                          [](const Link* l) { return l->idle(); });
            if (idle_link != other.links.end()) {
                (*idle_link)->close();
                break;
            }
        }
        return;
    }
    while (hop.queue.size() > soon && hop.links.size() < limit && links_ < total && !draining_) {
        auto* link = new Link(*this, hop);
        hop.links.insert(link);
        ++links_;
        shard_.work_started();
        link->open();
        link->step();
    }
}

void Outbound::link_closed(Link* link) {
    for (auto& [key, hop] : hops_) {
        if (hop.links.erase(link) != 0) {
            bool next = link->try_next();
            std::size_t target = link->target();
            delete link;
            if (next && !draining_) {
                target_failed(hop, target);
            }
            --links_;
            if (!draining_ && !hop.queue.empty()) {
                pump(hop);
            }
            // A slot is free: hops that found none may open a link now.
            while (!draining_ && !waiting_room_.empty()) {
                Hop* next = *waiting_room_.begin();
                waiting_room_.erase(waiting_room_.begin());
                if (!next->queue.empty()) {
                    pump(*next);
                    break;
                }
            }
            break;
        }
    }
    shard_.work_finished();
}

const Outbound::ClientTls& Outbound::client_tls() {
    // Loaded on the loop, at most once per config generation: a CA bundle is one small
    // file, read when the first next hop of a generation starts TLS.
    std::string e;
    if (!client_tls_.plain && client_tls_.plain_error.empty()) {
        client_tls_.plain = tls::TlsClientConfig::load("", e);
        client_tls_.plain_error = e;
    }
    const auto& cfg = shard_.snapshot()->config;
    if (client_tls_.config != cfg) {
        client_tls_.config = cfg;
        client_tls_.verify.reset();
        client_tls_.verify_error.clear();
        if (!cfg->tls.ca_file.empty()) {
            e.clear();
            client_tls_.verify = tls::TlsClientConfig::load(cfg->tls.ca_file, e);
            if (!client_tls_.verify) {
                client_tls_.verify_error = e;
                LogLine(Level::error, "tls_out_config", shard_.index())
                    .kv("ca_file", cfg->tls.ca_file)
                    .kv("error", e);
            }
        }
    }
    return client_tls_;
}

void Outbound::deliver_local(Job job) {
    // A maildir route of a spooled message: the same batched writer as in-line delivery,
    // for a copy that names only these recipients.
    auto copy = std::make_unique<storage::Message>();
    copy->id = job.msg->id;
    copy->sender = job.msg->sender;
    copy->data = job.msg->data;
    for (auto i : job.rcpts) {
        copy->recipients.push_back(job.msg->recipients[i]);
    }
    shard_.work_started();
    auto shared = std::make_shared<Job>(std::move(job));
    shard_.local_delivery().submit(
        std::move(copy), shared->session, [this, shared](storage::CommitStatus st) {
            std::vector<smtp::RecipientResult> results(shared->rcpts.size());
            for (auto& r : results) {
                if (st == storage::CommitStatus::ok) {
                    r.kind = smtp::RecipientResult::Kind::delivered;
                    r.code = 250;
                    r.enhanced = "2.0.0";
                    r.text = "delivered to maildir";
                } else {
                    r.kind = smtp::RecipientResult::Kind::deferred;
                    r.code = 451;
                    r.enhanced = "4.3.0";
                    r.text = "maildir write failed";
                }
            }
            finished(*shared, results, "maildir");
            shard_.work_finished();
        });
}

void Outbound::deliver_inline(std::shared_ptr<const storage::Message> msg, std::string session_id,
                              InlineDone done) {
    auto state = std::make_shared<InlineState>();
    state->results.assign(msg->recipients.size(), smtp::RecipientResult{});
    state->done = std::move(done);
    if (draining_) {
        auto d = std::move(state->done);
        d(state->results);
        return;
    }
    std::vector<std::size_t> all(msg->recipients.size());
    for (std::size_t i = 0; i < all.size(); ++i) {
        all[i] = i;
    }
    auto by_hop = split_by_hop(msg, all, std::vector<unsigned>(all.size(), 0), session_id);
    state->jobs_left = static_cast<int>(by_hop.size());
    for (auto& [key, job] : by_hop) {
        job.inline_state = state;
        const auto& rc = msg->recipients[job.rcpts.front()];
        Hop& hop = hop_for(key, rc.transport, rcpt_domain(rc));
        enqueue(hop, std::move(job), true);  // a client is waiting: first in line
        pump(hop);
    }
}

void Outbound::finish_inline(Job& job, const std::vector<smtp::RecipientResult>& results) {
    auto state = job.inline_state;
    for (std::size_t k = 0; k < job.rcpts.size() && k < results.size(); ++k) {
        state->results[job.rcpts[k]] = results[k];
        if (results[k].kind == smtp::RecipientResult::Kind::delivered) {
            shard_.metrics().deliveries[static_cast<int>(DeliveryResult::delivered)].add();
            LogLine(Level::info, "delivered", shard_.index(), job.session)
                .kv("id", job.msg->id)
                .kv("to", angle(job.msg->recipients[job.rcpts[k]].address))
                .kv("relay", relay_name(job.msg->recipients[job.rcpts[k]].transport))
                .kv("reply", results[k].reply)
                .kv("mode", "inline");
        }
    }
    if (--state->jobs_left == 0 && state->done) {
        auto done = std::move(state->done);
        done(state->results);
    }
}

void Outbound::finished(Job& job, const std::vector<smtp::RecipientResult>& results,
                        const std::string& relay) {
    if (job.inline_state) {
        finish_inline(job, results);
        return;
    }
    const auto& cfg = *shard_.snapshot()->config;
    const auto& msg = *job.msg;
    auto now = std::chrono::system_clock::now();
    auto& metrics = shard_.metrics();
    std::vector<std::pair<std::size_t, smtp::RecipientResult>> failed;
    for (std::size_t k = 0; k < job.rcpts.size() && k < results.size(); ++k) {
        std::size_t idx = job.rcpts[k];
        const auto& r = results[k];
        const auto& rc = msg.recipients[idx];
        std::string reply =
            r.reply.empty() ? std::to_string(r.code) + " " + r.enhanced + " " + r.text : r.reply;
        if (r.kind == smtp::RecipientResult::Kind::delivered) {
            spool_.record_delivered(msg.id, idx);
            if (relay != "maildir") {
                // (maildir deliveries were logged and counted by the batch that wrote them)
                metrics.deliveries[static_cast<int>(DeliveryResult::delivered)].add();
                LogLine(Level::info, "delivered", shard_.index(), job.session)
                    .kv("id", msg.id)
                    .kv("to", angle(rc.address))
                    .kv("relay", relay)
                    .kv("reply", reply);
            }
            continue;
        }
        unsigned attempt = job.attempts[k] + 1;
        bool expired = now - msg.received_at >= cfg.spool.max_age;
        if (r.kind == smtp::RecipientResult::Kind::deferred && !expired) {
            const auto& sched = cfg.spool.retry;
            auto delay = sched.empty()
                             ? Millis(60'000)
                             : sched[std::min<std::size_t>(attempt - 1, sched.size() - 1)];
            auto next = now + delay;
            spool_.record_deferred(msg.id, idx, reply, next, attempt);
            schedule(msg.id, next);
            metrics.deliveries[static_cast<int>(DeliveryResult::deferred)].add();
            LogLine(Level::info, "deferred", shard_.index(), job.session)
                .kv("id", msg.id)
                .kv("to", angle(rc.address))
                .kv("relay", relay)
                .kv("reply", reply)
                .kv("attempts", attempt)
                .kv("retry_in", format_duration(delay));
            continue;
        }
        smtp::RecipientResult final = r;
        if (expired && r.kind == smtp::RecipientResult::Kind::deferred) {
            final.kind = smtp::RecipientResult::Kind::failed;
            final.enhanced = "4.4.7";  // RFC 3463: delivery time expired
        }
        spool_.record_failed(msg.id, idx, reply);
        metrics.deliveries[static_cast<int>(DeliveryResult::bounced)].add();
        LogLine(Level::info, "bounced", shard_.index(), job.session)
            .kv("id", msg.id)
            .kv("to", angle(rc.address))
            .kv("relay", relay)
            .kv("reply", reply)
            .kv("reason", expired ? "expired" : "refused");
        failed.emplace_back(idx, final);
    }
    if (!failed.empty()) {
        bounce(msg, failed);
    }
    auto it = active_.find(msg.id);
    if (it != active_.end() && --it->second == 0) {
        active_.erase(it);
        // Its outcome records are on their way to the spool (a few ms): until they are
        // applied, a reading of the message would still show these recipients as due.
        auto until = std::chrono::steady_clock::now() + kSettle;
        settling_[msg.id] = until;
        settle_order_.emplace_back(until, msg.id);
    }
}

void Outbound::bounce(const storage::Message& msg,
                      const std::vector<std::pair<std::size_t, smtp::RecipientResult>>& failed) {
    if (!dsn::should_bounce(msg.sender)) {
        return;  // never bounce a bounce (RFC 5321 §4.5.5)
    }
    const auto& cfg = *shard_.snapshot()->config;
    dsn::DsnInput in;
    in.reporting_mta = cfg.server.hostname;
    in.sender = msg.sender;
    in.queue_id = msg.id;
    in.arrival = msg.received_at;
    in.now = std::chrono::system_clock::now();
    in.original = msg.data;
    for (const auto& [idx, r] : failed) {
        dsn::RecipientReport rep;
        rep.address = msg.recipients[idx].address;
        rep.action = dsn::Action::failed;
        rep.status = r.enhanced;
        rep.diagnostic = r.diagnostic();
        rep.last_attempt = in.now;
        in.recipients.push_back(std::move(rep));
    }
    auto at = msg.sender.rfind('@');
    std::string domain = at == std::string::npos ? std::string() : msg.sender.substr(at + 1);
    const Route* route = cfg.route_for(domain);
    if (route == nullptr) {
        LogLine(Level::warn, "bounce_dropped", shard_.index())
            .kv("id", msg.id)
            .kv("to", angle(msg.sender))
            .kv("reason", "no route for " + domain);
        return;
    }
    auto dsn_msg = std::make_unique<storage::Message>();
    dsn_msg->id = smtp::new_message_id(shard_.index());
    dsn_msg->sender = std::string(dsn::kNullSender);
    dsn_msg->data = dsn::build_dsn(in);
    storage::Recipient rc;
    rc.address = msg.sender;
    rc.deliver_to = msg.sender;
    rc.code = "DSN";
    rc.transport = route->transport;
    dsn_msg->recipients.push_back(std::move(rc));
    dsn_msg->client = "127.0.0.1";
    dsn_msg->helo = cfg.server.hostname;
    dsn_msg->listener = "dsn";
    dsn_msg->received_at = in.now;
    LogLine(Level::info, "dsn", shard_.index())
        .kv("id", dsn_msg->id)
        .kv("original", msg.id)
        .kv("to", angle(msg.sender))
        .kv("failed", static_cast<std::uint64_t>(failed.size()));
    Shard* shard = &shard_;
    shard_.work_started();
    spool_.submit(std::move(dsn_msg),
                  [shard](storage::CommitStatus st, std::unique_ptr<storage::Message> m) {
                      std::shared_ptr<const storage::Message> sm(std::move(m));
                      shard->post([st, sm](Shard& s) {
                          if (st == storage::CommitStatus::ok && s.outbound() != nullptr) {
                              s.outbound()->start(sm, {});
                          }
                          s.work_finished();
                      });
                  });
}

void Outbound::schedule(const storage::QueueId& id, SysTime when) {
    if (!draining_) {
        due_.emplace(when, id);
    }
}

void Outbound::tick(SysTime now) {
    auto steady = std::chrono::steady_clock::now();
    while (!settle_order_.empty() && settle_order_.front().first <= steady) {
        auto s = settling_.find(settle_order_.front().second);
        if (s != settling_.end() && s->second <= steady) {
            settling_.erase(s);
        }
        settle_order_.pop_front();
    }
    while (!due_.empty() && due_.top().first <= now && !draining_) {
        auto id = due_.top().second;
        due_.pop();
        if (active_.count(id) == 0 && settling_.count(id) == 0) {
            load(id);
        } else {
            // Deliveries of it are on their way, or their outcomes not yet on record:
            // reading it now could route those recipients a second time. Look again later.
            schedule(id, now + kBusyRecheck);
        }
    }
}

void Outbound::load(const storage::QueueId& id) {
    // Reading a message back is blocking I/O: the thread pool does it.
    auto* job = ReadJob::make(this, &spool_, id);
    ++loads_;
    ++active_[id];
    shard_.work_started();
    uv_queue_work(
        shard_.loop(), &job->req, ReadJob::work,
        [](uv_work_t* r, int) {
            std::unique_ptr<ReadJob> j(static_cast<ReadJob*>(r->data));
            Outbound& ob = *j->ob;
            --ob.loads_;
            if (--ob.active_[j->id] == 0) {
                ob.active_.erase(j->id);
            }
            if (j->msg && j->entry && !ob.draining_) {
                auto now = std::chrono::system_clock::now();
                std::vector<std::size_t> due;
                std::vector<unsigned> attempts;
                std::optional<SysTime> later;
                for (std::size_t i = 0; i < j->entry->recipients.size(); ++i) {
                    const auto& st = j->entry->recipients[i];
                    if (st.state == storage::RcptState::pending ||
                        (st.state == storage::RcptState::deferred && st.next_attempt <= now)) {
                        due.push_back(i);
                        attempts.push_back(st.attempts);
                    } else if (st.state == storage::RcptState::deferred) {
                        later = later ? std::min(*later, st.next_attempt) : st.next_attempt;
                    }
                }
                if (later) {
                    ob.schedule(j->id, *later);
                }
                if (!due.empty()) {
                    std::shared_ptr<const storage::Message> msg(std::move(j->msg));
                    ob.route(msg, due, attempts, {});
                }
            }
            ob.shard_.work_finished();
        });
}

void Outbound::drain() {
    draining_ = true;
    for (auto& [key, hop] : hops_) {
        for (auto& job : hop.queue) {
            if (job.inline_state) {
                finish_inline(job, {});
            }
        }
        hop.queue.clear();
        shard_.metrics().outbound_queued_bytes.add(-static_cast<std::int64_t>(hop.queued_bytes));
        hop.queued_bytes = 0;
        shard_.metrics().outbound_overflow.add(-static_cast<std::int64_t>(hop.overflow.size()));
        hop.overflow.clear();  // on disk: read again after the restart
        auto links = hop.links;
        for (auto* l : links) {
            l->close();
        }
    }
    while (!due_.empty()) {
        due_.pop();
    }
}

}  // namespace sluice

namespace sluice {

bool Outbound::destination_ready(Hop& hop) {
    auto now = std::chrono::steady_clock::now();
    if (hop.dest == Hop::Dest::resolving) {
        return false;
    }
    if (now < hop.dead_until) {
        // Dead destination: what comes meanwhile waits for the next retry step on disk.
        fail_queue(hop, local_result(Reply::mx_unreachable, hop.domain), hop.key);
        return false;
    }
    if (hop.dest == Hop::Dest::ready && (now < hop.plan_expires || hop.fresh_plan)) {
        hop.fresh_plan = false;  // a plan with TTL 0 serves the pump that asked for it
        return true;
    }
    if (hop.queue.empty() || draining_) {
        return false;
    }
    // The plan's TTL ran out: idle connections made under it are not reused (the MX set or
    // its addresses may have moved); busy ones finish their message.
    auto links = hop.links;
    for (auto* l : links) {
        if (l->idle()) {
            l->close();
        }
    }
    plan(hop);
    return false;
}

void Outbound::plan(Hop& hop) {
    dns::Resolver* resolver = shard_.resolver();
    hop.dest = Hop::Dest::resolving;
    if (resolver == nullptr) {
        hop.dest = Hop::Dest::unplanned;
        fail_queue(hop, local_result(Reply::dns_temporary, hop.domain + " (no resolver)"),
                   hop.key);
        return;
    }
    const auto& cfg = *shard_.snapshot()->config;
    dns::PlanOptions opts;
    opts.prefer = cfg.dns.prefer_ipv4 ? dns::Prefer::ipv4 : dns::Prefer::ipv6;
    opts.max_targets = cfg.dns.mx_addresses;
    Hop* h = &hop;  // hops_ never erases: the address stays valid
    ++loads_;
    shard_.work_started();
    dns::plan_destination(
        hop.domain, dns::self_of(cfg), opts, resolver->rng(), resolver->lookup_fn(),
        [this, h](dns::Destination d) {
            --loads_;
            h->dest = Hop::Dest::unplanned;
            if (!draining_) {
                if (d.verdict == dns::Destination::Verdict::deliver) {
                    h->dest = Hop::Dest::ready;
                    h->targets = std::move(d.targets);
                    h->next_target = 0;
                    h->fresh_plan = true;
                    // An address not yet proven: one link until it greets (a destination
                    // that is down costs one connection per address, not one per message).
                    h->probe = h->links.empty();
                    h->plan_expires = std::chrono::steady_clock::now() + std::chrono::seconds(d.ttl);
                    LogLine(Level::info, "mx_plan", shard_.index())
                        .kv("domain", h->domain)
                        .kv("implicit", d.implicit ? "yes" : "no")
                        .kv("addresses", static_cast<std::uint64_t>(h->targets.size()))
                        .kv("first", h->targets.front().host + "[" +
                                         format_ip(h->targets.front().addr) + "]")
                        .kv("ttl", static_cast<std::uint64_t>(d.ttl));
                    pump(*h);
                } else {
                    LogLine(Level::info, "mx_plan", shard_.index())
                        .kv("domain", h->domain)
                        .kv("verdict", dns::to_string(d.verdict))
                        .kv("reply", reply_line(d.reply, d.detail));
                    fail_queue(*h, local_result(d.reply, d.detail), h->key);
                }
            }
            shard_.work_finished();
        });
}

void Outbound::fail_queue(Hop& hop, const smtp::RecipientResult& r, const std::string& relay) {
    // Every job waiting (and, as they are read back, those on disk behind them).
    while (!hop.queue.empty()) {
        Job job = dequeue(hop);
        std::vector<smtp::RecipientResult> results(job.rcpts.size(), r);
        finished(job, results, relay);
    }
}

void Outbound::target_failed(Hop& hop, std::size_t target) {
    hop.next_target = std::max(hop.next_target, target + 1);
    if (hop.next_target < hop.targets.size()) {
        return;  // link_closed pumps: the next link takes the next address
    }
    // Every address of this round failed: the destination is dead for one retry step.
    const auto& cfg = *shard_.snapshot()->config;
    Millis step = cfg.spool.retry.empty() ? Millis(60'000) : cfg.spool.retry.front();
    hop.dead_until = std::chrono::steady_clock::now() + step;
    hop.next_target = 0;
    hop.probe = true;
    LogLine(Level::warn, "destination_dead", shard_.index())
        .kv("domain", hop.domain)
        .kv("addresses", static_cast<std::uint64_t>(hop.targets.size()))
        .kv("retry_in", format_duration(step))
        .kv("waiting", static_cast<std::uint64_t>(hop.queue.size() + hop.overflow.size()));
    fail_queue(hop, local_result(Reply::mx_unreachable, hop.domain), hop.key);
}

}  // namespace sluice
