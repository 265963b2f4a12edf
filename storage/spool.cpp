#include "storage/spool.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "common/ascii.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"

namespace sluice::storage {

namespace sf = spool_format;

ssize_t SpoolIo::pwritev(int fd, const iovec* iov, int count, off_t offset) {
    return ::pwritev(fd, iov, count, offset);
}

int SpoolIo::fdatasync(int fd) {
    return ::fdatasync(fd);
}

int SpoolIo::ftruncate(int fd, off_t length) {
    return ::ftruncate(fd, length);
}

int SpoolIo::open(const char* path, int flags, mode_t mode) {
    return ::open(path, flags, mode);
}

int SpoolIo::fallocate(int fd, off_t length) {
    int e = ::posix_fallocate(fd, 0, length);
    if (e != 0) {
        errno = e;
        return -1;
    }
    return 0;
}

const char* to_string(SpoolState s) {
    for (const auto& row : kSpoolStates) {
        if (row.state == s) {
            return row.name;
        }
    }
    return "?";
}

std::size_t QueueEntry::live_recipients() const {
    return static_cast<std::size_t>(std::count_if(
        recipients.begin(), recipients.end(), [](const auto& r) { return !is_final(r.state); }));
}

namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr std::uint64_t kNoSegment = 0;            // segment numbers start at 1
constexpr std::size_t kMaxRecordsPerBatch = 8192;  // outcome records ride along, bounded
// After a failed batch, outcome records wait, and a failing disk is probed, after a back-off
// that doubles from kRetryBackoff to kMaxBackoff: a disk that stays broken costs a few
// writes a minute, never a loop.
constexpr Millis kRetryBackoff{250};
constexpr Millis kMaxBackoff{30'000};
constexpr std::size_t kProbeBytes = 4096;          // a failing disk's probe: one block
constexpr Millis kStatInterval{100};               // free-space refresh while busy
constexpr Millis kIdleWake{1000};                  // ... and while idle
constexpr std::uint64_t kMinLimitRotate = 64 * 1024;  // see append(): over spool.max_size
constexpr std::size_t kReadChunk = 4u << 20;       // recovery and big-file I/O
// SpoolOptions::zero_ahead: an fdatasync of data written into blocks that already exist
// flushes the data alone, while an append must also write the new size and block
// allocation (file system metadata): on this project's ext4 VM about half the time and CPU
// per fdatasync (bench/fdatasync_probe.py). A zero-filled tail fails the record CRC, so
// recovery sees the end of the records there, exactly as at the end of the file.
constexpr std::size_t kZeroChunk = 1u << 20;
char g_zeros[kZeroChunk];  // .bss: costs no memory until read

// True when [from, to) of the file holds only zero bytes (a zero-filled tail).
bool all_zero(int fd, std::uint64_t from, std::uint64_t to) {
    std::string buf;
    for (std::uint64_t off = from; off < to;) {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kZeroChunk, to - off));
        buf.resize(n);
        ssize_t r = ::pread(fd, buf.data(), n, static_cast<off_t>(off));
        if (r <= 0) {
            return false;
        }
        if (std::memcmp(buf.data(), g_zeros, static_cast<std::size_t>(r)) != 0) {
            return false;
        }
        off += static_cast<std::uint64_t>(r);
    }
    return true;
}

bool is_no_space(int err) {
    return err == ENOSPC || err == EDQUOT;
}

CommitStatus status_of(int err) {
    return is_no_space(err) ? CommitStatus::no_space : CommitStatus::io_error;
}

std::string_view domain_of(std::string_view addr) {
    auto at = addr.rfind('@');
    return at == std::string_view::npos ? std::string_view{} : addr.substr(at + 1);
}

// pread until `n` bytes or EOF/error. Returns bytes read or -1.
ssize_t pread_full(int fd, char* p, std::size_t n, off_t off) {
    std::size_t got = 0;
    while (got < n) {
        ssize_t r = ::pread(fd, p + got, n - got, off + static_cast<off_t>(got));
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (r == 0) {
            break;
        }
        got += static_cast<std::size_t>(r);
    }
    return static_cast<ssize_t>(got);
}

// Writes every byte of `iov` at `off` through `io` (partial writes continue; IOV_MAX
// respected). Returns 0 or an errno.
int pwritev_all(SpoolIo& io, int fd, std::vector<iovec> iov, off_t off) {
    std::size_t i = 0;
    while (i < iov.size()) {
        int n = static_cast<int>(std::min<std::size_t>(iov.size() - i, IOV_MAX));
        ssize_t w = io.pwritev(fd, iov.data() + i, n, off);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        if (w == 0) {
            return EIO;
        }
        off += w;
        auto left = static_cast<std::size_t>(w);
        while (i < iov.size() && left >= iov[i].iov_len) {
            left -= iov[i].iov_len;
            ++i;
        }
        if (left > 0) {
            iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
            iov[i].iov_len -= left;
        }
    }
    return 0;
}

// Completion of one operator action that may span several records.
struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    std::size_t remaining = 0;
    Error error;

    void finish(const Error& e) {
        std::lock_guard lk(mu);
        if (!e.ok() && error.ok()) {
            error = e;
        }
        if (--remaining == 0) {
            cv.notify_all();
        }
    }
    Error wait() {
        std::unique_lock lk(mu);
        cv.wait(lk, [&] { return remaining == 0; });
        return error;
    }
};

}  // namespace

struct Spool::Impl {
    // ---- what travels from the submitters to the writer ----
    struct Item {
        enum class Kind : std::uint8_t { message, state, op, barrier };
        Kind kind = Kind::message;
        std::unique_ptr<Message> msg;  // message
        Done done;
        sf::DataRef data;                      // message: set (external) by the big writer
        sf::StateRecord state;                 // state
        sf::OpRecord op;                       // op
        std::uint64_t cancel_of = kNoSegment;  // op cancel: the segment the failed batch was in
        std::shared_ptr<Waiter> waiter;        // operator actions
        SteadyClock::time_point queued;
        // Set while a batch is written.
        std::uint64_t off = 0;  // where its record starts
        std::uint32_t len = 0;  // its record's body length
        bool skip = false;      // refused before the write (no space)

        bool urgent() const { return kind == Kind::message || waiter != nullptr; }
        bool writes() const { return !skip && kind != Kind::barrier; }
    };

    // ---- the in-memory index ----
    struct Live {
        QueueEntry entry;
        std::uint64_t seg = kNoSegment;  // where the message record is
        std::uint64_t off = 0;
        std::uint32_t len = 0;  // record body length
        sf::DataRef data;
        std::vector<std::uint64_t> rcpt_seg;  // segment of each recipient's latest state record
        std::uint64_t flag_seg = kNoSegment;  // segment of the latest hold/release record
    };

    struct Segment {
        std::shared_ptr<Fd> fd;
        std::uint64_t size = 0;
        std::uint32_t live = 0;  // live messages whose record is here
        std::uint32_t pins = 0;  // latest-state records here that a surviving message needs
        // Segments holding the final records of this segment's finished messages: they must
        // outlive this one (else a replay would find the message without its outcome).
        std::vector<std::uint64_t> final_pins;
        bool sealed = false;         // no longer written
        std::uint32_t inflight = 0;  // batches written here, not yet durable or failed
        // A batch here failed (write_mu): every later batch here fails too (after a failed
        // fdatasync the kernel may report later ones ok without the earlier data on disk).
        bool poisoned = false;
        bool cut_clean = false;  // the poisoned tail was cut off durably
        int poison_errno = 0;
    };

    // A written batch on its way through fdatasync. Finalized strictly in `seq` order.
    struct Job {
        std::uint64_t seq = 0;
        std::uint64_t seg = kNoSegment;
        std::uint64_t start = 0;
        std::uint64_t end = 0;
        std::shared_ptr<Fd> fd;
        std::vector<Item> batch;
        std::size_t records = 0;
        int err = 0;        // write or fdatasync errno
        bool done = false;  // pipe_mu: durable or failed
        bool cut_in_place = false;  // a write out of space, already cut off by the writer
    };

    SpoolOptions opts;
    std::shared_ptr<SpoolIo> io;
    std::string big_dir;
    Fd lock_fd;
    Fd dir_fd;
    Fd big_dir_fd;

    // Submission queue (q_mu).
    std::mutex q_mu;
    std::condition_variable q_cv;
    std::deque<Item> queue;
    std::size_t urgent = 0;
    // The writer sleeps on q_cv (q_mu): only then does a submitter pay for a wake-up. While
    // it writes or syncs, what arrives simply joins the next batch.
    bool writer_waiting = false;
    std::size_t urgent_msgs = 0;             // messages among the urgent items
    SteadyClock::time_point urgent_since{};  // when the oldest urgent item was queued
    std::atomic<std::int64_t> expected{0};   // expect(): transactions on their way
    SteadyClock::time_point retry_not_before{};
    bool stopping = false;
    bool closed = false;
    std::thread writer;

    // Large messages (big_mu).
    std::mutex big_mu;
    std::condition_variable big_cv;
    std::deque<Item> big_queue;
    bool big_stopping = false;
    std::thread big_writer;
    std::uint64_t next_big = 1;  // big writer thread only (after open)

    // Index and segments (index_mu).
    mutable std::mutex index_mu;
    std::unordered_map<QueueId, Live> index;
    std::map<std::uint64_t, Segment> segs;
    std::set<std::uint64_t> reclaim_candidates;
    std::vector<std::uint64_t> big_to_unlink;

    // The writer's segment (write_mu: the writer appends, a finalizer cuts a failed tail).
    std::mutex write_mu;
    std::uint64_t active = kNoSegment;
    std::uint64_t active_end = 0;  // where the next batch goes
    std::uint64_t zeroed_end = 0;  // the active segment is zero-filled up to here
    bool active_broken = false;    // a write failed here: rotate before the next batch
    std::uint64_t next_seg = 1;
    std::uint64_t next_job = 1;

