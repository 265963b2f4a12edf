#include "daemon/stats.hpp"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "daemon/rates/limits.hpp"
#include "policy/policy.hpp"
#include "storage/spool.hpp"

namespace sluice::stats {
namespace {

constexpr std::size_t kCodes = static_cast<std::size_t>(policy::Code::A000) + 1;
static_assert(kCodes <= kDecisionCodes);

template <std::size_t N>
void add_all(std::array<std::uint64_t, N>& into, const std::array<Counter, N>& from) {
    for (std::size_t i = 0; i < N; ++i) {
        into[i] += from[i].get();
    }
}

// Label values: backslash, double quote and line feed are escaped (exposition format 0.0.4).
std::string label_value(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '"') {
            out += "\\\"";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out.push_back(c);
        }
    }
    return out;
}

// The shortest text that reads back as `v` ("0.05", not "0.050000000000000003").
std::string number(double v) {
    char buf[32];
    if (v == static_cast<double>(static_cast<long long>(v)) && v < 1e15 && v > -1e15) {
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
        return buf;
    }
    for (int precision = 1; precision <= 17; ++precision) {
        std::snprintf(buf, sizeof buf, "%.*g", precision, v);
        if (std::strtod(buf, nullptr) == v) {
            break;
        }
    }
    return buf;
}

std::string seconds(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", v);
    return buf;
}

class Writer {
  public:
    void family(std::string_view name, std::string_view type, std::string_view help) {
        out_ += "# HELP ";
        out_ += name;
        out_ += ' ';
        out_ += help;
        out_ += "\n# TYPE ";
        out_ += name;
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }
    // `labels` is the text between the braces, already escaped ("" for none).
    void sample(std::string_view name, std::string_view labels, std::string_view value) {
        out_ += name;
        if (!labels.empty()) {
            out_ += '{';
            out_ += labels;
            out_ += '}';
        }
        out_ += ' ';
        out_ += value;
        out_ += '\n';
    }
    void sample(std::string_view name, std::string_view labels, std::uint64_t value) {
        sample(name, labels, std::to_string(value));
    }
    std::string take() { return std::move(out_); }

  private:
    std::string out_;
};

template <typename E>
void by_result(Writer& w, std::string_view name, const ByResult<E>& values) {
    for (std::size_t i = 0; i < values.size(); ++i) {
        w.sample(name, "result=\"" + std::string(result_name(static_cast<E>(i))) + "\"", values[i]);
    }
}

template <typename E>
nlohmann::json by_result_json(const ByResult<E>& values) {
    auto j = nlohmann::json::object();
    for (std::size_t i = 0; i < values.size(); ++i) {
        j[std::string(result_name(static_cast<E>(i)))] = values[i];
    }
    return j;
}

}  // namespace

