// The stats endpoint's HTTP request parser: every case is fed whole, byte by byte and at
// every fragment size, and must give the same outcome each way.

#include "daemon/http.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace sluice::http;
using namespace std::string_literals;

namespace {

struct Outcome {
    Status status;
    int code;
    std::string path;
};

Outcome run(const std::string& input, std::size_t fragment) {
    RequestParser p;
    Status st = Status::need_more;
    for (std::size_t i = 0; i < input.size() && st == Status::need_more; i += fragment) {
        st = p.feed(std::string_view(input).substr(i, fragment));
    }
    return {st, st == Status::error ? p.error_code() : 0,
            st == Status::request ? p.request().path : std::string()};
}

// Feeds `input` at every fragment size from 1 to its length; all must agree.
Outcome parse_all_ways(const std::string& input) {
    Outcome whole = run(input, input.size() == 0 ? 1 : input.size());
    for (std::size_t f = 1; f < input.size(); ++f) {
        Outcome o = run(input, f);
        EXPECT_EQ(o.status, whole.status) << "fragment size " << f;
        EXPECT_EQ(o.code, whole.code) << "fragment size " << f;
        EXPECT_EQ(o.path, whole.path) << "fragment size " << f;
        if (o.status != whole.status || o.code != whole.code) {
            break;  // one report is enough
        }
    }
    return whole;
}

int error_of(const std::string& input) {
    Outcome o = parse_all_ways(input);
    EXPECT_EQ(o.status, Status::error) << input.substr(0, 80);
    return o.code;
}

}  // namespace

TEST(HttpParser, SimpleGet) {
    auto o = parse_all_ways("GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n");
    ASSERT_EQ(o.status, Status::request);
    EXPECT_EQ(o.path, "/metrics");
}

TEST(HttpParser, FieldsAreLowerCasedAndTrimmed) {
    RequestParser p;
    ASSERT_EQ(p.feed("GET /x?a=1 HTTP/1.1\r\nHOST:  h.example \t\r\nAccept: text/plain\r\n\r\n"),
              Status::request);
    EXPECT_EQ(p.request().path, "/x");
    EXPECT_EQ(p.request().target, "/x?a=1");
    ASSERT_NE(p.request().field("host"), nullptr);
    EXPECT_EQ(*p.request().field("host"), "h.example");
    EXPECT_EQ(*p.request().field("accept"), "text/plain");
    EXPECT_EQ(p.request().field("missing"), nullptr);
    EXPECT_EQ(p.request().minor_version, 1);
}

TEST(HttpParser, HeadAndHttp10WithoutHost) {
    RequestParser p;
    ASSERT_EQ(p.feed("HEAD /healthz HTTP/1.0\r\n\r\n"), Status::request);
    EXPECT_EQ(p.request().method, Method::head);
    EXPECT_EQ(p.request().minor_version, 0);
}