    // The pipeline (pipe_mu): up to `syncs_in_flight` batches between write and finalize.
    std::mutex pipe_mu;
    std::condition_variable pipe_cv;
    std::deque<std::shared_ptr<Job>> jobs;     // written, in order, not finalized
    std::deque<std::shared_ptr<Job>> to_sync;  // waiting for a sync thread
    bool sync_stopping = false;
    std::vector<std::thread> syncers;
    std::mutex finalize_mu;  // one finalizer at a time, in order

    std::atomic<std::int64_t> last_stat_ns{0};

    // Disk state (see spool.hpp): ok, full or failing; `low` is computed by state().
    std::atomic<SpoolState> hard{SpoolState::ok};
    // Whether admission last saw the soft limits (min_free, max_size) reached: `low` is
    // derived, not set by a failure, so its changes are logged where they are seen.
    mutable std::atomic<bool> soft_low{false};
    std::atomic<std::int64_t> backoff_ms{kRetryBackoff.count()};  // next failure's back-off
    std::atomic<std::int64_t> probe_at_ns{0};  // failing: when the writer probes the disk
    // DIR/reserve (state_mu): space held back for outcome records on a full disk.
    std::mutex state_mu;
    Fd reserve_fd;
    std::atomic<std::uint64_t> reserve_have{0};

    // Read anywhere.
    std::atomic<std::uint64_t> used_bytes{0};
    std::atomic<std::uint64_t> free_bytes{UINT64_MAX};
    std::atomic<std::uint64_t> live_count{0};
    std::atomic<std::uint64_t> n_commit_ns{0};
    std::atomic<std::uint64_t> n_committed{0}, n_failed{0}, n_batches{0}, n_fsyncs{0}, n_records{0},
        n_recovered{0}, n_torn{0}, n_write_errors{0};

    // ------------------------------------------------------------------ setup

