#pragma once
// log-report: summarises the decision log (docs/logs.md) the way an operator hunting
// relay abuse needs it (README.md, open-relay incident): counts per decision code, denied
// relay attempts
// (D1xx, B120) by client, client network, sender and recipient domain, relays granted
// by weak criteria (G106 local sender, G110 open mode) as warnings, authenticated
// users (G108) with unusual volume, connection-filter refusals (C130), the time range.
//
// Parts:
//   - parse_line: a pure, allocation-free parser for one `key=value` line. Values are
//     bare or double-quoted with the escapes common/log.cpp writes (\" \\ \xHH); a value
//     with escapes is decoded into a caller-owned scratch buffer, every other value is a
//     view into the line. Anything else (truncated quote, bad key, bad timestamp, not a
//     log line at all) is `malformed`: counted and skipped, never a crash.
//   - TopTable: a bounded-memory counter (the Space-Saving algorithm, Metwally et al.
//     2005): exact while a table holds fewer distinct keys than its capacity; beyond
//     that the least-counted key is evicted and the newcomer inherits its count as an
//     error bound, so the heavy hitters stay and every count is an upper bound that
//     overestimates by at most `error`. The report says when a table became inexact.
//   - Analyzer: a streaming aggregator. Feed it byte chunks of any size; it keeps one
//     partial line between chunks and nothing else that grows with the input: memory is
//     bounded by (tables x max_keys) whatever the size of the log.
//
// Trust: the log is written by sluiced, but values inside it come from peers (HELO,
// addresses, replies): lines are bounded (kMaxLineBytes), any byte sequence is handled,
// and text output replaces control bytes so a forged value cannot drive the terminal.
//
// Rule for unusual authenticated volume (documented in --help too): a user is flagged
// when their G108 relay count is greater than `user_factor` (3) times the median count
// over all authenticated users in the report AND greater than `user_min_volume` (100).
// The median makes one busy user stand out against the rest; the floor keeps small logs
// quiet.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.hpp"

namespace sluice::ctl::logreport {

namespace limits {
// A decision line is a few hundred bytes; a longer one is garbage (or an attack on the
// analyzer's memory) and is skipped as malformed.
inline constexpr std::size_t kMaxLineBytes = 64 * 1024;
inline constexpr std::size_t kDefaultMaxKeys = 10'000;  // distinct keys per table
inline constexpr std::size_t kDefaultTop = 10;
inline constexpr std::uint64_t kDefaultUserMinVolume = 100;
inline constexpr double kDefaultUserFactor = 3.0;
}  // namespace limits

// Milliseconds since the Unix epoch, UTC.
using TimeMs = std::int64_t;

// "2026-11-22T10:00:00.123Z"; the fraction (any number of digits) and the Z are
// optional; "2026-11-22T10:00" and "2026-11-22" (midnight) are accepted too, for filters.
// Always UTC: a numeric offset is refused rather than guessed.
std::optional<TimeMs> parse_timestamp(std::string_view s);
std::string format_timestamp(TimeMs t);  // "2026-11-22T10:00:00.123Z"

// One parsed line. Views point into the line or into the scratch buffer given to
// parse_line; they are valid until the next call with the same scratch.
struct LogRecord {
    TimeMs ts = 0;
    std::string_view lvl, sess, event, code, client, helo, from, to, user, listener, reply;
};

enum class LineStatus { ok, blank, malformed };

// Parses one line (the newline already removed; a trailing CR is ignored). `ok` needs a
// valid ts= and a non-empty event=. Unknown keys are allowed and ignored; for a repeated
// key the last value wins. Never allocates once `scratch` has grown to the line size.
LineStatus parse_line(std::string_view line, LogRecord& out, std::string& scratch);

class TopTable {
  public:
    struct Entry {
        std::string key;
        std::uint64_t count = 0;
        std::uint64_t error = 0;  // count may overestimate by at most this (0: exact)
        TimeMs first = 0;         // first/last time the key was seen while held
        TimeMs last = 0;
    };

    explicit TopTable(std::size_t capacity = limits::kDefaultMaxKeys);

    // Counts `key` once (n times; meant for small n). O(1): no allocation once the table
    // is full, except when an evicted key's text needs a longer buffer.
    void add(std::string_view key, TimeMs ts, std::uint64_t n = 1);
    // The `n` largest by count (ties by key), largest first.
    std::vector<Entry> top(std::size_t n) const;
    const Entry* find(std::string_view key) const;
    std::uint64_t total() const { return total_; }      // everything ever added
    std::size_t size() const { return slots_.size(); }  // distinct keys held
    bool exact() const { return evictions_ == 0; }
    std::uint64_t evictions() const { return evictions_; }

  private:
    static constexpr std::uint32_t kNil = 0xffffffffu;
    // Space-Saving's "Stream-Summary": slots with equal counts hang in one bucket; the
    // buckets form a list in increasing count order, so the minimum is the first bucket
    // and an increment moves a slot to the next bucket: O(1) per update.
    struct Slot {
        Entry entry;
        std::uint32_t hash = 0;
        std::uint32_t bucket = kNil;
        std::uint32_t prev = kNil;  // within the bucket
        std::uint32_t next = kNil;
    };
    struct Bucket {
        std::uint64_t count = 0;
        std::uint32_t head = kNil;
        std::uint32_t prev = kNil;  // the bucket with the next smaller count
        std::uint32_t next = kNil;  // ... next larger count
    };
    // Open addressing, linear probing, power-of-two size, load <= 1/2.
    struct Cell {
        std::uint32_t slot_plus_one = 0;  // 0: empty
        std::uint32_t hash = 0;
    };

