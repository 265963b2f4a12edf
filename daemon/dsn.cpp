#include "daemon/dsn.hpp"

#include <ctime>

namespace sluice::dsn {
namespace {

bool is_8bit(std::string_view s) {
    for (char c : s) {
        if (static_cast<unsigned char>(c) >= 0x80) {
            return true;
        }
    }
    return false;
}

// A field value from untrusted text: control characters become spaces (no CR/LF can end
// the field early) and, in a pure-ASCII report, 8-bit bytes become '?'.
std::string clean_value(std::string_view s, bool utf8) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            out.push_back(' ');
        } else if (u >= 0x80 && !utf8) {
            out.push_back('?');
        } else {
            out.push_back(c);
        }
    }
    return out;
}

// Appends "Name: value" folded (RFC 5322 §2.2.3) at spaces to about 78 columns; a run
// without spaces is broken hard before 998 octets.
void append_field(std::string& out, std::string_view name, std::string_view value) {
    std::string line(name);
    line += ": ";
    line += value;
    std::size_t start = 0;
    bool first = true;
    while (line.size() - start > limits::fold_at) {
        // Break at the last space within the soft limit (not at the very start of the
        // segment, so every folded line carries text).
        std::size_t limit = start + limits::fold_at;
        std::size_t cut = line.rfind(' ', limit);
        if (cut == std::string::npos || cut <= start + (first ? name.size() + 1 : 1)) {
            cut = line.find(' ', limit);
            if (cut == std::string::npos || cut - start > limits::hard_line - 2) {
                if (line.size() - start <= limits::hard_line - 2) {
                    break;
                }
                // No space anywhere near: a hard break. The continuation's leading space
                // is part of the value after unfolding; acceptable for an overlong token.
                cut = start + limits::hard_line - 2;
                out.append(line, start, cut - start);
                out.append("\r\n ");
                start = cut;
                first = false;
                continue;
            }
        }
        out.append(line, start, cut - start);
        out.append("\r\n");
        start = cut;  // the space starts the continuation line
        first = false;
    }
    out.append(line, start);
    out.append("\r\n");
}

// RFC 3463 §2: d.ddd.ddd with class 2, 4 or 5.
bool valid_status(std::string_view s) {
    if (s.size() < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') {
        return false;
    }
    std::size_t i = 2;
    for (int part = 0; part < 2; ++part) {
        std::size_t start = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
            ++i;
        }
        if (i == start || i - start > 3) {
            return false;
        }
        if (part == 0) {
            if (i >= s.size() || s[i] != '.') {
                return false;
            }
            ++i;
        }
    }
    return i == s.size();
}

std::string status_of(const RecipientReport& r) {
    if (valid_status(r.status)) {
        return r.status;
    }
    return r.action == Action::failed ? "5.0.0" : "4.0.0";
}

// Cuts the header section at a field boundary at most `limit` bytes long.
std::string_view cut_headers(std::string_view h, std::size_t limit) {
    if (h.size() <= limit) {
        return h;
    }
    std::size_t end = limit;
    for (;;) {
        std::size_t nl = h.rfind('\n', end - 1);
        if (nl == std::string_view::npos) {
            return {};
        }
        // The line after this one must start a new field (not be a continuation).
        if (nl + 1 < h.size() && h[nl + 1] != ' ' && h[nl + 1] != '\t') {
            return h.substr(0, nl + 1);
        }
        if (nl == 0) {
            return {};
        }
        end = nl;
    }
}

// Content with CRLF line endings and a final CRLF (the original comes from our spool and
// is CRLF already; this is the safety net for a bare LF).
void append_crlf_text(std::string& out, std::string_view s) {
    for (std::size_t i = 0; i < s.size(); ++i) {
        char c = s[i];
        if (c == '\n' && (i == 0 || s[i - 1] != '\r')) {
            out.append("\r\n");
        } else if (c == '\r' && (i + 1 == s.size() || s[i + 1] != '\n')) {
            out.append("\r\n");
        } else {
            out.push_back(c);
        }
    }
    if (!s.empty() && s.back() != '\n' && s.back() != '\r') {
        out.append("\r\n");
    }
}

