#pragma once
// The on-disk format of one published map, NAME.mdb in maps.dir (internal to storage/).
//
// One LMDB environment per map, a single file (MDB_NOSUBDIR), opened by readers with
// MDB_RDONLY | MDB_NOLOCK: a published file is never written again (it is replaced by
// rename), so readers need no lock file, and a stale lock file of an older generation can
// never point them at the wrong meta page. Named sub-databases:
//   meta      "header" -> Header (magic, format version, map id, entry counts, build time)
//             "files"  -> the table of source file names that entries refer to
//   keys      canonical key -> payload                         (string-keyed maps, access)
//   prefixes  base(16) prefix(1) -> payload                    (CIDR entries, for listing)
//   ranges    range end(16) -> start(16) owner base(16) owner prefix(1) payload
// where payload = file index (u32 LE) + line (u32 LE) + value bytes. `ranges` holds the
// CIDR entries flattened at build time into disjoint address ranges, each owned by the
// longest prefix covering it, so a longest-prefix match is one MDB_SET_RANGE.
// Addresses are 16 bytes, big-endian, IPv4 as IPv4-mapped IPv6 (common/net.hpp).
//
// After the LMDB data comes a trailer block of kTrailerSize bytes whose last 32 bytes are
// magic(8) data length(8 LE) XXH64 of the data(8 LE) reserved(8). LMDB never looks past
// its last page, so the trailer is invisible to it.
//
// Validation before a file is used (`open_generation`), in this order:
//   1. a sane size, and the trailer's checksum over every data byte, read with pread(2):
//      LMDB has no page checksums, and a B-tree page with flipped bytes crashes a reader
//      (SIGSEGV/SIGBUS, reproduced here), so nothing is mapped before the whole content is
//      known to be what the builder wrote;
//   2. mdb_env_open succeeds (LMDB checks its meta pages' magic and version) on the very
//      file that was checksummed (same device and inode);
//   3. the data is at least as long as LMDB's last used page says (no truncation);
//   4. the header record has our magic, format version and map id, and every
//      sub-database holds exactly the number of entries the header promises.
// Cost: one sequential read of the file per new generation per reader (measured here:
// 13 ms to open and check 15 MB of maps, so under 100 ms for a 100 MB map), nothing per
// lookup.
// What remains is a file modified in place after it was validated; no code here ever
// writes a published file (the publish protocol is new file, fsync, validate, rename).

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.hpp"
#include "storage/lmdb.hpp"
#include "storage/map_source.hpp"

namespace sluice::storage::format {

inline constexpr char kMagic[8] = {'S', 'L', 'U', 'I', 'C', 'E', 'M', 'P'};
inline constexpr std::uint32_t kVersion = 1;
inline constexpr const char* kMetaDb = "meta";
inline constexpr const char* kKeysDb = "keys";
inline constexpr const char* kPrefixesDb = "prefixes";
inline constexpr const char* kRangesDb = "ranges";
inline constexpr std::string_view kHeaderKey = "header";
inline constexpr std::string_view kFilesKey = "files";
inline constexpr unsigned kMaxDbs = 4;
// Smallest valid file: two meta pages of at least 4 KiB and the trailer. Largest we map.
inline constexpr std::uint64_t kMinFileSize = 8192 + 4096;
inline constexpr std::uint64_t kMaxFileSize = std::uint64_t{64} << 30;
inline constexpr std::uint64_t kTrailerSize = 4096;
inline constexpr std::size_t kTrailerRecord = 32;
inline constexpr char kTrailerMagic[8] = {'S', 'L', 'M', 'P', 'S', 'U', 'M', '1'};
inline constexpr unsigned kReaderFlags =
    MDB_RDONLY | MDB_NOLOCK | MDB_NOSUBDIR | MDB_NOTLS | MDB_NORDAHEAD;
inline constexpr std::size_t kAddrLen = 16;
inline constexpr std::size_t kPrefixKeyLen = 17;
inline constexpr std::size_t kRangeHeadLen = 33;  // start(16) owner base(16) owner prefix(1)

struct Header {
    std::uint32_t version = kVersion;
    MapId map = MapId::count_;
    std::uint64_t keys = 0;      // entries in `keys`
    std::uint64_t prefixes = 0;  // entries in `prefixes`
    std::uint64_t ranges = 0;    // entries in `ranges`
    std::uint64_t built_ns = 0;  // wall clock at build, ns since the epoch
};

// XXH64 (Yann Collet's public algorithm), streaming: fast enough to check a whole map
// file at memory speed; it guards against accidents, not against someone who can write
// maps.dir (who could publish any map anyway).
class Hasher {
  public:
    explicit Hasher(std::uint64_t seed = 0);
    void update(const void* data, std::size_t len);
    std::uint64_t digest() const;

  private:
    std::uint64_t v_[4];
    std::uint64_t seed_;
    std::uint64_t total_ = 0;
    unsigned char buf_[32];
    std::size_t buffered_ = 0;
};

std::uint64_t hash64(const void* data, std::size_t len, std::uint64_t seed = 0);

// Appends the trailer to a freshly written map file (the builder's last write).
Error append_trailer(const std::string& path);

std::string encode_header(const Header& h);
std::optional<Header> decode_header(std::string_view bytes);

struct Payload {
    std::uint32_t file = 0;
    std::uint32_t line = 0;
    std::string_view value;
};

void append_payload(std::string& out, std::uint32_t file, std::uint32_t line,
                    std::string_view value);
std::optional<Payload> decode_payload(std::string_view bytes);

std::string encode_files(const std::vector<std::string>& files);
std::optional<std::vector<std::string>> decode_files(std::string_view bytes);

std::string prefix_key(const Cidr& c);
Cidr prefix_from_key(std::string_view key);  // key must be kPrefixKeyLen bytes

// "FILE:LINE" (or just FILE when line is 0, as for live edits).
std::string source_text(const std::vector<std::string>& files, const Payload& p);

// A disjoint address range owned by the prefix at `owner` (an index into the input).
struct Range {
    std::array<std::uint8_t, 16> start;
    std::array<std::uint8_t, 16> end;
    std::size_t owner;
};

// Flattens prefixes (no duplicates; CIDR prefixes are either nested or disjoint) into
// disjoint ranges sorted by address, each owned by the longest prefix containing it.
std::vector<Range> flatten(const std::vector<Cidr>& prefixes);

// Which file a generation came from: a new publication is a new inode.
struct FileId {
    dev_t dev = 0;
    ino_t ino = 0;
    std::int64_t mtime_ns = 0;
    std::int64_t size = 0;

    friend bool operator==(const FileId&, const FileId&) = default;
};

// An opened, validated map file. Members are declared env, txn, cursor so that they are
// destroyed cursor, txn, env, as LMDB requires. `txn` is a read-only transaction kept
// reset between lookups (ReadScope renews it).
struct Generation {
    Env env;
    Txn txn;
    Cursor ranges_cursor;  // only for maps with CIDR keys
    MDB_dbi keys = 0;
    MDB_dbi prefixes = 0;
    MDB_dbi ranges = 0;
    bool has_keys = false;
    bool has_cidr = false;
    Header header;
    std::vector<std::string> files;
    FileId id;
    std::string path;
    mutable bool logged_error = false;  // a lookup error is logged once per generation
};

// Opens and validates `path` as a map of kind `expected`. Never maps a file that failed
// a cheap check first (size, LMDB meta pages, last page within the file).
Result<std::unique_ptr<Generation>> open_generation(const std::string& path, MapId expected);

}  // namespace sluice::storage::format
