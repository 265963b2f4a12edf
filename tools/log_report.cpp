#include "tools/log_report.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>

#include "common/ascii.hpp"
#include "common/json.hpp"
#include "policy/codes.hpp"

namespace sluice::ctl::logreport {
namespace {

constexpr std::array<bool, 256> make_key_chars() {
    std::array<bool, 256> t{};
    for (int c = 'a'; c <= 'z'; ++c) {
        t[static_cast<std::size_t>(c)] = true;
    }
    for (int c = 'A'; c <= 'Z'; ++c) {
        t[static_cast<std::size_t>(c)] = true;
    }
    for (int c = '0'; c <= '9'; ++c) {
        t[static_cast<std::size_t>(c)] = true;
    }
    t['_'] = t['-'] = t['.'] = true;
    return t;
}
constexpr std::array<bool, 256> kKeyChar = make_key_chars();

inline bool is_space(char c) {
    return c == ' ' || c == '\t';
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

// `n` decimal digits at s[pos..], or -1.
int digits(std::string_view s, std::size_t pos, std::size_t n) {
    if (pos + n > s.size()) {
        return -1;
    }
    int v = 0;
    for (std::size_t i = pos; i < pos + n; ++i) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant, "chrono-Compatible
// Low-Level Date Algorithms").
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, int& y, unsigned& m, unsigned& d) {
    z += 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y = static_cast<int>(static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2));
}

unsigned days_in_month(int y, unsigned m) {
    static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : kDays[m - 1];
}

// The client field may carry an address literal form: "[192.0.2.1]", "[IPv6:2001:db8::1]".
std::string_view bare_ip(std::string_view s) {
    if (s.size() >= 2 && s.front() == '[' && s.back() == ']') {
        s = s.substr(1, s.size() - 2);
        if (s.size() > 5 && (s[0] == 'I' || s[0] == 'i') && s[4] == ':') {
            s.remove_prefix(5);
        }
    }
    return s;
}

std::string_view strip_brackets(std::string_view s) {
    if (s.size() >= 2 && s.front() == '<' && s.back() == '>') {
        return s.substr(1, s.size() - 2);
    }
    return s;
}

bool is_denied(std::string_view code) {
    return code == "B120" || (code.size() == 4 && code[0] == 'D' && code[1] == '1');
}

constexpr std::string_view kNone = "(none)";

std::string_view client_key(std::string_view client) {
    return client.empty() ? kNone : client;
}

std::string_view sender_key(std::string_view from) {
    if (from.empty()) {
        return kNone;
    }
    std::string_view s = strip_brackets(from);
    return s.empty() ? std::string_view("<>") : s;
}

// Writes the recipient's domain, lower-cased, without a trailing dot, into `buf`.
std::string_view domain_key(std::string_view to, std::string& buf) {
    if (to.empty()) {
        return kNone;
    }
    std::string_view s = strip_brackets(to);
    auto at = s.rfind('@');
    if (at == std::string_view::npos || at + 1 == s.size()) {
        return "(no domain)";
    }
    s = s.substr(at + 1);
    if (!s.empty() && s.back() == '.') {
        s.remove_suffix(1);
    }
    buf.assign(s);
    for (char& c : buf) {
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        }
    }
    return buf;
}

std::string_view network_key_into(std::string_view client, std::string& buf) {
    if (client.empty()) {
        return kNone;
    }
    auto ip = parse_ip(bare_ip(client));
    if (!ip) {
        return "(invalid)";
    }
    char text[INET6_ADDRSTRLEN];
    if (ip->v4) {
        // By hand: glibc's inet_ntop formats IPv4 with sprintf, a hot spot on big logs.
        buf.clear();
        for (int i = 12; i < 15; ++i) {
            unsigned v = ip->bytes[static_cast<std::size_t>(i)];
            if (v >= 100) {
                buf.push_back(static_cast<char>('0' + v / 100));
            }
            if (v >= 10) {
                buf.push_back(static_cast<char>('0' + v / 10 % 10));
            }
            buf.push_back(static_cast<char>('0' + v % 10));
            buf.push_back('.');
        }
        buf += "0/24";
    } else {
        std::fill(ip->bytes.begin() + 8, ip->bytes.end(), std::uint8_t{0});
        inet_ntop(AF_INET6, ip->bytes.data(), text, sizeof text);
        buf.assign(text);
        buf += "/64";
    }
    return buf;
}

std::string number(std::uint64_t n) {
    return std::to_string(n);
}

std::string format_double(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
}

std::string pad_right(std::string s, std::size_t w) {
    if (s.size() < w) {
        s.append(w - s.size(), ' ');
    }
    return s;
}

std::string pad_left(std::string s, std::size_t w) {
    if (s.size() < w) {
        s.insert(0, w - s.size(), ' ');
    }
    return s;
}

}  // namespace