    Error open_dirs() {
        for (const std::string& d : {opts.dir, big_dir}) {
            if (::mkdir(d.c_str(), 0750) == 0) {
                // A new directory's name must be durable before anything in it is.
                std::string parent = d.substr(0, d.find_last_of('/') + 1);
                Fd pfd(::open(parent.empty() ? "." : parent.c_str(),
                              O_RDONLY | O_DIRECTORY | O_CLOEXEC));
                if (!pfd.valid() || ::fsync(pfd.get()) != 0) {
                    return errno_error(errno, "sync the directory holding " + d);
                }
            } else if (errno != EEXIST) {
                return errno_error(errno, "create " + d);
            }
        }
        lock_fd.reset(::open((opts.dir + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640));
        if (!lock_fd.valid()) {
            return errno_error(errno, "open " + opts.dir + "/lock");
        }
        if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
            if (errno == EWOULDBLOCK) {
                return make_error(Errc::busy,
                                  "spool " + opts.dir + " is in use by another process");
            }
            return errno_error(errno, "lock " + opts.dir);
        }
        dir_fd.reset(::open(opts.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!dir_fd.valid()) {
            return errno_error(errno, "open " + opts.dir);
        }
        big_dir_fd.reset(::open(big_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!big_dir_fd.valid()) {
            return errno_error(errno, "open " + big_dir);
        }
        return {};
    }

    std::string seg_path(std::uint64_t s) const { return opts.dir + "/" + sf::segment_name(s); }
    std::string big_path(std::uint64_t b) const { return big_dir + "/" + sf::big_name(b); }

    int sync_dir(int fd) {
        ++n_fsyncs;
        return ::fsync(fd) == 0 ? 0 : errno;
    }

    void refresh_free_space() {
        struct statvfs st {};
        if (::fstatvfs(dir_fd.get(), &st) == 0) {
            free_bytes = static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
        }
        last_stat_ns = SteadyClock::now().time_since_epoch().count();
    }

    bool stat_due() const {
        auto last = SteadyClock::time_point(SteadyClock::duration(last_stat_ns.load()));
        return SteadyClock::now() - last >= kStatInterval;
    }

    // ------------------------------------------------------------ disk state, reserve

    static std::int64_t now_ns() { return SteadyClock::now().time_since_epoch().count(); }

    // Space is short: new mail is refused (admission), so only outcome records can free it.
    bool short_of_space() const {
        return hard.load() != SpoolState::ok ||
               (opts.max_bytes != 0 && used_bytes.load() >= opts.max_bytes) ||
               free_bytes.load() < opts.min_free_bytes;
    }

    // Every change of the disk state passes here: one log line per change, never one per
    // failure. `err` is the errno that caused it (0: `why` says it).
    void change_state(SpoolState to, int err, std::string_view why) {
        if (to == SpoolState::ok) {
            backoff_ms = kRetryBackoff.count();
        }
        SpoolState was = hard.exchange(to);
        if (was == to) {
            return;
        }
        LogLine line(to == SpoolState::ok ? Level::info : Level::error, "spool_state");
        line.kv("state", to_string(to)).kv("was", to_string(was));
        if (err != 0) {
            line.kv("error", std::strerror(err)).kv("where", why);
        } else {
            line.kv("why", why);
        }
        line.kv("free", free_bytes.load()).kv("reserve", reserve_have.load());
    }

    // One log line when admission starts or stops refusing for the soft limits (the
    // `low` state; README "When the spool's disk fills").
    void note_low(bool low, std::string_view why) const {
        if (soft_low.exchange(low) == low) {
            return;
        }
        LogLine line(low ? Level::warn : Level::info, "spool_state");
        line.kv("state", low ? to_string(SpoolState::low) : to_string(SpoolState::ok))
            .kv("was", low ? to_string(SpoolState::ok) : to_string(SpoolState::low))
            .kv("why", why)
            .kv("free", free_bytes.load())
            .kv("reserve", reserve_have.load());
    }

    // The disk failed with `err` (ENOSPC/EDQUOT: full; anything else: failing).
    // `failed_call`: a system call failed (counted), not a message that no longer fits.
    void disk_error(int err, std::string_view where, bool failed_call = true) {
        n_write_errors += failed_call ? 1 : 0;
        probe_at_ns = now_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     Millis(backoff_ms.load())).count();
        change_state(is_no_space(err) ? SpoolState::full : SpoolState::failing, err, where);
    }

    std::string reserve_path() const { return opts.dir + "/reserve"; }

    // state_mu held. Makes DIR/reserve hold reserve_bytes, durably. False when the disk
    // cannot (the state says why); what could be allocated is kept.
    bool fill_reserve() {
        if (!reserve_fd.valid()) {
            int fd = io->open(reserve_path().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
            if (fd < 0) {
                disk_error(errno, "create " + reserve_path());
                return false;
            }
            reserve_fd.reset(fd);
        }
        struct stat st {};
        if (::fstat(reserve_fd.get(), &st) == 0) {
            reserve_have = static_cast<std::uint64_t>(st.st_size);
        }
        if (reserve_have.load() >= opts.reserve_bytes) {
            return true;
        }
        ++n_fsyncs;
        if (io->fallocate(reserve_fd.get(), static_cast<off_t>(opts.reserve_bytes)) != 0 ||
            io->fdatasync(reserve_fd.get()) != 0) {
            int e = errno;
            if (::fstat(reserve_fd.get(), &st) == 0) {
                reserve_have = static_cast<std::uint64_t>(st.st_size);
            }
            disk_error(e, "allocate " + reserve_path());
            return false;
        }
        reserve_have = opts.reserve_bytes;
        return true;
    }

    // Gives the reserve back to the file system, for the outcome records of a full disk.
    void release_reserve() {
        std::lock_guard lk(state_mu);
        std::uint64_t had = reserve_have.load();
        if (had == 0 || !reserve_fd.valid()) {
            return;
        }
        // The blocks are free once the truncation is committed (some file systems only
        // reuse freed blocks after their journal commit: the fdatasync forces it).
        ++n_fsyncs;
        if (io->ftruncate(reserve_fd.get(), 0) != 0 || io->fdatasync(reserve_fd.get()) != 0) {
            LogLine(Level::error, "spool_reserve_release_failed")
                .kv("file", reserve_path())
                .kv("error", std::strerror(errno));
        }
        struct stat st {};
        reserve_have = ::fstat(reserve_fd.get(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size)
                                                           : 0;
        LogLine(Level::warn, "spool_reserve_released")
            .kv("bytes", had - reserve_have.load())
            .kv("free", free_bytes.load());
        refresh_free_space();
    }

    // A failing disk's probe: one block rewritten in place in DIR/reserve and fdatasync'd
    // (no new allocation while the reserve holds it). True when the disk writes again.
    bool probe() {
        std::lock_guard lk(state_mu);
        if (!reserve_fd.valid()) {
            int fd = io->open(reserve_path().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
            if (fd < 0) {
                disk_error(errno, "probe " + reserve_path());
                return false;
            }
            reserve_fd.reset(fd);
        }
        iovec v{g_zeros, kProbeBytes};
        ++n_fsyncs;
        if (pwritev_all(*io, reserve_fd.get(), {v}, 0) != 0 ||
            io->fdatasync(reserve_fd.get()) != 0) {
            disk_error(errno, "probe " + reserve_path());
            return false;
        }
        reserve_have = std::max<std::uint64_t>(reserve_have.load(), kProbeBytes);
        return true;
    }

    // Writer thread: refreshes the free space and leaves a full or failing state when the
    // disk allows. A full spool resumes once the free space covers min_free_bytes, the
    // reserve refilled, and as much again as the reserve (so that it does not flap in and
    // out of the state with every message); a failing one once a probe succeeds (then as
    // a full one, if space is short).
    void look() {
        refresh_free_space();
        SpoolState h = hard.load();
        if (h == SpoolState::ok) {
            return;
        }
        if (h == SpoolState::failing) {
            if (now_ns() < probe_at_ns.load()) {
                return;
            }
            if (!probe()) {
                backoff_ms = std::min<std::int64_t>(backoff_ms.load() * 2, kMaxBackoff.count());
                probe_at_ns = now_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             Millis(backoff_ms.load())).count();
                return;
            }
        }
        std::lock_guard lk(state_mu);
        std::uint64_t have = reserve_have.load();
        std::uint64_t need = opts.reserve_bytes > have ? opts.reserve_bytes - have : 0;
        if (free_bytes.load() < opts.min_free_bytes + need + opts.reserve_bytes) {
            if (h == SpoolState::failing) {
                change_state(SpoolState::full, 0, "probe ok, space short");
            }
            return;
        }
        if (!fill_reserve()) {
            return;
        }
        refresh_free_space();
        change_state(SpoolState::ok, 0, h == SpoolState::failing ? "probe ok" : "space back");
    }

    // ------------------------------------------------- index bookkeeping (index_mu)

    void pin(Live& l, std::uint64_t& slot, std::uint64_t seg) {
        if (slot == seg) {
            return;
        }
        if (slot != kNoSegment && slot != l.seg) {
            unpin(slot);
        }
        slot = seg;
        if (seg != l.seg) {
            ++segs[seg].pins;  // a record in the message's own segment dies with it
        }
    }

    void unpin(std::uint64_t seg) {
        auto it = segs.find(seg);
        if (it != segs.end() && it->second.pins > 0) {
            --it->second.pins;
            reclaim_candidates.insert(seg);
        }
    }

    void add_message(sf::MessageRecord&& rec, std::uint64_t seg, std::uint64_t off,
                     std::uint32_t len) {
        if (index.count(rec.msg.id) != 0) {
            LogLine(Level::error, "spool_duplicate_id").kv("id", rec.msg.id).kv("segment", seg);
            return;
        }
        Live l;
        l.seg = seg;
        l.off = off;
        l.len = len;
        l.data = rec.data;
        QueueEntry& e = l.entry;
        Message& m = rec.msg;
        e.id = m.id;
        e.sender = std::move(m.sender);
        e.client = std::move(m.client);
        e.helo = std::move(m.helo);
        e.listener = std::move(m.listener);
        e.auth_user = std::move(m.auth_user);
        e.received_at = m.received_at;
        e.size = rec.data.size;
        e.recipients.reserve(m.recipients.size());
        for (auto& r : m.recipients) {
            RecipientStatus s;
            s.rcpt = std::move(r);
            s.next_attempt = m.received_at;
            e.recipients.push_back(std::move(s));
        }
        l.rcpt_seg.assign(e.recipients.size(), kNoSegment);
        ++segs[seg].live;
        bool done = e.recipients.empty();
        auto [it, _] = index.emplace(m.id, std::move(l));
        ++live_count;
        if (done) {
            finish(it);
        }
    }

    // Returns false when the record does not apply (unknown id, bad index, final recipient).
    bool apply_state(const sf::StateRecord& r, std::uint64_t seg) {
        auto it = index.find(r.id);
        if (it == index.end() || r.rcpt >= it->second.entry.recipients.size()) {
            return false;
        }
        Live& l = it->second;
        RecipientStatus& s = l.entry.recipients[r.rcpt];
        if (is_final(s.state)) {
            return false;  // final states are sticky, at run time and on replay alike
        }
        s.state = r.state;
        s.attempts = r.attempts;
        s.next_attempt = r.next_attempt;
        s.reason = r.reason;
        pin(l, l.rcpt_seg[r.rcpt], seg);
        if (l.entry.live_recipients() == 0) {
            finish(it);
        }
        return true;
    }

    bool apply_op(const sf::OpRecord& op, std::uint64_t seg) {
        auto it = index.find(op.id);
        if (it == index.end()) {
            return false;
        }
        Live& l = it->second;
        switch (op.type) {
            case sf::RecordType::hold:
            case sf::RecordType::release:
                l.entry.held = op.type == sf::RecordType::hold;
                pin(l, l.flag_seg, seg);
                return true;
            case sf::RecordType::remove:
            case sf::RecordType::cancel:
                for (auto& r : l.entry.recipients) {
                    if (!is_final(r.state)) {
                        r.state = RcptState::removed;
                        r.reason = op.type == sf::RecordType::cancel ? "commit failed"
                                                                     : "removed by operator";
                    }
                }
                pin(l, l.flag_seg, seg);
                finish(it);
                return true;
            default:
                return false;
        }
    }

    // Every recipient is final: the message leaves the index. The segments holding its
    // final records stay pinned until its own segment is gone.
    void finish(std::unordered_map<QueueId, Live>::iterator it) {
        Live& l = it->second;
        Segment& home = segs[l.seg];
        --home.live;
        for (std::uint64_t s : l.rcpt_seg) {
            if (s != kNoSegment && s != l.seg) {
                home.final_pins.push_back(s);
            }
        }
        if (l.flag_seg != kNoSegment && l.flag_seg != l.seg) {
            home.final_pins.push_back(l.flag_seg);
        }
        if (l.data.external) {
            big_to_unlink.push_back(l.data.big_seq);
            used_bytes -= std::min<std::uint64_t>(used_bytes, l.data.size);
        }
        reclaim_candidates.insert(l.seg);
        index.erase(it);
        --live_count;
    }

    // Deletes segments nothing needs any more, in rounds: a segment's unlink is made
    // durable (directory fsync) before the segments it pinned may go.
    void reclaim() {
        std::vector<std::uint64_t> big;
        {
            std::lock_guard lk(index_mu);
            big.swap(big_to_unlink);
        }
        for (std::uint64_t b : big) {
            ::unlink(big_path(b).c_str());
        }
        while (true) {
            seal_if_drained();
            std::vector<std::uint64_t> gone;
            {
                std::lock_guard lk(index_mu);
                for (std::uint64_t s : reclaim_candidates) {
                    auto it = segs.find(s);
                    if (it != segs.end() && it->second.sealed && it->second.live == 0 &&
                        it->second.pins == 0 && it->second.inflight == 0) {
                        gone.push_back(s);
                    }
                }
                reclaim_candidates.clear();
            }
            if (gone.empty()) {
                break;
            }
            for (std::uint64_t s : gone) {
                ::unlink(seg_path(s).c_str());
            }
            sync_dir(dir_fd.get());
            std::lock_guard lk(index_mu);
            for (std::uint64_t s : gone) {
                auto it = segs.find(s);
                used_bytes -= std::min<std::uint64_t>(used_bytes, it->second.size);
                std::vector<std::uint64_t> pins = std::move(it->second.final_pins);
                segs.erase(it);
                for (std::uint64_t p : pins) {
                    unpin(p);
                }
            }
        }
    }

    // While space is short (new mail refused), an active segment whose messages are all
    // final is sealed, so that it can be reclaimed: nothing else would ever seal it, as
    // only mail fills a segment to segment_bytes. One that holds only a few outcome records
    // stays (sealing it would only make the next records open a new file).
    void seal_if_drained() {
        if (!short_of_space()) {
            return;
        }
        std::lock_guard wl(write_mu);
        if (active == kNoSegment || active_end < kMinLimitRotate) {
            return;
        }
        std::lock_guard lk(index_mu);
        Segment& a = segs[active];
        if (a.live == 0 && a.pins == 0 && a.inflight == 0) {
            a.sealed = true;
            reclaim_candidates.insert(active);
            active = kNoSegment;
        }
    }

    // ------------------------------------------------------------------ recovery

    Error recover() {
        std::vector<std::uint64_t> seg_nos;
        std::set<std::uint64_t> bigs;
        if (Error e = list_dir(opts.dir,
                               [&](std::string_view n) {
                                   if (auto s = sf::parse_segment_name(n)) {
                                       seg_nos.push_back(*s);
                                   }
                               });
            !e.ok()) {
            return e;
        }
        if (Error e = list_dir(big_dir,
                               [&](std::string_view n) {
                                   if (auto b = sf::parse_big_name(n)) {
                                       bigs.insert(*b);
                                   }
                               });
            !e.ok()) {
            return e;
        }
        std::sort(seg_nos.begin(), seg_nos.end());
        for (std::uint64_t s : seg_nos) {
            if (Error e = replay_segment(s); !e.ok()) {
                return e;
            }
            next_seg = std::max(next_seg, s + 1);
        }
        // Big files: keep those a live message refers to; the rest were never committed
        // (or their message is final).
        std::set<std::uint64_t> wanted;
        for (auto& [id, l] : index) {
            if (l.data.external) {
                wanted.insert(l.data.big_seq);
                struct stat st {};
                if (::stat(big_path(l.data.big_seq).c_str(), &st) != 0 ||
                    static_cast<std::uint64_t>(st.st_size) != l.data.size) {
                    LogLine(Level::error, "spool_big_file_bad")
                        .kv("id", id)
                        .kv("file", big_path(l.data.big_seq));
                }
            }
        }
        for (std::uint64_t b : bigs) {
            next_big = std::max(next_big, b + 1);
            if (wanted.count(b) == 0) {
                ::unlink(big_path(b).c_str());
            }
        }
        big_to_unlink.clear();  // done above
        for (auto& [s, seg] : segs) {
            reclaim_candidates.insert(s);
        }
        n_recovered = live_count.load();
        reclaim();
        // Space in use, counted once everything dead is gone.
        std::uint64_t used = 0;
        for (auto& [n, seg] : segs) {
            used += seg.size;
        }
        for (auto& [id, l] : index) {
            used += l.data.external ? l.data.size : 0;
        }
        used_bytes = used;
        return {};
    }

    template <class F>
    Error list_dir(const std::string& path, F each) {
        DIR* d = ::opendir(path.c_str());
        if (d == nullptr) {
            return errno_error(errno, "read directory " + path);
        }
        while (dirent* e = ::readdir(d)) {
            each(std::string_view(e->d_name));
        }
        ::closedir(d);
        return {};
    }

    // Replays one segment up to its first record that is torn or invalid, and cuts it there.
    Error replay_segment(std::uint64_t s) {
        std::string path = seg_path(s);
        auto fd = std::make_shared<Fd>(::open(path.c_str(), O_RDWR | O_CLOEXEC));
        if (!fd->valid()) {
            return errno_error(errno, "open " + path);
        }
        struct stat st {};
        if (::fstat(fd->get(), &st) != 0) {
            return errno_error(errno, "stat " + path);
        }
        auto size = static_cast<std::uint64_t>(st.st_size);

        std::string buf;  // window [buf_off, buf_off + buf.size())
        std::uint64_t buf_off = 0;
        auto view = [&](std::uint64_t off, std::size_t n, std::string_view& out) -> bool {
            if (off + n > size) {
                return false;
            }
            if (off < buf_off || off + n > buf_off + buf.size()) {
                std::size_t want = std::max<std::size_t>(n, kReadChunk);
                want = static_cast<std::size_t>(std::min<std::uint64_t>(want, size - off));
                buf.resize(want);
                ssize_t r = pread_full(fd->get(), buf.data(), want, static_cast<off_t>(off));
                if (r < static_cast<ssize_t>(n)) {
                    buf.clear();
                    return false;
                }
                buf.resize(static_cast<std::size_t>(r));
                buf_off = off;
            }
            out = std::string_view(buf).substr(off - buf_off, n);
            return true;
        };
        // One record at `off`: its body, or nullopt when torn / invalid.
        auto next = [&](std::uint64_t off, std::string_view& body) -> bool {
            std::string_view h;
            if (!view(off, sf::kHeaderBytes, h)) {
                return false;
            }
            sf::RecordHeader hdr = sf::read_header(h.data());
            if (hdr.len == 0 || hdr.len > sf::kMaxRecordBytes ||
                hdr.len > size - off - sf::kHeaderBytes) {
                return false;
            }
            return view(off + sf::kHeaderBytes, hdr.len, body) && sf::check_crc(hdr, body);
        };

        std::uint64_t off = 0;
        std::string_view body;
        bool header_ok = next(0, body) && sf::decode_segment_header(body) == s;
        if (!header_ok) {
            // Empty: made just before a crash. Otherwise its first write was torn (never
            // acknowledged) or the file is damaged or not ours: set it aside, never guess.
            if (size == 0 || all_zero(fd->get(), 0, size)) {
                ::unlink(path.c_str());
                return {};
            }
            n_torn += size;
            LogLine(Level::error, "spool_segment_set_aside")
                .kv("segment", path)
                .kv("bytes", size)
                .kv("reason", "no valid header")
                .kv("moved_to", path + ".bad");
            if (::rename(path.c_str(), (path + ".bad").c_str()) != 0) {
                return errno_error(errno, "rename " + path);
            }
            return {};
        }
        Segment& seg = segs[s];
        seg.fd = fd;
        seg.sealed = true;
        std::string why;
        {
            off = sf::kHeaderBytes + body.size();
            while (next(off, body)) {
                auto len = static_cast<std::uint32_t>(body.size());
                bool ok = false;
                switch (static_cast<sf::RecordType>(body[0])) {
                    case sf::RecordType::message:
                        if (auto m = sf::decode_message(body, false)) {
                            add_message(std::move(*m), s, off, len);
                            ok = true;
                        }
                        break;
                    case sf::RecordType::state:
                        if (auto st2 = sf::decode_state(body)) {
                            apply_state(*st2, s);
                            ok = true;
                        }
                        break;
                    case sf::RecordType::hold:
                    case sf::RecordType::release:
                    case sf::RecordType::remove:
                    case sf::RecordType::cancel:
                        if (auto op = sf::decode_op(body)) {
                            apply_op(*op, s);
                            ok = true;
                        }
                        break;
                    default:
                        break;
                }
                if (!ok) {
                    why = "undecodable record";
                    break;
                }
                off += sf::kHeaderBytes + len;
            }
        }
        if (off < size) {
            // A torn tail (the batch being written when we stopped: never acknowledged), or
            // damage. Cut it so later appends can never follow garbage. A zero-filled tail
            // is the space made ahead of the records (zero_ahead): cut without a word.
            if (!why.empty() || !all_zero(fd->get(), off, size)) {
                n_torn += size - off;
                LogLine(why.empty() ? Level::warn : Level::error, "spool_segment_cut")
                    .kv("segment", path)
                    .kv("offset", off)
                    .kv("dropped_bytes", size - off)
                    .kv("reason", why.empty() ? "torn tail" : why);
            }
            if (::ftruncate(fd->get(), static_cast<off_t>(off)) != 0 ||
                io->fdatasync(fd->get()) != 0) {
                return errno_error(errno, "truncate " + path);
            }
            ++n_fsyncs;
        }
        seg.size = off;
        return {};
    }

    // ------------------------------------------------------------------ writer
    //
    // One writer thread forms batches and appends them; up to `syncs_in_flight` batches wait
    // in fdatasync at once, on sync threads (on a loaded disk one fdatasync mostly waits,
    // and several in flight are merged by the file system: measured in bench/spool_bench).
    // Batches are finalized strictly in order: the index changes in the order the records
    // are in the files, and a callback never reports a batch before the ones written ahead
    // of it.

    void start() {
        refresh_free_space();
        writer = std::thread([this] {
            pthread_setname_np(pthread_self(), "sluice-spool");
            writer_main();
        });
        big_writer = std::thread([this] {
            pthread_setname_np(pthread_self(), "sluice-spoolbig");
            big_main();
        });
        // One batch in fdatasync at a time: the writer syncs it itself, which saves a
        // thread hand-off (two wake-ups) per batch.
        if (opts.syncs_in_flight > 1) {
            for (std::size_t i = 0; i < opts.syncs_in_flight; ++i) {
                syncers.emplace_back([this] {
                    pthread_setname_np(pthread_self(), "sluice-sync");
                    sync_main();
                });
            }
        }
    }

    // Queues an item for the writer; false (item untouched) once the spool is closing, so
    // that nothing can be queued after close() collected what was left.
    bool enqueue(Item& item) {
        item.queued = SteadyClock::now();
        bool wake = false;
        {
            std::lock_guard lk(q_mu);
            if (stopping) {
                return false;
            }
            // An outcome record only needs the writer to learn its deadline: the first one
            // into an empty queue wakes it, later ones share that deadline. A message wakes
            // a writer waiting for company only when the company is complete.
            if (item.urgent()) {
                bool msg = item.kind == Item::Kind::message;
                wake = writer_waiting &&
                       (urgent == 0 || !msg || urgent_msgs + 1 >= opts.group_target ||
                        expected.load(std::memory_order_relaxed) <= 0);
                if (urgent == 0) {
                    urgent_since = item.queued;
                }
                ++urgent;
                urgent_msgs += msg ? 1 : 0;
            } else {
                wake = writer_waiting && queue.empty();
            }
            queue.push_back(std::move(item));
        }
        if (wake) {
            q_cv.notify_one();
        }
        return true;
    }

    // Waits for work and takes the next batch (FIFO: an outcome record never overtakes the
    // message it is about). Returns false when stopped and drained.
    bool next_batch(std::vector<Item>& batch) {
        bool space_checked = false;
        std::unique_lock lk(q_mu);
        while (true) {
            if (urgent > 0 && !stopping && waits_for_company()) {
                writer_waiting = true;
                q_cv.wait_until(lk, urgent_since + opts.commit_delay);
                writer_waiting = false;
                continue;
            }
            if (urgent > 0 || (stopping && !queue.empty())) {
                break;
            }
            if (stopping) {
                return false;
            }
            if (!space_checked) {
                // Nothing urgent: a moment to make space ahead (write_mu, not under q_mu).
                space_checked = true;
                lk.unlock();
                if (space_runs_low()) {
                    prepare_space();
                }
                lk.lock();
                continue;
            }
            auto now = SteadyClock::now();
            if (!queue.empty()) {
                // Only outcome records: wait a little for company (they are not urgent).
                auto due = std::max(queue.front().queued + opts.state_delay, retry_not_before);
                if (now >= due) {
                    break;
                }
                writer_waiting = true;
                q_cv.wait_until(lk, due);
                writer_waiting = false;
                continue;
            }
            if (stat_due()) {
                lk.unlock();
                look();
                lk.lock();
                continue;
            }
            writer_waiting = true;
            q_cv.wait_for(lk, kIdleWake);
            writer_waiting = false;
        }
        std::size_t msgs = 0;
        std::uint64_t bytes = 0;
        while (!queue.empty() && batch.size() < kMaxRecordsPerBatch) {
            Item& it = queue.front();
            if (it.kind == Item::Kind::message) {
                std::uint64_t b = it.data.external ? 0 : it.msg->data.size();
                if (msgs > 0 && (msgs >= opts.max_batch || bytes + b > opts.max_batch_bytes)) {
                    break;
                }
                ++msgs;
                bytes += b;
            }
            if (it.urgent()) {
                --urgent;
                urgent_msgs -= it.kind == Item::Kind::message ? 1 : 0;
                if (urgent > 0) {
                    urgent_since = it.queued;  // a bound: the next one was queued later
                }
            }
            batch.push_back(std::move(it));
            queue.pop_front();
        }
        return true;
    }

    // q_mu held, urgent items queued: is more company on its way, worth waiting for?
    bool waits_for_company() const {
        return opts.commit_delay.count() > 0 && urgent == urgent_msgs &&
               urgent_msgs < opts.group_target && expected.load(std::memory_order_relaxed) > 0 &&
               SteadyClock::now() < urgent_since + opts.commit_delay;
    }

    void writer_main() {
        std::vector<Item> batch;
        while (true) {
            {
                std::unique_lock lk(pipe_mu);
                pipe_cv.wait(lk, [&] { return jobs.size() < opts.syncs_in_flight; });
            }
            if (!next_batch(batch)) {
                return;
            }
            write_batch(std::move(batch));
            batch.clear();
        }
    }

    // Creates the next segment and makes it the active one (write_mu held). Its header
    // record goes out with the batch. Returns 0 or an errno.
    int open_segment(std::string& header) {
        std::uint64_t s = next_seg++;
        std::string path = seg_path(s);
        auto fd = std::make_shared<Fd>(
            io->open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
        if (!fd->valid()) {
            return errno;
        }
        // The new name must be durable before anything in the file is acknowledged.
        if (int e = sync_dir(dir_fd.get()); e != 0) {
            ::unlink(path.c_str());
            return e;
        }
        header = sf::make_record(sf::encode_segment_header(s));
        std::lock_guard lk(index_mu);
        segs[s].fd = std::move(fd);
        active = s;
        active_end = 0;
        zeroed_end = 0;
        active_broken = false;
        return 0;
    }

    // write_mu held.
    void seal_active() {
        if (active == kNoSegment) {
            return;
        }
        std::lock_guard lk(index_mu);
        segs[active].sealed = true;
        reclaim_candidates.insert(active);
        active = kNoSegment;
    }

    // Messages are refused while some space is still left, so that outcome records (which
    // are what frees space) can always be written, and all of them while the disk is full
    // or failing (they never reach the disk: no new segment, no retry). Marks refused
    // items `skip`. A message that no longer fits puts the spool in the full state.
    void refuse_over_space(std::vector<Item>& batch) {
        std::uint64_t planned = 0;
        std::uint64_t free_now = free_bytes.load();
        std::uint64_t used_now = used_bytes.load();
        for (Item& it : batch) {
            if (it.kind != Item::Kind::message) {
                continue;
            }
            SpoolState h = hard.load();
            if (h != SpoolState::ok) {
                refuse(it, h == SpoolState::full ? CommitStatus::no_space : CommitStatus::io_error);
                continue;
            }
            if (it.data.external) {
                continue;  // its file is written (write_big checked the space)
            }
            std::uint64_t b = it.msg->data.size() + 512;
            bool disk = free_now < planned + b + opts.min_free_bytes / 2;
            // Like admission(): refused once the limit is reached (overshoot: one batch).
            bool limit = opts.max_bytes != 0 && used_now + planned >= opts.max_bytes;
            if (disk && free_now < planned + b) {
                disk_error(ENOSPC, "message of " + std::to_string(b) + " bytes", false);
            }
            if (disk || limit) {
                refuse(it, CommitStatus::no_space);
            } else {
                planned += b;
            }
        }
    }

    void refuse(Item& it, CommitStatus status) {
        it.skip = true;
        ++n_failed;
        if (it.data.external) {
            ::unlink(big_path(it.data.big_seq).c_str());
            used_bytes -= std::min<std::uint64_t>(used_bytes, it.data.size);
        }
        auto done = std::move(it.done);
        done(status, std::move(it.msg));
    }

    // A message or an operator action took the batch while outcome records wait out the
    // back-off of a failed one: they stay queued (a failing disk is not written in a loop
    // because mail keeps arriving; the mail itself was refused above).
    void hold_back_records(std::vector<Item>& batch) {
        if (hard.load() == SpoolState::ok) {
            return;
        }
        std::vector<Item> back;
        {
            std::lock_guard lk(q_mu);
            if (stopping || SteadyClock::now() >= retry_not_before) {
                return;
            }
            for (Item& it : batch) {
                if (it.writes() && !it.urgent()) {
                    it.skip = true;
                    back.push_back(std::move(it));
                    back.back().skip = false;
                }
            }
            for (auto r = back.rbegin(); r != back.rend(); ++r) {
                queue.push_front(std::move(*r));
            }
        }
    }

    // The disk is full: a deferral (not an outcome: a restart would retry sooner, nothing
    // more) changes the index only, so that the space left goes to the records that keep a
    // message from being delivered twice. Operator actions (flush) are still written.
    void defer_in_memory(std::vector<Item>& batch) {
        std::lock_guard lk(index_mu);
        for (Item& it : batch) {
            if (it.skip || it.kind != Item::Kind::state || it.waiter ||
                it.state.state != RcptState::deferred) {
                continue;
            }
            it.skip = true;
            auto e = index.find(it.state.id);
            if (e == index.end() || it.state.rcpt >= e->second.entry.recipients.size()) {
                continue;
            }
            RecipientStatus& r = e->second.entry.recipients[it.state.rcpt];
            if (!is_final(r.state)) {
                r.state = RcptState::deferred;
                r.attempts = it.state.attempts;
                r.next_attempt = it.state.next_attempt;
                r.reason = it.state.reason;
            }
        }
    }

    // Appends one batch with one pwritev and hands it to a sync thread.
    void write_batch(std::vector<Item> batch) {
        if (stat_due()) {
            look();
        }
        refuse_over_space(batch);
        hold_back_records(batch);
        if (hard.load() == SpoolState::full) {
            defer_in_memory(batch);
            // Records on a disk with less left than the reserve: the reserve goes first.
            if (free_bytes.load() < opts.reserve_bytes &&
                std::any_of(batch.begin(), batch.end(), [](const Item& it) { return it.writes(); })) {
                release_reserve();
            }
        }
        auto job = std::make_shared<Job>();
        job->batch = std::move(batch);
        bool writes = std::any_of(job->batch.begin(), job->batch.end(),
                                  [](const Item& it) { return it.writes(); });
        {
            std::lock_guard wl(write_mu);
            job->seq = next_job++;
            if (writes) {
                append(*job);
            } else {
                job->done = true;  // only barriers (or all refused): nothing to make durable
            }
        }
        bool sync = writes && job->err == 0;
        bool here = syncers.empty();
        {
            std::lock_guard lk(pipe_mu);
            jobs.push_back(job);
            if (sync && !here) {
                to_sync.push_back(job);
            } else if (!sync) {
                job->done = true;
            }
        }
        if (sync && here) {
            sync_job(*job);
        } else if (sync) {
            pipe_cv.notify_all();
        } else {
            finalize_ready();
        }
    }

    // write_mu held: encodes the batch and writes it at the end of the active segment.
    void append(Job& job) {
        bool poisoned = false;
        if (active != kNoSegment) {
            std::lock_guard lk(index_mu);
            poisoned = segs[active].poisoned;
        }
        // Over spool.max_size, the active segment is sealed too once it holds a fair part
        // of the limit: only sealed segments are ever reclaimed, so with a limit below
        // segment_bytes the spool would otherwise stay "full" after its queue drained.
        bool over_limit = opts.max_bytes != 0 && used_bytes.load() >= opts.max_bytes &&
                          active_end >= std::max<std::uint64_t>(kMinLimitRotate,
                                                                opts.max_bytes / 8);
        if (active != kNoSegment &&
            (active_broken || poisoned || active_end >= opts.segment_bytes || over_limit)) {
            seal_active();
        }
        std::string seg_header;
        if (active == kNoSegment) {
            if (int e = open_segment(seg_header); e != 0) {
                job.err = e;
                return;
            }
        }
        job.seg = active;
        job.start = active_end;
        {
            std::lock_guard lk(index_mu);
            job.fd = segs[active].fd;
            ++segs[active].inflight;
        }

        // Heads own their bytes; message data is written from the Message itself.
        std::vector<std::string> heads;
        heads.reserve(job.batch.size() + 1);
        std::vector<iovec> iov;
        iov.reserve(job.batch.size() * 2 + 1);
        std::uint64_t off = job.start;
        if (!seg_header.empty()) {
            heads.push_back(std::move(seg_header));
            iov.push_back({heads.back().data(), heads.back().size()});
            off += heads.back().size();
        }
        for (Item& it : job.batch) {
            if (!it.writes()) {
                continue;
            }
            std::string body;
            std::string_view tail;
            switch (it.kind) {
                case Item::Kind::message:
                    if (!it.data.external) {
                        it.data = {false, 0, it.msg->data.size(), 0};
                        tail = it.msg->data;
                    }
                    body = sf::encode_message_head(*it.msg, it.data);
                    break;
                case Item::Kind::state:
                    body = sf::encode_state(it.state);
                    break;
                case Item::Kind::op:
                    body = sf::encode_op(it.op);
                    break;
                case Item::Kind::barrier:
                    break;
            }
            std::string rec = sf::frame(body, tail);
            rec += body;
            it.off = off;
            it.len = static_cast<std::uint32_t>(body.size() + tail.size());
            off += rec.size() + tail.size();
            heads.push_back(std::move(rec));
            iov.push_back({heads.back().data(), heads.back().size()});
            if (!tail.empty()) {
                iov.push_back({const_cast<char*>(tail.data()), tail.size()});
            }
            ++job.records;
        }
        zero_ahead(job.fd->get(), off);
        ++n_batches;
        job.err = pwritev_all(*io, job.fd->get(), std::move(iov), static_cast<off_t>(job.start));
        if (job.err != 0) {
            // Out of space: what the write got to is cut off here and the segment stays in
            // use (nothing before job.start was touched, no fdatasync failed), so a full
            // disk does not cost a new segment per attempt.
            if (is_no_space(job.err) &&
                io->ftruncate(job.fd->get(), static_cast<off_t>(job.start)) == 0) {
                job.cut_in_place = true;
                zeroed_end = job.start;
                if (job.start == 0) {
                    active_end = 0;  // the header goes out again with the next batch
                    std::lock_guard lk(index_mu);
                    segs[active].fd.reset();
                    --segs[active].inflight;
                    segs.erase(active);
                    ::unlink(seg_path(active).c_str());
                    active = kNoSegment;
                    job.seg = kNoSegment;
                }
                return;
            }
            active_broken = true;  // never append after a partial write
            return;
        }
        job.end = off;
        active_end = off;
    }

    // write_mu held: keeps the active segment zero-filled `zero_ahead` beyond `end` (this
    // batch's fdatasync makes the new size durable once; the next ones write into
    // allocated blocks). Normally the writer has done it while idle (prepare_space);
    // this is for a writer that had no idle moment. Best effort: skipped when space is
    // short, and a failure here only costs speed (the batch's own write reports real
    // disk errors).
    void zero_ahead(int fd, std::uint64_t end) {
        if (end <= zeroed_end || opts.zero_ahead == 0) {
            return;
        }
        zero_fill(fd, std::max(zeroed_end, end), end + opts.zero_ahead);
    }

    // write_mu held: zero-fills [from, to) beyond the records and counts it as done.
    // Returns false when it was skipped (space short) or failed.
    bool zero_fill(int fd, std::uint64_t from, std::uint64_t to) {
        zeroed_end = to;
        if (free_bytes.load() < opts.min_free_bytes + 4 * opts.zero_ahead) {
            return false;
        }
        for (std::uint64_t off = from; off < to;) {
            auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kZeroChunk, to - off));
            ssize_t w = ::pwrite(fd, g_zeros, n, static_cast<off_t>(off));
            if (w <= 0) {
                return false;
            }
            off += static_cast<std::uint64_t>(w);
        }
        return true;
    }

    // Writer thread (q_mu not held): less than half of `zero_ahead` is left zero-filled
    // beyond the records of the active segment.
    bool space_runs_low() {
        if (opts.zero_ahead == 0) {
            return false;
        }
        std::lock_guard wl(write_mu);
        return active != kNoSegment && !active_broken &&
               zeroed_end < active_end + opts.zero_ahead / 2;
    }

    // Writer thread, nothing to commit: zero-fills the active segment `zero_ahead` beyond
    // its records and makes that durable now, so that the fdatasyncs of the next batches
    // neither write these pages nor the new size and allocation. Done here, when the
    // writer would wait, the ~1 ms this takes is off the path of a waiting client.
    void prepare_space() {
        std::shared_ptr<Fd> fd;
        {
            std::lock_guard wl(write_mu);
            if (active == kNoSegment || active_broken) {
                return;
            }
            {
                std::lock_guard lk(index_mu);
                fd = segs[active].fd;
            }
            if (!zero_fill(fd->get(), std::max(zeroed_end, active_end),
                           active_end + opts.zero_ahead)) {
                return;
            }
        }
        ++n_fsyncs;
        io->fdatasync(fd->get());  // a failure here shows in the next batch's own fdatasync
    }

    void sync_main() {
        while (true) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock lk(pipe_mu);
                pipe_cv.wait(lk, [&] { return sync_stopping || !to_sync.empty(); });
                if (to_sync.empty()) {
                    return;
                }
                job = std::move(to_sync.front());
                to_sync.pop_front();
            }
            sync_job(*job);
        }
    }

