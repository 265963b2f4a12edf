// The durable spool on real files in temp directories: the record format byte by byte,
// group commit, recovery (torn tails cut at every byte offset, damaged records), outcome
// records and space reclamation checked against a model over many reopenings, injected
// write/fsync/truncate failures, a real ENOSPC on a small tmpfs (when we may mount one),
// big messages in their own files, operator actions and the `queue` commands.

#include "storage/spool.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "storage/spool_format.hpp"
#include "storage/spool_ops.hpp"

using namespace sluice;
using namespace sluice::storage;
namespace sf = sluice::storage::spool_format;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::vector<std::string> segment_files(const std::string& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) {
        if (sf::parse_segment_name(e.path().filename().string())) {
            out.push_back(e.path().string());
        }
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::size_t count_files(const std::string& dir) {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) {
        ++n;
    }
    return n;
}

Transport smtp_transport() {
    Transport t;
    t.kind = Transport::Kind::smtp;
    t.host = "10.0.0.5";
    t.port = 2526;
    t.starttls = TlsMode::required;
    t.text = "smtp://10.0.0.5:2526?starttls=required";
    return t;
}

// A message whose content is derived from its id (so a test can recompute it).
std::unique_ptr<Message> make_message(const std::string& id, std::size_t size = 600,
                                      std::size_t rcpts = 2) {
    auto m = std::make_unique<Message>();
    m->id = id;
    m->sender = "alice+" + id + "@outside.test";
    m->client = "192.0.2.77";
    m->helo = "client.outside.test";
    m->listener = "mx";
    m->auth_user = id.size() % 2 ? "alice" : "";
    m->received_at = std::chrono::system_clock::now();
    for (std::size_t i = 0; i < rcpts; ++i) {
        Recipient r;
        r.address = "user" + std::to_string(i) + "@dom" + std::to_string(i % 2) + ".test";
        r.deliver_to = i == 0 ? r.address : "catch@dom" + std::to_string(i % 2) + ".test";
        r.code = i % 2 ? "G108" : "L101";
        if (i % 2) {
            r.transport = smtp_transport();
        } else {
            r.transport.kind = Transport::Kind::maildir;
            r.transport.path = "/var/mail/x";
            r.transport.text = "maildir:/var/mail/x";
        }
        m->recipients.push_back(std::move(r));
    }
    std::mt19937_64 rng(std::hash<std::string>{}(id));
    std::string data = "Message-Id: <" + id + "@test>\r\nSubject: spool test\r\n\r\n";
    while (data.size() < size) {
        std::string line;
        std::size_t n = 1 + rng() % 90;
        for (std::size_t i = 0; i < n; ++i) {
            line.push_back(static_cast<char>(' ' + rng() % 95));
        }
        data += line + "\r\n";
    }
    data.resize(std::max<std::size_t>(size, 4));
    data.replace(data.size() - 2, 2, "\r\n");
    m->data = std::move(data);
    return m;
}

bool same_envelope(const Message& a, const Message& b) {
    if (a.id != b.id || a.sender != b.sender || a.client != b.client || a.helo != b.helo ||
        a.listener != b.listener || a.auth_user != b.auth_user || a.received_at != b.received_at ||
        a.recipients.size() != b.recipients.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.recipients.size(); ++i) {
        const auto& x = a.recipients[i];
        const auto& y = b.recipients[i];
        if (x.address != y.address || x.deliver_to != y.deliver_to || x.code != y.code ||
            x.transport.kind != y.transport.kind || x.transport.host != y.transport.host ||
            x.transport.port != y.transport.port || x.transport.starttls != y.transport.starttls ||
            x.transport.path != y.transport.path || x.transport.text != y.transport.text ||
            x.transport.inline_delivery != y.transport.inline_delivery) {
            return false;
        }
    }
    return true;
}

// Collects commit outcomes from the writer thread.
class Outcomes {
  public:
    Spool::Done callback() {
        return [this](CommitStatus s, std::unique_ptr<Message> m) {
            std::lock_guard lk(mu_);
            order_.push_back(m->id);
            status_[m->id] = s;
            cv_.notify_all();
        };
    }
    bool wait_for(std::size_t n, std::chrono::seconds limit = 30s) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, limit, [&] { return status_.size() >= n; });
    }
    CommitStatus status(const std::string& id) {
        std::lock_guard lk(mu_);
        return status_.at(id);
    }
    std::vector<std::string> order() {
        std::lock_guard lk(mu_);
        return order_;
    }
    std::map<std::string, CommitStatus> all() {
        std::lock_guard lk(mu_);
        return status_;
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::string, CommitStatus> status_;
    std::vector<std::string> order_;
};

// A full or failing spool refuses mail until its writer sees the disk well again (a look
// at least every second, a failing disk's probe after a back-off).
bool wait_accepting(Spool& s, std::chrono::seconds limit = 15s) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (s.state() != SpoolState::ok && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(20ms);
    }
    return s.state() == SpoolState::ok;
}

CommitStatus commit_one(Spool& s, std::unique_ptr<Message> m) {
    Outcomes o;
    std::string id = m->id;
    s.submit(std::move(m), o.callback());
    EXPECT_TRUE(o.wait_for(1));
    return o.status(id);
}

// Fails chosen system calls: the errors a failing or full disk gives.
class FaultyIo : public SpoolIo {
  public:
    std::atomic<int> fail_writes{0};  // the next N pwritev calls fail
    std::atomic<int> write_errno{EIO};
    std::atomic<bool> half_write{false};  // a failing write first writes half of its bytes
    std::atomic<int> fail_syncs{0};       // the next N fdatasync calls fail with EIO
    std::atomic<int> fail_truncates{0};   // the next N ftruncate calls fail with EIO
    std::atomic<int> sync_delay_ms{0};
    std::atomic<int> big_write_delay_ms{0};  // writes of 1 MiB or more sleep this long
    std::atomic<int> syncs{0};

    ssize_t pwritev(int fd, const iovec* iov, int count, off_t offset) override {
        std::size_t total = 0;
        for (int i = 0; i < count; ++i) {
            total += iov[i].iov_len;
        }
        if (total >= (1u << 20) && big_write_delay_ms > 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(big_write_delay_ms.load()));
        }
        if (fail_writes > 0) {
            --fail_writes;
            if (half_write && iov[0].iov_len > 1) {
                iovec half{iov[0].iov_base, iov[0].iov_len / 2};
                (void)::pwritev(fd, &half, 1, offset);
            }
            errno = write_errno;
            return -1;
        }
        return SpoolIo::pwritev(fd, iov, count, offset);
    }
    int fdatasync(int fd) override {
        if (sync_delay_ms > 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(sync_delay_ms.load()));
        }
        ++syncs;
        if (fail_syncs > 0) {
            --fail_syncs;
            errno = EIO;
            return -1;
        }
        return SpoolIo::fdatasync(fd);
    }
    int ftruncate(int fd, off_t len) override {
        if (fail_truncates > 0) {
            --fail_truncates;
            errno = EIO;
            return -1;
        }
        return SpoolIo::ftruncate(fd, len);
    }
};

class SpoolTest : public ::testing::Test {
  protected:
    void SetUp() override {
        std::string tmpl = (fs::temp_directory_path() / "sluice-spool-XXXXXX").string();
        ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
        root_ = tmpl;
        dir_ = root_ + "/spool";
    }
    void TearDown() override { fs::remove_all(root_); }

    // Free bytes where the spool goes (for tests that set their margins from it).
    std::uint64_t free_here() {
        fs::create_directories(dir_);
        struct statvfs st {};
        EXPECT_EQ(::statvfs(dir_.c_str(), &st), 0);
        return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
    }

    SpoolOptions options() const {
        SpoolOptions o;
        o.dir = dir_;
        o.min_free_bytes = 0;
        o.state_delay = 1ms;
        o.reserve_bytes = 64 * 1024;
        return o;
    }

    std::unique_ptr<Spool> open(SpoolOptions o) {
        auto r = Spool::open(std::move(o));
        EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
        return r.ok() ? std::move(r.value()) : nullptr;
    }
    std::unique_ptr<Spool> open() { return open(options()); }

