#pragma once
// The spool's on-disk record format: pure encoding and decoding, no I/O (storage/spool.cpp
// does the files). Kept apart so the format can be tested byte by byte and read by tools.
//
// A segment file (`seg-<16 hex digits>.log`) is a sequence of records, appended in batches:
//
//   u32 len | u32 crc | len bytes: u8 type, payload
//
// all integers little-endian; `crc` is CRC-32C (Castagnoli) over the 4 bytes of `len`
// followed by the `len` bytes, so a torn header, a torn payload, a zero-filled tail or a
// corrupt length all fail the check. The first record of a segment is its header (magic,
// format version, segment number). Strings are u32 length + bytes; times are i64
// nanoseconds since the Unix epoch (system_clock).
//
// What it trusts: nothing. Decoders check every length against the bytes they were given
// and return false on any inconsistency; the CRC is checked by the caller before decoding
// (a record with a good CRC and a bad body is a format error, not a torn write).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "storage/message.hpp"

namespace sluice::storage {

// Per-recipient delivery state. `delivered`, `failed` and `removed` are final: once a
// recipient is final no later record changes it (the spool enforces this at run time and
// on replay alike, so both see the same result).
enum class RcptState : std::uint8_t {
    pending,    // not tried yet
    deferred,   // a temporary failure; retried at next_attempt
    delivered,  // the next hop accepted it (2xx)
    failed,     // permanent failure (5xx, expired): the scheduler bounces it
    removed,    // taken out by the operator (queue delete / purge): no bounce
};

inline bool is_final(RcptState s) {
    return s == RcptState::delivered || s == RcptState::failed || s == RcptState::removed;
}
std::string_view to_string(RcptState s);

namespace spool_format {

inline constexpr std::uint32_t kVersion = 1;
inline constexpr std::string_view kMagic = "SLUICE-SPOOL";
inline constexpr std::size_t kHeaderBytes = 8;              // len + crc
inline constexpr std::uint32_t kMaxRecordBytes = 1u << 30;  // far above any message we keep inline

enum class RecordType : std::uint8_t {
    segment = 1,  // segment header: magic, version, segment number
    message = 2,  // envelope, per-recipient facts and the data (inline or in a big file)
    state = 3,    // one recipient's new state
    hold = 4,     // operator: do not deliver
    release = 5,  // operator: deliver again
    remove = 6,   // operator: delete the message (its non-final recipients become removed)
    cancel = 7,   // a commit that failed: the message never got 250 and must not come back
};

// CRC-32C (Castagnoli, the iSCSI polynomial): SSE4.2 instruction when the CPU has it,
// otherwise a table. `crc` chains calls: crc32c(b, crc32c(a)) == crc32c(a + b).
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0);

// Where a message's data lives.
struct DataRef {
    bool external = false;      // in big/<seq>.msg instead of the record
    std::uint64_t big_seq = 0;  // external: file number
    std::uint64_t size = 0;     // bytes of data
    std::uint32_t crc = 0;      // external: CRC-32C of the file's content
};

// A message record as decoded. `data` is filled only when asked and inline.
struct MessageRecord {
    Message msg;  // id, envelope, recipients (data empty unless decoded with data)
    DataRef data;
};

struct StateRecord {
    std::string id;
    std::uint32_t rcpt = 0;
    RcptState state = RcptState::pending;
    std::uint32_t attempts = 0;
    std::chrono::system_clock::time_point next_attempt{};
    std::string reason;
};

// hold / release / remove / cancel: one message id.
struct OpRecord {
    RecordType type = RecordType::remove;
    std::string id;
};

// The 8-byte header (len + crc) of a record whose body is `head` followed by `tail`. The
// tail is a message record's inline data, written straight from the Message (no copy).
std::string frame(std::string_view head, std::string_view tail = {});

// The body of a segment header record.
std::string encode_segment_header(std::uint64_t segment);
// The body of a message record, except the inline data bytes that follow it (when
// `data.external` is false the caller appends msg.data right after this).
std::string encode_message_head(const Message& msg, const DataRef& data);
std::string encode_state(const StateRecord& r);
std::string encode_op(const OpRecord& r);

// Frames a whole record in one string (header + body [+ tail]). For tests and small records.
std::string make_record(std::string_view body, std::string_view tail = {});

// What a record header says. `len` counts the body (type + payload).
struct RecordHeader {
    std::uint32_t len = 0;
    std::uint32_t crc = 0;
};
RecordHeader read_header(const char* p);
// True when `body` (len bytes following a header) matches the header's CRC.
bool check_crc(const RecordHeader& h, std::string_view body);

// Decoders take the body (type byte first). They return nullopt on any inconsistency.
std::optional<std::uint64_t> decode_segment_header(std::string_view body);
// with_data: copy inline data into msg.data (recovery skips it: it only needs the index).
std::optional<MessageRecord> decode_message(std::string_view body, bool with_data);
std::optional<StateRecord> decode_state(std::string_view body);
std::optional<OpRecord> decode_op(std::string_view body);

std::string segment_name(std::uint64_t segment);  // "seg-000000000000002a.log"
std::optional<std::uint64_t> parse_segment_name(std::string_view name);
std::string big_name(std::uint64_t seq);  // "000000000000002a.msg"
std::optional<std::uint64_t> parse_big_name(std::string_view name);

}  // namespace spool_format
}  // namespace sluice::storage
