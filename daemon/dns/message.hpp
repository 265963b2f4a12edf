#pragma once
// DNS responses as the resolver reads them (RFC 1035 §4): a pure parser over the bytes
// c-ares hands back, and the interpretation of one answer for one question (CNAME chain,
// records of the asked type, the negative-caching TTL of RFC 2308). No I/O, no libuv.
//
// Trust: the bytes come from the network (a resolver we were told to use, but a spoofed or
// broken answer is possible): every length and pointer is checked, names are bounded to
// RFC 1035 §2.3.4 (255 octets, labels of 63), compression pointers must point backwards
// (so they cannot loop) and are bounded in number. A malformed answer is an error value,
// never a crash.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.hpp"

namespace sluice::dns {

// RFC 1035 §3.2.2 and RFC 3596 §2.1: the types the gateway asks for.
enum class Type : std::uint16_t { a = 1, cname = 5, soa = 6, mx = 15, aaaa = 28 };
std::string_view to_string(Type t);

// RFC 1035 §4.1.1 RCODE.
enum class Rcode : std::uint8_t {
    noerror = 0,
    formerr = 1,
    servfail = 2,
    nxdomain = 3,
    notimp = 4,
    refused = 5
};

namespace limits {
constexpr std::size_t name = 255;        // RFC 1035 §2.3.4, wire form
constexpr std::size_t label = 63;        // RFC 1035 §2.3.4
constexpr int pointers = 64;             // compression jumps in one name
constexpr std::size_t records = 4096;    // answer + authority records read from one reply
constexpr int cname_chain = 8;           // CNAMEs followed for one question
}  // namespace limits

struct Record {
    std::string name;  // owner, lower-case, no trailing dot ("" is the root)
    Type type = Type::a;
    std::uint32_t ttl = 0;
    std::string target;  // CNAME and MX: the host, lower-case, no trailing dot
    std::uint16_t preference = 0;  // MX
    IpAddr addr;                   // A and AAAA
    std::uint32_t soa_minimum = 0; // SOA (authority section)
};

struct Response {
    std::uint16_t id = 0;
    Rcode rcode = Rcode::noerror;
    bool truncated = false;
    std::vector<Record> answers;    // types other than the ones above are skipped
    std::vector<Record> authority;  // SOA only
};

// Parses one DNS message. nullopt with `error` set when it is malformed.
std::optional<Response> parse_response(std::string_view wire, std::string& error);

// What one question's answer means for the gateway.
enum class Status : std::uint8_t {
    ok,         // records of the type asked for (after CNAMEs)
    nodata,     // the name exists but has none of them (RFC 2308 §2.2)
    nxdomain,   // the name does not exist (RFC 2308 §2.1)
    cname,      // the chain ends on a CNAME whose target is not in the answer: ask again
    temporary,  // SERVFAIL, timeout, refused, unreachable servers: try later
    malformed,  // unparsable answer, or a CNAME chain beyond limits::cname_chain
};
std::string_view to_string(Status s);

struct Result {
    Status status = Status::temporary;
    std::vector<Record> records;  // Status::ok: the records of the type asked for
    std::string canonical;        // the name the records belong to (after CNAMEs)
    // How long this may be cached (seconds): the lowest TTL of the chain and records, or
    // for a negative answer min(SOA TTL, SOA MINIMUM) (RFC 2308 §5); nullopt: not at all.
    std::optional<std::uint32_t> ttl;
    std::string detail;  // for logs: the rcode, the parse error...
};

// The answer `r` to the question (qname, qtype). qname is lower-case without a dot.
Result interpret(const Response& r, std::string_view qname, Type qtype);

// "Example.COM." -> "example.com"
std::string normalise_name(std::string_view name);

}  // namespace sluice::dns
