// Publishing, listing and editing maps (the offline side of storage/maps.hpp).

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <system_error>
#include <unordered_map>

#include "common/fd.hpp"
#include "storage/map_format.hpp"
#include "storage/maps.hpp"

namespace sluice::storage {

namespace fs = std::filesystem;
using namespace format;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;
// Map space doubles on MDB_MAP_FULL up to this (the estimate is generous, so a retry is rare).
constexpr std::size_t kMaxMapSize = std::size_t{64} << 30;

Error fsync_path(const std::string& path, bool directory) {
    Fd fd(::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC));
    if (fd.get() < 0) {
        return errno_error(errno, "open " + path + " for fsync");
    }
    if (::fsync(fd.get()) != 0) {
        return errno_error(errno, "fsync " + path);
    }
    return {};
}

Error ensure_dir(const std::string& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
        return make_error(Errc::io, "create " + dir + ": " + ec.message());
    }
    return {};
}

// Serialises editors of one map (build, add, del) across processes.
class EditLock {
  public:
    static Result<std::unique_ptr<EditLock>> take(const std::string& dir, MapId map) {
        if (auto e = ensure_dir(dir); !e.ok()) {
            return e;
        }
        std::string path = dir + "/" + std::string(map_file_name(map)) + ".edit.lock";
        int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            return errno_error(errno, "open " + path);
        }
        auto lock = std::unique_ptr<EditLock>(new EditLock(fd));
        int rc;
        do {
            rc = ::flock(fd, LOCK_EX);
        } while (rc != 0 && errno == EINTR);
        if (rc != 0) {
            return errno_error(errno, "lock " + path);
        }
        return lock;
    }
    EditLock(const EditLock&) = delete;
    EditLock& operator=(const EditLock&) = delete;
    ~EditLock() { ::close(fd_); }  // releases the flock

  private:
    explicit EditLock(int fd) : fd_(fd) {}
    int fd_;
};

std::uint64_t now_ns() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

struct Prepared {
    // Sorted by key bytes: LMDB's default order, so MDB_APPEND applies.
    std::vector<std::pair<std::string, std::string>> keys;      // key -> payload
    std::vector<std::pair<std::string, std::string>> prefixes;  // prefix key -> payload
    std::vector<std::pair<std::string, std::string>> ranges;    // end -> range value
    std::vector<std::string> files;
    std::size_t bytes = 0;
};

Result<Prepared> prepare(MapId map, const std::vector<MapEntry>& entries) {
    Prepared p;
    std::unordered_map<std::string, std::uint32_t> file_index;
    std::map<std::string, std::string> seen;  // canonical key -> source, for duplicates
    std::vector<Cidr> cidrs;
    std::vector<std::string> cidr_payloads;
    for (const auto& e : entries) {
        EntryCheck c = normalise_entry(map, e.key, e.value);
        if (!c.entry) {
            return make_error(Errc::invalid,
                              std::string(map_file_name(map)) + ": " + e.key + ": " + c.error);
        }
        if (auto [it, fresh] = seen.emplace(c.entry->key, e.source); !fresh) {
            return make_error(Errc::invalid, std::string(map_file_name(map)) +
                                                 ": duplicate key \"" + c.entry->key + "\" (" +
                                                 it->second + " and " + e.source + ")");
        }
        SourceRef ref = split_source(e.source);
        auto [fit, added] =
            file_index.emplace(ref.file, static_cast<std::uint32_t>(p.files.size()));
        if (added) {
            p.files.push_back(ref.file);
        }
        std::string payload;
        append_payload(payload, fit->second, static_cast<std::uint32_t>(std::max(ref.line, 0)),
                       c.entry->value);
        p.bytes += c.entry->key.size() + payload.size() + 64;
        if (c.entry->cidr) {
            p.prefixes.emplace_back(prefix_key(*c.entry->cidr), payload);
            cidrs.push_back(*c.entry->cidr);
            cidr_payloads.push_back(std::move(payload));
        } else {
            p.keys.emplace_back(std::move(c.entry->key), std::move(payload));
        }
    }
    std::sort(p.keys.begin(), p.keys.end());
    std::sort(p.prefixes.begin(), p.prefixes.end());
    for (const Range& r : flatten(cidrs)) {
        const Cidr& owner = cidrs[r.owner];
        std::string v(reinterpret_cast<const char*>(r.start.data()), kAddrLen);
        v.append(reinterpret_cast<const char*>(owner.base.bytes.data()), kAddrLen);
        v.push_back(static_cast<char>(owner.prefix));
        v += cidr_payloads[r.owner];
        p.bytes += v.size() + kAddrLen + 64;
        p.ranges.emplace_back(std::string(reinterpret_cast<const char*>(r.end.data()), kAddrLen),
                              std::move(v));
    }
    for (const auto& f : p.files) {
        p.bytes += f.size() + 8;
    }
    return p;
}

