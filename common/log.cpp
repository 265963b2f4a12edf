#include "common/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>

namespace sluice {
namespace {

std::atomic<int> min_level{static_cast<int>(Level::info)};

// Largest write that a pipe keeps atomic (POSIX PIPE_BUF on Linux).
constexpr std::size_t kAtomicWrite = 4096;

struct ThreadLog {
    bool batching = false;
    std::string buf;
};
thread_local ThreadLog thread_log;

void write_all(const char* p, std::size_t left) {
    while (left > 0) {
        ssize_t n = ::write(STDERR_FILENO, p, left);
        if (n <= 0) {
            return;  // stderr gone: logging must never take the daemon down
        }
        p += n;
        left -= static_cast<std::size_t>(n);
    }
}

std::string_view level_name(Level l) {
    switch (l) {
        case Level::debug:
            return "debug";
        case Level::info:
            return "info";
        case Level::warn:
            return "warn";
        case Level::error:
            return "error";
    }
    return "info";
}

}  // namespace

void set_log_level(Level level) {
    min_level = static_cast<int>(level);
}

void set_thread_log_batching(bool on) {
    if (!on) {
        flush_thread_log();
    }
    thread_log.batching = on;
}

void flush_thread_log() {
    auto& b = thread_log.buf;
    if (!b.empty()) {
        write_all(b.data(), b.size());
        b.clear();
    }
}
bool log_enabled(Level level) {
    return static_cast<int>(level) >= min_level;
}

std::string utc_timestamp() {
    // The date and time part changes once a second: format it once per second per thread.
    thread_local std::time_t cached_secs = -1;
    thread_local char cached[64];
    auto now = std::chrono::system_clock::now();
    auto secs = std::chrono::system_clock::to_time_t(now);
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() %
        1000;
    if (secs != cached_secs) {
        std::tm tm{};
        gmtime_r(&secs, &tm);
        std::snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        cached_secs = secs;
    }
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s.%03dZ", cached, static_cast<int>(ms));
    return buf;
}

void append_log_value(std::string& out, std::string_view v) {
    bool plain = !v.empty();
    for (unsigned char c : v) {
        if (c <= ' ' || c == '"' || c == '\\' || c == '=' || c >= 0x7f) {
            plain = false;
            break;
        }
    }
    if (plain) {
        out += v;
        return;
    }
    out.push_back('"');
    for (unsigned char c : v) {
        if (c == '"' || c == '\\') {
            out.push_back('\\');
            out.push_back(static_cast<char>(c));
        } else if (c < ' ' || c == 0x7f) {
            static constexpr char hex[] = "0123456789abcdef";
            out += "\\x";
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 15]);
        } else {
            out.push_back(static_cast<char>(c));
        }
    }
    out.push_back('"');
}

LogLine::LogLine(Level level, std::string_view event, int shard, std::string_view sess) {
    if (!log_enabled(level)) {
        done_ = true;
        return;
    }
    buf_.reserve(256);
    buf_ += "ts=";
    buf_ += utc_timestamp();
    buf_ += " lvl=";
    buf_ += level_name(level);
    if (shard >= 0) {
        buf_ += " shard=";
        buf_ += std::to_string(shard);
    }
    if (!sess.empty()) {
        buf_ += " sess=";
        buf_ += sess;
    }
    buf_ += " event=";
    buf_ += event;
}

LogLine& LogLine::kv(std::string_view key, std::string_view value) {
    if (!done_) {
        buf_.push_back(' ');
        buf_ += key;
        buf_.push_back('=');
        append_log_value(buf_, value);
    }
    return *this;
}

LogLine& LogLine::kv(std::string_view key, std::uint64_t value) {
    return kv(key, std::string_view(std::to_string(value)));
}

LogLine& LogLine::kv(std::string_view key, std::int64_t value) {
    return kv(key, std::string_view(std::to_string(value)));
}

void LogLine::emit() {
    if (done_) {
        return;
    }
    done_ = true;
    buf_.push_back('\n');
    auto& tl = thread_log;
    if (!tl.batching) {
        write_all(buf_.data(), buf_.size());
        return;
    }
    if (tl.buf.size() + buf_.size() > kAtomicWrite) {
        flush_thread_log();
    }
    if (buf_.size() >= kAtomicWrite) {
        write_all(buf_.data(), buf_.size());
        return;
    }
    tl.buf += buf_;
}

}  // namespace sluice