    void sync_job(Job& job) {
        ++n_fsyncs;
        int err = io->fdatasync(job.fd->get()) == 0 ? 0 : errno;
        {
            std::lock_guard lk(pipe_mu);
            job.err = err;
            job.done = true;
        }
        finalize_ready();
    }

    // Finalizes every job at the head of the pipeline that is done, in order.
    void finalize_ready() {
        std::lock_guard fl(finalize_mu);
        while (true) {
            std::shared_ptr<Job> job;
            {
                std::lock_guard lk(pipe_mu);
                if (jobs.empty() || !jobs.front()->done) {
                    break;
                }
                job = jobs.front();
            }
            finalize(*job);
            {
                std::lock_guard lk(pipe_mu);
                jobs.pop_front();
            }
            pipe_cv.notify_all();
        }
    }

    void finalize(Job& job) {
        int err = job.err;
        bool clean = job.seg == kNoSegment;  // the segment could not even be created
        if (job.seg != kNoSegment) {
            std::lock_guard lk(index_mu);
            Segment& seg = segs[job.seg];
            --seg.inflight;
            if (err == 0 && seg.poisoned) {
                err = seg.poison_errno;  // written after a batch that failed here
            }
            if (err == 0) {
                seg.size = std::max(seg.size, job.end);
            }
        }
        if (err != 0 && job.cut_in_place) {
            clean = true;  // the segment is as it was before this batch, and stays in use
        } else if (err != 0 && job.seg != kNoSegment) {
            // write_mu: the writer neither appends here meanwhile nor after (it sees poisoned).
            std::lock_guard wl(write_mu);
            std::unique_lock lk(index_mu);
            Segment& seg = segs[job.seg];
            if (!seg.poisoned) {
                seg.poisoned = true;
                seg.poison_errno = err;
                std::shared_ptr<Fd> fd = seg.fd;
                lk.unlock();
                // Cut this batch and everything after it, durably if the disk lets us.
                ++n_fsyncs;
                bool cut = io->ftruncate(fd->get(), static_cast<off_t>(job.start)) == 0 &&
                           io->fdatasync(fd->get()) == 0;
                std::uint64_t size = job.start;
                struct stat st {};
                if (!cut && ::fstat(fd->get(), &st) == 0) {
                    size = static_cast<std::uint64_t>(st.st_size);
                }
                lk.lock();
                Segment& s2 = segs[job.seg];
                s2.cut_clean = cut;
                s2.size = size;
                reclaim_candidates.insert(job.seg);
                clean = cut;
            } else {
                clean = seg.cut_clean;
            }
        }
        if (err != 0) {
            fail_job(job, err, clean);
            return;
        }
        n_records += job.records;
        used_bytes += job.end - job.start;
        if (job.records > 0) {
            backoff_ms = kRetryBackoff.count();
            if (hard.load() == SpoolState::failing) {
                probe_at_ns = 0;  // a batch went through: the writer probes at its next look
                last_stat_ns = 0;
            }
        }
        {
            std::lock_guard lk(index_mu);
            for (Item& it : job.batch) {
                if (it.writes()) {
                    apply_item(it, job.seg);
                }
            }
        }
        auto now = SteadyClock::now();
        for (Item& it : job.batch) {
            if (!it.skip && it.kind == Item::Kind::message) {
                ++n_committed;
                n_commit_ns += static_cast<std::uint64_t>(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(now - it.queued).count());
                auto done = std::move(it.done);
                done(CommitStatus::ok, std::move(it.msg));
            }
        }
        reclaim();
        if (stat_due()) {
            refresh_free_space();
        }
        // Operator actions return once their effect, space included, is visible.
        for (Item& it : job.batch) {
            if (!it.skip && it.waiter) {
                it.waiter->finish({});
            }
        }
    }

