#pragma once
// Delivery status notifications (bounces and delay warnings): RFC 3464 message/
// delivery-status inside an RFC 6522 (formerly RFC 3462) multipart/report, with the
// original message's header section (text/rfc822-headers) or, on request, the whole
// original message. A pure function: the caller passes every fact, including "now".
//
// Trust: the envelope comes from our spool (canonical, decided by the policy); the
// diagnostic texts and the original headers came from peers: control characters in them
// are neutralised and every generated line stays within RFC 5322's 998 octets, so a peer
// cannot add fields or parts to the report.
//
// Promises:
// - should_bounce() is false for the null reverse-path: no DSN is ever generated for a
//   message from <> (RFC 5321 §4.5.5, RFC 3464 §2), and a DSN must itself be sent with
//   MAIL FROM:<> (the caller does; `kNullSender` is that sender), so a DSN can never cause
//   another DSN and bounces cannot loop.
// - The result is a complete RFC 5322 message with CRLF line endings, one multipart
//   boundary that occurs nowhere in the included content, and the parts in the order RFC
//   6522 §3 requires: human-readable text, message/delivery-status, original headers.
// - Internationalised input (a non-ASCII address or 8-bit header) switches to RFC 6533:
//   message/global-delivery-status, "utf-8" address types, message/global-headers; the
//   DSN then has to be sent with SMTPUTF8, which the client does by itself.

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/date.hpp"

namespace sluice::dsn {

using TimePoint = std::chrono::system_clock::time_point;

namespace limits {
// Original headers included in a report; a longer header section is cut at a field
// boundary (a DSN must stay small whatever the original looked like).
inline constexpr std::size_t headers = 64 * 1024;
// RFC 5322 §2.1.1: a line SHOULD be at most 78 characters, MUST be at most 998.
inline constexpr std::size_t fold_at = 78;
inline constexpr std::size_t hard_line = 998;
}  // namespace limits

// The reverse path of every DSN (RFC 3464 §2, RFC 5321 §4.5.5).
inline constexpr std::string_view kNullSender = "";

enum class Action : std::uint8_t { failed, delayed };  // RFC 3464 §2.3.3

struct RecipientReport {
    std::string address;   // Final-Recipient: the address we tried (canonical)
    std::string original;  // Original-Recipient as received, "" if unknown
    Action action = Action::failed;
    std::string status;      // RFC 3463 "5.1.1"; empty or invalid: "5.0.0" / "4.0.0"
    std::string diagnostic;  // "smtp; 550 5.1.1 User unknown"; "" if none
    std::string remote_mta;  // the next hop's name, e.g. "mail.internal"; "" if none
    std::optional<TimePoint> last_attempt;
    std::optional<TimePoint> will_retry_until;  // delayed only
};

struct DsnInput {
    std::string reporting_mta;  // our hostname (server.hostname)
    std::string sender;         // the original envelope sender: the DSN's recipient
    std::string queue_id;       // the original message's queue id
    std::string envelope_id;    // ENVID of RFC 3461 §4.4, "" if none
    TimePoint arrival{};        // when the original message was received
    TimePoint now{};            // Date of the DSN
    std::vector<RecipientReport> recipients;
    // The original message (CRLF). Only its header section is included unless
    // `include_message` (RET=FULL, RFC 3461 §4.3) is set.
    std::string_view original;
    bool include_message = false;
};

// False for the null sender: never bounce a bounce.
bool should_bounce(std::string_view sender);

// The header section of `message`: up to and including the line end before the first
// empty line (all of it if there is none).
std::string_view header_block(std::string_view message);

// "Thu, 13 Feb 1969 23:32:54 +0000" (RFC 5322 §3.3), always UTC: common/date.hpp.
using sluice::rfc5322_date;

// The whole DSN message, CRLF, ready to be queued with MAIL FROM:<> and RCPT TO:<sender>.
// Returns "" when there is nothing to report (no recipients, or should_bounce(sender) is
// false), so a caller cannot send a DSN to <> by mistake.
std::string build_dsn(const DsnInput& in);

}  // namespace sluice::dsn
