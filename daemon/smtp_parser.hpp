#pragma once
// The SMTP command parser: pure and incremental. `LineScanner` cuts the inbound byte
// stream into command lines; `parse_command` turns one line into a `Command`. Neither
// touches a socket or allocates per byte, so both are tested at every fragment size and
// fuzzed (tests/fuzz/).
//
// Trust: everything here comes from the network and is hostile until proven otherwise.
// Promise: no input makes a buffer grow beyond kMaxCommandLine; every malformed line is
// reported as a value, never as an exception or an assertion.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::smtp {

namespace limits {
// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
inline constexpr std::size_t kMaxCommandLine = 512;
// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
inline constexpr std::size_t kMaxTextLine = 1000;
// RFC 5321 §4.5.3.1.3: a path (with the angle brackets) is at most 256 octets.
inline constexpr std::size_t kMaxPath = 256;
}  // namespace limits

// Cuts lines that end in CRLF (RFC 5321 §2.3.8). A bare CR or bare LF is an error: it is
// how SMTP smuggling starts, and a gateway must never interpret it differently from the
// next hop.
class LineScanner {
  public:
    enum class Status : std::uint8_t {
        line,       // `line` holds one command line without its CRLF
        need_more,  // no complete line yet; keep the bytes and call again with more
        too_long,   // the line exceeded kMaxCommandLine; its bytes up to CRLF are discarded
        bare_lf,    // LF without CR
        bare_cr,    // CR not followed by LF
    };
    struct Result {
        Status status;
        std::string_view line;  // valid for Status::line
        std::size_t consumed;   // bytes of the input to drop
    };

    // Scans `input` (the bytes not yet consumed). After `too_long` the scanner is skipping:
    // later calls consume (and drop) bytes up to and including the next CRLF, reporting
    // `need_more`, so an endless line costs no memory.
    Result next(std::string_view input);

    bool skipping() const { return skipping_; }

  private:
    bool skipping_ = false;
};

enum class Verb : std::uint8_t {
    ehlo,
    helo,
    mail,
    rcpt,
    data,
    rset,
    noop,
    quit,
    vrfy,
    expn,
    help,
    starttls,
    auth,
    bdat,
    unknown
};

std::string_view verb_name(Verb v);

// One ESMTP parameter (RFC 5321 §4.1.2 esmtp-param): KEYWORD[=VALUE], keyword upper-cased.
struct Param {
    std::string keyword;
    std::string value;
    bool has_value = false;
};

struct Command {
    Verb verb = Verb::unknown;
    std::string_view arg;   // everything after the verb and one space (MAIL/RCPT: after the colon)
    bool syntax_ok = true;  // MAIL without "FROM:", RCPT without "TO:", etc.
    bool has_nul = false;
    bool has_8bit = false;
};

// Parses one line (without CRLF). The returned views point into `line`.
Command parse_command(std::string_view line);

// Parses the ESMTP parameters after a path (RFC 5321 §4.1.2: SP-separated esmtp-param).
// Returns false on a syntax error (empty keyword, bad characters).
bool parse_params(std::string_view text, std::vector<Param>& out);

}  // namespace sluice::smtp