    std::string root_;
    std::string dir_;
};

// ------------------------------------------------------------------ format

TEST(SpoolFormat, Crc32cKnownAnswerAndChaining) {
    // RFC 3720 §B.4 check value of CRC-32C.
    EXPECT_EQ(sf::crc32c("123456789", 9), 0xe3069283u);
    std::string big(100000, 'x');
    for (std::size_t i = 0; i < big.size(); ++i) {
        big[i] = static_cast<char>(i * 31 + (i >> 7));
    }
    std::uint32_t whole = sf::crc32c(big.data(), big.size());
    for (std::size_t cut : {0ul, 1ul, 7ul, 8ul, 4097ul, 99999ul}) {
        std::uint32_t c = sf::crc32c(big.data(), cut);
        EXPECT_EQ(sf::crc32c(big.data() + cut, big.size() - cut, c), whole) << cut;
    }
}

TEST(SpoolFormat, MessageRoundTripAndEveryTruncationRejected) {
    auto m = make_message("abc123", 300, 3);
    sf::DataRef d{false, 0, m->data.size(), 0};
    std::string body = sf::encode_message_head(*m, d) + m->data;
    auto back = sf::decode_message(body, true);
    ASSERT_TRUE(back.has_value());
    EXPECT_TRUE(same_envelope(*m, back->msg));
    EXPECT_EQ(back->msg.data, m->data);
    for (std::size_t n = 0; n < body.size(); ++n) {
        EXPECT_FALSE(sf::decode_message(std::string_view(body).substr(0, n), true)) << n;
    }
    EXPECT_FALSE(sf::decode_message(body + "x", true));  // data length must match exactly

    sf::DataRef ext{true, 42, 5u << 20, 0xdeadbeef};
    std::string ebody = sf::encode_message_head(*m, ext);
    auto eback = sf::decode_message(ebody, false);
    ASSERT_TRUE(eback.has_value());
    EXPECT_TRUE(eback->data.external);
    EXPECT_EQ(eback->data.big_seq, 42u);
    EXPECT_EQ(eback->data.size, 5u << 20);
    EXPECT_EQ(eback->data.crc, 0xdeadbeefu);
}

TEST(SpoolFormat, StateAndOpRoundTrip) {
    sf::StateRecord s;
    s.id = "q1";
    s.rcpt = 7;
    s.state = RcptState::deferred;
    s.attempts = 3;
    s.next_attempt = std::chrono::system_clock::now() + 1h;
    s.reason = "451 4.7.1 try later";
    auto b = sf::decode_state(sf::encode_state(s));
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->id, "q1");
    EXPECT_EQ(b->rcpt, 7u);
    EXPECT_EQ(b->state, RcptState::deferred);
    EXPECT_EQ(b->attempts, 3u);
    EXPECT_EQ(b->next_attempt, s.next_attempt);
    EXPECT_EQ(b->reason, s.reason);
    std::string bad = sf::encode_state(s);
    bad[1 + 4 + 2 + 4] = 9;  // state byte out of range
    EXPECT_FALSE(sf::decode_state(bad));
    auto op = sf::decode_op(sf::encode_op({sf::RecordType::hold, "q2"}));
    ASSERT_TRUE(op.has_value());
    EXPECT_EQ(op->type, sf::RecordType::hold);
    EXPECT_EQ(op->id, "q2");
    EXPECT_FALSE(sf::decode_op(sf::encode_state(s)));
}

TEST(SpoolFormat, FrameDetectsAnyChangedByte) {
    std::string rec = sf::make_record(sf::encode_op({sf::RecordType::remove, "id-1"}));
    auto h = sf::read_header(rec.data());
    ASSERT_TRUE(sf::check_crc(h, std::string_view(rec).substr(sf::kHeaderBytes)));
    for (std::size_t i = 0; i < rec.size(); ++i) {
        std::string bad = rec;
        bad[i] ^= 0x20;
        auto bh = sf::read_header(bad.data());
        std::string_view body = std::string_view(bad).substr(sf::kHeaderBytes);
        EXPECT_FALSE(bh.len == body.size() && sf::check_crc(bh, body)) << i;
    }
    EXPECT_EQ(sf::parse_segment_name(sf::segment_name(0x2a)), 0x2au);
    EXPECT_FALSE(sf::parse_segment_name("seg-00000000000000zz.log"));
    EXPECT_EQ(sf::parse_big_name(sf::big_name(7)), 7u);
}

// ------------------------------------------------------------------ commit and recovery

TEST_F(SpoolTest, CommittedMessagesSurviveReopenByteForByte) {
    std::vector<std::unique_ptr<Message>> copies;
    {
        auto s = open();
        ASSERT_TRUE(s);
        Outcomes o;
        for (int i = 0; i < 50; ++i) {
            auto m = make_message("m" + std::to_string(i), 100 + 37 * i, 1 + i % 4);
            copies.push_back(std::make_unique<Message>(*m));
            s->submit(std::move(m), o.callback());
        }
        ASSERT_TRUE(o.wait_for(50));
        for (auto& [id, st] : o.all()) {
            EXPECT_EQ(st, CommitStatus::ok) << id;
        }
        EXPECT_EQ(s->size(), 50u);
        EXPECT_EQ(s->stats().committed, 50u);
    }
    auto s = open();
    ASSERT_TRUE(s);
    EXPECT_EQ(s->size(), 50u);
    EXPECT_EQ(s->stats().recovered, 50u);
    auto list = s->pending();
    ASSERT_EQ(list.size(), 50u);
    for (const auto& c : copies) {
        auto e = s->entry(c->id);
        ASSERT_TRUE(e.has_value()) << c->id;
        EXPECT_EQ(e->size, c->data.size());
        EXPECT_EQ(e->recipients.size(), c->recipients.size());
        for (const auto& r : e->recipients) {
            EXPECT_EQ(r.state, RcptState::pending);
        }
        auto m = s->load(c->id);
        ASSERT_TRUE(m.ok()) << m.error().message;
        EXPECT_TRUE(same_envelope(**m, *c)) << c->id;
        EXPECT_EQ((*m)->data, c->data) << c->id;
    }
    EXPECT_EQ(s->load("nope").error().code, Errc::not_found);
}

TEST_F(SpoolTest, CallbackGetsTheMessageBackAfterTheFsync) {
    auto io = std::make_shared<FaultyIo>();
    auto o = options();
    o.io = io;
    auto s = open(o);
    ASSERT_TRUE(s);
    std::mutex mu;
    std::condition_variable cv;
    int syncs_at_done = -1;
    std::string data_back;
    auto m = make_message("back", 2000);
    std::string expect = m->data;
    s->submit(std::move(m), [&](CommitStatus st, std::unique_ptr<Message> msg) {
        std::lock_guard lk(mu);
        EXPECT_EQ(st, CommitStatus::ok);
        syncs_at_done = io->syncs.load();
        data_back = msg->data;
        cv.notify_all();
    });
    std::unique_lock lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, 10s, [&] { return syncs_at_done >= 0; }));
    EXPECT_GE(syncs_at_done, 1);
    EXPECT_EQ(data_back, expect);
}

TEST_F(SpoolTest, ManySubmittersShareFsyncs) {
    auto io = std::make_shared<FaultyIo>();
    io->sync_delay_ms = 20;  // a slow disk: everything arriving meanwhile joins the next batch
    auto o = options();
    o.io = io;
    auto s = open(o);
    ASSERT_TRUE(s);
    Outcomes out;
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 25; ++i) {
                s->submit(make_message("t" + std::to_string(t) + "-" + std::to_string(i), 1024),
                          out.callback());
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    ASSERT_TRUE(out.wait_for(200));
    for (auto& [id, st] : out.all()) {
        EXPECT_EQ(st, CommitStatus::ok) << id;
    }
    auto st = s->stats();
    EXPECT_EQ(st.committed, 200u);
    EXPECT_LE(st.batches, 20u) << "200 messages took " << st.batches << " batches";
    EXPECT_LT(static_cast<double>(st.fsyncs) / 200.0, 0.15);
}

