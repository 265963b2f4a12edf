#pragma once
// SMTP paths (RFC 5321 §4.1.2): the <...> argument of MAIL FROM and RCPT TO, parsed once
// and canonicalised so the policy decides on exactly the form that is forwarded
// (docs/decision-codes.md).
//
// Trust: the input is peer-controlled bytes. The parser is a pure function over them: no
// allocation beyond the result, no exceptions, no I/O, linear time.
//
// Promises:
// - Strict RFC 5321 grammar: Dot-string / Quoted-string local parts, LDH domains or
//   address literals ([IPv4], [IPv6:...]); NUL and control characters are always
//   rejected; 8-bit bytes only with SMTPUTF8 (RFC 6531 §3.3), and then only as
//   well-formed UTF-8 without C1 controls.
// - The limits of RFC 5321 §4.5.3.1 (local part 64, domain 255, path 256 octets).
// - The routing tricks an open-relay probe uses are accepted but visible in the result so
//   the policy can deny them (D113): a source route (dropped from the address, flagged),
//   '%', '!' or '@' in the local part (kept in `local`), IP-literal domains (flagged).
//   `user@a@b` is a syntax error, never the address "user@a" routed via "b".
// - Domains that are IPv4 numbers in disguise (3221225985, 0xC0000201, 192.0.2.1 without
//   brackets, an all-numeric last label) are syntax errors: no resolver may turn them into
//   an address the operator never listed.
// - Canonical form: domain lower-case ASCII, no trailing dot; Latin, Greek and Cyrillic
//   capitals in U-labels lower-cased; IP literals in their shortest form ([IPv6:2001:db8::1],
//   an IPv4-mapped IPv6 literal as the IPv4 literal); a quoted local part is unquoted when
//   its content is a valid Dot-string (RFC 5321 §4.1.2 "SHOULD"), else re-quoted escaping
//   only '"' and '\'. The local part's case is kept (RFC 5321 §2.4). The canonical text is
//   never longer than the text sent, but for one case: an IPv6 literal that wrote "::" for a
//   single zero group grows by one octet, as RFC 5952 §4.2.2 writes that group as "0"
//   (found by tests/fuzz/fuzz_parse_path.cpp; the RFC 5321 §4.5.3.1 limits still hold).
// - Not done: IDNA A-label/U-label equivalence and Unicode normalisation; "xn--..." and
//   its U-label are different strings here (a mismatch can only make a domain non-local,
//   i.e. subject to the relay rules, never the reverse).

#include <cstddef>
#include <string>
#include <string_view>

#include "common/reply.hpp"

namespace sluice::policy {

namespace limits {
inline constexpr std::size_t local_part = 64;  // RFC 5321 §4.5.3.1.1
inline constexpr std::size_t domain = 255;     // RFC 5321 §4.5.3.1.2
inline constexpr std::size_t path = 256;       // RFC 5321 §4.5.3.1.3, with "<" and ">"
inline constexpr std::size_t label = 63;       // RFC 1035 §2.3.4 (ASCII labels)
}  // namespace limits

struct Address {
    std::string local;              // canonical local part (quoted form only when needed)
    std::string domain;             // canonical domain, "[...]" for an address literal
    bool null = false;              // the null reverse-path <>
    bool postmaster_only = false;   // RCPT TO:<Postmaster>, no domain (RFC 5321 §4.1.1.3)
    bool had_source_route = false;  // "@a,@b:" was present and has been dropped (§C)
    bool quoted_local = false;      // `local` is in quoted form (its content needs quoting)
    bool ip_literal = false;        // `domain` is an address literal
    bool utf8 = false;              // non-ASCII in the local part or the domain

    // "local@domain"; "" for the null path; "Postmaster" for postmaster_only.
    std::string str() const;
};

enum class PathError {
    none,
    syntax,
    local_too_long,
    domain_too_long,
    path_too_long,
    needs_smtputf8,
};

struct ParsedPath {
    Address address;
    PathError error = PathError::none;
    std::size_t consumed = 0;  // bytes of the input used, with the brackets; 0 on error

    bool ok() const { return error == PathError::none; }
};

// `text` starts at '<' (right after "MAIL FROM:" / "RCPT TO:") and may continue with
// ESMTP parameters, which are not looked at: parsing stops after the '>' that closes the
// path. `reverse_path` allows <>; a forward path allows <Postmaster>. `smtputf8` is true
// when the client gave the SMTPUTF8 parameter (RFC 6531 §3.4).
ParsedPath parse_path(std::string_view text, bool reverse_path, bool smtputf8);

// "syntax", "local_too_long", ... for logs.
std::string_view path_error_name(PathError e);

// The reply for a path that failed to parse (reply table rows of common/reply.hpp).
Reply path_error_reply(PathError e, bool reverse_path);

}  // namespace sluice::policy