Totals collect(const std::vector<const ShardMetrics*>& shards, const ServerNumbers& server) {
    Totals t;
    t.server = server;
    std::array<std::uint64_t, kDurationBuckets.size()> buckets{};
    std::uint64_t count = 0;
    std::uint64_t sum_ms = 0;
    std::array<std::uint64_t, kDnsBuckets.size()> dns_buckets{};
    std::uint64_t dns_count = 0;
    std::uint64_t dns_sum_us = 0;
    for (const ShardMetrics* m : shards) {
        {
            std::lock_guard lock(m->listeners_mu);
            for (std::size_t i = 0; i < m->listener_names.size(); ++i) {
                auto& into = t.connections[m->listener_names[i]];
                add_all(into, m->connections[i]);
            }
            for (const auto& [name, counts] : m->listeners_gone) {
                auto& into = t.connections[name];
                for (std::size_t r = 0; r < counts.size(); ++r) {
                    into[r] += counts[r];
                }
            }
        }
        t.sessions_active += m->sessions_active.get();
        t.outbound_queued_bytes += m->outbound_queued_bytes.get();
        t.outbound_overflow += m->outbound_overflow.get();
        for (std::size_t i = 0; i < kDecisionCodes; ++i) {
            t.decisions[i] += m->decisions[i].get();
        }
        for (std::size_t l = 0; l < t.rate_limited.size(); ++l) {
            add_all(t.rate_limited[l], m->rate_limited[l]);
        }
        add_all(t.messages, m->messages);
        add_all(t.deliveries, m->deliveries);
        add_all(t.tls_handshakes, m->tls_handshakes);
        add_all(t.tls_out_handshakes, m->tls_out_handshakes);
        add_all(t.auth, m->auth);
        t.dns_queries += m->dns_queries.get();
        add_all(t.dns_answers, m->dns_answers);
        t.dns_cache_hits += m->dns_cache_hits.get();
        t.dns_cache_misses += m->dns_cache_misses.get();
        t.dns_cache_entries += m->dns_cache_entries.get();
        t.dns_cache_bytes += m->dns_cache_bytes.get();
        dns_count += m->dns_latency_count.get();
        dns_sum_us += m->dns_latency_sum_us.get();
        add_all(dns_buckets, m->dns_latency_buckets);
        t.bytes_received += m->bytes_received.get();
        // The count is read before the buckets: observe_duration() adds to the bucket first,
        // so a racing observation can only make the buckets run ahead, which the max below
        // absorbs (the +Inf bucket must hold every other bucket).
        count += m->duration_count.get();
        sum_ms += m->duration_sum_ms.get();
        add_all(buckets, m->duration_buckets);
        t.shard_generations.push_back(m->generation.load(std::memory_order_relaxed));
    }
    std::uint64_t running = 0;
    for (std::size_t i = 0; i < buckets.size(); ++i) {
        running += buckets[i];
        t.duration_buckets[i] = running;
    }
    t.duration_count = std::max(count, running);
    t.duration_sum = static_cast<double>(sum_ms) / 1000.0;
    running = 0;
    for (std::size_t i = 0; i < dns_buckets.size(); ++i) {
        running += dns_buckets[i];
        t.dns_latency_buckets[i] = running;
    }
    t.dns_latency_count = std::max(dns_count, running);
    t.dns_latency_sum = static_cast<double>(dns_sum_us) / 1e6;
    return t;
}

