#include "storage/spool_format.hpp"

#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace sluice::storage {

std::string_view to_string(RcptState s) {
    switch (s) {
        case RcptState::pending:
            return "pending";
        case RcptState::deferred:
            return "deferred";
        case RcptState::delivered:
            return "delivered";
        case RcptState::failed:
            return "failed";
        case RcptState::removed:
            return "removed";
    }
    return "?";
}

namespace spool_format {
namespace {

// ---- CRC-32C ----

constexpr std::uint32_t kPoly = 0x82f63b78;  // Castagnoli, reflected

struct CrcTable {
    std::array<std::array<std::uint32_t, 256>, 8> t{};
    constexpr CrcTable() {
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) {
                c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
            }
            t[0][i] = c;
        }
        for (std::size_t i = 0; i < 256; ++i) {
            for (std::size_t k = 1; k < 8; ++k) {
                t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
            }
        }
    }
};
constexpr CrcTable kTable;

std::uint32_t crc_sw(const unsigned char* p, std::size_t n, std::uint32_t c) {
    // Slicing by 8.
    while (n >= 8) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        v ^= c;
        c = kTable.t[7][v & 0xff] ^ kTable.t[6][(v >> 8) & 0xff] ^ kTable.t[5][(v >> 16) & 0xff] ^
            kTable.t[4][(v >> 24) & 0xff] ^ kTable.t[3][(v >> 32) & 0xff] ^
            kTable.t[2][(v >> 40) & 0xff] ^ kTable.t[1][(v >> 48) & 0xff] ^ kTable.t[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) {
        c = kTable.t[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    }
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) std::uint32_t crc_hw(const unsigned char* p, std::size_t n,
                                                       std::uint32_t c) {
    std::uint64_t c64 = c;
    while (n >= 8) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
        p += 8;
        n -= 8;
    }
    c = static_cast<std::uint32_t>(c64);
    while (n--) {
        c = __builtin_ia32_crc32qi(c, *p++);
    }
    return c;
}
bool have_hw() {
    // __builtin_cpu_init first: this may run from a static initializer.
    static const bool hw = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("sse4.2") != 0;
    }();
    return hw;
}
#endif

// ---- little-endian writer / bounds-checked reader ----

void put_u8(std::string& o, std::uint8_t v) {
    o.push_back(static_cast<char>(v));
}
void put_u16(std::string& o, std::uint16_t v) {
    for (int i = 0; i < 2; ++i) {
        o.push_back(static_cast<char>(v >> (8 * i)));
    }
}
void put_u32(std::string& o, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) {
        o.push_back(static_cast<char>(v >> (8 * i)));
    }
}
void put_u64(std::string& o, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
        o.push_back(static_cast<char>(v >> (8 * i)));
    }
}
void put_str(std::string& o, std::string_view s) {
    put_u32(o, static_cast<std::uint32_t>(s.size()));
    o.append(s);
}
void put_time(std::string& o, std::chrono::system_clock::time_point t) {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    put_u64(o, static_cast<std::uint64_t>(ns));
}

class Reader {
  public:
    explicit Reader(std::string_view b) : b_(b) {}

    bool u8(std::uint8_t& v) {
        if (!need(1)) {
            return false;
        }
        v = static_cast<std::uint8_t>(b_[pos_++]);
        return true;
    }
    bool u16(std::uint16_t& v) {
        std::uint64_t x;
        if (!uint(2, x)) {
            return false;
        }
        v = static_cast<std::uint16_t>(x);
        return true;
    }
    bool u32(std::uint32_t& v) {
        std::uint64_t x;
        if (!uint(4, x)) {
            return false;
        }
        v = static_cast<std::uint32_t>(x);
        return true;
    }
    bool u64(std::uint64_t& v) { return uint(8, v); }
    bool str(std::string& s) {
        std::uint32_t n;
        if (!u32(n) || !need(n)) {
            return false;
        }
        s.assign(b_.data() + pos_, n);
        pos_ += n;
        return true;
    }
    bool time(std::chrono::system_clock::time_point& t) {
        std::uint64_t v;
        if (!u64(v)) {
            return false;
        }
        auto ns = std::chrono::nanoseconds(static_cast<std::int64_t>(v));
        t = std::chrono::system_clock::time_point(
            std::chrono::duration_cast<std::chrono::system_clock::duration>(ns));
        return true;
    }
    std::string_view rest() const { return b_.substr(pos_); }
    bool at_end() const { return pos_ == b_.size(); }

