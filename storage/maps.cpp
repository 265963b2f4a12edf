// MapReader: the data-path side of storage/maps.hpp.

#include "storage/maps.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "common/log.hpp"
#include "storage/map_format.hpp"

namespace sluice::storage {

using format::FileId;
using format::Generation;
using policy::Lookup;

struct MapReader::Slot {
    MapId map = MapId::count_;
    std::string path;
    std::unique_ptr<Generation> gen;  // the generation being served, if any
    State state = State::absent;
    std::uint64_t generation = 0;
    // The last candidate file that failed validation: not retried (nor logged) until the
    // file changes again.
    std::optional<FileId> rejected;
    // An error stat()ing the file, logged once until it clears.
    int stat_errno = 0;
};

struct MapReader::Pending {
    struct Candidate {
        std::size_t slot = 0;
        MapId map = MapId::count_;
        std::string path;
        FileId id;  // as stat() saw it when polled
        Result<std::unique_ptr<Generation>> loaded = make_error(Errc::invalid, "not loaded");
    };
    std::vector<Candidate> candidates;
};

namespace {

constexpr std::size_t kMaps = static_cast<std::size_t>(MapId::count_);

FileId file_id(const struct stat& st) {
    return FileId{st.st_dev, st.st_ino,
                  static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec,
                  static_cast<std::int64_t>(st.st_size)};
}

Lookup status_only(Lookup::Status s) {
    Lookup r;
    r.status = s;
    return r;
}

}  // namespace

MapReader::MapReader(std::string dir) : MapReader(std::move(dir), Options{}) {}

MapReader::MapReader(std::string dir, Options opts) : dir_(std::move(dir)), opts_(opts) {
    slots_.resize(kMaps);
    for (std::size_t i = 0; i < kMaps; ++i) {
        slots_[i].map = static_cast<MapId>(i);
        slots_[i].path = map_path(dir_, slots_[i].map);
    }
    refresh_all();
    next_check_ = std::chrono::steady_clock::now() + opts_.check_interval;
}

MapReader::~MapReader() = default;
MapReader::MapReader(MapReader&&) noexcept = default;
MapReader& MapReader::operator=(MapReader&&) noexcept = default;

MapReader::RefreshStats MapReader::refresh() {
    auto stats = refresh_all();
    next_check_ = std::chrono::steady_clock::now() + opts_.check_interval;
    return stats;
}

MapReader::RefreshStats MapReader::refresh_all() const {
    RefreshStats stats;
    Pending p;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
        poll_slot(i, stats, p);
    }
    load(p);
    for (std::size_t i = 0; i < p.candidates.size(); ++i) {
        install_slot(p, i, stats);
    }
    return stats;
}

void MapReader::maybe_refresh() const {
    if (opts_.check_interval.count() <= 0) {
        return;
    }
    auto now = std::chrono::steady_clock::now();
    if (now < next_check_) {
        return;
    }
    next_check_ = now + opts_.check_interval;
    refresh_all();
}

void MapReader::PendingDeleter::operator()(Pending* p) const {
    delete p;
}

MapReader::PendingPtr MapReader::poll() const {
    PendingPtr p(new Pending);
    RefreshStats ignored;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
        poll_slot(i, ignored, *p);
    }
    if (p->candidates.empty()) {
        return nullptr;
    }
    return p;
}

void MapReader::load(Pending& p) {
    for (auto& c : p.candidates) {
        c.loaded = format::open_generation(c.path, c.map);
    }
}

std::vector<MapId> MapReader::loaded(const Pending& p) {
    std::vector<MapId> out;
    for (const auto& c : p.candidates) {
        if (c.loaded.ok()) {
            out.push_back(c.map);
        }
    }
    return out;
}

Result<std::vector<MapEntry>> MapReader::loaded_entries(Pending& p, MapId map) {
    for (auto& c : p.candidates) {
        if (c.map == map && c.loaded.ok()) {
            return list_generation(**c.loaded);
        }
    }
    return make_error(Errc::not_found, "no new generation loaded");
}

void MapReader::reject(Pending& p, MapId map, const std::string& why) {
    for (auto& c : p.candidates) {
        if (c.map == map) {
            c.loaded = make_error(Errc::invalid, why);
        }
    }
}