std::string render_prometheus(const Totals& t) {
    Writer w;
    w.family("sluice_build_info", "gauge", "Build of the running daemon (always 1).");
    w.sample("sluice_build_info", "version=\"" + label_value(t.server.version) + "\"", 1);

    w.family("sluice_start_time_seconds", "gauge",
             "Start time of the daemon, seconds since the Unix epoch.");
    w.sample("sluice_start_time_seconds", "", seconds(t.server.start_time));

    w.family("sluice_config_generation", "gauge",
             "Configuration generation in service (1 at start, +1 per successful reload).");
    w.sample("sluice_config_generation", "", t.server.generation);

    w.family("sluice_config_reloads_total", "counter", "Configuration reloads, by result.");
    w.sample("sluice_config_reloads_total", "result=\"ok\"", t.server.reloads_ok);
    w.sample("sluice_config_reloads_total", "result=\"failed\"", t.server.reloads_failed);

    w.family("sluice_connections_total", "counter", "SMTP connections, by listener and result.");
    for (const auto& [name, counts] : t.connections) {
        for (std::size_t r = 0; r < counts.size(); ++r) {
            w.sample("sluice_connections_total",
                     "listener=\"" + label_value(name) + "\",result=\"" +
                         std::string(result_name(static_cast<ConnResult>(r))) + "\"",
                     counts[r]);
        }
    }

    w.family("sluice_sessions_active", "gauge", "SMTP sessions open now.");
    w.sample("sluice_sessions_active", "", std::to_string(t.sessions_active));

    w.family("sluice_relay_decisions_total", "counter",
             "Policy decisions, by decision code (docs/decision-codes.md).");
    for (std::size_t i = 0; i < kCodes; ++i) {
        w.sample("sluice_relay_decisions_total",
                 "code=\"" + std::string(policy::code_name(static_cast<policy::Code>(i))) + "\"",
                 t.decisions[i]);
    }

    w.family("sluice_rate_limited_total", "counter",
             "Refusals by a [rates] limit, by limit and by the key that was over it.");
    for (std::size_t l = 0; l < t.rate_limited.size(); ++l) {
        for (std::size_t k = 0; k < t.rate_limited[l].size(); ++k) {
            w.sample("sluice_rate_limited_total",
                     "limit=\"" + std::string(rates::limit_name(static_cast<rates::LimitKind>(l))) +
                         "\",key_kind=\"" +
                         std::string(rates::key_kind_name(static_cast<rates::KeyKind>(k))) + "\"",
                     t.rate_limited[l][k]);
        }
    }

    w.family("sluice_messages_total", "counter", "Messages at the end of DATA, by result.");
    by_result<MsgResult>(w, "sluice_messages_total", t.messages);

    w.family("sluice_bytes_received_total", "counter", "Bytes received from SMTP clients.");
    w.sample("sluice_bytes_received_total", "", t.bytes_received);

    w.family("sluice_queue_messages", "gauge", "Messages in the spool.");
    w.sample("sluice_queue_messages", "", t.server.queue_messages);

    w.family("sluice_spool_committed_total", "counter", "Messages the spool made durable.");
    w.sample("sluice_spool_committed_total", "", t.server.spool_committed);
    w.family("sluice_spool_batches_total", "counter", "Group-commit batches written.");
    w.sample("sluice_spool_batches_total", "", t.server.spool_batches);
    w.family("sluice_spool_fsyncs_total", "counter", "fdatasync/fsync calls of the spool.");
    w.sample("sluice_spool_fsyncs_total", "", t.server.spool_fsyncs);
    w.family("sluice_spool_state", "gauge",
             "The spool's disk: 1 for the state it is in. ok: accepting; low: below "
             "spool.min_free or at spool.max_size; full: out of space (ENOSPC/EDQUOT); "
             "failing: writes or fdatasync fail (EIO). New mail gets 452 4.3.1 unless ok.");
    for (const auto& row : storage::kSpoolStates) {
        w.sample("sluice_spool_state", "state=\"" + std::string(row.name) + "\"",
                 static_cast<std::uint64_t>(t.server.spool_state == row.name ? 1 : 0));
    }
    w.family("sluice_spool_free_bytes", "gauge", "Free space on the spool's file system.");
    w.sample("sluice_spool_free_bytes", "", t.server.spool_free_bytes);
    w.family("sluice_spool_reserve_bytes", "gauge",
             "Space the spool holds back for outcome records (spool.reserve; 0 while a full "
             "disk uses it).");
    w.sample("sluice_spool_reserve_bytes", "", t.server.spool_reserve_bytes);
    w.family("sluice_spool_write_errors_total", "counter",
             "Spool writes, fdatasyncs and file creations that failed.");
    w.sample("sluice_spool_write_errors_total", "", t.server.spool_write_errors);
    w.family("sluice_transactions_open", "gauge",
             "SMTP transactions past MAIL and not yet submitted (the company a commit may "
             "wait for, spool.commit_delay).");
    w.sample("sluice_transactions_open", "",
             number(static_cast<double>(t.server.transactions_open)));
    w.family("sluice_spool_commit_seconds_total", "counter",
             "Time committed messages spent from submission to durable, summed (divide by "
             "sluice_spool_committed_total for the mean).");
    w.sample("sluice_spool_commit_seconds_total", "",
             number(static_cast<double>(t.server.spool_commit_ns) / 1e9));

    w.family("sluice_stats_clients_evicted_total", "counter",
             "Stats endpoint clients closed to make room for a newer one (a cap was reached).");
    w.sample("sluice_stats_clients_evicted_total", "", t.server.stats_evicted);
    w.family("sluice_control_clients_evicted_total", "counter",
             "Control socket clients closed to make room for a newer one (a cap was reached).");
    w.sample("sluice_control_clients_evicted_total", "", t.server.control_evicted);
    w.family("sluice_queue_oldest_age_seconds", "gauge",
             "Age of the oldest message in the spool (0 when the queue is empty).");
    w.sample("sluice_queue_oldest_age_seconds", "", seconds(t.server.queue_oldest_age));
    w.family("sluice_shard_loop_lag_seconds", "gauge",
             "Per shard: time a ready callback waits for its loop (probed every second; an "
             "unanswered probe keeps growing).");
    for (std::size_t i = 0; i < t.server.shard_loop_lag.size(); ++i) {
        w.sample("sluice_shard_loop_lag_seconds", "shard=\"" + std::to_string(i) + "\"",
                 seconds(t.server.shard_loop_lag[i]));
    }

    w.family("sluice_outbound_queued_bytes", "gauge",
             "Message data held in memory for next hops (limits.outbound_queue_memory).");
    w.sample("sluice_outbound_queued_bytes", "", std::to_string(t.outbound_queued_bytes));
    w.family("sluice_outbound_overflow_messages", "gauge",
             "Deliveries waiting on disk because their next hop's queue was full.");
    w.sample("sluice_outbound_overflow_messages", "", std::to_string(t.outbound_overflow));

    w.family("sluice_deliveries_total", "counter", "Delivery attempts per recipient, by result.");
    by_result<DeliveryResult>(w, "sluice_deliveries_total", t.deliveries);

    w.family("sluice_tls_handshakes_total", "counter", "TLS handshakes, by result.");
    by_result<TlsResult>(w, "sluice_tls_handshakes_total", t.tls_handshakes);
    w.family("sluice_tls_out_handshakes_total", "counter",
             "TLS handshakes with next hops (outbound STARTTLS), by result.");
    by_result<TlsResult>(w, "sluice_tls_out_handshakes_total", t.tls_out_handshakes);

    w.family("sluice_auth_total", "counter", "SMTP AUTH attempts, by result.");
    by_result<AuthResult>(w, "sluice_auth_total", t.auth);

    w.family("sluice_session_duration_seconds", "histogram", "Duration of SMTP sessions.");
    for (std::size_t i = 0; i < kDurationBuckets.size(); ++i) {
        w.sample("sluice_session_duration_seconds_bucket",
                 "le=\"" + number(kDurationBuckets[i]) + "\"", t.duration_buckets[i]);
    }
    w.sample("sluice_session_duration_seconds_bucket", "le=\"+Inf\"", t.duration_count);
    w.sample("sluice_session_duration_seconds_sum", "", seconds(t.duration_sum));
    w.sample("sluice_session_duration_seconds_count", "", t.duration_count);

    w.family("sluice_dns_queries_total", "counter", "DNS queries sent by the shards' resolvers.");
    w.sample("sluice_dns_queries_total", "", t.dns_queries);
    w.family("sluice_dns_answers_total", "counter",
             "DNS answers by rcode (timeout and malformed: no usable answer).");
    for (std::size_t i = 0; i < t.dns_answers.size(); ++i) {
        w.sample("sluice_dns_answers_total",
                 "rcode=\"" + std::string(result_name(static_cast<DnsAnswer>(i))) + "\"",
                 t.dns_answers[i]);
    }
    w.family("sluice_dns_cache_lookups_total", "counter", "Resolver cache lookups, by result.");
    w.sample("sluice_dns_cache_lookups_total", "result=\"hit\"", t.dns_cache_hits);
    w.sample("sluice_dns_cache_lookups_total", "result=\"miss\"", t.dns_cache_misses);
    w.family("sluice_dns_cache_entries", "gauge", "Answers held by the resolvers' caches.");
    w.sample("sluice_dns_cache_entries", "", std::to_string(t.dns_cache_entries));
    w.family("sluice_dns_cache_bytes", "gauge", "Memory held by the resolvers' caches (estimate).");
    w.sample("sluice_dns_cache_bytes", "", std::to_string(t.dns_cache_bytes));
    w.family("sluice_dns_query_seconds", "histogram", "Latency of DNS queries sent.");
    for (std::size_t i = 0; i < kDnsBuckets.size(); ++i) {
        w.sample("sluice_dns_query_seconds_bucket", "le=\"" + number(kDnsBuckets[i]) + "\"",
                 t.dns_latency_buckets[i]);
    }
    w.sample("sluice_dns_query_seconds_bucket", "le=\"+Inf\"", t.dns_latency_count);
    w.sample("sluice_dns_query_seconds_sum", "", seconds(t.dns_latency_sum));
    w.sample("sluice_dns_query_seconds_count", "", t.dns_latency_count);
    return w.take();
}

