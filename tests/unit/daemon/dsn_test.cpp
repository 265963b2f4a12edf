// The RFC 3464 / RFC 6522 DSN builder: structure, fields, loop safety and robustness
// against peer-controlled diagnostic texts and headers. (tests/integration/
// test_smtp_client.py parses the same output with Python's email package.)

#include "daemon/dsn.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace sluice::dsn;

namespace {

const TimePoint kNow = std::chrono::system_clock::from_time_t(1795341600);  // 2026-11-22 10:00
const std::string kOriginal =
    "Received: from client.test by mx.example.test\r\n"
    "From: Alice <alice@outside.test>\r\n"
    "To: user@example.test\r\n"
    "Subject: hello\r\n"
    "Message-ID: <orig-1@outside.test>\r\n"
    "\r\n"
    "SECRET BODY LINE\r\n";

DsnInput input() {
    DsnInput in;
    in.reporting_mta = "mx.example.test";
    in.sender = "alice@outside.test";
    in.queue_id = "Q1A2B3";
    in.arrival = kNow - std::chrono::hours(1);
    in.now = kNow;
    in.original = kOriginal;
    RecipientReport r;
    r.address = "user@example.test";
    r.original = "User@Example.test";
    r.action = Action::failed;
    r.status = "5.1.1";
    r.diagnostic = "smtp; 550 5.1.1 <user@example.test>: Recipient address rejected";
    r.remote_mta = "mail.internal";
    r.last_attempt = kNow;
    in.recipients.push_back(r);
    return in;
}

std::vector<std::string> lines_of(const std::string& s) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    while (pos < s.size()) {
        std::size_t e = s.find("\r\n", pos);
        if (e == std::string::npos) {
            out.push_back(s.substr(pos));
            break;
        }
        out.push_back(s.substr(pos, e - pos));
        pos = e + 2;
    }
    return out;
}

std::string boundary_of(const std::string& msg) {
    auto p = msg.find("boundary=\"");
    if (p == std::string::npos) {
        return {};
    }
    p += 10;
    return msg.substr(p, msg.find('"', p) - p);
}

// The body parts between the boundary delimiters (RFC 2046 §5.1.1).
std::vector<std::string> parts_of(const std::string& msg) {
    std::string b = boundary_of(msg);
    std::vector<std::string> parts;
    std::string delim = "\r\n--" + b;
    std::size_t pos = msg.find(delim);
    while (pos != std::string::npos) {
        std::size_t start = pos + delim.size();
        if (msg.compare(start, 2, "--") == 0) {
            break;  // close delimiter
        }
        start = msg.find("\r\n", start) + 2;
        std::size_t next = msg.find(delim, start);
        if (next == std::string::npos) {
            break;
        }
        parts.push_back(msg.substr(start, next - start));
        pos = next;
    }
    return parts;
}

bool has_line(const std::string& s, const std::string& line) {
    for (const auto& l : lines_of(s)) {
        if (l == line) {
            return true;
        }
    }
    return false;
}

void check_wellformed(const std::string& msg) {
    for (std::size_t i = 0; i < msg.size(); ++i) {
        if (msg[i] == '\n') {
            ASSERT_TRUE(i > 0 && msg[i - 1] == '\r') << "bare LF at " << i;
        }
        if (msg[i] == '\r') {
            ASSERT_TRUE(i + 1 < msg.size() && msg[i + 1] == '\n') << "bare CR at " << i;
        }
    }
    for (const auto& l : lines_of(msg)) {
        EXPECT_LE(l.size(), limits::hard_line);
    }
    ASSERT_TRUE(msg.ends_with("--\r\n"));
}

}  // namespace

TEST(Dsn, NeverForTheNullSender) {
    EXPECT_FALSE(should_bounce(""));
    EXPECT_FALSE(should_bounce("<>"));
    EXPECT_TRUE(should_bounce("alice@outside.test"));
    EXPECT_EQ(kNullSender, "");
    auto in = input();
    in.sender = "";
    EXPECT_EQ(build_dsn(in), "");
    in = input();
    in.recipients.clear();
    EXPECT_EQ(build_dsn(in), "");
}

TEST(Dsn, HeaderBlock) {
    EXPECT_EQ(header_block("A: 1\r\nB: 2\r\n\r\nbody\r\n"), "A: 1\r\nB: 2\r\n");
    EXPECT_EQ(header_block("A: 1\r\n folded\r\n\r\n"), "A: 1\r\n folded\r\n");
    EXPECT_EQ(header_block("A: 1\r\nB: 2\r\n"), "A: 1\r\nB: 2\r\n");  // no body
    EXPECT_EQ(header_block("\r\nbody only\r\n"), "");
    EXPECT_EQ(header_block("A: 1\n\nbody\n"), "A: 1\n");
}

