#include "tools/relay_test.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <thread>

#include "common/ascii.hpp"
#include "common/json.hpp"

namespace sluice::ctl::relay {
namespace {

using Clock = std::chrono::steady_clock;

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// Letters, digits, '-' and '.', at least one dot, no empty label: a host name as it may
// appear in a greeting (RFC 5321 §4.1.2 Domain), case preserved.
bool looks_like_domain(std::string_view s) {
    if (s.empty() || s.size() > 253 || s.find('.') == std::string_view::npos) {
        return false;
    }
    std::size_t label = 0;
    for (char c : s) {
        if (c == '.') {
            if (label == 0) {
                return false;
            }
            label = 0;
            continue;
        }
        bool ok = is_digit(c) || (ascii::to_lower(c) >= 'a' && ascii::to_lower(c) <= 'z') || c == '-' || c == '_';
        if (!ok || ++label > 63) {
            return false;
        }
    }
    return true;
}

// Server text goes to a terminal: a hostile server must not be able to send escape
// sequences through us. Control and non-ASCII bytes become '?'.
std::string printable(std::string_view s, std::size_t max = std::string::npos) {
    std::string out = ascii::printable_ascii(s);
    if (out.size() > max && max >= 3) {
        out.resize(max - 3);
        out += "...";
    }
    return out;
}

void json_field(std::string& out, std::string_view key, std::string_view value) {
    append_json_string(out, key);
    out.push_back(':');
    append_json_string(out, value);
}

std::string address_literal(const IpAddr& ip) {
    if (ip.v4) {
        return "[" + format_ip(ip) + "]";
    }
    return "[IPv6:" + format_ip(ip) + "]";
}

bool bad_wire_bytes(std::string_view s) {
    return s.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

std::string describe_failure(std::string_view what, const Exchange& ex) {
    switch (ex.status) {
        case Exchange::Status::timeout:
            return "timeout waiting for the reply to " + std::string(what);
        case Exchange::Status::closed:
            return "connection closed at " + std::string(what) + ": " + ex.error;
        case Exchange::Status::failed:
            return std::string(what) + ": " + ex.error;
        case Exchange::Status::reply:
            break;
    }
    return std::string(what) + ": unexpected reply " + ex.reply.first_line();
}

}  // namespace

// ---- replies ----

std::string ServerReply::first_line() const {
    std::string out = std::to_string(code);
    if (!lines.empty() && !lines.front().empty()) {
        out.push_back(' ');
        out += lines.front();
    }
    return out;
}

std::string ServerReply::full_text() const {
    std::string out = std::to_string(code);
    for (std::size_t i = 0; i < lines.size(); ++i) {
        out += i == 0 ? " " : " | ";
        out += lines[i];
    }
    return out;
}

ReplyParse parse_reply(std::string_view buf, ServerReply& out) {
    ReplyParse r;
    out.code = 0;
    out.lines.clear();
    std::size_t pos = 0;
    while (true) {
        auto nl = buf.find('\n', pos);
        if (nl == std::string_view::npos) {
            if (buf.size() - pos > limits::kMaxReplyLine) {
                r.status = ParseStatus::error;
                r.error =
                    "reply line longer than " + std::to_string(limits::kMaxReplyLine) + " bytes";
            }
            return r;  // partial
        }
        std::string_view line = buf.substr(pos, nl - pos);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        if (line.size() > limits::kMaxReplyLine) {
            r.status = ParseStatus::error;
            r.error = "reply line longer than " + std::to_string(limits::kMaxReplyLine) + " bytes";
            return r;
        }
        // RFC 5321 §4.2: three digits, the first 1..5, then SP, '-' or the end of line.
        if (line.size() < 3 || !is_digit(line[0]) || !is_digit(line[1]) || !is_digit(line[2]) ||
            line[0] < '1' || line[0] > '5' ||
            (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
            r.status = ParseStatus::error;
            r.error = "malformed reply line \"" + printable(line, 80) + "\"";
            return r;
        }
        int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        if (out.lines.empty()) {
            out.code = code;
        } else if (code != out.code) {
            r.status = ParseStatus::error;
            r.error = "reply code changed within a multi-line reply (" + std::to_string(out.code) +
                      " then " + std::to_string(code) + ")";
            return r;
        }
        if (out.lines.size() >= limits::kMaxReplyLines) {
            r.status = ParseStatus::error;
            r.error = "reply longer than " + std::to_string(limits::kMaxReplyLines) + " lines";
            return r;
        }
        out.lines.emplace_back(line.size() > 4 ? line.substr(4) : std::string_view{});
        pos = nl + 1;
        if (line.size() == 3 || line[3] == ' ') {
            r.status = ParseStatus::complete;
            r.consumed = pos;
            return r;
        }
    }
}

// ---- target and context ----

std::optional<Target> parse_target(std::string_view s, std::string& error) {
    Target t;
    std::string_view host = s;
    std::string_view port;
    if (!s.empty() && s.front() == '[') {
        auto close = s.find(']');
        if (close == std::string_view::npos) {
            error = "missing ']' in \"" + std::string(s) + "\"";
            return std::nullopt;
        }
        host = s.substr(1, close - 1);
        auto rest = s.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') {
                error = "expected [ADDRESS]:PORT, got \"" + std::string(s) + "\"";
                return std::nullopt;
            }
            port = rest.substr(1);
            if (port.empty()) {
                error = "empty port in \"" + std::string(s) + "\"";
                return std::nullopt;
            }
        }
    } else {
        auto colon = s.find(':');
        if (colon != std::string_view::npos && s.find(':', colon + 1) == std::string_view::npos) {
            host = s.substr(0, colon);
            port = s.substr(colon + 1);
            if (port.empty()) {
                error = "empty port in \"" + std::string(s) + "\"";
                return std::nullopt;
            }
        }
        // Two or more colons and no brackets: a bare IPv6 address, default port.
    }
    if (host.empty()) {
        error = "missing host in \"" + std::string(s) + "\"";
        return std::nullopt;
    }
    for (char c : host) {
        if (static_cast<unsigned char>(c) <= ' ' || c == '/' || c == '@' || c == '[' || c == ']') {
            error = "bad host \"" + printable(host) + "\"";
            return std::nullopt;
        }
    }
    if (host.find(':') != std::string_view::npos && !parse_ip(host)) {
        error = "not an IPv6 address: \"" + std::string(host) + "\"";
        return std::nullopt;
    }
    if (!port.empty()) {
        unsigned p = 0;
        auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
        if (ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535) {
            error = "bad port \"" + std::string(port) + "\"";
            return std::nullopt;
        }
        t.port = static_cast<std::uint16_t>(p);
    }
    t.host = std::string(host);
    return t;
}

std::string hostname_from_reply(const ServerReply& reply) {
    if (reply.lines.empty()) {
        return {};
    }
    std::string_view text = reply.lines.front();
    auto end = text.find(' ');
    std::string_view word = text.substr(0, end);
    if (!word.empty() && word.back() == '.') {
        word.remove_suffix(1);
    }
    return looks_like_domain(word) ? std::string(word) : std::string{};
}

std::string guess_local_domain(std::string_view hostname) {
    std::string d = ascii::lower(hostname);
    if (!d.empty() && d.back() == '.') {
        d.pop_back();
    }
    if (!looks_like_domain(d)) {
        return {};
    }
    if (std::count(d.begin(), d.end(), '.') >= 2) {
        d.erase(0, d.find('.') + 1);
    }
    return d;
}

bool valid_plain_address(std::string_view a) {
    auto at = a.rfind('@');
    if (at == std::string_view::npos || at == 0 || at + 1 == a.size() || a.size() > 254) {
        return false;
    }
    for (unsigned char c : a) {
        if (c <= ' ' || c >= 0x7f || c == '<' || c == '>' || c == '"' || c == '(' || c == ')' ||
            c == ',' || c == ';' || c == '\\') {
            return false;
        }
    }
    return a.find('@') == at;
}

std::vector<IpSpelling> ip_literal_spellings(const IpAddr& ip) {
    std::vector<IpSpelling> out;
    char buf[96];
    if (ip.v4) {
        const std::uint8_t* b = &ip.bytes[12];
        std::uint32_t n = (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) |
                          (std::uint32_t{b[2]} << 8) | std::uint32_t{b[3]};
        out.push_back({"dotted", format_ip(ip)});
        // RFC 5321 §4.1.3 IPv6-address-literal holding the IPv4-mapped form.
        out.push_back({"ipv6-mapped", "IPv6:::ffff:" + format_ip(ip)});
        // inet_aton(3) forms: one 32-bit number, hex, octal, short, zero-padded.
        out.push_back({"decimal", std::to_string(n)});
        std::snprintf(buf, sizeof buf, "0x%08x", n);
        out.push_back({"hex", buf});
        std::snprintf(buf, sizeof buf, "0x%02x.0x%02x.0x%02x.0x%02x", b[0], b[1], b[2], b[3]);
        out.push_back({"dotted-hex", buf});
        std::snprintf(buf, sizeof buf, "0%o.0%o.0%o.0%o", b[0], b[1], b[2], b[3]);
        out.push_back({"octal", buf});
        std::snprintf(buf, sizeof buf, "%u.%u", b[0], n & 0xffffffu);
        out.push_back({"short", buf});
        std::snprintf(buf, sizeof buf, "%03u.%03u.%03u.%03u", b[0], b[1], b[2], b[3]);
        out.push_back({"zero-padded", buf});
        if (b[0] == 127) {
            out.push_back({"ipv6-loopback", "IPv6:::1"});
        }
    } else {
        const auto& b = ip.bytes;
        out.push_back({"ipv6", "IPv6:" + format_ip(ip)});
        std::string full = "IPv6:";
        std::string padded = "IPv6:";
        for (int g = 0; g < 8; ++g) {
            unsigned v = (unsigned{b[2 * g]} << 8) | b[2 * g + 1];
            std::snprintf(buf, sizeof buf, g == 0 ? "%x" : ":%x", v);
            full += buf;
            std::snprintf(buf, sizeof buf, g == 0 ? "%04x" : ":%04x", v);
            padded += buf;
        }
        out.push_back({"ipv6-full", full});
        out.push_back({"ipv6-zero-padded", padded});
        // The tag is "IPv6" (RFC 5321 §4.1.3); a parser comparing it case-sensitively may
        // take another path for "ipv6:".
        out.push_back({"ipv6-lower-tag", "ipv6:" + format_ip(ip)});
        out.push_back({"ipv6-upper-hex", "IPv6:" + ascii::upper(format_ip(ip))});
        static constexpr std::uint8_t loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                                      0, 0, 0, 0, 0, 0, 0, 1};
        if (std::memcmp(b.data(), loopback, 16) == 0) {
            out.push_back({"ipv4-loopback", "127.0.0.1"});
        }
    }
    return out;
}

