#pragma once
// relay-test: probes any SMTP server from outside with the open-relay trick battery
// (README.md) and says, probe by probe, whether an outside recipient was
// accepted.
//
// Parts, each usable on its own:
//   - parse_reply: a pure parser for SMTP replies, multi-line included (RFC 5321 §4.2.1);
//   - build_catalogue: the probes (the manual open-relay test, then percent hack, bang
//     paths, quoted local parts, double @, source routes, IP literals of the server's own
//     address in every spelling, case and trailing-dot games, null sender, HELO spoofing);
//   - SmtpClient: a small blocking client on POSIX sockets + poll() with a deadline per
//     reply. Its command set is a closed enum without DATA, so this tool cannot send a
//     message: after an accepted relay RCPT it sends RSET, never DATA;
//   - run_battery: one probe per transaction (RSET between, reconnect when the server
//     closed), verdicts PASS (5xx), FAIL (2xx to an outside recipient), TEMP (4xx,
//     inconclusive) and ERROR (disconnect, timeout, nonsense). A probe cut short by a 421
//     (e.g. a per-session error limit) or by a connection the server closed between two
//     probes is run once more on a fresh connection; after kMaxConsecutiveTimeouts
//     timeouts in a row the rest is reported as not run;
//   - format_table / format_json: the two outputs.
//
// Trust: everything the server sends is untrusted: replies are bounded in size, any
// byte sequence yields an error value, never a crash. The operator's options are
// validated (no CR/LF can reach the wire). STARTTLS is not used: the probes test the
// relay policy, which must not depend on TLS; a server that requires TLS before MAIL
// answers 530 and the probes pass (report says so).

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.hpp"

namespace sluice::ctl::relay {

using Millis = std::chrono::milliseconds;

namespace limits {
// RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets; real servers exceed it a little,
// so accept four times that and no more.
inline constexpr std::size_t kMaxReplyLine = 2048;
// A multi-line reply longer than this is a misbehaving (or hostile) server.
inline constexpr std::size_t kMaxReplyLines = 128;
// After this many probes in a row ended in a timeout, the server is a tarpit: the rest
// of the battery is reported as not run instead of waiting timeout x probes.
inline constexpr int kMaxConsecutiveTimeouts = 3;
}  // namespace limits

namespace defaults {
inline constexpr std::uint16_t kPort = 25;
inline constexpr Millis kTimeout{30'000};
// RFC 2606 reserves .example: the address can never be delivered anywhere.
inline constexpr std::string_view kOutside = "relay-test@sluice-relay-test.example";
// A documentation address (RFC 5737 TEST-NET-1) and prefix (RFC 3849): an IP literal
// that is certainly not the server.
inline constexpr std::string_view kOutsideIpv4 = "192.0.2.1";
inline constexpr std::string_view kOutsideIpv6 = "2001:db8::1";
}  // namespace defaults

// ---- replies ----

struct ServerReply {
    int code = 0;                    // 3 digits, 100..599
    std::vector<std::string> lines;  // text of each line, after "NNN-" / "NNN "
    // "554 5.7.1 Relaying denied" (the first line, with its code).
    std::string first_line() const;
    // Every line joined by " | " (for the JSON output and the detail column).
    std::string full_text() const;
};

enum class ParseStatus { complete, partial, error };

struct ReplyParse {
    ParseStatus status = ParseStatus::partial;
    std::size_t consumed = 0;  // bytes of `buf` making up the complete reply
    std::string error;         // set when status == error
};

// Parses one reply from the start of `buf` (RFC 5321 §4.2.1: "NNN-text" lines, ending
// with "NNN text" or a bare "NNN"). Lines end in CRLF; a bare LF is accepted too (be
// liberal in what you accept). Every line must carry the same code. Pure.
ReplyParse parse_reply(std::string_view buf, ServerReply& out);

// ---- target and context ----

struct Target {
    std::string host;  // a name or an IP (without brackets)
    std::uint16_t port = defaults::kPort;
};

// "mx.example.com", "mx.example.com:2525", "192.0.2.7:25", "[2001:db8::1]:2525",
// "2001:db8::1" (bare IPv6: no port).
std::optional<Target> parse_target(std::string_view s, std::string& error);

// The first word of a greeting or EHLO reply when it looks like a host name, else "".
std::string hostname_from_reply(const ServerReply& reply);

// The local domain guessed from the server's host name: lower-cased, trailing dot
// removed, and the first label dropped when three or more remain ("mx.example.test" ->
// "example.test"; "example.test" stays). "" when `hostname` is not a domain.
std::string guess_local_domain(std::string_view hostname);

// True for "local@domain" with no space, angle bracket, quote or control character.
bool valid_plain_address(std::string_view address);

struct ProbeContext {
    std::string local_domain;  // the domain the server serves
    std::string server_name;   // its own host name (from the greeting), may be ""
    IpAddr server_ip;          // the address we are connected to
    std::string local_sender;  // a valid local sender
    std::string outside;       // "local@domain" outside every local domain
    std::string helo;          // our normal HELO name
};

// Spellings of an IP literal that all name `ip` (RFC 5321 §4.1.3 and the legacy inet_aton
// forms some resolvers still accept): {short name, text inside the brackets}.
struct IpSpelling {
    std::string name;
    std::string literal;
};
std::vector<IpSpelling> ip_literal_spellings(const IpAddr& ip);

struct Probe {
    std::string name;         // unique, stable, kebab-case
    std::string category;     // manual, percent, bang, quoted, double-at, source-route, ...
    std::string description;  // one line: what trick, why it matters
    std::string helo;         // the EHLO/HELO name for this probe's session
    std::string mail_from;    // reverse-path as sent, brackets included ("<>" for null)
    std::string rcpt_to;      // forward-path as sent, brackets included
};

// The whole battery for `ctx`, in running order. Every RCPT names an outside recipient,
// so a 2xx to any of them is a relay.
std::vector<Probe> build_catalogue(const ProbeContext& ctx);

// ---- verdicts ----

enum class Verdict { pass, fail, temp, error };
std::string_view verdict_name(Verdict v);  // "PASS", "FAIL", "TEMP", "ERROR"

// A RCPT reply to an outside recipient: 2xx FAIL, 4xx TEMP, 5xx PASS, anything else ERROR.
Verdict classify_rcpt(int code);

struct ProbeResult {
    Probe probe;
    Verdict verdict = Verdict::error;
    std::string stage;       // where it was decided: connect, helo, mail, rcpt, not-run
    std::string mail_reply;  // first line of the MAIL reply ("" if not sent)
    std::string rcpt_reply;  // first line of the RCPT reply ("" if not sent)
    std::string detail;      // why (the deciding reply, timeout, disconnect...)
};

// ---- the client ----

// The only commands the client can send. There is deliberately no DATA.
enum class Verb { ehlo, helo, mail_from, rcpt_to, rset, quit };

struct Exchange {
    enum class Status { reply, timeout, closed, failed };
    Status status = Status::failed;
    ServerReply reply;
    std::string error;  // for timeout/closed/failed: what happened
    bool ok() const { return status == Status::reply; }
};

class SmtpClient {
  public:
    explicit SmtpClient(Millis timeout) : timeout_(timeout) {}
    ~SmtpClient() { close(); }
    SmtpClient(const SmtpClient&) = delete;
    SmtpClient& operator=(const SmtpClient&) = delete;