    // index_mu held. The item's record is durable in segment `seg`.
    void apply_item(Item& it, std::uint64_t seg) {
        switch (it.kind) {
            case Item::Kind::message: {
                sf::MessageRecord rec;
                const Message& m = *it.msg;
                rec.msg.id = m.id;
                rec.msg.sender = m.sender;
                rec.msg.recipients = m.recipients;
                rec.msg.client = m.client;
                rec.msg.helo = m.helo;
                rec.msg.listener = m.listener;
                rec.msg.auth_user = m.auth_user;
                rec.msg.received_at = m.received_at;
                rec.data = it.data;
                add_message(std::move(rec), seg, it.off, it.len);
                break;
            }
            case Item::Kind::state:
                apply_state(it.state, seg);
                break;
            case Item::Kind::op:
                if (!apply_op(it.op, seg) && it.op.type == sf::RecordType::cancel &&
                    it.cancel_of != kNoSegment && it.cancel_of != seg) {
                    // The failed message's record may still be in that segment: this cancel
                    // must stay until that segment is gone.
                    auto s = segs.find(it.cancel_of);
                    if (s != segs.end()) {
                        s->second.final_pins.push_back(seg);
                        ++segs[seg].pins;
                    }
                }
                break;
            case Item::Kind::barrier:
                break;
        }
    }