std::vector<Probe> build_catalogue(const ProbeContext& ctx) {
    std::vector<Probe> out;
    const std::string& dom = ctx.local_domain;
    const std::string& srv = ctx.server_name;
    auto at = ctx.outside.rfind('@');
    const std::string ou = ctx.outside.substr(0, at);
    const std::string od = ctx.outside.substr(at + 1);
    const std::string outside = "<" + ctx.outside + ">";
    const std::string sender = "<" + ctx.local_sender + ">";
    const std::string fake_sender = "<sluice-relay-probe-nobody@" + dom + ">";
    const std::string own_literal = address_literal(ctx.server_ip);
    const std::string pct = ou + "%" + od;  // "user%outside"
    const bool have_srv = !srv.empty() && ascii::lower(srv) != dom;

    auto add = [&](std::string name, std::string category, std::string description,
                   std::string mail, std::string rcpt, std::string helo = {}) {
        out.push_back(Probe{std::move(name), std::move(category), std::move(description),
                            helo.empty() ? ctx.helo : std::move(helo), std::move(mail),
                            std::move(rcpt)});
    };

    // (a) The manual open-relay test an operator types: a valid and a fake local sender to
    // an outside
    // recipient; then the plainest relays.
    add("manual-valid-local-sender", "manual",
        "seed 001: a valid local sender to an outside recipient", sender, outside);
    add("manual-fake-local-sender", "manual",
        "seed 001: a made-up sender in the local domain to an outside recipient", fake_sender,
        outside);
    add("outside-to-outside", "manual", "an outside sender to an outside recipient", outside,
        outside);
    add("null-sender", "null-sender", "null reverse-path (a bounce) to an outside recipient", "<>",
        outside);

    // Percent hack: "user%outside@local" is rewritten to "user@outside" by servers that
    // still honour the % convention after accepting the address as local.
    add("percent-hack", "percent", "user%outside@local-domain", sender,
        "<" + pct + "@" + dom + ">");
    if (have_srv) {
        add("percent-hack-server-name", "percent", "user%outside@server-host-name", sender,
            "<" + pct + "@" + srv + ">");
    }
    add("percent-hack-unqualified", "percent",
        "user%outside without a domain: the server appends its own, then routes on %", sender,
        "<" + pct + ">");

    // UUCP bang paths (RFC 976): "outside!user" routes through "outside".
    add("bang-path", "bang", "outside!user", sender, "<" + od + "!" + ou + ">");
    add("bang-path-at-local", "bang", "outside!user@local-domain", sender,
        "<" + od + "!" + ou + "@" + dom + ">");
    add("bang-path-via-local", "bang", "local!outside!user", sender,
        "<" + dom + "!" + od + "!" + ou + ">");

    // Quoted local parts (RFC 5321 §4.1.2 Quoted-string): the quotes hide an address that
    // a second parser (the next hop, a rewriting step) sees unquoted.
    add("quoted-at", "quoted", "\"user@outside\"@local-domain", sender,
        "<\"" + ou + "@" + od + "\"@" + dom + ">");
    add("quoted-percent", "quoted", "\"user%outside\"@local-domain", sender,
        "<\"" + pct + "\"@" + dom + ">");
    add("quoted-bang", "quoted", "\"outside!user\"@local-domain", sender,
        "<\"" + od + "!" + ou + "\"@" + dom + ">");
    add("quoted-at-no-domain", "quoted", "\"user@outside\" with no domain", sender,
        "<\"" + ou + "@" + od + "\">");
    add("quoted-at-ip-literal", "quoted", "\"user@outside\"@[server address]", sender,
        "<\"" + ou + "@" + od + "\"@" + own_literal + ">");

    // Two @: which one is the domain depends on the parser.
    add("double-at", "double-at", "user@outside@local-domain", sender,
        "<" + ou + "@" + od + "@" + dom + ">");
    add("double-at-local-first", "double-at", "user@local-domain@outside", sender,
        "<" + ou + "@" + dom + "@" + od + ">");

    // Source routes (RFC 5321 §4.1.1.3, Appendix C): deprecated, must not be followed to an
    // outside host.
    add("source-route", "source-route", "<@local-domain:user@outside>", sender,
        "<@" + dom + ":" + ctx.outside + ">");
    add("source-route-two-hops", "source-route", "<@local-domain,@other:user@outside>", sender,
        "<@" + dom + ",@hop." + od + ":" + ctx.outside + ">");
    if (have_srv) {
        add("source-route-server-name", "source-route", "<@server-host-name:user@outside>", sender,
            "<@" + srv + ":" + ctx.outside + ">");
    }
    add("source-route-ip-literal", "source-route", "<@[server address]:user@outside>", sender,
        "<@" + own_literal + ":" + ctx.outside + ">");

    // The server's own address as an IP literal, in every spelling, carrying the percent
    // hack: a server that recognises itself in one spelling and not another, or
    // normalises after deciding, relays.
    for (const auto& sp : ip_literal_spellings(ctx.server_ip)) {
        add("ip-literal-" + sp.name, "ip-literal",
            "user%outside@[" + sp.literal + "] (the server's own address)", sender,
            "<" + pct + "@[" + sp.literal + "]>");
    }
    // An IP literal that is not the server: relaying to it is relaying.
    add("outside-ip-literal", "ip-literal", "user@[IPv4 address outside]", sender,
        "<" + ou + "@[" + std::string(defaults::kOutsideIpv4) + "]>");
    add("outside-ip-literal-ipv6", "ip-literal", "user@[IPv6 address outside]", sender,
        "<" + ou + "@[IPv6:" + std::string(defaults::kOutsideIpv6) + "]>");

    // Case and trailing-dot games, and domain-suffix confusion.
    add("outside-upper-case", "case", "user@OUTSIDE", sender, "<" + ou + "@" + ascii::upper(od) + ">");
    add("outside-trailing-dot", "case", "user@OUTSIDE. (absolute name)", sender,
        "<" + ou + "@" + ascii::upper(od) + ".>");
    add("percent-hack-local-upper-case", "case", "user%outside@LOCAL-DOMAIN", sender,
        "<" + pct + "@" + ascii::upper(dom) + ">");
    add("percent-hack-local-trailing-dot", "case", "user%outside@local-domain.", sender,
        "<" + pct + "@" + dom + ".>");
    add("local-domain-as-prefix", "case", "user@local-domain.outside (starts with a local domain)",
        sender, "<" + ou + "@" + dom + "." + od + ">");
    add("local-domain-as-suffix", "case",
        "user@outside-local-domain (ends with a local domain, not on a label boundary)", sender,
        "<" + ou + "@outside-" + dom + ">");

    // HELO spoofing: claiming to be the server itself, or localhost.
    if (have_srv) {
        add("helo-server-name", "helo", "HELO as the server's own host name", sender, outside, srv);
    }
    add("helo-local-domain", "helo", "HELO as the local domain", sender, outside, dom);
    add("helo-ip-literal", "helo", "HELO as the server's own address literal", sender, outside,
        own_literal);
    add("helo-localhost", "helo", "HELO localhost", sender, outside, "localhost");
    return out;
}

