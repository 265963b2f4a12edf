#include "daemon/data_reader.hpp"

#include <cstring>

#include "daemon/smtp_parser.hpp"

namespace sluice::smtp {

void DataReader::emit(std::string& out, std::string_view bytes) {
    if (size_ + bytes.size() <= max_size_) {
        out.append(bytes);
    } else if (size_ < max_size_) {
        out.append(bytes.substr(0, max_size_ - size_));
    }
    size_ += bytes.size();
}

DataReader::Result DataReader::feed(std::string_view in, std::string& out) {
    const char* p = in.data();
    const char* end = p + in.size();
    while (p < end) {
        switch (state_) {
            case State::line_start:
                line_len_ = 0;
                if (*p == '.') {
                    state_ = State::dot;
                    ++p;
                    continue;
                }
                state_ = State::in_line;
                continue;
            case State::dot:
                if (*p == '\r') {
                    state_ = State::dot_cr;
                    ++p;
                    continue;
                }
                // RFC 5321 §4.5.2: a leading period on a longer line is removed.
                line_len_ = 1;
                state_ = State::in_line;
                continue;
            case State::dot_cr:
                if (*p == '\n') {
                    state_ = State::line_start;
                    return {Status::done, static_cast<std::size_t>(p + 1 - in.data())};
                }
                return {Status::bare_cr, static_cast<std::size_t>(p - in.data())};
            case State::in_line: {
                // Copy the run of ordinary bytes up to the next CR in one go; memchr is
                // vectorised, so the common case costs two passes at memory speed.
                const void* cr = std::memchr(p, '\r', static_cast<std::size_t>(end - p));
                const char* q = cr ? static_cast<const char*>(cr) : end;
                const void* lf = std::memchr(p, '\n', static_cast<std::size_t>(q - p));
                if (lf != nullptr) {
                    q = static_cast<const char*>(lf);
                }
                std::string_view run(p, static_cast<std::size_t>(q - p));
                if (!run.empty()) {
                    if (!has_nul_ && std::memchr(run.data(), 0, run.size()) != nullptr) {
                        has_nul_ = true;
                    }
                    line_len_ += run.size();
                    emit(out, run);
                }
                p = q;
                if (p == end) {
                    continue;
                }
                if (*p == '\n') {
                    return {Status::bare_lf, static_cast<std::size_t>(p - in.data())};
                }
                state_ = State::cr;
                ++p;
                continue;
            }
            case State::cr:
                if (*p != '\n') {
                    return {Status::bare_cr, static_cast<std::size_t>(p - in.data())};
                }
                // RFC 5321 §4.5.3.1.6: 998 octets of text plus CRLF.
                if (line_len_ > limits::kMaxTextLine - 2) {
                    long_line_ = true;
                }
                emit(out, "\r\n");
                state_ = State::line_start;
                ++p;
                continue;
        }
    }
    return {Status::need_more, in.size()};
}

}  // namespace sluice::smtp