// ---- timestamps ----

std::optional<TimeMs> parse_timestamp(std::string_view s) {
    int y = digits(s, 0, 4);
    int mo = digits(s, 5, 2);
    int d = digits(s, 8, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || s[4] != '-' || s[7] != '-' ||
        static_cast<unsigned>(d) > days_in_month(y, static_cast<unsigned>(mo))) {
        return std::nullopt;
    }
    int h = 0, mi = 0, sec = 0, ms = 0;
    std::size_t pos = 10;
    if (pos < s.size()) {
        if (s[pos] != 'T' || s.size() < 16 || s[13] != ':') {
            return std::nullopt;
        }
        h = digits(s, 11, 2);
        mi = digits(s, 14, 2);
        pos = 16;
        if (pos < s.size() && s[pos] == ':') {
            sec = digits(s, 17, 2);
            pos = 19;
            if (pos < s.size() && s[pos] == '.') {
                ++pos;
                std::size_t start = pos;
                while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
                    if (pos - start < 3) {
                        ms = ms * 10 + (s[pos] - '0');
                    }
                    ++pos;
                }
                if (pos == start) {
                    return std::nullopt;
                }
                for (std::size_t k = pos - start; k < 3; ++k) {
                    ms *= 10;
                }
            }
        }
        if (pos < s.size() && s[pos] == 'Z') {
            ++pos;
        }
        // 60: a leap second (RFC 3339 §5.6).
        if (pos != s.size() || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 60) {
            return std::nullopt;
        }
    }
    std::int64_t days = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d));
    return ((days * 24 + h) * 60 + mi) * 60'000 + std::int64_t{sec} * 1000 + ms;
}

std::string format_timestamp(TimeMs t) {
    std::int64_t days = t >= 0 ? t / 86'400'000 : -((-t + 86'399'999) / 86'400'000);
    std::int64_t rem = t - days * 86'400'000;
    int y;
    unsigned m, d;
    civil_from_days(days, y, m, d);
    char buf[40];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", y, m, d,
                  static_cast<int>(rem / 3'600'000), static_cast<int>(rem / 60'000 % 60),
                  static_cast<int>(rem / 1000 % 60), static_cast<int>(rem % 1000));
    return buf;
}

// ---- the line parser ----