TEST_F(SpoolTest, MaxBatchBoundsABatch) {
    auto io = std::make_shared<FaultyIo>();
    io->sync_delay_ms = 30;
    auto o = options();
    o.io = io;
    o.max_batch = 4;
    auto s = open(o);
    ASSERT_TRUE(s);
    Outcomes out;
    for (int i = 0; i < 20; ++i) {
        s->submit(make_message("b" + std::to_string(i)), out.callback());
    }
    ASSERT_TRUE(out.wait_for(20));
    EXPECT_GE(s->stats().batches, 5u);
    EXPECT_EQ(out.order().front(), "b0");  // FIFO
}

// Group commit waits for the sessions that announced a message (expect) so that they
// share one fdatasync: three expected submissions, spread out in time, make one batch.
TEST_F(SpoolTest, ACommitWaitsForExpectedCompany) {
    auto o = options();
    o.commit_delay = 20s;  // never reached: the group completes first
    o.group_target = 16;
    auto s = open(o);
    ASSERT_TRUE(s);
    // The segment exists first: its creation (a directory sync) is not in the count.
    ASSERT_EQ(commit_one(*s, make_message("first")), CommitStatus::ok);
    auto fsyncs = s->stats().fsyncs;
    Outcomes out;
    s->expect(3);
    for (int i = 0; i < 3; ++i) {
        std::this_thread::sleep_for(20ms);
        s->expect(-1);
        s->submit(make_message("g" + std::to_string(i)), out.callback());
    }
    ASSERT_TRUE(out.wait_for(3, 10s)) << "the last expected message must end the wait";
    EXPECT_EQ(s->stats().fsyncs - fsyncs, 1u);
    EXPECT_EQ(s->stats().committed, 4u);
}

// Nothing expected: a lone submission never waits for company (commit_delay is not a
// latency floor for a single session).
TEST_F(SpoolTest, NothingExpectedMeansNoWait) {
    auto o = options();
    o.commit_delay = 60s;
    auto s = open(o);
    ASSERT_TRUE(s);
    for (int i = 0; i < 3; ++i) {
        Outcomes out;
        s->submit(make_message("lone" + std::to_string(i)), out.callback());
        ASSERT_TRUE(out.wait_for(1, 10s)) << "waited for company nobody announced";
    }
    // A full group does not wait either, even with more announced.
    o.group_target = 2;
    s.reset();
    s = open(o);
    Outcomes out;
    s->expect(10);
    s->submit(make_message("p0"), out.callback());
    s->submit(make_message("p1"), out.callback());
    EXPECT_TRUE(out.wait_for(2, 10s)) << "a full group is written at once";
    s->expect(-10);
}

TEST_F(SpoolTest, SecondOpenIsBusy) {
    auto s = open();
    ASSERT_TRUE(s);
    auto again = Spool::open(options());
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.error().code, Errc::busy);
    s->close();
    auto third = Spool::open(options());
    EXPECT_TRUE(third.ok());
}

TEST_F(SpoolTest, SubmitAfterCloseFailsAtOnce) {
    auto s = open();
    ASSERT_TRUE(s);
    s->close();
    bool called = false;
    s->submit(make_message("late"), [&](CommitStatus st, std::unique_ptr<Message> m) {
        called = true;
        EXPECT_EQ(st, CommitStatus::io_error);
        EXPECT_EQ(m->id, "late");
    });
    EXPECT_TRUE(called);
}

// Cut the last record at every byte: the messages before it are intact, the cut one is
// never recovered, and the segment is trimmed back to its last whole record.
TEST_F(SpoolTest, TornTailAtEveryOffsetIsDropped) {
    std::uint64_t before = 0, after = 0;
    std::string seg;
    auto o = options();
    o.zero_ahead = 0;  // the file ends where the records end
    {
        auto s = open(o);
        ASSERT_TRUE(s);
        for (int i = 0; i < 3; ++i) {
            ASSERT_EQ(commit_one(*s, make_message("keep" + std::to_string(i), 200)),
                      CommitStatus::ok);
        }
        auto segs = segment_files(dir_);
        ASSERT_EQ(segs.size(), 1u);
        seg = segs[0];
        before = fs::file_size(seg);
        ASSERT_EQ(commit_one(*s, make_message("last", 300)), CommitStatus::ok);
        after = fs::file_size(seg);
    }
    ASSERT_GT(after, before + 300);
    std::string full = read_file(seg);
    std::string pristine = root_ + "/pristine";
    fs::copy(dir_, pristine, fs::copy_options::recursive);
    for (std::uint64_t cut = before; cut < after; ++cut) {
        fs::remove_all(dir_);
        fs::copy(pristine, dir_, fs::copy_options::recursive);
        fs::resize_file(seg, cut);
        auto s = open(o);
        ASSERT_TRUE(s) << cut;
        EXPECT_EQ(s->size(), 3u) << "cut at " << cut;
        EXPECT_FALSE(s->entry("last").has_value()) << "cut at " << cut;
        EXPECT_EQ(s->stats().torn_bytes, cut - before) << cut;
        if (cut == before + 1 || cut == after - 1) {
            for (int i = 0; i < 3; ++i) {
                auto m = s->load("keep" + std::to_string(i));
                ASSERT_TRUE(m.ok());
                EXPECT_EQ((*m)->data, make_message("keep" + std::to_string(i), 200)->data);
            }
        }
        s->close();
        EXPECT_EQ(fs::file_size(seg), before) << "the torn tail is cut at " << cut;
    }
    // The whole file again: all four.
    fs::remove_all(dir_);
    fs::copy(pristine, dir_, fs::copy_options::recursive);
    auto s = open();
    EXPECT_EQ(s->size(), 4u);
}

// The active segment is zero-filled ahead of its records (fdatasync then writes into
// existing blocks); recovery finds every record, calls nothing torn and trims the zeros.
TEST_F(SpoolTest, ZeroFilledSpaceAheadIsNotTornAndIsTrimmed) {
    auto o = options();
    o.zero_ahead = 64 * 1024;
    std::string seg;
    std::uint64_t records = 0;
    {
        auto s = open(o);
        for (int i = 0; i < 40; ++i) {
            ASSERT_EQ(commit_one(*s, make_message("z" + std::to_string(i), 3000)),
                      CommitStatus::ok);
        }
        seg = segment_files(dir_).at(0);
        records = s->stats().bytes;
        EXPECT_GT(fs::file_size(seg), records) << "space made ahead";
    }
    auto s = open(o);
    EXPECT_EQ(s->size(), 40u);
    EXPECT_EQ(s->stats().torn_bytes, 0u);
    EXPECT_EQ(fs::file_size(seg), records);
    auto m = s->load("z39");
    ASSERT_TRUE(m.ok());
    EXPECT_EQ((*m)->data, make_message("z39", 3000)->data);
}

// The writer makes that space while it has nothing to commit, not in a client's commit:
// after each commit, once the writer is idle, at least half of zero_ahead lies ahead of
// the records (without the idle refill it shrinks to nothing before the next fill).
TEST_F(SpoolTest, IdleWriterMakesSpaceAheadOffTheCommitPath) {
    auto o = options();
    o.zero_ahead = 64 * 1024;
    auto s = open(o);
    for (int i = 0; i < 40; ++i) {
        ASSERT_EQ(commit_one(*s, make_message("idle" + std::to_string(i), 3000)),
                  CommitStatus::ok);
        const std::string seg = segment_files(dir_).at(0);
        const std::uint64_t want = s->stats().bytes + o.zero_ahead / 2;
        auto until = std::chrono::steady_clock::now() + 5s;
        while (fs::file_size(seg) < want && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(1ms);
        }
        ASSERT_GE(fs::file_size(seg), want) << "after commit " << i;
    }
}