TEST(HttpParser, BareLfLineEndsAndLeadingEmptyLines) {
    auto o = parse_all_ways("\r\n\nGET /readyz HTTP/1.1\nHost: x\n\n");
    ASSERT_EQ(o.status, Status::request);
    EXPECT_EQ(o.path, "/readyz");
    EXPECT_EQ(error_of("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
}

TEST(HttpParser, AbsoluteFormTarget) {
    auto o = parse_all_ways("GET http://stats.example:9125/metrics?x HTTP/1.1\r\nHost: s\r\n\r\n");
    ASSERT_EQ(o.status, Status::request);
    EXPECT_EQ(o.path, "/metrics");
    auto root = parse_all_ways("GET HTTP://h HTTP/1.1\r\nHost: h\r\n\r\n");
    ASSERT_EQ(root.status, Status::request);
    EXPECT_EQ(root.path, "/");
}

TEST(HttpParser, IncompleteHeadNeedsMore) {
    RequestParser p;
    EXPECT_EQ(p.feed("GET /metrics HTTP/1.1\r\nHost: x\r\n"), Status::need_more);
    EXPECT_EQ(p.feed("\r"), Status::need_more);
    EXPECT_EQ(p.feed("\n"), Status::request);
    // Once decided, later input is ignored.
    EXPECT_EQ(p.feed("garbage\r\n"), Status::request);
}

TEST(HttpParser, MethodsOtherThanGetAndHeadAre405) {
    EXPECT_EQ(error_of("POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
    EXPECT_EQ(error_of("DELETE / HTTP/1.1\r\n"), 405);
    EXPECT_EQ(error_of("get /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 405);  // case-sensitive
}

TEST(HttpParser, MalformedRequestLinesAre400) {
    EXPECT_EQ(error_of("GET /metrics\r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET  /metrics HTTP/1.1\r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET /metrics HTTP/1.1 \r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET /metrics http/1.1\r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET /metrics HTTP/1.11\r\n\r\n"), 400);
    EXPECT_EQ(error_of("G@T /metrics HTTP/1.1\r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET metrics HTTP/1.1\r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET * HTTP/1.1\r\n\r\n"), 400);
    EXPECT_EQ(error_of(std::string("GET /a\x01 HTTP/1.1\r\n\r\n")), 400);
    EXPECT_EQ(error_of("GET /a\0b HTTP/1.1\r\n\r\n"s), 400);
    EXPECT_EQ(error_of("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n"s), 400);  // TLS hello
}

TEST(HttpParser, OtherVersionsAre505) {
    EXPECT_EQ(error_of("GET / HTTP/2.0\r\n\r\n"), 505);
    EXPECT_EQ(error_of("GET / HTTP/0.9\r\n\r\n"), 505);
    RequestParser p;
    ASSERT_EQ(p.feed("GET / HTTP/1.7\r\nHost: x\r\n\r\n"), Status::request);
    EXPECT_EQ(p.request().minor_version, 1);
}

TEST(HttpParser, MalformedFieldsAre400) {
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);            // space before colon
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"), 400);  // obs-fold
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\nno colon here\r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\n: empty name\r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), 400);  // bare CR
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n"s), 400);
}

TEST(HttpParser, HostIsRequiredOnceIn11) {
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\n\r\n"), 400);
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
}

TEST(HttpParser, BodiesAreRefused) {
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"), 400);
    EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    auto ok = parse_all_ways("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    EXPECT_EQ(ok.status, Status::request);
}

TEST(HttpParser, LongTargetIs414AndLongGarbageIs400) {
    std::string target(limits::request_line, 'a');
    EXPECT_EQ(error_of("GET /" + target + " HTTP/1.1\r\nHost: x\r\n\r\n"), 414);
    EXPECT_EQ(error_of(std::string(limits::request_line + 10, 'x')), 400);
    // Exactly at the limit is fine.
    std::string fits = "GET /" + std::string(limits::request_line - 14, 'b') + " HTTP/1.1";
    ASSERT_EQ(fits.size(), limits::request_line);
    EXPECT_EQ(parse_all_ways(fits + "\r\nHost: x\r\n\r\n").status, Status::request);
    EXPECT_EQ(error_of("GET /" + std::string(limits::request_line - 13, 'b') + " HTTP/1.1\r\n"),
              414);
}

TEST(HttpParser, LargeHeaderSectionIs431) {
    std::string big =
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(limits::header_section, 'v') +
        "\r\n\r\n";
    EXPECT_EQ(error_of(big), 431);
    std::string many = "GET / HTTP/1.1\r\nHost: x\r\n";
    for (std::size_t i = 0; i < limits::header_fields; ++i) {
        many += "X-" + std::to_string(i) + ": v\r\n";
    }
    EXPECT_EQ(error_of(many + "\r\n"), 431);
    // The section limit counts every field line: many medium lines add up.
    std::string sum = "GET / HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 20; ++i) {
        sum += "X-" + std::to_string(i) + ": " + std::string(500, 'v') + "\r\n";
    }
    EXPECT_EQ(error_of(sum + "\r\n"), 431);
}

TEST(HttpParser, MemoryStaysBoundedOnEndlessInput) {
    RequestParser p;
    std::string chunk(4096, 'a');
    Status st = Status::need_more;
    std::size_t fed = 0;
    while (st == Status::need_more && fed < 10 * 1024 * 1024) {
        st = p.feed(chunk);
        fed += chunk.size();
    }
    EXPECT_EQ(st, Status::error);
    EXPECT_LE(fed, limits::request_line + 2 * chunk.size());
}

TEST(HttpParser, ReasonPhrases) {
    EXPECT_EQ(reason_phrase(431), "Request Header Fields Too Large");
    EXPECT_EQ(reason_phrase(503), "Service Unavailable");
    EXPECT_EQ(reason_phrase(200), "OK");
}