LineStatus parse_line(std::string_view line, LogRecord& out, std::string& scratch) {
    out = LogRecord{};
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    const char* p = line.data();
    const char* const end = p + line.size();
    while (p < end && is_space(*p)) {
        ++p;
    }
    if (p == end) {
        return LineStatus::blank;
    }
    // Decoded values are never longer than their escaped text, so with this capacity the
    // scratch buffer never reallocates under the views handed out below.
    scratch.clear();
    if (scratch.capacity() < line.size()) {
        scratch.reserve(line.size());
    }
    std::string_view ts_text;
    bool have_ts = false;
    while (p < end) {
        const char* ks = p;
        while (p < end && kKeyChar[static_cast<unsigned char>(*p)]) {
            ++p;
        }
        if (p == ks || p == end || *p != '=') {
            return LineStatus::malformed;
        }
        std::string_view key(ks, static_cast<std::size_t>(p - ks));
        ++p;
        std::string_view value;
        if (p < end && *p == '"') {
            const char* vs = ++p;
            while (p < end && *p != '"' && *p != '\\') {
                ++p;
            }
            if (p == end) {
                return LineStatus::malformed;  // unterminated: a truncated line
            }
            if (*p == '"') {
                value = std::string_view(vs, static_cast<std::size_t>(p - vs));
                ++p;
            } else {
                // Escapes (common/log.cpp append_log_value): \" \\ \xHH.
                const std::size_t start = scratch.size();
                scratch.append(vs, static_cast<std::size_t>(p - vs));
                while (true) {
                    if (p == end) {
                        return LineStatus::malformed;
                    }
                    char c = *p;
                    if (c == '"') {
                        ++p;
                        break;
                    }
                    if (c != '\\') {
                        scratch.push_back(c);
                        ++p;
                        continue;
                    }
                    if (end - p < 2) {
                        return LineStatus::malformed;
                    }
                    char e = p[1];
                    if (e == '"' || e == '\\') {
                        scratch.push_back(e);
                        p += 2;
                    } else if (e == 'x') {
                        if (end - p < 4) {
                            return LineStatus::malformed;
                        }
                        int hi = hex_value(p[2]);
                        int lo = hex_value(p[3]);
                        if (hi < 0 || lo < 0) {
                            return LineStatus::malformed;
                        }
                        scratch.push_back(static_cast<char>(hi * 16 + lo));
                        p += 4;
                    } else {
                        return LineStatus::malformed;
                    }
                }
                value = std::string_view(scratch.data() + start, scratch.size() - start);
            }
            if (p < end && !is_space(*p)) {
                return LineStatus::malformed;  // text glued to a closing quote
            }
        } else {
            const char* vs = p;
            while (p < end && !is_space(*p)) {
                ++p;
            }
            value = std::string_view(vs, static_cast<std::size_t>(p - vs));
        }
        switch (key.size()) {
            case 2:
                if (key == "ts") {
                    ts_text = value;
                    have_ts = true;
                } else if (key == "to") {
                    out.to = value;
                }
                break;
            case 3:
                if (key == "lvl") {
                    out.lvl = value;
                }
                break;
            case 4:
                if (key == "code") {
                    out.code = value;
                } else if (key == "from") {
                    out.from = value;
                } else if (key == "user") {
                    out.user = value;
                } else if (key == "sess") {
                    out.sess = value;
                } else if (key == "helo") {
                    out.helo = value;
                }
                break;
            case 5:
                if (key == "event") {
                    out.event = value;
                } else if (key == "reply") {
                    out.reply = value;
                }
                break;
            case 6:
                if (key == "client") {
                    out.client = value;
                }
                break;
            case 8:
                if (key == "listener") {
                    out.listener = value;
                }
                break;
            default:
                break;
        }
        while (p < end && is_space(*p)) {
            ++p;
        }
    }
    if (!have_ts || out.event.empty()) {
        return LineStatus::malformed;
    }
    auto ts = parse_timestamp(ts_text);
    if (!ts) {
        return LineStatus::malformed;
    }
    out.ts = *ts;
    return LineStatus::ok;
}

// ---- TopTable ----

TopTable::TopTable(std::size_t capacity)
    : capacity_(std::clamp<std::size_t>(capacity, 1, kNil / 4)), index_(16) {}

namespace {

std::uint32_t hash32(std::string_view key) {
    auto h = static_cast<std::uint64_t>(std::hash<std::string_view>{}(key));
    return static_cast<std::uint32_t>(h ^ (h >> 32));
}

}  // namespace

std::uint32_t TopTable::find_slot(std::string_view key, std::uint32_t hash) const {
    const std::size_t mask = index_.size() - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
        const Cell& c = index_[i];
        if (c.slot_plus_one == 0) {
            return kNil;
        }
        if (c.hash == hash && slots_[c.slot_plus_one - 1].entry.key == key) {
            return c.slot_plus_one - 1;
        }
    }
}

void TopTable::index_insert(std::uint32_t slot) {
    if ((slots_.size() + 1) * 2 > index_.size()) {
        std::vector<Cell> old(index_.size() * 2);
        old.swap(index_);
        const std::size_t mask = index_.size() - 1;
        for (const Cell& c : old) {
            if (c.slot_plus_one != 0) {
                std::size_t i = c.hash & mask;
                while (index_[i].slot_plus_one != 0) {
                    i = (i + 1) & mask;
                }
                index_[i] = c;
            }
        }
    }
    const std::size_t mask = index_.size() - 1;
    std::size_t i = slots_[slot].hash & mask;
    while (index_[i].slot_plus_one != 0) {
        i = (i + 1) & mask;
    }
    index_[i] = Cell{slot + 1, slots_[slot].hash};
}

void TopTable::index_erase(std::uint32_t slot) {
    const std::size_t mask = index_.size() - 1;
    std::size_t i = slots_[slot].hash & mask;
    while (index_[i].slot_plus_one != slot + 1) {
        i = (i + 1) & mask;
    }
    // Backward-shift deletion: pull later cells of the probe run into the hole, so no
    // tombstones accumulate under constant eviction.
    std::size_t j = i;
    while (true) {
        j = (j + 1) & mask;
        if (index_[j].slot_plus_one == 0) {
            break;
        }
        std::size_t home = index_[j].hash & mask;
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            index_[i] = index_[j];
            i = j;
        }
    }
    index_[i] = Cell{};
}