nlohmann::json to_json(const Totals& t) {
    using nlohmann::json;
    json j;
    j["version"] = t.server.version;
    j["start_time"] = t.server.start_time;
    j["config_generation"] = t.server.generation;
    j["config_reloads"] = {{"ok", t.server.reloads_ok}, {"failed", t.server.reloads_failed}};
    json conns = json::object();
    for (const auto& [name, counts] : t.connections) {
        conns[name] = by_result_json<ConnResult>(counts);
    }
    j["connections"] = conns;
    j["sessions_active"] = t.sessions_active;
    json codes = json::object();
    for (std::size_t i = 0; i < kCodes; ++i) {
        codes[std::string(policy::code_name(static_cast<policy::Code>(i)))] = t.decisions[i];
    }
    j["relay_decisions"] = codes;
    j["messages"] = by_result_json<MsgResult>(t.messages);
    j["bytes_received"] = t.bytes_received;
    j["queue_messages"] = t.server.queue_messages;
    j["spool"] = {{"committed", t.server.spool_committed},
                  {"batches", t.server.spool_batches},
                  {"fsyncs", t.server.spool_fsyncs},
                  {"commit_seconds", static_cast<double>(t.server.spool_commit_ns) / 1e9},
                  {"state", t.server.spool_state},
                  {"free_bytes", t.server.spool_free_bytes},
                  {"reserve_bytes", t.server.spool_reserve_bytes},
                  {"write_errors", t.server.spool_write_errors}};
    j["transactions_open"] = t.server.transactions_open;
    j["clients_evicted"] = {{"stats", t.server.stats_evicted},
                            {"control", t.server.control_evicted}};
    j["outbound"] = {{"queued_bytes", t.outbound_queued_bytes}, {"overflow", t.outbound_overflow}};
    j["deliveries"] = by_result_json<DeliveryResult>(t.deliveries);
    j["tls_handshakes"] = by_result_json<TlsResult>(t.tls_handshakes);
    j["tls_out_handshakes"] = by_result_json<TlsResult>(t.tls_out_handshakes);
    j["auth"] = by_result_json<AuthResult>(t.auth);
    json buckets = json::object();
    for (std::size_t i = 0; i < kDurationBuckets.size(); ++i) {
        buckets[number(kDurationBuckets[i])] = t.duration_buckets[i];
    }
    buckets["+Inf"] = t.duration_count;
    j["session_duration_seconds"] = {
        {"buckets", buckets}, {"sum", t.duration_sum}, {"count", t.duration_count}};
    j["dns"] = {{"queries", t.dns_queries},
                {"answers", [&t] {
                     auto a = json::object();
                     for (std::size_t i = 0; i < t.dns_answers.size(); ++i) {
                         a[std::string(result_name(static_cast<DnsAnswer>(i)))] = t.dns_answers[i];
                     }
                     return a;
                 }()},
                {"cache_hits", t.dns_cache_hits},
                {"cache_misses", t.dns_cache_misses},
                {"cache_entries", t.dns_cache_entries},
                {"cache_bytes", t.dns_cache_bytes}};
    j["shard_generations"] = t.shard_generations;
    return j;
}

