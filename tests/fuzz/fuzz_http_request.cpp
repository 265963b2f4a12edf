// libFuzzer driver for the stats endpoint's HTTP request parser (daemon/http.hpp).
// Invariants: no input crashes it; the outcome (status, error code, method, target, path,
// fields) is the same whether the bytes come in one piece or in fragments of any size; a
// request or an error is final; an error code is one the header promises.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "daemon/http.hpp"
#include "tests/fuzz/fragments.hpp"

namespace {

using sluice::http::RequestParser;
using sluice::http::Status;

bool same(const RequestParser& a, const RequestParser& b) {
    if (a.status() != b.status()) {
        return false;
    }
    if (a.status() == Status::error) {
        return a.error_code() == b.error_code();
    }
    if (a.status() == Status::request) {
        const auto& x = a.request();
        const auto& y = b.request();
        return x.method == y.method && x.target == y.target && x.path == y.path &&
               x.minor_version == y.minor_version && x.fields == y.fields;
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace sluice::http;
    auto fragments = sluice::fuzz::Fragments::of(data, size);
    if (!fragments) {
        return 0;
    }
    RequestParser whole;
    whole.feed(fragments->input());
    RequestParser pieces;
    for (std::string_view piece : *fragments) {
        pieces.feed(piece);
    }
    if (!same(whole, pieces)) {
        std::abort();
    }
    Status before = whole.status();
    int code = whole.error_code();
    if (before != Status::need_more) {
        // Final: later bytes change nothing.
        if (whole.feed("GET / HTTP/1.1\r\nHost: x\r\n\r\n") != before ||
            whole.error_code() != code) {
            std::abort();
        }
    }
    if (before == Status::error) {
        if (code != 400 && code != 405 && code != 414 && code != 431 && code != 505) {
            std::abort();
        }
        if (reason_phrase(code).empty() || whole.error_reason().empty()) {
            std::abort();
        }
    }
    if (before == Status::request) {
        const Request& r = whole.request();
        if (r.minor_version != 0 && r.minor_version != 1) {
            std::abort();
        }
        if (r.fields.size() > limits::header_fields || r.target.size() > limits::request_line) {
            std::abort();
        }
        if (r.minor_version == 1 && r.field("host") == nullptr) {
            std::abort();
        }
    }
    return 0;
}