    // A failed batch: fail its messages (never ok) and operator actions; put outcome records
    // back for a later batch. When the failed tail could not be cut off durably, the
    // failed messages get cancel records so that they never come back.
    void fail_job(Job& job, int err, bool clean) {
        LogLine(Level::error, "spool_write_failed")
            .kv("segment", job.seg == kNoSegment ? std::string("(new)") : seg_path(job.seg))
            .kv("error", std::strerror(err))
            .kv("records", static_cast<std::uint64_t>(job.records))
            .kv("cut", clean ? "yes" : "no");
        CommitStatus status = status_of(err);
        Error e = errno_error(err, "spool write");
        disk_error(err, job.seg == kNoSegment ? std::string("new segment") : seg_path(job.seg));
        std::vector<Item> retry;
        for (Item& it : job.batch) {
            if (it.skip) {
                continue;
            }
            if (it.kind == Item::Kind::message) {
                ++n_failed;
                if (!clean) {
                    Item c;
                    c.kind = Item::Kind::op;
                    c.op = {sf::RecordType::cancel, it.msg->id};
                    c.cancel_of = job.seg;
                    retry.push_back(std::move(c));
                }
                if (it.data.external) {
                    ::unlink(big_path(it.data.big_seq).c_str());
                    used_bytes -= std::min<std::uint64_t>(used_bytes, it.data.size);
                }
                auto done = std::move(it.done);
                done(status, std::move(it.msg));
            } else if (it.waiter) {
                it.waiter->finish(e);
            } else if (it.kind != Item::Kind::barrier) {
                retry.push_back(std::move(it));  // outcome records and cancels: later
            }
        }
        {
            std::lock_guard lk(q_mu);
            if (stopping) {
                if (!retry.empty()) {
                    LogLine(Level::error, "spool_records_dropped")
                        .kv("records", static_cast<std::uint64_t>(retry.size()))
                        .kv("why", "closing after a write failure");
                }
            } else {
                auto now = SteadyClock::now();
                for (auto r = retry.rbegin(); r != retry.rend(); ++r) {
                    r->queued = now;
                    queue.push_front(std::move(*r));
                }
                // Out of space with the reserve still held: it goes now, and the records
                // go again at once. Otherwise they wait, longer after each failure.
                bool reserve_left = status == CommitStatus::no_space && reserve_have.load() > 0;
                std::int64_t wait = backoff_ms.load();
                if (!reserve_left) {
                    backoff_ms = std::min<std::int64_t>(wait * 2, kMaxBackoff.count());
                }
                retry_not_before = reserve_left || retry.empty() ? now : now + Millis(wait);
            }
        }
        if (status == CommitStatus::no_space && !retry.empty()) {
            release_reserve();
        }
        {
            // A poisoned segment is retired now, so that reclaim deletes it (a disk that
            // keeps failing must not leave a file per attempt behind).
            std::lock_guard wl(write_mu);
            std::lock_guard lk(index_mu);
            if (job.seg != kNoSegment && job.seg == active && segs[active].poisoned) {
                segs[active].sealed = true;
                reclaim_candidates.insert(active);
                active = kNoSegment;
            }
        }
        reclaim();
        q_cv.notify_one();
        refresh_free_space();
    }

