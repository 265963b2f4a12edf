#pragma once
// The outbound SMTP client: one state machine (RFC 5321, RFC 2920 PIPELINING, RFC 1870
// SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 2034 ENHANCEDSTATUSCODES, a hook for
// RFC 3207 STARTTLS) that forwards messages to the internal next hop. It never touches a
// socket or a timer: the owner feeds it the server's bytes, tells it when its output was
// written, when the connection broke and when the timeout it asked for expired, and
// writes out what it produces. Bytes in, bytes out, like daemon/session.hpp.
//
// Trust: every byte from the next hop is untrusted (bounded buffering, malformed replies
// end the connection, never the process). The message data and the envelope come from
// our own spool and are trusted to be what the policy decided; addresses are still
// checked for control characters so that nothing can inject a command.
//
// Promises:
// - A recipient is `delivered` only after a 2xx reply to the final "." of a transaction
//   whose RCPT for it got a 2xx. A broken connection, a timeout, a 421 or a malformed
//   reply before that final reply leaves every recipient not yet final `deferred`
//   (at-least-once: a duplicate is possible only when the link broke between the next
//   hop's 250 and our reading it, RFC 1047).
// - Every recipient of every message accepted by send_message() gets exactly one result,
//   in the order of OutboundMessage::recipients, and `kind` always agrees with the class
//   of `code` and `enhanced` (2 delivered, 4 deferred, 5 failed).
// - Replies to MAIL, RCPT, DATA and "." decide per recipient: 4xx deferred, 5xx failed
//   (a MAIL reply decides for all recipients; the final reply decides for all recipients
//   whose RCPT was accepted). Replies about the session rather than the message (the
//   greeting, EHLO and HELO, STARTTLS, RSET) never bounce mail: a 5xx there is reported
//   as deferred with the class digit turned to 4, as Postfix does for a 5xx greeting
//   (smtp_skip_5xx_greeting): it says the next hop is misconfigured, not that the message
//   is bad. Retry expiry turns it into a bounce in the end.
// - The data is never copied whole: it is dot-stuffed (RFC 5321 §4.5.2) into the output
//   in chunks of Options::chunk bytes as the owner reports the previous chunk written.
//   Bare CR or LF in the data are sent as CRLF so that no next hop can see a line end we
//   did not mean (SMTP smuggling); a data end without CRLF gets one before ".".
// - 8-bit data to a next hop without 8BITMIME: sent as is by default (what Postfix and
//   nearly every MTA do; the internal next hop is known to be 8-bit clean), or failed
//   permanently with 554 5.6.3 when Options::strict_8bitmime is set (RFC 6152 §3 allows
//   only conversion or a bounce; we do not convert).
// - Non-ASCII addresses to a next hop without SMTPUTF8: failed permanently with 553 5.6.7
//   (RFC 6531 §3.7.4.1) without sending anything. A message larger than the next hop's
//   SIZE: failed permanently with 552 5.3.4 without sending anything (RFC 1870 §6).
//
// States (the owner only needs state() for STARTTLS and to know when it is finished):
//   connecting --connected()--> greeting --220--> ehlo --250--> [starttls --220-->
//   tls_handshake --tls_established()--> ehlo] --> ready
//   ehlo --5xx--> helo --250--> ready
//   ready --send_message()--> mail --> rcpt --> data --354--> sending --all written-->
//   data_end --reply--> ready          (with PIPELINING, MAIL+RCPTs+DATA go as one group)
//   data_end --send_message()--> data_end  (with PIPELINING: the next transaction's group
//                                           follows the "."; see can_pipeline())
//   mail/rcpt/data --no recipient accepted or DATA refused--> resetting --RSET 250--> ready
//   ready --quit()/idle timeout--> quitting --221--> closed
//   any --421--> closed;  any --connection_lost()/timed_out()/malformed reply--> failed

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/reply.hpp"
#include "common/units.hpp"