TEST(Dsn, Rfc5322Date) {
    EXPECT_EQ(rfc5322_date(kNow), "Sun, 22 Nov 2026 10:00:00 +0000");
    EXPECT_EQ(rfc5322_date(std::chrono::system_clock::from_time_t(0)),
              "Thu, 01 Jan 1970 00:00:00 +0000");
}

TEST(Dsn, FailedReportStructure) {
    std::string msg = build_dsn(input());
    check_wellformed(msg);
    std::string head = msg.substr(0, msg.find("\r\n\r\n") + 2);
    EXPECT_TRUE(has_line(head, "From: Mail Delivery System <MAILER-DAEMON@mx.example.test>"));
    EXPECT_TRUE(has_line(head, "To: <alice@outside.test>"));
    EXPECT_TRUE(has_line(head, "Subject: Undelivered Mail Returned to Sender"));
    EXPECT_TRUE(has_line(head, "Date: Sun, 22 Nov 2026 10:00:00 +0000"));
    EXPECT_TRUE(has_line(head, "Auto-Submitted: auto-replied"));
    EXPECT_TRUE(has_line(head, "MIME-Version: 1.0"));
    EXPECT_NE(head.find("Content-Type: multipart/report; report-type=delivery-status;"),
              std::string::npos);
    EXPECT_NE(head.find("Message-ID: <"), std::string::npos);

    auto parts = parts_of(msg);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_TRUE(has_line(parts[0], "Content-Type: text/plain; charset=us-ascii"));
    EXPECT_NE(parts[0].find("<user@example.test>: smtp; 550 5.1.1"), std::string::npos);

    const std::string& report = parts[1];
    EXPECT_TRUE(has_line(report, "Content-Type: message/delivery-status"));
    EXPECT_TRUE(has_line(report, "Reporting-MTA: dns; mx.example.test"));
    EXPECT_TRUE(has_line(report, "X-Sluice-Queue-ID: Q1A2B3"));
    EXPECT_TRUE(has_line(report, "Arrival-Date: Sun, 22 Nov 2026 09:00:00 +0000"));
    EXPECT_TRUE(has_line(report, "Original-Recipient: rfc822; User@Example.test"));
    EXPECT_TRUE(has_line(report, "Final-Recipient: rfc822; user@example.test"));
    EXPECT_TRUE(has_line(report, "Action: failed"));
    EXPECT_TRUE(has_line(report, "Status: 5.1.1"));
    EXPECT_TRUE(has_line(report, "Remote-MTA: dns; mail.internal"));
    EXPECT_TRUE(has_line(report, "Last-Attempt-Date: Sun, 22 Nov 2026 10:00:00 +0000"));
    EXPECT_NE(report.find("Diagnostic-Code: smtp; 550 5.1.1 <user@example.test>:"),
              std::string::npos);
    EXPECT_EQ(report.find("Will-Retry-Until"), std::string::npos);
    // Per-message and per-recipient groups are separated by an empty line (RFC 3464 §2.1).
    EXPECT_NE(report.find("+0000\r\n\r\nOriginal-Recipient"), std::string::npos);

    const std::string& headers = parts[2];
    EXPECT_TRUE(has_line(headers, "Content-Type: text/rfc822-headers"));
    EXPECT_NE(headers.find("Subject: hello\r\nMessage-ID: <orig-1@outside.test>\r\n"),
              std::string::npos);
    EXPECT_EQ(msg.find("SECRET BODY LINE"), std::string::npos);  // headers only by default
}

TEST(Dsn, DelayedAndMixedReports) {
    auto in = input();
    in.recipients[0].action = Action::delayed;
    in.recipients[0].status = "4.4.1";
    in.recipients[0].will_retry_until = kNow + std::chrono::hours(96);
    std::string msg = build_dsn(in);
    check_wellformed(msg);
    EXPECT_TRUE(has_line(msg, "Subject: Delayed Mail (still being retried)"));
    EXPECT_TRUE(has_line(msg, "Action: delayed"));
    EXPECT_TRUE(has_line(msg, "Status: 4.4.1"));
    EXPECT_TRUE(has_line(msg, "Will-Retry-Until: Thu, 26 Nov 2026 10:00:00 +0000"));

    RecipientReport f;
    f.address = "gone@example.test";
    f.action = Action::failed;
    in.recipients.push_back(f);
    msg = build_dsn(in);
    EXPECT_TRUE(has_line(msg, "Subject: Delivery Status Notification"));
    EXPECT_TRUE(has_line(msg, "Final-Recipient: rfc822; gone@example.test"));
    EXPECT_TRUE(has_line(msg, "Status: 5.0.0"));  // none given: derived from the action
}

TEST(Dsn, InvalidStatusIsReplacedByTheActionsDefault) {
    for (std::string bad : {"550", "5.1", "6.1.1", "5.1.1 x", "5.1234.1", "x"}) {
        auto in = input();
        in.recipients[0].status = bad;
        EXPECT_TRUE(has_line(build_dsn(in), "Status: 5.0.0")) << bad;
    }
}

