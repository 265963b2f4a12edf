#pragma once
// The PROXY protocol header (haproxy's doc/proxy-protocol.txt, versions 1 and 2): the
// block a load balancer puts before the first byte of a connection it relays, naming the
// client it relays for. Pure and incremental: `parse` takes every byte received so far
// and says need-more, done (the header, and how many bytes it took) or error; `Reader`
// keeps those bytes for a connection. No socket, no libuv: tested at every fragment size
// and fuzzed (tests/fuzz/fuzz_proxy_header.cpp).
//
// Trust: the bytes come from a peer the listener's `proxy_protocol` list names, and are
// still checked as hostile: the header decides who the client is for every later
// decision. Whether the peer may send a header at all is the caller's check (§5: a header
// is only ever accepted from a configured source).
// Promise: `done` only for a complete header that matches the spec exactly (§2.1: "Any
// sequence which does not exactly match the protocol must be discarded"); the bytes after
// `consumed` are the client's and are never looked at; an error is reported as soon as
// the bytes show it (a wrong first byte at once, a too long header from its length
// field), and no input makes `Reader` hold more than kMaxHeaderSize bytes.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/net.hpp"

namespace sluice::proxy {

namespace limits {
// §2.1: "PROXY UNKNOWN" with two full IPv6 addresses and ports is the longest v1 line,
// 107 bytes with its CRLF; no CRLF within them and the line is invalid.
inline constexpr std::size_t kV1MaxLine = 107;
// §2.2: 12 signature bytes, the version/command byte, the family/transport byte and a
// 16-bit big-endian length of what follows: a v2 header is 16 + length bytes.
inline constexpr std::size_t kV2SignatureSize = 12;
inline constexpr std::size_t kV2FixedSize = 16;
// §2.2: address blocks: TCP/UDP over IPv4 2*4 + 2*2, over IPv6 2*16 + 2*2, AF_UNIX 2*108.
inline constexpr std::size_t kV2Inet4Addresses = 12;
inline constexpr std::size_t kV2Inet6Addresses = 36;
inline constexpr std::size_t kV2UnixAddresses = 216;
// §2.2 lets the length field reach 65535; we take at most this much. §2 designs both
// formats to fit in 536 bytes; the largest address block (216) plus every registered TLV
// at its spec size (§2.2.1-2.2.7: an ALPN and an authority of at most 255 bytes, the
// 128-byte unique ID, the SSL TLV with its sub-TLVs) stays well below it. A longer header
// is refused from its length field, before its bytes are read.
inline constexpr std::size_t kV2MaxSize = 2048;
// The most `Reader` keeps: a whole v2 header (the longer format).
inline constexpr std::size_t kMaxHeaderSize = kV2MaxSize;
// §2.2: a TLV is a type byte and a 16-bit length, then the value.
inline constexpr std::size_t kTlvHeaderSize = 3;
}  // namespace limits

// §2.2.3 and §2.2.4: the TLV types the parser acts on (a CRC32C is verified, every other
// TLV, NOOP included, is skipped).
inline constexpr std::uint8_t kTlvCrc32c = 0x03;

enum class Status : std::uint8_t { need_more, done, error };

// What the header says about the connection.
enum class Kind : std::uint8_t {
    // v1 TCP4/TCP6, v2 PROXY over TCP/IPv4 or TCP/IPv6: `source` is the client the
    // balancer relays for, `destination` the address the client connected to.
    proxied,
    // v2 LOCAL (§2.2): the balancer's own connection (a health check); "the receiver must
    // accept this connection as valid and must use the real connection endpoints".
    local,
    // v1 UNKNOWN (§2.1) or v2 PROXY with no address to take (AF_UNSPEC, AF_UNIX, a DGRAM or
    // UNSPEC transport, §2.2): the spec says to use the real connection endpoints.
    unknown,
};

// Errors, one row each: the name in logs, what it means.
enum class Error : std::uint8_t {
    none,
    bad_signature,
    v1_too_long,
    v1_bad_line_ending,
    v1_bad_protocol,
    v1_bad_syntax,
    v1_bad_address,
    v1_bad_port,
    v2_bad_version,
    v2_bad_command,
    v2_bad_family,
    v2_too_long,
    v2_short_addresses,
    v2_bad_tlv,
    v2_bad_checksum,
    count_
};

std::string_view error_name(Error e);     // "v2_bad_tlv", as in the log
std::string_view error_meaning(Error e);  // one line for operators (README, --help)
std::string_view kind_name(Kind k);       // "proxied", "local", "unknown"

struct Endpoint {
    IpAddr ip;
    std::uint16_t port = 0;
};

struct Header {
    int version = 0;  // 1 or 2
    Kind kind = Kind::unknown;
    Endpoint source;       // Kind::proxied only
    Endpoint destination;  // Kind::proxied only
};

struct Result {
    Status status = Status::need_more;
    Error error = Error::none;  // Status::error
    std::size_t consumed = 0;   // Status::done: the header's size; what follows is the client's
    Header header;              // Status::done
};

// Parses the start of a connection: `input` is every byte received so far (call again
// with more on need_more). Never reads past the header.
Result parse(std::string_view input);

// §2.2.3: CRC32c (Castagnoli, RFC 4960 Appendix B), for the PP2_TYPE_CRC32C TLV.
std::uint32_t crc32c(std::uint32_t crc, std::string_view bytes);

// One connection's header as it arrives in pieces: keeps what `parse` has not finished
// with (at most kMaxHeaderSize bytes) and hands back the bytes that followed the header.
class Reader {
  public:
    // Bytes from the peer, in order. Once done or error, further calls return the same.
    Result feed(std::string_view bytes);
    // After done: the client's bytes that arrived with the header (TLS or SMTP), once.
    std::string take_rest();
    // Bytes received so far (a peer that closes having sent none is a plain TCP check).
    std::size_t received() const { return received_; }

  private:
    std::string buf_;
    std::size_t received_ = 0;
    Result result_;
};

}  // namespace sluice::proxy
