#include "daemon/rates/limits.hpp"

#include <cstring>

namespace sluice::rates {

std::string_view limit_name(LimitKind k) {
    switch (k) {
        case LimitKind::connections:
            return "connections";
        case LimitKind::messages:
            return "messages";
        case LimitKind::recipients:
            return "recipients";
        case LimitKind::errors:
            return "errors";
        case LimitKind::count_:
            break;
    }
    return "unknown";
}

std::string_view key_kind_name(KeyKind k) {
    switch (k) {
        case KeyKind::client:
            return "client";
        case KeyKind::network:
            return "network";
        case KeyKind::count_:
            break;
    }
    return "unknown";
}

Settings Settings::from_config(const Config& c) {
    Settings s;
    const auto& r = c.rates;
    auto set = [&s](LimitKind l, std::uint32_t client, std::uint32_t network) {
        s.count[static_cast<std::size_t>(l)] = {client, network};
    };
    set(LimitKind::connections, r.connections_per_client, r.connections_per_network);
    set(LimitKind::messages, r.messages_per_client, r.messages_per_network);
    set(LimitKind::recipients, r.recipients_per_client, r.recipients_per_network);
    set(LimitKind::errors, r.errors_per_client, r.errors_per_network);
    s.interval = static_cast<Micros>(r.interval.count()) * 1000;
    return s;
}

bool Settings::any() const {
    for (const auto& l : count) {
        for (auto n : l) {
            if (n != 0) {
                return true;
            }
        }
    }
    return false;
}

namespace {

// The network a client is counted in: IPv4 /24 (the customary allocation to one site),
// IPv6 /64 (RFC 7421 §1: the subnet size a single host may pick addresses from at will).
IpAddr network_of(const IpAddr& ip) {
    IpAddr n = ip;
    if (ip.v4) {
        n.bytes[15] = 0;
    } else {
        std::memset(n.bytes.data() + 8, 0, 8);
    }
    return n;
}

}  // namespace

Key key_for(const IpAddr& client, LimitKind l, KeyKind k) {
    Key key;
    key.bytes = k == KeyKind::network ? network_of(client).bytes : client.bytes;
    key.limit = static_cast<std::uint8_t>(l);
    key.scope = static_cast<std::uint8_t>(k);
    return key;
}

std::string key_text(const IpAddr& client, KeyKind k) {
    if (k == KeyKind::client) {
        return format_ip(client);
    }
    return format_ip(network_of(client)) + (client.v4 ? "/24" : "/64");
}

LocalStore::LocalStore(std::size_t capacity) {
    const std::size_t per = std::max<std::size_t>(capacity / kStripes, GcraTable::kWays);
    std::uint64_t seed = 0x9E3779B97F4A7C15ull ^ reinterpret_cast<std::uintptr_t>(this);
    for (auto& s : stripes_) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        s.table = std::make_unique<GcraTable>(per, seed);
    }
}

LocalStore::Stripe& LocalStore::stripe(const Key& key) const {
    // Any bytes that differ between neighbouring addresses, mixed so a /24 spreads.
    std::uint32_t h = key.bytes[15] * 0x9E3779B1u ^ key.bytes[14] * 0x85EBCA77u ^
                      key.bytes[7] * 0xC2B2AE3Du ^ key.bytes[13] ^ key.limit ^
                      (key.scope * 0x27D4EB2Fu);
    return stripes_[(h ^ (h >> 15)) % kStripes];
}

Verdict LocalStore::take(const Key& key, const Limit& limit, Micros now) {
    Stripe& s = stripe(key);
    std::lock_guard lock(s.mu);
    return s.table->take(key, limit, now);
}

Verdict LocalStore::peek(const Key& key, const Limit& limit, Micros now) const {
    Stripe& s = stripe(key);
    std::lock_guard lock(s.mu);
    return s.table->peek(key, limit, now);
}

LocalStore::Stats LocalStore::stats(Micros now) const {
    Stats st;
    for (auto& s : stripes_) {
        std::lock_guard lock(s.mu);
        st.capacity += s.table->capacity();
        st.live += s.table->live(now);
        st.evictions_live += s.table->evictions_live();
    }
    return st;
}

std::optional<Tripped> check(RateStore& store, const Settings& settings, LimitKind limit,
                             const IpAddr& client, Micros now) {
    for (std::size_t k = 0; k < kKeyKinds; ++k) {
        const auto kind = static_cast<KeyKind>(k);
        const Limit l = settings.limit(limit, kind);
        if (l.count == 0) {
            continue;
        }
        Verdict v = store.take(key_for(client, limit, kind), l, now);
        if (!v.allowed) {
            return Tripped{limit, kind, l.count, v};
        }
    }
    return std::nullopt;
}

std::vector<Usage> usage(const RateStore& store, const Settings& settings, const IpAddr& client,
                         Micros now) {
    std::vector<Usage> out;
    for (std::size_t l = 0; l < kLimitKinds; ++l) {
        for (std::size_t k = 0; k < kKeyKinds; ++k) {
            const auto lk = static_cast<LimitKind>(l);
            const auto kk = static_cast<KeyKind>(k);
            const Limit lim = settings.limit(lk, kk);
            out.push_back(Usage{lk, kk, lim.count, store.peek(key_for(client, lk, kk), lim, now)});
        }
    }
    return out;
}

}  // namespace sluice::rates