std::string token(std::string_view s, std::size_t max) {
    std::string out;
    for (char c : s) {
        if (((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) &&
            out.size() < max) {
            out.push_back(c);
        }
    }
    return out.empty() ? std::string("0") : out;
}

}  // namespace

bool should_bounce(std::string_view sender) {
    return !sender.empty() && sender != "<>";
}

std::string_view header_block(std::string_view message) {
    if (message.starts_with("\r\n") || message.starts_with("\n")) {
        return {};
    }
    for (std::size_t nl = message.find('\n'); nl != std::string_view::npos;
         nl = message.find('\n', nl + 1)) {
        std::string_view rest = message.substr(nl + 1);
        if (rest.starts_with("\r\n") || rest.starts_with("\n")) {
            return message.substr(0, nl + 1);
        }
    }
    return message;
}

std::string build_dsn(const DsnInput& in) {
    if (!should_bounce(in.sender) || in.recipients.empty()) {
        return {};
    }
    std::string_view headers = cut_headers(header_block(in.original), limits::headers);
    std::string_view included = in.include_message ? in.original : headers;

    // RFC 6533: any non-ASCII address or 8-bit header makes this an internationalised
    // report; 8-bit body bytes alone only need an 8bit transfer encoding.
    bool utf8 = is_8bit(in.sender) || is_8bit(headers);
    for (const auto& r : in.recipients) {
        utf8 = utf8 || is_8bit(r.address) || is_8bit(r.original);
    }
    const std::string addr_type = utf8 ? "utf-8" : "rfc822";
    const std::string mta = clean_value(in.reporting_mta, false);

    std::size_t failed = 0;
    std::size_t delayed = 0;
    for (const auto& r : in.recipients) {
        (r.action == Action::failed ? failed : delayed) += 1;
    }

    // A boundary that occurs nowhere in what we include (RFC 2046 §5.1.1).
    const std::string qid = token(in.queue_id, 40);
    std::string boundary;
    for (unsigned n = 0;; ++n) {
        boundary = "=_sluice-" + qid + "-" + std::to_string(n);
        if (included.find(boundary) == std::string_view::npos) {
            break;
        }
    }
    const auto now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(in.now.time_since_epoch()).count();

    std::string out;
    out.reserve(2048 + included.size());
    append_field(out, "From", "Mail Delivery System <MAILER-DAEMON@" + mta + ">");
    append_field(out, "To", "<" + clean_value(in.sender, utf8) + ">");
    append_field(out, "Subject",
                 failed == 0    ? "Delayed Mail (still being retried)"
                 : delayed == 0 ? "Undelivered Mail Returned to Sender"
                                : "Delivery Status Notification");
    append_field(out, "Date", rfc5322_date(in.now));
    append_field(out, "Message-ID", "<" + std::to_string(now_ms) + "." + qid + "@" + mta + ">");
    append_field(out, "Auto-Submitted", "auto-replied");  // RFC 3834 §5
    append_field(out, "MIME-Version", "1.0");
    append_field(out, "Content-Type",
                 "multipart/report; report-type=delivery-status; "
                 "boundary=\"" +
                     boundary + "\"");
    out.append("\r\n");
    out.append("This is a MIME-encapsulated message.\r\n\r\n");

    // Part 1: for humans (RFC 6522 §3).
    out.append("--" + boundary + "\r\n");
    append_field(out, "Content-Description", "Notification");
    append_field(out, "Content-Type",
                 std::string("text/plain; charset=") + (utf8 ? "utf-8" : "us-ascii"));
    if (utf8) {
        append_field(out, "Content-Transfer-Encoding", "8bit");
    }
    out.append("\r\n");
    out.append("This is the mail system at host " + mta + ".\r\n\r\n");
    if (failed > 0) {
        out.append(
            "Your message could not be delivered to one or more recipients.\r\n"
            "The delivery report and the headers of your message are attached.\r\n\r\n");
        for (const auto& r : in.recipients) {
            if (r.action != Action::failed) {
                continue;
            }
            std::string why = r.diagnostic.empty() ? "status " + status_of(r) : r.diagnostic;
            append_field(out, "<" + clean_value(r.address, utf8) + ">", clean_value(why, utf8));
        }
        out.append("\r\n");
    }
    if (delayed > 0) {
        out.append(
            "Delivery to the following recipients has been delayed. The system will\r\n"
            "keep trying; you do not need to send the message again.\r\n\r\n");
        for (const auto& r : in.recipients) {
            if (r.action != Action::delayed) {
                continue;
            }
            std::string why = r.diagnostic.empty() ? "status " + status_of(r) : r.diagnostic;
            if (r.will_retry_until) {
                why += " (will retry until " + rfc5322_date(*r.will_retry_until) + ")";
            }
            append_field(out, "<" + clean_value(r.address, utf8) + ">", clean_value(why, utf8));
        }
        out.append("\r\n");
    }

    // Part 2: the machine-readable report (RFC 3464 §2).
    out.append("--" + boundary + "\r\n");
    append_field(out, "Content-Description", "Delivery report");
    append_field(out, "Content-Type",
                 utf8 ? "message/global-delivery-status" : "message/delivery-status");
    if (utf8) {
        append_field(out, "Content-Transfer-Encoding", "8bit");
    }
    out.append("\r\n");
    // Per-message fields (§2.2).
    append_field(out, "Reporting-MTA", "dns; " + mta);
    append_field(out, "X-Sluice-Queue-ID", clean_value(in.queue_id, false));
    if (!in.envelope_id.empty()) {
        append_field(out, "Original-Envelope-Id", clean_value(in.envelope_id, false));
    }
    append_field(out, "Arrival-Date", rfc5322_date(in.arrival));
    // Per-recipient fields (§2.3), each group after an empty line.
    for (const auto& r : in.recipients) {
        out.append("\r\n");
        if (!r.original.empty()) {
            append_field(out, "Original-Recipient",
                         addr_type + "; " + clean_value(r.original, utf8));
        }
        append_field(out, "Final-Recipient", addr_type + "; " + clean_value(r.address, utf8));
        append_field(out, "Action", r.action == Action::failed ? "failed" : "delayed");
        append_field(out, "Status", status_of(r));
        if (!r.remote_mta.empty()) {
            append_field(out, "Remote-MTA", "dns; " + clean_value(r.remote_mta, false));
        }
        if (!r.diagnostic.empty()) {
            append_field(out, "Diagnostic-Code", clean_value(r.diagnostic, utf8));
        }
        if (r.last_attempt) {
            append_field(out, "Last-Attempt-Date", rfc5322_date(*r.last_attempt));
        }
        if (r.action == Action::delayed && r.will_retry_until) {
            append_field(out, "Will-Retry-Until", rfc5322_date(*r.will_retry_until));
        }
    }
    out.append("\r\n");

    // Part 3: the original headers (RFC 6522 §4, text/rfc822-headers) or the message.
    out.append("--" + boundary + "\r\n");
    if (in.include_message) {
        append_field(out, "Content-Description", "Undelivered Message");
        append_field(out, "Content-Type", utf8 ? "message/global" : "message/rfc822");
        if (is_8bit(in.original)) {
            append_field(out, "Content-Transfer-Encoding", "8bit");
        }
    } else {
        append_field(out, "Content-Description", "Undelivered Message Headers");
        append_field(out, "Content-Type", utf8 ? "message/global-headers" : "text/rfc822-headers");
        if (utf8) {
            append_field(out, "Content-Transfer-Encoding", "8bit");
        }
    }
    out.append("\r\n");
    append_crlf_text(out, included);
    out.append("\r\n--" + boundary + "--\r\n");
    return out;
}

}  // namespace sluice::dsn
