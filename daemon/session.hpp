#pragma once
// The inbound SMTP session: one state machine (RFC 5321, RFC 2920 PIPELINING, RFC 1870
// SIZE, RFC 6152 8BITMIME, RFC 2034 ENHANCEDSTATUSCODES, RFC 6531 SMTPUTF8) that never
// touches a socket. The connection layer feeds it bytes and ticks and writes out what it
// produces; storage is reached through `SessionHooks`.
//
// Trust: every byte from the peer is hostile. Promise: input buffering is bounded, every
// malformed command gets its reply code from common/reply.hpp, a message is answered 250
// only after storage reported it durable, and the envelope stored is exactly the one the
// policy decided on.
//
// States (each asynchronous step is a named waiting state):
//   greeting_delay --timer--> command          (input here: early talker, 554 + close)
//   any --over a [rates] limit, action tarpit--> tarpit --tarpit_delay--> the refusal, then
//       back (or closed, for connections and errors); input meanwhile waits unread
//   command --DATA--> data --"."--> committing --commit_done--> command
//   any --QUIT/fatal error/timeout/shutdown--> closed

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/config.hpp"
#include "common/reply.hpp"
#include "daemon/data_reader.hpp"
#include "daemon/metrics.hpp"
#include "daemon/rates/limits.hpp"
#include "daemon/sasl.hpp"
#include "daemon/smtp_parser.hpp"
#include "policy/address.hpp"
#include "policy/maps.hpp"
#include "policy/policy.hpp"
#include "storage/message.hpp"

namespace sluice {

namespace tls {
class TlsServerConfig;
}

// An immutable configuration generation: sessions keep the one they started with.
struct Snapshot {
    std::shared_ptr<const Config> config;
    policy::Rules rules;
    std::uint64_t generation = 0;
    // The certificate and key of this generation (null when no listener uses TLS).
    std::shared_ptr<const tls::TlsServerConfig> tls;
};

namespace smtp {

using Clock = std::chrono::steady_clock;

class SessionHooks {
  public:
    virtual ~SessionHooks() = default;
    // Hands a complete message to storage. The session stays in `committing` until the
    // owner calls Session::commit_done with the outcome.
    virtual void commit(std::unique_ptr<storage::Message> msg) = 0;
    // Whether this build can deliver through `t` (checked at RCPT, so mail is never
    // accepted for a transport that cannot take it).
    virtual bool transport_available(const Transport& t) const = 0;
    // Whether storage takes new mail now (checked at MAIL: 452 4.3.1 when it does not).
    virtual storage::CommitStatus admission() const { return storage::CommitStatus::ok; }
    // Checks credentials (throttling, the users map, the slow hash off the loop). The
    // session waits in `authenticating` until the owner calls Session::auth_done.
    virtual void authenticate(const sasl::Credentials& creds) { (void)creds; }
    // sender_login_match: may `user` send as `sender` (users map entry)?
    virtual bool sender_allowed(std::string_view user, std::string_view sender) const {
        (void)user;
        (void)sender;
        return false;
    }
};

enum class AuthOutcome : std::uint8_t { ok, failed, throttled, unavailable };

// A queue id unique on this host: start time, shard and a per-shard sequence.
std::string new_message_id(int shard);

struct SessionParams {
    std::shared_ptr<const Snapshot> snapshot;
    const ListenerConfig* listener = nullptr;  // points into snapshot->config
    std::size_t listener_index = 0;
    const policy::Maps* maps = nullptr;
    rates::RateStore* rates = nullptr;  // [rates] counters (process-wide); null: no limits
    SessionHooks* hooks = nullptr;
    ShardMetrics* metrics = nullptr;
    IpAddr client;  // behind a load balancer: the client its PROXY header names
    std::uint16_t client_port = 0;
    std::optional<IpAddr> proxy;  // the balancer that named `client` (listener proxy_protocol)
    int shard = 0;
    std::string id;              // session id for logs
    Millis greeting_delay{0};    // hold the greeting; input before it is an early talker
    bool tls_available = false;  // STARTTLS can be offered (listener mode and a certificate)
    bool tls_active = false;     // implicit TLS: the session starts encrypted
};

class Session {
  public:
    enum class State : std::uint8_t {
        greeting_delay,
        command,
        data,
        committing,
        starttls,
        auth_line,
        authenticating,
        tarpit,  // a rate-limit refusal held for rates.tarpit_delay
        closed
    };

    explicit Session(SessionParams p);
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    ~Session();