Error put_all(Txn& txn, MDB_dbi dbi, const std::vector<std::pair<std::string, std::string>>& kv,
              const char* what) {
    for (const auto& [k, v] : kv) {
        MDB_val key = to_val(k);
        MDB_val val = to_val(v);
        if (int rc = mdb_put(txn.get(), dbi, &key, &val, MDB_APPEND); rc != 0) {
            return lmdb_error(rc, std::string("write ") + what);
        }
    }
    return {};
}

// Password hashes are not for everyone's eyes (like /etc/shadow); other maps are public.
unsigned file_mode(MapId map) {
    return map == MapId::users ? 0640 : 0644;
}

// Removes NAME.mdb.tmp-PID-N files left by a builder that died (its PID is gone).
void remove_stale_tmp(const std::string& dir, MapId map) {
    const std::string prefix = std::string(map_file_name(map)) + ".mdb.tmp-";
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        std::string name = e.path().filename().string();
        if (name.rfind(prefix, 0) != 0) {
            continue;
        }
        long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
        if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
            ::unlink(e.path().c_str());
        }
    }
}

// Writes one complete map file at `path` (which must not exist).
Error write_file(const std::string& path, MapId map, const Prepared& p, std::size_t map_size) {
    auto env = Env::open(path, Env::Options{MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOSYNC, map_size,
                                            kMaxDbs, file_mode(map)});
    if (!env.ok()) {
        return env.error();
    }
    auto txn = Txn::begin(*env, 0);
    if (!txn.ok()) {
        return txn.error();
    }
    auto meta = txn->open_db(kMetaDb, MDB_CREATE);
    if (!meta.ok()) {
        return meta.error();
    }
    if (map_has_string_keys(map)) {
        auto keys = txn->open_db(kKeysDb, MDB_CREATE);
        if (!keys.ok()) {
            return keys.error();
        }
        if (auto e = put_all(*txn, *keys, p.keys, "keys"); !e.ok()) {
            return e;
        }
    }
    if (map_has_cidr_keys(map)) {
        auto prefixes = txn->open_db(kPrefixesDb, MDB_CREATE);
        auto ranges = txn->open_db(kRangesDb, MDB_CREATE);
        if (!prefixes.ok()) {
            return prefixes.error();
        }
        if (!ranges.ok()) {
            return ranges.error();
        }
        if (auto e = put_all(*txn, *prefixes, p.prefixes, "prefixes"); !e.ok()) {
            return e;
        }
        if (auto e = put_all(*txn, *ranges, p.ranges, "ranges"); !e.ok()) {
            return e;
        }
    }
    Header h;
    h.map = map;
    h.keys = p.keys.size();
    h.prefixes = p.prefixes.size();
    h.ranges = p.ranges.size();
    h.built_ns = now_ns();
    std::vector<std::pair<std::string, std::string>> meta_kv = {
        {std::string(kFilesKey), encode_files(p.files)},
        {std::string(kHeaderKey), encode_header(h)},
    };
    if (auto e = put_all(*txn, *meta, meta_kv, "meta"); !e.ok()) {
        return e;
    }
    if (auto e = txn->commit(); !e.ok()) {
        return e;
    }
    if (int rc = mdb_env_sync(env->get(), 1); rc != 0) {
        return lmdb_error(rc, "sync " + path);
    }
    return {};
}

