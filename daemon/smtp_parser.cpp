#include "daemon/smtp_parser.hpp"

#include <algorithm>
#include <cstring>

#include "common/ascii.hpp"

namespace sluice::smtp {
namespace {

struct VerbName {
    std::string_view name;
    Verb verb;
};

constexpr VerbName verbs[] = {
    {"EHLO", Verb::ehlo}, {"HELO", Verb::helo}, {"MAIL", Verb::mail}, {"RCPT", Verb::rcpt},
    {"DATA", Verb::data}, {"RSET", Verb::rset}, {"NOOP", Verb::noop}, {"QUIT", Verb::quit},
    {"VRFY", Verb::vrfy}, {"EXPN", Verb::expn}, {"HELP", Verb::help}, {"STARTTLS", Verb::starttls},
    {"AUTH", Verb::auth}, {"BDAT", Verb::bdat},
};

// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
bool keyword_char(char c, bool first) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (!first && c == '-');
}

// esmtp-value = 1*(%d33-60 / %d62-126 / UTF-8 non-ASCII (RFC 6531))
bool value_char(unsigned char c) {
    return (c >= 33 && c <= 126 && c != '=') || c >= 0x80;
}

}  // namespace

LineScanner::Result LineScanner::next(std::string_view in) {
    const std::size_t n = in.size();
    // RFC 5321 §4.5.3.1.4: 512 octets including CRLF, so the CR sits at index 510 at most.
    constexpr std::size_t kMaxContent = limits::kMaxCommandLine - 2;
    const std::size_t window = skipping_ ? n : std::min(n, kMaxContent + 1);
    for (std::size_t i = 0; i < window; ++i) {
        char c = in[i];
        if (c == '\n') {
            skipping_ = false;
            return {Status::bare_lf, {}, i + 1};
        }
        if (c != '\r') {
            continue;
        }
        if (i + 1 >= n) {
            // CR at the end: the next byte tells CRLF from a bare CR. Keep the CR only.
            return {Status::need_more, {}, skipping_ ? i : 0};
        }
        if (in[i + 1] != '\n') {
            skipping_ = false;
            return {Status::bare_cr, {}, i + 1};
        }
        if (skipping_) {
            // The end of an over-long line that was already reported: drop it silently.
            skipping_ = false;
            return {Status::need_more, {}, i + 2};
        }
        return {Status::line, in.substr(0, i), i + 2};
    }
    if (skipping_) {
        return {Status::need_more, {}, n};
    }
    if (n > kMaxContent) {
        // No CRLF where one had to be: report once, then discard up to the next CRLF
        // without buffering any of it.
        skipping_ = true;
        return {Status::too_long, {}, window};
    }
    return {Status::need_more, {}, 0};
}

std::string_view verb_name(Verb v) {
    for (const auto& e : verbs) {
        if (e.verb == v) {
            return e.name;
        }
    }
    return "UNKNOWN";
}

Command parse_command(std::string_view line) {
    Command cmd;
    for (unsigned char c : line) {
        if (c == 0) {
            cmd.has_nul = true;
        } else if (c >= 0x80) {
            cmd.has_8bit = true;
        }
    }
    std::size_t sp = line.find(' ');
    std::string_view word = line.substr(0, sp);
    std::string_view rest = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
    for (const auto& e : verbs) {
        if (ascii::iequals(word, e.name)) {
            cmd.verb = e.verb;
            break;
        }
    }
    if (cmd.verb == Verb::mail || cmd.verb == Verb::rcpt) {
        // RFC 5321 §4.1.1.2/3: "MAIL FROM:" / "RCPT TO:", no space before the colon. A space
        // after the colon is tolerated (common and harmless), nothing else is.
        std::string_view prefix = cmd.verb == Verb::mail ? "FROM:" : "TO:";
        if (rest.size() < prefix.size() || !ascii::iequals(rest.substr(0, prefix.size()), prefix)) {
            cmd.syntax_ok = false;
            return cmd;
        }
        rest.remove_prefix(prefix.size());
        if (!rest.empty() && rest.front() == ' ') {
            rest.remove_prefix(1);
        }
    }
    cmd.arg = rest;
    return cmd;
}

bool parse_params(std::string_view text, std::vector<Param>& out) {
    out.clear();
    while (!text.empty()) {
        if (text.front() != ' ') {
            return false;
        }
        while (!text.empty() && text.front() == ' ') {
            text.remove_prefix(1);
        }
        if (text.empty()) {
            break;
        }
        std::size_t end = text.find(' ');
        std::string_view item = text.substr(0, end);
        text = end == std::string_view::npos ? std::string_view{} : text.substr(end);
        Param p;
        std::size_t eq = item.find('=');
        std::string_view kw = item.substr(0, eq);
        if (kw.empty() || kw.size() > 64) {
            return false;
        }
        for (std::size_t i = 0; i < kw.size(); ++i) {
            if (!keyword_char(kw[i], i == 0)) {
                return false;
            }
            p.keyword.push_back(ascii::to_upper(kw[i]));
        }
        if (eq != std::string_view::npos) {
            std::string_view v = item.substr(eq + 1);
            if (v.empty()) {
                return false;
            }
            for (unsigned char c : v) {
                if (!value_char(c)) {
                    return false;
                }
            }
            p.value = std::string(v);
            p.has_value = true;
        }
        out.push_back(std::move(p));
        if (out.size() > 16) {
            return false;
        }
    }
    return true;
}

}  // namespace sluice::smtp
