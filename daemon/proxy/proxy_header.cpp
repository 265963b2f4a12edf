#include "daemon/proxy/proxy_header.hpp"

#include <arpa/inet.h>

#include <array>
#include <cstring>

namespace sluice::proxy {
namespace {

// §2.1: the v1 line starts with "PROXY" and exactly one space.
constexpr std::string_view kV1Prefix = "PROXY ";
// §2.2: the v2 signature (a NUL at the 5th byte: never a C string).
constexpr std::string_view kV2Signature{"\r\n\r\n\0\r\nQUIT\n", limits::kV2SignatureSize};
static_assert(kV2Signature.size() == 12);

// §2.2: the high nibble of the 13th byte is the version, the low one the command.
constexpr std::uint8_t kV2Version = 0x2;
constexpr std::uint8_t kV2CommandLocal = 0x0;
constexpr std::uint8_t kV2CommandProxy = 0x1;
// §2.2: the 14th byte: address family (high nibble), transport (low nibble).
constexpr std::uint8_t kFamilyUnspec = 0x0;
constexpr std::uint8_t kFamilyInet = 0x1;
constexpr std::uint8_t kFamilyInet6 = 0x2;
constexpr std::uint8_t kFamilyUnix = 0x3;
constexpr std::uint8_t kTransportUnspec = 0x0;
constexpr std::uint8_t kTransportStream = 0x1;
constexpr std::uint8_t kTransportDgram = 0x2;

struct ErrorRow {
    Error error;
    std::string_view name;
    std::string_view meaning;
};

constexpr ErrorRow kErrors[] = {
    {Error::none, "none", "no error"},
    {Error::bad_signature, "bad_signature",
     "neither a v1 \"PROXY \" line nor the v2 signature (§2.2)"},
    {Error::v1_too_long, "v1_too_long", "no CRLF within the first 107 bytes (§2.1)"},
    {Error::v1_bad_line_ending, "v1_bad_line_ending", "a CR or an LF alone (§2.1)"},
    {Error::v1_bad_protocol, "v1_bad_protocol", "protocol not TCP4, TCP6 or UNKNOWN (§2.1)"},
    {Error::v1_bad_syntax, "v1_bad_syntax",
     "fields missing, extra, or not separated by exactly one space (§2.1)"},
    {Error::v1_bad_address, "v1_bad_address",
     "an address not in the canonical form of the line's family (§2.1)"},
    {Error::v1_bad_port, "v1_bad_port", "a port not in 0..65535 without leading zeroes (§2.1)"},
    {Error::v2_bad_version, "v2_bad_version", "version is not 2 (§2.2)"},
    {Error::v2_bad_command, "v2_bad_command", "command is neither LOCAL nor PROXY (§2.2)"},
    {Error::v2_bad_family, "v2_bad_family", "address family or transport not in §2.2"},
    {Error::v2_too_long, "v2_too_long", "longer than the 2048 bytes a header may take"},
    {Error::v2_short_addresses, "v2_short_addresses",
     "length shorter than the family's address block (§2.2)"},
    {Error::v2_bad_tlv, "v2_bad_tlv", "a TLV runs past the end of the header (§2.2)"},
    {Error::v2_bad_checksum, "v2_bad_checksum", "the CRC32C TLV does not match (§2.2.3)"},
};
static_assert(std::size(kErrors) == static_cast<std::size_t>(Error::count_));

constexpr bool rows_in_order() {
    for (std::size_t i = 0; i < std::size(kErrors); ++i) {
        if (static_cast<std::size_t>(kErrors[i].error) != i) {
            return false;
        }
    }
    return true;
}
static_assert(rows_in_order(), "kErrors rows follow enum Error");

Result fail(Error e) {
    Result r;
    r.status = Status::error;
    r.error = e;
    return r;
}

// `input` starts like `expected` as far as it goes.
bool prefix_matches(std::string_view input, std::string_view expected) {
    std::size_t n = std::min(input.size(), expected.size());
    return input.substr(0, n) == expected.substr(0, n);
}

// §2.1: "exactly 4 integers in the range [0..255] ... separated by exactly one dot",
// no leading zeroes.
bool canonical_ipv4(std::string_view s) {
    int parts = 0;
    while (true) {
        std::size_t digits = 0;
        unsigned value = 0;
        while (digits < s.size() && s[digits] >= '0' && s[digits] <= '9') {
            value = value * 10 + static_cast<unsigned>(s[digits] - '0');
            ++digits;
            if (digits > 3) {
                return false;
            }
        }
        if (digits == 0 || value > 255 || (digits > 1 && s[0] == '0')) {
            return false;
        }
        ++parts;
        s.remove_prefix(digits);
        if (s.empty()) {
            return parts == 4;
        }
        if (s[0] != '.' || parts == 4) {
            return false;
        }
        s.remove_prefix(1);
    }
}

// §2.1: hexadecimal groups and colons (one "::" at most, 128 bits); an IPv4-mapped tail
// in dotted form is what inet_pton also takes (balancers print mapped clients so).
std::optional<IpAddr> ipv6_address(std::string_view s) {
    if (s.empty() || s.size() >= INET6_ADDRSTRLEN || s.find(':') == std::string_view::npos) {
        return std::nullopt;
    }
    char buf[INET6_ADDRSTRLEN];
    std::memcpy(buf, s.data(), s.size());
    buf[s.size()] = '\0';
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    if (inet_pton(AF_INET6, buf, &sa.sin6_addr) != 1) {
        return std::nullopt;
    }
    return ip_from_sockaddr(reinterpret_cast<const sockaddr*>(&sa));
}

// §2.1: "a decimal integer in the range [0..65535] ... Heading zeroes are not permitted".
std::optional<std::uint16_t> port(std::string_view s) {
    if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) {
        return std::nullopt;
    }
    unsigned v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v > 65535) {
        return std::nullopt;
    }
    return static_cast<std::uint16_t>(v);
}