// ---------------------------------------------------------------------------------------
// StatsServer

namespace {

// The uid owning the other end of `fd` when that end is a socket on this host, from the
// kernel's socket table (sock_diag(7), an exact lookup of one TCP socket: no dump, no
// privilege). -1 when the peer is not local or the lookup is not available.
std::int64_t local_peer_uid(int fd) {
    sockaddr_storage self{};
    sockaddr_storage peer{};
    socklen_t self_len = sizeof self;
    socklen_t peer_len = sizeof peer;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&self), &self_len) != 0 ||
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        self.ss_family != peer.ss_family) {
        return -1;
    }
    struct {
        nlmsghdr nlh;
        inet_diag_req_v2 req;
    } msg{};
    msg.nlh.nlmsg_len = sizeof msg;
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST;
    msg.req.sdiag_family = static_cast<std::uint8_t>(peer.ss_family);
    msg.req.sdiag_protocol = IPPROTO_TCP;
    msg.req.idiag_states = ~0U;
    auto& id = msg.req.id;
    // The peer's socket: its source is our peer, its destination is us.
    if (peer.ss_family == AF_INET) {
        const auto& p = reinterpret_cast<const sockaddr_in&>(peer);
        const auto& l = reinterpret_cast<const sockaddr_in&>(self);
        id.idiag_sport = p.sin_port;
        id.idiag_dport = l.sin_port;
        std::memcpy(id.idiag_src, &p.sin_addr, sizeof p.sin_addr);
        std::memcpy(id.idiag_dst, &l.sin_addr, sizeof l.sin_addr);
    } else if (peer.ss_family == AF_INET6) {
        const auto& p = reinterpret_cast<const sockaddr_in6&>(peer);
        const auto& l = reinterpret_cast<const sockaddr_in6&>(self);
        id.idiag_sport = p.sin6_port;
        id.idiag_dport = l.sin6_port;
        std::memcpy(id.idiag_src, &p.sin6_addr, sizeof p.sin6_addr);
        std::memcpy(id.idiag_dst, &l.sin6_addr, sizeof l.sin6_addr);
    } else {
        return -1;
    }
    id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
    id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    Fd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
    if (!nl.valid()) {
        return -1;
    }
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(nl.get(), &msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&kernel),
                 sizeof kernel) != static_cast<ssize_t>(sizeof msg)) {
        return -1;
    }
    // The kernel answers within sendto(): the reply is queued by now.
    alignas(nlmsghdr) char buf[1024];
    ssize_t n = ::recv(nl.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(inet_diag_msg)))) {
        return -1;
    }
    auto* h = reinterpret_cast<nlmsghdr*>(buf);
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) {
        return -1;  // NLMSG_ERROR: no such socket here, the peer is remote
    }
    return static_cast<const inet_diag_msg*>(NLMSG_DATA(h))->idiag_uid;
}

}  // namespace

