#include "storage/map_format.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace sluice::storage::format {

namespace {

using U128 = unsigned __int128;
constexpr U128 kMax = ~U128{0};

void put_u32(std::string& out, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) {
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
}

void put_u64(std::string& out, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
}

std::uint32_t get_u32(std::string_view s, std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) {
        v = (v << 8) | static_cast<unsigned char>(s[at + i]);
    }
    return v;
}

std::uint64_t get_u64(std::string_view s, std::size_t at) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) {
        v = (v << 8) | static_cast<unsigned char>(s[at + i]);
    }
    return v;
}

constexpr std::size_t kHeaderLen = 8 + 4 + 4 + 8 + 8 + 8 + 8;

U128 to_u128(const std::array<std::uint8_t, 16>& b) {
    U128 v = 0;
    for (auto x : b) {
        v = (v << 8) | x;
    }
    return v;
}

std::array<std::uint8_t, 16> from_u128(U128 v) {
    std::array<std::uint8_t, 16> b{};
    for (int i = 15; i >= 0; --i) {
        b[i] = static_cast<std::uint8_t>(v & 0xff);
        v >>= 8;
    }
    return b;
}

std::int64_t mtime_ns(const struct stat& st) {
    return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

// The 128-bit form marks IPv4 by the ::ffff:0:0/96 block: a prefix at least that long
// inside it is an IPv4 prefix (parse_ip never yields a non-v4 address there).
bool mapped_v4(const IpAddr& a, unsigned prefix) {
    static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return prefix >= 96 && std::memcmp(a.bytes.data(), mapped, 12) == 0;
}

Error corrupt(const std::string& path, const std::string& what) {
    return make_error(Errc::corrupt, path + ": " + what);
}

constexpr std::uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr std::uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr std::uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr std::uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr std::uint64_t kP5 = 0x27D4EB2F165667C5ULL;

std::uint64_t rotl(std::uint64_t x, int r) {
    return (x << r) | (x >> (64 - r));
}

std::uint64_t read64(const unsigned char* p) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) {
        v = (v << 8) | p[i];
    }
    return v;
}

std::uint32_t read32(const unsigned char* p) {
    return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
           static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

std::uint64_t xxh_round(std::uint64_t acc, std::uint64_t input) {
    acc += input * kP2;
    acc = rotl(acc, 31);
    return acc * kP1;
}

std::uint64_t xxh_merge(std::uint64_t acc, std::uint64_t v) {
    acc ^= xxh_round(0, v);
    return acc * kP1 + kP4;
}

// Reads exactly `len` bytes at `off`, retrying short reads.
bool pread_all(int fd, void* buf, std::size_t len, off_t off) {
    auto* p = static_cast<char*>(buf);
    while (len > 0) {
        ssize_t n = ::pread(fd, p, len, off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        p += n;
        len -= static_cast<std::size_t>(n);
        off += n;
    }
    return true;
}

class FdCloser {
  public:
    explicit FdCloser(int fd) : fd_(fd) {}
    FdCloser(const FdCloser&) = delete;
    FdCloser& operator=(const FdCloser&) = delete;
    ~FdCloser() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    int get() const { return fd_; }

  private:
    int fd_;
};

// XXH64 of the first `len` bytes of `fd`.
bool hash_fd(int fd, std::uint64_t len, std::uint64_t& out) {
    constexpr std::size_t kChunk = std::size_t{1} << 20;
    std::vector<unsigned char> buf(kChunk);
    Hasher h;
    std::uint64_t off = 0;
    while (off < len) {
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, len - off));
        if (!pread_all(fd, buf.data(), n, static_cast<off_t>(off))) {
            return false;
        }
        h.update(buf.data(), n);
        off += n;
    }
    out = h.digest();
    return true;
}

}  // namespace

Hasher::Hasher(std::uint64_t seed)
    : v_{seed + kP1 + kP2, seed + kP2, seed, seed - kP1}, seed_(seed), buf_{} {}

void Hasher::update(const void* data, std::size_t len) {
    const auto* p = static_cast<const unsigned char*>(data);
    total_ += len;
    if (buffered_ + len < 32) {
        std::memcpy(buf_ + buffered_, p, len);
        buffered_ += len;
        return;
    }
    if (buffered_ > 0) {
        std::size_t fill = 32 - buffered_;
        std::memcpy(buf_ + buffered_, p, fill);
        for (int i = 0; i < 4; ++i) {
            v_[i] = xxh_round(v_[i], read64(buf_ + 8 * i));
        }
        p += fill;
        len -= fill;
        buffered_ = 0;
    }
    while (len >= 32) {
        for (int i = 0; i < 4; ++i) {
            v_[i] = xxh_round(v_[i], read64(p + 8 * i));
        }
        p += 32;
        len -= 32;
    }
    std::memcpy(buf_, p, len);
    buffered_ = len;
}