namespace sluice::smtp {

namespace client_limits {
// RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers send longer texts,
// so we accept up to 4 KiB before calling the reply malformed.
inline constexpr std::size_t reply_line = 4096;
// Lines in one multi-line reply (an EHLO reply has a dozen).
inline constexpr std::size_t reply_lines = 256;
// Default output chunk of message data.
inline constexpr std::size_t chunk = 64 * 1024;
}  // namespace client_limits

// One complete server reply (RFC 5321 §4.2).
struct ServerReply {
    int code = 0;
    std::string enhanced;            // RFC 3463 code from the first line, or empty (RFC 2034)
    std::vector<std::string> lines;  // each line's text, without code and enhanced code

    // The lines joined by one space (for logs and DSN diagnostic codes).
    std::string text() const;
};

// Incremental reply parser: bytes in (any fragmentation), complete replies out. Lines end
// with CRLF (a bare LF is tolerated); continuation lines ("250-") must repeat the code.
class ReplyReader {
  public:
    enum class Status : std::uint8_t { reply, partial, error };

    void append(std::string_view bytes) { buf_.append(bytes.data(), bytes.size()); }
    // Extracts the next complete reply into `out`. `partial`: need more bytes. `error`:
    // malformed (bad code, mixed codes, line or reply too long); the reader is then stuck.
    Status next(ServerReply& out);
    // Drops everything buffered (after STARTTLS's 220, RFC 3207 §4.2 / CVE-2011-0411).
    void clear();
    std::size_t buffered() const { return buf_.size() - pos_; }

  private:
    std::string buf_;
    std::size_t pos_ = 0;
    ServerReply cur_;
    bool in_reply_ = false;
    bool error_ = false;
};

// Dot-stuffing (RFC 5321 §4.5.2) over a stream given in pieces; line ends normalised to
// CRLF (see the header comment).
class DotStuffer {
  public:
    // Appends the stuffed form of `piece` to `out`.
    void feed(std::string_view piece, std::string& out);
    // Ends the data: CRLF if the data did not end with a line end, then ".\r\n".
    void finish(std::string& out);

  private:
    bool line_start_ = true;
    bool pending_cr_ = false;
};

// A message to forward. The client keeps `data` as a view: the bytes must stay valid and
// unchanged until this message's results have been taken.
struct OutboundMessage {
    std::string sender;                   // canonical reverse path, "" for <>
    std::vector<std::string> recipients;  // canonical forward paths, without < >
    std::string_view data;                // CRLF, NOT dot-stuffed (the client stuffs)
    std::uint64_t size = 0;               // SIZE= value; 0: data.size()
    bool smtputf8 = false;  // the message arrived with SMTPUTF8: pass it on when offered
};

struct RecipientResult {
    enum class Kind : std::uint8_t { delivered, deferred, failed };
    int code = 0;
    std::string enhanced;  // RFC 3463; "X.0.0" when the next hop gave none
    std::string text;      // the next hop's text (lines joined) or our reply-table text
    Kind kind = Kind::deferred;
    // The next hop's reply exactly as it came ("550 5.1.1 text", lines joined); empty when
    // we decided locally. `code`/`enhanced` differ from it only for a 5xx at session level.
    std::string reply;
    // The command whose reply decided ("MAIL", "RCPT", "DATA", "end of data", "greeting",
    // "EHLO", "HELO", "STARTTLS", "RSET", "QUIT"); empty when we decided locally (size,
    // SMTPUTF8, 8BITMIME, lost connection, timeout, malformed reply).
    std::string_view in_reply_to;