TEST(Dsn, PeerTextCannotAddFieldsOrParts) {
    auto in = input();
    in.recipients[0].diagnostic = "smtp; 550 bad\r\nAction: delivered\r\n\r\n--x--";
    in.recipients[0].remote_mta = "evil\r\nStatus: 2.0.0";
    std::string msg = build_dsn(in);
    check_wellformed(msg);
    for (const auto& l : lines_of(msg)) {
        EXPECT_NE(l, "Action: delivered");
        EXPECT_NE(l, "Status: 2.0.0");
        EXPECT_FALSE(l.starts_with("--x"));
    }
    EXPECT_EQ(parts_of(msg).size(), 3u);
}

TEST(Dsn, BoundaryNeverOccursInTheContent) {
    auto in = input();
    std::string original = "X-Trap: =_sluice-Q1A2B3-0 and =_sluice-Q1A2B3-1\r\n" + kOriginal;
    in.original = original;
    std::string msg = build_dsn(in);
    std::string b = boundary_of(msg);
    EXPECT_EQ(b, "=_sluice-Q1A2B3-2");
    EXPECT_EQ(parts_of(msg).size(), 3u);
}

TEST(Dsn, LongDiagnosticsAreFolded) {
    auto in = input();
    std::string text = "smtp; 550 5.7.1";
    for (int i = 0; i < 60; ++i) {
        text += " word" + std::to_string(i);
    }
    in.recipients[0].diagnostic = text;
    in.recipients[0].address = std::string(1200, 'a') + "@example.test";  // no space to fold at
    std::string msg = build_dsn(in);
    check_wellformed(msg);
    // Unfolding (RFC 5322 §2.2.3) gives the value back.
    auto p = msg.find("Diagnostic-Code: ");
    ASSERT_NE(p, std::string::npos);
    std::string field = msg.substr(p, msg.find("\r\n", p) - p);
    std::size_t q = msg.find("\r\n", p);
    while (msg[q + 2] == ' ') {
        std::size_t e = msg.find("\r\n", q + 2);
        field += msg.substr(q + 2, e - q - 2);
        q = e;
    }
    EXPECT_EQ(field, "Diagnostic-Code: " + text);
    for (const auto& l : lines_of(parts_of(msg)[1])) {
        if (l.find("word") != std::string::npos) {
            EXPECT_LE(l.size(), limits::fold_at);
        }
    }
}

TEST(Dsn, InternationalisedReportUsesRfc6533Types) {
    auto in = input();
    in.recipients[0].address = "j\xc3\xb6rg@example.test";
    in.recipients[0].original.clear();
    std::string msg = build_dsn(in);
    check_wellformed(msg);
    auto parts = parts_of(msg);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_TRUE(has_line(parts[1], "Content-Type: message/global-delivery-status"));
    EXPECT_TRUE(has_line(parts[1], "Final-Recipient: utf-8; j\xc3\xb6rg@example.test"));
    EXPECT_TRUE(has_line(parts[2], "Content-Type: message/global-headers"));

    // ASCII report: 8-bit bytes in a peer's text are replaced.
    in = input();
    in.recipients[0].diagnostic = "smtp; 550 caf\xc3\xa9";
    msg = build_dsn(in);
    EXPECT_NE(msg.find("Diagnostic-Code: smtp; 550 caf??"), std::string::npos);
    EXPECT_TRUE(has_line(msg, "Content-Type: message/delivery-status"));
}

TEST(Dsn, FullMessageOnRequest) {
    auto in = input();
    in.include_message = true;
    std::string msg = build_dsn(in);
    check_wellformed(msg);
    auto parts = parts_of(msg);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_TRUE(has_line(parts[2], "Content-Type: message/rfc822"));
    EXPECT_NE(parts[2].find("\r\n\r\nSECRET BODY LINE\r\n"), std::string::npos);
}

TEST(Dsn, HugeHeaderSectionIsCutAtAFieldBoundary) {
    std::string original;
    for (int i = 0; original.size() < 3 * limits::headers; ++i) {
        original += "X-Filler-" + std::to_string(i) + ": some value\r\n\tcontinued\r\n";
    }
    original += "\r\nbody\r\n";
    auto in = input();
    in.original = original;
    std::string msg = build_dsn(in);
    check_wellformed(msg);
    auto parts = parts_of(msg);
    ASSERT_EQ(parts.size(), 3u);
    std::string included = parts[2].substr(parts[2].find("\r\n\r\n") + 4);
    EXPECT_LE(included.size(), limits::headers);
    EXPECT_GT(included.size(), limits::headers / 2);
    EXPECT_TRUE(included.ends_with("\tcontinued\r\n"));  // never half a field
    EXPECT_TRUE(included.starts_with("X-Filler-0: "));
}