    // ------------------------------------------------------------------ big files

    void big_main() {
        while (true) {
            Item it;
            {
                std::unique_lock lk(big_mu);
                big_cv.wait(lk, [&] { return big_stopping || !big_queue.empty(); });
                if (big_queue.empty()) {
                    return;
                }
                it = std::move(big_queue.front());
                big_queue.pop_front();
            }
            write_big(std::move(it));
        }
    }

    void write_big(Item it) {
        const std::string& data = it.msg->data;
        std::uint64_t size = data.size();
        SpoolState h = hard.load();
        bool disk = free_bytes.load() < size + opts.min_free_bytes / 2;
        bool limit = opts.max_bytes != 0 && used_bytes.load() >= opts.max_bytes;
        if (h == SpoolState::ok && disk && free_bytes.load() < size) {
            disk_error(ENOSPC, "message of " + std::to_string(size) + " bytes", false);
        }
        if (h != SpoolState::ok || disk || limit) {
            ++n_failed;
            auto done = std::move(it.done);
            done(h == SpoolState::failing ? CommitStatus::io_error : CommitStatus::no_space,
                 std::move(it.msg));
            return;
        }
        std::uint64_t seq = next_big++;
        std::string path = big_path(seq);
        Fd fd(io->open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
        int err = fd.valid() ? 0 : errno;
        std::uint32_t crc = 0;
        for (std::uint64_t off = 0; err == 0 && off < size; off += kReadChunk) {
            std::size_t n =
                static_cast<std::size_t>(std::min<std::uint64_t>(kReadChunk, size - off));
            crc = sf::crc32c(data.data() + off, n, crc);
            iovec v{const_cast<char*>(data.data() + off), n};
            err = pwritev_all(*io, fd.get(), {v}, static_cast<off_t>(off));
        }
        if (err == 0) {
            ++n_fsyncs;
            if (io->fdatasync(fd.get()) != 0) {
                err = errno;
            }
        }
        if (err == 0) {
            err = sync_dir(big_dir_fd.get());
        }
        if (err != 0) {
            ::unlink(path.c_str());
            ++n_failed;
            LogLine(Level::error, "spool_write_failed")
                .kv("file", path)
                .kv("error", std::strerror(err));
            disk_error(err, path);
            auto done = std::move(it.done);
            done(status_of(err), std::move(it.msg));
            return;
        }
        used_bytes += size;
        it.data = {true, seq, size, crc};
        enqueue(it);  // the writer stops only after this thread: never refused
    }

    // ------------------------------------------------------------------ close

    void close() {
        {
            std::lock_guard lk(q_mu);
            if (closed) {
                return;
            }
            closed = true;
        }
        {
            std::lock_guard lk(big_mu);
            big_stopping = true;
        }
        big_cv.notify_all();
        if (big_writer.joinable()) {
            big_writer.join();
        }
        {
            std::lock_guard lk(q_mu);
            stopping = true;
            retry_not_before = {};
        }
        q_cv.notify_all();
        if (writer.joinable()) {
            writer.join();
        }
        {
            std::unique_lock lk(pipe_mu);
            pipe_cv.wait(lk, [&] { return jobs.empty(); });
            sync_stopping = true;
        }
        pipe_cv.notify_all();
        for (auto& t : syncers) {
            t.join();
        }
        // Whatever could not be written (a failing disk) fails now.
        std::deque<Item> left;
        {
            std::lock_guard lk(q_mu);
            left.swap(queue);
        }
        for (Item& it : left) {
            if (it.kind == Item::Kind::message) {
                auto done = std::move(it.done);
                done(CommitStatus::io_error, std::move(it.msg));
            } else if (it.waiter) {
                it.waiter->finish(make_error(Errc::io, "spool closed"));
            }
        }
        {
            std::lock_guard wl(write_mu);
            seal_active();
        }
        reclaim();
        lock_fd.reset();
    }
};

// ---------------------------------------------------------------------- public API

Spool::Spool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Spool::~Spool() {
    close();
}

Result<std::unique_ptr<Spool>> Spool::open(SpoolOptions opts) {
    if (opts.dir.empty()) {
        return make_error(Errc::invalid, "spool directory not set");
    }
    while (opts.dir.size() > 1 && opts.dir.back() == '/') {
        opts.dir.pop_back();
    }
    opts.max_batch = std::max<std::size_t>(opts.max_batch, 1);
    opts.syncs_in_flight = std::max<std::size_t>(opts.syncs_in_flight, 1);
    auto impl = std::make_unique<Impl>();
    impl->io = opts.io ? opts.io : std::make_shared<SpoolIo>();
    impl->big_dir = opts.dir + "/big";
    impl->opts = std::move(opts);
    if (Error e = impl->open_dirs(); !e.ok()) {
        return e;
    }
    if (Error e = impl->recover(); !e.ok()) {
        return e;
    }
    impl->refresh_free_space();
    {
        std::lock_guard lk(impl->state_mu);
        // On a full disk the state says so, and the writer tries again when it looks. Less
        // free space than the reserve (once that is allocated) is a full disk too.
        if (impl->fill_reserve()) {
            impl->refresh_free_space();
            if (impl->free_bytes.load() < impl->opts.reserve_bytes) {
                impl->disk_error(ENOSPC, "open", false);
            }
        }
    }
    LogLine(Level::info, "spool_open")
        .kv("dir", impl->opts.dir)
        .kv("messages", impl->live_count.load())
        .kv("segments", static_cast<std::uint64_t>(impl->segs.size()))
        .kv("bytes", impl->used_bytes.load())
        .kv("torn_bytes", impl->n_torn.load())
        .kv("state", to_string(impl->hard.load()))
        .kv("reserve", impl->reserve_have.load());
    impl->start();
    return std::unique_ptr<Spool>(new Spool(std::move(impl)));
}

void Spool::submit(std::unique_ptr<Message> msg, Done done) {
    Impl::Item it;
    it.kind = Impl::Item::Kind::message;
    it.msg = std::move(msg);
    it.done = std::move(done);
    if (it.msg->data.size() < impl_->opts.large_message_bytes) {
        if (!impl_->enqueue(it)) {
            it.done(CommitStatus::io_error, std::move(it.msg));
        }
        return;
    }
    {
        std::unique_lock lk(impl_->big_mu);
        if (impl_->big_stopping) {
            lk.unlock();
            it.done(CommitStatus::io_error, std::move(it.msg));
            return;
        }
        impl_->big_queue.push_back(std::move(it));
    }
    impl_->big_cv.notify_one();
}

void Spool::expect(int delta) {
    impl_->expected.fetch_add(delta, std::memory_order_relaxed);
}

Admission Spool::admission() const {
    if (impl_->hard.load() != SpoolState::ok) {
        return Admission::no_space;  // full or failing: until the writer sees it end
    }
    if (impl_->opts.max_bytes != 0 && impl_->used_bytes.load() >= impl_->opts.max_bytes) {
        impl_->note_low(true, "spool.max_size reached");
        return Admission::over_limit;
    }
    if (impl_->stat_due()) {
        // An idle writer looks only once a second; the disk may fill meanwhile (one
        // fstatvfs, no disk I/O, at most every kStatInterval).
        impl_->refresh_free_space();
    }
    if (impl_->free_bytes.load() < impl_->opts.min_free_bytes) {
        impl_->note_low(true, "free space below spool.min_free");
        return Admission::no_space;
    }
    impl_->note_low(false, "space back over spool.min_free and under spool.max_size");
    return Admission::ok;
}

SpoolState Spool::state() const {
    SpoolState h = impl_->hard.load();
    if (h != SpoolState::ok) {
        return h;
    }
    return admission() == Admission::ok ? SpoolState::ok : SpoolState::low;
}

namespace {

Spool::Impl::Item state_item(const QueueId& id, std::size_t rcpt, RcptState st, std::string reason,
                             SysTime next, unsigned attempts) {
    Spool::Impl::Item it;
    it.kind = Spool::Impl::Item::Kind::state;
    it.state.id = id;
    it.state.rcpt = static_cast<std::uint32_t>(rcpt);
    it.state.state = st;
    it.state.reason = std::move(reason);
    it.state.next_attempt = next;
    it.state.attempts = attempts;
    return it;
}

}  // namespace

// After close() outcomes are dropped: at least once, the message is delivered again.
void Spool::record_delivered(const QueueId& id, std::size_t rcpt) {
    auto it = state_item(id, rcpt, RcptState::delivered, {}, {}, 0);
    impl_->enqueue(it);
}

void Spool::record_failed(const QueueId& id, std::size_t rcpt, std::string reason) {
    auto it = state_item(id, rcpt, RcptState::failed, std::move(reason), {}, 0);
    impl_->enqueue(it);
}

void Spool::record_deferred(const QueueId& id, std::size_t rcpt, std::string reason,
                            SysTime next_attempt, unsigned attempts) {
    auto it = state_item(id, rcpt, RcptState::deferred, std::move(reason), next_attempt, attempts);
    impl_->enqueue(it);
}

std::vector<QueueEntry> Spool::pending() const {
    std::vector<QueueEntry> out;
    {
        std::lock_guard lk(impl_->index_mu);
        out.reserve(impl_->index.size());
        for (const auto& [id, l] : impl_->index) {
            out.push_back(l.entry);
        }
    }
    std::sort(out.begin(), out.end(), [](const QueueEntry& a, const QueueEntry& b) {
        return a.received_at != b.received_at ? a.received_at < b.received_at : a.id < b.id;
    });
    return out;
}

std::optional<QueueEntry> Spool::entry(const QueueId& id) const {
    std::lock_guard lk(impl_->index_mu);
    auto it = impl_->index.find(id);
    if (it == impl_->index.end()) {
        return std::nullopt;
    }
    return it->second.entry;
}

Result<std::unique_ptr<Message>> Spool::load(const QueueId& id) const {
    std::shared_ptr<Fd> fd;
    std::uint64_t seg, off;
    std::uint32_t len;
    sf::DataRef data;
    {
        std::lock_guard lk(impl_->index_mu);
        auto it = impl_->index.find(id);
        if (it == impl_->index.end()) {
            return make_error(Errc::not_found, "no message " + id + " in the queue");
        }
        seg = it->second.seg;
        off = it->second.off;
        len = it->second.len;
        data = it->second.data;
        fd = impl_->segs[seg].fd;
    }
    std::string where = impl_->seg_path(seg) + " at " + std::to_string(off);
    std::string buf(sf::kHeaderBytes + len, '\0');
    ssize_t r = pread_full(fd->get(), buf.data(), buf.size(), static_cast<off_t>(off));
    if (r < 0) {
        return errno_error(errno, "read " + where);
    }
    sf::RecordHeader h = sf::read_header(buf.data());
    std::string_view body = std::string_view(buf).substr(sf::kHeaderBytes);
    if (static_cast<std::size_t>(r) != buf.size() || h.len != len || !sf::check_crc(h, body)) {
        return make_error(Errc::corrupt, "bad record for " + id + " in " + where);
    }
    auto rec = sf::decode_message(body, true);
    if (!rec || rec->msg.id != id) {
        return make_error(Errc::corrupt, "undecodable record for " + id + " in " + where);
    }
    auto msg = std::make_unique<Message>(std::move(rec->msg));
    if (data.external) {
        std::string path = impl_->big_path(data.big_seq);
        Fd bfd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!bfd.valid()) {
            return errno_error(errno, "open " + path);
        }
        msg->data.resize(data.size);
        ssize_t got = pread_full(bfd.get(), msg->data.data(), data.size, 0);
        if (got < 0) {
            return errno_error(errno, "read " + path);
        }
        char extra;
        if (static_cast<std::uint64_t>(got) != data.size ||
            pread_full(bfd.get(), &extra, 1, static_cast<off_t>(data.size)) != 0 ||
            sf::crc32c(msg->data.data(), msg->data.size()) != data.crc) {
            return make_error(Errc::corrupt, "data file " + path + " of " + id + " is damaged");
        }
    }
    return msg;
}

