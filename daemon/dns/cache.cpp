#include "daemon/dns/cache.hpp"

#include <algorithm>

namespace sluice::dns {
namespace {

std::string key_of(const std::string& name, Type type) {
    return std::to_string(static_cast<int>(type)) + "/" + name;
}

}  // namespace

std::uint64_t Cache::cost(const std::string& key, const Result& r) {
    // A list node, a hash node and bucket, the key twice (map and entry), the records.
    std::uint64_t n = 160 + 2 * key.capacity() + sizeof(Result) + r.canonical.capacity() +
                      r.detail.capacity();
    for (const auto& rec : r.records) {
        n += sizeof(Record) + rec.name.capacity() + rec.target.capacity();
    }
    return n;
}

std::optional<Result> Cache::get(const std::string& name, Type type, Clock::time_point now) {
    auto it = map_.find(key_of(name, type));
    if (it == map_.end()) {
        return std::nullopt;
    }
    auto e = it->second;
    if (e->expires <= now) {
        erase(e);
        return std::nullopt;
    }
    lru_.splice(lru_.begin(), lru_, e);
    Result out = e->result;
    out.ttl = static_cast<std::uint32_t>(
        std::chrono::ceil<std::chrono::seconds>(e->expires - now).count());
    return out;
}

bool Cache::put(const std::string& name, Type type, const Result& r, Clock::time_point now) {
    if (!r.ttl || (r.status != Status::ok && r.status != Status::nodata &&
                   r.status != Status::nxdomain && r.status != Status::cname)) {
        return false;
    }
    std::uint32_t ttl = std::clamp(*r.ttl, opts_.min_ttl, std::max(opts_.min_ttl, opts_.max_ttl));
    if (ttl == 0 || opts_.max_entries == 0) {
        return false;
    }
    std::string key = key_of(name, type);
    if (auto it = map_.find(key); it != map_.end()) {
        erase(it->second);
    }
    Entry e;
    e.key = key;
    e.result = r;
    e.expires = now + std::chrono::seconds(ttl);
    e.bytes = cost(key, r);
    if (e.bytes > opts_.max_bytes) {
        return false;
    }
    bytes_ += e.bytes;
    lru_.push_front(std::move(e));
    map_.emplace(std::move(key), lru_.begin());
    evict_to_fit();
    return true;
}

void Cache::set_options(Options o) {
    opts_ = o;
    evict_to_fit();
}

void Cache::evict_to_fit() {
    while (!lru_.empty() && (map_.size() > opts_.max_entries || bytes_ > opts_.max_bytes)) {
        erase(std::prev(lru_.end()));
    }
}

void Cache::erase(std::list<Entry>::iterator it) {
    bytes_ -= it->bytes;
    map_.erase(it->key);
    lru_.erase(it);
}

}  // namespace sluice::dns
