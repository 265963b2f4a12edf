#pragma once
// The one table of SMTP replies. Every reply Sluice sends, inbound or as a policy
// verdict, is a row here: basic code (RFC 5321 §4.2), enhanced status code (RFC 3463,
// RFC 2034 §3) and text. No reply text is written anywhere else.
//
// Trust: pure data, no I/O.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

enum class Reply : std::uint8_t {
    // Connection level.
    greeting,       // 220, no enhanced code (RFC 2034 §3)
    closing,        // 221 2.0.0
    shutting_down,  // 421 4.3.2
    too_many_connections,
    too_many_connections_from_ip,
    timeout,                 // 421 4.4.2
    too_many_errors,         // 421 4.7.0
    too_many_junk_commands,  // 421 4.7.0 (limits.junk_commands)
    early_talker,            // 554 5.5.0, then close
    pipelining_not_advertised,
    connection_refused,     // 554 5.7.1 at greeting (C130)
    lookup_failed_connect,  // 421 4.3.0 at greeting (T140), then close (RFC 5321 §3.8)
    bare_line_ending,       // 521 5.5.2, then close (SMTP smuggling)
    rate_connections,       // 421 4.7.0 at greeting (R150), then close
    rate_errors,            // 421 4.7.0 (R153), then close
    // Command level.
    ehlo,  // 250 multi-line, no enhanced code
    helo,
    ok,                    // 250 2.0.0
    sender_ok,             // 250 2.1.0
    recipient_ok,          // 250 2.1.5
    start_data,            // 354
    queued,                // 250 2.0.0 queued as ID
    inline_refused,        // 554 5.0.0 in-line mode: the next hop refused every recipient
    inline_deferred,       // 451 4.4.0 in-line mode: the next hop took none of them
    vrfy,                  // 252 2.5.0
    help,                  // 214 2.0.0
    line_too_long,         // 500 5.5.2
    invalid_character,     // 500 5.5.2
    command_unrecognized,  // 500 5.5.1
    not_implemented,       // 502 5.5.1
    syntax_helo,           // 501 5.5.4
    syntax_params,         // 501 5.5.4
    syntax_mail,           // 501 5.5.4
    syntax_rcpt,           // 501 5.5.4
    bad_sender,            // 501 5.1.7
    bad_recipient,         // 501 5.1.3
    sender_too_long,       // 501 5.1.7 (RFC 5321 §4.5.3.1)
    recipient_too_long,    // 501 5.1.3
    needs_smtputf8,        // 553 5.6.7 (RFC 6531 §3.7.4.1)
    need_helo,             // 503 5.5.1
    need_mail,             // 503 5.5.1
    need_rcpt,             // 503 5.5.1
    nested_mail,           // 503 5.5.1
    unknown_parameter,     // 555 5.5.4 (RFC 5321 §4.1.1.11)
    unsupported_body,      // 504 5.5.4
    size_exceeded,         // 552 5.3.4
    too_many_recipients,   // 452 4.5.3 (RFC 5321 §4.5.3.1.8)
    no_valid_recipients,   // 554 5.5.1
    too_many_hops,         // 554 5.4.0 (RFC 5321 §6.3)
    nul_in_message,        // 554 5.6.0
    local_error,           // 451 4.3.0
    insufficient_storage,  // 452 4.3.1
    // Relay decisions (docs/decision-codes.md).
    recipient_local,  // 250 2.1.5 L101/L102
    unknown_user,     // 550 5.1.1 L103
    relay_granted,    // 250 2.1.5 G1xx
    relay_denied,     // 554 5.7.1 D109/D111/D112
    routing_denied,   // 554 5.7.1 D113
    routing_syntax,   // 501 5.1.3 D113 (malformed routing)
    blocked,          // 554 5.7.1 B120
    deferred,         // 450 4.7.1 access map DEFER
    lookup_failed,    // 451 4.3.0 T140
    rate_messages,    // 450 4.7.1 R151
    rate_recipients,  // 450 4.7.1 R152
    // TLS and AUTH.
    starttls_ready,       // 220 2.0.0
    tls_required,         // 530 5.7.0
    tls_unavailable,      // 454 4.7.0
    auth_ok,              // 235 2.7.0
    auth_failed,          // 535 5.7.8
    auth_needs_tls,       // 538 5.7.11
    auth_throttled,       // 454 4.7.0
    auth_bad_base64,      // 501 5.5.2
    auth_cancelled,       // 501 5.0.0
    auth_challenge,       // 334 base64 challenge, no enhanced code (RFC 4954 §4)
    auth_mechanism,       // 504 5.5.4 unrecognized authentication type (RFC 4954 §4)
    sender_not_owned,     // 553 5.7.1
    tls_already_active,   // 503 5.5.1 STARTTLS inside TLS
    auth_in_transaction,  // 503 5.5.1 (RFC 4954 §4)
    auth_unavailable,     // 454 4.7.0 the users map cannot be read (fail closed)
    // Outbound (daemon/smtp_client.hpp): conditions found by our client, not replies of
    // the next hop, reported per recipient.
    next_hop_lost,        // 451 4.4.2 connection lost before the final reply
    next_hop_timeout,     // 451 4.4.2 RFC 5321 §4.5.3.2 timeout
    next_hop_protocol,    // 451 4.5.0 malformed or unexpected reply
    conversion_required,  // 554 5.6.3 8-bit data, next hop without 8BITMIME (RFC 6152 §3)
    // Delivery by MX (daemon/dns/destination.hpp): what DNS says about a domain.
    dns_null_mx,          // 556 5.1.10 the domain accepts no mail (RFC 7505 §3)
    dns_no_domain,        // 550 5.1.2 NXDOMAIN, or no MX and no address (RFC 5321 §5.1)
    dns_mx_loop,          // 554 5.4.6 the MX set names this host (RFC 5321 §5.1)
    dns_temporary,        // 451 4.4.3 SERVFAIL, timeout or malformed answer
    mx_unreachable,       // 451 4.4.1 no MX host of the domain took a connection
    count_
};

struct ReplySpec {
    int code;                   // RFC 5321 basic status code
    std::string_view enhanced;  // RFC 3463 code, empty where RFC 2034 §3 omits it
    std::string_view text;      // default text; "%" is replaced by the argument
    bool closes;                // the server closes the connection after sending it
};

const ReplySpec& reply_spec(Reply r);

// Appends one complete reply line (CRLF-terminated) to `out`. `arg` replaces a "%" in
// the table text; `text` (if not empty) replaces the table text altogether, e.g. the
// operator's REJECT text from the access map. CR, LF and NUL in `arg`/`text` are
// dropped so a peer-controlled string can never end a reply early.
void append_reply(std::string& out, Reply r, std::string_view arg = {}, std::string_view text = {});

// A multi-line reply (RFC 5321 §4.2.1: "250-" on every line but the last): the table row
// gives the code; `lines` give the texts.
void append_multiline(std::string& out, Reply r, const std::vector<std::string>& lines);

// The reply as one string without the trailing CRLF (for logs and `explain`).
std::string reply_line(Reply r, std::string_view arg = {}, std::string_view text = {});

}  // namespace sluice
