#include "policy/address.hpp"

#include <cstdint>
#include <optional>

#include "common/ascii.hpp"
#include "common/net.hpp"

namespace sluice::policy {
namespace {

bool is_alpha(unsigned char c) {
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
bool is_digit(unsigned char c) {
    return c >= '0' && c <= '9';
}
bool is_hex(unsigned char c) {
    return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}
bool is_ldh(unsigned char c) {
    return is_alpha(c) || is_digit(c) || c == '-';
}

// atext of RFC 5322 §3.2.3, which RFC 5321 §4.1.2 uses for Atom.
bool is_atext(unsigned char c) {
    if (is_alpha(c) || is_digit(c)) {
        return true;
    }
    switch (c) {
        case '!':
        case '#':
        case '$':
        case '%':
        case '&':
        case '\'':
        case '*':
        case '+':
        case '-':
        case '/':
        case '=':
        case '?':
        case '^':
        case '_':
        case '`':
        case '{':
        case '|':
        case '}':
        case '~':
            return true;
        default:
            return false;
    }
}

// qtextSMTP of RFC 5321 §4.1.2: printable ASCII and space, except '"' and '\'.
bool is_qtext(unsigned char c) {
    return c >= 32 && c <= 126 && c != '"' && c != '\\';
}

// Length of the UTF-8 sequence at s[i] (whose lead byte is >= 0x80), or 0 when it is not
// well-formed UTF-8 (RFC 3629 §4: no overlong forms, no surrogates, nothing past
// U+10FFFF) or is a C1 control character (U+0080..U+009F), which no address may hold.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
    auto b0 = static_cast<unsigned char>(s[i]);
    std::size_t len = 0;
    char32_t cp = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
        cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        cp = b0 & 0x07;
    } else {
        return 0;
    }
    if (i + len > s.size()) {
        return 0;
    }
    for (std::size_t k = 1; k < len; ++k) {
        auto b = static_cast<unsigned char>(s[i + k]);
        if ((b & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (b & 0x3F);
    }
    bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
    bool c1 = cp >= 0x80 && cp <= 0x9F;
    if (overlong || surrogate || c1 || cp > 0x10FFFF) {
        return 0;
    }
    return len;
}

// Simple lower-case mapping for the capitals of Latin-1, Latin Extended-A, Greek and
// Cyrillic (all two-byte sequences, so the canonical domain keeps its length). IDNA2008
// U-labels are lower-case already; this folds what UTS #46 clients may still send.
char32_t lower_code_point(char32_t cp) {
    if ((cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) || (cp >= 0x391 && cp <= 0x3AB && cp != 0x3A2) ||
        (cp >= 0x410 && cp <= 0x42F)) {
        return cp + 0x20;
    }
    if (cp >= 0x400 && cp <= 0x40F) {
        return cp + 0x50;
    }
    if (cp >= 0x100 && cp <= 0x17F) {
        if (cp == 0x130 || cp == 0x138 || cp == 0x149 || cp == 0x17F) {
            return cp;  // İ (lower-cases to two code points), ĸ, ŉ, ſ
        }
        if (cp == 0x178) {
            return 0xFF;
        }
        bool odd_upper = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E);
        return (cp % 2 == (odd_upper ? 1u : 0u)) ? cp + 1 : cp;
    }
    switch (cp) {
        case 0x386:
            return 0x3AC;
        case 0x388:
            return 0x3AD;
        case 0x389:
            return 0x3AE;
        case 0x38A:
            return 0x3AF;
        case 0x38C:
            return 0x3CC;
        case 0x38E:
            return 0x3CD;
        case 0x38F:
            return 0x3CE;
        default:
            return cp;
    }
}

// `in` is a validated domain name (ASCII LDH or UTF-8 U-label characters).
std::string lower_domain(std::string_view in) {
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size();) {
        auto c = static_cast<unsigned char>(in[i]);
        if (c < 0x80) {
            out.push_back(static_cast<char>(is_alpha(c) ? (c | 0x20) : c));
            ++i;
        } else if ((c & 0xE0) == 0xC0) {
            char32_t cp = ((c & 0x1F) << 6) | (static_cast<unsigned char>(in[i + 1]) & 0x3F);
            cp = lower_code_point(cp);
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
            i += 2;
        } else {
            std::size_t len = (c & 0xF0) == 0xE0 ? 3 : 4;
            out.append(in.substr(i, len));
            i += len;
        }
    }
    return out;
}

// Whether `s` (already free of '\', '"' and controls) is a valid Dot-string, counting
// every non-ASCII byte as atext (its UTF-8 was checked when it was read).
bool is_dot_string(std::string_view s) {
    if (s.empty() || s.front() == '.' || s.back() == '.') {
        return false;
    }
    char prev = 0;
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        if (c == '.') {
            if (prev == '.') {
                return false;
            }
        } else if (c < 0x80 && !is_atext(c)) {
            return false;
        }
        prev = ch;
    }
    return true;
}