std::uint64_t Hasher::digest() const {
    std::uint64_t h;
    if (total_ >= 32) {
        h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18);
        for (auto v : v_) {
            h = xxh_merge(h, v);
        }
    } else {
        h = seed_ + kP5;
    }
    h += total_;
    const unsigned char* p = buf_;
    std::size_t len = buffered_;
    while (len >= 8) {
        h ^= xxh_round(0, read64(p));
        h = rotl(h, 27) * kP1 + kP4;
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        h ^= static_cast<std::uint64_t>(read32(p)) * kP1;
        h = rotl(h, 23) * kP2 + kP3;
        p += 4;
        len -= 4;
    }
    while (len > 0) {
        h ^= *p * kP5;
        h = rotl(h, 11) * kP1;
        ++p;
        --len;
    }
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    h ^= h >> 32;
    return h;
}

std::uint64_t hash64(const void* data, std::size_t len, std::uint64_t seed) {
    Hasher h(seed);
    h.update(data, len);
    return h.digest();
}

Error append_trailer(const std::string& path) {
    FdCloser fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (fd.get() < 0) {
        return errno_error(errno, "open " + path);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
        return errno_error(errno, "fstat " + path);
    }
    auto len = static_cast<std::uint64_t>(st.st_size);
    std::uint64_t sum = 0;
    if (!hash_fd(fd.get(), len, sum)) {
        return errno_error(errno ? errno : EIO, "read " + path);
    }
    std::string block(kTrailerSize, '\0');
    std::string rec(kTrailerMagic, sizeof kTrailerMagic);
    put_u64(rec, len);
    put_u64(rec, sum);
    put_u64(rec, 0);
    block.replace(kTrailerSize - kTrailerRecord, kTrailerRecord, rec);
    std::size_t done = 0;
    while (done < block.size()) {
        ssize_t n = ::pwrite(fd.get(), block.data() + done, block.size() - done,
                             static_cast<off_t>(len + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return errno_error(n < 0 ? errno : EIO, "write trailer of " + path);
        }
        done += static_cast<std::size_t>(n);
    }
    return {};
}

std::string encode_header(const Header& h) {
    std::string out(kMagic, sizeof kMagic);
    put_u32(out, h.version);
    put_u32(out, static_cast<std::uint32_t>(h.map));
    put_u64(out, h.keys);
    put_u64(out, h.prefixes);
    put_u64(out, h.ranges);
    put_u64(out, h.built_ns);
    return out;
}

std::optional<Header> decode_header(std::string_view b) {
    if (b.size() != kHeaderLen || std::memcmp(b.data(), kMagic, sizeof kMagic) != 0) {
        return std::nullopt;
    }
    Header h;
    h.version = get_u32(b, 8);
    auto map = get_u32(b, 12);
    if (map >= static_cast<std::uint32_t>(MapId::count_)) {
        return std::nullopt;
    }
    h.map = static_cast<MapId>(map);
    h.keys = get_u64(b, 16);
    h.prefixes = get_u64(b, 24);
    h.ranges = get_u64(b, 32);
    h.built_ns = get_u64(b, 40);
    return h;
}

void append_payload(std::string& out, std::uint32_t file, std::uint32_t line,
                    std::string_view value) {
    put_u32(out, file);
    put_u32(out, line);
    out.append(value);
}

std::optional<Payload> decode_payload(std::string_view b) {
    if (b.size() < 8) {
        return std::nullopt;
    }
    return Payload{get_u32(b, 0), get_u32(b, 4), b.substr(8)};
}

std::string encode_files(const std::vector<std::string>& files) {
    std::string out;
    put_u32(out, static_cast<std::uint32_t>(files.size()));
    for (const auto& f : files) {
        put_u32(out, static_cast<std::uint32_t>(f.size()));
        out += f;
    }
    return out;
}

std::optional<std::vector<std::string>> decode_files(std::string_view b) {
    if (b.size() < 4) {
        return std::nullopt;
    }
    std::uint32_t n = get_u32(b, 0);
    std::size_t at = 4;
    std::vector<std::string> out;
    for (std::uint32_t i = 0; i < n; ++i) {
        if (b.size() - at < 4) {
            return std::nullopt;
        }
        std::uint32_t len = get_u32(b, at);
        at += 4;
        if (b.size() - at < len) {
            return std::nullopt;
        }
        out.emplace_back(b.substr(at, len));
        at += len;
    }
    if (at != b.size()) {
        return std::nullopt;
    }
    return out;
}

std::string prefix_key(const Cidr& c) {
    std::string k(reinterpret_cast<const char*>(c.base.bytes.data()), kAddrLen);
    k.push_back(static_cast<char>(c.prefix));
    return k;
}

Cidr prefix_from_key(std::string_view key) {
    Cidr c;
    std::memcpy(c.base.bytes.data(), key.data(), kAddrLen);
    c.prefix = static_cast<unsigned char>(key[kAddrLen]);
    c.base.v4 = mapped_v4(c.base, c.prefix);
    return c;
}

std::string source_text(const std::vector<std::string>& files, const Payload& p) {
    std::string f = p.file < files.size() ? files[p.file] : std::string("?");
    if (p.line == 0) {
        return f;
    }
    return f + ":" + std::to_string(p.line);
}

std::vector<Range> flatten(const std::vector<Cidr>& prefixes) {
    struct Span {
        U128 lo;
        U128 hi;
        std::size_t index;
    };
    std::vector<Span> spans;
    spans.reserve(prefixes.size());
    for (std::size_t i = 0; i < prefixes.size(); ++i) {
        spans.push_back({to_u128(prefixes[i].base.bytes), to_u128(prefixes[i].last().bytes), i});
    }
    // Containers before what they contain: by start, then the wider (later end) first.
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
        return a.lo != b.lo ? a.lo < b.lo : a.hi > b.hi;
    });
    std::vector<Range> out;
    out.reserve(spans.size() * 2 + 1);
    std::vector<const Span*> open;  // the chain of prefixes containing `pos`
    U128 pos = 0;
    bool past_end = false;  // `pos` ran past the last address
    auto emit = [&](U128 lo, U128 hi, std::size_t owner) {
        out.push_back({from_u128(lo), from_u128(hi), owner});
    };
    // Emits the rest of the innermost open prefix and closes it.
    auto close_top = [&] {
        const Span* top = open.back();
        open.pop_back();
        if (!past_end && pos <= top->hi) {
            emit(pos, top->hi, top->index);
        }
        if (top->hi == kMax) {
            past_end = true;
        } else if (!past_end && pos <= top->hi) {
            pos = top->hi + 1;
        }
    };
    for (const Span& s : spans) {
        while (!open.empty() && open.back()->hi < s.lo) {
            close_top();
        }
        if (!open.empty() && !past_end && pos < s.lo) {
            emit(pos, s.lo - 1, open.back()->index);
        }
        pos = s.lo;
        past_end = false;
        open.push_back(&s);
    }
    while (!open.empty()) {
        close_top();
    }
    return out;
}