// ---- verdicts ----

std::string_view verdict_name(Verdict v) {
    switch (v) {
        case Verdict::pass:
            return "PASS";
        case Verdict::fail:
            return "FAIL";
        case Verdict::temp:
            return "TEMP";
        case Verdict::error:
            return "ERROR";
    }
    return "ERROR";
}

Verdict classify_rcpt(int code) {
    switch (code / 100) {
        case 2:
            return Verdict::fail;
        case 4:
            return Verdict::temp;
        case 5:
            return Verdict::pass;
        default:
            return Verdict::error;
    }
}

// ---- the client ----

std::string command_line(Verb verb, std::string_view arg) {
    switch (verb) {
        case Verb::ehlo:
            return "EHLO " + std::string(arg);
        case Verb::helo:
            return "HELO " + std::string(arg);
        case Verb::mail_from:
            return "MAIL FROM:" + std::string(arg);
        case Verb::rcpt_to:
            return "RCPT TO:" + std::string(arg);
        case Verb::rset:
            return "RSET";
        case Verb::quit:
            return "QUIT";
    }
    return "RSET";
}

void SmtpClient::close() {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
    in_.clear();
}

Exchange SmtpClient::connect(const sockaddr_storage& addr, socklen_t len) {
    close();
    Exchange ex;
    int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ex.error = std::strerror(errno);
        return ex;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
        if (errno != EINPROGRESS) {
            ex.error = std::strerror(errno);
            ::close(fd);
            return ex;
        }
        pollfd p{fd, POLLOUT, 0};
        int n;
        do {
            n = ::poll(&p, 1, static_cast<int>(timeout_.count()));
        } while (n < 0 && errno == EINTR);
        if (n == 0) {
            ex.status = Exchange::Status::timeout;
            ex.error = "connect timed out";
            ::close(fd);
            return ex;
        }
        int err = 0;
        socklen_t elen = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (n < 0 || err != 0) {
            ex.error = std::strerror(n < 0 ? errno : err);
            ::close(fd);
            return ex;
        }
    }
    fd_ = fd;
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) == 0) {
        peer_ = ip_from_sockaddr(reinterpret_cast<sockaddr*>(&ss));
    }
    sl = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) == 0) {
        local_ = ip_from_sockaddr(reinterpret_cast<sockaddr*>(&ss));
    }
    ex = read_reply();
    if (!ex.ok()) {
        ex.error = "greeting: " + ex.error;
    } else if (ex.reply.code == 421) {
        close();
    }
    return ex;
}