  private:
    bool need(std::size_t n) const { return b_.size() - pos_ >= n; }
    bool uint(int bytes, std::uint64_t& v) {
        if (!need(static_cast<std::size_t>(bytes))) {
            return false;
        }
        v = 0;
        for (int i = 0; i < bytes; ++i) {
            v |= static_cast<std::uint64_t>(static_cast<unsigned char>(b_[pos_ + i])) << (8 * i);
        }
        pos_ += static_cast<std::size_t>(bytes);
        return true;
    }

    std::string_view b_;
    std::size_t pos_ = 0;
};

bool type_is(Reader& r, RecordType t) {
    std::uint8_t v;
    return r.u8(v) && v == static_cast<std::uint8_t>(t);
}

void put_transport(std::string& o, const Transport& t) {
    put_u8(o, static_cast<std::uint8_t>(t.kind));
    put_str(o, t.host);
    put_u16(o, t.port);
    put_u8(o, static_cast<std::uint8_t>(t.starttls));
    put_str(o, t.path);
    put_u8(o, t.inline_delivery ? 1 : 0);
    put_str(o, t.text);
}

bool get_transport(Reader& r, Transport& t) {
    std::uint8_t kind, tls, inl;
    if (!r.u8(kind) || !r.str(t.host) || !r.u16(t.port) || !r.u8(tls) || !r.str(t.path) ||
        !r.u8(inl) || !r.str(t.text)) {
        return false;
    }
    if (kind > static_cast<std::uint8_t>(Transport::Kind::mx) ||
        tls > static_cast<std::uint8_t>(TlsMode::implicit) || inl > 1) {
        return false;
    }
    t.kind = static_cast<Transport::Kind>(kind);
    t.starttls = static_cast<TlsMode>(tls);
    t.inline_delivery = inl == 1;
    return true;
}

std::optional<std::uint64_t> parse_hex_name(std::string_view name, std::string_view prefix,
                                            std::string_view suffix) {
    if (name.size() != prefix.size() + 16 + suffix.size() ||
        name.substr(0, prefix.size()) != prefix ||
        name.substr(name.size() - suffix.size()) != suffix) {
        return std::nullopt;
    }
    std::uint64_t v = 0;
    for (char c : name.substr(prefix.size(), 16)) {
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) {
            return std::nullopt;
        }
        v = (v << 4) | static_cast<std::uint64_t>(d);
    }
    return v;
}

}  // namespace

std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc) {
    auto* p = static_cast<const unsigned char*>(data);
    std::uint32_t c = ~crc;
#if defined(__x86_64__)
    c = have_hw() ? crc_hw(p, n, c) : crc_sw(p, n, c);
#else
    c = crc_sw(p, n, c);
#endif
    return ~c;
}

std::string frame(std::string_view head, std::string_view tail) {
    std::string h;
    put_u32(h, static_cast<std::uint32_t>(head.size() + tail.size()));
    std::uint32_t crc = crc32c(h.data(), 4);
    crc = crc32c(head.data(), head.size(), crc);
    crc = crc32c(tail.data(), tail.size(), crc);
    put_u32(h, crc);
    return h;
}

std::string encode_segment_header(std::uint64_t segment) {
    std::string o;
    put_u8(o, static_cast<std::uint8_t>(RecordType::segment));
    o.append(kMagic);
    put_u32(o, kVersion);
    put_u64(o, segment);
    return o;
}

std::string encode_message_head(const Message& m, const DataRef& data) {
    std::string o;
    o.reserve(256 + 128 * m.recipients.size());
    put_u8(o, static_cast<std::uint8_t>(RecordType::message));
    put_str(o, m.id);
    put_str(o, m.sender);
    put_str(o, m.client);
    put_str(o, m.helo);
    put_str(o, m.listener);
    put_str(o, m.auth_user);
    put_time(o, m.received_at);
    put_u32(o, static_cast<std::uint32_t>(m.recipients.size()));
    for (const auto& r : m.recipients) {
        put_str(o, r.address);
        put_str(o, r.deliver_to);
        put_str(o, r.code);
        put_transport(o, r.transport);
    }
    put_u8(o, data.external ? 1 : 0);
    put_u64(o, data.size);
    if (data.external) {
        put_u64(o, data.big_seq);
        put_u32(o, data.crc);
    }
    return o;
}

std::string encode_state(const StateRecord& r) {
    std::string o;
    put_u8(o, static_cast<std::uint8_t>(RecordType::state));
    put_str(o, r.id);
    put_u32(o, r.rcpt);
    put_u8(o, static_cast<std::uint8_t>(r.state));
    put_u32(o, r.attempts);
    put_time(o, r.next_attempt);
    put_str(o, r.reason);
    return o;
}