MapReader::RefreshStats MapReader::install(PendingPtr p) const {
    RefreshStats stats;
    if (!p) {
        return stats;
    }
    for (std::size_t i = 0; i < p->candidates.size(); ++i) {
        install_slot(*p, i, stats);
    }
    return stats;
}

// stat()s one map. Removals and unreadable files take effect at once; a new file becomes
// a candidate for load().
void MapReader::poll_slot(std::size_t i, RefreshStats& stats, Pending& p) const {
    Slot& s = slots_[i];
    const std::string_view name = map_file_name(s.map);
    struct stat st {};
    if (::stat(s.path.c_str(), &st) != 0) {
        int err = errno;
        if (err == ENOENT) {
            // No file: an empty map. A deleted file is the operator's way to empty a map.
            if (s.gen) {
                LogLine(Level::warn, "map_removed", opts_.shard)
                    .kv("map", name)
                    .kv("file", s.path)
                    .kv("result", "empty map");
                s.gen.reset();
                ++stats.removed;
            }
            s.state = State::absent;
            s.rejected.reset();
            s.stat_errno = 0;
            return;
        }
        // Cannot tell what is there (EACCES, EIO...): keep what we serve, else fail closed.
        if (s.stat_errno != err) {
            LogLine(Level::error, "map_unreadable", opts_.shard)
                .kv("map", name)
                .kv("file", s.path)
                .kv("error", std::strerror(err))
                .kv("result", s.gen ? "keeping the previous generation" : "lookups fail (T140)");
            s.stat_errno = err;
        }
        if (!s.gen) {
            s.state = State::unavailable;
        }
        return;
    }
    s.stat_errno = 0;
    FileId id = file_id(st);
    if ((s.gen && s.gen->id == id) || (s.rejected && *s.rejected == id)) {
        return;
    }
    Pending::Candidate c;
    c.slot = i;
    c.map = s.map;
    c.path = s.path;
    c.id = id;
    p.candidates.push_back(std::move(c));
}

void MapReader::install_slot(Pending& p, std::size_t candidate, RefreshStats& stats) const {
    auto& c = p.candidates[candidate];
    Slot& s = slots_[c.slot];
    const std::string_view name = map_file_name(s.map);
    if (!c.loaded.ok()) {
        if (s.rejected && *s.rejected == c.id) {
            return;  // logged already
        }
        s.rejected = c.id;
        ++stats.rejected;
        LogLine(Level::error, "map_rejected", opts_.shard)
            .kv("map", name)
            .kv("file", s.path)
            .kv("error", c.loaded.error().message)
            .kv("result", s.gen ? "keeping the previous generation" : "lookups fail (T140)");
        if (!s.gen) {
            s.state = State::unavailable;
        }
        return;
    }
    auto& g = *c.loaded;
    if (s.gen && s.gen->id == g->id) {
        return;  // loaded meanwhile by another refresh
    }
    s.gen = std::move(g);
    s.state = State::ready;
    s.rejected.reset();
    ++s.generation;
    ++stats.loaded;
    LogLine(Level::info, "map_loaded", opts_.shard)
        .kv("map", name)
        .kv("file", s.path)
        .kv("entries", s.gen->header.keys + s.gen->header.prefixes)
        .kv("generation", s.generation);
}

Lookup MapReader::lookup_failed(const Generation& g, std::string_view what) const {
    if (!g.logged_error) {
        g.logged_error = true;
        LogLine(Level::error, "map_lookup_failed", opts_.shard)
            .kv("file", g.path)
            .kv("error", what)
            .kv("result", "T140");
    }
    return status_only(Lookup::Status::unavailable);
}