std::uint32_t TopTable::new_bucket(std::uint64_t count, std::uint32_t after) {
    std::uint32_t b;
    if (!free_buckets_.empty()) {
        b = free_buckets_.back();
        free_buckets_.pop_back();
    } else {
        b = static_cast<std::uint32_t>(buckets_.size());
        buckets_.emplace_back();
    }
    Bucket& nb = buckets_[b];
    nb.count = count;
    nb.head = kNil;
    if (after == kNil) {
        nb.prev = kNil;
        nb.next = min_bucket_;
        if (min_bucket_ != kNil) {
            buckets_[min_bucket_].prev = b;
        }
        min_bucket_ = b;
    } else {
        nb.prev = after;
        nb.next = buckets_[after].next;
        if (nb.next != kNil) {
            buckets_[nb.next].prev = b;
        }
        buckets_[after].next = b;
    }
    return b;
}

void TopTable::link(std::uint32_t slot, std::uint32_t bucket) {
    Slot& s = slots_[slot];
    Bucket& b = buckets_[bucket];
    s.bucket = bucket;
    s.prev = kNil;
    s.next = b.head;
    if (b.head != kNil) {
        slots_[b.head].prev = slot;
    }
    b.head = slot;
    s.entry.count = b.count;
}

void TopTable::unlink(std::uint32_t slot) {
    Slot& s = slots_[slot];
    const std::uint32_t bi = s.bucket;
    if (s.prev != kNil) {
        slots_[s.prev].next = s.next;
    } else {
        buckets_[bi].head = s.next;
    }
    if (s.next != kNil) {
        slots_[s.next].prev = s.prev;
    }
    s.bucket = s.prev = s.next = kNil;
    Bucket& b = buckets_[bi];
    if (b.head == kNil) {
        if (b.prev != kNil) {
            buckets_[b.prev].next = b.next;
        } else {
            min_bucket_ = b.next;
        }
        if (b.next != kNil) {
            buckets_[b.next].prev = b.prev;
        }
        free_buckets_.push_back(bi);
    }
}

void TopTable::increment(std::uint32_t slot) {
    const std::uint32_t b = slots_[slot].bucket;
    const std::uint64_t count = buckets_[b].count + 1;
    std::uint32_t next = buckets_[b].next;
    if (next == kNil || buckets_[next].count != count) {
        next = new_bucket(count, b);
    }
    unlink(slot);
    link(slot, next);
}

void TopTable::add(std::string_view key, TimeMs ts, std::uint64_t n) {
    if (n == 0) {
        return;
    }
    total_ += n;
    const std::uint32_t hash = hash32(key);
    std::uint32_t slot = find_slot(key, hash);
    if (slot != kNil) {
        Entry& e = slots_[slot].entry;
        e.first = std::min(e.first, ts);
        e.last = std::max(e.last, ts);
    } else if (slots_.size() < capacity_) {
        slot = static_cast<std::uint32_t>(slots_.size());
        slots_.push_back(Slot{Entry{std::string(key), 0, 0, ts, ts}, hash});
        index_insert(slot);
        std::uint32_t b = min_bucket_ != kNil && buckets_[min_bucket_].count == 1
                              ? min_bucket_
                              : new_bucket(1, kNil);
        link(slot, b);
        --n;
    } else {
        // Space-Saving: the newcomer takes a least-counted slot and inherits its count,
        // which becomes its error bound.
        slot = buckets_[min_bucket_].head;
        index_erase(slot);
        Slot& s = slots_[slot];
        s.entry.error = s.entry.count;
        s.entry.key.assign(key);
        s.entry.first = s.entry.last = ts;
        s.hash = hash;
        index_insert(slot);
        ++evictions_;
    }
    for (; n > 0; --n) {
        increment(slot);
    }
}

std::vector<TopTable::Entry> TopTable::top(std::size_t n) const {
    std::vector<const Entry*> all;
    all.reserve(slots_.size());
    for (const auto& s : slots_) {
        all.push_back(&s.entry);
    }
    auto by_count = [](const Entry* a, const Entry* b) {
        return a->count != b->count ? a->count > b->count : a->key < b->key;
    };
    n = std::min(n, all.size());
    std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n), all.end(),
                      by_count);
    std::vector<Entry> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        out.push_back(*all[i]);
    }
    return out;
}

const TopTable::Entry* TopTable::find(std::string_view key) const {
    std::uint32_t slot = find_slot(key, hash32(key));
    return slot == kNil ? nullptr : &slots_[slot].entry;
}

