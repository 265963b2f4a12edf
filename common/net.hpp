#pragma once
// IP addresses, CIDR prefixes and "host:port" socket addresses. Pure, no I/O: used by
// the config loader, the policy (client facts) and the CIDR maps.

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice {

// An IPv4 or IPv6 address. IPv4 is held as an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
// so one 128-bit ordering serves both families in CIDR maps.
struct IpAddr {
    std::array<std::uint8_t, 16> bytes{};
    bool v4 = false;

    friend bool operator==(const IpAddr&, const IpAddr&) = default;
    friend auto operator<=>(const IpAddr&, const IpAddr&) = default;
};

std::optional<IpAddr> parse_ip(std::string_view s);
std::string format_ip(const IpAddr& ip);
IpAddr ip_from_sockaddr(const sockaddr* sa);

struct Cidr {
    IpAddr base;      // masked to `prefix`
    unsigned prefix;  // in bits of the 128-bit form: an IPv4 /24 is stored as 96 + 24

    unsigned family_prefix() const { return base.v4 ? prefix - 96 : prefix; }
    bool contains(const IpAddr& ip) const;
    IpAddr last() const;  // highest address in the range
};

// "192.0.2.0/24", "2001:db8::/32", or a bare address (a host route). Host bits set below
// the prefix are an error (a likely typo), reported through `error`.
std::optional<Cidr> parse_cidr(std::string_view s, std::string& error);
std::string format_cidr(const Cidr& c);

struct SockAddr {
    sockaddr_storage storage{};
    socklen_t len = 0;
    IpAddr ip;
    std::uint16_t port = 0;
};

// "127.0.0.1:2525", "[::1]:2525". The host must be an IP literal (no DNS at start-up).
std::optional<SockAddr> parse_sockaddr(std::string_view s, std::string& error);
std::string format_sockaddr(const SockAddr& a);

}  // namespace sluice