// Splits at single spaces; an empty field (two spaces, a leading or trailing one) is a
// syntax error. At most `max` fields; false when there are more.
bool split_fields(std::string_view s, std::string_view* out, std::size_t max, std::size_t& n) {
    n = 0;
    while (true) {
        auto sp = s.find(' ');
        std::string_view f = s.substr(0, sp);
        if (f.empty() || n == max) {
            return false;
        }
        out[n++] = f;
        if (sp == std::string_view::npos) {
            return true;
        }
        s.remove_prefix(sp + 1);
    }
}

Result parse_v1(std::string_view input) {
    // §2.1: wait for the CRLF, within the first 107 bytes; a lone CR or LF is an error.
    std::size_t scan = std::min(input.size(), limits::kV1MaxLine);
    std::size_t cr = std::string_view::npos;
    for (std::size_t i = 0; i < scan; ++i) {
        if (input[i] == '\n') {
            return fail(Error::v1_bad_line_ending);
        }
        if (input[i] == '\r') {
            cr = i;
            break;
        }
    }
    if (cr == std::string_view::npos) {
        return input.size() >= limits::kV1MaxLine ? fail(Error::v1_too_long) : Result{};
    }
    if (cr + 2 > limits::kV1MaxLine) {
        return fail(Error::v1_too_long);
    }
    if (cr + 1 == input.size()) {
        return Result{};  // the LF may follow
    }
    if (input[cr + 1] != '\n') {
        return fail(Error::v1_bad_line_ending);
    }
    std::string_view line = input.substr(kV1Prefix.size(), cr - kV1Prefix.size());
    Result r;
    r.header.version = 1;
    r.consumed = cr + 2;
    std::string_view proto = line.substr(0, line.find(' '));
    if (proto == "UNKNOWN") {
        // §2.1: "the receiver must ignore anything presented before the CRLF is found".
        r.status = Status::done;
        r.header.kind = Kind::unknown;
        return r;
    }
    if (proto != "TCP4" && proto != "TCP6") {
        return fail(proto.empty() ? Error::v1_bad_syntax : Error::v1_bad_protocol);
    }
    std::string_view f[5];
    std::size_t n = 0;
    if (!split_fields(line, f, 5, n) || n != 5) {
        return fail(Error::v1_bad_syntax);
    }
    std::optional<IpAddr> src, dst;
    if (proto == "TCP4") {
        if (canonical_ipv4(f[1]) && canonical_ipv4(f[2])) {
            src = parse_ip(f[1]);
            dst = parse_ip(f[2]);
        }
    } else {
        src = ipv6_address(f[1]);
        dst = ipv6_address(f[2]);
    }
    if (!src || !dst) {
        return fail(Error::v1_bad_address);
    }
    auto sport = port(f[3]);
    auto dport = port(f[4]);
    if (!sport || !dport) {
        return fail(Error::v1_bad_port);
    }
    r.status = Status::done;
    r.header.kind = Kind::proxied;
    r.header.source = {*src, *sport};
    r.header.destination = {*dst, *dport};
    return r;
}