std::atomic<unsigned> tmp_counter{0};

}  // namespace

// Reads every entry of an opened generation.
Result<std::vector<MapEntry>> list_generation(Generation& g) {
    std::vector<MapEntry> out;
    ReadScope scope(g.txn);
    if (!scope.error().ok()) {
        return scope.error();
    }
    auto walk = [&](MDB_dbi dbi, bool cidr) -> Error {
        auto cur = Cursor::open(g.txn, dbi);
        if (!cur.ok()) {
            return cur.error();
        }
        MDB_val k, v;
        int rc = mdb_cursor_get(cur->get(), &k, &v, MDB_FIRST);
        for (; rc == 0; rc = mdb_cursor_get(cur->get(), &k, &v, MDB_NEXT)) {
            auto payload = decode_payload(from_val(v));
            if (!payload || (cidr && k.mv_size != kPrefixKeyLen)) {
                return make_error(Errc::corrupt, g.path + ": bad entry");
            }
            std::string key =
                cidr ? format_cidr(prefix_from_key(from_val(k))) : std::string(from_val(k));
            out.push_back(
                {std::move(key), std::string(payload->value), source_text(g.files, *payload)});
        }
        if (rc != MDB_NOTFOUND) {
            return lmdb_error(rc, "read " + g.path);
        }
        return {};
    };
    if (g.has_cidr) {
        if (auto e = walk(g.prefixes, true); !e.ok()) {
            return e;
        }
    }
    if (g.has_keys) {
        if (auto e = walk(g.keys, false); !e.ok()) {
            return e;
        }
    }
    return out;
}


std::string map_path(const std::string& dir, MapId map) {
    return dir + "/" + std::string(map_file_name(map)) + ".mdb";
}

Result<PublishInfo> publish_map(const std::string& dir, MapId map,
                                const std::vector<MapEntry>& entries) {
    if (map == MapId::count_) {
        return make_error(Errc::invalid, "unknown map");
    }
    auto prepared = prepare(map, entries);
    if (!prepared.ok()) {
        return prepared.error();
    }
    const Prepared& p = *prepared;
    if (auto e = ensure_dir(dir); !e.ok()) {
        return e;
    }
    remove_stale_tmp(dir, map);
    const std::string final_path = map_path(dir, map);
    const std::string tmp = final_path + ".tmp-" + std::to_string(::getpid()) + "-" +
                            std::to_string(tmp_counter.fetch_add(1));
    // Generous: B-tree pages are at least half full, and a retry doubles it anyway.
    std::size_t map_size = (2 * kMiB + 3 * p.bytes + kMiB - 1) / kMiB * kMiB;
    Error err;
    for (;;) {
        ::unlink(tmp.c_str());
        err = write_file(tmp, map, p, map_size);
        if (err.code != Errc::map_full || map_size >= kMaxMapSize) {
            break;
        }
        map_size *= 2;
    }
    auto fail = [&](Error e) {
        ::unlink(tmp.c_str());
        return e;
    };
    if (!err.ok()) {
        return fail(err);
    }
    if (auto e = append_trailer(tmp); !e.ok()) {
        return fail(e);
    }
    if (auto e = fsync_path(tmp, false); !e.ok()) {
        return fail(e);
    }
    // Validate exactly as a reader will before anyone can see the file.
    {
        auto g = open_generation(tmp, map);
        if (!g.ok()) {
            return fail(
                make_error(Errc::corrupt, "the new map failed validation: " + g.error().message));
        }
        const Header& h = (*g)->header;
        if (h.keys != p.keys.size() || h.prefixes != p.prefixes.size() ||
            h.ranges != p.ranges.size()) {
            return fail(make_error(Errc::corrupt, "the new map lost entries: " + tmp));
        }
    }
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
        return fail(errno_error(errno, "rename " + tmp + " to " + final_path));
    }
    // The rename is durable only once the directory is.
    if (auto e = fsync_path(dir, true); !e.ok()) {
        return e;
    }
    return PublishInfo{final_path, p.keys.size() + p.prefixes.size(), p.ranges.size()};
}