Result<std::unique_ptr<Generation>> open_generation(const std::string& path, MapId expected) {
    // 1. Size and checksum, through read(2) only: nothing is mapped yet.
    FdCloser fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
        return errno_error(errno, "open " + path);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
        return errno_error(errno, "fstat " + path);
    }
    if (!S_ISREG(st.st_mode)) {
        return corrupt(path, "not a regular file");
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size < kMinFileSize) {
        return corrupt(path, "file too small (" + std::to_string(size) + " bytes)");
    }
    if (size > kMaxFileSize) {
        return corrupt(path, "file too large (" + std::to_string(size) + " bytes)");
    }
    char rec[kTrailerRecord];
    if (!pread_all(fd.get(), rec, sizeof rec, static_cast<off_t>(size - kTrailerRecord))) {
        return errno_error(errno ? errno : EIO, "read " + path);
    }
    std::string_view r(rec, sizeof rec);
    if (std::memcmp(rec, kTrailerMagic, sizeof kTrailerMagic) != 0) {
        return corrupt(path, "no checksum trailer (not a sluice map, or truncated)");
    }
    const std::uint64_t data_len = get_u64(r, 8);
    if (data_len + kTrailerSize != size) {
        return corrupt(path, "truncated or extended: the trailer says " +
                                 std::to_string(data_len + kTrailerSize) + " bytes, the file has " +
                                 std::to_string(size));
    }
    std::uint64_t sum = 0;
    if (!hash_fd(fd.get(), data_len, sum)) {
        return errno_error(errno ? errno : EIO, "read " + path);
    }
    if (sum != get_u64(r, 16)) {
        return corrupt(path, "checksum mismatch (the file was damaged or modified)");
    }

    // 2. LMDB opens the same file (it may have been replaced since: then retry later).
    auto g = std::make_unique<Generation>();
    g->path = path;
    auto env = Env::open(path, Env::Options{kReaderFlags, 0, kMaxDbs, 0444});
    if (!env.ok()) {
        return env.error();
    }
    g->env = std::move(*env);
    int lmdb_fd = -1;
    if (int rc = mdb_env_get_fd(g->env.get(), &lmdb_fd); rc != 0) {
        return lmdb_error(rc, "fd of " + path);
    }
    struct stat fst {};
    if (::fstat(lmdb_fd, &fst) != 0) {
        return errno_error(errno, "fstat " + path);
    }
    if (fst.st_dev != st.st_dev || fst.st_ino != st.st_ino) {
        return make_error(Errc::busy, path + ": replaced while being opened");
    }
    g->id = FileId{st.st_dev, st.st_ino, mtime_ns(st), static_cast<std::int64_t>(size)};

    // 3. LMDB's own idea of its size fits in the checksummed data.
    MDB_envinfo info{};
    MDB_stat est{};
    mdb_env_info(g->env.get(), &info);
    mdb_env_stat(g->env.get(), &est);
    if (est.ms_psize == 0 || data_len % est.ms_psize != 0) {
        return corrupt(path, "data size is not a whole number of pages");
    }
    std::uint64_t needed = (static_cast<std::uint64_t>(info.me_last_pgno) + 1) * est.ms_psize;
    if (needed > data_len) {
        return corrupt(path, "truncated: LMDB uses " + std::to_string(needed) +
                                 " bytes, the data has " + std::to_string(data_len));
    }

    // 4. Our header and the entry counts.
    // Handles opened in a read-only transaction are exported to the environment only when
    // that transaction commits (a reset would close them).
    {
        auto t = Txn::begin(g->env, MDB_RDONLY);
        if (!t.ok()) {
            return t.error();
        }
        auto meta = t->open_db(kMetaDb, 0);
        if (!meta.ok()) {
            return corrupt(path, "no header (not a sluice map)");
        }
        MDB_val k = to_val(kHeaderKey);
        MDB_val v;
        if (mdb_get(t->get(), *meta, &k, &v) != 0) {
            return corrupt(path, "no header record");
        }
        auto h = decode_header(from_val(v));
        if (!h) {
            return corrupt(path, "bad header record");
        }
        if (h->version != kVersion) {
            return make_error(Errc::version, path + ": map format version " +
                                                 std::to_string(h->version) + ", expected " +
                                                 std::to_string(kVersion));
        }
        if (h->map != expected) {
            return corrupt(path, "holds map " + std::string(map_file_name(h->map)) + ", expected " +
                                     std::string(map_file_name(expected)));
        }
        g->header = *h;
        k = to_val(kFilesKey);
        if (mdb_get(t->get(), *meta, &k, &v) != 0) {
            return corrupt(path, "no source file table");
        }
        auto files = decode_files(from_val(v));
        if (!files) {
            return corrupt(path, "bad source file table");
        }
        g->files = std::move(*files);

        auto check = [&](const char* name, std::uint64_t want, MDB_dbi& dbi) -> Error {
            auto d = t->open_db(name, 0);
            if (!d.ok()) {
                return corrupt(path, std::string("missing sub-database ") + name);
            }
            MDB_stat s{};
            if (int rc = mdb_stat(t->get(), *d, &s); rc != 0) {
                return lmdb_error(rc, path + ": stat " + name);
            }
            if (s.ms_entries != want) {
                return corrupt(path, std::string(name) + " holds " + std::to_string(s.ms_entries) +
                                         " entries, header says " + std::to_string(want));
            }
            dbi = *d;
            return {};
        };
        g->has_keys = map_has_string_keys(expected);
        g->has_cidr = map_has_cidr_keys(expected);
        if (g->has_keys) {
            if (auto e = check(kKeysDb, h->keys, g->keys); !e.ok()) {
                return e;
            }
        } else if (h->keys != 0) {
            return corrupt(path, "string keys in a CIDR-only map");
        }
        if (g->has_cidr) {
            if (auto e = check(kPrefixesDb, h->prefixes, g->prefixes); !e.ok()) {
                return e;
            }
            if (auto e = check(kRangesDb, h->ranges, g->ranges); !e.ok()) {
                return e;
            }
            if (h->ranges < h->prefixes / 2 || h->ranges > 2 * h->prefixes + 1) {
                return corrupt(path, "range count inconsistent with prefix count");
            }
        } else if (h->prefixes != 0 || h->ranges != 0) {
            return corrupt(path, "CIDR keys in a map without them");
        }
        if (auto e = t->commit(); !e.ok()) {
            return e;
        }
    }

    auto t = Txn::begin(g->env, MDB_RDONLY);
    if (!t.ok()) {
        return t.error();
    }
    g->txn = std::move(*t);
    if (g->has_cidr) {
        auto c = Cursor::open(g->txn, g->ranges);
        if (!c.ok()) {
            return c.error();
        }
        g->ranges_cursor = std::move(*c);
    }
    g->txn.reset();
    return g;
}

}  // namespace sluice::storage::format