// ---- Analyzer ----

std::string network_key(std::string_view client) {
    std::string buf;
    return std::string(network_key_into(client, buf));
}

Analyzer::Analyzer(ReportOptions opts)
    : opts_(std::move(opts)),
      codes_(opts_.max_keys),
      events_(opts_.max_keys),
      denied_by_client_(opts_.max_keys),
      denied_by_network_(opts_.max_keys),
      denied_by_sender_(opts_.max_keys),
      denied_by_rcpt_domain_(opts_.max_keys),
      weak_by_client_(opts_.max_keys),
      weak_by_sender_(opts_.max_keys),
      auth_by_user_(opts_.max_keys),
      refused_by_client_(opts_.max_keys) {}

void Analyzer::feed(std::string_view chunk) {
    stats_.bytes += chunk.size();
    const char* p = chunk.data();
    const char* const end = p + chunk.size();
    if (skipping_ || !tail_.empty()) {
        const auto* nl = static_cast<const char*>(std::memchr(p, '\n', chunk.size()));
        if (nl == nullptr) {
            if (!skipping_) {
                tail_.append(p, chunk.size());
                if (tail_.size() > limits::kMaxLineBytes) {
                    skipping_ = true;
                    tail_.clear();
                    tail_.shrink_to_fit();
                }
            }
            return;
        }
        if (skipping_) {
            skipping_ = false;
            ++stats_.lines;
            ++stats_.malformed;
            ++stats_.too_long;
        } else {
            tail_.append(p, static_cast<std::size_t>(nl - p));
            feed_line(tail_);
            tail_.clear();
        }
        p = nl + 1;
    }
    while (p < end) {
        const auto* nl =
            static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
        if (nl == nullptr) {
            auto n = static_cast<std::size_t>(end - p);
            if (n > limits::kMaxLineBytes) {
                skipping_ = true;
            } else {
                tail_.assign(p, n);
            }
            return;
        }
        feed_line(std::string_view(p, static_cast<std::size_t>(nl - p)));
        p = nl + 1;
    }
}

void Analyzer::end_of_input() {
    if (skipping_) {
        skipping_ = false;
        ++stats_.lines;
        ++stats_.malformed;
        ++stats_.too_long;
    } else if (!tail_.empty()) {
        feed_line(tail_);
        tail_.clear();
    }
}

void Analyzer::note_read_error(std::string message) {
    ++stats_.read_errors;
    if (read_error_messages_.size() < 16) {
        read_error_messages_.push_back(std::move(message));
    }
}

void Analyzer::feed_line(std::string_view line) {
    ++stats_.lines;
    if (line.size() > limits::kMaxLineBytes) {
        ++stats_.malformed;
        ++stats_.too_long;
        return;
    }
    LogRecord r;
    switch (parse_line(line, r, scratch_)) {
        case LineStatus::blank:
            ++stats_.blank;
            return;
        case LineStatus::malformed:
            ++stats_.malformed;
            return;
        case LineStatus::ok:
            break;
    }
    if (!matches(r)) {
        ++stats_.filtered_out;
        return;
    }
    ++stats_.matched;
    count(r);
}

bool Analyzer::matches(const LogRecord& r) {
    const Filters& f = opts_.filters;
    if ((f.since && r.ts < *f.since) || (f.until && r.ts >= *f.until)) {
        return false;
    }
    if (!f.codes.empty() && std::find(f.codes.begin(), f.codes.end(), r.code) == f.codes.end()) {
        return false;
    }
    if (f.client) {
        auto ip = parse_ip(bare_ip(r.client));
        if (!ip || !f.client->contains(*ip)) {
            return false;
        }
    }
    return true;
}

void Analyzer::count(const LogRecord& r) {
    if (!have_time_) {
        first_ = last_ = r.ts;
        have_time_ = true;
    } else {
        first_ = std::min(first_, r.ts);
        last_ = std::max(last_, r.ts);
    }
    events_.add(r.event, r.ts);
    if (r.code.empty()) {
        return;
    }
    codes_.add(r.code, r.ts);
    if (is_denied(r.code)) {
        denied_by_client_.add(client_key(r.client), r.ts);
        denied_by_network_.add(network_key_into(r.client, key_buf_), r.ts);
        denied_by_sender_.add(sender_key(r.from), r.ts);
        denied_by_rcpt_domain_.add(domain_key(r.to, key_buf_), r.ts);
    } else if (r.code == "G106" || r.code == "G110") {
        weak_by_client_.add(client_key(r.client), r.ts);
        weak_by_sender_.add(sender_key(r.from), r.ts);
    } else if (r.code == "G108") {
        auth_by_user_.add(r.user.empty() ? std::string_view("(unknown)") : r.user, r.ts);
    } else if (r.code == "C130") {
        refused_by_client_.add(client_key(r.client), r.ts);
    }
}