struct StatsServer::Listener {
    uv_tcp_t tcp{};
};

struct StatsServer::Client {
    StatsServer* server = nullptr;
    uv_tcp_t tcp{};
    uv_timer_t timer{};
    uv_write_t write{};
    uv_shutdown_t shutdown{};
    http::RequestParser parser;
    std::string out;
    std::array<char, 4096> buf{};
    std::size_t discarded = 0;
    IpAddr peer;
    std::int64_t uid = -1;             // the local user whose socket the peer is; -1: not local
    std::list<Client*>::iterator pos;  // in StatsServer::clients_ once `listed`
    bool listed = false;
    int handles = 2;  // tcp + timer; freed when both close callbacks ran
    bool responded = false;
    bool closing = false;
};

StatsServer::StatsServer(uv_loop_t* loop, std::function<std::string()> metrics,
                         std::uint64_t request_timeout_ms)
    : loop_(loop), metrics_(std::move(metrics)), request_timeout_ms_(request_timeout_ms) {}

// Handles are freed by their close callbacks: the owner calls close() and runs the loop.
StatsServer::~StatsServer() = default;

std::string StatsServer::listen(const SockAddr& address) {
    if (closed_) {
        return "stats server is closed";
    }
    auto* l = new Listener;
    uv_tcp_init(loop_, &l->tcp);
    l->tcp.data = this;
    unsigned flags = address.storage.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    int rc = uv_tcp_bind(&l->tcp, reinterpret_cast<const sockaddr*>(&address.storage), flags);
    if (rc == 0) {
        rc = uv_listen(reinterpret_cast<uv_stream_t*>(&l->tcp), limits::backlog, on_connection);
    }
    if (rc != 0) {
        uv_close(reinterpret_cast<uv_handle_t*>(&l->tcp),
                 [](uv_handle_t* h) { delete reinterpret_cast<Listener*>(h); });
        return std::string("cannot listen on ") + format_sockaddr(address) + ": " + uv_strerror(rc);
    }
    stop_listening();
    listener_ = l;
    return {};
}

void StatsServer::stop_listening() {
    if (listener_ == nullptr) {
        return;
    }
    // `tcp` is the first member: the handle pointer is the Listener pointer.
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_->tcp),
             [](uv_handle_t* h) { delete reinterpret_cast<Listener*>(h); });
    listener_ = nullptr;
}

void StatsServer::close() {
    closed_ = true;
    stop_listening();
    evict_log_.close();
    std::vector<Client*> clients(clients_.begin(), clients_.end());
    for (Client* c : clients) {
        close_client(*c);
    }
}