    // The connection opened: greeting (or the C130 refusal, or the greeting delay).
    void start(Clock::time_point now);
    // Bytes from the peer, in order. Replies accumulate in output().
    void receive(std::string_view bytes, Clock::time_point now);
    // Storage finished the commit requested through SessionHooks::commit.
    void commit_done(storage::CommitStatus status, Clock::time_point now);
    // Called about once a second: greeting delay, timeouts, minimum data rate.
    void tick(Clock::time_point now);
    // Graceful shutdown: idle sessions get 421 now; a transaction in DATA or committing
    // finishes first, then gets 421.
    void shutdown();
    // The peer closed or the socket failed.
    void peer_closed(std::string_view why);
    // After "220 Ready to start TLS" the owner runs the handshake (tls_requested() is
    // true until then) and reports it done: every piece of session state is reset
    // (RFC 3207 §4.2). A failed handshake is peer_closed().
    bool tls_requested() const { return state_ == State::starttls; }
    void tls_started(std::string_view version, std::string_view cipher);
    // The outcome of SessionHooks::authenticate.
    void auth_done(AuthOutcome outcome, Clock::time_point now);
    // In-line mode: the next hop took none of the recipients; `r` is inline_refused (all
    // refused for good) or inline_deferred, `detail` the next hop's reply or the reason.
    void commit_refused(Reply r, std::string_view detail, Clock::time_point now);

    std::string& output() { return out_; }
    bool closed() const { return state_ == State::closed; }
    // False while too much unprocessed input is buffered (the owner stops reading).
    bool wants_input() const;
    State state() const { return state_; }
    // A sender was accepted and the message is not submitted yet: a commit is likely on
    // its way (the spool's group commit waits for such company, storage::Spool::expect).
    bool in_transaction() const {
        return (state_ == State::command || state_ == State::data) && tx_.sender.has_value();
    }
    const std::string& id() const { return p_.id; }

  private:
    struct Transaction {
        std::optional<policy::Address> sender;
        std::vector<storage::Recipient> recipients;
        std::uint64_t declared_size = 0;
        bool body_8bit = false;
        bool smtputf8 = false;
        std::uint32_t rcpt_attempts = 0;
    };

    void process(std::string_view& input, Clock::time_point now);
    void finish_commit(MsgResult result, Reply r, std::string_view arg, Clock::time_point now);
    void handle_line(std::string_view line, bool more_input, Clock::time_point now);
    bool count_junk(Verb verb, Clock::time_point now);  // false: closed over the limit
    void on_ehlo(const smtp::Command& c, bool extended);
    void on_mail(const smtp::Command& c);
    void on_rcpt(const smtp::Command& c);
    void on_data(Clock::time_point now);
    void on_starttls(const smtp::Command& c);
    void on_auth(const smtp::Command& c);
    void on_auth_line(std::string_view line);
    void auth_step(const sasl::Step& step);
    bool auth_offered() const;
    void end_of_data(Clock::time_point now);
    std::string received_header() const;
    void reset_transaction();
    void reply(Reply r, std::string_view arg = {}, std::string_view text = {});
    void reply_decision(const policy::Decision& d);
    // Counts one `kind` event of this client against [rates]. Over a limit: the refusal
    // is logged and sent (held first with action "tarpit"), and the result is true.
    bool over_rate(rates::LimitKind kind, Clock::time_point now);
    void close(std::string_view why);
    policy::Facts facts() const;
    void log_decision(std::string_view event, const policy::Decision& d, std::string_view from,
                      std::string_view to);

    SessionParams p_;
    const Config& cfg_;
    State state_ = State::greeting_delay;
    std::string out_;
    std::string in_;  // unprocessed input (bounded: see wants_input)
    smtp::LineScanner scanner_;
    std::optional<smtp::DataReader> data_;
    std::string body_;
    Transaction tx_;
    std::string helo_;
    bool esmtp_ = false;
    bool tls_active_ = false;
    std::string tls_version_;
    std::string tls_cipher_;
    std::string auth_user_;
    std::string auth_pending_user_;
    sasl::SaslExchange sasl_;
    bool draining_ = false;
    std::uint32_t errors_ = 0;
    // Commands that do not advance a transaction (limits.junk_commands), and the run of
    // them since the last transaction that reached the end of DATA: its start and length
    // (see Session::tick).
    std::uint32_t junk_ = 0;
    std::uint32_t junk_run_ = 0;
    Clock::time_point junk_since_;
    bool rate_exempt_ = false;  // the client is in map rate_exempt (looked up at connect)
    // tarpit: the held refusal, when it goes out, and the state to return to.
    Reply tarpit_reply_ = Reply::rate_messages;
    std::string tarpit_arg_;
    Clock::time_point tarpit_until_;
    State tarpit_resume_ = State::command;
    Clock::time_point last_command_;
    bool pause_forgiven_ = false;  // one pause since the last progress restarted the run
    std::string close_reason_;
    std::string pending_id_;  // queue id of the message in DATA or being committed
    // body_: where the client's content starts (after our Received: field).
    std::size_t content_start_ = 0;
    // Counters for the summary line.
    std::uint32_t messages_ = 0;
    std::uint32_t recipients_ = 0;
    std::uint64_t bytes_in_ = 0;
    // Timing.
    Clock::time_point started_;
    Clock::time_point last_input_;
    std::optional<Clock::time_point> line_started_;  // a partial command line is pending
    Clock::time_point data_started_;
};

}  // namespace smtp
}  // namespace sluice
