#pragma once
// SMTP AUTH exchanges (RFC 4954) for the PLAIN (RFC 4616) and LOGIN mechanisms: parses
// the AUTH command's arguments, produces the 334 challenges and decodes the client's
// responses into credentials. Pure: strings in, a Step out; no I/O, no password checks
// (daemon/auth.hpp does those, off the loop thread).
//
// Trust: every byte is peer-controlled. Promises:
// - Base64 is strict RFC 4648 §4: standard alphabet, no whitespace, length a multiple of
//   4, "=" padding only at the end and with zero pad bits; anything else is 501 5.5.2.
// - A line of "*" cancels the exchange (RFC 4954 §4): 501 5.0.0.
// - Lines are at most kMaxLine octets (RFC 4954 §4: 12288 including CRLF); identities at
//   most kMaxIdentity octets of UTF-8 without control characters (they reach the log and
//   the Received: header), passwords at most kMaxPassword octets without NUL (a NUL would
//   truncate what crypt(3) sees, so "secret\0junk" would pass as "secret").
// - PLAIN's authzid must be empty or equal to the authcid (no proxy authorisation).
// - Malformed credentials (after valid base64) are 535 5.7.8, exactly like a wrong
//   password, so a client learns nothing from the difference; `reason` says why for the
//   log. They count as failed attempts for the throttle.
//
// Use: the session gets "AUTH <args>" and calls start(args); while the Step is a
// challenge it sends `append_reply(out, Reply::auth_challenge, step.challenge)` and feeds
// the next client line (without CRLF) to respond(). A `done` Step carries the credentials
// to verify; an `error` Step carries the reply to send, and the exchange is over.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "common/reply.hpp"

namespace sluice::sasl {

namespace limits {
inline constexpr std::size_t kMaxLine = 12288 - 2;  // RFC 4954 §4, without the CRLF
inline constexpr std::size_t kMaxIdentity = 255;    // RFC 4616 §2 "up to 255 octets"
inline constexpr std::size_t kMaxPassword = 511;    // crypt(3) hashes at most 511 octets
}  // namespace limits

// For the EHLO keyword line: "AUTH PLAIN LOGIN".
inline constexpr std::string_view kMechanisms = "PLAIN LOGIN";

enum class Mechanism { plain, login };

// Case-insensitive; nullopt for anything else (RFC 4422 §3.1 names).
std::optional<Mechanism> parse_mechanism(std::string_view name);
std::string_view mechanism_name(Mechanism m);

// RFC 4648 §4, strict (see above). nullopt when `text` is not canonical base64.
std::optional<std::string> base64_decode(std::string_view text);
std::string base64_encode(std::string_view data);

// A user name as AUTH accepts it: 1 to kMaxIdentity octets of well-formed UTF-8 without
// control characters (`sluicectl user add` applies the same rule, plus no blanks).
bool valid_identity(std::string_view id);

struct Credentials {
    std::string authzid;  // PLAIN only; empty, or equal to `user`
    std::string user;     // authcid: the users-map key
    std::string password;
};

struct Step {
    enum class Kind { challenge, done, error };
    Kind kind = Kind::error;
    std::string challenge;             // challenge: base64 text for "334 " (may be empty)
    Credentials credentials;           // done
    Reply reply = Reply::auth_failed;  // error: the reply to send
    std::string reason;                // error: why, for the log (never contains the password)
};

class SaslExchange {
  public:
    // `args`: what follows "AUTH " on the command line: "MECH [initial-response]".
    // Errors: 501 5.5.4 (syntax_params) without a mechanism or with extra arguments,
    // 504 5.5.4 (auth_mechanism) for an unknown one, 501 5.5.2 bad base64. An initial
    // response of "=" is an empty one (RFC 4954 §4).
    Step start(std::string_view args);
    // One client line after a challenge, without its CRLF.
    Step respond(std::string_view line);
    // A challenge is outstanding: the next line belongs to the exchange, not to SMTP.
    bool active() const { return stage_ != Stage::idle; }
    Mechanism mechanism() const { return mech_; }

  private:
    enum class Stage { idle, plain_message, login_user, login_password };

    Step finish_plain(std::string_view message);
    Step login_got_user(std::string_view user);
    Step login_got_password(std::string_view password);
    Step error(Reply reply, std::string reason);

    Stage stage_ = Stage::idle;
    Mechanism mech_ = Mechanism::plain;
    std::string user_;  // LOGIN: the user name between the two challenges
};

}  // namespace sluice::sasl