// Zero-filling ahead is best effort and never spends the space kept free: with less than
// min_free + 4 x zero_ahead available, segments only grow by their records.
TEST_F(SpoolTest, NoZeroFillWhenSpaceIsShort) {
    const std::uint64_t free_now = free_here();
    ASSERT_GT(free_now, 1ull << 30) << "needs 1 GiB free to set the margins";
    auto o = options();
    o.zero_ahead = 64ull << 20;                    // 4 x 64 MiB above min_free: more than is free
    o.min_free_bytes = free_now - (100ull << 20);  // commits still fit (they keep min_free / 2)
    auto s = open(o);
    ASSERT_TRUE(s);
    for (int i = 0; i < 5; ++i) {
        ASSERT_EQ(commit_one(*s, make_message("short" + std::to_string(i), 2000)),
                  CommitStatus::ok);
    }
    EXPECT_EQ(fs::file_size(segment_files(dir_).at(0)), s->stats().bytes);
}

// MAIL's admission sees the free space of now, not of the idle writer's last look (once
// a second): a disk filled by something else is refused within kStatInterval (100 ms).
TEST_F(SpoolTest, AdmissionSeesTheDiskFillSoon) {
    const std::uint64_t free_now = free_here();
    ASSERT_GT(free_now, 1ull << 30) << "needs 1 GiB free";
    auto o = options();
    o.min_free_bytes = free_now - (64ull << 20);
    auto s = open(o);
    ASSERT_TRUE(s);
    std::this_thread::sleep_for(150ms);  // the writer is idle now: its next look is ~1 s away
    {
        std::string chunk(1 << 20, 'f');
        std::ofstream fill(root_ + "/filler", std::ios::binary);
        for (int i = 0; i < 160; ++i) {
            fill.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
        }
        fill.flush();
    }
    std::this_thread::sleep_for(150ms);
    EXPECT_EQ(s->admission(), Admission::no_space);
    fs::remove(root_ + "/filler");
}

TEST_F(SpoolTest, DamagedOrGarbageTailIsNeverRecovered) {
    std::uint64_t before = 0;
    std::string seg;
    auto o = options();
    o.zero_ahead = 0;  // the file ends where the records end
    {
        auto s = open(o);
        ASSERT_EQ(commit_one(*s, make_message("first", 500)), CommitStatus::ok);
        seg = segment_files(dir_).at(0);
        before = fs::file_size(seg);
        ASSERT_EQ(commit_one(*s, make_message("second", 500)), CommitStatus::ok);
    }
    std::string full = read_file(seg);
    // A flipped bit in the data of the last record.
    std::string bad = full;
    bad[bad.size() - 10] ^= 0x01;
    write_file(seg, bad);
    {
        auto s = open();
        EXPECT_TRUE(s->entry("first").has_value());
        EXPECT_FALSE(s->entry("second").has_value());
    }
    // Zeros after the last record (space made ahead, or an extended file whose blocks never
    // made it): the end of the records, nothing torn.
    write_file(seg, full + std::string(4096, '\0'));
    {
        auto s = open();
        EXPECT_EQ(s->size(), 2u);
        EXPECT_EQ(s->stats().torn_bytes, 0u);
    }
    EXPECT_EQ(fs::file_size(seg), full.size());
    // A torn record followed by zeros is torn.
    write_file(seg, full + std::string("\x20\x00\x00\x00\x11", 5) + std::string(4096, '\0'));
    {
        auto s = open();
        EXPECT_EQ(s->size(), 2u);
        EXPECT_EQ(s->stats().torn_bytes, 4101u);
    }
    // Random garbage with a plausible length.
    std::string garbage = full;
    garbage += std::string("\x20\x00\x00\x00\x11\x22\x33\x44", 8) + std::string(32, 'G');
    write_file(seg, garbage);
    {
        auto s = open();
        EXPECT_EQ(s->size(), 2u);
    }
    EXPECT_EQ(fs::file_size(seg), full.size());
    (void)before;
}

TEST_F(SpoolTest, ASegmentWithoutAValidHeaderIsSetAside) {
    {
        auto s = open();
        ASSERT_EQ(commit_one(*s, make_message("x", 100)), CommitStatus::ok);
    }
    std::string seg = segment_files(dir_).at(0);
    std::string bytes = read_file(seg);
    bytes[sf::kHeaderBytes + 3] ^= 0x40;  // inside the magic
    write_file(seg, bytes);
    write_file(dir_ + "/" + sf::segment_name(77), "");  // created just before a crash
    auto s = open();
    EXPECT_EQ(s->size(), 0u);
    EXPECT_EQ(s->stats().torn_bytes, bytes.size());
    s->close();
    EXPECT_TRUE(segment_files(dir_).empty());
    EXPECT_EQ(read_file(seg + ".bad"), bytes);  // kept for a human, never replayed
}

// ------------------------------------------------------------------ outcomes and space

TEST_F(SpoolTest, OutcomesPersistAndFinalStatesAreSticky) {
    auto when = std::chrono::system_clock::now() + 15min;
    {
        auto s = open();
        ASSERT_EQ(commit_one(*s, make_message("o1", 400, 4)), CommitStatus::ok);
        s->record_delivered("o1", 0);
        s->record_failed("o1", 1, "550 5.1.1 no such user");
        s->record_deferred("o1", 2, "451 4.4.1 no answer", when, 2);
        s->record_deferred("o1", 0, "late outcome for a final recipient", when, 9);
        s->record_delivered("unknown-id", 0);
        s->record_delivered("o1", 99);
        ASSERT_TRUE(s->sync().ok());
        auto e = s->entry("o1");
        ASSERT_TRUE(e.has_value());
        EXPECT_EQ(e->recipients[0].state, RcptState::delivered);
    }
    auto s = open();
    auto e = s->entry("o1");
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->recipients[0].state, RcptState::delivered);
    EXPECT_EQ(e->recipients[1].state, RcptState::failed);
    EXPECT_EQ(e->recipients[1].reason, "550 5.1.1 no such user");
    EXPECT_EQ(e->recipients[2].state, RcptState::deferred);
    EXPECT_EQ(e->recipients[2].attempts, 2u);
    EXPECT_EQ(e->recipients[2].next_attempt, when);
    EXPECT_EQ(e->recipients[3].state, RcptState::pending);
    EXPECT_EQ(e->live_recipients(), 2u);
    s->record_delivered("o1", 2);
    s->record_delivered("o1", 3);
    ASSERT_TRUE(s->sync().ok());
    EXPECT_FALSE(s->entry("o1").has_value());
    EXPECT_EQ(s->size(), 0u);
}

