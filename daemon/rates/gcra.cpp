#include "daemon/rates/gcra.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

namespace sluice::rates {

Micros Limit::emission() const {
    return count == 0 ? 0 : std::max<Micros>(1, interval / count);
}

namespace {

std::uint64_t mix(std::uint64_t x) {
    // splitmix64 finaliser: every input bit affects every output bit.
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

std::uint32_t level_of(Micros tat, Micros now, Micros t) {
    if (tat <= now) {
        return 0;
    }
    return static_cast<std::uint32_t>((tat - now + t - 1) / t);
}

}  // namespace

GcraTable::GcraTable(std::size_t capacity, std::uint64_t seed) : seed_(seed) {
    std::size_t n = std::bit_ceil(std::max(capacity, kWays));
    slots_.resize(n);
    set_mask_ = n / kWays - 1;
}

std::size_t GcraTable::set_of(const Key& key) const {
    std::uint64_t a, b;
    std::memcpy(&a, key.bytes.data(), 8);
    std::memcpy(&b, key.bytes.data() + 8, 8);
    std::uint64_t h = mix(a ^ seed_);
    h = mix(h ^ b ^ (std::uint64_t{key.limit} << 8 | key.scope));
    return static_cast<std::size_t>(h) & set_mask_;
}

const GcraTable::Slot* GcraTable::find(const Key& key) const {
    const Slot* set = &slots_[set_of(key) * kWays];
    for (std::size_t i = 0; i < kWays; ++i) {
        if (set[i].used && set[i].key == key) {
            return &set[i];
        }
    }
    return nullptr;
}

Verdict GcraTable::take(const Key& key, const Limit& limit, Micros now, std::uint32_t n) {
    if (limit.count == 0) {
        return {};
    }
    const Micros t = limit.emission();
    const Micros tolerance = t * limit.effective_burst();

    Slot* set = &slots_[set_of(key) * kWays];
    Slot* slot = nullptr;
    Slot* victim = nullptr;
    for (std::size_t i = 0; i < kWays; ++i) {
        if (set[i].used && set[i].key == key) {
            slot = &set[i];
            break;
        }
        if (!set[i].used) {
            if (victim == nullptr || victim->used) {
                victim = &set[i];
            }
        } else if (victim == nullptr || (victim->used && set[i].tat < victim->tat)) {
            victim = &set[i];
        }
    }

    const Micros tat = slot != nullptr ? std::max(slot->tat, now) : now;
    const Micros next = tat + t * static_cast<Micros>(n);
    if (next - now > tolerance) {
        Verdict v;
        v.allowed = false;
        v.retry_after = next - tolerance - now;
        v.level = level_of(tat, now, t);
        return v;
    }
    if (slot == nullptr) {
        if (victim->used && victim->tat > now) {
            ++evictions_live_;
        }
        slot = victim;
        slot->key = key;
        slot->used = true;
    }
    slot->tat = next;
    Verdict v;
    v.level = level_of(next, now, t);
    return v;
}

Verdict GcraTable::peek(const Key& key, const Limit& limit, Micros now) const {
    Verdict v;
    const Slot* slot = find(key);
    if (limit.count == 0 || slot == nullptr) {
        return v;
    }
    const Micros t = limit.emission();
    v.level = level_of(slot->tat, now, t);
    const Micros next = std::max(slot->tat, now) + t;
    const Micros tolerance = t * limit.effective_burst();
    if (next - now > tolerance) {
        v.allowed = false;
        v.retry_after = next - tolerance - now;
    }
    return v;
}

std::size_t GcraTable::live(Micros now) const {
    return static_cast<std::size_t>(std::count_if(
        slots_.begin(), slots_.end(), [now](const Slot& s) { return s.used && s.tat > now; }));
}

}  // namespace sluice::rates