bool SmtpClient::send_all(std::string_view data, std::string& error) {
    auto deadline = Clock::now() + timeout_;
    while (!data.empty()) {
        ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            data.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
            pollfd p{fd_, POLLOUT, 0};
            if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) == 0) {
                error = "timeout sending";
                return false;
            }
            continue;
        }
        error = std::strerror(errno);
        return false;
    }
    return true;
}

Exchange SmtpClient::read_reply() {
    Exchange ex;
    auto deadline = Clock::now() + timeout_;
    char buf[4096];
    while (true) {
        if (!in_.empty()) {
            ReplyParse r = parse_reply(in_, ex.reply);
            if (r.status == ParseStatus::complete) {
                in_.erase(0, r.consumed);
                ex.status = Exchange::Status::reply;
                return ex;
            }
            if (r.status == ParseStatus::error) {
                close();
                ex.status = Exchange::Status::failed;
                ex.error = r.error;
                return ex;
            }
        }
        auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        if (left <= 0) {
            close();
            ex.status = Exchange::Status::timeout;
            ex.error = "no reply within " + std::to_string(timeout_.count()) + " ms";
            return ex;
        }
        pollfd p{fd_, POLLIN, 0};
        int n = ::poll(&p, 1, static_cast<int>(left));
        if (n < 0 && errno != EINTR) {
            ex.error = std::strerror(errno);
            close();
            return ex;
        }
        if (n <= 0) {
            continue;  // EINTR or timeout: the deadline check above decides
        }
        ssize_t got = ::recv(fd_, buf, sizeof buf, 0);
        if (got > 0) {
            in_.append(buf, static_cast<std::size_t>(got));
            continue;
        }
        if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            continue;
        }
        ex.status = Exchange::Status::closed;
        ex.error = got == 0 ? "closed by the server" : std::strerror(errno);
        close();
        return ex;
    }
}

