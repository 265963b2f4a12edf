#pragma once
// Forwarding for one shard (docs/architecture.md, steps 7 to 10): takes messages that the
// spool made durable (just received, recovered at start, or due for a retry), groups their recipients by route,
// and delivers them over outbound SMTP connections on the shard's own loop (the pure
// client state machine of daemon/smtp_client.hpp) or into `maildir:` routes. Every
// per-recipient outcome goes back to the spool: delivered, deferred with the next attempt
// from `spool.retry`, or failed, in which case the sender gets an RFC 3464 DSN (never for
// the null sender, so bounces never loop).
//
// Memory stays bounded when a next hop is slow or down: a next hop's queue keeps at most
// `limits.outbound_queue_memory` of message data (and kMaxQueuedPerHop messages) in
// memory; what comes beyond waits on disk as an id and its recipients (an overflow list,
// in order) and is read back as the queue drains, so the backlog still goes out at full
// speed when the next hop catches up. Retries wait on disk and are read back when due.
//
// Trust: next hops are internal but still untrusted peers (their replies are parsed by
// the client with limits); routes come from the config snapshot.
//
// STARTTLS to the next hop (RFC 3207), per route (`smtp://HOST:PORT?starttls=MODE`):
// - off: never, even when offered.
// - optional (the default): when offered, encrypted but not verified (opportunistic,
//   RFC 7435). If the handshake fails, the recipients are deferred and the hop is sent
//   to in plaintext for kTlsFallback (what Postfix does at security level "may": a next
//   hop with broken TLS must not stop mail that `off` would deliver).
// - required: no STARTTLS offered, a refusal or a failed handshake defers the recipients
//   (never plaintext). With [tls] ca_file the certificate must chain to one of its CAs
//   and name the route's host (the config refuses an IP-literal host with ca_file, as
//   mbedTLS 2.28 cannot match addresses); without it, the link is encrypted but not
//   authenticated (the config warns).
// Delivery by MX (route "mx", issue 15): a hop is then a destination, the recipient domain
// (one per domain and STARTTLS mode). Before its first link the shard's resolver plans it
// (daemon/dns/destination.hpp): the addresses to try, or a verdict that bounces (NXDOMAIN
// 5.1.2, null MX 5.1.10, a loop back to us 5.4.6) or defers (4.4.3) what waits for it.
// The plan is kept for its DNS TTL. A link that cannot connect, or gets no 220 greeting,
// gives its message back to the destination's queue and the next link tries the next
// address (next MX host by preference), up to dns.mx_addresses per round; when every
// address of a round failed, what waits is deferred (4.4.1) and the destination is dead
// for the first step of spool.retry: messages that come meanwhile are deferred without a
// connection, and the first one after it probes with a single link. So a domain whose
// hosts are all down costs one round of connection attempts per retry step, whatever the
// number of messages waiting for it.
//
// Messages keep the route they were spooled with: links for the same host and port with
// different modes are different hops, so a `required` message never rides a link set up
// as `optional`. Each hop keeps its last TLS session to resume (RFC 5077). One log line
// per handshake: event=tls_out relay result verified version cipher | error.

#include <uv.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <set>
#include <string>
#include <vector>

#include "daemon/dns/destination.hpp"
#include "daemon/smtp_client.hpp"
#include "storage/message.hpp"
#include "storage/spool.hpp"

namespace sluice {

class Shard;

namespace tls {
class TlsClientConfig;
class TlsSession;
}  // namespace tls

class Outbound {
  public:
    using SysTime = std::chrono::system_clock::time_point;

    Outbound(Shard& shard, storage::Spool& spool);
    Outbound(const Outbound&) = delete;
    Outbound& operator=(const Outbound&) = delete;
    ~Outbound();

    // A message the spool just made durable (its data is still in memory).
    void start(std::shared_ptr<const storage::Message> msg, std::string session_id);

    // In-line mode (a route with `?inline=true`): forward a message that is NOT in the
    // spool while its client waits. `done` gets, per recipient, the next hop's result
    // (deferred with no reply when there was none: connection lost, shutting down...).
    using InlineDone = std::function<void(std::vector<smtp::RecipientResult> results)>;
    void deliver_inline(std::shared_ptr<const storage::Message> msg, std::string session_id,
                        InlineDone done);
    // A queued message to look at again at `when` (recovery, retries, `queue flush`).
    void schedule(const storage::QueueId& id, SysTime when);
    // Called by the shard's timer: starts what is due.
    void tick(SysTime now);
    // Shutdown: no new deliveries; connections are closed (what was in flight stays
    // queued on disk and is retried after the restart).
    void drain();
    // Handles, connections and thread-pool jobs still alive (the loop must wait for them).
    std::size_t busy() const { return links_ + loads_; }

    class Link;
    // A job that found its hop's queue full: the message data stays on disk.
    struct Overflow {
        storage::QueueId id;
        std::vector<std::size_t> rcpts;
        std::vector<unsigned> attempts;
        std::string session;
        std::uint64_t bytes = 0;  // its message data
    };