// An inet_aton(3) number part: decimal, octal (leading 0) or hex ("0x", digits optional).
bool is_ip_number_part(std::string_view label) {
    if (label.size() >= 2 && label[0] == '0' && (label[1] | 0x20) == 'x') {
        for (std::size_t i = 2; i < label.size(); ++i) {
            if (!is_hex(static_cast<unsigned char>(label[i]))) {
                return false;
            }
        }
        return true;
    }
    for (char c : label) {
        if (!is_digit(static_cast<unsigned char>(c))) {
            return false;
        }
    }
    return !label.empty();
}

bool all_digits(std::string_view label) {
    for (char c : label) {
        if (!is_digit(static_cast<unsigned char>(c))) {
            return false;
        }
    }
    return !label.empty();
}

// Recursive descent over one path. Every function returns false with `error_` set on
// failure; `pos_` then no longer matters.
class PathParser {
  public:
    PathParser(std::string_view text, bool smtputf8) : text_(text), smtputf8_(smtputf8) {}

    ParsedPath run(bool reverse_path);

  private:
    bool fail(PathError e) {
        if (error_ == PathError::none) {
            error_ = e;
        }
        return false;
    }
    bool at(char c) const { return pos_ < text_.size() && text_[pos_] == c; }
    unsigned char peek() const {
        return pos_ < text_.size() ? static_cast<unsigned char>(text_[pos_]) : 0;
    }

    bool utf8_char();
    bool dot_string();
    bool quoted_string(std::string& content);
    bool domain(std::string& out, std::size_t& written);
    bool address_literal(std::string& out);

    std::string_view text_;
    bool smtputf8_;
    std::size_t pos_ = 0;
    PathError error_ = PathError::none;
};

// One non-ASCII character where RFC 6531 §3.3 allows UTF8-non-ascii.
bool PathParser::utf8_char() {
    std::size_t len = utf8_sequence(text_, pos_);
    if (len == 0) {
        return fail(PathError::syntax);
    }
    if (!smtputf8_) {
        return fail(PathError::needs_smtputf8);
    }
    pos_ += len;
    return true;
}

// Dot-string = Atom *("." Atom), Atom = 1*atext (RFC 5321 §4.1.2).
bool PathParser::dot_string() {
    for (;;) {
        std::size_t atom = pos_;
        while (pos_ < text_.size()) {
            unsigned char c = peek();
            if (c >= 0x80) {
                if (!utf8_char()) {
                    return false;
                }
            } else if (is_atext(c)) {
                ++pos_;
            } else {
                break;
            }
        }
        if (pos_ == atom) {
            return fail(PathError::syntax);
        }
        if (!at('.')) {
            return true;
        }
        ++pos_;
    }
}

// Quoted-string = DQUOTE *QcontentSMTP DQUOTE; `content` receives it unescaped.
bool PathParser::quoted_string(std::string& content) {
    ++pos_;  // the opening quote
    for (;;) {
        if (pos_ >= text_.size()) {
            return fail(PathError::syntax);
        }
        unsigned char c = peek();
        if (c == '"') {
            ++pos_;
            return true;
        }
        if (c == '\\') {
            // quoted-pairSMTP = %d92 %d32-126: never a control, never an 8-bit byte.
            if (pos_ + 1 >= text_.size()) {
                return fail(PathError::syntax);
            }
            auto d = static_cast<unsigned char>(text_[pos_ + 1]);
            if (d < 32 || d > 126) {
                return fail(PathError::syntax);
            }
            content.push_back(static_cast<char>(d));
            pos_ += 2;
        } else if (c >= 0x80) {
            std::size_t start = pos_;
            if (!utf8_char()) {
                return false;
            }
            content.append(text_.substr(start, pos_ - start));
        } else if (is_qtext(c)) {
            content.push_back(static_cast<char>(c));
            ++pos_;
        } else {
            return fail(PathError::syntax);
        }
    }
}

// Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str] (RFC 5321
// §4.1.2), or a U-label with SMTPUTF8 (RFC 6531 §3.3). One trailing dot (the root) is
// accepted and dropped. `written` is the length as sent without that dot.
bool PathParser::domain(std::string& out, std::size_t& written) {
    std::size_t start = pos_;
    std::size_t end = pos_;
    std::size_t labels = 0;
    bool all_ip_numbers = true;
    std::string_view last;
    for (;;) {
        std::size_t label = pos_;
        bool ascii = true;
        while (pos_ < text_.size()) {
            unsigned char c = peek();
            if (c >= 0x80) {
                if (!utf8_char()) {
                    return false;
                }
                ascii = false;
            } else if (is_ldh(c)) {
                ++pos_;
            } else {
                break;
            }
        }
        std::size_t len = pos_ - label;
        if (len == 0 || text_[label] == '-' || text_[pos_ - 1] == '-' ||
            (ascii && len > limits::label)) {
            return fail(PathError::syntax);
        }
        last = text_.substr(label, len);
        all_ip_numbers = all_ip_numbers && is_ip_number_part(last);
        ++labels;
        end = pos_;
        if (!at('.')) {
            break;
        }
        ++pos_;
        unsigned char next = peek();
        if (!(next >= 0x80 || is_ldh(next))) {
            break;  // a trailing dot: the caller checks what follows
        }
    }
    // RFC 3696 §2: a top-level label is never all-numeric. Together with the inet_aton(3)
    // forms (1 to 4 parts of decimal, octal or hex) this rejects every IPv4 address
    // spelled as a name, which some resolvers would happily connect to.
    if (all_digits(last) || (labels <= 4 && all_ip_numbers)) {
        return fail(PathError::syntax);
    }
    written = end - start;
    out = lower_domain(text_.substr(start, end - start));
    return true;
}

// address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]" (RFC 5321
// §4.1.3). General-address-literal needs an IANA-registered tag and none exists: refused.
bool PathParser::address_literal(std::string& out) {
    std::size_t close = text_.find(']', pos_);
    if (close == std::string_view::npos) {
        return fail(PathError::syntax);
    }
    std::string_view inner = text_.substr(pos_ + 1, close - pos_ - 1);
    if (inner.size() > 5 && ascii::iequals(inner.substr(0, 5), "IPv6:")) {
        std::string_view v6 = inner.substr(5);
        for (char ch : v6) {
            auto c = static_cast<unsigned char>(ch);
            if (!is_hex(c) && c != ':' && c != '.') {
                return fail(PathError::syntax);
            }
        }
        std::optional<IpAddr> ip;
        if (v6.find(':') != std::string_view::npos) {
            ip = parse_ip(v6);  // parse_ip would take "IPv6:192.0.2.1" as IPv4 otherwise
        }
        if (!ip) {
            return fail(PathError::syntax);
        }
        // An IPv4-mapped IPv6 literal is the IPv4 address: one spelling, one decision.
        out = ip->v4 ? "[" + format_ip(*ip) + "]" : "[IPv6:" + format_ip(*ip) + "]";
    } else {
        // IPv4-address-literal = Snum 3("." Snum), Snum = 1*3DIGIT (0-255), decimal only.
        unsigned parts[4] = {};
        std::size_t i = 0;
        for (int n = 0; n < 4; ++n) {
            if (n > 0) {
                if (i >= inner.size() || inner[i] != '.') {
                    return fail(PathError::syntax);
                }
                ++i;
            }
            std::size_t digits = 0;
            unsigned v = 0;
            while (i < inner.size() && is_digit(static_cast<unsigned char>(inner[i])) &&
                   digits < 3) {
                v = v * 10 + static_cast<unsigned>(inner[i] - '0');
                ++i;
                ++digits;
            }
            if (digits == 0 || v > 255) {
                return fail(PathError::syntax);
            }
            parts[n] = v;
        }
        if (i != inner.size()) {
            return fail(PathError::syntax);
        }
        out = "[" + std::to_string(parts[0]) + "." + std::to_string(parts[1]) + "." +
              std::to_string(parts[2]) + "." + std::to_string(parts[3]) + "]";
    }
    pos_ = close + 1;
    return true;
}