// Random submissions, outcomes and operator actions with tiny segments (many rotations and
// deletions), checked against a model after every reopening: a message is back exactly when
// some recipient is not final, with the states recorded; nothing final ever comes back.
TEST_F(SpoolTest, ModelCheckAcrossReopeningsWithTinySegments) {
    struct Model {
        std::vector<RcptState> st;
        std::vector<unsigned> attempts;
        bool held = false;
        std::size_t size = 0;
    };
    std::map<std::string, Model> model;
    std::mt19937 rng(12345);
    auto o = options();
    o.segment_bytes = 3000;
    o.large_message_bytes = 4000;  // some go to their own file
    auto s = open(o);
    ASSERT_TRUE(s);
    int next_id = 0;
    auto live = [&](const Model& m) {
        return std::any_of(m.st.begin(), m.st.end(), [](RcptState x) { return !is_final(x); });
    };
    auto pick = [&]() -> std::string {
        if (model.empty()) {
            return {};
        }
        auto it = model.begin();
        std::advance(it, rng() % model.size());
        return it->first;
    };
    for (int step = 0; step < 1500; ++step) {
        int op = static_cast<int>(rng() % 100);
        if (op < 30 || model.size() < 3) {
            std::string id = "id" + std::to_string(next_id++);
            std::size_t size = 50 + rng() % 5000;
            std::size_t rc = 1 + rng() % 3;
            ASSERT_EQ(commit_one(*s, make_message(id, size, rc)), CommitStatus::ok);
            model[id] = Model{std::vector<RcptState>(rc, RcptState::pending),
                              std::vector<unsigned>(rc, 0), false, size};
        } else if (op < 85) {
            std::string id = pick();
            Model& m = model[id];
            std::size_t r = rng() % m.st.size();
            int kind = static_cast<int>(rng() % 3);
            if (kind == 0) {
                s->record_delivered(id, r);
                if (!is_final(m.st[r])) {
                    m.st[r] = RcptState::delivered;
                }
            } else if (kind == 1) {
                s->record_failed(id, r, "550 no");
                if (!is_final(m.st[r])) {
                    m.st[r] = RcptState::failed;
                }
            } else {
                unsigned a = 1 + rng() % 5;
                s->record_deferred(id, r, "451 later", std::chrono::system_clock::now(), a);
                if (!is_final(m.st[r])) {
                    m.st[r] = RcptState::deferred;
                    m.attempts[r] = a;
                }
            }
            if (!live(m)) {
                model.erase(id);
            }
        } else if (op < 93) {
            std::string id = pick();
            bool hold = rng() % 2;
            ASSERT_TRUE((hold ? s->hold(id) : s->release(id)).ok());
            model[id].held = hold;
        } else if (op < 97) {
            std::string id = pick();
            ASSERT_TRUE(s->remove(id).ok());
            model.erase(id);
        } else {
            s.reset();
            s = open(o);
            ASSERT_TRUE(s);
            ASSERT_EQ(s->size(), model.size()) << "step " << step;
            for (const auto& [id, m] : model) {
                auto e = s->entry(id);
                ASSERT_TRUE(e.has_value()) << id << " step " << step;
                EXPECT_EQ(e->held, m.held) << id;
                EXPECT_EQ(e->size, m.size) << id;
                for (std::size_t r = 0; r < m.st.size(); ++r) {
                    EXPECT_EQ(e->recipients[r].state, m.st[r]) << id << " rcpt " << r;
                    if (m.st[r] == RcptState::deferred) {
                        EXPECT_EQ(e->recipients[r].attempts, m.attempts[r]);
                    }
                }
            }
            std::string id = pick();
            auto msg = s->load(id);
            ASSERT_TRUE(msg.ok()) << msg.error().message;
            EXPECT_EQ((*msg)->data, make_message(id, model[id].size)->data);
        }
    }
    // Deliver everything: every segment and big file goes away (cascading through the
    // segments that only held outcome records).
    for (const auto& [id, m] : model) {
        for (std::size_t r = 0; r < m.st.size(); ++r) {
            s->record_delivered(id, r);
        }
    }
    ASSERT_TRUE(s->sync().ok());
    EXPECT_EQ(s->size(), 0u);
    EXPECT_LE(s->stats().segments, 1u);  // the active one
    s->close();
    EXPECT_TRUE(segment_files(dir_).empty());
    EXPECT_EQ(count_files(dir_ + "/big"), 0u);
    s = open(o);
    EXPECT_EQ(s->size(), 0u);
}

TEST_F(SpoolTest, FinalRecordsOutliveTheirMessagesSegment) {
    // m1 and m2 share segment A; m1's outcome lands in a later segment B. B holds nothing
    // live, but deleting it while A exists would bring m1 back.
    auto io = std::make_shared<FaultyIo>();
    auto o = options();
    o.segment_bytes = 1;  // every batch starts a new segment
    o.io = io;
    o.syncs_in_flight = 1;  // so m1 and m2 wait behind m0's fsync instead of overlapping it
    {
        auto s = open(o);
        ASSERT_TRUE(s);
        Outcomes out;
        io->sync_delay_ms = 100;  // m1 and m2 queue up behind m0's fsync: one batch
        s->submit(make_message("m0", 100, 1), out.callback());
        std::this_thread::sleep_for(20ms);
        s->submit(make_message("m1", 100, 1), out.callback());
        s->submit(make_message("m2", 100, 1), out.callback());
        ASSERT_TRUE(out.wait_for(3));
        io->sync_delay_ms = 0;
        ASSERT_EQ(s->stats().batches, 2u);
        s->record_delivered("m0", 0);
        s->record_delivered("m1", 0);
        ASSERT_TRUE(s->sync().ok());
        ASSERT_TRUE(s->hold("m2").ok());  // more segments after B
        ASSERT_TRUE(s->release("m2").ok());
    }
    {
        auto s = open(o);
        EXPECT_FALSE(s->entry("m0").has_value());
        EXPECT_FALSE(s->entry("m1").has_value());
        EXPECT_TRUE(s->entry("m2").has_value());
        EXPECT_FALSE(s->entry("m2")->held);
        s->record_delivered("m2", 0);
    }
    auto s = open(o);
    EXPECT_EQ(s->size(), 0u);
    s->close();
    EXPECT_TRUE(segment_files(dir_).empty());
}

TEST_F(SpoolTest, SegmentsAreDeletedWhileRunning) {
    auto o = options();
    o.segment_bytes = 8192;
    auto s = open(o);
    for (int round = 0; round < 20; ++round) {
        Outcomes out;
        for (int i = 0; i < 20; ++i) {
            s->submit(make_message("r" + std::to_string(round) + "-" + std::to_string(i), 1000, 1),
                      out.callback());
        }
        ASSERT_TRUE(out.wait_for(20));
        for (int i = 0; i < 20; ++i) {
            s->record_delivered("r" + std::to_string(round) + "-" + std::to_string(i), 0);
        }
    }
    ASSERT_TRUE(s->sync().ok());
    ASSERT_TRUE(s->sync().ok());  // rotation happens before a batch: one more
    EXPECT_EQ(s->size(), 0u);
    EXPECT_LE(segment_files(dir_).size(), 2u);
    EXPECT_LT(s->stats().bytes, 3 * 8192u);
}

TEST_F(SpoolTest, SpaceAccountingMatchesTheFiles) {
    auto o = options();
    o.large_message_bytes = 50000;
    o.segment_bytes = 20000;
    o.zero_ahead = 0;  // stats().bytes counts records, not the space made ahead of them
    auto on_disk = [&] {
        std::uint64_t n = 0;
        for (const auto& p : segment_files(dir_)) {
            n += fs::file_size(p);
        }
        for (const auto& e : fs::directory_iterator(dir_ + "/big")) {
            n += fs::file_size(e.path());
        }
        return n;
    };
    {
        auto s = open(o);
        for (int i = 0; i < 30; ++i) {
            ASSERT_EQ(
                commit_one(*s, make_message("s" + std::to_string(i), i % 7 ? 3000 : 80000, 1)),
                CommitStatus::ok);
        }
        for (int i = 0; i < 30; i += 2) {
            s->record_delivered("s" + std::to_string(i), 0);
        }
        ASSERT_TRUE(s->sync().ok());
        EXPECT_EQ(s->stats().bytes, on_disk());
    }
    auto s = open(o);
    EXPECT_EQ(s->size(), 15u);
    EXPECT_EQ(s->stats().bytes, on_disk());
}

// ------------------------------------------------------------------ big messages

TEST_F(SpoolTest, BigMessagesLiveInTheirOwnFiles) {
    auto o = options();
    o.large_message_bytes = 64 * 1024;
    o.zero_ahead = 0;  // the segment's size is its records
    std::string data;
    {
        auto s = open(o);
        auto m = make_message("big1", 300 * 1024, 2);
        data = m->data;
        ASSERT_EQ(commit_one(*s, std::move(m)), CommitStatus::ok);
        ASSERT_EQ(commit_one(*s, make_message("big2", 200 * 1024, 1)), CommitStatus::ok);
        EXPECT_EQ(count_files(dir_ + "/big"), 2u);
        EXPECT_LT(fs::file_size(segment_files(dir_).at(0)), 4096u);
    }
    // A leftover big file that no record names (a crash before its record) goes away.
    write_file(dir_ + "/big/" + sf::big_name(999), "orphan");
    {
        auto s = open(o);
        EXPECT_EQ(count_files(dir_ + "/big"), 2u);
        auto m = s->load("big1");
        ASSERT_TRUE(m.ok());
        EXPECT_EQ((*m)->data, data);
        s->record_delivered("big2", 0);
        ASSERT_TRUE(s->sync().ok());
        EXPECT_EQ(count_files(dir_ + "/big"), 1u);
    }
    // Damage in a big file is found when it is read.
    std::string path;
    for (const auto& e : fs::directory_iterator(dir_ + "/big")) {
        path = e.path();
    }
    std::string bytes = read_file(path);
    bytes[1000] ^= 1;
    write_file(path, bytes);
    auto s = open(o);
    auto m = s->load("big1");
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.error().code, Errc::corrupt);
}

