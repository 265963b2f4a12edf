#pragma once
// The durable spool: every message that gets 250 is on disk (fdatasync'd) first, and stays
// there until each of its recipients is final (RFC 5321 §4.1.1.4 and §6.1: once we answer
// 250 the message is ours to deliver, across crashes and restarts).
//
// How (format in storage/spool_format.hpp):
// - Append-only segment files (`DIR/seg-*.log`, rotated at `segment_bytes`) of checksummed
//   records: one record per message (envelope, per-recipient facts, data), small records
//   for per-recipient outcomes and operator actions.
// - Group commit: one writer thread takes everything submitted meanwhile (up to
//   `max_batch` messages), writes it with one pwritev and makes it durable with ONE
//   fdatasync: itself (syncs_in_flight 1, the default: no thread hand-off), or on sync
//   threads, up to `syncs_in_flight` batches at once. Batches complete strictly in order,
//   then each message's callback runs. Submitting never touches the disk, and wakes the
//   writer only when it sleeps. While sessions announced with expect() are still on their
//   way, the writer waits up to `commit_delay` for them (`group_target` at most), so that
//   20 sessions share one fdatasync instead of three or four.
// - The active segment is zero-filled `zero_ahead` bytes beyond its records: fdatasync
//   then flushes data into allocated blocks without a metadata commit. The writer refills
//   that space (and syncs it) when it has nothing to commit, so the ~1 ms this takes is
//   rarely in a client's wait.
// - Messages of `large_message_bytes` or more go to their own file (`DIR/big/*.msg`),
//   written and fsync'd by a second thread; only a small record enters a batch, so a
//   25 MB message never holds the batch of small ones behind it.
// - Recovery (in `open`): segments are replayed in order; each record's length and CRC-32C
//   are checked and a segment is read only up to its first bad record (a torn tail was
//   never acknowledged: nothing half-written is ever recovered). The last state record of
//   a recipient wins; final states never change back.
// - Space: a segment is deleted when no message that still needs it remains (its messages
//   are all final and no live message's latest state record is in it); a big file when its
//   message is final. Segments are never rewritten; a segment pinned by one long-deferred
//   message stays until that message is final (at most max_age); live messages are never
//   copied forward (simple, and a segment's worth of mail is cheap next to its delivery).
// - Disk state (SpoolState): a full disk (ENOSPC/EDQUOT, or free space too short for the
//   next message) or a failing one (EIO or any other write/fdatasync error) is a state the
//   spool is in, not an error it retries: while it lasts admission() says no, messages are
//   refused before they touch the disk (no new segment, no new big file), and only outcome
//   records and operator actions are written, backing off after each failure (250 ms doubling
//   to 30 s). A full spool leaves the state by itself once the free space is back (a
//   drained active segment is sealed and reclaimed when space is short, so delivering the
//   queue is enough); a failing one once a probe write and fdatasync succeed again.
// - Reserve (`reserve_bytes`, the file DIR/reserve, allocated at open and whenever space is
//   back): space kept for the spool's own records. When the disk is full it is given back
//   to the file system and the outcome records go there, so a delivery the next hop
//   acknowledged is recorded (and not sent again after a restart) even on a full disk.
//   While full, deferrals are applied in memory only (they are not outcomes: a restart
//   retries sooner, nothing more).
// - Failures: a failed write or fdatasync fails that batch's messages (no_space for
//   ENOSPC/EDQUOT, io_error otherwise) and never reports ok. A write that ran out of space
//   is cut back in place (the segment stays usable: nothing before it was touched). The segment is truncated back
//   to the batch's start and retired (after a failed fsync the page cache cannot be
//   trusted); if that truncation cannot be made durable, the failed messages get `cancel`
//   records in the next batch so they never come back. Batches written after a failed one
//   in the same segment fail too (a later fdatasync proves nothing about earlier pages
//   once one failed). Later batches go to a new segment.
//   Outcome records of a failed batch are retried (they are what frees space).
// - Exclusive: `open` takes an flock on DIR/lock; a second process (the daemon, or
//   sluicectl offline) gets Errc::busy.
// - Not acknowledged is not "not delivered": a record written whose fdatasync had not
//   returned when the process died is found intact by recovery and delivered, though its
//   client never saw 250 (and will likely send it again: a duplicate, RFC 5321 §6.1).
// - Memory: the index holds each queued message's envelope and recipient states, not its
//   data (about 1 KB per one-recipient message, measured by `spool_bench --memory`).
//
// Trust: the directory is ours (created 0750); the message content came from the network
// but is only stored. A record whose CRC matches is trusted to be ours (CRC-32C is not a
// MAC: whoever can write the spool directory can forge records).
//
// Threads: all public functions are thread-safe. `submit` and `record_*` never block on
// disk. `load`, the operator actions and `close` block (call them off the event loops).

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.hpp"
#include "common/units.hpp"
#include "storage/lmdb.hpp"  // Error, Errc, Result
#include "storage/message.hpp"
#include "storage/spool_format.hpp"