void StatsServer::on_connection(uv_stream_t* server, int status) {
    auto* self = static_cast<StatsServer*>(server->data);
    if (status < 0) {
        return;
    }
    auto* c = new Client;
    c->server = self;
    uv_tcp_init(self->loop_, &c->tcp);
    uv_timer_init(self->loop_, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
        self->close_client(*c);
        return;
    }
    sockaddr_storage ss{};
    int len = sizeof ss;
    uv_tcp_getpeername(&c->tcp, reinterpret_cast<sockaddr*>(&ss), &len);
    c->peer = ip_from_sockaddr(reinterpret_cast<sockaddr*>(&ss));
    uv_os_fd_t fd = -1;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&c->tcp), &fd) == 0) {
        c->uid = local_peer_uid(fd);
    }
    self->make_room(c->peer);
    c->pos = self->clients_.insert(self->clients_.end(), c);
    c->listed = true;
    ++self->per_address_[c->peer];
    uv_timer_start(&c->timer, on_timer, self->request_timeout_ms_, 0);
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&c->tcp),
        [](uv_handle_t* h, std::size_t, uv_buf_t* b) {
            auto* cl = static_cast<Client*>(h->data);
            *b = uv_buf_init(cl->buf.data(), static_cast<unsigned>(cl->buf.size()));
        },
        on_read);
    self->read_now(*c);
}

void StatsServer::read_now(Client& c) {
    // libuv reads a new connection only in a later loop iteration, after every connection
    // queued behind it was accepted (and could have evicted it). A probe sends its request
    // right after connecting: read what is there now, so it is answered first.
    uv_os_fd_t fd = -1;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&c.tcp), &fd) != 0) {
        return;
    }
    ssize_t n = ::recv(fd, c.buf.data(), c.buf.size(), MSG_DONTWAIT);
    if (n > 0) {
        uv_buf_t b = uv_buf_init(c.buf.data(), static_cast<unsigned>(n));
        on_read(reinterpret_cast<uv_stream_t*>(&c.tcp), n, &b);
    }
    // Nothing yet, EOF or an error: libuv's read reports it as usual.
}

void StatsServer::make_room(const IpAddr& peer) {
    // The victim belongs to the owner (local user, else address) holding the most eligible
    // clients: a flood of one owner, reconnecting as fast as it is evicted, cycles through
    // its own slots and never reaches a probe of another owner. Of that owner's clients, one
    // already answered and lingering goes first (it has had its reply), else the one that
    // has waited longest (the list is in accept order).
    auto pick = [this](auto&& eligible) -> Client* {
        using Owner = std::pair<std::int64_t, IpAddr>;
        auto owner = [](const Client& x) {
            return x.uid >= 0 ? Owner{x.uid, IpAddr{}} : Owner{-1, x.peer};
        };
        std::map<Owner, std::size_t> held;
        const Owner* top = nullptr;
        std::size_t most = 0;
        for (Client* x : clients_) {
            if (!eligible(*x)) {
                continue;
            }
            auto [it, _] = held.try_emplace(owner(*x), 0);
            if (++it->second > most) {
                most = it->second;
                top = &it->first;
            }
        }
        if (top == nullptr) {
            return nullptr;
        }
        Client* oldest = nullptr;
        for (Client* x : clients_) {
            if (!eligible(*x) || owner(*x) != *top) {
                continue;
            }
            if (x->responded) {
                return x;
            }
            if (oldest == nullptr) {
                oldest = x;
            }
        }
        return oldest;
    };
    auto it = per_address_.find(peer);
    if (it != per_address_.end() && it->second >= limits::max_clients_per_address) {
        if (Client* v = pick([&](const Client& x) { return x.peer == peer; })) {
            evict(*v, "address_limit");
        }
    }
    if (clients_.size() >= limits::max_clients) {
        if (Client* v = pick([](const Client&) { return true; })) {
            evict(*v, "client_limit");
        }
    }
}

void StatsServer::evict(Client& c, std::string_view reason) {
    ++evicted_;
    // Under a flood this happens thousands of times a second: one line per reason and 10 s
    // at most, with the number of evictions it reports (daemon/flood_log.hpp).
    evict_log_.note(reason, format_ip(c.peer));
    close_client(c);
}

