#include "storage/lmdb.hpp"

#include <cerrno>
#include <cstring>

namespace sluice::storage {

Error lmdb_error(int rc, std::string_view context) {
    Error e;
    e.lmdb_rc = rc;
    switch (rc) {
        case MDB_SUCCESS:
            return {};
        case MDB_NOTFOUND:
        case ENOENT:
            e.code = Errc::not_found;
            break;
        case MDB_INVALID:
        case MDB_CORRUPTED:
        case MDB_PAGE_NOTFOUND:
        case MDB_PANIC:
        case MDB_BAD_TXN:
        case MDB_INCOMPATIBLE:
            e.code = Errc::corrupt;
            break;
        case MDB_VERSION_MISMATCH:
            e.code = Errc::version;
            break;
        case MDB_MAP_FULL:
        case MDB_TXN_FULL:
        case MDB_PAGE_FULL:
        case MDB_MAP_RESIZED:
            e.code = Errc::map_full;
            break;
        case MDB_BAD_VALSIZE:
        case MDB_BAD_DBI:
        case EINVAL:
            e.code = Errc::invalid;
            break;
        case EBUSY:
        case EAGAIN:
            e.code = Errc::busy;
            break;
        default:
            // LMDB passes OS errors through unchanged (positive errno values).
            e.code = rc > 0 ? Errc::io : Errc::other;
            break;
    }
    e.message = std::string(context) + ": " + mdb_strerror(rc);
    return e;
}

Error make_error(Errc code, std::string message) {
    return Error{code, 0, std::move(message)};
}

Error errno_error(int err, std::string_view context) {
    Error e;
    e.code = err == ENOENT ? Errc::not_found : Errc::io;
    e.lmdb_rc = err;
    e.message = std::string(context) + ": " + std::strerror(err);
    return e;
}

Result<Env> Env::open(const std::string& path, const Options& opts) {
    MDB_env* raw = nullptr;
    if (int rc = mdb_env_create(&raw); rc != 0) {
        return lmdb_error(rc, "create environment for " + path);
    }
    Env env(raw);  // closes `raw` on every early return below
    if (opts.map_size != 0) {
        if (int rc = mdb_env_set_mapsize(raw, opts.map_size); rc != 0) {
            return lmdb_error(rc, "set map size of " + path);
        }
    }
    if (opts.max_dbs != 0) {
        if (int rc = mdb_env_set_maxdbs(raw, opts.max_dbs); rc != 0) {
            return lmdb_error(rc, "set max dbs of " + path);
        }
    }
    if (int rc = mdb_env_open(raw, path.c_str(), opts.flags, opts.mode); rc != 0) {
        return lmdb_error(rc, "open " + path);
    }
    return env;
}

Env& Env::operator=(Env&& o) noexcept {
    if (this != &o) {
        if (env_ != nullptr) {
            mdb_env_close(env_);
        }
        env_ = std::exchange(o.env_, nullptr);
    }
    return *this;
}

Env::~Env() {
    if (env_ != nullptr) {
        mdb_env_close(env_);
    }
}

Result<Txn> Txn::begin(const Env& env, unsigned flags) {
    Txn t;
    if (int rc = mdb_txn_begin(env.get(), nullptr, flags, &t.txn_); rc != 0) {
        t.txn_ = nullptr;
        return lmdb_error(rc, "begin transaction");
    }
    t.read_only_ = (flags & MDB_RDONLY) != 0;
    return t;
}

Txn& Txn::operator=(Txn&& o) noexcept {
    if (this != &o) {
        abort();
        txn_ = std::exchange(o.txn_, nullptr);
        read_only_ = o.read_only_;
        reset_ = o.reset_;
    }
    return *this;
}

Error Txn::commit() {
    if (txn_ == nullptr) {
        return make_error(Errc::invalid, "commit: no transaction");
    }
    // mdb_txn_commit frees the handle even when it fails.
    int rc = mdb_txn_commit(std::exchange(txn_, nullptr));
    return lmdb_error(rc, "commit");
}

void Txn::abort() {
    if (txn_ != nullptr) {
        mdb_txn_abort(std::exchange(txn_, nullptr));
    }
}

void Txn::reset() {
    if (txn_ != nullptr && read_only_ && !reset_) {
        mdb_txn_reset(txn_);
        reset_ = true;
    }
}

Error Txn::renew() {
    if (txn_ == nullptr || !read_only_) {
        return make_error(Errc::invalid, "renew: no read-only transaction");
    }
    if (!reset_) {
        return {};
    }
    if (int rc = mdb_txn_renew(txn_); rc != 0) {
        return lmdb_error(rc, "renew read transaction");
    }
    reset_ = false;
    return {};
}

Result<MDB_dbi> Txn::open_db(const char* name, unsigned flags) {
    MDB_dbi dbi = 0;
    if (int rc = mdb_dbi_open(txn_, name, flags, &dbi); rc != 0) {
        return lmdb_error(rc, std::string("open database ") + (name ? name : "(main)"));
    }
    return dbi;
}

Result<Cursor> Cursor::open(const Txn& txn, MDB_dbi dbi) {
    Cursor c;
    if (int rc = mdb_cursor_open(txn.get(), dbi, &c.cur_); rc != 0) {
        c.cur_ = nullptr;
        return lmdb_error(rc, "open cursor");
    }
    return c;
}

Cursor& Cursor::operator=(Cursor&& o) noexcept {
    if (this != &o) {
        if (cur_ != nullptr) {
            mdb_cursor_close(cur_);
        }
        cur_ = std::exchange(o.cur_, nullptr);
    }
    return *this;
}

Cursor::~Cursor() {
    if (cur_ != nullptr) {
        mdb_cursor_close(cur_);
    }
}

Error Cursor::renew(const Txn& txn) {
    if (int rc = mdb_cursor_renew(txn.get(), cur_); rc != 0) {
        return lmdb_error(rc, "renew cursor");
    }
    return {};
}

}  // namespace sluice::storage
