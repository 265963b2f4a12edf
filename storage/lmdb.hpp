#pragma once
// Thin RAII over the LMDB C API, and the one place where LMDB's return codes become ours.
//
// What it promises:
// - `Env`, `Txn` and `Cursor` own their handle and free it exactly once; they move but never
//   copy. A `Txn` aborts in its destructor unless it was committed.
// - Every LMDB failure comes back as an `Error` value (never an exception, never errno
//   lying around), made by `lmdb_error`, which also says what we were doing.
// - `ReadScope` renews a reset read-only transaction and resets it again at scope exit:
//   read transactions are never held across lookups (a held snapshot pins pages and, with
//   a lock file, blocks a writer's reuse of them).
//
// What it trusts: its callers to destroy cursors before their transaction and
// transactions before their environment (members declared env, txn, cursor in that order).

#include <lmdb.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace sluice::storage {

enum class Errc : std::uint8_t {
    ok,
    not_found,  // no such key / file
    corrupt,    // the file is not a valid map (bad magic, truncated, counts disagree)
    version,    // LMDB or our format version mismatch
    map_full,   // the build ran out of map space (the builder retries larger)
    invalid,    // bad argument (key too long, unknown map, bad entry)
    io,         // an OS error (open, read, fsync, rename...)
    busy,       // another editor holds the map's edit lock
    other,
};

struct Error {
    Errc code = Errc::ok;
    int lmdb_rc = 0;  // the LMDB or errno code behind it, 0 if none
    std::string message;

    bool ok() const { return code == Errc::ok; }
};

// The one function that turns an LMDB return code (or an errno, which LMDB passes through)
// into our error; `context` says what was being done ("open /x/y.mdb").
Error lmdb_error(int rc, std::string_view context);
// An error of our own (no LMDB code behind it).
Error make_error(Errc code, std::string message);
// An errno from a plain system call.
Error errno_error(int err, std::string_view context);

// A value or an error. Small on purpose: C++20 has no std::expected.
template <class T>
class Result {
  public:
    Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
    Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

    bool ok() const { return std::holds_alternative<T>(v_); }
    T& value() { return std::get<T>(v_); }
    const T& value() const { return std::get<T>(v_); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() { return value(); }
    const Error& error() const { return std::get<Error>(v_); }

  private:
    std::variant<T, Error> v_;
};

inline MDB_val to_val(std::string_view s) {
    return MDB_val{s.size(), const_cast<char*>(s.data())};
}
inline std::string_view from_val(const MDB_val& v) {
    return {static_cast<const char*>(v.mv_data), v.mv_size};
}

class Env {
  public:
    struct Options {
        unsigned flags = 0;        // MDB_* environment flags
        std::size_t map_size = 0;  // 0: LMDB's idea (for a reader: the size the file says)
        unsigned max_dbs = 0;
        unsigned mode = 0644;
    };

    static Result<Env> open(const std::string& path, const Options& opts);

    Env() = default;
    Env(Env&& o) noexcept : env_(std::exchange(o.env_, nullptr)) {}
    Env& operator=(Env&& o) noexcept;
    Env(const Env&) = delete;
    Env& operator=(const Env&) = delete;
    ~Env();

    MDB_env* get() const { return env_; }
    explicit operator bool() const { return env_ != nullptr; }

  private:
    explicit Env(MDB_env* env) : env_(env) {}
    MDB_env* env_ = nullptr;
};

class Txn {
  public:
    static Result<Txn> begin(const Env& env, unsigned flags);

    Txn() = default;
    Txn(Txn&& o) noexcept
        : txn_(std::exchange(o.txn_, nullptr)), read_only_(o.read_only_), reset_(o.reset_) {}
    Txn& operator=(Txn&& o) noexcept;
    Txn(const Txn&) = delete;
    Txn& operator=(const Txn&) = delete;
    ~Txn() { abort(); }

    // Commits (write transactions); the handle is gone afterwards whatever the outcome.
    Error commit();
    void abort();
    // Read-only transactions only: release the snapshot but keep the handle for renew().
    void reset();
    Error renew();

    Result<MDB_dbi> open_db(const char* name, unsigned flags);

    MDB_txn* get() const { return txn_; }
    explicit operator bool() const { return txn_ != nullptr; }
    bool is_reset() const { return reset_; }

  private:
    MDB_txn* txn_ = nullptr;
    bool read_only_ = false;
    bool reset_ = false;
};

// A cursor on a read-only transaction (it outlives reset/renew of its transaction and is
// renewed with it). Cursors of write transactions are not wrapped: LMDB frees those itself.
class Cursor {
  public:
    static Result<Cursor> open(const Txn& txn, MDB_dbi dbi);

    Cursor() = default;
    Cursor(Cursor&& o) noexcept : cur_(std::exchange(o.cur_, nullptr)) {}
    Cursor& operator=(Cursor&& o) noexcept;
    Cursor(const Cursor&) = delete;
    Cursor& operator=(const Cursor&) = delete;
    ~Cursor();

    Error renew(const Txn& txn);
    MDB_cursor* get() const { return cur_; }
    explicit operator bool() const { return cur_ != nullptr; }

  private:
    MDB_cursor* cur_ = nullptr;
};

// Renews a reset read-only transaction for the length of one lookup.
class ReadScope {
  public:
    explicit ReadScope(Txn& txn) : txn_(txn), error_(txn.renew()) {}
    ReadScope(const ReadScope&) = delete;
    ReadScope& operator=(const ReadScope&) = delete;
    ~ReadScope() { txn_.reset(); }

    const Error& error() const { return error_; }

  private:
    Txn& txn_;
    Error error_;
};

}  // namespace sluice::storage