TEST_F(SpoolTest, ABigMessageDoesNotStallSmallOnes) {
    auto io = std::make_shared<FaultyIo>();
    io->big_write_delay_ms = 600;  // a slow disk for the big one
    auto o = options();
    o.io = io;
    auto s = open(o);
    Outcomes out;
    s->submit(make_message("huge", 8 << 20, 1), out.callback());
    std::this_thread::sleep_for(50ms);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) {
        s->submit(make_message("small" + std::to_string(i), 1000, 1), out.callback());
    }
    ASSERT_TRUE(out.wait_for(10));
    auto small_done = std::chrono::steady_clock::now() - t0;
    EXPECT_LT(small_done, 400ms);
    ASSERT_TRUE(out.wait_for(11));
    auto order = out.order();
    EXPECT_EQ(order.back(), "huge");
    EXPECT_EQ(out.status("huge"), CommitStatus::ok);
}

// ------------------------------------------------------------------ failures

TEST_F(SpoolTest, WriteErrorsFailTheBatchAndTheSpoolGoesOn) {
    auto io = std::make_shared<FaultyIo>();
    auto o = options();
    o.io = io;
    {
        auto s = open(o);
        ASSERT_EQ(commit_one(*s, make_message("before")), CommitStatus::ok);
        io->half_write = true;
        io->fail_writes = 1;
        EXPECT_EQ(commit_one(*s, make_message("eio")), CommitStatus::io_error);
        EXPECT_EQ(s->state(), SpoolState::failing);
        EXPECT_EQ(s->admission(), Admission::no_space);
        ASSERT_TRUE(wait_accepting(*s));
        io->write_errno = ENOSPC;
        io->fail_writes = 1;
        EXPECT_EQ(commit_one(*s, make_message("enospc")), CommitStatus::no_space);
        ASSERT_TRUE(wait_accepting(*s));
        EXPECT_EQ(commit_one(*s, make_message("after")), CommitStatus::ok);
        EXPECT_EQ(s->stats().failed, 2u);
        EXPECT_FALSE(s->entry("eio").has_value());
    }
    auto s = open(o);
    EXPECT_TRUE(s->entry("before").has_value());
    EXPECT_TRUE(s->entry("after").has_value());
    EXPECT_FALSE(s->entry("eio").has_value());
    EXPECT_FALSE(s->entry("enospc").has_value());
    EXPECT_EQ(s->stats().torn_bytes, 0u);  // the half-written batch was cut at run time
}

TEST_F(SpoolTest, FsyncErrorNeverReportsOkAndTheMessageNeverComesBack) {
    auto io = std::make_shared<FaultyIo>();
    auto o = options();
    o.io = io;
    {
        auto s = open(o);
        ASSERT_EQ(commit_one(*s, make_message("before")), CommitStatus::ok);
        // The batch's fdatasync fails, and so does cutting it off: its record stays in the
        // file, complete, and only a cancel record keeps it from being delivered.
        io->fail_syncs = 1;
        io->fail_truncates = 1;
        EXPECT_EQ(commit_one(*s, make_message("lost")), CommitStatus::io_error);
        ASSERT_TRUE(wait_accepting(*s));
        EXPECT_EQ(commit_one(*s, make_message("after")), CommitStatus::ok);
        ASSERT_TRUE(s->sync().ok());
        EXPECT_GE(segment_files(dir_).size(), 2u);  // a new segment after the failure
    }
    auto s = open(o);
    EXPECT_TRUE(s->entry("before").has_value());
    EXPECT_TRUE(s->entry("after").has_value());
    EXPECT_FALSE(s->entry("lost").has_value());
    EXPECT_EQ(s->size(), 2u);
}

TEST_F(SpoolTest, AFailedFsyncFailsTheLaterBatchesOfItsSegmentToo) {
    // Two batches in flight in one segment; the first one's fdatasync fails. The second
    // one's fdatasync succeeds, but that proves nothing about the first one's pages: both
    // must fail, and neither may come back.
    auto io = std::make_shared<FaultyIo>();
    auto o = options();
    o.io = io;
    o.syncs_in_flight = 4;
    {
        auto s = open(o);
        ASSERT_EQ(commit_one(*s, make_message("before")), CommitStatus::ok);
        io->sync_delay_ms = 80;
        io->fail_syncs = 1;
        Outcomes out;
        s->submit(make_message("first"), out.callback());
        std::this_thread::sleep_for(30ms);
        s->submit(make_message("second"), out.callback());
        ASSERT_TRUE(out.wait_for(2));
        EXPECT_EQ(out.status("first"), CommitStatus::io_error);
        EXPECT_EQ(out.status("second"), CommitStatus::io_error);
        EXPECT_EQ(out.order(), (std::vector<std::string>{"first", "second"}));
        io->sync_delay_ms = 0;
        ASSERT_TRUE(wait_accepting(*s));
        EXPECT_EQ(commit_one(*s, make_message("after")), CommitStatus::ok);
    }
    auto s = open(o);
    EXPECT_TRUE(s->entry("before").has_value());
    EXPECT_TRUE(s->entry("after").has_value());
    EXPECT_EQ(s->size(), 2u);
}

TEST_F(SpoolTest, OutcomeRecordsOfAFailedBatchAreRetried) {
    auto io = std::make_shared<FaultyIo>();
    auto o = options();
    o.io = io;
    {
        auto s = open(o);
        ASSERT_EQ(commit_one(*s, make_message("d", 300, 1)), CommitStatus::ok);
        io->fail_syncs = 1;
        s->record_delivered("d", 0);
        // The outcome rides in the failing batch, then goes again after the back-off.
        EXPECT_EQ(commit_one(*s, make_message("x")), CommitStatus::io_error);
        for (int i = 0; i < 50 && s->entry("d"); ++i) {
            std::this_thread::sleep_for(50ms);
        }
        EXPECT_FALSE(s->entry("d").has_value());
    }
    auto s = open(o);
    EXPECT_EQ(s->size(), 0u);
}

TEST_F(SpoolTest, FailedOperatorActionReportsTheError) {
    auto io = std::make_shared<FaultyIo>();
    auto o = options();
    o.io = io;
    auto s = open(o);
    ASSERT_EQ(commit_one(*s, make_message("h")), CommitStatus::ok);
    io->fail_writes = 1;
    Error e = s->hold("h");
    EXPECT_EQ(e.code, Errc::io);
    EXPECT_FALSE(s->entry("h")->held);
    EXPECT_TRUE(s->hold("h").ok());
    EXPECT_TRUE(s->entry("h")->held);
    EXPECT_EQ(s->hold("missing").code, Errc::not_found);
}

TEST_F(SpoolTest, LimitsRefuseNewMailButNotOutcomes) {
    auto o = options();
    o.max_bytes = 20000;
    auto s = open(o);
    EXPECT_EQ(s->admission(), Admission::ok);
    int ok = 0;
    for (int i = 0; i < 40; ++i) {
        if (commit_one(*s, make_message("l" + std::to_string(i), 1000, 1)) == CommitStatus::ok) {
            ++ok;
        }
    }
    EXPECT_GT(ok, 5);
    EXPECT_LT(ok, 40);
    EXPECT_EQ(s->admission(), Admission::over_limit);
    EXPECT_EQ(commit_one(*s, make_message("over", 1000, 1)), CommitStatus::no_space);
    o.max_bytes = 0;
    o.min_free_bytes = ~0ull >> 1;  // more than any disk has
    s.reset();
    s = open(o);
    EXPECT_EQ(s->admission(), Admission::no_space);
}