double Analyzer::user_median() const {
    auto all = auth_by_user_.top(auth_by_user_.size());
    if (all.empty()) {
        return 0;
    }
    std::vector<std::uint64_t> counts;
    counts.reserve(all.size());
    for (const auto& e : all) {
        counts.push_back(e.count);
    }
    std::sort(counts.begin(), counts.end());
    std::size_t n = counts.size();
    return n % 2 == 1
               ? static_cast<double>(counts[n / 2])
               : (static_cast<double>(counts[n / 2 - 1]) + static_cast<double>(counts[n / 2])) / 2;
}

std::vector<UserVolume> Analyzer::users() const {
    double median = user_median();
    std::vector<UserVolume> out;
    for (auto& e : auth_by_user_.top(auth_by_user_.size())) {
        bool unusual = static_cast<double>(e.count) > opts_.user_factor * median &&
                       e.count > opts_.user_min_volume;
        out.push_back(UserVolume{std::move(e), unusual});
    }
    return out;
}

std::vector<std::string> Analyzer::warnings() const {
    std::vector<std::string> out;
    if (const auto* e = codes_.find("G110")) {
        out.push_back("G110: " + number(e->count) + " relay(s) granted in open relay mode (" +
                      format_timestamp(e->first) + " .. " + format_timestamp(e->last) +
                      "): this server relays for anyone; set relay.open = false");
    }
    if (const auto* e = codes_.find("G106")) {
        out.push_back("G106: " + number(e->count) +
                      " relay(s) granted only because the sender was a local address (" +
                      format_timestamp(e->first) + " .. " + format_timestamp(e->last) +
                      "): anyone who guesses a local address can relay; prefer authenticated "
                      "submission");
    }
    double median = user_median();
    for (const auto& u : users()) {
        if (u.unusual) {
            out.push_back("G108: user \"" + ascii::printable(u.entry.key) + "\" relayed " +
                          number(u.entry.count) + " recipient(s), more than " +
                          format_double(opts_.user_factor) + "x the median per user (" +
                          format_double(median) + "): check the account is not compromised");
        }
    }
    return out;
}

namespace {

void text_table(std::string& out, std::string_view title, const TopTable& t, std::size_t top,
                std::string_view unit) {
    auto rows = t.top(top);
    std::size_t w = title.size();
    for (const auto& e : rows) {
        w = std::max(w, std::min<std::size_t>(ascii::printable(e.key).size(), 60));
    }
    out += "  " + pad_right(std::string(title), w) + "  " + pad_left("COUNT", 9) +
           "  FIRST                     LAST\n";
    std::uint64_t shown = 0;
    for (const auto& e : rows) {
        std::string key = ascii::printable(e.key);
        if (key.size() > 60) {
            key = key.substr(0, 57) + "...";
        }
        std::string count = (e.error > 0 ? "<=" : "") + number(e.count);
        out += "  " + pad_right(key, w) + "  " + pad_left(count, 9) + "  " +
               format_timestamp(e.first) + "  " + format_timestamp(e.last) + "\n";
        shown += e.count;
    }
    if (t.size() > rows.size()) {
        std::uint64_t rest = t.total() > shown ? t.total() - shown : 0;
        out += "  ... " + number(t.size() - rows.size()) + " more, " + number(rest) + " " +
               std::string(unit) + (t.exact() ? "" : " (approximate: table full)") + "\n";
    }
}

void json_table(std::string& out, const TopTable& t, std::size_t top) {
    auto rows = t.top(top);
    std::uint64_t shown = 0;
    out += "{\"total\":" + number(t.total()) + ",\"distinct\":" + number(t.size()) +
           ",\"exact\":" + (t.exact() ? "true" : "false") + ",\"top\":[";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& e = rows[i];
        out += i == 0 ? "{\"key\":" : ",{\"key\":";
        append_json_string(out, e.key);
        out += ",\"count\":" + number(e.count) + ",\"error\":" + number(e.error) + ",\"first\":\"" +
               format_timestamp(e.first) + "\",\"last\":\"" + format_timestamp(e.last) + "\"}";
        shown += e.count;
    }
    out += "],\"others\":" + number(t.total() > shown ? t.total() - shown : 0) + "}";
}