std::string encode_op(const OpRecord& r) {
    std::string o;
    put_u8(o, static_cast<std::uint8_t>(r.type));
    put_str(o, r.id);
    return o;
}

std::string make_record(std::string_view body, std::string_view tail) {
    std::string out = frame(body, tail);
    out.reserve(kHeaderBytes + body.size() + tail.size());
    out.append(body);
    out.append(tail);
    return out;
}

RecordHeader read_header(const char* p) {
    RecordHeader h;
    for (int i = 0; i < 4; ++i) {
        h.len |= static_cast<std::uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
        h.crc |= static_cast<std::uint32_t>(static_cast<unsigned char>(p[4 + i])) << (8 * i);
    }
    return h;
}

bool check_crc(const RecordHeader& h, std::string_view body) {
    if (body.size() != h.len || h.len == 0) {
        return false;
    }
    std::string len;
    put_u32(len, h.len);
    std::uint32_t crc = crc32c(len.data(), 4);
    return crc32c(body.data(), body.size(), crc) == h.crc;
}

std::optional<std::uint64_t> decode_segment_header(std::string_view body) {
    Reader r(body);
    if (!type_is(r, RecordType::segment) || r.rest().substr(0, kMagic.size()) != kMagic) {
        return std::nullopt;
    }
    Reader rest(r.rest().substr(kMagic.size()));
    std::uint32_t version;
    std::uint64_t seg;
    if (!rest.u32(version) || version != kVersion || !rest.u64(seg) || !rest.at_end()) {
        return std::nullopt;
    }
    return seg;
}

std::optional<MessageRecord> decode_message(std::string_view body, bool with_data) {
    Reader r(body);
    MessageRecord out;
    Message& m = out.msg;
    std::uint32_t n;
    if (!type_is(r, RecordType::message) || !r.str(m.id) || !r.str(m.sender) || !r.str(m.client) ||
        !r.str(m.helo) || !r.str(m.listener) || !r.str(m.auth_user) || !r.time(m.received_at) ||
        !r.u32(n)) {
        return std::nullopt;
    }
    if (n > body.size()) {  // each recipient takes far more than one byte
        return std::nullopt;
    }
    m.recipients.resize(n);
    for (auto& rc : m.recipients) {
        if (!r.str(rc.address) || !r.str(rc.deliver_to) || !r.str(rc.code) ||
            !get_transport(r, rc.transport)) {
            return std::nullopt;
        }
    }
    std::uint8_t ext;
    if (!r.u8(ext) || ext > 1 || !r.u64(out.data.size)) {
        return std::nullopt;
    }
    out.data.external = ext == 1;
    if (out.data.external) {
        if (!r.u64(out.data.big_seq) || !r.u32(out.data.crc) || !r.at_end()) {
            return std::nullopt;
        }
        return out;
    }
    if (r.rest().size() != out.data.size) {
        return std::nullopt;
    }
    if (with_data) {
        m.data.assign(r.rest());
    }
    return out;
}

std::optional<StateRecord> decode_state(std::string_view body) {
    Reader r(body);
    StateRecord s;
    std::uint8_t st;
    if (!type_is(r, RecordType::state) || !r.str(s.id) || !r.u32(s.rcpt) || !r.u8(st) ||
        st > static_cast<std::uint8_t>(RcptState::removed) || !r.u32(s.attempts) ||
        !r.time(s.next_attempt) || !r.str(s.reason) || !r.at_end()) {
        return std::nullopt;
    }
    s.state = static_cast<RcptState>(st);
    return s;
}

std::optional<OpRecord> decode_op(std::string_view body) {
    Reader r(body);
    std::uint8_t t;
    OpRecord op;
    if (!r.u8(t) || t < static_cast<std::uint8_t>(RecordType::hold) ||
        t > static_cast<std::uint8_t>(RecordType::cancel) || !r.str(op.id) || !r.at_end()) {
        return std::nullopt;
    }
    op.type = static_cast<RecordType>(t);
    return op;
}

std::string segment_name(std::uint64_t segment) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "seg-%016" PRIx64 ".log", segment);
    return buf;
}

std::optional<std::uint64_t> parse_segment_name(std::string_view name) {
    return parse_hex_name(name, "seg-", ".log");
}

std::string big_name(std::uint64_t seq) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%016" PRIx64 ".msg", seq);
    return buf;
}

std::optional<std::uint64_t> parse_big_name(std::string_view name) {
    return parse_hex_name(name, "", ".msg");
}

}  // namespace spool_format
}  // namespace sluice::storage