namespace sluice::storage {

using QueueId = std::string;  // Message::id
using SysTime = std::chrono::system_clock::time_point;

// The system calls that fail when a disk is full or failing, behind one seam so tests can
// inject errors a healthy disk never gives (EIO from fdatasync). Returns like the system
// calls, with errno set on failure. The default is the plain calls.
class SpoolIo {
  public:
    virtual ~SpoolIo() = default;
    virtual ssize_t pwritev(int fd, const iovec* iov, int count, off_t offset);
    virtual int fdatasync(int fd);
    virtual int ftruncate(int fd, off_t length);
    virtual int open(const char* path, int flags, mode_t mode);  // files the spool creates
    virtual int fallocate(int fd, off_t length);  // posix_fallocate from 0 (errno set)
};

// What the spool's disk lets it do. One row per state in kSpoolStates (its name in logs,
// metrics and status, and what it means for an operator).
enum class SpoolState : std::uint8_t { ok, low, full, failing };

struct SpoolStateInfo {
    SpoolState state;
    const char* name;
    const char* meaning;
};

inline constexpr SpoolStateInfo kSpoolStates[] = {
    {SpoolState::ok, "ok", "accepting"},
    {SpoolState::low, "low",
     "new mail refused (452 4.3.1): below spool.min_free or at spool.max_size"},
    {SpoolState::full, "full", "new mail refused (452 4.3.1): disk full, reserve in use"},
    {SpoolState::failing, "failing",
     "new mail refused (452 4.3.1): disk writes fail, probed until they work"},
};

const char* to_string(SpoolState s);

struct SpoolOptions {
    std::string dir;
    std::uint64_t max_bytes = 0;                  // spool size limit (0: unlimited)
    std::uint64_t min_free_bytes = 256ull << 20;  // below this free space, admission says no_space
    // Space kept (DIR/reserve) for outcome records and operator actions on a full disk.
    std::uint64_t reserve_bytes = 4ull << 20;
    std::size_t max_batch = 256;                  // messages per fdatasync at most
    std::size_t syncs_in_flight = 1;              // batches in fdatasync at once (1: by the writer)
    std::uint64_t max_batch_bytes = 32ull << 20;  // and bytes per batch at most
    std::uint64_t segment_bytes = 64ull << 20;    // rotate the segment file beyond this size
    std::uint64_t large_message_bytes = 1ull << 20;  // data this big goes to its own file
    // The active segment is zero-filled this far ahead of its records, so that most
    // fdatasyncs flush data into existing blocks and commit no metadata (0: plain appends).
    std::uint64_t zero_ahead = 1ull << 20;
    // Outcome records (record_*) alone wait this long for company before their fdatasync.
    Millis state_delay{10};
    // Group commit that waits for company: while fewer than `group_target` messages are
    // queued and some submitter announced one on its way (expect()), the writer waits up
    // to `commit_delay` after the first before it writes. Under load that turns many small
    // batches into few large ones (fewer fdatasyncs, less CPU per message); a lone session
    // never waits (nothing is expected). 0: write at once.
    std::chrono::microseconds commit_delay{0};
    std::size_t group_target = 16;
    std::shared_ptr<SpoolIo> io;  // null: the plain system calls
};

struct RecipientStatus {
    Recipient rcpt;
    RcptState state = RcptState::pending;
    unsigned attempts = 0;
    SysTime next_attempt{};  // deferred: when to retry; pending: received_at
    std::string reason;      // last deferral or failure reason
};

// A message in the queue without its data: what the scheduler and `queue list` need.
struct QueueEntry {
    QueueId id;
    std::string sender;                       // empty: the null sender <>
    std::vector<RecipientStatus> recipients;  // in the original order: indices are stable
    std::string client;
    std::string helo;
    std::string listener;
    std::string auth_user;
    SysTime received_at{};
    std::uint64_t size = 0;  // bytes of data
    bool held = false;

    std::size_t live_recipients() const;  // not final
};

enum class Admission : std::uint8_t {
    ok,
    no_space,    // free disk below min_free_bytes: 452 4.3.1
    over_limit,  // max_bytes reached: 452 4.3.1
};

// Selects messages and recipients for `purge`. Unset fields match everything. Message
// facts (sender, client, auth_user, age) select messages; recipient facts (domain, code)
// select recipients within them.
struct QueueFilter {
    std::optional<std::string> sender;       // address (case-insensitive), "<>", or "@domain"
    std::optional<std::string> rcpt_domain;  // recipient domain (case-insensitive)
    std::optional<Cidr> client;              // client address within this prefix
    std::optional<std::string> code;         // decision code of the recipient (G110, G108...)
    std::optional<std::string> auth_user;    // authenticated user that sent it
    std::optional<Millis> older_than;        // received more than this long ago

