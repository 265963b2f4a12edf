#include "daemon/dns/message.hpp"

#include <algorithm>
#include <cctype>

namespace sluice::dns {
namespace {

struct Reader {
    std::string_view wire;
    std::size_t pos = 0;
    std::string error;

    bool need(std::size_t n) {
        if (wire.size() - pos < n) {
            error = "truncated message";
            return false;
        }
        return true;
    }
    std::uint16_t u16() {
        auto v = static_cast<std::uint16_t>((static_cast<std::uint8_t>(wire[pos]) << 8) |
                                            static_cast<std::uint8_t>(wire[pos + 1]));
        pos += 2;
        return v;
    }
    std::uint32_t u32() {
        std::uint32_t hi = u16();
        return (hi << 16) | u16();
    }

    // A possibly compressed name at `pos` (RFC 1035 §4.1.4); `pos` moves past it.
    std::optional<std::string> name() {
        std::string out;
        std::size_t at = pos;
        std::size_t wire_len = 1;  // the final root label
        bool jumped = false;
        int jumps = 0;
        while (true) {
            if (at >= wire.size()) {
                error = "name runs past the message";
                return std::nullopt;
            }
            auto len = static_cast<std::uint8_t>(wire[at]);
            if ((len & 0xC0) == 0xC0) {
                if (at + 1 >= wire.size()) {
                    error = "truncated compression pointer";
                    return std::nullopt;
                }
                std::size_t target = ((len & 0x3Fu) << 8) | static_cast<std::uint8_t>(wire[at + 1]);
                // Only backwards: a pointer forward or to itself could loop.
                if (target >= at || ++jumps > limits::pointers) {
                    error = "compression loop";
                    return std::nullopt;
                }
                if (!jumped) {
                    pos = at + 2;
                    jumped = true;
                }
                at = target;
                continue;
            }
            if ((len & 0xC0) != 0) {
                error = "unknown label type";
                return std::nullopt;
            }
            if (len == 0) {
                if (!jumped) {
                    pos = at + 1;
                }
                return out;
            }
            if (len > limits::label) {
                error = "label longer than 63";
                return std::nullopt;
            }
            wire_len += 1 + len;
            if (wire_len > limits::name) {
                error = "name longer than 255";
                return std::nullopt;
            }
            if (at + 1 + len > wire.size()) {
                error = "label runs past the message";
                return std::nullopt;
            }
            if (!out.empty()) {
                out += '.';
            }
            for (std::size_t i = 0; i < len; ++i) {
                out += static_cast<char>(std::tolower(static_cast<unsigned char>(wire[at + 1 + i])));
            }
            at += 1 + len;
        }
    }
};

}  // namespace

std::string_view to_string(Type t) {
    switch (t) {
        case Type::a:
            return "A";
        case Type::cname:
            return "CNAME";
        case Type::soa:
            return "SOA";
        case Type::mx:
            return "MX";
        case Type::aaaa:
            return "AAAA";
    }
    return "?";
}

std::string_view to_string(Status s) {
    switch (s) {
        case Status::ok:
            return "ok";
        case Status::nodata:
            return "nodata";
        case Status::nxdomain:
            return "nxdomain";
        case Status::cname:
            return "cname";
        case Status::temporary:
            return "temporary";
        case Status::malformed:
            return "malformed";
    }
    return "?";
}

std::string normalise_name(std::string_view name) {
    std::string out(name);
    for (auto& c : out) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    while (!out.empty() && out.back() == '.') {
        out.pop_back();
    }
    return out;
}

std::optional<Response> parse_response(std::string_view wire, std::string& error) {
    Reader r;
    r.wire = wire;
    Response out;
    if (!r.need(12)) {
        error = r.error;
        return std::nullopt;
    }
    out.id = r.u16();
    std::uint16_t flags = r.u16();
    if ((flags & 0x8000) == 0) {
        error = "not a response";
        return std::nullopt;
    }
    out.truncated = (flags & 0x0200) != 0;
    out.rcode = static_cast<Rcode>(flags & 0x000F);
    std::uint16_t qd = r.u16(), an = r.u16(), ns = r.u16();
    r.u16();  // additional: not read
    for (std::uint16_t i = 0; i < qd; ++i) {
        if (!r.name() || !r.need(4)) {
            error = "question: " + r.error;
            return std::nullopt;
        }
        r.pos += 4;
    }
    if (static_cast<std::size_t>(an) + ns > limits::records) {
        error = "too many records";
        return std::nullopt;
    }
    for (int section = 0; section < 2; ++section) {
        std::uint16_t count = section == 0 ? an : ns;
        for (std::uint16_t i = 0; i < count; ++i) {
            auto owner = r.name();
            if (!owner || !r.need(10)) {
                error = (section == 0 ? "answer: " : "authority: ") + r.error;
                return std::nullopt;
            }
            std::uint16_t type = r.u16();
            std::uint16_t klass = r.u16();
            std::uint32_t ttl = r.u32();
            std::uint16_t rdlen = r.u16();
            if (!r.need(rdlen)) {
                error = "record data runs past the message";
                return std::nullopt;
            }
            std::size_t end = r.pos + rdlen;
            // RFC 2181 §8: a TTL with the top bit set is read as 0.
            if (ttl > 0x7FFFFFFFu) {
                ttl = 0;
            }
            Record rec;
            rec.name = std::move(*owner);
            rec.ttl = ttl;
            bool keep = klass == 1;
            switch (type) {
                case static_cast<std::uint16_t>(Type::a):
                    if (rdlen != 4) {
                        error = "A record of " + std::to_string(rdlen) + " bytes";
                        return std::nullopt;
                    }
                    rec.type = Type::a;
                    rec.addr.v4 = true;
                    rec.addr.bytes[10] = rec.addr.bytes[11] = 0xFF;
                    std::copy_n(wire.data() + r.pos, 4, rec.addr.bytes.begin() + 12);
                    break;
                case static_cast<std::uint16_t>(Type::aaaa):
                    if (rdlen != 16) {
                        error = "AAAA record of " + std::to_string(rdlen) + " bytes";
                        return std::nullopt;
                    }
                    rec.type = Type::aaaa;
                    std::copy_n(wire.data() + r.pos, 16, rec.addr.bytes.begin());
                    break;
                case static_cast<std::uint16_t>(Type::cname):
                case static_cast<std::uint16_t>(Type::mx): {
                    rec.type = static_cast<Type>(type);
                    if (rec.type == Type::mx) {
                        if (rdlen < 3) {
                            error = "short MX record";
                            return std::nullopt;
                        }
                        rec.preference = r.u16();
                    }
                    auto t = r.name();
                    if (!t || r.pos > end) {
                        error = "record target: " + (t ? std::string("overruns its data") : r.error);
                        return std::nullopt;
                    }
                    rec.target = std::move(*t);
                    break;
                }
                case static_cast<std::uint16_t>(Type::soa): {
                    rec.type = Type::soa;
                    if (!r.name() || !r.name() || r.pos + 20 > end) {
                        error = "SOA record: " + (r.error.empty() ? "short" : r.error);
                        return std::nullopt;
                    }
                    r.pos += 16;  // serial, refresh, retry, expire
                    rec.soa_minimum = r.u32();
                    break;
                }
                default:
                    keep = false;
            }
            r.pos = end;
            if (!keep) {
                continue;
            }
            if (section == 0) {
                out.answers.push_back(std::move(rec));
            } else if (rec.type == Type::soa) {
                out.authority.push_back(std::move(rec));
            }
        }
    }
    return out;
}

Result interpret(const Response& r, std::string_view qname, Type qtype) {
    Result out;
    out.canonical = std::string(qname);
    auto negative_ttl = [&]() -> std::optional<std::uint32_t> {
        // RFC 2308 §5: the SOA's TTL capped by its MINIMUM; no SOA, no caching.
        for (const auto& s : r.authority) {
            return std::min(s.ttl, s.soa_minimum);
        }
        return std::nullopt;
    };
    switch (r.rcode) {
        case Rcode::noerror:
        case Rcode::nxdomain:
            break;
        case Rcode::servfail:
        case Rcode::refused:
        case Rcode::notimp:
            out.status = Status::temporary;
            out.detail = r.rcode == Rcode::servfail  ? "SERVFAIL"
                         : r.rcode == Rcode::refused ? "REFUSED"
                                                     : "NOTIMP";
            return out;
        default:
            out.status = Status::malformed;
            out.detail = "rcode " + std::to_string(static_cast<int>(r.rcode));
            return out;
    }
    std::uint32_t ttl = UINT32_MAX;
    // Follow the CNAME chain inside the answer (RFC 1034 §3.6.2), bounded.
    for (int hops = 0;; ++hops) {
        auto c = std::find_if(r.answers.begin(), r.answers.end(), [&](const Record& x) {
            return x.type == Type::cname && x.name == out.canonical;
        });
        if (c == r.answers.end() || qtype == Type::cname) {
            break;
        }
        if (hops >= limits::cname_chain) {
            out.status = Status::malformed;
            out.detail = "CNAME chain longer than " + std::to_string(limits::cname_chain);
            return out;
        }
        ttl = std::min(ttl, c->ttl);
        out.canonical = c->target;
    }
    for (const auto& x : r.answers) {
        if (x.type == qtype && x.name == out.canonical) {
            out.records.push_back(x);
            ttl = std::min(ttl, x.ttl);
        }
    }
    if (!out.records.empty()) {
        out.status = Status::ok;
        out.ttl = ttl;
        return out;
    }
    if (r.rcode == Rcode::nxdomain) {
        out.status = Status::nxdomain;
        out.detail = "NXDOMAIN";
        out.ttl = negative_ttl();
        return out;
    }
    if (out.canonical != qname) {
        // The chain stops at a name the server did not answer for: ask for it.
        out.status = Status::cname;
        out.ttl = ttl;
        return out;
    }
    out.status = Status::nodata;
    out.detail = "no " + std::string(to_string(qtype)) + " record";
    out.ttl = negative_ttl();
    return out;
}

}  // namespace sluice::dns
