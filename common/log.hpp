#pragma once
// Structured logs: one line per event, `key=value` (docs/logs.md), written to stderr with
// a single write(2) so lines from different shards never interleave. Values with spaces,
// quotes or control characters are quoted and escaped: a peer-supplied HELO can never
// forge a field or a line.

#include <cstdint>
#include <string>
#include <string_view>

namespace sluice {

enum class Level { debug, info, warn, error };

class LogLine {
  public:
    LogLine(Level level, std::string_view event, int shard = -1, std::string_view sess = {});
    LogLine& kv(std::string_view key, std::string_view value);
    LogLine& kv(std::string_view key, std::uint64_t value);
    LogLine& kv(std::string_view key, std::int64_t value);
    LogLine& kv(std::string_view key, int value) {
        return kv(key, static_cast<std::int64_t>(value));
    }
    LogLine& kv(std::string_view key, unsigned value) {
        return kv(key, static_cast<std::uint64_t>(value));
    }
    LogLine& kv(std::string_view key, const char* value) {
        return kv(key, std::string_view(value));
    }
    LogLine& kv(std::string_view key, const std::string& value) {
        return kv(key, std::string_view(value));
    }
    // Writes the line (once). Also done by the destructor.
    void emit();
    ~LogLine() { emit(); }

    const std::string& text() const { return buf_; }

  private:
    std::string buf_;
    bool done_ = false;
};

// Batching for event-loop threads: while on, this thread's lines collect in a buffer that
// flush_thread_log() writes (the shard calls it once per loop iteration), in writes of at
// most PIPE_BUF bytes cut at line ends, so lines stay whole even on a pipe to journald.
void set_thread_log_batching(bool on);
void flush_thread_log();

// Lines below this level are dropped (set once at start-up).
void set_log_level(Level level);
bool log_enabled(Level level);

// "2026-11-22T10:00:00.123Z"
std::string utc_timestamp();

// Appends `value`, quoted and escaped if it needs to be (for key=value output).
void append_log_value(std::string& out, std::string_view value);

}  // namespace sluice