Exchange SmtpClient::command(Verb verb, std::string_view arg) {
    Exchange ex;
    if (bad_wire_bytes(arg)) {
        ex.error = "refusing to send a command containing CR, LF or NUL";
        return ex;
    }
    if (fd_ < 0) {
        ex.status = Exchange::Status::closed;
        ex.error = "not connected";
        return ex;
    }
    std::string line = command_line(verb, arg);
    line += "\r\n";
    if (!send_all(line, ex.error)) {
        close();
        ex.status = Exchange::Status::closed;
        return ex;
    }
    ex = read_reply();
    // 421: the server is closing the channel (RFC 5321 §3.8).
    if (ex.ok() && ex.reply.code == 421) {
        close();
    }
    return ex;
}

void SmtpClient::quit() {
    if (fd_ < 0) {
        return;
    }
    Millis saved = timeout_;
    timeout_ = std::min(timeout_, Millis{2000});
    command(Verb::quit);
    timeout_ = saved;
    close();
}

// ---- the battery ----

int RunReport::count(Verdict v) const {
    return static_cast<int>(std::count_if(results.begin(), results.end(),
                                          [v](const ProbeResult& r) { return r.verdict == v; }));
}

namespace {

struct Address {
    sockaddr_storage storage{};
    socklen_t len = 0;
};

class Runner {
  public:
    Runner(const RunOptions& opts, RunReport& report)
        : opts_(opts), report_(report), client_(opts.timeout) {}

    // The first connection: greeting, EHLO, what we learn. False (and start_error) when
    // the battery cannot run.
    bool start();
    struct Outcome {
        bool timed_out = false;  // the probe ended in a timeout
        bool retry = false;      // worth one more try on a fresh connection
    };
    ProbeResult run(const Probe& probe, Outcome& outcome);
    void finish() { client_.quit(); }
    const ProbeContext& context() const { return ctx_; }

  private:
    // EHLO, falling back to HELO when EHLO is refused (RFC 5321 §4.1.4, §3.2), through
    // `send` (client_.command when empty).
    using Send = std::function<Exchange(Verb, std::string_view)>;
    Exchange hello(const std::string& name, const Send& send = {});
    // A fresh connection and its greeting; ok() only for a 220 greeting.
    Exchange reconnect();
    void reset();

    const RunOptions& opts_;
    RunReport& report_;
    SmtpClient client_;
    std::vector<Address> addresses_;
    Address used_;
    ProbeContext ctx_;
    std::string current_helo_;
};

Exchange Runner::hello(const std::string& name, const Send& send) {
    auto command = [&](Verb verb, std::string_view arg) {
        return send ? send(verb, arg) : client_.command(verb, arg);
    };
    Exchange ex = command(Verb::ehlo, name);
    int c = ex.reply.code;
    bool refused = c == 500 || c == 501 || c == 502 || c == 504 || c == 550;
    if (ex.ok() && refused && client_.connected()) {
        Exchange h = command(Verb::helo, name);
        if (h.ok() && h.reply.code / 100 == 2) {
            report_.esmtp = false;
        }
        return h;
    }
    return ex;
}

bool Runner::start() {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    addrinfo* res = nullptr;
    std::string port = std::to_string(opts_.target.port);
    int rc = ::getaddrinfo(opts_.target.host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) {
        report_.start_error = "cannot resolve " + opts_.target.host + ": " + gai_strerror(rc);
        return false;
    }
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
        Address ad;
        std::memcpy(&ad.storage, a->ai_addr, a->ai_addrlen);
        ad.len = a->ai_addrlen;
        addresses_.push_back(ad);
    }
    ::freeaddrinfo(res);