std::uint16_t be16(std::string_view s, std::size_t at) {
    return static_cast<std::uint16_t>((static_cast<std::uint8_t>(s[at]) << 8) |
                                      static_cast<std::uint8_t>(s[at + 1]));
}

Endpoint endpoint(const char* addr, std::size_t addr_len, std::string_view port_bytes) {
    sockaddr_storage ss{};
    if (addr_len == 4) {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        std::memcpy(&in->sin_addr, addr, 4);
    } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        in6->sin6_family = AF_INET6;
        std::memcpy(&in6->sin6_addr, addr, 16);
    }
    return {ip_from_sockaddr(reinterpret_cast<const sockaddr*>(&ss)), be16(port_bytes, 0)};
}

// §2.2: after the address block, TLVs to the end of the header; each must fit, and a
// CRC32C (§2.2.3) must match the header with its own value zeroed.
Error check_tlvs(std::string_view header, std::size_t at) {
    while (at < header.size()) {
        if (header.size() - at < limits::kTlvHeaderSize) {
            return Error::v2_bad_tlv;
        }
        auto type = static_cast<std::uint8_t>(header[at]);
        std::size_t len = be16(header, at + 1);
        std::size_t value = at + limits::kTlvHeaderSize;
        if (len > header.size() - value) {
            return Error::v2_bad_tlv;
        }
        if (type == kTlvCrc32c) {
            if (len != 4) {
                return Error::v2_bad_tlv;
            }
            static constexpr char zeros[4] = {};
            std::uint32_t c = crc32c(0, header.substr(0, value));
            c = crc32c(c, std::string_view(zeros, 4));
            c = crc32c(c, header.substr(value + 4));
            std::uint32_t sent =
                (std::uint32_t{static_cast<std::uint8_t>(header[value])} << 24) |
                (std::uint32_t{static_cast<std::uint8_t>(header[value + 1])} << 16) |
                (std::uint32_t{static_cast<std::uint8_t>(header[value + 2])} << 8) |
                std::uint32_t{static_cast<std::uint8_t>(header[value + 3])};
            if (c != sent) {
                return Error::v2_bad_checksum;
            }
        }
        at = value + len;
    }
    return Error::none;
}