namespace {

Error run_items(Spool::Impl& impl, std::vector<Spool::Impl::Item> items) {
    if (items.empty()) {
        return {};
    }
    auto w = std::make_shared<Waiter>();
    w->remaining = items.size();
    Error closed = make_error(Errc::io, "spool closed");
    for (auto& it : items) {
        it.waiter = w;
        if (!impl.enqueue(it)) {
            w->finish(closed);
        }
    }
    return w->wait();
}

Spool::Impl::Item op_item(sf::RecordType type, const QueueId& id) {
    Spool::Impl::Item it;
    it.kind = Spool::Impl::Item::Kind::op;
    it.op = {type, id};
    return it;
}

}  // namespace

Error Spool::hold(const QueueId& id) {
    if (!entry(id)) {
        return make_error(Errc::not_found, "no message " + id + " in the queue");
    }
    std::vector<Impl::Item> items;
    items.push_back(op_item(sf::RecordType::hold, id));
    return run_items(*impl_, std::move(items));
}

Error Spool::release(const QueueId& id) {
    if (!entry(id)) {
        return make_error(Errc::not_found, "no message " + id + " in the queue");
    }
    std::vector<Impl::Item> items;
    items.push_back(op_item(sf::RecordType::release, id));
    return run_items(*impl_, std::move(items));
}

Error Spool::remove(const QueueId& id) {
    if (!entry(id)) {
        return make_error(Errc::not_found, "no message " + id + " in the queue");
    }
    std::vector<Impl::Item> items;
    items.push_back(op_item(sf::RecordType::remove, id));
    return run_items(*impl_, std::move(items));
}

Result<PurgeResult> Spool::purge(const QueueFilter& filter, bool dry_run) {
    PurgeResult res;
    std::vector<Impl::Item> items;
    auto now = std::chrono::system_clock::now();
    for (const QueueEntry& e : pending()) {
        std::vector<std::size_t> sel = filter.select(e, now);
        if (sel.empty()) {
            continue;
        }
        res.recipients += sel.size();
        if (sel.size() == e.live_recipients()) {
            res.messages.push_back(e.id);
            items.push_back(op_item(sf::RecordType::remove, e.id));
        } else {
            res.partial.push_back(e.id);
            for (std::size_t i : sel) {
                items.push_back(state_item(e.id, i, RcptState::removed, "purged by operator", {},
                                           e.recipients[i].attempts));
            }
        }
    }
    if (!dry_run) {
        if (Error err = run_items(*impl_, std::move(items)); !err.ok()) {
            return err;
        }
    }
    return res;
}

Error Spool::sync() {
    std::vector<Impl::Item> items(1);
    items[0].kind = Impl::Item::Kind::barrier;
    return run_items(*impl_, std::move(items));
}

Result<std::size_t> Spool::flush() {
    std::vector<Impl::Item> items;
    auto now = std::chrono::system_clock::now();
    for (const QueueEntry& e : pending()) {
        if (e.held) {
            continue;
        }
        for (std::size_t i = 0; i < e.recipients.size(); ++i) {
            const RecipientStatus& r = e.recipients[i];
            if (r.state == RcptState::deferred && r.next_attempt > now) {
                items.push_back(
                    state_item(e.id, i, RcptState::deferred, r.reason, now, r.attempts));
            }
        }
    }
    std::size_t n = items.size();
    if (Error err = run_items(*impl_, std::move(items)); !err.ok()) {
        return err;
    }
    return n;
}

std::uint64_t Spool::size() const {
    return impl_->live_count.load();
}

std::optional<SysTime> Spool::oldest_received() const {
    std::optional<SysTime> oldest;
    std::lock_guard lk(impl_->index_mu);
    for (const auto& [id, l] : impl_->index) {
        if (!oldest || l.entry.received_at < *oldest) {
            oldest = l.entry.received_at;
        }
    }
    return oldest;
}

SpoolStats Spool::stats() const {
    SpoolStats s;
    s.messages = impl_->live_count.load();
    s.bytes = impl_->used_bytes.load();
    {
        std::lock_guard lk(impl_->index_mu);
        s.segments = impl_->segs.size();
    }
    s.committed = impl_->n_committed.load();
    s.failed = impl_->n_failed.load();
    s.batches = impl_->n_batches.load();
    s.fsyncs = impl_->n_fsyncs.load();
    s.records = impl_->n_records.load();
    s.recovered = impl_->n_recovered.load();
    s.expected = impl_->expected.load();
    s.commit_ns = impl_->n_commit_ns.load();
    s.torn_bytes = impl_->n_torn.load();
    s.state = state();
    s.free_bytes = impl_->free_bytes.load();
    s.reserve_bytes = impl_->reserve_have.load();
    s.write_errors = impl_->n_write_errors.load();
    return s;
}

const std::string& Spool::dir() const {
    return impl_->opts.dir;
}

void Spool::close() {
    if (impl_) {
        impl_->close();
    }
}

// ---------------------------------------------------------------------- QueueFilter

std::vector<std::size_t> QueueFilter::select(const QueueEntry& e, SysTime now) const {
    std::vector<std::size_t> out;
    if (sender) {
        const std::string& s = *sender;
        bool match = s == "<>"                     ? e.sender.empty()
                     : s.size() > 1 && s[0] == '@' ? ascii::iequals(domain_of(e.sender), s.substr(1))
                                                   : ascii::iequals(e.sender, s);
        if (!match) {
            return out;
        }
    }
    if (client) {
        auto ip = parse_ip(e.client);
        if (!ip || !client->contains(*ip)) {
            return out;
        }
    }
    if (auth_user && e.auth_user != *auth_user) {
        return out;
    }
    if (older_than && !(e.received_at + *older_than < now)) {
        return out;
    }
    for (std::size_t i = 0; i < e.recipients.size(); ++i) {
        const RecipientStatus& r = e.recipients[i];
        if (is_final(r.state)) {
            continue;
        }
        if (rcpt_domain && !ascii::iequals(domain_of(r.rcpt.address), *rcpt_domain)) {
            continue;
        }
        if (code && !ascii::iequals(r.rcpt.code, *code)) {
            continue;
        }
        out.push_back(i);
    }
    return out;
}

}  // namespace sluice::storage