void json_counts(std::string& out, const TopTable& t) {
    auto rows = t.top(t.size());
    std::sort(rows.begin(), rows.end(),
              [](const TopTable::Entry& a, const TopTable::Entry& b) { return a.key < b.key; });
    out += "{";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        if (i > 0) {
            out += ",";
        }
        append_json_string(out, rows[i].key);
        out += ":" + number(rows[i].count);
    }
    out += "}";
}

}  // namespace

std::string Analyzer::format_text() const {
    std::string out = "sluice log report\n";
    out += "  input: " + number(stats_.lines) + " lines, " + number(stats_.bytes) + " bytes; " +
           number(stats_.matched) + " counted, " + number(stats_.filtered_out) + " filtered out, " +
           number(stats_.malformed) + " malformed (skipped)";
    if (stats_.too_long > 0) {
        out += ", " + number(stats_.too_long) + " of them too long";
    }
    if (stats_.read_errors > 0) {
        out += ", " + number(stats_.read_errors) + " read error(s)";
    }
    out += "\n  time range: ";
    out +=
        have_time_ ? format_timestamp(first_) + " .. " + format_timestamp(last_) : "(no records)";
    out += "\n";

    auto warns = warnings();
    if (!warns.empty()) {
        out += "\nWARNINGS\n";
        for (const auto& w : warns) {
            out += "  WARNING " + w + "\n";
        }
    }

    out += "\ndecisions by code\n";
    {
        auto rows = codes_.top(codes_.size());
        std::sort(rows.begin(), rows.end(),
                  [](const TopTable::Entry& a, const TopTable::Entry& b) { return a.key < b.key; });
        if (rows.empty()) {
            out += "  (none)\n";
        }
        for (const auto& e : rows) {
            out += "  " + pad_right(ascii::printable(e.key), 6) + pad_left(number(e.count), 10) + "  " +
                   std::string(policy::code_meaning(e.key)) + "\n";
        }
    }

    out += "\ndenied relay attempts (D1xx, B120): " + number(denied_total()) + "\n";
    if (denied_total() > 0) {
        text_table(out, "by client", denied_by_client_, opts_.top, "attempts");
        out += "\n";
        text_table(out, "by client network (/24, /64)", denied_by_network_, opts_.top, "attempts");
        out += "\n";
        text_table(out, "by sender", denied_by_sender_, opts_.top, "attempts");
        out += "\n";
        text_table(out, "by recipient domain", denied_by_rcpt_domain_, opts_.top, "attempts");
    }

    out += "\nrelays granted by weak criteria (G106 local sender, G110 open mode): " +
           number(weak_total()) + "\n";
    if (weak_total() > 0) {
        text_table(out, "by client", weak_by_client_, opts_.top, "relays");
        out += "\n";
        text_table(out, "by sender", weak_by_sender_, opts_.top, "relays");
    }

    out += "\nauthenticated relays (G108) by user: " + number(auth_by_user_.total());
    if (auth_by_user_.total() > 0) {
        out += " (median per user " + format_double(user_median()) + "; unusual: more than " +
               format_double(opts_.user_factor) + "x the median and more than " +
               number(opts_.user_min_volume) + ")\n";
        auto all = users();
        std::size_t w = 4;
        for (std::size_t i = 0; i < all.size() && i < opts_.top; ++i) {
            w = std::max(w, std::min<std::size_t>(all[i].entry.key.size(), 40));
        }
        out += "  " + pad_right("USER", w) + "  " + pad_left("COUNT", 9) +
               "  FIRST                     LAST\n";
        for (std::size_t i = 0; i < all.size() && i < opts_.top; ++i) {
            const auto& e = all[i].entry;
            out += "  " + pad_right(ascii::printable(e.key), w) + "  " + pad_left(number(e.count), 9) +
                   "  " + format_timestamp(e.first) + "  " + format_timestamp(e.last) +
                   (all[i].unusual ? "  UNUSUAL" : "") + "\n";
        }
        if (all.size() > opts_.top) {
            out += "  ... " + number(all.size() - opts_.top) + " more users\n";
        }
    } else {
        out += "\n";
    }

    out += "\nconnection filter refusals (C130): " + number(refused_by_client_.total()) + "\n";
    if (refused_by_client_.total() > 0) {
        text_table(out, "by client", refused_by_client_, opts_.top, "refusals");
    }
    for (const auto& m : read_error_messages_) {
        out += "\nread error: " + ascii::printable(m);
    }
    if (!read_error_messages_.empty()) {
        out += "\n";
    }
    return out;
}