    // The live recipients of `e` that the filter selects (empty: `e` does not match).
    std::vector<std::size_t> select(const QueueEntry& e, SysTime now) const;
};

struct PurgeResult {
    std::vector<QueueId> messages;  // messages removed whole
    std::size_t recipients = 0;     // recipients removed (in those and in partly removed ones)
    std::vector<QueueId> partial;   // messages of which only some recipients were removed
};

struct SpoolStats {
    std::uint64_t messages = 0;  // live (pending) messages
    std::uint64_t bytes = 0;     // on disk: segments + big files
    std::uint64_t segments = 0;
    std::uint64_t committed = 0;   // messages made durable since open
    std::uint64_t commit_ns = 0;   // their time from submit to durable, summed
    std::int64_t expected = 0;     // expect(): transactions announced, not yet submitted
    std::uint64_t failed = 0;      // messages whose commit failed since open
    std::uint64_t batches = 0;     // batches written since open
    std::uint64_t fsyncs = 0;      // fdatasync/fsync calls since open (all files)
    std::uint64_t records = 0;     // records written since open
    std::uint64_t recovered = 0;   // live messages found by recovery
    std::uint64_t torn_bytes = 0;  // bytes dropped from segment tails by recovery
    SpoolState state = SpoolState::ok;
    std::uint64_t free_bytes = 0;     // free space on the spool's file system (last look)
    std::uint64_t reserve_bytes = 0;  // space held in DIR/reserve now
    std::uint64_t write_errors = 0;   // failed writes, fdatasyncs and file creations since open
};

class Spool {
  public:
    // Runs when a submitted message is durable (ok) or failed, ON A SPOOL THREAD (in
    // submission order per batch): post it to your loop and return quickly. The message
    // comes back (data included) so a caller may forward it without reading it from disk.
    using Done = std::function<void(CommitStatus, std::unique_ptr<Message>)>;

    // Creates DIR (and DIR/big), locks it (Errc::busy when another process holds it), runs
    // recovery and starts the writer threads.
    static Result<std::unique_ptr<Spool>> open(SpoolOptions opts);

    Spool(const Spool&) = delete;
    Spool& operator=(const Spool&) = delete;
    ~Spool();  // close()

    // Queues `msg` for the next batch. Never blocks on disk. After close(), `done` runs at
    // once on the calling thread with io_error.
    void submit(std::unique_ptr<Message> msg, Done done);

    // A hint for group commit: +1 when a transaction that will likely be submitted begins
    // (an SMTP MAIL accepted), -1 when it is submitted or abandoned. Cheap (one atomic).
    void expect(int delta);

    // Before MAIL: cheap (cached free space, refreshed by the writer at least every second).
    // Never ok while the state is low, full or failing.
    Admission admission() const;
    SpoolState state() const;

    // Delivery outcomes, applied in submission order once durable (group-committed with
    // everything else; at least once: a crash before the record is durable means one more
    // delivery). A message whose recipients are all final is removed and its space reclaimed.
    // Outcomes for unknown ids or final recipients are ignored.
    void record_delivered(const QueueId& id, std::size_t rcpt);
    void record_failed(const QueueId& id, std::size_t rcpt, std::string reason);
    void record_deferred(const QueueId& id, std::size_t rcpt, std::string reason,
                         SysTime next_attempt, unsigned attempts);

    // What is in the queue (durable state), without data: for the scheduler at start and
    // `queue list`. Ordered by received_at.
    std::vector<QueueEntry> pending() const;
    std::optional<QueueEntry> entry(const QueueId& id) const;
    // The full message, data read back and its CRC checked (blocking read). The recipients
    // are all of them, in the original order; entry() says which are still to deliver.
    Result<std::unique_ptr<Message>> load(const QueueId& id) const;

    // Operator actions: blocking, durable when they return. Errc::not_found for unknown ids.
    Error hold(const QueueId& id);  // held messages are not to be delivered
    Error release(const QueueId& id);
    Error remove(const QueueId& id);  // every non-final recipient becomes removed
    // Removes what `filter` selects (or only reports it with dry_run).
    Result<PurgeResult> purge(const QueueFilter& filter, bool dry_run);
    // Makes every deferred recipient of a non-held message due now; returns how many.
    Result<std::size_t> flush();

    // Blocks until everything submitted or recorded before the call is durable (or failed).
    Error sync();

    std::uint64_t size() const;  // messages pending
    // When the oldest pending message was received (nullopt: none pending). A scan of the
    // index without copying (the queue-age gauge reads it at scrape time).
    std::optional<SysTime> oldest_received() const;
    SpoolStats stats() const;
    const std::string& dir() const;

    // Writes what is queued, stops the writer threads, releases the lock. Idempotent.
    void close();

    struct Impl;

  private:
    explicit Spool(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::storage