    std::uint32_t find_slot(std::string_view key, std::uint32_t hash) const;
    void index_insert(std::uint32_t slot);
    void index_erase(std::uint32_t slot);
    void increment(std::uint32_t slot);
    void link(std::uint32_t slot, std::uint32_t bucket);
    void unlink(std::uint32_t slot);
    std::uint32_t new_bucket(std::uint64_t count, std::uint32_t after);

    std::size_t capacity_;
    std::vector<Slot> slots_;
    std::vector<Bucket> buckets_;
    std::vector<std::uint32_t> free_buckets_;
    std::uint32_t min_bucket_ = kNil;
    std::vector<Cell> index_;
    std::uint64_t total_ = 0;
    std::uint64_t evictions_ = 0;
};

struct Filters {
    std::optional<TimeMs> since;     // ts >= since
    std::optional<TimeMs> until;     // ts <  until
    std::vector<std::string> codes;  // any of these (upper-case); empty = all
    std::optional<Cidr> client;      // client= inside this prefix
};

struct ReportOptions {
    Filters filters;
    std::size_t top = limits::kDefaultTop;
    std::size_t max_keys = limits::kDefaultMaxKeys;
    std::uint64_t user_min_volume = limits::kDefaultUserMinVolume;
    double user_factor = limits::kDefaultUserFactor;
};

struct InputStats {
    std::uint64_t bytes = 0;
    std::uint64_t lines = 0;  // every line, blank and malformed included
    std::uint64_t blank = 0;
    std::uint64_t malformed = 0;     // skipped
    std::uint64_t too_long = 0;      // of which longer than kMaxLineBytes
    std::uint64_t filtered_out = 0;  // parsed, not matching the filters
    std::uint64_t matched = 0;       // parsed and counted
    std::uint64_t read_errors = 0;   // input errors (e.g. a truncated .gz)
};

struct UserVolume {
    TopTable::Entry entry;
    bool unusual = false;
};

class Analyzer {
  public:
    explicit Analyzer(ReportOptions opts = {});

    // Arbitrary chunks of a stream; lines are split here. Call end_of_input() at the end
    // of each file so a last line without a newline is counted (and not glued to the
    // next file's first line).
    void feed(std::string_view chunk);
    void end_of_input();
    // One complete line (without its newline).
    void feed_line(std::string_view line);
    void note_read_error(std::string message);

    const InputStats& stats() const { return stats_; }
    std::optional<TimeMs> first_time() const {
        return have_time_ ? std::optional(first_) : std::nullopt;
    }
    std::optional<TimeMs> last_time() const {
        return have_time_ ? std::optional(last_) : std::nullopt;
    }
    const TopTable& codes() const { return codes_; }
    const TopTable& events() const { return events_; }
    std::uint64_t denied_total() const { return denied_by_client_.total(); }
    const TopTable& denied_by_client() const { return denied_by_client_; }
    const TopTable& denied_by_network() const { return denied_by_network_; }
    const TopTable& denied_by_sender() const { return denied_by_sender_; }
    const TopTable& denied_by_recipient_domain() const { return denied_by_rcpt_domain_; }
    std::uint64_t weak_total() const { return weak_by_client_.total(); }
    const TopTable& weak_by_client() const { return weak_by_client_; }
    const TopTable& weak_by_sender() const { return weak_by_sender_; }
    const TopTable& auth_by_user() const { return auth_by_user_; }
    const TopTable& refused_by_client() const { return refused_by_client_; }
    // Median G108 count per user (0 when none), and every user with the unusual flag.
    double user_median() const;
    std::vector<UserVolume> users() const;
    std::vector<std::string> warnings() const;
    const std::vector<std::string>& read_errors() const { return read_error_messages_; }

    std::string format_text() const;
    std::string format_json() const;

  private:
    bool matches(const LogRecord& r);
    void count(const LogRecord& r);

    ReportOptions opts_;
    InputStats stats_;
    std::string tail_;       // a partial line between chunks
    bool skipping_ = false;  // inside an over-long line: drop bytes up to the next newline
    std::string scratch_;    // decoded escaped values of the current line
    std::string key_buf_;    // a lower-cased domain or a network key being counted
    bool have_time_ = false;
    TimeMs first_ = 0;
    TimeMs last_ = 0;
    TopTable codes_;
    TopTable events_;
    TopTable denied_by_client_;
    TopTable denied_by_network_;
    TopTable denied_by_sender_;
    TopTable denied_by_rcpt_domain_;
    TopTable weak_by_client_;
    TopTable weak_by_sender_;
    TopTable auth_by_user_;
    TopTable refused_by_client_;
    std::vector<std::string> read_error_messages_;  // at most a few kept
};

// The "/24" (IPv4) or "/64" (IPv6) network of a client address as text
// ("203.0.113.0/24", "2001:db8:1:2::/64"); "(invalid)" when it is not an address.
std::string network_key(std::string_view client);

}  // namespace sluice::ctl::logreport