  private:
    struct InlineState {
        std::vector<smtp::RecipientResult> results;
        int jobs_left = 0;
        InlineDone done;
    };
    struct Job {
        std::shared_ptr<const storage::Message> msg;
        std::vector<std::size_t> rcpts;  // indices into msg->recipients
        std::vector<unsigned> attempts;  // earlier attempts per recipient
        std::string session;             // for log lines
        // In-line jobs report here instead of to the spool (shared by the message's jobs).
        std::shared_ptr<InlineState> inline_state;
    };
    void finish_inline(Job& job, const std::vector<smtp::RecipientResult>& results);
    struct Hop {
        std::string key;  // "127.0.0.1:2526" (the relay= of log lines)
        Transport transport;
        std::deque<Job> queue;
        std::uint64_t queued_bytes = 0;  // message data held by `queue`
        std::deque<Overflow> overflow;   // after `queue`, in order (each counts in active_)
        std::size_t reading_back = 0;    // overflow jobs being read from the spool
        std::uint64_t reading_bytes = 0; // ... and their data (room is kept for it)
        std::set<Link*> links;
        // The last TLS session and the client config it was made with: resumed only with
        // that same config (a new CA file must not inherit an old verification).
        std::shared_ptr<const tls::TlsSession> tls_session;
        std::shared_ptr<const tls::TlsClientConfig> tls_session_config;
        // starttls=optional after a failed handshake: plaintext until then.
        std::chrono::steady_clock::time_point plaintext_until{};
        // Delivery by MX (transport.kind == mx): the recipient domain and its plan.
        std::string domain;
        enum class Dest : std::uint8_t { unplanned, resolving, ready } dest = Dest::unplanned;
        std::vector<dns::Target> targets;
        std::size_t next_target = 0;  // the address new links connect to
        std::chrono::steady_clock::time_point plan_expires{};
        bool fresh_plan = false;  // just made: used once even if its TTL is 0
        std::chrono::steady_clock::time_point dead_until{};  // all addresses failed
        bool probe = false;  // after being dead: one link until a greeting comes
    };
    // Outbound TLS settings of this shard: `plain` (no CA) is built once, `verify`
    // (tls.ca_file) once per config generation, on first use.
    struct ClientTls {
        std::shared_ptr<const tls::TlsClientConfig> plain;
        std::string plain_error;
        std::shared_ptr<const Config> config;  // the generation `verify` was built for
        std::shared_ptr<const tls::TlsClientConfig> verify;
        std::string verify_error;
    };

    // The recipients `rcpts` of `msg` grouped by next hop, one job per hop.
    std::map<std::string, Job> split_by_hop(const std::shared_ptr<const storage::Message>& msg,
                                            const std::vector<std::size_t>& rcpts,
                                            const std::vector<unsigned>& attempts,
                                            const std::string& session);
    Hop& hop_for(const std::string& key, const Transport& t, const std::string& domain);
    // Delivery by MX: plans the destination, or gives what waits the DNS verdict.
    bool destination_ready(Hop& hop);
    void plan(Hop& hop);
    void fail_queue(Hop& hop, const smtp::RecipientResult& r, const std::string& relay);
    void target_failed(Hop& hop, std::size_t target);
    void route(const std::shared_ptr<const storage::Message>& msg,
               const std::vector<std::size_t>& rcpts, const std::vector<unsigned>& attempts,
               const std::string& session);
    void deliver_local(Job job);
    // Every job enters and leaves a hop's queue through these (they keep queued_bytes).
    void enqueue(Hop& hop, Job job, bool front);
    Job dequeue(Hop& hop);
    bool has_room(const Hop& hop, std::uint64_t bytes) const;
    void read_back(Hop& hop);
    void pump(Hop& hop);
    void finished(Job& job, const std::vector<smtp::RecipientResult>& results,
                  const std::string& relay);
    void bounce(const storage::Message& msg,
                const std::vector<std::pair<std::size_t, smtp::RecipientResult>>& failed);
    void load(const storage::QueueId& id);
    void link_closed(Link* link);
    const ClientTls& client_tls();

    Shard& shard_;
    storage::Spool& spool_;
    std::map<std::string, Hop> hops_;
    using Due = std::pair<SysTime, storage::QueueId>;
    std::priority_queue<Due, std::vector<Due>, std::greater<>> due_;
    std::map<storage::QueueId, int> active_;  // messages with deliveries in flight
    // Messages whose last delivery just ended, until when their outcome records are surely
    // applied in the spool (not read back before: they would look due again).
    std::map<storage::QueueId, std::chrono::steady_clock::time_point> settling_;
    std::deque<std::pair<std::chrono::steady_clock::time_point, storage::QueueId>> settle_order_;
    std::size_t links_ = 0;
    std::size_t loads_ = 0;
    // Hops that wanted a link when limits.outbound_connections_total was reached.
    std::set<Hop*> waiting_room_;
    bool draining_ = false;
    ClientTls client_tls_;

    friend class Link;
};

}  // namespace sluice
