#pragma once
// The DATA reader: pure and incremental. Consumes the message stream after 354, removes
// dot-stuffing (RFC 5321 §4.5.2) and stops exactly at <CRLF>.<CRLF> (RFC 5321 §4.1.1.4).
//
// Trust: hostile network input. Promise: only CRLF "." CRLF ends the message; a bare CR or
// bare LF anywhere stops the reader with an error (SMTP smuggling: the next hop must never
// see a line ending we did not), the output never exceeds `max_size` bytes however much is
// sent, and a line over 1000 octets is flagged without being buffered.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sluice::smtp {

class DataReader {
  public:
    enum class Status : std::uint8_t {
        need_more,  // all input consumed, the message continues
        done,       // end of data seen; `consumed` stops right after it
        bare_cr,    // protocol error; the session must close the connection
        bare_lf,
    };
    struct Result {
        Status status;
        std::size_t consumed;
    };

    // Content beyond `max_size` bytes is counted but not stored.
    explicit DataReader(std::size_t max_size) : max_size_(max_size) {}

    // Appends the unstuffed content of `input` to `out` (CRLF kept as on the wire).
    Result feed(std::string_view input, std::string& out);

    std::uint64_t size() const { return size_; }  // content bytes, stored or not
    bool oversized() const { return size_ > max_size_; }
    bool has_nul() const { return has_nul_; }
    bool long_line() const { return long_line_; }  // a line over 1000 octets

  private:
    enum class State : std::uint8_t { line_start, dot, dot_cr, in_line, cr };

    void emit(std::string& out, std::string_view bytes);

    State state_ = State::line_start;
    std::size_t max_size_;
    std::uint64_t size_ = 0;
    std::size_t line_len_ = 0;
    bool has_nul_ = false;
    bool long_line_ = false;
};

}  // namespace sluice::smtp
