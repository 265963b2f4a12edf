#include "daemon/http.hpp"

#include <algorithm>

#include "common/ascii.hpp"

namespace sluice::http {
namespace {

// tchar (RFC 9110 §5.6.2).
bool is_tchar(char ch) {
    auto c = static_cast<unsigned char>(ch);
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return true;
    }
    return std::string_view("!#$%&'*+-.^_`|~").find(ch) != std::string_view::npos;
}

bool is_token(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar);
}

// field-vchar / SP / HTAB (RFC 9110 §5.5); obs-text is allowed, controls are not.
bool is_field_value_octet(char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

bool is_ows(char c) {
    return c == ' ' || c == '\t';
}

}  // namespace

const std::string* Request::field(std::string_view name) const {
    for (const auto& [n, v] : fields) {
        if (n == name) {
            return &v;
        }
    }
    return nullptr;
}

Status RequestParser::fail(int code, std::string_view reason) {
    status_ = Status::error;
    error_code_ = code;
    error_reason_ = reason;
    line_.clear();
    line_.shrink_to_fit();
    return status_;
}

Status RequestParser::feed(std::string_view bytes) {
    while (status_ == Status::need_more && !bytes.empty()) {
        std::size_t lf = bytes.find('\n');
        std::string_view chunk = bytes.substr(0, lf);
        // The line end may bring one CR beyond the limit; anything more is oversized no
        // matter how the bytes were split, so the check runs on the accumulated line.
        std::size_t limit =
            phase_ == Phase::request_line
                ? limits::request_line + 1
                : limits::header_section + 1 - std::min(field_bytes_, limits::header_section);
        std::size_t room = limit + 1 - line_.size();
        line_.append(chunk.substr(0, std::min(chunk.size(), room)));
        if (line_.size() > limit) {
            if (phase_ == Phase::request_line) {
                return fail(oversized_request_line_code(), "request line too long");
            }
            return fail(431, "header section too large");
        }
        if (lf == std::string_view::npos) {
            return status_;
        }
        bytes.remove_prefix(lf + 1);
        std::string_view line = line_;
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        on_line(line);
        line_.clear();
    }
    return status_;
}

int RequestParser::oversized_request_line_code() const {
    // "GET /very/long..." is a URI too long (RFC 9112 §3); anything else is not HTTP.
    std::size_t sp = line_.find(' ');
    if (sp != std::string::npos && is_token(std::string_view(line_).substr(0, sp))) {
        return 414;
    }
    return 400;
}

void RequestParser::on_line(std::string_view line) {
    if (phase_ == Phase::request_line) {
        on_request_line(line);
        return;
    }
    if (line.empty()) {
        on_end_of_head();
        return;
    }
    on_field_line(line);
}

void RequestParser::on_request_line(std::string_view line) {
    if (line.empty()) {
        // RFC 9112 §2.2: ignore at least one empty line before the request line.
        if (++empty_lines_ > limits::leading_empty_lines) {
            fail(400, "empty lines before the request");
        }
        return;
    }
    std::size_t sp1 = line.find(' ');
    std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
        fail(400, "malformed request line");
        return;
    }
    std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    if (!is_token(method)) {
        fail(400, "malformed method");
        return;
    }
    if (target.empty() || !std::all_of(target.begin(), target.end(), [](char ch) {
            auto c = static_cast<unsigned char>(ch);
            return c > 0x20 && c < 0x7f;
        })) {
        fail(400, "malformed request target");
        return;
    }
    // HTTP-version = "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3), case-sensitive.
    if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' ||
        version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9') {
        fail(400, "malformed HTTP version");
        return;
    }
    if (version[5] != '1') {
        fail(505, "HTTP version not supported");
        return;
    }
    // A higher 1.x minor version is answered as 1.1 (RFC 9110 §6.2).
    request_.minor_version = version[7] == '0' ? 0 : 1;
    if (method == "GET") {
        request_.method = Method::get;
    } else if (method == "HEAD") {
        request_.method = Method::head;
    } else {
        fail(405, "method not allowed");
        return;
    }
    std::string_view path;
    if (target.front() == '/') {
        path = target;  // origin-form
    } else if (ascii::istarts_with(target, "http://") || ascii::istarts_with(target, "https://")) {
        // absolute-form (RFC 9112 §3.2.2: a server MUST accept it).
        std::string_view rest = target.substr(target.find("//") + 2);
        std::size_t slash = rest.find('/');
        path = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
    } else {
        fail(400, "unsupported request target form");
        return;
    }
    request_.target = std::string(target);
    request_.path = std::string(path.substr(0, path.find('?')));
    phase_ = Phase::fields;
}

void RequestParser::on_field_line(std::string_view line) {
    field_bytes_ += line.size();
    if (field_bytes_ > limits::header_section) {
        fail(431, "header section too large");
        return;
    }
    if (request_.fields.size() >= limits::header_fields) {
        fail(431, "too many header fields");
        return;
    }
    if (is_ows(line.front())) {
        fail(400, "obsolete line folding");  // RFC 9112 §5.2
        return;
    }
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) {
        fail(400, "malformed header field");  // includes whitespace before the colon (§5.1)
        return;
    }
    std::string_view value = line.substr(colon + 1);
    if (!std::all_of(value.begin(), value.end(), is_field_value_octet)) {
        fail(400, "control character in a header field");
        return;
    }
    while (!value.empty() && is_ows(value.front())) {
        value.remove_prefix(1);
    }
    while (!value.empty() && is_ows(value.back())) {
        value.remove_suffix(1);
    }
    request_.fields.emplace_back(ascii::lower(line.substr(0, colon)), std::string(value));
}

void RequestParser::on_end_of_head() {
    std::size_t hosts = 0;
    for (const auto& [name, value] : request_.fields) {
        if (name == "host") {
            ++hosts;
        } else if (name == "content-length" && value != "0") {
            fail(400, "request body not accepted");
            return;
        } else if (name == "transfer-encoding") {
            fail(400, "request body not accepted");
            return;
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with more than one, is a 400.
    if (hosts > 1 || (hosts == 0 && request_.minor_version == 1)) {
        fail(400, "missing or repeated Host");
        return;
    }
    line_.clear();
    line_.shrink_to_fit();
    status_ = Status::request;
}

std::string_view reason_phrase(int code) {
    switch (code) {
        case 200:
            return "OK";
        case 400:
            return "Bad Request";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 408:
            return "Request Timeout";
        case 414:
            return "URI Too Long";
        case 431:
            return "Request Header Fields Too Large";
        case 500:
            return "Internal Server Error";
        case 503:
            return "Service Unavailable";
        case 505:
            return "HTTP Version Not Supported";
        default:
            return "Error";
    }
}

}  // namespace sluice::http
