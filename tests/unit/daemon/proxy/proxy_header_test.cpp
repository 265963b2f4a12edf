// daemon/proxy/proxy_header: every header form of haproxy's doc/proxy-protocol.txt, every
// error, at every fragment size, and the client's bytes after the header kept intact.
#include "daemon/proxy/proxy_header.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sluice::proxy {
namespace {

using namespace std::string_literals;

const std::string kSig("\r\n\r\n\0\r\nQUIT\n", 12);

std::string be16(std::size_t v) {
    return {static_cast<char>((v >> 8) & 0xff), static_cast<char>(v & 0xff)};
}

std::string be32(std::uint32_t v) {
    return be16(v >> 16) + be16(v & 0xffff);
}

std::string tlv(std::uint8_t type, const std::string& value) {
    return std::string(1, static_cast<char>(type)) + be16(value.size()) + value;
}

// A v2 header: version/command byte, family/transport byte, then `body` (addresses, TLVs).
std::string v2(std::uint8_t ver_cmd, std::uint8_t fam, const std::string& body) {
    return kSig + static_cast<char>(ver_cmd) + static_cast<char>(fam) + be16(body.size()) + body;
}

// TCP over IPv4: 192.0.2.9:40000 -> 198.51.100.1:25.
const std::string kInet4Block = "\xc0\x00\x02\x09\xc6\x33\x64\x01"s + be16(40000) + be16(25);

std::string inet6_block() {
    std::string src(16, '\0'), dst(16, '\0');
    src[0] = '\x20', src[1] = '\x01', src[2] = '\x0d', src[3] = '\xb8', src[15] = '\x07';
    dst[0] = '\x20', dst[1] = '\x01', dst[2] = '\x0d', dst[3] = '\xb8', dst[15] = '\x01';
    return src + dst + be16(50000) + be16(465);
}

// Feeds `input` in pieces of `size` bytes; returns the first result that is not need_more
// (or the last need_more) and the reader's rest.
struct Fed {
    Result result;
    std::string rest;
    std::size_t calls_to_result = 0;
};

Fed feed_in_pieces(const std::string& input, std::size_t size) {
    Reader reader;
    Fed out;
    for (std::size_t at = 0; at < input.size(); at += size) {
        out.result = reader.feed(std::string_view(input).substr(at, size));
        ++out.calls_to_result;
        if (out.result.status != Status::need_more) {
            // The rest of the input arrives later: it is the client's, after the header.
            std::string rest = reader.take_rest();
            if (out.result.status == Status::done) {
                rest += input.substr(std::min(input.size(), at + size));
            }
            out.rest = rest;
            return out;
        }
    }
    return out;
}

// At every fragment size, `header` followed by `after` parses to the same result, and the
// bytes after the header come back exactly.
Header expect_done(const std::string& header, const std::string& after = "EHLO x\r\n") {
    const std::string input = header + after;
    auto whole = parse(input);
    EXPECT_EQ(whole.status, Status::done) << error_name(whole.error);
    EXPECT_EQ(whole.consumed, header.size());
    // Every strict prefix of the header needs more: no early verdict, no early error.
    for (std::size_t n = 0; n < header.size(); ++n) {
        auto r = parse(std::string_view(header).substr(0, n));
        EXPECT_EQ(r.status, Status::need_more) << "prefix " << n << ": " << error_name(r.error);
    }
    for (std::size_t size = 1; size <= input.size(); ++size) {
        auto fed = feed_in_pieces(input, size);
        EXPECT_EQ(fed.result.status, Status::done) << "fragment size " << size;
        EXPECT_EQ(fed.result.consumed, header.size()) << "fragment size " << size;
        EXPECT_EQ(fed.rest, after) << "fragment size " << size;
        EXPECT_EQ(fed.result.header.kind, whole.header.kind);
        EXPECT_EQ(fed.result.header.source.ip, whole.header.source.ip);
        EXPECT_EQ(fed.result.header.source.port, whole.header.source.port);
    }
    return whole.header;
}

// At every fragment size the same error, reported no later than the byte at `known_at`
// (the first byte that shows it), whatever follows.
void expect_error(const std::string& input, Error e, std::size_t known_at = std::string::npos) {
    auto whole = parse(input);
    EXPECT_EQ(whole.status, Status::error) << "got " << error_name(whole.error);
    EXPECT_EQ(whole.error, e) << "got " << error_name(whole.error);
    for (std::size_t size = 1; size <= input.size(); ++size) {
        auto fed = feed_in_pieces(input, size);
        EXPECT_EQ(fed.result.status, Status::error) << "fragment size " << size;
        EXPECT_EQ(fed.result.error, e) << "fragment size " << size;
        EXPECT_TRUE(fed.rest.empty());
    }
    if (known_at != std::string::npos) {
        auto r = parse(std::string_view(input).substr(0, known_at + 1));
        EXPECT_EQ(r.status, Status::error) << "not known at byte " << known_at;
        EXPECT_EQ(r.error, e);
    }
}

std::string ip(const Endpoint& e) {
    return format_ip(e.ip);
}

// ---- version 1 (§2.1) --------------------------------------------------------------

TEST(ProxyV1, Tcp4) {
    auto h = expect_done("PROXY TCP4 192.0.2.9 198.51.100.1 40000 25\r\n");
    EXPECT_EQ(h.version, 1);
    EXPECT_EQ(h.kind, Kind::proxied);
    EXPECT_EQ(ip(h.source), "192.0.2.9");
    EXPECT_TRUE(h.source.ip.v4);
    EXPECT_EQ(h.source.port, 40000);
    EXPECT_EQ(ip(h.destination), "198.51.100.1");
    EXPECT_EQ(h.destination.port, 25);
}

TEST(ProxyV1, Tcp6FullCompressedAndMapped) {
    auto h =
        expect_done("PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0007 2001:db8::1 65535 0\r\n");
    EXPECT_EQ(ip(h.source), "2001:db8::7");
    EXPECT_EQ(h.source.port, 65535);
    EXPECT_EQ(h.destination.port, 0);
    EXPECT_FALSE(h.source.ip.v4);
    // A balancer on a dual-stack socket prints an IPv4 client as a mapped address: it is
    // that IPv4 client (one key for caps and maps).
    h = expect_done("PROXY TCP6 ::ffff:192.0.2.9 ::1 1 25\r\n");
    EXPECT_TRUE(h.source.ip.v4);
    EXPECT_EQ(ip(h.source), "192.0.2.9");
}

TEST(ProxyV1, UnknownShortAndLongestLine) {
    auto h = expect_done("PROXY UNKNOWN\r\n");
    EXPECT_EQ(h.kind, Kind::unknown);
    // §2.1's worst case is exactly 107 bytes with CRLF, and is accepted.
    std::string f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    std::string line = "PROXY UNKNOWN " + f + " " + f + " 65535 65535\r\n";
    ASSERT_EQ(line.size(), limits::kV1MaxLine);
    h = expect_done(line);
    EXPECT_EQ(h.kind, Kind::unknown);
}

TEST(ProxyV1, TooLongIsRefusedAtByte107) {
    std::string f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    std::string line = "PROXY UNKNOWN " + f + " " + f + " 65535 655350\r\n";  // 108
    expect_error(line, Error::v1_too_long, 106);
    expect_error("PROXY TCP4 " + std::string(200, '1'), Error::v1_too_long, 106);
}

TEST(ProxyV1, LineEndings) {
    expect_error("PROXY TCP4 192.0.2.9 198.51.100.1 1 25\n", Error::v1_bad_line_ending);
    expect_error("PROXY TCP4 192.0.2.9 198.51.100.1 1 25\rX\n", Error::v1_bad_line_ending);
    expect_error("PROXY UNKNOWN\n\r\n", Error::v1_bad_line_ending);
}

TEST(ProxyV1, Signature) {
    expect_error("EHLO client.test\r\n", Error::bad_signature, 0);
    expect_error("proxy TCP4 192.0.2.9 198.51.100.1 1 25\r\n", Error::bad_signature, 0);
    expect_error("PROXY\tTCP4 192.0.2.9 198.51.100.1 1 25\r\n", Error::bad_signature, 5);
    expect_error("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"s, Error::bad_signature, 0);
}

TEST(ProxyV1, ProtocolAndSyntax) {
    expect_error("PROXY TCP5 192.0.2.9 198.51.100.1 1 25\r\n", Error::v1_bad_protocol);
    expect_error("PROXY UDP4 192.0.2.9 198.51.100.1 1 25\r\n", Error::v1_bad_protocol);
    expect_error("PROXY UNKNOWNX\r\n", Error::v1_bad_protocol);
    expect_error("PROXY \r\n", Error::v1_bad_syntax);
    expect_error("PROXY TCP4  192.0.2.9 198.51.100.1 1 25\r\n", Error::v1_bad_syntax);
    expect_error("PROXY TCP4 192.0.2.9 198.51.100.1 1 25 \r\n", Error::v1_bad_syntax);
    expect_error("PROXY TCP4 192.0.2.9 198.51.100.1 1\r\n", Error::v1_bad_syntax);
    expect_error("PROXY TCP4 192.0.2.9 198.51.100.1 1 25 7\r\n", Error::v1_bad_syntax);
    expect_error("PROXY TCP4\r\n", Error::v1_bad_syntax);
}

TEST(ProxyV1, Addresses) {
    for (const char* bad : {"192.0.2.09", "192.0.2.256", "192.0.2", "192.0.2.9.1", "192.0..9",
                            "::1", "0x7f.0.0.1", "192.0.2.9a", "-1.0.0.1", "1.2.3.4 "}) {
        expect_error("PROXY TCP4 "s + bad + " 198.51.100.1 1 25\r\n",
                     std::string(bad) == "1.2.3.4 " ? Error::v1_bad_syntax : Error::v1_bad_address);
    }
    // Each family's own form only.
    expect_error("PROXY TCP6 192.0.2.9 ::1 1 25\r\n", Error::v1_bad_address);
    expect_error("PROXY TCP6 2001:db8:::1 ::1 1 25\r\n", Error::v1_bad_address);
    expect_error("PROXY TCP6 2001:db8::1%eth0 ::1 1 25\r\n", Error::v1_bad_address);
    expect_error("PROXY TCP4 192.0.2.9 ::1 1 25\r\n", Error::v1_bad_address);
}

TEST(ProxyV1, Ports) {
    for (const char* bad : {"65536", "01", "00", "-1", "+1", "1a", "123456"}) {
        expect_error("PROXY TCP4 192.0.2.9 198.51.100.1 "s + bad + " 25\r\n", Error::v1_bad_port);
        expect_error("PROXY TCP4 192.0.2.9 198.51.100.1 25 "s + bad + "\r\n", Error::v1_bad_port);
    }
}

// ---- version 2 (§2.2) --------------------------------------------------------------

TEST(ProxyV2, TcpOverIpv4) {
    auto h = expect_done(v2(0x21, 0x11, kInet4Block));
    EXPECT_EQ(h.version, 2);
    EXPECT_EQ(h.kind, Kind::proxied);
    EXPECT_EQ(ip(h.source), "192.0.2.9");
    EXPECT_TRUE(h.source.ip.v4);
    EXPECT_EQ(h.source.port, 40000);
    EXPECT_EQ(ip(h.destination), "198.51.100.1");
    EXPECT_EQ(h.destination.port, 25);
}

TEST(ProxyV2, TcpOverIpv6) {
    auto h = expect_done(v2(0x21, 0x21, inet6_block()));
    EXPECT_EQ(ip(h.source), "2001:db8::7");
    EXPECT_EQ(h.source.port, 50000);
    EXPECT_EQ(ip(h.destination), "2001:db8::1");
    EXPECT_EQ(h.destination.port, 465);
}

TEST(ProxyV2, ClientBytesInTheSameReadAreKept) {
    // A TLS ClientHello's first bytes right behind the header, and a large first read.
    std::string hello = "\x16\x03\x01\x00\xf4\x01\x00\x00\xf0\x03\x03"s + std::string(64, 'r');
    expect_done(v2(0x21, 0x11, kInet4Block), hello);
    Reader reader;
    std::string big(65536, 'x');
    auto r = reader.feed(v2(0x21, 0x11, kInet4Block) + big);
    ASSERT_EQ(r.status, Status::done);
    EXPECT_EQ(reader.take_rest(), big);
    EXPECT_EQ(reader.take_rest(), "");  // once
}

TEST(ProxyV2, LocalIgnoresFamilyAndSkipsTheBlock) {
    EXPECT_EQ(expect_done(v2(0x20, 0x00, "")).kind, Kind::local);
    // §2.2: "must not assume zero is presented for LOCAL connections".
    EXPECT_EQ(expect_done(v2(0x20, 0x11, kInet4Block + tlv(0x04, "pad"))).kind, Kind::local);
    // The family is ignored for LOCAL, even an undefined one, and so is the content.
    EXPECT_EQ(expect_done(v2(0x20, 0xff, "\x01\x02"s)).kind, Kind::local);
}

TEST(ProxyV2, UnspecAndUnixFallBackToTheConnection) {
    EXPECT_EQ(expect_done(v2(0x21, 0x00, "")).kind, Kind::unknown);
    EXPECT_EQ(expect_done(v2(0x21, 0x00, kInet4Block)).kind, Kind::unknown);
    EXPECT_EQ(expect_done(v2(0x21, 0x10, kInet4Block)).kind, Kind::unknown);
    std::string unix_block(216, '\0');
    std::string path = "/run/balancer.sock";
    unix_block.replace(0, path.size(), path);
    EXPECT_EQ(expect_done(v2(0x21, 0x31, unix_block)).kind, Kind::unknown);
    EXPECT_EQ(expect_done(v2(0x21, 0x31, unix_block + tlv(0xe0, "x"))).kind, Kind::unknown);
    // UDP names a datagram flow: not an SMTP client; the connection's own address serves.
    EXPECT_EQ(expect_done(v2(0x21, 0x12, kInet4Block)).kind, Kind::unknown);
    expect_error(v2(0x21, 0x31, std::string(215, '\0')), Error::v2_short_addresses);
}

TEST(ProxyV2, TlvsAreSkipped) {
    // NOOP, a custom and an experimental type, and the SSL TLV with sub-TLVs (§2.2.6).
    std::string ssl = "\x01"s + be32(0) + tlv(0x21, "TLSv1.3") + tlv(0x22, "client.example");
    auto body = kInet4Block + tlv(0x04, "") + tlv(0xe0, "anything\0at all"s) +
                tlv(0xf0, std::string(300, '\xff')) + tlv(0x20, ssl) +
                tlv(0x05, std::string(128, 'u'));
    auto h = expect_done(v2(0x21, 0x11, body));
    EXPECT_EQ(h.kind, Kind::proxied);
    EXPECT_EQ(ip(h.source), "192.0.2.9");
}

TEST(ProxyV2, GarbageTlvsAreRefused) {
    // A TLV whose length runs past the header, one cut inside its length, and stray bytes.
    expect_error(v2(0x21, 0x11, kInet4Block + "\x04\x00\x10xyz"s), Error::v2_bad_tlv);
    expect_error(v2(0x21, 0x11, kInet4Block + "\x04\x00"s), Error::v2_bad_tlv);
    expect_error(v2(0x21, 0x11, kInet4Block + "\xe0"s), Error::v2_bad_tlv);
    expect_error(v2(0x21, 0x11, kInet4Block + tlv(0x04, "ok") + "\x99\xff\xff"s),
                 Error::v2_bad_tlv);
    expect_error(v2(0x21, 0x21, inet6_block() + "\x01\x00\x05"s), Error::v2_bad_tlv);
}

TEST(ProxyV2, Crc32c) {
    EXPECT_EQ(crc32c(0, "123456789"), 0xE3069283u);  // RFC 3720 B.4's check value
    // §2.2.3: the checksum covers the whole header with its own value zeroed.
    std::string body = kInet4Block + tlv(0x03, std::string(4, '\0'));
    std::string h = v2(0x21, 0x11, body);
    std::uint32_t c = crc32c(0, h);
    std::string good = h.substr(0, h.size() - 4) + be32(c);
    EXPECT_EQ(expect_done(good).kind, Kind::proxied);
    std::string bad = good;
    bad[20] ^= 1;  // the client address changed in transit
    expect_error(bad, Error::v2_bad_checksum);
    expect_error(v2(0x21, 0x11, kInet4Block + tlv(0x03, "abc")), Error::v2_bad_tlv);
}

TEST(ProxyV2, VersionCommandFamily) {
    expect_error(v2(0x11, 0x11, kInet4Block), Error::v2_bad_version, 12);
    expect_error(v2(0x31, 0x11, kInet4Block), Error::v2_bad_version, 12);
    expect_error(v2(0x22, 0x11, kInet4Block), Error::v2_bad_command, 12);
    expect_error(v2(0x2f, 0x11, kInet4Block), Error::v2_bad_command, 12);
    expect_error(v2(0x21, 0x41, kInet4Block), Error::v2_bad_family, 15);
    expect_error(v2(0x21, 0x13, kInet4Block), Error::v2_bad_family, 15);
    expect_error(v2(0x21, 0x11, kInet4Block.substr(0, 11)), Error::v2_short_addresses);
    expect_error(v2(0x21, 0x21, inet6_block().substr(0, 35)), Error::v2_short_addresses);
    // A broken signature is refused at the first byte that differs.
    std::string sig = v2(0x21, 0x11, kInet4Block);
    sig[4] = 'X';
    expect_error(sig, Error::bad_signature, 4);
}

TEST(ProxyV2, SizeBound) {
    // Exactly kV2MaxSize is taken; one byte more is refused from the length field alone.
    std::size_t room =
        limits::kV2MaxSize - limits::kV2FixedSize - kInet4Block.size() - limits::kTlvHeaderSize;
    expect_done(v2(0x21, 0x11, kInet4Block + tlv(0x04, std::string(room, 'n'))));
    std::string over = v2(0x21, 0x11, kInet4Block + tlv(0x04, std::string(room + 1, 'n')));
    expect_error(over, Error::v2_too_long, 15);
    std::string huge = kSig + "\x21\x11\xff\xff"s;
    expect_error(huge, Error::v2_too_long, 15);
}

TEST(ProxyReader, HoldsAtMostOneHeaderWhileWaiting) {
    // A peer that trickles a 2048-byte header never makes the reader keep more, and the
    // reader answers need_more until the last byte.
    std::size_t room =
        limits::kV2MaxSize - limits::kV2FixedSize - kInet4Block.size() - limits::kTlvHeaderSize;
    std::string h = v2(0x21, 0x11, kInet4Block + tlv(0x04, std::string(room, 'n')));
    Reader reader;
    for (std::size_t i = 0; i + 1 < h.size(); ++i) {
        ASSERT_EQ(reader.feed(h.substr(i, 1)).status, Status::need_more);
    }
    EXPECT_EQ(reader.received(), h.size() - 1);
    EXPECT_EQ(reader.feed(h.substr(h.size() - 1) + "rest").status, Status::done);
    EXPECT_EQ(reader.take_rest(), "rest");
    // Later bytes do not change a verdict.
    EXPECT_EQ(reader.feed("PROXY garbage").status, Status::done);
}

TEST(ProxyErrors, EveryErrorHasANameAndAMeaning) {
    for (std::size_t i = 0; i < static_cast<std::size_t>(Error::count_); ++i) {
        auto e = static_cast<Error>(i);
        EXPECT_FALSE(error_name(e).empty());
        EXPECT_NE(error_name(e), "unknown");
        EXPECT_FALSE(error_meaning(e).empty());
    }
    EXPECT_EQ(error_name(Error::v2_bad_tlv), "v2_bad_tlv");
}

}  // namespace
}  // namespace sluice::proxy