std::string Analyzer::format_json() const {
    std::string out = "{\"input\":{";
    out += "\"bytes\":" + number(stats_.bytes) + ",\"lines\":" + number(stats_.lines) +
           ",\"blank\":" + number(stats_.blank) + ",\"malformed\":" + number(stats_.malformed) +
           ",\"too_long\":" + number(stats_.too_long) +
           ",\"filtered_out\":" + number(stats_.filtered_out) +
           ",\"matched\":" + number(stats_.matched) +
           ",\"read_errors\":" + number(stats_.read_errors) + "}";
    out += ",\"time_range\":";
    if (have_time_) {
        out += "{\"first\":\"" + format_timestamp(first_) + "\",\"last\":\"" +
               format_timestamp(last_) + "\"}";
    } else {
        out += "null";
    }
    out += ",\"codes\":";
    json_counts(out, codes_);
    out += ",\"events\":";
    json_counts(out, events_);

    out += ",\"denied\":{\"total\":" + number(denied_total()) + ",\"by_client\":";
    json_table(out, denied_by_client_, opts_.top);
    out += ",\"by_network\":";
    json_table(out, denied_by_network_, opts_.top);
    out += ",\"by_sender\":";
    json_table(out, denied_by_sender_, opts_.top);
    out += ",\"by_recipient_domain\":";
    json_table(out, denied_by_rcpt_domain_, opts_.top);
    out += "}";

    const auto* g106 = codes_.find("G106");
    const auto* g110 = codes_.find("G110");
    out += ",\"weak_grants\":{\"total\":" + number(weak_total()) +
           ",\"G106\":" + number(g106 ? g106->count : 0) +
           ",\"G110\":" + number(g110 ? g110->count : 0) + ",\"by_client\":";
    json_table(out, weak_by_client_, opts_.top);
    out += ",\"by_sender\":";
    json_table(out, weak_by_sender_, opts_.top);
    out += "}";

    auto all = users();
    out += ",\"authenticated\":{\"total\":" + number(auth_by_user_.total()) +
           ",\"users\":" + number(all.size()) + ",\"median\":" + format_double(user_median()) +
           ",\"unusual_factor\":" + format_double(opts_.user_factor) +
           ",\"unusual_min\":" + number(opts_.user_min_volume) +
           ",\"exact\":" + (auth_by_user_.exact() ? "true" : "false") + ",\"top\":[";
    for (std::size_t i = 0; i < all.size() && i < opts_.top; ++i) {
        const auto& e = all[i].entry;
        out += i == 0 ? "{\"key\":" : ",{\"key\":";
        append_json_string(out, e.key);
        out += ",\"count\":" + number(e.count) + ",\"error\":" + number(e.error) + ",\"first\":\"" +
               format_timestamp(e.first) + "\",\"last\":\"" + format_timestamp(e.last) +
               "\",\"unusual\":" + (all[i].unusual ? "true" : "false") + "}";
    }
    out += "],\"unusual_users\":[";
    bool first = true;
    for (const auto& u : all) {
        if (u.unusual) {
            out += first ? "" : ",";
            append_json_string(out, u.entry.key);
            first = false;
        }
    }
    out += "]}";

    out += ",\"connection_refusals\":{\"total\":" + number(refused_by_client_.total()) +
           ",\"by_client\":";
    json_table(out, refused_by_client_, opts_.top);
    out += "}";

    out += ",\"warnings\":[";
    auto warns = warnings();
    for (std::size_t i = 0; i < warns.size(); ++i) {
        if (i > 0) {
            out += ",";
        }
        append_json_string(out, warns[i]);
    }
    out += "],\"read_errors\":[";
    for (std::size_t i = 0; i < read_error_messages_.size(); ++i) {
        if (i > 0) {
            out += ",";
        }
        append_json_string(out, read_error_messages_[i]);
    }
    bool exact = codes_.exact() && events_.exact() && denied_by_client_.exact() &&
                 denied_by_network_.exact() && denied_by_sender_.exact() &&
                 denied_by_rcpt_domain_.exact() && weak_by_client_.exact() &&
                 weak_by_sender_.exact() && auth_by_user_.exact() && refused_by_client_.exact();
    out += std::string("],\"exact\":") + (exact ? "true" : "false") + "}\n";
    return out;
}

}  // namespace sluice::ctl::logreport