Result parse_v2(std::string_view input) {
    if (input.size() > limits::kV2SignatureSize) {
        auto vc = static_cast<std::uint8_t>(input[limits::kV2SignatureSize]);
        if ((vc >> 4) != kV2Version) {
            return fail(Error::v2_bad_version);
        }
        if ((vc & 0x0f) != kV2CommandLocal && (vc & 0x0f) != kV2CommandProxy) {
            return fail(Error::v2_bad_command);
        }
    }
    if (input.size() < limits::kV2FixedSize) {
        return Result{};
    }
    const std::uint8_t command = static_cast<std::uint8_t>(input[12]) & 0x0f;
    const auto fam = static_cast<std::uint8_t>(input[13]);
    const std::uint8_t family = fam >> 4;
    const std::uint8_t transport = fam & 0x0f;
    // "the family which is ignored" for LOCAL (§2.2); for PROXY it must be a defined one.
    if (command == kV2CommandProxy && (family > kFamilyUnix || transport > kTransportDgram)) {
        return fail(Error::v2_bad_family);
    }
    const std::size_t total = limits::kV2FixedSize + be16(input, 14);
    if (total > limits::kV2MaxSize) {
        return fail(Error::v2_too_long);
    }
    if (input.size() < total) {
        return Result{};
    }
    std::string_view header = input.substr(0, total);
    Result r;
    r.header.version = 2;
    r.consumed = total;
    r.status = Status::done;
    if (command == kV2CommandLocal) {
        // §2.2: "must not assume zero is presented for LOCAL connections": the whole block
        // is skipped, addresses and TLVs alike.
        r.header.kind = Kind::local;
        return r;
    }
    std::size_t addresses = 0;
    if (transport != kTransportUnspec) {
        addresses = family == kFamilyInet    ? limits::kV2Inet4Addresses
                    : family == kFamilyInet6 ? limits::kV2Inet6Addresses
                    : family == kFamilyUnix  ? limits::kV2UnixAddresses
                                             : 0;
    }
    if (family == kFamilyUnspec || transport == kTransportUnspec) {
        // §2.2: "The receiver should ignore address information": no address block to
        // find TLVs after either, so the whole block is skipped.
        r.header.kind = Kind::unknown;
        return r;
    }
    if (total - limits::kV2FixedSize < addresses) {
        return fail(Error::v2_short_addresses);
    }
    if (Error e = check_tlvs(header, limits::kV2FixedSize + addresses); e != Error::none) {
        return fail(e);
    }
    if (transport != kTransportStream || family == kFamilyUnix) {
        // §2.2: a receiver that does not implement a valid combination "falls back to the
        // UNSPEC mode": SMTP is a stream over IP; anything else names no client we can use.
        r.header.kind = Kind::unknown;
        return r;
    }
    const char* a = header.data() + limits::kV2FixedSize;
    std::size_t alen = family == kFamilyInet ? 4 : 16;
    std::string_view ports = header.substr(limits::kV2FixedSize + 2 * alen, 4);
    r.header.kind = Kind::proxied;
    r.header.source = endpoint(a, alen, ports.substr(0, 2));
    r.header.destination = endpoint(a + alen, alen, ports.substr(2, 2));
    return r;
}

constexpr std::array<std::uint32_t, 256> make_crc32c_table() {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
        std::uint32_t c = i;
        for (int k = 0; k < 8; ++k) {
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli polynomial
        }
        t[i] = c;
    }
    return t;
}

constexpr auto kCrc32cTable = make_crc32c_table();

}  // namespace

std::string_view error_name(Error e) {
    auto i = static_cast<std::size_t>(e);
    return i < std::size(kErrors) ? kErrors[i].name : "unknown";
}

std::string_view error_meaning(Error e) {
    auto i = static_cast<std::size_t>(e);
    return i < std::size(kErrors) ? kErrors[i].meaning : "unknown";
}

std::string_view kind_name(Kind k) {
    switch (k) {
        case Kind::proxied:
            return "proxied";
        case Kind::local:
            return "local";
        case Kind::unknown:
            return "unknown";
    }
    return "unknown";
}

std::uint32_t crc32c(std::uint32_t crc, std::string_view bytes) {
    crc = ~crc;
    for (char ch : bytes) {
        crc = kCrc32cTable[(crc ^ static_cast<std::uint8_t>(ch)) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

Result parse(std::string_view input) {
    if (input.empty()) {
        return Result{};
    }
    // §2.2 "Identifying the protocol version": the v2 signature starts with CR, the v1
    // line with 'P'; anything else is not this protocol and the connection is dropped.
    if (input[0] == kV2Signature[0]) {
        if (!prefix_matches(input, kV2Signature)) {
            return fail(Error::bad_signature);
        }
        return parse_v2(input);
    }
    if (!prefix_matches(input, kV1Prefix)) {
        return fail(Error::bad_signature);
    }
    if (input.size() <= kV1Prefix.size()) {
        return Result{};
    }
    return parse_v1(input);
}

Result Reader::feed(std::string_view bytes) {
    if (result_.status != Status::need_more) {
        return result_;
    }
    received_ += bytes.size();
    // need_more always leaves room: parse() reports a header that cannot fit as an error.
    std::size_t room = limits::kMaxHeaderSize - buf_.size();
    std::size_t take = std::min(room, bytes.size());
    buf_.append(bytes.substr(0, take));
    result_ = parse(buf_);
    if (result_.status == Status::done) {
        buf_.erase(0, result_.consumed);
        buf_.append(bytes.substr(take));
    } else if (result_.status == Status::error) {
        buf_.clear();
    }
    return result_;
}

std::string Reader::take_rest() {
    if (result_.status != Status::done) {
        return {};
    }
    std::string rest;
    rest.swap(buf_);
    return rest;
}

}  // namespace sluice::proxy