ParsedPath PathParser::run(bool reverse_path) {
    ParsedPath r;
    Address& a = r.address;
    if (!at('<')) {
        r.error = PathError::syntax;
        return r;
    }
    ++pos_;
    if (reverse_path && at('>')) {
        a.null = true;
        r.consumed = 2;
        return r;
    }

    // A-d-l = At-domain *( "," At-domain ) ":" (RFC 5321 §4.1.2). Servers may ignore the
    // route (§3.6.1, §C); it is dropped here and flagged for the policy.
    if (at('@')) {
        for (;;) {
            ++pos_;  // '@'
            std::string ignored;
            std::size_t written = 0;
            if (!domain(ignored, written)) {
                r.error = error_;
                return r;
            }
            if (!at(',')) {
                break;
            }
            ++pos_;
            if (!at('@')) {
                r.error = PathError::syntax;
                return r;
            }
        }
        if (!at(':')) {
            r.error = PathError::syntax;
            return r;
        }
        ++pos_;
        a.had_source_route = true;
    }

    // RCPT TO:<Postmaster> (RFC 5321 §4.1.1.3), case-insensitive, no route, no domain.
    constexpr std::string_view postmaster = "Postmaster";
    if (!reverse_path && !a.had_source_route &&
        ascii::iequals(text_.substr(pos_, postmaster.size()), postmaster) &&
        pos_ + postmaster.size() < text_.size() && text_[pos_ + postmaster.size()] == '>') {
        a.local = std::string(postmaster);
        a.postmaster_only = true;
        r.consumed = pos_ + postmaster.size() + 1;
        return r;
    }

    std::size_t local_start = pos_;
    if (at('"')) {
        std::string content;
        if (!quoted_string(content)) {
            r.error = error_;
            return r;
        }
        if (is_dot_string(content)) {
            a.local = std::move(content);
        } else {
            a.quoted_local = true;
            a.local.reserve(content.size() + 2);
            a.local.push_back('"');
            for (char c : content) {
                if (c == '"' || c == '\\') {
                    a.local.push_back('\\');
                }
                a.local.push_back(c);
            }
            a.local.push_back('"');
        }
    } else {
        if (!dot_string()) {
            r.error = error_;
            return r;
        }
        a.local = std::string(text_.substr(local_start, pos_ - local_start));
    }
    std::size_t local_len = pos_ - local_start;

    if (!at('@')) {
        r.error = PathError::syntax;
        return r;
    }
    ++pos_;
    std::size_t domain_len = 0;
    if (at('[')) {
        std::size_t start = pos_;
        if (!address_literal(a.domain)) {
            r.error = error_;
            return r;
        }
        a.ip_literal = true;
        domain_len = pos_ - start;
    } else if (!domain(a.domain, domain_len)) {
        r.error = error_;
        return r;
    }
    // Anything but '>' here, a second '@' above all, is a syntax error: "user@a@b" is
    // never read as "user@a" routed through "b".
    if (!at('>')) {
        r.error = PathError::syntax;
        return r;
    }
    ++pos_;

    if (local_len > limits::local_part) {
        r.error = PathError::local_too_long;
    } else if (domain_len > limits::domain) {
        r.error = PathError::domain_too_long;
    } else if (pos_ > limits::path) {
        r.error = PathError::path_too_long;
    }
    if (r.error != PathError::none) {
        r.address = Address{};
        return r;
    }
    for (char c : a.local) {
        a.utf8 = a.utf8 || static_cast<unsigned char>(c) >= 0x80;
    }
    for (char c : a.domain) {
        a.utf8 = a.utf8 || static_cast<unsigned char>(c) >= 0x80;
    }
    r.consumed = pos_;
    return r;
}

}  // namespace

std::string Address::str() const {
    if (null) {
        return {};
    }
    if (postmaster_only) {
        return local;
    }
    std::string s;
    s.reserve(local.size() + 1 + domain.size());
    s += local;
    s.push_back('@');
    s += domain;
    return s;
}

ParsedPath parse_path(std::string_view text, bool reverse_path, bool smtputf8) {
    ParsedPath r = PathParser(text, smtputf8).run(reverse_path);
    if (r.error != PathError::none) {
        r.address = Address{};
        r.consumed = 0;
    }
    return r;
}

std::string_view path_error_name(PathError e) {
    switch (e) {
        case PathError::none:
            return "none";
        case PathError::syntax:
            return "syntax";
        case PathError::local_too_long:
            return "local_too_long";
        case PathError::domain_too_long:
            return "domain_too_long";
        case PathError::path_too_long:
            return "path_too_long";
        case PathError::needs_smtputf8:
            return "needs_smtputf8";
    }
    return "unknown";
}

Reply path_error_reply(PathError e, bool reverse_path) {
    switch (e) {
        case PathError::none:
            return reverse_path ? Reply::sender_ok : Reply::recipient_ok;
        case PathError::local_too_long:
        case PathError::domain_too_long:
        case PathError::path_too_long:
            return reverse_path ? Reply::sender_too_long : Reply::recipient_too_long;
        case PathError::needs_smtputf8:
            return Reply::needs_smtputf8;
        case PathError::syntax:
            break;
    }
    return reverse_path ? Reply::bad_sender : Reply::bad_recipient;
}

}  // namespace sluice::policy