    bool remote() const { return !reply.empty(); }
    // "smtp; 550 5.1.1 text" for a next-hop reply (RFC 3464 §2.3.6), "" otherwise.
    std::string diagnostic() const;
};

std::string_view to_string(RecipientResult::Kind k);

// The client's private bookkeeping (outside the class so that std::optional of it
// compiles with clang, which cannot use a nested struct's member initialisers before the
// enclosing class is complete).
namespace client_detail {
enum class Cmd : std::uint8_t { greeting, ehlo, helo, starttls, rset, mail, rcpt, data, dot, quit };
struct Expect {
    Cmd cmd;
    std::uint32_t index = 0;  // recipient index for rcpt
    std::uint32_t tx = 0;     // serial of the transaction (mail, rcpt, data, dot)
};
struct Transaction {
    std::uint32_t serial = 0;
    OutboundMessage msg;
    std::vector<RecipientResult> results;
    std::vector<std::uint8_t> status;  // 0 open, 1 RCPT accepted, 2 final
    std::size_t accepted = 0;
    bool mail_refused = false;
    bool sending = false;   // 354 received, data not all stuffed yet
    bool sent_all = false;  // the final "." is in the output
    bool finished = false;  // results complete (handed over once older ones are)
    std::size_t pos = 0;    // data bytes stuffed so far
    DotStuffer stuffer;
};
}  // namespace client_detail

class Client {
  public:
    enum class State : std::uint8_t {
        connecting,     // before connected()
        greeting,       // waiting for 220
        ehlo,           // waiting for the EHLO reply
        helo,           // waiting for the HELO reply (EHLO got 5xx)
        starttls,       // waiting for the STARTTLS reply
        tls_handshake,  // the owner runs the TLS handshake, then calls tls_established()
        ready,          // idle, can take a transaction
        resetting,      // waiting for the RSET reply
        mail,           // waiting for the MAIL reply (first of a pipelined group)
        rcpt,           // waiting for RCPT replies
        data,           // waiting for the DATA reply (354)
        sending,        // writing the message data
        data_end,       // waiting for the reply to the final "."
        quitting,       // waiting for 221
        closed,         // orderly end (221 or 421): close the socket
        failed,         // broken connection, timeout or protocol error: close the socket
    };
    enum class StartTls : std::uint8_t { off, optional, required };

    // RFC 5321 §4.5.3.2. The RFC gives no value for EHLO/HELO, STARTTLS, RSET and QUIT:
    // they use `command` (5 minutes, as MAIL). `connect` and `idle` are ours: how long
    // the owner waits for the TCP connection, and how long an idle connection is kept for
    // reuse before QUIT (Postfix keeps cached connections 2 s; servers drop idle clients
    // after about 5 minutes).
    struct Timeouts {
        Millis connect = std::chrono::seconds(30);
        Millis greeting = std::chrono::minutes(5);  // §4.5.3.2.1 initial 220
        Millis command = std::chrono::minutes(5);
        Millis mail = std::chrono::minutes(5);        // §4.5.3.2.2
        Millis rcpt = std::chrono::minutes(5);        // §4.5.3.2.3
        Millis data_init = std::chrono::minutes(2);   // §4.5.3.2.4 DATA -> 354
        Millis data_block = std::chrono::minutes(3);  // §4.5.3.2.5 each write of data
        Millis data_term = std::chrono::minutes(10);  // §4.5.3.2.6 "." -> 250
        Millis idle = std::chrono::seconds(10);
    };

    struct Options {
        std::string helo;  // our FQDN for EHLO/HELO (RFC 5321 §4.1.1.1); "localhost" if empty
        StartTls starttls = StartTls::off;
        bool strict_8bitmime = false;  // see the header comment
        Timeouts timeouts;
        std::size_t chunk = client_limits::chunk;  // data bytes stuffed per refill
    };

    explicit Client(Options o);
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // The TCP connection is up: wait for the greeting.
    void connected();
    // Bytes from the next hop, in order, any fragmentation.
    void receive(std::string_view bytes);
    // Queues a transaction. Accepted while the connection is being set up or idle
    // (connecting .. ready, resetting) and no other message is active or queued; it starts
    // as soon as the session is ready. Returns false (and does nothing) otherwise, or when
    // the message has no recipients. Its results may be available at once (SIZE refusal).
    bool send_message(const OutboundMessage& m);
    // QUIT now if idle, else after the current transaction (a queued one is still sent).
    void quit();
    // The socket failed or the peer closed.
    void connection_lost();
    // current_timeout() expired without progress. When idle this sends QUIT.
    void timed_out();
    // The owner finished the TLS handshake after STARTTLS: EHLO again (RFC 3207 §4.2).
    // A failed handshake is connection_lost().
    void tls_established();

    // Bytes to write. The owner writes them and removes them from the string (or takes
    // them), and once they are written calls output_drained(): while sending data, that
    // is when the next chunk is produced, so at most about two chunks are buffered.
    std::string& output() { return out_; }
    std::string take_output();
    void output_drained();

