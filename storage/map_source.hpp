#pragma once
// The text form of the operator's maps (docs/maps.md) and the one definition of what a
// valid, normalised entry of each map is. Pure: bytes in, entries and diagnostics out.
//
// Source syntax (postmap-like): one entry per line, `KEY [VALUE...]`, fields separated by
// spaces or tabs; the value is the rest of the line with surrounding blanks removed. A
// line whose first non-blank character is `#` is a comment; a `#` later in a line is part
// of the value (an access map's REJECT text may contain one). Blank lines are ignored.
// A trailing CR is dropped (files edited on Windows).
//
// Normalisation matches the policy's canonical addresses (policy/address.hpp):
// the domain is lower-cased (ASCII) and loses a trailing dot; the local part keeps its case
// (RFC 5321 §2.4) and is kept as written, except that a needlessly quoted local part is
// unquoted. Entries the policy could never match are errors rather than dead rows: `%`,
// `!` or a quoted `@` in a local part, IP-literal domains, an all-numeric last label.
// Not done (as in the policy): IDNA A-label/U-label equivalence; non-ASCII capitals are
// not folded here, so such an entry can only fail to match, i.e. be stricter.
// CIDRs are canonical (IPv4-mapped IPv6 is IPv4; a bare address is a /32 or /128); host
// bits below the prefix are an error.
//
// Keys per map, as the policy passes them to Maps::find:
//   local_domains        "example.test"                        value: none
//   local_addresses      "User.Name@example.test"              value: optional target address
//   catch_all            "example.test"                        value: mailbox (required)
//   privileged_networks  CIDR                                  value: optional name
//   connection_filter    CIDR                                  value: allow | deny
//   access               CIDR (find_cidr), "sender@example.test", "@example.test",
//                        "rcpt:user@example.test", "rcpt:@example.test"
//                                                              value: OK | REJECT [text] | DEFER
//                                                              [text]
//   users                user name, as written                 value: password hash (one token)
//   rate_exempt          CIDR                                  value: optional name
//
// Trust: the source is operator-written, but every line is validated: a source with any
// error publishes nothing, and every error is reported, as `FILE:LINE:COL: message`.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/config.hpp"
#include "common/net.hpp"
#include "policy/maps.hpp"

namespace sluice::storage {

using policy::MapId;

namespace limits {
// RFC 5321 §4.5.3.1.1/.2: local part 64 octets, domain 255 octets; a path is 256 octets
// including the angle brackets, so an address is at most 254.
inline constexpr std::size_t kLocalPart = 64;
inline constexpr std::size_t kDomain = 255;
inline constexpr std::size_t kLabel = 63;
inline constexpr std::size_t kAddress = 254;
// LMDB's default maximum key size (mdb_env_get_maxkeysize) is 511 bytes.
inline constexpr std::size_t kKey = 511;
// An SMTP reply line is at most 512 octets (RFC 5321 §4.5.3.1.5); leave room for the code.
inline constexpr std::size_t kReplyText = 400;
inline constexpr std::size_t kValue = 1024;
inline constexpr std::size_t kLine = 4096;
}  // namespace limits

// The map's file-system name ("local_domains", ...). Kept here rather than calling
// policy::map_name so storage links without the policy library; the names are docs/maps.md's.
std::string_view map_file_name(MapId id);
std::optional<MapId> map_from_name(std::string_view name);
// Maps whose keys are CIDRs (answered by find_cidr); `access` has both kinds.
bool map_has_cidr_keys(MapId id);
bool map_has_string_keys(MapId id);

// One entry as published and listed: canonical key text, canonical value, and where it
// came from ("FILE:LINE", or a description for live edits).
struct MapEntry {
    std::string key;
    std::string value;
    std::string source;

    friend bool operator==(const MapEntry&, const MapEntry&) = default;
};

struct NormalEntry {
    std::string key;           // canonical text form
    std::optional<Cidr> cidr;  // set when the key is a CIDR
    std::string value;         // canonical value
};

struct EntryCheck {
    std::optional<NormalEntry> entry;
    std::string error;            // set when entry is empty
    bool error_in_value = false;  // the problem is in the value, not the key
};

// Validates and normalises one entry of `map`.
EntryCheck normalise_entry(MapId map, std::string_view key, std::string_view value);

// "Example.TEST." -> "example.test"; nullopt (and `error`) when not a domain name.
std::optional<std::string> normalise_domain(std::string_view domain, std::string& error);
// "User@Example.TEST." -> "User@example.test"; nullopt (and `error`) when not a plain
// mailbox address (no source route, no IP literal, no `%` or `!` routing).
std::optional<std::string> normalise_address(std::string_view address, std::string& error);

struct ParseResult {
    std::vector<MapEntry> entries;        // in source order
    std::vector<Diagnostic> diagnostics;  // every problem, in source order
    bool ok() const { return diagnostics.empty(); }
};

// `file` names the source in diagnostics and in each entry's `source`.
ParseResult parse_map_text(MapId map, std::string_view text, const std::string& file);
ParseResult parse_map_file(MapId map, const std::string& path);

// Splits "FILE:LINE" into its parts (line 0 when there is no numeric suffix).
SourceRef split_source(std::string_view source);

}  // namespace sluice::storage
