#pragma once
// Rate limits by GCRA (the generic cell rate algorithm, ITU-T I.371 §4.4.2 in its
// "virtual scheduling" form): each key holds one number, its theoretical arrival time
// (TAT). A limit of `count` events per `interval` spaces events by T = interval / count;
// an event at `now` conforms when max(TAT, now) + T - now <= burst * T, and then moves
// TAT there. A key whose TAT is at or before `now` has decayed to zero: it is
// indistinguishable from a key never seen, so it may be forgotten.
//
// Pure: no clock (the caller passes `now`), no I/O, no locks, no allocation after
// construction. Memory is bounded: a fixed-capacity set-associative table (sets of
// kWays entries); a new key takes a free way of its set, else the way whose TAT is
// lowest, which is a decayed one whenever the set has any. Forgetting a key that has
// not decayed gives that key a fresh budget, so it is counted (evictions_live) and the
// capacity should exceed the keys active in one interval (README, [rates]).
//
// Trust: keys are derived from peer addresses; the hash is seeded per table so that a
// peer cannot aim many keys at one set without knowing the seed.

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sluice::rates {

// Microseconds on any monotonic clock; only differences matter.
using Micros = std::int64_t;

// What is counted and at what granularity; one table holds them all.
struct Key {
    std::array<std::uint8_t, 16> bytes{};  // an address, a masked network, ...
    std::uint8_t limit = 0;                // which limit (daemon/rates/limits.hpp LimitKind)
    std::uint8_t scope = 0;                // client, network, ... (KeyKind)

    friend bool operator==(const Key&, const Key&) = default;
};

struct Limit {
    std::uint32_t count = 0;  // events per interval; 0: no limit
    Micros interval = 0;      // > 0
    std::uint32_t burst = 0;  // events allowed at once from a fresh key; 0: `count`

    std::uint32_t effective_burst() const { return burst == 0 ? count : burst; }
    Micros emission() const;  // T = interval / count, at least 1 µs
};

struct Verdict {
    bool allowed = true;
    Micros retry_after = 0;   // refused: when one more event would conform
    std::uint32_t level = 0;  // events currently "in the bucket", after this one if allowed
};

class GcraTable {
  public:
    static constexpr std::size_t kWays = 8;

    // `capacity` is rounded up to a power of two, at least kWays.
    explicit GcraTable(std::size_t capacity, std::uint64_t seed = 0x5851F42D4C957F2Dull);

    // Counts `n` events for `key` at `now` if they conform to `limit`; a refused take
    // changes nothing. A zero limit (count 0) always allows and stores nothing.
    Verdict take(const Key& key, const Limit& limit, Micros now, std::uint32_t n = 1);
    // The state of `key` without counting (level 0 when unknown or decayed).
    Verdict peek(const Key& key, const Limit& limit, Micros now) const;

    std::size_t capacity() const { return slots_.size(); }
    // Keys whose TAT is after `now`.
    std::size_t live(Micros now) const;
    // Keys forgotten before they had decayed (a fresh budget handed out early).
    std::uint64_t evictions_live() const { return evictions_live_; }

  private:
    struct Slot {
        Key key;
        Micros tat = 0;
        bool used = false;
    };
    std::size_t set_of(const Key& key) const;
    const Slot* find(const Key& key) const;

    std::vector<Slot> slots_;
    std::size_t set_mask_ = 0;
    std::uint64_t seed_;
    std::uint64_t evictions_live_ = 0;
};

}  // namespace sluice::rates
