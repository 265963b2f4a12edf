#pragma once
// A strict, small HTTP/1.1 request parser (RFC 9112) for the stats endpoint: bytes in,
// `need_more`, one `request`, or an `error` with its status code out. Pure: no I/O, no
// exceptions, no global state.
//
// Trust: every byte comes from whoever can reach the stats address. Promises:
// - memory is bounded: a request line longer than limits::request_line is 414 (or 400 when
//   it is not a request line at all), a header section larger than limits::header_section
//   or with more than limits::header_fields fields is 431 (RFC 6585 §5);
// - the outcome depends only on the bytes, never on how they were split into fragments;
// - only GET and HEAD are served (any other method token: 405), HTTP/1.0 and HTTP/1.1
//   only (another HTTP/x.y: 505), no request body (Content-Length other than 0 or any
//   Transfer-Encoding: 400; the endpoint answers and closes, it never reads a body);
// - what RFC 9112 lets a server reject is rejected (400): whitespace between a field name
//   and its colon (§5.1), obs-fold (§5.2), a bare CR (§2.2), an HTTP/1.1 request without
//   exactly one Host field (§3.2), control characters in the request line or a field value.
// Lines may end in CRLF or a bare LF (§2.2); up to limits::leading_empty_lines empty lines
// before the request line are ignored (§2.2).

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sluice::http {

namespace limits {
inline constexpr std::size_t request_line = 2048;    // octets without the line end: 414 beyond
inline constexpr std::size_t header_section = 8192;  // octets of all field lines: 431 beyond
inline constexpr std::size_t header_fields = 32;     // field lines: 431 beyond
inline constexpr std::size_t leading_empty_lines = 4;
}  // namespace limits

enum class Method { get, head };

struct Request {
    Method method = Method::get;
    std::string target;  // as sent
    std::string path;    // the path of the target, without the query
    int minor_version = 1;
    std::vector<std::pair<std::string, std::string>> fields;  // names lower-cased, values trimmed

    // The value of the first field called `name` (lower case), or nullptr.
    const std::string* field(std::string_view name) const;
};

enum class Status { need_more, request, error };

class RequestParser {
  public:
    // Consumes `bytes`. Once the result is `request` or `error`, later calls return it again
    // and ignore their input (the endpoint answers one request per connection).
    Status feed(std::string_view bytes);

    Status status() const { return status_; }
    // Valid after `request`.
    const Request& request() const { return request_; }
    // After `error`: 400, 405, 414, 431 or 505, and a short reason for the log.
    int error_code() const { return error_code_; }
    std::string_view error_reason() const { return error_reason_; }

  private:
    enum class Phase { request_line, fields };

    Status fail(int code, std::string_view reason);
    void on_line(std::string_view line);
    void on_request_line(std::string_view line);
    void on_field_line(std::string_view line);
    void on_end_of_head();
    int oversized_request_line_code() const;

    Phase phase_ = Phase::request_line;
    Status status_ = Status::need_more;
    std::string line_;  // the line being assembled (bounded by the limits above)
    std::size_t empty_lines_ = 0;
    std::size_t field_bytes_ = 0;
    Request request_;
    int error_code_ = 0;
    std::string_view error_reason_;
};

// "OK", "Bad Request", ... for the status line.
std::string_view reason_phrase(int code);

}  // namespace sluice::http