void StatsServer::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Client*>(s->data);
    StatsServer* self = c->server;
    if (n == 0) {
        return;
    }
    if (n < 0) {
        self->close_client(*c);  // EOF or error: nothing more to say
        return;
    }
    if (c->responded) {
        // Lingering: the reply is out; drain what the client still sends, up to a bound.
        c->discarded += static_cast<std::size_t>(n);
        if (c->discarded > limits::linger_bytes) {
            self->close_client(*c);
        }
        return;
    }
    auto st = c->parser.feed(std::string_view(buf->base, static_cast<std::size_t>(n)));
    if (st == http::Status::request) {
        self->respond(*c);
    } else if (st == http::Status::error) {
        self->respond_error(*c, c->parser.error_code());
    }
}

void StatsServer::on_timer(uv_timer_t* t) {
    auto* c = static_cast<Client*>(t->data);
    if (!c->responded) {
        c->server->respond_error(*c, 408);  // RFC 9110 §15.5.9
        return;
    }
    c->server->close_client(*c);
}

namespace {

std::string response(int code, std::string_view content_type, const std::string& body, bool head,
                     std::string_view extra = {}) {
    std::string out =
        "HTTP/1.1 " + std::to_string(code) + " " + std::string(http::reason_phrase(code)) + "\r\n";
    out += "Content-Type: ";
    out += content_type;
    out += "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    out += "Cache-Control: no-store\r\n";
    out += extra;
    out += "Connection: close\r\n\r\n";
    if (!head) {
        out += body;
    }
    return out;
}

constexpr std::string_view kText = "text/plain; charset=utf-8";

}  // namespace

void StatsServer::respond(Client& c) {
    ++requests_;
    const auto& req = c.parser.request();
    bool head = req.method == http::Method::head;
    if (req.path == "/metrics") {
        send(c, response(200, "text/plain; version=0.0.4; charset=utf-8", metrics_(), head));
    } else if (req.path == "/healthz") {
        send(c, response(200, kText, "ok\n", head));
    } else if (req.path == "/readyz") {
        send(c, draining_ ? response(503, kText, "draining\n", head)
                          : response(200, kText, "ready\n", head));
    } else {
        send(c, response(404, kText, "not found\n", head));
    }
}

void StatsServer::respond_error(Client& c, int code) {
    ++requests_;
    std::string body = std::string(http::reason_phrase(code)) + "\n";
    send(c, response(code, kText, body, false, code == 405 ? "Allow: GET, HEAD\r\n" : ""));
}

void StatsServer::send(Client& c, std::string text) {
    c.responded = true;
    c.out = std::move(text);
    c.write.data = &c;
    uv_buf_t b = uv_buf_init(c.out.data(), static_cast<unsigned>(c.out.size()));
    int rc = uv_write(
        &c.write, reinterpret_cast<uv_stream_t*>(&c.tcp), &b, 1, [](uv_write_t* w, int status) {
            auto* cl = static_cast<Client*>(w->data);
            if (cl->closing) {
                return;
            }
            if (status < 0) {
                cl->server->close_client(*cl);
                return;
            }
            // Half-close, then wait briefly for the client's EOF: closing with
            // unread input would reset the connection and could destroy the
            // reply before the client read it.
            cl->shutdown.data = cl;
            int r = uv_shutdown(&cl->shutdown, reinterpret_cast<uv_stream_t*>(&cl->tcp),
                                [](uv_shutdown_t*, int) {});
            if (r != 0) {
                cl->server->close_client(*cl);
                return;
            }
            uv_timer_start(&cl->timer, on_timer, limits::linger_ms, 0);
        });
    if (rc != 0) {
        close_client(c);
    }
}

void StatsServer::close_client(Client& c) {
    if (c.closing) {
        return;
    }
    c.closing = true;
    if (c.listed) {
        clients_.erase(c.pos);
        auto it = per_address_.find(c.peer);
        if (it != per_address_.end() && --it->second == 0) {
            per_address_.erase(it);
        }
        c.listed = false;
    }
    auto done = [](uv_handle_t* h) {
        auto* cl = static_cast<Client*>(h->data);
        if (--cl->handles == 0) {
            delete cl;
        }
    };
    uv_close(reinterpret_cast<uv_handle_t*>(&c.tcp), done);
    uv_close(reinterpret_cast<uv_handle_t*>(&c.timer), done);
}

}  // namespace sluice::stats