    State state() const { return state_; }
    // closed or failed: the owner closes the socket.
    bool finished() const { return state_ == State::closed || state_ == State::failed; }
    // A transaction's results are waiting (transactions finish in the order sent).
    bool transaction_done() const { return !done_.empty(); }
    // Results of the oldest finished transaction, one per recipient in order; empty if
    // none is waiting.
    std::vector<RecipientResult> take_results();
    // The connection is alive and idle (or about to be, after RSET): another message can
    // be given to send_message().
    bool reusable() const;
    // With PIPELINING, the next message can be given to send_message() while the current
    // one only waits for the reply to its final ".": its MAIL, RCPTs and DATA follow the
    // "." in the same write (RFC 2920 §3.1: MAIL and RCPT may appear anywhere in a group,
    // DATA ends it; the server's transaction ends with the "." whatever its reply says).
    // One round trip per message instead of two; results still come in order.
    bool can_pipeline() const;
    // The next hop announced PIPELINING (RFC 2920).
    bool pipelining() const { return pipelining_; }
    // Replies to commands already sent are still to come.
    bool awaiting_reply() const { return !expects_.empty(); }
    // The RFC 5321 §4.5.3.2 timeout for what the client waits for now; the owner re-arms
    // its timer with it after every call into the client. Zero when finished.
    Millis current_timeout() const;
    // An EHLO keyword the next hop announced (case-insensitive), e.g. "PIPELINING".
    bool server_supports(std::string_view ext) const;
    // The next hop's SIZE limit (RFC 1870 §4), 0 if none announced.
    std::uint64_t server_size_limit() const { return size_limit_; }
    bool tls_active() const { return tls_active_; }
    // Why the connection ended, for the log ("" while it is alive).
    const std::string& close_reason() const { return close_reason_; }

  private:
    using Cmd = client_detail::Cmd;
    using Expect = client_detail::Expect;
    using Transaction = client_detail::Transaction;

    void on_reply(const ServerReply& r);
    void on_greeting(const ServerReply& r);
    void on_ehlo(const ServerReply& r);
    void on_helo(const ServerReply& r);
    void on_starttls(const ServerReply& r);
    void on_rset(const ServerReply& r);
    void on_mail(const ServerReply& r, Transaction& t);
    void on_rcpt(const ServerReply& r, Transaction& t, std::size_t index);
    void on_data(const ServerReply& r, Transaction& t);
    void on_dot(const ServerReply& r, Transaction& t);

    void idle();
    void start_transaction(OutboundMessage m);
    Transaction* find(std::uint32_t serial);  // an unfinished transaction, or null
    Transaction* sending();                   // the one whose data is being written
    void send_command(std::string_view line, Cmd cmd, std::uint32_t index = 0,
                      std::uint32_t tx = 0);
    bool send_rcpt(Transaction& t, std::size_t from);  // next open recipient from `from`
    void fill_output();
    void finish_transaction(Transaction& t, bool need_rset);
    static void settle(Transaction& t, std::size_t index, RecipientResult r);
    static void settle_open(Transaction& t, const RecipientResult& r);  // all not final
    void abort_all(const RecipientResult& r);  // active and queued transactions
    void session_refused(const ServerReply& r, std::string_view cmd);
    void send_quit();
    void drop(State s, std::string why);
    void sync_state();

    Options opt_;
    State state_ = State::connecting;
    std::string out_;
    ReplyReader reader_;
    std::deque<Expect> expects_;
    std::deque<Transaction> txs_;  // sent, oldest first (two with can_pipeline())
    std::uint32_t next_serial_ = 1;
    std::optional<OutboundMessage> queued_;
    std::deque<std::vector<RecipientResult>> done_;
    std::vector<std::string> extensions_;  // upper-cased EHLO keywords
    std::uint64_t size_limit_ = 0;
    bool pipelining_ = false;
    bool tls_active_ = false;
    bool quit_requested_ = false;
    bool quit_sent_ = false;
    std::string close_reason_;
};

std::string_view to_string(Client::State s);

}  // namespace sluice::smtp