    // Connects to `addr` (non-blocking connect bounded by the timeout) and reads the
    // greeting. The greeting's reply is returned whatever its code.
    Exchange connect(const sockaddr_storage& addr, socklen_t len);
    // Sends one command and reads its reply. Arguments containing CR, LF or NUL are
    // refused (status failed) before anything is sent. A timeout, a 421 reply or a
    // disconnect close the connection: its state is unknown.
    Exchange command(Verb verb, std::string_view arg = {});
    // Sends QUIT (best effort, short wait) and closes.
    void quit();
    void close();
    bool connected() const { return fd_ >= 0; }
    IpAddr peer_ip() const { return peer_; }
    IpAddr local_ip() const { return local_; }

  private:
    Exchange read_reply();
    bool send_all(std::string_view data, std::string& error);

    Millis timeout_;
    int fd_ = -1;
    std::string in_;  // bytes received and not yet parsed
    IpAddr peer_;
    IpAddr local_;
};

// The command line a verb sends (without CRLF): "EHLO name", "MAIL FROM:<a@b>", "RSET".
std::string command_line(Verb verb, std::string_view arg);

// ---- the battery ----

struct RunOptions {
    Target target;
    std::string local_domain;  // "" = learn from the greeting / EHLO
    std::string local_sender;  // "" = postmaster@local_domain
    std::string outside{defaults::kOutside};
    std::string helo;  // "" = our address literal (RFC 5321 §4.1.4)
    Millis timeout = defaults::kTimeout;
    Millis pace{0};
};

struct RunReport {
    std::string target;  // as given, normalised "host:port"
    std::string server_ip;
    std::string greeting;  // first line
    std::string server_name;
    std::string local_domain;
    std::string local_sender;
    std::string outside;
    std::string helo;
    bool esmtp = true;  // false when EHLO was refused and HELO used
    bool starttls_offered = false;
    std::string start_error;  // non-empty: the battery could not start (exit 2)
    std::vector<ProbeResult> results;

    int count(Verdict v) const;
};

// Called after each probe (for live progress); may be empty.
using ProgressFn = std::function<void(const ProbeResult&, std::size_t index, std::size_t total)>;

// Runs the whole battery. Never sends DATA. Blocking; bounded by timeout per reply.
RunReport run_battery(const RunOptions& opts, const ProgressFn& progress = {});

// Exit code per ctl.hpp: 2 if the battery could not start, 1 if any probe FAILed, else 0.
int exit_code(const RunReport& report);

std::string format_table(const RunReport& report);
std::string format_json(const RunReport& report);

}  // namespace sluice::ctl::relay