    Exchange greet;
    std::string errors;
    for (const auto& a : addresses_) {
        greet = client_.connect(a.storage, a.len);
        if (greet.ok()) {
            used_ = a;
            break;
        }
        IpAddr ip = ip_from_sockaddr(reinterpret_cast<const sockaddr*>(&a.storage));
        errors += (errors.empty() ? "" : "; ") + format_ip(ip) + ": " + greet.error;
    }
    if (!greet.ok()) {
        report_.start_error = "cannot connect to " + report_.target + ": " + errors;
        return false;
    }
    report_.server_ip = format_ip(client_.peer_ip());
    report_.greeting = printable(greet.reply.first_line());
    if (greet.reply.code != 220) {
        report_.start_error = "server refused the session: " + report_.greeting;
        return false;
    }
    report_.helo = opts_.helo.empty() ? address_literal(client_.local_ip()) : opts_.helo;
    Exchange hi = hello(report_.helo);
    if (!hi.ok()) {
        report_.start_error = describe_failure("EHLO", hi);
        return false;
    }
    if (hi.reply.code / 100 != 2) {
        report_.start_error =
            "server refused HELO " + report_.helo + ": " + printable(hi.reply.first_line());
        return false;
    }
    current_helo_ = report_.helo;
    if (report_.esmtp) {
        for (std::size_t i = 1; i < hi.reply.lines.size(); ++i) {
            std::string kw = ascii::upper(hi.reply.lines[i].substr(0, hi.reply.lines[i].find(' ')));
            report_.starttls_offered |= kw == "STARTTLS";
        }
    }
    report_.server_name = hostname_from_reply(greet.reply);
    if (report_.server_name.empty()) {
        report_.server_name = hostname_from_reply(hi.reply);
    }
    report_.local_domain =
        opts_.local_domain.empty() ? guess_local_domain(report_.server_name) : opts_.local_domain;
    if (report_.local_domain.empty()) {
        report_.start_error =
            "cannot learn the local domain from the greeting; pass --local-domain DOMAIN";
        return false;
    }
    report_.local_sender =
        opts_.local_sender.empty() ? "postmaster@" + report_.local_domain : opts_.local_sender;
    report_.outside = opts_.outside;

    ctx_.local_domain = report_.local_domain;
    ctx_.server_name = report_.server_name;
    ctx_.server_ip = client_.peer_ip();
    ctx_.local_sender = report_.local_sender;
    ctx_.outside = report_.outside;
    ctx_.helo = report_.helo;
    return true;
}

Exchange Runner::reconnect() {
    Exchange greet = client_.connect(used_.storage, used_.len);
    if (!greet.ok()) {
        greet.error = "reconnect: " + greet.error;
    } else if (greet.reply.code != 220) {
        client_.close();
        greet.status = Exchange::Status::failed;
        greet.error = "reconnect: server refused the session: " + greet.reply.first_line();
    }
    current_helo_.clear();
    return greet;
}

void Runner::reset() {
    if (!client_.connected()) {
        return;
    }
    // Never DATA: whatever the RCPT got, the transaction is abandoned here.
    Exchange r = client_.command(Verb::rset);
    if (!r.ok() || r.reply.code / 100 != 2) {
        client_.close();  // state unknown: start the next probe on a fresh connection
    }
}