// The limit lifts by itself once the queue drains, also when it is far below
// segment_bytes (the active segment is sealed so that it can be reclaimed).
TEST_F(SpoolTest, LimitLiftsOnceTheQueueDrains) {
    auto o = options();
    o.max_bytes = 256 * 1024;
    auto s = open(o);
    std::vector<std::string> ids;
    for (int i = 0; i < 100 && s->admission() == Admission::ok; ++i) {
        std::string id = "d" + std::to_string(i);
        if (commit_one(*s, make_message(id, 10000, 1)) == CommitStatus::ok) {
            ids.push_back(id);
        }
    }
    ASSERT_EQ(s->admission(), Admission::over_limit);
    for (const auto& id : ids) {
        s->record_delivered(id, 0);
    }
    auto until = std::chrono::steady_clock::now() + 10s;
    while (s->admission() != Admission::ok && std::chrono::steady_clock::now() < until) {
        ASSERT_TRUE(s->sync().ok());
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(s->size(), 0u);
    EXPECT_EQ(s->admission(), Admission::ok) << "used " << s->stats().bytes;
    EXPECT_EQ(commit_one(*s, make_message("after", 10000, 1)), CommitStatus::ok);
}

// A real full disk: a 1 MiB tmpfs (needs CAP_SYS_ADMIN; skipped without it).
TEST_F(SpoolTest, RealENOSPCOnATinyTmpfsAndRecoveryByItself) {
    std::string mnt = root_ + "/tiny";
    fs::create_directories(mnt);
    if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) {
        GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
    }
    struct Unmount {
        std::string p;
        ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
    } unmount{mnt};
    auto o = options();
    o.dir = mnt + "/spool";
    std::map<std::string, CommitStatus> got;
    {
        auto s = open(o);
        ASSERT_TRUE(s);
        // Fill the disk behind the spool's back: its cached free space is stale, so the
        // writes themselves meet ENOSPC.
        {
            std::ofstream fill(mnt + "/filler", std::ios::binary);
            std::string chunk(4096, 'f');
            while (fill.write(chunk.data(), chunk.size())) {
            }
        }
        int no_space = 0;
        for (int i = 0; i < 20; ++i) {
            std::string id = "f" + std::to_string(i);
            got[id] = commit_one(*s, make_message(id, 20000, 1));
            EXPECT_NE(got[id], CommitStatus::io_error) << id;
            no_space += got[id] == CommitStatus::no_space;
        }
        EXPECT_GT(no_space, 0);
        fs::remove(mnt + "/filler");
        // Recovers by itself: the free space is refreshed while idle.
        ASSERT_TRUE(wait_accepting(*s));
        EXPECT_EQ(commit_one(*s, make_message("later", 20000, 1)), CommitStatus::ok);
        got["later"] = CommitStatus::ok;
    }
    auto s = open(o);
    for (const auto& [id, st] : got) {
        EXPECT_EQ(s->entry(id).has_value(), st == CommitStatus::ok) << id;
        if (st == CommitStatus::ok) {
            auto m = s->load(id);
            ASSERT_TRUE(m.ok()) << id;
            EXPECT_EQ((*m)->data, make_message(id, 20000, 1)->data);
        }
    }
}

// A full disk is a state: mail is refused without touching the disk (no new segment per
// attempt), deliveries are still recorded (from the reserve) so nothing is sent twice
// after a restart, and once they drain the queue the space comes back and so does
// acceptance, by itself (a 4 MiB tmpfs; needs CAP_SYS_ADMIN, skipped without it).
TEST_F(SpoolTest, AFullDiskIsAStateThatRecordsDeliveriesAndEndsByItself) {
    std::string mnt = root_ + "/small";
    fs::create_directories(mnt);
    if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0) {
        GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
    }
    struct Unmount {
        std::string p;
        ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
    } unmount{mnt};
    auto o = options();
    o.dir = mnt + "/spool";
    o.reserve_bytes = 256 * 1024;
    o.zero_ahead = 0;
    std::vector<std::string> ok;
    {
        auto s = open(o);
        ASSERT_TRUE(s);
        EXPECT_EQ(s->stats().reserve_bytes, o.reserve_bytes);
        for (int i = 0; i < 400 && s->admission() == Admission::ok; ++i) {
            std::string id = "m" + std::to_string(i);
            if (commit_one(*s, make_message(id, 20000, 1)) == CommitStatus::ok) {
                ok.push_back(id);
            }
        }
        ASSERT_GT(ok.size(), 50u);
        EXPECT_EQ(s->state(), SpoolState::full);
        EXPECT_EQ(s->admission(), Admission::no_space);
        // More mail while full: refused, and not a single new file for it.
        std::size_t files = count_files(o.dir);
        for (int i = 0; i < 50; ++i) {
            EXPECT_EQ(commit_one(*s, make_message("x" + std::to_string(i), 20000, 1)),
                      CommitStatus::no_space);
        }
        EXPECT_EQ(count_files(o.dir), files);
        // Deferrals while full stay in memory; deliveries are recorded.
        auto later = std::chrono::system_clock::now() + 1h;
        for (std::size_t i = 0; i < ok.size(); ++i) {
            s->record_deferred(ok[i], 0, "451 4.4.0 down", later, 1);
        }
        ASSERT_TRUE(s->sync().ok());
        EXPECT_EQ(s->entry(ok[0])->recipients[0].state, RcptState::deferred);
        for (std::size_t i = 0; i < ok.size(); i += 2) {
            s->record_delivered(ok[i], 0);
        }
        ASSERT_TRUE(s->sync().ok());
        EXPECT_EQ(s->stats().reserve_bytes, 0u);  // spent on those records
        EXPECT_EQ(s->size(), ok.size() / 2);
    }
    {
        // A restart (the disk still full) knows every delivery: none is sent again.
        auto s = open(o);
        ASSERT_TRUE(s);
        EXPECT_EQ(s->size(), ok.size() / 2);
        for (std::size_t i = 0; i < ok.size(); ++i) {
            EXPECT_EQ(s->entry(ok[i]).has_value(), i % 2 == 1) << ok[i];
        }
        for (std::size_t i = 1; i < ok.size(); i += 2) {
            s->record_delivered(ok[i], 0);
        }
        ASSERT_TRUE(s->sync().ok());
        EXPECT_EQ(s->size(), 0u);
        // The drained segments (the active one too) are reclaimed, the reserve is
        // refilled, and mail is accepted again without a restart.
        ASSERT_TRUE(wait_accepting(*s));
        EXPECT_EQ(s->stats().reserve_bytes, o.reserve_bytes);
        EXPECT_EQ(commit_one(*s, make_message("after", 20000, 1)), CommitStatus::ok);
    }
    auto s = open(o);
    EXPECT_EQ(s->size(), 1u);
    EXPECT_TRUE(s->entry("after").has_value());
}

// A failing disk (EIO) is a state too: refused mail never reaches it, outcome records are
// retried with a back-off (not in a loop), and a probe ends the state once writes work.
TEST_F(SpoolTest, AFailingDiskIsAStateEndedByAProbe) {
    auto io = std::make_shared<FaultyIo>();
    auto o = options();
    o.io = io;
    auto s = open(o);
    ASSERT_EQ(commit_one(*s, make_message("d", 300, 1)), CommitStatus::ok);
    io->fail_syncs = 1'000'000;
    EXPECT_EQ(commit_one(*s, make_message("eio")), CommitStatus::io_error);
    EXPECT_EQ(s->state(), SpoolState::failing);
    int syncs = io->syncs.load();
    for (int i = 0; i < 20; ++i) {
        EXPECT_EQ(commit_one(*s, make_message("r" + std::to_string(i))), CommitStatus::io_error);
    }
    EXPECT_EQ(io->syncs.load(), syncs);  // refused before any write
    s->record_delivered("d", 0);
    std::this_thread::sleep_for(2s);
    // Retries and probes back off: a handful in 2 s, not hundreds.
    EXPECT_LT(io->syncs.load() - syncs, 12);
    EXPECT_LE(segment_files(dir_).size(), 2u);
    EXPECT_TRUE(s->entry("d").has_value());
    io->fail_syncs = 0;
    ASSERT_TRUE(wait_accepting(*s, 40s));
    for (int i = 0; i < 100 && s->entry("d"); ++i) {
        std::this_thread::sleep_for(100ms);
    }
    EXPECT_FALSE(s->entry("d").has_value());
    EXPECT_EQ(commit_one(*s, make_message("after")), CommitStatus::ok);
}

