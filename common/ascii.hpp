#pragma once
// ASCII text rules that every parser and every printer shares: case folding as SMTP, HTTP
// and the DNS define it (ASCII letters only, RFC 5321 §2.4, RFC 9110 §5.1, RFC 4343), never
// the C library's locale-dependent tolower; and what may reach a terminal or a log.
// Header-only and allocation-free where it can be, so the pure parsers and the fuzz
// targets use it without linking anything.

#include <string>
#include <string_view>

namespace sluice::ascii {

constexpr bool is_upper(char c) {
    return c >= 'A' && c <= 'Z';
}

constexpr bool is_lower(char c) {
    return c >= 'a' && c <= 'z';
}

constexpr char to_lower(char c) {
    return is_upper(c) ? static_cast<char>(c - 'A' + 'a') : c;
}

constexpr char to_upper(char c) {
    return is_lower(c) ? static_cast<char>(c - 'a' + 'A') : c;
}

// Equal but for the case of ASCII letters; bytes >= 0x80 compare as they are.
constexpr bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (to_lower(a[i]) != to_lower(b[i])) {
            return false;
        }
    }
    return true;
}

constexpr bool istarts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

constexpr bool has_upper(std::string_view s) {
    for (char c : s) {
        if (is_upper(c)) {
            return true;
        }
    }
    return false;
}

inline std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        c = to_lower(c);
    }
    return out;
}

inline std::string upper(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        c = to_upper(c);
    }
    return out;
}

// For a terminal, a report or a log: control characters (C0 and DEL) become `mask`, so
// peer-sent text cannot move the cursor or forge a line; UTF-8 passes.
inline std::string printable(std::string_view s, char mask = '?') {
    std::string out(s);
    for (char& c : out) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            c = mask;
        }
    }
    return out;
}

// The same, and every byte >= 0x80 becomes '?' too: for text from a server that owes us
// nothing (sluicectl relay-test), where not even a UTF-8 sequence is passed to a terminal.
inline std::string printable_ascii(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u >= 0x7f) {
            c = '?';
        }
    }
    return out;
}

}  // namespace sluice::ascii