ProbeResult Runner::run(const Probe& probe, Outcome& outcome) {
    ProbeResult r;
    r.probe = probe;
    outcome = Outcome{};
    // A connection kept from the previous probe may have been closed by the server in
    // between (idle timeout, session limits): finding that out at the first command is
    // no answer to this probe. Neither is 421, the server closing the channel (RFC 5321
    // §3.8), e.g. after too many refused recipients in one session.
    bool first_on_reused = client_.connected();
    auto exchange = [&](Verb verb, std::string_view arg) {
        Exchange ex = client_.command(verb, arg);
        if ((ex.ok() && ex.reply.code == 421) ||
            (first_on_reused && ex.status == Exchange::Status::closed)) {
            outcome.retry = true;
        }
        first_on_reused = false;
        return ex;
    };
    auto error = [&](std::string stage, const Exchange& ex, std::string_view what) {
        r.verdict = Verdict::error;
        r.stage = std::move(stage);
        r.detail = printable(describe_failure(what, ex));
        outcome.timed_out = ex.status == Exchange::Status::timeout;
        return r;
    };

    if (!client_.connected()) {
        Exchange greet = reconnect();
        if (!greet.ok()) {
            r.verdict = Verdict::error;
            r.stage = "connect";
            r.detail = printable(greet.error);
            outcome.timed_out = greet.status == Exchange::Status::timeout;
            return r;
        }
    }
    if (current_helo_ != probe.helo) {
        // A new EHLO also clears any transaction (RFC 5321 §4.1.4).
        Exchange hi = hello(probe.helo, exchange);
        if (!hi.ok()) {
            return error("helo", hi, "EHLO");
        }
        std::string line = printable(hi.reply.first_line());
        if (hi.reply.code / 100 != 2) {
            client_.close();
            r.stage = "helo";
            r.verdict = hi.reply.code / 100 == 5   ? Verdict::pass
                        : hi.reply.code / 100 == 4 ? Verdict::temp
                                                   : Verdict::error;
            r.detail = "HELO " + printable(probe.helo) + " refused: " + line;
            return r;
        }
        current_helo_ = probe.helo;
    }

    Exchange mail = exchange(Verb::mail_from, probe.mail_from);
    if (!mail.ok()) {
        return error("mail", mail, "MAIL");
    }
    r.mail_reply = printable(mail.reply.first_line());
    r.stage = "mail";
    switch (mail.reply.code / 100) {
        case 2:
            break;
        case 4:
            r.verdict = Verdict::temp;
            r.detail = "sender deferred: " + r.mail_reply;
            reset();
            return r;
        case 5:
            r.verdict = Verdict::pass;
            r.detail = "sender refused: " + r.mail_reply;
            reset();
            return r;
        default:
            r.verdict = Verdict::error;
            r.detail = "unexpected reply to MAIL: " + r.mail_reply;
            client_.close();
            return r;
    }

    Exchange rcpt = exchange(Verb::rcpt_to, probe.rcpt_to);
    if (!rcpt.ok()) {
        return error("rcpt", rcpt, "RCPT");
    }
    r.rcpt_reply = printable(rcpt.reply.first_line());
    r.stage = "rcpt";
    r.verdict = classify_rcpt(rcpt.reply.code);
    switch (r.verdict) {
        case Verdict::fail:
            r.detail = "outside recipient accepted: " + r.rcpt_reply;
            break;
        case Verdict::temp:
            r.detail = "deferred (inconclusive): " + r.rcpt_reply;
            break;
        case Verdict::pass:
            r.detail = "refused: " + r.rcpt_reply;
            break;
        case Verdict::error:
            r.detail = "unexpected reply to RCPT: " + r.rcpt_reply;
            break;
    }
    if (r.verdict == Verdict::error) {
        client_.close();
    } else {
        reset();
    }
    return r;
}

std::string pad(std::string_view s, std::size_t width) {
    std::string out(s);
    if (out.size() < width) {
        out.append(width - out.size(), ' ');
    }
    return out;
}

}  // namespace

RunReport run_battery(const RunOptions& opts, const ProgressFn& progress) {
    RunReport report;
    bool v6 = opts.target.host.find(':') != std::string::npos;
    report.target = (v6 ? "[" + opts.target.host + "]" : opts.target.host) + ":" +
                    std::to_string(opts.target.port);
    Runner runner(opts, report);
    if (!runner.start()) {
        return report;
    }
    std::vector<Probe> catalogue = build_catalogue(runner.context());
    int timeouts_in_a_row = 0;
    for (std::size_t i = 0; i < catalogue.size(); ++i) {
        ProbeResult r;
        if (timeouts_in_a_row >= limits::kMaxConsecutiveTimeouts) {
            r.probe = catalogue[i];
            r.verdict = Verdict::error;
            r.stage = "not-run";
            r.detail = "not run: the server stopped answering (" +
                       std::to_string(limits::kMaxConsecutiveTimeouts) + " timeouts in a row)";
        } else {
            if (i > 0 && opts.pace.count() > 0) {
                std::this_thread::sleep_for(opts.pace);
            }
            Runner::Outcome outcome;
            r = runner.run(catalogue[i], outcome);
            if (outcome.retry) {
                // Once, on a fresh connection (the client closed the old one).
                r = runner.run(catalogue[i], outcome);
            }
            timeouts_in_a_row = outcome.timed_out ? timeouts_in_a_row + 1 : 0;
        }
        report.results.push_back(std::move(r));
        if (progress) {
            progress(report.results.back(), i, catalogue.size());
        }
    }
    runner.finish();
    return report;
}

int exit_code(const RunReport& report) {
    if (!report.start_error.empty()) {
        return 2;
    }
    return report.count(Verdict::fail) > 0 ? 1 : 0;
}

