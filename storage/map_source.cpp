#include "storage/map_source.hpp"

#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "common/ascii.hpp"

namespace sluice::storage {

namespace {

constexpr std::array<std::string_view, static_cast<std::size_t>(MapId::count_)> kNames = {
    "local_domains",     "local_addresses", "catch_all", "privileged_networks",
    "connection_filter", "access",          "users",     "rate_exempt",
};

bool is_blank(char c) {
    return c == ' ' || c == '\t';
}

std::string quote(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

// RFC 5322 §3.2.3 atext, plus UTF-8 octets (RFC 6531 §3.3). `%` and `!` are atext but
// are sender-specified routing to the policy (D113): an entry holding them never matches.
bool is_atext(unsigned char c) {
    if (c >= 0x80 || std::isalnum(c)) {
        return true;
    }
    return std::strchr("#$&'*+-/=?^_`{|}~", c) != nullptr && c != '\0';
}

bool is_dot_string(std::string_view s) {
    if (s.empty() || s.front() == '.' || s.back() == '.' ||
        s.find("..") != std::string_view::npos) {
        return false;
    }
    for (char ch : s) {
        if (ch != '.' && !is_atext(static_cast<unsigned char>(ch))) {
            return false;
        }
    }
    return true;
}

// The local part as the policy canonicalises it (policy/address.hpp): kept as written,
// except that a quoted local part whose content is a valid Dot-string loses its quotes
// (RFC 5321 §4.1.2 "SHOULD"), and other quoted content is re-quoted escaping only '"'
// and '\'. `%`, `!` and a quoted `@` are refused: the policy denies them as
// sender-specified routing (D113), so an entry holding one could never match.
std::optional<std::string> canonical_local(std::string_view local, std::string& error) {
    if (local.empty()) {
        error = "empty local part";
        return std::nullopt;
    }
    std::string content;
    bool quoted = local.front() == '"';
    if (quoted) {
        // RFC 5321 §4.1.2 Quoted-string: qtextSMTP or quoted-pairSMTP between quotes.
        if (local.size() < 2 || local.back() != '"') {
            error = "unterminated quoted local part";
            return std::nullopt;
        }
        for (std::size_t i = 1; i + 1 < local.size(); ++i) {
            char c = local[i];
            if (c == '\\') {
                if (i + 2 >= local.size()) {
                    error = "bad quoted-pair in local part";
                    return std::nullopt;
                }
                c = local[++i];
            } else if (c == '"') {
                error = "unescaped quote in local part";
                return std::nullopt;
            }
            content.push_back(c);
        }
        if (content.empty()) {
            error = "empty local part";
            return std::nullopt;
        }
    } else {
        content = std::string(local);
    }
    for (char ch : content) {
        unsigned char c = static_cast<unsigned char>(ch);
        if (c == '%' || c == '!' || c == '@') {
            error = std::string("\"") + ch +
                    "\" in local part (sender-specified routing is refused, so this entry could "
                    "never match)";
            return std::nullopt;
        }
        if (c < 0x20 || c == 0x7f) {
            error = "control character in local part";
            return std::nullopt;
        }
    }
    std::string out;
    if (is_dot_string(content)) {
        out = content;
    } else if (!quoted) {
        error = "not a valid local part (quote it, or remove the character)";
        return std::nullopt;
    } else {
        out = "\"";
        for (char c : content) {
            if (c == '"' || c == '\\') {
                out.push_back('\\');
            }
            out.push_back(c);
        }
        out.push_back('"');
    }
    if (out.size() > limits::kLocalPart) {
        error = "local part longer than 64 octets (RFC 5321 4.5.3.1.1)";
        return std::nullopt;
    }
    return out;
}

}  // namespace

std::string_view map_file_name(MapId id) {
    auto i = static_cast<std::size_t>(id);
    return i < kNames.size() ? kNames[i] : std::string_view("unknown");
}

std::optional<MapId> map_from_name(std::string_view name) {
    for (std::size_t i = 0; i < kNames.size(); ++i) {
        if (kNames[i] == name) {
            return static_cast<MapId>(i);
        }
    }
    return std::nullopt;
}

bool map_has_cidr_keys(MapId id) {
    return id == MapId::privileged_networks || id == MapId::connection_filter ||
           id == MapId::access || id == MapId::rate_exempt;
}

bool map_has_string_keys(MapId id) {
    return id != MapId::privileged_networks && id != MapId::connection_filter &&
           id != MapId::rate_exempt;
}

std::optional<std::string> normalise_domain(std::string_view domain, std::string& error) {
    std::string d = ascii::lower(domain);
    if (!d.empty() && d.back() == '.') {
        d.pop_back();
    }
    if (d.empty()) {
        error = "empty domain";
        return std::nullopt;
    }
    if (d.front() == '[') {
        error = "address literal " + quote(domain) + " (IP literals are refused by the policy)";
        return std::nullopt;
    }
    if (d.size() > limits::kDomain) {
        error = "domain longer than 255 octets (RFC 5321 4.5.3.1.2)";
        return std::nullopt;
    }
    std::size_t label = 0;
    for (std::size_t i = 0; i <= d.size(); ++i) {
        if (i == d.size() || d[i] == '.') {
            if (label == 0) {
                error = "empty label in domain " + quote(domain);
                return std::nullopt;
            }
            if (label > limits::kLabel) {
                error = "label longer than 63 octets in domain " + quote(domain);
                return std::nullopt;
            }
            if (d[i - 1] == '-' || d[i - label] == '-') {
                error = "label starts or ends with \"-\" in domain " + quote(domain);
                return std::nullopt;
            }
            label = 0;
            continue;
        }
        unsigned char c = static_cast<unsigned char>(d[i]);
        if (!(std::isalnum(c) || c == '-' || c >= 0x80)) {
            error = "character " + quote(std::string_view(&d[i], 1)) + " not allowed in domain " +
                    quote(domain);
            return std::nullopt;
        }
        ++label;
    }
    auto last = d.substr(d.rfind('.') == std::string::npos ? 0 : d.rfind('.') + 1);
    if (last.find_first_not_of("0123456789") == std::string::npos) {
        // RFC 3696 §2: a top-level label is never all-numeric; the policy refuses such
        // domains (an IP address in disguise), so the entry could never match.
        error = "domain " + quote(domain) + " has an all-numeric last label";
        return std::nullopt;
    }
    return d;
}

std::optional<std::string> normalise_address(std::string_view address, std::string& error) {
    if (!address.empty() && (address.front() == '<' || address.back() == '>')) {
        error = "write the address without angle brackets";
        return std::nullopt;
    }
    if (!address.empty() && address.front() == '@') {
        error = "source route or missing local part in " + quote(address);
        return std::nullopt;
    }
    auto at = address.rfind('@');
    if (at == std::string_view::npos) {
        error = "not an address (no \"@\"): " + quote(address);
        return std::nullopt;
    }
    std::string lerr;
    auto local = canonical_local(address.substr(0, at), lerr);
    if (!local) {
        error = lerr + " in " + quote(address);
        return std::nullopt;
    }
    std::string derr;
    auto domain = normalise_domain(address.substr(at + 1), derr);
    if (!domain) {
        error = derr;
        return std::nullopt;
    }
    std::string out = *local + "@" + *domain;
    if (out.size() > limits::kAddress) {
        error = "address longer than 254 octets (RFC 5321 4.5.3.1.3)";
        return std::nullopt;
    }
    return out;
}

namespace {

EntryCheck key_error(std::string msg) {
    EntryCheck c;
    c.error = std::move(msg);
    return c;
}

EntryCheck value_error(std::string msg) {
    EntryCheck c;
    c.error = std::move(msg);
    c.error_in_value = true;
    return c;
}

EntryCheck ok_entry(std::string key, std::optional<Cidr> cidr, std::string value) {
    EntryCheck c;
    c.entry = NormalEntry{std::move(key), cidr, std::move(value)};
    return c;
}

std::optional<Cidr> cidr_key(std::string_view key, std::string& error) {
    auto c = parse_cidr(key, error);
    if (!c) {
        error = "bad CIDR: " + error;
    }
    return c;
}

// OK | REJECT [text] | DEFER [text] (keywords case-insensitive, written upper-case).
std::optional<std::string> access_value(std::string_view value, std::string& error) {
    std::size_t sp = 0;
    while (sp < value.size() && !is_blank(value[sp])) {
        ++sp;
    }
    std::string_view word = value.substr(0, sp);
    std::string_view text = value.substr(sp);
    while (!text.empty() && is_blank(text.front())) {
        text.remove_prefix(1);
    }
    if (ascii::iequals(word, "OK")) {
        if (!text.empty()) {
            error = "OK takes no text";
            return std::nullopt;
        }
        return std::string("OK");
    }
    if (ascii::iequals(word, "REJECT") || ascii::iequals(word, "DEFER")) {
        if (text.size() > limits::kReplyText) {
            error = "reply text longer than 400 octets";
            return std::nullopt;
        }
        std::string out = ascii::iequals(word, "REJECT") ? "REJECT" : "DEFER";
        if (!text.empty()) {
            out += " ";
            out += text;
        }
        return out;
    }
    error = value.empty() ? "missing value (OK, REJECT [text] or DEFER [text])"
                          : "bad value " + quote(word) + " (use OK, REJECT [text] or DEFER [text])";
    return std::nullopt;
}

EntryCheck access_entry(std::string_view key, std::string_view value) {
    std::string err;
    auto v = access_value(value, err);
    std::optional<NormalEntry> e;
    std::string kerr;
    std::string k;
    std::optional<Cidr> cidr;
    if (key.size() > 5 && ascii::iequals(key.substr(0, 5), "rcpt:")) {
        auto rest = key.substr(5);
        if (!rest.empty() && rest.front() == '@') {
            auto d = normalise_domain(rest.substr(1), kerr);
            if (d) {
                k = "rcpt:@" + *d;
            }
        } else if (auto a = normalise_address(rest, kerr)) {
            k = "rcpt:" + *a;
        }
    } else if (!key.empty() && key.front() == '@') {
        if (auto d = normalise_domain(key.substr(1), kerr)) {
            k = "@" + *d;
        }
    } else if (key.find('@') != std::string_view::npos) {
        if (auto a = normalise_address(key, kerr)) {
            k = *a;
        }
    } else if (key.find_first_of(".:") != std::string_view::npos &&
               key.find_first_not_of("0123456789abcdefABCDEF.:/") == std::string_view::npos) {
        cidr = cidr_key(key, kerr);
        if (cidr) {
            k = format_cidr(*cidr);
        }
    } else {
        kerr = "bad key " + quote(key) +
               " (use a client CIDR, sender@domain, @domain or rcpt:ADDRESS)";
    }
    if (k.empty()) {
        return key_error(kerr);
    }
    if (!v) {
        return value_error(err);
    }
    return ok_entry(std::move(k), cidr, std::move(*v));
}

}  // namespace

EntryCheck normalise_entry(MapId map, std::string_view key, std::string_view value) {
    if (key.empty()) {
        return key_error("empty key");
    }
    if (value.size() > limits::kValue) {
        return value_error("value longer than 1024 octets");
    }
    std::string err;
    EntryCheck out;
    switch (map) {
        case MapId::local_domains: {
            auto d = normalise_domain(key, err);
            if (!d) {
                return key_error(err);
            }
            if (!value.empty()) {
                return value_error("local_domains takes no value");
            }
            out = ok_entry(*d, std::nullopt, "");
            break;
        }
        case MapId::local_addresses: {
            auto a = normalise_address(key, err);
            if (!a) {
                return key_error(err);
            }
            std::string target;
            if (!value.empty()) {
                auto t = normalise_address(value, err);
                if (!t) {
                    return value_error("target: " + err);
                }
                target = *t;
            }
            out = ok_entry(*a, std::nullopt, target);
            break;
        }
        case MapId::catch_all: {
            auto d = normalise_domain(key, err);
            if (!d) {
                return key_error(err);
            }
            if (value.empty()) {
                return value_error("catch_all needs the mailbox that receives unknown addresses");
            }
            auto t = normalise_address(value, err);
            if (!t) {
                return value_error("mailbox: " + err);
            }
            out = ok_entry(*d, std::nullopt, *t);
            break;
        }
        case MapId::privileged_networks:
        case MapId::rate_exempt: {
            auto c = cidr_key(key, err);
            if (!c) {
                return key_error(err);
            }
            out = ok_entry(format_cidr(*c), c, std::string(value));
            break;
        }
        case MapId::connection_filter: {
            auto c = cidr_key(key, err);
            if (!c) {
                return key_error(err);
            }
            std::string v = ascii::lower(value);
            if (v != "allow" && v != "deny") {
                return value_error(value.empty()
                                       ? "missing value (allow or deny)"
                                       : "bad value " + quote(value) + " (use allow or deny)");
            }
            out = ok_entry(format_cidr(*c), c, v);
            break;
        }
        case MapId::access:
            out = access_entry(key, value);
            break;
        case MapId::users:
            if (value.empty()) {
                return value_error("missing password hash");
            }
            if (value.find_first_of(" \t") != std::string_view::npos) {
                return value_error("a password hash is one token (no blanks)");
            }
            out = ok_entry(std::string(key), std::nullopt, std::string(value));
            break;
        case MapId::count_:
            return key_error("unknown map");
    }
    if (out.entry && out.entry->key.size() > limits::kKey) {
        return key_error("key longer than 511 octets");
    }
    return out;
}

ParseResult parse_map_text(MapId map, std::string_view text, const std::string& file) {
    ParseResult out;
    std::map<std::string, int> seen;  // canonical key -> first line
    auto report = [&](int line, std::size_t col, std::string msg) {
        out.diagnostics.push_back(
            {Diagnostic::Severity::error, {file, line, static_cast<int>(col) + 1}, std::move(msg)});
    };
    int line_no = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
        auto nl = text.find('\n', pos);
        std::string_view line = text.substr(pos, nl == std::string_view::npos ? nl : nl - pos);
        pos = nl == std::string_view::npos ? text.size() : nl + 1;
        ++line_no;
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        if (line.size() > limits::kLine) {
            report(line_no, 0, "line longer than 4096 octets");
            continue;
        }
        bool bad = false;
        for (std::size_t i = 0; i < line.size(); ++i) {
            unsigned char c = static_cast<unsigned char>(line[i]);
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                report(line_no, i, "control character in line");
                bad = true;
                break;
            }
        }
        if (bad) {
            continue;
        }
        std::size_t k0 = 0;
        while (k0 < line.size() && is_blank(line[k0])) {
            ++k0;
        }
        if (k0 == line.size() || line[k0] == '#') {
            continue;
        }
        std::size_t k1 = k0;
        while (k1 < line.size() && !is_blank(line[k1])) {
            ++k1;
        }
        std::size_t v0 = k1;
        while (v0 < line.size() && is_blank(line[v0])) {
            ++v0;
        }
        std::size_t v1 = line.size();
        while (v1 > v0 && is_blank(line[v1 - 1])) {
            --v1;
        }
        auto key = line.substr(k0, k1 - k0);
        auto value = line.substr(v0, v1 - v0);
        EntryCheck c = normalise_entry(map, key, value);
        if (!c.entry) {
            report(line_no, c.error_in_value ? v0 : k0,
                   std::string(map_file_name(map)) + ": " + c.error);
            continue;
        }
        // CIDRs and strings cannot collide: a CIDR's text form never contains "@".
        auto [it, inserted] = seen.emplace(c.entry->key, line_no);
        if (!inserted) {
            report(line_no, k0,
                   std::string(map_file_name(map)) + ": duplicate key " + quote(c.entry->key) +
                       " (first at " + file + ":" + std::to_string(it->second) + ")");
            continue;
        }
        out.entries.push_back({std::move(c.entry->key), std::move(c.entry->value),
                               file + ":" + std::to_string(line_no)});
    }
    return out;
}

ParseResult parse_map_file(MapId map, const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        ParseResult out;
        out.diagnostics.push_back({Diagnostic::Severity::error,
                                   {path, 0, 0},
                                   "cannot read map source: " + std::string(std::strerror(errno))});
        return out;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_map_text(map, ss.str(), path);
}

SourceRef split_source(std::string_view source) {
    SourceRef ref;
    auto colon = source.rfind(':');
    if (colon != std::string_view::npos && colon + 1 < source.size()) {
        auto digits = source.substr(colon + 1);
        int line = 0;
        auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), line);
        if (ec == std::errc() && end == digits.data() + digits.size()) {
            ref.file = std::string(source.substr(0, colon));
            ref.line = line;
            return ref;
        }
    }
    ref.file = std::string(source);
    return ref;
}

}  // namespace sluice::storage