Lookup MapReader::find(MapId map, std::string_view key) const {
    maybe_refresh();
    auto i = static_cast<std::size_t>(map);
    if (i >= slots_.size()) {
        return status_only(Lookup::Status::missing);
    }
    Slot& s = slots_[i];
    if (!s.gen) {
        return status_only(s.state == State::unavailable ? Lookup::Status::unavailable
                                                         : Lookup::Status::missing);
    }
    Generation& g = *s.gen;
    if (!g.has_keys || key.empty() || key.size() > limits::kKey) {
        return status_only(Lookup::Status::missing);
    }
    ReadScope scope(g.txn);
    if (!scope.error().ok()) {
        return lookup_failed(g, scope.error().message);
    }
    MDB_val k = to_val(key);
    MDB_val v;
    int rc = mdb_get(g.txn.get(), g.keys, &k, &v);
    if (rc == MDB_NOTFOUND) {
        return status_only(Lookup::Status::missing);
    }
    if (rc != 0) {
        return lookup_failed(g, lmdb_error(rc, "get").message);
    }
    auto payload = format::decode_payload(from_val(v));
    if (!payload) {
        return lookup_failed(g, "bad entry");
    }
    Lookup r;
    r.status = Lookup::Status::found;
    r.key = std::string(key);
    r.value = std::string(payload->value);
    r.source = format::source_text(g.files, *payload);
    return r;
}

Lookup MapReader::find_cidr(MapId map, const IpAddr& ip) const {
    maybe_refresh();
    auto i = static_cast<std::size_t>(map);
    if (i >= slots_.size()) {
        return status_only(Lookup::Status::missing);
    }
    Slot& s = slots_[i];
    if (!s.gen) {
        return status_only(s.state == State::unavailable ? Lookup::Status::unavailable
                                                         : Lookup::Status::missing);
    }
    Generation& g = *s.gen;
    if (!g.has_cidr) {
        return status_only(Lookup::Status::missing);
    }
    ReadScope scope(g.txn);
    if (!scope.error().ok()) {
        return lookup_failed(g, scope.error().message);
    }
    if (auto e = g.ranges_cursor.renew(g.txn); !e.ok()) {
        return lookup_failed(g, e.message);
    }
    // The first range ending at or after `ip`; it holds `ip` iff it starts at or before it.
    MDB_val k{format::kAddrLen, const_cast<std::uint8_t*>(ip.bytes.data())};
    MDB_val v;
    int rc = mdb_cursor_get(g.ranges_cursor.get(), &k, &v, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND) {
        return status_only(Lookup::Status::missing);
    }
    if (rc != 0) {
        return lookup_failed(g, lmdb_error(rc, "cursor").message);
    }
    std::string_view val = from_val(v);
    if (k.mv_size != format::kAddrLen || val.size() < format::kRangeHeadLen + 8) {
        return lookup_failed(g, "bad range entry");
    }
    if (std::memcmp(val.data(), ip.bytes.data(), format::kAddrLen) > 0) {
        return status_only(Lookup::Status::missing);
    }
    auto payload = format::decode_payload(val.substr(format::kRangeHeadLen));
    if (!payload) {
        return lookup_failed(g, "bad range entry");
    }
    Cidr owner = format::prefix_from_key(val.substr(format::kAddrLen, format::kPrefixKeyLen));
    Lookup r;
    r.status = Lookup::Status::found;
    r.key = format_cidr(owner);
    r.value = std::string(payload->value);
    r.source = format::source_text(g.files, *payload);
    return r;
}

Lookup::Status MapReader::has_entries(MapId map) const {
    maybe_refresh();
    auto i = static_cast<std::size_t>(map);
    if (i >= slots_.size()) {
        return Lookup::Status::missing;
    }
    const Slot& s = slots_[i];
    if (!s.gen) {
        return s.state == State::unavailable ? Lookup::Status::unavailable
                                             : Lookup::Status::missing;
    }
    return s.gen->header.keys + s.gen->header.prefixes > 0 ? Lookup::Status::found
                                                           : Lookup::Status::missing;
}

MapReader::MapInfo MapReader::info(MapId map) const {
    MapInfo out;
    auto i = static_cast<std::size_t>(map);
    if (i >= slots_.size()) {
        return out;
    }
    const Slot& s = slots_[i];
    out.state = s.state;
    out.path = s.path;
    out.generation = s.generation;
    out.candidate_rejected = s.rejected.has_value();
    if (s.gen) {
        out.entries = s.gen->header.keys + s.gen->header.prefixes;
        out.built_ns = s.gen->header.built_ns;
    }
    return out;
}

}  // namespace sluice::storage