std::string format_table(const RunReport& report) {
    std::string out;
    if (!report.start_error.empty()) {
        return "relay-test " + report.target + ": " + report.start_error + "\n";
    }
    out += "relay-test " + report.target + " (" + report.server_ip + "): " + report.greeting + "\n";
    out += "local domain " + report.local_domain + ", local sender " + report.local_sender +
           ", outside recipient " + report.outside + ", HELO " + report.helo +
           (report.esmtp ? "" : " (EHLO refused, HELO used)") + "\n";
    out += std::string("STARTTLS ") +
           (report.starttls_offered ? "offered, not used" : "not offered") +
           ": the probes test the relay policy in plain text\n\n";

    // The paths are the point of the table: shown whole up to 100 bytes; replies cut.
    constexpr std::size_t kName = 40, kMail = 64, kRcpt = 100, kReply = 40;
    std::size_t wn = 5, wm = 9, wr = 7;
    for (const auto& r : report.results) {
        wn = std::max(wn, std::min(kName, r.probe.name.size()));
        wm = std::max(wm, std::min(kMail, r.probe.mail_from.size()));
        wr = std::max(wr, std::min(kRcpt, r.probe.rcpt_to.size()));
    }
    out += pad("PROBE", wn) + "  " + pad("MAIL FROM", wm) + "  " + pad("RCPT TO", wr) + "  " +
           pad("REPLY", kReply) + "  RESULT\n";
    for (const auto& r : report.results) {
        std::string reply = !r.rcpt_reply.empty() && r.stage == "rcpt"   ? r.rcpt_reply
                            : r.stage == "mail" && !r.mail_reply.empty() ? r.mail_reply
                                                                         : r.detail;
        out += pad(printable(r.probe.name, kName), wn) + "  " +
               pad(printable(r.probe.mail_from, kMail), wm) + "  " +
               pad(printable(r.probe.rcpt_to, kRcpt), wr) + "  " +
               pad(printable(reply, kReply), kReply) + "  " + std::string(verdict_name(r.verdict)) +
               "\n";
    }
    int fail = report.count(Verdict::fail);
    int unknown_domain = 0;
    for (const auto& r : report.results) {
        auto text = r.rcpt_reply;
        if (r.verdict == Verdict::pass && r.stage == "rcpt" &&
            (text.find(" 5.1.2") != std::string::npos ||
             text.find(" 5.1.10") != std::string::npos)) {
            ++unknown_domain;
        }
    }
    out += "\n" + std::to_string(report.results.size()) + " probes: " + std::to_string(fail) +
           " FAIL, " + std::to_string(report.count(Verdict::pass)) + " PASS, " +
           std::to_string(report.count(Verdict::temp)) + " TEMP, " +
           std::to_string(report.count(Verdict::error)) + " ERROR. ";
    if (fail > 0) {
        out += "OPEN RELAY: the server accepted an outside recipient in " + std::to_string(fail) +
               " probe(s). No message was sent (RSET, never DATA).\n";
    } else if (report.count(Verdict::pass) == static_cast<int>(report.results.size())) {
        out += "No relay accepted.\n";
    } else {
        out += "No relay accepted in " + std::to_string(report.count(Verdict::pass)) +
               " conclusive probe(s); the others are inconclusive.\n";
    }
    if (unknown_domain > 0) {
        out += "note: " + std::to_string(unknown_domain) +
               " probe(s) were refused for an unknown destination domain (5.1.2), which says "
               "nothing about the relay policy: rerun with --outside set to a real external "
               "address.\n";
    }
    if (report.count(Verdict::temp) + report.count(Verdict::error) > 0) {
        out +=
            "note: TEMP and ERROR rows are inconclusive (deferral, disconnect, timeout); "
            "rerun later or with --pace.\n";
    }
    return out;
}

std::string format_json(const RunReport& report) {
    std::string out = "{";
    json_field(out, "target", report.target);
    if (!report.start_error.empty()) {
        out += ",";
        json_field(out, "error", report.start_error);
        out += ",\"probes\":[]}\n";
        return out;
    }
    out += ",";
    json_field(out, "server_ip", report.server_ip);
    out += ",";
    json_field(out, "greeting", report.greeting);
    out += ",";
    json_field(out, "server_name", report.server_name);
    out += ",";
    json_field(out, "local_domain", report.local_domain);
    out += ",";
    json_field(out, "local_sender", report.local_sender);
    out += ",";
    json_field(out, "outside", report.outside);
    out += ",";
    json_field(out, "helo", report.helo);
    out += std::string(",\"esmtp\":") + (report.esmtp ? "true" : "false");
    out += std::string(",\"starttls_offered\":") + (report.starttls_offered ? "true" : "false");
    out += ",\"starttls_used\":false,\"probes\":[";
    for (std::size_t i = 0; i < report.results.size(); ++i) {
        const auto& r = report.results[i];
        out += i == 0 ? "{" : ",{";
        json_field(out, "name", r.probe.name);
        out += ",";
        json_field(out, "category", r.probe.category);
        out += ",";
        json_field(out, "description", r.probe.description);
        out += ",";
        json_field(out, "helo", r.probe.helo);
        out += ",";
        json_field(out, "mail_from", r.probe.mail_from);
        out += ",";
        json_field(out, "rcpt_to", r.probe.rcpt_to);
        out += ",";
        json_field(out, "result", verdict_name(r.verdict));
        out += ",";
        json_field(out, "stage", r.stage);
        out += ",";
        json_field(out, "mail_reply", r.mail_reply);
        out += ",";
        json_field(out, "rcpt_reply", r.rcpt_reply);
        out += ",";
        json_field(out, "detail", r.detail);
        out += "}";
    }
    int fail = report.count(Verdict::fail);
    out += "],\"summary\":{\"total\":" + std::to_string(report.results.size()) +
           ",\"pass\":" + std::to_string(report.count(Verdict::pass)) +
           ",\"fail\":" + std::to_string(fail) +
           ",\"temp\":" + std::to_string(report.count(Verdict::temp)) +
           ",\"error\":" + std::to_string(report.count(Verdict::error)) + "}";
    out += std::string(",\"open_relay\":") + (fail > 0 ? "true" : "false") + "}\n";
    return out;
}

}  // namespace sluice::ctl::relay