BuildReport build_map(const std::string& dir, MapId map, const std::string& source_path) {
    BuildReport report;
    ParseResult parsed = parse_map_file(map, source_path);
    if (!parsed.ok()) {
        report.diagnostics = std::move(parsed.diagnostics);
        return report;
    }
    auto lock = EditLock::take(dir, map);
    if (!lock.ok()) {
        report.error = lock.error();
        return report;
    }
    auto info = publish_map(dir, map, parsed.entries);
    if (!info.ok()) {
        report.error = info.error();
        return report;
    }
    report.published = std::move(*info);
    return report;
}

Result<MapContents> read_map(const std::string& dir, MapId map) {
    MapContents out;
    out.path = map_path(dir, map);
    struct stat st {};
    if (::stat(out.path.c_str(), &st) != 0) {
        if (errno == ENOENT) {
            return out;
        }
        return errno_error(errno, "stat " + out.path);
    }
    auto g = open_generation(out.path, map);
    if (!g.ok()) {
        return g.error();
    }
    auto entries = list_generation(**g);
    if (!entries.ok()) {
        return entries.error();
    }
    out.present = true;
    out.built_ns = (*g)->header.built_ns;
    out.entries = std::move(*entries);
    return out;
}

std::optional<std::string> normalise_key(MapId map, std::string_view key, std::string& error) {
    // Pair the key with a value every map accepts, so only the key is judged.
    std::string_view value;
    switch (map) {
        case MapId::catch_all:
            value = "postmaster@example.invalid";
            break;
        case MapId::connection_filter:
            value = "deny";
            break;
        case MapId::access:
            value = "OK";
            break;
        case MapId::users:
            value = "x";
            break;
        default:
            break;
    }
    EntryCheck c = normalise_entry(map, key, value);
    if (!c.entry) {
        error = c.error;
        return std::nullopt;
    }
    return c.entry->key;
}

namespace {

Result<EditOutcome> edit(const std::string& dir, MapId map, std::string_view key,
                         const MapEntry* replacement) {
    std::string err;
    auto canonical = normalise_key(map, key, err);
    if (!canonical) {
        return make_error(Errc::invalid, std::string(map_file_name(map)) + ": " + err);
    }
    auto lock = EditLock::take(dir, map);
    if (!lock.ok()) {
        return lock.error();
    }
    auto current = read_map(dir, map);
    if (!current.ok()) {
        return current.error();
    }
    auto& entries = current->entries;
    auto it = std::find_if(entries.begin(), entries.end(),
                           [&](const MapEntry& e) { return e.key == *canonical; });
    EditOutcome outcome;
    if (replacement == nullptr) {
        if (it == entries.end()) {
            return EditOutcome::not_found;
        }
        entries.erase(it);
        outcome = EditOutcome::removed;
    } else if (it != entries.end()) {
        *it = *replacement;
        outcome = EditOutcome::replaced;
    } else {
        entries.push_back(*replacement);
        outcome = EditOutcome::added;
    }
    auto info = publish_map(dir, map, entries);
    if (!info.ok()) {
        return info.error();
    }
    return outcome;
}

}  // namespace

Result<EditOutcome> add_map_entry(const std::string& dir, MapId map, std::string_view key,
                                  std::string_view value, std::string_view source) {
    EntryCheck c = normalise_entry(map, key, value);
    if (!c.entry) {
        return make_error(Errc::invalid, std::string(map_file_name(map)) + ": " + c.error);
    }
    MapEntry e{c.entry->key, c.entry->value, std::string(source)};
    return edit(dir, map, c.entry->key, &e);
}

Result<EditOutcome> remove_map_entry(const std::string& dir, MapId map, std::string_view key) {
    return edit(dir, map, key, nullptr);
}

}  // namespace sluice::storage
