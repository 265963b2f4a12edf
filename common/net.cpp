#include "common/net.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace sluice {

std::optional<IpAddr> parse_ip(std::string_view s) {
    if (s.empty() || s.size() >= INET6_ADDRSTRLEN) {
        return std::nullopt;
    }
    char buf[INET6_ADDRSTRLEN];
    std::memcpy(buf, s.data(), s.size());
    buf[s.size()] = '\0';
    IpAddr ip;
    in_addr a4;
    if (inet_pton(AF_INET, buf, &a4) == 1) {
        ip.v4 = true;
        ip.bytes[10] = 0xff;
        ip.bytes[11] = 0xff;
        std::memcpy(&ip.bytes[12], &a4, 4);
        return ip;
    }
    in6_addr a6;
    if (inet_pton(AF_INET6, buf, &a6) == 1) {
        std::memcpy(ip.bytes.data(), &a6, 16);
        // An IPv4-mapped IPv6 address is the IPv4 address: one key, one decision.
        static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        ip.v4 = std::memcmp(ip.bytes.data(), mapped, 12) == 0;
        return ip;
    }
    return std::nullopt;
}

std::string format_ip(const IpAddr& ip) {
    if (ip.v4) {
        char buf[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &ip.bytes[12], buf, sizeof buf);
        return buf;
    }
    // RFC 5952 §4 by hand: glibc's inet_ntop writes ::/96 addresses ("IPv4-compatible",
    // deprecated by RFC 4291 §2.5.5.1) as ::a.b.c.d, which RFC 5952 §5 keeps for
    // IPv4-mapped addresses only (and which is longer than the hex form).
    std::array<unsigned, 8> g{};
    for (std::size_t i = 0; i < 8; ++i) {
        g[i] = static_cast<unsigned>(ip.bytes[2 * i]) << 8 | ip.bytes[2 * i + 1];
    }
    // The longest run of two or more zero groups becomes "::" (the first, on a tie).
    std::size_t best = 8, best_len = 1;
    for (std::size_t i = 0; i < 8;) {
        std::size_t j = i;
        while (j < 8 && g[j] == 0) {
            ++j;
        }
        if (j - i > best_len) {
            best = i;
            best_len = j - i;
        }
        i = j == i ? i + 1 : j;
    }
    std::string out;
    char hex[8];
    for (std::size_t i = 0; i < 8; ++i) {
        if (i == best) {
            out += "::";
            i += best_len - 1;
            continue;
        }
        if (!out.empty() && out.back() != ':') {
            out.push_back(':');
        }
        auto r = std::to_chars(hex, hex + sizeof hex, g[i], 16);
        out.append(hex, r.ptr);
    }
    return out;
}

IpAddr ip_from_sockaddr(const sockaddr* sa) {
    IpAddr ip;
    if (sa->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        ip.v4 = true;
        ip.bytes[10] = 0xff;
        ip.bytes[11] = 0xff;
        std::memcpy(&ip.bytes[12], &in->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        std::memcpy(ip.bytes.data(), &in6->sin6_addr, 16);
        static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        ip.v4 = std::memcmp(ip.bytes.data(), mapped, 12) == 0;
    }
    return ip;
}

namespace {

bool bit(const IpAddr& ip, unsigned i) {
    return (ip.bytes[i / 8] >> (7 - i % 8)) & 1;
}

}  // namespace

bool Cidr::contains(const IpAddr& ip) const {
    for (unsigned i = 0; i < prefix; ++i) {
        if (bit(ip, i) != bit(base, i)) {
            return false;
        }
    }
    return true;
}

IpAddr Cidr::last() const {
    IpAddr out = base;
    for (unsigned i = prefix; i < 128; ++i) {
        out.bytes[i / 8] |= static_cast<std::uint8_t>(1u << (7 - i % 8));
    }
    return out;
}

std::optional<Cidr> parse_cidr(std::string_view s, std::string& error) {
    auto slash = s.find('/');
    auto ip = parse_ip(s.substr(0, slash));
    if (!ip) {
        error = "not an IP address: \"" + std::string(s.substr(0, slash)) + "\"";
        return std::nullopt;
    }
    unsigned bits = ip->v4 ? 32 : 128;
    if (slash != std::string_view::npos) {
        auto p = s.substr(slash + 1);
        unsigned v = 0;
        auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
        if (ec != std::errc() || end != p.data() + p.size() || p.empty() || v > bits) {
            error = "bad prefix length in \"" + std::string(s) + "\"";
            return std::nullopt;
        }
        bits = v;
    }
    Cidr c{*ip, ip->v4 ? bits + 96 : bits};
    for (unsigned i = c.prefix; i < 128; ++i) {
        if (bit(c.base, i)) {
            error = "host bits set in \"" + std::string(s) + "\"";
            return std::nullopt;
        }
    }
    return c;
}

std::string format_cidr(const Cidr& c) {
    return format_ip(c.base) + "/" + std::to_string(c.family_prefix());
}

std::optional<SockAddr> parse_sockaddr(std::string_view s, std::string& error) {
    std::string_view host, port;
    if (!s.empty() && s.front() == '[') {
        auto close = s.find(']');
        if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
            error = "expected [IPv6]:PORT, got \"" + std::string(s) + "\"";
            return std::nullopt;
        }
        host = s.substr(1, close - 1);
        port = s.substr(close + 2);
    } else {
        auto colon = s.rfind(':');
        if (colon == std::string_view::npos || s.find(':') != colon) {
            error = "expected IP:PORT or [IPv6]:PORT, got \"" + std::string(s) + "\"";
            return std::nullopt;
        }
        host = s.substr(0, colon);
        port = s.substr(colon + 1);
    }
    auto ip = parse_ip(host);
    if (!ip) {
        error = "not an IP address: \"" + std::string(host) + "\"";
        return std::nullopt;
    }
    unsigned p = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc() || end != port.data() + port.size() || port.empty() || p > 65535) {
        error = "bad port in \"" + std::string(s) + "\"";
        return std::nullopt;
    }
    SockAddr a;
    a.ip = *ip;
    a.port = static_cast<std::uint16_t>(p);
    bool v6_literal = host.find(':') != std::string_view::npos;
    if (ip->v4 && !v6_literal) {
        auto* in = reinterpret_cast<sockaddr_in*>(&a.storage);
        in->sin_family = AF_INET;
        in->sin_port = htons(a.port);
        std::memcpy(&in->sin_addr, &ip->bytes[12], 4);
        a.len = sizeof(sockaddr_in);
    } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(a.port);
        std::memcpy(&in6->sin6_addr, ip->bytes.data(), 16);
        a.len = sizeof(sockaddr_in6);
    }
    return a;
}

std::string format_sockaddr(const SockAddr& a) {
    if (a.storage.ss_family == AF_INET6) {
        return "[" + format_ip(a.ip) + "]:" + std::to_string(a.port);
    }
    return format_ip(a.ip) + ":" + std::to_string(a.port);
}

}  // namespace sluice