// ------------------------------------------------------------------ operator actions

TEST_F(SpoolTest, PurgeFiltersSelectMessagesAndRecipients) {
    auto s = open();
    auto old_msg = make_message("old", 200, 1);
    old_msg->received_at -= 48h;
    ASSERT_EQ(commit_one(*s, std::move(old_msg)), CommitStatus::ok);
    auto relay = make_message("relay", 200, 4);  // dom0 (L101) and dom1 (G108)
    relay->client = "198.51.100.23";
    relay->auth_user = "mallory";
    ASSERT_EQ(commit_one(*s, std::move(relay)), CommitStatus::ok);
    auto v6 = make_message("v6", 200, 1);
    v6->client = "2001:db8::9";
    v6->sender = "";
    ASSERT_EQ(commit_one(*s, std::move(v6)), CommitStatus::ok);

    std::string cidr_err;
    QueueFilter f;
    f.client = *parse_cidr("198.51.100.0/24", cidr_err);
    auto dry = s->purge(f, true);
    ASSERT_TRUE(dry.ok());
    EXPECT_EQ(dry->messages, std::vector<QueueId>{"relay"});
    EXPECT_EQ(dry->recipients, 4u);
    EXPECT_TRUE(s->entry("relay").has_value());  // dry run changed nothing

    QueueFilter by_domain;
    by_domain.rcpt_domain = "DOM1.test";
    by_domain.auth_user = "mallory";
    auto part = s->purge(by_domain, false);
    ASSERT_TRUE(part.ok());
    EXPECT_EQ(part->partial, std::vector<QueueId>{"relay"});
    EXPECT_EQ(part->recipients, 2u);
    auto e = s->entry("relay");
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->live_recipients(), 2u);
    EXPECT_EQ(e->recipients[1].state, RcptState::removed);

    QueueFilter null_sender;
    null_sender.sender = "<>";
    EXPECT_EQ(s->purge(null_sender, true)->messages, std::vector<QueueId>{"v6"});
    QueueFilter v6net;
    v6net.client = *parse_cidr("2001:db8::/32", cidr_err);
    EXPECT_EQ(s->purge(v6net, true)->messages, std::vector<QueueId>{"v6"});
    QueueFilter age;
    age.older_than = Millis(24h);
    EXPECT_EQ(s->purge(age, true)->messages, std::vector<QueueId>{"old"});
    QueueFilter code;
    code.code = "l101";
    auto by_code = s->purge(code, true);
    EXPECT_EQ(by_code->recipients, 4u);  // old, relay x2, v6
    QueueFilter sender_dom;
    sender_dom.sender = "@OUTSIDE.test";
    EXPECT_EQ(
        s->purge(sender_dom, true)->messages.size() + s->purge(sender_dom, true)->partial.size(),
        2u);

    auto all = s->purge(age, false);
    ASSERT_TRUE(all.ok());
    s.reset();
    s = open();
    EXPECT_FALSE(s->entry("old").has_value());
    EXPECT_EQ(s->entry("relay")->recipients[3].state, RcptState::removed);
    EXPECT_EQ(s->size(), 2u);
}

TEST_F(SpoolTest, HoldReleaseDeleteFlushPersist) {
    {
        auto s = open();
        for (const char* id : {"a", "b", "c"}) {
            ASSERT_EQ(commit_one(*s, make_message(id, 100, 1)), CommitStatus::ok);
        }
        auto later = std::chrono::system_clock::now() + 1h;
        s->record_deferred("a", 0, "451 busy", later, 1);
        s->record_deferred("c", 0, "451 busy", later, 1);
        ASSERT_TRUE(s->hold("b").ok());
        ASSERT_TRUE(s->hold("c").ok());
        ASSERT_TRUE(s->release("c").ok());
        ASSERT_TRUE(s->sync().ok());
        auto n = s->flush();
        ASSERT_TRUE(n.ok());
        EXPECT_EQ(*n, 2u);
        ASSERT_TRUE(s->remove("c").ok());
        EXPECT_EQ(s->remove("c").code, Errc::not_found);
    }
    auto s = open();
    EXPECT_EQ(s->size(), 2u);
    EXPECT_TRUE(s->entry("b")->held);
    EXPECT_FALSE(s->entry("c").has_value());
    EXPECT_LE(s->entry("a")->recipients[0].next_attempt, std::chrono::system_clock::now());
    EXPECT_EQ(s->entry("a")->recipients[0].state, RcptState::deferred);
}

TEST_F(SpoolTest, QueueCommandsParseAndRender) {
    auto bad = [](std::vector<std::string> a) { return !parse_queue_command(a).ok(); };
    EXPECT_TRUE(bad({}));
    EXPECT_TRUE(bad({"frobnicate"}));
    EXPECT_TRUE(bad({"show"}));
    EXPECT_TRUE(bad({"show", "a", "b"}));
    EXPECT_TRUE(bad({"purge"}));  // no filter: refused
    EXPECT_TRUE(bad({"purge", "--sender"}));
    EXPECT_TRUE(bad({"purge", "--client", "10.0.0.1/8"}));  // host bits set
    EXPECT_TRUE(bad({"purge", "--older-than", "soon"}));
    EXPECT_TRUE(bad({"purge", "--colour", "red"}));
    EXPECT_TRUE(bad({"list", "extra"}));
    auto p = parse_queue_command({"purge", "--sender", "x@y.test", "--dry-run", "--client",
                                  "10.0.0.0/8", "--older-than", "2h", "--code", "G110"});
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->verb, QueueCommand::Verb::purge);
    EXPECT_TRUE(p->dry_run);
    EXPECT_EQ(p->filter.sender, "x@y.test");
    EXPECT_EQ(p->filter.older_than, Millis(2h));
    EXPECT_EQ(p->filter.code, "G110");

    auto s = open();
    ASSERT_EQ(commit_one(*s, make_message("q1", 100, 2)), CommitStatus::ok);
    QueueCommand list;
    list.verb = QueueCommand::Verb::list;
    auto out = run_queue_command(*s, list);
    EXPECT_EQ(out.exit_code, 0);
    EXPECT_NE(out.out.find("q1"), std::string::npos);
    EXPECT_NE(out.out.find("<user1@dom1.test>  pending  G108"), std::string::npos);
    EXPECT_NE(out.out.find("1 messages, 2 recipients"), std::string::npos);
    list.json = true;
    out = run_queue_command(*s, list);
    EXPECT_EQ(out.out.substr(0, 9), "[{\"id\":\"q");
    EXPECT_NE(out.out.find("\"transport\":\"smtp://10.0.0.5:2526?starttls=required\""),
              std::string::npos);
    auto show = parse_queue_command({"show", "q1"});
    out = run_queue_command(*s, *show);
    EXPECT_EQ(out.exit_code, 0);
    EXPECT_NE(out.out.find("Message-Id: <q1@test>"), std::string::npos);
    out = run_queue_command(*s, *parse_queue_command({"delete", "nope"}));
    EXPECT_EQ(out.exit_code, 1);
    EXPECT_NE(out.err.find("nope"), std::string::npos);
    out = run_queue_command(*s, *parse_queue_command({"purge", "--rcpt-domain", "dom0.test"}));
    EXPECT_EQ(out.exit_code, 0);
    EXPECT_NE(out.out.find("removed some recipients of q1"), std::string::npos);
    out = run_queue_command(*s, *parse_queue_command({"hold", "q1"}));
    EXPECT_EQ(out.out, "held q1\n");
    EXPECT_TRUE(s->entry("q1")->held);
}

}  // namespace
